/* tls_bench.c - TLS handshakes and bulk transfer against ringmail, with the
 * server's CPU per operation, and the crypto bound of one handshake.
 *
 * The client is the bundled wolfSSL (the same static build as the server),
 * on plain threads with blocking sockets: the client is not what is
 * measured; the server's CPU time is (from /proc/PID/stat or a cgroup's
 * cpu.stat, read before and after the measured interval).
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
 *   retr     one TLS connection to a POP3 port: USER/PASS, then RETR 1 in a
 *            loop; MB/s and the server's CPU per MB
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
 *                  [--server-pid PID | --server-cgroup DIR] [--json]
 *                  [--tls12] [--group x25519|p256] [--user U --pass P]
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

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { M_PLAIN, M_FULL, M_RESUME, M_RESUME_PSK, M_RETR };

struct opts {
	const char *host;
	int port;
	enum mode mode;
	int clients;
	double duration;
	long max_conns;
	long server_pid;
	const char *server_cgroup;
	bool json;
	bool tls12;
	int group; /* WOLFSSL_ECC_X25519 or WOLFSSL_ECC_SECP256R1 */
	const char *user, *pass;
	int src_addrs;
	double secs; /* --crypto */
};

static struct opts o = {
	.host = "127.0.0.1", .port = 0, .mode = M_FULL, .clients = 4, .duration = 5,
	.group = WOLFSSL_ECC_X25519, .src_addrs = 16, .secs = 1,
};

static uint64_t cpu_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the server's CPU time (bench/common.c) --------------------------- */

static struct cpu_sample server_cpu(const char **src)
{
	if (o.server_cgroup) {
		*src = "cgroup";
		return cpu_from_cgroup(o.server_cgroup);
	}
	if (o.server_pid) {
		*src = "pid";
		return cpu_from_pid(o.server_pid, false);
	}
	*src = "none";
	return (struct cpu_sample){ 0 };
}

static uint64_t self_cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
	       (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* ---- connections -------------------------------------------------------- */

static WOLFSSL_CTX *ctx;
static atomic_long launched, done_ok, errors, reused, bytes_total;
static atomic_int ready_threads;
static atomic_bool measuring, stop;
static char last_err[256];
/* retr: the meters, sampled after login and a warm-up RETR */
static struct cpu_sample retr_s0;
static uint64_t retr_busy0, retr_c0;
static struct cpu_sample server_cpu(const char **src);
static uint64_t self_cpu_us(void);

static void note_err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_err, sizeof(last_err), fmt, ap);
	va_end(ap);
	atomic_fetch_add(&errors, 1);
}

static int dial(unsigned k)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)o.port) };
	if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1)
		return -EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (o.src_addrs > 0 && (ntohl(sa.sin_addr.s_addr) >> 24) == 127) {
		struct sockaddr_in src = { .sin_family = AF_INET };
		src.sin_addr.s_addr = htonl(0x7f000001u + k % (unsigned)o.src_addrs);
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Reads through the first LF (plain or TLS). Returns 0 or -1. */
static int read_line(int fd, WOLFSSL *ssl, char *buf, size_t cap)
{
	size_t n = 0;
	while (n + 1 < cap) {
		int r = ssl ? wolfSSL_read(ssl, buf + n, 1) : (int)recv(fd, buf + n, 1, 0);
		if (r <= 0)
			return -1;
		if (buf[n++] == '\n') {
			buf[n] = '\0';
			return 0;
		}
	}
	return -1;
}

static WOLFSSL *tls_new(int fd, WOLFSSL_SESSION *sess)
{
	WOLFSSL *ssl = wolfSSL_new(ctx);
	if (!ssl)
		return NULL;
	wolfSSL_set_fd(ssl, fd);
	if (!o.tls12)
		wolfSSL_UseKeyShare(ssl, (word16)o.group);
	if (sess)
		wolfSSL_set_session(ssl, sess);
	if (o.mode == M_RESUME_PSK)
		wolfSSL_no_dhe_psk(ssl);
	return ssl;
}

/* One greet cycle; *sess is replaced by the new ticket in resume modes. */
static int cycle(unsigned k, WOLFSSL_SESSION **sess)
{
	char line[1024];
	int fd = dial(k);
	if (fd < 0) {
		note_err("connect: %s", strerror(-fd));
		return -1;
	}
	if (o.mode == M_PLAIN) {
		int r = read_line(fd, NULL, line, sizeof(line));
		close(fd);
		if (r < 0)
			note_err("plain greeting: %s", strerror(errno));
		return r;
	}
	WOLFSSL *ssl = tls_new(fd, *sess);
	if (!ssl) {
		close(fd);
		note_err("wolfSSL_new");
		return -1;
	}
	int rc = -1;
	if (wolfSSL_connect(ssl) != WOLFSSL_SUCCESS) {
		char e[80];
		int err = wolfSSL_get_error(ssl, 0);
		note_err("handshake: %d %s", err,
			 wolfSSL_ERR_error_string((unsigned long)err, e));
		goto out;
	}
	if (read_line(fd, ssl, line, sizeof(line)) < 0) {
		note_err("TLS greeting");
		goto out;
	}
	if (wolfSSL_session_reused(ssl) && atomic_load(&measuring))
		atomic_fetch_add(&reused, 1);
	if (o.mode == M_RESUME || o.mode == M_RESUME_PSK) {
		WOLFSSL_SESSION *s = wolfSSL_get1_session(ssl);
		if (s) {
			if (*sess)
				wolfSSL_SESSION_free(*sess);
			*sess = s;
		}
	}
	wolfSSL_shutdown(ssl);
	rc = 0;
out:
	wolfSSL_free(ssl);
	close(fd);
	return rc;
}

static void *worker(void *arg)
{
	unsigned k = (unsigned)(uintptr_t)arg;
	WOLFSSL_SESSION *sess = NULL;
	/* Warm-up outside the measurement: the first ticket. */
	if (cycle(k, &sess) < 0)
		fprintf(stderr, "tls_bench: warm-up failed: %s\n", last_err);
	atomic_fetch_add(&ready_threads, 1);
	while (!atomic_load(&measuring) && !atomic_load(&stop))
		usleep(1000);
	while (!atomic_load(&stop)) {
		long n = atomic_fetch_add(&launched, 1);
		if (o.max_conns && n >= o.max_conns)
			break;
		if (cycle(k++, &sess) == 0)
			atomic_fetch_add(&done_ok, 1);
	}
	if (sess)
		wolfSSL_SESSION_free(sess);
	return NULL;
}

/* ---- POP3 RETR over TLS ------------------------------------------------- */

static int pop_cmd(WOLFSSL *ssl, int fd, const char *cmd, char *line, size_t cap)
{
	if (wolfSSL_write(ssl, cmd, (int)strlen(cmd)) <= 0)
		return -1;
	if (read_line(fd, ssl, line, cap) < 0 || strncmp(line, "+OK", 3) != 0)
		return -1;
	return 0;
}

/* Reads a multi-line reply through "\r\n.\r\n"; returns its bytes or -1. */
static long read_dot(WOLFSSL *ssl)
{
	static char buf[64 * 1024];
	char tail[5] = { 0 };
	long total = 0;
	for (;;) {
		int r = wolfSSL_read(ssl, buf, sizeof(buf));
		if (r <= 0)
			return -1;
		total += r;
		/* the last 5 bytes seen, across reads */
		if (r >= 5) {
			memcpy(tail, buf + r - 5, 5);
		} else {
			memmove(tail, tail + r, (size_t)(5 - r));
			memcpy(tail + 5 - r, buf, (size_t)r);
		}
		if (!memcmp(tail, "\r\n.\r\n", 5))
			return total;
	}
}

static int run_retr(double *secs_r)
{
	char line[1024], cmd[512];
	int fd = dial(0);
	if (fd < 0) {
		fprintf(stderr, "tls_bench: connect: %s\n", strerror(-fd));
		return -1;
	}
	WOLFSSL *ssl = tls_new(fd, NULL);
	if (!ssl || wolfSSL_connect(ssl) != WOLFSSL_SUCCESS ||
	    read_line(fd, ssl, line, sizeof(line)) < 0 || strncmp(line, "+OK", 3)) {
		fprintf(stderr, "tls_bench: TLS to %d failed\n", o.port);
		return -1;
	}
	snprintf(cmd, sizeof(cmd), "USER %s\r\n", o.user);
	if (pop_cmd(ssl, fd, cmd, line, sizeof(line)) < 0)
		goto bad;
	snprintf(cmd, sizeof(cmd), "PASS %s\r\n", o.pass);
	if (pop_cmd(ssl, fd, cmd, line, sizeof(line)) < 0)
		goto bad;
	/* one warm-up RETR (page cache, buffers) */
	if (pop_cmd(ssl, fd, "RETR 1\r\n", line, sizeof(line)) < 0 || read_dot(ssl) < 0)
		goto bad;
	atomic_store(&measuring, true);
	const char *src;
	retr_s0 = server_cpu(&src);
	retr_busy0 = machine_busy_us();
	retr_c0 = self_cpu_us();
	uint64_t t0 = now_ns();
	*secs_r = 0;
	for (long n = 0; (!o.max_conns || n < o.max_conns); n++) {
		if ((now_ns() - t0) / 1e9 >= o.duration && n > 0)
			break;
		if (pop_cmd(ssl, fd, "RETR 1\r\n", line, sizeof(line)) < 0)
			goto bad;
		long b = read_dot(ssl);
		if (b < 0)
			goto bad;
		atomic_fetch_add(&bytes_total, b);
		atomic_fetch_add(&done_ok, 1);
	}
	*secs_r = (double)(now_ns() - t0) / 1e9;
	wolfSSL_write(ssl, "QUIT\r\n", 6);
	wolfSSL_free(ssl);
	close(fd);
	return 0;
bad:
	fprintf(stderr, "tls_bench: POP3 failed at: %s", line);
	return -1;
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
		"                 [-d SECS] [-n CONNS] [--server-pid PID | --server-cgroup DIR]\n"
		"                 [--host ADDR] [--tls12] [--group x25519|p256] [--src-addrs N]\n"
		"                 [--user U --pass P] [--json]\n"
		"       tls_bench --crypto [--secs S] [--json]\n");
}

int main(int argc, char **argv)
{
	enum { O_CGROUP = 256, O_PID, O_JSON, O_TLS12, O_GROUP, O_USER, O_PASS, O_CRYPTO, O_SECS,
	       O_SRC, O_MODE, O_HOST };
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
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool crypto = false;
	int ch;
	while ((ch = getopt_long(argc, argv, "p:c:d:n:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'p': o.port = atoi(optarg); break;
		case O_HOST: o.host = optarg; break;
		case 'c': o.clients = atoi(optarg); break;
		case 'd': o.duration = atof(optarg); break;
		case 'n': o.max_conns = atol(optarg); break;
		case O_PID: o.server_pid = atol(optarg); break;
		case O_CGROUP: o.server_cgroup = optarg; break;
		case O_JSON: o.json = true; break;
		case O_TLS12: o.tls12 = true; break;
		case O_GROUP:
			if (!strcmp(optarg, "x25519"))
				o.group = WOLFSSL_ECC_X25519;
			else if (!strcmp(optarg, "p256"))
				o.group = WOLFSSL_ECC_SECP256R1;
			else {
				usage(stderr);
				return 1;
			}
			break;
		case O_USER: o.user = optarg; break;
		case O_PASS: o.pass = optarg; break;
		case O_CRYPTO: crypto = true; break;
		case O_SECS: o.secs = atof(optarg); break;
		case O_SRC: o.src_addrs = atoi(optarg); break;
		case O_MODE:
			if (!strcmp(optarg, "plain")) o.mode = M_PLAIN;
			else if (!strcmp(optarg, "full")) o.mode = M_FULL;
			else if (!strcmp(optarg, "resume")) o.mode = M_RESUME;
			else if (!strcmp(optarg, "resume-psk")) o.mode = M_RESUME_PSK;
			else if (!strcmp(optarg, "retr")) o.mode = M_RETR;
			else {
				usage(stderr);
				return 1;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (wolfSSL_Init() != WOLFSSL_SUCCESS)
		return 1;
	if (crypto)
		return run_crypto();
	if (o.port <= 0 || o.clients <= 0 || (o.mode == M_RETR && (!o.user || !o.pass))) {
		usage(stderr);
		return 1;
	}
	ctx = wolfSSL_CTX_new(o.tls12 ? wolfTLSv1_2_client_method() : wolfTLSv1_3_client_method());
	if (!ctx)
		return 1;
	/* The client is not what is measured: it does not verify the
	 * certificate (saves an ECDSA verify per full handshake on its core). */
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_UseSupportedCurve(ctx, (word16)o.group);
	if (!o.tls12) {
		int groups[1] = { o.group };
		wolfSSL_CTX_set_groups(ctx, groups, 1);
	}
	/* TLS 1.2: ask for a ticket (RFC 5077); 1.3 gets one regardless. */
	wolfSSL_CTX_UseSessionTicket(ctx);
	const char *src;
	struct cpu_sample s0, s1;
	uint64_t busy0, c0, t0;
	(void)t0;
	double secs = 0;
	if (o.mode == M_RETR) {
		if (run_retr(&secs) < 0)
			return 1;
		s1 = server_cpu(&src);
		s0 = retr_s0;
		busy0 = retr_busy0;
		c0 = retr_c0;
	} else {
		pthread_t th[1024];
		if (o.clients > 1024)
			o.clients = 1024;
		for (int i = 0; i < o.clients; i++)
			pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i * 7919u));
		while (atomic_load(&ready_threads) < o.clients)
			usleep(1000);
		s0 = server_cpu(&src);
		busy0 = machine_busy_us();
		c0 = self_cpu_us();
		t0 = now_ns();
		atomic_store(&measuring, true);
		while ((now_ns() - t0) / 1e9 < o.duration &&
		       !(o.max_conns && atomic_load(&launched) >= o.max_conns))
			usleep(10000);
		atomic_store(&stop, true);
		for (int i = 0; i < o.clients; i++)
			pthread_join(th[i], NULL);
		secs = (double)(now_ns() - t0) / 1e9;
		s1 = server_cpu(&src);
	}
	uint64_t client_us = self_cpu_us() - c0;
	uint64_t busy = machine_busy_us() - busy0;
	long n = atomic_load(&done_ok), errs = atomic_load(&errors);
	double srv_us = s0.ok && s1.ok ? (double)(s1.total_us - s0.total_us) : -1;
	double srv_user = s0.ok && s1.ok ? (double)(s1.user_us - s0.user_us) : -1;
	double other = srv_us >= 0 ? ((double)busy - srv_us - (double)client_us) / (secs * 1e4) : -1;
	if (other < 0 && srv_us >= 0)
		other = 0;
	static const char *names[] = { "plain", "full", "resume", "resume-psk", "retr" };
	if (o.mode == M_RETR) {
		double mb = (double)atomic_load(&bytes_total) / 1e6;
		if (o.json)
			printf("{\"mode\":\"retr\",\"port\":%d,\"retrs\":%ld,\"MB\":%.1f,\"seconds\":%.3f,"
			       "\"MBps\":%.1f,\"server_cpu_us_per_MB\":%.1f,\"server_user_us_per_MB\":%.1f,"
			       "\"server_cpu_source\":\"%s\",\"client_cpu_us_per_MB\":%.1f,"
			       "\"other_cpu_pct\":%.1f,\"errors\":%ld}\n",
			       o.port, n, mb, secs, mb / secs, srv_us / mb, srv_user / mb, src,
			       (double)client_us / mb, other, errs);
		else
			printf("retr: %ld x RETR, %.1f MB in %.2f s = %.1f MB/s; server CPU %.1f us/MB "
			       "(%.0f MB per server CPU second), client %.1f us/MB, other load %.1f%%\n",
			       n, mb, secs, mb / secs, srv_us / mb, mb / (srv_us / 1e6),
			       (double)client_us / mb, other);
		return errs ? 1 : 0;
	}
	long r = atomic_load(&reused);
	if (o.json)
		printf("{\"mode\":\"%s\",\"port\":%d,\"tls\":\"%s\",\"group\":\"%s\",\"clients\":%d,"
		       "\"conns\":%ld,\"seconds\":%.3f,\"conns_per_s\":%.1f,\"reused\":%ld,"
		       "\"server_cpu_us_per_conn\":%.2f,\"server_user_us_per_conn\":%.2f,"
		       "\"server_cpu_source\":\"%s\",\"client_cpu_us_per_conn\":%.2f,"
		       "\"other_cpu_pct\":%.1f,\"errors\":%ld}\n",
		       names[o.mode], o.port, o.mode == M_PLAIN ? "none" : o.tls12 ? "1.2" : "1.3",
		       o.group == WOLFSSL_ECC_X25519 ? "x25519" : "p256", o.clients, n, secs,
		       n / secs, r, n ? srv_us / n : -1, n ? srv_user / n : -1, src,
		       n ? (double)client_us / n : -1, other, errs);
	else
		printf("%s on %d: %ld conns in %.2f s = %.0f/s, reused %ld, errors %ld; server CPU "
		       "%.2f us/conn (user %.2f, from %s), client %.2f us/conn, other load %.1f%%\n",
		       names[o.mode], o.port, n, secs, n / secs, r, errs, n ? srv_us / n : -1,
		       n ? srv_user / n : -1, src, n ? (double)client_us / n : -1, other);
	if (errs)
		fprintf(stderr, "tls_bench: %ld errors, last: %s\n", errs, last_err);
	wolfSSL_CTX_free(ctx);
	wolfSSL_Cleanup();
	return errs ? 1 : 0;
}
