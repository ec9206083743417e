/* test_tls_sha256.c - tls/tls_sha256: the SHA-NI compression, streaming,
 * HMAC and the HKDF callbacks against FIPS 180-2 vectors and against
 * wolfCrypt's own SHA-256, HMAC and TLS 1.3 HKDF. A full handshake through
 * the callbacks is in test_tls.c (every test there runs with them). */
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
