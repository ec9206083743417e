/* mime.h - the MIME structure scanner, its blob, and the IMAP formatters.
 *
 * The scanner sees every byte of a message once, in order, in chunks of any
 * size, while the message streams into the store (SMTP DATA/BDAT output,
 * IMAP APPEND literals). At the end it produces a "structure blob": byte
 * offsets of every MIME part's header and body, body line counts, and the
 * raw (unfolded) values of the Content-* and envelope header fields. The
 * store keeps the blob beside the message; IMAP answers ENVELOPE,
 * BODYSTRUCTURE and BODY[section] offsets from it without re-reading the
 * message. The blob format is documented in docs/mime.md.
 *
 * Pure code: no allocation, no I/O, no globals. The scanner keeps a bounded
 * amount of state (sizeof(struct mime_scanner), about 340 KiB, most of it
 * the blob under construction): allocate it per message, never on a stack.
 *
 * Offsets and sizes are of the bytes as given to the scanner (a bare LF is
 * a line end for structure purposes and counts one byte). */
#ifndef RINGMAIL_PROTO_MIME_H
#define RINGMAIL_PROTO_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* Deepest part: the message is depth 0, its parts depth 1, ... A multipart
 * or message/rfc822 part at this depth is an opaque leaf. */
#define MIME_DEPTH_MAX 32
/* Parts per message, the message itself included. Beyond it (a "MIME
 * bomb") nothing more is split: the rest is body of the enclosing part. */
#define MIME_PARTS_MAX 1000
/* One unfolded header field, name included; longer fields are truncated
 * for structure purposes (the message bytes are untouched). */
#define MIME_HEADER_FIELD_MAX (16 * 1024)
/* RFC 2046 §5.1.1: a boundary is 1 to 70 characters. A multipart whose
 * boundary is missing or longer is an opaque leaf. */
#define MIME_BOUNDARY_MAX 70
/* Parameters written per Content-Type / Content-Disposition. */
#define MIME_PARAMS_MAX 64
/* Largest blob; equal to STORE_BLOB_MAX (store/store.h). */
#define MIME_BLOB_MAX (256 * 1024)
/* Strings longer than this are written as IMAP literals. */
#define MIME_QUOTED_MAX 1024

/* The blob's format version (docs/mime.md). */
#define MIME_BLOB_VERSION 1

enum mime_kind {
	MIME_KIND_TEXT = 0,	 /* text/ *, and the default */
	MIME_KIND_MULTIPART = 1, /* multipart/ * */
	MIME_KIND_MESSAGE = 2,	 /* message/rfc822, message/global */
	MIME_KIND_OTHER = 3,
};

/* Header fields kept in the blob. Content-* for every part; the envelope
 * fields for the message and every embedded message only. */
enum mime_field {
	MIME_FIELD_CONTENT_TYPE,
	MIME_FIELD_CONTENT_TRANSFER_ENCODING,
	MIME_FIELD_CONTENT_ID,
	MIME_FIELD_CONTENT_DESCRIPTION,
	MIME_FIELD_CONTENT_DISPOSITION,
	MIME_FIELD_CONTENT_LANGUAGE,
	MIME_FIELD_CONTENT_LOCATION,
	MIME_FIELD_CONTENT_MD5,
	MIME_FIELD_DATE,
	MIME_FIELD_SUBJECT,
	MIME_FIELD_FROM,
	MIME_FIELD_SENDER,
	MIME_FIELD_REPLY_TO,
	MIME_FIELD_TO,
	MIME_FIELD_CC,
	MIME_FIELD_BCC,
	MIME_FIELD_IN_REPLY_TO,
	MIME_FIELD_MESSAGE_ID,
	MIME_FIELD_COUNT,
};

/* Part flags (struct mime_part.flags, stored in the blob). */
#define MIME_PART_CT_DEFAULT	0x01u /* no usable Content-Type: default type */
#define MIME_PART_ENVELOPE	0x02u /* a message header: has envelope fields */
#define MIME_PART_DIGEST	0x04u /* multipart/digest */
#define MIME_PART_FIELD_TRUNC	0x08u /* a field was cut at MIME_HEADER_FIELD_MAX */
#define MIME_PART_OPAQUE	0x10u /* not split: limit, bad boundary or encoding */
#define MIME_PART_FLAGS_ALL	0x1fu

/* Blob flags (struct mime_blob.flags). */
#define MIME_BLOB_PARTS_LIMIT	0x01u /* MIME_PARTS_MAX was hit */
#define MIME_BLOB_DEPTH_LIMIT	0x02u /* MIME_DEPTH_MAX was hit */
#define MIME_BLOB_FIELDS_LOST	0x04u /* fields dropped: MIME_BLOB_MAX was hit */
/* The message holds no NUL octet: IMAP may send its bytes as they are in a
 * CHAR8 literal (BODY[], RFC822), without looking at them. Absent from blobs
 * written before it existed: those count as possibly holding NULs. */
#define MIME_BLOB_NUL_FREE	0x08u
#define MIME_BLOB_FLAGS_ALL	0x0fu

/* ---- the scanner ------------------------------------------------------- */

/* Private state; read nothing but through the functions below. */
struct mime_scan_part {
	uint32_t parent;
	uint16_t depth;
	uint8_t kind, flags;
	uint64_t hdr_off, body_off, end_off, lines;
	uint64_t lines_start;
	uint32_t fields_off, fields_len;
};

struct mime_scan_bound {
	uint32_t part;
	uint8_t len;
	uint8_t b[MIME_BOUNDARY_MAX];
};

struct mime_scanner {
	uint64_t off, nl;		/* bytes and LFs seen */
	uint64_t line_off, line_nl;	/* the current line's start */
	uint64_t prev_eol_off;		/* where the previous line's CRLF/LF began */
	uint32_t nparts, cur, nbounds, arena_len;
	uint32_t field_len, seen;	/* header state of part cur */
	uint32_t depth_max, parts_max;	/* mime_scan_limits(), at most the MAXes */
	uint8_t mode, flags, finished;
	uint8_t nul_seen;		/* a NUL octet was fed */
	uint8_t line_started, last_cr, has_prev_eol;
	uint8_t hline, field_active, field_trunc;
	uint8_t peek_on, peek_tail_ws, peek_len;
	uint8_t ct_kind, ct_digest, ct_msg, cte_bad, blen;
	uint8_t peek[MIME_BOUNDARY_MAX + 4];
	uint8_t bound[MIME_BOUNDARY_MAX];
	struct mime_scan_bound bounds[MIME_DEPTH_MAX + 1];
	struct mime_scan_part parts[MIME_PARTS_MAX];
	uint8_t field[MIME_HEADER_FIELD_MAX];
	uint8_t arena[MIME_BLOB_MAX];
};

/* Starts scanning a new message (any previous state is discarded), with
 * the limits MIME_DEPTH_MAX and MIME_PARTS_MAX. */
void mime_scan_init(struct mime_scanner *sc);
/* Lowers the limits for this message (the [limits] settings
 * mime_depth_max and mime_parts_max); values above the MAXes or 0 mean the
 * MAXes. Call right after mime_scan_init. */
void mime_scan_limits(struct mime_scanner *sc, uint32_t depth_max, uint32_t parts_max);

/* Scans the next bytes of the message. Any split gives the same result.
 * chunk is not kept: it may be reused as soon as this returns. */
void mime_scan_feed(struct mime_scanner *sc, struct span chunk);

/* Ends the message and writes the blob to blob[0..cap). Returns 0 and the
 * length in *len_r, or -ENOBUFS when cap is too small (*len_r is then the
 * length needed; MIME_BLOB_MAX is always enough). The scanner may not be
 * fed again (finish may be repeated, giving the same blob). */
int mime_scan_finish(struct mime_scanner *sc, uint8_t *blob, size_t cap,
		     size_t *len_r);

/* ---- the reader -------------------------------------------------------- */

/* A validated blob. Points into the blob's bytes: valid as long as they. */
struct mime_blob {
	struct span b;
	uint32_t nparts;
	uint8_t flags;		/* MIME_BLOB_* */
	uint64_t size;		/* message size */
};

/* One part, as read from a blob. Part 0 is the message. A MESSAGE part has
 * at most one child: the embedded message (its header is the embedded
 * header, its body the embedded body). */
struct mime_part {
	uint32_t index, parent;	/* parent: UINT32_MAX for part 0 */
	uint16_t depth;
	uint8_t kind;		/* enum mime_kind */
	uint8_t flags;		/* MIME_PART_* */
	uint64_t hdr_off;	/* header start */
	uint64_t body_off;	/* header end = body start (blank line included
				 * in the header) */
	uint64_t end_off;	/* body end (the CRLF before a boundary belongs
				 * to the boundary) */
	uint64_t lines;		/* LFs in the body */
};

/* Checks a blob from disk: every offset, index and length. Returns 0 and
 * fills *mb_r, or -EINVAL (corrupt: never trust it) or -EPROTONOSUPPORT
 * (another format version). */
int mime_blob_parse(struct span blob, struct mime_blob *mb_r);

/* Part i (0 <= i < nparts). Returns 0 or -ENOENT. */
int mime_blob_part(const struct mime_blob *mb, uint32_t i, struct mime_part *p_r);

/* The k-th child (1-based) of part i in document order. Returns its index,
 * or -ENOENT. */
int64_t mime_blob_child(const struct mime_blob *mb, uint32_t i, uint32_t k);

/* The raw value of a header field of part i (unfolded, surrounding
 * whitespace trimmed, RFC 2047 words not decoded; the first of
 * duplicates). Returns 1 and the value (pointing into the blob), or 0 when
 * the part has no such field. */
int mime_blob_field(const struct mime_blob *mb, uint32_t i, enum mime_field f,
		    struct span *value_r);

/* What a BODY[section] refers to. */
enum mime_section_what {
	MIME_SECTION_BODY,		 /* "", "1.2": the (part's) content */
	MIME_SECTION_HEADER,		 /* "HEADER", "1.HEADER" */
	MIME_SECTION_HEADER_FIELDS,	 /* "HEADER.FIELDS (...)" */
	MIME_SECTION_HEADER_FIELDS_NOT,	 /* "HEADER.FIELDS.NOT (...)" */
	MIME_SECTION_TEXT,		 /* "TEXT", "1.TEXT" */
	MIME_SECTION_MIME,		 /* "1.MIME" */
};

struct mime_section {
	enum mime_section_what what;
	uint32_t part;		/* the part whose bytes are meant */
	uint64_t off, len;	/* the byte range in the message */
	struct span rest;	/* after "HEADER.FIELDS[.NOT]": " (a b)" */
};

/* Resolves an IMAP section spec (RFC 3501 §6.4.5, RFC 9051 §6.4.5), the
 * text between "BODY[" and "]" (ASCII case-insensitive): "", "HEADER",
 * "TEXT", "HEADER.FIELDS (..)", "1", "1.2.3", "2.MIME", "3.HEADER",
 * "3.TEXT". For HEADER.FIELDS the header range is returned and rest holds
 * the field list for the caller to filter with. Returns 0, -EINVAL (bad
 * syntax) or -ENOENT (no such part: IMAP answers an empty string). */
int mime_blob_section(const struct mime_blob *mb, struct span spec,
		      struct mime_section *sec_r);

/* ---- the formatters ---------------------------------------------------- */

/* Write IMAP syntax to buf[0..cap) and return the full length (like
 * snprintf: when it is > cap, the output was cut; call again with a
 * larger buffer). Nothing is NUL-terminated. Strings are quoted (with \
 * before " and \) or, with CR, LF or 8-bit octets or over MIME_QUOTED_MAX
 * bytes, literals {n}\r\n; absent values are NIL; a NUL octet is written as
 * a SP.
 *
 * ENVELOPE (RFC 3501 §7.4.2) of part i, which must have MIME_PART_ENVELOPE
 * (part 0, or the child of a MESSAGE part): "(date subject (from) ...)".
 * Sender and Reply-To default to From. Returns -ENOENT for another part. */
int64_t mime_write_envelope(const struct mime_blob *mb, uint32_t i,
			    uint8_t *buf, size_t cap);

/* BODY (extensible false) or BODYSTRUCTURE (true) of part i (0: the
 * message), parentheses included: "("text" "plain" ...)". */
int64_t mime_write_bodystructure(const struct mime_blob *mb, uint32_t i,
				 bool extensible, uint8_t *buf, size_t cap);

/* ---- header value helpers ---------------------------------------------- */

/* One address of an RFC 5322 address list. Spans are raw ranges of the
 * value (quotes, comments and folding whitespace still in them): clean them
 * with mime_phrase_render() / mime_addr_part_render(). */
enum mime_addr_type {
	MIME_ADDR_MAILBOX,
	MIME_ADDR_GROUP_START,	/* name: the group's display name */
	MIME_ADDR_GROUP_END,
};

struct mime_addr {
	enum mime_addr_type type;
	struct span name;	/* display name (or the obsolete comment) */
	struct span route;	/* obs-route "@a,@b" without its ':' */
	struct span local;
	struct span domain;
	uint8_t name_is_comment;/* name is "(comment)": "a@b (Name)" */
	uint8_t has_domain;	/* there was an '@' */
};

struct mime_addr_iter {
	struct span v;
	size_t pos;
	uint8_t in_group;
};

/* Iterates over the address list v (group syntax, obs-route, empty list
 * elements, comments as names). Returns 1 with *a_r set, 0 at the end.
 * A group left open at the end gets its GROUP_END. */
void mime_addr_iter_init(struct mime_addr_iter *it, struct span v);
int mime_addr_next(struct mime_addr_iter *it, struct mime_addr *a_r);

/* Writes the cleaned form of a raw span to out[0..cap) and returns its full
 * length: phrase: comments dropped, quotes removed, quoted pairs
 * unescaped, whitespace runs made one SP, trimmed; addr part: the same but
 * whitespace outside quotes dropped ("john . doe" -> "john.doe");
 * comment: a "(comment)" without its outer parentheses. */
size_t mime_phrase_render(struct span raw, uint8_t *out, size_t cap);
size_t mime_addr_part_render(struct span raw, uint8_t *out, size_t cap);
size_t mime_comment_render(struct span raw, uint8_t *out, size_t cap);

/* Parses a Content-Type value "type/subtype; params": returns 1 with the
 * tokens and *params_r the index where the parameters start, 0 when it is
 * not one (then the RFC 2045 default applies). */
int mime_content_type(struct span v, struct span *type_r, struct span *subtype_r,
		      size_t *params_r);

/* Iterates over ";name=value" parameters from v.p + *pos. Returns 1 with
 * the name and the raw value (a token, or a quoted string with its quotes:
 * clean it with mime_value_render()), 0 at the end. Malformed parameters
 * are skipped. */
int mime_param_next(struct span v, size_t *pos, struct span *name_r,
		    struct span *value_r);
/* A parameter value without its quotes and quoted-pair backslashes. */
size_t mime_value_render(struct span raw, uint8_t *out, size_t cap);

#endif
