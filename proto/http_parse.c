/* http_parse.c - the HTTP/1.1 request parser (see http_parse.h).
 *
 * Strict where leniency would let two parsers disagree about framing
 * (request smuggling): obs-fold, whitespace before the colon, bare CR,
 * Content-Length with anything but digits or with two different values,
 * Transfer-Encoding next to Content-Length are all 400. Lenient where RFC
 * 9112 allows it and nothing depends on it: bare LF ends a line, empty
 * lines before the request line are skipped. */
#include "proto/http_parse.h"

#include <string.h>

static const char *const method_names[] = {
	[HTTP_M_UNKNOWN] = "?",      [HTTP_M_GET] = "GET",       [HTTP_M_HEAD] = "HEAD",
	[HTTP_M_POST] = "POST",      [HTTP_M_OPTIONS] = "OPTIONS", [HTTP_M_PUT] = "PUT",
	[HTTP_M_DELETE] = "DELETE",  [HTTP_M_PATCH] = "PATCH",   [HTTP_M_TRACE] = "TRACE",
	[HTTP_M_CONNECT] = "CONNECT",
};

const char *http_method_str(enum http_method m)
{
	return (unsigned)m < sizeof(method_names) / sizeof(method_names[0]) ? method_names[m] : "?";
}

const char *http_status_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Unknown";
	}
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(uint8_t c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A field-value byte: VCHAR, obs-text, SP, HTAB. */
static bool is_field_byte(uint8_t c)
{
	return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static bool is_ows(uint8_t c) { return c == ' ' || c == '\t'; }

static struct span trim_ows(struct span s)
{
	while (s.len && is_ows(s.p[0])) {
		s.p++;
		s.len--;
	}
	while (s.len && is_ows(s.p[s.len - 1]))
		s.len--;
	return s;
}

static enum http_parse_result fail(struct http_request *req, enum http_parse_result r, int status)
{
	req->status = status;
	return r;
}

static enum http_method method_of(struct span m)
{
	for (size_t i = 1; i < sizeof(method_names) / sizeof(method_names[0]); i++)
		if (span_eq(m, span_cstr(method_names[i])))
			return (enum http_method)i;
	return HTTP_M_UNKNOWN;
}

/* Host: uri-host [ ":" port ], reg-name/IPv4/IP-literal characters only. */
static bool valid_host(struct span h)
{
	for (size_t i = 0; i < h.len; i++) {
		uint8_t c = h.p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_'))
			return false;
	}
	return true;
}

/* Splits an origin-form target ("/p?q") into path and query. */
static bool split_origin(struct span t, struct http_request *req)
{
	const uint8_t *q = memchr(t.p, '?', t.len);
	if (memchr(t.p, '#', t.len))
		return false; /* a fragment is never sent (RFC 9112 3.2) */
	if (q) {
		req->path = span_make(t.p, (size_t)(q - t.p));
		req->query = span_make(q + 1, t.len - req->path.len - 1);
		req->has_query = true;
	} else {
		req->path = t;
	}
	return true;
}

/* The request line without its line ending. */
static enum http_parse_result parse_request_line(struct span line, struct http_request *req,
						 struct span *authority_r)
{
	size_t i = 0;

	while (i < line.len && is_tchar(line.p[i]))
		i++;
	if (i == 0 || i == line.len || line.p[i] != ' ')
		return fail(req, HTTP_PARSE_INVALID, 400);
	req->method_name = span_make(line.p, i);
	req->method = method_of(req->method_name);
	size_t t0 = ++i;
	while (i < line.len && line.p[i] >= 0x21 && line.p[i] <= 0x7e)
		i++;
	if (i == t0 || i == line.len || line.p[i] != ' ')
		return fail(req, HTTP_PARSE_INVALID, 400);
	req->target = span_make(line.p + t0, i - t0);
	struct span v = span_skip(line, i + 1);
	if (v.len != 8 || memcmp(v.p, "HTTP/", 5) || v.p[6] != '.' || v.p[5] < '0' ||
	    v.p[5] > '9' || v.p[7] < '0' || v.p[7] > '9')
		return fail(req, HTTP_PARSE_INVALID, 400);
	if (v.p[5] != '1')
		return fail(req, HTTP_PARSE_INVALID, 505);
	req->version_minor = (unsigned)(v.p[7] - '0');

	struct span t = req->target;
	if (t.p[0] == '/') {
		if (!split_origin(t, req))
			return fail(req, HTTP_PARSE_INVALID, 400);
	} else if (span_eq(t, SPAN_LIT("*"))) {
		if (req->method != HTTP_M_OPTIONS)
			return fail(req, HTTP_PARSE_INVALID, 400);
		req->path = t;
	} else if (span_prefix_nocase(t, SPAN_LIT("http://")) ||
		   span_prefix_nocase(t, SPAN_LIT("https://"))) {
		/* absolute-form: the authority replaces Host (RFC 9112 3.2.2). */
		struct span rest = span_skip(t, t.p[4] == ':' ? 7 : 8);
		size_t a = 0;
		while (a < rest.len && rest.p[a] != '/' && rest.p[a] != '?')
			a++;
		struct span auth = span_make(rest.p, a);
		if (auth.len == 0 || memchr(auth.p, '@', auth.len) || !valid_host(auth))
			return fail(req, HTTP_PARSE_INVALID, 400);
		*authority_r = auth;
		struct span pq = span_skip(rest, a);
		if (pq.len == 0) {
			req->path = SPAN_LIT("/");
		} else if (pq.p[0] == '?') {
			req->path = SPAN_LIT("/");
			req->query = span_skip(pq, 1);
			req->has_query = true;
		} else if (!split_origin(pq, req)) {
			return fail(req, HTTP_PARSE_INVALID, 400);
		}
	} else if (req->method == HTTP_M_CONNECT) {
		req->path = span_make(NULL, 0); /* authority-form: refused later */
	} else {
		return fail(req, HTTP_PARSE_INVALID, 400);
	}
	return HTTP_PARSE_OK;
}

/* Content-Length: 1*DIGIT. Returns false when malformed. *v_r saturates
 * above HTTP_BODY_MAX (the caller answers 413). */
static bool parse_length(struct span v, uint64_t *v_r)
{
	uint64_t n = 0;
	if (v.len == 0)
		return false;
	for (size_t i = 0; i < v.len; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return false;
		if (n <= HTTP_BODY_MAX)
			n = n * 10 + (uint64_t)(v.p[i] - '0');
	}
	*v_r = n;
	return true;
}

/* True when the comma-separated list v holds token tok. */
static bool list_has(struct span v, struct span tok)
{
	size_t i = 0;
	while (i < v.len) {
		size_t j = i;
		while (j < v.len && v.p[j] != ',')
			j++;
		if (span_eq_nocase(trim_ows(span_make(v.p + i, j - i)), tok))
			return true;
		i = j + 1;
	}
	return false;
}

/* The last transfer coding of a Transfer-Encoding value. */
static struct span last_coding(struct span v)
{
	size_t j = v.len;
	while (j > 0 && v.p[j - 1] != ',')
		j--;
	return trim_ows(span_skip(v, j));
}

/* Finds the first empty line at or after from (a line start), resuming at
 * st->scanned. Returns the offset just past it, or 0 when none yet. */
static size_t find_head_end(struct span in, size_t from, struct http_parse_state *st)
{
	size_t j = st->scanned > from ? st->scanned : from;
	while (j < in.len) {
		if (j == from || in.p[j - 1] == '\n') {
			if (in.p[j] == '\n')
				return j + 1;
			if (in.p[j] == '\r') {
				if (j + 1 >= in.len)
					break; /* look here again with more bytes */
				if (in.p[j + 1] == '\n')
					return j + 2;
			}
		}
		const uint8_t *lf = memchr(in.p + j, '\n', in.len - j);
		if (!lf) {
			j = in.len;
			break;
		}
		j = (size_t)(lf - in.p) + 1;
	}
	st->scanned = j;
	return 0;
}

/* One field line (without its line ending). */
static enum http_parse_result parse_field(struct span line, struct http_request *req,
					  struct span *te_r, bool *have_te_r)
{
	size_t i = 0;
	if (line.len && is_ows(line.p[0]))
		return fail(req, HTTP_PARSE_INVALID, 400); /* obs-fold (RFC 9112 5.2) */
	while (i < line.len && is_tchar(line.p[i]))
		i++;
	if (i == 0 || i == line.len || line.p[i] != ':')
		return fail(req, HTTP_PARSE_INVALID, 400);
	struct span name = span_make(line.p, i);
	struct span value = span_skip(line, i + 1);
	for (size_t k = 0; k < value.len; k++)
		if (!is_field_byte(value.p[k]))
			return fail(req, HTTP_PARSE_INVALID, 400);
	value = trim_ows(value);
	if (req->nheaders == HTTP_HEADERS_MAX)
		return fail(req, HTTP_PARSE_TOO_LONG, 431);
	req->headers[req->nheaders++] = (struct http_header){ name, value };

	if (span_eq_nocase(name, SPAN_LIT("host"))) {
		if (req->host.p || !valid_host(value))
			return fail(req, HTTP_PARSE_INVALID, 400);
		req->host = value.len ? value : SPAN_LIT("");
	} else if (span_eq_nocase(name, SPAN_LIT("content-length"))) {
		uint64_t n;
		if (!parse_length(value, &n) || (req->has_content_length && n != req->content_length))
			return fail(req, HTTP_PARSE_INVALID, 400);
		req->has_content_length = true;
		req->content_length = n;
	} else if (span_eq_nocase(name, SPAN_LIT("transfer-encoding"))) {
		*te_r = value; /* the last field's last coding decides */
		*have_te_r = true;
	} else if (span_eq_nocase(name, SPAN_LIT("connection"))) {
		if (list_has(value, SPAN_LIT("close")))
			req->keep_alive = false;
		else if (list_has(value, SPAN_LIT("keep-alive")) && req->version_minor == 0)
			req->keep_alive = true;
	} else if (span_eq_nocase(name, SPAN_LIT("expect"))) {
		if (!span_eq_nocase(value, SPAN_LIT("100-continue")))
			return fail(req, HTTP_PARSE_INVALID, 417);
		req->expect_continue = true;
	}
	return HTTP_PARSE_OK;
}

enum http_parse_result http_parse_request(struct span in, struct http_parse_state *st,
					  struct http_request *req)
{
	size_t pos = 0, empties = 0;
	enum http_parse_result r;

	memset(req, 0, sizeof(*req));
	while (pos < in.len && (in.p[pos] == '\r' || in.p[pos] == '\n')) {
		if (in.p[pos] == '\r') {
			if (pos + 1 >= in.len)
				return HTTP_PARSE_AGAIN;
			if (in.p[pos + 1] != '\n')
				return fail(req, HTTP_PARSE_INVALID, 400);
			pos++;
		}
		pos++;
		if (++empties > HTTP_LEADING_EMPTY_MAX)
			return fail(req, HTTP_PARSE_INVALID, 400);
	}
	struct span rest = span_skip(in, pos);
	size_t lim = rest.len < HTTP_REQUEST_LINE_MAX ? rest.len : HTTP_REQUEST_LINE_MAX;
	const uint8_t *lf = memchr(rest.p, '\n', lim);
	if (!lf) {
		/* Refuse garbage (a TLS ClientHello on port 80, a binary
		 * protocol) at once instead of waiting for 8 KiB of it. */
		size_t k = 0;
		while (k < rest.len && is_tchar(rest.p[k]))
			k++;
		if (k < rest.len && rest.p[k] != ' ')
			return fail(req, HTTP_PARSE_INVALID, 400);
		if (rest.len >= HTTP_REQUEST_LINE_MAX)
			return fail(req, HTTP_PARSE_TOO_LONG, k == rest.len ? 400 : 414);
		return HTTP_PARSE_AGAIN;
	}
	size_t line_end = pos + (size_t)(lf - rest.p) + 1; /* past the LF */
	struct span line = span_make(in.p + pos, line_end - pos - 1);
	if (line.len && line.p[line.len - 1] == '\r')
		line.len--;
	struct span authority = { 0 };
	/* The request line is judged before the header section, once: a bad
	 * one is refused before its headers arrive, and the answer does not
	 * depend on how the bytes were split. */
	if (!st->line_checked) {
		if (memchr(line.p, '\r', line.len))
			return fail(req, HTTP_PARSE_INVALID, 400);
		if ((r = parse_request_line(line, req, &authority)) != HTTP_PARSE_OK)
			return r;
		memset(req, 0, sizeof(*req));
		authority = (struct span){ 0 };
		st->line_checked = true;
	}
	size_t end = find_head_end(in, line_end, st);
	if (!end) {
		if (in.len - line_end >= HTTP_HEADER_SECTION_MAX)
			return fail(req, HTTP_PARSE_TOO_LONG, 431);
		return HTTP_PARSE_AGAIN;
	}
	if (end - line_end > HTTP_HEADER_SECTION_MAX)
		return fail(req, HTTP_PARSE_TOO_LONG, 431);

	if ((r = parse_request_line(line, req, &authority)) != HTTP_PARSE_OK)
		return r;
	req->keep_alive = req->version_minor >= 1;

	struct span te = { 0 };
	bool have_te = false;
	size_t p = line_end;
	for (;;) {
		const uint8_t *nl = memchr(in.p + p, '\n', end - p);
		/* end lies just past an empty line, so nl is never NULL */
		size_t n = (size_t)(nl - (in.p + p));
		struct span f = span_make(in.p + p, n);
		p += n + 1;
		if (f.len && f.p[f.len - 1] == '\r')
			f.len--;
		if (f.len == 0)
			break;
		if (memchr(f.p, '\r', f.len))
			return fail(req, HTTP_PARSE_INVALID, 400);
		if ((r = parse_field(f, req, &te, &have_te)) != HTTP_PARSE_OK)
			return r;
	}
	if (have_te) {
		if (req->has_content_length || req->version_minor == 0)
			return fail(req, HTTP_PARSE_INVALID, 400); /* RFC 9112 6.1 */
		if (span_eq_nocase(last_coding(te), SPAN_LIT("chunked")))
			return fail(req, HTTP_PARSE_INVALID, 411);
		return fail(req, HTTP_PARSE_INVALID, 501);
	}
	if (authority.p)
		req->host = authority;
	else if (!req->host.p && req->version_minor >= 1)
		return fail(req, HTTP_PARSE_INVALID, 400); /* RFC 9112 3.2 */
	if (req->content_length > HTTP_BODY_MAX)
		return fail(req, HTTP_PARSE_TOO_LONG, 413);
	req->head_len = end;
	return HTTP_PARSE_OK;
}

const struct http_header *http_request_header(const struct http_request *req, struct span name)
{
	for (size_t i = 0; i < req->nheaders; i++)
		if (span_eq_nocase(req->headers[i].name, name))
			return &req->headers[i];
	return NULL;
}

bool http_query_param(struct span query, struct span name, struct span *value_r)
{
	size_t i = 0;
	while (i < query.len) {
		size_t j = i;
		while (j < query.len && query.p[j] != '&' && query.p[j] != ';')
			j++;
		struct span pair = span_make(query.p + i, j - i);
		const uint8_t *eq = memchr(pair.p, '=', pair.len);
		struct span n = eq ? span_make(pair.p, (size_t)(eq - pair.p)) : pair;
		if (span_eq_nocase(n, name)) {
			*value_r = eq ? span_make(eq + 1, pair.len - n.len - 1) : span_make(pair.p + pair.len, 0);
			return true;
		}
		i = j + 1;
	}
	return false;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

ptrdiff_t http_percent_decode(struct span in, bool form, uint8_t *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < in.len; i++) {
		uint8_t c = in.p[i];
		if (c == '%') {
			int hi, lo;
			if (i + 2 >= in.len || (hi = hexval(in.p[i + 1])) < 0 ||
			    (lo = hexval(in.p[i + 2])) < 0)
				return -1;
			c = (uint8_t)(hi << 4 | lo);
			i += 2;
		} else if (c == '+' && form) {
			c = ' ';
		}
		if (c == 0 || o == cap)
			return -1;
		out[o++] = c;
	}
	return (ptrdiff_t)o;
}
