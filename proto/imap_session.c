/* imap_session.c - the IMAP session (RFC 3501 / RFC 9051).
 *
 * This is the engine-proving subset: greeting, CAPABILITY, NOOP, LOGOUT,
 * the limits every session has, and BAD for every other command. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/config.h"
#include "proto/session_util.h"
#include "proto/stream.h"

#define IMAP_LINE_MAX 8192 /* before login */
#define IMAP_CAPABILITIES "IMAP4rev1"

struct imap_session {
	struct stream *s;
	struct line_reader lr;
	unsigned bad;
	bool done;
};

static int imap_open(struct stream *s)
{
	struct imap_session *is = calloc(1, sizeof(*is));
	if (!is)
		return -ENOMEM;
	is->s = s;
	is->lr.max = IMAP_LINE_MAX;
	stream_set_session(s, is);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		stream_printf(s, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n");
		stream_close(s, true);
		is->done = true;
		return 0;
	}
	stream_printf(s, "* OK [CAPABILITY " IMAP_CAPABILITIES "] ringmail ready\r\n");
	stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
	return 0;
}

static void imap_bad(struct imap_session *is, struct span tag, const char *text)
{
	if (tag.len)
		stream_printf(is->s, "%.*s BAD %s\r\n", (int)tag.len, (const char *)tag.p, text);
	else
		stream_printf(is->s, "* BAD %s\r\n", text);
	if (++is->bad >= stream_config(is->s)->max_bad_commands) {
		stream_printf(is->s, "* BYE Too many invalid commands\r\n");
		stream_close(is->s, true);
		is->done = true;
	}
}

/* A tag is 1*<any ATOM-CHAR except "+"> (RFC 3501 formal syntax). */
static bool tag_char(uint8_t c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '%' &&
	       c != '*' && c != '"' && c != '\\' && c != ']' && c != '+';
}

static ssize_t imap_data(struct stream *s, struct span in)
{
	struct imap_session *is = stream_session(s);
	size_t pos = 0;
	struct span line;

	while (!is->done) {
		enum line_result r = line_reader_next(&is->lr, in, &pos, &line);
		if (r == LINE_AGAIN)
			break;
		stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
		if (r == LINE_TOO_LONG) {
			imap_bad(is, (struct span){ 0 }, "Line too long");
			continue;
		}
		size_t i = 0;
		while (i < line.len && tag_char(line.p[i]))
			i++;
		struct span tag = span_make(line.p, i);
		if (i == 0 || i == line.len || line.p[i] != ' ') {
			imap_bad(is, (struct span){ 0 }, "Missing tag or command");
			continue;
		}
		struct span cmd = span_skip(line, i + 1);
		int tl = (int)tag.len;
		const char *tp = (const char *)tag.p;
		if (span_eq_nocase(cmd, SPAN_LIT("LOGOUT"))) {
			stream_printf(s, "* BYE ringmail logging out\r\n%.*s OK LOGOUT completed\r\n",
				      tl, tp);
			stream_close(s, true);
			is->done = true;
		} else if (span_eq_nocase(cmd, SPAN_LIT("NOOP"))) {
			stream_printf(s, "%.*s OK NOOP completed\r\n", tl, tp);
		} else if (span_eq_nocase(cmd, SPAN_LIT("CAPABILITY"))) {
			stream_printf(s, "* CAPABILITY " IMAP_CAPABILITIES "\r\n"
				      "%.*s OK CAPABILITY completed\r\n", tl, tp);
		} else {
			imap_bad(is, tag, "Unknown command");
		}
	}
	return is->done ? (ssize_t)in.len : (ssize_t)pos;
}

static void imap_timer(struct stream *s)
{
	stream_printf(s, "* BYE Autologout; idle for too long\r\n");
	stream_close(s, true);
}

static void imap_shutdown(struct stream *s)
{
	stream_printf(s, "* BYE [UNAVAILABLE] Server shutting down\r\n");
	stream_close(s, true);
}

static void imap_close(struct stream *s)
{
	free(stream_session(s));
}

const struct stream_ops imap_session_ops = {
	.open = imap_open,
	.data = imap_data,
	.timer = imap_timer,
	.shutdown = imap_shutdown,
	.close = imap_close,
	.alpn = "imap",
};
