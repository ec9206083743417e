/* common.h - what the load generators share: a latency histogram, the
 * server's CPU time (/proc/PID/stat or a cgroup's cpu.stat), the machine's
 * busy time, and the server's memory (/proc/PID/status, smaps_rollup). */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <liburing.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

uint64_t now_ns(void);

/* ---- histogram: log-linear, exact below 128, then 64 linear sub-buckets
 * per power of two (< 1.6 % error), up to 2^32 ---- */
enum {
	HIST_LINEAR = 128,
	HIST_SUB = 64,
	HIST_BUCKETS = HIST_LINEAR + (32 - 7) * HIST_SUB,
};

struct hist {
	uint64_t n;
	uint64_t max;
	uint64_t b[HIST_BUCKETS];
};

void hist_add(struct hist *h, uint64_t v);
void hist_merge(struct hist *into, const struct hist *from);
/* The q-quantile (0 < q <= 1), or 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

/* ---- CPU time ---- */
struct cpu_sample {
	bool ok;
	uint64_t user_us, sys_us, total_us;
};

/* utime+stime of every thread of pid, from /proc/PID/stat (clock ticks);
 * with children, plus cutime+cstime (reaped children). */
struct cpu_sample cpu_from_pid(long pid, bool children);
/* A cgroup v2 cpu.stat (usage_usec, ...), else a v1 cpuacct group. */
struct cpu_sample cpu_from_cgroup(const char *dir);
/* Busy time of all CPUs from /proc/stat, in microseconds; 0 if unreadable. */
uint64_t machine_busy_us(void);
/* This process's own CPU (RUSAGE_SELF), or its reaped children's. */
struct cpu_sample cpu_self(bool children);

/* ---- memory ---- */
struct mem_sample {
	bool ok;
	unsigned procs;          /* processes summed */
	uint64_t vmrss_kb;       /* VmRSS from /proc/PID/status */
	uint64_t rss_kb, pss_kb; /* Rss, Pss from /proc/PID/smaps_rollup */
	uint64_t anon_kb;        /* Anonymous from smaps_rollup */
	uint64_t private_kb;     /* Private_Clean + Private_Dirty */
};

/* One process. */
struct mem_sample mem_from_pid(long pid);
/* Every process of a cgroup (its cgroup.procs), summed. */
struct mem_sample mem_from_cgroup(const char *dir);
void mem_add(struct mem_sample *into, const struct mem_sample *m);

/* ---- the load generators' plumbing ---- */

enum { BENCH_MAX_SRC_ADDRS = 250, BENCH_DEFAULT_SRC_ADDRS = 16 };

/* The server's address, and the source addresses 127.0.0.1..N the client
 * sockets bind to (IP_BIND_ADDRESS_NO_PORT: each has its own ports). */
struct bench_addrs {
	struct sockaddr_storage dst;
	socklen_t dst_len;
	struct sockaddr_in src[BENCH_MAX_SRC_ADDRS];
	unsigned nsrc, next_src;
};

/* Resolves host:port; src_addrs < 0: BENCH_DEFAULT_SRC_ADDRS for an IPv4
 * loopback destination, else none. Prints why on failure (as prog). */
int bench_resolve(const char *prog, const char *host, const char *port, int src_addrs,
		  struct bench_addrs *a);
/* A TCP socket to a->dst, bound to the next source
 * address; -1 with errno on failure. */
int bench_socket(struct bench_addrs *a);
/* A ring for nclients clients with one operation and one cancel each
 * (SINGLE_ISSUER + DEFER_TASKRUN when the kernel has them). Returns 0 or
 * -errno; *unavailable is set when io_uring is missing or forbidden. */
int bench_ring_init(const char *prog, struct io_uring *ring, unsigned nclients, bool *unavailable);

/* Parses an unsigned decimal in [min, max]. */
bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *v_r);
/* The same with an optional k/K (x1024) or m/M (x1048576) suffix. */
bool parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *v_r);

/* ---- the server(s) measured: --server-pid and --server-cgroup, repeatable ---- */

enum { BENCH_MAX_SERVERS = 16 };

struct bench_servers {
	long pids[BENCH_MAX_SERVERS];
	unsigned npids;
	const char *cgroups[BENCH_MAX_SERVERS];
	unsigned ncgroups;
};

/* Adds a --server-pid (a decimal pid) or a --server-cgroup (a directory,
 * kept by pointer). false when full or not a pid. */
bool bench_servers_add_pid(struct bench_servers *s, const char *arg);
bool bench_servers_add_cgroup(struct bench_servers *s, const char *dir);
/* CPU summed: utime+stime plus reaped children of each pid, usage_usec of
 * each cgroup; ok only when there is at least one and each was read. */
struct cpu_sample bench_servers_cpu(const struct bench_servers *s);
/* Memory summed over every pid and every process of every cgroup. */
struct mem_sample bench_servers_mem(const struct bench_servers *s);

/* The server's CPU, ours and the machine's over a measured interval. */
struct bench_meter {
	struct cpu_sample s0, self0;
	uint64_t busy0_us, wall0_ns;
};

void bench_meter_start(struct bench_meter *m, const struct bench_servers *s);
/* Since bench_meter_start: the servers' CPU (ok false when not read), this
 * process's, and the CPU of everything else on the machine in % of one
 * core (-1 when unknown). */
void bench_meter_stop(const struct bench_meter *m, const struct bench_servers *s,
		      struct cpu_sample *cpu_r, struct cpu_sample *self_r, double *other_pct_r);

#endif
