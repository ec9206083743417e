/* http_session.c - the HTTP/1.1 session of the auto-discovery listener
 * (ports 80 and 443 of the embedded default).
 *
 * One struct http_session per connection, driven by stream.c like the mail
 * sessions, under plaintext or TLS. Requests are parsed in place by
 * proto/http_parse.c and answered at once from the route table below
 * (every answer is computed synchronously from the configuration), so
 * pipelined requests are answered in order simply by handling them in
 * order. Keep-alive follows RFC 9112 9.3; every error the parser reports
 * closes the connection after its response, as framing is then unknown.
 *
 * Timers: a request must arrive whole within the request timeout
 * (limits.prelogin_timeout, at most HTTP_REQUEST_TIMEOUT_MAX_MS) counted
 * from the connection's start or the previous response: a partial request
 * then gets 408 and the connection closes; an idle keep-alive connection
 * is closed quietly. Output backpressure: past HTTP_SEND_HIGH queued bytes
 * input is paused until the socket drains. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/config.h"
#include "core/log.h"
#include "proto/discovery.h"
#include "proto/http_parse.h"
#include "proto/stream.h"

/* Longest time a request may take to arrive. */
#define HTTP_REQUEST_TIMEOUT_MAX_MS 30000u
/* Requests on one connection; the last one is answered with
 * Connection: close. */
#define HTTP_KEEPALIVE_REQUESTS_MAX 1000u
/* Input pauses while more than this is queued for the socket. */
#define HTTP_SEND_HIGH (64u * 1024u)

enum http_state {
	HTTP_S_IDLE,    /* between requests: no byte of the next one yet */
	HTTP_S_READING, /* part of a request has arrived */
	HTTP_S_BLOCKED, /* output queue over HTTP_SEND_HIGH: input paused */
	HTTP_S_CLOSED,
};

static const char *const state_names[] = { "idle", "reading", "blocked", "closed" };

const char *http_state_str(enum http_state st);
const char *http_state_str(enum http_state st)
{
	return (unsigned)st < sizeof(state_names) / sizeof(state_names[0]) ? state_names[st] : "?";
}

struct http_session {
	struct stream *s;
	enum http_state state;
	struct http_parse_state ps;
	size_t want;          /* a parsed head's whole request size, waiting for its body */
	bool continue_sent;   /* 100 Continue sent for the request being read */
	unsigned requests;    /* answered on this connection */
};

/* What one response needs to know about its request. */
struct http_reply {
	int status;
	const char *ctype;     /* NULL: no Content-Type */
	const char *body;
	size_t body_len;
	const char *extra;     /* more header lines, each ending in CRLF, or NULL */
	bool close;
};

static const struct config *cfg_of(struct http_session *hs) { return stream_config(hs->s); }

static uint32_t request_timeout(struct http_session *hs)
{
	uint32_t t = cfg_of(hs)->prelogin_timeout_ms;
	return t < HTTP_REQUEST_TIMEOUT_MAX_MS ? t : HTTP_REQUEST_TIMEOUT_MAX_MS;
}

static void enter_state(struct http_session *hs, enum http_state st)
{
	if (hs->state == HTTP_S_CLOSED)
		return;
	if (st == HTTP_S_BLOCKED && hs->state != HTTP_S_BLOCKED)
		stream_pause(hs->s);
	else if (st != HTTP_S_BLOCKED && hs->state == HTTP_S_BLOCKED)
		stream_resume(hs->s);
	/* The timer counts from the start of a request, not from its last
	 * byte: a slow client cannot stretch one request forever. */
	if (st == HTTP_S_IDLE || st == HTTP_S_BLOCKED)
		stream_set_timer(hs->s, request_timeout(hs));
	hs->state = st;
}

static void session_close(struct http_session *hs, bool flush)
{
	if (hs->state == HTTP_S_CLOSED)
		return;
	hs->state = HTTP_S_CLOSED;
	stream_close(hs->s, flush);
}

/* IMF-fixdate (RFC 9110 5.6.7). */
static void http_date(char out[40])
{
	static const char days[] = "SunMonTueWedThuFriSat";
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm;
	time_t now = time(NULL);
	gmtime_r(&now, &tm);
	snprintf(out, 40, "%.3s, %02d %.3s %04d %02d:%02d:%02d GMT", days + 3 * tm.tm_wday,
		 tm.tm_mday, months + 3 * tm.tm_mon, tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec);
}

/* Sends a response; req is NULL when the request could not be parsed. */
static void respond(struct http_session *hs, const struct http_request *req,
		    const struct http_reply *r)
{
	char head[1024], date[40];
	bool head_only = req && req->method == HTTP_M_HEAD;
	bool close = r->close || !req || !req->keep_alive ||
		     hs->requests + 1 >= HTTP_KEEPALIVE_REQUESTS_MAX;

	http_date(date);
	int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nDate: %s\r\nServer: ringmail\r\n",
			 r->status, http_status_reason(r->status), date);
	if (r->ctype)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: %s\r\n", r->ctype);
	if (r->status != 204)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n",
			      r->body_len);
	if (r->extra)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "%s", r->extra);
	if (close)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Connection: close\r\n");
	else if (req->version_minor == 0)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Connection: keep-alive\r\n");
	n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
	if ((size_t)n >= sizeof(head)) {
		session_close(hs, false); /* cannot happen with the fixed headers */
		return;
	}
	LOG_AT(stream_log(hs->s), LOG_INFO, stream_sid(hs->s), "http-request",
	       "method=%.*s path=%.*s status=%d bytes=%zu tls=%s",
	       req ? (int)req->method_name.len : 1, req ? (const char *)req->method_name.p : "-",
	       req ? (int)(req->path.len > 200 ? 200 : req->path.len) : 1,
	       req && req->path.p ? (const char *)req->path.p : "-", r->status,
	       head_only ? 0 : r->body_len, stream_is_tls(hs->s) ? "yes" : "no");
	if (stream_send(hs->s, head, (size_t)n) < 0 ||
	    (!head_only && r->body_len && stream_send(hs->s, r->body, r->body_len) < 0)) {
		session_close(hs, false);
		return;
	}
	hs->requests++;
	if (close)
		session_close(hs, true);
}

static void respond_error(struct http_session *hs, const struct http_request *req, int status,
			  const char *extra, bool close)
{
	char body[128];
	int n = snprintf(body, sizeof(body), "%d %s\n", status, http_status_reason(status));
	struct http_reply r = {
		.status = status, .ctype = "text/plain; charset=utf-8", .body = body,
		.body_len = (size_t)n, .extra = extra, .close = close,
	};
	respond(hs, req, &r);
}

static void respond_doc(struct http_session *hs, const struct http_request *req,
			const char *ctype, struct discovery_buf *doc, const char *extra)
{
	if (doc->failed) {
		respond_error(hs, req, 500, NULL, false);
		return;
	}
	struct http_reply r = {
		.status = 200, .ctype = ctype, .body = doc->p, .body_len = doc->len,
		.extra = extra,
	};
	respond(hs, req, &r);
}

/* ---- what the routes share --------------------------------------------- */

/* The address and domain a GET is about: ?emailaddress= when given (and
 * not empty), else the Host. Returns 0, or the HTTP status to answer. */
static int address_from_query(struct http_session *hs, const struct http_request *req,
			      char *addr, size_t cap, const char **domain_r, bool *have_addr_r)
{
	const struct config *cfg = cfg_of(hs);
	struct span v;
	*have_addr_r = false;
	if (req->has_query && http_query_param(req->query, SPAN_LIT("emailaddress"), &v) && v.len) {
		uint8_t raw[DISCOVERY_ADDRESS_MAX + 1];
		ptrdiff_t n = http_percent_decode(v, false, raw, sizeof(raw));
		if (n < 0)
			return 400;
		int rc = discovery_check_address(span_make(raw, (size_t)n), cfg->domains,
						 cfg->ndomains, addr, cap);
		if (rc)
			return rc == -ENOENT ? 404 : 400;
		*domain_r = strchr(addr, '@') + 1;
		*have_addr_r = true;
		return 0;
	}
	*domain_r = discovery_domain_for_host(cfg, req->host);
	return *domain_r ? 0 : 404;
}

static void settings_for(struct http_session *hs, const char *domain, const char *addr,
			 struct discovery_settings *st)
{
	memset(st, 0, sizeof(*st));
	st->hostname = cfg_of(hs)->hostname;
	st->domain = domain;
	st->address = addr;
	discovery_settings_from_config(cfg_of(hs), st);
}

/* ---- the routes ------------------------------------------------------------ */

static void serve_thunderbird(struct http_session *hs, const struct http_request *req,
			      struct span body)
{
	char addr[DISCOVERY_ADDRESS_MAX + 1];
	const char *domain;
	bool have;
	struct discovery_settings st;
	struct discovery_buf doc = { 0 };
	(void)body;

	int status = address_from_query(hs, req, addr, sizeof(addr), &domain, &have);
	if (status) {
		respond_error(hs, req, status, NULL, false);
		return;
	}
	settings_for(hs, domain, have ? addr : NULL, &st);
	discovery_thunderbird(&st, &doc);
	respond_doc(hs, req, "text/xml; charset=utf-8", &doc, "Cache-Control: no-store\r\n");
	discovery_buf_free(&doc);
}

static void serve_autodiscover(struct http_session *hs, const struct http_request *req,
			       struct span body)
{
	const struct config *cfg = cfg_of(hs);
	char raw[DISCOVERY_ADDRESS_MAX + 1], addr[DISCOVERY_ADDRESS_MAX + 1];
	struct discovery_settings st;
	struct discovery_buf doc = { 0 };

	ptrdiff_t n = discovery_autodiscover_email(body, raw, sizeof(raw));
	if (n < 0) {
		respond_error(hs, req, 400, NULL, false);
		return;
	}
	int rc = discovery_check_address(span_make(raw, (size_t)n), cfg->domains, cfg->ndomains,
					 addr, sizeof(addr));
	if (rc) {
		respond_error(hs, req, rc == -ENOENT ? 404 : 400, NULL, false);
		return;
	}
	if (discovery_autodiscover_other_schema(body)) {
		/* ActiveSync's mobilesync schema: not a protocol we speak. */
		discovery_autodiscover_error(601, "Provider is not available for the requested schema",
					     &doc);
	} else {
		settings_for(hs, strchr(addr, '@') + 1, addr, &st);
		discovery_autodiscover(&st, &doc);
	}
	respond_doc(hs, req, "text/xml; charset=utf-8", &doc, "Cache-Control: no-store\r\n");
	discovery_buf_free(&doc);
}

static void serve_mobileconfig(struct http_session *hs, const struct http_request *req,
			       struct span body)
{
	char addr[DISCOVERY_ADDRESS_MAX + 1], extra[CONFIG_STR_MAX + 128];
	const char *domain;
	bool have;
	struct discovery_settings st;
	struct discovery_buf doc = { 0 };
	(void)body;

	int status = address_from_query(hs, req, addr, sizeof(addr), &domain, &have);
	if (status) {
		respond_error(hs, req, status, NULL, false);
		return;
	}
	settings_for(hs, domain, have ? addr : NULL, &st);
	discovery_mobileconfig(&st, &doc);
	/* The domain passed valid_hostname(): safe inside the quotes. */
	snprintf(extra, sizeof(extra),
		 "Content-Disposition: attachment; filename=\"%s.mobileconfig\"\r\n"
		 "Cache-Control: no-store\r\n", domain);
	respond_doc(hs, req, "application/x-apple-aspen-config", &doc, extra);
	discovery_buf_free(&doc);
}

#define M(x) (1u << HTTP_M_##x)

/* The route table: path, whether it matches in any case, the methods it
 * serves (OPTIONS is answered for every route), the Allow value, and the
 * handler. Anything else is 404. */
static const struct http_route {
	const char *path;
	bool nocase;
	unsigned methods;
	const char *allow;
	void (*serve)(struct http_session *hs, const struct http_request *req, struct span body);
} routes[] = {
	{ "/mail/config-v1.1.xml", false, M(GET) | M(HEAD), "GET, HEAD, OPTIONS",
	  serve_thunderbird },
	{ "/.well-known/autoconfig/mail/config-v1.1.xml", false, M(GET) | M(HEAD),
	  "GET, HEAD, OPTIONS", serve_thunderbird },
	{ "/autodiscover/autodiscover.xml", true, M(POST), "POST, OPTIONS", serve_autodiscover },
	{ "/apple/mobileconfig", false, M(GET) | M(HEAD), "GET, HEAD, OPTIONS",
	  serve_mobileconfig },
};

static void handle_request(struct http_session *hs, const struct http_request *req,
			   struct span body)
{
	char allow[128];
	const struct http_route *rt = NULL;

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		struct span p = span_cstr(routes[i].path);
		if (routes[i].nocase ? span_eq_nocase(req->path, p) : span_eq(req->path, p)) {
			rt = &routes[i];
			break;
		}
	}
	if (req->method == HTTP_M_OPTIONS && span_eq(req->path, SPAN_LIT("*"))) {
		struct http_reply r = { .status = 204,
					.extra = "Allow: GET, HEAD, POST, OPTIONS\r\n" };
		respond(hs, req, &r);
		return;
	}
	if (req->method == HTTP_M_UNKNOWN) {
		respond_error(hs, req, 501, NULL, false);
		return;
	}
	if (!rt) {
		respond_error(hs, req, 404, NULL, false);
		return;
	}
	snprintf(allow, sizeof(allow), "Allow: %s\r\n", rt->allow);
	if (req->method == HTTP_M_OPTIONS) {
		struct http_reply r = { .status = 204, .extra = allow };
		respond(hs, req, &r);
		return;
	}
	if (!(rt->methods & (1u << req->method))) {
		respond_error(hs, req, 405, allow, false);
		return;
	}
	rt->serve(hs, req, body);
}

/* ---- stream callbacks ------------------------------------------------------ */

static int http_open(struct stream *s)
{
	struct http_session *hs = calloc(1, sizeof(*hs));
	if (!hs)
		return -ENOMEM;
	hs->s = s;
	hs->state = HTTP_S_READING; /* so enter_state arms the timer */
	stream_set_session(s, hs);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		respond_error(hs, NULL, 503, NULL, true);
		return 0;
	}
	enter_state(hs, HTTP_S_IDLE);
	return 0;
}

static ssize_t http_data(struct stream *s, struct span in)
{
	struct http_session *hs = stream_session(s);
	struct http_request req;
	size_t off = 0;

	while (hs->state != HTTP_S_CLOSED && hs->state != HTTP_S_BLOCKED && off < in.len) {
		struct span rest = span_skip(in, off);
		if (hs->want && rest.len < hs->want)
			break; /* the body is still arriving */
		enum http_parse_result r = http_parse_request(rest, &hs->ps, &req);
		if (r == HTTP_PARSE_AGAIN) {
			hs->state = HTTP_S_READING;
			break;
		}
		if (r != HTTP_PARSE_OK) {
			LOG_AT(stream_log(s), LOG_INFO, stream_sid(s), "http-bad-request",
			       "status=%d", req.status);
			respond_error(hs, NULL, req.status, NULL, true);
			return (ssize_t)in.len;
		}
		size_t total = req.head_len + (size_t)req.content_length;
		if (rest.len < total) {
			hs->want = total;
			hs->state = HTTP_S_READING;
			if (req.expect_continue && !hs->continue_sent) {
				static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
				hs->continue_sent = true;
				if (stream_send(s, cont, sizeof(cont) - 1) < 0) {
					session_close(hs, false);
					return (ssize_t)in.len;
				}
			}
			break;
		}
		handle_request(hs, &req, span_make(rest.p + req.head_len, (size_t)req.content_length));
		off += total;
		memset(&hs->ps, 0, sizeof(hs->ps));
		hs->want = 0;
		hs->continue_sent = false;
		if (hs->state == HTTP_S_CLOSED)
			return (ssize_t)in.len; /* what follows a "close" is never read */
		enter_state(hs, stream_send_pending(s) > HTTP_SEND_HIGH ? HTTP_S_BLOCKED
									 : HTTP_S_IDLE);
	}
	return (ssize_t)off;
}

static void http_drained(struct stream *s)
{
	struct http_session *hs = stream_session(s);
	if (hs && hs->state == HTTP_S_BLOCKED)
		enter_state(hs, HTTP_S_IDLE); /* resumes input: data() runs again */
}

static void http_timer(struct stream *s)
{
	struct http_session *hs = stream_session(s);
	LOG_AT(stream_log(s), LOG_INFO, stream_sid(s), "http-timeout", "state=%s requests=%u",
	       http_state_str(hs->state), hs->requests);
	if (hs->state == HTTP_S_BLOCKED) {
		session_close(hs, false); /* the client stopped reading */
		return;
	}
	if (hs->state == HTTP_S_READING || hs->requests == 0) {
		respond_error(hs, NULL, 408, NULL, true);
		return;
	}
	session_close(hs, true); /* an idle keep-alive connection */
}

static void http_shutdown(struct stream *s)
{
	struct http_session *hs = stream_session(s);
	session_close(hs, true);
}

static void http_tls_ready(struct stream *s)
{
	(void)s; /* no upgrade in HTTP/1.1 here: implicit TLS only */
}

static void http_close(struct stream *s)
{
	struct http_session *hs = stream_session(s);
	if (!hs)
		return;
	stream_set_session(s, NULL);
	free(hs);
}

const struct stream_ops http_session_ops = {
	.open = http_open,
	.data = http_data,
	.timer = http_timer,
	.shutdown = http_shutdown,
	.drained = http_drained,
	.tls_ready = http_tls_ready,
	.close = http_close,
	.alpn = "http/1.1",
};
