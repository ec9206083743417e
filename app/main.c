/* main.c - the ringmail command line. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <getopt.h>
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/server.h"
#include "app/cmd_user.h"
#include "app/cmd_dns.h"
#include "app/cmd_fsck.h"
#include "core/workpool.h"
#include "outbound/dkim.h"
#include "outbound/dns.h"
#include "outbound/outbound.h"
#include "store/queue.h"
#include "proto/services.h"
#include "proto/user_limit.h"
#include "proto/stream.h"
#include "store/auth.h"
#include "store/store.h"
#include "store/users.h"
#include "tls/tls.h"

#ifndef RINGMAIL_VERSION
#define RINGMAIL_VERSION "unknown"
#endif

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringmail serve [--config FILE] [--data DIR] [--port-offset N] [--threads N]\n"
		"                      [--domain D] [--hostname H] [--log-level LEVEL]\n"
		"       ringmail check-config [--config FILE] [same overrides as serve]\n"
		"       ringmail user add|del|passwd|list [ADDRESS] [--data DIR]\n"
		"       ringmail dns-records DOMAIN [--config FILE] [same overrides as serve]\n"
		"       ringmail fsck [--data DIR] [--repair]\n"
		"       ringmail queue list|flush|delete ID [--data DIR]\n"
		"       ringmail dkim keygen DOMAIN [--data DIR] [--type rsa|ed25519] [--selector S] "
		"[--force]\n"
		"serve also takes --dns HOST:PORT (resolver for outbound mail) and\n"
		"--mx-port N (port of remote MX hosts, default 25).\n"
		"       ringmail version\n"
		"\n"
		"With no --config, serve uses the embedded default: every port of the\n"
		"provider table (465 587 25 26 2025 2525 993 143 995 110) and auto-discovery\n"
		"over HTTP/HTTPS (80 443) on all addresses.\n"
		"--port-offset N adds N to every port (unprivileged runs and tests).\n");
}

struct overrides {
	const char *config;
	const char *data;
	const char *domain;
	const char *hostname;
	const char *log_level;
	long port_offset;
	long threads;
	const char *dns;
	long mx_port;
};

static int parse_overrides(int argc, char **argv, struct overrides *o)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "data", required_argument, NULL, 'd' },
		{ "port-offset", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "domain", required_argument, NULL, 'D' },
		{ "hostname", required_argument, NULL, 'H' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "dns", required_argument, NULL, 'N' },
		{ "mx-port", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int ch;

	memset(o, 0, sizeof(*o));
	o->port_offset = -1;
	o->threads = -1;
	o->mx_port = -1;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:d:p:t:D:H:l:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 'd': o->data = optarg; break;
		case 'D': o->domain = optarg; break;
		case 'H': o->hostname = optarg; break;
		case 'l': o->log_level = optarg; break;
		case 'p':
			o->port_offset = strtol(optarg, &end, 10);
			if (*end || o->port_offset < 0 || o->port_offset > 60000) {
				fprintf(stderr, "ringmail: --port-offset must be 0..60000\n");
				return -1;
			}
			break;
		case 't':
			o->threads = strtol(optarg, &end, 10);
			if (*end || o->threads < 0 || o->threads > 1024) {
				fprintf(stderr, "ringmail: --threads must be 0..1024\n");
				return -1;
			}
			break;
		case 'N': o->dns = optarg; break;
		case 'M':
			o->mx_port = strtol(optarg, &end, 10);
			if (*end || o->mx_port < 1 || o->mx_port > 65535) {
				fprintf(stderr, "ringmail: --mx-port must be 1..65535\n");
				return -1;
			}
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ringmail: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

/* Loads the configuration and applies the command-line overrides through
 * the same parser as the file, so they are validated the same way. serve
 * calls it at start and again at every SIGHUP (app_load()), so an override
 * stays in force across reloads. Returns 0, or a negative errno with the
 * reason in err ("file:line: ..." for a bad file). */
static int load_config(const struct overrides *o, struct config *cfg, char *err, size_t errlen)
{
	char text[1024];
	int rc = config_load(cfg, o->config, err, errlen);
	if (rc)
		return rc;
	int n = snprintf(text, sizeof(text), "[server]\n");
	if (o->data)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "data = %s\n", o->data);
	if (o->domain)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "domains = %s\n", o->domain);
	if (o->hostname)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "hostname = %s\n", o->hostname);
	if (o->log_level)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "log_level = %s\n", o->log_level);
	if (o->port_offset >= 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "port_offset = %ld\n",
			      o->port_offset);
	if (o->threads >= 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "threads = %ld\n", o->threads);
	if (o->dns || o->mx_port > 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "[outbound]\n");
	if (o->dns)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "dns = %s\n", o->dns);
	if (o->mx_port > 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "mx_port = %ld\n", o->mx_port);
	if ((size_t)n >= sizeof(text)) {
		snprintf(err, errlen, "command-line values too long");
		return -EINVAL;
	}
	/* Keep listeners: the override text has none, so nothing is replaced. */
	char src[CONFIG_STR_MAX];
	memcpy(src, cfg->source, sizeof(src));
	rc = config_parse_text(cfg, "command line", text, (size_t)n, err, errlen);
	memcpy(cfg->source, src, sizeof(src));
	if (rc == 0)
		rc = config_validate(cfg, err, errlen);
	return rc;
}

/* load_config() for the commands: the reason goes to stderr. */
static int load_config_cli(const struct overrides *o, struct config *cfg)
{
	char err[1024];
	int rc = load_config(o, cfg, err, sizeof(err));
	if (rc)
		fprintf(stderr, "ringmail: %s\n", err);
	return rc;
}

static int cmd_check_config(int argc, char **argv)
{
	struct overrides o;
	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg || parse_overrides(argc, argv, &o)) {
		free(cfg);
		return 2;
	}
	if (load_config_cli(&o, cfg)) {
		free(cfg);
		return 2;
	}
	config_print(cfg, stdout);
	free(cfg);
	return 0;
}

/* "ringmail dns-records DOMAIN [overrides]": the zone lines for DOMAIN
 * (app/cmd_dns.c), with the hostname and ports of the configuration. */
static int cmd_dns(int argc, char **argv)
{
	struct overrides o;
	if (argc < 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: ringmail dns-records DOMAIN [--config FILE] [--data DIR] [--hostname H]\n");
		return 2;
	}
	const char *domain = argv[1];
	argv[1] = argv[0]; /* the overrides follow the domain */
	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg || parse_overrides(argc - 1, argv + 1, &o) || load_config_cli(&o, cfg)) {
		free(cfg);
		return 2;
	}
	int rc = cmd_dns_records(cfg, domain, stdout, stderr);
	free(cfg);
	return rc;
}

static const struct conn_ops *ops_for(struct server *srv, const struct listener_config *lc)
{
	(void)srv;
	return stream_conn_ops(lc->proto);
}

/* Builds the TLS server for cfg (certificates, or the generated one).
 * prev, when set, hands its ticket keys over so clients keep resuming. */
static int tls_for(const struct config *cfg, const struct tls_server *prev,
		   struct tls_server **srv_r, char *err, size_t errlen)
{
	struct tls_cert_config certs[CONFIG_MAX_CERTS];
	for (size_t i = 0; i < cfg->ncerts; i++)
		certs[i] = (struct tls_cert_config){ cfg->certs[i].name, cfg->certs[i].cert,
						     cfg->certs[i].key };
	struct tls_server_config tc = {
		.data_dir = cfg->data_dir,
		.hostname = cfg->hostname,
		.certs = certs,
		.ncerts = cfg->ncerts,
		.ticket_rotate_s = cfg->ticket_rotate_s,
		.ticket_keys_from = prev,
	};
	return tls_server_new(&tc, srv_r, err, errlen);
}

struct app_state {
	struct services sv; /* first: services_of() casts the app context to it */
	struct overrides o; /* the command line, applied again at every SIGHUP */
	struct workpool *wp;
	int lock_fd;
	/* What SIGHUPs replaced, released once every loop has moved past the
	 * reload that replaced it (server_reloads_seen). */
	struct retired {
		struct tls_server *tls;
		struct dkim *dkim;
		uint64_t gen;
	} *retired;
	size_t nretired;
};

/* Releases what no loop can still be about to reference (all of it at
 * exit). Connections and signers hold references of their own. */
static void retired_sweep(struct app_state *st, uint64_t seen)
{
	size_t k = 0;
	for (size_t i = 0; i < st->nretired; i++) {
		struct retired *r = &st->retired[i];
		if (r->gen <= seen) {
			tls_server_unref(&r->tls);
			dkim_free(&r->dkim);
		} else {
			st->retired[k++] = *r;
		}
	}
	st->nretired = k;
}

static int retire(struct app_state *st, struct tls_server *tls, struct dkim *dk, uint64_t gen)
{
	struct retired *v = realloc(st->retired, (st->nretired + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	st->retired = v;
	v[st->nretired++] = (struct retired){ .tls = tls, .dkim = dk, .gen = gen };
	return 0;
}

/* Logs the key files that did not load (they are skipped). */
static void log_dkim_problems(struct log *log, const struct dkim *dk)
{
	for (size_t i = 0; dkim_problem(dk, i); i++)
		log_emit(log, LOG_ERROR, 0, "dkim-key", "problem=\"%s\"", dkim_problem(dk, i));
}

/* SIGHUP: the DKIM keys again. The new set is used by signers started
 * from now on; signers of messages being received hold a reference to the
 * old one, which is retired (gen: this reload's generation). */
static void reload_dkim(struct app_state *st, struct log *log, const struct config *cfg,
			uint64_t gen)
{
	struct dkim *next = NULL;
	if (dkim_new(cfg->data_dir, cfg->ob_dkim_selector, &next) ||
	    retire(st, NULL, NULL, gen) < 0) {
		dkim_free(&next);
		log_emit(log, LOG_WARN, 0, "dkim-reload-failed", NULL);
		return;
	}
	log_dkim_problems(log, next);
	st->retired[st->nretired - 1].dkim =
		atomic_exchange_explicit(&st->sv.dkim, next, memory_order_acq_rel);
	log_emit(log, LOG_INFO, 0, "dkim-reloaded", "dkim_keys=%zu", dkim_nkeys(next));
}

/* SIGHUP, on the main thread: the configuration as at start, the file
 * read again with the same command-line overrides on top. */
static int app_load(struct server *srv, struct config *cfg, char *err, size_t errlen)
{
	struct app_state *st = srv->app.ctx;
	return load_config(&st->o, cfg, err, errlen);
}

/* SIGHUP, on the main thread: new certificates for new connections, the
 * users files, the DKIM keys. */
static int app_reload(struct server *srv, const struct config *cfg, char *err, size_t errlen)
{
	struct app_state *st = srv->app.ctx;
	struct tls_server *cur = atomic_load(&st->sv.tls), *next = NULL;
	uint64_t gen = atomic_load(&srv->reload_gen) + 1;
	retired_sweep(st, server_reloads_seen(srv));
	int rc = tls_for(cfg, cur, &next, err, errlen);
	if (rc)
		return rc;
	if (retire(st, cur, NULL, gen) < 0) {
		tls_server_unref(&next);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (st->sv.users && users_reload(st->sv.users) < 0)
		log_emit(&srv->log, LOG_WARN, 0, "users-reload-failed", NULL);
	reload_dkim(st, &srv->log, cfg, gen);
	atomic_store_explicit(&st->sv.tls, next, memory_order_release);
	log_emit(&srv->log, LOG_INFO, 0, "tls-reloaded", "fingerprint=%s retired=%zu",
		 tls_server_fingerprint(next), st->nretired);
	return 0;
}

static void users_diag(void *arg, const char *file, unsigned line, const char *msg)
{
	struct log *log = arg;
	log_emit(log, LOG_WARN, 0, "users", "file=%s line=%u problem=\"%s\"", file, line, msg);
}

/* The store (lock first: one process per data dir), users, the hashing
 * workers and the authenticator. Blocking: main thread, before loops. */
static int services_open(struct app_state *st, const struct config *cfg, char *err, size_t errlen)
{
	static struct log diag_log;
	const char *domains[CONFIG_MAX_DOMAINS];
	int rc;

	log_init(&diag_log, LOG_INFO, -1, true);
	st->lock_fd = store_lock_datadir(cfg->data_dir, err, errlen);
	if (st->lock_fd < 0)
		return st->lock_fd;
	const char *autos[CONFIG_MAX_AUTO_FOLDERS];
	for (size_t i = 0; i < cfg->nauto_folders; i++)
		autos[i] = cfg->auto_folders[i];
	struct store_config sc = { .data_dir = cfg->data_dir,
				   .auto_folders = autos,
				   .nauto_folders = cfg->nauto_folders,
				   .quota_bytes = cfg->quota_storage,
				   .quota_messages = cfg->quota_messages,
				   .folders_max = cfg->folders_max,
				   .segment_max = cfg->segment_max,
				   .compact_after = cfg->compact_after,
				   .checkpoint_bytes = cfg->checkpoint_after };
	if ((rc = store_new(&sc, &st->sv.store))) {
		snprintf(err, errlen, "cannot open the store in %s: %s", cfg->data_dir,
			 strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < cfg->ndomains; i++)
		domains[i] = cfg->domains[i];
	struct users_config uc = {
		.data_dir = cfg->data_dir,
		.local_domains = domains,
		.nlocal_domains = cfg->ndomains,
		.postmaster = cfg->postmaster[0] ? cfg->postmaster : NULL,
		.watch = true,
		.diag = users_diag,
		.diag_arg = &diag_log,
	};
	if ((rc = users_open(&uc, &st->sv.users))) {
		snprintf(err, errlen, "cannot read the users in %s: %s", cfg->data_dir, strerror(-rc));
		return rc;
	}
	/* The outbound queue, loaded whole before the loops start. */
	long nl = cfg->threads ? (long)cfg->threads : sysconf(_SC_NPROCESSORS_ONLN);
	if ((rc = queue_new(cfg->data_dir, nl > 0 ? (unsigned)nl : 1, &st->sv.queue)) ||
	    (rc = outbound_new(st->sv.queue, st->sv.store, st->sv.users, cfg->data_dir,
			       &st->sv.outbound)) ||
	    (rc = outbound_load(st->sv.outbound)) < 0) {
		snprintf(err, errlen, "cannot open the queue in %s/queue: %s", cfg->data_dir,
			 strerror(-rc));
		return rc;
	}
	if (cfg->ob_smart_host[0] && cfg->ob_smart_verify &&
	    (rc = outbound_verify_smart_host(st->sv.outbound, cfg->ob_smart_ca))) {
		snprintf(err, errlen, "smart_tls_ca %s: %s", cfg->ob_smart_ca,
			 rc == -EINVAL ? "no CA certificate in it" : strerror(-rc));
		return rc;
	}
	/* DKIM keys: messages for remote recipients are signed as they are
	 * spooled, on whichever loop accepts them (read-only after this). */
	struct dkim *dk = NULL;
	if ((rc = dkim_new(cfg->data_dir, cfg->ob_dkim_selector, &dk))) {
		snprintf(err, errlen, "cannot load the DKIM keys in %s/dkim: %s", cfg->data_dir,
			 strerror(-rc));
		return rc;
	}
	log_dkim_problems(&diag_log, dk);
	atomic_store_explicit(&st->sv.dkim, dk, memory_order_release);
	if ((rc = workpool_new(WORKPOOL_THREADS_DEFAULT, WORKPOOL_QUEUE_DEFAULT, &st->wp)) ||
	    (rc = auth_new(&(struct auth_config){ .delay_initial_ms = cfg->auth_delay_ms,
						  .delay_max_ms = cfg->auth_delay_max_ms },
			   st->sv.users, st->wp, &st->sv.auth))) {
		snprintf(err, errlen, "cannot start the authenticator: %s", strerror(-rc));
		return rc;
	}
	if (!(st->sv.user_limit = malloc(sizeof(*st->sv.user_limit)))) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	user_limit_init(st->sv.user_limit);
	return 0;
}

static void services_close(struct app_state *st)
{
	workpool_free(&st->wp); /* first: no job may complete into a freed auth */
	auth_free(&st->sv.auth);
	outbound_free(&st->sv.outbound);
	queue_free(&st->sv.queue);
	struct dkim *dk = atomic_exchange(&st->sv.dkim, NULL);
	dkim_free(&dk);
	users_free(&st->sv.users);
	store_free(&st->sv.store);
	free(st->sv.user_limit);
	st->sv.user_limit = NULL;
	if (st->lock_fd >= 0)
		close(st->lock_fd);
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[CONFIG_STR_MAX];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Loop 0 runs the outbound queue; every loop may submit to it. */
static int app_loop_start(struct server *srv, struct loop *loop)
{
	struct app_state *st = srv->app.ctx;
	return st->sv.outbound ? outbound_loop_start(st->sv.outbound, loop) : 0;
}

static void app_loop_stop(struct server *srv, struct loop *loop)
{
	struct app_state *st = srv->app.ctx;
	if (st->sv.outbound)
		outbound_loop_stop(st->sv.outbound, loop);
}

static int cmd_serve(int argc, char **argv)
{
	struct overrides o;
	struct server srv;
	char err[1024];
	int rc;

	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg || parse_overrides(argc, argv, &o)) {
		free(cfg);
		return 2;
	}
	if (load_config_cli(&o, cfg)) {
		free(cfg);
		return 2;
	}
	if (server_check_io_uring(err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		free(cfg);
		return 1;
	}
	if ((rc = mkdir_p(cfg->data_dir, 0750))) {
		fprintf(stderr, "ringmail: cannot create data directory %s: %s\n", cfg->data_dir,
			strerror(-rc));
		free(cfg);
		return 1;
	}
	/* The signals server_run() waits for are blocked before any thread
	 * exists (the worker pool starts in services_open): otherwise the
	 * kernel may hand a SIGHUP or SIGTERM that arrives while the main
	 * thread is busy (a reload) to a thread that leaves it unblocked,
	 * whose default action ends the process. One arriving before the
	 * loops run stays pending and is handled then. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	struct app_state *st = calloc(1, sizeof(*st));
	struct tls_server *tls = NULL;
	if (!st || tls_global_init() || dns_global_init()) {
		fprintf(stderr, "ringmail: cannot initialise TLS\n");
		free(st);
		free(cfg);
		return 1;
	}
	/* Before dropping privileges: the key may be readable by root only. */
	if (tls_for(cfg, NULL, &tls, err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		free(st);
		free(cfg);
		return 1;
	}
	atomic_store(&st->sv.tls, tls);
	st->o = o;
	st->lock_fd = -1;
	if (services_open(st, cfg, err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		free(cfg); /* server_init() did not take it */
		rc = 1;
		goto out_services;
	}
	struct server_app app = { .ops_for = ops_for, .load = app_load, .reload = app_reload,
				  .ctx = st, .loop_start = app_loop_start,
				  .loop_stop = app_loop_stop };
	if (server_init(&srv, cfg, o.config, &app, err, sizeof(err)) ||
	    server_bind(&srv, err, sizeof(err)) || server_drop_privileges(&srv, err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		rc = 1;
		goto out;
	}
	log_emit(&srv.log, LOG_INFO, 0, "tls-ready", "fingerprint=%s certificates=%zu",
		 tls_server_fingerprint(tls), server_config(&srv)->ncerts);
	rc = server_run(&srv);
out:
	server_free(&srv);
out_services:
	services_close(st);
	retired_sweep(st, UINT64_MAX);
	free(st->retired);
	tls = atomic_load(&st->sv.tls);
	tls_server_unref(&tls);
	free(st);
	tls_global_cleanup();
	dns_global_cleanup();
	return rc;
}

/* "ringmail queue list|flush|delete ID [--data DIR]" (store/queue.h). */
static int cmd_queue(int argc, char **argv)
{
	const char *data = NULL, *sub = NULL, *id = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--data") && i + 1 < argc)
			data = argv[++i];
		else if (!sub)
			sub = argv[i];
		else if (!id)
			id = argv[i];
		else
			sub = "?";
	}
	struct config *cfg = malloc(sizeof(*cfg));
	char err[512];
	if (!cfg || config_load(cfg, NULL, err, sizeof(err))) {
		free(cfg);
		return 2;
	}
	if (!data)
		data = cfg->data_dir;
	int rc = 2;
	if (sub && !strcmp(sub, "list") && !id) {
		rc = queue_cli_list(data, stdout);
		if (rc >= 0) {
			printf("%d message%s queued\n", rc, rc == 1 ? "" : "s");
			rc = 0;
		} else {
			fprintf(stderr, "ringmail: queue list: %s\n", strerror(-rc));
			rc = 1;
		}
	} else if (sub && !strcmp(sub, "flush") && !id) {
		rc = queue_cli_flush(data);
		if (rc)
			fprintf(stderr, "ringmail: queue flush: %s\n", strerror(-rc));
		rc = rc ? 1 : 0;
	} else if (sub && !strcmp(sub, "delete") && id) {
		rc = queue_cli_delete(data, id);
		if (rc == -ENOENT)
			fprintf(stderr, "ringmail: queue delete: no queued message with id %s in %s/queue"
					" (see ringmail queue list)\n", id, data);
		else if (rc == -EINVAL)
			fprintf(stderr, "ringmail: queue delete: '%s' is not a queue id (lowercase hex, "
					"as ringmail queue list shows)\n", id);
		else if (rc)
			fprintf(stderr, "ringmail: queue delete %s: %s\n", id, strerror(-rc));
		rc = rc ? 1 : 0;
	} else {
		fprintf(stderr, "usage: ringmail queue list|flush|delete ID [--data DIR]\n");
	}
	free(cfg);
	return rc;
}

/* "ringmail dkim keygen DOMAIN [--data DIR] [--type rsa|ed25519] [--selector S]
 * [--force]": an existing key is kept unless --force. */
static int cmd_dkim(int argc, char **argv)
{
	const char *data = NULL, *type = "rsa", *domain = NULL, *selector = NULL;
	bool keygen = false, bad = false, force = false;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--force"))
			force = true;
		else if (!strcmp(argv[i], "--data") && i + 1 < argc)
			data = argv[++i];
		else if (!strcmp(argv[i], "--type") && i + 1 < argc)
			type = argv[++i];
		else if (!strcmp(argv[i], "--selector") && i + 1 < argc)
			selector = argv[++i];
		else if (!keygen && !strcmp(argv[i], "keygen"))
			keygen = true;
		else if (keygen && !domain && argv[i][0] != '-')
			domain = argv[i];
		else
			bad = true;
	}
	if (bad || !keygen || !domain || (strcmp(type, "rsa") && strcmp(type, "ed25519"))) {
		fprintf(stderr, "usage: ringmail dkim keygen DOMAIN [--data DIR] [--type rsa|ed25519] "
				"[--selector S] [--force]\n");
		return 2;
	}
	struct config *cfg = malloc(sizeof(*cfg));
	char err[512];
	if (!cfg || config_load(cfg, NULL, err, sizeof(err))) {
		free(cfg);
		return 2;
	}
	if (!data)
		data = cfg->data_dir;
	if (!selector)
		selector = cfg->ob_dkim_selector;
	int rc = dkim_keygen(data, domain, type, selector, force, stdout, stderr);
	free(cfg);
	return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (!strcmp(cmd, "user"))
		return cmd_user(argc - 1, argv + 1);
	if (!strcmp(cmd, "fsck"))
		return cmd_fsck(argc - 1, argv + 1);
	if (!strcmp(cmd, "queue"))
		return cmd_queue(argc - 1, argv + 1);
	if (!strcmp(cmd, "dkim"))
		return cmd_dkim(argc - 1, argv + 1);
	if (!strcmp(cmd, "dns-records"))
		return cmd_dns(argc - 1, argv + 1);
	if (!strcmp(cmd, "check-config"))
		return cmd_check_config(argc - 1, argv + 1);
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("ringmail %s (jemalloc %s)\n", RINGMAIL_VERSION, JEMALLOC_VERSION);
		return 0;
	}
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "ringmail: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
