/* stream.h - the byte stream a protocol session talks through.
 *
 * A session (SMTP, IMAP, POP3) sees plaintext only: stream.c sits between
 * the engine's connection and the session and runs TLS when the listener
 * or the session asks for it (implicit TLS, STARTTLS/STLS, the dual mode of
 * DESIGN.md). The same session code runs under plaintext and TLS.
 *
 * All functions run on the connection's loop thread. */
#ifndef RINGMAIL_PROTO_STREAM_H
#define RINGMAIL_PROTO_STREAM_H

#include <stdbool.h>
#include <sys/types.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/span.h"

struct stream;

/* What a protocol session implements. */
struct stream_ops {
	/* Allocate the session (stream_set_session) and greet. 0 or -errno. */
	int (*open)(struct stream *s);
	/* Plaintext arrived: same contract as conn_ops.data. */
	ssize_t (*data)(struct stream *s, struct span in);
	/* The session timer (stream_set_timer) fired. */
	void (*timer)(struct stream *s);
	/* The server is stopping: say goodbye and close. */
	void (*shutdown)(struct stream *s);
	/* Everything queued so far has been written to the socket. Optional:
	 * a session that streams a large reply (POP3 RETR) waits for it
	 * instead of filling the send queue (limits.send_queue_max). */
	void (*drained)(struct stream *s);
	/* A STARTTLS handshake completed: reset the protocol state. */
	void (*tls_ready)(struct stream *s);
	/* The connection is going away: free the session. The stream itself
	 * is freed right after this returns: a session that must outlive it
	 * (store callbacks still pending) must not keep using s — copy what
	 * it needs (stream_loop(), ...) first. */
	void (*close)(struct stream *s);
	/* The session's protocol name for ALPN ("smtp", "imap", "pop3"). */
	const char *alpn;
};

/* The sessions of each protocol (proto/smtp_session.c, imap_session.c,
 * pop3_session.c). */
extern const struct stream_ops smtp_session_ops;
extern const struct stream_ops imap_session_ops;
extern const struct stream_ops pop3_session_ops;
/* Auto-discovery over HTTP/1.1 (proto/http_session.c). */
extern const struct stream_ops http_session_ops;

/* The engine-side handler for a listener row of protocol proto. */
const struct conn_ops *stream_conn_ops(enum listener_proto proto);

int stream_send(struct stream *s, const void *p, size_t len);
/* Bytes queued for the socket and not yet written (ciphertext under TLS). */
size_t stream_send_pending(const struct stream *s);
/* Zero-copy output of a plaintext stream: len bytes the caller put in the
 * pipe pipe_fd (read end) go to the socket with splice, in order with
 * stream_send()'s bytes (conn_send_splice() says how long pipe_fd must stay
 * open). Returns 0, -ENOTSUP when the stream is not plaintext (TLS, or a
 * STARTTLS under way: the bytes must be encrypted) or conn_send_splice()'s
 * errors. */
int stream_send_splice(struct stream *s, int pipe_fd, size_t len);
/* Bytes of stream_send_splice() not yet written: 0 when the pipe holds
 * nothing the connection still has to send. */
size_t stream_splice_pending(const struct stream *s);
/* True when bytes go to the socket as they are (no TLS, none starting, no
 * compression): stream_send_splice() can be used. */
bool stream_is_plain(const struct stream *s);
/* Turns on DEFLATE both ways (IMAP COMPRESS, RFC 4978) at zlib level
 * 1-9: what the session sends from now on is compressed, and what arrives
 * after the bytes the current data callback consumes is inflated before
 * the session sees it. -EALREADY when it is on (or the stream is not
 * plaintext or TLS), -ENOMEM. */
int stream_compress(struct stream *s, int level);
bool stream_is_compressed(const struct stream *s);
int stream_printf(struct stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends a reply and closes once it is written. */
void stream_close(struct stream *s, bool flush);
void stream_set_timer(struct stream *s, uint32_t ms);
void stream_pause(struct stream *s);
void stream_resume(struct stream *s);

/* Starts TLS after everything queued so far (the "go ahead" reply) has been
 * written. Input that arrived behind the command is discarded, never parsed
 * after the handshake (CVE-2011-0411); the caller must return the whole
 * input as consumed. Returns 0, or -ENOTSUP when no TLS is available. */
int stream_starttls(struct stream *s);
/* True once TLS protects the stream (implicit, or after STARTTLS). */
bool stream_is_tls(const struct stream *s);
/* True when the upgrade can be offered (TLS configured, not yet active). */
bool stream_can_starttls(const struct stream *s);
/* True when login (AUTH, LOGIN, USER/PASS, MAIL on submission) must wait
 * for TLS on this stream: a starttls or dual listener before the upgrade,
 * or a plain one with limits.plaintext_auth = no. */
bool stream_tls_required(const struct stream *s);
/* "TLSv1.3 TLS_AES_128_GCM_SHA256" for Received: headers; "" without TLS. */
const char *stream_tls_version(const struct stream *s);
const char *stream_tls_cipher(const struct stream *s);

void *stream_session(const struct stream *s);
void stream_set_session(struct stream *s, void *session);
struct conn *stream_conn(const struct stream *s);
const struct listener_config *stream_listener(const struct stream *s);
/* The configuration snapshot this connection started with. */
const struct config *stream_config(const struct stream *s);
struct log *stream_log(const struct stream *s);
uint64_t stream_sid(const struct stream *s);
const char *stream_peer(const struct stream *s);
struct loop *stream_loop(const struct stream *s);

#endif
