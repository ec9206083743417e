/* A standalone loop (core/loop.h): loop_sqe completions reach their
 * loop_cb, loop_defer runs after the batch, loop_run_until times out. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"

static struct loop *loop;

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void setup(void)
{
	int rc = loop_new_standalone(&loop);
	if (rc == -ENOSYS || rc == -EPERM || rc == -EACCES) {
		loop = NULL;
		return;
	}
	cr_assert_eq(rc, 0, "loop_new_standalone: %s", strerror(-rc));
	cr_assert_not_null(loop);
}

static void teardown(void)
{
	loop_free(&loop);
	cr_assert_null(loop, "loop_free must clear the pointer");
}

#define NEED_LOOP()                                                     \
	do {                                                            \
		if (!loop)                                              \
			cr_skip_test("io_uring is unavailable here");   \
	} while (0)

/* A request with an embedded completion target, as modules use it. */
struct req {
	struct loop_cb cb;
	int id;
	int res;
	int calls;
	struct loop *seen_loop;
	bool *done;
	char *log; /* order of events */
	bool defer_once;
};

static void log_event(char *log, const char *ev)
{
	strcat(log, ev);
}

static void deferred_fn(struct loop *l, void *arg)
{
	struct req *r = arg;
	cr_assert_eq(l, r->seen_loop);
	log_event(r->log, "D");
	*r->done = true;
}

static void req_done(struct loop *l, struct loop_cb *cb, int res, uint32_t flags)
{
	struct req *r = (struct req *)cb; /* cb is the first member */
	(void)flags;
	r->calls++;
	r->res = res;
	r->seen_loop = l;
	if (r->log)
		log_event(r->log, "c");
	if (r->defer_once) {
		r->defer_once = false;
		cr_assert_eq(loop_defer(l, deferred_fn, r), 0);
	}
	if (r->done && !r->log)
		*r->done = true;
}

Test(loop, standalone_has_no_server, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	cr_assert_null(loop_server(loop));
	cr_assert_not_null(loop_log(loop));
	cr_assert_geq(loop_ring_fd(loop), 0);
	cr_assert_eq(loop_msg(loop, 0, LOOP_MSG_USER, 1), -EINVAL,
		     "a loop without a server has no peers to message");
}

Test(loop, nop_completes_into_its_cb, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	bool done = false;
	struct req r = { .cb.fn = req_done, .res = -12345, .done = &done };

	struct io_uring_sqe *sqe = loop_sqe(loop, &r.cb);
	cr_assert_not_null(sqe);
	cr_assert_eq(sqe->user_data, loop_cb_udata(&r.cb));
	io_uring_prep_nop(sqe); /* preparing the SQE keeps its routing */
	cr_assert_eq(loop_run_until(loop, &done, 5000), 0);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(r.res, 0);
	cr_assert_eq(r.seen_loop, loop);
}

/* The SQE from loop_sqe() is routed even when the caller only changes the
 * opcode fields (the documented use: prep a real operation on it). */
Test(loop, real_operation_completes_with_its_result, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	int p[2];
	char buf[16] = { 0 };
	bool done = false;
	struct req r = { .cb.fn = req_done, .done = &done };

	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(write(p[1], "hello", 5), 5);
	struct io_uring_sqe *sqe = loop_sqe(loop, &r.cb);
	io_uring_prep_read(sqe, p[0], buf, sizeof(buf), 0);
	cr_assert_eq(loop_run_until(loop, &done, 5000), 0);
	cr_assert_eq(r.calls, 1);
	cr_assert_eq(r.res, 5);
	cr_assert_str_eq(buf, "hello");
	close(p[0]);
	close(p[1]);
}

/* More SQEs than the submission queue holds: loop_sqe submits when full
 * and never returns NULL; every completion arrives exactly once. */
Test(loop, more_sqes_than_the_queue_holds, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	enum { N = 10000 };
	static struct req reqs[N];
	bool done = false;

	memset(reqs, 0, sizeof(reqs));
	for (int i = 0; i < N; i++) {
		reqs[i].cb.fn = req_done;
		reqs[i].id = i;
		reqs[i].res = -1;
		struct io_uring_sqe *sqe = loop_sqe(loop, &reqs[i].cb);
		cr_assert_not_null(sqe, "loop_sqe returned NULL at %d", i);
	}
	reqs[N - 1].done = &done;
	/* The last one may complete before the others are dispatched; run
	 * until every one is seen. */
	uint64_t t0 = now_ms();
	while (now_ms() - t0 < 10000) {
		int missing = 0;
		(void)loop_run_until(loop, &done, 100);
		for (int i = 0; i < N; i++)
			missing += reqs[i].calls == 0;
		if (!missing)
			break;
		done = false;
	}
	for (int i = 0; i < N; i++) {
		cr_assert_eq(reqs[i].calls, 1, "request %d completed %d times", i, reqs[i].calls);
		cr_assert_eq(reqs[i].res, 0);
	}
}

/* Three completions in one batch; the first defers work. The deferred
 * function runs once, after all three callbacks. */
Test(loop, defer_runs_after_the_batch, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	char log[32] = "";
	bool done = false;
	struct req r[3];

	for (int i = 0; i < 3; i++) {
		r[i] = (struct req){ .cb.fn = req_done, .id = i, .done = &done, .log = log };
		(void)loop_sqe(loop, &r[i].cb);
	}
	r[0].defer_once = true;
	cr_assert_eq(loop_run_until(loop, &done, 2000), 0);
	cr_assert_str_eq(log, "cccD");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(r[i].calls, 1);
}

/* A deferred function that ends the run: loop_run_until returns at once,
 * without sleeping out the rest of its timeout waiting for a completion
 * that will never come. */
Test(loop, run_until_returns_promptly_when_deferred_work_is_done, .init = setup,
     .fini = teardown)
{
	NEED_LOOP();
	char log[32] = "";
	bool done = false;
	struct req r = { .cb.fn = req_done, .done = &done, .log = log, .defer_once = true };

	(void)loop_sqe(loop, &r.cb);
	uint64_t t0 = now_ms();
	cr_assert_eq(loop_run_until(loop, &done, 10000), 0);
	uint64_t took = now_ms() - t0;
	cr_assert_str_eq(log, "cD");
	cr_expect_lt(took, 2000, "loop_run_until took %llu ms after done was set",
		     (unsigned long long)took);
}

Test(loop, run_until_times_out, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	bool done = false;
	uint64_t t0 = now_ms();
	cr_assert_eq(loop_run_until(loop, &done, 300), -ETIMEDOUT);
	uint64_t took = now_ms() - t0;
	cr_assert_geq(took, 300, "returned after %llu ms", (unsigned long long)took);
	cr_assert_lt(took, 5000, "returned after %llu ms", (unsigned long long)took);
	cr_assert(!done);
}

Test(loop, run_until_done_already, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	bool done = true;
	cr_assert_eq(loop_run_until(loop, &done, 100), 0);
}

Test(loop, now_ms_moves, .init = setup, .fini = teardown)
{
	NEED_LOOP();
	bool done = false;
	uint64_t before = loop_now_ms(loop);
	cr_assert_eq(loop_run_until(loop, &done, 150), -ETIMEDOUT);
	cr_assert_geq(loop_now_ms(loop), before + 100, "the loop's clock did not advance");
}
