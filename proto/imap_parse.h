/* imap_parse.h - the IMAP command tokenizer, sequence sets and modified
 * UTF-7 (RFC 3501 / RFC 9051 formal syntax, RFC 7888 LITERAL+).
 *
 * Pure code: bytes in, tokens (spans into the caller's buffer) out; no
 * allocation, no I/O, no globals. The session keeps a struct imap_parser
 * per connection (zero-filled, then imap_parser_init()).
 *
 * The tokenizer is a pull parser. imap_parse_next() looks at the input the
 * session has not consumed yet and returns one token and how many bytes it
 * took; a token that is not complete yet gives IMAP_PARSE_AGAIN and takes
 * nothing (the caller offers the same bytes again with more behind them,
 * as picohttpparser does). State between tokens (list depth, bytes of the
 * command so far, being inside a literal) lives in the struct, so input may
 * be split anywhere.
 *
 * Literals are never buffered here (Dovecot's IMAP_PARSE_FLAG_LITERAL_SIZE):
 * "{n}" CRLF gives an IMAP_TOK_LITERAL token with the size; the session
 * decides (send "+ " for a synchronising literal, refuse it, stream it into
 * the store or gather a small one). The n bytes of the literal then come
 * back as IMAP_TOK_LITERAL_DATA tokens, pieces of the input as they arrive.
 *
 * Atoms are lenient in one place: an atom that contains "[" runs to the
 * matching "]" whatever is inside, so a FETCH item such as
 * BODY.PEEK[HEADER.FIELDS (From To)]<0.100> is a single token. */
#ifndef RINGMAIL_PROTO_IMAP_PARSE_H
#define RINGMAIL_PROTO_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/span.h"

/* Nesting of parenthesised lists in one command. */
#define IMAP_LIST_DEPTH_MAX 32
/* Bytes of command text (literal data excluded, CRLFs included) before and
 * after login. */
#define IMAP_LINE_MAX_PRELOGIN (8u * 1024u)
/* The default of the [limits] setting imap_line_max (after login). */
#define IMAP_LINE_MAX (64u * 1024u)
/* The largest literal size the syntax allows (RFC 3501 number: 32 bits). */
#define IMAP_LITERAL_SIZE_MAX UINT32_MAX

enum imap_parse_result {
	IMAP_PARSE_OK,
	IMAP_PARSE_AGAIN,    /* need more bytes; nothing was consumed */
	IMAP_PARSE_INVALID,  /* bad syntax: BAD, then imap_parse_skip_line() */
	IMAP_PARSE_TOO_LONG, /* the command is over the line limit: the same */
};

enum imap_tok_type {
	IMAP_TOK_ATOM,         /* text: the atom */
	IMAP_TOK_NIL,          /* the atom NIL (any case); text: "NIL" */
	IMAP_TOK_QUOTED,       /* text: between the quotes, escapes kept
				  (imap_unquote() removes them) */
	IMAP_TOK_LITERAL,      /* size, nonsync ({n+}), binary (~{n}) */
	IMAP_TOK_LITERAL_DATA, /* text: the next bytes of the literal; last
				  set on the piece that ends it (a 0-byte
				  literal gives one empty, last piece) */
	IMAP_TOK_LIST_BEGIN,   /* "(" */
	IMAP_TOK_LIST_END,     /* ")" */
	IMAP_TOK_EOL,          /* CRLF (or a bare LF): the command ends */
};

struct imap_token {
	enum imap_tok_type type;
	struct span text;  /* points into the caller's input: valid as long
			      as those bytes (the data() call) */
	uint64_t size;     /* IMAP_TOK_LITERAL */
	bool nonsync;      /* {n+} */
	bool binary;       /* ~{n} (RFC 3516): sessions refuse it */
	bool escaped;      /* IMAP_TOK_QUOTED: holds a backslash escape */
	bool last;         /* IMAP_TOK_LITERAL_DATA: the literal is complete */
};

/* Private state; zero-filled plus imap_parser_init() is a fresh command. */
struct imap_parser {
	size_t line_max;     /* IMAP_LINE_MAX_PRELOGIN or IMAP_LINE_MAX */
	size_t line_len;     /* command bytes taken so far */
	uint64_t literal_left;
	uint16_t depth;
	uint8_t mode;        /* 0 tokens, 1 literal data, 2 skipping a line,
			      * 3 skipping a non-synchronising literal's data */
	uint8_t skip_st;     /* skipping: how much of "{n+}" CRLF ends the line */
	uint8_t skip_digits;
	uint8_t need_sep;    /* the last token needs SP, ")" or CRLF next */
	uint8_t lit_started; /* a LITERAL_DATA piece was returned */
};

/* Starts a fresh command; line_max is the command length limit. */
void imap_parser_init(struct imap_parser *p, size_t line_max);

/* Takes the next token from in. OK: *tok_r is set and *used_r bytes were
 * consumed (after EOL the parser is ready for the next command). AGAIN:
 * nothing consumed, offer these bytes again with more. INVALID / TOO_LONG:
 * nothing consumed; the command is dead: answer it and call
 * imap_parse_skip_line() until it returns OK. */
enum imap_parse_result imap_parse_next(struct imap_parser *p, struct span in, size_t *used_r,
				       struct imap_token *tok_r);

/* Drops input up to and including the next LF; a line that ends with a
 * non-synchronising literal header "{n+}" / "~{n+}" goes on after the
 * literal, so its n bytes and the rest of the command are dropped too
 * (the client sends them whatever the server answered: taken as
 * commands, a message's lines would run). Returns OK with *used_r bytes
 * consumed and the parser reset for a new command, or AGAIN with every
 * byte of in consumed (*used_r = in.len) and more to skip. */
enum imap_parse_result imap_parse_skip_line(struct imap_parser *p, struct span in,
					    size_t *used_r);

/* Ends a literal early without its data (a refused synchronising literal:
 * the client sends none), so the line goes on with the next token. */
void imap_parse_literal_skip(struct imap_parser *p);

/* True while the parser is in the middle of a command (tokens or literal
 * taken since the last EOL). */
bool imap_parse_in_command(const struct imap_parser *p);

/* Writes the value of a quoted string's text (escapes removed) to out,
 * which needs text.len bytes; returns the length. */
size_t imap_unquote(struct span text, uint8_t *out);

/* ---- numbers and sequence sets -------------------------------------------- */

/* An RFC 3501 number (1*DIGIT, no sign, at most UINT32_MAX). nz: 0 is
 * refused too. Returns 0 or -EINVAL. */
int imap_parse_number(struct span s, bool nz, uint32_t *n_r);

/* number64 / nz-number64 of RFC 9051: as imap_parse_number() up to
 * 2^63 - 1. Returns 0 or -EINVAL. */
int imap_parse_number64(struct span s, bool nz, uint64_t *n_r);

/* A section-binary's inside (RFC 3516, RFC 9051): empty, or a
 * section-part "1", "2.1", "3.1.4" (nz-numbers joined by dots, no leading
 * zero). Returns 0 or -EINVAL. */
int imap_parse_section_part(struct span s);

/* A BODY[section]'s inside (RFC 3501 / RFC 9051 "section-spec"): empty,
 * HEADER, TEXT, HEADER.FIELDS[.NOT] (names...), each optionally after a
 * section-part and a dot, a section-part alone, or a section-part then
 * .MIME. The field names are atoms or quoted strings (a literal cannot be
 * inside the one token an IMAP atom with "[" makes). Returns 0 or
 * -EINVAL. */
int imap_parse_section(struct span s);

/* One range of a sequence set; 0 stands for "*" (the largest number). */
struct imap_range {
	uint32_t lo, hi;
};

/* Parses a sequence set ("1:*,3,5:7") into ranges[0..*n_r) (at most cap;
 * ranges keep the order and the endpoints as written). "$" (RFC 5182) is
 * refused here: callers take a lone "$" as the saved result before
 * calling this, and "$" mixed with numbers is no sequence set. Returns 0, -EINVAL (syntax) or -E2BIG (more than cap ranges). */
int imap_parse_seqset(struct span s, struct imap_range *ranges, size_t cap, size_t *n_r);

/* Whether n is in the set, "*" meaning star (the largest number in use;
 * with star 0, "*" matches nothing). "5:*" with star 3 means 3:5, as RFC
 * 9051 6.4.8 says. */
bool imap_seqset_contains(const struct imap_range *ranges, size_t n, uint32_t num,
			  uint32_t star);

/* ---- modified UTF-7 (RFC 3501 5.1.3) ---------------------------------------- */

/* Decodes a mailbox name from modified UTF-7 to UTF-8 into out[0..cap).
 * Strict: printable US-ASCII only outside shifts, "&-" for "&", base64 of
 * UTF-16 with zero padding bits, no shift that encodes printable ASCII, no
 * empty or adjacent shifts, valid surrogate pairs. Returns the length, or
 * -EINVAL (malformed) or -ENOSPC (cap too small). No NUL is written. */
ssize_t imap_mutf7_decode(struct span in, uint8_t *out, size_t cap);

/* Encodes a UTF-8 name to modified UTF-7 into out[0..cap). Returns the
 * length, -EINVAL (invalid UTF-8 or a control character) or -ENOSPC. */
ssize_t imap_mutf7_encode(struct span in, uint8_t *out, size_t cap);

/* ---- UTF-8 (RFC 9051 after ENABLE IMAP4rev2) ------------------------------ */

/* Whether s is well-formed UTF-8 (no overlong forms, no surrogates). */
bool imap_utf8_valid(struct span s);

/* A mailbox name given in UTF-8: checked (well-formed, no control
 * character) and copied to out[0..cap). Returns the length, -EINVAL or
 * -ENOSPC. No NUL is written. */
ssize_t imap_utf8_name(struct span in, uint8_t *out, size_t cap);

/* ---- names of new mailboxes ------------------------------------------------ */

/* Checks a decoded mailbox name a client wants made (CREATE, or RENAME's
 * new name) against the hierarchy delimiter '/'. With create, one
 * trailing delimiter is dropped first (RFC 3501 6.3.3: it only says that
 * the client means to make a hierarchy); *len_r is the length of the name
 * to use. Returns NULL when the name is valid, else why it is not, as a
 * static string in Dovecot's words: "Name is empty", "Begins with
 * hierarchy separator", "Has adjacent hierarchy separators", "Ends with
 * hierarchy separator" (checked in that order). Any other byte is the
 * caller's to check ("*" and "%" are valid, as in Dovecot). */
const char *imap_new_name_check(struct span name, bool create, size_t *len_r);

#endif
