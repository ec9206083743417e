/* dkim.h - DKIM signing (RFC 6376; rsa-sha256 and ed25519-sha256 per RFC
 * 8463), c=relaxed/relaxed, with wolfCrypt. docs/dkim.md has the details.
 *
 * Keys (written by `ringmail dkim keygen`, or any PEM private key):
 *   DATA/dkim/<domain>.key       PEM: "RSA PRIVATE KEY" (PKCS#1) or
 *                                "PRIVATE KEY" (PKCS#8, RSA or Ed25519);
 *                                the type is read from the key itself
 *   DATA/dkim/<domain>.selector  one line: the selector the key was made for
 *                                (missing: the dkim_selector setting)
 * <domain> is lower case. The signing domain d= is that domain. */
#ifndef RINGMAIL_OUTBOUND_DKIM_H
#define RINGMAIL_OUTBOUND_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The header section (up to the empty line) is buffered to canonicalize
 * it; a larger one is not signed (dkim_signer_error says so). */
#define DKIM_HEADER_MAX (64u * 1024u)
/* Key sizes: keygen makes RSA keys of DKIM_RSA_BITS; loaded RSA keys must
 * have DKIM_RSA_BITS_MIN..DKIM_RSA_BITS_MAX bits (RFC 8301: at least 1024). */
#define DKIM_RSA_BITS 2048
#define DKIM_RSA_BITS_MIN 1024
#define DKIM_RSA_BITS_MAX 4096
#define DKIM_SELECTOR_MAX 64u
#define DKIM_DOMAIN_MAX 254u
/* A key file larger than this is refused. */
#define DKIM_KEY_FILE_MAX (16u * 1024u)
/* The DKIM-Signature field is folded so that no line is longer than this
 * (RFC 5322 2.1.1: 78 recommended). */
#define DKIM_FOLD_COLUMNS 76u

struct dkim;

/* Loads every DATA/dkim/<domain>.key (blocking; startup). A missing
 * directory means no signing: 0 and *dkim_r = NULL. A key that does not
 * load is skipped and recorded (dkim_problem). Returns 0 or -ENOMEM.
 * The loaded set is immutable: signers on several threads may share it
 * while it lives. */
int dkim_new(const char *data_dir, const char *selector, struct dkim **dkim_r);
/* Drops the caller's reference; the set goes with the last one (each
 * signer holds one from dkim_signer_begin to its finish or abort).
 * Sets *dkim_r to NULL. */
void dkim_free(struct dkim **dkim_r);
/* The number of keys loaded. */
size_t dkim_nkeys(const struct dkim *dkim);
/* The i-th key that did not load ("path: reason"), or NULL past the last.
 * Valid while dkim lives. */
const char *dkim_problem(const struct dkim *dkim, size_t i);
/* The "DKIM-Signature: ...\r\n" field for msg (CRLF lines) from domain, or
 * NULL when there is no key for domain or the message cannot be signed (no
 * From field, header section over DKIM_HEADER_MAX). The caller frees it. */
char *dkim_sign(struct dkim *dkim, const char *domain, const uint8_t *msg, size_t len);

/* Streaming signer: the message bytes (CRLF lines, as they go to the queue
 * file) are fed in chunks of any size as they stream past, so a message is
 * never held whole in memory (only its header section, at most
 * DKIM_HEADER_MAX). dkim_signer_begin returns NULL when there is no key for
 * domain (case-insensitive) or memory is short. dkim_signer_finish returns
 * the "DKIM-Signature: ...\r\n" field (caller frees) or NULL on failure, and
 * frees the signer; dkim_signer_abort frees it without signing. */
struct dkim_signer;
struct dkim_signer *dkim_signer_begin(struct dkim *dkim, const char *domain);
void dkim_signer_feed(struct dkim_signer *s, const uint8_t *p, size_t len);
/* Why the signer cannot sign (a static string), or NULL while it can. A
 * missing From field is only known at the end: call it before finish. */
const char *dkim_signer_error(const struct dkim_signer *s);
char *dkim_signer_finish(struct dkim_signer *s);
void dkim_signer_abort(struct dkim_signer *s);

/* `ringmail dkim keygen`: creates DATA/dkim/<domain>.key (type "rsa":
 * DKIM_RSA_BITS, or "ed25519"; mode 0600, the directory 0700) and
 * <domain>.selector, then writes the selector and the TXT record to out.
 * An existing key is kept (-EEXIST) unless force. Errors go to err.
 * Returns 0 or a negative errno. */
int dkim_keygen(const char *data_dir, const char *domain, const char *type,
		const char *selector, bool force, FILE *out, FILE *err);
/* Writes the DNS TXT record of domain's key to out:
 *   <selector>._domainkey.<domain>. IN TXT "v=DKIM1; k=rsa; p=..." "..."
 * (character-strings of at most 255 bytes). selector is the default when
 * the key has no .selector file. Returns 0, -ENOENT when there is no key,
 * or another negative errno (err says why). */
int dkim_dns_record(const char *data_dir, const char *domain, const char *selector,
		    FILE *out, FILE *err);

#endif
