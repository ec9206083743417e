/* Several loops (threads, each with its own ring) append to and read from
 * the same folder at once: UIDs stay unique and dense, every message is
 * readable from every loop, acknowledgements cross loops via MSG_RING, and
 * a watch on a loop that never appends hears of the appends made on the
 * others (MSG_RING). Loop 0 also rewrites the log now and then, so that
 * appends of every loop park and are sent back to their own loops. */
#include "store_test_util.h"

#include <pthread.h>
#include <stdatomic.h>

enum { NLOOPS = 4, PER_LOOP = 200, INFLIGHT = 8 };

static struct store *S;
static atomic_int finished;      /* threads done appending */
static atomic_int watch_hits;    /* on loop 0, which also appends */
static atomic_int remote_hits;   /* on the watcher loop, which never appends */
static atomic_int watcher_messages;
static atomic_bool watcher_ready; /* appends start once the watch is set */
static int rewrites, rewrites_busy; /* on loop 0 */

/* What both tests share: a data dir with the store S on it, and one
 * thread per loop. */
struct ml_run {
	char *dir;
	struct store_config cfg;
	pthread_t th[NLOOPS];
};

/* Skips the test without io_uring; makes the data dir and S. */
static void ml_setup(struct ml_run *r)
{
	struct loop *probe;

	if (loop_new_standalone(&probe))
		cr_skip_test("io_uring unavailable");
	loop_free(&probe);
	r->dir = t_tmpdir();
	r->cfg = (struct store_config){ .data_dir = r->dir };
	cr_assert_eq(store_new(&r->cfg, &S), 0);
}

/* Runs fn on NLOOPS threads, the i-th with args + i * size, and waits for
 * them all. */
static void ml_run_threads(struct ml_run *r, void *(*fn)(void *), void *args, size_t size)
{
	for (int i = 0; i < NLOOPS; i++)
		cr_assert_eq(pthread_create(&r->th[i], NULL, fn, (char *)args + (size_t)i * size), 0);
	for (int i = 0; i < NLOOPS; i++)
		pthread_join(r->th[i], NULL);
}

/* Restarts the store and checks that user's folder replays to messages
 * messages with dense UIDs; then frees S and removes the data dir. */
static void ml_check_restart(struct ml_run *r, const char *user, const char *folder,
			     uint32_t messages)
{
	struct loop *l;
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status st;

	store_free(&S);
	cr_assert_eq(store_new(&r->cfg, &S), 0);
	l = t_loop();
	u = t_user(S, l, user);
	f = t_folder(u, l, folder);
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, messages);
	cr_expect_eq(st.uidnext, messages + 1);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	loop_free(&l);
	t_rmrf(r->dir);
	free(r->dir);
}

struct worker {
	int id;
	struct loop *l;
	struct store_user *u;
	struct store_folder *f;
	int started, acked, failed;
	uint32_t uids[PER_LOOP];
	char msgs[INFLIGHT][64];
	struct store_append *a[INFLIGHT];
	struct worker **others;
	uint32_t messages;
	bool read_ok;
};

static void w_done(void *arg, int res, uint32_t uid);

static void rewritten(void *arg, int res)
{
	(void)arg;
	if (res > 0)
		rewrites++;
	else if (res == -EBUSY)
		rewrites_busy++;
	else
		cr_expect_fail("rewrite: %s", strerror(-res));
}

static void w_start(struct worker *w, int slot)
{
	int n = w->started++;
	size_t len = (size_t)snprintf(w->msgs[slot], sizeof(w->msgs[slot]),
				      "Subject: loop %d msg %d\r\n\r\nx\r\n", w->id, n);
	cr_assert_eq(store_append_begin(w->l, &w->f, 1, 0, 0, NULL, 0, NULL, NULL, &w->a[slot]), 0);
	cr_assert_eq(store_append_write(w->a[slot], span_make(w->msgs[slot], len)), (ssize_t)len);
	store_append_commit(w->a[slot], SPAN_LIT(""), w_done,
			    (void *)((uintptr_t)w | (uintptr_t)slot));
}

static void w_done(void *arg, int res, uint32_t uid)
{
	struct worker *w = (struct worker *)((uintptr_t)arg & ~(uintptr_t)7);
	int slot = (int)((uintptr_t)arg & 7);

	if (res)
		w->failed++;
	else
		w->uids[w->acked++] = uid;
	if (w->id == 0 && !res && w->acked % 40 == 0)
		store_rewrite_log(w->f, w->l, rewritten, NULL);
	if (w->started < PER_LOOP)
		w_start(w, slot);
	else if (w->acked + w->failed == PER_LOOP)
		atomic_fetch_add(&finished, 1);
}

static void on_change(void *arg)
{
	atomic_fetch_add((atomic_int *)arg, 1);
}

/* A loop that only watches: whatever it hears came from another loop. */
static void *watcher_main(void *arg)
{
	struct loop *l;
	struct waitres r = { 0 };
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status st;

	(void)arg;
	cr_assert_eq(loop_new_standalone(&l), 0);
	store_user_open(S, l, "multi@example.com", wr_user, &r);
	t_run(l, &r);
	cr_assert_eq(r.res, 0);
	u = r.ptr;
	f = t_folder(u, l, "INBOX");
	cr_assert_eq(store_watch(f, l, on_change, &remote_hits), 0);
	atomic_store(&watcher_ready, true);
	while (atomic_load(&finished) < NLOOPS) {
		bool never = false;
		loop_run_until(l, &never, 20);
	}
	/* the last announcements may still be on their way */
	for (int i = 0; i < 10; i++) {
		bool never = false;
		loop_run_until(l, &never, 20);
	}
	store_folder_status(f, &st);
	atomic_store(&watcher_messages, (int)st.messages);
	while (atomic_load(&finished) < 2 * NLOOPS) {
		bool never = false;
		loop_run_until(l, &never, 20);
	}
	store_folder_close(&f);
	store_user_close(&u);
	loop_free(&l);
	return NULL;
}

static void *w_main(void *arg)
{
	struct worker *w = arg;
	struct waitres r = { 0 };
	bool all = false;

	cr_assert_eq(loop_new_standalone(&w->l), 0);
	store_user_open(S, w->l, "multi@example.com", wr_user, &r);
	t_run(w->l, &r);
	cr_assert_eq(r.res, 0);
	w->u = r.ptr;
	w->f = t_folder(w->u, w->l, "INBOX");
	if (w->id == 0)
		cr_assert_eq(store_watch(w->f, w->l, on_change, &watch_hits), 0);
	while (!atomic_load(&watcher_ready)) {
		bool never = false;
		loop_run_until(w->l, &never, 5);
	}
	for (int i = 0; i < INFLIGHT; i++)
		w_start(w, i);
	/* keep the ring turning until every loop is done: acknowledgements
	 * and watch reports arrive from the others */
	while (!all) {
		bool never = false;
		loop_run_until(w->l, &never, 20);
		all = atomic_load(&finished) >= NLOOPS;
	}
	/* every loop reads what another one wrote (a ring is used only by
	 * the thread that made it) */
	{
		struct store_folder_status st;
		struct worker *o = w->others[(w->id + 1) % NLOOPS];
		uint32_t uid = o->uids[PER_LOOP - 1];
		size_t len;
		char want[64], *got;
		store_folder_status(w->f, &st);
		w->messages = st.messages;
		got = t_read_all(w->l, w->f, uid, &len, 4096);
		snprintf(want, sizeof(want), "Subject: loop %d msg", o->id);
		w->read_ok = got && strncmp(got, want, strlen(want)) == 0;
		free(got);
	}
	/* wait for all before closing: acknowledgements cross loops */
	atomic_fetch_add(&finished, 1);
	while (atomic_load(&finished) < 2 * NLOOPS) {
		bool never = false;
		loop_run_until(w->l, &never, 20);
	}
	store_folder_close(&w->f);
	store_user_close(&w->u);
	loop_free(&w->l);
	return NULL;
}

Test(store_multiloop, concurrent_appends_share_one_folder, .timeout = 60)
{
	struct ml_run r;
	struct worker w[NLOOPS], *all[NLOOPS];
	pthread_t watcher;
	uint8_t *seen;

	ml_setup(&r);
	memset(w, 0, sizeof(w));
	for (int i = 0; i < NLOOPS; i++) {
		w[i].id = i;
		w[i].others = all;
		all[i] = &w[i];
	}
	cr_assert_eq(pthread_create(&watcher, NULL, watcher_main, NULL), 0);
	ml_run_threads(&r, w_main, w, sizeof(w[0]));
	pthread_join(watcher, NULL);

	seen = calloc(NLOOPS * PER_LOOP + 2, 1);
	for (int i = 0; i < NLOOPS; i++) {
		cr_expect_eq(w[i].failed, 0);
		cr_expect_eq(w[i].acked, PER_LOOP);
		for (int k = 0; k < w[i].acked; k++) {
			uint32_t uid = w[i].uids[k];
			cr_assert(uid >= 1 && uid <= NLOOPS * PER_LOOP, "uid %u", uid);
			cr_expect_eq(seen[uid], 0, "uid %u twice", uid);
			seen[uid] = 1;
		}
	}
	cr_expect_gt(rewrites, 0, "rewrites: %d, busy: %d", rewrites, rewrites_busy);
	cr_expect_gt(atomic_load(&watch_hits), 0);
	cr_expect_gt(atomic_load(&remote_hits), 0, "the watching loop heard nothing");
	cr_expect_eq(atomic_load(&watcher_messages), NLOOPS * PER_LOOP);

	for (int i = 0; i < NLOOPS; i++) {
		cr_expect_eq(w[i].messages, NLOOPS * PER_LOOP);
		cr_expect(w[i].read_ok, "loop %d read loop %d's message", i, (i + 1) % NLOOPS);
	}
	free(seen);
	/* and the log replays to the same */
	ml_check_restart(&r, "multi@example.com", "INBOX", NLOOPS * PER_LOOP);
}

/* A folder nobody keeps open, used from several loops at once: each opens
 * it, appends, closes its handle before the acknowledgement, opens it again
 * and reads its message back. Its files close whenever the last handle
 * and request are gone and reopen at the next open (docs/store.md
 * "Descriptors"), on whichever loop that is: no append is lost, UIDs stay
 * unique, and every message reads back. */
enum { CHURN = 60 };

struct churner {
	int id;
	int acked, failed, read_ok;
	uint32_t uids[CHURN];
};

static atomic_int churned;

static void *churn_main(void *arg)
{
	struct churner *c = arg;
	struct waitres r = { 0 };
	struct store_user *u;
	struct loop *l;

	cr_assert_eq(loop_new_standalone(&l), 0);
	store_user_open(S, l, "churn@example.com", wr_user, &r);
	t_run(l, &r);
	cr_assert_eq(r.res, 0);
	u = r.ptr;
	for (int i = 0; i < CHURN; i++) {
		struct store_folder *f = t_folder(u, l, "Trash");
		struct store_append *a;
		struct waitres w = { 0 };
		char msg[64], *got;
		size_t len = (size_t)snprintf(msg, sizeof(msg), "Subject: churn %d %d\r\n\r\nx\r\n",
					      c->id, i), glen;

		cr_assert_eq(store_append_begin(l, &f, 1, 0, 0, NULL, 0, NULL, NULL, &a), 0);
		cr_assert_eq(store_append_write(a, span_make(msg, len)), (ssize_t)len);
		store_append_commit(a, SPAN_LIT(""), wr_uid, &w);
		store_folder_close(&f); /* requests in flight still complete */
		t_run(l, &w);
		if (w.res) {
			c->failed++;
			continue;
		}
		c->uids[c->acked++] = w.uid;
		f = t_folder(u, l, "Trash");
		got = t_read_all(l, f, w.uid, &glen, 4096);
		c->read_ok += got && glen == len && memcmp(got, msg, len) == 0;
		free(got);
		store_folder_close(&f);
		{
			/* out of step with the others: sometimes the folder is
			 * left unused, its files close, and an open reopens them
			 * while another loop opens or appends */
			bool never = false;
			loop_run_until(l, &never, (uint32_t)(1 + (i * 7 + c->id * 3) % 5));
		}
	}
	/* acknowledgements and closes cross loops: keep turning until all
	 * are done */
	atomic_fetch_add(&churned, 1);
	while (atomic_load(&churned) < NLOOPS) {
		bool never = false;
		loop_run_until(l, &never, 20);
	}
	{
		bool never = false;
		loop_run_until(l, &never, 50);
	}
	store_user_close(&u);
	loop_free(&l);
	return NULL;
}

Test(store_multiloop, unused_folder_closes_and_reopens_across_loops, .timeout = 60)
{
	struct ml_run r;
	struct churner c[NLOOPS];
	uint8_t seen[NLOOPS * CHURN + 2] = { 0 };

	ml_setup(&r);
	memset(c, 0, sizeof(c));
	for (int i = 0; i < NLOOPS; i++)
		c[i].id = i;
	ml_run_threads(&r, churn_main, c, sizeof(c[0]));
	for (int i = 0; i < NLOOPS; i++) {
		cr_expect_eq(c[i].failed, 0, "loop %d", i);
		cr_expect_eq(c[i].read_ok, CHURN, "loop %d", i);
		for (int k = 0; k < c[i].acked; k++) {
			uint32_t uid = c[i].uids[k];
			cr_assert(uid >= 1 && uid <= NLOOPS * CHURN, "uid %u", uid);
			cr_expect_eq(seen[uid], 0, "uid %u twice", uid);
			seen[uid] = 1;
		}
	}
	/* and all of it is there after a restart */
	ml_check_restart(&r, "churn@example.com", "Trash", NLOOPS * CHURN);
}
