/* test_tls_x25519.c - X25519 public keys from the Edwards table
 * (tls/tls_x25519.c) against wolfCrypt's Montgomery ladder, and the TLS
 * key generation path that uses it. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/curve25519.h>
#include <wolfssl/wolfcrypt/random.h>

#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tls/tls.h"
#include "tls/tls_x25519.h"

static void need_it(void)
{
	if (!tls_x25519_available())
		cr_skip_test("not with this wolfSSL build");
}

/* RFC 7748 section 6.1: Alice's and Bob's key pairs. */
Test(tls_x25519, rfc7748_vectors)
{
	static const char *v[][2] = {
		{ "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
		  "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" },
		{ "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
		  "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f" },
	};

	need_it();
	for (size_t i = 0; i < 2; i++) {
		uint8_t priv[32], want[32], got[32];

		for (int j = 0; j < 32; j++) {
			unsigned a, b;

			cr_assert_eq(sscanf(v[i][0] + 2 * j, "%2x", &a), 1);
			cr_assert_eq(sscanf(v[i][1] + 2 * j, "%2x", &b), 1);
			priv[j] = (uint8_t)a;
			want[j] = (uint8_t)b;
		}
		cr_assert_eq(tls_x25519_public(got, priv), 0);
		cr_assert_arr_eq(got, want, 32, "vector %zu", i);
	}
}

/* Random private keys, and the extremes (all zero, all one bits). */
Test(tls_x25519, matches_the_ladder)
{
	WC_RNG rng;

	need_it();
	cr_assert_eq(wc_InitRng(&rng), 0);
	for (int i = 0; i < 2000; i++) {
		uint8_t priv[32], want[32], got[32];

		if (i == 0)
			memset(priv, 0, sizeof(priv));
		else if (i == 1)
			memset(priv, 0xff, sizeof(priv));
		else
			cr_assert_eq(wc_RNG_GenerateBlock(&rng, priv, sizeof(priv)), 0);
		/* Ours clamps a copy itself; wolfCrypt wants it clamped. */
		cr_assert_eq(tls_x25519_public(got, priv), 0);
		priv[0] &= 248;
		priv[31] &= 127;
		priv[31] |= 64;
		cr_assert_eq(wc_curve25519_make_pub(32, want, 32, priv), 0);
		cr_assert_arr_eq(got, want, 32, "key %d", i);
	}
	wc_FreeRng(&rng);
}
