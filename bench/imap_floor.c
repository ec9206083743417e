/* imap_floor.c - the floor of ringmail's IMAP benchmarks over TLS (issue 6):
 * what any server built on the same wolfSSL archive must spend on bench/
 * imapload's "login" and "fetch" scenarios, so that "ringmail / floor" CPU
 * per operation says how much ringmail's own code (engine, session,
 * parser, store) adds on top of the TLS library and the kernel.
 *
 * A single-threaded epoll server with canned IMAP: a "* OK" greeting;
 * LOGIN -> tagged OK (no password check); SELECT -> "* N EXISTS" + OK;
 * FETCH 1:* (FLAGS) -> N "* i FETCH (FLAGS (\Seen))" + OK; FETCH n
 * BODY.PEEK[] -> the --body file as the literal of "* n FETCH (BODY[]
 * {SIZE}" + OK; LOGOUT -> "* BYE" + OK, close_notify, close. Lines are
 * parsed by tag and command word only; anything else is "tag BAD". The
 * body is read from its file on every FETCH (pread, 64 KiB at a time,
 * from the page cache), as a store would: that is part of the floor.
 *
 * TLS (--tls: implicit, as on 993): wolfSSL from the same archive as
 * ringmail (its SHA-NI/x25519 patches and its ChaCha20 generator come
 * with it), with the choices of tls/tls.c that matter for CPU: TLS 1.2
 * minimum, the same cipher list, groups X25519 then P-256, no session
 * cache, a session ticket sealed with AES-256-GCM (here: one key schedule
 * at start, no key ring, no SNI/ALPN binding in the AAD), tls/'s own
 * process setup (tls_global_init: allocators, jemalloc linked through
 * core/) and its HKDF callbacks on the SHA extensions
 * (tls_sha256_ctx_setup, tls_sha256_forget after each call into wolfSSL
 * that can derive keys), the greeting in the server's first flight
 * (0.5-RTT, wolfSSL_ringmail_half_rtt of the patched archive), and
 * wolfSSL_FreeHandshakeResources at the handshake's end. Not done: SNI
 * certificate choice and ALPN (imapload sends neither).
 *
 * I/O: wolfSSL's receive callback recv()s from the socket; its send
 * callback appends records to the connection's buffer, which goes out
 * with one send() per wolfSSL_accept/wolfSSL_write call (ringmail also
 * sends one buffer per store read, not one per 16 KiB record). A buffer
 * the socket does not take whole waits for EPOLLOUT; the next body chunk
 * is read only when it has gone.
 *
 * Usage: imap-floor [--host ADDR] [--port PORT|0] [--tls --cert PEM --key PEM]
 *                   [--body FILE] [--messages N]
 * Once listening it prints "listening ADDR PORT" on stdout. SIGINT/SIGTERM
 * (through a signalfd) end it with counts on stderr. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/wolfcrypt/aes.h>
#if __has_include(<wolfssl/ringmail_rand.h>)
#include <wolfssl/ringmail_rand.h>
#define FLOOR_RINGMAIL_RAND 1
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls/tls.h"
#include "tls/tls_sha256.h"

enum {
	IF_EVENTS = 256,          /* epoll_wait batch */
	IF_LINE_MAX = 1024,       /* longest command line */
	IF_CHUNK = 64 * 1024,     /* body bytes per pread and per wolfSSL_write */
	IF_TICKET_TAG = 16,       /* AES-GCM tag in the first half of wolfSSL's mac */
	IF_MESSAGES_MAX = 1000000,
};

static const char greeting[] = "* OK [CAPABILITY IMAP4rev1] imap-floor ready\r\n";

struct if_conn {
	int fd;
	WOLFSSL *ssl;             /* NULL in plaintext */
	bool handshake_done, greeted, closing;
	uint8_t *out;             /* bytes not yet sent (ciphertext on TLS) */
	size_t out_len, out_off, out_cap;
	char line[IF_LINE_MAX];
	size_t line_len;
	bool line_overflow;       /* the current line was too long: BAD at its end */
	/* a body FETCH in progress */
	bool fetching;
	unsigned fetch_msg;
	uint64_t body_off;
	char tag[64];
};

struct if_server {
	int lfd, ep, sfd;
	bool tls;
	WOLFSSL_CTX *ctx;
	Aes ticket_aes;
	uint8_t ticket_name[WOLFSSL_TICKET_NAME_SZ];
	bool sha_on;
	int body_fd;
	uint64_t body_size;
	unsigned messages;
	uint8_t *chunk;           /* IF_CHUNK + room for the literal's head and the tail */
	size_t chunk_cap;
	char *flags_reply;        /* the N "* i FETCH (FLAGS (\Seen))" lines */
	size_t flags_len;
	struct if_conn **conns;   /* by fd */
	size_t nconns;
	uint64_t served, fetches, errors;
};

/* ---- output ------------------------------------------------------------------ */

static int out_append(struct if_conn *c, const void *p, size_t n)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < c->out_len + n)
			cap *= 2;
		uint8_t *nb = realloc(c->out, cap);
		if (!nb)
			return -ENOMEM;
		c->out = nb;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
	return 0;
}

/* Sends what is buffered. Returns 1 when all went, 0 when the socket is
 * full (the rest waits for EPOLLOUT), or a negative errno. */
static int out_flush(struct if_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t r = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return 0;
		if (r < 0)
			return -errno;
		c->out_off += (size_t)r;
	}
	c->out_off = c->out_len = 0;
	return 1;
}

/* ---- wolfSSL's I/O and ticket callbacks ------------------------------------------- */

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct if_conn *c = arg;
	(void)ssl;
	for (;;) {
		ssize_t r = recv(c->fd, buf, (size_t)sz, MSG_DONTWAIT);
		if (r > 0)
			return (int)r;
		if (r == 0)
			return WOLFSSL_CBIO_ERR_CONN_CLOSE;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return WOLFSSL_CBIO_ERR_WANT_READ;
		return errno == ECONNRESET ? WOLFSSL_CBIO_ERR_CONN_RST : WOLFSSL_CBIO_ERR_GENERAL;
	}
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct if_conn *c = arg;
	(void)ssl;
	if (sz < 0 || out_append(c, buf, (size_t)sz) != 0)
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

static int ticket_random(uint8_t *p, size_t n)
{
#ifdef FLOOR_RINGMAIL_RAND
	return ringmail_rand_block(p, (unsigned int)n) == 0 ? 0 : -1;
#else
	return getrandom(p, n, 0) == (ssize_t)n ? 0 : -1;
#endif
}

/* Seals (enc) or opens a session ticket in place with the one AES-256-GCM
 * key; AAD: key name, IV and length, as tls/tls.c's without its binding. */
static int ticket_cb(WOLFSSL *ssl, unsigned char key_name[WOLFSSL_TICKET_NAME_SZ],
		     unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
		     int enc, unsigned char *ticket, int in_len, int *out_len, void *arg)
{
	struct if_server *s = arg;
	uint8_t aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ + 2];
	int r;
	(void)ssl;
	if (in_len < 0 || in_len > 0xffff)
		return WOLFSSL_TICKET_RET_REJECT;
	if (enc) {
		memcpy(key_name, s->ticket_name, WOLFSSL_TICKET_NAME_SZ);
		memset(iv, 0, WOLFSSL_TICKET_IV_SZ);
		if (ticket_random(iv, GCM_NONCE_MID_SZ) != 0)
			return WOLFSSL_TICKET_RET_REJECT;
	} else if (memcmp(key_name, s->ticket_name, WOLFSSL_TICKET_NAME_SZ) != 0) {
		return WOLFSSL_TICKET_RET_REJECT;
	}
	memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
	memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
	aad[sizeof(aad) - 2] = (uint8_t)(in_len >> 8);
	aad[sizeof(aad) - 1] = (uint8_t)in_len;
	if (enc) {
		r = wc_AesGcmEncrypt(&s->ticket_aes, ticket, ticket, (word32)in_len, iv,
				     GCM_NONCE_MID_SZ, mac, IF_TICKET_TAG, aad, sizeof(aad));
		memset(mac + IF_TICKET_TAG, 0, WOLFSSL_TICKET_MAC_SZ - IF_TICKET_TAG);
	} else {
		r = wc_AesGcmDecrypt(&s->ticket_aes, ticket, ticket, (word32)in_len, iv,
				     GCM_NONCE_MID_SZ, mac, IF_TICKET_TAG, aad, sizeof(aad));
	}
	if (r != 0)
		return WOLFSSL_TICKET_RET_REJECT;
	*out_len = in_len;
	return WOLFSSL_TICKET_RET_OK;
}

static int tls_setup(struct if_server *s, const char *cert, const char *key)
{
	int groups[] = { WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1 };
	uint8_t tkey[32];
	if (tls_global_init() != 0) {
		fprintf(stderr, "imap-floor: wolfSSL init failed\n");
		return -1;
	}
	s->sha_on = tls_sha_ni_active();
	s->ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
	if (!s->ctx || wolfSSL_CTX_SetMinVersion(s->ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
	    wolfSSL_CTX_set_cipher_list(s->ctx, tls_cipher_list) != WOLFSSL_SUCCESS ||
	    wolfSSL_CTX_set_groups(s->ctx, groups, 2) != WOLFSSL_SUCCESS) {
		fprintf(stderr, "imap-floor: wolfSSL context setup failed\n");
		return -1;
	}
	if (wolfSSL_CTX_use_certificate_chain_file(s->ctx, cert) != WOLFSSL_SUCCESS ||
	    wolfSSL_CTX_use_PrivateKey_file(s->ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
		fprintf(stderr, "imap-floor: cannot load %s / %s\n", cert, key);
		return -1;
	}
	if (ticket_random(tkey, sizeof(tkey)) != 0 ||
	    ticket_random(s->ticket_name, sizeof(s->ticket_name)) != 0 ||
	    wc_AesInit(&s->ticket_aes, NULL, INVALID_DEVID) != 0 ||
	    wc_AesGcmSetKey(&s->ticket_aes, tkey, sizeof(tkey)) != 0) {
		fprintf(stderr, "imap-floor: ticket key setup failed\n");
		return -1;
	}
	explicit_bzero(tkey, sizeof(tkey));
	wolfSSL_CTX_set_verify(s->ctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_set_session_cache_mode(s->ctx, WOLFSSL_SESS_CACHE_OFF);
	wolfSSL_CTX_set_TicketEncCb(s->ctx, ticket_cb);
	wolfSSL_CTX_set_TicketEncCtx(s->ctx, s);
	wolfSSL_CTX_set_TicketHint(s->ctx, (int)TLS_TICKET_ROTATE_S_DEFAULT);
	wolfSSL_CTX_set_timeout(s->ctx, 2 * TLS_TICKET_ROTATE_S_DEFAULT);
	wolfSSL_CTX_SetIORecv(s->ctx, io_recv);
	wolfSSL_CTX_SetIOSend(s->ctx, io_send);
	tls_sha256_ctx_setup(s->ctx, s->sha_on);
	return 0;
}

/* ---- connections ----------------------------------------------------------------- */

static void conn_close(struct if_server *s, struct if_conn *c)
{
	s->conns[c->fd] = NULL;
	close(c->fd); /* also leaves the epoll set */
	if (c->ssl)
		wolfSSL_free(c->ssl);
	free(c->out);
	free(c);
	s->served++;
}

static void conn_fail(struct if_server *s, struct if_conn *c)
{
	s->errors++;
	conn_close(s, c);
}

/* Writes plaintext: encrypted into the buffer on TLS. Returns false on
 * an error (the connection must close). */
static bool conn_write(struct if_conn *c, const void *p, size_t n)
{
	if (!c->ssl)
		return out_append(c, p, n) == 0;
	int r = n > 0 ? wolfSSL_write(c->ssl, p, (int)n) : 0;
	tls_sha256_forget();
	return r == (int)n;
}

static void conn_want(struct if_server *s, struct if_conn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.fd = c->fd };
	epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends what the last write buffered. Returns 1 when all went, 0 when
 * the connection waits for EPOLLOUT, -1 when it has been closed. */
static int conn_flush(struct if_server *s, struct if_conn *c)
{
	int r = out_flush(c);
	if (r < 0) {
		conn_fail(s, c);
		return -1;
	}
	if (r == 0)
		conn_want(s, c, EPOLLOUT);
	return r;
}

/* Sends body chunks while the socket takes them; then the literal's end
 * and the tagged OK. Returns as conn_flush. */
static int fetch_pump(struct if_server *s, struct if_conn *c)
{
	while (c->fetching) {
		size_t head = 0;
		if (c->body_off == 0) {
			head = (size_t)snprintf((char *)s->chunk, s->chunk_cap, "* %u FETCH (BODY[] {%llu}\r\n",
						c->fetch_msg, (unsigned long long)s->body_size);
		}
		uint64_t left = s->body_size - c->body_off;
		size_t want = left < IF_CHUNK - head ? (size_t)left : IF_CHUNK - head;
		size_t got = 0;
		while (got < want) {
			ssize_t r = pread(s->body_fd, s->chunk + head + got, want - got,
					  (off_t)(c->body_off + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				fprintf(stderr, "imap-floor: pread: %s\n", r < 0 ? strerror(errno) : "short file");
				conn_fail(s, c);
				return -1;
			}
			got += (size_t)r;
		}
		c->body_off += got;
		size_t n = head + got;
		if (c->body_off == s->body_size) {
			n += (size_t)snprintf((char *)s->chunk + n, s->chunk_cap - n,
					      ")\r\n%s OK FETCH completed\r\n", c->tag);
			c->fetching = false;
			s->fetches++;
		}
		if (!conn_write(c, s->chunk, n)) {
			conn_fail(s, c);
			return -1;
		}
		int r = conn_flush(s, c);
		if (r <= 0)
			return r;
	}
	return 1;
}

static bool word_is(const char *p, size_t n, const char *w)
{
	return strlen(w) == n && strncasecmp(p, w, n) == 0;
}

/* One command line (without CRLF). Returns as conn_flush. */
static int conn_line(struct if_server *s, struct if_conn *c, char *line, size_t len)
{
	char buf[256];
	int n;
	char *sp = memchr(line, ' ', len);
	size_t tlen = sp ? (size_t)(sp - line) : len;
	if (tlen == 0 || tlen >= sizeof(c->tag) || c->line_overflow) {
		c->line_overflow = false;
		n = snprintf(buf, sizeof(buf), "* BAD bad command line\r\n");
		goto reply;
	}
	memcpy(c->tag, line, tlen);
	c->tag[tlen] = 0;
	char *cmd = sp ? sp + 1 : line + len;
	char *end = line + len;
	char *csp = memchr(cmd, ' ', (size_t)(end - cmd));
	size_t clen = csp ? (size_t)(csp - cmd) : (size_t)(end - cmd);
	char *args = csp ? csp + 1 : end;
	if (word_is(cmd, clen, "LOGIN")) {
		n = snprintf(buf, sizeof(buf), "%s OK LOGIN completed\r\n", c->tag);
	} else if (word_is(cmd, clen, "SELECT")) {
		n = snprintf(buf, sizeof(buf), "* %u EXISTS\r\n%s OK [READ-WRITE] SELECT completed\r\n",
			     s->messages, c->tag);
	} else if (word_is(cmd, clen, "FETCH") && memmem(args, (size_t)(end - args), "BODY", 4)) {
		unsigned long v = strtoul(args, NULL, 10);
		if (v < 1 || v > s->messages) {
			n = snprintf(buf, sizeof(buf), "%s BAD no such message\r\n", c->tag);
			goto reply;
		}
		c->fetching = true;
		c->fetch_msg = (unsigned)v;
		c->body_off = 0;
		return fetch_pump(s, c);
	} else if (word_is(cmd, clen, "FETCH")) {
		if (!conn_write(c, s->flags_reply, s->flags_len))
			goto fail;
		n = snprintf(buf, sizeof(buf), "%s OK FETCH completed\r\n", c->tag);
		/* the tagged OK in the same buffer, so one send */
	} else if (word_is(cmd, clen, "LOGOUT")) {
		n = snprintf(buf, sizeof(buf), "* BYE imap-floor logging out\r\n%s OK LOGOUT completed\r\n",
			     c->tag);
		if (!conn_write(c, buf, (size_t)n))
			goto fail;
		if (c->ssl) {
			(void)wolfSSL_shutdown(c->ssl); /* close_notify; the peer's is not awaited */
			tls_sha256_forget();
		}
		c->closing = true;
		int r = conn_flush(s, c);
		if (r == 1)
			conn_close(s, c);
		return r == 1 ? -1 : r;
	} else {
		n = snprintf(buf, sizeof(buf), "%s BAD unknown command\r\n", c->tag);
	}
reply:
	if (!conn_write(c, buf, (size_t)n))
		goto fail;
	return conn_flush(s, c);
fail:
	conn_fail(s, c);
	return -1;
}

/* Takes bytes of command lines; runs every complete one until a reply
 * waits for the socket. Returns as conn_flush. Bytes after a waiting
 * reply stay in c->line (imapload does not pipeline). */
static int conn_input(struct if_server *s, struct if_conn *c, const char *p, size_t n)
{
	while (n > 0) {
		const char *lf = memchr(p, '\n', n);
		size_t k = lf ? (size_t)(lf - p) + 1 : n;
		size_t room = sizeof(c->line) - c->line_len;
		if (k > room) {
			c->line_overflow = true;
			c->line_len = 0;
			room = sizeof(c->line);
		}
		memcpy(c->line + c->line_len, p, k < room ? k : room);
		c->line_len += k < room ? k : room;
		p += k;
		n -= k;
		if (!lf)
			continue;
		size_t len = c->line_len;
		while (len > 0 && (c->line[len - 1] == '\n' || c->line[len - 1] == '\r'))
			len--;
		c->line_len = 0;
		int r = conn_line(s, c, c->line, len);
		if (r <= 0) {
			if (r == 0 && n > 0)
				fprintf(stderr, "imap-floor: pipelined input dropped\n");
			return r;
		}
	}
	return 1;
}

static void conn_readable(struct if_server *s, struct if_conn *c)
{
	char buf[4096];
	if (c->ssl && !c->handshake_done) {
		int r = wolfSSL_accept(c->ssl);
		tls_sha256_forget();
		if (r == WOLFSSL_SUCCESS) {
			c->handshake_done = true;
			wolfSSL_FreeHandshakeResources(c->ssl);
		} else if (wolfSSL_get_error(c->ssl, r) != WOLFSSL_ERROR_WANT_READ) {
			conn_fail(s, c);
			return;
		}
		bool can_write = c->handshake_done;
#ifdef WOLFSSL_RINGMAIL_HALF_RTT
		can_write = can_write || wolfSSL_ringmail_half_rtt(c->ssl) == 1;
#endif
		if (can_write && !c->greeted) {
			c->greeted = true;
			if (!conn_write(c, greeting, sizeof(greeting) - 1)) {
				conn_fail(s, c);
				return;
			}
		}
		if (conn_flush(s, c) <= 0 || !c->handshake_done)
			return;
	}
	for (;;) {
		ssize_t n;
		if (c->ssl) {
			int r = wolfSSL_read(c->ssl, buf, sizeof(buf));
			tls_sha256_forget();
			if (r <= 0) {
				int e = wolfSSL_get_error(c->ssl, r);
				if (e == WOLFSSL_ERROR_WANT_READ)
					return;
				if (e == WOLFSSL_ERROR_ZERO_RETURN)
					conn_close(s, c);
				else
					conn_fail(s, c);
				return;
			}
			n = r;
		} else {
			n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN)
				return;
			if (n <= 0) {
				conn_close(s, c); /* EOF or reset */
				return;
			}
		}
		if (conn_input(s, c, buf, (size_t)n) <= 0)
			return;
	}
}

static void conn_writable(struct if_server *s, struct if_conn *c)
{
	int r = out_flush(c);
	if (r < 0) {
		conn_fail(s, c);
		return;
	}
	if (r == 0)
		return;
	if (c->closing) {
		conn_close(s, c);
		return;
	}
	if (c->fetching && fetch_pump(s, c) <= 0)
		return;
	conn_want(s, c, EPOLLIN);
	conn_readable(s, c); /* wolfSSL may hold decrypted bytes already */
}

static void if_accept(struct if_server *s)
{
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				perror("imap-floor: accept4");
			return;
		}
		struct if_conn *c = (size_t)fd < s->nconns ? calloc(1, sizeof(*c)) : NULL;
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		s->conns[fd] = c;
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			conn_fail(s, c);
			continue;
		}
		if (s->tls) {
			c->ssl = wolfSSL_new(s->ctx);
			if (!c->ssl) {
				conn_fail(s, c);
				continue;
			}
			wolfSSL_SetIOReadCtx(c->ssl, c);
			wolfSSL_SetIOWriteCtx(c->ssl, c);
			/* the ClientHello may already be there */
			conn_readable(s, c);
			continue;
		}
		c->greeted = true;
		if (conn_write(c, greeting, sizeof(greeting) - 1))
			(void)conn_flush(s, c);
		else
			conn_fail(s, c);
	}
}

static int if_listen(const char *host, int port, int *port_r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "imap-floor: bad IPv4 address %s\n", host);
		return -1;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	socklen_t len = sizeof(sa);
	/* Accepted sockets inherit TCP_NODELAY, as in core/server.c. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		perror("imap-floor: listen");
		close(fd);
		return -1;
	}
	*port_r = ntohs(sa.sin_port);
	return fd;
}

static void if_free(struct if_server *s)
{
	for (size_t i = 0; s->conns && i < s->nconns; i++)
		if (s->conns[i])
			conn_close(s, s->conns[i]);
	if (s->ctx) {
		wolfSSL_CTX_free(s->ctx);
		wc_AesFree(&s->ticket_aes);
		tls_global_cleanup();
	}
	free(s->conns);
	free(s->chunk);
	free(s->flags_reply);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: imap-floor [--host ADDR] [--port PORT|0] [--tls --cert PEM --key PEM]\n"
		   "                  [--body FILE] [--messages N (20)]\n");
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *cert = NULL, *key = NULL, *body = NULL;
	int port = 1143;
	long messages = 20;
	bool tls = false;
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "tls", no_argument, NULL, 't' },
		{ "cert", required_argument, NULL, 'c' },
		{ "key", required_argument, NULL, 'k' },
		{ "body", required_argument, NULL, 'b' },
		{ "messages", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "H:p:tc:k:b:n:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'H': host = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 't': tls = true; break;
		case 'c': cert = optarg; break;
		case 'k': key = optarg; break;
		case 'b': body = optarg; break;
		case 'n': messages = atol(optarg); break;
		default:
			usage(ch == 'h' ? stdout : stderr);
			return ch == 'h' ? 0 : 1;
		}
	}
	if (optind != argc || port < 0 || port > 65535 || messages < 1 ||
	    messages > IF_MESSAGES_MAX || (tls && (!cert || !key))) {
		usage(stderr);
		return 1;
	}

	struct if_server s = { .lfd = -1, .ep = -1, .sfd = -1, .body_fd = -1, .tls = tls,
			       .messages = (unsigned)messages };
	if (body) {
		struct stat st;
		s.body_fd = open(body, O_RDONLY | O_CLOEXEC);
		if (s.body_fd < 0 || fstat(s.body_fd, &st) < 0) {
			fprintf(stderr, "imap-floor: %s: %s\n", body, strerror(errno));
			return 1;
		}
		s.body_size = (uint64_t)st.st_size;
	} else {
		s.body_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	s.chunk_cap = IF_CHUNK + 256;
	s.chunk = malloc(s.chunk_cap);
	s.flags_reply = malloc((size_t)s.messages * 40);
	for (unsigned i = 1; s.flags_reply && i <= s.messages; i++)
		s.flags_len += (size_t)sprintf(s.flags_reply + s.flags_len,
					       "* %u FETCH (FLAGS (\\Seen))\r\n", i);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		rl.rlim_cur = 1024;
	s.nconns = rl.rlim_cur > (1u << 20) ? (1u << 20) : rl.rlim_cur;
	s.conns = calloc(s.nconns, sizeof(*s.conns));
	if (!s.chunk || !s.flags_reply || !s.conns) {
		fprintf(stderr, "imap-floor: out of memory\n");
		return 1;
	}
	if (tls && tls_setup(&s, cert, key) != 0)
		return 1;

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	int bound;
	if ((s.lfd = if_listen(host, port, &bound)) < 0 || (s.ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    (s.sfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0)
		goto err;
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = s.lfd };
	if (epoll_ctl(s.ep, EPOLL_CTL_ADD, s.lfd, &ev) < 0)
		goto err;
	ev.data.fd = s.sfd;
	if (epoll_ctl(s.ep, EPOLL_CTL_ADD, s.sfd, &ev) < 0)
		goto err;
	printf("listening %s %d\n", host, bound);
	fflush(stdout);

	struct epoll_event evs[IF_EVENTS];
	for (;;) {
		int n = epoll_wait(s.ep, evs, IF_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto err;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == s.lfd) {
				if_accept(&s);
				continue;
			}
			if (fd == s.sfd)
				goto out;
			struct if_conn *c = s.conns[fd];
			if (!c)
				continue; /* closed earlier in this batch */
			if (evs[i].events & EPOLLOUT)
				conn_writable(&s, c);
			else
				conn_readable(&s, c);
		}
	}
out:
	fprintf(stderr, "imap-floor: %llu connections served, %llu body fetches, %llu errors\n",
		(unsigned long long)s.served, (unsigned long long)s.fetches,
		(unsigned long long)s.errors);
	if_free(&s);
	return 0;
err:
	perror("imap-floor");
	if_free(&s);
	return 1;
}
