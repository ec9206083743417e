/* core/log.c: the line format, newline scrubbing, truncation, the
 * dropped-lines count and the buffer swap. */
#include <criterion/criterion.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"

static struct log l;

static void setup(void)
{
	cr_assert_eq(log_init(&l, LOG_INFO, 3, false), 0);
}

static void teardown(void)
{
	log_fini(&l);
}

TestSuite(log, .init = setup, .fini = teardown);

static char *take(size_t *n_r)
{
	const char *p;
	size_t n = log_take(&l, &p);
	char *s = malloc(n + 1);
	memcpy(s, p, n);
	s[n] = '\0';
	*n_r = n;
	return s;
}

static void match(const char *text, const char *re)
{
	regex_t r;
	cr_assert_eq(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
	cr_assert_eq(regexec(&r, text, 0, NULL, 0), 0, "%s !~ %s", text, re);
	regfree(&r);
}

Test(log, line_format)
{
	size_t n;
	log_emit(&l, LOG_WARN, 0x1000000002aull, "connect", "listener=%s n=%d", "smtp", 7);
	log_emit(&l, LOG_INFO, 0, "tick", NULL);
	char *s = take(&n);
	match(s, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
		 "warn loop=3 sid=1000000002a event=connect listener=smtp n=7\n"
		 "[0-9T:.-]{23}Z info loop=3 event=tick\n$");
	free(s);
}

Test(log, newlines_in_caller_text_become_spaces)
{
	size_t n;
	log_emit(&l, LOG_INFO, 1, "x", "a=%s", "one\r\ntwo\nthree");
	char *s = take(&n);
	cr_assert_eq(strchr(s, '\n'), s + n - 1);
	cr_assert(strstr(s, "a=one  two three\n"));
	free(s);
}

Test(log, long_text_cut_at_the_line_limit)
{
	static char big[10000];
	size_t n;
	memset(big, 'b', sizeof(big) - 1);
	log_emit(&l, LOG_INFO, 1, "big", "v=%s", big);
	log_emit(&l, LOG_INFO, 1, "after", NULL);
	char *s = take(&n);
	char *nl = strchr(s, '\n');
	cr_assert_not_null(nl);
	cr_assert_eq((size_t)(nl - s) + 1, LOG_LINE_MAX);
	cr_assert(strstr(nl + 1, "event=after\n"));
	free(s);
}

static size_t count_lines(const char *s)
{
	size_t lines = 0;
	for (const char *c = s; *c; c++)
		lines += *c == '\n';
	return lines;
}

/* A burst past the first buffer (a thousand logins while the previous
 * write waits for an io_uring worker) is kept whole, in order; after the
 * next take the fill buffer is back at its resting size. */
Test(log, burst_grows_the_buffer_and_keeps_every_line)
{
	size_t n;
	for (int i = 0; i < 5000; i++)
		log_emit(&l, LOG_INFO, 1, "login", "user=u%d@example.com tls=yes", i);
	cr_assert_gt(l.fill_len, LOG_BUF_SIZE);
	char *s = take(&n);
	cr_assert_eq(count_lines(s), 5000u);
	cr_assert(strstr(s, "user=u0@example.com tls=yes\n"));
	cr_assert(strstr(s, "user=u4999@example.com tls=yes\n"));
	cr_assert_null(strstr(s, "dropped_lines"));
	free(s);
	cr_assert_eq(l.fill_cap, LOG_BUF_SIZE, "the emptied buffer shrank back");
	log_emit(&l, LOG_INFO, 1, "next", NULL);
	s = take(&n);
	cr_assert_eq(l.fill_cap, LOG_BUF_SIZE);
	cr_assert_eq(l.flight_cap, LOG_BUF_SIZE);
	cr_assert(strstr(s, " event=next\n"));
	free(s);
}

Test(log, full_buffer_drops_and_counts)
{
	size_t n, lines, total = 40000;
	for (size_t i = 0; i < total; i++)
		log_emit(&l, LOG_INFO, 1, "fill", "i=%zu", i);
	char *s = take(&n);
	cr_assert_leq(n, LOG_BUF_MAX);
	cr_assert_gt(n, LOG_BUF_MAX - LOG_LINE_MAX);
	lines = count_lines(s);
	free(s);
	cr_assert_lt(lines, total);
	log_emit(&l, LOG_INFO, 1, "next", NULL);
	s = take(&n);
	char want[64];
	snprintf(want, sizeof(want), " dropped_lines=%zu event=next\n", total - lines);
	cr_assert(strstr(s, want), "%s", s);
	free(s);
}
