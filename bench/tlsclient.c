/* tlsclient.c - the load generators' TLS client over memory (tlsclient.h). */
#include "tlsclient.h"

#include <wolfssl/wolfio.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool tlsclient_out_append(struct tlsclient_io *io, const void *p, size_t n)
{
	if (io->out_len + n > io->out_cap) {
		size_t cap = io->out_cap ? io->out_cap : 1024;
		while (cap < io->out_len + n)
			cap *= 2;
		uint8_t *o = realloc(io->out, cap);
		if (!o)
			return false;
		io->out = o;
		io->out_cap = cap;
	}
	memcpy(io->out + io->out_len, p, n);
	io->out_len += n;
	return true;
}

void tlsclient_io_free(struct tlsclient_io *io)
{
	free(io->out);
	io->out = NULL;
	io->out_len = io->out_off = io->out_cap = 0;
}

static int cio_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tlsclient_io *io = arg;
	(void)ssl;
	uint32_t n = io->in_len - io->in_off;
	if (sz <= 0)
		return 0;
	if (n == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (n > (uint32_t)sz)
		n = (uint32_t)sz;
	memcpy(buf, io->in + io->in_off, n);
	io->in_off += n;
	return (int)n;
}

static int cio_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tlsclient_io *io = arg;
	(void)ssl;
	if (sz < 0 || !tlsclient_out_append(io, buf, (size_t)sz))
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

WOLFSSL_CTX *tlsclient_ctx_new(void)
{
	if (wolfSSL_Init() != WOLFSSL_SUCCESS)
		return NULL;
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfTLSv1_3_client_method());
	if (!ctx) {
		wolfSSL_Cleanup();
		return NULL;
	}
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	wolfSSL_CTX_UseSupportedCurve(ctx, WOLFSSL_ECC_X25519);
	int groups[1] = { WOLFSSL_ECC_X25519 };
	wolfSSL_CTX_set_groups(ctx, groups, 1);
	wolfSSL_CTX_SetIORecv(ctx, cio_recv);
	wolfSSL_CTX_SetIOSend(ctx, cio_send);
	return ctx;
}

void tlsclient_ctx_free(WOLFSSL_CTX **ctx)
{
	if (!*ctx)
		return;
	wolfSSL_CTX_free(*ctx);
	*ctx = NULL;
	wolfSSL_Cleanup();
}

WOLFSSL *tlsclient_new(WOLFSSL_CTX *ctx, struct tlsclient_io *io)
{
	WOLFSSL *ssl = wolfSSL_new(ctx);
	if (!ssl)
		return NULL;
	wolfSSL_SetIOReadCtx(ssl, io);
	wolfSSL_SetIOWriteCtx(ssl, io);
	return ssl;
}

static void err_text(int e, char *err, size_t errcap)
{
	char b[WOLFSSL_MAX_ERROR_SZ];
	if (errcap)
		snprintf(err, errcap, "%s", wolfSSL_ERR_error_string((unsigned long)e, b));
}

int tlsclient_handshake(WOLFSSL *ssl, char *err, size_t errcap)
{
	int r = wolfSSL_connect(ssl);
	if (r == WOLFSSL_SUCCESS)
		return TLSCLIENT_DONE;
	int e = wolfSSL_get_error(ssl, r);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return TLSCLIENT_WANT;
	err_text(e, err, errcap);
	return TLSCLIENT_ERROR;
}

int tlsclient_read(WOLFSSL *ssl, void *buf, size_t cap, char *err, size_t errcap)
{
	int r = wolfSSL_read(ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
	if (r > 0)
		return r;
	int e = wolfSSL_get_error(ssl, r);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return TLSCLIENT_WANT;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		return TLSCLIENT_CLOSED;
	err_text(e, err, errcap);
	return TLSCLIENT_ERROR;
}

bool tlsclient_write(WOLFSSL *ssl, const void *p, size_t n)
{
	return n <= INT_MAX && wolfSSL_write(ssl, p, (int)n) == (int)n;
}
