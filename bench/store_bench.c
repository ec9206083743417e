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
 *     store_bench --open N[,N...] [--dir DIR] [--runs N]
 *     store_bench --rewrite N[,N...] [--dir DIR] [--runs N]
 *
 * --open: builds a folder of N small messages once (64 writers, group
 * commit, with a structure blob like delivery stores; every 10th message
 * then gets \Seen and every 50th is expunged, so the log holds more than
 * appends), then times store_new .. store_folder_open on a fresh store,
 * wall and CPU, with the checkpoint as the store left it and with the
 * checkpoint removed (the whole log replayed). Before each open the page
 * cache is dropped when we may (root), else the figure is warm-cache and
 * says so ("cache"); a second open right after is the warm figure. Next
 * to it: read(2) from the page cache of the bytes an open cannot avoid:
 * the checkpoint (an open with it also reads the log after the
 * checkpoint's offset, less than checkpoint_bytes), or the whole log;
 * and the floor of an open that keeps the checkpoint's bytes in memory and
 * checks them: read(2) into a fresh buffer of its size, then CRC32C.
 * One JSON line
 * per N, medians of the runs.
 *
 * --rewrite: builds the same folder, then expunges three of every four
 * messages, so that most of the log is history; per run, from a copy of
 * that log (no checkpoint): a warm open (the whole log replayed), then on
 * an open folder one 2 KiB append alone and one made right after
 * store_rewrite_log() started (it waits for the rewrite), the rewrite's
 * wall time and process CPU, and a warm open of the rewritten log, next to
 * read(2) of it. One JSON line per N, medians of the runs.
 *
 * DIR must be on the file system being measured (default: /var/tmp). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/crc32c.h"
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
	struct span blob;
	double end;
	long done, failed;
	long target, started; /* --open build: stop after target appends */
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
	if (w->b->target ? w->b->started < w->b->target && res == 0
			 : now() < w->b->end && res == 0)
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
	store_append_commit(w->a, b->blob.len ? b->blob : SPAN_LIT("structure"), w_done, w);
}

static void w_start(struct writer *w)
{
	w->off = 0;
	w->b->started++;
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

/* ---- --open: time to open a large folder, with and without checkpoint */

static int ops_left;
static void on_op(void *arg, int res, uint64_t modseq)
{
	(void)arg; (void)modseq;
	if (res)
		res_ = res;
	ops_left--;
}


static void open_uf(struct store *st, struct loop *loop, struct store_user **u, struct store_folder **f)
{
	flag = false;
	store_user_open(st, loop, "bench@example.com", on_user, NULL);
	loop_run_until(loop, &flag, 60000);
	*u = ptr;
	flag = false;
	store_folder_open(*u, loop, "INBOX", on_folder, NULL);
	loop_run_until(loop, &flag, 600000);
	*f = ptr;
	if (res_) {
		fprintf(stderr, "open: %s\n", strerror(-res_));
		exit(1);
	}
}

static void on_done(void *arg, int res) { (void)arg; res_ = res; flag = true; }

static void close_all(struct loop **loop, struct store **st, struct store_user **u, struct store_folder **f)
{
	bool all = false;

	store_folder_close(f);
	store_user_close(u);
	store_free(st);
	loop_run_until(*loop, &all, 10);
	loop_free(loop);
}

/* Builds DIR with n messages; returns the folder directory (malloc'd). */
static char *build(const char *dir, long n, const char *msg, size_t size, bool *forced)
{
	struct store_config cfg = { .data_dir = dir };
	struct store *st;
	struct store_user *u;
	struct bench b = { .msg = msg, .size = size, .target = n, .end = 1e300 };
	char blob[320], cmd[700], *fdir = NULL;
	bool all = false;
	uint32_t *uids;
	size_t nu = 0;
	FILE *p;

	/* a structure blob of the size delivery stores for a plain
	 * multipart message: header offsets and part boundaries */
	for (size_t i = 0; i < sizeof(blob); i++)
		blob[i] = (char)(i * 7);
	b.blob = span_make(blob, sizeof(blob));
	if (loop_new_standalone(&b.loop) || store_new(&cfg, &st)) {
		fprintf(stderr, "cannot start (io_uring?)\n");
		exit(77);
	}
	open_uf(st, b.loop, &u, &b.f);
	b.active = n < 64 ? (int)n : 64;
	for (int i = 0; i < b.active; i++) {
		b.w[i].b = &b;
		w_start(&b.w[i]);
	}
	while (!all) {
		loop_run_until(b.loop, &all, 50);
		all = b.active == 0;
	}
	if (b.failed) {
		fprintf(stderr, "%ld appends failed\n", b.failed);
		exit(1);
	}
	/* flags on every 10th, expunge every 50th, in batches of 100 like a
	 * client's STORE/EXPUNGE */
	uids = malloc(sizeof(*uids) * (size_t)n);
	for (int pass = 0; pass < 2; pass++) {
		int every = pass ? 50 : 10;
		nu = 0;
		for (long uid = 1; uid <= b.done; uid++)
			if (uid % every == 0)
				uids[nu++] = (uint32_t)uid;
		for (size_t i = 0; i < nu; i += 100) {
			size_t k = nu - i < 100 ? nu - i : 100;
			ops_left = 1;
			if (pass)
				store_expunge(b.f, b.loop, uids + i, k, on_op, NULL);
			else
				store_flags(b.f, b.loop, uids + i, k, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, on_op, NULL);
			while (ops_left > 0) {
				all = false;
				loop_run_until(b.loop, &all, 50);
			}
			if (res_) {
				fprintf(stderr, "flags/expunge: %s\n", strerror(-res_));
				exit(1);
			}
		}
	}
	free(uids);
	snprintf(cmd, sizeof(cmd), "find '%s' -name log", dir);
	if ((p = popen(cmd, "r"))) {
		char line[600];
		if (fgets(line, sizeof(line), p)) {
			line[strcspn(line, "\n")] = 0;
			*strrchr(line, '/') = 0;
			fdir = strdup(line);
		}
		pclose(p);
	}
	if (!fdir) {
		fprintf(stderr, "no log under %s\n", dir);
		exit(1);
	}
	/* the store writes one every STORE_CHECKPOINT_DEFAULT log bytes; a
	 * folder too small for that gets one now, so both ways are measured */
	snprintf(cmd, sizeof(cmd), "%s/checkpoint", fdir);
	*forced = access(cmd, F_OK) != 0;
	if (*forced) {
		flag = false;
		store_checkpoint(b.f, b.loop, on_done, NULL);
		loop_run_until(b.loop, &flag, 60000);
		if (res_) {
			fprintf(stderr, "checkpoint: %s\n", strerror(-res_));
			exit(1);
		}
	}
	close_all(&b.loop, &st, &u, &b.f);
	return fdir;
}

static bool drop_caches(void)
{
	FILE *f;

	sync();
	if (!(f = fopen("/proc/sys/vm/drop_caches", "w")))
		return false;
	bool ok = fputs("3\n", f) >= 0;
	return fclose(f) == 0 && ok;
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void copy_file(const char *from, const char *to)
{
	char cmd[2600];
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
	if (system(cmd) != 0)
		exit(1);
}

/* One open from a fresh store object; wall and CPU seconds, messages. */
static void time_open(const char *dir, bool cold, double *wall, double *cpu, uint32_t *msgs)
{
	struct store_config cfg = { .data_dir = dir };
	struct loop *loop;
	struct store *st;
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status fs;
	double t0, c0;

	if (cold)
		drop_caches();
	t0 = now();
	c0 = cpu_now();
	if (loop_new_standalone(&loop) || store_new(&cfg, &st))
		exit(77);
	open_uf(st, loop, &u, &f);
	*wall = now() - t0;
	*cpu = cpu_now() - c0;
	store_folder_status(f, &fs);
	*msgs = fs.messages;
	close_all(&loop, &st, &u, &f);
}

/* read(2) of the files, warm: the bytes an open must at least go through */
static double time_read(const char *const *paths, size_t n)
{
	static char buf[1 << 20];
	double t0;

	for (int pass = 0; pass < 2; pass++) {
		t0 = now();
		for (size_t i = 0; i < n; i++) {
			FILE *f = fopen(paths[i], "r");
			if (!f)
				continue;
			int fd = fileno(f);
			while (read(fd, buf, sizeof(buf)) > 0)
				;
			fclose(f);
		}
	}
	return now() - t0;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_d);
	return v[n / 2];
}

/* The floor of an open that keeps the checkpoint's bytes (as the store
 * keeps its blob area) and checks them: read(2) of the whole file, warm,
 * into a fresh buffer of its size (faulted in huge pages where granted,
 * as the store's arena), then its CRC32C. Median of 3. */
static double time_read_fresh_crc(const char *path)
{
	double t[3];

	for (int k = 0; k < 3; k++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		struct stat sb;
		uint8_t *p;
		size_t got = 0;
		volatile uint32_t crc;

		if (fd < 0 || fstat(fd, &sb))
			exit(1);
		double t0 = now();
		p = mmap(NULL, (size_t)sb.st_size + 1, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			exit(1);
		(void)madvise(p, (size_t)sb.st_size + 1, MADV_HUGEPAGE);
		while (got < (size_t)sb.st_size) {
			ssize_t n = read(fd, p + got, (size_t)sb.st_size - got);
			if (n <= 0)
				exit(1);
			got += (size_t)n;
		}
		crc = crc32c(0, p, got);
		(void)crc;
		t[k] = now() - t0;
		munmap(p, (size_t)sb.st_size + 1);
		close(fd);
	}
	return median(t, 3);
}

static long fsize(const char *path)
{
	FILE *f = fopen(path, "r");
	long n = -1;
	if (f) {
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		fclose(f);
	}
	return n;
}

static int open_bench(const char *base, const char *list, int runs, const char *msg)
{
	bool cold = drop_caches();

	for (const char *s = list; *s; ) {
		long n = strtol(s, (char **)&s, 10);
		char dir[512], cmd[600], ck[1200], save[1200], logp[1200];
		double w[2][100], c[2][100], ww[2][100], wcpu[2][100], rd[2][100], rf[100];
		uint32_t msgs = 0;
		char *fdir;
		bool forced;

		if (*s == ',')
			s++;
		if (n <= 0)
			continue;
		snprintf(dir, sizeof(dir), "%s/ringmail-store-open-%ld-%d", base, n, (int)getpid());
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			return 1;
		double tb = now();
		/* 2 KiB messages: realistic enough for a log record, small enough
		 * that 300k fit any disk */
		fdir = build(dir, n, msg, 2048, &forced);
		fprintf(stderr, "built %ld messages in %.1f s\n", n, now() - tb);
		snprintf(ck, sizeof(ck), "%s/checkpoint", fdir);
		snprintf(save, sizeof(save), "%s/checkpoint.bench", dir);
		snprintf(logp, sizeof(logp), "%s/log", fdir);
		copy_file(ck, save);
		long ckb = fsize(save), logb = fsize(logp);
		for (int r = 0; r < runs; r++) {
			uint32_t m;
			/* interleaved, as the append rows */
			copy_file(save, ck);
			time_open(dir, cold, &w[0][r], &c[0][r], &msgs);
			time_open(dir, false, &ww[0][r], &wcpu[0][r], &m);
			unlink(ck);
			time_open(dir, cold, &w[1][r], &c[1][r], &m);
			unlink(ck); /* in case that open wrote one */
			time_open(dir, false, &ww[1][r], &wcpu[1][r], &m);
			if (m != msgs) {
				fprintf(stderr, "open without checkpoint: %u messages, with: %u\n", m, msgs);
				return 1;
			}
			const char *p2[] = { save, logp };
			rd[0][r] = time_read(p2, 1);
			rd[1][r] = time_read(p2 + 1, 1);
			rf[r] = time_read_fresh_crc(save);
		}
		copy_file(save, ck);
		double wc = median(w[0], runs), wn = median(w[1], runs);
		printf("{\"bench\":\"store-open\",\"n\":%ld,\"messages\":%u,\"log_bytes\":%ld,"
		       "\"checkpoint_bytes\":%ld,\"checkpoint\":\"%s\",\"cache\":\"%s\",\"runs\":%d,"
		       "\"ckpt_wall_ms\":%.2f,\"ckpt_cpu_ms\":%.2f,\"replay_wall_ms\":%.2f,"
		       "\"replay_cpu_ms\":%.2f,\"replay_over_ckpt\":%.2f,"
		       "\"warm_ckpt_wall_ms\":%.2f,\"warm_ckpt_cpu_ms\":%.2f,"
		       "\"warm_replay_wall_ms\":%.2f,\"warm_replay_cpu_ms\":%.2f,"
		       "\"read_ckpt_ms\":%.3f,\"read_log_ms\":%.3f,\"read_fresh_crc_ckpt_ms\":%.3f}\n",
		       n, msgs, logb, ckb, forced ? "forced" : "store's own", cold ? "cold" : "warm", runs, wc * 1e3,
		       median(c[0], runs) * 1e3, wn * 1e3, median(c[1], runs) * 1e3,
		       wc > 0 ? wn / wc : 0, median(ww[0], runs) * 1e3, median(wcpu[0], runs) * 1e3,
		       median(ww[1], runs) * 1e3, median(wcpu[1], runs) * 1e3, median(rd[0], runs) * 1e3, median(rd[1], runs) * 1e3,
		       median(rf, runs) * 1e3);
		fflush(stdout);
		free(fdir);
		if (system(cmd) != 0)
			return 1;
	}
	return 0;
}

/* ---- --rewrite: rewriting a log that is mostly history ------------------ */

static double append_at;   /* when the timed append was committed */
static double append_lat;  /* its latency, once acknowledged */
static void on_timed(void *arg, int res, uint32_t uid)
{
	(void)arg; (void)uid;
	if (res)
		res_ = res;
	append_lat = now() - append_at;
}

/* One 2 KiB append, committed now; on_timed sets append_lat when durable. */
static void timed_append(struct loop *loop, struct store_folder *f, const char *msg)
{
	struct store_append *a;

	append_lat = -1;
	if (store_append_begin(loop, &f, 1, time(NULL), 0, NULL, 0, NULL, NULL, &a) ||
	    store_append_write(a, span_make(msg, 2048)) != 2048) {
		fprintf(stderr, "timed append failed\n");
		exit(1);
	}
	append_at = now();
	store_append_commit(a, SPAN_LIT("structure"), on_timed, NULL);
}

static int rewrite_bench(const char *base, const char *list, int runs, const char *msg)
{
	for (const char *s = list; *s; ) {
		long n = strtol(s, (char **)&s, 10);
		char dir[512], cmd[600], hist[1200], logp[1200], ck[1200];
		double rw[100], rc[100], alone[100], during[100], ob[100], oa[100], rd[100];
		long logb = 0, loga = 0;
		uint32_t msgs = 0, m;
		char *fdir;
		bool forced;

		if (*s == ',')
			s++;
		if (n <= 0)
			continue;
		snprintf(dir, sizeof(dir), "%s/ringmail-store-rewrite-%ld-%d", base, n, (int)getpid());
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			return 1;
		fdir = build(dir, n, msg, 2048, &forced);
		snprintf(hist, sizeof(hist), "%s/log.bench", dir);
		snprintf(logp, sizeof(logp), "%s/log", fdir);
		snprintf(ck, sizeof(ck), "%s/checkpoint", fdir);
		{
			/* three of every four messages go, in batches of 1000; no
			 * automatic checkpoint or rewrite meanwhile */
			struct store_config cfg = { .data_dir = dir, .checkpoint_bytes = 1ull << 50 };
			struct loop *loop;
			struct store *st;
			struct store_user *u;
			struct store_folder *f;
			uint32_t *uids = malloc(sizeof(*uids) * 1000);
			size_t k = 0;
			if (loop_new_standalone(&loop) || store_new(&cfg, &st))
				exit(77);
			open_uf(st, loop, &u, &f);
			for (long uid = 1; uid <= n + 1; uid++) {
				if (uid <= n && uid % 4 == 0)
					continue;
				if (uid <= n)
					uids[k++] = (uint32_t)uid;
				if (k == 1000 || (uid == n + 1 && k)) {
					bool all = false;
					ops_left = 1;
					store_expunge(f, loop, uids, k, on_op, NULL);
					while (ops_left > 0)
						loop_run_until(loop, &all, 50);
					k = 0;
				}
			}
			free(uids);
			close_all(&loop, &st, &u, &f);
		}
		unlink(ck);
		copy_file(logp, hist);
		logb = fsize(hist);
		for (int r = 0; r < runs; r++) {
			struct store_config cfg = { .data_dir = dir, .checkpoint_bytes = 1ull << 50 };
			struct loop *loop;
			struct store *st;
			struct store_user *u;
			struct store_folder *f;
			double t0, c0;
			bool all = false;

			copy_file(hist, logp);
			unlink(ck);
			time_open(dir, false, &ob[r], &c0, &msgs); /* warm the cache */
			time_open(dir, false, &ob[r], &c0, &msgs);
			if (loop_new_standalone(&loop) || store_new(&cfg, &st))
				exit(77);
			open_uf(st, loop, &u, &f);
			/* an append on its own, then one made while the rewrite runs */
			timed_append(loop, f, msg);
			while (append_lat < 0)
				loop_run_until(loop, &all, 50);
			alone[r] = append_lat;
			flag = false;
			t0 = now();
			c0 = cpu_now();
			store_rewrite_log(f, loop, on_done, NULL);
			timed_append(loop, f, msg);
			while (!flag || append_lat < 0)
				loop_run_until(loop, &all, 50);
			rw[r] = now() - t0;
			rc[r] = cpu_now() - c0;
			during[r] = append_lat;
			if (res_ < 0) {
				fprintf(stderr, "rewrite: %s\n", strerror(-res_));
				return 1;
			}
			close_all(&loop, &st, &u, &f);
			loga = fsize(logp);
			unlink(ck);
			time_open(dir, false, &oa[r], &c0, &m); /* warm */
			time_open(dir, false, &oa[r], &c0, &m);
			if (m != msgs + 2) {
				fprintf(stderr, "after the rewrite: %u messages, before %u\n", m, msgs);
				return 1;
			}
			const char *p1[] = { logp };
			rd[r] = time_read(p1, 1);
		}
		printf("{\"bench\":\"store-rewrite\",\"n\":%ld,\"messages\":%u,\"runs\":%d,"
		       "\"log_bytes_before\":%ld,\"log_bytes_after\":%ld,"
		       "\"rewrite_wall_ms\":%.2f,\"rewrite_cpu_ms\":%.2f,"
		       "\"append_alone_ms\":%.2f,\"append_during_rewrite_ms\":%.2f,"
		       "\"open_before_ms\":%.2f,\"open_after_ms\":%.2f,\"read_log_after_ms\":%.3f}\n",
		       n, msgs, runs, logb, loga, median(rw, runs) * 1e3, median(rc, runs) * 1e3,
		       median(alone, runs) * 1e3, median(during, runs) * 1e3, median(ob, runs) * 1e3,
		       median(oa, runs) * 1e3, median(rd, runs) * 1e3);
		fflush(stdout);
		free(fdir);
		if (system(cmd) != 0)
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *dir = "/var/tmp";
	int runs = 5;
	double secs = 1.0;
	const char *only = NULL; /* "SIZE,WRITERS": one row */
	const char *open_n = NULL; /* --open N,N...: the open mode */
	const char *rewrite_n = NULL; /* --rewrite N,N...: the rewrite mode */
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
		else if (!strcmp(argv[i], "--open") && i + 1 < argc)
			open_n = argv[++i];
		else if (!strcmp(argv[i], "--rewrite") && i + 1 < argc)
			rewrite_n = argv[++i];
		else {
			fprintf(stderr, "usage: store_bench [--dir DIR] [--runs N] [--secs S] [--only SIZE,WRITERS]\n"
				"       store_bench --open N[,N...] [--dir DIR] [--runs N]\n"
				"       store_bench --rewrite N[,N...] [--dir DIR] [--runs N]\n");
			return 2;
		}
	}
	if (runs < 1 || runs > 99)
		runs = 5;
	msg = malloc(1 << 20);
	for (size_t i = 0; i < (1 << 20); i++)
		msg[i] = (i % 78 == 77) ? '\n' : (char)('a' + i % 26);
	memcpy(msg, "Subject: bench\r\n\r\n", 18);
	if (open_n || rewrite_n) {
		int rc = open_n ? open_bench(dir, open_n, runs, msg)
				: rewrite_bench(dir, rewrite_n, runs, msg);
		free(msg);
		return rc;
	}

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
