/* loop_private.h - internals shared by loop.c and server.c. */
#ifndef RINGMAIL_CORE_LOOP_PRIVATE_H
#define RINGMAIL_CORE_LOOP_PRIVATE_H

#include <pthread.h>
#include <netinet/in.h>

#include "core/bufring.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/timer.h"

#define LOOP_SQ_ENTRIES 4096u
#define LOOP_CQ_ENTRIES 16384u
#define LOOP_TICK_MS 100u
/* When stderr is a regular file, log writes are paced: see flush_log(). */
#define LOOP_LOG_PACE_MS 2u
#define LOOP_LOG_PACE_BYTES (16u * 1024u)
#define LOOP_BUF_SIZE (16u * 1024u) /* one TLS record fits */
#define CONN_INPUT_MAX (256u * 1024u) /* unconsumed input kept per connection */
#define CONN_OUT_CHUNK 4096u
/* A write bigger than CONN_OUT_CHUNK is bulk (a body, TLS records of
 * one): its chunk gets room for more like it, so a FETCH's 64 KiB read,
 * four records over TLS, leaves in one send instead of four. */
#define CONN_OUT_BULK (128u * 1024u)

/* Accepts in flight per listener. Each is a single-shot accept with its
 * own address buffer: the kernel hands over the peer's address with the
 * socket, where a multishot accept (which cannot: one buffer for all)
 * needed a getpeername(2) per connection. */
#define LISTENER_ACCEPTS 4

struct accept_slot {
	union {
		struct sockaddr sa;
		struct sockaddr_in sin;
		struct sockaddr_in6 sin6;
	} addr;
	socklen_t len;
	bool armed;
};

struct listener_rt {
	int fd;
	size_t index;                   /* row in the configuration */
	const struct listener_config *lc;
	const struct conn_ops *ops;
	struct accept_slot acc[LISTENER_ACCEPTS];
	bool closed;
	uint64_t err_logged_ms;         /* when accept-error was last logged */
	uint32_t err_unlogged;          /* accept errors since then, not logged */
};

/* One piece of output: copied bytes (data[off..len), cap bytes room), or,
 * when pipe_fd >= 0, len bytes waiting in that pipe, spliced to the socket
 * (off of them already sent; no data). */
struct outchunk {
	struct outchunk *next;
	uint32_t off, len, cap;
	int pipe_fd;
	uint8_t data[];
};

struct conn {
	struct loop *loop;
	const struct conn_ops *ops;
	const struct listener_config *lc;
	const struct config *cfg;
	void *session;
	uint64_t sid;
	int fd;
	uint32_t idx, gen;
	uint32_t ip_slot;
	uint8_t inflight;        /* recv + send + close + cancel not yet completed */
	bool recv_armed;
	bool recv_cancelled;     /* the armed recv's cancel is submitted */
	bool send_inflight;
	bool send_poll;          /* the in-flight UDATA_SEND is a POLLOUT wait */
	bool paused;
	bool eof_pending;        /* the peer's EOF arrived while paused */
	bool closing;            /* no more callbacks but close() */
	bool closed;             /* close() called, fd close submitted */
	bool flush_close;        /* close once the send queue drains */
	bool close_later;        /* close from the loop (conn_close_later) */
	bool on_flush_list;
	bool resume_pending;
	uint8_t limit;           /* enum conn_limit */
	uint8_t close_reason;
	struct conn *flush_next;
	struct timer timer;
	uint8_t *in;             /* unconsumed input, NULL when empty */
	uint32_t in_off, in_len, in_cap;
	struct outchunk *out_head, *out_tail;
	size_t out_bytes;        /* queued and not yet sent, spliced bytes too */
	size_t splice_bytes;     /* of which in splice chunks */
	union {
		struct sockaddr sa;
		struct sockaddr_in sin;
		struct sockaddr_in6 sin6;
	} peer;
	char peer_str[48];
};

struct conn_slot {
	struct conn *c;
	uint32_t gen;
	uint32_t next_free;
};

struct deferred {
	void (*fn)(struct loop *, void *);
	void *arg;
};

struct loop {
	struct io_uring ring;
	bool ring_ok;
	int id;
	int ring_fd;
	struct server *srv;
	_Atomic uint64_t reload_seen; /* the last reload generation handled */
	pthread_t thread;
	int start_rc;
	struct log log;
	bool log_inflight;
	bool log_paced;          /* stderr is a regular file */
	uint64_t log_last_ms;    /* when the last write was submitted */
	const char *log_p;
	size_t log_left;
	struct bufring br;
	struct listener_rt *listeners;
	size_t nlisteners;
	struct conn_slot *slots;
	uint32_t nslots, free_head;
	uint32_t nconns;
	uint64_t sid_counter;
	struct timer_wheel wheel;
	bool tick_armed;
	struct __kernel_timespec tick_ts;
	uint64_t now_ms;
	struct deferred *deferred;
	size_t ndeferred, deferred_cap;
	struct conn *flush_list;
	loop_msg_fn msg_fns[LOOP_MSG_KINDS];
	bool stopping;
	bool exit;
	bool grace_over;              /* shutdown: holds no longer wait */
	uint32_t holds;               /* loop_hold() not yet released */
	bool accept_backoff;
	struct timer stop_timer;
	const struct config *cfg;     /* the snapshot new connections use */
};

/* Creates the loop's ring, buffer ring and listeners (on the loop thread:
 * SINGLE_ISSUER binds the ring to its creator). */
int loop_setup(struct loop *loop, int id, struct server *srv, const int *listen_fds,
	       size_t nlisteners);
/* Runs until the loop has drained after LOOP_MSG_SHUTDOWN. */
void loop_run(struct loop *loop);
void loop_teardown(struct loop *loop);

#endif
