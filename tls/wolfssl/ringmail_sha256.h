/* ringmail_sha256.h - SHA-256 on the x86 SHA extensions inside the bundled
 * wolfSSL.
 *
 * scripts/build-wolfssl.sh patches wolfCrypt 5.5.4's sha256.c
 * (scripts/wolfssl-5.5.4-sha256-ni.patch) so that its transform selection
 * asks ringmail_sha256_ni_select() first and, when it says yes, compresses
 * with ringmail_sha256_ni_blocks: tls/tls_sha256_ni.c compiled into the
 * archive under that name. Every SHA-256 wolfCrypt computes (the TLS
 * transcript, HMAC, certificate and signature digests, SHA-224) then runs
 * on the SHA extensions, in ringmail and in every program linked with the
 * archive (wolfCrypt's benchmark included). Installed as
 * <prefix>/include/wolfssl/ringmail_sha256.h.
 */
#ifndef RINGMAIL_SHA256_H
#define RINGMAIL_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called once per process by wolfCrypt's transform selection: 1 when the
 * CPU has SHA, SSSE3 and SSE4.1 (CPUID) and RINGMAIL_NO_SHA_NI is unset
 * (or empty or "0"), else 0. Records the answer for
 * ringmail_sha256_ni_in_use(). */
int ringmail_sha256_ni_select(void);

/* 1 when wolfCrypt's SHA-256 runs on the SHA extensions, 0 when it runs
 * its own transform, -1 before wolfCrypt has chosen (its first
 * wc_InitSha256). */
int ringmail_sha256_ni_in_use(void);

/* Compresses n 64-byte blocks at p into h (FIPS 180-4 word order).
 * Only after ringmail_sha256_ni_select() returned 1. */
void ringmail_sha256_ni_blocks(uint32_t h[8], const uint8_t *p, size_t n);

#ifdef __cplusplus
}
#endif

#endif
