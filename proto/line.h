/* line.h - finding the end of a protocol line in place. */
#ifndef RINGMAIL_PROTO_LINE_H
#define RINGMAIL_PROTO_LINE_H

#include <string.h>
#include <sys/types.h>

#include "core/span.h"

/* Looks for LF in the first max bytes of in. Returns the line's length
 * including the LF, 0 when no LF yet and fewer than max bytes are there
 * (need more), or -1 when max bytes hold no LF (the line is too long).
 * *text_r gets the line without CR LF (or bare LF). The span points into in
 * and is valid as long as in. */
static inline ssize_t line_next(struct span in, size_t max, struct span *text_r)
{
	size_t lim = in.len < max ? in.len : max;
	const uint8_t *lf = memchr(in.p, '\n', lim);
	if (!lf)
		return in.len >= max ? -1 : 0;
	size_t n = (size_t)(lf - in.p);
	size_t t = n;
	if (t > 0 && in.p[t - 1] == '\r')
		t--;
	*text_r = span_make(in.p, t);
	return (ssize_t)(n + 1);
}

/* Bytes to skip to get past an over-long line: up to and including the
 * next LF, or everything when there is none yet. */
static inline size_t line_skip(struct span in)
{
	const uint8_t *lf = memchr(in.p, '\n', in.len);
	return lf ? (size_t)(lf - in.p) + 1 : in.len;
}

#endif
