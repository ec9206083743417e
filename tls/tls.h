/* tls.h - wolfSSL as a filter over memory.
 *
 * tls/ never touches a file descriptor. The caller feeds ciphertext it has
 * received to tls_conn_read() and gets plaintext back; every byte of
 * ciphertext wolfSSL produces (handshake, records, alerts) goes to the
 * caller's tls_out_fn, which appends it to the connection's send queue.
 *
 * Threads: a tls_server is built once (startup, SIGHUP) on any thread and
 * then shared read-only by every loop thread; the only state that changes
 * under it, the session-ticket key ring, has its own lock. A tls_conn belongs
 * to the one loop thread that created it.
 *
 * Security (see docs/tls.md): TLS 1.2 and 1.3 only, no renegotiation, AEAD
 * suites only, X25519 then P-256, SNI selects the certificate, ALPN mismatch
 * is fatal (ALPACA), stateless session tickets under a rotating key ring. */
#ifndef RINGMAIL_TLS_TLS_H
#define RINGMAIL_TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

enum tls_status {
	TLS_OK = 0,     /* progress; see the function for what it means */
	TLS_WANT_READ,  /* needs more ciphertext from the peer */
	TLS_CLOSED,     /* the peer sent close_notify */
	TLS_ERROR,      /* fatal; an alert has been queued when one applies */
};

/* Returns "ok", "want-read", "closed" or "error", for logs. */
const char *tls_status_str(enum tls_status s);

/* Certificates, SNI table and ticket keys. Refcounted: SIGHUP builds a new
 * one while live connections keep the old one. */
struct tls_server;
/* One per connection. */
struct tls_conn;

struct tls_cert_config {
	const char *name;      /* SNI host name ("*.example.org" allowed); "" for the default */
	const char *cert_path; /* PEM: the certificate, then its chain */
	const char *key_path;  /* PEM private key (ECDSA or RSA) */
};

/* Default session ticket key rotation period (seconds). */
#define TLS_TICKET_ROTATE_S_DEFAULT 3600u
/* Bytes of TLS record we are ready to hold while waiting for the whole
 * ClientHello (to read its SNI before choosing the certificate). */
#define TLS_CLIENT_HELLO_MAX (5u + 16384u)

struct tls_server_config {
	/* For the generated self-signed certificate: <data_dir>/tls/cert.pem
	 * and key.pem. Used only when ncerts is 0. */
	const char *data_dir;
	/* CN and first subjectAltName of the generated certificate (the
	 * second SAN is "localhost"). */
	const char *hostname;
	/* The certificates. With none, the first tls_server_new() generates a
	 * self-signed ECDSA P-256 certificate (10 years) and later calls reuse
	 * it. With several, the one named "" is the default (else the first). */
	const struct tls_cert_config *certs;
	size_t ncerts;
	/* Session ticket key rotation period in seconds; 0: the default. A
	 * ticket is accepted for one to two periods after it was issued. */
	uint32_t ticket_rotate_s;
	/* Optional: an older server (the one a SIGHUP replaces) whose ticket
	 * keys are carried over, so clients keep resuming across a reload. */
	const struct tls_server *ticket_keys_from;
};

/* The cipher list every ringmail TLS server sets (wolfSSL's syntax): AEAD
 * only, TLS 1.3 suites first. Exported for bench/imap_floor.c, which must
 * make the same choice. */
extern const char tls_cipher_list[];

/* Initialises wolfSSL and its allocators (jemalloc through malloc/free).
 * Call once per process before anything else here, from the main thread.
 * Returns 0 or -EIO. */
int tls_global_init(void);
/* True when the TLS 1.3 key schedule (HKDF) runs on the CPU's SHA
 * extensions (tls_sha256.h) rather than in wolfCrypt. After tls_global_init. */
bool tls_sha_ni_active(void);
/* Releases wolfSSL's global state; every server must be gone. */
void tls_global_cleanup(void);

/* Builds a server from cfg: reads (or generates) certificates and keys.
 * Blocking file I/O: call it from the main thread, never from a loop.
 * Returns 0 and sets *srv_r (one reference held by the caller), or a
 * negative errno with a human message in err (e.g. "cannot read
 * /x/cert.pem: No such file or directory"). cfg is not kept. */
int tls_server_new(const struct tls_server_config *cfg,
		   struct tls_server **srv_r, char *err, size_t errlen);
/* Takes / drops a reference. Thread-safe. unref sets *srv_r to NULL and
 * frees the server when the last reference goes. */
void tls_server_ref(struct tls_server *srv);
void tls_server_unref(struct tls_server **srv_r);
/* SHA-256 of the default certificate's DER, upper-case hex with colons.
 * Valid as long as the server. */
const char *tls_server_fingerprint(const struct tls_server *srv);
/* Rotates the ticket keys now (as if ticket_rotate_s had passed): tickets
 * under the current key stay valid for one more rotation. Thread-safe. */
void tls_server_rotate_ticket_keys(struct tls_server *srv);

/* Appends ciphertext to the connection's send queue (copying it). Returns 0
 * or a negative errno (the connection is then broken). */
typedef int (*tls_out_fn)(void *arg, const uint8_t *p, size_t len);

/* Creates a server-side connection; takes a reference on srv until
 * tls_conn_free(). alpn is the protocol's ALPN id ("smtp", "imap", "pop3"),
 * a string that outlives the connection (a literal); a client that offers
 * ALPN without it gets a fatal no_application_protocol alert (ALPACA), a
 * client that offers no ALPN is accepted. NULL: no ALPN check. Nothing is
 * sent until the first tls_conn_read(). The wolfSSL object itself is
 * created once the whole ClientHello is in, with the certificate its SNI
 * asks for. Returns 0 or -ENOMEM / -EIO. */
int tls_conn_new(struct tls_server *srv, const char *alpn, tls_out_fn out,
		 void *out_arg, struct tls_conn **conn_r);
/* Frees the connection (no alert is sent: call tls_conn_close_notify()
 * first for a polite end) and sets *conn_r to NULL. */
void tls_conn_free(struct tls_conn **conn_r);

/* Drives the handshake and decryption with the ciphertext in `in` (valid
 * during the call only). *consumed_r: bytes taken (all of them unless the
 * function returns early because plain is full; bytes not consumed must be
 * offered again). Up to cap decrypted bytes are written to plain and
 * *plain_len_r is set. Returns
 *   TLS_OK        progress: the handshake may have completed, plaintext
 *                 may be 0 bytes;
 *   TLS_WANT_READ no plaintext, more ciphertext needed;
 *   TLS_CLOSED    the peer sent close_notify (plaintext before it is
 *                 returned first, with TLS_OK);
 *   TLS_ERROR     fatal; the alert is already queued to out.
 * When more plaintext is pending inside wolfSSL than cap, calling again with
 * an empty `in` returns the rest (see tls_conn_pending()). */
enum tls_status tls_conn_read(struct tls_conn *c, struct span in,
			      size_t *consumed_r, uint8_t *plain, size_t cap,
			      size_t *plain_len_r);
/* Decrypted bytes wolfSSL holds that tls_conn_read() will return without
 * new input. */
size_t tls_conn_pending(const struct tls_conn *c);
/* Encrypts len bytes to out. Only once tls_conn_can_write(). TLS_OK or
 * TLS_ERROR. */
enum tls_status tls_conn_write(struct tls_conn *c, const uint8_t *p, size_t len);
/* Whether tls_conn_write() may be called: after the handshake, or at
 * 0.5-RTT, once a TLS 1.3 server sent its Finished and waits for the
 * client's (RFC 8446 4.4.4; needs the bundled wolfSSL's patch, docs/tls.md
 * "The greeting in the first flight"). Nothing is read from the client
 * before its Finished either way. */
bool tls_conn_can_write(const struct tls_conn *c);
/* Queues a close_notify alert to out (once; no-op before the handshake). */
void tls_conn_close_notify(struct tls_conn *c);

bool tls_conn_handshake_done(const struct tls_conn *c);
/* "TLSv1.3", "TLSv1.2"; "" before the handshake. Static strings. */
const char *tls_conn_version(const struct tls_conn *c);
/* The cipher suite's name ("TLS13-AES128-GCM-SHA256"); "" before the
 * handshake. Valid as long as the connection. */
const char *tls_conn_cipher(const struct tls_conn *c);
/* The host name the client asked for with SNI; NULL when none, or when it
 * held anything but letters, digits, '-', '_' and '.' (then the default
 * certificate is used). Safe to log. Valid as long as the connection. */
const char *tls_conn_sni(const struct tls_conn *c);
/* True when the handshake resumed a session (ticket): no certificate
 * signature was needed. */
bool tls_conn_resumed(const struct tls_conn *c);
/* After TLS_ERROR: wolfSSL's reason ("version error", ...); else NULL.
 * Static string. */
const char *tls_conn_error(const struct tls_conn *c);

/* True when `in` starts like a TLS record carrying a handshake (0x16), i.e.
 * the client spoke TLS first (implicit TLS vs a plaintext client on 995).
 * False for an empty span. */
bool tls_is_client_hello_start(struct span in);

#endif
