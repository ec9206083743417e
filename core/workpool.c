/* workpool.c - worker threads completing into loop rings via MSG_RING.
 *
 * One mutex and condition variable guard a singly linked FIFO of jobs. The
 * critical sections are a few pointer moves, so a loop thread submitting
 * never waits for long; the hashing itself runs outside the lock. */
#include "core/workpool.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often a worker retries a MSG_RING the target could not take (its CQ
 * overflowed), 1 ms apart, before it gives the completion up as lost. */
#define WORKPOOL_POST_RETRIES 1000
#define WORKPOOL_RING_ENTRIES 4

struct worker {
	struct workpool *wp;
	pthread_t thread;
	struct io_uring ring;
	bool ring_ok;
	bool thread_ok;
};

struct workpool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct workpool_job *head, *tail;
	unsigned queued;
	unsigned queue_max;
	bool stopping;
	unsigned nworkers;
	struct worker workers[];
};

/* Posts res into the job's loop as a CQE for job->done. Retries while the
 * target ring is momentarily full; any other error means the loop is gone,
 * and there is no one left to tell but stderr. */
static void worker_post(struct worker *w, struct workpool_job *job, int res)
{
	int r = -EIO;

	for (int tries = 0; tries < WORKPOOL_POST_RETRIES; tries++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
		struct io_uring_cqe *cqe;

		if (sqe == NULL) {
			r = -EBUSY;
			break;
		}
		io_uring_prep_msg_ring(sqe, loop_ring_fd(job->loop_), (unsigned)res,
				       loop_cb_udata(&job->done), 0);
		r = io_uring_submit_and_wait(&w->ring, 1);
		if (r >= 0)
			r = io_uring_wait_cqe(&w->ring, &cqe);
		if (r < 0)
			break;
		r = cqe->res;
		io_uring_cqe_seen(&w->ring, cqe);
		if (r >= 0)
			return;
		if (r != -EOVERFLOW && r != -EAGAIN && r != -EBUSY)
			break;
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	}
	fprintf(stderr, "workpool: completion lost: msg_ring: %s\n", strerror(-r));
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct workpool *wp = w->wp;

	for (;;) {
		struct workpool_job *job;
		bool cancel;

		pthread_mutex_lock(&wp->lock);
		while (wp->head == NULL && !wp->stopping)
			pthread_cond_wait(&wp->cond, &wp->lock);
		job = wp->head;
		if (job == NULL) {
			pthread_mutex_unlock(&wp->lock);
			break;
		}
		wp->head = job->next_;
		if (wp->head == NULL)
			wp->tail = NULL;
		wp->queued--;
		cancel = wp->stopping;
		pthread_mutex_unlock(&wp->lock);

		job->res_ = cancel ? -ECANCELED : job->run(job);
		worker_post(w, job, job->res_);
	}
	return NULL;
}

int workpool_new(unsigned nthreads, unsigned queue_max, struct workpool **wp_r)
{
	struct workpool *wp;
	int r;

	if (nthreads == 0)
		nthreads = WORKPOOL_THREADS_DEFAULT;
	if (queue_max == 0)
		queue_max = WORKPOOL_QUEUE_DEFAULT;
	if (nthreads > WORKPOOL_THREADS_MAX)
		return -EINVAL;
	wp = calloc(1, sizeof(*wp) + nthreads * sizeof(wp->workers[0]));
	if (wp == NULL)
		return -ENOMEM;
	pthread_mutex_init(&wp->lock, NULL);
	pthread_cond_init(&wp->cond, NULL);
	wp->queue_max = queue_max;
	wp->nworkers = nthreads;
	for (unsigned i = 0; i < nthreads; i++) {
		struct worker *w = &wp->workers[i];

		w->wp = wp;
		r = io_uring_queue_init(WORKPOOL_RING_ENTRIES, &w->ring, 0);
		if (r < 0)
			goto err;
		w->ring_ok = true;
		/* Workers take no signals: a process-directed SIGHUP or SIGTERM
		 * must reach the thread that waits for it, never kill the
		 * process through a worker that leaves it unblocked. */
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		r = -pthread_create(&w->thread, NULL, worker_main, w);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (r < 0)
			goto err;
		w->thread_ok = true;
	}
	*wp_r = wp;
	return 0;
err:
	workpool_free(&wp);
	return r;
}

int workpool_submit(struct workpool *wp, struct loop *loop, struct workpool_job *job)
{
	int r = 0;

	job->loop_ = loop;
	job->next_ = NULL;
	pthread_mutex_lock(&wp->lock);
	if (wp->stopping)
		r = -ESHUTDOWN;
	else if (wp->queued >= wp->queue_max)
		r = -EAGAIN;
	if (r == 0) {
		if (wp->tail != NULL)
			wp->tail->next_ = job;
		else
			wp->head = job;
		wp->tail = job;
		wp->queued++;
		pthread_cond_signal(&wp->cond);
	}
	pthread_mutex_unlock(&wp->lock);
	return r;
}

unsigned workpool_queued(struct workpool *wp)
{
	unsigned n;

	pthread_mutex_lock(&wp->lock);
	n = wp->queued;
	pthread_mutex_unlock(&wp->lock);
	return n;
}

void workpool_free(struct workpool **wp_r)
{
	struct workpool *wp = *wp_r;

	if (wp == NULL)
		return;
	pthread_mutex_lock(&wp->lock);
	wp->stopping = true;
	pthread_cond_broadcast(&wp->cond);
	pthread_mutex_unlock(&wp->lock);
	for (unsigned i = 0; i < wp->nworkers; i++) {
		struct worker *w = &wp->workers[i];

		if (w->thread_ok)
			pthread_join(w->thread, NULL);
	}
	/* Workers drain the queue before they exit; with no worker at all (a
	 * failed start) nothing was ever submitted. */
	for (unsigned i = 0; i < wp->nworkers; i++) {
		if (wp->workers[i].ring_ok)
			io_uring_queue_exit(&wp->workers[i].ring);
	}
	pthread_cond_destroy(&wp->cond);
	pthread_mutex_destroy(&wp->lock);
	free(wp);
	*wp_r = NULL;
}
