/* log.h - one line per event on stderr.
 *
 *   2026-11-26T10:00:00.123Z info loop=0 sid=42 event=accept peer=192.0.2.1
 *
 * A struct log belongs to one thread. A loop's log only appends to a
 * memory buffer; the loop writes the buffer to stderr through its ring once
 * per tick (log_take()), so logging never blocks a loop. The buffer starts
 * at LOG_BUF_SIZE and grows while a write is slow (a burst of logins while
 * the previous write waits for an io_uring worker) up to LOG_BUF_MAX of
 * pending lines; past that, lines are dropped and counted, and the next
 * flushed line says how many. A direct log (main thread, tools) writes at
 * once.
 *
 * Never pass a credential to these functions: callers log AUTH as
 * "********" (STYLE.md). */
#ifndef RINGMAIL_CORE_LOG_H
#define RINGMAIL_CORE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_BUF_SIZE (64u * 1024u)      /* each buffer's size at rest */
#define LOG_BUF_MAX (1024u * 1024u)     /* pending lines kept at most */

struct log {
	enum log_level level;
	int loop_id;      /* -1: main thread */
	bool direct;      /* write(2) at once */
	char *fill;       /* the buffer lines are appended to */
	char *flight;     /* the buffer being written by the ring */
	size_t fill_len;
	size_t fill_cap, flight_cap;
	uint64_t dropped;
	int64_t date_sec;  /* the second date[] was formatted for */
	char date[24];     /* "YYYY-MM-DDTHH:MM:SS" of date_sec */
};

/* The longest line; longer caller text is cut. */
#define LOG_LINE_MAX 2048u

/* Returns 0 or -ENOMEM. A direct log needs no buffers. */
int log_init(struct log *l, enum log_level level, int loop_id, bool direct);
void log_fini(struct log *l);
/* Parses "debug", "info", "warn", "error"; returns -EINVAL otherwise. */
int log_level_parse(const char *s, enum log_level *level_r);
const char *log_level_str(enum log_level level);

/* Emits one line: time, level, loop, sid (0: none), event, then the
 * caller's "key=value ..." text (may be NULL). Newlines in the caller's
 * text are replaced by spaces so a line stays a line. */
void log_emit(struct log *l, enum log_level level, uint64_t sid, const char *event,
	      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void log_vemit(struct log *l, enum log_level level, uint64_t sid, const char *event,
	       const char *fmt, va_list ap);

/* For the loop: swaps the buffers when the fill buffer holds text and the
 * previous write has completed. Returns the bytes to write (*p_r set) or 0.
 * The buffer the completed write used becomes the fill buffer, back at
 * LOG_BUF_SIZE if it had grown. */
size_t log_take(struct log *l, const char **p_r);

#define LOG_AT(l, lv, sid, ev, ...)                                    \
	do {                                                           \
		if ((lv) >= (l)->level)                                \
			log_emit((l), (lv), (sid), (ev), __VA_ARGS__); \
	} while (0)

#endif
