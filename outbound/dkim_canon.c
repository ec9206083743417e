/* dkim_canon.c - relaxed canonicalization (see dkim_canon.h). */
#include "outbound/dkim_canon.h"

#include <string.h>

static const uint8_t CRLF[2] = { '\r', '\n' };
static const uint8_t SP[1] = { ' ' };
static const uint8_t CR[1] = { '\r' };

static bool is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

size_t dkim_canon_header(const uint8_t *field, size_t len, bool crlf, uint8_t *out)
{
	const uint8_t *colon = memchr(field, ':', len);
	if (!colon)
		return 0;
	size_t nlen = (size_t)(colon - field), o = 0;
	while (nlen && is_wsp(field[nlen - 1]))
		nlen--;
	for (size_t i = 0; i < nlen; i++) {
		uint8_t c = field[i];
		out[o++] = c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
	}
	out[o++] = ':';
	/* Unfold (drop each CRLF), then one SP per whitespace run, none at the
	 * start or the end of the value. */
	bool started = false, sp = false;
	for (size_t i = (size_t)(colon - field) + 1; i < len; i++) {
		uint8_t c = field[i];
		if (c == '\r' && i + 1 < len && field[i + 1] == '\n') {
			i++;
			continue;
		}
		if (is_wsp(c)) {
			sp = started;
			continue;
		}
		if (sp)
			out[o++] = ' ';
		out[o++] = c;
		started = true;
		sp = false;
	}
	if (crlf) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	return o;
}

/* Emits what a line's next data byte needs in front of it: the empty lines
 * held back (they were not trailing after all) and one SP for a whitespace
 * run. */
static void prefix(struct dkim_body_canon *c, dkim_emit_fn *emit, void *arg)
{
	if (!c->content)
		for (; c->empty_lines; c->empty_lines--)
			emit(arg, CRLF, 2);
	if (c->wsp) {
		emit(arg, SP, 1);
		c->wsp = false;
	}
	c->content = true;
}

static void line_end(struct dkim_body_canon *c, dkim_emit_fn *emit, void *arg)
{
	c->wsp = false; /* trailing whitespace is dropped */
	if (c->content)
		emit(arg, CRLF, 2);
	else
		c->empty_lines++;
	c->content = false;
}

void dkim_body_canon_feed(struct dkim_body_canon *c, const uint8_t *p, size_t len,
			  dkim_emit_fn *emit, void *arg)
{
	/* p[run..i) are ordinary bytes seen in a state that emits them as they
	 * are: they go out in one piece. */
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		uint8_t ch = p[i];
		if (c->cr) { /* run == i here: the CR flushed it */
			c->cr = false;
			if (ch == '\n') {
				line_end(c, emit, arg);
				run = i + 1;
				continue;
			}
			prefix(c, emit, arg);
			emit(arg, CR, 1); /* a CR not followed by LF is data */
		}
		if (ch == '\r' || is_wsp(ch)) {
			if (i > run)
				emit(arg, p + run, i - run);
			run = i + 1;
			if (ch == '\r')
				c->cr = true;
			else
				c->wsp = true;
			continue;
		}
		if (c->wsp || !c->content) {
			if (i > run)
				emit(arg, p + run, i - run);
			prefix(c, emit, arg);
			run = i;
		}
	}
	if (len > run)
		emit(arg, p + run, len - run);
}

void dkim_body_canon_finish(struct dkim_body_canon *c, dkim_emit_fn *emit, void *arg)
{
	if (c->cr) {
		c->cr = false;
		prefix(c, emit, arg);
		emit(arg, CR, 1);
	}
	if (c->content)
		emit(arg, CRLF, 2);
	*c = DKIM_BODY_CANON_INIT;
}
