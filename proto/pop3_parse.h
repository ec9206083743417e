/* pop3_parse.h - the POP3 command parser and the message body filter.
 *
 * Pure functions: spans in, spans or bytes out; no allocation, no I/O, no
 * globals. Spans returned point into the caller's line and are valid as
 * long as it is. Lines come without their CRLF (session_util.h's
 * line_reader_next() cuts them). */
#ifndef RINGMAIL_PROTO_POP3_PARSE_H
#define RINGMAIL_PROTO_POP3_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* RFC 2449 4: a command line is at most 255 octets, CRLF included. The
 * default of the [limits] setting pop3_line_max, which may lower it (to
 * 128) or raise it (to POP3_AUTH_LINE_MAX). */
#define POP3_LINE_MAX 255
/* RFC 1939 3: each argument up to 40 characters. */
#define POP3_ARG_MAX 40
/* AUTH lines (and their "+ " continuations) carry base64 SASL messages
 * longer than POP3_LINE_MAX (RFC 5034 4: the 255-octet limit does not
 * apply): room for a full RFC 4616 PLAIN message of 255 + 255 + 1024
 * octets, base64-encoded, plus "AUTH PLAIN " and CRLF. PASS takes the same
 * limit so pass phrases up to SASL_PLAIN_PASSWD_MAX work. */
#define POP3_AUTH_LINE_MAX 2100

enum pop3_parse_result {
	POP3_PARSE_OK,
	POP3_PARSE_INVALID,  /* NUL, bare CR, empty line, bad argument */
	POP3_PARSE_TOO_LONG, /* an argument longer than POP3_ARG_MAX */
};

enum pop3_verb {
	POP3_CMD_UNKNOWN = 0,
	POP3_CMD_USER, POP3_CMD_PASS, POP3_CMD_APOP, POP3_CMD_AUTH,
	POP3_CMD_STAT, POP3_CMD_LIST, POP3_CMD_RETR, POP3_CMD_DELE,
	POP3_CMD_NOOP, POP3_CMD_RSET, POP3_CMD_QUIT, POP3_CMD_TOP,
	POP3_CMD_UIDL, POP3_CMD_CAPA, POP3_CMD_STLS,
};

/* The verb's name ("USER"), "?" for POP3_CMD_UNKNOWN. */
const char *pop3_verb_str(enum pop3_verb v);

struct pop3_cmd {
	enum pop3_verb verb;
	struct span keyword; /* the verb as sent */
	/* Everything after the first space (PASS: the whole password, spaces
	 * included); empty when there is none. */
	struct span args;
	bool has_args;       /* a space followed the keyword */
};

/* Parses one command line. POP3_PARSE_OK: *cmd_r filled (verb
 * POP3_CMD_UNKNOWN for a keyword we do not know). POP3_PARSE_INVALID: an
 * empty line, a NUL or a CR inside the line. */
enum pop3_parse_result pop3_parse_command(struct span line, struct pop3_cmd *cmd_r);

/* Splits args on single spaces into at most max arguments (trailing spaces
 * are ignored). POP3_PARSE_OK with *n_r arguments, POP3_PARSE_INVALID for
 * more than max arguments or an empty one (two spaces in a row),
 * POP3_PARSE_TOO_LONG for an argument over POP3_ARG_MAX. */
enum pop3_parse_result pop3_parse_args(struct span args, struct span *out, size_t max,
				       size_t *n_r);

/* A decimal number without sign: 1..10 digits, value <= UINT32_MAX.
 * Returns 0 and sets *n_r, or -EINVAL (-ERANGE when too large). */
int pop3_parse_number(struct span s, uint32_t *n_r);

/* ---- the body filter ---------------------------------------------------
 *
 * Turns message bytes into a RETR/TOP response body: byte-stuffs every line
 * that starts with '.' (RFC 1939 3), sends a bare LF as CRLF (a line
 * ends at LF; the stored message keeps its bytes), and for TOP stops after the header
 * section, the blank line and the requested number of body lines. The
 * message is fed in any pieces; the state is a small zero-fillable struct
 * set up by pop3_body_init(). The caller adds the final ".\r\n" (and a CRLF
 * before it when pop3_body_needs_crlf()). */
struct pop3_body {
	uint64_t lines_left;  /* TOP: body lines still to send */
	bool top;             /* stop after lines_left body lines */
	bool in_body;         /* past the blank line ending the headers */
	bool line_start;      /* the next byte starts a line */
	bool line_cr;         /* the current line so far is a lone CR */
	bool done;            /* TOP has sent all it should */
	uint8_t last;         /* the last byte emitted */
};

/* Starts a RETR (top false) or a TOP with lines body lines. */
void pop3_body_init(struct pop3_body *b, bool top, uint64_t lines);

/* Filters the next bytes of the message into out (cap bytes). Returns the
 * bytes of in consumed; *out_len_r gets the bytes written. It stops early
 * when out is full (a stuffed '.' needs two bytes) or, for TOP, when done
 * (check b->done; the rest of the message is not wanted). */
size_t pop3_body_filter(struct pop3_body *b, struct span in, uint8_t *out, size_t cap,
			size_t *out_len_r);

/* True when what was emitted does not end a line: a CRLF must precede the
 * terminating ".\r\n". */
static inline bool pop3_body_needs_crlf(const struct pop3_body *b)
{
	return b->last != '\n';
}

#endif
