#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int log_init(struct log *l, enum log_level level, int loop_id, bool direct)
{
	memset(l, 0, sizeof(*l));
	l->level = level;
	l->loop_id = loop_id;
	l->direct = direct;
	if (direct)
		return 0;
	l->fill = malloc(LOG_BUF_SIZE);
	l->flight = malloc(LOG_BUF_SIZE);
	if (!l->fill || !l->flight) {
		log_fini(l);
		return -ENOMEM;
	}
	l->fill_cap = l->flight_cap = LOG_BUF_SIZE;
	return 0;
}

void log_fini(struct log *l)
{
	free(l->fill);
	free(l->flight);
	l->fill = l->flight = NULL;
}

int log_level_parse(const char *s, enum log_level *level_r)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*level_r = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *log_level_str(enum log_level level)
{
	return (unsigned)level < 4 ? level_names[level] : "?";
}

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static char *put_str(char *p, const char *s)
{
	size_t n = strlen(s);
	memcpy(p, s, n);
	return p + n;
}

static char *put_dec(char *p, unsigned v)
{
	char tmp[12];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static char *put_hex(char *p, uint64_t v)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	size_t n = 0;
	do {
		tmp[n++] = digits[v & 15];
		v >>= 4;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

/* Formats the line into line[0..LOG_LINE_MAX) and returns its length,
 * newline included. The fixed part (date, level, loop, sid, event) is
 * written by hand: gmtime/strftime once per second and no printf for it,
 * which halves the cost of a line (a connect and a close line per
 * connection are a sizeable part of a greeting's CPU). */
static size_t format_line(struct log *l, char *line, enum log_level level, uint64_t sid,
			  const char *event, const char *fmt, va_list ap)
{
	struct timespec ts;
	char *p = line;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != l->date_sec || !l->date[0]) {
		struct tm tm;
		gmtime_r(&ts.tv_sec, &tm);
		strftime(l->date, sizeof(l->date), "%Y-%m-%dT%H:%M:%S", &tm);
		l->date_sec = ts.tv_sec;
	}
	p = put_str(p, l->date);
	unsigned ms = (unsigned)(ts.tv_nsec / 1000000);
	*p++ = '.';
	*p++ = (char)('0' + ms / 100);
	*p++ = (char)('0' + ms / 10 % 10);
	*p++ = (char)('0' + ms % 10);
	*p++ = 'Z';
	*p++ = ' ';
	p = put_str(p, log_level_str(level));
	if (l->loop_id >= 0) {
		p = put_str(p, " loop=");
		p = put_dec(p, (unsigned)l->loop_id);
	}
	if (sid) {
		p = put_str(p, " sid=");
		p = put_hex(p, sid);
	}
	if (l->dropped) { /* reset by the caller once this line is kept */
		p = put_str(p, " dropped_lines=");
		p += snprintf(p, 24, "%llu", (unsigned long long)l->dropped);
	}
	p = put_str(p, " event=");
	size_t ev = strnlen(event, 128);
	memcpy(p, event, ev);
	p += ev;
	if (fmt) {
		*p++ = ' ';
		char *start = p;
		/* room for the text and its NUL; the newline replaces the NUL */
		size_t room = (size_t)(line + LOG_LINE_MAX - p);
		int k = vsnprintf(p, room, fmt, ap);
		if (k > 0)
			p += (size_t)k < room ? (size_t)k : room - 1;
		for (char *c = start; c < p; c++)
			if (*c == '\n' || *c == '\r')
				*c = ' ';
	}
	*p++ = '\n';
	return (size_t)(p - line);
}

void log_vemit(struct log *l, enum log_level level, uint64_t sid, const char *event,
	       const char *fmt, va_list ap)
{
	char stack[LOG_LINE_MAX];

	if (l->direct) {
		write_all(stack, format_line(l, stack, level, sid, event, fmt, ap));
		l->dropped = 0;
		return;
	}
	/* Straight into the fill buffer when a line of any length fits; the
	 * buffer doubles, up to LOG_BUF_MAX, before a line is dropped. */
	if (l->fill_cap - l->fill_len < LOG_LINE_MAX && l->fill_cap < LOG_BUF_MAX) {
		size_t cap = l->fill_cap * 2 < LOG_BUF_MAX ? l->fill_cap * 2 : LOG_BUF_MAX;
		char *p = realloc(l->fill, cap);
		if (p) {
			l->fill = p;
			l->fill_cap = cap;
		}
	}
	if (l->fill_cap - l->fill_len >= LOG_LINE_MAX) {
		l->fill_len += format_line(l, l->fill + l->fill_len, level, sid, event, fmt, ap);
		l->dropped = 0;
		return;
	}
	size_t n = format_line(l, stack, level, sid, event, fmt, ap);
	if (l->fill_len + n > l->fill_cap) {
		l->dropped++;
		return;
	}
	memcpy(l->fill + l->fill_len, stack, n);
	l->fill_len += n;
	l->dropped = 0;
}

void log_emit(struct log *l, enum log_level level, uint64_t sid, const char *event,
	      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vemit(l, level, sid, event, fmt, ap);
	va_end(ap);
}

size_t log_take(struct log *l, const char **p_r)
{
	size_t n = l->fill_len;
	char *t;

	if (n == 0)
		return 0;
	t = l->flight;
	l->flight = l->fill;
	l->fill = t;
	size_t cap = l->flight_cap;
	l->flight_cap = l->fill_cap;
	l->fill_cap = cap;
	l->fill_len = 0;
	if (l->fill_cap > LOG_BUF_SIZE) {
		/* empty: a burst's memory goes back; keep it if that fails */
		t = realloc(l->fill, LOG_BUF_SIZE);
		if (t) {
			l->fill = t;
			l->fill_cap = LOG_BUF_SIZE;
		}
	}
	*p_r = l->flight;
	return n;
}
