/* Unit tests for proto/smtp_parse.c.
 *
 * Every table case is also fed split: command lines at every prefix (each
 * one copied to a buffer of exactly that size so ASan catches an over-read),
 * DATA byte by byte, at every 2-way split and with the smallest output
 * array, all compared to the unsplit result. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/smtp_parse.h"

struct bytes {
	const char *p;
	size_t len;
};

/* A string literal that may contain NUL. */
#define B(s) { s, sizeof(s) - 1 }

static int span_is(struct span s, const char *want)
{
	size_t n = strlen(want);
	return s.len == n && (n == 0 || memcmp(s.p, want, n) == 0);
}

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	cr_assert_not_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

/* ---- command lines ----------------------------------------------------- */

struct cmd_case {
	struct bytes in;
	enum smtp_parse_result r;
	enum smtp_verb verb;
	const char *verb_s;	/* NULL: not checked */
	const char *args;	/* NULL: not checked */
	size_t consumed;
	uint8_t bare_lf;
	uint8_t has_args;
};

static const struct cmd_case cmd_cases[] = {
	{ B("HELO mx.example.com\r\n"), SMTP_PARSE_OK, SMTP_CMD_HELO, "HELO", "mx.example.com", 21, 0, 1 },
	{ B("EHLO mx.example.com\r\n"), SMTP_PARSE_OK, SMTP_CMD_EHLO, "EHLO", "mx.example.com", 21, 0, 1 },
	{ B("ehlo x\r\n"), SMTP_PARSE_OK, SMTP_CMD_EHLO, "ehlo", "x", 8, 0, 1 },
	{ B("MAIL FROM:<a@b>\r\n"), SMTP_PARSE_OK, SMTP_CMD_MAIL, "MAIL", "FROM:<a@b>", 17, 0, 1 },
	{ B("mail from:<a@b>\r\n"), SMTP_PARSE_OK, SMTP_CMD_MAIL, "mail", "from:<a@b>", 17, 0, 1 },
	{ B("RCPT TO:<a@b>\r\n"), SMTP_PARSE_OK, SMTP_CMD_RCPT, "RCPT", "TO:<a@b>", 15, 0, 1 },
	{ B("rCpT TO:<a@b>\r\n"), SMTP_PARSE_OK, SMTP_CMD_RCPT, "rCpT", "TO:<a@b>", 15, 0, 1 },
	{ B("DATA\r\n"), SMTP_PARSE_OK, SMTP_CMD_DATA, "DATA", "", 6, 0, 0 },
	{ B("data\r\n"), SMTP_PARSE_OK, SMTP_CMD_DATA, "data", "", 6, 0, 0 },
	{ B("BDAT 100 LAST\r\n"), SMTP_PARSE_OK, SMTP_CMD_BDAT, "BDAT", "100 LAST", 15, 0, 1 },
	{ B("RSET\r\n"), SMTP_PARSE_OK, SMTP_CMD_RSET, "RSET", "", 6, 0, 0 },
	{ B("NOOP\r\n"), SMTP_PARSE_OK, SMTP_CMD_NOOP, "NOOP", "", 6, 0, 0 },
	{ B("NOOP anything\r\n"), SMTP_PARSE_OK, SMTP_CMD_NOOP, "NOOP", "anything", 15, 0, 1 },
	{ B("QUIT\r\n"), SMTP_PARSE_OK, SMTP_CMD_QUIT, "QUIT", "", 6, 0, 0 },
	{ B("Quit\r\n"), SMTP_PARSE_OK, SMTP_CMD_QUIT, "Quit", "", 6, 0, 0 },
	{ B("HELP\r\n"), SMTP_PARSE_OK, SMTP_CMD_HELP, "HELP", "", 6, 0, 0 },
	{ B("VRFY user\r\n"), SMTP_PARSE_OK, SMTP_CMD_VRFY, "VRFY", "user", 11, 0, 1 },
	{ B("EXPN list\r\n"), SMTP_PARSE_OK, SMTP_CMD_EXPN, "EXPN", "list", 11, 0, 1 },
	{ B("STARTTLS\r\n"), SMTP_PARSE_OK, SMTP_CMD_STARTTLS, "STARTTLS", "", 10, 0, 0 },
	{ B("starttls\r\n"), SMTP_PARSE_OK, SMTP_CMD_STARTTLS, "starttls", "", 10, 0, 0 },
	{ B("AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"), SMTP_PARSE_OK, SMTP_CMD_AUTH, "AUTH", "PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm", 41, 0, 1 },
	/* "DATA " keeps its SP: the session rejects arguments to DATA */
	{ B("DATA \r\n"), SMTP_PARSE_OK, SMTP_CMD_DATA, "DATA", "", 7, 0, 1 },
	/* bare LF accepted as CRLF and flagged */
	{ B("QUIT\n"), SMTP_PARSE_OK, SMTP_CMD_QUIT, "QUIT", "", 5, 1, 0 },
	{ B("MAIL FROM:<a@b>\n"), SMTP_PARSE_OK, SMTP_CMD_MAIL, "MAIL", "FROM:<a@b>", 16, 1, 1 },
	/* only the first line */
	{ B("EHLO x\r\nMAIL FROM:<>\r\n"), SMTP_PARSE_OK, SMTP_CMD_EHLO, "EHLO", "x", 8, 0, 1 },
	/* unknown verbs still give the verb */
	{ B("XYZZY foo\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "XYZZY", "foo", 11, 0, 1 },
	{ B("MAILX FROM:<a@b>\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "MAILX", NULL, 18, 0, 1 },
	{ B("\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "", "", 2, 0, 0 },
	{ B(" QUIT\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "", "QUIT", 7, 0, 1 },
	/* HTTP request lines, case-sensitive */
	{ B("GET / HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "GET", NULL, 16, 0, 0 },
	{ B("POST /cgi HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "POST", NULL, 20, 0, 0 },
	{ B("HEAD / HTTP/1.0\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "HEAD", NULL, 17, 0, 0 },
	{ B("PUT /x HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "PUT", NULL, 17, 0, 0 },
	{ B("CONNECT mx:25 HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "CONNECT", NULL, 24, 0, 0 },
	{ B("OPTIONS * HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "OPTIONS", NULL, 20, 0, 0 },
	{ B("DELETE /x HTTP/1.1\n"), SMTP_PARSE_OK, SMTP_CMD_HTTP, "DELETE", NULL, 19, 1, 0 },
	{ B("get / HTTP/1.1\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "get", "/ HTTP/1.1", 16, 0, 1 },
	{ B("GET\r\n"), SMTP_PARSE_OK, SMTP_CMD_UNKNOWN, "GET", "", 5, 0, 0 },
	/* incomplete */
	{ B(""), SMTP_PARSE_AGAIN, SMTP_CMD_UNKNOWN, NULL, NULL, 0, 0, 0 },
	{ B("HELO x"), SMTP_PARSE_AGAIN, SMTP_CMD_UNKNOWN, NULL, NULL, 0, 0, 0 },
	{ B("HELO x\r"), SMTP_PARSE_AGAIN, SMTP_CMD_UNKNOWN, NULL, NULL, 0, 0, 0 },
	/* CR inside, NUL: invalid, the whole line is skipped */
	{ B("NOOP\r\r\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 7, 0, 0 },
	{ B("NO\rOP\r\nQUIT\r\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 7, 0, 0 },
	{ B("\rQUIT\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 6, 1, 0 },
	{ B("NO\0OP\r\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 7, 0, 0 },
	{ B("\0\r\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 3, 0, 0 },
	{ B("MAIL FROM:<a\0@b>\n"), SMTP_PARSE_INVALID, SMTP_CMD_UNKNOWN, NULL, NULL, 17, 1, 0 },
};

/* Checks one command parse of in (limit max) against the expectations.
 * The input must be the whole case. */
static void check_cmd(const struct cmd_case *c, const uint8_t *in, size_t len,
		      size_t max)
{
	struct smtp_cmd cmd;
	size_t consumed = 99999;
	enum smtp_parse_result r =
		smtp_parse_command_max(span_make(in, len), max, &cmd, &consumed);

	cr_assert_eq(r, c->r, "%.*s: %s, want %s", (int)len, in,
		     smtp_parse_result_str(r), smtp_parse_result_str(c->r));
	cr_assert_eq(consumed, c->consumed, "%.*s: consumed %zu", (int)len, in, consumed);
	if (r != SMTP_PARSE_OK && r != SMTP_PARSE_INVALID)
		return;
	cr_assert_eq(cmd.line.bare_lf, c->bare_lf);
	if (r != SMTP_PARSE_OK)
		return;
	cr_assert_eq(cmd.verb, c->verb, "%.*s: verb %s", (int)len, in,
		     smtp_verb_str(cmd.verb));
	if (c->verb_s)
		cr_assert(span_is(cmd.verb_span, c->verb_s));
	if (c->args)
		cr_assert(span_is(cmd.args, c->args), "args '%.*s'",
			  (int)cmd.args.len, cmd.args.p);
	if (c->verb != SMTP_CMD_HTTP)
		cr_assert_eq(cmd.has_args, c->has_args);
	cr_assert_eq(cmd.line.text.len, c->consumed - 1 - !c->bare_lf);
}

/* Every proper prefix must be AGAIN until the line (or the limit) is
 * complete, then give the same result as the whole input. */
static void check_cmd_prefixes(const struct cmd_case *c, size_t max)
{
	size_t decide = c->r == SMTP_PARSE_TOO_LONG ? max : c->consumed;

	for (size_t k = 0; k < c->in.len; k++) {
		uint8_t *buf = dup_exact(c->in.p, k);
		struct smtp_cmd cmd;
		size_t consumed = 99999;
		enum smtp_parse_result r =
			smtp_parse_command_max(span_make(buf, k), max, &cmd, &consumed);
		if (c->r == SMTP_PARSE_AGAIN || k < decide) {
			cr_assert_eq(r, SMTP_PARSE_AGAIN, "prefix %zu: %s", k,
				     smtp_parse_result_str(r));
			cr_assert_eq(consumed, 0);
		} else if (c->r == SMTP_PARSE_TOO_LONG) {
			cr_assert_eq(r, SMTP_PARSE_TOO_LONG);
			cr_assert_eq(cmd.verb, SMTP_CMD_UNKNOWN == c->verb ? cmd.verb : c->verb);
			cr_assert(consumed == k || consumed == c->consumed);
			cr_assert_eq(cmd.line.partial, consumed == k && consumed != c->consumed);
		} else {
			check_cmd(c, buf, k, max);
		}
		free(buf);
	}
	uint8_t *buf = dup_exact(c->in.p, c->in.len);
	check_cmd(c, buf, c->in.len, max);
	free(buf);
}

static void t_command(const struct cmd_case *c)
{
	check_cmd_prefixes(c, SMTP_COMMAND_LINE_MAX);
}

TABLE_TEST(smtp_parse, command, cmd_cases, t_command)

/* A line of n octets in total: "NOOP " + 'a'... + CRLF (or LF). */
static char *make_line(size_t n, int bare)
{
	char *s = malloc(n + 1);
	cr_assert_not_null(s);
	memset(s, 'a', n);
	memcpy(s, "NOOP ", 5);
	if (bare) {
		s[n - 1] = '\n';
	} else {
		s[n - 2] = '\r';
		s[n - 1] = '\n';
	}
	s[n] = '\0';
	return s;
}

Test(smtp_parse, command_limit_exact)
{
	char *ok = make_line(SMTP_COMMAND_LINE_MAX, 0);
	char *okbare = make_line(SMTP_COMMAND_LINE_MAX, 1);
	char *over = make_line(SMTP_COMMAND_LINE_MAX + 1, 0);
	struct cmd_case c1 = { { ok, SMTP_COMMAND_LINE_MAX }, SMTP_PARSE_OK, SMTP_CMD_NOOP,
			       "NOOP", NULL, SMTP_COMMAND_LINE_MAX, 0, 1 };
	struct cmd_case c2 = { { okbare, SMTP_COMMAND_LINE_MAX }, SMTP_PARSE_OK, SMTP_CMD_NOOP,
			       "NOOP", NULL, SMTP_COMMAND_LINE_MAX, 1, 1 };
	struct cmd_case c3 = { { over, SMTP_COMMAND_LINE_MAX + 1 }, SMTP_PARSE_TOO_LONG,
			       SMTP_CMD_NOOP, NULL, NULL, SMTP_COMMAND_LINE_MAX + 1, 0, 0 };
	check_cmd_prefixes(&c1, SMTP_COMMAND_LINE_MAX);
	check_cmd_prefixes(&c2, SMTP_COMMAND_LINE_MAX);
	check_cmd_prefixes(&c3, SMTP_COMMAND_LINE_MAX);
	free(ok);
	free(okbare);
	free(over);
}

Test(smtp_parse, command_too_long_resync)
{
	/* 600 octets without LF, then the rest of the line and a NOOP. */
	size_t n = 600;
	char *s = malloc(n + 32);
	memset(s, 'x', n);
	memcpy(s, "AUTH PLAIN ", 11);
	memcpy(s + n, "yy\r\nNOOP\r\n", 10);
	struct smtp_cmd cmd;
	size_t consumed;

	/* Decided as soon as 512 octets are there, before the LF. */
	cr_assert_eq(smtp_parse_command(span_make(s, 511), &cmd, &consumed), SMTP_PARSE_AGAIN);
	cr_assert_eq(smtp_parse_command(span_make(s, 512), &cmd, &consumed), SMTP_PARSE_TOO_LONG);
	cr_assert_eq(consumed, 512);
	cr_assert(cmd.line.partial);
	cr_assert_eq(cmd.verb, SMTP_CMD_AUTH);
	/* The session keeps skipping to the LF... */
	size_t skip;
	cr_assert_eq(smtp_skip_line(span_make(s + 512, n - 512), &skip), SMTP_PARSE_AGAIN);
	cr_assert_eq(skip, n - 512);
	cr_assert_eq(smtp_skip_line(span_make(s + n, 10), &skip), SMTP_PARSE_OK);
	cr_assert_eq(skip, 4);
	/* ...or, with the whole line at hand, skips it in one go. */
	cr_assert_eq(smtp_parse_command(span_make(s, n + 10), &cmd, &consumed), SMTP_PARSE_TOO_LONG);
	cr_assert_eq(consumed, n + 4);
	cr_assert(!cmd.line.partial);
	cr_assert_eq(smtp_parse_command(span_make(s + consumed, 6), &cmd, &consumed), SMTP_PARSE_OK);
	cr_assert_eq(cmd.verb, SMTP_CMD_NOOP);
	/* AUTH is retried with the larger limit. */
	cr_assert_eq(smtp_parse_command_max(span_make(s, n + 10), SMTP_AUTH_LINE_MAX, &cmd, &consumed),
		     SMTP_PARSE_OK);
	cr_assert_eq(consumed, n + 4);
	cr_assert_eq(cmd.verb, SMTP_CMD_AUTH);
	cr_assert_eq(cmd.args.len, n + 2 - 5);
	/* An HTTP line too long is still recognised. */
	memcpy(s, "GET /", 5);
	cr_assert_eq(smtp_parse_command(span_make(s, n), &cmd, &consumed), SMTP_PARSE_TOO_LONG);
	cr_assert_eq(cmd.verb, SMTP_CMD_HTTP);
	/* No SP in the first 512 octets: no verb. */
	memset(s, 'x', n);
	cr_assert_eq(smtp_parse_command(span_make(s, n), &cmd, &consumed), SMTP_PARSE_TOO_LONG);
	cr_assert_eq(cmd.verb, SMTP_CMD_UNKNOWN);
	cr_assert_eq(cmd.verb_span.len, 0);
	free(s);
}

Test(smtp_parse, sasl_response_line)
{
	struct smtp_line line;
	size_t consumed;

	cr_assert_eq(smtp_parse_line(SPAN_LIT("dGVzdA==\r\n"), SMTP_AUTH_LINE_MAX, &line, &consumed),
		     SMTP_PARSE_OK);
	cr_assert(span_is(line.text, "dGVzdA=="));
	cr_assert_eq(consumed, 10);
	cr_assert_eq(smtp_parse_line(SPAN_LIT("*\n"), SMTP_AUTH_LINE_MAX, &line, &consumed),
		     SMTP_PARSE_OK);
	cr_assert(span_is(line.text, "*"));
	cr_assert(line.bare_lf);
}

Test(smtp_parse, names)
{
	cr_assert_str_eq(smtp_parse_result_str(SMTP_PARSE_TOO_LONG), "too long");
	cr_assert_str_eq(smtp_verb_str(SMTP_CMD_STARTTLS), "STARTTLS");
	cr_assert_str_eq(smtp_verb_str(SMTP_CMD_HTTP), "http");
	cr_assert_str_eq(smtp_path_reason_str(SMTP_PATH_ERR_LOCAL_TOO_LONG), "local part too long");
	cr_assert_str_eq(smtp_data_result_str(SMTP_DATA_END), "end");
}

/* ---- paths ------------------------------------------------------------- */

struct path_case {
	enum smtp_verb kind;
	struct bytes args;
	enum smtp_path_reason reason;	/* SMTP_PATH_OK: parse succeeds */
	unsigned flags;			/* checked when OK */
	const char *local;		/* checked when OK and non-NULL */
	const char *domain;
	const char *route;
	size_t nparams;
	const char *kw0, *val0;		/* first parameter, when nparams */
};

#define F(x) SMTP_PATH_##x
static const struct path_case path_cases[] = {
	{ SMTP_CMD_MAIL, B("FROM:<user@example.com>"), SMTP_PATH_OK, 0, "user", "example.com", "", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("from:<user@example.com>"), SMTP_PATH_OK, 0, "user", "example.com", "", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM: <user@example.com>"), SMTP_PATH_OK, F(SPACE), "user", "example.com", "", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<first.last+tag@sub.example.co.uk>"), SMTP_PATH_OK, 0, "first.last+tag", "sub.example.co.uk", "", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<>"), SMTP_PATH_OK, F(NULL), "", "", "", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<> SIZE=100 BODY=8BITMIME"), SMTP_PATH_OK, F(NULL), "", "", "", 2, "SIZE", "100" },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> SMTPUTF8"), SMTP_PATH_OK, 0, "a", "b", "", 1, "SMTPUTF8", "" },
	{ SMTP_CMD_MAIL, B("FROM:<a@b>  SIZE=1   RET=HDRS  "), SMTP_PATH_OK, 0, "a", "b", "", 2, "SIZE", "1" },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> "), SMTP_PATH_OK, 0, "a", "b", "", 0, NULL, NULL },
	/* relay tricks: accepted, flagged */
	{ SMTP_CMD_RCPT, B("TO:<user%other@local>"), SMTP_PATH_OK, F(PERCENT), "user%other", "local", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<a!b@local>"), SMTP_PATH_OK, F(BANG), "a!b", "local", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<@relay:user@remote>"), SMTP_PATH_OK, F(ROUTE), "user", "remote", "@relay", 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@a,@b.example:user@c>"), SMTP_PATH_OK, F(ROUTE), "user", "c", "@a,@b.example", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<\"user@remote\"@local>"), SMTP_PATH_OK, F(QUOTED) | F(QUOTED_AT), "\"user@remote\"", "local", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<\"a\\\"b c\"@x>"), SMTP_PATH_OK, F(QUOTED), "\"a\\\"b c\"", "x", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<\"a%b\\@c\"@x>"), SMTP_PATH_OK, F(QUOTED) | F(QUOTED_AT) | F(PERCENT), NULL, "x", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<\"\"@x>"), SMTP_PATH_OK, F(QUOTED), "\"\"", "x", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[192.0.2.1]>"), SMTP_PATH_OK, F(LITERAL), "user", "[192.0.2.1]", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:2001:db8::1]>"), SMTP_PATH_OK, F(LITERAL) | F(IPV6), "user", "[IPv6:2001:db8::1]", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[ipv6:::FFFF:192.0.2.1]>"), SMTP_PATH_OK, F(LITERAL) | F(IPV6), NULL, NULL, "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1:2:3:4:5:6:7:8]>"), SMTP_PATH_OK, F(LITERAL) | F(IPV6), NULL, NULL, "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1:2:3:4:5:6:1.2.3.4]>"), SMTP_PATH_OK, F(LITERAL) | F(IPV6), NULL, NULL, "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:::]>"), SMTP_PATH_OK, F(LITERAL) | F(IPV6), NULL, NULL, "", 0, NULL, NULL },
	/* SMTPUTF8 (RFC 6531) */
	{ SMTP_CMD_MAIL, B("FROM:<us\xc3\xa9r@ex\xc3\xa4mple.com> SMTPUTF8"), SMTP_PATH_OK, F(UTF8), "us\xc3\xa9r", "ex\xc3\xa4mple.com", "", 1, "SMTPUTF8", "" },
	{ SMTP_CMD_RCPT, B("TO:<\"\xe2\x82\xac\"@x>"), SMTP_PATH_OK, F(UTF8) | F(QUOTED), NULL, "x", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<a@b> X=\xc3\xa9"), SMTP_PATH_OK, F(PARAM_UTF8), "a", "b", "", 1, "X", "\xc3\xa9" },
	/* Postmaster */
	{ SMTP_CMD_RCPT, B("TO:<Postmaster>"), SMTP_PATH_OK, F(POSTMASTER), "Postmaster", "", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("to:<POSTMASTER> NOTIFY=NEVER"), SMTP_PATH_OK, F(POSTMASTER), "POSTMASTER", "", "", 1, "NOTIFY", "NEVER" },
	{ SMTP_CMD_RCPT, B("TO:<postmaster@example.com>"), SMTP_PATH_OK, 0, "postmaster", "example.com", "", 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<a@b> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b"), SMTP_PATH_OK, 0, "a", "b", "", 2, "NOTIFY", "SUCCESS,FAILURE" },
	/* errors */
	{ SMTP_CMD_HELO, B("FROM:<a@b>"), SMTP_PATH_ERR_KIND, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("TO:<a@b>"), SMTP_PATH_ERR_PREFIX, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("FROM:<a@b>"), SMTP_PATH_ERR_PREFIX, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM<a@b>"), SMTP_PATH_ERR_PREFIX, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B(""), SMTP_PATH_ERR_PREFIX, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:user@example.com"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<user@example.com"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b>>"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<>"), SMTP_PATH_ERR_NULL_RCPT, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<Postmaster>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<@relay:Postmaster>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<Postmaster x>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@a:@b:user@c>"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@a;user@c>"), SMTP_PATH_ERR_ROUTE, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@:user@c>"), SMTP_PATH_ERR_ROUTE, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@a,user@c>"), SMTP_PATH_ERR_ROUTE, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a..b@x>"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<.a@x>"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a.@x>"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<@x>"), SMTP_PATH_ERR_ROUTE, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a b@x>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<\"ab@x>"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<\"a\\"), SMTP_PATH_ERR_LOCAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@-x.com>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@x-.com>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@x..com>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@x.com.>"), SMTP_PATH_ERR_DOMAIN, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@x_y.com>"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b@c>"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[256.1.1.1]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[1.2.3]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[1.2.3.4.5]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[1.2.3.4]x>"), SMTP_PATH_ERR_BRACKETS, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[1.2.3.4>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[x-tag:foo]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1:2:3:4:5:6:7:8:9]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1:2:3:4:5:6:7]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1::2::3]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:12345::1]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6::1:]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6::1]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_RCPT, B("TO:<user@[IPv6:1.2.3.4]>"), SMTP_PATH_ERR_LITERAL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	/* 8-bit that is not UTF-8 */
	{ SMTP_CMD_MAIL, B("FROM:<us\xff@x>"), SMTP_PATH_ERR_UTF8, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<u@x\xc3>"), SMTP_PATH_ERR_UTF8, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<\xc0\xaf@x>"), SMTP_PATH_ERR_UTF8, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<\xed\xa0\x80@x>"), SMTP_PATH_ERR_UTF8, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> X=\xff"), SMTP_PATH_ERR_UTF8, 0, NULL, NULL, NULL, 0, NULL, NULL },
	/* control octets anywhere */
	{ SMTP_CMD_MAIL, B("FROM:<a@b\r>"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a\n@b>"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b>\0"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<\"a\x01\"@b>"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> SIZE=1\t"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b\x7f>"), SMTP_PATH_ERR_CONTROL, 0, NULL, NULL, NULL, 0, NULL, NULL },
	/* parameters */
	{ SMTP_CMD_MAIL, B("FROM:<a@b>SIZE=1"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> =1"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> -X"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> SIZE="), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> SIZE=1=2"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> SI_ZE=1"), SMTP_PATH_ERR_PARAM, 0, NULL, NULL, NULL, 0, NULL, NULL },
	{ SMTP_CMD_MAIL, B("FROM:<a@b> A B C D E"), SMTP_PATH_ERR_TOO_MANY_PARAMS, 0, NULL, NULL, NULL, 0, NULL, NULL },
};

#define MAX_PARAMS 4

static void check_path(const struct path_case *c, struct span args)
{
	struct smtp_path path;
	struct smtp_param params[MAX_PARAMS];
	size_t np = 99;
	enum smtp_parse_result r =
		smtp_parse_path(args, c->kind, &path, params, MAX_PARAMS, &np);

	cr_assert_eq(path.reason, c->reason, "%.*s: reason '%s', want '%s'",
		     (int)args.len, args.p, smtp_path_reason_str(path.reason),
		     smtp_path_reason_str(c->reason));
	if (c->reason != SMTP_PATH_OK) {
		cr_assert_eq(r, SMTP_PARSE_INVALID);
		return;
	}
	cr_assert_eq(r, SMTP_PARSE_OK);
	cr_assert_eq(path.flags, c->flags, "%.*s: flags %#x", (int)args.len,
		     args.p, path.flags);
	if (c->local)
		cr_assert(span_is(path.local, c->local), "local '%.*s'",
			  (int)path.local.len, path.local.p);
	if (c->domain)
		cr_assert(span_is(path.domain, c->domain), "domain '%.*s'",
			  (int)path.domain.len, path.domain.p);
	if (c->route)
		cr_assert(span_is(path.route, c->route));
	/* mailbox is local@domain, path is route:mailbox */
	if (!(path.flags & (SMTP_PATH_NULL | SMTP_PATH_POSTMASTER)))
		cr_assert_eq(path.mailbox.len, path.local.len + 1 + path.domain.len);
	cr_assert_eq(path.path.len,
		     path.route.len + !!path.route.len + path.mailbox.len);
	cr_assert_eq(np, c->nparams);
	if (np) {
		cr_assert(span_is(params[0].keyword, c->kw0));
		cr_assert(span_is(params[0].value, c->val0));
		cr_assert_eq(params[0].has_value, c->val0[0] != '\0');
	}
}

/* The arguments arrive inside a command line: feed "MAIL <args>\r\n" at
 * every prefix through the command parser, then parse its args; and parse
 * every truncation of the args alone (exact-size copies for ASan). */
static void t_path(const struct path_case *c)
{
	size_t ll = 5 + c->args.len + 2;
	uint8_t *line = malloc(ll);
	memcpy(line, "MAIL ", 5);
	memcpy(line + 5, c->args.p, c->args.len);
	memcpy(line + 5 + c->args.len, "\r\n", 2);
	int has_ctl = memchr(c->args.p, '\r', c->args.len) ||
		      memchr(c->args.p, '\n', c->args.len) ||
		      memchr(c->args.p, '\0', c->args.len);

	for (size_t k = 0; !has_ctl && k <= ll; k++) {
		uint8_t *buf = dup_exact(line, k);
		struct smtp_cmd cmd;
		size_t consumed;
		enum smtp_parse_result r =
			smtp_parse_command(span_make(buf, k), &cmd, &consumed);
		if (k < ll) {
			cr_assert_eq(r, SMTP_PARSE_AGAIN);
		} else {
			cr_assert_eq(r, SMTP_PARSE_OK);
			cr_assert_eq(cmd.verb, SMTP_CMD_MAIL);
			check_path(c, cmd.args);
		}
		free(buf);
	}
	free(line);
	for (size_t k = 0; k <= c->args.len; k++) {
		uint8_t *buf = dup_exact(c->args.p, k);
		struct smtp_path path;
		struct smtp_param params[MAX_PARAMS];
		size_t np;
		enum smtp_parse_result r = smtp_parse_path(span_make(buf, k), c->kind,
							   &path, params, MAX_PARAMS, &np);
		cr_assert(r == SMTP_PARSE_OK || r == SMTP_PARSE_INVALID);
		cr_assert_eq(r == SMTP_PARSE_OK, path.reason == SMTP_PATH_OK);
		if (k == c->args.len)
			check_path(c, span_make(buf, k));
		free(buf);
	}
}

TABLE_TEST(smtp_parse, path, path_cases, t_path)

/* "<" local "@" domain ">" of the given lengths; domain labels of at most
 * label_max octets. */
static size_t build_path(char *out, size_t local_len, size_t domain_len,
			 size_t label_max)
{
	size_t n = 0;
	memcpy(out, "FROM:<", 6);
	n = 6;
	memset(out + n, 'l', local_len);
	n += local_len;
	out[n++] = '@';
	for (size_t d = 0, lab = 0; d < domain_len; d++) {
		/* a '.' after every label_max octets, never first or last */
		if (lab == label_max && d + 1 < domain_len) {
			out[n++] = '.';
			lab = 0;
		} else {
			out[n++] = 'd';
			lab++;
		}
	}
	out[n++] = '>';
	return n;
}

struct limit_case {
	size_t local_len, domain_len, label_max;
	enum smtp_path_reason reason;
};

static const struct limit_case limit_cases[] = {
	{ 64, 10, 63, SMTP_PATH_OK },
	{ 65, 10, 63, SMTP_PATH_ERR_LOCAL_TOO_LONG },
	{ 1, 63, 63, SMTP_PATH_OK },
	{ 1, 64, 64, SMTP_PATH_ERR_DOMAIN_TOO_LONG },	/* one 64-octet label */
	/* path = "<" local "@" domain ">": local + domain + 3 octets, so a
	 * domain of 255 never fits in a path; the domain check comes first */
	{ 1, 256, 63, SMTP_PATH_ERR_DOMAIN_TOO_LONG },
	{ 1, 255, 63, SMTP_PATH_ERR_PATH_TOO_LONG },
	{ 1, 252, 63, SMTP_PATH_OK },			/* 256 */
	{ 2, 252, 63, SMTP_PATH_ERR_PATH_TOO_LONG },	/* 257 */
	{ 64, 189, 63, SMTP_PATH_OK },			/* 256 */
	{ 64, 190, 63, SMTP_PATH_ERR_PATH_TOO_LONG },	/* 257 */
	{ 65, 200, 63, SMTP_PATH_ERR_LOCAL_TOO_LONG },	/* local before path */
};

static void t_path_limits(const struct limit_case *c)
{
	char buf[1024];
	size_t n = build_path(buf, c->local_len, c->domain_len, c->label_max);
	struct smtp_path path;
	size_t np;

	smtp_parse_path(span_make(buf, n), SMTP_CMD_MAIL, &path, NULL, 0, &np);
	cr_assert_eq(path.reason, c->reason, "local %zu domain %zu: %s",
		     c->local_len, c->domain_len, smtp_path_reason_str(path.reason));
	if (c->reason == SMTP_PATH_OK) {
		cr_assert_eq(path.local.len, c->local_len);
		cr_assert_eq(path.domain.len, c->domain_len);
	}
}

TABLE_TEST(smtp_parse, path_limits, limit_cases, t_path_limits)

/* ---- ESMTP parameter values -------------------------------------------- */

enum pfn { P_SIZE, P_BODY, P_UTF8, P_RET, P_ENVID, P_NOTIFY, P_ORCPT, P_AUTH };

struct param_case {
	enum pfn fn;
	const char *kw;
	const char *value;	/* NULL: no value */
	enum smtp_parse_result r;
	uint64_t num;		/* SIZE, BODY, RET, NOTIFY result */
};

static const struct param_case param_cases[] = {
	{ P_SIZE, "SIZE", "0", SMTP_PARSE_OK, 0 },
	{ P_SIZE, "size", "1048576", SMTP_PARSE_OK, 1048576 },
	{ P_SIZE, "SIZE", "000000000000000000000000000042", SMTP_PARSE_OK, 42 },
	{ P_SIZE, "SIZE", "18446744073709551615", SMTP_PARSE_OK, UINT64_MAX },
	{ P_SIZE, "SIZE", "18446744073709551616", SMTP_PARSE_TOO_LONG, 0 },
	{ P_SIZE, "SIZE", "99999999999999999999", SMTP_PARSE_TOO_LONG, 0 },
	{ P_SIZE, "SIZE", "999999999999999999999999999999", SMTP_PARSE_TOO_LONG, 0 },
	{ P_SIZE, "SIZE", "99999999999999999999x", SMTP_PARSE_INVALID, 0 },
	{ P_SIZE, "SIZE", "1x", SMTP_PARSE_INVALID, 0 },
	{ P_SIZE, "SIZE", "-1", SMTP_PARSE_INVALID, 0 },
	{ P_SIZE, "SIZE", "+1", SMTP_PARSE_INVALID, 0 },
	{ P_SIZE, "SIZE", NULL, SMTP_PARSE_INVALID, 0 },
	{ P_BODY, "BODY", "7BIT", SMTP_PARSE_OK, SMTP_BODY_7BIT },
	{ P_BODY, "BODY", "8bitmime", SMTP_PARSE_OK, SMTP_BODY_8BITMIME },
	{ P_BODY, "BODY", "BINARYMIME", SMTP_PARSE_OK, SMTP_BODY_BINARYMIME },
	{ P_BODY, "BODY", "8BIT", SMTP_PARSE_INVALID, 0 },
	{ P_BODY, "BODY", NULL, SMTP_PARSE_INVALID, 0 },
	{ P_UTF8, "SMTPUTF8", NULL, SMTP_PARSE_OK, 0 },
	{ P_UTF8, "SMTPUTF8", "yes", SMTP_PARSE_INVALID, 0 },
	{ P_RET, "RET", "FULL", SMTP_PARSE_OK, SMTP_RET_FULL },
	{ P_RET, "RET", "hdrs", SMTP_PARSE_OK, SMTP_RET_HDRS },
	{ P_RET, "RET", "NONE", SMTP_PARSE_INVALID, 0 },
	{ P_ENVID, "ENVID", "QQ314159", SMTP_PARSE_OK, 0 },
	{ P_ENVID, "ENVID", "a+2Bb+3Dc", SMTP_PARSE_OK, 0 },
	{ P_ENVID, "ENVID", "a+0Db", SMTP_PARSE_INVALID, 0 },
	{ P_ENVID, "ENVID", "a+2", SMTP_PARSE_INVALID, 0 },
	{ P_ENVID, "ENVID", "01234567890123456789012345678901234567890123456789"
			    "01234567890123456789012345678901234567890123456789", SMTP_PARSE_OK, 0 },
	{ P_ENVID, "ENVID", "01234567890123456789012345678901234567890123456789"
			    "012345678901234567890123456789012345678901234567890", SMTP_PARSE_INVALID, 0 },
	{ P_ENVID, "ENVID", NULL, SMTP_PARSE_INVALID, 0 },
	{ P_NOTIFY, "NOTIFY", "NEVER", SMTP_PARSE_OK, SMTP_NOTIFY_NEVER },
	{ P_NOTIFY, "NOTIFY", "SUCCESS", SMTP_PARSE_OK, SMTP_NOTIFY_SUCCESS },
	{ P_NOTIFY, "NOTIFY", "success,Failure,DELAY", SMTP_PARSE_OK,
	  SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY },
	{ P_NOTIFY, "NOTIFY", "DELAY,FAILURE", SMTP_PARSE_OK, SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY },
	{ P_NOTIFY, "NOTIFY", "NEVER,SUCCESS", SMTP_PARSE_INVALID, 0 },
	{ P_NOTIFY, "NOTIFY", "SUCCESS,SUCCESS", SMTP_PARSE_INVALID, 0 },
	{ P_NOTIFY, "NOTIFY", "SUCCESS,", SMTP_PARSE_INVALID, 0 },
	{ P_NOTIFY, "NOTIFY", ",SUCCESS", SMTP_PARSE_INVALID, 0 },
	{ P_NOTIFY, "NOTIFY", "ALWAYS", SMTP_PARSE_INVALID, 0 },
	{ P_ORCPT, "ORCPT", "rfc822;a+40b@example.com", SMTP_PARSE_OK, 0 },
	{ P_ORCPT, "ORCPT", "rfc822;", SMTP_PARSE_INVALID, 0 },
	{ P_ORCPT, "ORCPT", ";a@b", SMTP_PARSE_INVALID, 0 },
	{ P_ORCPT, "ORCPT", "a@b", SMTP_PARSE_INVALID, 0 },
	{ P_ORCPT, "ORCPT", "rfc822;a+0Ab", SMTP_PARSE_INVALID, 0 },
	{ P_ORCPT, "ORCPT", "rfc(822;a@b", SMTP_PARSE_INVALID, 0 },
	{ P_AUTH, "AUTH", "<>", SMTP_PARSE_OK, 0 },
	{ P_AUTH, "AUTH", "e+3Dmc2@example.com", SMTP_PARSE_OK, 0 },
	{ P_AUTH, "AUTH", "a+00", SMTP_PARSE_INVALID, 0 },
	{ P_AUTH, "AUTH", NULL, SMTP_PARSE_INVALID, 0 },
};

static void t_params(const struct param_case *c)
{
	struct smtp_param p = { span_cstr(c->kw), c->value ? span_cstr(c->value) : (struct span){ NULL, 0 },
				c->value != NULL };
	enum smtp_parse_result r = SMTP_PARSE_AGAIN;
	uint64_t num = 0;
	static const enum smtp_param_kind kinds[] = {
		SMTP_PARAM_SIZE, SMTP_PARAM_BODY, SMTP_PARAM_SMTPUTF8, SMTP_PARAM_RET,
		SMTP_PARAM_ENVID, SMTP_PARAM_NOTIFY, SMTP_PARAM_ORCPT, SMTP_PARAM_AUTH,
	};

	cr_assert_eq(smtp_param_kind(p.keyword), kinds[c->fn]);
	switch (c->fn) {
	case P_SIZE:
		r = smtp_param_size(&p, &num);
		break;
	case P_BODY: {
		enum smtp_body b;
		r = smtp_param_body(&p, &b);
		num = b;
		break;
	}
	case P_UTF8:
		r = smtp_param_smtputf8(&p);
		break;
	case P_RET: {
		enum smtp_ret ret;
		r = smtp_param_ret(&p, &ret);
		num = ret;
		break;
	}
	case P_ENVID:
		r = smtp_param_envid(&p);
		break;
	case P_NOTIFY: {
		unsigned bits;
		r = smtp_param_notify(&p, &bits);
		num = bits;
		break;
	}
	case P_ORCPT: {
		struct span type, addr;
		r = smtp_param_orcpt(&p, &type, &addr);
		if (r == SMTP_PARSE_OK) {
			cr_assert(span_is(type, "rfc822"));
			cr_assert(span_is(addr, "a+40b@example.com"));
		}
		break;
	}
	case P_AUTH:
		r = smtp_param_auth(&p);
		break;
	}
	cr_assert_eq(r, c->r, "%s=%s: %s", c->kw, c->value ? c->value : "(none)",
		     smtp_parse_result_str(r));
	cr_assert_eq(num, c->num);
}

TABLE_TEST(smtp_parse, params, param_cases, t_params)

Test(smtp_parse, param_kind_unknown)
{
	cr_assert_eq(smtp_param_kind(SPAN_LIT("MT-PRIORITY")), SMTP_PARAM_UNKNOWN);
	cr_assert_eq(smtp_param_kind(SPAN_LIT("SIZ")), SMTP_PARAM_UNKNOWN);
	cr_assert_eq(smtp_param_kind(SPAN_LIT("body")), SMTP_PARAM_BODY);
}

/* ---- xtext ------------------------------------------------------------- */

struct xtext_case {
	const char *in;
	enum smtp_parse_result r;
	const char *out;
};

static const struct xtext_case xtext_cases[] = {
	{ "", SMTP_PARSE_OK, "" },
	{ "abc", SMTP_PARSE_OK, "abc" },
	{ "a+2Bb", SMTP_PARSE_OK, "a+b" },
	{ "+3D", SMTP_PARSE_OK, "=" },
	{ "+20", SMTP_PARSE_OK, " " },
	{ "+2b", SMTP_PARSE_OK, "+" },		/* lower case tolerated */
	{ "+7E", SMTP_PARSE_OK, "~" },
	{ "~!", SMTP_PARSE_OK, "~!" },
	{ "+0D", SMTP_PARSE_INVALID, NULL },	/* CR */
	{ "+0A", SMTP_PARSE_INVALID, NULL },	/* LF */
	{ "+00", SMTP_PARSE_INVALID, NULL },	/* NUL */
	{ "+09", SMTP_PARSE_INVALID, NULL },	/* TAB */
	{ "+1F", SMTP_PARSE_INVALID, NULL },
	{ "+7F", SMTP_PARSE_INVALID, NULL },	/* DEL */
	{ "+80", SMTP_PARSE_INVALID, NULL },
	{ "+FF", SMTP_PARSE_INVALID, NULL },
	{ "+", SMTP_PARSE_INVALID, NULL },
	{ "+2", SMTP_PARSE_INVALID, NULL },
	{ "a+", SMTP_PARSE_INVALID, NULL },
	{ "+G0", SMTP_PARSE_INVALID, NULL },
	{ "+0G", SMTP_PARSE_INVALID, NULL },
	{ "a=b", SMTP_PARSE_INVALID, NULL },
	{ "a b", SMTP_PARSE_INVALID, NULL },
	{ "a\x7f", SMTP_PARSE_INVALID, NULL },
	{ "\xc3\xa9", SMTP_PARSE_INVALID, NULL },
};

static void t_xtext(const struct xtext_case *c)
{
	uint8_t out[64];
	size_t len = 99;
	struct span in = span_cstr(c->in);

	cr_assert_eq(smtp_xtext_decode(in, out, sizeof(out), &len), c->r, "%s", c->in);
	if (c->r == SMTP_PARSE_OK) {
		cr_assert(span_is(span_make(out, len), c->out));
		/* validate-only mode agrees; a buffer one short is TOO_LONG */
		cr_assert_eq(smtp_xtext_decode(in, NULL, 0, &len), SMTP_PARSE_OK);
		cr_assert_eq(len, strlen(c->out));
		if (len > 0)
			cr_assert_eq(smtp_xtext_decode(in, out, len - 1, &len),
				     SMTP_PARSE_TOO_LONG);
	}
	for (size_t k = 0; k < in.len; k++) {
		uint8_t *buf = dup_exact(in.p, k);
		smtp_xtext_decode(span_make(buf, k), out, sizeof(out), &len);
		free(buf);
	}
}

TABLE_TEST(smtp_parse, xtext, xtext_cases, t_xtext)

/* ---- AUTH and BDAT ----------------------------------------------------- */

struct auth_case {
	const char *args;
	enum smtp_parse_result r;
	const char *mech;
	int has_initial;
	const char *initial;
};

static const struct auth_case auth_cases[] = {
	{ "PLAIN", SMTP_PARSE_OK, "PLAIN", 0, "" },
	{ "login", SMTP_PARSE_OK, "login", 0, "" },
	{ "PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm", SMTP_PARSE_OK, "PLAIN", 1, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm" },
	{ "PLAIN dGVzdA==", SMTP_PARSE_OK, "PLAIN", 1, "dGVzdA==" },
	{ "PLAIN =", SMTP_PARSE_OK, "PLAIN", 1, "" },
	{ "SCRAM-SHA-256 biwsbj11c2VyLHI9", SMTP_PARSE_OK, "SCRAM-SHA-256", 1, "biwsbj11c2VyLHI9" },
	{ "X_MECH_1", SMTP_PARSE_OK, "X_MECH_1", 0, "" },
	{ "ABCDEFGHIJKLMNOPQRST", SMTP_PARSE_OK, "ABCDEFGHIJKLMNOPQRST", 0, "" },
	{ "ABCDEFGHIJKLMNOPQRSTU", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ " PLAIN", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLAIN ", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLAIN  dGVzdA==", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLAIN dGVz dA==", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLAIN dGVzdA== ", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLA!N", SMTP_PARSE_INVALID, NULL, 0, NULL },
	{ "PLAIN *", SMTP_PARSE_INVALID, NULL, 0, NULL },
};

static void t_auth(const struct auth_case *c)
{
	struct span mech, initial;
	int has;
	uint8_t *buf = dup_exact(c->args, strlen(c->args));

	cr_assert_eq(smtp_parse_auth(span_make(buf, strlen(c->args)), &mech, &initial, &has),
		     c->r, "%s", c->args);
	if (c->r == SMTP_PARSE_OK) {
		cr_assert(span_is(mech, c->mech));
		cr_assert_eq(has, c->has_initial);
		cr_assert(span_is(initial, c->initial));
	}
	free(buf);
}

TABLE_TEST(smtp_parse, auth, auth_cases, t_auth)

struct bdat_case {
	const char *args;
	enum smtp_parse_result r;
	uint64_t size;
	int last;
};

static const struct bdat_case bdat_cases[] = {
	{ "0", SMTP_PARSE_OK, 0, 0 },
	{ "100", SMTP_PARSE_OK, 100, 0 },
	{ "100 LAST", SMTP_PARSE_OK, 100, 1 },
	{ "0 last", SMTP_PARSE_OK, 0, 1 },
	{ "18446744073709551615 LAST", SMTP_PARSE_OK, UINT64_MAX, 1 },
	{ "18446744073709551616", SMTP_PARSE_TOO_LONG, 0, 0 },
	{ "99999999999999999999 LAST", SMTP_PARSE_TOO_LONG, 0, 0 },
	{ "", SMTP_PARSE_INVALID, 0, 0 },
	{ "LAST", SMTP_PARSE_INVALID, 0, 0 },
	{ " 100", SMTP_PARSE_INVALID, 0, 0 },
	{ "100 ", SMTP_PARSE_INVALID, 0, 0 },
	{ "100  LAST", SMTP_PARSE_INVALID, 0, 0 },
	{ "100 LAST ", SMTP_PARSE_INVALID, 0, 0 },
	{ "100 LASTX", SMTP_PARSE_INVALID, 0, 0 },
	{ "100 MORE", SMTP_PARSE_INVALID, 0, 0 },
	{ "-1", SMTP_PARSE_INVALID, 0, 0 },
	{ "1e3", SMTP_PARSE_INVALID, 0, 0 },
};

static void t_bdat(const struct bdat_case *c)
{
	uint64_t size = 7;
	int last = 7;
	uint8_t *buf = dup_exact(c->args, strlen(c->args));

	cr_assert_eq(smtp_parse_bdat(span_make(buf, strlen(c->args)), &size, &last), c->r,
		     "%s", c->args);
	cr_assert_eq(size, c->size);
	cr_assert_eq(last, c->last);
	free(buf);
}

TABLE_TEST(smtp_parse, bdat, bdat_cases, t_bdat)

/* ---- DATA -------------------------------------------------------------- */

struct data_result {
	enum smtp_data_result r;	/* MORE or END */
	size_t end;			/* consumed up to END */
	uint8_t *out;
	size_t outlen;
	struct smtp_data_state st;
	size_t calls;
};

/* Feeds in cut at cuts[0..ncuts) (increasing offsets), each piece in its
 * own exact-size buffer freed right after its spans are copied out, with
 * out arrays of max_out entries. */
static void run_data(const uint8_t *in, size_t len, uint8_t policy,
		     const size_t *cuts, size_t ncuts, size_t max_out,
		     struct data_result *res)
{
	struct span out[64];
	size_t start = 0;

	memset(res, 0, sizeof(*res));
	res->st.bare_policy = policy;
	res->out = malloc(2 * len + 16);
	res->r = SMTP_DATA_MORE;
	cr_assert(max_out <= 64);
	for (size_t c = 0; c <= ncuts && res->r != SMTP_DATA_END; c++) {
		size_t stop = c < ncuts ? cuts[c] : len;
		uint8_t *piece = dup_exact(in + start, stop - start);
		size_t off = 0;
		for (;;) {
			size_t nout, consumed;
			enum smtp_data_result r = smtp_data_feed(
				&res->st, span_make(piece + off, stop - start - off),
				out, max_out, &nout, &consumed);
			res->calls++;
			cr_assert(nout <= max_out);
			cr_assert(off + consumed <= stop - start);
			for (size_t k = 0; k < nout; k++) {
				cr_assert(out[k].len > 0);
				memcpy(res->out + res->outlen, out[k].p, out[k].len);
				res->outlen += out[k].len;
			}
			off += consumed;
			if (r == SMTP_DATA_END) {
				res->r = r;
				res->end = start + off;
				break;
			}
			if (r == SMTP_DATA_MORE) {
				cr_assert_eq(off, stop - start);
				break;
			}
			cr_assert(consumed > 0 || nout > 0 || res->calls < 100000,
				  "no progress");
		}
		free(piece);
		start = stop;
	}
	cr_assert_eq(res->st.size, res->outlen);
}

/* Where the data should end: just after the first CRLF.CRLF of CRLF+in. */
static size_t expected_end(const uint8_t *in, size_t len)
{
	if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
		return 3;
	for (size_t i = 0; i + 5 <= len; i++)
		if (memcmp(in + i, "\r\n.\r\n", 5) == 0)
			return i + 5;
	return 0;
}

static void same_result(const struct data_result *a, const struct data_result *b,
			const char *what, size_t at)
{
	cr_assert_eq(a->r, b->r, "%s %zu: result", what, at);
	cr_assert_eq(a->end, b->end, "%s %zu: end %zu vs %zu", what, at, a->end, b->end);
	cr_assert_eq(a->outlen, b->outlen, "%s %zu: output length %zu vs %zu", what,
		     at, a->outlen, b->outlen);
	cr_assert(memcmp(a->out, b->out, a->outlen) == 0, "%s %zu: output", what, at);
	cr_assert_eq(a->st.bare_seen, b->st.bare_seen, "%s %zu", what, at);
	cr_assert_eq(a->st.long_line, b->st.long_line, "%s %zu", what, at);
	cr_assert_eq(a->st.headers_done, b->st.headers_done, "%s %zu", what, at);
	cr_assert_eq(a->st.received, b->st.received, "%s %zu", what, at);
	cr_assert_eq(a->st.longest_line, b->st.longest_line, "%s %zu", what, at);
	cr_assert_eq(a->st.header_size, b->st.header_size, "%s %zu", what, at);
}

/* Runs in unsplit, then byte by byte, at every 2-way split, and with the
 * smallest out array, and checks they all agree. Returns the unsplit
 * result (free ->out). */
static struct data_result data_all_splits(const uint8_t *in, size_t len, uint8_t policy)
{
	struct data_result whole, other;
	size_t *cuts = malloc((len + 1) * sizeof(*cuts));

	run_data(in, len, policy, NULL, 0, 64, &whole);
	cr_assert_eq(whole.end, expected_end(in, len));
	cr_assert_eq(whole.r == SMTP_DATA_END, whole.end != 0);

	for (size_t i = 0; i + 1 < len; i++)
		cuts[i] = i + 1;
	run_data(in, len, policy, cuts, len ? len - 1 : 0, 64, &other);
	same_result(&whole, &other, "bytewise", 0);
	free(other.out);
	for (size_t k = 0; k <= len; k++) {
		run_data(in, len, policy, &k, 1, 64, &other);
		same_result(&whole, &other, "split at", k);
		free(other.out);
	}
	run_data(in, len, policy, NULL, 0, SMTP_DATA_OUT_MIN, &other);
	same_result(&whole, &other, "min out", 0);
	free(other.out);
	run_data(in, len, policy, cuts, len ? len - 1 : 0, SMTP_DATA_OUT_MIN, &other);
	same_result(&whole, &other, "bytewise min out", 0);
	free(other.out);
	free(cuts);
	return whole;
}

struct data_case {
	struct bytes in;
	uint8_t policy;
	struct bytes out;
	enum smtp_data_result r;
	uint8_t bare_seen;
	uint8_t headers_done;
	uint32_t received;
};

#define R SMTP_BARE_REJECT
#define N SMTP_BARE_NORMALIZE
#define END SMTP_DATA_END
#define MORE SMTP_DATA_MORE

static const struct data_case data_cases[] = {
	/* the end */
	{ B(".\r\n"), R, B(""), END, 0, 0, 0 },
	{ B(".\r\nQUIT\r\n"), R, B(""), END, 0, 0, 0 },
	{ B("\r\n.\r\n"), R, B("\r\n"), END, 0, 1, 0 },
	{ B("a\r\n.\r\n"), R, B("a\r\n"), END, 0, 0, 0 },
	{ B("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"), R, B("Subject: x\r\n\r\nbody\r\n"), END, 0, 1, 0 },
	{ B(""), R, B(""), MORE, 0, 0, 0 },
	{ B("abc"), R, B("abc"), MORE, 0, 0, 0 },
	{ B("a\r\n."), R, B("a\r\n"), MORE, 0, 0, 0 },
	{ B("a\r\n.\r"), R, B("a\r\n"), MORE, 0, 0, 0 },
	{ B("."), R, B(""), MORE, 0, 0, 0 },
	{ B(".\r"), R, B(""), MORE, 0, 0, 0 },
	/* dot-unstuffing */
	{ B("..\r\n.\r\n"), R, B(".\r\n"), END, 0, 0, 0 },
	{ B("...\r\n.\r\n"), R, B("..\r\n"), END, 0, 0, 0 },
	{ B(".x\r\n.\r\n"), R, B("x\r\n"), END, 0, 0, 0 },
	{ B("a.b\r\n.\r\n"), R, B("a.b\r\n"), END, 0, 0, 0 },
	{ B("a.\r\n.\r\n"), R, B("a.\r\n"), END, 0, 0, 0 },
	{ B("x\r\n..\r\n.\r\n"), R, B("x\r\n.\r\n"), END, 0, 0, 0 },
	{ B("x\r\n..\r\n..\r\n.\r\n"), R, B("x\r\n.\r\n.\r\n"), END, 0, 0, 0 },
	{ B("x\r\n. \r\n.\r\n"), R, B("x\r\n \r\n"), END, 0, 0, 0 },
	{ B("x\r\n..x\r\n.\r\n"), R, B("x\r\n.x\r\n"), END, 0, 0, 0 },
	/* bare endings: never the end, flagged, kept or normalised */
	{ B("a\nb\r\n.\r\n"), R, B("a\nb\r\n"), END, 1, 0, 0 },
	{ B("a\nb\r\n.\r\n"), N, B("a\r\nb\r\n"), END, 1, 0, 0 },
	{ B("a\rb\r\n.\r\n"), R, B("a\rb\r\n"), END, 1, 0, 0 },
	{ B("a\rb\r\n.\r\n"), N, B("a\r\nb\r\n"), END, 1, 0, 0 },
	{ B("a\r\r\n.\r\n"), N, B("a\r\n\r\n"), END, 1, 1, 0 },
	{ B("a\n\r\n.\r\n"), N, B("a\r\n\r\n"), END, 1, 1, 0 },
	{ B("\n.\n"), R, B("\n.\n"), MORE, 1, 1, 0 },
	{ B("\n.\n"), N, B("\r\n.\r\n"), MORE, 1, 1, 0 },
	{ B(".\n"), R, B(".\n"), MORE, 1, 0, 0 },
	{ B(".\n"), N, B(".\r\n"), MORE, 1, 0, 0 },
	{ B(".\r.\r\n"), R, B(".\r.\r\n"), MORE, 1, 0, 0 },
	{ B("a\r\n.\r\r\n.\r\n"), R, B("a\r\n.\r\r\n"), END, 1, 1, 0 },
	{ B("a\r\n.\r\r\n.\r\n"), N, B("a\r\n.\r\n\r\n"), END, 1, 1, 0 },
	{ B("a\r\n.\rx\r\n.\r\n"), N, B("a\r\n.\r\nx\r\n"), END, 1, 0, 0 },
	/* after a bare ending a stuffed dot is removed, a lone dot kept */
	{ B("\n..x\r\n.\r\n"), R, B("\n.x\r\n"), END, 1, 1, 0 },
	{ B("\n..x\r\n.\r\n"), N, B("\r\n.x\r\n"), END, 1, 1, 0 },
	{ B("a\n.\r\nb\r\n.\r\n"), N, B("a\r\n.\r\nb\r\n"), END, 1, 0, 0 },
	{ B("a\r.\r\n.\r\n"), R, B("a\r.\r\n"), END, 1, 0, 0 },
	/* Received: counting in the header section only */
	{ B("Received: a\r\nreceived : b\r\nX-Received: c\r\nRECEIVED:d\r\n"
	    "Receive: e\r\nReceivedx: f\r\n\tReceived: g\r\n\r\nReceived: body\r\n.\r\n"),
	  R, B("Received: a\r\nreceived : b\r\nX-Received: c\r\nRECEIVED:d\r\n"
	       "Receive: e\r\nReceivedx: f\r\n\tReceived: g\r\n\r\nReceived: body\r\n"), END, 0, 1, 3 },
	{ B(".Received: stuffed\r\nReceived:\r\n.\r\n"), R, B("Received: stuffed\r\nReceived:\r\n"), END, 0, 0, 2 },
	{ B("Received: a\nReceived: b\r\n\n.\r\n"), R, B("Received: a\nReceived: b\r\n\n.\r\n"), MORE, 1, 1, 2 },
	/* an 8-bit and NUL-containing body passes through untouched */
	{ B("\xff\x00\xc3\r\n.\r\n"), R, B("\xff\x00\xc3\r\n"), END, 0, 0, 0 },
};

static void t_data(const struct data_case *c)
{
	struct data_result res = data_all_splits((const uint8_t *)c->in.p, c->in.len, c->policy);

	cr_assert_eq(res.r, c->r, "%s", smtp_data_result_str(res.r));
	cr_assert_eq(res.outlen, c->out.len, "output length %zu, want %zu: '%.*s'",
		     res.outlen, c->out.len, (int)res.outlen, res.out);
	cr_assert(memcmp(res.out, c->out.p, c->out.len) == 0, "output '%.*s'",
		  (int)res.outlen, res.out);
	cr_assert_eq(res.st.bare_seen, c->bare_seen);
	cr_assert_eq(res.st.headers_done, c->headers_done);
	cr_assert_eq(res.st.received, c->received);
	free(res.out);
}

TABLE_TEST(smtp_parse, data, data_cases, t_data)

/* Every SMTP smuggling variant followed by a second transaction yields one
 * END, at the one real CRLF.CRLF, and nothing from it is a command. */
static const char *const smuggle_variants[] = {
	"\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r",
	"\n.\r\r\n", "\r\r\n.\n", "\r\n.\r\r",
};

ParameterizedTestParameters(smtp_parse, smuggling)
{
	size_t n = sizeof(smuggle_variants) / sizeof(smuggle_variants[0]);
	/* one entry per variant and policy */
	static int idx[2 * sizeof(smuggle_variants) / sizeof(smuggle_variants[0])];
	for (size_t i = 0; i < 2 * n; i++)
		idx[i] = (int)i;
	return cr_make_param_array(int, idx, 2 * n);
}

ParameterizedTest(int *pi, smtp_parse, smuggling)
{
	size_t nv = sizeof(smuggle_variants) / sizeof(smuggle_variants[0]);
	const char *v = smuggle_variants[*pi % nv];
	uint8_t policy = (uint8_t)(*pi / nv);
	static const char head[] = "From: a@b\r\nSubject: hi\r\n\r\nhello";
	static const char tail[] = "MAIL FROM:<x@y>\r\nRCPT TO:<a@b>\r\nDATA\r\n"
				   "smuggled\r\n.\r\n";
	static const char after[] = "QUIT\r\n";
	char in[256];
	size_t len = 0;

	memcpy(in, head, strlen(head));
	len += strlen(head);
	memcpy(in + len, v, strlen(v));
	len += strlen(v);
	memcpy(in + len, tail, strlen(tail));
	len += strlen(tail);
	size_t real_end = len;
	memcpy(in + len, after, strlen(after));
	len += strlen(after);

	struct data_result res = data_all_splits((uint8_t *)in, len, policy);
	cr_assert_eq(res.r, SMTP_DATA_END);
	cr_assert_eq(res.end, real_end, "variant %d ends at %zu, want %zu", *pi, res.end, real_end);
	cr_assert(res.st.bare_seen);
	cr_assert(res.st.headers_done);
	/* what follows is the next command */
	struct smtp_cmd cmd;
	size_t consumed;
	cr_assert_eq(smtp_parse_command(span_make(in + res.end, len - res.end), &cmd, &consumed),
		     SMTP_PARSE_OK);
	cr_assert_eq(cmd.verb, SMTP_CMD_QUIT);
	/* REJECT keeps the message as sent; NORMALIZE makes every bare
	 * ending CRLF: both carry the would-be second transaction as text. */
	if (policy == SMTP_BARE_REJECT) {
		cr_assert_eq(res.outlen, real_end - 3);
		cr_assert(memcmp(res.out, in, res.outlen) == 0);
	} else {
		for (size_t i = 0; i < res.outlen; i++) {
			if (res.out[i] == '\r')
				cr_assert(i + 1 < res.outlen && res.out[i + 1] == '\n');
			if (res.out[i] == '\n')
				cr_assert(i > 0 && res.out[i - 1] == '\r');
		}
		cr_assert(memmem(res.out, res.outlen, "\r\nMAIL FROM:<x@y>\r\n", 19));
	}
	free(res.out);
}

Test(smtp_parse, smuggling_normalized_exact)
{
	/* Every two-dot-free variant normalises to the same bytes. */
	static const char *const variants[] = {
		"\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r",
	};
	static const char want[] = "hello\r\n.\r\nMAIL FROM:<x@y>\r\nsmuggled\r\n";
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
		char in[128];
		int n = snprintf(in, sizeof(in), "hello%sMAIL FROM:<x@y>\r\nsmuggled\r\n.\r\n",
				 variants[i]);
		struct data_result res = data_all_splits((uint8_t *)in, (size_t)n,
							 SMTP_BARE_NORMALIZE);
		cr_assert_eq(res.r, SMTP_DATA_END);
		cr_assert_eq(res.end, (size_t)n);
		cr_assert_eq(res.outlen, sizeof(want) - 1, "variant %zu: '%.*s'", i,
			     (int)res.outlen, res.out);
		cr_assert(memcmp(res.out, want, res.outlen) == 0, "variant %zu", i);
		free(res.out);
	}
}

Test(smtp_parse, data_line_length)
{
	char in[2100];
	struct data_result res;

	/* 998 + CRLF = 1000: at the limit */
	memset(in, 'x', 998);
	memcpy(in + 998, "\r\n.\r\n", 5);
	res = data_all_splits((uint8_t *)in, 1003, SMTP_BARE_REJECT);
	cr_assert_eq(res.st.longest_line, 1000);
	cr_assert(!res.st.long_line);
	free(res.out);
	/* 999 + CRLF = 1001: over */
	memset(in, 'x', 999);
	memcpy(in + 999, "\r\n.\r\n", 5);
	res = data_all_splits((uint8_t *)in, 1004, SMTP_BARE_REJECT);
	cr_assert_eq(res.st.longest_line, 1001);
	cr_assert(res.st.long_line);
	free(res.out);
	/* the stuffing dot counts: "." + 998 + CRLF = 1001 */
	in[0] = '.';
	memset(in + 1, 'x', 998);
	memcpy(in + 999, "\r\n.\r\n", 5);
	res = data_all_splits((uint8_t *)in, 1004, SMTP_BARE_REJECT);
	cr_assert(res.st.long_line);
	cr_assert_eq(res.outlen, 1000);
	free(res.out);
	/* a line with no end yet is flagged as soon as it is over */
	memset(in, 'x', 2000);
	res = data_all_splits((uint8_t *)in, 2000, SMTP_BARE_REJECT);
	cr_assert_eq(res.r, SMTP_DATA_MORE);
	cr_assert(res.st.long_line);
	cr_assert_eq(res.st.longest_line, 2000);
	free(res.out);
}

Test(smtp_parse, data_header_size)
{
	static const char in[] = "Subject: a\r\nTo: b\r\n\r\nbody\r\n.\r\n";
	struct data_result res = data_all_splits((const uint8_t *)in, sizeof(in) - 1,
						 SMTP_BARE_REJECT);
	cr_assert(res.st.headers_done);
	cr_assert_eq(res.st.header_size, 21);
	cr_assert_eq(res.st.size, 27);
	free(res.out);

	static const char noblank[] = "Subject: a\r\n.\r\n";
	res = data_all_splits((const uint8_t *)noblank, sizeof(noblank) - 1, SMTP_BARE_REJECT);
	cr_assert(!res.st.headers_done);
	cr_assert_eq(res.st.header_size, 12);
	free(res.out);
}

Test(smtp_parse, data_received_limit)
{
	/* 51 Received: fields, the session's loop limit is 50 */
	char in[51 * 16 + 32];
	size_t n = 0;
	for (int i = 0; i < 51; i++)
		n += (size_t)sprintf(in + n, "Received: %04d\r\n", i);
	n += (size_t)sprintf(in + n, "\r\nx\r\n.\r\n");
	struct data_result res = data_all_splits((uint8_t *)in, n, SMTP_BARE_REJECT);
	cr_assert_eq(res.st.received, 51);
	free(res.out);
}

Test(smtp_parse, data_after_end)
{
	struct smtp_data_state st = { 0 };
	struct span out[8];
	size_t nout, consumed;

	cr_assert_eq(smtp_data_feed(&st, SPAN_LIT(".\r\nQUIT\r\n"), out, 8, &nout, &consumed),
		     SMTP_DATA_END);
	cr_assert_eq(consumed, 3);
	cr_assert_eq(nout, 0);
	cr_assert_eq(smtp_data_feed(&st, SPAN_LIT("QUIT\r\n"), out, 8, &nout, &consumed),
		     SMTP_DATA_END);
	cr_assert_eq(consumed, 0);
	cr_assert_eq(nout, 0);
}

Test(smtp_parse, data_zero_copy)
{
	/* A plain message comes back as runs of the input itself. */
	static const char in[] = "Subject: a\r\n\r\nline one\r\nline two\r\n.\r\n";
	struct smtp_data_state st = { 0 };
	struct span out[8];
	size_t nout, consumed;

	cr_assert_eq(smtp_data_feed(&st, SPAN_LIT(in), out, 8, &nout, &consumed), SMTP_DATA_END);
	cr_assert_eq(nout, 1);
	cr_assert_eq((const void *)out[0].p, (const void *)in);
	cr_assert_eq(out[0].len, sizeof(in) - 1 - 3);
}

Test(smtp_parse, null_empty_spans)
{
	/* A zeroed span { NULL, 0 } is a valid empty input everywhere (found
	 * by the fuzzer: NULL + 0 is undefined behaviour). */
	struct span none = { NULL, 0 };
	struct smtp_path path;
	struct span a, b;
	uint64_t size;
	int last, has;
	size_t n;

	cr_assert_eq(smtp_parse_bdat(none, &size, &last), SMTP_PARSE_INVALID);
	cr_assert_eq(smtp_parse_auth(none, &a, &b, &has), SMTP_PARSE_INVALID);
	cr_assert_eq(smtp_parse_path(none, SMTP_CMD_MAIL, &path, NULL, 0, &n), SMTP_PARSE_INVALID);
	cr_assert_eq(smtp_xtext_decode(none, NULL, 0, &n), SMTP_PARSE_OK);
	struct smtp_cmd cmd;
	cr_assert_eq(smtp_parse_command(none, &cmd, &n), SMTP_PARSE_AGAIN);
	/* a command without arguments still has a non-NULL args span */
	cr_assert_eq(smtp_parse_command(SPAN_LIT("BDAT\r\n"), &cmd, &n), SMTP_PARSE_OK);
	cr_assert_not_null(cmd.args.p);
	cr_assert_eq(smtp_parse_bdat(cmd.args, &size, &last), SMTP_PARSE_INVALID);
}
