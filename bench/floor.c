/* floor.c - the kernel floor for ringmail's greeting benchmark.
 *
 * A minimal single-threaded epoll server: accept, write "220 floor
 * ESMTP\r\n", read until the client sends QUIT, write "221 bye\r\n", close.
 * It does the least a server that speaks first must do per connection
 * (accept4, epoll_ctl, send, epoll_wait, recv, send, close), so its CPU time
 * per connection, measured by ringload exactly as ringmail's is, is the
 * physical limit that ringmail's greeting cost is compared with.
 *
 * Usage: floor-server [--host ADDR] [--port PORT] [--backlog N]
 * --port 0 binds an ephemeral port. Once listening it prints one line to
 * stdout, "listening ADDR PORT", and flushes it. SIGINT/SIGTERM (through a
 * signalfd, so no global flag) end it with a count on stderr. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
	FLOOR_EVENTS = 256,     /* epoll_wait batch */
	FLOOR_READ = 1024,      /* bytes read per recv */
	QUIT_TAIL = 3,          /* bytes of "QUIT" that may straddle two reads */
};

static const char banner[] = "220 floor ESMTP\r\n";
static const char bye[] = "221 bye\r\n";

/* Per-descriptor state: the last bytes read, so a QUIT split across two
 * reads is still found. Indexed by fd (descriptors are small integers). */
struct floor_conn {
	uint8_t ntail;
	char tail[QUIT_TAIL];
};

struct floor {
	int lfd, ep, sfd;
	struct floor_conn *conns;
	size_t nconns;
	uint64_t served;
};

static int floor_listen(const char *host, int port, int backlog, int *port_r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "floor-server: bad IPv4 address %s\n", host);
		return -1;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	socklen_t len = sizeof(sa);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		perror("floor-server: listen");
		close(fd);
		return -1;
	}
	*port_r = ntohs(sa.sin_port);
	return fd;
}

static void floor_close(struct floor *f, int fd)
{
	close(fd);  /* also removes it from the epoll set */
	f->served++;
}

/* Sends a whole short reply; the socket buffer of a fresh connection always
 * has room for it. Returns false if it could not. */
static bool floor_send(int fd, const char *s, size_t n)
{
	return send(fd, s, n, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)n;
}

static void floor_accept(struct floor *f)
{
	for (;;) {
		int fd = accept4(f->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				perror("floor-server: accept4");
			return;  /* EAGAIN, or EMFILE until a close frees one */
		}
		if ((size_t)fd >= f->nconns || !floor_send(fd, banner, sizeof(banner) - 1)) {
			close(fd);
			continue;
		}
		f->conns[fd].ntail = 0;
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		if (epoll_ctl(f->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			close(fd);
	}
}

/* Returns true when "QUIT" (any case) occurs in tail+data. */
static bool floor_saw_quit(struct floor_conn *c, const char *data, size_t n)
{
	char win[QUIT_TAIL + FLOOR_READ];
	size_t len = c->ntail;
	memcpy(win, c->tail, c->ntail);
	memcpy(win + len, data, n);
	len += n;
	for (size_t i = 0; i + 4 <= len; i++)
		if (strncasecmp(win + i, "QUIT", 4) == 0)
			return true;
	size_t keep = len < QUIT_TAIL ? len : QUIT_TAIL;
	memcpy(c->tail, win + len - keep, keep);
	c->ntail = (uint8_t)keep;
	return false;
}

static void floor_readable(struct floor *f, int fd)
{
	char buf[FLOOR_READ];
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		if (r <= 0) {
			floor_close(f, fd);  /* EOF or error */
			return;
		}
		if (floor_saw_quit(&f->conns[fd], buf, (size_t)r)) {
			floor_send(fd, bye, sizeof(bye) - 1);
			floor_close(f, fd);
			return;
		}
	}
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	int port = 2525, backlog = 4096;
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "backlog", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "H:p:b:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H':
			host = optarg;
			break;
		case 'p':
			port = atoi(optarg);
			break;
		case 'b':
			backlog = atoi(optarg);
			break;
		default:
			fprintf(ch == 'h' ? stdout : stderr,
				"usage: floor-server [--host ADDR] [--port PORT|0] [--backlog N]\n");
			return ch == 'h' ? 0 : 1;
		}
	}
	if (optind != argc || port < 0 || port > 65535 || backlog < 1) {
		fprintf(stderr, "usage: floor-server [--host ADDR] [--port PORT|0] [--backlog N]\n");
		return 1;
	}

	struct floor f = { .lfd = -1, .ep = -1, .sfd = -1 };
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		rl.rlim_cur = 1024;
	f.nconns = rl.rlim_cur > (1u << 20) ? (1u << 20) : rl.rlim_cur;
	f.conns = calloc(f.nconns, sizeof(*f.conns));

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	int bound;
	if (!f.conns || (f.lfd = floor_listen(host, port, backlog, &bound)) < 0 ||
	    (f.ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    (f.sfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0)
		goto err;
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = f.lfd };
	if (epoll_ctl(f.ep, EPOLL_CTL_ADD, f.lfd, &ev) < 0)
		goto err;
	ev.data.fd = f.sfd;
	if (epoll_ctl(f.ep, EPOLL_CTL_ADD, f.sfd, &ev) < 0)
		goto err;
	printf("listening %s %d\n", host, bound);
	fflush(stdout);

	struct epoll_event evs[FLOOR_EVENTS];
	for (;;) {
		int n = epoll_wait(f.ep, evs, FLOOR_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto err;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == f.lfd)
				floor_accept(&f);
			else if (fd == f.sfd)
				goto out;
			else
				floor_readable(&f, fd);
		}
	}
out:
	fprintf(stderr, "floor-server: %llu connections served\n", (unsigned long long)f.served);
	free(f.conns);
	return 0;
err:
	perror("floor-server");
	free(f.conns);
	return 1;
}
