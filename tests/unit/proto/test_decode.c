/* test_decode.c - the streaming base64 and quoted-printable decoders, each
 * case fed whole, split at every byte offset, and byte by byte. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "proto/decode.h"
#include "table_test.h"

/* Table rows leave out_len out when strlen() does. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

struct dcase {
	bool qp;
	const char *in;
	const char *out;
	size_t out_len; /* 0: strlen(out) */
};

static const struct dcase cases[] = {
	{ false, "", "" },
	{ false, "aGVsbG8=", "hello" },
	{ false, "aGVsbG8gd29ybGQ=", "hello world" },
	{ false, "aGk=", "hi" },
	{ false, "aA==", "h" },
	{ false, "YWJj", "abc" },
	{ false, "YW\r\nJj\r\n", "abc" },
	{ false, "Y W\tJ\x01j!", "abc" },       /* junk outside the alphabet skipped */
	{ false, "aGk=YWJj", "hiabc" },          /* concatenated encodings */
	{ false, "aGk", "hi" },                  /* missing padding */
	{ false, "+/+/", "\xfb\xff\xbf" },
	{ false, "AAEC", "\x00\x01\x02", 3 },
	{ false, "SGVsbG8sIFfDtnJsZA==", "Hello, W\xc3\xb6rld" },
	{ true, "", "" },
	{ true, "plain text\r\n", "plain text\r\n" },
	{ true, "caf=C3=A9", "caf\xc3\xa9" },
	{ true, "caf=c3=a9", "caf\xc3\xa9" },
	{ true, "soft=\r\nbreak", "softbreak" },
	{ true, "soft=\nbreak", "softbreak" },
	{ true, "soft=  \r\nbreak", "softbreak" },
	{ true, "soft=\rbreak", "softbreak" },
	{ true, "a=3Db", "a=b" },
	{ true, "bad=ZZ", "bad=ZZ" },
	{ true, "bad=4Z", "bad=4Z" },
	{ true, "x==41", "x=A" },
	{ true, "end=", "end=" },
	{ true, "end=4", "end=4" },
	{ true, "=00", "\x00", 1 },
	{ true, "line1\r\nline2=\r\n\r\n", "line1\r\nline2\r\n" },
	/* trailing whitespace is transport padding (RFC 2045 6.7 rule 3) */
	{ true, "a  \r\nb", "a\r\nb" },
	{ true, "a \t \nb \t", "a\nb" },
	{ true, "a b\tc", "a b\tc" },
	{ true, "a =\r\nb", "a b" },
	{ true, "a \t=20 \r\n", "a \t \r\n" },
	{ true, "=20\r\n", " \r\n" },
	{ true, "a \rb", "a\rb" },
	{ true, "end  ", "end" },
	{ true, "x=  \r\n  y  \r\n", "x  y\r\n" },
	{ true, "tab\t=\r\n\t", "tab\t" },
};

static size_t run(const struct dcase *c, size_t split, size_t step, uint8_t *out)
{
	struct decode_b64 b;
	struct decode_qp q;
	decode_b64_init(&b);
	decode_qp_init(&q);
	size_t len = strlen(c->in), o = 0, pos = 0;
	while (pos < len) {
		size_t n = step ? step : (pos < split ? split - pos : len - pos);
		if (n > len - pos)
			n = len - pos;
		struct span in = span_make(c->in + pos, n);
		size_t w = c->qp ? decode_qp_feed(&q, in, out + o) : decode_b64_feed(&b, in, out + o);
		cr_assert_leq(w, DECODE_OUT_MAX(n));
		o += w;
		pos += n;
	}
	if (c->qp)
		o += decode_qp_finish(&q, out + o);
	return o;
}

static void check(const struct dcase *c)
{
	size_t len = strlen(c->in);
	size_t want = c->out_len ? c->out_len : strlen(c->out);
	uint8_t out[256];
	for (size_t split = 0; split <= len; split++) {
		size_t n = run(c, split, 0, out);
		cr_assert_eq(n, want, "%s split %zu: %zu bytes", c->in, split, n);
		cr_assert(memcmp(out, c->out, n) == 0, "%s split %zu", c->in, split);
	}
	size_t n = run(c, 0, 1, out);
	cr_assert_eq(n, want);
	cr_assert(memcmp(out, c->out, n) == 0);
}

TABLE_TEST(decode, table, cases, check)

/* A run of whitespace longer than DECODE_QP_WS_MAX before a line break:
 * all but the last DECODE_QP_WS_MAX bytes of it are passed on, whatever
 * the split. */
Test(decode, qp_long_whitespace_run)
{
	char in[300], want[300];
	size_t run = DECODE_QP_WS_MAX * 2 + 7;
	size_t n = 0, w = 0;
	in[n++] = 'x';
	want[w++] = 'x';
	for (size_t i = 0; i < run; i++)
		in[n++] = i % 3 ? ' ' : '\t';
	/* the decoder passes on whole buffers of DECODE_QP_WS_MAX */
	size_t passed = (run - 1) / DECODE_QP_WS_MAX * DECODE_QP_WS_MAX;
	memcpy(want + w, in + 1, passed);
	w += passed;
	memcpy(in + n, "\r\ny", 3);
	n += 3;
	memcpy(want + w, "\r\ny", 3);
	w += 3;
	in[n] = '\0';
	for (size_t split = 0; split <= n; split++) {
		struct decode_qp q;
		decode_qp_init(&q);
		uint8_t out[DECODE_OUT_MAX(300) * 2];
		size_t o = decode_qp_feed(&q, span_make(in, split), out);
		cr_assert_leq(o, DECODE_OUT_MAX(split));
		size_t o2 = decode_qp_feed(&q, span_make(in + split, n - split), out + o);
		cr_assert_leq(o2, DECODE_OUT_MAX(n - split));
		o += o2;
		o += decode_qp_finish(&q, out + o);
		cr_assert_eq(o, w, "split %zu: %zu", split, o);
		cr_assert(memcmp(out, want, w) == 0, "split %zu", split);
	}
}

struct cte_case {
	const char *in;
	enum decode_cte want;
};

static const struct cte_case cte_cases[] = {
	{ "", DECODE_CTE_IDENTITY },
	{ "   ", DECODE_CTE_IDENTITY },
	{ "7bit", DECODE_CTE_IDENTITY },
	{ "7BIT", DECODE_CTE_IDENTITY },
	{ "8bit", DECODE_CTE_IDENTITY },
	{ "Binary", DECODE_CTE_IDENTITY },
	{ "base64", DECODE_CTE_BASE64 },
	{ "BASE64", DECODE_CTE_BASE64 },
	{ " base64 ", DECODE_CTE_BASE64 },
	{ "base64 (an attachment)", DECODE_CTE_BASE64 },
	{ "(c) base64", DECODE_CTE_BASE64 },
	{ "(a (nested) \\) comment)base64(x)", DECODE_CTE_BASE64 },
	{ "Quoted-Printable", DECODE_CTE_QP },
	{ "quoted-printable\t", DECODE_CTE_QP },
	{ "(only a comment)", DECODE_CTE_IDENTITY },
	{ "x-uuencode", DECODE_CTE_UNKNOWN },
	{ "base 64", DECODE_CTE_UNKNOWN },
	{ "base64 x", DECODE_CTE_UNKNOWN },
	{ "base64;", DECODE_CTE_UNKNOWN },
	{ "base64 (open", DECODE_CTE_UNKNOWN },
	{ "base6", DECODE_CTE_UNKNOWN },
	{ "base644", DECODE_CTE_UNKNOWN },
	{ "quoted-printabl", DECODE_CTE_UNKNOWN },
	{ "7bits", DECODE_CTE_UNKNOWN },
};

static void check_cte(const struct cte_case *c)
{
	cr_assert_eq(decode_cte_parse(span_cstr(c->in)), c->want, "\"%s\"", c->in);
}

TABLE_TEST(decode, cte, cte_cases, check_cte)

/* The one-for-any-CTE decoder gives what the single decoders give, at
 * every split point of every table case, and copies identity input. */
static void check_any(const struct dcase *c)
{
	size_t len = strlen(c->in);
	size_t want = c->out_len ? c->out_len : strlen(c->out);
	for (int id = 0; id < 2; id++) {
		enum decode_cte cte = id ? DECODE_CTE_IDENTITY
					 : c->qp ? DECODE_CTE_QP : DECODE_CTE_BASE64;
		for (size_t split = 0; split <= len; split++) {
			struct decode d;
			decode_init(&d, cte);
			uint8_t out[DECODE_OUT_MAX(256) * 2];
			size_t o = decode_feed(&d, span_make(c->in, split), out);
			o += decode_feed(&d, span_make(c->in + split, len - split), out + o);
			o += decode_finish(&d, out + o);
			if (id) {
				cr_assert_eq(o, len);
				cr_assert(memcmp(out, c->in, len) == 0);
			} else {
				cr_assert_eq(o, want, "%s split %zu", c->in, split);
				cr_assert(memcmp(out, c->out, want) == 0, "%s split %zu", c->in, split);
			}
		}
	}
}

TABLE_TEST(decode, any_cte, cases, check_any)

/* Every byte value survives an encode (here) and a decode, in pieces. */
Test(decode, b64_roundtrip_all_bytes)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	uint8_t raw[256], enc[400], dec[400];
	for (int i = 0; i < 256; i++)
		raw[i] = (uint8_t)i;
	for (size_t len = 0; len <= 256; len += 1) {
		size_t e = 0;
		for (size_t i = 0; i < len; i += 3) {
			uint32_t v = (uint32_t)raw[i] << 16;
			if (i + 1 < len)
				v |= (uint32_t)raw[i + 1] << 8;
			if (i + 2 < len)
				v |= raw[i + 2];
			enc[e++] = (uint8_t)alpha[v >> 18 & 63];
			enc[e++] = (uint8_t)alpha[v >> 12 & 63];
			enc[e++] = i + 1 < len ? (uint8_t)alpha[v >> 6 & 63] : '=';
			enc[e++] = i + 2 < len ? (uint8_t)alpha[v & 63] : '=';
			if (i % 57 == 54) {
				enc[e++] = '\r';
				enc[e++] = '\n';
			}
		}
		struct decode_b64 d;
		decode_b64_init(&d);
		size_t o = 0;
		for (size_t i = 0; i < e; i += 7) {
			size_t n = e - i < 7 ? e - i : 7;
			o += decode_b64_feed(&d, span_make(enc + i, n), dec + o);
		}
		cr_assert_eq(o, len, "len %zu", len);
		cr_assert(memcmp(dec, raw, len) == 0, "len %zu", len);
	}
}

/* Output never exceeds the input over a whole stream (QP and base64). */
Test(decode, output_bounded)
{
	uint8_t in[512], out[DECODE_OUT_MAX(512)];
	unsigned seed = 1;
	for (int round = 0; round < 2000; round++) {
		size_t len = (size_t)(rand_r(&seed) % 512);
		for (size_t i = 0; i < len; i++) {
			static const char pick[] = "=A9f\r\n \tZ+/";
			in[i] = rand_r(&seed) % 2 ? (uint8_t)pick[rand_r(&seed) % 12]
						  : (uint8_t)rand_r(&seed);
		}
		struct decode_qp q;
		decode_qp_init(&q);
		size_t o = decode_qp_feed(&q, span_make(in, len), out);
		o += decode_qp_finish(&q, out + o);
		cr_assert_leq(o, len);
		struct decode_b64 b;
		decode_b64_init(&b);
		cr_assert_leq(decode_b64_feed(&b, span_make(in, len), out), len);
	}
}
