/* user_limit.h - logged-in sessions per user, across every loop: the
 * [limits] key max_connections_per_user (IMAP; POP3 allows one session per
 * maildrop anyway). Counters live in a table of hashed slots, like the
 * per-address ones of core/: two users sharing a slot share its count,
 * which with USER_LIMIT_SLOTS slots and a cap in the tens only matters
 * for users with near-cap session counts on the same slot. The hash is
 * keyed with a random seed per process, so slots cannot be aimed at. */
#ifndef RINGMAIL_PROTO_USER_LIMIT_H
#define RINGMAIL_PROTO_USER_LIMIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define USER_LIMIT_SLOTS 65536u

struct user_limit {
	uint64_t seed;
	_Atomic uint32_t count[USER_LIMIT_SLOTS];
};

/* Seeds the hash (getrandom; a time-based seed if that fails). */
void user_limit_init(struct user_limit *ul);

/* One more session for user (compared case-insensitively, as logins are).
 * Returns true and the slot to give back in *slot_r, or false when the
 * user already has max sessions (nothing counted then). Thread-safe. */
bool user_limit_enter(struct user_limit *ul, const char *user, uint32_t max, uint32_t *slot_r);
/* The session counted in slot ended. */
void user_limit_leave(struct user_limit *ul, uint32_t slot);
/* Sessions counted in user's slot now. */
uint32_t user_limit_count(struct user_limit *ul, const char *user);

#endif
