/* dkim_sign.c - signs a message with ringmail's DKIM signer, for the tests
 * that verify the result with an independent verifier (dkimpy).
 *
 *   dkim_sign DATA_DIR DOMAIN [CHUNK] < message > signed
 *
 * Feeds stdin to the streaming signer in pieces of CHUNK bytes (default:
 * all at once) and writes the DKIM-Signature field followed by the message.
 * Exit 1 (and the reason on stderr) when nothing was signed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbound/dkim.h"

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: dkim_sign DATA_DIR DOMAIN [CHUNK] < message\n");
		return 2;
	}
	size_t chunk = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
	size_t len = 0, cap = 65536;
	unsigned char *msg = malloc(cap);
	size_t n;
	while (msg && (n = fread(msg + len, 1, cap - len, stdin)) > 0) {
		len += n;
		if (len == cap)
			msg = realloc(msg, cap *= 2);
	}
	if (!msg)
		return 2;
	struct dkim *d = NULL;
	dkim_new(argv[1], "ringmail", &d);
	for (size_t i = 0; dkim_problem(d, i); i++)
		fprintf(stderr, "dkim_sign: %s\n", dkim_problem(d, i));
	struct dkim_signer *s = dkim_signer_begin(d, argv[2]);
	if (!s) {
		fprintf(stderr, "dkim_sign: no key for %s\n", argv[2]);
		return 1;
	}
	if (!chunk)
		chunk = len ? len : 1;
	for (size_t off = 0; off < len; off += chunk)
		dkim_signer_feed(s, msg + off, len - off < chunk ? len - off : chunk);
	const char *why = dkim_signer_error(s);
	char *sig = dkim_signer_finish(s);
	if (!sig) {
		fprintf(stderr, "dkim_sign: not signed: %s\n", why ? why : "?");
		return 1;
	}
	fwrite(sig, 1, strlen(sig), stdout);
	fwrite(msg, 1, len, stdout);
	free(sig);
	free(msg);
	dkim_free(&d);
	return 0;
}
