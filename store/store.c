/* store.c - the append-only mailbox store (docs/store.md).
 *
 * Shared state: a process-wide registry of open users (struct suser), each
 * owning its folders (struct sfolder). A user's and a folder's mutex guards
 * only memory (UID/MODSEQ assignment, offset reservation, the index); file
 * I/O goes through the ring of the loop that asked, at reserved offsets.
 *
 * A change is a pend: record bytes reserved at an offset of a log (struct
 * slog). Its write and group-committed fdatasync run on the asking loop; an
 * ack pass pops finished pends from the head of the log's FIFO, in log
 * order, applies them to the index (the same index_apply() replay uses) and
 * completes them on their own loops. So a change is acknowledged only once
 * it and every record before it are durable, and replay after a crash
 * rebuilds exactly what was acknowledged (plus, at most, changes whose
 * acknowledgement was under way).
 *
 * Lifetimes: every handle and every in-flight request holds a reference to
 * its suser; folders live as long as their user object. */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "store/crc32c.h"
#include "store/index.h"
#include "store/record.h"
#include "store/store_private.h"

#define container_of(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

enum { IO_CHUNK = 1 << 20, WIPE_CHUNK = 64 * 1024 };
/* New segment files are created with O_EXCL; a number taken by a stray
 * file is skipped, up to this many times. */
enum { SEG_TRIES = 64 };
/* Segment files a folder keeps open for reading (besides the active one). */
enum { SEG_CACHE_MAX = 256 };

struct store;
struct sctx;
struct suser;
struct sfolder;

/* ---- files ------------------------------------------------------------ */

/* An open file shared by every loop; refcounted. The fd is shared too, so
 * after a failed fsync the folder is poisoned (see slog.broken): with one
 * file description, a write-back error is reported to one fsync caller. */
struct sfile {
	atomic_int refs;
	int fd;
	uint32_t seg;
	bool is_dir;
	atomic_bool dirsync; /* created; its directory not yet fsynced */
	/* fsyncs of one file run one at a time, process-wide, and an error
	 * sticks: with one shared file description the kernel reports a
	 * write-back error to one fsync only, so a concurrent fsync on another
	 * loop could otherwise report success for pages that were lost */
	pthread_mutex_t smu;
	bool syncing;
	int sync_err;
	struct sbatch *sync_queue, **sync_tail;
};

struct sbatch;

static struct sfile *sfile_new(int fd, uint32_t seg, bool is_dir)
{
	struct sfile *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	atomic_init(&f->refs, 1);
	f->fd = fd;
	f->seg = seg;
	f->is_dir = is_dir;
	pthread_mutex_init(&f->smu, NULL);
	f->sync_tail = &f->sync_queue;
	return f;
}

static struct sfile *sfile_ref(struct sfile *f)
{
	atomic_fetch_add(&f->refs, 1);
	return f;
}

static void ignore_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop, (void)cb, (void)res, (void)flags;
}
static struct loop_cb ignore_cb = { ignore_cqe };

/* With a loop the close goes through its ring; without one (teardown,
 * after the loops stopped) it is a plain close(). */
static void sfile_unref(struct loop *loop, struct sfile **f_r)
{
	struct sfile *f = *f_r;

	*f_r = NULL;
	if (!f || atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	if (f->fd >= 0) {
		if (loop)
			io_uring_prep_close(loop_sqe(loop, &ignore_cb), f->fd);
		else
			close(f->fd);
	}
	pthread_mutex_destroy(&f->smu);
	free(f);
}

/* ---- the process-wide store and per-loop contexts --------------------- */

struct sctx {
	struct loop *loop;
	struct store *store;
	struct sbatch *open;  /* sync batches collecting waiters this tick */
	bool flush_armed;
};

struct suser;

struct store {
	struct store_config cfg;
	char *data_dir, *mail_dir;
	struct sfile *mail_dirf;
	pthread_mutex_t mu; /* users list, ctxs */
	struct suser *users;
	size_t nidle;              /* users with no reference, kept loaded */
	uint64_t tick;
	struct sctx **ctxs;
	size_t nctx;
	char **autos;              /* cfg.auto_folders, copied */
	size_t nautos;
};

static struct sctx *store_ctx(struct store *st, struct loop *loop)
{
	struct sctx *c = NULL;

	pthread_mutex_lock(&st->mu);
	for (size_t i = 0; i < st->nctx; i++)
		if (st->ctxs[i]->loop == loop) {
			c = st->ctxs[i];
			break;
		}
	if (!c) {
		struct sctx **v = realloc(st->ctxs, (st->nctx + 1) * sizeof(*v));
		c = calloc(1, sizeof(*c));
		if (v)
			st->ctxs = v;
		if (!v || !c) {
			free(c);
			pthread_mutex_unlock(&st->mu);
			return NULL;
		}
		c->loop = loop;
		c->store = st;
		st->ctxs[st->nctx++] = c;
	}
	pthread_mutex_unlock(&st->mu);
	return c;
}

/* ---- running a function on another loop ------------------------------- */

/* A MSG_RING straight to the target ring's loop_cb: works between any two
 * loops, standalone ones included. Two references: the sender's completion
 * and the receiver's each drop one, so neither frees under the other. */
struct xmsg {
	struct loop_cb recv, sent;
	atomic_int refs;
	void (*fn)(struct loop *, void *);
	void *arg;
};

static void xmsg_put(struct xmsg *m)
{
	if (atomic_fetch_sub(&m->refs, 1) == 1)
		free(m);
}

static void xmsg_recv(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct xmsg *m = container_of(cb, struct xmsg, recv);

	(void)res, (void)flags;
	m->fn(loop, m->arg);
	xmsg_put(m);
}

static void xmsg_sent(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct xmsg *m = container_of(cb, struct xmsg, sent);

	(void)flags;
	if (res < 0) {
		/* The target never sees it: the request it completes would hang.
		 * The rings' CQs are sized so this does not happen; say so loudly. */
		LOG_AT(loop_log(loop), LOG_ERROR, 0, "store-msg-ring", "error=%s", strerror(-res));
		xmsg_put(m);
	}
	xmsg_put(m);
}

/* Runs fn(loop, arg) on loop `to`, after the current batch of completions
 * (never inline: callers may hold locks or be inside a request). On the
 * same loop it is a NOP's completion rather than a loop_defer(): a CQE also
 * wakes a loop that is about to wait. */
static void xcall(struct loop *from, struct loop *to, void (*fn)(struct loop *, void *), void *arg)
{
	struct xmsg *m = malloc(sizeof(*m));
	if (!m) {
		LOG_AT(loop_log(from), LOG_ERROR, 0, "store-oom", "what=cross-loop-message");
		abort();
	}
	m->recv.fn = xmsg_recv;
	m->sent.fn = xmsg_sent;
	m->fn = fn;
	m->arg = arg;
	if (from == to) {
		atomic_init(&m->refs, 1);
		io_uring_prep_nop(loop_sqe(from, &m->recv));
		return;
	}
	atomic_init(&m->refs, 2);
	io_uring_prep_msg_ring(loop_sqe(from, &m->sent), loop_ring_fd(to), 0,
			       loop_cb_udata(&m->recv), 0);
}

/* ---- group commit ----------------------------------------------------- */

/* A waiter for "this file is durable up to now". All waiters of one file
 * that registered in one loop tick share one fdatasync, submitted by a
 * loop_defer() callback after the batch of completions that produced them.
 * Each waiter registers only after its own write completed, so the sync
 * covers its bytes. */
struct swait {
	void (*fn)(struct loop *loop, struct swait *w, int res);
	struct swait *next;
};

struct sbatch {
	struct loop_cb cb;
	struct loop *loop;     /* whose ring submits the fsync */
	struct sfile *file;
	struct swait *waiters;
	struct sbatch *next;
	int forced;            /* fail without an fsync: the file's sticky error */
	bool serial;           /* takes part in the file's one-at-a-time order */
	const struct store_config *cfg;
};

static void sbatch_start(struct loop *loop, struct sbatch *b);

static void sbatch_start_x(struct loop *loop, void *arg)
{
	sbatch_start(loop, arg);
}

static void sbatch_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct sbatch *b = container_of(cb, struct sbatch, cb);
	struct sfile *f = b->file;
	struct swait *w = b->waiters;
	struct sbatch *next = NULL;

	(void)flags;
	if (b->forced)
		res = b->forced;
	else if (b->cfg->test_sync_result)
		res = b->cfg->test_sync_result(b->cfg->test_sync_arg, res);
	if (b->serial) {
		pthread_mutex_lock(&f->smu);
		if (res < 0 && !f->sync_err)
			f->sync_err = res;
		if (f->sync_err)
			res = f->sync_err;
		next = f->sync_queue;
		if (next) {
			f->sync_queue = next->next;
			if (!f->sync_queue)
				f->sync_tail = &f->sync_queue;
			next->next = NULL;
		} else {
			f->syncing = false;
		}
		pthread_mutex_unlock(&f->smu);
	}
	if (next) /* hand the file's turn to the next waiting batch's loop */
		xcall(loop, next->loop, sbatch_start_x, next);
	while (w) {
		struct swait *nw = w->next;
		w->fn(loop, w, res);
		w = nw;
	}
	sfile_unref(loop, &b->file);
	free(b);
}

/* Submits b's fsync on its loop (the file's turn is b's); a file with a
 * sticky error completes it with that error through a NOP instead. */
static void sbatch_start(struct loop *loop, struct sbatch *b)
{
	struct io_uring_sqe *sqe = loop_sqe(loop, &b->cb);
	int err = 0;

	if (b->serial) {
		pthread_mutex_lock(&b->file->smu);
		err = b->file->sync_err;
		pthread_mutex_unlock(&b->file->smu);
	}
	if (err) {
		b->forced = err;
		io_uring_prep_nop(sqe);
		return;
	}
	io_uring_prep_fsync(sqe, b->file->fd, b->file->is_dir ? 0 : IORING_FSYNC_DATASYNC);
}

static void sbatch_submit(struct loop *loop, struct sbatch *b)
{
	struct sfile *f = b->file;

	b->loop = loop;
	if (b->serial) {
		pthread_mutex_lock(&f->smu);
		if (f->syncing) {
			/* another fsync of this file is in flight (maybe on
			 * another loop): wait for it, then go. Waiters of this
			 * loop join its batch already waiting, so a slow fsync
			 * makes the next batch bigger, not the queue longer. */
			for (struct sbatch *q = f->sync_queue; q; q = q->next)
				if (q->loop == loop) {
					struct swait *w = b->waiters;
					while (w) {
						struct swait *nw = w->next;
						w->next = q->waiters;
						q->waiters = w;
						w = nw;
					}
					pthread_mutex_unlock(&f->smu);
					sfile_unref(loop, &b->file);
					free(b);
					return;
				}
			b->next = NULL;
			*f->sync_tail = b;
			f->sync_tail = &b->next;
			pthread_mutex_unlock(&f->smu);
			return;
		}
		f->syncing = true;
		pthread_mutex_unlock(&f->smu);
	}
	sbatch_start(loop, b);
}

static void sctx_flush(struct loop *loop, void *arg)
{
	struct sctx *c = arg;
	struct sbatch *b = c->open;

	c->open = NULL;
	c->flush_armed = false;
	while (b) {
		struct sbatch *next = b->next;
		sbatch_submit(loop, b);
		b = next;
	}
}

/* Calls w->fn(loop, w, res) once file's data is durable; res is 0 or the
 * fsync's negative errno. */
static void sync_request(struct sctx *c, struct sfile *file, struct swait *w)
{
	struct sbatch *b;

	w->next = NULL;
	if (!c->store->cfg.no_group_commit)
		for (b = c->open; b; b = b->next)
			if (b->file == file) {
				w->next = b->waiters;
				b->waiters = w;
				return;
			}
	b = calloc(1, sizeof(*b));
	if (!b) {
		w->fn(c->loop, w, -ENOMEM);
		return;
	}
	b->cb.fn = sbatch_done;
	b->file = sfile_ref(file);
	b->cfg = &c->store->cfg;
	b->waiters = w;
	/* the one-fsync-per-message baseline (bench only) stays concurrent */
	b->serial = !c->store->cfg.no_group_commit;
	if (c->store->cfg.no_group_commit) {
		sbatch_submit(c->loop, b);
		return;
	}
	b->next = c->open;
	c->open = b;
	if (!c->flush_armed) {
		if (loop_defer(c->loop, sctx_flush, c) == 0) {
			c->flush_armed = true;
		} else {
			c->open = b->next;
			sbatch_submit(c->loop, b);
		}
	}
}

/* ---- writing a buffer completely -------------------------------------- */

/* Writes len bytes at off, resubmitting after short writes; fn(loop, w,
 * res) with res 0 or a negative errno (-ENOSPC for a write that made no
 * progress). */
struct swrite {
	struct loop_cb cb;
	struct sfile *file;
	const uint8_t *p;
	size_t len, done;
	uint64_t off;
	void (*fn)(struct loop *loop, struct swrite *w, int res);
};

static void swrite_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags);

static void swrite_next(struct loop *loop, struct swrite *w)
{
	size_t n = w->len - w->done;

	if (n > IO_CHUNK)
		n = IO_CHUNK;
	io_uring_prep_write(loop_sqe(loop, &w->cb), w->file->fd, w->p + w->done,
			    (unsigned)n, w->off + w->done);
}

static void swrite_start(struct loop *loop, struct swrite *w, struct sfile *file,
			 const void *p, size_t len, uint64_t off,
			 void (*fn)(struct loop *, struct swrite *, int))
{
	w->cb.fn = swrite_cqe;
	w->file = file;
	w->p = p;
	w->len = len;
	w->done = 0;
	w->off = off;
	w->fn = fn;
	if (len == 0) {
		fn(loop, w, 0);
		return;
	}
	swrite_next(loop, w);
}

static void swrite_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct swrite *w = container_of(cb, struct swrite, cb);

	(void)flags;
	if (res == -EINTR || res == -EAGAIN) {
		swrite_next(loop, w);
		return;
	}
	if (res <= 0) {
		w->fn(loop, w, res == 0 ? -ENOSPC : res);
		return;
	}
	w->done += (size_t)res;
	if (w->done < w->len) {
		swrite_next(loop, w);
		return;
	}
	w->fn(loop, w, 0);
}

/* ---- logs and pends (ordered acknowledgement) ------------------------- */

struct pend;

struct slog {
	pthread_mutex_t *mu;   /* the owner's */
	struct sfile *file;
	uint64_t end;          /* reserved up to here */
	uint64_t applied_end;  /* acknowledged and applied up to here */
	struct pend *head, *tail;
	int broken;            /* first write/fsync error; 0 while healthy */
	uint64_t broken_off;   /* records at or after it fail */
	/* Applies one record of an acknowledged pend, under *mu. */
	void (*apply)(void *owner, const struct record *r, struct pend *p);
	/* Runs after an ack pass applied something, outside *mu. */
	void (*after)(struct loop *loop, void *owner);
	void *owner;
	atomic_bool *poisoned;  /* the user's: not kept idle once broken */
	/* Rewriting the log (folder logs only, docs/store.md "Rewriting the
	 * log"): while rotating, reservations queue on parked in order, and
	 * once the FIFO has drained rotate(loop, owner) runs, once. */
	bool rotating, rot_started;
	struct pend *parked, *parked_tail;
	void (*rotate)(struct loop *loop, void *owner);
};

struct pend {
	struct pend *next;
	struct slog *log;
	struct sctx *ctx;
	struct suser *user;    /* a reference, dropped after complete */
	uint64_t off;
	size_t len, cap;
	bool done;
	int err, res;
	int apply_res;         /* set by apply: e.g. -EEXIST for a lost race */
	uint64_t modseq;
	uint32_t uid;
	uint32_t *unlink;      /* one-message segments to remove once durable */
	size_t nunlink;
	struct sfolder *gone;  /* a folder deleted by this record */
	struct sfolder *busy_f; /* a folder record's: keeps its files open */
	struct loop *loop;
	void (*complete)(struct loop *loop, struct pend *p, int res);
	void *arg;
	store_done_cb *dcb;        /* the caller's, for complete to call */
	store_modseq_cb *mdone;
	void *darg;
	struct swrite w;
	struct swait sw;
	uint8_t *rec;
};

static void suser_unref(struct loop *loop, struct suser **u_r);
static struct suser *suser_ref(struct suser *u);
static void folder_busy(struct sfolder *f);
static void folder_unbusy(struct loop *loop, struct sfolder *f);

static struct pend *pend_new(struct sctx *ctx, struct suser *u, size_t cap)
{
	struct pend *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->rec = malloc(cap ? cap : 1);
	if (!p->rec) {
		free(p);
		return NULL;
	}
	p->cap = cap;
	p->ctx = ctx;
	p->loop = ctx->loop;
	p->user = suser_ref(u);
	return p;
}

static void pend_free(struct loop *loop, struct pend *p)
{
	if (p->busy_f) /* before the user's reference, which keeps it alive */
		folder_unbusy(loop, p->busy_f);
	suser_unref(loop, &p->user);
	free(p->unlink);
	free(p->rec);
	free(p);
}

/* Reserves p's bytes at the end of the log; *mu held. Returns 0 (the
 * caller submits p), 1 when p is parked while the log is rewritten (the
 * rewrite submits it), or -EIO when the log is broken. */
static int slog_reserve(struct slog *log, struct pend *p)
{
	if (log->broken)
		return -EIO;
	p->log = log;
	p->next = NULL;
	if (log->rotating) {
		if (log->parked_tail)
			log->parked_tail->next = p;
		else
			log->parked = p;
		log->parked_tail = p;
		return 1;
	}
	p->off = log->end;
	log->end += p->len;
	p->next = NULL;
	if (log->tail)
		log->tail->next = p;
	else
		log->head = p;
	log->tail = p;
	return 0;
}

static void pend_complete_run(struct loop *loop, void *arg)
{
	struct pend *p = arg;

	p->complete(loop, p, p->res);
	pend_free(loop, p);
}

static void slog_ack(struct loop *loop, struct slog *log)
{
	struct pend *done = NULL, **tail = &done;
	bool applied = false;

	pthread_mutex_lock(log->mu);
	while (log->head && log->head->done) {
		struct pend *p = log->head;
		log->head = p->next;
		if (!log->head)
			log->tail = NULL;
		p->next = NULL;
		p->res = p->err;
		if (!p->res && log->broken && p->off >= log->broken_off)
			p->res = log->broken;
		if (!p->res) {
			size_t off = 0, used;
			struct record r;
			while (off < p->len &&
			       record_next(span_make(p->rec + off, p->len - off), &r, &used) == RECORD_OK) {
				log->apply(log->owner, &r, p);
				off += used;
			}
			log->applied_end = p->off + p->len;
			applied = true;
		}
		*tail = p;
		tail = &p->next;
	}
	bool rotate = log->rotating && !log->rot_started && !log->head;
	if (rotate)
		log->rot_started = true;
	pthread_mutex_unlock(log->mu);
	if (applied && log->after)
		log->after(loop, log->owner);
	if (rotate)
		log->rotate(loop, log->owner);
	while (done) {
		struct pend *next = done->next;
		xcall(loop, done->loop, pend_complete_run, done);
		done = next;
	}
}

static void pend_finish(struct loop *loop, struct pend *p, int err)
{
	struct slog *log = p->log;

	pthread_mutex_lock(log->mu);
	p->done = true;
	p->err = err;
	if (err) {
		if (!log->broken)
			log->broken = err;
		if (log->poisoned)
			atomic_store(log->poisoned, true);
		if (!log->broken_off || p->off < log->broken_off)
			log->broken_off = p->off;
	}
	pthread_mutex_unlock(log->mu);
	slog_ack(loop, log);
}

static void pend_synced(struct loop *loop, struct swait *w, int res)
{
	struct pend *p = container_of(w, struct pend, sw);

	pend_finish(loop, p, res < 0 ? res : 0);
}

static void pend_written(struct loop *loop, struct swrite *w, int res)
{
	struct pend *p = container_of(w, struct pend, w);

	if (res < 0) {
		pend_finish(loop, p, res);
		return;
	}
	p->sw.fn = pend_synced;
	sync_request(p->ctx, p->log->file, &p->sw);
}

/* Starts writing a reserved pend (after the owner's mutex is released). */
static void pend_submit(struct pend *p)
{
	swrite_start(p->ctx->loop, &p->w, p->log->file, p->rec, p->len, p->off, pend_written);
}

/* Appends a record to p->rec via an encoder result; grows the buffer. */
static uint8_t *pend_room(struct pend *p, size_t n)
{
	if (p->len + n > p->cap) {
		size_t cap = (p->len + n) * 2;
		uint8_t *r = realloc(p->rec, cap);
		if (!r)
			return NULL;
		p->rec = r;
		p->cap = cap;
	}
	return p->rec + p->len;
}

/* ---- users and folders in memory -------------------------------------- */

struct watch {
	struct watch *next;        /* in the folder's list, under its mutex */
	struct loop *loop;
	store_watch_cb *cb;
	void *arg;
	atomic_int state;          /* WATCH_PENDING | WATCH_DEAD */
};
enum { WATCH_PENDING = 1, WATCH_DEAD = 2 };

struct sfolder {
	struct suser *user;
	uint32_t id;
	char *dir;
	pthread_mutex_t mu;
	struct index ix;           /* acknowledged state */
	struct slog log;
	uint32_t uid_res;          /* next UID to hand out */
	uint64_t modseq_res;       /* last MODSEQ handed out (see next_modseq) */
	char *kw_res[64];          /* keyword names, including unacknowledged */
	struct sfile *dirf;
	struct sfile *seg;         /* the active shared segment */
	uint64_t seg_end;
	uint32_t seg_next;         /* next segment number */
	bool seg_rolling;
	struct sfile **segs;       /* open segments for reading */
	size_t nsegs;
	uint64_t ck_off;           /* log offset the checkpoint covers */
	uint64_t dead;             /* bytes expunged since the last compaction started */
	uint64_t rot_retry;        /* after a failed rewrite: not again before this log end */
	store_done_cb *rot_cb;     /* store_rewrite_log()'s, for the rewrite to call */
	void *rot_arg;
	bool ck_running, compacting, deleted;
	struct watch *watches;
	/* Its files (dirf, log.file, seg, segs) are open only while it is in
	 * use (docs/store.md "Descriptors"): nopen handles, or busy requests
	 * in flight (log records, reads, appends, segment rolls), or a
	 * checkpoint, rewrite or compaction. Otherwise they are closed and
	 * the first store_folder_open() reopens them; the index stays. */
	enum { FF_OPEN, FF_CLOSED, FF_OPENING } fstate;
	int nopen;                 /* under mu */
	/* atomic: a request begins while its handle holds the folder (so
	 * never while the files close), and may begin under another
	 * folder's mutex (a COPY into the folder it reads from) */
	atomic_int busy;
	uint32_t seg_closed;       /* the active segment's number while closed */
	bool seg_dirsync_closed;   /* and its entry still to be fsynced */
	struct fopener *openers;   /* store_folder_open()s waiting for a reopen */
};

struct ufolder {
	uint32_t id, uidvalidity;
	char *name;
	struct sfolder *f;         /* loaded with the user */
};

struct uwaiter {
	struct uwaiter *next;
	struct loop *loop;
	store_user_cb *cb;
	void *arg;
};

struct suser {
	struct suser *next;        /* in store->users */
	struct store *store;
	char *name, *dir;
	int refs;                  /* under store->mu */
	pthread_mutex_t mu;
	bool loaded;
	int load_err;
	struct uwaiter *waiters;   /* under store->mu while loading */
	struct ufolder *folders;   /* under mu */
	size_t nfolders;
	size_t creating;           /* under mu: store_folder_create()s in flight */
	uint32_t next_id, last_uidvalidity;
	char **subs;
	size_t nsubs;
	struct slog log;           /* folders.log */
	struct sfile *dirf;
	struct sfolder *inbox;
	struct sfolder **dead;     /* deleted folders handles may still use */
	size_t ndead;
	atomic_bool poisoned;      /* a log or fsync failed: reload, don't cache */
	uint64_t idle_since;       /* under store->mu: 0 in use, else LRU tick */
	atomic_uint_fast64_t limit_bytes, limit_msgs; /* overrides; 0: store's */
	atomic_uint_fast64_t q_bytes, q_msgs;   /* acknowledged */
	atomic_uint_fast64_t r_bytes, r_msgs;   /* reserved by appends in flight */
};

struct store_user {
	struct suser *u;
	struct loop *loop;
	struct sctx *ctx;
};

/* The message a handle is reading (store_read/store_splice): its place
 * and its file, so that the rest of a message whose reading began stays
 * readable after an expunge (the index forgets the message at once, and
 * a one-message segment is unlinked), a compaction or a delete: the open
 * file keeps the bytes. Dropped once a read reaches the message's end.
 * Shared by the handle and its reads in flight (which may fill in the
 * file once they open it); under f->mu. */
struct hpin {
	int refs;
	uint32_t uid, seg;      /* uid 0: none */
	uint64_t pos, size;     /* the message's place in the segment */
	struct sfile *file;     /* NULL until a read found or opened it */
};

struct store_folder {
	struct suser *u;
	struct sfolder *f;
	struct loop *loop;
	struct sctx *ctx;
	struct watch *watch;
	struct hpin *pin;          /* under f->mu */
};

struct store_view {
	struct store_folder_status st;
	struct store_msg *msgs;
	struct iblob **blobs;      /* owners of the blobs, one per run of messages sharing one */
	size_t n, nblobs;
	char *keywords[64];
};

static struct suser *suser_ref(struct suser *u)
{
	pthread_mutex_lock(&u->store->mu);
	u->refs++;
	pthread_mutex_unlock(&u->store->mu);
	return u;
}

static void sfolder_free(struct loop *loop, struct sfolder *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->nsegs; i++)
		sfile_unref(loop, &f->segs[i]);
	free(f->segs);
	sfile_unref(loop, &f->seg);
	sfile_unref(loop, &f->dirf);
	sfile_unref(loop, &f->log.file);
	for (int i = 0; i < 64; i++)
		free(f->kw_res[i]);
	while (f->watches) {
		struct watch *w = f->watches;
		f->watches = w->next;
		free(w);
	}
	index_clear(&f->ix);
	pthread_mutex_destroy(&f->mu);
	free(f->dir);
	free(f);
}

/* ---- a folder's files: open only while in use ---------------------------- */

/* Whether f's files may close now; f->mu held. A broken folder keeps them:
 * its files' sticky fsync errors live in their struct sfile. INBOX keeps
 * them too: every delivery and nearly every login opens it, and three
 * openat()s and closes each time cost more than its three descriptors
 * per loaded user. */
static bool folder_idle_locked(struct sfolder *f)
{
	struct sfile *files[3] = { f->dirf, f->log.file, f->seg };

	if (f->id == STORE_INBOX_ID || f->fstate != FF_OPEN || f->nopen || atomic_load(&f->busy) || f->ck_running ||
	    f->compacting || f->seg_rolling || f->log.rotating || f->log.head || f->log.parked ||
	    f->log.broken || atomic_load(&f->user->poisoned))
		return false;
	for (int i = 0; i < 3; i++) {
		bool err;
		if (!files[i])
			return false;
		pthread_mutex_lock(&files[i]->smu);
		err = files[i]->sync_err != 0;
		pthread_mutex_unlock(&files[i]->smu);
		if (err)
			return false;
	}
	return true;
}

/* Closes f's files if nothing uses them (from any loop; requests in
 * flight that hold a file keep it open through their reference). */
static void folder_maybe_close(struct loop *loop, struct sfolder *f)
{
	struct sfile *dirf = NULL, *logf = NULL, *seg = NULL, **segs = NULL;
	size_t nsegs = 0;

	pthread_mutex_lock(&f->mu);
	if (folder_idle_locked(f)) {
		dirf = f->dirf;
		logf = f->log.file;
		seg = f->seg;
		segs = f->segs;
		nsegs = f->nsegs;
		f->dirf = f->log.file = f->seg = NULL;
		f->segs = NULL;
		f->nsegs = 0;
		f->seg_closed = seg->seg;
		f->seg_dirsync_closed = atomic_load(&seg->dirsync);
		f->fstate = FF_CLOSED;
	}
	pthread_mutex_unlock(&f->mu);
	for (size_t i = 0; i < nsegs; i++)
		sfile_unref(loop, &segs[i]);
	free(segs);
	sfile_unref(loop, &seg);
	sfile_unref(loop, &logf);
	sfile_unref(loop, &dirf);
}

/* A request that uses f's files begins (f is open: a handle holds it; no
 * lock needed, f->mu may be held) and ends (f->mu not held); the last end
 * of an unused folder closes its files. */
static void folder_busy(struct sfolder *f)
{
	atomic_fetch_add(&f->busy, 1);
}

static void folder_unbusy(struct loop *loop, struct sfolder *f)
{
	atomic_fetch_sub(&f->busy, 1);
	folder_maybe_close(loop, f);
}

static void suser_free(struct loop *loop, struct suser *u)
{
	for (size_t i = 0; i < u->nfolders; i++) {
		sfolder_free(loop, u->folders[i].f);
		free(u->folders[i].name);
	}
	free(u->folders);
	sfolder_free(loop, u->inbox);
	for (size_t i = 0; i < u->ndead; i++)
		sfolder_free(loop, u->dead[i]);
	free(u->dead);
	for (size_t i = 0; i < u->nsubs; i++)
		free(u->subs[i]);
	free(u->subs);
	sfile_unref(loop, &u->log.file);
	sfile_unref(loop, &u->dirf);
	pthread_mutex_destroy(&u->mu);
	free(u->name);
	free(u->dir);
	free(u);
}

static void suser_unlink_locked(struct store *st, struct suser *u)
{
	struct suser **pp = &st->users;

	while (*pp && *pp != u)
		pp = &(*pp)->next;
	if (*pp)
		*pp = u->next;
}

/* Drops a reference. A user nobody holds stays loaded (idle) while the
 * store keeps fewer than cfg.user_cache idle users, so that deliveries to
 * it do not replay its folders every time; the least recently used idle
 * one goes first. A user whose log or fsync failed is never kept: the next
 * open reloads and recovers it. */
static void suser_unref(struct loop *loop, struct suser **u_r)
{
	struct suser *u = *u_r, *victim = NULL;
	struct store *st;

	*u_r = NULL;
	if (!u)
		return;
	st = u->store;
	pthread_mutex_lock(&st->mu);
	if (--u->refs == 0) {
		size_t max = st->cfg.user_cache ? st->cfg.user_cache : STORE_USER_CACHE_DEFAULT;
		if (st->cfg.user_cache == SIZE_MAX || !u->loaded || atomic_load(&u->poisoned)) {
			suser_unlink_locked(st, u);
			victim = u;
		} else {
			u->idle_since = ++st->tick;
			if (++st->nidle > max) {
				for (struct suser *o = st->users; o; o = o->next)
					if (o->refs == 0 && o->idle_since &&
					    (!victim || o->idle_since < victim->idle_since))
						victim = o;
				suser_unlink_locked(st, victim);
				st->nidle--;
			}
		}
	}
	pthread_mutex_unlock(&st->mu);
	if (victim)
		suser_free(loop, victim);
}

static char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (!p)
		return NULL;
	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

int store_user_dirname(const char *user, char *out, size_t cap)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	if (!user || !*user)
		return -EINVAL;
	for (const char *s = user; *s; s++) {
		unsigned char c = (unsigned char)*s;
		bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '@' ||
			    c == '_' || c == '+' || c == '-' || (c == '.' && s != user);
		if (n + 4 > cap)
			return -EINVAL;
		if (keep) {
			out[n++] = (char)c;
		} else {
			out[n++] = '%';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		}
	}
	out[n] = 0;
	return (int)n;
}

void store_seg_name(uint32_t seg, char out[16])
{
	snprintf(out, 16, "%c%u", (seg & SEG_SINGLE) ? 'm' : 's', SEG_NUM(seg));
}

static char *folder_path(const struct sfolder *f, const char *name)
{
	return path_join(f->dir, name);
}

/* ---- reading a file region completely --------------------------------- */

struct sread {
	struct loop_cb cb;
	int fd;
	uint8_t *p;
	size_t len, done;
	uint64_t off;
	void (*fn)(struct loop *loop, struct sread *r, int res);
};

static void sread_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags);

static void sread_next(struct loop *loop, struct sread *r)
{
	size_t n = r->len - r->done;

	if (n > IO_CHUNK)
		n = IO_CHUNK;
	io_uring_prep_read(loop_sqe(loop, &r->cb), r->fd, r->p + r->done, (unsigned)n,
			   r->off + r->done);
}

static void sread_start(struct loop *loop, struct sread *r, int fd, void *p, size_t len,
			uint64_t off, void (*fn)(struct loop *, struct sread *, int))
{
	r->cb.fn = sread_cqe;
	r->fd = fd;
	r->p = p;
	r->len = len;
	r->done = 0;
	r->off = off;
	r->fn = fn;
	if (!len) {
		fn(loop, r, 0);
		return;
	}
	sread_next(loop, r);
}

static void sread_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct sread *r = container_of(cb, struct sread, cb);

	(void)flags;
	if (res == -EINTR || res == -EAGAIN) {
		sread_next(loop, r);
		return;
	}
	if (res <= 0) {
		/* 0: the file is shorter than statx said (changed under us) */
		r->fn(loop, r, res == 0 ? -EIO : res);
		return;
	}
	r->done += (size_t)res;
	if (r->done < r->len)
		sread_next(loop, r);
	else
		r->fn(loop, r, 0);
}

/* ---- loading (and recovering) a folder -------------------------------- */

enum fload_step {
	FL_MKDIR, FL_MKDIR_DONE, FL_DIRSYNC_DONE, FL_OPENDIR_DONE, FL_OPENLOG_DONE,
	FL_STATLOG_DONE, FL_HDR_READ_DONE, FL_CK_OPEN_DONE, FL_CK_STAT_DONE, FL_CK_READ_DONE,
	FL_LOG_READ_DONE, FL_WIPE, FL_WIPE_SYNCED, FL_NEWLOG_WRITTEN, FL_NEWLOG_SYNCED,
	FL_NEWLOG_DIRSYNCED, FL_SEG_OPEN_DONE, FL_SEG_STAT_DONE,
};

struct fload {
	struct loop_cb cb;
	struct swait sw;
	struct swrite w;
	struct sread r;
	enum fload_step step;
	struct sctx *ctx;
	struct sfolder *f;
	uint32_t uidvalidity;
	bool created;
	int ckfd;
	struct statx stx;
	char *path;
	uint8_t *buf;
	struct iblob *ck;          /* the checkpoint read, kept as its blobs' arena */
	uint8_t hdr[64];           /* the log's first bytes: its FOLDER_HDR */
	bool hdr_ok;               /* and hdr_gen is its generation */
	uint32_t hdr_gen;
	uint64_t log_size, ck_size, good_end, wipe_off;
	uint32_t seg;
	void (*done)(struct loop *loop, struct fload *fl, int res);
	void *arg;
};

static void fload_run(struct loop *loop, struct fload *fl, int res);

static void fload_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	fload_run(loop, container_of(cb, struct fload, cb), res);
}
static void fload_synced(struct loop *loop, struct swait *w, int res)
{
	fload_run(loop, container_of(w, struct fload, sw), res);
}
static void fload_written(struct loop *loop, struct swrite *w, int res)
{
	fload_run(loop, container_of(w, struct fload, w), res);
}
static void fload_read(struct loop *loop, struct sread *r, int res)
{
	fload_run(loop, container_of(r, struct fload, r), res);
}

static int fload_setpath(struct fload *fl, const char *name)
{
	free(fl->path);
	fl->path = name ? folder_path(fl->f, name) : strdup(fl->f->dir);
	return fl->path ? 0 : -ENOMEM;
}

static void fload_finish(struct loop *loop, struct fload *fl, int res)
{
	struct sfolder *f = fl->f;

	if (fl->ckfd >= 0)
		io_uring_prep_close(loop_sqe(loop, &ignore_cb), fl->ckfd);
	free(fl->path);
	free(fl->buf);
	iblob_unref(&fl->ck);
	if (res == 0) {
		f->log.end = f->log.applied_end = fl->good_end;
		f->uid_res = f->ix.uidnext;
		f->modseq_res = f->ix.highestmodseq;
		for (int i = 0; i < 64; i++)
			if (f->ix.keywords[i] && !(f->kw_res[i] = strdup(f->ix.keywords[i])))
				res = -ENOMEM;
	}
	fl->done(loop, fl, res);
	free(fl);
}

static void fload_run(struct loop *loop, struct fload *fl, int res)
{
	struct sfolder *f = fl->f;
	struct io_uring_sqe *sqe;
	int err;

	switch (fl->step) {
	case FL_MKDIR:
		if ((err = fload_setpath(fl, NULL)))
			goto fail;
		fl->step = FL_MKDIR_DONE;
		io_uring_prep_mkdirat(loop_sqe(loop, &fl->cb), AT_FDCWD, fl->path, 0700);
		return;
	case FL_MKDIR_DONE:
		if (res < 0 && res != -EEXIST) {
			err = res;
			goto fail;
		}
		fl->created = res == 0;
		fl->step = FL_DIRSYNC_DONE;
		if (fl->created) {
			/* the new directory's entry must be durable before any
			 * message in it is acknowledged */
			fl->sw.fn = fload_synced;
			sync_request(fl->ctx, f->user->dirf, &fl->sw);
			return;
		}
		res = 0;
		/* fall through */
	case FL_DIRSYNC_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->step = FL_OPENDIR_DONE;
		io_uring_prep_openat(loop_sqe(loop, &fl->cb), AT_FDCWD, fl->path,
				     O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
		return;
	case FL_OPENDIR_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(f->dirf = sfile_new(res, 0, true))) {
			close(res);
			err = -ENOMEM;
			goto fail;
		}
		if ((err = fload_setpath(fl, STORE_LOG)))
			goto fail;
		fl->step = FL_OPENLOG_DONE;
		io_uring_prep_openat(loop_sqe(loop, &fl->cb), AT_FDCWD, fl->path,
				     O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		return;
	case FL_OPENLOG_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(f->log.file = sfile_new(res, 0, false))) {
			close(res);
			err = -ENOMEM;
			goto fail;
		}
		fl->step = FL_STATLOG_DONE;
		io_uring_prep_statx(loop_sqe(loop, &fl->cb), res, "", AT_EMPTY_PATH,
				    STATX_SIZE, &fl->stx);
		return;
	case FL_STATLOG_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->log_size = fl->stx.stx_size;
		if (fl->log_size == 0)
			goto new_log;
		/* the header's generation says which log a checkpoint must be of */
		fl->step = FL_HDR_READ_DONE;
		sread_start(loop, &fl->r, f->log.file->fd, fl->hdr,
			    fl->log_size < sizeof(fl->hdr) ? fl->log_size : sizeof(fl->hdr), 0,
			    fload_read);
		return;
	case FL_HDR_READ_DONE: {
		struct record r;
		size_t used;
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->hdr_ok = record_next(span_make(fl->hdr, fl->log_size < sizeof(fl->hdr)
						   ? fl->log_size : sizeof(fl->hdr)), &r, &used) ==
				     RECORD_OK && r.type == REC_FOLDER_HDR;
		fl->hdr_gen = fl->hdr_ok ? r.u.hdr.gen : 0;
		if ((err = fload_setpath(fl, STORE_CHECKPOINT)))
			goto fail;
	}
		fl->step = FL_CK_OPEN_DONE;
		io_uring_prep_openat(loop_sqe(loop, &fl->cb), AT_FDCWD, fl->path,
				     O_RDONLY | O_CLOEXEC, 0);
		return;
	case FL_CK_OPEN_DONE:
		if (res == -ENOENT)
			goto read_log;
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->ckfd = res;
		fl->step = FL_CK_STAT_DONE;
		io_uring_prep_statx(loop_sqe(loop, &fl->cb), res, "", AT_EMPTY_PATH,
				    STATX_SIZE, &fl->stx);
		return;
	case FL_CK_STAT_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->ck_size = fl->stx.stx_size;
		/* exactly the file's size: the load keeps this buffer */
		if (fl->ck_size > SIZE_MAX / 2 || !(fl->ck = iblob_alloc(fl->ck_size))) {
			err = -ENOMEM;
			goto fail;
		}
		fl->step = FL_CK_READ_DONE;
		sread_start(loop, &fl->r, fl->ckfd, fl->ck->data, fl->ck_size, 0, fload_read);
		return;
	case FL_CK_READ_DONE: {
		uint64_t off = 0;
		if (res < 0) {
			err = res;
			goto fail;
		}
		err = index_checkpoint_load_arena(&f->ix, &fl->ck, fl->ck_size, &off);
		if (err == -ENOMEM)
			goto fail;
		if (err || off > fl->log_size || f->ix.folder_id != f->id || !fl->hdr_ok ||
		    f->ix.log_gen != fl->hdr_gen) {
			/* A damaged or foreign checkpoint, or one of the log
			 * before a rewrite, is only an optimisation lost: replay
			 * the whole log instead. */
			LOG_AT(loop_log(loop), LOG_WARN, 0, "store-checkpoint-ignored", "dir=%s", f->dir);
			index_clear(&f->ix);
			off = 0;
		}
		f->ck_off = off;
	}
	read_log:
		if (fl->log_size - f->ck_off > SIZE_MAX / 2 ||
		    !(fl->buf = malloc(fl->log_size - f->ck_off + 1))) {
			err = -ENOMEM;
			goto fail;
		}
		fl->step = FL_LOG_READ_DONE;
		sread_start(loop, &fl->r, f->log.file->fd, fl->buf, fl->log_size - f->ck_off,
			    f->ck_off, fload_read);
		return;
	case FL_LOG_READ_DONE: {
		size_t good;
		int st;
		if (res < 0) {
			err = res;
			goto fail;
		}
		st = index_replay(&f->ix, span_make(fl->buf, fl->log_size - f->ck_off), &good);
		if (st < 0) {
			err = st;
			goto fail;
		}
		free(fl->buf);
		fl->buf = NULL;
		fl->good_end = f->ck_off + good;
		fl->wipe_off = fl->log_size;
		if (!f->ix.have_hdr) {
			/* the folder's creation itself was torn: start over */
			index_clear(&f->ix);
			f->ck_off = 0;
			fl->good_end = 0;
		}
		if (fl->good_end < fl->log_size) {
			LOG_AT(loop_log(loop), LOG_WARN, 0, "store-log-cut", "dir=%s at=%llu size=%llu", f->dir,
				(unsigned long long)fl->good_end, (unsigned long long)fl->log_size);
			fl->wipe_off = fl->good_end;
			fl->buf = calloc(1, WIPE_CHUNK);
			if (!fl->buf) {
				err = -ENOMEM;
				goto fail;
			}
		}
		res = 0;
	}
		/* fall through */
	case FL_WIPE:
		/* Zero the cut tail, so that nothing after it can ever parse as
		 * a record again once new records overwrite its start. */
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (fl->wipe_off < fl->log_size) {
			uint64_t n = fl->log_size - fl->wipe_off;
			if (n > WIPE_CHUNK)
				n = WIPE_CHUNK;
			fl->step = FL_WIPE;
			fl->wipe_off += n;
			swrite_start(loop, &fl->w, f->log.file, fl->buf, n, fl->wipe_off - n,
				     fload_written);
			return;
		}
		if (fl->buf) {
			free(fl->buf);
			fl->buf = NULL;
			fl->step = FL_WIPE_SYNCED;
			fl->sw.fn = fload_synced;
			sync_request(fl->ctx, f->log.file, &fl->sw);
			return;
		}
		res = 0;
		/* fall through */
	case FL_WIPE_SYNCED:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!f->ix.have_hdr)
			goto new_log;
		goto open_seg;
	case FL_NEWLOG_WRITTEN:
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->step = FL_NEWLOG_SYNCED;
		fl->sw.fn = fload_synced;
		sync_request(fl->ctx, f->log.file, &fl->sw);
		return;
	case FL_NEWLOG_SYNCED:
		if (res < 0) {
			err = res;
			goto fail;
		}
		fl->step = FL_NEWLOG_DIRSYNCED;
		sync_request(fl->ctx, f->dirf, &fl->sw);
		return;
	case FL_NEWLOG_DIRSYNCED:
		if (res < 0) {
			err = res;
			goto fail;
		}
		goto open_seg;
	case FL_SEG_OPEN_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(f->seg = sfile_new(res, fl->seg, false))) {
			close(res);
			err = -ENOMEM;
			goto fail;
		}
		/* it may be new: its directory entry is synced with the first
		 * data it gets */
		atomic_store(&f->seg->dirsync, true);
		fl->step = FL_SEG_STAT_DONE;
		io_uring_prep_statx(loop_sqe(loop, &fl->cb), res, "", AT_EMPTY_PATH, STATX_SIZE,
				    &fl->stx);
		return;
	case FL_SEG_STAT_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		/* Append after whatever is there: bytes past the last record's
		 * end were never acknowledged, and are never overwritten either.
		 * A full segment rolls over at the first append. */
		f->seg_end = fl->stx.stx_size;
		fload_finish(loop, fl, 0);
		return;
	}
	err = -EINVAL;
	goto fail;

new_log: {
	struct rec_folder_hdr h = { .uidvalidity = fl->uidvalidity, .folder_id = f->id };
	size_t good, n;
	free(fl->buf);
	fl->buf = malloc(64);
	if (!fl->buf) {
		err = -ENOMEM;
		goto fail;
	}
	n = record_put_folder_hdr(fl->buf, 64, &h);
	index_clear(&f->ix);
	if (index_replay(&f->ix, span_make(fl->buf, n), &good) != RECORD_END || good != n) {
		err = -EINVAL;
		goto fail;
	}
	f->ck_off = 0;
	fl->good_end = n;
	fl->step = FL_NEWLOG_WRITTEN;
	swrite_start(loop, &fl->w, f->log.file, fl->buf, n, 0, fload_written);
	return;
}
open_seg: {
	/* Go on appending to the last shared segment a message lives in, so
	 * that opening a folder does not leave a new file behind each time;
	 * with none, the next number. Never O_TRUNC: the file may hold bytes. */
	char name[16];
	uint32_t last = 0;
	for (size_t i = 0; i < f->ix.n; i++)
		if (!(f->ix.msgs[i].seg & SEG_SINGLE) && f->ix.msgs[i].seg > last)
			last = f->ix.msgs[i].seg;
	fl->seg = last ? last : SEG_NUM(f->ix.max_seg) + 1;
	f->seg_next = (SEG_NUM(f->ix.max_seg) > fl->seg ? SEG_NUM(f->ix.max_seg) : fl->seg) + 1;
	store_seg_name(fl->seg, name);
	if ((err = fload_setpath(fl, name)))
		goto fail;
	fl->step = FL_SEG_OPEN_DONE;
	sqe = loop_sqe(loop, &fl->cb);
	io_uring_prep_openat(sqe, AT_FDCWD, fl->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	return;
}
fail:
	fload_finish(loop, fl, err);
}

static void folder_apply(void *owner, const struct record *r, struct pend *p);
static void folder_after(struct loop *loop, void *owner);
static void folder_rotate(struct loop *loop, void *owner);

static struct sfolder *sfolder_new(struct suser *u, uint32_t id)
{
	struct sfolder *f = calloc(1, sizeof(*f));
	char name[24];

	if (!f)
		return NULL;
	snprintf(name, sizeof(name), "f%u", id);
	f->dir = path_join(u->dir, name);
	if (!f->dir) {
		free(f);
		return NULL;
	}
	f->user = u;
	f->id = id;
	pthread_mutex_init(&f->mu, NULL);
	index_init(&f->ix);
	f->log.mu = &f->mu;
	f->log.apply = folder_apply;
	f->log.after = folder_after;
	f->log.rotate = folder_rotate;
	f->log.owner = f;
	f->log.poisoned = &u->poisoned;
	return f;
}

/* Loads folder f of u on ctx's loop; done(loop, fl, res) before fl is freed
 * (fl->arg is the caller's). */
static int fload_start(struct sctx *ctx, struct sfolder *f, uint32_t uidvalidity,
		       void (*done)(struct loop *, struct fload *, int), void *arg)
{
	struct fload *fl = calloc(1, sizeof(*fl));

	if (!fl)
		return -ENOMEM;
	fl->cb.fn = fload_cqe;
	fl->ctx = ctx;
	fl->f = f;
	fl->uidvalidity = uidvalidity;
	fl->ckfd = -1;
	fl->done = done;
	fl->arg = arg;
	fl->step = FL_MKDIR;
	fload_run(ctx->loop, fl, 0);
	return 0;
}

/* ---- the user's folder list ------------------------------------------- */

static struct ufolder *user_find_id(struct suser *u, uint32_t id)
{
	for (size_t i = 0; i < u->nfolders; i++)
		if (u->folders[i].id == id)
			return &u->folders[i];
	return NULL;
}

static bool name_is_inbox(struct span n)
{
	return span_eq_nocase(n, SPAN_LIT("INBOX"));
}

static struct ufolder *user_find_name(struct suser *u, struct span name)
{
	for (size_t i = 0; i < u->nfolders; i++)
		if (span_eq(span_cstr(u->folders[i].name), name))
			return &u->folders[i];
	return NULL;
}

static ssize_t user_find_sub(struct suser *u, struct span name)
{
	for (size_t i = 0; i < u->nsubs; i++)
		if (span_eq(span_cstr(u->subs[i]), name) ||
		    (name_is_inbox(name) && name_is_inbox(span_cstr(u->subs[i]))))
			return (ssize_t)i;
	return -1;
}

static void quota_sub(struct suser *u, uint64_t bytes, uint64_t msgs)
{
	atomic_fetch_sub(&u->q_bytes, bytes);
	atomic_fetch_sub(&u->q_msgs, msgs);
}

/* Under u->mu. p is NULL during replay; live creates carry their loaded
 * folder in p->arg. A record that lost a race (a second create of a name)
 * is ignored here exactly as during replay, and reported in apply_res. */
static void user_apply(void *owner, const struct record *r, struct pend *p)
{
	struct suser *u = owner;
	const struct rec_mbox *m = &r->u.mbox;
	int res = 0;

	switch (r->type) {
	case REC_MBOX_CREATE: {
		struct ufolder *v;
		char *name;
		if (user_find_id(u, m->id) || user_find_name(u, m->name) || name_is_inbox(m->name) ||
		    m->id == STORE_INBOX_ID) {
			res = -EEXIST;
			break;
		}
		name = strndup((const char *)m->name.p, m->name.len);
		v = realloc(u->folders, (u->nfolders + 1) * sizeof(*v));
		if (v)
			u->folders = v;
		if (!name || !v) {
			free(name);
			res = -ENOMEM;
			break;
		}
		u->folders[u->nfolders++] = (struct ufolder){
			.id = m->id, .uidvalidity = m->uidvalidity, .name = name,
			.f = p ? p->arg : NULL,
		};
		if (p)
			p->arg = NULL; /* now owned by the list */
		if (m->id >= u->next_id)
			u->next_id = m->id + 1;
		if (m->uidvalidity > u->last_uidvalidity)
			u->last_uidvalidity = m->uidvalidity;
		break;
	}
	case REC_MBOX_RENAME: {
		struct ufolder *v = user_find_id(u, m->id);
		char *name;
		if (!v) {
			res = -ENOENT;
			break;
		}
		if (user_find_name(u, m->name) || name_is_inbox(m->name)) {
			res = -EEXIST;
			break;
		}
		if (!(name = strndup((const char *)m->name.p, m->name.len))) {
			res = -ENOMEM;
			break;
		}
		free(v->name);
		v->name = name;
		break;
	}
	case REC_MBOX_DELETE: {
		struct ufolder *v = user_find_id(u, m->id);
		if (!v) {
			res = -ENOENT;
			break;
		}
		if (v->f) {
			struct sfolder *f = v->f;
			pthread_mutex_lock(&f->mu);
			f->deleted = true;
			quota_sub(u, f->ix.bytes, f->ix.n);
			pthread_mutex_unlock(&f->mu);
			/* Handles may still point at it: park it until the user
			 * object goes away. */
			struct sfolder **d = realloc(u->dead, (u->ndead + 1) * sizeof(*d));
			if (d) {
				u->dead = d;
				u->dead[u->ndead++] = f;
			} /* else leaked: memory only, and only when out of it */
			if (p)
				p->gone = f;
		}
		free(v->name);
		*v = u->folders[--u->nfolders];
		break;
	}
	case REC_MBOX_SUBSCRIBE: {
		ssize_t i = user_find_sub(u, m->name);
		if (m->on && i < 0) {
			char **v = realloc(u->subs, (u->nsubs + 1) * sizeof(*v));
			char *name = strndup((const char *)m->name.p, m->name.len);
			if (v)
				u->subs = v;
			if (!v || !name) {
				free(name);
				res = -ENOMEM;
				break;
			}
			u->subs[u->nsubs++] = name;
		} else if (!m->on && i >= 0) {
			free(u->subs[i]);
			u->subs[i] = u->subs[--u->nsubs];
		}
		break;
	}
	default:
		break;
	}
	if (p)
		p->apply_res = res;
}

/* ---- loading a user ----------------------------------------------------- */

enum uload_step {
	UL_MKDIR_DONE, UL_DIRSYNC_DONE, UL_OPENDIR_DONE, UL_OPENLOG_DONE, UL_STAT_DONE,
	UL_READ_DONE, UL_WIPE, UL_WIPE_SYNCED, UL_NEWFILE_SYNCED, UL_FOLDERS,
};

struct uload {
	struct loop_cb cb;
	struct swait sw;
	struct swrite w;
	struct sread r;
	enum uload_step step;
	struct sctx *ctx;
	struct suser *u;
	bool created;
	struct statx stx;
	char *path;
	uint8_t *buf;
	uint64_t size, good_end, wipe_off;
	size_t next_folder;         /* folders loaded so far (INBOX is first) */
};

static void uload_run(struct loop *loop, struct uload *ul, int res);
static void uload_finish(struct loop *loop, struct uload *ul, int res);
static void auto_ensure(struct suser *u, struct loop *loop,
			void (*done)(struct loop *loop, void *arg, int res), void *arg);

/* The auto folders were made (or failed: logged, and the next load tries
 * again); the user is loaded either way. */
static void uload_autos_done(struct loop *loop, void *arg, int res)
{
	(void)res;
	uload_finish(loop, arg, 0);
}

static void uload_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	uload_run(loop, container_of(cb, struct uload, cb), res);
}
static void uload_synced(struct loop *loop, struct swait *w, int res)
{
	uload_run(loop, container_of(w, struct uload, sw), res);
}
static void uload_written(struct loop *loop, struct swrite *w, int res)
{
	uload_run(loop, container_of(w, struct uload, w), res);
}
static void uload_read(struct loop *loop, struct sread *r, int res)
{
	uload_run(loop, container_of(r, struct uload, r), res);
}

static void uload_folder_done(struct loop *loop, struct fload *fl, int res)
{
	struct uload *ul = fl->arg;

	if (res < 0)
		LOG_AT(loop_log(loop), LOG_ERROR, 0, "store-load", "dir=%s error=%s", fl->f->dir, strerror(-res));
	else {
		atomic_fetch_add(&ul->u->q_bytes, fl->f->ix.bytes);
		atomic_fetch_add(&ul->u->q_msgs, fl->f->ix.n);
		/* the index is what the user needs from it until a handle
		 * opens it: its files close (nobody can see the user yet) */
		folder_maybe_close(loop, fl->f);
	}
	ul->step = UL_FOLDERS;
	uload_run(loop, ul, res);
}

static void uload_run(struct loop *loop, struct uload *ul, int res)
{
	struct suser *u = ul->u;
	int err;

	switch (ul->step) {
	case UL_MKDIR_DONE:
		if (res < 0 && res != -EEXIST) {
			err = res;
			goto fail;
		}
		ul->created = res == 0;
		ul->step = UL_DIRSYNC_DONE;
		if (ul->created) {
			ul->sw.fn = uload_synced;
			sync_request(ul->ctx, u->store->mail_dirf, &ul->sw);
			return;
		}
		res = 0;
		/* fall through */
	case UL_DIRSYNC_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		ul->step = UL_OPENDIR_DONE;
		io_uring_prep_openat(loop_sqe(loop, &ul->cb), AT_FDCWD, u->dir,
				     O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
		return;
	case UL_OPENDIR_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(u->dirf = sfile_new(res, 0, true))) {
			close(res);
			err = -ENOMEM;
			goto fail;
		}
		if (!(ul->path = path_join(u->dir, STORE_FOLDERS_LOG))) {
			err = -ENOMEM;
			goto fail;
		}
		ul->step = UL_OPENLOG_DONE;
		io_uring_prep_openat(loop_sqe(loop, &ul->cb), AT_FDCWD, ul->path,
				     O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		return;
	case UL_OPENLOG_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(u->log.file = sfile_new(res, 0, false))) {
			close(res);
			err = -ENOMEM;
			goto fail;
		}
		ul->step = UL_STAT_DONE;
		io_uring_prep_statx(loop_sqe(loop, &ul->cb), res, "", AT_EMPTY_PATH, STATX_SIZE,
				    &ul->stx);
		return;
	case UL_STAT_DONE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		ul->size = ul->stx.stx_size;
		if (ul->size > (64u << 20) || !(ul->buf = malloc(ul->size + 1))) {
			err = -ENOMEM;
			goto fail;
		}
		ul->step = UL_READ_DONE;
		sread_start(loop, &ul->r, u->log.file->fd, ul->buf, ul->size, 0, uload_read);
		return;
	case UL_READ_DONE: {
		size_t off = 0, used;
		struct record r;
		enum record_status st;
		if (res < 0) {
			err = res;
			goto fail;
		}
		while ((st = record_next(span_make(ul->buf + off, ul->size - off), &r, &used)) ==
		       RECORD_OK) {
			if (r.type < REC_MBOX_CREATE)
				break;
			user_apply(u, &r, NULL);
			off += used;
		}
		ul->good_end = ul->wipe_off = off;
		free(ul->buf);
		ul->buf = NULL;
		if (off < ul->size) {
			LOG_AT(loop_log(loop), LOG_WARN, 0, "store-folder-list-cut", "dir=%s at=%zu size=%llu", u->dir,
				off, (unsigned long long)ul->size);
			if (!(ul->buf = calloc(1, WIPE_CHUNK))) {
				err = -ENOMEM;
				goto fail;
			}
		}
		u->log.end = u->log.applied_end = off;
		res = 0;
	}
		/* fall through */
	case UL_WIPE:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (ul->buf && ul->wipe_off < ul->size) {
			uint64_t n = ul->size - ul->wipe_off;
			if (n > WIPE_CHUNK)
				n = WIPE_CHUNK;
			ul->step = UL_WIPE;
			ul->wipe_off += n;
			swrite_start(loop, &ul->w, u->log.file, ul->buf, n, ul->wipe_off - n,
				     uload_written);
			return;
		}
		ul->step = UL_WIPE_SYNCED;
		if (ul->buf) {
			ul->sw.fn = uload_synced;
			sync_request(ul->ctx, u->log.file, &ul->sw);
			return;
		}
		res = 0;
		/* fall through */
	case UL_WIPE_SYNCED:
		if (res < 0) {
			err = res;
			goto fail;
		}
		ul->step = UL_NEWFILE_SYNCED;
		if (ul->size == 0) {
			/* folders.log may be new: make its entry durable */
			ul->sw.fn = uload_synced;
			sync_request(ul->ctx, u->dirf, &ul->sw);
			return;
		}
		res = 0;
		/* fall through */
	case UL_NEWFILE_SYNCED:
		if (res < 0) {
			err = res;
			goto fail;
		}
		if (!(u->inbox = sfolder_new(u, STORE_INBOX_ID))) {
			err = -ENOMEM;
			goto fail;
		}
		ul->next_folder = 0;
		if ((err = fload_start(ul->ctx, u->inbox, (uint32_t)time(NULL), uload_folder_done, ul)))
			goto fail;
		return;
	case UL_FOLDERS:
		if (res < 0) {
			err = res;
			goto fail;
		}
		/* The list is not changing: the user is not visible until loaded. */
		while (ul->next_folder < u->nfolders) {
			struct ufolder *v = &u->folders[ul->next_folder++];
			if (!(v->f = sfolder_new(u, v->id))) {
				err = -ENOMEM;
				goto fail;
			}
			if ((err = fload_start(ul->ctx, v->f, v->uidvalidity, uload_folder_done, ul)))
				goto fail;
			return;
		}
		/* Before anyone sees the user: nothing else changes its list. */
		auto_ensure(u, loop, uload_autos_done, ul);
		return;
	}
	err = -EINVAL;
fail:
	uload_finish(loop, ul, err);
}

struct uopen_done {
	struct suser *u;
	int res;
	store_user_cb *cb;
	void *arg;
};

static void uopen_deliver(struct loop *loop, void *arg)
{
	struct uopen_done *d = arg;
	struct store_user *h = NULL;
	int res = d->res;

	if (res == 0) {
		h = calloc(1, sizeof(*h));
		if (h) {
			h->u = d->u;
			h->loop = loop;
			h->ctx = store_ctx(d->u->store, loop);
		}
		if (!h || !h->ctx) {
			free(h);
			h = NULL;
			res = -ENOMEM;
		}
	}
	if (!h)
		suser_unref(loop, &d->u);
	d->cb(d->arg, res, h);
	free(d);
}

static void uload_finish(struct loop *loop, struct uload *ul, int res)
{
	struct suser *u = ul->u;
	struct store *st = u->store;
	struct uwaiter *w;

	free(ul->path);
	free(ul->buf);
	pthread_mutex_lock(&st->mu);
	u->loaded = res == 0;
	u->load_err = res;
	w = u->waiters;
	u->waiters = NULL;
	if (res) {
		/* forget it, so that the next open tries again */
		struct suser **pp = &st->users;
		while (*pp && *pp != u)
			pp = &(*pp)->next;
		if (*pp)
			*pp = u->next;
	}
	pthread_mutex_unlock(&st->mu);
	while (w) {
		struct uwaiter *next = w->next;
		struct uopen_done *d = malloc(sizeof(*d));
		if (!d) {
			LOG_AT(loop_log(loop), LOG_ERROR, 0, "store-oom", "what=user-open");
			abort();
		}
		*d = (struct uopen_done){ u, res, w->cb, w->arg };
		xcall(loop, w->loop, uopen_deliver, d);
		free(w);
		w = next;
	}
	free(ul);
}

void store_user_open(struct store *st, struct loop *loop, const char *name,
		     store_user_cb *cb, void *arg)
{
	struct sctx *ctx = store_ctx(st, loop);
	struct uwaiter *w = calloc(1, sizeof(*w));
	struct suser *u;
	struct uload *ul;
	char dn[NAME_MAX + 1];
	int err = -ENOMEM;

	if (!ctx || !w)
		goto fail;
	err = store_user_dirname(name, dn, sizeof(dn));
	if (err < 0)
		goto fail;
	w->loop = loop;
	w->cb = cb;
	w->arg = arg;
	pthread_mutex_lock(&st->mu);
	for (u = st->users; u; u = u->next)
		if (strcmp(u->name, name) == 0)
			break;
	if (u) {
		if (u->refs++ == 0 && u->idle_since) {
			u->idle_since = 0;
			st->nidle--;
		}
		if (u->loaded) {
			struct uopen_done *d = malloc(sizeof(*d));
			pthread_mutex_unlock(&st->mu);
			free(w);
			if (!d) {
				suser_unref(loop, &u);
				err = -ENOMEM;
				goto fail_nofree;
			}
			*d = (struct uopen_done){ u, 0, cb, arg };
			xcall(loop, loop, uopen_deliver, d);
			return;
		}
		w->next = u->waiters;
		u->waiters = w;
		pthread_mutex_unlock(&st->mu);
		return;
	}
	pthread_mutex_unlock(&st->mu);

	u = calloc(1, sizeof(*u));
	ul = calloc(1, sizeof(*ul));
	if (!u || !ul || !(u->name = strdup(name)) || !(u->dir = path_join(st->mail_dir, dn))) {
		if (u) {
			free(u->name);
			free(u);
		}
		free(ul);
		err = -ENOMEM;
		goto fail;
	}
	u->store = st;
	u->refs = 1; /* the waiter's */
	u->next_id = 1;
	pthread_mutex_init(&u->mu, NULL);
	u->log.mu = &u->mu;
	u->log.apply = user_apply;
	u->log.owner = u;
	u->log.poisoned = &u->poisoned;
	u->waiters = w;
	pthread_mutex_lock(&st->mu);
	{
		/* another loop may have started the same user meanwhile */
		struct suser *o;
		for (o = st->users; o; o = o->next)
			if (strcmp(o->name, name) == 0)
				break;
		if (o) {
			if (o->refs++ == 0 && o->idle_since) {
				o->idle_since = 0;
				st->nidle--;
			}
			u->waiters = NULL;
			if (o->loaded) {
				struct uopen_done *d = malloc(sizeof(*d));
				pthread_mutex_unlock(&st->mu);
				suser_free(loop, u);
				free(ul);
				free(w);
				if (!d) {
					suser_unref(loop, &o);
					err = -ENOMEM;
					goto fail_nofree;
				}
				*d = (struct uopen_done){ o, 0, cb, arg };
				xcall(loop, loop, uopen_deliver, d);
				return;
			}
			w->next = o->waiters;
			o->waiters = w;
			pthread_mutex_unlock(&st->mu);
			suser_free(loop, u);
			free(ul);
			return;
		}
	}
	u->next = st->users;
	st->users = u;
	pthread_mutex_unlock(&st->mu);

	ul->cb.fn = uload_cqe;
	ul->ctx = ctx;
	ul->u = u;
	ul->step = UL_MKDIR_DONE;
	io_uring_prep_mkdirat(loop_sqe(loop, &ul->cb), AT_FDCWD, u->dir, 0700);
	return;
fail:
	free(w);
fail_nofree: {
	struct uopen_done *d = malloc(sizeof(*d));
	if (!d)
		abort();
	*d = (struct uopen_done){ NULL, err, cb, arg };
	xcall(loop, loop, uopen_deliver, d);
}
}

void store_user_close(struct store_user **h_r)
{
	struct store_user *h = *h_r;

	*h_r = NULL;
	if (!h)
		return;
	suser_unref(h->loop, &h->u);
	free(h);
}

/* The user's limit: its override, else the store's; 0 means none. */
static uint64_t user_limit(struct suser *u, bool msgs)
{
	uint64_t o = atomic_load(msgs ? &u->limit_msgs : &u->limit_bytes);

	if (o == STORE_QUOTA_NONE)
		return 0;
	if (o)
		return o;
	return msgs ? u->store->cfg.quota_messages : u->store->cfg.quota_bytes;
}

void store_user_quota(struct store_user *h, uint64_t *bytes_r, uint64_t *msgs_r,
		      uint64_t *limit_bytes_r, uint64_t *limit_msgs_r)
{
	*bytes_r = atomic_load(&h->u->q_bytes);
	*msgs_r = atomic_load(&h->u->q_msgs);
	*limit_bytes_r = user_limit(h->u, false);
	*limit_msgs_r = user_limit(h->u, true);
}

void store_user_set_quota(struct store_user *h, uint64_t bytes, uint64_t msgs)
{
	atomic_store(&h->u->limit_bytes, bytes);
	atomic_store(&h->u->limit_msgs, msgs);
}

/* ---- folder records: apply, notify, checkpoint ------------------------- */

/* Under f->mu: an acknowledged record reaches the index. */
static void folder_apply(void *owner, const struct record *r, struct pend *p)
{
	struct sfolder *f = owner;
	struct suser *u = f->user;
	size_t before = f->ix.n;
	uint64_t freed = 0;
	int err;

	if (r->type == REC_EXPUNGE && p) {
		/* remember one-message segments: their files go once durable */
		for (uint32_t i = 0; i < r->u.expunge.n; i++) {
			struct index_msg *m = index_find(&f->ix, record_uid_at(r->u.expunge.uids, i));
			uint32_t *v;
			if (!m || !(m->seg & SEG_SINGLE))
				continue;
			v = realloc(p->unlink, (p->nunlink + 1) * sizeof(*v));
			if (!v)
				break;
			p->unlink = v;
			p->unlink[p->nunlink++] = m->seg;
		}
	}
	err = index_apply(&f->ix, r, &freed);
	if (err) {
		/* Cannot happen for records we built; refuse further changes
		 * rather than let memory and disk disagree. */
		fprintf(stderr, "store: %s: cannot apply record type %u: %s\n", f->dir, r->type,
			strerror(-err));
		if (!f->log.broken) {
			f->log.broken = -EIO;
			atomic_store(&f->user->poisoned, true);
			f->log.broken_off = p ? p->off : 0;
		}
		return;
	}
	if (r->type == REC_APPEND) {
		atomic_fetch_add(&u->q_bytes, r->u.append.len);
		atomic_fetch_add(&u->q_msgs, 1);
		if (p)
			p->uid = r->u.append.uid;
	} else if (r->type == REC_EXPUNGE) {
		quota_sub(u, freed, before - f->ix.n);
		f->dead += freed;
	}
}

static void watch_fire(struct loop *loop, void *arg)
{
	struct watch *w = arg;
	int old = atomic_fetch_and(&w->state, ~WATCH_PENDING);

	(void)loop;
	if (old & WATCH_DEAD) {
		free(w);
		return;
	}
	w->cb(w->arg);
}

struct ckw {
	struct loop_cb cb;
	struct swrite w;
	struct swait sw;
	int step;
	struct sctx *ctx;
	struct sfolder *f;
	struct suser *u;        /* reference */
	struct sfile *file;
	uint8_t *buf;
	size_t len;
	uint64_t off;
	char *tmp, *dst;
	store_done_cb *cb_done;
	void *arg;
};

static void ckw_run(struct loop *loop, struct ckw *c, int res);
static void ckw_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	ckw_run(loop, container_of(cb, struct ckw, cb), res);
}
static void ckw_written(struct loop *loop, struct swrite *w, int res)
{
	ckw_run(loop, container_of(w, struct ckw, w), res);
}
static void ckw_synced(struct loop *loop, struct swait *w, int res)
{
	ckw_run(loop, container_of(w, struct ckw, sw), res);
}

/* The checkpoint is written beside the log and renamed over the old one:
 * write, fdatasync, rename, fsync the directory. A crash at any point
 * leaves either the old or the new one, each consistent with the log. */
static void ckw_run(struct loop *loop, struct ckw *c, int res)
{
	struct sfolder *f = c->f;

	if (res < 0)
		goto done;
	switch (c->step++) {
	case 0:
		io_uring_prep_openat(loop_sqe(loop, &c->cb), AT_FDCWD, c->tmp,
				     O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		return;
	case 1:
		if (!(c->file = sfile_new(res, 0, false))) {
			close(res);
			res = -ENOMEM;
			goto done;
		}
		swrite_start(loop, &c->w, c->file, c->buf, c->len, 0, ckw_written);
		return;
	case 2:
		c->sw.fn = ckw_synced;
		sync_request(c->ctx, c->file, &c->sw);
		return;
	case 3:
		io_uring_prep_renameat(loop_sqe(loop, &c->cb), AT_FDCWD, c->tmp, AT_FDCWD, c->dst, 0);
		return;
	case 4:
		sync_request(c->ctx, f->dirf, &c->sw);
		return;
	case 5:
		res = 0;
		goto done;
	}
	res = -EINVAL;
done:
	pthread_mutex_lock(&f->mu);
	if (res == 0 && c->off > f->ck_off)
		f->ck_off = c->off;
	f->ck_running = false;
	pthread_mutex_unlock(&f->mu);
	if (res < 0)
		LOG_AT(loop_log(loop), LOG_WARN, 0, "store-checkpoint", "dir=%s error=%s", f->dir, strerror(-res));
	sfile_unref(loop, &c->file);
	folder_maybe_close(loop, f);
	if (c->cb_done)
		c->cb_done(c->arg, res);
	suser_unref(loop, &c->u);
	free(c->buf);
	free(c->tmp);
	free(c->dst);
	free(c);
}

/* Starts a checkpoint of f's acknowledged state; f->mu held, ck_running
 * already set by the caller. Returns 0 or a negative errno (then the
 * caller clears ck_running). */
static int ckw_start_locked(struct sctx *ctx, struct sfolder *f, struct ckw **c_r)
{
	struct ckw *c = calloc(1, sizeof(*c));
	size_t n = index_checkpoint_size(&f->ix);

	if (!c)
		return -ENOMEM;
	c->buf = malloc(n);
	c->tmp = folder_path(f, STORE_CHECKPOINT_TMP);
	c->dst = folder_path(f, STORE_CHECKPOINT);
	if (!c->buf || !c->tmp || !c->dst) {
		free(c->buf);
		free(c->tmp);
		free(c->dst);
		free(c);
		return -ENOMEM;
	}
	c->cb.fn = ckw_cqe;
	c->ctx = ctx;
	c->f = f;
	c->off = f->log.applied_end;
	c->len = index_checkpoint_put(&f->ix, c->off, c->buf, n);
	*c_r = c;
	return 0;
}

/* ---- rewriting the log ------------------------------------------------ */

/* A folder's log keeps every record it ever got: expunged messages'
 * APPENDs, flag changes superseded since. A rewrite replaces it by the
 * records of what the index holds now (index_base_next()):
 *
 *   1. reservations park (slog_reserve) and the FIFO drains, so that the
 *      acknowledged index is exactly the log and stays so (nothing else
 *      changes it);
 *   2. log.new is written from the index, fdatasync'ed;
 *   3. the checkpoint is unlinked and the directory fsync'ed: it describes
 *      offsets of the old log, and must be gone before the new one has
 *      the name;
 *   4. log.new is renamed over log, the directory fsync'ed;
 *   5. the log's file is switched, and the parked records are reserved in
 *      it, in the order they came, and submitted on their own loops.
 *
 * A crash leaves either the old log (and perhaps no checkpoint: a full
 * replay) or the new one, and both say the same. A failure before step 4
 * leaves the old log in use; the parked records go to it. */
enum { ROT_CHUNK = 4 << 20 };

static void unlink_later(struct loop *loop, char *path);
static void done_later(struct loop *loop, store_done_cb *cb, void *arg, int res);

struct rot {
	struct loop_cb cb;
	struct swrite w;
	struct swait sw;
	int step;
	struct sctx *ctx;
	struct sfolder *f;
	struct suser *u;        /* reference */
	struct sfile *file;     /* log.new */
	uint8_t *buf;
	uint64_t off;
	struct index_base_cursor cur;
	char *newp, *logp, *ckp;
	bool renamed;
	store_done_cb *cb_done;
	void *arg;
};

enum { ROT_OPEN, ROT_OPENED, ROT_FILLED, ROT_SYNCED, ROT_CK_GONE, ROT_CK_GONE_SYNCED,
       ROT_RENAMED, ROT_RENAME_SYNCED };

static void pend_submit_x(struct loop *loop, void *arg)
{
	(void)loop;
	pend_submit(arg);
}

static void rot_run(struct loop *loop, struct rot *r, int res);
static void rot_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	rot_run(loop, container_of(cb, struct rot, cb), res);
}
static void rot_written(struct loop *loop, struct swrite *w, int res)
{
	rot_run(loop, container_of(w, struct rot, w), res);
}
static void rot_synced(struct loop *loop, struct swait *w, int res)
{
	rot_run(loop, container_of(w, struct rot, sw), res);
}

/* Ends the rotating state of f's log; f->mu held. The parked records are
 * reserved in the log in use, in the order they came (the FIFO is empty:
 * step 1), and submitted on their own loops, or failed when the log is
 * broken. (xcall() only queues: it is safe under the mutex, and the links
 * are read before any of them can run.) */
static void rot_unpark_locked(struct loop *loop, struct sfolder *f)
{
	struct pend *p = f->log.parked;

	f->log.rotating = f->log.rot_started = false;
	f->log.parked = f->log.parked_tail = NULL;
	while (p) {
		struct pend *next = p->next;
		p->next = NULL;
		if (f->log.broken) {
			p->res = f->log.broken;
			xcall(loop, p->loop, pend_complete_run, p);
		} else {
			p->off = f->log.end;
			f->log.end += p->len;
			if (f->log.tail)
				f->log.tail->next = p;
			else
				f->log.head = p;
			f->log.tail = p;
			xcall(loop, p->loop, pend_submit_x, p);
		}
		p = next;
	}
}

/* Step 5, or the end of a failed rewrite. */
static void rot_end(struct loop *loop, struct rot *r, int res)
{
	struct sfolder *f = r->f;
	struct sfile *old = NULL;

	pthread_mutex_lock(&f->mu);
	if (r->renamed) {
		/* the name is the new file's now: the old one must not get
		 * another record, whatever the directory's fsync said */
		old = f->log.file;
		f->log.file = r->file;
		r->file = NULL;
		f->log.end = f->log.applied_end = r->off;
		f->ck_off = 0;
		f->ix.log_gen = index_next_gen(&f->ix); /* what its FOLDER_HDR says */
		if (res < 0 && !f->log.broken) {
			f->log.broken = res;
			f->log.broken_off = r->off;
			atomic_store(&f->user->poisoned, true);
		}
	} else if (res < 0) {
		uint64_t every = f->user->store->cfg.checkpoint_bytes;
		f->rot_retry = f->log.applied_end + (every ? every : STORE_CHECKPOINT_DEFAULT);
	}
	rot_unpark_locked(loop, f);
	pthread_mutex_unlock(&f->mu);
	if (res < 0)
		LOG_AT(loop_log(loop), LOG_WARN, 0, "store-log-rewrite", "dir=%s error=%s", f->dir,
		       strerror(-res));
	else
		LOG_AT(loop_log(loop), LOG_INFO, 0, "store-log-rewrite", "dir=%s bytes=%llu", f->dir,
		       (unsigned long long)r->off);
	if (r->file) {
		/* not renamed: the half-written rewrite goes (best effort;
		 * the next rewrite truncates it anyway, fsck removes it) */
		unlink_later(loop, r->newp);
		r->newp = NULL;
	}
	sfile_unref(loop, &r->file);
	sfile_unref(loop, &old);
	folder_maybe_close(loop, f);
	if (r->cb_done) /* never inline: the rewrite may end inside store_rewrite_log() */
		done_later(loop, r->cb_done, r->arg,
			   res < 0 ? res : (int)(r->off > INT32_MAX ? INT32_MAX : r->off));
	suser_unref(loop, &r->u);
	free(r->buf);
	free(r->newp);
	free(r->logp);
	free(r->ckp);
	free(r);
}

static void rot_run(struct loop *loop, struct rot *r, int res)
{
	struct sfolder *f = r->f;
	size_t n;

	if (res < 0 && !(r->step == ROT_CK_GONE && res == -ENOENT))
		goto fail;
	if (!r->renamed) {
		/* a folder deleted meanwhile goes with its files; a log broken
		 * before the rewrite began stays broken until reopened */
		int gone;
		pthread_mutex_lock(&f->mu);
		gone = f->deleted ? -ENOENT : f->log.broken;
		pthread_mutex_unlock(&f->mu);
		if (gone < 0) {
			if (r->step == ROT_OPENED && res >= 0)
				close(res); /* the new file's descriptor, not ours yet */
			res = gone;
			goto fail;
		}
	}
	switch (r->step) {
	case ROT_OPEN:
		r->step = ROT_OPENED;
		io_uring_prep_openat(loop_sqe(loop, &r->cb), AT_FDCWD, r->newp,
				     O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		return;
	case ROT_OPENED:
		if (!(r->file = sfile_new(res, 0, false))) {
			close(res);
			res = -ENOMEM;
			goto fail;
		}
		r->step = ROT_FILLED;
		res = 0;
		/* fall through */
	case ROT_FILLED:
		if (r->w.len)
			r->off += r->w.len;
		/* the index cannot change while the log is rotating */
		pthread_mutex_lock(&f->mu);
		n = index_base_next(&f->ix, &r->cur, r->buf, ROT_CHUNK);
		pthread_mutex_unlock(&f->mu);
		if (n) {
			swrite_start(loop, &r->w, r->file, r->buf, n, r->off, rot_written);
			return;
		}
		if (r->cur.stage != INDEX_BASE_DONE) {
			res = -EINVAL;
			goto fail;
		}
		r->step = ROT_SYNCED;
		r->sw.fn = rot_synced;
		sync_request(r->ctx, r->file, &r->sw);
		return;
	case ROT_SYNCED:
		r->step = ROT_CK_GONE;
		io_uring_prep_unlinkat(loop_sqe(loop, &r->cb), AT_FDCWD, r->ckp, 0);
		return;
	case ROT_CK_GONE:
		r->step = ROT_CK_GONE_SYNCED;
		sync_request(r->ctx, f->dirf, &r->sw);
		return;
	case ROT_CK_GONE_SYNCED:
		r->step = ROT_RENAMED;
		io_uring_prep_renameat(loop_sqe(loop, &r->cb), AT_FDCWD, r->newp, AT_FDCWD, r->logp, 0);
		return;
	case ROT_RENAMED:
		r->renamed = true;
		r->step = ROT_RENAME_SYNCED;
		sync_request(r->ctx, f->dirf, &r->sw);
		return;
	case ROT_RENAME_SYNCED:
		rot_end(loop, r, 0);
		return;
	}
	res = -EINVAL;
fail:
	rot_end(loop, r, res);
}

/* Runs once the log is rotating and its FIFO has drained (on the loop that
 * saw it drain). */
static void folder_rotate(struct loop *loop, void *owner)
{
	struct sfolder *f = owner;
	struct rot *r = calloc(1, sizeof(*r));

	if (r) {
		r->cb.fn = rot_cqe;
		r->f = f;
		r->ctx = store_ctx(f->user->store, loop);
		r->buf = malloc(ROT_CHUNK);
		r->newp = folder_path(f, STORE_LOG_NEW);
		r->logp = folder_path(f, STORE_LOG);
		r->ckp = folder_path(f, STORE_CHECKPOINT);
		r->u = suser_ref(f->user);
		pthread_mutex_lock(&f->mu);
		r->cb_done = f->rot_cb;
		r->arg = f->rot_arg;
		f->rot_cb = NULL;
		f->rot_arg = NULL;
		pthread_mutex_unlock(&f->mu);
	}
	if (!r) {
		/* out of memory: no rewrite, the parked records go on */
		store_done_cb *cb;
		void *arg;
		pthread_mutex_lock(&f->mu);
		f->rot_retry = f->log.applied_end + 1;
		rot_unpark_locked(loop, f);
		cb = f->rot_cb;
		arg = f->rot_arg;
		f->rot_cb = NULL;
		pthread_mutex_unlock(&f->mu);
		if (cb)
			done_later(loop, cb, arg, -ENOMEM);
		return;
	}
	if (!r->ctx || !r->buf || !r->newp || !r->logp || !r->ckp) {
		rot_end(loop, r, -ENOMEM);
		return;
	}
	rot_run(loop, r, 0);
}

void store_rewrite_log(struct store_folder *h, struct loop *loop, store_done_cb *cb, void *arg)
{
	struct sfolder *f = h->f;
	bool now = false;
	int err = 0;

	pthread_mutex_lock(&f->mu);
	if (f->ck_running || f->log.rotating)
		err = -EBUSY;
	else if (f->deleted)
		err = -ENOENT;
	else if (f->log.broken)
		err = -EIO;
	else {
		f->log.rotating = true;
		f->rot_cb = cb;
		f->rot_arg = arg;
		now = !f->log.head && (f->log.rot_started = true);
	}
	pthread_mutex_unlock(&f->mu);
	if (err) {
		done_later(loop, cb, arg, err);
		return;
	}
	if (now)
		folder_rotate(loop, f);
}

static void compact_start(struct sfolder *f, struct loop *loop, store_done_cb *cb, void *arg);

/* Expunged bytes after which a folder compacts on its own. */
static uint64_t compact_after(const struct store *st)
{
	if (st->cfg.compact_after)
		return st->cfg.compact_after;
	return (st->cfg.segment_max ? st->cfg.segment_max : STORE_SEGMENT_MAX) / 2;
}

/* The end of an automatic compaction: nobody waits for it (compact_end
 * logs what it did). */
static void compacted_auto(void *arg, int res)
{
	(void)arg;
	(void)res;
}

static void folder_after(struct loop *loop, void *owner)
{
	struct sfolder *f = owner;
	struct store *st = f->user->store;
	struct ckw *c = NULL;
	bool rotate = false;
	uint64_t every = st->cfg.checkpoint_bytes ? st->cfg.checkpoint_bytes
						  : STORE_CHECKPOINT_DEFAULT;

	pthread_mutex_lock(&f->mu);
	for (struct watch *w = f->watches; w; w = w->next)
		if (!(atomic_fetch_or(&w->state, WATCH_PENDING) & WATCH_PENDING))
			xcall(loop, w->loop, watch_fire, w);
	if (!f->ck_running && !f->log.rotating && !f->deleted && !f->log.broken &&
	    f->log.applied_end - f->ck_off >= every) {
		struct sctx *ctx = store_ctx(st, loop);
		if (f->log.applied_end >= f->rot_retry &&
		    f->log.applied_end >= 2 * (uint64_t)index_base_size(&f->ix)) {
			/* at least half of the log is history nothing needs any
			 * more: rewrite it rather than snapshot it */
			f->log.rotating = true;
			rotate = !f->log.head && (f->log.rot_started = true);
		} else {
			f->ck_running = true;
			if (!ctx || ckw_start_locked(ctx, f, &c))
				f->ck_running = false;
		}
	}
	bool compact = !f->compacting && !f->deleted && f->dead >= compact_after(st);
	if (compact)
		f->dead = 0;
	pthread_mutex_unlock(&f->mu);
	if (c) {
		c->u = suser_ref(f->user);
		ckw_run(loop, c, 0);
	}
	if (compact)
		compact_start(f, loop, compacted_auto, NULL);
	if (rotate)
		folder_rotate(loop, f);
}

/* ---- deferred callbacks to the caller ---------------------------------- */

struct reply {
	store_done_cb *done;
	store_modseq_cb *modseq;
	store_folder_cb *folder;
	void *arg;
	int res;
	uint64_t v;
	struct store_folder *h;
};

static void reply_run(struct loop *loop, void *arg)
{
	struct reply *r = arg;

	(void)loop;
	if (r->done)
		r->done(r->arg, r->res);
	else if (r->modseq)
		r->modseq(r->arg, r->res, r->v);
	else if (r->folder)
		r->folder(r->arg, r->res, r->h);
	free(r);
}

/* Calls back on loop after the current batch: never inside the request. */
static void reply_later(struct loop *loop, struct reply r)
{
	struct reply *p = malloc(sizeof(*p));

	if (!p) {
		LOG_AT(loop_log(loop), LOG_ERROR, 0, "store-oom", "what=reply");
		abort();
	}
	*p = r;
	xcall(loop, loop, reply_run, p);
}

static void done_later(struct loop *loop, store_done_cb *cb, void *arg, int res)
{
	reply_later(loop, (struct reply){ .done = cb, .arg = arg, .res = res });
}

/* ---- folder handles ---------------------------------------------------- */

static const struct {
	const char *name;
	enum store_special special;
} specials[] = {
	{ "Sent", STORE_SPECIAL_SENT },   { "Drafts", STORE_SPECIAL_DRAFTS },
	{ "Trash", STORE_SPECIAL_TRASH }, { "Junk", STORE_SPECIAL_JUNK },
	{ "Archive", STORE_SPECIAL_ARCHIVE },
};

static enum store_special special_of(const char *name)
{
	for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
		if (strcmp(name, specials[i].name) == 0)
			return specials[i].special;
	return STORE_SPECIAL_NONE;
}

static int name_check(const char *name)
{
	size_t n = name ? strlen(name) : 0;

	if (n == 0 || n > STORE_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return -EINVAL;
	return 0;
}

/* The folder named name, or NULL; u->mu held. */
static struct sfolder *user_folder(struct suser *u, const char *name)
{
	struct ufolder *v;

	if (name_is_inbox(span_cstr(name)))
		return u->inbox;
	v = user_find_name(u, span_cstr(name));
	return v ? v->f : NULL;
}

static struct store_folder *handle_new(struct store_user *uh, struct sfolder *f, struct loop *loop)
{
	struct store_folder *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->ctx = store_ctx(uh->u->store, loop);
	if (!h->ctx) {
		free(h);
		return NULL;
	}
	h->u = suser_ref(uh->u);
	h->f = f;
	h->loop = loop;
	return h;
}

/* ---- reopening a folder's files ------------------------------------------ */

/* A store_folder_open() waiting for its folder's files: res and h go to
 * cb on loop once the reopen ends. */
struct fopener {
	struct fopener *next;
	struct loop *loop;
	struct store_folder *h;
	store_folder_cb *cb;
	void *arg;
	int res;
};

/* Opens a closed folder's files again: its directory, its log and its
 * active segment, by the names and numbers the index kept. Nothing is
 * read: the index in memory is the folder's acknowledged state. */
struct freopen {
	struct loop_cb cb;
	struct sfolder *f;
	struct suser *u;           /* reference */
	int step;
	int fds[3];
	char *path;
};

static void fopener_deliver(struct loop *loop, void *arg)
{
	struct fopener *o = arg;

	(void)loop;
	if (o->res < 0) {
		store_folder_close(&o->h);
		o->cb(o->arg, o->res, NULL);
	} else {
		o->cb(o->arg, 0, o->h);
	}
	free(o);
}

static void freopen_end(struct loop *loop, struct freopen *r, int res)
{
	struct sfolder *f = r->f;
	struct sfile *nf[3] = { NULL, NULL, NULL };
	struct fopener *o;

	for (int i = 0; res == 0 && i < 3; i++)
		if (!(nf[i] = sfile_new(r->fds[i], i == 2 ? f->seg_closed : 0, i == 0)))
			res = -ENOMEM;
	pthread_mutex_lock(&f->mu);
	if (res == 0) {
		f->dirf = nf[0];
		f->log.file = nf[1];
		f->seg = nf[2];
		atomic_store(&f->seg->dirsync, f->seg_dirsync_closed);
		f->fstate = FF_OPEN;
	} else {
		f->fstate = FF_CLOSED;
	}
	o = f->openers;
	f->openers = NULL;
	pthread_mutex_unlock(&f->mu);
	if (res < 0) {
		LOG_AT(loop_log(loop), LOG_ERROR, 0, "store-reopen", "dir=%s error=%s", f->dir,
		       strerror(-res));
		for (int i = 0; i < 3; i++) {
			if (nf[i])
				sfile_unref(loop, &nf[i]);
			else if (r->fds[i] >= 0)
				io_uring_prep_close(loop_sqe(loop, &ignore_cb), r->fds[i]);
		}
	}
	while (o) {
		struct fopener *next = o->next;
		o->res = res;
		xcall(loop, o->loop, fopener_deliver, o);
		o = next;
	}
	suser_unref(loop, &r->u);
	free(r->path);
	free(r);
}

static void freopen_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct freopen *r = container_of(cb, struct freopen, cb);
	struct sfolder *f = r->f;
	char name[16];
	int oflags;

	(void)flags;
	if (r->step > 0) {
		if (res < 0) {
			freopen_end(loop, r, res);
			return;
		}
		r->fds[r->step - 1] = res;
	}
	free(r->path);
	switch (r->step++) {
	case 0:
		r->path = strdup(f->dir);
		oflags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
		break;
	case 1:
		r->path = folder_path(f, STORE_LOG);
		oflags = O_RDWR | O_CLOEXEC;
		break;
	case 2:
		/* no O_CREAT: the load made it, and nothing removes the active
		 * segment of a folder that is not deleted */
		store_seg_name(f->seg_closed, name);
		r->path = folder_path(f, name);
		oflags = O_RDWR | O_CLOEXEC;
		break;
	default:
		r->path = NULL;
		freopen_end(loop, r, 0);
		return;
	}
	if (!r->path) {
		freopen_end(loop, r, -ENOMEM);
		return;
	}
	io_uring_prep_openat(loop_sqe(loop, &r->cb), AT_FDCWD, r->path, oflags, 0);
}

/* A new handle h holds its folder: 0 when the folder's files are open,
 * 1 when cb(arg, res, h) comes once they are (reopened on h's loop), or a
 * negative errno (the caller closes h). */
static int folder_hold(struct store_folder *h, store_folder_cb *cb, void *arg)
{
	struct sfolder *f = h->f;
	struct fopener *o = calloc(1, sizeof(*o));
	struct freopen *r = calloc(1, sizeof(*r));
	bool start = false;
	int res = 1;

	pthread_mutex_lock(&f->mu);
	f->nopen++;
	if (f->fstate == FF_OPEN) {
		res = 0;
	} else if (!o || (f->fstate == FF_CLOSED && !r)) {
		res = -ENOMEM;
	} else if (f->deleted) {
		res = -ENOENT;
	} else {
		*o = (struct fopener){ .next = f->openers, .loop = h->loop, .h = h, .cb = cb,
				       .arg = arg };
		f->openers = o;
		o = NULL;
		if (f->fstate == FF_CLOSED) {
			f->fstate = FF_OPENING;
			start = true;
		}
	}
	pthread_mutex_unlock(&f->mu);
	free(o);
	if (!start) {
		free(r);
		return res;
	}
	r->cb.fn = freopen_cqe;
	r->f = f;
	r->u = suser_ref(f->user);
	r->fds[0] = r->fds[1] = r->fds[2] = -1;
	freopen_cqe(h->loop, &r->cb, 0, 0);
	return 1;
}

struct fopen_req {
	struct store_user *uh;
	struct loop *loop;
	char *name;
	store_folder_cb *cb;
	void *arg;
};

static void fopen_created(void *arg, int res)
{
	struct fopen_req *r = arg;

	if (res == 0 || res == -EEXIST)
		store_folder_open(r->uh, r->loop, r->name, r->cb, r->arg);
	else
		r->cb(r->arg, res, NULL);
	free(r->name);
	free(r);
}

void store_folder_open(struct store_user *uh, struct loop *loop, const char *name,
		       store_folder_cb *cb, void *arg)
{
	struct suser *u = uh->u;
	struct sfolder *f;
	struct store_folder *h = NULL;
	int res = name_check(name);

	if (res == 0) {
		pthread_mutex_lock(&u->mu);
		f = user_folder(u, name);
		pthread_mutex_unlock(&u->mu);
		if (f) {
			h = handle_new(uh, f, loop);
			res = h ? folder_hold(h, cb, arg) : -ENOMEM;
			if (res == 1)
				return; /* called back once the files are open */
			if (res < 0)
				store_folder_close(&h);
		} else if (special_of(name) != STORE_SPECIAL_NONE) {
			/* special-use folders exist once asked for */
			struct fopen_req *r = calloc(1, sizeof(*r));
			if (r && (r->name = strdup(name))) {
				r->uh = uh;
				r->loop = loop;
				r->cb = cb;
				r->arg = arg;
				store_folder_create(uh, loop, name, fopen_created, r);
				return;
			}
			free(r);
			res = -ENOMEM;
		} else {
			res = -ENOENT;
		}
	}
	reply_later(loop, (struct reply){ .folder = cb, .arg = arg, .res = res, .h = h });
}

static void watch_remove(struct store_folder *h)
{
	struct watch *w = h->watch;

	if (!w)
		return;
	h->watch = NULL;
	pthread_mutex_lock(&h->f->mu);
	for (struct watch **pp = &h->f->watches; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	pthread_mutex_unlock(&h->f->mu);
	/* a fire already on its way frees it instead (same thread) */
	if (!(atomic_fetch_or(&w->state, WATCH_DEAD) & WATCH_PENDING))
		free(w);
}

static void hpin_unref(struct loop *loop, struct sfolder *f, struct hpin **p_r)
{
	struct hpin *p = *p_r;
	struct sfile *file = NULL;

	*p_r = NULL;
	if (!p)
		return;
	pthread_mutex_lock(&f->mu);
	if (--p->refs == 0) {
		file = p->file;
		free(p);
	}
	pthread_mutex_unlock(&f->mu);
	sfile_unref(loop, &file);
}

void store_folder_close(struct store_folder **h_r)
{
	struct store_folder *h = *h_r;

	*h_r = NULL;
	if (!h)
		return;
	hpin_unref(h->loop, h->f, &h->pin);
	watch_remove(h);
	pthread_mutex_lock(&h->f->mu);
	h->f->nopen--;
	pthread_mutex_unlock(&h->f->mu);
	folder_maybe_close(h->loop, h->f);
	suser_unref(h->loop, &h->u);
	free(h);
}

int store_watch(struct store_folder *h, struct loop *loop, store_watch_cb *cb, void *arg)
{
	struct watch *w;

	watch_remove(h);
	if (!cb)
		return 0;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->loop = loop;
	w->cb = cb;
	w->arg = arg;
	atomic_init(&w->state, 0);
	pthread_mutex_lock(&h->f->mu);
	w->next = h->f->watches;
	h->f->watches = w;
	pthread_mutex_unlock(&h->f->mu);
	h->watch = w;
	return 0;
}

/* The next MODSEQ of f (f->mu held). A folder that never changed has
 * HIGHESTMODSEQ 0 in its index but is reported as 1 (status_locked), so
 * its first change gets 2: RFC 7162's mod-sequence-value is 1 or more,
 * and a client given 1 must see that change as one made since. */
static uint64_t next_modseq(struct sfolder *f)
{
	if (f->modseq_res == 0)
		f->modseq_res = 1;
	return ++f->modseq_res;
}

static void status_locked(const struct sfolder *f, struct store_folder_status *st)
{
	st->uidvalidity = f->ix.uidvalidity;
	st->uidnext = f->ix.uidnext;
	st->highestmodseq = f->ix.highestmodseq ? f->ix.highestmodseq : 1;
	st->messages = (uint32_t)f->ix.n;
	st->unseen = f->ix.unseen;
	st->deleted = f->ix.deleted;
	st->bytes = f->ix.bytes;
}

static void status_snapshot(struct sfolder *f, struct store_folder_status *st)
{
	pthread_mutex_lock(&f->mu);
	status_locked(f, st);
	pthread_mutex_unlock(&f->mu);
}

void store_folder_status(struct store_folder *h, struct store_folder_status *st)
{
	status_snapshot(h->f, st);
}

int store_folder_status_of(struct store_user *uh, const char *name, struct store_folder_status *st)
{
	struct suser *u = uh->u;
	struct sfolder *f;
	int res = name_check(name);

	if (res)
		return res;
	/* A folder found here stays allocated while uh holds the user (a
	 * delete moves it to u->dead), as for store_folder_open(). */
	pthread_mutex_lock(&u->mu);
	f = user_folder(u, name);
	pthread_mutex_unlock(&u->mu);
	if (!f)
		return -ENOENT;
	status_snapshot(f, st);
	return 0;
}

int store_folder_vanished(struct store_folder *h, uint64_t since,
			  struct store_uid_range **ranges_r, size_t *n_r)
{
	struct index_gone *g;
	struct store_uid_range *out = NULL;
	size_t n;
	int rc;

	*ranges_r = NULL;
	*n_r = 0;
	pthread_mutex_lock(&h->f->mu);
	rc = index_vanished(&h->f->ix, since, &g, &n);
	pthread_mutex_unlock(&h->f->mu);
	if (rc < 0)
		return rc;
	if (n) {
		/* the index's runs carry a MODSEQ the caller has no use for */
		out = malloc(n * sizeof(*out));
		if (!out) {
			free(g);
			return -ENOMEM;
		}
		for (size_t i = 0; i < n; i++)
			out[i] = (struct store_uid_range){ g[i].lo, g[i].hi };
	}
	free(g);
	*ranges_r = out;
	*n_r = n;
	return rc;
}

/* ---- views --------------------------------------------------------------- */

int store_view_open(struct store_folder *h, struct store_view **view_r)
{
	struct sfolder *f = h->f;
	struct store_view *v = calloc(1, sizeof(*v));
	int err = -ENOMEM;

	if (!v)
		return -ENOMEM;
	pthread_mutex_lock(&f->mu);
	status_locked(f, &v->st);
	v->n = f->ix.n;
	v->msgs = calloc(v->n ? v->n : 1, sizeof(*v->msgs));
	v->blobs = calloc(v->n ? v->n : 1, sizeof(*v->blobs));
	if (!v->msgs || !v->blobs)
		goto err;
	for (size_t i = 0; i < v->n; i++) {
		const struct index_msg *m = &f->ix.msgs[i];
		/* messages loaded from one checkpoint share its arena: one
		 * reference per run of them, not per message */
		if (!v->nblobs || v->blobs[v->nblobs - 1] != m->blob)
			v->blobs[v->nblobs++] = iblob_ref(m->blob);
		v->msgs[i] = (struct store_msg){
			.uid = m->uid, .flags = m->flags, .keywords = m->keywords,
			.modseq = m->modseq, .size = m->size, .internal_date = m->date,
			.blob = index_msg_blob(m),
		};
	}
	for (int i = 0; i < 64; i++)
		if (f->ix.keywords[i] && !(v->keywords[i] = strdup(f->ix.keywords[i])))
			goto err;
	pthread_mutex_unlock(&f->mu);
	*view_r = v;
	return 0;
err:
	pthread_mutex_unlock(&f->mu);
	store_view_free(&v);
	return err;
}

void store_view_free(struct store_view **view_r)
{
	struct store_view *v = *view_r;

	*view_r = NULL;
	if (!v)
		return;
	for (size_t i = 0; v->blobs && i < v->nblobs; i++)
		iblob_unref(&v->blobs[i]);
	for (int i = 0; i < 64; i++)
		free(v->keywords[i]);
	free(v->blobs);
	free(v->msgs);
	free(v);
}

size_t store_view_count(const struct store_view *v) { return v->n; }

const struct store_msg *store_view_msg(const struct store_view *v, size_t i)
{
	return i < v->n ? &v->msgs[i] : NULL;
}

ssize_t store_view_find(const struct store_view *v, uint32_t uid)
{
	size_t lo = 0, hi = v->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < v->n && v->msgs[lo].uid == uid ? (ssize_t)lo : -1;
}

const char *store_view_keyword(const struct store_view *v, unsigned i)
{
	return i < 64 ? v->keywords[i] : NULL;
}

void store_view_status(const struct store_view *v, struct store_folder_status *st)
{
	*st = v->st;
}

/* ---- folder list changes ------------------------------------------------ */

/* Removing a deleted folder's files: unlink each, then the directory.
 * Best effort: whatever stays (a crash, an error) is an orphan fsck
 * removes; the DELETE record is what counts. */
struct rmdir_op {
	struct loop_cb cb;
	char **paths;
	size_t n, left;
	char *dir;
};

static void rmdir_step(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct rmdir_op *o = container_of(cb, struct rmdir_op, cb);

	(void)res, (void)flags;
	if (o->left == SIZE_MAX) { /* the directory itself is done */
		for (size_t i = 0; i < o->n; i++)
			free(o->paths[i]);
		free(o->paths);
		free(o->dir);
		free(o);
		loop_release(loop);
		return;
	}
	if (o->left < o->n) {
		/* one at a time: a handful of files, and no counter to race */
		io_uring_prep_unlinkat(loop_sqe(loop, &o->cb), AT_FDCWD, o->paths[o->left++], 0);
		return;
	}
	o->left = SIZE_MAX;
	io_uring_prep_unlinkat(loop_sqe(loop, &o->cb), AT_FDCWD, o->dir, AT_REMOVEDIR);
}

static int u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void folder_remove_files(struct loop *loop, struct sfolder *f)
{
	struct rmdir_op *o = calloc(1, sizeof(*o));
	size_t cap;

	if (!o)
		return;
	pthread_mutex_lock(&f->mu);
	cap = f->ix.n + f->nsegs + 5;
	o->paths = calloc(cap, sizeof(char *));
	if (o->paths) {
		char name[16];
		o->paths[o->n++] = folder_path(f, STORE_LOG);
		o->paths[o->n++] = folder_path(f, STORE_CHECKPOINT);
		o->paths[o->n++] = folder_path(f, STORE_CHECKPOINT_TMP);
		o->paths[o->n++] = folder_path(f, STORE_LOG_NEW);
		/* the active segment: open, or its number while closed */
		bool have_act = f->seg || f->fstate != FF_OPEN;
		uint32_t act = f->seg ? f->seg->seg : f->seg_closed;
		if (have_act) {
			store_seg_name(act, name);
			o->paths[o->n++] = folder_path(f, name);
		}
		uint32_t *segs = malloc((f->ix.n + 1) * sizeof(*segs));
		for (size_t i = 0; segs && i < f->ix.n; i++)
			segs[i] = f->ix.msgs[i].seg;
		if (segs)
			qsort(segs, f->ix.n, sizeof(*segs), u32_cmp);
		for (size_t i = 0; segs && i < f->ix.n; i++) {
			if ((i && segs[i] == segs[i - 1]) || (have_act && segs[i] == act))
				continue;
			store_seg_name(segs[i], name);
			o->paths[o->n++] = folder_path(f, name);
		}
		free(segs);
	}
	pthread_mutex_unlock(&f->mu);
	o->dir = strdup(f->dir);
	for (size_t i = 0; o->paths && i < o->n; i++)
		if (!o->paths[i])
			o->n = 0; /* out of memory: leave it all to fsck */
	if (!o->paths || !o->dir || o->n == 0) {
		for (size_t i = 0; o->paths && i < o->n; i++)
			free(o->paths[i]);
		free(o->paths);
		free(o->dir);
		free(o);
		return;
	}
	o->cb.fn = rmdir_step;
	/* a shutdown waits for the last unlink (the session that deleted the
	 * folder may be gone already) */
	loop_hold(loop);
	rmdir_step(loop, &o->cb, 0, 0);
}

static void uop_complete(struct loop *loop, struct pend *p, int res)
{
	if (!res)
		res = p->apply_res;
	if (!res && p->gone)
		folder_remove_files(loop, p->gone);
	if (p->arg) /* a created folder the list did not adopt */
		sfolder_free(loop, p->arg);
	p->dcb(p->darg, res);
}

/* Logs one folder-list record; cb(arg, res) once durable and applied. */
static void user_log(struct suser *u, struct loop *loop, uint32_t type,
		     const struct rec_mbox *m, struct sfolder *created,
		     store_done_cb *cb, void *arg)
{
	struct sctx *ctx = store_ctx(u->store, loop);
	struct pend *p = ctx ? pend_new(ctx, u, RECORD_HDR_LEN + 16 + m->name.len) : NULL;
	int err;

	if (!p) {
		if (created)
			sfolder_free(loop, created);
		done_later(loop, cb, arg, -ENOMEM);
		return;
	}
	p->len = record_put_mbox(p->rec, p->cap, type, m);
	p->complete = uop_complete;
	p->dcb = cb;
	p->darg = arg;
	p->arg = created;
	pthread_mutex_lock(&u->mu);
	err = p->len ? slog_reserve(&u->log, p) : -EINVAL;
	pthread_mutex_unlock(&u->mu);
	if (err) { /* a user's folder list is never rewritten: never 1 */
		p->res = err;
		xcall(loop, loop, pend_complete_run, p);
		return;
	}
	pend_submit(p);
}

struct fcreate {
	struct suser *u;
	struct loop *loop;
	struct rec_mbox m;
	char *name;
	struct sfolder *f;         /* loaded, once the list may adopt it */
	store_done_cb *cb;
	void *arg;
};

/* The create is durable (or failed): it no longer counts as in flight. */
static void fcreate_done(void *arg, int res)
{
	struct fcreate *c = arg;
	struct suser *u = c->u;
	store_done_cb *cb = c->cb;
	void *cb_arg = c->arg;

	pthread_mutex_lock(&u->mu);
	u->creating--;
	pthread_mutex_unlock(&u->mu);
	/* adopted by the list (res 0): nobody opened it yet, so its files
	 * close until someone does */
	if (res == 0 && c->f)
		folder_maybe_close(c->loop, c->f);
	free(c->name);
	free(c);
	cb(cb_arg, res);
}

static void fcreate_loaded(struct loop *loop, struct fload *fl, int res)
{
	struct fcreate *c = fl->arg;

	if (res < 0) {
		/* No record names it: a directory this attempt made is removed
		 * (best effort), so that failing creates (the auto folders are
		 * tried again at every load) do not pile up orphans for fsck. */
		if (fl->created)
			folder_remove_files(loop, fl->f);
		sfolder_free(loop, fl->f);
		done_later(loop, fcreate_done, c, res);
	} else {
		/* m.name points into c->name: the record is built before this
		 * returns, and c lives until fcreate_done() */
		c->f = fl->f;
		user_log(c->u, loop, REC_MBOX_CREATE, &c->m, fl->f, fcreate_done, c);
	}
}

static bool is_auto(const struct store *st, const char *name)
{
	for (size_t i = 0; i < st->nautos; i++)
		if (strcmp(st->autos[i], name) == 0)
			return true;
	return false;
}

/* How many of the auto folders u has (they do not count toward
 * folders_max: the server made them); u->mu held. */
static size_t autos_present(struct suser *u)
{
	size_t n = 0;

	for (size_t i = 0; i < u->store->nautos; i++)
		n += user_find_name(u, span_cstr(u->store->autos[i])) != NULL;
	return n;
}

/* store_folder_create() for u, also while u is being loaded (no handle). */
static void folder_create(struct suser *u, struct loop *loop, const char *name,
			  store_done_cb *cb, void *arg)
{
	struct fcreate *c;
	struct sfolder *f;
	struct sctx *ctx;
	int err = name_check(name);

	if (err)
		goto fail;
	if (name_is_inbox(span_cstr(name))) {
		err = -EEXIST;
		goto fail;
	}
	err = -ENOMEM;
	c = calloc(1, sizeof(*c));
	ctx = store_ctx(u->store, loop);
	if (!c || !ctx || !(c->name = strdup(name))) {
		free(c);
		goto fail;
	}
	c->u = u;
	c->loop = loop;
	c->cb = cb;
	c->arg = arg;
	pthread_mutex_lock(&u->mu);
	if (user_find_name(u, span_cstr(name))) {
		pthread_mutex_unlock(&u->mu);
		free(c->name);
		free(c);
		err = -EEXIST;
		goto fail;
	}
	if (u->store->cfg.folders_max && special_of(name) == STORE_SPECIAL_NONE &&
	    !is_auto(u->store, name) &&
	    u->nfolders - autos_present(u) + u->creating >= u->store->cfg.folders_max) {
		pthread_mutex_unlock(&u->mu);
		free(c->name);
		free(c);
		err = -EMLINK;
		goto fail;
	}
	u->creating++;
	/* UIDVALIDITY: the clock, but strictly above any this user had, so a
	 * folder deleted and created again never repeats one. */
	c->m.id = u->next_id++;
	c->m.uidvalidity = (uint32_t)time(NULL);
	if (c->m.uidvalidity <= u->last_uidvalidity)
		c->m.uidvalidity = u->last_uidvalidity + 1;
	u->last_uidvalidity = c->m.uidvalidity;
	c->m.name = span_cstr(c->name);
	pthread_mutex_unlock(&u->mu);
	f = sfolder_new(u, c->m.id);
	if (!f || (err = fload_start(ctx, f, c->m.uidvalidity, fcreate_loaded, c))) {
		sfolder_free(loop, f);
		pthread_mutex_lock(&u->mu);
		u->creating--;
		pthread_mutex_unlock(&u->mu);
		free(c->name);
		free(c);
		err = -ENOMEM;
		goto fail;
	}
	return;
fail:
	done_later(loop, cb, arg, err);
}

void store_folder_create(struct store_user *uh, struct loop *loop, const char *name,
			 store_done_cb *cb, void *arg)
{
	folder_create(uh->u, loop, name, cb, arg);
}

static void auto_after(struct suser *u, struct loop *loop, uint32_t type,
		       const struct rec_mbox *m, store_done_cb *cb, void *arg);

void store_folder_delete(struct store_user *uh, struct loop *loop, const char *name,
			 store_done_cb *cb, void *arg)
{
	struct suser *u = uh->u;
	struct rec_mbox m = { 0 };
	struct ufolder *v;
	int err = name_check(name);

	if (!err && name_is_inbox(span_cstr(name)))
		err = -EINVAL;
	if (!err) {
		pthread_mutex_lock(&u->mu);
		v = user_find_name(u, span_cstr(name));
		if (v)
			m.id = v->id;
		pthread_mutex_unlock(&u->mu);
		if (!v)
			err = -ENOENT;
	}
	if (err) {
		done_later(loop, cb, arg, err);
		return;
	}
	if (is_auto(u->store, name))
		auto_after(u, loop, REC_MBOX_DELETE, &m, cb, arg);
	else
		user_log(u, loop, REC_MBOX_DELETE, &m, NULL, cb, arg);
}

void store_folder_rename(struct store_user *uh, struct loop *loop, const char *from,
			 const char *to, store_done_cb *cb, void *arg)
{
	struct suser *u = uh->u;
	struct rec_mbox m = { .name = span_cstr(to ? to : "") };
	struct ufolder *v = NULL;
	int err = name_check(from);

	if (!err)
		err = name_check(to);
	/* renaming INBOX moves its messages in IMAP: not supported (yet) */
	if (!err && (name_is_inbox(span_cstr(from)) || name_is_inbox(span_cstr(to))))
		err = name_is_inbox(span_cstr(to)) ? -EEXIST : -EOPNOTSUPP;
	if (!err) {
		pthread_mutex_lock(&u->mu);
		v = user_find_name(u, span_cstr(from));
		if (v)
			m.id = v->id;
		if (user_find_name(u, span_cstr(to)))
			err = -EEXIST;
		pthread_mutex_unlock(&u->mu);
		if (!v)
			err = -ENOENT;
	}
	if (err) {
		done_later(loop, cb, arg, err);
		return;
	}
	if (is_auto(u->store, from))
		auto_after(u, loop, REC_MBOX_RENAME, &m, cb, arg);
	else
		user_log(u, loop, REC_MBOX_RENAME, &m, NULL, cb, arg);
}

void store_folder_subscribe(struct store_user *uh, struct loop *loop, const char *name,
			    bool on, store_done_cb *cb, void *arg)
{
	struct rec_mbox m = { .on = on, .name = span_cstr(name ? name : "") };
	int err = name_check(name);

	/* an auto folder stays subscribed (Dovecot's auto = subscribe) */
	if (err || (!on && is_auto(uh->u->store, name))) {
		done_later(loop, cb, arg, err);
		return;
	}
	user_log(uh->u, loop, REC_MBOX_SUBSCRIBE, &m, NULL, cb, arg);
}

/* ---- auto folders (store_config.auto_folders) ------------------------------ */

/* Makes the auto folders u lacks and subscribes the ones it is not
 * subscribed to: every create and subscribe at once (their folder-list
 * records share the fsyncs of one tick), done(loop, arg, res) when all are
 * durable (res: the first error, -EEXIST from a race not counting). */
struct autojob {
	struct suser *u;           /* a reference */
	struct loop *loop;
	size_t pending;
	unsigned created, subscribed;
	int err;
	void (*done)(struct loop *loop, void *arg, int res);
	void *arg;
};

static void autojob_step(void *arg, int res)
{
	struct autojob *j = arg;

	if (res < 0 && res != -EEXIST && !j->err)
		j->err = res;
	if (--j->pending)
		return;
	if (j->err)
		LOG_AT(loop_log(j->loop), LOG_ERROR, 0, "store-auto-folders", "dir=%s error=%s",
		       j->u->dir, strerror(-j->err));
	else if (j->created || j->subscribed)
		LOG_AT(loop_log(j->loop), LOG_INFO, 0, "store-auto-folders",
		       "dir=%s created=%u subscribed=%u", j->u->dir, j->created, j->subscribed);
	j->done(j->loop, j->arg, j->err);
	suser_unref(j->loop, &j->u);
	free(j);
}

static void auto_ensure(struct suser *u, struct loop *loop,
			void (*done)(struct loop *loop, void *arg, int res), void *arg)
{
	struct store *st = u->store;
	struct autojob *j;
	uint8_t *need;             /* per name: 1 create, 2 subscribe */
	size_t n = 0;

	if (st->nautos == 0) {
		done(loop, arg, 0);
		return;
	}
	need = calloc(st->nautos, 1);
	if (!need) {
		done(loop, arg, -ENOMEM);
		return;
	}
	pthread_mutex_lock(&u->mu);
	for (size_t i = 0; i < st->nautos; i++) {
		struct span name = span_cstr(st->autos[i]);
		need[i] = (user_find_name(u, name) ? 0 : 1) | (user_find_sub(u, name) >= 0 ? 0 : 2);
		n += (need[i] & 1) + (need[i] >> 1);
	}
	pthread_mutex_unlock(&u->mu);
	/* the common case once they exist: no I/O, no allocation kept */
	if (n == 0 || !(j = calloc(1, sizeof(*j)))) {
		free(need);
		done(loop, arg, n ? -ENOMEM : 0);
		return;
	}
	j->u = suser_ref(u);
	j->loop = loop;
	j->done = done;
	j->arg = arg;
	j->pending = n + 1; /* + 1 until every request is started */
	for (size_t i = 0; i < st->nautos; i++) {
		if (need[i] & 2) {
			struct rec_mbox m = { .on = true, .name = span_cstr(st->autos[i]) };
			j->subscribed++;
			user_log(u, loop, REC_MBOX_SUBSCRIBE, &m, NULL, autojob_step, j);
		}
		if (need[i] & 1) {
			j->created++;
			folder_create(u, loop, st->autos[i], autojob_step, j);
		}
	}
	free(need);
	autojob_step(j, 0);
}

/* A delete or rename away of an auto folder: once it is durable, the
 * folder is made again (empty, a new UIDVALIDITY) before cb, as Dovecot
 * shows an auto = subscribe mailbox whatever happened to it. */
struct autochange {
	struct suser *u;           /* a reference */
	struct loop *loop;
	store_done_cb *cb;
	void *arg;
	int res;
};

static void autochange_remade(struct loop *loop, void *arg, int res)
{
	struct autochange *c = arg;

	(void)res; /* logged; the change itself is done */
	c->cb(c->arg, c->res);
	suser_unref(loop, &c->u);
	free(c);
}

static void autochange_logged(void *arg, int res)
{
	struct autochange *c = arg;

	c->res = res;
	if (res < 0)
		autochange_remade(c->loop, c, 0);
	else
		auto_ensure(c->u, c->loop, autochange_remade, c);
}

static void auto_after(struct suser *u, struct loop *loop, uint32_t type,
		       const struct rec_mbox *m, store_done_cb *cb, void *arg)
{
	struct autochange *c = calloc(1, sizeof(*c));

	if (!c) {
		done_later(loop, cb, arg, -ENOMEM);
		return;
	}
	c->u = suser_ref(u);
	c->loop = loop;
	c->cb = cb;
	c->arg = arg;
	user_log(u, loop, type, m, NULL, autochange_logged, c);
}

static int info_cmp(const void *a, const void *b)
{
	const struct store_folder_info *x = a, *y = b;
	return strcmp(x->name, y->name);
}

int store_folder_list(struct store_user *uh, struct store_folder_info **list_r, size_t *n_r)
{
	struct suser *u = uh->u;
	struct store_folder_info *v;
	size_t n = 0, max, names = 6;
	char *s;

	pthread_mutex_lock(&u->mu);
	max = 1 + u->nfolders + u->nsubs;
	for (size_t i = 0; i < u->nfolders; i++)
		names += strlen(u->folders[i].name) + 1;
	for (size_t i = 0; i < u->nsubs; i++)
		names += strlen(u->subs[i]) + 1;
	v = malloc(max * sizeof(*v) + names);
	if (!v) {
		pthread_mutex_unlock(&u->mu);
		return -ENOMEM;
	}
	s = (char *)(v + max);
	strcpy(s, "INBOX");
	v[n++] = (struct store_folder_info){ s, STORE_SPECIAL_NONE,
					     user_find_sub(u, SPAN_LIT("INBOX")) >= 0, true };
	s += 6;
	for (size_t i = 0; i < u->nfolders; i++) {
		strcpy(s, u->folders[i].name);
		v[n++] = (struct store_folder_info){
			s, special_of(s), user_find_sub(u, span_cstr(s)) >= 0, true };
		s += strlen(s) + 1;
	}
	for (size_t i = 0; i < u->nsubs; i++) {
		if (name_is_inbox(span_cstr(u->subs[i])) || user_find_name(u, span_cstr(u->subs[i])))
			continue;
		strcpy(s, u->subs[i]);
		v[n++] = (struct store_folder_info){ s, special_of(s), true, false };
		s += strlen(s) + 1;
	}
	pthread_mutex_unlock(&u->mu);
	qsort(v + 1, n - 1, sizeof(*v), info_cmp);
	*list_r = v;
	*n_r = n;
	return 0;
}

/* ---- keywords ------------------------------------------------------------ */

/* Resolves keyword names to bits of f's table, adding the missing ones
 * with KEYWORD records written into p ahead of the record that uses them.
 * f->mu held. Returns 0, -ENOSPC (table full), -EINVAL or -ENOMEM. */
static int kw_resolve(struct sfolder *f, struct pend *p, const char *const *kw, size_t n,
		      uint64_t *mask_r)
{
	uint64_t mask = 0;

	for (size_t k = 0; k < n; k++) {
		struct span name = span_cstr(kw[k]);
		int i, free_i = -1;
		uint8_t *out;
		if (name.len == 0 || name.len > RECORD_NAME_MAX)
			return -EINVAL;
		for (i = 0; i < 64; i++) {
			if (f->kw_res[i] && span_eq_nocase(span_cstr(f->kw_res[i]), name))
				break;
			if (!f->kw_res[i] && free_i < 0)
				free_i = i;
		}
		if (i == 64) {
			if (free_i < 0)
				return -ENOSPC;
			i = free_i;
			if (!(out = pend_room(p, RECORD_HDR_LEN + 8 + name.len)))
				return -ENOMEM;
			if (!(f->kw_res[i] = strdup(kw[k])))
				return -ENOMEM;
			p->len += record_put_keyword(out, RECORD_HDR_LEN + 8 + name.len, (uint32_t)i, name);
		}
		mask |= 1ull << i;
	}
	*mask_r = mask;
	return 0;
}

/* ---- flags and expunge ------------------------------------------------------ */

struct unl {
	struct loop_cb cb;
	char *path;
};

static void unl_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct unl *x = container_of(cb, struct unl, cb);

	(void)flags;
	if (res < 0 && res != -ENOENT)
		LOG_AT(loop_log(loop), LOG_WARN, 0, "store-unlink", "path=%s error=%s", x->path, strerror(-res));
	free(x->path);
	free(x);
}

static void unlink_later(struct loop *loop, char *path)
{
	struct unl *x = malloc(sizeof(*x));

	if (!x || !path) {
		free(x);
		free(path); /* an orphan file for fsck to remove */
		return;
	}
	x->cb.fn = unl_done;
	x->path = path;
	io_uring_prep_unlinkat(loop_sqe(loop, &x->cb), AT_FDCWD, path, 0);
}

/* Drops seg from f's open-for-reading set (readers in flight keep theirs). */
static void seg_forget(struct loop *loop, struct sfolder *f, uint32_t seg)
{
	struct sfile *gone = NULL;

	pthread_mutex_lock(&f->mu);
	for (size_t i = 0; i < f->nsegs; i++)
		if (f->segs[i]->seg == seg) {
			gone = f->segs[i];
			f->segs[i] = f->segs[--f->nsegs];
			break;
		}
	pthread_mutex_unlock(&f->mu);
	sfile_unref(loop, &gone);
}

static void mod_complete(struct loop *loop, struct pend *p, int res)
{
	/* p->log is set only once the change was reserved: a change refused
	 * before (the folder deleted by another session, a broken log, no
	 * memory) completes with res < 0 and no log. */
	for (size_t i = 0; res == 0 && i < p->nunlink; i++) {
		struct sfolder *f = p->log->owner;
		char name[16];
		seg_forget(loop, f, p->unlink[i]);
		store_seg_name(p->unlink[i], name);
		unlink_later(loop, folder_path(f, name));
	}
	p->mdone(p->darg, res, p->modseq);
}

/* Builds and logs flag (expunge when expunge) records for uids. */
static void folder_mod(struct store_folder *h, struct loop *loop, const uint32_t *uids,
		       size_t n, bool expunge, uint32_t op, uint32_t flags,
		       const char *const *kw, size_t nkw, store_modseq_cb *cb, void *arg)
{
	struct sfolder *f = h->f;
	struct sctx *ctx = store_ctx(f->user->store, loop);
	size_t nrec = (n + RECORD_MAX_UIDS - 1) / RECORD_MAX_UIDS;
	struct pend *p = ctx ? pend_new(ctx, f->user, nrec * record_size_uids(0) + 4 * n + 64) : NULL;
	uint64_t mask = 0;
	int err = 0;

	if (!p) {
		reply_later(loop, (struct reply){ .modseq = cb, .arg = arg, .res = -ENOMEM });
		return;
	}
	p->complete = mod_complete;
	p->mdone = cb;
	p->darg = arg;
	pthread_mutex_lock(&f->mu);
	p->busy_f = f;
	folder_busy(f);
	if (f->deleted)
		err = -ENOENT;
	else if (!expunge)
		err = kw_resolve(f, p, kw, nkw, &mask);
	if (!err) {
		p->modseq = next_modseq(f);
		for (size_t i = 0; i < n || (i == 0 && n == 0); i += RECORD_MAX_UIDS) {
			uint32_t k = (uint32_t)(n - i < RECORD_MAX_UIDS ? n - i : RECORD_MAX_UIDS);
			size_t sz = record_size_uids(k);
			uint8_t *out = pend_room(p, sz);
			if (!out) {
				err = -ENOMEM;
				break;
			}
			p->len += expunge ? record_put_expunge(out, sz, p->modseq, uids + i, k)
					  : record_put_flags(out, sz, p->modseq, op, flags, mask,
							     uids + i, k);
		}
	}
	if (!err)
		err = slog_reserve(&f->log, p);
	pthread_mutex_unlock(&f->mu);
	if (err < 0) {
		p->res = err;
		xcall(loop, loop, pend_complete_run, p);
		return;
	}
	if (err == 0)
		pend_submit(p);
}

void store_flags(struct store_folder *h, struct loop *loop, const uint32_t *uids, size_t n,
		 enum store_flags_op op, uint32_t flags, const char *const *keywords,
		 size_t nkeywords, store_modseq_cb *cb, void *arg)
{
	if ((unsigned)op > STORE_FLAGS_REMOVE || (flags & ~STORE_F_ALL)) {
		reply_later(loop, (struct reply){ .modseq = cb, .arg = arg, .res = -EINVAL });
		return;
	}
	folder_mod(h, loop, uids, n, false, (uint32_t)op, flags, keywords, nkeywords, cb, arg);
}

void store_expunge(struct store_folder *h, struct loop *loop, const uint32_t *uids, size_t n,
		   store_modseq_cb *cb, void *arg)
{
	folder_mod(h, loop, uids, n, true, 0, 0, NULL, 0, cb, arg);
}

/* ---- reading ------------------------------------------------------------- */

struct rdreq {
	struct loop_cb cb;
	struct sfolder *f;
	struct suser *u;
	struct sfile *file;
	struct hpin *pin;       /* a reference while the file is being opened */
	uint32_t uid;
	uint32_t seg;
	uint64_t pos;
	void *buf;
	int pipe_fd;            /* store_splice(): the pipe's write end; else -1 */
	size_t len;
	char *path;
	store_read_cb *fn;
	void *arg;
	ssize_t res;
};

static void rdreq_end(struct loop *loop, struct rdreq *r, ssize_t res)
{
	hpin_unref(loop, r->f, &r->pin);
	sfile_unref(loop, &r->file);
	folder_unbusy(loop, r->f);
	suser_unref(loop, &r->u);
	free(r->path);
	r->fn(r->arg, res);
	free(r);
}

static void rdreq_end_later(struct loop *loop, void *arg)
{
	struct rdreq *r = arg;

	rdreq_end(loop, r, r->res);
}

static void rdreq_read_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct rdreq *r = container_of(cb, struct rdreq, cb);

	(void)flags;
	/* 0 before the message's end means the segment is shorter than the
	 * index says: damage, not the end of the message */
	rdreq_end(loop, r, res == 0 ? -EIO : res);
}

static void rdreq_read(struct loop *loop, struct rdreq *r)
{
	r->cb.fn = rdreq_read_done;
	if (r->pipe_fd >= 0)
		io_uring_prep_splice(loop_sqe(loop, &r->cb), r->file->fd, (int64_t)r->pos, r->pipe_fd,
				     -1, (unsigned)r->len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	else
		io_uring_prep_read(loop_sqe(loop, &r->cb), r->file->fd, r->buf, (unsigned)r->len,
				   r->pos);
}

static void rdreq_opened(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct rdreq *r = container_of(cb, struct rdreq, cb);
	struct sfolder *f = r->f;
	struct sfile *nf, *evicted = NULL;

	(void)flags;
	if (res < 0) {
		rdreq_end(loop, r, res);
		return;
	}
	if (!(nf = sfile_new(res, r->seg, false))) {
		close(res);
		rdreq_end(loop, r, -ENOMEM);
		return;
	}
	pthread_mutex_lock(&f->mu);
	for (size_t i = 0; i < f->nsegs; i++)
		if (f->segs[i]->seg == r->seg) {
			r->file = sfile_ref(f->segs[i]); /* another reader won */
			break;
		}
	if (!r->file) {
		struct sfile **v = realloc(f->segs, (f->nsegs + 1) * sizeof(*v));
		if (v) {
			f->segs = v;
			if (f->nsegs >= SEG_CACHE_MAX) {
				/* bounded: the oldest goes (readers keep their ref) */
				evicted = f->segs[0];
				memmove(f->segs, f->segs + 1, (f->nsegs - 1) * sizeof(*v));
				f->nsegs--;
			}
			f->segs[f->nsegs++] = sfile_ref(nf);
		}
		r->file = sfile_ref(nf);
	}
	if (r->pin && r->pin->uid == r->uid && r->pin->seg == r->seg && !r->pin->file)
		r->pin->file = sfile_ref(r->file);
	pthread_mutex_unlock(&f->mu);
	sfile_unref(loop, &evicted);
	sfile_unref(loop, &nf);
	rdreq_read(loop, r);
}

static void read_or_splice(struct store_folder *h, struct loop *loop, uint32_t uid, uint64_t off,
			   void *buf, int pipe_fd, size_t len, store_read_cb *cb, void *arg)
{
	struct sfolder *f = h->f;
	struct rdreq *r = calloc(1, sizeof(*r));
	struct index_msg *m;
	ssize_t res = 0;

	if (!r) {
		cb(arg, -ENOMEM);
		return;
	}
	r->f = f;
	r->u = suser_ref(f->user);
	r->buf = buf;
	r->pipe_fd = pipe_fd;
	r->fn = cb;
	r->arg = arg;
	pthread_mutex_lock(&f->mu);
	folder_busy(f); /* until rdreq_end() */
	m = index_find(&f->ix, uid);
	struct hpin *p = h->pin;
	struct sfile *drop = NULL;
	if (!p && (p = calloc(1, sizeof(*p)))) {
		p->refs = 1;
		h->pin = p;
	}
	if (m && p && (p->uid != uid || p->seg != m->seg || p->pos != m->off)) {
		/* another message, or this one moved (compaction) */
		drop = p->file;
		*p = (struct hpin){ .refs = p->refs, .uid = uid, .seg = m->seg, .pos = m->off,
				    .size = m->size };
	}
	bool pinned = !m && p && p->uid == uid && p->file; /* expunged since its read began */
	uint64_t size = m ? m->size : pinned ? p->size : 0;
	if ((!m && !pinned) || len > STORE_READ_MAX) {
		res = m || pinned ? -EINVAL : -ENOENT;
	} else if (off < size && len) {
		r->len = size - off < len ? size - off : len;
		r->pos = (m ? m->off : p->pos) + off;
		r->seg = m ? m->seg : p->seg;
		if (pinned)
			r->file = sfile_ref(p->file);
		if (!r->file && f->seg && f->seg->seg == r->seg)
			r->file = sfile_ref(f->seg);
		for (size_t i = 0; !r->file && i < f->nsegs; i++)
			if (f->segs[i]->seg == r->seg)
				r->file = sfile_ref(f->segs[i]);
		if (p && p->uid == uid && !p->file && r->file)
			p->file = sfile_ref(r->file);
		if (p && p->uid == uid && !r->file) {
			r->pin = p; /* rdreq_opened() fills its file in */
			p->refs++;
			r->uid = uid;
		}
	}
	struct sfile *drop2 = NULL;
	if (p && p->uid == uid && (res < 0 || off + r->len >= size)) {
		/* read to its end (or gone): nothing more to keep for it; this
		 * read holds its own reference */
		drop2 = p->file;
		p->file = NULL;
		p->uid = 0;
	}
	pthread_mutex_unlock(&f->mu);
	sfile_unref(loop, &drop);
	sfile_unref(loop, &drop2);
	if (res < 0 || r->len == 0) {
		/* an error or the end (res 0): reply after this call returns,
		 * like every other completion */
		r->res = res;
		xcall(loop, loop, rdreq_end_later, r);
		return;
	}
	if (r->file) {
		rdreq_read(loop, r);
		return;
	}
	{
		char name[16];
		store_seg_name(r->seg, name);
		r->path = folder_path(f, name);
		if (!r->path) {
			rdreq_end(loop, r, -ENOMEM);
			return;
		}
		r->cb.fn = rdreq_opened;
		io_uring_prep_openat(loop_sqe(loop, &r->cb), AT_FDCWD, r->path, O_RDONLY | O_CLOEXEC, 0);
	}
}

void store_read(struct store_folder *h, struct loop *loop, uint32_t uid, uint64_t off,
		void *buf, size_t len, store_read_cb *cb, void *arg)
{
	read_or_splice(h, loop, uid, off, buf, -1, len, cb, arg);
}

void store_splice(struct store_folder *h, struct loop *loop, uint32_t uid, uint64_t off,
		  size_t len, int pipe_wr_fd, store_read_cb *cb, void *arg)
{
	if (pipe_wr_fd < 0) {
		cb(arg, -EBADF);
		return;
	}
	read_or_splice(h, loop, uid, off, NULL, pipe_wr_fd, len, cb, arg);
}

/* ---- appends ---------------------------------------------------------------- */

struct atarget {
	struct store_append *a;
	struct sfolder *f;
	struct suser *u;        /* reference */
	uint32_t seg;
	uint64_t off;
	struct sfile *segf;
	struct swrite w;
	struct swait sw, swd;
	struct loop_cb lcb;
	char *lpath, *lsrc;
	int waits, err, tries;
	uint32_t uid;
	bool quota;
};

struct store_append {
	struct loop *loop;
	struct sctx *ctx;
	struct store *st;
	int64_t date;
	uint32_t flags;
	char **kw;
	size_t nkw;
	store_ready_cb *on_ready;
	void *rarg;
	uint8_t *buf, *spare;   /* buf: small message / in-flight write */
	size_t buflen, sparelen, cap;
	uint32_t crc;
	uint64_t total;
	bool big, opening, writing, want_ready, committed, aborted, in_write;
	int seg_tries;
	struct sfile *bigf;
	uint32_t bigseg;
	uint64_t bigoff;
	char *bigpath;
	struct loop_cb ocb;
	struct swrite bw;
	int err;
	uint8_t *blob;
	size_t bloblen;
	store_uid_cb *done;
	void *darg;
	size_t n, left;
	struct atarget t[];
};

static void append_free(struct loop *loop, struct store_append *a)
{
	for (size_t i = 0; i < a->n; i++) {
		struct atarget *t = &a->t[i];
		if (t->quota) {
			atomic_fetch_sub(&t->u->r_bytes, a->total);
			atomic_fetch_sub(&t->u->r_msgs, 1);
		}
		sfile_unref(loop, &t->segf);
		free(t->lpath);
		free(t->lsrc);
		if (t->f)
			folder_unbusy(loop, t->f);
		suser_unref(loop, &t->u);
	}
	sfile_unref(loop, &a->bigf);
	if (a->aborted && a->bigpath) {
		unlink_later(loop, a->bigpath);
		a->bigpath = NULL;
	}
	for (size_t i = 0; i < a->nkw; i++)
		free(a->kw[i]);
	free(a->kw);
	free(a->bigpath);
	free(a->buf);
	free(a->spare);
	free(a->blob);
	free(a);
}

int store_append_begin(struct loop *loop, struct store_folder *const *dst, size_t n,
		       int64_t internal_date, uint32_t flags, const char *const *keywords,
		       size_t nkeywords, store_ready_cb *on_ready, void *arg,
		       struct store_append **append_r)
{
	struct store_append *a;
	struct store *st;

	if (n == 0 || (flags & ~STORE_F_ALL) || nkeywords > STORE_KEYWORDS_MAX)
		return -EINVAL;
	st = dst[0]->u->store;
	a = calloc(1, sizeof(*a) + n * sizeof(a->t[0]));
	if (!a)
		return -ENOMEM;
	a->loop = loop;
	a->st = st;
	a->ctx = store_ctx(st, loop);
	a->cap = st->cfg.append_buf ? st->cfg.append_buf : STORE_APPEND_BUF_DEFAULT;
	a->buf = malloc(a->cap);
	a->kw = calloc(nkeywords + 1, sizeof(char *));
	if (!a->ctx || !a->buf || !a->kw)
		goto err;
	for (size_t i = 0; i < nkeywords; i++) {
		if (!(a->kw[i] = strdup(keywords[i])))
			goto err;
		a->nkw++;
	}
	a->date = internal_date;
	a->flags = flags;
	a->on_ready = on_ready;
	a->rarg = arg;
	a->n = n;
	for (size_t i = 0; i < n; i++) {
		a->t[i].a = a;
		a->t[i].f = dst[i]->f;
		a->t[i].u = suser_ref(dst[i]->u);
		folder_busy(a->t[i].f); /* until append_free() */
	}
	*append_r = a;
	return 0;
err:
	append_free(loop, a);
	return -ENOMEM;
}

static void big_kick(struct loop *loop, struct store_append *a);
static void append_commit_big(struct loop *loop, struct store_append *a);
static int big_open(struct loop *loop, struct store_append *a);

static void big_written(struct loop *loop, struct swrite *w, int res)
{
	struct store_append *a = container_of(w, struct store_append, bw);

	a->writing = false;
	if (res < 0 && !a->err)
		a->err = res;
	if (res == 0)
		a->bigoff += a->buflen;
	a->buflen = 0;
	big_kick(loop, a);
}

static void big_opened(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct store_append *a = container_of(cb, struct store_append, ocb);

	(void)flags;
	a->opening = false;
	if (res == -EEXIST && ++a->seg_tries < SEG_TRIES && !a->aborted) {
		int err = big_open(loop, a);
		if (err == 0)
			return;
		res = err;
	}
	if (res >= 0 && !(a->bigf = sfile_new(res, a->bigseg, false))) {
		close(res);
		res = -ENOMEM;
	}
	if (res < 0 && !a->err)
		a->err = res;
	big_kick(loop, a);
}

/* Moves a one-message append forward: writes buf, swaps in spare, wakes a
 * writer waiting for room, and finishes a commit once all is written. */
static void big_kick(struct loop *loop, struct store_append *a)
{
	if (a->opening || a->writing)
		return;
	if (a->aborted) {
		append_free(loop, a);
		return;
	}
	if (!a->err && a->buflen == 0 && a->sparelen) {
		uint8_t *t = a->buf;
		a->buf = a->spare;
		a->buflen = a->sparelen;
		a->spare = t;
		a->sparelen = 0;
	}
	if (!a->err && a->buflen) {
		a->writing = true;
		swrite_start(loop, &a->bw, a->bigf, a->buf, a->buflen, a->bigoff, big_written);
		if (a->want_ready && !a->in_write && a->sparelen < a->cap) {
			a->want_ready = false;
			if (a->on_ready && !a->committed)
				a->on_ready(a->rarg);
		}
		return;
	}
	if (a->want_ready && !a->committed && !a->in_write) {
		/* an error: wake the writer so it sees it */
		a->want_ready = false;
		if (a->on_ready)
			a->on_ready(a->rarg);
		return;
	}
	if (a->committed)
		append_commit_big(loop, a);
}

/* Opens a new one-message file under a fresh number (O_EXCL). */
static int big_open(struct loop *loop, struct store_append *a)
{
	struct sfolder *f = a->t[0].f;
	char name[16];

	pthread_mutex_lock(&f->mu);
	a->bigseg = (f->seg_next++) | SEG_SINGLE;
	pthread_mutex_unlock(&f->mu);
	store_seg_name(a->bigseg, name);
	free(a->bigpath);
	if (!(a->bigpath = folder_path(f, name)))
		return -ENOMEM;
	a->opening = true;
	a->ocb.fn = big_opened;
	io_uring_prep_openat(loop_sqe(loop, &a->ocb), AT_FDCWD, a->bigpath,
			     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	return 0;
}

static int big_start(struct loop *loop, struct store_append *a)
{
	if (!(a->spare = malloc(a->cap)))
		return -ENOMEM;
	a->big = true;
	return big_open(loop, a);
}

/* Copies what fits of chunk into the spare buffer; returns the count. */
static size_t spare_take(struct store_append *a, struct span chunk)
{
	size_t room = a->cap - a->sparelen, more = chunk.len < room ? chunk.len : room;

	memcpy(a->spare + a->sparelen, chunk.p, more);
	a->sparelen += more;
	a->crc = crc32c(a->crc, chunk.p, more);
	a->total += more;
	return more;
}

ssize_t store_append_write(struct store_append *a, struct span chunk)
{
	size_t took = 0, n;

	if (a->err)
		return a->err;
	if (a->committed)
		return -EINVAL;
	if (!a->big) {
		n = a->cap - a->buflen;
		if (n > chunk.len)
			n = chunk.len;
		memcpy(a->buf + a->buflen, chunk.p, n);
		a->buflen += n;
		a->crc = crc32c(a->crc, chunk.p, n);
		a->total += n;
		if (n == chunk.len)
			return (ssize_t)n;
		/* larger than the buffer: it gets a segment file of its own */
		int err = big_start(a->loop, a);
		if (err) {
			a->err = err;
			return err;
		}
		took = n;
		chunk = span_skip(chunk, n);
	}
	n = spare_take(a, chunk);
	took += n;
	chunk = span_skip(chunk, n);
	a->in_write = true;
	big_kick(a->loop, a); /* may put the spare in flight, making room */
	a->in_write = false;
	if (a->err)
		return a->err;
	n = spare_take(a, chunk);
	took += n;
	if (n < chunk.len)
		a->want_ready = true;
	return (ssize_t)took;
}

static void append_finish(struct loop *loop, struct store_append *a)
{
	int res = a->err;

	for (size_t i = 0; !res && i < a->n; i++)
		res = a->t[i].err;
	a->done(a->darg, res, res ? 0 : a->t[0].uid);
	append_free(loop, a);
}

static void target_fail(struct loop *loop, struct atarget *t, int err)
{
	struct store_append *a = t->a;

	if (!t->err)
		t->err = err;
	if (--a->left == 0)
		append_finish(loop, a);
}

static void target_complete(struct loop *loop, struct pend *p, int res)
{
	struct atarget *t = p->arg;

	t->uid = p->uid;
	if (res) {
		target_fail(loop, t, res);
		return;
	}
	if (--t->a->left == 0)
		append_finish(loop, t->a);
}

/* The message's bytes are durable in t's folder: log its APPEND record. */
static void target_log(struct loop *loop, struct atarget *t)
{
	struct store_append *a = t->a;
	struct sfolder *f = t->f;
	struct pend *p = pend_new(a->ctx, t->u, record_size_append(a->bloblen) + 64);
	struct rec_append ra;
	uint8_t *out;
	int err = 0;

	if (!p) {
		target_fail(loop, t, -ENOMEM);
		return;
	}
	p->complete = target_complete;
	p->arg = t;
	ra = (struct rec_append){
		.seg = t->seg, .off = t->off, .len = a->total, .date = a->date,
		.flags = a->flags, .data_crc = a->crc, .blob = span_make(a->blob, a->bloblen),
	};
	pthread_mutex_lock(&f->mu);
	p->busy_f = f;
	folder_busy(f);
	if (f->deleted)
		err = -ENOENT;
	else if (f->log.broken)
		err = -EIO;
	else if (f->uid_res == UINT32_MAX)
		err = -EOVERFLOW;
	if (!err)
		err = kw_resolve(f, p, (const char *const *)a->kw, a->nkw, &ra.keywords);
	if (!err) {
		/* UIDs and MODSEQs are handed out in log order: replay sees
		 * them increase exactly as the live index did. */
		ra.uid = f->uid_res++;
		ra.modseq = next_modseq(f);
		out = pend_room(p, record_size_append(a->bloblen));
		if (!out)
			err = -ENOMEM;
		else
			p->len += record_put_append(out, record_size_append(a->bloblen), &ra);
	}
	if (!err)
		err = slog_reserve(&f->log, p);
	pthread_mutex_unlock(&f->mu);
	if (err < 0) {
		pend_free(loop, p);
		target_fail(loop, t, err);
		return;
	}
	if (err == 0)
		pend_submit(p);
}

static void target_synced(struct loop *loop, struct atarget *t, int res)
{
	if (res < 0 && !t->err)
		t->err = res;
	if (--t->waits)
		return;
	if (t->err) {
		/* a failed fsync of a segment: later syncs may report success
		 * for pages this one lost, so refuse the folder's changes */
		struct sfolder *f = t->f;
		pthread_mutex_lock(&f->mu);
		if (!f->log.broken) {
			f->log.broken = t->err;
			atomic_store(&f->user->poisoned, true);
			f->log.broken_off = f->log.end;
		}
		pthread_mutex_unlock(&f->mu);
		int err = t->err;
		t->err = 0;
		target_fail(loop, t, err);
		return;
	}
	target_log(loop, t);
}

static void target_data_synced(struct loop *loop, struct swait *w, int res)
{
	target_synced(loop, container_of(w, struct atarget, sw), res);
}

static void target_dir_synced(struct loop *loop, struct swait *w, int res)
{
	struct atarget *t = container_of(w, struct atarget, swd);

	if (res == 0 && t->segf)
		atomic_store(&t->segf->dirsync, false);
	target_synced(loop, t, res);
}

/* The data write finished: sync the segment (and its new directory entry). */
static void target_written(struct loop *loop, struct swrite *w, int res)
{
	struct atarget *t = container_of(w, struct atarget, w);

	if (res < 0) {
		target_fail(loop, t, res);
		return;
	}
	t->waits = 1;
	t->sw.fn = target_data_synced;
	if (atomic_load(&t->segf->dirsync)) {
		t->waits = 2;
		t->swd.fn = target_dir_synced;
		sync_request(t->a->ctx, t->f->dirf, &t->swd);
	}
	sync_request(t->a->ctx, t->segf, &t->sw);
}

struct segroll {
	struct loop_cb cb;
	struct sfolder *f;
	struct suser *u;
	uint32_t seg;
	int tries;
	char *path;
};

static void segroll_opened(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct segroll *r = container_of(cb, struct segroll, cb);
	struct sfolder *f = r->f;
	struct sfile *nf = res >= 0 ? sfile_new(res, r->seg, false) : NULL;

	(void)flags;
	if (res == -EEXIST && ++r->tries < SEG_TRIES) {
		char name[16];
		pthread_mutex_lock(&f->mu);
		r->seg = f->seg_next++;
		pthread_mutex_unlock(&f->mu);
		store_seg_name(r->seg, name);
		free(r->path);
		if ((r->path = folder_path(f, name))) {
			io_uring_prep_openat(loop_sqe(loop, &r->cb), AT_FDCWD, r->path,
					     O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			return;
		}
	}
	if (res >= 0 && !nf)
		close(res);
	pthread_mutex_lock(&f->mu);
	if (nf) {
		struct sfile **v = realloc(f->segs, (f->nsegs + 1) * sizeof(*v));
		atomic_store(&nf->dirsync, true);
		if (v) {
			/* the old one stays open for reading */
			f->segs = v;
			f->segs[f->nsegs++] = f->seg;
			f->seg = nf;
			f->seg_end = 0;
			nf = NULL;
		}
	}
	f->seg_rolling = false;
	pthread_mutex_unlock(&f->mu);
	sfile_unref(loop, &nf);
	folder_unbusy(loop, f);
	suser_unref(loop, &r->u);
	free(r->path);
	free(r);
}

static uint64_t seg_max(const struct sfolder *f)
{
	uint64_t m = f->user->store->cfg.segment_max;
	return m ? m : STORE_SEGMENT_MAX;
}

/* f->mu held: the active segment passed its size; open the next one. Until
 * it is open, appends go on growing the old one. */
static void seg_roll_locked(struct loop *loop, struct sfolder *f)
{
	struct segroll *r = calloc(1, sizeof(*r));
	char name[16];

	if (!r)
		return;
	r->seg = f->seg_next++;
	store_seg_name(r->seg, name);
	if (!(r->path = folder_path(f, name))) {
		free(r);
		return;
	}
	f->seg_rolling = true;
	folder_busy(f); /* until segroll_opened() */
	r->f = f;
	r->cb.fn = segroll_opened;
	/* a reference without the registry lock order problem: the caller
	 * holds one through its append, so the count cannot reach 0 */
	r->u = f->user;
	pthread_mutex_lock(&f->user->store->mu);
	f->user->refs++;
	pthread_mutex_unlock(&f->user->store->mu);
	io_uring_prep_openat(loop_sqe(loop, &r->cb), AT_FDCWD, r->path,
			     O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
}

/* A destination refused before anything was written (deleted folder,
 * broken log) fails from the loop, after store_append_commit() returned:
 * no callback runs inside the call that started the request, and the last
 * destination to complete frees the append. */
static void target_fail_later(struct loop *loop, void *arg)
{
	struct atarget *t = arg;

	target_fail(loop, t, t->err);
}

static void append_commit_small(struct loop *loop, struct store_append *a)
{
	for (size_t i = 0; i < a->n; i++) {
		struct atarget *t = &a->t[i];
		struct sfolder *f = t->f;
		int err = 0;

		pthread_mutex_lock(&f->mu);
		if (f->deleted)
			err = -ENOENT;
		else if (f->log.broken)
			err = -EIO;
		else {
			t->segf = sfile_ref(f->seg);
			t->seg = f->seg->seg;
			t->off = f->seg_end;
			f->seg_end += a->total;
			if (f->seg_end > seg_max(f) && !f->seg_rolling)
				seg_roll_locked(loop, f);
		}
		pthread_mutex_unlock(&f->mu);
		if (err) {
			t->err = err;
			xcall(loop, loop, target_fail_later, t);
			continue;
		}
		swrite_start(loop, &t->w, t->segf, a->buf, a->total, t->off, target_written);
	}
}

static void link_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct atarget *t = container_of(cb, struct atarget, lcb);

	(void)flags;
	if (res == -EEXIST && ++t->tries < SEG_TRIES) {
		char name[16];
		pthread_mutex_lock(&t->f->mu);
		t->seg = (t->f->seg_next++) | SEG_SINGLE;
		pthread_mutex_unlock(&t->f->mu);
		store_seg_name(t->seg, name);
		free(t->lpath);
		if ((t->lpath = folder_path(t->f, name))) {
			io_uring_prep_linkat(loop_sqe(loop, &t->lcb), AT_FDCWD, t->a->bigpath,
					     AT_FDCWD, t->lpath, 0);
			return;
		}
		res = -ENOMEM;
	}
	if (res < 0) {
		target_fail(loop, t, res);
		return;
	}
	/* the new name must be durable before the record that uses it */
	t->waits = 1;
	t->swd.fn = target_dir_synced;
	sync_request(t->a->ctx, t->f->dirf, &t->swd);
}

static void big_synced(struct loop *loop, struct swait *w, int res)
{
	struct atarget *t0 = container_of(w, struct atarget, sw);
	struct store_append *a = t0->a;

	if (res < 0 && !t0->err)
		t0->err = res;
	if (--t0->waits)
		return;
	if (t0->err) {
		/* nothing was logged: fail every destination */
		int err = t0->err;
		for (size_t i = 0; i < a->n; i++)
			a->t[i].err = err;
		a->left = 1;
		target_fail(loop, t0, err);
		return;
	}
	/* The file is durable under its first name; give it a name in
	 * every other destination (a hard link: one copy of the bytes). */
	for (size_t i = 1; i < a->n; i++) {
		struct atarget *t = &a->t[i];
		char name[16];
		pthread_mutex_lock(&t->f->mu);
		t->seg = (t->f->seg_next++) | SEG_SINGLE;
		pthread_mutex_unlock(&t->f->mu);
		store_seg_name(t->seg, name);
		t->off = 0;
		t->lpath = folder_path(t->f, name);
		if (!t->lpath) {
			target_fail(loop, t, -ENOMEM);
			continue;
		}
		t->lcb.fn = link_done;
		io_uring_prep_linkat(loop_sqe(loop, &t->lcb), AT_FDCWD, a->bigpath, AT_FDCWD,
				     t->lpath, 0);
	}
	t0->seg = a->bigseg;
	t0->off = 0;
	target_log(loop, t0);
}

static void big_synced_dir(struct loop *loop, struct swait *w, int res)
{
	struct atarget *t0 = container_of(w, struct atarget, swd);

	big_synced(loop, &t0->sw, res);
}

/* Everything is written to the one-message file: make it durable. */
static void append_commit_big(struct loop *loop, struct store_append *a)
{
	struct atarget *t0 = &a->t[0];

	if (a->err) {
		a->left = 1;
		target_fail(loop, t0, a->err);
		return;
	}
	t0->waits = 2;
	t0->sw.fn = big_synced;
	t0->swd.fn = big_synced_dir;
	sync_request(a->ctx, a->bigf, &t0->sw);
	sync_request(a->ctx, t0->f->dirf, &t0->swd);
}

struct commit_fail {
	struct store_append *a;
	int err;
};

static void commit_fail_run(struct loop *loop, void *arg)
{
	struct store_append *a = arg;

	a->left = 1;
	target_fail(loop, &a->t[0], a->err);
}

void store_append_commit(struct store_append *a, struct span blob, store_uid_cb *done, void *arg)
{
	struct loop *loop = a->loop;
	int err = a->err;

	a->committed = true;
	a->done = done;
	a->darg = arg;
	a->left = a->n;
	if (!err && blob.len > STORE_BLOB_MAX)
		err = -EFBIG;
	if (!err && !(a->blob = malloc(blob.len ? blob.len : 1)))
		err = -ENOMEM;
	if (!err) {
		memcpy(a->blob, blob.p, blob.len);
		a->bloblen = blob.len;
	}
	/* quota: reserve for every destination, or for none */
	for (size_t i = 0; !err && i < a->n; i++) {
		struct atarget *t = &a->t[i];
		uint64_t lb = user_limit(t->u, false), lm = user_limit(t->u, true);
		uint64_t rb = atomic_fetch_add(&t->u->r_bytes, a->total) + a->total;
		uint64_t rm = atomic_fetch_add(&t->u->r_msgs, 1) + 1;
		t->quota = true;
		if ((lb && atomic_load(&t->u->q_bytes) + rb > lb) ||
		    (lm && atomic_load(&t->u->q_msgs) + rm > lm))
			err = -EDQUOT;
	}
	if (err) {
		a->err = err;
		if (a->opening || a->writing) {
			/* finishes through big_kick → commit_big → the error */
			return;
		}
		xcall(loop, loop, commit_fail_run, a);
		return;
	}
	if (a->big)
		big_kick(loop, a); /* commits once the last write is done */
	else
		append_commit_small(loop, a);
}

uint32_t store_append_uid(const struct store_append *a, size_t i)
{
	return i < a->n ? a->t[i].uid : 0;
}

void store_append_abort(struct store_append **a_r)
{
	struct store_append *a = *a_r;

	*a_r = NULL;
	if (!a)
		return;
	a->aborted = true;
	if (a->opening || a->writing)
		return; /* freed by big_kick when the I/O in flight ends */
	append_free(a->loop, a);
}

/* ---- copy and move ------------------------------------------------------------ */

enum { COPY_CHUNK = 64 * 1024 };

struct copyop {
	struct store_folder *src, *dst;
	struct loop *loop;
	uint32_t *uids;
	size_t n, i;
	bool move;
	uint32_t *new_uids;
	store_done_cb *cb;
	void *arg;
	struct store_append *ap;
	uint8_t *buf;
	size_t buflen, bufoff;
	uint64_t off, size;
	struct iblob *blob;        /* owner of bspan */
	struct span bspan;
	struct suser *u;
	int err;
};

static void copy_next(struct loop *loop, struct copyop *c);

static void copy_end(struct loop *loop, struct copyop *c, int err)
{
	store_append_abort(&c->ap);
	iblob_unref(&c->blob);
	suser_unref(loop, &c->u);
	c->cb(c->arg, err);
	free(c->uids);
	free(c->buf);
	free(c);
}

static void copy_expunged(void *arg, int res, uint64_t modseq)
{
	struct copyop *c = arg;

	(void)modseq;
	/* the expunge of a move's originals is refused (-ENOENT) only when
	 * the source was deleted since copy_next's last check: the same
	 * outcome as that check */
	copy_end(c->loop, c, res == -ENOENT ? -ESTALE : res);
}

static void copy_committed(void *arg, int res, uint32_t uid)
{
	struct copyop *c = arg;

	c->ap = NULL; /* freed by the store after this returns */
	iblob_unref(&c->blob);
	if (res) {
		copy_end(c->loop, c, res);
		return;
	}
	c->new_uids[c->i++] = uid;
	copy_next(c->loop, c);
}

static void copy_read(void *arg, ssize_t res);

/* Offers the buffered chunk; reads the next one or commits at the end. */
static void copy_push(void *arg)
{
	struct copyop *c = arg;

	while (c->bufoff < c->buflen) {
		ssize_t n = store_append_write(c->ap, span_make(c->buf + c->bufoff,
								c->buflen - c->bufoff));
		if (n < 0) {
			copy_end(c->loop, c, (int)n);
			return;
		}
		c->bufoff += (size_t)n;
		if (c->bufoff < c->buflen)
			return; /* on_ready brings us back */
	}
	if (c->off < c->size) {
		size_t want = c->size - c->off < COPY_CHUNK ? c->size - c->off : COPY_CHUNK;
		store_read(c->src, c->loop, c->uids[c->i], c->off, c->buf, want, copy_read, c);
		return;
	}
	store_append_commit(c->ap, c->bspan, copy_committed, c);
}

static void copy_read(void *arg, ssize_t res)
{
	struct copyop *c = arg;

	if (res == -ENOENT) {
		/* Expunged (by another session) while being copied: its bytes
		 * are gone. Skipped, as a message expunged before its turn is:
		 * the copy of the others goes on (it used to fail the whole
		 * COPY/MOVE with -ENOENT, undoing the copies made). */
		store_append_abort(&c->ap);
		iblob_unref(&c->blob);
		c->new_uids[c->i++] = 0;
		copy_next(c->loop, c);
		return;
	}
	if (res <= 0) {
		copy_end(c->loop, c, res == 0 ? -EIO : (int)res);
		return;
	}
	c->off += (uint64_t)res;
	c->buflen = (size_t)res;
	c->bufoff = 0;
	copy_push(c);
}

/* The one check of a copy's (and a move's) source, made under f->mu, the
 * lock the deletion sets f->deleted under once its record is durable:
 * before each message and once more after the last copy is durable. A
 * delete that lands before the last check fails the copy with -ESTALE (the
 * copies made so far stay: the caller removes them, so the copy had no
 * effect); one that lands after it finds the copy complete. A rename
 * keeps the folder (same struct sfolder, not deleted): copies go on. */
static void copy_next(struct loop *loop, struct copyop *c)
{
	struct sfolder *f = c->src->f;

	for (;;) {
		struct index_msg *m;
		const char *kw[64];
		size_t nkw = 0;
		int64_t date = 0;
		uint32_t flags = 0;
		int err;

		pthread_mutex_lock(&f->mu);
		if (f->deleted) {
			pthread_mutex_unlock(&f->mu);
			copy_end(loop, c, -ESTALE);
			return;
		}
		if (c->i == c->n) {
			pthread_mutex_unlock(&f->mu);
			break;
		}
		m = index_find(&f->ix, c->uids[c->i]);
		if (m) {
			c->size = m->size;
			c->blob = iblob_ref(m->blob);
			c->bspan = index_msg_blob(m);
			date = m->date;
			flags = m->flags;
			for (int k = 0; k < 64; k++)
				if ((m->keywords >> k & 1) && f->ix.keywords[k])
					kw[nkw++] = f->ix.keywords[k];
			err = store_append_begin(loop, &c->dst, 1, date, flags, kw, nkw, copy_push,
						 c, &c->ap);
		} else {
			err = 0;
		}
		pthread_mutex_unlock(&f->mu);
		if (!m) {
			c->new_uids[c->i++] = 0;
			continue;
		}
		if (err) {
			copy_end(loop, c, err);
			return;
		}
		c->off = 0;
		c->buflen = c->bufoff = 0;
		copy_push(c);
		return;
	}
	if (c->move) {
		store_expunge(c->src, loop, c->uids, c->n, copy_expunged, c);
		return;
	}
	copy_end(loop, c, 0);
}

static void copy_start(struct loop *loop, void *arg)
{
	copy_next(loop, arg);
}

void store_copy(struct store_folder *src, struct loop *loop, const uint32_t *uids, size_t n,
		struct store_folder *dst, bool move, uint32_t *new_uids_r,
		store_done_cb *cb, void *arg)
{
	struct copyop *c = calloc(1, sizeof(*c));

	if (!c || !(c->buf = malloc(COPY_CHUNK)) || !(c->uids = malloc(n * 4 + 4))) {
		if (c)
			free(c->buf);
		free(c);
		done_later(loop, cb, arg, -ENOMEM);
		return;
	}
	memcpy(c->uids, uids, n * 4);
	c->src = src;
	c->dst = dst;
	c->loop = loop;
	c->n = n;
	c->move = move;
	c->new_uids = new_uids_r;
	c->cb = cb;
	c->arg = arg;
	c->u = suser_ref(src->u);
	xcall(loop, loop, copy_start, c);
}

/* ---- checkpoints on request ---------------------------------------------------- */

void store_checkpoint(struct store_folder *h, struct loop *loop, store_done_cb *cb, void *arg)
{
	struct sfolder *f = h->f;
	struct sctx *ctx = store_ctx(f->user->store, loop);
	struct ckw *c = NULL;
	int err = 0;

	pthread_mutex_lock(&f->mu);
	if (f->ck_running || f->log.rotating)
		err = -EBUSY;
	else if (!ctx)
		err = -ENOMEM;
	else {
		f->ck_running = true;
		err = ckw_start_locked(ctx, f, &c);
		if (err)
			f->ck_running = false;
	}
	pthread_mutex_unlock(&f->mu);
	if (err) {
		done_later(loop, cb, arg, err);
		return;
	}
	c->cb_done = cb;
	c->arg = arg;
	c->u = suser_ref(f->user);
	ckw_run(loop, c, 0);
}

/* ---- the store ------------------------------------------------------------------- */

static int mkdir_p1(const char *path)
{
	if (mkdir(path, 0700) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

int store_new(const struct store_config *cfg, struct store **store_r)
{
	struct store *st = calloc(1, sizeof(*st));
	int err = -ENOMEM, fd;

	if (!st)
		return -ENOMEM;
	st->cfg = *cfg;
	st->data_dir = strdup(cfg->data_dir ? cfg->data_dir : "./ringmail-data");
	if (!st->data_dir || !(st->mail_dir = path_join(st->data_dir, STORE_MAIL_DIR)))
		goto err;
	st->cfg.data_dir = st->data_dir;
	st->cfg.auto_folders = NULL;
	if (cfg->nauto_folders && !(st->autos = calloc(cfg->nauto_folders, sizeof(char *))))
		goto err;
	for (size_t i = 0; i < cfg->nauto_folders; i++) {
		const char *name = cfg->auto_folders[i];
		if (name_check(name) || name_is_inbox(span_cstr(name))) {
			err = -EINVAL;
			goto err;
		}
		if (is_auto(st, name))
			continue;
		if (!(st->autos[st->nautos] = strdup(name)))
			goto err;
		st->nautos++;
	}
	pthread_mutex_init(&st->mu, NULL);
	/* startup, before the loops run: plain blocking calls are fine */
	if ((err = mkdir_p1(st->data_dir)) || (err = mkdir_p1(st->mail_dir)))
		goto err;
	/* the mail directory's entry is durable before any user is made */
	fd = open(st->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		goto err;
	}
	close(fd);
	fd = open(st->mail_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		goto err;
	}
	if (fsync(fd) < 0 || !(st->mail_dirf = sfile_new(fd, 0, true))) {
		err = errno ? -errno : -ENOMEM;
		close(fd);
		goto err;
	}
	*store_r = st;
	return 0;
err:
	for (size_t i = 0; i < st->nautos; i++)
		free(st->autos[i]);
	free(st->autos);
	free(st->data_dir);
	free(st->mail_dir);
	free(st);
	return err;
}

void store_free(struct store **store_r)
{
	struct store *st = *store_r;

	*store_r = NULL;
	if (!st)
		return;
	while (st->users) {
		/* handles left open: free what they pointed at anyway */
		struct suser *u = st->users;
		st->users = u->next;
		suser_free(NULL, u);
	}
	for (size_t i = 0; i < st->nctx; i++)
		free(st->ctxs[i]);
	free(st->ctxs);
	sfile_unref(NULL, &st->mail_dirf);
	pthread_mutex_destroy(&st->mu);
	for (size_t i = 0; i < st->nautos; i++)
		free(st->autos[i]);
	free(st->autos);
	free(st->data_dir);
	free(st->mail_dir);
	free(st);
}

int store_lock_datadir(const char *path, char *err, size_t errlen)
{
	char *lp, buf[32];
	int fd, e;
	ssize_t n;

	if (mkdir_p1(path) < 0) {
		e = -errno;
		if (errlen)
			snprintf(err, errlen, "cannot create %s: %s", path, strerror(-e));
		return e;
	}
	if (!(lp = path_join(path, "lock")))
		return -ENOMEM;
	fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = -errno;
		if (errlen)
			snprintf(err, errlen, "cannot open %s: %s", lp, strerror(-e));
		free(lp);
		return e;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		e = -errno;
		n = pread(fd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = 0;
		buf[strcspn(buf, "\n")] = 0;
		if (errlen) {
			if (e == -EWOULDBLOCK)
				snprintf(err, errlen, "%s is in use by another ringmail process (pid %s)",
					 path, *buf ? buf : "unknown");
			else
				snprintf(err, errlen, "cannot lock %s: %s", lp, strerror(-e));
		}
		close(fd);
		free(lp);
		return e;
	}
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
		e = -errno;
		if (errlen)
			snprintf(err, errlen, "cannot write %s: %s", lp, strerror(-e));
		close(fd);
		free(lp);
		return e;
	}
	free(lp);
	return fd;
}


/* ---- compaction -------------------------------------------------------------- */

/* Online compaction of shared segments. For each sealed segment (not the
 * active one) that is at least half expunged: copy its live messages into
 * the active segment, fdatasync it, log one RELOC record per message, and
 * once that is durable (and applied: readers now find the new copies)
 * unlink the old file. A reader that opened the old file keeps reading it.
 * Segment numbers nothing references (fully expunged segments, or files a
 * crash left behind between RELOC and unlink) are unlinked too. */

struct cmove {
	uint32_t uid, crc;
	uint64_t off, size;       /* in the old segment */
	uint32_t nseg;            /* where it went */
	uint64_t noff;
	struct sfile *dst;
};

enum compact_step { CP_NEXT, CP_STAT, CP_UNLINKED, CP_OPENED, CP_READ, CP_WRITTEN,
		    CP_SYNC, CP_LOGGED };

struct compact {
	struct loop_cb cb;
	struct sread r;
	struct swrite w;
	struct swait sw;
	enum compact_step step;
	struct loop *loop;
	struct sctx *ctx;
	struct sfolder *f;
	struct suser *u;          /* reference */
	uint32_t *segs;
	size_t nsegs, si;
	uint32_t seg;
	struct statx stx;
	uint64_t size, live, reclaimed;
	char *path;
	struct sfile *src;
	struct cmove *mv;
	size_t nmv, mi, synced;
	bool dirpass;
	struct sfile *dirsynced;
	uint8_t *buf;
	size_t bufcap;
	store_done_cb *cb_fn;
	void *arg;
};

static void compact_run(struct loop *loop, struct compact *c, int res);

static void compact_cqe(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)flags;
	compact_run(loop, container_of(cb, struct compact, cb), res);
}
static void compact_read(struct loop *loop, struct sread *r, int res)
{
	compact_run(loop, container_of(r, struct compact, r), res);
}
static void compact_written(struct loop *loop, struct swrite *w, int res)
{
	compact_run(loop, container_of(w, struct compact, w), res);
}
static void compact_synced(struct loop *loop, struct swait *w, int res)
{
	compact_run(loop, container_of(w, struct compact, sw), res);
}
static void compact_logged(struct loop *loop, struct pend *p, int res)
{
	compact_run(loop, p->arg, res);
}

static void compact_drop_moves(struct loop *loop, struct compact *c)
{
	for (size_t i = 0; i < c->nmv; i++)
		sfile_unref(loop, &c->mv[i].dst);
	free(c->mv);
	c->mv = NULL;
	c->nmv = 0;
	sfile_unref(loop, &c->src);
}

static void compact_end(struct loop *loop, struct compact *c, int res)
{
	struct sfolder *f = c->f;

	compact_drop_moves(loop, c);
	pthread_mutex_lock(&f->mu);
	f->compacting = false;
	pthread_mutex_unlock(&f->mu);
	if (res < 0)
		LOG_AT(loop_log(loop), LOG_WARN, 0, "store-compact", "dir=%s error=%s", f->dir,
		       strerror(-res));
	else if (c->reclaimed)
		LOG_AT(loop_log(loop), LOG_INFO, 0, "store-compacted", "dir=%s reclaimed=%llu", f->dir,
		       (unsigned long long)c->reclaimed);
	folder_maybe_close(loop, f);
	c->cb_fn(c->arg, res < 0 ? res : (int)(c->reclaimed > INT32_MAX ? INT32_MAX : c->reclaimed));
	suser_unref(loop, &c->u);
	free(c->segs);
	free(c->path);
	free(c->buf);
	free(c);
}

static void compact_run(struct loop *loop, struct compact *c, int res)
{
	struct sfolder *f = c->f;
	char name[16];

	switch (c->step) {
	case CP_NEXT:
	next:
		compact_drop_moves(loop, c);
		if (c->si == c->nsegs) {
			compact_end(loop, c, 0);
			return;
		}
		c->seg = c->segs[c->si++];
		store_seg_name(c->seg, name);
		free(c->path);
		if (!(c->path = folder_path(f, name))) {
			compact_end(loop, c, -ENOMEM);
			return;
		}
		c->step = CP_STAT;
		io_uring_prep_statx(loop_sqe(loop, &c->cb), AT_FDCWD, c->path, 0, STATX_SIZE, &c->stx);
		return;
	case CP_STAT: {
		bool active;
		if (res == -ENOENT)
			goto next;
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		c->size = c->stx.stx_size;
		c->live = 0;
		pthread_mutex_lock(&f->mu);
		active = f->seg && f->seg->seg == c->seg;
		for (size_t i = 0; !active && i < f->ix.n; i++) {
			struct index_msg *m = &f->ix.msgs[i];
			struct cmove *v;
			if (m->seg != c->seg)
				continue;
			v = realloc(c->mv, (c->nmv + 1) * sizeof(*v));
			if (!v) {
				res = -ENOMEM;
				break;
			}
			c->mv = v;
			c->mv[c->nmv++] = (struct cmove){ .uid = m->uid, .crc = m->data_crc,
							  .off = m->off, .size = m->size };
			c->live += m->size;
		}
		pthread_mutex_unlock(&f->mu);
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		if (active || c->live * 2 > c->size)
			goto next; /* the active one, or mostly live: keep */
		if (c->nmv == 0) {
			c->step = CP_UNLINKED;
			io_uring_prep_unlinkat(loop_sqe(loop, &c->cb), AT_FDCWD, c->path, 0);
			return;
		}
		c->step = CP_OPENED;
		io_uring_prep_openat(loop_sqe(loop, &c->cb), AT_FDCWD, c->path, O_RDONLY | O_CLOEXEC, 0);
		return;
	}
	case CP_UNLINKED:
		if (res == 0) {
			c->reclaimed += c->size - c->live;
			seg_forget(loop, f, c->seg);
		}
		goto next;
	case CP_OPENED:
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		if (!(c->src = sfile_new(res, c->seg, false))) {
			close(res);
			compact_end(loop, c, -ENOMEM);
			return;
		}
		c->mi = 0;
		/* fall through */
	case CP_READ:
	read_next:
		if (c->mi == c->nmv) {
			c->synced = 0;
			c->step = CP_SYNC;
			res = 0;
			goto sync_next;
		}
		if (c->mv[c->mi].size > c->bufcap) {
			uint8_t *b = realloc(c->buf, c->mv[c->mi].size);
			if (!b) {
				compact_end(loop, c, -ENOMEM);
				return;
			}
			c->buf = b;
			c->bufcap = c->mv[c->mi].size;
		}
		/* the read's completion lands in CP_WRITTEN too: w.len 0 marks
		 * that no write is in flight yet */
		c->step = CP_WRITTEN;
		c->w.len = 0;
		sread_start(loop, &c->r, c->src->fd, c->buf, c->mv[c->mi].size, c->mv[c->mi].off,
			    compact_read);
		return;
	case CP_WRITTEN: {
		struct cmove *m = &c->mv[c->mi];
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		if (c->w.len == 0) {
			/* the read finished: never copy damage forward */
			if (crc32c(0, c->buf, m->size) != m->crc) {
				compact_end(loop, c, -EIO);
				return;
			}
			pthread_mutex_lock(&f->mu);
			if (f->log.broken || f->deleted) {
				pthread_mutex_unlock(&f->mu);
				compact_end(loop, c, -EIO);
				return;
			}
			m->dst = sfile_ref(f->seg);
			m->nseg = f->seg->seg;
			m->noff = f->seg_end;
			f->seg_end += m->size;
			if (f->seg_end > seg_max(f) && !f->seg_rolling)
				seg_roll_locked(loop, f);
			pthread_mutex_unlock(&f->mu);
			if (m->size == 0) {
				c->mi++;
				goto read_next;
			}
			swrite_start(loop, &c->w, m->dst, c->buf, m->size, m->noff, compact_written);
			return;
		}
		c->mi++;
		goto read_next;
	}
	case CP_SYNC:
	sync_next:
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		/* sync every distinct destination file (the active segment may
		 * have rolled over in the middle), then its new directory entry
		 * if it has not been synced yet */
		if (c->dirpass) {
			struct sfile *d = c->mv[c->synced - 1].dst;
			c->dirpass = false;
			if (atomic_load(&d->dirsync)) {
				c->dirsynced = d;
				sync_request(c->ctx, f->dirf, &c->sw);
				return;
			}
		}
		if (c->dirsynced) {
			atomic_store(&c->dirsynced->dirsync, false);
			c->dirsynced = NULL;
		}
		while (c->synced < c->nmv) {
			struct sfile *d = c->mv[c->synced++].dst;
			bool seen = false;
			for (size_t i = 0; i + 1 < c->synced; i++)
				seen |= c->mv[i].dst == d;
			if (seen || !d)
				continue;
			c->sw.fn = compact_synced;
			c->dirpass = true;
			sync_request(c->ctx, d, &c->sw);
			return;
		}
		{
			struct pend *p = pend_new(c->ctx, f->user, c->nmv * (RECORD_HDR_LEN + 16));
			int err = 0;
			if (!p) {
				compact_end(loop, c, -ENOMEM);
				return;
			}
			for (size_t i = 0; i < c->nmv; i++) {
				struct rec_reloc rl = { c->mv[i].uid, c->mv[i].nseg, c->mv[i].noff };
				p->len += record_put_reloc(p->rec + p->len, p->cap - p->len, &rl);
			}
			p->complete = compact_logged;
			p->arg = c;
			c->step = CP_LOGGED;
			pthread_mutex_lock(&f->mu);
			p->busy_f = f;
			folder_busy(f);
			err = slog_reserve(&f->log, p);
			pthread_mutex_unlock(&f->mu);
			if (err < 0) {
				pend_free(loop, p);
				compact_end(loop, c, err);
				return;
			}
			if (err == 0)
				pend_submit(p);
		}
		return;
	case CP_LOGGED: {
		bool still = false;
		if (res < 0) {
			compact_end(loop, c, res);
			return;
		}
		pthread_mutex_lock(&f->mu);
		for (size_t i = 0; i < f->ix.n && !still; i++)
			still = f->ix.msgs[i].seg == c->seg;
		pthread_mutex_unlock(&f->mu);
		if (still)
			goto next;
		c->step = CP_UNLINKED;
		c->live = 0; /* the live bytes moved; the whole file goes */
		io_uring_prep_unlinkat(loop_sqe(loop, &c->cb), AT_FDCWD, c->path, 0);
		return;
	}
	}
	compact_end(loop, c, -EINVAL);
}

void store_compact(struct store_folder *h, struct loop *loop, store_done_cb *cb, void *arg)
{
	compact_start(h->f, loop, cb, arg);
}

static void compact_start(struct sfolder *f, struct loop *loop, store_done_cb *cb, void *arg)
{
	struct compact *c = calloc(1, sizeof(*c));
	int err = 0;

	if (!c || !(c->ctx = store_ctx(f->user->store, loop))) {
		free(c);
		done_later(loop, cb, arg, -ENOMEM);
		return;
	}
	pthread_mutex_lock(&f->mu);
	if (f->compacting) {
		err = -EBUSY;
	} else {
		/* every shared segment number below the active one */
		uint32_t top = f->seg ? SEG_NUM(f->seg->seg) : f->seg_next;
		c->segs = malloc((top + 1) * sizeof(*c->segs));
		if (!c->segs)
			err = -ENOMEM;
		uint8_t *single = calloc(top + 1, 1);
		if (!single)
			err = -ENOMEM;
		for (size_t k = 0; !err && k < f->ix.n; k++)
			if ((f->ix.msgs[k].seg & SEG_SINGLE) && SEG_NUM(f->ix.msgs[k].seg) < top)
				single[SEG_NUM(f->ix.msgs[k].seg)] = 1;
		for (uint32_t i = 1; !err && i < top; i++)
			if (!single[i])
				c->segs[c->nsegs++] = i;
		free(single);
		if (!err)
			f->compacting = true;
	}
	pthread_mutex_unlock(&f->mu);
	if (err) {
		free(c->segs);
		free(c);
		done_later(loop, cb, arg, err);
		return;
	}
	c->cb.fn = compact_cqe;
	c->loop = loop;
	c->f = f;
	c->u = suser_ref(f->user);
	c->cb_fn = cb;
	c->arg = arg;
	c->step = CP_NEXT;
	compact_run(loop, c, 0);
}
