/* Unit tests for proto/sasl.c: RFC 4648 base64 (strict) and RFC 4616 PLAIN.
 * Every input is also fed truncated at every offset, each truncation in a
 * buffer of exactly its size so ASan catches an over-read. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/sasl.h"

struct bytes {
	const char *p;
	size_t len;
};

#define B(s) { s, sizeof(s) - 1 }

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	cr_assert_not_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

static int bytes_eq(const uint8_t *p, size_t n, struct bytes want)
{
	return n == want.len && (n == 0 || memcmp(p, want.p, n) == 0);
}

struct b64_case {
	const char *in;
	int rc;
	struct bytes out;	/* when rc == 0 */
};

static const struct b64_case b64_cases[] = {
	/* RFC 4648 §10 */
	{ "", 0, B("") },
	{ "Zg==", 0, B("f") },
	{ "Zm8=", 0, B("fo") },
	{ "Zm9v", 0, B("foo") },
	{ "Zm9vYg==", 0, B("foob") },
	{ "Zm9vYmE=", 0, B("fooba") },
	{ "Zm9vYmFy", 0, B("foobar") },
	/* RFC 4616 §4 and the full alphabet */
	{ "AHRpbQB0YW5zdGFhZnRhbnN0YWFm", 0, B("\0tim\0tanstaaftanstaaf") },
	{ "+/+/", 0, B("\xfb\xff\xbf") },
	{ "AAAA", 0, B("\0\0\0") },
	/* malformed */
	{ "Zg=", -EINVAL, B("") },
	{ "Zg", -EINVAL, B("") },
	{ "Zm9", -EINVAL, B("") },
	{ "Z", -EINVAL, B("") },
	{ "=", -EINVAL, B("") },
	{ "====", -EINVAL, B("") },
	{ "Z===", -EINVAL, B("") },
	{ "Zg==Zg==", -EINVAL, B("") },
	{ "Zg=a", -EINVAL, B("") },
	{ "Z=g=", -EINVAL, B("") },
	{ "Zh==", -EINVAL, B("") },	/* non-canonical: dropped bits set */
	{ "Zm9=", -EINVAL, B("") },
	{ "Zm 9v", -EINVAL, B("") },
	{ "Zm9v\r\n", -EINVAL, B("") },
	{ "Zm9v ", -EINVAL, B("") },
	{ "Zm-v", -EINVAL, B("") },	/* base64url is not base64 */
	{ "Zm_v", -EINVAL, B("") },
	{ "Zm9\xc3", -EINVAL, B("") },
};

static void t_base64_decode(const struct b64_case *c)
{
	size_t n = strlen(c->in);
	uint8_t out[64];
	size_t len = 99;

	for (size_t k = 0; k <= n; k++) {
		uint8_t *buf = dup_exact(c->in, k);
		int rc = sasl_base64_decode(span_make(buf, k), out, sizeof(out), &len);
		if (k == n) {
			cr_assert_eq(rc, c->rc, "'%s': %d", c->in, rc);
			if (rc == 0)
				cr_assert(bytes_eq(out, len, c->out), "'%s'", c->in);
			else
				cr_assert_eq(len, 0);
		} else if (k % 4 != 0) {
			cr_assert_eq(rc, -EINVAL);
		}
		free(buf);
	}
	if (c->rc == 0) {
		/* exactly enough room, and one octet short */
		cr_assert(SASL_BASE64_DECODED_MAX(n) >= c->out.len);
		cr_assert_eq(sasl_base64_decode(span_make(c->in, n), out, c->out.len, &len), 0);
		if (c->out.len > 0)
			cr_assert_eq(sasl_base64_decode(span_make(c->in, n), out,
							c->out.len - 1, &len), -ENOSPC);
		/* and encoding gives the input back */
		uint8_t enc[64];
		cr_assert_eq(sasl_base64_encode(span_make(c->out.p, c->out.len), enc,
						sizeof(enc), &len), 0);
		cr_assert_eq(len, n);
		cr_assert(memcmp(enc, c->in, n) == 0);
		cr_assert_eq(SASL_BASE64_ENCODED_LEN(c->out.len), n);
		if (n > 0)
			cr_assert_eq(sasl_base64_encode(span_make(c->out.p, c->out.len), enc,
							n - 1, &len), -ENOSPC);
	}
}

TABLE_TEST(sasl, base64_decode, b64_cases, t_base64_decode)

Test(sasl, base64_embedded_nul_rejected)
{
	uint8_t out[8];
	size_t len;
	cr_assert_eq(sasl_base64_decode(span_make("Zm9v\0\0\0\0", 8), out, sizeof(out), &len),
		     -EINVAL);
}

Test(sasl, base64_roundtrip_all_lengths)
{
	uint8_t in[64], enc[128], dec[64];
	size_t elen, dlen;

	for (size_t i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(i * 37 + 11);
	for (size_t n = 0; n <= sizeof(in); n++) {
		cr_assert_eq(sasl_base64_encode(span_make(in, n), enc, sizeof(enc), &elen), 0);
		cr_assert_eq(sasl_base64_decode(span_make(enc, elen), dec, sizeof(dec), &dlen), 0);
		cr_assert_eq(dlen, n);
		cr_assert(n == 0 || memcmp(in, dec, n) == 0);
	}
}

struct plain_case {
	struct bytes in;
	int rc;
	const char *authzid, *authcid, *passwd;
};

static const struct plain_case plain_cases[] = {
	/* RFC 4616 §4 */
	{ B("\0tim\0tanstaaftanstaaf"), 0, "", "tim", "tanstaaftanstaaf" },
	{ B("Ursel\0Kurt\0xipj3plmq"), 0, "Ursel", "Kurt", "xipj3plmq" },
	{ B("\0user@example.com\0p\xc3\xa4ss word"), 0, "", "user@example.com", "p\xc3\xa4ss word" },
	{ B("tim\0tanstaaf"), -EINVAL, NULL, NULL, NULL },
	{ B("timtanstaaf"), -EINVAL, NULL, NULL, NULL },
	{ B(""), -EINVAL, NULL, NULL, NULL },
	{ B("\0\0"), -EINVAL, NULL, NULL, NULL },
	{ B("\0\0pw"), -EINVAL, NULL, NULL, NULL },
	{ B("\0tim\0"), -EINVAL, NULL, NULL, NULL },
	{ B("a\0b\0c\0d"), -EINVAL, NULL, NULL, NULL },
	{ B("\0tim\0pw\0"), -EINVAL, NULL, NULL, NULL },
	{ B("\0ti\rm\0pw"), -EINVAL, NULL, NULL, NULL },
	{ B("\0tim\0p\nw"), -EINVAL, NULL, NULL, NULL },
	{ B("a\r\0tim\0pw"), -EINVAL, NULL, NULL, NULL },
};

static int span_is(struct span s, const char *want)
{
	size_t n = strlen(want);
	return s.len == n && (n == 0 || memcmp(s.p, want, n) == 0);
}

static void t_plain(const struct plain_case *c)
{
	struct span z, u, p;

	for (size_t k = 0; k <= c->in.len; k++) {
		uint8_t *buf = dup_exact(c->in.p, k);
		int rc = sasl_plain_split(span_make(buf, k), &z, &u, &p);
		if (k == c->in.len) {
			cr_assert_eq(rc, c->rc);
			if (rc == 0) {
				cr_assert(span_is(z, c->authzid));
				cr_assert(span_is(u, c->authcid));
				cr_assert(span_is(p, c->passwd));
			} else {
				cr_assert_eq(u.len + p.len + z.len, 0);
			}
		} else {
			cr_assert(rc == 0 || rc == -EINVAL);
		}
		free(buf);
	}
}

TABLE_TEST(sasl, plain, plain_cases, t_plain)

Test(sasl, plain_limits)
{
	/* authzid 255 / authcid 255 / passwd 1024 are fine; one more is not */
	uint8_t buf[2048];
	struct span z, u, p;
	size_t sizes[][3] = {
		{ 255, 255, 1024 }, { 256, 1, 1 }, { 0, 256, 1 }, { 0, 1, 1025 },
	};
	int want[] = { 0, -E2BIG, -E2BIG, -E2BIG };

	for (size_t i = 0; i < 4; i++) {
		size_t n = 0;
		memset(buf + n, 'z', sizes[i][0]);
		n += sizes[i][0];
		buf[n++] = 0;
		memset(buf + n, 'u', sizes[i][1]);
		n += sizes[i][1];
		buf[n++] = 0;
		memset(buf + n, 'p', sizes[i][2]);
		n += sizes[i][2];
		cr_assert_eq(sasl_plain_split(span_make(buf, n), &z, &u, &p), want[i], "case %zu", i);
		if (want[i] == 0) {
			cr_assert_eq(z.len, 255);
			cr_assert_eq(u.len, 255);
			cr_assert_eq(p.len, 1024);
		}
	}
}

Test(sasl, plain_from_base64)
{
	/* The RFC 4616 exchange end to end: decode, then split. */
	uint8_t dec[64];
	size_t len;
	struct span z, u, p;

	cr_assert_eq(sasl_base64_decode(SPAN_LIT("AHRpbQB0YW5zdGFhZnRhbnN0YWFm"), dec,
					sizeof(dec), &len), 0);
	cr_assert_eq(sasl_plain_split(span_make(dec, len), &z, &u, &p), 0);
	cr_assert(span_is(u, "tim"));
	cr_assert(span_is(p, "tanstaaftanstaaf"));
}
