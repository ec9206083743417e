/* proto/user_limit.c: per-user session counting across threads. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "proto/user_limit.h"

static struct user_limit *ul;

static void setup(void)
{
	ul = malloc(sizeof(*ul));
	cr_assert_not_null(ul);
	user_limit_init(ul);
}

static void teardown(void)
{
	free(ul);
}

TestSuite(user_limit, .init = setup, .fini = teardown);

Test(user_limit, cap_case_insensitive_and_release)
{
	uint32_t s[4];
	cr_assert(user_limit_enter(ul, "alice@example.com", 3, &s[0]));
	cr_assert(user_limit_enter(ul, "Alice@Example.COM", 3, &s[1]));
	cr_assert(user_limit_enter(ul, "alice@example.com", 3, &s[2]));
	cr_assert_eq(s[0], s[1]);
	cr_assert_not(user_limit_enter(ul, "alice@example.com", 3, &s[3]));
	cr_assert_eq(user_limit_count(ul, "alice@example.com"), 3);
	user_limit_leave(ul, s[0]);
	cr_assert(user_limit_enter(ul, "alice@example.com", 3, &s[3]));
	for (int i = 1; i < 4; i++)
		user_limit_leave(ul, s[i]);
	cr_assert_eq(user_limit_count(ul, "alice@example.com"), 0);
}

Test(user_limit, users_spread_over_slots)
{
	/* 1000 users with one session each under a cap of 1: a refusal would
	 * mean two users share a slot; with 65536 slots a few are expected at
	 * most (birthday bound ~ 1000^2 / 2 / 65536 = 7.6). */
	char name[64];
	unsigned refused = 0;
	for (int i = 0; i < 1000; i++) {
		uint32_t slot;
		snprintf(name, sizeof(name), "user%d@example.com", i);
		if (!user_limit_enter(ul, name, 1, &slot))
			refused++;
	}
	cr_assert_lt(refused, 30, "%u collisions", refused);
}

#define THREADS 4
#define ROUNDS 100000

static void *worker(void *arg)
{
	unsigned *over = arg;
	for (int i = 0; i < ROUNDS; i++) {
		uint32_t slot;
		if (user_limit_enter(ul, "busy@example.com", 2, &slot)) {
			if (user_limit_count(ul, "busy@example.com") > 2)
				(*over)++;
			user_limit_leave(ul, slot);
		}
	}
	return NULL;
}

Test(user_limit, threads_never_exceed_the_cap)
{
	pthread_t t[THREADS];
	unsigned over[THREADS] = { 0 };
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, &over[i]);
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(over[i], 0);
	}
	cr_assert_eq(user_limit_count(ul, "busy@example.com"), 0);
}
