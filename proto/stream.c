/* stream.c - plaintext and TLS under one session interface.
 *
 * States of a stream:
 *   PLAIN      bytes go straight between the connection and the session,
 *              parsed in place in the receive buffer
 *   DUAL_WAIT  a dual listener waits (limits.dual_wait) for the client's
 *              first bytes: a TLS ClientHello starts implicit TLS, anything
 *              else or silence gets the plaintext greeting
 *   FLUSH      the session accepted STARTTLS/STLS: its "go ahead" reply is
 *              being written; every byte that arrives meanwhile is plaintext
 *              injected ahead of the handshake and is discarded
 *              (CVE-2011-0411)
 *   HANDSHAKE  TLS handshake under the handshake timeout. An implicit-TLS
 *              session opens (greets) as soon as the TLS 1.3 server has
 *              sent its Finished: its greeting leaves in the server's
 *              first flight (0.5-RTT, tls_conn_can_write()); the client's
 *              bytes still reach it only after the client's Finished
 *   TLS        ciphertext in, decrypted into s->plain, offered to the
 *              session; the session's replies are encrypted on the way out
 *
 * Over PLAIN or TLS, a session may turn on DEFLATE compression (IMAP
 * COMPRESS, RFC 4978): from then on what arrives (from the connection, or
 * decrypted into s->plain) is inflated into s->infl and offered to the
 * session from there, and what the session sends is deflated, flushed
 * (Z_SYNC_FLUSH) at the end of every stream_send(), and written as before.
 */
#include "proto/stream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "core/log.h"
#include "proto/services.h"
#include "tls/tls.h"

#define STREAM_PLAIN_MAX (256u * 1024u) /* decrypted bytes kept for the session */
#define STREAM_PLAIN_FIRST 4096u   /* first buffer: a command or a few */
#define STREAM_DECRYPT_MIN 1024u   /* room below this: the buffer doubles */

enum stream_state { ST_PLAIN, ST_DUAL_WAIT, ST_FLUSH, ST_HANDSHAKE, ST_TLS };

struct stream {
	struct conn *conn;
	const struct stream_ops *ops;
	void *session;
	struct tls_conn *tls;
	uint8_t *plain;  /* decrypted, not yet consumed; NULL when empty */
	uint32_t plain_len, plain_cap;
	z_stream *zin, *zout; /* DEFLATE (stream_compress); NULL when off */
	uint8_t *infl;   /* inflated, not yet consumed; NULL when empty */
	uint32_t infl_len, infl_cap;
	enum stream_state state;
	bool opened;     /* ops->open ran */
	bool implicit;   /* TLS from the first byte: greet after the handshake */
	bool closing;
	bool timer_held; /* the session asked for timer_ms during the handshake */
	uint32_t timer_ms;
};

/* The session writes through TLS: after the handshake, or during it once
 * it opened at 0.5-RTT. */
static bool tls_writing(const struct stream *s)
{
	return s->state == ST_TLS || (s->state == ST_HANDSHAKE && s->opened && s->implicit);
}

static const struct stream_ops *const session_table[] = {
	[PROTO_SMTP] = &smtp_session_ops,
	[PROTO_IMAP] = &imap_session_ops,
	[PROTO_POP3] = &pop3_session_ops,
	[PROTO_HTTP] = &http_session_ops,
};

void *stream_session(const struct stream *s) { return s->session; }
void stream_set_session(struct stream *s, void *session) { s->session = session; }
struct conn *stream_conn(const struct stream *s) { return s->conn; }
const struct listener_config *stream_listener(const struct stream *s) { return conn_listener(s->conn); }
const struct config *stream_config(const struct stream *s) { return conn_config(s->conn); }
struct log *stream_log(const struct stream *s) { return conn_log(s->conn); }
uint64_t stream_sid(const struct stream *s) { return conn_sid(s->conn); }
const char *stream_peer(const struct stream *s) { return conn_peer(s->conn); }
struct loop *stream_loop(const struct stream *s) { return conn_loop(s->conn); }

static struct tls_server *tls_server_of(const struct stream *s)
{
	struct services *sv = services_of(conn_loop(s->conn));
	return sv ? atomic_load_explicit(&sv->tls, memory_order_acquire) : NULL;
}

static int send_raw(struct stream *s, const void *p, size_t len);

/* Deflated output is written in pieces of this size. */
#define STREAM_DEFLATE_CHUNK (16u * 1024u)

/* Deflates p[0..len) and flushes (Z_SYNC_FLUSH: the peer can inflate all
 * of it now), writing the output in pieces. */
static int send_deflated(struct stream *s, const void *p, size_t len)
{
	uint8_t out[STREAM_DEFLATE_CHUNK];
	z_stream *z = s->zout;
	z->next_in = (Bytef *)(uintptr_t)p;
	z->avail_in = (uInt)len;
	do {
		z->next_out = out;
		z->avail_out = sizeof(out);
		int zr = deflate(z, Z_SYNC_FLUSH);
		if (zr != Z_OK && zr != Z_BUF_ERROR)
			return -EIO;
		size_t n = sizeof(out) - z->avail_out;
		if (n) {
			int rc = send_raw(s, out, n);
			if (rc)
				return rc;
		}
	} while (z->avail_out == 0 || z->avail_in);
	return 0;
}

int stream_send(struct stream *s, const void *p, size_t len)
{
	if (s->zout && (s->state == ST_PLAIN || s->state == ST_TLS)) {
		/* one call at a time: larger sends are cut so that the length
		 * fits zlib's uInt */
		const uint8_t *b = p;
		while (len) {
			size_t k = len < (1u << 30) ? len : (1u << 30);
			int rc = send_deflated(s, b, k);
			if (rc)
				return rc;
			b += k;
			len -= k;
		}
		return 0;
	}
	return send_raw(s, p, len);
}

static int send_raw(struct stream *s, const void *p, size_t len)
{
	if (tls_writing(s)) {
		if (tls_conn_write(s->tls, p, len) != TLS_OK)
			return -EIO;
		return 0;
	}
	if (s->state == ST_HANDSHAKE)
		return -EAGAIN;
	return conn_send(s->conn, p, len);
}

int stream_send_splice(struct stream *s, int pipe_fd, size_t len)
{
	if (s->state != ST_PLAIN || s->zout)
		return -ENOTSUP;
	return conn_send_splice(s->conn, pipe_fd, len);
}

size_t stream_splice_pending(const struct stream *s)
{
	return conn_splice_pending(s->conn);
}

bool stream_is_plain(const struct stream *s)
{
	return s->state == ST_PLAIN && !s->zout;
}

bool stream_is_compressed(const struct stream *s)
{
	return s->zout != NULL;
}

/* zlib's memory through the process's allocator (jemalloc) */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
	(void)opaque;
	return calloc(items, size);
}

static void z_free(voidpf opaque, voidpf p)
{
	(void)opaque;
	free(p);
}

static void compress_end(struct stream *s)
{
	if (s->zin) {
		inflateEnd(s->zin);
		free(s->zin);
		s->zin = NULL;
	}
	if (s->zout) {
		deflateEnd(s->zout);
		free(s->zout);
		s->zout = NULL;
	}
	free(s->infl);
	s->infl = NULL;
	s->infl_len = s->infl_cap = 0;
}

int stream_compress(struct stream *s, int level)
{
	if (s->zout || (s->state != ST_PLAIN && s->state != ST_TLS))
		return -EALREADY;
	s->zin = calloc(1, sizeof(*s->zin));
	s->zout = calloc(1, sizeof(*s->zout));
	if (!s->zin || !s->zout) {
		free(s->zin);
		free(s->zout);
		s->zin = s->zout = NULL;
		return -ENOMEM;
	}
	s->zin->zalloc = s->zout->zalloc = z_alloc;
	s->zin->zfree = s->zout->zfree = z_free;
	/* Raw DEFLATE (RFC 1951) both ways. The peer may use any window, so
	 * inflate takes the largest; our own output uses a 4 KiB window and a
	 * small hash (about 32 KiB of state instead of 256 KiB). */
	if (inflateInit2(s->zin, -15) != Z_OK) {
		free(s->zin);
		free(s->zout);
		s->zin = s->zout = NULL;
		return -ENOMEM;
	}
	if (deflateInit2(s->zout, level, Z_DEFLATED, -12, 5, Z_DEFAULT_STRATEGY) != Z_OK) {
		inflateEnd(s->zin);
		free(s->zin);
		free(s->zout);
		s->zin = s->zout = NULL;
		return -ENOMEM;
	}
	return 0;
}

int stream_printf(struct stream *s, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	return stream_send(s, buf, (size_t)n);
}

void stream_close(struct stream *s, bool flush)
{
	s->closing = true;
	if (s->state == ST_TLS && flush)
		tls_conn_close_notify(s->tls);
	conn_close(s->conn, flush);
}

/* During the handshake (a session opened at 0.5-RTT) the handshake timeout
 * stays; the session's timer starts when the handshake ends. */
void stream_set_timer(struct stream *s, uint32_t ms)
{
	if (s->state == ST_HANDSHAKE) {
		s->timer_held = true;
		s->timer_ms = ms;
		return;
	}
	conn_set_timer(s->conn, ms);
}
void stream_pause(struct stream *s) { conn_pause(s->conn); }
void stream_resume(struct stream *s) { conn_resume(s->conn); }

static int tls_out(void *arg, const uint8_t *p, size_t len)
{
	struct stream *s = arg;
	return conn_send(s->conn, p, len);
}

static int tls_begin(struct stream *s)
{
	struct tls_server *srv = tls_server_of(s);
	if (!srv)
		return -ENOTSUP;
	int rc = tls_conn_new(srv, s->ops->alpn, tls_out, s, &s->tls);
	if (rc)
		return rc;
	s->state = ST_HANDSHAKE;
	conn_set_timer(s->conn, stream_config(s)->handshake_timeout_ms);
	return 0;
}

int stream_starttls(struct stream *s)
{
	if (s->state != ST_PLAIN || s->zout || !tls_server_of(s))
		return -ENOTSUP;
	/* The handshake starts once the reply is on the wire (drained). */
	s->state = ST_FLUSH;
	conn_set_timer(s->conn, stream_config(s)->handshake_timeout_ms);
	return 0;
}

bool stream_is_tls(const struct stream *s)
{
	return tls_writing(s);
}

bool stream_can_starttls(const struct stream *s)
{
	return s->state == ST_PLAIN && !s->zout && tls_server_of(s) != NULL;
}

bool stream_tls_required(const struct stream *s)
{
	const struct listener_config *lc = stream_listener(s);
	if (stream_is_tls(s))
		return false;
	if (lc->security == SEC_STARTTLS || lc->security == SEC_DUAL || lc->security == SEC_TLS)
		return true;
	return !stream_config(s)->plaintext_auth;
}

const char *stream_tls_version(const struct stream *s)
{
	return s->state == ST_TLS ? tls_conn_version(s->tls) : "";
}

const char *stream_tls_cipher(const struct stream *s)
{
	return s->state == ST_TLS ? tls_conn_cipher(s->tls) : "";
}

/* ---- the engine side -------------------------------------------------- */

static int session_open(struct stream *s)
{
	s->opened = true;
	return s->ops->open(s);
}

static int on_open(struct conn *c)
{
	const struct listener_config *lc = conn_listener(c);
	struct stream *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->conn = c;
	s->ops = session_table[lc->proto];
	conn_set_session(c, s);
	if (conn_limit_hit(c) != CONN_LIMIT_NONE && lc->security != SEC_TLS)
		return session_open(s); /* it says "too many" in plaintext */
	if (lc->security == SEC_TLS) {
		if (conn_limit_hit(c) != CONN_LIMIT_NONE)
			return -EBUSY; /* no plaintext on an implicit TLS port */
		s->implicit = true;
		int rc = tls_begin(s);
		if (rc)
			LOG_AT(conn_log(c), LOG_WARN, conn_sid(c), "tls-unavailable",
			       "listener=%s error=%s", lc->name, strerror(-rc));
		return rc;
	}
	if (lc->security == SEC_DUAL && tls_server_of(s)) {
		s->state = ST_DUAL_WAIT;
		conn_set_timer(c, conn_config(c)->dual_wait_ms);
		return 0;
	}
	return session_open(s);
}

/* Makes room for STREAM_DECRYPT_MIN more bytes behind len in *buf
 * (s->plain or s->infl): doubles *cap from STREAM_PLAIN_FIRST. Returns 0
 * or -ENOMEM. */
static int room_reserve(uint8_t **buf, uint32_t len, uint32_t *cap)
{
	if (*cap - len >= STREAM_DECRYPT_MIN)
		return 0;
	size_t want = *cap ? (size_t)*cap * 2 : STREAM_PLAIN_FIRST;
	uint8_t *p = realloc(*buf, want);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = (uint32_t)want;
	return 0;
}

/* Compressed bytes in (from the connection, or decrypted): inflated into
 * s->infl and offered to the session, until all of in is inflated or the
 * session leaves STREAM_PLAIN_MAX bytes untaken. Returns the bytes of in
 * consumed, or -errno. Bytes that do not inflate close the connection. */
static ssize_t inflate_feed(struct stream *s, struct span in)
{
	size_t off = 0;
	for (;;) {
		while (s->infl_len && !s->closing) {
			ssize_t used = s->ops->data(s, span_make(s->infl, s->infl_len));
			if (used < 0)
				return used;
			if (used == 0)
				break;
			memmove(s->infl, s->infl + used, s->infl_len - (size_t)used);
			s->infl_len -= (uint32_t)used;
		}
		if (s->closing || !s->zin)
			return (ssize_t)in.len;
		if (off >= in.len || s->infl_len >= STREAM_PLAIN_MAX)
			break;
		int rc = room_reserve(&s->infl, s->infl_len, &s->infl_cap);
		if (rc)
			return rc;
		z_stream *z = s->zin;
		z->next_in = (Bytef *)(uintptr_t)(in.p + off);
		z->avail_in = (uInt)(in.len - off < (1u << 30) ? in.len - off : (1u << 30));
		z->next_out = s->infl + s->infl_len;
		z->avail_out = s->infl_cap - s->infl_len;
		uInt had_in = z->avail_in, had_out = z->avail_out;
		int zr = inflate(z, Z_SYNC_FLUSH);
		off += had_in - z->avail_in;
		s->infl_len += had_out - z->avail_out;
		if (zr == Z_STREAM_END || (zr != Z_OK && zr != Z_BUF_ERROR)) {
			LOG_AT(conn_log(s->conn), LOG_INFO, conn_sid(s->conn), "compress-error",
			       "reason=\"%s\"",
			       zr == Z_STREAM_END ? "end of the compressed stream"
						  : z->msg ? z->msg : "bad data");
			s->closing = true;
			conn_close(s->conn, false);
			return (ssize_t)in.len;
		}
		if (had_in == z->avail_in && had_out == z->avail_out)
			break;
	}
	if (s->infl_len == 0 && s->infl) {
		free(s->infl);
		s->infl = NULL;
		s->infl_cap = 0;
	}
	return (ssize_t)off;
}

/* Offers the decrypted bytes to the session (through inflate_feed once
 * compression is on). Returns 0 or -errno. */
static int deliver_plain(struct stream *s)
{
	while ((s->plain_len || s->infl_len) && !s->closing) {
		bool was_z = s->zin != NULL;
		ssize_t used = was_z ? inflate_feed(s, span_make(s->plain, s->plain_len))
				     : s->ops->data(s, span_make(s->plain, s->plain_len));
		if (used < 0)
			return (int)used;
		if (s->closing || s->state == ST_FLUSH) {
			/* Closing, or STARTTLS again (refused by the sessions):
			 * nothing after this command is parsed. */
			s->plain_len = 0;
			break;
		}
		if (used == 0 && (was_z || !s->zin))
			break; /* (a COMPRESS turned on: the rest is inflated) */
		memmove(s->plain, s->plain + used, s->plain_len - (size_t)used);
		s->plain_len -= (uint32_t)used;
		if (was_z && (s->infl_len || s->plain_len))
			break; /* the session is not taking more */
	}
	if (s->plain_len == 0 && s->plain) {
		free(s->plain);
		s->plain = NULL;
		s->plain_cap = 0;
	}
	return 0;
}

/* Room for the next decrypted bytes. A command is a few dozen bytes and
 * the buffer is freed once the session has taken all of it, so it starts
 * small and doubles while the session leaves bytes in it (a literal being
 * uploaded): wolfSSL keeps what does not fit of a record and hands it out
 * on the next read. Asking for a record's worth of room every time cost a
 * 16 KiB allocation per command and a realloc copying it whenever a read
 * had already decrypted something (the second turn of tls_data's loop). */
static void handshake_done(struct stream *s)
{
	s->state = ST_TLS;
	conn_set_timer(s->conn, s->timer_held ? s->timer_ms : 0);
	s->timer_held = false;
	LOG_AT(conn_log(s->conn), LOG_INFO, conn_sid(s->conn), "tls",
	       "version=%s cipher=%s resumed=%s sni=%s", tls_conn_version(s->tls),
	       tls_conn_cipher(s->tls), tls_conn_resumed(s->tls) ? "yes" : "no",
	       tls_conn_sni(s->tls) ? tls_conn_sni(s->tls) : "-");
}

/* Ciphertext in. Everything is consumed except when the session is not
 * taking plaintext and STREAM_PLAIN_MAX is reached: the rest stays in the
 * connection's buffer (TCP backpressure does the remainder). */
static ssize_t tls_data(struct stream *s, struct span in)
{
	size_t off = 0;
	int rc;

	for (;;) {
		if (s->plain_len >= STREAM_PLAIN_MAX)
			break;
		if ((rc = room_reserve(&s->plain, s->plain_len, &s->plain_cap)))
			return rc;
		size_t used = 0, plen = 0;
		enum tls_status st = tls_conn_read(s->tls, span_skip(in, off), &used,
						   s->plain + s->plain_len,
						   s->plain_cap - s->plain_len, &plen);
		off += used;
		s->plain_len += (uint32_t)plen;
		if (st == TLS_ERROR) {
			const char *why = tls_conn_error(s->tls);
			LOG_AT(conn_log(s->conn), LOG_INFO, conn_sid(s->conn), "tls-error",
			       "reason=\"%s\"", why ? why : "unknown");
			s->closing = true;
			conn_close(s->conn, true); /* let the alert out */
			return (ssize_t)in.len;
		}
		if (s->state == ST_HANDSHAKE && s->implicit && !s->opened &&
		    tls_conn_can_write(s->tls)) {
			/* 0.5-RTT: the greeting joins the server's first
			 * flight, still queued behind it in the send buffer */
			if ((rc = session_open(s)) < 0)
				return rc;
		}
		if (s->state == ST_HANDSHAKE && tls_conn_handshake_done(s->tls)) {
			handshake_done(s);
			if (s->implicit) {
				if (!s->opened && (rc = session_open(s)) < 0)
					return rc;
			} else if (s->ops->tls_ready) {
				s->ops->tls_ready(s);
			}
		}
		if (st == TLS_CLOSED) {
			if ((rc = deliver_plain(s)) < 0)
				return rc;
			if (!s->closing) {
				s->closing = true;
				conn_close(s->conn, true);
			}
			return (ssize_t)in.len;
		}
		if (plen == 0 && (st == TLS_WANT_READ || off >= in.len) &&
		    tls_conn_pending(s->tls) == 0)
			break;
	}
	if ((rc = deliver_plain(s)) < 0)
		return rc;
	return (ssize_t)off;
}

static ssize_t on_data(struct conn *c, struct span in)
{
	struct stream *s = conn_session(c);
	int rc;

	switch (s->state) {
	case ST_DUAL_WAIT:
		conn_set_timer(c, 0);
		if (tls_is_client_hello_start(in)) {
			s->implicit = true;
			if ((rc = tls_begin(s)))
				return rc;
			return tls_data(s, in);
		}
		s->state = ST_PLAIN;
		if ((rc = session_open(s)) < 0)
			return rc;
		break;
	case ST_FLUSH:
		LOG_AT(conn_log(c), LOG_WARN, conn_sid(c), "starttls-injection",
		       "discarded=%zu", in.len);
		return (ssize_t)in.len;
	case ST_HANDSHAKE:
	case ST_TLS:
		return tls_data(s, in);
	case ST_PLAIN:
		break;
	}
	if (s->zin)
		return inflate_feed(s, in);
	if (in.len == 0)
		return 0;
	ssize_t used = s->ops->data(s, in);
	if (s->zin && used >= 0 && (size_t)used < in.len) {
		/* COMPRESS accepted: what came behind it is compressed */
		ssize_t more = inflate_feed(s, span_skip(in, (size_t)used));
		return more < 0 ? more : used + more;
	}
	if (s->state == ST_FLUSH) {
		/* STARTTLS accepted: what came behind the command is injected
		 * plaintext, never parsed (CVE-2011-0411). */
		if ((size_t)used < in.len)
			LOG_AT(conn_log(c), LOG_WARN, conn_sid(c), "starttls-injection",
			       "discarded=%zu", in.len - (size_t)used);
		return (ssize_t)in.len;
	}
	return used;
}

size_t stream_send_pending(const struct stream *s)
{
	return conn_send_pending(s->conn);
}

static void on_drained(struct conn *c)
{
	struct stream *s = conn_session(c);
	if (s->state != ST_FLUSH) {
		if ((s->state == ST_PLAIN || tls_writing(s)) && s->opened && !s->closing &&
		    s->ops->drained)
			s->ops->drained(s);
		return;
	}
	if (tls_begin(s) < 0) {
		s->closing = true;
		conn_close(c, false);
	}
}

static void on_timer(struct conn *c)
{
	struct stream *s = conn_session(c);
	switch (s->state) {
	case ST_DUAL_WAIT:
		/* Silence: a plaintext client waiting for its greeting. */
		s->state = ST_PLAIN;
		if (session_open(s) < 0)
			conn_close(c, false);
		return;
	case ST_FLUSH:
	case ST_HANDSHAKE:
		LOG_AT(conn_log(c), LOG_INFO, conn_sid(c), "tls-handshake-timeout", NULL);
		s->closing = true;
		conn_close(c, false);
		return;
	default:
		break;
	}
	if (s->opened && s->ops->timer)
		s->ops->timer(s);
	else
		conn_close(c, false);
}

static void on_shutdown(struct conn *c)
{
	struct stream *s = conn_session(c);
	if (s->opened && (s->state == ST_PLAIN || s->state == ST_TLS) && s->ops->shutdown)
		s->ops->shutdown(s);
	else
		conn_close(c, true);
}

static void on_close(struct conn *c, enum conn_close_reason reason)
{
	struct stream *s = conn_session(c);
	(void)reason;
	if (!s)
		return;
	if (s->opened && s->ops->close)
		s->ops->close(s);
	tls_conn_free(&s->tls);
	compress_end(s);
	free(s->plain);
	free(s);
	conn_set_session(c, NULL);
}

static const struct conn_ops stream_ops_engine = {
	.open = on_open,
	.data = on_data,
	.timer = on_timer,
	.drained = on_drained,
	.shutdown = on_shutdown,
	.close = on_close,
};

const struct conn_ops *stream_conn_ops(enum listener_proto proto)
{
	(void)proto;
	return &stream_ops_engine;
}
