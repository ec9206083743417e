/* loop.c - the per-core io_uring event loop and its connections.
 *
 * Ownership rules:
 * - A connection is freed only when no operation of it is in flight
 *   (inflight == 0) and it is closed: completions never find freed memory.
 *   The slot generation in every connection user_data is a second guard.
 * - A receive buffer belongs to the kernel until its completion, then to
 *   handle_input(), which gives it back before returning. Unconsumed bytes
 *   are copied to conn->in, which exists only while non-empty.
 * - Output is copied into the connection's chunk list; one send is in
 *   flight at a time and its chunk is not freed before its completion.
 *   A splice chunk (conn_send_splice) stands for bytes a session put in a
 *   pipe: the send of such a chunk is a pipe -> socket splice, or, while
 *   the socket is full, a POLLOUT wait before the next splice. */
#include "core/loop_private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/server.h"
#include "core/udata.h"

static void conn_finish_close(struct conn *c, enum conn_close_reason reason);
static void conn_maybe_free(struct conn *c);
static void arm_recv(struct conn *c);

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

const char *conn_close_reason_str(enum conn_close_reason r)
{
	static const char *const names[] = { "peer", "error", "local", "timeout", "shutdown", "limit" };
	return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

/* ---- SQEs ------------------------------------------------------------ */

static struct io_uring_sqe *get_sqe(struct loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	while (!sqe) {
		/* SQ full: hand what we have to the kernel and try again. */
		int rc = io_uring_submit(&l->ring);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			LOG_AT(&l->log, LOG_ERROR, 0, "submit", "error=%s", strerror(-rc));
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

struct io_uring_sqe *loop_sqe(struct loop *l, struct loop_cb *cb)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	uint64_t u;
	/* A pointer that does not fit is a programming error on an exotic
	 * address space; refuse loudly rather than misroute a completion. */
	if (udata_ptr(UDATA_CB, cb, &u)) {
		LOG_AT(&l->log, LOG_ERROR, 0, "udata", "error=pointer-too-wide");
		abort();
	}
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, u);
	return sqe;
}

uint64_t loop_cb_udata(struct loop_cb *cb)
{
	uint64_t u = 0;
	if (udata_ptr(UDATA_CB, cb, &u))
		abort();
	return u;
}

int loop_ring_fd(const struct loop *l) { return l->ring_fd; }
int loop_id(const struct loop *l) { return l->id; }
uint64_t loop_now_ms(const struct loop *l) { return l->now_ms; }
struct server *loop_server(const struct loop *l) { return l->srv; }
struct log *loop_log(struct loop *l) { return &l->log; }

int loop_defer(struct loop *l, void (*fn)(struct loop *, void *), void *arg)
{
	if (l->ndeferred == l->deferred_cap) {
		size_t cap = l->deferred_cap ? l->deferred_cap * 2 : 64;
		struct deferred *d = realloc(l->deferred, cap * sizeof(*d));
		if (!d)
			return -ENOMEM;
		l->deferred = d;
		l->deferred_cap = cap;
	}
	l->deferred[l->ndeferred++] = (struct deferred){ fn, arg };
	return 0;
}

static void run_deferred(struct loop *l)
{
	/* Deferred functions may defer more; bound the rounds so a function
	 * that always re-defers cannot starve the ring. */
	for (int round = 0; round < 16 && l->ndeferred; round++) {
		size_t n = l->ndeferred;
		struct deferred batch[64];
		size_t take = n < 64 ? n : 64;
		memcpy(batch, l->deferred, take * sizeof(batch[0]));
		memmove(l->deferred, l->deferred + take, (n - take) * sizeof(batch[0]));
		l->ndeferred = n - take;
		for (size_t i = 0; i < take; i++)
			batch[i].fn(l, batch[i].arg);
	}
}

/* ---- cross-loop messages --------------------------------------------- */

void loop_on_msg(struct loop *l, uint32_t kind, loop_msg_fn fn)
{
	if (kind < LOOP_MSG_KINDS)
		l->msg_fns[kind] = fn;
}

int loop_msg(struct loop *from, int to, uint32_t kind, uint64_t payload)
{
	struct server *srv = from->srv;
	if (!srv || to < 0 || (unsigned)to >= srv->nloops || kind >= LOOP_MSG_KINDS)
		return -EINVAL;
	struct io_uring_sqe *sqe = get_sqe(from);
	io_uring_prep_msg_ring(sqe, srv->loops[to]->ring_fd, kind, udata_msg(payload), 0);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_IGNORE, 0, 0));
	return 0;
}

/* ---- accepting ------------------------------------------------------- */

static void arm_accept(struct loop *l, uint32_t li, uint32_t k)
{
	struct listener_rt *lr = &l->listeners[li];
	struct accept_slot *a = &lr->acc[k];
	struct io_uring_sqe *sqe = get_sqe(l);

	a->len = sizeof(a->addr);
	io_uring_prep_accept(sqe, lr->fd, &a->addr.sa, &a->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_ACCEPT, li, k));
	a->armed = true;
}

/* Every accept slot of listener li that is not in flight, unless the
 * listener is closed or the loop stops. */
static void arm_accepts(struct loop *l, uint32_t li)
{
	struct listener_rt *lr = &l->listeners[li];

	if (lr->closed || l->stopping)
		return;
	for (uint32_t k = 0; k < LISTENER_ACCEPTS; k++)
		if (!lr->acc[k].armed)
			arm_accept(l, li, k);
}

/* ---- timers ---------------------------------------------------------- */

static void arm_tick(struct loop *l)
{
	if (l->tick_armed)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	l->tick_ts.tv_sec = 0;
	l->tick_ts.tv_nsec = (long long)LOOP_TICK_MS * 1000000;
	io_uring_prep_timeout(sqe, &l->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_TICK, 0, 0));
	l->tick_armed = true;
}

static void on_tick(struct loop *l)
{
	l->tick_armed = false;
	timer_wheel_advance(&l->wheel, l->now_ms);
	if (l->accept_backoff) {
		l->accept_backoff = false;
		for (size_t i = 0; i < l->nlisteners; i++)
			arm_accepts(l, (uint32_t)i);
	}
}

static void conn_timer_fired(struct timer *t, void *arg)
{
	struct conn *c = arg;
	(void)t;
	if (c->closing)
		return;
	if (c->ops->timer)
		c->ops->timer(c);
	else
		conn_finish_close(c, CONN_CLOSE_TIMEOUT);
}

void conn_set_timer(struct conn *c, uint32_t ms)
{
	struct loop *l = c->loop;
	if (ms == 0 || c->closing) {
		timer_disarm(&l->wheel, &c->timer);
		return;
	}
	timer_arm(&l->wheel, &c->timer, l->now_ms, ms);
}

/* ---- connections: table ----------------------------------------------- */

static int slot_alloc(struct loop *l, uint32_t *idx_r)
{
	if (l->free_head == UINT32_MAX) {
		uint32_t n = l->nslots ? l->nslots * 2 : 1024;
		struct conn_slot *s = realloc(l->slots, n * sizeof(*s));
		if (!s)
			return -ENOMEM;
		for (uint32_t i = l->nslots; i < n; i++) {
			s[i].c = NULL;
			s[i].gen = 0;
			s[i].next_free = i + 1 < n ? i + 1 : UINT32_MAX;
		}
		l->free_head = l->nslots;
		l->slots = s;
		l->nslots = n;
	}
	*idx_r = l->free_head;
	l->free_head = l->slots[*idx_r].next_free;
	return 0;
}

/* Shutdown: the loop exits once no connection and no hold is left (or
 * the grace is over for the holds). */
static void maybe_exit(struct loop *l)
{
	if (l->stopping && l->nconns == 0 && (l->holds == 0 || l->grace_over))
		l->exit = true;
}

void loop_hold(struct loop *l)
{
	l->holds++;
}

void loop_release(struct loop *l)
{
	l->holds--;
	maybe_exit(l);
}

static void slot_free(struct loop *l, uint32_t idx)
{
	l->slots[idx].c = NULL;
	l->slots[idx].gen = (l->slots[idx].gen + 1) & UDATA_GEN_MASK;
	l->slots[idx].next_free = l->free_head;
	l->free_head = idx;
}

static struct conn *slot_get(struct loop *l, uint32_t idx, uint32_t gen)
{
	if (idx >= l->nslots || l->slots[idx].gen != gen)
		return NULL;
	return l->slots[idx].c;
}

/* ---- connections: public helpers --------------------------------------- */

void *conn_session(const struct conn *c) { return c->session; }
void conn_set_session(struct conn *c, void *s) { c->session = s; }
struct loop *conn_loop(const struct conn *c) { return c->loop; }
const struct listener_config *conn_listener(const struct conn *c) { return c->lc; }
const struct config *conn_config(const struct conn *c) { return c->cfg; }
uint64_t conn_sid(const struct conn *c) { return c->sid; }
const char *conn_peer(const struct conn *c) { return c->peer_str; }
const struct sockaddr *conn_peer_addr(const struct conn *c) { return &c->peer.sa; }
int conn_fd(const struct conn *c) { return c->fd; }
size_t conn_send_pending(const struct conn *c) { return c->out_bytes; }
size_t conn_splice_pending(const struct conn *c) { return c->splice_bytes; }
enum conn_limit conn_limit_hit(const struct conn *c) { return (enum conn_limit)c->limit; }
struct log *conn_log(const struct conn *c) { return &c->loop->log; }

/* ---- output ----------------------------------------------------------- */

static void schedule_flush(struct conn *c)
{
	if (c->on_flush_list || c->send_inflight)
		return;
	c->on_flush_list = true;
	c->flush_next = c->loop->flush_list;
	c->loop->flush_list = c;
}

/* Closes from inside a session's own call chain (conn_send, conn_close,
 * conn_resume): callbacks stop at once, but conn_ops.close (which frees the
 * session) runs from the loop, after the session has returned, so a session
 * may keep using its own memory until then. */
static void conn_close_later(struct conn *c, enum conn_close_reason reason)
{
	if (c->closed || c->close_later)
		return;
	c->closing = true;
	c->flush_close = false;
	c->close_later = true;
	c->close_reason = (uint8_t)reason;
	if (!c->on_flush_list) {
		c->on_flush_list = true;
		c->flush_next = c->loop->flush_list;
		c->loop->flush_list = c;
	}
}

int conn_send(struct conn *c, const void *p, size_t len)
{
	const struct config *cfg = c->loop->cfg;
	const uint8_t *src = p;

	if (c->closed || (c->closing && !c->flush_close))
		return -EPIPE;
	if (len == 0)
		return 0;
	if (cfg && c->out_bytes + len > cfg->send_queue_max) {
		LOG_AT(&c->loop->log, LOG_WARN, c->sid, "send-queue-full", "queued=%zu",
		       c->out_bytes);
		conn_close_later(c, CONN_CLOSE_LIMIT);
		return -ENOBUFS;
	}
	while (len > 0) {
		struct outchunk *t = c->out_tail;
		/* Never append to the chunk a send is reading from mid-flight:
		 * the kernel copies at submit time for sends, but keeping the
		 * in-flight chunk immutable makes partial sends trivial. */
		if (!t || t->pipe_fd >= 0 || t->len == t->cap ||
		    (c->send_inflight && t == c->out_head)) {
			uint32_t cap = CONN_OUT_CHUNK;
			if (len > CONN_OUT_CHUNK)
				cap = len > CONN_OUT_BULK ? (uint32_t)len : CONN_OUT_BULK;
			t = malloc(sizeof(*t) + cap);
			if (!t) {
				conn_close_later(c, CONN_CLOSE_ERROR);
				return -ENOMEM;
			}
			t->next = NULL;
			t->off = t->len = 0;
			t->cap = cap;
			t->pipe_fd = -1;
			if (c->out_tail)
				c->out_tail->next = t;
			else
				c->out_head = t;
			c->out_tail = t;
		}
		size_t n = t->cap - t->len;
		if (n > len)
			n = len;
		memcpy(t->data + t->len, src, n);
		t->len += (uint32_t)n;
		c->out_bytes += n;
		src += n;
		len -= n;
	}
	schedule_flush(c);
	return 0;
}

int conn_send_splice(struct conn *c, int pipe_fd, size_t len)
{
	const struct config *cfg = c->loop->cfg;

	if (c->closed || (c->closing && !c->flush_close))
		return -EPIPE;
	if (len == 0)
		return 0;
	if (pipe_fd < 0 || len > UINT32_MAX)
		return -EINVAL;
	if (cfg && c->out_bytes + len > cfg->send_queue_max) {
		LOG_AT(&c->loop->log, LOG_WARN, c->sid, "send-queue-full", "queued=%zu",
		       c->out_bytes);
		conn_close_later(c, CONN_CLOSE_LIMIT);
		return -ENOBUFS;
	}
	struct outchunk *t = malloc(sizeof(*t));
	if (!t) {
		conn_close_later(c, CONN_CLOSE_ERROR);
		return -ENOMEM;
	}
	t->next = NULL;
	t->off = 0;
	t->len = (uint32_t)len;
	t->cap = 0;
	t->pipe_fd = pipe_fd;
	if (c->out_tail)
		c->out_tail->next = t;
	else
		c->out_head = t;
	c->out_tail = t;
	c->out_bytes += len;
	c->splice_bytes += len;
	schedule_flush(c);
	return 0;
}

int conn_printf(struct conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	if ((size_t)n >= sizeof(buf)) {
		char *big = malloc((size_t)n + 1);
		if (!big)
			return -ENOMEM;
		va_start(ap, fmt);
		vsnprintf(big, (size_t)n + 1, fmt, ap);
		va_end(ap);
		int rc = conn_send(c, big, (size_t)n);
		free(big);
		return rc;
	}
	return conn_send(c, buf, (size_t)n);
}

/* The head chunk's next step: a send of copied bytes; a splice from its
 * pipe; or (c->send_poll) a wait for room in the socket. io_uring runs a
 * splice in a kernel worker thread; the socket is non-blocking (accepted
 * with SOCK_NONBLOCK), so a full socket ends the splice with -EAGAIN
 * instead of holding that thread until the client reads, and the POLLOUT
 * wait takes its place. All three carry the same UDATA_SEND user_data, so
 * conn_finish_close() cancels whichever is in flight. */
static void submit_send(struct conn *c)
{
	struct outchunk *h = c->out_head;
	struct io_uring_sqe *sqe = get_sqe(c->loop);
	if (c->send_poll)
		io_uring_prep_poll_add(sqe, c->fd, POLLOUT);
	else if (h->pipe_fd >= 0)
		io_uring_prep_splice(sqe, h->pipe_fd, -1, c->fd, -1, h->len - h->off,
				     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	else
		io_uring_prep_send(sqe, c->fd, h->data + h->off, h->len - h->off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_SEND, c->idx, c->gen));
	c->send_inflight = true;
	c->inflight++;
}

static void flush_conns(struct loop *l)
{
	struct conn *c = l->flush_list;
	l->flush_list = NULL;
	while (c) {
		struct conn *next = c->flush_next;
		c->on_flush_list = false;
		if (c->close_later && !c->closed)
			conn_finish_close(c, (enum conn_close_reason)c->close_reason);
		if (c->closed)
			conn_maybe_free(c);
		else if (!c->send_inflight && c->out_head)
			submit_send(c);
		c = next;
	}
}

static void free_output(struct conn *c)
{
	struct outchunk *h = c->out_head;
	while (h) {
		struct outchunk *n = h->next;
		free(h);
		h = n;
	}
	c->out_head = c->out_tail = NULL;
	c->out_bytes = 0;
	c->splice_bytes = 0;
}

static void on_send(struct conn *c, int res)
{
	struct outchunk *h = c->out_head;
	bool was_poll = c->send_poll;

	c->send_inflight = false;
	c->send_poll = false;
	c->inflight--;
	if (c->closed) {
		conn_maybe_free(c);
		return;
	}
	if (was_poll) {
		/* POLLOUT (or POLLERR/POLLHUP: the splice reports the error) */
		if (res >= 0 || res == -EINTR || res == -EAGAIN) {
			submit_send(c);
			return;
		}
	} else if (res == -EAGAIN && h->pipe_fd >= 0) {
		/* The socket is full: wait for room rather than retry. An
		 * empty pipe says -EAGAIN too; that is a session's bug, and
		 * waiting for POLLOUT would then spin. */
		int inpipe = 0;
		if (ioctl(h->pipe_fd, FIONREAD, &inpipe) == 0 && inpipe > 0) {
			c->send_poll = true;
			submit_send(c);
			return;
		}
		res = -EIO;
	} else if (res == 0 && h->pipe_fd >= 0) {
		res = -EIO; /* the pipe was empty: the bytes promised are not there */
	}
	if (res < 0) {
		if (res == -EAGAIN || res == -EINTR) {
			submit_send(c);
			return;
		}
		LOG_AT(&c->loop->log, LOG_DEBUG, c->sid, "send-error", "error=%s", strerror(-res));
		conn_finish_close(c, CONN_CLOSE_ERROR);
		return;
	}
	h->off += (uint32_t)res;
	c->out_bytes -= (size_t)res;
	if (h->pipe_fd >= 0)
		c->splice_bytes -= (size_t)res;
	if (h->off == h->len) {
		c->out_head = h->next;
		if (!c->out_head)
			c->out_tail = NULL;
		free(h);
	}
	if (c->out_head) {
		submit_send(c);
		return;
	}
	if (c->flush_close) {
		conn_finish_close(c, (enum conn_close_reason)c->close_reason);
		return;
	}
	if (!c->closing && c->ops->drained)
		c->ops->drained(c);
}

/* ---- close ------------------------------------------------------------ */

static void conn_free(struct conn *c)
{
	struct loop *l = c->loop;
	struct server *srv = l->srv;

	free_output(c);
	free(c->in);
	if (srv) {
		atomic_fetch_sub_explicit(&srv->nconns, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(&srv->ipcount[c->ip_slot], 1, memory_order_relaxed);
	}
	slot_free(l, c->idx);
	l->nconns--;
	free(c);
	maybe_exit(l);
}

static void conn_maybe_free(struct conn *c)
{
	if (c->closed && c->inflight == 0 && !c->on_flush_list)
		conn_free(c);
}

static void conn_finish_close(struct conn *c, enum conn_close_reason reason)
{
	struct loop *l = c->loop;
	struct io_uring_sqe *sqe;

	if (c->closed)
		return;
	c->closed = true;
	c->closing = true;
	timer_disarm(&l->wheel, &c->timer);
	LOG_AT(&l->log, LOG_INFO, c->sid, "close", "reason=%s", conn_close_reason_str(reason));
	if (c->ops->close)
		c->ops->close(c, reason);
	c->session = NULL;
	if (c->recv_armed) {
		sqe = get_sqe(l);
		io_uring_prep_cancel64(sqe, udata_conn(UDATA_RECV, c->idx, c->gen), 0);
		io_uring_sqe_set_data64(sqe, udata_conn(UDATA_CANCEL, c->idx, c->gen));
		c->inflight++;
	}
	if (c->send_inflight) {
		/* A send to a peer that does not read would never complete and
		 * the connection would never be freed (slow-loris, or a stop
		 * that never ends): cancel it too. */
		sqe = get_sqe(l);
		io_uring_prep_cancel64(sqe, udata_conn(UDATA_SEND, c->idx, c->gen), 0);
		io_uring_sqe_set_data64(sqe, udata_conn(UDATA_CANCEL, c->idx, c->gen));
		c->inflight++;
	}
	/* The close is linked after nothing: an in-flight send or recv holds
	 * its own file reference, and the cancels above end them. */
	sqe = get_sqe(l);
	io_uring_prep_close(sqe, c->fd);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_CLOSE, c->idx, c->gen));
	c->inflight++;
}

void conn_close(struct conn *c, bool flush)
{
	if (c->closing)
		return;
	c->closing = true;
	c->close_reason = CONN_CLOSE_LOCAL;
	if (flush && (c->out_bytes > 0 || c->send_inflight)) {
		c->flush_close = true;
		timer_disarm(&c->loop->wheel, &c->timer);
		/* Bound how long a peer that does not read can keep us. */
		const struct config *cfg = c->loop->cfg;
		timer_arm(&c->loop->wheel, &c->timer, c->loop->now_ms,
			  cfg ? cfg->handshake_timeout_ms : 10000);
		return;
	}
	conn_close_later(c, CONN_CLOSE_LOCAL);
}

/* The flush-close timer: the peer did not read its last reply in time. */
static void conn_close_timer(struct conn *c)
{
	conn_finish_close(c, CONN_CLOSE_TIMEOUT);
}

/* ---- input ------------------------------------------------------------ */

/* The most input a connection can hold: CONN_INPUT_MAX, which a live
 * session may leave unconsumed, plus what a multishot recv can deliver
 * after the session paused, before its cancel takes effect: recv_buffers
 * buffers, and the one whose delivery paused the session (cancel_recv()). */
static size_t conn_input_bound(const struct loop *l)
{
	return CONN_INPUT_MAX + ((size_t)l->br.count + 1) * l->br.size;
}

/* The pending input is c->in[c->in_off .. c->in_off + c->in_len). Dropping
 * consumed bytes only moves in_off; the buffer is compacted when more room
 * is needed, so a session that consumes a large backlog in small steps does
 * not memmove it over and over. */
static int in_append(struct conn *c, const uint8_t *p, size_t n)
{
	/* What a multishot recv took from the socket while the session was
	 * paused is kept: it cannot be given back, and the client sent it
	 * correctly. cancel_recv() and arm_recv() bound it (see there) by
	 * conn_input_bound(); this check only stops a broken invariant from
	 * growing memory. A session that is not paused and consumes nothing
	 * of CONN_INPUT_MAX bytes is closed by deliver_pending(). */
	if ((size_t)c->in_len + n > conn_input_bound(c->loop)) {
		LOG_AT(&c->loop->log, LOG_ERROR, c->sid, "input-overrun",
		       "pending=%u more=%zu paused=%d", c->in_len, n, c->paused);
		return -ENOBUFS;
	}
	if (c->in_off && c->in_off + c->in_len + n > c->in_cap) {
		memmove(c->in, c->in + c->in_off, c->in_len);
		c->in_off = 0;
	}
	if (c->in_len + n > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : 1024;
		while (cap < c->in_len + n)
			cap *= 2;
		uint8_t *q = realloc(c->in, cap);
		if (!q)
			return -ENOMEM;
		c->in = q;
		c->in_cap = (uint32_t)cap;
	}
	memcpy(c->in + c->in_off + c->in_len, p, n);
	c->in_len += (uint32_t)n;
	return 0;
}

static void in_drop(struct conn *c, size_t n)
{
	if (n >= c->in_len) {
		/* Empty: an idle connection pins no input memory. */
		free(c->in);
		c->in = NULL;
		c->in_len = c->in_cap = c->in_off = 0;
		return;
	}
	c->in_off += (uint32_t)n;
	c->in_len -= (uint32_t)n;
}

/* Offers the pending input to the session. */
static void deliver_pending(struct conn *c)
{
	while (c->in_len && !c->closing && !c->paused) {
		ssize_t used = c->ops->data(c, span_make(c->in + c->in_off, c->in_len));
		if (c->closing)
			return;
		if (used < 0) {
			conn_finish_close(c, CONN_CLOSE_LOCAL);
			return;
		}
		if (used == 0) {
			if (c->in_len >= CONN_INPUT_MAX)
				conn_finish_close(c, CONN_CLOSE_LIMIT);
			return;
		}
		in_drop(c, (size_t)used);
	}
}

/* A multishot recv cannot be paused, only cancelled. Most pauses are a
 * request waiting for the store while the client waits for the reply, and
 * nothing arrives meanwhile: the recv stays armed, which saves a cancel and
 * a re-arm (a poll removal and a poll arm in the kernel) per command. The
 * first bytes that do arrive while paused cancel it, so a client that keeps
 * sending is held back by TCP; bytes that race with the cancel are kept in
 * c->in, and the connection is never closed for them.
 *
 * Why the race is bounded (conn_input_bound()): with DEFER_TASKRUN the
 * kernel runs receives only inside our io_uring_enter(GETEVENTS), and the
 * enter submits the cancel before it runs them. Each enter can fill at
 * most the ring's recv_buffers buffers (a buffer comes back to the ring
 * only while we handle its completion, after the enter). So after a pause,
 * at most the rest of the completions of that enter arrive, or, when none
 * of them came after the pause, those of the next one: recv_buffers
 * buffers, plus what was left of the buffer whose delivery paused the
 * session, on top of the < CONN_INPUT_MAX a live session may leave, which
 * arm_recv() makes sure of. */
static void cancel_recv(struct conn *c)
{
	if (!c->recv_armed || c->recv_cancelled)
		return;
	struct io_uring_sqe *sqe = get_sqe(c->loop);
	io_uring_prep_cancel64(sqe, udata_conn(UDATA_RECV, c->idx, c->gen), 0);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_CANCEL, c->idx, c->gen));
	c->recv_cancelled = true;
	c->inflight++;
}

static void handle_input(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->closing)
		return; /* a flush-close drops what arrives meanwhile */
	if (c->in_len || c->paused) {
		if (in_append(c, p, n)) {
			conn_finish_close(c, CONN_CLOSE_LIMIT);
			return;
		}
		if (c->paused)
			cancel_recv(c);
		deliver_pending(c);
		return;
	}
	/* The common case: parse in place in the kernel's buffer. */
	ssize_t used = c->ops->data(c, span_make(p, n));
	if (c->closing)
		return;
	if (used < 0) {
		conn_finish_close(c, CONN_CLOSE_LOCAL);
		return;
	}
	if ((size_t)used < n) {
		if (in_append(c, p + used, n - (size_t)used)) {
			conn_finish_close(c, CONN_CLOSE_LIMIT);
			return;
		}
		/* The session may have consumed some and paused, or it may
		 * want more bytes; either way what is left waits in c->in. */
	}
}

/* A recv is armed only for a live session: not paused, and not between
 * conn_resume() and resume_deferred(), which offers the backlog first and
 * arms after. A session that was offered its input and is live left less
 * than CONN_INPUT_MAX of it (or deliver_pending() closed it): that is what
 * bounds c->in (see cancel_recv()). Arming while a resume is pending (when
 * the cancelled recv's last completion comes) let the backlog of one pause
 * carry into the next, growing by up to a ring's worth each time, until the
 * bound closed a correct client's upload. */
static void arm_recv(struct conn *c)
{
	struct loop *l = c->loop;
	if (c->recv_armed || c->closing || c->paused || c->resume_pending || c->eof_pending)
		return;
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = l->br.bgid;
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_RECV, c->idx, c->gen));
	c->recv_armed = true;
	c->inflight++;
}

/* The peer's EOF: close, after flushing the answers still queued. */
static void conn_close_peer(struct conn *c)
{
	if (c->closing || !(c->out_bytes > 0 || c->send_inflight)) {
		conn_finish_close(c, CONN_CLOSE_PEER);
		return;
	}
	conn_close(c, true);
	c->close_reason = CONN_CLOSE_PEER;
}

static void on_recv(struct conn *c, int res, uint32_t flags)
{
	struct loop *l = c->loop;
	uint16_t bid;
	uint8_t *buf = bufring_take(&l->br, flags, &bid);

	if (!(flags & IORING_CQE_F_MORE)) {
		c->recv_armed = false;
		c->recv_cancelled = false;
		c->inflight--;
	}
	if (res > 0 && buf) {
		handle_input(c, buf, (size_t)res);
		bufring_put(&l->br, bid);
	} else if (buf) {
		bufring_put(&l->br, bid);
	}
	if (c->closed) {
		conn_maybe_free(c);
		return;
	}
	if (res == 0) {
		/* The peer may only have shut its sending side: answer what
		 * it sent first. A paused session (the recv is armed while
		 * paused, see cancel_recv()) or one about to resume still has
		 * commands to answer: the EOF waits for the resume. Answers
		 * still queued are flushed before the close. */
		if (!c->closing && (c->paused || c->resume_pending)) {
			c->eof_pending = true;
			return;
		}
		if (c->flush_close)
			return;
		conn_close_peer(c);
		return;
	}
	if (res == -ENOBUFS) {
		/* Every buffer of the ring was out when data came: the
		 * multishot recv ended and is armed again below; the bytes
		 * wait in the socket meanwhile. */
		LOG_AT(&l->log, LOG_DEBUG, c->sid, "recv-nobufs", "buffers=%u", l->br.count);
	} else if (res < 0 && res != -ECANCELED && res != -EINTR) {
		LOG_AT(&l->log, LOG_DEBUG, c->sid, "recv-error", "error=%s", strerror(-res));
		conn_finish_close(c, CONN_CLOSE_ERROR);
		return;
	}
	if (!c->recv_armed && !c->eof_pending)
		arm_recv(c);
}

void conn_pause(struct conn *c)
{
	if (c->paused || c->closing)
		return;
	c->paused = true;
}

static void resume_deferred(struct loop *l, void *arg)
{
	(void)l;
	struct conn *c = arg;
	c->resume_pending = false;
	c->inflight--;
	if (c->closed) {
		conn_maybe_free(c);
		return;
	}
	if (c->paused)
		return;
	if (c->in_len == 0) {
		/* Nothing pending here, but a layer above may hold bytes of its
		 * own (decrypted TLS): offer it an empty span. */
		ssize_t used = c->ops->data(c, span_make(NULL, 0));
		if (used < 0 && !c->closing)
			conn_finish_close(c, CONN_CLOSE_LOCAL);
	}
	deliver_pending(c);
	if (c->eof_pending && !c->closing && !c->paused && !c->resume_pending)
		conn_close_peer(c);
	if (!c->closing && !c->paused)
		arm_recv(c);
	if (c->closed)
		conn_maybe_free(c);
}

void conn_resume(struct conn *c)
{
	if (!c->paused || c->closing)
		return;
	c->paused = false;
	if (c->resume_pending)
		return;
	/* Deliver from the loop, not from inside the caller's callback. The
	 * pending flag counts as an operation in flight so the connection
	 * outlives it. */
	if (loop_defer(c->loop, resume_deferred, c) == 0) {
		c->resume_pending = true;
		c->inflight++;
	} else {
		conn_close_later(c, CONN_CLOSE_ERROR);
	}
}

/* ---- accept ----------------------------------------------------------- */

static uint32_t ip_hash(const struct conn *c)
{
	uint64_t h = 1469598103934665603ull;
	const uint8_t *p;
	size_t n;

	if (c->peer.sa.sa_family == AF_INET6) {
		p = c->peer.sin6.sin6_addr.s6_addr;
		n = 16;
		if (IN6_IS_ADDR_V4MAPPED(&c->peer.sin6.sin6_addr)) {
			p += 12;
			n = 4;
		}
	} else {
		p = (const uint8_t *)&c->peer.sin.sin_addr;
		n = 4;
	}
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return (uint32_t)(h ^ (h >> 32)) & (SERVER_IP_SLOTS - 1);
}

/* The peer's address, as the accept returned it. */
static void peer_to_str(struct conn *c, const struct accept_slot *a)
{
	if (a->len == 0 || a->len > sizeof(c->peer)) {
		strcpy(c->peer_str, "unknown");
		memset(&c->peer, 0, sizeof(c->peer));
		return;
	}
	memcpy(&c->peer, &a->addr, a->len);
	if (c->peer.sa.sa_family == AF_INET6) {
		const struct in6_addr *a = &c->peer.sin6.sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a))
			inet_ntop(AF_INET, &a->s6_addr[12], c->peer_str, sizeof(c->peer_str));
		else
			inet_ntop(AF_INET6, a, c->peer_str, sizeof(c->peer_str));
	} else if (c->peer.sa.sa_family == AF_INET) {
		inet_ntop(AF_INET, &c->peer.sin.sin_addr, c->peer_str, sizeof(c->peer_str));
	} else {
		strcpy(c->peer_str, "unknown");
	}
}

static void conn_timer_dispatch(struct timer *t, void *arg)
{
	struct conn *c = arg;
	if (c->flush_close && !c->closed) {
		(void)t;
		conn_close_timer(c);
		return;
	}
	conn_timer_fired(t, arg);
}

/* Out of descriptors, the accept fails again at every tick (100 ms) until
 * connections leave: one line per listener every ACCEPT_ERR_LOG_MS, with
 * the count of the failures in between, keeps the log readable. */
#define ACCEPT_ERR_LOG_MS 10000

static void accept_error_log(struct loop *l, struct listener_rt *lr, int res)
{
	if (lr->err_logged_ms && l->now_ms - lr->err_logged_ms < ACCEPT_ERR_LOG_MS) {
		lr->err_unlogged++;
		return;
	}
	LOG_AT(&l->log, LOG_WARN, 0, "accept-error", "listener=%s error=%s unlogged=%u",
	       lr->lc->name, strerror(-res), lr->err_unlogged);
	lr->err_logged_ms = l->now_ms ? l->now_ms : 1;
	lr->err_unlogged = 0;
}

static void on_accept(struct loop *l, uint32_t li, uint32_t k, int res)
{
	struct listener_rt *lr;
	struct accept_slot a;
	struct conn *c;
	uint32_t idx;

	if (li >= l->nlisteners || k >= LISTENER_ACCEPTS)
		return;
	lr = &l->listeners[li];
	lr->acc[k].armed = false;
	if (res < 0) {
		if (res != -ECANCELED && res != -EINTR && res != -EAGAIN)
			accept_error_log(l, lr, res);
		/* EMFILE and friends: try again on the next tick, not in a spin. */
		if (!lr->closed && !l->stopping)
			l->accept_backoff = true;
		return;
	}
	a = lr->acc[k]; /* the address, before the slot's next accept */
	if (!lr->closed && !l->stopping)
		arm_accept(l, li, k);
	if (l->stopping || slot_alloc(l, &idx) || !(c = calloc(1, sizeof(*c)))) {
		close(res);
		return;
	}
	c->loop = l;
	c->fd = res;
	c->idx = idx;
	c->gen = l->slots[idx].gen;
	c->lc = lr->lc;
	c->cfg = l->cfg;
	c->ops = lr->ops;
	c->sid = ((uint64_t)(l->id + 1) << 40) | ++l->sid_counter;
	l->slots[idx].c = c;
	l->nconns++;
	timer_init(&c->timer, conn_timer_dispatch, c);
	peer_to_str(c, &a);
	c->ip_slot = ip_hash(c);

	struct server *srv = l->srv;
	const struct config *cfg = l->cfg;
	uint32_t total = atomic_fetch_add_explicit(&srv->nconns, 1, memory_order_relaxed) + 1;
	uint32_t per_ip = atomic_fetch_add_explicit(&srv->ipcount[c->ip_slot], 1,
						    memory_order_relaxed) + 1;
	if (total > cfg->max_connections)
		c->limit = CONN_LIMIT_TOTAL;
	else if (per_ip > cfg->max_connections_per_ip)
		c->limit = CONN_LIMIT_PER_IP;

	LOG_AT(&l->log, LOG_INFO, c->sid, "connect", "listener=%s peer=%s%s", lr->lc->name,
	       c->peer_str, c->limit == CONN_LIMIT_TOTAL ? " over=max_connections" :
	       c->limit == CONN_LIMIT_PER_IP ? " over=max_connections_per_ip" : "");
	int rc = c->ops->open(c);
	if (c->closing)
		return;
	if (rc < 0) {
		conn_finish_close(c, CONN_CLOSE_LOCAL);
		return;
	}
	arm_recv(c);
}

/* ---- dispatch ---------------------------------------------------------- */

static void on_msg(struct loop *l, uint32_t kind, uint64_t payload)
{
	if (kind >= LOOP_MSG_KINDS || !l->msg_fns[kind]) {
		LOG_AT(&l->log, LOG_WARN, 0, "msg-unknown", "kind=%u", kind);
		return;
	}
	l->msg_fns[kind](l, kind, payload);
}

static void dispatch(struct loop *l, struct io_uring_cqe *cqe)
{
	struct udata u;
	struct conn *c;

	if (udata_decode(cqe->user_data, &u)) {
		LOG_AT(&l->log, LOG_ERROR, 0, "cqe-unknown", "user_data=%llx res=%d",
		       (unsigned long long)cqe->user_data, cqe->res);
		return;
	}
	switch (u.op) {
	case UDATA_ACCEPT:
		on_accept(l, u.idx, u.gen, cqe->res);
		return;
	case UDATA_TICK:
		on_tick(l);
		return;
	case UDATA_LOGWRITE:
		if (cqe->res > 0 && (size_t)cqe->res < l->log_left) {
			l->log_p += cqe->res;
			l->log_left -= (size_t)cqe->res;
			struct io_uring_sqe *sqe = get_sqe(l);
			io_uring_prep_write(sqe, STDERR_FILENO, l->log_p, (unsigned)l->log_left, -1);
			io_uring_sqe_set_data64(sqe, udata_conn(UDATA_LOGWRITE, 0, 0));
			return;
		}
		l->log_inflight = false;
		return;
	case UDATA_CB: {
		struct loop_cb *cb = (struct loop_cb *)(uintptr_t)u.payload;
		cb->fn(l, cb, cqe->res, cqe->flags);
		return;
	}
	case UDATA_MSG:
		on_msg(l, (uint32_t)cqe->res, u.payload);
		return;
	case UDATA_IGNORE:
		if (cqe->res < 0 && cqe->res != -ENOENT && cqe->res != -EALREADY)
			LOG_AT(&l->log, LOG_DEBUG, 0, "op-failed", "error=%s", strerror(-cqe->res));
		return;
	default:
		break;
	}
	c = slot_get(l, u.idx, u.gen);
	if (!c) {
		/* A buffer may ride on a completion of a freed connection only
		 * if the rules above were broken; give it back regardless. */
		uint16_t bid;
		if (bufring_take(&l->br, cqe->flags, &bid))
			bufring_put(&l->br, bid);
		LOG_AT(&l->log, LOG_ERROR, 0, "cqe-stale", "op=%d idx=%u", u.op, u.idx);
		return;
	}
	switch (u.op) {
	case UDATA_RECV:
		on_recv(c, cqe->res, cqe->flags);
		break;
	case UDATA_SEND:
		on_send(c, cqe->res);
		break;
	case UDATA_CLOSE:
	case UDATA_CANCEL:
		c->inflight--;
		conn_maybe_free(c);
		break;
	default:
		LOG_AT(&l->log, LOG_ERROR, 0, "cqe-unexpected", "op=%d", u.op);
		break;
	}
}

/* Writes the lines of this iteration through the ring. A write to a
 * regular file cannot be done without blocking (ext4 has no non-blocking
 * buffered append), so io_uring hands it to one of its worker threads: two
 * context switches and an extra wakeup of the loop per write, several times
 * the cost of the write itself, and with one write per iteration that was
 * up to three per IMAP login. So to a file, writes are paced: the first
 * line after a quiet LOOP_LOG_PACE_MS is written at once, later ones wait
 * until LOOP_LOG_PACE_MS after the previous write or until
 * LOOP_LOG_PACE_BYTES are pending (loop_iterate() wakes up for it). A pipe
 * or socket (journald) takes the write inline: written every iteration. */
static void flush_log_now(struct loop *l, bool force)
{
	const char *p;
	size_t n;

	if (l->log_inflight || l->log.direct || l->log.fill_len == 0)
		return;
	if (l->log_paced && !force && l->now_ms < l->log_last_ms + LOOP_LOG_PACE_MS &&
	    l->log.fill_len < LOOP_LOG_PACE_BYTES)
		return;
	n = log_take(&l->log, &p);
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_write(sqe, STDERR_FILENO, p, (unsigned)n, -1);
	io_uring_sqe_set_data64(sqe, udata_conn(UDATA_LOGWRITE, 0, 0));
	l->log_inflight = true;
	l->log_p = p;
	l->log_left = n;
	l->log_last_ms = l->now_ms;
}

static void flush_log(struct loop *l)
{
	flush_log_now(l, false);
}

/* One iteration: run deferred work, submit, wait, handle a batch. Returns
 * the number of completions handled. */
static unsigned loop_iterate(struct loop *l, uint32_t wait_ms)
{
	struct io_uring_cqe *cqe;
	unsigned head, count = 0;
	int rc;

	run_deferred(l);
	flush_conns(l);
	flush_log(l);
	if (l->log.fill_len && !l->log_inflight && !l->log.direct) {
		/* Paced lines: wake up when they are due. */
		uint64_t due = l->log_last_ms + LOOP_LOG_PACE_MS;
		uint32_t ms = due > l->now_ms ? (uint32_t)(due - l->now_ms) : 1;
		if (wait_ms == 0 || ms < wait_ms)
			wait_ms = ms;
	}
	if (l->wheel.count || l->stopping || l->accept_backoff)
		arm_tick(l);
	if (l->ndeferred) {
		rc = io_uring_submit_and_get_events(&l->ring);
	} else if (wait_ms) {
		struct __kernel_timespec ts = { .tv_sec = wait_ms / 1000,
						.tv_nsec = (long long)(wait_ms % 1000) * 1000000 };
		rc = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
	} else {
		rc = io_uring_submit_and_wait(&l->ring, 1);
	}
	if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EAGAIN && rc != -EBUSY)
		LOG_AT(&l->log, LOG_ERROR, 0, "wait", "error=%s", strerror(-rc));
	l->now_ms = mono_ms();
	io_uring_for_each_cqe(&l->ring, head, cqe) {
		dispatch(l, cqe);
		count++;
	}
	io_uring_cq_advance(&l->ring, count);
	return count;
}

/* ---- shutdown ---------------------------------------------------------- */

static void stop_timer_fired(struct timer *t, void *arg)
{
	struct loop *l = arg;
	(void)t;
	LOG_AT(&l->log, LOG_INFO, 0, "shutdown-grace-over", "closing=%u holds=%u", l->nconns,
	       l->holds);
	l->grace_over = true;
	maybe_exit(l);
	for (uint32_t i = 0; i < l->nslots; i++) {
		struct conn *c = l->slots[i].c;
		if (c && !c->closed)
			conn_finish_close(c, CONN_CLOSE_SHUTDOWN);
	}
}

static void on_shutdown_msg(struct loop *l, uint32_t kind, uint64_t payload)
{
	(void)kind;
	(void)payload;
	if (l->stopping)
		return;
	l->stopping = true;
	for (size_t i = 0; i < l->nlisteners; i++) {
		struct listener_rt *lr = &l->listeners[i];
		if (lr->closed)
			continue;
		for (uint32_t k = 0; k < LISTENER_ACCEPTS; k++) {
			if (!lr->acc[k].armed)
				continue;
			struct io_uring_sqe *sqe = get_sqe(l);
			io_uring_prep_cancel64(sqe, udata_conn(UDATA_ACCEPT, (uint32_t)i, k), 0);
			io_uring_sqe_set_data64(sqe, udata_conn(UDATA_IGNORE, 0, 0));
		}
		lr->closed = true;
	}
	/* Closing the listening sockets happens in loop_teardown: the cancel
	 * above stops accepting, and the kernel keeps queueing on the other
	 * loops' sockets of the same group until they stop too. */
	LOG_AT(&l->log, LOG_INFO, 0, "shutdown", "connections=%u", l->nconns);
	const struct config *cfg = l->cfg;
	for (uint32_t i = 0; i < l->nslots; i++) {
		struct conn *c = l->slots[i].c;
		if (!c || c->closing)
			continue;
		if (c->ops->shutdown)
			c->ops->shutdown(c);
		else
			conn_close(c, true);
	}
	timer_init(&l->stop_timer, stop_timer_fired, l);
	timer_arm(&l->wheel, &l->stop_timer, l->now_ms, cfg ? cfg->shutdown_grace_ms : 10000);
	maybe_exit(l);
}

static void on_reload_msg(struct loop *l, uint32_t kind, uint64_t payload)
{
	(void)kind;
	const struct config *cfg = server_config(l->srv);
	if (cfg->nlisteners == l->nlisteners) {
		for (size_t i = 0; i < l->nlisteners; i++) {
			l->listeners[i].lc = &cfg->listeners[i];
			l->listeners[i].ops = l->srv->app.ops_for(l->srv, &cfg->listeners[i]);
		}
	}
	l->cfg = cfg;
	enum log_level lv = l->log.level;
	log_level_parse(cfg->log_level, &lv);
	l->log.level = lv;
	atomic_store_explicit(&l->reload_seen, payload, memory_order_release);
	LOG_AT(&l->log, LOG_INFO, 0, "reloaded", "source=%s", cfg->source);
}

/* ---- setup ------------------------------------------------------------- */

static int ring_init(struct loop *l)
{
	struct io_uring_params p;
	int rc;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
		  IORING_SETUP_SUBMIT_ALL;
	p.cq_entries = LOOP_CQ_ENTRIES;
	rc = io_uring_queue_init_params(LOOP_SQ_ENTRIES, &l->ring, &p);
	if (rc)
		return rc;
	l->ring_ok = true;
	l->ring_fd = l->ring.ring_fd;
	l->free_head = UINT32_MAX;
	l->now_ms = mono_ms();
	timer_wheel_init(&l->wheel, LOOP_TICK_MS, l->now_ms);
	return 0;
}

int loop_setup(struct loop *l, int id, struct server *srv, const int *fds, size_t n)
{
	int rc;

	l->id = id;
	l->srv = srv;
	l->cfg = srv ? server_config(srv) : NULL;
	enum log_level lv = LOG_INFO;
	if (l->cfg)
		log_level_parse(l->cfg->log_level, &lv);
	if ((rc = log_init(&l->log, lv, id, false)))
		return rc;
	struct stat st;
	l->log_paced = fstat(STDERR_FILENO, &st) == 0 && S_ISREG(st.st_mode);
	if ((rc = ring_init(l)))
		return rc;
	if ((rc = bufring_init(&l->br, &l->ring, 0,
			       l->cfg ? l->cfg->recv_buffers : CONFIG_RECV_BUFFERS_DEFAULT,
			       LOOP_BUF_SIZE)))
		return rc;
	l->msg_fns[LOOP_MSG_SHUTDOWN] = on_shutdown_msg;
	l->msg_fns[LOOP_MSG_RELOAD] = on_reload_msg;
	if (n) {
		l->listeners = calloc(n, sizeof(*l->listeners));
		if (!l->listeners)
			return -ENOMEM;
	}
	l->nlisteners = n;
	for (size_t i = 0; i < n; i++) {
		struct listener_rt *lr = &l->listeners[i];
		lr->fd = fds[i];
		lr->index = i;
		lr->lc = &l->cfg->listeners[i];
		lr->ops = srv->app.ops_for(srv, lr->lc);
		arm_accepts(l, (uint32_t)i);
	}
	return 0;
}

void loop_run(struct loop *l)
{
	while (!l->exit)
		loop_iterate(l, 0);
	/* Let the last log lines out. */
	flush_log_now(l, true);
	for (int i = 0; i < 100 && (l->log_inflight || l->log.fill_len); i++) {
		loop_iterate(l, 10);
		flush_log_now(l, true);
	}
}

void loop_teardown(struct loop *l)
{
	for (size_t i = 0; i < l->nlisteners; i++)
		if (l->listeners[i].fd >= 0)
			close(l->listeners[i].fd);
	free(l->listeners);
	l->listeners = NULL;
	l->nlisteners = 0;
	if (l->ring_ok) {
		bufring_fini(&l->br, &l->ring);
		io_uring_queue_exit(&l->ring);
		l->ring_ok = false;
	}
	free(l->slots);
	free(l->deferred);
	l->slots = NULL;
	l->deferred = NULL;
	log_fini(&l->log);
}

int loop_new_standalone(struct loop **loop_r)
{
	struct loop *l = calloc(1, sizeof(*l));
	int rc;

	if (!l)
		return -ENOMEM;
	if ((rc = log_init(&l->log, LOG_WARN, -1, true)) || (rc = ring_init(l)) ||
	    (rc = bufring_init(&l->br, &l->ring, 0, 16, 4096))) {
		loop_teardown(l);
		free(l);
		return rc;
	}
	*loop_r = l;
	return 0;
}

int loop_run_until(struct loop *l, const bool *done, uint32_t timeout_ms)
{
	uint64_t deadline = mono_ms() + timeout_ms;
	for (;;) {
		/* Deferred work (group commit) may be what sets *done. */
		run_deferred(l);
		if (*done)
			break;
		uint64_t now = mono_ms();
		if (timeout_ms && now >= deadline)
			return -ETIMEDOUT;
		loop_iterate(l, timeout_ms ? (uint32_t)(deadline - now) : 1000);
	}
	/* Submit what the last callbacks queued. */
	run_deferred(l);
	io_uring_submit(&l->ring);
	return 0;
}

void loop_free(struct loop **loop_r)
{
	if (!*loop_r)
		return;
	/* Let operations still in flight (a store's queued close or unlink)
	 * complete, so their callbacks free what they own: turn the loop
	 * until it has been quiet for a moment (bounded). */
	for (int i = 0; i < 200; i++)
		if (loop_iterate(*loop_r, 20) == 0 && (*loop_r)->ndeferred == 0)
			break;
	loop_teardown(*loop_r);
	free(*loop_r);
	*loop_r = NULL;
}
