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
 * The connections, the ring and TLS are bench/loadgen.c's (one ring, no
 * threads, at most one operation in flight per client, wolfSSL as a filter
 * over memory); this file is the IMAP conversation.
 *
 * Exit status: 0 when the run completed (errors are counted, not fatal),
 * 1 on bad usage or setup failure, 77 when io_uring is unavailable. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"
#include "loadgen.h"

enum {
	LINE_MAX_KEPT = 2048,     /* a response line's first bytes kept; the rest skipped */
	EXIT_SKIP = 77,
};

enum scenario { SC_LOGIN, SC_FETCH, SC_IDLE, SC_SYNC };
static const char *const scenario_name[] = { "imap-login", "imap-fetch", "imap-idle",
					     "imap-sync" };

/* sync: what Thunderbird asks for when it first syncs a folder's headers */
#define SYNC_FETCH                                                                        \
	"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "  \
	"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To " \
	"Content-Type Reply-To)])\r\n"

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
	struct bench_servers srv;
	bool json;
};

/* What the run measured beyond loadgen's operations, latency and errors. */
struct result {
	uint64_t body_bytes;      /* fetch: literal bytes received */
	uint64_t flags_fetched;   /* login, sync: "* n FETCH" lines */
	uint64_t exists_sum;      /* login: EXISTS reported by SELECT */
	struct mem_sample mem0, mem1;
	uint64_t idle_conns;      /* idle: connections held at the "after" sample */
	bool failed;
};

/* The protocol's step; the connection's phase is c->lc.phase. */
enum step { ST_GREETING, ST_LOGIN, ST_SELECT, ST_FLAGS, ST_BODY, ST_IDLE, ST_LOGOUT, ST_SYNC };

struct client {
	struct loadgen_conn lc;   /* first: loadgen's */
	enum step step;
	bool warmup;              /* idle: the connection made before the "before" sample */
	unsigned user;
	/* the response parser */
	char line[LINE_MAX_KEPT];
	uint32_t line_len;
	uint64_t lit_left;        /* literal bytes still to skip */
	uint64_t exists, fetched;
	uint64_t t_op_ns;
	uint32_t tag;             /* the current command's tag is "a<tag>" */
};

struct imap {
	const struct opts *o;
	struct result *res;
	unsigned establishing;    /* idle: connections not yet held */
	unsigned target;          /* idle: pump until establishing <= target */
};

static struct imap *im_of(struct loadgen *l)
{
	return l->user;
}

static struct client *cl_of(struct loadgen_conn *c)
{
	return (struct client *)c;
}

static void client_fail(struct loadgen *l, struct client *c, enum loadgen_err k, const char *what,
			const char *detail)
{
	loadgen_fail(l, &c->lc, k, what, detail);
}

/* Queues a command. */
static bool client_cmd(struct loadgen *l, struct client *c, const char *s)
{
	c->t_op_ns = now_ns();
	if (im_of(l)->o->sc != SC_LOGIN) /* login: one deadline for the whole cycle */
		loadgen_deadline(l, &c->lc);
	return loadgen_send(l, &c->lc, s, strlen(s));
}

/* ---- loadgen's callbacks ---- */

static void cb_start(struct loadgen *l, struct loadgen_conn *lc)
{
	struct client *c = cl_of(lc);
	c->step = ST_GREETING;
	c->line_len = 0;
	c->lit_left = 0;
	c->exists = c->fetched = 0;
	c->tag = 0;
	if (im_of(l)->o->sc == SC_IDLE)
		im_of(l)->establishing++;
}

static void cb_release(struct loadgen *l, struct loadgen_conn *lc)
{
	struct imap *im = im_of(l);
	if (im->o->sc == SC_IDLE && lc->phase != LG_HOLD && im->establishing > 0)
		im->establishing--;
}

/* A login cycle ended well (LOGOUT answered, close_notify sent). */
static void cb_done(struct loadgen *l, struct loadgen_conn *lc)
{
	struct client *c = cl_of(lc);
	struct imap *im = im_of(l);
	if (im->o->sc == SC_LOGIN || im->o->sc == SC_SYNC) {
		loadgen_record(l, lc->t_start_ns);
		im->res->flags_fetched += c->fetched;
		im->res->exists_sum += c->exists;
	}
}

/* ---- the IMAP conversation ---- */

static void next_cmd(struct loadgen *l, struct client *c, enum step st, const char *fmt,
		     const char *arg1, const char *arg2)
{
	char cmd[512];
	c->tag++;
	int n = snprintf(cmd, sizeof(cmd), "a%" PRIu32 " ", c->tag);
	snprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, arg1, arg2);
	c->step = st;
	if (!client_cmd(l, c, cmd))
		client_fail(l, c, LG_ERR_OTHER, "queueing a command failed", NULL);
}

static void send_login(struct loadgen *l, struct client *c)
{
	char user[256];
	snprintf(user, sizeof(user), im_of(l)->o->user_fmt, c->user + 1);
	next_cmd(l, c, ST_LOGIN, "LOGIN \"%s\" \"%s\"\r\n", user, im_of(l)->o->pass);
}

static void send_fetch_body(struct loadgen *l, struct client *c)
{
	char n[16];
	snprintf(n, sizeof(n), "%u", im_of(l)->o->msg);
	next_cmd(l, c, ST_BODY, "FETCH %s BODY.PEEK[]\r\n", n, NULL);
}

static void send_logout(struct loadgen *l, struct client *c)
{
	next_cmd(l, c, ST_LOGOUT, "LOGOUT\r\n", NULL, NULL);
}

/* After the tagged OK of the command of step c->step. */
static void step_ok(struct loadgen *l, struct client *c)
{
	const struct opts *o = im_of(l)->o;
	switch (c->step) {
	case ST_LOGIN:
		next_cmd(l, c, ST_SELECT, "SELECT \"%s\"\r\n", o->mailbox, NULL);
		return;
	case ST_SELECT:
		if (o->sc == SC_LOGIN) {
			next_cmd(l, c, ST_FLAGS, "FETCH 1:* (FLAGS)\r\n", NULL, NULL);
		} else if (o->sc == SC_SYNC) {
			next_cmd(l, c, ST_SYNC, SYNC_FETCH, NULL, NULL);
		} else if (o->sc == SC_FETCH) {
			if (c->exists < o->msg) {
				client_fail(l, c, LG_ERR_BAD_REPLY,
					    "the mailbox has fewer messages than --msg", NULL);
				return;
			}
			if (l->t_start_ns == 0)
				l->t_start_ns = now_ns();
			send_fetch_body(l, c);
		} else {
			next_cmd(l, c, ST_IDLE, "IDLE\r\n", NULL, NULL);
		}
		return;
	case ST_FLAGS:
	case ST_SYNC:
		if (c->fetched != c->exists) {
			char d[64];
			snprintf(d, sizeof(d), "%" PRIu64 " FETCH for %" PRIu64 " EXISTS", c->fetched,
				 c->exists);
			client_fail(l, c, LG_ERR_BAD_REPLY, "FETCH 1:* ", d);
			return;
		}
		send_logout(l, c);
		return;
	case ST_BODY:
		loadgen_record(l, c->t_op_ns);
		if (l->stopping || (o->max_ops && l->ops >= o->max_ops)) {
			l->stopping = true;
			send_logout(l, c);
		} else {
			send_fetch_body(l, c);
		}
		return;
	case ST_LOGOUT:
		loadgen_close(l, &c->lc);
		return;
	default:
		return;
	}
}

static void held(struct loadgen *l, struct client *c)
{
	loadgen_hold(l, &c->lc);
	im_of(l)->establishing--;
	if (!c->warmup)
		loadgen_record(l, c->lc.t_start_ns);
}

/* One complete response line (literals skipped). */
static void on_line(struct loadgen *l, struct client *c, const char *s, size_t n)
{
	const struct opts *o = im_of(l)->o;
	if (c->step == ST_GREETING) {
		if (n >= 4 && memcmp(s, "* OK", 4) == 0) {
			if (o->sc == SC_IDLE && !o->idle_login)
				held(l, c);
			else
				send_login(l, c);
		} else {
			client_fail(l, c, LG_ERR_BAD_REPLY, "greeting: ", s);
		}
		return;
	}
	if (n >= 2 && s[0] == '*' && s[1] == ' ') {
		char *end;
		unsigned long long v = strtoull(s + 2, &end, 10);
		if (end != s + 2) {
			if (strncasecmp(end, " EXISTS", 7) == 0)
				c->exists = v;
			else if (strncasecmp(end, " FETCH", 6) == 0 &&
				 (c->step == ST_FLAGS || c->step == ST_SYNC))
				c->fetched++;
		} else if (strncasecmp(s + 2, "BYE", 3) == 0 && c->step != ST_LOGOUT) {
			client_fail(l, c, LG_ERR_CLOSED, "", s);
		}
		return;
	}
	if (n >= 1 && s[0] == '+') {
		if (c->step == ST_IDLE)
			held(l, c);
		else
			client_fail(l, c, LG_ERR_BAD_REPLY, "unexpected continuation: ", s);
		return;
	}
	char *rest;
	if (n >= 3 && s[0] == 'a' && strtoul(s + 1, &rest, 10) == c->tag && rest != s + 1 &&
	    *rest == ' ') {
		rest++;
		if (strncasecmp(rest, "OK", 2) == 0)
			step_ok(l, c);
		else if (strncasecmp(rest, "NO", 2) == 0)
			client_fail(l, c, LG_ERR_NO, "", s);
		else
			client_fail(l, c, LG_ERR_BAD, "", s);
		return;
	}
	client_fail(l, c, LG_ERR_BAD_REPLY, "", s);
}

/* loadgen's data callback: feeds plaintext to the response parser, until
 * the client fails (and perhaps restarts) on the way. */
static void cb_data(struct loadgen *l, struct loadgen_conn *lc, const uint8_t *p, size_t n)
{
	struct client *c = cl_of(lc);
	while (n > 0) {
		if (c->lit_left) {
			size_t k = n < c->lit_left ? n : (size_t)c->lit_left;
			c->lit_left -= k;
			if (c->step == ST_BODY || c->step == ST_SYNC)
				im_of(l)->res->body_bytes += k;
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
		uint32_t gen = lc->gen;
		on_line(l, c, c->line, len);
		if (!loadgen_alive(lc, gen))
			return; /* failed, perhaps restarted */
	}
}

static const struct loadgen_ops imap_ops = {
	.start = cb_start,
	.data = cb_data,
	.done = cb_done,
	.release = cb_release,
};

/* ---- the run ---- */

static bool nothing_establishing(struct loadgen *l)
{
	return im_of(l)->establishing == 0;
}

static bool establishing_at_target(struct loadgen *l)
{
	return im_of(l)->establishing <= im_of(l)->target;
}

static bool hold_over(struct loadgen *l)
{
	return now_ns() >= l->end_ns;
}

/* idle: opens the connections --ramp at a time. */
static bool idle_open(struct loadgen *l)
{
	struct imap *im = im_of(l);
	const struct opts *o = im->o;
	/* The warm-up connection first, alone. */
	struct client *w = cl_of(loadgen_conn(l, 0));
	w->warmup = true;
	loadgen_start(l, &w->lc);
	if (!loadgen_pump(l, nothing_establishing) || w->lc.phase != LG_HOLD) {
		fprintf(stderr, "imapload: the warm-up connection failed (%s)\n", l->last_err);
		return false;
	}
	usleep(o->settle_ms * 1000u);
	im->res->mem0 = bench_servers_mem(&o->srv);
	l->t_start_ns = now_ns();
	unsigned next = 1;
	while (next < l->nconns) {
		while (next < l->nconns && im->establishing < o->ramp)
			loadgen_start(l, loadgen_conn(l, next++));
		/* until half the window is free again */
		im->target = o->ramp / 2;
		if (!loadgen_pump(l, establishing_at_target))
			return false;
	}
	loadgen_pump(l, nothing_establishing);
	usleep(o->settle_ms * 1000u);
	im->res->mem1 = bench_servers_mem(&o->srv);
	unsigned n = 0;
	for (unsigned i = 1; i < l->nconns; i++)
		n += loadgen_conn(l, i)->phase == LG_HOLD;
	im->res->idle_conns = n;
	return true;
}

/* Runs the scenario; l is left for the report (loadgen_destroy after). */
static void load_run(const struct opts *o, struct result *res, struct loadgen *l,
		     struct loadgen_cfg *cfg, struct imap *im)
{
	*im = (struct imap){ .o = o, .res = res };
	*cfg = (struct loadgen_cfg){
		.prog = "imapload", .host = o->host, .port = o->port, .src_addrs = o->src_addrs,
		.tls = o->tls, .nconns = o->sc == SC_IDLE ? o->clients + 1 : o->clients,
		.conn_size = sizeof(struct client), .timeout_ms = o->timeout_ms, .ops = &imap_ops,
		.user = im,
	};
	if (loadgen_init(l, cfg) < 0) {
		res->failed = true;
		return;
	}
	for (unsigned i = 0; i < l->nconns; i++)
		cl_of(loadgen_conn(l, i))->user = i % o->users;
	l->restart = o->sc != SC_IDLE;
	l->stop_at_end = o->sc != SC_IDLE;
	if (o->sc == SC_LOGIN || o->sc == SC_SYNC)
		l->max_launch = o->max_ops;
	uint64_t t0 = now_ns();
	if (o->sc == SC_IDLE) {
		/* establishing may take a while with a slow server */
		l->end_ns = UINT64_MAX;
		l->hard_end_ns = t0 + (uint64_t)(o->duration_s * 1e9) +
				 (uint64_t)o->timeout_ms * 1000000u * 4;
		loadgen_arm_tick(l);
		if (!idle_open(l)) {
			res->failed = true;
		} else {
			l->end_ns = now_ns() + (uint64_t)(o->hold_s * 1e9);
			l->hard_end_ns = l->end_ns + 1000000000u;
			loadgen_pump(l, hold_over);
		}
	} else {
		l->end_ns = t0 + (uint64_t)(o->duration_s * 1e9);
		l->hard_end_ns = l->end_ns + (uint64_t)o->timeout_ms * 1000000u + 1000000000u;
		for (unsigned i = 0; i < l->nconns; i++)
			loadgen_start(l, loadgen_conn(l, i));
		if (o->sc == SC_LOGIN || o->sc == SC_SYNC)
			l->t_start_ns = t0;
		loadgen_arm_tick(l);
		loadgen_pump(l, loadgen_all_done);
	}
	if (l->failed)
		res->failed = true;
}

/* ---- report ---- */

static void report(const struct opts *o, const struct loadgen *l, const struct result *r,
		   const struct cpu_sample *cpu, const struct cpu_sample *self, double other_pct)
{
	FILE *out = o->json ? stderr : stdout;
	double secs = loadgen_seconds(l);
	double ops = l->ops ? (double)l->ops : 1;
	const char *unit = o->sc == SC_LOGIN ? "cycles" : o->sc == SC_FETCH ? "fetches"
			 : o->sc == SC_SYNC ? "syncs" : "conns";
	fprintf(out, "%s %s:%s%s clients %u\n", scenario_name[o->sc], o->host, o->port,
		o->tls ? " (TLS)" : "", o->clients);
	fprintf(out, "  %-11s %" PRIu64 " in %.2f s = %.1f/s\n", unit, l->ops, secs,
		secs > 0 ? (double)l->ops / secs : 0);
	loadgen_print_lat_errors(l, out);
	if (o->sc == SC_LOGIN)
		fprintf(out, "  messages    %.1f FLAGS per cycle\n", (double)r->flags_fetched / ops);
	if (o->sc == SC_SYNC && r->flags_fetched) {
		fprintf(out, "  messages    %.1f per sync, %.0f header bytes each\n",
			(double)r->flags_fetched / ops, (double)r->body_bytes / (double)r->flags_fetched);
		if (cpu->ok)
			fprintf(out, "  server cpu  %.2f us per message\n",
				(double)cpu->total_us / (double)r->flags_fetched);
	}
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
	       "\"ops\":%" PRIu64 ",\"seconds\":%.3f,\"ops_per_s\":%.1f",
	       scenario_name[o->sc], o->host, o->port, o->tls ? "true" : "false", o->clients, l->ops,
	       secs, secs > 0 ? (double)l->ops / secs : 0);
	loadgen_json_lat_errors(l, stdout);
	if (cpu->ok && o->sc != SC_IDLE)
		printf(",\"server_cpu_us_per_op\":%.3f,\"server_user_us_per_op\":%.3f,"
		       "\"server_sys_us_per_op\":%.3f", (double)cpu->total_us / ops,
		       (double)cpu->user_us / ops, (double)cpu->sys_us / ops);
	if (o->sc == SC_LOGIN)
		printf(",\"flags_per_cycle\":%.2f", (double)r->flags_fetched / ops);
	if (o->sc == SC_SYNC && r->flags_fetched) {
		printf(",\"messages_per_sync\":%.1f,\"header_bytes\":%" PRIu64,
		       (double)r->flags_fetched / ops, r->body_bytes);
		if (cpu->ok)
			printf(",\"server_cpu_us_per_msg\":%.3f",
			       (double)cpu->total_us / (double)r->flags_fetched);
	}
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
		"usage: imapload -s login|fetch|idle|sync [options]\n"
		"  sync: LOGIN, SELECT, UID FETCH 1:* of the header fields Thunderbird syncs,\n"
		"        LOGOUT; one operation is one such cycle\n"
		"  -H, --host ADDR        server (127.0.0.1)\n"
		"  -p, --port PORT        server port (143)\n"
		"      --tls              implicit TLS (993)\n"
		"  -c, --clients N        concurrent clients; idle: connections (16; fetch, sync 1; idle 100)\n"
		"  -d, --duration SECS    login/fetch: no new cycle or FETCH after SECS (5)\n"
		"  -n, --max-ops N        login, sync: cycles; fetch: FETCHes (none)\n"
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
			else if (strcmp(optarg, "sync") == 0)
				o.sc = SC_SYNC;
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
	if (!o.clients)
		o.clients = o.sc == SC_IDLE ? 100 : o.sc == SC_FETCH || o.sc == SC_SYNC ? 1 : 16;
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
	if (o.tls && wolfSSL_Init() != WOLFSSL_SUCCESS)
		return 1;

	struct bench_meter m;
	bench_meter_start(&m, &o.srv);
	if ((o.srv.npids || o.srv.ncgroups) && !m.s0.ok) {
		fprintf(stderr, "imapload: cannot read the server's CPU time\n");
		return 1;
	}
	struct result *r = calloc(1, sizeof(*r));
	struct loadgen *l = calloc(1, sizeof(*l));
	struct loadgen_cfg cfg;
	struct imap im;
	if (!r || !l)
		return 1;
	load_run(&o, r, l, &cfg, &im);
	struct cpu_sample cpu, self;
	double other;
	bench_meter_stop(&m, &o.srv, &cpu, &self, &other);
	int rc = r->failed ? 1 : 0;
	if (l->io_uring_unavailable) {
		fprintf(stderr, "imapload: io_uring unavailable: skipped\n");
		rc = EXIT_SKIP;
	} else {
		report(&o, l, r, &cpu, &self, other);
	}
	loadgen_destroy(l);
	free(l);
	free(r);
	if (o.tls)
		wolfSSL_Cleanup();
	return rc;
bad:
	fprintf(stderr, "imapload: bad value for -%c: %s\n", ch < 256 ? ch : '-',
		optarg ? optarg : "");
	usage(stderr);
	return 1;
}
