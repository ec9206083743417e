/* smtp_session.c - the SMTP session (RFC 5321 and its extensions).
 *
 * One struct smtp_session per connection, driven by stream.c. Commands are
 * parsed in place by proto/smtp_parse.c; the state machine and the command
 * table follow OpenSMTPD's smtp_session.c: each verb lists the states it is
 * allowed in, and its handler changes the session.
 *
 * Policy per listener (DESIGN.md): submission rows (465, 587) need AUTH
 * before MAIL and an envelope sender the user owns; MX rows (25, 26, 2025,
 * 2525) take mail for local domains from anyone and relay only after AUTH.
 *
 * Delivery: at DATA/BDAT the recipients' INBOXes are opened, the message
 * streams from the receive buffer into one store append for all of them,
 * and 250 is sent only once the store reports it durable in every INBOX.
 * While the store works, input is paused, so pipelined commands wait.
 * Remote recipients (of authenticated senders, and alias expansions to
 * remote addresses) go to the outbound queue (store/queue.h): the message
 * bytes are collected alongside the store append and written to the queue
 * at the end; 250 only once both the INBOXes and the queue are durable.
 * Without a queue they get a 4xx: nothing is ever accepted and dropped. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/config.h"
#include "core/log.h"
#include "outbound/dkim.h"
#include "outbound/dsn.h"
#include "proto/mime.h"
#include "proto/sasl.h"
#include "proto/services.h"
#include "proto/smtp_parse.h"
#include "proto/stream.h"
#include "store/auth.h"
#include "store/queue.h"
#include "store/store.h"
#include "store/users.h"

#define SMTP_PARAMS_MAX 16       /* ESMTP parameters per MAIL/RCPT */
#define SMTP_DATA_SPANS 64       /* output spans per smtp_data_feed() call */
#define SMTP_HELO_MAX 255
#define SMTP_ADDR_MAX 320        /* local 64 + @ + domain 255 */
/* Message bytes handed to the store per step: what the store cannot take
 * at once waits in the session's overflow buffer (bounded by this) while
 * input is paused. */
#define SMTP_FEED_STEP (64u * 1024u)

enum smtp_state {
	SMTP_S_GREETED,  /* needs HELO/EHLO */
	SMTP_S_READY,    /* no transaction */
	SMTP_S_MAIL,     /* MAIL accepted */
	SMTP_S_RCPT,     /* at least one RCPT accepted */
	SMTP_S_DATA,     /* message text after 354 */
	SMTP_S_BDAT,     /* reading a BDAT chunk */
	SMTP_S_BDAT_NEXT,/* between BDAT chunks */
	SMTP_S_AUTH,     /* waiting for a SASL response line */
	SMTP_S_BUSY,     /* the store or the authenticator works; input paused */
	SMTP_S_CLOSED,
};

#define ST(x) (1u << SMTP_S_##x)

static const char *const state_names[] = {
	"greeted", "ready", "mail", "rcpt", "data", "bdat", "bdat-next", "auth", "busy", "closed",
};

const char *smtp_state_str(enum smtp_state st);
const char *smtp_state_str(enum smtp_state st)
{
	return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

enum sasl_step { SASL_NONE, SASL_PLAIN, SASL_LOGIN_USER, SASL_LOGIN_PASS };

struct smtp_rcpt {
	char *addr;     /* the mailbox as given */
	unsigned notify;
	char *orcpt;    /* DSN ORCPT, kept as sent */
	/* NOTIFY=SUCCESS for a local address: the DSN Action we report once
	 * the message is accepted ("delivered", "expanded", "relayed"); NULL
	 * for none (a remote address: the queue carries its NOTIFY on). */
	const char *notice;
};

/* What is being delivered: one store append to every target's INBOX. */
struct smtp_delivery {
	char **targets;            /* canonical local users, unique */
	size_t ntargets, cap;
	struct store_user **users;
	struct store_folder **folders;
	size_t nopen;              /* opens that completed */
	int open_rc;               /* first open error */
	struct store_append *append;
	struct mime_scanner *mime; /* the structure IMAP needs, computed once */
	uint8_t *overflow;         /* bytes the store could not take yet */
	size_t overflow_len;
	int write_rc;
	bool finish_pending;       /* the message ended while overflow waited */
	struct smtp_data_state ds; /* DATA: end-of-data scanner */
	/* BDAT: the header section scanner */
	bool bdat;
	uint64_t bdat_left;
	bool bdat_last;
	uint64_t size;
	uint32_t hops;
	/* remote recipients: the message is also written to the queue */
	char **remote;
	size_t nremote, remote_cap;
	struct queue_spool *spool; /* the message streams to the queue file */
	struct dkim_signer *signer; /* fed the same bytes; NULL: no key */
	bool qwait;                /* the spool asked us to stop feeding */
	unsigned waiting;          /* store commit and queue write in flight */
	int final_rc;
	bool hdr_done, hdr_line_start, hdr_match_ok;
	uint8_t hdr_match;
	uint64_t hdr_size;
	/* NOTIFY=SUCCESS: the header section as stored, for the notice */
	bool notice_want, notice_hdr_done;
	uint8_t *notice_hdr;
	size_t notice_len;
};

struct smtp_session {
	struct stream *s;
	struct services *sv;
	enum smtp_state state;
	enum smtp_state resume_state;   /* after BUSY */
	char helo[SMTP_HELO_MAX + 1];
	bool esmtp;                      /* EHLO, not HELO: PIPELINING allowed */
	char user[SMTP_ADDR_MAX + 1];    /* authenticated user, "" when none */
	enum sasl_step sasl;
	char sasl_user[SASL_PLAIN_ID_MAX + 1];
	struct auth_req *auth_req;
	unsigned bad;                    /* errors, for max_bad_commands */
	unsigned auth_failures;
	bool skipping;                   /* inside an over-long line */
	bool dead;                       /* connection gone; free when idle */
	unsigned pending;                /* store callbacks in flight */
	/* envelope */
	char from[SMTP_ADDR_MAX + 1];
	bool from_null;
	bool smtputf8;
	enum smtp_body body;
	enum smtp_ret ret;
	char envid[SMTP_ENVID_MAX + 1];
	struct smtp_rcpt *rcpts;
	size_t nrcpts, rcpts_cap;
	unsigned msgs;                   /* messages delivered in this session */
	bool tls_pending;                /* STARTTLS accepted: parse nothing more */
	/* The greeting (RFC 5321 3.1 and 4.3.1): greet_final once its last
	 * line ("220 ") is queued, greeted once that is written to the socket
	 * (the stream drained). Input before that is early talk. */
	bool greet_pausing;              /* "220-" sent, limits.smtp_greet_pause runs */
	bool greet_final;
	bool greeted;
	bool shutting;                   /* the server stops: 421 after this message */
	struct smtp_delivery d;
};

static const struct config *cfg_of(struct smtp_session *ss) { return stream_config(ss->s); }
static const char *hostname(struct smtp_session *ss) { return cfg_of(ss)->hostname; }
static bool is_submission(struct smtp_session *ss)
{
	return stream_listener(ss->s)->role == ROLE_SUBMISSION;
}

static void reply(struct smtp_session *ss, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct smtp_session *ss, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 3)
		n = sizeof(buf) - 3;
	buf[n++] = '\r';
	buf[n++] = '\n';
	stream_send(ss->s, buf, (size_t)n);
}

static void session_close(struct smtp_session *ss)
{
	ss->state = SMTP_S_CLOSED;
	stream_close(ss->s, true);
}

/* A protocol error: the reply, and the session goes on unless there were
 * too many. */
static void error_reply(struct smtp_session *ss, const char *text)
{
	reply(ss, "%s", text);
	if (++ss->bad >= cfg_of(ss)->max_bad_commands) {
		reply(ss, "421 4.7.0 %s Error: too many errors", hostname(ss));
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-too-many-errors",
		       "errors=%u", ss->bad);
		session_close(ss);
	}
}

/* The timeout on the client's silence, re-armed by every byte it sends
 * (commands and message text alike). RFC 5321 4.5.3.2.7: a server waits
 * at least 5 minutes for the next command, and the MX rows do so from the
 * greeting on (a sending MTA is not a client to hurry). A submission row
 * offers nothing before AUTH but AUTH itself: there, as for IMAP and POP3,
 * the shorter pre-login timeout applies until the client has logged in. */
static void arm_timer(struct smtp_session *ss)
{
	const struct config *cfg = cfg_of(ss);
	uint32_t ms = cfg->smtp_timeout_ms;
	if (is_submission(ss) && !ss->user[0] && cfg->prelogin_timeout_ms < ms)
		ms = cfg->prelogin_timeout_ms;
	stream_set_timer(ss->s, ms);
}

/* ---- envelope ----------------------------------------------------------- */

static void delivery_reset(struct smtp_session *ss);

static void envelope_reset(struct smtp_session *ss)
{
	for (size_t i = 0; i < ss->nrcpts; i++) {
		free(ss->rcpts[i].addr);
		free(ss->rcpts[i].orcpt);
	}
	ss->nrcpts = 0;
	ss->from[0] = '\0';
	ss->from_null = false;
	ss->smtputf8 = false;
	ss->body = 0;
	ss->ret = 0;
	ss->envid[0] = '\0';
	delivery_reset(ss);
	if (ss->state >= SMTP_S_MAIL && ss->state <= SMTP_S_BDAT_NEXT)
		ss->state = SMTP_S_READY;
}

static int target_add(struct smtp_delivery *d, const char *user)
{
	for (size_t i = 0; i < d->ntargets; i++)
		if (!strcmp(d->targets[i], user))
			return 0;
	if (d->ntargets == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 4;
		char **t = realloc(d->targets, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		d->targets = t;
		d->cap = cap;
	}
	if (!(d->targets[d->ntargets] = strdup(user)))
		return -ENOMEM;
	d->ntargets++;
	return 0;
}

static int remote_add(struct smtp_delivery *d, const char *addr)
{
	for (size_t i = 0; i < d->nremote; i++)
		if (!strcmp(d->remote[i], addr))
			return 0;
	if (d->nremote == d->remote_cap) {
		size_t cap = d->remote_cap ? d->remote_cap * 2 : 4;
		char **t = realloc(d->remote, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		d->remote = t;
		d->remote_cap = cap;
	}
	if (!(d->remote[d->nremote] = strdup(addr)))
		return -ENOMEM;
	d->nremote++;
	return 0;
}

static void span_copy(char *dst, size_t cap, struct span s)
{
	size_t n = s.len < cap - 1 ? s.len : cap - 1;
	if (n)
		memcpy(dst, s.p, n);
	dst[n] = '\0';
}

/* ---- EHLO/HELO ------------------------------------------------------------ */

static bool helo_arg_ok(struct span a)
{
	if (a.len == 0 || a.len > SMTP_HELO_MAX)
		return false;
	for (size_t i = 0; i < a.len; i++) {
		uint8_t c = a.p[i];
		if (c <= 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

static bool auth_offered(struct smtp_session *ss)
{
	return ss->sv && ss->sv->auth && !stream_tls_required(ss->s);
}

static void cmd_helo(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	bool ehlo = cmd->verb == SMTP_CMD_EHLO;
	struct span arg = cmd->args;
	while (arg.len && arg.p[arg.len - 1] == ' ')
		arg.len--;
	if (!helo_arg_ok(arg)) {
		error_reply(ss, ehlo ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname");
		return;
	}
	span_copy(ss->helo, sizeof(ss->helo), arg);
	envelope_reset(ss);
	ss->state = SMTP_S_READY;
	ss->esmtp = ehlo;
	if (!ehlo) {
		reply(ss, "250 %s", hostname(ss));
		return;
	}
	char size[40];
	const char *ext[12];
	size_t n = 0;
	snprintf(size, sizeof(size), "SIZE %llu", (unsigned long long)cfg_of(ss)->message_size_max);
	ext[n++] = "PIPELINING";
	ext[n++] = size;
	if (stream_can_starttls(ss->s))
		ext[n++] = "STARTTLS";
	if (auth_offered(ss) && !ss->user[0])
		ext[n++] = "AUTH PLAIN LOGIN";
	ext[n++] = "ENHANCEDSTATUSCODES";
	ext[n++] = "8BITMIME";
	ext[n++] = "SMTPUTF8";
	ext[n++] = "CHUNKING";
	ext[n++] = "DSN";
	ext[n++] = "HELP";
	reply(ss, "250-%s Hello %.64s [%s]", hostname(ss), ss->helo, stream_peer(ss->s));
	for (size_t i = 0; i < n; i++)
		reply(ss, "250%c%s", i + 1 < n ? '-' : ' ', ext[i]);
}

/* ---- AUTH ---------------------------------------------------------------- */

static void auth_done(struct loop *loop, enum auth_result res, const char *user, void *arg);

static void sasl_reset(struct smtp_session *ss)
{
	ss->sasl = SASL_NONE;
	explicit_bzero(ss->sasl_user, sizeof(ss->sasl_user));
}

static void auth_start_verify(struct smtp_session *ss, struct span authcid, struct span pass)
{
	if (authcid.len == 0 || authcid.len > SASL_PLAIN_ID_MAX) {
		reply(ss, "535 5.7.8 Error: authentication failed");
		ss->auth_failures++;
		return;
	}
	int rc = auth_verify(ss->sv->auth, stream_loop(ss->s), authcid, pass, stream_peer(ss->s),
			     auth_done, ss, &ss->auth_req);
	if (rc) {
		reply(ss, "454 4.7.0 Temporary authentication failure");
		return;
	}
	ss->resume_state = ss->state == SMTP_S_AUTH ? SMTP_S_READY : ss->state;
	ss->state = SMTP_S_BUSY;
	stream_pause(ss->s);
	stream_set_timer(ss->s, 0);
}

static void auth_done(struct loop *loop, enum auth_result res, const char *user, void *arg)
{
	struct smtp_session *ss = arg;
	(void)loop;
	ss->auth_req = NULL;
	ss->state = ss->resume_state;
	sasl_reset(ss);
	if (res == AUTH_OK) {
		snprintf(ss->user, sizeof(ss->user), "%s", user);
		reply(ss, "235 2.7.0 Authentication successful");
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-auth",
		       "result=ok user=%s", ss->user);
	} else if (res == AUTH_TEMPFAIL) {
		reply(ss, "454 4.7.0 Temporary authentication failure");
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-auth",
		       "result=tempfail");
	} else {
		ss->auth_failures++;
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-auth",
		       "result=fail failures=%u", ss->auth_failures);
		error_reply(ss, "535 5.7.8 Error: authentication failed");
	}
	if (ss->state != SMTP_S_CLOSED) {
		arm_timer(ss);
		stream_resume(ss->s);
	}
}

/* A PLAIN message, base64-encoded. */
static void auth_plain(struct smtp_session *ss, struct span b64)
{
	uint8_t buf[SASL_BASE64_DECODED_MAX(SMTP_AUTH_LINE_MAX)];
	size_t len;
	struct span authzid, authcid, pass;

	if (sasl_base64_decode(b64, buf, sizeof(buf), &len) ||
	    sasl_plain_split(span_make(buf, len), &authzid, &authcid, &pass)) {
		explicit_bzero(buf, sizeof(buf));
		sasl_reset(ss);
		ss->state = SMTP_S_READY;
		error_reply(ss, "501 5.5.2 Error: invalid SASL PLAIN response");
		return;
	}
	ss->state = SMTP_S_READY;
	/* No proxy authorisation: authzid, when given, must be the user. */
	if (authzid.len && !span_eq(authzid, authcid)) {
		explicit_bzero(buf, sizeof(buf));
		sasl_reset(ss);
		ss->auth_failures++;
		error_reply(ss, "535 5.7.8 Error: authentication failed");
		return;
	}
	auth_start_verify(ss, authcid, pass);
	explicit_bzero(buf, sizeof(buf));
}

static void cmd_auth(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	struct span mech, initial;
	int has_initial = 0;

	if (!ss->sv || !ss->sv->auth) {
		error_reply(ss, "502 5.5.1 Error: authentication not enabled");
		return;
	}
	if (stream_tls_required(ss->s)) {
		error_reply(ss, "530 5.7.0 Must issue a STARTTLS command first");
		return;
	}
	if (ss->user[0]) {
		error_reply(ss, "503 5.5.1 Error: already authenticated");
		return;
	}
	if (ss->state != SMTP_S_READY) {
		error_reply(ss, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	if (smtp_parse_auth(cmd->args, &mech, &initial, &has_initial) != SMTP_PARSE_OK) {
		error_reply(ss, "501 5.5.4 Syntax: AUTH mechanism [initial-response]");
		return;
	}
	if (span_eq_nocase(mech, SPAN_LIT("PLAIN"))) {
		if (has_initial) {
			auth_plain(ss, initial);
			return;
		}
		ss->sasl = SASL_PLAIN;
		ss->state = SMTP_S_AUTH;
		reply(ss, "334 ");
	} else if (span_eq_nocase(mech, SPAN_LIT("LOGIN"))) {
		ss->state = SMTP_S_AUTH;
		if (has_initial) {
			size_t len;
			if (sasl_base64_decode(initial, (uint8_t *)ss->sasl_user,
					       sizeof(ss->sasl_user) - 1, &len) || len == 0 ||
			    memchr(ss->sasl_user, '\0', len)) {
				sasl_reset(ss);
				ss->state = SMTP_S_READY;
				error_reply(ss, "501 5.5.2 Error: invalid SASL LOGIN response");
				return;
			}
			ss->sasl_user[len] = '\0';
			ss->sasl = SASL_LOGIN_PASS;
			reply(ss, "334 UGFzc3dvcmQ6");
		} else {
			ss->sasl = SASL_LOGIN_USER;
			reply(ss, "334 VXNlcm5hbWU6");
		}
	} else {
		error_reply(ss, "504 5.5.4 Error: unsupported authentication mechanism");
	}
}

/* A line while in SMTP_S_AUTH: the client's SASL response. */
static void auth_response(struct smtp_session *ss, struct span line)
{
	if (span_eq(line, SPAN_LIT("*"))) {
		sasl_reset(ss);
		ss->state = SMTP_S_READY;
		error_reply(ss, "501 5.0.0 Authentication aborted");
		return;
	}
	switch (ss->sasl) {
	case SASL_PLAIN:
		auth_plain(ss, line);
		return;
	case SASL_LOGIN_USER: {
		size_t len;
		if (sasl_base64_decode(line, (uint8_t *)ss->sasl_user, sizeof(ss->sasl_user) - 1,
				       &len) ||
		    len == 0 || memchr(ss->sasl_user, '\0', len)) {
			sasl_reset(ss);
			ss->state = SMTP_S_READY;
			error_reply(ss, "501 5.5.2 Error: invalid SASL LOGIN response");
			return;
		}
		ss->sasl_user[len] = '\0';
		ss->sasl = SASL_LOGIN_PASS;
		reply(ss, "334 UGFzc3dvcmQ6");
		return;
	}
	case SASL_LOGIN_PASS: {
		uint8_t pass[SASL_BASE64_DECODED_MAX(SMTP_AUTH_LINE_MAX)];
		size_t len;
		if (sasl_base64_decode(line, pass, sizeof(pass), &len) || memchr(pass, '\0', len)) {
			explicit_bzero(pass, sizeof(pass));
			sasl_reset(ss);
			ss->state = SMTP_S_READY;
			error_reply(ss, "501 5.5.2 Error: invalid SASL LOGIN response");
			return;
		}
		ss->state = SMTP_S_READY;
		auth_start_verify(ss, span_cstr(ss->sasl_user), span_make(pass, len));
		explicit_bzero(pass, sizeof(pass));
		return;
	}
	default:
		sasl_reset(ss);
		ss->state = SMTP_S_READY;
		return;
	}
}

/* ---- MAIL / RCPT ---------------------------------------------------------- */

static const char *path_error(const struct smtp_path *p, bool rcpt)
{
	switch (p->reason) {
	case SMTP_PATH_ERR_PARAM:
	case SMTP_PATH_ERR_TOO_MANY_PARAMS:
		return "555 5.5.4 Error: malformed parameters";
	case SMTP_PATH_ERR_LOCAL_TOO_LONG:
	case SMTP_PATH_ERR_DOMAIN_TOO_LONG:
	case SMTP_PATH_ERR_PATH_TOO_LONG:
		return rcpt ? "553 5.1.3 Error: address too long" : "553 5.1.7 Error: address too long";
	case SMTP_PATH_ERR_NULL_RCPT:
		return "501 5.1.3 Error: null recipient";
	default:
		return rcpt ? "501 5.1.3 Error: bad recipient address syntax"
			    : "501 5.1.7 Error: bad sender address syntax";
	}
}

static void cmd_mail(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	struct smtp_path path;
	struct smtp_param params[SMTP_PARAMS_MAX];
	size_t nparams = 0;

	if (ss->state == SMTP_S_GREETED) {
		error_reply(ss, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	if (ss->state != SMTP_S_READY) {
		error_reply(ss, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (is_submission(ss) && !ss->user[0]) {
		error_reply(ss, stream_tls_required(ss->s)
					? "530 5.7.0 Must issue a STARTTLS command first"
					: "530 5.7.0 Authentication required");
		return;
	}
	if (smtp_parse_path(cmd->args, SMTP_CMD_MAIL, &path, params, SMTP_PARAMS_MAX, &nparams) !=
	    SMTP_PARSE_OK) {
		error_reply(ss, path_error(&path, false));
		return;
	}
	bool utf8 = false;
	enum smtp_body body = 0;
	enum smtp_ret ret = 0;
	struct span envid = { 0 };
	for (size_t i = 0; i < nparams; i++) {
		const struct smtp_param *p = &params[i];
		uint64_t size;
		enum smtp_parse_result r;
		switch (smtp_param_kind(p->keyword)) {
		case SMTP_PARAM_SIZE:
			r = smtp_param_size(p, &size);
			if (r == SMTP_PARSE_TOO_LONG || (r == SMTP_PARSE_OK &&
							 size > cfg_of(ss)->message_size_max)) {
				error_reply(ss, "552 5.3.4 Error: message size exceeds fixed limit");
				return;
			}
			if (r != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad SIZE parameter");
				return;
			}
			break;
		case SMTP_PARAM_BODY:
			if (smtp_param_body(p, &body) != SMTP_PARSE_OK || body == SMTP_BODY_BINARYMIME) {
				error_reply(ss, "501 5.5.4 Error: bad BODY parameter");
				return;
			}
			break;
		case SMTP_PARAM_SMTPUTF8:
			if (smtp_param_smtputf8(p) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad SMTPUTF8 parameter");
				return;
			}
			utf8 = true;
			break;
		case SMTP_PARAM_RET:
			if (smtp_param_ret(p, &ret) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad RET parameter");
				return;
			}
			break;
		case SMTP_PARAM_ENVID:
			if (smtp_param_envid(p) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad ENVID parameter");
				return;
			}
			envid = p->value;
			break;
		case SMTP_PARAM_AUTH:
			if (smtp_param_auth(p) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad AUTH parameter");
				return;
			}
			break;
		default:
			error_reply(ss, "555 5.5.4 Error: unsupported parameter");
			return;
		}
	}
	if (((path.flags & SMTP_PATH_UTF8) || (path.flags & SMTP_PATH_PARAM_UTF8)) && !utf8) {
		error_reply(ss, "553 5.6.7 Error: must declare SMTPUTF8 to send a UTF-8 address");
		return;
	}
	if (ss->user[0] && !(path.flags & SMTP_PATH_NULL) && ss->sv && ss->sv->users &&
	    !users_may_send_as(ss->sv->users, span_cstr(ss->user), path.mailbox)) {
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-sender-mismatch",
		       "user=%s", ss->user);
		error_reply(ss, "553 5.7.1 Error: sender address not owned by the authenticated user");
		return;
	}
	envelope_reset(ss);
	span_copy(ss->from, sizeof(ss->from), path.mailbox);
	ss->from_null = (path.flags & SMTP_PATH_NULL) != 0;
	ss->smtputf8 = utf8;
	ss->body = body;
	ss->ret = ret;
	span_copy(ss->envid, sizeof(ss->envid), envid);
	ss->state = SMTP_S_MAIL;
	reply(ss, "250 2.1.0 Ok");
}

/* Open-relay tricks: a local part that routes (% !), a source route, a
 * quoted local part holding '@', an address literal. Never for clients
 * that did not authenticate. */
static bool relay_trick(const struct smtp_path *p)
{
	return p->flags & (SMTP_PATH_PERCENT | SMTP_PATH_BANG | SMTP_PATH_ROUTE |
			   SMTP_PATH_QUOTED_AT | SMTP_PATH_LITERAL);
}

struct resolve_ctx {
	struct smtp_session *ss;
	int rc;
	bool remote;
	bool queued;
};

static void resolve_target(void *arg, const char *target)
{
	struct resolve_ctx *rc = arg;
	const char *at = strrchr(target, '@');
	if (!at || !users_is_local_domain(rc->ss->sv->users, span_cstr(at + 1))) {
		/* An alias expanding to a remote address: forwarded through the
		 * outbound queue when there is one. */
		if (at && rc->ss->sv->queue) {
			if (remote_add(&rc->ss->d, target))
				rc->rc = -ENOMEM;
			rc->queued = true;
			return;
		}
		rc->remote = true;
		return;
	}
	if (target_add(&rc->ss->d, target))
		rc->rc = -ENOMEM;
}

static void cmd_rcpt(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	struct smtp_path path;
	struct smtp_param params[SMTP_PARAMS_MAX];
	size_t nparams = 0;
	char addr[SMTP_ADDR_MAX + 1];

	if (ss->state != SMTP_S_MAIL && ss->state != SMTP_S_RCPT) {
		error_reply(ss, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (ss->nrcpts >= cfg_of(ss)->recipients_max) {
		reply(ss, "452 4.5.3 Error: too many recipients");
		return;
	}
	if (smtp_parse_path(cmd->args, SMTP_CMD_RCPT, &path, params, SMTP_PARAMS_MAX, &nparams) !=
	    SMTP_PARSE_OK) {
		error_reply(ss, path_error(&path, true));
		return;
	}
	unsigned notify = 0;
	struct span orcpt = { 0 };
	for (size_t i = 0; i < nparams; i++) {
		const struct smtp_param *p = &params[i];
		struct span type, xaddr;
		switch (smtp_param_kind(p->keyword)) {
		case SMTP_PARAM_NOTIFY:
			if (smtp_param_notify(p, &notify) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad NOTIFY parameter");
				return;
			}
			break;
		case SMTP_PARAM_ORCPT:
			if (smtp_param_orcpt(p, &type, &xaddr) != SMTP_PARSE_OK) {
				error_reply(ss, "501 5.5.4 Error: bad ORCPT parameter");
				return;
			}
			orcpt = p->value;
			break;
		default:
			error_reply(ss, "555 5.5.4 Error: unsupported parameter");
			return;
		}
	}
	if ((path.flags & SMTP_PATH_UTF8) && !ss->smtputf8) {
		error_reply(ss, "553 5.6.7 Error: must declare SMTPUTF8 to send a UTF-8 address");
		return;
	}
	if (!ss->user[0] && relay_trick(&path)) {
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-relay-trick",
		       "flags=0x%x", path.flags);
		error_reply(ss, "550 5.7.1 Error: relay access denied");
		return;
	}
	if (path.flags & SMTP_PATH_POSTMASTER)
		snprintf(addr, sizeof(addr), "postmaster@%s", cfg_of(ss)->domains[0]);
	else
		span_copy(addr, sizeof(addr), path.mailbox);

	const char *at = strrchr(addr, '@');
	bool local = at && ss->sv && ss->sv->users &&
		     users_is_local_domain(ss->sv->users, span_cstr(at + 1));
	if (!local && ss->user[0] && ss->sv && ss->sv->queue && !relay_trick(&path)) {
		if (remote_add(&ss->d, addr)) {
			reply(ss, "451 4.3.0 Error: out of memory");
			return;
		}
	} else if (!local) {
		if (ss->user[0]) {
			/* Authenticated relaying needs the outbound queue, which does
			 * not exist yet: a temporary failure, never accept-and-drop. */
			reply(ss, "451 4.4.0 <%s>: relaying to remote domains is not available yet", addr);
			return;
		}
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-relay-denied",
		       "peer=%s", stream_peer(ss->s));
		error_reply(ss, "554 5.7.1 Error: relay access denied");
		return;
	}
	const char *notice = NULL;
	if (local) {
	struct resolve_ctx rc = { .ss = ss };
	size_t before = ss->d.ntargets;
	int n = users_resolve(ss->sv->users, span_cstr(addr), resolve_target, &rc);
	if (n == -ENOENT) {
		error_reply(ss, "550 5.1.1 Error: recipient address rejected: user unknown");
		return;
	}
	if (n < 0 || rc.rc) {
		reply(ss, "451 4.3.0 Error: temporary failure resolving the recipient");
		return;
	}
	if (rc.remote && !rc.queued && ss->d.ntargets == before) {
		reply(ss, "451 4.4.0 <%s>: forwarding to remote domains is not available yet", addr);
		return;
	}
	/* RFC 3461 6.2.7: one mailbox here is "delivered"; an alias of several
	 * targets "expanded"; a forward to another domain "relayed" (the
	 * forward carries no NOTIFY on). */
	if (notify & SMTP_NOTIFY_SUCCESS)
		notice = n > 1 ? "expanded" : rc.queued ? "relayed" : "delivered";
	}
	if (ss->nrcpts == ss->rcpts_cap) {
		size_t cap = ss->rcpts_cap ? ss->rcpts_cap * 2 : 8;
		struct smtp_rcpt *r = realloc(ss->rcpts, cap * sizeof(*r));
		if (!r) {
			reply(ss, "451 4.3.0 Error: out of memory");
			return;
		}
		ss->rcpts = r;
		ss->rcpts_cap = cap;
	}
	struct smtp_rcpt *r = &ss->rcpts[ss->nrcpts];
	r->addr = strdup(addr);
	r->notify = notify;
	r->notice = notice;
	r->orcpt = orcpt.len ? strndup((const char *)orcpt.p, orcpt.len) : NULL;
	if (!r->addr) {
		free(r->orcpt);
		reply(ss, "451 4.3.0 Error: out of memory");
		return;
	}
	ss->nrcpts++;
	ss->state = SMTP_S_RCPT;
	reply(ss, "250 2.1.5 Ok");
}

/* ---- delivery ----------------------------------------------------------- */

static void session_maybe_free(struct smtp_session *ss);

static void delivery_reset(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	if (d->append)
		store_append_abort(&d->append);
	for (size_t i = 0; i < d->ntargets; i++) {
		if (d->folders && d->folders[i])
			store_folder_close(&d->folders[i]);
		if (d->users && d->users[i])
			store_user_close(&d->users[i]);
		free(d->targets[i]);
	}
	free(d->targets);
	for (size_t i = 0; i < d->nremote; i++)
		free(d->remote[i]);
	free(d->remote);
	queue_spool_abort(&d->spool);
	if (d->signer)
		dkim_signer_abort(d->signer);
	free(d->users);
	free(d->folders);
	free(d->overflow);
	free(d->mime);
	free(d->notice_hdr);
	memset(d, 0, sizeof(*d));
}

static void delivery_opened(struct smtp_session *ss);

static void folder_opened(void *arg, int res, struct store_folder *folder);

struct open_req {
	struct smtp_session *ss;
	size_t i;
};

static void user_opened(void *arg, int res, struct store_user *user)
{
	struct open_req *or = arg;
	struct smtp_session *ss = or->ss;
	ss->pending--;
	if (ss->dead) {
		if (user)
			store_user_close(&user);
		free(or);
		session_maybe_free(ss);
		return;
	}
	if (res < 0) {
		if (!ss->d.open_rc)
			ss->d.open_rc = res;
		free(or);
		ss->d.nopen++;
		if (ss->d.nopen == ss->d.ntargets)
			delivery_opened(ss);
		return;
	}
	ss->d.users[or->i] = user;
	ss->pending++;
	store_folder_open(user, stream_loop(ss->s), "INBOX", folder_opened, or);
}

static void folder_opened(void *arg, int res, struct store_folder *folder)
{
	struct open_req *or = arg;
	struct smtp_session *ss = or->ss;
	size_t i = or->i;
	free(or);
	ss->pending--;
	if (ss->dead) {
		if (folder)
			store_folder_close(&folder);
		session_maybe_free(ss);
		return;
	}
	if (res < 0 && !ss->d.open_rc)
		ss->d.open_rc = res;
	ss->d.folders[i] = folder;
	ss->d.nopen++;
	if (ss->d.nopen == ss->d.ntargets)
		delivery_opened(ss);
}

/* Opens every target's INBOX, then delivery_opened(). Input is paused. */
static void delivery_open(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	ss->resume_state = ss->state;
	ss->state = SMTP_S_BUSY;
	stream_pause(ss->s);
	stream_set_timer(ss->s, 0);
	if (d->ntargets == 0) {
		/* Remote recipients only: nothing to open. */
		delivery_opened(ss);
		return;
	}
	d->users = calloc(d->ntargets, sizeof(*d->users));
	d->folders = calloc(d->ntargets, sizeof(*d->folders));
	if (!d->users || !d->folders || !ss->sv->store) {
		d->open_rc = -ENOMEM;
		d->nopen = d->ntargets;
		delivery_opened(ss);
		return;
	}
	size_t n = d->ntargets;
	for (size_t i = 0; i < n; i++) {
		struct open_req *or = malloc(sizeof(*or));
		if (!or) {
			if (!d->open_rc)
				d->open_rc = -ENOMEM;
			if (++d->nopen == n)
				delivery_opened(ss);
			continue;
		}
		*or = (struct open_req){ ss, i };
		ss->pending++;
		store_user_open(ss->sv->store, stream_loop(ss->s), d->targets[i], user_opened, or);
	}
}

static void store_ready(void *arg);
static size_t bdat_data(struct smtp_session *ss, struct span in);
static void delivery_finish(struct smtp_session *ss);

/* NOTIFY=SUCCESS: the notice quotes the header section as stored, bounded
 * like a bounce's. */
#define NOTICE_HDR_MAX (64u * 1024u)

static void notice_feed(struct smtp_delivery *d, struct span c)
{
	if (!d->notice_want || d->notice_hdr_done || !c.len)
		return;
	if (!d->notice_hdr && !(d->notice_hdr = malloc(NOTICE_HDR_MAX))) {
		d->notice_hdr_done = true; /* the notice goes without the header */
		return;
	}
	size_t take = c.len < NOTICE_HDR_MAX - d->notice_len ? c.len : NOTICE_HDR_MAX - d->notice_len;
	size_t from = d->notice_len > 3 ? d->notice_len - 3 : 0;
	memcpy(d->notice_hdr + d->notice_len, c.p, take);
	d->notice_len += take;
	size_t h = dsn_header_len(d->notice_hdr + from, d->notice_len - from);
	if (h < d->notice_len - from) {
		d->notice_len = from + h;
		d->notice_hdr_done = true;
	} else if (d->notice_len == NOTICE_HDR_MAX) {
		d->notice_hdr_done = true;
	}
}

/* The message is accepted (250 sent): the success notice for the local
 * recipients that asked for one (RFC 3461 5.2.2 and 6.2.7), queued to the
 * envelope sender like a bounce. Best effort: a failure is logged. */
static void send_success_notice(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	const struct config *cfg = cfg_of(ss);
	struct dsn_rcpt *rr = calloc(ss->nrcpts, sizeof(*rr));
	size_t n = 0, len = 0;
	char *text = NULL;
	int rc = -ENOMEM;
	if (!ss->sv->queue) {
		rc = -ENOSYS;
		goto out;
	}
	if (!rr)
		goto out;
	for (size_t i = 0; i < ss->nrcpts; i++) {
		const struct smtp_rcpt *r = &ss->rcpts[i];
		if (!r->notice)
			continue;
		rr[n++] = (struct dsn_rcpt){
			.addr = r->addr, .orcpt = r->orcpt, .action = r->notice, .status = "2.0.0",
			.note = r->notice[0] == 'd'   ? "delivered to the mailbox"
				: r->notice[0] == 'e' ? "delivered to the members of this list"
						      : "forwarded to a system that sends no notices",
		};
	}
	char id[64];
	snprintf(id, sizeof(id), "%llx.%u", (unsigned long long)stream_sid(ss->s), ss->msgs);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	struct dsn_msg m = {
		.hostname = cfg->hostname,
		.to = ss->from,
		.envid = ss->envid[0] ? ss->envid : NULL,
		.id = id,
		.kind = "success",
		.subject = "Successful Mail Delivery Report",
		.intro = "Your message was delivered to the recipients below.",
		.arrival_ms = (int64_t)now.tv_sec * 1000,
		.orig = d->notice_hdr,
		.orig_len = d->notice_hdr ? d->notice_len : 0,
	};
	if (!(text = dsn_format(&m, rr, n, &len)))
		goto out;
	char *sig = dsn_sign(atomic_load_explicit(&ss->sv->dkim, memory_order_acquire),
			     cfg->hostname, text, len);
	struct queue_rcpt_in rin = { .addr = ss->from };
	struct queue_env env = { .from = "", .rcpts = &rin, .nrcpts = 1 };
	rc = queue_submit(ss->sv->queue, stream_loop(ss->s), &env, text, len, sig, NULL, NULL);
	free(sig);
out:
	if (rc)
		LOG_AT(stream_log(ss->s), LOG_WARN, stream_sid(ss->s), "smtp-dsn-failed",
		       "kind=success to=<%s> error=%s", ss->from, strerror(-rc));
	else
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-dsn",
		       "kind=success to=<%s> rcpts=%zu", ss->from, n);
	free(text);
	free(rr);
}

static void store_error_reply(struct smtp_session *ss, int rc)
{
	if (rc == -EDQUOT)
		reply(ss, "452 4.2.2 Error: mailbox full");
	else if (rc == -EFBIG)
		reply(ss, "552 5.3.4 Error: message too big");
	else
		reply(ss, "451 4.3.0 Error: local delivery failed, try again later");
	LOG_AT(stream_log(ss->s), LOG_WARN, stream_sid(ss->s), "smtp-store-error", "error=%s",
	       strerror(-rc));
}

/* The queue spool can take more: go on reading unless the store still
 * holds bytes back. */
static void queue_ready(void *arg)
{
	struct smtp_session *ss = arg;
	ss->d.qwait = false;
	if (!ss->dead && !ss->d.overflow_len && !ss->d.finish_pending && ss->state != SMTP_S_BUSY) {
		arm_timer(ss);
		stream_resume(ss->s);
	}
}

/* Starts writing the message to the outbound queue, and the DKIM signer
 * for the sender's domain over the same bytes. */
static int queue_begin(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	struct queue_rcpt_in *rin = calloc(d->nremote, sizeof(*rin));
	if (!rin)
		return -ENOMEM;
	for (size_t i = 0; i < d->nremote; i++) {
		rin[i].addr = d->remote[i];
		/* The DSN parameters of the RCPT that named it (none for an
		 * alias's expansion). */
		for (size_t k = 0; k < ss->nrcpts; k++)
			if (!strcasecmp(ss->rcpts[k].addr, d->remote[i])) {
				rin[i].notify = ss->rcpts[k].notify;
				const char *o = ss->rcpts[k].orcpt;
				rin[i].orcpt = o && strlen(o) < QUEUE_XTEXT_MAX ? o : NULL;
				break;
			}
	}
	struct queue_env env = {
		.from = ss->from_null ? "" : ss->from,
		.envid = ss->envid[0] ? ss->envid : NULL,
		.ret = ss->ret == SMTP_RET_HDRS	  ? QUEUE_RET_HDRS
		       : ss->ret == SMTP_RET_FULL ? QUEUE_RET_FULL
						  : QUEUE_RET_DEFAULT,
		.rcpts = rin,
		.nrcpts = d->nremote,
	};
	int rc = queue_spool_begin(ss->sv->queue, stream_loop(ss->s), &env, queue_ready, ss,
				   &d->spool);
	free(rin);
	if (rc)
		return rc == -ENOMEM ? -ENOMEM : -EAGAIN;
	const char *at = strrchr(ss->from, '@');
	struct dkim *dk = atomic_load_explicit(&ss->sv->dkim, memory_order_acquire);
	if (!ss->from_null && at && dk)
		d->signer = dkim_signer_begin(dk, at + 1);
	return 0;
}

/* Gives bytes to the outbound queue (and the signer). Input pauses while
 * the spool's buffer is full: only a bounded part of the message is ever
 * in memory. */
static int queue_put(struct smtp_session *ss, struct span chunk)
{
	struct smtp_delivery *d = &ss->d;
	if (d->signer)
		dkim_signer_feed(d->signer, chunk.p, chunk.len);
	int rc = queue_spool_write(d->spool, chunk.p, chunk.len);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		d->qwait = true;
		stream_pause(ss->s);
		stream_set_timer(ss->s, 0); /* we hold the client back, not it us */
	}
	return 0;
}

/* The Return-Path: field a final delivery puts first (RFC 5321 4.4: the
 * envelope sender, "<>" for a bounce). Only the local copy gets it: mail
 * relayed on is not at its final delivery, and its DKIM signature does not
 * cover the field. */
static int write_return_path(struct smtp_session *ss)
{
	char buf[SMTP_ADDR_MAX + 32];
	int n = snprintf(buf, sizeof(buf), "Return-Path: <%s>\r\n", ss->from_null ? "" : ss->from);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -ENAMETOOLONG;
	mime_scan_feed(ss->d.mime, span_make(buf, (size_t)n));
	ssize_t w = store_append_write(ss->d.append, span_make(buf, (size_t)n));
	if (w < 0)
		return (int)w;
	return (size_t)w < (size_t)n ? -ENOBUFS : 0; /* the buffer is far larger */
}

/* Writes the Received: header (RFC 5321 4.4, with the TLS and AUTH
 * details RFC 8314 7.4 suggests), behind the local copy's Return-Path. */
static int write_received(struct smtp_session *ss)
{
	char buf[1024], date[64];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	const char *with = ss->esmtp ? (stream_is_tls(ss->s) ? (ss->user[0] ? "ESMTPSA" : "ESMTPS")
							       : (ss->user[0] ? "ESMTPA" : "ESMTP"))
				     : "SMTP";
	int n = snprintf(buf, sizeof(buf), "Received: from %s ([%s])\r\n\tby %s (ringmail) with %s",
			 ss->helo, stream_peer(ss->s), hostname(ss), with);
	if (stream_is_tls(ss->s))
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\t(version=%s cipher=%s)",
			      stream_tls_version(ss->s), stream_tls_cipher(ss->s));
	if (ss->user[0])
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\t(authenticated as %s)", ss->user);
	n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\tid %llx.%u", 
		      (unsigned long long)stream_sid(ss->s), ss->msgs + 1);
	if (ss->nrcpts == 1)
		n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\tfor <%s>", ss->rcpts[0].addr);
	n += snprintf(buf + n, sizeof(buf) - (size_t)n, "; %s\r\n", date);
	if ((size_t)n >= sizeof(buf))
		return -ENAMETOOLONG;
	if (ss->d.append) {
		int rc = write_return_path(ss);
		if (rc)
			return rc;
	}
	mime_scan_feed(ss->d.mime, span_make(buf, (size_t)n));
	notice_feed(&ss->d, span_make(buf, (size_t)n));
	if (ss->d.spool) {
		int rc = queue_put(ss, span_make(buf, (size_t)n));
		if (rc)
			return rc;
	}
	if (!ss->d.append)
		return 0;
	ssize_t w = store_append_write(ss->d.append, span_make(buf, (size_t)n));
	if (w < 0)
		return (int)w;
	if ((size_t)w < (size_t)n) {
		/* The append buffer is far larger than one header line. */
		return -ENOBUFS;
	}
	return 0;
}

static void delivery_opened(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	int rc = d->open_rc;
	if (!rc && !(d->mime = malloc(sizeof(*d->mime))))
		rc = -ENOMEM;
	if (!rc) {
		mime_scan_init(d->mime);
		mime_scan_limits(d->mime, cfg_of(ss)->mime_depth_max, cfg_of(ss)->mime_parts_max);
	}
	for (size_t i = 0; i < ss->nrcpts && !ss->from_null; i++)
		d->notice_want |= ss->rcpts[i].notice != NULL;
	if (!rc && d->nremote)
		rc = queue_begin(ss);
	if (!rc && d->ntargets)
		rc = store_append_begin(stream_loop(ss->s), d->folders, d->ntargets, time(NULL), 0,
					NULL, 0, store_ready, ss, &d->append);
	if (!rc)
		rc = write_received(ss);
	ss->state = ss->resume_state;
	if (rc) {
		store_error_reply(ss, rc);
		envelope_reset(ss);
		ss->state = SMTP_S_READY;
	} else if (d->bdat) {
		ss->state = SMTP_S_BDAT;
		if (d->bdat_left == 0)
			bdat_data(ss, span_make(NULL, 0)); /* BDAT 0 [LAST] */
	} else {
		memset(&d->ds, 0, sizeof(d->ds));
		d->ds.bare_policy = cfg_of(ss)->smtp_bare_lf_normalize ? SMTP_BARE_NORMALIZE
								       : SMTP_BARE_REJECT;
		ss->state = SMTP_S_DATA;
		reply(ss, "354 End data with <CR><LF>.<CR><LF>");
	}
	arm_timer(ss);
	if (!d->qwait)
		stream_resume(ss->s);
}

/* Gives bytes to the append; what it cannot take now waits in the overflow
 * buffer and input is paused until store_ready(). */
static void store_put(struct smtp_session *ss, struct span chunk)
{
	struct smtp_delivery *d = &ss->d;
	if (d->write_rc || chunk.len == 0)
		return;
	mime_scan_feed(d->mime, chunk);
	notice_feed(d, chunk);
	if (d->spool) {
		int rc = queue_put(ss, chunk);
		if (rc) {
			d->write_rc = rc;
			return;
		}
	}
	if (!d->append)
		return;
	if (d->overflow_len == 0) {
		ssize_t w = store_append_write(d->append, chunk);
		if (w < 0) {
			d->write_rc = (int)w;
			return;
		}
		chunk = span_skip(chunk, (size_t)w);
		if (chunk.len == 0)
			return;
	}
	uint8_t *o = realloc(d->overflow, d->overflow_len + chunk.len);
	if (!o) {
		d->write_rc = -ENOMEM;
		return;
	}
	memcpy(o + d->overflow_len, chunk.p, chunk.len);
	d->overflow = o;
	d->overflow_len += chunk.len;
	stream_pause(ss->s);
	stream_set_timer(ss->s, 0); /* until store_ready(): the store is slow, not the client */
}

static void store_ready(void *arg)
{
	struct smtp_session *ss = arg;
	struct smtp_delivery *d = &ss->d;
	if (!d->overflow_len || !d->append)
		return;
	ssize_t w = store_append_write(d->append, span_make(d->overflow, d->overflow_len));
	if (w < 0) {
		d->write_rc = (int)w;
		d->overflow_len = 0;
	} else {
		memmove(d->overflow, d->overflow + w, d->overflow_len - (size_t)w);
		d->overflow_len -= (size_t)w;
	}
	if (d->overflow_len)
		return;
	if (d->finish_pending) {
		/* The end of the message arrived while these bytes waited:
		 * only now is everything in the append. */
		d->finish_pending = false;
		delivery_finish(ss);
		return;
	}
	if (!d->qwait) {
		arm_timer(ss);
		stream_resume(ss->s);
	}
}

static void delivery_done(struct smtp_session *ss, int res);

static void commit_done(void *arg, int res, uint32_t uid)
{
	struct smtp_session *ss = arg;
	(void)uid;
	ss->pending--;
	ss->d.append = NULL; /* freed by the store after this returns */
	delivery_done(ss, res);
}

static void queued_done(void *arg, int res, const char *id)
{
	struct smtp_session *ss = arg;
	ss->pending--;
	if (!ss->dead && res == 0)
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-queued",
		       "id=%s rcpts=%zu", id, ss->d.nremote);
	if (res < 0)
		res = -EAGAIN;
	delivery_done(ss, res);
}

/* One part (the store commit, the queue write) is durable or failed; the
 * reply waits for both. */
static void delivery_done(struct smtp_session *ss, int res)
{
	if (res < 0 && !ss->d.final_rc)
		ss->d.final_rc = res;
	if (ss->d.waiting && --ss->d.waiting)
		return;
	res = ss->d.final_rc;
	if (ss->dead) {
		session_maybe_free(ss);
		return;
	}
	if (res < 0) {
		store_error_reply(ss, res);
	} else {
		ss->msgs++;
		reply(ss, "250 2.0.0 Ok: delivered as %llx.%u", (unsigned long long)stream_sid(ss->s),
		      ss->msgs);
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-delivered",
		       "from=<%s> rcpts=%zu size=%llu", ss->from, ss->nrcpts,
		       (unsigned long long)(ss->d.bdat ? ss->d.size : ss->d.ds.size));
		if (ss->d.notice_want)
			send_success_notice(ss);
	}
	envelope_reset(ss);
	ss->state = SMTP_S_READY;
	if (ss->shutting) {
		reply(ss, "421 4.3.2 %s Service shutting down", hostname(ss));
		session_close(ss);
		return;
	}
	arm_timer(ss);
	stream_resume(ss->s);
}

/* The message has ended: check it, then commit (250 after durability) or
 * abort (the error). */
static void delivery_finish(struct smtp_session *ss)
{
	struct smtp_delivery *d = &ss->d;
	if (d->overflow_len && !d->write_rc) {
		/* Bytes still wait for the store: commit after store_ready(). */
		d->finish_pending = true;
		ss->state = SMTP_S_BUSY;
		stream_pause(ss->s);
		stream_set_timer(ss->s, 0);
		return;
	}
	const struct config *cfg = cfg_of(ss);
	const char *err = NULL;
	char line_err[96];
	uint64_t size = d->bdat ? d->size : d->ds.size;
	uint64_t hdr = d->bdat ? d->hdr_size : d->ds.header_size;
	uint32_t hops = d->bdat ? d->hops : d->ds.received;

	if (size > cfg->message_size_max)
		err = "552 5.3.4 Error: message size exceeds fixed limit";
	else if (hdr > cfg->header_size_max)
		err = "552 5.3.4 Error: message header size exceeds limit";
	else if (hops > cfg->max_hops)
		err = "554 5.4.6 Error: too many hops (mail loop)";
	else if (!d->bdat && d->ds.bare_seen && d->ds.bare_policy == SMTP_BARE_REJECT)
		err = "550 5.5.2 Error: bare CR or LF in message text (see RFC 5321 2.3.8)";
	else if (!d->bdat && d->ds.longest_line > cfg->smtp_line_max) {
		snprintf(line_err, sizeof(line_err),
			 "550 5.5.6 Error: message line longer than %u octets (RFC 5321 4.5.3.1.6)",
			 cfg->smtp_line_max);
		err = line_err;
	}

	if (err || d->write_rc) {
		if (err)
			reply(ss, "%s", err);
		else
			store_error_reply(ss, d->write_rc);
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-rejected",
		       "reason=\"%s\"", err ? err : strerror(-d->write_rc));
		envelope_reset(ss);
		ss->state = SMTP_S_READY;
		arm_timer(ss);
		stream_resume(ss->s); /* paused when we came from store_ready() */
		return;
	}
	ss->state = SMTP_S_BUSY;
	ss->resume_state = SMTP_S_READY;
	stream_pause(ss->s);
	stream_set_timer(ss->s, 0);
	/* The structure blob is computed from the bytes as stored: IMAP
	 * serves ENVELOPE/BODYSTRUCTURE/sections from it without re-parsing. */
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blob_len = 0;
	if (!blob || mime_scan_finish(d->mime, blob, MIME_BLOB_MAX, &blob_len)) {
		free(blob);
		store_error_reply(ss, -ENOMEM);
		envelope_reset(ss);
		ss->state = SMTP_S_READY;
		arm_timer(ss);
		stream_resume(ss->s);
		return;
	}
	free(d->mime);
	d->mime = NULL;
	d->waiting = (d->append ? 1u : 0u) + (d->nremote ? 1u : 0u);
	d->final_rc = 0;
	if (d->spool) {
		/* The queue copy first, so a failure to start it needs no undo. */
		const char *why = d->signer ? dkim_signer_error(d->signer) : NULL;
		char *sig = d->signer ? dkim_signer_finish(d->signer) : NULL;
		if (d->signer && !sig)
			LOG_AT(stream_log(ss->s), LOG_WARN, stream_sid(ss->s), "dkim-unsigned",
			       "reason=\"%s\"", why ? why : "signing failed");
		d->signer = NULL;
		struct queue_spool *sp = d->spool;
		d->spool = NULL;
		int qrc = queue_spool_commit(sp, sig, queued_done, ss);
		free(sig);
		if (qrc) {
			free(blob);
			store_error_reply(ss, qrc == -ENOMEM ? -ENOMEM : -EAGAIN);
			envelope_reset(ss);
			ss->state = SMTP_S_READY;
			arm_timer(ss);
			stream_resume(ss->s);
			return;
		}
		ss->pending++;
	}
	if (d->append) {
		ss->pending++;
		store_append_commit(d->append, span_make(blob, blob_len), commit_done, ss);
	}
	free(blob); /* the store copied it */
}

static void cmd_data(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	if (cmd->has_args && cmd->args.len) {
		error_reply(ss, "501 5.5.4 Syntax: DATA");
		return;
	}
	if (ss->state != SMTP_S_RCPT) {
		error_reply(ss, ss->state == SMTP_S_MAIL ? "554 5.5.1 Error: no valid recipients"
							 : "503 5.5.1 Error: need RCPT command");
		return;
	}
	delivery_open(ss);
}

/* The header scanner for BDAT chunks: header section size and the
 * Received: count, as smtp_data_feed() does for DATA. */
static void bdat_scan(struct smtp_delivery *d, struct span c)
{
	static const char rcv[] = "received";
	for (size_t i = 0; i < c.len && !d->hdr_done; i++) {
		uint8_t ch = c.p[i];
		d->hdr_size++;
		if (d->hdr_line_start) {
			if (ch == '\r')
				continue;
			if (ch == '\n') {
				d->hdr_done = true;
				break;
			}
			d->hdr_line_start = false;
			d->hdr_match = 0;
			d->hdr_match_ok = true;
		}
		if (ch == '\n') {
			d->hdr_line_start = true;
			continue;
		}
		if (!d->hdr_match_ok)
			continue;
		if (d->hdr_match < 8) {
			uint8_t lc = (ch >= 'A' && ch <= 'Z') ? ch + 32 : ch;
			if (lc == (uint8_t)rcv[d->hdr_match])
				d->hdr_match++;
			else
				d->hdr_match_ok = false;
		} else if (ch == ':') {
			d->hops++;
			d->hdr_match_ok = false;
		} else if (ch != ' ' && ch != '\t') {
			d->hdr_match_ok = false;
		}
	}
}

static void cmd_bdat(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	uint64_t size;
	int last;
	enum smtp_parse_result r = smtp_parse_bdat(cmd->args, &size, &last);
	if (r != SMTP_PARSE_OK) {
		/* The chunk's length is unknown, so its bytes cannot be skipped:
		 * the only safe answer is to end the session. */
		reply(ss, "501 5.5.4 Syntax: BDAT size [LAST]; closing connection");
		session_close(ss);
		return;
	}
	if (ss->state != SMTP_S_RCPT && ss->state != SMTP_S_BDAT_NEXT) {
		/* Skip the chunk so the stream stays in sync, then answer. */
		ss->d.bdat = true;
		ss->d.bdat_left = size;
		ss->d.bdat_last = last;
		ss->d.write_rc = -EPROTO;
		ss->resume_state = ss->state;
		ss->state = SMTP_S_BDAT;
		return;
	}
	struct smtp_delivery *d = &ss->d;
	d->bdat_left = size;
	d->bdat_last = last;
	if (ss->state == SMTP_S_RCPT) {
		d->bdat = true;
		d->hdr_line_start = true;
		delivery_open(ss);
		return;
	}
	ss->state = SMTP_S_BDAT;
	if (size == 0)
		bdat_data(ss, span_make(NULL, 0));
}

/* Bytes of a BDAT chunk. Returns bytes consumed. */
static size_t bdat_data(struct smtp_session *ss, struct span in)
{
	struct smtp_delivery *d = &ss->d;
	size_t n = in.len < d->bdat_left ? in.len : (size_t)d->bdat_left;
	if (n > SMTP_FEED_STEP)
		n = SMTP_FEED_STEP;
	struct span c = span_make(in.p, n);
	if (d->write_rc != -EPROTO) {
		d->size += n;
		if (d->size <= cfg_of(ss)->message_size_max) {
			bdat_scan(d, c);
			store_put(ss, c);
		}
	}
	d->bdat_left -= n;
	if (d->bdat_left == 0) {
		if (d->write_rc == -EPROTO) {
			d->write_rc = 0;
			d->bdat = false;
			ss->state = ss->resume_state;
			error_reply(ss, "503 5.5.1 Error: BDAT without a valid transaction");
		} else if (d->bdat_last) {
			delivery_finish(ss);
		} else {
			reply(ss, "250 2.0.0 Ok: %llu octets received",
			      (unsigned long long)d->size);
			ss->state = SMTP_S_BDAT_NEXT;
		}
	}
	return n;
}

/* Message text after 354. Returns bytes consumed. */
static size_t data_data(struct smtp_session *ss, struct span in)
{
	struct smtp_delivery *d = &ss->d;
	struct span out[SMTP_DATA_SPANS];
	size_t off = 0;

	while (off < in.len && d->overflow_len == 0) {
		size_t nout = 0, used = 0;
		struct span step = span_skip(in, off);
		if (step.len > SMTP_FEED_STEP)
			step.len = SMTP_FEED_STEP;
		enum smtp_data_result r =
			smtp_data_feed(&d->ds, step, out, SMTP_DATA_SPANS, &nout, &used);
		off += used;
		/* Stop writing once the message is over a limit; keep reading
		 * to its end so the session stays in sync. */
		if (d->ds.size <= cfg_of(ss)->message_size_max &&
		    d->ds.header_size <= cfg_of(ss)->header_size_max)
			for (size_t i = 0; i < nout; i++)
				store_put(ss, out[i]);
		if (r == SMTP_DATA_END) {
			delivery_finish(ss);
			break;
		}
	}
	return off;
}

/* ---- other commands ---------------------------------------------------- */

static void cmd_starttls(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	if (cmd->has_args && cmd->args.len) {
		error_reply(ss, "501 5.5.4 Syntax: STARTTLS");
		return;
	}
	if (stream_is_tls(ss->s)) {
		error_reply(ss, "503 5.5.1 Error: TLS already active");
		return;
	}
	if (!stream_can_starttls(ss->s)) {
		error_reply(ss, "502 5.5.1 Error: TLS not available");
		return;
	}
	if (ss->state != SMTP_S_READY && ss->state != SMTP_S_GREETED) {
		error_reply(ss, "503 5.5.1 Error: MAIL transaction in progress");
		return;
	}
	reply(ss, "220 2.0.0 Ready to start TLS");
	if (stream_starttls(ss->s) == 0)
		ss->tls_pending = true;
}

/* RFC 3207 4.2: after the handshake the server forgets everything the
 * client said before; EHLO is needed again. */
static void smtp_tls_ready(struct stream *s)
{
	struct smtp_session *ss = stream_session(s);
	envelope_reset(ss);
	sasl_reset(ss);
	ss->user[0] = '\0';
	ss->helo[0] = '\0';
	ss->esmtp = false;
	ss->tls_pending = false;
	ss->state = SMTP_S_GREETED;
	arm_timer(ss);
}

static void cmd_rset(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	envelope_reset(ss);
	if (ss->state != SMTP_S_GREETED)
		ss->state = SMTP_S_READY;
	reply(ss, "250 2.0.0 Ok");
}

static void cmd_noop(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	reply(ss, "250 2.0.0 Ok");
}

static void cmd_quit(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	reply(ss, "221 2.0.0 %s Bye", hostname(ss));
	session_close(ss);
}

static void cmd_help(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	reply(ss, "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY "
		  "STARTTLS AUTH; see RFC 5321");
}

static void cmd_vrfy(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	/* RFC 5321 3.5.3: no address disclosure. */
	reply(ss, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	(void)cmd;
	error_reply(ss, "502 5.5.1 Error: EXPN not available");
}

struct smtp_command {
	enum smtp_verb verb;
	unsigned states;  /* where the command may be given at all */
	void (*proceed)(struct smtp_session *ss, const struct smtp_cmd *cmd);
};

#define ANY_CMD_STATE (ST(GREETED) | ST(READY) | ST(MAIL) | ST(RCPT) | ST(BDAT_NEXT))

static const struct smtp_command commands[] = {
	{ SMTP_CMD_HELO, ANY_CMD_STATE, cmd_helo },
	{ SMTP_CMD_EHLO, ANY_CMD_STATE, cmd_helo },
	{ SMTP_CMD_STARTTLS, ANY_CMD_STATE, cmd_starttls },
	{ SMTP_CMD_AUTH, ANY_CMD_STATE, cmd_auth },
	{ SMTP_CMD_MAIL, ANY_CMD_STATE, cmd_mail },
	{ SMTP_CMD_RCPT, ANY_CMD_STATE, cmd_rcpt },
	{ SMTP_CMD_DATA, ST(GREETED) | ST(READY) | ST(MAIL) | ST(RCPT), cmd_data },
	{ SMTP_CMD_BDAT, ANY_CMD_STATE, cmd_bdat },
	{ SMTP_CMD_RSET, ANY_CMD_STATE, cmd_rset },
	{ SMTP_CMD_NOOP, ANY_CMD_STATE, cmd_noop },
	{ SMTP_CMD_QUIT, ANY_CMD_STATE, cmd_quit },
	{ SMTP_CMD_HELP, ANY_CMD_STATE, cmd_help },
	{ SMTP_CMD_VRFY, ANY_CMD_STATE, cmd_vrfy },
	{ SMTP_CMD_EXPN, ANY_CMD_STATE, cmd_expn },
};

static void dispatch(struct smtp_session *ss, const struct smtp_cmd *cmd)
{
	if (cmd->verb == SMTP_CMD_HTTP) {
		LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-http-request",
		       "peer=%s", stream_peer(ss->s));
		ss->state = SMTP_S_CLOSED;
		stream_close(ss->s, false);
		return;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (commands[i].verb != cmd->verb)
			continue;
		if (ss->state == SMTP_S_BDAT_NEXT && cmd->verb != SMTP_CMD_BDAT &&
		    cmd->verb != SMTP_CMD_RSET && cmd->verb != SMTP_CMD_QUIT &&
		    cmd->verb != SMTP_CMD_NOOP) {
			error_reply(ss, "503 5.5.1 Error: BDAT transaction in progress");
			return;
		}
		if (!(commands[i].states & (1u << ss->state))) {
			error_reply(ss, "503 5.5.1 Error: bad sequence of commands");
			return;
		}
		commands[i].proceed(ss, cmd);
		return;
	}
	error_reply(ss, "500 5.5.2 Error: command not recognized");
}

/* ---- the stream side --------------------------------------------------- */

/* The greeting's last line; the session starts once it is on the wire
 * (smtp_drained). */
static void greet_final(struct smtp_session *ss)
{
	reply(ss, "220 %s ESMTP ringmail", hostname(ss));
	ss->greet_final = true;
	arm_timer(ss);
}

static void smtp_drained(struct stream *s)
{
	struct smtp_session *ss = stream_session(s);
	if (ss && ss->greet_final)
		ss->greeted = true;
}

/* Input before the greeting was written (issue 5; Postfix postscreen's
 * PREGREET): whatever it says is not a reply to us. An HTTP request line
 * is closed silently as always (nothing for a browser to reflect);
 * anything else gets 554 and the close. */
static ssize_t early_talker(struct smtp_session *ss, struct span in)
{
	struct smtp_cmd cmd;
	size_t used;
	if (smtp_parse_command(in, &cmd, &used) != SMTP_PARSE_AGAIN && cmd.verb == SMTP_CMD_HTTP) {
		dispatch(ss, &cmd);
		return (ssize_t)in.len;
	}
	LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-early-talker",
	       "peer=%s when=%s bytes=%zu", stream_peer(ss->s),
	       ss->greet_pausing ? "greet-pause" : "pregreet", in.len);
	reply(ss, "554 5.5.1 %s Error: protocol error: talked before the greeting", hostname(ss));
	session_close(ss);
	return (ssize_t)in.len;
}

static int smtp_open(struct stream *s)
{
	struct smtp_session *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return -ENOMEM;
	ss->s = s;
	ss->sv = services_of(stream_loop(s));
	stream_set_session(s, ss);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		reply(ss, "421 4.7.0 %s Error: too many connections, try again later", hostname(ss));
		session_close(ss);
		return 0;
	}
	ss->state = SMTP_S_GREETED;
	if (cfg_of(ss)->smtp_greet_pause_ms) {
		/* A multi-line greeting with a pause inside (Postfix postscreen's
		 * greet test): a real client waits for the last line (RFC 5321
		 * 4.2.1); a spam engine that talks first gives itself away. */
		reply(ss, "220-%s ESMTP ringmail", hostname(ss));
		ss->greet_pausing = true;
		stream_set_timer(s, cfg_of(ss)->smtp_greet_pause_ms);
		return 0;
	}
	greet_final(ss);
	return 0;
}

static ssize_t smtp_data(struct stream *s, struct span in)
{
	struct smtp_session *ss = stream_session(s);
	size_t pos = 0;

	if (!ss->greeted && in.len && ss->state != SMTP_S_CLOSED)
		return early_talker(ss, in);
	while (pos < in.len) {
		struct span rest = span_skip(in, pos);
		switch (ss->state) {
		case SMTP_S_CLOSED:
			return (ssize_t)in.len;
		case SMTP_S_BUSY:
			return (ssize_t)pos;
		case SMTP_S_DATA: {
			/* Silence times out, not a slow upload (RFC 5321
			 * 4.5.3.2): every chunk re-arms the timer. Before
			 * data_data(), which disarms it when the message ends
			 * and the store takes over; not while the queue spool
			 * holds us back (queue_ready() re-arms it). */
			if (!ss->d.qwait)
				arm_timer(ss);
			size_t used = data_data(ss, rest);
			pos += used;
			if (ss->d.overflow_len)
				return (ssize_t)pos; /* paused until the store is ready */
			continue;
		}
		case SMTP_S_BDAT:
			if (!ss->d.qwait)
				arm_timer(ss);
			pos += bdat_data(ss, rest);
			if (ss->d.overflow_len)
				return (ssize_t)pos;
			continue;
		default:
			break;
		}
		if (ss->skipping) {
			size_t used;
			enum smtp_parse_result r = smtp_skip_line(rest, &used);
			pos += used;
			if (r == SMTP_PARSE_AGAIN)
				break;
			ss->skipping = false;
			continue;
		}
		arm_timer(ss);
		struct smtp_cmd cmd;
		size_t used = 0;
		if (ss->state == SMTP_S_AUTH) {
			enum smtp_parse_result r = smtp_parse_line(rest, SMTP_AUTH_LINE_MAX, &cmd.line, &used);
			if (r == SMTP_PARSE_AGAIN)
				break;
			pos += used;
			if (r == SMTP_PARSE_OK) {
				auth_response(ss, cmd.line.text);
			} else {
				ss->skipping = r == SMTP_PARSE_TOO_LONG && cmd.line.partial;
				sasl_reset(ss);
				ss->state = SMTP_S_READY;
				error_reply(ss, "500 5.5.6 Error: SASL response too long or invalid");
			}
			continue;
		}
		enum smtp_parse_result r =
			smtp_parse_command_max(rest, cfg_of(ss)->smtp_command_line_max, &cmd, &used);
		if (r == SMTP_PARSE_TOO_LONG && cmd.verb == SMTP_CMD_AUTH &&
		    cfg_of(ss)->smtp_command_line_max < SMTP_AUTH_LINE_MAX)
			r = smtp_parse_command_max(rest, SMTP_AUTH_LINE_MAX, &cmd, &used);
		if (r == SMTP_PARSE_AGAIN)
			break;
		pos += used;
		if (r == SMTP_PARSE_TOO_LONG) {
			if (cmd.verb == SMTP_CMD_HTTP) {
				dispatch(ss, &cmd);
				return (ssize_t)in.len;
			}
			ss->skipping = cmd.line.partial;
			error_reply(ss, "500 5.5.6 Error: line too long");
			continue;
		}
		if (r == SMTP_PARSE_INVALID) {
			error_reply(ss, "500 5.5.2 Error: bad syntax (NUL or bare CR in command)");
			continue;
		}
		/* RFC 2920: only a client that saw PIPELINING in our EHLO reply
		 * may send a command before the previous reply; before that (or
		 * after HELO) it is an early talker. */
		bool pipelined = pos < in.len;
		dispatch(ss, &cmd);
		if (pipelined && !ss->esmtp && ss->state != SMTP_S_CLOSED &&
		    cmd.verb != SMTP_CMD_QUIT) {
			LOG_AT(stream_log(ss->s), LOG_INFO, stream_sid(ss->s), "smtp-early-talker",
			       "peer=%s", stream_peer(ss->s));
			reply(ss, "554 5.5.0 Error: improper use of SMTP command pipelining");
			session_close(ss);
			return (ssize_t)in.len;
		}
		if (ss->tls_pending) {
			/* Whatever came behind an accepted STARTTLS is injected
			 * plaintext (CVE-2011-0411): never parsed here; stream.c
			 * discards and logs it. */
			return (ssize_t)pos;
		}
	}
	return (ssize_t)pos;
}

static void smtp_timer(struct stream *s)
{
	struct smtp_session *ss = stream_session(s);
	if (ss->greet_pausing) {
		ss->greet_pausing = false;
		greet_final(ss);
		return;
	}
	reply(ss, "421 4.4.2 %s Error: timeout exceeded", hostname(ss));
	session_close(ss);
}

static void smtp_shutdown(struct stream *s)
{
	struct smtp_session *ss = stream_session(s);
	if (ss->state == SMTP_S_BUSY || ss->state == SMTP_S_DATA || ss->state == SMTP_S_BDAT) {
		ss->shutting = true; /* let the message finish within the grace period */
		return;
	}
	reply(ss, "421 4.3.2 %s Service shutting down", hostname(ss));
	session_close(ss);
}

static void session_maybe_free(struct smtp_session *ss)
{
	if (!ss->dead || ss->pending)
		return;
	envelope_reset(ss);
	free(ss->rcpts);
	free(ss);
}

static void smtp_close(struct stream *s)
{
	struct smtp_session *ss = stream_session(s);
	if (!ss)
		return;
	if (ss->auth_req)
		auth_cancel(ss->auth_req);
	sasl_reset(ss);
	ss->dead = true;
	ss->state = SMTP_S_CLOSED;
	if (ss->d.append && ss->pending == 0)
		store_append_abort(&ss->d.append);
	session_maybe_free(ss);
}

const struct stream_ops smtp_session_ops = {
	.open = smtp_open,
	.data = smtp_data,
	.timer = smtp_timer,
	.drained = smtp_drained,
	.shutdown = smtp_shutdown,
	.tls_ready = smtp_tls_ready,
	.close = smtp_close,
	.alpn = "smtp",
};
