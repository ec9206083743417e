/* ringmail_rand.c - the random generator of the bundled wolfSSL (see
 * ringmail_rand.h and docs/tls.md, "Randomness").
 *
 * Compiled by scripts/build-wolfssl.sh into libwolfssl.a, not by meson.
 *
 * A "fast key erasure" generator over ChaCha20, one per thread:
 *   - The state is a 32-byte key and a buffer of keystream. A refill runs
 *     ChaCha20 under the key (nonce 0, counter 0) over RR_BUF bytes, takes
 *     the first 32 bytes as the next key at once (the old key is gone) and
 *     serves the rest. Every byte served is wiped from the buffer, so the
 *     state never holds anything already returned: a later compromise of
 *     the process's memory does not reveal past outputs.
 *   - Seeded from getrandom(2) (blocking only before the kernel's pool is
 *     initialised, never returning weak bytes) on the first use in a
 *     thread, and reseeded (fresh 32 bytes XORed into the key) after
 *     RR_RESEED_BYTES of output or RR_RESEED_S seconds, whichever first,
 *     checked at each refill.
 *   - fork(): the child's copy of the calling thread's state is dropped
 *     (pthread_atfork), so parent and child never share a stream.
 *     ringmail does not fork after start, but the guard costs nothing.
 *   - A failing getrandom(2) is an error (RNG_FAILURE_E), never a
 *     fallback: wolfSSL then fails the handshake.
 * Per-thread state, not per-loop context: wolfSSL's hook has no argument.
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/chacha.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "ringmail_rand.h"

#ifndef HAVE_CHACHA
#error "ringmail_rand.c needs wolfCrypt's ChaCha20 (--enable-chacha)"
#endif

/* Keystream per refill: the first 32 bytes become the next key. */
#define RR_BUF 1024
#define RR_KEY 32
/* Reseed from the kernel after this much output or this long. */
#define RR_RESEED_BYTES (1u << 20)
#define RR_RESEED_S 60

struct rr_state {
	uint8_t key[RR_KEY];
	uint8_t buf[RR_BUF];
	size_t avail;           /* unread bytes at the end of buf */
	uint64_t since_seed;    /* bytes served since the last (re)seed */
	time_t seeded_at;       /* CLOCK_MONOTONIC_COARSE seconds */
	unsigned long seeds;
	bool seeded;
};

static __thread struct rr_state rr;
static pthread_once_t rr_once = PTHREAD_ONCE_INIT;

static void rr_forget(void)
{
	explicit_bzero(&rr, sizeof(rr));
}

static void rr_init_once(void)
{
	/* In the child only the forking thread exists; drop its state. */
	(void)pthread_atfork(NULL, NULL, rr_forget);
}

static time_t rr_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return ts.tv_sec;
}

static int rr_getrandom(uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = getrandom(p, len, 0);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return RNG_FAILURE_E;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int rr_refill(void)
{
	static const uint8_t iv[CHACHA_IV_BYTES];
	time_t now = rr_now();
	ChaCha cc;
	int ret;

	if (!rr.seeded || rr.since_seed >= RR_RESEED_BYTES || now - rr.seeded_at >= RR_RESEED_S) {
		uint8_t fresh[RR_KEY];

		ret = rr_getrandom(fresh, sizeof(fresh));
		if (ret != 0) {
			explicit_bzero(fresh, sizeof(fresh));
			return ret;
		}
		/* XOR, not replace: the key stays secret if either part is. */
		for (size_t i = 0; i < RR_KEY; i++)
			rr.key[i] = rr.seeded ? (uint8_t)(rr.key[i] ^ fresh[i]) : fresh[i];
		explicit_bzero(fresh, sizeof(fresh));
		rr.seeded = true;
		rr.since_seed = 0;
		rr.seeded_at = now;
		rr.seeds++;
	}
	memset(rr.buf, 0, sizeof(rr.buf));
	ret = wc_Chacha_SetKey(&cc, rr.key, RR_KEY);
	if (ret == 0)
		ret = wc_Chacha_SetIV(&cc, iv, 0);
	if (ret == 0)
		ret = wc_Chacha_Process(&cc, rr.buf, rr.buf, RR_BUF);
	explicit_bzero(&cc, sizeof(cc));
	if (ret != 0) {
		rr_forget();
		return RNG_FAILURE_E;
	}
	memcpy(rr.key, rr.buf, RR_KEY);
	explicit_bzero(rr.buf, RR_KEY);
	rr.avail = RR_BUF - RR_KEY;
	return 0;
}

int ringmail_rand_block(unsigned char *out, unsigned int sz)
{
	unsigned char *p = out;
	size_t left = sz;

	(void)pthread_once(&rr_once, rr_init_once);
	while (left > 0) {
		size_t n;
		uint8_t *src;

		if (rr.avail == 0 || !rr.seeded) {
			int ret = rr_refill();

			if (ret != 0) {
				explicit_bzero(out, sz);
				return ret;
			}
		}
		n = left < rr.avail ? left : rr.avail;
		src = rr.buf + RR_BUF - rr.avail;
		memcpy(p, src, n);
		explicit_bzero(src, n);
		rr.avail -= n;
		rr.since_seed += n;
		p += n;
		left -= n;
	}
	return 0;
}

void ringmail_rand_test_seed(const unsigned char key[32])
{
	unsigned long seeds = rr.seeds;

	(void)pthread_once(&rr_once, rr_init_once);
	rr_forget();
	memcpy(rr.key, key, RR_KEY);
	rr.seeded = true;
	rr.seeded_at = rr_now();
	rr.seeds = seeds;
}

unsigned long ringmail_rand_seed_count(void)
{
	return rr.seeds;
}
