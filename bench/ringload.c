/* ringload.c - ringmail's load generator, on io_uring.
 *
 * Scenario "greet": C concurrent clients, each in a loop: connect, read the
 * greeting (SMTP "220", IMAP "* OK", POP3 "+OK": detected from the first
 * bytes), send the protocol's quit, read its reply, close. It reports
 * connections per second, latency percentiles (connect start to close, from
 * a log-linear histogram), errors by kind, and the server's CPU time per
 * connection (from /proc/PID/stat or a cgroup's cpu.stat, read before and
 * after the run).
 *
 * One process drives all its clients from one ring with no threads; -j N
 * forks N such processes that split the clients and report back through a
 * pipe. Everything is bounded: each connection has a deadline (--timeout-ms,
 * enforced by cancelling its pending operation), the run stops launching
 * connections after -d seconds or --max-conns attempts, and a hard stop at
 * duration + timeout + 1 s ends it whatever the server does.
 *
 * Ephemeral ports: against a loopback destination every socket is bound to
 * one of --src-addrs source addresses 127.0.0.1.. with
 * IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port at connect() time
 * per 4-tuple and each source address has its own ~28k ports. The client
 * closes with an ordinary FIN (no SO_LINGER 0: an RST would skip work a real
 * client makes the server do).
 *
 * Exit status: 0 when the run completed (errors are reported, not fatal),
 * 1 on bad usage or setup failure, 77 when io_uring is unavailable. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

enum {
	CLIENT_BUF = 1024,        /* one client's receive buffer */
	TICK_MS = 20,             /* deadline scan and end-of-run check */
	DEFAULT_CLIENTS = 64,
	DEFAULT_TIMEOUT_MS = 5000,
	MAX_PROCS = 64,
	EXIT_SKIP = 77,
};

/* ---- results --------------------------------------------------------- */

enum proto { PROTO_UNKNOWN, PROTO_SMTP, PROTO_IMAP, PROTO_POP3, PROTO_MAX };
static const char *const proto_name[PROTO_MAX] = { "unknown", "smtp", "imap", "pop3" };

enum err_kind { ERR_REFUSED, ERR_RESET, ERR_TIMEOUT, ERR_BAD_REPLY, ERR_CLOSED,
		ERR_OTHER, ERR_MAX };
static const char *const err_name[ERR_MAX] = {
	"refused", "reset", "timeout", "bad_reply", "closed", "other",
};

/* What one process reports; -j children write it whole to a pipe. */
struct result {
	uint64_t conns;               /* completed greet cycles */
	uint64_t errors[ERR_MAX];
	uint64_t by_proto[PROTO_MAX];
	int last_errno;               /* last errno counted as "other" */
	uint64_t t_start_ns, t_end_ns; /* first launch, last completion */
	uint64_t cpu_user_us, cpu_sys_us; /* this process's own CPU */
	bool io_uring_unavailable;
	bool failed;
	struct hist lat_us;
};

/* ---- options ---------------------------------------------------------- */

struct opts {
	const char *host;
	const char *port;
	const char *scenario;
	unsigned clients;
	double duration_s;
	unsigned procs;
	uint64_t max_conns;           /* 0: no limit */
	unsigned timeout_ms;
	int src_addrs;                /* -1: automatic */
	long server_pid;              /* 0: none */
	const char *server_cgroup;
	bool json;
};

/* ---- one process's load loop ----------------------------------------- */

enum client_state { CL_IDLE, CL_CONNECT, CL_GREETING, CL_SEND_QUIT, CL_QUIT_REPLY };

struct client {
	int fd;
	enum client_state state;
	enum proto proto;
	bool timed_out;       /* cancel issued: the pending op ends as a timeout */
	bool imap_bye;        /* IMAP: "* BYE" seen before the tagged reply */
	bool smtp_more;       /* SMTP: a "220-" continuation line was seen */
	uint32_t sent;        /* bytes of the quit command sent */
	uint32_t len;         /* bytes waiting in buf */
	uint64_t t_start_ns;
	uint64_t deadline_ns;
	char buf[CLIENT_BUF];
};

/* user_data: op in the top 8 bits, client index in the low 32. Each client
 * has at most one operation in flight, so its state says which one. */
enum ud_op { UD_NONE, UD_CLIENT, UD_TICK, UD_CANCEL, UD_MAX };

static uint64_t ud_make(enum ud_op op, uint32_t idx)
{
	return ((uint64_t)op << 56) | idx;
}

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
	unsigned nclients;
	unsigned active;           /* clients not idle */
	uint64_t max_conns;        /* this process's share; 0: no limit */
	uint64_t launched;
	uint64_t end_ns, hard_end_ns;
	bool stopping;
	struct __kernel_timespec tick_ts;
	struct result *res;
};

/* Returns an SQE; submits first when the SQ is full. NULL only if the ring
 * is broken. */
static struct io_uring_sqe *load_sqe(struct load *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

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
		return ERR_TIMEOUT;
	default:
		return ERR_OTHER;
	}
}

static void client_start(struct load *l, struct client *c);

static void client_close(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CL_IDLE;
}

/* Ends a cycle with an error of kind k (errno e for "other") and starts the
 * next one. */
static void client_fail(struct load *l, struct client *c, enum err_kind k, int e)
{
	if (c->timed_out)
		k = ERR_TIMEOUT;
	l->res->errors[k]++;
	if (k == ERR_OTHER)
		l->res->last_errno = e;
	client_close(c);
	l->active--;
	client_start(l, c);
}

static void client_done(struct load *l, struct client *c)
{
	client_close(c);
	uint64_t t = now_ns();
	hist_add(&l->res->lat_us, (t - c->t_start_ns) / 1000);
	l->res->conns++;
	l->res->by_proto[c->proto]++;
	l->res->t_end_ns = t;
	l->active--;
	client_start(l, c);
}

static void client_recv(struct load *l, struct client *c)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	/* One byte kept free so a line can be NUL-terminated for messages. */
	io_uring_prep_recv(sqe, c->fd, c->buf + c->len, CLIENT_BUF - 1 - c->len, 0);
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, (uint32_t)(c - l->clients)));
}

static void client_send_quit(struct load *l, struct client *c)
{
	static const char smtp_pop_quit[] = "QUIT\r\n";
	static const char imap_quit[] = "a LOGOUT\r\n";
	const char *q = c->proto == PROTO_IMAP ? imap_quit : smtp_pop_quit;
	size_t qlen = c->proto == PROTO_IMAP ? sizeof(imap_quit) - 1 : sizeof(smtp_pop_quit) - 1;
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_send(sqe, c->fd, q + c->sent, qlen - c->sent, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, (uint32_t)(c - l->clients)));
	c->state = CL_SEND_QUIT;
}

static size_t quit_len(enum proto p)
{
	return p == PROTO_IMAP ? sizeof("a LOGOUT\r\n") - 1 : sizeof("QUIT\r\n") - 1;
}

static bool has_prefix(const char *line, size_t len, const char *pfx)
{
	size_t n = strlen(pfx);
	return len >= n && memcmp(line, pfx, n) == 0;
}

static bool has_prefix_nocase(const char *line, size_t len, const char *pfx)
{
	size_t n = strlen(pfx);
	return len >= n && strncasecmp(line, pfx, n) == 0;
}

enum line_verdict { LINE_MORE, LINE_DONE, LINE_BAD };

/* One greeting line (without its CRLF). */
static enum line_verdict greeting_line(struct client *c, const char *s, size_t n)
{
	if (c->proto == PROTO_UNKNOWN) {
		if (has_prefix(s, n, "220"))
			c->proto = PROTO_SMTP;
		else if (has_prefix(s, n, "* OK") || has_prefix(s, n, "* PREAUTH"))
			c->proto = PROTO_IMAP;
		else if (has_prefix(s, n, "+OK"))
			c->proto = PROTO_POP3;
		else
			return LINE_BAD;
	}
	if (c->proto != PROTO_SMTP)
		return LINE_DONE;
	/* SMTP greetings may be multi-line: "220-..." until "220 ...". */
	if (!has_prefix(s, n, "220"))
		return LINE_BAD;
	return n >= 4 && s[3] == '-' ? LINE_MORE : LINE_DONE;
}

/* One line of the reply to the quit command. */
static enum line_verdict quit_line(struct client *c, const char *s, size_t n)
{
	switch (c->proto) {
	case PROTO_SMTP:
		if (!has_prefix(s, n, "221"))
			return LINE_BAD;
		return n >= 4 && s[3] == '-' ? LINE_MORE : LINE_DONE;
	case PROTO_POP3:
		return has_prefix(s, n, "+OK") ? LINE_DONE : LINE_BAD;
	case PROTO_IMAP:
		if (has_prefix_nocase(s, n, "* BYE")) {
			c->imap_bye = true;
			return LINE_MORE;
		}
		if (has_prefix(s, n, "* "))
			return LINE_MORE;  /* other untagged data is allowed */
		if (has_prefix_nocase(s, n, "a OK"))
			return c->imap_bye ? LINE_DONE : LINE_BAD;
		return LINE_BAD;
	default:
		return LINE_BAD;
	}
}

/* Feeds the complete lines in c->buf to the state's line handler and keeps
 * the partial tail. Returns the verdict of the last line handled (LINE_MORE
 * when no line ended the reply). */
static enum line_verdict client_lines(struct client *c)
{
	size_t off = 0;
	enum line_verdict v = LINE_MORE;
	while (v == LINE_MORE) {
		char *nl = memchr(c->buf + off, '\n', c->len - off);
		if (!nl)
			break;
		size_t n = (size_t)(nl - (c->buf + off));
		if (n > 0 && c->buf[off + n - 1] == '\r')
			n--;
		if (c->state == CL_GREETING)
			v = greeting_line(c, c->buf + off, n);
		else
			v = quit_line(c, c->buf + off, n);
		off = (size_t)(nl - c->buf) + 1;
	}
	memmove(c->buf, c->buf + off, c->len - off);
	c->len -= (uint32_t)off;
	if (v == LINE_MORE && c->len >= CLIENT_BUF - 1)
		return LINE_BAD;  /* a line longer than any greeting should be */
	return v;
}

static void client_start(struct load *l, struct client *c)
{
	const struct opts *o = l->o;
	if (l->stopping || (l->max_conns && l->launched >= l->max_conns)) {
		l->stopping = true;
		return;
	}
	c->proto = PROTO_UNKNOWN;
	c->timed_out = false;
	c->imap_bye = false;
	c->smtp_more = false;
	c->sent = 0;
	c->len = 0;
	c->t_start_ns = now_ns();
	if (l->res->t_start_ns == 0)
		l->res->t_start_ns = c->t_start_ns;
	c->deadline_ns = c->t_start_ns + (uint64_t)o->timeout_ms * 1000000u;
	l->launched++;

	c->fd = bench_socket(&l->addr);
	if (c->fd < 0) {
		/* Out of descriptors or memory: count it, retry on the next tick. */
		l->res->errors[ERR_OTHER]++;
		l->res->last_errno = errno;
		c->state = CL_IDLE;
		return;
	}
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&l->addr.dst, l->addr.dst_len);
	io_uring_sqe_set_data64(sqe, ud_make(UD_CLIENT, (uint32_t)(c - l->clients)));
	c->state = CL_CONNECT;
	l->active++;
}

static void client_complete(struct load *l, struct client *c, int res)
{
	if (c->state == CL_IDLE)
		return;  /* cannot happen: one op per client; be safe anyway */
	if (res < 0) {
		client_fail(l, c, err_from_errno(-res), -res);
		return;
	}
	if (c->timed_out) {
		/* Completed while its cancel was on the way: too late anyway. */
		client_fail(l, c, ERR_TIMEOUT, 0);
		return;
	}
	switch (c->state) {
	case CL_CONNECT:
		c->state = CL_GREETING;
		client_recv(l, c);
		return;
	case CL_GREETING:
	case CL_QUIT_REPLY: {
		if (res == 0) {
			client_fail(l, c, ERR_CLOSED, 0);
			return;
		}
		c->len += (uint32_t)res;
		enum line_verdict v = client_lines(c);
		if (v == LINE_BAD) {
			client_fail(l, c, ERR_BAD_REPLY, 0);
		} else if (v == LINE_MORE) {
			client_recv(l, c);
		} else if (c->state == CL_GREETING) {
			c->len = 0;  /* a server that talks ahead is not our problem */
			client_send_quit(l, c);
		} else {
			client_done(l, c);
		}
		return;
	}
	case CL_SEND_QUIT:
		c->sent += (uint32_t)res;
		if (c->sent < quit_len(c->proto)) {
			client_send_quit(l, c);
		} else {
			c->state = CL_QUIT_REPLY;
			client_recv(l, c);
		}
		return;
	case CL_IDLE:
		return;
	}
}

static void load_arm_tick(struct load *l)
{
	struct io_uring_sqe *sqe = load_sqe(l);
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_make(UD_TICK, 0));
}

/* Every TICK_MS: end of run, per-connection deadlines, idle retries. */
static void load_tick(struct load *l)
{
	uint64_t t = now_ns();
	if (t >= l->end_ns)
		l->stopping = true;
	for (unsigned i = 0; i < l->nclients; i++) {
		struct client *c = &l->clients[i];
		if (c->state == CL_IDLE) {
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

/* Runs one process's share of the load into *res. */
static void load_run(const struct opts *o, unsigned nclients, uint64_t max_conns,
		     uint64_t end_ns, struct result *res)
{
	struct load l = { .o = o, .nclients = nclients, .max_conns = max_conns, .res = res };
	memset(res, 0, sizeof(*res));
	l.end_ns = end_ns;
	l.hard_end_ns = end_ns + (uint64_t)o->timeout_ms * 1000000u + 1000000000u;
	l.tick_ts.tv_nsec = TICK_MS * 1000000;
	if (bench_resolve("ringload", o->host, o->port, o->src_addrs, &l.addr) < 0) {
		res->failed = true;
		return;
	}
	l.clients = calloc(nclients, sizeof(*l.clients));
	if (!l.clients) {
		res->failed = true;
		return;
	}
	for (unsigned i = 0; i < nclients; i++)
		l.clients[i].fd = -1;

	/* Each client has at most one op plus one cancel in flight. */
	int rc = bench_ring_init("ringload", &l.ring, nclients, &res->io_uring_unavailable);
	if (rc < 0) {
		res->failed = true;
		free(l.clients);
		return;
	}

	for (unsigned i = 0; i < nclients; i++)
		client_start(&l, &l.clients[i]);
	load_arm_tick(&l);

	while (!(l.stopping && l.active == 0)) {
		rc = io_uring_submit_and_wait(&l.ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			fprintf(stderr, "ringload: io_uring_submit_and_wait: %s\n", strerror(-rc));
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
				if (idx < l.nclients)
					client_complete(&l, &l.clients[idx], cqe->res);
				break;
			case UD_TICK:
				load_tick(&l);
				break;
			case UD_CANCEL:
				break;  /* the cancelled op reports for itself */
			default:
				fprintf(stderr, "ringload: unknown completion %#" PRIx64 "\n", ud);
				break;
			}
		}
		io_uring_cq_advance(&l.ring, seen);
		if (now_ns() > l.hard_end_ns) {
			/* Something never completed: stop anyway; count it. */
			for (unsigned i = 0; i < l.nclients; i++) {
				if (l.clients[i].state != CL_IDLE) {
					res->errors[ERR_TIMEOUT]++;
					client_close(&l.clients[i]);
				}
			}
			break;
		}
	}

	io_uring_queue_exit(&l.ring);
	for (unsigned i = 0; i < l.nclients; i++)
		client_close(&l.clients[i]);
	free(l.clients);

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	res->cpu_user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec;
	res->cpu_sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* ---- the server's CPU time ------------------------------------------- */

struct cpu_meter {
	const struct opts *o;
	struct cpu_sample pid0, cg0;
	uint64_t busy0_us;     /* machine_busy_us() at the start */
	uint64_t wall0_ns;
};

static void cpu_meter_start(struct cpu_meter *m, const struct opts *o)
{
	m->o = o;
	m->busy0_us = machine_busy_us();
	m->wall0_ns = now_ns();
	if (o->server_pid)
		m->pid0 = cpu_from_pid(o->server_pid, false);
	if (o->server_cgroup)
		m->cg0 = cpu_from_cgroup(o->server_cgroup);
}

/* Returns the delta since cpu_meter_start; cgroup wins over pid when both
 * were given. ok is false when nothing could be read. */
static struct cpu_sample cpu_meter_delta(const struct cpu_meter *m, const char **src_r)
{
	struct cpu_sample d = { 0 }, a, b;
	*src_r = NULL;
	if (m->o->server_cgroup && m->cg0.ok) {
		a = m->cg0;
		b = cpu_from_cgroup(m->o->server_cgroup);
		*src_r = "cgroup";
	} else if (m->o->server_pid && m->pid0.ok) {
		a = m->pid0;
		b = cpu_from_pid(m->o->server_pid, false);
		*src_r = "pid";
	} else {
		return d;
	}
	if (!b.ok)
		return d;
	d.ok = true;
	d.user_us = b.user_us - a.user_us;
	d.sys_us = b.sys_us - a.sys_us;
	d.total_us = b.total_us - a.total_us;
	return d;
}

/* The CPU the machine spent during the run on neither the server nor
 * ringload, in percent of one core: other tenants disturbing the
 * measurement. Returns a negative value when it cannot be known. */
static double cpu_meter_other_pct(const struct cpu_meter *m, const struct cpu_sample *server,
				  const struct result *r)
{
	uint64_t busy1 = machine_busy_us();
	uint64_t wall_us = (now_ns() - m->wall0_ns) / 1000;
	if (!server->ok || !m->busy0_us || !busy1 || wall_us == 0)
		return -1;
	double other = (double)(busy1 - m->busy0_us) - (double)server->total_us -
		       (double)(r->cpu_user_us + r->cpu_sys_us);
	if (other < 0)
		other = 0;  /* tick-based /proc/stat against precise counters */
	return 100.0 * other / (double)wall_us;
}

/* ---- -j: child processes --------------------------------------------- */

static bool write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		c += w;
		n -= (size_t)w;
	}
	return true;
}

static bool read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n > 0) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		c += r;
		n -= (size_t)r;
	}
	return true;
}

static void result_merge(struct result *into, const struct result *r)
{
	into->conns += r->conns;
	for (int k = 0; k < ERR_MAX; k++)
		into->errors[k] += r->errors[k];
	for (int p = 0; p < PROTO_MAX; p++)
		into->by_proto[p] += r->by_proto[p];
	if (r->last_errno)
		into->last_errno = r->last_errno;
	if (r->t_start_ns && (!into->t_start_ns || r->t_start_ns < into->t_start_ns))
		into->t_start_ns = r->t_start_ns;
	if (r->t_end_ns > into->t_end_ns)
		into->t_end_ns = r->t_end_ns;
	into->cpu_user_us += r->cpu_user_us;
	into->cpu_sys_us += r->cpu_sys_us;
	into->io_uring_unavailable |= r->io_uring_unavailable;
	into->failed |= r->failed;
	hist_merge(&into->lat_us, &r->lat_us);
}

/* Forks o->procs children that split the clients and max_conns; merges
 * their results into *total. Returns 0, or -1 when a child could not run. */
static int run_procs(const struct opts *o, uint64_t end_ns, struct result *total)
{
	pid_t pids[MAX_PROCS];
	int fds[MAX_PROCS];
	unsigned n = o->procs;
	struct result *r = malloc(sizeof(*r));
	if (!r)
		return -1;
	memset(total, 0, sizeof(*total));
	for (unsigned i = 0; i < n; i++) {
		int pfd[2];
		if (pipe(pfd) < 0) {
			perror("ringload: pipe");
			n = i;
			total->failed = true;
			break;
		}
		unsigned share = o->clients / n + (i < o->clients % n);
		uint64_t mshare = o->max_conns ? o->max_conns / n + (i < o->max_conns % n) : 0;
		pid_t pid = fork();
		if (pid == 0) {
			close(pfd[0]);
			load_run(o, share, mshare ? mshare : (o->max_conns ? 1 : 0), end_ns, r);
			_exit(write_all(pfd[1], r, sizeof(*r)) ? 0 : 1);
		}
		close(pfd[1]);
		if (pid < 0) {
			perror("ringload: fork");
			close(pfd[0]);
			n = i;
			total->failed = true;
			break;
		}
		pids[i] = pid;
		fds[i] = pfd[0];
	}
	for (unsigned i = 0; i < n; i++) {
		if (read_all(fds[i], r, sizeof(*r)))
			result_merge(total, r);
		else
			total->failed = true;
		close(fds[i]);
		waitpid(pids[i], NULL, 0);
	}
	/* The children's CPU, as the kernel accounted it. */
	struct rusage ru;
	getrusage(RUSAGE_CHILDREN, &ru);
	total->cpu_user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec;
	total->cpu_sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
	free(r);
	return total->failed ? -1 : 0;
}

/* ---- report ----------------------------------------------------------- */

static enum proto main_proto(const struct result *r)
{
	enum proto best = PROTO_UNKNOWN;
	for (int p = 1; p < PROTO_MAX; p++)
		if (r->by_proto[p] > r->by_proto[best])
			best = (enum proto)p;
	return best;
}

static void report(FILE *out, const struct opts *o, const struct result *r,
		   const struct cpu_sample *cpu, const char *cpu_src, double other_pct)
{
	double secs = r->t_end_ns > r->t_start_ns ? (double)(r->t_end_ns - r->t_start_ns) / 1e9 : 0;
	double rate = secs > 0 ? (double)r->conns / secs : 0;
	uint64_t nerr = 0;
	for (int k = 0; k < ERR_MAX; k++)
		nerr += r->errors[k];
	double conns = r->conns ? (double)r->conns : 1;

	fprintf(out, "greet %s:%s (%s) clients %u procs %u\n", o->host, o->port,
		proto_name[main_proto(r)], o->clients, o->procs);
	fprintf(out, "  connections  %" PRIu64 " in %.2f s = %.0f conns/s\n", r->conns, secs, rate);
	fprintf(out, "  latency us   p50 %" PRIu64 "  p99 %" PRIu64 "  p999 %" PRIu64
		"  max %" PRIu64 "\n", hist_quantile(&r->lat_us, 0.5),
		hist_quantile(&r->lat_us, 0.99), hist_quantile(&r->lat_us, 0.999), r->lat_us.max);
	fprintf(out, "  errors       %" PRIu64, nerr);
	for (int k = 0; k < ERR_MAX; k++)
		fprintf(out, " %s %" PRIu64, err_name[k], r->errors[k]);
	if (r->errors[ERR_OTHER] && r->last_errno)
		fprintf(out, " (last other: %s)", strerror(r->last_errno));
	fprintf(out, "\n");
	if (cpu->ok)
		fprintf(out, "  server cpu   %.2f us/conn (user %.2f sys %.2f) [%s]\n",
			(double)cpu->total_us / conns, (double)cpu->user_us / conns,
			(double)cpu->sys_us / conns, cpu_src);
	if (other_pct >= 0)
		fprintf(out, "  other load   %.1f%% of a core (neither server nor ringload)\n",
			other_pct);
	fprintf(out, "  client cpu   %.2f us/conn (user %.2f sys %.2f)\n",
		(double)(r->cpu_user_us + r->cpu_sys_us) / conns,
		(double)r->cpu_user_us / conns, (double)r->cpu_sys_us / conns);
}

static void report_json(FILE *out, const struct opts *o, const struct result *r,
			const struct cpu_sample *cpu, const char *cpu_src, double other_pct)
{
	double secs = r->t_end_ns > r->t_start_ns ? (double)(r->t_end_ns - r->t_start_ns) / 1e9 : 0;
	double conns = r->conns ? (double)r->conns : 1;
	fprintf(out, "{\"scenario\":\"%s\",\"host\":\"%s\",\"port\":%s,\"proto\":\"%s\","
		"\"clients\":%u,\"procs\":%u,\"conns\":%" PRIu64 ",\"seconds\":%.3f,"
		"\"conns_per_s\":%.1f,\"p50_us\":%" PRIu64 ",\"p99_us\":%" PRIu64
		",\"p999_us\":%" PRIu64 ",\"max_us\":%" PRIu64 ",\"errors\":{",
		o->scenario, o->host, o->port, proto_name[main_proto(r)], o->clients, o->procs,
		r->conns, secs, secs > 0 ? (double)r->conns / secs : 0,
		hist_quantile(&r->lat_us, 0.5), hist_quantile(&r->lat_us, 0.99),
		hist_quantile(&r->lat_us, 0.999), r->lat_us.max);
	for (int k = 0; k < ERR_MAX; k++)
		fprintf(out, "%s\"%s\":%" PRIu64, k ? "," : "", err_name[k], r->errors[k]);
	fprintf(out, "},");
	if (cpu->ok)
		fprintf(out, "\"server_cpu_us_per_conn\":%.3f,\"server_user_us_per_conn\":%.3f,"
			"\"server_sys_us_per_conn\":%.3f,\"server_cpu_source\":\"%s\",",
			(double)cpu->total_us / conns, (double)cpu->user_us / conns,
			(double)cpu->sys_us / conns, cpu_src);
	else
		fprintf(out, "\"server_cpu_us_per_conn\":null,");
	if (other_pct >= 0)
		fprintf(out, "\"other_cpu_pct\":%.1f,", other_pct);
	fprintf(out, "\"client_cpu_us_per_conn\":%.3f}\n",
		(double)(r->cpu_user_us + r->cpu_sys_us) / conns);
}

/* ---- main ------------------------------------------------------------ */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringload [options]\n"
		"  -H, --host ADDR          server address (127.0.0.1)\n"
		"  -p, --port PORT          server port (2525)\n"
		"  -s, --scenario NAME      greet (the only one so far)\n"
		"  -c, --clients N          concurrent connections (%d)\n"
		"  -d, --duration SECS      stop launching after SECS (5)\n"
		"  -j, --procs N            processes sharing the clients (1)\n"
		"  -n, --max-conns N        stop launching after N attempts\n"
		"      --timeout-ms MS      per-connection deadline (%d)\n"
		"      --src-addrs N        bind to 127.0.0.1..N (loopback: %d; 0: off)\n"
		"      --server-pid PID     report the CPU of PID (/proc/PID/stat)\n"
		"      --server-cgroup DIR  report the CPU of a cgroup (cpu.stat or cpuacct)\n"
		"      --json               stdout: one JSON line; report on stderr\n",
		DEFAULT_CLIENTS, DEFAULT_TIMEOUT_MS, BENCH_DEFAULT_SRC_ADDRS);
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = "2525", .scenario = "greet",
		.clients = DEFAULT_CLIENTS, .duration_s = 5, .procs = 1,
		.timeout_ms = DEFAULT_TIMEOUT_MS, .src_addrs = -1,
	};
	enum { OPT_TIMEOUT = 256, OPT_SRC, OPT_PID, OPT_CGROUP, OPT_JSON };
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "scenario", required_argument, NULL, 's' },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "procs", required_argument, NULL, 'j' },
		{ "max-conns", required_argument, NULL, 'n' },
		{ "timeout-ms", required_argument, NULL, OPT_TIMEOUT },
		{ "src-addrs", required_argument, NULL, OPT_SRC },
		{ "server-pid", required_argument, NULL, OPT_PID },
		{ "server-cgroup", required_argument, NULL, OPT_CGROUP },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	uint64_t v;
	while ((ch = getopt_long(argc, argv, "H:p:s:c:d:j:n:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			o.host = optarg;
			break;
		case 'p':
			if (!parse_u64(optarg, 1, 65535, &v))
				goto bad;
			o.port = optarg;
			break;
		case 's':
			o.scenario = optarg;
			break;
		case 'c':
			if (!parse_u64(optarg, 1, 1000000, &v))
				goto bad;
			o.clients = (unsigned)v;
			break;
		case 'd': {
			char *end;
			o.duration_s = strtod(optarg, &end);
			if (end == optarg || *end || !(o.duration_s > 0) || o.duration_s > 86400)
				goto bad;
			break;
		}
		case 'j':
			if (!parse_u64(optarg, 1, MAX_PROCS, &v))
				goto bad;
			o.procs = (unsigned)v;
			break;
		case 'n':
			if (!parse_u64(optarg, 1, UINT64_MAX, &v))
				goto bad;
			o.max_conns = v;
			break;
		case OPT_TIMEOUT:
			if (!parse_u64(optarg, 1, 3600000, &v))
				goto bad;
			o.timeout_ms = (unsigned)v;
			break;
		case OPT_SRC:
			if (!parse_u64(optarg, 0, BENCH_MAX_SRC_ADDRS, &v))
				goto bad;
			o.src_addrs = (int)v;
			break;
		case OPT_PID:
			if (!parse_u64(optarg, 1, INT32_MAX, &v))
				goto bad;
			o.server_pid = (long)v;
			break;
		case OPT_CGROUP:
			o.server_cgroup = optarg;
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
	if (optind != argc || strcmp(o.scenario, "greet") != 0) {
		usage(stderr);
		return 1;
	}
	if (o.procs > o.clients)
		o.procs = o.clients;

	struct cpu_meter meter = { 0 };
	cpu_meter_start(&meter, &o);
	if ((o.server_pid && !meter.pid0.ok) || (o.server_cgroup && !meter.cg0.ok)) {
		fprintf(stderr, "ringload: cannot read the server's CPU time (pid %ld, cgroup %s)\n",
			o.server_pid, o.server_cgroup ? o.server_cgroup : "-");
		return 1;
	}

	struct result *r = malloc(sizeof(*r));
	if (!r)
		return 1;
	uint64_t end_ns = now_ns() + (uint64_t)(o.duration_s * 1e9);
	if (o.procs == 1)
		load_run(&o, o.clients, o.max_conns, end_ns, r);
	else
		run_procs(&o, end_ns, r);

	const char *cpu_src;
	struct cpu_sample cpu = cpu_meter_delta(&meter, &cpu_src);
	double other_pct = cpu_meter_other_pct(&meter, &cpu, r);
	if (r->io_uring_unavailable) {
		fprintf(stderr, "ringload: io_uring unavailable: skipped\n");
		free(r);
		return EXIT_SKIP;
	}
	report(o.json ? stderr : stdout, &o, r, &cpu, cpu_src, other_pct);
	if (o.json)
		report_json(stdout, &o, r, &cpu, cpu_src, other_pct);
	int rc = r->failed ? 1 : 0;
	free(r);
	return rc;
bad:
	fprintf(stderr, "ringload: bad value for -%c: %s\n", ch < 256 ? ch : '-', optarg);
	usage(stderr);
	return 1;
}
