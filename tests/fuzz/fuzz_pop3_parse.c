/* fuzz_pop3_parse.c - libFuzzer target for proto/pop3_parse.c.
 *
 * The input is used twice: as a command line (parse, split the arguments,
 * read each as a number), and as message bytes through the body filter
 * (RETR and TOP, output buffers of several sizes, split at a point taken
 * from the input). Invariants checked: the filter makes progress, writes
 * only within its buffer, every LF it writes follows a CR, and its output
 * with the stuffing and the CRs added before bare LFs undone is exactly
 * the input (RETR) or a prefix of it (TOP). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/pop3_parse.h"

static void body(const uint8_t *data, size_t size, bool top, uint64_t lines, size_t cap,
		 size_t cut)
{
	uint8_t *out = malloc(size * 2 + 2), *ob = malloc(cap);
	size_t olen = 0;
	struct pop3_body b;
	pop3_body_init(&b, top, lines);
	size_t parts[2][2] = { { 0, cut }, { cut, size } };
	for (int p = 0; p < 2 && !b.done; p++) {
		struct span s = span_make(data + parts[p][0], parts[p][1] - parts[p][0]);
		while (s.len && !b.done) {
			size_t n;
			size_t used = pop3_body_filter(&b, s, ob, cap, &n);
			if (!used && !n && !b.done)
				abort(); /* no progress */
			if (n > cap || olen + n > size * 2)
				abort();
			memcpy(out + olen, ob, n);
			olen += n;
			s = span_skip(s, used);
		}
	}
	/* Undo the stuffing: a '.' at a line start was doubled. */
	size_t i = 0, k = 0;
	bool ls = true;
	while (i < olen) {
		if (ls && out[i] == '.') {
			if (i + 1 >= olen || out[i + 1] != '.')
				abort();
			i++;
		}
		if (k < size && data[k] == '\n' && (k == 0 || data[k - 1] != '\r')) {
			/* a bare LF: a CR was added before it */
			if (out[i] != '\r' || i + 1 >= olen)
				abort();
			i++;
		}
		if (k >= size || out[i] != data[k])
			abort();
		if (out[i] == '\n' && (i == 0 || out[i - 1] != '\r'))
			abort();
		ls = out[i] == '\n';
		i++;
		k++;
	}
	if (!top && k != size)
		abort();
	free(out);
	free(ob);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pop3_cmd cmd;
	if (pop3_parse_command(span_make(data, size), &cmd) == POP3_PARSE_OK) {
		struct span a[3];
		size_t n;
		(void)pop3_verb_str(cmd.verb);
		if (pop3_parse_args(cmd.args, a, 3, &n) == POP3_PARSE_OK) {
			for (size_t i = 0; i < n; i++) {
				uint32_t v;
				(void)pop3_parse_number(a[i], &v);
			}
		}
	}
	size_t cut = size ? data[0] % (size + 1) : 0;
	uint64_t lines = size > 1 ? data[1] % 8 : 0;
	body(data, size, false, 0, 4096, cut);
	body(data, size, true, lines, 4096, cut);
	body(data, size, false, 0, 2, size / 2);
	body(data, size, true, lines, 3, size / 3);
	return 0;
}
