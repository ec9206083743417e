/* pop3_session.c - the POP3 session (RFC 1939, CAPA and response codes of
 * RFC 2449, STLS of RFC 2595, AUTH PLAIN of RFC 5034).
 *
 * One struct pop3_session per connection, driven by stream.c. Lines are cut
 * by session_util's line reader and parsed by proto/pop3_parse.c; the state
 * machine and the command table follow smtp_session.c.
 *
 * The maildrop is the user's INBOX as it was at login: a store view taken
 * then, numbered 1..n. DELE marks, RSET unmarks, and only QUIT in the
 * TRANSACTION state removes the marked messages (store_expunge); its +OK is
 * sent from the expunge's callback, once the removal is durable. A session
 * that ends any other way removes nothing. One POP3 session per maildrop
 * (proto/pop3_lock.h); IMAP and deliveries are not affected by the lock.
 *
 * RETR and TOP stream the message: store_read() into a POP3_READ_CHUNK
 * buffer, byte-stuffed into a POP3_OUT_CHUNK buffer (one TLS record) and
 * sent; the next read waits until the socket has taken most of what is
 * queued (the stream's drained callback), so a message is never held whole
 * in memory. LIST and UIDL listings stream the same way. While a reply is
 * streamed, or the authenticator or the store works, input is paused:
 * pipelined commands (PIPELINING) wait their turn.
 *
 * Pending callbacks: the session counts store callbacks in flight
 * (pending); when the connection goes away first, it is marked dead and
 * freed by the last callback. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "proto/pop3_lock.h"
#include "proto/pop3_parse.h"
#include "proto/sasl.h"
#include "proto/services.h"
#include "proto/session_util.h"
#include "proto/stream.h"
#include "store/auth.h"
#include "store/store.h"

/* Bytes of a message read from the store at once. */
#define POP3_READ_CHUNK (64u * 1024u)
/* Bytes handed to the stream at once: one full TLS record. */
#define POP3_OUT_CHUNK (16u * 1024u)
/* A streamed reply waits for the socket while more than this is queued
 * (or a quarter of limits.send_queue_max when that is smaller). */
#define POP3_SEND_HIGH (256u * 1024u)
/* The longest USER name (RFC 5321 path limit). */
#define POP3_USER_MAX 320
/* A SASL PLAIN message, decoded. */
#define POP3_SASL_MAX SASL_BASE64_DECODED_MAX(POP3_AUTH_LINE_MAX)
/* limits.pop3_line_max goes up to 2100 (core/config.c, which cannot see
 * this header): every line must be read that far. */
_Static_assert(POP3_AUTH_LINE_MAX >= 2100, "raise POP3_AUTH_LINE_MAX or pop3_line_max's maximum");

enum pop3_state {
	POP3_S_AUTHORIZATION, /* before login (USER may have been given) */
	POP3_S_SASL,          /* AUTH PLAIN: waiting for the "+ " response */
	POP3_S_LOGIN,         /* the authenticator or the maildrop open works */
	POP3_S_TRANSACTION,
	POP3_S_SENDING,       /* a RETR/TOP/LIST/UIDL reply is streamed */
	POP3_S_UPDATE,        /* QUIT: the expunge runs */
	POP3_S_CLOSED,
};

#define ST(x) (1u << POP3_S_##x)

static const char *const state_names[] = {
	"authorization", "sasl", "login", "transaction", "sending", "update", "closed",
};

const char *pop3_state_str(enum pop3_state st);
const char *pop3_state_str(enum pop3_state st)
{
	return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

enum pop3_job { JOB_NONE, JOB_MSG, JOB_LIST, JOB_UIDL };

struct pop3_session {
	struct stream *s;
	struct services *sv;
	enum pop3_state state;
	struct line_reader lr;
	unsigned bad;              /* errors in a row, for max_bad_commands */
	unsigned pending;          /* store callbacks in flight (and holds) */
	bool dead;                 /* connection gone: free when pending is 0 */
	bool paused;               /* input paused (stream_pause) */
	bool out_blocked;          /* input paused until the send queue drains */
	bool tls_pending;          /* STLS accepted: parse nothing more */
	bool shutting_down;        /* close once the current reply is out */
	bool have_user;            /* USER given */
	char user[POP3_USER_MAX + 1]; /* USER's name; the canonical user once in */
	struct auth_req *auth_req;
	/* the maildrop (TRANSACTION) */
	struct pop3_lock *lock;
	struct store_user *su;
	struct store_folder *folder;
	struct store_view *view;
	uint32_t uidvalidity;
	size_t nmsgs;
	uint8_t *deleted;          /* nmsgs flags */
	size_t ndeleted;
	uint64_t total_bytes, deleted_bytes;
	uint32_t *expunge_uids;
	uint64_t retrieved;        /* messages sent by RETR, for the log */
	/* the reply being streamed */
	enum pop3_job job;
	size_t job_next;           /* LIST/UIDL: next index */
	uint32_t msg_uid;
	uint64_t msg_size, msg_off;
	bool msg_top, msg_started, msg_eof, wait_drain;
	size_t rpos, rlen;         /* bytes of rbuf not yet filtered */
	struct pop3_body body;
	uint8_t *rbuf;             /* POP3_READ_CHUNK + POP3_OUT_CHUNK */
	size_t olen;
};

static const struct config *cfg_of(struct pop3_session *ps) { return stream_config(ps->s); }

static void session_maybe_free(struct pop3_session *ps);

static void reply(struct pop3_session *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct pop3_session *ps, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	if (ps->dead)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	/* max_bad_commands counts errors in a row: a command answered +OK
	 * ends the run (as in Dovecot's pop3 and our IMAP), so a long-lived
	 * client with one quirk is not closed at its tenth in a day */
	if (strncmp(buf, "+OK", 3) == 0)
		ps->bad = 0;
	if ((size_t)n > sizeof(buf) - 3)
		n = sizeof(buf) - 3;
	buf[n++] = '\r';
	buf[n++] = '\n';
	stream_send(ps->s, buf, (size_t)n);
}

/* While a callback works on the session, a synchronous close (a full send
 * queue) must not free it under our feet: hold it, then release. release()
 * returns false when the session is gone. */
static void hold(struct pop3_session *ps) { ps->pending++; }
static bool release(struct pop3_session *ps)
{
	ps->pending--;
	if (ps->dead) {
		session_maybe_free(ps);
		return false;
	}
	return true;
}

static void session_close(struct pop3_session *ps, bool flush)
{
	if (ps->state == POP3_S_CLOSED || ps->dead)
		return;
	ps->state = POP3_S_CLOSED;
	stream_close(ps->s, flush);
}

static size_t send_high(struct pop3_session *ps)
{
	uint64_t q = cfg_of(ps)->send_queue_max / 4;
	return q < POP3_SEND_HIGH ? (size_t)q : POP3_SEND_HIGH;
}

/* Bytes of output filled before the send queue is checked again. The
 * queue is at most send_high() when a piece starts, so a piece must fit in
 * the rest of limits.send_queue_max (less an eighth for TLS records):
 * POP3_OUT_CHUNK unless the limit is small. */
static size_t out_piece(struct pop3_session *ps)
{
	uint64_t q = cfg_of(ps)->send_queue_max, high = send_high(ps);
	uint64_t room = q > high ? q - high : 0;
	room -= room / 8;
	if (room < 512)
		room = 512;
	return room < POP3_OUT_CHUNK ? (size_t)room : POP3_OUT_CHUNK;
}

/* Input flows only in the interactive states and while the send queue is
 * short. */
static void update_input(struct pop3_session *ps)
{
	if (ps->dead || ps->state == POP3_S_CLOSED)
		return;
	bool want = ps->out_blocked || ps->state == POP3_S_LOGIN ||
		    ps->state == POP3_S_SENDING || ps->state == POP3_S_UPDATE;
	if (want == ps->paused)
		return;
	ps->paused = want;
	if (want)
		stream_pause(ps->s);
	else
		stream_resume(ps->s);
}

static void arm_timer(struct pop3_session *ps)
{
	switch (ps->state) {
	case POP3_S_AUTHORIZATION:
	case POP3_S_SASL:
		stream_set_timer(ps->s, cfg_of(ps)->prelogin_timeout_ms);
		break;
	case POP3_S_TRANSACTION:
	case POP3_S_SENDING:
		stream_set_timer(ps->s, cfg_of(ps)->pop3_autologout_ms);
		break;
	default:
		stream_set_timer(ps->s, 0);
		break;
	}
}

static void enter_state(struct pop3_session *ps, enum pop3_state st)
{
	if (ps->state == POP3_S_CLOSED)
		return;
	ps->state = st;
	arm_timer(ps);
	update_input(ps);
}

/* A protocol error: the reply, and the session goes on unless there were
 * too many in a row. */
static void error_reply(struct pop3_session *ps, const char *text)
{
	reply(ps, "-ERR %s", text);
	if (++ps->bad >= cfg_of(ps)->max_bad_commands) {
		reply(ps, "-ERR Too many bad commands, closing connection");
		LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-too-many-errors",
		       "errors=%u", ps->bad);
		session_close(ps, true);
	}
}

static bool login_allowed(struct pop3_session *ps)
{
	return ps->sv && ps->sv->auth && ps->sv->store && !stream_tls_required(ps->s);
}

/* ---- the maildrop --------------------------------------------------------- */

static void maildrop_close(struct pop3_session *ps)
{
	store_view_free(&ps->view);
	store_folder_close(&ps->folder);
	store_user_close(&ps->su);
	pop3_lock_release(&ps->lock);
	free(ps->deleted);
	ps->deleted = NULL;
	ps->nmsgs = ps->ndeleted = 0;
	ps->total_bytes = ps->deleted_bytes = 0;
}

static void login_failed_sys(struct pop3_session *ps, int rc)
{
	LOG_AT(stream_log(ps->s), LOG_WARN, stream_sid(ps->s), "pop3-maildrop-error",
	       "user=%s error=%s", ps->user, strerror(-rc));
	maildrop_close(ps);
	ps->have_user = false;
	ps->user[0] = '\0';
	reply(ps, "-ERR [SYS/TEMP] Cannot open the maildrop, try again later");
	enter_state(ps, POP3_S_AUTHORIZATION);
}

static void folder_opened(void *arg, int res, struct store_folder *folder)
{
	struct pop3_session *ps = arg;
	if (ps->dead) {
		if (folder)
			store_folder_close(&folder);
		release(ps);
		return;
	}
	if (res < 0) {
		login_failed_sys(ps, res);
		release(ps);
		return;
	}
	ps->folder = folder;
	int rc = store_view_open(folder, &ps->view);
	if (rc) {
		login_failed_sys(ps, rc);
		release(ps);
		return;
	}
	struct store_folder_status st;
	store_view_status(ps->view, &st);
	ps->uidvalidity = st.uidvalidity;
	ps->nmsgs = store_view_count(ps->view);
	ps->deleted = calloc(ps->nmsgs ? ps->nmsgs : 1, 1);
	if (!ps->deleted) {
		login_failed_sys(ps, -ENOMEM);
		release(ps);
		return;
	}
	ps->total_bytes = 0;
	for (size_t i = 0; i < ps->nmsgs; i++)
		ps->total_bytes += store_view_msg(ps->view, i)->size;
	LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-login",
	       "user=%s messages=%zu bytes=%" PRIu64 " tls=%s", ps->user, ps->nmsgs,
	       ps->total_bytes, stream_is_tls(ps->s) ? "yes" : "no");
	reply(ps, "+OK Logged in, %zu messages (%" PRIu64 " octets)", ps->nmsgs, ps->total_bytes);
	enter_state(ps, POP3_S_TRANSACTION);
	release(ps);
}

static void user_opened(void *arg, int res, struct store_user *user)
{
	struct pop3_session *ps = arg;
	if (ps->dead) {
		if (user)
			store_user_close(&user);
		release(ps);
		return;
	}
	if (res < 0) {
		login_failed_sys(ps, res);
		release(ps);
		return;
	}
	ps->su = user;
	hold(ps);
	store_folder_open(user, stream_loop(ps->s), "INBOX", folder_opened, ps);
	release(ps);
}

static void auth_done(struct loop *loop, enum auth_result res, const char *user, void *arg)
{
	struct pop3_session *ps = arg;
	(void)loop;
	ps->auth_req = NULL;
	hold(ps);
	if (res != AUTH_OK) {
		ps->have_user = false;
		ps->user[0] = '\0';
		LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-auth", "result=%s",
		       auth_result_str(res));
		enter_state(ps, POP3_S_AUTHORIZATION);
		if (res == AUTH_TEMPFAIL)
			reply(ps, "-ERR [SYS/TEMP] Temporary authentication failure");
		else
			error_reply(ps, "[AUTH] Authentication failed");
		release(ps);
		return;
	}
	snprintf(ps->user, sizeof(ps->user), "%s", user);
	int rc = pop3_lock_acquire(ps->user, &ps->lock);
	if (rc) {
		LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-auth",
		       "result=%s user=%s", rc == -EBUSY ? "in-use" : "error", ps->user);
		ps->have_user = false;
		ps->user[0] = '\0';
		reply(ps, rc == -EBUSY ? "-ERR [IN-USE] maildrop already locked"
				       : "-ERR [SYS/TEMP] Cannot lock the maildrop");
		enter_state(ps, POP3_S_AUTHORIZATION);
		release(ps);
		return;
	}
	hold(ps);
	store_user_open(ps->sv->store, stream_loop(ps->s), ps->user, user_opened, ps);
	release(ps);
}

/* Starts checking a password; the reply comes from auth_done(). */
static void login_start(struct pop3_session *ps, struct span user, struct span pass)
{
	if (user.len == 0 || user.len > POP3_USER_MAX) {
		error_reply(ps, "[AUTH] Authentication failed");
		return;
	}
	int rc = auth_verify(ps->sv->auth, stream_loop(ps->s), user, pass, stream_peer(ps->s),
			     auth_done, ps, &ps->auth_req);
	if (rc) {
		reply(ps, "-ERR [SYS/TEMP] Temporary authentication failure");
		enter_state(ps, POP3_S_AUTHORIZATION);
		return;
	}
	enter_state(ps, POP3_S_LOGIN);
}

/* ---- AUTHORIZATION commands ---------------------------------------------- */

static bool tls_gate(struct pop3_session *ps)
{
	if (!stream_tls_required(ps->s))
		return true;
	error_reply(ps, "[AUTH] TLS required");
	return false;
}

static void cmd_user(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	if (!tls_gate(ps))
		return;
	struct span a = cmd->args;
	while (a.len && a.p[a.len - 1] == ' ')
		a.len--;
	if (a.len == 0 || a.len > POP3_USER_MAX || memchr(a.p, ' ', a.len)) {
		error_reply(ps, "Syntax: USER name");
		return;
	}
	memcpy(ps->user, a.p, a.len);
	ps->user[a.len] = '\0';
	ps->have_user = true;
	/* The same answer for every name: no enumeration of users. */
	reply(ps, "+OK");
}

static void cmd_pass(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	if (!tls_gate(ps))
		return;
	if (!ps->have_user) {
		error_reply(ps, "USER first");
		return;
	}
	if (!login_allowed(ps)) {
		reply(ps, "-ERR [SYS/TEMP] Login not available");
		return;
	}
	/* RFC 1939 7: the password is the rest of the line, spaces included. */
	login_start(ps, span_cstr(ps->user), cmd->args);
}

/* A base64 SASL PLAIN message, from AUTH or its "+ " continuation. */
static void auth_plain(struct pop3_session *ps, struct span b64)
{
	uint8_t buf[POP3_SASL_MAX];
	size_t len;
	struct span authzid, authcid, pass;

	ps->state = POP3_S_AUTHORIZATION;
	if (span_eq(b64, SPAN_LIT("=")))
		b64 = span_make(NULL, 0); /* RFC 5034 4: an empty initial response */
	if (sasl_base64_decode(b64, buf, sizeof(buf), &len) ||
	    sasl_plain_split(span_make(buf, len), &authzid, &authcid, &pass) ||
	    (authzid.len && !span_eq(authzid, authcid))) {
		/* Malformed, or proxy authorisation (not offered): the same
		 * answer as a wrong password. */
		explicit_bzero(buf, sizeof(buf));
		arm_timer(ps);
		error_reply(ps, "[AUTH] Authentication failed");
		return;
	}
	if (authcid.len > POP3_USER_MAX) {
		explicit_bzero(buf, sizeof(buf));
		arm_timer(ps);
		error_reply(ps, "[AUTH] Authentication failed");
		return;
	}
	memcpy(ps->user, authcid.p, authcid.len);
	ps->user[authcid.len] = '\0';
	ps->have_user = true;
	login_start(ps, authcid, pass);
	explicit_bzero(buf, sizeof(buf));
}

static void cmd_auth(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	if (!tls_gate(ps))
		return;
	if (!login_allowed(ps)) {
		reply(ps, "-ERR [SYS/TEMP] Login not available");
		return;
	}
	struct span a = cmd->args;
	while (a.len && a.p[a.len - 1] == ' ')
		a.len--;
	if (a.len == 0) {
		/* The pre-RFC 5034 listing some clients still ask for. */
		reply(ps, "+OK Mechanisms follow");
		reply(ps, "PLAIN");
		reply(ps, ".");
		return;
	}
	const uint8_t *sp = memchr(a.p, ' ', a.len);
	struct span mech = span_make(a.p, sp ? (size_t)(sp - a.p) : a.len);
	if (!span_eq_nocase(mech, SPAN_LIT("PLAIN"))) {
		error_reply(ps, "Unsupported authentication mechanism");
		return;
	}
	if (sp) {
		auth_plain(ps, span_skip(a, mech.len + 1));
		return;
	}
	ps->have_user = false;
	reply(ps, "+ ");
	enter_state(ps, POP3_S_SASL);
}

/* A line in POP3_S_SASL: the client's response to "+ ". */
static void sasl_response(struct pop3_session *ps, struct span line)
{
	if (span_eq(line, SPAN_LIT("*"))) {
		enter_state(ps, POP3_S_AUTHORIZATION);
		error_reply(ps, "Authentication aborted");
		return;
	}
	auth_plain(ps, line);
}

static void cmd_apop(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	(void)cmd;
	error_reply(ps, "APOP not supported");
}

static void cmd_stls(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	if (cmd->has_args && cmd->args.len) {
		error_reply(ps, "Syntax: STLS");
		return;
	}
	if (stream_is_tls(ps->s)) {
		error_reply(ps, "Command not permitted when TLS active");
		return;
	}
	if (!stream_can_starttls(ps->s)) {
		error_reply(ps, "TLS not available");
		return;
	}
	reply(ps, "+OK Begin TLS negotiation");
	if (stream_starttls(ps->s) == 0)
		ps->tls_pending = true;
}

/* RFC 2595 4: after the handshake the client starts over (CAPA again),
 * and nothing said before it counts. */
static void pop3_tls_ready(struct stream *s)
{
	struct pop3_session *ps = stream_session(s);
	ps->tls_pending = false;
	ps->have_user = false;
	ps->user[0] = '\0';
	ps->state = POP3_S_AUTHORIZATION;
	arm_timer(ps);
}

static void cmd_capa(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	(void)cmd;
	bool authz = ps->state == POP3_S_AUTHORIZATION;
	reply(ps, "+OK Capability list follows");
	reply(ps, "TOP");
	reply(ps, "UIDL");
	reply(ps, "RESP-CODES");
	reply(ps, "AUTH-RESP-CODE");
	reply(ps, "PIPELINING");
	if (authz && login_allowed(ps)) {
		reply(ps, "USER");
		reply(ps, "SASL PLAIN");
	}
	if (authz && stream_can_starttls(ps->s))
		reply(ps, "STLS");
	reply(ps, "IMPLEMENTATION ringmail");
	reply(ps, ".");
}

static void cmd_noop(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	(void)cmd;
	reply(ps, "+OK");
}

/* ---- TRANSACTION commands ------------------------------------------------ */

static uint64_t live_bytes(struct pop3_session *ps) { return ps->total_bytes - ps->deleted_bytes; }
static size_t live_count(struct pop3_session *ps) { return ps->nmsgs - ps->ndeleted; }

/* Parses a message number argument into an index. false: replied. */
static bool msg_index(struct pop3_session *ps, struct span arg, size_t *i_r)
{
	uint32_t n;
	if (pop3_parse_number(arg, &n)) {
		error_reply(ps, "Invalid message number");
		return false;
	}
	/* A number that names no message (or a deleted one) counts toward
	 * max_bad_commands, as in Dovecot's pop3: a client walking numbers
	 * it was never given is as broken as one sending unknown verbs. */
	if (n == 0 || n > ps->nmsgs) {
		error_reply(ps, "No such message");
		return false;
	}
	if (ps->deleted[n - 1]) {
		char text[64];
		snprintf(text, sizeof(text), "Message %" PRIu32 " already deleted", n);
		error_reply(ps, text);
		return false;
	}
	*i_r = n - 1;
	return true;
}

/* Splits the arguments; exactly min..max of them. false: replied. */
static bool args_of(struct pop3_session *ps, const struct pop3_cmd *cmd, struct span *out,
		    size_t min, size_t max, size_t *n_r, const char *syntax)
{
	if (pop3_parse_args(cmd->args, out, max, n_r) != POP3_PARSE_OK || *n_r < min) {
		error_reply(ps, syntax);
		return false;
	}
	return true;
}

static void cmd_stat(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n;
	if (!args_of(ps, cmd, a, 0, 0, &n, "Syntax: STAT"))
		return;
	reply(ps, "+OK %zu %" PRIu64, live_count(ps), live_bytes(ps));
}

static void listing_continue(struct pop3_session *ps);

static void listing_start(struct pop3_session *ps, enum pop3_job job)
{
	reply(ps, "+OK %zu messages (%" PRIu64 " octets)", live_count(ps), live_bytes(ps));
	ps->job = job;
	ps->job_next = 0;
	enter_state(ps, POP3_S_SENDING);
	listing_continue(ps);
}

static void job_end(struct pop3_session *ps)
{
	ps->job = JOB_NONE;
	ps->wait_drain = false;
	free(ps->rbuf);
	ps->rbuf = NULL;
	if (ps->shutting_down) {
		reply(ps, "-ERR [SYS/TEMP] Server shutting down");
		session_close(ps, true);
		return;
	}
	enter_state(ps, POP3_S_TRANSACTION);
}

/* Writes LIST/UIDL lines until done or the send queue is long. */
static void listing_continue(struct pop3_session *ps)
{
	char buf[4096];
	size_t len = 0, high = send_high(ps);

	while (ps->job_next < ps->nmsgs) {
		size_t i = ps->job_next++;
		if (ps->deleted[i])
			continue;
		const struct store_msg *m = store_view_msg(ps->view, i);
		int n = ps->job == JOB_UIDL
				? snprintf(buf + len, sizeof(buf) - len, "%zu %08" PRIx32 "%08" PRIx32 "\r\n",
					   i + 1, ps->uidvalidity, m->uid)
				: snprintf(buf + len, sizeof(buf) - len, "%zu %" PRIu64 "\r\n", i + 1,
					   m->size);
		len += (size_t)n;
		if (sizeof(buf) - len < 64) {
			stream_send(ps->s, buf, len);
			len = 0;
			if (ps->dead)
				return;
			if (stream_send_pending(ps->s) > high) {
				ps->wait_drain = true;
				return;
			}
		}
	}
	if (len)
		stream_send(ps->s, buf, len);
	reply(ps, ".");
	job_end(ps);
}

static void cmd_list(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n, i;
	if (!args_of(ps, cmd, a, 0, 1, &n, "Syntax: LIST [msg]"))
		return;
	if (n == 0) {
		listing_start(ps, JOB_LIST);
		return;
	}
	if (msg_index(ps, a[0], &i))
		reply(ps, "+OK %zu %" PRIu64, i + 1, store_view_msg(ps->view, i)->size);
}

static void cmd_uidl(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n, i;
	if (!args_of(ps, cmd, a, 0, 1, &n, "Syntax: UIDL [msg]"))
		return;
	if (n == 0) {
		listing_start(ps, JOB_UIDL);
		return;
	}
	/* Stable across sessions and compaction: UIDVALIDITY and UID. */
	if (msg_index(ps, a[0], &i))
		reply(ps, "+OK %zu %08" PRIx32 "%08" PRIx32, i + 1, ps->uidvalidity,
		      store_view_msg(ps->view, i)->uid);
}

static void cmd_dele(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n, i;
	if (!args_of(ps, cmd, a, 1, 1, &n, "Syntax: DELE msg"))
		return;
	if (!msg_index(ps, a[0], &i))
		return;
	ps->deleted[i] = 1;
	ps->ndeleted++;
	ps->deleted_bytes += store_view_msg(ps->view, i)->size;
	reply(ps, "+OK Message %zu deleted", i + 1);
}

static void cmd_rset(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n;
	if (!args_of(ps, cmd, a, 0, 0, &n, "Syntax: RSET"))
		return;
	memset(ps->deleted, 0, ps->nmsgs);
	ps->ndeleted = 0;
	ps->deleted_bytes = 0;
	reply(ps, "+OK %zu messages (%" PRIu64 " octets)", live_count(ps), live_bytes(ps));
}

/* ---- RETR and TOP ---------------------------------------------------------- */

static void msg_read(struct pop3_session *ps);

/* Hands the output buffer to the stream. */
static void out_flush(struct pop3_session *ps)
{
	if (ps->olen && !ps->dead)
		stream_send(ps->s, ps->rbuf + POP3_READ_CHUNK, ps->olen);
	ps->olen = 0;
}

static void out_put(struct pop3_session *ps, const void *p, size_t len)
{
	if (POP3_OUT_CHUNK - ps->olen < len)
		out_flush(ps);
	memcpy(ps->rbuf + POP3_READ_CHUNK + ps->olen, p, len);
	ps->olen += len;
}

static void msg_finish(struct pop3_session *ps)
{
	if (pop3_body_needs_crlf(&ps->body))
		out_put(ps, "\r\n", 2);
	out_put(ps, ".\r\n", 3);
	out_flush(ps);
	if (ps->dead)
		return;
	if (!ps->msg_top)
		ps->retrieved++;
	job_end(ps);
}

/* Filters what was read into the output buffer and sends it, stopping
 * (wait_drain) whenever the send queue is long; then finishes the reply or
 * reads on. Runs from the read callback and from the drained callback. */
static void msg_pump(struct pop3_session *ps)
{
	size_t high = send_high(ps), piece = out_piece(ps);
	while (ps->rpos < ps->rlen && !ps->body.done) {
		size_t olen;
		if (ps->olen >= piece) {
			out_flush(ps); /* only the status line can be there */
			if (ps->dead)
				return;
		}
		size_t used = pop3_body_filter(&ps->body,
					       span_make(ps->rbuf + ps->rpos, ps->rlen - ps->rpos),
					       ps->rbuf + POP3_READ_CHUNK + ps->olen,
					       piece - ps->olen, &olen);
		ps->olen += olen;
		ps->rpos += used;
		if (ps->rpos == ps->rlen || ps->body.done)
			break;
		out_flush(ps); /* the output buffer is full */
		if (ps->dead)
			return;
		if (stream_send_pending(ps->s) > high) {
			ps->wait_drain = true;
			return;
		}
	}
	if (ps->msg_eof || ps->body.done) {
		msg_finish(ps);
		return;
	}
	arm_timer(ps); /* progress: the autologout starts again */
	out_flush(ps);
	if (ps->dead)
		return;
	if (stream_send_pending(ps->s) > high)
		ps->wait_drain = true;
	else
		msg_read(ps);
}

static void msg_read_done(void *arg, ssize_t res)
{
	struct pop3_session *ps = arg;
	if (ps->dead) {
		release(ps);
		return;
	}
	if (res < 0) {
		LOG_AT(stream_log(ps->s), LOG_WARN, stream_sid(ps->s), "pop3-read-error",
		       "uid=%" PRIu32 " off=%" PRIu64 " error=%s", ps->msg_uid, ps->msg_off,
		       strerror((int)-res));
		if (ps->msg_started) {
			/* Half a message is on the wire: the only honest end. */
			session_close(ps, false);
		} else {
			reply(ps, res == -ENOENT ? "-ERR Message is gone"
						 : "-ERR [SYS/TEMP] Cannot read the message");
			job_end(ps);
		}
		release(ps);
		return;
	}
	if (!ps->msg_started) {
		char line[64];
		int n = ps->msg_top ? snprintf(line, sizeof(line), "+OK Top of message follows\r\n")
				    : snprintf(line, sizeof(line), "+OK %" PRIu64 " octets\r\n",
					       ps->msg_size);
		out_put(ps, line, (size_t)n);
		ps->msg_started = true;
	}
	ps->rpos = 0;
	ps->rlen = (size_t)res;
	ps->msg_off += (uint64_t)res;
	ps->msg_eof = res == 0 || ps->msg_off >= ps->msg_size;
	msg_pump(ps);
	release(ps);
}

static void msg_read(struct pop3_session *ps)
{
	uint64_t left = ps->msg_size - ps->msg_off;
	size_t len = left < POP3_READ_CHUNK ? (size_t)left : POP3_READ_CHUNK;
	if (len == 0)
		len = POP3_READ_CHUNK; /* let the store say where the end is */
	hold(ps);
	store_read(ps->folder, stream_loop(ps->s), ps->msg_uid, ps->msg_off, ps->rbuf, len,
		   msg_read_done, ps);
}

static void msg_start(struct pop3_session *ps, size_t i, bool top, uint32_t lines)
{
	const struct store_msg *m = store_view_msg(ps->view, i);
	if (!ps->rbuf && !(ps->rbuf = malloc(POP3_READ_CHUNK + POP3_OUT_CHUNK))) {
		reply(ps, "-ERR [SYS/TEMP] Out of memory");
		return;
	}
	ps->job = JOB_MSG;
	ps->msg_uid = m->uid;
	ps->msg_size = m->size;
	ps->msg_off = 0;
	ps->msg_top = top;
	ps->msg_started = false;
	ps->msg_eof = false;
	ps->olen = ps->rpos = ps->rlen = 0;
	pop3_body_init(&ps->body, top, lines);
	enter_state(ps, POP3_S_SENDING);
	if (m->size == 0) {
		hold(ps); /* msg_read_done() releases what msg_read() holds */
		msg_read_done(ps, 0); /* nothing to read: the reply at once */
		return;
	}
	msg_read(ps);
}

static void cmd_retr(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[1];
	size_t n, i;
	if (!args_of(ps, cmd, a, 1, 1, &n, "Syntax: RETR msg"))
		return;
	if (msg_index(ps, a[0], &i))
		msg_start(ps, i, false, 0);
}

static void cmd_top(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	struct span a[2];
	size_t n, i;
	uint32_t lines;
	if (!args_of(ps, cmd, a, 2, 2, &n, "Syntax: TOP msg lines"))
		return;
	if (pop3_parse_number(a[1], &lines) == -EINVAL) {
		error_reply(ps, "Invalid number of lines");
		return;
	}
	if (pop3_parse_number(a[1], &lines))
		lines = UINT32_MAX; /* more lines than any message has */
	if (msg_index(ps, a[0], &i))
		msg_start(ps, i, true, lines);
}

/* ---- QUIT -------------------------------------------------------------- */

static void expunge_done(void *arg, int res, uint64_t modseq)
{
	struct pop3_session *ps = arg;
	(void)modseq;
	free(ps->expunge_uids);
	ps->expunge_uids = NULL;
	if (ps->dead) {
		release(ps);
		return;
	}
	if (res < 0) {
		LOG_AT(stream_log(ps->s), LOG_WARN, stream_sid(ps->s), "pop3-expunge-error",
		       "user=%s error=%s", ps->user, strerror(-res));
		reply(ps, "-ERR [SYS/TEMP] Some deleted messages not removed");
	} else {
		LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-logout",
		       "user=%s retrieved=%" PRIu64 " deleted=%zu", ps->user, ps->retrieved,
		       ps->ndeleted);
		reply(ps, "+OK Logging out, %zu messages deleted", ps->ndeleted);
	}
	pop3_lock_release(&ps->lock); /* before the reply can reach the client */
	session_close(ps, true);
	release(ps);
}

static void cmd_quit(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	(void)cmd;
	if (ps->state != POP3_S_TRANSACTION || ps->ndeleted == 0) {
		if (ps->state == POP3_S_TRANSACTION)
			LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s), "pop3-logout",
			       "user=%s retrieved=%" PRIu64 " deleted=0", ps->user, ps->retrieved);
		/* The maildrop is free once QUIT is answered: a client that
		 * reconnects at once must not find it [IN-USE]. */
		pop3_lock_release(&ps->lock);
		reply(ps, "+OK ringmail signing off");
		session_close(ps, true);
		return;
	}
	/* The UPDATE state (RFC 1939 6): +OK only once the removal is
	 * durable. */
	ps->expunge_uids = malloc(ps->ndeleted * sizeof(*ps->expunge_uids));
	if (!ps->expunge_uids) {
		reply(ps, "-ERR [SYS/TEMP] Some deleted messages not removed");
		session_close(ps, true);
		return;
	}
	size_t k = 0;
	for (size_t i = 0; i < ps->nmsgs; i++)
		if (ps->deleted[i])
			ps->expunge_uids[k++] = store_view_msg(ps->view, i)->uid;
	enter_state(ps, POP3_S_UPDATE);
	hold(ps);
	store_expunge(ps->folder, stream_loop(ps->s), ps->expunge_uids, k, expunge_done, ps);
}

/* ---- the command table ----------------------------------------------- */

struct pop3_command {
	enum pop3_verb verb;
	unsigned states; /* where the command may be given */
	void (*proceed)(struct pop3_session *ps, const struct pop3_cmd *cmd);
};

static const struct pop3_command commands[] = {
	{ POP3_CMD_USER, ST(AUTHORIZATION), cmd_user },
	{ POP3_CMD_PASS, ST(AUTHORIZATION), cmd_pass },
	{ POP3_CMD_AUTH, ST(AUTHORIZATION), cmd_auth },
	{ POP3_CMD_APOP, ST(AUTHORIZATION), cmd_apop },
	{ POP3_CMD_STLS, ST(AUTHORIZATION), cmd_stls },
	{ POP3_CMD_CAPA, ST(AUTHORIZATION) | ST(TRANSACTION), cmd_capa },
	{ POP3_CMD_NOOP, ST(TRANSACTION), cmd_noop }, /* RFC 1939: not before login */
	{ POP3_CMD_QUIT, ST(AUTHORIZATION) | ST(TRANSACTION), cmd_quit },
	{ POP3_CMD_STAT, ST(TRANSACTION), cmd_stat },
	{ POP3_CMD_LIST, ST(TRANSACTION), cmd_list },
	{ POP3_CMD_RETR, ST(TRANSACTION), cmd_retr },
	{ POP3_CMD_DELE, ST(TRANSACTION), cmd_dele },
	{ POP3_CMD_RSET, ST(TRANSACTION), cmd_rset },
	{ POP3_CMD_TOP, ST(TRANSACTION), cmd_top },
	{ POP3_CMD_UIDL, ST(TRANSACTION), cmd_uidl },
};

static void dispatch(struct pop3_session *ps, const struct pop3_cmd *cmd)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (commands[i].verb != cmd->verb)
			continue;
		if (!(commands[i].states & (1u << ps->state))) {
			error_reply(ps, "Command not valid in this state");
			return;
		}
		commands[i].proceed(ps, cmd);
		return;
	}
	error_reply(ps, "Unknown command");
}

/* ---- the stream side ------------------------------------------------------ */

static int pop3_open(struct stream *s)
{
	struct pop3_session *ps = calloc(1, sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	ps->s = s;
	ps->sv = services_of(stream_loop(s));
	/* Every line is read up to the AUTH limit; lines of other commands
	 * over limits.pop3_line_max are refused after the verb is known. */
	ps->lr.max = POP3_AUTH_LINE_MAX;
	ps->state = POP3_S_AUTHORIZATION;
	stream_set_session(s, ps);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		reply(ps, "-ERR [SYS/TEMP] Too many connections, try again later");
		session_close(ps, true);
		return 0;
	}
	if (stream_tls_required(s) && stream_can_starttls(s))
		reply(ps, "+OK ringmail ready (STLS before login)");
	else
		reply(ps, "+OK ringmail ready");
	arm_timer(ps);
	return 0;
}

static ssize_t pop3_data(struct stream *s, struct span in)
{
	struct pop3_session *ps = stream_session(s);
	size_t pos = 0;
	struct span line;

	hold(ps);
	for (;;) {
		if (ps->dead || ps->state == POP3_S_CLOSED) {
			pos = in.len;
			break;
		}
		if (ps->state == POP3_S_LOGIN || ps->state == POP3_S_SENDING ||
		    ps->state == POP3_S_UPDATE)
			break;
		/* A pipelining client that does not read its replies waits for
		 * them to drain before more of its commands are parsed. */
		if (stream_send_pending(s) > send_high(ps)) {
			ps->out_blocked = true;
			update_input(ps);
			break;
		}
		enum line_result r = line_reader_next(&ps->lr, in, &pos, &line);
		if (r == LINE_AGAIN)
			break;
		arm_timer(ps);
		if (r == LINE_TOO_LONG) {
			if (ps->state == POP3_S_SASL)
				ps->state = POP3_S_AUTHORIZATION;
			error_reply(ps, "Line too long");
			continue;
		}
		if (ps->state == POP3_S_SASL) {
			sasl_response(ps, line);
			continue;
		}
		if (session_http_request_line(line)) {
			reply(ps, "-ERR This is a POP3 server");
			LOG_AT(stream_log(ps->s), LOG_INFO, stream_sid(ps->s),
			       "pop3-http-request", "closing=yes");
			session_close(ps, true);
			break;
		}
		struct pop3_cmd cmd;
		if (pop3_parse_command(line, &cmd) != POP3_PARSE_OK) {
			error_reply(ps, "Unknown command");
			continue;
		}
		/* RFC 2449 4: 255 octets (limits.pop3_line_max); AUTH (RFC
		 * 5034 4) and PASS (pass phrases) may be longer. */
		if (line.len + 2 > cfg_of(ps)->pop3_line_max && cmd.verb != POP3_CMD_AUTH &&
		    cmd.verb != POP3_CMD_PASS) {
			error_reply(ps, "Line too long");
			continue;
		}
		dispatch(ps, &cmd);
		if (ps->tls_pending) {
			/* Whatever came behind an accepted STLS is injected
			 * plaintext (CVE-2011-0411): never parsed here; stream.c
			 * discards and logs it. */
			break;
		}
	}
	if (!release(ps))
		return (ssize_t)in.len;
	return (ssize_t)pos;
}

static void pop3_drained(struct stream *s)
{
	struct pop3_session *ps = stream_session(s);
	hold(ps);
	if (ps->state == POP3_S_SENDING && ps->wait_drain) {
		ps->wait_drain = false;
		arm_timer(ps);
		if (ps->job == JOB_MSG)
			msg_pump(ps);
		else
			listing_continue(ps);
	}
	if (ps->out_blocked && !ps->dead) {
		ps->out_blocked = false;
		update_input(ps);
	}
	release(ps);
}

static void pop3_timer(struct stream *s)
{
	struct pop3_session *ps = stream_session(s);
	LOG_AT(stream_log(s), LOG_INFO, stream_sid(s), "pop3-timeout", "state=%s",
	       pop3_state_str(ps->state));
	if (ps->state == POP3_S_SENDING) {
		/* The client stopped reading mid-reply: nothing can follow. */
		session_close(ps, false);
		return;
	}
	/* RFC 1939 3: the autologout ends the session without UPDATE. */
	reply(ps, "-ERR Disconnected for inactivity");
	session_close(ps, true);
}

static void pop3_shutdown(struct stream *s)
{
	struct pop3_session *ps = stream_session(s);
	if (ps->state == POP3_S_SENDING) {
		ps->shutting_down = true; /* after this reply, within the grace */
		return;
	}
	if (ps->state == POP3_S_UPDATE)
		return; /* the expunge's reply closes */
	reply(ps, "-ERR [SYS/TEMP] Server shutting down");
	session_close(ps, true);
}

static void session_maybe_free(struct pop3_session *ps)
{
	if (!ps->dead || ps->pending)
		return;
	maildrop_close(ps);
	free(ps->expunge_uids);
	free(ps->rbuf);
	explicit_bzero(ps->user, sizeof(ps->user));
	free(ps);
}

static void pop3_close(struct stream *s)
{
	struct pop3_session *ps = stream_session(s);
	if (!ps)
		return;
	stream_set_session(s, NULL);
	if (ps->auth_req) {
		auth_cancel(ps->auth_req);
		ps->auth_req = NULL;
	}
	ps->dead = true;
	ps->state = POP3_S_CLOSED;
	session_maybe_free(ps);
}

const struct stream_ops pop3_session_ops = {
	.open = pop3_open,
	.data = pop3_data,
	.timer = pop3_timer,
	.shutdown = pop3_shutdown,
	.drained = pop3_drained,
	.tls_ready = pop3_tls_ready,
	.close = pop3_close,
	.alpn = "pop3",
};
