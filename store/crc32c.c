/* crc32c.c - CRC32C with SSE4.2 (three interleaved streams joined with
 * PCLMULQDQ when the CPU has it) and a table fallback. */
#include "store/crc32c.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#include <wmmintrin.h>
#define CRC32C_X86 1
#endif

/* 8 tables of 256 entries (slicing-by-8), built once. The build is
 * idempotent, so a race between two first callers only writes the same
 * values twice; the release store publishes them. */
static uint32_t crc_table[8][256];
static atomic_int crc_table_ready;

static void crc32c_init_table(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
					  crc_table[0][crc_table[t - 1][i] & 0xff];
	atomic_store_explicit(&crc_table_ready, 1, memory_order_release);
}

uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (!atomic_load_explicit(&crc_table_ready, memory_order_acquire))
		crc32c_init_table();
	crc = ~crc;
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		w ^= crc;
		crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		      crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		      crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		      crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

#ifdef CRC32C_X86
/* One stream of crc32q: bound by the instruction's latency (3 cycles per
 * 8 bytes); the tail of the interleaved version and the whole CPU without
 * PCLMULQDQ. */
__attribute__((target("sse4.2")))
static uint64_t crc32c_1way(uint64_t c, const uint8_t *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		c = _mm_crc32_u64(c, w);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return c;
}

/* Three streams over consecutive blocks of blk bytes each, in flight at
 * once (crc32q issues one per cycle but takes 3), then joined: the CRC
 * register is linear, so crc(A||B||C) = shift(crc(A), 2 blk) ^
 * shift(crc(B), blk) ^ crc(C) with B and C started from 0. A shift by n
 * bytes is a carry-less multiply by x^(8n-33) mod P followed by a crc32q
 * of the product (the reduction): k1 and k2 are those constants for blk
 * and 2 blk (computed with the CRC's own polynomial; the unit test checks
 * this path against the table one at every length around the blocks). */
__attribute__((target("sse4.2,pclmul")))
static uint64_t crc32c_3way(uint64_t c, const uint8_t **pp, size_t *len_r, size_t blk,
			    uint32_t k1, uint32_t k2)
{
	const uint8_t *p = *pp;
	size_t len = *len_r;

	while (len >= 3 * blk) {
		uint64_t c1 = 0, c2 = 0;
		for (size_t i = 0; i < blk; i += 8) {
			uint64_t w0, w1, w2;
			memcpy(&w0, p + i, 8);
			memcpy(&w1, p + blk + i, 8);
			memcpy(&w2, p + 2 * blk + i, 8);
			c = _mm_crc32_u64(c, w0);
			c1 = _mm_crc32_u64(c1, w1);
			c2 = _mm_crc32_u64(c2, w2);
		}
		__m128i a = _mm_clmulepi64_si128(_mm_cvtsi32_si128((int)(uint32_t)c),
						 _mm_cvtsi32_si128((int)k2), 0);
		__m128i b = _mm_clmulepi64_si128(_mm_cvtsi32_si128((int)(uint32_t)c1),
						 _mm_cvtsi32_si128((int)k1), 0);
		c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(_mm_xor_si128(a, b))) ^ c2;
		p += 3 * blk;
		len -= 3 * blk;
	}
	*pp = p;
	*len_r = len;
	return c;
}

/* x^(8n-33) mod P (bit-reflected) for n = 4096, 8192, 128, 256 bytes */
enum { CRC_LONG = 4096, CRC_SHORT = 128 };
#define CRC_K_LONG1 0x82f89c77u
#define CRC_K_LONG2 0x54a86326u
#define CRC_K_SHORT1 0x0d3b6092u
#define CRC_K_SHORT2 0xb9e02b86u

static int crc32c_has_pclmul(void)
{
	static atomic_int has; /* 0 unknown, 1 no, 2 yes; benign race */
	int h = atomic_load_explicit(&has, memory_order_relaxed);

	if (!h) {
		h = __builtin_cpu_supports("pclmul") ? 2 : 1;
		atomic_store_explicit(&has, h, memory_order_relaxed);
	}
	return h == 2;
}

__attribute__((target("sse4.2")))
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t c = ~crc;

	if (len >= 3 * CRC_SHORT && crc32c_has_pclmul()) {
		/* align first, so that every stream's loads are aligned */
		while ((uintptr_t)p & 7) {
			c = _mm_crc32_u8((uint32_t)c, *p++);
			len--;
		}
		c = crc32c_3way(c, &p, &len, CRC_LONG, CRC_K_LONG1, CRC_K_LONG2);
		c = crc32c_3way(c, &p, &len, CRC_SHORT, CRC_K_SHORT1, CRC_K_SHORT2);
	}
	return ~(uint32_t)crc32c_1way(c, p, len);
}

int crc32c_hw_available(void)
{
	return __builtin_cpu_supports("sse4.2");
}
#else
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
	return crc32c_sw(crc, buf, len);
}

int crc32c_hw_available(void)
{
	return 0;
}
#endif

uint32_t crc32c(uint32_t crc, const void *p, size_t len)
{
	/* 0 unknown, 1 software, 2 hardware; benign race as above. */
	static atomic_int impl;
	int i = atomic_load_explicit(&impl, memory_order_relaxed);

	if (i == 0) {
		i = crc32c_hw_available() ? 2 : 1;
		atomic_store_explicit(&impl, i, memory_order_relaxed);
	}
	return i == 2 ? crc32c_hw(crc, p, len) : crc32c_sw(crc, p, len);
}
