/* workpool.h - a few worker threads for CPU-heavy work (password hashing).
 *
 * A loop thread submits a job; a worker runs job->run() and posts the result
 * back into the submitting loop's ring with IORING_OP_MSG_RING from the
 * worker's own small ring, so job->done.fn runs on the loop thread as an
 * ordinary completion and the loop never blocks or polls.
 *
 * The queue is bounded: a full queue fails the submit with -EAGAIN, which a
 * protocol turns into a temporary error. Jobs are not allocated by the pool:
 * the caller embeds struct workpool_job in its own request and keeps it
 * alive until done.fn has run. */
#ifndef RINGMAIL_CORE_WORKPOOL_H
#define RINGMAIL_CORE_WORKPOOL_H

#include <stdint.h>

#include "core/loop.h"

#define WORKPOOL_THREADS_DEFAULT 2u
#define WORKPOOL_THREADS_MAX 64u
#define WORKPOOL_QUEUE_DEFAULT 1024u

struct workpool;

struct workpool_job {
	/* Runs on a worker thread. Returns a value >= 0, or a negative errno;
	 * it arrives as done.fn's res. Must not touch the loop. */
	int (*run)(struct workpool_job *job);
	/* Runs on the submitting loop's thread with res = run()'s result, or
	 * -ECANCELED when the pool shut down before the job ran. */
	struct loop_cb done;
	/* Private to the pool. */
	struct loop *loop_;
	struct workpool_job *next_;
	int res_;
};

/* Starts nthreads workers (0: WORKPOOL_THREADS_DEFAULT) with a queue of at
 * most queue_max waiting jobs (0: WORKPOOL_QUEUE_DEFAULT). Returns 0,
 * -EINVAL, -ENOMEM, or the error of creating a thread or a worker ring
 * (-ENOSYS when io_uring is unavailable). */
int workpool_new(unsigned nthreads, unsigned queue_max, struct workpool **wp_r);

/* Queues job for a worker; its done.fn later runs on loop's thread. Callable
 * from any loop thread. Returns 0, -EAGAIN when the queue is full, or
 * -ESHUTDOWN while the pool is being freed; on error done.fn is never
 * called. */
int workpool_submit(struct workpool *wp, struct loop *loop, struct workpool_job *job);

/* The number of jobs waiting (not yet picked by a worker). Thread-safe,
 * a snapshot. */
unsigned workpool_queued(struct workpool *wp);

/* Stops the pool: jobs already running finish and complete normally; jobs
 * still queued complete with -ECANCELED without running. Waits for the
 * workers to exit, then frees the pool and sets *wp_r to NULL. The loops
 * jobs complete into must still exist (their rings receive the
 * completions); call this before freeing them. */
void workpool_free(struct workpool **wp_r);

#endif
