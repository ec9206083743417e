/* store_test_util.h - synchronous wrappers over the async store API for
 * tests: each runs a standalone loop until the callback fired. */
#ifndef RINGMAIL_TESTS_STORE_TEST_UTIL_H
#define RINGMAIL_TESTS_STORE_TEST_UTIL_H

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/store.h"

struct waitres {
	bool done;
	int res;
	uint32_t uid;
	uint64_t modseq;
	void *ptr;
};

static inline void wr_user(void *arg, int res, struct store_user *u)
{
	struct waitres *w = arg;
	w->res = res;
	w->ptr = u;
	w->done = true;
}

static inline void wr_folder(void *arg, int res, struct store_folder *f)
{
	struct waitres *w = arg;
	w->res = res;
	w->ptr = f;
	w->done = true;
}

static inline void wr_done(void *arg, int res)
{
	struct waitres *w = arg;
	w->res = res;
	w->done = true;
}

static inline void wr_modseq(void *arg, int res, uint64_t modseq)
{
	struct waitres *w = arg;
	w->res = res;
	w->modseq = modseq;
	w->done = true;
}

static inline void wr_uid(void *arg, int res, uint32_t uid)
{
	struct waitres *w = arg;
	w->res = res;
	w->uid = uid;
	w->done = true;
}

static inline void wr_read(void *arg, ssize_t res)
{
	struct waitres *w = arg;
	w->res = (int)res;
	w->done = true;
}

static inline void t_run(struct loop *l, struct waitres *w)
{
	int rc = loop_run_until(l, &w->done, 20000);
	cr_assert_eq(rc, 0, "loop timed out");
}

static inline struct loop *t_loop(void)
{
	struct loop *l = NULL;
	int rc = loop_new_standalone(&l);
	if (rc == -ENOSYS || rc == -EPERM)
		cr_skip_test("io_uring unavailable");
	cr_assert_eq(rc, 0, "loop_new_standalone: %s", strerror(-rc));
	return l;
}

static inline char *t_tmpdir(void)
{
	char *d = strdup("/tmp/ringmail-store-XXXXXX");
	cr_assert(mkdtemp(d));
	return d;
}

static inline void t_rmrf(const char *d)
{
	char cmd[1100];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	cr_expect_eq(system(cmd), 0);
}

static inline struct store_user *t_user(struct store *st, struct loop *l, const char *name)
{
	struct waitres w = { 0 };
	store_user_open(st, l, name, wr_user, &w);
	t_run(l, &w);
	cr_assert_eq(w.res, 0, "user open: %s", strerror(-w.res));
	return w.ptr;
}

static inline struct store_folder *t_folder(struct store_user *u, struct loop *l, const char *name)
{
	struct waitres w = { 0 };
	store_folder_open(u, l, name, wr_folder, &w);
	t_run(l, &w);
	cr_assert_eq(w.res, 0, "folder open %s: %s", name, strerror(-w.res));
	return w.ptr;
}

/* Appends msg to n folders, in chunks of chunk bytes; returns res, *uid_r. */
struct t_app {
	struct store_append *a;
	bool ready;
};

static inline void t_ready(void *arg)
{
	((struct t_app *)arg)->ready = true;
}

static inline int t_append_n(struct loop *l, struct store_folder **f, size_t n,
			     const void *msg, size_t len, size_t chunk, const char *blob,
			     uint32_t flags, uint32_t *uid_r)
{
	struct t_app ta = { 0 };
	struct waitres w = { 0 };
	size_t off = 0;
	int rc = store_append_begin(l, f, n, 1700000000, flags, NULL, 0, t_ready, &ta, &ta.a);
	if (rc)
		return rc;
	while (off < len) {
		size_t k = len - off < chunk ? len - off : chunk;
		ssize_t got = store_append_write(ta.a, span_make((const char *)msg + off, k));
		if (got < 0) {
			store_append_abort(&ta.a);
			return (int)got;
		}
		off += (size_t)got;
		if ((size_t)got < k) {
			ta.ready = false;
			cr_assert_eq(loop_run_until(l, &ta.ready, 20000), 0);
		}
	}
	store_append_commit(ta.a, span_cstr(blob), wr_uid, &w);
	t_run(l, &w);
	if (uid_r)
		*uid_r = w.uid;
	return w.res;
}

static inline int t_append(struct loop *l, struct store_folder *f, const char *msg,
			   uint32_t *uid_r)
{
	return t_append_n(l, &f, 1, msg, strlen(msg), 7, "blob", 0, uid_r);
}

/* Reads the whole message uid into a malloc'd buffer (NUL-terminated). */
static inline char *t_read_all(struct loop *l, struct store_folder *f, uint32_t uid,
			       size_t *len_r, size_t chunk)
{
	size_t cap = 1024, len = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		struct waitres w = { 0 };
		if (len + chunk > cap) {
			cap = (len + chunk) * 2;
			buf = realloc(buf, cap + 1);
		}
		store_read(f, l, uid, len, buf + len, chunk, wr_read, &w);
		t_run(l, &w);
		if (w.res < 0) {
			free(buf);
			if (len_r)
				*len_r = (size_t)w.res;
			return NULL;
		}
		if (w.res == 0)
			break;
		len += (size_t)w.res;
	}
	buf[len] = 0;
	if (len_r)
		*len_r = len;
	return buf;
}

#endif
