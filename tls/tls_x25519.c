/* tls_x25519.c - X25519 public keys from the Ed25519 base-point table (see
 * tls_x25519.h). ge_scalarmult_base and the fe_* field functions are
 * wolfCrypt internals of the pinned wolfSSL 5.5.4 (WOLFSSL_LOCAL, linked
 * from the static archive); the unit tests check the result against
 * wolfCrypt's own ladder. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_x25519.h"

#if defined(HAVE_CURVE25519) && defined(HAVE_ED25519) && !defined(ED25519_SMALL) && \
	!defined(CURVE25519_SMALL) && defined(RINGMAIL_WOLFSSL_BUNDLED)
#include <wolfssl/wolfcrypt/curve25519.h>
#include <wolfssl/wolfcrypt/ge_operations.h>
#define TLS_X25519_EDWARDS 1
#endif

bool tls_x25519_available(void)
{
#ifdef TLS_X25519_EDWARDS
	return true;
#else
	return false;
#endif
}

int tls_x25519_public(uint8_t pub[32], const uint8_t priv[32])
{
#ifdef TLS_X25519_EDWARDS
	unsigned char k[32];
	ge_p3 a;
	fe num, den;

	memcpy(k, priv, sizeof(k));
	k[0] &= 248;
	k[31] &= 127;
	k[31] |= 64;
	fe_init();
	/* k < 2^255, as ge_scalarmult_base requires (k[31] <= 127). */
	ge_scalarmult_base(&a, k);
	fe_add(num, a.Z, a.Y);
	fe_sub(den, a.Z, a.Y);
	fe_invert(den, den);
	fe_mul(num, num, den);
	fe_tobytes(pub, num);
	explicit_bzero(k, sizeof(k));
	explicit_bzero(&a, sizeof(a));
	explicit_bzero(num, sizeof(num));
	explicit_bzero(den, sizeof(den));
	return 0;
#else
	(void)pub;
	(void)priv;
	return -ENOTSUP;
#endif
}

#ifdef TLS_X25519_EDWARDS

/* RINGMAIL_NO_X25519_TABLE=1 keeps wolfCrypt's ladder (for measurements). */
static bool use_table = true;

__attribute__((constructor)) static void tls_x25519_env(void)
{
	const char *v = getenv("RINGMAIL_NO_X25519_TABLE");

	if (v != NULL && v[0] != 0 && strcmp(v, "0") != 0)
		use_table = false;
}

/* The linker sends every call of wc_curve25519_make_key here (meson:
 * -Wl,--wrap=wc_curve25519_make_key); __real_ is wolfCrypt's own. Does what
 * wolfSSL 5.5.4's does (a random clamped private key from rng, then the
 * public key) with the public key from the table. Keys on a crypto
 * callback device or of another size go to wolfCrypt. */
int __real_wc_curve25519_make_key(WC_RNG *rng, int keysize, curve25519_key *key);
int __wrap_wc_curve25519_make_key(WC_RNG *rng, int keysize, curve25519_key *key);

int __wrap_wc_curve25519_make_key(WC_RNG *rng, int keysize, curve25519_key *key)
{
	int ret;

	if (!use_table || rng == NULL || key == NULL || keysize != CURVE25519_KEYSIZE
#ifdef WOLF_CRYPTO_CB
	    || key->devId != INVALID_DEVID
#endif
	    )
		return __real_wc_curve25519_make_key(rng, keysize, key);
	ret = wc_curve25519_make_priv(rng, keysize, key->k);
	if (ret != 0)
		return ret;
	key->privSet = 1;
	ret = tls_x25519_public(key->p.point, key->k);
	key->pubSet = ret == 0;
	return ret;
}

#endif
