/* loadgen.c - see loadgen.h. */
#include "loadgen.h"

#include <wolfssl/wolfio.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const loadgen_err_default[LG_ERR_MAX] = {
	"refused", "reset", "timeout", "closed", "bad_reply", "no", "bad", "tls", "other",
};

/* user_data: the operation in the top byte, the connection's index below */
enum { UD_IO = 1, UD_TICK, UD_CANCEL };

static uint64_t ud_of(const struct loadgen_conn *c, unsigned op)
{
	return ((uint64_t)op << 56) | (uint64_t)c->idx;
}

struct loadgen_conn *loadgen_conn(struct loadgen *l, unsigned i)
{
	return (struct loadgen_conn *)(l->conns + (size_t)i * l->cfg->conn_size);
}

bool loadgen_alive(const struct loadgen_conn *c, uint32_t gen)
{
	return c->gen == gen && c->phase != LG_FREE;
}

void loadgen_error(struct loadgen *l, enum loadgen_err k, const char *what, const char *detail)
{
	if (!l->err_names[k])
		k = LG_ERR_OTHER;
	l->errors[k]++;
	snprintf(l->last_err, sizeof(l->last_err), "%s: %s%.100s", l->err_names[k], what,
		 detail ? detail : "");
}

/* ---- the send buffer and wolfSSL's I/O callbacks ---- */

static bool out_append(struct loadgen_conn *c, const void *p, size_t n)
{
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 1024;
		while (cap < c->out_len + n)
			cap *= 2;
		uint8_t *o = realloc(c->out, cap);
		if (!o)
			return false;
		c->out = o;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
	return true;
}

static int cio_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct loadgen_conn *c = arg;
	(void)ssl;
	uint32_t n = c->in_len - c->in_off;
	if (sz <= 0)
		return 0;
	if (n == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (n > (uint32_t)sz)
		n = (uint32_t)sz;
	memcpy(buf, c->rbuf + c->in_off, n);
	c->in_off += n;
	return (int)n;
}

static int cio_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct loadgen_conn *c = arg;
	(void)ssl;
	if (sz < 0 || !out_append(c, buf, (size_t)sz))
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

bool loadgen_send(struct loadgen *l, struct loadgen_conn *c, const void *p, size_t n)
{
	(void)l;
	return loadgen_write(c, p, n);
}

bool loadgen_write(struct loadgen_conn *c, const void *p, size_t n)
{
	if (!c->ssl)
		return out_append(c, p, n);
	return n <= INT_MAX && wolfSSL_write(c->ssl, p, (int)n) == (int)n;
}

/* ---- TLS over a connection's buffers ---- */

WOLFSSL_CTX *loadgen_tls_ctx(const char *prog, bool tls12, int group)
{
	if (!group)
		group = WOLFSSL_ECC_X25519;
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(tls12 ? wolfTLSv1_2_client_method()
						 : wolfTLSv1_3_client_method());
	if (!ctx) {
		fprintf(stderr, "%s: wolfSSL_CTX_new failed\n", prog);
		return NULL;
	}
	/* The client is not what is measured: no certificate verification
	 * (an ECDSA verify per full handshake on its own core). */
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_UseSupportedCurve(ctx, (word16)group);
	if (tls12) {
		wolfSSL_CTX_UseSessionTicket(ctx); /* RFC 5077; 1.3 has its own */
	} else {
		int groups[1] = { group };
		wolfSSL_CTX_set_groups(ctx, groups, 1);
	}
	wolfSSL_CTX_SetIORecv(ctx, cio_recv);
	wolfSSL_CTX_SetIOSend(ctx, cio_send);
	return ctx;
}

bool loadgen_tls_new(WOLFSSL_CTX *ctx, struct loadgen_conn *c)
{
	c->ssl = wolfSSL_new(ctx);
	if (!c->ssl)
		return false;
	wolfSSL_SetIOReadCtx(c->ssl, c);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
	return true;
}

static void tls_err_text(int e, char *err, size_t errcap)
{
	char b[WOLFSSL_MAX_ERROR_SZ];
	if (errcap)
		snprintf(err, errcap, "%s", wolfSSL_ERR_error_string((unsigned long)e, b));
}

int loadgen_tls_handshake(struct loadgen_conn *c, char *err, size_t errcap)
{
	int r = wolfSSL_connect(c->ssl);
	if (r == WOLFSSL_SUCCESS)
		return LOADGEN_TLS_DONE;
	int e = wolfSSL_get_error(c->ssl, r);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return LOADGEN_TLS_WANT;
	tls_err_text(e, err, errcap);
	return LOADGEN_TLS_ERROR;
}

int loadgen_tls_read(struct loadgen_conn *c, void *buf, size_t cap, char *err, size_t errcap)
{
	int r = wolfSSL_read(c->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
	if (r > 0)
		return r;
	int e = wolfSSL_get_error(c->ssl, r);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return LOADGEN_TLS_WANT;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		return LOADGEN_TLS_CLOSED;
	tls_err_text(e, err, errcap);
	return LOADGEN_TLS_ERROR;
}

void loadgen_deadline(struct loadgen *l, struct loadgen_conn *c)
{
	c->deadline_ns = now_ns() + (uint64_t)l->cfg->timeout_ms * 1000000u;
}

/* ---- connections ---- */

static struct io_uring_sqe *load_sqe(struct loadgen *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

static void conn_free(struct loadgen *l, struct loadgen_conn *c)
{
	if (c->phase != LG_FREE && l->cb->release)
		l->cb->release(l, c);
	if (c->ssl) {
		wolfSSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->phase != LG_FREE)
		l->active--;
	c->phase = LG_FREE;
	c->op_pending = false;
}

void loadgen_fail(struct loadgen *l, struct loadgen_conn *c, enum loadgen_err k, const char *what,
		  const char *detail)
{
	if (c->timed_out)
		k = LG_ERR_TIMEOUT;
	loadgen_error(l, k, what, detail);
	conn_free(l, c);
	if (l->restart)
		loadgen_start(l, c);
}

static void fail_errno(struct loadgen *l, struct loadgen_conn *c, int e)
{
	enum loadgen_err k = LG_ERR_OTHER;
	switch (e) {
	case ECONNREFUSED:
		k = LG_ERR_REFUSED;
		break;
	case ECONNRESET:
	case EPIPE:
	case ECONNABORTED:
		k = LG_ERR_RESET;
		break;
	case ETIMEDOUT:
	case ETIME:
	case ECANCELED:
		k = LG_ERR_TIMEOUT;
		break;
	}
	loadgen_fail(l, c, k, "", strerror(e));
}

void loadgen_start(struct loadgen *l, struct loadgen_conn *c)
{
	if (l->stopping || (l->max_launch && l->launched >= l->max_launch)) {
		l->stopping = true;
		return;
	}
	c->timed_out = false;
	c->in_off = c->in_len = 0;
	c->out_len = c->out_off = 0;
	c->gen++;
	c->t_start_ns = now_ns();
	c->deadline_ns = c->t_start_ns + (uint64_t)l->cfg->timeout_ms * 1000000u;
	l->launched++;
	c->fd = bench_socket(&l->addr);
	if (c->fd < 0) {
		loadgen_error(l, LG_ERR_OTHER, "socket: ", strerror(errno));
		return; /* retried from the tick */
	}
	if (l->ctx) {
		if (!loadgen_tls_new(l->ctx, c)) {
			loadgen_error(l, LG_ERR_TLS, "wolfSSL_new", NULL);
			close(c->fd);
			c->fd = -1;
			return;
		}
	}
	l->active++;
	c->phase = LG_CONNECT;
	if (l->cb->start)
		l->cb->start(l, c);
	if (c->ssl && l->cb->tls_new)
		l->cb->tls_new(l, c);
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&l->addr.dst, l->addr.dst_len);
	io_uring_sqe_set_data64(sqe, ud_of(c, UD_IO));
	c->op_pending = true;
}

/* Sends what is queued, else receives, unless the connection is held. */
static void conn_io(struct loadgen *l, struct loadgen_conn *c)
{
	struct io_uring_sqe *sqe;
	if (c->out_off < c->out_len) {
		sqe = load_sqe(l);
		io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_len - c->out_off,
				   MSG_NOSIGNAL);
	} else if (c->phase == LG_HOLD) {
		return;
	} else {
		c->out_off = c->out_len = 0;
		c->in_off = c->in_len = 0;
		sqe = load_sqe(l);
		io_uring_prep_recv(sqe, c->fd, c->rbuf, LOADGEN_RBUF, 0);
	}
	io_uring_sqe_set_data64(sqe, ud_of(c, UD_IO));
	c->op_pending = true;
}

/* A connection ended well. */
static void conn_done(struct loadgen *l, struct loadgen_conn *c)
{
	if (l->cb->done)
		l->cb->done(l, c);
	conn_free(l, c);
	if (l->restart)
		loadgen_start(l, c);
}

void loadgen_close(struct loadgen *l, struct loadgen_conn *c)
{
	(void)l;
	c->phase = LG_CLOSING;
	if (c->ssl)
		wolfSSL_shutdown(c->ssl); /* close_notify into out */
}

void loadgen_hold(struct loadgen *l, struct loadgen_conn *c)
{
	(void)l;
	c->phase = LG_HOLD;
}

/* Calls opened; false when the callback ended the connection. */
static bool conn_opened(struct loadgen *l, struct loadgen_conn *c)
{
	c->phase = LG_OPEN;
	uint32_t gen = c->gen;
	if (l->cb->opened)
		l->cb->opened(l, c);
	return loadgen_alive(c, gen);
}

static bool feed(struct loadgen *l, struct loadgen_conn *c, const uint8_t *p, size_t n)
{
	uint32_t gen = c->gen;
	l->cb->data(l, c, p, n);
	return loadgen_alive(c, gen);
}

/* Drives the handshake, or decrypts what arrived, after a recv. */
static void on_received(struct loadgen *l, struct loadgen_conn *c)
{
	if (!c->ssl) {
		uint32_t n = c->in_len;
		c->in_len = 0;
		if (!feed(l, c, c->rbuf, n))
			return;
	} else {
		if (c->phase == LG_HANDSHAKE) {
			char err[WOLFSSL_MAX_ERROR_SZ] = "";
			int r = loadgen_tls_handshake(c, err, sizeof(err));
			if (r == LOADGEN_TLS_ERROR) {
				loadgen_fail(l, c, LG_ERR_TLS, "handshake: ", err);
				return;
			}
			if (r == LOADGEN_TLS_WANT) {
				conn_io(l, c);
				return;
			}
			if (!conn_opened(l, c))
				return;
		}
		for (;;) {
			char err[WOLFSSL_MAX_ERROR_SZ] = "";
			int r = loadgen_tls_read(c, l->plain, sizeof(l->plain), err, sizeof(err));
			if (r > 0) {
				if (!feed(l, c, l->plain, (size_t)r))
					return;
				continue;
			}
			if (r == LOADGEN_TLS_WANT)
				break;
			if (c->phase == LG_CLOSING) {
				conn_done(l, c);
				return;
			}
			if (r == LOADGEN_TLS_CLOSED) {
				loadgen_fail(l, c, LG_ERR_CLOSED, "close_notify", NULL);
				return;
			}
			loadgen_fail(l, c, LG_ERR_TLS, "read: ", err);
			return;
		}
	}
	if (c->phase == LG_CLOSING && c->out_off >= c->out_len) {
		conn_done(l, c);
		return;
	}
	conn_io(l, c);
}

static void conn_complete(struct loadgen *l, struct loadgen_conn *c, int res)
{
	c->op_pending = false;
	if (c->phase == LG_FREE)
		return;
	if (res < 0) {
		if (c->phase == LG_CLOSING) {
			conn_done(l, c); /* the server closed first: fine */
			return;
		}
		fail_errno(l, c, -res);
		return;
	}
	if (c->timed_out) {
		loadgen_fail(l, c, LG_ERR_TIMEOUT, "", NULL);
		return;
	}
	if (c->phase == LG_CONNECT) {
		if (c->ssl) {
			c->phase = LG_HANDSHAKE;
			/* the ClientHello into out */
			if (loadgen_tls_handshake(c, NULL, 0) != LOADGEN_TLS_WANT) {
				loadgen_fail(l, c, LG_ERR_TLS, "ClientHello", NULL);
				return;
			}
		} else if (!conn_opened(l, c)) {
			return;
		}
		if (c->phase == LG_CLOSING && c->out_off >= c->out_len) {
			conn_done(l, c);
			return;
		}
		conn_io(l, c);
		return;
	}
	if (c->out_off < c->out_len) {
		/* a send completed */
		c->out_off += (size_t)res;
		if (c->out_off < c->out_len) {
			conn_io(l, c);
			return;
		}
		c->out_off = c->out_len = 0;
		if (c->phase == LG_CLOSING) {
			conn_done(l, c);
			return;
		}
		if (c->phase == LG_HOLD)
			return;
		conn_io(l, c);
		return;
	}
	if (res == 0) {
		if (c->phase == LG_CLOSING) {
			conn_done(l, c);
			return;
		}
		loadgen_fail(l, c, LG_ERR_CLOSED, "EOF", NULL);
		return;
	}
	c->in_off = 0;
	c->in_len = (uint32_t)res;
	on_received(l, c);
}

/* ---- the run ---- */

void loadgen_arm_tick(struct loadgen *l)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, (uint64_t)UD_TICK << 56);
}

static void load_tick(struct loadgen *l)
{
	uint64_t t = now_ns();
	if (l->stop_at_end && t >= l->end_ns)
		l->stopping = true;
	for (unsigned i = 0; i < l->nconns; i++) {
		struct loadgen_conn *c = loadgen_conn(l, i);
		if (c->phase == LG_FREE) {
			if (l->restart)
				loadgen_start(l, c);
			continue;
		}
		if (c->phase == LG_HOLD)
			continue;
		if (!c->timed_out && c->op_pending && t > c->deadline_ns) {
			c->timed_out = true;
			struct io_uring_sqe *sqe = load_sqe(l);
			io_uring_prep_cancel64(sqe, ud_of(c, UD_IO), 0);
			io_uring_sqe_set_data64(sqe, (uint64_t)UD_CANCEL << 56);
		}
	}
	loadgen_arm_tick(l);
}

int loadgen_init(struct loadgen *l, const struct loadgen_cfg *cfg)
{
	memset(l, 0, sizeof(*l));
	l->cfg = cfg;
	l->cb = cfg->ops;
	l->user = cfg->user;
	l->nconns = cfg->nconns;
	l->restart = true;
	l->stop_at_end = true;
	l->end_ns = l->hard_end_ns = UINT64_MAX;
	l->tick_ts.tv_nsec = LOADGEN_TICK_MS * 1000000;
	memcpy(l->err_names, loadgen_err_default, sizeof(l->err_names));
	if (bench_resolve(cfg->prog, cfg->host, cfg->port, cfg->src_addrs, &l->addr) < 0)
		return -1;
	if (cfg->tls) {
		l->ctx = loadgen_tls_ctx(cfg->prog, cfg->tls12, cfg->group);
		if (!l->ctx)
			return -1;
	}
	l->conns = calloc(cfg->nconns, cfg->conn_size);
	if (!l->conns) {
		fprintf(stderr, "%s: out of memory\n", cfg->prog);
		return -1;
	}
	for (unsigned i = 0; i < l->nconns; i++) {
		struct loadgen_conn *c = loadgen_conn(l, i);
		c->fd = -1;
		c->idx = i;
		c->rbuf = malloc(LOADGEN_RBUF);
		if (!c->rbuf) {
			fprintf(stderr, "%s: out of memory\n", cfg->prog);
			return -1;
		}
	}
	if (bench_ring_init(cfg->prog, &l->ring, l->nconns, &l->io_uring_unavailable) < 0)
		return -1;
	l->ring_ok = true;
	return 0;
}

void loadgen_destroy(struct loadgen *l)
{
	if (l->ring_ok)
		io_uring_queue_exit(&l->ring);
	l->ring_ok = false;
	if (l->conns) {
		for (unsigned i = 0; i < l->nconns; i++) {
			struct loadgen_conn *c = loadgen_conn(l, i);
			conn_free(l, c);
			free(c->rbuf);
			free(c->out);
		}
		free(l->conns);
		l->conns = NULL;
	}
	if (l->ctx)
		wolfSSL_CTX_free(l->ctx);
	l->ctx = NULL;
}

bool loadgen_pump(struct loadgen *l, bool (*cond)(struct loadgen *))
{
	while (!cond(l)) {
		int rc = io_uring_submit_and_wait(&l->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
			fprintf(stderr, "%s: io_uring_submit_and_wait: %s\n", l->cfg->prog,
				strerror(-rc));
			l->failed = true;
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
				if (idx < l->nconns)
					conn_complete(l, loadgen_conn(l, idx), cqe->res);
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
			for (unsigned i = 0; i < l->nconns; i++) {
				struct loadgen_conn *c = loadgen_conn(l, i);
				if (c->phase != LG_FREE && c->phase != LG_HOLD) {
					loadgen_error(l, LG_ERR_TIMEOUT, "hard end of the run", NULL);
					conn_free(l, c);
				}
			}
			return false;
		}
	}
	return true;
}

bool loadgen_all_done(struct loadgen *l)
{
	return l->stopping && l->active == 0;
}

bool loadgen_none_active(struct loadgen *l)
{
	return l->active == 0;
}

/* ---- results ---- */

void loadgen_record(struct loadgen *l, uint64_t since_ns)
{
	uint64_t t = now_ns();
	hist_add(&l->lat_us, (t - since_ns) / 1000);
	l->ops++;
	l->t_end_ns = t;
}

uint64_t loadgen_errors_total(const struct loadgen *l)
{
	uint64_t n = 0;
	for (int k = 0; k < LG_ERR_MAX; k++)
		n += l->errors[k];
	return n;
}

double loadgen_seconds(const struct loadgen *l)
{
	return l->t_end_ns > l->t_start_ns ? (double)(l->t_end_ns - l->t_start_ns) / 1e9 : 0;
}

void loadgen_print_lat_errors(const struct loadgen *l, FILE *out)
{
	fprintf(out, "  latency us  p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64 "  max %" PRIu64
		"\n", hist_quantile(&l->lat_us, 0.5), hist_quantile(&l->lat_us, 0.99),
		hist_quantile(&l->lat_us, 0.999), l->lat_us.max);
	uint64_t nerr = loadgen_errors_total(l);
	fprintf(out, "  errors      %" PRIu64, nerr);
	for (int k = 0; k < LG_ERR_MAX; k++)
		if (l->errors[k])
			fprintf(out, " %s %" PRIu64, l->err_names[k], l->errors[k]);
	if (nerr)
		fprintf(out, " (last: %s)", l->last_err);
	fprintf(out, "\n");
}

void loadgen_json_lat_errors(const struct loadgen *l, FILE *out)
{
	fprintf(out, ",\"p50_us\":%" PRIu64 ",\"p99_us\":%" PRIu64 ",\"p999_us\":%" PRIu64
		",\"max_us\":%" PRIu64 ",\"errors\":{", hist_quantile(&l->lat_us, 0.5),
		hist_quantile(&l->lat_us, 0.99), hist_quantile(&l->lat_us, 0.999), l->lat_us.max);
	bool first = true;
	for (int k = 0; k < LG_ERR_MAX; k++) {
		if (!l->err_names[k])
			continue;
		fprintf(out, "%s\"%s\":%" PRIu64, first ? "" : ",", l->err_names[k], l->errors[k]);
		first = false;
	}
	fprintf(out, "},\"errors_total\":%" PRIu64, loadgen_errors_total(l));
}

/* ---- the line reader ---- */

void loadgen_reply_reset(struct loadgen_reply *r, bool multi)
{
	r->multi = multi;
	r->in_body = false;
	r->done = false;
	r->line_len = 0;
	r->line[0] = '\0';
	r->body_bytes = 0;
}

size_t loadgen_reply_feed(struct loadgen_reply *r, const uint8_t *p, size_t n)
{
	size_t used = 0;
	while (used < n && !r->done) {
		if (!r->in_body) {
			const uint8_t *lf = memchr(p + used, '\n', n - used);
			size_t k = lf ? (size_t)(lf - (p + used)) + 1 : n - used;
			size_t room = sizeof(r->line) - 1 - r->line_len;
			memcpy(r->line + r->line_len, p + used, k < room ? k : room);
			r->line_len += (uint32_t)(k < room ? k : room);
			used += k;
			if (!lf)
				break;
			while (r->line_len > 0 && (r->line[r->line_len - 1] == '\n' ||
						   r->line[r->line_len - 1] == '\r'))
				r->line_len--;
			r->line[r->line_len] = '\0';
			if (r->multi && r->line[0] == '+') {
				/* as if the status line's CRLF ended the body so far: an
				 * empty body is ".\r\n" alone */
				r->in_body = true;
				memcpy(r->tail, "xxx\r\n", 5);
			} else {
				r->done = true;
			}
			continue;
		}
		/* the body: the first "\r\n.\r\n", perhaps across feeds */
		const uint8_t *q = p + used;
		size_t avail = n - used, end = avail, k = avail < 4 ? avail : 4;
		uint8_t joint[8];
		memcpy(joint, r->tail + 1, 4);
		memcpy(joint + 4, q, k);
		const uint8_t *m = memmem(joint, 4 + k, "\r\n.\r\n", 5);
		if (m) {
			end = (size_t)(m - joint) + 5 - 4;
		} else {
			m = memmem(q, avail, "\r\n.\r\n", 5);
			if (m)
				end = (size_t)(m - q) + 5;
		}
		if (end >= 5) {
			memcpy(r->tail, q + end - 5, 5);
		} else {
			memmove(r->tail, r->tail + end, 5 - end);
			memcpy(r->tail + 5 - end, q, end);
		}
		r->body_bytes += end;
		used += end;
		if (m)
			r->done = true;
	}
	return used;
}
