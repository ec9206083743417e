/* pop3_parse.c - the POP3 command parser and the message body filter
 * (see pop3_parse.h). */
#include "proto/pop3_parse.h"

#include <errno.h>
#include <string.h>

static const char *const verb_names[] = {
	[POP3_CMD_UNKNOWN] = "?",
	[POP3_CMD_USER] = "USER", [POP3_CMD_PASS] = "PASS", [POP3_CMD_APOP] = "APOP",
	[POP3_CMD_AUTH] = "AUTH", [POP3_CMD_STAT] = "STAT", [POP3_CMD_LIST] = "LIST",
	[POP3_CMD_RETR] = "RETR", [POP3_CMD_DELE] = "DELE", [POP3_CMD_NOOP] = "NOOP",
	[POP3_CMD_RSET] = "RSET", [POP3_CMD_QUIT] = "QUIT", [POP3_CMD_TOP] = "TOP",
	[POP3_CMD_UIDL] = "UIDL", [POP3_CMD_CAPA] = "CAPA", [POP3_CMD_STLS] = "STLS",
};

const char *pop3_verb_str(enum pop3_verb v)
{
	return (unsigned)v < sizeof(verb_names) / sizeof(verb_names[0]) ? verb_names[v] : "?";
}

enum pop3_parse_result pop3_parse_command(struct span line, struct pop3_cmd *cmd_r)
{
	memset(cmd_r, 0, sizeof(*cmd_r));
	if (line.len == 0)
		return POP3_PARSE_INVALID;
	if (memchr(line.p, '\0', line.len) || memchr(line.p, '\r', line.len))
		return POP3_PARSE_INVALID;
	const uint8_t *sp = memchr(line.p, ' ', line.len);
	size_t klen = sp ? (size_t)(sp - line.p) : line.len;
	cmd_r->keyword = span_make(line.p, klen);
	if (sp) {
		cmd_r->has_args = true;
		cmd_r->args = span_skip(line, klen + 1);
	}
	if (klen < 3 || klen > 4)
		return POP3_PARSE_OK;
	for (size_t v = POP3_CMD_USER; v < sizeof(verb_names) / sizeof(verb_names[0]); v++) {
		if (span_eq_nocase(cmd_r->keyword, span_cstr(verb_names[v]))) {
			cmd_r->verb = (enum pop3_verb)v;
			break;
		}
	}
	return POP3_PARSE_OK;
}

enum pop3_parse_result pop3_parse_args(struct span args, struct span *out, size_t max,
				       size_t *n_r)
{
	size_t n = 0, i = 0;
	while (args.len && args.p[args.len - 1] == ' ')
		args.len--;
	*n_r = 0;
	while (i < args.len) {
		size_t start = i;
		while (i < args.len && args.p[i] != ' ')
			i++;
		if (i == start)
			return POP3_PARSE_INVALID; /* two spaces in a row */
		if (n == max)
			return POP3_PARSE_INVALID;
		if (i - start > POP3_ARG_MAX)
			return POP3_PARSE_TOO_LONG;
		out[n++] = span_make(args.p + start, i - start);
		if (i < args.len)
			i++; /* the separating space */
	}
	*n_r = n;
	return POP3_PARSE_OK;
}

int pop3_parse_number(struct span s, uint32_t *n_r)
{
	uint64_t v = 0;
	if (s.len == 0 || s.len > 10)
		return s.len > 10 ? -ERANGE : -EINVAL;
	for (size_t i = 0; i < s.len; i++) {
		if (s.p[i] < '0' || s.p[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(s.p[i] - '0');
	}
	if (v > UINT32_MAX)
		return -ERANGE;
	*n_r = (uint32_t)v;
	return 0;
}

/* ---- the body filter ------------------------------------------------- */

void pop3_body_init(struct pop3_body *b, bool top, uint64_t lines)
{
	memset(b, 0, sizeof(*b));
	b->top = top;
	b->lines_left = lines;
	b->line_start = true;
	b->last = '\n'; /* an empty message needs no CRLF before the "." */
}

size_t pop3_body_filter(struct pop3_body *b, struct span in, uint8_t *out, size_t cap,
			size_t *out_len_r)
{
	size_t i = 0, o = 0;

	while (i < in.len && !b->done) {
		if (!b->line_start) {
			/* Inside a line nothing changes but the bytes: copy up to
			 * the next LF at once instead of byte by byte. */
			const uint8_t *nl = memchr(in.p + i, '\n', in.len - i);
			size_t run = nl ? (size_t)(nl - (in.p + i)) : in.len - i;
			if (run > cap - o)
				run = cap - o;
			if (run > 0) {
				memcpy(out + o, in.p + i, run);
				o += run;
				i += run;
				b->last = in.p[i - 1];
				b->line_cr = false;
				continue;
			}
		}
		uint8_t c = in.p[i];
		bool stuff = b->line_start && c == '.';
		/* A bare LF (a message appended over IMAP may hold them) goes
		 * out as CRLF: POP3 lines end in CRLF, and the terminating
		 * "." must follow one (RFC 1939 3). */
		bool cr = c == '\n' && b->last != '\r';
		if (cap - o < 1u + stuff + cr)
			break;
		if (stuff)
			out[o++] = '.';
		if (cr)
			out[o++] = '\r';
		out[o++] = c;
		i++;
		b->last = c;
		if (c == '\n') {
			if (b->in_body) {
				if (b->top && b->lines_left > 0)
					b->lines_left--;
			} else if (b->line_start || b->line_cr) {
				b->in_body = true; /* the blank line after the headers */
			}
			if (b->top && b->in_body && b->lines_left == 0)
				b->done = true;
			b->line_start = true;
			b->line_cr = false;
			continue;
		}
		b->line_cr = b->line_start && c == '\r';
		b->line_start = false;
	}
	*out_len_r = o;
	return i;
}
