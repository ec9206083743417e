/* index.h - a folder's in-memory index, rebuilt from its log, and the
 * checkpoint (snapshot) format. Pure code: no I/O, no locking (the caller
 * holds the folder's mutex). */
#ifndef RINGMAIL_STORE_INDEX_H
#define RINGMAIL_STORE_INDEX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"
#include "store/record.h"

/* Immutable, refcounted bytes shared by the index and views: either one
 * message's structure blob (len bytes), or an arena holding the blobs of
 * every message loaded from a version 3 checkpoint (the checkpoint's own
 * buffer, kept; len is then not a length). The index holds a reference per
 * message, a view one per run of messages sharing an owner, so an arena
 * lives as long as any message or view that points into it. */
struct iblob {
	atomic_uint refs;
	uint32_t len;
	uint8_t data[];
};

/* Returns a new blob holding a copy of b (refs 1), or NULL. */
struct iblob *iblob_new(struct span b);
/* Returns a new arena of len uninitialised bytes at data (refs 1), or
 * NULL: the buffer a checkpoint is read into, then handed to
 * index_checkpoint_load_arena(). A large one (8 MiB or more) is its own
 * mapping, faulted in huge pages where the system allows. */
struct iblob *iblob_alloc(size_t len);
struct iblob *iblob_ref(struct iblob *b);
void iblob_unref(struct iblob **b_r);

struct index_msg {
	uint32_t uid, flags;
	uint64_t keywords, modseq, size;
	int64_t date;
	uint32_t seg, data_crc;
	uint64_t off;
	/* the structure blob is blob->data[boff .. boff + blen): blob is the
	 * message's own (boff 0) or a checkpoint's arena; one reference */
	struct iblob *blob;
	uint32_t boff, blen;
};

/* m's structure blob; valid while a reference to m->blob is held. */
static inline struct span index_msg_blob(const struct index_msg *m)
{
	return span_make(m->blob->data + m->boff, m->blen);
}

/* A run of consecutive UIDs that one EXPUNGE record removed, with its MODSEQ:
 * the memory of expunges QRESYNC needs (which UIDs vanished since a MODSEQ).
 * A run holds only UIDs that record removed. */
struct index_gone {
	uint32_t lo, hi;
	uint64_t modseq;
};

/* Runs remembered per folder (16 bytes each). When full, the oldest quarter
 * is forgotten and gone_floor rises to the highest MODSEQ forgotten. */
#define INDEX_GONE_MAX 1024

struct index {
	uint32_t folder_id, uidvalidity, uidnext;
	uint64_t highestmodseq;
	struct index_msg *msgs; /* sorted by uid */
	size_t n, cap;
	char *keywords[64];
	uint64_t bytes;         /* sum of sizes */
	uint32_t unseen;
	uint32_t deleted;       /* messages flagged \Deleted */
	uint32_t max_seg;       /* highest segment number (RECORD_SEG_NUM) referenced */
	bool have_hdr;
	/* expunge runs in log (= MODSEQ) order; expunges with a MODSEQ at or
	 * below gone_floor may be missing from them */
	struct index_gone *gone;
	size_t ngone, gone_cap;
	uint64_t gone_floor;
	/* generation of the log the index reflects: how many rewrites are
	 * behind it (its FOLDER_HDR says; 0 for a log never rewritten); kept
	 * in version 3 checkpoints, so that a checkpoint of another log is
	 * never taken for this one */
	uint32_t log_gen;
	/* inside index_apply()/index_replay() only: expunged slots not yet
	 * squeezed out, and the first of them; 0 outside */
	size_t marked, marked_from;
	/* the arena of the checkpoint loaded, while messages point into it
	 * (arena_msgs of them, with arena_live of its arena_bytes blob
	 * bytes); once expunges leave less than half of it live, the rest
	 * get blobs of their own and it goes when its last view does */
	struct iblob *arena;
	size_t arena_msgs;
	uint64_t arena_bytes, arena_live;
};

void index_init(struct index *ix);
void index_clear(struct index *ix);

/* Applies one decoded record. Returns 0, -EINVAL when the record cannot
 * follow the state (a UID not above uidnext, a missing header), or -ENOMEM.
 * On error the index is unchanged. freed_r (may be NULL) receives the bytes
 * expunged by the record. */
int index_apply(struct index *ix, const struct record *r, uint64_t *freed_r);

/* Replays the records of log[0..len) into ix. *good_r receives the length
 * of the prefix of whole, valid, applicable records. Returns the status
 * that stopped it: RECORD_END (clean), RECORD_SHORT (torn tail), RECORD_BAD
 * (corrupt or inapplicable), or -ENOMEM (as a negative int). */
int index_replay(struct index *ix, struct span log, size_t *good_r);

/* The message with uid, or NULL. */
struct index_msg *index_find(const struct index *ix, uint32_t uid);
/* The keyword index of name, adding nothing; -1 when absent. */
int index_keyword(const struct index *ix, struct span name);

/* The UIDs removed by expunges with a MODSEQ above since, as ascending,
 * disjoint, non-adjacent ranges (lo..hi) in *out_r (malloc'ed, the caller
 * frees it; NULL when *n_r is 0). Returns 1 when that is every such UID
 * (since >= gone_floor), 0 when older expunges may have been forgotten
 * (the ranges then hold the remembered ones), or -ENOMEM. */
int index_vanished(const struct index *ix, uint64_t since, struct index_gone **out_r,
		   size_t *n_r);

/* ---- a rewritten log ---------------------------------------------------- */

/* The records of a log that says exactly what ix holds, without its
 * history: FOLDER_HDR, a KEYWORD per table entry, an APPEND per message
 * (with its current flags, keywords and MODSEQ), and a STATE record with
 * UIDNEXT, HIGHESTMODSEQ, the highest segment and the expunge memory.
 * Replaying them gives back ix. */
struct index_base_cursor {
	unsigned stage;
	size_t i;
};
enum { INDEX_BASE_DONE = 4 };

/* The generation a rewrite of ix's log gets (1 after UINT32_MAX). */
static inline uint32_t index_next_gen(const struct index *ix)
{
	return ix->log_gen == UINT32_MAX ? 1 : ix->log_gen + 1;
}

/* Bytes of the whole rewritten log. */
size_t index_base_size(const struct index *ix);
/* Writes the next whole records that fit into out (cap bytes, at least
 * RECORD_MAX_LEN to be sure of progress); returns their length, 0 once
 * the cursor (zeroed to start) is at the end. ix must not change in between. */
size_t index_base_next(const struct index *ix, struct index_base_cursor *c, uint8_t *out,
		       size_t cap);

/* ---- checkpoints ------------------------------------------------------ */

#define CHECKPOINT_MAGIC 0x6b636d72u /* "rmck" */
/* Version 2 adds the expunge runs; a version 1 checkpoint still loads, with
 * gone_floor at its HIGHESTMODSEQ (the expunges it covers are forgotten).
 * Version 3 (written now) adds log_gen and puts every structure blob in one
 * area before a table of fixed-size message records, so that a load keeps
 * the checkpoint's buffer as the blobs' arena instead of copying them;
 * versions 1 and 2 still load (their blobs copied). Format: docs/store.md. */
#define CHECKPOINT_VERSION 3u

/* Bytes needed by index_checkpoint_put(). */
size_t index_checkpoint_size(const struct index *ix);
/* Serializes ix, which reflects the log up to log_off, into out (cap bytes).
 * Returns the length, or 0 if cap is too small. */
size_t index_checkpoint_put(const struct index *ix, uint64_t log_off, uint8_t *out, size_t cap);
/* Loads a checkpoint into an empty ix. Returns 0 and the log offset it
 * covers in *log_off_r, -EINVAL when it is damaged (ix is then cleared), or
 * -ENOMEM. in is copied (into an arena: index_checkpoint_load_arena()). */
int index_checkpoint_load(struct index *ix, struct span in, uint64_t *log_off_r);
/* The same, on a checkpoint read into *arena_r (from iblob_alloc(), len
 * bytes), whose reference it takes over (*arena_r is set to NULL, success
 * or not): a version 3 checkpoint's blobs stay in it, shrunk to the end of
 * its blob area, and the messages reference it; otherwise it is freed. */
int index_checkpoint_load_arena(struct index *ix, struct iblob **arena_r, size_t len,
				uint64_t *log_off_r);

#endif
