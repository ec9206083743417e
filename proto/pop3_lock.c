/* pop3_lock.c - the process-wide POP3 maildrop lock table (pop3_lock.h).
 *
 * A chained hash set of user names behind one mutex. Buckets are fixed
 * (POP3_LOCK_BUCKETS); chains grow with the number of users logged in over
 * POP3 at once, which the connection limits bound. */
#include "proto/pop3_lock.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define POP3_LOCK_BUCKETS 4096u /* a power of two */

struct pop3_lock {
	struct pop3_lock *next;
	uint32_t hash;
	char user[];
};

static pthread_mutex_t lock_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct pop3_lock *lock_buckets[POP3_LOCK_BUCKETS];
static size_t lock_count;

/* FNV-1a: the names are authenticated users, not attacker-chosen keys in
 * bulk, and a collision only lengthens one chain. */
static uint32_t lock_hash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

int pop3_lock_acquire(const char *user, struct pop3_lock **lock_r)
{
	size_t len = strlen(user);
	uint32_t h = lock_hash(user);
	struct pop3_lock *l = malloc(sizeof(*l) + len + 1);
	*lock_r = NULL;
	if (!l)
		return -ENOMEM;
	l->hash = h;
	memcpy(l->user, user, len + 1);

	pthread_mutex_lock(&lock_mutex);
	struct pop3_lock **b = &lock_buckets[h & (POP3_LOCK_BUCKETS - 1)];
	for (struct pop3_lock *e = *b; e; e = e->next) {
		if (e->hash == h && !strcmp(e->user, user)) {
			pthread_mutex_unlock(&lock_mutex);
			free(l);
			return -EBUSY;
		}
	}
	l->next = *b;
	*b = l;
	lock_count++;
	pthread_mutex_unlock(&lock_mutex);
	*lock_r = l;
	return 0;
}

void pop3_lock_release(struct pop3_lock **lock_r)
{
	struct pop3_lock *l = *lock_r;
	if (!l)
		return;
	*lock_r = NULL;
	pthread_mutex_lock(&lock_mutex);
	for (struct pop3_lock **p = &lock_buckets[l->hash & (POP3_LOCK_BUCKETS - 1)]; *p;
	     p = &(*p)->next) {
		if (*p == l) {
			*p = l->next;
			lock_count--;
			break;
		}
	}
	pthread_mutex_unlock(&lock_mutex);
	free(l);
}

size_t pop3_lock_count(void)
{
	pthread_mutex_lock(&lock_mutex);
	size_t n = lock_count;
	pthread_mutex_unlock(&lock_mutex);
	return n;
}
