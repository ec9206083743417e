/* loadgen.h - the load generators' client connections on io_uring
 * (imapload, tls_bench, pop3_bench; its TLS over memory also smtpload;
 * docs/bench.md).
 *
 * One process, one ring, no threads. Each connection has at most one
 * operation in flight (a connect, a send or a recv) and one deadline,
 * enforced from a 20 ms tick by cancelling that operation. With TLS every
 * connection has a WOLFSSL of one shared WOLFSSL_CTX (the bundled build, no
 * certificate verification: the client is not what is measured, one key
 * share), driven as a filter over memory: wolfSSL's I/O callbacks read the
 * ciphertext the ring received and append what they write to the
 * connection's send buffer.
 *
 * The protocol is the caller's: it embeds struct loadgen_conn first in its
 * own client struct, gets the plaintext through loadgen_ops.data, queues
 * commands with loadgen_send and ends a connection with loadgen_close (a
 * cycle done) or loadgen_fail (an error of a kind). */
#ifndef BENCH_LOADGEN_H
#define BENCH_LOADGEN_H

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common.h"

enum {
	LOADGEN_RBUF = 32768, /* a connection's receive buffer (ciphertext with TLS) */
	LOADGEN_TICK_MS = 20,
};

/* Error kinds. NO and BAD are the protocol's negative replies (IMAP's
 * tagged NO and BAD; POP3's -ERR is NO); a tool may rename them. */
enum loadgen_err {
	LG_ERR_REFUSED,
	LG_ERR_RESET,
	LG_ERR_TIMEOUT,
	LG_ERR_CLOSED,    /* EOF or close_notify where none was due */
	LG_ERR_BAD_REPLY, /* not what the protocol says comes next */
	LG_ERR_NO,
	LG_ERR_BAD,
	LG_ERR_TLS,       /* handshake or record failure */
	LG_ERR_OTHER,
	LG_ERR_MAX,
};

enum loadgen_phase {
	LG_FREE,      /* no connection */
	LG_CONNECT,   /* connect in flight */
	LG_HANDSHAKE, /* TLS handshake */
	LG_OPEN,      /* the protocol's: data flows through loadgen_ops.data */
	LG_CLOSING,   /* loadgen_close: close_notify going out, then done */
	LG_HOLD,      /* loadgen_hold: nothing in flight until the end */
};

struct loadgen_conn {
	int fd;
	enum loadgen_phase phase;
	unsigned idx;
	bool op_pending;   /* a connect, send or recv is in flight */
	bool timed_out;
	WOLFSSL *ssl;
	uint8_t *rbuf;     /* rbuf[in_off..in_len): received, not yet read */
	uint32_t in_off, in_len;
	uint8_t *out;      /* out[out_off..out_len): queued to send */
	size_t out_len, out_off, out_cap;
	uint64_t t_start_ns;  /* when loadgen_start began this connection */
	uint64_t deadline_ns; /* the operation in flight is cancelled after it */
	uint32_t gen;         /* bumped by every loadgen_start */
};

struct loadgen;

struct loadgen_ops {
	/* Before a connection starts: reset the client's protocol state.
	 * Optional. */
	void (*start)(struct loadgen *l, struct loadgen_conn *c);
	/* After wolfSSL_new: per-connection TLS settings (a session to resume).
	 * Optional. */
	void (*tls_new)(struct loadgen *l, struct loadgen_conn *c);
	/* Connected, and with TLS the handshake done: the phase is LG_OPEN.
	 * Queue a command, or nothing to wait for the server. Optional. */
	void (*opened)(struct loadgen *l, struct loadgen_conn *c);
	/* Plaintext from the server, in LG_OPEN or LG_CLOSING. The callback may
	 * fail, close or hold the connection; the engine feeds it no more of
	 * this batch when it did (loadgen_alive). */
	void (*data)(struct loadgen *l, struct loadgen_conn *c, const uint8_t *p, size_t n);
	/* A connection ended well after loadgen_close (its close_notify sent,
	 * or the server closed first). Then it is freed and, with restart,
	 * started again. Optional. */
	void (*done)(struct loadgen *l, struct loadgen_conn *c);
	/* Any connection is being freed (done, failed, or at the end), phase
	 * not yet LG_FREE. Optional. */
	void (*release)(struct loadgen *l, struct loadgen_conn *c);
};

struct loadgen_cfg {
	const char *prog;       /* for messages */
	const char *host, *port;
	int src_addrs;          /* bench_resolve's */
	bool tls;               /* implicit TLS */
	bool tls12;             /* TLS 1.2 instead of 1.3 (with session tickets) */
	int group;              /* key share: WOLFSSL_ECC_X25519 (0) or _SECP256R1 */
	unsigned nconns;
	size_t conn_size;       /* sizeof the caller's struct, loadgen_conn first */
	unsigned timeout_ms;
	const struct loadgen_ops *ops;
	void *user;
};

struct loadgen {
	const struct loadgen_cfg *cfg;
	const struct loadgen_ops *cb;
	void *user;
	struct io_uring ring;
	bool ring_ok;
	bool io_uring_unavailable; /* set by loadgen_init */
	bool failed;               /* the ring failed */
	WOLFSSL_CTX *ctx;          /* NULL without TLS */
	struct bench_addrs addr;
	uint8_t *conns;            /* nconns x conn_size */
	unsigned nconns;
	unsigned active;           /* connections not free */
	uint64_t launched;         /* connections started */
	uint64_t max_launch;       /* 0: no limit; else loadgen_start stops after it */
	bool restart;              /* a connection that ended starts again (from the tick too) */
	bool stop_at_end;          /* the tick sets stopping at end_ns */
	bool stopping;             /* no new connection */
	uint64_t end_ns, hard_end_ns;
	struct __kernel_timespec tick_ts;
	/* what the run measured: operations, their latency, errors */
	uint64_t ops;
	struct hist lat_us;
	uint64_t t_start_ns, t_end_ns;
	uint64_t errors[LG_ERR_MAX];
	const char *err_names[LG_ERR_MAX]; /* a NULL kind is never counted nor printed */
	char last_err[160];
	uint8_t plain[16384];      /* wolfSSL_read's output */
};

extern const char *const loadgen_err_default[LG_ERR_MAX];

/* Resolves the address, makes the TLS context, the connections and the
 * ring. Returns 0, or -1 after printing why (l->io_uring_unavailable when
 * io_uring is missing or forbidden). loadgen_destroy in either case. */
int loadgen_init(struct loadgen *l, const struct loadgen_cfg *cfg);
void loadgen_destroy(struct loadgen *l);

/* Connection i (0 <= i < nconns); valid until loadgen_destroy. */
struct loadgen_conn *loadgen_conn(struct loadgen *l, unsigned i);

/* Starts a connection on a free slot, unless stopping or max_launch is
 * reached (then it sets stopping). A socket that cannot be made counts an
 * error and leaves the slot free (the tick retries it with restart). */
void loadgen_start(struct loadgen *l, struct loadgen_conn *c);
/* Queues bytes to send (through wolfSSL with TLS); sent once the callback
 * returns. Returns false when they could not be queued. */
bool loadgen_send(struct loadgen *l, struct loadgen_conn *c, const void *p, size_t n);
/* loadgen_send without the engine: appends to c->out (through wolfSSL when
 * c->ssl). Returns false when the bytes could not be queued. */
bool loadgen_write(struct loadgen_conn *c, const void *p, size_t n);
/* The deadline of the next operations: now + timeout_ms. */
void loadgen_deadline(struct loadgen *l, struct loadgen_conn *c);
/* Ends the connection well: close_notify with TLS, then done. */
void loadgen_close(struct loadgen *l, struct loadgen_conn *c);
/* Keeps the connection open with nothing in flight (idle connections). */
void loadgen_hold(struct loadgen *l, struct loadgen_conn *c);
/* Counts an error (a timed-out connection's as a timeout), frees the
 * connection and, with restart, starts it again. what and detail make
 * last_err. */
void loadgen_fail(struct loadgen *l, struct loadgen_conn *c, enum loadgen_err k, const char *what,
		  const char *detail);
/* Counts an error without touching a connection. */
void loadgen_error(struct loadgen *l, enum loadgen_err k, const char *what, const char *detail);
/* True while connection c is the one of generation gen and not free. */
bool loadgen_alive(const struct loadgen_conn *c, uint32_t gen);

/* Arms the 20 ms tick (deadlines, restarts, the end). Once per run. */
void loadgen_arm_tick(struct loadgen *l);
/* Processes completions until cond(l) or hard_end_ns (then every
 * connection not free nor held counts a timeout and is freed). Returns
 * true when cond was met. */
bool loadgen_pump(struct loadgen *l, bool (*cond)(struct loadgen *l));
/* cond: stopping and no connection left. */
bool loadgen_all_done(struct loadgen *l);
/* cond: no connection left (loadgen_start all, then pump: a warm-up). */
bool loadgen_none_active(struct loadgen *l);

/* Records one operation of the run: its latency (microseconds since
 * since_ns) and t_end_ns. */
void loadgen_record(struct loadgen *l, uint64_t since_ns);
/* Errors summed over the kinds. */
uint64_t loadgen_errors_total(const struct loadgen *l);
/* Seconds from t_start_ns to t_end_ns (0 if none). */
double loadgen_seconds(const struct loadgen *l);
/* Human report lines: "  latency us  p50 .. p99 .. p999 .. max ..",
 * "  errors N kind n ... (last: ...)". */
void loadgen_print_lat_errors(const struct loadgen *l, FILE *out);
/* JSON members, each after a comma: "p50_us":..,"p99_us":..,"p999_us":..,
 * "max_us":..,"errors":{kind:n,...},"errors_total":N. */
void loadgen_json_lat_errors(const struct loadgen *l, FILE *out);

/* ---- TLS over a connection's buffers, for a tool with its own loop ----
 * (smtpload): it keeps a struct loadgen_conn per session for rbuf (of
 * LOADGEN_RBUF bytes, its own), in_off/in_len, out and ssl, receives the
 * ciphertext into rbuf[in_len..) and sends out[out_off..out_len). The
 * engine above drives the same functions. */

/* The client context of loadgen_init: TLS 1.3 (1.2 with tls12, with session
 * tickets), one key share (group, 0 for X25519), no certificate
 * verification, I/O callbacks over a loadgen_conn's buffers. NULL after
 * printing why (prog first). Free with wolfSSL_CTX_free. */
WOLFSSL_CTX *loadgen_tls_ctx(const char *prog, bool tls12, int group);
/* c->ssl = a connection of ctx over c's buffers (c must outlive it; free it
 * with wolfSSL_free). false on failure. */
bool loadgen_tls_new(WOLFSSL_CTX *ctx, struct loadgen_conn *c);

enum {
	LOADGEN_TLS_WANT = 0,    /* needs more ciphertext (anything to send is in out) */
	LOADGEN_TLS_DONE = 1,    /* handshake: complete */
	LOADGEN_TLS_CLOSED = -1, /* the server sent close_notify */
	LOADGEN_TLS_ERROR = -2,  /* a TLS error; err holds wolfSSL's text */
};

/* Drives the handshake over rbuf[in_off..in_len) (the first call writes
 * the ClientHello into out): LOADGEN_TLS_DONE, _WANT, or _ERROR with the
 * reason in err[0..errcap) (err may be NULL when errcap is 0). */
int loadgen_tls_handshake(struct loadgen_conn *c, char *err, size_t errcap);
/* Decrypts into buf[0..cap): the number of plaintext bytes (> 0),
 * LOADGEN_TLS_WANT when the ciphertext is used up, _CLOSED, or _ERROR with
 * the reason in err. */
int loadgen_tls_read(struct loadgen_conn *c, void *buf, size_t cap, char *err, size_t errcap);

/* ---- a line reader for line-based protocols (POP3, greetings) ---- */

enum { LOADGEN_LINE_KEPT = 1024 };

/* One reply: a status line, and with multi (set before the command) when
 * it starts with "+", the dot-terminated body after it (counted, not kept;
 * POP3 RETR). Zero-initialise, set multi, feed. */
struct loadgen_reply {
	bool multi;
	bool in_body;
	bool done;                      /* a whole reply has been read */
	char line[LOADGEN_LINE_KEPT];   /* the status line, NUL-terminated, CRLF cut */
	uint32_t line_len;
	uint8_t tail[5];                /* the body's last bytes, for "\r\n.\r\n" */
	uint64_t body_bytes;            /* after the status line, terminator included */
};

/* Feeds bytes; returns how many were consumed (all, or up to the end of
 * the reply when done is set). */
size_t loadgen_reply_feed(struct loadgen_reply *r, const uint8_t *p, size_t n);
/* Ready for the next reply (multi as given). */
void loadgen_reply_reset(struct loadgen_reply *r, bool multi);

#endif
