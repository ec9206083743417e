/* test_tls_sha256.c - tls/tls_sha256: the SHA-NI compression, streaming,
 * HMAC and the HKDF callbacks against FIPS 180-2 vectors and against
 * wolfCrypt's own SHA-256, HMAC and TLS 1.3 HKDF. A full handshake through
 * the callbacks is in test_tls.c (every test there runs with them).
 *
 * The bundled wolfSSL runs its own SHA-256 on the same compression
 * function (scripts/wolfssl-5.5.4-sha256-ni.patch), so "matches wolfCrypt"
 * checks our streaming and padding, not the compression: that is checked
 * by the FIPS vectors and by wolfCrypt against a plain C reference below. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/sha256.h>
#if defined(HAVE_HKDF)
#include <wolfssl/wolfcrypt/kdf.h>
#endif

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls.h"
#include "tls/tls_sha256.h"

#if __has_include(<wolfssl/ringmail_sha256.h>)
#include <wolfssl/ringmail_sha256.h>
#define HAVE_RINGMAIL_SHA256 1
#endif

static void need_ni(void)
{
	if (!tls_sha256_ni_supported())
		cr_skip_test("this CPU has no SHA extensions");
}

/* Deterministic test bytes (xorshift), so a failure can be replayed. */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)(x >> 24);
	}
}

static void hex(const char *h, uint8_t *out)
{
	for (size_t i = 0; i < 32; i++) {
		unsigned v;

		cr_assert_eq(sscanf(h + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

static void ours(const uint8_t *p, size_t n, uint8_t out[32])
{
	struct tls_sha256 s;

	tls_sha256_init(&s);
	tls_sha256_update(&s, p, n);
	tls_sha256_final(&s, out);
}

static void wolf(const uint8_t *p, size_t n, uint8_t out[32])
{
	wc_Sha256 s;

	cr_assert_eq(wc_InitSha256_ex(&s, NULL, INVALID_DEVID), 0);
	cr_assert_eq(wc_Sha256Update(&s, p, (word32)n), 0);
	cr_assert_eq(wc_Sha256Final(&s, out), 0);
	wc_Sha256Free(&s);
}

/* A plain C SHA-256 (FIPS 180-4), independent of both SHA-NI users. */
static uint32_t ror(uint32_t x, int n)
{
	return (x >> n) | (x << (32 - n));
}

static void ref_block(uint32_t h[8], const uint8_t b[64])
{
	static const uint32_t k[64] = {
		0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
		0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
		0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
		0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
		0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
		0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
		0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
		0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
		0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
		0xc67178f2,
	};
	uint32_t w[64], v[8];

	for (int t = 0; t < 16; t++)
		w[t] = (uint32_t)b[4 * t] << 24 | (uint32_t)b[4 * t + 1] << 16 |
		       (uint32_t)b[4 * t + 2] << 8 | b[4 * t + 3];
	for (int t = 16; t < 64; t++)
		w[t] = (ror(w[t - 2], 17) ^ ror(w[t - 2], 19) ^ (w[t - 2] >> 10)) + w[t - 7] +
		       (ror(w[t - 15], 7) ^ ror(w[t - 15], 18) ^ (w[t - 15] >> 3)) + w[t - 16];
	memcpy(v, h, sizeof(v));
	for (int t = 0; t < 64; t++) {
		uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
			      ((v[4] & v[5]) ^ (~v[4] & v[6])) + k[t] + w[t];
		uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
			      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));

		memmove(v + 1, v, 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		h[i] += v[i];
}

static void ref(const uint8_t *p, size_t n, uint8_t out[32])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	uint8_t last[128] = { 0 };
	size_t tail = n % 64, pad = tail < 56 ? 64 : 128;

	for (size_t i = 0; i + 64 <= n; i += 64)
		ref_block(h, p + i);
	memcpy(last, p + n - tail, tail);
	last[tail] = 0x80;
	for (int i = 0; i < 8; i++)
		last[pad - 1 - i] = (uint8_t)((uint64_t)n * 8 >> (8 * i));
	ref_block(h, last);
	if (pad == 128)
		ref_block(h, last + 64);
	for (int i = 0; i < 32; i++)
		out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* wolfCrypt's SHA-256 (on SHA-NI in the bundled build, see
 * wolfcrypt_sha256_runs_on_sha_ni) on every length 0..1000, in one update
 * and in random pieces, against the reference. */
Test(tls_sha256, wolfcrypt_matches_reference)
{
	uint8_t buf[1000], want[32], got[32];

	for (size_t n = 0; n <= sizeof(buf); n++) {
		wc_Sha256 s;
		uint8_t cut[8];
		size_t off = 0;

		fill(buf, n, n + 31337);
		ref(buf, n, want);
		wolf(buf, n, got);
		cr_assert_arr_eq(got, want, 32, "length %zu", n);

		fill(cut, sizeof(cut), n + 4242);
		cr_assert_eq(wc_InitSha256_ex(&s, NULL, INVALID_DEVID), 0);
		for (int k = 0; off < n; k++) {
			size_t take = cut[k % 8] % 150;

			if (take > n - off)
				take = n - off;
			cr_assert_eq(wc_Sha256Update(&s, buf + off, (word32)take), 0);
			off += take;
		}
		cr_assert_eq(wc_Sha256Final(&s, got), 0);
		wc_Sha256Free(&s);
		cr_assert_arr_eq(got, want, 32, "length %zu in pieces", n);
	}
}

/* The bundled wolfSSL runs its SHA-256 on the SHA extensions where the CPU
 * has them, and RINGMAIL_NO_SHA_NI=1 keeps wolfCrypt's own transform (the
 * choice is made once per process, at the first wc_InitSha256; each
 * Criterion test runs in its own process). */
#ifdef RINGMAIL_WOLFSSL_BUNDLED
Test(tls_sha256, wolfcrypt_sha256_runs_on_sha_ni)
{
#ifdef HAVE_RINGMAIL_SHA256
	uint8_t got[32];

	need_ni();
	unsetenv("RINGMAIL_NO_SHA_NI");
	wolf((const uint8_t *)"abc", 3, got);
	cr_assert_eq(ringmail_sha256_ni_in_use(), 1);
#else
	cr_fail("the bundled wolfSSL predates the SHA-NI patch: run scripts/build-wolfssl.sh");
#endif
}

Test(tls_sha256, wolfcrypt_sha256_env_switch)
{
#ifdef HAVE_RINGMAIL_SHA256
	uint8_t got[32], want[32];

	setenv("RINGMAIL_NO_SHA_NI", "1", 1);
	wolf((const uint8_t *)"abc", 3, got);
	cr_assert_eq(ringmail_sha256_ni_in_use(), 0);
	ref((const uint8_t *)"abc", 3, want);
	cr_assert_arr_eq(got, want, 32);
	unsetenv("RINGMAIL_NO_SHA_NI");
#else
	cr_fail("the bundled wolfSSL predates the SHA-NI patch: run scripts/build-wolfssl.sh");
#endif
}
#endif

/* FIPS 180-2, appendix B (and the empty message). */
Test(tls_sha256, fips_180_2_vectors)
{
	static const struct {
		const char *msg;
		size_t repeat;
		const char *digest;
	} v[] = {
		{ "", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
		{ "abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
		{ "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
		{ "a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0" },
	};

	need_ni();
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct tls_sha256 s;
		uint8_t want[32], got[32];

		hex(v[i].digest, want);
		tls_sha256_init(&s);
		for (size_t r = 0; r < v[i].repeat; r++)
			tls_sha256_update(&s, v[i].msg, strlen(v[i].msg));
		tls_sha256_final(&s, got);
		cr_assert_arr_eq(got, want, 32, "vector %zu", i);
	}
}

/* Every length 0..1000, one update and in random pieces, as wolfCrypt. */
Test(tls_sha256, every_length_matches_wolfcrypt)
{
	uint8_t buf[1000], want[32], got[32];

	need_ni();
	for (size_t n = 0; n <= sizeof(buf); n++) {
		struct tls_sha256 s;
		uint8_t cut[8];
		size_t off = 0;

		fill(buf, n, n);
		wolf(buf, n, want);
		ours(buf, n, got);
		cr_assert_arr_eq(got, want, 32, "length %zu", n);

		fill(cut, sizeof(cut), n + 7777);
		tls_sha256_init(&s);
		for (int k = 0; off < n; k++) {
			size_t take = cut[k % 8] % 97;

			if (take > n - off)
				take = n - off;
			tls_sha256_update(&s, buf + off, take);
			off += take;
		}
		tls_sha256_final(&s, got);
		cr_assert_arr_eq(got, want, 32, "length %zu in pieces", n);
		/* final leaves the state initialised: the empty message. */
		tls_sha256_final(&s, got);
		wolf(buf, 0, want);
		cr_assert_arr_eq(got, want, 32);
	}
}

Test(tls_sha256, hmac_matches_wolfcrypt)
{
	uint8_t key[150], msg[300], want[32], got[32];

	need_ni();
	/* Keys around the 64-byte block (longer ones are hashed first). */
	for (size_t kl = 0; kl <= sizeof(key); kl += (kl < 70 ? 1 : 40)) {
		for (size_t ml = 0; ml <= sizeof(msg); ml += 37) {
			Hmac h;

			fill(key, kl, kl * 1000 + ml);
			fill(msg, ml, kl + ml * 3);
			cr_assert_eq(wc_HmacInit(&h, NULL, INVALID_DEVID), 0);
			/* wolfCrypt refuses keys under 14 bytes in some builds; ours
			 * takes any key, so compare only what wolfCrypt accepts. */
			if (wc_HmacSetKey(&h, WC_SHA256, key, (word32)kl) != 0) {
				wc_HmacFree(&h);
				continue;
			}
			cr_assert_eq(wc_HmacUpdate(&h, msg, (word32)ml), 0);
			cr_assert_eq(wc_HmacFinal(&h, want), 0);
			wc_HmacFree(&h);
			tls_sha256_hmac(key, kl, msg, ml, got);
			cr_assert_arr_eq(got, want, 32, "key %zu msg %zu", kl, ml);
		}
	}
}

/* The cached key states (tls_sha256_hmac on 32-byte keys): keys that
 * differ in one byte, more keys than the cache holds, the same key again
 * after eviction and after tls_sha256_forget(), all as wolfCrypt. */
Test(tls_sha256, hmac_key_cache_matches_wolfcrypt)
{
	uint8_t keys[7][32], msg[100], want[32], got[32];

	need_ni();
	for (int i = 0; i < 7; i++) {
		fill(keys[i], 32, 99);
		keys[i][i % 2 ? 31 : 0] ^= (uint8_t)(i + 1);  /* one byte apart */
	}
	for (int round = 0; round < 200; round++) {
		int k = (round * 5 + round / 7) % 7;
		Hmac h;

		if (round % 50 == 49)
			tls_sha256_forget();
		fill(msg, sizeof(msg), (uint64_t)round);
		cr_assert_eq(wc_HmacInit(&h, NULL, INVALID_DEVID), 0);
		cr_assert_eq(wc_HmacSetKey(&h, WC_SHA256, keys[k], 32), 0);
		cr_assert_eq(wc_HmacUpdate(&h, msg, (word32)(round % 100)), 0);
		cr_assert_eq(wc_HmacFinal(&h, want), 0);
		wc_HmacFree(&h);
		tls_sha256_hmac(keys[k], 32, msg, (size_t)(round % 100), got);
		cr_assert_arr_eq(got, want, 32, "round %d key %d", round, k);
	}
	tls_sha256_forget();
	tls_sha256_forget();
}

#if defined(HAVE_PK_CALLBACKS) && defined(HAVE_HKDF)

Test(tls_sha256, hkdf_callbacks_match_wolfcrypt)
{
	static const uint8_t proto[] = "tls13 ";
	static const char *labels[] = { "derived", "c hs traffic", "s ap traffic", "key", "iv",
					"finished", "res master", "resumption" };
	uint8_t salt[32], ikm[48], ikm2[48], prk_w[32], prk_o[32], info[64];

	need_ni();
	for (int i = 0; i < 40; i++) {
		uint32_t salt_len = i % 3 == 0 ? 0 : 32, ikm_len = i % 5 == 0 ? 0 : (uint32_t)(16 + i % 33);

		fill(salt, sizeof(salt), (uint64_t)i);
		fill(ikm, sizeof(ikm), (uint64_t)i + 100);
		memcpy(ikm2, ikm, sizeof(ikm));
		cr_assert_eq(wc_Tls13_HKDF_Extract(prk_w, salt_len ? salt : NULL, salt_len, ikm,
						   ikm_len, WC_SHA256), 0);
		cr_assert_eq(tls_sha256_hkdf_extract(prk_o, salt_len ? salt : NULL, salt_len, ikm2,
						     ikm_len, WC_SHA256, NULL), 0);
		cr_assert_arr_eq(prk_o, prk_w, 32, "extract %d (salt %u, ikm %u)", i, salt_len, ikm_len);

		for (size_t l = 0; l < sizeof(labels) / sizeof(labels[0]); l++) {
			uint32_t okm_len = (uint32_t[]){ 12, 16, 32, 48, 80 }[(i + (int)l) % 5];
			uint32_t info_len = (uint32_t[]){ 0, 32, 64 }[(i + (int)l) % 3];
			uint8_t okm_w[80], okm_o[80];

			fill(info, sizeof(info), (uint64_t)(i * 10 + (int)l));
			cr_assert_eq(wc_Tls13_HKDF_Expand_Label(okm_w, okm_len, prk_w, 32, proto, 6,
								(const uint8_t *)labels[l],
								(word32)strlen(labels[l]), info, info_len,
								WC_SHA256), 0);
			cr_assert_eq(tls_sha256_hkdf_expand_label(okm_o, okm_len, prk_w, 32, proto, 6,
								  (const uint8_t *)labels[l],
								  (uint32_t)strlen(labels[l]), info,
								  info_len, WC_SHA256, 0), 0);
			cr_assert_arr_eq(okm_o, okm_w, okm_len, "expand %d %s %u", i, labels[l], okm_len);
		}
	}
	/* SHA-384 is not ours: Expand-Label hands it back to wolfSSL. */
	{
		uint8_t okm[48];

		cr_assert_eq(tls_sha256_hkdf_expand_label(okm, 48, prk_w, 48, proto, 6,
							  (const uint8_t *)"key", 3, NULL, 0,
							  WC_SHA384, 0), NOT_COMPILED_IN);
	}
}

/* tls_global_init turns it on by itself where the CPU has it, and
 * RINGMAIL_NO_SHA_NI=1 keeps it off. */
Test(tls_sha256, active_after_global_init)
{
	need_ni();
	cr_assert_eq(tls_global_init(), 0);
	cr_assert(tls_sha_ni_active());
	tls_global_cleanup();
}

Test(tls_sha256, env_switch_keeps_wolfcrypt)
{
	need_ni();
	setenv("RINGMAIL_NO_SHA_NI", "1", 1);
	cr_assert_eq(tls_global_init(), 0);
	cr_assert_not(tls_sha_ni_active());
	tls_global_cleanup();
	unsetenv("RINGMAIL_NO_SHA_NI");
}

#endif
