/* auth.h - checking a user's password without blocking a loop.
 *
 * auth_verify() looks the user up in the current users snapshot, then
 * either answers from the credential cache or hands the crypt(3) work to the
 * worker pool; the answer comes back on the calling loop's thread.
 *
 * - Cache: a verified credential is remembered under a 128-bit SipHash-2-4
 *   tag of (canonical user, password) with a random per-process key, never
 *   the password itself; bounded (AUTH_CACHE_MAX_DEFAULT entries, 4-way
 *   sets, striped locks shared by all loops), with a TTL, and an entry only
 *   counts while the user's stored hash is the one it was made with (a
 *   password change invalidates it).
 * - Failure delay: a failed login is answered after a delay that grows per
 *   client address (2 s, 4 s, 8 s, then 15 s), one step less per quiet
 *   period without failures (60 s), and is cleared by a good login from
 *   that address. IPv6 clients count per /64. The counters live in one
 *   table shared by all loops, one atomic 64-bit word per slot updated with
 *   compare-and-swap (a lossy, bounded table: colliding addresses share or
 *   evict a slot). The delay is an IORING_OP_TIMEOUT on the loop, so no
 *   thread waits.
 * - Unknown users (and users whose login is disabled) are verified against
 *   a dummy hash of the same kind as the stored ones and always fail, so
 *   they cost the same time and get the same answer as a wrong password.
 * - Nothing here logs or keeps a password beyond the request, whose copy is
 *   wiped before it is freed. */
#ifndef RINGMAIL_STORE_AUTH_H
#define RINGMAIL_STORE_AUTH_H

#include <stdint.h>

#include "core/loop.h"
#include "core/span.h"
#include "core/workpool.h"
#include "store/users.h"

#define AUTH_CACHE_MAX_DEFAULT 4096u
#define AUTH_CACHE_TTL_MS_DEFAULT (5u * 60u * 1000u)
#define AUTH_DELAY_INITIAL_MS_DEFAULT 2000u
#define AUTH_DELAY_MAX_MS_DEFAULT 15000u
#define AUTH_DELAY_QUIET_MS_DEFAULT 60000u
/* Slots of the shared failure-delay table (a power of two). */
#define AUTH_DELAY_SLOTS 4096u
/* A longer password fails without being hashed against a real user. */
#define AUTH_PASS_MAX 1024u

enum auth_result {
	AUTH_OK,
	AUTH_FAIL,      /* wrong password, unknown user, login disabled */
	AUTH_TEMPFAIL,  /* worker queue full, shutdown, out of memory */
};

const char *auth_result_str(enum auth_result r);

/* Runs on the loop thread auth_verify() was called on, exactly once per
 * accepted request unless auth_cancel() came first. user is the canonical
 * address on AUTH_OK (valid during the call only), NULL otherwise. */
typedef void auth_done_fn(struct loop *loop, enum auth_result res, const char *user,
			  void *arg);

/* The function that checks a password on a worker: users_password_verify()
 * unless a test counts calls. Same returns. */
typedef int auth_check_fn(void *arg, enum users_scheme scheme, const char *hash,
			  struct span pass);

struct auth_config {
	unsigned cache_max;        /* 0: AUTH_CACHE_MAX_DEFAULT */
	uint32_t cache_ttl_ms;     /* 0: AUTH_CACHE_TTL_MS_DEFAULT */
	uint32_t delay_initial_ms; /* 0: AUTH_DELAY_INITIAL_MS_DEFAULT */
	uint32_t delay_max_ms;     /* 0: AUTH_DELAY_MAX_MS_DEFAULT */
	uint32_t delay_quiet_ms;   /* 0: AUTH_DELAY_QUIET_MS_DEFAULT */
	auth_check_fn *check;      /* NULL: users_password_verify() */
	void *check_arg;
};

struct auth;
struct auth_req;

/* Creates the authenticator over users and wp (both must outlive it).
 * cfg may be NULL for the defaults. Hashes one dummy password (CPU: call
 * it at startup, not on a loop). Returns 0, -ENOMEM, or -EINVAL. */
int auth_new(const struct auth_config *cfg, struct users *users, struct workpool *wp,
	     struct auth **auth_r);
/* Frees; no request may be in flight. Sets *auth_r to NULL. */
void auth_free(struct auth **auth_r);

/* Starts checking user/pass for a client at client_addr (text, as
 * conn_peer() gives it; NULL: no per-address delay). Call on loop's thread.
 * user and pass are copied. Returns 0, and done(arg) runs later on loop's
 * thread, never from inside this call; or -ENOMEM, and done never runs.
 * *req_r (may be NULL) receives a handle for auth_cancel(), valid until
 * done runs. */
int auth_verify(struct auth *a, struct loop *loop, struct span user, struct span pass,
		const char *client_addr, auth_done_fn *done, void *arg,
		struct auth_req **req_r);
/* The session is going away: done will not run. The request's memory is
 * released when its pending completion arrives. Loop thread only. */
void auth_cancel(struct auth_req *req);

/* Drops every cached credential (after a reload that removed users, or in
 * tests). Thread-safe. */
void auth_cache_clear(struct auth *a);

/* The delay a failure from client_addr would get now, in ms, without
 * counting one (for logs and tests). Thread-safe. */
uint32_t auth_delay_peek(struct auth *a, const char *client_addr);

#endif
