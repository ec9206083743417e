#include "proto/session_util.h"

#include "proto/line.h"

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
