/* smtpload.c - SMTP delivery load generator, on io_uring (docs/bench.md).
 *
 * C concurrent sessions, each in a loop: connect, read the 220 greeting,
 * EHLO, then M messages (MAIL FROM, RCPT TO, DATA, a message of S bytes
 * with a unique Message-ID, the final dot, wait for the 250), QUIT, read
 * the 221, close; then the next session. MAIL/RCPT/DATA go in one write when
 * the server advertises PIPELINING (RFC 2920), as MTAs send them, unless
 * --no-pipelining.
 *
 * With --tls the session runs over implicit TLS (465: TLS 1.3, X25519, the
 * handshake right after connect; bench/loadgen.c's TLS over memory).
 * With --user and --pass it authenticates after EHLO (AUTH PLAIN with an
 * initial response, 235 awaited) and sends MAIL FROM the authenticated
 * user, as a submission server requires.
 *
 * It reports messages accepted per second (a 250 after the dot), the
 * latency of each message from the end of its data (the completion of the
 * send that carried the final ".\r\n") to its 250, errors by kind, and the
 * server's CPU per accepted message (cgroups' cpu.stat or /proc/PID/stat,
 * read before and after, several of each summed).
 *
 * Whether "accepted" means "in the mailbox" depends on the server: ringmail
 * replies 250 once the message is durable in every recipient's INBOX; an
 * MTA with a queue (Postfix) replies once it is in its queue. The harness
 * (bench/smtp_compare.sh) counts what reached the mailboxes itself.
 *
 * Bounded: each step (connect, each reply) has a deadline (--timeout-ms),
 * enforced from a 20 ms tick by cancelling the pending operation; no
 * message starts after -d seconds or --max-msgs messages; a session that is
 * past that point sends QUIT instead of its next MAIL; a hard stop at
 * duration + timeout + 1 s ends the run whatever the server does.
 *
 * One process, one ring, no threads (SINGLE_ISSUER + DEFER_TASKRUN when the
 * kernel has them). Exit status: 0 when the run completed (errors are
 * reported, not fatal), 1 on bad usage or setup failure, 77 when io_uring is
 * unavailable. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "loadgen.h"


enum {
	RECV_BUF = 4096,          /* one session's receive buffer (plaintext) */
	CMD_BUF = 1024,           /* MAIL+RCPT+DATA, EHLO, AUTH PLAIN, QUIT */
	ADDR_MAX = 254,           /* --from, --rcpt, --user */
	PASS_MAX = 255,           /* --pass: AUTH PLAIN of both fits in CMD_BUF */
	TICK_MS = 20,
	DEFAULT_CLIENTS = 1,
	DEFAULT_MSGS = 20,
	DEFAULT_SIZE = 4096,
	MIN_SIZE = 512,
	MAX_SIZE = 64 * 1024 * 1024,
	DEFAULT_TIMEOUT_MS = 30000,
	MAX_CPU_SOURCES = 8,
	MAX_PENDING = 4,          /* replies awaited at once (MAIL, RCPT, DATA) */
	EXIT_SKIP = 77,
};

/* tls: the handshake or a record failed; auth: AUTH got anything but 235. */
enum err_kind { ERR_REFUSED, ERR_RESET, ERR_TIMEOUT, ERR_CLOSED, ERR_BAD_REPLY,
		ERR_TEMPFAIL, ERR_PERMFAIL, ERR_TLS, ERR_AUTH, ERR_OTHER, ERR_MAX };
static const char *const err_name[ERR_MAX] = {
	"refused", "reset", "timeout", "closed", "bad_reply", "tempfail", "permfail", "tls",
	"auth", "other",
};

struct opts {
	const char *host, *port;
	unsigned clients;
	unsigned msgs_per_session;
	size_t size;
	double duration_s;
	uint64_t max_msgs;        /* 0: no limit */
	unsigned timeout_ms;
	int src_addrs;            /* -1: automatic */
	const char *from, *rcpt;  /* rcpt may hold one %d */
	bool from_set;            /* --from given: used even with --user */
	bool tls;                 /* implicit TLS (465) */
	const char *user, *pass;  /* AUTH PLAIN; user may hold one %d (as rcpt) */
	unsigned rcpt_count;      /* %d runs over base+1..base+rcpt_count by session */
	unsigned rcpt_base;
	const char *ehlo;
	bool pipelining;          /* when the server offers it */
	long server_pid[MAX_CPU_SOURCES];
	unsigned npids;
	const char *server_cgroup[MAX_CPU_SOURCES];
	unsigned ncgroups;
	bool json;
};

struct result {
	uint64_t msgs;            /* 250 after the dot */
	uint64_t sessions;        /* ended with 221 */
	uint64_t msgs_started;
	uint64_t bytes;           /* message bytes of accepted messages */
	uint64_t errors[ERR_MAX];
	int last_errno;
	char last_reply[160];     /* last unexpected reply, for the report */
	uint64_t t_start_ns, t_end_ns; /* first connect, last 250 or 221 */
	uint64_t cpu_user_us, cpu_sys_us;
	bool pipelined;           /* at least one session pipelined */
	bool io_uring_unavailable, failed;
	struct hist lat_us;       /* end of data -> 250 */
	struct hist env_us;       /* MAIL sent -> 354 to DATA */
	struct hist auth_us;      /* AUTH sent -> 235 */
	uint64_t handshakes;      /* TLS handshakes completed */
};

/* ---- sessions ------------------------------------------------------------- */

enum phase {
	PH_IDLE,       /* not connected; (re)started by the tick or a finished session */
	PH_CONNECT,
	PH_HANDSHAKE,  /* --tls: the TLS handshake */
	PH_GREETING,   /* waiting for 220 */
	PH_EHLO,       /* 250 to EHLO */
	PH_AUTH,       /* 235 to AUTH PLAIN */
	PH_ENVELOPE,   /* 250 MAIL, 250 RCPT, 354 DATA (one write when pipelining) */
	PH_MAIL,       /* without pipelining: one command at a time */
	PH_RCPT,
	PH_DATA,
	PH_MESSAGE,    /* the message and its dot, then its 250 */
	PH_QUIT,       /* 221 */
};

struct client {
	int fd;
	enum phase phase;
	bool sending;         /* the pending op is a send (else recv/connect) */
	bool timed_out;
	bool pipelining;      /* the server said PIPELINING */
	bool ehlo_first;      /* the next EHLO line is the first of the reply */
	unsigned msgs;        /* messages accepted in this session */
	const char *out;      /* being sent */
	size_t out_len, out_off;
	int expect[MAX_PENDING]; /* reply codes still awaited, in order */
	unsigned nexpect;
	uint32_t len;         /* bytes in buf */
	uint64_t deadline_ns;
	uint64_t t_dot_ns;
	uint64_t t_mail_ns;
	uint64_t t_auth_ns;
	char rcpt[ADDR_MAX + 1];
	char user[ADDR_MAX + 1];  /* --user with its %d replaced */
	const char *from;         /* MAIL FROM: --from, else the user, else the default */
	/* --tls: its ssl, the ciphertext in (tls.rbuf, LOADGEN_RBUF bytes) and
	 * out; only loadgen.c's TLS functions use it, not its engine */
	struct loadgen_conn tls;
	char cmd[CMD_BUF];
	size_t cmd_len;
	char *msg;            /* this session's copy of the message + ".\r\n" */
	char buf[RECV_BUF];
};

enum ud_op { UD_NONE, UD_CLIENT, UD_TICK, UD_CANCEL, UD_MAX };

static uint64_t ud_make(enum ud_op op, uint32_t idx) { return ((uint64_t)op << 56) | idx; }

static enum ud_op ud_op(uint64_t ud)
{
	unsigned op = (unsigned)(ud >> 56);
	return op < UD_MAX ? (enum ud_op)op : UD_NONE;
}

struct load {
	const struct opts *o;
	struct io_uring ring;
	struct bench_addrs addr;
	struct client *clients;
	WOLFSSL_CTX *ctx;         /* --tls */
	unsigned active;
	uint64_t end_ns, hard_end_ns;
	bool stopping;
	struct __kernel_timespec tick_ts;
	/* The message template: headers, body, ".\r\n"; the Message-ID's
	 * variable part is at mid_off, MID_LEN bytes. */
	char *tmpl;
	size_t tmpl_len, mid_off;
	uint64_t nonce, seq;
	struct result *res;
};

enum { MID_LEN = 16 + 1 + 10 };  /* %016llx.%010u */

static struct io_uring_sqe *load_sqe(struct load *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

static uint32_t cidx(struct load *l, struct client *c) { return (uint32_t)(c - l->clients); }

static enum err_kind err_from_errno(int e)
{
	switch (e) {
	case ECONNREFUSED:
		return ERR_REFUSED;
	case ECONNRESET:
	case EPIPE:
	case ECONNABORTED:
		return ERR_RESET;
	case ETIMEDOUT:
	case ETIME:
	case ECANCELED:
		return ERR_TIMEOUT;
	default:
		return ERR_OTHER;
	}
}

static void client_close(struct client *c)
{
	if (c->tls.ssl) {
		wolfSSL_free(c->tls.ssl);
		c->tls.ssl = NULL;
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->phase = PH_IDLE;
}

static void client_start(struct load *l, struct client *c);

/* Ends the session with an error; the tick starts the next one (20 ms
 * later: a refusing server is not hammered in a tight loop). */
static void client_fail(struct load *l, struct client *c, enum err_kind k, int e)
{
	if (c->timed_out)
		k = ERR_TIMEOUT;
	l->res->errors[k]++;
	if (k == ERR_OTHER)
		l->res->last_errno = e;
	client_close(c);
	l->active--;
}

static void client_arm(struct load *l, struct client *c)
{
	c->deadline_ns = now_ns() + (uint64_t)l->o->timeout_ms * 1000000u;
}

static void client_recv(struct load *l, struct client *c)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	if (c->tls.ssl) {
		/* ciphertext behind what wolfSSL consumed; keep any unread */
		struct loadgen_conn *t = &c->tls;
		if (t->in_off > 0) {
			memmove(t->rbuf, t->rbuf + t->in_off, t->in_len - t->in_off);
			t->in_len -= t->in_off;
			t->in_off = 0;
		}
		io_uring_prep_recv(sqe, c->fd, t->rbuf + t->in_len, LOADGEN_RBUF - t->in_len, 0);
	} else {
		io_uring_prep_recv(sqe, c->fd, c->buf + c->len, RECV_BUF - 1 - c->len, 0);
	}
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, cidx(l, c)));
	c->sending = false;
}

static void client_send_more(struct load *l, struct client *c)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_send(sqe, c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, cidx(l, c)));
	c->sending = true;
}

/* Sends what the handshake or loadgen_write put in c->tls.out. */
static void client_send_tls(struct load *l, struct client *c)
{
	c->out = (const char *)c->tls.out;
	c->out_len = c->tls.out_len;
	c->out_off = 0;
	client_arm(l, c);
	client_send_more(l, c);
}

/* Sends p[0..n) (encrypted with --tls) then awaits the replies in
 * c->expect. */
static void client_send(struct load *l, struct client *c, const char *p, size_t n)
{
	if (c->tls.ssl) {
		c->tls.out_len = c->tls.out_off = 0; /* the last send completed */
		if (!loadgen_write(&c->tls, p, n)) {
			client_fail(l, c, ERR_TLS, 0);
			return;
		}
		client_send_tls(l, c);
		return;
	}
	c->out = p;
	c->out_len = n;
	c->out_off = 0;
	client_arm(l, c);
	client_send_more(l, c);
}

static void expect1(struct client *c, int code)
{
	c->expect[0] = code;
	c->nexpect = 1;
}

static void send_cmd(struct load *l, struct client *c, enum phase ph, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void send_cmd(struct load *l, struct client *c, enum phase ph, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->cmd, sizeof(c->cmd), fmt, ap);
	va_end(ap);
	c->phase = ph;
	c->cmd_len = n < 0 ? 0 : (size_t)n < sizeof(c->cmd) ? (size_t)n : sizeof(c->cmd) - 1;
	client_send(l, c, c->cmd, c->cmd_len);
}

/* The next message, or QUIT when the session has sent its share or the
 * run is over. */
static void client_next(struct load *l, struct client *c)
{
	const struct opts *o = l->o;
	if (!l->stopping && o->max_msgs && l->res->msgs_started >= o->max_msgs)
		l->stopping = true;
	if (l->stopping || c->msgs >= o->msgs_per_session) {
		expect1(c, 221);
		send_cmd(l, c, PH_QUIT, "QUIT\r\n");
		return;
	}
	l->res->msgs_started++;
	c->t_mail_ns = now_ns();
	if (c->pipelining) {
		c->phase = PH_ENVELOPE;
		c->cmd_len = (size_t)snprintf(c->cmd, sizeof(c->cmd),
					      "MAIL FROM:<%s> SIZE=%zu\r\nRCPT TO:<%s>\r\nDATA\r\n",
					      c->from, o->size, c->rcpt);
		c->expect[0] = 250;
		c->expect[1] = 250;
		c->expect[2] = 354;
		c->nexpect = 3;
		client_send(l, c, c->cmd, c->cmd_len);
	} else {
		expect1(c, 250);
		c->cmd_len = (size_t)snprintf(c->cmd, sizeof(c->cmd), "MAIL FROM:<%s> SIZE=%zu\r\n",
					      c->from, o->size);
		c->phase = PH_MAIL;
		client_send(l, c, c->cmd, c->cmd_len);
	}
}

/* RFC 4648 base64 of p[0..n) into dst (4 * ceil(n / 3) + 1 bytes). */
static size_t base64(char *dst, const uint8_t *p, size_t n)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		dst[o++] = a[v >> 18];
		dst[o++] = a[(v >> 12) & 63];
		dst[o++] = i + 1 < n ? a[(v >> 6) & 63] : '=';
		dst[o++] = i + 2 < n ? a[v & 63] : '=';
	}
	dst[o] = '\0';
	return o;
}

/* AUTH PLAIN with the initial response (RFC 4616: "\0user\0pass"). */
static void send_auth(struct load *l, struct client *c)
{
	uint8_t raw[2 + ADDR_MAX + PASS_MAX];
	size_t ul = strlen(c->user), pl = strlen(l->o->pass);
	raw[0] = 0;
	memcpy(raw + 1, c->user, ul);
	raw[1 + ul] = 0;
	memcpy(raw + 2 + ul, l->o->pass, pl);
	char b64[4 * ((sizeof(raw) + 2) / 3) + 1];
	base64(b64, raw, 2 + ul + pl);
	explicit_bzero(raw, sizeof(raw));
	expect1(c, 235);
	c->t_auth_ns = now_ns();
	send_cmd(l, c, PH_AUTH, "AUTH PLAIN %s\r\n", b64);
	explicit_bzero(b64, sizeof(b64));
}

static void client_send_message(struct load *l, struct client *c)
{
	char mid[MID_LEN + 1];
	snprintf(mid, sizeof(mid), "%016" PRIx64 ".%010u", l->nonce, (unsigned)(l->seq++ % 4000000000u));
	memcpy(c->msg + l->mid_off, mid, MID_LEN);
	c->phase = PH_MESSAGE;
	expect1(c, 250);
	client_send(l, c, c->msg, l->tmpl_len);
}

/* A complete reply (its last line) arrived with code; the expected one was
 * c->expect[0]. Returns false when the session failed. */
static bool client_reply(struct load *l, struct client *c, int code)
{
	int want = c->expect[0];
	memmove(c->expect, c->expect + 1, (MAX_PENDING - 1) * sizeof(c->expect[0]));
	c->nexpect--;
	if (code != want)
		return false;
	if (c->nexpect > 0)
		return true;
	switch (c->phase) {
	case PH_GREETING:
		c->ehlo_first = true;
		c->pipelining = false;
		expect1(c, 250);
		send_cmd(l, c, PH_EHLO, "EHLO %s\r\n", l->o->ehlo);
		break;
	case PH_EHLO:
		if (c->pipelining)
			l->res->pipelined = true;
		if (l->o->user) {
			send_auth(l, c);
			break;
		}
		client_next(l, c);
		break;
	case PH_AUTH:
		hist_add(&l->res->auth_us, (now_ns() - c->t_auth_ns) / 1000);
		client_next(l, c);
		break;
	case PH_MAIL:
		expect1(c, 250);
		send_cmd(l, c, PH_RCPT, "RCPT TO:<%s>\r\n", c->rcpt);
		break;
	case PH_RCPT:
		expect1(c, 354);
		send_cmd(l, c, PH_DATA, "DATA\r\n");
		break;
	case PH_ENVELOPE:
	case PH_DATA:
		hist_add(&l->res->env_us, (now_ns() - c->t_mail_ns) / 1000);
		client_send_message(l, c);
		break;
	case PH_MESSAGE: {
		uint64_t t = now_ns();
		hist_add(&l->res->lat_us, (t - c->t_dot_ns) / 1000);
		l->res->msgs++;
		l->res->bytes += l->o->size;
		l->res->t_end_ns = t;
		c->msgs++;
		client_next(l, c);
		break;
	}
	case PH_QUIT:
		l->res->sessions++;
		l->res->t_end_ns = now_ns();
		client_close(c);
		l->active--;
		client_start(l, c);
		break;
	default:
		return false;
	}
	return true;
}

static void note_reply(struct load *l, const char *s, size_t n)
{
	if (n >= sizeof(l->res->last_reply))
		n = sizeof(l->res->last_reply) - 1;
	memcpy(l->res->last_reply, s, n);
	l->res->last_reply[n] = '\0';
}

/* Handles the complete lines in c->buf. Returns 1 to read more, 0 when the
 * client moved on (a send is in flight or the session ended), -1 on a
 * failure already counted. */
static int client_lines(struct load *l, struct client *c)
{
	size_t off = 0;
	int rc = 1;
	while (rc == 1) {
		char *nl = memchr(c->buf + off, '\n', c->len - off);
		if (!nl)
			break;
		const char *s = c->buf + off;
		size_t n = (size_t)(nl - s);
		if (n > 0 && s[n - 1] == '\r')
			n--;
		off = (size_t)(nl - c->buf) + 1;
		if (n < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' ||
		    s[2] > '9' || (n > 3 && s[3] != ' ' && s[3] != '-') || c->nexpect == 0) {
			note_reply(l, s, n);
			client_fail(l, c, ERR_BAD_REPLY, 0);
			return -1;
		}
		if (c->phase == PH_EHLO) {
			/* "250-PIPELINING" or "250 PIPELINING"; the first line is the hostname */
			if (!c->ehlo_first && n >= 14 && strncasecmp(s + 4, "PIPELINING", 10) == 0 &&
			    (n == 14 || s[14] == ' '))
				c->pipelining = l->o->pipelining;
			c->ehlo_first = false;
		}
		if (n > 3 && s[3] == '-')
			continue;  /* a continuation line */
		int code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
		if (code != c->expect[0]) {
			note_reply(l, s, n);
			client_fail(l, c, c->phase == PH_AUTH ? ERR_AUTH : code >= 500 ? ERR_PERMFAIL
					  : code >= 400 ? ERR_TEMPFAIL : ERR_BAD_REPLY, 0);
			return -1;
		}
		bool more = c->nexpect > 1;
		enum phase was = c->phase;
		if (!client_reply(l, c, code))
			return -1;  /* cannot happen: the code was checked */
		if (was == PH_QUIT)
			return 0;   /* the session ended; the client may have restarted */
		rc = more ? 1 : 0;
	}
	memmove(c->buf, c->buf + off, c->len - off);
	c->len -= (uint32_t)off;
	if (rc == 1 && c->len >= RECV_BUF - 1) {
		note_reply(l, c->buf, 64);
		client_fail(l, c, ERR_BAD_REPLY, 0);  /* a line longer than any reply should be */
		return -1;
	}
	return rc;
}

static void client_start(struct load *l, struct client *c)
{
	const struct opts *o = l->o;
	if (o->max_msgs && l->res->msgs_started >= o->max_msgs)
		l->stopping = true;
	if (l->stopping)
		return;
	c->timed_out = false;
	c->pipelining = false;
	c->msgs = 0;
	c->len = 0;
	c->nexpect = 0;
	uint64_t t = now_ns();
	if (l->res->t_start_ns == 0)
		l->res->t_start_ns = t;
	c->fd = bench_socket(&l->addr);
	if (c->fd < 0) {
		l->res->errors[ERR_OTHER]++;
		l->res->last_errno = errno;
		c->phase = PH_IDLE;
		return;
	}
	if (l->ctx) {
		c->tls.in_off = c->tls.in_len = 0;
		c->tls.out_len = c->tls.out_off = 0;
		if (!loadgen_tls_new(l->ctx, &c->tls)) {
			l->res->errors[ERR_TLS]++;
			client_close(c);
			return;
		}
	}
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&l->addr.dst, l->addr.dst_len);
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, cidx(l, c)));
	c->phase = PH_CONNECT;
	c->sending = false;
	client_arm(l, c);
	l->active++;
}

/* --tls: decrypts what arrived into c->buf and handles its lines.
 * Returns as client_lines(). */
static int client_tls_lines(struct load *l, struct client *c)
{
	char err[WOLFSSL_MAX_ERROR_SZ] = "";
	for (;;) {
		/* client_lines() fails a session whose buffer filled up without
		 * a line end, so there is room here */
		int r = loadgen_tls_read(&c->tls, c->buf + c->len, RECV_BUF - 1 - c->len, err,
					 sizeof(err));
		if (r == LOADGEN_TLS_WANT)
			return 1;
		if (r < 0) {
			if (r == LOADGEN_TLS_ERROR)
				note_reply(l, err, strlen(err));
			client_fail(l, c, r == LOADGEN_TLS_CLOSED ? ERR_CLOSED : ERR_TLS, 0);
			return -1;
		}
		c->len += (uint32_t)r;
		int rc = client_lines(l, c);
		if (rc != 1)
			return rc;
	}
}

/* --tls: the handshake goes on with what arrived (nothing, right after
 * connect: the ClientHello goes out). */
static void client_handshake(struct load *l, struct client *c)
{
	char err[WOLFSSL_MAX_ERROR_SZ] = "";
	c->tls.out_len = c->tls.out_off = 0; /* the last send completed */
	int r = loadgen_tls_handshake(&c->tls, err, sizeof(err));
	if (r == LOADGEN_TLS_ERROR) {
		note_reply(l, err, strlen(err));
		client_fail(l, c, ERR_TLS, 0);
		return;
	}
	if (r == LOADGEN_TLS_DONE) {
		l->res->handshakes++;
		c->phase = PH_GREETING;
		expect1(c, 220);
	}
	if (c->tls.out_len > 0) {
		client_send_tls(l, c); /* ClientHello, or the client's Finished */
		return;
	}
	if (r == LOADGEN_TLS_DONE && client_tls_lines(l, c) != 1)
		return;
	client_recv(l, c);
}

static void client_complete(struct load *l, struct client *c, int res)
{
	if (c->phase == PH_IDLE)
		return;
	if (res < 0) {
		client_fail(l, c, err_from_errno(-res), -res);
		return;
	}
	if (c->timed_out) {
		client_fail(l, c, ERR_TIMEOUT, 0);
		return;
	}
	if (c->phase == PH_CONNECT) {
		if (c->tls.ssl) {
			c->phase = PH_HANDSHAKE;
			client_handshake(l, c);
			return;
		}
		c->phase = PH_GREETING;
		expect1(c, 220);
		client_recv(l, c);
		return;
	}
	if (c->sending) {
		c->out_off += (size_t)res;
		if (c->out_off < c->out_len) {
			client_send_more(l, c);
			return;
		}
		if (c->phase == PH_MESSAGE)
			c->t_dot_ns = now_ns();
		/* TLS: records that arrived with the last ones may hold more */
		if (c->tls.ssl && c->phase != PH_HANDSHAKE && client_tls_lines(l, c) != 1)
			return;
		client_recv(l, c);
		return;
	}
	if (res == 0) {
		client_fail(l, c, ERR_CLOSED, 0);
		return;
	}
	if (c->tls.ssl) {
		c->tls.in_len += (uint32_t)res;
		if (c->phase == PH_HANDSHAKE)
			client_handshake(l, c);
		else if (client_tls_lines(l, c) == 1)
			client_recv(l, c);
		return;
	}
	c->len += (uint32_t)res;
	if (client_lines(l, c) == 1)
		client_recv(l, c);
}

static void load_arm_tick(struct load *l)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_make(UD_TICK, 0));
}

static void load_tick(struct load *l)
{
	uint64_t t = now_ns();
	if (t >= l->end_ns)
		l->stopping = true;
	for (unsigned i = 0; i < l->o->clients; i++) {
		struct client *c = &l->clients[i];
		if (c->phase == PH_IDLE) {
			client_start(l, c);
		} else if (!c->timed_out && t > c->deadline_ns) {
			c->timed_out = true;
			struct io_uring_sqe *sqe = load_sqe(l);
			io_uring_prep_cancel64(sqe, ud_make(UD_CLIENT, i), 0);
			io_uring_sqe_set_data64(sqe, ud_make(UD_CANCEL, i));
		}
	}
	load_arm_tick(l);
}

/* Builds the message: exactly o->size bytes of header and body in CRLF
 * lines of at most 78 characters, none starting with '.', then ".\r\n". */
static int build_message(struct load *l)
{
	const struct opts *o = l->o;
	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	char hdr[1024];
	int h = snprintf(hdr, sizeof(hdr),
			 "From: smtpload <%s>\r\n"
			 "To: undisclosed-recipients:;\r\n"
			 "Subject: smtpload message of %zu bytes\r\n"
			 "Date: %s\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n"
			 "Message-ID: <",
			 o->from, o->size, date);
	if (h < 0 || (size_t)h + MID_LEN + 64 > o->size)
		return -1;
	l->tmpl = malloc(o->size + 3);
	if (!l->tmpl)
		return -1;
	char *p = l->tmpl;
	memcpy(p, hdr, (size_t)h);
	p += h;
	l->mid_off = (size_t)h;
	memset(p, '0', MID_LEN);
	p += MID_LEN;
	p += sprintf(p, "@smtpload.invalid>\r\n\r\n");
	static const char alpha[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	size_t end = o->size;
	unsigned line = 0;
	while ((size_t)(p - l->tmpl) < end) {
		size_t left = end - (size_t)(p - l->tmpl);
		size_t n = left <= 78 + 2 ? left - 2 : 76;
		if (left > 80 && left - 78 < 3)
			n = 70;  /* keep room for a last line of at least one character */
		for (size_t i = 0; i < n; i++)
			p[i] = alpha[(i + line) % (sizeof(alpha) - 1)];
		if (n == 0) {
			p[0] = '\r';
			p[1] = '\n';
			p += 2;
			break;
		}
		p += n;
		*p++ = '\r';
		*p++ = '\n';
		line++;
	}
	if ((size_t)(p - l->tmpl) != end)
		return -1;
	memcpy(p, ".\r\n", 3);
	l->tmpl_len = o->size + 3;
	return 0;
}

/* "user%d@example.com" with %d = n; without %d, fmt itself. */
static void rcpt_format(char *dst, size_t cap, const char *fmt, unsigned n)
{
	const char *d = strstr(fmt, "%d");
	if (!d) {
		snprintf(dst, cap, "%s", fmt);
		return;
	}
	snprintf(dst, cap, "%.*s%u%s", (int)(d - fmt), fmt, n, d + 2);
}

static void load_run(const struct opts *o, uint64_t end_ns, struct result *res)
{
	struct load l = { .o = o, .res = res };
	bool tls_inited = false;  /* wolfSSL_Init() to balance */
	memset(res, 0, sizeof(*res));
	l.end_ns = end_ns;
	l.hard_end_ns = end_ns + (uint64_t)o->timeout_ms * 1000000u + 1000000000u;
	l.tick_ts.tv_nsec = TICK_MS * 1000000;
	l.nonce = ((uint64_t)time(NULL) << 24) ^ ((uint64_t)getpid() << 8) ^ (now_ns() & 0xff);
	if (bench_resolve("smtpload", o->host, o->port, o->src_addrs, &l.addr) < 0 ||
	    build_message(&l) < 0) {
		if (!l.tmpl)
			fprintf(stderr, "smtpload: cannot build a message of %zu bytes\n", o->size);
		res->failed = true;
		free(l.tmpl);
		return;
	}
	l.clients = calloc(o->clients, sizeof(*l.clients));
	if (!l.clients) {
		res->failed = true;
		free(l.tmpl);
		return;
	}
	if (o->tls) {
		/* TLS 1.3, X25519, as imapload and tls_bench by default */
		if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
			fprintf(stderr, "smtpload: wolfSSL_Init failed\n");
			res->failed = true;
			goto out;
		}
		tls_inited = true;
		l.ctx = loadgen_tls_ctx("smtpload", false, 0);
		if (!l.ctx) {
			res->failed = true;
			goto out;
		}
	}
	for (unsigned i = 0; i < o->clients; i++) {
		struct client *c = &l.clients[i];
		c->fd = -1;
		c->msg = malloc(l.tmpl_len);
		c->tls.fd = -1;
		c->tls.rbuf = o->tls ? malloc(LOADGEN_RBUF) : NULL;
		if (!c->msg || (o->tls && !c->tls.rbuf)) {
			res->failed = true;
			goto out;
		}
		memcpy(c->msg, l.tmpl, l.tmpl_len);
		/* session i: recipient and user number base + i mod count + 1 */
		unsigned n = o->rcpt_base + i % o->rcpt_count + 1;
		rcpt_format(c->rcpt, sizeof(c->rcpt), o->rcpt, n);
		c->from = o->from;
		if (o->user) {
			rcpt_format(c->user, sizeof(c->user), o->user, n);
			if (!o->from_set)
				c->from = c->user; /* submission: the sender is the user */
		}
	}

	int rc = bench_ring_init("smtpload", &l.ring, o->clients, &res->io_uring_unavailable);
	if (rc < 0) {
		res->failed = true;
		goto out;
	}

	for (unsigned i = 0; i < o->clients; i++)
		client_start(&l, &l.clients[i]);
	load_arm_tick(&l);
	while (!(l.stopping && l.active == 0)) {
		rc = io_uring_submit_and_wait(&l.ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			fprintf(stderr, "smtpload: io_uring_submit_and_wait: %s\n", strerror(-rc));
			res->failed = true;
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&l.ring, head, cqe) {
			uint64_t ud = io_uring_cqe_get_data64(cqe);
			uint32_t idx = (uint32_t)ud;
			seen++;
			switch (ud_op(ud)) {
			case UD_CLIENT:
				if (idx < o->clients)
					client_complete(&l, &l.clients[idx], cqe->res);
				break;
			case UD_TICK:
				load_tick(&l);
				break;
			default:
				break;
			}
		}
		io_uring_cq_advance(&l.ring, seen);
		if (now_ns() > l.hard_end_ns) {
			for (unsigned i = 0; i < o->clients; i++) {
				if (l.clients[i].phase != PH_IDLE) {
					res->errors[ERR_TIMEOUT]++;
					client_close(&l.clients[i]);
				}
			}
			break;
		}
	}
	io_uring_queue_exit(&l.ring);
out:
	for (unsigned i = 0; i < o->clients; i++) {
		client_close(&l.clients[i]);
		free(l.clients[i].msg);
		free(l.clients[i].tls.rbuf);
		free(l.clients[i].tls.out);
	}
	free(l.clients);
	free(l.tmpl);
	if (l.ctx)
		wolfSSL_CTX_free(l.ctx);
	if (tls_inited)
		wolfSSL_Cleanup();
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	res->cpu_user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec;
	res->cpu_sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* ---- the server's CPU time ------------------------------------------------ */

/* Sum over every --server-cgroup, or else every --server-pid. */
static struct cpu_sample cpu_now(const struct opts *o, const char **src_r)
{
	struct cpu_sample sum = { .ok = true };
	*src_r = o->ncgroups ? "cgroup" : "pid";
	unsigned n = o->ncgroups ? o->ncgroups : o->npids;
	if (n == 0) {
		sum.ok = false;
		return sum;
	}
	for (unsigned i = 0; i < n; i++) {
		struct cpu_sample s = o->ncgroups ? cpu_from_cgroup(o->server_cgroup[i])
						  : cpu_from_pid(o->server_pid[i], true);
		if (!s.ok) {
			sum.ok = false;
			return sum;
		}
		sum.user_us += s.user_us;
		sum.sys_us += s.sys_us;
		sum.total_us += s.total_us;
	}
	return sum;
}

/* ---- report ------------------------------------------------------------------ */

static void report(FILE *out, const struct opts *o, const struct result *r,
		   const struct cpu_sample *cpu, const char *cpu_src, double other_pct)
{
	double secs = r->t_end_ns > r->t_start_ns ? (double)(r->t_end_ns - r->t_start_ns) / 1e9 : 0;
	double msgs = r->msgs ? (double)r->msgs : 1;
	uint64_t nerr = 0;
	for (int k = 0; k < ERR_MAX; k++)
		nerr += r->errors[k];
	fprintf(out, "smtp %s:%s%s%s sessions %u x %u msgs of %zu bytes%s\n", o->host, o->port,
		o->tls ? " TLS" : "", o->user ? " AUTH" : "", o->clients, o->msgs_per_session,
		o->size, r->pipelined ? ", pipelined" : "");
	fprintf(out, "  accepted     %" PRIu64 " msgs (%" PRIu64 " sessions) in %.2f s = %.1f msgs/s\n",
		r->msgs, r->sessions, secs, secs > 0 ? (double)r->msgs / secs : 0);
	fprintf(out, "  latency us   dot->250 p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64
		"  max %" PRIu64 "\n", hist_quantile(&r->lat_us, 0.5),
		hist_quantile(&r->lat_us, 0.99), hist_quantile(&r->lat_us, 0.999), r->lat_us.max);
	fprintf(out, "  envelope us  MAIL->354 p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64 "\n",
		hist_quantile(&r->env_us, 0.5), hist_quantile(&r->env_us, 0.99),
		hist_quantile(&r->env_us, 0.999));
	if (o->user)
		fprintf(out, "  auth us      AUTH->235 p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64
			" (%" PRIu64 " logins)\n", hist_quantile(&r->auth_us, 0.5),
			hist_quantile(&r->auth_us, 0.99), hist_quantile(&r->auth_us, 0.999),
			r->auth_us.n);
	if (o->tls)
		fprintf(out, "  tls          %" PRIu64 " handshakes\n", r->handshakes);
	fprintf(out, "  errors       %" PRIu64, nerr);
	for (int k = 0; k < ERR_MAX; k++)
		fprintf(out, " %s %" PRIu64, err_name[k], r->errors[k]);
	if (r->errors[ERR_OTHER] && r->last_errno)
		fprintf(out, " (last other: %s)", strerror(r->last_errno));
	fprintf(out, "\n");
	if (r->last_reply[0])
		fprintf(out, "  last unexpected reply (or TLS error): %s\n", r->last_reply);
	if (cpu->ok)
		fprintf(out, "  server cpu   %.1f us/msg (user %.1f sys %.1f) [%s]\n",
			(double)cpu->total_us / msgs, (double)cpu->user_us / msgs,
			(double)cpu->sys_us / msgs, cpu_src);
	if (other_pct >= 0)
		fprintf(out, "  other load   %.1f%% of a core (neither server nor smtpload)\n", other_pct);
	fprintf(out, "  client cpu   %.1f us/msg\n",
		(double)(r->cpu_user_us + r->cpu_sys_us) / msgs);
}

static void report_json(FILE *out, const struct opts *o, const struct result *r,
			const struct cpu_sample *cpu, const char *cpu_src, double other_pct)
{
	double secs = r->t_end_ns > r->t_start_ns ? (double)(r->t_end_ns - r->t_start_ns) / 1e9 : 0;
	double msgs = r->msgs ? (double)r->msgs : 1;
	fprintf(out, "{\"scenario\":\"smtp\",\"host\":\"%s\",\"port\":%s,\"tls\":%s,\"auth\":%s,"
		"\"sessions\":%u,"
		"\"rcpts\":%u,\"msgs_per_session\":%u,\"size\":%zu,\"pipelined\":%s,\"msgs\":%" PRIu64
		",\"sessions_done\":%" PRIu64 ",\"seconds\":%.3f,\"msgs_per_s\":%.1f,"
		"\"p50_us\":%" PRIu64 ",\"p99_us\":%" PRIu64 ",\"p999_us\":%" PRIu64
		",\"max_us\":%" PRIu64 ",\"env_p50_us\":%" PRIu64 ",\"env_p99_us\":%" PRIu64
		",\"env_p999_us\":%" PRIu64 ",\"errors\":{",
		o->host, o->port, o->tls ? "true" : "false", o->user ? "true" : "false", o->clients, o->rcpt_count, o->msgs_per_session, o->size,
		r->pipelined ? "true" : "false", r->msgs, r->sessions, secs,
		secs > 0 ? (double)r->msgs / secs : 0, hist_quantile(&r->lat_us, 0.5),
		hist_quantile(&r->lat_us, 0.99), hist_quantile(&r->lat_us, 0.999), r->lat_us.max,
		hist_quantile(&r->env_us, 0.5), hist_quantile(&r->env_us, 0.99),
		hist_quantile(&r->env_us, 0.999));
	uint64_t nerr = 0;
	for (int k = 0; k < ERR_MAX; k++) {
		fprintf(out, "%s\"%s\":%" PRIu64, k ? "," : "", err_name[k], r->errors[k]);
		nerr += r->errors[k];
	}
	fprintf(out, "},\"errors_total\":%" PRIu64 ",", nerr);
	if (o->user)
		fprintf(out, "\"logins\":%" PRIu64 ",\"auth_p50_us\":%" PRIu64 ",\"auth_p99_us\":%" PRIu64
			",\"auth_p999_us\":%" PRIu64 ",", r->auth_us.n, hist_quantile(&r->auth_us, 0.5),
			hist_quantile(&r->auth_us, 0.99), hist_quantile(&r->auth_us, 0.999));
	if (o->tls)
		fprintf(out, "\"handshakes\":%" PRIu64 ",", r->handshakes);
	if (cpu->ok)
		fprintf(out, "\"server_cpu_us_per_msg\":%.2f,\"server_user_us_per_msg\":%.2f,"
			"\"server_sys_us_per_msg\":%.2f,\"server_cpu_source\":\"%s\",",
			(double)cpu->total_us / msgs, (double)cpu->user_us / msgs,
			(double)cpu->sys_us / msgs, cpu_src);
	else
		fprintf(out, "\"server_cpu_us_per_msg\":null,");
	if (other_pct >= 0)
		fprintf(out, "\"other_cpu_pct\":%.1f,", other_pct);
	fprintf(out, "\"client_cpu_us_per_msg\":%.2f}\n",
		(double)(r->cpu_user_us + r->cpu_sys_us) / msgs);
}

/* ---- main ------------------------------------------------------------------ */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: smtpload [options]\n"
		"  -H, --host ADDR          server address (127.0.0.1)\n"
		"  -p, --port PORT          server port (2525)\n"
		"  -c, --sessions N         concurrent sessions (%d)\n"
		"  -m, --msgs N             messages per session (%d)\n"
		"  -S, --size BYTES         message size, header included (%d; k/K, m/M suffixes)\n"
		"  -d, --duration SECS      no message starts after SECS (5)\n"
		"  -n, --max-msgs N         no message starts after N (smoke tests)\n"
		"      --timeout-ms MS      deadline of each step: connect, each reply (%d)\n"
		"      --tls                implicit TLS (465): TLS 1.3 right after connect\n"
		"      --user ADDR          AUTH PLAIN as ADDR after EHLO; one %%d as in --rcpt\n"
		"                           (same number); MAIL FROM is the user\n"
		"      --pass PASS          the password for --user\n"
		"      --from ADDR          envelope sender (load@load.example; with --user,\n"
		"                           the user)\n"
		"      --rcpt ADDR          recipient; one %%d is replaced by 1..--rcpt-count\n"
		"                           by session (user@example.com)\n"
		"      --rcpt-count N       recipients %%d runs over (1)\n"
		"      --rcpt-base B        %%d runs over B+1..B+N (0)\n"
		"      --ehlo NAME          EHLO argument (load.example)\n"
		"      --no-pipelining      one command at a time even if offered\n"
		"      --src-addrs N        bind to 127.0.0.1..N (loopback: 16; 0: off)\n"
		"      --server-pid PID     report the CPU of PID (utime+stime+cutime+cstime);\n"
		"                           repeat to sum several\n"
		"      --server-cgroup DIR  report the CPU of a cgroup (cpu.stat); repeat to sum\n"
		"      --json               stdout: one JSON line; report on stderr\n",
		DEFAULT_CLIENTS, DEFAULT_MSGS, DEFAULT_SIZE, DEFAULT_TIMEOUT_MS);
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = "2525", .clients = DEFAULT_CLIENTS,
		.msgs_per_session = DEFAULT_MSGS, .size = DEFAULT_SIZE, .duration_s = 5,
		.timeout_ms = DEFAULT_TIMEOUT_MS, .src_addrs = -1, .from = "load@load.example",
		.rcpt = "user@example.com", .rcpt_count = 1, .ehlo = "load.example",
		.pipelining = true,
	};
	enum { OPT_TIMEOUT = 256, OPT_SRC, OPT_PID, OPT_CGROUP, OPT_JSON, OPT_FROM, OPT_RCPT,
	       OPT_RCPT_COUNT, OPT_RCPT_BASE, OPT_EHLO, OPT_NOPIPE, OPT_TLS, OPT_USER, OPT_PASS };
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "sessions", required_argument, NULL, 'c' },
		{ "msgs", required_argument, NULL, 'm' },
		{ "size", required_argument, NULL, 'S' },
		{ "duration", required_argument, NULL, 'd' },
		{ "max-msgs", required_argument, NULL, 'n' },
		{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
		{ "src-addrs", required_argument, NULL, OPT_SRC },
		{ "server-pid", required_argument, NULL, OPT_PID },
		{ "server-cgroup", required_argument, NULL, OPT_CGROUP },
		{ "from", required_argument, NULL, OPT_FROM },
		{ "rcpt", required_argument, NULL, OPT_RCPT },
		{ "rcpt-count", required_argument, NULL, OPT_RCPT_COUNT },
		{ "rcpt-base", required_argument, NULL, OPT_RCPT_BASE },
		{ "ehlo", required_argument, NULL, OPT_EHLO },
		{ "no-pipelining", no_argument, NULL, OPT_NOPIPE },
		{ "tls", no_argument, NULL, OPT_TLS },
		{ "user", required_argument, NULL, OPT_USER },
		{ "pass", required_argument, NULL, OPT_PASS },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	uint64_t v;
	while ((ch = getopt_long(argc, argv, "H:p:c:m:S:d:n:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			o.host = optarg;
			break;
		case 'p':
			if (!parse_size(optarg, 1, 65535, &v))
				goto bad;
			o.port = optarg;
			break;
		case 'c':
			if (!parse_size(optarg, 1, 100000, &v))
				goto bad;
			o.clients = (unsigned)v;
			break;
		case 'm':
			if (!parse_size(optarg, 1, 1000000, &v))
				goto bad;
			o.msgs_per_session = (unsigned)v;
			break;
		case 'S':
			if (!parse_size(optarg, MIN_SIZE, MAX_SIZE, &v))
				goto bad;
			o.size = (size_t)v;
			break;
		case 'd': {
			char *end;
			o.duration_s = strtod(optarg, &end);
			if (end == optarg || *end || !(o.duration_s > 0) || o.duration_s > 86400)
				goto bad;
			break;
		}
		case 'n':
			if (!parse_size(optarg, 1, UINT64_MAX, &v))
				goto bad;
			o.max_msgs = v;
			break;
		case OPT_TIMEOUT:
			if (!parse_size(optarg, 1, 3600000, &v))
				goto bad;
			o.timeout_ms = (unsigned)v;
			break;
		case OPT_SRC:
			if (!parse_size(optarg, 0, BENCH_MAX_SRC_ADDRS, &v))
				goto bad;
			o.src_addrs = (int)v;
			break;
		case OPT_PID:
			if (!parse_size(optarg, 1, INT32_MAX, &v) || o.npids == MAX_CPU_SOURCES)
				goto bad;
			o.server_pid[o.npids++] = (long)v;
			break;
		case OPT_CGROUP:
			if (o.ncgroups == MAX_CPU_SOURCES)
				goto bad;
			o.server_cgroup[o.ncgroups++] = optarg;
			break;
		case OPT_FROM:
			if (strlen(optarg) > ADDR_MAX)
				goto bad;
			o.from = optarg;
			o.from_set = true;
			break;
		case OPT_RCPT:
			if (strlen(optarg) > ADDR_MAX)
				goto bad;
			o.rcpt = optarg;
			break;
		case OPT_TLS:
			o.tls = true;
			break;
		case OPT_USER:
			if (strlen(optarg) > ADDR_MAX - 8 || !*optarg)
				goto bad;
			o.user = optarg;
			break;
		case OPT_PASS:
			if (strlen(optarg) > PASS_MAX)
				goto bad;
			o.pass = optarg;
			break;
		case OPT_RCPT_COUNT:
			if (!parse_size(optarg, 1, 1000000, &v))
				goto bad;
			o.rcpt_count = (unsigned)v;
			break;
		case OPT_RCPT_BASE:
			if (!parse_size(optarg, 0, 100000000, &v))
				goto bad;
			o.rcpt_base = (unsigned)v;
			break;
		case OPT_EHLO:
			if (strlen(optarg) > 255)
				goto bad;
			o.ehlo = optarg;
			break;
		case OPT_NOPIPE:
			o.pipelining = false;
			break;
		case OPT_JSON:
			o.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	if (!o.user != !o.pass) {
		fprintf(stderr, "smtpload: --user and --pass go together\n");
		return 1;
	}
	for (const char *const *f = (const char *const[]){ o.rcpt, o.user, NULL }; *f; f++) {
		const char *pct = strchr(*f, '%');
		if (pct && (pct[1] != 'd' || strchr(pct + 1, '%'))) {
			fprintf(stderr, "smtpload: --rcpt and --user take at most one %%d\n");
			return 1;
		}
	}

	const char *src;
	struct cpu_sample cpu0 = cpu_now(&o, &src);
	if ((o.ncgroups || o.npids) && !cpu0.ok) {
		fprintf(stderr, "smtpload: cannot read the server's CPU time\n");
		return 1;
	}
	uint64_t busy0 = machine_busy_us(), wall0 = now_ns();

	struct result *r = calloc(1, sizeof(*r));
	if (!r)
		return 1;
	load_run(&o, wall0 + (uint64_t)(o.duration_s * 1e9), r);

	struct cpu_sample cpu = { 0 }, cpu1 = cpu_now(&o, &src);
	if (cpu0.ok && cpu1.ok) {
		cpu.ok = true;
		cpu.user_us = cpu1.user_us - cpu0.user_us;
		cpu.sys_us = cpu1.sys_us - cpu0.sys_us;
		cpu.total_us = cpu1.total_us - cpu0.total_us;
	}
	double other_pct = -1;
	uint64_t busy1 = machine_busy_us(), wall_us = (now_ns() - wall0) / 1000;
	if (cpu.ok && busy0 && busy1 && wall_us) {
		double other = (double)(busy1 - busy0) - (double)cpu.total_us -
			       (double)(r->cpu_user_us + r->cpu_sys_us);
		other_pct = other < 0 ? 0 : 100.0 * other / (double)wall_us;
	}
	if (r->io_uring_unavailable) {
		fprintf(stderr, "smtpload: io_uring unavailable: skipped\n");
		free(r);
		return EXIT_SKIP;
	}
	report(o.json ? stderr : stdout, &o, r, &cpu, src, other_pct);
	if (o.json)
		report_json(stdout, &o, r, &cpu, src, other_pct);
	int rc = r->failed ? 1 : 0;
	free(r);
	return rc;
bad:
	fprintf(stderr, "smtpload: bad value for -%c: %s\n", ch < 256 ? ch : '-', optarg);
	usage(stderr);
	return 1;
}
