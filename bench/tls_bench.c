/* tls_bench.c - TLS handshakes and bulk transfer against ringmail, with the
 * server's CPU per operation, and the crypto bound of one handshake.
 *
 * The client is the bundled wolfSSL (the same static build as the server),
 * as a filter over memory on io_uring (bench/loadgen.c, as imapload): one
 * process, one ring, -c connections in flight. The client is not what is
 * measured; the server's CPU time is (from /proc/PID/stat or a cgroup's
 * cpu.stat, read after every connection's warm-up cycle and at the end).
 * Each mode prints the rate, the latency of a cycle (of a RETR) as
 * p50/p99/p999, errors by kind and the server's CPU per connection (per
 * MB); --json one line.
 *
 * Modes (--mode):
 *   plain    connect, read the greeting line, close (no TLS): the baseline
 *            that full/resume subtract to isolate the handshake
 *   full     connect, full TLS handshake, read the greeting, close_notify,
 *            close
 *   resume   the same, every connection after a thread's first resumes
 *            with the ticket of its previous connection (psk_dhe_ke: an
 *            X25519 exchange, what OpenSSL, NSS and wolfSSL clients offer)
 *   resume-psk  the same with psk_ke only (no (EC)DHE; wolfSSL_no_dhe_psk)
 *   retr     one TLS connection to a POP3 port: USER/PASS, one warm-up
 *            RETR 1, then RETR 1 in a loop; MB/s and the server's CPU per MB
 * --crypto: the crypto bound of one handshake, timed on CPU time
 *   (CLOCK_THREAD_CPUTIME_ID, so other tenants do not inflate it) with the
 *   same wolfCrypt build: ECDSA P-256 sign, X25519 key generation (with
 *   the bundled build, tls/tls_x25519.c's table version, which the server
 *   uses too) and agreement, ECDSA verify, AES-128-GCM and ChaCha20-Poly1305 on 16 KiB
 *   records, SHA-256 of 1 KiB (about one handshake's transcript) and which
 *   SHA-256 wolfCrypt runs (the bundled build's SHA-NI or its own). The
 *   bound is sign + key generation + agreement only: no hashing, key
 *   schedule or record encryption, which the server pays on top.
 *
 * usage: tls_bench --port P [--mode M] [-c N] [-d SECS] [-n CONNS]
 *                  [--server-pid PID] [--server-cgroup DIR] [--json]
 *                  [--tls12] [--group x25519|p256] [--user U --pass P]
 *                  [--timeout-ms MS]
 * Exit status: 0, or 1 after an error or on bad usage; 77 when io_uring is
 * unavailable.
 *        tls_bench --crypto [--secs S] [--json]
 */

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/curve25519.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>
#if __has_include(<wolfssl/ringmail_sha256.h>)
#include <wolfssl/ringmail_sha256.h>
#define HAVE_RINGMAIL_SHA256 1
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "loadgen.h"

enum mode { M_PLAIN, M_FULL, M_RESUME, M_RESUME_PSK, M_RETR };

struct opts {
	const char *host;
	const char *port;
	enum mode mode;
	int clients;
	double duration;
	long max_conns;
	unsigned timeout_ms;
	struct bench_servers srv;
	bool json;
	bool tls12;
	int group; /* WOLFSSL_ECC_X25519 or WOLFSSL_ECC_SECP256R1 */
	const char *user, *pass;
	int src_addrs;
	double secs; /* --crypto */
};

static struct opts o = {
	.host = "127.0.0.1", .port = NULL, .mode = M_FULL, .clients = 0, .duration = 5,
	.timeout_ms = 10000, .group = WOLFSSL_ECC_X25519, .src_addrs = -1, .secs = 1,
};

static uint64_t cpu_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the load modes on io_uring (bench/loadgen.c) ----------------------- */

static const char *const mode_name[] = { "plain", "full", "resume", "resume-psk", "retr" };

enum tstep { T_GREETING, T_USER, T_PASS, T_RETR_WARM, T_RETR, T_QUIT };

struct tclient {
	struct loadgen_conn lc;   /* first: loadgen's */
	enum tstep step;
	bool warm;                /* the warm-up cycle, before the measurement */
	WOLFSSL_SESSION *sess;    /* resume: the ticket of the previous connection */
	struct loadgen_reply rep;
	uint64_t t_op_ns;         /* retr: when the RETR went out */
};

struct tb {
	bool measuring;
	bool retr_ready;          /* retr: the warm-up RETR came back */
	uint64_t reused;          /* measured connections that resumed */
	uint64_t retr_bytes;      /* retr: bytes of measured RETR replies */
	uint64_t warm_errors;
};

static struct tb *tb_of(struct loadgen *l)
{
	return l->user;
}

static struct tclient *tc_of(struct loadgen_conn *c)
{
	return (struct tclient *)c;
}

static bool resuming(void)
{
	return o.mode == M_RESUME || o.mode == M_RESUME_PSK;
}

static void cb_start(struct loadgen *l, struct loadgen_conn *lc)
{
	struct tclient *c = tc_of(lc);
	c->step = T_GREETING;
	c->warm = !tb_of(l)->measuring;
	loadgen_reply_reset(&c->rep, false);
}

static void cb_tls_new(struct loadgen *l, struct loadgen_conn *lc)
{
	struct tclient *c = tc_of(lc);
	(void)l;
	if (!o.tls12)
		wolfSSL_UseKeyShare(lc->ssl, (word16)o.group);
	if (c->sess && resuming())
		wolfSSL_set_session(lc->ssl, c->sess);
	if (o.mode == M_RESUME_PSK)
		wolfSSL_no_dhe_psk(lc->ssl);
}

static void cb_done(struct loadgen *l, struct loadgen_conn *lc)
{
	if (o.mode != M_RETR && !tc_of(lc)->warm)
		loadgen_record(l, lc->t_start_ns);
}

static void cmd(struct loadgen *l, struct tclient *c, enum tstep st, const char *s, bool multi)
{
	c->step = st;
	c->t_op_ns = now_ns();
	loadgen_deadline(l, &c->lc);
	loadgen_reply_reset(&c->rep, multi);
	if (!loadgen_send(l, &c->lc, s, strlen(s)))
		loadgen_fail(l, &c->lc, LG_ERR_OTHER, "queueing a command failed", NULL);
}

/* retr: after a whole +OK reply. */
static void retr_step(struct loadgen *l, struct tclient *c)
{
	struct tb *tb = tb_of(l);
	char line[600];
	switch (c->step) {
	case T_GREETING:
		snprintf(line, sizeof(line), "USER %s\r\n", o.user);
		cmd(l, c, T_USER, line, false);
		return;
	case T_USER:
		snprintf(line, sizeof(line), "PASS %s\r\n", o.pass);
		cmd(l, c, T_PASS, line, false);
		return;
	case T_PASS:
		/* one warm-up RETR (page cache, buffers) */
		cmd(l, c, T_RETR_WARM, "RETR 1\r\n", true);
		return;
	case T_RETR_WARM:
		/* loadgen_pump returns to start the meter before this goes out */
		tb->retr_ready = true;
		cmd(l, c, T_RETR, "RETR 1\r\n", true);
		return;
	case T_RETR:
		loadgen_record(l, c->t_op_ns);
		tb->retr_bytes += c->rep.body_bytes;
		if (o.max_conns && l->ops >= (uint64_t)o.max_conns)
			l->stopping = true;
		if (l->stopping)
			cmd(l, c, T_QUIT, "QUIT\r\n", false);
		else
			cmd(l, c, T_RETR, "RETR 1\r\n", true);
		return;
	case T_QUIT:
		loadgen_close(l, &c->lc);
		return;
	}
}

static void cb_data(struct loadgen *l, struct loadgen_conn *lc, const uint8_t *p, size_t n)
{
	struct tclient *c = tc_of(lc);
	struct tb *tb = tb_of(l);
	while (n > 0 && lc->phase == LG_OPEN) {
		size_t k = loadgen_reply_feed(&c->rep, p, n);
		p += k;
		n -= k;
		if (!c->rep.done)
			return;
		const char *s = c->rep.line;
		if (o.mode == M_RETR) {
			if (s[0] != '+') {
				loadgen_fail(l, lc, s[0] == '-' ? LG_ERR_NO : LG_ERR_BAD_REPLY, "", s);
				return;
			}
			retr_step(l, c);
			continue;
		}
		/* a greeting: SMTP's 220, IMAP's * OK, POP3's +OK */
		if (strncmp(s, "220", 3) != 0 && strncmp(s, "* OK", 4) != 0 && strncmp(s, "+OK", 3) != 0) {
			loadgen_fail(l, lc, LG_ERR_BAD_REPLY, "greeting: ", s);
			return;
		}
		if (lc->ssl) {
			if (!c->warm && wolfSSL_session_reused(lc->ssl))
				tb->reused++;
			if (resuming()) {
				WOLFSSL_SESSION *sess = wolfSSL_get1_session(lc->ssl);
				if (sess) {
					if (c->sess)
						wolfSSL_SESSION_free(c->sess);
					c->sess = sess;
				}
			}
		}
		loadgen_close(l, lc);
		return;
	}
}

static const struct loadgen_ops tb_ops = {
	.start = cb_start,
	.tls_new = cb_tls_new,
	.data = cb_data,
	.done = cb_done,
};

static bool retr_ready(struct loadgen *l)
{
	return tb_of(l)->retr_ready || l->active == 0;
}

/* Warm-up, then the measured run between two readings of the meter. */
static int run_load(struct loadgen *l, struct tb *tb, struct bench_meter *m)
{
	uint64_t t0;
	loadgen_arm_tick(l);
	if (o.mode == M_RETR) {
		l->restart = false;
		loadgen_start(l, loadgen_conn(l, 0));
		l->hard_end_ns = now_ns() + (uint64_t)o.timeout_ms * 4000000u;
		if (!loadgen_pump(l, retr_ready) || !tb->retr_ready) {
			fprintf(stderr, "tls_bench: POP3 over TLS to %s failed (%s)\n", o.port,
				l->last_err);
			return -1;
		}
		tb->measuring = true;
		bench_meter_start(m, &o.srv);
		t0 = l->t_start_ns = now_ns();
		l->end_ns = t0 + (uint64_t)(o.duration * 1e9);
		l->hard_end_ns = l->end_ns + (uint64_t)o.timeout_ms * 1000000u + 1000000000u;
		loadgen_pump(l, loadgen_none_active);
		return 0;
	}
	/* every client's first cycle: its first ticket, the server's warm-up */
	l->restart = false;
	l->hard_end_ns = now_ns() + (uint64_t)o.timeout_ms * 4000000u;
	for (unsigned i = 0; i < l->nconns; i++)
		loadgen_start(l, loadgen_conn(l, i));
	loadgen_pump(l, loadgen_none_active);
	tb->warm_errors = loadgen_errors_total(l);
	if (tb->warm_errors)
		fprintf(stderr, "tls_bench: %" PRIu64 " warm-up cycles failed (%s)\n", tb->warm_errors,
			l->last_err);
	memset(l->errors, 0, sizeof(l->errors));
	tb->measuring = true;
	l->restart = true;
	l->launched = 0;
	l->max_launch = (uint64_t)o.max_conns;
	bench_meter_start(m, &o.srv);
	t0 = l->t_start_ns = now_ns();
	l->end_ns = t0 + (uint64_t)(o.duration * 1e9);
	l->hard_end_ns = l->end_ns + (uint64_t)o.timeout_ms * 1000000u + 1000000000u;
	for (unsigned i = 0; i < l->nconns; i++)
		loadgen_start(l, loadgen_conn(l, i));
	loadgen_pump(l, loadgen_all_done);
	return 0;
}

static const char *cpu_source(void)
{
	return o.srv.ncgroups ? "cgroup" : o.srv.npids ? "pid" : "none";
}

static void report(const struct loadgen *l, const struct tb *tb, const struct cpu_sample *cpu,
		   const struct cpu_sample *self, double other)
{
	FILE *out = o.json ? stderr : stdout;
	double secs = loadgen_seconds(l);
	uint64_t n = l->ops;
	double dn = n ? (double)n : 1;
	double srv = cpu->ok ? (double)cpu->total_us : -1, srv_user = cpu->ok ? (double)cpu->user_us : -1;
	if (o.mode == M_RETR) {
		double mb = (double)tb->retr_bytes / 1e6;
		double dmb = mb > 0 ? mb : 1;
		fprintf(out, "retr on %s: %" PRIu64 " x RETR, %.1f MB in %.2f s = %.1f MB/s\n", o.port, n,
			mb, secs, secs > 0 ? mb / secs : 0);
		loadgen_print_lat_errors(l, out);
		if (cpu->ok)
			fprintf(out, "  server cpu  %.1f us/MB (%.0f MB per server CPU second)\n",
				srv / dmb, srv > 0 ? mb / (srv / 1e6) : 0);
		fprintf(out, "  client cpu  %.1f us/MB; other load %.1f%%\n",
			(double)self->total_us / dmb, other);
		if (o.json) {
			printf("{\"mode\":\"retr\",\"port\":%s,\"retrs\":%" PRIu64 ",\"ops\":%" PRIu64
			       ",\"MB\":%.1f,\"seconds\":%.3f,\"MBps\":%.1f,\"ops_per_s\":%.1f",
			       o.port, n, n, mb, secs, secs > 0 ? mb / secs : 0, secs > 0 ? dn / secs : 0);
			loadgen_json_lat_errors(l, stdout);
			printf(",\"server_cpu_us_per_MB\":%.1f,\"server_user_us_per_MB\":%.1f,"
			       "\"server_cpu_us_per_op\":%.1f,\"server_cpu_source\":\"%s\","
			       "\"client_cpu_us_per_MB\":%.1f,\"other_cpu_pct\":%.1f}\n",
			       srv / dmb, srv_user / dmb, srv / dn, cpu_source(),
			       (double)self->total_us / dmb, other);
		}
		return;
	}
	const char *tls = o.mode == M_PLAIN ? "none" : o.tls12 ? "1.2" : "1.3";
	const char *group = o.group == WOLFSSL_ECC_X25519 ? "x25519" : "p256";
	fprintf(out, "%s on %s (TLS %s, %s): %" PRIu64 " conns in %.2f s = %.0f/s, reused %" PRIu64
		", clients %d\n", mode_name[o.mode], o.port, tls, group, n, secs,
		secs > 0 ? dn / secs : 0, tb->reused, o.clients);
	loadgen_print_lat_errors(l, out);
	if (cpu->ok)
		fprintf(out, "  server cpu  %.2f us/conn (user %.2f, from %s)\n", srv / dn,
			srv_user / dn, cpu_source());
	fprintf(out, "  client cpu  %.2f us/conn; other load %.1f%%\n",
		(double)self->total_us / dn, other);
	if (!o.json)
		return;
	printf("{\"mode\":\"%s\",\"port\":%s,\"tls\":\"%s\",\"group\":\"%s\",\"clients\":%d,"
	       "\"conns\":%" PRIu64 ",\"ops\":%" PRIu64 ",\"seconds\":%.3f,\"conns_per_s\":%.1f,"
	       "\"reused\":%" PRIu64, mode_name[o.mode], o.port, tls, group, o.clients, n, n, secs,
	       secs > 0 ? dn / secs : 0, tb->reused);
	loadgen_json_lat_errors(l, stdout);
	printf(",\"warmup_errors\":%" PRIu64, tb->warm_errors);
	if (cpu->ok)
		printf(",\"server_cpu_us_per_conn\":%.2f,\"server_user_us_per_conn\":%.2f",
		       srv / dn, srv_user / dn);
	printf(",\"server_cpu_source\":\"%s\",\"client_cpu_us_per_conn\":%.2f,"
	       "\"other_cpu_pct\":%.1f}\n", cpu_source(), (double)self->total_us / dn, other);
}

/* ---- --crypto: the bound of one handshake --------------------------------- */

#define TIME_OP(label, body)                                                          \
	({                                                                            \
		uint64_t c0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID), c1;                    \
		long n_ = 0;                                                          \
		do {                                                                  \
			body;                                                         \
			n_++;                                                         \
			c1 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);                         \
		} while ((double)(c1 - c0) < o.secs * 1e9);                           \
		(double)(c1 - c0) / 1e3 / (double)n_;                                 \
	})

static int run_crypto(void)
{
	WC_RNG rng;
	ecc_key ek;
	curve25519_key a, b;
	byte hash[32] = { 1 }, sig[128], shared[32];
	word32 siglen, slen;
	int vres = 0;

	if (wc_InitRng(&rng) || wc_ecc_init(&ek) ||
	    wc_ecc_make_key_ex(&rng, 32, &ek, ECC_SECP256R1) ||
	    wc_curve25519_init(&a) || wc_curve25519_init(&b) ||
	    wc_curve25519_make_key(&rng, 32, &a) || wc_curve25519_make_key(&rng, 32, &b)) {
		fprintf(stderr, "tls_bench: wolfCrypt setup failed\n");
		return 1;
	}
	wc_ecc_set_rng(&ek, &rng);
	double sign = TIME_OP("sign", {
		siglen = sizeof(sig);
		if (wc_ecc_sign_hash(hash, 32, sig, &siglen, &rng, &ek))
			return 1;
	});
	double verify = TIME_OP("verify", {
		if (wc_ecc_verify_hash(sig, siglen, hash, 32, &vres, &ek) || !vres)
			return 1;
	});
	double kg = TIME_OP("x25519-kg", {
		wc_curve25519_free(&a);
		wc_curve25519_init(&a);
		if (wc_curve25519_make_key(&rng, 32, &a))
			return 1;
	});
	double agree = TIME_OP("x25519", {
		slen = sizeof(shared);
		if (wc_curve25519_shared_secret(&a, &b, shared, &slen))
			return 1;
	});
	/* AEAD on 16 KiB records (a full TLS record), 13 bytes of AAD. */
	static byte in[16384], out[16384];
	byte key[32] = { 2 }, iv[12] = { 3 }, tag[16], aad[13] = { 4 };
	Aes aes;
	wc_AesInit(&aes, NULL, INVALID_DEVID);
	wc_AesGcmSetKey(&aes, key, 16);
	double gcm = TIME_OP("aes128gcm", {
		if (wc_AesGcmEncrypt(&aes, out, in, sizeof(in), iv, 12, tag, 16, aad, 13))
			return 1;
	});
	double chacha = TIME_OP("chacha", {
		if (wc_ChaCha20Poly1305_Encrypt(key, iv, aad, 13, in, sizeof(in), out, tag))
			return 1;
	});
	/* Not crypto of the handshake, but paid per connection: wolfSSL_new()
	 * instantiates a Hash_DRBG (seed, SHA-256 health test). */
	double rnginit = TIME_OP("rng", {
		WC_RNG r2;
		if (wc_InitRng(&r2))
			return 1;
		wc_FreeRng(&r2);
	});
	/* SHA-256 of 1 KiB: about one full handshake's transcript. */
	wc_Sha256 sh;
	double sha1k = TIME_OP("sha256", {
		if (wc_InitSha256(&sh) || wc_Sha256Update(&sh, in, 1024) || wc_Sha256Final(&sh, shared))
			return 1;
		wc_Sha256Free(&sh);
	});
#ifdef HAVE_RINGMAIL_SHA256
	const char *sha_impl = ringmail_sha256_ni_in_use() == 1 ? "sha-ni" : "wolfcrypt";
#else
	const char *sha_impl = "wolfcrypt";
#endif
	double gcm_mbs = 16384.0 / gcm; /* bytes per us = MB/s */
	double chacha_mbs = 16384.0 / chacha;
	double full = sign + kg + agree, resume = kg + agree;
	if (o.json) {
		printf("{\"ecdsa_p256_sign_us\":%.2f,\"ecdsa_p256_verify_us\":%.2f,"
		       "\"x25519_keygen_us\":%.2f,\"x25519_agree_us\":%.2f,"
		       "\"bound_full_us\":%.2f,\"bound_resume_dhe_us\":%.2f,"
		       "\"aes128gcm_MBps\":%.0f,\"chacha20poly1305_MBps\":%.0f,\"rng_init_us\":%.2f,"
		       "\"sha256_1k_us\":%.2f,\"sha256_impl\":\"%s\"}\n",
		       sign, verify, kg, agree, full, resume, gcm_mbs, chacha_mbs, rnginit,
		       sha1k, sha_impl);
	} else {
		printf("ECDSA P-256 sign     %8.2f us  (%.0f/s CPU)\n", sign, 1e6 / sign);
		printf("ECDSA P-256 verify   %8.2f us\n", verify);
		printf("X25519 key gen       %8.2f us  (%.0f/s CPU)\n", kg, 1e6 / kg);
		printf("X25519 agree         %8.2f us  (%.0f/s CPU)\n", agree, 1e6 / agree);
		printf("bound: full handshake (sign+kg+agree)   %8.2f us\n", full);
		printf("bound: resumed, psk_dhe_ke (kg+agree)   %8.2f us\n", resume);
		printf("wc_InitRng+wc_FreeRng (per WOLFSSL) %8.2f us\n", rnginit);
		printf("AES-128-GCM 16 KiB records  %6.0f MB/s;  ChaCha20-Poly1305 %6.0f MB/s\n",
		       gcm_mbs, chacha_mbs);
		printf("SHA-256 of 1 KiB     %8.2f us  (wolfCrypt on %s; not in the bound)\n",
		       sha1k, sha_impl);
	}
	wc_AesFree(&aes);
	wc_curve25519_free(&a);
	wc_curve25519_free(&b);
	wc_ecc_free(&ek);
	wc_FreeRng(&rng);
	return 0;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tls_bench --port P [--mode plain|full|resume|resume-psk|retr] [-c N]\n"
		"                 [-d SECS] [-n CONNS] [--server-pid PID] [--server-cgroup DIR]\n"
		"                 [--host ADDR] [--tls12] [--group x25519|p256] [--src-addrs N]\n"
		"                 [--user U --pass P] [--timeout-ms MS] [--json]\n"
		"       tls_bench --crypto [--secs S] [--json]\n");
}

int main(int argc, char **argv)
{
	enum { O_CGROUP = 256, O_PID, O_JSON, O_TLS12, O_GROUP, O_USER, O_PASS, O_CRYPTO, O_SECS,
	       O_SRC, O_MODE, O_HOST, O_TIMEOUT };
	static const struct option lo[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "host", required_argument, NULL, O_HOST },
		{ "mode", required_argument, NULL, O_MODE },
		{ "clients", required_argument, NULL, 'c' },
		{ "duration", required_argument, NULL, 'd' },
		{ "max-conns", required_argument, NULL, 'n' },
		{ "server-pid", required_argument, NULL, O_PID },
		{ "server-cgroup", required_argument, NULL, O_CGROUP },
		{ "json", no_argument, NULL, O_JSON },
		{ "tls12", no_argument, NULL, O_TLS12 },
		{ "group", required_argument, NULL, O_GROUP },
		{ "user", required_argument, NULL, O_USER },
		{ "pass", required_argument, NULL, O_PASS },
		{ "crypto", no_argument, NULL, O_CRYPTO },
		{ "secs", required_argument, NULL, O_SECS },
		{ "src-addrs", required_argument, NULL, O_SRC },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool crypto = false;
	uint64_t v;
	int ch;
	while ((ch = getopt_long(argc, argv, "p:c:d:n:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'p':
			if (!parse_u64(optarg, 1, 65535, &v))
				goto bad;
			o.port = optarg;
			break;
		case O_HOST: o.host = optarg; break;
		case 'c':
			if (!parse_u64(optarg, 1, 100000, &v))
				goto bad;
			o.clients = (int)v;
			break;
		case 'd': o.duration = atof(optarg); break;
		case 'n':
			if (!parse_u64(optarg, 1, INT64_MAX, &v))
				goto bad;
			o.max_conns = (long)v;
			break;
		case O_PID:
			if (!bench_servers_add_pid(&o.srv, optarg))
				goto bad;
			break;
		case O_CGROUP:
			if (!bench_servers_add_cgroup(&o.srv, optarg))
				goto bad;
			break;
		case O_JSON: o.json = true; break;
		case O_TLS12: o.tls12 = true; break;
		case O_GROUP:
			if (!strcmp(optarg, "x25519"))
				o.group = WOLFSSL_ECC_X25519;
			else if (!strcmp(optarg, "p256"))
				o.group = WOLFSSL_ECC_SECP256R1;
			else
				goto bad;
			break;
		case O_USER: o.user = optarg; break;
		case O_PASS: o.pass = optarg; break;
		case O_CRYPTO: crypto = true; break;
		case O_SECS: o.secs = atof(optarg); break;
		case O_SRC:
			if (!parse_u64(optarg, 0, BENCH_MAX_SRC_ADDRS, &v))
				goto bad;
			o.src_addrs = (int)v;
			break;
		case O_TIMEOUT:
			if (!parse_u64(optarg, 1, 3600000, &v))
				goto bad;
			o.timeout_ms = (unsigned)v;
			break;
		case O_MODE:
			if (!strcmp(optarg, "plain")) o.mode = M_PLAIN;
			else if (!strcmp(optarg, "full")) o.mode = M_FULL;
			else if (!strcmp(optarg, "resume")) o.mode = M_RESUME;
			else if (!strcmp(optarg, "resume-psk")) o.mode = M_RESUME_PSK;
			else if (!strcmp(optarg, "retr")) o.mode = M_RETR;
			else goto bad;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (wolfSSL_Init() != WOLFSSL_SUCCESS)
		return 1;
	if (crypto)
		return run_crypto();
	/* retr: one connection, as the MB/s of one client is what it reports */
	if (!o.clients || o.mode == M_RETR)
		o.clients = o.mode == M_RETR ? 1 : 4;
	if (!o.port || !(o.duration > 0) || (o.mode == M_RETR && (!o.user || !o.pass))) {
		usage(stderr);
		return 1;
	}
	struct bench_meter m;
	bench_meter_start(&m, &o.srv);
	if ((o.srv.npids || o.srv.ncgroups) && !m.s0.ok) {
		fprintf(stderr, "tls_bench: cannot read the server's CPU time\n");
		return 1;
	}
	struct tb tb = { 0 };
	struct loadgen_cfg cfg = {
		.prog = "tls_bench", .host = o.host, .port = o.port, .src_addrs = o.src_addrs,
		.tls = o.mode != M_PLAIN, .tls12 = o.tls12, .group = o.group,
		.nconns = (unsigned)o.clients, .conn_size = sizeof(struct tclient),
		.timeout_ms = o.timeout_ms, .ops = &tb_ops, .user = &tb,
	};
	struct loadgen *l = calloc(1, sizeof(*l));
	if (!l)
		return 1;
	int rc = 1;
	if (loadgen_init(l, &cfg) < 0) {
		if (l->io_uring_unavailable) {
			fprintf(stderr, "tls_bench: io_uring unavailable: skipped\n");
			rc = 77;
		}
		goto out;
	}
	if (o.mode == M_RETR)
		l->err_names[LG_ERR_NO] = "err", l->err_names[LG_ERR_BAD] = NULL;
	else
		l->err_names[LG_ERR_NO] = l->err_names[LG_ERR_BAD] = NULL;
	if (run_load(l, &tb, &m) < 0)
		goto out;
	struct cpu_sample cpu, self;
	double other;
	bench_meter_stop(&m, &o.srv, &cpu, &self, &other);
	report(l, &tb, &cpu, &self, other);
	uint64_t errs = loadgen_errors_total(l);
	if (errs)
		fprintf(stderr, "tls_bench: %" PRIu64 " errors, last: %s\n", errs, l->last_err);
	rc = errs || l->failed ? 1 : 0;
out:
	for (unsigned i = 0; l->conns && i < l->nconns; i++) {
		struct tclient *c = tc_of(loadgen_conn(l, i));
		if (c->sess)
			wolfSSL_SESSION_free(c->sess);
	}
	loadgen_destroy(l);
	free(l);
	wolfSSL_Cleanup();
	return rc;
bad:
	fprintf(stderr, "tls_bench: bad value for -%c: %s\n", ch < 256 ? ch : '-', optarg ? optarg : "");
	usage(stderr);
	return 1;
}
