/* loop.h - one io_uring event loop per CPU core.
 *
 * A loop owns one ring (SINGLE_ISSUER, DEFER_TASKRUN), one SO_REUSEPORT
 * listening socket per configured port, one provided-buffer ring for
 * receives, a timer wheel and every connection it accepted. Nothing is shared
 * between loops except the read-only configuration snapshot and the
 * per-address connection counters; loops talk to each other only through
 * IORING_OP_MSG_RING (loop_msg()).
 *
 * Every function here must be called from the loop's own thread unless it
 * says otherwise. */
#ifndef RINGMAIL_CORE_LOOP_H
#define RINGMAIL_CORE_LOOP_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/span.h"

struct loop;
struct conn;
struct server;

/* A completion target for any operation a module submits itself (file I/O
 * for the store, MSG_RING from a worker thread). Embed it in your request;
 * fn runs on the loop thread with the CQE's res and flags. */
struct loop_cb {
	void (*fn)(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags);
};

/* Returns an SQE of this loop's ring whose completion calls cb->fn. It never
 * returns NULL: when the SQ is full it submits first. The SQE is submitted at
 * the end of the current loop tick at the latest. */
struct io_uring_sqe *loop_sqe(struct loop *loop, struct loop_cb *cb);

/* The user_data value that routes a CQE to cb, for a MSG_RING sent to this
 * loop's ring from another thread's ring (loop_ring_fd()). Thread-safe. */
uint64_t loop_cb_udata(struct loop_cb *cb);

/* The file descriptor of the loop's ring, a MSG_RING target. Thread-safe. */
int loop_ring_fd(const struct loop *loop);

/* This loop's index, 0..nloops-1. */
int loop_id(const struct loop *loop);

/* Runs fn(arg) once after the current batch of completions has been handled,
 * before the loop waits again: group commit hangs off this. Returns 0 or
 * -ENOMEM. */
int loop_defer(struct loop *loop, void (*fn)(struct loop *, void *), void *arg);

/* Background work that outlives the connection that started it (a
 * deleted folder's files being unlinked): at shutdown the loop exits only
 * once every hold is released, or when the shutdown grace is over. */
void loop_hold(struct loop *loop);
void loop_release(struct loop *loop);

/* Milliseconds of a monotonic clock, cached once per tick. */
uint64_t loop_now_ms(const struct loop *loop);

/* The server this loop belongs to (configuration, counters, other loops);
 * NULL for a standalone loop. */
struct server *loop_server(const struct loop *loop);
/* The loop's log (see core/log.h). */
struct log *loop_log(struct loop *loop);

/* Cross-loop messages. kind selects a handler set with loop_on_msg() on the
 * target; payload is at most 56 bits (a pointer fits). Returns 0 or a
 * negative errno. The handler runs on the target loop's thread. */
enum {
	LOOP_MSG_SHUTDOWN = 0, /* core: stop accepting, drain, exit */
	LOOP_MSG_RELOAD = 1,   /* core: pick up the new configuration */
	LOOP_MSG_USER = 2,     /* first kind free for other modules */
	LOOP_MSG_KINDS = 16,
};
typedef void (*loop_msg_fn)(struct loop *loop, uint32_t kind, uint64_t payload);
int loop_msg(struct loop *from, int to_loop, uint32_t kind, uint64_t payload);
void loop_on_msg(struct loop *loop, uint32_t kind, loop_msg_fn fn);

/* ---- loops without a server (tests, command-line tools) ------------ */

/* Creates a loop on the calling thread with no listeners, for unit tests and
 * tools such as fsck that drive store I/O through a ring. Returns 0 or a
 * negative errno (-ENOSYS when io_uring is unavailable). */
int loop_new_standalone(struct loop **loop_r);
/* Runs the loop until *done is true or timeout_ms passed (0: no limit).
 * Returns 0, or -ETIMEDOUT. */
int loop_run_until(struct loop *loop, const bool *done, uint32_t timeout_ms);
/* Frees a standalone loop and sets *loop_r to NULL. */
void loop_free(struct loop **loop_r);

/* ---- connections ---------------------------------------------------- */

/* Why a connection ends; passed to conn_ops.close and logged. */
enum conn_close_reason {
	CONN_CLOSE_PEER,        /* EOF from the client */
	CONN_CLOSE_ERROR,       /* socket error */
	CONN_CLOSE_LOCAL,       /* the session asked for it */
	CONN_CLOSE_TIMEOUT,     /* a session timer expired and closed it */
	CONN_CLOSE_SHUTDOWN,    /* server shutdown grace period ended */
	CONN_CLOSE_LIMIT,       /* a memory or input limit was exceeded */
};

const char *conn_close_reason_str(enum conn_close_reason r);

/* What a protocol plugs into a listener. Every callback runs on the loop
 * thread that accepted the connection. */
struct conn_ops {
	/* After accept. Send a greeting here. Return 0, or a negative errno to
	 * close at once. */
	int (*open)(struct conn *c);
	/* Bytes arrived; in is valid only during the call. Return how many
	 * bytes were consumed (the rest is kept and offered again, with new
	 * bytes appended), or a negative errno to close. Consuming 0 bytes of a
	 * full pending buffer closes the connection (CONN_CLOSE_LIMIT). */
	ssize_t (*data)(struct conn *c, struct span in);
	/* The timer set with conn_set_timer() fired. Optional: without it
	 * the connection is closed with CONN_CLOSE_TIMEOUT. */
	void (*timer)(struct conn *c);
	/* Everything queued has been written to the socket. Optional. */
	void (*drained)(struct conn *c);
	/* The connection is going away; free the session here. Called once. */
	void (*close)(struct conn *c, enum conn_close_reason reason);
	/* The server is shutting down: finish politely (e.g. SMTP 421). Optional. */
	void (*shutdown)(struct conn *c);
};

/* Queues bytes for sending (copied). Returns 0, or -ENOBUFS when the send
 * queue is over its limit (the connection is then closed). */
int conn_send(struct conn *c, const void *p, size_t len);
/* Queues len bytes that are in the pipe pipe_fd (its read end) for sending
 * with splice(2) through the ring, in order with conn_send()'s bytes: no
 * copy through user space. The caller puts the bytes in the pipe first (all
 * len of them must be there) and keeps pipe_fd open until
 * conn_splice_pending() is 0 or the connection's close() callback ran; the
 * connection never closes it. A socket that is full makes the splice wait
 * for POLLOUT (the socket is non-blocking: no kernel worker is held by a
 * client that does not read). The bytes count in conn_send_pending() and
 * against send_queue_max. Returns 0, -EPIPE when closing, -ENOBUFS over
 * the limit (the connection is then closed) or -ENOMEM. */
int conn_send_splice(struct conn *c, int pipe_fd, size_t len);
/* Bytes queued with conn_send_splice() and not yet sent: 0 means no pipe
 * bytes are left to the connection. */
size_t conn_splice_pending(const struct conn *c);
/* printf into the send queue. Same returns as conn_send(). */
int conn_printf(struct conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Closes the connection; pending output is flushed first when flush is set.
 * Callbacks stop at once; close() runs later from the loop, never from
 * inside this call, so the caller may go on using its session memory until
 * it returns to the engine. */
void conn_close(struct conn *c, bool flush);
/* Arms the connection's timer ms from now (0 disarms). One timer per conn. */
void conn_set_timer(struct conn *c, uint32_t ms);
/* Stops delivering data until conn_resume() (backpressure while a store
 * write is in flight). Bytes already received are kept. After a resume,
 * data() is called once from the loop, with the pending bytes or with an
 * empty span when there are none (layers above may hold bytes of their
 * own). */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
/* Bytes queued and not yet written. */
size_t conn_send_pending(const struct conn *c);

void *conn_session(const struct conn *c);
void conn_set_session(struct conn *c, void *session);
struct loop *conn_loop(const struct conn *c);
/* The listener's configured row (struct listener_config, core/config.h). */
const struct listener_config *conn_listener(const struct conn *c);
/* The configuration snapshot the connection was accepted under: it stays
 * valid for the connection's life, across reloads. */
const struct config *conn_config(const struct conn *c);
/* A process-unique session id for logs. */
uint64_t conn_sid(const struct conn *c);
/* The peer address as text ("192.0.2.1" or "2001:db8::1"); valid for the
 * connection's life. */
const char *conn_peer(const struct conn *c);
const struct sockaddr *conn_peer_addr(const struct conn *c);
/* Which connection limit this connection is over, when open() runs: the
 * session then sends its protocol's "too many connections" reply and closes
 * (flushing). CONN_LIMIT_NONE otherwise. */
enum conn_limit { CONN_LIMIT_NONE, CONN_LIMIT_TOTAL, CONN_LIMIT_PER_IP, CONN_LIMIT_SHUTDOWN };
enum conn_limit conn_limit_hit(const struct conn *c);
/* The loop's log, for sessions: LOG_AT(conn_log(c), LOG_INFO, conn_sid(c), ...). */
struct log *conn_log(const struct conn *c);
int conn_fd(const struct conn *c);

#endif
