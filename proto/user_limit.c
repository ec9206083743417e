/* user_limit.c - logged-in sessions per user (see user_limit.h). */
#include "proto/user_limit.h"

#include <ctype.h>
#include <sys/random.h>
#include <time.h>

void user_limit_init(struct user_limit *ul)
{
	uint64_t seed;
	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
	}
	ul->seed = seed;
	for (uint32_t i = 0; i < USER_LIMIT_SLOTS; i++)
		atomic_init(&ul->count[i], 0);
}

/* FNV-1a over the lower-cased name, started from the seed, then a
 * 64-bit finalizer (splitmix64's) so every seed bit reaches the slot. */
static uint32_t slot_of(const struct user_limit *ul, const char *user)
{
	uint64_t h = 0xcbf29ce484222325ull ^ ul->seed;
	for (const unsigned char *p = (const unsigned char *)user; *p; p++) {
		h ^= (uint64_t)tolower(*p);
		h *= 0x100000001b3ull;
	}
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return (uint32_t)(h % USER_LIMIT_SLOTS);
}

bool user_limit_enter(struct user_limit *ul, const char *user, uint32_t max, uint32_t *slot_r)
{
	uint32_t slot = slot_of(ul, user);
	uint32_t n = atomic_load_explicit(&ul->count[slot], memory_order_relaxed);
	do {
		if (n >= max)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(&ul->count[slot], &n, n + 1,
							memory_order_relaxed, memory_order_relaxed));
	*slot_r = slot;
	return true;
}

void user_limit_leave(struct user_limit *ul, uint32_t slot)
{
	atomic_fetch_sub_explicit(&ul->count[slot % USER_LIMIT_SLOTS], 1, memory_order_relaxed);
}

uint32_t user_limit_count(struct user_limit *ul, const char *user)
{
	return atomic_load_explicit(&ul->count[slot_of(ul, user)], memory_order_relaxed);
}
