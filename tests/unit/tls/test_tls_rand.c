/* test_tls_rand.c - the bundled wolfSSL's random generator
 * (tls/wolfssl/ringmail_rand.c, compiled into libwolfssl.a): its output is
 * the fast-key-erasure ChaCha20 stream it claims, it reseeds, threads and a
 * forked child never share a stream, and WC_RNG uses it. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/chacha.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/ringmail_rand.h>

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF 1024 /* RR_BUF in ringmail_rand.c */

/* The construction, independently: ChaCha20 under key (nonce 0) over
 * 1024 bytes; the first 32 are the next key, the other 992 the output. */
struct ref {
	uint8_t key[32], ks[BUF];
	size_t pos;
};

static void ref_refill(struct ref *r)
{
	static const uint8_t iv[12];
	ChaCha cc;

	memset(r->ks, 0, sizeof(r->ks));
	cr_assert_eq(wc_Chacha_SetKey(&cc, r->key, 32), 0);
	cr_assert_eq(wc_Chacha_SetIV(&cc, iv, 0), 0);
	cr_assert_eq(wc_Chacha_Process(&cc, r->ks, r->ks, BUF), 0);
	memcpy(r->key, r->ks, 32);
	r->pos = 32;
}

static void ref_take(struct ref *r, uint8_t *out, size_t n)
{
	while (n > 0) {
		size_t k;

		if (r->pos == BUF)
			ref_refill(r);
		k = BUF - r->pos < n ? BUF - r->pos : n;
		memcpy(out, r->ks + r->pos, k);
		r->pos += k;
		out += k;
		n -= k;
	}
}

Test(tls_rand, output_is_the_fast_key_erasure_chacha20_stream)
{
	static const size_t sizes[] = { 1, 31, 32, 100, 991, 992, 993, 5000, 0, 7, 2048 };
	struct ref r = { .pos = BUF };
	uint8_t want[5000], got[5000];

	for (int i = 0; i < 32; i++)
		r.key[i] = (uint8_t)(i * 7 + 1);
	ringmail_rand_test_seed(r.key);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		ref_take(&r, want, sizes[i]);
		cr_assert_eq(ringmail_rand_block(got, (unsigned)sizes[i]), 0);
		cr_assert_arr_eq(got, want, sizes[i], "request %zu (%zu bytes)", i, sizes[i]);
	}
}

Test(tls_rand, reseeds_from_the_kernel_after_a_mebibyte)
{
	static uint8_t big[1 << 16];
	uint8_t key[32] = { 1 }, a[32], b[32];
	unsigned long seeds;
	struct ref r = { .pos = BUF };

	ringmail_rand_test_seed(key);
	seeds = ringmail_rand_seed_count();
	for (int i = 0; i < 16; i++)
		cr_assert_eq(ringmail_rand_block(big, sizeof(big)), 0);
	cr_assert_eq(ringmail_rand_seed_count(), seeds);
	/* The next refill mixes in getrandom(2): the stream leaves the
	 * reference (which knows only the test key). */
	cr_assert_eq(ringmail_rand_block(big, sizeof(big)), 0);
	cr_assert_eq(ringmail_rand_seed_count(), seeds + 1);
	memcpy(r.key, key, sizeof(key));
	for (int i = 0; i < 17; i++)
		ref_take(&r, big, sizeof(big));
	ref_take(&r, a, sizeof(a));
	cr_assert_eq(ringmail_rand_block(b, sizeof(b)), 0);
	cr_assert(memcmp(a, b, sizeof(a)) != 0);
}

static void *thread_draw(void *arg)
{
	cr_assert_eq(ringmail_rand_block(arg, 32), 0);
	return NULL;
}

Test(tls_rand, threads_have_their_own_streams)
{
	uint8_t a[32], b[32];
	pthread_t t1, t2;

	cr_assert_eq(pthread_create(&t1, NULL, thread_draw, a), 0);
	cr_assert_eq(pthread_create(&t2, NULL, thread_draw, b), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	cr_assert(memcmp(a, b, sizeof(a)) != 0);
}

/* Without the fork guard, parent and child would continue the same
 * (test-seeded) stream and draw equal bytes. */
Test(tls_rand, forked_child_does_not_repeat_the_parent)
{
	uint8_t key[32] = { 9 }, mine[32], theirs[32], first[32];
	int fds[2], st;
	pid_t pid;

	ringmail_rand_test_seed(key);
	cr_assert_eq(ringmail_rand_block(first, sizeof(first)), 0);
	cr_assert_eq(pipe(fds), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		uint8_t c[32];

		if (ringmail_rand_block(c, sizeof(c)) != 0 || write(fds[1], c, sizeof(c)) != sizeof(c))
			_exit(1);
		_exit(0);
	}
	cr_assert_eq(ringmail_rand_block(mine, sizeof(mine)), 0);
	cr_assert_eq(read(fds[0], theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	cr_assert(memcmp(mine, theirs, sizeof(mine)) != 0);
	close(fds[0]);
	close(fds[1]);
}

/* WC_RNG (what every WOLFSSL object holds) draws from it. */
Test(tls_rand, wc_rng_uses_it)
{
	uint8_t key[32] = { 3 }, want[64], got[64];
	struct ref r = { .pos = BUF };
	WC_RNG rng;

	cr_assert_eq(wc_InitRng(&rng), 0);
	ringmail_rand_test_seed(key);
	memcpy(r.key, key, sizeof(key));
	ref_take(&r, want, sizeof(want));
	cr_assert_eq(wc_RNG_GenerateBlock(&rng, got, sizeof(got)), 0);
	cr_assert_arr_eq(got, want, sizeof(got));
	cr_assert_eq(wc_FreeRng(&rng), 0);
}
