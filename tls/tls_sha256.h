/* tls_sha256.h - SHA-256 with the x86 SHA extensions, for the TLS 1.3 key
 * schedule.
 *
 * wolfSSL 5.5.4 has no SHA-NI path on x86-64 (its best is AVX2, ~5.5
 * cycles/byte); the SHA extensions do ~1.5-2. A TLS 1.3 handshake runs a
 * few dozen HMAC-SHA256 in its key schedule (HKDF-Extract and
 * HKDF-Expand-Label), which wolfSSL lets an application replace
 * (HAVE_PK_CALLBACKS: wolfSSL_CTX_SetHKDFExtractCb / SetHKDFExpandLabelCb).
 * tls/ installs those on its contexts when the CPU has SHA, SSSE3 and
 * SSE4.1 (CPUID) and the wolfSSL build has the callbacks (the bundled one);
 * SHA-384 suites go back to wolfSSL.
 *
 * The rest of wolfCrypt's SHA-256 (the handshake transcript, the
 * Finished/binder HMACs, digests) runs on the same compression function in
 * the bundled wolfSSL only: scripts/build-wolfssl.sh patches its sha256.c
 * and compiles tls_sha256_ni.c into the archive as
 * ringmail_sha256_ni_blocks (tls/wolfssl/ringmail_sha256.h). No runtime
 * hook does it: the crypto-callback route (WOLF_CRYPTO_CB, a devId on the
 * context) does not work for SHA-256 in 5.5.4's Intel-assembly build, whose
 * wc_InitSha256_ex stores the devId and then calls InitSha256(), which
 * resets it to INVALID_DEVID (checked in gdb).
 */
#ifndef RINGMAIL_TLS_SHA256_H
#define RINGMAIL_TLS_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLS_SHA256_LEN 32
#define TLS_SHA256_BLOCK 64

/* Streaming SHA-256 state. Zero-fillable after tls_sha256_init(). */
struct tls_sha256 {
	uint32_t h[8];
	uint8_t buf[TLS_SHA256_BLOCK];
	size_t buf_len;
	uint64_t total;         /* bytes hashed so far */
};

/* True when this CPU has the SHA extensions (and SSSE3, SSE4.1). Every
 * function below except tls_sha256_setup requires it. */
bool tls_sha256_ni_supported(void);

/* Compresses n 64-byte blocks at p into h (FIPS 180-4 word order). In
 * tls_sha256_ni.c, the only file built with -msha. */
void tls_sha256_ni_blocks(uint32_t h[8], const uint8_t *p, size_t n);

void tls_sha256_init(struct tls_sha256 *s);
void tls_sha256_update(struct tls_sha256 *s, const void *p, size_t len);
/* Writes the digest and leaves s initialised again. */
void tls_sha256_final(struct tls_sha256 *s, uint8_t out[TLS_SHA256_LEN]);

/* HMAC-SHA256 (RFC 2104) of msg under key. For 32-byte keys the states
 * after the ipad and opad blocks are kept, per thread, for the next HMAC
 * under the same key until tls_sha256_forget(). */
void tls_sha256_hmac(const uint8_t *key, size_t key_len, const uint8_t *msg,
		     size_t msg_len, uint8_t out[TLS_SHA256_LEN]);

/* Wipes the calling thread's cached HMAC key states (see tls_sha256_hmac).
 * tls/ calls it at the end of every call into wolfSSL that can derive
 * keys, so they never outlive the call. Cheap when there is nothing. */
void tls_sha256_forget(void);

/* wolfSSL's TLS 1.3 HKDF-Extract and HKDF-Expand-Label callbacks
 * (CallbackHKDFExtract, CallbackHKDFExpandLabel): digest is wolfCrypt's
 * hash type. SHA-256 runs here; Extract hands other digests to
 * wc_Tls13_HKDF_Extract, Expand-Label returns NOT_COMPILED_IN so wolfSSL
 * runs its own. Return 0 or a negative wolfCrypt error. Only with a
 * wolfSSL that has HAVE_PK_CALLBACKS (TLS_SHA256_WIRED). */
int tls_sha256_hkdf_extract(uint8_t *prk, const uint8_t *salt, uint32_t salt_len, uint8_t *ikm,
			    uint32_t ikm_len, int digest, void *ctx);
int tls_sha256_hkdf_expand_label(uint8_t *okm, uint32_t okm_len, const uint8_t *prk,
				 uint32_t prk_len, const uint8_t *protocol, uint32_t protocol_len,
				 const uint8_t *label, uint32_t label_len, const uint8_t *info,
				 uint32_t info_len, int digest, int side);

/* Whether tls_sha256_ctx_setup should install the HKDF callbacks: the
 * CPU and the wolfSSL build allow it, and RINGMAIL_NO_SHA_NI=1 (for
 * measurements) is not in the environment. */
bool tls_sha256_setup(void);

/* Installs the HKDF callbacks on a context (void * is a WOLFSSL_CTX *)
 * when on. */
void tls_sha256_ctx_setup(void *ctx, bool on);

#endif
