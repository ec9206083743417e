/* test_imap_parse.c - the IMAP tokenizer fed every case whole and split at
 * every byte offset, sequence sets, modified UTF-7, and each limit. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "proto/imap_parse.h"
#include "table_test.h"

/* Table rows leave len out when strlen() does. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* Runs the tokenizer over in, first offering only split bytes (then all),
 * and writes the token stream as text: a:ATOM n q:QUOTED L5 L5+ L5~ d:DATA
 * ( ) $ and !INVALID / !TOO_LONG / !AGAIN at the end. Literal data pieces
 * are merged so every split gives the same text. */
static void tokens(const char *in, size_t len, size_t split, size_t line_max, char *out,
		   size_t cap)
{
	struct imap_parser p;
	imap_parser_init(&p, line_max);
	size_t pos = 0, avail = split < len ? split : len, o = 0;
	bool in_data = false;
	out[0] = '\0';
	for (int guard = 0; guard < 100000; guard++) {
		struct imap_token t;
		size_t used;
		enum imap_parse_result r =
			imap_parse_next(&p, span_make(in + pos, avail - pos), &used, &t);
		if (r == IMAP_PARSE_AGAIN) {
			cr_assert_eq(used, 0);
			if (avail == len) {
				o += (size_t)snprintf(out + o, cap - o, "!AGAIN");
				return;
			}
			avail = len;
			continue;
		}
		if (r == IMAP_PARSE_INVALID || r == IMAP_PARSE_TOO_LONG) {
			cr_assert_eq(used, 0);
			o += (size_t)snprintf(out + o, cap - o, "%s",
					      r == IMAP_PARSE_INVALID ? "!INVALID" : "!TOO_LONG");
			return;
		}
		pos += used;
		if (t.type != IMAP_TOK_LITERAL_DATA && in_data)
			in_data = false;
		switch (t.type) {
		case IMAP_TOK_ATOM:
			o += (size_t)snprintf(out + o, cap - o, "a:%.*s ", (int)t.text.len,
					      (const char *)t.text.p);
			break;
		case IMAP_TOK_NIL:
			o += (size_t)snprintf(out + o, cap - o, "n ");
			break;
		case IMAP_TOK_QUOTED: {
			uint8_t buf[256];
			size_t n = imap_unquote(t.text, buf);
			o += (size_t)snprintf(out + o, cap - o, "q:%.*s ", (int)n, (const char *)buf);
			break;
		}
		case IMAP_TOK_LITERAL:
			o += (size_t)snprintf(out + o, cap - o, "L%llu%s%s ",
					      (unsigned long long)t.size, t.nonsync ? "+" : "",
					      t.binary ? "~" : "");
			break;
		case IMAP_TOK_LITERAL_DATA:
			if (!in_data) {
				o += (size_t)snprintf(out + o, cap - o, "d:");
				in_data = true;
			}
			o += (size_t)snprintf(out + o, cap - o, "%.*s", (int)t.text.len,
					      (const char *)t.text.p);
			if (t.last) {
				o += (size_t)snprintf(out + o, cap - o, " ");
				in_data = false;
			}
			break;
		case IMAP_TOK_LIST_BEGIN:
			o += (size_t)snprintf(out + o, cap - o, "( ");
			break;
		case IMAP_TOK_LIST_END:
			o += (size_t)snprintf(out + o, cap - o, ") ");
			break;
		case IMAP_TOK_EOL:
			o += (size_t)snprintf(out + o, cap - o, "$ ");
			if (pos == len)
				return;
			break;
		}
		cr_assert(o < cap);
	}
	cr_assert_fail("no progress");
}

struct tok_case {
	const char *in;
	const char *want;
	size_t len; /* 0: strlen(in) */
};

static const struct tok_case tok_cases[] = {
	{ "a1 NOOP\r\n", "a:a1 a:NOOP $ " },
	{ "a1 NOOP\n", "a:a1 a:NOOP $ " },
	{ "a1 LOGIN alice \"se\\\"c\\\\ret\"\r\n", "a:a1 a:LOGIN a:alice q:se\"c\\ret $ " },
	{ "a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
	  "a:a1 a:LOGIN L5 d:alice L6+ d:secret $ " },
	{ "a1 X {0}\r\n\r\n", "a:a1 a:X L0 d: $ " },
	{ "a1 X ~{3}\r\nabc\r\n", "a:a1 a:X L3~ d:abc $ " },
	{ "a1 X ~abc\r\n", "a:a1 a:X a:~abc $ " },
	{ "a1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n",
	  "a:a1 a:FETCH a:1:* ( a:FLAGS a:BODY.PEEK[HEADER.FIELDS (From To)]<0.100> ) $ " },
	{ "a1 STORE 1 +FLAGS (\\Seen \\Deleted)\r\n",
	  "a:a1 a:STORE a:1 a:+FLAGS ( a:\\Seen a:\\Deleted ) $ " },
	{ "a1 X NIL nil Nile\r\n", "a:a1 a:X n n a:Nile $ " },
	{ "a1 X (((a)))\r\n", "a:a1 a:X ( ( ( a:a ) ) ) $ " },
	{ "a1 X ()\r\n", "a:a1 a:X ( ) $ " },
	{ "a1 X \"\"\r\n", "a:a1 a:X q: $ " },
	{ "a1 X \"caf\xc3\xa9\"\r\n", "a:a1 a:X q:caf\xc3\xa9 $ " },
	{ "a1  X\r\n", "a:a1 a:X $ " },
	{ "a1 LIST \"\" *\r\n", "a:a1 a:LIST q: a:* $ " },
	{ "a1 LIST \"\" %\r\n", "a:a1 a:LIST q: a:% $ " },
	{ "a1 X (a b) (c)\r\n", "a:a1 a:X ( a:a a:b ) ( a:c ) $ " },
	{ "a1 X (a\r\n", "a:a1 a:X ( a:a !INVALID" },
	{ "a1 X a)\r\n", "a:a1 a:X a:a !INVALID" },
	{ "a1 X a(\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X \"a\"b\r\n", "a:a1 a:X q:a !INVALID" },
	{ "a1 X \"a\0b\"\r\n", "a:a1 a:X !INVALID", 13 },
	{ "a1 X \"a\\nb\"\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X \"ab\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X a\rb\r\n", "a:a1 a:X a:a !INVALID" },
	{ "a1 X \x80\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {5\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {}\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {5}x\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {-5}\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {4294967295+}\r\n", "a:a1 a:X L4294967295+ !AGAIN" },
	{ "a1 X {4294967296}\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {18446744073709551617}\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {00000000000000000001}\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X {3}\r\nab", "a:a1 a:X L3 d:ab!AGAIN" },
	{ "a1 X BODY[HEADER\r\n", "a:a1 a:X !INVALID" },
	{ "a1 X [a[b]]\r\n", "a:a1 a:X a:[a[b]] $ " }, /* "[" is an ATOM-CHAR */
	{ "a1 X foo[bar (a[b c]d) [Gmail]/%\r\n",
	  "a:a1 a:X a:foo[bar ( a:a[b a:c]d ) a:[Gmail]/% $ " },
	{ "a1 X (body[1 2]<0.1> BINARY.size[1 (] BODYX[1 2])\r\n",
	  "a:a1 a:X ( a:body[1 2]<0.1> a:BINARY.size[1 (] a:BODYX[1 a:2] ) $ " },
	{ "a1 X BODY.PEEK[a[b]]\r\n", "a:a1 a:X !INVALID" },
	{ "a1 NOOP", "a:a1 !AGAIN" },
	{ "\r\n", "$ " },
	{ "a1 X )\r\n", "a:a1 a:X !INVALID" },
	{ "a b\r\nc d\r\n", "a:a a:b $ a:c a:d $ " },
};

static void check_tokens(const struct tok_case *c)
{
	size_t len = c->len ? c->len : strlen(c->in);
	char whole[4096], part[4096];
	tokens(c->in, len, len, IMAP_LINE_MAX, whole, sizeof(whole));
	cr_assert_str_eq(whole, c->want, "input %s", c->in);
	for (size_t k = 0; k <= len; k++) {
		tokens(c->in, len, k, IMAP_LINE_MAX, part, sizeof(part));
		cr_assert_str_eq(part, whole, "split at %zu of %s", k, c->in);
	}
}

TABLE_TEST(imap_parse, tokens, tok_cases, check_tokens)

Test(imap_parse, list_depth_limit)
{
	/* 100,000 "(" must give INVALID at depth IMAP_LIST_DEPTH_MAX + 1. */
	size_t n = 100000;
	char *in = malloc(n + 16);
	memcpy(in, "a1 X ", 5);
	memset(in + 5, '(', n);
	memcpy(in + 5 + n, "\r\n", 2);
	char *out = malloc(1 << 20);
	tokens(in, n + 7, n + 7, 1 << 20, out, 1 << 20);
	char want[512];
	size_t o = (size_t)snprintf(want, sizeof(want), "a:a1 a:X ");
	for (int i = 0; i < IMAP_LIST_DEPTH_MAX; i++)
		o += (size_t)snprintf(want + o, sizeof(want) - o, "( ");
	snprintf(want + o, sizeof(want) - o, "!INVALID");
	cr_assert_str_eq(out, want);
	free(in);
	free(out);
}

Test(imap_parse, line_limit)
{
	char in[200];
	memset(in, 'x', sizeof(in));
	memcpy(in, "a1 X ", 5);
	memcpy(in + 98, "\r\n", 2);
	char out[1024];
	/* 100 bytes with CRLF: fits in 100, not in 99 (refused at the CRLF). */
	tokens(in, 100, 100, 100, out, sizeof(out));
	cr_assert_str_eq(out, "a:a1 a:X a:" "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx $ ");
	for (size_t k = 0; k <= 100; k++) {
		tokens(in, 100, k, 99, out, sizeof(out));
		cr_assert(strncmp(out, "a:a1 a:X a:xxx", 14) == 0 && strstr(out, "x !TOO_LONG"),
			  "split %zu: %s", k, out);
	}
	/* An endless atom is refused once the limit is reached, not buffered. */
	memset(in, 'x', sizeof(in));
	memcpy(in, "a1 X ", 5);
	tokens(in, 150, 150, 100, out, sizeof(out));
	cr_assert_str_eq(out, "a:a1 a:X !TOO_LONG");
	/* Literal data does not count against the line. */
	char lit[300];
	int n = snprintf(lit, sizeof(lit), "a1 X {200+}\r\n%0200d\r\n", 0);
	tokens(lit, (size_t)n, (size_t)n, 64, out, sizeof(out));
	cr_assert(strncmp(out, "a:a1 a:X L200+ d:000", 20) == 0);
	cr_assert(strstr(out, " $ ") != NULL);
}

Test(imap_parse, skip_line)
{
	struct imap_parser p;
	imap_parser_init(&p, IMAP_LINE_MAX);
	size_t used;
	struct imap_token t;
	const char *in = "a1 X (a\r\nb2 NOOP\r\n";
	size_t pos = 0;
	while (imap_parse_next(&p, span_cstr(in + pos), &used, &t) == IMAP_PARSE_OK)
		pos += used;
	cr_assert_eq(imap_parse_skip_line(&p, span_make(in + pos, 1), &used), IMAP_PARSE_AGAIN);
	cr_assert_eq(used, 1);
	pos += used;
	cr_assert_eq(imap_parse_skip_line(&p, span_cstr(in + pos), &used), IMAP_PARSE_OK);
	pos += used;
	cr_assert_eq(imap_parse_next(&p, span_cstr(in + pos), &used, &t), IMAP_PARSE_OK);
	cr_assert(span_eq(t.text, SPAN_LIT("b2")));
	cr_assert(imap_parse_in_command(&p));
}

/* A dead line that ends with "{n+}" goes on after the literal: its data
 * and the rest of the command are skipped, split anywhere. */
static const char *const skip_lit_cases[] = {
	"(foo[x) {5+}\r\nab\r\nc more {3+}\r\nxyz\r\nb2 NOOP\r\n",
	"x ~{3+}\r\nabc\r\nb2 NOOP\r\n",
	"x {0+}\r\n\r\nb2 NOOP\r\n",
	"x {5+}\nab{1+\nb2 NOOP\r\n",
	"x {5}\r\nb2 NOOP\r\n",              /* synchronising: the client waits */
	"x {12345678901+}\r\nb2 NOOP\r\n",   /* not a literal header */
	"x {5+}y\r\nb2 NOOP\r\n",
	"x {+}\r\nb2 NOOP\r\n",
	"x {{2+}\r\n{}\r\nb2 NOOP\r\n",
};

Test(imap_parse, skip_line_drops_nonsync_literals)
{
	for (size_t c = 0; c < sizeof(skip_lit_cases) / sizeof(skip_lit_cases[0]); c++) {
		const char *in = skip_lit_cases[c];
		size_t len = strlen(in), end = (size_t)(strstr(in, "b2 NOOP") - in);
		for (size_t k = 0; k <= end; k++) {
			struct imap_parser p;
			imap_parser_init(&p, IMAP_LINE_MAX);
			size_t used, pos = 0;
			enum imap_parse_result r = IMAP_PARSE_AGAIN;
			if (k) {
				r = imap_parse_skip_line(&p, span_make(in, k), &used);
				pos = used;
			}
			if (r == IMAP_PARSE_AGAIN) {
				cr_assert_eq(pos, k);
				r = imap_parse_skip_line(&p, span_make(in + pos, len - pos), &used);
				pos += used;
			}
			cr_assert_eq(r, IMAP_PARSE_OK, "case %zu split %zu", c, k);
			cr_assert_eq(pos, end, "case %zu split %zu: %zu", c, k, pos);
			cr_assert(!imap_parse_in_command(&p));
		}
	}
}

Test(imap_parse, literal_skip)
{
	struct imap_parser p;
	imap_parser_init(&p, IMAP_LINE_MAX);
	size_t used, pos = 0;
	struct imap_token t;
	const char *in = "a1 APPEND x {99}\r\n";
	for (int i = 0; i < 4; i++) {
		cr_assert_eq(imap_parse_next(&p, span_cstr(in + pos), &used, &t), IMAP_PARSE_OK);
		pos += used;
	}
	cr_assert_eq(t.type, IMAP_TOK_LITERAL);
	imap_parse_literal_skip(&p);
	/* the client sends nothing more for this command but the next one */
	cr_assert_eq(imap_parse_next(&p, SPAN_LIT("\r\n"), &used, &t), IMAP_PARSE_OK);
	cr_assert_eq(t.type, IMAP_TOK_EOL);
	cr_assert(!imap_parse_in_command(&p));
}

/* ---- numbers and sequence sets ------------------------------------------- */

Test(imap_parse, numbers)
{
	uint32_t n;
	cr_assert_eq(imap_parse_number(SPAN_LIT("4294967295"), true, &n), 0);
	cr_assert_eq(n, UINT32_MAX);
	cr_assert_eq(imap_parse_number(SPAN_LIT("4294967296"), false, &n), -EINVAL);
	cr_assert_eq(imap_parse_number(SPAN_LIT("99999999999999999999"), false, &n), -EINVAL);
	cr_assert_eq(imap_parse_number(SPAN_LIT("0"), true, &n), -EINVAL);
	cr_assert_eq(imap_parse_number(SPAN_LIT("0"), false, &n), 0);
	cr_assert_eq(imap_parse_number(SPAN_LIT(""), false, &n), -EINVAL);
	cr_assert_eq(imap_parse_number(SPAN_LIT("-1"), false, &n), -EINVAL);
	cr_assert_eq(imap_parse_number(SPAN_LIT("1a"), false, &n), -EINVAL);
	uint64_t w;
	cr_assert_eq(imap_parse_number64(SPAN_LIT("9223372036854775807"), true, &w), 0);
	cr_assert_eq(w, (uint64_t)INT64_MAX);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("4294967296"), true, &w), 0);
	cr_assert_eq(w, 4294967296u);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("9223372036854775808"), false, &w), -EINVAL);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("18446744073709551616"), false, &w), -EINVAL);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("0"), true, &w), -EINVAL);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("0"), false, &w), 0);
	cr_assert_eq(imap_parse_number64(SPAN_LIT(""), false, &w), -EINVAL);
	cr_assert_eq(imap_parse_number64(SPAN_LIT("1 "), false, &w), -EINVAL);
}

struct seq_case {
	const char *in;
	int rc;
	const char *want; /* lo:hi,... with 0 for * */
};

static const struct seq_case seq_cases[] = {
	{ "1", 0, "1:1" },
	{ "1:*", 0, "1:0" },
	{ "*", 0, "0:0" },
	{ "1:*,3,5:7", 0, "1:0,3:3,5:7" },
	{ "7:5", 0, "7:5" },
	{ "4294967295", 0, "4294967295:4294967295" },
	{ "4294967296", -EINVAL, "" },
	{ "0", -EINVAL, "" },
	{ "01", -EINVAL, "" },
	{ "1:0", -EINVAL, "" },
	{ "", -EINVAL, "" },
	{ ",", -EINVAL, "" },
	{ "1,", -EINVAL, "" },
	{ ",1", -EINVAL, "" },
	{ "1::2", -EINVAL, "" },
	{ "1:", -EINVAL, "" },
	{ ":1", -EINVAL, "" },
	{ "$", -EINVAL, "" },
	{ "1 2", -EINVAL, "" },
	{ "1,2,3,4,5,6,7,8,9", -E2BIG, "" },
};

static void check_seq(const struct seq_case *c)
{
	struct imap_range r[8];
	size_t n = 0;
	int rc = imap_parse_seqset(span_cstr(c->in), r, 8, &n);
	cr_assert_eq(rc, c->rc, "%s: %d", c->in, rc);
	if (rc)
		return;
	char out[256];
	size_t o = 0;
	for (size_t i = 0; i < n; i++)
		o += (size_t)snprintf(out + o, sizeof(out) - o, "%s%u:%u", i ? "," : "", r[i].lo,
				      r[i].hi);
	cr_assert_str_eq(out, c->want);
}

TABLE_TEST(imap_parse, seqset, seq_cases, check_seq)

/* section-binary insides (FETCH BINARY[...]): part numbers only. */
struct part_case {
	const char *in;
	int rc;
};

static const struct part_case part_cases[] = {
	{ "", 0 },
	{ "1", 0 },
	{ "2.1", 0 },
	{ "3.1.4.1.5", 0 },
	{ "10.20", 0 },
	{ "4294967295", 0 },
	{ "4294967296", -EINVAL },
	{ "0", -EINVAL },
	{ "01", -EINVAL },
	{ "1.0", -EINVAL },
	{ "1.02", -EINVAL },
	{ ".", -EINVAL },
	{ ".1", -EINVAL },
	{ "1.", -EINVAL },
	{ "1..2", -EINVAL },
	{ "1.MIME", -EINVAL },
	{ "HEADER", -EINVAL },
	{ "TEXT", -EINVAL },
	{ "1.TEXT", -EINVAL },
	{ "1 ", -EINVAL },
	{ " 1", -EINVAL },
	{ "-1", -EINVAL },
	{ "1,2", -EINVAL },
};

static void check_part(const struct part_case *c)
{
	cr_assert_eq(imap_parse_section_part(span_cstr(c->in)), c->rc, "\"%s\"", c->in);
	/* a prefix of a valid one is valid up to a "." and invalid at it */
	size_t len = strlen(c->in);
	for (size_t k = 1; c->rc == 0 && k < len; k++)
		if (c->in[k] == '.' || c->in[k - 1] == '.')
			cr_assert_eq(imap_parse_section_part(span_make(c->in, k)),
				     c->in[k - 1] == '.' ? -EINVAL : 0, "\"%.*s\"", (int)k, c->in);
}

TABLE_TEST(imap_parse, section_part, part_cases, check_part)

static const struct part_case section_cases[] = {
	{ "", 0 },
	{ "HEADER", 0 },
	{ "text", 0 },
	{ "1", 0 },
	{ "1.2.3", 0 },
	{ "1.2.MIME", 0 },
	{ "2.mime", 0 },
	{ "3.HEADER", 0 },
	{ "3.1.TEXT", 0 },
	{ "HEADER.FIELDS (From)", 0 },
	{ "header.fields.not (From To \"X-A\")", 0 },
	{ "1.HEADER.FIELDS (\"a\\\"b\")", 0 },
	{ "MIME", -EINVAL },
	{ "TEXT.MIME", -EINVAL },
	{ "HEADER.MIME", -EINVAL },
	{ "HEADER.FIELDS", -EINVAL },
	{ "HEADER.FIELDS ()", -EINVAL },
	{ "HEADER.FIELDS (", -EINVAL },
	{ "HEADER.FIELDS (A", -EINVAL },
	{ "HEADER.FIELDS (A) ", -EINVAL },
	{ "HEADER.FIELDS (A  B)", -EINVAL },
	{ "HEADER.FIELDS (A )", -EINVAL },
	{ "HEADER.FIELDS ( A)", -EINVAL },
	{ "HEADER.FIELDS (\"A)", -EINVAL },
	{ "HEADER.FIELDS (\"A\"B)", -EINVAL },
	{ "HEADER.FIELDS (\"A\\x\")", -EINVAL },
	{ "HEADER.FIELDS (\"A\nB\")", -EINVAL },
	{ "HEADER.FIELDS (\"A\rB\")", -EINVAL },
	{ "HEADER.FIELDS(A)", -EINVAL },
	{ "HEADERS", -EINVAL },
	{ "0", -EINVAL },
	{ "1.0", -EINVAL },
	{ "01.TEXT", -EINVAL },
	{ "1.", -EINVAL },
	{ "1..TEXT", -EINVAL },
	{ ".TEXT", -EINVAL },
	{ "1.FOO", -EINVAL },
	{ "1 ", -EINVAL },
};

static void check_section(const struct part_case *c)
{
	cr_assert_eq(imap_parse_section(span_cstr(c->in)), c->rc, "\"%s\"", c->in);
}

TABLE_TEST(imap_parse, section, section_cases, check_section)

Test(imap_parse, seqset_contains)
{
	struct imap_range r[4];
	size_t n;
	cr_assert_eq(imap_parse_seqset(SPAN_LIT("5:*"), r, 4, &n), 0);
	cr_assert(imap_seqset_contains(r, n, 4, 3));
	cr_assert(!imap_seqset_contains(r, n, 2, 3));
	cr_assert(imap_seqset_contains(r, n, 3, 3)); /* 5:* with * = 3 is 3:5 */
	cr_assert(imap_seqset_contains(r, n, 5, 10));
	cr_assert(imap_seqset_contains(r, n, 10, 10));
	cr_assert(!imap_seqset_contains(r, n, 11, 10));
	cr_assert(!imap_seqset_contains(r, n, 5, 0)); /* empty mailbox */
	cr_assert_eq(imap_parse_seqset(SPAN_LIT("7:5,9"), r, 4, &n), 0);
	cr_assert(imap_seqset_contains(r, n, 6, 100));
	cr_assert(imap_seqset_contains(r, n, 9, 100));
	cr_assert(!imap_seqset_contains(r, n, 8, 100));
}

/* ---- modified UTF-7 ------------------------------------------------------- */

struct utf7_case {
	const char *mutf7;
	const char *utf8; /* NULL: mutf7 is invalid */
};

static const struct utf7_case utf7_cases[] = {
	{ "INBOX", "INBOX" },
	{ "&-", "&" },
	{ "a&-b", "a&b" },
	{ "~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" },
	{ "Entw&APw-rfe", "Entw\xc3\xbcrfe" },
	{ "&2D3eAA-", "\xf0\x9f\x98\x80" },            /* U+1F600, a surrogate pair */
	{ "&AOQA9gD8-", "\xc3\xa4\xc3\xb6\xc3\xbc" },
	{ "&AOQ-&-", "\xc3\xa4&" },
	{ "", "" },
	{ "&AGE-", NULL },      /* "a" must be written directly */
	{ "&AOQ", NULL },       /* no closing - */
	{ "&AOQ-&APY-", NULL }, /* two shifts in a row */
	{ "&AOR-", NULL },      /* padding bits not zero */
	{ "&AOQA-", NULL },     /* extra base64 character */
	{ "&2D0-", NULL },      /* lone high surrogate */
	{ "&3gA-", NULL },      /* lone low surrogate */
	{ "&AO/-", NULL },      /* "/" is not modified base64 */
	{ "a\x01", NULL },
	{ "caf\xc3\xa9", NULL }, /* 8-bit: must be encoded */
	{ "&AAE-", NULL },       /* a control character */
	{ "&AH8-", NULL },       /* DEL, which the encoder refuses too (fuzz find) */
};

static void check_utf7(const struct utf7_case *c)
{
	uint8_t out[256];
	ssize_t n = imap_mutf7_decode(span_cstr(c->mutf7), out, sizeof(out));
	if (!c->utf8) {
		cr_assert_eq(n, -EINVAL, "%s decoded", c->mutf7);
		return;
	}
	cr_assert_geq(n, 0, "%s: %zd", c->mutf7, n);
	cr_assert_eq((size_t)n, strlen(c->utf8));
	cr_assert(memcmp(out, c->utf8, (size_t)n) == 0);
	n = imap_mutf7_encode(span_cstr(c->utf8), out, sizeof(out));
	cr_assert_geq(n, 0);
	cr_assert_eq((size_t)n, strlen(c->mutf7), "%s -> %.*s", c->utf8, (int)n, out);
	cr_assert(memcmp(out, c->mutf7, (size_t)n) == 0);
	/* every too-small buffer is -ENOSPC, never an overflow */
	for (size_t cap = 0; cap < strlen(c->utf8); cap++)
		cr_assert_eq(imap_mutf7_decode(span_cstr(c->mutf7), out, cap), -ENOSPC);
	for (size_t cap = 0; cap < strlen(c->mutf7); cap++)
		cr_assert_eq(imap_mutf7_encode(span_cstr(c->utf8), out, cap), -ENOSPC);
}

TABLE_TEST(imap_parse, mutf7, utf7_cases, check_utf7)

Test(imap_parse, mutf7_encode_invalid)
{
	uint8_t out[64];
	cr_assert_eq(imap_mutf7_encode(SPAN_LIT("\xc0\xaf"), out, sizeof(out)), -EINVAL);
	cr_assert_eq(imap_mutf7_encode(SPAN_LIT("\xed\xa0\x80"), out, sizeof(out)), -EINVAL);
	cr_assert_eq(imap_mutf7_encode(SPAN_LIT("\xe5\x8f"), out, sizeof(out)), -EINVAL);
	cr_assert_eq(imap_mutf7_encode(SPAN_LIT("a\tb"), out, sizeof(out)), -EINVAL);
	cr_assert_eq(imap_mutf7_encode(SPAN_LIT("\xf4\x90\x80\x80"), out, sizeof(out)), -EINVAL);
}

/* ---- UTF-8 mailbox names (IMAP4rev2) ------------------------------------- */

struct utf8_case {
	const char *in;
	bool valid;     /* well-formed UTF-8 */
	bool name;      /* and a valid mailbox name */
};

static const struct utf8_case utf8_cases[] = {
	{ "INBOX", true, true },
	{ "Entw\xc3\xbcrfe", true, true },
	{ "A&B", true, true },                       /* no modified UTF-7 here */
	{ "\xf0\x9f\x98\x80/\xe6\x97\xa5", true, true },
	{ "", true, true },
	{ "a\tb", true, false },                     /* a control character */
	{ "a\x7f", true, false },
	{ "caf\xc3", false, false },                 /* truncated */
	{ "\xc0\xaf", false, false },                /* overlong */
	{ "\xe0\x80\xaf", false, false },            /* overlong */
	{ "\xed\xa0\x80", false, false },            /* a surrogate */
	{ "\xf4\x90\x80\x80", false, false },        /* above U+10FFFF */
	{ "\x80", false, false },                    /* a lone continuation byte */
	{ "\xc3\x28", false, false },                /* a bad continuation byte */
};

static void check_utf8(const struct utf8_case *c)
{
	uint8_t out[64];
	size_t len = strlen(c->in);
	cr_assert_eq(imap_utf8_valid(span_cstr(c->in)), c->valid, "%s", c->in);
	ssize_t n = imap_utf8_name(span_cstr(c->in), out, sizeof(out));
	if (!c->name) {
		cr_assert_eq(n, -EINVAL, "%s", c->in);
		return;
	}
	cr_assert_eq(n, (ssize_t)len);
	cr_assert(memcmp(out, c->in, len) == 0);
	for (size_t cap = 0; cap < len; cap++)
		cr_assert_eq(imap_utf8_name(span_cstr(c->in), out, cap), -ENOSPC);
}

TABLE_TEST(imap_parse, utf8_names, utf8_cases, check_utf8)

/* ---- names of new mailboxes (CREATE, RENAME's destination) --------------- */

struct new_name_case {
	const char *in;
	bool create;
	const char *why;   /* NULL: valid */
	size_t len;        /* of the name to use, when valid */
};

#define EMPTY "Name is empty"
#define BEGINS "Begins with hierarchy separator"
#define ADJ "Has adjacent hierarchy separators"
#define ENDS "Ends with hierarchy separator"

/* The answers of Dovecot 2.3.19 (tests/tools/imap_diff.py) */
static const struct new_name_case new_name_cases[] = {
	{ "a", true, NULL, 1 },
	{ "a/b", true, NULL, 3 },
	{ "a/ /b", true, NULL, 5 },
	{ " sp", true, NULL, 3 },
	{ "INBOX/x", true, NULL, 7 },
	{ "st*ar", true, NULL, 5 },
	{ "pe%rc", false, NULL, 5 },
	{ "trail/", true, NULL, 5 },      /* RFC 3501 6.3.3: made as "trail" */
	{ "n/m/", true, NULL, 3 },
	{ "trail/", false, ENDS, 0 },     /* RENAME keeps the name as given */
	{ "n//", true, ENDS, 0 },         /* one delimiter is dropped, not two */
	{ "", true, EMPTY, 0 },
	{ "", false, EMPTY, 0 },
	{ "/", true, EMPTY, 0 },
	{ "/", false, BEGINS, 0 },
	{ "//", true, BEGINS, 0 },
	{ "/lead", true, BEGINS, 0 },
	{ "/lead", false, BEGINS, 0 },
	{ "a//b", true, ADJ, 0 },
	{ "a//b", false, ADJ, 0 },
	{ "a/b//", false, ADJ, 0 },
	{ "a///", true, ADJ, 0 },
};

static void check_new_name(const struct new_name_case *c)
{
	size_t len = 99;
	const char *why = imap_new_name_check(span_cstr(c->in), c->create, &len);
	if (!c->why) {
		cr_assert_null(why, "\"%s\": %s", c->in, why);
		cr_assert_eq(len, c->len, "\"%s\"", c->in);
		return;
	}
	cr_assert_not_null(why, "\"%s\"", c->in);
	cr_assert_str_eq(why, c->why, "\"%s\"", c->in);
}

TABLE_TEST(imap_parse, new_names, new_name_cases, check_new_name)
