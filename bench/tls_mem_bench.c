/* tls_mem_bench.c - the server side of TLS handshakes in memory: CPU time
 * of tls/ (tls_conn_new .. tls_conn_free) per handshake, with no socket,
 * no event loop and no kernel in the way.
 *
 * A wolfSSL client (same library) and a tls_conn run in one thread through
 * two byte queues; only the server's calls are timed, on
 * CLOCK_THREAD_CPUTIME_ID, so other tenants of the machine change the
 * figure only through shared caches, not through scheduling. This is the
 * user-space part of what bench/tls_compare.sh measures end to end.
 *
 * The client offers one key share, X25519 (as tls_bench does), or P-256
 * with --group p256.
 *
 * --bound: after each round's handshakes, the same round times N times the
 * crypto bound of one handshake with the same library in the same thread:
 * ECDSA P-256 sign + X25519 key generation + X25519 agreement (what
 * tls_bench --crypto calls the bound; resume: key generation + agreement;
 * resume-psk: none), each iteration one CPU-time interval. Handshakes and
 * bound see the same machine load, so their ratio (bound / handshake, the
 * goal's "handshakes/s per core as a fraction of the crypto bound") is
 * steadier than two separate runs. The bound includes no hashing, key
 * schedule or record encryption: the server pays those on top.
 *
 * Reading CLOCK_THREAD_CPUTIME_ID is a system call (~0.6 us here), and a
 * handshake is timed as several intervals (tls_conn_new, each
 * tls_conn_read, close and free), a bound as one; every round measures an
 * empty interval and also reports both net of it. The ratio is net.
 *
 * usage: tls_mem_bench [--mode full|resume|resume-psk] [--group x25519|p256]
 *                      [-n N] [--rounds R] [--bound] [--json]
 * Prints the median over R rounds of N handshakes each.
 */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/wolfcrypt/curve25519.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"

struct q {
	uint8_t *p;
	size_t len, cap;
};

static int q_put(struct q *q, const uint8_t *p, size_t len)
{
	if (q->len + len > q->cap) {
		size_t cap = q->cap ? q->cap : 8192;
		uint8_t *np;

		while (cap < q->len + len)
			cap *= 2;
		np = realloc(q->p, cap);
		if (np == NULL)
			return -ENOMEM;
		q->p = np;
		q->cap = cap;
	}
	memcpy(q->p + q->len, p, len);
	q->len += len;
	return 0;
}

static void q_drop(struct q *q, size_t n)
{
	memmove(q->p, q->p + n, q->len - n);
	q->len -= n;
}

struct pair {
	struct q c2s, s2c;
};

static int srv_out(void *arg, const uint8_t *p, size_t len)
{
	return q_put(&((struct pair *)arg)->s2c, p, len);
}

static int cli_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct pair *p = arg;
	size_t n = p->s2c.len < (size_t)sz ? p->s2c.len : (size_t)sz;

	(void)ssl;
	if (n == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	memcpy(buf, p->s2c.p, n);
	q_drop(&p->s2c, n);
	return (int)n;
}

static int cli_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct pair *p = arg;

	(void)ssl;
	return q_put(&p->c2s, (const uint8_t *)buf, (size_t)sz) == 0 ? sz : WOLFSSL_CBIO_ERR_GENERAL;
}

/* The client's one key share (WOLFSSL_ECC_X25519 or _SECP256R1). */
static int key_group = WOLFSSL_ECC_X25519;

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double now_cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* The CPU time that one empty timed interval measures (reading
 * CLOCK_THREAD_CPUTIME_ID is a system call): the median of 2,001. */
static double clock_cost_us(void)
{
	double t[2001];

	for (int i = 0; i < 2001; i++) {
		double t0 = now_cpu_us();

		t[i] = now_cpu_us() - t0;
	}
	qsort(t, 2001, sizeof(t[0]), cmp_d);
	return t[1000];
}

/* Timed intervals of the handshakes so far (one() times a few per
 * handshake). */
static long intervals;

/* One handshake; returns the server's CPU time in us, or -1. *sess_io is
 * the client session to resume (in) and the new one (out). */
static double one(struct tls_server *srv, WOLFSSL_CTX *cctx, bool psk_only,
		  WOLFSSL_SESSION **sess_io, bool *reused_r)
{
	struct pair p = { 0 };
	struct tls_conn *c = NULL;
	WOLFSSL *cli = wolfSSL_new(cctx);
	uint8_t plain[256];
	double t0, spent = 0;
	bool cli_done = false, srv_done = false;
	int guard = 0;

	if (cli == NULL)
		return -1;
	wolfSSL_SSLSetIORecv(cli, cli_recv);
	wolfSSL_SSLSetIOSend(cli, cli_send);
	wolfSSL_SetIOReadCtx(cli, &p);
	wolfSSL_SetIOWriteCtx(cli, &p);
	if (psk_only)
		wolfSSL_no_dhe_psk(cli);
	else if (wolfSSL_UseKeyShare(cli, (word16)key_group) != WOLFSSL_SUCCESS)
		goto fail;
	if (*sess_io != NULL)
		wolfSSL_set_session(cli, *sess_io);
	t0 = now_cpu_us();
	if (tls_conn_new(srv, "imap", srv_out, &p, &c) != 0)
		goto fail;
	spent += now_cpu_us() - t0;
	intervals++;
	while (!(cli_done && srv_done) && guard++ < 20) {
		size_t used = 0, plen = 0;
		enum tls_status st;
		int r;

		if (!cli_done) {
			r = wolfSSL_connect(cli);
			if (r == WOLFSSL_SUCCESS)
				cli_done = true;
			else if (wolfSSL_get_error(cli, r) != WOLFSSL_ERROR_WANT_READ)
				goto fail;
		}
		t0 = now_cpu_us();
		st = tls_conn_read(c, (struct span){ p.c2s.p, p.c2s.len }, &used, plain, sizeof(plain), &plen);
		spent += now_cpu_us() - t0;
		intervals++;
		q_drop(&p.c2s, used);
		if (st == TLS_ERROR)
			goto fail;
		if (tls_conn_handshake_done(c))
			srv_done = true;
	}
	if (!(cli_done && srv_done))
		goto fail;
	/* The client reads the NewSessionTicket the server sent after its
	 * Finished (TLS 1.3), so the next round can resume. */
	(void)wolfSSL_read(cli, plain, sizeof(plain));
	*reused_r = tls_conn_resumed(c);
	t0 = now_cpu_us();
	tls_conn_close_notify(c);
	tls_conn_free(&c);
	spent += now_cpu_us() - t0;
	intervals++;
	if (*sess_io != NULL)
		wolfSSL_SESSION_free(*sess_io);
	*sess_io = wolfSSL_get1_session(cli);
	wolfSSL_free(cli);
	free(p.c2s.p);
	free(p.s2c.p);
	return spent;
fail:
	tls_conn_free(&c);
	wolfSSL_free(cli);
	free(p.c2s.p);
	free(p.s2c.p);
	return -1;
}


/* The mean of the middle half of t[0..n) (sorts t): robust to preemption
 * spikes. */
static double mid_mean(double *t, int n)
{
	double s = 0;
	int lo = n / 4, hi = n - n / 4;

	qsort(t, (size_t)n, sizeof(*t), cmp_d);
	for (int i = lo; i < hi; i++)
		s += t[i];
	return s / (hi - lo);
}

/* The crypto bound's operations, as tls_bench --crypto runs them. */
struct bound {
	WC_RNG rng;
	ecc_key ek;
	curve25519_key peer;
};

static int bound_init(struct bound *b)
{
	if (wc_InitRng(&b->rng) || wc_ecc_init(&b->ek) ||
	    wc_ecc_make_key_ex(&b->rng, 32, &b->ek, ECC_SECP256R1) ||
	    wc_curve25519_init(&b->peer) || wc_curve25519_make_key(&b->rng, 32, &b->peer))
		return -1;
	wc_ecc_set_rng(&b->ek, &b->rng);
	return 0;
}

/* One bound: sign (when sign) + X25519 key generation + agreement. Returns
 * its CPU time in us, or -1. */
static double bound_one(struct bound *b, bool sign)
{
	byte hash[32] = { 1 }, sig[128], shared[32];
	word32 siglen = sizeof(sig), slen = sizeof(shared);
	curve25519_key k;
	double t0 = now_cpu_us(), t;
	int r = 0;

	if (sign)
		r |= wc_ecc_sign_hash(hash, 32, sig, &siglen, &b->rng, &b->ek);
	r |= wc_curve25519_init(&k);
	r |= wc_curve25519_make_key(&b->rng, 32, &k);
	r |= wc_curve25519_shared_secret(&k, &b->peer, shared, &slen);
	t = now_cpu_us() - t0;
	wc_curve25519_free(&k);
	return r == 0 ? t : -1;
}

static void bound_free(struct bound *b)
{
	wc_curve25519_free(&b->peer);
	wc_ecc_free(&b->ek);
	wc_FreeRng(&b->rng);
}

int main(int argc, char **argv)
{
	enum { O_MODE = 1, O_ROUNDS, O_JSON, O_GROUP, O_BOUND };
	static const struct option opts[] = {
		{ "bound", no_argument, NULL, O_BOUND },
		{ "mode", required_argument, NULL, O_MODE },
		{ "group", required_argument, NULL, O_GROUP },
		{ "rounds", required_argument, NULL, O_ROUNDS },
		{ "json", no_argument, NULL, O_JSON },
		{ NULL, 0, NULL, 0 },
	};
	const char *mode = "full", *group = "x25519";
	int n = 2000, rounds = 5, o;
	bool json = false, with_bound = false;
	char dir[] = "/tmp/tls-mem-bench-XXXXXX", err[256];
	struct tls_server *srv = NULL;
	WOLFSSL_CTX *cctx;
	double *med;

	while ((o = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
		switch (o) {
		case O_MODE: mode = optarg; break;
		case O_GROUP: group = optarg; break;
		case 'n': n = atoi(optarg); break;
		case O_ROUNDS: rounds = atoi(optarg); break;
		case O_JSON: json = true; break;
		case O_BOUND: with_bound = true; break;
		default:
			fprintf(stderr, "usage: tls_mem_bench [--mode full|resume|resume-psk] [--group x25519|p256] [-n N] [--rounds R] [--bound] [--json]\n");
			return 2;
		}
	}
	bool resume = strcmp(mode, "full") != 0, psk_only = strcmp(mode, "resume-psk") == 0;

	int groups[1] = { strcmp(group, "p256") == 0 ? WOLFSSL_ECC_SECP256R1 : WOLFSSL_ECC_X25519 };

	if (n < 1 || rounds < 1 || (resume && !psk_only && strcmp(mode, "resume") != 0) ||
	    (strcmp(group, "p256") != 0 && strcmp(group, "x25519") != 0)) {
		fprintf(stderr, "tls_mem_bench: bad arguments\n");
		return 2;
	}
	if (tls_global_init() != 0 || mkdtemp(dir) == NULL)
		return 1;
	struct tls_server_config cfg = { .data_dir = dir, .hostname = "mail.example.com" };
	if (tls_server_new(&cfg, &srv, err, sizeof(err)) != 0) {
		fprintf(stderr, "tls_mem_bench: %s\n", err);
		return 1;
	}
	cctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
	if (cctx == NULL)
		return 1;
	wolfSSL_CTX_set_verify(cctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_UseSessionTicket(cctx);
	key_group = groups[0];
	if (wolfSSL_CTX_set_groups(cctx, groups, 1) != WOLFSSL_SUCCESS)
		return 1;
	med = calloc((size_t)rounds, sizeof(*med));
	double *t = calloc((size_t)n, sizeof(*t));
	double *bmed = calloc((size_t)rounds, sizeof(*bmed));
	double *ratio = calloc((size_t)rounds, sizeof(*ratio));
	double *net = calloc((size_t)rounds, sizeof(*net));
	if (med == NULL || t == NULL || bmed == NULL || ratio == NULL || net == NULL)
		return 1;
	/* resume-psk has no asymmetric crypto: no bound. */
	with_bound = with_bound && !psk_only;
	struct bound bd;
	if (with_bound && bound_init(&bd) != 0) {
		fprintf(stderr, "tls_mem_bench: wolfCrypt setup failed\n");
		return 1;
	}
	WOLFSSL_SESSION *sess = NULL;
	long reused = 0, total = 0;
	double clk = 0;
	for (int r = 0; r < rounds; r++) {
		long iv0 = intervals;

		for (int i = 0; i < n; i++) {
			bool re = false;

			if (!resume && sess != NULL) {
				wolfSSL_SESSION_free(sess);
				sess = NULL;
			}
			t[i] = one(srv, cctx, psk_only, &sess, &re);
			if (t[i] < 0) {
				fprintf(stderr, "tls_mem_bench: handshake failed\n");
				return 1;
			}
			reused += re;
			total++;
		}
		med[r] = mid_mean(t, n);
		/* What the timer itself adds: handshakes take several
		 * intervals each, a bound one; the ratio compares both net. */
		clk = clock_cost_us();
		double per_hs = (double)(intervals - iv0) / n;
		net[r] = med[r] - per_hs * clk;
		if (with_bound) {
			for (int i = 0; i < n; i++) {
				t[i] = bound_one(&bd, !resume);
				if (t[i] < 0) {
					fprintf(stderr, "tls_mem_bench: crypto bound failed\n");
					return 1;
				}
			}
			bmed[r] = mid_mean(t, n);
			ratio[r] = (bmed[r] - clk) / net[r];
		}
	}
	qsort(med, (size_t)rounds, sizeof(*med), cmp_d);
	qsort(bmed, (size_t)rounds, sizeof(*bmed), cmp_d);
	qsort(ratio, (size_t)rounds, sizeof(*ratio), cmp_d);
	qsort(net, (size_t)rounds, sizeof(*net), cmp_d);
	double per_hs = (double)intervals / (double)total;
	if (json) {
		printf("{\"mode\":\"%s\",\"group\":\"%s\",\"server_us\":%.2f,\"min_round_us\":%.2f,\"max_round_us\":%.2f,\"reused\":%ld,\"handshakes\":%ld,"
		       "\"timer_us\":%.3f,\"intervals_per_handshake\":%.2f,\"server_net_us\":%.2f",
		       mode, group, med[rounds / 2], med[0], med[rounds - 1], reused, total,
		       clk, per_hs, net[rounds / 2]);
		if (with_bound)
			printf(",\"bound_us\":%.2f,\"bound_net_us\":%.2f,\"ratio\":%.3f,\"min_ratio\":%.3f,\"max_ratio\":%.3f",
			       bmed[rounds / 2], bmed[rounds / 2] - clk, ratio[rounds / 2], ratio[0],
			       ratio[rounds - 1]);
		printf("}\n");
	} else {
		printf("%s %s: server CPU %.2f us/handshake (median of %d rounds x %d; rounds %.2f..%.2f), reused %ld/%ld\n",
		       mode, group, med[rounds / 2], rounds, n, med[0], med[rounds - 1], reused, total);
		printf("%s %s: net of the timer (%.2f intervals x %.3f us): %.2f us/handshake\n",
		       mode, group, per_hs, clk, net[rounds / 2]);
		if (with_bound)
			printf("%s %s: crypto bound %.2f us, net %.2f (%s); net bound / net handshake %.3f (rounds %.3f..%.3f)\n",
			       mode, group, bmed[rounds / 2], bmed[rounds / 2] - clk,
			       resume ? "X25519 keygen + agree" : "ECDSA P-256 sign + X25519 keygen + agree",
			       ratio[rounds / 2], ratio[0], ratio[rounds - 1]);
	}
	if (with_bound)
		bound_free(&bd);
	if (sess != NULL)
		wolfSSL_SESSION_free(sess);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
	char path[128];
	snprintf(path, sizeof(path), "%s/tls/cert.pem", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/tls/key.pem", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/tls", dir);
	rmdir(path);
	rmdir(dir);
	free(t);
	free(med);
	free(bmed);
	free(ratio);
	free(net);
	return 0;
}
