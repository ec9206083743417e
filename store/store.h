/* store.h - the mailbox store, as protocols see it.
 *
 * This header is the whole interface: protocols (SMTP delivery, IMAP, POP3)
 * use only what is declared here, so another backend (a distributed one) can
 * stand behind it later. The append-only file backend's internals live in
 * store/ (record.h, index.h, store_private.h) and are documented in
 * docs/store.md.
 *
 * Threading: one struct store per process, shared by every loop. Handles
 * (users, folders, views, appends) belong to the loop that opened them and
 * must be used from that loop's thread only; the same user or folder may be
 * open on several loops at once (each has its own handle). Every callback
 * runs on the thread of the loop the request was started on, and never
 * from inside the call that started the request.
 *
 * Errors are negative errnos: -EDQUOT (over quota), -ENOENT (no such folder
 * or message), -EEXIST, -EINVAL (bad name or argument), -EFBIG (message or
 * blob too large), -ENOSPC / -EIO (the disk: the change was not
 * acknowledged; see store_append_commit() for what a failed append may
 * leave). A folder whose log or fsync failed refuses further changes with
 * -EIO until every handle is closed and it is reopened (and recovered).
 *
 * Durability: a callback reporting success for a change (append, flags,
 * expunge, folder create/rename/delete) runs only after the change is on
 * disk (fdatasync of data and log, fsync of a new file's directory), and
 * after every change logged before it in the same folder. */
#ifndef RINGMAIL_STORE_STORE_H
#define RINGMAIL_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/span.h"

struct loop;
struct store;
struct store_user;
struct store_folder;
struct store_view;
struct store_append;

/* ---- process-wide ---------------------------------------------------- */

struct store_config {
	const char *data_dir;     /* created if missing */
	uint64_t quota_bytes;     /* per user; 0: no limit */
	uint64_t quota_messages;  /* per user; 0: no limit */
	/* Folders a user may have: store_folder_create past it is -EMLINK.
	 * INBOX and the auto_folders are not counted, and the special-use
	 * names (made on first use) are always allowed. 0: no limit. */
	size_t folders_max;
	/* Folders every user has, created and subscribed when the store
	 * loads a user that lacks them (Dovecot's `auto = subscribe`):
	 * nauto_folders names (copied by store_new; not INBOX, valid
	 * folder names, duplicates ignored; -EINVAL otherwise). Deleting or
	 * renaming one away makes it again, empty, before the change is
	 * reported; unsubscribing one succeeds and changes nothing. 0: none. */
	const char *const *auto_folders;
	size_t nauto_folders;
	/* Bytes an append buffers before it writes; a message up to this size
	 * goes to the folder's shared segment, a larger one to a segment file
	 * of its own. 0: STORE_APPEND_BUF_DEFAULT. */
	size_t append_buf;
	/* A folder writes a checkpoint after this many log bytes since the
	 * last one. 0: STORE_CHECKPOINT_DEFAULT. */
	uint64_t checkpoint_bytes;
	/* A shared segment file rolls over to a new one past this size; the
	 * old one can then be compacted. 0: STORE_SEGMENT_MAX. */
	uint64_t segment_max;
	/* A folder compacts on its own (store_compact) once this many bytes
	 * of its messages were expunged since its last compaction started.
	 * 0: segment_max / 2. */
	uint64_t compact_after;
	/* Users nobody has open stay loaded (LRU) up to this many, so that
	 * deliveries to them do not reload their folders each time.
	 * 0: STORE_USER_CACHE_DEFAULT; SIZE_MAX: none are kept. */
	size_t user_cache;
	/* Testing and benchmarks only: sync every change on its own, without
	 * group commit (the one-fsync-per-message baseline). */
	bool no_group_commit;
	/* Testing only (fault injection): sees the result of every fsync of
	 * a file or directory (0 or -errno) and returns the one to act on. */
	int (*test_sync_result)(void *arg, int res);
	void *test_sync_arg;
};

enum {
	STORE_APPEND_BUF_DEFAULT = 256 * 1024,
	STORE_CHECKPOINT_DEFAULT = 4 * 1024 * 1024,
	STORE_SEGMENT_MAX = 64 * 1024 * 1024, /* default segment_max */
	STORE_BLOB_MAX = 256 * 1024,          /* structure blob limit */
	STORE_READ_MAX = 1024 * 1024,         /* largest single store_read() */
	STORE_NAME_MAX = 1000,                /* folder name bytes */
	STORE_KEYWORDS_MAX = 64,              /* keywords per folder */
	STORE_USER_CACHE_DEFAULT = 256,
};

/* Takes the data directory's lock file (DIR/lock, flock + our pid in it),
 * creating DIR when missing. Call once at startup, before loops run (it
 * blocks). Returns the lock fd (keep it open for the process's life), or a
 * negative errno; -EWOULDBLOCK when another process owns DIR, with a message
 * naming its pid written to err (errlen bytes, may be 0). */
int store_lock_datadir(const char *path, char *err, size_t errlen);

/* Creates the store. cfg is copied. Returns 0 or a negative errno. */
int store_new(const struct store_config *cfg, struct store **store_r);
/* Frees the store; every handle must be closed. Sets *store_r to NULL.
 * Closing handles queues close operations on their loop's ring: a tool or
 * test driving a standalone loop should turn it once more (loop_run_until()
 * with a short timeout) before loop_free(), or those descriptors leak. */
void store_free(struct store **store_r);

/* ---- users and folders ------------------------------------------------ */

/* Opens the mailboxes of user (a full address, case-folded by the caller)
 * on loop: reads the folder list, creating the user's directory and INBOX
 * on first use, and the auto_folders the user lacks (durable before cb; a
 * failure to make them is logged, not returned). A user already loaded
 * costs no I/O. cb(arg, res, user) runs once; user is NULL when res < 0 and
 * otherwise owned by the caller until store_user_close(). */
typedef void store_user_cb(void *arg, int res, struct store_user *user);
void store_user_open(struct store *store, struct loop *loop, const char *user,
		     store_user_cb *cb, void *arg);
void store_user_close(struct store_user **user_r);

/* The user's quota use and limits (0: no limit). Counts messages whose
 * append was acknowledged and not expunged. */
void store_user_quota(struct store_user *user, uint64_t *bytes_r, uint64_t *msgs_r,
		      uint64_t *limit_bytes_r, uint64_t *limit_msgs_r);

/* Overrides the store's quota limits for this user (from the user
 * database), for every handle of it: 0 keeps the store's default,
 * STORE_QUOTA_NONE means no limit. Not persisted: set it after each open. */
#define STORE_QUOTA_NONE UINT64_MAX
void store_user_set_quota(struct store_user *user, uint64_t bytes, uint64_t msgs);

/* Special-use folders, created on first use by store_folder_open(). */
enum store_special {
	STORE_SPECIAL_NONE = 0,
	STORE_SPECIAL_SENT, STORE_SPECIAL_DRAFTS, STORE_SPECIAL_TRASH,
	STORE_SPECIAL_JUNK, STORE_SPECIAL_ARCHIVE,
};

struct store_folder_info {
	const char *name;   /* valid until the next list call on this user */
	enum store_special special;
	bool subscribed;
	bool exists;        /* false: a subscription to a missing folder */
};

/* Lists the user's folders (INBOX first, then by name) into *list_r, an
 * array of *n_r entries the caller frees with free() (names included in the
 * same allocation). Returns 0 or -ENOMEM. A snapshot: changes by other
 * loops appear at the next call. */
int store_folder_list(struct store_user *user, struct store_folder_info **list_r,
		      size_t *n_r);

/* Folder changes; each logs one record in the user's folder list and calls
 * cb(arg, res) once durable. Names: 1..STORE_NAME_MAX bytes, no NUL, no
 * control characters; "INBOX" (any case) is the inbox and cannot be deleted
 * or created; hierarchy is the caller's ('/' or '.' are plain bytes here).
 * create: -EEXIST; delete, rename: -ENOENT; rename to an existing name:
 * -EEXIST. Delete removes the folder's messages from the list and quota
 * once durable, then its files in the background (handles still open on it
 * get -ENOENT for changes). */
typedef void store_done_cb(void *arg, int res);
/* create: -EMLINK past store_config.folders_max (creates in flight count). */
void store_folder_create(struct store_user *user, struct loop *loop, const char *name,
			 store_done_cb *cb, void *arg);
void store_folder_delete(struct store_user *user, struct loop *loop, const char *name,
			 store_done_cb *cb, void *arg);
void store_folder_rename(struct store_user *user, struct loop *loop, const char *from,
			 const char *to, store_done_cb *cb, void *arg);
void store_folder_subscribe(struct store_user *user, struct loop *loop, const char *name,
			    bool on, store_done_cb *cb, void *arg);

/* Opens a folder on loop (recovering it if this process has not opened it
 * yet; opening its files again, through loop's ring, if no handle or
 * request used it since they closed: docs/store.md "Descriptors"). INBOX
 * and the special-use names ("Sent", "Drafts", "Trash", "Junk", "Archive")
 * are created when missing; other names give -ENOENT. cb runs once with
 * the handle (NULL when res < 0), owned by the caller until
 * store_folder_close(). */
typedef void store_folder_cb(void *arg, int res, struct store_folder *folder);
void store_folder_open(struct store_user *user, struct loop *loop, const char *name,
		       store_folder_cb *cb, void *arg);
/* Closes the handle (watch included); in-flight requests still complete.
 * The folder's files close once its last handle and request are gone. */
void store_folder_close(struct store_folder **folder_r);

struct store_folder_status {
	uint32_t uidvalidity, uidnext;
	uint64_t highestmodseq;
	uint32_t messages;
	uint32_t unseen;     /* messages without \Seen */
	uint32_t deleted;    /* messages with \Deleted */
	uint64_t bytes;
};
void store_folder_status(struct store_folder *folder, struct store_folder_status *st_r);
/* The same counts for the folder called name, without opening it: from
 * the index the store keeps of every folder of a loaded user, so a STATUS
 * sweep over all folders opens no file (docs/store.md "Descriptors").
 * Synchronous. Returns 0, -ENOENT when no such folder exists (a
 * special-use folder that store_folder_open() would create on demand
 * does not yet), or -EINVAL for a bad name (empty, too long, control
 * characters). */
int store_folder_status_of(struct store_user *user, const char *name,
			   struct store_folder_status *st_r);

/* QRESYNC (RFC 7162): the UIDs expunged from the folder by changes with a
 * MODSEQ above since, as ascending, disjoint ranges in *ranges_r (malloc'ed,
 * the caller frees it; NULL when *n_r is 0). The store remembers a bounded
 * history of expunges (it survives restarts: the log and checkpoints carry
 * it). Returns 1 when the ranges are every such UID, 0 when expunges that
 * old may have been forgotten (the ranges then hold only the remembered
 * ones: the caller must treat every UID it cannot find as possibly
 * expunged), or -ENOMEM. A snapshot, like store_folder_status(). */
struct store_uid_range {
	uint32_t lo, hi;
};
int store_folder_vanished(struct store_folder *folder, uint64_t since,
			  struct store_uid_range **ranges_r, size_t *n_r);

/* ---- messages --------------------------------------------------------- */

enum store_flag {
	STORE_F_SEEN = 1u << 0,
	STORE_F_ANSWERED = 1u << 1,
	STORE_F_FLAGGED = 1u << 2,
	STORE_F_DELETED = 1u << 3,
	STORE_F_DRAFT = 1u << 4,
	STORE_F_ALL = 0x1f,
};

struct store_msg {
	uint32_t uid;
	uint32_t flags;        /* STORE_F_* */
	uint64_t keywords;     /* bit i: store_view_keyword(view, i) */
	uint64_t modseq;
	uint64_t size;
	int64_t internal_date; /* seconds since the epoch */
	struct span blob;      /* the structure blob; valid as long as the view */
};

/* A snapshot of a folder's messages, in UID order, taken now. Valid until
 * store_view_free(); changes made after it are seen by a new view (use
 * store_watch() to learn when). Returns 0 or -ENOMEM. */
int store_view_open(struct store_folder *folder, struct store_view **view_r);
void store_view_free(struct store_view **view_r);
size_t store_view_count(const struct store_view *view);
/* The i-th message (0-based), valid as long as the view. */
const struct store_msg *store_view_msg(const struct store_view *view, size_t i);
/* The index of uid in the view, or -1. */
ssize_t store_view_find(const struct store_view *view, uint32_t uid);
/* The name of keyword bit i, or NULL; valid as long as the view. */
const char *store_view_keyword(const struct store_view *view, unsigned i);
/* uidvalidity, uidnext and highestmodseq as of the snapshot. */
void store_view_status(const struct store_view *view, struct store_folder_status *st_r);

/* Reads up to len (<= STORE_READ_MAX) bytes of message uid starting at off
 * into buf, which must stay valid until cb. cb(arg, res): res is the number
 * of bytes read (0 at the end of the message) or a negative errno (-ENOENT
 * when the message is expunged and its bytes are gone). Reading a message
 * expunged after the caller's view was taken may still succeed. */
typedef void store_read_cb(void *arg, ssize_t res);
void store_read(struct store_folder *folder, struct loop *loop, uint32_t uid,
		uint64_t off, void *buf, size_t len, store_read_cb *cb, void *arg);
/* Like store_read(), but moves the bytes from the segment file into the
 * pipe whose write end is pipe_wr_fd with splice(2) (IORING_OP_SPLICE,
 * SPLICE_F_MOVE | SPLICE_F_NONBLOCK): page references, no copy through user
 * space. cb's res is the number of bytes now in the pipe, which may be
 * fewer than len (the pipe is full: -EAGAIN when nothing fit; keep what is
 * queued in the pipe below its capacity), 0 at the end of the message, or a
 * negative errno. pipe_wr_fd must stay open until cb. The bytes are the
 * stored ones, NUL octets included. */
void store_splice(struct store_folder *folder, struct loop *loop, uint32_t uid,
		  uint64_t off, size_t len, int pipe_wr_fd, store_read_cb *cb, void *arg);

/* Flags and keywords. op: STORE_FLAGS_SET replaces, ADD adds, REMOVE
 * removes. Keywords are names (atoms); new ones are added to the folder's
 * table (-ENOSPC beyond STORE_KEYWORDS_MAX). UIDs not in the folder are
 * ignored. Each changed message gets the new MODSEQ passed to cb; a
 * message the change leaves as it was (+\Seen on a \Seen one) keeps its
 * MODSEQ, and HIGHESTMODSEQ moves only when some message changed. That is
 * decided as changes are applied, in MODSEQ order, so changes of other
 * handles in flight at the same time count. A MODSEQ that changed no
 * message is never visible and may be handed out again after a reopen. */
enum store_flags_op { STORE_FLAGS_SET = 0, STORE_FLAGS_ADD = 1, STORE_FLAGS_REMOVE = 2 };
typedef void store_modseq_cb(void *arg, int res, uint64_t modseq);
void store_flags(struct store_folder *folder, struct loop *loop, const uint32_t *uids,
		 size_t n, enum store_flags_op op, uint32_t flags,
		 const char *const *keywords, size_t nkeywords,
		 store_modseq_cb *cb, void *arg);

/* Removes the messages uids (any not in the folder are ignored). IMAP
 * EXPUNGE passes those flagged \Deleted; POP3 passes its DELEs at QUIT. */
void store_expunge(struct store_folder *folder, struct loop *loop, const uint32_t *uids,
		   size_t n, store_modseq_cb *cb, void *arg);

/* Copies messages (flags, keywords, internal date, blob) to dst, which may
 * belong to another user; with move, expunges them from src once every copy
 * is durable. new_uids_r (n entries, the caller's until cb) receives the UID
 * of each copy in dst, 0 for a UID not in src, or expunged from it while
 * being copied (for COPYUID). cb(arg, res)
 * once all are durable (res 0) or on the first error (copies already made
 * stay; with move nothing is expunged). A copy or move out of a folder
 * deleted through another handle is -ESTALE (not -ENOENT, which a
 * destination deleted meanwhile gives), checked under the lock the delete
 * takes, before each copy and after the last: a delete reported before the
 * call copies nothing; one that lands during the call either fails it with
 * -ESTALE (the caller removes the copies made) or comes after a complete
 * copy (res 0; for a move, after its expunge). A folder renamed through
 * another handle is the same folder: copy and move go on. */
void store_copy(struct store_folder *src, struct loop *loop, const uint32_t *uids,
		size_t n, struct store_folder *dst, bool move, uint32_t *new_uids_r,
		store_done_cb *cb, void *arg);

/* Change notification (IMAP IDLE): after a change to the folder is durable,
 * cb(arg) runs on loop (soon; several changes may be reported by one call).
 * One watch per handle; replaced by a second call, removed by cb NULL or
 * store_folder_close(). */
typedef void store_watch_cb(void *arg);
int store_watch(struct store_folder *folder, struct loop *loop, store_watch_cb *cb, void *arg);

/* ---- appends ---------------------------------------------------------- */

/* Starts appending one message to the folders dst[0..n) (n >= 1, several
 * users allowed: an SMTP message to several local recipients). flags and
 * keywords as in store_flags(), for every destination. on_ready(arg) is
 * called when an append that refused bytes (see store_append_write) can
 * take more. Returns 0 and the append in *append_r, or a negative errno. */
typedef void store_ready_cb(void *arg);
int store_append_begin(struct loop *loop, struct store_folder *const *dst, size_t n,
		       int64_t internal_date, uint32_t flags,
		       const char *const *keywords, size_t nkeywords,
		       store_ready_cb *on_ready, void *arg,
		       struct store_append **append_r);

/* Offers the next bytes of the message. Returns how many were taken (copied;
 * chunk may be reused at once): fewer than chunk.len means the buffer is
 * full while a write is in flight; offer the rest after on_ready. A negative
 * errno means the append failed (the caller must still abort it). */
ssize_t store_append_write(struct store_append *append, struct span chunk);

typedef void store_uid_cb(void *arg, int res, uint32_t uid);
/* Ends the message. blob (<= STORE_BLOB_MAX bytes, copied) is stored with it.
 * done(arg, res, uid) runs once the message is durable in every destination
 * (res 0, uid its UID in dst[0]; store_append_uid() gives the others during
 * the callback), or failed (res < 0: -EDQUOT when a destination user is over
 * quota, checked before anything is written; after a disk error in one
 * destination the message may remain in the others that succeeded, so a
 * retry can duplicate it there). Never reports success for a message that is
 * not durable everywhere. The append is freed after done returns. */
void store_append_commit(struct store_append *append, struct span blob,
			 store_uid_cb *done, void *arg);
/* The UID in dst[i]; valid only inside the done callback. */
uint32_t store_append_uid(const struct store_append *append, size_t i);
/* Drops an append that was not committed; frees it. */
void store_append_abort(struct store_append **append_r);

/* ---- maintenance ------------------------------------------------------ */

/* Rewrites the folder's mostly expunged shared segments, moving the live
 * messages into the current one, then deletes the old files (readers that
 * opened them keep reading). Online: appends and reads go on. cb(arg, res)
 * with res the bytes reclaimed, or a negative errno. */
void store_compact(struct store_folder *folder, struct loop *loop,
		   store_done_cb *cb, void *arg);

/* Writes a checkpoint of the folder's index now (it is also written
 * automatically). cb(arg, res). */
void store_checkpoint(struct store_folder *folder, struct loop *loop,
		      store_done_cb *cb, void *arg);

/* Rewrites the folder's index log without its history (expunged messages,
 * superseded flag changes): the same state in fewer bytes (it is also done
 * automatically, when at least half the log is history). Changes made
 * meanwhile wait and are written to the new log. cb(arg, res) with res the
 * new log's length, or a negative errno (-EBUSY while a checkpoint or
 * another rewrite runs). */
void store_rewrite_log(struct store_folder *folder, struct loop *loop,
		       store_done_cb *cb, void *arg);

/* Checks every folder of every user under data_dir with plain blocking I/O
 * (a tool: run it on a data dir no server owns). Writes one line per folder
 * and per problem to report. With repair, truncates torn or corrupt log
 * tails, removes files no record references, and rewrites bad checkpoints.
 * Returns 0 when everything was clean, 1 when problems were found (and, with
 * repair, fixed), or a negative errno when the check itself failed. */
int store_fsck(const char *data_dir, bool repair, FILE *report);

#endif
