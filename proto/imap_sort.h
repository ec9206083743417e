/* imap_sort.h - the keys of SORT and THREAD (RFC 5256; DISPLAYFROM and
 * DISPLAYTO of SORT=DISPLAY, RFC 5957): the criteria, the base subject,
 * the sent date, the address keys, all from the structure blob the store
 * keeps (the message bytes are not read).
 *
 * Pure code: no allocation, no I/O, no globals. The session runs the
 * search program, then per hit writes each criterion's key with
 * imap_sort_key_string() or imap_sort_key_number() and orders the hits by
 * comparing keys in criterion order (strings with memcmp, then length;
 * numbers as numbers), REVERSE inverting one criterion, the sequence
 * number breaking ties (RFC 5256 3).
 *
 * Strings are compared after folding as i;unicode-casemap does (RFC 5051)
 * for the letters of ASCII and Latin-1 (to upper case; no decomposition of
 * accented letters); encoded words (RFC 2047) in UTF-8, US-ASCII and
 * ISO-8859-1 are decoded to UTF-8, others are kept as they are. */
#ifndef RINGMAIL_PROTO_IMAP_SORT_H
#define RINGMAIL_PROTO_IMAP_SORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"
#include "proto/mime.h"

enum imap_sort_key {
	IMAP_SORT_ARRIVAL,     /* INTERNALDATE */
	IMAP_SORT_CC,          /* addr-mailbox of the first Cc address */
	IMAP_SORT_DATE,        /* the sent date (Date:, else INTERNALDATE), UTC */
	IMAP_SORT_FROM,        /* addr-mailbox of the first From address */
	IMAP_SORT_SIZE,        /* RFC822.SIZE */
	IMAP_SORT_SUBJECT,     /* the base subject */
	IMAP_SORT_TO,          /* addr-mailbox of the first To address */
	IMAP_SORT_DISPLAYFROM, /* display name of the first From address, else its addr-spec */
	IMAP_SORT_DISPLAYTO,   /* the same for To */
};

/* Criteria in one SORT command. */
#define IMAP_SORT_CRIT_MAX 16
/* A string key is cut here: two keys equal in their first this many bytes
 * compare equal (and the sequence number decides). */
#define IMAP_SORT_STRING_MAX 512

struct imap_sort_crit {
	uint8_t key;  /* enum imap_sort_key */
	bool reverse;
};

/* Parses the atoms between SORT's parentheses ("REVERSE DATE SUBJECT").
 * Returns the number of criteria (at least 1), or -1: an unknown atom,
 * REVERSE without a key after it, none at all, or more than cap. */
int imap_sort_parse(const struct span *atoms, size_t n, struct imap_sort_crit *c, size_t cap);

/* Whether the key is a string (else a number). */
bool imap_sort_key_is_string(uint8_t key);

/* The string key of a message (its blob mb, NULL when it has none) into
 * out[0..IMAP_SORT_STRING_MAX), folded for comparison. Returns its
 * length; 0 for an absent field (the empty string sorts first). */
size_t imap_sort_key_string(const struct mime_blob *mb, uint8_t key, uint8_t *out);

/* The number key: ARRIVAL the internal date, SIZE the size, DATE the sent
 * date (seconds since the epoch, UTC; the internal date when the Date
 * field is absent or unparsable). Negative dates are offset so that the
 * order of uint64_t is the order of time. */
uint64_t imap_sort_key_number(const struct mime_blob *mb, uint8_t key, uint64_t size,
			      int64_t internal_date);

/* The base subject of a raw Subject value (RFC 5256 2.1), folded, into
 * out[0..cap). Returns its length (at most cap). */
size_t imap_sort_base_subject(struct span raw, uint8_t *out, size_t cap);
/* The same, and whether the subject marks a reply or forward: a "Re:",
 * "Fw:" or "Fwd:" leader, a "(fwd)" trailer or a "[fwd: ...]" wrapper
 * was removed (THREAD=REFERENCES, RFC 5256 2.1). */
size_t imap_sort_base_subject_refwd(struct span raw, uint8_t *out, size_t cap, bool *refwd_r);

/* An RFC 5322 date-time ("Tue, 1 Jul 2003 10:52:37 +0200", with the
 * obsolete forms: two- and three-digit years, no seconds, named zones,
 * comments) as seconds since the epoch in UTC. false when unparsable. */
bool imap_sort_parse_date(struct span v, int64_t *t_r);

/* Decodes RFC 2047 encoded words of raw into out[0..cap) (UTF-8, US-ASCII,
 * ISO-8859-1; others left encoded), drops the whitespace between two
 * adjacent encoded words, makes tabs, CR and LF a space and whitespace
 * runs one space. Returns the length (at most cap). */
size_t imap_sort_decode_words(struct span raw, uint8_t *out, size_t cap);

#endif
