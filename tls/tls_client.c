/* tls_client.c - the client side of TLS over memory (see tls_client.h). */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include <errno.h>
#include <limits.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls_client.h"

struct tls_verifier {
	WOLFSSL_CTX *ctx; /* shared by the clients of every loop; read-only */
};

struct tls_client {
	WOLFSSL_CTX *ctx; /* owned; NULL when a verifier's is used */
	WOLFSSL *ssl;
	tls_out_fn out;
	void *out_arg;
	const uint8_t *in_p;
	size_t in_len, in_off;
	bool done, failed, closed;
	int err; /* wolfSSL's error code at the failure */
};

static const char client_ciphers[] =
	"TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
	"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305";

static int cio_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_client *c = arg;
	(void)ssl;
	size_t n = c->in_len - c->in_off;
	if (sz <= 0)
		return 0;
	if (n == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (n > (size_t)sz)
		n = (size_t)sz;
	memcpy(buf, c->in_p + c->in_off, n);
	c->in_off += n;
	return (int)n;
}

static int cio_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_client *c = arg;
	(void)ssl;
	if (sz < 0 || c->out(c->out_arg, (const uint8_t *)buf, (size_t)sz))
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

static WOLFSSL_CTX *client_ctx(void)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	if (!ctx)
		return NULL;
	wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2);
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	if (wolfSSL_CTX_set_cipher_list(ctx, client_ciphers) != WOLFSSL_SUCCESS) {
		wolfSSL_CTX_free(ctx);
		return NULL;
	}
	wolfSSL_CTX_SetIORecv(ctx, cio_recv);
	wolfSSL_CTX_SetIOSend(ctx, cio_send);
	return ctx;
}

int tls_verifier_new(const char *ca_file, struct tls_verifier **v_r)
{
	*v_r = NULL;
	if (access(ca_file, R_OK))
		return -errno;
	struct tls_verifier *v = calloc(1, sizeof(*v));
	if (!v || !(v->ctx = client_ctx())) {
		free(v);
		return -ENOMEM;
	}
	if (wolfSSL_CTX_load_verify_locations(v->ctx, ca_file, NULL) != WOLFSSL_SUCCESS) {
		tls_verifier_free(&v);
		return -EINVAL;
	}
	wolfSSL_CTX_set_verify(v->ctx, WOLFSSL_VERIFY_PEER, NULL);
	*v_r = v;
	return 0;
}

void tls_verifier_free(struct tls_verifier **v_r)
{
	struct tls_verifier *v = *v_r;
	*v_r = NULL;
	if (!v)
		return;
	wolfSSL_CTX_free(v->ctx);
	free(v);
}

int tls_client_new(const char *sni, const struct tls_verifier *v, tls_out_fn out, void *out_arg,
		   struct tls_client **c_r)
{
	struct tls_client *c = calloc(1, sizeof(*c));
	*c_r = NULL;
	if (!c)
		return -ENOMEM;
	c->out = out;
	c->out_arg = out_arg;
	if (!v && !(c->ctx = client_ctx()))
		goto err;
	c->ssl = wolfSSL_new(v ? v->ctx : c->ctx);
	if (!c->ssl)
		goto err;
	wolfSSL_SetIOReadCtx(c->ssl, c);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
	if (sni && *sni)
		wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, sni, (unsigned short)strlen(sni));
	/* the certificate must name the host we meant to reach */
	if (v && (!sni || !*sni || wolfSSL_check_domain_name(c->ssl, sni) != WOLFSSL_SUCCESS))
		goto err;
	*c_r = c;
	return 0;
err:
	tls_client_free(&c);
	return -EIO;
}

void tls_client_free(struct tls_client **c_r)
{
	struct tls_client *c = *c_r;
	*c_r = NULL;
	if (!c)
		return;
	if (c->ssl)
		wolfSSL_free(c->ssl);
	if (c->ctx)
		wolfSSL_CTX_free(c->ctx);
	free(c);
}

static enum tls_status step(struct tls_client *c)
{
	if (c->done)
		return TLS_OK;
	int r = wolfSSL_connect(c->ssl);
	if (r == WOLFSSL_SUCCESS) {
		c->done = true;
		return TLS_OK;
	}
	int e = wolfSSL_get_error(c->ssl, r);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return TLS_WANT_READ;
	c->failed = true;
	c->err = e;
	return TLS_ERROR;
}

enum tls_status tls_client_start(struct tls_client *c)
{
	c->in_p = NULL;
	c->in_len = c->in_off = 0;
	return step(c);
}

enum tls_status tls_client_read(struct tls_client *c, struct span in, size_t *consumed_r,
				uint8_t *plain, size_t cap, size_t *plain_len_r)
{
	enum tls_status st = TLS_WANT_READ;
	size_t n = 0;
	*consumed_r = 0;
	*plain_len_r = 0;
	if (c->failed)
		return TLS_ERROR;
	if (c->closed)
		return TLS_CLOSED;
	c->in_p = in.p;
	c->in_len = in.len;
	c->in_off = 0;
	if (!c->done) {
		st = step(c);
		if (st != TLS_OK)
			goto out;
	}
	while (n < cap) {
		size_t want = cap - n;
		if (want > INT_MAX)
			want = INT_MAX;
		int r = wolfSSL_read(c->ssl, plain + n, (int)want);
		if (r > 0) {
			n += (size_t)r;
			continue;
		}
		int e = wolfSSL_get_error(c->ssl, r);
		if (e == WOLFSSL_ERROR_WANT_READ)
			break;
		if (e == WOLFSSL_ERROR_ZERO_RETURN) {
			c->closed = true;
			if (n == 0)
				st = TLS_CLOSED;
			break;
		}
		c->failed = true;
		st = TLS_ERROR;
		n = 0;
		goto out;
	}
	if (n > 0 || st == TLS_WANT_READ)
		st = n > 0 ? TLS_OK : (c->done ? TLS_OK : TLS_WANT_READ);
out:
	*consumed_r = c->in_off;
	*plain_len_r = n;
	c->in_p = NULL;
	c->in_len = c->in_off = 0;
	return st;
}

enum tls_status tls_client_write(struct tls_client *c, const uint8_t *p, size_t len)
{
	if (c->failed || !c->done)
		return TLS_ERROR;
	size_t off = 0;
	while (off < len) {
		size_t chunk = len - off;
		if (chunk > INT_MAX)
			chunk = INT_MAX;
		int r = wolfSSL_write(c->ssl, p + off, (int)chunk);
		if (r <= 0) {
			c->failed = true;
			return TLS_ERROR;
		}
		off += (size_t)r;
	}
	return TLS_OK;
}

bool tls_client_handshake_done(const struct tls_client *c)
{
	return c->done;
}

const char *tls_client_version(const struct tls_client *c)
{
	return c->done ? wolfSSL_get_version(c->ssl) : "";
}

const char *tls_client_cipher(const struct tls_client *c)
{
	return c->done ? wolfSSL_get_cipher_name(c->ssl) : "";
}

const char *tls_client_error(const struct tls_client *c)
{
	switch (c->err) {
	case ASN_NO_SIGNER_E:
	case ASN_SELF_SIGNED_E:
		return "certificate not trusted";
	case DOMAIN_NAME_MISMATCH:
		return "certificate does not name the host";
	case ASN_AFTER_DATE_E:
		return "certificate expired";
	case ASN_BEFORE_DATE_E:
		return "certificate not yet valid";
	default:
		return c->failed ? "handshake failed" : "";
	}
}
