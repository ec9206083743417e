/* dkim_canon.h - DKIM "relaxed" canonicalization (RFC 6376 3.4.2, 3.4.4).
 *
 * Pure: bytes in, canonical bytes out, no allocation, no I/O. The body
 * canonicalizer is resumable: input may arrive in chunks split anywhere
 * (inside a run of whitespace, between CR and LF, inside a run of empty
 * lines); the output is the same as for the whole body at once. Only CRLF
 * ends a line: a bare CR or LF is an ordinary character. */
#ifndef RINGMAIL_OUTBOUND_DKIM_CANON_H
#define RINGMAIL_OUTBOUND_DKIM_CANON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Canonicalizes one header field (name, colon, value, continuation lines;
 * without its final CRLF) into out, which must hold len + 3 bytes: the
 * lower-case name, ':', the unfolded value with whitespace runs reduced to
 * one SP and none at either end, then CRLF when crlf is true. Returns the
 * number of bytes written, or 0 when the field has no colon. */
size_t dkim_canon_header(const uint8_t *field, size_t len, bool crlf, uint8_t *out);

/* Body state: zero-initialize (or DKIM_BODY_CANON_INIT) before the first
 * byte of the body. */
struct dkim_body_canon {
	uint64_t empty_lines; /* CRLFs of empty lines held back: emitted only if
	                       * a non-empty line follows (3.4.4 c) */
	bool wsp;             /* whitespace seen, emitted as one SP if more of
	                       * the line follows */
	bool cr;              /* a CR seen: CRLF ends the line, else it is data */
	bool content;         /* the current line has emitted something */
};

#define DKIM_BODY_CANON_INIT ((struct dkim_body_canon){ 0 })

/* Canonical output is passed to emit (arg, bytes, length) in pieces. */
typedef void dkim_emit_fn(void *arg, const uint8_t *p, size_t len);

/* Feeds len body bytes. */
void dkim_body_canon_feed(struct dkim_body_canon *c, const uint8_t *p, size_t len,
			  dkim_emit_fn *emit, void *arg);
/* Ends the body: a last line without CRLF gets one; trailing empty lines and
 * whitespace are dropped. An empty body canonicalizes to nothing. */
void dkim_body_canon_finish(struct dkim_body_canon *c, dkim_emit_fn *emit, void *arg);

#endif
