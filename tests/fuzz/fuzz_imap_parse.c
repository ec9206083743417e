/* fuzz_imap_parse.c - libFuzzer target for proto/imap_parse.c.
 *
 * The input is tokenized whole and split at a point taken from its first
 * two bytes: both token streams (literal data merged) must be identical,
 * every token must lie inside the input, and the parser must always make
 * progress or say AGAIN / INVALID / TOO_LONG. The input is also read as a
 * sequence set, as a BINARY section part (only digits and single dots
 * pass), as a BODY section (a superset of those) and as a mailbox name:
 * a strict modified UTF-7 decode must encode back to the same bytes, and
 * UTF-8 that encodes must decode back. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/imap_parse.h"

/* Writes a digest of the token stream to out; returns its length. */
static size_t run(const uint8_t *data, size_t size, size_t split, size_t line_max,
		  uint8_t *out, size_t cap)
{
	struct imap_parser p;
	imap_parser_init(&p, line_max);
	size_t pos = 0, avail = split < size ? split : size, o = 0;
	for (;;) {
		struct imap_token t;
		size_t used;
		struct span in = span_make(data + pos, avail - pos);
		enum imap_parse_result r = imap_parse_next(&p, in, &used, &t);
		if (r == IMAP_PARSE_AGAIN) {
			if (used)
				abort();
			if (avail == size)
				break;
			avail = size;
			continue;
		}
		if (r != IMAP_PARSE_OK) {
			if (used)
				abort();
			if (o < cap)
				out[o++] = '!'; /* INVALID or TOO_LONG: which one is seen first may depend on the split */
			size_t skip;
			if (imap_parse_skip_line(&p, span_make(data + pos, size - pos), &skip) ==
			    IMAP_PARSE_AGAIN)
				break;
			pos += skip;
			if (avail < pos)
				avail = pos;
			continue;
		}
		if (used > in.len)
			abort();
		if (t.text.len && (t.text.p < in.p || t.text.p + t.text.len > in.p + in.len))
			abort();
		if (used == 0 && !(t.type == IMAP_TOK_LITERAL_DATA && t.last))
			abort(); /* no progress */
		pos += used;
		if (o + 2 + t.text.len + 20 > cap)
			break;
		if (t.type != IMAP_TOK_LITERAL_DATA)
			out[o++] = (uint8_t)('A' + t.type);
		if (t.type == IMAP_TOK_LITERAL)
			o += (size_t)snprintf((char *)out + o, cap - o, "%llu%d%d",
					      (unsigned long long)t.size, t.nonsync, t.binary);
		else if (t.text.len) {
			memcpy(out + o, t.text.p, t.text.len);
			o += t.text.len;
		}
		if (t.type == IMAP_TOK_QUOTED) {
			uint8_t *u = malloc(t.text.len + 1);
			if (imap_unquote(t.text, u) > t.text.len)
				abort();
			free(u);
		}
	}
	return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t split = size >= 2 ? ((size_t)data[0] << 8 | data[1]) % (size + 1) : 0;
	size_t cap = size * 2 + 64;
	uint8_t *a = malloc(cap), *b = malloc(cap);
	for (size_t max = 64; max <= IMAP_LINE_MAX; max *= 32) {
		size_t na = run(data, size, size, max, a, cap);
		size_t nb = run(data, size, split, max, b, cap);
		if (na != nb || memcmp(a, b, na) != 0)
			abort();
	}
	free(a);
	free(b);

	struct imap_range r[16];
	size_t n;
	if (imap_parse_seqset(span_make(data, size), r, 16, &n) == 0) {
		if (n == 0 || n > 16)
			abort();
		(void)imap_seqset_contains(r, n, 5, 10);
	}

	/* a section-binary's inside: empty, or nz-numbers joined by dots */
	if (imap_parse_section_part(span_make(data, size)) == 0 && size) {
		if (data[0] == '.' || data[size - 1] == '.')
			abort();
		for (size_t i = 0; i < size; i++) {
			bool start = i == 0 || data[i - 1] == '.';
			if (data[i] == '.' ? start : (data[i] < '0' || data[i] > '9' ||
						       (start && data[i] == '0')))
				abort();
		}
	}

	/* a BODY section's inside: every section-part is one, and nothing
	 * accepted holds "]", CR or LF (it must fit in one atom token) */
	if (imap_parse_section(span_make(data, size)) == 0) {
		if (memchr(data, ']', size) || memchr(data, '\r', size) || memchr(data, '\n', size))
			abort();
	} else if (imap_parse_section_part(span_make(data, size)) == 0) {
		abort();
	}

	/* a new mailbox name: accepted means non-empty, no "/" first or last,
	 * no "//"; CREATE drops at most one trailing "/" */
	for (int create = 0; create < 2; create++) {
		size_t nl = SIZE_MAX;
		if (imap_new_name_check(span_make(data, size), create, &nl) == NULL) {
			if (nl == 0 || nl > size || data[0] == '/' || data[nl - 1] == '/' ||
			    (!create && nl != size) || (create && size - nl > 1) ||
			    memmem(data, nl, "//", 2))
				abort();
		}
	}

	size_t ocap = size * 4 + 8;
	uint8_t *u8 = malloc(ocap), *u7 = malloc(ocap * 2);
	ssize_t d = imap_mutf7_decode(span_make(data, size), u8, ocap);
	if (d >= 0) {
		ssize_t e = imap_mutf7_encode(span_make(u8, (size_t)d), u7, ocap * 2);
		if (e != (ssize_t)size || memcmp(u7, data, size) != 0)
			abort(); /* strict: one spelling per name */
	}
	ssize_t e = imap_mutf7_encode(span_make(data, size), u7, ocap * 2);
	if (e >= 0) {
		d = imap_mutf7_decode(span_make(u7, (size_t)e), u8, ocap);
		if (d != (ssize_t)size || memcmp(u8, data, size) != 0)
			abort();
	}
	/* a UTF-8 name (IMAP4rev2) is exactly what modified UTF-7 can encode,
	 * and is well-formed UTF-8 */
	ssize_t un = imap_utf8_name(span_make(data, size), u8, ocap);
	if ((un >= 0) != (e >= 0) || (un >= 0 && !imap_utf8_valid(span_make(data, size))))
		abort();
	free(u8);
	free(u7);
	return 0;
}
