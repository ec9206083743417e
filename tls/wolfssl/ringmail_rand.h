/* ringmail_rand.h - the random generator compiled into the bundled wolfSSL.
 *
 * scripts/build-wolfssl.sh builds wolfSSL with
 * -DCUSTOM_RAND_GENERATE_BLOCK=ringmail_rand_block, force-includes this
 * header into every wolfSSL source, and adds ringmail_rand.c to
 * libwolfssl.a. So every WC_RNG (one per WOLFSSL object) draws from a
 * per-thread ChaCha20 generator seeded with getrandom(2) instead of
 * instantiating its own Hash_DRBG. See docs/tls.md, "Randomness".
 *
 * Self-contained on purpose (no wolfSSL or libc headers): it is included
 * before anything else in every wolfSSL file. It is also installed as
 * <prefix>/include/wolfssl/ringmail_rand.h for the unit tests.
 */
#ifndef RINGMAIL_RAND_H
#define RINGMAIL_RAND_H

/* Force-included into wolfSSL's assembly files too. */
#ifndef __ASSEMBLER__

#ifdef __cplusplus
extern "C" {
#endif

/* Fills out[0..sz) with random bytes. Returns 0, or a negative wolfCrypt
 * error code (RNG_FAILURE_E) when the kernel's generator cannot be read;
 * then out holds no usable bytes and the caller fails (a handshake is
 * refused, never run with weak randomness). Thread-safe: each thread has
 * its own state. */
int ringmail_rand_block(unsigned char *out, unsigned int sz);

/* For tests: replaces the calling thread's key with key[32], as if it had
 * come from getrandom(2), and resets its buffer and reseed counters, so
 * the output can be checked against plain ChaCha20. Not for production. */
void ringmail_rand_test_seed(const unsigned char key[32]);

/* For tests: how often the calling thread has (re)seeded from the kernel. */
unsigned long ringmail_rand_seed_count(void);

#ifdef __cplusplus
}
#endif

#endif /* __ASSEMBLER__ */
#endif
