/* auth.c - password checks on the worker pool, a credential cache and the
 * per-address failure delay.
 *
 * A request lives from auth_verify() to the completion that calls done:
 *   cache hit / temp failure   -> NOP on the loop       -> done
 *   otherwise                  -> worker (crypt)        -> MSG_RING back
 *     OK                       -> cache insert          -> done
 *     FAIL                     -> TIMEOUT (the delay)   -> done
 * The request holds a reference to the users snapshot it looked the user
 * up in, so the stored hash it checks stays valid across reloads. */
#include "store/auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

#define container_of(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

#define CACHE_WAYS 4u
#define CACHE_LOCKS 64u

struct cache_ent {
	uint64_t tag[2];  /* SipHash of user and password; 0,0: empty */
	uint64_t hashfp;  /* SipHash of the stored hash it was made with */
	uint64_t expires; /* monotonic ms */
};

struct auth {
	struct users *users;
	struct workpool *wp;
	auth_check_fn *check;
	void *check_arg;
	uint64_t key[3][2]; /* SipHash keys: tag halves, fingerprints/addresses */
	uint32_t ttl_ms, delay_initial_ms, delay_max_ms, delay_quiet_ms;
	uint64_t t0;        /* monotonic ms at creation: delay slot time base */
	char dummy[160];    /* a yescrypt hash of random bytes */

	size_t nsets;       /* power of two */
	struct cache_ent *cache;
	pthread_mutex_t locks[CACHE_LOCKS];

	_Atomic uint64_t delay[AUTH_DELAY_SLOTS];
};

struct auth_req {
	struct auth *auth;
	struct loop *loop;
	struct workpool_job job;
	struct loop_cb cb;
	struct __kernel_timespec ts;
	struct timespec start; /* CLOCK_MONOTONIC at auth_verify() */
	const struct users_snap *snap;
	const struct users_entry *entry; /* NULL: unknown or disabled */
	enum users_scheme scheme;        /* what the worker checks against */
	const char *hash;
	uint64_t tag[2], hashfp, addr_h;
	bool has_addr;
	bool cancelled;
	enum auth_result result;
	auth_done_fn *done;
	void *arg;
	size_t passlen;
	char pass[];
};

const char *auth_result_str(enum auth_result r)
{
	switch (r) {
	case AUTH_OK:
		return "ok";
	case AUTH_FAIL:
		return "fail";
	case AUTH_TEMPFAIL:
		return "tempfail";
	}
	return "?";
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- SipHash-2-4 (Aumasson, Bernstein), 64-bit output --------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                              \
	do {                                                                  \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);     \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                        \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                        \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);     \
	} while (0)

static uint64_t siphash(const uint64_t k[2], const uint8_t *in, size_t len)
{
	uint64_t v0 = 0x736f6d6570736575ull ^ k[0];
	uint64_t v1 = 0x646f72616e646f6dull ^ k[1];
	uint64_t v2 = 0x6c7967656e657261ull ^ k[0];
	uint64_t v3 = 0x7465646279746573ull ^ k[1];
	uint64_t b = (uint64_t)len << 56, m;
	size_t i, end = len - (len % 8);

	for (i = 0; i < end; i += 8) {
		m = 0;
		for (int j = 7; j >= 0; j--)
			m = (m << 8) | in[i + (size_t)j];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < len % 8; j++)
		b |= (uint64_t)in[end + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- credential cache -------------------------------------------------- */

static void cred_tag(const struct auth *a, const char *user, struct span pass,
		     uint64_t tag[2])
{
	size_t ulen = strlen(user);
	uint8_t buf[USERS_ADDR_MAX + 1 + AUTH_PASS_MAX];

	/* user and password are joined by a NUL, which neither contains. */
	memcpy(buf, user, ulen);
	buf[ulen] = 0;
	memcpy(buf + ulen + 1, pass.p, pass.len);
	tag[0] = siphash(a->key[0], buf, ulen + 1 + pass.len);
	tag[1] = siphash(a->key[1], buf, ulen + 1 + pass.len);
	if (tag[0] == 0 && tag[1] == 0)
		tag[1] = 1; /* 0,0 marks an empty entry */
	explicit_bzero(buf, ulen + 1 + pass.len);
}

static bool cache_hit(struct auth *a, const uint64_t tag[2], uint64_t hashfp)
{
	size_t set = tag[0] & (a->nsets - 1);
	struct cache_ent *e = &a->cache[set * CACHE_WAYS];
	pthread_mutex_t *lock = &a->locks[set % CACHE_LOCKS];
	uint64_t now = mono_ms();
	bool hit = false;

	pthread_mutex_lock(lock);
	for (unsigned w = 0; w < CACHE_WAYS; w++) {
		if (e[w].tag[0] != tag[0] || e[w].tag[1] != tag[1])
			continue;
		if (e[w].hashfp == hashfp && e[w].expires > now)
			hit = true;
		else /* expired, or the password changed since */
			e[w] = (struct cache_ent){ 0 };
		break;
	}
	pthread_mutex_unlock(lock);
	return hit;
}

static void cache_put(struct auth *a, const uint64_t tag[2], uint64_t hashfp)
{
	size_t set = tag[0] & (a->nsets - 1);
	struct cache_ent *e = &a->cache[set * CACHE_WAYS];
	pthread_mutex_t *lock = &a->locks[set % CACHE_LOCKS];
	unsigned victim = 0;

	pthread_mutex_lock(lock);
	for (unsigned w = 0; w < CACHE_WAYS; w++) {
		if (e[w].tag[0] == tag[0] && e[w].tag[1] == tag[1]) {
			victim = w;
			break;
		}
		if (e[w].expires < e[victim].expires)
			victim = w;
	}
	e[victim] = (struct cache_ent){ { tag[0], tag[1] }, hashfp, mono_ms() + a->ttl_ms };
	pthread_mutex_unlock(lock);
}

void auth_cache_clear(struct auth *a)
{
	for (size_t set = 0; set < a->nsets; set++) {
		pthread_mutex_t *lock = &a->locks[set % CACHE_LOCKS];

		pthread_mutex_lock(lock);
		memset(&a->cache[set * CACHE_WAYS], 0, CACHE_WAYS * sizeof(struct cache_ent));
		pthread_mutex_unlock(lock);
	}
}

/* ---- failure delay ------------------------------------------------------ */

/* A slot: tag (20 bits) | failures (4 bits) | last failure, ms since t0
 * (40 bits, 34 years). */
#define SLOT_TAG(v) ((v) >> 44)
#define SLOT_FAILS(v) (((v) >> 40) & 0xfu)
#define SLOT_TIME(v) ((v) & 0xffffffffffull)
#define SLOT_MAKE(tag, n, t) (((uint64_t)(tag) << 44) | ((uint64_t)(n) << 40) | ((t) & 0xffffffffffull))
#define FAILS_MAX 15u

/* Hashes the client address; IPv6 per /64 (one host usually holds a
 * whole /64, so counting per address would be free to evade). */
static uint64_t addr_hash(const struct auth *a, const char *addr)
{
	struct in6_addr a6;

	if (strchr(addr, ':') != NULL && inet_pton(AF_INET6, addr, &a6) == 1 &&
	    !IN6_IS_ADDR_V4MAPPED(&a6))
		return siphash(a->key[2], a6.s6_addr, 8);
	return siphash(a->key[2], (const uint8_t *)addr, strlen(addr));
}

/* The failure count of a slot after decaying one step per quiet period. */
static unsigned slot_fails(const struct auth *a, uint64_t v, uint64_t tag, uint64_t now)
{
	if (v == 0 || SLOT_TAG(v) != tag)
		return 0;
	uint64_t quiet = (now - SLOT_TIME(v)) / a->delay_quiet_ms;
	unsigned n = (unsigned)SLOT_FAILS(v);

	return quiet >= n ? 0 : n - (unsigned)quiet;
}

static uint32_t delay_for(const struct auth *a, unsigned fails)
{
	uint64_t d = a->delay_initial_ms;

	for (unsigned i = 1; i < fails && d < a->delay_max_ms; i++)
		d *= 2;
	return d > a->delay_max_ms ? a->delay_max_ms : (uint32_t)d;
}

/* Counts one failure for the address and returns the delay it earns. */
static uint32_t delay_fail(struct auth *a, uint64_t h)
{
	_Atomic uint64_t *slot = &a->delay[h & (AUTH_DELAY_SLOTS - 1)];
	uint64_t tag = (h >> 32) & 0xfffffu, now = mono_ms() - a->t0;
	uint64_t old = atomic_load(slot), nv;
	unsigned n;

	do {
		n = slot_fails(a, old, tag, now);
		if (n < FAILS_MAX)
			n++;
		nv = SLOT_MAKE(tag, n, now);
	} while (!atomic_compare_exchange_weak(slot, &old, nv));
	return delay_for(a, n);
}

static void delay_clear(struct auth *a, uint64_t h)
{
	_Atomic uint64_t *slot = &a->delay[h & (AUTH_DELAY_SLOTS - 1)];
	uint64_t old = atomic_load(slot);

	while (old != 0 && SLOT_TAG(old) == ((h >> 32) & 0xfffffu) &&
	       !atomic_compare_exchange_weak(slot, &old, 0))
		;
}

uint32_t auth_delay_peek(struct auth *a, const char *client_addr)
{
	uint64_t h = addr_hash(a, client_addr != NULL ? client_addr : "");
	uint64_t v = atomic_load(&a->delay[h & (AUTH_DELAY_SLOTS - 1)]);
	unsigned n = slot_fails(a, v, (h >> 32) & 0xfffffu, mono_ms() - a->t0);

	return delay_for(a, n + 1);
}

/* ---- requests ------------------------------------------------------------- */

static void req_free(struct auth_req *r)
{
	users_snap_put(&r->snap);
	explicit_bzero(r->pass, r->passlen);
	free(r);
}

static void req_finish(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct auth_req *r = container_of(cb, struct auth_req, cb);

	(void)res;
	(void)flags;
	if (!r->cancelled)
		r->done(loop, r->result, r->result == AUTH_OK ? r->entry->addr : NULL, r->arg);
	req_free(r);
}

/* Answers through a completion so done never runs inside auth_verify(). */
static void req_answer_soon(struct auth_req *r, enum auth_result res)
{
	r->result = res;
	r->cb.fn = req_finish;
	io_uring_prep_nop(loop_sqe(r->loop, &r->cb));
}

static int req_run(struct workpool_job *job)
{
	struct auth_req *r = container_of(job, struct auth_req, job);
	struct auth *a = r->auth;

	if (r->hash == NULL)
		return 0;
	return a->check(a->check_arg, r->scheme, r->hash,
			span_make(r->pass, r->passlen));
}

static void req_checked(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct auth_req *r = container_of(cb, struct auth_req, job.done);
	struct auth *a = r->auth;

	(void)flags;
	/* The password is no longer needed: wipe it now rather than after a
	 * 15 s delay. */
	explicit_bzero(r->pass, r->passlen);
	if (res == -ECANCELED || res == -ENOMEM) {
		req_answer_soon(r, AUTH_TEMPFAIL);
		return;
	}
	if (res == 1 && r->entry != NULL) {
		cache_put(a, r->tag, r->hashfp);
		if (r->has_addr)
			delay_clear(a, r->addr_h);
		r->result = AUTH_OK;
		req_finish(loop, &r->cb, 0, 0);
		return;
	}
	/* Wrong password, unknown user, disabled login, unusable hash: all
	 * look the same from outside. The delay counts from the request's
	 * start, not from the end of the check: an unknown user is checked
	 * against another user's hash, whose scheme may cost more or less
	 * than the real one, and the queue wait varies too; an absolute
	 * deadline hides both. */
	uint32_t ms = delay_fail(a, r->has_addr ? r->addr_h : addr_hash(a, ""));
	r->result = AUTH_FAIL;
	uint64_t ns = (uint64_t)r->start.tv_nsec + (uint64_t)(ms % 1000) * 1000000u;
	r->ts.tv_sec = r->start.tv_sec + ms / 1000 + (long long)(ns / 1000000000u);
	r->ts.tv_nsec = (long long)(ns % 1000000000u);
	r->cb.fn = req_finish;
	/* IORING_TIMEOUT_ABS is on CLOCK_MONOTONIC, as r->start. A deadline
	 * already past fires at once. */
	io_uring_prep_timeout(loop_sqe(loop, &r->cb), &r->ts, 0, IORING_TIMEOUT_ABS);
}

int auth_verify(struct auth *a, struct loop *loop, struct span user, struct span pass,
		const char *client_addr, auth_done_fn *done, void *arg,
		struct auth_req **req_r)
{
	size_t plen = pass.len > AUTH_PASS_MAX ? AUTH_PASS_MAX : pass.len;
	struct auth_req *r = calloc(1, sizeof(*r) + plen + 1);
	int rc;

	if (r == NULL)
		return -ENOMEM;
	clock_gettime(CLOCK_MONOTONIC, &r->start);
	r->auth = a;
	r->loop = loop;
	r->done = done;
	r->arg = arg;
	r->passlen = plen;
	memcpy(r->pass, pass.p, plen);
	r->has_addr = client_addr != NULL;
	if (r->has_addr)
		r->addr_h = addr_hash(a, client_addr);
	r->job.run = req_run;
	r->job.done.fn = req_checked;
	if (req_r != NULL)
		*req_r = r;

	r->snap = users_snap_get(a->users);
	r->entry = users_snap_find(r->snap, user);
	if (r->entry != NULL && r->entry->scheme != USERS_SCHEME_NONE &&
	    pass.len <= AUTH_PASS_MAX) {
		r->scheme = r->entry->scheme;
		r->hash = r->entry->hash;
		r->hashfp = siphash(a->key[2], (const uint8_t *)r->hash, strlen(r->hash));
		cred_tag(a, r->entry->addr, pass, r->tag);
		if (cache_hit(a, r->tag, r->hashfp)) {
			explicit_bzero(r->pass, r->passlen);
			req_answer_soon(r, AUTH_OK);
			return 0;
		}
	} else {
		/* Same work as a real check, then a failure whatever it says. */
		r->entry = NULL;
		r->hash = users_snap_dummy_hash(r->snap, &r->scheme);
		if (r->hash == NULL) {
			r->hash = a->dummy;
			r->scheme = USERS_SCHEME_YESCRYPT;
		}
	}
	rc = workpool_submit(a->wp, loop, &r->job);
	if (rc < 0) {
		explicit_bzero(r->pass, r->passlen);
		req_answer_soon(r, AUTH_TEMPFAIL);
	}
	return 0;
}

void auth_cancel(struct auth_req *req)
{
	req->cancelled = true;
}

/* ---- setup ----------------------------------------------------------------- */

static int default_check(void *arg, enum users_scheme scheme, const char *hash,
			 struct span pass)
{
	(void)arg;
	return users_password_verify(scheme, hash, pass);
}

int auth_new(const struct auth_config *cfg, struct users *users, struct workpool *wp,
	     struct auth **auth_r)
{
	static const struct auth_config defaults = { 0 };
	struct auth *a;
	uint8_t rnd[32];
	char hex[65];
	unsigned cache_max;
	int r;

	if (cfg == NULL)
		cfg = &defaults;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return -ENOMEM;
	a->users = users;
	a->wp = wp;
	a->check = cfg->check != NULL ? cfg->check : default_check;
	a->check_arg = cfg->check_arg;
	a->ttl_ms = cfg->cache_ttl_ms ? cfg->cache_ttl_ms : AUTH_CACHE_TTL_MS_DEFAULT;
	a->delay_initial_ms = cfg->delay_initial_ms ? cfg->delay_initial_ms
						    : AUTH_DELAY_INITIAL_MS_DEFAULT;
	a->delay_max_ms = cfg->delay_max_ms ? cfg->delay_max_ms : AUTH_DELAY_MAX_MS_DEFAULT;
	a->delay_quiet_ms = cfg->delay_quiet_ms ? cfg->delay_quiet_ms
						: AUTH_DELAY_QUIET_MS_DEFAULT;
	a->t0 = mono_ms();
	if (getrandom(a->key, sizeof(a->key), 0) != (ssize_t)sizeof(a->key) ||
	    getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
		r = -EIO;
		goto err;
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	r = users_password_hash(span_make(hex, 64), a->dummy, sizeof(a->dummy));
	explicit_bzero(hex, sizeof(hex));
	if (r < 0)
		goto err;
	/* Drop the "{CRYPT}" prefix: checks take bare crypt strings. */
	char *brace = strchr(a->dummy, '}');
	if (brace != NULL)
		memmove(a->dummy, brace + 1, strlen(brace + 1) + 1);
	cache_max = cfg->cache_max ? cfg->cache_max : AUTH_CACHE_MAX_DEFAULT;
	a->nsets = 1;
	while (a->nsets * CACHE_WAYS < cache_max)
		a->nsets *= 2;
	a->cache = calloc(a->nsets * CACHE_WAYS, sizeof(*a->cache));
	if (a->cache == NULL) {
		r = -ENOMEM;
		goto err;
	}
	for (unsigned i = 0; i < CACHE_LOCKS; i++)
		pthread_mutex_init(&a->locks[i], NULL);
	*auth_r = a;
	return 0;
err:
	free(a);
	return r;
}

void auth_free(struct auth **auth_r)
{
	struct auth *a = *auth_r;

	if (a == NULL)
		return;
	for (unsigned i = 0; i < CACHE_LOCKS; i++)
		pthread_mutex_destroy(&a->locks[i]);
	explicit_bzero(a->key, sizeof(a->key));
	free(a->cache);
	free(a);
	*auth_r = NULL;
}
