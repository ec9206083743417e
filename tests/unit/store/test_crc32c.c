/* CRC32C: the RFC 3720 B.4 vectors, both implementations, any split. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdlib.h>
#include <string.h>

#include "store/crc32c.h"

struct vec {
	uint8_t data[48];
	size_t len;
	uint32_t crc;
};

static void vec_fill(struct vec *v, int kind)
{
	memset(v, 0, sizeof(*v));
	v->len = 32;
	switch (kind) {
	case 0: /* 32 bytes of zeroes */
		v->crc = 0x8a9136aa;
		break;
	case 1: /* 32 bytes of ones */
		memset(v->data, 0xff, 32);
		v->crc = 0x62a8ab43;
		break;
	case 2: /* incrementing */
		for (int i = 0; i < 32; i++)
			v->data[i] = (uint8_t)i;
		v->crc = 0x46dd794e;
		break;
	case 3: /* decrementing */
		for (int i = 0; i < 32; i++)
			v->data[i] = (uint8_t)(31 - i);
		v->crc = 0x113fdb5c;
		break;
	default: { /* an iSCSI SCSI Read (10) command PDU */
		static const uint8_t pdu[48] = {
			0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
			0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
			0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		};
		memcpy(v->data, pdu, 48);
		v->len = 48;
		v->crc = 0xd9963a56;
	}
	}
}

ParameterizedTestParameters(crc32c, rfc3720)
{
	static int kinds[] = { 0, 1, 2, 3, 4 };
	return cr_make_param_array(int, kinds, sizeof(kinds) / sizeof(kinds[0]));
}

ParameterizedTest(int *kind, crc32c, rfc3720)
{
	struct vec v;

	vec_fill(&v, *kind);
	cr_expect_eq(crc32c_sw(0, v.data, v.len), v.crc);
	cr_expect_eq(crc32c(0, v.data, v.len), v.crc);
	if (crc32c_hw_available())
		cr_expect_eq(crc32c_hw(0, v.data, v.len), v.crc);
	/* continuation at every split point */
	for (size_t i = 0; i <= v.len; i++) {
		cr_expect_eq(crc32c(crc32c(0, v.data, i), v.data + i, v.len - i), v.crc);
		cr_expect_eq(crc32c_sw(crc32c_sw(0, v.data, i), v.data + i, v.len - i), v.crc);
	}
}

Test(crc32c, check_value)
{
	cr_expect_eq(crc32c(0, "123456789", 9), 0xe3069283);
	cr_expect_eq(crc32c(0, "", 0), 0);
}

Test(crc32c, hw_matches_sw_unaligned)
{
	uint8_t buf[1000];

	if (!crc32c_hw_available())
		cr_skip_test("no SSE4.2");
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	for (size_t off = 0; off < 9; off++)
		for (size_t len = 0; len < 300; len += 7)
			cr_expect_eq(crc32c_hw(0x1234, buf + off, len),
				     crc32c_sw(0x1234, buf + off, len));
}

/* The three-stream path (blocks of 128 and 4096 bytes per stream) joins
 * its streams with constants: every length around a block boundary, at
 * every alignment, with the sum of both paths and a continued CRC. */
Test(crc32c, hw_three_streams_match_sw_around_blocks)
{
	enum { MAX = 3 * 4096 * 2 + 3 * 128 * 2 + 64 };
	static uint8_t buf[MAX + 8];
	static const size_t base[] = { 3 * 128, 3 * 128 * 2, 3 * 4096, 3 * 4096 + 3 * 128,
				       3 * 4096 * 2, 3 * 4096 * 2 + 3 * 128 * 2 };

	if (!crc32c_hw_available())
		cr_skip_test("no SSE4.2");
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 2654435761u >> 13);
	for (size_t b = 0; b < sizeof(base) / sizeof(base[0]); b++)
		for (size_t len = base[b] - 9; len <= base[b] + 9 && len <= MAX; len++)
			for (size_t off = 0; off < 8; off++) {
				cr_expect_eq(crc32c_hw(0, buf + off, len), crc32c_sw(0, buf + off, len),
					     "len %zu off %zu", len, off);
				cr_expect_eq(crc32c_hw(0xdeadbeef, buf + off, len),
					     crc32c_sw(0xdeadbeef, buf + off, len), "len %zu off %zu", len, off);
			}
	/* a large buffer, whole and continued at an odd split */
	{
		size_t n = 1 << 20;
		uint8_t *big = malloc(n);
		cr_assert(big);
		for (size_t i = 0; i < n; i++)
			big[i] = (uint8_t)(i * 40503u >> 7);
		uint32_t want = crc32c_sw(0, big, n);
		cr_expect_eq(crc32c_hw(0, big, n), want);
		cr_expect_eq(crc32c_hw(crc32c_hw(0, big, 12345), big + 12345, n - 12345), want);
		free(big);
	}
}
