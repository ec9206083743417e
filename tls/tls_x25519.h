/* tls_x25519.h - X25519 key generation on the Ed25519 fixed-base table.
 *
 * wolfSSL 5.5.4 computes an X25519 public key with a full Montgomery
 * ladder on the base point (u = 9): as slow as a key agreement (~35 us
 * here), and a TLS 1.3 server pays one per handshake with an X25519 key
 * share. The same point is [k]B on the birationally equivalent Edwards
 * curve, where wolfCrypt's Ed25519 has a precomputed table of multiples
 * of B (ge_scalarmult_base); u = (1 + y) / (1 - y) = (Z + Y) / (Z - Y)
 * (RFC 7748, section 4.1). Same result, bit for bit; constant time as
 * both wolfCrypt routines are.
 */
#ifndef RINGMAIL_TLS_X25519_H
#define RINGMAIL_TLS_X25519_H

#include <stdbool.h>
#include <stdint.h>

/* True when this wolfSSL build has what tls_x25519_public needs (the
 * bundled one: Curve25519 and Ed25519 with wolfCrypt's field code). */
bool tls_x25519_available(void);

/* pub = X25519(priv, 9), priv clamped as RFC 7748 says (priv itself is
 * not modified). Returns 0, or -ENOTSUP when unavailable. */
int tls_x25519_public(uint8_t pub[32], const uint8_t priv[32]);

#endif
