/* outbound.c - the queue runner and the SMTP client (see outbound.h). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/server.h"
#include "outbound/dns.h"
#include "outbound/outbound.h"
#include "proto/mime.h"
#include "outbound/dkim.h"
#include "outbound/dsn.h"
#include "proto/services.h"
#include "store/queue.h"
#include "store/store.h"
#include "store/users.h"
#include "proto/sasl.h"
#include "tls/tls_client.h"

#define OB_LOOP_MSG (LOOP_MSG_USER + 6) /* a new queue entry for the runner */
#define OB_TICK_MS 250
#define OB_RBUF 16384
#define OB_REPLY_MAX 4096   /* one (multi-line) reply we keep */
#define OB_INBUF_MAX 65536  /* plaintext waiting to be parsed */
#define OB_JOB_RCPTS_MAX 100 /* recipients per transaction */
#define OB_BODY_CHUNK 65536  /* message bytes read from the queue file at once */
#define OB_DSN_HDR_MAX 65536 /* the original's header section in a bounce */
#define OB_DSN_FULL_MAX (256 * 1024) /* RET=FULL: the original returned up to this */
#define OB_LOCAL_MAX (1024 * 1024) /* a queued message for a local user (a DSN) */

struct ob_msg {
	struct queue_entry *e;
	struct outbound *ob;
	bool *inflight;       /* per recipient: in a job now */
	bool *delay_due;      /* per recipient: a delay DSN is due (NOTIFY=DELAY) */
	bool *success_due;    /* per recipient: a "relayed" DSN is due (NOTIFY=SUCCESS) */
	unsigned jobs;        /* jobs and bounce steps holding m */
	bool dsn_busy;        /* a bounce is being made */
	int64_t dsn_retry_ms; /* a failed bounce is tried again then */
	bool removed;
	struct ob_msg *next;
};

struct ob_dest {
	char domain[DNS_NAME_MAX];
	unsigned active;
	struct ob_dest *next;
};

struct outbound {
	struct queue *q;
	struct store *store;
	struct users *users;
	char data_dir[CONFIG_STR_MAX];
	struct loop *loop;   /* the runner's loop (0) */
	struct dns *dns;
	struct ob_msg *msgs;
	struct ob_dest *dests;
	struct loop_cb tick_cb;
	struct __kernel_timespec tick_ts;
	struct loop_cb ctl_cb;
	int ctl_step;
	int ctl_fd;
	char ctl_buf[4096];
	/* The paths live here, not on the stack: the kernel reads them when
	 * the SQE is submitted, after the function that prepared it returned. */
	char ctl_from[CONFIG_STR_MAX + 32], ctl_to[CONFIG_STR_MAX + 32];
	bool flush;
	struct job *jobs;
	struct tls_verifier *verifier; /* smart_tls_verify: the smart host's CAs */
};

static const struct config *ob_cfg(struct outbound *ob)
{
	return server_config(loop_server(ob->loop));
}

/* The smart host gets our AUTH credentials or must prove who it is: then
 * nothing goes to it without TLS (no plaintext fallback, no AUTH in the
 * clear), as Postfix's smtp_tls_security_level = encrypt/secure. */
static bool tls_required(const struct job *j);

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define OBLOG(ob, lvl, ev, ...) LOG_AT(loop_log((ob)->loop), lvl, 0, ev, __VA_ARGS__)

/* ---- messages ----------------------------------------------------------- */

static void msg_add(struct outbound *ob, struct queue_entry *e)
{
	struct ob_msg *m = calloc(1, sizeof(*m));
	if (!m || !(m->inflight = calloc(e->nrcpts, sizeof(bool))) ||
	    !(m->delay_due = calloc(e->nrcpts, sizeof(bool))) ||
	    !(m->success_due = calloc(e->nrcpts, sizeof(bool)))) {
		/* It stays on disk and is picked up at the next start. */
		if (m) {
			free(m->delay_due);
			free(m->inflight);
			free(m);
		}
		queue_entry_free(e);
		return;
	}
	m->e = e;
	m->ob = ob;
	m->next = ob->msgs;
	ob->msgs = m;
}

static void msg_free(struct ob_msg *m)
{
	queue_entry_free(m->e);
	free(m->inflight);
	free(m->delay_due);
	free(m->success_due);
	free(m);
}

static void load_one(void *arg, struct queue_entry *e)
{
	msg_add(arg, e);
}

int outbound_new(struct queue *q, struct store *store, struct users *users,
		 const char *data_dir, struct outbound **ob_r)
{
	struct outbound *ob = calloc(1, sizeof(*ob));
	if (!ob)
		return -ENOMEM;
	ob->q = q;
	ob->store = store;
	ob->users = users;
	ob->ctl_fd = -1;
	snprintf(ob->data_dir, sizeof(ob->data_dir), "%s", data_dir);
	*ob_r = ob;
	return 0;
}

/* A bounce is queued as "<original id>d<index>" (dsn_read()). Found on
 * disk beside an original whose recipients are still "failed", it was made
 * just before a crash that lost the "bounced" states: they are bounced
 * already, and no second bounce is made. */
static void load_bounced(struct outbound *ob)
{
	for (struct ob_msg *b = ob->msgs; b; b = b->next) {
		size_t bl = strlen(b->e->id);
		if (b->e->from[0])
			continue; /* a bounce has the null sender */
		for (struct ob_msg *m = ob->msgs; m; m = m->next) {
			size_t n = strlen(m->e->id);
			if (n + 1 >= bl || strncmp(m->e->id, b->e->id, n) || b->e->id[n] != 'd')
				continue;
			for (size_t i = 0; i < m->e->nrcpts; i++)
				if (m->e->rcpts[i].state == QUEUE_RCPT_FAILED)
					m->e->rcpts[i].state = QUEUE_RCPT_BOUNCED;
		}
	}
}

int outbound_verify_smart_host(struct outbound *ob, const char *ca_file)
{
	tls_verifier_free(&ob->verifier);
	return tls_verifier_new(ca_file, &ob->verifier);
}

int outbound_load(struct outbound *ob)
{
	int rc = queue_scan(ob->q, load_one, ob);
	if (rc > 0)
		load_bounced(ob);
	return rc;
}

void outbound_free(struct outbound **ob_r)
{
	struct outbound *ob = *ob_r;
	if (!ob)
		return;
	*ob_r = NULL;
	for (struct ob_msg *m = ob->msgs, *n; m; m = n) {
		n = m->next;
		if (!m->jobs)
			msg_free(m);
	}
	for (struct ob_dest *d = ob->dests, *n; d; d = n) {
		n = d->next;
		free(d);
	}
	tls_verifier_free(&ob->verifier);
	free(ob);
}

static struct ob_dest *dest_get(struct outbound *ob, const char *domain)
{
	for (struct ob_dest *d = ob->dests; d; d = d->next)
		if (!strcasecmp(d->domain, domain))
			return d;
	struct ob_dest *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	snprintf(d->domain, sizeof(d->domain), "%s", domain);
	d->next = ob->dests;
	ob->dests = d;
	return d;
}

/* ---- the SMTP client job ------------------------------------------------ */

enum job_step {
	J_RESOLVE, J_CONNECT, J_GREET, J_EHLO, J_STARTTLS, J_TLS, J_AUTH, J_MAIL, J_RCPT,
	J_DATA, J_BODY, J_IDLE, J_QUIT, J_DONE,
};

struct job {
	struct outbound *ob;
	struct ob_msg *m;
	char domain[DNS_NAME_MAX];
	size_t ri[OB_JOB_RCPTS_MAX]; /* recipient indices in m->e */
	int rcode[OB_JOB_RCPTS_MAX]; /* final reply code per recipient; 0 none */
	bool accepted[OB_JOB_RCPTS_MAX];
	char rtext[OB_JOB_RCPTS_MAX][QUEUE_REPLY_MAX];
	size_t n;
	/* destinations */
	struct dns_mx mx[DNS_MX_MAX];
	size_t nmx, imx;
	struct sockaddr_storage addrs[2 * DNS_ADDR_MAX];
	size_t naddr, iaddr;
	char host[DNS_NAME_MAX];
	bool smart;
	/* connection */
	int fd;
	unsigned inflight;
	bool closing;
	void (*after_close)(struct job *j);
	struct loop_cb connect_cb, send_cb, recv_cb, body_cb;
	/* the message, read from <id>.msg in OB_BODY_CHUNK pieces */
	int body_fd;
	enum { BODY_OPEN, BODY_READ, BODY_CLOSE } body_op;
	uint64_t body_pos;
	uint8_t *chunk;
	char body_name[QUEUE_ID_MAX + 8]; /* read by the kernel at submission */
	bool body_bol, body_wait, body_nl;
	uint8_t rbuf[OB_RBUF];
	uint8_t *out;
	uint8_t *out_retired;  /* the buffer a send in flight still reads */
	size_t out_len, out_off, out_cap;
	size_t sending;
	bool cork;             /* commands are being queued: flush_out() waits */
	uint8_t inbuf[OB_INBUF_MAX];
	size_t in_len;
	char reply[OB_REPLY_MAX];
	size_t reply_len;
	struct tls_client *tls;
	enum job_step step;
	bool ext_starttls, ext_pipelining, ext_8bit, ext_size, ext_auth, ext_dsn;
	bool ehlo_after_tls;
	bool greeted;          /* the 220 greeting came */
	bool drop_input;       /* STARTTLS accepted: discard the plaintext left */
	size_t expect;         /* pipelined replies consumed so far in MAIL..DATA */
	unsigned naccepted;
	bool answered;         /* some recipient got a definitive answer here */
	uint64_t deadline;
	char last[QUEUE_REPLY_MAX];
	bool last_perm;
	unsigned ntrans;       /* transactions done on this connection */
	bool data_acked;       /* the reply after the data came: accepted[] is final */
	struct job *next;
};


static void job_end(struct job *j);
static bool job_next_message(struct job *j);
static bool job_park(struct job *j);
static void job_again(struct job *j);
static void next_host(struct job *j);
static void try_connect(struct job *j);
static void job_send_str(struct job *j, const char *s);

static void set_last(struct job *j, bool perm, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void set_last(struct job *j, bool perm, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(j->last, sizeof(j->last), fmt, ap);
	va_end(ap);
	j->last_perm = perm;
}

static void arm_deadline(struct job *j)
{
	j->deadline = loop_now_ms(j->ob->loop) + ob_cfg(j->ob)->ob_timeout_ms;
}

/* Every recipient without an answer yet gets this one. */
static void answer_all(struct job *j, int code, const char *text)
{
	for (size_t i = 0; i < j->n; i++) {
		if (j->rcode[i] && !(j->accepted[i] && j->rcode[i] < 300))
			continue;
		j->rcode[i] = code;
		j->accepted[i] = false;
		snprintf(j->rtext[i], sizeof(j->rtext[i]), "%s", text);
	}
	j->answered = true;
}

/* ---- socket plumbing ---------------------------------------------------- */

static void job_closed_maybe(struct job *j)
{
	if (!j->closing || j->inflight)
		return;
	if (j->fd >= 0) {
		close(j->fd); /* a socket without linger: does not block */
		j->fd = -1;
	}
	if (j->body_fd >= 0) {
		close(j->body_fd); /* read-only, nothing to flush */
		j->body_fd = -1;
	}
	tls_client_free(&j->tls);
	j->closing = false;
	void (*fn)(struct job *) = j->after_close;
	j->after_close = NULL;
	if (fn)
		fn(j);
}

static void job_close(struct job *j, void (*then)(struct job *))
{
	if (j->closing)
		return;
	j->closing = true;
	j->after_close = then;
	if (j->fd >= 0)
		shutdown(j->fd, SHUT_RDWR); /* pending recv/send/connect complete now */
	job_closed_maybe(j);
}

/* The address j->addrs[j->iaddr] as text ("" when there is none). */
static void addr_text(const struct job *j, char *out, size_t cap)
{
	out[0] = '\0';
	if (j->iaddr >= j->naddr)
		return;
	const struct sockaddr_storage *a = &j->addrs[j->iaddr];
	if (a->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, out, (socklen_t)cap);
	else
		inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, out, (socklen_t)cap);
}

/* One address of one MX host failed before any recipient was answered:
 * logged (which hosts were tried, in which order), then the next one. */
static void after_fail_next_addr(struct job *j)
{
	char addr[INET6_ADDRSTRLEN];
	addr_text(j, addr, sizeof(addr));
	OBLOG(j->ob, LOG_INFO, "outbound-host-failed", "domain=%s host=%s addr=%s reason=\"%s\"",
	      j->domain, j->host, addr, j->last);
	j->iaddr++;
	try_connect(j);
}

/* A connection-level failure: before any recipient was answered try the
 * next address; after, the job ends (the rest retry later). */
static void job_fail(struct job *j, const char *why)
{
	if (j->closing)
		return;
	if (!j->m) {
		/* An idle connection went away: nothing to retry. */
		job_close(j, job_end);
		return;
	}
	if (!j->last[0] || !j->answered)
		set_last(j, false, "%s (%s)", why, j->host);
	job_close(j, j->answered ? job_end : after_fail_next_addr);
}

static void flush_out(struct job *j)
{
	if (j->sending || j->cork || j->closing || j->out_off == j->out_len || j->fd < 0)
		return;
	j->sending = j->out_len - j->out_off;
	j->inflight++;
	io_uring_prep_send(loop_sqe(j->ob->loop, &j->send_cb), j->fd, j->out + j->out_off,
			   j->sending, MSG_NOSIGNAL);
}

static int out_append(void *arg, const uint8_t *p, size_t len)
{
	struct job *j = arg;
	if (j->out_off == j->out_len && !j->sending)
		j->out_off = j->out_len = 0;
	if (j->out_len + len > j->out_cap) {
		size_t cap = j->out_cap ? j->out_cap : 8192;
		while (cap < j->out_len + len)
			cap *= 2;
		uint8_t *o;
		if (j->sending && !j->out_retired) {
			/* The send in flight points into j->out: the kernel may
			 * read it until on_sent(), so it moves, it is not freed. */
			if (!(o = malloc(cap)))
				return -ENOMEM;
			memcpy(o, j->out, j->out_len);
			j->out_retired = j->out;
		} else if (!(o = realloc(j->out, cap))) {
			return -ENOMEM;
		}
		j->out = o;
		j->out_cap = cap;
	}
	memcpy(j->out + j->out_len, p, len);
	j->out_len += len;
	return 0;
}

static void job_send(struct job *j, const void *p, size_t len)
{
	if (j->tls) {
		if (tls_client_write(j->tls, p, len) != TLS_OK) {
			job_fail(j, "TLS write failed");
			return;
		}
	} else if (out_append(j, p, len)) {
		job_fail(j, "out of memory");
		return;
	}
	flush_out(j);
}

static void job_send_str(struct job *j, const char *s)
{
	job_send(j, s, strlen(s));
}

static void body_next(struct job *j);

static void on_sent(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct job *j = (struct job *)((char *)cb - offsetof(struct job, send_cb));
	j->inflight--;
	j->sending = 0;
	free(j->out_retired);
	j->out_retired = NULL;
	if (j->closing) {
		job_closed_maybe(j);
		return;
	}
	if (res <= 0) {
		job_fail(j, "send failed");
		return;
	}
	j->out_off += (size_t)res;
	flush_out(j);
	if (j->body_wait && !j->sending && j->out_off == j->out_len) {
		/* The last chunk is on the wire: read the next one. */
		j->body_wait = false;
		body_next(j);
	}
}

static void arm_recv(struct job *j)
{
	j->inflight++;
	io_uring_prep_recv(loop_sqe(j->ob->loop, &j->recv_cb), j->fd, j->rbuf, sizeof(j->rbuf), 0);
}

static void handle_reply(struct job *j, int code);

/* Splits the plaintext into replies (RFC 5321 4.2: "ddd-" continues,
 * "ddd " or "ddd" ends). */
static void parse_replies(struct job *j)
{
	size_t pos = 0;
	while (!j->closing && j->step != J_DONE) {
		uint8_t *nl = memchr(j->inbuf + pos, '\n', j->in_len - pos);
		if (!nl)
			break;
		size_t len = (size_t)(nl - (j->inbuf + pos));
		const char *l = (const char *)j->inbuf + pos;
		pos += len + 1;
		if (len && l[len - 1] == '\r')
			len--;
		if (len < 3 || !isdigit((unsigned char)l[0]) || !isdigit((unsigned char)l[1]) ||
		    !isdigit((unsigned char)l[2]) || (len > 3 && l[3] != ' ' && l[3] != '-')) {
			job_fail(j, "malformed reply");
			return;
		}
		if (j->reply_len + len + 2 < sizeof(j->reply)) {
			if (j->reply_len)
				j->reply[j->reply_len++] = '\n';
			memcpy(j->reply + j->reply_len, l, len);
			j->reply_len += len;
			j->reply[j->reply_len] = '\0';
		}
		if (len > 3 && l[3] == '-')
			continue;
		int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
		handle_reply(j, code);
		j->reply_len = 0;
		j->reply[0] = '\0';
		if (j->drop_input) {
			j->drop_input = false;
			pos = j->in_len;
			break;
		}
	}
	memmove(j->inbuf, j->inbuf + pos, j->in_len - pos);
	j->in_len -= pos;
	if (j->in_len == sizeof(j->inbuf))
		job_fail(j, "reply line too long");
}

static void tls_ready(struct job *j);
static void recv_process(struct job *j, size_t res);

static void on_recv(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct job *j = (struct job *)((char *)cb - offsetof(struct job, recv_cb));
	j->inflight--;
	if (j->closing) {
		job_closed_maybe(j);
		return;
	}
	if (res <= 0) {
		job_fail(j, res == 0 ? "connection closed by the remote host" : "receive failed");
		return;
	}
	arm_deadline(j);
	/* Held while the bytes are processed: a reply may close the job
	 * (QUIT's 221, a failure), and with nothing else in flight
	 * job_closed_maybe() would free it under our feet. */
	j->inflight++;
	recv_process(j, (size_t)res);
	j->inflight--;
	if (j->closing)
		job_closed_maybe(j);
	else if (j->step != J_DONE)
		arm_recv(j);
}

/* The res bytes in j->rbuf: through TLS when it is on, then split into
 * replies. j stays allocated (on_recv() holds it); it may be closing
 * afterwards. */
static void recv_process(struct job *j, size_t res)
{
	if (j->tls) {
		struct span in = span_make(j->rbuf, res);
		while (in.len || tls_client_handshake_done(j->tls)) {
			size_t used = 0, got = 0;
			bool was_done = tls_client_handshake_done(j->tls);
			enum tls_status st =
				tls_client_read(j->tls, in, &used, j->inbuf + j->in_len,
						sizeof(j->inbuf) - j->in_len, &got);
			in = span_skip(in, used);
			j->in_len += got;
			if (st == TLS_ERROR || st == TLS_CLOSED) {
				if (st == TLS_CLOSED) {
					job_fail(j, "TLS closed by the remote host");
				} else if (!was_done) {
					char why[96];
					snprintf(why, sizeof(why), "TLS handshake failed: %s",
						 tls_client_error(j->tls));
					job_fail(j, why);
				} else {
					job_fail(j, "TLS record failed");
				}
				return;
			}
			flush_out(j);
			if (!was_done && tls_client_handshake_done(j->tls))
				tls_ready(j);
			if (j->closing)
				return;
			if (got == 0 && used == 0)
				break;
		}
	} else {
		if (res > sizeof(j->inbuf) - j->in_len) {
			job_fail(j, "reply too long");
			return;
		}
		memcpy(j->inbuf + j->in_len, j->rbuf, res);
		j->in_len += res;
	}
	parse_replies(j);
}

static void on_connect(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct job *j = (struct job *)((char *)cb - offsetof(struct job, connect_cb));
	j->inflight--;
	if (j->closing) {
		job_closed_maybe(j);
		return;
	}
	if (res < 0) {
		set_last(j, false, "cannot connect to %s: %s", j->host, strerror(-res));
		job_close(j, after_fail_next_addr);
		return;
	}
	arm_deadline(j);
	if (j->smart && ob_cfg(j->ob)->ob_smart_implicit) {
		/* smart_tls = implicit (port 465): TLS first, the greeting
		 * comes over it (tls_ready()). */
		if (tls_client_new(j->host, j->smart ? j->ob->verifier : NULL, out_append, j,
				   &j->tls) ||
		    tls_client_start(j->tls) == TLS_ERROR) {
			job_fail(j, "TLS client failed to start");
			return;
		}
		j->step = J_TLS;
		flush_out(j);
		arm_recv(j);
		return;
	}
	j->step = J_GREET;
	arm_recv(j);
}

static void try_connect(struct job *j)
{
	if (j->iaddr >= j->naddr) {
		j->imx++;
		next_host(j);
		return;
	}
	struct sockaddr_storage *a = &j->addrs[j->iaddr];
	j->fd = socket(a->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (j->fd < 0) {
		set_last(j, false, "socket: %s", strerror(errno));
		j->iaddr++;
		try_connect(j);
		return;
	}
	j->step = J_CONNECT;
	j->in_len = j->reply_len = 0;
	j->out_len = j->out_off = 0;
	j->ext_starttls = j->ext_pipelining = j->ext_8bit = j->ext_size = j->ext_auth = false;
	j->ext_dsn = false;
	j->ehlo_after_tls = false;
	j->greeted = false;
	arm_deadline(j);
	j->inflight++;
	io_uring_prep_connect(loop_sqe(j->ob->loop, &j->connect_cb), j->fd, (struct sockaddr *)a,
			      a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						       : sizeof(struct sockaddr_in));
}

/* ---- the dialogue ------------------------------------------------------- */

static void send_ehlo(struct job *j)
{
	char buf[CONFIG_STR_MAX + 16];
	snprintf(buf, sizeof(buf), "EHLO %s\r\n", ob_cfg(j->ob)->hostname);
	j->step = J_EHLO;
	job_send_str(j, buf);
}

static bool tls_required(const struct job *j)
{
	const struct config *cfg = ob_cfg(j->ob);
	return j->smart && (cfg->ob_smart_user[0] || j->ob->verifier);
}

static void tls_ready(struct job *j)
{
	OBLOG(j->ob, LOG_INFO, "outbound-tls", "host=%s version=%s cipher=%s", j->host,
	      tls_client_version(j->tls), tls_client_cipher(j->tls));
	j->ehlo_after_tls = true;
	if (!j->greeted) {
		j->step = J_GREET; /* implicit TLS: the greeting is next */
		return;
	}
	send_ehlo(j);
}

static void parse_ehlo(struct job *j)
{
	char *save = NULL;
	for (char *l = strtok_r(j->reply, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (strlen(l) < 4)
			continue;
		const char *kw = l + 4;
		if (!strncasecmp(kw, "STARTTLS", 8))
			j->ext_starttls = true;
		else if (!strncasecmp(kw, "PIPELINING", 10))
			j->ext_pipelining = true;
		else if (!strncasecmp(kw, "8BITMIME", 8))
			j->ext_8bit = true;
		else if (!strncasecmp(kw, "SIZE", 4))
			j->ext_size = true;
		else if (!strncasecmp(kw, "AUTH", 4))
			j->ext_auth = true;
		else if (!strcasecmp(kw, "DSN"))
			j->ext_dsn = true;
	}
}

static void send_rcpt(struct job *j, size_t i)
{
	char buf[QUEUE_REPLY_MAX + QUEUE_XTEXT_MAX + 64];
	const struct queue_rcpt *r = &j->m->e->rcpts[j->ri[i]];
	int n = snprintf(buf, sizeof(buf), "RCPT TO:<%s>", r->addr);
	if (j->ext_dsn && r->notify) {
		/* RFC 3461 5.2: the DSN parameters go on to a next hop that
		 * takes them. */
		static const char *const names[] = { "NEVER", "SUCCESS", "FAILURE", "DELAY" };
		bool first = true;
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " NOTIFY=");
		for (unsigned b = 0; b < 4; b++)
			if (r->notify & (1u << b)) {
				n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s%s", first ? "" : ",",
					      names[b]);
				first = false;
			}
	}
	if (j->ext_dsn && r->orcpt)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " ORCPT=%s", r->orcpt);
	snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n");
	job_send_str(j, buf);
}

static void send_transaction(struct job *j)
{
	char buf[QUEUE_REPLY_MAX + QUEUE_XTEXT_MAX + 128];
	size_t len = (size_t)j->m->e->body_len;
	if (j->m->e->dkim)
		len += strlen(j->m->e->dkim);
	int n = snprintf(buf, sizeof(buf), "MAIL FROM:<%s>", j->m->e->from);
	if (j->ext_size)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " SIZE=%zu", len);
	if (j->ext_8bit)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " BODY=8BITMIME");
	if (j->ext_dsn && j->m->e->ret)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " RET=%s",
			      j->m->e->ret == QUEUE_RET_HDRS ? "HDRS" : "FULL");
	if (j->ext_dsn && j->m->e->envid)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, " ENVID=%s", j->m->e->envid);
	snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n");
	j->step = J_MAIL;
	j->expect = 0;
	j->naccepted = 0;
	j->data_acked = false;
	if (!j->ext_pipelining) {
		job_send_str(j, buf);
		return;
	}
	/* RFC 2920 3.1: MAIL, every RCPT and DATA (the last command of the
	 * group) in one send: corked so that the first command does not
	 * leave alone while the rest queue behind it. */
	j->cork = true;
	job_send_str(j, buf);
	for (size_t i = 0; i < j->n; i++)
		send_rcpt(j, i);
	job_send_str(j, "DATA\r\n");
	j->cork = false;
	flush_out(j);
}

static void send_quit(struct job *j)
{
	j->step = J_QUIT;
	job_send_str(j, "QUIT\r\n");
}

/* The message, dot-stuffed (RFC 5321 4.5.2), then the end of data. The
 * bytes come from <id>.msg one chunk at a time: the next chunk is read
 * (through the ring) once the previous one has been sent. */
static void send_body(struct job *j)
{
	j->step = J_BODY;
	if (j->m->e->dkim)
		job_send_str(j, j->m->e->dkim);
	j->body_pos = 0;
	j->body_bol = true;
	j->body_nl = true;
	j->body_wait = false;
	body_next(j);
}

static void body_submit(struct job *j)
{
	struct queue_entry *e = j->m->e;
	struct io_uring_sqe *sqe = loop_sqe(j->ob->loop, &j->body_cb);
	j->inflight++;
	if (j->body_fd < 0) {
		snprintf(j->body_name, sizeof(j->body_name), "%s.msg", e->id);
		j->body_op = BODY_OPEN;
		io_uring_prep_openat(sqe, queue_dirfd(j->ob->q), j->body_name, O_RDONLY | O_CLOEXEC, 0);
		return;
	}
	uint64_t left = e->body_len - j->body_pos;
	j->body_op = BODY_READ;
	io_uring_prep_read(sqe, j->body_fd, j->chunk,
			   (unsigned)(left < OB_BODY_CHUNK ? left : OB_BODY_CHUNK),
			   e->body_off + j->body_pos);
}

static void body_next(struct job *j)
{
	if (j->closing || j->step != J_BODY)
		return;
	if (j->body_pos < j->m->e->body_len) {
		if (!j->chunk && !(j->chunk = malloc(OB_BODY_CHUNK))) {
			job_fail(j, "out of memory");
			return;
		}
		body_submit(j);
		return;
	}
	if (!j->body_nl)
		job_send_str(j, "\r\n");
	job_send_str(j, ".\r\n");
	free(j->chunk);
	j->chunk = NULL;
	if (j->body_fd >= 0) {
		j->inflight++;
		j->body_op = BODY_CLOSE;
		io_uring_prep_close(loop_sqe(j->ob->loop, &j->body_cb), j->body_fd);
		j->body_fd = -1;
	}
}

static void on_body(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct job *j = (struct job *)((char *)cb - offsetof(struct job, body_cb));
	j->inflight--;
	if (j->body_op == BODY_OPEN && res >= 0)
		j->body_fd = res;
	if (j->body_op == BODY_CLOSE)
		return;
	if (j->closing) {
		job_closed_maybe(j);
		return;
	}
	if (res <= 0) {
		OBLOG(j->ob, LOG_ERROR, "outbound-queue-read", "id=%s error=%s", j->m->e->id,
		      res < 0 ? strerror(-res) : "short file");
		job_fail(j, "cannot read the queued message");
		return;
	}
	if (j->body_op == BODY_OPEN) {
		body_next(j);
		return;
	}
	const uint8_t *p = j->chunk;
	size_t len = (size_t)res, start = 0;
	for (size_t i = 0; i < len; i++) {
		if (j->body_bol && p[i] == '.') {
			job_send(j, p + start, i - start);
			job_send(j, ".", 1);
			start = i;
		}
		j->body_bol = p[i] == '\n';
	}
	job_send(j, p + start, len - start);
	j->body_nl = p[len - 1] == '\n';
	j->body_pos += len;
	if (j->closing)
		return;
	if (j->sending || j->out_off != j->out_len)
		j->body_wait = true; /* on_sent() reads on */
	else
		body_next(j);
}

static void first_line(const char *reply, char *out, size_t cap)
{
	size_t n = strcspn(reply, "\n");
	if (n >= cap)
		n = cap - 1;
	memcpy(out, reply, n);
	out[n] = '\0';
}

static void rcpt_reply(struct job *j, size_t i, int code)
{
	j->rcode[i] = code;
	first_line(j->reply, j->rtext[i], sizeof(j->rtext[i]));
	if (code >= 200 && code < 300) {
		j->accepted[i] = true;
		j->rcode[i] = 0; /* accepted; the answer comes after DATA */
		j->naccepted++;
	} else {
		j->answered = true;
	}
}

static void handle_reply(struct job *j, int code)
{
	char line[QUEUE_REPLY_MAX];
	first_line(j->reply, line, sizeof(line));
	arm_deadline(j);
	switch (j->step) {
	case J_GREET:
		if (code != 220) {
			set_last(j, false, "%s (greeting of %s)", line, j->host);
			send_quit(j);
			job_close(j, after_fail_next_addr);
			return;
		}
		j->greeted = true;
		send_ehlo(j);
		return;
	case J_EHLO:
		if (code != 250) {
			set_last(j, false, "%s (EHLO at %s)", line, j->host);
			send_quit(j);
			job_close(j, after_fail_next_addr);
			return;
		}
		parse_ehlo(j);
		if (j->ext_starttls && !j->tls) {
			j->step = J_STARTTLS;
			job_send_str(j, "STARTTLS\r\n");
			return;
		}
		if (!j->tls && tls_required(j)) {
			set_last(j, false, "%s offers no STARTTLS; smart host mail needs TLS", j->host);
			send_quit(j);
			job_close(j, after_fail_next_addr);
			return;
		}
		if (j->smart && ob_cfg(j->ob)->ob_smart_user[0]) {
			const struct config *cfg = ob_cfg(j->ob);
			char plain[2 * CONFIG_STR_MAX + 2], b64[4 * CONFIG_STR_MAX], cmd[4 * CONFIG_STR_MAX + 32];
			size_t ul = strlen(cfg->ob_smart_user), pl = strlen(cfg->ob_smart_password);
			plain[0] = '\0';
			memcpy(plain + 1, cfg->ob_smart_user, ul);
			plain[1 + ul] = '\0';
			memcpy(plain + 2 + ul, cfg->ob_smart_password, pl);
			size_t o = 0;
			/* fits: b64 holds SASL_BASE64_ENCODED_LEN(2 * CONFIG_STR_MAX) + 1 */
			sasl_base64_encode(span_make(plain, 2 + ul + pl), (uint8_t *)b64, sizeof(b64) - 1, &o);
			b64[o] = '\0';
			explicit_bzero(plain, sizeof(plain));
			snprintf(cmd, sizeof(cmd), "AUTH PLAIN %s\r\n", b64);
			explicit_bzero(b64, sizeof(b64));
			j->step = J_AUTH;
			job_send_str(j, cmd);
			explicit_bzero(cmd, sizeof(cmd));
			return;
		}
		send_transaction(j);
		return;
	case J_STARTTLS:
		if (code != 220) {
			if (tls_required(j)) {
				set_last(j, false, "%s (STARTTLS at %s; smart host mail needs TLS)",
					 line, j->host);
				send_quit(j);
				job_close(j, after_fail_next_addr);
				return;
			}
			/* Opportunistic: go on in plaintext. */
			send_transaction(j);
			return;
		}
		j->drop_input = true; /* nothing may ride behind the 220 */
		if (tls_client_new(j->host, j->smart ? j->ob->verifier : NULL, out_append, j,
				   &j->tls) ||
		    tls_client_start(j->tls) == TLS_ERROR) {
			job_fail(j, "TLS client failed to start");
			return;
		}
		j->step = J_TLS;
		flush_out(j);
		return;
	case J_AUTH:
		if (code != 235) {
			set_last(j, code >= 500, "%s (AUTH at %s)", line, j->host);
			answer_all(j, code >= 500 ? 550 : 451, j->last);
			send_quit(j);
			return;
		}
		send_transaction(j);
		return;
	case J_MAIL:
		if (code < 200 || code >= 300) {
			answer_all(j, code, line);
			send_quit(j);
			return;
		}
		j->step = J_RCPT;
		j->expect = 0;
		if (!j->ext_pipelining)
			send_rcpt(j, 0);
		return;
	case J_RCPT:
		rcpt_reply(j, j->expect, code);
		j->expect++;
		if (j->expect < j->n) {
			if (!j->ext_pipelining)
				send_rcpt(j, j->expect);
			return;
		}
		j->step = J_DATA;
		if (!j->ext_pipelining) {
			if (j->naccepted == 0) {
				send_quit(j);
				return;
			}
			job_send_str(j, "DATA\r\n");
		}
		return;
	case J_DATA:
		if (code != 354) {
			if (j->naccepted) {
				for (size_t i = 0; i < j->n; i++)
					if (j->accepted[i]) {
						j->accepted[i] = false;
						j->rcode[i] = code;
						snprintf(j->rtext[i], sizeof(j->rtext[i]), "%s", line);
					}
				j->answered = true;
			}
			send_quit(j);
			return;
		}
		if (j->naccepted == 0) {
			/* Pipelined DATA went through with no recipient: end the
			 * data at once, empty (RFC 2920 3.1). */
			j->step = J_BODY;
			job_send_str(j, ".\r\n");
			return;
		}
		send_body(j);
		return;
	case J_BODY:
		j->data_acked = true;
		for (size_t i = 0; i < j->n; i++)
			if (j->accepted[i]) {
				j->accepted[i] = code >= 200 && code < 300;
				j->rcode[i] = code;
				snprintf(j->rtext[i], sizeof(j->rtext[i]), "%s", line);
			}
		j->answered = true;
		if (job_next_message(j) || job_park(j))
			return;
		send_quit(j);
		return;
	case J_QUIT:
		job_close(j, job_end);
		return;
	default:
		return;
	}
}

/* ---- resolution --------------------------------------------------------- */

static void addrs_done(void *arg, enum dns_status st, const struct sockaddr_storage *a, size_t n)
{
	struct job *j = arg;
	if (st != DNS_OK || n == 0) {
		set_last(j, false, "cannot resolve %s (%s)", j->host,
			 st == DNS_NXDOMAIN ? "no such host" : st == DNS_NODATA ? "no address"
											     : "DNS failure");
		OBLOG(j->ob, LOG_INFO, "outbound-host-failed", "domain=%s host=%s addr= reason=\"%s\"",
		      j->domain, j->host, j->last);
		j->imx++;
		next_host(j);
		return;
	}
	if (n > sizeof(j->addrs) / sizeof(j->addrs[0]))
		n = sizeof(j->addrs) / sizeof(j->addrs[0]);
	memcpy(j->addrs, a, n * sizeof(*a));
	j->naddr = n;
	j->iaddr = 0;
	try_connect(j);
}

static void next_host(struct job *j)
{
	if (j->imx >= j->nmx) {
		if (!j->last[0])
			set_last(j, false, "no usable mail exchanger for %s", j->domain);
		job_end(j);
		return;
	}
	const struct config *cfg = ob_cfg(j->ob);
	snprintf(j->host, sizeof(j->host), "%s", j->mx[j->imx].host);
	uint16_t port = cfg->ob_mx_port;
	if (j->smart) {
		port = (uint16_t)j->mx[j->imx].pref;
	}
	j->step = J_RESOLVE;
	dns_addr(j->ob->dns, j->host, port, addrs_done, j);
}

static void mx_done(void *arg, enum dns_status st, const struct dns_mx *mx, size_t n)
{
	struct job *j = arg;
	switch (st) {
	case DNS_OK: {
		/* RFC 7505: a single "." MX means the domain takes no mail. */
		if (n == 1 && !mx[0].host[0]) {
			set_last(j, true, "556 5.1.10 %s does not accept mail (null MX)", j->domain);
			answer_all(j, 556, j->last);
			job_end(j);
			return;
		}
		j->nmx = 0;
		for (size_t i = 0; i < n; i++)
			if (mx[i].host[0])
				j->mx[j->nmx++] = mx[i];
		break;
	}
	case DNS_NODATA:
		/* RFC 5321 5.1: no MX, the domain itself is the implicit MX. */
		snprintf(j->mx[0].host, sizeof(j->mx[0].host), "%s", j->domain);
		j->mx[0].pref = 0;
		j->nmx = 1;
		break;
	case DNS_NXDOMAIN:
		set_last(j, true, "550 5.1.2 domain %s does not exist", j->domain);
		answer_all(j, 550, j->last);
		job_end(j);
		return;
	default:
		set_last(j, false, "451 4.4.3 DNS lookup of %s failed temporarily", j->domain);
		job_end(j);
		return;
	}
	j->imx = 0;
	next_host(j);
}

/* ---- bounces (RFC 3464) ------------------------------------------------ */

/* ---- reading a queued message back --------------------------------------- */

/* The first `want` bytes of a queued message, read through the ring (open,
 * reads, close); then done(r) with r->rc 0 or a negative errno. */
struct msg_read {
	struct loop *loop;
	struct loop_cb cb;
	enum { MR_OPEN, MR_READ, MR_CLOSE } op;
	int fd;
	int rc;
	char name[QUEUE_ID_MAX + 8]; /* read by the kernel at submission */
	uint64_t off;
	uint8_t *buf;
	size_t len, want;
	void (*done)(struct msg_read *r);
};

static void msg_read_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	struct msg_read *r = (struct msg_read *)((char *)cb - offsetof(struct msg_read, cb));
	switch (r->op) {
	case MR_OPEN:
		if (res < 0) {
			r->rc = res;
			r->done(r);
			return;
		}
		r->fd = res;
		break;
	case MR_READ:
		if (res < 0)
			r->rc = res;
		else if (res == 0 && r->len < r->want)
			r->rc = -EIO; /* shorter than its first line says */
		else
			r->len += (size_t)res;
		break;
	case MR_CLOSE:
		r->done(r);
		return;
	}
	if (!r->rc && r->len < r->want) {
		r->op = MR_READ;
		io_uring_prep_read(loop_sqe(loop, cb), r->fd, r->buf + r->len,
				   (unsigned)(r->want - r->len), r->off + r->len);
		return;
	}
	r->op = MR_CLOSE;
	io_uring_prep_close(loop_sqe(loop, cb), r->fd);
	r->fd = -1;
}

static int msg_read_start(struct msg_read *r, struct outbound *ob, const struct queue_entry *e,
			  size_t want, void (*done)(struct msg_read *r))
{
	if (want > e->body_len)
		want = (size_t)e->body_len;
	if (!(r->buf = malloc(want ? want : 1)))
		return -ENOMEM;
	r->loop = ob->loop;
	r->want = want;
	r->len = 0;
	r->off = e->body_off;
	r->fd = -1;
	r->rc = 0;
	r->done = done;
	r->cb.fn = msg_read_step;
	r->op = MR_OPEN;
	snprintf(r->name, sizeof(r->name), "%s.msg", e->id);
	io_uring_prep_openat(loop_sqe(ob->loop, &r->cb), queue_dirfd(ob->q), r->name,
			     O_RDONLY | O_CLOEXEC, 0);
	return 0;
}

/* ---- local delivery of queued messages (bounces) ------------------------- */

/* A queued message for a local recipient (a DSN to one of our users) is
 * appended to the recipient's INBOX by the runner. */
struct local_dlv {
	struct outbound *ob;
	struct ob_msg *m;
	size_t ri;
	struct msg_read rd;
	size_t put;             /* bytes given to the append */
	char rp[512];           /* the Return-Path: field written first */
	size_t rp_len, rp_put;
	char target[QUEUE_REPLY_MAX];
	struct store_user *user;
	struct store_folder *folder;
	struct store_append *append;
};

static void msg_settled(struct outbound *ob, struct ob_msg *m);

static void first_target(void *arg, const char *target)
{
	char *out = arg;
	if (!out[0])
		snprintf(out, QUEUE_REPLY_MAX, "%s", target);
}

/* A recipient still failing temporarily when the message is older than
 * `expire`: its last reply is kept behind this prefix, which the bounce
 * reports as 4.4.7 (RFC 3463: delivery time expired). */
#define OB_EXPIRED "expired after "

static void rcpt_expired(struct queue_rcpt *r)
{
	char tmp[QUEUE_REPLY_MAX];
	snprintf(tmp, sizeof(tmp), "%s", r->last);
	snprintf(r->last, sizeof(r->last), OB_EXPIRED "%u attempts; last: %.400s", r->attempts,
		 tmp);
}

/* Retry of a recipient after a temporary failure: exponential backoff. */
static void rcpt_defer(struct outbound *ob, struct ob_msg *m, struct queue_rcpt *r, int64_t now)
{
	const struct config *cfg = ob_cfg(ob);
	uint64_t wait = cfg->ob_retry_min_ms;
	for (uint32_t k = 1; k < r->attempts && wait < cfg->ob_retry_max_ms; k++)
		wait *= 2;
	if (wait > cfg->ob_retry_max_ms)
		wait = cfg->ob_retry_max_ms;
	r->next_ms = now + (int64_t)wait;
	if ((r->notify & QUEUE_NOTIFY_DELAY) && !r->delay_sent &&
	    now - m->e->created_ms >= (int64_t)cfg->ob_delay_ms)
		m->delay_due[r - m->e->rcpts] = true;
	OBLOG(ob, LOG_INFO, "outbound-deferred", "id=%s to=%s attempts=%u retry_in=%llums reply=\"%s\"",
	      m->e->id, r->addr, r->attempts, (unsigned long long)wait, r->last);
}

/* The outcome of a local delivery of recipient l->ri (res 0 or -errno). */
static void local_record(struct local_dlv *l, int res)
{
	struct outbound *ob = l->ob;
	struct ob_msg *m = l->m;
	struct queue_entry *e = m->e;
	struct queue_rcpt *r = &e->rcpts[l->ri];
	int64_t now = wall_ms();
	r->attempts++;
	if (res == 0) {
		r->state = QUEUE_RCPT_SENT;
		snprintf(r->last, sizeof(r->last), "250 2.0.0 delivered to %.400s's INBOX", l->target);
		OBLOG(ob, LOG_INFO, "outbound-sent", "id=%s to=%s host=local", e->id, r->addr);
	} else if (res == -ENOENT || res == -EFBIG || res == -EDQUOT) {
		r->state = QUEUE_RCPT_FAILED;
		snprintf(r->last, sizeof(r->last), "%s",
			 res == -ENOENT ? "550 5.1.1 no such local user"
			 : res == -EFBIG ? "552 5.3.4 message too big for local delivery"
					 : "552 5.2.2 mailbox full");
		OBLOG(ob, LOG_INFO, "outbound-failed", "id=%s to=%s reply=\"%s\"", e->id, r->addr,
		      r->last);
	} else {
		snprintf(r->last, sizeof(r->last), "451 4.3.0 local delivery failed: %s",
			 strerror(-res));
		if (now - e->created_ms >= (int64_t)ob_cfg(ob)->ob_expire_ms) {
			r->state = QUEUE_RCPT_FAILED;
			rcpt_expired(r);
			OBLOG(ob, LOG_INFO, "outbound-failed", "id=%s to=%s reply=\"%s\"", e->id,
			      r->addr, r->last);
		} else {
			rcpt_defer(ob, m, r, now);
		}
	}
}

static void local_end(struct local_dlv *l, int res)
{
	struct outbound *ob = l->ob;
	struct ob_msg *m = l->m;
	if (l->append)
		store_append_abort(&l->append);
	if (l->folder)
		store_folder_close(&l->folder);
	if (l->user)
		store_user_close(&l->user);
	m->inflight[l->ri] = false;
	if (!m->removed) /* `queue delete` meanwhile: no outcome to record */
		local_record(l, res);
	free(l->rd.buf);
	free(l);
	if (--m->jobs == 0)
		msg_settled(ob, m);
}

static void local_committed(void *arg, int res, uint32_t uid)
{
	(void)uid;
	struct local_dlv *l = arg;
	l->append = NULL; /* freed by the store */
	local_end(l, res < 0 ? res : 0);
}

/* Gives the append what it takes; the rest after its ready callback. */
static void local_put(void *arg)
{
	struct local_dlv *l = arg;
	if (!l->append)
		return;
	ssize_t w = 0;
	if (l->rp_put < l->rp_len) {
		w = store_append_write(l->append, span_make(l->rp + l->rp_put, l->rp_len - l->rp_put));
		if (w >= 0)
			l->rp_put += (size_t)w;
		if (w >= 0 && l->rp_put < l->rp_len)
			return;
	}
	if (w >= 0)
		w = store_append_write(l->append, span_make(l->rd.buf + l->put, l->rd.len - l->put));
	if (w < 0) {
		local_end(l, (int)w);
		return;
	}
	l->put += (size_t)w;
	if (l->put < l->rd.len)
		return; /* local_put() again when the store can take more */
	struct mime_scanner *sc = malloc(sizeof(*sc));
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blob_len = 0;
	if (!sc || !blob) {
		free(sc);
		free(blob);
		local_end(l, -ENOMEM);
		return;
	}
	mime_scan_init(sc);
	mime_scan_feed(sc, span_make(l->rp, l->rp_len));
	mime_scan_feed(sc, span_make(l->rd.buf, l->rd.len));
	mime_scan_finish(sc, blob, MIME_BLOB_MAX, &blob_len);
	struct store_append *a = l->append;
	store_append_commit(a, span_make(blob, blob_len), local_committed, l);
	free(blob);
	free(sc);
}

static void local_folder(void *arg, int res, struct store_folder *folder)
{
	struct local_dlv *l = arg;
	if (res < 0) {
		local_end(l, res);
		return;
	}
	l->folder = folder;
	/* This is the final delivery: the envelope sender goes first (RFC 5321
	 * 4.4), as the SMTP session does for its local copies. */
	int n = snprintf(l->rp, sizeof(l->rp), "Return-Path: <%s>\r\n", l->m->e->from);
	if (n < 0 || (size_t)n >= sizeof(l->rp)) {
		local_end(l, -ENAMETOOLONG);
		return;
	}
	l->rp_len = (size_t)n;
	int rc = store_append_begin(l->ob->loop, &l->folder, 1, time(NULL), 0, NULL, 0, local_put, l,
				    &l->append);
	if (rc) {
		local_end(l, rc);
		return;
	}
	local_put(l);
}

static void local_user(void *arg, int res, struct store_user *user)
{
	struct local_dlv *l = arg;
	if (res < 0) {
		local_end(l, res);
		return;
	}
	l->user = user;
	store_folder_open(user, l->ob->loop, "INBOX", local_folder, l);
}

static void local_read(struct msg_read *rd)
{
	struct local_dlv *l = (struct local_dlv *)((char *)rd - offsetof(struct local_dlv, rd));
	struct outbound *ob = l->ob;
	if (rd->rc) {
		local_end(l, rd->rc == -ENOENT ? -EIO : rd->rc);
		return;
	}
	const char *addr = l->m->e->rcpts[l->ri].addr;
	char lower[QUEUE_REPLY_MAX];
	size_t k = 0;
	for (const char *p = addr; *p && k < sizeof(lower) - 1; p++)
		lower[k++] = (char)tolower((unsigned char)*p);
	lower[k] = '\0';
	if (!ob->users || users_resolve(ob->users, span_cstr(lower), first_target, l->target) < 0 ||
	    !l->target[0]) {
		snprintf(l->target, sizeof(l->target), "%s", lower);
		local_end(l, -ENOENT);
		return;
	}
	store_user_open(ob->store, ob->loop, l->target, local_user, l);
}

static bool is_local(struct outbound *ob, const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at && ob->users && users_is_local_domain(ob->users, span_cstr(at + 1));
}

/* Delivers recipient i of m (a local address) to its INBOX. */
static void local_start(struct outbound *ob, struct ob_msg *m, size_t i)
{
	struct local_dlv *l = calloc(1, sizeof(*l));
	if (!l)
		return; /* retried at the next tick */
	l->ob = ob;
	l->m = m;
	l->ri = i;
	m->inflight[i] = true;
	m->jobs++;
	if (m->e->body_len > OB_LOCAL_MAX) {
		local_end(l, -EFBIG);
		return;
	}
	if (msg_read_start(&l->rd, ob, m->e, (size_t)m->e->body_len, local_read))
		local_end(l, -ENOMEM);
}

/* ---- bounces (RFC 3464) ------------------------------------------------ */

/* A DSN being made for one message: the original's head is read from
 * <id>.msg through the ring, the DSN built and queued with the null sender
 * for the envelope sender (the runner delivers it, to the INBOX when the
 * sender is local). */
struct dsn {
	struct outbound *ob;
	struct ob_msg *m;
	struct msg_read rd;     /* the first bytes of the original */
	bool *report;           /* per recipient: in this DSN */
	bool delay;             /* a delay DSN (Action: delayed), not a bounce */
	bool success;           /* a success DSN (Action: relayed), not a bounce */
	size_t first;           /* the first recipient reported */
	char *text;
	size_t len;
	struct queue_entry *held; /* the queued bounce, until the state is durable */
};

/* The DSN is durable (res 0) or failed: only then are its recipients
 * marked bounced (docs/queue.md: crash semantics). */
static void dsn_end(struct dsn *d, int res)
{
	struct outbound *ob = d->ob;
	struct ob_msg *m = d->m;
	struct queue_entry *e = m->e;
	if (res < 0) {
		OBLOG(ob, LOG_WARN, "outbound-dsn-failed", "id=%s to=%s error=%s", e->id, e->from,
		      strerror(-res));
		m->dsn_retry_ms = wall_ms() + 60000;
	} else if (d->text) {
		OBLOG(ob, LOG_INFO, "outbound-dsn", "id=%s to=%s kind=%s", e->id, e->from,
		      d->success ? "success" : d->delay ? "delay" : "failure");
	}
	for (size_t i = 0; i < e->nrcpts && res >= 0; i++) {
		if (!d->report[i])
			continue;
		if (d->delay)
			e->rcpts[i].delay_sent = true;
		else if (!d->success && e->rcpts[i].state == QUEUE_RCPT_FAILED)
			e->rcpts[i].state = QUEUE_RCPT_BOUNCED;
	}
	/* Delay and success notices are best effort: tried once, even when
	 * that failed (a retry could spin on a lasting error). */
	for (size_t i = 0; i < e->nrcpts && (d->delay || d->success); i++) {
		if (d->delay)
			m->delay_due[i] = false;
		else
			m->success_due[i] = false;
	}
	free(d->text);
	free(d->rd.buf);
	free(d->report);
	free(d);
	m->dsn_busy = false;
	m->jobs--;
	if (m->jobs == 0)
		msg_settled(ob, m);
}

static void dsn_queued(void *arg, int res, const char *id)
{
	(void)id;
	dsn_end(arg, res);
}

/* The bounced states are durable (or the message removed): the bounce
 * may go now. Were it handed over sooner, it could be delivered and
 * removed before a crash that forgets the bounced states, and the restart
 * would bounce again. */
static void dsn_released(void *arg, int res)
{
	struct dsn *d = arg;
	if (res < 0)
		OBLOG(d->ob, LOG_WARN, "outbound-state-failed", "id=%s error=%s", d->m->e->id,
		      strerror(-res));
	/* Even then: a restart finds the bounce beside the failed states and
	 * does not make another (outbound_load). */
	msg_add(d->ob, d->held);
	d->held = NULL;
	dsn_end(d, 0);
}

static void dsn_held(void *arg, int res, struct queue_entry *held)
{
	struct dsn *d = arg;
	struct ob_msg *m = d->m;
	struct queue_entry *e = m->e;
	if (res < 0) {
		dsn_end(d, res);
		return;
	}
	d->held = held;
	bool final = true;
	for (size_t i = 0; i < e->nrcpts; i++) {
		if (d->report[i] && e->rcpts[i].state == QUEUE_RCPT_FAILED)
			e->rcpts[i].state = QUEUE_RCPT_BOUNCED;
		if (e->rcpts[i].state == QUEUE_RCPT_PENDING || e->rcpts[i].state == QUEUE_RCPT_FAILED)
			final = false;
	}
	int rc = final ? queue_remove(d->ob->q, d->ob->loop, e->id, dsn_released, d)
		       : queue_state_write(d->ob->q, d->ob->loop, e, dsn_released, d);
	if (rc)
		dsn_released(d, rc);
}

static void status_of(const char *text, int code, char cls, char *out, size_t cap)
{
	/* An enhanced status code after the reply code, else one made up. */
	const char *p = text;
	while (*p && *p != ' ')
		p++;
	while (*p == ' ')
		p++;
	if ((p[0] == '4' || p[0] == '5') && p[1] == '.') {
		size_t n = strspn(p, "0123456789.");
		if (n >= 5 && n < cap) {
			memcpy(out, p, n);
			out[n] = '\0';
			out[0] = cls;
			return;
		}
	}
	snprintf(out, cap, "%c.%s", cls, code == 556 ? "1.10" : "0.0");
}

/* Builds the DSN (RFC 3464 multipart/report) from the original's first
 * bytes in d->rd. */
static int dsn_build(struct dsn *d)
{
	struct outbound *ob = d->ob;
	struct queue_entry *e = d->m->e;
	const struct config *cfg = ob_cfg(ob);
	size_t hlen = dsn_header_len(d->rd.buf, d->rd.len);
	if (hlen > OB_DSN_HDR_MAX)
		hlen = OB_DSN_HDR_MAX;
	/* RET=FULL: the whole message when it is small enough (RFC 3461 4.3
	 * lets a large one be cut to its header); never in a delay or success
	 * notice. */
	bool full = !d->delay && !d->success && e->ret == QUEUE_RET_FULL &&
		    e->body_len <= OB_DSN_FULL_MAX && d->rd.len == e->body_len;
	struct dsn_rcpt *rr = calloc(e->nrcpts, sizeof(*rr));
	char(*status)[32] = calloc(e->nrcpts, sizeof(*status));
	if (!rr || !status) {
		free(rr);
		free(status);
		return -ENOMEM;
	}
	char until[64];
	time_t ut = (time_t)((e->created_ms + (int64_t)cfg->ob_expire_ms) / 1000);
	struct tm tm;
	localtime_r(&ut, &tm);
	strftime(until, sizeof(until), "%a, %d %b %Y %H:%M:%S %z", &tm);
	size_t nrep = 0, first = e->nrcpts;
	for (size_t i = 0; i < e->nrcpts; i++) {
		if (!d->report[i])
			continue;
		if (first == e->nrcpts)
			first = i; /* each recipient is in one DSN of a kind: a unique id */
		const struct queue_rcpt *r = &e->rcpts[i];
		struct dsn_rcpt *x = &rr[nrep];
		*x = (struct dsn_rcpt){ .addr = r->addr, .orcpt = r->orcpt, .diag = r->last,
					.note = r->last };
		if (d->success) {
			x->action = "relayed";
			x->status = "2.0.0";
		} else if (!d->delay && !strncmp(r->last, OB_EXPIRED, strlen(OB_EXPIRED))) {
			/* Never refused, only too long in the queue: a persistent
			 * transient failure (RFC 3463 3.5, X.4.7). */
			x->action = "failed";
			x->status = "4.4.7";
		} else {
			status_of(r->last, atoi(r->last), d->delay ? '4' : '5', status[nrep],
				  sizeof(status[nrep]));
			x->action = d->delay ? "delayed" : "failed";
			x->status = status[nrep];
			x->retry_until = d->delay ? until : NULL;
		}
		nrep++;
	}
	struct dsn_msg msg = {
		.hostname = cfg->hostname,
		.to = e->from,
		.envid = e->envid,
		.id = e->id,
		.kind = d->success ? "relayed" : d->delay ? "delay" : "dsn",
		.first = first,
		.subject = d->success ? "Successful Mail Delivery Report"
			   : d->delay ? "Delayed Mail (still being retried)"
				      : "Undelivered Mail Returned to Sender",
		.intro = d->success ? "Your message was relayed to the recipients below. The next\r\n"
				      "system does not report delivery status: this is the last\r\n"
				      "notice about them."
			 : d->delay ? "Your message has not been delivered yet to one or more recipients;\r\n"
				      "delivery is still being attempted. No action is needed."
				    : "Your message could not be delivered to one or more recipients.",
		.arrival_ms = e->created_ms,
		.orig = d->rd.buf,
		.orig_len = full ? d->rd.len : hlen,
		.full = full,
	};
	d->text = dsn_format(&msg, rr, nrep, &d->len);
	free(rr);
	free(status);
	return d->text ? 0 : -ENOMEM;
}

/* The original's first bytes are in: build the DSN and queue it. A bounce
 * gets an id made of the original's and its first recipient's index, so a
 * restart that makes it again writes the same file; it is held back from
 * the runner until the bounced states are durable (dsn_held()). */
static void dsn_read(struct msg_read *rd)
{
	struct dsn *d = (struct dsn *)((char *)rd - offsetof(struct dsn, rd));
	struct outbound *ob = d->ob;
	struct queue_entry *e = d->m->e;
	if (rd->rc)
		rd->len = 0; /* the report goes out without the original */
	int rc = dsn_build(d);
	if (rc) {
		dsn_end(d, rc);
		return;
	}
	struct queue_rcpt_in rin = { .addr = e->from };
	struct queue_env env = { .from = "", .rcpts = &rin, .nrcpts = 1 };
	struct services *sv = services_of(ob->loop);
	char *sig = dsn_sign(sv ? atomic_load_explicit(&sv->dkim, memory_order_acquire) : NULL,
			     ob_cfg(ob)->hostname, d->text, d->len);
	if (d->delay || d->success) {
		rc = queue_submit(ob->q, ob->loop, &env, d->text, d->len, sig, dsn_queued, d);
	} else {
		char id[QUEUE_ID_MAX];
		snprintf(id, sizeof(id), "%.*sd%zx", QUEUE_ID_MAX - 20, e->id, d->first);
		env.id = id;
		rc = queue_submit_held(ob->q, ob->loop, &env, d->text, d->len, sig, dsn_held, d);
	}
	free(sig);
	if (rc)
		dsn_end(d, rc);
}

enum dsn_kind { DSN_FAILURE, DSN_DELAY, DSN_SUCCESS };

/* DSN_FAILURE reports every FAILED recipient that asked for it (RFC 3461
 * NOTIFY) in one DSN; recipients with NOTIFY=NEVER, or of a null sender,
 * are marked bounced without one. The failed states are already durable.
 * DSN_DELAY and DSN_SUCCESS report the recipients whose notice is due. */
static void send_dsn(struct outbound *ob, struct ob_msg *m, enum dsn_kind kind)
{
	struct queue_entry *e = m->e;
	bool *report = calloc(e->nrcpts, sizeof(bool));
	struct dsn *d = calloc(1, sizeof(*d));
	if (!report || !d) {
		free(report);
		free(d);
		m->dsn_retry_ms = wall_ms() + 60000;
		m->dsn_busy = false;
		m->jobs--;
		return;
	}
	bool delay = kind == DSN_DELAY;
	size_t nrep = 0;
	for (size_t i = 0; i < e->nrcpts && kind != DSN_FAILURE; i++) {
		if (!e->from[0])
			break;
		if (delay ? m->delay_due[i] && e->rcpts[i].state == QUEUE_RCPT_PENDING
			  : m->success_due[i] && e->rcpts[i].state == QUEUE_RCPT_SENT) {
			report[i] = true;
			nrep++;
		}
	}
	for (size_t i = 0; i < e->nrcpts && kind == DSN_FAILURE; i++) {
		struct queue_rcpt *r = &e->rcpts[i];
		if (r->state != QUEUE_RCPT_FAILED)
			continue;
		bool want = e->from[0] && !(r->notify & QUEUE_NOTIFY_NEVER) &&
			    (!r->notify || (r->notify & QUEUE_NOTIFY_FAILURE));
		if (!want) {
			/* Never a bounce for a bounce; nor against NOTIFY. */
			r->state = QUEUE_RCPT_BOUNCED;
			OBLOG(ob, LOG_INFO, "outbound-dsn-skipped", "id=%s to=%s reason=%s", e->id,
			      r->addr, e->from[0] ? "notify" : "null-sender");
			continue;
		}
		report[i] = true;
		nrep++;
	}
	d->ob = ob;
	d->m = m;
	d->report = report;
	d->delay = delay;
	d->success = kind == DSN_SUCCESS;
	if (!nrep) {
		dsn_end(d, 0);
		return;
	}
	size_t want = e->ret == QUEUE_RET_FULL && kind == DSN_FAILURE ? OB_DSN_FULL_MAX
									: OB_DSN_HDR_MAX;
	if (msg_read_start(&d->rd, ob, e, want, dsn_read))
		dsn_end(d, -ENOMEM);
}

/* The failed states are durable: now the DSN. */
static void dsn_state_written(void *arg, int res)
{
	struct ob_msg *m = arg;
	struct outbound *ob = m->ob;
	if (res < 0) {
		OBLOG(ob, LOG_WARN, "outbound-state-failed", "id=%s error=%s", m->e->id,
		      strerror(-res));
		m->dsn_retry_ms = wall_ms() + 60000;
		m->dsn_busy = false;
		if (--m->jobs == 0)
			msg_settled(ob, m);
		return;
	}
	send_dsn(ob, m, DSN_FAILURE);
}

/* ---- jobs: start and end ------------------------------------------------ */

static void job_free(struct job *j)
{
	struct job **pp = &j->ob->jobs;
	while (*pp && *pp != j)
		pp = &(*pp)->next;
	if (*pp)
		*pp = j->next;
	free(j->out);
	free(j->out_retired);
	free(j->chunk);
	free(j);
}

static void msg_settled(struct outbound *ob, struct ob_msg *m);

/* Records the outcome of the transaction for each of its recipients, and
 * lets go of its message. */
static void job_settle(struct job *j)
{
	struct outbound *ob = j->ob;
	struct ob_msg *m = j->m;
	struct queue_entry *e = m->e;
	const struct config *cfg = ob_cfg(ob);
	int64_t now = wall_ms();
	for (size_t i = 0; i < j->n; i++) {
		struct queue_rcpt *r = &e->rcpts[j->ri[i]];
		m->inflight[j->ri[i]] = false;
		if (m->removed)
			continue; /* `queue delete` while it was on the wire: no outcome */
		r->attempts++;
		if (j->accepted[i] && j->data_acked) {
			r->state = QUEUE_RCPT_SENT;
			snprintf(r->last, sizeof(r->last), "%s", j->rtext[i]);
			OBLOG(ob, LOG_INFO, "outbound-sent", "id=%s to=%s host=%s reply=\"%s\"", e->id,
			      r->addr, j->host, r->last);
			/* RFC 3461 5.2.2: relayed to a host that does not take
			 * the NOTIFY on, the success notice is ours to send. */
			if ((r->notify & QUEUE_NOTIFY_SUCCESS) && !j->ext_dsn && e->from[0])
				m->success_due[j->ri[i]] = true;
			continue;
		}
		bool perm;
		if (j->rcode[i]) {
			perm = j->rcode[i] >= 500;
			snprintf(r->last, sizeof(r->last), "%s", j->rtext[i]);
		} else {
			perm = j->last_perm;
			snprintf(r->last, sizeof(r->last), "%s", j->last[0] ? j->last : "no answer");
		}
		if (!perm && now - e->created_ms >= (int64_t)cfg->ob_expire_ms) {
			perm = true;
			rcpt_expired(r);
		}
		if (perm) {
			r->state = QUEUE_RCPT_FAILED;
			OBLOG(ob, LOG_INFO, "outbound-failed", "id=%s to=%s reply=\"%s\"", e->id,
			      r->addr, r->last);
		} else {
			rcpt_defer(ob, m, r, now);
		}
	}
	j->m = NULL;
	j->n = 0;
	m->jobs--;
	if (m->jobs == 0)
		msg_settled(ob, m);
}

static void job_end(struct job *j)
{
	struct outbound *ob = j->ob;
	j->step = J_DONE;
	if (j->m)
		job_settle(j);
	struct ob_dest *d = dest_get(ob, j->domain);
	if (d && d->active)
		d->active--;
	job_free(j);
}

/* Takes m's due recipients of domain into j (up to OB_JOB_RCPTS_MAX). */
static void job_take(struct job *j, struct ob_msg *m, const char *domain, int64_t now)
{
	struct queue_entry *e = m->e;
	j->m = m;
	j->n = 0;
	for (size_t i = 0; i < e->nrcpts && j->n < OB_JOB_RCPTS_MAX; i++) {
		struct queue_rcpt *r = &e->rcpts[i];
		const char *at = strrchr(r->addr, '@');
		if (r->state != QUEUE_RCPT_PENDING || m->inflight[i] || r->next_ms > now || !at ||
		    strcasecmp(at + 1, domain))
			continue;
		m->inflight[i] = true;
		j->ri[j->n++] = i;
	}
}

/* The next transaction on an open connection: j->m and its recipients
 * are set (job_take()), the message counts j. */
static void job_again(struct job *j)
{
	memset(j->rcode, 0, sizeof(j->rcode));
	memset(j->accepted, 0, sizeof(j->accepted));
	j->answered = false;
	j->last[0] = '\0';
	j->last_perm = false;
	j->ntrans++;
	arm_deadline(j);
	OBLOG(j->ob, LOG_INFO, "outbound-attempt", "id=%s domain=%s rcpts=%zu reuse=%u",
	      j->m->e->id, j->domain, j->n, j->ntrans);
	send_transaction(j);
}

/* Connection reuse: after a completed transaction, the next message with
 * recipients due at the same destination goes over the same connection
 * (RFC 5321 4.1.4: a new MAIL needs no RSET after a completed one), up to
 * max_per_connection transactions. Returns false when there is none. */
static bool job_next_message(struct job *j)
{
	struct outbound *ob = j->ob;
	if (j->ntrans + 1 >= ob_cfg(ob)->ob_max_per_connection)
		return false;
	int64_t now = wall_ms();
	struct ob_msg *next = NULL;
	for (struct ob_msg *m = ob->msgs; m && !next; m = m->next) {
		if (m->removed)
			continue;
		for (size_t i = 0; i < m->e->nrcpts; i++) {
			const struct queue_rcpt *r = &m->e->rcpts[i];
			const char *at = strrchr(r->addr, '@');
			if (r->state == QUEUE_RCPT_PENDING && !m->inflight[i] && r->next_ms <= now &&
			    at && !strcasecmp(at + 1, j->domain)) {
				next = m;
				break;
			}
		}
	}
	if (!next)
		return false;
	next->jobs++; /* first: settling the last one must not free it */
	job_settle(j);
	job_take(j, next, j->domain, now);
	job_again(j);
	return true;
}

/* Keeps the connection open for connection_idle after its transaction,
 * for the next message to the same destination (job_start() takes it).
 * Returns false when the connection has done max_per_connection. */
static bool job_park(struct job *j)
{
	const struct config *cfg = ob_cfg(j->ob);
	if (j->ntrans + 1 >= cfg->ob_max_per_connection)
		return false;
	job_settle(j);
	j->step = J_IDLE;
	j->deadline = loop_now_ms(j->ob->loop) + cfg->ob_idle_ms;
	OBLOG(j->ob, LOG_DEBUG, "outbound-idle", "domain=%s host=%s", j->domain, j->host);
	return true;
}

static void msg_unlink(struct outbound *ob, struct ob_msg *m)
{
	struct ob_msg **pp = &ob->msgs;
	while (*pp && *pp != m)
		pp = &(*pp)->next;
	if (*pp)
		*pp = m->next;
}

/* Every job of m ended. Failed recipients are bounced in three ordered
 * steps: their failed state is made durable, then the DSN, then the
 * bounced state (or the removal). Otherwise the state is persisted, or the
 * message removed once every recipient is final. */
static void msg_settled(struct outbound *ob, struct ob_msg *m)
{
	struct queue_entry *e = m->e;
	if (m->removed) {
		msg_unlink(ob, m);
		msg_free(m);
		return;
	}
	bool final = true, failed = false;
	for (size_t i = 0; i < e->nrcpts; i++) {
		if (e->rcpts[i].state == QUEUE_RCPT_PENDING)
			final = false;
		if (e->rcpts[i].state == QUEUE_RCPT_FAILED)
			failed = true;
	}
	if (failed && !m->dsn_busy && wall_ms() >= m->dsn_retry_ms) {
		m->dsn_busy = true;
		m->jobs++;
		if (queue_state_write(ob->q, ob->loop, e, dsn_state_written, m))
			dsn_state_written(m, -ENOMEM);
		return;
	}
	bool delay = false;
	for (size_t i = 0; i < e->nrcpts; i++)
		delay |= m->delay_due[i] && e->rcpts[i].state == QUEUE_RCPT_PENDING;
	if (delay && !failed && !m->dsn_busy) {
		/* A delay DSN changes no state: nothing to write first. It is
		 * not persisted either: after a restart it may come again. */
		queue_state_write(ob->q, ob->loop, e, NULL, NULL);
		m->dsn_busy = true;
		m->jobs++;
		send_dsn(ob, m, DSN_DELAY); /* may settle m again (and so free it) */
		return;
	}
	bool success = false;
	for (size_t i = 0; i < e->nrcpts; i++)
		success |= m->success_due[i] && e->rcpts[i].state == QUEUE_RCPT_SENT;
	if (success && !m->dsn_busy) {
		/* Before the removal: the notice quotes the original's header.
		 * The sent states first (a restart must not send again); a crash
		 * before the notice is queued loses the notice, not the mail. */
		queue_state_write(ob->q, ob->loop, e, NULL, NULL);
		m->dsn_busy = true;
		m->jobs++;
		send_dsn(ob, m, DSN_SUCCESS); /* may settle m again (and so free it) */
		return;
	}
	if (final && !failed) {
		queue_remove(ob->q, ob->loop, e->id, NULL, NULL);
		OBLOG(ob, LOG_INFO, "outbound-done", "id=%s", e->id);
		msg_unlink(ob, m);
		msg_free(m);
		return;
	}
	queue_state_write(ob->q, ob->loop, e, NULL, NULL);
}

static void job_start(struct outbound *ob, struct ob_msg *m, const char *domain, int64_t now)
{
	struct queue_entry *e = m->e;
	struct ob_dest *d = dest_get(ob, domain);
	const struct config *cfg = ob_cfg(ob);
	for (struct job *j = ob->jobs; j; j = j->next) {
		/* An idle connection to the destination first. */
		if (j->step != J_IDLE || j->closing || strcasecmp(j->domain, domain))
			continue;
		job_take(j, m, domain, now);
		if (!j->n) {
			j->m = NULL;
			return;
		}
		m->jobs++;
		job_again(j);
		return;
	}
	if (!d || d->active >= cfg->ob_max_per_domain)
		return;
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->ob = ob;
	j->m = m;
	j->fd = -1;
	j->body_fd = -1;
	j->body_cb.fn = on_body;
	j->connect_cb.fn = on_connect;
	j->send_cb.fn = on_sent;
	j->recv_cb.fn = on_recv;
	snprintf(j->domain, sizeof(j->domain), "%s", domain);
	job_take(j, m, domain, now);
	if (!j->n) {
		free(j);
		return;
	}
	d->active++;
	m->jobs++;
	j->next = ob->jobs;
	ob->jobs = j;
	j->step = J_RESOLVE;
	arm_deadline(j);
	OBLOG(ob, LOG_INFO, "outbound-attempt", "id=%s domain=%s rcpts=%zu", e->id, domain, j->n);
	if (cfg->ob_smart_host[0]) {
		/* Everything goes to one host: "host:port" (port 25 default). */
		j->smart = true;
		char hp[CONFIG_STR_MAX];
		snprintf(hp, sizeof(hp), "%s", cfg->ob_smart_host);
		char *colon = strrchr(hp, ':');
		unsigned port = 25;
		if (colon && !strchr(colon, ']')) {
			*colon = '\0';
			port = (unsigned)atoi(colon + 1);
		}
		char *h = hp;
		if (h[0] == '[') {
			h++;
			h[strcspn(h, "]")] = '\0';
		}
		snprintf(j->mx[0].host, sizeof(j->mx[0].host), "%s", h);
		j->mx[0].pref = port ? port : 25;
		j->nmx = 1;
		j->imx = 0;
		next_host(j);
		return;
	}
	dns_mx(ob->dns, domain, mx_done, j);
}

/* Starts a job per (message, domain) with recipients due. */
static void schedule(struct outbound *ob)
{
	int64_t now = wall_ms();
	if (ob->flush) {
		ob->flush = false;
		for (struct ob_msg *m = ob->msgs; m; m = m->next)
			for (size_t i = 0; i < m->e->nrcpts; i++)
				m->e->rcpts[i].next_ms = now;
	}
	for (struct ob_msg *m = ob->msgs, *next; m; m = next) {
		next = m->next;
		if (m->removed)
			continue;
		struct queue_entry *e = m->e;
		for (size_t i = 0; i < e->nrcpts; i++) {
			struct queue_rcpt *r = &e->rcpts[i];
			if (r->state != QUEUE_RCPT_PENDING || m->inflight[i] || r->next_ms > now)
				continue;
			const char *at = strrchr(r->addr, '@');
			if (!at) {
				r->state = QUEUE_RCPT_FAILED;
				snprintf(r->last, sizeof(r->last), "550 5.1.3 bad address");
				continue;
			}
			if (is_local(ob, r->addr)) {
				local_start(ob, m, i); /* a bounce to one of our users */
				continue;
			}
			job_start(ob, m, at + 1, now);
		}
		if (m->jobs == 0 && now >= m->dsn_retry_ms) {
			bool failed = false, pending = false;
			for (size_t i = 0; i < e->nrcpts; i++) {
				failed |= e->rcpts[i].state == QUEUE_RCPT_FAILED;
				pending |= e->rcpts[i].state == QUEUE_RCPT_PENDING;
			}
			/* A bounce due, or nothing left to do (both also after a
			 * restart, see load_bounced()). */
			if (failed || !pending)
				msg_settled(ob, m);
		}
	}
}

static void check_timeouts(struct outbound *ob)
{
	uint64_t now = loop_now_ms(ob->loop);
	for (struct job *j = ob->jobs, *next; j; j = next) {
		next = j->next;
		if (j->step < J_CONNECT || j->step >= J_DONE || j->closing || !j->deadline ||
		    now <= j->deadline)
			continue;
		if (j->step == J_IDLE) {
			/* Unused for connection_idle: say goodbye. */
			send_quit(j);
			arm_deadline(j);
		} else {
			job_fail(j, "timeout");
		}
	}
}

/* ---- control file (ringmail queue flush|delete) ------------------------- */

static void ctl_apply(struct outbound *ob, char *text)
{
	char *save = NULL;
	for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (!strcmp(l, "flush")) {
			ob->flush = true;
			OBLOG(ob, LOG_INFO, "outbound-flush", "%s", "requested=1");
		} else if (!strncmp(l, "delete ", 7)) {
			for (struct ob_msg *m = ob->msgs, *next; m; m = next) {
				next = m->next;
				if (strcmp(m->e->id, l + 7))
					continue;
				OBLOG(ob, LOG_INFO, "outbound-deleted", "id=%s", m->e->id);
				queue_remove(ob->q, ob->loop, m->e->id, NULL, NULL);
				if (m->jobs) {
					m->removed = true;
				} else {
					msg_unlink(ob, m);
					msg_free(m);
				}
			}
		}
	}
}

/* rename ctl -> ctl.work, open, read, close, unlink: all on the ring. */
static void ctl_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	struct outbound *ob = (struct outbound *)((char *)cb - offsetof(struct outbound, ctl_cb));
	const char *to = ob->ctl_to;
	switch (ob->ctl_step) {
	case 1: /* renamed */
		if (res < 0) {
			ob->ctl_step = 0;
			return;
		}
		ob->ctl_step = 2;
		io_uring_prep_openat(loop_sqe(loop, cb), AT_FDCWD, to, O_RDONLY | O_CLOEXEC, 0);
		return;
	case 2: /* opened */
		if (res < 0) {
			ob->ctl_step = 0;
			return;
		}
		ob->ctl_fd = res;
		ob->ctl_step = 3;
		io_uring_prep_read(loop_sqe(loop, cb), ob->ctl_fd, ob->ctl_buf, sizeof(ob->ctl_buf) - 1, 0);
		return;
	case 3: /* read */
		ob->ctl_buf[res > 0 ? res : 0] = '\0';
		ctl_apply(ob, ob->ctl_buf);
		ob->ctl_step = 4;
		io_uring_prep_close(loop_sqe(loop, cb), ob->ctl_fd);
		ob->ctl_fd = -1;
		return;
	case 4:
		ob->ctl_step = 5;
		io_uring_prep_unlinkat(loop_sqe(loop, cb), AT_FDCWD, to, 0);
		return;
	default:
		ob->ctl_step = 0;
		return;
	}
}

static void ctl_poll(struct outbound *ob)
{
	if (ob->ctl_step)
		return;
	snprintf(ob->ctl_from, sizeof(ob->ctl_from), "%s/queue/ctl", ob->data_dir);
	snprintf(ob->ctl_to, sizeof(ob->ctl_to), "%s/queue/ctl.work", ob->data_dir);
	ob->ctl_cb.fn = ctl_step;
	ob->ctl_step = 1;
	io_uring_prep_renameat(loop_sqe(ob->loop, &ob->ctl_cb), AT_FDCWD, ob->ctl_from, AT_FDCWD,
			       ob->ctl_to, 0);
}

/* ---- the runner's loop -------------------------------------------------- */

static void arm_tick(struct outbound *ob);

static void on_tick(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)res;
	(void)flags;
	struct outbound *ob = (struct outbound *)((char *)cb - offsetof(struct outbound, tick_cb));
	dns_tick(ob->dns);
	check_timeouts(ob);
	ctl_poll(ob);
	schedule(ob);
	arm_tick(ob);
}

static void arm_tick(struct outbound *ob)
{
	ob->tick_ts.tv_sec = 0;
	ob->tick_ts.tv_nsec = OB_TICK_MS * 1000000LL;
	ob->tick_cb.fn = on_tick;
	io_uring_prep_timeout(loop_sqe(ob->loop, &ob->tick_cb), &ob->tick_ts, 0, 0);
}

static struct outbound *runner_of(struct loop *loop);

static void on_new_msg(struct loop *loop, uint32_t kind, uint64_t payload)
{
	(void)kind;
	struct outbound *ob = runner_of(loop);
	struct queue_entry *e = (struct queue_entry *)(uintptr_t)payload;
	if (!ob) {
		queue_entry_free(e);
		return;
	}
	msg_add(ob, e);
	schedule(ob);
}

/* The runner hangs off the services (app/main.c sets it). */
static struct outbound *runner_of(struct loop *loop)
{
	struct services *sv = services_of(loop);
	return sv ? sv->outbound : NULL;
}

static void queue_new_entry(void *arg, struct loop *loop, struct queue_entry *e)
{
	(void)arg;
	if (loop_msg(loop, 0, OB_LOOP_MSG, (uint64_t)(uintptr_t)e))
		queue_entry_free(e); /* on disk: picked up at the next start */
}

int outbound_loop_start(struct outbound *ob, struct loop *loop)
{
	if (loop_id(loop) != 0)
		return 0;
	ob->loop = loop;
	const struct config *cfg = ob_cfg(ob);
	int rc = dns_new(loop, cfg->ob_dns, &ob->dns);
	if (rc) {
		LOG_AT(loop_log(loop), LOG_ERROR, 0, "outbound-dns", "servers=\"%s\" error=%s",
		       cfg->ob_dns, strerror(-rc));
		return rc;
	}
	loop_on_msg(loop, OB_LOOP_MSG, on_new_msg);
	queue_set_on_new(ob->q, queue_new_entry, ob);
	size_t n = 0;
	for (struct ob_msg *m = ob->msgs; m; m = m->next)
		n++;
	struct services *sv = services_of(loop);
	OBLOG(ob, LOG_INFO, "outbound-ready",
	      "queued=%zu dns=\"%s\" mx_port=%u smart_host=\"%s\" dkim_keys=%zu",
	      n, cfg->ob_dns, cfg->ob_mx_port, cfg->ob_smart_host,
	      sv ? dkim_nkeys(atomic_load_explicit(&sv->dkim, memory_order_acquire)) : 0);
	arm_tick(ob);
	schedule(ob);
	return 0;
}

void outbound_loop_stop(struct outbound *ob, struct loop *loop)
{
	if (loop_id(loop) != 0 || ob->loop != loop)
		return;
	/* In-flight deliveries are abandoned: their recipients are still
	 * pending on disk and are retried at the next start. */
	for (struct job *j = ob->jobs, *n; j; j = n) {
		n = j->next;
		if (j->fd >= 0)
			close(j->fd);
		if (j->body_fd >= 0)
			close(j->body_fd);
		tls_client_free(&j->tls);
		free(j->out);
		free(j->out_retired);
		free(j->chunk);
		free(j);
	}
	ob->jobs = NULL;
	for (struct ob_msg *m = ob->msgs; m; m = m->next)
		m->jobs = 0;
	dns_free(&ob->dns);
}
