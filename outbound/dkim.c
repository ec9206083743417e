/* dkim.c - DKIM signing with wolfCrypt (see dkim.h, docs/dkim.md). */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/coding.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/rsa.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <ctype.h>
#include <dirent.h>
#include <stdatomic.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/span.h"
#include "outbound/dkim.h"
#include "outbound/dkim_canon.h"

#define DKIM_PROBLEMS_MAX 16u
#define DKIM_PROBLEM_LEN 320u
#define DKIM_SIG_MAX (DKIM_RSA_BITS_MAX / 8)
#define DKIM_DER_MAX 4096u    /* a private key of DKIM_RSA_BITS_MAX bits fits */
#define DKIM_TXT_STRING_MAX 255u

enum dkim_alg { DKIM_RSA, DKIM_ED25519 };

struct dkim_key {
	char domain[DKIM_DOMAIN_MAX + 1];
	char selector[DKIM_SELECTOR_MAX + 1];
	enum dkim_alg alg;
	unsigned bits;
	/* RSA: the private key DER (decoded again per signature: a wolfCrypt
	 * RsaKey keeps per-operation state, so one is not shared by threads). */
	uint8_t *der;
	size_t der_len;
	uint8_t ed_priv[ED25519_KEY_SIZE], ed_pub[ED25519_PUB_KEY_SIZE];
};

struct dkim {
	atomic_uint refs;       /* the owner's, and one per signer */
	struct dkim_key *keys;
	size_t nkeys;
	char problems[DKIM_PROBLEMS_MAX][DKIM_PROBLEM_LEN];
	size_t nproblems;
};

/* The fields signed, those present, each instance; From is signed once
 * more (oversigned) so that no From can be added above it unnoticed. */
static const char *const signed_fields[] = {
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
	"Content-Type", "Content-Transfer-Encoding", "In-Reply-To", "References",
};
#define NSIGNED (sizeof(signed_fields) / sizeof(signed_fields[0]))

/* ---- names -------------------------------------------------------------- */

/* A DNS name of labels [A-Za-z0-9-_] (selectors may hold '_' in practice),
 * no empty label, at most max bytes. */
static bool valid_name(const char *s, size_t max)
{
	return config_dns_name_valid(s, max, true);
}

static void lower_copy(char *dst, const char *src, size_t n)
{
	size_t i;
	for (i = 0; i + 1 < n && src[i]; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[i] = '\0';
}

/* ---- keys --------------------------------------------------------------- */

/* Reads a whole small file. Returns its length or a negative errno. */
static ssize_t read_small(const char *path, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == cap) {
			close(fd);
			return -EFBIG;
		}
	}
	close(fd);
	return (ssize_t)len;
}

/* Fills k from DATA/dkim/<domain>.key and .selector. Returns 0 or a
 * negative errno with a reason in why. */
static int key_load(const char *data_dir, const char *domain, const char *def_selector,
		    struct dkim_key *k, const char **why)
{
	char path[4096];
	uint8_t *pem = NULL, *der = NULL;
	int rc = -EINVAL;

	memset(k, 0, sizeof(*k));
	lower_copy(k->domain, domain, sizeof(k->domain));
	snprintf(k->selector, sizeof(k->selector), "%s", def_selector);
	*why = "cannot read the key";
	pem = malloc(DKIM_KEY_FILE_MAX);
	der = malloc(DKIM_DER_MAX);
	if (!pem || !der) {
		rc = -ENOMEM;
		goto err;
	}
	snprintf(path, sizeof(path), "%s/dkim/%s.selector", data_dir, k->domain);
	ssize_t n = read_small(path, pem, DKIM_SELECTOR_MAX + 2);
	if (n >= 0) {
		while (n > 0 && isspace(pem[n - 1]))
			n--;
		pem[n] = '\0';
		if (!valid_name((char *)pem, DKIM_SELECTOR_MAX)) {
			*why = "the .selector file does not hold a selector";
			goto err;
		}
		memcpy(k->selector, pem, (size_t)n + 1);
	} else if (n != -ENOENT) {
		rc = (int)n;
		*why = "cannot read the .selector file";
		goto err;
	}
	snprintf(path, sizeof(path), "%s/dkim/%s.key", data_dir, k->domain);
	n = read_small(path, pem, DKIM_KEY_FILE_MAX);
	if (n < 0) {
		rc = (int)n;
		goto err;
	}
	int dlen = wc_KeyPemToDer(pem, (int)n, der, DKIM_DER_MAX, NULL);
	if (dlen <= 0) {
		*why = "not a PEM private key";
		goto err;
	}
	RsaKey rsa;
	word32 idx = 0;
	if (wc_InitRsaKey(&rsa, NULL) == 0) {
		int ok = wc_RsaPrivateKeyDecode(der, &idx, &rsa, (word32)dlen);
		int bytes = ok == 0 ? wc_RsaEncryptSize(&rsa) : 0;
		wc_FreeRsaKey(&rsa);
		if (ok == 0) {
			k->alg = DKIM_RSA;
			k->bits = (unsigned)bytes * 8;
			if (k->bits < DKIM_RSA_BITS_MIN || k->bits > DKIM_RSA_BITS_MAX) {
				*why = "RSA key size out of range (1024..4096 bits)";
				goto err;
			}
			k->der = der;
			k->der_len = (size_t)dlen;
			der = NULL;
			free(pem);
			return 0;
		}
	}
	ed25519_key ed;
	idx = 0;
	if (wc_ed25519_init(&ed) == 0) {
		word32 plen = sizeof(k->ed_priv);
		int ok = wc_Ed25519PrivateKeyDecode(der, &idx, &ed, (word32)dlen);
		if (ok == 0)
			ok = wc_ed25519_export_private_only(&ed, k->ed_priv, &plen);
		if (ok == 0)
			ok = wc_ed25519_make_public(&ed, k->ed_pub, sizeof(k->ed_pub));
		wc_ed25519_free(&ed);
		if (ok == 0 && plen == sizeof(k->ed_priv)) {
			k->alg = DKIM_ED25519;
			k->bits = 256;
			free(pem);
			free(der);
			return 0;
		}
	}
	*why = "neither an RSA nor an Ed25519 private key";
	rc = -EINVAL;
err:
	if (pem)
		memset(pem, 0, DKIM_KEY_FILE_MAX);
	free(pem);
	if (der)
		memset(der, 0, DKIM_DER_MAX);
	free(der);
	memset(k->ed_priv, 0, sizeof(k->ed_priv));
	return rc;
}

static void key_clear(struct dkim_key *k)
{
	if (k->der) {
		memset(k->der, 0, k->der_len);
		free(k->der);
	}
	memset(k, 0, sizeof(*k));
}

static void problem(struct dkim *d, const char *path, const char *why, int rc)
{
	if (d->nproblems == DKIM_PROBLEMS_MAX)
		return;
	/* The tail of a long path is the part that names the key. */
	size_t n = strlen(path);
	const char *tail = n > 160 ? path + n - 160 : path;
	if (snprintf(d->problems[d->nproblems++], DKIM_PROBLEM_LEN, "%s: %s (%s)", tail, why,
		     strerror(-rc)) >= (int)DKIM_PROBLEM_LEN)
		d->problems[d->nproblems - 1][DKIM_PROBLEM_LEN - 2] = '~';
}

int dkim_new(const char *data_dir, const char *selector, struct dkim **dkim_r)
{
	char path[4096];
	*dkim_r = NULL;
	snprintf(path, sizeof(path), "%s/dkim", data_dir);
	DIR *dir = opendir(path);
	if (!dir)
		return 0;
	struct dkim *d = calloc(1, sizeof(*d));
	if (!d) {
		closedir(dir);
		return -ENOMEM;
	}
	atomic_init(&d->refs, 1);
	struct dirent *de;
	size_t cap = 0;
	while ((de = readdir(dir))) {
		size_t n = strlen(de->d_name);
		if (n <= 4 || strcmp(de->d_name + n - 4, ".key") || de->d_name[0] == '.')
			continue;
		char domain[DKIM_DOMAIN_MAX + 1];
		if (n - 4 > DKIM_DOMAIN_MAX)
			continue;
		memcpy(domain, de->d_name, n - 4);
		domain[n - 4] = '\0';
		snprintf(path, sizeof(path), "%s/dkim/%s", data_dir, de->d_name);
		if (!valid_name(domain, DKIM_DOMAIN_MAX)) {
			problem(d, path, "the file name is not <domain>.key", -EINVAL);
			continue;
		}
		for (char *c = domain; *c; c++)
			if (isupper((unsigned char)*c)) {
				problem(d, path, "the domain in the file name is not lower case",
					-EINVAL);
				domain[0] = '\0';
				break;
			}
		if (!domain[0])
			continue;
		if (d->nkeys == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			struct dkim_key *nk = realloc(d->keys, ncap * sizeof(*nk));
			if (!nk) {
				closedir(dir);
				dkim_free(&d);
				return -ENOMEM;
			}
			d->keys = nk;
			cap = ncap;
		}
		const char *why;
		int rc = key_load(data_dir, domain, selector, &d->keys[d->nkeys], &why);
		if (rc == -ENOMEM) {
			closedir(dir);
			dkim_free(&d);
			return rc;
		}
		if (rc)
			problem(d, path, why, rc);
		else
			d->nkeys++;
	}
	closedir(dir);
	*dkim_r = d;
	return 0;
}

void dkim_free(struct dkim **dkim_r)
{
	struct dkim *d = *dkim_r;
	*dkim_r = NULL;
	if (!d || atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < d->nkeys; i++)
		key_clear(&d->keys[i]);
	free(d->keys);
	free(d);
}

size_t dkim_nkeys(const struct dkim *dkim)
{
	return dkim ? dkim->nkeys : 0;
}

const char *dkim_problem(const struct dkim *dkim, size_t i)
{
	return dkim && i < dkim->nproblems ? dkim->problems[i] : NULL;
}

static const struct dkim_key *key_find(const struct dkim *d, const char *domain)
{
	if (!d || !domain)
		return NULL;
	for (size_t i = 0; i < d->nkeys; i++)
		if (!strcasecmp(d->keys[i].domain, domain))
			return &d->keys[i];
	return NULL;
}

/* ---- a growing string (the DKIM-Signature field) ------------------------ */

struct sbuf {
	char *p;
	size_t len, cap;
	size_t col; /* octets since the last CRLF */
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	for (size_t i = 0; i < n; i++)
		b->col = s[i] == '\n' ? 0 : b->col + 1;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_fold(struct sbuf *b)
{
	sb_str(b, "\r\n\t");
}

/* Appends a tag value, folding between atoms: base64 may fold anywhere
 * (RFC 6376 3.5, FWS inside base64string), a h= list before a ':'. */
static void sb_value(struct sbuf *b, const char *v, bool b64)
{
	size_t n = strlen(v);
	for (size_t i = 0; i < n;) {
		size_t a = 1;
		if (!b64)
			while (i + a < n && v[i + a] != ':')
				a++;
		if (b->col + a > DKIM_FOLD_COLUMNS)
			sb_fold(b);
		sb_add(b, v + i, a);
		i += a;
	}
}

/* " name=value;" on the current line if it fits, else on a new one. */
static void sb_tag(struct sbuf *b, const char *name, const char *v, bool b64, bool last)
{
	size_t whole = 1 + strlen(name) + 1 + strlen(v) + (last ? 0 : 1);
	if (b->col + whole > DKIM_FOLD_COLUMNS)
		sb_fold(b);
	else
		sb_str(b, " ");
	sb_str(b, name);
	sb_str(b, "=");
	sb_value(b, v, b64);
	if (!last)
		sb_str(b, ";");
}

/* ---- the signer ---------------------------------------------------------- */

struct dkim_signer {
	struct dkim *set;       /* referenced: a reload may retire it meanwhile */
	const struct dkim_key *key;
	uint8_t *hdr;           /* the header section, up to the empty line */
	size_t hlen, hcap;
	size_t line_start;      /* offset of the current header line */
	bool in_body;
	const char *error;
	struct dkim_body_canon bc;
	wc_Sha256 body_sha;
	size_t olen;
	uint8_t out[4096];      /* canonical body bytes waiting for the hash */
};

static void body_emit(void *arg, const uint8_t *p, size_t len)
{
	struct dkim_signer *s = arg;
	if (s->olen + len > sizeof(s->out)) {
		wc_Sha256Update(&s->body_sha, s->out, (word32)s->olen);
		s->olen = 0;
	}
	if (len >= sizeof(s->out)) {
		/* word32 lengths: a huge run goes in pieces. */
		for (size_t n; len; p += n, len -= n) {
			n = len < (1u << 30) ? len : (1u << 30);
			wc_Sha256Update(&s->body_sha, p, (word32)n);
		}
		return;
	}
	memcpy(s->out + s->olen, p, len);
	s->olen += len;
}

struct dkim_signer *dkim_signer_begin(struct dkim *dkim, const char *domain)
{
	const struct dkim_key *k = key_find(dkim, domain);
	if (!k)
		return NULL;
	struct dkim_signer *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	if (wc_InitSha256(&s->body_sha)) {
		free(s);
		return NULL;
	}
	s->key = k;
	s->set = dkim;
	atomic_fetch_add_explicit(&dkim->refs, 1, memory_order_relaxed);
	return s;
}

/* Whether the header section has a From field (a line "From" [WSP] ":"). */
static bool has_from(const uint8_t *h, size_t len)
{
	for (size_t i = 0; i < len;) {
		size_t j = i;
		if (len - i >= 4 && span_eq_nocase(span_make(h + i, 4), SPAN_LIT("from"))) {
			for (j = i + 4; j < len && (h[j] == ' ' || h[j] == '\t'); j++)
				;
			if (j < len && h[j] == ':')
				return true;
		}
		const uint8_t *nl = memchr(h + j, '\n', len - j);
		if (!nl)
			break;
		i = (size_t)(nl - h) + 1;
	}
	return false;
}

void dkim_signer_feed(struct dkim_signer *s, const uint8_t *p, size_t len)
{
	while (len && !s->in_body && !s->error) {
		const uint8_t *nl = memchr(p, '\n', len);
		size_t n = nl ? (size_t)(nl - p) + 1 : len;
		if (s->hlen + n > DKIM_HEADER_MAX) {
			s->error = "header section larger than DKIM_HEADER_MAX (64 KiB)";
			break;
		}
		if (s->hlen + n > s->hcap) {
			size_t cap = s->hcap ? s->hcap : 4096;
			while (cap < s->hlen + n)
				cap *= 2;
			if (cap > DKIM_HEADER_MAX)
				cap = DKIM_HEADER_MAX;
			uint8_t *nh = realloc(s->hdr, cap);
			if (!nh) {
				s->error = "out of memory";
				break;
			}
			s->hdr = nh;
			s->hcap = cap;
		}
		memcpy(s->hdr + s->hlen, p, n);
		s->hlen += n;
		p += n;
		len -= n;
		if (nl) {
			/* A line of just CRLF ends the header section. */
			if (s->hlen - s->line_start == 2 && s->hdr[s->line_start] == '\r') {
				s->hlen = s->line_start;
				s->in_body = true;
				if (!has_from(s->hdr, s->hlen))
					s->error = "no From field";
			}
			s->line_start = s->hlen;
		}
	}
	if (len && s->in_body && !s->error)
		dkim_body_canon_feed(&s->bc, p, len, body_emit, s);
}

const char *dkim_signer_error(const struct dkim_signer *s)
{
	return s->error;
}

void dkim_signer_abort(struct dkim_signer *s)
{
	if (!s)
		return;
	wc_Sha256Free(&s->body_sha);
	free(s->hdr);
	dkim_free(&s->set);
	free(s);
}

struct field {
	struct span all;  /* name ':' value, continuation lines, no final CRLF */
	struct span name; /* without trailing whitespace */
	int kind;         /* index in signed_fields, or -1 */
};

/* Splits the header section into fields. Returns the count; fields must
 * hold one per line. Lines without a colon are not fields (skipped). */
static size_t split_fields(const uint8_t *h, size_t len, struct field *f)
{
	size_t nf = 0, i = 0;
	while (i < len) {
		size_t start = i, end;
		/* This line and its continuation lines. */
		for (;;) {
			const uint8_t *nl = memchr(h + i, '\n', len - i);
			end = nl ? (size_t)(nl - h) + 1 : len;
			i = end;
			if (i >= len || (h[i] != ' ' && h[i] != '\t'))
				break;
		}
		size_t flen = end - start;
		if (flen && h[start + flen - 1] == '\n')
			flen--;
		if (flen && h[start + flen - 1] == '\r')
			flen--;
		if (h[start] == ' ' || h[start] == '\t')
			continue; /* a continuation line with no field above it */
		const uint8_t *colon = memchr(h + start, ':', flen);
		if (!colon)
			continue;
		size_t nlen = (size_t)(colon - (h + start));
		while (nlen && (h[start + nlen - 1] == ' ' || h[start + nlen - 1] == '\t'))
			nlen--;
		f[nf].all = span_make(h + start, flen);
		f[nf].name = span_make(h + start, nlen);
		f[nf].kind = -1;
		nf++;
	}
	return nf;
}

/* The signature over hash (the SHA-256 of the data to sign) into sig.
 * Returns its length or a negative value. */
static int sign_hash(const struct dkim_key *k, const uint8_t hash[WC_SHA256_DIGEST_SIZE],
		     uint8_t *sig, size_t cap)
{
	int rc = -1;
	if (k->alg == DKIM_ED25519) {
		/* RFC 8463 3: Ed25519 (pure) over the SHA-256 hash. */
		ed25519_key ed;
		word32 slen = (word32)cap;
		if (wc_ed25519_init(&ed))
			return -1;
		if (wc_ed25519_import_private_key(k->ed_priv, sizeof(k->ed_priv), k->ed_pub,
						  sizeof(k->ed_pub), &ed) == 0 &&
		    wc_ed25519_sign_msg(hash, WC_SHA256_DIGEST_SIZE, sig, &slen, &ed) == 0)
			rc = (int)slen;
		wc_ed25519_free(&ed);
		return rc;
	}
	/* rsa-sha256: RSASSA-PKCS1-v1_5 over the DigestInfo of the hash. */
	uint8_t di[128];
	word32 dlen = wc_EncodeSignature(di, hash, WC_SHA256_DIGEST_SIZE,
					 wc_GetCTC_HashOID(WC_SHA256));
	RsaKey rsa;
	WC_RNG rng;
	word32 idx = 0;
	if (dlen == 0 || wc_InitRng(&rng))
		return -1;
	if (wc_InitRsaKey(&rsa, NULL) == 0) {
		if (wc_RsaPrivateKeyDecode(k->der, &idx, &rsa, (word32)k->der_len) == 0 &&
		    wc_RsaSetRNG(&rsa, &rng) == 0)
			rc = wc_RsaSSL_Sign(di, dlen, sig, (word32)cap, &rsa, &rng);
		wc_FreeRsaKey(&rsa);
	}
	wc_FreeRng(&rng);
	return rc;
}

static char *b64(const uint8_t *p, size_t n)
{
	word32 olen = (word32)((n + 2) / 3 * 4 + 1);
	char *s = malloc(olen);
	if (s && Base64_Encode_NoNl(p, (word32)n, (uint8_t *)s, &olen) == 0) {
		s[olen] = '\0';
		return s;
	}
	free(s);
	return NULL;
}

char *dkim_signer_finish(struct dkim_signer *s)
{
	struct field *f = NULL;
	uint8_t *canon = NULL;
	char *hlist = NULL, *bh = NULL, *b = NULL;
	struct sbuf sb = { 0 };
	size_t nf = 0, hcap = 0, hl = 0;
	uint8_t hash[WC_SHA256_DIGEST_SIZE], sig[DKIM_SIG_MAX];
	wc_Sha256 sha;
	bool sha_init = false;

	if (s->error)
		goto err;
	dkim_body_canon_finish(&s->bc, body_emit, s);
	if (s->olen)
		wc_Sha256Update(&s->body_sha, s->out, (word32)s->olen);
	if (wc_Sha256Final(&s->body_sha, hash) || !(bh = b64(hash, sizeof(hash))))
		goto err;

	/* One field per line at most. */
	size_t lines = 1;
	for (size_t i = 0; i < s->hlen; i++)
		lines += s->hdr[i] == '\n';
	if (!(f = calloc(lines, sizeof(*f))))
		goto err;
	nf = split_fields(s->hdr, s->hlen, f);

	/* h=: every instance of the signed fields, top-down, then From again. */
	bool from = false;
	for (size_t i = 0; i < nf; i++)
		for (size_t j = 0; j < NSIGNED; j++)
			if (span_eq_nocase(f[i].name, span_cstr(signed_fields[j]))) {
				size_t n = strlen(signed_fields[j]);
				if (hl + n + 2 > hcap) {
					hcap = (hl + n + 2) * 2;
					char *nh = realloc(hlist, hcap);
					if (!nh)
						goto err;
					hlist = nh;
				}
				if (hl)
					hlist[hl++] = ':';
				memcpy(hlist + hl, signed_fields[j], n);
				hl += n;
				hlist[hl] = '\0';
				from |= j == 0;
				f[i].kind = (int)j;
				break;
			}
	if (!from) {
		s->error = "no From field";
		goto err;
	}
	char *nh = realloc(hlist, hl + sizeof(":From"));
	if (!nh)
		goto err;
	hlist = nh;
	memcpy(hlist + hl, ":From", sizeof(":From"));

	char t[24];
	snprintf(t, sizeof(t), "%lld", (long long)time(NULL));
	sb_str(&sb, "DKIM-Signature: v=1;");
	sb_tag(&sb, "a", s->key->alg == DKIM_RSA ? "rsa-sha256" : "ed25519-sha256", false, false);
	sb_tag(&sb, "c", "relaxed/relaxed", false, false);
	sb_tag(&sb, "d", s->key->domain, false, false);
	sb_tag(&sb, "s", s->key->selector, false, false);
	sb_tag(&sb, "t", t, false, false);
	sb_tag(&sb, "h", hlist, false, false);
	sb_tag(&sb, "bh", bh, true, false);
	sb_tag(&sb, "b", "", true, true);
	/* canon holds any one canonical field: at most its length + 3. */
	if (sb.oom || !(canon = malloc((s->hlen > sb.len ? s->hlen : sb.len) + 3)))
		goto err;

	/* The data to sign (RFC 6376 3.7): each h= field, the last unused
	 * instance of its name (5.4.2: bottom-up; none left adds nothing),
	 * then this field with an empty b= and no final CRLF. */
	if (wc_InitSha256(&sha))
		goto err;
	sha_init = true;
	/* Instances of a name are taken strictly bottom-up, so one cursor per
	 * name keeps this linear even for thousands of fields. */
	size_t cursor[NSIGNED];
	for (size_t j = 0; j < NSIGNED; j++)
		cursor[j] = nf;
	for (const char *name = hlist; *name;) {
		size_t n = strcspn(name, ":"), j = 0;
		while (j < NSIGNED && (strlen(signed_fields[j]) != n ||
				       memcmp(signed_fields[j], name, n)))
			j++;
		size_t i = j < NSIGNED ? cursor[j] : 0;
		while (i > 0 && f[i - 1].kind != (int)j)
			i--;
		if (i > 0) {
			i--;
			size_t c = dkim_canon_header(f[i].all.p, f[i].all.len, true, canon);
			wc_Sha256Update(&sha, canon, (word32)c);
		}
		if (j < NSIGNED)
			cursor[j] = i;
		name += n + (name[n] == ':');
	}
	size_t c = dkim_canon_header((const uint8_t *)sb.p, sb.len, false, canon);
	wc_Sha256Update(&sha, canon, (word32)c);
	if (wc_Sha256Final(&sha, hash))
		goto err;
	int slen = sign_hash(s->key, hash, sig, sizeof(sig));
	if (slen <= 0 || !(b = b64(sig, (size_t)slen))) {
		s->error = "the signature failed";
		goto err;
	}
	sb_value(&sb, b, true);
	sb_str(&sb, "\r\n");
	if (sb.oom)
		goto err;
	free(b);
	free(bh);
	free(hlist);
	free(canon);
	free(f);
	wc_Sha256Free(&sha);
	dkim_signer_abort(s);
	return sb.p;
err:
	if (sha_init)
		wc_Sha256Free(&sha);
	free(b);
	free(bh);
	free(hlist);
	free(canon);
	free(f);
	free(sb.p);
	dkim_signer_abort(s);
	return NULL;
}

char *dkim_sign(struct dkim *dkim, const char *domain, const uint8_t *msg, size_t len)
{
	struct dkim_signer *s = dkim_signer_begin(dkim, domain);
	if (!s)
		return NULL;
	dkim_signer_feed(s, msg, len);
	return dkim_signer_finish(s);
}

/* ---- keygen and the DNS record ------------------------------------------ */

/* The TXT record's p= value: RSA as SubjectPublicKeyInfo (what every
 * verifier reads; RFC 6376 3.6.1), Ed25519 as the raw 32-byte key (RFC 8463
 * 4). Returns the base64 (caller frees) or NULL. */
static char *public_b64(const struct dkim_key *k)
{
	if (k->alg == DKIM_ED25519)
		return b64(k->ed_pub, sizeof(k->ed_pub));
	RsaKey rsa;
	word32 idx = 0;
	uint8_t spki[DKIM_RSA_BITS_MAX / 8 + 64];
	char *r = NULL;
	if (wc_InitRsaKey(&rsa, NULL))
		return NULL;
	if (wc_RsaPrivateKeyDecode(k->der, &idx, &rsa, (word32)k->der_len) == 0) {
		int n = wc_RsaKeyToPublicDer(&rsa, spki, sizeof(spki));
		if (n > 0)
			r = b64(spki, (size_t)n);
	}
	wc_FreeRsaKey(&rsa);
	return r;
}

int dkim_dns_record(const char *data_dir, const char *domain, const char *selector,
		    FILE *out, FILE *err)
{
	struct dkim_key k;
	const char *why;
	char path[4096];
	int rc = key_load(data_dir, domain, selector, &k, &why);
	snprintf(path, sizeof(path), "%s/dkim/%s.key", data_dir, k.domain);
	if (rc == -ENOENT)
		return rc;
	if (rc) {
		fprintf(err, "ringmail: %s: %s (%s)\n", path, why, strerror(-rc));
		return rc;
	}
	char *p = public_b64(&k);
	if (!p) {
		fprintf(err, "ringmail: %s: cannot derive the public key\n", path);
		key_clear(&k);
		return -EINVAL;
	}
	char txt[DKIM_RSA_BITS_MAX / 8 * 2 + 64];
	snprintf(txt, sizeof(txt), "v=DKIM1; k=%s; p=%s",
		 k.alg == DKIM_RSA ? "rsa" : "ed25519", p);
	fprintf(out, "; DKIM for %s: %s (%s, %u bits), selector %s\n", k.domain, path,
		k.alg == DKIM_RSA ? "rsa-sha256" : "ed25519-sha256", k.bits, k.selector);
	fprintf(out, "%s._domainkey.%s. IN TXT", k.selector, k.domain);
	/* RFC 1035 3.3: a character-string holds at most 255 bytes; a TXT
	 * record's strings are concatenated by the verifier (RFC 6376 3.6.2.2). */
	for (size_t i = 0, n = strlen(txt); i < n; i += DKIM_TXT_STRING_MAX) {
		size_t m = n - i < DKIM_TXT_STRING_MAX ? n - i : DKIM_TXT_STRING_MAX;
		fprintf(out, " \"%.*s\"", (int)m, txt + i);
	}
	fprintf(out, "\n");
	free(p);
	key_clear(&k);
	return 0;
}

static int fsync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) ? -errno : 0;
	close(fd);
	return rc;
}

/* Writes path atomically (path.tmp, fsync, rename) with the given mode. */
static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	const uint8_t *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = -errno;
			close(fd);
			unlink(tmp);
			return e;
		}
		p += n;
		len -= (size_t)n;
	}
	if (fsync(fd) || close(fd) || rename(tmp, path)) {
		int e = -errno;
		unlink(tmp);
		return e;
	}
	return 0;
}

/* The new key as PEM into pem (cap bytes). Returns its length or a
 * negative value. */
static int make_key_pem(const char *type, uint8_t *pem, size_t cap)
{
	uint8_t der[DKIM_DER_MAX];
	WC_RNG rng;
	int n = -1;
	if (wc_InitRng(&rng))
		return -1;
	if (!strcmp(type, "rsa")) {
		RsaKey rsa;
		if (wc_InitRsaKey(&rsa, NULL) == 0) {
			if (wc_MakeRsaKey(&rsa, DKIM_RSA_BITS, WC_RSA_EXPONENT, &rng) == 0)
				n = wc_RsaKeyToDer(&rsa, der, sizeof(der));
			wc_FreeRsaKey(&rsa);
		}
		if (n > 0)
			n = wc_DerToPem(der, (word32)n, pem, (word32)cap, PRIVATEKEY_TYPE);
	} else {
		ed25519_key ed;
		if (wc_ed25519_init(&ed) == 0) {
			if (wc_ed25519_make_key(&rng, ED25519_KEY_SIZE, &ed) == 0)
				n = wc_Ed25519PrivateKeyToDer(&ed, der, sizeof(der));
			wc_ed25519_free(&ed);
		}
		if (n > 0)
			n = wc_DerToPem(der, (word32)n, pem, (word32)cap, PKCS8_PRIVATEKEY_TYPE);
	}
	memset(der, 0, sizeof(der));
	wc_FreeRng(&rng);
	return n;
}

int dkim_keygen(const char *data_dir, const char *domain_arg, const char *type,
		const char *selector, bool force, FILE *out, FILE *err)
{
	char domain[DKIM_DOMAIN_MAX + 1], dir[4096], key[4200], sel[4200];
	size_t n = strlen(domain_arg);
	while (n && domain_arg[n - 1] == '.')
		n--;
	if (n == 0 || n > DKIM_DOMAIN_MAX) {
		fprintf(err, "ringmail: '%s' is not a valid domain name\n", domain_arg);
		return -EINVAL;
	}
	lower_copy(domain, domain_arg, n + 1);
	if (!valid_name(domain, DKIM_DOMAIN_MAX)) {
		fprintf(err, "ringmail: '%s' is not a valid domain name\n", domain_arg);
		return -EINVAL;
	}
	if (!valid_name(selector, DKIM_SELECTOR_MAX)) {
		fprintf(err, "ringmail: '%s' is not a valid selector (letters, digits, '-', "
			"'_' and dots; at most %u bytes)\n", selector, DKIM_SELECTOR_MAX);
		return -EINVAL;
	}
	if (strcmp(type, "rsa") && strcmp(type, "ed25519")) {
		fprintf(err, "ringmail: key type '%s': rsa or ed25519\n", type);
		return -EINVAL;
	}
	if (snprintf(dir, sizeof(dir), "%s/dkim", data_dir) >= (int)sizeof(dir) ||
	    snprintf(key, sizeof(key), "%s/%s.key", dir, domain) >= (int)sizeof(key) ||
	    snprintf(sel, sizeof(sel), "%s/%s.selector", dir, domain) >= (int)sizeof(sel)) {
		fprintf(err, "ringmail: the data directory path is too long\n");
		return -ENAMETOOLONG;
	}
	if ((mkdir(data_dir, 0700) && errno != EEXIST) || (mkdir(dir, 0700) && errno != EEXIST)) {
		int e = -errno;
		fprintf(err, "ringmail: cannot create %s: %s\n", dir, strerror(errno));
		return e;
	}
	if (!force && access(key, F_OK) == 0) {
		fprintf(err, "ringmail: %s exists; keeping it. --force replaces it (the TXT record "
			"published for it then stops verifying)\n", key);
		return -EEXIST;
	}
	uint8_t pem[DKIM_KEY_FILE_MAX];
	int plen = make_key_pem(type, pem, sizeof(pem));
	if (plen <= 0) {
		fprintf(err, "ringmail: generating the %s key failed (wolfCrypt %d)\n", type, plen);
		return -EIO;
	}
	char line[DKIM_SELECTOR_MAX + 2];
	int llen = snprintf(line, sizeof(line), "%s\n", selector);
	int rc = write_file(sel, line, (size_t)llen, 0600);
	if (!rc)
		rc = write_file(key, pem, (size_t)plen, 0600);
	memset(pem, 0, sizeof(pem));
	if (!rc)
		rc = fsync_path(dir);
	if (rc) {
		fprintf(err, "ringmail: cannot write %s: %s\n", key, strerror(-rc));
		return rc;
	}
	rc = dkim_dns_record(data_dir, domain, selector, out, err);
	if (!rc)
		fprintf(out, "; Publish the TXT record above; ringmail signs mail from %s with this "
			"key from its next start or SIGHUP.\n", domain);
	return rc;
}
