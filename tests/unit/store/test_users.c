/* Tests for store/users: passwd-file parsing, hash schemes against known
 * vectors, aliases and postmaster, reloads under concurrent readers.
 *
 * The hash vectors were made once with Debian 12's tools and are constants
 * here, so the tests need neither tool:
 *   printf 'correct horse\n' | mkpasswd -m yescrypt|sha-512|sha-256|bcrypt|descrypt|md5crypt -s
 *   doveadm pw -s BLF-CRYPT|SHA512-CRYPT|SHA256-CRYPT -p 'correct horse' */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/users.h"

#define PW "correct horse"

/* Criterion may run a parameterized test in a fresh process: no pointers. */
struct vector {
	char field[160];
	enum users_scheme scheme;
};

static const struct vector vectors[] = {
	{ "{YESCRYPT}$y$j9T$PI50kzykI6LuHgxWQsjH80$AwdUH/uiCLztitVE9cFBSVGIc3aejRAtQet.qhqVkm5",
	  USERS_SCHEME_YESCRYPT },
	{ "$y$j9T$PI50kzykI6LuHgxWQsjH80$AwdUH/uiCLztitVE9cFBSVGIc3aejRAtQet.qhqVkm5",
	  USERS_SCHEME_YESCRYPT },
	{ "{SHA512-CRYPT}$6$btodD84RYVpYYv1Z$jzp5uAca2247GLyrsHpCQW/oOk.ovF8LfaSsFbBqDbjwPtoGaK3Cq6wtE3nkOWjzEC7xgg10XBKgYI8m362NF1",
	  USERS_SCHEME_SHA512_CRYPT },
	{ "{SHA512-CRYPT}$6$HTbWS6co18GdCo3L$v9QhEOKuogLJqNsDHX3G8yvPyhTRkXLdPfDetvNshy7KvngxTSFRqvsNuGZK0Kdy/votDMW8PQ0.eLu1lmPSV/",
	  USERS_SCHEME_SHA512_CRYPT },
	{ "{SHA256-CRYPT}$5$av3M5td/Xt2edaUO$OowOS3lFuh6kjQvN/1nzsZfxILO/2trLosyjqjhUc24",
	  USERS_SCHEME_SHA256_CRYPT },
	{ "{sha256-crypt}$5$hTHLVO7fTfN0Nhij$CvinefC8v5L735jjWGmZJiFvFUY.aKlUUWYqebllUvB",
	  USERS_SCHEME_SHA256_CRYPT },
	{ "{BLF-CRYPT}$2b$05$acKEWCzg6hP/mpXBtMGC6OwbQ4ubgc2l99/0l1zKOXo0bJtfIJuPi",
	  USERS_SCHEME_BLF_CRYPT },
	{ "{BLF-CRYPT}$2y$05$aAhPjNU7sEyxJY2V74rm9udwXZz7cltuyqLBGFTFknzzVyQQ5gdcW",
	  USERS_SCHEME_BLF_CRYPT },
	{ "{CRYPT}$2y$05$aAhPjNU7sEyxJY2V74rm9udwXZz7cltuyqLBGFTFknzzVyQQ5gdcW",
	  USERS_SCHEME_BLF_CRYPT },
	{ "{CRYPT}O7JprIJiVc.z6", USERS_SCHEME_CRYPT },
	{ "$1$TyzNFtHi$SSsYz.eB0GILDCADJT4VF.", USERS_SCHEME_CRYPT },
	{ "{PLAIN}" PW, USERS_SCHEME_PLAIN },
};

ParameterizedTestParameters(users, scheme_vectors)
{
	return cr_make_param_array(struct vector, vectors, sizeof(vectors) / sizeof(vectors[0]));
}

ParameterizedTest(const struct vector *v, users, scheme_vectors)
{
	enum users_scheme scheme;
	const char *hash, *why;

	cr_assert_eq(users_parse_password(v->field, &scheme, &hash, &why), 0, "%s", v->field);
	cr_assert_eq(scheme, v->scheme, "%s: scheme %s", v->field, users_scheme_str(scheme));
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT(PW)), 1, "%s", v->field);
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("Correct horse")), 0);
	/* Traditional DES crypt only reads 8 characters. */
	if (hash[0] == '$' || scheme == USERS_SCHEME_PLAIN) {
		cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("correct horsE")), 0);
		cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("correct hors")), 0);
	}
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("")), 0);
	/* A NUL inside the password never matches (crypt would cut there). */
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT(PW "\0x")), 0);
}

Test(users, password_fields_refused_or_disabled)
{
	enum users_scheme scheme;
	const char *hash, *why;

	cr_assert_eq(users_parse_password("{MD5}abc", &scheme, &hash, &why), -EINVAL);
	cr_assert_not_null(why);
	cr_assert_eq(users_parse_password("{SHA512-CRYPT", &scheme, &hash, &why), -EINVAL);
	cr_assert_eq(users_parse_password("{SHA512-CRYPT}$5$abc$def", &scheme, &hash, &why),
		     -EINVAL, "scheme and hash disagree");
	cr_assert_eq(users_parse_password("{YESCRYPT}$6$abc$def", &scheme, &hash, &why), -EINVAL);
	cr_assert_eq(users_parse_password("{BLF-CRYPT}$y$abc", &scheme, &hash, &why), -EINVAL);
	cr_assert_eq(users_parse_password("$6$a b", &scheme, &hash, &why), -EINVAL);
	cr_assert_eq(users_parse_password("", &scheme, &hash, &why), 0);
	cr_assert_eq(scheme, USERS_SCHEME_NONE);
	cr_assert_eq(users_parse_password("!$6$abc", &scheme, &hash, &why), 0);
	cr_assert_eq(scheme, USERS_SCHEME_NONE);
	cr_assert_eq(users_parse_password("{SHA512-CRYPT}*", &scheme, &hash, &why), 0);
	cr_assert_eq(scheme, USERS_SCHEME_NONE);
	cr_assert_eq(users_password_verify(USERS_SCHEME_NONE, "", SPAN_LIT("")), 0);
	/* A setting crypt does not know is an error, not a match. */
	cr_assert_lt(users_password_verify(USERS_SCHEME_CRYPT, "$9$nonsense", SPAN_LIT(PW)), 0);
}

Test(users, new_passwords_are_yescrypt)
{
	char field[256], again[256];
	enum users_scheme scheme;
	const char *hash, *why;

	cr_assert_eq(users_password_hash(SPAN_LIT("s3cret pass"), field, sizeof(field)), 0);
	cr_assert(strncmp(field, "{CRYPT}$y$", 10) == 0, "%s", field);
	cr_assert_eq(users_parse_password(field, &scheme, &hash, &why), 0);
	cr_assert_eq(scheme, USERS_SCHEME_YESCRYPT);
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("s3cret pass")), 1);
	cr_assert_eq(users_password_verify(scheme, hash, SPAN_LIT("s3cret pasS")), 0);
	cr_assert_eq(users_password_hash(SPAN_LIT("s3cret pass"), again, sizeof(again)), 0);
	cr_assert_str_neq(field, again, "a fresh salt each time");
	cr_assert_eq(users_password_hash(SPAN_LIT("x"), field, 20), -ENAMETOOLONG);
	cr_assert_eq(users_password_hash(SPAN_LIT("a\0b"), field, sizeof(field)), -EINVAL);
}

Test(users, address_validity)
{
	cr_assert(users_addr_valid(SPAN_LIT("a@b")));
	cr_assert(users_addr_valid(SPAN_LIT("first.last+tag@example.com")));
	cr_assert(!users_addr_valid(SPAN_LIT("")));
	cr_assert(!users_addr_valid(SPAN_LIT("alice")));
	cr_assert(!users_addr_valid(SPAN_LIT("@example.com")));
	cr_assert(!users_addr_valid(SPAN_LIT("alice@")));
	cr_assert(!users_addr_valid(SPAN_LIT("a@b@c")));
	cr_assert(!users_addr_valid(SPAN_LIT("a b@c")));
	cr_assert(!users_addr_valid(SPAN_LIT("a:b@c")));
	cr_assert(!users_addr_valid(SPAN_LIT("a@.c")));
	cr_assert(!users_addr_valid(SPAN_LIT("a@c.")));
	cr_assert(!users_addr_valid(SPAN_LIT("a\x01@c")));
	char local[USERS_LOCAL_MAX + 10];
	memset(local, 'x', sizeof(local));
	memcpy(local + USERS_LOCAL_MAX, "@c", 3);
	cr_assert(users_addr_valid(span_cstr(local)));
	memcpy(local + USERS_LOCAL_MAX + 1, "@c", 3);
	cr_assert(!users_addr_valid(span_cstr(local)));
}

/* ---- files ---------------------------------------------------------------- */

struct diags {
	pthread_mutex_t lock;
	int n;
	unsigned line[64];
	char msg[64][256];
};

static struct diags diags = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void collect(void *arg, const char *file, unsigned line, const char *msg)
{
	struct diags *d = arg;

	(void)file;
	pthread_mutex_lock(&d->lock);
	if (d->n < 64) {
		d->line[d->n] = line;
		snprintf(d->msg[d->n], sizeof(d->msg[0]), "%s", msg);
		d->n++;
	}
	pthread_mutex_unlock(&d->lock);
}

/* Returns the message reported for line, or NULL. */
static const char *diag_at(unsigned line)
{
	for (int i = 0; i < diags.n; i++) {
		if (diags.line[i] == line)
			return diags.msg[i];
	}
	return NULL;
}

static bool diag_has(const char *needle)
{
	for (int i = 0; i < diags.n; i++) {
		if (strstr(diags.msg[i], needle) != NULL)
			return true;
	}
	return false;
}

static char dir[64];

static void setup_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/ringmail-users-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	diags.n = 0;
}

static void teardown_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)system(cmd);
}

static void write_file(const char *name, const char *text)
{
	char path[128], tmp[140];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(rename(tmp, path), 0);
}

static struct users *open_users(const char *const *domains, size_t ndomains,
				const char *postmaster, bool watch)
{
	struct users_config cfg = {
		.data_dir = dir,
		.local_domains = domains,
		.nlocal_domains = ndomains,
		.postmaster = postmaster,
		.watch = watch,
		.diag = collect,
		.diag_arg = &diags,
	};
	struct users *u = NULL;

	cr_assert_eq(users_open(&cfg, &u), 0);
	return u;
}

#define SHA512 "{SHA512-CRYPT}$6$btodD84RYVpYYv1Z$jzp5uAca2247GLyrsHpCQW/oOk.ovF8LfaSsFbBqDbjwPtoGaK3Cq6wtE3nkOWjzEC7xgg10XBKgYI8m362NF1"

static const char bad_passwd[] =
	"# a comment\n"                                             /* 1 */
	"alice@example.com:" SHA512 ":1000:1000::/home/alice::\n"   /* 2 good */
	"\n"                                                        /* 3 */
	"no-colon-here\n"                                           /* 4 bad */
	"bob:" SHA512 "\n"                                          /* 5 bad: no domain */
	"Alice@Example.com:{PLAIN}x\n"                              /* 6 bad: duplicate */
	"carol@example.com:{MD5}abcdef\n"                           /* 7 kept, no login */
	"dave@example.com:{SHA256-CRYPT}$6$x$y\n"                   /* 8 kept, no login */
	"eve@example.com:{PLAIN}" PW "\n"                           /* 9 good, weak */
	"  frank@example.org:" SHA512 "  \r\n"                      /* 10 good */
	"ga ry@example.org:x\n"                                     /* 11 bad */
	"@example.org:x\n"                                          /* 12 bad */
	"nul@example.org:x\0y\n"                                    /* 13 bad: NUL */
	"heidi@example.org:\n"                                      /* 14 kept, no password */
	"ivan@example.org:" SHA512;                                 /* 15 good, no newline */

Test(users, bad_lines_are_reported_with_line_numbers, .init = setup_dir, .fini = teardown_dir)
{
	char path[128];
	FILE *f;

	/* fputs would stop at the NUL of line 13: write the bytes. */
	snprintf(path, sizeof(path), "%s/passwd", dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(bad_passwd, 1, sizeof(bad_passwd) - 1, f), sizeof(bad_passwd) - 1);
	fclose(f);

	struct users *u = open_users(NULL, 0, NULL, false);
	const struct users_snap *s = users_snap_get(u);

	cr_assert_eq(users_snap_count(s), 7, "alice carol dave eve frank heidi ivan, got %zu",
		     users_snap_count(s));
	cr_assert_not_null(diag_at(4));
	cr_assert_not_null(diag_at(5));
	cr_assert_not_null(strstr(diag_at(5), "full address"), "%s", diag_at(5));
	cr_assert_not_null(strstr(diag_at(6), "duplicate"), "%s", diag_at(6));
	cr_assert_not_null(strstr(diag_at(6), "line 2"), "%s", diag_at(6));
	cr_assert_not_null(strstr(diag_at(7), "unknown password scheme"), "%s", diag_at(7));
	cr_assert_not_null(strstr(diag_at(8), "does not match"), "%s", diag_at(8));
	cr_assert_not_null(strstr(diag_at(9), "weak"), "%s", diag_at(9));
	cr_assert_null(strstr(diag_at(9), PW), "never log a password");
	cr_assert_not_null(diag_at(11));
	cr_assert_not_null(diag_at(12));
	cr_assert_not_null(strstr(diag_at(13), "NUL"));
	cr_assert_null(diag_at(1));
	cr_assert_null(diag_at(2));
	cr_assert_null(diag_at(10));
	cr_assert_null(diag_at(15));
	for (int i = 0; i < diags.n; i++)
		cr_assert_null(strstr(diags.msg[i], PW), "never log a password: %s", diags.msg[i]);

	const struct users_entry *e = users_snap_find(s, SPAN_LIT("alice@example.com"));
	cr_assert_not_null(e);
	cr_assert_eq(e->scheme, USERS_SCHEME_SHA512_CRYPT);
	cr_assert_str_eq(e->rest, "1000:1000::/home/alice::");
	cr_assert_eq(e->line, 2);
	cr_assert_eq(users_password_verify(e->scheme, e->hash, SPAN_LIT(PW)), 1);
	e = users_snap_find(s, SPAN_LIT("carol@example.com"));
	cr_assert_not_null(e, "a user with a bad hash still exists (mail still arrives)");
	cr_assert_eq(e->scheme, USERS_SCHEME_NONE);
	cr_assert_eq(users_snap_find(s, SPAN_LIT("dave@example.com"))->scheme, USERS_SCHEME_NONE);
	cr_assert_eq(users_snap_find(s, SPAN_LIT("eve@example.com"))->scheme, USERS_SCHEME_PLAIN);
	e = users_snap_find(s, SPAN_LIT("frank@example.org"));
	cr_assert_not_null(e, "blanks and CR around a line are ignored");
	cr_assert_eq(users_password_verify(e->scheme, e->hash, SPAN_LIT(PW)), 1);
	cr_assert_eq(users_snap_find(s, SPAN_LIT("heidi@example.org"))->scheme, USERS_SCHEME_NONE);
	cr_assert_not_null(users_snap_find(s, SPAN_LIT("ivan@example.org")));
	cr_assert_null(users_snap_find(s, SPAN_LIT("bob")));
	users_snap_put(&s);
	cr_assert_null(s);
	users_free(&u);
	cr_assert_null(u);
}

Test(users, overlong_line_is_skipped, .init = setup_dir, .fini = teardown_dir)
{
	size_t n = USERS_LINE_MAX + 100;
	char *text = malloc(n + 600);

	strcpy(text, "a@x.org:" SHA512 "\nlong@x.org:");
	size_t l = strlen(text);
	memset(text + l, 'z', n);
	strcpy(text + l + n, "\nb@x.org:" SHA512 "\n");
	write_file("passwd", text);
	free(text);

	struct users *u = open_users(NULL, 0, NULL, false);
	char canon[USERS_ADDR_MAX + 1];

	cr_assert_not_null(strstr(diag_at(2), "longer than"));
	cr_assert_eq(users_lookup(u, SPAN_LIT("a@x.org"), canon, sizeof(canon)), 0);
	cr_assert_eq(users_lookup(u, SPAN_LIT("b@x.org"), canon, sizeof(canon)), 0);
	cr_assert_eq(users_lookup(u, SPAN_LIT("long@x.org"), canon, sizeof(canon)), -ENOENT);
	users_free(&u);
}

Test(users, lookup_is_case_insensitive_and_returns_stored_spelling,
     .init = setup_dir, .fini = teardown_dir)
{
	write_file("passwd", "Alice.Smith@Example.COM:" SHA512 "\n");
	struct users *u = open_users(NULL, 0, NULL, false);
	char canon[USERS_ADDR_MAX + 1];

	cr_assert_eq(users_lookup(u, SPAN_LIT("alice.smith@example.com"), canon, sizeof(canon)), 0);
	cr_assert_str_eq(canon, "Alice.Smith@Example.COM");
	cr_assert_eq(users_lookup(u, SPAN_LIT("ALICE.SMITH@EXAMPLE.COM"), canon, sizeof(canon)), 0);
	cr_assert_eq(users_lookup(u, SPAN_LIT("alice.smith@example.co"), canon, sizeof(canon)),
		     -ENOENT);
	cr_assert_eq(users_lookup(u, SPAN_LIT("alice.smith@example.com"), canon, 5), -ENAMETOOLONG);
	cr_assert_eq(users_lookup(u, SPAN_LIT(""), canon, sizeof(canon)), -ENOENT);
	cr_assert(users_is_local_domain(u, SPAN_LIT("example.com")),
		  "without configured domains, the users' domains are local");
	cr_assert(users_is_local_domain(u, SPAN_LIT("EXAMPLE.com")));
	cr_assert(!users_is_local_domain(u, SPAN_LIT("example.org")));
	users_free(&u);
}

Test(users, missing_files_give_empty_tables, .init = setup_dir, .fini = teardown_dir)
{
	struct users *u = open_users(NULL, 0, NULL, false);
	const struct users_snap *s = users_snap_get(u);
	enum users_scheme sc;

	cr_assert_eq(users_snap_count(s), 0);
	cr_assert_null(users_snap_dummy_hash(s, &sc));
	cr_assert(diag_has("missing"));
	users_snap_put(&s);
	users_free(&u);
}

/* ---- aliases and postmaster --------------------------------------------- */

struct collected {
	int n;
	char t[8][USERS_ADDR_MAX + 1];
};

static void collect_target(void *arg, const char *target)
{
	struct collected *c = arg;

	if (c->n < 8)
		snprintf(c->t[c->n++], sizeof(c->t[0]), "%s", target);
}

static struct collected resolve(struct users *u, const char *addr, int *r)
{
	struct collected c = { 0 };

	*r = users_resolve(u, span_cstr(addr), collect_target, &c);
	return c;
}

static const char *const two_domains[] = { "example.com", "Example.NET" };

Test(users, aliases_resolve, .init = setup_dir, .fini = teardown_dir)
{
	int r;

	write_file("passwd",
		   "alice@example.com:" SHA512 "\n"
		   "bob@example.com:" SHA512 "\n"
		   "carol@example.net:" SHA512 "\n");
	write_file("aliases",
		   "# sales goes to two people\n"                          /* 1 */
		   "sales@example.com: alice@example.com, Bob@Example.com\n" /* 2 */
		   "team@example.com: sales@example.com carol@example.net\n" /* 3 nested */
		   "fwd@example.com: someone@elsewhere.org\n"                /* 4 forward */
		   "loop1@example.com: loop2@example.com\n"                  /* 5 loop */
		   "loop2@example.com: loop1@example.com\n"                  /* 6 loop */
		   "alice@example.com: bob@example.com\n"                    /* 7 is a user */
		   "ghost@example.com: nobody@example.com\n"                 /* 8 no target */
		   "bad@example.com: not-an-address\n"                      /* 9 bad target */
		   "empty@example.com:\n"                                    /* 10 */
		   "nocolon@example.com alice@example.com\n"                 /* 11 */
		   "sales@example.com: carol@example.net\n"                  /* 12 dup */
		   "both@example.com: alice@example.com, alice@example.com, x@elsewhere.org\n");

	struct users *u = open_users(two_domains, 2, NULL, false);
	struct collected c;

	c = resolve(u, "sales@example.com", &r);
	cr_assert_eq(r, 2);
	cr_assert_str_eq(c.t[0], "alice@example.com");
	cr_assert_str_eq(c.t[1], "bob@example.com", "canonical spelling of the user");
	c = resolve(u, "TEAM@example.com", &r);
	cr_assert_eq(r, 3);
	cr_assert_str_eq(c.t[0], "alice@example.com");
	cr_assert_str_eq(c.t[1], "bob@example.com");
	cr_assert_str_eq(c.t[2], "carol@example.net");
	c = resolve(u, "fwd@example.com", &r);
	cr_assert_eq(r, 1);
	cr_assert_str_eq(c.t[0], "someone@elsewhere.org");
	c = resolve(u, "alice@example.com", &r);
	cr_assert_eq(r, 1, "a user resolves to itself, the alias line 7 is ignored");
	cr_assert_str_eq(c.t[0], "alice@example.com");
	c = resolve(u, "both@example.com", &r);
	cr_assert_eq(r, 2, "duplicates removed");
	cr_assert_eq(resolve(u, "loop1@example.com", &r).n, 0);
	cr_assert_eq(r, -ENOENT);
	cr_assert_eq(resolve(u, "ghost@example.com", &r).n, 0);
	cr_assert_eq(r, -ENOENT);
	resolve(u, "nobody@example.com", &r);
	cr_assert_eq(r, -ENOENT);

	cr_assert_not_null(strstr(diag_at(5), "loop"), "%s", diag_at(5));
	cr_assert_not_null(strstr(diag_at(7), "also a user"), "%s", diag_at(7));
	cr_assert_not_null(strstr(diag_at(8), "no local user"), "%s", diag_at(8));
	cr_assert_not_null(strstr(diag_at(9), "not a full address"), "%s", diag_at(9));
	cr_assert_not_null(strstr(diag_at(10), "no target"), "%s", diag_at(10));
	cr_assert_not_null(diag_at(11));
	cr_assert_not_null(strstr(diag_at(12), "duplicate alias"), "%s", diag_at(12));
	cr_assert_null(diag_at(2));
	cr_assert_null(diag_at(3));

	/* Envelope senders: one's own address and one's aliases. */
	struct span alice = SPAN_LIT("alice@example.com");
	cr_assert(users_may_send_as(u, alice, SPAN_LIT("alice@example.com")));
	cr_assert(users_may_send_as(u, alice, SPAN_LIT("ALICE@example.COM")));
	cr_assert(users_may_send_as(u, alice, SPAN_LIT("sales@example.com")));
	cr_assert(users_may_send_as(u, alice, SPAN_LIT("team@example.com")));
	cr_assert(!users_may_send_as(u, alice, SPAN_LIT("bob@example.com")));
	cr_assert(!users_may_send_as(u, alice, SPAN_LIT("fwd@example.com")));
	cr_assert(!users_may_send_as(u, alice, SPAN_LIT("someone@elsewhere.org")));
	cr_assert(!users_may_send_as(u, SPAN_LIT("carol@example.net"), SPAN_LIT("sales@example.com")));
	cr_assert(users_may_send_as(u, SPAN_LIT("carol@example.net"), SPAN_LIT("team@example.com")));
	cr_assert(!users_may_send_as(u, SPAN_LIT("nobody@example.com"), SPAN_LIT("nobody@example.com")));

	cr_assert(users_is_local_domain(u, SPAN_LIT("example.net")));
	cr_assert(!users_is_local_domain(u, SPAN_LIT("elsewhere.org")));
	users_free(&u);
}

Test(users, postmaster_always_resolves, .init = setup_dir, .fini = teardown_dir)
{
	static const char *const domains[] = { "a.example", "b.example", "c.example" };
	int r;

	write_file("passwd",
		   "zed@a.example:" SHA512 "\n"
		   "amy@a.example:" SHA512 "\n"
		   "bea@b.example:" SHA512 "\n");
	write_file("aliases", "postmaster@b.example: amy@a.example\n");
	struct users *u = open_users(domains, 3, NULL, false);
	struct collected c;

	c = resolve(u, "postmaster@a.example", &r);
	cr_assert_eq(r, 1);
	cr_assert_str_eq(c.t[0], "zed@a.example", "the first user of the domain");
	c = resolve(u, "PostMaster@A.Example", &r);
	cr_assert_eq(r, 1, "RFC 5321: postmaster is case-insensitive");
	c = resolve(u, "postmaster@b.example", &r);
	cr_assert_str_eq(c.t[0], "amy@a.example", "the aliases file wins");
	c = resolve(u, "postmaster@c.example", &r);
	cr_assert_eq(r, 1, "a domain without users still has a postmaster");
	cr_assert_str_eq(c.t[0], "zed@a.example");
	cr_assert(diag_has("c.example has no user"));
	cr_assert(users_may_send_as(u, SPAN_LIT("zed@a.example"), SPAN_LIT("postmaster@a.example")));
	resolve(u, "postmaster@elsewhere.org", &r);
	cr_assert_eq(r, -ENOENT);
	users_free(&u);

	/* An explicit postmaster setting. */
	u = open_users(domains, 3, "bea@b.example", false);
	c = resolve(u, "postmaster@a.example", &r);
	cr_assert_str_eq(c.t[0], "bea@b.example");
	c = resolve(u, "postmaster@b.example", &r);
	cr_assert_str_eq(c.t[0], "amy@a.example", "the aliases file still wins");
	users_free(&u);
}

/* ---- reloads ---------------------------------------------------------------- */

Test(users, reload_swaps_and_old_snapshots_stay_valid, .init = setup_dir, .fini = teardown_dir)
{
	write_file("passwd", "old@x.org:" SHA512 "\n");
	struct users *u = open_users(NULL, 0, NULL, false);
	const struct users_snap *before = users_snap_get(u);
	const struct users_entry *e = users_snap_find(before, SPAN_LIT("old@x.org"));
	char canon[USERS_ADDR_MAX + 1];

	cr_assert_not_null(e);
	write_file("passwd", "new@x.org:" SHA512 "\n");
	cr_assert_eq(users_reload(u), 0);
	cr_assert_eq(users_lookup(u, SPAN_LIT("new@x.org"), canon, sizeof(canon)), 0);
	cr_assert_eq(users_lookup(u, SPAN_LIT("old@x.org"), canon, sizeof(canon)), -ENOENT);
	/* The old snapshot is still whole. */
	cr_assert_str_eq(e->addr, "old@x.org");
	cr_assert_eq(users_password_verify(e->scheme, e->hash, SPAN_LIT(PW)), 1);

	const struct users_snap *after = users_snap_get(u);
	cr_assert_gt(users_snap_generation(after), users_snap_generation(before));
	users_snap_put(&before);
	users_snap_put(&after);

	cr_assert_eq(users_reload_if_changed(u), 0, "nothing changed");
	write_file("passwd", "newer@x.org:" SHA512 "\n");
	cr_assert_eq(users_reload_if_changed(u), 1);
	cr_assert_eq(users_lookup(u, SPAN_LIT("newer@x.org"), canon, sizeof(canon)), 0);
	write_file("aliases", "al@x.org: newer@x.org\n");
	cr_assert_eq(users_reload_if_changed(u), 1, "the aliases file counts too");
	users_free(&u);
}

Test(users, watcher_picks_up_changes, .init = setup_dir, .fini = teardown_dir)
{
	write_file("passwd", "one@x.org:" SHA512 "\n");
	struct users *u = open_users(NULL, 0, NULL, true);
	char canon[USERS_ADDR_MAX + 1];
	int i;

	write_file("passwd", "one@x.org:" SHA512 "\ntwo@x.org:" SHA512 "\n");
	for (i = 0; i < 50; i++) {
		if (users_lookup(u, SPAN_LIT("two@x.org"), canon, sizeof(canon)) == 0)
			break;
		nanosleep(&(struct timespec){ .tv_nsec = 100000000 }, NULL);
	}
	cr_assert_lt(i, 50, "the watcher reloads within a few seconds");

	/* SIGHUP path: an explicit asynchronous reload. */
	write_file("aliases", "three@x.org: one@x.org\n");
	users_reload_async(u);
	int r = -ENOENT;
	for (i = 0; i < 50 && r < 0; i++) {
		r = users_resolve(u, SPAN_LIT("three@x.org"), collect_target, &(struct collected){ 0 });
		if (r < 0)
			nanosleep(&(struct timespec){ .tv_nsec = 20000000 }, NULL);
	}
	cr_assert_eq(r, 1);
	users_free(&u);
}

struct hammer {
	struct users *u;
	atomic_bool stop;
	atomic_long lookups;
	atomic_long inconsistent;
};

/* Each version of the file has users v<k>-0..v<k>-9 and the first line's
 * rest field says k: a reader must see one whole version, never a mix. */
static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	char name[32];

	while (!atomic_load(&h->stop)) {
		const struct users_snap *s = users_snap_get(h->u);

		if (users_snap_count(s) == 10) {
			const char *rest = users_snap_entry(s, 0)->rest;
			int k = atoi(rest);

			for (int i = 0; i < 10; i++) {
				snprintf(name, sizeof(name), "v%d-%d@x.org", k, i);
				if (users_snap_find(s, span_cstr(name)) == NULL)
					atomic_fetch_add(&h->inconsistent, 1);
			}
		} else {
			atomic_fetch_add(&h->inconsistent, 1);
		}
		atomic_fetch_add(&h->lookups, 1);
		users_snap_put(&s);
	}
	return NULL;
}

static void write_version(int k)
{
	char text[4096];
	size_t n = 0;

	for (int i = 0; i < 10; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "v%d-%d@x.org:{PLAIN}pw:%d\n",
				      k, i, k);
	write_file("passwd", text);
}

Test(users, reload_while_readers_hammer, .init = setup_dir, .fini = teardown_dir)
{
	struct hammer h = { 0 };
	pthread_t th[3];

	write_version(0);
	h.u = open_users(NULL, 0, NULL, false);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, hammer_main, &h), 0);
	for (int k = 1; k <= 200; k++) {
		write_version(k);
		cr_assert_eq(users_reload(h.u), 0);
	}
	atomic_store(&h.stop, true);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	cr_assert_eq(atomic_load(&h.inconsistent), 0);
	cr_assert_gt(atomic_load(&h.lookups), 0);
	char canon[USERS_ADDR_MAX + 1];
	cr_assert_eq(users_lookup(h.u, SPAN_LIT("v200-9@x.org"), canon, sizeof(canon)), 0);
	users_free(&h.u);
}
