/* store_bench.c - durable appends per second through the store.
 *
 * For each message size (4 KiB, 64 KiB, 1 MiB) and number of concurrent
 * writers (1, 64) it appends to one folder for a fixed time, with group
 * commit (the store's default: one fdatasync per file per loop tick) and
 * with one fsync per message (cfg.no_group_commit, the baseline a
 * one-fsync-per-message server pays), interleaved, and prints the median
 * of several runs. Every counted append was acknowledged, i.e. durable.
 *
 *     store_bench [--dir DIR] [--runs N] [--secs S] [--only SIZE,WRITERS]
 *
 * DIR must be on the file system being measured (default: /var/tmp). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/store.h"

enum { MAX_WRITERS = 64, CHUNK = 16384 };

struct writer {
	struct bench *b;
	struct store_append *a;
	size_t off;
	bool busy;
};

struct bench {
	struct loop *loop;
	struct store_folder *f;
	const char *msg;
	size_t size;
	double end;
	long done, failed;
	int active;
	struct writer w[MAX_WRITERS];
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void w_start(struct writer *w);

static void w_done(void *arg, int res, uint32_t uid)
{
	struct writer *w = arg;

	(void)uid;
	w->a = NULL;
	if (res == 0)
		w->b->done++;
	else
		w->b->failed++;
	if (now() < w->b->end && res == 0)
		w_start(w);
	else
		w->b->active--;
}

static void w_push(void *arg)
{
	struct writer *w = arg;
	struct bench *b = w->b;

	while (w->off < b->size) {
		size_t k = b->size - w->off < CHUNK ? b->size - w->off : CHUNK;
		ssize_t n = store_append_write(w->a, span_make(b->msg + w->off, k));
		if (n < 0) {
			fprintf(stderr, "write: %s\n", strerror((int)-n));
			exit(1);
		}
		w->off += (size_t)n;
		if ((size_t)n < k)
			return;
	}
	store_append_commit(w->a, SPAN_LIT("structure"), w_done, w);
}

static void w_start(struct writer *w)
{
	w->off = 0;
	if (store_append_begin(w->b->loop, &w->b->f, 1, time(NULL), 0, NULL, 0, w_push, w, &w->a)) {
		fprintf(stderr, "append_begin failed\n");
		exit(1);
	}
	w_push(w);
}

static bool flag;
static void *ptr;
static int res_;
static void on_user(void *arg, int res, struct store_user *u) { (void)arg; res_ = res; ptr = u; flag = true; }
static void on_folder(void *arg, int res, struct store_folder *f) { (void)arg; res_ = res; ptr = f; flag = true; }

/* One timed run; returns durable appends per second. */
static double run(const char *base, size_t size, int writers, bool group, double secs, const char *msg)
{
	char dir[512], cmd[600];
	struct store_config cfg = { .no_group_commit = !group };
	struct store *st;
	struct store_user *u;
	struct bench b = { .msg = msg, .size = size };
	double t0, t1;
	bool all = false;

	snprintf(dir, sizeof(dir), "%s/ringmail-store-bench-%d", base, (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		exit(1);
	cfg.data_dir = dir;
	if (loop_new_standalone(&b.loop) || store_new(&cfg, &st)) {
		fprintf(stderr, "cannot start (io_uring?)\n");
		exit(77);
	}
	flag = false;
	store_user_open(st, b.loop, "bench@example.com", on_user, NULL);
	loop_run_until(b.loop, &flag, 10000);
	u = ptr;
	flag = false;
	store_folder_open(u, b.loop, "INBOX", on_folder, NULL);
	loop_run_until(b.loop, &flag, 10000);
	b.f = ptr;
	if (res_) {
		fprintf(stderr, "open: %s\n", strerror(-res_));
		exit(1);
	}
	t0 = now();
	b.end = t0 + secs;
	b.active = writers;
	for (int i = 0; i < writers; i++) {
		b.w[i].b = &b;
		w_start(&b.w[i]);
	}
	while (!all) {
		loop_run_until(b.loop, &all, 50);
		all = b.active == 0;
	}
	t1 = now();
	if (b.failed)
		fprintf(stderr, "%ld appends failed\n", b.failed);
	store_folder_close(&b.f);
	store_user_close(&u);
	store_free(&st);
	all = false;
	loop_run_until(b.loop, &all, 10); /* submit the queued closes */
	loop_free(&b.loop);
	if (system(cmd) != 0)
		exit(1);
	return (double)b.done / (t1 - t0);
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	const char *dir = "/var/tmp";
	int runs = 5;
	double secs = 1.0;
	const char *only = NULL; /* "SIZE,WRITERS": one row */
	static const size_t sizes[] = { 4096, 65536, 1 << 20 };
	static const int writers[] = { 1, 64 };
	char *msg;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--secs") && i + 1 < argc)
			secs = atof(argv[++i]);
		else if (!strcmp(argv[i], "--only") && i + 1 < argc)
			only = argv[++i];
		else {
			fprintf(stderr, "usage: store_bench [--dir DIR] [--runs N] [--secs S] [--only SIZE,WRITERS]\n");
			return 2;
		}
	}
	if (runs < 1 || runs > 99)
		runs = 5;
	msg = malloc(1 << 20);
	for (size_t i = 0; i < (1 << 20); i++)
		msg[i] = (i % 78 == 77) ? '\n' : (char)('a' + i % 26);
	memcpy(msg, "Subject: bench\r\n\r\n", 18);

	run(dir, 4096, 8, true, 0.3, msg); /* warm-up: first directory creation, page cache */
	printf("durable appends/s, median of %d runs x %.1f s, dir %s\n", runs, secs, dir);
	printf("%-8s %-7s %14s %14s %7s\n", "size", "writers", "group-commit", "fsync/msg", "ratio");
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
		for (size_t w = 0; w < sizeof(writers) / sizeof(writers[0]); w++) {
			double g[100], o[100];
			char row[64];
			snprintf(row, sizeof(row), "%zu,%d", sizes[s], writers[w]);
			if (only && strcmp(only, row) != 0)
				continue;
			/* interleaved, so drift in the disk hits both alike */
			for (int r = 0; r < runs; r++) {
				g[r] = run(dir, sizes[s], writers[w], true, secs, msg);
				o[r] = run(dir, sizes[s], writers[w], false, secs, msg);
			}
			qsort(g, (size_t)runs, sizeof(double), cmp_d);
			qsort(o, (size_t)runs, sizeof(double), cmp_d);
			printf("%-8zu %-7d %14.0f %14.0f %6.2fx\n", sizes[s], writers[w], g[runs / 2],
			       o[runs / 2], o[runs / 2] > 0 ? g[runs / 2] / o[runs / 2] : 0);
			fflush(stdout);
		}
	free(msg);
	return 0;
}
