/* imapload.c - IMAP scenarios of the load generator, on io_uring, with
 * wolfSSL as a filter over memory for 993 (docs/bench.md).
 *
 *   login  each of -c clients loops: connect, [TLS handshake], greeting,
 *          LOGIN, SELECT, FETCH 1:* (FLAGS), LOGOUT, [close_notify], close.
 *          Reports cycles/s, latency of a cycle, errors by kind and the
 *          server's CPU per cycle.
 *   fetch  each client logs in once, SELECTs, then loops FETCH n
 *          BODY.PEEK[] (n = --msg) until -d: body bytes/s and the server's
 *          CPU per MiB; latency per FETCH.
 *   idle   opens -c connections (at most --ramp establishing at once), each
 *          to the greeting (--idle-mode greet) or through LOGIN, SELECT and
 *          IDLE until "+ idling" (--idle-mode idle, the default with --tls),
 *          holds them --hold seconds and reports the server's memory per
 *          connection: (after - before) / N of VmRSS (/proc/PID/status) and
 *          Rss, Pss, Anonymous (/proc/PID/smaps_rollup), summed over every
 *          --server-pid and every process of every --server-cgroup. One
 *          warm-up connection is established before the "before" sample, so
 *          what a first login loads once (the user's mailbox) is not
 *          counted per connection.
 *
 * One process, one ring, no threads; each client has at most one operation
 * in flight (a send or a recv) and one deadline, enforced from a 20 ms tick
 * by cancelling that operation. TLS: a shared WOLFSSL_CTX (TLS 1.3, no
 * certificate verification: the client is not what is measured, one X25519
 * key share); wolfSSL's I/O callbacks read the ciphertext the ring received
 * and append what it writes to the client's send buffer.
 *
 * Exit status: 0 when the run completed (errors are counted, not fatal),
 * 1 on bad usage or setup failure, 77 when io_uring is unavailable. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "tlsclient.h"

enum {
	RBUF = 32768,             /* receive buffer (ciphertext with TLS) */
	LINE_MAX_KEPT = 2048,     /* a response line's first bytes kept; the rest skipped */
	TICK_MS = 20,
	MAX_SERVERS = 16,
	EXIT_SKIP = 77,
};

enum scenario { SC_LOGIN, SC_FETCH, SC_IDLE };
static const char *const scenario_name[] = { "imap-login", "imap-fetch", "imap-idle" };

enum err_kind { ERR_REFUSED, ERR_RESET, ERR_TIMEOUT, ERR_CLOSED, ERR_BAD_REPLY, ERR_NO,
		ERR_BAD, ERR_TLS, ERR_OTHER, ERR_MAX };
static const char *const err_name[ERR_MAX] = {
	"refused", "reset", "timeout", "closed", "bad_reply", "no", "bad", "tls", "other",
};

struct opts {
	const char *host, *port;
	enum scenario sc;
	bool tls;
	bool idle_login;          /* idle: LOGIN, SELECT, IDLE (else greeting only) */
	unsigned clients;
	double duration_s;
	uint64_t max_ops;
	unsigned timeout_ms;
	int src_addrs;
	const char *user_fmt, *pass, *mailbox;
	unsigned users;
	unsigned msg;             /* fetch: message sequence number */
	unsigned ramp;            /* idle: connections establishing at once */
	double hold_s;            /* idle: seconds to hold them */
	unsigned settle_ms;       /* idle: wait before the "after" memory sample */
	long pids[MAX_SERVERS];
	unsigned npids;
	const char *cgroups[MAX_SERVERS];
	unsigned ncgroups;
	bool json;
};

struct result {
	uint64_t ops;             /* login: cycles; fetch: FETCHes; idle: established */
	uint64_t errors[ERR_MAX];
	char last_err[160];
	uint64_t body_bytes;      /* fetch: literal bytes received */
	uint64_t flags_fetched;   /* login: "* n FETCH" lines */
	uint64_t exists_sum;      /* login: EXISTS reported by SELECT */
	uint64_t t_start_ns, t_end_ns;
	struct hist lat_us;
	struct mem_sample mem0, mem1;
	uint64_t idle_conns;      /* idle: connections held at the "after" sample */
	bool io_uring_unavailable, failed;
};

enum step { ST_FREE, ST_CONNECT, ST_HANDSHAKE, ST_GREETING, ST_LOGIN, ST_SELECT, ST_FLAGS,
	    ST_BODY, ST_IDLE, ST_HOLD, ST_LOGOUT, ST_CLOSING };

struct client {
	int fd;
	enum step step;
	bool op_pending;          /* a send or recv is in flight */
	bool timed_out;
	bool warmup;              /* idle: the connection made before the "before" sample */
	unsigned user;
	WOLFSSL *ssl;
	/* ciphertext (TLS) or plaintext received, io.in[io.in_off..io.in_len)
	 * unread; bytes to send, io.out[io.out_off..io.out_len) */
	struct tlsclient_io io;
	/* the response parser */
	char line[LINE_MAX_KEPT];
	uint32_t line_len;
	uint64_t lit_left;        /* literal bytes still to skip */
	uint64_t exists, fetched;
	uint64_t t_start_ns, t_op_ns, deadline_ns;
	uint32_t tag;             /* the current command's tag is "a<tag>" */
	uint32_t gen;             /* bumped by every client_start */
};

struct load {
	const struct opts *o;
	struct io_uring ring;
	WOLFSSL_CTX *ctx;
	struct bench_addrs addr;
	struct client *cl;
	unsigned ncl;
	unsigned active;          /* clients not free */
	unsigned establishing;    /* idle: connections not yet held */
	unsigned target;          /* idle: load_pump until establishing <= target */
	uint64_t launched;
	uint64_t end_ns, hard_end_ns;
	bool stopping;            /* no new cycle, command or connection */
	bool ring_ok;
	struct __kernel_timespec tick_ts;
	struct result *res;
	uint8_t plain[16384];     /* wolfSSL_read's output */
};

static void set_err(struct load *l, enum err_kind k, const char *fmt, const char *detail)
{
	l->res->errors[k]++;
	snprintf(l->res->last_err, sizeof(l->res->last_err), "%s: %s%.100s", err_name[k],
		 fmt, detail ? detail : "");
}

/* ---- sending ---- */

/* Queues a command: plaintext into out, or through wolfSSL. */
static bool client_cmd(struct load *l, struct client *c, const char *s)
{
	size_t n = strlen(s);
	c->t_op_ns = now_ns();
	if (l->o->sc != SC_LOGIN) /* login: one deadline for the whole cycle */
		c->deadline_ns = c->t_op_ns + (uint64_t)l->o->timeout_ms * 1000000u;
	if (!c->ssl)
		return tlsclient_out_append(&c->io, s, n);
	return tlsclient_write(c->ssl, s, n);
}

/* ---- connections ---- */

static uint64_t ud_of(struct load *l, struct client *c, unsigned op)
{
	return ((uint64_t)op << 56) | (uint64_t)(c - l->cl);
}
enum { UD_IO = 1, UD_TICK, UD_CANCEL };

static struct io_uring_sqe *load_sqe(struct load *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

static void client_free_conn(struct load *l, struct client *c)
{
	if (c->ssl) {
		wolfSSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->step != ST_FREE) {
		if (c->step != ST_HOLD && l->establishing > 0 && l->o->sc == SC_IDLE)
			l->establishing--;
		l->active--;
	}
	c->step = ST_FREE;
	c->op_pending = false;
}

static void client_start(struct load *l, struct client *c);

static void client_fail(struct load *l, struct client *c, enum err_kind k, const char *what,
			const char *detail)
{
	if (c->timed_out)
		k = ERR_TIMEOUT;
	set_err(l, k, what, detail);
	client_free_conn(l, c);
	if (l->o->sc != SC_IDLE)
		client_start(l, c);
}

static void client_fail_errno(struct load *l, struct client *c, int e, const char *what)
{
	enum err_kind k = ERR_OTHER;
	switch (e) {
	case ECONNREFUSED:
		k = ERR_REFUSED;
		break;
	case ECONNRESET:
	case EPIPE:
	case ECONNABORTED:
		k = ERR_RESET;
		break;
	case ETIMEDOUT:
	case ETIME:
	case ECANCELED:
		k = ERR_TIMEOUT;
		break;
	}
	client_fail(l, c, k, what, strerror(e));
}

static void client_start(struct load *l, struct client *c)
{
	const struct opts *o = l->o;
	if (l->stopping || (o->max_ops && l->launched >= o->max_ops && o->sc == SC_LOGIN)) {
		l->stopping = l->stopping || o->sc == SC_LOGIN;
		return;
	}
	c->timed_out = false;
	c->io.in_off = c->io.in_len = 0;
	c->io.out_len = c->io.out_off = 0;
	c->line_len = 0;
	c->lit_left = 0;
	c->exists = c->fetched = 0;
	c->tag = 0;
	c->gen++;
	c->t_start_ns = now_ns();
	c->deadline_ns = c->t_start_ns + (uint64_t)o->timeout_ms * 1000000u;
	l->launched++;
	c->fd = bench_socket(&l->addr);
	if (c->fd < 0) {
		set_err(l, ERR_OTHER, "socket: ", strerror(errno));
		return; /* retried from the tick */
	}
	if (o->tls) {
		c->ssl = tlsclient_new(l->ctx, &c->io);
		if (!c->ssl) {
			set_err(l, ERR_TLS, "wolfSSL_new", NULL);
			close(c->fd);
			c->fd = -1;
			return;
		}
	}
	l->active++;
	if (o->sc == SC_IDLE)
		l->establishing++;
	c->step = ST_CONNECT;
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&l->addr.dst, l->addr.dst_len);
	io_uring_sqe_set_data64(sqe, ud_of(l, c, UD_IO));
	c->op_pending = true;
}

/* Sends what is queued, else receives, unless the client waits for nothing. */
static void client_io(struct load *l, struct client *c)
{
	struct io_uring_sqe *sqe;
	if (c->io.out_off < c->io.out_len) {
		sqe = load_sqe(l);
		io_uring_prep_send(sqe, c->fd, c->io.out + c->io.out_off,
				   c->io.out_len - c->io.out_off, MSG_NOSIGNAL);
	} else if (c->step == ST_HOLD) {
		return; /* idle: nothing in flight until the end */
	} else {
		c->io.out_off = c->io.out_len = 0;
		c->io.in_off = c->io.in_len = 0;
		sqe = load_sqe(l);
		io_uring_prep_recv(sqe, c->fd, c->io.in, RBUF, 0);
	}
	io_uring_sqe_set_data64(sqe, ud_of(l, c, UD_IO));
	c->op_pending = true;
}

/* A cycle (login) or a connection (fetch) ended well. */
static void client_done(struct load *l, struct client *c)
{
	uint64_t t = now_ns();
	if (l->o->sc == SC_LOGIN) {
		hist_add(&l->res->lat_us, (t - c->t_start_ns) / 1000);
		l->res->ops++;
		l->res->flags_fetched += c->fetched;
		l->res->exists_sum += c->exists;
		l->res->t_end_ns = t;
	}
	client_free_conn(l, c);
	if (l->o->sc == SC_LOGIN)
		client_start(l, c);
}

/* ---- the IMAP conversation ---- */

static void next_cmd(struct load *l, struct client *c, enum step st, const char *fmt,
		     const char *arg1, const char *arg2)
{
	char cmd[512];
	c->tag++;
	int n = snprintf(cmd, sizeof(cmd), "a%" PRIu32 " ", c->tag);
	snprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, arg1, arg2);
	c->step = st;
	if (!client_cmd(l, c, cmd))
		client_fail(l, c, ERR_OTHER, "queueing a command failed", NULL);
}

static void send_login(struct load *l, struct client *c)
{
	char user[256];
	snprintf(user, sizeof(user), l->o->user_fmt, c->user + 1);
	next_cmd(l, c, ST_LOGIN, "LOGIN \"%s\" \"%s\"\r\n", user, l->o->pass);
}

static void send_fetch_body(struct load *l, struct client *c)
{
	char n[16];
	snprintf(n, sizeof(n), "%u", l->o->msg);
	next_cmd(l, c, ST_BODY, "FETCH %s BODY.PEEK[]\r\n", n, NULL);
}

static void send_logout(struct load *l, struct client *c)
{
	next_cmd(l, c, ST_LOGOUT, "LOGOUT\r\n", NULL, NULL);
}

/* After the tagged OK of the command of step c->step. */
static void step_ok(struct load *l, struct client *c)
{
	const struct opts *o = l->o;
	uint64_t t = now_ns();
	switch (c->step) {
	case ST_LOGIN:
		next_cmd(l, c, ST_SELECT, "SELECT \"%s\"\r\n", o->mailbox, NULL);
		return;
	case ST_SELECT:
		if (o->sc == SC_LOGIN) {
			next_cmd(l, c, ST_FLAGS, "FETCH 1:* (FLAGS)\r\n", NULL, NULL);
		} else if (o->sc == SC_FETCH) {
			if (c->exists < o->msg) {
				client_fail(l, c, ERR_BAD_REPLY, "the mailbox has fewer messages than --msg",
					    NULL);
				return;
			}
			if (l->res->t_start_ns == 0)
				l->res->t_start_ns = t;
			send_fetch_body(l, c);
		} else {
			next_cmd(l, c, ST_IDLE, "IDLE\r\n", NULL, NULL);
		}
		return;
	case ST_FLAGS:
		if (c->fetched != c->exists) {
			char d[64];
			snprintf(d, sizeof(d), "%" PRIu64 " FETCH for %" PRIu64 " EXISTS", c->fetched,
				 c->exists);
			client_fail(l, c, ERR_BAD_REPLY, "FETCH 1:* ", d);
			return;
		}
		send_logout(l, c);
		return;
	case ST_BODY:
		hist_add(&l->res->lat_us, (t - c->t_op_ns) / 1000);
		l->res->ops++;
		l->res->t_end_ns = t;
		if (l->stopping || (o->max_ops && l->res->ops >= o->max_ops)) {
			l->stopping = true;
			send_logout(l, c);
		} else {
			send_fetch_body(l, c);
		}
		return;
	case ST_LOGOUT:
		c->step = ST_CLOSING;
		if (c->ssl)
			wolfSSL_shutdown(c->ssl); /* close_notify into out */
		return;
	default:
		return;
	}
}

static void held(struct load *l, struct client *c)
{
	uint64_t t = now_ns();
	c->step = ST_HOLD;
	l->establishing--;
	if (!c->warmup) {
		hist_add(&l->res->lat_us, (t - c->t_start_ns) / 1000);
		l->res->ops++;
		l->res->t_end_ns = t;
	}
}

/* One complete response line (literals skipped). */
static void on_line(struct load *l, struct client *c, const char *s, size_t n)
{
	const struct opts *o = l->o;
	if (c->step == ST_GREETING) {
		if (n >= 4 && memcmp(s, "* OK", 4) == 0) {
			if (o->sc == SC_IDLE && !o->idle_login)
				held(l, c);
			else
				send_login(l, c);
		} else {
			client_fail(l, c, ERR_BAD_REPLY, "greeting: ", s);
		}
		return;
	}
	if (n >= 2 && s[0] == '*' && s[1] == ' ') {
		char *end;
		unsigned long long v = strtoull(s + 2, &end, 10);
		if (end != s + 2) {
			if (strncasecmp(end, " EXISTS", 7) == 0)
				c->exists = v;
			else if (strncasecmp(end, " FETCH", 6) == 0 && c->step == ST_FLAGS)
				c->fetched++;
		} else if (strncasecmp(s + 2, "BYE", 3) == 0 && c->step != ST_LOGOUT) {
			client_fail(l, c, ERR_CLOSED, "", s);
		}
		return;
	}
	if (n >= 1 && s[0] == '+') {
		if (c->step == ST_IDLE)
			held(l, c);
		else
			client_fail(l, c, ERR_BAD_REPLY, "unexpected continuation: ", s);
		return;
	}
	char *rest;
	if (n >= 3 && s[0] == 'a' && strtoul(s + 1, &rest, 10) == c->tag && rest != s + 1 &&
	    *rest == ' ') {
		rest++;
		if (strncasecmp(rest, "OK", 2) == 0)
			step_ok(l, c);
		else if (strncasecmp(rest, "NO", 2) == 0)
			client_fail(l, c, ERR_NO, "", s);
		else
			client_fail(l, c, ERR_BAD, "", s);
		return;
	}
	client_fail(l, c, ERR_BAD_REPLY, "", s);
}

/* Feeds plaintext to the response parser. Returns false when the client
 * failed (and was reset) on the way. */
static bool on_plain(struct load *l, struct client *c, const uint8_t *p, size_t n)
{
	while (n > 0) {
		if (c->lit_left) {
			size_t k = n < c->lit_left ? n : (size_t)c->lit_left;
			c->lit_left -= k;
			if (c->step == ST_BODY)
				l->res->body_bytes += k;
			p += k;
			n -= k;
			continue;
		}
		const uint8_t *lf = memchr(p, '\n', n);
		size_t k = lf ? (size_t)(lf - p) + 1 : n;
		size_t room = sizeof(c->line) - 1 - c->line_len;
		memcpy(c->line + c->line_len, p, k < room ? k : room);
		c->line_len += (uint32_t)(k < room ? k : room);
		p += k;
		n -= k;
		if (!lf)
			continue;
		size_t len = c->line_len;
		c->line[len] = '\0';
		while (len > 0 && (c->line[len - 1] == '\n' || c->line[len - 1] == '\r'))
			c->line[--len] = '\0';
		/* "... {N}" or "{N+}": N bytes of literal, then the line goes on. */
		if (len > 2 && c->line[len - 1] == '}') {
			char *open = strrchr(c->line, '{');
			if (open) {
				char *end;
				unsigned long long v = strtoull(open + 1, &end, 10);
				if (end != open + 1 && (*end == '}' || (*end == '+' && end[1] == '}'))) {
					c->lit_left = v;
					c->line_len = (uint32_t)len; /* the rest appends */
					continue;
				}
			}
		}
		c->line_len = 0;
		uint32_t gen = c->gen;
		on_line(l, c, c->line, len);
		if (c->step == ST_FREE || c->gen != gen)
			return false; /* failed, perhaps restarted */
	}
	return true;
}

/* Drives the handshake, or decrypts what arrived, after a recv. */
static void on_received(struct load *l, struct client *c)
{
	if (!c->ssl) {
		uint32_t n = c->io.in_len;
		c->io.in_len = 0;
		if (!on_plain(l, c, c->io.in, n))
			return;
	} else {
		char err[WOLFSSL_MAX_ERROR_SZ];
		if (c->step == ST_HANDSHAKE) {
			int r = tlsclient_handshake(c->ssl, err, sizeof(err));
			if (r == TLSCLIENT_ERROR) {
				client_fail(l, c, ERR_TLS, "handshake: ", err);
				return;
			}
			if (r == TLSCLIENT_WANT) {
				client_io(l, c);
				return;
			}
			c->step = ST_GREETING;
		}
		for (;;) {
			int r = tlsclient_read(c->ssl, l->plain, sizeof(l->plain), err, sizeof(err));
			if (r > 0) {
				if (!on_plain(l, c, l->plain, (size_t)r))
					return;
				continue;
			}
			if (r == TLSCLIENT_WANT)
				break;
			if (c->step == ST_CLOSING) {
				client_done(l, c);
				return;
			}
			if (r == TLSCLIENT_CLOSED) {
				client_fail(l, c, ERR_CLOSED, "close_notify", NULL);
				return;
			}
			client_fail(l, c, ERR_TLS, "read: ", err);
			return;
		}
	}
	if (c->step == ST_CLOSING && c->io.out_off >= c->io.out_len) {
		client_done(l, c);
		return;
	}
	client_io(l, c);
}

static void client_complete(struct load *l, struct client *c, int res)
{
	c->op_pending = false;
	if (c->step == ST_FREE)
		return;
	if (res < 0) {
		if (c->step == ST_CLOSING) {
			client_done(l, c); /* the server closed first after LOGOUT: fine */
			return;
		}
		client_fail_errno(l, c, -res, "");
		return;
	}
	if (c->timed_out) {
		client_fail(l, c, ERR_TIMEOUT, "", NULL);
		return;
	}
	switch (c->step) {
	case ST_CONNECT:
		if (c->ssl) {
			c->step = ST_HANDSHAKE;
			char err[WOLFSSL_MAX_ERROR_SZ] = "";
			/* the ClientHello into io.out */
			if (tlsclient_handshake(c->ssl, err, sizeof(err)) != TLSCLIENT_WANT) {
				client_fail(l, c, ERR_TLS, "ClientHello: ", err);
				return;
			}
		} else {
			c->step = ST_GREETING;
		}
		client_io(l, c);
		return;
	default:
		break;
	}
	if (c->io.out_off < c->io.out_len) {
		/* a send completed */
		c->io.out_off += (size_t)res;
		if (c->io.out_off < c->io.out_len) {
			client_io(l, c);
			return;
		}
		c->io.out_off = c->io.out_len = 0;
		if (c->step == ST_CLOSING) {
			client_done(l, c);
			return;
		}
		if (c->step == ST_HOLD)
			return;
		client_io(l, c);
		return;
	}
	if (res == 0) {
		if (c->step == ST_CLOSING) {
			client_done(l, c);
			return;
		}
		client_fail(l, c, ERR_CLOSED, "EOF", NULL);
		return;
	}
	c->io.in_off = 0;
	c->io.in_len = (uint32_t)res;
	on_received(l, c);
}

/* ---- the run ---- */

static void load_arm_tick(struct load *l)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, (uint64_t)UD_TICK << 56);
}

static void load_tick(struct load *l)
{
	uint64_t t = now_ns();
	const struct opts *o = l->o;
	if (o->sc != SC_IDLE && t >= l->end_ns)
		l->stopping = true;
	for (unsigned i = 0; i < l->ncl; i++) {
		struct client *c = &l->cl[i];
		if (c->step == ST_FREE) {
			if (o->sc != SC_IDLE)
				client_start(l, c);
			continue;
		}
		if (c->step == ST_HOLD)
			continue;
		if (!c->timed_out && c->op_pending && t > c->deadline_ns) {
			c->timed_out = true;
			struct io_uring_sqe *sqe = load_sqe(l);
			io_uring_prep_cancel64(sqe, ud_of(l, c, UD_IO), 0);
			io_uring_sqe_set_data64(sqe, (uint64_t)UD_CANCEL << 56);
		}
	}
	load_arm_tick(l);
}

static int load_setup(struct load *l)
{
	const struct opts *o = l->o;
	if (bench_resolve("imapload", o->host, o->port, o->src_addrs, &l->addr) < 0)
		return -1;
	if (o->tls) {
		l->ctx = tlsclient_ctx_new();
		if (!l->ctx)
			return -1;
	}
	l->cl = calloc(l->ncl, sizeof(*l->cl));
	if (!l->cl)
		return -1;
	for (unsigned i = 0; i < l->ncl; i++) {
		l->cl[i].fd = -1;
		l->cl[i].user = i % o->users;
		l->cl[i].io.in = malloc(RBUF);
		if (!l->cl[i].io.in)
			return -1;
	}
	if (bench_ring_init("imapload", &l->ring, l->ncl, &l->res->io_uring_unavailable) < 0)
		return -1;
	l->ring_ok = true;
	return 0;
}

static struct mem_sample server_mem(const struct opts *o)
{
	struct mem_sample sum = { 0 };
	for (unsigned i = 0; i < o->npids; i++) {
		struct mem_sample m = mem_from_pid(o->pids[i]);
		mem_add(&sum, &m);
	}
	for (unsigned i = 0; i < o->ncgroups; i++) {
		struct mem_sample m = mem_from_cgroup(o->cgroups[i]);
		mem_add(&sum, &m);
	}
	return sum;
}

/* Processes completions until cond(l) or the hard end. */
static bool load_pump(struct load *l, bool (*cond)(struct load *))
{
	while (!cond(l)) {
		int rc = io_uring_submit_and_wait(&l->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
			fprintf(stderr, "imapload: io_uring_submit_and_wait: %s\n", strerror(-rc));
			l->res->failed = true;
			return false;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&l->ring, head, cqe) {
			uint64_t ud = io_uring_cqe_get_data64(cqe);
			uint32_t idx = (uint32_t)ud;
			seen++;
			switch (ud >> 56) {
			case UD_IO:
				if (idx < l->ncl)
					client_complete(l, &l->cl[idx], cqe->res);
				break;
			case UD_TICK:
				load_tick(l);
				break;
			default:
				break;
			}
		}
		io_uring_cq_advance(&l->ring, seen);
		if (now_ns() > l->hard_end_ns) {
			for (unsigned i = 0; i < l->ncl; i++) {
				if (l->cl[i].step != ST_FREE && l->cl[i].step != ST_HOLD) {
					set_err(l, ERR_TIMEOUT, "hard end of the run", NULL);
					client_free_conn(l, &l->cl[i]);
				}
			}
			return false;
		}
	}
	return true;
}

static bool all_done(struct load *l)
{
	return l->stopping && l->active == 0;
}

static bool nothing_establishing(struct load *l)
{
	return l->establishing == 0;
}

static bool establishing_at_target(struct load *l)
{
	return l->establishing <= l->target;
}

static bool hold_over(struct load *l)
{
	return now_ns() >= l->end_ns;
}

/* idle: opens the connections --ramp at a time. */
static bool idle_open(struct load *l)
{
	const struct opts *o = l->o;
	/* The warm-up connection first, alone. */
	struct client *w = &l->cl[0];
	w->warmup = true;
	client_start(l, w);
	if (!load_pump(l, nothing_establishing) || w->step != ST_HOLD) {
		fprintf(stderr, "imapload: the warm-up connection failed (%s)\n", l->res->last_err);
		return false;
	}
	usleep(o->settle_ms * 1000u);
	l->res->mem0 = server_mem(o);
	l->res->t_start_ns = now_ns();
	unsigned next = 1;
	while (next < l->ncl) {
		while (next < l->ncl && l->establishing < o->ramp)
			client_start(l, &l->cl[next++]);
		/* until half the window is free again */
		l->target = o->ramp / 2;
		if (!load_pump(l, establishing_at_target))
			return false;
	}
	load_pump(l, nothing_establishing);
	usleep(o->settle_ms * 1000u);
	l->res->mem1 = server_mem(o);
	unsigned n = 0;
	for (unsigned i = 1; i < l->ncl; i++)
		n += l->cl[i].step == ST_HOLD;
	l->res->idle_conns = n;
	return true;
}

static void load_run(const struct opts *o, struct result *res)
{
	struct load l = { .o = o, .res = res };
	l.ncl = o->sc == SC_IDLE ? o->clients + 1 : o->clients;
	l.tick_ts.tv_nsec = TICK_MS * 1000000;
	if (load_setup(&l) < 0) {
		res->failed = true;
		goto out;
	}
	uint64_t t0 = now_ns();
	if (o->sc == SC_IDLE) {
		/* establishing may take a while with a slow server */
		l.end_ns = UINT64_MAX;
		l.hard_end_ns = t0 + (uint64_t)(o->duration_s * 1e9) +
				(uint64_t)o->timeout_ms * 1000000u * 4;
		load_arm_tick(&l);
		if (!idle_open(&l)) {
			res->failed = true;
		} else {
			l.end_ns = now_ns() + (uint64_t)(o->hold_s * 1e9);
			l.hard_end_ns = l.end_ns + 1000000000u;
			load_pump(&l, hold_over);
		}
	} else {
		l.end_ns = t0 + (uint64_t)(o->duration_s * 1e9);
		l.hard_end_ns = l.end_ns + (uint64_t)o->timeout_ms * 1000000u + 1000000000u;
		for (unsigned i = 0; i < l.ncl; i++)
			client_start(&l, &l.cl[i]);
		if (o->sc == SC_LOGIN)
			res->t_start_ns = t0;
		load_arm_tick(&l);
		load_pump(&l, all_done);
	}
out:
	if (l.ring_ok)
		io_uring_queue_exit(&l.ring);
	if (l.cl) {
		for (unsigned i = 0; i < l.ncl; i++) {
			client_free_conn(&l, &l.cl[i]);
			free(l.cl[i].io.in);
			tlsclient_io_free(&l.cl[i].io);
		}
		free(l.cl);
	}
	tlsclient_ctx_free(&l.ctx);
}

/* ---- report ---- */

struct cpu_meter {
	struct cpu_sample s0;
	uint64_t busy0_us, wall0_ns;
	struct cpu_sample self0;
};

static struct cpu_sample server_cpu(const struct opts *o)
{
	struct cpu_sample sum = { 0 };
	bool ok = o->npids + o->ncgroups > 0;
	for (unsigned i = 0; i < o->npids; i++) {
		struct cpu_sample s = cpu_from_pid(o->pids[i], true);
		ok = ok && s.ok;
		sum.user_us += s.user_us, sum.sys_us += s.sys_us, sum.total_us += s.total_us;
	}
	for (unsigned i = 0; i < o->ncgroups; i++) {
		struct cpu_sample s = cpu_from_cgroup(o->cgroups[i]);
		ok = ok && s.ok;
		sum.user_us += s.user_us, sum.sys_us += s.sys_us, sum.total_us += s.total_us;
	}
	sum.ok = ok;
	return sum;
}

static void report(const struct opts *o, const struct result *r, const struct cpu_sample *cpu,
		   const struct cpu_sample *self, double other_pct)
{
	FILE *out = o->json ? stderr : stdout;
	double secs = r->t_end_ns > r->t_start_ns ? (double)(r->t_end_ns - r->t_start_ns) / 1e9 : 0;
	double ops = r->ops ? (double)r->ops : 1;
	uint64_t nerr = 0;
	for (int k = 0; k < ERR_MAX; k++)
		nerr += r->errors[k];
	const char *unit = o->sc == SC_LOGIN ? "cycles" : o->sc == SC_FETCH ? "fetches" : "conns";
	fprintf(out, "%s %s:%s%s clients %u\n", scenario_name[o->sc], o->host, o->port,
		o->tls ? " (TLS)" : "", o->clients);
	fprintf(out, "  %-11s %" PRIu64 " in %.2f s = %.1f/s\n", unit, r->ops, secs,
		secs > 0 ? (double)r->ops / secs : 0);
	fprintf(out, "  latency us  p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64 "  max %" PRIu64
		"\n", hist_quantile(&r->lat_us, 0.5), hist_quantile(&r->lat_us, 0.99),
		hist_quantile(&r->lat_us, 0.999), r->lat_us.max);
	fprintf(out, "  errors      %" PRIu64, nerr);
	for (int k = 0; k < ERR_MAX; k++)
		if (r->errors[k])
			fprintf(out, " %s %" PRIu64, err_name[k], r->errors[k]);
	if (nerr)
		fprintf(out, " (last: %s)", r->last_err);
	fprintf(out, "\n");
	if (o->sc == SC_LOGIN)
		fprintf(out, "  messages    %.1f FLAGS per cycle\n", (double)r->flags_fetched / ops);
	if (o->sc == SC_FETCH && secs > 0)
		fprintf(out, "  body        %" PRIu64 " bytes = %.1f MiB/s\n", r->body_bytes,
			(double)r->body_bytes / secs / 1048576.0);
	if (cpu->ok && o->sc != SC_IDLE) {
		fprintf(out, "  server cpu  %.1f us per %s (user %.1f sys %.1f)", (double)cpu->total_us / ops,
			unit, (double)cpu->user_us / ops, (double)cpu->sys_us / ops);
		if (o->sc == SC_FETCH && r->body_bytes)
			fprintf(out, ", %.0f us per MiB",
				(double)cpu->total_us / ((double)r->body_bytes / 1048576.0));
		fprintf(out, "\n");
	}
	if (o->sc == SC_IDLE && r->mem0.ok && r->mem1.ok && r->idle_conns) {
		double n = (double)r->idle_conns;
		fprintf(out, "  memory      %" PRIu64 " conns held; per conn: VmRSS %.0f B, Rss %.0f B,"
			" Pss %.0f B, Anonymous %.0f B (%u -> %u processes)\n",
			r->idle_conns, ((double)r->mem1.vmrss_kb - (double)r->mem0.vmrss_kb) * 1024 / n,
			((double)r->mem1.rss_kb - (double)r->mem0.rss_kb) * 1024 / n,
			((double)r->mem1.pss_kb - (double)r->mem0.pss_kb) * 1024 / n,
			((double)r->mem1.anon_kb - (double)r->mem0.anon_kb) * 1024 / n,
			r->mem0.procs, r->mem1.procs);
	}
	if (other_pct >= 0)
		fprintf(out, "  other load  %.1f%% of a core\n", other_pct);
	fprintf(out, "  client cpu  %.1f us per %s\n", (double)self->total_us / ops, unit);

	if (!o->json)
		return;
	printf("{\"scenario\":\"%s\",\"host\":\"%s\",\"port\":%s,\"tls\":%s,\"clients\":%u,"
	       "\"ops\":%" PRIu64 ",\"seconds\":%.3f,\"ops_per_s\":%.1f,\"p50_us\":%" PRIu64
	       ",\"p99_us\":%" PRIu64 ",\"p999_us\":%" PRIu64 ",\"max_us\":%" PRIu64 ",\"errors\":{",
	       scenario_name[o->sc], o->host, o->port, o->tls ? "true" : "false", o->clients, r->ops,
	       secs, secs > 0 ? (double)r->ops / secs : 0, hist_quantile(&r->lat_us, 0.5),
	       hist_quantile(&r->lat_us, 0.99), hist_quantile(&r->lat_us, 0.999), r->lat_us.max);
	for (int k = 0; k < ERR_MAX; k++)
		printf("%s\"%s\":%" PRIu64, k ? "," : "", err_name[k], r->errors[k]);
	printf("},\"errors_total\":%" PRIu64, nerr);
	if (cpu->ok && o->sc != SC_IDLE)
		printf(",\"server_cpu_us_per_op\":%.3f,\"server_user_us_per_op\":%.3f,"
		       "\"server_sys_us_per_op\":%.3f", (double)cpu->total_us / ops,
		       (double)cpu->user_us / ops, (double)cpu->sys_us / ops);
	if (o->sc == SC_LOGIN)
		printf(",\"flags_per_cycle\":%.2f", (double)r->flags_fetched / ops);
	if (o->sc == SC_FETCH) {
		printf(",\"body_bytes\":%" PRIu64 ",\"bytes_per_s\":%.0f", r->body_bytes,
		       secs > 0 ? (double)r->body_bytes / secs : 0);
		if (cpu->ok && r->body_bytes)
			printf(",\"server_cpu_us_per_mib\":%.1f",
			       (double)cpu->total_us / ((double)r->body_bytes / 1048576.0));
	}
	if (o->sc == SC_IDLE) {
		printf(",\"idle_login\":%s,\"held\":%" PRIu64, o->idle_login ? "true" : "false",
		       r->idle_conns);
		if (r->mem0.ok && r->mem1.ok && r->idle_conns) {
			double n = (double)r->idle_conns;
			printf(",\"procs_before\":%u,\"procs_after\":%u,\"vmrss_kb_before\":%" PRIu64
			       ",\"vmrss_kb_after\":%" PRIu64 ",\"vmrss_b_per_conn\":%.0f"
			       ",\"rss_b_per_conn\":%.0f,\"pss_b_per_conn\":%.0f,\"anon_b_per_conn\":%.0f",
			       r->mem0.procs, r->mem1.procs, r->mem0.vmrss_kb, r->mem1.vmrss_kb,
			       ((double)r->mem1.vmrss_kb - (double)r->mem0.vmrss_kb) * 1024 / n,
			       ((double)r->mem1.rss_kb - (double)r->mem0.rss_kb) * 1024 / n,
			       ((double)r->mem1.pss_kb - (double)r->mem0.pss_kb) * 1024 / n,
			       ((double)r->mem1.anon_kb - (double)r->mem0.anon_kb) * 1024 / n);
		}
	}
	if (other_pct >= 0)
		printf(",\"other_cpu_pct\":%.1f", other_pct);
	printf(",\"client_cpu_us_per_op\":%.2f}\n", (double)self->total_us / ops);
}

/* ---- main ---- */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: imapload -s login|fetch|idle [options]\n"
		"  -H, --host ADDR        server (127.0.0.1)\n"
		"  -p, --port PORT        server port (143)\n"
		"      --tls              implicit TLS (993)\n"
		"  -c, --clients N        concurrent clients; idle: connections (16; idle 100)\n"
		"  -d, --duration SECS    login/fetch: no new cycle or FETCH after SECS (5)\n"
		"  -n, --max-ops N        login: cycles; fetch: FETCHes (none)\n"
		"      --timeout-ms MS    deadline of a cycle (login), a FETCH, a connection (10000)\n"
		"      --src-addrs N      bind to 127.0.0.1..N (loopback: 16; 0: off)\n"
		"  -u, --user FMT         login name, one %%d = 1..--users ('r%%d@example.com')\n"
		"      --users K          client i logs in as user i mod K + 1 (1)\n"
		"  -P, --pass PASS        password (bench-Secret-1)\n"
		"      --mailbox NAME     mailbox to SELECT (INBOX)\n"
		"      --msg N            fetch: the message to FETCH (1)\n"
		"      --idle-mode greet|idle  idle: greeting only, or LOGIN+SELECT+IDLE (idle)\n"
		"      --ramp N           idle: connections establishing at once (64)\n"
		"      --hold SECS        idle: hold the connections SECS after measuring (1)\n"
		"      --settle-ms MS     idle: wait before each memory sample (500)\n"
		"      --server-pid PID   the server's CPU and memory (repeatable)\n"
		"      --server-cgroup D  the same for every process of a cgroup v2 (repeatable)\n"
		"      --json             stdout: one JSON line; the report on stderr\n");
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = "143", .sc = SC_LOGIN, .clients = 0,
		.duration_s = 5, .timeout_ms = 10000, .src_addrs = -1,
		.user_fmt = "r%d@example.com", .pass = "bench-Secret-1", .mailbox = "INBOX",
		.users = 1, .msg = 1, .ramp = 64, .hold_s = 1, .settle_ms = 500,
	};
	int idle_mode = -1;
	enum { O_TLS = 256, O_TIMEOUT, O_SRC, O_USERS, O_MAILBOX, O_MSG, O_IDLE_MODE, O_RAMP,
	       O_HOLD, O_SETTLE, O_PID, O_CGROUP, O_JSON };
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "scenario", required_argument, NULL, 's' },
		{ "tls", no_argument, NULL, O_TLS },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "max-ops", required_argument, NULL, 'n' },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "src-addrs", required_argument, NULL, O_SRC },
		{ "user", required_argument, NULL, 'u' },
		{ "users", required_argument, NULL, O_USERS },
		{ "pass", required_argument, NULL, 'P' },
		{ "mailbox", required_argument, NULL, O_MAILBOX },
		{ "msg", required_argument, NULL, O_MSG },
		{ "idle-mode", required_argument, NULL, O_IDLE_MODE },
		{ "ramp", required_argument, NULL, O_RAMP },
		{ "hold", required_argument, NULL, O_HOLD },
		{ "settle-ms", required_argument, NULL, O_SETTLE },
		{ "server-pid", required_argument, NULL, O_PID },
		{ "server-cgroup", required_argument, NULL, O_CGROUP },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	uint64_t v;
	char *end;
	while ((ch = getopt_long(argc, argv, "H:p:s:c:d:n:u:P:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': o.host = optarg; break;
		case 'p':
			if (!parse_u64(optarg, 1, 65535, &v))
				goto bad;
			o.port = optarg;
			break;
		case 's':
			if (strcmp(optarg, "login") == 0)
				o.sc = SC_LOGIN;
			else if (strcmp(optarg, "fetch") == 0)
				o.sc = SC_FETCH;
			else if (strcmp(optarg, "idle") == 0)
				o.sc = SC_IDLE;
			else
				goto bad;
			break;
		case O_TLS: o.tls = true; break;
		case 'c':
			if (!parse_u64(optarg, 1, 200000, &v))
				goto bad;
			o.clients = (unsigned)v;
			break;
		case 'd':
			o.duration_s = strtod(optarg, &end);
			if (end == optarg || *end || !(o.duration_s > 0) || o.duration_s > 86400)
				goto bad;
			break;
		case 'n':
			if (!parse_u64(optarg, 1, UINT64_MAX, &o.max_ops))
				goto bad;
			break;
		case O_TIMEOUT:
			if (!parse_u64(optarg, 1, 3600000, &v))
				goto bad;
			o.timeout_ms = (unsigned)v;
			break;
		case O_SRC:
			if (!parse_u64(optarg, 0, BENCH_MAX_SRC_ADDRS, &v))
				goto bad;
			o.src_addrs = (int)v;
			break;
		case 'u': o.user_fmt = optarg; break;
		case O_USERS:
			if (!parse_u64(optarg, 1, 1000000, &v))
				goto bad;
			o.users = (unsigned)v;
			break;
		case 'P': o.pass = optarg; break;
		case O_MAILBOX: o.mailbox = optarg; break;
		case O_MSG:
			if (!parse_u64(optarg, 1, UINT32_MAX, &v))
				goto bad;
			o.msg = (unsigned)v;
			break;
		case O_IDLE_MODE:
			if (strcmp(optarg, "greet") == 0)
				idle_mode = 0;
			else if (strcmp(optarg, "idle") == 0)
				idle_mode = 1;
			else
				goto bad;
			break;
		case O_RAMP:
			if (!parse_u64(optarg, 1, 100000, &v))
				goto bad;
			o.ramp = (unsigned)v;
			break;
		case O_HOLD:
			o.hold_s = strtod(optarg, &end);
			if (end == optarg || *end || o.hold_s < 0 || o.hold_s > 86400)
				goto bad;
			break;
		case O_SETTLE:
			if (!parse_u64(optarg, 0, 60000, &v))
				goto bad;
			o.settle_ms = (unsigned)v;
			break;
		case O_PID:
			if (o.npids == MAX_SERVERS || !parse_u64(optarg, 1, INT32_MAX, &v))
				goto bad;
			o.pids[o.npids++] = (long)v;
			break;
		case O_CGROUP:
			if (o.ncgroups == MAX_SERVERS)
				goto bad;
			o.cgroups[o.ncgroups++] = optarg;
			break;
		case O_JSON: o.json = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	if (!o.clients)
		o.clients = o.sc == SC_IDLE ? 100 : o.sc == SC_FETCH ? 1 : 16;
	o.idle_login = idle_mode < 0 ? true : idle_mode == 1;
	/* the format must take exactly one int, or none */
	const char *pct = strchr(o.user_fmt, '%');
	if (pct && (pct[1] != 'd' || strchr(pct + 1, '%'))) {
		fprintf(stderr, "imapload: --user takes at most one %%d\n");
		return 1;
	}
	if (o.sc == SC_IDLE) {
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	struct cpu_meter m = { .s0 = server_cpu(&o), .busy0_us = machine_busy_us(),
			       .wall0_ns = now_ns(), .self0 = cpu_self(false) };
	if ((o.npids || o.ncgroups) && !m.s0.ok) {
		fprintf(stderr, "imapload: cannot read the server's CPU time\n");
		return 1;
	}
	struct result *r = calloc(1, sizeof(*r));
	if (!r)
		return 1;
	load_run(&o, r);
	struct cpu_sample s1 = server_cpu(&o), self1 = cpu_self(false);
	struct cpu_sample cpu = { .ok = m.s0.ok && s1.ok };
	cpu.user_us = s1.user_us - m.s0.user_us;
	cpu.sys_us = s1.sys_us - m.s0.sys_us;
	cpu.total_us = s1.total_us - m.s0.total_us;
	struct cpu_sample self = { .ok = true, .user_us = self1.user_us - m.self0.user_us,
				   .sys_us = self1.sys_us - m.self0.sys_us };
	self.total_us = self.user_us + self.sys_us;
	double other = -1;
	uint64_t busy1 = machine_busy_us(), wall_us = (now_ns() - m.wall0_ns) / 1000;
	if (cpu.ok && m.busy0_us && busy1 && wall_us) {
		double x = (double)(busy1 - m.busy0_us) - (double)cpu.total_us - (double)self.total_us;
		other = 100.0 * (x < 0 ? 0 : x) / (double)wall_us;
	}
	if (r->io_uring_unavailable) {
		fprintf(stderr, "imapload: io_uring unavailable: skipped\n");
		free(r);
		return EXIT_SKIP;
	}
	report(&o, r, &cpu, &self, other);
	int rc = r->failed ? 1 : 0;
	free(r);
	return rc;
bad:
	fprintf(stderr, "imapload: bad value for -%c: %s\n", ch < 256 ? ch : '-',
		optarg ? optarg : "");
	usage(stderr);
	return 1;
}
