/* http_parse.h - the HTTP/1.1 request parser (RFC 9110, RFC 9112) for the
 * auto-discovery listener.
 *
 * Pure: bytes in, spans out, no allocation, no I/O, no globals. It parses
 * in place: every span of struct http_request points into the caller's
 * buffer and is valid as long as those bytes stay where they are.
 *
 * The parser reads the request line and the header section; the body (a
 * Content-Length body, at most HTTP_BODY_MAX) is the caller's to wait for:
 * head_len + content_length bytes make the whole request. Requests with a
 * Transfer-Encoding are refused (411 for chunked, 501 for anything else):
 * an auto-discovery server has no use for streamed uploads. */
#ifndef RINGMAIL_PROTO_HTTP_PARSE_H
#define RINGMAIL_PROTO_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* The request line, CRLF included: longer gets 414 URI Too Long. */
#define HTTP_REQUEST_LINE_MAX 8192u
/* The header section after the request line, the empty line included:
 * larger gets 431 Request Header Fields Too Large. */
#define HTTP_HEADER_SECTION_MAX 16384u
/* Header fields in one request: more get 431. */
#define HTTP_HEADERS_MAX 64u
/* A request body (Autodiscover POST): larger gets 413 Content Too Large. */
#define HTTP_BODY_MAX 65536u
/* Empty lines tolerated before a request line (RFC 9112 2.2). */
#define HTTP_LEADING_EMPTY_MAX 8u

enum http_parse_result {
	HTTP_PARSE_OK,       /* a complete head: see struct http_request */
	HTTP_PARSE_AGAIN,    /* need more bytes */
	HTTP_PARSE_INVALID,  /* malformed: answer req->status and close */
	HTTP_PARSE_TOO_LONG, /* over a limit: answer req->status and close */
};

enum http_method {
	HTTP_M_UNKNOWN, /* a well-formed token we do not implement: 501 */
	HTTP_M_GET,
	HTTP_M_HEAD,
	HTTP_M_POST,
	HTTP_M_OPTIONS,
	HTTP_M_PUT,
	HTTP_M_DELETE,
	HTTP_M_PATCH,
	HTTP_M_TRACE,
	HTTP_M_CONNECT,
};

struct http_header {
	struct span name;  /* token, case as sent */
	struct span value; /* without leading and trailing whitespace */
};

struct http_request {
	enum http_method method;
	struct span method_name;
	struct span target;   /* as sent: "/path?query", "http://h/path", "*" */
	struct span path;     /* "/path" (absolute-form: the part after the authority) */
	struct span query;    /* after '?', without it; empty when none */
	bool has_query;
	unsigned version_minor; /* HTTP/1.x */
	struct http_header headers[HTTP_HEADERS_MAX];
	size_t nheaders;
	struct span host;     /* the Host field (or the absolute-form authority) */
	bool has_content_length;
	uint64_t content_length;
	bool keep_alive;      /* RFC 9112 9.3: 1.1 unless "close"; 1.0 only with "keep-alive" */
	bool expect_continue; /* Expect: 100-continue */
	size_t head_len;      /* request line + header section + empty line */
	/* HTTP_PARSE_INVALID / TOO_LONG: the status to answer (400, 411, 413,
	 * 414, 417, 431, 501, 505); 0 otherwise. */
	int status;
};

/* Resumable state: how far the end of the head has been looked for, so a
 * head that arrives a byte at a time is scanned once, not once per byte.
 * Zero it before a request; it stays valid while the bytes the caller
 * passes keep their start (the same request at the same offset). */
struct http_parse_state {
	size_t scanned;
	bool line_checked; /* the request line was seen and is valid */
};

/* Parses the head of the request at the start of in.
 * HTTP_PARSE_OK: *req describes it (spans into in), req->head_len bytes
 * form the head; the body, if any, is the next req->content_length bytes.
 * HTTP_PARSE_AGAIN: nothing filled in but the state; call again with more.
 * HTTP_PARSE_INVALID / HTTP_PARSE_TOO_LONG: req->status says which error
 * response is due; the connection cannot be resynchronised. */
enum http_parse_result http_parse_request(struct span in, struct http_parse_state *st,
					  struct http_request *req);

/* The request's first header named name (case-insensitive), or NULL. The
 * pointer is valid as long as req. */
const struct http_header *http_request_header(const struct http_request *req, struct span name);

/* Finds a query parameter (application/x-www-form-urlencoded, name matched
 * case-insensitively, undecoded). Returns true and the raw value in
 * *value_r (into the request's buffer), or false. */
bool http_query_param(struct span query, struct span name, struct span *value_r);

/* Percent-decodes in (and '+' to a space when form is set) into out (cap
 * bytes). Returns the decoded length, or -1 on a malformed escape, a NUL,
 * or when out is too small. */
ptrdiff_t http_percent_decode(struct span in, bool form, uint8_t *out, size_t cap);

/* The reason phrase of a status code ("Not Found"); "Unknown" otherwise. */
const char *http_status_reason(int status);

/* "GET"; "?" for HTTP_M_UNKNOWN. */
const char *http_method_str(enum http_method m);

#endif
