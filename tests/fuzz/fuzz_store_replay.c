/* libFuzzer target: the store's on-disk parsers (record framing, log
 * replay, checkpoint load) on arbitrary bytes, as a damaged disk would
 * hand them over. Invariants: no crash or leak; the recovery scan never
 * accepts a record whose CRC fails: every record record_next() accepts,
 * and every record of replay's good prefix (walked by its length fields),
 * has a CRC32C that recomputes over its own bytes, computed here apart
 * from record.c; the good prefix is a whole number of records that
 * replays again to the same state; the log a rewrite would write from that
 * state (index_base_next) replays to the same state again, message by
 * message; a loaded checkpoint's trailing CRC recomputes, and it
 * re-serializes to the same bytes. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/crc32c.h"
#include "store/index.h"
#include "store/record.h"

/* Aborts unless rec[0..avail) starts with a whole record (the framing in
 * record.h) whose stored CRC32C is that of len, then of bytes [8, len).
 * Returns its length. Both implementations must agree, so a wrong SSE4.2
 * path cannot hide a bad CRC either. */
static size_t crc_checked(const uint8_t *rec, size_t avail)
{
	uint32_t len, stored, sw;

	if (avail < RECORD_HDR_LEN)
		abort();
	memcpy(&len, rec, 4);
	memcpy(&stored, rec + 4, 4);
	if (len < RECORD_HDR_LEN || len > RECORD_MAX_LEN || len > avail)
		abort();
	sw = crc32c_sw(crc32c_sw(0, rec, 4), rec + 8, len - 8);
	if (stored != sw || crc32c(crc32c(0, rec, 4), rec + 8, len - 8) != sw)
		abort();
	return len;
}

/* The raw scan every log reader starts with (the user folder list is read
 * with record_next alone): each accepted record must check out. */
static void scan_records(const uint8_t *data, size_t size)
{
	size_t off = 0, used;
	struct record r;

	while (record_next((struct span){ data + off, size - off }, &r, &used) == RECORD_OK) {
		if (used != r.len || crc_checked(data + off, size - off) != used)
			abort();
		off += used;
	}
}

/* Replay's good prefix, walked by the records' own length fields: each
 * record checks out and they end exactly at good. */
static void good_prefix_checked(const uint8_t *data, size_t good)
{
	size_t off = 0;

	while (off < good)
		off += crc_checked(data + off, good - off);
	if (off != good)
		abort();
}

static bool same_msg(const struct index_msg *x, const struct index_msg *y)
{
	return x->uid == y->uid && x->flags == y->flags && x->keywords == y->keywords &&
	       x->modseq == y->modseq && x->size == y->size && x->date == y->date &&
	       x->seg == y->seg && x->data_crc == y->data_crc && x->off == y->off &&
	       x->blen == y->blen &&
	       !memcmp(index_msg_blob(x).p, index_msg_blob(y).p, x->blen);
}

/* A log rewritten from ix (without its history) must say exactly ix. */
static void rewrite_checked(const struct index *ix)
{
	struct index_base_cursor c = { 0 };
	size_t size = index_base_size(ix), len = 0, n, good = 0;
	uint8_t *buf = malloc(size + RECORD_MAX_LEN);
	struct index b;

	if (!buf)
		abort();
	while ((n = index_base_next(ix, &c, buf + len, size + RECORD_MAX_LEN - len)))
		len += n;
	if (c.stage != INDEX_BASE_DONE || len != size)
		abort();
	index_init(&b);
	if (index_replay(&b, (struct span){ buf, len }, &good) != RECORD_END || good != len)
		abort();
	if (b.n != ix->n || b.uidnext != ix->uidnext || b.highestmodseq != ix->highestmodseq ||
	    b.bytes != ix->bytes || b.unseen != ix->unseen || b.deleted != ix->deleted ||
	    b.max_seg != ix->max_seg || b.ngone != ix->ngone || b.gone_floor != ix->gone_floor ||
	    b.uidvalidity != ix->uidvalidity || b.folder_id != ix->folder_id)
		abort();
	for (size_t i = 0; i < ix->n; i++)
		if (!same_msg(&b.msgs[i], &ix->msgs[i]))
			abort();
	for (size_t i = 0; i < ix->ngone; i++)
		if (memcmp(&b.gone[i], &ix->gone[i], sizeof(b.gone[i])))
			abort();
	for (unsigned i = 0; i < 64; i++)
		if (!ix->keywords[i] != !b.keywords[i] ||
		    (ix->keywords[i] && strcmp(ix->keywords[i], b.keywords[i])))
			abort();
	index_clear(&b);
	free(buf);
}

static void replay_twice(const uint8_t *data, size_t size)
{
	struct index a, b;
	size_t good = 0, good2 = 0;
	int st;

	index_init(&a);
	st = index_replay(&a, (struct span){ data, size }, &good);
	if (good > size)
		abort();
	good_prefix_checked(data, good);
	if (st >= 0) {
		index_init(&b);
		if (index_replay(&b, (struct span){ data, good }, &good2) != RECORD_END || good2 != good)
			abort();
		if (a.n != b.n || a.uidnext != b.uidnext || a.highestmodseq != b.highestmodseq ||
		    a.bytes != b.bytes || a.unseen != b.unseen)
			abort();
		index_clear(&b);
		if (a.have_hdr)
			rewrite_checked(&a);
	}
	index_clear(&a);
}

static void checkpoint_round_trip(const uint8_t *data, size_t size)
{
	struct index ix;
	uint64_t off;

	index_init(&ix);
	if (index_checkpoint_load(&ix, (struct span){ data, size }, &off) == 0) {
		size_t n = index_checkpoint_size(&ix);
		uint8_t *out = malloc(n);
		uint32_t ver;
		uint32_t crc;
		memcpy(&ver, data + 4, 4);
		memcpy(&crc, data + size - 4, 4);
		if (crc != crc32c_sw(0, data, size - 4))
			abort();
		/* keyword order and names are canonical, so the bytes match (a
		 * version 1 or 2 checkpoint is written back as the current
		 * version, whose blobs the loaded index reads from the arena
		 * the input was copied into) */
		if (!out || index_checkpoint_put(&ix, off, out, n) != n ||
		    (ver == CHECKPOINT_VERSION && (n != size || memcmp(out, data, n) != 0)))
			abort();
		free(out);
	}
	index_clear(&ix);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	scan_records(data, size);
	replay_twice(data, size);
	checkpoint_round_trip(data, size);
	return 0;
}
