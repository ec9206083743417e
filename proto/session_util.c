#include "proto/session_util.h"

#include <string.h>

#include "proto/line.h"

bool session_http_request_line(struct span line)
{
	static const char *const methods[] = {
		"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ",
		"OPTIONS ", "TRACE ", "PATCH ",
	};
	size_t m = 0;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]) && !m; i++) {
		size_t n = strlen(methods[i]);
		if (line.len >= n && !memcmp(line.p, methods[i], n))
			m = n;
	}
	if (!m)
		return false;
	/* the last word: "HTTP/" and a version */
	const uint8_t *sp = NULL;
	for (size_t i = line.len; i > m; i--)
		if (line.p[i - 1] == ' ') {
			sp = line.p + i - 1;
			break;
		}
	size_t rest = sp ? (size_t)(line.p + line.len - sp - 1) : 0;
	return sp && sp > line.p + m && rest > 5 && !memcmp(sp + 1, "HTTP/", 5);
}

enum line_result line_reader_next(struct line_reader *r, struct span in, size_t *pos,
				  struct span *text_r)
{
	struct span rest = span_skip(in, *pos);

	if (r->skipping) {
		size_t n = line_skip(rest);
		*pos += n;
		if (n == 0 || rest.p[n - 1] != '\n')
			return LINE_AGAIN; /* still inside the long line */
		r->skipping = false;
		rest = span_skip(in, *pos);
	}
	ssize_t n = line_next(rest, r->max, text_r);
	if (n > 0) {
		*pos += (size_t)n;
		return LINE_OK;
	}
	if (n == 0)
		return LINE_AGAIN;
	/* Too long: drop what we have; keep dropping up to the LF. */
	size_t skip = line_skip(rest);
	*pos += skip;
	r->skipping = rest.p[skip - 1] != '\n';
	return LINE_TOO_LONG;
}
