/* tls_sha256.c - streaming SHA-256, HMAC and the TLS 1.3 HKDF callbacks
 * over tls_sha256_ni_blocks (see tls_sha256.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/sha256.h>
#if defined(HAVE_HKDF)
#include <wolfssl/wolfcrypt/kdf.h>
#endif

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "tls/tls_sha256.h"

/* Longest HkdfLabel: 2 + 1 + 255 + 1 + 255 (RFC 8446 section 7.1). */
#define HKDF_LABEL_MAX (2 + 1 + 255 + 1 + 255)

bool tls_sha256_ni_supported(void)
{
#if defined(__x86_64__)
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return false;
	if (!(c & bit_SSSE3) || !(c & bit_SSE4_1))
		return false;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return false;
	return (b & bit_SHA) != 0;
#else
	return false;
#endif
}

/* ---- SHA-256 ------------------------------------------------------------------ */

static const uint32_t sha256_iv[8] = {
	0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
	0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* The streaming core. */
static void sha_update(uint32_t h[8], uint8_t buf[64], size_t *buf_len, const uint8_t *p, size_t len)
{
	if (*buf_len > 0) {
		size_t take = 64 - *buf_len;

		if (take > len)
			take = len;
		memcpy(buf + *buf_len, p, take);
		*buf_len += take;
		p += take;
		len -= take;
		if (*buf_len < 64)
			return;
		tls_sha256_ni_blocks(h, buf, 1);
		*buf_len = 0;
	}
	if (len >= 64) {
		tls_sha256_ni_blocks(h, p, len / 64);
		p += len & ~(size_t)63;
		len &= 63;
	}
	if (len > 0) {
		memcpy(buf, p, len);
		*buf_len = len;
	}
}

static void sha_final(uint32_t h[8], uint8_t buf[64], size_t buf_len, uint64_t total, uint8_t out[32])
{
	uint64_t bits = total * 8;

	buf[buf_len++] = 0x80;
	if (buf_len > 56) {
		memset(buf + buf_len, 0, 64 - buf_len);
		tls_sha256_ni_blocks(h, buf, 1);
		buf_len = 0;
	}
	memset(buf + buf_len, 0, 56 - buf_len);
	for (int i = 0; i < 8; i++)
		buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
	tls_sha256_ni_blocks(h, buf, 1);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(h[i] >> 8);
		out[4 * i + 3] = (uint8_t)h[i];
	}
}

void tls_sha256_init(struct tls_sha256 *s)
{
	memcpy(s->h, sha256_iv, sizeof(s->h));
	s->buf_len = 0;
	s->total = 0;
}

void tls_sha256_update(struct tls_sha256 *s, const void *p, size_t len)
{
	s->total += len;
	sha_update(s->h, s->buf, &s->buf_len, p, len);
}

void tls_sha256_final(struct tls_sha256 *s, uint8_t out[TLS_SHA256_LEN])
{
	sha_final(s->h, s->buf, s->buf_len, s->total, out);
	explicit_bzero(s, sizeof(*s));
	tls_sha256_init(s);
}

/* ---- HMAC, HKDF ---------------------------------------------------------------- */

struct hmac {
	struct tls_sha256 in, out;
};

/* The key schedule expands each secret into several labels (a traffic
 * secret into its key, IV and finished key; the master secret into four
 * secrets), so the HMAC states after the key's ipad and opad blocks, two
 * compressions of every HMAC, are kept for the last few 32-byte keys. Per
 * thread, and only until tls_sha256_forget(), which tls/ calls at the end
 * of every call into wolfSSL: they hold what the secret itself does, and
 * wolfSSL still holds the secret during that call. */
#define PAD_CACHE 4

struct pad_entry {
	uint8_t key[TLS_SHA256_LEN];
	uint32_t in[8], out[8];
	bool used;
};

static __thread struct pad_entry pad_cache[PAD_CACHE];
static __thread unsigned pad_next;
static __thread bool pad_dirty;

static bool key_eq(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;

	for (int i = 0; i < TLS_SHA256_LEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

void tls_sha256_forget(void)
{
	if (!pad_dirty)
		return;
	explicit_bzero(pad_cache, sizeof(pad_cache));
	pad_next = 0;
	pad_dirty = false;
}

static void hmac_init(struct hmac *m, const uint8_t *key, size_t key_len)
{
	uint8_t k[TLS_SHA256_BLOCK] = { 0 }, pad[TLS_SHA256_BLOCK];

	if (key_len == TLS_SHA256_LEN) {
		for (int i = 0; i < PAD_CACHE; i++) {
			const struct pad_entry *e = &pad_cache[i];

			if (e->used && key_eq(e->key, key)) {
				memcpy(m->in.h, e->in, sizeof(m->in.h));
				memcpy(m->out.h, e->out, sizeof(m->out.h));
				m->in.buf_len = m->out.buf_len = 0;
				m->in.total = m->out.total = TLS_SHA256_BLOCK;
				return;
			}
		}
	}

	if (key_len > TLS_SHA256_BLOCK) {
		tls_sha256_init(&m->in);
		tls_sha256_update(&m->in, key, key_len);
		tls_sha256_final(&m->in, k);
	} else if (key_len > 0) {
		memcpy(k, key, key_len);
	}
	for (int i = 0; i < TLS_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x36;
	tls_sha256_init(&m->in);
	tls_sha256_update(&m->in, pad, sizeof(pad));
	for (int i = 0; i < TLS_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x5c;
	tls_sha256_init(&m->out);
	tls_sha256_update(&m->out, pad, sizeof(pad));
	explicit_bzero(k, sizeof(k));
	explicit_bzero(pad, sizeof(pad));
	if (key_len == TLS_SHA256_LEN) {
		struct pad_entry *e = &pad_cache[pad_next++ % PAD_CACHE];

		memcpy(e->key, key, TLS_SHA256_LEN);
		memcpy(e->in, m->in.h, sizeof(e->in));
		memcpy(e->out, m->out.h, sizeof(e->out));
		e->used = true;
		pad_dirty = true;
	}
}

static void hmac_final(struct hmac *m, uint8_t out[TLS_SHA256_LEN])
{
	uint8_t inner[TLS_SHA256_LEN];

	tls_sha256_final(&m->in, inner);
	tls_sha256_update(&m->out, inner, sizeof(inner));
	tls_sha256_final(&m->out, out);
	explicit_bzero(inner, sizeof(inner));
	explicit_bzero(m, sizeof(*m));
}

void tls_sha256_hmac(const uint8_t *key, size_t key_len, const uint8_t *msg,
		     size_t msg_len, uint8_t out[TLS_SHA256_LEN])
{
	struct hmac m;

	hmac_init(&m, key, key_len);
	tls_sha256_update(&m.in, msg, msg_len);
	hmac_final(&m, out);
}

#if defined(HAVE_PK_CALLBACKS) && defined(HAVE_HKDF) && defined(WOLFSSL_TLS13) && \
	!defined(NO_SHA256)
#define TLS_SHA256_WIRED 1

/* TLS 1.3 HKDF-Extract (RFC 8446 7.1; no IKM means HashLen zero bytes,
 * as wolfSSL's wc_Tls13_HKDF_Extract does). */
int tls_sha256_hkdf_extract(uint8_t *prk, const uint8_t *salt, uint32_t salt_len, uint8_t *ikm,
			    uint32_t ikm_len, int digest, void *ctx)
{
	static const uint8_t zeros[TLS_SHA256_LEN];

	(void)ctx;
	if (digest != WC_SHA256)
		return wc_Tls13_HKDF_Extract(prk, salt, salt_len, ikm, ikm_len, digest);
	if (ikm_len == 0)
		tls_sha256_hmac(salt, salt_len, zeros, sizeof(zeros), prk);
	else
		tls_sha256_hmac(salt, salt_len, ikm, ikm_len, prk);
	return 0;
}

/* TLS 1.3 HKDF-Expand-Label: HKDF-Expand (RFC 5869) of the HkdfLabel
 * {length, "tls13 " + label, context}. SHA-384 goes back to wolfSSL. */
int tls_sha256_hkdf_expand_label(uint8_t *okm, uint32_t okm_len, const uint8_t *prk,
				 uint32_t prk_len, const uint8_t *protocol, uint32_t protocol_len,
				 const uint8_t *label, uint32_t label_len, const uint8_t *info,
				 uint32_t info_len, int digest, int side)
{
	uint8_t data[HKDF_LABEL_MAX + 1], t[TLS_SHA256_LEN];
	size_t n = 0, done = 0;
	uint8_t ctr = 0;

	(void)side;
	if (digest != WC_SHA256)
		return NOT_COMPILED_IN;
	if (protocol_len + label_len > 255 || info_len > 255 || okm_len > 255 * TLS_SHA256_LEN)
		return BUFFER_E;
	data[n++] = (uint8_t)(okm_len >> 8);
	data[n++] = (uint8_t)okm_len;
	data[n++] = (uint8_t)(protocol_len + label_len);
	memcpy(data + n, protocol, protocol_len);
	n += protocol_len;
	memcpy(data + n, label, label_len);
	n += label_len;
	data[n++] = (uint8_t)info_len;
	if (info_len > 0)
		memcpy(data + n, info, info_len);
	n += info_len;
	/* T(i) = HMAC(PRK, T(i-1) | HkdfLabel | i) */
	while (done < okm_len) {
		struct hmac m;
		size_t take = okm_len - done < TLS_SHA256_LEN ? okm_len - done : TLS_SHA256_LEN;

		ctr++;
		hmac_init(&m, prk, prk_len);
		if (ctr > 1)
			tls_sha256_update(&m.in, t, sizeof(t));
		tls_sha256_update(&m.in, data, n);
		tls_sha256_update(&m.in, &ctr, 1);
		hmac_final(&m, t);
		memcpy(okm + done, t, take);
		done += take;
	}
	explicit_bzero(t, sizeof(t));
	explicit_bzero(data, n);
	return 0;
}

static bool env_off(const char *name)
{
	const char *v = getenv(name);

	return v != NULL && v[0] != 0 && strcmp(v, "0") != 0;
}
#endif

bool tls_sha256_setup(void)
{
#ifdef TLS_SHA256_WIRED
	return tls_sha256_ni_supported() && !env_off("RINGMAIL_NO_SHA_NI");
#else
	return false;
#endif
}

void tls_sha256_ctx_setup(void *ctx, bool on)
{
#ifdef TLS_SHA256_WIRED
	if (!on)
		return;
	wolfSSL_CTX_SetHKDFExtractCb(ctx, tls_sha256_hkdf_extract);
	wolfSSL_CTX_SetHKDFExpandLabelCb(ctx, tls_sha256_hkdf_expand_label);
#else
	(void)ctx;
	(void)on;
#endif
}
