/* splice_floor.c - the kernel floor for a plaintext body FETCH.
 *
 * What does it cost, at the least, to move a message that sits in the page
 * cache to a client over loopback TCP? This program sends a file to a
 * reader over a loopback connection with plain blocking syscalls and no
 * protocol at all, and reports its own CPU time (user + system, the
 * loopback delivery the kernel runs in the sender's context included) per
 * MiB sent, for three ways of doing it, on a non-blocking socket (a full
 * socket is a poll() for POLLOUT, as a server waits):
 *
 *   copy      pread() into a 64 KiB buffer, send() it (two copies: what
 *             ringmail's copy path does, without the ring)
 *   splice    splice() file -> pipe (1 MiB pipe), splice() pipe -> socket
 *             (page references, no copy: what the splice path does, without
 *             io_uring's kernel worker hand-offs)
 *   sendfile  sendfile() file -> socket (the same, in one call)
 *
 * The reader is a child process that reads and discards (pinned to another
 * CPU with --reader-cpu); its CPU per MiB is reported apart. Over loopback
 * the kernel charges part of the TCP work to whichever side's context it
 * runs in (the receiver's ACKs open the window and send more data from its
 * side), so the sum of both is the figure to compare with imapload's
 * server + client CPU per MiB (bench/RESULTS.md).
 *
 * Usage: splice-floor [--mode copy|splice|sendfile] [--mib N] [--reader-cpu C] FILE
 * Prints one line: "mode=M mib=N cpu_us_per_mib=X user_us_per_mib=U
 * sys_us_per_mib=S reader_us_per_mib=R sum_us_per_mib=X+R". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { COPY_CHUNK = 64 * 1024, PIPE_SIZE = 1024 * 1024 };

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* The socket is non-blocking, as a server's is: a full socket means
 * waiting for POLLOUT, not sleeping inside the send. */
static void wait_out(int sock)
{
	struct pollfd pfd = { .fd = sock, .events = POLLOUT };
	if (poll(&pfd, 1, -1) < 0)
		die("poll");
}

static double tv_us(struct timeval tv)
{
	return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec;
}

/* Sends len bytes of fd from off to sock. */
static void send_range(const char *mode, int fd, off_t off, size_t len, int sock, int p[2],
		       char *buf)
{
	while (len > 0) {
		if (!strcmp(mode, "copy")) {
			size_t n = len < COPY_CHUNK ? len : COPY_CHUNK;
			ssize_t r = pread(fd, buf, n, off);
			if (r <= 0)
				die("pread");
			for (ssize_t w = 0; w < r;) {
				ssize_t k = send(sock, buf + w, (size_t)(r - w), MSG_NOSIGNAL);
				if (k < 0 && errno == EAGAIN) {
					wait_out(sock);
					continue;
				}
				if (k < 0)
					die("send");
				w += k;
			}
			off += r;
			len -= (size_t)r;
		} else if (!strcmp(mode, "splice")) {
			size_t n = len < PIPE_SIZE - 4096 ? len : PIPE_SIZE - 4096;
			/* the pipe end is blocking: the pipe holds n */
			loff_t o = off;
			ssize_t r = splice(fd, &o, p[1], NULL, n, SPLICE_F_MOVE);
			if (r <= 0)
				die("splice file->pipe");
			for (ssize_t w = 0; w < r;) {
				ssize_t k = splice(p[0], NULL, sock, NULL, (size_t)(r - w), SPLICE_F_MOVE);
				if (k < 0 && errno == EAGAIN) {
					wait_out(sock);
					continue;
				}
				if (k <= 0)
					die("splice pipe->socket");
				w += k;
			}
			off += r;
			len -= (size_t)r;
		} else {
			ssize_t r = sendfile(sock, fd, &off, len < PIPE_SIZE ? len : PIPE_SIZE);
			if (r < 0 && errno == EAGAIN) {
				wait_out(sock);
				continue;
			}
			if (r <= 0)
				die("sendfile");
			len -= (size_t)r;
		}
	}
}

int main(int argc, char **argv)
{
	const char *mode = "splice";
	long mib = 1024, reader_cpu = -1;
	static const struct option opts[] = {
		{ "mode", required_argument, NULL, 'm' },
		{ "mib", required_argument, NULL, 'n' },
		{ "reader-cpu", required_argument, NULL, 'r' },
		{ 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "m:n:r:", opts, NULL)) != -1) {
		if (o == 'm')
			mode = optarg;
		else if (o == 'n')
			mib = atol(optarg);
		else if (o == 'r')
			reader_cpu = atol(optarg);
		else
			return 2;
	}
	if (optind != argc - 1 || mib <= 0 ||
	    (strcmp(mode, "copy") && strcmp(mode, "splice") && strcmp(mode, "sendfile"))) {
		fprintf(stderr, "usage: splice-floor [--mode copy|splice|sendfile] [--mib N] "
				"[--reader-cpu C] FILE\n");
		return 2;
	}
	int fd = open(argv[optind], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) || st.st_size < 1)
		die(argv[optind]);

	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &alen))
		die("listen");
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (reader_cpu >= 0) {
			cpu_set_t set;
			CPU_ZERO(&set);
			CPU_SET((int)reader_cpu, &set);
			sched_setaffinity(0, sizeof(set), &set);
		}
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
			die("connect");
		static char rb[1 << 20];
		while (read(c, rb, sizeof(rb)) > 0)
			;
		_exit(0);
	}
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	if (s < 0)
		die("accept");
	int p[2];
	if (pipe2(p, O_CLOEXEC) || fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE) < 0)
		die("pipe");
	static char buf[COPY_CHUNK];
	/* one round first: the page cache and the socket buffers warm up */
	send_range(mode, fd, 0, (size_t)st.st_size, s, p, buf);
	struct rusage r0, r1;
	getrusage(RUSAGE_SELF, &r0);
	size_t total = (size_t)mib << 20, sent = 0;
	while (sent < total) {
		size_t n = (size_t)st.st_size < total - sent ? (size_t)st.st_size : total - sent;
		send_range(mode, fd, 0, n, s, p, buf);
		sent += n;
	}
	getrusage(RUSAGE_SELF, &r1);
	close(s);
	waitpid(child, NULL, 0);
	struct rusage rc;
	getrusage(RUSAGE_CHILDREN, &rc);
	double u = tv_us(r1.ru_utime) - tv_us(r0.ru_utime);
	double sy = tv_us(r1.ru_stime) - tv_us(r0.ru_stime);
	/* the reader read the warm-up round too */
	double rd = (tv_us(rc.ru_utime) + tv_us(rc.ru_stime)) /
		    ((double)mib + (double)st.st_size / 1048576.0);
	printf("mode=%s mib=%ld cpu_us_per_mib=%.1f user_us_per_mib=%.1f sys_us_per_mib=%.1f "
	       "reader_us_per_mib=%.1f sum_us_per_mib=%.1f\n",
	       mode, mib, (u + sy) / (double)mib, u / (double)mib, sy / (double)mib, rd,
	       (u + sy) / (double)mib + rd);
	return 0;
}
