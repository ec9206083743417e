/* test_tls.c - tls/ in memory: a wolfSSL client from the same library talks
 * to a tls_conn through two byte queues. No socket, no thread. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls/tls.h"

/* ---- byte queues ------------------------------------------------------------ */

struct q {
	uint8_t *p;
	size_t len, cap;
};

static int q_put(struct q *q, const uint8_t *p, size_t len)
{
	if (q->len + len > q->cap) {
		size_t cap = q->cap ? q->cap : 4096;
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
	cr_assert_leq(n, q->len);
	memmove(q->p, q->p + n, q->len - n);
	q->len -= n;
}

static void q_free(struct q *q)
{
	free(q->p);
	*q = (struct q){ 0 };
}

static int server_out(void *arg, const uint8_t *p, size_t len)
{
	return q_put(arg, p, len);
}

/* ---- the pair -------------------------------------------------------------- */

struct pair {
	struct tls_conn *srv;
	WOLFSSL *cli;
	struct q c2s, s2c;
	struct q srv_plain;     /* plaintext the server decrypted */
	enum tls_status last;   /* last server status */
	bool cli_done, cli_failed, srv_failed, srv_closed;
	int cli_err;
	int reads;              /* tls_conn_read calls */
	int want_reads;         /* ... that returned TLS_WANT_READ */
	size_t srv_mem;         /* bytes the server side holds (jemalloc) */
};

/* jemalloc's per-thread counters: bytes allocated minus freed, so the
 * server's calls can be metered while the client runs in the same thread. */
static int64_t thread_live_bytes(void)
{
	uint64_t a = 0, d = 0;
	size_t sz = sizeof(uint64_t);

	if (mallctl("thread.allocated", &a, &sz, NULL, 0) != 0)
		return 0;
	sz = sizeof(uint64_t);
	if (mallctl("thread.deallocated", &d, &sz, NULL, 0) != 0)
		return 0;
	return (int64_t)(a - d);
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
	cr_assert_eq(q_put(&p->c2s, (const uint8_t *)buf, (size_t)sz), 0);
	return sz;
}

static char tmp_root[64];

static void setup_tmp(void)
{
	strcpy(tmp_root, "/tmp/ringmail-tls-XXXXXX");
	cr_assert_not_null(mkdtemp(tmp_root));
	cr_assert_eq(tls_global_init(), 0);
}

static void rm_rf(const char *path)
{
	struct stat st;

	if (lstat(path, &st) != 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		struct dirent *e;

		while (d != NULL && (e = readdir(d)) != NULL) {
			char sub[512];

			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
			rm_rf(sub);
		}
		if (d != NULL)
			closedir(d);
		rmdir(path);
	} else {
		unlink(path);
	}
}

static void teardown_tmp(void)
{
	rm_rf(tmp_root);
	tls_global_cleanup();
}

TestSuite(tls, .init = setup_tmp, .fini = teardown_tmp, .timeout = 60);

/* A server with a generated certificate for `host` under <tmp>/<sub>. */
static struct tls_server *server_gen(const char *sub, const char *host, uint32_t rotate_s)
{
	char dir[256], err[256];
	struct tls_server *srv = NULL;
	struct tls_server_config cfg = {
		.data_dir = dir, .hostname = host, .ticket_rotate_s = rotate_s,
	};

	snprintf(dir, sizeof(dir), "%s/%s", tmp_root, sub);
	cr_assert_eq(tls_server_new(&cfg, &srv, err, sizeof(err)), 0, "%s", err);
	return srv;
}

static WOLFSSL_CTX *client_ctx(WOLFSSL_METHOD *m, const char *ca_sub)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(m);

	cr_assert_not_null(ctx);
	if (ca_sub != NULL) {
		char path[256];

		snprintf(path, sizeof(path), "%s/%s/tls/cert.pem", tmp_root, ca_sub);
		cr_assert_eq(wolfSSL_CTX_load_verify_locations(ctx, path, NULL),
			     WOLFSSL_SUCCESS, "load %s", path);
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
	} else {
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

static void pair_init(struct pair *p, struct tls_server *srv, const char *alpn, WOLFSSL_CTX *cctx)
{
	int64_t before;

	memset(p, 0, sizeof(*p));
	before = thread_live_bytes();
	cr_assert_eq(tls_conn_new(srv, alpn, server_out, &p->s2c, &p->srv), 0);
	p->srv_mem += (size_t)(thread_live_bytes() - before);
	p->cli = wolfSSL_new(cctx);
	cr_assert_not_null(p->cli);
	wolfSSL_SSLSetIORecv(p->cli, cli_recv);
	wolfSSL_SSLSetIOSend(p->cli, cli_send);
	wolfSSL_SetIOReadCtx(p->cli, p);
	wolfSSL_SetIOWriteCtx(p->cli, p);
}

static void pair_free(struct pair *p)
{
	tls_conn_free(&p->srv);
	cr_assert_null(p->srv);
	if (p->cli != NULL)
		wolfSSL_free(p->cli);
	q_free(&p->c2s);
	q_free(&p->s2c);
	q_free(&p->srv_plain);
}

/* One tls_conn_read over `len` bytes at the head of c2s. */
static enum tls_status server_read(struct pair *p, size_t len, size_t cap)
{
	uint8_t plain[16384];
	size_t consumed = 0, n = 0;
	int64_t before = thread_live_bytes();
	enum tls_status st;

	if (cap > sizeof(plain))
		cap = sizeof(plain);
	st = tls_conn_read(p->srv, span_make(p->c2s.p, len), &consumed, plain, cap, &n);
	p->srv_mem += (size_t)(thread_live_bytes() - before);
	p->reads++;
	if (st == TLS_WANT_READ)
		p->want_reads++;
	cr_assert_leq(consumed, len);
	cr_assert_leq(n, cap);
	if (st == TLS_WANT_READ)
		cr_assert_eq(n, 0);
	q_drop(&p->c2s, consumed);
	if (n > 0)
		cr_assert_eq(q_put(&p->srv_plain, plain, n), 0);
	p->last = st;
	if (st == TLS_ERROR)
		p->srv_failed = true;
	if (st == TLS_CLOSED)
		p->srv_closed = true;
	return st;
}

static enum tls_status server_write(struct pair *p, const char *s, size_t len)
{
	int64_t before = thread_live_bytes();
	enum tls_status st = tls_conn_write(p->srv, (const uint8_t *)s, len);

	p->srv_mem += (size_t)(thread_live_bytes() - before);
	return st;
}

/* Feeds the server everything the client sent, byte by byte if asked,
 * and with plaintext capacity cap. */
static void server_feed(struct pair *p, bool onebyte, size_t cap)
{
	int guard = 0;

	while (!p->srv_failed && !p->srv_closed && guard++ < 1000000) {
		size_t before = p->c2s.len;
		enum tls_status st;

		if (p->c2s.len == 0) {
			/* Drain what wolfSSL still holds. */
			if (p->srv != NULL && tls_conn_pending(p->srv) > 0) {
				server_read(p, 0, cap);
				continue;
			}
			break;
		}
		st = server_read(p, onebyte ? 1 : p->c2s.len, cap);
		if (st == TLS_WANT_READ && p->c2s.len == before)
			break;
	}
}

static void client_step(struct pair *p)
{
	int r;

	if (p->cli_done || p->cli_failed)
		return;
	r = wolfSSL_connect(p->cli);
	if (r == WOLFSSL_SUCCESS) {
		p->cli_done = true;
		return;
	}
	p->cli_err = wolfSSL_get_error(p->cli, r);
	if (p->cli_err != WOLFSSL_ERROR_WANT_READ)
		p->cli_failed = true;
}

/* Runs the handshake to the end (or a failure). */
static void handshake(struct pair *p, bool onebyte)
{
	for (int i = 0; i < 20; i++) {
		client_step(p);
		server_feed(p, onebyte, 16384);
		if ((p->cli_done && tls_conn_handshake_done(p->srv)) || p->cli_failed || p->srv_failed)
			break;
	}
}

/* Client reads everything the server sent; returns plaintext bytes. */
static size_t client_read(struct pair *p, uint8_t *buf, size_t cap)
{
	size_t n = 0;

	while (n < cap) {
		int r = wolfSSL_read(p->cli, buf + n, (int)(cap - n));

		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return n;
}

static bool has_alert(const struct q *q, uint8_t desc)
{
	for (size_t i = 0; i + 7 <= q->len; i++)
		if (q->p[i] == 0x15 && q->p[i + 1] == 3 && q->p[i + 3] == 0 &&
		    q->p[i + 4] == 2 && q->p[i + 5] == 2 && q->p[i + 6] == desc)
			return true;
	return false;
}

/* True when q holds a plaintext TLS 1.2 handshake record of type `type`. */
static bool has_handshake(const struct q *q, uint8_t type)
{
	size_t i = 0;

	while (i + 6 <= q->len) {
		size_t len = ((size_t)q->p[i + 3] << 8) | q->p[i + 4];

		if (q->p[i] == 0x16 && q->p[i + 5] == type)
			return true;
		i += 5 + len;
	}
	return false;
}

/* ---- tests ------------------------------------------------------------------ */

Test(tls, tls13_handshake_and_data_both_ways)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), "a");
	struct pair p;
	uint8_t buf[256];

	pair_init(&p, srv, "imap", cctx);
	cr_assert(wolfSSL_check_domain_name(p.cli, "mail.example") == WOLFSSL_SUCCESS);
	cr_assert_not(tls_conn_handshake_done(p.srv));
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert(tls_conn_handshake_done(p.srv));
	cr_assert_str_eq(tls_conn_version(p.srv), "TLSv1.3");
	cr_assert(strstr(tls_conn_cipher(p.srv), "GCM") || strstr(tls_conn_cipher(p.srv), "CHACHA"),
		  "%s", tls_conn_cipher(p.srv));
	cr_assert_null(tls_conn_sni(p.srv));
	cr_assert_not(tls_conn_resumed(p.srv));

	/* client -> server */
	cr_assert_eq(wolfSSL_write(p.cli, "a1 NOOP\r\n", 9), 9);
	server_feed(&p, false, 16384);
	cr_assert_eq(p.srv_plain.len, 9);
	cr_assert_eq(memcmp(p.srv_plain.p, "a1 NOOP\r\n", 9), 0);

	/* server -> client */
	cr_assert_eq(tls_conn_write(p.srv, (const uint8_t *)"a1 OK\r\n", 7), TLS_OK);
	cr_assert_eq(client_read(&p, buf, sizeof(buf)), 7);
	cr_assert_eq(memcmp(buf, "a1 OK\r\n", 7), 0);
	cr_assert_eq(tls_conn_write(p.srv, (const uint8_t *)"", 0), TLS_OK);

	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
	cr_assert_null(srv);
}

Test(tls, one_byte_at_a_time)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;

	pair_init(&p, srv, "smtp", cctx);
	handshake(&p, true);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert(tls_conn_handshake_done(p.srv));
	/* Every call but the ones completing a flight wanted more. */
	cr_assert_gt(p.reads, 100);
	cr_assert_geq(p.want_reads, p.reads - 4, "%d of %d", p.want_reads, p.reads);

	cr_assert_eq(wolfSSL_write(p.cli, "EHLO x\r\n", 8), 8);
	server_feed(&p, true, 16384);
	cr_assert_eq(p.srv_plain.len, 8);
	cr_assert_eq(memcmp(p.srv_plain.p, "EHLO x\r\n", 8), 0);
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

/* The client's first data rides in the same flight as its Finished, and
 * more comes after; a small cap leaves plaintext inside wolfSSL, which
 * comes out with empty input. */
Test(tls, data_with_finished_and_after_small_cap)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;
	static uint8_t big[100000];
	size_t before;

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 3);
	pair_init(&p, srv, "pop3", cctx);
	/* ClientHello -> server flight -> client Finished. */
	client_step(&p);
	server_feed(&p, false, 16384);
	client_step(&p);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_not(tls_conn_handshake_done(p.srv));
	cr_assert_eq(wolfSSL_write(p.cli, "USER a\r\n", 8), 8);
	/* Finished + data in one read. */
	before = p.c2s.len;
	cr_assert_eq(server_read(&p, p.c2s.len, 16384), TLS_OK);
	cr_assert_eq(p.c2s.len, 0, "consumed %zu of %zu", before - p.c2s.len, before);
	cr_assert(tls_conn_handshake_done(p.srv));
	cr_assert_eq(p.srv_plain.len, 8);

	/* After: 100 kB with 1000 bytes of room per call. */
	cr_assert_eq(wolfSSL_write(p.cli, big, sizeof(big)), (int)sizeof(big));
	server_feed(&p, false, 1000);
	cr_assert_eq(p.srv_plain.len, 8 + sizeof(big));
	cr_assert_eq(memcmp(p.srv_plain.p + 8, big, sizeof(big)), 0);
	cr_assert_eq(tls_conn_pending(p.srv), 0);

	/* And back. */
	cr_assert_eq(tls_conn_write(p.srv, big, sizeof(big)), TLS_OK);
	{
		static uint8_t got[sizeof(big)];

		cr_assert_eq(client_read(&p, got, sizeof(got)), sizeof(big));
		cr_assert_eq(memcmp(got, big, sizeof(big)), 0);
	}
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

Test(tls, tls12_aead)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_2_client_method(), "a");
	struct pair p;
	uint8_t buf[64];

	pair_init(&p, srv, "imap", cctx);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_str_eq(tls_conn_version(p.srv), "TLSv1.2");
	cr_assert(strstr(tls_conn_cipher(p.srv), "ECDHE-ECDSA") != NULL, "%s", tls_conn_cipher(p.srv));
	cr_assert(strstr(tls_conn_cipher(p.srv), "GCM") || strstr(tls_conn_cipher(p.srv), "CHACHA"),
		  "%s", tls_conn_cipher(p.srv));
	cr_assert_eq(wolfSSL_write(p.cli, "x", 1), 1);
	server_feed(&p, false, 16384);
	cr_assert_eq(p.srv_plain.len, 1);
	cr_assert_eq(tls_conn_write(p.srv, (const uint8_t *)"yz", 2), TLS_OK);
	cr_assert_eq(client_read(&p, buf, sizeof(buf)), 2);
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

/* A CBC-only TLS 1.2 client finds no suite. */
Test(tls, tls12_cbc_only_refused)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_2_client_method(), NULL);
	struct pair p;

	pair_init(&p, srv, "imap", cctx);
	if (wolfSSL_set_cipher_list(p.cli, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA") !=
	    WOLFSSL_SUCCESS) {
		/* This wolfSSL has no CBC at all: nothing to refuse. */
		pair_free(&p);
		wolfSSL_CTX_free(cctx);
		tls_server_unref(&srv);
		return;
	}
	handshake(&p, false);
	cr_assert(p.srv_failed);
	cr_assert_not(p.cli_done);
	cr_assert_not_null(tls_conn_error(p.srv));
	cr_assert(strstr(tls_conn_error(p.srv), "unknown") == NULL, "reason: %s",
		  tls_conn_error(p.srv));
	/* RFC 5246 7.4.1.3: a fatal handshake_failure alert (40), in the
	 * clear (no keys yet), and nothing else. */
	cr_assert(has_alert(&p.s2c, 40), "no handshake_failure alert in %zu bytes", p.s2c.len);
	cr_assert_eq(p.s2c.len, 7);
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

/* TLS 1.0/1.1 are compiled out of our wolfSSL, so the client is a
 * hand-made TLS 1.1 ClientHello (no supported_versions extension). */
Test(tls, tls11_refused)
{
	static const uint8_t hello[] = {
		0x16, 0x03, 0x01, 0x00, 47,            /* record: handshake, 47 bytes */
		0x01, 0x00, 0x00, 43,                  /* ClientHello, 43 bytes */
		0x03, 0x02,                            /* TLS 1.1 */
		1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
		17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
		0x00,                                  /* session id */
		0x00, 0x04, 0xc0, 0x09, 0xc0, 0x13,    /* ECDHE-*-AES128-SHA */
		0x01, 0x00,                            /* no compression */
	};
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	struct tls_conn *c = NULL;
	struct q out = { 0 };
	uint8_t plain[64];
	size_t consumed, n;

	cr_assert_eq(tls_conn_new(srv, "imap", server_out, &out, &c), 0);
	cr_assert_eq(tls_conn_read(c, span_make(hello, sizeof(hello)), &consumed, plain,
				   sizeof(plain), &n), TLS_ERROR);
	cr_assert_eq(n, 0);
	cr_assert_not(tls_conn_handshake_done(c));
	cr_assert_not_null(tls_conn_error(c));
	/* A reason that names the cause, for the tls-error log line. */
	cr_assert(strstr(tls_conn_error(c), "unknown") == NULL, "reason: %s", tls_conn_error(c));
	cr_assert(strstr(tls_conn_error(c), "version") != NULL, "reason: %s", tls_conn_error(c));
	/* A fatal protocol_version alert (70) went out. */
	cr_assert(has_alert(&out, 70), "no protocol_version alert in %zu bytes", out.len);
	/* And the connection stays failed. */
	cr_assert_eq(tls_conn_read(c, span_make(hello, 1), &consumed, plain, sizeof(plain), &n),
		     TLS_ERROR);
	tls_conn_free(&c);
	q_free(&out);
	tls_server_unref(&srv);
}

/* Plaintext where a ClientHello should be: an error, not a hang. */
Test(tls, not_tls)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	struct tls_conn *c = NULL;
	struct q out = { 0 };
	uint8_t plain[64];
	size_t consumed, n;

	cr_assert_not(tls_is_client_hello_start(SPAN_LIT("USER a\r\n")));
	cr_assert_not(tls_is_client_hello_start(SPAN_LIT("")));
	cr_assert_eq(tls_conn_new(srv, "pop3", server_out, &out, &c), 0);
	cr_assert_eq(tls_conn_read(c, SPAN_LIT("USER alice@example.org\r\n"), &consumed, plain,
				   sizeof(plain), &n), TLS_ERROR);
	cr_assert_not_null(tls_conn_error(c));
	cr_assert(strstr(tls_conn_error(c), "unknown") == NULL, "reason: %s", tls_conn_error(c));
	tls_conn_free(&c);
	q_free(&out);
	tls_server_unref(&srv);
}

/* ALPACA: a client that asks for another protocol is turned away. */
Test(tls, alpn_mismatch_is_fatal)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;
	char http[] = "http/1.1";

	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseALPN(p.cli, http, sizeof(http) - 1,
				     WOLFSSL_ALPN_CONTINUE_ON_MISMATCH), WOLFSSL_SUCCESS);
	client_step(&p);
	server_feed(&p, false, 16384);
	cr_assert(p.srv_failed);
	cr_assert_not(tls_conn_handshake_done(p.srv));
	cr_assert(has_alert(&p.s2c, 120), "no no_application_protocol alert");
	client_step(&p);
	cr_assert(p.cli_failed);
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

Test(tls, alpn_match_and_absent)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;
	char imap[] = "imap";
	char *proto = NULL;
	unsigned short plen = 0;

	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseALPN(p.cli, imap, 4, WOLFSSL_ALPN_FAILED_ON_MISMATCH),
		     WOLFSSL_SUCCESS);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert(tls_conn_handshake_done(p.srv));
	cr_assert_eq(wolfSSL_ALPN_GetProtocol(p.cli, &proto, &plen), WOLFSSL_SUCCESS);
	cr_assert_eq(plen, 4);
	cr_assert_eq(memcmp(proto, "imap", 4), 0);
	pair_free(&p);

	/* No ALPN offered: fine. */
	pair_init(&p, srv, "imap", cctx);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert(tls_conn_handshake_done(p.srv));
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

/* Two certificates: the SNI picks one; the client checks the name. */
Test(tls, sni_picks_certificate)
{
	struct tls_server *a = server_gen("a", "a.example", 0);
	struct tls_server *b = server_gen("b", "b.example", 0);
	char ca[256], ka[256], cb[256], kb[256], err[256];
	struct tls_cert_config certs[2];
	struct tls_server_config cfg = { 0 };
	struct tls_server *srv = NULL;
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), "a");
	struct pair p;
	char name_b[] = "B.example", name_x[] = "other.example";

	snprintf(ca, sizeof(ca), "%s/a/tls/cert.pem", tmp_root);
	snprintf(ka, sizeof(ka), "%s/a/tls/key.pem", tmp_root);
	snprintf(cb, sizeof(cb), "%s/b/tls/cert.pem", tmp_root);
	snprintf(kb, sizeof(kb), "%s/b/tls/key.pem", tmp_root);
	certs[0] = (struct tls_cert_config){ "b.example", cb, kb };
	certs[1] = (struct tls_cert_config){ "", ca, ka };
	cfg.certs = certs;
	cfg.ncerts = 2;
	cr_assert_eq(tls_server_new(&cfg, &srv, err, sizeof(err)), 0, "%s", err);
	/* The default is the one named "", not the first. */
	cr_assert_str_eq(tls_server_fingerprint(srv), tls_server_fingerprint(a));
	{
		char path[256];

		snprintf(path, sizeof(path), "%s/b/tls/cert.pem", tmp_root);
		cr_assert_eq(wolfSSL_CTX_load_verify_locations(cctx, path, NULL), WOLFSSL_SUCCESS);
	}

	/* SNI b.example (any case) -> b's certificate. */
	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, name_b, sizeof(name_b) - 1),
		     WOLFSSL_SUCCESS);
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "b.example"), WOLFSSL_SUCCESS);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_str_eq(tls_conn_sni(p.srv), "B.example");
	pair_free(&p);

	/* The same client insisting on a.example fails against b's cert. */
	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, name_b, sizeof(name_b) - 1),
		     WOLFSSL_SUCCESS);
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "a.example"), WOLFSSL_SUCCESS);
	handshake(&p, false);
	cr_assert(p.cli_failed);
	pair_free(&p);

	/* Unknown name and no SNI -> the default, a.example. */
	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, name_x, sizeof(name_x) - 1),
		     WOLFSSL_SUCCESS);
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "a.example"), WOLFSSL_SUCCESS);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_str_eq(tls_conn_sni(p.srv), "other.example");
	pair_free(&p);

	/* A name that is not a host name is ignored (and never logged). */
	pair_init(&p, srv, "imap", cctx);
	{
		char odd[] = "b.example\r\nX: y";

		cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, odd, sizeof(odd) - 1),
			     WOLFSSL_SUCCESS);
	}
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "a.example"), WOLFSSL_SUCCESS);
	handshake(&p, false);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_null(tls_conn_sni(p.srv));
	pair_free(&p);

	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "a.example"), WOLFSSL_SUCCESS);
	handshake(&p, true);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	cr_assert_null(tls_conn_sni(p.srv));
	pair_free(&p);

	/* SNI assembled from one-byte reads still picks b. */
	pair_init(&p, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, name_b, sizeof(name_b) - 1),
		     WOLFSSL_SUCCESS);
	cr_assert_eq(wolfSSL_check_domain_name(p.cli, "b.example"), WOLFSSL_SUCCESS);
	handshake(&p, true);
	cr_assert(p.cli_done, "client error %d", p.cli_err);
	pair_free(&p);

	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
	tls_server_unref(&a);
	tls_server_unref(&b);
}

Test(tls, selfsigned_generated_once)
{
	char dir[128], cert[256], key[256], err[256];
	struct tls_server_config cfg = { .data_dir = dir, .hostname = "mx.example" };
	struct tls_server *s1 = NULL, *s2 = NULL;
	struct stat st, st2;
	char fp[128];

	snprintf(dir, sizeof(dir), "%s/data", tmp_root);
	snprintf(cert, sizeof(cert), "%s/tls/cert.pem", dir);
	snprintf(key, sizeof(key), "%s/tls/key.pem", dir);
	cr_assert_eq(tls_server_new(&cfg, &s1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(stat(key, &st), 0);
	cr_assert_eq(st.st_mode & 0777, 0600, "key mode %o", st.st_mode & 0777);
	cr_assert_eq(stat(cert, &st), 0);
	{
		char tlsdir[300];

		snprintf(tlsdir, sizeof(tlsdir), "%s/tls", dir);
		cr_assert_eq(stat(tlsdir, &st2), 0);
		cr_assert_eq(st2.st_mode & 0777, 0700, "dir mode %o", st2.st_mode & 0777);
	}
	snprintf(fp, sizeof(fp), "%s", tls_server_fingerprint(s1));
	cr_assert_eq(strlen(fp), 32 * 3 - 1, "%s", fp);
	cr_assert_eq(fp[2], ':');

	cr_assert_eq(tls_server_new(&cfg, &s2, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(tls_server_fingerprint(s2), fp);
	cr_assert_eq(stat(cert, &st2), 0);
	cr_assert_eq(st.st_ino, st2.st_ino);
	cr_assert_eq(st.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);

	/* Half a pair is an error, not a silent new key. */
	tls_server_unref(&s2);
	cr_assert_eq(unlink(key), 0);
	cr_assert_lt(tls_server_new(&cfg, &s2, err, sizeof(err)), 0);
	cr_assert(strstr(err, key) != NULL, "%s", err);
	cr_assert_null(s2);
	tls_server_unref(&s1);
}

Test(tls, bad_cert_path_names_it)
{
	char err[256] = "";
	struct tls_cert_config certs[] = {
		{ "", "/nonexistent/ringmail/cert.pem", "/nonexistent/ringmail/key.pem" },
	};
	struct tls_server_config cfg = { .certs = certs, .ncerts = 1 };
	struct tls_server *srv = NULL;

	cr_assert_lt(tls_server_new(&cfg, &srv, err, sizeof(err)), 0);
	cr_assert_null(srv);
	cr_assert(strstr(err, "/nonexistent/ringmail/cert.pem") != NULL, "%s", err);
	cr_assert(strstr(err, "No such file") != NULL, "%s", err);

	/* A file that is not PEM. */
	{
		char junk[256];
		FILE *f;

		snprintf(junk, sizeof(junk), "%s/junk.pem", tmp_root);
		f = fopen(junk, "w");
		cr_assert_not_null(f);
		fputs("not a certificate\n", f);
		fclose(f);
		certs[0].cert_path = junk;
		certs[0].key_path = junk;
		cr_assert_lt(tls_server_new(&cfg, &srv, err, sizeof(err)), 0);
		cr_assert(strstr(err, junk) != NULL, "%s", err);
	}
}

/* Handshake + let the client take its NewSessionTicket. */
static void full_session(struct pair *p)
{
	uint8_t buf[16];

	handshake(p, false);
	cr_assert(p->cli_done, "client error %d", p->cli_err);
	cr_assert(tls_conn_handshake_done(p->srv));
	cr_assert_eq(server_write(p, "hi", 2), TLS_OK);
	cr_assert_eq(client_read(p, buf, sizeof(buf)), 2);
}

static void resumption(WOLFSSL_METHOD *m, bool tls12)
{
	struct tls_server *srv = server_gen("a", "mail.example", 3600);
	WOLFSSL_CTX *cctx = client_ctx(m, NULL);
	struct pair p1, p2, p3, p4;
	WOLFSSL_SESSION *sess;

	if (tls12)
		cr_assert_eq(wolfSSL_CTX_UseSessionTicket(cctx), WOLFSSL_SUCCESS);
	pair_init(&p1, srv, "imap", cctx);
	full_session(&p1);
	cr_assert_not(tls_conn_resumed(p1.srv));
	sess = wolfSSL_get_session(p1.cli);
	cr_assert_not_null(sess);

	/* Resumed with the ticket. */
	pair_init(&p2, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_set_session(p2.cli, sess), WOLFSSL_SUCCESS);
	full_session(&p2);
	cr_assert(tls_conn_resumed(p2.srv));
	cr_assert(wolfSSL_session_reused(p2.cli));

	/* One rotation: the ticket's key is now the previous one: still good. */
	tls_server_rotate_ticket_keys(srv);
	pair_init(&p3, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_set_session(p3.cli, sess), WOLFSSL_SUCCESS);
	full_session(&p3);
	cr_assert(tls_conn_resumed(p3.srv));

	/* Two rotations: the key is gone, a full handshake follows. */
	tls_server_rotate_ticket_keys(srv);
	pair_init(&p4, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_set_session(p4.cli, sess), WOLFSSL_SUCCESS);
	if (tls12) {
		/* wolfSSL 5.5's TLS 1.2 client takes any ServerHello as a
		 * resumption once it sent a ticket (DSH_CheckSessionId), so it
		 * cannot follow a server that refuses one: check the server's
		 * side only, i.e. that it answers with its Certificate. */
		client_step(&p4);
		server_feed(&p4, false, 16384);
		cr_assert_not(p4.srv_failed);
		cr_assert(has_handshake(&p4.s2c, 0x0b), "no Certificate: resumed?");
	} else {
		full_session(&p4);
		cr_assert_not(tls_conn_resumed(p4.srv));
		cr_assert_not(wolfSSL_session_reused(p4.cli));
	}

	pair_free(&p4);
	pair_free(&p3);
	pair_free(&p2);
	pair_free(&p1);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

Test(tls, ticket_resumption_tls13)
{
	resumption(wolfTLSv1_3_client_method(), false);
}

Test(tls, ticket_resumption_tls12)
{
	resumption(wolfTLSv1_2_client_method(), true);
}

/* Tries sess on a new pair with SNI `sni` (NULL: none) against a server
 * connection for `alpn`; returns whether the server resumed. A TLS 1.2
 * wolfSSL client cannot follow a refused ticket (see resumption()), so
 * there the server's Certificate message tells a full handshake. */
static bool try_resume(struct tls_server *srv, WOLFSSL_CTX *cctx, WOLFSSL_SESSION *sess,
		       const char *sni, const char *alpn, bool tls12)
{
	struct pair p;
	bool resumed;

	pair_init(&p, srv, alpn, cctx);
	if (sni != NULL)
		cr_assert_eq(wolfSSL_UseSNI(p.cli, WOLFSSL_SNI_HOST_NAME, sni,
					    (word16)strlen(sni)), WOLFSSL_SUCCESS);
	cr_assert_eq(wolfSSL_set_session(p.cli, sess), WOLFSSL_SUCCESS);
	if (tls12) {
		client_step(&p);
		server_feed(&p, false, 16384);
		cr_assert_not(p.srv_failed);
		resumed = !has_handshake(&p.s2c, 0x0b);
		if (resumed) {
			handshake(&p, false);
			cr_assert(tls_conn_resumed(p.srv));
		}
	} else {
		full_session(&p);
		resumed = tls_conn_resumed(p.srv);
		cr_assert_eq(resumed, wolfSSL_session_reused(p.cli) == 1);
	}
	pair_free(&p);
	return resumed;
}

/* RFC 6066 section 3: a ticket issued under one SNI name never resumes
 * under another (nor without SNI), and a ticket from one protocol's port
 * never resumes on another protocol's (ALPN id of the listener). */
static void ticket_binding(WOLFSSL_METHOD *m, bool tls12)
{
	struct tls_server *srv = server_gen("a", "mail.example", 3600);
	WOLFSSL_CTX *cctx = client_ctx(m, NULL);
	struct pair p1;
	WOLFSSL_SESSION *sess;
	char name_a[] = "a.example";

	if (tls12)
		cr_assert_eq(wolfSSL_CTX_UseSessionTicket(cctx), WOLFSSL_SUCCESS);
	pair_init(&p1, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_UseSNI(p1.cli, WOLFSSL_SNI_HOST_NAME, name_a, sizeof(name_a) - 1),
		     WOLFSSL_SUCCESS);
	full_session(&p1);
	sess = wolfSSL_get_session(p1.cli);
	cr_assert_not_null(sess);

	cr_assert(try_resume(srv, cctx, sess, "a.example", "imap", tls12));
	cr_assert(try_resume(srv, cctx, sess, "A.Example", "imap", tls12), "names are case-insensitive");
	cr_assert_not(try_resume(srv, cctx, sess, "b.example", "imap", tls12), "resumed under another SNI");
	cr_assert_not(try_resume(srv, cctx, sess, NULL, "imap", tls12), "resumed without SNI");
	cr_assert_not(try_resume(srv, cctx, sess, "a.example", "smtp", tls12), "resumed on another protocol");
	cr_assert_not(try_resume(srv, cctx, sess, "a.example", NULL, tls12), "resumed without ALPN id");
	/* And the ticket still works where it belongs. */
	cr_assert(try_resume(srv, cctx, sess, "a.example", "imap", tls12));

	pair_free(&p1);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

Test(tls, ticket_bound_to_sni_and_alpn_tls13)
{
	ticket_binding(wolfTLSv1_3_client_method(), false);
}

Test(tls, ticket_bound_to_sni_and_alpn_tls12)
{
	ticket_binding(wolfTLSv1_2_client_method(), true);
}

/* SIGHUP: a new server carrying the old one's ticket keys still resumes. */
Test(tls, ticket_keys_survive_reload)
{
	struct tls_server *old = server_gen("a", "mail.example", 0);
	struct tls_server *srv = NULL;
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	char dir[256], err[256];
	struct tls_server_config cfg = { .data_dir = dir, .hostname = "mail.example" };
	struct pair p1, p2;

	pair_init(&p1, old, "imap", cctx);
	full_session(&p1);
	snprintf(dir, sizeof(dir), "%s/a", tmp_root);
	cfg.ticket_keys_from = old;
	cr_assert_eq(tls_server_new(&cfg, &srv, err, sizeof(err)), 0, "%s", err);
	tls_server_unref(&old);   /* p1 still holds it */
	pair_init(&p2, srv, "imap", cctx);
	cr_assert_eq(wolfSSL_set_session(p2.cli, wolfSSL_get_session(p1.cli)), WOLFSSL_SUCCESS);
	full_session(&p2);
	cr_assert(tls_conn_resumed(p2.srv));
	pair_free(&p2);
	pair_free(&p1);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

Test(tls, close_notify)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;
	uint8_t buf[16];

	/* Client closes: TLS_CLOSED, and data before it comes first. */
	pair_init(&p, srv, "imap", cctx);
	full_session(&p);
	cr_assert_eq(wolfSSL_write(p.cli, "bye", 3), 3);
	wolfSSL_shutdown(p.cli);
	server_feed(&p, false, 16384);
	cr_assert_eq(p.srv_plain.len, 3);
	{
		size_t consumed, n;

		cr_assert_eq(tls_conn_read(p.srv, span_make(NULL, 0), &consumed, buf, sizeof(buf), &n),
			     TLS_CLOSED);
	}
	pair_free(&p);

	/* Server closes: the client sees close_notify. */
	pair_init(&p, srv, "imap", cctx);
	full_session(&p);
	tls_conn_close_notify(p.srv);
	tls_conn_close_notify(p.srv); /* once */
	cr_assert_eq(wolfSSL_read(p.cli, buf, sizeof(buf)), 0);
	cr_assert_eq(wolfSSL_get_error(p.cli, 0), WOLFSSL_ERROR_ZERO_RETURN);
	cr_assert_eq(p.s2c.len, 0);
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}

/* Issue goal: an idle TLS connection costs at most 12 kB in our process. */
#define IDLE_CONN_MAX_BYTES 12288

Test(tls, idle_connection_memory)
{
	struct tls_server *srv = server_gen("a", "mail.example", 0);
	WOLFSSL_CTX *cctx = client_ctx(wolfTLSv1_3_client_method(), NULL);
	struct pair p;
	uint8_t buf[16];

	/* A first connection warms up wolfSSL's lazily allocated globals,
	 * which are not the connection's. */
	pair_init(&p, srv, "imap", cctx);
	full_session(&p);
	pair_free(&p);

	pair_init(&p, srv, "imap", cctx);
	full_session(&p);
	cr_assert_eq(wolfSSL_write(p.cli, "a1 NOOP\r\n", 9), 9);
	server_feed(&p, false, 16384);
	cr_assert_eq(server_write(&p, "a1 OK\r\n", 7), TLS_OK);
	cr_assert_eq(client_read(&p, buf, sizeof(buf)), 7);
	cr_log_info("idle TLS 1.3 connection: %zu bytes", p.srv_mem);
#ifdef RINGMAIL_WOLFSSL_BUNDLED
	cr_assert_leq(p.srv_mem, IDLE_CONN_MAX_BYTES, "idle connection holds %zu bytes", p.srv_mem);
#else
	/* Debian's build (OpenSSL compat, everything on) is far bigger; the
	 * budget holds for ours only. */
#endif
	pair_free(&p);
	wolfSSL_CTX_free(cctx);
	tls_server_unref(&srv);
}
