/* queue.h - the durable outbound queue (docs/queue.md).
 *
 * One message is two files under DATA/queue/:
 *   <id>.msg  immutable once renamed: a fixed-width first line (sizes), the
 *             envelope (sender, recipients, DSN parameters, arrival), the
 *             message bytes, then the DKIM-Signature field made while the
 *             message streamed in. Written as <id>.msg.tmp while the message
 *             arrives (bounded buffer, writes through the ring), then
 *             fdatasynced, renamed, and the directory fsynced (group commit
 *             per loop) before the submitter's callback reports success.
 *   <id>.st   the per-recipient delivery state (state, attempts, next
 *             attempt, last reply), replaced atomically after each attempt.
 * A message whose recipients are all final is removed (both files).
 * In memory only the metadata is kept (struct queue_entry); the message
 * bytes are read back from <id>.msg in bounded chunks when sent.
 *
 * Threading: one struct queue per process. queue_spool_*(), queue_submit(),
 * queue_state_write() and queue_remove() run on any loop through that loop's
 * ring; callbacks run on the same loop, never inside the call. queue_scan()
 * and the queue_cli_* helpers block (startup and command-line tools only). */
#ifndef RINGMAIL_STORE_QUEUE_H
#define RINGMAIL_STORE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct loop;
struct queue;

#define QUEUE_ID_MAX 48
#define QUEUE_REPLY_MAX 512
#define QUEUE_XTEXT_MAX 512       /* ENVID / ORCPT as received (RFC 3461 xtext) */
#define QUEUE_SPOOL_BUF (64 * 1024) /* bytes gathered per write while spooling */
#define QUEUE_DKIM_MAX (16 * 1024)  /* the stored DKIM-Signature field */

enum queue_rcpt_state {
	QUEUE_RCPT_PENDING = 0, /* to be (re)tried at next_ms */
	QUEUE_RCPT_SENT = 1,    /* accepted by the remote host */
	QUEUE_RCPT_FAILED = 2,  /* permanent failure or expired; bounce due */
	QUEUE_RCPT_BOUNCED = 3, /* failed and its DSN is durable (or none due) */
};

/* RFC 3461 NOTIFY; 0 = not given (failures are reported). */
enum {
	QUEUE_NOTIFY_NEVER = 1,
	QUEUE_NOTIFY_SUCCESS = 2,
	QUEUE_NOTIFY_FAILURE = 4,
	QUEUE_NOTIFY_DELAY = 8,
};

/* RFC 3461 RET. */
enum queue_ret { QUEUE_RET_DEFAULT = 0, QUEUE_RET_HDRS = 1, QUEUE_RET_FULL = 2 };

/* One recipient as the submitter gives it. */
struct queue_rcpt_in {
	const char *addr;
	unsigned notify;    /* QUEUE_NOTIFY_* bits, 0 when not given */
	const char *orcpt;  /* "rfc822;addr" as received (xtext), or NULL */
};

/* The envelope of a new message. */
struct queue_env {
	const char *id;      /* NULL: a new id; else this one (hex digits): a
			      * retry after a crash writes the same file */
	const char *from;    /* "" for the null sender */
	const char *envid;   /* RFC 3461 ENVID (xtext), or NULL */
	enum queue_ret ret;  /* what a bounce carries of the message */
	const struct queue_rcpt_in *rcpts;
	size_t nrcpts;
};

struct queue_rcpt {
	char *addr;
	char *orcpt;                 /* NULL when none */
	unsigned notify;
	enum queue_rcpt_state state;
	uint32_t attempts;
	int64_t next_ms;             /* wall clock (ms since the epoch) */
	bool delay_sent;             /* a DELAY DSN went out */
	char last[QUEUE_REPLY_MAX];  /* last reply or error, one line */
};

/* One queued message, in memory: metadata only. */
struct queue_entry {
	char id[QUEUE_ID_MAX];
	char *from;                 /* "" for the null sender */
	char *envid;                /* NULL when none */
	enum queue_ret ret;
	int64_t created_ms;         /* arrival, wall clock */
	struct queue_rcpt *rcpts;
	size_t nrcpts;
	uint64_t body_off;          /* the message bytes in <id>.msg */
	uint64_t body_len;
	char *dkim;                 /* "DKIM-Signature: ...\r\n" sent first, or NULL */
};

/* Frees e and everything it holds; NULL is fine. */
void queue_entry_free(struct queue_entry *e);

/* Called on the submitting loop once a new message is durable, before the
 * submitter's callback; takes ownership of e. Set once by the runner. */
typedef void queue_new_fn(void *arg, struct loop *loop, struct queue_entry *e);

/* Opens (creating) DATA/queue, removes leftover *.tmp files. Blocking:
 * startup only. nloops: how many loops will submit (per-loop group commit).
 * Returns 0 or a negative errno. */
int queue_new(const char *data_dir, unsigned nloops, struct queue **q_r);
void queue_free(struct queue **q_r);
void queue_set_on_new(struct queue *q, queue_new_fn *fn, void *arg);
/* The DATA/queue directory descriptor (openat "<id>.msg" read-only to read
 * a message back). Valid until queue_free(). */
int queue_dirfd(const struct queue *q);

/* ---- spooling a message as it arrives ------------------------------------ */

struct queue_spool;
typedef void queue_submit_cb(void *arg, int res, const char *id);
typedef void queue_ready_fn(void *arg);

/* Starts <id>.msg.tmp for env (copied). ready(arg) runs on loop when a
 * spool that asked the caller to wait (queue_spool_write() returned 1) can
 * take more; it may be NULL when the caller never waits. Returns 0 or a
 * negative errno (-EINVAL for a bad address, -E2BIG for a huge envelope). */
int queue_spool_begin(struct queue *q, struct loop *loop, const struct queue_env *env,
		      queue_ready_fn *ready, void *arg, struct queue_spool **sp_r);
/* Appends message bytes (copied). Returns 0, 1 when the caller should stop
 * feeding until ready() (the bytes were taken; at most QUEUE_SPOOL_BUF plus
 * one chunk is held), or a negative errno (the spool failed; commit reports
 * it too). */
int queue_spool_write(struct queue_spool *sp, const void *p, size_t len);
/* Ends the message: dkim (a header field, or NULL) is stored after it and
 * sent first at every attempt. cb(arg, res, id) runs on the loop once the
 * file is durable (res 0; the runner got the entry first) or failed
 * (nothing is left behind). The spool is consumed either way. Returns 0,
 * or a negative errno (then cb never runs). */
int queue_spool_commit(struct queue_spool *sp, const char *dkim, queue_submit_cb *cb, void *arg);
/* Drops the message (the temporary file is removed); no callback runs.
 * Sets *sp_r to NULL; NULL is fine. */
void queue_spool_abort(struct queue_spool **sp_r);

/* Writes a whole message held in memory (a bounce): begin + write + commit,
 * with dkim (a header field, or NULL) as in queue_spool_commit(). cb may be
 * NULL. Same returns as queue_spool_commit(). */
int queue_submit(struct queue *q, struct loop *loop, const struct queue_env *env,
		 const void *data, size_t len, const char *dkim, queue_submit_cb *cb, void *arg);

/* As queue_submit(), but the new entry is not handed to the runner
 * (queue_new_fn): cb(arg, 0, e) gets it once durable and owns it; on
 * failure cb(arg, res, NULL). */
typedef void queue_held_cb(void *arg, int res, struct queue_entry *e);
int queue_submit_held(struct queue *q, struct loop *loop, const struct queue_env *env,
		      const void *data, size_t len, const char *dkim, queue_held_cb *cb,
		      void *arg);

/* Replaces <id>.st with e's recipient states. cb(arg, res) (may be NULL). */
typedef void queue_done_cb(void *arg, int res);
int queue_state_write(struct queue *q, struct loop *loop, const struct queue_entry *e,
		      queue_done_cb *cb, void *arg);
/* Removes both files of id. cb may be NULL. */
int queue_remove(struct queue *q, struct loop *loop, const char *id, queue_done_cb *cb,
		 void *arg);

/* Loads every queued message's metadata (blocking; startup). fn takes
 * ownership of each entry. Returns the number loaded or a negative errno. */
int queue_scan(struct queue *q, void (*fn)(void *arg, struct queue_entry *e), void *arg);

/* Command-line helpers on DATA (blocking). list: one line per recipient.
 * delete: removes the message (0; -EINVAL: id is not a queue id, lowercase
 * hex; -ENOENT: no such message in the queue). flush: asks the running
 * server to retry every pending recipient now (a flag file it polls). */
int queue_cli_list(const char *data_dir, FILE *out);
int queue_cli_delete(const char *data_dir, const char *id);
int queue_cli_flush(const char *data_dir);

/* Serializes / parses the state file text (exposed for tests). */
size_t queue_state_format(const struct queue_entry *e, char *buf, size_t cap);
int queue_state_parse(struct queue_entry *e, const char *text, size_t len);

#endif
