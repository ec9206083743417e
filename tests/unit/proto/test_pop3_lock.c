/* Unit tests for proto/pop3_lock.c: one holder per maildrop, release, and
 * threads racing for the same names (the table is process-wide). */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include "proto/pop3_lock.h"

Test(pop3_lock, one_holder)
{
	struct pop3_lock *a = NULL, *b = NULL, *c = NULL;
	cr_assert_eq(pop3_lock_acquire("alice@example.com", &a), 0);
	cr_assert_not_null(a);
	cr_assert_eq(pop3_lock_acquire("alice@example.com", &b), -EBUSY);
	cr_assert_null(b);
	cr_assert_eq(pop3_lock_acquire("bob@example.com", &c), 0);
	cr_assert_eq(pop3_lock_count(), 2);
	pop3_lock_release(&a);
	cr_assert_null(a);
	cr_assert_eq(pop3_lock_acquire("alice@example.com", &b), 0);
	pop3_lock_release(&b);
	pop3_lock_release(&c);
	pop3_lock_release(&c); /* NULL is fine */
	cr_assert_eq(pop3_lock_count(), 0);
}

#define RACERS 4
#define ROUNDS 20000
#define NAMES 8

static unsigned held[NAMES];

static void *racer(void *arg)
{
	(void)arg;
	char name[32];
	for (unsigned i = 0; i < ROUNDS; i++) {
		unsigned k = i % NAMES;
		snprintf(name, sizeof(name), "user%u@example.com", k);
		struct pop3_lock *l;
		if (pop3_lock_acquire(name, &l) == 0) {
			/* Only the holder touches held[k]: two holders would
			 * see a count other than 1. */
			unsigned v = __atomic_add_fetch(&held[k], 1, __ATOMIC_SEQ_CST);
			cr_assert_eq(v, 1, "two sessions hold %s", name);
			__atomic_sub_fetch(&held[k], 1, __ATOMIC_SEQ_CST);
			pop3_lock_release(&l);
		}
	}
	return NULL;
}

Test(pop3_lock, threads)
{
	pthread_t t[RACERS];
	for (int i = 0; i < RACERS; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, racer, NULL), 0);
	for (int i = 0; i < RACERS; i++)
		pthread_join(t[i], NULL);
	cr_assert_eq(pop3_lock_count(), 0);
}
