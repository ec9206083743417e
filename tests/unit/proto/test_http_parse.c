/* Unit tests for proto/http_parse.c: a table of requests, each parsed whole
 * in a buffer of exactly its size (ASan catches an over-read), then fed
 * split at every offset both with one carried parse state and with a fresh
 * one; every limit at its boundary; the query and percent helpers. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/http_parse.h"

static uint8_t *dup_exact(const void *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	cr_assert_not_null(d);
	if (n)
		memcpy(d, p, n);
	return d;
}

struct req_case {
	const char *in;
	size_t len;            /* 0: strlen(in) */
	enum http_parse_result r;
	int status;            /* errors */
	enum http_method method;
	const char *path, *query, *host;
	int keep_alive;
	long long clen;        /* -1: no Content-Length */
	size_t body;           /* bytes of in after the head */
	size_t nheaders;
};

#define OK_(in, m, path, q, host, ka, clen, body, nh) \
	{ in, 0, HTTP_PARSE_OK, 0, m, path, q, host, ka, clen, body, nh }
#define BAD(in, r, st) { in, 0, r, st, 0, NULL, NULL, NULL, 0, -1, 0, 0 }

static const struct req_case req_cases[] = {
	OK_("GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_GET, "/", "", "a", 1, -1, 0, 1),
	OK_("GET /mail/config-v1.1.xml?emailaddress=u%40example.com HTTP/1.1\r\n"
	    "Host: autoconfig.example.com\r\nUser-Agent: x\r\n\r\n",
	    HTTP_M_GET, "/mail/config-v1.1.xml", "emailaddress=u%40example.com",
	    "autoconfig.example.com", 1, -1, 0, 2),
	OK_("HEAD /x HTTP/1.1\nHost: h:80\n\n", HTTP_M_HEAD, "/x", "", "h:80", 1, -1, 0, 1),
	OK_("POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	    HTTP_M_POST, "/autodiscover/autodiscover.xml", "", "a", 1, 5, 5, 2),
	OK_("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
	    HTTP_M_POST, "/", "", "a", 1, 3, 3, 3),
	OK_("GET / HTTP/1.0\r\n\r\n", HTTP_M_GET, "/", "", "", 0, -1, 0, 0),
	OK_("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", HTTP_M_GET, "/", "", "", 1, -1, 0, 1),
	OK_("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", HTTP_M_GET, "/", "", "a",
	    0, -1, 0, 2),
	OK_("GET / HTTP/1.9\r\nHost: a\r\n\r\n", HTTP_M_GET, "/", "", "a", 1, -1, 0, 1),
	OK_("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_GET, "/", "", "a", 1, -1, 0, 1),
	OK_("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_OPTIONS, "*", "", "a", 1, -1, 0, 1),
	OK_("GET http://Example.com:80/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n", HTTP_M_GET, "/x",
	    "y=1", "Example.com:80", 1, -1, 0, 1),
	OK_("GET https://e.com HTTP/1.1\r\nHost: e.com\r\n\r\n", HTTP_M_GET, "/", "", "e.com", 1,
	    -1, 0, 1),
	OK_("FOO / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_UNKNOWN, "/", "", "a", 1, -1, 0, 1),
	OK_("get / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_UNKNOWN, "/", "", "a", 1, -1, 0, 1),
	OK_("DELETE /x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Sp:   v  \r\n\r\n", HTTP_M_DELETE, "/x",
	    "", "a", 1, -1, 0, 3),
	OK_("GET /?a HTTP/1.1\r\nHost: [::1]:443\r\nX: \x80\xff\r\n\r\n", HTTP_M_GET, "/", "a",
	    "[::1]:443", 1, -1, 0, 2),
	OK_("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n",
	    HTTP_M_POST, "/", "", "a", 1, 0, 0, 3),
	OK_("GET / HTTP/1.1\r\nHost:\r\n\r\n", HTTP_M_GET, "/", "", "", 1, -1, 0, 1),
	/* a second request behind the first is not part of it */
	OK_("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_M_GET,
	    "/1", "", "a", 1, -1, 28, 1),

	BAD("GET / HTTP/1.1\r\n\r\n", HTTP_PARSE_INVALID, 400),        /* no Host */
	BAD("GET / HTTP/2.0\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 505),
	BAD("GET / HTTP/3.0\r\n", HTTP_PARSE_INVALID, 505),
	BAD("GET / HTTP/1.10\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / http/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET /\r\n\r\n", HTTP_PARSE_INVALID, 400),                  /* HTTP/0.9 */
	BAD("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", HTTP_PARSE_INVALID, 400),
	BAD("GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET * HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET x HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\rHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", HTTP_PARSE_INVALID, 400), /* obs-fold */
	BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost a\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	    HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n", HTTP_PARSE_TOO_LONG, 413),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
	    HTTP_PARSE_TOO_LONG, 413),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP_PARSE_INVALID, 411),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
	    HTTP_PARSE_INVALID, 411),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", HTTP_PARSE_INVALID, 501),
	BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	    HTTP_PARSE_INVALID, 400),
	BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HTTP_PARSE_INVALID, 400),
	BAD("GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", HTTP_PARSE_INVALID, 417),
	BAD("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
	    HTTP_PARSE_INVALID, 400),
	BAD("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP_PARSE_INVALID, 400),
};

static void check_ok(const struct req_case *c, const struct http_request *req, size_t len)
{
	cr_assert_eq(req->method, c->method, "%s: method %d", c->in, req->method);
	cr_assert(span_eq(req->path, span_cstr(c->path)), "%s: path '%.*s'", c->in,
		  (int)req->path.len, req->path.p);
	cr_assert(span_eq(req->query, span_cstr(c->query)), "%s: query", c->in);
	cr_assert(span_eq(req->host, span_cstr(c->host)), "%s: host '%.*s'", c->in,
		  (int)req->host.len, req->host.p);
	cr_assert_eq(req->keep_alive, c->keep_alive != 0, "%s: keep-alive", c->in);
	cr_assert_eq(req->has_content_length, c->clen >= 0, "%s: has CL", c->in);
	if (c->clen >= 0)
		cr_assert_eq(req->content_length, (uint64_t)c->clen);
	cr_assert_eq(req->head_len, len - c->body, "%s: head_len %zu", c->in, req->head_len);
	cr_assert_eq(req->nheaders, c->nheaders, "%s: %zu headers", c->in, req->nheaders);
	cr_assert_eq(req->status, 0);
}

static void check_req(const struct req_case *c)
{
	size_t len = c->len ? c->len : strlen(c->in);
	uint8_t *buf = dup_exact(c->in, len);
	struct http_request req;
	struct http_parse_state st = { 0 };

	enum http_parse_result r = http_parse_request(span_make(buf, len), &st, &req);
	cr_assert_eq(r, c->r, "%s: result %d (status %d)", c->in, r, req.status);
	if (r == HTTP_PARSE_OK)
		check_ok(c, &req, len);
	else
		cr_assert_eq(req.status, c->status, "%s: status %d", c->in, req.status);
	free(buf);

	/* Every split: one carried state, and a fresh state each time. */
	struct http_parse_state carried = { 0 };
	for (size_t k = 0; k <= len; k++) {
		uint8_t *part = dup_exact(c->in, k);
		for (int mode = 0; mode < 2; mode++) {
			struct http_parse_state fresh = { 0 };
			struct http_parse_state *sp = mode ? &fresh : &carried;
			r = http_parse_request(span_make(part, k), sp, &req);
			if (c->r == HTTP_PARSE_OK) {
				bool whole = k >= len - c->body;
				cr_assert_eq(r, whole ? HTTP_PARSE_OK : HTTP_PARSE_AGAIN,
					     "%s: split %zu mode %d result %d", c->in, k, mode, r);
				if (whole)
					check_ok(c, &req, len);
			} else if (r != HTTP_PARSE_AGAIN) {
				cr_assert_eq(r, c->r, "%s: split %zu result %d", c->in, k, r);
				cr_assert_eq(req.status, c->status, "%s: split %zu status %d", c->in,
					     k, req.status);
			}
		}
		free(part);
	}
}

TABLE_TEST(http_parse, request, req_cases, check_req)

/* ---- limits at their boundaries --------------------------------------------- */

static enum http_parse_result parse_str(const char *s, size_t n, struct http_request *req)
{
	uint8_t *buf = dup_exact(s, n);
	struct http_parse_state st = { 0 };
	enum http_parse_result r = http_parse_request(span_make(buf, n), &st, req);
	free(buf);
	return r;
}

/* "GET /aaa... HTTP/1.1\r\n" of exactly total bytes, then rest. */
static char *request_with_line(size_t total, const char *rest)
{
	size_t fixed = strlen("GET / HTTP/1.1\r\n");
	char *s = malloc(total + strlen(rest) + 1);
	cr_assert_not_null(s);
	memcpy(s, "GET /", 5);
	memset(s + 5, 'a', total - fixed);
	strcpy(s + 5 + (total - fixed), " HTTP/1.1\r\n");
	strcat(s, rest);
	return s;
}

Test(http_parse, request_line_limit)
{
	struct http_request req;
	char *s = request_with_line(HTTP_REQUEST_LINE_MAX, "Host: a\r\n\r\n");
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_OK);
	free(s);
	s = request_with_line(HTTP_REQUEST_LINE_MAX + 1, "Host: a\r\n\r\n");
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 414);
	/* Known too long before the line ends. */
	cr_assert_eq(parse_str(s, HTTP_REQUEST_LINE_MAX, &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 414);
	cr_assert_eq(parse_str(s, HTTP_REQUEST_LINE_MAX - 1, &req), HTTP_PARSE_AGAIN);
	free(s);
	/* A method that never ends is a bad request, not a long URI. */
	s = malloc(HTTP_REQUEST_LINE_MAX);
	memset(s, 'G', HTTP_REQUEST_LINE_MAX);
	cr_assert_eq(parse_str(s, HTTP_REQUEST_LINE_MAX, &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 400);
	free(s);
}

/* A head with a header section of exactly total bytes (the empty line
 * included), using nfields fields. */
static char *request_with_section(size_t total, size_t nfields)
{
	const char *line = "GET / HTTP/1.1\r\n";
	char *s = malloc(strlen(line) + total + 1);
	size_t o = strlen(line);
	cr_assert_not_null(s);
	strcpy(s, line);
	size_t left = total - 2;
	for (size_t i = 0; i < nfields; i++) {
		size_t each = left / (nfields - i); /* "Xnnnn: vvvv\r\n" */
		if (i == 0) {
			size_t n = (size_t)sprintf(s + o, "Host: a");
			o += n;
			memset(s + o, 'a', each - n - 2);
			o += each - n - 2;
		} else {
			size_t n = (size_t)sprintf(s + o, "X%zu: ", i);
			o += n;
			memset(s + o, 'v', each - n - 2);
			o += each - n - 2;
		}
		memcpy(s + o, "\r\n", 2);
		o += 2;
		left -= each;
	}
	memcpy(s + o, "\r\n", 3);
	return s;
}

Test(http_parse, header_section_limit)
{
	struct http_request req;
	char *s = request_with_section(HTTP_HEADER_SECTION_MAX, 4);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_OK, "status %d", req.status);
	cr_assert_eq(req.nheaders, 4);
	free(s);
	s = request_with_section(HTTP_HEADER_SECTION_MAX + 1, 4);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 431);
	/* Known too large before the empty line arrives. */
	cr_assert_eq(parse_str(s, strlen(s) - 1, &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 431);
	free(s);
}

Test(http_parse, header_count_limit)
{
	struct http_request req;
	char *s = request_with_section(HTTP_HEADERS_MAX * 20, HTTP_HEADERS_MAX);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_OK, "status %d", req.status);
	cr_assert_eq(req.nheaders, HTTP_HEADERS_MAX);
	free(s);
	s = request_with_section((HTTP_HEADERS_MAX + 1) * 20, HTTP_HEADERS_MAX + 1);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 431);
	free(s);
}

Test(http_parse, body_limit)
{
	struct http_request req;
	char s[128];
	snprintf(s, sizeof(s), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %u\r\n\r\n",
		 HTTP_BODY_MAX);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_OK);
	cr_assert_eq(req.content_length, HTTP_BODY_MAX);
	snprintf(s, sizeof(s), "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %u\r\n\r\n",
		 HTTP_BODY_MAX + 1);
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_TOO_LONG);
	cr_assert_eq(req.status, 413);
}

Test(http_parse, leading_empty_lines_limit)
{
	struct http_request req;
	char s[256] = "";
	for (unsigned i = 0; i < HTTP_LEADING_EMPTY_MAX; i++)
		strcat(s, "\r\n");
	strcat(s, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
	cr_assert_eq(parse_str(s, strlen(s), &req), HTTP_PARSE_OK);
	char t[260] = "\n";
	strcat(t, s);
	cr_assert_eq(parse_str(t, strlen(t), &req), HTTP_PARSE_INVALID);
	cr_assert_eq(req.status, 400);
}

Test(http_parse, nul_bytes)
{
	static const char a[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
	static const char b[] = "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n";
	struct http_request req;
	cr_assert_eq(parse_str(a, sizeof(a) - 1, &req), HTTP_PARSE_INVALID);
	cr_assert_eq(parse_str(b, sizeof(b) - 1, &req), HTTP_PARSE_INVALID);
	cr_assert_eq(req.status, 400);
}

/* A head sent one byte at a time is scanned once: the state remembers. */
Test(http_parse, resumable_state_advances)
{
	static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX: yyyyyyyyyy\r\n\r\n";
	struct http_parse_state st = { 0 };
	struct http_request req;
	size_t last = 0;
	for (size_t k = 20; k < sizeof(s) - 1; k++) {
		cr_assert_eq(http_parse_request(span_make(s, k), &st, &req), HTTP_PARSE_AGAIN);
		cr_assert_geq(st.scanned, last);
		last = st.scanned;
	}
	cr_assert_gt(last, 30);
	cr_assert_eq(http_parse_request(span_make(s, sizeof(s) - 1), &st, &req), HTTP_PARSE_OK);
}

/* ---- helpers -------------------------------------------------------------------- */

Test(http_parse, header_lookup)
{
	static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nx-one: 2\r\n\r\n";
	struct http_request req;
	struct http_parse_state st = { 0 };
	cr_assert_eq(http_parse_request(span_make(s, sizeof(s) - 1), &st, &req), HTTP_PARSE_OK);
	const struct http_header *h = http_request_header(&req, SPAN_LIT("X-ONE"));
	cr_assert_not_null(h);
	cr_assert(span_eq(h->value, SPAN_LIT("1")));
	cr_assert_null(http_request_header(&req, SPAN_LIT("X-Two")));
}

Test(http_parse, query_param)
{
	struct span v;
	cr_assert(http_query_param(SPAN_LIT("a=1&emailaddress=u%40e.com&b"), SPAN_LIT("EmailAddress"), &v));
	cr_assert(span_eq(v, SPAN_LIT("u%40e.com")));
	cr_assert(http_query_param(SPAN_LIT("a=1;b=2"), SPAN_LIT("b"), &v));
	cr_assert(span_eq(v, SPAN_LIT("2")));
	cr_assert(http_query_param(SPAN_LIT("flag&x=1"), SPAN_LIT("flag"), &v));
	cr_assert_eq(v.len, 0);
	cr_assert(!http_query_param(SPAN_LIT("emailaddressx=1"), SPAN_LIT("emailaddress"), &v));
	cr_assert(!http_query_param(SPAN_LIT(""), SPAN_LIT("a"), &v));
	cr_assert(http_query_param(SPAN_LIT("a=1&a=2"), SPAN_LIT("a"), &v));
	cr_assert(span_eq(v, SPAN_LIT("1")));
}

Test(http_parse, percent_decode)
{
	uint8_t out[32];
	cr_assert_eq(http_percent_decode(SPAN_LIT("u%40e.com"), false, out, sizeof(out)), 7);
	cr_assert_eq(memcmp(out, "u@e.com", 7), 0);
	cr_assert_eq(http_percent_decode(SPAN_LIT("a+b"), false, out, sizeof(out)), 3);
	cr_assert_eq(out[1], '+');
	cr_assert_eq(http_percent_decode(SPAN_LIT("a+b"), true, out, sizeof(out)), 3);
	cr_assert_eq(out[1], ' ');
	cr_assert_eq(http_percent_decode(SPAN_LIT("%4"), false, out, sizeof(out)), -1);
	cr_assert_eq(http_percent_decode(SPAN_LIT("%"), false, out, sizeof(out)), -1);
	cr_assert_eq(http_percent_decode(SPAN_LIT("%zz"), false, out, sizeof(out)), -1);
	cr_assert_eq(http_percent_decode(SPAN_LIT("%00"), false, out, sizeof(out)), -1);
	cr_assert_eq(http_percent_decode(SPAN_LIT("abcd"), false, out, 3), -1);
	cr_assert_eq(http_percent_decode(SPAN_LIT("abc"), false, out, 3), 3);
}

Test(http_parse, names)
{
	cr_assert_str_eq(http_status_reason(431), "Request Header Fields Too Large");
	cr_assert_str_eq(http_status_reason(999), "Unknown");
	cr_assert_str_eq(http_method_str(HTTP_M_OPTIONS), "OPTIONS");
	cr_assert_str_eq(http_method_str((enum http_method)99), "?");
}
