/* imap_thread.h - THREAD=REFERENCES (RFC 5256 4): the threads of a set of
 * messages from their Message-ID, References (or In-Reply-To), base
 * subject and sent date, written in the THREAD response's syntax.
 *
 * Message IDs are compared by a 64-bit hash of their bytes (case
 * sensitive, as the RFC says); two different IDs that hash alike would
 * be taken for one (a wrong thread, nothing worse). The work is linear in
 * the messages and references but for the loop checks (a walk up the
 * tree per link) and the sorts. No I/O; allocates its tables. */
#ifndef RINGMAIL_PROTO_IMAP_THREAD_H
#define RINGMAIL_PROTO_IMAP_THREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

struct imap_thread_msg {
	uint64_t id;           /* imap_thread_id() of its Message-ID; 0: none */
	uint64_t date;         /* sent date as imap_sort_key_number() orders it */
	uint32_t num;          /* the number to write (sequence number or UID) */
	uint32_t order;        /* its place in the mailbox (ties of date) */
	uint32_t ref_off, ref_n; /* its references in refs[], oldest first */
	uint32_t subj_off, subj_len; /* base subject in the subjects arena */
	bool refwd;            /* the subject marks a reply or forward */
};

/* The hash of one message ID "<...>" (brackets included); never 0. */
uint64_t imap_thread_id(struct span id);

/* Calls fn(arg, id) for each "<...>" message ID in a References or
 * In-Reply-To value (comments and anything between IDs skipped), at most
 * max of them; returns how many. */
size_t imap_thread_ids(struct span v, size_t max, void (*fn)(void *arg, struct span id),
		       void *arg);

/* The THREAD=REFERENCES response text of msgs[0..n) (in mailbox order),
 * "(1 2 (3)(4))(5)" without "* THREAD ", malloc'd, its length in *len_r;
 * NULL when memory ran out. */
char *imap_thread_references(const struct imap_thread_msg *msgs, size_t n, const uint64_t *refs,
			     const uint8_t *subjects, size_t *len_r);

#endif
