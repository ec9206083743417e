/* dkim.h - DKIM signing (RFC 6376; rsa-sha256 and ed25519-sha256 per RFC
 * 8463), relaxed/relaxed, with wolfCrypt. Keys live in
 * DATA/dkim/<domain>.key (PEM, written by `ringmail dkim keygen`). */
#ifndef RINGMAIL_OUTBOUND_DKIM_H
#define RINGMAIL_OUTBOUND_DKIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct dkim;

/* Loads every DATA/dkim/<domain>.key (blocking; startup). A missing
 * directory means no signing. Returns 0 or a negative errno. */
int dkim_new(const char *data_dir, const char *selector, struct dkim **dkim_r);
void dkim_free(struct dkim **dkim_r);
/* The "DKIM-Signature: ...\r\n" field for msg (CRLF lines) from domain, or
 * NULL when there is no key for domain. The caller frees it. */
char *dkim_sign(struct dkim *dkim, const char *domain, const uint8_t *msg, size_t len);

/* Streaming signer: the message bytes (CRLF lines, as they go to the queue
 * file) are fed in chunks of any size as they stream past, so a message is
 * never held whole in memory. dkim_signer_begin returns NULL when there is
 * no key for domain. dkim_signer_finish returns the "DKIM-Signature: ...\r\n"
 * field (caller frees) or NULL on failure, and frees the signer;
 * dkim_signer_abort frees it without signing. */
struct dkim_signer;
struct dkim_signer *dkim_signer_begin(struct dkim *dkim, const char *domain);
void dkim_signer_feed(struct dkim_signer *s, const uint8_t *p, size_t len);
char *dkim_signer_finish(struct dkim_signer *s);
void dkim_signer_abort(struct dkim_signer *s);
/* `ringmail dkim keygen`: creates DATA/dkim/<domain>.key (type "rsa" or
 * "ed25519") and writes the selector and the TXT record to out. */
int dkim_keygen(const char *data_dir, const char *domain, const char *type,
		const char *selector, FILE *out, FILE *err);

#endif
