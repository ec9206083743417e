#include "core/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/loop_private.h"
#include "core/udata.h"

#define LISTEN_BACKLOG 4096

int server_check_io_uring(char *err, size_t errlen)
{
	struct io_uring ring;
	struct io_uring_params p;
	int rc;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	rc = io_uring_queue_init_params(4, &ring, &p);
	if (rc == 0) {
		io_uring_queue_exit(&ring);
		return 0;
	}
	char disabled[16] = "";
	FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
	if (f) {
		if (!fgets(disabled, sizeof(disabled), f))
			disabled[0] = '\0';
		fclose(f);
		disabled[strcspn(disabled, "\n")] = '\0';
	}
	if (disabled[0] && strcmp(disabled, "0") != 0)
		snprintf(err, errlen,
			 "io_uring is unavailable: disabled by the sysctl kernel.io_uring_disabled=%s "
			 "(set it to 0, or 1 and add this user to kernel.io_uring_group)",
			 disabled);
	else if (rc == -ENOSYS)
		snprintf(err, errlen,
			 "io_uring is unavailable: the kernel has no io_uring (too old, or built "
			 "without CONFIG_IO_URING) or a seccomp filter blocks io_uring_setup "
			 "(containers: allow io_uring_setup, io_uring_enter, io_uring_register)");
	else if (rc == -EPERM)
		snprintf(err, errlen,
			 "io_uring is unavailable: permission denied (a seccomp filter, an LSM, or "
			 "kernel.io_uring_group excludes this process)");
	else if (rc == -EINVAL)
		snprintf(err, errlen,
			 "io_uring is unavailable: the kernel lacks SINGLE_ISSUER/DEFER_TASKRUN "
			 "(ringmail needs Linux 6.1 or later)");
	else if (rc == -ENOMEM)
		snprintf(err, errlen,
			 "io_uring is unavailable: out of locked memory (raise RLIMIT_MEMLOCK)");
	else
		snprintf(err, errlen, "io_uring is unavailable: %s", strerror(-rc));
	return rc;
}

/* Every loop writes its log lines to stderr through its own ring. For a
 * regular file opened without O_APPEND, io_uring reads and advances the
 * shared file position without the lock write(2) takes, so two loops'
 * writes can land at the same offset and one batch of lines is lost. With
 * O_APPEND every write goes to the end of the file atomically. Pipes,
 * sockets and terminals have no position and are left alone. */
static void stderr_append(void)
{
	struct stat st;
	int fl;

	if (fstat(STDERR_FILENO, &st) || !S_ISREG(st.st_mode))
		return;
	fl = fcntl(STDERR_FILENO, F_GETFL);
	if (fl >= 0 && !(fl & O_APPEND))
		(void)fcntl(STDERR_FILENO, F_SETFL, fl | O_APPEND);
}

int server_init(struct server *srv, const struct config *cfg, const char *config_path,
		const struct server_app *app, char *err, size_t errlen)
{
	memset(srv, 0, sizeof(*srv));
	atomic_store(&srv->cfg, cfg);
	srv->config_path = config_path;
	srv->app = *app;
	enum log_level lv = LOG_INFO;
	log_level_parse(cfg->log_level, &lv);
	log_init(&srv->log, lv, -1, true);
	stderr_append();
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	srv->nloops = cfg->threads ? cfg->threads : (ncpu > 0 ? (unsigned)ncpu : 1);
	srv->nlisteners = cfg->nlisteners;
	srv->loops = calloc(srv->nloops, sizeof(*srv->loops));
	srv->listen_fds = malloc(srv->nloops * srv->nlisteners * sizeof(int));
	if (!srv->loops || !srv->listen_fds) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (size_t i = 0; i < srv->nloops * srv->nlisteners; i++)
		srv->listen_fds[i] = -1;
	for (unsigned i = 0; i < srv->nloops; i++) {
		srv->loops[i] = calloc(1, sizeof(struct loop));
		if (!srv->loops[i]) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	return 0;
}

/* Resolves a listener address to a socket address; "" and "*" mean every
 * address: IPv6 "::" with V6ONLY off (IPv4 too), or 0.0.0.0 without IPv6. */
static int listener_addr(const struct listener_config *lc, unsigned port,
			 struct sockaddr_storage *ss, socklen_t *len_r, bool *dual_r)
{
	memset(ss, 0, sizeof(*ss));
	*dual_r = false;
	const char *a = lc->address;
	if (!a[0] || !strcmp(a, "*")) {
		int probe = socket(AF_INET6, SOCK_STREAM, 0);
		if (probe >= 0) {
			close(probe);
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
			s6->sin6_family = AF_INET6;
			s6->sin6_addr = in6addr_any;
			s6->sin6_port = htons((uint16_t)port);
			*len_r = sizeof(*s6);
			*dual_r = true;
			return 0;
		}
		a = "0.0.0.0";
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		*len_r = sizeof(*s4);
		return 0;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	char buf[64];
	snprintf(buf, sizeof(buf), "%s", a);
	if (buf[0] == '[') {
		memmove(buf, buf + 1, strlen(buf));
		buf[strcspn(buf, "]")] = '\0';
	}
	if (inet_pton(AF_INET6, buf, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		*len_r = sizeof(*s6);
		return 0;
	}
	return -EINVAL;
}

static int make_socket(const struct sockaddr_storage *ss, socklen_t len, bool dual,
		       bool reuseport, bool do_listen)
{
	int one = 1, zero = 0;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto err;
	if (dual)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	/* Accepted sockets inherit TCP_NODELAY from the listener (Linux):
	 * one setsockopt per listener instead of one per connection. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)ss, len) < 0)
		goto err;
	if (do_listen && listen(fd, LISTEN_BACKLOG) < 0)
		goto err;
	return fd;
err:;
	int e = errno;
	close(fd);
	return -e;
}

int server_bind(struct server *srv, char *err, size_t errlen)
{
	const struct config *cfg = server_config(srv);

	for (size_t li = 0; li < srv->nlisteners; li++) {
		const struct listener_config *lc = &cfg->listeners[li];
		unsigned port = lc->port + cfg->port_offset;
		struct sockaddr_storage ss;
		socklen_t len;
		bool dual;

		if (listener_addr(lc, port, &ss, &len, &dual)) {
			snprintf(err, errlen, "%s:%d: [listener %s] address '%s' is not an IP address",
				 cfg->source, lc->line, lc->name, lc->address);
			return -EINVAL;
		}
		/* SO_REUSEPORT would let a second instance of the same user join
		 * our group silently; a socket without it finds any listener. */
		int probe = make_socket(&ss, len, dual, false, false);
		if (probe == -EADDRINUSE) {
			snprintf(err, errlen,
				 "cannot listen on port %u ([listener %s]): the address is already in use "
				 "(is another ringmail or mail server running? use --port-offset N to shift "
				 "every port)",
				 port, lc->name);
			return probe;
		}
		if (probe == -EACCES) {
			snprintf(err, errlen,
				 "cannot listen on port %u ([listener %s]): ports below 1024 need root or "
				 "CAP_NET_BIND_SERVICE (e.g. setcap cap_net_bind_service=+ep ringmail); "
				 "or run unprivileged with --port-offset N (e.g. --port-offset 10000 "
				 "listens on 10025, 10465, 10993, ...)",
				 port, lc->name);
			return probe;
		}
		if (probe < 0) {
			snprintf(err, errlen, "cannot listen on port %u ([listener %s]): %s", port,
				 lc->name, strerror(-probe));
			return probe;
		}
		close(probe);
		for (unsigned i = 0; i < srv->nloops; i++) {
			int fd = make_socket(&ss, len, dual, true, true);
			if (fd < 0) {
				snprintf(err, errlen, "cannot listen on port %u ([listener %s]): %s",
					 port, lc->name, strerror(-fd));
				return fd;
			}
			srv->listen_fds[i * srv->nlisteners + li] = fd;
		}
	}
	return 0;
}

int server_drop_privileges(struct server *srv, char *err, size_t errlen)
{
	const struct config *cfg = server_config(srv);
	if (!cfg->user[0] || geteuid() != 0)
		return 0;
	struct passwd *pw = getpwnam(cfg->user);
	if (!pw) {
		snprintf(err, errlen, "user '%s' (server.user) does not exist", cfg->user);
		return -ENOENT;
	}
	/* The data directory stays ours after the switch. */
	if (chown(cfg->data_dir, pw->pw_uid, pw->pw_gid) < 0 && errno != ENOENT) {
		snprintf(err, errlen, "cannot chown %s to %s: %s", cfg->data_dir, cfg->user,
			 strerror(errno));
		return -errno;
	}
	if (setgroups(0, NULL) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		snprintf(err, errlen, "cannot switch to user '%s': %s", cfg->user, strerror(errno));
		return -errno;
	}
	if (setuid(0) == 0) {
		snprintf(err, errlen, "privileges were not dropped: setuid(0) still works");
		return -EPERM;
	}
	log_emit(&srv->log, LOG_INFO, 0, "privileges-dropped", "user=%s uid=%u", cfg->user,
		 (unsigned)pw->pw_uid);
	return 0;
}

struct thread_arg {
	struct server *srv;
	unsigned id;
	pthread_barrier_t *ready;
};

static void *loop_thread(void *arg)
{
	struct thread_arg *ta = arg;
	struct server *srv = ta->srv;
	struct loop *l = srv->loops[ta->id];
	int rc = loop_setup(l, (int)ta->id, srv, srv->listen_fds + ta->id * srv->nlisteners,
			    srv->nlisteners);
	if (rc == 0 && srv->app.loop_start)
		rc = srv->app.loop_start(srv, l);
	l->start_rc = rc;
	pthread_barrier_wait(ta->ready);
	if (rc == 0) {
		loop_run(l);
		if (srv->app.loop_stop)
			srv->app.loop_stop(srv, l);
	}
	atomic_fetch_sub(&srv->running, 1);
	return NULL;
}

/* Sends kind to every loop with MSG_RING from the main thread's ring. */
static void broadcast(struct io_uring *ring, struct server *srv, uint32_t kind, uint64_t payload)
{
	for (unsigned i = 0; i < srv->nloops; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
		if (!sqe) {
			io_uring_submit(ring);
			sqe = io_uring_get_sqe(ring);
		}
		io_uring_prep_msg_ring(sqe, srv->loops[i]->ring_fd, kind, udata_msg(payload), 0);
		io_uring_sqe_set_data64(sqe, i);
	}
	io_uring_submit_and_wait(ring, srv->nloops);
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(ring, head, cqe) {
		if (cqe->res < 0)
			log_emit(&srv->log, LOG_ERROR, 0, "msg-ring", "loop=%llu error=%s",
				 (unsigned long long)cqe->user_data, strerror(-cqe->res));
		n++;
	}
	io_uring_cq_advance(ring, n);
}

/* What only a restart can change: the loops, their listening sockets and
 * buffer rings, and the data directory (its lock and store, with the
 * store's segment, compaction and checkpoint sizes) were set up at start. The new snapshot keeps the old values; a changed listener row is
 * logged. */
static void keep_restart_only(struct server *srv, struct config *cfg, const struct config *old)
{
	bool same = cfg->nlisteners == old->nlisteners && cfg->port_offset == old->port_offset;
	for (size_t i = 0; same && i < cfg->nlisteners; i++)
		same = cfg->listeners[i].port == old->listeners[i].port &&
		       !strcmp(cfg->listeners[i].address, old->listeners[i].address);
	if (!same) {
		log_emit(&srv->log, LOG_WARN, 0, "reload",
			 "listeners changed: ports take effect at the next restart; "
			 "keeping the old listener rows");
		cfg->nlisteners = old->nlisteners;
		memcpy(cfg->listeners, old->listeners, sizeof(cfg->listeners));
	}
	cfg->port_offset = old->port_offset;
	cfg->threads = old->threads;
	cfg->recv_buffers = old->recv_buffers;
	memcpy(cfg->data_dir, old->data_dir, sizeof(cfg->data_dir));
	/* the store took these when it was made */
	cfg->segment_max = old->segment_max;
	cfg->compact_after = old->compact_after;
	cfg->checkpoint_after = old->checkpoint_after;
}

static void reload(struct io_uring *ring, struct server *srv)
{
	char err[1024];
	struct config *cfg = malloc(sizeof(*cfg));
	const struct config *old = server_config(srv);
	int rc;

	if (!cfg)
		return;
	/* The same path as at start: the command-line overrides stay in
	 * force (app.load applies them again). */
	if (srv->app.load)
		rc = srv->app.load(srv, cfg, err, sizeof(err));
	else
		rc = config_load(cfg, srv->config_path, err, sizeof(err));
	if (rc) {
		log_emit(&srv->log, LOG_ERROR, 0, "reload-failed", "error=\"%s\"", err);
		free(cfg);
		return;
	}
	keep_restart_only(srv, cfg, old);
	if (srv->app.reload && srv->app.reload(srv, cfg, err, sizeof(err)) != 0) {
		log_emit(&srv->log, LOG_ERROR, 0, "reload-failed", "error=\"%s\"", err);
		free(cfg);
		return;
	}
	const struct config **o = realloc(srv->old_cfgs, (srv->nold + 1) * sizeof(*o));
	if (!o) {
		free(cfg);
		return;
	}
	srv->old_cfgs = o;
	srv->old_cfgs[srv->nold++] = old;
	enum log_level lv = srv->log.level;
	log_level_parse(cfg->log_level, &lv);
	srv->log.level = lv;
	atomic_store_explicit(&srv->cfg, cfg, memory_order_release);
	log_emit(&srv->log, LOG_INFO, 0, "reload", "source=%s hostname=%s log_level=%s",
		 cfg->source, cfg->hostname, cfg->log_level);
	/* Each loop records the generation when it handles the message: from
	 * then on it holds no pointer it loaded before this swap outside a
	 * reference (server_reloads_seen). */
	uint64_t gen = atomic_fetch_add_explicit(&srv->reload_gen, 1, memory_order_acq_rel) + 1;
	broadcast(ring, srv, LOOP_MSG_RELOAD, gen);
}

int server_run(struct server *srv)
{
	pthread_barrier_t ready;
	struct thread_arg *args;
	struct io_uring ring;
	sigset_t set;
	int rc, exit_code = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rc = io_uring_queue_init(64, &ring, 0))) {
		log_emit(&srv->log, LOG_ERROR, 0, "start", "error=\"io_uring: %s\"", strerror(-rc));
		return 1;
	}
	args = calloc(srv->nloops, sizeof(*args));
	pthread_barrier_init(&ready, NULL, srv->nloops + 1);
	atomic_store(&srv->running, srv->nloops);
	for (unsigned i = 0; i < srv->nloops; i++) {
		args[i] = (struct thread_arg){ srv, i, &ready };
		pthread_create(&srv->loops[i]->thread, NULL, loop_thread, &args[i]);
	}
	pthread_barrier_wait(&ready);
	for (unsigned i = 0; i < srv->nloops; i++) {
		if (srv->loops[i]->start_rc) {
			log_emit(&srv->log, LOG_ERROR, 0, "start", "loop=%u error=\"%s\"", i,
				 strerror(-srv->loops[i]->start_rc));
			exit_code = 1;
		}
	}
	const struct config *cfg = server_config(srv);
	if (exit_code == 0)
		log_emit(&srv->log, LOG_INFO, 0, "started",
			 "loops=%u listeners=%zu port_offset=%u hostname=%s pid=%d", srv->nloops,
			 srv->nlisteners, cfg->port_offset, cfg->hostname, (int)getpid());
	else
		broadcast(&ring, srv, LOOP_MSG_SHUTDOWN, 0);

	while (atomic_load(&srv->running) > 0) {
		struct timespec ts = { 0, 200 * 1000000 };
		siginfo_t si;
		int sig = sigtimedwait(&set, &si, &ts);
		if (sig == SIGHUP) {
			reload(&ring, srv);
		} else if (sig == SIGTERM || sig == SIGINT) {
			if (!atomic_exchange(&srv->stopping, true)) {
				log_emit(&srv->log, LOG_INFO, 0, "stopping", "signal=%s grace_ms=%u",
					 sig == SIGTERM ? "TERM" : "INT",
					 server_config(srv)->shutdown_grace_ms);
				broadcast(&ring, srv, LOOP_MSG_SHUTDOWN, 0);
			}
		}
	}
	for (unsigned i = 0; i < srv->nloops; i++)
		pthread_join(srv->loops[i]->thread, NULL);
	for (unsigned i = 0; i < srv->nloops; i++)
		loop_teardown(srv->loops[i]);
	pthread_barrier_destroy(&ready);
	free(args);
	io_uring_queue_exit(&ring);
	log_emit(&srv->log, LOG_INFO, 0, "stopped", "exit=%d", exit_code);
	return exit_code;
}

void server_free(struct server *srv)
{
	if (srv->loops) {
		for (unsigned i = 0; i < srv->nloops; i++)
			free(srv->loops[i]);
	}
	free(srv->loops);
	free(srv->listen_fds);
	for (size_t i = 0; i < srv->nold; i++)
		free((void *)srv->old_cfgs[i]);
	free((void *)server_config(srv));
	atomic_store(&srv->cfg, NULL);
	free(srv->old_cfgs);
	srv->loops = NULL;
	srv->listen_fds = NULL;
}

uint64_t server_reloads_seen(struct server *srv)
{
	uint64_t min = UINT64_MAX;
	for (unsigned i = 0; i < srv->nloops; i++) {
		uint64_t g = atomic_load_explicit(&srv->loops[i]->reload_seen, memory_order_acquire);
		if (g < min)
			min = g;
	}
	return srv->nloops ? min : atomic_load(&srv->reload_gen);
}
