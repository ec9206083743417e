/* ringmail_sha256.c - the choice behind wolfCrypt's SHA-NI transform in
 * the bundled wolfSSL (see ringmail_sha256.h). Compiled into libwolfssl.a
 * by scripts/build-wolfssl.sh; the block function itself is
 * tls/tls_sha256_ni.c, compiled beside it as ringmail_sha256_ni_blocks. */
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "ringmail_sha256.h"

/* -1 until wolfCrypt asks; then its answer. Written once by wolfCrypt's
 * own (unlocked) transform selection, which every thread would make the
 * same way. */
static volatile int ni_in_use = -1;

static int cpu_has_sha(void)
{
#if defined(__x86_64__)
	unsigned a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return 0;
	if (!(c & bit_SSSE3) || !(c & bit_SSE4_1))
		return 0;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return 0;
	return (b & bit_SHA) != 0;
#else
	return 0;
#endif
}

int ringmail_sha256_ni_select(void)
{
	const char *off = getenv("RINGMAIL_NO_SHA_NI");
	int on = cpu_has_sha() && !(off != NULL && off[0] != 0 && strcmp(off, "0") != 0);

	ni_in_use = on;
	return on;
}

int ringmail_sha256_ni_in_use(void)
{
	return ni_in_use;
}
