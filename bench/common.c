/* common.c - see common.h. */
#include "common.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ---- */

static unsigned hist_index(uint64_t v)
{
	if (v > UINT32_MAX)
		v = UINT32_MAX;
	if (v < HIST_LINEAR)
		return (unsigned)v;
	unsigned e = 63 - (unsigned)__builtin_clzll(v); /* 7..31 */
	unsigned shift = e - 6;
	unsigned sub = (unsigned)(v >> shift) - HIST_SUB; /* 0..63 */
	return HIST_LINEAR + (e - 7) * HIST_SUB + sub;
}

/* The middle of bucket i, in the histogram's unit. */
static uint64_t hist_value(unsigned i)
{
	if (i < HIST_LINEAR)
		return i;
	unsigned e = (i - HIST_LINEAR) / HIST_SUB + 7;
	unsigned sub = (i - HIST_LINEAR) % HIST_SUB;
	unsigned shift = e - 6;
	uint64_t lo = (uint64_t)(sub + HIST_SUB) << shift;
	return lo + (((uint64_t)1 << shift) >> 1);
}

void hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->n++;
	if (v > h->max)
		h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->b[i] += from->b[i];
	into->n += from->n;
	if (from->max > into->max)
		into->max = from->max;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	if (h->n == 0)
		return 0;
	uint64_t rank = (uint64_t)ceil(q * (double)h->n);
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			uint64_t v = hist_value(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

/* ---- CPU ---- */

static long clock_hz(void)
{
	long hz = sysconf(_SC_CLK_TCK);
	return hz > 0 ? hz : 100;
}

struct cpu_sample cpu_from_pid(long pid, bool children)
{
	struct cpu_sample s = { 0 };
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return s;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: skip to the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return s;
	unsigned long long ut, st, cut, cst;
	/* Fields 3..13 skipped, then utime, stime, cutime, cstime (14..17). */
	if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
		   &ut, &st, &cut, &cst) != 4)
		return s;
	if (children) {
		ut += cut;
		st += cst;
	}
	unsigned long long hz = (unsigned long long)clock_hz();
	s.user_us = ut * 1000000u / hz;
	s.sys_us = st * 1000000u / hz;
	s.total_us = s.user_us + s.sys_us;
	s.ok = true;
	return s;
}

static bool read_u64_file(const char *dir, const char *name, uint64_t *v_r)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	unsigned long long v;
	bool ok = fscanf(f, "%llu", &v) == 1;
	fclose(f);
	*v_r = v;
	return ok;
}

struct cpu_sample cpu_from_cgroup(const char *dir)
{
	struct cpu_sample s = { 0 };
	char path[4096], key[64];
	unsigned long long v;
	snprintf(path, sizeof(path), "%s/cpu.stat", dir);
	FILE *f = fopen(path, "r");
	if (f) {
		int found = 0;
		while (fscanf(f, "%63s %llu", key, &v) == 2) {
			if (strcmp(key, "usage_usec") == 0)
				s.total_us = v, found |= 1;
			else if (strcmp(key, "user_usec") == 0)
				s.user_us = v, found |= 2;
			else if (strcmp(key, "system_usec") == 0)
				s.sys_us = v, found |= 4;
		}
		fclose(f);
		s.ok = found == 7;
		return s;
	}
	uint64_t tot, us, sy;
	if (read_u64_file(dir, "cpuacct.usage", &tot) &&
	    read_u64_file(dir, "cpuacct.usage_user", &us) &&
	    read_u64_file(dir, "cpuacct.usage_sys", &sy)) {
		s.total_us = tot / 1000;
		s.user_us = us / 1000;
		s.sys_us = sy / 1000;
		s.ok = true;
	}
	return s;
}

uint64_t machine_busy_us(void)
{
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return 0;
	unsigned long long v[8] = { 0 };
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		       &v[3], &v[4], &v[5], &v[6], &v[7]);
	fclose(f);
	if (n != 8)
		return 0;
	/* user, nice, system, irq, softirq, steal */
	return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * 1000000u /
	       (unsigned long long)clock_hz();
}

struct cpu_sample cpu_self(bool children)
{
	struct cpu_sample s = { .ok = true };
	struct rusage ru;
	getrusage(children ? RUSAGE_CHILDREN : RUSAGE_SELF, &ru);
	s.user_us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec;
	s.sys_us = (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
	s.total_us = s.user_us + s.sys_us;
	return s;
}

/* ---- memory ---- */

/* Reads "Key:   N kB" lines of a /proc file; calls back per key. */
static bool scan_kb(const char *path, void (*fn)(void *, const char *, uint64_t), void *arg)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[256];
	while (fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = '\0';
		char *end;
		errno = 0;
		unsigned long long v = strtoull(colon + 1, &end, 10);
		if (errno || end == colon + 1 || !strstr(end, "kB"))
			continue;
		fn(arg, line, v);
	}
	fclose(f);
	return true;
}

static void status_kb(void *arg, const char *key, uint64_t v)
{
	struct mem_sample *m = arg;
	if (strcmp(key, "VmRSS") == 0)
		m->vmrss_kb = v;
}

static void rollup_kb(void *arg, const char *key, uint64_t v)
{
	struct mem_sample *m = arg;
	if (strcmp(key, "Rss") == 0)
		m->rss_kb = v;
	else if (strcmp(key, "Pss") == 0)
		m->pss_kb = v;
	else if (strcmp(key, "Anonymous") == 0)
		m->anon_kb = v;
	else if (strcmp(key, "Private_Clean") == 0 || strcmp(key, "Private_Dirty") == 0)
		m->private_kb += v;
}

struct mem_sample mem_from_pid(long pid)
{
	struct mem_sample m = { 0 };
	char path[64];
	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	if (!scan_kb(path, status_kb, &m))
		return m;
	snprintf(path, sizeof(path), "/proc/%ld/smaps_rollup", pid);
	scan_kb(path, rollup_kb, &m); /* absent on old kernels: VmRSS alone */
	m.procs = 1;
	m.ok = true;
	return m;
}

void mem_add(struct mem_sample *into, const struct mem_sample *m)
{
	if (!m->ok)
		return;
	into->ok = true;
	into->procs += m->procs;
	into->vmrss_kb += m->vmrss_kb;
	into->rss_kb += m->rss_kb;
	into->pss_kb += m->pss_kb;
	into->anon_kb += m->anon_kb;
	into->private_kb += m->private_kb;
}

struct mem_sample mem_from_cgroup(const char *dir)
{
	struct mem_sample sum = { 0 };
	char path[4096];
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return sum;
	long pid;
	while (fscanf(f, "%ld", &pid) == 1) {
		struct mem_sample m = mem_from_pid(pid);
		mem_add(&sum, &m); /* a process that just exited is skipped */
	}
	fclose(f);
	return sum;
}

static bool parse_num(const char *s, bool suffix, uint64_t min, uint64_t max, uint64_t *v_r)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return false;
	if (suffix && (*end == 'k' || *end == 'K'))
		v *= 1024, end++;
	else if (suffix && (*end == 'm' || *end == 'M'))
		v *= 1024 * 1024, end++;
	if (*end || v < min || v > max)
		return false;
	*v_r = v;
	return true;
}

bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *v_r)
{
	return parse_num(s, false, min, max, v_r);
}

bool parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *v_r)
{
	return parse_num(s, true, min, max, v_r);
}

/* ---- the load generators' plumbing ---- */

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

int bench_resolve(const char *prog, const char *host, const char *port, int src_addrs,
		  struct bench_addrs *a)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai;
	int rc = getaddrinfo(host, port, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "%s: %s:%s: %s\n", prog, host, port, gai_strerror(rc));
		return -1;
	}
	memcpy(&a->dst, ai->ai_addr, ai->ai_addrlen);
	a->dst_len = ai->ai_addrlen;
	freeaddrinfo(ai);
	bool loopback4 = a->dst.ss_family == AF_INET &&
		(ntohl(((struct sockaddr_in *)&a->dst)->sin_addr.s_addr) >> 24) == 127;
	int n = src_addrs < 0 ? (loopback4 ? BENCH_DEFAULT_SRC_ADDRS : 0) : src_addrs;
	if (n > BENCH_MAX_SRC_ADDRS)
		n = BENCH_MAX_SRC_ADDRS;
	if (n > 0 && !loopback4) {
		fprintf(stderr, "%s: --src-addrs needs an IPv4 loopback destination\n", prog);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		a->src[i].sin_family = AF_INET;
		a->src[i].sin_port = 0;
		a->src[i].sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)i);
	}
	a->nsrc = (unsigned)n;
	a->next_src = 0;
	return 0;
}

int bench_socket(struct bench_addrs *a)
{
	int fd = socket(a->dst.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || !a->nsrc)
		return fd;
	int one = 1;
	const struct sockaddr_in *src = &a->src[a->next_src++ % a->nsrc];
	if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)src, sizeof(*src)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int bench_ring_init(const char *prog, struct io_uring *ring, unsigned nclients, bool *unavailable)
{
	unsigned sq = 64;
	while (sq < nclients + 16 && sq < 4096)
		sq <<= 1;
	struct io_uring_params p = { .flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER |
						IORING_SETUP_DEFER_TASKRUN,
				     .cq_entries = 2 * nclients + 64 };
	int rc = io_uring_queue_init_params(sq, ring, &p);
	if (rc == -EINVAL) {
		p = (struct io_uring_params){ .flags = IORING_SETUP_CQSIZE,
					      .cq_entries = 2 * nclients + 64 };
		rc = io_uring_queue_init_params(sq, ring, &p);
	}
	*unavailable = rc == -ENOSYS || rc == -EPERM;
	if (rc < 0)
		fprintf(stderr, "%s: io_uring_queue_init: %s\n", prog, strerror(-rc));
	return rc;
}

/* ---- the server(s) measured ---- */

bool bench_servers_add_pid(struct bench_servers *s, const char *arg)
{
	uint64_t v;
	if (s->npids == BENCH_MAX_SERVERS || !parse_u64(arg, 1, INT32_MAX, &v))
		return false;
	s->pids[s->npids++] = (long)v;
	return true;
}

bool bench_servers_add_cgroup(struct bench_servers *s, const char *dir)
{
	if (s->ncgroups == BENCH_MAX_SERVERS)
		return false;
	s->cgroups[s->ncgroups++] = dir;
	return true;
}

struct cpu_sample bench_servers_cpu(const struct bench_servers *s)
{
	struct cpu_sample sum = { 0 };
	bool ok = s->npids + s->ncgroups > 0;
	for (unsigned i = 0; i < s->npids; i++) {
		struct cpu_sample c = cpu_from_pid(s->pids[i], true);
		ok = ok && c.ok;
		sum.user_us += c.user_us, sum.sys_us += c.sys_us, sum.total_us += c.total_us;
	}
	for (unsigned i = 0; i < s->ncgroups; i++) {
		struct cpu_sample c = cpu_from_cgroup(s->cgroups[i]);
		ok = ok && c.ok;
		sum.user_us += c.user_us, sum.sys_us += c.sys_us, sum.total_us += c.total_us;
	}
	sum.ok = ok;
	return sum;
}

struct mem_sample bench_servers_mem(const struct bench_servers *s)
{
	struct mem_sample sum = { 0 };
	for (unsigned i = 0; i < s->npids; i++) {
		struct mem_sample m = mem_from_pid(s->pids[i]);
		mem_add(&sum, &m);
	}
	for (unsigned i = 0; i < s->ncgroups; i++) {
		struct mem_sample m = mem_from_cgroup(s->cgroups[i]);
		mem_add(&sum, &m);
	}
	return sum;
}

void bench_meter_start(struct bench_meter *m, const struct bench_servers *s)
{
	m->s0 = bench_servers_cpu(s);
	m->busy0_us = machine_busy_us();
	m->wall0_ns = now_ns();
	m->self0 = cpu_self(false);
}

void bench_meter_stop(const struct bench_meter *m, const struct bench_servers *s,
		      struct cpu_sample *cpu_r, struct cpu_sample *self_r, double *other_pct_r)
{
	struct cpu_sample s1 = bench_servers_cpu(s), self1 = cpu_self(false);
	struct cpu_sample cpu = { .ok = m->s0.ok && s1.ok };
	if (cpu.ok) {
		cpu.user_us = s1.user_us - m->s0.user_us;
		cpu.sys_us = s1.sys_us - m->s0.sys_us;
		cpu.total_us = s1.total_us - m->s0.total_us;
	}
	struct cpu_sample self = { .ok = true, .user_us = self1.user_us - m->self0.user_us,
				   .sys_us = self1.sys_us - m->self0.sys_us };
	self.total_us = self.user_us + self.sys_us;
	double other = -1;
	uint64_t busy1 = machine_busy_us(), wall_us = (now_ns() - m->wall0_ns) / 1000;
	if (cpu.ok && m->busy0_us && busy1 && wall_us) {
		double x = (double)(busy1 - m->busy0_us) - (double)cpu.total_us - (double)self.total_us;
		other = 100.0 * (x < 0 ? 0 : x) / (double)wall_us;
	}
	*cpu_r = cpu;
	*self_r = self;
	*other_pct_r = other;
}
