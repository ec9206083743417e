/* stream.c - plaintext and TLS under one session interface.
 *
 * States of a stream:
 *   PLAIN      bytes go straight between the connection and the session
 *   DUAL_WAIT  a dual listener waits (limits.dual_wait) for the client's
 *              first bytes: a TLS ClientHello starts implicit TLS, anything
 *              else or silence gets the plaintext greeting
 * TLS states are added by the TLS layer (tls/). */
#include "proto/stream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

enum stream_state { ST_PLAIN, ST_DUAL_WAIT };

struct stream {
	struct conn *conn;
	const struct stream_ops *ops;
	void *session;
	enum stream_state state;
	bool opened; /* ops->open ran */
};

static const struct stream_ops *const session_table[] = {
	[PROTO_SMTP] = &smtp_session_ops,
	[PROTO_IMAP] = &imap_session_ops,
	[PROTO_POP3] = &pop3_session_ops,
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

int stream_send(struct stream *s, const void *p, size_t len)
{
	return conn_send(s->conn, p, len);
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

void stream_close(struct stream *s, bool flush) { conn_close(s->conn, flush); }
void stream_set_timer(struct stream *s, uint32_t ms) { conn_set_timer(s->conn, ms); }
void stream_pause(struct stream *s) { conn_pause(s->conn); }
void stream_resume(struct stream *s) { conn_resume(s->conn); }

int stream_starttls(struct stream *s)
{
	(void)s;
	return -ENOTSUP;
}

bool stream_is_tls(const struct stream *s)
{
	(void)s;
	return false;
}

bool stream_can_starttls(const struct stream *s)
{
	(void)s;
	return false;
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
	(void)s;
	return "";
}

const char *stream_tls_cipher(const struct stream *s)
{
	(void)s;
	return "";
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
	if (!s->ops)
		return -ENOTSUP;
	if (lc->security == SEC_TLS) {
		LOG_AT(conn_log(c), LOG_WARN, conn_sid(c), "tls-unavailable",
		       "listener=%s", lc->name);
		return -ENOTSUP;
	}
	if (lc->security == SEC_DUAL && conn_limit_hit(c) == CONN_LIMIT_NONE) {
		s->state = ST_DUAL_WAIT;
		conn_set_timer(c, conn_config(c)->dual_wait_ms);
		return 0;
	}
	return session_open(s);
}

static ssize_t on_data(struct conn *c, struct span in)
{
	struct stream *s = conn_session(c);
	if (s->state == ST_DUAL_WAIT) {
		conn_set_timer(c, 0);
		s->state = ST_PLAIN;
		if (in.len && in.p[0] == 0x16) {
			/* A TLS ClientHello: implicit TLS is not available here. */
			return -ENOTSUP;
		}
		int rc = session_open(s);
		if (rc < 0)
			return rc;
	}
	return s->ops->data(s, in);
}

static void on_timer(struct conn *c)
{
	struct stream *s = conn_session(c);
	if (s->state == ST_DUAL_WAIT) {
		/* Silence: a plaintext client waiting for its greeting. */
		s->state = ST_PLAIN;
		if (session_open(s) < 0)
			conn_close(c, false);
		return;
	}
	if (s->ops->timer)
		s->ops->timer(s);
	else
		conn_close(c, false);
}

static void on_shutdown(struct conn *c)
{
	struct stream *s = conn_session(c);
	if (s->opened && s->ops->shutdown)
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
	free(s);
	conn_set_session(c, NULL);
}

static const struct conn_ops stream_ops_engine = {
	.open = on_open,
	.data = on_data,
	.timer = on_timer,
	.shutdown = on_shutdown,
	.close = on_close,
};

const struct conn_ops *stream_conn_ops(enum listener_proto proto)
{
	(void)proto;
	return &stream_ops_engine;
}
