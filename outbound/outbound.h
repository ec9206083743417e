/* outbound.h - remote delivery of the queue (docs/queue.md).
 *
 * The runner lives on loop 0: it holds every queued message in memory,
 * resolves MX hosts (outbound/dns.h, c-ares on the ring), speaks SMTP as a
 * client over sockets driven through loop_sqe() (opportunistic STARTTLS,
 * PIPELINING, one transaction per destination domain), retries 4xx and
 * connection failures with exponential backoff, and turns 5xx or expiry into
 * one DSN (RFC 3464) for the envelope sender (local INBOX, or queued when
 * remote; never for a null sender). New messages reach it from any loop by
 * MSG_RING once the queue reports them durable. */
#ifndef RINGMAIL_OUTBOUND_OUTBOUND_H
#define RINGMAIL_OUTBOUND_OUTBOUND_H

struct loop;
struct queue;
struct store;
struct users;
struct outbound;

/* Creates the runner (no I/O). Returns 0 or -ENOMEM. */
int outbound_new(struct queue *q, struct store *store, struct users *users,
		 const char *data_dir, struct outbound **ob_r);
/* smart_tls_verify: the smart host's certificate must chain to a CA of
 * ca_file and name the smart host. Startup only (reads the file). 0 or a
 * negative errno (tls_verifier_new()). */
int outbound_verify_smart_host(struct outbound *ob, const char *ca_file);
/* Loads the queue (blocking: startup, before the loops). Returns the
 * number of messages or a negative errno. */
int outbound_load(struct outbound *ob);
/* Called on every loop thread as it starts: loop 0 becomes the runner;
 * every loop may submit. Returns 0 or a negative errno. */
int outbound_loop_start(struct outbound *ob, struct loop *loop);
void outbound_loop_stop(struct outbound *ob, struct loop *loop);
void outbound_free(struct outbound **ob_r);

#endif
