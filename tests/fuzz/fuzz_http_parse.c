/* libFuzzer target for proto/http_parse.c.
 *
 * Input: bytes 0-1 = split offset, the rest = a byte stream from a client.
 *
 * 1. The stream parsed whole, in an exact-size buffer; while it yields
 *    complete requests (head + Content-Length body) the next one is parsed,
 *    as the session does with pipelined requests. Asserted: OK heads lie
 *    inside the buffer, every span of the request points into it, the body
 *    fits HTTP_BODY_MAX, errors carry a 4xx/5xx status.
 * 2. The first request parsed again in two steps, the first piece ending at
 *    the chosen split, with the parse state carried over (the session's way)
 *    and with a fresh one: the final result, status and head length must
 *    equal the whole run's; a prefix gives AGAIN or the same error.
 * 3. The query of every OK request through http_query_param and
 *    http_percent_decode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_parse.h"

#define CHECK(x)                                                              \
	do {                                                                  \
		if (!(x))                                                     \
			__builtin_trap();                                     \
	} while (0)

static void check_span(struct span s, const uint8_t *buf, size_t len)
{
	if (s.len == 0)
		return;
	/* static literals ("/", "") are allowed for absolute-form targets */
	if (s.p >= buf && s.p < buf + len)
		CHECK(s.p + s.len <= buf + len);
}

static void check_request(const struct http_request *req, const uint8_t *buf, size_t len)
{
	CHECK(req->head_len > 0 && req->head_len <= len);
	CHECK(req->content_length <= HTTP_BODY_MAX);
	CHECK(req->nheaders <= HTTP_HEADERS_MAX);
	check_span(req->method_name, buf, len);
	check_span(req->target, buf, len);
	check_span(req->path, buf, len);
	check_span(req->query, buf, len);
	check_span(req->host, buf, len);
	for (size_t i = 0; i < req->nheaders; i++) {
		check_span(req->headers[i].name, buf, len);
		check_span(req->headers[i].value, buf, len);
		CHECK(req->headers[i].name.len > 0);
	}
	if (req->has_query) {
		struct span v;
		uint8_t out[512];
		if (http_query_param(req->query, SPAN_LIT("emailaddress"), &v)) {
			check_span(v, buf, len);
			ptrdiff_t n = http_percent_decode(v, false, out, sizeof(out));
			CHECK(n <= (ptrdiff_t)v.len && n <= (ptrdiff_t)sizeof(out));
			n = http_percent_decode(v, true, out, sizeof(out));
			CHECK(n <= (ptrdiff_t)v.len);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t split = (size_t)data[0] | (size_t)data[1] << 8;
	data += 2;
	size -= 2;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);

	/* 1. whole, pipelined */
	struct http_request req, first;
	enum http_parse_result first_r = HTTP_PARSE_AGAIN;
	size_t off = 0;
	for (int n = 0; off <= size; n++) {
		struct http_parse_state st = { 0 };
		enum http_parse_result r =
			http_parse_request(span_make(buf + off, size - off), &st, &req);
		if (n == 0) {
			first_r = r;
			first = req;
		}
		if (r == HTTP_PARSE_INVALID || r == HTTP_PARSE_TOO_LONG)
			CHECK(req.status >= 400 && req.status <= 505);
		if (r != HTTP_PARSE_OK)
			break;
		check_request(&req, buf + off, size - off);
		size_t total = req.head_len + (size_t)req.content_length;
		if (total > size - off)
			break;
		off += total;
	}

	/* 2. the first request in two steps */
	if (size > 0) {
		split %= size + 1;
		for (int mode = 0; mode < 2; mode++) {
			struct http_parse_state st = { 0 };
			uint8_t *part = malloc(split ? split : 1);
			if (!part)
				break;
			memcpy(part, data, split);
			enum http_parse_result r = http_parse_request(span_make(part, split), &st, &req);
			free(part);
			if (r != HTTP_PARSE_AGAIN) {
				CHECK(r == first_r);
				if (r == HTTP_PARSE_OK)
					CHECK(req.head_len == first.head_len);
				else
					CHECK(req.status == first.status);
				continue;
			}
			if (mode == 1)
				memset(&st, 0, sizeof(st));
			r = http_parse_request(span_make(buf, size), &st, &req);
			CHECK(r == first_r);
			if (r == HTTP_PARSE_OK) {
				CHECK(req.head_len == first.head_len);
				CHECK(req.content_length == first.content_length);
				CHECK(req.keep_alive == first.keep_alive);
			} else if (r != HTTP_PARSE_AGAIN) {
				CHECK(req.status == first.status);
			}
		}
	}
	free(buf);
	return 0;
}
