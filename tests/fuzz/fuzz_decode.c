/* fuzz_decode.c - libFuzzer target for proto/decode.c.
 *
 * The input is decoded as base64 and as quoted-printable, whole and split
 * at a point taken from its first two bytes: both outputs must be
 * identical and never longer than the input; the one-for-any-CTE decoder
 * (struct decode) must give the same. The input is also encoded as base64
 * here and must decode back to itself, and read as a
 * Content-Transfer-Encoding value its class must not depend on case. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/decode.h"

static size_t run(const uint8_t *data, size_t size, size_t split, int qp, uint8_t *out)
{
	struct decode_b64 b;
	struct decode_qp q;
	decode_b64_init(&b);
	decode_qp_init(&q);
	size_t o = 0;
	size_t cuts[2] = { split, size };
	size_t pos = 0;
	for (int k = 0; k < 2; k++) {
		struct span in = span_make(data + pos, cuts[k] - pos);
		size_t w = qp ? decode_qp_feed(&q, in, out + o) : decode_b64_feed(&b, in, out + o);
		if (w > DECODE_OUT_MAX(in.len))
			abort();
		o += w;
		pos = cuts[k];
	}
	if (qp)
		o += decode_qp_finish(&q, out + o);
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t split = size >= 2 ? ((size_t)data[0] << 8 | data[1]) % (size + 1) : 0;
	uint8_t *a = malloc(DECODE_OUT_MAX(size) + 8), *b = malloc(DECODE_OUT_MAX(size) + 8);
	for (int qp = 0; qp < 2; qp++) {
		size_t na = run(data, size, size, qp, a);
		size_t nb = run(data, size, split, qp, b);
		if (na != nb || memcmp(a, b, na) != 0 || na > size)
			abort();
	}
	for (int qp = 0; qp < 2; qp++) {
		size_t na = run(data, size, size, qp, a);
		struct decode d;
		decode_init(&d, qp ? DECODE_CTE_QP : DECODE_CTE_BASE64);
		size_t nb = decode_feed(&d, span_make(data, split), b);
		nb += decode_feed(&d, span_make(data + split, size - split), b + nb);
		nb += decode_finish(&d, b + nb);
		if (na != nb || memcmp(a, b, na) != 0)
			abort();
	}
	free(a);
	free(b);

	uint8_t *up = malloc(size + 1);
	for (size_t i = 0; i < size; i++)
		up[i] = data[i] >= 'a' && data[i] <= 'z' ? (uint8_t)(data[i] - 32) : data[i];
	if (decode_cte_parse(span_make(data, size)) != decode_cte_parse(span_make(up, size)))
		abort();
	free(up);

	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint8_t *enc = malloc(size / 3 * 4 + 8), *dec = malloc(size + 8);
	size_t e = 0;
	for (size_t i = 0; i < size; i += 3) {
		uint32_t v = (uint32_t)data[i] << 16;
		if (i + 1 < size)
			v |= (uint32_t)data[i + 1] << 8;
		if (i + 2 < size)
			v |= data[i + 2];
		enc[e++] = (uint8_t)alpha[v >> 18 & 63];
		enc[e++] = (uint8_t)alpha[v >> 12 & 63];
		enc[e++] = i + 1 < size ? (uint8_t)alpha[v >> 6 & 63] : '=';
		enc[e++] = i + 2 < size ? (uint8_t)alpha[v & 63] : '=';
	}
	struct decode_b64 d;
	decode_b64_init(&d);
	size_t cut = split < e ? split : e;
	size_t o = decode_b64_feed(&d, span_make(enc, cut), dec);
	o += decode_b64_feed(&d, span_make(enc + cut, e - cut), dec + o);
	if (o != size || memcmp(dec, data, size) != 0)
		abort();
	free(enc);
	free(dec);
	return 0;
}
