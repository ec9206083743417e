/* Tests for core/workpool: jobs run on workers and complete into the loop
 * through MSG_RING; a full queue says -EAGAIN; shutdown cancels what is
 * still queued. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "core/loop.h"
#include "core/workpool.h"

struct tjob {
	struct workpool_job job;
	pthread_t loop_thread;
	pthread_t ran_on;
	int value;
	int res;
	bool done_on_loop_thread;
	atomic_bool *gate; /* NULL: do not wait */
	atomic_bool *started;
	int *ndone;
};

static int tjob_run(struct workpool_job *job)
{
	struct tjob *t = (struct tjob *)job;

	t->ran_on = pthread_self();
	if (t->started != NULL)
		atomic_store(t->started, true);
	while (t->gate != NULL && !atomic_load(t->gate))
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	return t->value * 2;
}

static void tjob_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct tjob *t = (struct tjob *)((char *)cb - offsetof(struct tjob, job.done));

	(void)loop;
	(void)flags;
	t->res = res;
	t->done_on_loop_thread = pthread_equal(pthread_self(), t->loop_thread);
	(*t->ndone)++;
}

static struct loop *new_loop_or_skip(void)
{
	struct loop *loop = NULL;
	int r = loop_new_standalone(&loop);

	if (r < 0)
		cr_skip_test("io_uring unavailable: %s", strerror(-r));
	return loop;
}

static void tjob_init(struct tjob *t, int value, int *ndone)
{
	memset(t, 0, sizeof(*t));
	t->job.run = tjob_run;
	t->job.done.fn = tjob_done;
	t->loop_thread = pthread_self();
	t->value = value;
	t->ndone = ndone;
}

static int ndone_target;
static bool reached(const int *ndone)
{
	return *ndone >= ndone_target;
}

/* Runs the loop until *ndone reaches want (or 5 s pass). */
static void run_until_count(struct loop *loop, int *ndone, int want)
{
	bool flag = false;

	ndone_target = want;
	for (int i = 0; i < 500 && !reached(ndone); i++) {
		flag = false;
		(void)loop_run_until(loop, &flag, 10);
	}
}

Test(workpool, completes_into_loop)
{
	struct loop *loop = new_loop_or_skip();
	struct workpool *wp;
	struct tjob jobs[32];
	int ndone = 0;

	cr_assert_eq(workpool_new(2, 64, &wp), 0);
	for (int i = 0; i < 32; i++) {
		tjob_init(&jobs[i], i, &ndone);
		cr_assert_eq(workpool_submit(wp, loop, &jobs[i].job), 0);
	}
	run_until_count(loop, &ndone, 32);
	cr_assert_eq(ndone, 32);
	for (int i = 0; i < 32; i++) {
		cr_assert_eq(jobs[i].res, 2 * i);
		cr_assert(jobs[i].done_on_loop_thread, "done must run on the loop thread");
		cr_assert(!pthread_equal(jobs[i].ran_on, jobs[i].loop_thread),
			  "run must not run on the loop thread");
	}
	workpool_free(&wp);
	cr_assert_null(wp);
	loop_free(&loop);
}

Test(workpool, negative_results_arrive_intact)
{
	struct loop *loop = new_loop_or_skip();
	struct workpool *wp;
	struct tjob t;
	int ndone = 0;

	cr_assert_eq(workpool_new(1, 4, &wp), 0);
	tjob_init(&t, -EINVAL, &ndone);
	t.value = -11; /* run returns -22 */
	cr_assert_eq(workpool_submit(wp, loop, &t.job), 0);
	run_until_count(loop, &ndone, 1);
	cr_assert_eq(t.res, -22);
	workpool_free(&wp);
	loop_free(&loop);
}

Test(workpool, full_queue_is_eagain)
{
	struct loop *loop = new_loop_or_skip();
	struct workpool *wp;
	struct tjob busy, queued, extra;
	atomic_bool gate = false, started = false;
	int ndone = 0;

	cr_assert_eq(workpool_new(1, 1, &wp), 0);
	tjob_init(&busy, 1, &ndone);
	busy.gate = &gate;
	busy.started = &started;
	cr_assert_eq(workpool_submit(wp, loop, &busy.job), 0);
	while (!atomic_load(&started))
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	tjob_init(&queued, 2, &ndone);
	cr_assert_eq(workpool_submit(wp, loop, &queued.job), 0);
	cr_assert_eq(workpool_queued(wp), 1);
	tjob_init(&extra, 3, &ndone);
	cr_assert_eq(workpool_submit(wp, loop, &extra.job), -EAGAIN);
	atomic_store(&gate, true);
	run_until_count(loop, &ndone, 2);
	cr_assert_eq(ndone, 2);
	cr_assert_eq(busy.res, 2);
	cr_assert_eq(queued.res, 4);
	workpool_free(&wp);
	loop_free(&loop);
}

static void *free_pool(void *arg)
{
	workpool_free(arg);
	return NULL;
}

Test(workpool, shutdown_cancels_queued_jobs)
{
	struct loop *loop = new_loop_or_skip();
	struct workpool *wp;
	struct tjob busy, q1, q2;
	atomic_bool gate = false, started = false;
	pthread_t th;
	int ndone = 0;

	cr_assert_eq(workpool_new(1, 8, &wp), 0);
	tjob_init(&busy, 5, &ndone);
	busy.gate = &gate;
	busy.started = &started;
	cr_assert_eq(workpool_submit(wp, loop, &busy.job), 0);
	while (!atomic_load(&started))
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	tjob_init(&q1, 6, &ndone);
	tjob_init(&q2, 7, &ndone);
	cr_assert_eq(workpool_submit(wp, loop, &q1.job), 0);
	cr_assert_eq(workpool_submit(wp, loop, &q2.job), 0);
	cr_assert_eq(pthread_create(&th, NULL, free_pool, &wp), 0);
	nanosleep(&(struct timespec){ .tv_nsec = 50000000 }, NULL);
	atomic_store(&gate, true);
	pthread_join(th, NULL);
	cr_assert_null(wp);
	run_until_count(loop, &ndone, 3);
	cr_assert_eq(ndone, 3);
	cr_assert_eq(busy.res, 10, "a running job finishes normally");
	cr_assert_eq(q1.res, -ECANCELED);
	cr_assert_eq(q2.res, -ECANCELED);
	loop_free(&loop);
}

Test(workpool, bad_arguments)
{
	struct workpool *wp = NULL;

	cr_assert_eq(workpool_new(WORKPOOL_THREADS_MAX + 1, 0, &wp), -EINVAL);
	cr_assert_null(wp);
	workpool_free(&wp); /* NULL is fine */
}
