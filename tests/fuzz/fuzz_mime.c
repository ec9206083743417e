/* libFuzzer target for proto/mime.c.
 *
 * Input: byte 0 = options (bits 0-1: how the split run feeds: one 2-way
 * split, 1-byte, 3-byte or 64-byte pieces; bits 2-4: a lowered depth
 * limit 1..8; bits 5-7: a lowered part limit 1..22), bytes 1-2 = split
 * offset, the rest = a message.
 *
 * 1. The message is scanned unsplit and split; both blobs must be
 *    identical, within MIME_BLOB_MAX, and accepted by the reader. Every
 *    part, field, a set of sections, ENVELOPE of every message part and
 *    BODY/BODYSTRUCTURE are read back, into a buffer of a fuzzer-chosen
 *    size and into one big enough (the lengths must agree).
 * 2. The limits: the blob has at most MIME_PARTS_MAX parts and none deeper
 *    than MIME_DEPTH_MAX. The message is scanned again under the lowered
 *    limits (mime_scan_limits, as the [limits] settings do): that blob
 *    keeps within them, and when it sets neither MIME_BLOB_PARTS_LIMIT nor
 *    MIME_BLOB_DEPTH_LIMIT it equals the default blob (a message that
 *    goes past a limit, so that the limit changes what is split, has the
 *    limit's flag set). Small lowered limits let small inputs reach them.
 * 3. The whole input is given to the reader as a blob: it must reject it
 *    or read it safely. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/mime.h"

#define CHECK(x)                                                              \
	do {                                                                  \
		if (!(x))                                                     \
			__builtin_trap();                                     \
	} while (0)

static struct mime_scanner sc;
static uint8_t blob_a[MIME_BLOB_MAX], blob_b[MIME_BLOB_MAX], blob_c[MIME_BLOB_MAX];
static uint8_t out[1 << 20];

static size_t scan(const uint8_t *p, size_t len, size_t split, size_t step,
		   uint32_t depth_max, uint32_t parts_max, uint8_t *blob)
{
	size_t off = 0, blen;

	mime_scan_init(&sc);
	mime_scan_limits(&sc, depth_max, parts_max);
	while (off < len) {
		size_t n = len - off;
		if (step)
			n = n < step ? n : step;
		else if (off < split)
			n = split - off;
		/* each piece in its own exact-size buffer: ASan sees over-reads */
		uint8_t *piece = malloc(n);
		memcpy(piece, p + off, n);
		mime_scan_feed(&sc, (struct span){ piece, n });
		free(piece);
		off += n;
	}
	CHECK(mime_scan_finish(&sc, blob, MIME_BLOB_MAX, &blen) == 0);
	CHECK(blen <= MIME_BLOB_MAX);
	return blen;
}

/* Every part within the limits: at most parts_max parts, none deeper than
 * depth_max, part 0 the root and every other part one deeper than its
 * (earlier) parent. */
static void check_limits(const struct mime_blob *mb, uint32_t depth_max,
			 uint32_t parts_max)
{
	CHECK(mb->nparts >= 1 && mb->nparts <= parts_max);
	for (uint32_t i = 0; i < mb->nparts; i++) {
		struct mime_part p, parent;
		CHECK(mime_blob_part(mb, i, &p) == 0);
		CHECK(p.depth <= depth_max);
		if (i == 0) {
			CHECK(p.depth == 0 && p.parent == UINT32_MAX);
			continue;
		}
		CHECK(p.parent < i && mime_blob_part(mb, p.parent, &parent) == 0);
		CHECK(p.depth == parent.depth + 1);
	}
}

static void read_all(const struct mime_blob *mb, size_t small)
{
	static const char *const specs[] = { "", "HEADER", "TEXT", "1", "2",
		"1.MIME", "1.HEADER", "1.TEXT", "1.1", "2.1", "1.2.3",
		"2.HEADER.FIELDS (from)", "1.1.1.1.1" };
	struct mime_section sec;

	for (uint32_t i = 0; i < mb->nparts; i++) {
		struct mime_part p;
		struct span v;
		CHECK(mime_blob_part(mb, i, &p) == 0);
		CHECK(p.hdr_off <= p.body_off && p.body_off <= p.end_off &&
		      p.end_off <= mb->size);
		for (int f = 0; f < MIME_FIELD_COUNT; f++)
			if (mime_blob_field(mb, i, (enum mime_field)f, &v))
				CHECK(v.p >= mb->b.p &&
				      v.p + v.len <= mb->b.p + mb->b.len);
		if (p.flags & MIME_PART_ENVELOPE) {
			int64_t a = mime_write_envelope(mb, i, out, small);
			int64_t b = mime_write_envelope(mb, i, out, sizeof(out));
			CHECK(a >= 0 && a == b);
		}
	}
	for (int ext = 0; ext < 2; ext++) {
		int64_t a = mime_write_bodystructure(mb, 0, ext, out, small);
		int64_t b = mime_write_bodystructure(mb, 0, ext, out, sizeof(out));
		CHECK(a > 0 && a == b);
	}
	for (size_t k = 0; k < sizeof(specs) / sizeof(specs[0]); k++)
		if (mime_blob_section(mb, (struct span){ (const uint8_t *)specs[k],
							 strlen(specs[k]) }, &sec) == 0)
			CHECK(sec.off + sec.len <= mb->size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t steps[] = { 0, 1, 3, 64 };
	struct mime_blob mb, mc;
	size_t la, lb, lc, split, small;
	uint32_t depth_max, parts_max;

	if (size < 3)
		return 0;
	split = (size_t)(data[1] | (data[2] << 8)) % (size - 2);
	small = (size_t)data[2] * 4;
	la = scan(data + 3, size - 3, 0, 0, 0, 0, blob_a);
	lb = scan(data + 3, size - 3, split, steps[data[0] & 3], 0, 0, blob_b);
	CHECK(la == lb && memcmp(blob_a, blob_b, la) == 0);
	CHECK(mime_blob_parse((struct span){ blob_a, la }, &mb) == 0);
	CHECK(mb.size == size - 3);
	check_limits(&mb, MIME_DEPTH_MAX, MIME_PARTS_MAX);
	read_all(&mb, small);

	depth_max = 1 + ((data[0] >> 2) & 7);
	parts_max = 1 + (uint32_t)(data[0] >> 5) * 3;
	lc = scan(data + 3, size - 3, 0, 0, depth_max, parts_max, blob_c);
	CHECK(mime_blob_parse((struct span){ blob_c, lc }, &mc) == 0);
	CHECK(mc.size == size - 3);
	check_limits(&mc, depth_max, parts_max);
	if (!(mc.flags & (MIME_BLOB_PARTS_LIMIT | MIME_BLOB_DEPTH_LIMIT)))
		CHECK(lc == la && memcmp(blob_c, blob_a, la) == 0);

	if (mime_blob_parse((struct span){ data, size }, &mb) == 0)
		read_all(&mb, small);
	return 0;
}
