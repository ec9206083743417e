/* pop3_session.c - the POP3 session (RFC 1939).
 *
 * This is the engine-proving subset: greeting, NOOP, QUIT, the limits
 * every session has, and -ERR for every other command. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/config.h"
#include "proto/session_util.h"
#include "proto/stream.h"

#define POP3_LINE_MAX 255 /* RFC 2449: 255 octets including CRLF */

struct pop3_session {
	struct stream *s;
	struct line_reader lr;
	unsigned bad;
	bool done;
};

static int pop3_open(struct stream *s)
{
	struct pop3_session *ps = calloc(1, sizeof(*ps));
	if (!ps)
		return -ENOMEM;
	ps->s = s;
	ps->lr.max = POP3_LINE_MAX;
	stream_set_session(s, ps);
	if (conn_limit_hit(stream_conn(s)) != CONN_LIMIT_NONE) {
		stream_printf(s, "-ERR [SYS/TEMP] Too many connections, try again later\r\n");
		stream_close(s, true);
		ps->done = true;
		return 0;
	}
	stream_printf(s, "+OK ringmail ready\r\n");
	stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
	return 0;
}

static void pop3_err(struct pop3_session *ps, const char *reply)
{
	stream_printf(ps->s, "-ERR %s\r\n", reply);
	if (++ps->bad >= stream_config(ps->s)->max_bad_commands) {
		stream_printf(ps->s, "-ERR Too many bad commands, closing connection\r\n");
		stream_close(ps->s, true);
		ps->done = true;
	}
}

static ssize_t pop3_data(struct stream *s, struct span in)
{
	struct pop3_session *ps = stream_session(s);
	size_t pos = 0;
	struct span line;

	while (!ps->done) {
		enum line_result r = line_reader_next(&ps->lr, in, &pos, &line);
		if (r == LINE_AGAIN)
			break;
		stream_set_timer(s, stream_config(s)->prelogin_timeout_ms);
		if (r == LINE_TOO_LONG) {
			pop3_err(ps, "Line too long");
		} else if (span_eq_nocase(line, SPAN_LIT("QUIT"))) {
			stream_printf(s, "+OK ringmail signing off\r\n");
			stream_close(s, true);
			ps->done = true;
		} else if (span_eq_nocase(line, SPAN_LIT("NOOP"))) {
			stream_printf(s, "+OK\r\n");
		} else {
			pop3_err(ps, "Unknown command");
		}
	}
	return ps->done ? (ssize_t)in.len : (ssize_t)pos;
}

static void pop3_timer(struct stream *s)
{
	stream_printf(s, "-ERR Disconnected for inactivity\r\n");
	stream_close(s, true);
}

static void pop3_shutdown(struct stream *s)
{
	stream_printf(s, "-ERR Server shutting down\r\n");
	stream_close(s, true);
}

static void pop3_close(struct stream *s)
{
	free(stream_session(s));
}

const struct stream_ops pop3_session_ops = {
	.open = pop3_open,
	.data = pop3_data,
	.timer = pop3_timer,
	.shutdown = pop3_shutdown,
	.close = pop3_close,
	.alpn = "pop3",
};
