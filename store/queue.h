/* queue.h - the durable outbound queue (docs/queue.md).
 *
 * One message is two files under DATA/queue/:
 *   <id>.msg  immutable: the envelope (sender, recipients, arrival) and the
 *             message bytes; written as <id>.msg.tmp, fdatasynced, renamed,
 *             and the directory fsynced (group commit per loop) before the
 *             submitter's callback reports success.
 *   <id>.st   the per-recipient delivery state (state, attempts, next
 *             attempt, last reply), replaced atomically after each attempt.
 * A message whose recipients are all final is removed (both files).
 *
 * Threading: one struct queue per process. queue_submit(), queue_state_write()
 * and queue_remove() run on any loop through that loop's ring; callbacks run
 * on the same loop, never inside the call. queue_scan() and the queue_cli_*
 * helpers block (startup and command-line tools only). */
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

enum queue_rcpt_state {
	QUEUE_RCPT_PENDING = 0, /* to be (re)tried at next_ms */
	QUEUE_RCPT_SENT = 1,    /* accepted by the remote host */
	QUEUE_RCPT_FAILED = 2,  /* permanent failure or expired; bounced */
};

struct queue_rcpt {
	char *addr;
	enum queue_rcpt_state state;
	uint32_t attempts;
	int64_t next_ms;             /* wall clock (ms since the epoch) */
	char last[QUEUE_REPLY_MAX];  /* last reply or error, one line */
};

/* One queued message, in memory. The runner owns it after it is handed over. */
struct queue_entry {
	char id[QUEUE_ID_MAX];
	char *from;                 /* "" for the null sender */
	int64_t created_ms;         /* arrival, wall clock */
	struct queue_rcpt *rcpts;
	size_t nrcpts;
	uint8_t *data;              /* the message bytes (malloc'd) */
	size_t len;
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

/* Writes a new message durably. from: "" for the null sender. rcpts: n
 * addresses. data/len: the message (copied). cb(arg, res, id) runs on loop
 * once durable (res 0) or failed (negative errno; nothing is left behind
 * that a restart would deliver). Returns 0, or a negative errno (then cb
 * never runs). */
typedef void queue_submit_cb(void *arg, int res, const char *id);
int queue_submit(struct queue *q, struct loop *loop, const char *from,
		 const char *const *rcpts, size_t n, const void *data, size_t len,
		 queue_submit_cb *cb, void *arg);

/* Replaces <id>.st with e's recipient states. cb(arg, res) (may be NULL). */
typedef void queue_done_cb(void *arg, int res);
int queue_state_write(struct queue *q, struct loop *loop, const struct queue_entry *e,
		      queue_done_cb *cb, void *arg);
/* Removes both files of id. cb may be NULL. */
int queue_remove(struct queue *q, struct loop *loop, const char *id, queue_done_cb *cb,
		 void *arg);

/* Loads every queued message (blocking; startup). fn takes ownership of each
 * entry. Returns the number loaded or a negative errno. */
int queue_scan(struct queue *q, void (*fn)(void *arg, struct queue_entry *e), void *arg);

/* Command-line helpers on DATA (blocking). list: one line per recipient.
 * delete: removes the message (0, or -ENOENT). flush: asks the running
 * server to retry every pending recipient now (a flag file it polls). */
int queue_cli_list(const char *data_dir, FILE *out);
int queue_cli_delete(const char *data_dir, const char *id);
int queue_cli_flush(const char *data_dir);

/* Serializes / parses the state file text (exposed for tests). */
size_t queue_state_format(const struct queue_entry *e, char *buf, size_t cap);
int queue_state_parse(struct queue_entry *e, const char *text, size_t len);

#endif
