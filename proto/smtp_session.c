/* smtp_session.c - the SMTP session (RFC 5321).
 *
 * This is the engine-proving subset: greeting, NOOP, QUIT, the limits
 * every session has, and an error reply for every other command. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/config.h"
#include "core/log.h"
#include "proto/session_util.h"
#include "proto/stream.h"

#define SMTP_COMMAND_LINE_MAX 512 /* RFC 5321 4.5.3.1.4, CRLF included */

struct smtp_session {
	struct stream *s;
	struct line_reader lr;
	unsigned bad;
	bool done; /* closing: the rest of the input is not ours to parse */
};

static const char *hostname(struct stream *s) { return stream_config(s)->hostname; }

static int smtp_open(struct stream *s)
{
	struct smtp_session *ss = calloc(1, sizeof(*ss));
	if (!ss)
		return -ENOMEM;
	ss->s = s;
	ss->lr.max = SMTP_COMMAND_LINE_MAX;
	stream_set_session(s, ss);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		stream_printf(s, "421 4.7.0 %s Too many connections, try again later\r\n",
			      hostname(s));
		stream_close(s, true);
		ss->done = true;
		return 0;
	}
	stream_printf(s, "220 %s ESMTP ringmail\r\n", hostname(s));
	stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
	return 0;
}

static void smtp_bad(struct smtp_session *ss, const char *reply)
{
	stream_printf(ss->s, "%s\r\n", reply);
	if (++ss->bad >= stream_config(ss->s)->max_bad_commands) {
		stream_printf(ss->s, "421 4.7.0 %s Too many errors, closing connection\r\n",
			      hostname(ss->s));
		stream_close(ss->s, true);
		ss->done = true;
	}
}

static ssize_t smtp_data(struct stream *s, struct span in)
{
	struct smtp_session *ss = stream_session(s);
	size_t pos = 0;
	struct span line;

	while (!ss->done) {
		enum line_result r = line_reader_next(&ss->lr, in, &pos, &line);
		if (r == LINE_AGAIN)
			break;
		stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
		if (r == LINE_TOO_LONG) {
			smtp_bad(ss, "500 5.5.6 Line too long");
		} else if (span_eq_nocase(line, SPAN_LIT("QUIT"))) {
			stream_printf(s, "221 2.0.0 %s Bye\r\n", hostname(s));
			stream_close(s, true);
			ss->done = true;
		} else if (span_eq_nocase(line, SPAN_LIT("NOOP")) ||
			   span_prefix_nocase(line, SPAN_LIT("NOOP "))) {
			stream_printf(s, "250 2.0.0 OK\r\n");
		} else {
			smtp_bad(ss, "502 5.5.1 Command not implemented");
		}
	}
	return ss->done ? (ssize_t)in.len : (ssize_t)pos;
}

static void smtp_timer(struct stream *s)
{
	stream_printf(s, "421 4.4.2 %s Error: timeout exceeded\r\n", hostname(s));
	stream_close(s, true);
}

static void smtp_shutdown(struct stream *s)
{
	stream_printf(s, "421 4.3.2 %s Service shutting down\r\n", hostname(s));
	stream_close(s, true);
}

static void smtp_close(struct stream *s)
{
	free(stream_session(s));
}

const struct stream_ops smtp_session_ops = {
	.open = smtp_open,
	.data = smtp_data,
	.timer = smtp_timer,
	.shutdown = smtp_shutdown,
	.close = smtp_close,
	.alpn = "smtp",
};
