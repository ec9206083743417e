/* sasl.h - strict base64 and SASL PLAIN, shared by SMTP AUTH, IMAP
 * AUTHENTICATE and POP3 AUTH.
 *
 * Pure functions: bytes in, bytes or spans out; no allocation, no I/O, no
 * globals. They return 0 or a negative errno. Spans point into the caller's
 * buffer and are valid as long as it is. A decoded credential is a secret:
 * callers must not log it and should wipe the buffer after use. */
#ifndef RINGMAIL_PROTO_SASL_H
#define RINGMAIL_PROTO_SASL_H

#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

/* RFC 4616 limits: authzid and authcid must be accepted up to 255 octets;
 * we allow passwords up to 1024 (pass phrases). */
#define SASL_PLAIN_ID_MAX 255
#define SASL_PLAIN_PASSWD_MAX 1024

/* The most octets sasl_base64_decode() can produce from in_len characters. */
#define SASL_BASE64_DECODED_MAX(in_len) ((in_len) / 4 * 3)
/* The characters sasl_base64_encode() writes for n octets. */
#define SASL_BASE64_ENCODED_LEN(n) (((n) + 2) / 3 * 4)

/* Decodes RFC 4648 §4 base64 strictly: only A-Z a-z 0-9 + /, length a
 * multiple of 4, '=' padding only as the last one or two characters, unused
 * bits of the last group zero (canonical encoding), no whitespace. The empty
 * input decodes to zero octets. Writes at most cap octets to out.
 * Returns 0 and sets *len_r, -EINVAL on any malformation, -ENOSPC when cap
 * is too small (SASL_BASE64_DECODED_MAX(in.len) is always enough). */
int sasl_base64_decode(struct span in, uint8_t *out, size_t cap, size_t *len_r);

/* Encodes in as padded base64 into out (no terminating NUL).
 * Returns 0 and sets *len_r, or -ENOSPC when cap <
 * SASL_BASE64_ENCODED_LEN(in.len). */
int sasl_base64_encode(struct span in, uint8_t *out, size_t cap, size_t *len_r);

/* Splits a decoded RFC 4616 PLAIN message "[authzid] NUL authcid NUL passwd".
 * Exactly two NULs; authcid and passwd non-empty; no CR or LF anywhere;
 * authzid (may be empty) and authcid at most SASL_PLAIN_ID_MAX octets,
 * passwd at most SASL_PLAIN_PASSWD_MAX. UTF-8 validity is not checked (the
 * credential lookup decides). The spans point into decoded.
 * Returns 0, -EINVAL (malformed) or -E2BIG (a part too long). */
int sasl_plain_split(struct span decoded, struct span *authzid_r,
		     struct span *authcid_r, struct span *passwd_r);

#endif
