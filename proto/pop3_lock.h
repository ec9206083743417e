/* pop3_lock.h - one POP3 session per maildrop (RFC 1939 8: the maildrop is
 * locked for the session's life; a second session gets -ERR [IN-USE]).
 *
 * The table is process-wide because the sessions of one user may live on
 * different loop threads. It is the one deliberate global of proto/: a
 * static, mutex-protected hash set, initialised statically (no startup hook
 * for app/main.c, nothing to free at exit beyond the held locks). The
 * mutex is held only for a hash lookup and an insert or removal, a few
 * times per POP3 login, so it is never contended in a way that matters.
 * IMAP sessions and deliveries do not look at it. */
#ifndef RINGMAIL_PROTO_POP3_LOCK_H
#define RINGMAIL_PROTO_POP3_LOCK_H

#include <stddef.h>

struct pop3_lock;

/* Locks the maildrop of user (the canonical address auth_verify() gave).
 * Returns 0 and the lock in *lock_r, -EBUSY when another session holds it,
 * or -ENOMEM. Thread-safe. */
int pop3_lock_acquire(const char *user, struct pop3_lock **lock_r);
/* Releases a lock (NULL is fine) and sets *lock_r to NULL. Thread-safe. */
void pop3_lock_release(struct pop3_lock **lock_r);
/* Locks held now, process-wide (tests, logs). Thread-safe. */
size_t pop3_lock_count(void);

#endif
