/* tls.c - wolfSSL as a filter over memory (see tls.h). */
#include <wolfssl/options.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/memory.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>
#if __has_include(<wolfssl/ringmail_rand.h>)
/* The bundled wolfSSL's generator (tls/wolfssl/ringmail_rand.c). */
#include <wolfssl/ringmail_rand.h>
#define TLS_HAVE_RINGMAIL_RAND 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tls/tls.h"
#include "tls/tls_sha256.h"

#if !defined(HAVE_SNI) || !defined(HAVE_ALPN) || !defined(HAVE_SESSION_TICKET) || \
	!defined(WOLFSSL_TLS13) || !defined(WOLFSSL_CERT_GEN) || !defined(HAVE_AESGCM)
#error "wolfSSL lacks SNI, ALPN, session tickets, TLS 1.3, certgen or AES-GCM: build it with scripts/build-wolfssl.sh"
#endif

/* AEAD only: TLS 1.3 suites, then ECDHE with AES-GCM or ChaCha20-Poly1305
 * for TLS 1.2 (ECDSA and RSA certificates). No CBC, no static RSA, no DHE. */
const char tls_cipher_list[] =
	"TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
	"TLS13-CHACHA20-POLY1305-SHA256:"
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
	"ECDHE-ECDSA-CHACHA20-POLY1305:"
	"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
	"ECDHE-RSA-CHACHA20-POLY1305";

/* Validity of the generated self-signed certificate. */
#define TLS_SELFSIGNED_DAYS 3650
/* Biggest PEM file we read (a long chain is a few kB). */
#define TLS_PEM_MAX (1u << 20)

/* ---- ticket keys -------------------------------------------------------- */

/* AES-GCM tag length; the tag fills the first half of wolfSSL's mac[32]. */
#define TICKET_TAG_SZ 16

/* One session ticket key: AES-256-GCM, named by 16 random bytes that travel
 * in the clear in every ticket it sealed. */
struct ticket_key {
	uint8_t name[WOLFSSL_TICKET_NAME_SZ];
	uint8_t key[32];
	uint64_t created_s;
	bool valid;
};

struct sni_entry {
	char *name;        /* lower case; "*.example.org"; "" for the default */
	WOLFSSL_CTX *ctx;
};

struct tls_server {
	atomic_uint refs;
	struct sni_entry *sni;
	size_t nsni;
	WOLFSSL_CTX *default_ctx;
	uint32_t rotate_s;
	/* The key ring: tickets are sealed with cur and opened with cur or
	 * prev. Guarded by ticket_lock; the crypto runs outside it on a copy. */
	pthread_mutex_t ticket_lock;
	struct ticket_key ticket_cur, ticket_prev;
	char fingerprint[32 * 3];
};

struct tls_conn {
	struct tls_server *srv;
	WOLFSSL *ssl;           /* NULL until the ClientHello is complete */
	const char *alpn;
	tls_out_fn out;
	void *out_arg;
	/* Ciphertext of the current tls_conn_read() call. */
	const uint8_t *in_p;
	size_t in_len, in_off;
	/* The first record while it arrives in pieces (before ssl exists),
	 * then drained by the recv callback; freed once empty. */
	uint8_t *hello;
	size_t hello_len, hello_off;
	char *sni;
	bool sni_bad;           /* an SNI name was sent but not kept (odd bytes) */
	bool sent;              /* wolfSSL has written ciphertext (or an alert) */
	int err;                /* wolfSSL error code after TLS_ERROR */
	bool handshake_done, failed, peer_closed, close_sent;
};

/* ---- small helpers ---------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* wolfSSL's and wolfCrypt's error codes are negative, and this build has no
 * OpenSSL layer to map positive ones: the code goes in as is (the function
 * casts it back to int), never negated, or every reason is "unknown error
 * number". */
static const char *wolf_err_str(int e)
{
	return wolfSSL_ERR_reason_error_string((unsigned long)(long)e);
}

static uint64_t now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec;
}

static int fill_random(void *p, size_t len)
{
	uint8_t *b = p;

	while (len > 0) {
		ssize_t n = getrandom(b, len, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Random bytes for a ticket's AES-GCM nonce, once per handshake. With the
 * bundled wolfSSL: its per-thread ChaCha20 generator, seeded from
 * getrandom(2) (docs/tls.md, "Randomness"), the source of the
 * handshake's own keys and nonces, without a system call per ticket.
 * Otherwise getrandom(2). Returns 0 or a negative value. */
static int ticket_random(uint8_t *p, size_t len)
{
#ifdef TLS_HAVE_RINGMAIL_RAND
	return ringmail_rand_block(p, (unsigned int)len) == 0 ? 0 : -EIO;
#else
	return fill_random(p, len);
#endif
}

/* Reads a whole file (at most TLS_PEM_MAX bytes) into a NUL-terminated
 * malloc'd buffer. Returns 0 or a negative errno. */
static int read_file(const char *path, uint8_t **buf_r, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint8_t *buf = NULL;
	size_t len = 0, cap = 4096;
	int ret;

	if (fd < 0)
		return -errno;
	buf = malloc(cap + 1);
	if (buf == NULL) {
		ret = -ENOMEM;
		goto err;
	}
	for (;;) {
		ssize_t n;

		if (len == cap) {
			uint8_t *nb;

			if (cap >= TLS_PEM_MAX) {
				ret = -EFBIG;
				goto err;
			}
			cap *= 2;
			nb = realloc(buf, cap + 1);
			if (nb == NULL) {
				ret = -ENOMEM;
				goto err;
			}
			buf = nb;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			goto err;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	buf[len] = 0;
	*buf_r = buf;
	*len_r = len;
	return 0;
err:
	free(buf);
	close(fd);
	return ret;
}

/* Writes len bytes to path through a temporary file, fsync and rename, so
 * a crash leaves either nothing or the whole file. */
static int write_file_atomic(const char *path, const void *p, size_t len, mode_t mode)
{
	char tmp[PATH_MAX];
	const uint8_t *b = p;
	int fd, ret;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	while (len > 0) {
		ssize_t n = write(fd, b, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			goto err;
		}
		b += n;
		len -= (size_t)n;
	}
	if (fchmod(fd, mode) != 0 || fsync(fd) != 0) {
		ret = -errno;
		goto err;
	}
	if (close(fd) != 0) {
		fd = -1;
		ret = -errno;
		goto err;
	}
	fd = -1;
	if (rename(tmp, path) != 0) {
		ret = -errno;
		goto err;
	}
	return 0;
err:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return ret;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) != 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* ---- global ----------------------------------------------------------------- */

/* wolfSSL's allocations go to malloc, which is jemalloc in our binaries. */
static void *tls_malloc(size_t size)
{
	return malloc(size);
}

static void tls_free(void *p)
{
	free(p);
}

static void *tls_realloc(void *p, size_t size)
{
	return realloc(p, size);
}

/* Whether the TLS 1.3 key schedule runs on the SHA extensions
 * (tls_sha256.h). Set once by tls_global_init before any thread starts. */
static bool tls_sha_on;

int tls_global_init(void)
{
	if (wolfSSL_SetAllocators(tls_malloc, tls_free, tls_realloc) != 0)
		return -EIO;
	if (wolfSSL_Init() != WOLFSSL_SUCCESS)
		return -EIO;
	tls_sha_on = tls_sha256_setup();
	return 0;
}

bool tls_sha_ni_active(void)
{
	return tls_sha_on;
}

void tls_global_cleanup(void)
{
	wolfSSL_Cleanup();
}

const char *tls_status_str(enum tls_status s)
{
	switch (s) {
	case TLS_OK:
		return "ok";
	case TLS_WANT_READ:
		return "want-read";
	case TLS_CLOSED:
		return "closed";
	case TLS_ERROR:
		return "error";
	}
	return "?";
}

bool tls_is_client_hello_start(struct span in)
{
	return in.len > 0 && in.p[0] == 0x16;
}

/* ---- ticket key ring ---------------------------------------------------------- */

static int ticket_key_make(struct ticket_key *k, uint64_t now)
{
	int ret = fill_random(k->name, sizeof(k->name));

	if (ret == 0)
		ret = fill_random(k->key, sizeof(k->key));
	k->created_s = now;
	k->valid = ret == 0;
	return ret;
}

static void ticket_rotate_locked(struct tls_server *srv, uint64_t now)
{
	srv->ticket_prev = srv->ticket_cur;
	if (ticket_key_make(&srv->ticket_cur, now) != 0)
		srv->ticket_cur.valid = false;
}

/* Rotates as the clock says: once per period, and twice when the server was
 * idle for two periods (a ticket never outlives two periods). */
static void ticket_age_locked(struct tls_server *srv, uint64_t now)
{
	uint64_t age;

	if (!srv->ticket_cur.valid) {
		ticket_rotate_locked(srv, now);
		return;
	}
	age = now - srv->ticket_cur.created_s;
	if (age >= 2ull * srv->rotate_s) {
		ticket_rotate_locked(srv, now);
		ticket_rotate_locked(srv, now);
	} else if (age >= srv->rotate_s) {
		ticket_rotate_locked(srv, now);
	}
}

void tls_server_rotate_ticket_keys(struct tls_server *srv)
{
	pthread_mutex_lock(&srv->ticket_lock);
	ticket_rotate_locked(srv, now_s());
	pthread_mutex_unlock(&srv->ticket_lock);
}

/* Copies the key to seal with (enc) or the key named `name` (decrypt) into
 * *k. Returns 0, or -ENOENT when there is none. */
static int ticket_key_get(struct tls_server *srv, bool enc, const uint8_t *name,
			  struct ticket_key *k, bool *old_r)
{
	int ret = -ENOENT;

	*old_r = false;
	pthread_mutex_lock(&srv->ticket_lock);
	ticket_age_locked(srv, now_s());
	if (enc) {
		if (srv->ticket_cur.valid) {
			*k = srv->ticket_cur;
			ret = 0;
		}
	} else if (srv->ticket_cur.valid &&
		   memcmp(name, srv->ticket_cur.name, sizeof(k->name)) == 0) {
		*k = srv->ticket_cur;
		ret = 0;
	} else if (srv->ticket_prev.valid &&
		   memcmp(name, srv->ticket_prev.name, sizeof(k->name)) == 0) {
		*k = srv->ticket_prev;
		*old_r = true;
		ret = 0;
	}
	pthread_mutex_unlock(&srv->ticket_lock);
	return ret;
}

/* Appends the connection's binding to a ticket's AAD: the SNI name as the
 * client sent it, lower case (kind 0: none, 1: a host name, 2: a name we do
 * not match), then the ALPN id of the listener's protocol. A ticket opens
 * only under the same name and protocol (RFC 6066 section 3: no resumption
 * under another SNI name; and no SMTP session resumed on the IMAP port).
 * Returns the bytes written (at most 2 + 255 + 1 + 255). */
static size_t ticket_binding(const struct tls_conn *c, uint8_t *p)
{
	size_t n = 0, len;

	if (c->sni != NULL) {
		len = strlen(c->sni);
		if (len > 255)
			len = 255;
		p[n++] = 1;
		p[n++] = (uint8_t)len;
		for (size_t i = 0; i < len; i++) {
			char ch = c->sni[i];

			p[n++] = (uint8_t)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
		}
	} else {
		p[n++] = c->sni_bad ? 2 : 0;
		p[n++] = 0;
	}
	len = c->alpn != NULL ? strlen(c->alpn) : 0;
	if (len > 255)
		len = 255;
	p[n++] = (uint8_t)len;
	memcpy(p + n, c->alpn != NULL ? c->alpn : "", len);
	return n + len;
}

/* wolfSSL's ticket callback. The ticket is sealed in place with
 * AES-256-GCM; the AAD binds key name, IV, length, and the SNI name and
 * ALPN id of the connection (ticket_binding); the 16-byte tag goes in the
 * first half of mac. A ticket under an unknown or rotated-out key, or
 * presented under another SNI name or protocol, is rejected, which means a
 * full handshake, never an error. */
static int ticket_cb(WOLFSSL *ssl, unsigned char key_name[WOLFSSL_TICKET_NAME_SZ],
		     unsigned char iv[WOLFSSL_TICKET_IV_SZ],
		     unsigned char mac[WOLFSSL_TICKET_MAC_SZ], int enc,
		     unsigned char *ticket, int in_len, int *out_len, void *arg)
{
	struct tls_server *srv = arg;
	const struct tls_conn *c = wolfSSL_GetIOReadCtx(ssl);
	struct ticket_key k;
	uint8_t aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ + 2 + 2 + 255 + 1 + 255];
	size_t aad_len = WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ + 2;
	Aes aes;
	bool old;
	int ret, r;

	if (in_len < 0 || c == NULL)
		return WOLFSSL_TICKET_RET_REJECT;
	if (ticket_key_get(srv, enc != 0, key_name, &k, &old) != 0)
		return WOLFSSL_TICKET_RET_REJECT;
	if (enc) {
		memcpy(key_name, k.name, WOLFSSL_TICKET_NAME_SZ);
		memset(iv, 0, WOLFSSL_TICKET_IV_SZ);
		if (ticket_random(iv, GCM_NONCE_MID_SZ) != 0) {
			ret = WOLFSSL_TICKET_RET_REJECT;
			goto out;
		}
	}
	memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
	memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
	aad[aad_len - 2] = (uint8_t)(in_len >> 8);
	aad[aad_len - 1] = (uint8_t)in_len;
	aad_len += ticket_binding(c, aad + aad_len);

	if (wc_AesInit(&aes, NULL, INVALID_DEVID) != 0) {
		ret = WOLFSSL_TICKET_RET_REJECT;
		goto out;
	}
	r = wc_AesGcmSetKey(&aes, k.key, sizeof(k.key));
	if (r == 0 && enc) {
		r = wc_AesGcmEncrypt(&aes, ticket, ticket, (word32)in_len, iv,
				     GCM_NONCE_MID_SZ, mac, TICKET_TAG_SZ,
				     aad, (word32)aad_len);
		memset(mac + TICKET_TAG_SZ, 0,
		       WOLFSSL_TICKET_MAC_SZ - TICKET_TAG_SZ);
	} else if (r == 0) {
		r = wc_AesGcmDecrypt(&aes, ticket, ticket, (word32)in_len, iv,
				     GCM_NONCE_MID_SZ, mac, TICKET_TAG_SZ,
				     aad, (word32)aad_len);
	}
	wc_AesFree(&aes);
	if (r != 0) {
		ret = WOLFSSL_TICKET_RET_REJECT;
		goto out;
	}
	*out_len = in_len;
	/* Opened with the previous key: ask for a fresh ticket (TLS 1.2). */
	ret = old ? WOLFSSL_TICKET_RET_CREATE : WOLFSSL_TICKET_RET_OK;
out:
	explicit_bzero(&k, sizeof(k));
	return ret;
}

/* ---- certificates ------------------------------------------------------------ */

/* Appends one DER dNSName ([2] IMPLICIT IA5String) to buf. */
static int san_add(uint8_t *buf, size_t cap, size_t *len, const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 127 || *len + 2 + n > cap)
		return -EINVAL;
	buf[(*len)++] = 0x82;
	buf[(*len)++] = (uint8_t)n;
	memcpy(buf + *len, name, n);
	*len += n;
	return 0;
}

/* Generates a self-signed ECDSA P-256 certificate for hostname (CN and SAN,
 * plus SAN localhost) as PEM. Returns 0 or a negative errno with err set. */
static int selfsigned_generate(const char *hostname, char **cert_pem_r, size_t *cert_len_r,
			       char **key_pem_r, size_t *key_len_r, char *err, size_t errlen)
{
	enum { DER_MAX = 4096, PEM_MAX = 8192 };
	WC_RNG rng;
	ecc_key key;
	Cert *cert = NULL;
	uint8_t *der = NULL;
	char *cert_pem = NULL, *key_pem = NULL;
	bool rng_ok = false, key_ok = false;
	int r, der_len, pem_len, ret = -EIO;

	cert = calloc(1, sizeof(*cert));
	der = malloc(DER_MAX);
	cert_pem = malloc(PEM_MAX);
	key_pem = malloc(PEM_MAX);
	if (cert == NULL || der == NULL || cert_pem == NULL || key_pem == NULL) {
		ret = -ENOMEM;
		set_err(err, errlen, "out of memory generating a certificate");
		goto out;
	}
	if ((r = wc_InitRng(&rng)) != 0) {
		set_err(err, errlen, "cannot initialise the RNG: %s", wc_GetErrorString(r));
		goto out;
	}
	rng_ok = true;
	if ((r = wc_ecc_init(&key)) != 0) {
		set_err(err, errlen, "wc_ecc_init: %s", wc_GetErrorString(r));
		goto out;
	}
	key_ok = true;
	if ((r = wc_ecc_make_key_ex(&rng, 32, &key, ECC_SECP256R1)) != 0) {
		set_err(err, errlen, "cannot generate a P-256 key: %s", wc_GetErrorString(r));
		goto out;
	}
	if ((r = wc_InitCert(cert)) != 0) {
		set_err(err, errlen, "wc_InitCert: %s", wc_GetErrorString(r));
		goto out;
	}
	snprintf(cert->subject.commonName, sizeof(cert->subject.commonName), "%s", hostname);
	snprintf(cert->subject.org, sizeof(cert->subject.org), "ringmail self-signed");
	cert->daysValid = TLS_SELFSIGNED_DAYS;
	cert->sigType = CTC_SHA256wECDSA;
	/* CA:TRUE as `openssl req -x509` does, so clients can pin it as a
	 * trust anchor. */
	cert->isCA = 1;
#ifdef WOLFSSL_ALT_NAMES
	{
		uint8_t names[300];
		size_t n = 2;

		if (san_add(names, sizeof(names), &n, hostname) != 0 ||
		    (strcasecmp(hostname, "localhost") != 0 &&
		     san_add(names, sizeof(names), &n, "localhost") != 0)) {
			ret = -EINVAL;
			set_err(err, errlen, "host name too long for a certificate: %s", hostname);
			goto out;
		}
		names[0] = 0x30; /* SEQUENCE OF GeneralName */
		names[1] = (uint8_t)(n - 2);
		memcpy(cert->altNames, names, n);
		cert->altNamesSz = (int)n;
	}
#else
	(void)san_add;
#endif
	r = wc_MakeCert(cert, der, DER_MAX, NULL, &key, &rng);
	if (r < 0) {
		set_err(err, errlen, "wc_MakeCert: %s", wc_GetErrorString(r));
		goto out;
	}
	der_len = wc_SignCert(cert->bodySz, cert->sigType, der, DER_MAX, NULL, &key, &rng);
	if (der_len < 0) {
		set_err(err, errlen, "wc_SignCert: %s", wc_GetErrorString(der_len));
		goto out;
	}
	pem_len = wc_DerToPem(der, (word32)der_len, (byte *)cert_pem, PEM_MAX, CERT_TYPE);
	if (pem_len < 0) {
		set_err(err, errlen, "wc_DerToPem: %s", wc_GetErrorString(pem_len));
		goto out;
	}
	*cert_len_r = (size_t)pem_len;
	der_len = wc_EccKeyToDer(&key, der, DER_MAX);
	if (der_len < 0) {
		set_err(err, errlen, "wc_EccKeyToDer: %s", wc_GetErrorString(der_len));
		goto out;
	}
	pem_len = wc_DerToPem(der, (word32)der_len, (byte *)key_pem, PEM_MAX, ECC_PRIVATEKEY_TYPE);
	if (pem_len < 0) {
		set_err(err, errlen, "wc_DerToPem: %s", wc_GetErrorString(pem_len));
		goto out;
	}
	*key_len_r = (size_t)pem_len;
	*cert_pem_r = cert_pem;
	*key_pem_r = key_pem;
	cert_pem = key_pem = NULL;
	ret = 0;
out:
	if (der != NULL)
		explicit_bzero(der, DER_MAX);
	if (key_pem != NULL)
		explicit_bzero(key_pem, PEM_MAX);
	free(der);
	free(cert);
	free(cert_pem);
	free(key_pem);
	if (key_ok)
		wc_ecc_free(&key);
	if (rng_ok)
		wc_FreeRng(&rng);
	return ret;
}

/* Makes sure <data_dir>/tls/cert.pem and key.pem exist, generating them
 * when neither does. Fills the two paths. */
static int selfsigned_ensure(const struct tls_server_config *cfg, char *cert_path,
			     char *key_path, char *err, size_t errlen)
{
	char dir[PATH_MAX];
	char *cert_pem = NULL, *key_pem = NULL;
	size_t cert_len = 0, key_len = 0;
	bool have_cert, have_key;
	int ret;

	if (cfg->data_dir == NULL || cfg->data_dir[0] == 0) {
		set_err(err, errlen, "no certificate configured and no data directory for a self-signed one");
		return -EINVAL;
	}
	if ((size_t)snprintf(dir, sizeof(dir), "%s/tls", cfg->data_dir) >= sizeof(dir) ||
	    (size_t)snprintf(cert_path, PATH_MAX, "%s/cert.pem", dir) >= PATH_MAX ||
	    (size_t)snprintf(key_path, PATH_MAX, "%s/key.pem", dir) >= PATH_MAX) {
		set_err(err, errlen, "data directory path too long: %s", cfg->data_dir);
		return -ENAMETOOLONG;
	}
	have_cert = access(cert_path, F_OK) == 0;
	have_key = access(key_path, F_OK) == 0;
	if (have_cert && have_key)
		return 0;
	if (have_cert != have_key) {
		set_err(err, errlen, "found %s but not %s: remove it to generate a new pair",
			have_cert ? cert_path : key_path, have_cert ? key_path : cert_path);
		return -ENOENT;
	}
	if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		ret = -errno;
		set_err(err, errlen, "cannot create %s: %s", cfg->data_dir, strerror(-ret));
		return ret;
	}
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		ret = -errno;
		set_err(err, errlen, "cannot create %s: %s", dir, strerror(-ret));
		return ret;
	}
	ret = selfsigned_generate(cfg->hostname != NULL && cfg->hostname[0] ? cfg->hostname : "localhost",
				  &cert_pem, &cert_len, &key_pem, &key_len, err, errlen);
	if (ret != 0)
		return ret;
	/* The key first: a cert without its key would block the next start. */
	ret = write_file_atomic(key_path, key_pem, key_len, 0600);
	if (ret != 0) {
		set_err(err, errlen, "cannot write %s: %s", key_path, strerror(-ret));
		goto out;
	}
	ret = write_file_atomic(cert_path, cert_pem, cert_len, 0644);
	if (ret != 0) {
		set_err(err, errlen, "cannot write %s: %s", cert_path, strerror(-ret));
		unlink(key_path);
		goto out;
	}
	ret = fsync_dir(dir);
	if (ret != 0)
		set_err(err, errlen, "cannot fsync %s: %s", dir, strerror(-ret));
out:
	explicit_bzero(key_pem, key_len);
	free(key_pem);
	free(cert_pem);
	return ret;
}

/* SHA-256 of the first certificate of a PEM file, "AB:CD:..". */
static int fingerprint_pem(const uint8_t *pem, size_t len, char out[32 * 3])
{
	uint8_t *der = malloc(len);
	uint8_t digest[WC_SHA256_DIGEST_SIZE];
	int der_len;

	if (der == NULL)
		return -ENOMEM;
	der_len = wc_CertPemToDer(pem, (int)len, der, (int)len, CERT_TYPE);
	if (der_len <= 0 || wc_Sha256Hash(der, (word32)der_len, digest) != 0) {
		free(der);
		return -EINVAL;
	}
	free(der);
	for (size_t i = 0; i < sizeof(digest); i++)
		snprintf(out + 3 * i, 4, "%02X%s", digest[i], i + 1 < sizeof(digest) ? ":" : "");
	return 0;
}

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg);
static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg);

/* A context with our protocol choices and one certificate. When fp is not
 * NULL it receives the certificate's fingerprint. */
static WOLFSSL_CTX *ctx_new(struct tls_server *srv, const char *cert_path,
			    const char *key_path, char *fp, char *err, size_t errlen)
{
	WOLFSSL_CTX *ctx;
	uint8_t *cert = NULL, *key = NULL;
	size_t cert_len, key_len;
	int groups[] = { WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1 };
	int r;

	r = read_file(cert_path, &cert, &cert_len);
	if (r != 0) {
		set_err(err, errlen, "cannot read %s: %s", cert_path, strerror(-r));
		return NULL;
	}
	r = read_file(key_path, &key, &key_len);
	if (r != 0) {
		set_err(err, errlen, "cannot read %s: %s", key_path, strerror(-r));
		free(cert);
		return NULL;
	}
	ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
	if (ctx == NULL) {
		set_err(err, errlen, "wolfSSL_CTX_new failed (out of memory?)");
		goto err;
	}
	if ((r = wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2)) != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "cannot set TLS 1.2 as the minimum: %s", wolf_err_str(r));
		goto err;
	}
	if ((r = wolfSSL_CTX_set_cipher_list(ctx, tls_cipher_list)) != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "cannot set the cipher list: %s", wolf_err_str(r));
		goto err;
	}
	if ((r = wolfSSL_CTX_set_groups(ctx, groups, 2)) != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "cannot set the key exchange groups: %s", wolf_err_str(r));
		goto err;
	}
	r = wolfSSL_CTX_use_certificate_chain_buffer(ctx, cert, (long)cert_len);
	if (r != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "%s: not a PEM certificate chain (%s)", cert_path, wolf_err_str(r));
		goto err;
	}
	r = wolfSSL_CTX_use_PrivateKey_buffer(ctx, key, (long)key_len, WOLFSSL_FILETYPE_PEM);
	if (r != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "%s: not a PEM private key (%s)", key_path, wolf_err_str(r));
		goto err;
	}
#ifndef NO_CHECK_PRIVATE_KEY
	if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
		set_err(err, errlen, "%s is not the key of %s", key_path, cert_path);
		goto err;
	}
#endif
	if (fp != NULL && fingerprint_pem(cert, cert_len, fp) != 0) {
		set_err(err, errlen, "%s: cannot decode the first certificate", cert_path);
		goto err;
	}
	wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	/* Stateless resumption only: tickets, no server-side session cache. */
	wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
	wolfSSL_CTX_set_TicketEncCb(ctx, ticket_cb);
	wolfSSL_CTX_set_TicketEncCtx(ctx, srv);
	wolfSSL_CTX_set_TicketHint(ctx, (int)srv->rotate_s);
	/* wolfSSL's own age limit; the key ring bounds it to two periods. */
	wolfSSL_CTX_set_timeout(ctx, 2 * srv->rotate_s);
	wolfSSL_CTX_SetIORecv(ctx, io_recv);
	wolfSSL_CTX_SetIOSend(ctx, io_send);
	tls_sha256_ctx_setup(ctx, tls_sha_on);
	explicit_bzero(key, key_len);
	free(key);
	free(cert);
	return ctx;
err:
	if (ctx != NULL)
		wolfSSL_CTX_free(ctx);
	explicit_bzero(key, key_len);
	free(key);
	free(cert);
	return NULL;
}

/* ---- server ----------------------------------------------------------------- */

static void server_free(struct tls_server *srv)
{
	for (size_t i = 0; i < srv->nsni; i++) {
		if (srv->sni[i].ctx != NULL)
			wolfSSL_CTX_free(srv->sni[i].ctx);
		free(srv->sni[i].name);
	}
	free(srv->sni);
	explicit_bzero(&srv->ticket_cur, sizeof(srv->ticket_cur));
	explicit_bzero(&srv->ticket_prev, sizeof(srv->ticket_prev));
	pthread_mutex_destroy(&srv->ticket_lock);
	free(srv);
}

static char *lower_dup(const char *s)
{
	char *d = strdup(s != NULL ? s : "");

	for (char *p = d; p != NULL && *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p += 32;
	return d;
}

int tls_server_new(const struct tls_server_config *cfg, struct tls_server **srv_r,
		   char *err, size_t errlen)
{
	struct tls_server *srv;
	struct tls_cert_config gen;
	char gen_cert[PATH_MAX], gen_key[PATH_MAX];
	const struct tls_cert_config *certs = cfg->certs;
	size_t ncerts = cfg->ncerts, def = 0;
	int ret;

	*srv_r = NULL;
	if (err != NULL && errlen > 0)
		err[0] = 0;
	srv = calloc(1, sizeof(*srv));
	if (srv == NULL) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	atomic_init(&srv->refs, 1);
	pthread_mutex_init(&srv->ticket_lock, NULL);
	srv->rotate_s = cfg->ticket_rotate_s ? cfg->ticket_rotate_s : TLS_TICKET_ROTATE_S_DEFAULT;

	if (ncerts == 0) {
		ret = selfsigned_ensure(cfg, gen_cert, gen_key, err, errlen);
		if (ret != 0)
			goto err;
		gen = (struct tls_cert_config){ "", gen_cert, gen_key };
		certs = &gen;
		ncerts = 1;
	}
	for (size_t i = 0; i < ncerts; i++) {
		if (certs[i].name == NULL || certs[i].name[0] == 0) {
			def = i;
			break;
		}
	}
	srv->sni = calloc(ncerts, sizeof(*srv->sni));
	if (srv->sni == NULL) {
		ret = -ENOMEM;
		set_err(err, errlen, "out of memory");
		goto err;
	}
	for (size_t i = 0; i < ncerts; i++) {
		struct sni_entry *e = &srv->sni[srv->nsni];

		if (certs[i].cert_path == NULL || certs[i].key_path == NULL) {
			ret = -EINVAL;
			set_err(err, errlen, "certificate %zu: no cert or key path", i);
			goto err;
		}
		e->name = lower_dup(certs[i].name);
		if (e->name == NULL) {
			ret = -ENOMEM;
			set_err(err, errlen, "out of memory");
			goto err;
		}
		srv->nsni++;
		e->ctx = ctx_new(srv, certs[i].cert_path, certs[i].key_path,
				 i == def ? srv->fingerprint : NULL, err, errlen);
		if (e->ctx == NULL) {
			ret = -EINVAL;
			goto err;
		}
		if (i == def)
			srv->default_ctx = e->ctx;
	}

	if (cfg->ticket_keys_from != NULL) {
		struct tls_server *old = (struct tls_server *)cfg->ticket_keys_from;

		pthread_mutex_lock(&old->ticket_lock);
		srv->ticket_cur = old->ticket_cur;
		srv->ticket_prev = old->ticket_prev;
		pthread_mutex_unlock(&old->ticket_lock);
	}
	if (!srv->ticket_cur.valid && ticket_key_make(&srv->ticket_cur, now_s()) != 0) {
		ret = -EIO;
		set_err(err, errlen, "cannot get random bytes for the ticket key");
		goto err;
	}
	*srv_r = srv;
	return 0;
err:
	server_free(srv);
	return ret;
}

void tls_server_ref(struct tls_server *srv)
{
	atomic_fetch_add_explicit(&srv->refs, 1, memory_order_relaxed);
}

void tls_server_unref(struct tls_server **srv_r)
{
	struct tls_server *srv = *srv_r;

	*srv_r = NULL;
	if (srv == NULL)
		return;
	if (atomic_fetch_sub_explicit(&srv->refs, 1, memory_order_acq_rel) == 1)
		server_free(srv);
}

const char *tls_server_fingerprint(const struct tls_server *srv)
{
	return srv->fingerprint;
}

/* The context for an SNI name: exact match, then "*.rest" for one label,
 * then the default. */
static WOLFSSL_CTX *server_ctx_for(const struct tls_server *srv, const char *name)
{
	const char *dot;

	if (name == NULL)
		return srv->default_ctx;
	for (size_t i = 0; i < srv->nsni; i++)
		if (srv->sni[i].name[0] && strcasecmp(srv->sni[i].name, name) == 0)
			return srv->sni[i].ctx;
	dot = strchr(name, '.');
	if (dot != NULL && dot != name) {
		for (size_t i = 0; i < srv->nsni; i++) {
			const char *n = srv->sni[i].name;

			if (n[0] == '*' && n[1] == '.' && strcasecmp(n + 1, dot) == 0)
				return srv->sni[i].ctx;
		}
	}
	return srv->default_ctx;
}

/* ---- connection: I/O callbacks ------------------------------------------------ */

/* Ciphertext for wolfSSL: first what is left of the assembled ClientHello,
 * then the caller's input. Empty: WANT_READ, never a blocking wait. */
static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *c = arg;
	size_t n, done = 0;

	(void)ssl;
	if (sz <= 0)
		return 0;
	if (c->hello != NULL) {
		n = c->hello_len - c->hello_off;
		if (n > (size_t)sz)
			n = (size_t)sz;
		memcpy(buf, c->hello + c->hello_off, n);
		c->hello_off += n;
		done = n;
		if (c->hello_off == c->hello_len) {
			free(c->hello);
			c->hello = NULL;
			c->hello_len = c->hello_off = 0;
		}
	}
	n = c->in_len - c->in_off;
	if (n > (size_t)sz - done)
		n = (size_t)sz - done;
	if (n > 0) {
		memcpy(buf + done, c->in_p + c->in_off, n);
		c->in_off += n;
		done += n;
	}
	if (done == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	return (int)done;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *c = arg;

	(void)ssl;
	if (sz < 0)
		return WOLFSSL_CBIO_ERR_GENERAL;
	if (c->out(c->out_arg, (const uint8_t *)buf, (size_t)sz) != 0)
		return WOLFSSL_CBIO_ERR_GENERAL;
	if (sz > 0)
		c->sent = true;
	return sz;
}

/* ---- connection -------------------------------------------------------------- */

int tls_conn_new(struct tls_server *srv, const char *alpn, tls_out_fn out,
		 void *out_arg, struct tls_conn **conn_r)
{
	struct tls_conn *c = calloc(1, sizeof(*c));

	*conn_r = NULL;
	if (c == NULL)
		return -ENOMEM;
	tls_server_ref(srv);
	c->srv = srv;
	c->alpn = alpn;
	c->out = out;
	c->out_arg = out_arg;
	*conn_r = c;
	return 0;
}

void tls_conn_free(struct tls_conn **conn_r)
{
	struct tls_conn *c = *conn_r;

	*conn_r = NULL;
	if (c == NULL)
		return;
	if (c->ssl != NULL)
		wolfSSL_free(c->ssl);
	free(c->hello);
	free(c->sni);
	tls_server_unref(&c->srv);
	free(c);
}

/* wolfSSL 5.5 built without WOLFSSL_EXTRA_ALERTS refuses a TLS 1.2
 * ClientHello that shares no cipher suite with us (MATCH_SUITE_ERROR) by
 * closing without an alert; RFC 5246 7.4.1.3 wants a fatal
 * handshake_failure (TLS 1.3's path sends one itself). When the handshake
 * failed that way and wolfSSL has sent nothing at all (so no keys are in
 * use and no alert went out), send the alert in the clear ourselves. */
static void handshake_fail_alert(struct tls_conn *c, int e)
{
	static const uint8_t alert[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 2 /* fatal */,
					 40 /* handshake_failure */ };

	if (e != MATCH_SUITE_ERROR || c->sent)
		return;
	c->sent = true;
	(void)c->out(c->out_arg, alert, sizeof(alert));
}

static enum tls_status conn_fail(struct tls_conn *c, int e)
{
	c->failed = true;
	c->err = e != 0 ? e : FATAL_ERROR;
	return TLS_ERROR;
}

/* A host name we are willing to match and log: letters, digits, '-', '_'
 * and '.'. Anything else (control bytes, spaces, UTF-8) is ignored as if
 * no SNI had been sent. */
static bool sni_name_ok(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t ch = p[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.'))
			return false;
	}
	return true;
}

/* Creates the wolfSSL object with the context the SNI in `hello` (one whole
 * record, or anything that is not a handshake record) asks for. */
static int conn_start(struct tls_conn *c, const uint8_t *hello, size_t len)
{
	WOLFSSL_CTX *ctx = c->srv->default_ctx;
	uint8_t name[256];
	word32 name_len = sizeof(name) - 1;

	if (len > 5 && hello[0] == 0x16 &&
	    wolfSSL_SNI_GetFromBuffer(hello, (word32)len, WOLFSSL_SNI_HOST_NAME,
				      name, &name_len) == WOLFSSL_SUCCESS && name_len > 0) {
		if (name_len < sizeof(name) && sni_name_ok(name, name_len)) {
			name[name_len] = 0;
			c->sni = strdup((const char *)name);
			if (c->sni == NULL)
				return -ENOMEM;
			ctx = server_ctx_for(c->srv, c->sni);
		} else {
			c->sni_bad = true;
		}
	}
	c->ssl = wolfSSL_new(ctx);
	if (c->ssl == NULL)
		return -ENOMEM;
	wolfSSL_SSLSetIORecv(c->ssl, io_recv);
	wolfSSL_SSLSetIOSend(c->ssl, io_send);
	wolfSSL_SetIOReadCtx(c->ssl, c);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
	if (c->alpn != NULL &&
	    wolfSSL_UseALPN(c->ssl, (char *)c->alpn, (unsigned)strlen(c->alpn),
			    WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS)
		return -ENOMEM;
	return 0;
}

/* Before the wolfSSL object exists: gathers the first record, which holds
 * the ClientHello, so its SNI can choose the certificate. Returns 1 when
 * the wolfSSL object now exists, 0 when more bytes are needed, or a
 * negative errno. */
static int conn_gather_hello(struct tls_conn *c)
{
	size_t have, need, take;
	const uint8_t *rec;
	uint8_t *nb;
	int ret;

	/* Common case: the whole record in this read; no copy. */
	if (c->hello == NULL) {
		const uint8_t *p = c->in_p;
		size_t len = c->in_len;

		if (len == 0)
			return 0;
		if (p[0] != 0x16)
			return conn_start(c, p, len) == 0 ? 1 : -ENOMEM;
		if (len >= 5 && len >= 5 + (((size_t)p[3] << 8) | p[4]))
			return conn_start(c, p, 5 + (((size_t)p[3] << 8) | p[4])) == 0 ? 1 : -ENOMEM;
	}
	/* Assemble: first the 5-byte header, then exactly the record. The
	 * ClientHello's declared length is capped, so this never holds more
	 * than TLS_CLIENT_HELLO_MAX bytes. */
	for (;;) {
		have = c->hello_len;
		if (have < 5) {
			need = 5;
		} else {
			need = 5 + (((size_t)c->hello[3] << 8) | c->hello[4]);
			if (need > TLS_CLIENT_HELLO_MAX)
				need = have; /* let wolfSSL reject it */
		}
		if (have == need && have >= 5)
			break;
		take = c->in_len - c->in_off;
		if (take == 0)
			return 0;
		if (take > need - have)
			take = need - have;
		nb = realloc(c->hello, need);
		if (nb == NULL)
			return -ENOMEM;
		c->hello = nb;
		memcpy(c->hello + have, c->in_p + c->in_off, take);
		c->hello_len += take;
		c->in_off += take;
		if (c->hello[0] != 0x16)
			break;
	}
	rec = c->hello;
	ret = conn_start(c, rec, c->hello_len);
	return ret == 0 ? 1 : ret;
}

enum tls_status tls_conn_read(struct tls_conn *c, struct span in, size_t *consumed_r,
			      uint8_t *plain, size_t cap, size_t *plain_len_r)
{
	enum tls_status st = TLS_WANT_READ;
	size_t n = 0;
	int r, e;

	*consumed_r = 0;
	*plain_len_r = 0;
	if (c->failed)
		return TLS_ERROR;
	if (c->peer_closed)
		return TLS_CLOSED;
	c->in_p = in.p;
	c->in_len = in.len;
	c->in_off = 0;

	if (c->ssl == NULL) {
		r = conn_gather_hello(c);
		if (r < 0) {
			st = conn_fail(c, MEMORY_E);
			goto out;
		}
		if (r == 0)
			goto out;
	}
	if (!c->handshake_done) {
		r = wolfSSL_accept(c->ssl);
		if (r != WOLFSSL_SUCCESS) {
			e = wolfSSL_get_error(c->ssl, r);
			if (e != WOLFSSL_ERROR_WANT_READ) {
				handshake_fail_alert(c, e);
				st = conn_fail(c, e);
			}
			goto out;
		}
		c->handshake_done = true;
		/* Idle connections must stay small: drop the handshake's
		 * hashes, key shares and certificate buffers now. */
		wolfSSL_FreeHandshakeResources(c->ssl);
		st = TLS_OK;
	}
	while (n < cap) {
		size_t want = cap - n;

		if (want > INT_MAX)
			want = INT_MAX;
		r = wolfSSL_read(c->ssl, plain + n, (int)want);
		if (r > 0) {
			n += (size_t)r;
			continue;
		}
		e = wolfSSL_get_error(c->ssl, r);
		if (e == WOLFSSL_ERROR_WANT_READ)
			break;
		if (e == WOLFSSL_ERROR_ZERO_RETURN) {
			c->peer_closed = true;
			if (n == 0)
				st = TLS_CLOSED;
			break;
		}
		n = 0;
		st = conn_fail(c, e);
		goto out;
	}
	if (n > 0)
		st = TLS_OK;
out:
	*consumed_r = c->in_off;
	*plain_len_r = n;
	c->in_p = NULL;
	c->in_len = c->in_off = 0;
	/* The key schedule's cached HMAC states end with this call. */
	tls_sha256_forget();
	return st;
}

size_t tls_conn_pending(const struct tls_conn *c)
{
	int n;

	if (c->ssl == NULL || !c->handshake_done)
		return 0;
	n = wolfSSL_pending(c->ssl);
	return n > 0 ? (size_t)n : 0;
}

bool tls_conn_can_write(const struct tls_conn *c)
{
	if (c->failed || c->ssl == NULL)
		return false;
	if (c->handshake_done)
		return true;
#ifdef WOLFSSL_RINGMAIL_HALF_RTT
	return wolfSSL_ringmail_half_rtt(c->ssl) == 1;
#else
	return false;
#endif
}

enum tls_status tls_conn_write(struct tls_conn *c, const uint8_t *p, size_t len)
{
	size_t off = 0;

	if (!tls_conn_can_write(c))
		return TLS_ERROR;
	while (off < len) {
		size_t chunk = len - off;
		int r;

		if (chunk > INT_MAX)
			chunk = INT_MAX;
		r = wolfSSL_write(c->ssl, p + off, (int)chunk);
		if (r <= 0) {
			tls_sha256_forget();
			return conn_fail(c, wolfSSL_get_error(c->ssl, r));
		}
		off += (size_t)r;
	}
	/* A KeyUpdate answer derives keys here. */
	tls_sha256_forget();
	return TLS_OK;
}

void tls_conn_close_notify(struct tls_conn *c)
{
	if (c->ssl == NULL || !c->handshake_done || c->failed || c->close_sent)
		return;
	c->close_sent = true;
	/* Sends close_notify; the peer's reply is not waited for. */
	(void)wolfSSL_shutdown(c->ssl);
}

bool tls_conn_handshake_done(const struct tls_conn *c)
{
	return c->handshake_done;
}

const char *tls_conn_version(const struct tls_conn *c)
{
	if (c->ssl == NULL || !c->handshake_done)
		return "";
	return wolfSSL_get_version(c->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
	const char *s;

	if (c->ssl == NULL || !c->handshake_done)
		return "";
	s = wolfSSL_get_cipher_name(c->ssl);
	return s != NULL ? s : "";
}

const char *tls_conn_sni(const struct tls_conn *c)
{
	return c->sni;
}

bool tls_conn_resumed(const struct tls_conn *c)
{
	return c->ssl != NULL && c->handshake_done && wolfSSL_session_reused(c->ssl) == 1;
}

const char *tls_conn_error(const struct tls_conn *c)
{
	if (!c->failed)
		return NULL;
	return wolf_err_str(c->err);
}
