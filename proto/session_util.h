/* session_util.h - what every protocol session does the same way: the
 * line loop with its length limit, the pre-login/idle timer and the bad
 * command counter. */
#ifndef RINGMAIL_PROTO_SESSION_UTIL_H
#define RINGMAIL_PROTO_SESSION_UTIL_H

#include <stdbool.h>
#include <sys/types.h>

#include "core/span.h"
#include "proto/stream.h"

struct line_reader {
	size_t max;      /* longest line accepted, CRLF included */
	bool skipping;   /* inside an over-long line: drop up to its LF */
};

enum line_result { LINE_OK, LINE_AGAIN, LINE_TOO_LONG };

/* Takes the next line from in at *pos. LINE_OK: *text_r is the line without
 * its CRLF (pointing into in), *pos advanced past it. LINE_AGAIN: need more
 * bytes (*pos unchanged). LINE_TOO_LONG: an over-long line was (partly)
 * skipped, *pos advanced; the caller answers with its protocol's error
 * once, when the function reports it. */
enum line_result line_reader_next(struct line_reader *r, struct span in, size_t *pos,
				  struct span *text_r);

/* An HTTP/1.x request line ("GET /x HTTP/1.1": an upper-case method of
 * RFC 9110 §9 or PATCH, SP, a target, SP, "HTTP/"): a browser or proxy
 * talking to a mail port (the ALPACA cross-protocol attack). IMAP and POP3
 * close such a connection at once instead of answering each of its lines;
 * SMTP's parser refuses any line that begins with a method. */
bool session_http_request_line(struct span line);

#endif
