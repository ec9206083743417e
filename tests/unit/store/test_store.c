/* The store through its public API on a standalone loop: appends, reads,
 * flags/MODSEQ, expunge, quota, folders, copy/move, multi-mailbox appends,
 * checkpoints, recovery of torn and corrupt log tails, ENOSPC. */
#include "store_test_util.h"

#include <stdatomic.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

static struct loop *L;
static char *D;
static struct store *S;

static void open_store(uint64_t quota_bytes, size_t append_buf, uint64_t ck)
{
	struct store_config cfg = { .data_dir = D, .quota_bytes = quota_bytes,
				    .append_buf = append_buf, .checkpoint_bytes = ck };
	cr_assert_eq(store_new(&cfg, &S), 0);
}

static void setup(void)
{
	L = t_loop();
	D = t_tmpdir();
	open_store(0, 4096, 0);
}

static void teardown(void)
{
	store_free(&S);
	loop_free(&L);
	if (D)
		t_rmrf(D);
	free(D);
}

TestSuite(store, .init = setup, .fini = teardown);

/* A restart: closes f (if any) and u, frees the store, opens it again
 * with the default configuration, then the user and, given a name, its
 * folder. */
static void t_reopen(struct store_user **u, struct store_folder **f, const char *folder)
{
	store_folder_close(f);
	store_user_close(u);
	store_free(&S);
	open_store(0, 4096, 0);
	*u = t_user(S, L, "alice@example.com");
	if (folder)
		*f = t_folder(*u, L, folder);
}

static const char *msgs[] = {
	"From: a@example.com\r\nSubject: one\r\n\r\nbody one\r\n",
	"From: b@example.com\r\nSubject: two\r\n\r\nbody two, a little longer\r\n",
	"From: c@example.com\r\nSubject: three\r\n\r\n3\r\n",
};

static void check_msg(struct store_folder *f, uint32_t uid, const char *want)
{
	size_t len;
	char *got = t_read_all(L, f, uid, &len, 5);
	cr_assert(got, "uid %u unreadable", uid);
	cr_expect_eq(len, strlen(want));
	cr_expect_str_eq(got, want);
	free(got);
}

Test(store, append_read_reopen)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct store_folder_status st;
	struct store_view *v;
	uint32_t uid;

	for (int i = 0; i < 3; i++) {
		cr_assert_eq(t_append(L, f, msgs[i], &uid), 0);
		cr_expect_eq(uid, (uint32_t)i + 1);
	}
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	cr_expect_eq(st.uidnext, 4);
	cr_expect_eq(st.highestmodseq, 4);
	cr_expect_eq(st.unseen, 3);
	cr_expect_neq(st.uidvalidity, 0);
	for (int i = 0; i < 3; i++)
		check_msg(f, (uint32_t)i + 1, msgs[i]);
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_assert_eq(store_view_count(v), 3);
	cr_expect_eq(store_view_msg(v, 1)->uid, 2);
	cr_expect_eq(store_view_msg(v, 1)->size, strlen(msgs[1]));
	cr_expect_eq(store_view_msg(v, 1)->internal_date, 1700000000);
	cr_expect(span_eq(store_view_msg(v, 1)->blob, SPAN_LIT("blob")));
	cr_expect_eq(store_view_find(v, 3), 2);
	cr_expect_eq(store_view_find(v, 9), -1);
	store_view_free(&v);

	uint32_t uidvalidity = st.uidvalidity;
	t_reopen(&u, &f, "inbox");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	cr_expect_eq(st.uidvalidity, uidvalidity);
	for (int i = 0; i < 3; i++)
		check_msg(f, (uint32_t)i + 1, msgs[i]);
	cr_assert_eq(t_append(L, f, "again\r\n", &uid), 0);
	cr_expect_eq(uid, 4, "UIDs go on after a reopen");
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, read_errors)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct waitres w = { 0 };
	char buf[16];

	store_read(f, L, 42, 0, buf, sizeof(buf), wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	w = (struct waitres){ 0 };
	store_read(f, L, 1, 1000, buf, sizeof(buf), wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, 0, "past the end is the end");
	store_folder_close(&f);
	store_user_close(&u);
}

/* Reads what is in the pipe (non-blocking read end) into got + *n. */
static void drain_pipe(int fd, char *got, size_t cap, size_t *n)
{
	ssize_t r;
	while (*n < cap && (r = read(fd, got + *n, cap - *n)) > 0)
		*n += (size_t)r;
}

Test(store, splice_into_a_pipe)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct waitres w = { 0 };
	int p[2];
	char got[256];
	size_t n = 0;

	cr_assert_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(t_append(L, f, msgs[i], NULL), 0);
	/* message 2 from byte 5, in pieces of 7 bytes: exact bytes, then 0 */
	size_t len = strlen(msgs[1]);
	for (size_t off = 5; off < len; off += (size_t)w.res) {
		w = (struct waitres){ 0 };
		store_splice(f, L, 2, off, 7, p[1], wr_read, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, (int)(len - off < 7 ? len - off : 7), "at %zu", off);
		drain_pipe(p[0], got, sizeof(got), &n);
	}
	cr_assert_eq(n, len - 5);
	cr_assert(memcmp(got, msgs[1] + 5, n) == 0);
	w = (struct waitres){ 0 };
	store_splice(f, L, 2, len, 7, p[1], wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, 0, "the end");
	/* a whole message, after a reopen (the segment file is opened first) */
	t_reopen(&u, &f, "INBOX");
	w = (struct waitres){ 0 };
	store_splice(f, L, 3, 0, STORE_READ_MAX, p[1], wr_read, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, (int)strlen(msgs[2]));
	n = 0;
	drain_pipe(p[0], got, sizeof(got), &n);
	cr_assert(n == strlen(msgs[2]) && memcmp(got, msgs[2], n) == 0);
	/* errors: no such message, too long, no pipe; a full pipe is EAGAIN */
	w = (struct waitres){ 0 };
	store_splice(f, L, 42, 0, 8, p[1], wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	w = (struct waitres){ 0 };
	store_splice(f, L, 1, 0, STORE_READ_MAX + 1, p[1], wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EINVAL);
	w = (struct waitres){ 0 };
	store_splice(f, L, 1, 0, 8, -1, wr_read, &w);
	cr_expect(w.done && w.res == -EBADF);
	static char fill[65536];
	while (write(p[1], fill, sizeof(fill)) > 0)
		;
	w = (struct waitres){ 0 };
	store_splice(f, L, 1, 0, 8, p[1], wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EAGAIN, "a full pipe does not block: %d", w.res);
	close(p[0]);
	close(p[1]);
	store_folder_close(&f);
	store_user_close(&u);
}

/* RFC 7162: HIGHESTMODSEQ is 1 or more. A folder that never changed
 * reports 1, before and after a reopen, and its first change is 2, so a
 * client given 1 sees that change as one made since. */
Test(store, empty_folder_highestmodseq_is_one)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct store_folder_status st;
	struct store_view *v;

	store_folder_status(f, &st);
	cr_expect_eq(st.highestmodseq, 1);
	t_reopen(&u, &f, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.highestmodseq, 1);
	cr_assert_eq(t_append(L, f, "first\r\n", NULL), 0);
	store_folder_status(f, &st);
	cr_expect_eq(st.highestmodseq, 2);
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_expect_eq(store_view_msg(v, 0)->modseq, 2);
	store_view_free(&v);
	store_folder_close(&f);
	store_user_close(&u);
}

/* A handle kept open on a folder another session deleted: a flag change
 * or an expunge through it is refused with -ENOENT (it used to crash in
 * the completion, which read the log a refused change never had). */
Test(store, change_through_handle_of_deleted_folder)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "Sent"); /* made on open */
	struct waitres w = { 0 };
	uint32_t one = 1;

	cr_assert_eq(t_append(L, f, "x\r\n", NULL), 0);
	store_folder_delete(u, L, "Sent", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_flags(f, L, &one, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	w = (struct waitres){ 0 };
	store_expunge(f, L, &one, 1, wr_modseq, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, flags_keywords_modseq)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct waitres w = { 0 };
	uint32_t u12[] = { 1, 2 }, u2[] = { 2 };
	const char *kw[] = { "$Forwarded", "project-x" };
	struct store_view *v;

	for (int i = 0; i < 3; i++)
		cr_assert_eq(t_append(L, f, msgs[i], NULL), 0);
	store_flags(f, L, u12, 2, STORE_FLAGS_ADD, STORE_F_SEEN | STORE_F_FLAGGED, kw, 2,
		    wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	cr_expect_eq(w.modseq, 5);
	w = (struct waitres){ 0 };
	store_flags(f, L, u2, 1, STORE_FLAGS_REMOVE, STORE_F_FLAGGED, kw + 1, 1, wr_modseq, &w);
	t_run(L, &w);
	cr_expect_eq(w.modseq, 6);

	for (int pass = 0; pass < 2; pass++) {
		cr_assert_eq(store_view_open(f, &v), 0);
		const struct store_msg *m1 = store_view_msg(v, 0), *m2 = store_view_msg(v, 1),
				       *m3 = store_view_msg(v, 2);
		cr_expect_eq(m1->flags, STORE_F_SEEN | STORE_F_FLAGGED);
		cr_expect_eq(m1->modseq, 5);
		cr_expect_eq(m1->keywords, 3);
		cr_expect_eq(m2->flags, STORE_F_SEEN);
		cr_expect_eq(m2->keywords, 1);
		cr_expect_eq(m2->modseq, 6);
		cr_expect_eq(m3->flags, 0);
		cr_expect_eq(m3->modseq, 4);
		cr_expect_str_eq(store_view_keyword(v, 0), "$Forwarded");
		cr_expect_str_eq(store_view_keyword(v, 1), "project-x");
		struct store_folder_status st;
		store_view_status(v, &st);
		cr_expect_eq(st.highestmodseq, 6);
		cr_expect_eq(st.unseen, 1);
		store_view_free(&v);
		/* the same after replay */
		t_reopen(&u, &f, "INBOX");
	}
	store_folder_close(&f);
	store_user_close(&u);
}

/* A flag change that leaves a message as it was keeps its MODSEQ, and
 * HIGHESTMODSEQ moves only when a message changed (RFC 7162: a client has
 * nothing to fetch again). Decided as records are applied, in log order:
 * here three changes are reserved before any is durable, and the second
 * (+\Seen on a message the acknowledged index shows \Seen) does change it,
 * because the first (-\Seen) comes before it; deciding at reservation
 * time from the acknowledged index would drop it and lose the update.
 * Replay after a reopen gives the same MODSEQs. */
Test(store, flags_that_change_nothing_keep_modseq)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct waitres wa = { 0 }, wb = { 0 }, wc = { 0 }, wd = { 0 };
	uint32_t one = 1, both[] = { 1, 2 };
	struct store_folder_status st;
	struct store_view *v;

	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);          /* MODSEQ 2 */
	cr_assert_eq(t_append(L, f, msgs[1], NULL), 0);          /* 3 */
	store_flags(f, L, &one, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &wa);
	t_run(L, &wa);
	cr_assert_eq(wa.res, 0);
	cr_assert_eq(wa.modseq, 4);
	wa = (struct waitres){ 0 };
	store_flags(f, L, &one, 1, STORE_FLAGS_REMOVE, STORE_F_SEEN, NULL, 0, wr_modseq, &wa);
	store_flags(f, L, &one, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &wb);
	store_flags(f, L, both, 2, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &wc);
	t_run(L, &wa);
	t_run(L, &wb);
	t_run(L, &wc);
	cr_assert(wa.res == 0 && wb.res == 0 && wc.res == 0);
	cr_expect(wa.modseq == 5 && wb.modseq == 6 && wc.modseq == 7);
	/* a no-op alone: nothing moves */
	store_flags(f, L, both, 2, STORE_FLAGS_REMOVE, STORE_F_DRAFT, NULL, 0, wr_modseq, &wd);
	t_run(L, &wd);
	cr_assert_eq(wd.res, 0);
	for (int pass = 0; pass < 2; pass++) {
		cr_assert_eq(store_view_open(f, &v), 0);
		cr_expect_eq(store_view_msg(v, 0)->flags, STORE_F_SEEN, "pass %d", pass);
		cr_expect_eq(store_view_msg(v, 0)->modseq, 6, "pass %d: the +Seen after -Seen", pass);
		cr_expect_eq(store_view_msg(v, 1)->flags, STORE_F_SEEN, "pass %d", pass);
		cr_expect_eq(store_view_msg(v, 1)->modseq, 7, "pass %d", pass);
		store_view_free(&v);
		store_folder_status(f, &st);
		cr_expect_eq(st.highestmodseq, 7, "pass %d", pass);
		cr_expect_eq(st.unseen, 0, "pass %d", pass);
		if (pass == 0) {
			t_reopen(&u, &f, "INBOX");
		}
	}
	/* the next change is above every MODSEQ a message or HIGHESTMODSEQ
	 * ever had (the no-op's 8 was never visible: after the reopen the
	 * next change may get it) */
	wa = (struct waitres){ 0 };
	store_flags(f, L, &one, 1, STORE_FLAGS_ADD, STORE_F_FLAGGED, NULL, 0, wr_modseq, &wa);
	t_run(L, &wa);
	cr_assert_eq(wa.res, 0);
	cr_expect_gt(wa.modseq, 7);
	store_folder_status(f, &st);
	cr_expect_eq(st.highestmodseq, wa.modseq);
	store_folder_close(&f);
	store_user_close(&u);
}

/* A read that began a message goes on after another handle expunges it:
 * a one-message file (unlinked by the expunge) and a message in a shared
 * segment alike. Once a read reached the end, the message is gone for
 * that handle too; a handle that had not begun it gets -ENOENT. */
Test(store, read_begun_survives_an_expunge)
{
	/* append_buf 4096: the big message gets a file of its own */
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX"), *g = t_folder(u, L, "INBOX");
	size_t big_len = 300 * 1000;
	char *big = malloc(big_len + 1), *buf = malloc(big_len);
	for (size_t i = 0; i < big_len; i++)
		big[i] = (char)('a' + i % 23);
	big[big_len] = '\0';
	uint32_t ubig, usmall;
	cr_assert_eq(t_append(L, f, big, &ubig), 0);
	cr_assert_eq(t_append(L, f, msgs[1], &usmall), 0);
	const struct {
		uint32_t uid;
		const char *text;
		size_t len;
	} cases[] = { { ubig, big, big_len }, { usmall, msgs[1], strlen(msgs[1]) } };
	for (size_t c = 0; c < 2; c++) {
		struct waitres w = { 0 };
		store_read(f, L, cases[c].uid, 0, buf, 10, wr_read, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 10);
		w = (struct waitres){ 0 };
		store_expunge(g, L, &cases[c].uid, 1, wr_modseq, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 0);
		w = (struct waitres){ 0 };
		store_read(g, L, cases[c].uid, 0, buf, 10, wr_read, &w);
		t_run(L, &w);
		cr_expect_eq(w.res, -ENOENT, "the handle that had not begun it");
		size_t got = 10;
		while (got < cases[c].len) {
			w = (struct waitres){ 0 };
			store_read(f, L, cases[c].uid, got, buf + got, 65536, wr_read, &w);
			t_run(L, &w);
			cr_assert_gt(w.res, 0, "case %zu at %zu: %zd", c, got, w.res);
			got += (size_t)w.res;
		}
		cr_expect_eq(got, cases[c].len);
		cr_expect(memcmp(buf, cases[c].text, cases[c].len) == 0, "case %zu: the bytes", c);
		w = (struct waitres){ 0 };
		store_read(f, L, cases[c].uid, 0, buf, 10, wr_read, &w);
		t_run(L, &w);
		cr_expect_eq(w.res, -ENOENT, "case %zu: read to its end, then gone", c);
	}
	free(big);
	free(buf);
	store_folder_close(&g);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, expunge_and_quota)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct waitres w = { 0 };
	uint64_t b, m, lb, lm;
	uint32_t u2[] = { 2, 77 };
	struct store_folder_status st;

	for (int i = 0; i < 3; i++)
		cr_assert_eq(t_append(L, f, msgs[i], NULL), 0);
	store_user_quota(u, &b, &m, &lb, &lm);
	cr_expect_eq(b, strlen(msgs[0]) + strlen(msgs[1]) + strlen(msgs[2]));
	cr_expect_eq(m, 3);
	store_expunge(f, L, u2, 2, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	store_user_quota(u, &b, &m, &lb, &lm);
	cr_expect_eq(b, strlen(msgs[0]) + strlen(msgs[2]));
	cr_expect_eq(m, 2);
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 2);
	cr_expect_eq(st.highestmodseq, 5);
	w = (struct waitres){ 0 };
	char buf[8];
	store_read(f, L, 2, 0, buf, sizeof(buf), wr_read, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);

	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	/* a limit: the next append over it fails with EDQUOT, nothing is kept */
	open_store(b + 10, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	store_user_quota(u, &b, &m, &lb, &lm);
	cr_expect_eq(m, 2, "quota use is rebuilt on open");
	cr_expect_eq(t_append(L, f, "0123456789abcdef\r\n", NULL), -EDQUOT);
	cr_expect_eq(t_append(L, f, "short\r\n", NULL), 0);
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	store_folder_close(&f);
	store_user_close(&u);
}

static char *big_message(size_t n, unsigned seed)
{
	char *p = malloc(n + 1);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (char)('A' + (seed >> 16) % 26);
		if (i % 78 == 77)
			p[i] = '\n';
	}
	p[n] = 0;
	return p;
}

Test(store, big_message_streams_with_backpressure)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	char *big = big_message(100000, 1);
	uint32_t uid;
	size_t len;
	char *got;

	/* append_buf is 4096: the message goes to its own segment file */
	cr_assert_eq(t_append_n(L, &f, 1, big, strlen(big), 3000, "bigblob", 0, &uid), 0);
	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	got = t_read_all(L, f, uid, &len, 4096);
	cr_assert(got);
	cr_expect_eq(len, 100000);
	cr_expect_eq(memcmp(got, big, len), 0);
	free(got);
	t_reopen(&u, &f, "INBOX");
	got = t_read_all(L, f, uid, &len, 65536);
	cr_assert(got);
	cr_expect_eq(len, 100000);
	cr_expect_eq(memcmp(got, big, len), 0);
	check_msg(f, 2, msgs[0]);
	free(got);
	free(big);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, multi_mailbox_append)
{
	struct store_user *a = t_user(S, L, "alice@example.com");
	struct store_user *b = t_user(S, L, "bob@example.com");
	struct store_folder *f[2] = { t_folder(a, L, "INBOX"), t_folder(b, L, "INBOX") };
	char *big = big_message(20000, 7);
	uint64_t qb, qm, lb, lm;

	cr_assert_eq(t_append(L, f[1], msgs[2], NULL), 0); /* bob's UIDs run ahead */
	for (int round = 0; round < 2; round++) {
		const char *m = round ? big : msgs[0];
		uint32_t uid;
		cr_assert_eq(t_append_n(L, f, 2, m, strlen(m), 1000, "b", 0, &uid), 0);
		for (int k = 0; k < 2; k++) {
			struct store_view *v;
			cr_assert_eq(store_view_open(f[k], &v), 0);
			const struct store_msg *last = store_view_msg(v, store_view_count(v) - 1);
			cr_expect_eq(last->size, strlen(m));
			check_msg(f[k], last->uid, m);
			store_view_free(&v);
		}
	}
	store_user_quota(a, &qb, &qm, &lb, &lm);
	cr_expect_eq(qm, 2);
	cr_expect_eq(qb, strlen(msgs[0]) + 20000);
	free(big);
	store_folder_close(&f[0]);
	store_folder_close(&f[1]);
	store_user_close(&a);
	store_user_close(&b);
}

Test(store, folders_create_list_rename_delete)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct waitres w = { 0 };
	struct store_folder_info *list;
	struct store_folder *f;
	size_t n;

	store_folder_create(u, L, "Lists/ietf", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_folder_create(u, L, "Lists/ietf", wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EEXIST);
	w = (struct waitres){ 0 };
	store_folder_create(u, L, "inbox", wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EEXIST);
	w = (struct waitres){ 0 };
	store_folder_open(u, L, "Nope", wr_folder, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	f = t_folder(u, L, "Sent"); /* special-use: created on first use */
	cr_assert_eq(t_append(L, f, msgs[1], NULL), 0);
	store_folder_close(&f);
	w = (struct waitres){ 0 };
	store_folder_subscribe(u, L, "Lists/ietf", true, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_folder_rename(u, L, "Lists/ietf", "Lists/IETF", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);

	for (int pass = 0; pass < 2; pass++) {
		cr_assert_eq(store_folder_list(u, &list, &n), 0);
		cr_assert_eq(n, 4, "INBOX, Lists/IETF, Sent, subscription to Lists/ietf");
		cr_expect_str_eq(list[0].name, "INBOX");
		cr_expect_str_eq(list[1].name, "Lists/IETF");
		cr_expect_eq(list[1].subscribed, false);
		cr_expect_str_eq(list[2].name, "Lists/ietf");
		cr_expect_eq(list[2].exists, false);
		cr_expect_eq(list[2].subscribed, true);
		cr_expect_str_eq(list[3].name, "Sent");
		cr_expect_eq(list[3].special, STORE_SPECIAL_SENT);
		free(list);
		store_user_close(&u);
		store_free(&S);
		open_store(0, 4096, 0);
		u = t_user(S, L, "alice@example.com");
	}
	f = t_folder(u, L, "Sent");
	check_msg(f, 1, msgs[1]);
	store_folder_close(&f);
	w = (struct waitres){ 0 };
	store_folder_delete(u, L, "Sent", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	uint64_t qb, qm, lb, lm;
	store_user_quota(u, &qb, &qm, &lb, &lm);
	cr_expect_eq(qm, 0, "a deleted folder's messages leave the quota");
	{
		char dp[700];
		struct stat sb;
		bool never = false;
		loop_run_until(L, &never, 50); /* the files go in the background */
		snprintf(dp, sizeof(dp), "%s/mail/alice@example.com/f2", D);
		cr_expect_neq(stat(dp, &sb), 0, "the deleted folder's directory is gone");
	}
	w = (struct waitres){ 0 };
	store_folder_delete(u, L, "INBOX", wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EINVAL);
	f = t_folder(u, L, "Sent"); /* a new, empty one with a new UIDVALIDITY */
	struct store_folder_status st;
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 0);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, copy_and_move)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *in = t_folder(u, L, "INBOX"), *ar = t_folder(u, L, "Archive");
	char *big = big_message(70000, 3);
	uint32_t uids[] = { 1, 2, 99, 3 }, out[4];
	struct waitres w = { 0 };
	struct store_folder_status st;

	cr_assert_eq(t_append(L, in, msgs[0], NULL), 0);
	cr_assert_eq(t_append_n(L, &in, 1, big, strlen(big), 5000, "B", STORE_F_SEEN, NULL), 0);
	cr_assert_eq(t_append(L, in, msgs[2], NULL), 0);
	store_copy(in, L, uids, 4, ar, false, out, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	cr_expect_eq(out[0], 1);
	cr_expect_eq(out[1], 2);
	cr_expect_eq(out[2], 0);
	cr_expect_eq(out[3], 3);
	check_msg(ar, 1, msgs[0]);
	check_msg(ar, 3, msgs[2]);
	{
		size_t len;
		char *got = t_read_all(L, ar, 2, &len, 8192);
		cr_assert(got);
		cr_expect_eq(len, strlen(big));
		cr_expect_eq(memcmp(got, big, len), 0);
		free(got);
		struct store_view *v;
		cr_assert_eq(store_view_open(ar, &v), 0);
		cr_expect_eq(store_view_msg(v, 1)->flags, STORE_F_SEEN);
		cr_expect(span_eq(store_view_msg(v, 1)->blob, SPAN_LIT("B")));
		store_view_free(&v);
	}
	w = (struct waitres){ 0 };
	store_copy(in, L, uids, 2, ar, true, out, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	cr_expect_eq(out[0], 4);
	store_folder_status(in, &st);
	cr_expect_eq(st.messages, 1, "moved ones are gone from the source");
	store_folder_status(ar, &st);
	cr_expect_eq(st.messages, 5);
	/* into the folder it reads from (IMAP's COPY 1 INBOX in INBOX) */
	w = (struct waitres){ 0 };
	store_copy(ar, L, uids, 1, ar, false, out, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	cr_expect_eq(out[0], 6);
	check_msg(ar, 6, msgs[0]);
	free(big);
	store_folder_close(&in);
	store_folder_close(&ar);
	store_user_close(&u);
}

/* A copy or move out of a folder deleted through another handle is
 * -ESTALE and copies nothing. A move used to copy every message, then fail
 * at the expunge (-ENOENT); a copy read the deleted folder's messages and
 * succeeded, so IMAP reopened the folder by name before each COPY to find
 * out. A destination deleted meanwhile is -ENOENT: the caller can tell the
 * two apart. */
Test(store, copy_and_move_out_of_deleted_folder_copy_nothing)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct waitres w = { 0 };
	uint32_t uids[] = { 1, 2 }, out[2];
	struct store_folder_status st;

	store_folder_create(u, L, "Box", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	struct store_folder *box = t_folder(u, L, "Box"), *in = t_folder(u, L, "INBOX");
	cr_assert_eq(t_append(L, box, msgs[0], NULL), 0);
	cr_assert_eq(t_append(L, box, msgs[1], NULL), 0);
	w = (struct waitres){ 0 };
	store_folder_delete(u, L, "Box", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	for (int move = 0; move < 2; move++) {
		out[0] = out[1] = 7;
		w = (struct waitres){ 0 };
		store_copy(box, L, uids, 2, in, move, out, wr_done, &w);
		t_run(L, &w);
		cr_expect_eq(w.res, -ESTALE, "move %d", move);
		cr_expect(out[0] == 7 && out[1] == 7, "move %d: no copy reported", move);
		store_folder_status(in, &st);
		cr_expect_eq(st.messages, 0, "move %d", move);
		cr_expect_eq(st.uidnext, 1, "move %d: nothing copied, not even for a moment", move);
		cr_expect_eq(st.highestmodseq, 1, "move %d", move);
	}
	/* the other way round: the destination is the deleted one */
	w = (struct waitres){ 0 };
	cr_assert_eq(t_append(L, in, msgs[2], NULL), 0);
	store_copy(in, L, uids, 1, box, false, out, wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -ENOENT);
	store_folder_close(&box);
	store_folder_close(&in);
	store_user_close(&u);
}

/* A delete that lands while a copy or move runs: the store checks the
 * source under the lock the delete takes before each message, so the copy
 * stops at the next one with -ESTALE (the copies made stay for the caller
 * to remove). The delete starts once the destination's first copy is
 * durable (its watch), with many messages still to go. */
struct delete_during {
	struct store_user *u;
	struct waitres del;
	bool started;
};

static void delete_on_first_copy(void *arg)
{
	struct delete_during *d = arg;

	if (d->started)
		return;
	d->started = true;
	store_folder_delete(d->u, L, "Box", wr_done, &d->del);
}

Test(store, delete_landing_during_copy_or_move_fails_it)
{
	enum { N = 50 };
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *in = t_folder(u, L, "INBOX");
	uint32_t uids[N], out[N];

	for (size_t i = 0; i < N; i++)
		uids[i] = (uint32_t)i + 1;
	for (int move = 0; move < 2; move++) {
		struct waitres w = { 0 };
		struct delete_during d = { .u = u };
		struct store_folder_status before, after;

		store_folder_create(u, L, "Box", wr_done, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 0);
		struct store_folder *box = t_folder(u, L, "Box");
		for (size_t i = 0; i < N; i++)
			cr_assert_eq(t_append(L, box, msgs[i % 3], NULL), 0);
		store_folder_status(in, &before);
		memset(out, 0, sizeof(out));
		cr_assert_eq(store_watch(in, L, delete_on_first_copy, &d), 0);
		w = (struct waitres){ 0 };
		store_copy(box, L, uids, N, in, move, out, wr_done, &w);
		t_run(L, &w);
		t_run(L, &d.del);
		cr_assert_eq(d.del.res, 0);
		cr_expect_eq(w.res, -ESTALE, "move %d: the delete was not seen", move);
		cr_expect_neq(out[0], 0, "move %d: the first copy was made before", move);
		cr_expect_eq(out[N - 1], 0, "move %d: the copy stopped", move);
		store_folder_status(in, &after);
		size_t made = 0;
		while (made < N && out[made])
			made++;
		cr_expect_eq(after.messages, before.messages + made,
			     "move %d: the copies made stay (the caller removes them)", move);
		cr_assert_eq(store_watch(in, L, NULL, NULL), 0);
		store_folder_close(&box);
	}
	store_folder_close(&in);
	store_user_close(&u);
}

/* A folder renamed through another handle is not deleted: the handle is
 * the same folder, and copy and move out of it go on (IMAP: a session
 * that has the old name selected still copies and moves). */
Test(store, copy_and_move_out_of_renamed_folder_go_on)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct waitres w = { 0 };
	uint32_t one = 1, two = 2, out = 0;
	struct store_folder_status st;

	store_folder_create(u, L, "Box", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	struct store_folder *box = t_folder(u, L, "Box"), *in = t_folder(u, L, "INBOX");
	cr_assert_eq(t_append(L, box, msgs[0], NULL), 0);
	cr_assert_eq(t_append(L, box, msgs[1], NULL), 0);
	w = (struct waitres){ 0 };
	store_folder_rename(u, L, "Box", "Box2", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_copy(box, L, &one, 1, in, false, &out, wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, 0);
	cr_expect_eq(out, 1);
	w = (struct waitres){ 0 };
	store_copy(box, L, &two, 1, in, true, &out, wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, 0);
	cr_expect_eq(out, 2);
	check_msg(in, 2, msgs[1]);
	store_folder_status(box, &st);
	cr_expect_eq(st.messages, 1, "the moved one left the renamed folder");
	store_folder_close(&box);
	store_folder_close(&in);
	store_user_close(&u);
}

static int watched;
static void on_watch(void *arg)
{
	(void)arg;
	watched++;
}

Test(store, watch_reports_changes)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX"), *g = t_folder(u, L, "INBOX");

	watched = 0;
	cr_assert_eq(store_watch(g, L, on_watch, NULL), 0);
	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	{
		bool never = false;
		loop_run_until(L, &never, 50);
	}
	cr_expect_geq(watched, 1);
	store_folder_close(&g); /* removes the watch */
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, checkpoint_then_log_tail)
{
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status st;
	char path[600];
	struct stat sb;

	store_free(&S);
	open_store(0, 4096, 1024); /* a checkpoint every KiB of log */
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	for (int i = 0; i < 40; i++)
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
	{
		bool never = false;
		loop_run_until(L, &never, 50); /* let a checkpoint in flight end */
	}
	snprintf(path, sizeof(path), "%s/mail/alice@example.com/f0/checkpoint", D);
	cr_assert_eq(stat(path, &sb), 0, "a checkpoint was written");
	t_reopen(&u, &f, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 40);
	cr_expect_eq(st.uidnext, 41);
	check_msg(f, 40, msgs[39 % 3]);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);

	/* a damaged checkpoint is ignored: the log alone rebuilds the index */
	int fd = open(path, O_RDWR);
	cr_assert(fd >= 0);
	cr_assert_eq(pwrite(fd, "XXXX", 4, 20), 4);
	close(fd);
	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 40);
	store_folder_close(&f);
	store_user_close(&u);
}

/* Blobs loaded from a checkpoint live in its buffer (one arena): a view
 * taken after such an open still reads them after the messages are
 * expunged, the folder closed and the store freed; copies get them too. */
Test(store, checkpoint_blobs_outlive_expunge_and_close)
{
	struct store_user *u;
	struct store_folder *f, *g;
	struct store_view *v;
	struct waitres w = { 0 };
	uint32_t all[20], out[2], two[] = { 3, 17 };
	char blob[32];

	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	for (int i = 0; i < 20; i++) {
		snprintf(blob, sizeof(blob), "structure-%d", i + 1);
		cr_assert_eq(t_append_n(L, &f, 1, msgs[i % 3], strlen(msgs[i % 3]), 7, blob, 0, &all[i]), 0);
	}
	store_checkpoint(f, L, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);

	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	g = t_folder(u, L, "Archive");
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_assert_eq(store_view_count(v), 20);
	/* a copy takes the blob of a message loaded from the checkpoint */
	w = (struct waitres){ 0 };
	store_copy(f, L, two, 2, g, false, out, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_expunge(f, L, all, 20, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	store_folder_close(&f);
	store_folder_close(&g);
	store_user_close(&u);
	store_free(&S);
	for (size_t i = 0; i < 20; i++) {
		snprintf(blob, sizeof(blob), "structure-%zu", i + 1);
		cr_expect(span_eq(store_view_msg(v, i)->blob, span_cstr(blob)), "message %zu", i);
	}
	store_view_free(&v);

	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	g = t_folder(u, L, "Archive");
	cr_assert_eq(store_view_open(g, &v), 0);
	cr_assert_eq(store_view_count(v), 2);
	cr_expect(span_eq(store_view_msg(v, 0)->blob, SPAN_LIT("structure-3")));
	cr_expect(span_eq(store_view_msg(v, 1)->blob, SPAN_LIT("structure-17")));
	store_view_free(&v);
	f = t_folder(u, L, "INBOX");
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_expect_eq(store_view_count(v), 0);
	store_view_free(&v);
	store_folder_close(&f);
	store_folder_close(&g);
	store_user_close(&u);
}

/* ---- recovery ------------------------------------------------------------- */

static void log_path(char *out, size_t cap)
{
	snprintf(out, cap, "%s/mail/alice@example.com/f0/log", D);
}

static off_t file_size(const char *p)
{
	struct stat sb;
	cr_assert_eq(stat(p, &sb), 0);
	return sb.st_size;
}

/* Appends 3 messages and returns the offset where the last record starts. */
static off_t three_then_close(char *lp, size_t cap)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	off_t before;

	log_path(lp, cap);
	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	cr_assert_eq(t_append(L, f, msgs[1], NULL), 0);
	before = file_size(lp);
	cr_assert_eq(t_append(L, f, msgs[2], NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	return before;
}

static void expect_two_then_append(void)
{
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status st;
	uint32_t uid;

	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 2);
	check_msg(f, 1, msgs[0]);
	check_msg(f, 2, msgs[1]);
	cr_assert_eq(t_append(L, f, "after\r\n", &uid), 0);
	cr_expect_eq(uid, 3);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	/* and what was written after recovery survives another reopen */
	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	check_msg(f, 3, "after\r\n");
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, torn_tail_at_every_offset_is_cut)
{
	char lp[600], copy[700], cmd[1500];
	off_t last = three_then_close(lp, sizeof(lp)), end = file_size(lp);

	snprintf(copy, sizeof(copy), "%s.orig", D);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", D, copy);
	cr_assert_eq(system(cmd), 0);
	for (off_t cut = last; cut < end; cut++) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", D, copy, D);
		cr_assert_eq(system(cmd), 0);
		cr_assert_eq(truncate(lp, cut), 0);
		expect_two_then_append();
		store_free(&S);
	}
	t_rmrf(copy);
}

Test(store, flipped_bits_in_last_record_are_cut)
{
	char lp[600], copy[700], cmd[1500];
	off_t last = three_then_close(lp, sizeof(lp)), end = file_size(lp);

	snprintf(copy, sizeof(copy), "%s.orig", D);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", D, copy);
	cr_assert_eq(system(cmd), 0);
	for (off_t at = last; at < end; at += 7) {
		uint8_t b;
		int fd;
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", D, copy, D);
		cr_assert_eq(system(cmd), 0);
		fd = open(lp, O_RDWR);
		cr_assert_eq(pread(fd, &b, 1, at), 1);
		b ^= 0x10;
		cr_assert_eq(pwrite(fd, &b, 1, at), 1);
		close(fd);
		expect_two_then_append();
		store_free(&S);
	}
	t_rmrf(copy);
}

Test(store, garbage_after_last_record_is_wiped)
{
	char lp[600];
	off_t end;
	int fd;

	three_then_close(lp, sizeof(lp));
	end = file_size(lp);
	/* an unacknowledged record that never finished: a header and junk */
	fd = open(lp, O_RDWR);
	cr_assert_eq(pwrite(fd, "\x40\x00\x00\x00junkjunkjunk", 16, end), 16);
	close(fd);
	open_store(0, 4096, 0);
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct store_folder_status st;
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	store_folder_close(&f);
	store_user_close(&u);
}

/* ---- the data directory lock ------------------------------------------------ */

Test(store, lock_datadir_names_the_owner)
{
	char err[256] = "";
	int fd = store_lock_datadir(D, err, sizeof(err)), fd2;
	char pid[32];

	cr_assert(fd >= 0, "%s", err);
	fd2 = store_lock_datadir(D, err, sizeof(err));
	cr_expect_eq(fd2, -EWOULDBLOCK);
	snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
	cr_expect(strstr(err, pid), "message: %s", err);
	close(fd);
	fd2 = store_lock_datadir(D, err, sizeof(err));
	cr_expect(fd2 >= 0, "free again once the owner closed it");
	close(fd2);
}

/* ---- ENOSPC ------------------------------------------------------------------- */

/* A store on a small tmpfs under D (mounted at mnt, opts e.g. "size=1m"),
 * with alice's INBOX open; skips the test when no tmpfs can be mounted. */
static void tmpfs_store(char *mnt, size_t cap, const char *opts, struct store_config *cfg,
			struct store **st_r, struct store_user **u_r, struct store_folder **f_r)
{
	snprintf(mnt, cap, "%s/tmpfs", D);
	cr_assert_eq(mkdir(mnt, 0700), 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, opts) != 0)
		cr_skip_test("cannot mount a tmpfs: %s", strerror(errno));
	cfg->data_dir = mnt;
	cr_assert_eq(store_new(cfg, st_r), 0);
	*u_r = t_user(*st_r, L, "alice@example.com");
	*f_r = t_folder(*u_r, L, "INBOX");
}

Test(store, enospc_is_an_error_never_a_success)
{
	char mnt[600];
	struct store_config cfg = { .append_buf = 65536 };
	struct store *st2;
	struct store_user *u;
	struct store_folder *f;
	char *big = big_message(200000, 9);
	int ok = 0, fails = 0;
	uint32_t last_ok = 0;

	tmpfs_store(mnt, sizeof(mnt), "size=1m", &cfg, &st2, &u, &f);
	for (int i = 0; i < 12; i++) {
		uint32_t uid;
		int rc = t_append_n(L, &f, 1, big, (size_t)(20000 + i * 13000), 4096, "b", 0, &uid);
		if (rc == 0) {
			ok++;
			last_ok = uid;
		} else {
			cr_expect(rc == -ENOSPC || rc == -EIO, "rc %d", rc);
			fails++;
		}
	}
	cr_expect_gt(ok, 0);
	cr_expect_gt(fails, 0, "1 MiB must run out");
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&st2);
	/* every acknowledged message is there after a reopen, whole */
	cr_assert_eq(store_new(&cfg, &st2), 0);
	u = t_user(st2, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	struct store_view *v;
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_expect_eq(store_view_count(v), (size_t)ok);
	for (size_t i = 0; i < store_view_count(v); i++) {
		const struct store_msg *m = store_view_msg(v, i);
		size_t len;
		char *got = t_read_all(L, f, m->uid, &len, 65536);
		cr_assert(got, "uid %u", m->uid);
		cr_expect_eq(len, m->size);
		cr_expect_eq(memcmp(got, big, len), 0);
		free(got);
		cr_expect_leq(m->uid, last_ok);
	}
	store_view_free(&v);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&st2);
	umount2(mnt, MNT_DETACH);
	free(big);
}

/* Every special-use folder (RFC 6154) is there on first use, without a
 * create, and keeps its role across a reopen. */
Test(store, special_use_folders_created_on_first_use)
{
	static const struct {
		const char *name;
		enum store_special special;
	} want[] = { { "Archive", STORE_SPECIAL_ARCHIVE }, { "Drafts", STORE_SPECIAL_DRAFTS },
		     { "Junk", STORE_SPECIAL_JUNK },       { "Sent", STORE_SPECIAL_SENT },
		     { "Trash", STORE_SPECIAL_TRASH } };
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder_info *list;
	size_t n;

	for (size_t i = 0; i < 5; i++) {
		struct store_folder *f = t_folder(u, L, want[i].name);
		cr_assert_eq(t_append(L, f, "Subject: x\r\n\r\nx\r\n", NULL), 0);
		store_folder_close(&f);
	}
	for (int pass = 0; pass < 2; pass++) {
		cr_assert_eq(store_folder_list(u, &list, &n), 0);
		cr_assert_eq(n, 6, "INBOX and the five");
		cr_expect_str_eq(list[0].name, "INBOX");
		for (size_t i = 0; i < 5; i++) {
			cr_expect_str_eq(list[i + 1].name, want[i].name);
			cr_expect_eq(list[i + 1].special, want[i].special, "%s", want[i].name);
			cr_expect(list[i + 1].exists);
		}
		free(list);
		store_user_close(&u);
		store_free(&S);
		open_store(0, 4096, 0);
		u = t_user(S, L, "alice@example.com");
	}
	store_user_close(&u);
}

/* ---- auto folders (store_config.auto_folders) ----------------------------- */

static const char *const autos3[] = { "Sent", "Drafts", "Notes" };

static void open_store_autos(const char *const *autos, size_t n, size_t folders_max)
{
	struct store_config cfg = { .data_dir = D, .append_buf = 4096, .auto_folders = autos,
				    .nauto_folders = n, .folders_max = folders_max };
	cr_assert_eq(store_new(&cfg, &S), 0);
}

static void reopen_autos(struct store_user **u, const char *const *autos, size_t n)
{
	store_user_close(u);
	store_free(&S);
	open_store_autos(autos, n, 0);
	*u = t_user(S, L, "alice@example.com");
}

/* The list as "name:flags" lines: e exists, s subscribed, and the
 * special-use role's digit, for exact comparisons. */
static void list_str(struct store_user *u, char *out, size_t cap)
{
	struct store_folder_info *list;
	size_t n, o = 0;

	cr_assert_eq(store_folder_list(u, &list, &n), 0);
	out[0] = '\0';
	for (size_t i = 0; i < n && o < cap; i++)
		o += (size_t)snprintf(out + o, cap - o, "%s%s:%s%s%d", i ? " " : "", list[i].name,
				      list[i].exists ? "e" : "", list[i].subscribed ? "s" : "",
				      (int)list[i].special);
	free(list);
}

static off_t folders_log_size(void)
{
	char p[700];
	struct stat sb;
	snprintf(p, sizeof(p), "%s/mail/alice@example.com/folders.log", D);
	cr_assert_eq(stat(p, &sb), 0);
	return sb.st_size;
}

static int t_change(struct store_user *u, int op, const char *a, const char *b)
{
	struct waitres w = { 0 };
	if (op == 'd')
		store_folder_delete(u, L, a, wr_done, &w);
	else if (op == 'r')
		store_folder_rename(u, L, a, b, wr_done, &w);
	else
		store_folder_subscribe(u, L, a, op == 's', wr_done, &w);
	t_run(L, &w);
	return w.res;
}

/* A new user has every auto folder, made and subscribed before the open
 * completes; another open, in the cache or after a restart, writes
 * nothing and makes nothing twice. */
Test(store, auto_folders_exist_at_first_open_and_are_made_once)
{
	char got[512];
	struct store_user *u;
	off_t size;

	store_free(&S);
	open_store_autos(autos3, 3, 0);
	u = t_user(S, L, "alice@example.com");
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
	size = folders_log_size();
	cr_expect_gt(size, 0);
	store_user_close(&u);
	u = t_user(S, L, "alice@example.com"); /* from the cache */
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
	for (int i = 0; i < 2; i++) {
		reopen_autos(&u, autos3, 3);
		list_str(u, got, sizeof(got));
		cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
		cr_expect_eq(folders_log_size(), size, "a reload writes nothing");
	}
	{
		/* the folder directories: f1..f3 and no more */
		char p[700];
		struct stat sb;
		snprintf(p, sizeof(p), "%s/mail/alice@example.com/f3", D);
		cr_expect_eq(stat(p, &sb), 0);
		snprintf(p, sizeof(p), "%s/mail/alice@example.com/f4", D);
		cr_expect_neq(stat(p, &sb), 0);
	}
	/* the setting off: nothing is made, nothing already made goes away */
	reopen_autos(&u, NULL, 0);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
	store_user_close(&u);
}

/* A user made before the setting (or with some of the folders, one of
 * them unsubscribed) gets what it lacks at its next load, past
 * folders_max too; they do not count toward it. */
Test(store, auto_folders_complete_an_existing_user)
{
	char got[512];
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct waitres w = { 0 };

	store_folder_create(u, L, "Drafts", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_folder_create(u, L, "Work", wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:e2 Work:e0");
	store_user_close(&u);
	store_free(&S);
	open_store_autos(autos3, 3, 2); /* made past folders_max, and not counted */
	u = t_user(S, L, "alice@example.com");
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1 Work:e0");
	w = (struct waitres){ 0 };
	store_folder_create(u, L, "Two", wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, 0, "Work and Two are the user's two");
	w = (struct waitres){ 0 };
	store_folder_create(u, L, "Three", wr_done, &w);
	t_run(L, &w);
	cr_expect_eq(w.res, -EMLINK);
	store_user_close(&u);
}

/* Dovecot's auto = subscribe: the folder is there whatever the user did.
 * UNSUBSCRIBE succeeds and changes nothing; DELETE removes the messages and
 * the folder comes back empty with a new UIDVALIDITY before the reply;
 * RENAME keeps the messages under the new name and makes the folder again. */
Test(store, auto_folders_come_back_after_delete_and_rename)
{
	char got[512];
	struct store_user *u;
	struct store_folder *f;
	struct store_folder_status st;
	uint32_t uv;

	store_free(&S);
	open_store_autos(autos3, 3, 0);
	u = t_user(S, L, "alice@example.com");
	cr_expect_eq(t_change(u, 'u', "Sent", NULL), 0);
	cr_expect_eq(t_change(u, 'u', "Notes", NULL), 0);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");

	f = t_folder(u, L, "Sent");
	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	store_folder_status(f, &st);
	uv = st.uidvalidity;
	store_folder_close(&f);
	cr_expect_eq(t_change(u, 'd', "Sent", NULL), 0);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
	f = t_folder(u, L, "Sent");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 0);
	cr_expect_gt(st.uidvalidity, uv);
	store_folder_close(&f);
	uint64_t qb, qm, lb, lm;
	store_user_quota(u, &qb, &qm, &lb, &lm);
	cr_expect_eq(qm, 0, "the deleted messages left the quota");

	f = t_folder(u, L, "Drafts");
	cr_assert_eq(t_append(L, f, msgs[1], NULL), 0);
	store_folder_close(&f);
	cr_expect_eq(t_change(u, 'r', "Drafts", "Old drafts"), 0);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Old drafts:e0 Sent:es1");
	f = t_folder(u, L, "Old drafts");
	check_msg(f, 1, msgs[1]);
	store_folder_close(&f);
	f = t_folder(u, L, "Drafts");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 0);
	store_folder_close(&f);
	/* a name that is not an auto folder is deleted as always */
	cr_expect_eq(t_change(u, 'd', "Old drafts", NULL), 0);
	reopen_autos(&u, autos3, 3);
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1");
	store_user_close(&u);
}

/* A crash in the middle of making them (folders.log torn after some of
 * the records): the next load makes what is missing, each name once. */
Test(store, auto_folders_after_a_torn_folder_list)
{
	char got[512], p[700];
	struct store_user *u;
	off_t size;

	store_free(&S);
	open_store_autos(autos3, 3, 0);
	u = t_user(S, L, "alice@example.com");
	store_user_close(&u);
	store_free(&S);
	size = folders_log_size();
	cr_assert_gt(size, 0);
	snprintf(p, sizeof(p), "%s/mail/alice@example.com/folders.log", D);
	for (int i = 0; i < 2; i++) {
		off_t cut = i == 0 ? size / 2 : 0;
		cr_assert_eq(truncate(p, cut), 0);
		open_store_autos(autos3, 3, 0);
		u = t_user(S, L, "alice@example.com");
		list_str(u, got, sizeof(got));
		cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Notes:es0 Sent:es1", "cut at %lld",
				 (long long)cut);
		store_user_close(&u);
		store_free(&S);
	}
	open_store(0, 4096, 0);
}

/* A create that fails after it made the folder's directory (out of file
 * descriptors here: the directory opens, the log does not) removes that
 * directory: the auto folders are tried again at every load, and each try
 * must not leave an orphan behind. The next load, with descriptors, makes
 * them. A loaded folder closes its files, so the load needs one folder's
 * descriptors at a time; the two creates run at once and need two
 * folders': at the first limit the load passes, one of them at least
 * runs out. */
Test(store, auto_folders_failing_leave_no_orphan_directories)
{
	static const char *const two[] = { "Sent", "Drafts" };
	static const struct {
		const char *name, *dir;
	} made[] = { { "Sent:es", "f1" }, { "Drafts:es", "f2" } };
	char got[512], p[700];
	int missing = 0;
	struct store_user *u;
	struct rlimit old, low;
	struct stat sb;
	int probe;

	store_free(&S);
	open_store_autos(NULL, 0, 0);
	u = t_user(S, L, "alice@example.com"); /* INBOX is f0 */
	store_user_close(&u);
	store_free(&S);
	open_store_autos(two, 2, 0);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	probe = dup(0);
	cr_assert_geq(probe, 0);
	close(probe);
	/* Raise the limit one descriptor at a time from what is open now: the
	 * first load that succeeds had none to spare for both creates. */
	u = NULL;
	for (rlim_t extra = 1; !u && extra < 64; extra++) {
		struct waitres w = { 0 };
		bool never = false;
		low = old;
		low.rlim_cur = (rlim_t)probe + extra;
		cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
		store_user_open(S, L, "alice@example.com", wr_user, &w);
		t_run(L, &w);
		cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
		if (w.res == 0)
			u = w.ptr;
		else
			cr_assert_eq(w.res, -EMFILE);
		loop_run_until(L, &never, 20); /* the closes of a failed load */
	}
	cr_assert_not_null(u);
	list_str(u, got, sizeof(got));
	cr_expect(strstr(got, "Sent:") && strstr(got, "Drafts:"), "both subscribed: %s", got);
	{
		bool never = false;
		loop_run_until(L, &never, 50); /* the removal runs in the background */
	}
	for (size_t i = 0; i < 2; i++) {
		if (strstr(got, made[i].name))
			continue;
		missing++;
		snprintf(p, sizeof(p), "%s/mail/alice@example.com/%s", D, made[i].dir);
		cr_expect_neq(stat(p, &sb), 0, "the failed create's directory %s is gone", p);
	}
	cr_expect_geq(missing, 1, "a create ran out of descriptors: %s", got);
	store_user_close(&u);
	store_free(&S);
	open_store_autos(two, 2, 0);
	u = t_user(S, L, "alice@example.com");
	list_str(u, got, sizeof(got));
	cr_expect_str_eq(got, "INBOX:e0 Drafts:es2 Sent:es1");
	store_user_close(&u);
}

/* Descriptors this process has open, once the closes the loop queued ran. */
static int t_nfds(void)
{
	bool never = false;
	DIR *d;
	int n = 0;

	loop_run_until(L, &never, 30);
	d = opendir("/proc/self/fd");
	cr_assert_not_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* A loaded user holds descriptors only for INBOX and the folders a handle
 * uses (docs/store.md "Descriptors"): its folder list's two, plus three per
 * such folder (directory, log, active segment). A folder whose last handle
 * closes closes its files; the index stays, and the next open reopens
 * them: what was appended then reads back, and survives a restart, with
 * the quota counted right at the next load. */
Test(store, folders_hold_descriptors_only_while_open)
{
	static const char *const five[] = { "Sent", "Drafts", "Trash", "Junk", "Archive" };
	struct store_user *u;
	struct store_folder *f, *g;
	uint64_t bytes, n, lb, lm;
	uint32_t uid;
	int base;

	store_free(&S);
	open_store_autos(five, 5, 0);
	base = t_nfds();
	u = t_user(S, L, "alice@example.com");
	cr_expect_eq(t_nfds() - base, 5, "a new user: its folder list and INBOX only");
	f = t_folder(u, L, "INBOX");
	cr_expect_eq(t_nfds() - base, 5, "INBOX was open already");
	cr_assert_eq(t_append(L, f, msgs[0], &uid), 0);
	cr_expect_eq(t_nfds() - base, 5);
	g = t_folder(u, L, "Trash");
	cr_expect_eq(t_nfds() - base, 8, "and Trash's three");
	cr_assert_eq(t_append(L, g, msgs[1], &uid), 0);
	cr_expect_eq(uid, 1);
	check_msg(g, 1, msgs[1]);
	store_folder_close(&g);
	cr_expect_eq(t_nfds() - base, 5, "Trash closed its files with its last handle");
	store_folder_close(&f);
	cr_expect_eq(t_nfds() - base, 5, "INBOX keeps its files without a handle");

	/* reopened from the index in memory: no reload */
	g = t_folder(u, L, "Trash");
	cr_expect_eq(t_nfds() - base, 8);
	check_msg(g, 1, msgs[1]);
	cr_assert_eq(t_append(L, g, msgs[2], &uid), 0);
	cr_expect_eq(uid, 2, "UIDs go on across a reopen of the files");
	check_msg(g, 2, msgs[2]);
	/* two handles, one folder: its files stay until the last closes */
	f = t_folder(u, L, "Trash");
	store_folder_close(&g);
	cr_expect_eq(t_nfds() - base, 8);
	check_msg(f, 1, msgs[1]);
	store_folder_close(&f);
	cr_expect_eq(t_nfds() - base, 5);
	store_user_quota(u, &bytes, &n, &lb, &lm);
	cr_expect_eq(n, 3);
	cr_expect_eq(bytes, strlen(msgs[0]) + strlen(msgs[1]) + strlen(msgs[2]));

	/* a restart: everything is there, and the load counted it */
	store_user_close(&u);
	store_free(&S);
	open_store_autos(five, 5, 0);
	u = t_user(S, L, "alice@example.com");
	cr_expect_eq(t_nfds() - base, 5, "a loaded user: its folder list and INBOX only");
	store_user_quota(u, &bytes, &n, &lb, &lm);
	cr_expect_eq(n, 3);
	cr_expect_eq(bytes, strlen(msgs[0]) + strlen(msgs[1]) + strlen(msgs[2]));
	f = t_folder(u, L, "INBOX");
	check_msg(f, 1, msgs[0]);
	g = t_folder(u, L, "Trash");
	cr_expect_eq(t_nfds() - base, 8);
	check_msg(g, 1, msgs[1]);
	check_msg(g, 2, msgs[2]);
	store_folder_close(&g);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, auto_folders_refuse_bad_names)
{
	static const char *const inbox[] = { "Sent", "inbox" }, *const empty[] = { "" };
	struct store *s2 = NULL;
	struct store_config cfg = { .data_dir = D, .auto_folders = inbox, .nauto_folders = 2 };

	cr_expect_eq(store_new(&cfg, &s2), -EINVAL);
	cfg.auto_folders = empty;
	cfg.nauto_folders = 1;
	cr_expect_eq(store_new(&cfg, &s2), -EINVAL);
	cr_expect_null(s2);
}

/* An fsync that reports EIO: the append that waited for it fails (never a
 * success), and the folder's files refuse later changes instead of
 * syncing again as if the lost write-back had worked; a reopen reads back
 * only what was acknowledged, and appends work again. */
static atomic_int eio_fail_next;

static int eio_hook(void *arg, int res)
{
	(void)arg;
	if (atomic_exchange(&eio_fail_next, 0))
		return -EIO;
	return res;
}

Test(store, failed_fsync_is_an_error_and_is_not_retried_as_success)
{
	store_free(&S);
	struct store_config cfg = { .data_dir = D, .append_buf = 4096,
				    .test_sync_result = eio_hook };
	cr_assert_eq(store_new(&cfg, &S), 0);
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	uint32_t uid_a = 0, uid_x = 0;

	cr_assert_eq(t_append(L, f, "Subject: a\r\n\r\nkept\r\n", &uid_a), 0);
	atomic_store(&eio_fail_next, 1);
	int rc = t_append(L, f, "Subject: b\r\n\r\nlost\r\n", NULL);
	cr_expect_eq(rc, -EIO, "the append whose fsync failed: %d", rc);
	/* later changes are refused, not synced again and acknowledged */
	for (int i = 0; i < 3; i++) {
		rc = t_append(L, f, "Subject: c\r\n\r\nafter\r\n", &uid_x);
		cr_expect_lt(rc, 0, "an append after the failed fsync succeeded (uid %u)", uid_x);
	}
	struct store_view *v;
	cr_assert_eq(store_view_open(f, &v), 0);
	cr_expect_eq(store_view_count(v), 1, "only the acknowledged message is seen");
	store_view_free(&v);
	check_msg(f, uid_a, "Subject: a\r\n\r\nkept\r\n");
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);

	/* reopened: what was acknowledged, whole; the refused appends never
	 * show; appending works again */
	cr_assert_eq(store_new(&cfg, &S), 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	cr_assert_eq(store_view_open(f, &v), 0);
	for (size_t i = 0; i < store_view_count(v); i++) {
		const struct store_msg *m = store_view_msg(v, i);
		size_t len;
		char *got = t_read_all(L, f, m->uid, &len, 64);
		cr_assert(got);
		/* "lost" may come back (its bytes may have reached the disk
		 * although the fsync said EIO: a duplicate, never a loss);
		 * "after" never does */
		cr_expect(strstr(got, "after") == NULL, "a refused append came back: %s", got);
		free(got);
	}
	cr_expect_geq(store_view_count(v), 1);
	store_view_free(&v);
	check_msg(f, uid_a, "Subject: a\r\n\r\nkept\r\n");
	cr_expect_eq(t_append(L, f, "Subject: d\r\n\r\nagain\r\n", NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
}

/* ---- compaction ------------------------------------------------------------ */

/* The compaction tests' folder: 20 messages "Subject: i" with a 150-digit
 * body (UIDs 1..20), waiting after each for a segment roll's open. */
static void compaction_msg(char *msg, size_t cap, int i)
{
	snprintf(msg, cap, "Subject: %d\r\n\r\n%0150d\r\n", i, i);
}

static void compaction_fill(struct store_folder *f)
{
	char msg[200];
	for (int i = 0; i < 20; i++) {
		compaction_msg(msg, sizeof(msg), i);
		cr_assert_eq(t_append(L, f, msg, NULL), 0);
		bool never = false;
		loop_run_until(L, &never, 5); /* a roll's open completes */
	}
}

/* Expunges UIDs first..first+n-1 of f. */
static void expunge_range(struct store_folder *f, uint32_t first, uint32_t n)
{
	uint32_t gone[32];
	struct waitres w = { 0 };
	cr_assert_leq(n, 32);
	for (uint32_t i = 0; i < n; i++)
		gone[i] = first + i;
	store_expunge(f, L, gone, n, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
}

/* Checks that UIDs 16..20 (and `more` extra messages from UID 21 on) read
 * back whole, then again after closing and reopening the store; leaves *f
 * and *u open on the reopened store. */
static void compaction_check(struct store_folder **f, struct store_user **u,
			     const char *const *more, size_t nmore)
{
	char msg[200];
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 15; i < 20; i++) {
			compaction_msg(msg, sizeof(msg), i);
			check_msg(*f, (uint32_t)i + 1, msg);
		}
		for (size_t k = 0; k < nmore; k++)
			check_msg(*f, (uint32_t)(21 + k), more[k]);
		store_folder_close(f);
		store_user_close(u);
		store_free(&S);
		open_store(0, 4096, 0);
		*u = t_user(S, L, "alice@example.com");
		*f = t_folder(*u, L, "INBOX");
	}
}

/* Nobody calls store_compact(): once compact_after bytes were expunged,
 * the folder compacts its sealed segments by itself, online. */
Test(store, compaction_starts_on_its_own)
{
	store_free(&S);
	{
		struct store_config cfg = { .data_dir = D, .append_buf = 4096, .segment_max = 1000,
					    .compact_after = 1500 };
		cr_assert_eq(store_new(&cfg, &S), 0);
	}
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	char sp[700];
	struct stat sb;

	compaction_fill(f);
	snprintf(sp, sizeof(sp), "%s/mail/alice@example.com/f0/s1", D);
	cr_assert_eq(stat(sp, &sb), 0, "s1 exists before");
	/* 5 messages: below compact_after, nothing happens */
	expunge_range(f, 1, 5);
	{
		bool never = false;
		loop_run_until(L, &never, 100);
	}
	cr_assert_eq(stat(sp, &sb), 0, "compacted below compact_after");
	/* 10 more: past it */
	expunge_range(f, 6, 10);
	for (int i = 0; i < 100 && stat(sp, &sb) == 0; i++) {
		bool never = false;
		loop_run_until(L, &never, 20);
	}
	cr_expect_neq(stat(sp, &sb), 0, "s1 was not compacted away");
	compaction_check(&f, &u, NULL, 0);
	struct store_folder_status st;
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 5);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, compaction_reclaims_expunged_space_online)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	char sp[700];
	struct stat sb;

	compaction_fill(f);
	expunge_range(f, 1, 15);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	/* with a small segment_max, the next append rolls s1 over: sealed */
	{
		struct store_config cfg = { .data_dir = D, .append_buf = 4096, .segment_max = 1000 };
		cr_assert_eq(store_new(&cfg, &S), 0);
	}
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	cr_assert_eq(t_append(L, f, "roll\r\n", NULL), 0);
	{
		bool never = false;
		loop_run_until(L, &never, 20); /* the roll's open completes */
	}
	snprintf(sp, sizeof(sp), "%s/mail/alice@example.com/f0/s1", D);
	cr_assert_eq(stat(sp, &sb), 0);

	/* a read in flight while compaction runs keeps its old file */
	char buf[64];
	struct waitres rd = { 0 }, cw = { 0 };
	store_read(f, L, 16, 0, buf, sizeof(buf), wr_read, &rd);
	store_compact(f, L, wr_done, &cw);
	cr_assert_eq(t_append(L, f, "during\r\n", NULL), 0);
	t_run(L, &rd);
	t_run(L, &cw);
	cr_expect_gt(rd.res, 0);
	cr_expect_eq(memcmp(buf, "Subject: 15", 11), 0);
	cr_assert_geq(cw.res, 0, "compact: %s", strerror(-cw.res));
	cr_expect_gt(cw.res, 15 * 150, "reclaimed %d bytes", cw.res);
	cr_expect_neq(stat(sp, &sb), 0, "the old segment is gone");

	static const char *const later[] = { "roll\r\n", "during\r\n" };
	compaction_check(&f, &u, later, 2);
	store_folder_close(&f);
	store_user_close(&u);
	{
		char *out = NULL;
		size_t len = 0;
		FILE *fp = open_memstream(&out, &len);
		store_free(&S);
		cr_expect_eq(store_fsck(D, false, fp), 0);
		fclose(fp);
		cr_expect(strstr(out, "INBOX: 7 messages"), "%s", out);
		free(out);
		open_store(0, 4096, 0);
	}
}

/* Segment numbers: one space for shared (s<n>) and one-message (m<n>) files.
 * A shared segment numbered above every one-message file must not be
 * reused (truncated!) by the next open. */
Test(store, segment_numbers_survive_reopens)
{
	char *big = big_message(9000, 5);
	char small[64];

	for (int round = 0; round < 4; round++) {
		struct store_user *u = t_user(S, L, "alice@example.com");
		struct store_folder *f = t_folder(u, L, "INBOX");
		if (round == 0)
			cr_assert_eq(t_append_n(L, &f, 1, big, strlen(big), 4000, "b", 0, NULL), 0);
		snprintf(small, sizeof(small), "Subject: round %d\r\n\r\nx\r\n", round);
		cr_assert_eq(t_append(L, f, small, NULL), 0);
		for (int k = 0; k <= round; k++) {
			snprintf(small, sizeof(small), "Subject: round %d\r\n\r\nx\r\n", k);
			check_msg(f, (uint32_t)k + 2, small);
		}
		store_folder_close(&f);
		store_user_close(&u);
		store_free(&S);
		open_store(0, 4096, 0);
	}
	free(big);
}

Test(store, stray_segment_files_are_never_truncated)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	char *big = big_message(9000, 11);
	char p[700];
	struct stat sb;

	cr_assert_eq(t_append(L, f, msgs[0], NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	/* files under the numbers the next open and appends would take */
	for (int i = 2; i < 6; i++) {
		snprintf(p, sizeof(p), "%s/mail/alice@example.com/f0/%c%d", D, i % 2 ? 'm' : 's', i);
		int fd = open(p, O_WRONLY | O_CREAT, 0600);
		cr_assert(fd >= 0);
		cr_assert_eq(write(fd, "keep", 4), 4);
		close(fd);
	}
	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	cr_assert_eq(t_append(L, f, msgs[1], NULL), 0);
	cr_assert_eq(t_append_n(L, &f, 1, big, strlen(big), 3000, "b", 0, NULL), 0);
	check_msg(f, 1, msgs[0]);
	check_msg(f, 2, msgs[1]);
	for (int i = 2; i < 6; i++) {
		snprintf(p, sizeof(p), "%s/mail/alice@example.com/f0/%c%d", D, i % 2 ? 'm' : 's', i);
		cr_assert_eq(stat(p, &sb), 0);
		cr_expect_eq(sb.st_size, 4, "%s was touched", p);
	}
	free(big);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, per_user_quota_override_and_idle_cache)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	uint64_t b, m, lb, lm;

	store_user_set_quota(u, 30, 0);
	store_user_quota(u, &b, &m, &lb, &lm);
	cr_expect_eq(lb, 30);
	cr_expect_eq(lm, 0);
	cr_expect_eq(t_append(L, f, "0123456789012345678901234567890123456789\r\n", NULL), -EDQUOT);
	cr_expect_eq(t_append(L, f, "short\r\n", NULL), 0);
	store_user_set_quota(u, 0, 1); /* the store's bytes (none), one message */
	cr_expect_eq(t_append(L, f, "two\r\n", NULL), -EDQUOT);
	store_user_set_quota(u, STORE_QUOTA_NONE, STORE_QUOTA_NONE);
	cr_expect_eq(t_append(L, f, "two\r\n", NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
	/* idle in the cache: opened again without a reload, same state */
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	check_msg(f, 1, "short\r\n");
	check_msg(f, 2, "two\r\n");
	cr_expect_eq(t_append(L, f, "three\r\n", NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
	/* and with no cache at all */
	store_free(&S);
	{
		struct store_config cfg = { .data_dir = D, .user_cache = SIZE_MAX };
		cr_assert_eq(store_new(&cfg, &S), 0);
	}
	for (int i = 0; i < 3; i++) {
		u = t_user(S, L, "alice@example.com");
		f = t_folder(u, L, "INBOX");
		check_msg(f, 3, "three\r\n");
		store_folder_close(&f);
		store_user_close(&u);
	}
}

/* QRESYNC: which UIDs were expunged since a MODSEQ, across a reopen that
 * loads a checkpoint and replays the log after it. */
Test(store, vanished_since_modseq_survives_reopen)
{
	struct store_user *u;
	struct store_folder *f;
	struct waitres w = { 0 };
	struct store_uid_range *r;
	size_t n;
	uint32_t x1[] = { 3, 4 }, x2[] = { 30, 1 };
	uint64_t m1, m2;

	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	for (int i = 0; i < 30; i++)
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
	store_expunge(f, L, x1, 2, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	m1 = w.modseq;
	{
		bool never = false;
		loop_run_until(L, &never, 50); /* an automatic one in flight ends */
	}
	w = (struct waitres){ 0 };
	store_checkpoint(f, L, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	w = (struct waitres){ 0 };
	store_expunge(f, L, x2, 2, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	m2 = w.modseq;
	cr_assert_gt(m2, m1);

	for (int pass = 0; pass < 2; pass++) {
		cr_expect_eq(store_folder_vanished(f, m1 - 1, &r, &n), 1, "pass %d", pass);
		cr_assert_eq(n, 3, "pass %d", pass);
		cr_expect(r[0].lo == 1 && r[0].hi == 1 && r[1].lo == 3 && r[1].hi == 4 &&
			  r[2].lo == 30 && r[2].hi == 30, "pass %d", pass);
		free(r);
		cr_expect_eq(store_folder_vanished(f, m1, &r, &n), 1);
		cr_assert_eq(n, 2);
		cr_expect(r[0].lo == 1 && r[1].lo == 30);
		free(r);
		cr_expect_eq(store_folder_vanished(f, m2, &r, &n), 1);
		cr_expect_eq(n, 0);
		cr_expect_null(r);
		/* reopen: a checkpoint covers the first expunge, the log the second */
		t_reopen(&u, &f, "INBOX");
	}
	{
		char path[600];
		struct stat sb;
		snprintf(path, sizeof(path), "%s/mail/alice@example.com/f0/checkpoint", D);
		cr_expect_eq(stat(path, &sb), 0, "a checkpoint was written");
	}
	store_folder_close(&f);
	store_user_close(&u);
}

/* ---- rewriting the log ------------------------------------------------------ */

static void t_expunge_one(struct store_folder *f, uint32_t uid)
{
	struct waitres w = { 0 };
	store_expunge(f, L, &uid, 1, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0, "expunge %u: %s", uid, strerror(-w.res));
}

static int t_rewrite(struct store_folder *f)
{
	struct waitres w = { 0 };
	store_rewrite_log(f, L, wr_done, &w);
	t_run(L, &w);
	return w.res;
}

/* Appends n messages (UIDs from the folder's UIDNEXT on), then expunges
 * UIDs lo..hi one by one. */
static void fill_then_expunge(struct store_folder *f, int n, uint32_t lo, uint32_t hi)
{
	for (int i = 0; i < n; i++)
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
	for (uint32_t i = lo; i <= hi; i++)
		t_expunge_one(f, i);
}

/* Runs fsck on D; returns its report (free it), *rc_r its result. */
static char *fsck_report(bool repair, int *rc_r)
{
	char *rep = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&rep, &len);

	cr_assert(out);
	*rc_r = store_fsck(D, repair, out);
	fclose(out);
	return rep;
}

/* What a folder holds, as compared across a rewrite and a reopen. */
struct fstate {
	struct store_folder_status st;
	size_t n;
	uint32_t uid[64], flags[64];
	uint64_t modseq[64];
	char kw0[64][16];
	struct store_uid_range vanished[64];
	size_t nvanished;
	int vanished_whole;
};

static void fstate_take(struct store_folder *f, struct fstate *s)
{
	struct store_view *v;
	struct store_uid_range *r;

	memset(s, 0, sizeof(*s));
	store_folder_status(f, &s->st);
	cr_assert_eq(store_view_open(f, &v), 0);
	s->n = store_view_count(v);
	cr_assert_leq(s->n, 64);
	for (size_t i = 0; i < s->n; i++) {
		const struct store_msg *m = store_view_msg(v, i);
		s->uid[i] = m->uid;
		s->flags[i] = m->flags;
		s->modseq[i] = m->modseq;
		for (unsigned k = 0; k < 64; k++)
			if (m->keywords & (1ull << k)) {
				snprintf(s->kw0[i], sizeof(s->kw0[i]), "%s", store_view_keyword(v, k));
				break;
			}
	}
	store_view_free(&v);
	s->vanished_whole = store_folder_vanished(f, 0, &r, &s->nvanished);
	cr_assert_leq(s->nvanished, 64);
	if (s->nvanished)
		memcpy(s->vanished, r, s->nvanished * sizeof(*r));
	free(r);
}

static void fstate_expect_eq(const struct fstate *a, const struct fstate *b, const char *when)
{
	cr_expect_eq(a->st.messages, b->st.messages, "%s: messages", when);
	cr_expect_eq(a->st.uidnext, b->st.uidnext, "%s: uidnext", when);
	cr_expect_eq(a->st.uidvalidity, b->st.uidvalidity, "%s: uidvalidity", when);
	cr_expect_eq(a->st.highestmodseq, b->st.highestmodseq, "%s: highestmodseq", when);
	cr_expect_eq(a->st.unseen, b->st.unseen, "%s: unseen", when);
	cr_expect_eq(a->st.bytes, b->st.bytes, "%s: bytes", when);
	cr_assert_eq(a->n, b->n, "%s: view count", when);
	for (size_t i = 0; i < a->n; i++) {
		cr_expect_eq(a->uid[i], b->uid[i], "%s: uid #%zu", when, i);
		cr_expect_eq(a->flags[i], b->flags[i], "%s: flags of uid %u", when, a->uid[i]);
		cr_expect_eq(a->modseq[i], b->modseq[i], "%s: modseq of uid %u", when, a->uid[i]);
		cr_expect_str_eq(a->kw0[i], b->kw0[i], "%s: keyword of uid %u", when, a->uid[i]);
	}
	cr_expect_eq(a->vanished_whole, b->vanished_whole, "%s: vanished complete", when);
	cr_assert_eq(a->nvanished, b->nvanished, "%s: vanished runs", when);
	for (size_t i = 0; i < a->nvanished; i++)
		cr_expect(a->vanished[i].lo == b->vanished[i].lo &&
			  a->vanished[i].hi == b->vanished[i].hi, "%s: vanished run %zu", when, i);
}

static void reopen_inbox(struct store_user **u, struct store_folder **f)
{
	store_folder_close(f);
	store_user_close(u);
	store_free(&S);
	open_store(0, 4096, 0);
	*u = t_user(S, L, "alice@example.com");
	*f = t_folder(*u, L, "INBOX");
}

Test(store, rewrite_log_drops_history_and_keeps_the_state)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct fstate before, after;
	char lp[600], ckp[600];
	struct stat sb;
	uint32_t uid;
	off_t old_size;
	int res;

	for (int i = 0; i < 60; i++)
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
	/* flags and a keyword on survivors, superseded more than once */
	for (uint32_t i = 41; i <= 50; i++) {
		struct waitres w = { 0 };
		const char *kw[] = { "$Label1" };
		store_flags(f, L, &i, 1, STORE_FLAGS_ADD, STORE_F_FLAGGED, kw, 1, wr_modseq, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 0);
		w = (struct waitres){ 0 };
		store_flags(f, L, &i, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 0);
	}
	/* most of the folder goes, including its newest message: UIDNEXT must
	 * not fall back to what the survivors say */
	for (uint32_t i = 1; i <= 40; i++)
		t_expunge_one(f, i);
	t_expunge_one(f, 60);
	{
		struct waitres w = { 0 };
		store_checkpoint(f, L, wr_done, &w);
		t_run(L, &w);
		cr_assert_eq(w.res, 0);
	}
	snprintf(ckp, sizeof(ckp), "%s/mail/alice@example.com/f0/checkpoint", D);
	cr_assert_eq(stat(ckp, &sb), 0);
	log_path(lp, sizeof(lp));
	old_size = file_size(lp);
	fstate_take(f, &before);
	cr_assert_eq(before.st.messages, 19);
	cr_assert_eq(before.st.uidnext, 61);

	res = t_rewrite(f);
	cr_assert_gt(res, 0, "rewrite: %s", strerror(-res));
	cr_expect_eq(file_size(lp), res, "the log is what the rewrite wrote");
	cr_expect_lt(file_size(lp) * 3, old_size, "%lld bytes from %lld", (long long)res,
		     (long long)old_size);
	cr_expect_neq(stat(ckp, &sb), 0, "the old log's checkpoint is gone");
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "after the rewrite");

	/* the folder goes on in the new log, and all of it survives a reopen */
	cr_assert_eq(t_append(L, f, "after the rewrite\r\n", &uid), 0);
	cr_expect_eq(uid, 61);
	t_expunge_one(f, 45);
	fstate_take(f, &before);
	reopen_inbox(&u, &f);
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "after a reopen");
	check_msg(f, 41, msgs[40 % 3]);
	check_msg(f, 59, msgs[58 % 3]);
	check_msg(f, 61, "after the rewrite\r\n");

	/* a second rewrite of a rewritten log says the same again */
	cr_assert_gt(t_rewrite(f), 0);
	reopen_inbox(&u, &f);
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "after a second rewrite and reopen");
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	cr_expect_eq(store_fsck(D, false, stderr), 0, "fsck finds the rewritten log clean");
}

struct pending {
	struct waitres w;
	struct t_app ta;
};

Test(store, changes_made_during_a_rewrite_wait_and_are_kept)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct pending app[8] = { 0 };
	struct waitres rw = { 0 }, fw = { 0 };
	struct fstate before, after;
	uint32_t one = 1;

	fill_then_expunge(f, 30, 2, 20);
	/* the rewrite starts at once (nothing in flight); appends and a flag
	 * change issued now park until it is done */
	store_rewrite_log(f, L, wr_done, &rw);
	for (int i = 0; i < 8; i++) {
		struct store_folder *dst = f;
		char body[64];
		int n = snprintf(body, sizeof(body), "Subject: during %d\r\n\r\nx\r\n", i);
		cr_assert_eq(store_append_begin(L, &dst, 1, 1700000000, 0, NULL, 0, t_ready,
						&app[i].ta, &app[i].ta.a), 0);
		cr_assert_eq(store_append_write(app[i].ta.a, span_make(body, (size_t)n)), n);
		store_append_commit(app[i].ta.a, SPAN_LIT("blob"), wr_uid, &app[i].w);
	}
	store_flags(f, L, &one, 1, STORE_FLAGS_ADD, STORE_F_ANSWERED, NULL, 0, wr_modseq, &fw);
	t_run(L, &rw);
	cr_assert_gt(rw.res, 0, "rewrite: %s", strerror(-rw.res));
	for (int i = 0; i < 8; i++) {
		t_run(L, &app[i].w);
		cr_expect_eq(app[i].w.res, 0, "append %d: %s", i, strerror(-app[i].w.res));
		cr_expect(app[i].w.uid >= 31 && app[i].w.uid <= 38, "uid %u", app[i].w.uid);
		for (int k = 0; k < i; k++)
			cr_expect_neq(app[i].w.uid, app[k].w.uid);
	}
	t_run(L, &fw);
	cr_expect_eq(fw.res, 0);
	fstate_take(f, &before);
	cr_expect_eq(before.st.messages, 19);
	cr_expect_eq(before.flags[0] & STORE_F_ANSWERED, STORE_F_ANSWERED);
	reopen_inbox(&u, &f);
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "reopened");
	for (int i = 0; i < 8; i++) {
		char body[64];
		snprintf(body, sizeof(body), "Subject: during %d\r\n\r\nx\r\n", i);
		check_msg(f, app[i].w.uid, body);
	}
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, a_rewrite_starts_on_its_own_when_half_the_log_is_history)
{
	struct store_user *u;
	struct store_folder *f;
	struct fstate before, after;
	char lp[600];
	off_t peak = 0;

	store_free(&S);
	open_store(0, 4096, 2048); /* the automatic decision every 2 KiB of log */
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	log_path(lp, sizeof(lp));
	for (uint32_t i = 1; i <= 120; i++) {
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
		if (i % 4)
			t_expunge_one(f, i);
		if (file_size(lp) > peak)
			peak = file_size(lp);
	}
	{
		bool never = false;
		loop_run_until(L, &never, 50); /* one in flight ends */
	}
	/* 120 appends and 90 expunges were ~20 KiB of log; 30 messages ~3 KiB */
	cr_expect_lt(file_size(lp), 6000, "log of %lld bytes, peak %lld", (long long)file_size(lp),
		     (long long)peak);
	fstate_take(f, &before);
	cr_expect_eq(before.st.messages, 30);
	cr_expect_eq(before.st.uidnext, 121);
	reopen_inbox(&u, &f);
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "reopened");
	check_msg(f, 120, msgs[0]);
	store_folder_close(&f);
	store_user_close(&u);
}

Test(store, a_rewrite_a_crash_left_behind_is_ignored_and_fsck_removes_it)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct store_folder_status st;
	char lp[600], np[600];
	char *rep;
	int rc;
	struct stat sb;

	for (int i = 0; i < 3; i++)
		cr_assert_eq(t_append(L, f, msgs[i], NULL), 0);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	/* half a rewrite: a copy of the log's start, cut in its middle */
	log_path(lp, sizeof(lp));
	snprintf(np, sizeof(np), "%s/mail/alice@example.com/f0/log.new", D);
	{
		char cmd[1300];
		snprintf(cmd, sizeof(cmd), "head -c 100 '%s' > '%s'", lp, np);
		cr_assert_eq(system(cmd), 0);
	}
	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	store_folder_status(f, &st);
	cr_expect_eq(st.messages, 3);
	check_msg(f, 3, msgs[2]);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	rep = fsck_report(true, &rc);
	cr_expect_eq(rc, 1, "fsck reports the leftover");
	cr_expect(strstr(rep, "log.new"), "report: %s", rep);
	free(rep);
	cr_expect_neq(stat(np, &sb), 0, "fsck --repair removed it");
	cr_expect_eq(store_fsck(D, false, stderr), 0, "and then all is clean");
}

/* A rewrite the disk has no room for fails with ENOSPC and changes nothing:
 * the old log stays in use, a change made meanwhile goes to it, and a
 * reopen sees the same folder. */
Test(store, a_rewrite_without_room_fails_and_the_old_log_goes_on)
{
	char mnt[600], filler[700];
	struct store_config cfg = { .append_buf = 65536 };
	struct store *st2;
	struct store_user *u;
	struct store_folder *f;
	struct statvfs vs;
	char *blob = malloc(200001);
	struct waitres rw = { 0 }, fw = { 0 };
	struct fstate before, after;
	uint32_t uid, two = 2;
	int fd;

	memset(blob, 'b', 200000);
	blob[200000] = 0;
	tmpfs_store(mnt, sizeof(mnt), "size=2m", &cfg, &st2, &u, &f);
	/* ~200 KiB structure blobs: the survivors' records need ~400 KiB */
	for (int i = 0; i < 4; i++)
		cr_assert_eq(t_append_n(L, &f, 1, msgs[0], strlen(msgs[0]), 64, blob, 0, &uid), 0);
	{
		uint32_t x[] = { 1, 4 };
		store_expunge(f, L, x, 2, wr_modseq, &fw);
		t_run(L, &fw);
		cr_assert_eq(fw.res, 0);
	}
	/* leave ~100 KiB free */
	cr_assert_eq(statvfs(mnt, &vs), 0);
	snprintf(filler, sizeof(filler), "%s/filler", mnt);
	fd = open(filler, O_WRONLY | O_CREAT, 0600);
	cr_assert(fd >= 0);
	cr_assert_eq(posix_fallocate(fd, 0, (off_t)(vs.f_bavail * vs.f_frsize) - 100 * 1024), 0);
	close(fd);

	store_rewrite_log(f, L, wr_done, &rw);
	fw = (struct waitres){ 0 };
	store_flags(f, L, &two, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &fw);
	t_run(L, &rw);
	cr_expect_eq(rw.res, -ENOSPC, "rewrite: %d", rw.res);
	t_run(L, &fw);
	cr_expect_eq(fw.res, 0, "the change made during the rewrite: %s", strerror(-fw.res));
	{
		bool never = false;
		loop_run_until(L, &never, 20); /* the unlink of log.new */
	}
	{
		char np[700];
		struct stat sb;
		snprintf(np, sizeof(np), "%s/mail/alice@example.com/f0/log.new", mnt);
		cr_expect_neq(stat(np, &sb), 0, "the half-written rewrite is removed");
	}
	fstate_take(f, &before);
	cr_expect_eq(before.st.messages, 2);
	cr_expect_eq(before.flags[0] & STORE_F_SEEN, STORE_F_SEEN);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&st2);
	cr_assert_eq(store_new(&cfg, &st2), 0);
	u = t_user(st2, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "reopened after the failed rewrite");
	/* with room again, the rewrite goes through */
	unlink(filler);
	rw = (struct waitres){ 0 };
	store_rewrite_log(f, L, wr_done, &rw);
	t_run(L, &rw);
	cr_expect_gt(rw.res, 0, "rewrite: %d", rw.res);
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "rewritten");
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&st2);
	umount2(mnt, MNT_DETACH);
	free(blob);
}

/* The rewrite removes the checkpoint before the new log takes the name; if
 * a crash brought an old one back (or anything else left one of the old
 * log), the log's generation says it is not of this log: it is ignored,
 * never used to skip into the middle of the new log (whose tail replay
 * would then cut), and fsck reports it. */
Test(store, a_checkpoint_of_the_log_before_a_rewrite_is_never_used)
{
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *f = t_folder(u, L, "INBOX");
	struct fstate before, after;
	char ckp[600], lp[600], cmd[1400];
	struct waitres w = { 0 };
	char *rep;
	int rc;

	fill_then_expunge(f, 20, 1, 15);
	store_checkpoint(f, L, wr_done, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	snprintf(ckp, sizeof(ckp), "%s/mail/alice@example.com/f0/checkpoint", D);
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s.old'", ckp, ckp);
	cr_assert_eq(system(cmd), 0);
	cr_assert_gt(t_rewrite(f), 0);
	/* more records after the rewrite: the old checkpoint's offset lands in
	 * the middle of them */
	for (int i = 0; i < 50; i++)
		cr_assert_eq(t_append(L, f, msgs[i % 3], NULL), 0);
	fstate_take(f, &before);
	store_folder_close(&f);
	store_user_close(&u);
	store_free(&S);
	snprintf(cmd, sizeof(cmd), "cp '%s.old' '%s'", ckp, ckp);
	cr_assert_eq(system(cmd), 0);
	log_path(lp, sizeof(lp));
	off_t size = file_size(lp);
	{
		/* the old checkpoint's offset is inside the new log */
		uint64_t ck_off;
		FILE *ck = fopen(ckp, "rb");
		cr_assert(ck);
		cr_assert_eq(fseek(ck, 8, SEEK_SET), 0);
		cr_assert_eq(fread(&ck_off, 8, 1, ck), 1);
		fclose(ck);
		cr_assert_lt(ck_off, (uint64_t)size, "offset %llu, log %lld",
			     (unsigned long long)ck_off, (long long)size);
	}

	rep = fsck_report(false, &rc);
	cr_expect_eq(rc, 1);
	cr_expect(strstr(rep, "checkpoint is of the log before a rewrite"), "report: %s", rep);
	free(rep);

	open_store(0, 4096, 0);
	u = t_user(S, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	fstate_take(f, &after);
	fstate_expect_eq(&before, &after, "reopened with the old checkpoint back");
	cr_expect_eq(file_size(lp), size, "nothing of the log was cut");
	check_msg(f, 70, msgs[49 % 3]);
	store_folder_close(&f);
	store_user_close(&u);
}

/* STATUS by name (store_folder_status_of): the counts of a folder whose
 * files are closed come from the index in memory, with no file opened, and
 * agree with what a handle read before it closed, after appends, a flag
 * change and an expunge. A name the store does not know is -ENOENT (a
 * special-use folder before its first open included), a bad one -EINVAL. */
Test(store, status_by_name_opens_no_file)
{
	struct store_folder_status a, b;
	struct store_user *u = t_user(S, L, "alice@example.com");
	struct store_folder *g = t_folder(u, L, "Trash");
	struct waitres w = { 0 };
	uint32_t uid, two = 2;
	int base;

	for (int i = 0; i < 3; i++)
		cr_assert_eq(t_append(L, g, msgs[i], &uid), 0);
	store_flags(g, L, &two, 1, STORE_FLAGS_ADD, STORE_F_SEEN, NULL, 0, wr_modseq, &w);
	t_run(L, &w);
	cr_assert_eq(w.res, 0);
	t_expunge_one(g, 1);
	store_folder_status(g, &a);
	store_folder_close(&g);
	base = t_nfds();

	memset(&b, 0xa5, sizeof(b));
	cr_assert_eq(store_folder_status_of(u, "Trash", &b), 0);
	cr_expect_eq(t_nfds(), base, "Trash's files stay closed");
	cr_expect_eq(b.messages, 2);
	cr_expect_eq(b.unseen, 1);
	cr_expect_eq(b.uidnext, 4);
	cr_expect_eq(b.bytes, strlen(msgs[1]) + strlen(msgs[2]));
	cr_expect_eq(b.uidvalidity, a.uidvalidity);
	cr_expect_eq(b.highestmodseq, a.highestmodseq);
	cr_expect_eq(b.messages, a.messages);
	cr_expect_eq(b.unseen, a.unseen);
	cr_expect_eq(b.deleted, a.deleted);
	cr_expect_eq(b.bytes, a.bytes);

	cr_expect_eq(store_folder_status_of(u, "inbox", &b), 0, "INBOX in any case");
	cr_expect_eq(b.messages, 0);
	cr_expect_eq(store_folder_status_of(u, "Nope", &b), -ENOENT);
	cr_expect_eq(store_folder_status_of(u, "Sent", &b), -ENOENT, "created by its first open");
	cr_expect_eq(store_folder_status_of(u, "", &b), -EINVAL);
	cr_expect_eq(t_nfds(), base);
	store_user_close(&u);
}
