/* record.h - framing and encoding of the store's log records.
 *
 * Every log (a folder's index log, a user's folder list) is a sequence of
 * records, each framed as
 *
 *     u32 len      total length of the record, header included (>= 16)
 *     u32 crc      CRC32C of len, then of bytes [8, len)
 *     u32 type     enum record_type
 *     u32 zero     reserved, 0
 *     payload      len - 16 bytes, little-endian fields (see docs/store.md)
 *
 * A record whose len is 0 marks the end of the log (a zeroed tail); a len out
 * of range or a CRC mismatch marks a torn or corrupt record. Pure code: no
 * I/O, no allocation except where a function says so. */
#ifndef RINGMAIL_STORE_RECORD_H
#define RINGMAIL_STORE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

enum { RECORD_HDR_LEN = 16 };
/* The longest record accepted: bounds replay memory and the damage a corrupt
 * length can do. A structure blob must fit well inside. */
enum { RECORD_MAX_LEN = 1 << 20 };
enum { RECORD_BLOB_MAX = 256 * 1024 };
/* A flag or expunge record names at most this many UIDs; larger requests are
 * split into several records. */
enum { RECORD_MAX_UIDS = 16384 };
enum { RECORD_NAME_MAX = 1024 };

enum record_type {
	/* folder index log */
	REC_FOLDER_HDR = 1, /* first record of a folder log */
	REC_APPEND = 2,
	REC_FLAGS = 3,
	REC_EXPUNGE = 4,
	REC_KEYWORD = 5,
	REC_RELOC = 6,      /* compaction moved a message */
	REC_STATE = 7,      /* a rewritten log's counters and expunge memory */
	/* user folder list */
	REC_MBOX_CREATE = 10,
	REC_MBOX_RENAME = 11,
	REC_MBOX_DELETE = 12,
	REC_MBOX_SUBSCRIBE = 13,
};

/* A record's seg field: a segment number, with RECORD_SEG_SINGLE set for a
 * one-message segment file. Both kinds share one number space per folder. */
#define RECORD_SEG_SINGLE 0x80000000u
#define RECORD_SEG_NUM(s) ((s) & ~RECORD_SEG_SINGLE)

enum record_flag_op { REC_FLAGS_SET = 0, REC_FLAGS_ADD = 1, REC_FLAGS_REMOVE = 2 };

#define FOLDER_LOG_MAGIC 0x676d6972u /* "rimg" */
#define FOLDER_LOG_VERSION 1u
/* Version 2 adds the log's generation (gen u32, zero u32): the number of
 * rewrites behind it. A log that was never rewritten keeps version 1. */
#define FOLDER_LOG_VERSION_GEN 2u

struct rec_folder_hdr {
	uint32_t magic, version, uidvalidity;
	uint32_t folder_id;
	uint32_t gen;       /* version 2; 0 in version 1 */
};

struct rec_append {
	uint32_t uid;
	uint32_t seg;       /* segment file number */
	uint64_t off, len;  /* message bytes in the segment */
	int64_t date;       /* internal date, seconds since the epoch */
	uint64_t modseq;
	uint32_t flags;     /* STORE_F_* */
	uint32_t data_crc;  /* CRC32C of the message bytes */
	uint64_t keywords;  /* bit i: keyword i of the folder's table */
	struct span blob;   /* structure blob; points into the record */
};

struct rec_flags {
	uint64_t modseq;
	uint32_t op, flags;
	uint64_t keywords;
	uint32_t n;
	const uint8_t *uids; /* n little-endian u32, in the record */
};

struct rec_expunge {
	uint64_t modseq;
	uint32_t n;
	const uint8_t *uids;
};

struct rec_keyword {
	uint32_t idx;
	struct span name;
};

struct rec_reloc {
	uint32_t uid, seg;
	uint64_t off;
};

/* The end of a rewritten (rotated) log's base: what its APPEND records
 * cannot say once expunged messages are gone from it. */
enum { RECORD_STATE_RUNS_MAX = 1024 };

struct rec_state {
	uint32_t uidnext, max_seg;
	uint64_t highestmodseq, gone_floor;
	uint32_t n;          /* expunge runs */
	const uint8_t *runs; /* n x (lo u32, hi u32, modseq u64), in the record */
};

struct rec_mbox {
	uint32_t id;          /* CREATE, RENAME, DELETE */
	uint32_t uidvalidity; /* CREATE */
	uint32_t on;          /* SUBSCRIBE */
	struct span name;     /* CREATE, RENAME, SUBSCRIBE */
};

/* A decoded record; spans point into the buffer given to record_next(). */
struct record {
	uint32_t type, len;
	union {
		struct rec_folder_hdr hdr;
		struct rec_append append;
		struct rec_flags flags;
		struct rec_expunge expunge;
		struct rec_keyword keyword;
		struct rec_reloc reloc;
		struct rec_state state;
		struct rec_mbox mbox;
	} u;
};

enum record_status {
	RECORD_OK,      /* a record was decoded */
	RECORD_END,     /* clean end: no bytes left, or a zeroed tail */
	RECORD_SHORT,   /* the buffer ends inside a record (torn, or read more) */
	RECORD_BAD,     /* bad length, CRC mismatch, or malformed payload */
};

/* Decodes the record at the start of in. Returns the status; on RECORD_OK
 * fills *r (valid as long as in) and sets *used_r to r->len. */
enum record_status record_next(struct span in, struct record *r, size_t *used_r);

/* Encoders write one whole record into out (capacity cap) and return its
 * length, or 0 when it does not fit in cap or in RECORD_MAX_LEN. */
size_t record_size_append(size_t bloblen);
size_t record_put_folder_hdr(uint8_t *out, size_t cap, const struct rec_folder_hdr *h);
size_t record_put_append(uint8_t *out, size_t cap, const struct rec_append *a);
size_t record_size_uids(uint32_t n);
size_t record_put_flags(uint8_t *out, size_t cap, uint64_t modseq, uint32_t op,
			uint32_t flags, uint64_t keywords, const uint32_t *uids, uint32_t n);
size_t record_put_expunge(uint8_t *out, size_t cap, uint64_t modseq,
			  const uint32_t *uids, uint32_t n);
size_t record_put_keyword(uint8_t *out, size_t cap, uint32_t idx, struct span name);
size_t record_put_reloc(uint8_t *out, size_t cap, const struct rec_reloc *r);
size_t record_size_state(uint32_t nruns);
/* st->runs: st->n runs of 16 bytes each, (lo u32, hi u32, modseq u64) */
size_t record_put_state(uint8_t *out, size_t cap, const struct rec_state *st);
size_t record_put_mbox(uint8_t *out, size_t cap, uint32_t type, const struct rec_mbox *m);

/* The i-th UID of a flags or expunge record. */
static inline uint32_t record_uid_at(const uint8_t *uids, uint32_t i)
{
	uint32_t v;
	memcpy(&v, uids + 4 * (size_t)i, 4);
	return v;
}

/* The i-th expunge run of a state record. */
static inline void record_run_at(const uint8_t *runs, uint32_t i, uint32_t *lo, uint32_t *hi,
				 uint64_t *modseq)
{
	memcpy(lo, runs + 16 * (size_t)i, 4);
	memcpy(hi, runs + 16 * (size_t)i + 4, 4);
	memcpy(modseq, runs + 16 * (size_t)i + 8, 8);
}

/* Finishes a record whose payload was written after a RECORD_HDR_LEN gap:
 * fills in len, type and the CRC. Returns len. */
size_t record_seal(uint8_t *rec, size_t len, uint32_t type);

#endif
