/* libFuzzer target: the store's on-disk parsers (record framing, log
 * replay, checkpoint load) on arbitrary bytes, as a damaged disk would
 * hand them over. Invariants: no crash or leak; replay's good prefix is a
 * whole number of records that replays again to the same state; a loaded
 * checkpoint re-serializes to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/index.h"
#include "store/record.h"

static void replay_twice(const uint8_t *data, size_t size)
{
	struct index a, b;
	size_t good = 0, good2 = 0;
	int st;

	index_init(&a);
	st = index_replay(&a, (struct span){ data, size }, &good);
	if (good > size)
		abort();
	if (st >= 0) {
		index_init(&b);
		if (index_replay(&b, (struct span){ data, good }, &good2) != RECORD_END || good2 != good)
			abort();
		if (a.n != b.n || a.uidnext != b.uidnext || a.highestmodseq != b.highestmodseq ||
		    a.bytes != b.bytes || a.unseen != b.unseen)
			abort();
		index_clear(&b);
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
		memcpy(&ver, data + 4, 4);
		/* keyword order and names are canonical, so the bytes match (a
		 * version 1 checkpoint is written back as the current version) */
		if (!out || index_checkpoint_put(&ix, off, out, n) != n ||
		    (ver == CHECKPOINT_VERSION && (n != size || memcmp(out, data, n) != 0)))
			abort();
		free(out);
	}
	index_clear(&ix);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	replay_twice(data, size);
	checkpoint_round_trip(data, size);
	return 0;
}
