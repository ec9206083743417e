/* Unit tests for proto/pop3_parse.c: commands, arguments, numbers, and the
 * RETR/TOP body filter (dot-stuffing, TOP's header/blank/body-line cut).
 * Every body case is also fed split at every offset and through an output
 * buffer of every small size, and every command in a buffer of exactly its
 * size so ASan catches an over-read. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/pop3_parse.h"

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	cr_assert_not_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

/* ---- commands ------------------------------------------------------------ */

struct cmd_case {
	const char *line;
	enum pop3_parse_result r;
	enum pop3_verb verb;
	int has_args;
	const char *args;
};

static const struct cmd_case cmd_cases[] = {
	{ "USER alice@example.com", POP3_PARSE_OK, POP3_CMD_USER, 1, "alice@example.com" },
	{ "user alice", POP3_PARSE_OK, POP3_CMD_USER, 1, "alice" },
	{ "PASS pass with spaces ", POP3_PARSE_OK, POP3_CMD_PASS, 1, "pass with spaces " },
	{ "PASS ", POP3_PARSE_OK, POP3_CMD_PASS, 1, "" },
	{ "STAT", POP3_PARSE_OK, POP3_CMD_STAT, 0, "" },
	{ "LIST", POP3_PARSE_OK, POP3_CMD_LIST, 0, "" },
	{ "LIST 1", POP3_PARSE_OK, POP3_CMD_LIST, 1, "1" },
	{ "RETR 12", POP3_PARSE_OK, POP3_CMD_RETR, 1, "12" },
	{ "DELE 3", POP3_PARSE_OK, POP3_CMD_DELE, 1, "3" },
	{ "NOOP", POP3_PARSE_OK, POP3_CMD_NOOP, 0, "" },
	{ "RSET", POP3_PARSE_OK, POP3_CMD_RSET, 0, "" },
	{ "QUIT", POP3_PARSE_OK, POP3_CMD_QUIT, 0, "" },
	{ "quit", POP3_PARSE_OK, POP3_CMD_QUIT, 0, "" },
	{ "TOP 1 10", POP3_PARSE_OK, POP3_CMD_TOP, 1, "1 10" },
	{ "UIDL", POP3_PARSE_OK, POP3_CMD_UIDL, 0, "" },
	{ "CAPA", POP3_PARSE_OK, POP3_CMD_CAPA, 0, "" },
	{ "STLS", POP3_PARSE_OK, POP3_CMD_STLS, 0, "" },
	{ "AUTH PLAIN AGFsaWNlAHNlY3JldA==", POP3_PARSE_OK, POP3_CMD_AUTH, 1,
	  "PLAIN AGFsaWNlAHNlY3JldA==" },
	{ "APOP a b", POP3_PARSE_OK, POP3_CMD_APOP, 1, "a b" },
	{ "XTND", POP3_PARSE_OK, POP3_CMD_UNKNOWN, 0, "" },
	{ "QUITX", POP3_PARSE_OK, POP3_CMD_UNKNOWN, 0, "" },
	{ "QU", POP3_PARSE_OK, POP3_CMD_UNKNOWN, 0, "" },
	{ "GET / HTTP/1.1", POP3_PARSE_OK, POP3_CMD_UNKNOWN, 1, "/ HTTP/1.1" },
	{ " QUIT", POP3_PARSE_OK, POP3_CMD_UNKNOWN, 1, "QUIT" },
	{ "", POP3_PARSE_INVALID, POP3_CMD_UNKNOWN, 0, "" },
	{ "NO\rOP", POP3_PARSE_INVALID, POP3_CMD_UNKNOWN, 0, "" },
};

static void check_cmd(const struct cmd_case *c)
{
	size_t n = strlen(c->line);
	uint8_t *buf = dup_exact(c->line, n);
	struct pop3_cmd cmd;
	enum pop3_parse_result r = pop3_parse_command(span_make(buf, n), &cmd);
	cr_assert_eq(r, c->r, "%s: result %d", c->line, r);
	if (r == POP3_PARSE_OK) {
		cr_assert_eq(cmd.verb, c->verb, "%s: verb %d", c->line, cmd.verb);
		cr_assert_eq(cmd.has_args, c->has_args != 0);
		cr_assert(span_eq(cmd.args, span_cstr(c->args)), "%s: args", c->line);
	}
	free(buf);
}

TABLE_TEST(pop3_parse, command, cmd_cases, check_cmd)

Test(pop3_parse, command_nul)
{
	static const uint8_t l[] = { 'N', 'O', 0, 'P' };
	struct pop3_cmd cmd;
	cr_assert_eq(pop3_parse_command(span_make(l, sizeof(l)), &cmd), POP3_PARSE_INVALID);
}

Test(pop3_parse, verb_names)
{
	cr_assert_str_eq(pop3_verb_str(POP3_CMD_TOP), "TOP");
	cr_assert_str_eq(pop3_verb_str(POP3_CMD_UNKNOWN), "?");
	cr_assert_str_eq(pop3_verb_str((enum pop3_verb)999), "?");
}

/* ---- arguments and numbers ------------------------------------------------ */

Test(pop3_parse, args)
{
	struct span a[2];
	size_t n;
	cr_assert_eq(pop3_parse_args(SPAN_LIT(""), a, 2, &n), POP3_PARSE_OK);
	cr_assert_eq(n, 0);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("1 10"), a, 2, &n), POP3_PARSE_OK);
	cr_assert_eq(n, 2);
	cr_assert(span_eq(a[0], SPAN_LIT("1")) && span_eq(a[1], SPAN_LIT("10")));
	cr_assert_eq(pop3_parse_args(SPAN_LIT("7  "), a, 1, &n), POP3_PARSE_OK);
	cr_assert_eq(n, 1);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("1  2"), a, 2, &n), POP3_PARSE_INVALID);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("1 2 3"), a, 2, &n), POP3_PARSE_INVALID);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("1"), a, 0, &n), POP3_PARSE_INVALID);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("01234567890123456789012345678901234567890"), a,
				     1, &n), POP3_PARSE_TOO_LONG);
	cr_assert_eq(pop3_parse_args(SPAN_LIT("0123456789012345678901234567890123456789"), a,
				     1, &n), POP3_PARSE_OK);
}

Test(pop3_parse, numbers)
{
	uint32_t v;
	cr_assert_eq(pop3_parse_number(SPAN_LIT("1"), &v), 0);
	cr_assert_eq(v, 1);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("0"), &v), 0);
	cr_assert_eq(v, 0);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("007"), &v), 0);
	cr_assert_eq(v, 7);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("4294967295"), &v), 0);
	cr_assert_eq(v, 4294967295u);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("4294967296"), &v), -ERANGE);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("99999999999"), &v), -ERANGE);
	cr_assert_eq(pop3_parse_number(SPAN_LIT(""), &v), -EINVAL);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("-1"), &v), -EINVAL);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("+1"), &v), -EINVAL);
	cr_assert_eq(pop3_parse_number(SPAN_LIT("1a"), &v), -EINVAL);
	cr_assert_eq(pop3_parse_number(SPAN_LIT(" 1"), &v), -EINVAL);
}

/* ---- the body filter -------------------------------------------------------- */

struct body_case {
	const char *in;
	int top;              /* 0: RETR; 1: TOP with lines */
	unsigned lines;
	const char *out;      /* the filtered body, without the final "." */
	int crlf;             /* pop3_body_needs_crlf() at the end */
};

static const struct body_case body_cases[] = {
	{ "", 0, 0, "", 0 },
	{ "a\r\n", 0, 0, "a\r\n", 0 },
	{ "a", 0, 0, "a", 1 },
	{ "a\r\n.\r\n", 0, 0, "a\r\n..\r\n", 0 },
	{ ".\r\n", 0, 0, "..\r\n", 0 },
	{ ".x\r\n..y\r\nz.\r\n", 0, 0, "..x\r\n...y\r\nz.\r\n", 0 },
	{ "S: x\r\n\r\n.body\r\n.", 0, 0, "S: x\r\n\r\n..body\r\n..", 1 },
	/* bare LF (an IMAP APPEND may store it) goes out as CRLF */
	{ "a\n.b\n", 0, 0, "a\r\n..b\r\n", 0 },
	{ "x\n", 0, 0, "x\r\n", 0 },
	{ "\n\n.\n", 0, 0, "\r\n\r\n..\r\n", 0 },
	{ "a\rb\n", 0, 0, "a\rb\r\n", 0 },
	{ "a\r\r\n", 0, 0, "a\r\r\n", 0 },
	{ "mixed\r\nlf\n.\ncr\r", 0, 0, "mixed\r\nlf\r\n..\r\ncr\r", 1 },
	{ "a\r\nb\r", 0, 0, "a\r\nb\r", 1 },
	/* TOP */
	{ "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 1, 0, "H: 1\r\nH: 2\r\n\r\n", 0 },
	{ "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 1, 2, "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\n", 0 },
	{ "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 1, 3,
	  "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 0 },
	{ "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 1, 99,
	  "H: 1\r\nH: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 0 },
	{ "H: 1\r\n\r\n\r\n.\r\nx\r\n", 1, 2, "H: 1\r\n\r\n\r\n..\r\n", 0 },
	{ "H: 1\r\n\r\nno end", 1, 5, "H: 1\r\n\r\nno end", 1 },
	{ "H: only headers", 1, 0, "H: only headers", 1 },
	{ "\r\nbody\r\nmore\r\n", 1, 1, "\r\nbody\r\n", 0 },
	{ "H: 1\n\nl1\nl2\n", 1, 1, "H: 1\r\n\r\nl1\r\n", 0 },
	{ "H: a\r\n \r\nstill header\r\n\r\nb\r\n", 1, 0,
	  "H: a\r\n \r\nstill header\r\n\r\n", 0 },
	{ "H: a\r\n\r\n.\r\n", 1, 1, "H: a\r\n\r\n..\r\n", 0 },
};

/* Feeds in split at cut, through an output buffer of cap bytes. */
static void run_body(const struct body_case *c, size_t cut, size_t cap)
{
	size_t inlen = strlen(c->in), want = strlen(c->out);
	uint8_t *in = dup_exact(c->in, inlen);
	uint8_t *out = malloc(want * 2 + 16);
	uint8_t *ob = malloc(cap);
	size_t olen = 0;
	struct pop3_body b;
	pop3_body_init(&b, c->top, c->lines);
	size_t parts[2][2] = { { 0, cut }, { cut, inlen } };
	for (int p = 0; p < 2 && !b.done; p++) {
		struct span s = span_make(in + parts[p][0], parts[p][1] - parts[p][0]);
		while (s.len && !b.done) {
			size_t n;
			size_t used = pop3_body_filter(&b, s, ob, cap, &n);
			cr_assert(used || n || b.done, "no progress (cap %zu)", cap);
			cr_assert_leq(olen + n, want * 2 + 16);
			memcpy(out + olen, ob, n);
			olen += n;
			s = span_skip(s, used);
		}
	}
	cr_assert_eq(olen, want, "%s (cut %zu cap %zu): got %zu bytes, want %zu", c->in, cut,
		     cap, olen, want);
	cr_assert(memcmp(out, c->out, want) == 0, "%s (cut %zu cap %zu): wrong bytes", c->in,
		  cut, cap);
	cr_assert_eq(pop3_body_needs_crlf(&b), c->crlf != 0, "%s: crlf", c->in);
	free(in);
	free(out);
	free(ob);
}

static void check_body(const struct body_case *c)
{
	size_t inlen = strlen(c->in);
	for (size_t cut = 0; cut <= inlen; cut++)
		run_body(c, cut, 4096);
	for (size_t cap = 2; cap <= 8; cap++)
		run_body(c, inlen / 2, cap);
}

TABLE_TEST(pop3_parse, body, body_cases, check_body)

Test(pop3_parse, body_cap_one_stuffed_dot_waits)
{
	struct pop3_body b;
	uint8_t ob[1];
	size_t n;
	pop3_body_init(&b, false, 0);
	/* A stuffed dot needs two bytes: none are taken with room for one. */
	cr_assert_eq(pop3_body_filter(&b, SPAN_LIT(".x"), ob, 1, &n), 0);
	cr_assert_eq(n, 0);
}
