/* Unit tests for proto/mime.c.
 *
 * The corpus under mime/ holds NAME.eml with its expected NAME.bodystructure,
 * NAME.body and NAME.envelope (one trailing LF added to each file). Every
 * message is scanned whole, split at every offset and byte by byte: the blobs
 * must be identical. Every blob is then corrupted at every byte and must be
 * rejected or read safely. The limits are tested on generated messages. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/mime.h"
#include "store/store.h"

_Static_assert(MIME_BLOB_MAX == STORE_BLOB_MAX, "the blob must fit the store");

#ifndef MIME_CORPUS
#define MIME_CORPUS "tests/unit/proto/mime"
#endif

struct buf {
	uint8_t *p;
	size_t len;
};

static struct buf slurp(const char *name, const char *ext)
{
	char path[512];
	struct buf b = { 0 };
	FILE *f;
	long n;

	snprintf(path, sizeof(path), "%s/%s.%s", MIME_CORPUS, name, ext);
	f = fopen(path, "rb");
	cr_assert_not_null(f, "open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b.p = malloc((size_t)n + 1);
	cr_assert_not_null(b.p);
	b.len = fread(b.p, 1, (size_t)n, f);
	fclose(f);
	return b;
}

static struct mime_scanner *scanner(void)
{
	struct mime_scanner *sc = malloc(sizeof(*sc));
	cr_assert_not_null(sc);
	mime_scan_init(sc);
	return sc;
}

/* Scans msg in pieces of the given sizes (step 0: one piece; split: a
 * 2-way split at that offset) into blob. Each piece is copied to a buffer
 * of its exact size so ASan sees any over-read. */
static size_t scan(const uint8_t *msg, size_t len, size_t split, size_t step,
		   uint8_t *blob)
{
	struct mime_scanner *sc = scanner();
	size_t blen, off = 0;

	while (off < len) {
		size_t n = len - off;
		if (step)
			n = n < step ? n : step;
		else if (off < split)
			n = split - off;
		uint8_t *piece = malloc(n);
		memcpy(piece, msg + off, n);
		mime_scan_feed(sc, span_make(piece, n));
		free(piece);
		off += n;
	}
	cr_assert_eq(mime_scan_finish(sc, blob, MIME_BLOB_MAX, &blen), 0);
	free(sc);
	return blen;
}

static char *write_bs(const struct mime_blob *mb, uint32_t i, bool ext, size_t *len_r)
{
	int64_t n = mime_write_bodystructure(mb, i, ext, NULL, 0);
	cr_assert_geq(n, 0);
	char *s = malloc((size_t)n + 1);
	cr_assert_eq(mime_write_bodystructure(mb, i, ext, (uint8_t *)s, (size_t)n), n);
	s[n] = 0;
	*len_r = (size_t)n;
	return s;
}

static char *write_env(const struct mime_blob *mb, uint32_t i, size_t *len_r)
{
	int64_t n = mime_write_envelope(mb, i, NULL, 0);
	cr_assert_geq(n, 0);
	char *s = malloc((size_t)n + 1);
	cr_assert_eq(mime_write_envelope(mb, i, (uint8_t *)s, (size_t)n), n);
	s[n] = 0;
	*len_r = (size_t)n;
	return s;
}

static void expect(const char *name, const char *ext, const char *got, size_t len)
{
	struct buf want = slurp(name, ext);

	cr_assert(want.len > 0 && want.p[want.len - 1] == '\n');
	want.len--;
	cr_expect(want.len == len && memcmp(want.p, got, len) == 0,
		  "%s.%s:\nwant %.*s\ngot  %.*s", name, ext, (int)want.len,
		  (const char *)want.p, (int)len, got);
	free(want.p);
}

/* Reads everything a blob offers: every part, field, section and both
 * formats. Used on valid and on corrupted blobs. */
static void read_all(const struct mime_blob *mb)
{
	static const char *const specs[] = { "", "HEADER", "TEXT", "1", "1.MIME", "2",
		"2.HEADER", "2.TEXT", "2.1", "1.2.3", "3.1.2", "HEADER.FIELDS (a)" };
	uint8_t small[64];
	struct mime_section sec;

	for (uint32_t i = 0; i < mb->nparts; i++) {
		struct mime_part p;
		struct span v;
		cr_assert_eq(mime_blob_part(mb, i, &p), 0);
		cr_assert(p.hdr_off <= p.body_off && p.body_off <= p.end_off &&
			  p.end_off <= mb->size);
		for (int f = 0; f < MIME_FIELD_COUNT; f++)
			if (mime_blob_field(mb, i, (enum mime_field)f, &v))
				cr_assert(v.p >= mb->b.p && v.p + v.len <= mb->b.p + mb->b.len);
		cr_assert_geq(mime_write_bodystructure(mb, i, true, small, sizeof(small)), 0);
		mime_write_envelope(mb, i, small, sizeof(small));
	}
	for (size_t k = 0; k < sizeof(specs) / sizeof(specs[0]); k++)
		if (mime_blob_section(mb, span_cstr(specs[k]), &sec) == 0)
			cr_assert(sec.off + sec.len <= mb->size);
}

/* ---- the corpus ---------------------------------------------------------- */

static const char *const corpus[] = {
	"dovecot", "simple", "alt_in_mixed", "rfc822_multipart", "digest",
	"missing_headers", "no_blank_line", "headers_only", "eightbit_headers",
	"encoded_words", "folded", "duplicate", "empty_body", "prefix_collision",
	"unterminated", "groups", "lf_only", "cr_only", "nul_bytes", "bad_boundary",
	"no_boundary", "rfc822_base64", "boundary_trailing",
	"boundary_no_final_newline", "message_root", "empty_nested",
};

static void corpus_case(const char *const *name)
{
	struct buf msg = slurp(*name, "eml");
	uint8_t *blob = malloc(MIME_BLOB_MAX), *other = malloc(MIME_BLOB_MAX);
	size_t blen = scan(msg.p, msg.len, 0, 0, blob), olen, n;
	struct mime_blob mb;
	char *s;

	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
	cr_assert_eq(mb.size, msg.len);
	s = write_bs(&mb, 0, true, &n);
	expect(*name, "bodystructure", s, n);
	free(s);
	s = write_bs(&mb, 0, false, &n);
	expect(*name, "body", s, n);
	free(s);
	s = write_env(&mb, 0, &n);
	expect(*name, "envelope", s, n);
	free(s);
	read_all(&mb);

	/* every 2-way split and byte by byte give the same blob */
	for (size_t split = 0; split <= msg.len; split++) {
		olen = scan(msg.p, msg.len, split, 0, other);
		cr_assert(olen == blen && memcmp(blob, other, blen) == 0, "split %zu", split);
	}
	olen = scan(msg.p, msg.len, 0, 1, other);
	cr_assert(olen == blen && memcmp(blob, other, blen) == 0, "byte by byte");
	olen = scan(msg.p, msg.len, 0, 7, other);
	cr_assert(olen == blen && memcmp(blob, other, blen) == 0, "7-byte pieces");

	/* a blob corrupted at any byte is rejected or read safely; a cut one
	 * is always rejected */
	for (size_t i = 0; i < blen; i++) {
		static const uint8_t flips[] = { 0x01, 0x80, 0xff };
		for (size_t f = 0; f < sizeof(flips); f++) {
			uint8_t *c = malloc(blen);
			memcpy(c, blob, blen);
			c[i] ^= flips[f];
			if (mime_blob_parse(span_make(c, blen), &mb) == 0)
				read_all(&mb);
			free(c);
		}
		uint8_t *c = malloc(i ? i : 1);
		memcpy(c, blob, i);
		cr_assert_neq(mime_blob_parse(span_make(c, i), &mb), 0, "cut at %zu", i);
		free(c);
	}
	free(blob);
	free(other);
	free(msg.p);
}

TABLE_TEST(mime, corpus, corpus, corpus_case)

/* Dovecot's own expectation (src/lib-imap/test-imap-bodystructure.c), which
 * omits the outer parentheses; its message is mime/dovecot.eml with LF made
 * CRLF, and Dovecot counts sizes as if LF were CRLF, so they agree. */
Test(mime, dovecot_reference)
{
	static const char want[] =
		"(\"text\" \"x-myown\" (\"charset\" \"us-ascii\" \"foo\" \"quoted\\\"string\") \"<foo@example.com>\" \"hellodescription\" \"7bit\" 7 1 \"Q2hlY2sgSW50ZWdyaXR5IQ==\" (\"inline\" (\"foo\" \"bar\")) (\"en\" \"fi\" \"se\") \"http://example.com/test.txt\")(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 412 (\"Sun, 12 Aug 2012 12:34:56 +0300\" \"submsg\" ((NIL NIL \"sub\" \"domain.org\")) ((NIL NIL \"sub\" \"domain.org\")) ((NIL NIL \"sub\" \"domain.org\")) ((NIL NIL \"sub-to1\" \"domain.org\")(NIL NIL \"sub-to2\" \"domain.org\")) NIL NIL NIL NIL) ((\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"8bit\" 20 1 NIL NIL NIL NIL)(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 21 1 NIL NIL NIL NIL) \"alternative\" (\"boundary\" \"sub1\") NIL NIL NIL) 21 NIL NIL NIL NIL) \"mixed\" (\"boundary\" \"foo bar\") NIL NIL NIL";
	struct buf msg = slurp("dovecot", "eml");
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	size_t n;
	char *s;

	cr_assert_eq(mime_blob_parse(span_make(blob, scan(msg.p, msg.len, 0, 0, blob)), &mb), 0);
	s = write_bs(&mb, 0, true, &n);
	cr_assert(n == strlen(want) + 2 && s[0] == '(' && s[n - 1] == ')' &&
		  memcmp(s + 1, want, n - 2) == 0, "got %s", s);
	free(s);
	free(blob);
	free(msg.p);
}

/* ---- sections ------------------------------------------------------------ */

struct section_case {
	const char *msg, *spec;
	int res;
	const char *want;	/* the bytes the section covers */
	enum mime_section_what what;
};

static const struct section_case section_cases[] = {
	{ "dovecot", "1", 0, "hello\r\n", MIME_SECTION_BODY },
	{ "dovecot", "1.MIME", 0, NULL, MIME_SECTION_MIME },
	{ "dovecot", "2.HEADER", 0, NULL, MIME_SECTION_HEADER },
	{ "dovecot", "2.1", 0, "<p>Hello world</p>\r\n", MIME_SECTION_BODY },
	{ "dovecot", "2.2", 0, "Hello another world\r\n", MIME_SECTION_BODY },
	{ "dovecot", "2.2.MIME", 0, "Content-Type: text/plain\r\nContent-Transfer-Encoding: ?invalid\r\n\r\n", MIME_SECTION_MIME },
	{ "dovecot", "2.3", -ENOENT, NULL, 0 },
	{ "dovecot", "3", -ENOENT, NULL, 0 },
	{ "dovecot", "1.HEADER", -ENOENT, NULL, 0 },
	{ "dovecot", "header.fields (from to)", 0, NULL, MIME_SECTION_HEADER_FIELDS },
	{ "dovecot", "2.HEADER.FIELDS.NOT (from)", 0, NULL, MIME_SECTION_HEADER_FIELDS_NOT },
	{ "dovecot", "0", -EINVAL, NULL, 0 },
	{ "dovecot", "1.", -EINVAL, NULL, 0 },
	{ "dovecot", "1..2", -EINVAL, NULL, 0 },
	{ "dovecot", "MIME", -EINVAL, NULL, 0 },
	{ "dovecot", "TEXTX", -EINVAL, NULL, 0 },
	{ "dovecot", "HEADER.FIELDS", -EINVAL, NULL, 0 },
	{ "simple", "1", 0, "Hi Bob,\r\njust a line.\r\n", MIME_SECTION_BODY },
	{ "simple", "TEXT", 0, "Hi Bob,\r\njust a line.\r\n", MIME_SECTION_TEXT },
	{ "simple", "2", -ENOENT, NULL, 0 },
	{ "simple", "1.1", -ENOENT, NULL, 0 },
	{ "message_root", "1.HEADER", 0, "From: inner@example.com\r\nSubject: inner\r\n\r\n", MIME_SECTION_HEADER },
	{ "message_root", "1.TEXT", 0, "inner body\r\n", MIME_SECTION_TEXT },
	{ "message_root", "1.1", 0, "inner body\r\n", MIME_SECTION_BODY },
	{ "rfc822_multipart", "2.1", 0, "inner text", MIME_SECTION_BODY },
	{ "rfc822_multipart", "2.2.MIME", 0, "Content-Type: text/html\r\n\r\n", MIME_SECTION_MIME },
	{ "rfc822_multipart", "2.TEXT", 0, NULL, MIME_SECTION_TEXT },
	{ "digest", "1.TEXT", 0, "first", MIME_SECTION_TEXT },
	{ "digest", "3.1", 0, "second", MIME_SECTION_BODY },
	{ "digest", "2.TEXT", -ENOENT, NULL, 0 },
	{ "alt_in_mixed", "1.2", 0, "<p>Hello</p>", MIME_SECTION_BODY },
	{ "alt_in_mixed", "2", 0, "JVBERi0xLjQK", MIME_SECTION_BODY },
	{ "lf_only", "1", 0, "one\ntwo", MIME_SECTION_BODY },
	{ "boundary_no_final_newline", "1", 0, "last", MIME_SECTION_BODY },
};

static void section_case(const struct section_case *c)
{
	struct buf msg = slurp(c->msg, "eml");
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	struct mime_section sec;
	int r;

	cr_assert_eq(mime_blob_parse(span_make(blob, scan(msg.p, msg.len, 0, 0, blob)), &mb), 0);
	r = mime_blob_section(&mb, span_cstr(c->spec), &sec);
	cr_assert_eq(r, c->res, "%s %s: %d", c->msg, c->spec, r);
	if (r == 0) {
		cr_assert_eq(sec.what, c->what);
		cr_assert_leq(sec.off + sec.len, msg.len);
		if (c->want)
			cr_assert(sec.len == strlen(c->want) &&
				  memcmp(msg.p + sec.off, c->want, sec.len) == 0,
				  "%s %s: got '%.*s'", c->msg, c->spec, (int)sec.len,
				  msg.p + sec.off);
	}
	free(blob);
	free(msg.p);
}

TABLE_TEST(mime, sections, section_cases, section_case)

/* ---- addresses ----------------------------------------------------------- */

struct addr_case {
	const char *value, *want;
};

static const struct addr_case addr_cases[] = {
	{ "a@b.c", "((NIL NIL \"a\" \"b.c\"))" },
	{ "A B <a@b.c>", "((\"A B\" NIL \"a\" \"b.c\"))" },
	{ "\"B, A\" <a@b.c>, c@d", "((\"B, A\" NIL \"a\" \"b.c\")(NIL NIL \"c\" \"d\"))" },
	{ "a@b.c (Comment Name)", "((\"Comment Name\" NIL \"a\" \"b.c\"))" },
	{ "<@x.y,@z.w:a@b.c>", "((NIL \"@x.y,@z.w\" \"a\" \"b.c\"))" },
	{ "g: a@b, c@d;", "((NIL NIL \"g\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL \"c\" \"d\")(NIL NIL NIL NIL))" },
	{ "g:;", "((NIL NIL \"g\" NIL)(NIL NIL NIL NIL))" },
	{ "open group: a@b", "((NIL NIL \"open group\" NIL)(NIL NIL \"a\" \"b\")(NIL NIL NIL NIL))" },
	{ "user", "((NIL NIL \"user\" \"MISSING_DOMAIN\"))" },
	{ ",, ,", "NIL" },
	{ "", "NIL" },
	{ "\"quote\\\"d\" <\"x y\"@[1.2.3.4]>", "((\"quote\\\"d\" NIL \"x y\" \"[1.2.3.4]\"))" },
	{ "a.b @ c . d", "((NIL NIL \"a.b\" \"c.d\"))" },
	{ "Name <a@b> junk, c@d", "((\"Name\" NIL \"a\" \"b\")(NIL NIL \"c\" \"d\"))" },
	{ "<a@b", "((NIL NIL \"a\" \"b\"))" },
	{ "\"unterminated <a@b>", "((NIL NIL \"unterminated <a@b>\" \"MISSING_DOMAIN\"))" },
};

static void addr_case(const struct addr_case *c)
{
	char msg[512], want[600];
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	size_t n, len = (size_t)snprintf(msg, sizeof(msg), "To: %s\r\n\r\n", c->value);
	char *s;

	cr_assert_eq(mime_blob_parse(span_make(blob, scan((uint8_t *)msg, len, 0, 0, blob)), &mb), 0);
	s = write_env(&mb, 0, &n);
	snprintf(want, sizeof(want), "(NIL NIL NIL NIL NIL %s NIL NIL NIL NIL)", c->want);
	cr_assert_str_eq(s, want, "To: %s", c->value);
	free(s);
	free(blob);
}

TABLE_TEST(mime, addresses, addr_cases, addr_case)

/* ---- limits --------------------------------------------------------------- */

static char *build(size_t cap, size_t *len_r)
{
	char *m = malloc(cap);
	cr_assert_not_null(m);
	*len_r = 0;
	return m;
}

#define APPEND(m, len, cap, ...)                                              \
	do {                                                                  \
		int n_ = snprintf((m) + (len), (cap) - (len), __VA_ARGS__);   \
		cr_assert(n_ >= 0 && (size_t)n_ < (cap) - (len));            \
		(len) += (size_t)n_;                                          \
	} while (0)

static void scan_ok(const char *m, size_t len, uint8_t *blob, struct mime_blob *mb)
{
	size_t blen = scan((const uint8_t *)m, len, 0, 0, blob);
	cr_assert_leq(blen, MIME_BLOB_MAX);
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), mb), 0);
	read_all(mb);
}

Test(mime, part_bomb_stops_at_parts_max)
{
	size_t cap = 1 << 20, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX), *other = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	struct mime_section sec;

	APPEND(m, len, cap, "Content-Type: multipart/mixed; boundary=bomb\r\n\r\n");
	for (int i = 0; i < 10000; i++)
		APPEND(m, len, cap, "--bomb\r\n\r\n%d\r\n", i);
	APPEND(m, len, cap, "--bomb--\r\n");
	scan_ok(m, len, blob, &mb);
	cr_assert_eq(mb.nparts, MIME_PARTS_MAX);
	cr_assert(mb.flags & MIME_BLOB_PARTS_LIMIT);
	/* the last part ends at the first boundary it could not split at;
	 * the rest is the multipart's body */
	cr_assert_eq(mime_blob_section(&mb, SPAN_LIT("999"), &sec), 0);
	cr_assert(sec.len == 3 && memcmp(m + sec.off, "998", 3) == 0);
	cr_assert_eq(mime_blob_section(&mb, SPAN_LIT("1000"), &sec), -ENOENT);
	/* same blob in 4 KiB pieces */
	cr_assert_eq(scan((uint8_t *)m, len, 0, 4096, other), mb.b.len);
	cr_assert(memcmp(blob, other, mb.b.len) == 0);
	free(m);
	free(blob);
	free(other);
}

Test(mime, depth_stops_at_depth_max)
{
	size_t cap = 1 << 16, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	struct mime_part p;

	for (int i = 0; i < 100; i++)
		APPEND(m, len, cap, "Content-Type: multipart/mixed; boundary=d%d\r\n\r\n--d%d\r\n", i, i);
	APPEND(m, len, cap, "\r\ndeepest\r\n");
	for (int i = 99; i >= 0; i--)
		APPEND(m, len, cap, "--d%d--\r\n", i);
	scan_ok(m, len, blob, &mb);
	cr_assert(mb.flags & MIME_BLOB_DEPTH_LIMIT);
	cr_assert_eq(mb.nparts, MIME_DEPTH_MAX + 1);
	cr_assert_eq(mime_blob_part(&mb, MIME_DEPTH_MAX, &p), 0);
	cr_assert_eq(p.depth, MIME_DEPTH_MAX);
	cr_assert_eq(p.kind, MIME_KIND_MULTIPART);
	cr_assert(p.flags & MIME_PART_OPAQUE);
	free(m);
	free(blob);
}

Test(mime, deep_messages_stop_at_depth_max)
{
	size_t cap = 1 << 16, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;

	for (int i = 0; i < 100; i++)
		APPEND(m, len, cap, "Subject: %d\r\nContent-Type: message/rfc822\r\n\r\n", i);
	APPEND(m, len, cap, "\r\nbody\r\n");
	scan_ok(m, len, blob, &mb);
	cr_assert(mb.flags & MIME_BLOB_DEPTH_LIMIT);
	cr_assert_eq(mb.nparts, MIME_DEPTH_MAX + 1);
	free(m);
	free(blob);
}

/* The [limits] settings mime_depth_max and mime_parts_max lower the
 * limits per message; 0 or values over the MAXes leave the MAXes. */
static void scan_limited(const char *m, size_t len, uint32_t depth, uint32_t parts,
			 uint8_t *blob, struct mime_blob *mb)
{
	struct mime_scanner *sc = scanner();
	size_t blen;
	mime_scan_limits(sc, depth, parts);
	mime_scan_feed(sc, span_make(m, len));
	cr_assert_eq(mime_scan_finish(sc, blob, MIME_BLOB_MAX, &blen), 0);
	free(sc);
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), mb), 0);
}

Test(mime, configured_limits)
{
	size_t cap = 1 << 16, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	struct mime_part p;

	/* 10 levels of multipart, each with a sibling text part */
	for (int i = 0; i < 10; i++)
		APPEND(m, len, cap, "Content-Type: multipart/mixed; boundary=d%d\r\n\r\n"
				    "--d%d\r\n\r\nleaf %d\r\n--d%d\r\n", i, i, i, i);
	APPEND(m, len, cap, "\r\ndeepest\r\n");
	for (int i = 9; i >= 0; i--)
		APPEND(m, len, cap, "--d%d--\r\n", i);

	scan_limited(m, len, 3, 0, blob, &mb);
	cr_assert(mb.flags & MIME_BLOB_DEPTH_LIMIT);
	for (uint32_t i = 0; i < mb.nparts; i++) {
		cr_assert_eq(mime_blob_part(&mb, i, &p), 0);
		cr_assert_leq(p.depth, 3);
		if (p.depth == 3 && p.kind == MIME_KIND_MULTIPART)
			cr_assert(p.flags & MIME_PART_OPAQUE);
	}

	scan_limited(m, len, 0, 5, blob, &mb);
	cr_assert(mb.flags & MIME_BLOB_PARTS_LIMIT);
	cr_assert_eq(mb.nparts, 5);

	/* no limit reached: the whole tree (10 multiparts, 10 leaves, the
	 * deepest text) */
	scan_limited(m, len, 1000, 100000, blob, &mb);
	cr_assert_not(mb.flags & (MIME_BLOB_PARTS_LIMIT | MIME_BLOB_DEPTH_LIMIT));
	cr_assert_eq(mb.nparts, 21);
	free(m);
	free(blob);
}

Test(mime, header_field_truncated_at_max)
{
	size_t cap = 1 << 17, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	struct mime_part p;
	struct span v;

	APPEND(m, len, cap, "Subject: ");
	for (int i = 0; i < 3000; i++)
		APPEND(m, len, cap, "word%04d\r\n ", i);
	APPEND(m, len, cap, "end\r\nContent-Type: text/html\r\n\r\nbody\r\n");
	scan_ok(m, len, blob, &mb);
	cr_assert(mime_blob_field(&mb, 0, MIME_FIELD_SUBJECT, &v));
	cr_assert_eq(v.len, MIME_HEADER_FIELD_MAX - strlen("Subject: "));
	cr_assert(mime_blob_part(&mb, 0, &p) == 0 && (p.flags & MIME_PART_FIELD_TRUNC));
	/* the next field is still seen */
	cr_assert(mime_blob_field(&mb, 0, MIME_FIELD_CONTENT_TYPE, &v));
	cr_assert(span_eq(v, SPAN_LIT("text/html")));
	free(m);
	free(blob);
}

Test(mime, boundary_length_limit)
{
	char b70[71], b71[72], m[1024];
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	int len;

	memset(b70, 'x', 70);
	b70[70] = 0;
	memset(b71, 'y', 71);
	b71[71] = 0;
	len = snprintf(m, sizeof(m), "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n--%s\r\n\r\na\r\n--%s--\r\n", b70, b70, b70);
	scan_ok(m, (size_t)len, blob, &mb);
	cr_assert_eq(mb.nparts, 2);
	len = snprintf(m, sizeof(m), "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n--%s\r\n\r\na\r\n--%s--\r\n", b71, b71, b71);
	scan_ok(m, (size_t)len, blob, &mb);
	cr_assert_eq(mb.nparts, 1);
	free(blob);
}

Test(mime, params_limit)
{
	size_t cap = 1 << 16, len, n;
	char *m = build(cap, &len), *s;
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	size_t count = 0;

	APPEND(m, len, cap, "Content-Type: application/x-many");
	for (int i = 0; i < 200; i++)
		APPEND(m, len, cap, ";\r\n p%d=v", i);
	APPEND(m, len, cap, "\r\n\r\nx");
	scan_ok(m, len, blob, &mb);
	s = write_bs(&mb, 0, false, &n);
	for (char *q = s; (q = strstr(q, "\"v\"")); q++)
		count++;
	cr_assert_eq(count, MIME_PARAMS_MAX);
	free(s);
	free(m);
	free(blob);
}

Test(mime, blob_never_exceeds_max)
{
	size_t cap = 24 << 20, len;
	char *m = build(cap, &len);
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;

	APPEND(m, len, cap, "Content-Type: multipart/mixed; boundary=b\r\n\r\n");
	for (int i = 0; i < 1200; i++) {
		APPEND(m, len, cap, "--b\r\nContent-Description: ");
		memset(m + len, 'a' + i % 26, 10000);
		len += 10000;
		APPEND(m, len, cap, "\r\n\r\n.\r\n");
	}
	scan_ok(m, len, blob, &mb);
	cr_assert(mb.flags & MIME_BLOB_FIELDS_LOST);
	cr_assert_leq(mb.b.len, MIME_BLOB_MAX);
	free(m);
	free(blob);
}

Test(mime, finish_needs_room)
{
	struct mime_scanner *sc = scanner();
	uint8_t small[16], *blob = malloc(MIME_BLOB_MAX);
	size_t need, len;

	mime_scan_feed(sc, SPAN_LIT("Subject: x\r\n\r\nbody\r\n"));
	cr_assert_eq(mime_scan_finish(sc, small, sizeof(small), &need), -ENOBUFS);
	cr_assert_gt(need, sizeof(small));
	cr_assert_eq(mime_scan_finish(sc, blob, MIME_BLOB_MAX, &len), 0);
	cr_assert_eq(len, need);
	free(sc);
	free(blob);
}

/* MIME_BLOB_NUL_FREE: set only when no NUL octet was fed, wherever the NUL
 * is (header, body, part boundary, first or last byte) and however the
 * message is split; nothing else in the blob changes with it. */
Test(mime, nul_free_flag)
{
	static const char msg[] = "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
				  "--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n";
	size_t len = sizeof(msg) - 1, blen, olen;
	uint8_t *blob = malloc(MIME_BLOB_MAX), *other = malloc(MIME_BLOB_MAX);
	uint8_t *m = malloc(len);
	struct mime_blob mb;

	blen = scan((const uint8_t *)msg, len, 0, 0, blob);
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
	cr_assert(mb.flags & MIME_BLOB_NUL_FREE);
	cr_assert_eq(mb.flags & ~MIME_BLOB_NUL_FREE, 0);
	for (size_t step = 1; step <= len; step++) {
		olen = scan((const uint8_t *)msg, len, 0, step, other);
		cr_assert(olen == blen && memcmp(blob, other, blen) == 0, "step %zu", step);
	}
	for (size_t z = 0; z < len; z++) {
		memcpy(m, msg, len);
		m[z] = 0;
		for (size_t step = 0; step <= 7; step += 7) {
			olen = scan(m, len, step ? 0 : z, step, other);
			cr_assert_eq(mime_blob_parse(span_make(other, olen), &mb), 0, "NUL at %zu", z);
			cr_assert_not(mb.flags & MIME_BLOB_NUL_FREE, "NUL at %zu", z);
		}
	}
	/* 0x80 or 0xff are not NUL */
	memcpy(m, msg, len);
	m[len - 3] = 0x80;
	m[3] = 0xff;
	olen = scan(m, len, 0, 0, other);
	cr_assert_eq(mime_blob_parse(span_make(other, olen), &mb), 0);
	cr_assert(mb.flags & MIME_BLOB_NUL_FREE);
	/* the empty message holds no NUL */
	olen = scan(m, 0, 0, 0, other);
	cr_assert_eq(mime_blob_parse(span_make(other, olen), &mb), 0);
	cr_assert(mb.flags & MIME_BLOB_NUL_FREE);
	/* a blob with the flag cleared (written before it existed) is valid;
	 * an unknown flag is not */
	blob[5] &= (uint8_t)~MIME_BLOB_NUL_FREE;
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
	cr_assert_not(mb.flags & MIME_BLOB_NUL_FREE);
	blob[5] |= 0x10;
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), -EINVAL);
	free(m);
	free(blob);
	free(other);
}

Test(mime, quoting)
{
	static const char msg[] = "Subject: a \"q\" \\ b\r\nMessage-ID: \r\n"
				  "Content-ID: <x\ry>\r\n\r\n";
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	size_t n;
	char *s;

	scan_ok(msg, sizeof(msg) - 1, blob, &mb);
	s = write_env(&mb, 0, &n);
	cr_assert_str_eq(s, "(NIL \"a \\\"q\\\" \\\\ b\" NIL NIL NIL NIL NIL NIL NIL \"\")");
	free(s);
	s = write_bs(&mb, 0, false, &n);
	cr_assert_str_eq(s, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") {5}\r\n<x\ry> NIL \"7bit\" 0 0)");
	free(s);
	free(blob);
}

/* A text part naming its charset the RFC 2231 way gets no "us-ascii"
 * beside it (a client taking the plain "charset" would show the UTF-8
 * text as ASCII); one that names none still does. */
Test(mime, rfc2231_charset_is_a_charset)
{
	static const char *const cases[][2] = {
		{ "Content-Type: text/plain; charset*=utf-8''%E2%82%AC\r\n\r\n",
		  "(\"text\" \"plain\" (\"charset*\" \"utf-8''%E2%82%AC\") NIL NIL \"7bit\" 0 0)" },
		{ "Content-Type: text/plain; CHARSET*0*=utf-8''a; charset*1=b\r\n\r\n",
		  "(\"text\" \"plain\" (\"CHARSET*0*\" \"utf-8''a\" \"charset*1\" \"b\") NIL NIL \"7bit\" 0 0)" },
		{ "Content-Type: text/plain; format=flowed; charsetx=1\r\n\r\n",
		  "(\"text\" \"plain\" (\"format\" \"flowed\" \"charsetx\" \"1\" \"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)" },
	};
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	struct mime_blob mb;
	size_t n;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		scan_ok(cases[i][0], strlen(cases[i][0]), blob, &mb);
		char *s = write_bs(&mb, 0, false, &n);
		cr_expect_str_eq(s, cases[i][1], "case %zu: %s", i, s);
		free(s);
	}
	free(blob);
}

Test(mime, random_blobs_are_safe)
{
	uint8_t *b = malloc(4096);
	struct mime_blob mb;
	uint32_t x = 12345;

	for (int round = 0; round < 20000; round++) {
		size_t len = 32 + (x % 400);
		for (size_t i = 0; i < len; i++) {
			x = x * 1103515245u + 12345u;
			b[i] = (uint8_t)(x >> 16);
		}
		/* a plausible header so the deeper checks are reached */
		memcpy(b, "RMIM\x01\x00\x30\x00", 8);
		b[8] = (uint8_t)(1 + round % 4);
		memset(b + 9, 0, 3);
		uint32_t sl = (uint32_t)(len - 32 - b[8] * 48u);
		if (len >= 32u + b[8] * 48u)
			memcpy(b + 12, &sl, 4);
		memset(b + 24, 0, 8);
		if (mime_blob_parse(span_make(b, len), &mb) == 0)
			read_all(&mb);
	}
	free(b);
}
