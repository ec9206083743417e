/* pop3_bench.c - POP3 login + RETR throughput (bench/pop3_bench.sh).
 *
 * T threads, each with its own user (userN@DOMAIN, N = thread index, so
 * servers that lock the maildrop never make clients wait for each other),
 * loop for D seconds: connect, greeting, USER, PASS, STAT, RETR 1 (read to
 * the terminating "."), QUIT, close. Prints one JSON line: sessions/s,
 * bytes of message read per second, latency percentiles, errors.
 *
 * Blocking sockets and threads: simple, and the same client for every
 * server in a run, which is all a ratio needs.
 *
 * usage: pop3_bench HOST PORT THREADS SECONDS PASSWORD [DOMAIN [PREFIX [FIRST]]]
 * (thread N logs in as PREFIX<FIRST+N>@DOMAIN; PREFIX "user", FIRST 0) */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LAT_MAX 200000 /* latencies kept per thread */

struct worker {
	pthread_t t;
	int idx;
	uint64_t sessions, errors, bytes;
	uint32_t *lat; /* microseconds */
	size_t nlat;
};

static const char *host, *password, *domain = "example.com", *prefix = "user";
static int first;
static int port;
static atomic_bool stop;

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct conn {
	int fd;
	char buf[65536];
	size_t len, off;
};

/* Reads one line into line (without CRLF). Returns its length, -1 on
 * error or EOF. */
static ssize_t read_line(struct conn *c, char *line, size_t cap)
{
	for (;;) {
		char *lf = memchr(c->buf + c->off, '\n', c->len - c->off);
		if (lf) {
			size_t n = (size_t)(lf - (c->buf + c->off));
			size_t t = n > 0 && c->buf[c->off + n - 1] == '\r' ? n - 1 : n;
			if (t >= cap)
				t = cap - 1;
			memcpy(line, c->buf + c->off, t);
			line[t] = '\0';
			c->off += n + 1;
			return (ssize_t)t;
		}
		if (c->off > 0) {
			memmove(c->buf, c->buf + c->off, c->len - c->off);
			c->len -= c->off;
			c->off = 0;
		}
		if (c->len == sizeof(c->buf))
			return -1;
		ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
		if (r <= 0)
			return -1;
		c->len += (size_t)r;
	}
}

static int cmd(struct conn *c, const char *text)
{
	char line[1024];
	size_t n = strlen(text);
	if (send(c->fd, text, n, MSG_NOSIGNAL) != (ssize_t)n)
		return -1;
	if (read_line(c, line, sizeof(line)) < 0)
		return -1;
	return line[0] == '+' ? 0 : -1;
}

static int session(struct worker *w, struct sockaddr_in *sa)
{
	struct conn *c = malloc(sizeof(*c));
	char line[1024], text[256];
	int rc = -1;
	if (!c)
		return -1;
	c->len = c->off = 0;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (c->fd < 0)
		goto out_free;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = { 10, 0 };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(c->fd, (struct sockaddr *)sa, sizeof(*sa)))
		goto out;
	if (read_line(c, line, sizeof(line)) < 0 || line[0] != '+')
		goto out;
	snprintf(text, sizeof(text), "USER %s%d@%s\r\n", prefix, first + w->idx, domain);
	if (cmd(c, text))
		goto out;
	snprintf(text, sizeof(text), "PASS %s\r\n", password);
	if (cmd(c, text) || cmd(c, "STAT\r\n") || cmd(c, "RETR 1\r\n"))
		goto out;
	for (;;) {
		ssize_t n = read_line(c, line, sizeof(line));
		if (n < 0)
			goto out;
		if (n == 1 && line[0] == '.')
			break;
		w->bytes += (uint64_t)n + 2;
	}
	if (cmd(c, "QUIT\r\n"))
		goto out;
	rc = 0;
out:
	close(c->fd);
out_free:
	free(c);
	return rc;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	inet_pton(AF_INET, host, &sa.sin_addr);
	while (!atomic_load(&stop)) {
		uint64_t t0 = now_us();
		if (session(w, &sa)) {
			w->errors++;
			usleep(1000);
			continue;
		}
		w->sessions++;
		if (w->nlat < LAT_MAX)
			w->lat[w->nlat++] = (uint32_t)(now_us() - t0);
	}
	return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s HOST PORT THREADS SECONDS PASSWORD [DOMAIN [PREFIX [FIRST]]]\n",
			argv[0]);
		return 1;
	}
	host = argv[1];
	port = atoi(argv[2]);
	int nt = atoi(argv[3]);
	double secs = atof(argv[4]);
	password = argv[5];
	if (argc > 6)
		domain = argv[6];
	if (argc > 7)
		prefix = argv[7];
	if (argc > 8)
		first = atoi(argv[8]);
	struct worker *w = calloc((size_t)nt, sizeof(*w));
	if (!w)
		return 1;
	uint64_t t0 = now_us();
	for (int i = 0; i < nt; i++) {
		w[i].idx = i;
		w[i].lat = malloc(LAT_MAX * sizeof(uint32_t));
		pthread_create(&w[i].t, NULL, run, &w[i]);
	}
	usleep((useconds_t)(secs * 1e6));
	atomic_store(&stop, true);
	uint64_t sessions = 0, errors = 0, bytes = 0;
	size_t nlat = 0;
	for (int i = 0; i < nt; i++) {
		pthread_join(w[i].t, NULL);
		sessions += w[i].sessions;
		errors += w[i].errors;
		bytes += w[i].bytes;
		nlat += w[i].nlat;
	}
	double el = (double)(now_us() - t0) / 1e6;
	uint32_t *all = malloc((nlat ? nlat : 1) * sizeof(*all));
	size_t k = 0;
	for (int i = 0; i < nt; i++)
		for (size_t j = 0; j < w[i].nlat; j++)
			all[k++] = w[i].lat[j];
	qsort(all, nlat, sizeof(*all), cmp_u32);
	printf("{\"sessions\":%llu,\"errors\":%llu,\"seconds\":%.3f,\"sessions_per_s\":%.1f,"
	       "\"mb_per_s\":%.2f,\"p50_us\":%u,\"p99_us\":%u}\n",
	       (unsigned long long)sessions, (unsigned long long)errors, el, (double)sessions / el,
	       (double)bytes / el / 1e6, nlat ? all[nlat / 2] : 0,
	       nlat ? all[nlat * 99 / 100] : 0);
	return 0;
}
