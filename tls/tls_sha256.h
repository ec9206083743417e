/* tls_sha256.h - SHA-256 with the x86 SHA extensions, routed into wolfSSL.
 *
 * wolfSSL 5.5.4 has no SHA-NI path on x86-64 (its best is AVX2, ~5.5
 * cycles/byte); the SHA extensions do ~1.5-2. A TLS 1.3 handshake runs
 * SHA-256 over the transcript and a few dozen HMACs in its key schedule,
 * so tls/ plugs this in where wolfSSL allows it:
 *   - a crypto callback device (WOLF_CRYPTO_CB) that takes every
 *     wc_Sha256 initialised with its devId: the handshake transcript, the
 *     Finished and binder HMACs (wolfSSL_CTX_SetDevId on our contexts);
 *   - the HKDF-Extract and HKDF-Expand-Label callbacks (HAVE_PK_CALLBACKS)
 *     of the TLS 1.3 key schedule, which wolfSSL otherwise runs with no
 *     device.
 * Other algorithms return CRYPTOCB_UNAVAILABLE and stay in wolfCrypt. Only
 * on a CPU with SHA, SSSE3 and SSE4.1 (CPUID), and only with the bundled
 * wolfSSL (built with cryptocb and pkcallbacks); otherwise nothing is
 * registered and wolfSSL's own SHA-256 runs.
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
 * function below except tls_sha256_register requires it. */
bool tls_sha256_ni_supported(void);

/* Compresses n 64-byte blocks at p into h (FIPS 180-4 word order). In
 * tls_sha256_ni.c, the only file built with -msha. */
void tls_sha256_ni_blocks(uint32_t h[8], const uint8_t *p, size_t n);

void tls_sha256_init(struct tls_sha256 *s);
void tls_sha256_update(struct tls_sha256 *s, const void *p, size_t len);
/* Writes the digest and leaves s initialised again. */
void tls_sha256_final(struct tls_sha256 *s, uint8_t out[TLS_SHA256_LEN]);

/* HMAC-SHA256 (RFC 2104) of msg under key. */
void tls_sha256_hmac(const uint8_t *key, size_t key_len, const uint8_t *msg,
		     size_t msg_len, uint8_t out[TLS_SHA256_LEN]);

/* wolfSSL's TLS 1.3 HKDF-Extract and HKDF-Expand-Label callbacks
 * (CallbackHKDFExtract, CallbackHKDFExpandLabel): digest is wolfCrypt's
 * hash type. SHA-256 runs here; Extract hands other digests to
 * wc_Tls13_HKDF_Extract, Expand-Label returns NOT_COMPILED_IN so wolfSSL
 * runs its own. Return 0 or a negative wolfCrypt error. Only with the
 * bundled wolfSSL (TLS_SHA256_WIRED). */
int tls_sha256_hkdf_extract(uint8_t *prk, const uint8_t *salt, uint32_t salt_len, uint8_t *ikm,
			    uint32_t ikm_len, int digest, void *ctx);
int tls_sha256_hkdf_expand_label(uint8_t *okm, uint32_t okm_len, const uint8_t *prk,
				 uint32_t prk_len, const uint8_t *protocol, uint32_t protocol_len,
				 const uint8_t *label, uint32_t label_len, const uint8_t *info,
				 uint32_t info_len, int digest, int side);

/* Registers the crypto callback device with wolfCrypt when the CPU and
 * the wolfSSL build allow it. Call once, after wolfSSL_Init, before any
 * thread uses wolfSSL. Returns the devId to give wolfSSL
 * (tls_sha256_ctx_setup does), or -2 (INVALID_DEVID) when SHA-256 stays
 * in wolfCrypt. RINGMAIL_NO_SHA_NI=1 in the environment forces the latter
 * (for measurements). */
int tls_sha256_register(void);
/* True when the registered device takes SHA-256. */
bool tls_sha256_device_sha(void);

/* Routes a context's SHA-256 and TLS 1.3 HKDF to this code when
 * registered (devId != -2); void * is a WOLFSSL_CTX *. */
void tls_sha256_ctx_setup(void *ctx, int dev_id);

#endif
