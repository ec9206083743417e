/* test_queue.c - the outbound queue's spool (store/queue.c): a message
 * written in pieces through a standalone loop's ring, then loaded back
 * as metadata; the state file text round trip. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/queue.h"

static struct loop *loop;
static struct queue *q;
static char dir[64];

struct got {
	bool done;
	int res;
	char id[QUEUE_ID_MAX];
	struct queue_entry *e; /* from on_new */
	unsigned ready;
};

static void on_new(void *arg, struct loop *l, struct queue_entry *e)
{
	(void)l;
	struct got *g = arg;
	queue_entry_free(g->e);
	g->e = e;
}

static void on_done(void *arg, int res, const char *id)
{
	struct got *g = arg;
	g->done = true;
	g->res = res;
	snprintf(g->id, sizeof(g->id), "%s", id);
}

static void on_ready(void *arg)
{
	struct got *g = arg;
	g->ready++;
}

static void setup(void)
{
	int r = loop_new_standalone(&loop);
	if (r < 0)
		cr_skip_test("io_uring unavailable: %s", strerror(-r));
	snprintf(dir, sizeof(dir), "/tmp/ringmail-queue-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	cr_assert_eq(queue_new(dir, 1, &q), 0);
}

static void teardown(void)
{
	queue_free(&q);
	if (loop)
		loop_free(&loop);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
}

static void collect(void *arg, struct queue_entry *e)
{
	struct queue_entry **out = arg;
	queue_entry_free(*out);
	*out = e;
}

static uint8_t *read_file(const char *name, size_t *len_r)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/queue/%s", dir, name);
	FILE *f = fopen(path, "rb");
	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc((size_t)n + 1);
	cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len_r = (size_t)n;
	return b;
}

TestSuite(queue, .init = setup, .fini = teardown, .timeout = 60);

/* 1 MiB in 1000-byte pieces (many times the 64 KiB buffer), a DKIM field
 * at commit: on disk the message sits at body_off, the field after it,
 * and a load finds the same metadata as the runner was handed. */
Test(queue, spool_streams_and_loads_back)
{
	struct got g = { 0 };
	queue_set_on_new(q, on_new, &g);
	struct queue_rcpt_in rin[2] = {
		{ .addr = "bob@remote.example", .notify = QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY,
		  .orcpt = "rfc822;bob@remote.example" },
		{ .addr = "carol@remote.example" },
	};
	struct queue_env env = { .from = "alice@example.com", .envid = "env+2Bid",
				 .ret = QUEUE_RET_HDRS, .rcpts = rin, .nrcpts = 2 };
	struct queue_spool *sp;
	cr_assert_eq(queue_spool_begin(q, loop, &env, on_ready, &g, &sp), 0);
	size_t total = 1024 * 1024;
	uint8_t *msg = malloc(total);
	for (size_t i = 0; i < total; i++)
		msg[i] = (uint8_t)("abcdefghijklmnopqrstuvwxyz\r\n"[i % 28]);
	bool never = false;
	for (size_t off = 0; off < total; off += 1000) {
		size_t n = total - off < 1000 ? total - off : 1000;
		int rc = queue_spool_write(sp, msg + off, n);
		cr_assert_geq(rc, 0);
		if (rc == 1) {
			/* Wait as the session does until the spool can take more. */
			unsigned before = g.ready;
			for (int k = 0; k < 1000 && g.ready == before; k++)
				(void)loop_run_until(loop, &never, 5);
			cr_assert_gt(g.ready, before, "the spool never called back");
		}
	}
	const char *dkim = "DKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n\tb=xyz\r\n";
	cr_assert_eq(queue_spool_commit(sp, dkim, on_done, &g), 0);
	cr_assert_eq(loop_run_until(loop, &g.done, 20000), 0);
	cr_assert_eq(g.res, 0);
	cr_assert_gt(g.ready, 0, "1 MiB never filled the 64 KiB buffer");
	cr_assert_not_null(g.e);
	cr_assert_str_eq(g.e->id, g.id);
	cr_assert_eq(g.e->body_len, total);
	cr_assert_str_eq(g.e->dkim, dkim);

	char name[QUEUE_ID_MAX + 8];
	snprintf(name, sizeof(name), "%s.msg", g.id);
	size_t flen;
	uint8_t *file = read_file(name, &flen);
	cr_assert_eq(flen, g.e->body_off + total + strlen(dkim));
	cr_assert_eq(memcmp(file, "RMQ2 ", 5), 0);
	cr_assert_eq(memcmp(file + g.e->body_off, msg, total), 0);
	cr_assert_eq(memcmp(file + g.e->body_off + total, dkim, strlen(dkim)), 0);

	struct queue_entry *e = NULL;
	cr_assert_eq(queue_scan(q, collect, &e), 1);
	cr_assert_not_null(e);
	cr_assert_str_eq(e->id, g.id);
	cr_assert_str_eq(e->from, "alice@example.com");
	cr_assert_str_eq(e->envid, "env+2Bid");
	cr_assert_eq(e->ret, QUEUE_RET_HDRS);
	cr_assert_eq(e->nrcpts, 2);
	cr_assert_str_eq(e->rcpts[0].addr, "bob@remote.example");
	cr_assert_eq(e->rcpts[0].notify, QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY);
	cr_assert_str_eq(e->rcpts[0].orcpt, "rfc822;bob@remote.example");
	cr_assert_str_eq(e->rcpts[1].addr, "carol@remote.example");
	cr_assert_null(e->rcpts[1].orcpt);
	cr_assert_eq(e->body_off, g.e->body_off);
	cr_assert_eq(e->body_len, total);
	cr_assert_str_eq(e->dkim, dkim);
	queue_entry_free(e);
	queue_entry_free(g.e);
	free(file);
	free(msg);
}

/* An aborted spool leaves nothing a restart would deliver. */
Test(queue, abort_leaves_nothing)
{
	struct got g = { 0 };
	queue_set_on_new(q, on_new, &g);
	struct queue_rcpt_in rin = { .addr = "bob@remote.example" };
	struct queue_env env = { .from = "", .rcpts = &rin, .nrcpts = 1 };
	struct queue_spool *sp;
	cr_assert_eq(queue_spool_begin(q, loop, &env, NULL, NULL, &sp), 0);
	cr_assert_geq(queue_spool_write(sp, "Subject: x\r\n\r\nhello\r\n", 21), 0);
	queue_spool_abort(&sp);
	cr_assert_null(sp);
	bool never = false;
	(void)loop_run_until(loop, &never, 300);
	struct queue_entry *e = NULL;
	cr_assert_eq(queue_scan(q, collect, &e), 0);
	cr_assert_null(g.e);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s/queue)\"", dir);
	cr_assert_eq(system(cmd), 0, "files left in the queue directory");
}

/* A bad address or a non-hex id is refused before anything is written. */
Test(queue, bad_envelope_refused)
{
	struct queue_rcpt_in bad = { .addr = "bob @remote.example" };
	struct queue_env env = { .from = "a@b", .rcpts = &bad, .nrcpts = 1 };
	struct queue_spool *sp = NULL;
	cr_assert_eq(queue_spool_begin(q, loop, &env, NULL, NULL, &sp), -EINVAL);
	struct queue_rcpt_in ok = { .addr = "bob@remote.example" };
	env.rcpts = &ok;
	env.id = "../etc";
	cr_assert_eq(queue_spool_begin(q, loop, &env, NULL, NULL, &sp), -EINVAL);
	env.id = NULL;
	env.nrcpts = 0;
	cr_assert_eq(queue_spool_begin(q, loop, &env, NULL, NULL, &sp), -EINVAL);
}

Test(queue, state_text_round_trip)
{
	struct queue_rcpt r[3] = {
		{ .addr = "a@x", .state = QUEUE_RCPT_SENT, .attempts = 1, .next_ms = 5 },
		{ .addr = "b@x", .state = QUEUE_RCPT_BOUNCED, .attempts = 3, .next_ms = 7 },
		{ .addr = "c@x", .state = QUEUE_RCPT_PENDING, .attempts = 2, .next_ms = 1234567890123,
		  .delay_sent = true },
	};
	snprintf(r[1].last, sizeof(r[1].last), "550 5.1.1 no\r\nsuch user");
	snprintf(r[2].last, sizeof(r[2].last), "451 4.4.1 later");
	struct queue_entry e = { .rcpts = r, .nrcpts = 3 };
	char buf[4096];
	size_t n = queue_state_format(&e, buf, sizeof(buf));
	struct queue_rcpt back[3] = { { .addr = "a@x" }, { .addr = "b@x" }, { .addr = "c@x" } };
	struct queue_entry e2 = { .rcpts = back, .nrcpts = 3 };
	cr_assert_eq(queue_state_parse(&e2, buf, n), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(back[i].state, r[i].state);
		cr_assert_eq(back[i].attempts, r[i].attempts);
		cr_assert_eq(back[i].next_ms, r[i].next_ms);
		cr_assert_eq(back[i].delay_sent, r[i].delay_sent);
	}
	cr_assert_str_eq(back[1].last, "550 5.1.1 no  such user"); /* one line */
	cr_assert_str_eq(back[2].last, "451 4.4.1 later");
	/* A torn last line is ignored. */
	struct queue_rcpt t[1] = { { .addr = "a@x" } };
	struct queue_entry e3 = { .rcpts = t, .nrcpts = 1 };
	cr_assert_eq(queue_state_parse(&e3, "0 1 4 99", 8), 0);
	cr_assert_eq(t[0].state, QUEUE_RCPT_PENDING);
}
