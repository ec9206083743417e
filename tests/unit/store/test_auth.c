/* Tests for store/auth: verification on the workpool, the credential cache
 * and its invalidation, the per-address failure delay driven by one loop,
 * and unknown users looking exactly like wrong passwords. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/loop.h"
#include "core/workpool.h"
#include "store/auth.h"
#include "store/users.h"

#define PW "correct horse"
#define SHA512 "{SHA512-CRYPT}$6$btodD84RYVpYYv1Z$jzp5uAca2247GLyrsHpCQW/oOk.ovF8LfaSsFbBqDbjwPtoGaK3Cq6wtE3nkOWjzEC7xgg10XBKgYI8m362NF1"
#define SHA256 "{SHA256-CRYPT}$5$av3M5td/Xt2edaUO$OowOS3lFuh6kjQvN/1nzsZfxILO/2trLosyjqjhUc24"

static char dir[64];
static struct loop *loop;
static struct workpool *wp;
static struct users *users;
static struct auth *auth;

/* Every call of the password check, counted, with the last scheme. */
static atomic_int checks;
static _Atomic enum users_scheme last_scheme;
static atomic_bool slow_started;

static int counting_check(void *arg, enum users_scheme scheme, const char *hash,
			  struct span pass)
{
	(void)arg;
	atomic_fetch_add(&checks, 1);
	atomic_store(&last_scheme, scheme);
	if (span_eq(pass, SPAN_LIT("slow"))) {
		atomic_store(&slow_started, true);
		nanosleep(&(struct timespec){ .tv_nsec = 300000000 }, NULL);
	}
	return users_password_verify(scheme, hash, pass);
}

static void quiet(void *arg, const char *file, unsigned line, const char *msg)
{
	(void)arg;
	(void)file;
	(void)line;
	(void)msg;
}

static void write_passwd(const char *text)
{
	char path[128], tmp[140];
	FILE *f;

	snprintf(path, sizeof(path), "%s/passwd", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(rename(tmp, path), 0);
}

static void start(uint32_t delay_initial_ms, unsigned queue_max)
{
	int r = loop_new_standalone(&loop);

	if (r < 0)
		cr_skip_test("io_uring unavailable: %s", strerror(-r));
	snprintf(dir, sizeof(dir), "/tmp/ringmail-auth-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	write_passwd("alice@example.com:" SHA512 "\n"
		     "locked@example.com:!" SHA512 "\n");
	struct users_config ucfg = { .data_dir = dir, .diag = quiet };
	cr_assert_eq(users_open(&ucfg, &users), 0);
	cr_assert_eq(workpool_new(1, queue_max, &wp), 0);
	struct auth_config acfg = {
		.delay_initial_ms = delay_initial_ms,
		.delay_max_ms = delay_initial_ms * 8,
		.check = counting_check,
	};
	cr_assert_eq(auth_new(&acfg, users, wp, &auth), 0);
	atomic_store(&checks, 0);
}

static void stop(void)
{
	char cmd[128];

	auth_free(&auth);
	workpool_free(&wp);
	users_free(&users);
	loop_free(&loop);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)system(cmd);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct answer {
	bool done;
	bool returned; /* auth_verify() had returned when done ran */
	enum auth_result res;
	char user[USERS_ADDR_MAX + 1];
	uint64_t at_ms;
};

static void on_done(struct loop *l, enum auth_result res, const char *user, void *arg)
{
	struct answer *a = arg;

	(void)l;
	a->done = true;
	a->res = res;
	snprintf(a->user, sizeof(a->user), "%s", user != NULL ? user : "");
	a->at_ms = now_ms();
}

static void verify_async(struct answer *a, const char *user, const char *pass,
			 const char *addr)
{
	memset(a, 0, sizeof(*a));
	cr_assert_eq(auth_verify(auth, loop, span_cstr(user), span_cstr(pass), addr, on_done,
				 a, NULL), 0);
	a->returned = true;
	cr_assert(!a->done, "done must never run inside auth_verify()");
}

static struct answer verify(const char *user, const char *pass, const char *addr)
{
	struct answer a;

	verify_async(&a, user, pass, addr);
	cr_assert_eq(loop_run_until(loop, &a.done, 20000), 0);
	return a;
}

Test(auth, good_password_gives_canonical_user, .fini = stop)
{
	start(20, 16);
	struct answer a = verify("ALICE@Example.com", PW, "192.0.2.1");

	cr_assert_eq(a.res, AUTH_OK);
	cr_assert_str_eq(a.user, "alice@example.com");
	cr_assert_eq(atomic_load(&checks), 1);
}

Test(auth, cache_spares_the_second_hash, .fini = stop)
{
	start(20, 16);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_OK);
	cr_assert_eq(atomic_load(&checks), 1);
	struct answer a = verify("Alice@example.com", PW, "192.0.2.7");
	cr_assert_eq(a.res, AUTH_OK);
	cr_assert_str_eq(a.user, "alice@example.com");
	cr_assert_eq(atomic_load(&checks), 1, "a cached credential is not hashed again");
	/* A wrong password is never answered from the cache. */
	cr_assert_eq(verify("alice@example.com", "wrong", "192.0.2.1").res, AUTH_FAIL);
	cr_assert_eq(atomic_load(&checks), 2);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_OK);
	cr_assert_eq(atomic_load(&checks), 2);
	auth_cache_clear(auth);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_OK);
	cr_assert_eq(atomic_load(&checks), 3);
}

Test(auth, password_change_invalidates_the_cache, .fini = stop)
{
	start(20, 16);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_OK);
	cr_assert_eq(atomic_load(&checks), 1);

	/* Same password, new hash: checked again (and still good). */
	write_passwd("alice@example.com:" SHA256 "\n");
	cr_assert_eq(users_reload(users), 0);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_OK);
	cr_assert_eq(atomic_load(&checks), 2);
	cr_assert_eq(atomic_load(&last_scheme), USERS_SCHEME_SHA256_CRYPT);

	/* New password: the old one fails at once. */
	write_passwd("alice@example.com:{PLAIN}n3w\n");
	cr_assert_eq(users_reload(users), 0);
	cr_assert_eq(verify("alice@example.com", PW, "192.0.2.1").res, AUTH_FAIL);
	cr_assert_eq(verify("alice@example.com", "n3w", "192.0.2.1").res, AUTH_OK);
}

Test(auth, unknown_user_and_wrong_password_look_alike, .fini = stop)
{
	start(100, 16);
	struct answer wrong = verify("alice@example.com", "wrong", "192.0.2.10");
	cr_assert_eq(atomic_load(&checks), 1);
	enum users_scheme wrong_scheme = atomic_load(&last_scheme);

	struct answer unknown = verify("mallory@example.com", PW, "192.0.2.11");
	cr_assert_eq(atomic_load(&checks), 2, "an unknown user costs a hash too");
	cr_assert_eq(atomic_load(&last_scheme), wrong_scheme, "a dummy of the same scheme");

	struct answer locked = verify("locked@example.com", PW, "192.0.2.12");
	cr_assert_eq(atomic_load(&checks), 3, "a disabled login costs a hash too");

	/* Even the right password of another user fails for an unknown one. */
	struct answer other = verify("nobody@example.com", PW, "192.0.2.13");

	cr_assert_eq(wrong.res, AUTH_FAIL);
	cr_assert_eq(unknown.res, AUTH_FAIL);
	cr_assert_eq(locked.res, AUTH_FAIL);
	cr_assert_eq(other.res, AUTH_FAIL);
	cr_assert_str_eq(wrong.user, "");
	cr_assert_str_eq(unknown.user, "");
	cr_assert_str_eq(locked.user, "");
}

struct both {
	struct answer bad, good;
	bool done;
};

static void on_bad(struct loop *l, enum auth_result res, const char *user, void *arg)
{
	struct both *b = arg;

	on_done(l, res, user, &b->bad);
	b->done = b->good.done;
}

static void on_good(struct loop *l, enum auth_result res, const char *user, void *arg)
{
	struct both *b = arg;

	on_done(l, res, user, &b->good);
	b->done = b->bad.done;
}

Test(auth, failure_delay_does_not_hold_up_others, .fini = stop, .timeout = 30)
{
	start(0, 16); /* the real default: 2 s */
	struct both b = { 0 };
	uint64_t t0 = now_ms();

	cr_assert_eq(auth_verify(auth, loop, SPAN_LIT("alice@example.com"), SPAN_LIT("wrong"),
				 "198.51.100.1", on_bad, &b, NULL), 0);
	/* Let the bad one reach its delay first, then log in well. */
	bool never = false;
	(void)loop_run_until(loop, &never, 200);
	cr_assert(!b.bad.done);
	uint64_t t1 = now_ms();
	cr_assert_eq(auth_verify(auth, loop, SPAN_LIT("alice@example.com"), SPAN_LIT(PW),
				 "198.51.100.2", on_good, &b, NULL), 0);
	cr_assert_eq(loop_run_until(loop, &b.done, 10000), 0);

	cr_assert_eq(b.good.res, AUTH_OK);
	cr_assert_eq(b.bad.res, AUTH_FAIL);
	cr_assert_lt(b.good.at_ms - t1, 1000, "the good login waited %llu ms",
		     (unsigned long long)(b.good.at_ms - t1));
	cr_assert_lt(b.good.at_ms, b.bad.at_ms, "the good login did not wait for the bad one");
	cr_assert_geq(b.bad.at_ms - t0, AUTH_DELAY_INITIAL_MS_DEFAULT, "failed after %llu ms",
		      (unsigned long long)(b.bad.at_ms - t0));
	/* The next failure from the same address waits twice as long; the
	 * other address has no penalty. */
	cr_assert_eq(auth_delay_peek(auth, "198.51.100.1"), 2 * AUTH_DELAY_INITIAL_MS_DEFAULT);
	cr_assert_eq(auth_delay_peek(auth, "198.51.100.2"), AUTH_DELAY_INITIAL_MS_DEFAULT);
}

Test(auth, delay_grows_caps_decays_and_resets)
{
	struct loop *l = NULL;
	int r = loop_new_standalone(&l);

	if (r < 0)
		cr_skip_test("io_uring unavailable: %s", strerror(-r));
	snprintf(dir, sizeof(dir), "/tmp/ringmail-auth-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	loop = l;
	write_passwd("alice@example.com:{PLAIN}" PW "\n");
	struct users_config ucfg = { .data_dir = dir, .diag = quiet };
	cr_assert_eq(users_open(&ucfg, &users), 0);
	cr_assert_eq(workpool_new(2, 16, &wp), 0);
	struct auth_config acfg = { .delay_initial_ms = 10, .delay_max_ms = 50,
				    .delay_quiet_ms = 500 };
	cr_assert_eq(auth_new(&acfg, users, wp, &auth), 0);

	const char *ip = "2001:db8:1:2::5";
	uint32_t want[] = { 20, 40, 50, 50 };
	cr_assert_eq(auth_delay_peek(auth, ip), 10);
	for (int i = 0; i < 4; i++) {
		uint64_t t = now_ms();
		cr_assert_eq(verify("alice@example.com", "bad", ip).res, AUTH_FAIL);
		cr_assert_geq(now_ms() - t, i == 0 ? 10u : want[i - 1]);
		cr_assert_eq(auth_delay_peek(auth, ip), want[i], "after %d failures", i + 1);
	}
	cr_assert_eq(auth_delay_peek(auth, "2001:db8:1:2::99"), 50, "IPv6 counts per /64");
	cr_assert_eq(auth_delay_peek(auth, "2001:db8:1:3::5"), 10);
	/* Two quiet periods take two steps off. */
	nanosleep(&(struct timespec){ .tv_sec = 1, .tv_nsec = 100000000 }, NULL);
	cr_assert_eq(auth_delay_peek(auth, ip), 40);
	/* A good login clears the address. */
	cr_assert_eq(verify("alice@example.com", PW, ip).res, AUTH_OK);
	cr_assert_eq(auth_delay_peek(auth, ip), 10);
	stop();
}

Test(auth, full_queue_is_tempfail, .fini = stop)
{
	start(20, 1);
	struct answer first, second, third;

	atomic_store(&slow_started, false);
	verify_async(&first, "alice@example.com", "slow", "192.0.2.1");
	while (!atomic_load(&slow_started))
		nanosleep(&(struct timespec){ .tv_nsec = 1000000 }, NULL);
	verify_async(&second, "alice@example.com", "slow", "192.0.2.2");
	verify_async(&third, "alice@example.com", PW, "192.0.2.3");
	cr_assert_eq(loop_run_until(loop, &third.done, 5000), 0);
	cr_assert_eq(third.res, AUTH_TEMPFAIL);
	cr_assert(!first.done);
	cr_assert_eq(loop_run_until(loop, &first.done, 5000), 0);
	cr_assert_eq(loop_run_until(loop, &second.done, 5000), 0);
	cr_assert_eq(first.res, AUTH_FAIL);
	cr_assert_eq(second.res, AUTH_FAIL);
}

Test(auth, cancel_suppresses_done, .fini = stop)
{
	start(20, 16);
	struct answer a = { 0 }, b;
	struct auth_req *req = NULL;

	cr_assert_eq(auth_verify(auth, loop, SPAN_LIT("alice@example.com"), SPAN_LIT("bad"),
				 "192.0.2.1", on_done, &a, &req), 0);
	cr_assert_not_null(req);
	auth_cancel(req);
	/* A later request on the same loop completes after the cancelled one
	 * would have (same address: a longer delay). */
	b = verify("alice@example.com", "bad", "192.0.2.1");
	cr_assert_eq(b.res, AUTH_FAIL);
	cr_assert(!a.done, "a cancelled request never calls done");
}

Test(auth, overlong_inputs_fail_quietly, .fini = stop)
{
	start(10, 16);
	char *big = malloc(AUTH_PASS_MAX + 10);

	memset(big, 'p', AUTH_PASS_MAX + 9);
	big[AUTH_PASS_MAX + 9] = '\0';
	cr_assert_eq(verify("alice@example.com", big, "192.0.2.1").res, AUTH_FAIL);
	memset(big, 'u', AUTH_PASS_MAX + 9);
	cr_assert_eq(verify(big, PW, "192.0.2.1").res, AUTH_FAIL);
	cr_assert_eq(verify("", "", NULL).res, AUTH_FAIL);
	free(big);
}

/* The failure delay counts from the request's start: a check that took
 * longer (another scheme, a busy pool) does not show in the answer's time,
 * so an unknown user and a wrong password end at the same moment. */
Test(auth, failure_delay_hides_the_cost_of_the_check, .fini = stop, .timeout = 30)
{
	start(500, 16);
	uint64_t t0 = now_ms();
	struct answer slow = verify("alice@example.com", "slow", "192.0.2.10");
	uint64_t t1 = now_ms();
	struct answer unknown = verify("nobody@example.com", "wrong", "192.0.2.11");

	cr_assert_eq(slow.res, AUTH_FAIL);
	cr_assert_eq(unknown.res, AUTH_FAIL);
	uint64_t d_slow = slow.at_ms - t0, d_unknown = unknown.at_ms - t1;
	/* The check itself sleeps 300 ms: counted from its end, the answer
	 * would come at 800 ms. */
	cr_assert_geq(d_slow, 500, "answered after %llu ms", (unsigned long long)d_slow);
	cr_assert_lt(d_slow, 700, "answered after %llu ms: the check's time showed",
		     (unsigned long long)d_slow);
	cr_assert_geq(d_unknown, 500, "answered after %llu ms", (unsigned long long)d_unknown);
	cr_assert_lt(d_unknown, 700, "answered after %llu ms", (unsigned long long)d_unknown);
}
