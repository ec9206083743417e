/* proto/session_util.c: the HTTP request-line check IMAP and POP3 use to
 * close on a browser or proxy (ALPACA), and the line reader. */
#include <criterion/criterion.h>
#include <string.h>

#include "proto/session_util.h"

static bool http(const char *s)
{
	return session_http_request_line(span_make(s, strlen(s)));
}

Test(http_request_line, requests)
{
	cr_assert(http("GET / HTTP/1.1"));
	cr_assert(http("POST /autodiscover/autodiscover.xml HTTP/1.0"));
	cr_assert(http("CONNECT mail.example.com:993 HTTP/1.1"));
	cr_assert(http("OPTIONS * HTTP/2"));
	cr_assert(http("PATCH /x?y=z%20 HTTP/1.1"));
}

Test(http_request_line, mail_commands_that_look_alike)
{
	cr_assert_not(http(""));
	cr_assert_not(http("GET"));
	cr_assert_not(http("GET "));
	cr_assert_not(http("GET HTTP/1.1"));        /* no target */
	cr_assert_not(http("GET / HTTP/"));          /* no version */
	cr_assert_not(http("get / HTTP/1.1"));       /* methods are upper case */
	cr_assert_not(http("a1 LOGIN GET HTTP/1.1")); /* an IMAP tag */
	cr_assert_not(http("GET LIST \"\" *"));       /* a tag named GET */
	cr_assert_not(http("USER get"));
	cr_assert_not(http("RETR 1"));
}

Test(line_reader, long_line_skipped_up_to_its_lf)
{
	struct line_reader r = { .max = 8 };
	const char *in = "0123456789abc\r\nOK\r\n";
	struct span text;
	size_t pos = 0;
	cr_assert_eq(line_reader_next(&r, span_make(in, strlen(in)), &pos, &text), LINE_TOO_LONG);
	cr_assert_eq(line_reader_next(&r, span_make(in, strlen(in)), &pos, &text), LINE_OK);
	cr_assert_eq(text.len, 2);
	cr_assert(!memcmp(text.p, "OK", 2));
	cr_assert_eq(pos, strlen(in));
}
