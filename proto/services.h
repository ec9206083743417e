/* services.h - the process-wide services sessions use, hung off the
 * server (struct server_app.ctx). Created by app/main.c before the loops
 * start; read-only for the loops except where a field says otherwise. */
#ifndef RINGMAIL_PROTO_SERVICES_H
#define RINGMAIL_PROTO_SERVICES_H

#include <stdatomic.h>

#include "core/loop.h"
#include "core/server.h"

struct store;
struct users;
struct auth;
struct tls_server;
struct queue;
struct outbound;
struct user_limit;
struct dkim;

struct services {
	struct store *store;
	struct users *users;
	struct auth *auth;
	/* The outbound queue (store/queue.h); NULL: remote recipients get 451. */
	struct queue *queue;
	/* The remote delivery runner on loop 0 (outbound/outbound.h). */
	struct outbound *outbound;
	/* The DKIM keys (outbound/dkim.h); NULL: nothing is signed. Messages
	 * for remote recipients are signed as they stream to the queue, on
	 * any loop. SIGHUP swaps in a newly loaded set; an old set stays
	 * allocated until exit, since a signer started before the swap still
	 * points into it. */
	_Atomic(struct dkim *) dkim;
	/* The certificates new connections use. SIGHUP swaps it; the old
	 * server stays referenced until exit (live connections hold their
	 * own reference through their tls_conn anyway). NULL: no TLS. */
	_Atomic(struct tls_server *) tls;
	/* Logged-in IMAP sessions per user (proto/user_limit.h); NULL: no cap. */
	struct user_limit *user_limit;
};

static inline struct services *services_of(struct loop *loop)
{
	struct server *srv = loop_server(loop);
	return srv ? (struct services *)srv->app.ctx : NULL;
}

#endif
