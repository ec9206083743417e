/* test_dkim.c - outbound/dkim_canon.c (relaxed canonicalization, every case
 * also fed split at every offset) and outbound/dkim.c (the streaming
 * signer: chunking does not change the body hash, limits, key loading,
 * keygen). Verification by an independent verifier (dkimpy) is in
 * tests/integration/test_dkim.py. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/coding.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../proto/table_test.h"
#include "outbound/dkim.h"
#include "outbound/dkim_canon.h"

/* ---- canonical output collector ------------------------------------------ */

struct out {
	uint8_t buf[4096];
	size_t len;
};

static void collect(void *arg, const uint8_t *p, size_t len)
{
	struct out *o = arg;
	cr_assert_leq(o->len + len, sizeof(o->buf));
	memcpy(o->buf + o->len, p, len);
	o->len += len;
}

/* ---- headers --------------------------------------------------------------- */

struct hcase {
	const char *in, *want; /* want NULL: not a field (0 returned) */
};

static const struct hcase header_cases[] = {
	/* RFC 6376 3.4.6 */
	{ "A: X", "a:X\r\n" },
	{ "B : Y\t\r\n\tZ  ", "b:Y Z\r\n" },
	{ "Subject:   many    spaces\t\there  ", "subject:many spaces here\r\n" },
	{ "From:<a@b.c>", "from:<a@b.c>\r\n" },
	{ "To: a@b.c,\r\n  c@d.e,\r\n\td@e.f", "to:a@b.c, c@d.e, d@e.f\r\n" },
	{ "X-Empty:", "x-empty:\r\n" },
	{ "X-Empty:  \t ", "x-empty:\r\n" },
	{ "MiXeD-CaSe: VaLuE", "mixed-case:VaLuE\r\n" },
	{ "Colons: a: b :c", "colons:a: b :c\r\n" },
	{ "no colon here", NULL },
};

static void header_case(const struct hcase *c)
{
	uint8_t out[256];
	size_t n = dkim_canon_header((const uint8_t *)c->in, strlen(c->in), true, out);
	if (!c->want) {
		cr_assert_eq(n, 0);
		return;
	}
	cr_assert_eq(n, strlen(c->want), "'%s': got '%.*s'", c->in, (int)n, out);
	cr_assert_eq(memcmp(out, c->want, n), 0, "'%s': got '%.*s'", c->in, (int)n, out);
	/* Without the CRLF: the same minus the last two bytes. */
	cr_assert_eq(dkim_canon_header((const uint8_t *)c->in, strlen(c->in), false, out), n - 2);
}

TABLE_TEST(canon, header, header_cases, header_case)

/* ---- body ------------------------------------------------------------------- */

struct bcase {
	const char *in, *want;
};

static const struct bcase body_cases[] = {
	/* RFC 6376 3.4.6 */
	{ " C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n" },
	{ "", "" },
	{ "\r\n", "" },
	{ "\r\n\r\n\r\n", "" },
	{ " \t \r\n\t\r\n", "" },
	{ "a", "a\r\n" },
	{ "a  \t", "a\r\n" },
	{ "a\r\n", "a\r\n" },
	{ "a \r\n \r\nb\r\n", "a\r\n\r\nb\r\n" },
	{ "\r\n\r\na\r\n\r\n", "\r\n\r\na\r\n" },
	{ "x\r\n\r\n \r\n\t\r\ny  \r\n\r\n", "x\r\n\r\n\r\n\r\ny\r\n" },
	{ "  lead\r\n", " lead\r\n" },
	{ "in  the \t\t middle\r\n", "in the middle\r\n" },
	/* Only CRLF ends a line: bare CR and LF are data. */
	{ "a\rb\r\n", "a\rb\r\n" },
	{ "a\nb\r\n", "a\nb\r\n" },
	{ "a \r \r\n", "a \r\r\n" },
	{ "a\r\r\n", "a\r\r\n" },
	{ "a\r", "a\r\r\n" },
	{ "\r\n\r", "\r\n\r\r\n" },
	{ "\r\n \n", "\r\n \n\r\n" },
	{ ".\r\n..\r\n", ".\r\n..\r\n" },
};

static void body_run(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct out *o)
{
	struct dkim_body_canon c = DKIM_BODY_CANON_INIT;
	size_t at = 0;
	o->len = 0;
	for (size_t i = 0; i <= ncuts; i++) {
		size_t end = i < ncuts ? cuts[i] : len;
		dkim_body_canon_feed(&c, (const uint8_t *)in + at, end - at, collect, o);
		at = end;
	}
	dkim_body_canon_finish(&c, collect, o);
}

static void body_case(const struct bcase *bc)
{
	struct out o;
	size_t len = strlen(bc->in), want = strlen(bc->want);
	body_run(bc->in, len, NULL, 0, &o);
	cr_assert_eq(o.len, want, "whole '%s': %zu bytes", bc->in, o.len);
	cr_assert_eq(memcmp(o.buf, bc->want, want), 0);
	/* Split once and twice at every offset. */
	for (size_t i = 0; i <= len; i++)
		for (size_t j = i; j <= len; j++) {
			size_t cuts[2] = { i, j };
			body_run(bc->in, len, cuts, 2, &o);
			cr_assert_eq(o.len, want, "'%s' cut at %zu,%zu", bc->in, i, j);
			cr_assert_eq(memcmp(o.buf, bc->want, want), 0, "'%s' cut at %zu,%zu",
				     bc->in, i, j);
		}
	/* One byte at a time. */
	size_t cuts[64];
	cr_assert_lt(len, 64);
	for (size_t i = 0; i < len; i++)
		cuts[i] = i + 1;
	body_run(bc->in, len, cuts, len ? len - 1 : 0, &o);
	cr_assert_eq(o.len, want);
	cr_assert_eq(memcmp(o.buf, bc->want, want), 0);
}

TABLE_TEST(canon, body, body_cases, body_case)

/* ---- the signer --------------------------------------------------------------- */

static char *tmpdir(void)
{
	char *d = strdup("/tmp/ringmail-dkim-XXXXXX");
	cr_assert(d && mkdtemp(d));
	return d;
}

static void rmrf(const char *dir)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	cr_assert_eq(system(cmd), 0);
}

/* Makes keys in dir: rsa for rsa.example, ed25519 for ed.example. */
static struct dkim *keys(const char *dir)
{
	FILE *null = fopen("/dev/null", "w");
	cr_assert(null);
	cr_assert_eq(dkim_keygen(dir, "rsa.example", "rsa", "sel", false, null, stderr), 0);
	cr_assert_eq(dkim_keygen(dir, "ed.example", "ed25519", "sel2", false, null, stderr), 0);
	fclose(null);
	struct dkim *d = NULL;
	cr_assert_eq(dkim_new(dir, "ringmail", &d), 0);
	cr_assert_not_null(d);
	cr_assert_eq(dkim_nkeys(d), 2);
	cr_assert_null(dkim_problem(d, 0));
	return d;
}

/* The value of tag in a DKIM-Signature field, whitespace removed. */
static void tag(const char *sig, const char *name, char *out, size_t cap)
{
	char pat[16];
	snprintf(pat, sizeof(pat), " %s=", name);
	const char *p = strstr(sig, pat);
	if (!p) {
		snprintf(pat, sizeof(pat), "\t%s=", name);
		p = strstr(sig, pat);
	}
	cr_assert_not_null(p, "no %s= in %s", name, sig);
	p += strlen(pat);
	size_t n = 0;
	for (; *p && *p != ';' && n + 1 < cap; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			out[n++] = *p;
	out[n] = '\0';
}

static char *sign_cuts(struct dkim *d, const char *domain, const char *msg, size_t len,
		       const size_t *cuts, size_t ncuts)
{
	struct dkim_signer *s = dkim_signer_begin(d, domain);
	cr_assert_not_null(s);
	size_t at = 0;
	for (size_t i = 0; i <= ncuts; i++) {
		size_t end = i < ncuts ? cuts[i] : len;
		dkim_signer_feed(s, (const uint8_t *)msg + at, end - at);
		at = end;
	}
	char *sig = dkim_signer_finish(s);
	cr_assert_not_null(sig);
	return sig;
}

static void b64_sha256(const char *p, char *out, size_t cap)
{
	uint8_t h[WC_SHA256_DIGEST_SIZE];
	word32 n = (word32)cap;
	cr_assert_eq(wc_Sha256Hash((const uint8_t *)p, (word32)strlen(p), h), 0);
	cr_assert_eq(Base64_Encode_NoNl(h, sizeof(h), (uint8_t *)out, &n), 0);
	out[n] = '\0';
}

static const char small_msg[] =
	"From: a@ed.example\r\nSubject:  hi \r\n\tthere\r\n\r\n"
	" C \r\nD \t E\r\n\r\n \r\n";

Test(signer, chunk_splits_give_the_same_body_hash)
{
	char *dir = tmpdir();
	struct dkim *d = keys(dir);
	const char *doms[] = { "ed.example", "RSA.Example" };
	char want[64], got[64];
	/* The canonical body is RFC 6376 3.4.6's: " C\r\nD E\r\n". */
	b64_sha256(" C\r\nD E\r\n", want, sizeof(want));
	size_t len = strlen(small_msg);
	for (size_t k = 0; k < 2; k++) {
		char *whole = dkim_sign(d, doms[k], (const uint8_t *)small_msg, len);
		cr_assert_not_null(whole);
		tag(whole, "bh", got, sizeof(got));
		cr_assert_str_eq(got, want);
		free(whole);
		/* Ed25519 is deterministic: every split gives the same bh (and
		 * for ed25519 the same b= within one second); RSA once per split
		 * pair is slow, so it gets the single splits. */
		for (size_t i = 0; i <= len; i++)
			for (size_t j = k ? len : i; j <= len; j++) {
				size_t cuts[2] = { i, j };
				char *sig = sign_cuts(d, doms[k], small_msg, len, cuts, 2);
				tag(sig, "bh", got, sizeof(got));
				cr_assert_str_eq(got, want, "%s cut at %zu,%zu", doms[k], i, j);
				free(sig);
			}
	}
	dkim_free(&d);
	rmrf(dir);
	free(dir);
}

Test(signer, tags_and_folding)
{
	char *dir = tmpdir();
	struct dkim *d = keys(dir);
	const char *msg = "Received: x\r\nFrom: a@rsa.example\r\nTo: b@c.d\r\nTo: e@f.g\r\n"
			  "X-Not: signed\r\nSubject: s\r\n\r\nbody\r\n";
	char *sig = dkim_sign(d, "rsa.example", (const uint8_t *)msg, strlen(msg));
	cr_assert_not_null(sig);
	cr_assert_eq(strncmp(sig, "DKIM-Signature: v=1;", 20), 0);
	char v[1024];
	tag(sig, "a", v, sizeof(v));
	cr_assert_str_eq(v, "rsa-sha256");
	tag(sig, "c", v, sizeof(v));
	cr_assert_str_eq(v, "relaxed/relaxed");
	tag(sig, "d", v, sizeof(v));
	cr_assert_str_eq(v, "rsa.example");
	tag(sig, "s", v, sizeof(v));
	cr_assert_str_eq(v, "sel");
	tag(sig, "h", v, sizeof(v));
	cr_assert_str_eq(v, "From:To:To:Subject:From");
	tag(sig, "b", v, sizeof(v));
	cr_assert_eq(strlen(v), 344); /* 256 bytes of RSA-2048 signature in base64 */
	/* Folded: CRLF TAB continuations, no line over 78, ends in CRLF. */
	size_t n = strlen(sig), col = 0;
	cr_assert_eq(strcmp(sig + n - 2, "\r\n"), 0);
	for (size_t i = 0; i < n; i++) {
		if (sig[i] == '\r') {
			cr_assert_eq(sig[i + 1], '\n');
			cr_assert(i + 2 == n || sig[i + 2] == '\t');
			cr_assert_leq(col, 78);
			col = 0;
			i++;
		} else {
			col++;
		}
	}
	free(sig);
	sig = dkim_sign(d, "ed.example", (const uint8_t *)msg, strlen(msg));
	tag(sig, "a", v, sizeof(v));
	cr_assert_str_eq(v, "ed25519-sha256");
	tag(sig, "b", v, sizeof(v));
	cr_assert_eq(strlen(v), 88); /* 64 bytes */
	free(sig);
	dkim_free(&d);
	rmrf(dir);
	free(dir);
}

Test(signer, empty_body_hash)
{
	char *dir = tmpdir();
	struct dkim *d = keys(dir);
	char v[64];
	/* RFC 6376 3.4.4: an empty body canonicalizes (relaxed) to nothing:
	 * the SHA-256 of the empty string. With and without the separator. */
	const char *msgs[] = { "From: a@ed.example\r\n\r\n", "From: a@ed.example\r\n",
			       "From: a@ed.example\r\n\r\n\r\n \r\n" };
	for (size_t i = 0; i < 3; i++) {
		char *sig = dkim_sign(d, "ed.example", (const uint8_t *)msgs[i], strlen(msgs[i]));
		cr_assert_not_null(sig);
		tag(sig, "bh", v, sizeof(v));
		cr_assert_str_eq(v, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "case %zu", i);
		free(sig);
	}
	dkim_free(&d);
	rmrf(dir);
	free(dir);
}

Test(signer, refuses_what_it_cannot_sign)
{
	char *dir = tmpdir();
	struct dkim *d = keys(dir);
	cr_assert_null(dkim_signer_begin(d, "other.example"));
	cr_assert_null(dkim_signer_begin(NULL, "ed.example"));
	/* No From: known when the header section ends. */
	const char *nofrom = "To: b@c.d\r\nSubject: x\r\n\r\nbody\r\n";
	struct dkim_signer *s = dkim_signer_begin(d, "ed.example");
	dkim_signer_feed(s, (const uint8_t *)nofrom, strlen(nofrom));
	cr_assert_str_eq(dkim_signer_error(s), "no From field");
	cr_assert_null(dkim_signer_finish(s));
	/* "From-Extra:" is not From. */
	const char *lookalike = "From-Extra: a@b\r\n\r\nbody\r\n";
	cr_assert_null(dkim_sign(d, "ed.example", (const uint8_t *)lookalike, strlen(lookalike)));
	/* A header section over DKIM_HEADER_MAX: not signed, memory bounded. */
	s = dkim_signer_begin(d, "ed.example");
	const char *from = "From: a@ed.example\r\n";
	dkim_signer_feed(s, (const uint8_t *)from, strlen(from));
	char line[1000];
	memset(line, 'x', sizeof(line));
	memcpy(line, "X-Pad: ", 7);
	line[998] = '\r';
	line[999] = '\n';
	for (size_t i = 0; i < DKIM_HEADER_MAX / sizeof(line) + 1; i++)
		dkim_signer_feed(s, (const uint8_t *)line, sizeof(line));
	cr_assert_not_null(dkim_signer_error(s));
	cr_assert_null(dkim_signer_finish(s));
	/* Abort frees a signer in any state. */
	s = dkim_signer_begin(d, "ed.example");
	dkim_signer_feed(s, (const uint8_t *)from, strlen(from));
	dkim_signer_abort(s);
	dkim_free(&d);
	rmrf(dir);
	free(dir);
}

Test(keys, load_skips_bad_keys_and_reads_selectors)
{
	char *dir = tmpdir(), path[600];
	struct dkim *d = keys(dir);
	dkim_free(&d);
	snprintf(path, sizeof(path), "%s/dkim/bad.example.key", dir);
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fputs("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", f);
	fclose(f);
	cr_assert_eq(dkim_new(dir, "ringmail", &d), 0);
	cr_assert_eq(dkim_nkeys(d), 2);
	cr_assert_not_null(dkim_problem(d, 0));
	cr_assert_not_null(strstr(dkim_problem(d, 0), "bad.example.key"));
	cr_assert_null(dkim_problem(d, 1));
	cr_assert_null(dkim_signer_begin(d, "bad.example"));
	/* The selector comes from <domain>.selector. */
	char *sig = dkim_sign(d, "ed.example", (const uint8_t *)small_msg, strlen(small_msg));
	char v[64];
	tag(sig, "s", v, sizeof(v));
	cr_assert_str_eq(v, "sel2");
	free(sig);
	dkim_free(&d);
	/* Without it, the configured default. */
	snprintf(path, sizeof(path), "%s/dkim/ed.example.selector", dir);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(dkim_new(dir, "dflt", &d), 0);
	sig = dkim_sign(d, "ed.example", (const uint8_t *)small_msg, strlen(small_msg));
	tag(sig, "s", v, sizeof(v));
	cr_assert_str_eq(v, "dflt");
	free(sig);
	dkim_free(&d);
	/* No dkim/ directory: no signing, not an error. */
	rmrf(dir);
	cr_assert_eq(dkim_new(dir, "ringmail", &d), 0);
	cr_assert_null(d);
	free(dir);
}

Test(keys, keygen_modes_and_refusal)
{
	char *dir = tmpdir(), path[600];
	struct dkim *d = keys(dir);
	dkim_free(&d);
	struct stat st;
	snprintf(path, sizeof(path), "%s/dkim", dir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/dkim/ed.example.key", dir);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600);
	FILE *null = fopen("/dev/null", "w");
	cr_assert_eq(dkim_keygen(dir, "ed.example", "ed25519", "s", false, null, null), -EEXIST);
	cr_assert_eq(dkim_keygen(dir, "ed.example", "ed25519", "s", true, null, null), 0);
	cr_assert_eq(dkim_keygen(dir, "bad domain", "rsa", "s", false, null, null), -EINVAL);
	cr_assert_eq(dkim_keygen(dir, "x.example", "dsa", "s", false, null, null), -EINVAL);
	cr_assert_eq(dkim_keygen(dir, "x.example", "rsa", "a;b", false, null, null), -EINVAL);
	fclose(null);
	rmrf(dir);
	free(dir);
}
