/* dkim.c - DKIM signing (see dkim.h). */
#include <errno.h>
#include <stdlib.h>

#include "outbound/dkim.h"

struct dkim {
	int unused;
};

int dkim_new(const char *data_dir, const char *selector, struct dkim **dkim_r)
{
	(void)data_dir;
	(void)selector;
	*dkim_r = NULL;
	return 0;
}

void dkim_free(struct dkim **dkim_r)
{
	free(*dkim_r);
	*dkim_r = NULL;
}

char *dkim_sign(struct dkim *dkim, const char *domain, const uint8_t *msg, size_t len)
{
	(void)dkim;
	(void)domain;
	(void)msg;
	(void)len;
	return NULL;
}

struct dkim_signer *dkim_signer_begin(struct dkim *dkim, const char *domain)
{
	(void)dkim;
	(void)domain;
	return NULL;
}

void dkim_signer_feed(struct dkim_signer *s, const uint8_t *p, size_t len)
{
	(void)s;
	(void)p;
	(void)len;
}

char *dkim_signer_finish(struct dkim_signer *s)
{
	(void)s;
	return NULL;
}

void dkim_signer_abort(struct dkim_signer *s)
{
	(void)s;
}

int dkim_keygen(const char *data_dir, const char *domain, const char *type,
		const char *selector, FILE *out, FILE *err)
{
	(void)data_dir;
	(void)domain;
	(void)type;
	(void)selector;
	(void)out;
	fprintf(err, "ringmail: dkim keygen is not implemented yet\n");
	return -ENOSYS;
}
