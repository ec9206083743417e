/* imap_session.c - the IMAP session (RFC 3501, with LITERAL+, SASL-IR, ID,
 * ENABLE, IDLE, NAMESPACE, UIDPLUS, MOVE, UNSELECT, CHILDREN, SPECIAL-USE,
 * CONDSTORE, QRESYNC, BINARY, SEARCHRES, UNAUTHENTICATE and APPENDLIMIT;
 * RFC 9051 IMAP4rev2 after ENABLE).
 *
 * One struct imap_session per connection, driven by stream.c. Input is cut
 * into tokens by proto/imap_parse.c in place; a command's tokens are copied
 * into the session's argument arena (bounded by the line limit plus
 * limits.imap_literal_max of small literals), because a command that waits for a
 * literal ("+ ") spans several data() calls. APPEND's message literal is
 * never gathered: it streams into store_append with the MIME scanner
 * computing the structure blob on the way.
 *
 * The state machine follows smtp_session.c / pop3_session.c: an explicit
 * enum imap_state, a command table with the states each command is allowed
 * in, input paused while the authenticator or the store works (a command
 * is "busy"), and the pending-callbacks rule: the session counts callbacks
 * in flight and, when the connection goes away first, is freed by the last.
 *
 * The selected mailbox: msgs[] is what the client knows (sequence number i
 * is msgs[i - 1]); view is the latest store snapshot. They differ by
 * messages not yet announced (EXISTS) and by expunges not yet announced
 * (EXPUNGE responses are held back during FETCH, STORE and SEARCH, RFC 3501
 * 7.4.1; such a message stays addressable, its data comes from the view it
 * was last seen in is gone, so FETCH answers NO [EXPUNGEISSUED] for it).
 *
 * FETCH streams message bytes with store_read() in IMAP_READ_CHUNK pieces
 * as literals; the next read waits for the stream's drained callback when
 * the send queue is long, so a message is never held whole in memory. On
 * a plaintext stream a long byte range of a message known to hold no NUL
 * (MIME_BLOB_NUL_FREE) is not read at all: store_splice() moves it from the
 * segment file into a per-session pipe and stream_send_splice() from there
 * to the socket (zero-copy; see fetch_splice_ok()).
 * BINARY decodes a part the same way, one piece at a time, twice: once to
 * learn the literal's size, once to send it. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "proto/decode.h"
#include "proto/imap_parse.h"
#include "proto/imap_search.h"
#include "proto/imap_sort.h"
#include "proto/imap_thread.h"
#include "proto/mime.h"
#include "proto/sasl.h"
#include "proto/services.h"
#include "proto/session_util.h"
#include "proto/stream.h"
#include "proto/user_limit.h"
#include "store/auth.h"
#include "store/store.h"

/* Tokens in one command. */
#define IMAP_TOKENS_MAX 8192
/* Ranges in one sequence set. */
#define IMAP_SET_MAX 1024
/* Items in one FETCH. */
#define IMAP_FETCH_ITEMS_MAX 64
/* Bytes of a message read from the store at once. */
#define IMAP_READ_CHUNK (64u * 1024u)
/* FETCH splices (zero-copy, plaintext only) a byte range of at least this
 * size: below it one read and copy costs less than the two kernel worker
 * hand-offs of a splice (bench/RESULTS.md, "zero-copy plaintext FETCH"). */
#define IMAP_SPLICE_MIN (256u * 1024u)
/* The splice pipe's size, asked for with F_SETPIPE_SZ (fs.pipe-max-size
 * caps it, 1 MiB by default); bytes per splice are this minus a page. A
 * pipe that cannot grow to IMAP_SPLICE_PIPE_MIN (the user's pipe pages
 * are over fs.pipe-user-pages-soft) is not used: many small splices cost
 * more than copying. */
#define IMAP_SPLICE_PIPE (1024u * 1024u)
#define IMAP_SPLICE_PIPE_MIN (256u * 1024u)
/* Output is handed to the stream in pieces of this size (one TLS record). */
#define IMAP_OUT_CHUNK (16u * 1024u)
/* An arena up to this size is kept between commands (0: none is). */
#define IMAP_ARENA_KEEP 0u
/* A streamed reply waits for the socket while more than this is queued
 * (or a quarter of limits.send_queue_max when that is smaller). */
#define IMAP_SEND_HIGH (256u * 1024u)
/* A header read whole for HEADER.FIELDS filtering. */
#define IMAP_HEADER_READ_MAX (1024u * 1024u)
/* A refused non-synchronising literal is read and dropped up to this
 * size; a larger one closes the connection (RFC 7888 4). */
#define IMAP_DISCARD_MAX (64u * 1024u * 1024u)
/* The longest user name (RFC 5321 path limit). */
#define IMAP_USER_MAX 320
/* Messages in one MULTIAPPEND. */
#define IMAP_APPEND_MSGS_MAX 4096
/* A SASL response line, base64. */
#define IMAP_SASL_LINE_MAX (8u * 1024u)

enum imap_state {
	IMAP_S_NOTAUTH,
	IMAP_S_AUTH,
	IMAP_S_SELECTED,
	IMAP_S_LOGOUT,
};

#define ST(x) (1u << IMAP_S_##x)

static const char *const state_names[] = { "not-authenticated", "authenticated", "selected",
					    "logout" };

const char *imap_state_str(enum imap_state st);
const char *imap_state_str(enum imap_state st)
{
	return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

/* How input is read. */
enum imap_mode {
	M_CMD,     /* tokens of commands */
	M_SKIP,    /* the rest of a bad command's line */
	M_DISCARD, /* a refused non-synchronising literal's data, then M_SKIP */
	M_SASL,    /* AUTHENTICATE: waiting for the response line */
	M_IDLE,    /* IDLE: waiting for DONE */
};

enum tok_kind { T_ATOM, T_NIL, T_STRING, T_LBEGIN, T_LEND };

struct tok {
	uint8_t kind;
	bool literal;
	uint32_t off, len; /* in the arena, NUL-terminated there */
};

/* Messages as the client knows them. */
struct imsg {
	uint32_t uid;
	uint32_t flags;
	uint64_t kw;
	uint64_t modseq;
};

enum fitem_kind {
	FI_FLAGS, FI_UID, FI_INTERNALDATE, FI_SIZE, FI_ENVELOPE, FI_BODYSTRUCTURE,
	FI_BODY, FI_SECTION, FI_MODSEQ,
	FI_BINARY, FI_BINARY_SIZE, /* RFC 3516 / RFC 9051: decoded part, its size */
};

struct fitem {
	uint8_t kind;
	bool peek;
	bool partial;
	uint8_t rfc822;      /* 0; 1 RFC822; 2 RFC822.HEADER; 3 RFC822.TEXT */
	struct span spec;    /* the section spec (arena) */
	uint64_t poff, plen; /* partial */
};

struct fetch_job {
	struct fitem items[IMAP_FETCH_ITEMS_MAX];
	size_t nitems;
	bool uid, set_seen, want_flags, want_modseq;
	bool select_reply;   /* QRESYNC's SELECT: select_done() at the end */
	uint64_t changedsince;
	size_t mi;           /* next msgs index to look at */
	size_t ui;           /* uids[] walked up to here */
	bool in_msg;         /* a "* n FETCH (" is open */
	size_t cur;          /* its msgs index */
	size_t ii;           /* next item */
	bool item_open;      /* a section is streaming */
	bool add_flags;      /* FLAGS added by the implicit \Seen */
	bool flags_sent;     /* this message's response holds FLAGS */
	bool has_uid;        /* UID is one of the items */
	bool expunged;       /* a message was gone: NO [EXPUNGEISSUED] */
	bool reading, wait_drain;
	bool splice;         /* the open section may go file -> pipe -> socket */
	bool rd_splice;      /* the read in flight is a splice */
	bool nul_free;       /* the open section's message holds no NUL: sent as read */
	uint64_t rd_off, rd_left, lit_left;
	/* The open section's "{n}" waits for its first read: a message
	 * another session expunged after this session's view was taken is
	 * found gone by that read (-ENOENT), before a literal is promised. */
	bool lit_pending;
	uint64_t lit_len;
	bool hdr_filter, hdr_not;
	bool hdr_out;        /* the filtered header is being sent from hbuf */
	struct span hdr_fields;
	uint8_t *hbuf;
	size_t hlen, hcap, hout;
	/* BINARY / BINARY.SIZE of the current item (fetch_binary_*): a scan
	 * pass decodes the part to learn the size (and whether the bytes to
	 * send hold a NUL: literal8), then a send pass decodes it again and
	 * sends the wanted range. Nothing but one read and its decoded form
	 * is held. */
	uint8_t bin;          /* BIN_NONE, BIN_SCAN, BIN_SEND */
	bool bin_size_only;   /* BINARY.SIZE: the scan's count is the answer */
	bool bin_nul;         /* a NUL in the wanted range */
	struct decode dec;
	uint64_t part_off, part_len; /* the part's encoded bytes */
	uint64_t dec_pos;     /* decoded bytes this pass produced so far */
	uint64_t want_off, want_end; /* the decoded range wanted */
	uint8_t *dbuf;        /* DECODE_OUT_MAX(IMAP_READ_CHUNK) + 2 */
};

enum { BIN_NONE, BIN_SCAN, BIN_SEND };

struct imap_session;

/* A long untagged reply in the making: numbers or UID ranges written a
 * few bytes at a time, waiting for the drained callback whenever the
 * send queue is long (out_list_pump), so that a reply of any size (SEARCH
 * over a mailbox of hundreds of thousands of messages, a VANISHED
 * (EARLIER) full of holes) never fills limits.send_queue_max and never
 * sits whole in memory. then() writes the rest and goes on. */
struct out_list {
	bool active, wait_drain;
	bool as_set;                     /* v as "1:3,5"; else " 1 2 3" */
	const uint32_t *v;               /* ascending numbers, or */
	const struct store_uid_range *r; /* ascending ranges ("1:3,5"), or */
	const char *txt;                 /* n bytes of text (THREAD) */
	size_t n, i;
	void *own;                       /* freed when the list is done */
	void (*then)(struct imap_session *is);
};

struct imap_session {
	struct stream *s;
	struct loop *loop;     /* stream_loop(s), kept: s is gone after close */
	struct services *sv;
	enum imap_state state;
	enum imap_mode mode;
	struct imap_parser parser;
	unsigned bad;
	unsigned pending;
	bool dead;
	bool paused;
	bool busy;             /* a command waits for the store/auth */
	bool out_blocked;
	bool tls_pending;
	bool compress_started; /* COMPRESS accepted: stop parsing this input */
	bool shutting_down;
	bool condstore;        /* ENABLE CONDSTORE or a CONDSTORE command */
	bool qresync;          /* ENABLE QRESYNC: VANISHED instead of EXPUNGE */
	bool rev2;             /* ENABLE IMAP4rev2: UTF-8 names, ESEARCH, no RECENT */
	bool store_silent;     /* STORE ... FLAGS.SILENT */
	/* A .SILENT STORE's operation, for flags_done_cb() to tell what the
	 * client now believes from what another session changed: op, system
	 * flags, keyword names (NUL-separated, malloc'd; NULL: unknown). */
	uint8_t store_op;
	uint32_t store_sflags;
	char *store_kw;
	size_t store_nkw;
	bool discard_skip;     /* after M_DISCARD: the command was answered */
	uint64_t discard_left;
	/* the command being read / run */
	uint8_t *arena;
	size_t arena_len, arena_cap, gathered;
	struct tok *toks;
	size_t ntoks, toks_cap;
	bool cmd_broken;       /* too many tokens / gathered too much: BAD at EOL */
	const char *broken_why;
	char tag[128];
	bool have_tag;
	const struct imap_command *cmd;
	bool uid_cmd;
	/* login */
	char user[IMAP_USER_MAX + 1];
	bool user_counted;     /* holds a max_connections_per_user slot */
	uint32_t user_slot;
	struct auth_req *auth_req;
	struct store_user *su;
	/* the selected mailbox */
	struct store_folder *folder;
	struct store_view *view;
	bool readonly;
	char folder_name[STORE_NAME_MAX + 1];
	struct imsg *msgs;
	size_t nmsgs, msgs_cap;
	uint64_t synced_modseq;  /* the view's highestmodseq at the last sync */
	uint32_t synced_count;
	/* SEARCHRES (RFC 5182): the search result variable "$", UIDs as
	 * ascending ranges; empty after SELECT, CLOSE, UNSELECT */
	struct store_uid_range *saved;
	size_t nsaved;
	bool set_saved;          /* set_arg() took "$" (is->set is not used) */
	/* SELECT ... (QRESYNC (uidvalidity modseq [known-uids ...])): known is
	 * the token index of known-uids, 0 when absent */
	bool qr_select;
	uint32_t qr_uidvalidity;
	uint64_t qr_modseq;
	size_t qr_known;
	/* async command state */
	struct store_folder *other;  /* APPEND/COPY/STATUS destination */
	struct store_append *append;
	struct mime_scanner *mime;
	uint8_t *overflow;
	size_t overflow_len;
	int append_rc;
	int undo_err;                /* a failed COPY/APPEND, reported after the undo */
	bool append_data;            /* M_CMD, but LITERAL_DATA goes to the store */
	bool append_active;          /* an APPEND (MULTIAPPEND) command runs */
	bool append_done;            /* the message literal ended: commit next */
	bool append_nonsync;         /* the message literal being opened is {n+} */
	const char *append_why;      /* a BAD for the APPEND, after its undo */
	size_t append_argi;          /* the next message's first token */
	uint32_t *append_uids;       /* committed by this APPEND */
	size_t append_nuids, append_cap;
	uint64_t append_size;
	int64_t append_date;
	uint32_t append_flags;
	const char *append_kw[STORE_KEYWORDS_MAX];
	size_t append_nkw;
	uint32_t *uids, *uids2;
	size_t nuids;
	struct imap_range *set;      /* IMAP_SET_MAX entries, allocated on first use */
	size_t nset;
	struct fetch_job *fj;
	struct out_list ol;
	void (*vanished_then)(struct imap_session *is);
	/* done() waits for the socket: the updates before its tagged reply
	 * did not fit (sync_mailbox() stopped); status and text of the reply */
	bool done_wait;
	bool idle_wait;              /* IDLE: the same, no tagged reply */
	char done_status[4];
	char done_text[1024];
	struct search_job *sj;
	struct list_job *lj;
	struct rename_job *rj;
	struct store_folder *other2; /* RENAME INBOX: the new mailbox */
	uint8_t *rbuf;
	unsigned rd_inflight;        /* store_read()s of FETCH/SEARCH in flight */
	/* FETCH's splice pipe (-1: none): made by the first spliced section,
	 * closed once the FETCH ended and the connection sent what it holds */
	int pipe_r, pipe_w;
	size_t pipe_chunk;           /* bytes one splice may put in it */
	/* output */
	uint8_t *obuf;
	size_t olen, ocap;
};

struct imap_command {
	const char *name;
	unsigned states;
	bool uid;          /* also as "UID name" */
	uint8_t sync;      /* SYNC_* before the tagged reply */
	void (*run)(struct imap_session *is, size_t a);
	int8_t nargs;      /* tokens after the name, each one argument; -1: run() checks */
};

enum { SYNC_NONE, SYNC_NOEXPUNGE, SYNC_FULL };

static const struct config *cfg_of(struct imap_session *is) { return stream_config(is->s); }
static void session_maybe_free(struct imap_session *is);
static void update_input(struct imap_session *is);
static bool sync_mailbox(struct imap_session *is, bool expunge);
static void watch_cb(void *arg);
static void out_uidset(struct imap_session *is, const uint32_t *uids, size_t n);
static void fetch_pump(struct imap_session *is);
static void fetch_free(struct imap_session *is);
static void select_done(struct imap_session *is);

/* ---- output ------------------------------------------------------------------- */

static size_t send_high(struct imap_session *is)
{
	uint64_t q = cfg_of(is)->send_queue_max / 4;
	return q < IMAP_SEND_HIGH ? (size_t)q : IMAP_SEND_HIGH;
}

/* Bytes of a literal read from the store at once. A read starts only while
 * at most send_high() is queued, and what it read is queued whole, so it
 * must fit in the rest of limits.send_queue_max (less an eighth for TLS
 * records): IMAP_READ_CHUNK unless the limit is small. */
static size_t read_chunk(struct imap_session *is)
{
	uint64_t q = cfg_of(is)->send_queue_max, high = send_high(is);
	uint64_t room = q > high ? q - high : 0;
	room -= room / 8;
	if (room < 512)
		room = 512;
	return room < IMAP_READ_CHUNK ? (size_t)room : IMAP_READ_CHUNK;
}

static void out_flush(struct imap_session *is)
{
	if (is->olen && !is->dead)
		stream_send(is->s, is->obuf, is->olen);
	is->olen = 0;
}

static bool out_reserve(struct imap_session *is, size_t more)
{
	if (is->olen + more <= is->ocap)
		return true;
	size_t cap = is->ocap ? is->ocap : IMAP_OUT_CHUNK;
	while (cap < is->olen + more)
		cap *= 2;
	uint8_t *p = realloc(is->obuf, cap);
	if (!p)
		return false;
	is->obuf = p;
	is->ocap = cap;
	return true;
}

static void out_put(struct imap_session *is, const void *p, size_t len)
{
	if (!out_reserve(is, len))
		return;
	memcpy(is->obuf + is->olen, p, len);
	is->olen += len;
	if (is->olen >= IMAP_OUT_CHUNK)
		out_flush(is);
}

static void out_str(struct imap_session *is, const char *s) { out_put(is, s, strlen(s)); }

/* Message bytes (a body chunk, a filtered header): copied into the output
 * buffer while they fit, so that the responses of a FETCH over many small
 * messages leave in sends (and TLS records) of IMAP_OUT_CHUNK, not one per
 * message; a larger piece goes to the stream as it is, after what the
 * buffer holds. */
static void out_bulk(struct imap_session *is, const void *p, size_t len)
{
	if (is->olen + len <= IMAP_OUT_CHUNK) {
		out_put(is, p, len);
		return;
	}
	out_flush(is);
	if (!is->dead)
		stream_send(is->s, p, len);
}

static void out_printf(struct imap_session *is, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct imap_session *is, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf)) {
		char *big = malloc((size_t)n + 1);
		if (!big)
			return;
		va_start(ap, fmt);
		vsnprintf(big, (size_t)n + 1, fmt, ap);
		va_end(ap);
		out_put(is, big, (size_t)n);
		free(big);
		return;
	}
	out_put(is, buf, (size_t)n);
}

/* pre, v in decimal, post: the numbers of the responses sent for every
 * message or command (a FETCH's UID and size, a literal's length, the
 * SELECT counts) without printf's format parsing. */
static void out_num(struct imap_session *is, const char *pre, uint64_t v, const char *post)
{
	size_t lp = strlen(pre), lq = strlen(post);
	if (!out_reserve(is, lp + 20 + lq))
		return;
	uint8_t *o = is->obuf + is->olen;
	char d[20], *q = d + sizeof(d);
	do
		*--q = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	size_t ld = (size_t)(d + sizeof(d) - q);
	memcpy(o, pre, lp);
	memcpy(o + lp, q, ld);
	memcpy(o + lp + ld, post, lq);
	is->olen += lp + ld + lq;
	if (is->olen >= IMAP_OUT_CHUNK)
		out_flush(is);
}

/* An IMAP string: quoted when it can be, a literal otherwise. After ENABLE
 * IMAP4rev2 a quoted string may hold UTF-8 (RFC 9051 QUOTED-CHAR). */
static void out_string(struct imap_session *is, struct span s)
{
	bool quoted = s.len < 1024, utf8 = false;
	for (size_t i = 0; quoted && i < s.len; i++) {
		if (s.p[i] == '\r' || s.p[i] == '\n' || s.p[i] == 0)
			quoted = false;
		else if (s.p[i] >= 0x80)
			utf8 = true;
	}
	if (quoted && utf8)
		quoted = is->rev2 && imap_utf8_valid(s);
	if (!quoted) {
		out_num(is, "{", s.len, "}\r\n");
		out_put(is, s.p, s.len);
		return;
	}
	out_put(is, "\"", 1);
	for (size_t i = 0; i < s.len; i++) {
		if (s.p[i] == '"' || s.p[i] == '\\')
			out_put(is, "\\", 1);
		out_put(is, s.p + i, 1);
	}
	out_put(is, "\"", 1);
}

/* A mailbox name from the store (UTF-8): as it is after ENABLE IMAP4rev2,
 * in modified UTF-7 otherwise. */
static void out_mailbox(struct imap_session *is, const char *name)
{
	if (is->rev2) {
		out_string(is, span_cstr(name));
		return;
	}
	uint8_t buf[STORE_NAME_MAX * 4 + 16];
	ssize_t n = imap_mutf7_encode(span_cstr(name), buf, sizeof(buf));
	if (n < 0)
		out_string(is, span_cstr(name));
	else
		out_string(is, span_make(buf, (size_t)n));
}

/* ---- holding the session -------------------------------------------------------- */

static void hold(struct imap_session *is) { is->pending++; }
static bool release(struct imap_session *is)
{
	is->pending--;
	if (is->dead) {
		session_maybe_free(is);
		return false;
	}
	return true;
}

static void session_close(struct imap_session *is, bool flush)
{
	if (is->state == IMAP_S_LOGOUT || is->dead)
		return;
	out_flush(is);
	is->state = IMAP_S_LOGOUT;
	stream_close(is->s, flush);
}

static void arm_timer(struct imap_session *is)
{
	if (is->state == IMAP_S_NOTAUTH)
		stream_set_timer(is->s, cfg_of(is)->prelogin_timeout_ms);
	else if (is->state == IMAP_S_AUTH || is->state == IMAP_S_SELECTED)
		stream_set_timer(is->s, cfg_of(is)->idle_timeout_ms);
}

static void update_input(struct imap_session *is)
{
	if (is->dead || is->state == IMAP_S_LOGOUT)
		return;
	bool want = is->busy || is->out_blocked || is->overflow_len > 0 ||
		    (is->fj && is->busy);
	if (want == is->paused)
		return;
	is->paused = want;
	if (want)
		stream_pause(is->s);
	else
		stream_resume(is->s);
}

static void set_busy(struct imap_session *is, bool busy)
{
	is->busy = busy;
	update_input(is);
}

/* ---- replies -------------------------------------------------------------------- */

/* The CAPABILITY list for the session's state, written to buf (no
 * shared static: every loop thread runs sessions). Returns buf. */
#define CAPS_MAX 512
static const char *capabilities(struct imap_session *is, char buf[CAPS_MAX])
{
	if (is->state == IMAP_S_NOTAUTH) {
		bool tls_req = stream_tls_required(is->s);
		snprintf(buf, CAPS_MAX, "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE%s%s",
			 stream_can_starttls(is->s) ? " STARTTLS" : "",
			 tls_req ? " LOGINDISABLED" : " AUTH=PLAIN");
	} else {
		snprintf(buf, CAPS_MAX,
			 "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE "
			 "UNSELECT CHILDREN SPECIAL-USE CONDSTORE QRESYNC ESEARCH LIST-EXTENDED "
			 "LIST-STATUS STATUS=SIZE MULTIAPPEND BINARY QUOTA QUOTA=RES-STORAGE "
			 "QUOTA=RES-MESSAGE SEARCHRES WITHIN SORT SORT=DISPLAY "
			 "THREAD=ORDEREDSUBJECT THREAD=REFERENCES%s%s "
			 "APPENDLIMIT=%" PRIu64,
			 cfg_of(is)->imap_unauthenticate ? " UNAUTHENTICATE" : "",
			 cfg_of(is)->imap_compress_level && !stream_is_compressed(is->s)
				 ? " COMPRESS=DEFLATE" : "",
			 cfg_of(is)->message_size_max);
	}
	return buf;
}

static void tagged(struct imap_session *is, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void tagged(struct imap_session *is, const char *status, const char *fmt, ...)
{
	char buf[1024];
	const char *text = fmt;
	if (strchr(fmt, '%')) { /* most replies are constant text: no printf */
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
		text = buf;
	}
	out_str(is, is->have_tag ? is->tag : "*");
	out_put(is, " ", 1);
	out_str(is, status);
	out_put(is, " ", 1);
	out_str(is, text);
	out_put(is, "\r\n", 2);
	out_flush(is);
}

static void count_bad(struct imap_session *is)
{
	if (++is->bad >= cfg_of(is)->max_bad_commands) {
		out_str(is, "* BYE Too many invalid commands\r\n");
		LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-too-many-errors",
		       "errors=%u", is->bad);
		session_close(is, true);
	}
}

/* A protocol error (BAD): the reply, and the session goes on unless there
 * were too many. */
static void bad(struct imap_session *is, const char *text)
{
	tagged(is, "BAD", "%s", text);
	count_bad(is);
}

/* ---- the selected mailbox ----------------------------------------------------------- */

/* "$" becomes the empty set (RFC 5182 2.1). */
static void saved_reset(struct imap_session *is)
{
	free(is->saved);
	is->saved = NULL;
	is->nsaved = 0;
}

/* Whether uid is in the saved result; *k walks the ranges and only grows,
 * so a walk over ascending UIDs is linear. */
static bool saved_has(struct imap_session *is, size_t *k, uint32_t uid)
{
	while (*k < is->nsaved && is->saved[*k].hi < uid)
		(*k)++;
	return *k < is->nsaved && is->saved[*k].lo <= uid;
}

/* Sets "$" to the UIDs uids[0..n) (ascending). Returns false when memory
 * ran out; "$" is then empty (NOTSAVED, RFC 5182 2.5). */
static bool saved_set(struct imap_session *is, const uint32_t *uids, size_t n)
{
	size_t nr = 0;
	for (size_t i = 0; i < n; i++)
		nr += !i || uids[i] != uids[i - 1] + 1;
	saved_reset(is);
	if (!nr)
		return true;
	if (!(is->saved = malloc(nr * sizeof(*is->saved))))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (i && uids[i] == uids[i - 1] + 1)
			is->saved[is->nsaved - 1].hi = uids[i];
		else
			is->saved[is->nsaved++] = (struct store_uid_range){ uids[i], uids[i] };
	}
	return true;
}

/* Drops the messages no longer in msgs[] (their expunge was announced)
 * from "$" (RFC 5182 2.1). The ranges only split where a UID went away. */
static void saved_prune(struct imap_session *is)
{
	if (!is->nsaved)
		return;
	uint32_t *keep = malloc((is->nmsgs + 1) * sizeof(*keep));
	if (!keep)
		return; /* kept as is: uses intersect "$" with msgs[] anyway */
	size_t n = 0, k = 0;
	for (size_t i = 0; i < is->nmsgs; i++)
		if (saved_has(is, &k, is->msgs[i].uid))
			keep[n++] = is->msgs[i].uid;
	saved_set(is, keep, n);
	free(keep);
}

static void mailbox_close(struct imap_session *is)
{
	if (is->folder)
		store_watch(is->folder, is->loop, NULL, NULL);
	store_view_free(&is->view);
	store_folder_close(&is->folder);
	free(is->msgs);
	is->msgs = NULL;
	is->nmsgs = is->msgs_cap = 0;
	is->folder_name[0] = '\0';
	saved_reset(is);
}

static const struct store_msg *msg_of(struct imap_session *is, size_t i)
{
	/* Until an expunge the session has not announced yet, message i of
	 * the session is message i of the view: no search. */
	if (i < store_view_count(is->view)) {
		const struct store_msg *m = store_view_msg(is->view, i);
		if (m->uid == is->msgs[i].uid)
			return m;
	}
	ssize_t j = store_view_find(is->view, is->msgs[i].uid);
	return j < 0 ? NULL : store_view_msg(is->view, (size_t)j);
}

static void out_flags(struct imap_session *is, uint32_t flags, uint64_t kw)
{
	static const char *const names[] = { "\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
					     "\\Draft" };
	bool first = true;
	out_put(is, "(", 1);
	for (unsigned b = 0; b < 5; b++)
		if (flags & (1u << b)) {
			if (!first)
				out_put(is, " ", 1);
			out_str(is, names[b]);
			first = false;
		}
	for (unsigned b = 0; b < 64; b++) {
		const char *k;
		if ((kw & (1ull << b)) && (k = store_view_keyword(is->view, b))) {
			if (!first)
				out_put(is, " ", 1);
			out_str(is, k);
			first = false;
		}
	}
	out_put(is, ")", 1);
}

static bool msgs_reserve(struct imap_session *is, size_t n)
{
	if (n <= is->msgs_cap)
		return true;
	size_t cap = is->msgs_cap ? is->msgs_cap : 64;
	while (cap < n)
		cap *= 2;
	struct imsg *m = realloc(is->msgs, cap * sizeof(*m));
	if (!m)
		return false;
	is->msgs = m;
	is->msgs_cap = cap;
	return true;
}

/* Takes a new snapshot of the folder, keeping msgs[] as they are. */
static int view_refresh(struct imap_session *is)
{
	struct store_view *v;
	int rc = store_view_open(is->folder, &v);
	if (rc)
		return rc;
	store_view_free(&is->view);
	is->view = v;
	return 0;
}

static unsigned digits(uint32_t v)
{
	unsigned n = 1;
	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

/* Whether the send queue (and what waits in the output buffer) is past
 * the point where a long reply waits for the socket. */
static bool out_full(struct imap_session *is)
{
	return stream_send_pending(is->s) + is->olen > send_high(is);
}

/* Tells the client what changed: EXPUNGE (when allowed), FETCH FLAGS,
 * EXISTS. The updates stop when the send queue is long (out_full(): a
 * mailbox of hundreds of thousands of messages can change in one go):
 * returns true then, and the rest is reported by the next call (done()
 * and IDLE call again when the socket has drained). What was not
 * reported stays as the client knew it (msgs[]), so nothing is lost. */
static bool sync_mailbox(struct imap_session *is, bool expunge)
{
	if (is->state != IMAP_S_SELECTED || !is->folder || is->dead)
		return false;
	struct store_folder_status st;
	store_folder_status(is->folder, &st);
	bool pending_expunge = false, stopped = false;
	if (st.highestmodseq == is->synced_modseq && st.messages == is->synced_count &&
	    store_view_count(is->view) == is->nmsgs)
		return false;
	if (view_refresh(is))
		return false;
	store_view_status(is->view, &st);
	/* After ENABLE QRESYNC expunges are one "* VANISHED uid-set" (RFC 7162
	 * 3.2.10); gone[] collects them (no memory: they stay pending). */
	uint32_t *gone = expunge && is->qresync ? malloc((is->nmsgs + 1) * sizeof(*gone)) : NULL;
	if (expunge && (gone || !is->qresync)) {
		size_t w = 0, ngone = 0;
		/* The VANISHED line is written whole: it must fit in the send
		 * queue beside what may be queued (send_high()). Its length is
		 * counted as UIDs join it ("a", "a:b" for a run). */
		uint64_t qmax = cfg_of(is)->send_queue_max, high = send_high(is);
		uint64_t room = qmax > high + 1024 ? qmax - high - 512 : 64, len = 0;
		bool run = false;
		for (size_t i = 0; i < is->nmsgs; i++) {
			if (store_view_find(is->view, is->msgs[i].uid) < 0) {
				uint32_t u = is->msgs[i].uid;
				if (gone && !stopped) {
					bool ext = ngone && u == gone[ngone - 1] + 1;
					len += ext && run ? (uint64_t)(digits(u) - digits(u - 1))
							  : (uint64_t)digits(u) + 1;
					run = ext;
					stopped = ngone && len > room;
				} else if (!stopped) {
					stopped = out_full(is);
				}
				if (stopped) {
					/* announced later: keeps its number for now */
					pending_expunge = true;
					is->msgs[w++] = is->msgs[i];
					continue;
				}
				/* Sequence numbers shift as each is reported. */
				if (gone)
					gone[ngone++] = is->msgs[i].uid;
				else
					out_printf(is, "* %zu EXPUNGE\r\n", w + 1);
				continue;
			}
			is->msgs[w++] = is->msgs[i];
		}
		if (w != is->nmsgs) {
			is->nmsgs = w;
			saved_prune(is);
		}
		if (ngone) {
			out_str(is, "* VANISHED ");
			out_uidset(is, gone, ngone);
			out_str(is, "\r\n");
		}
	}
	free(gone);
	for (size_t i = 0; i < is->nmsgs; i++) {
		const struct store_msg *m = msg_of(is, i);
		if (!m) {
			pending_expunge = true;
			continue;
		}
		if (m->modseq == is->msgs[i].modseq && m->flags == is->msgs[i].flags &&
		    m->keywords == is->msgs[i].kw)
			continue;
		if (stopped || (stopped = out_full(is)))
			continue; /* reported later */
		out_num(is, "* ", i + 1, " FETCH (");
		out_num(is, "UID ", m->uid, " FLAGS ");
		out_flags(is, m->flags, m->keywords);
		if (is->condstore)
			out_num(is, " MODSEQ (", m->modseq, ")");
		out_str(is, ")\r\n");
		is->msgs[i].flags = m->flags;
		is->msgs[i].kw = m->keywords;
		is->msgs[i].modseq = m->modseq;
	}
	uint32_t last = is->nmsgs ? is->msgs[is->nmsgs - 1].uid : 0;
	size_t n = store_view_count(is->view), before = is->nmsgs;
	for (size_t j = 0; j < n; j++) {
		const struct store_msg *m = store_view_msg(is->view, j);
		if (m->uid <= last || !msgs_reserve(is, is->nmsgs + 1))
			continue;
		is->msgs[is->nmsgs++] = (struct imsg){ m->uid, m->flags, m->keywords, m->modseq };
	}
	if (is->nmsgs != before || (expunge && before != n && !stopped))
		out_num(is, "* ", is->nmsgs, " EXISTS\r\n");
	/* RFC 7162 3.2: MODSEQs above an expunge (or a flag change) not
	 * reported yet were sent, so the client must not resynchronise from
	 * them: a HIGHESTMODSEQ from before it. */
	if ((pending_expunge || stopped) && is->condstore)
		out_printf(is, "* OK [HIGHESTMODSEQ %" PRIu64 "] %s pending\r\n",
			   is->synced_modseq, stopped ? "Updates" : "Expunges");
	if (!pending_expunge && !stopped) {
		is->synced_modseq = st.highestmodseq;
		is->synced_count = st.messages;
	}
	return stopped;
}

/* ---- finishing a command ------------------------------------------------------------ */

/* Between commands a session keeps only what it needs to read the next
 * one: the buffers a command grew (tokens, the arena, the output buffer,
 * the read buffer of FETCH/SEARCH, the sequence set) go back to the
 * allocator, so an idle or IDLE session costs little memory (bench/compare
 * "idle"). jemalloc serves the next command's from its thread cache. */
static void release_idle(struct imap_session *is)
{
	free(is->toks);
	is->toks = NULL;
	is->toks_cap = 0;
	is->ntoks = 0;
	if (is->arena_cap > IMAP_ARENA_KEEP) {
		explicit_bzero(is->arena, is->arena_cap);
		free(is->arena);
		is->arena = NULL;
		is->arena_cap = 0;
		is->arena_len = 0;
	}
	free(is->set);
	is->set = NULL;
	is->nset = 0;
	if (!is->olen) {
		free(is->obuf);
		is->obuf = NULL;
		is->ocap = 0;
	}
	if (!is->rd_inflight && !is->fj && !is->sj) {
		free(is->rbuf);
		is->rbuf = NULL;
	}
}

static void cmd_end(struct imap_session *is)
{
	if (is->arena)
		explicit_bzero(is->arena, is->arena_len);
	is->arena_len = 0;
	is->gathered = 0;
	is->ntoks = 0;
	is->have_tag = false;
	is->cmd = NULL;
	is->uid_cmd = false;
	is->cmd_broken = false;
	if (!is->append_data && is->mode != M_DISCARD)
		release_idle(is);
	set_busy(is, false);
	if (is->shutting_down && !is->dead && is->state != IMAP_S_LOGOUT) {
		/* SIGTERM arrived while the command ran: its reply is out, now
		 * the goodbye (RFC 3501 7.1.5). */
		out_str(is, "* BYE [UNAVAILABLE] Server shutting down\r\n");
		session_close(is, true);
		return;
	}
	arm_timer(is);
}

/* The tagged reply of a command, after the untagged updates its sync
 * policy allows. */
static void done(struct imap_session *is, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void done(struct imap_session *is, const char *status, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* max_bad_commands counts BADs in a row: a command that works ends
	 * the run (a long-lived session of a client with one quirk is not
	 * closed at its tenth in a day) */
	if (!strcmp(status, "OK"))
		is->bad = 0;
	if (is->cmd && is->cmd->sync != SYNC_NONE && sync_mailbox(is, is->cmd->sync == SYNC_FULL)) {
		/* The updates fill the send queue: the rest once it drains
		 * (imap_drained), then this reply. Input waits meanwhile. */
		snprintf(is->done_status, sizeof(is->done_status), "%s", status);
		snprintf(is->done_text, sizeof(is->done_text), "%s", buf);
		is->done_wait = true;
		set_busy(is, true);
		out_flush(is);
		return;
	}
	tagged(is, status, "%s", buf);
	cmd_end(is);
}

/* The send queue drained while done() waited: more updates, and the
 * tagged reply once they are all out. */
static void done_resume(struct imap_session *is)
{
	if (sync_mailbox(is, is->cmd && is->cmd->sync == SYNC_FULL)) {
		out_flush(is);
		return;
	}
	is->done_wait = false;
	tagged(is, is->done_status, "%s", is->done_text);
	cmd_end(is);
}

/* ---- arguments ---------------------------------------------------------------------- */

static const char *tok_str(struct imap_session *is, size_t i)
{
	return (const char *)is->arena + is->toks[i].off;
}

static struct span tok_span(struct imap_session *is, size_t i)
{
	return span_make(is->arena + is->toks[i].off, is->toks[i].len);
}

static bool is_atom(struct imap_session *is, size_t i, const char *s)
{
	return i < is->ntoks && is->toks[i].kind == T_ATOM &&
	       span_eq_nocase(tok_span(is, i), span_cstr(s));
}

/* An astring (atom, string, or NIL read as the atom "NIL"). */
static bool is_astring(struct imap_session *is, size_t i)
{
	return i < is->ntoks &&
	       (is->toks[i].kind == T_ATOM || is->toks[i].kind == T_STRING ||
		is->toks[i].kind == T_NIL);
}

/* The index just past the list starting at i (a T_LBEGIN). */
static size_t list_end(struct imap_session *is, size_t i)
{
	int depth = 0;
	for (; i < is->ntoks; i++) {
		if (is->toks[i].kind == T_LBEGIN)
			depth++;
		else if (is->toks[i].kind == T_LEND && --depth == 0)
			return i + 1;
	}
	return is->ntoks;
}

/* A sequence set into is->set (allocated on first use). 0 or -1 as
 * imap_parse_seqset; -1 also when memory ran out. */
static int parse_set(struct imap_session *is, struct span text)
{
	if (!is->set && !(is->set = malloc(IMAP_SET_MAX * sizeof(*is->set))))
		return -1;
	return imap_parse_seqset(text, is->set, IMAP_SET_MAX, &is->nset);
}

static bool syntax(struct imap_session *is, const char *usage)
{
	bad(is, usage);
	cmd_end(is);
	return false;
}

/* A mailbox name or LIST pattern from the client, into UTF-8 (out[0..cap),
 * no NUL written): taken as UTF-8 after ENABLE IMAP4rev2 ("&" is then a
 * plain character), decoded from modified UTF-7 otherwise, where 8-bit
 * UTF-8 that is not modified UTF-7 is accepted too. Returns the length or
 * a negative errno. */
static ssize_t name_decode(struct imap_session *is, struct span s, char *out, size_t cap)
{
	if (is->rev2)
		return imap_utf8_name(s, (uint8_t *)out, cap);
	ssize_t n = imap_mutf7_decode(s, (uint8_t *)out, cap);
	/* only 8-bit input: malformed modified UTF-7 in ASCII stays an error */
	for (size_t i = 0; n == -EINVAL && i < s.len; i++)
		if (s.p[i] >= 0x80)
			return imap_utf8_name(s, (uint8_t *)out, cap);
	return n;
}

/* "INBOX" (and an "INBOX/" prefix) in any case is INBOX. */
static void inbox_fold(char *name)
{
	if (strcasecmp(name, "INBOX") == 0)
		memcpy(name, "INBOX", 6);
	else if (strncasecmp(name, "INBOX/", 6) == 0)
		memcpy(name, "INBOX", 5);
}

/* A mailbox argument in UTF-8 (see name_decode()), "INBOX" in any case is
 * INBOX. false: replied. */
static bool mailbox_arg(struct imap_session *is, size_t i, char *out, size_t cap)
{
	if (!is_astring(is, i))
		return syntax(is, "Mailbox name expected");
	struct span s = tok_span(is, i);
	ssize_t n = name_decode(is, s, out, cap - 1);
	if (n <= 0) {
		done(is, "NO", "Invalid mailbox name");
		return false;
	}
	out[n] = '\0';
	while (n > 1 && out[n - 1] == '/')
		out[--n] = '\0';
	inbox_fold(out);
	return true;
}

/* The name of a mailbox to make: CREATE's (create true: one trailing '/'
 * dropped) or RENAME's destination, in UTF-8 as mailbox_arg() decodes it.
 * Names with empty levels ("a//b", "/a", "a/" for RENAME) are refused
 * with NO [CANNOT] and Dovecot's reason (imap_new_name_check()). Lookups
 * (SELECT, DELETE, RENAME's source...) stay lenient, so a mailbox made
 * with such a name before can still be renamed or deleted. false:
 * replied. */
static bool new_mailbox_arg(struct imap_session *is, size_t i, char *out, size_t cap,
			    bool create)
{
	if (!is_astring(is, i))
		return syntax(is, "Mailbox name expected");
	ssize_t n = name_decode(is, tok_span(is, i), out, cap - 1);
	if (n < 0) {
		done(is, "NO", "Invalid mailbox name");
		return false;
	}
	size_t len;
	const char *why = imap_new_name_check(span_make((const uint8_t *)out, (size_t)n),
					      create, &len);
	if (why) {
		done(is, "NO", "[CANNOT] Invalid mailbox name: %s", why);
		return false;
	}
	out[len] = '\0';
	inbox_fold(out);
	return true;
}

static void store_error(struct imap_session *is, int rc)
{
	switch (rc) {
	case -ENOENT:
		done(is, "NO", "[NONEXISTENT] No such mailbox");
		break;
	case -ESTALE: /* store_copy: another session deleted the source */
		done(is, "NO", "[NONEXISTENT] Mailbox was deleted under us");
		break;
	case -EEXIST:
		done(is, "NO", "[ALREADYEXISTS] Mailbox already exists");
		break;
	case -EDQUOT:
		done(is, "NO", "[OVERQUOTA] Quota exceeded");
		break;
	case -EMLINK:
		done(is, "NO", "[LIMIT] Too many mailboxes (limits.folders_max)");
		break;
	case -EINVAL:
		done(is, "NO", "[CANNOT] Invalid name or argument");
		break;
	case -EFBIG:
		done(is, "NO", "[TOOBIG] Message too large");
		break;
	case -ENOSPC:
		done(is, "NO", "[LIMIT] Limit reached");
		break;
	default:
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-store-error",
		       "user=%s error=%s", is->user, strerror(-rc));
		done(is, "NO", "[SERVERBUG] Internal error, try again later");
		break;
	}
}

/* A sequence set argument against msgs[]: fills uids[] (ascending by
 * sequence) with the messages in the set. false: replied. */
static bool set_arg(struct imap_session *is, size_t i, bool uid)
{
	if (i >= is->ntoks || is->toks[i].kind != T_ATOM)
		return syntax(is, "Sequence set expected");
	is->set_saved = span_eq(tok_span(is, i), SPAN_LIT("$"));
	if (!is->set_saved && parse_set(is, tok_span(is, i)))
		return syntax(is, "Invalid sequence set");
	free(is->uids);
	is->uids = malloc((is->nmsgs ? is->nmsgs : 1) * sizeof(uint32_t));
	if (!is->uids) {
		done(is, "NO", "[SERVERBUG] Out of memory");
		return false;
	}
	is->nuids = 0;
	if (is->set_saved) {
		/* "$" (RFC 5182): the saved messages the client still has, as
		 * UIDs or sequence numbers alike; empty is valid */
		size_t k = 0;
		for (size_t m = 0; m < is->nmsgs; m++)
			if (saved_has(is, &k, is->msgs[m].uid))
				is->uids[is->nuids++] = is->msgs[m].uid;
		return true;
	}
	uint32_t star = is->nmsgs ? (uid ? is->msgs[is->nmsgs - 1].uid : (uint32_t)is->nmsgs) : 0;
	if (!uid) {
		for (size_t k = 0; k < is->nset; k++) {
			uint32_t lo = is->set[k].lo ? is->set[k].lo : star;
			uint32_t hi = is->set[k].hi ? is->set[k].hi : star;
			if ((lo > is->nmsgs || hi > is->nmsgs) &&
			    !(is->nmsgs == 0 && (is->set[k].lo == 0 || is->set[k].hi == 0))) {
				done(is, "BAD", "Invalid message sequence number");
				count_bad(is);
				return false;
			}
		}
	}
	for (size_t k = 0; k < is->nmsgs; k++) {
		uint32_t n = uid ? is->msgs[k].uid : (uint32_t)(k + 1);
		if (imap_seqset_contains(is->set, is->nset, n, star))
			is->uids[is->nuids++] = is->msgs[k].uid;
	}
	return true;
}

/* The msgs index of uid, or -1 (binary search: msgs[] is in UID order). */
static ssize_t msgs_find(struct imap_session *is, uint32_t uid)
{
	size_t lo = 0, hi = is->nmsgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (is->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < is->nmsgs && is->msgs[lo].uid == uid ? (ssize_t)lo : -1;
}

/* A compact UID set "1:3,5" of uids[0..n) (ascending). */
static void out_uidset(struct imap_session *is, const uint32_t *uids, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j + 1 < n && uids[j + 1] == uids[j] + 1)
			j++;
		if (j > i)
			out_printf(is, "%s%" PRIu32 ":%" PRIu32, i ? "," : "", uids[i], uids[j]);
		else
			out_printf(is, "%s%" PRIu32, i ? "," : "", uids[i]);
		i = j + 1;
	}
}

/* Writes is->ol from where it stopped; returns when the send queue is
 * long (imap_drained() calls again) or, once every item is written, after
 * calling then(). */
static void out_list_pump(struct imap_session *is)
{
	struct out_list *ol = &is->ol;
	size_t high = send_high(is);
	while (ol->i < ol->n) {
		if (is->dead || is->state == IMAP_S_LOGOUT)
			return;
		if (stream_send_pending(is->s) + is->olen > high) {
			out_flush(is);
			ol->wait_drain = true;
			return;
		}
		size_t i = ol->i;
		const char *sep = i ? "," : "";
		if (ol->txt) {
			size_t k = ol->n - i < 4096 ? ol->n - i : 4096;
			out_put(is, ol->txt + i, k);
			ol->i += k;
		} else if (ol->r) {
			if (ol->r[i].lo == ol->r[i].hi)
				out_printf(is, "%s%" PRIu32, sep, ol->r[i].lo);
			else
				out_printf(is, "%s%" PRIu32 ":%" PRIu32, sep, ol->r[i].lo, ol->r[i].hi);
			ol->i++;
		} else if (ol->as_set) {
			size_t j = i;
			while (j + 1 < ol->n && ol->v[j + 1] == ol->v[j] + 1)
				j++;
			if (j > i)
				out_printf(is, "%s%" PRIu32 ":%" PRIu32, sep, ol->v[i], ol->v[j]);
			else
				out_printf(is, "%s%" PRIu32, sep, ol->v[i]);
			ol->i = j + 1;
		} else {
			out_printf(is, " %" PRIu32, ol->v[i]);
			ol->i++;
		}
	}
	void (*then)(struct imap_session *) = ol->then;
	free(ol->own);
	*ol = (struct out_list){ 0 };
	then(is);
}

/* Starts writing v[0..n) (or r[0..n)) after what is in the output buffer;
 * own (may be NULL) is freed at the end. */
static void out_list_start(struct imap_session *is, const uint32_t *v, bool as_set,
			   const struct store_uid_range *r, size_t n, void *own,
			   void (*then)(struct imap_session *))
{
	is->ol = (struct out_list){ .active = true, .as_set = as_set, .v = v, .r = r, .n = n,
				    .own = own, .then = then };
	out_list_pump(is);
}

/* Flags in a list (or one flag): system flags into *flags_r, keywords
 * into kw_r (arena strings). false: replied. */
/* A flag-keyword is an atom: the tokenizer's atoms may also hold the
 * list-wildcards and "]" (fine in an astring, not in a flag, and a "]"
 * in a FLAGS list would end a PERMANENTFLAGS response code early). */
static bool keyword_ok(const char *f)
{
	return f[0] && !strpbrk(f, "%*]");
}

static bool flags_arg(struct imap_session *is, size_t *i, uint32_t *flags_r, const char **kw_r,
		      size_t *nkw_r)
{
	static const char *const names[] = { "\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
					     "\\Draft" };
	size_t k = *i, end;
	*flags_r = 0;
	*nkw_r = 0;
	if (k < is->ntoks && is->toks[k].kind == T_LBEGIN) {
		end = list_end(is, k) - 1;
		k++;
	} else {
		end = k + 1;
	}
	for (; k < end; k++) {
		if (k >= is->ntoks || is->toks[k].kind != T_ATOM)
			return syntax(is, "Invalid flag list");
		const char *f = tok_str(is, k);
		bool sys = false;
		for (unsigned b = 0; b < 5; b++)
			if (strcasecmp(f, names[b]) == 0) {
				*flags_r |= 1u << b;
				sys = true;
			}
		if (sys)
			continue;
		if (f[0] == '\\') {
			/* \Recent "can not be altered by the client" (RFC 3501
			 * 2.3.2; RFC 9051 has no such flag): refused, not ignored */
			return syntax(is, strcasecmp(f, "\\Recent") == 0 ? "\\Recent cannot be changed"
									 : "Invalid system flag");
		}
		if (!keyword_ok(f))
			return syntax(is, "Invalid keyword");
		if (*nkw_r == STORE_KEYWORDS_MAX) {
			done(is, "NO", "[LIMIT] Too many keywords");
			return false;
		}
		kw_r[(*nkw_r)++] = f;
	}
	*i = end + (is->toks[*i].kind == T_LBEGIN ? 1 : 0);
	return true;
}

/* ---- login ----------------------------------------------------------------------- */

static bool login_allowed(struct imap_session *is)
{
	return is->sv && is->sv->auth && is->sv->store && !stream_tls_required(is->s);
}

static void user_opened(void *arg, int res, struct store_user *user)
{
	struct imap_session *is = arg;
	if (is->dead) {
		if (user)
			store_user_close(&user);
		release(is);
		return;
	}
	if (res < 0) {
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-user-error",
		       "user=%s error=%s", is->user, strerror(-res));
		is->user[0] = '\0';
		done(is, "NO", "[UNAVAILABLE] Cannot open the mailboxes, try again later");
		release(is);
		return;
	}
	if (is->sv->user_limit) {
		uint32_t max = cfg_of(is)->max_connections_per_user;
		if (!user_limit_enter(is->sv->user_limit, is->user, max, &is->user_slot)) {
			LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-user-limit",
			       "user=%s max=%u", is->user, max);
			store_user_close(&user);
			is->user[0] = '\0';
			done(is, "NO", "[LIMIT] Too many connections for this user");
			release(is);
			return;
		}
		is->user_counted = true;
	}
	is->su = user;
	is->state = IMAP_S_AUTH;
	imap_parser_init(&is->parser, cfg_of(is)->imap_line_max);
	LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-login", "user=%s tls=%s",
	       is->user, stream_is_tls(is->s) ? "yes" : "no");
	char caps[CAPS_MAX];
	done(is, "OK", "[CAPABILITY %s] Logged in", capabilities(is, caps));
	release(is);
}

static void auth_done(struct loop *loop, enum auth_result res, const char *user, void *arg)
{
	struct imap_session *is = arg;
	(void)loop;
	is->auth_req = NULL;
	hold(is);
	if (res != AUTH_OK) {
		LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-auth", "result=%s",
		       auth_result_str(res));
		is->user[0] = '\0';
		if (res == AUTH_TEMPFAIL) {
			done(is, "NO", "[UNAVAILABLE] Temporary authentication failure");
		} else {
			done(is, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
			count_bad(is);
		}
		release(is);
		return;
	}
	snprintf(is->user, sizeof(is->user), "%s", user);
	hold(is);
	store_user_open(is->sv->store, stream_loop(is->s), is->user, user_opened, is);
	release(is);
}

static void login_start(struct imap_session *is, struct span user, struct span pass)
{
	if (user.len == 0 || user.len > IMAP_USER_MAX) {
		done(is, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
		count_bad(is);
		return;
	}
	int rc = auth_verify(is->sv->auth, stream_loop(is->s), user, pass, stream_peer(is->s),
			     auth_done, is, &is->auth_req);
	if (rc) {
		done(is, "NO", "[UNAVAILABLE] Temporary authentication failure");
		return;
	}
	set_busy(is, true);
	stream_set_timer(is->s, 0);
}

static bool login_gate(struct imap_session *is)
{
	if (stream_tls_required(is->s)) {
		done(is, "NO", "[PRIVACYREQUIRED] Use STARTTLS first");
		count_bad(is);
		return false;
	}
	if (!login_allowed(is)) {
		done(is, "NO", "[UNAVAILABLE] Login not available");
		return false;
	}
	return true;
}

static void cmd_login(struct imap_session *is, size_t a)
{
	if (!is_astring(is, a) || !is_astring(is, a + 1) || a + 2 != is->ntoks) {
		syntax(is, "Syntax: LOGIN user password");
		return;
	}
	if (!login_gate(is))
		return;
	login_start(is, tok_span(is, a), tok_span(is, a + 1));
}

/* A base64 SASL PLAIN message, from AUTHENTICATE or its continuation. */
static void auth_plain(struct imap_session *is, struct span b64)
{
	uint8_t buf[SASL_BASE64_DECODED_MAX(IMAP_SASL_LINE_MAX)];
	size_t len;
	struct span authzid, authcid, pass;
	if (span_eq(b64, SPAN_LIT("=")))
		b64 = span_make(NULL, 0);
	if (sasl_base64_decode(b64, buf, sizeof(buf), &len) ||
	    sasl_plain_split(span_make(buf, len), &authzid, &authcid, &pass) ||
	    (authzid.len && !span_eq(authzid, authcid))) {
		explicit_bzero(buf, sizeof(buf));
		done(is, "NO", "[AUTHENTICATIONFAILED] Authentication failed");
		count_bad(is);
		return;
	}
	login_start(is, authcid, pass);
	explicit_bzero(buf, sizeof(buf));
}

static void cmd_authenticate(struct imap_session *is, size_t a)
{
	if (!is_astring(is, a) || a + 2 < is->ntoks) {
		syntax(is, "Syntax: AUTHENTICATE mechanism [initial-response]");
		return;
	}
	if (!span_eq_nocase(tok_span(is, a), SPAN_LIT("PLAIN"))) {
		done(is, "NO", "[CANNOT] Unsupported authentication mechanism");
		return;
	}
	if (!login_gate(is))
		return;
	if (a + 1 < is->ntoks) {
		auth_plain(is, tok_span(is, a + 1));
		return;
	}
	out_str(is, "+ \r\n");
	out_flush(is);
	is->mode = M_SASL;
}

static void sasl_line(struct imap_session *is, struct span line)
{
	is->mode = M_CMD;
	if (span_eq(line, SPAN_LIT("*"))) {
		done(is, "BAD", "Authentication aborted");
		count_bad(is);
		return;
	}
	auth_plain(is, line);
}

/* ---- simple commands ---------------------------------------------------------------- */

static void cmd_capability(struct imap_session *is, size_t a)
{
	(void)a;
	char caps[CAPS_MAX];
	out_printf(is, "* CAPABILITY %s\r\n", capabilities(is, caps));
	done(is, "OK", "CAPABILITY completed");
}

static void cmd_noop(struct imap_session *is, size_t a)
{
	(void)a;
	done(is, "OK", "NOOP completed");
}

static void cmd_logout(struct imap_session *is, size_t a)
{
	(void)a;
	out_str(is, "* BYE Logging out\r\n");
	tagged(is, "OK", "LOGOUT completed");
	session_close(is, true);
}

/* UNAUTHENTICATE (RFC 8437): back to not authenticated on the same
 * connection (TLS stays). Everything of the user goes: the selected
 * mailbox (no expunge), the store handle, the max_connections_per_user
 * slot, what ENABLE turned on, the saved search result. Never NO (RFC
 * 8437 3): nothing here can fail. The bad-command count stays (it guards
 * the connection, not the user). */
static void cmd_unauthenticate(struct imap_session *is, size_t a)
{
	if (a != is->ntoks) {
		syntax(is, "Syntax: UNAUTHENTICATE");
		return;
	}
	LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-unauthenticate", "user=%s",
	       is->user);
	mailbox_close(is); /* also empties "$" */
	store_user_close(&is->su);
	if (is->user_counted) {
		user_limit_leave(is->sv->user_limit, is->user_slot);
		is->user_counted = false;
	}
	explicit_bzero(is->user, sizeof(is->user));
	is->condstore = is->qresync = is->rev2 = false;
	is->qr_select = false;
	is->readonly = false;
	is->state = IMAP_S_NOTAUTH;
	/* the next command is a pre-login one: the pre-login line limit */
	imap_parser_init(&is->parser, IMAP_LINE_MAX_PRELOGIN);
	done(is, "OK", "UNAUTHENTICATE completed, now not authenticated");
}

static void cmd_id(struct imap_session *is, size_t a)
{
	(void)a;
	out_str(is, "* ID (\"name\" \"ringmail\" \"vendor\" \"ringmail\")\r\n");
	done(is, "OK", "ID completed");
}

/* ENABLE (RFC 5161): CONDSTORE, QRESYNC (which implies CONDSTORE, RFC
 * 7162 3.2.3) and IMAP4rev2; others are ignored. ENABLED names what this
 * command turned on. */
static void cmd_enable(struct imap_session *is, size_t a)
{
	if (a >= is->ntoks) {
		syntax(is, "Syntax: ENABLE capability...");
		return;
	}
	out_str(is, "* ENABLED");
	for (size_t i = a; i < is->ntoks; i++) {
		const char *name = NULL;
		bool *flag = NULL;
		if (is_atom(is, i, "CONDSTORE"))
			name = "CONDSTORE", flag = &is->condstore;
		else if (is_atom(is, i, "QRESYNC"))
			name = "QRESYNC", flag = &is->qresync;
		else if (is_atom(is, i, "IMAP4rev2"))
			name = "IMAP4rev2", flag = &is->rev2;
		if (!flag || *flag)
			continue;
		*flag = true;
		out_printf(is, " %s", name);
	}
	if (is->qresync)
		is->condstore = true;
	out_str(is, "\r\n");
	done(is, "OK", "ENABLE completed");
}

static void cmd_namespace(struct imap_session *is, size_t a)
{
	(void)a;
	out_str(is, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
	done(is, "OK", "NAMESPACE completed");
}

static void cmd_starttls(struct imap_session *is, size_t a)
{
	(void)a;
	if (stream_is_tls(is->s)) {
		bad(is, "TLS is already active");
		cmd_end(is);
		return;
	}
	if (!stream_can_starttls(is->s)) {
		done(is, "NO", "TLS not available");
		return;
	}
	tagged(is, "OK", "Begin TLS negotiation now");
	cmd_end(is);
	if (stream_starttls(is->s) == 0)
		is->tls_pending = true;
}

/* COMPRESS DEFLATE (RFC 4978): the OK leaves uncompressed, everything
 * after it is compressed both ways (proto/stream.c). The client sends no
 * command before the reply; bytes it sent anyway right behind COMPRESS are
 * taken as compressed. */
static void cmd_compress(struct imap_session *is, size_t a)
{
	if (a + 1 != is->ntoks || is->toks[a].kind != T_ATOM) {
		syntax(is, "Syntax: COMPRESS DEFLATE");
		return;
	}
	if (stream_is_compressed(is->s)) {
		done(is, "NO", "[COMPRESSIONACTIVE] DEFLATE active via COMPRESS");
		return;
	}
	unsigned level = cfg_of(is)->imap_compress_level;
	if (!span_eq_nocase(tok_span(is, a), SPAN_LIT("DEFLATE")) || level == 0) {
		done(is, "NO", "Unknown compression mechanism");
		return;
	}
	tagged(is, "OK", "DEFLATE active");
	cmd_end(is);
	int rc = stream_compress(is->s, (int)level);
	if (rc) {
		/* the client compresses now: nothing it sends can be read */
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "compress-error",
		       "error=%s", strerror(-rc));
		session_close(is, false);
		return;
	}
	is->compress_started = true;
}

static void imap_tls_ready(struct stream *s)
{
	struct imap_session *is = stream_session(s);
	is->tls_pending = false;
	is->mode = M_CMD;
	imap_parser_init(&is->parser, IMAP_LINE_MAX_PRELOGIN);
	arm_timer(is);
}

/* ---- QRESYNC: VANISHED (EARLIER) ------------------------------------------------------ */

/* A list of UID ranges, ascending and merged as they are added. */
struct uidranges {
	struct store_uid_range *r;
	size_t n, cap;
	bool oom;
};

static void ur_add(struct uidranges *u, uint32_t lo, uint32_t hi)
{
	if (u->n && (uint64_t)u->r[u->n - 1].hi + 1 >= lo) {
		if (hi > u->r[u->n - 1].hi)
			u->r[u->n - 1].hi = hi;
		return;
	}
	if (u->n == u->cap) {
		size_t cap = u->cap ? 2 * u->cap : 16;
		struct store_uid_range *p = realloc(u->r, cap * sizeof(*p));
		if (!p) {
			u->oom = true;
			return;
		}
		u->r = p;
		u->cap = cap;
	}
	u->r[u->n++] = (struct store_uid_range){ lo, hi };
}

static int range_cmp(const void *a, const void *b)
{
	const struct store_uid_range *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* is->set[0..nset) (a UID set as the client wrote it) as ascending ranges,
 * "*" being star. false: out of memory. */
static bool set_ranges(struct imap_session *is, uint32_t star, struct uidranges *out)
{
	struct store_uid_range *tmp = malloc((is->nset + 1) * sizeof(*tmp));
	if (!tmp)
		return false;
	for (size_t k = 0; k < is->nset; k++) {
		uint32_t lo = is->set[k].lo ? is->set[k].lo : star;
		uint32_t hi = is->set[k].hi ? is->set[k].hi : star;
		tmp[k] = lo <= hi ? (struct store_uid_range){ lo, hi }
				  : (struct store_uid_range){ hi, lo };
	}
	qsort(tmp, is->nset, sizeof(*tmp), range_cmp);
	for (size_t k = 0; k < is->nset; k++)
		if (tmp[k].hi)
			ur_add(out, tmp[k].lo ? tmp[k].lo : 1, tmp[k].hi);
	free(tmp);
	return !out->oom;
}

/* The first index of uids (ascending, n of them, read through at()) that is
 * >= uid. */
static size_t lower_bound(struct imap_session *is, uint32_t (*at)(struct imap_session *, size_t),
			  size_t n, uint32_t uid)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (at(is, mid) < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static uint32_t msgs_uid_at(struct imap_session *is, size_t i) { return is->msgs[i].uid; }
static uint32_t view_uid_at(struct imap_session *is, size_t i)
{
	return store_view_msg(is->view, i)->uid;
}

/* in minus the n UIDs read through at() (ascending), into out. */
static void ur_subtract(struct imap_session *is, const struct uidranges *in,
			uint32_t (*at)(struct imap_session *, size_t), size_t n,
			struct uidranges *out)
{
	for (size_t k = 0; k < in->n; k++) {
		uint32_t lo = in->r[k].lo, hi = in->r[k].hi;
		for (size_t j = lower_bound(is, at, n, lo); j < n && at(is, j) <= hi; j++) {
			uint32_t u = at(is, j);
			if (u > lo)
				ur_add(out, lo, u - 1);
			lo = u + 1;
		}
		if (lo <= hi && lo != 0)
			ur_add(out, lo, hi);
	}
}

/* "* VANISHED (EARLIER) set" (RFC 7162 3.2.5, 3.2.6) for the UIDs of want
 * (ascending ranges; NULL: every UID) expunged by a change above modseq.
 * The store remembers expunges back to some MODSEQ; older than that, every
 * UID of want below UIDNEXT that is not a message is named (RFC 7162 4.1
 * allows it: the client ignores UIDs it does not have). UIDs the session
 * still shows (msgs[], expunge not announced yet) or the view holds are
 * left out: the next sync reports those with VANISHED. Returns 0 or a
 * negative errno. */
static void vanished_end(struct imap_session *is);

static int out_vanished_earlier(struct imap_session *is, uint64_t modseq,
				const struct uidranges *want, void (*then)(struct imap_session *))
{
	struct store_uid_range *g = NULL;
	size_t ng = 0;
	struct store_folder_status st;
	struct uidranges base = { 0 }, both = { 0 }, t = { 0 }, res = { 0 };
	int rc = store_folder_vanished(is->folder, modseq, &g, &ng);
	if (rc < 0)
		return rc;
	store_view_status(is->view, &st);
	if (rc == 0) {
		free(g);
		g = NULL;
		ng = 0;
		if (st.uidnext > 1)
			ur_add(&base, 1, st.uidnext - 1);
	} else {
		base.r = g;
		base.n = base.cap = ng;
	}
	/* both = base & want: two ascending lists walked together */
	if (!want) {
		both = base;
		base = (struct uidranges){ 0 };
	} else {
		size_t i = 0, j = 0;
		while (i < base.n && j < want->n) {
			uint32_t lo = base.r[i].lo > want->r[j].lo ? base.r[i].lo : want->r[j].lo;
			uint32_t hi = base.r[i].hi < want->r[j].hi ? base.r[i].hi : want->r[j].hi;
			if (lo <= hi)
				ur_add(&both, lo, hi);
			if (base.r[i].hi < want->r[j].hi)
				i++;
			else
				j++;
		}
	}
	ur_subtract(is, &both, view_uid_at, store_view_count(is->view), &t);
	ur_subtract(is, &t, msgs_uid_at, is->nmsgs, &res);
	rc = base.oom || both.oom || t.oom || res.oom ? -ENOMEM : 0;
	free(base.r);
	free(both.r);
	free(t.r);
	if (rc) {
		free(res.r);
		return rc;
	}
	if (!res.n) {
		free(res.r);
		then(is);
		return 0;
	}
	/* one range per hole: written in pieces, waiting for the socket */
	is->vanished_then = then;
	out_str(is, "* VANISHED (EARLIER) ");
	out_list_start(is, NULL, true, res.r, res.n, res.r, vanished_end);
	return 0;
}

/* The VANISHED (EARLIER) line is out: its CRLF, and on. */
static void vanished_end(struct imap_session *is)
{
	out_str(is, "\r\n");
	is->vanished_then(is);
}

/* A mod-sequence-value (RFC 7162: 1*DIGIT, at most 2^63 - 1). */
static bool modseq_arg(struct imap_session *is, size_t i, uint64_t *v_r)
{
	if (i >= is->ntoks || is->toks[i].kind != T_ATOM)
		return false;
	struct span v = tok_span(is, i);
	uint64_t n = 0;
	if (v.len == 0 || v.len > 19)
		return false;
	for (size_t k = 0; k < v.len; k++) {
		if (v.p[k] < '0' || v.p[k] > '9')
			return false;
		n = n * 10 + (uint64_t)(v.p[k] - '0');
	}
	if (n > INT64_MAX)
		return false;
	*v_r = n;
	return true;
}

/* SELECT's QRESYNC parameter at i, "(uidvalidity modseq [known-uids
 * [(seqs uids)]])": sets qr_*. *end_r: the index past it. false: replied. */
static bool qresync_param(struct imap_session *is, size_t i, size_t *end_r)
{
	if (!is->qresync) {
		bad(is, "QRESYNC is not enabled");
		cmd_end(is);
		return false;
	}
	if (i >= is->ntoks || is->toks[i].kind != T_LBEGIN)
		return syntax(is, "Syntax: QRESYNC (uidvalidity modseq [known-uids [seq-match]])");
	size_t end = list_end(is, i), k = i + 1;
	if (k + 2 >= end || is->toks[k].kind != T_ATOM ||
	    imap_parse_number(tok_span(is, k), true, &is->qr_uidvalidity) ||
	    !modseq_arg(is, k + 1, &is->qr_modseq))
		return syntax(is, "Syntax: QRESYNC (uidvalidity modseq [known-uids [seq-match]])");
	k += 2;
	is->qr_known = 0;
	if (k + 1 < end && is->toks[k].kind == T_ATOM) {
		if (parse_set(is, tok_span(is, k)))
			return syntax(is, "Invalid known-uids");
		is->qr_known = k++;
	}
	if (k + 1 < end && is->qr_known) {
		/* seq-match-data: checked, not needed (the store remembers
		 * expunges, and its fallback names every missing UID) */
		if (is->toks[k].kind != T_LBEGIN || list_end(is, k) != k + 4 ||
		    is->toks[k + 1].kind != T_ATOM || is->toks[k + 2].kind != T_ATOM ||
		    parse_set(is, tok_span(is, k + 1)) ||
		    parse_set(is, tok_span(is, k + 2)))
			return syntax(is, "Invalid sequence match data");
		k += 4;
	}
	if (k + 1 != end)
		return syntax(is, "Syntax: QRESYNC (uidvalidity modseq [known-uids [seq-match]])");
	is->qr_select = true;
	is->condstore = true;
	*end_r = end;
	return true;
}

/* After SELECT's usual responses, with a QRESYNC parameter whose
 * UIDVALIDITY matches: VANISHED (EARLIER) for what was expunged since the
 * client's MODSEQ, then FETCH (UID FLAGS MODSEQ) for every message changed
 * since (both within known-uids when given). The FETCH responses are a
 * FETCH job (a resync can name every message: it waits for the socket like
 * any FETCH), which ends with the SELECT's tagged reply. Returns 0 or a
 * negative errno (then nothing is started). */
static int qresync_select(struct imap_session *is)
{
	struct uidranges known = { 0 };
	struct store_folder_status st;
	store_view_status(is->view, &st);
	if (is->qr_known &&
	    (parse_set(is, tok_span(is, is->qr_known)) ||
	     !set_ranges(is, st.uidnext - 1, &known))) {
		free(known.r);
		return -ENOMEM;
	}
	struct fetch_job *fj = calloc(1, sizeof(*fj));
	free(is->uids);
	is->uids = malloc((is->nmsgs + 1) * sizeof(uint32_t));
	if (!fj || !is->uids) {
		free(known.r);
		free(fj);
		return -ENOMEM;
	}
	/* uids[]: the messages of known-uids, for fetch_matches() */
	is->nuids = 0;
	for (size_t i = 0, r = 0; i < is->nmsgs; i++) {
		uint32_t uid = is->msgs[i].uid;
		if (is->qr_known) {
			while (r < known.n && known.r[r].hi < uid)
				r++;
			if (r == known.n || known.r[r].lo > uid)
				continue;
		}
		is->uids[is->nuids++] = uid;
	}
	static const uint8_t items[] = { FI_UID, FI_FLAGS, FI_MODSEQ };
	for (size_t k = 0; k < sizeof(items); k++)
		fj->items[k].kind = items[k];
	fj->nitems = sizeof(items);
	fj->uid = fj->want_flags = fj->want_modseq = true;
	fj->changedsince = is->qr_modseq;
	fj->select_reply = true;
	is->fj = fj;
	/* VANISHED (EARLIER) first (it may wait for the socket), then the
	 * FETCH job */
	int rc = out_vanished_earlier(is, is->qr_modseq, is->qr_known ? &known : NULL, fetch_pump);
	free(known.r);
	if (rc)
		fetch_free(is);
	return rc;
}

/* RFC 9051 6.3.2: SELECT answers a LIST response for the mailbox too. */
static void select_list(struct imap_session *is)
{
	static const char *const special[] = { "", " \\Sent", " \\Drafts", " \\Trash",
					       " \\Junk", " \\Archive" };
	struct store_folder_info *fl = NULL;
	size_t nf = 0, nl = strlen(is->folder_name);
	bool children = false;
	enum store_special sp = STORE_SPECIAL_NONE;
	if (store_folder_list(is->su, &fl, &nf))
		return;
	for (size_t j = 0; j < nf; j++) {
		if (strcmp(fl[j].name, is->folder_name) == 0)
			sp = fl[j].special;
		children |= fl[j].exists && strncmp(fl[j].name, is->folder_name, nl) == 0 &&
			    fl[j].name[nl] == '/';
	}
	free(fl);
	out_printf(is, "* LIST (%s%s) \"/\" ", children ? "\\HasChildren" : "\\HasNoChildren",
		   special[sp]);
	out_mailbox(is, is->folder_name);
	out_str(is, "\r\n");
}

/* ---- SELECT / EXAMINE ------------------------------------------------------------------ */

static void select_done(struct imap_session *is)
{
	done(is, "OK", "[%s] %s completed", is->readonly ? "READ-ONLY" : "READ-WRITE",
	     is->readonly ? "EXAMINE" : "SELECT");
}


/* A store_folder_open() callback found the session closed meanwhile: the
 * folder it got is closed and the session's hold released. true: return. */
static bool gone_after_open(struct imap_session *is, struct store_folder *folder)
{
	if (!is->dead)
		return false;
	if (folder)
		store_folder_close(&folder);
	release(is);
	return true;
}
static void select_opened(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (gone_after_open(is, folder))
		return;
	if (res < 0) {
		store_error(is, res);
		release(is);
		return;
	}
	is->folder = folder;
	if (view_refresh(is)) {
		mailbox_close(is);
		store_error(is, -ENOMEM);
		release(is);
		return;
	}
	size_t n = store_view_count(is->view);
	if (!msgs_reserve(is, n ? n : 1)) {
		mailbox_close(is);
		store_error(is, -ENOMEM);
		release(is);
		return;
	}
	size_t unseen = 0; /* the first message without \Seen, 1-based */
	for (size_t i = 0; i < n; i++) {
		const struct store_msg *m = store_view_msg(is->view, i);
		is->msgs[i] = (struct imsg){ m->uid, m->flags, m->keywords, m->modseq };
		if (!unseen && !(m->flags & STORE_F_SEEN))
			unseen = i + 1;
	}
	is->nmsgs = n;
	struct store_folder_status st;
	store_view_status(is->view, &st);
	store_watch(folder, stream_loop(is->s), watch_cb, is);
	is->synced_modseq = st.highestmodseq;
	is->synced_count = st.messages;
	out_str(is, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft");
	for (unsigned b = 0; b < 64; b++) {
		const char *k = store_view_keyword(is->view, b);
		if (k) {
			out_put(is, " ", 1);
			out_str(is, k);
		}
	}
	out_str(is, ")\r\n");
	out_printf(is, "* OK [PERMANENTFLAGS %s] Flags permitted\r\n",
		   is->readonly ? "()" : "(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)");
	out_num(is, "* ", n, " EXISTS\r\n");
	if (!is->rev2) /* RFC 9051 has no RECENT */
		out_str(is, "* 0 RECENT\r\n");
	if (!is->rev2 && unseen) /* RFC 3501 6.3.1 requires it; RFC 9051 dropped it */
		out_num(is, "* OK [UNSEEN ", unseen, "] First unseen\r\n");
	out_num(is, "* OK [UIDVALIDITY ", st.uidvalidity, "] UIDs valid\r\n");
	out_num(is, "* OK [UIDNEXT ", st.uidnext, "] Predicted next UID\r\n");
	out_num(is, "* OK [HIGHESTMODSEQ ", st.highestmodseq, "] Highest\r\n");
	if (is->rev2)
		select_list(is);
	is->state = IMAP_S_SELECTED;
	if (is->qr_select && st.uidvalidity == is->qr_uidvalidity) {
		/* the FETCH job it starts ends with select_done() */
		int rc = qresync_select(is);
		if (rc) {
			mailbox_close(is);
			is->state = IMAP_S_AUTH;
			store_error(is, rc);
		}
		release(is);
		return;
	}
	select_done(is);
	release(is);
}

static void select_common(struct imap_session *is, size_t a, bool readonly)
{
	char name[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, name, sizeof(name)))
		return;
	size_t k = a + 1;
	is->qr_select = false;
	bool condstore = false;
	if (k < is->ntoks && is->toks[k].kind == T_LBEGIN) {
		size_t end = list_end(is, k);
		for (size_t i = k + 1; i + 1 < end; i++) {
			if (is_atom(is, i, "CONDSTORE")) {
				condstore = true;
			} else if (is_atom(is, i, "QRESYNC")) {
				size_t past;
				if (!qresync_param(is, i + 1, &past))
					return;
				i = past - 1; /* the loop steps past the parameter */
			} else {
				/* an extension this server does not offer: the
				 * client would count on semantics it does not get
				 * (Dovecot answers BAD too; this used to be
				 * ignored) */
				syntax(is, "Unknown SELECT parameter");
				return;
			}
		}
		k = end;
	}
	if (k != is->ntoks) {
		syntax(is, "Syntax: SELECT mailbox [(CONDSTORE | QRESYNC (...))]");
		return;
	}
	if (condstore)
		is->condstore = true;
	/* RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected. */
	if (is->state == IMAP_S_SELECTED) {
		mailbox_close(is);
		is->state = IMAP_S_AUTH;
		out_str(is, "* OK [CLOSED] Previous mailbox closed\r\n");
	}
	is->readonly = readonly;
	snprintf(is->folder_name, sizeof(is->folder_name), "%s", name);
	set_busy(is, true);
	hold(is);
	store_folder_open(is->su, stream_loop(is->s), name, select_opened, is);
}

static void cmd_select(struct imap_session *is, size_t a) { select_common(is, a, false); }
static void cmd_examine(struct imap_session *is, size_t a) { select_common(is, a, true); }

/* ---- EXPUNGE, CLOSE, UNSELECT, CHECK ----------------------------------------------------- */

enum after_expunge { AFTER_EXPUNGE, AFTER_CLOSE };

static void expunge_done_cb(struct imap_session *is, int res, bool close)
{
	if (res < 0) {
		store_error(is, res);
		return;
	}
	if (close) {
		mailbox_close(is);
		is->state = IMAP_S_AUTH;
		done(is, "OK", "CLOSE completed");
		return;
	}
	if (is->condstore) {
		/* the MODSEQ after the expunge: the client's next resync point
		 * (as in RFC 7162's EXPUNGE examples) */
		struct store_folder_status st;
		store_folder_status(is->folder, &st);
		done(is, "OK", "[HIGHESTMODSEQ %" PRIu64 "] %sEXPUNGE completed", st.highestmodseq,
		     is->uid_cmd ? "UID " : "");
		return;
	}
	done(is, "OK", "EXPUNGE completed");
}

static void expunge_cb(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (!is->dead)
		expunge_done_cb(is, res, false);
	release(is);
}

static void close_cb(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (!is->dead)
		expunge_done_cb(is, res < 0 ? 0 : res, true); /* CLOSE always closes */
	release(is);
}

/* Expunges the \Deleted messages among uids[0..nuids) (all msgs when
 * all). */
static void expunge_start(struct imap_session *is, bool all, store_modseq_cb *cb)
{
	if (view_refresh(is)) {
		store_error(is, -ENOMEM);
		return;
	}
	uint32_t *list = malloc((store_view_count(is->view) + 1) * sizeof(uint32_t));
	if (!list) {
		store_error(is, -ENOMEM);
		return;
	}
	size_t n = 0;
	for (size_t j = 0; j < store_view_count(is->view); j++) {
		const struct store_msg *m = store_view_msg(is->view, j);
		if (!(m->flags & STORE_F_DELETED))
			continue;
		if (!all) {
			/* uids[] is ascending: binary search. */
			size_t lo = 0, hi = is->nuids;
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (is->uids[mid] < m->uid)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo == is->nuids || is->uids[lo] != m->uid)
				continue;
		}
		list[n++] = m->uid;
	}
	free(is->uids2);
	is->uids2 = list;
	set_busy(is, true);
	hold(is);
	store_expunge(is->folder, stream_loop(is->s), list, n, cb, is);
}

static void cmd_expunge(struct imap_session *is, size_t a)
{
	if (is->readonly) {
		done(is, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	if (is->uid_cmd) {
		if (!set_arg(is, a, true))
			return;
		expunge_start(is, false, expunge_cb);
		return;
	}
	if (a != is->ntoks) {
		syntax(is, "Syntax: EXPUNGE");
		return;
	}
	expunge_start(is, true, expunge_cb);
}

static void cmd_close(struct imap_session *is, size_t a)
{
	(void)a;
	if (is->readonly) {
		mailbox_close(is);
		is->state = IMAP_S_AUTH;
		done(is, "OK", "CLOSE completed");
		return;
	}
	expunge_start(is, true, close_cb);
}

static void cmd_unselect(struct imap_session *is, size_t a)
{
	(void)a;
	mailbox_close(is);
	is->state = IMAP_S_AUTH;
	done(is, "OK", "UNSELECT completed");
}

static void cmd_check(struct imap_session *is, size_t a)
{
	(void)a;
	done(is, "OK", "CHECK completed");
}

/* ---- mailbox management ---------------------------------------------------------------- */

static void folder_change_cb(void *arg, int res)
{
	struct imap_session *is = arg;
	if (!is->dead) {
		if (res < 0)
			store_error(is, res);
		else
			done(is, "OK", "%s completed", is->cmd ? is->cmd->name : "");
	}
	release(is);
}

static void cmd_create(struct imap_session *is, size_t a)
{
	char name[STORE_NAME_MAX + 1];
	if (!new_mailbox_arg(is, a, name, sizeof(name), true))
		return;
	if (strcmp(name, "INBOX") == 0) {
		done(is, "NO", "[ALREADYEXISTS] INBOX always exists");
		return;
	}
	set_busy(is, true);
	hold(is);
	store_folder_create(is->su, stream_loop(is->s), name, folder_change_cb, is);
}

static void cmd_delete(struct imap_session *is, size_t a)
{
	char name[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, name, sizeof(name)))
		return;
	if (strcmp(name, "INBOX") == 0) {
		done(is, "NO", "[CANNOT] INBOX cannot be deleted");
		return;
	}
	if (is->state == IMAP_S_SELECTED && strcmp(name, is->folder_name) == 0) {
		mailbox_close(is);
		is->state = IMAP_S_AUTH;
	}
	set_busy(is, true);
	hold(is);
	store_folder_delete(is->su, stream_loop(is->s), name, folder_change_cb, is);
}

/* RENAME (RFC 3501 6.3.5). The store renames one name at a time, so a
 * mailbox with inferiors is renamed name by name (parent first); a
 * failure half way leaves the names renamed so far (each is durable) and
 * answers NO. RENAME INBOX creates the new mailbox and moves every INBOX
 * message there (store_copy with move); INBOX stays, empty. */
struct rename_job {
	char **from, **to;    /* n pairs, in one allocation with their names */
	size_t n, next;
	uint32_t *uids;       /* RENAME INBOX: the messages moved */
	size_t nuids;
};

static void rename_job_free(struct imap_session *is)
{
	if (!is->rj)
		return;
	free(is->rj->uids);
	free(is->rj);
	is->rj = NULL;
}

static void rename_next(void *arg, int res)
{
	struct imap_session *is = arg;
	if (is->dead) {
		rename_job_free(is);
		release(is);
		return;
	}
	struct rename_job *rj = is->rj;
	if (res < 0 || rj->next == rj->n) {
		rename_job_free(is);
		if (res < 0)
			store_error(is, res);
		else
			done(is, "OK", "RENAME completed");
		release(is);
		return;
	}
	size_t i = rj->next++;
	if (is->state == IMAP_S_SELECTED && strcmp(is->folder_name, rj->from[i]) == 0)
		snprintf(is->folder_name, sizeof(is->folder_name), "%s", rj->to[i]);
	/* the hold is passed on */
	store_folder_rename(is->su, is->loop, rj->from[i], rj->to[i], rename_next, is);
}

/* Renames from (an existing mailbox, or a \Noselect parent) and every name
 * below it. */
static void rename_tree(struct imap_session *is, const char *from, const char *to)
{
	size_t fl_len = strlen(from), tl_len = strlen(to);
	if (strncmp(to, from, fl_len) == 0 && to[fl_len] == '/') {
		done(is, "NO", "[CANNOT] Cannot rename a mailbox into itself");
		return;
	}
	struct store_folder_info *fl;
	size_t nf;
	int rc = store_folder_list(is->su, &fl, &nf);
	if (rc) {
		store_error(is, rc);
		return;
	}
	size_t n = 0, bytes = 0;
	bool clash = false;
	for (size_t i = 0; i < nf; i++) {
		const char *name = fl[i].name;
		if (!fl[i].exists)
			continue;
		if (strcmp(name, from) == 0 ||
		    (strncmp(name, from, fl_len) == 0 && name[fl_len] == '/')) {
			n++;
			bytes += 2 * strlen(name) + tl_len + 2;
		}
	}
	if (n == 0) {
		free(fl);
		done(is, "NO", "[NONEXISTENT] No such mailbox");
		return;
	}
	struct rename_job *rj = calloc(1, sizeof(*rj) + 2 * n * sizeof(char *) + bytes);
	if (!rj) {
		free(fl);
		store_error(is, -ENOMEM);
		return;
	}
	rj->from = (char **)(rj + 1);
	rj->to = rj->from + n;
	char *p = (char *)(rj->to + n);
	for (size_t i = 0; i < nf; i++) {
		const char *name = fl[i].name;
		size_t len = strlen(name);
		if (!fl[i].exists || !(strcmp(name, from) == 0 ||
				       (strncmp(name, from, fl_len) == 0 && name[fl_len] == '/')))
			continue;
		/* the folder list is sorted: a parent comes before its inferiors */
		rj->from[rj->n] = p;
		memcpy(p, name, len + 1);
		p += len + 1;
		rj->to[rj->n++] = p;
		p += sprintf(p, "%s%s", to, name + fl_len) + 1;
	}
	for (size_t i = 0; i < rj->n && !clash; i++)
		for (size_t k = 0; k < nf && !clash; k++)
			clash = fl[k].exists && strcmp(fl[k].name, rj->to[i]) == 0;
	free(fl);
	if (clash) {
		free(rj);
		done(is, "NO", "[ALREADYEXISTS] Mailbox already exists");
		return;
	}
	is->rj = rj;
	set_busy(is, true);
	hold(is);
	rename_next(is, 0);
}

static void inbox_moved(void *arg, int res);

static void inbox_undone(void *arg, int res)
{
	struct imap_session *is = arg;
	int err = is->undo_err;
	(void)res;
	is->undo_err = 0; /* APPEND's too: left set, it refused the next APPEND */
	inbox_moved(is, err);
}

/* store_copy's end: on failure the new mailbox (with the copies made so
 * far; nothing left INBOX) is deleted again before the NO. */
static void inbox_move_done(void *arg, int res)
{
	struct imap_session *is = arg;
	if (res < 0 && !is->dead) {
		is->undo_err = res;
		store_folder_close(&is->other2);
		store_folder_delete(is->su, is->loop, is->rj->to[0], inbox_undone, is);
		return;
	}
	inbox_moved(is, res);
}

static void inbox_moved(void *arg, int res)
{
	struct imap_session *is = arg;
	if (is->other != is->folder)
		store_folder_close(&is->other);
	else
		is->other = NULL;
	store_folder_close(&is->other2);
	if (is->dead) {
		rename_job_free(is);
		release(is);
		return;
	}
	rename_job_free(is);
	if (res < 0)
		store_error(is, res);
	else
		done(is, "OK", "RENAME completed");
	release(is);
}

static void inbox_rename_dst(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (is->dead || res < 0) {
		if (folder)
			store_folder_close(&folder);
		inbox_moved(is, res < 0 ? res : -ECONNRESET);
		return;
	}
	is->other2 = folder;
	struct store_view *v;
	int rc = store_view_open(is->other, &v);
	if (rc) {
		inbox_moved(is, rc);
		return;
	}
	size_t n = store_view_count(v);
	is->rj->uids = malloc((n ? n : 1) * sizeof(uint32_t) * 2);
	if (!is->rj->uids) {
		store_view_free(&v);
		inbox_moved(is, -ENOMEM);
		return;
	}
	for (size_t i = 0; i < n; i++)
		is->rj->uids[i] = store_view_msg(v, i)->uid;
	store_view_free(&v);
	is->rj->nuids = n;
	if (n == 0) {
		inbox_moved(is, 0);
		return;
	}
	store_copy(is->other, is->loop, is->rj->uids, n, is->other2, true, is->rj->uids + n,
		   inbox_move_done, is);
}

static void inbox_rename_src(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (is->dead || res < 0) {
		if (folder)
			store_folder_close(&folder);
		inbox_moved(is, res < 0 ? res : -ECONNRESET);
		return;
	}
	is->other = folder;
	store_folder_open(is->su, is->loop, is->rj->to[0], inbox_rename_dst, is);
}

static void inbox_rename_created(void *arg, int res)
{
	struct imap_session *is = arg;
	if (is->dead || res < 0) {
		inbox_moved(is, res < 0 ? res : -ECONNRESET);
		return;
	}
	if (is->state == IMAP_S_SELECTED && strcmp(is->folder_name, "INBOX") == 0) {
		is->other = is->folder; /* not closed by inbox_moved */
		store_folder_open(is->su, is->loop, is->rj->to[0], inbox_rename_dst, is);
		return;
	}
	store_folder_open(is->su, is->loop, "INBOX", inbox_rename_src, is);
}

static void rename_inbox(struct imap_session *is, const char *to)
{
	size_t len = strlen(to);
	struct rename_job *rj = calloc(1, sizeof(*rj) + 2 * sizeof(char *) + len + 1);
	if (!rj) {
		store_error(is, -ENOMEM);
		return;
	}
	rj->from = (char **)(rj + 1);
	rj->to = rj->from + 1;
	rj->to[0] = (char *)(rj->to + 1);
	memcpy(rj->to[0], to, len + 1);
	rj->n = 1;
	is->rj = rj;
	set_busy(is, true);
	hold(is);
	store_folder_create(is->su, is->loop, to, inbox_rename_created, is);
}

static void cmd_rename(struct imap_session *is, size_t a)
{
	char from[STORE_NAME_MAX + 1], to[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, from, sizeof(from)) ||
	    !new_mailbox_arg(is, a + 1, to, sizeof(to), false))
		return;
	if (strcmp(to, "INBOX") == 0) {
		done(is, "NO", "[ALREADYEXISTS] INBOX always exists");
		return;
	}
	if (strcmp(from, "INBOX") == 0) {
		rename_inbox(is, to);
		return;
	}
	rename_tree(is, from, to);
}

static void subscribe_common(struct imap_session *is, size_t a, bool on)
{
	char name[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, name, sizeof(name)))
		return;
	set_busy(is, true);
	hold(is);
	store_folder_subscribe(is->su, stream_loop(is->s), name, on, folder_change_cb, is);
}

static void cmd_subscribe(struct imap_session *is, size_t a) { subscribe_common(is, a, true); }
static void cmd_unsubscribe(struct imap_session *is, size_t a) { subscribe_common(is, a, false); }

/* ---- LIST / LSUB ---------------------------------------------------------------------------- */

/* Wildcard match: "*" anything, "%" anything but the "/" delimiter. */
static bool list_match(const char *pat, const char *name)
{
	for (;;) {
		if (*pat == '\0')
			return *name == '\0';
		if (*pat == '*' || *pat == '%') {
			bool any = *pat == '*';
			pat++;
			for (const char *n = name;; n++) {
				if (list_match(pat, n))
					return true;
				if (*n == '\0' || (!any && *n == '/'))
					return false;
			}
		}
		if (*name == '\0' || *pat != *name)
			return false;
		pat++;
		name++;
	}
}

/* LIST (RFC 3501 6.3.8) with LIST-EXTENDED (RFC 5258), LIST-STATUS
 * (RFC 5819) and the SPECIAL-USE selection (RFC 6154).
 *
 * Hierarchy parents that are not mailboxes (after CREATE a/b/c, or DELETE
 * of a parent) are not stored: LIST derives them from the names below them
 * and shows them \Noselect (\NonExistent with the extended syntax). */

struct lentry {
	const char *p;       /* into the folder list; not NUL-terminated */
	uint16_t len;
	uint8_t special;
	bool exists, subscribed;
	bool children;       /* an existing mailbox below it */
	bool sel;            /* meets the selection options */
	bool child_sel;      /* a mailbox below it does */
};

enum {
	LSEL_SUBSCRIBED = 1, LSEL_REMOTE = 2, LSEL_RECURSIVE = 4, LSEL_SPECIAL = 8,
	LRET_SUBSCRIBED = 1, LRET_CHILDREN = 2, LRET_SPECIAL = 4, LRET_STATUS = 8,
};

struct list_job {
	struct store_folder_info *fl;
	struct lentry *e;
	size_t n, next;
	unsigned sel, ret;
	bool extended;
	size_t status_at;    /* token index of the STATUS items list */
	size_t pats_at, npats;
	char ref[STORE_NAME_MAX + 1];
};

static void out_status_items(struct imap_session *is, const struct store_folder_status *st,
			     size_t list_at);
static bool status_items_ok(struct imap_session *is, size_t list_at);
static void status_condstore(struct imap_session *is, size_t list_at);

static int lentry_cmp(const void *a, const void *b)
{
	const struct lentry *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->p, y->p, n);
	if (c)
		return c;
	return x->len < y->len ? -1 : x->len > y->len;
}

/* The entry's name, NUL-terminated, in buf (STORE_NAME_MAX + 1 bytes). */
static char *lentry_name(const struct lentry *x, char *buf)
{
	memcpy(buf, x->p, x->len);
	buf[x->len] = '\0';
	return buf;
}

static struct lentry *lentry_find(struct list_job *lj, const char *p, size_t len)
{
	struct lentry key = { .p = p, .len = (uint16_t)len };
	return bsearch(&key, lj->e, lj->n, sizeof(key), lentry_cmp);
}

/* The entries: every listed name and every hierarchy parent of one,
 * sorted, merged, with their children and selection marks. */
static int list_build(struct imap_session *is, struct list_job *lj)
{
	size_t nf, cap = 0;
	int rc = store_folder_list(is->su, &lj->fl, &nf);
	if (rc)
		return rc;
	for (size_t i = 0; i < nf; i++) {
		cap++;
		for (const char *c = lj->fl[i].name; *c; c++)
			cap += *c == '/';
	}
	lj->e = calloc(cap ? cap : 1, sizeof(*lj->e));
	if (!lj->e)
		return -ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < nf; i++) {
		const struct store_folder_info *f = &lj->fl[i];
		size_t len = strlen(f->name);
		lj->e[n++] = (struct lentry){ f->name, (uint16_t)len, (uint8_t)f->special,
					      f->exists, f->subscribed, false, false, false };
		for (size_t k = 1; k < len; k++)
			if (f->name[k] == '/')
				lj->e[n++] = (struct lentry){ .p = f->name, .len = (uint16_t)k };
	}
	qsort(lj->e, n, sizeof(*lj->e), lentry_cmp);
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		if (w && lentry_cmp(&lj->e[w - 1], &lj->e[i]) == 0) {
			struct lentry *d = &lj->e[w - 1];
			d->exists |= lj->e[i].exists;
			d->subscribed |= lj->e[i].subscribed;
			if (lj->e[i].special)
				d->special = lj->e[i].special;
			continue;
		}
		lj->e[w++] = lj->e[i];
	}
	lj->n = w;
	for (size_t i = 0; i < w; i++) {
		struct lentry *x = &lj->e[i];
		x->sel = true;
		if (lj->sel & LSEL_SUBSCRIBED)
			x->sel &= x->subscribed;
		if (lj->sel & LSEL_SPECIAL)
			x->sel &= x->exists && x->special != STORE_SPECIAL_NONE;
		if (!(lj->sel & (LSEL_SUBSCRIBED | LSEL_SPECIAL)))
			x->sel = x->exists;
	}
	/* Mark the ancestors of every existing / selected entry. */
	for (size_t i = 0; i < w; i++) {
		struct lentry *x = &lj->e[i];
		if (!x->exists && !x->sel)
			continue;
		for (size_t k = x->len; k-- > 1;) {
			if (x->p[k] != '/')
				continue;
			struct lentry *up = lentry_find(lj, x->p, k);
			if (!up)
				continue;
			up->children |= x->exists;
			up->child_sel |= x->sel;
		}
	}
	return 0;
}

static bool list_name_matches(struct list_job *lj, struct imap_session *is, const char *name)
{
	for (size_t k = 0; k < lj->npats; k++) {
		char pat[2 * STORE_NAME_MAX + 2], full[3 * STORE_NAME_MAX + 4];
		size_t i = lj->pats_at + k;
		if (lj->npats > 1 || is->toks[lj->pats_at].kind == T_LBEGIN)
			i = lj->pats_at + 1 + k;
		ssize_t n = name_decode(is, tok_span(is, i), pat, STORE_NAME_MAX);
		if (n < 0)
			continue;
		pat[n] = '\0';
		snprintf(full, sizeof(full), "%s%s", lj->ref, pat);
		if (list_match(full, name))
			return true;
		if (strcmp(name, "INBOX") == 0 || strncmp(name, "INBOX/", 6) == 0) {
			/* INBOX matches case-insensitively. */
			for (size_t c = 0; c < 5 && full[c]; c++)
				full[c] = (char)toupper((unsigned char)full[c]);
			if (list_match(full, name))
				return true;
		}
	}
	return false;
}

/* Whether an entry below x meets the selection but is not listed itself
 * (its name does not match): RFC 5258 3.5 lists a parent that does not
 * meet the selection only then, with CHILDINFO. */
static bool list_child_unlisted(struct list_job *lj, struct imap_session *is,
				const struct lentry *x)
{
	for (size_t i = 0; i < lj->n; i++) {
		const struct lentry *c = &lj->e[i];
		if (!c->sel || c->len <= x->len + 1 || c->p[x->len] != '/' ||
		    memcmp(c->p, x->p, x->len) != 0)
			continue;
		char name[STORE_NAME_MAX + 1];
		lentry_name(c, name);
		if (!list_name_matches(lj, is, name))
			return true;
	}
	return false;
}

static void list_job_free(struct imap_session *is)
{
	if (!is->lj)
		return;
	free(is->lj->fl);
	free(is->lj->e);
	free(is->lj);
	is->lj = NULL;
}

/* Writes the LIST lines from lj->next on, with their STATUS (from the
 * store's index: no folder is opened). */
static void list_pump(struct imap_session *is)
{
	static const char *const special[] = { "", "\\Sent", "\\Drafts", "\\Trash", "\\Junk",
					       "\\Archive" };
	struct list_job *lj = is->lj;
	while (lj->next < lj->n) {
		const struct lentry *x = &lj->e[lj->next++];
		char name[STORE_NAME_MAX + 1];
		lentry_name(x, name);
		bool recursive = (lj->sel & LSEL_RECURSIVE) && x->child_sel;
		if (!(x->sel || recursive ||
	      (!(lj->sel & (LSEL_SUBSCRIBED | LSEL_SPECIAL)) && x->children)))
			continue;
		if (!list_name_matches(lj, is, name))
			continue;
		if (!x->sel && recursive && !list_child_unlisted(lj, is, x))
			continue;
		char attrs[128];
		bool subs = (lj->sel & LSEL_SUBSCRIBED) || (lj->ret & LRET_SUBSCRIBED);
		snprintf(attrs, sizeof(attrs), "%s%s%s%s%s",
			 x->exists ? "" : lj->extended ? "\\NonExistent " : "\\Noselect ",
			 x->children ? "\\HasChildren" : "\\HasNoChildren",
			 subs && x->subscribed ? " \\Subscribed" : "",
			 x->special && x->exists ? " " : "", x->exists ? special[x->special] : "");
		out_printf(is, "* LIST (%s) \"/\" ", attrs);
		out_mailbox(is, name);
		if (recursive) {
			out_str(is, " (\"CHILDINFO\" (");
			if (lj->sel & LSEL_SUBSCRIBED)
				out_str(is, (lj->sel & LSEL_SPECIAL) ? "\"SUBSCRIBED\" " : "\"SUBSCRIBED\"");
			if (lj->sel & LSEL_SPECIAL)
				out_str(is, "\"SPECIAL-USE\"");
			out_str(is, "))");
		}
		out_str(is, "\r\n");
		if (!(lj->ret & LRET_STATUS) || !x->exists)
			continue;
		struct store_folder_status st;
		if (is->state == IMAP_S_SELECTED && strcmp(name, is->folder_name) == 0)
			store_folder_status(is->folder, &st);
		else if (store_folder_status_of(is->su, name, &st) < 0)
			continue; /* deleted meanwhile: no STATUS (RFC 5819) */
		out_str(is, "* STATUS ");
		out_mailbox(is, name);
		out_status_items(is, &st, lj->status_at);
	}
	list_job_free(is);
	done(is, "OK", "LIST completed");
}

/* LSUB (RFC 3501 6.3.9): the subscriptions, as before LIST-EXTENDED. */
static void cmd_lsub(struct imap_session *is, size_t a)
{
	char ref[STORE_NAME_MAX + 1], pat[2 * STORE_NAME_MAX + 2];
	if (!is_astring(is, a) || !is_astring(is, a + 1) || a + 2 != is->ntoks) {
		syntax(is, "Syntax: LSUB reference mailbox");
		return;
	}
	ssize_t n1 = name_decode(is, tok_span(is, a), ref, sizeof(ref) - 1);
	ssize_t n2 = name_decode(is, tok_span(is, a + 1), pat, STORE_NAME_MAX);
	if (n1 < 0 || n2 < 0) {
		done(is, "OK", "LSUB completed");
		return;
	}
	if (n2 == 0) {
		out_str(is, "* LSUB (\\Noselect) \"/\" \"\"\r\n");
		done(is, "OK", "LSUB completed");
		return;
	}
	ref[n1] = '\0';
	pat[n2] = '\0';
	struct list_job lj = { .sel = LSEL_SUBSCRIBED, .pats_at = a + 1, .npats = 1 };
	memcpy(lj.ref, ref, (size_t)n1 + 1);
	int rc = list_build(is, &lj);
	if (rc) {
		free(lj.fl);
		free(lj.e);
		store_error(is, rc);
		return;
	}
	for (size_t i = 0; i < lj.n; i++) {
		const struct lentry *x = &lj.e[i];
		char name[STORE_NAME_MAX + 1];
		lentry_name(x, name);
		if (!(x->subscribed || x->child_sel) || !list_name_matches(&lj, is, name))
			continue;
		/* RFC 3501 6.3.9: a parent of a subscription that "%" does not
		 * reach is listed \Noselect. */
		if (!x->subscribed && !list_child_unlisted(&lj, is, x))
			continue;
		out_printf(is, "* LSUB (%s) \"/\" ", x->exists && x->subscribed ? "" : "\\Noselect");
		out_mailbox(is, name);
		out_str(is, "\r\n");
	}
	free(lj.fl);
	free(lj.e);
	done(is, "OK", "LSUB completed");
}

/* Options in a list at toks[i]: names[k] sets bit 1 << k. Returns the
 * index past the list, or 0 for an unknown option. */
static size_t list_opts(struct imap_session *is, size_t i, const char *const *names, size_t nn,
			unsigned *bits_r, size_t *status_at_r)
{
	size_t end = list_end(is, i);
	for (size_t k = i + 1; k + 1 < end; k++) {
		bool known = false;
		for (size_t b = 0; b < nn && !known; b++)
			if (is_atom(is, k, names[b])) {
				*bits_r |= 1u << b;
				known = true;
			}
		if (!known)
			return 0;
		if (status_at_r && is_atom(is, k, "STATUS")) {
			/* STATUS (one or more items) */
			if (k + 1 >= end - 1 || is->toks[k + 1].kind != T_LBEGIN ||
			    list_end(is, k + 1) == k + 3)
				return 0;
			*status_at_r = k + 1;
			k = list_end(is, k + 1) - 1;
		}
	}
	return end;
}

static void cmd_list(struct imap_session *is, size_t a)
{
	static const char *const sel_names[] = { "SUBSCRIBED", "REMOTE", "RECURSIVEMATCH",
						 "SPECIAL-USE" };
	static const char *const ret_names[] = { "SUBSCRIBED", "CHILDREN", "SPECIAL-USE",
						 "STATUS" };
	struct list_job *lj = calloc(1, sizeof(*lj));
	if (!lj) {
		store_error(is, -ENOMEM);
		return;
	}
	size_t i = a;
	if (i < is->ntoks && is->toks[i].kind == T_LBEGIN) {
		lj->extended = true;
		if (!(i = list_opts(is, i, sel_names, 4, &lj->sel, NULL))) {
			free(lj);
			syntax(is, "Unknown LIST selection option");
			return;
		}
		/* RFC 5258 3: RECURSIVEMATCH needs a real selection option. */
		if ((lj->sel & LSEL_RECURSIVE) && !(lj->sel & (LSEL_SUBSCRIBED | LSEL_SPECIAL))) {
			free(lj);
			syntax(is, "RECURSIVEMATCH needs another selection option");
			return;
		}
	}
	if (!is_astring(is, i)) {
		free(lj);
		syntax(is, "Syntax: LIST [(options)] reference mailbox [RETURN (options)]");
		return;
	}
	ssize_t n1 = name_decode(is, tok_span(is, i), lj->ref, sizeof(lj->ref) - 1);
	lj->ref[n1 < 0 ? 0 : n1] = '\0';
	i++;
	lj->pats_at = i;
	if (i < is->ntoks && is->toks[i].kind == T_LBEGIN) {
		lj->extended = true;
		size_t end = list_end(is, i);
		for (size_t k = i + 1; k + 1 < end; k++)
			if (!is_astring(is, k))
				end = 0;
		if (end < i + 3) {
			free(lj);
			syntax(is, "Invalid LIST pattern list");
			return;
		}
		lj->npats = end - i - 2;
		i = end;
	} else if (is_astring(is, i)) {
		lj->npats = 1;
		i++;
	} else {
		free(lj);
		syntax(is, "Syntax: LIST [(options)] reference mailbox [RETURN (options)]");
		return;
	}
	if (i < is->ntoks) {
		lj->extended = true;
		if (!is_atom(is, i, "RETURN") || i + 1 >= is->ntoks ||
		    is->toks[i + 1].kind != T_LBEGIN ||
		    !(i = list_opts(is, i + 1, ret_names, 4, &lj->ret, &lj->status_at)) ||
		    i != is->ntoks || ((lj->ret & LRET_STATUS) && !status_items_ok(is, lj->status_at))) {
			free(lj);
			syntax(is, "Invalid LIST return options");
			return;
		}
		if (lj->ret & LRET_STATUS)
			status_condstore(is, lj->status_at);
	}
	if (n1 < 0) {
		free(lj);
		done(is, "OK", "LIST completed");
		return;
	}
	if (lj->npats == 1 && !lj->extended && tok_span(is, lj->pats_at).len == 0) {
		/* RFC 3501 6.3.8: the hierarchy delimiter and root. */
		free(lj);
		out_str(is, "* LIST (\\Noselect) \"/\" \"\"\r\n");
		done(is, "OK", "LIST completed");
		return;
	}
	is->lj = lj;
	int rc = list_build(is, lj);
	if (rc) {
		list_job_free(is);
		store_error(is, rc);
		return;
	}
	list_pump(is);
}

/* ---- STATUS ---------------------------------------------------------------------------------- */

/* " (ITEM n ...)\r\n" for the STATUS items in the list at toks[list_at]. */
static void out_status_items(struct imap_session *is, const struct store_folder_status *st,
			     size_t list_at)
{
	out_str(is, " (");
	size_t end = list_end(is, list_at) - 1;
	bool first = true;
	for (size_t i = list_at + 1; i < end; i++) {
		const char *it = tok_str(is, i);
		uint64_t v;
		if (!strcasecmp(it, "MESSAGES"))
			v = st->messages;
		else if (!strcasecmp(it, "UIDNEXT"))
			v = st->uidnext;
		else if (!strcasecmp(it, "UIDVALIDITY"))
			v = st->uidvalidity;
		else if (!strcasecmp(it, "UNSEEN"))
			v = st->unseen;
		else if (!strcasecmp(it, "RECENT"))
			v = 0;
		else if (!strcasecmp(it, "SIZE"))
			v = st->bytes;
		else if (!strcasecmp(it, "DELETED"))
			v = st->deleted;
		else if (!strcasecmp(it, "HIGHESTMODSEQ"))
			v = st->highestmodseq;
		else if (!strcasecmp(it, "APPENDLIMIT"))
			v = cfg_of(is)->message_size_max; /* RFC 7889 3: every mailbox's */
		else
			continue;
		char up[32];
		size_t k;
		for (k = 0; it[k] && k + 1 < sizeof(up); k++)
			up[k] = (char)toupper((unsigned char)it[k]);
		up[k] = '\0';
		out_printf(is, "%s%s %" PRIu64, first ? "" : " ", up, v);
		first = false;
	}
	out_str(is, ")\r\n");
}

/* "* STATUS" for the command's arguments (mailbox at 2, items at 3). */
static void status_reply(struct imap_session *is, const struct store_folder_status *st)
{
	out_str(is, "* STATUS ");
	out_string(is, tok_span(is, 2));
	out_status_items(is, st, 3);
	done(is, "OK", "STATUS completed");
}

/* Whether the list at toks[list_at] holds only known STATUS items. After
 * ENABLE IMAP4rev2, RECENT is not one: RFC 9051's status-att has no
 * RECENT, and a server offering both revisions returns removed items
 * only to an IMAP4rev1 client (RFC 9051 appendix A). */
static bool status_items_ok(struct imap_session *is, size_t list_at)
{
	static const char *const ok[] = { "MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
					  "RECENT", "SIZE", "HIGHESTMODSEQ", "DELETED",
					  "APPENDLIMIT" };
	size_t end = list_end(is, list_at) - 1;
	if (end == list_at + 1)
		return false; /* "(" status-att *(SP status-att) ")" */
	for (size_t i = list_at + 1; i < end; i++) {
		bool known = false;
		for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++)
			known |= is_atom(is, i, ok[k]);
		if (!known || (is->rev2 && is_atom(is, i, "RECENT")))
			return false;
	}
	return true;
}

/* STATUS (HIGHESTMODSEQ) is a CONDSTORE enabling command (RFC 7162 3.1):
 * from then on unsolicited FETCH responses carry MODSEQ. */
static void status_condstore(struct imap_session *is, size_t list_at)
{
	size_t end = list_end(is, list_at) - 1;
	for (size_t i = list_at + 1; i < end; i++)
		if (is_atom(is, i, "HIGHESTMODSEQ"))
			is->condstore = true;
}

static void status_opened(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (gone_after_open(is, folder))
		return;
	if (res < 0) {
		store_error(is, res);
		release(is);
		return;
	}
	struct store_folder_status st;
	store_folder_status(folder, &st);
	store_folder_close(&folder);
	status_reply(is, &st);
	release(is);
}

static void cmd_status(struct imap_session *is, size_t a)
{
	char name[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, name, sizeof(name)))
		return;
	if (a + 1 >= is->ntoks || is->toks[a + 1].kind != T_LBEGIN ||
	    list_end(is, a + 1) != is->ntoks) {
		syntax(is, "Syntax: STATUS mailbox (items)");
		return;
	}
	if (!status_items_ok(is, a + 1)) {
		syntax(is, is->rev2 ? "Unknown STATUS item (IMAP4rev2 has no RECENT)"
				    : "Unknown STATUS item");
		return;
	}
	status_condstore(is, a + 1);
	/* By name, also for the selected mailbox: the one this session holds
	 * may have been deleted (or renamed away) by another session, which
	 * the name lookup sees (NO [NONEXISTENT]) while the session's handle
	 * still reads the old counts. The store answers from its index
	 * without opening the folder; only a name it does not know (a
	 * special-use folder created on demand, or an error to report) goes
	 * through store_folder_open(). */
	struct store_folder_status st;
	if (store_folder_status_of(is->su, name, &st) == 0) {
		status_reply(is, &st);
		return;
	}
	set_busy(is, true);
	hold(is);
	store_folder_open(is->su, stream_loop(is->s), name, status_opened, is);
}

/* ---- QUOTA (RFC 9208) ------------------------------------------------------------------------ */

/* The quota root is the user: one root "" over every mailbox. "* QUOTA"
 * lists the limited resources (STORAGE in KiB, MESSAGE); false when
 * nothing is limited (then there is no quota root at all). */
static bool out_quota(struct imap_session *is)
{
	uint64_t bytes, msgs, lb, lm;
	store_user_quota(is->su, &bytes, &msgs, &lb, &lm);
	if (!lb && !lm)
		return false;
	out_str(is, "* QUOTA \"\" (");
	if (lb)
		out_printf(is, "STORAGE %" PRIu64 " %" PRIu64, (bytes + 1023) / 1024, lb / 1024);
	if (lm)
		out_printf(is, "%sMESSAGE %" PRIu64 " %" PRIu64, lb ? " " : "", msgs, lm);
	out_str(is, ")\r\n");
	return true;
}

static bool quota_limited(struct imap_session *is)
{
	uint64_t bytes, msgs, lb, lm;
	store_user_quota(is->su, &bytes, &msgs, &lb, &lm);
	return lb || lm;
}

/* Whether the folder exists (from the folder list; INBOX always does). */
static int folder_exists(struct imap_session *is, const char *name)
{
	if (strcmp(name, "INBOX") == 0)
		return 1;
	struct store_folder_info *fl;
	size_t nf;
	int rc = store_folder_list(is->su, &fl, &nf);
	if (rc)
		return rc;
	int found = 0;
	for (size_t i = 0; i < nf && !found; i++)
		found = fl[i].exists && strcmp(fl[i].name, name) == 0;
	free(fl);
	return found;
}

static void cmd_getquotaroot(struct imap_session *is, size_t a)
{
	char name[STORE_NAME_MAX + 1];
	if (!mailbox_arg(is, a, name, sizeof(name)))
		return;
	if (a + 1 != is->ntoks) {
		syntax(is, "Syntax: GETQUOTAROOT mailbox");
		return;
	}
	int rc = folder_exists(is, name);
	if (rc <= 0) {
		store_error(is, rc ? rc : -ENOENT);
		return;
	}
	out_str(is, "* QUOTAROOT ");
	out_mailbox(is, name);
	out_str(is, quota_limited(is) ? " \"\"\r\n" : "\r\n");
	out_quota(is);
	done(is, "OK", "GETQUOTAROOT completed");
}

static void cmd_getquota(struct imap_session *is, size_t a)
{
	if (!is_astring(is, a) || a + 1 != is->ntoks) {
		syntax(is, "Syntax: GETQUOTA root");
		return;
	}
	if (tok_span(is, a).len != 0 || !out_quota(is)) {
		done(is, "NO", "[NONEXISTENT] No such quota root");
		return;
	}
	done(is, "OK", "GETQUOTA completed");
}

static void cmd_setquota(struct imap_session *is, size_t a)
{
	(void)a;
	done(is, "NO", "[NOPERM] Quotas are set by the administrator");
}

/* ---- FETCH ----------------------------------------------------------------------------------- */

static void fetch_pump(struct imap_session *is);

static void fetch_free(struct imap_session *is)
{
	if (!is->fj)
		return;
	free(is->fj->hbuf);
	free(is->fj->dbuf);
	free(is->fj);
	is->fj = NULL;
}

/* Parses one FETCH item. false: syntax error. */
static bool fetch_item(struct imap_session *is, struct span t, struct fetch_job *fj)
{
	if (fj->nitems == IMAP_FETCH_ITEMS_MAX)
		return false;
	struct fitem *it = &fj->items[fj->nitems];
	memset(it, 0, sizeof(*it));
	static const struct {
		const char *name;
		uint8_t kind, rfc822;
	} simple[] = {
		{ "FLAGS", FI_FLAGS, 0 }, { "UID", FI_UID, 0 },
		{ "INTERNALDATE", FI_INTERNALDATE, 0 }, { "RFC822.SIZE", FI_SIZE, 0 },
		{ "ENVELOPE", FI_ENVELOPE, 0 }, { "BODYSTRUCTURE", FI_BODYSTRUCTURE, 0 },
		{ "BODY", FI_BODY, 0 }, { "MODSEQ", FI_MODSEQ, 0 },
		{ "RFC822", FI_SECTION, 1 }, { "RFC822.HEADER", FI_SECTION, 2 },
		{ "RFC822.TEXT", FI_SECTION, 3 },
	};
	for (size_t k = 0; k < sizeof(simple) / sizeof(simple[0]); k++) {
		if (!span_eq_nocase(t, span_cstr(simple[k].name)))
			continue;
		it->kind = simple[k].kind;
		it->rfc822 = simple[k].rfc822;
		if (it->rfc822 == 2) {
			it->peek = true;
			it->spec = SPAN_LIT("HEADER");
		} else if (it->rfc822 == 3) {
			it->spec = SPAN_LIT("TEXT");
		}
		if (it->kind == FI_SECTION && !it->peek)
			fj->set_seen = true;
		if (it->kind == FI_MODSEQ)
			is->condstore = true;
		fj->nitems++;
		return true;
	}
	struct span rest;
	uint8_t kind = FI_SECTION;
	if (span_prefix_nocase(t, SPAN_LIT("BODY.PEEK["))) {
		it->peek = true;
		rest = span_skip(t, 10);
	} else if (span_prefix_nocase(t, SPAN_LIT("BODY["))) {
		rest = span_skip(t, 5);
	} else if (span_prefix_nocase(t, SPAN_LIT("BINARY.PEEK["))) {
		kind = FI_BINARY;
		it->peek = true;
		rest = span_skip(t, 12);
	} else if (span_prefix_nocase(t, SPAN_LIT("BINARY.SIZE["))) {
		kind = FI_BINARY_SIZE;
		it->peek = true; /* the size alone does not set \Seen */
		rest = span_skip(t, 12);
	} else if (span_prefix_nocase(t, SPAN_LIT("BINARY["))) {
		kind = FI_BINARY;
		rest = span_skip(t, 7);
	} else {
		return false;
	}
	const uint8_t *rb = memchr(rest.p, ']', rest.len);
	if (!rb)
		return false;
	it->kind = kind;
	it->spec = span_make(rest.p, (size_t)(rb - rest.p));
	/* section-binary = "[" [section-part] "]": part numbers only; a
	 * BODY section is checked whole (BODY[MIME], HEADER.FIELDS without
	 * or with an empty list: BAD, not an empty string) */
	if (kind != FI_SECTION ? imap_parse_section_part(it->spec) != 0
			       : imap_parse_section(it->spec) != 0)
		return false;
	struct span after = span_skip(rest, it->spec.len + 1);
	if (after.len && kind == FI_BINARY_SIZE)
		return false; /* no partial */
	if (after.len) {
		/* <origin.count> */
		if (after.p[0] != '<' || after.p[after.len - 1] != '>')
			return false;
		struct span in = span_make(after.p + 1, after.len - 2);
		const uint8_t *dot = memchr(in.p, '.', in.len);
		uint64_t o, n; /* number64 "." nz-number64 (RFC 9051) */
		if (!dot || imap_parse_number64(span_make(in.p, (size_t)(dot - in.p)), false, &o) ||
		    imap_parse_number64(span_skip(in, (size_t)(dot - in.p) + 1), true, &n))
			return false;
		it->partial = true;
		it->poff = o;
		it->plen = n;
	}
	if (!it->peek)
		fj->set_seen = true;
	fj->nitems++;
	return true;
}

static void splice_pipe_idle(struct imap_session *is);

static void fetch_finish(struct imap_session *is)
{
	bool expunged = is->fj->expunged, sel = is->fj->select_reply;
	fetch_free(is);
	splice_pipe_idle(is);
	if (sel)
		select_done(is);
	else if (expunged)
		done(is, "NO", "[EXPUNGEISSUED] Some messages were expunged");
	else
		done(is, "OK", "%sFETCH completed", is->uid_cmd ? "UID " : "");
}

static void format_date(char *buf, size_t cap, int64_t t)
{
	static const char *const mon[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t tt = (time_t)t;
	struct tm tm;
	gmtime_r(&tt, &tm);
	snprintf(buf, cap, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, mon[tm.tm_mon],
		 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Writes a formatter's output (ENVELOPE, BODY, BODYSTRUCTURE). */
static void out_formatted(struct imap_session *is, const struct mime_blob *mb, int what)
{
	uint8_t small[4096];
	int64_t n = what == 0 ? mime_write_envelope(mb, 0, small, sizeof(small))
			      : mime_write_bodystructure(mb, 0, what == 2, small, sizeof(small));
	if (n < 0) {
		out_str(is, "NIL");
		return;
	}
	if ((size_t)n <= sizeof(small)) {
		out_put(is, small, (size_t)n);
		return;
	}
	uint8_t *big = malloc((size_t)n);
	if (!big) {
		out_str(is, "NIL");
		return;
	}
	int64_t m = what == 0 ? mime_write_envelope(mb, 0, big, (size_t)n)
			      : mime_write_bodystructure(mb, 0, what == 2, big, (size_t)n);
	if (m == n)
		out_put(is, big, (size_t)n);
	else
		out_str(is, "NIL");
	free(big);
}

/* Whether header field name (up to ':') is in the list " (a b c)". */
/* The field names of a HEADER.FIELDS list, split once per header
 * filtered rather than once per header line. */
#define HDR_NAMES_MAX 64

struct hdr_names {
	struct span name[HDR_NAMES_MAX];
	size_t n;
	bool over; /* more than HDR_NAMES_MAX: the list is scanned per line */
};

/* Calls fn on each name of the list "(a b "c")"; stops when it returns
 * true, and returns that. */
static bool list_names(struct span list, bool (*fn)(void *, struct span), void *arg)
{
	size_t i = 0;
	while (i < list.len) {
		while (i < list.len && (list.p[i] == ' ' || list.p[i] == '(' || list.p[i] == ')' ||
					list.p[i] == '"'))
			i++;
		size_t j = i;
		while (j < list.len && list.p[j] != ' ' && list.p[j] != ')' && list.p[j] != '"')
			j++;
		if (j > i && fn(arg, span_make(list.p + i, j - i)))
			return true;
		i = j;
	}
	return false;
}

static bool names_add(void *arg, struct span name)
{
	struct hdr_names *hn = arg;
	if (hn->n == HDR_NAMES_MAX) {
		hn->over = true;
		return true;
	}
	hn->name[hn->n++] = name;
	return false;
}

static bool name_is(void *arg, struct span name)
{
	const struct span *want = arg;
	return name.len == want->len && span_eq_nocase(name, *want);
}

static bool field_in_names(const struct hdr_names *hn, struct span list, struct span name)
{
	if (hn->over)
		return list_names(list, name_is, &name);
	for (size_t k = 0; k < hn->n; k++)
		if (hn->name[k].len == name.len && span_eq_nocase(hn->name[k], name))
			return true;
	return false;
}

/* Filters the header in hbuf[0..hlen) in place; returns the new length
 * (blank line kept at the end). */
static size_t header_filter(uint8_t *h, size_t len, struct span list, bool not)
{
	struct hdr_names hn = { .n = 0 };
	list_names(list, names_add, &hn);
	size_t r = 0, w = 0;
	bool keep = false;
	while (r < len) {
		const uint8_t *nl_at = memchr(h + r, '\n', len - r);
		size_t e = nl_at ? (size_t)(nl_at - h) + 1 : len;
		size_t l = e - r;
		bool blank = (l == 1 && h[r] == '\n') || (l == 2 && h[r] == '\r');
		if (blank)
			break;
		if (h[r] != ' ' && h[r] != '\t') {
			const uint8_t *colon = memchr(h + r, ':', l);
			size_t nl = colon ? (size_t)(colon - (h + r)) : 0;
			while (nl && (h[r + nl - 1] == ' ' || h[r + nl - 1] == '\t'))
				nl--;
			bool in = colon && field_in_names(&hn, list, span_make(h + r, nl));
			keep = not ? !in : in;
		}
		if (keep) {
			if (w != r)
				memmove(h + w, h + r, l);
			w += l;
		}
		r = e;
	}
	h[w++] = '\r';
	h[w++] = '\n';
	return w;
}

static void fetch_read_done(void *arg, ssize_t res);
static bool fetch_binary_chunk(struct imap_session *is, size_t res);

/* An IMAP literal is CHAR8: no NUL (RFC 3501 and RFC 9051, section 9). A
 * message stored with NUL octets (a literal8 APPEND, SMTP BDAT) has them
 * sent as 0x80 in BODY[], RFC822 and header items, as Dovecot does;
 * BINARY[] sends them as they are, in a literal8. Same length: the
 * literal's count and RFC822.SIZE hold. */
static void nul_to_0x80(uint8_t *p, size_t n)
{
	for (uint8_t *z = memchr(p, 0, n); z; z = memchr(z + 1, 0, n - (size_t)(z + 1 - p)))
		*z = 0x80;
}

/* ---- zero-copy sections (plaintext) ---- */

static void splice_pipe_close(struct imap_session *is)
{
	if (is->pipe_r < 0)
		return;
	close(is->pipe_r);
	close(is->pipe_w);
	is->pipe_r = is->pipe_w = -1;
}

/* Closes the pipe once no FETCH uses it and the connection has sent all it
 * held (the connection reads from pipe_r until then): an idle session
 * keeps neither its two descriptors nor its pipe buffers. */
static void splice_pipe_idle(struct imap_session *is)
{
	if (is->pipe_r >= 0 && !is->fj && !is->dead && stream_splice_pending(is->s) == 0)
		splice_pipe_close(is);
}

/* Makes the pipe, as large as allowed. Returns 0, -errno of pipe2()
 * (EMFILE...) or -ENOBUFS (it cannot hold enough to be worth it). */
static int splice_pipe_open(struct imap_session *is)
{
	int p[2], sz = -1;
	if (is->pipe_r >= 0)
		return 0;
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	for (unsigned want = IMAP_SPLICE_PIPE; want >= IMAP_SPLICE_PIPE_MIN && sz < 0; want /= 2)
		sz = fcntl(p[1], F_SETPIPE_SZ, (int)want);
	/* A range that starts inside a page spans one page more than its
	 * length: leave that page free, so a splice always fits whole. */
	long page = sysconf(_SC_PAGESIZE);
	size_t chunk = sz > page ? (size_t)(sz - page) : 0;
	uint64_t half = cfg_of(is)->send_queue_max / 2;
	if (chunk > half)
		chunk = (size_t)half;
	if (chunk > STORE_READ_MAX)
		chunk = STORE_READ_MAX;
	if (chunk < IMAP_SPLICE_PIPE_MIN / 2) {
		close(p[0]);
		close(p[1]);
		return -ENOBUFS;
	}
	is->pipe_r = p[0];
	is->pipe_w = p[1];
	is->pipe_chunk = chunk;
	return 0;
}

/* Whether a byte range of len bytes of m goes to the client with
 * splice: a plaintext stream, a range long enough to pay for the kernel
 * worker hand-offs, and a message the MIME scanner saw no NUL in (a CHAR8
 * literal has NUL as 0x80, which needs the bytes read; a blob written
 * before MIME_BLOB_NUL_FREE, or one that disagrees on the size, says
 * nothing). Makes the pipe; false when it cannot be had (copy instead). */
static bool fetch_splice_ok(struct imap_session *is, const struct store_msg *m,
			    const struct mime_blob *mb, bool mb_ok, uint64_t len)
{
	if (len < IMAP_SPLICE_MIN || !stream_is_plain(is->s) || !mb_ok ||
	    !(mb->flags & MIME_BLOB_NUL_FREE) || mb->size != m->size)
		return false;
	int rc = splice_pipe_open(is);
	if (rc) {
		LOG_AT(stream_log(is->s), LOG_DEBUG, stream_sid(is->s), "imap-splice-unavailable",
		       "error=%s", strerror(-rc));
		return false;
	}
	return true;
}

/* Whether the next piece of the open section is spliced: the tail of a
 * spliced section shorter than IMAP_SPLICE_MIN is read and copied (a
 * message of 1 MiB and a few bytes would otherwise pay a second pair of
 * worker hand-offs for those bytes). */
static bool fetch_splicing(const struct fetch_job *fj)
{
	return fj->splice && fj->rd_left >= IMAP_SPLICE_MIN;
}

/* The bytes [*from_r, return value) of n that the item's partial <o.n>
 * sends (all of them without one). */
static size_t partial_cut(const struct fitem *it, size_t n, size_t *from_r)
{
	*from_r = 0;
	if (!it->partial)
		return n;
	*from_r = it->poff < n ? (size_t)it->poff : n;
	return n - *from_r > it->plen ? *from_r + (size_t)it->plen : n;
}

static void fetch_read(struct imap_session *is)
{
	struct fetch_job *fj = is->fj;
	uint32_t uid = is->msgs[fj->cur].uid;
	fj->reading = true;
	hold(is);
	fj->rd_splice = fetch_splicing(fj);
	if (fj->rd_splice) {
		/* fetch_pump() saw the pipe empty: pipe_chunk fits */
		size_t len = fj->rd_left < is->pipe_chunk ? (size_t)fj->rd_left : is->pipe_chunk;
		is->rd_inflight++;
		store_splice(is->folder, is->loop, uid, fj->rd_off, len, is->pipe_w,
			     fetch_read_done, is);
		return;
	}
	if (fj->hdr_filter) {
		size_t len = fj->rd_left < fj->hcap - fj->hlen ? (size_t)fj->rd_left : fj->hcap - fj->hlen;
		if (len > IMAP_READ_CHUNK)
			len = IMAP_READ_CHUNK;
		is->rd_inflight++;
		store_read(is->folder, stream_loop(is->s), uid, fj->rd_off, fj->hbuf + fj->hlen, len,
			   fetch_read_done, is);
		return;
	}
	size_t chunk = read_chunk(is);
	size_t len = fj->rd_left < chunk ? (size_t)fj->rd_left : chunk;
	is->rd_inflight++;
	store_read(is->folder, stream_loop(is->s), uid, fj->rd_off, is->rbuf, len, fetch_read_done,
		   is);
}

static void fetch_read_done(void *arg, ssize_t res)
{
	struct imap_session *is = arg;
	struct fetch_job *fj = is->fj;
	is->rd_inflight--;
	if (is->dead) {
		release(is);
		return;
	}
	fj->reading = false;
	if (res == -ENOENT && (fj->lit_pending || fj->hdr_filter)) {
		/* Expunged by another session since our view: nothing of the
		 * section is promised yet. NIL and NO [EXPUNGEISSUED], as
		 * RFC 2180 4.1.3 allows; the message keeps its number until
		 * the EXPUNGE can be sent. */
		out_str(is, "NIL");
		fj->lit_pending = fj->hdr_filter = fj->splice = false;
		fj->rd_left = 0;
		fj->item_open = false;
		fj->expunged = true;
		fj->ii++;
		fetch_pump(is);
		release(is);
		return;
	}
	if (fj->lit_pending && res > 0) {
		fj->lit_pending = false;
		out_num(is, "{", fj->lit_len, "}\r\n");
	}
	if (res < 0 || (res == 0 && fj->rd_left)) {
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-read-error",
		       "uid=%" PRIu32 " error=%s", is->msgs[fj->cur].uid,
		       res < 0 ? strerror((int)-res) : "short message");
		/* A literal's length is promised: nothing honest can follow. */
		session_close(is, false);
		release(is);
		return;
	}
	fj->rd_off += (uint64_t)res;
	fj->rd_left -= (uint64_t)res;
	if (fj->hdr_filter) {
		fj->hlen += (size_t)res;
		if (fj->rd_left == 0 || fj->hlen == fj->hcap) {
			size_t n = header_filter(fj->hbuf, fj->hlen, fj->hdr_fields, fj->hdr_not);
			nul_to_0x80(fj->hbuf, n);
			/* <o.n> counts bytes of the filtered header (RFC 9051
			 * 6.4.5): the range of it that is sent */
			size_t from;
			n = partial_cut(&fj->items[fj->ii], n, &from);
			out_num(is, "{", n - from, "}\r\n");
			/* up to IMAP_HEADER_READ_MAX: fetch_pump() sends it in
			 * pieces, waiting for the socket like a body */
			fj->hdr_filter = false;
			fj->hdr_out = true;
			fj->hlen = n;
			fj->hout = from;
			fj->rd_left = 0;
		}
	} else if (fj->bin) {
		if (!fetch_binary_chunk(is, (size_t)res)) {
			session_close(is, false);
			release(is);
			return;
		}
	} else if (fj->rd_splice) {
		out_flush(is);
		int rc = stream_send_splice(is->s, is->pipe_r, (size_t)res);
		if (rc) {
			LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s), "imap-splice-error",
			       "uid=%" PRIu32 " error=%s", is->msgs[fj->cur].uid, strerror(-rc));
			session_close(is, false);
			release(is);
			return;
		}
		if (fj->rd_left == 0) {
			fj->splice = false;
			fj->item_open = false;
			fj->ii++;
		}
	} else {
		if (!fj->nul_free) /* (the scanner saw no NUL: nothing to find) */
			nul_to_0x80(is->rbuf, (size_t)res);
		out_bulk(is, is->rbuf, (size_t)res);
		if (fj->rd_left == 0) {
			fj->splice = false; /* a spliced section's tail */
			fj->item_open = false;
			fj->ii++;
		}
	}
	fetch_pump(is);
	release(is);
}

/* Starts BODY[section] of the current message. Returns true when it
 * completed at once. */
static bool fetch_section(struct imap_session *is, struct fitem *it, const struct store_msg *m,
			  const struct mime_blob *mb, bool mb_ok)
{
	struct fetch_job *fj = is->fj;
	if (it->rfc822 == 1)
		out_str(is, "RFC822 ");
	else if (it->rfc822 == 2)
		out_str(is, "RFC822.HEADER ");
	else if (it->rfc822 == 3)
		out_str(is, "RFC822.TEXT ");
	else {
		out_str(is, "BODY[");
		out_put(is, it->spec.p, it->spec.len);
		out_str(is, "]");
		if (it->partial)
			out_printf(is, "<%" PRIu64 ">", it->poff);
		out_str(is, " ");
	}
	uint64_t off = 0, len = m->size;
	struct mime_section sec = { 0 };
	if (it->spec.len) {
		int rc = mb_ok ? mime_blob_section(mb, it->spec, &sec) : -ENOENT;
		if (rc) {
			out_str(is, "\"\"");
			return true;
		}
		off = sec.off;
		len = sec.len;
	}
	if (sec.what == MIME_SECTION_HEADER_FIELDS || sec.what == MIME_SECTION_HEADER_FIELDS_NOT) {
		if (len > IMAP_HEADER_READ_MAX)
			len = IMAP_HEADER_READ_MAX;
		if (fj->hcap < len + 2) {
			free(fj->hbuf);
			fj->hbuf = malloc(len + 2);
			fj->hcap = fj->hbuf ? (size_t)len + 2 : 0;
		}
		if (!fj->hbuf) {
			out_str(is, "\"\"");
			return true;
		}
		fj->hcap = (size_t)len; /* leave room for the CRLF */
		fj->hlen = 0;
		fj->hdr_filter = true;
		fj->hdr_not = sec.what == MIME_SECTION_HEADER_FIELDS_NOT;
		fj->hdr_fields = sec.rest;
		fj->rd_off = off;
		fj->rd_left = len;
		fj->item_open = true;
		if (len == 0) {
			/* the filtered empty header is its CRLF */
			size_t from, to = partial_cut(it, 2, &from);
			out_num(is, "{", to - from, "}\r\n");
			out_put(is, &"\r\n"[from], to - from);
			fj->hdr_filter = false;
			fj->item_open = false;
			return true;
		}
		return false;
	}
	if (it->partial) {
		if (it->poff >= len) {
			len = 0;
		} else {
			off += it->poff;
			len -= it->poff;
			if (len > it->plen)
				len = it->plen;
		}
	}
	if (len == 0) {
		out_str(is, "{0}\r\n");
		return true;
	}
	fj->lit_pending = true;
	fj->lit_len = len;
	fj->rd_off = off;
	fj->rd_left = len;
	fj->item_open = true;
	fj->splice = fetch_splice_ok(is, m, mb, mb_ok, len);
	fj->nul_free = mb_ok && (mb->flags & MIME_BLOB_NUL_FREE) && mb->size == m->size;
	return false;
}

/* ---- FETCH BINARY (RFC 3516, RFC 9051 6.4.5) ---- */

/* What a BINARY section of a message refers to: 0 and the part's range
 * and CTE, -ENOENT (no such part, or no usable blob: an empty string, as
 * BODY[] answers), -EISDIR (a multipart or message part: BINARY is for
 * leaf parts only) or -EPROTONOSUPPORT (a CTE it cannot decode). spec ""
 * is the whole message as it is. */
static int binary_part(const struct store_msg *m, struct span spec, uint64_t *off_r,
		       uint64_t *len_r, enum decode_cte *cte_r)
{
	*off_r = 0;
	*len_r = m->size;
	*cte_r = DECODE_CTE_IDENTITY;
	if (spec.len == 0)
		return 0;
	struct mime_blob mb;
	struct mime_section sec;
	struct mime_part p;
	if (mime_blob_parse(m->blob, &mb) || mime_blob_section(&mb, spec, &sec) ||
	    mime_blob_part(&mb, sec.part, &p))
		return -ENOENT;
	if (p.kind == MIME_KIND_MULTIPART || p.kind == MIME_KIND_MESSAGE)
		return -EISDIR;
	struct span v;
	if (mime_blob_field(&mb, sec.part, MIME_FIELD_CONTENT_TRANSFER_ENCODING, &v))
		*cte_r = decode_cte_parse(v);
	if (*cte_r == DECODE_CTE_UNKNOWN)
		return -EPROTONOSUPPORT;
	*off_r = sec.off;
	*len_r = sec.len;
	return 0;
}

/* Before anything is sent (or \Seen set): every BINARY item of every
 * message in the set must be one that can be answered, or the FETCH
 * fails as a whole (RFC 3516 4.3: NO [UNKNOWN-CTE]). Returns 0,
 * -EISDIR or -EPROTONOSUPPORT. No I/O: the blobs are in memory. */
static int binary_check(struct imap_session *is, const struct fetch_job *fj)
{
	bool any = false;
	for (size_t k = 0; k < fj->nitems; k++)
		any |= (fj->items[k].kind == FI_BINARY || fj->items[k].kind == FI_BINARY_SIZE) &&
		       fj->items[k].spec.len;
	if (!any)
		return 0;
	for (size_t u = 0; u < is->nuids; u++) {
		ssize_t j = msgs_find(is, is->uids[u]);
		const struct store_msg *m = j < 0 ? NULL : msg_of(is, (size_t)j);
		if (!m)
			continue;
		for (size_t k = 0; k < fj->nitems; k++) {
			const struct fitem *it = &fj->items[k];
			if ((it->kind != FI_BINARY && it->kind != FI_BINARY_SIZE) || !it->spec.len)
				continue;
			uint64_t off, len;
			enum decode_cte cte;
			int rc = binary_part(m, it->spec, &off, &len, &cte);
			if (rc == -EISDIR || rc == -EPROTONOSUPPORT)
				return rc;
		}
	}
	return 0;
}

/* The literal header of a BINARY answer, once the scan knows its size. */
static void binary_literal(struct imap_session *is, uint64_t len, bool nul)
{
	out_printf(is, "%s{%" PRIu64 "}\r\n", nul ? "~" : "", len);
}

/* Ends the scan pass: BINARY.SIZE writes the count; BINARY writes the
 * literal header and starts the send pass. Returns true when the item is
 * complete. */
static bool fetch_binary_scanned(struct imap_session *is)
{
	struct fetch_job *fj = is->fj;
	if (fj->bin_size_only) {
		out_printf(is, "%" PRIu64, fj->dec_pos);
		return true;
	}
	/* The scan stopped at want_end at the latest, or at the part's end. */
	uint64_t end = fj->dec_pos < fj->want_end ? fj->dec_pos : fj->want_end;
	uint64_t len = end > fj->want_off ? end - fj->want_off : 0;
	binary_literal(is, len, fj->bin_nul);
	if (len == 0)
		return true;
	fj->want_end = fj->want_off + len;
	fj->bin = BIN_SEND;
	fj->dec_pos = 0;
	fj->lit_left = len;
	if (fj->dec.cte == DECODE_CTE_IDENTITY) {
		/* no decoding: read just the range */
		fj->rd_off = fj->part_off + fj->want_off;
		fj->rd_left = len;
		fj->dec_pos = fj->want_off;
	} else {
		fj->rd_off = fj->part_off;
		fj->rd_left = fj->part_len;
		decode_init(&fj->dec, (enum decode_cte)fj->dec.cte);
	}
	return false;
}

/* One read of the part (res bytes in rbuf) for the scan or the send
 * pass. Returns false when the promised literal cannot be completed (the
 * bytes changed under us): the caller closes the connection. */
static bool fetch_binary_chunk(struct imap_session *is, size_t res)
{
	struct fetch_job *fj = is->fj;
	const uint8_t *d = is->rbuf;
	size_t n = res;
	if (fj->dec.cte != DECODE_CTE_IDENTITY) {
		n = decode_feed(&fj->dec, span_make(is->rbuf, res), fj->dbuf);
		if (fj->rd_left == 0)
			n += decode_finish(&fj->dec, fj->dbuf + n);
		d = fj->dbuf;
	}
	/* d[0..n) are the decoded bytes [dec_pos, dec_pos + n): the part
	 * of them in [want_off, want_end) matters. */
	uint64_t lo = fj->dec_pos > fj->want_off ? fj->dec_pos : fj->want_off;
	uint64_t hi = fj->dec_pos + n < fj->want_end ? fj->dec_pos + n : fj->want_end;
	bool done;
	if (fj->bin == BIN_SCAN) {
		if (!fj->bin_size_only && lo < hi && !fj->bin_nul &&
		    memchr(d + (lo - fj->dec_pos), 0, (size_t)(hi - lo)))
			fj->bin_nul = true;
		fj->dec_pos += n;
		/* Past want_end the count no longer matters (a partial);
		 * an identity scan only looks for a NUL. */
		done = fj->rd_left == 0 || fj->dec_pos >= fj->want_end ||
		       (fj->dec.cte == DECODE_CTE_IDENTITY && fj->bin_nul);
		if (done) {
			if (fj->dec.cte == DECODE_CTE_IDENTITY && !fj->bin_size_only)
				fj->dec_pos = fj->want_end; /* the range is all there */
			if (!fetch_binary_scanned(is))
				return true;
		} else {
			return true;
		}
	} else {
		if (lo < hi) {
			out_bulk(is, d + (lo - fj->dec_pos), (size_t)(hi - lo));
			fj->lit_left -= hi - lo;
		}
		fj->dec_pos += n;
		if (fj->lit_left && fj->rd_left == 0) {
			LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-binary-short",
			       "uid=%" PRIu32 " missing=%" PRIu64, is->msgs[fj->cur].uid,
			       fj->lit_left);
			return false;
		}
		if (fj->lit_left)
			return true;
	}
	fj->bin = BIN_NONE;
	fj->item_open = false;
	fj->ii++;
	return true;
}

/* Starts BINARY[...] or BINARY.SIZE[...] of the current message. Returns
 * true when it completed at once. */
static bool fetch_binary(struct imap_session *is, struct fitem *it, const struct store_msg *m)
{
	struct fetch_job *fj = is->fj;
	bool size_only = it->kind == FI_BINARY_SIZE;
	out_str(is, size_only ? "BINARY.SIZE[" : "BINARY[");
	out_put(is, it->spec.p, it->spec.len);
	out_str(is, "]");
	if (it->partial)
		out_printf(is, "<%" PRIu64 ">", it->poff);
	out_str(is, " ");
	uint64_t off, len;
	enum decode_cte cte;
	int rc = binary_part(m, it->spec, &off, &len, &cte);
	if (rc) {
		/* no such part (the others were refused by binary_check; one
		 * that appeared since is answered as missing too) */
		out_str(is, size_only ? "0" : "\"\"");
		return true;
	}
	if (size_only && cte == DECODE_CTE_IDENTITY) {
		out_printf(is, "%" PRIu64, len);
		return true;
	}
	if (cte != DECODE_CTE_IDENTITY && !fj->dbuf &&
	    !(fj->dbuf = malloc(DECODE_OUT_MAX(IMAP_READ_CHUNK) + 2))) {
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-binary-nomem",
		       "uid=%" PRIu32, m->uid);
		session_close(is, false);
		return true;
	}
	fj->bin = BIN_SCAN;
	fj->bin_size_only = size_only;
	fj->bin_nul = false;
	decode_init(&fj->dec, cte);
	fj->part_off = off;
	fj->part_len = len;
	fj->want_off = 0;
	fj->want_end = UINT64_MAX;
	if (it->partial) {
		fj->want_off = it->poff;
		fj->want_end = it->poff + it->plen; /* both below 2^63: no wrap */
	}
	fj->dec_pos = 0;
	fj->rd_off = off;
	fj->rd_left = len;
	if (cte == DECODE_CTE_IDENTITY) {
		/* The size is known: scan only the wanted range for a NUL. */
		uint64_t lo = fj->want_off < len ? fj->want_off : len;
		uint64_t hi = fj->want_end < len ? fj->want_end : len;
		fj->want_off = lo;
		fj->want_end = hi;
		fj->dec_pos = lo;
		fj->rd_off = off + lo;
		fj->rd_left = hi - lo;
	}
	if (fj->rd_left == 0) {
		fj->dec_pos = cte == DECODE_CTE_IDENTITY ? fj->want_end : 0;
		if (fetch_binary_scanned(is)) {
			fj->bin = BIN_NONE;
			return true;
		}
	}
	fj->item_open = true;
	return false;
}

/* Whether msgs[i] is in the set. uids[] and msgs[] are both ascending
 * and i only grows: one walk over both, not a search per message. */
static bool fetch_matches(struct imap_session *is, size_t i)
{
	struct fetch_job *fj = is->fj;
	uint32_t uid = is->msgs[i].uid;
	while (fj->ui < is->nuids && is->uids[fj->ui] < uid)
		fj->ui++;
	if (fj->ui >= is->nuids || is->uids[fj->ui] != uid)
		return false;
	if (fj->changedsince) {
		const struct store_msg *m = msg_of(is, i);
		return m && m->modseq > fj->changedsince;
	}
	return true;
}

static void fetch_pump(struct imap_session *is)
{
	struct fetch_job *fj = is->fj;
	size_t high = send_high(is);
	while (!is->dead && is->state != IMAP_S_LOGOUT) {
		if (fj->reading)
			return;
		if (stream_send_pending(is->s) + is->olen > high) {
			out_flush(is);
			fj->wait_drain = true;
			return;
		}
		if (fj->item_open && fetch_splicing(fj) && stream_splice_pending(is->s)) {
			/* The pipe still holds bytes for the socket: a splice
			 * into it could not be sure to fit. */
			out_flush(is);
			fj->wait_drain = true;
			return;
		}
		if (fj->item_open && fj->hdr_out) {
			/* as a body's read: what fits beside send_high() */
			size_t k = fj->hlen - fj->hout, chunk = read_chunk(is);
			if (k > chunk)
				k = chunk;
			out_bulk(is, fj->hbuf + fj->hout, k);
			fj->hout += k;
			if (fj->hout == fj->hlen) {
				fj->hdr_out = false;
				fj->item_open = false;
				fj->ii++;
			}
			continue;
		}
		if (fj->item_open) {
			fetch_read(is);
			return;
		}
		if (!fj->in_msg) {
			/* uids[] is ascending, msgs[] too: walk both. */
			while (fj->mi < is->nmsgs && !fetch_matches(is, fj->mi))
				fj->mi++;
			if (fj->mi >= is->nmsgs) {
				out_flush(is);
				fetch_finish(is);
				return;
			}
			fj->cur = fj->mi++;
			if (!msg_of(is, fj->cur)) {
				fj->expunged = true;
				continue;
			}
			fj->in_msg = true;
			fj->ii = 0;
			/* FLAGS when the FETCH set \Seen, or when the flags
			 * are not what the client knows (another session
			 * changed them: the view was refreshed to set \Seen) */
			const struct store_msg *cm = msg_of(is, fj->cur);
			fj->flags_sent = false;
			fj->add_flags = fj->set_seen && !is->readonly && !fj->want_flags &&
					(!(is->msgs[fj->cur].flags & STORE_F_SEEN) ||
					 cm->flags != is->msgs[fj->cur].flags ||
					 cm->keywords != is->msgs[fj->cur].kw);
			out_num(is, "* ", fj->cur + 1, " FETCH (");
		}
		const struct store_msg *m = msg_of(is, fj->cur);
		if (!m) {
			/* Expunged between reads of this message: end it. */
			fj->expunged = true;
			fj->ii = fj->nitems;
		}
		if (fj->ii >= fj->nitems) {
			if (m && fj->add_flags) {
				fj->flags_sent = true;
				out_str(is, " FLAGS ");
				out_flags(is, m->flags, m->keywords);
				/* RFC 7162 3.1: a FETCH that set \Seen reports UID
				 * and MODSEQ to a CONDSTORE-aware client */
				if (is->condstore && !fj->has_uid)
					out_num(is, " UID ", m->uid, "");
				if (is->condstore && !fj->want_modseq)
					out_num(is, " MODSEQ (", m->modseq, ")");
			}
			if (m && fj->changedsince && !fj->want_modseq)
				out_num(is, " MODSEQ (", m->modseq, ")");
			out_str(is, ")\r\n");
			/* What the client now knows: only what this response
			 * told it. Flags it did not get stay as they were in
			 * msgs[], so the next sync sends them (they used to be
			 * taken as known: another session's change was lost). */
			if (m && fj->flags_sent) {
				is->msgs[fj->cur].flags = m->flags;
				is->msgs[fj->cur].kw = m->keywords;
				is->msgs[fj->cur].modseq = m->modseq;
			} else if (m && m->flags == is->msgs[fj->cur].flags &&
				   m->keywords == is->msgs[fj->cur].kw &&
				   (fj->want_modseq || fj->changedsince)) {
				is->msgs[fj->cur].modseq = m->modseq;
			}
			fj->in_msg = false;
			continue;
		}
		struct fitem *it = &fj->items[fj->ii];
		if (fj->ii)
			out_str(is, " ");
		/* The items that do not read the MIME structure skip its
		 * parse (a FLAGS-only FETCH parsed every message's blob). */
		struct mime_blob mb = { 0 };
		bool mb_ok = it->kind != FI_FLAGS && it->kind != FI_UID &&
			     it->kind != FI_INTERNALDATE && it->kind != FI_SIZE &&
			     it->kind != FI_MODSEQ && mime_blob_parse(m->blob, &mb) == 0;
		char date[64];
		switch (it->kind) {
		case FI_FLAGS:
			fj->flags_sent = true;
			out_str(is, "FLAGS ");
			out_flags(is, m->flags, m->keywords);
			break;
		case FI_UID:
			out_num(is, "UID ", m->uid, "");
			break;
		case FI_INTERNALDATE:
			format_date(date, sizeof(date), m->internal_date);
			out_printf(is, "INTERNALDATE \"%s\"", date);
			break;
		case FI_SIZE:
			out_num(is, "RFC822.SIZE ", m->size, "");
			break;
		case FI_MODSEQ:
			out_num(is, "MODSEQ (", m->modseq, ")");
			break;
		case FI_ENVELOPE:
			out_str(is, "ENVELOPE ");
			if (mb_ok)
				out_formatted(is, &mb, 0);
			else
				out_str(is, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
			break;
		case FI_BODY:
		case FI_BODYSTRUCTURE:
			out_str(is, it->kind == FI_BODY ? "BODY " : "BODYSTRUCTURE ");
			if (mb_ok)
				out_formatted(is, &mb, it->kind == FI_BODY ? 1 : 2);
			else
				out_printf(is, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL "
					       "\"7bit\" %" PRIu64 " 0)", m->size);
			break;
		case FI_SECTION:
			if (!fetch_section(is, it, m, &mb, mb_ok))
				continue; /* streaming: item_open */
			break;
		case FI_BINARY:
		case FI_BINARY_SIZE:
			if (!fetch_binary(is, it, m))
				continue; /* scanning or streaming: item_open */
			break;
		}
		fj->ii++;
	}
}

/* The \Seen flags a non-PEEK body fetch sets are stored before the
 * responses are written, so FLAGS in them is already right. */
static void fetch_seen_done(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (is->dead) {
		release(is);
		return;
	}
	if (res < 0)
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-seen-error",
		       "error=%s", strerror(-res));
	view_refresh(is);
	fetch_pump(is);
	release(is);
}

static void fetch_start(struct imap_session *is);

static void cmd_fetch(struct imap_session *is, size_t a)
{
	bool uid = is->uid_cmd;
	if (!set_arg(is, a, uid))
		return;
	struct fetch_job *fj = calloc(1, sizeof(*fj));
	if (!fj || (!is->rbuf && !(is->rbuf = malloc(IMAP_READ_CHUNK)))) {
		free(fj);
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	fj->uid = uid;
	size_t i = a + 1, end;
	if (i >= is->ntoks) {
		free(fj);
		syntax(is, "Syntax: FETCH set items");
		return;
	}
	if (is->toks[i].kind == T_LBEGIN) {
		end = list_end(is, i);
		if (end == i + 2) {
			/* "(" fetch-att *(SP fetch-att) ")": "* 1 FETCH ()" is
			 * no valid response either */
			free(fj);
			syntax(is, "Empty FETCH item list");
			return;
		}
		for (size_t k = i + 1; k + 1 < end; k++)
			if (is->toks[k].kind != T_ATOM || !fetch_item(is, tok_span(is, k), fj)) {
				free(fj);
				syntax(is, "Invalid FETCH item");
				return;
			}
	} else if (is->toks[i].kind == T_ATOM) {
		end = i + 1;
		struct span t = tok_span(is, i);
		bool ok = true;
		if (span_eq_nocase(t, SPAN_LIT("ALL")) || span_eq_nocase(t, SPAN_LIT("FAST")) ||
		    span_eq_nocase(t, SPAN_LIT("FULL"))) {
			ok = fetch_item(is, SPAN_LIT("FLAGS"), fj) &&
			     fetch_item(is, SPAN_LIT("INTERNALDATE"), fj) &&
			     fetch_item(is, SPAN_LIT("RFC822.SIZE"), fj);
			if (!span_eq_nocase(t, SPAN_LIT("FAST")))
				ok = ok && fetch_item(is, SPAN_LIT("ENVELOPE"), fj);
			if (span_eq_nocase(t, SPAN_LIT("FULL")))
				ok = ok && fetch_item(is, SPAN_LIT("BODY"), fj);
		} else {
			ok = fetch_item(is, t, fj);
		}
		if (!ok) {
			free(fj);
			syntax(is, "Invalid FETCH item");
			return;
		}
	} else {
		free(fj);
		syntax(is, "Syntax: FETCH set items");
		return;
	}
	/* RFC 7162 3.1.4, 3.2.6: FETCH modifiers (CHANGEDSINCE n) and, for
	 * UID FETCH after ENABLE QRESYNC, VANISHED (with CHANGEDSINCE). */
	bool vanished = false, since = false;
	if (end < is->ntoks && is->toks[end].kind == T_LBEGIN) {
		size_t e2 = list_end(is, end);
		for (size_t k = end + 1; k + 1 < e2; k++) {
			if (is_atom(is, k, "CHANGEDSINCE") && modseq_arg(is, k + 1, &fj->changedsince)) {
				since = true;
				k++;
			} else if (is_atom(is, k, "VANISHED") && uid && is->qresync) {
				vanished = true;
			} else {
				since = false;
				break;
			}
		}
		if (!since) {
			free(fj);
			syntax(is, "Invalid FETCH modifier");
			return;
		}
		is->condstore = true;
		end = e2;
	}
	if (end != is->ntoks) {
		free(fj);
		syntax(is, "Syntax: FETCH set items");
		return;
	}
	int brc = binary_check(is, fj);
	if (brc) {
		free(fj);
		if (brc == -EPROTONOSUPPORT)
			done(is, "NO", "[UNKNOWN-CTE] Unknown Content-Transfer-Encoding");
		else
			done(is, "NO", "[CANNOT] BINARY is only for parts that are not multipart "
				       "or message");
		return;
	}
	/* UID FETCH always includes UID (RFC 3501 6.4.8). */
	bool has_uid = false;
	for (size_t k = 0; k < fj->nitems; k++) {
		has_uid |= fj->items[k].kind == FI_UID;
		fj->want_flags |= fj->items[k].kind == FI_FLAGS;
		fj->want_modseq |= fj->items[k].kind == FI_MODSEQ;
	}
	if (uid && !has_uid && fj->nitems < IMAP_FETCH_ITEMS_MAX) {
		memmove(&fj->items[1], &fj->items[0], fj->nitems * sizeof(fj->items[0]));
		memset(&fj->items[0], 0, sizeof(fj->items[0]));
		fj->items[0].kind = FI_UID;
		fj->nitems++;
	}
	fj->has_uid = has_uid || uid;
	/* CHANGEDSINCE adds MODSEQ (RFC 7162 3.1.4.1), also CHANGEDSINCE 0
	 * (every message; what a client that saw HIGHESTMODSEQ 0 on an
	 * empty mailbox asks) */
	if (since && !fj->want_modseq && fj->nitems < IMAP_FETCH_ITEMS_MAX) {
		fj->items[fj->nitems].kind = FI_MODSEQ;
		fj->want_modseq = true;
		fj->nitems++;
	}
	is->fj = fj;
	set_busy(is, true);
	if (vanished && !is->set_saved) {
		/* "$" holds no expunged UID (RFC 5182 2.1): nothing vanished.
		 * Otherwise before any FETCH response (RFC 7162 3.2.6). "*" reaches the
		 * last UID given out, not only the last message's: "1:*" after
		 * the last messages were expunged must name them too. */
		struct uidranges want = { 0 };
		struct store_folder_status st;
		store_view_status(is->view, &st);
		uint32_t star = st.uidnext - 1;
		if (is->nmsgs && is->msgs[is->nmsgs - 1].uid > star)
			star = is->msgs[is->nmsgs - 1].uid;
		int rc = set_ranges(is, star, &want)
			       ? out_vanished_earlier(is, fj->changedsince, &want, fetch_start)
			       : -ENOMEM;
		free(want.r);
		if (rc) {
			fetch_free(is);
			store_error(is, rc);
		}
		return;
	}
	fetch_start(is);
}

/* FETCH after its VANISHED (EARLIER): the implicit \Seen first, then the
 * responses. */
static void fetch_start(struct imap_session *is)
{
	struct fetch_job *fj = is->fj;
	if (fj->set_seen && !is->readonly) {
		size_t n = 0;
		/* \Seen as it is now, not as the client last heard: another
		 * session may have cleared it since. No message changed since
		 * the view (every change moves HIGHESTMODSEQ or UIDNEXT): the
		 * same flags, and no copy of the folder's whole message table
		 * for each non-PEEK FETCH. */
		struct store_folder_status now, had;
		store_folder_status(is->folder, &now);
		store_view_status(is->view, &had);
		if (now.highestmodseq != had.highestmodseq || now.uidnext != had.uidnext ||
		    now.messages != had.messages)
			view_refresh(is);
		free(is->uids2);
		is->uids2 = malloc((is->nuids + 1) * sizeof(uint32_t));
		if (is->uids2)
			for (size_t k = 0; k < is->nuids; k++) {
				ssize_t j = msgs_find(is, is->uids[k]);
				const struct store_msg *m = j >= 0 ? msg_of(is, (size_t)j) : NULL;
				if (m && !(m->flags & STORE_F_SEEN))
					is->uids2[n++] = is->uids[k];
			}
		if (n) {
			hold(is);
			store_flags(is->folder, stream_loop(is->s), is->uids2, n, STORE_FLAGS_ADD,
				    STORE_F_SEEN, NULL, 0, fetch_seen_done, is);
			return;
		}
	}
	fetch_pump(is);
}

/* ---- STORE ----------------------------------------------------------------------------------- */

/* The keyword bits of the .SILENT STORE's names in the current view;
 * false when they are not known (every message is then reported). */
static bool store_kw_mask(struct imap_session *is, uint64_t *mask_r)
{
	uint64_t mask = 0;
	const char *name = is->store_kw;
	if (!name && is->store_nkw)
		return false;
	for (size_t k = 0; k < is->store_nkw; k++, name += strlen(name) + 1) {
		unsigned b;
		for (b = 0; b < 64; b++) {
			const char *have = store_view_keyword(is->view, b);
			if (have && strcasecmp(have, name) == 0)
				break;
		}
		if (b == 64)
			return false;
		mask |= 1ull << b;
	}
	*mask_r = mask;
	return true;
}

static void flags_done_cb(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (is->dead) {
		free(is->store_kw);
		is->store_kw = NULL;
		release(is);
		return;
	}
	if (res < 0) {
		free(is->store_kw);
		is->store_kw = NULL;
		store_error(is, res);
		release(is);
		return;
	}
	view_refresh(is);
	/* RFC 3501 6.4.6: "Regardless of whether or not the .SILENT suffix
	 * was used, the server SHOULD send an untagged FETCH response if a
	 * change to a message's flags from an external source is observed."
	 * msgs[] is about to take the stored result as known: where it is not
	 * what the client computes from what it knew and its own change
	 * (another session changed the message before or right after), FLAGS
	 * is sent, or the client would never learn that change. */
	uint64_t kwmask = 0;
	bool kw_known = !is->store_silent || store_kw_mask(is, &kwmask);
	free(is->store_kw);
	is->store_kw = NULL;
	/* .SILENT leaves FLAGS out, but a CONDSTORE client still gets each
	 * changed message's new MODSEQ (RFC 7162 3.1.3: "An untagged FETCH
	 * response MUST be sent, even if the .SILENT suffix is specified"),
	 * or its cache would keep an old one and resync it for nothing. */
	for (size_t k = 0; k < is->nuids; k++) {
		ssize_t i = msgs_find(is, is->uids[k]);
		if (i < 0)
			continue;
		const struct store_msg *m = msg_of(is, (size_t)i);
		if (!m)
			continue;
		/* Non-silent: FLAGS for each message whose flags (or MODSEQ)
		 * are not what the client knew, i.e. the STORE or another
		 * session changed it. A message the STORE left as it was gets
		 * nothing, as in Dovecot (RFC 3501 6.4.6: STORE "normally"
		 * returns the updated value; nothing was updated). */
		bool say_flags = !is->store_silent
			? m->flags != is->msgs[i].flags || m->keywords != is->msgs[i].kw ||
			  m->modseq != is->msgs[i].modseq
			: !kw_known;
		if (is->store_silent && !say_flags) {
			uint32_t ef = is->msgs[i].flags;
			uint64_t ek = is->msgs[i].kw;
			if (is->store_op == STORE_FLAGS_SET) {
				ef = is->store_sflags;
				ek = kwmask;
			} else if (is->store_op == STORE_FLAGS_ADD) {
				ef |= is->store_sflags;
				ek |= kwmask;
			} else {
				ef &= ~is->store_sflags;
				ek &= ~kwmask;
			}
			say_flags = m->flags != ef || m->keywords != ek;
		}
		bool say = say_flags || (is->condstore && m->modseq != is->msgs[i].modseq);
		if (say && out_full(is))
			break; /* done()'s sync reports the rest as the socket drains */
		if (say) {
			out_num(is, "* ", (uint64_t)i + 1, " FETCH (");
			/* UID for UID STORE, and for any STORE once CONDSTORE is
			 * on (RFC 7162 3.1: "both UID and mod-sequence data") */
			if (is->uid_cmd || is->condstore)
				out_num(is, "UID ", m->uid, " ");
			if (say_flags) {
				out_str(is, "FLAGS ");
				out_flags(is, m->flags, m->keywords);
			}
			if (is->condstore)
				out_printf(is, "%sMODSEQ (%" PRIu64 ")", say_flags ? " " : "",
					   m->modseq);
			out_str(is, ")\r\n");
		}
		is->msgs[i].flags = m->flags;
		is->msgs[i].kw = m->keywords;
		is->msgs[i].modseq = m->modseq;
	}
	size_t nm = is->uids2 ? is->uids2[0] : 0;
	if (nm) {
		/* UNCHANGEDSINCE (RFC 7162 3.1.3): the messages left alone. */
		char code[4096];
		size_t cl = 0;
		for (size_t k = 1; k <= nm && cl + 16 < sizeof(code); k++) {
			ssize_t i = msgs_find(is, is->uids2[k]);
			uint32_t n = is->uid_cmd ? is->uids2[k] : (uint32_t)(i + 1);
			cl += (size_t)snprintf(code + cl, sizeof(code) - cl, "%s%" PRIu32,
					       k > 1 ? "," : "", n);
		}
		code[cl] = '\0';
		done(is, "OK", "[MODIFIED %s] Conditional STORE failed", code);
		release(is);
		return;
	}
	done(is, "OK", "%sSTORE completed", is->uid_cmd ? "UID " : "");
	release(is);
}

static void cmd_store(struct imap_session *is, size_t a)
{
	if (is->readonly) {
		done(is, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	if (!set_arg(is, a, is->uid_cmd))
		return;
	size_t i = a + 1;
	uint64_t unchangedsince = 0;
	bool has_unchanged = false;
	if (i < is->ntoks && is->toks[i].kind == T_LBEGIN) {
		size_t e = list_end(is, i);
		if (e - i != 4 || !is_atom(is, i + 1, "UNCHANGEDSINCE")) {
			syntax(is, "Invalid STORE modifier");
			return;
		}
		struct span v = tok_span(is, i + 2);
		for (size_t k = 0; k < v.len; k++) {
			if (v.p[k] < '0' || v.p[k] > '9' || k > 18) {
				syntax(is, "Invalid UNCHANGEDSINCE");
				return;
			}
			unchangedsince = unchangedsince * 10 + (uint64_t)(v.p[k] - '0');
		}
		has_unchanged = true;
		is->condstore = true;
		i = e;
	}
	if (i >= is->ntoks || is->toks[i].kind != T_ATOM) {
		syntax(is, "Syntax: STORE set item flags");
		return;
	}
	struct span item = tok_span(is, i);
	enum store_flags_op op = STORE_FLAGS_SET;
	if (item.len && item.p[0] == '+') {
		op = STORE_FLAGS_ADD;
		item = span_skip(item, 1);
	} else if (item.len && item.p[0] == '-') {
		op = STORE_FLAGS_REMOVE;
		item = span_skip(item, 1);
	}
	bool silent = false;
	if (span_eq_nocase(item, SPAN_LIT("FLAGS.SILENT")))
		silent = true;
	else if (!span_eq_nocase(item, SPAN_LIT("FLAGS"))) {
		syntax(is, "Syntax: STORE set [+-]FLAGS[.SILENT] flags");
		return;
	}
	i++;
	uint32_t flags;
	const char *kw[STORE_KEYWORDS_MAX];
	size_t nkw;
	if (i >= is->ntoks) {
		/* no flag list at all: BAD (this used to return without a
		 * reply, and the client waited for one forever) */
		syntax(is, "Syntax: STORE set [+-]FLAGS[.SILENT] flags");
		return;
	}
	if (!flags_arg(is, &i, &flags, kw, &nkw))
		return;
	if (i != is->ntoks) {
		syntax(is, "Syntax: STORE set [+-]FLAGS[.SILENT] flags");
		return;
	}
	/* UNCHANGEDSINCE: messages changed since are left alone and named in
	 * [MODIFIED]; uids2[0] is their count. */
	free(is->uids2);
	is->uids2 = calloc(is->nuids + 1, sizeof(uint32_t));
	if (!is->uids2) {
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	if (has_unchanged) {
		size_t w = 0;
		for (size_t k = 0; k < is->nuids; k++) {
			ssize_t j = msgs_find(is, is->uids[k]);
			const struct store_msg *m = j >= 0 ? msg_of(is, (size_t)j) : NULL;
			if (m && m->modseq > unchangedsince)
				is->uids2[1 + is->uids2[0]++] = is->uids[k];
			else
				is->uids[w++] = is->uids[k];
		}
		is->nuids = w;
	}
	is->store_silent = silent;
	is->store_op = (uint8_t)op;
	is->store_sflags = flags;
	is->store_nkw = silent ? nkw : 0;
	free(is->store_kw);
	is->store_kw = NULL;
	if (silent && nkw) {
		size_t total = 0;
		for (size_t k = 0; k < nkw; k++)
			total += strlen(kw[k]) + 1;
		if ((is->store_kw = malloc(total))) {
			char *q = is->store_kw;
			for (size_t k = 0; k < nkw; k++)
				q = stpcpy(q, kw[k]) + 1;
		}
	}
	set_busy(is, true);
	hold(is);
	store_flags(is->folder, stream_loop(is->s), is->uids, is->nuids, op, flags, kw, nkw,
		    flags_done_cb, is);
}

/* ---- COPY / MOVE ------------------------------------------------------------------------------ */

static void copy_undone(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (res < 0 && !is->dead)
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-undo-error",
		       "user=%s error=%s", is->user, strerror(-res));
	store_folder_close(&is->other);
	/* undo_err is APPEND's too: left set, it refused the next APPEND */
	int err = is->undo_err;
	is->undo_err = 0;
	if (!is->dead)
		store_error(is, err);
	release(is);
}

static void copy_done(void *arg, int res)
{
	struct imap_session *is = arg;
	if (is->dead && res == 0) {
		store_folder_close(&is->other);
		release(is);
		return;
	}
	bool move = is->cmd && strcasecmp(is->cmd->name, "MOVE") == 0;
	if (res < 0) {
		/* RFC 3501 6.4.7: a failed COPY leaves the destination as it
		 * was. The copies made before the error (over quota half way,
		 * or a COPY/MOVE whose source another session deleted meanwhile)
		 * are expunged before the reply, also when the client has
		 * gone: it will never learn about them. */
		size_t n = 0;
		for (size_t k = 0; k < is->nuids; k++)
			if (is->uids2[k])
				is->uids2[n++] = is->uids2[k];
		if (n) {
			is->undo_err = res;
			store_expunge(is->other, is->loop, is->uids2, n, copy_undone, is);
			return; /* the hold is passed on */
		}
		store_folder_close(&is->other);
		if (!is->dead)
			store_error(is, res);
		release(is);
		return;
	}
	struct store_folder_status st;
	store_folder_status(is->other, &st);
	store_folder_close(&is->other);
	/* COPYUID: the source UIDs that were copied and their new UIDs. */
	size_t n = 0;
	for (size_t k = 0; k < is->nuids; k++)
		if (is->uids2[k]) {
			is->uids[n] = is->uids[k];
			is->uids2[n++] = is->uids2[k];
		}
	char code[64];
	snprintf(code, sizeof(code), "COPYUID %" PRIu32 " ", st.uidvalidity);
	if (move) {
		/* nothing moved (every message was expunged by another session
		 * meanwhile): no COPYUID, whose UID sets cannot be empty */
		if (n) {
			out_printf(is, "* OK [%s", code);
			out_uidset(is, is->uids, n);
			out_str(is, " ");
			out_uidset(is, is->uids2, n);
			out_str(is, "] Moved\r\n");
		}
		/* its EXPUNGEs (or VANISHED) wait for the socket if need be */
		done(is, "OK", "%sMOVE completed", is->uid_cmd ? "UID " : "");
		release(is);
		return;
	}
	if (n == 0) {
		done(is, "OK", "%sCOPY completed", is->uid_cmd ? "UID " : "");
		release(is);
		return;
	}
	/* The tagged reply carries the code: build it in the output buffer
	 * as a whole line. */
	if (is->cmd && !is->uid_cmd)
		sync_mailbox(is, true);
	out_printf(is, "%s OK [%s", is->tag, code);
	out_uidset(is, is->uids, n);
	out_str(is, " ");
	out_uidset(is, is->uids2, n);
	out_printf(is, "] %sCOPY completed\r\n", is->uid_cmd ? "UID " : "");
	out_flush(is);
	cmd_end(is);
	release(is);
}

/* Copies (or moves) is->uids from the selected mailbox to is->other, which
 * copy_done closes; the caller's hold is passed on to copy_done. */
static void copy_start(struct imap_session *is, bool move)
{
	free(is->uids2);
	is->uids2 = calloc(is->nuids + 1, sizeof(uint32_t));
	if (!is->uids2) {
		store_folder_close(&is->other);
		store_error(is, -ENOMEM);
		release(is);
		return;
	}
	store_copy(is->folder, stream_loop(is->s), is->uids, is->nuids, is->other, move,
		   is->uids2, copy_done, is);
}

static void copy_opened(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (gone_after_open(is, folder))
		return;
	if (res < 0) {
		if (res == -ENOENT)
			done(is, "NO", "[TRYCREATE] No such mailbox");
		else
			store_error(is, res);
		release(is);
		return;
	}
	is->other = folder;
	/* a source another session deleted is the store's -ESTALE, for COPY
	 * as for MOVE (store_error: NO [NONEXISTENT]) */
	copy_start(is, is->cmd && strcasecmp(is->cmd->name, "MOVE") == 0);
}

static void cmd_copy(struct imap_session *is, size_t a)
{
	char name[STORE_NAME_MAX + 1];
	if (!set_arg(is, a, is->uid_cmd))
		return;
	if (!mailbox_arg(is, a + 1, name, sizeof(name)))
		return;
	if (a + 2 != is->ntoks) {
		syntax(is, "Syntax: COPY set mailbox");
		return;
	}
	bool move = strcasecmp(is->cmd->name, "MOVE") == 0;
	if (move && is->readonly) {
		done(is, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	if (is->nuids == 0) {
		done(is, "OK", "%s%s completed", is->uid_cmd ? "UID " : "", move ? "MOVE" : "COPY");
		return;
	}
	set_busy(is, true);
	hold(is);
	store_folder_open(is->su, stream_loop(is->s), name, copy_opened, is);
}

/* ---- SEARCH ----------------------------------------------------------------------------------- */

/* The program lives in proto/imap_search.c (pure: parse, evaluate, scan).
 * Here it runs as a job over msgs[]: keys the index and the structure
 * blob answer are evaluated at once; a message whose answer needs its
 * bytes (BODY, TEXT, a HEADER field the blob does not keep) is read with
 * store_read() into rbuf, one bounded piece per completion, and fed to
 * the scanner, which stops as soon as the answer is known. The session is
 * busy meanwhile (input paused, msgs[] and the view unchanged, no EXPUNGE
 * announced: SYNC_NOEXPUNGE). */

/* Messages evaluated without reading before the job yields to the ring. */
#define IMAP_SEARCH_STEP_MSGS 256
/* Bytes times byte keys matched per read: the read shrinks as the number
 * of BODY/TEXT/HEADER keys grows, so one completion's work stays bounded. */
#define IMAP_SEARCH_STEP_WORK (1024u * 1024u)
#define IMAP_SEARCH_READ_MIN (4u * 1024u)

#define search_container_of(p, T, m) ((T *)(void *)((char *)(p) - offsetof(T, m)))

struct search_job {
	struct imap_session *is;
	struct loop_cb yield_cb;     /* a NOP through the ring: other connections run */
	struct imap_search prog;
	struct imap_search_scan scan;
	struct imap_search_msg msg;  /* msgs[mi] while scanning */
	struct mime_blob mb;
	uint32_t *fail;
	uint32_t *hits;
	size_t nh, mi;
	size_t si;                   /* saved_has() walk over "$" */
	size_t read_len;
	bool need_blob, scanning;
	uint64_t maxmodseq;
	/* SORT and THREAD: hits[] holds sequence numbers; once the search is
	 * over, each hit's keys (ncrit per hit: numbers, or a string's offset
	 * << 16 | length in the arena) are made, a few hundred per turn. */
	uint8_t mode;                /* SJ_SEARCH, SJ_SORT, SJ_THREAD, SJ_THREAD_REFS */
	bool keying;
	struct imap_sort_crit crit[IMAP_SORT_CRIT_MAX];
	size_t ncrit, ki;
	uint64_t *keys;
	uint8_t *arena;
	size_t alen, acap;
	/* THREAD=REFERENCES: per hit its IDs and subject; refs[] holds the
	 * References of every hit (read from its header), in turn */
	struct imap_thread_msg *tm;
	uint64_t *refs;
	size_t nrefs, refs_cap;
	uint64_t irt;                /* the hit's In-Reply-To, while its header is read */
};

enum { SJ_SEARCH, SJ_SORT, SJ_THREAD, SJ_THREAD_REFS };

static void search_step(struct imap_session *is);
static void sort_step(struct imap_session *is);

/* A date-only argument (APPEND's date-time uses it too). */
static int64_t parse_day(struct span s) { return imap_search_parse_day(s); }

static void search_free(struct imap_session *is)
{
	if (!is->sj)
		return;
	free(is->sj->fail);
	free(is->sj->hits);
	free(is->sj->keys);
	free(is->sj->arena);
	free(is->sj->tm);
	free(is->sj->refs);
	free(is->sj);
	is->sj = NULL;
}

static void search_hit(struct search_job *sj, bool yes)
{
	struct imap_session *is = sj->is;
	if (yes) {
		sj->hits[sj->nh++] = is->uid_cmd && sj->mode == SJ_SEARCH ? sj->msg.uid : sj->msg.seq;
		if (sj->msg.modseq > sj->maxmodseq)
			sj->maxmodseq = sj->msg.modseq;
	}
	sj->scanning = false;
	sj->mi++;
}

/* The end of the SEARCH/ESEARCH line (after the hits) and the tagged
 * reply. */
static void search_end(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	if (sj->nh && sj->prog.modseq)
		out_printf(is, sj->prog.esearch ? " MODSEQ %" PRIu64 : " (MODSEQ %" PRIu64 ")",
			   sj->maxmodseq);
	out_str(is, "\r\n");
	search_free(is);
	done(is, "OK", "%sSEARCH completed", is->uid_cmd ? "UID " : "");
}

/* RETURN (SAVE): "$" becomes the UIDs of the hits, or only of MIN and MAX
 * when those are the only other options (RFC 5182 2.4). false: out of
 * memory ("$" is empty then). */
static bool search_save(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	unsigned ret = sj->prog.ret;
	size_t nh = sj->nh, n = 0;
	uint32_t pick[2];
	const uint32_t *from = sj->hits;
	if (!(ret & (IMAP_SEARCH_RET_ALL | IMAP_SEARCH_RET_COUNT)) &&
	    (ret & (IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX)) && nh) {
		if (ret & IMAP_SEARCH_RET_MIN)
			pick[n++] = sj->hits[0];
		if ((ret & IMAP_SEARCH_RET_MAX) && (!n || sj->hits[nh - 1] != pick[0]))
			pick[n++] = sj->hits[nh - 1];
		from = pick;
		nh = n;
	}
	if (is->uid_cmd)
		return saved_set(is, from, nh);
	/* sequence numbers: msgs[] is unchanged during the search */
	uint32_t *uids = malloc((nh + 1) * sizeof(*uids));
	if (!uids) {
		saved_reset(is);
		return false;
	}
	for (size_t k = 0; k < nh; k++)
		uids[k] = is->msgs[from[k] - 1].uid;
	bool ok = saved_set(is, uids, nh);
	free(uids);
	return ok;
}

static void search_finish(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	const struct imap_search *p = &sj->prog;
	const uint32_t *hits = sj->hits;
	size_t nh = sj->nh;
	if ((p->ret & IMAP_SEARCH_RET_SAVE) && !search_save(is)) {
		search_free(is);
		done(is, "NO", "[NOTSAVED] Out of memory, the result is not saved");
		return;
	}
	if (p->esearch && !(p->ret & ~IMAP_SEARCH_RET_SAVE)) {
		/* SAVE alone: no ESEARCH response (RFC 5182 1) */
		search_free(is);
		done(is, "OK", "%sSEARCH completed, result saved", is->uid_cmd ? "UID " : "");
		return;
	}
	/* The list of hits is written in pieces (out_list): it can be far
	 * larger than limits.send_queue_max. */
	if (p->esearch) {
		out_printf(is, "* ESEARCH (TAG \"%s\")%s", is->tag, is->uid_cmd ? " UID" : "");
		if (nh && (p->ret & IMAP_SEARCH_RET_MIN))
			out_printf(is, " MIN %" PRIu32, hits[0]);
		if (nh && (p->ret & IMAP_SEARCH_RET_MAX))
			out_printf(is, " MAX %" PRIu32, hits[nh - 1]);
		if (p->ret & IMAP_SEARCH_RET_COUNT)
			out_printf(is, " COUNT %zu", nh);
		if (nh && (p->ret & IMAP_SEARCH_RET_ALL)) {
			out_str(is, " ALL ");
			out_list_start(is, hits, true, NULL, nh, NULL, search_end);
			return;
		}
	} else {
		out_str(is, "* SEARCH");
		out_list_start(is, hits, false, NULL, nh, NULL, search_end);
		return;
	}
	search_end(is);
}

static void search_yield_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	struct search_job *sj = search_container_of(cb, struct search_job, yield_cb);
	struct imap_session *is = sj->is;
	(void)loop;
	(void)res;
	(void)flags;
	if (!is->dead)
		search_step(is);
	release(is);
}

static void search_read_done(void *arg, ssize_t res)
{
	struct imap_session *is = arg;
	struct search_job *sj = is->sj;
	is->rd_inflight--;
	if (is->dead || !sj) {
		release(is);
		return;
	}
	if (res == -ENOENT || res == 0) {
		/* Expunged meanwhile (or shorter than its record says): it does
		 * not match, as it may not (RFC 3501 7.4.1 allows either). */
		search_hit(sj, false);
	} else if (res < 0) {
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-read-error",
		       "uid=%" PRIu32 " error=%s", sj->msg.uid, strerror((int)-res));
		if (sj->prog.ret & IMAP_SEARCH_RET_SAVE)
			saved_reset(is); /* a SAVE that fails empties "$" (RFC 5182 2.1) */
		search_free(is);
		done(is, "NO", "[UNAVAILABLE] Could not read a message; try again");
		release(is);
		return;
	} else {
		imap_search_scan_feed(&sj->scan, span_make(is->rbuf, (size_t)res));
		int r = imap_search_scan_result(&sj->scan, &sj->msg);
		if (r != IMAP_SEARCH_MAYBE)
			search_hit(sj, r == IMAP_SEARCH_YES);
	}
	search_step(is);
	release(is);
}

/* Evaluates messages from mi on, at most IMAP_SEARCH_STEP_MSGS of them
 * without a read, and returns when a read or a yield is in flight or the
 * search is answered. */
static void search_step(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	unsigned budget = IMAP_SEARCH_STEP_MSGS;
	if (sj->keying) {
		sort_step(is);
		return;
	}
	while (!is->dead && is->state != IMAP_S_LOGOUT) {
		if (sj->scanning) {
			uint64_t off, len;
			if (!imap_search_scan_next(&sj->scan, &off, &len)) {
				int r = imap_search_scan_result(&sj->scan, &sj->msg);
				search_hit(sj, r == IMAP_SEARCH_YES);
				continue;
			}
			if (len > sj->read_len)
				len = sj->read_len;
			hold(is);
			is->rd_inflight++;
			store_read(is->folder, is->loop, sj->msg.uid, off, is->rbuf, (size_t)len,
				   search_read_done, is);
			return;
		}
		if (sj->mi >= is->nmsgs) {
			if (sj->mode == SJ_SEARCH) {
				search_finish(is);
			} else {
				sj->keying = true;
				sort_step(is);
			}
			return;
		}
		if (budget-- == 0) {
			hold(is);
			io_uring_prep_nop(loop_sqe(is->loop, &sj->yield_cb));
			return;
		}
		const struct store_msg *m = msg_of(is, sj->mi);
		if (!m) { /* expunged, not announced yet: not a hit */
			sj->mi++;
			continue;
		}
		sj->msg = (struct imap_search_msg){
			.seq = (uint32_t)(sj->mi + 1),
			.uid = m->uid,
			.star_seq = (uint32_t)is->nmsgs,
			.star_uid = is->msgs[is->nmsgs - 1].uid,
			.flags = m->flags,
			.keywords = m->keywords,
			.modseq = m->modseq,
			.size = m->size,
			.internal_date = m->internal_date,
			.saved = sj->prog.uses_saved && saved_has(is, &sj->si, m->uid),
		};
		if (sj->need_blob && mime_blob_parse(m->blob, &sj->mb) == 0)
			sj->msg.mb = &sj->mb;
		int r = imap_search_eval(&sj->prog, &sj->msg, NULL);
		if (r == IMAP_SEARCH_MAYBE) {
			imap_search_scan_begin(&sj->scan, &sj->prog, &sj->msg);
			sj->scanning = true;
			continue;
		}
		search_hit(sj, r == IMAP_SEARCH_YES);
	}
}

/* The command's tokens from i on as the search program's. */
static void search_tokens(struct imap_session *is, size_t i, struct imap_search_tok *t)
{
	static const uint8_t kinds[] = { [T_ATOM] = IMAP_STOK_ATOM, [T_NIL] = IMAP_STOK_NIL,
					 [T_STRING] = IMAP_STOK_STRING,
					 [T_LBEGIN] = IMAP_STOK_LBEGIN, [T_LEND] = IMAP_STOK_LEND };
	for (; i < is->ntoks; i++, t++) {
		t->kind = kinds[is->toks[i].kind];
		t->text = is->toks[i].kind == T_NIL ? SPAN_LIT("NIL") : tok_span(is, i);
	}
}

/* Parses the program t[0..n) (t is freed) and runs the job sj. */
static void search_run(struct imap_session *is, struct search_job *sj, struct imap_search_tok *t,
		       size_t n)
{
	sj->is = is;
	sj->yield_cb.fn = search_yield_done;
	/* The program's strings point into the arena (valid until done()). */
	int rc = imap_search_parse(&sj->prog, t, n);
	free(t);
	if (rc != IMAP_SEARCH_OK) {
		const char *err = sj->prog.err;
		bool save = sj->prog.ret & IMAP_SEARCH_RET_SAVE;
		free(sj);
		if (rc == IMAP_SEARCH_BADCHARSET && save)
			saved_reset(is); /* NO to a SAVE empties "$"; BAD keeps it */
		if (rc == IMAP_SEARCH_BADCHARSET)
			done(is, "NO", "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
		else
			syntax(is, err ? err : "Invalid search criteria");
		return;
	}
	struct imap_search *p = &sj->prog;
	if (!p->esearch && is->rev2 && sj->mode == SJ_SEARCH) {
		/* RFC 9051 6.4.4: no SEARCH response; RETURN () means ALL */
		p->esearch = true;
		p->ret = IMAP_SEARCH_RET_ALL;
	}
	if (p->modseq)
		is->condstore = true;
	sj->fail = p->fail_len ? malloc(p->fail_len * sizeof(uint32_t)) : NULL;
	sj->hits = malloc((is->nmsgs + 1) * sizeof(uint32_t));
	if ((p->fail_len && !sj->fail) || !sj->hits ||
	    (!is->rbuf && !(is->rbuf = malloc(IMAP_READ_CHUNK)))) {
		if (p->ret & IMAP_SEARCH_RET_SAVE)
			saved_reset(is);
		free(sj->fail);
		free(sj->hits);
		free(sj);
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	imap_search_prepare(p, sj->fail);
	for (size_t k = 0; k < p->n; k++) {
		struct imap_search_key *key = &p->keys[k];
		if (key->kind == ISK_KEYWORD)
			for (unsigned b = 0; b < 64; b++) {
				const char *name = store_view_keyword(is->view, b);
				if (name && span_eq_nocase(span_cstr(name), key->name))
					key->num |= 1ull << b;
			}
		sj->need_blob |= key->kind == ISK_HEADER || key->kind == ISK_BODY ||
				 key->kind == ISK_TEXT || key->kind == ISK_SENTBEFORE ||
				 key->kind == ISK_SENTON || key->kind == ISK_SENTSINCE;
	}
	size_t per = IMAP_SEARCH_STEP_WORK / (p->nbytekeys ? p->nbytekeys : 1);
	sj->read_len = per > IMAP_READ_CHUNK ? IMAP_READ_CHUNK
		     : per < IMAP_SEARCH_READ_MIN ? IMAP_SEARCH_READ_MIN : per;
	is->sj = sj;
	set_busy(is, true);
	search_step(is);
}

static void cmd_search(struct imap_session *is, size_t a)
{
	struct search_job *sj = calloc(1, sizeof(*sj));
	struct imap_search_tok *t = malloc((is->ntoks - a + 1) * sizeof(*t));
	if (!sj || !t) {
		free(sj);
		free(t);
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	search_tokens(is, a, t);
	search_run(is, sj, t, is->ntoks - a);
}

/* ---- SORT and THREAD (RFC 5256, RFC 5957) ------------------------------------------------ */

/* The search runs as SEARCH's does (hits[] are sequence numbers); then
 * sort_step() makes every hit's keys from the structure blob, a few
 * hundred messages per turn of the loop, and sorts them. The keys of
 * proto/imap_sort.c. */

#define IMAP_SORT_STEP_MSGS 256

static int sort_cmp(const void *x, const void *y, void *arg)
{
	const struct search_job *sj = arg;
	uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
	const uint64_t *a = sj->keys + (size_t)i * sj->ncrit, *b = sj->keys + (size_t)j * sj->ncrit;
	for (size_t c = 0; c < sj->ncrit; c++) {
		int r;
		if (imap_sort_key_is_string(sj->crit[c].key)) {
			size_t la = a[c] & 0xffff, lb = b[c] & 0xffff;
			r = memcmp(sj->arena + (a[c] >> 16), sj->arena + (b[c] >> 16),
				   la < lb ? la : lb);
			if (r == 0)
				r = (la > lb) - (la < lb);
		} else {
			r = (a[c] > b[c]) - (a[c] < b[c]);
		}
		if (r)
			return sj->crit[c].reverse ? -r : r;
	}
	/* equal keys: the order in the mailbox (RFC 5256 3) */
	return (sj->hits[i] > sj->hits[j]) - (sj->hits[i] < sj->hits[j]);
}

/* Whether hits i and j have the same base subject (THREAD: key 0). */
static bool sort_same_subject(const struct search_job *sj, uint32_t i, uint32_t j)
{
	uint64_t a = sj->keys[(size_t)i * sj->ncrit], b = sj->keys[(size_t)j * sj->ncrit];
	return (a & 0xffff) == (b & 0xffff) &&
	       memcmp(sj->arena + (a >> 16), sj->arena + (b >> 16), a & 0xffff) == 0;
}

static uint32_t sort_number(const struct imap_session *is, uint32_t seq)
{
	return is->uid_cmd ? is->msgs[seq - 1].uid : seq;
}

static void sort_end(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	if (sj->mode == SJ_SORT && sj->nh && sj->prog.modseq)
		out_printf(is, " (MODSEQ %" PRIu64 ")", sj->maxmodseq);
	out_str(is, "\r\n");
	const char *verb = sj->mode == SJ_SORT ? "SORT" : "THREAD";
	search_free(is);
	done(is, "OK", "%s%s completed", is->uid_cmd ? "UID " : "", verb);
}

/* THREAD=ORDEREDSUBJECT (RFC 5256 3): the hits sorted by base subject and
 * sent date; each run of one subject is a thread whose first message is
 * the parent of all the others; threads in the order of their first
 * message's sent date. Writes "(1 (2)(3))(4 5)(6)" as text. */
struct thread_run {
	uint32_t pos, len;  /* order[pos..pos+len): one base subject */
	uint32_t root;      /* order[pos]: the hit that is the parent */
};

static int thread_cmp(const void *x, const void *y, void *arg)
{
	const struct search_job *sj = arg;
	uint32_t i = ((const struct thread_run *)x)->root, j = ((const struct thread_run *)y)->root;
	/* key 1 is the sent date */
	uint64_t a = sj->keys[(size_t)i * sj->ncrit + 1], b = sj->keys[(size_t)j * sj->ncrit + 1];
	if (a != b)
		return (a > b) - (a < b);
	return (sj->hits[i] > sj->hits[j]) - (sj->hits[i] < sj->hits[j]);
}

/* THREAD=ORDEREDSUBJECT (RFC 5256 3): order[] is the hits sorted by base
 * subject and sent date; each run of one subject is a thread whose first
 * message is the parent of all the others, and the threads go in the
 * order of their first message's sent date. Returns the text
 * "(1 (2)(3))(4 5)(6)" (malloc'd, *len_r bytes), NULL when out of
 * memory. */
static char *thread_text(struct imap_session *is, const uint32_t *order, size_t *len_r)
{
	struct search_job *sj = is->sj;
	struct thread_run *runs = malloc((sj->nh + 1) * sizeof(*runs));
	size_t cap = sj->nh * 16 + 1, w = 0;
	char *txt = malloc(cap);
	if (!runs || !txt) {
		free(runs);
		free(txt);
		return NULL;
	}
	size_t nr = 0;
	for (size_t i = 0; i < sj->nh; i++) {
		if (i == 0 || !sort_same_subject(sj, order[i - 1], order[i]))
			runs[nr++] = (struct thread_run){ .pos = (uint32_t)i, .root = order[i] };
		runs[nr - 1].len++;
	}
	qsort_r(runs, nr, sizeof(*runs), thread_cmp, sj);
	/* at most 10 digits and 3 more bytes per message: cap is enough */
	for (size_t r = 0; r < nr; r++) {
		const uint32_t *m = order + runs[r].pos;
		size_t n = runs[r].len;
		w += (size_t)snprintf(txt + w, cap - w, "(%" PRIu32, sort_number(is, sj->hits[m[0]]));
		if (n == 2)
			w += (size_t)snprintf(txt + w, cap - w, " %" PRIu32,
					      sort_number(is, sj->hits[m[1]]));
		for (size_t k = 1; n > 2 && k < n; k++)
			w += (size_t)snprintf(txt + w, cap - w, "%s(%" PRIu32 ")", k == 1 ? " " : "",
					      sort_number(is, sj->hits[m[k]]));
		txt[w++] = ')';
	}
	free(runs);
	*len_r = w;
	return txt;
}

/* References kept per message: the last ones (nearest the message)
 * when there are more. */
#define IMAP_THREAD_REFS_MAX 64

static void id_count(void *arg, struct span id)
{
	(void)id;
	++*(size_t *)arg;
}

struct refs_add {
	struct search_job *sj;
	size_t skip;
};

/* Room in refs[] for one more message's references. false: out of
 * memory. */
static bool refs_reserve(struct search_job *sj)
{
	if (sj->refs_cap - sj->nrefs >= IMAP_THREAD_REFS_MAX)
		return true;
	size_t cap = sj->refs_cap ? sj->refs_cap * 2 : 1024;
	uint64_t *r = realloc(sj->refs, cap * sizeof(*r));
	if (!r)
		return false;
	sj->refs = r;
	sj->refs_cap = cap;
	return true;
}

static void id_add(void *arg, struct span id)
{
	struct refs_add *ra = arg;
	if (ra->skip) {
		ra->skip--;
		return;
	}
	ra->sj->refs[ra->sj->nrefs++] = imap_thread_id(id);
}

/* Adds the message IDs of v to refs[] as the current hit's references
 * (the last IMAP_THREAD_REFS_MAX). false: out of memory. */
static bool thread_add_refs(struct search_job *sj, struct span v)
{
	size_t n = 0;
	imap_thread_ids(v, SIZE_MAX, id_count, &n);
	if (!refs_reserve(sj))
		return false;
	struct imap_thread_msg *t = &sj->tm[sj->ki];
	struct refs_add ra = { .sj = sj, .skip = n > IMAP_THREAD_REFS_MAX ? n - IMAP_THREAD_REFS_MAX : 0 };
	t->ref_off = (uint32_t)sj->nrefs;
	imap_thread_ids(v, SIZE_MAX, id_add, &ra);
	t->ref_n = (uint32_t)(sj->nrefs - t->ref_off);
	return true;
}

/* The References field's value in a header (folded lines and all), or
 * an empty span. */
static struct span header_references(struct span h)
{
	for (size_t i = 0; i < h.len;) {
		const uint8_t *lf = memchr(h.p + i, '\n', h.len - i);
		size_t end = lf ? (size_t)(lf - h.p) + 1 : h.len;
		if (end - i > 11 && span_eq_nocase(span_make(h.p + i, 11), SPAN_LIT("References:"))) {
			size_t e = end;
			while (e < h.len && (h.p[e] == ' ' || h.p[e] == '\t')) {
				lf = memchr(h.p + e, '\n', h.len - e);
				e = lf ? (size_t)(lf - h.p) + 1 : h.len;
			}
			return span_make(h.p + i + 11, e - i - 11);
		}
		if (end - i <= 2 && (h.p[i] == '\r' || h.p[i] == '\n'))
			break; /* the empty line: end of the header */
		i = end;
	}
	return span_make(NULL, 0);
}

static void thread_first_id(void *arg, struct span id)
{
	*(uint64_t *)arg = imap_thread_id(id);
}

static void thread_read_done(void *arg, ssize_t res)
{
	struct imap_session *is = arg;
	struct search_job *sj = is->sj;
	is->rd_inflight--;
	if (is->dead || !sj) {
		release(is);
		return;
	}
	/* a read error or an expunge meanwhile: no References, as if absent */
	struct span v = res > 0 ? header_references(span_make(is->rbuf, (size_t)res))
				: span_make(NULL, 0);
	bool ok = true;
	if (v.len) {
		ok = thread_add_refs(sj, v);
		if (ok && sj->tm[sj->ki].ref_n == 0)
			v.len = 0;
	}
	if (ok && !v.len && sj->irt) {
		sj->tm[sj->ki].ref_off = (uint32_t)sj->nrefs;
		sj->tm[sj->ki].ref_n = 1;
		sj->refs[sj->nrefs++] = sj->irt;
	}
	if (!ok) {
		search_free(is);
		done(is, "NO", "[SERVERBUG] Out of memory");
		release(is);
		return;
	}
	sj->ki++;
	sort_step(is);
	release(is);
}

/* THREAD=REFERENCES: the hit's Message-ID, subject flag and In-Reply-To
 * from the blob, then a read of its header for References. Returns 1
 * when the read is in flight (thread_read_done() goes on), 0 when the
 * hit is done, -1 when memory ran out. */
static int thread_fields(struct imap_session *is, const struct store_msg *m,
			 const struct mime_blob *mb, bool refwd)
{
	struct search_job *sj = is->sj;
	if (!sj->tm && !(sj->tm = calloc(sj->nh + 1, sizeof(*sj->tm))))
		return -1;
	if (!refs_reserve(sj))
		return -1;
	struct imap_thread_msg *t = &sj->tm[sj->ki];
	t->refwd = refwd;
	t->ref_off = (uint32_t)sj->nrefs;
	struct span v;
	t->id = 0;
	sj->irt = 0;
	if (mb && mime_blob_field(mb, 0, MIME_FIELD_MESSAGE_ID, &v))
		imap_thread_ids(v, 1, thread_first_id, &t->id);
	if (mb && mime_blob_field(mb, 0, MIME_FIELD_IN_REPLY_TO, &v))
		imap_thread_ids(v, 1, thread_first_id, &sj->irt);
	struct mime_part p0;
	if (!m || !mb || mime_blob_part(mb, 0, &p0) || p0.body_off == 0) {
		if (sj->irt) {
			t->ref_n = 1;
			sj->refs[sj->nrefs++] = sj->irt;
		}
		return 0;
	}
	size_t len = p0.body_off < IMAP_READ_CHUNK ? (size_t)p0.body_off : IMAP_READ_CHUNK;
	hold(is);
	is->rd_inflight++;
	store_read(is->folder, is->loop, m->uid, 0, is->rbuf, len, thread_read_done, is);
	return 1;
}

/* Builds the THREAD=REFERENCES reply once every hit has its fields. */
static void thread_refs_answer(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	for (size_t i = 0; i < sj->nh; i++) {
		struct imap_thread_msg *t = &sj->tm[i];
		const uint64_t *k = sj->keys + i * sj->ncrit;
		t->subj_off = (uint32_t)(k[0] >> 16);
		t->subj_len = (uint32_t)(k[0] & 0xffff);
		t->date = k[1];
		t->order = sj->hits[i];
		t->num = sort_number(is, sj->hits[i]);
	}
	size_t len;
	char *txt = sj->nh ? imap_thread_references(sj->tm, sj->nh, sj->refs, sj->arena, &len)
			   : NULL;
	if (sj->nh && !txt) {
		search_free(is);
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	out_str(is, txt ? "* THREAD " : "* THREAD");
	if (!txt) {
		sort_end(is);
		return;
	}
	is->ol = (struct out_list){ .active = true, .txt = txt, .n = len, .own = txt,
				    .then = sort_end };
	out_list_pump(is);
}

/* Makes the keys of IMAP_SORT_STEP_MSGS hits per turn; then sorts and
 * answers. */
static void sort_step(struct imap_session *is)
{
	struct search_job *sj = is->sj;
	unsigned budget = IMAP_SORT_STEP_MSGS;
	if (!sj->keys && !(sj->keys = malloc((sj->nh + 1) * sj->ncrit * sizeof(uint64_t))))
		goto oom;
	while (sj->ki < sj->nh) {
		if (budget-- == 0) {
			hold(is);
			io_uring_prep_nop(loop_sqe(is->loop, &sj->yield_cb));
			return;
		}
		/* expunged by another session, not announced yet: msgs[] still
		 * has its number; it sorts with empty keys */
		const struct store_msg *m = msg_of(is, sj->hits[sj->ki] - 1);
		struct mime_blob mb;
		const struct mime_blob *mbp = m && mime_blob_parse(m->blob, &mb) == 0 ? &mb : NULL;
		uint64_t *k = sj->keys + sj->ki * sj->ncrit;
		bool refwd = false;
		for (size_t c = 0; c < sj->ncrit; c++) {
			uint8_t key = sj->crit[c].key;
			if (!imap_sort_key_is_string(key)) {
				k[c] = imap_sort_key_number(mbp, key, m ? m->size : 0,
							    m ? m->internal_date : 0);
				continue;
			}
			if (sj->acap - sj->alen < IMAP_SORT_STRING_MAX) {
				size_t ncap = sj->acap ? sj->acap * 2 : 64 * 1024;
				uint8_t *na = realloc(sj->arena, ncap);
				if (!na)
					goto oom;
				sj->arena = na;
				sj->acap = ncap;
			}
			struct span v;
			size_t n = sj->mode != SJ_THREAD_REFS ? imap_sort_key_string(mbp, key,
										  sj->arena + sj->alen)
				 : mbp && mime_blob_field(mbp, 0, MIME_FIELD_SUBJECT, &v)
				 ? imap_sort_base_subject_refwd(v, sj->arena + sj->alen,
								IMAP_SORT_STRING_MAX, &refwd)
				 : 0;
			k[c] = (uint64_t)sj->alen << 16 | n;
			sj->alen += n;
		}
		if (sj->mode == SJ_THREAD_REFS) {
			int rc = thread_fields(is, m, mbp, refwd);
			if (rc < 0)
				goto oom;
			if (rc > 0)
				return; /* its header is being read */
		}
		sj->ki++;
	}
	if (sj->mode == SJ_THREAD_REFS) {
		thread_refs_answer(is);
		return;
	}
	uint32_t *order = malloc((sj->nh + 1) * sizeof(*order));
	if (!order)
		goto oom;
	for (size_t i = 0; i < sj->nh; i++)
		order[i] = (uint32_t)i;
	qsort_r(order, sj->nh, sizeof(*order), sort_cmp, sj);
	if (sj->mode == SJ_THREAD) {
		size_t len;
		char *txt = thread_text(is, order, &len);
		free(order);
		if (!txt)
			goto oom;
		out_str(is, len ? "* THREAD " : "* THREAD");
		is->ol = (struct out_list){ .active = true, .txt = txt, .n = len, .own = txt,
					    .then = sort_end };
		out_list_pump(is);
		return;
	}
	for (size_t i = 0; i < sj->nh; i++)
		order[i] = sort_number(is, sj->hits[order[i]]);
	out_str(is, "* SORT");
	out_list_start(is, order, false, NULL, sj->nh, order, sort_end);
	return;
oom:
	search_free(is);
	done(is, "NO", "[SERVERBUG] Out of memory");
}

/* SORT (criteria) charset search-key...; THREAD algorithm charset
 * search-key... */
static void sort_common(struct imap_session *is, size_t a, uint8_t mode)
{
	struct search_job *sj = calloc(1, sizeof(*sj));
	struct imap_search_tok *t = malloc((is->ntoks - a + 2) * sizeof(*t));
	if (!sj || !t) {
		free(sj);
		free(t);
		done(is, "NO", "[SERVERBUG] Out of memory");
		return;
	}
	sj->mode = mode;
	size_t cs; /* the charset's token */
	if (mode == SJ_SORT) {
		struct span atoms[IMAP_SORT_CRIT_MAX * 2];
		size_t end = a < is->ntoks && is->toks[a].kind == T_LBEGIN ? list_end(is, a) : a;
		size_t na = 0;
		bool ok = end > a + 1 && is->toks[end - 1].kind == T_LEND &&
			  end - a - 2 <= sizeof(atoms) / sizeof(atoms[0]);
		for (size_t i = a + 1; ok && i + 1 < end; i++) {
			ok = is->toks[i].kind == T_ATOM;
			atoms[na++] = tok_span(is, i);
		}
		int nc = ok ? imap_sort_parse(atoms, na, sj->crit, IMAP_SORT_CRIT_MAX) : -1;
		if (nc < 0) {
			free(sj);
			free(t);
			syntax(is, "Syntax: SORT (criteria) charset search-criteria");
			return;
		}
		sj->ncrit = (size_t)nc;
		cs = end;
	} else {
		bool refs = a < is->ntoks && is->toks[a].kind == T_ATOM &&
			    span_eq_nocase(tok_span(is, a), SPAN_LIT("REFERENCES"));
		if (!refs && (a >= is->ntoks || is->toks[a].kind != T_ATOM ||
			      !span_eq_nocase(tok_span(is, a), SPAN_LIT("ORDEREDSUBJECT")))) {
			free(sj);
			free(t);
			syntax(is, "Syntax: THREAD ORDEREDSUBJECT|REFERENCES charset search-criteria");
			return;
		}
		if (refs)
			sj->mode = mode = SJ_THREAD_REFS;
		sj->crit[0] = (struct imap_sort_crit){ .key = IMAP_SORT_SUBJECT };
		sj->crit[1] = (struct imap_sort_crit){ .key = IMAP_SORT_DATE };
		sj->ncrit = 2;
		cs = a + 1;
	}
	if (cs + 1 >= is->ntoks ||
	    (is->toks[cs].kind != T_ATOM && is->toks[cs].kind != T_STRING)) {
		free(sj);
		free(t);
		syntax(is, mode == SJ_SORT
				   ? "Syntax: SORT (criteria) charset search-criteria"
				   : "Syntax: THREAD ORDEREDSUBJECT|REFERENCES charset search-criteria");
		return;
	}
	/* "CHARSET name key..." for the search program */
	t[0] = (struct imap_search_tok){ .kind = IMAP_STOK_ATOM, .text = SPAN_LIT("CHARSET") };
	search_tokens(is, cs, t + 1);
	search_run(is, sj, t, is->ntoks - cs + 1);
}

static void cmd_sort(struct imap_session *is, size_t a) { sort_common(is, a, SJ_SORT); }
static void cmd_thread(struct imap_session *is, size_t a) { sort_common(is, a, SJ_THREAD); }
/* ---- APPEND ----------------------------------------------------------------------------------- */

/* APPEND with MULTIAPPEND (RFC 3502): each message streams into its own
 * store_append and is committed when its literal ends, one at a time; the
 * UIDs are kept until the command's EOL. All or nothing: when one message
 * fails (over quota, too big, bad syntax, the client goes away), those
 * already committed are expunged before the reply. */

static void append_msg_reset(struct imap_session *is)
{
	if (is->append)
		store_append_abort(&is->append);
	free(is->mime);
	is->mime = NULL;
	free(is->overflow);
	is->overflow = NULL;
	is->overflow_len = 0;
	is->append_data = false;
	is->append_rc = 0;
}

static void append_reset(struct imap_session *is)
{
	append_msg_reset(is);
	is->append_done = false;
	store_folder_close(&is->other);
	free(is->append_uids);
	is->append_uids = NULL;
	is->append_nuids = is->append_cap = 0;
	is->append_active = false;
	is->append_why = NULL;
	is->undo_err = 0;
}

static void append_ready(void *arg)
{
	struct imap_session *is = arg;
	if (!is->overflow_len || !is->append)
		return;
	ssize_t w = store_append_write(is->append, span_make(is->overflow, is->overflow_len));
	if (w < 0) {
		is->append_rc = (int)w;
		is->overflow_len = 0;
	} else {
		memmove(is->overflow, is->overflow + w, is->overflow_len - (size_t)w);
		is->overflow_len -= (size_t)w;
	}
	update_input(is);
}

/* Literal bytes of the message. */
static void append_put(struct imap_session *is, struct span chunk)
{
	if (is->append_rc || chunk.len == 0)
		return;
	mime_scan_feed(is->mime, chunk);
	if (is->overflow_len == 0) {
		ssize_t w = store_append_write(is->append, chunk);
		if (w < 0) {
			is->append_rc = (int)w;
			return;
		}
		chunk = span_skip(chunk, (size_t)w);
		if (chunk.len == 0)
			return;
	}
	uint8_t *o = realloc(is->overflow, is->overflow_len + chunk.len);
	if (!o) {
		is->append_rc = -ENOMEM;
		return;
	}
	memcpy(o + is->overflow_len, chunk.p, chunk.len);
	is->overflow = o;
	is->overflow_len += chunk.len;
	update_input(is);
}

/* The tagged reply of a failed APPEND once the undo is durable (or at
 * once when nothing was committed). */
static void append_fail_reply(struct imap_session *is)
{
	int err = is->undo_err;
	const char *why = is->append_why;
	append_reset(is);
	if (why) {
		bad(is, why);
		cmd_end(is);
	} else if (err == -ENOENT) {
		done(is, "NO", "[TRYCREATE] No such mailbox");
	} else {
		store_error(is, err);
	}
}

static void append_undone(void *arg, int res, uint64_t modseq)
{
	struct imap_session *is = arg;
	(void)modseq;
	if (res < 0 && !is->dead)
		LOG_AT(stream_log(is->s), LOG_WARN, stream_sid(is->s), "imap-undo-error",
		       "user=%s error=%s", is->user, strerror(-res));
	if (is->dead)
		append_reset(is);
	else
		append_fail_reply(is);
	release(is);
}

/* Expunges what this APPEND committed, then replies (err, or BAD why).
 * Also for a session that is gone (then nothing is replied). */
static void append_undo(struct imap_session *is, int err, const char *why)
{
	append_msg_reset(is);
	if (!is->undo_err)
		is->undo_err = err;
	if (!is->append_why)
		is->append_why = why;
	if (is->append_nuids && is->other) {
		set_busy(is, true);
		hold(is);
		store_expunge(is->other, is->loop, is->append_uids, is->append_nuids, append_undone,
			      is);
		return;
	}
	if (!is->dead)
		append_fail_reply(is);
	else
		append_reset(is);
}

/* EOL after the last message: the reply. */
static void append_end(struct imap_session *is)
{
	if (is->undo_err || is->append_nuids == 0) {
		append_undo(is, is->undo_err ? is->undo_err : -EINVAL, NULL);
		return;
	}
	struct store_folder_status st;
	store_folder_status(is->other, &st);
	sync_mailbox(is, true);
	out_printf(is, "%s OK [APPENDUID %" PRIu32 " ", is->tag, st.uidvalidity);
	out_uidset(is, is->append_uids, is->append_nuids);
	out_str(is, "] APPEND completed\r\n");
	out_flush(is);
	append_reset(is);
	cmd_end(is);
}

static void append_committed(void *arg, int res, uint32_t uid)
{
	struct imap_session *is = arg;
	is->append = NULL; /* freed by the store after this returns */
	append_msg_reset(is);
	if (res == 0) {
		/* append_literal() made room before this message started */
		is->append_uids[is->append_nuids++] = uid;
	} else if (!is->undo_err) {
		is->undo_err = res;
	}
	if (is->dead) {
		append_undo(is, res, NULL);
		release(is);
		return;
	}
	set_busy(is, false);
	release(is);
}

/* The end of a message literal: commit it (the rest of the command waits
 * until it is durable). */
static void append_msg_end(struct imap_session *is)
{
	is->append_data = false;
	if (is->append_rc) {
		if (!is->undo_err)
			is->undo_err = is->append_rc;
		append_msg_reset(is);
		return;
	}
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blob_len = 0;
	if (!blob || mime_scan_finish(is->mime, blob, MIME_BLOB_MAX, &blob_len)) {
		free(blob);
		if (!is->undo_err)
			is->undo_err = -ENOMEM;
		append_msg_reset(is);
		return;
	}
	set_busy(is, true);
	hold(is);
	struct store_append *ap = is->append;
	is->append = NULL;
	/* The store keeps the append until the callback: a close meanwhile
	 * must not abort it. */
	store_append_commit(ap, span_make(blob, blob_len), append_committed, is);
	free(blob);
}

/* An APPEND date-time "dd-Mon-yyyy hh:mm:ss +zzzz" as seconds since the
 * epoch in *t_r (negative before 1970). false: not a valid one. */
static bool parse_datetime(struct span s, int64_t *t_r)
{
	char buf[40];
	if (s.len >= sizeof(buf))
		return false;
	memcpy(buf, s.p, s.len);
	buf[s.len] = '\0';
	int d, y, h, mi, se, z;
	char mon[4];
	if (sscanf(buf, " %d-%3s-%d %d:%d:%d %d", &d, mon, &y, &h, &mi, &se, &z) != 7)
		return false;
	char day[24];
	snprintf(day, sizeof(day), "%d-%s-%d", d, mon, y);
	int64_t days = parse_day(span_cstr(day));
	if (days == IMAP_SEARCH_DAY_INVALID || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 ||
	    se > 60)
		return false;
	int zs = z < 0 ? -1 : 1;
	z = z < 0 ? -z : z;
	if (z > 9959 || z % 100 > 59)
		return false; /* zone is +hhmm */
	int64_t off = zs * ((z / 100) * 3600 + (z % 100) * 60);
	*t_r = days * 86400 + h * 3600 + mi * 60 + se - off;
	return true;
}

/* Refuses the message literal just announced: a synchronising one gets
 * the reply now (without "+", the client sends no data and the command is
 * over); a non-synchronising one is read and dropped, and the reply waits
 * for the EOL. */
static void append_refuse(struct imap_session *is, const struct imap_token *t, int err,
			  const char *why)
{
	if (t->nonsync) {
		if (t->size > IMAP_DISCARD_MAX) {
			out_str(is, "* BYE [TOOBIG] Literal too large\r\n");
			session_close(is, true);
			/* committed messages are taken back in imap_close() */
			return;
		}
		if (!is->undo_err)
			is->undo_err = err;
		if (!is->append_why)
			is->append_why = why;
		is->mode = M_DISCARD;
		is->discard_skip = false; /* the EOL ends the APPEND */
		return;
	}
	/* The next bytes are a new command. */
	imap_parser_init(&is->parser, cfg_of(is)->imap_line_max);
	append_undo(is, err, why);
}

/* Starts the store append of the next message into is->other. */
static void append_begin_msg(struct imap_session *is, bool nonsync)
{
	is->mime = malloc(sizeof(*is->mime));
	int rc = is->mime ? 0 : -ENOMEM;
	if (!rc) {
		mime_scan_init(is->mime);
		mime_scan_limits(is->mime, cfg_of(is)->mime_depth_max, cfg_of(is)->mime_parts_max);
		rc = store_append_begin(is->loop, &is->other, 1, is->append_date, is->append_flags,
					is->append_kw, is->append_nkw, append_ready, is,
					&is->append);
	}
	if (rc) {
		struct imap_token t = { .nonsync = nonsync, .size = is->append_size };
		append_msg_reset(is);
		append_refuse(is, &t, rc, NULL);
		return;
	}
	is->append_data = true;
	if (!nonsync) {
		out_str(is, "+ Ready for literal data\r\n");
		out_flush(is);
	}
}

static void append_opened(void *arg, int res, struct store_folder *folder)
{
	struct imap_session *is = arg;
	if (gone_after_open(is, folder))
		return;
	bool nonsync = is->append_nonsync;
	set_busy(is, false);
	if (res < 0) {
		struct imap_token t = { .nonsync = nonsync, .size = is->append_size };
		append_refuse(is, &t, res, NULL);
		release(is);
		return;
	}
	is->other = folder;
	append_begin_msg(is, nonsync);
	release(is);
}

/* A message literal of an APPEND was announced; its flags and date are
 * the tokens from append_argi on. */
static void append_literal(struct imap_session *is, const struct imap_token *t)
{
	char name[STORE_NAME_MAX + 1];
	const char *err = NULL;
	bool first = !is->append_active;
	if (first) {
		is->append_active = true;
		is->append_argi = 3; /* tag APPEND mailbox */
	}
	size_t i = is->append_argi;
	is->append_flags = 0;
	is->append_nkw = 0;
	is->append_date = time(NULL);
	if (first && !is_astring(is, 2)) {
		err = "Syntax: APPEND mailbox [flags] [date] literal";
	} else if (first) {
		ssize_t n = name_decode(is, tok_span(is, 2), name, sizeof(name) - 1);
		if (n <= 0)
			err = "Invalid mailbox name";
		else {
			name[n] = '\0';
			if (strcasecmp(name, "INBOX") == 0)
				memcpy(name, "INBOX", 6);
		}
	}
	if (!err && i < is->ntoks && is->toks[i].kind == T_LBEGIN) {
		size_t end = list_end(is, i);
		static const char *const names[] = { "\\Seen", "\\Answered", "\\Flagged",
						     "\\Deleted", "\\Draft" };
		for (size_t k = i + 1; k + 1 < end && !err; k++) {
			const char *f = tok_str(is, k);
			bool sys = false;
			for (unsigned b = 0; b < 5; b++)
				if (strcasecmp(f, names[b]) == 0) {
					is->append_flags |= 1u << b;
					sys = true;
				}
			if (sys)
				continue;
			if (f[0] == '\\' || is->toks[k].kind != T_ATOM || !keyword_ok(f))
				err = "Invalid flag";
			else if (is->append_nkw < STORE_KEYWORDS_MAX)
				is->append_kw[is->append_nkw++] = f;
		}
		i = end;
	}
	if (!err && i < is->ntoks && is->toks[i].kind == T_STRING) {
		int64_t d;
		if (!parse_datetime(tok_span(is, i), &d))
			err = "Invalid date-time";
		else
			is->append_date = d;
		i++;
	}
	if (!err && i != is->ntoks)
		err = "Syntax: APPEND mailbox [flags] [date] literal";
	/* t->binary: a literal8 ~{n} (RFC 3516 4.4, BINARY is advertised
	 * after login): the message may hold NULs; stored as it is. */
	if (is->cmd_broken) /* too many tokens: this message's flags were lost */
		err = is->broken_why ? is->broken_why : "Invalid command";
	/* The tokens after this literal are the next message's. */
	is->append_argi = is->ntoks;
	if (err) {
		append_refuse(is, t, -EINVAL, err);
		return;
	}
	if (t->size > cfg_of(is)->message_size_max) {
		append_refuse(is, t, -EFBIG, NULL);
		return;
	}
	if (is->undo_err) {
		/* An earlier message failed: this one is not kept either. */
		append_refuse(is, t, is->undo_err, NULL);
		return;
	}
	if (is->append_nuids == is->append_cap) {
		size_t cap = is->append_cap ? is->append_cap * 2 : 8;
		uint32_t *u = cap <= IMAP_APPEND_MSGS_MAX
				      ? realloc(is->append_uids, cap * sizeof(*u)) : NULL;
		if (!u) {
			append_refuse(is, t, -ENOSPC, NULL);
			return;
		}
		is->append_uids = u;
		is->append_cap = cap;
	}
	is->append_size = t->size;
	is->append_nonsync = t->nonsync;
	if (!first) {
		append_begin_msg(is, t->nonsync);
		return;
	}
	set_busy(is, true);
	hold(is);
	store_folder_open(is->su, is->loop, name, append_opened, is);
}

/* ---- IDLE ----------------------------------------------------------------------------------- */

static void watch_cb(void *arg)
{
	struct imap_session *is = arg;
	if (is->dead || is->mode != M_IDLE || is->idle_wait)
		return; /* while waiting for the socket, its drain syncs */
	hold(is);
	is->idle_wait = sync_mailbox(is, true);
	out_flush(is);
	if (!is->idle_wait)
		release_idle(is);
	release(is);
}

static void cmd_idle(struct imap_session *is, size_t a)
{
	(void)a;
	out_str(is, "+ idling\r\n");
	is->mode = M_IDLE;
	is->idle_wait = sync_mailbox(is, true);
	out_flush(is);
	/* Only the tag (is->tag) is needed until DONE. */
	release_idle(is);
	arm_timer(is);
}

static void idle_line(struct imap_session *is, struct span line)
{
	is->mode = M_CMD;
	is->idle_wait = false; /* done() reports the rest */
	if (!span_eq_nocase(line, SPAN_LIT("DONE"))) {
		bad(is, "Expected DONE");
		cmd_end(is);
		return;
	}
	done(is, "OK", "IDLE terminated");
}

/* ---- the command table -------------------------------------------------------------------- */

#define ANY (ST(NOTAUTH) | ST(AUTH) | ST(SELECTED))
#define AUTHED (ST(AUTH) | ST(SELECTED))

static const struct imap_command commands[] = {
	{ "CAPABILITY", ANY, false, SYNC_NONE, cmd_capability, 0 },
	/* NOOP ignores arguments, as it always did (harmless; a long NOOP is
	 * how the line limit is probed) */
	{ "NOOP", ANY, false, SYNC_FULL, cmd_noop, -1 },
	{ "LOGOUT", ANY, false, SYNC_NONE, cmd_logout, 0 },
	{ "ID", ANY, false, SYNC_NONE, cmd_id, -1 },
	{ "STARTTLS", ST(NOTAUTH), false, SYNC_NONE, cmd_starttls, 0 },
	{ "LOGIN", ST(NOTAUTH), false, SYNC_NONE, cmd_login, -1 },
	{ "AUTHENTICATE", ST(NOTAUTH), false, SYNC_NONE, cmd_authenticate, -1 },
	/* RFC 9051 6.3.1 / RFC 5161 3.1: before any mailbox is selected */
	{ "ENABLE", ST(AUTH), false, SYNC_NONE, cmd_enable, -1 },
	{ "NAMESPACE", AUTHED, false, SYNC_FULL, cmd_namespace, 0 },
	{ "SELECT", AUTHED, false, SYNC_NONE, cmd_select, -1 },
	{ "EXAMINE", AUTHED, false, SYNC_NONE, cmd_examine, -1 },
	{ "CREATE", AUTHED, false, SYNC_FULL, cmd_create, 1 },
	{ "DELETE", AUTHED, false, SYNC_FULL, cmd_delete, 1 },
	{ "RENAME", AUTHED, false, SYNC_FULL, cmd_rename, 2 },
	{ "SUBSCRIBE", AUTHED, false, SYNC_FULL, cmd_subscribe, 1 },
	{ "UNSUBSCRIBE", AUTHED, false, SYNC_FULL, cmd_unsubscribe, 1 },
	{ "LIST", AUTHED, false, SYNC_FULL, cmd_list, -1 },
	{ "LSUB", AUTHED, false, SYNC_FULL, cmd_lsub, -1 },
	{ "STATUS", AUTHED, false, SYNC_FULL, cmd_status, -1 },
	{ "GETQUOTAROOT", AUTHED, false, SYNC_FULL, cmd_getquotaroot, 1 },
	{ "GETQUOTA", AUTHED, false, SYNC_FULL, cmd_getquota, 1 },
	{ "SETQUOTA", AUTHED, false, SYNC_FULL, cmd_setquota, -1 },
	{ "APPEND", AUTHED, false, SYNC_FULL, NULL, -1 }, /* see append_literal() */
	{ "IDLE", AUTHED, false, SYNC_NONE, cmd_idle, 0 },
	{ "COMPRESS", AUTHED, false, SYNC_NONE, cmd_compress, 1 },
	{ "UNAUTHENTICATE", AUTHED, false, SYNC_NONE, cmd_unauthenticate, 0 },
	{ "CHECK", ST(SELECTED), false, SYNC_FULL, cmd_check, 0 },
	{ "CLOSE", ST(SELECTED), false, SYNC_NONE, cmd_close, 0 },
	{ "UNSELECT", ST(SELECTED), false, SYNC_NONE, cmd_unselect, 0 },
	{ "EXPUNGE", ST(SELECTED), true, SYNC_FULL, cmd_expunge, -1 },
	{ "SEARCH", ST(SELECTED), true, SYNC_NOEXPUNGE, cmd_search, -1 },
	{ "SORT", ST(SELECTED), true, SYNC_NOEXPUNGE, cmd_sort, -1 },
	{ "THREAD", ST(SELECTED), true, SYNC_NOEXPUNGE, cmd_thread, -1 },
	{ "FETCH", ST(SELECTED), true, SYNC_NOEXPUNGE, cmd_fetch, -1 },
	{ "STORE", ST(SELECTED), true, SYNC_NOEXPUNGE, cmd_store, -1 },
	{ "COPY", ST(SELECTED), true, SYNC_FULL, cmd_copy, -1 },
	{ "MOVE", ST(SELECTED), true, SYNC_FULL, cmd_copy, -1 },
};

static const struct imap_command *find_command(struct span name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (span_eq_nocase(name, span_cstr(commands[i].name)))
			return &commands[i];
	return NULL;
}

/* A tag is 1*<any ASTRING-CHAR except "+"> (RFC 3501 formal syntax). */
static bool tag_ok(struct span t)
{
	if (t.len == 0 || t.len >= sizeof(((struct imap_session *)0)->tag))
		return false;
	for (size_t i = 0; i < t.len; i++) {
		uint8_t c = t.p[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\+", c))
			return false;
	}
	return true;
}

/* The command's tokens are complete (EOL). */
static void dispatch(struct imap_session *is)
{
	if (is->cmd_broken) {
		bad(is, is->broken_why ? is->broken_why : "Invalid command");
		cmd_end(is);
		return;
	}
	if (is->ntoks == 0) {
		bad(is, "Empty command line");
		cmd_end(is);
		return;
	}
	if (is->ntoks == 3 && is->toks[0].kind == T_ATOM && is->toks[2].kind == T_ATOM) {
		/* "GET /x HTTP/1.1" (ALPACA): close without answering its lines. */
		struct span m = tok_span(is, 0), v = tok_span(is, 2);
		char line[64];
		if (m.len + v.len + 3 < sizeof(line)) {
			int n = snprintf(line, sizeof(line), "%.*s / %.*s", (int)m.len,
					 (const char *)m.p, (int)v.len, (const char *)v.p);
			if (session_http_request_line(span_make(line, (size_t)n))) {
				out_str(is, "* BYE This is an IMAP server\r\n");
				LOG_AT(stream_log(is->s), LOG_INFO, stream_sid(is->s),
				       "imap-http-request", "closing=yes");
				session_close(is, true);
				cmd_end(is);
				return;
			}
		}
	}
	if (is->toks[0].kind != T_ATOM || !tag_ok(tok_span(is, 0))) {
		is->have_tag = false;
		bad(is, "Invalid tag");
		cmd_end(is);
		return;
	}
	if (is->ntoks < 2 || is->toks[1].kind != T_ATOM) {
		/* A lone word is not known to be a tag: answer untagged. */
		is->have_tag = false;
		bad(is, "Missing command");
		cmd_end(is);
		return;
	}
	size_t a = 2;
	struct span name = tok_span(is, 1);
	if (span_eq_nocase(name, SPAN_LIT("UID"))) {
		if (a >= is->ntoks || is->toks[a].kind != T_ATOM) {
			bad(is, "Missing UID command");
			cmd_end(is);
			return;
		}
		is->uid_cmd = true;
		name = tok_span(is, a++);
	}
	const struct imap_command *c = find_command(name);
	if (c && c->run == cmd_unauthenticate && !cfg_of(is)->imap_unauthenticate)
		c = NULL; /* turned off: not advertised, not known */
	if (!c || (is->uid_cmd && !c->uid) || !c->run) {
		bad(is, c && !c->run ? "APPEND needs a message literal" : "Unknown command");
		cmd_end(is);
		return;
	}
	if (!(c->states & (1u << is->state))) {
		bad(is, is->state == IMAP_S_NOTAUTH	 ? "Log in first"
			: c->run == cmd_enable ? "ENABLE is only valid before a mailbox is selected"
					       : "Command not valid in this state");
		cmd_end(is);
		return;
	}
	if (c->nargs >= 0 && is->ntoks - a != (size_t)c->nargs) {
		/* "DELETE a b" (an unquoted "a b") must not delete "a" */
		bad(is, c->nargs == 0 ? "This command takes no arguments"
				      : "Wrong number of arguments");
		cmd_end(is);
		return;
	}
	is->cmd = c;
	c->run(is, a);
	/* Every command ends with its tagged reply (cmd_end), or waits: for
	 * the store or auth (busy), for more input (IDLE, AUTHENTICATE,
	 * APPEND's literals, a refused literal's data), or the session ends.
	 * A handler that returned with none of these would leave the client
	 * waiting forever (a STORE without flags did): answer for it. */
	if (is->cmd == c && !is->busy && !is->dead && is->state != IMAP_S_LOGOUT &&
	    is->mode == M_CMD && !is->append_data) {
		LOG_AT(stream_log(is->s), LOG_ERROR, stream_sid(is->s), "imap-no-reply",
		       "command=%s", c->name);
		tagged(is, "NO", "[SERVERBUG] The command ended without a reply");
		cmd_end(is);
	}
}

/* ---- reading commands ------------------------------------------------------------------ */

static bool arena_put(struct imap_session *is, struct span s, uint32_t *off_r)
{
	if (is->arena_len + s.len + 1 > is->arena_cap) {
		size_t cap = is->arena_cap ? is->arena_cap : 256;
		while (cap < is->arena_len + s.len + 1)
			cap *= 2;
		uint8_t *p = realloc(is->arena, cap);
		if (!p)
			return false;
		is->arena = p;
		is->arena_cap = cap;
	}
	*off_r = (uint32_t)is->arena_len;
	if (s.len)
		memcpy(is->arena + is->arena_len, s.p, s.len);
	is->arena_len += s.len;
	is->arena[is->arena_len++] = '\0';
	return true;
}

static void broken(struct imap_session *is, const char *why)
{
	if (!is->cmd_broken) {
		is->cmd_broken = true;
		is->broken_why = why;
	}
}

static void add_tok(struct imap_session *is, uint8_t kind, struct span text, bool literal,
		    bool escaped)
{
	if (is->cmd_broken)
		return;
	if (is->ntoks == IMAP_TOKENS_MAX) {
		broken(is, "Too many arguments");
		return;
	}
	if (is->ntoks == is->toks_cap) {
		size_t cap = is->toks_cap ? is->toks_cap * 2 : 32;
		if (cap > IMAP_TOKENS_MAX)
			cap = IMAP_TOKENS_MAX;
		struct tok *t = realloc(is->toks, cap * sizeof(*is->toks));
		if (!t) {
			broken(is, "Out of memory");
			return;
		}
		is->toks = t;
		is->toks_cap = cap;
	}
	struct tok *t = &is->toks[is->ntoks];
	t->kind = kind;
	t->literal = literal;
	uint32_t off;
	if (escaped) {
		uint8_t *tmp = malloc(text.len + 1);
		if (!tmp) {
			broken(is, "Out of memory");
			return;
		}
		size_t n = imap_unquote(text, tmp);
		bool ok = arena_put(is, span_make(tmp, n), &off);
		free(tmp);
		if (!ok) {
			broken(is, "Out of memory");
			return;
		}
		text.len = n;
	} else if (!arena_put(is, text, &off)) {
		broken(is, "Out of memory");
		return;
	}
	t->off = off;
	t->len = (uint32_t)text.len;
	is->ntoks++;
	/* The tag, as soon as it is known, for the replies. */
	if (is->ntoks == 1 && kind == T_ATOM && tag_ok(text)) {
		memcpy(is->tag, text.p, text.len);
		is->tag[text.len] = '\0';
		is->have_tag = true;
	}
}

/* Appends literal data to the last token (a T_STRING made at LITERAL). */
static void add_literal_data(struct imap_session *is, struct span d)
{
	if (is->cmd_broken || is->ntoks == 0 || d.len == 0)
		return;
	struct tok *t = &is->toks[is->ntoks - 1];
	/* The token's bytes are the last in the arena (NUL after them). */
	is->arena_len--;
	uint32_t off;
	if (!arena_put(is, d, &off)) {
		broken(is, "Out of memory");
		return;
	}
	t->len += (uint32_t)d.len;
}

/* A literal header {n}. */
static void on_literal(struct imap_session *is, const struct imap_token *t)
{
	bool append = is->ntoks >= 2 && is->toks[1].kind == T_ATOM &&
		      span_eq_nocase(tok_span(is, 1), SPAN_LIT("APPEND")) && is->ntoks >= 3 &&
		      !is->cmd_broken && is->state != IMAP_S_NOTAUTH;
	/* APPEND's message literal: the first literal after the mailbox
	 * (which may itself be a literal: then it has fewer tokens). */
	if ((append && is->ntoks >= 3) || is->append_active) {
		append_literal(is, t);
		return;
	}
	/* Literal bytes gathered per command (LOGIN passwords, SEARCH
	 * strings, mailbox names): limits.imap_literal_max; more is refused. */
	uint64_t limit = cfg_of(is)->imap_literal_max;
	if (t->binary || is->gathered + t->size > limit || is->cmd_broken) {
		if (t->nonsync) {
			if (t->size > IMAP_DISCARD_MAX) {
				out_str(is, "* BYE [TOOBIG] Literal too large\r\n");
				session_close(is, true);
				return;
			}
			broken(is, t->binary ? "Binary literals (~{n}) are for APPEND only"
					     : "[TOOBIG] Literal too large");
			is->mode = M_DISCARD;
			return;
		}
		imap_parser_init(&is->parser, is->state == IMAP_S_NOTAUTH ? IMAP_LINE_MAX_PRELOGIN
									 : cfg_of(is)->imap_line_max);
		if (t->binary)
			bad(is, "Binary literals (~{n}) are for APPEND only");
		else
			bad(is, "[TOOBIG] Literal too large");
		cmd_end(is);
		return;
	}
	is->gathered += t->size;
	add_tok(is, T_STRING, span_make(NULL, 0), true, false);
	if (!t->nonsync) {
		out_str(is, "+ OK\r\n");
		out_flush(is);
	}
}

static ssize_t imap_data(struct stream *s, struct span in)
{
	struct imap_session *is = stream_session(s);
	size_t pos = 0;

	hold(is);
	for (;;) {
		if (is->dead || is->state == IMAP_S_LOGOUT) {
			pos = in.len;
			break;
		}
		if (is->busy || is->overflow_len)
			break;
		if (is->append_done) {
			/* The message literal ended and all of it is in the
			 * store append: commit before reading on. */
			is->append_done = false;
			append_msg_end(is);
			continue;
		}
		if (stream_send_pending(s) > send_high(is)) {
			is->out_blocked = true;
			update_input(is);
			break;
		}
		struct span rest = span_skip(in, pos);
		size_t used = 0;
		if (is->mode == M_SKIP) {
			enum imap_parse_result r = imap_parse_skip_line(&is->parser, rest, &used);
			pos += used;
			if (r == IMAP_PARSE_AGAIN)
				break;
			is->mode = M_CMD;
			continue;
		}
		if (is->mode == M_SASL || is->mode == M_IDLE) {
			const uint8_t *lf = memchr(rest.p, '\n', rest.len);
			if (!lf) {
				if (rest.len > IMAP_SASL_LINE_MAX) {
					is->mode = M_SKIP;
					bad(is, "Line too long");
					cmd_end(is);
					continue;
				}
				break;
			}
			size_t n = (size_t)(lf - rest.p);
			struct span line = span_make(rest.p, n && rest.p[n - 1] == '\r' ? n - 1 : n);
			pos += n + 1;
			arm_timer(is);
			if (is->mode == M_SASL)
				sasl_line(is, line);
			else
				idle_line(is, line);
			continue;
		}
		if (rest.len == 0)
			break;
		struct imap_token t;
		enum imap_parse_result r = imap_parse_next(&is->parser, rest, &used, &t);
		if (r == IMAP_PARSE_AGAIN)
			break;
		if (r != IMAP_PARSE_OK) {
			is->mode = M_SKIP;
			const char *why = r == IMAP_PARSE_TOO_LONG ? "[TOOBIG] Command line too long"
								   : "Invalid command syntax";
			if (is->append_active) {
				/* the messages already committed are taken back */
				append_undo(is, -EINVAL, why);
				continue;
			}
			bad(is, why);
			cmd_end(is);
			continue;
		}
		pos += used;
		if (is->mode == M_DISCARD) {
			if (t.type == IMAP_TOK_LITERAL_DATA) {
				if (t.last) {
					/* Answered already: drop the rest of the line;
					 * otherwise the broken command gets its BAD at
					 * the EOL. */
					is->mode = is->discard_skip ? M_SKIP : M_CMD;
					is->discard_skip = false;
				}
				continue;
			}
		}
		arm_timer(is);
		switch (t.type) {
		case IMAP_TOK_ATOM:
			add_tok(is, T_ATOM, t.text, false, false);
			break;
		case IMAP_TOK_NIL:
			add_tok(is, T_NIL, t.text, false, false);
			break;
		case IMAP_TOK_QUOTED:
			add_tok(is, T_STRING, t.text, false, t.escaped);
			break;
		case IMAP_TOK_LIST_BEGIN:
			add_tok(is, T_LBEGIN, t.text, false, false);
			break;
		case IMAP_TOK_LIST_END:
			add_tok(is, T_LEND, t.text, false, false);
			break;
		case IMAP_TOK_LITERAL:
			on_literal(is, &t);
			break;
		case IMAP_TOK_LITERAL_DATA:
			if (is->append_data) {
				append_put(is, t.text);
				/* committed once the overflow is in the store
				 * (the loop's top) */
				if (t.last)
					is->append_done = true;
			} else {
				add_literal_data(is, t.text);
			}
			break;
		case IMAP_TOK_EOL:
			if (is->append_data)
				append_undo(is, -EINVAL, "Incomplete APPEND");
			else if (is->append_active)
				append_end(is);
			else
				dispatch(is);
			break;
		}
		if (is->tls_pending) {
			/* Whatever came behind an accepted STARTTLS is injected
			 * plaintext (CVE-2011-0411): never parsed here; stream.c
			 * discards and logs it. */
			break;
		}
		if (is->compress_started) {
			/* what follows is compressed: stream.c inflates it and
			 * calls again */
			is->compress_started = false;
			break;
		}
	}
	if (!release(is))
		return (ssize_t)in.len;
	return (ssize_t)pos;
}

/* ---- the stream side ------------------------------------------------------------------- */

static int imap_open(struct stream *s)
{
	struct imap_session *is = calloc(1, sizeof(*is));
	if (!is)
		return -ENOMEM;
	is->s = s;
	is->loop = stream_loop(s);
	is->sv = services_of(stream_loop(s));
	is->pipe_r = is->pipe_w = -1;
	is->state = IMAP_S_NOTAUTH;
	imap_parser_init(&is->parser, IMAP_LINE_MAX_PRELOGIN);
	stream_set_session(s, is);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		out_str(is, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n");
		session_close(is, true);
		return 0;
	}
	char caps[CAPS_MAX];
	out_printf(is, "* OK [CAPABILITY %s] ringmail ready\r\n", capabilities(is, caps));
	out_flush(is);
	release_idle(is); /* a connection that never speaks keeps no buffer */
	arm_timer(is);
	return 0;
}

static void imap_drained(struct stream *s)
{
	struct imap_session *is = stream_session(s);
	hold(is);
	if (is->done_wait && !is->dead) {
		arm_timer(is);
		done_resume(is);
	}
	if (is->idle_wait && !is->dead && is->mode == M_IDLE) {
		is->idle_wait = sync_mailbox(is, true);
		out_flush(is);
	}
	if (is->ol.active && is->ol.wait_drain) {
		is->ol.wait_drain = false;
		arm_timer(is);
		out_list_pump(is);
	}
	if (is->fj && is->fj->wait_drain && !is->ol.active) {
		is->fj->wait_drain = false;
		arm_timer(is);
		fetch_pump(is);
	}
	if (is->out_blocked && !is->dead) {
		is->out_blocked = false;
		update_input(is);
	}
	splice_pipe_idle(is);
	release(is);
}

static void imap_timer(struct stream *s)
{
	struct imap_session *is = stream_session(s);
	LOG_AT(stream_log(s), LOG_INFO, stream_sid(s), "imap-timeout", "state=%s",
	       imap_state_str(is->state));
	if (is->fj || is->ol.active) {
		/* in the middle of a response: no BYE can follow */
		session_close(is, false);
		return;
	}
	out_str(is, "* BYE Autologout; idle for too long\r\n");
	session_close(is, true);
}

static void imap_shutdown(struct stream *s)
{
	struct imap_session *is = stream_session(s);
	if (is->busy || is->append_data || is->append_active || is->fj) {
		/* A command is running (or an APPEND literal streaming in): it
		 * finishes within shutdown_grace, then cmd_end() says BYE. */
		is->shutting_down = true;
		return;
	}
	out_str(is, "* BYE [UNAVAILABLE] Server shutting down\r\n");
	session_close(is, true);
}

static void session_maybe_free(struct imap_session *is)
{
	if (!is->dead || is->pending)
		return;
	append_reset(is);
	fetch_free(is);
	free(is->ol.own);
	search_free(is);
	list_job_free(is);
	rename_job_free(is);
	mailbox_close(is);
	store_user_close(&is->su);
	if (is->user_counted)
		user_limit_leave(is->sv->user_limit, is->user_slot);
	if (is->arena)
		explicit_bzero(is->arena, is->arena_cap);
	free(is->arena);
	free(is->toks);
	free(is->set);
	free(is->uids);
	free(is->uids2);
	free(is->rbuf);
	free(is->obuf);
	free(is->saved);
	splice_pipe_close(is);
	explicit_bzero(is->user, sizeof(is->user));
	free(is);
}

static void imap_close(struct stream *s)
{
	struct imap_session *is = stream_session(s);
	if (!is)
		return;
	stream_set_session(s, NULL);
	if (is->auth_req) {
		auth_cancel(is->auth_req);
		is->auth_req = NULL;
	}
	is->dead = true;
	is->state = IMAP_S_LOGOUT;
	if (is->folder)
		store_watch(is->folder, stream_loop(s), NULL, NULL);
	/* A MULTIAPPEND cut short keeps nothing; with a store call in flight
	 * its callback does this. */
	if (is->append_active && !is->busy)
		append_undo(is, -ECONNRESET, NULL);
	session_maybe_free(is);
}

const struct stream_ops imap_session_ops = {
	.open = imap_open,
	.data = imap_data,
	.timer = imap_timer,
	.shutdown = imap_shutdown,
	.drained = imap_drained,
	.tls_ready = imap_tls_ready,
	.close = imap_close,
	.alpn = "imap",
};
