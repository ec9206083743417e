/* users.h - users, passwords, aliases and local domains.
 *
 * Two files under the data directory (docs/users.md has the details):
 *
 *   passwd   Dovecot passwd-file:  user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]
 *            schemes {CRYPT} {BLF-CRYPT} {SHA512-CRYPT} {SHA256-CRYPT} {YESCRYPT}
 *            {PLAIN} (migration only, logged as weak), or a bare crypt(3) string.
 *   aliases  alias@domain: user@domain[, other@domain]     # comments
 *
 * The parsed tables form an immutable snapshot (struct users_snap) that all
 * loop threads read without locks. A reload builds a new snapshot and swaps
 * an atomic pointer; readers holding the old one keep it until they put it
 * (reference count; a two-slot epoch guards the instant between loading the
 * pointer and taking the reference). Reloads happen on users_reload(), and
 * when watching, on a background thread that stats both files at most once a
 * second and reloads when one changed. No function here that a loop calls
 * does I/O or blocks, except users_reload() itself.
 *
 * Addresses are matched ASCII case-insensitively as a whole (domain and
 * local part); the canonical address is the spelling stored in the passwd
 * file. Two users differing only in case are rejected as duplicates. */
#ifndef RINGMAIL_STORE_USERS_H
#define RINGMAIL_STORE_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"

#define USERS_DATA_DIR_DEFAULT "./ringmail-data"
#define USERS_PASSWD_FILE "passwd"
#define USERS_ALIASES_FILE "aliases"
/* RFC 5321 §4.5.3.1: local part 64, domain 255. */
#define USERS_LOCAL_MAX 64u
#define USERS_DOMAIN_MAX 255u
#define USERS_ADDR_MAX (USERS_LOCAL_MAX + 1u + USERS_DOMAIN_MAX)
/* Longer lines are reported and skipped. */
#define USERS_LINE_MAX 4096u
/* Larger files are refused (the old snapshot stays). */
#define USERS_FILE_MAX (256u * 1024u * 1024u)
/* An alias expands to at most this many addresses, nested at most this deep. */
#define USERS_ALIAS_TARGETS_MAX 64u
#define USERS_ALIAS_DEPTH_MAX 8u
/* The watcher stats the files at most this often. */
#define USERS_WATCH_INTERVAL_MS 1000u
/* A stored hash longer than this is refused (no crypt(3) string is). */
#define USERS_HASH_MAX 512u

enum users_scheme {
	USERS_SCHEME_NONE,         /* empty, locked ('!', '*') or unusable: no login */
	USERS_SCHEME_CRYPT,        /* {CRYPT} or a bare crypt(3) string */
	USERS_SCHEME_BLF_CRYPT,    /* $2y$ $2b$ $2a$ */
	USERS_SCHEME_SHA512_CRYPT, /* $6$ */
	USERS_SCHEME_SHA256_CRYPT, /* $5$ */
	USERS_SCHEME_YESCRYPT,     /* $y$ */
	USERS_SCHEME_PLAIN,        /* cleartext, migration only */
};

/* Returns "CRYPT", "BLF-CRYPT", ..., "NONE". */
const char *users_scheme_str(enum users_scheme s);

/* One passwd line. Every pointer lives as long as the snapshot. */
struct users_entry {
	const char *addr;          /* as stored: the canonical address */
	const char *hash;          /* without the {SCHEME} prefix */
	enum users_scheme scheme;
	const char *rest;          /* the fields after the password, verbatim
				    * without the leading ':' ("" if none) */
	unsigned line;             /* line number in the passwd file */
};

/* Receives every problem found while loading, with the file and the line
 * (0: the whole file). Never given a password. */
typedef void users_diag_fn(void *arg, const char *file, unsigned line, const char *msg);

struct users_config {
	const char *data_dir;     /* NULL: USERS_DATA_DIR_DEFAULT */
	const char *passwd_path;  /* NULL: <data_dir>/passwd */
	const char *aliases_path; /* NULL: <data_dir>/aliases */
	/* The local domains from the configuration. None given: the domains
	 * of the users in the passwd file. */
	const char *const *local_domains;
	size_t nlocal_domains;
	/* Where postmaster@<each local domain> goes unless the files define
	 * it. NULL: the first user of that domain in the passwd file. */
	const char *postmaster;
	/* Start the background thread that reloads changed files. */
	bool watch;
	users_diag_fn *diag;      /* NULL: one line per problem on stderr */
	void *diag_arg;
};

struct users;
struct users_snap;

/* Loads both files and, if cfg->watch, starts the watcher. A missing file
 * is an empty table (reported); a file that cannot be read fails. Bad lines
 * are reported and skipped. Returns 0, -ENOMEM, -EINVAL (bad config), or
 * the negative errno of reading a file. cfg's strings are copied. */
int users_open(const struct users_config *cfg, struct users **users_r);
/* Stops the watcher and frees; every snapshot must have been put. */
void users_free(struct users **users_r);

/* Re-reads both files now and publishes the result. Blocking: call it from
 * a thread that may block (main thread, the watcher), never from a loop.
 * Thread-safe. Returns 0, or a negative errno and the old snapshot stays. */
int users_reload(struct users *u);
/* Asks the watcher thread to reload soon (SIGHUP from a loop). Never
 * blocks. Without a watcher it does nothing. */
void users_reload_async(struct users *u);
/* Stats both files and reloads when one changed since the last load
 * (mtime, size, inode). Blocking like users_reload(). Returns 1 when it
 * reloaded, 0 when nothing changed, or a negative errno. */
int users_reload_if_changed(struct users *u);

/* ---- snapshots: any thread, lock-free, never blocking ---------------- */

/* Returns the current snapshot with a reference held; never NULL. */
const struct users_snap *users_snap_get(struct users *u);
/* Drops a reference and sets *snap_r to NULL. */
void users_snap_put(const struct users_snap **snap_r);
/* Increases with every reload. */
uint64_t users_snap_generation(const struct users_snap *s);
size_t users_snap_count(const struct users_snap *s);
/* The i-th user in file order (i < users_snap_count()). */
const struct users_entry *users_snap_entry(const struct users_snap *s, size_t i);
/* The user whose address is addr, or NULL. Valid while s is held. */
const struct users_entry *users_snap_find(const struct users_snap *s, struct span addr);
/* A hash to verify unknown users against so that they cost as much as a
 * real one: the first usable stored hash (scheme in *scheme_r), or NULL when
 * there is none. Valid while s is held. */
const char *users_snap_dummy_hash(const struct users_snap *s, enum users_scheme *scheme_r);
bool users_snap_is_local_domain(const struct users_snap *s, struct span domain);
/* Resolves a recipient: a user gives itself, an alias (postmaster
 * included) its expansion (users in their canonical spelling, addresses in
 * other domains as written). Sets *targets_r to an array valid while s is
 * held. Returns the number of targets (>= 1), or -ENOENT. */
int users_snap_resolve(const struct users_snap *s, struct span addr,
		       const char *const **targets_r);
/* Returns true when the user (canonical address) may use from as envelope
 * sender: its own address, or an alias (postmaster included) whose
 * expansion contains the user. */
bool users_snap_may_send_as(const struct users_snap *s, struct span user, struct span from);

/* ---- convenience for one question; each takes and puts a snapshot --- */

/* Copies the canonical address of addr's user into canon (NUL-terminated).
 * Returns 0, -ENOENT, or -ENAMETOOLONG when size is too small. */
int users_lookup(struct users *u, struct span addr, char *canon, size_t size);
bool users_is_local_domain(struct users *u, struct span domain);
/* Calls fn once per target of users_snap_resolve(); a target is valid
 * during the call. Returns the number of targets or -ENOENT. */
int users_resolve(struct users *u, struct span addr,
		  void (*fn)(void *arg, const char *target), void *arg);
bool users_may_send_as(struct users *u, struct span user, struct span from);

/* ---- addresses and passwords (pure, any thread) -------------------- */

/* Returns true for local@domain within the length limits, with no
 * whitespace, control characters, ':' ',' '#' '<' '>' or second '@'. */
bool users_addr_valid(struct span addr);
/* Splits a stored password field ("{SHA512-CRYPT}$6$...", "$y$...") into
 * scheme and hash (*hash_r points into field). Returns 0, or -EINVAL with
 * *why_r set to a short reason (unknown scheme, scheme and hash disagree);
 * an empty or locked field is 0 with USERS_SCHEME_NONE. */
int users_parse_password(const char *field, enum users_scheme *scheme_r,
			 const char **hash_r, const char **why_r);
/* Checks pass against hash (users_parse_password()'s output) with crypt_rn
 * and a constant-time comparison. CPU-heavy: workers only. Returns 1 on a
 * match, 0 on a mismatch (also for USERS_SCHEME_NONE and a pass holding a
 * NUL byte), or -ENOMEM / -EINVAL when crypt failed. */
int users_password_verify(enum users_scheme scheme, const char *hash, struct span pass);
/* Hashes pass with yescrypt and a fresh salt into out as a passwd field
 * ("{CRYPT}$y$...": Dovecot 2.3 has no {YESCRYPT} name). CPU-heavy. Returns 0, -EINVAL (a NUL in pass),
 * -ENAMETOOLONG (out too small), or -ENOMEM. */
int users_password_hash(struct span pass, char *out, size_t size);

#endif
