/* tlsclient.h - the load generators' TLS client (imapload, smtpload):
 * wolfSSL as a filter over memory. The ring moves the ciphertext; wolfSSL
 * never sees a socket. Its I/O callbacks read what the last recv put in
 * io->in and append what it writes to io->out, which the caller sends.
 *
 * The context: TLS 1.3 only, one X25519 key share, no certificate
 * verification (the client is not what is measured). */
#ifndef BENCH_TLSCLIENT_H
#define BENCH_TLSCLIENT_H

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One connection's bytes. The caller owns in (its receive buffer) and
 * sets in_len after a recv, in_off to 0; wolfSSL consumes in[in_off..in_len).
 * out[out_off..out_len) is what is to be sent (ciphertext, or plaintext the
 * caller appended itself without TLS); out grows as needed and is freed by
 * tlsclient_io_free(). */
struct tlsclient_io {
	uint8_t *in;
	uint32_t in_off, in_len;
	uint8_t *out;
	size_t out_len, out_off, out_cap;
};

/* Calls wolfSSL_Init() and makes the client context. NULL on failure. */
WOLFSSL_CTX *tlsclient_ctx_new(void);
/* Frees *ctx (may be NULL) and balances the wolfSSL_Init(); *ctx = NULL. */
void tlsclient_ctx_free(WOLFSSL_CTX **ctx);

/* A connection whose callbacks work on io (which must outlive it). NULL on
 * failure. Free it with wolfSSL_free(). */
WOLFSSL *tlsclient_new(WOLFSSL_CTX *ctx, struct tlsclient_io *io);

/* Appends n bytes to io->out. false when out of memory. */
bool tlsclient_out_append(struct tlsclient_io *io, const void *p, size_t n);
/* Frees io->out; io->in stays the caller's. */
void tlsclient_io_free(struct tlsclient_io *io);

enum {
	TLSCLIENT_WANT = 0,    /* needs more ciphertext (anything to send is in out) */
	TLSCLIENT_DONE = 1,    /* handshake: complete */
	TLSCLIENT_CLOSED = -1, /* the server sent close_notify */
	TLSCLIENT_ERROR = -2,  /* a TLS error; err holds wolfSSL's text */
};

/* Drives the handshake over what io->in holds (the first call writes the
 * ClientHello into io->out). TLSCLIENT_DONE, TLSCLIENT_WANT, or
 * TLSCLIENT_ERROR with the reason in err[0..errcap). */
int tlsclient_handshake(WOLFSSL *ssl, char *err, size_t errcap);
/* Decrypts into buf[0..cap): the number of plaintext bytes (> 0),
 * TLSCLIENT_WANT when io->in is used up, TLSCLIENT_CLOSED, or
 * TLSCLIENT_ERROR with the reason in err. */
int tlsclient_read(WOLFSSL *ssl, void *buf, size_t cap, char *err, size_t errcap);
/* Encrypts p[0..n) into io->out. false on failure. */
bool tlsclient_write(WOLFSSL *ssl, const void *p, size_t n);

#endif
