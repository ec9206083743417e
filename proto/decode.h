/* decode.h - streaming Content-Transfer-Encoding decoders (RFC 2045):
 * base64 and quoted-printable, and the CTE a part names.
 *
 * Pure code: no allocation, no I/O, no globals. The state is a small
 * struct the caller owns (zero it, or call *_init, to start a new body);
 * input comes in pieces of any size and any split gives the same output.
 * Used by IMAP SEARCH to look through encoded text parts and by FETCH
 * BINARY (RFC 3516, RFC 9051) to send parts decoded; lenient as
 * readers must be (RFC 2045 6.7, 6.8): bytes outside the alphabet are
 * skipped, malformed escapes are passed through as they are. */
#ifndef RINGMAIL_PROTO_DECODE_H
#define RINGMAIL_PROTO_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* Whitespace a QP decoder holds back to see whether it ends its line
 * (trailing whitespace is removed, RFC 2045 6.7 rule 3). A longer run
 * than this is passed on but for its last DECODE_QP_WS_MAX bytes (an
 * encoded line is at most 76 characters). */
#define DECODE_QP_WS_MAX 80

/* Output bound of one *_feed call: out must have room for this many bytes
 * for an input of len bytes (what an earlier call held back included). */
#define DECODE_OUT_MAX(len) ((len) + 4 + DECODE_QP_WS_MAX)

struct decode_b64 {
	uint32_t acc;  /* bits not yet written */
	uint8_t n;     /* sextets in acc (0..3) */
};

struct decode_qp {
	uint8_t state; /* private */
	uint8_t hex;   /* the first digit after '=' */
	uint8_t nws;   /* whitespace held back in ws */
	uint8_t ws[DECODE_QP_WS_MAX];
};

void decode_b64_init(struct decode_b64 *d);
/* Decodes in into out (room for DECODE_OUT_MAX(in.len) bytes; in fact at
 * most in.len * 3 / 4 + 3 are written). Characters outside the base64
 * alphabet (line breaks, spaces, junk) are ignored; '=' ends a quantum (a
 * following one starts afresh, as concatenated encodings do). Returns the
 * number of bytes written. */
size_t decode_b64_feed(struct decode_b64 *d, struct span in, uint8_t *out);

void decode_qp_init(struct decode_qp *d);
/* Decodes in into out (room for DECODE_OUT_MAX(in.len) bytes). "=XY" (hex,
 * either case) is the octet XY; "=" followed by optional spaces and a line
 * break is a soft line break (removed); any other "=" sequence is passed
 * through unchanged. Spaces and tabs before a line break (CR or LF) are
 * removed: transport padding (RFC 2045 6.7 rule 3). Line breaks are kept
 * as they were sent. Returns the number of bytes written. */
size_t decode_qp_feed(struct decode_qp *d, struct span in, uint8_t *out);
/* The end of the input: writes what an unfinished escape held back
 * ("=" or "=X" at the very end) to out (room for 2 bytes); whitespace
 * held back ends the last line and is dropped. Returns the number of
 * bytes written. */
size_t decode_qp_finish(struct decode_qp *d, uint8_t *out);

/* A Content-Transfer-Encoding value, as far as decoding goes. */
enum decode_cte {
	DECODE_CTE_IDENTITY, /* 7bit, 8bit, binary, or no field: bytes as they are */
	DECODE_CTE_BASE64,
	DECODE_CTE_QP,
	DECODE_CTE_UNKNOWN,  /* anything else (x-uuencode, ...): cannot decode */
};

/* Classifies a Content-Transfer-Encoding field value (the raw value, as
 * the structure blob keeps it): the mechanism is compared ASCII
 * case-insensitively after surrounding whitespace and any RFC 822
 * comments "(...)" are removed. An empty value (a field with nothing in
 * it) is taken as the default, 7bit. */
enum decode_cte decode_cte_parse(struct span v);

/* One decoder for any CTE: identity copies, base64 and QP decode. Zero it
 * or call decode_init; cte must not be DECODE_CTE_UNKNOWN. */
struct decode {
	uint8_t cte; /* enum decode_cte */
	struct decode_b64 b64;
	struct decode_qp qp;
};

void decode_init(struct decode *d, enum decode_cte cte);
/* Decodes in into out (room for DECODE_OUT_MAX(in.len) bytes). Returns the
 * number of bytes written. */
size_t decode_feed(struct decode *d, struct span in, uint8_t *out);
/* The end of the input (room for 2 bytes in out): what QP held back.
 * Returns the number of bytes written. */
size_t decode_finish(struct decode *d, uint8_t *out);

#endif
