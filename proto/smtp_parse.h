/* smtp_parse.h - the SMTP parsers: command lines, MAIL/RCPT paths and ESMTP
 * parameters, AUTH and BDAT arguments, and the DATA end-of-data scanner.
 *
 * Pure functions: bytes in, spans out; no allocation, no I/O, no globals.
 * They work in place on the receive buffer: every span they return points
 * into the caller's input (or, for smtp_data_feed(), into static storage)
 * and is valid as long as that input buffer is.
 *
 * Line endings. A command line ends with CRLF. A bare LF is accepted as if
 * it were CRLF (what Postfix does for commands) and reported in
 * smtp_line.bare_lf so the session can count or log it; a CR anywhere else
 * in the line, or a NUL, makes the line INVALID. Inside DATA, bare CR and
 * bare LF are never an end of data; see smtp_data_feed(). */
#ifndef RINGMAIL_PROTO_SMTP_PARSE_H
#define RINGMAIL_PROTO_SMTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* RFC 5321 §4.5.3.1.4: a command line, CRLF included. The session uses
 * limits.smtp_command_line_max (at least this) through
 * smtp_parse_command_max(). */
#define SMTP_COMMAND_LINE_MAX 512
/* A limit for AUTH lines and SASL responses carrying long base64 data (the
 * session passes it to smtp_parse_command_max()/smtp_parse_line()). */
#define SMTP_AUTH_LINE_MAX 12288
/* RFC 5321 §4.5.3.1.1-3: local part, domain, and the whole path including
 * the angle brackets. */
#define SMTP_LOCAL_PART_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
/* RFC 1035 §2.3.4: one label of a domain name. */
#define SMTP_LABEL_MAX 63
/* RFC 5321 §4.5.3.1.6: a line of message text, CRLF included. */
#define SMTP_TEXT_LINE_MAX 1000
/* RFC 4954 §4: an SASL mechanism name. */
#define SMTP_AUTH_MECH_MAX 20
/* RFC 3461 §4.4: ENVID, in xtext characters. */
#define SMTP_ENVID_MAX 100

enum smtp_parse_result {
	SMTP_PARSE_OK,
	SMTP_PARSE_AGAIN,	/* incomplete: call again with more bytes */
	SMTP_PARSE_INVALID,	/* malformed: reply 5xx */
	SMTP_PARSE_TOO_LONG,	/* over a limit (line, number): reply 5xx */
};

/* Returns a static name for logs ("ok", "again", "invalid", "too long"). */
const char *smtp_parse_result_str(enum smtp_parse_result r);

/* ---- lines and commands ------------------------------------------------ */

struct smtp_line {
	struct span text;	/* the line without its CRLF / LF */
	uint8_t bare_lf;	/* it ended with LF alone */
	uint8_t partial;	/* TOO_LONG only: its LF was not in the input;
				 * keep discarding with smtp_skip_line() */
};

/* Splits one line off in, at most max octets long including its ending.
 * OK: *line_r describes it, *consumed_r is its length with the ending.
 * AGAIN: no LF yet and in.len < max; *consumed_r = 0.
 * INVALID: a NUL, or a CR not directly before the LF; *consumed_r skips the
 *   whole line so the session can reply and go on.
 * TOO_LONG: no LF within the first max octets (decided as soon as max octets
 *   are there, without waiting for the LF); *consumed_r skips to just after
 *   the next LF, or all of in when there is none yet (line_r->partial = 1).
 * line_r->text is valid as long as in's buffer. */
enum smtp_parse_result smtp_parse_line(struct span in, size_t max,
				       struct smtp_line *line_r,
				       size_t *consumed_r);

/* After TOO_LONG with partial set: discards up to and including the next LF.
 * Returns OK (the LF was found, *consumed_r includes it) or AGAIN (no LF:
 * *consumed_r = in.len, call again with the next bytes). */
enum smtp_parse_result smtp_skip_line(struct span in, size_t *consumed_r);

enum smtp_verb {
	SMTP_CMD_UNKNOWN,	/* reply 500 5.5.2; verb_span says what it was */
	SMTP_CMD_HELO,
	SMTP_CMD_EHLO,
	SMTP_CMD_MAIL,
	SMTP_CMD_RCPT,
	SMTP_CMD_DATA,
	SMTP_CMD_BDAT,
	SMTP_CMD_RSET,
	SMTP_CMD_NOOP,
	SMTP_CMD_QUIT,
	SMTP_CMD_HELP,
	SMTP_CMD_VRFY,
	SMTP_CMD_EXPN,
	SMTP_CMD_STARTTLS,
	SMTP_CMD_AUTH,
	SMTP_CMD_HTTP,		/* an HTTP request line: close at once */
};

/* Returns a static name for logs ("MAIL", "unknown", "http", ...). */
const char *smtp_verb_str(enum smtp_verb verb);

struct smtp_cmd {
	struct smtp_line line;
	enum smtp_verb verb;
	struct span verb_span;	/* the verb as sent (up to the first SP) */
	struct span args;	/* everything after the first SP (may be empty) */
	uint8_t has_args;	/* the verb was followed by a SP */
};

/* Parses one command line of at most SMTP_COMMAND_LINE_MAX octets.
 * Results as smtp_parse_line(); on OK the verb is matched ASCII
 * case-insensitively against the verbs above. Lines starting with an HTTP
 * method and a space ("GET ", "POST ", ..., case-sensitive as HTTP is) are
 * SMTP_CMD_HTTP. An empty line is OK with SMTP_CMD_UNKNOWN and an empty verb.
 * On TOO_LONG, cmd->verb is still set when the verb and its SP fit in the
 * first max octets: the session retries AUTH lines with
 * smtp_parse_command_max(in, SMTP_AUTH_LINE_MAX, ...), and closes on HTTP.
 * The verb is never interpreted beyond its name: argument syntax is for the
 * functions below. */
enum smtp_parse_result smtp_parse_command(struct span in, struct smtp_cmd *cmd,
					  size_t *consumed_r);
enum smtp_parse_result smtp_parse_command_max(struct span in, size_t max,
					      struct smtp_cmd *cmd,
					      size_t *consumed_r);

/* ---- MAIL FROM / RCPT TO ----------------------------------------------- */

/* Why a path was rejected: distinct so the session can pick 501 (syntax)
 * or 553 (mailbox name not allowed) or 555 (parameters). */
enum smtp_path_reason {
	SMTP_PATH_OK,
	SMTP_PATH_ERR_KIND,		/* kind is neither MAIL nor RCPT */
	SMTP_PATH_ERR_CONTROL,		/* a control octet, CR, LF, NUL, DEL */
	SMTP_PATH_ERR_PREFIX,		/* no "FROM:" / "TO:" */
	SMTP_PATH_ERR_BRACKETS,		/* no <...> (we are strict) */
	SMTP_PATH_ERR_NULL_RCPT,	/* <> in RCPT */
	SMTP_PATH_ERR_ROUTE,		/* malformed source route */
	SMTP_PATH_ERR_LOCAL,		/* malformed local part */
	SMTP_PATH_ERR_DOMAIN,		/* missing or malformed domain */
	SMTP_PATH_ERR_LITERAL,		/* malformed address literal */
	SMTP_PATH_ERR_UTF8,		/* 8-bit octets that are not UTF-8 */
	SMTP_PATH_ERR_LOCAL_TOO_LONG,	/* > SMTP_LOCAL_PART_MAX */
	SMTP_PATH_ERR_DOMAIN_TOO_LONG,	/* > SMTP_DOMAIN_MAX or label > 63 */
	SMTP_PATH_ERR_PATH_TOO_LONG,	/* > SMTP_PATH_MAX */
	SMTP_PATH_ERR_PARAM,		/* malformed ESMTP parameter */
	SMTP_PATH_ERR_TOO_MANY_PARAMS,	/* more than max_params */
};

/* Returns a static name for logs. */
const char *smtp_path_reason_str(enum smtp_path_reason reason);

/* Flags for the relay policy and the session. */
#define SMTP_PATH_NULL		0x0001u	/* <> (MAIL only) */
#define SMTP_PATH_POSTMASTER	0x0002u	/* <Postmaster> (RCPT, no domain) */
#define SMTP_PATH_ROUTE		0x0004u	/* <@a,@b:user@c>: route ignored */
#define SMTP_PATH_PERCENT	0x0008u	/* '%' in the local part */
#define SMTP_PATH_BANG		0x0010u	/* '!' in the local part */
#define SMTP_PATH_QUOTED	0x0020u	/* the local part is a quoted-string */
#define SMTP_PATH_QUOTED_AT	0x0040u	/* ... that contains '@' */
#define SMTP_PATH_LITERAL	0x0080u	/* the domain is [1.2.3.4] or [IPv6:..] */
#define SMTP_PATH_IPV6		0x0100u	/* ... an IPv6 literal */
#define SMTP_PATH_UTF8		0x0200u	/* 8-bit octets: needs SMTPUTF8 */
#define SMTP_PATH_SPACE		0x0400u	/* a SP after the colon (tolerated) */
#define SMTP_PATH_PARAM_UTF8	0x0800u	/* 8-bit octets in a parameter value */

struct smtp_path {
	struct span path;	/* between < and >, source route included */
	struct span route;	/* "@a,@b" without the ':' (or empty) */
	struct span mailbox;	/* local@domain (empty for <>) */
	struct span local;	/* as sent: quotes and escapes included */
	struct span domain;	/* as sent; a literal keeps its [ ] */
	unsigned flags;		/* SMTP_PATH_* */
	enum smtp_path_reason reason;
};

/* An ESMTP parameter KEYWORD[=value]. */
struct smtp_param {
	struct span keyword;
	struct span value;	/* empty when has_value is 0 */
	uint8_t has_value;
};

/* Parses the arguments of MAIL (kind SMTP_CMD_MAIL: "FROM:<path> params")
 * or RCPT (SMTP_CMD_RCPT: "TO:<path> params"), RFC 5321 §4.1.2 with the
 * RFC 6531 UTF-8 extensions. The prefix is case-insensitive; one or more SP
 * after the colon are tolerated (flagged), but the angle brackets are
 * required. <> is accepted for MAIL only, <Postmaster> (any case, no
 * domain) for RCPT only. A source route is parsed and flagged; the session
 * must ignore it (RFC 5321 §3.3). Any octet < 0x20 or 0x7f anywhere in args
 * is INVALID. Parameters are split into params[0..*nparams_r); their
 * keywords are not interpreted (see smtp_param_kind()). Trailing SP is
 * tolerated.
 * Returns OK or INVALID with path->reason set. Spans point into args. */
enum smtp_parse_result smtp_parse_path(struct span args, enum smtp_verb kind,
				       struct smtp_path *path,
				       struct smtp_param *params,
				       size_t max_params, size_t *nparams_r);

enum smtp_param_kind {
	SMTP_PARAM_UNKNOWN,
	SMTP_PARAM_SIZE,	/* RFC 1870 */
	SMTP_PARAM_BODY,	/* RFC 6152, RFC 3030 */
	SMTP_PARAM_SMTPUTF8,	/* RFC 6531 */
	SMTP_PARAM_RET,		/* RFC 3461 */
	SMTP_PARAM_ENVID,	/* RFC 3461 */
	SMTP_PARAM_NOTIFY,	/* RFC 3461 */
	SMTP_PARAM_ORCPT,	/* RFC 3461 */
	SMTP_PARAM_AUTH,	/* RFC 4954 §5 */
};

/* Returns the kind of a parameter keyword (ASCII case-insensitive). */
enum smtp_param_kind smtp_param_kind(struct span keyword);

enum smtp_body { SMTP_BODY_7BIT = 1, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_FULL = 1, SMTP_RET_HDRS };
#define SMTP_NOTIFY_NEVER	0x1u
#define SMTP_NOTIFY_SUCCESS	0x2u
#define SMTP_NOTIFY_FAILURE	0x4u
#define SMTP_NOTIFY_DELAY	0x8u

/* Value recognisers. Each takes the whole parameter so it can check
 * has_value, and returns OK, INVALID (bad syntax, value missing or present
 * when it must not be) or, for numbers, TOO_LONG (does not fit in 64 bits:
 * reply 552 for SIZE). Values are ASCII case-insensitive where the RFCs say
 * so. */
/* SIZE=1*DIGIT. */
enum smtp_parse_result smtp_param_size(const struct smtp_param *p,
				       uint64_t *size_r);
/* BODY=7BIT|8BITMIME|BINARYMIME. */
enum smtp_parse_result smtp_param_body(const struct smtp_param *p,
				       enum smtp_body *body_r);
/* SMTPUTF8 (no value). */
enum smtp_parse_result smtp_param_smtputf8(const struct smtp_param *p);
/* RET=FULL|HDRS. */
enum smtp_parse_result smtp_param_ret(const struct smtp_param *p,
				      enum smtp_ret *ret_r);
/* ENVID=xtext, at most SMTP_ENVID_MAX characters, decoding to printable
 * ASCII (decode it with smtp_xtext_decode()). */
enum smtp_parse_result smtp_param_envid(const struct smtp_param *p);
/* NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY without
 * repetition; *notify_r gets SMTP_NOTIFY_* bits. */
enum smtp_parse_result smtp_param_notify(const struct smtp_param *p,
					 unsigned *notify_r);
/* ORCPT=addr-type;xtext: *type_r is the atom before ';' ("rfc822"),
 * *addr_r the xtext after it (still encoded; valid xtext). */
enum smtp_parse_result smtp_param_orcpt(const struct smtp_param *p,
					struct span *type_r,
					struct span *addr_r);
/* AUTH=xtext or AUTH=<> (RFC 4954 §5). */
enum smtp_parse_result smtp_param_auth(const struct smtp_param *p);

/* Decodes RFC 3461 xtext: printable ASCII except '+' and '=' stands for
 * itself, "+HH" (two hex digits; lower case tolerated) for the octet HH.
 * An escape that is cut, not hex, or decodes to a control octet (CR, LF,
 * NUL...), DEL or an 8-bit octet is INVALID (SP is allowed), as is any
 * literal octet outside 0x21-0x7e. Writes at most cap octets (the output is never longer than
 * in); out may be NULL to validate only. Returns OK and sets *len_r,
 * INVALID, or TOO_LONG when cap is too small. */
enum smtp_parse_result smtp_xtext_decode(struct span in, uint8_t *out,
					 size_t cap, size_t *len_r);

/* ---- AUTH and BDAT ----------------------------------------------------- */

/* Parses "mechanism [SP initial-response]" (RFC 4954 §4). The mechanism is
 * 1-20 of A-Z a-z 0-9 - _ (compare it case-insensitively). An initial
 * response is base64 characters or "=" meaning an empty one (then
 * *has_initial_r = 1 and initial_r->len = 0); it is not decoded here (use
 * sasl_base64_decode()). Returns OK or INVALID; spans point into args. */
enum smtp_parse_result smtp_parse_auth(struct span args, struct span *mech_r,
				       struct span *initial_r,
				       int *has_initial_r);

/* Parses "chunk-size [SP LAST]" (RFC 3030 §2; LAST case-insensitive).
 * Returns OK, INVALID, or TOO_LONG when the size does not fit in 64 bits. */
enum smtp_parse_result smtp_parse_bdat(struct span args, uint64_t *size_r,
				       int *last_r);

/* ---- DATA -------------------------------------------------------------- */

enum smtp_bare_policy {
	/* A bare CR or LF is passed through unchanged and sets bare_seen:
	 * the session rejects the message (550 5.5.2) after the real end. */
	SMTP_BARE_REJECT = 0,
	/* A bare CR or LF is replaced by CRLF in the output (bare_seen is
	 * still set, for logs). */
	SMTP_BARE_NORMALIZE = 1,
};

/* The resumable end-of-data scanner's state. Owned by the session:
 * zero-fill it (or memset) when DATA is accepted, set bare_policy, then
 * feed every received byte through smtp_data_feed() until DATA_END. The
 * result fields are valid at any time and final at DATA_END. */
struct smtp_data_state {
	uint8_t bare_policy;	/* in: enum smtp_bare_policy */
	uint8_t bare_seen;	/* out: a bare CR or bare LF was seen */
	uint8_t long_line;	/* out: a line over SMTP_TEXT_LINE_MAX octets */
	uint8_t headers_done;	/* out: the header section's empty line seen */
	uint32_t received;	/* out: Received: fields in the header section */
	uint32_t longest_line;	/* out: longest line in octets as received,
				 * its ending included (saturates) */
	uint64_t size;		/* out: message octets output (saturates) */
	uint64_t header_size;	/* out: output octets of the header section,
				 * its empty line included (or of the whole
				 * message when it has no empty line, at END) */
	/* Private. */
	uint32_t line_len;
	uint8_t st;
	uint8_t hmatch;
	uint8_t line_nonempty;
};

enum smtp_data_result {
	SMTP_DATA_MORE,		/* all of in consumed; the message goes on */
	SMTP_DATA_END,		/* the final CRLF.CRLF was consumed */
	SMTP_DATA_OUT_FULL,	/* out[] is full: call again with the rest */
};

/* The fewest output spans smtp_data_feed() needs to make progress. */
#define SMTP_DATA_OUT_MIN 4

/* Scans message text after the 354 reply: finds the end of data, removes
 * dot-stuffing, handles bare CR/LF by st->bare_policy, and tracks the
 * limits in st.
 *
 * The end of data is the first "CRLF . CRLF" of the stream, counting the
 * CRLF that ended the DATA command: so ".CRLF" as the very first line ends
 * an empty message. No other sequence ends it: a bare CR or LF never ends a
 * line for that purpose (SMTP smuggling, CVE-2023-51764/51765/51766).
 *
 * Output: the message is everything up to and including the CRLF before the
 * final dot. It is written as up to max_out spans to out[0..*nout_r): runs
 * of in (zero-copy) or static bytes (a "\r\n" inserted by normalisation, or
 * a lone-dot line whose bytes straddled two calls). Rules:
 * - A line starts at the beginning of the data and after CRLF, bare CR or
 *   bare LF. A '.' starting a line and followed by anything but CR or LF is
 *   removed ("..x" -> ".x", "..." -> ".."); a '.' mid-line is untouched. A
 *   line "." ended any other way than the final CRLF is kept as ".".
 * - A bare CR or LF sets bare_seen; SMTP_BARE_NORMALIZE writes CRLF for it.
 *   So the output may hold a line "." (from "\n.\n" say): it is content,
 *   and whoever sends the message on must dot-stuff it as usual.
 * - Line lengths count octets as received (stuffing dot and ending
 *   included). Received: is matched at line starts of the header section,
 *   ASCII case-insensitively, SP/HTAB allowed before the colon. The header
 *   section ends at its first empty line.
 *
 * Returns MORE (*consumed_r = in.len), END (*consumed_r = octets up to and
 * including the final LF: the next command starts there; feeding again
 * returns END at once with nothing consumed) or OUT_FULL (out has fewer than
 * SMTP_DATA_OUT_MIN free entries left; *consumed_r < in.len; call again
 * with the rest of in). Works across any split of the input. max_out must be
 * at least SMTP_DATA_OUT_MIN. Output spans are valid as long as in's
 * buffer. */
enum smtp_data_result smtp_data_feed(struct smtp_data_state *st,
				     struct span in, struct span *out,
				     size_t max_out, size_t *nout_r,
				     size_t *consumed_r);

/* Returns a static name for logs. */
const char *smtp_data_result_str(enum smtp_data_result r);

#endif
