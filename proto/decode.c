/* decode.c - streaming base64 and quoted-printable decoders (see decode.h). */
#include "proto/decode.h"

#include <stdbool.h>
#include <string.h>

/* The value of a base64 character, or -1. */
static int b64_val(uint8_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

void decode_b64_init(struct decode_b64 *d)
{
	d->acc = 0;
	d->n = 0;
}

size_t decode_b64_feed(struct decode_b64 *d, struct span in, uint8_t *out)
{
	size_t o = 0;
	for (size_t i = 0; i < in.len; i++) {
		uint8_t c = in.p[i];
		if (c == '=') {
			/* Padding: the bytes of the quantum are out already (two
			 * sextets give one, three give two); drop the rest. */
			d->acc = 0;
			d->n = 0;
			continue;
		}
		int v = b64_val(c);
		if (v < 0)
			continue;
		d->acc = d->acc << 6 | (uint32_t)v;
		switch (++d->n) {
		case 2:
			out[o++] = (uint8_t)(d->acc >> 4);
			break;
		case 3:
			out[o++] = (uint8_t)(d->acc >> 2);
			break;
		case 4:
			out[o++] = (uint8_t)d->acc;
			d->acc = 0;
			d->n = 0;
			break;
		}
	}
	return o;
}

enum { QP_TEXT, QP_EQ, QP_HEX, QP_SOFT_WS, QP_SOFT_CR };

static int hex_val(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

void decode_qp_init(struct decode_qp *d)
{
	d->state = QP_TEXT;
	d->hex = 0;
	d->nws = 0;
}

/* Writes the whitespace held back: it did not end its line. */
static size_t qp_ws_flush(struct decode_qp *d, uint8_t *out)
{
	size_t n = d->nws;
	if (n)
		memcpy(out, d->ws, n);
	d->nws = 0;
	return n;
}

size_t decode_qp_feed(struct decode_qp *d, struct span in, uint8_t *out)
{
	size_t o = 0;
	for (size_t i = 0; i < in.len; i++) {
		uint8_t c = in.p[i];
		switch (d->state) {
		case QP_TEXT:
			if (c == ' ' || c == '\t') {
				if (d->nws == DECODE_QP_WS_MAX)
					o += qp_ws_flush(d, out + o);
				d->ws[d->nws++] = c;
				break;
			}
			if (c == '\r' || c == '\n')
				d->nws = 0; /* trailing: transport padding */
			else
				o += qp_ws_flush(d, out + o);
			if (c == '=')
				d->state = QP_EQ;
			else
				out[o++] = c;
			break;
		case QP_EQ:
			if (hex_val(c) >= 0) {
				d->hex = c;
				d->state = QP_HEX;
			} else if (c == ' ' || c == '\t') {
				d->state = QP_SOFT_WS;
			} else if (c == '\r') {
				d->state = QP_SOFT_CR;
			} else if (c == '\n') {
				d->state = QP_TEXT;
			} else {
				/* Not an escape: keep it as sent. */
				out[o++] = '=';
				d->state = QP_TEXT;
				i--;
			}
			break;
		case QP_HEX:
			if (hex_val(c) >= 0) {
				out[o++] = (uint8_t)(hex_val(d->hex) << 4 | hex_val(c));
				d->state = QP_TEXT;
			} else {
				out[o++] = '=';
				out[o++] = d->hex;
				d->state = QP_TEXT;
				i--;
			}
			break;
		case QP_SOFT_WS:
			/* "=" then transport padding: a soft break if a line
			 * break follows; otherwise the spaces are dropped. */
			if (c == '\r')
				d->state = QP_SOFT_CR;
			else if (c == '\n')
				d->state = QP_TEXT;
			else if (c != ' ' && c != '\t') {
				d->state = QP_TEXT;
				i--;
			}
			break;
		case QP_SOFT_CR:
			d->state = QP_TEXT;
			if (c != '\n')
				i--; /* "=\r" alone: a soft break all the same */
			break;
		}
	}
	return o;
}

size_t decode_qp_finish(struct decode_qp *d, uint8_t *out)
{
	size_t o = 0;
	d->nws = 0; /* the last line's trailing whitespace */
	if (d->state == QP_EQ) {
		out[o++] = '=';
	} else if (d->state == QP_HEX) {
		out[o++] = '=';
		out[o++] = d->hex;
	}
	d->state = QP_TEXT;
	return o;
}

/* The value without comments and surrounding whitespace, if it is one
 * token; false when something else is left (two words, an unclosed
 * comment). */
static bool cte_token(struct span v, struct span *tok_r)
{
	size_t start = 0, end = 0, depth = 0;
	bool seen = false, after = false;
	for (size_t i = 0; i < v.len; i++) {
		uint8_t c = v.p[i];
		if (depth) {
			if (c == '\\' && i + 1 < v.len)
				i++;
			else if (c == '(')
				depth++;
			else if (c == ')')
				depth--;
			if (seen)
				after = true;
			continue;
		}
		if (c == '(') {
			depth = 1;
			if (seen)
				after = true;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			if (seen)
				after = true;
			continue;
		}
		if (after)
			return false; /* a second word */
		if (!seen)
			start = i;
		seen = true;
		end = i + 1;
	}
	if (depth)
		return false;
	*tok_r = span_make(v.p + start, seen ? end - start : 0);
	return true;
}

enum decode_cte decode_cte_parse(struct span v)
{
	struct span t;
	if (!cte_token(v, &t))
		return DECODE_CTE_UNKNOWN;
	if (t.len == 0 || span_eq_nocase(t, SPAN_LIT("7bit")) ||
	    span_eq_nocase(t, SPAN_LIT("8bit")) || span_eq_nocase(t, SPAN_LIT("binary")))
		return DECODE_CTE_IDENTITY;
	if (span_eq_nocase(t, SPAN_LIT("base64")))
		return DECODE_CTE_BASE64;
	if (span_eq_nocase(t, SPAN_LIT("quoted-printable")))
		return DECODE_CTE_QP;
	return DECODE_CTE_UNKNOWN;
}

void decode_init(struct decode *d, enum decode_cte cte)
{
	d->cte = (uint8_t)cte;
	decode_b64_init(&d->b64);
	decode_qp_init(&d->qp);
}

size_t decode_feed(struct decode *d, struct span in, uint8_t *out)
{
	switch (d->cte) {
	case DECODE_CTE_BASE64:
		return decode_b64_feed(&d->b64, in, out);
	case DECODE_CTE_QP:
		return decode_qp_feed(&d->qp, in, out);
	default:
		if (in.len)
			memcpy(out, in.p, in.len);
		return in.len;
	}
}

size_t decode_finish(struct decode *d, uint8_t *out)
{
	return d->cte == DECODE_CTE_QP ? decode_qp_finish(&d->qp, out) : 0;
}
