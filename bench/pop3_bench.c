/* pop3_bench.c - POP3 login + RETR cycles against a server (bench/compare,
 * bench/pop3_bench.sh; docs/bench.md).
 *
 * -c clients on io_uring (bench/loadgen.c: one process, one ring, at most
 * one operation in flight per client; with --tls implicit TLS through
 * wolfSSL over memory, as on 995) each loop for -d seconds: connect,
 * [TLS handshake], greeting, USER, PASS, STAT, RETR 1 (read to the
 * terminating "."), QUIT, [close_notify], close. Client i logs in as the
 * user --user FMT formats with FIRST + i mod --users (users of their own
 * keep servers that lock the maildrop from making clients wait for each
 * other). Prints sessions/s, the message bytes read per second, the
 * latency of a cycle (p50/p99/p999), errors by kind and, with
 * --server-pid or --server-cgroup, the server's CPU per cycle; --json one
 * line.
 *
 * Exit status: 0 when the run completed (errors are counted, not fatal),
 * 1 on bad usage or setup failure, 77 when io_uring is unavailable. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "loadgen.h"

enum { EXIT_SKIP = 77 };

struct opts {
	const char *host, *port;
	bool tls;
	unsigned clients;
	double duration_s;
	uint64_t max_ops;
	unsigned timeout_ms;
	int src_addrs;
	const char *user_fmt, *pass;
	unsigned users, first;
	struct bench_servers srv;
	bool json;
};

enum step { ST_GREETING, ST_USER, ST_PASS, ST_STAT, ST_RETR, ST_QUIT };

struct client {
	struct loadgen_conn lc; /* first: loadgen's */
	enum step step;
	unsigned user;
	struct loadgen_reply rep;
	uint64_t body;          /* this cycle's RETR bytes */
};

struct pop {
	const struct opts *o;
	uint64_t body_bytes;    /* RETR bytes of the cycles done */
};

static struct pop *pop_of(struct loadgen *l)
{
	return l->user;
}

static struct client *cl_of(struct loadgen_conn *c)
{
	return (struct client *)c;
}

static void cmd(struct loadgen *l, struct client *c, enum step st, const char *s, bool multi)
{
	c->step = st;
	loadgen_reply_reset(&c->rep, multi);
	if (!loadgen_send(l, &c->lc, s, strlen(s)))
		loadgen_fail(l, &c->lc, LG_ERR_OTHER, "queueing a command failed", NULL);
}

static void cb_start(struct loadgen *l, struct loadgen_conn *lc)
{
	struct client *c = cl_of(lc);
	(void)l;
	c->step = ST_GREETING;
	c->body = 0;
	loadgen_reply_reset(&c->rep, false);
}

/* After a whole +OK reply. */
static void step_ok(struct loadgen *l, struct client *c)
{
	const struct opts *o = pop_of(l)->o;
	char line[600], user[256];
	switch (c->step) {
	case ST_GREETING:
		snprintf(user, sizeof(user), o->user_fmt, o->first + c->user);
		snprintf(line, sizeof(line), "USER %s\r\n", user);
		cmd(l, c, ST_USER, line, false);
		return;
	case ST_USER:
		snprintf(line, sizeof(line), "PASS %s\r\n", o->pass);
		cmd(l, c, ST_PASS, line, false);
		return;
	case ST_PASS:
		cmd(l, c, ST_STAT, "STAT\r\n", false);
		return;
	case ST_STAT:
		cmd(l, c, ST_RETR, "RETR 1\r\n", true);
		return;
	case ST_RETR:
		c->body = c->rep.body_bytes;
		cmd(l, c, ST_QUIT, "QUIT\r\n", false);
		return;
	case ST_QUIT:
		loadgen_close(l, &c->lc);
		return;
	}
}

static void cb_data(struct loadgen *l, struct loadgen_conn *lc, const uint8_t *p, size_t n)
{
	struct client *c = cl_of(lc);
	while (n > 0 && lc->phase == LG_OPEN) {
		size_t k = loadgen_reply_feed(&c->rep, p, n);
		p += k;
		n -= k;
		if (!c->rep.done)
			return;
		const char *s = c->rep.line;
		if (strncmp(s, "+OK", 3) != 0) {
			loadgen_fail(l, lc, strncmp(s, "-ERR", 4) == 0 ? LG_ERR_NO : LG_ERR_BAD_REPLY,
				     "", s);
			return;
		}
		step_ok(l, c);
	}
}

/* A cycle ended well: QUIT answered, close_notify sent. */
static void cb_done(struct loadgen *l, struct loadgen_conn *lc)
{
	loadgen_record(l, lc->t_start_ns);
	pop_of(l)->body_bytes += cl_of(lc)->body;
}

static const struct loadgen_ops pop_ops = {
	.start = cb_start,
	.data = cb_data,
	.done = cb_done,
};

static void report(const struct opts *o, const struct loadgen *l, const struct pop *pop,
		   const struct cpu_sample *cpu, const struct cpu_sample *self, double other)
{
	FILE *out = o->json ? stderr : stdout;
	double secs = loadgen_seconds(l);
	double ops = l->ops ? (double)l->ops : 1;
	double mbps = secs > 0 ? (double)pop->body_bytes / secs / 1e6 : 0;
	fprintf(out, "pop3-retr %s:%s%s clients %u\n", o->host, o->port, o->tls ? " (TLS)" : "",
		o->clients);
	fprintf(out, "  sessions    %" PRIu64 " in %.2f s = %.1f/s, RETR %.2f MB/s\n", l->ops, secs,
		secs > 0 ? (double)l->ops / secs : 0, mbps);
	loadgen_print_lat_errors(l, out);
	if (cpu->ok)
		fprintf(out, "  server cpu  %.1f us per session (user %.1f sys %.1f)\n",
			(double)cpu->total_us / ops, (double)cpu->user_us / ops,
			(double)cpu->sys_us / ops);
	if (other >= 0)
		fprintf(out, "  other load  %.1f%% of a core\n", other);
	fprintf(out, "  client cpu  %.1f us per session\n", (double)self->total_us / ops);
	if (!o->json)
		return;
	printf("{\"scenario\":\"pop3-retr\",\"host\":\"%s\",\"port\":%s,\"tls\":%s,\"clients\":%u,"
	       "\"ops\":%" PRIu64 ",\"sessions\":%" PRIu64 ",\"seconds\":%.3f,\"ops_per_s\":%.1f,"
	       "\"mb_per_s\":%.2f",
	       o->host, o->port, o->tls ? "true" : "false", o->clients, l->ops, l->ops, secs,
	       secs > 0 ? (double)l->ops / secs : 0, mbps);
	printf(",\"bytes_per_s\":%.0f", secs > 0 ? (double)pop->body_bytes / secs : 0);
	loadgen_json_lat_errors(l, stdout);
	if (cpu->ok) {
		printf(",\"server_cpu_us_per_op\":%.3f,\"server_user_us_per_op\":%.3f,"
		       "\"server_sys_us_per_op\":%.3f", (double)cpu->total_us / ops,
		       (double)cpu->user_us / ops, (double)cpu->sys_us / ops);
		if (pop->body_bytes >= 1048576)
			printf(",\"server_cpu_us_per_mib\":%.1f",
			       (double)cpu->total_us / ((double)pop->body_bytes / 1048576.0));
	}
	if (other >= 0)
		printf(",\"other_cpu_pct\":%.1f", other);
	printf(",\"client_cpu_us_per_op\":%.2f}\n", (double)self->total_us / ops);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: pop3_bench -p PORT [options]\n"
		"  -H, --host ADDR        server (127.0.0.1)\n"
		"  -p, --port PORT        server port (110)\n"
		"      --tls              implicit TLS (995)\n"
		"  -c, --clients N        concurrent clients (16)\n"
		"  -d, --duration SECS    no new cycle after SECS (5)\n"
		"  -n, --max-ops N        cycles (none)\n"
		"      --timeout-ms MS    deadline of a cycle (10000)\n"
		"      --src-addrs N      bind to 127.0.0.1..N (loopback: 16; 0: off)\n"
		"  -u, --user FMT         login name, one %%d = FIRST + i mod K ('r%%d@example.com')\n"
		"      --users K          distinct users (the clients)\n"
		"      --first N          the first user's number (1)\n"
		"  -P, --pass PASS        password (bench-Secret-1)\n"
		"      --server-pid PID   the server's CPU (repeatable)\n"
		"      --server-cgroup D  the same for every process of a cgroup v2 (repeatable)\n"
		"      --json             stdout: one JSON line; the report on stderr\n");
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = "110", .clients = 16, .duration_s = 5,
		.timeout_ms = 10000, .src_addrs = -1, .user_fmt = "r%d@example.com",
		.pass = "bench-Secret-1", .first = 1,
	};
	enum { O_TLS = 256, O_TIMEOUT, O_SRC, O_USERS, O_FIRST, O_PID, O_CGROUP, O_JSON };
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "tls", no_argument, NULL, O_TLS },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "max-ops", required_argument, NULL, 'n' },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "src-addrs", required_argument, NULL, O_SRC },
		{ "user", required_argument, NULL, 'u' },
		{ "users", required_argument, NULL, O_USERS },
		{ "first", required_argument, NULL, O_FIRST },
		{ "pass", required_argument, NULL, 'P' },
		{ "server-pid", required_argument, NULL, O_PID },
		{ "server-cgroup", required_argument, NULL, O_CGROUP },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	uint64_t v;
	char *end;
	while ((ch = getopt_long(argc, argv, "H:p:c:d:n:u:P:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': o.host = optarg; break;
		case 'p':
			if (!parse_u64(optarg, 1, 65535, &v))
				goto bad;
			o.port = optarg;
			break;
		case O_TLS: o.tls = true; break;
		case 'c':
			if (!parse_u64(optarg, 1, 100000, &v))
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
		case O_FIRST:
			if (!parse_u64(optarg, 0, 1000000, &v))
				goto bad;
			o.first = (unsigned)v;
			break;
		case 'P': o.pass = optarg; break;
		case O_PID:
			if (!bench_servers_add_pid(&o.srv, optarg))
				goto bad;
			break;
		case O_CGROUP:
			if (!bench_servers_add_cgroup(&o.srv, optarg))
				goto bad;
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
	if (!o.users)
		o.users = o.clients;
	const char *pct = strchr(o.user_fmt, '%');
	if (pct && (pct[1] != 'd' || strchr(pct + 1, '%'))) {
		fprintf(stderr, "pop3_bench: --user takes at most one %%d\n");
		return 1;
	}
	if (o.tls && wolfSSL_Init() != WOLFSSL_SUCCESS)
		return 1;

	struct bench_meter m;
	bench_meter_start(&m, &o.srv);
	if ((o.srv.npids || o.srv.ncgroups) && !m.s0.ok) {
		fprintf(stderr, "pop3_bench: cannot read the server's CPU time\n");
		return 1;
	}
	struct pop pop = { .o = &o };
	struct loadgen_cfg cfg = {
		.prog = "pop3_bench", .host = o.host, .port = o.port, .src_addrs = o.src_addrs,
		.tls = o.tls, .nconns = o.clients, .conn_size = sizeof(struct client),
		.timeout_ms = o.timeout_ms, .ops = &pop_ops, .user = &pop,
	};
	struct loadgen *l = calloc(1, sizeof(*l));
	if (!l)
		return 1;
	int rc = 1;
	if (loadgen_init(l, &cfg) < 0) {
		if (l->io_uring_unavailable) {
			fprintf(stderr, "pop3_bench: io_uring unavailable: skipped\n");
			rc = EXIT_SKIP;
		}
		goto out;
	}
	l->err_names[LG_ERR_NO] = "err"; /* -ERR */
	l->err_names[LG_ERR_BAD] = NULL;
	for (unsigned i = 0; i < l->nconns; i++)
		cl_of(loadgen_conn(l, i))->user = i % o.users;
	l->max_launch = o.max_ops;
	uint64_t t0 = now_ns();
	l->t_start_ns = t0;
	l->end_ns = t0 + (uint64_t)(o.duration_s * 1e9);
	l->hard_end_ns = l->end_ns + (uint64_t)o.timeout_ms * 1000000u + 1000000000u;
	for (unsigned i = 0; i < l->nconns; i++)
		loadgen_start(l, loadgen_conn(l, i));
	loadgen_arm_tick(l);
	loadgen_pump(l, loadgen_all_done);
	struct cpu_sample cpu, self;
	double other;
	bench_meter_stop(&m, &o.srv, &cpu, &self, &other);
	report(&o, l, &pop, &cpu, &self, other);
	rc = l->failed ? 1 : 0;
out:
	loadgen_destroy(l);
	free(l);
	if (o.tls)
		wolfSSL_Cleanup();
	return rc;
bad:
	fprintf(stderr, "pop3_bench: bad value for -%c: %s\n", ch < 256 ? ch : '-',
		optarg ? optarg : "");
	usage(stderr);
	return 1;
}
