/* users.c - passwd-file and aliases, published as immutable snapshots.
 *
 * A snapshot is built completely (parse, dedupe, expand aliases, add
 * postmaster) by the reloading thread, then published with one atomic
 * exchange. Everything a snapshot points to lives in its arena and is freed
 * with it when the last reference is put. */
#include "store/users.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ---------------------------------------------------- */

static inline uint8_t lc(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* FNV-1a over the lowercased bytes: the tables are keyed case-insensitively
 * and their keys come from files the operator wrote, not from clients. */
static uint32_t hash_nocase(struct span s)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < s.len; i++) {
		h ^= lc(s.p[i]);
		h *= 16777619u;
	}
	return h;
}

static struct span span_trim(struct span s)
{
	while (s.len > 0 && (s.p[0] == ' ' || s.p[0] == '\t'))
		s = span_skip(s, 1);
	while (s.len > 0 && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t' ||
			     s.p[s.len - 1] == '\r'))
		s.len--;
	return s;
}

/* The domain of an address (after the last '@'), or an empty span. */
static struct span addr_domain(struct span a)
{
	for (size_t i = a.len; i > 0; i--) {
		if (a.p[i - 1] == '@')
			return span_skip(a, i);
	}
	return (struct span){ a.p, 0 };
}

/* ---- arena ------------------------------------------------------------ */

struct arena_chunk {
	struct arena_chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct arena {
	struct arena_chunk *head;
};

#define ARENA_CHUNK 65536u

static void *arena_alloc(struct arena *a, size_t n)
{
	struct arena_chunk *c = a->head;

	n = (n + 15u) & ~(size_t)15u;
	if (c == NULL || c->cap - c->used < n) {
		size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;

		c = malloc(sizeof(*c) + cap);
		if (c == NULL)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = a->head;
		a->head = c;
	}
	void *p = (char *)c->data + c->used;
	c->used += n;
	return p;
}

static char *arena_strdup(struct arena *a, struct span s)
{
	char *p = arena_alloc(a, s.len + 1);

	if (p == NULL)
		return NULL;
	if (s.len > 0)
		memcpy(p, s.p, s.len);
	p[s.len] = '\0';
	return p;
}

static char *arena_strdup_lc(struct arena *a, struct span s)
{
	char *p = arena_strdup(a, s);

	for (size_t i = 0; p != NULL && i < s.len; i++)
		p[i] = (char)lc((uint8_t)p[i]);
	return p;
}

static void arena_free(struct arena *a)
{
	while (a->head != NULL) {
		struct arena_chunk *c = a->head;

		a->head = c->next;
		free(c);
	}
}

/* ---- a case-insensitive string table --------------------------------- */

enum { TAB_USER = 1, TAB_ALIAS = 2 };

struct tab_slot {
	const char *key; /* NULL: empty */
	uint32_t h;
	uint8_t kind;
	uint32_t idx;
};

struct tab {
	struct tab_slot *s;
	size_t mask; /* capacity - 1; capacity is a power of two */
	size_t n;
};

static struct tab_slot *tab_find(const struct tab *t, struct span key)
{
	if (t->s == NULL)
		return NULL;
	uint32_t h = hash_nocase(key);

	for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
		struct tab_slot *sl = &t->s[i];

		if (sl->key == NULL)
			return NULL;
		if (sl->h == h && span_eq_nocase(span_cstr(sl->key), key))
			return sl;
	}
}

static int tab_grow(struct tab *t)
{
	size_t cap = t->s == NULL ? 64 : (t->mask + 1) * 2;
	struct tab_slot *s = calloc(cap, sizeof(*s));

	if (s == NULL)
		return -ENOMEM;
	for (size_t i = 0; t->s != NULL && i <= t->mask; i++) {
		struct tab_slot *o = &t->s[i];

		if (o->key == NULL)
			continue;
		size_t j = o->h & (cap - 1);
		while (s[j].key != NULL)
			j = (j + 1) & (cap - 1);
		s[j] = *o;
	}
	free(t->s);
	t->s = s;
	t->mask = cap - 1;
	return 0;
}

/* Inserts key (not present yet; key lives in the arena). */
static int tab_add(struct tab *t, const char *key, uint8_t kind, uint32_t idx)
{
	if (t->s == NULL || (t->n + 1) * 2 > t->mask + 1) {
		int r = tab_grow(t);
		if (r < 0)
			return r;
	}
	uint32_t h = hash_nocase(span_cstr(key));
	size_t i = h & t->mask;

	while (t->s[i].key != NULL)
		i = (i + 1) & t->mask;
	t->s[i] = (struct tab_slot){ key, h, kind, idx };
	t->n++;
	return 0;
}

/* ---- snapshots -------------------------------------------------------- */

struct alias_rec {
	const char *addr;
	struct span raw;             /* the target list as written */
	const char **targets;        /* expansion, after expand_aliases() */
	int ntargets;                /* 0: unusable */
	unsigned line;               /* 0: synthetic postmaster */
	int state;                   /* expansion: 0 todo, 1 busy, 2 done */
};

struct users_snap {
	atomic_long refs;
	uint64_t gen;
	struct arena arena;
	struct users_entry *users;
	size_t nusers, capusers;
	struct alias_rec *aliases;
	size_t naliases, capaliases;
	struct tab addrs;    /* users and aliases */
	struct tab domains;  /* local domains, kind TAB_USER, idx unused */
	const char *dummy;
	enum users_scheme dummy_scheme;
};

static void snap_free(struct users_snap *s)
{
	if (s == NULL)
		return;
	free(s->users);
	free(s->aliases);
	free(s->addrs.s);
	free(s->domains.s);
	arena_free(&s->arena);
	free(s);
}

/* ---- the users object ------------------------------------------------- */

struct fstamp {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

struct users {
	char *passwd_path;
	char *aliases_path;
	char *postmaster;
	char **domains;
	size_t ndomains;
	users_diag_fn *diag;
	void *diag_arg;

	_Atomic(struct users_snap *) cur;
	atomic_uint_fast64_t epoch;
	atomic_long readers[2];

	pthread_mutex_t reload_lock; /* serializes reloads; guards below */
	struct fstamp passwd_st, aliases_st;
	uint64_t gen;

	pthread_mutex_t wlock;
	pthread_cond_t wcond;
	pthread_t watcher;
	bool watching, wstop, wkick;
};

static void diag_stderr(void *arg, const char *file, unsigned line, const char *msg)
{
	(void)arg;
	if (line > 0)
		fprintf(stderr, "users: %s:%u: %s\n", file, line, msg);
	else
		fprintf(stderr, "users: %s: %s\n", file, msg);
}

/* What one build needs besides the snapshot. */
struct build {
	const struct users *u;
	struct users_snap *s;
	const char *file;
};

static void diagf(struct build *b, unsigned line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void diagf(struct build *b, unsigned line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	b->u->diag(b->u->diag_arg, b->file, line, msg);
}

/* Printable form of an address for a diagnostic: never more than 80 bytes
 * and no control characters, so a hostile line cannot forge log lines. */
static const char *shown(struct span s, char buf[84])
{
	size_t n = s.len > 80 ? 80 : s.len;

	for (size_t i = 0; i < n; i++)
		buf[i] = (s.p[i] < 0x20 || s.p[i] == 0x7f) ? '?' : (char)s.p[i];
	buf[n] = '\0';
	return buf;
}

/* ---- addresses and password fields ------------------------------------ */

bool users_addr_valid(struct span a)
{
	size_t at = SIZE_MAX;

	if (a.len == 0 || a.len > USERS_ADDR_MAX)
		return false;
	for (size_t i = 0; i < a.len; i++) {
		uint8_t c = a.p[i];

		if (c <= 0x20 || c == 0x7f || c == ':' || c == ',' || c == '#' ||
		    c == '<' || c == '>')
			return false;
		if (c == '@') {
			if (at != SIZE_MAX)
				return false;
			at = i;
		}
	}
	if (at == SIZE_MAX || at == 0 || at > USERS_LOCAL_MAX)
		return false;
	size_t dlen = a.len - at - 1;
	if (dlen == 0 || dlen > USERS_DOMAIN_MAX)
		return false;
	if (a.p[at + 1] == '.' || a.p[a.len - 1] == '.')
		return false;
	return true;
}

static const struct {
	const char *name;
	enum users_scheme scheme;
} scheme_names[] = {
	{ "CRYPT", USERS_SCHEME_CRYPT },
	{ "BLF-CRYPT", USERS_SCHEME_BLF_CRYPT },
	{ "SHA512-CRYPT", USERS_SCHEME_SHA512_CRYPT },
	{ "SHA256-CRYPT", USERS_SCHEME_SHA256_CRYPT },
	{ "YESCRYPT", USERS_SCHEME_YESCRYPT },
	{ "PLAIN", USERS_SCHEME_PLAIN },
	{ "CLEAR", USERS_SCHEME_PLAIN },
	{ "CLEARTEXT", USERS_SCHEME_PLAIN },
};

const char *users_scheme_str(enum users_scheme s)
{
	for (size_t i = 0; i < sizeof(scheme_names) / sizeof(scheme_names[0]); i++) {
		if (scheme_names[i].scheme == s)
			return scheme_names[i].name;
	}
	return "NONE";
}

/* The scheme a crypt(3) string's prefix names. */
static enum users_scheme crypt_kind(const char *h)
{
	if (strncmp(h, "$y$", 3) == 0)
		return USERS_SCHEME_YESCRYPT;
	if (strncmp(h, "$6$", 3) == 0)
		return USERS_SCHEME_SHA512_CRYPT;
	if (strncmp(h, "$5$", 3) == 0)
		return USERS_SCHEME_SHA256_CRYPT;
	if (strncmp(h, "$2y$", 4) == 0 || strncmp(h, "$2b$", 4) == 0 ||
	    strncmp(h, "$2a$", 4) == 0)
		return USERS_SCHEME_BLF_CRYPT;
	return USERS_SCHEME_CRYPT;
}

int users_parse_password(const char *field, enum users_scheme *scheme_r,
			 const char **hash_r, const char **why_r)
{
	enum users_scheme s = USERS_SCHEME_CRYPT;
	const char *h = field;

	*why_r = NULL;
	if (field[0] == '{') {
		const char *end = strchr(field, '}');
		size_t i, n = sizeof(scheme_names) / sizeof(scheme_names[0]);

		if (end == NULL) {
			*why_r = "unterminated {SCHEME}";
			return -EINVAL;
		}
		for (i = 0; i < n; i++) {
			struct span name = span_make(field + 1, (size_t)(end - field - 1));

			if (span_eq_nocase(name, span_cstr(scheme_names[i].name)))
				break;
		}
		if (i == n) {
			*why_r = "unknown password scheme";
			return -EINVAL;
		}
		s = scheme_names[i].scheme;
		h = end + 1;
	}
	*hash_r = h;
	if (h[0] == '\0' || (s != USERS_SCHEME_PLAIN && (h[0] == '!' || h[0] == '*'))) {
		*scheme_r = USERS_SCHEME_NONE;
		return 0;
	}
	if (strlen(h) > USERS_HASH_MAX) {
		*why_r = "password hash too long";
		return -EINVAL;
	}
	if (s == USERS_SCHEME_PLAIN) {
		*scheme_r = s;
		return 0;
	}
	for (const char *p = h; *p != '\0'; p++) {
		if ((uint8_t)*p <= 0x20 || (uint8_t)*p >= 0x7f) {
			*why_r = "password hash has a character crypt(3) never writes";
			return -EINVAL;
		}
	}
	enum users_scheme k = crypt_kind(h);
	if (s != USERS_SCHEME_CRYPT && k != s) {
		*why_r = "password hash does not match its {SCHEME}";
		return -EINVAL;
	}
	*scheme_r = k;
	return 0;
}

/* Compares in time that depends only on b.len (the client's input), not on
 * where the bytes differ or on a.len. Returns 1 when equal. */
static int ct_equal(struct span a, struct span b)
{
	uint8_t d = a.len != b.len;

	for (size_t i = 0; i < b.len; i++)
		d |= (uint8_t)((i < a.len ? a.p[i] : 0) ^ b.p[i]);
	return d == 0;
}

int users_password_verify(enum users_scheme scheme, const char *hash, struct span pass)
{
	struct crypt_data *cd;
	char *key;
	int r;

	if (scheme == USERS_SCHEME_NONE)
		return 0;
	if (pass.len > 0 && memchr(pass.p, '\0', pass.len) != NULL)
		return 0;
	if (scheme == USERS_SCHEME_PLAIN)
		return ct_equal(pass, span_cstr(hash));
	key = malloc(pass.len + 1);
	cd = calloc(1, sizeof(*cd));
	if (key == NULL || cd == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(key, pass.p, pass.len);
	key[pass.len] = '\0';
	errno = 0;
	const char *out = crypt_rn(key, hash, cd, sizeof(*cd));
	if (out == NULL || out[0] == '*')
		r = errno == ENOMEM ? -ENOMEM : -EINVAL;
	else
		r = ct_equal(span_cstr(hash), span_cstr(out));
out:
	if (key != NULL) {
		explicit_bzero(key, pass.len + 1);
		free(key);
	}
	if (cd != NULL) {
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
	}
	return r;
}

int users_password_hash(struct span pass, char *out, size_t size)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data *cd;
	char *key;
	int r = 0;

	if (pass.len > 0 && memchr(pass.p, '\0', pass.len) != NULL)
		return -EINVAL;
	if (crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting)) == NULL)
		return errno == ENOMEM ? -ENOMEM : -EINVAL;
	key = malloc(pass.len + 1);
	cd = calloc(1, sizeof(*cd));
	if (key == NULL || cd == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(key, pass.p, pass.len);
	key[pass.len] = '\0';
	const char *h = crypt_rn(key, setting, cd, sizeof(*cd));
	if (h == NULL || h[0] == '*') {
		r = errno == ENOMEM ? -ENOMEM : -EINVAL;
		goto out;
	}
	/* {CRYPT}, not {YESCRYPT}: Dovecot 2.3 knows only the former, and
	 * the file should stay readable by it. */
	int n = snprintf(out, size, "{CRYPT}%s", h);
	if (n < 0 || (size_t)n >= size)
		r = -ENAMETOOLONG;
out:
	if (key != NULL) {
		explicit_bzero(key, pass.len + 1);
		free(key);
	}
	if (cd != NULL) {
		explicit_bzero(cd, sizeof(*cd));
		free(cd);
	}
	return r;
}

/* ---- parsing ------------------------------------------------------------ */

/* Calls fn for each line (without its '\n') with its 1-based number. */
static int for_each_line(struct build *b, struct span text,
			 int (*fn)(struct build *b, struct span line, unsigned no))
{
	unsigned no = 0;

	while (text.len > 0) {
		const uint8_t *nl = memchr(text.p, '\n', text.len);
		size_t n = nl != NULL ? (size_t)(nl - text.p) : text.len;
		struct span line = span_make(text.p, n);
		int r;

		no++;
		text = span_skip(text, n + (nl != NULL));
		if (n > USERS_LINE_MAX) {
			diagf(b, no, "line longer than %u bytes, skipped", USERS_LINE_MAX);
			continue;
		}
		if (memchr(line.p, '\0', line.len) != NULL) {
			diagf(b, no, "NUL byte in line, skipped");
			continue;
		}
		line = span_trim(line);
		if (line.len == 0 || line.p[0] == '#')
			continue;
		r = fn(b, line, no);
		if (r < 0)
			return r;
	}
	return 0;
}

static int passwd_line(struct build *b, struct span line, unsigned no)
{
	struct users_snap *s = b->s;
	const uint8_t *c1 = memchr(line.p, ':', line.len);
	struct span addr, pw, rest;
	char tmp[84], pwbuf[USERS_LINE_MAX + 1];
	struct tab_slot *dup;
	const char *why, *hash;
	enum users_scheme scheme;

	if (c1 == NULL) {
		diagf(b, no, "no ':' after the address, skipped");
		return 0;
	}
	addr = span_make(line.p, (size_t)(c1 - line.p));
	if (!users_addr_valid(addr)) {
		diagf(b, no, "'%s' is not a full address (user@domain), skipped",
		      shown(addr, tmp));
		return 0;
	}
	dup = tab_find(&s->addrs, addr);
	if (dup != NULL) {
		diagf(b, no, "duplicate user %s (first on line %u), skipped",
		      shown(addr, tmp), s->users[dup->idx].line);
		return 0;
	}
	pw = span_skip(line, addr.len + 1);
	const uint8_t *c2 = memchr(pw.p, ':', pw.len);
	rest = c2 != NULL ? span_skip(pw, (size_t)(c2 - pw.p) + 1) : span_make(pw.p, 0);
	if (c2 != NULL)
		pw.len = (size_t)(c2 - pw.p);
	memcpy(pwbuf, pw.p, pw.len);
	pwbuf[pw.len] = '\0';
	if (users_parse_password(pwbuf, &scheme, &hash, &why) < 0) {
		/* The user still receives mail; it just cannot log in. */
		diagf(b, no, "user %s: %s: login disabled", shown(addr, tmp), why);
		scheme = USERS_SCHEME_NONE;
		hash = "";
	} else if (scheme == USERS_SCHEME_PLAIN) {
		diagf(b, no, "user %s: weak password scheme {PLAIN}: rehash with "
		      "'ringmail user passwd'", shown(addr, tmp));
	}
	if (s->nusers == s->capusers) {
		size_t cap = s->capusers ? s->capusers * 2 : 64;
		struct users_entry *n = realloc(s->users, cap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		s->users = n;
		s->capusers = cap;
	}
	struct users_entry *e = &s->users[s->nusers];
	e->addr = arena_strdup(&s->arena, addr);
	e->hash = arena_strdup(&s->arena, span_cstr(hash));
	e->rest = arena_strdup(&s->arena, rest);
	explicit_bzero(pwbuf, sizeof(pwbuf));
	if (e->addr == NULL || e->hash == NULL || e->rest == NULL)
		return -ENOMEM;
	e->scheme = scheme;
	e->line = no;
	if (tab_add(&s->addrs, e->addr, TAB_USER, (uint32_t)s->nusers) < 0)
		return -ENOMEM;
	s->nusers++;
	return 0;
}

static int alias_add(struct users_snap *s, const char *addr, struct span raw, unsigned no)
{
	if (s->naliases == s->capaliases) {
		size_t cap = s->capaliases ? s->capaliases * 2 : 32;
		struct alias_rec *n = realloc(s->aliases, cap * sizeof(*n));

		if (n == NULL)
			return -ENOMEM;
		s->aliases = n;
		s->capaliases = cap;
	}
	s->aliases[s->naliases] = (struct alias_rec){ .addr = addr, .raw = raw, .line = no };
	if (tab_add(&s->addrs, addr, TAB_ALIAS, (uint32_t)s->naliases) < 0)
		return -ENOMEM;
	s->naliases++;
	return 0;
}

/* Splits a target list at commas and blanks; calls fn on each piece. */
static int each_target(struct span raw, int (*fn)(void *arg, struct span t), void *arg)
{
	size_t i = 0;

	while (i < raw.len) {
		while (i < raw.len && (raw.p[i] == ',' || raw.p[i] == ' ' || raw.p[i] == '\t'))
			i++;
		size_t start = i;
		while (i < raw.len && raw.p[i] != ',' && raw.p[i] != ' ' && raw.p[i] != '\t')
			i++;
		if (i > start) {
			int r = fn(arg, span_make(raw.p + start, i - start));
			if (r != 0)
				return r;
		}
	}
	return 0;
}

static int target_invalid(void *arg, struct span t)
{
	struct span *bad = arg;

	if (users_addr_valid(t))
		return 0;
	*bad = t;
	return 1;
}

static int count_target(void *arg, struct span t)
{
	(void)t;
	(*(size_t *)arg)++;
	return 0;
}

static int aliases_line(struct build *b, struct span line, unsigned no)
{
	struct users_snap *s = b->s;
	const uint8_t *c = memchr(line.p, ':', line.len);
	struct span addr, raw, bad;
	struct tab_slot *dup;
	char tmp[84];
	size_t n = 0;

	if (c == NULL) {
		diagf(b, no, "no ':' after the alias, skipped");
		return 0;
	}
	addr = span_trim(span_make(line.p, (size_t)(c - line.p)));
	raw = span_trim(span_skip(line, (size_t)(c - line.p) + 1));
	if (!users_addr_valid(addr)) {
		diagf(b, no, "'%s' is not a full address (alias@domain), skipped",
		      shown(addr, tmp));
		return 0;
	}
	if (each_target(raw, target_invalid, &bad) != 0) {
		diagf(b, no, "alias %s: target '%s' is not a full address, skipped",
		      shown(addr, tmp), shown(bad, (char[84]){ 0 }));
		return 0;
	}
	each_target(raw, count_target, &n);
	if (n == 0) {
		diagf(b, no, "alias %s has no target, skipped", shown(addr, tmp));
		return 0;
	}
	dup = tab_find(&s->addrs, addr);
	if (dup != NULL && dup->kind == TAB_USER) {
		diagf(b, no, "alias %s is also a user (passwd line %u), skipped",
		      shown(addr, tmp), s->users[dup->idx].line);
		return 0;
	}
	if (dup != NULL) {
		diagf(b, no, "duplicate alias %s (first on line %u), skipped",
		      shown(addr, tmp), s->aliases[dup->idx].line);
		return 0;
	}
	const char *key = arena_strdup(&s->arena, addr);
	if (key == NULL)
		return -ENOMEM;
	return alias_add(s, key, raw, no);
}

/* ---- alias expansion --------------------------------------------------- */

struct expand {
	struct build *b;
	struct alias_rec *root;
	const char *out[USERS_ALIAS_TARGETS_MAX];
	int n;
	unsigned depth;
	int err; /* -ELOOP, -E2BIG */
};

static int expand_target(void *arg, struct span t);

static void expand_push(struct expand *x, const char *addr)
{
	for (int i = 0; i < x->n; i++) {
		if (strcasecmp(x->out[i], addr) == 0)
			return;
	}
	if (x->n == (int)USERS_ALIAS_TARGETS_MAX) {
		x->err = -E2BIG;
		return;
	}
	x->out[x->n++] = addr;
}

static int expand_target(void *arg, struct span t)
{
	struct expand *x = arg;
	struct users_snap *s = x->b->s;
	struct tab_slot *sl = tab_find(&s->addrs, t);
	char tmp[84];

	if (sl != NULL && sl->kind == TAB_USER) {
		expand_push(x, s->users[sl->idx].addr);
	} else if (sl != NULL) {
		struct alias_rec *a = &s->aliases[sl->idx];

		if (x->depth >= USERS_ALIAS_DEPTH_MAX || a->state == 1) {
			x->err = -ELOOP;
			return 1;
		}
		x->depth++;
		a->state = 1;
		each_target(a->raw, expand_target, x);
		a->state = 0;
		x->depth--;
	} else if (tab_find(&s->domains, addr_domain(t)) != NULL) {
		diagf(x->b, x->root->line, "alias %s: target %s is no local user or alias, "
		      "dropped", x->root->addr, shown(t, tmp));
	} else {
		/* Another domain: forwarded as written. */
		char *f = arena_strdup(&s->arena, t);

		if (f == NULL) {
			x->err = -ENOMEM;
			return 1;
		}
		expand_push(x, f);
	}
	return x->err != 0;
}

static int expand_aliases(struct build *b)
{
	struct users_snap *s = b->s;
	const char *file = b->file;

	for (size_t i = 0; i < s->naliases; i++) {
		struct alias_rec *a = &s->aliases[i];
		struct expand x = { .b = b, .root = a };

		a->state = 1;
		each_target(a->raw, expand_target, &x);
		a->state = 2;
		if (x.err == -ENOMEM)
			return -ENOMEM;
		if (x.err == -ELOOP) {
			diagf(b, a->line, "alias %s: loop or nesting deeper than %u, "
			      "unusable", a->addr, USERS_ALIAS_DEPTH_MAX);
			continue;
		}
		if (x.err == -E2BIG) {
			diagf(b, a->line, "alias %s: more than %u targets, unusable",
			      a->addr, USERS_ALIAS_TARGETS_MAX);
			continue;
		}
		if (x.n == 0) {
			diagf(b, a->line, "alias %s: no usable target, unusable", a->addr);
			continue;
		}
		a->targets = arena_alloc(&s->arena, (size_t)x.n * sizeof(char *));
		if (a->targets == NULL)
			return -ENOMEM;
		memcpy(a->targets, x.out, (size_t)x.n * sizeof(char *));
		a->ntargets = x.n;
	}
	b->file = file;
	return 0;
}

/* ---- local domains and postmaster ----------------------------------- */

static int add_domain(struct users_snap *s, struct span d)
{
	if (d.len == 0 || tab_find(&s->domains, d) != NULL)
		return 0;
	char *k = arena_strdup_lc(&s->arena, d);
	if (k == NULL)
		return -ENOMEM;
	return tab_add(&s->domains, k, TAB_USER, 0);
}

/* RFC 5321 §4.5.1: postmaster@ every local domain must be deliverable. */
static int add_postmasters(struct build *b)
{
	struct users_snap *s = b->s;
	const struct users *u = b->u;
	char buf[USERS_ADDR_MAX + 16];

	for (size_t i = 0; i <= s->domains.mask && s->domains.s != NULL; i++) {
		const char *d = s->domains.s[i].key;
		const char *target = u->postmaster;

		if (d == NULL)
			continue;
		int n = snprintf(buf, sizeof(buf), "postmaster@%s", d);
		if (n < 0 || (size_t)n >= sizeof(buf) || !users_addr_valid(span_cstr(buf)))
			continue;
		if (tab_find(&s->addrs, span_cstr(buf)) != NULL)
			continue;
		for (size_t j = 0; target == NULL && j < s->nusers; j++) {
			if (span_eq_nocase(addr_domain(span_cstr(s->users[j].addr)),
					   span_cstr(d)))
				target = s->users[j].addr;
		}
		if (target == NULL && s->nusers > 0) {
			target = s->users[0].addr;
			diagf(b, 0, "domain %s has no user: postmaster@%s goes to %s",
			      d, d, target);
		}
		if (target == NULL) {
			diagf(b, 0, "no user at all: postmaster@%s cannot be delivered", d);
			continue;
		}
		const char *key = arena_strdup(&s->arena, span_cstr(buf));
		const char *t = arena_strdup(&s->arena, span_cstr(target));
		if (key == NULL || t == NULL)
			return -ENOMEM;
		int r = alias_add(s, key, span_cstr(t), 0);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- building a snapshot from file contents -------------------------- */

static int snap_build(const struct users *u, struct span passwd, struct span aliases,
		      struct users_snap **snap_r)
{
	struct users_snap *s = calloc(1, sizeof(*s));
	struct build b = { .u = u, .s = s };
	int r;

	if (s == NULL)
		return -ENOMEM;
	atomic_init(&s->refs, 1);
	b.file = u->passwd_path;
	r = for_each_line(&b, passwd, passwd_line);
	if (r < 0)
		goto err;
	b.file = u->aliases_path;
	r = for_each_line(&b, aliases, aliases_line);
	if (r < 0)
		goto err;
	for (size_t i = 0; i < u->ndomains; i++) {
		r = add_domain(s, span_cstr(u->domains[i]));
		if (r < 0)
			goto err;
	}
	for (size_t i = 0; u->ndomains == 0 && i < s->nusers; i++) {
		r = add_domain(s, addr_domain(span_cstr(s->users[i].addr)));
		if (r < 0)
			goto err;
	}
	r = add_postmasters(&b);
	if (r < 0)
		goto err;
	r = expand_aliases(&b);
	if (r < 0)
		goto err;
	for (size_t i = 0; i < s->nusers; i++) {
		enum users_scheme sc = s->users[i].scheme;

		if (sc != USERS_SCHEME_NONE && sc != USERS_SCHEME_PLAIN) {
			s->dummy = s->users[i].hash;
			s->dummy_scheme = sc;
			break;
		}
	}
	*snap_r = s;
	return 0;
err:
	snap_free(s);
	return r;
}

/* ---- snapshot access ------------------------------------------------- */

const struct users_snap *users_snap_get(struct users *u)
{
	struct users_snap *s;
	uint_fast64_t e;

	/* Register as a reader of the current epoch, re-checking that the
	 * epoch did not move meanwhile: a writer that swapped the pointer
	 * waits until the old epoch has no reader before putting the old
	 * snapshot, so the one loaded here cannot be freed before the
	 * reference is taken. */
	for (;;) {
		e = atomic_load(&u->epoch);
		atomic_fetch_add(&u->readers[e & 1], 1);
		if (atomic_load(&u->epoch) == e)
			break;
		atomic_fetch_sub(&u->readers[e & 1], 1);
	}
	s = atomic_load(&u->cur);
	atomic_fetch_add(&s->refs, 1);
	atomic_fetch_sub(&u->readers[e & 1], 1);
	return s;
}

void users_snap_put(const struct users_snap **snap_r)
{
	struct users_snap *s = (struct users_snap *)*snap_r;

	if (s == NULL)
		return;
	*snap_r = NULL;
	if (atomic_fetch_sub(&s->refs, 1) == 1)
		snap_free(s);
}

/* Called with reload_lock held. */
static void publish(struct users *u, struct users_snap *s)
{
	s->gen = ++u->gen;
	struct users_snap *old = atomic_exchange(&u->cur, s);
	uint_fast64_t e = atomic_fetch_add(&u->epoch, 1);

	while (atomic_load(&u->readers[e & 1]) != 0)
		sched_yield();
	const struct users_snap *o = old;
	users_snap_put(&o);
}

uint64_t users_snap_generation(const struct users_snap *s)
{
	return s->gen;
}

size_t users_snap_count(const struct users_snap *s)
{
	return s->nusers;
}

const struct users_entry *users_snap_entry(const struct users_snap *s, size_t i)
{
	return i < s->nusers ? &s->users[i] : NULL;
}

const struct users_entry *users_snap_find(const struct users_snap *s, struct span addr)
{
	const struct tab_slot *sl;

	if (addr.len == 0 || addr.len > USERS_ADDR_MAX)
		return NULL;
	sl = tab_find(&s->addrs, addr);
	return sl != NULL && sl->kind == TAB_USER ? &s->users[sl->idx] : NULL;
}

const char *users_snap_dummy_hash(const struct users_snap *s, enum users_scheme *scheme_r)
{
	*scheme_r = s->dummy_scheme;
	return s->dummy;
}

bool users_snap_is_local_domain(const struct users_snap *s, struct span domain)
{
	if (domain.len == 0 || domain.len > USERS_DOMAIN_MAX)
		return false;
	return tab_find(&s->domains, domain) != NULL;
}

int users_snap_resolve(const struct users_snap *s, struct span addr,
		       const char *const **targets_r)
{
	const struct tab_slot *sl;

	if (addr.len == 0 || addr.len > USERS_ADDR_MAX)
		return -ENOENT;
	sl = tab_find(&s->addrs, addr);
	if (sl == NULL)
		return -ENOENT;
	if (sl->kind == TAB_USER) {
		*targets_r = &s->users[sl->idx].addr;
		return 1;
	}
	const struct alias_rec *a = &s->aliases[sl->idx];
	if (a->ntargets == 0)
		return -ENOENT;
	*targets_r = a->targets;
	return a->ntargets;
}

bool users_snap_may_send_as(const struct users_snap *s, struct span user, struct span from)
{
	const char *const *t;
	const struct users_entry *e = users_snap_find(s, user);
	int n;

	if (e == NULL)
		return false;
	if (span_eq_nocase(span_cstr(e->addr), from))
		return true;
	const struct tab_slot *sl = tab_find(&s->addrs, from);
	if (sl == NULL || sl->kind != TAB_ALIAS)
		return false;
	n = users_snap_resolve(s, from, &t);
	for (int i = 0; i < n; i++) {
		if (t[i] == e->addr)
			return true;
	}
	return false;
}

int users_lookup(struct users *u, struct span addr, char *canon, size_t size)
{
	const struct users_snap *s = users_snap_get(u);
	const struct users_entry *e = users_snap_find(s, addr);
	int r = -ENOENT;

	if (e != NULL) {
		size_t n = strlen(e->addr);

		r = -ENAMETOOLONG;
		if (n < size) {
			memcpy(canon, e->addr, n + 1);
			r = 0;
		}
	}
	users_snap_put(&s);
	return r;
}

bool users_is_local_domain(struct users *u, struct span domain)
{
	const struct users_snap *s = users_snap_get(u);
	bool r = users_snap_is_local_domain(s, domain);

	users_snap_put(&s);
	return r;
}

int users_resolve(struct users *u, struct span addr,
		  void (*fn)(void *arg, const char *target), void *arg)
{
	const struct users_snap *s = users_snap_get(u);
	const char *const *t;
	int n = users_snap_resolve(s, addr, &t);

	for (int i = 0; i < n; i++)
		fn(arg, t[i]);
	users_snap_put(&s);
	return n;
}

bool users_may_send_as(struct users *u, struct span user, struct span from)
{
	const struct users_snap *s = users_snap_get(u);
	bool r = users_snap_may_send_as(s, user, from);

	users_snap_put(&s);
	return r;
}

/* ---- files and reloading ----------------------------------------------- */

static void stamp_of(const struct stat *st, struct fstamp *f)
{
	*f = (struct fstamp){ .exists = true, .dev = st->st_dev, .ino = st->st_ino,
			      .size = st->st_size, .mtime = st->st_mtim };
}

static bool stamp_eq(const struct fstamp *a, const struct fstamp *b)
{
	if (a->exists != b->exists)
		return false;
	return !a->exists || (a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
			      a->mtime.tv_sec == b->mtime.tv_sec &&
			      a->mtime.tv_nsec == b->mtime.tv_nsec);
}

static int stamp_path(const char *path, struct fstamp *f)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		if (errno != ENOENT)
			return -errno;
		*f = (struct fstamp){ .exists = false };
		return 0;
	}
	stamp_of(&st, f);
	return 0;
}

/* Reads a whole file into *buf_r (malloc'd, may be NULL when missing). */
static int read_file(const char *path, char **buf_r, size_t *len_r, struct fstamp *f)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, r;

	*buf_r = NULL;
	*len_r = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			return -errno;
		*f = (struct fstamp){ .exists = false };
		return -ENOENT;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto err;
	}
	if (st.st_size > (off_t)USERS_FILE_MAX) {
		r = -EFBIG;
		goto err;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		r = -ENOMEM;
		goto err;
	}
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto err;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	stamp_of(&st, f);
	close(fd);
	*buf_r = buf;
	*len_r = len;
	return 0;
err:
	free(buf);
	close(fd);
	return r;
}

static int reload_locked(struct users *u)
{
	struct fstamp pst, ast;
	char *p = NULL, *a = NULL;
	size_t plen = 0, alen = 0;
	const char *which = u->passwd_path;
	struct users_snap *s;
	int r;

	r = read_file(u->passwd_path, &p, &plen, &pst);
	if (r == -ENOENT)
		u->diag(u->diag_arg, u->passwd_path, 0, "missing: no users");
	else if (r < 0)
		goto fail;
	which = u->aliases_path;
	r = read_file(u->aliases_path, &a, &alen, &ast);
	if (r < 0 && r != -ENOENT)
		goto fail;
	r = snap_build(u, span_make(p, plen), span_make(a, alen), &s);
	if (p != NULL)
		explicit_bzero(p, plen); /* {PLAIN} lines hold passwords */
	free(p);
	free(a);
	if (r < 0)
		return r;
	u->passwd_st = pst;
	u->aliases_st = ast;
	publish(u, s);
	return 0;
fail:
	if (p != NULL)
		explicit_bzero(p, plen);
	free(p);
	free(a);
	char msg[128];
	snprintf(msg, sizeof(msg), "cannot read: %s; keeping the previous tables",
		 strerror(-r));
	u->diag(u->diag_arg, which, 0, msg);
	return r;
}

int users_reload(struct users *u)
{
	int r;

	pthread_mutex_lock(&u->reload_lock);
	r = reload_locked(u);
	pthread_mutex_unlock(&u->reload_lock);
	return r;
}

int users_reload_if_changed(struct users *u)
{
	struct fstamp pst, ast;
	int r;

	pthread_mutex_lock(&u->reload_lock);
	r = stamp_path(u->passwd_path, &pst);
	if (r == 0)
		r = stamp_path(u->aliases_path, &ast);
	if (r == 0 && (!stamp_eq(&pst, &u->passwd_st) || !stamp_eq(&ast, &u->aliases_st))) {
		r = reload_locked(u);
		if (r == 0)
			r = 1;
	}
	pthread_mutex_unlock(&u->reload_lock);
	return r;
}

static void *watcher_main(void *arg)
{
	struct users *u = arg;

	pthread_mutex_lock(&u->wlock);
	while (!u->wstop) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += USERS_WATCH_INTERVAL_MS / 1000;
		ts.tv_nsec += (long)(USERS_WATCH_INTERVAL_MS % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!u->wstop && !u->wkick &&
		       pthread_cond_timedwait(&u->wcond, &u->wlock, &ts) == 0)
			;
		if (u->wstop)
			break;
		bool kick = u->wkick;
		u->wkick = false;
		pthread_mutex_unlock(&u->wlock);
		if (kick)
			users_reload(u);
		else
			users_reload_if_changed(u);
		pthread_mutex_lock(&u->wlock);
	}
	pthread_mutex_unlock(&u->wlock);
	return NULL;
}

void users_reload_async(struct users *u)
{
	pthread_mutex_lock(&u->wlock);
	u->wkick = true;
	pthread_cond_signal(&u->wcond);
	pthread_mutex_unlock(&u->wlock);
}

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);

	if (p != NULL)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

int users_open(const struct users_config *cfg, struct users **users_r)
{
	const char *dir = cfg->data_dir != NULL ? cfg->data_dir : USERS_DATA_DIR_DEFAULT;
	struct users *u = calloc(1, sizeof(*u));
	pthread_condattr_t ca;
	int r = -ENOMEM;

	if (u == NULL)
		return -ENOMEM;
	pthread_mutex_init(&u->reload_lock, NULL);
	pthread_mutex_init(&u->wlock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&u->wcond, &ca);
	pthread_condattr_destroy(&ca);
	u->diag = cfg->diag != NULL ? cfg->diag : diag_stderr;
	u->diag_arg = cfg->diag_arg;
	u->passwd_path = cfg->passwd_path != NULL ? strdup(cfg->passwd_path)
						  : path_join(dir, USERS_PASSWD_FILE);
	u->aliases_path = cfg->aliases_path != NULL ? strdup(cfg->aliases_path)
						    : path_join(dir, USERS_ALIASES_FILE);
	if (u->passwd_path == NULL || u->aliases_path == NULL)
		goto err;
	if (cfg->postmaster != NULL) {
		if (!users_addr_valid(span_cstr(cfg->postmaster))) {
			r = -EINVAL;
			goto err;
		}
		u->postmaster = strdup(cfg->postmaster);
		if (u->postmaster == NULL)
			goto err;
	}
	if (cfg->nlocal_domains > 0) {
		u->domains = calloc(cfg->nlocal_domains, sizeof(char *));
		if (u->domains == NULL)
			goto err;
		for (size_t i = 0; i < cfg->nlocal_domains; i++) {
			const char *d = cfg->local_domains[i];

			if (d == NULL || d[0] == '\0' || strlen(d) > USERS_DOMAIN_MAX) {
				r = -EINVAL;
				goto err;
			}
			u->domains[u->ndomains] = strdup(d);
			if (u->domains[u->ndomains] == NULL)
				goto err;
			u->ndomains++;
		}
	}
	/* Readers must always find a snapshot, even before the first load. */
	struct users_snap *empty = calloc(1, sizeof(*empty));
	if (empty == NULL)
		goto err;
	atomic_init(&empty->refs, 1);
	atomic_init(&u->cur, empty);
	r = users_reload(u);
	if (r < 0)
		goto err;
	if (cfg->watch) {
		r = -pthread_create(&u->watcher, NULL, watcher_main, u);
		if (r < 0)
			goto err;
		u->watching = true;
	}
	*users_r = u;
	return 0;
err:
	users_free(&u);
	return r;
}

void users_free(struct users **users_r)
{
	struct users *u = *users_r;

	if (u == NULL)
		return;
	if (u->watching) {
		pthread_mutex_lock(&u->wlock);
		u->wstop = true;
		pthread_cond_signal(&u->wcond);
		pthread_mutex_unlock(&u->wlock);
		pthread_join(u->watcher, NULL);
	}
	const struct users_snap *s = atomic_load(&u->cur);
	users_snap_put(&s);
	for (size_t i = 0; i < u->ndomains; i++)
		free(u->domains[i]);
	free(u->domains);
	free(u->passwd_path);
	free(u->aliases_path);
	free(u->postmaster);
	pthread_cond_destroy(&u->wcond);
	pthread_mutex_destroy(&u->wlock);
	pthread_mutex_destroy(&u->reload_lock);
	free(u);
	*users_r = NULL;
}
