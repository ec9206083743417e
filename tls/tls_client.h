/* tls_client.h - the client side of TLS, as a filter over memory (the same
 * model as tls.h): outbound SMTP's opportunistic STARTTLS.
 *
 * Without a verifier the peer's certificate is not checked (RFC 7435
 * opportunistic security: encryption against passive observers, what MX
 * delivery uses; MTA-STS/DANE would add verification). With one (a smart
 * host with smart_tls_verify) the chain must lead to one of its CAs and the
 * certificate must name the host. TLS 1.2 and 1.3, AEAD suites. A
 * tls_client belongs to one loop thread. tls_global_init() must have run. */
#ifndef RINGMAIL_TLS_TLS_CLIENT_H
#define RINGMAIL_TLS_TLS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"
#include "tls/tls.h"

struct tls_client;
struct tls_verifier;

/* Loads the CA certificates of ca_file (PEM, such as Debian's
 * /etc/ssl/certs/ca-certificates.crt) into a verifier that any loop's
 * clients may share. Blocking file I/O: call it at startup, before the
 * loops run. Returns 0, -ENOENT (no such file), -EINVAL (no certificate in
 * it) or -ENOMEM. */
int tls_verifier_new(const char *ca_file, struct tls_verifier **v_r);
void tls_verifier_free(struct tls_verifier **v_r);

/* Creates a client for server name sni (sent as SNI; may be NULL). With a
 * verifier (may be NULL), the handshake fails unless the certificate chains
 * to one of its CAs and names sni. Every ciphertext byte goes to out.
 * Returns 0 or -ENOMEM / -EIO. */
int tls_client_new(const char *sni, const struct tls_verifier *v, tls_out_fn out, void *out_arg,
		   struct tls_client **c_r);
/* Frees it and sets *c_r to NULL. */
void tls_client_free(struct tls_client **c_r);

/* Sends the ClientHello (to out). TLS_WANT_READ, or TLS_ERROR. */
enum tls_status tls_client_start(struct tls_client *c);
/* As tls_conn_read(): drives the handshake with the ciphertext in `in`,
 * then decrypts into plain. TLS_OK (progress; check
 * tls_client_handshake_done()), TLS_WANT_READ, TLS_CLOSED or TLS_ERROR. */
enum tls_status tls_client_read(struct tls_client *c, struct span in, size_t *consumed_r,
				uint8_t *plain, size_t cap, size_t *plain_len_r);
/* Encrypts to out; only after the handshake. TLS_OK or TLS_ERROR. */
enum tls_status tls_client_write(struct tls_client *c, const uint8_t *p, size_t len);
bool tls_client_handshake_done(const struct tls_client *c);
/* "TLSv1.3" ..., and the suite name; "" before the handshake. */
const char *tls_client_version(const struct tls_client *c);
const char *tls_client_cipher(const struct tls_client *c);
/* After TLS_ERROR: a short reason ("certificate not trusted", "certificate
 * does not name the host", "handshake failed"). */
const char *tls_client_error(const struct tls_client *c);

#endif
