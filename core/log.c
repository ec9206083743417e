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

void log_vemit(struct log *l, enum log_level level, uint64_t sid, const char *event,
	       const char *fmt, va_list ap)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int k;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	k = snprintf(line + n, sizeof(line) - n, ".%03ldZ %s", ts.tv_nsec / 1000000,
		     log_level_str(level));
	n += (size_t)k;
	if (l->loop_id >= 0)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " loop=%d", l->loop_id);
	if (sid)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " sid=%llx",
				      (unsigned long long)sid);
	if (l->dropped && n < sizeof(line)) {
		n += (size_t)snprintf(line + n, sizeof(line) - n, " dropped_lines=%llu",
				      (unsigned long long)l->dropped);
		l->dropped = 0;
	}
	if (n < sizeof(line))
		n += (size_t)snprintf(line + n, sizeof(line) - n, " event=%s", event);
	if (fmt && n + 1 < sizeof(line)) {
		line[n++] = ' ';
		size_t start = n;
		k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		if (k > 0)
			n += (size_t)k;
		if (n > sizeof(line) - 2)
			n = sizeof(line) - 2;
		for (size_t i = start; i < n; i++)
			if (line[i] == '\n' || line[i] == '\r')
				line[i] = ' ';
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';

	if (l->direct) {
		write_all(line, n);
		return;
	}
	if (l->fill_len + n > LOG_BUF_SIZE) {
		l->dropped++;
		return;
	}
	memcpy(l->fill + l->fill_len, line, n);
	l->fill_len += n;
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
	l->fill_len = 0;
	*p_r = l->flight;
	return n;
}
