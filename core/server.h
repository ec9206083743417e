/* server.h - the process: configuration, listening sockets, loop threads,
 * signals.
 *
 * The main thread parses the configuration, binds every listener once per
 * loop (SO_REUSEPORT, so the kernel spreads connections over the loops),
 * drops privileges, starts one thread per loop and then only waits for
 * signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads the configuration
 * for new connections. It talks to the loops with IORING_OP_MSG_RING from a
 * ring of its own. */
#ifndef RINGMAIL_CORE_SERVER_H
#define RINGMAIL_CORE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"

#define SERVER_IP_SLOTS 65536u /* per-address connection counters (hashed) */

struct server;

/* What the application plugs into the engine. */
struct server_app {
	/* The protocol handler for a listener row. */
	const struct conn_ops *(*ops_for)(struct server *srv, const struct listener_config *lc);
	/* Builds the configuration at SIGHUP exactly as it was built at
	 * start: the file (or the embedded default) with the command-line
	 * overrides on top, so they stay in force. Main thread. Returns 0, or
	 * a negative errno with the reason in err. NULL: the file alone
	 * (config_load() of config_path). */
	int (*load)(struct server *srv, struct config *cfg, char *err, size_t errlen);
	/* Called on the main thread after a new configuration was loaded and
	 * before the loops see it (certificates reload here). Returns 0, or a
	 * negative errno to keep the old configuration (err says why). */
	int (*reload)(struct server *srv, const struct config *cfg, char *err, size_t errlen);
	/* Called on each loop thread when it starts and stops. Optional. */
	int (*loop_start)(struct server *srv, struct loop *loop);
	void (*loop_stop)(struct server *srv, struct loop *loop);
	void *ctx; /* the application's own state (TLS, store, users) */
};

struct server {
	_Atomic(const struct config *) cfg; /* current snapshot; old ones live until exit */
	const char *config_path;            /* app.load NULL: reloaded; NULL: embedded default */
	struct server_app app;
	struct log log;                     /* main thread's, direct */
	struct loop **loops;
	unsigned nloops;
	int *listen_fds;                    /* nloops * nlisteners */
	size_t nlisteners;
	_Atomic uint32_t nconns;
	_Atomic uint32_t ipcount[SERVER_IP_SLOTS];
	_Atomic unsigned running;           /* loop threads still running */
	_Atomic bool stopping;
	const struct config **old_cfgs;     /* kept until exit: conns may point in */
	size_t nold;
	_Atomic uint64_t reload_gen;        /* reloads done (each broadcast to the loops) */
};

/* Initialises srv for cfg (malloc'd; the server owns it from here and frees
 * it, and every configuration reloaded later, in server_free()). The
 * number of loops comes from cfg->threads (0: online CPUs). Returns 0 or a
 * negative errno with a message in err. */
int server_init(struct server *srv, const struct config *cfg, const char *config_path,
		const struct server_app *app, char *err, size_t errlen);
/* Checks that io_uring works here. Returns 0, or a negative errno with a
 * message naming the cause (sysctl, seccomp, old kernel) in err. */
int server_check_io_uring(char *err, size_t errlen);
/* Binds every listener for every loop. Fails with a clear message when a
 * port is taken (another instance) or privileged (names --port-offset and
 * CAP_NET_BIND_SERVICE). Returns 0 or a negative errno. */
int server_bind(struct server *srv, char *err, size_t errlen);
/* Drops privileges to cfg->user when set and running as root. */
int server_drop_privileges(struct server *srv, char *err, size_t errlen);
/* Starts the loops and serves until SIGTERM/SIGINT; returns the exit code. */
int server_run(struct server *srv);
void server_free(struct server *srv);
/* The oldest reload generation every loop has handled. Something a reload
 * replaced (a TLS context, a key set: each loop loads the current one from
 * an atomic pointer and takes a reference within one callback) can be
 * released once this reaches the generation of its replacement: no loop
 * can still be between loading the old pointer and referencing it. The
 * reload callback of generation g runs before the loops are told, so what
 * it replaces belongs to g = srv->reload_gen + 1. Main thread. */
uint64_t server_reloads_seen(struct server *srv);

static inline const struct config *server_config(struct server *srv)
{
	return atomic_load_explicit(&srv->cfg, memory_order_acquire);
}

#endif
