/* queue.c - the durable outbound queue (see queue.h, docs/queue.md). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"
#include "store/queue.h"

#define QUEUE_MAGIC1 "RMQ1\n" /* envelope, message to the end of the file */
#define QUEUE_MAGIC2 "RMQ2 "  /* "RMQ2 <body len:20> <dkim len:10>\n" */
#define QUEUE_FIRST_LEN 37      /* that first line, fixed width */
#define QUEUE_HDR_MAX (64 * 1024 + 1024 * 1024) /* envelope text of one message */

struct qwrite;

/* Per loop: the directory fsync shared by every rename of one tick. */
struct queue_loop {
	struct loop_cb cb;
	struct queue *q;
	struct qwrite *pending;  /* renamed, waiting for the next dir fsync */
	struct qwrite *inflight; /* covered by the fsync in flight */
	bool busy, deferred;
};

struct queue {
	char dir[4096];
	int dirfd;
	unsigned nloops;
	struct queue_loop *loops;
	_Atomic uint32_t seq;
	queue_new_fn *on_new;
	void *on_new_arg;
};

enum qw_step { QW_OPEN, QW_WRITE, QW_SYNC, QW_CLOSE, QW_RENAME, QW_DIRSYNC, QW_UNLINK1, QW_UNLINK2 };

struct qwrite {
	struct loop_cb cb;
	struct queue *q;
	struct loop *loop;
	enum qw_step step;
	int fd;
	int rc;
	char tmp[QUEUE_ID_MAX + 16], final[QUEUE_ID_MAX + 16];
	char id[QUEUE_ID_MAX];
	bool submit;                 /* a new message (spool hand-off) */
	queue_held_cb *held_cb;      /* submit: the entry goes here, not to on_new */
	uint8_t *buf;
	size_t len, off, hdr_len;
	struct queue_entry *entry;   /* submit: handed to on_new */
	queue_submit_cb *submit_cb;
	queue_done_cb *done_cb;
	void *arg;
	struct qwrite *next;
};

void queue_entry_free(struct queue_entry *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->nrcpts; i++) {
		free(e->rcpts[i].addr);
		free(e->rcpts[i].orcpt);
	}
	free(e->rcpts);
	free(e->from);
	free(e->envid);
	free(e->dkim);
	free(e);
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int queue_new(const char *data_dir, unsigned nloops, struct queue **q_r)
{
	struct queue *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	snprintf(q->dir, sizeof(q->dir), "%s/queue", data_dir);
	if (mkdir(q->dir, 0750) < 0 && errno != EEXIST) {
		free(q);
		return -errno;
	}
	q->dirfd = open(q->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q->dirfd < 0) {
		int rc = -errno;
		free(q);
		return rc;
	}
	q->nloops = nloops ? nloops : 1;
	q->loops = calloc(q->nloops, sizeof(*q->loops));
	if (!q->loops) {
		close(q->dirfd);
		free(q);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < q->nloops; i++)
		q->loops[i].q = q;
	/* A parent directory created now must be durable too. */
	int pfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd >= 0) {
		fsync(pfd);
		close(pfd);
	}
	DIR *d = opendir(q->dir);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d))) {
			size_t n = strlen(de->d_name);
			if (n > 4 && !strcmp(de->d_name + n - 4, ".tmp"))
				unlinkat(q->dirfd, de->d_name, 0);
		}
		closedir(d);
	}
	q->seq = (uint32_t)getpid() << 12;
	*q_r = q;
	return 0;
}

void queue_free(struct queue **q_r)
{
	struct queue *q = *q_r;
	if (!q)
		return;
	close(q->dirfd);
	free(q->loops);
	free(q);
	*q_r = NULL;
}

int queue_dirfd(const struct queue *q)
{
	return q->dirfd;
}

void queue_set_on_new(struct queue *q, queue_new_fn *fn, void *arg)
{
	q->on_new = fn;
	q->on_new_arg = arg;
}

/* ---- the write chain ---------------------------------------------------- */

static void qw_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags);

static void qw_finish(struct qwrite *w)
{
	if (w->submit && w->held_cb) {
		struct queue_entry *e = w->rc ? NULL : w->entry;
		if (e)
			w->entry = NULL;
		w->held_cb(w->arg, w->rc, e);
	} else if (w->submit) {
		if (w->rc == 0 && w->entry && w->q->on_new) {
			struct queue_entry *e = w->entry;
			w->entry = NULL;
			w->q->on_new(w->q->on_new_arg, w->loop, e);
		}
		if (w->submit_cb)
			w->submit_cb(w->arg, w->rc, w->id);
	} else if (w->done_cb) {
		w->done_cb(w->arg, w->rc);
	}
	queue_entry_free(w->entry);
	free(w->buf);
	free(w);
}

static struct queue_loop *qloop(struct queue *q, struct loop *loop)
{
	unsigned id = (unsigned)loop_id(loop);
	return &q->loops[id < q->nloops ? id : 0];
}

static void dirsync_start(struct loop *loop, void *arg);

static void dirsync_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	struct queue_loop *ql = (struct queue_loop *)cb;
	struct qwrite *w = ql->inflight;
	ql->inflight = NULL;
	ql->busy = false;
	while (w) {
		struct qwrite *next = w->next;
		if (res < 0)
			w->rc = res;
		qw_finish(w);
		w = next;
	}
	if (ql->pending && !ql->deferred) {
		ql->deferred = true;
		if (loop_defer(loop, dirsync_start, ql))
			dirsync_start(loop, ql);
	}
}

static void dirsync_start(struct loop *loop, void *arg)
{
	struct queue_loop *ql = arg;
	ql->deferred = false;
	if (ql->busy || !ql->pending)
		return;
	ql->inflight = ql->pending;
	ql->pending = NULL;
	ql->busy = true;
	ql->cb.fn = dirsync_done;
	io_uring_prep_fsync(loop_sqe(loop, &ql->cb), ql->q->dirfd, 0);
}

/* Group commit: every rename of this tick waits for one directory fsync. */
static void dirsync_join(struct qwrite *w)
{
	struct queue_loop *ql = qloop(w->q, w->loop);
	w->next = ql->pending;
	ql->pending = w;
	if (!ql->busy && !ql->deferred) {
		ql->deferred = true;
		if (loop_defer(w->loop, dirsync_start, ql))
			dirsync_start(w->loop, ql);
	}
}

static void qw_submit(struct qwrite *w)
{
	struct io_uring_sqe *sqe = loop_sqe(w->loop, &w->cb);
	switch (w->step) {
	case QW_OPEN:
		io_uring_prep_openat(sqe, w->q->dirfd, w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
				     0640);
		break;
	case QW_WRITE: {
		size_t n = w->len - w->off;
		if (n > (1u << 30))
			n = 1u << 30;
		io_uring_prep_write(sqe, w->fd, w->buf + w->off, (unsigned)n, w->off);
		break;
	}
	case QW_SYNC:
		io_uring_prep_fsync(sqe, w->fd, IORING_FSYNC_DATASYNC);
		break;
	case QW_CLOSE:
		io_uring_prep_close(sqe, w->fd);
		break;
	case QW_RENAME:
		io_uring_prep_renameat(sqe, w->q->dirfd, w->tmp, w->q->dirfd, w->final, 0);
		break;
	case QW_UNLINK1:
		io_uring_prep_unlinkat(sqe, w->q->dirfd, w->tmp, 0);
		break;
	case QW_UNLINK2:
		io_uring_prep_unlinkat(sqe, w->q->dirfd, w->final, 0);
		break;
	case QW_DIRSYNC:
		break;
	}
}

static void qw_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct qwrite *w = (struct qwrite *)cb;
	switch (w->step) {
	case QW_OPEN:
		if (res < 0) {
			w->rc = res;
			qw_finish(w);
			return;
		}
		w->fd = res;
		w->step = w->len ? QW_WRITE : QW_SYNC;
		break;
	case QW_WRITE:
		if (res <= 0) {
			w->rc = res < 0 ? res : -EIO;
			w->step = QW_CLOSE;
			break;
		}
		w->off += (size_t)res;
		if (w->off >= w->len)
			w->step = QW_SYNC;
		break;
	case QW_SYNC:
		if (res < 0)
			w->rc = res;
		w->step = QW_CLOSE;
		break;
	case QW_CLOSE:
		w->fd = -1;
		if (w->rc) {
			/* Nothing half-written may survive as a queued message. */
			w->step = QW_UNLINK1;
			w->final[0] = '\0';
			break;
		}
		w->step = QW_RENAME;
		break;
	case QW_RENAME:
		if (res < 0) {
			w->rc = res;
			w->step = QW_UNLINK1;
			w->final[0] = '\0';
			break;
		}
		w->step = QW_DIRSYNC;
		dirsync_join(w);
		return;
	case QW_UNLINK1:
		if (w->final[0]) {
			w->step = QW_UNLINK2;
			break;
		}
		if (w->submit || w->done_cb == NULL || w->rc) {
			qw_finish(w);
			return;
		}
		/* queue_remove(): both unlinks done; make them durable. */
		w->step = QW_DIRSYNC;
		dirsync_join(w);
		return;
	case QW_UNLINK2:
		if (res < 0 && res != -ENOENT && !w->rc)
			w->rc = res;
		w->step = QW_DIRSYNC;
		dirsync_join(w);
		return;
	case QW_DIRSYNC:
		return;
	}
	qw_submit(w);
}

static struct qwrite *qw_new(struct queue *q, struct loop *loop)
{
	struct qwrite *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->cb.fn = qw_step;
	w->q = q;
	w->loop = loop;
	w->fd = -1;
	return w;
}

/* ---- spooling ----------------------------------------------------------- */

enum sp_op { SP_IDLE, SP_OPEN, SP_WRITE, SP_FIRST };

/* A message being written to <id>.msg.tmp as it arrives. Two buffers: one
 * fills while the other is written through the ring. */
struct queue_spool {
	struct loop_cb cb;
	struct queue *q;
	struct loop *loop;
	struct queue_entry *e;
	enum sp_op op;            /* the operation in flight, SP_IDLE when none */
	int fd;
	int rc;
	bool committed, aborted, want_ready, first_done;
	uint8_t *buf[2];
	size_t len[2], cap[2];
	unsigned fill;            /* the buffer that takes new bytes */
	size_t woff;              /* bytes of buf[fill ^ 1] written so far */
	uint64_t off;             /* file offset of that buffer */
	uint64_t body_len;
	size_t dkim_len;
	char first[QUEUE_FIRST_LEN + 1];
	queue_ready_fn *ready;
	void *ready_arg;
	queue_submit_cb *done;
	queue_held_cb *held;
	void *done_arg;
	char tmp[QUEUE_ID_MAX + 16], final[QUEUE_ID_MAX + 16];
};

static void sp_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags);

static int buf_put(uint8_t **b, size_t *len, size_t *cap, const void *p, size_t n)
{
	if (*len + n > *cap) {
		size_t c = *cap ? *cap : 4096;
		while (c < *len + n)
			c *= 2;
		uint8_t *nb = realloc(*b, c);
		if (!nb)
			return -ENOMEM;
		*b = nb;
		*cap = c;
	}
	if (n)
		memcpy(*b + *len, p, n);
	*len += n;
	return 0;
}

static void sp_free(struct queue_spool *sp)
{
	queue_entry_free(sp->e);
	free(sp->buf[0]);
	free(sp->buf[1]);
	free(sp);
}

/* Hands the written file to the write chain: fdatasync, close, rename,
 * directory fsync (or, on error/abort, close and unlink). */
static void sp_handoff(struct queue_spool *sp)
{
	struct qwrite *w = qw_new(sp->q, sp->loop);
	if (!w) {
		/* Cannot even clean up through the ring: the .tmp is removed at
		 * the next start. */
		if (sp->fd >= 0)
			close(sp->fd);
		if (!sp->aborted && sp->held)
			sp->held(sp->done_arg, -ENOMEM, NULL);
		else if (!sp->aborted && sp->done)
			sp->done(sp->done_arg, -ENOMEM, sp->e->id);
		sp_free(sp);
		return;
	}
	w->submit = true;
	w->fd = sp->fd;
	w->rc = sp->aborted ? -ECANCELED : sp->rc;
	snprintf(w->id, sizeof(w->id), "%s", sp->e->id);
	snprintf(w->tmp, sizeof(w->tmp), "%s", sp->tmp);
	snprintf(w->final, sizeof(w->final), "%s", sp->final);
	if (!sp->aborted) {
		w->submit_cb = sp->done;
		w->held_cb = sp->held;
		w->arg = sp->done_arg;
		w->entry = sp->e;
		sp->e = NULL;
	}
	sp_free(sp);
	if (w->fd < 0) {
		qw_finish(w); /* the open failed: nothing on disk */
		return;
	}
	w->step = w->rc ? QW_CLOSE : QW_SYNC;
	qw_submit(w);
}

/* Starts the next operation, if any is due. */
static void sp_pump(struct queue_spool *sp)
{
	if (sp->op != SP_IDLE)
		return;
	if (sp->aborted || (sp->rc && sp->committed)) {
		sp_handoff(sp);
		return;
	}
	if (sp->fd < 0 || sp->rc)
		return;
	if (sp->len[sp->fill]) {
		sp->fill ^= 1;
		sp->woff = 0;
		sp->op = SP_WRITE;
		size_t n = sp->len[sp->fill ^ 1];
		io_uring_prep_write(loop_sqe(sp->loop, &sp->cb), sp->fd, sp->buf[sp->fill ^ 1],
				    (unsigned)n, sp->off);
		if (sp->want_ready && sp->ready) {
			sp->want_ready = false;
			sp->ready(sp->ready_arg);
		}
		return;
	}
	if (!sp->committed)
		return;
	if (!sp->first_done) {
		/* The sizes are known only now: the fixed-width first line. */
		snprintf(sp->first, sizeof(sp->first), QUEUE_MAGIC2 "%020" PRIu64 " %010zu\n",
			 sp->body_len, sp->dkim_len);
		sp->op = SP_FIRST;
		io_uring_prep_write(loop_sqe(sp->loop, &sp->cb), sp->fd, sp->first,
				    QUEUE_FIRST_LEN, 0);
		return;
	}
	sp_handoff(sp);
}

static void sp_fail(struct queue_spool *sp, int rc)
{
	if (!sp->rc)
		sp->rc = rc;
	sp->len[0] = sp->len[1] = 0;
	if (sp->want_ready && sp->ready && !sp->aborted) {
		/* The caller waits to go on; it learns of the error at commit. */
		sp->want_ready = false;
		sp->ready(sp->ready_arg);
	}
}

static void sp_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct queue_spool *sp = (struct queue_spool *)cb;
	enum sp_op op = sp->op;
	sp->op = SP_IDLE;
	switch (op) {
	case SP_OPEN:
		if (res < 0)
			sp_fail(sp, res);
		else
			sp->fd = res;
		break;
	case SP_WRITE: {
		unsigned b = sp->fill ^ 1;
		if (res <= 0) {
			sp_fail(sp, res < 0 ? res : -EIO);
			break;
		}
		sp->woff += (size_t)res;
		sp->off += (uint64_t)res;
		if (sp->woff < sp->len[b] && !sp->aborted) {
			/* A short write: the rest of the same buffer. */
			sp->op = SP_WRITE;
			io_uring_prep_write(loop_sqe(sp->loop, &sp->cb), sp->fd, sp->buf[b] + sp->woff,
					    (unsigned)(sp->len[b] - sp->woff), sp->off);
			return;
		}
		sp->len[b] = 0;
		break;
	}
	case SP_FIRST:
		if (res != QUEUE_FIRST_LEN)
			sp_fail(sp, res < 0 ? res : -EIO);
		else
			sp->first_done = true;
		break;
	case SP_IDLE:
		break;
	}
	sp_pump(sp);
}

static bool addr_ok(const char *a)
{
	for (; *a; a++)
		if ((unsigned char)*a <= ' ' || *a == 0x7f)
			return false;
	return true;
}

static bool xtext_ok(const char *x)
{
	return x && *x && strlen(x) < QUEUE_XTEXT_MAX && addr_ok(x);
}

int queue_spool_begin(struct queue *q, struct loop *loop, const struct queue_env *env,
		      queue_ready_fn *ready, void *arg, struct queue_spool **sp_r)
{
	size_t n = env->nrcpts;
	if (n == 0 || !addr_ok(env->from) || (env->envid && !xtext_ok(env->envid)))
		return -EINVAL;
	if (env->id) {
		size_t il = strlen(env->id);
		if (il == 0 || il >= QUEUE_ID_MAX || strspn(env->id, "0123456789abcdef") != il)
			return -EINVAL;
	}
	size_t hcap = 256 + strlen(env->from) + (env->envid ? strlen(env->envid) : 0);
	for (size_t i = 0; i < n; i++) {
		const struct queue_rcpt_in *r = &env->rcpts[i];
		if (!addr_ok(r->addr) || !*r->addr || (r->orcpt && !xtext_ok(r->orcpt)))
			return -EINVAL;
		hcap += strlen(r->addr) + (r->orcpt ? strlen(r->orcpt) : 0) + 32;
	}
	if (hcap > QUEUE_HDR_MAX)
		return -E2BIG;
	struct queue_spool *sp = calloc(1, sizeof(*sp));
	struct queue_entry *e = calloc(1, sizeof(*e));
	if (!sp || !e) {
		free(sp);
		free(e);
		return -ENOMEM;
	}
	sp->e = e;
	sp->q = q;
	sp->loop = loop;
	sp->fd = -1;
	sp->cb.fn = sp_step;
	sp->ready = ready;
	sp->ready_arg = arg;
	uint32_t seq = atomic_fetch_add(&q->seq, 1);
	int64_t now = wall_ms();
	if (env->id)
		snprintf(e->id, sizeof(e->id), "%s", env->id);
	else
		snprintf(e->id, sizeof(e->id), "%011" PRIx64 "%08" PRIx32, (uint64_t)now, seq);
	e->created_ms = now;
	e->ret = env->ret;
	if (!(e->from = strdup(env->from)) || !(e->rcpts = calloc(n, sizeof(*e->rcpts))) ||
	    (env->envid && !(e->envid = strdup(env->envid))))
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		const struct queue_rcpt_in *in = &env->rcpts[i];
		struct queue_rcpt *r = &e->rcpts[i];
		if (!(r->addr = strdup(in->addr)) || (in->orcpt && !(r->orcpt = strdup(in->orcpt))))
			goto nomem;
		e->nrcpts++;
		r->notify = in->notify & 15;
		r->next_ms = now;
	}
	/* The envelope; the first line is rewritten with the sizes at commit. */
	char *h = malloc(hcap);
	if (!h)
		goto nomem;
	int k = snprintf(h, hcap, "%-*s\nid %s\ncreated %" PRId64 "\nfrom %s\n",
			 QUEUE_FIRST_LEN - 1, "RMQ2", e->id, now, env->from);
	if (e->envid)
		k += snprintf(h + k, hcap - (size_t)k, "envid %s\n", e->envid);
	if (e->ret)
		k += snprintf(h + k, hcap - (size_t)k, "ret %s\n",
			      e->ret == QUEUE_RET_HDRS ? "hdrs" : "full");
	for (size_t i = 0; i < n; i++) {
		const struct queue_rcpt *r = &e->rcpts[i];
		k += snprintf(h + k, hcap - (size_t)k, "rcpt %s", r->addr);
		if (r->notify)
			k += snprintf(h + k, hcap - (size_t)k, " notify=%u", r->notify);
		if (r->orcpt)
			k += snprintf(h + k, hcap - (size_t)k, " orcpt=%s", r->orcpt);
		k += snprintf(h + k, hcap - (size_t)k, "\n");
	}
	k += snprintf(h + k, hcap - (size_t)k, "\n");
	int rc = buf_put(&sp->buf[0], &sp->len[0], &sp->cap[0], h, (size_t)k);
	free(h);
	if (rc)
		goto nomem;
	e->body_off = (uint64_t)k;
	snprintf(sp->tmp, sizeof(sp->tmp), "%s.msg.tmp", e->id);
	snprintf(sp->final, sizeof(sp->final), "%s.msg", e->id);
	sp->op = SP_OPEN;
	io_uring_prep_openat(loop_sqe(loop, &sp->cb), q->dirfd, sp->tmp,
			     O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	*sp_r = sp;
	return 0;
nomem:
	sp_free(sp);
	return -ENOMEM;
}

int queue_spool_write(struct queue_spool *sp, const void *p, size_t len)
{
	if (sp->rc)
		return sp->rc;
	if (buf_put(&sp->buf[sp->fill], &sp->len[sp->fill], &sp->cap[sp->fill], p, len)) {
		sp->want_ready = false;
		sp_fail(sp, -ENOMEM);
		return -ENOMEM;
	}
	sp->body_len += len;
	sp_pump(sp);
	if (sp->len[sp->fill] >= QUEUE_SPOOL_BUF) {
		sp->want_ready = true;
		return 1;
	}
	return 0;
}

int queue_spool_commit(struct queue_spool *sp, const char *dkim, queue_submit_cb *cb, void *arg)
{
	int rc = sp->rc;
	if (!rc && dkim) {
		size_t n = strlen(dkim);
		if (n > QUEUE_DKIM_MAX)
			rc = -E2BIG;
		else if (!(sp->e->dkim = strdup(dkim)) ||
			 buf_put(&sp->buf[sp->fill], &sp->len[sp->fill], &sp->cap[sp->fill], dkim, n))
			rc = -ENOMEM;
		sp->dkim_len = n;
	}
	if (rc) {
		queue_spool_abort(&sp);
		return rc;
	}
	sp->e->body_len = sp->body_len;
	sp->committed = true;
	sp->want_ready = false;
	sp->done = cb;
	sp->done_arg = arg;
	sp_pump(sp);
	return 0;
}

void queue_spool_abort(struct queue_spool **sp_r)
{
	struct queue_spool *sp = *sp_r;
	if (!sp)
		return;
	*sp_r = NULL;
	sp->aborted = true;
	sp->ready = NULL;
	sp->len[0] = sp->len[1] = 0;
	sp_pump(sp); /* frees it now, or after the operation in flight */
}

static int submit(struct queue *q, struct loop *loop, const struct queue_env *env,
		  const void *data, size_t len, const char *dkim, queue_submit_cb *cb,
		  queue_held_cb *held, void *arg)
{
	struct queue_spool *sp;
	int rc = queue_spool_begin(q, loop, env, NULL, NULL, &sp);
	if (rc)
		return rc;
	rc = queue_spool_write(sp, data, len);
	if (rc < 0) {
		queue_spool_abort(&sp);
		return rc;
	}
	sp->held = held;
	return queue_spool_commit(sp, dkim, cb, arg);
}

int queue_submit(struct queue *q, struct loop *loop, const struct queue_env *env,
		 const void *data, size_t len, const char *dkim, queue_submit_cb *cb, void *arg)
{
	return submit(q, loop, env, data, len, dkim, cb, NULL, arg);
}

int queue_submit_held(struct queue *q, struct loop *loop, const struct queue_env *env,
		      const void *data, size_t len, const char *dkim, queue_held_cb *cb,
		      void *arg)
{
	return submit(q, loop, env, data, len, dkim, NULL, cb, arg);
}

size_t queue_state_format(const struct queue_entry *e, char *buf, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < e->nrcpts && n < cap; i++) {
		const struct queue_rcpt *r = &e->rcpts[i];
		char last[QUEUE_REPLY_MAX];
		size_t j = 0;
		for (const char *p = r->last; *p && j < sizeof(last) - 1; p++)
			last[j++] = (*p == '\n' || *p == '\r') ? ' ' : *p;
		last[j] = '\0';
		int k = snprintf(buf + n, cap - n, "%zu %d %" PRIu32 " %" PRId64 " %s\n", i,
				 (int)r->state, r->attempts, r->next_ms, last);
		if (k < 0)
			break;
		n += (size_t)k;
		/* "d <i>": its delay DSN went out (an older reader skips the
		 * line: it does not parse as a state line). */
		if (r->delay_sent && n < cap && (k = snprintf(buf + n, cap - n, "d %zu\n", i)) > 0)
			n += (size_t)k;
	}
	return n < cap ? n : cap;
}

int queue_state_parse(struct queue_entry *e, const char *text, size_t len)
{
	const char *p = text, *end = text + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break; /* a torn last line is ignored */
		char line[QUEUE_REPLY_MAX + 128];
		size_t n = (size_t)(nl - p);
		if (n >= sizeof(line))
			n = sizeof(line) - 1;
		memcpy(line, p, n);
		line[n] = '\0';
		p = nl + 1;
		size_t i;
		int st, off = 0;
		uint32_t att;
		int64_t next;
		if (line[0] == 'd') {
			if (sscanf(line, "d %zu", &i) == 1 && i < e->nrcpts)
				e->rcpts[i].delay_sent = true;
			continue;
		}
		if (sscanf(line, "%zu %d %" SCNu32 " %" SCNd64 " %n", &i, &st, &att, &next, &off) < 4 ||
		    i >= e->nrcpts || st < 0 || st > 3)
			continue;
		struct queue_rcpt *r = &e->rcpts[i];
		r->state = (enum queue_rcpt_state)st;
		r->attempts = att;
		r->next_ms = next;
		snprintf(r->last, sizeof(r->last), "%s", line + off);
	}
	return 0;
}

int queue_state_write(struct queue *q, struct loop *loop, const struct queue_entry *e,
		      queue_done_cb *cb, void *arg)
{
	size_t cap = e->nrcpts * (QUEUE_REPLY_MAX + 64) + 1;
	struct qwrite *w = qw_new(q, loop);
	if (!w || !(w->buf = malloc(cap))) {
		free(w);
		return -ENOMEM;
	}
	w->len = queue_state_format(e, (char *)w->buf, cap);
	snprintf(w->tmp, sizeof(w->tmp), "%s.st.tmp", e->id);
	snprintf(w->final, sizeof(w->final), "%s.st", e->id);
	w->done_cb = cb;
	w->arg = arg;
	w->step = QW_OPEN;
	qw_submit(w);
	return 0;
}

static void noop_done(void *arg, int res)
{
	(void)arg;
	(void)res;
}

int queue_remove(struct queue *q, struct loop *loop, const char *id, queue_done_cb *cb,
		 void *arg)
{
	struct qwrite *w = qw_new(q, loop);
	if (!w)
		return -ENOMEM;
	/* The message first: a state file without its message is ignored. */
	snprintf(w->tmp, sizeof(w->tmp), "%s.msg", id);
	snprintf(w->final, sizeof(w->final), "%s.st", id);
	w->done_cb = cb ? cb : noop_done;
	w->arg = arg;
	w->step = QW_UNLINK1;
	qw_submit(w);
	return 0;
}

/* ---- reading (blocking) ------------------------------------------------- */

static int read_all(int dirfd, const char *name, uint8_t **buf_r, size_t *len_r)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	uint8_t *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	size_t off = 0;
	while (off < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			break;
		}
		off += (size_t)r;
	}
	close(fd);
	buf[off] = '\0';
	*buf_r = buf;
	*len_r = off;
	return 0;
}

/* Parses the envelope in buf (RMQ1 or RMQ2) into an entry; body_off is
 * where the message starts (body_len: from the first line of RMQ2). */
static int entry_parse(const uint8_t *buf, size_t len, struct queue_entry **e_r)
{
	bool v2 = len >= QUEUE_FIRST_LEN && !memcmp(buf, QUEUE_MAGIC2, 5);
	if (!v2 && (len < 5 || memcmp(buf, QUEUE_MAGIC1, 5)))
		return -EINVAL;
	struct queue_entry *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	size_t pos = v2 ? QUEUE_FIRST_LEN : 5, cap = 0;
	bool ended = false;
	while (pos < len) {
		const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
		if (!nl)
			break;
		size_t n = (size_t)(nl - (buf + pos));
		const char *l = (const char *)buf + pos;
		pos += n + 1;
		if (n == 0) {
			ended = true;
			break;
		}
		if (n > 3 && !memcmp(l, "id ", 3)) {
			size_t k = n - 3 < QUEUE_ID_MAX - 1 ? n - 3 : QUEUE_ID_MAX - 1;
			memcpy(e->id, l + 3, k);
			e->id[k] = '\0';
		} else if (n > 8 && !memcmp(l, "created ", 8)) {
			e->created_ms = strtoll(l + 8, NULL, 10);
		} else if (n >= 5 && !memcmp(l, "from ", 5)) {
			free(e->from);
			e->from = strndup(l + 5, n - 5);
		} else if (n > 6 && !memcmp(l, "envid ", 6)) {
			free(e->envid);
			e->envid = strndup(l + 6, n - 6);
		} else if (n == 8 && !memcmp(l, "ret hdrs", 8)) {
			e->ret = QUEUE_RET_HDRS;
		} else if (n == 8 && !memcmp(l, "ret full", 8)) {
			e->ret = QUEUE_RET_FULL;
		} else if (n > 5 && !memcmp(l, "rcpt ", 5)) {
			if (e->nrcpts == cap) {
				cap = cap ? cap * 2 : 4;
				struct queue_rcpt *r = realloc(e->rcpts, cap * sizeof(*r));
				if (!r)
					goto bad;
				e->rcpts = r;
			}
			struct queue_rcpt *r = &e->rcpts[e->nrcpts];
			memset(r, 0, sizeof(*r));
			/* "rcpt ADDR[ notify=N][ orcpt=XTEXT]": no field has a space. */
			const char *p = l + 5, *end = l + n;
			const char *sp = memchr(p, ' ', (size_t)(end - p));
			if (!(r->addr = strndup(p, (size_t)((sp ? sp : end) - p))))
				goto bad;
			e->nrcpts++;
			while (sp && sp < end) {
				p = sp + 1;
				sp = memchr(p, ' ', (size_t)(end - p));
				size_t fl = (size_t)((sp ? sp : end) - p);
				if (fl > 7 && !memcmp(p, "notify=", 7))
					r->notify = (unsigned)strtoul(p + 7, NULL, 10) & 15;
				else if (fl > 6 && !memcmp(p, "orcpt=", 6) && !r->orcpt &&
					 !(r->orcpt = strndup(p + 6, fl - 6)))
					goto bad;
			}
		}
	}
	if (!ended || !e->from || !e->nrcpts || !e->id[0])
		goto bad;
	e->body_off = pos;
	if (v2)
		e->body_len = strtoull((const char *)buf + 5, NULL, 10);
	for (size_t i = 0; i < e->nrcpts; i++)
		e->rcpts[i].next_ms = e->created_ms;
	*e_r = e;
	return 0;
bad:
	queue_entry_free(e);
	return -EINVAL;
}

/* Reads the envelope (and the stored DKIM field) of <id>.msg; the message
 * bytes stay on disk. */
static int load_one(int dirfd, const char *id, struct queue_entry **e_r)
{
	char name[QUEUE_ID_MAX + 16];
	snprintf(name, sizeof(name), "%s.msg", id);
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = -EINVAL;
	if (fstat(fd, &st) < 0)
		goto out;
	/* Read until the empty line that ends the envelope. */
	for (;;) {
		if (len == cap) {
			if (cap >= QUEUE_HDR_MAX)
				goto out;
			cap = cap ? cap * 2 : 16384;
			uint8_t *nb = realloc(buf, cap + 1);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
		}
		ssize_t r = pread(fd, buf + len, cap - len, (off_t)len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		if (memmem(buf, len, "\n\n", 2))
			break;
	}
	rc = entry_parse(buf, len, e_r);
	if (rc)
		goto out;
	struct queue_entry *e = *e_r;
	uint64_t size = (uint64_t)st.st_size;
	if (len >= QUEUE_FIRST_LEN && !memcmp(buf, QUEUE_MAGIC2, 5)) {
		size_t dl = (size_t)strtoul((const char *)buf + 26, NULL, 10);
		if (e->body_off + e->body_len + dl != size || dl > QUEUE_DKIM_MAX) {
			rc = -EINVAL; /* only a complete file is ever renamed */
			goto bad;
		}
		if (dl) {
			if (!(e->dkim = malloc(dl + 1))) {
				rc = -ENOMEM;
				goto bad;
			}
			if (pread(fd, e->dkim, dl, (off_t)(e->body_off + e->body_len)) != (ssize_t)dl) {
				rc = -EIO;
				goto bad;
			}
			e->dkim[dl] = '\0';
		}
	} else {
		e->body_len = size - e->body_off;
	}
	free(buf);
	buf = NULL;
	close(fd);
	fd = -1;
	snprintf(name, sizeof(name), "%s.st", id);
	if (read_all(dirfd, name, &buf, &len) == 0) {
		queue_state_parse(e, (const char *)buf, len);
		free(buf);
	}
	return 0;
bad:
	queue_entry_free(*e_r);
	*e_r = NULL;
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}

static int scan_dir(int dirfd, void (*fn)(void *arg, struct queue_entry *e), void *arg)
{
	int dfd = dup(dirfd);
	if (dfd < 0)
		return -errno;
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return -errno;
	}
	rewinddir(d);
	int count = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (n < 5 || n >= QUEUE_ID_MAX + 4 || strcmp(de->d_name + n - 4, ".msg"))
			continue;
		char id[QUEUE_ID_MAX];
		memcpy(id, de->d_name, n - 4);
		id[n - 4] = '\0';
		struct queue_entry *e = NULL;
		if (load_one(dirfd, id, &e) == 0) {
			fn(arg, e);
			count++;
		}
	}
	closedir(d);
	return count;
}

int queue_scan(struct queue *q, void (*fn)(void *arg, struct queue_entry *e), void *arg)
{
	return scan_dir(q->dirfd, fn, arg);
}

/* ---- command line ----------------------------------------------------- */

static int open_qdir(const char *data_dir)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/queue", data_dir);
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static const char *state_name(enum queue_rcpt_state s)
{
	return s == QUEUE_RCPT_SENT	 ? "sent"
	       : s == QUEUE_RCPT_FAILED	 ? "failed"
	       : s == QUEUE_RCPT_BOUNCED ? "bounced"
					 : "pending";
}

struct list_ctx {
	FILE *out;
	int n;
};

static void list_one(void *arg, struct queue_entry *e)
{
	struct list_ctx *lc = arg;
	for (size_t i = 0; i < e->nrcpts; i++) {
		const struct queue_rcpt *r = &e->rcpts[i];
		time_t next = (time_t)(r->next_ms / 1000);
		struct tm tm;
		char when[32];
		gmtime_r(&next, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		fprintf(lc->out, "%s <%s> -> <%s> size=%zu state=%s attempts=%u next=%s last=\"%s\"\n",
			e->id, e->from, r->addr, (size_t)e->body_len, state_name(r->state), r->attempts, when,
			r->last);
	}
	lc->n++;
	queue_entry_free(e);
}

int queue_cli_list(const char *data_dir, FILE *out)
{
	int fd = open_qdir(data_dir);
	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return fd;
	struct list_ctx lc = { out, 0 };
	int rc = scan_dir(fd, list_one, &lc);
	close(fd);
	return rc < 0 ? rc : lc.n;
}

static int ctl_append(int fd, const char *line)
{
	int cfd = openat(fd, "ctl", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (cfd < 0)
		return -errno;
	size_t n = strlen(line);
	int rc = write(cfd, line, n) == (ssize_t)n ? 0 : -EIO;
	if (!rc && fsync(cfd) < 0)
		rc = -errno;
	close(cfd);
	return rc;
}

int queue_cli_delete(const char *data_dir, const char *id)
{
	if (!*id || strlen(id) >= QUEUE_ID_MAX)
		return -EINVAL;
	for (const char *p = id; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return -EINVAL;
	int fd = open_qdir(data_dir);
	if (fd < 0)
		return fd;
	char name[QUEUE_ID_MAX + 16];
	snprintf(name, sizeof(name), "%s.msg", id);
	struct stat st;
	if (fstatat(fd, name, &st, 0) < 0) {
		close(fd);
		return -ENOENT;
	}
	/* A running server holds the message in memory: tell it (it polls
	 * DATA/queue/ctl); the files go too, so a stopped one forgets it. */
	char line[QUEUE_ID_MAX + 16];
	snprintf(line, sizeof(line), "delete %s\n", id);
	int rc = ctl_append(fd, line);
	unlinkat(fd, name, 0);
	snprintf(name, sizeof(name), "%s.st", id);
	unlinkat(fd, name, 0);
	fsync(fd);
	close(fd);
	return rc;
}

int queue_cli_flush(const char *data_dir)
{
	int fd = open_qdir(data_dir);
	if (fd < 0)
		return fd;
	int rc = ctl_append(fd, "flush\n");
	close(fd);
	return rc;
}
