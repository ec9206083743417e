/* fuzz_dkim_canon.c - libFuzzer target for outbound/dkim_canon.c.
 *
 * The input is a body, fed to the relaxed canonicalizer whole and split at
 * two points taken from its first bytes; and a header field. Invariants:
 * every split gives the same output as the whole; the output is at most
 * the input plus 2 bytes; it is empty or ends in CRLF, never in an empty
 * line; no line has whitespace before its CRLF, and no run of two
 * whitespace bytes survives. The header output fits len + 3, has a
 * lower-case name, and no whitespace around the colon or at its end. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "outbound/dkim_canon.h"

struct out {
	uint8_t *p;
	size_t len, cap;
};

static void collect(void *arg, const uint8_t *p, size_t len)
{
	struct out *o = arg;
	if (o->len + len > o->cap)
		abort(); /* more than input + 2 */
	memcpy(o->p + o->len, p, len);
	o->len += len;
}

static void run(const uint8_t *d, size_t n, size_t a, size_t b, struct out *o)
{
	struct dkim_body_canon c = DKIM_BODY_CANON_INIT;
	o->len = 0;
	dkim_body_canon_feed(&c, d, a, collect, o);
	dkim_body_canon_feed(&c, d + a, b - a, collect, o);
	dkim_body_canon_feed(&c, d + b, n - b, collect, o);
	dkim_body_canon_finish(&c, collect, o);
}

static bool wsp(uint8_t c)
{
	return c == ' ' || c == '\t';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t a = size ? data[0] % (size + 1) : 0;
	size_t b = size > 1 ? data[1] % (size + 1) : size;
	if (a > b) {
		size_t t = a;
		a = b;
		b = t;
	}
	struct out whole = { malloc(size + 3), 0, size + 2 };
	struct out split = { malloc(size + 3), 0, size + 2 };
	run(data, size, size, size, &whole);
	run(data, size, a, b, &split);
	if (whole.len != split.len || memcmp(whole.p, split.p, whole.len))
		abort();
	const uint8_t *o = whole.p;
	size_t n = whole.len;
	if (n && (n < 2 || o[n - 2] != '\r' || o[n - 1] != '\n'))
		abort();
	if (n == 2 || (n >= 4 && !memcmp(o + n - 4, "\r\n\r\n", 4)))
		abort(); /* a trailing empty line survived */
	for (size_t i = 0; i < n; i++) {
		if (o[i] == '\t' || (wsp(o[i]) && i + 1 < n && wsp(o[i + 1])))
			abort();
		if (o[i] == ' ' && i + 2 < n && o[i + 1] == '\r' && o[i + 2] == '\n')
			abort();
	}

	uint8_t *h = malloc(size + 3);
	size_t hn = dkim_canon_header(data, size, true, h);
	if (hn) {
		if (hn > size + 2)
			abort();
		uint8_t *colon = memchr(h, ':', hn);
		if (!colon || (colon > h && wsp(colon[-1])) || (colon[1] != '\r' && wsp(colon[1])))
			abort();
		for (uint8_t *p = h; p < colon; p++)
			if (*p >= 'A' && *p <= 'Z')
				abort();
		if (h[hn - 2] != '\r' || h[hn - 1] != '\n' || (hn >= 3 && wsp(h[hn - 3])))
			abort();
	}
	free(h);
	free(whole.p);
	free(split.p);
	return 0;
}
