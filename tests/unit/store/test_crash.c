/* Crash safety: a child appends (several appends in flight, so group commit
 * batches them) and reports every acknowledged UID with the seed its bytes
 * were generated from; it expunges seven of every eight messages it got and
 * reports those expunges once acknowledged (a message whose expunge was
 * asked for may be gone without that), so that the folder's log is
 * mostly history and keeps being rewritten (store_rewrite_log, started on
 * its own). The parent SIGKILLs it at random moments, reopens the store and
 * checks that every acknowledged message not acknowledged as expunged is
 * there and byte-identical, that no acknowledged expunge came back, and
 * that every visible message is whole. Repeated for ROUNDS rounds on the
 * same data dir; the log must have been rewritten (a new STATE record) in
 * at least 5 of them. Exit 77
 * (skip) without io_uring. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/record.h"
#include "store/store.h"

enum { ROUNDS = 30, INFLIGHT = 8, APPEND_BUF = 16384 };

struct report {
	uint32_t uid;
	uint32_t seed;  /* EXPUNGED: the expunge of uid was acknowledged */
};

#define EXPUNGED 0xffffffffu

/* Message bytes from a seed: a header naming the seed, then a body whose
 * length (up to ~80 KiB: some beyond APPEND_BUF, in their own segment
 * files) and content follow from it. */
static size_t gen(uint32_t seed, char **out)
{
	uint32_t x = seed * 2654435761u + 1;
	size_t len = 200 + (x % 7 == 0 ? 20000 + x % 60000 : x % 3000);
	char *p = malloc(len + 1);
	int h = snprintf(p, len, "X-Seed: %u\r\n\r\n", seed);
	for (size_t i = (size_t)h; i < len; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (i % 64 == 63) ? '\n' : (char)('a' + (x >> 16) % 26);
	}
	*out = p;
	return len;
}

static int parse_seed(const char *p, size_t len, uint32_t *seed_r)
{
	/* The message bytes are not NUL-terminated: scan a bounded copy (sscanf
	 * on p itself read past the buffer; ASan caught it). */
	char head[32];
	unsigned s;
	size_t n = len < sizeof(head) - 1 ? len : sizeof(head) - 1;
	memcpy(head, p, n);
	head[n] = '\0';
	if (len < 12 || sscanf(head, "X-Seed: %u\r\n", &s) != 1)
		return -1;
	*seed_r = s;
	return 0;
}

/* ---- the child -------------------------------------------------------- */

struct slot {
	struct store_append *a;
	struct store_folder *f;
	char *msg;
	size_t len, off;
	uint32_t seed;
	bool busy, ready;
};

static int report_fd;
static uint32_t next_seed;
static struct loop *cl;

static void slot_start(struct slot *s);

static void expunged(void *arg, int res, uint64_t modseq)
{
	struct report r = { (uint32_t)(uintptr_t)arg, EXPUNGED };

	(void)modseq;
	if (res == 0 && write(report_fd, &r, sizeof(r)) != sizeof(r))
		_exit(3);
	if (res != 0)
		fprintf(stderr, "child: expunge failed: %s\n", strerror(-res));
}

static void slot_done(void *arg, int res, uint32_t uid)
{
	struct slot *s = arg;
	struct report r = { uid, s->seed };

	if (res == 0 && write(report_fd, &r, sizeof(r)) != sizeof(r))
		_exit(3);
	if (res != 0)
		fprintf(stderr, "child: append failed: %s\n", strerror(-res));
	if (res == 0 && uid % 8)
		store_expunge(s->f, cl, &uid, 1, expunged, (void *)(uintptr_t)uid);
	free(s->msg);
	s->busy = false;
	s->a = NULL;
	slot_start(s);
}

static void slot_push(struct slot *s)
{
	while (s->off < s->len) {
		size_t k = s->len - s->off < 5000 ? s->len - s->off : 5000;
		ssize_t n = store_append_write(s->a, span_make(s->msg + s->off, k));
		if (n < 0)
			_exit(4);
		s->off += (size_t)n;
		if ((size_t)n < k)
			return; /* wait for on_ready */
	}
	store_append_commit(s->a, SPAN_LIT("blob"), slot_done, s);
}

static void slot_ready(void *arg)
{
	slot_push(arg);
}

static void slot_start(struct slot *s)
{
	s->seed = next_seed++;
	s->len = gen(s->seed, &s->msg);
	s->off = 0;
	s->busy = true;
	if (store_append_begin(cl, &s->f, 1, time(NULL), 0, NULL, 0, slot_ready, s, &s->a))
		_exit(5);
	slot_push(s);
}

static void on_user(void *arg, int res, struct store_user *u)
{
	*(struct store_user **)arg = u;
	if (res)
		_exit(6);
}

static void on_folder(void *arg, int res, struct store_folder *f)
{
	*(struct store_folder **)arg = f;
	if (res)
		_exit(7);
}

static void child(const char *dir, uint32_t first_seed, int fd)
{
	struct store_config cfg = { .data_dir = dir, .append_buf = APPEND_BUF,
				    .checkpoint_bytes = 16384 };
	struct store *st;
	struct store_user *u = NULL;
	struct store_folder *f = NULL;
	struct slot slots[INFLIGHT] = { 0 };
	bool never = false;

	report_fd = fd;
	next_seed = first_seed;
	if (loop_new_standalone(&cl) || store_new(&cfg, &st))
		_exit(2);
	store_user_open(st, cl, "crash@example.com", on_user, &u);
	while (!u)
		loop_run_until(cl, &never, 100);
	store_folder_open(u, cl, "INBOX", on_folder, &f);
	while (!f)
		loop_run_until(cl, &never, 100);
	for (int i = 0; i < INFLIGHT; i++) {
		slots[i].f = f;
		slot_start(&slots[i]);
	}
	for (;;)
		loop_run_until(cl, &never, 1000);
}

/* ---- the parent --------------------------------------------------------- */

static bool pdone;
static int pres;
static void *pptr;

static void p_user(void *arg, int res, struct store_user *u)
{
	(void)arg;
	pres = res;
	pptr = u;
	pdone = true;
}
static void p_folder(void *arg, int res, struct store_folder *f)
{
	(void)arg;
	pres = res;
	pptr = f;
	pdone = true;
}
static void p_read(void *arg, ssize_t res)
{
	(void)arg;
	pres = (int)res;
	pdone = true;
}

static int wait_p(struct loop *l)
{
	int rc;
	pdone = false;
	rc = loop_run_until(l, &pdone, 20000);
	return rc ? rc : 0;
}

static char *read_msg(struct loop *l, struct store_folder *f, uint32_t uid, size_t size)
{
	char *buf = malloc(size + 1);
	size_t off = 0;

	while (off < size) {
		size_t k = size - off < 65536 ? size - off : 65536;
		pdone = false;
		store_read(f, l, uid, off, buf + off, k, p_read, NULL);
		if (loop_run_until(l, &pdone, 20000) || pres <= 0) {
			free(buf);
			return NULL;
		}
		off += (size_t)pres;
	}
	return buf;
}

/* Returns the number of problems found. */
static int verify(const char *dir, const struct report *acked, size_t nacked, size_t *seen_r)
{
	struct store_config cfg = { .data_dir = dir, .append_buf = APPEND_BUF };
	struct store *st;
	struct loop *l;
	struct store_user *u;
	struct store_folder *f;
	struct store_view *v;
	int bad = 0;

	if (loop_new_standalone(&l) || store_new(&cfg, &st))
		return 1;
	store_user_open(st, l, "crash@example.com", p_user, NULL);
	if (wait_p(l) || pres) {
		fprintf(stderr, "reopen user: %d\n", pres);
		return 1;
	}
	u = pptr;
	store_folder_open(u, l, "INBOX", p_folder, NULL);
	if (wait_p(l) || pres) {
		fprintf(stderr, "reopen folder: %d\n", pres);
		return 1;
	}
	f = pptr;
	if (store_view_open(f, &v))
		return 1;
	/* every visible message is whole and what its seed says */
	for (size_t i = 0; i < store_view_count(v); i++) {
		const struct store_msg *m = store_view_msg(v, i);
		char *got = read_msg(l, f, m->uid, m->size), *want;
		uint32_t seed;
		size_t wl;
		if (!got || parse_seed(got, m->size, &seed)) {
			fprintf(stderr, "uid %u: unreadable or not ours\n", m->uid);
			bad++;
			free(got);
			continue;
		}
		wl = gen(seed, &want);
		if (wl != m->size || memcmp(want, got, wl) != 0) {
			fprintf(stderr, "uid %u: bytes differ from seed %u\n", m->uid, seed);
			bad++;
		}
		free(want);
		free(got);
	}
	uint32_t maxuid = 0;
	for (size_t i = 0; i < nacked; i++)
		if (acked[i].uid > maxuid)
			maxuid = acked[i].uid;
	bool *gone = calloc((size_t)maxuid + 1, sizeof(*gone));
	if (!gone)
		return 1;
	for (size_t i = 0; i < nacked; i++)
		if (acked[i].seed == EXPUNGED)
			gone[acked[i].uid] = true;
	/* every acknowledged message is there, with its own bytes, unless its
	 * expunge was acknowledged too: then it is gone */
	for (size_t i = 0; i < nacked; i++) {
		ssize_t k = store_view_find(v, acked[i].uid);
		char *want;
		size_t wl;
		if (acked[i].seed == EXPUNGED)
			continue;
		if (gone[acked[i].uid]) {
			if (k >= 0) {
				fprintf(stderr, "uid %u came back after its expunge was acknowledged\n",
					acked[i].uid);
				bad++;
			}
			continue;
		}
		if (k < 0 && acked[i].uid % 8)
			continue; /* its expunge was asked for, and may have landed */
		wl = gen(acked[i].seed, &want);
		if (k < 0) {
			fprintf(stderr, "acknowledged uid %u (seed %u) is missing\n", acked[i].uid,
				acked[i].seed);
			bad++;
		} else {
			const struct store_msg *m = store_view_msg(v, (size_t)k);
			char *got = read_msg(l, f, m->uid, m->size);
			if (!got || m->size != wl || memcmp(got, want, wl) != 0) {
				fprintf(stderr, "acknowledged uid %u differs\n", acked[i].uid);
				bad++;
			}
			free(got);
		}
		free(want);
	}
	free(gone);
	*seen_r = store_view_count(v);
	store_view_free(&v);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&st);
	{
		/* submit the closes the handles queued, or the fds leak */
		bool never = false;
		loop_run_until(l, &never, 10);
	}
	loop_free(&l);
	return bad;
}

/* The offset of the first STATE record of the log at path (where its
 * last rewrite's base ends), or -1; *size_r gets the file's size. */
static long state_offset(const char *path, long *size_r)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long size, off = 0, found = -1;
	struct record r;
	size_t used;

	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	rewind(f);
	buf = malloc((size_t)size + 1);
	if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size)
		size = 0;
	fclose(f);
	while (off < size &&
	       record_next(span_make(buf + off, (size_t)(size - off)), &r, &used) == RECORD_OK) {
		if (r.type == REC_STATE) {
			found = off;
			break;
		}
		off += (long)used;
	}
	free(buf);
	*size_r = size;
	return found;
}

int main(void)
{
	char dir[] = "/tmp/ringmail-crash-XXXXXX";
	struct report *acked = NULL;
	size_t nacked = 0, cap = 0, seen = 0;
	uint32_t seed = 1;
	int bad = 0, rounds_with_acks = 0, rewrites = 0;
	long log_before = 0, last_state = -1;
	char logp[128];
	struct loop *probe;

	if (loop_new_standalone(&probe) != 0) {
		fprintf(stderr, "io_uring unavailable: skipped\n");
		return 77;
	}
	loop_free(&probe);
	if (!mkdtemp(dir))
		return 1;
	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	snprintf(logp, sizeof(logp), "%s/mail/crash@example.com/f0/log", dir);
	for (int round = 0; round < ROUNDS && !bad; round++) {
		int p[2];
		pid_t pid;
		struct report r;
		size_t before = nacked;

		if (pipe(p))
			return 1;
		pid = fork();
		if (pid == 0) {
			close(p[0]);
			child(dir, seed, p[1]);
		}
		close(p[1]);
		usleep((useconds_t)(100000 + rand() % 500000));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		while (read(p[0], &r, sizeof(r)) == sizeof(r)) {
			if (nacked == cap) {
				cap = cap ? cap * 2 : 1024;
				acked = realloc(acked, cap * sizeof(*acked));
			}
			acked[nacked++] = r;
		}
		close(p[0]);
		if (nacked > before)
			rounds_with_acks++;
		{
			/* a rewrite leaves a STATE record after the survivors'
			 * APPENDs: where it is says which rewrite this is */
			long st = state_offset(logp, &log_before);
			if (st >= 0 && st != last_state)
				rewrites++;
			last_state = st;
		}
		seed += 100000; /* seeds of one round never repeat in another */
		bad += verify(dir, acked, nacked, &seen);
		printf("round %2d: %zu acknowledged (+%zu), %zu visible, log %ld bytes, "
		       "rewritten in %d rounds, %d problems\n",
		       round, nacked, nacked - before, seen, log_before, rewrites, bad);
		fflush(stdout);
	}
	/* A run in which no kill landed after an acknowledgement proves
	 * nothing: demand acknowledged appends in most rounds. */
	if (!bad && rounds_with_acks < ROUNDS / 2) {
		fprintf(stderr, "only %d of %d rounds acknowledged anything: the test saw no crash "
				"after an acknowledgement\n", rounds_with_acks, ROUNDS);
		bad = 1;
	}
	if (!bad && rewrites < 5) {
		fprintf(stderr, "the log was rewritten in %d rounds only: too few crashes near one\n",
			rewrites);
		bad = 1;
	}
	if (!bad) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			return 1;
	} else {
		fprintf(stderr, "data left in %s\n", dir);
	}
	free(acked);
	return bad ? 1 : 0;
}
