/* span.h - the one byte-range type used everywhere.
 *
 * A span never owns its bytes: it is valid as long as the buffer it points
 * into, and every function that returns one says how long that is. */
#ifndef RINGMAIL_CORE_SPAN_H
#define RINGMAIL_CORE_SPAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct span {
	const uint8_t *p;
	size_t len;
};

#define SPAN_LIT(s) ((struct span){ (const uint8_t *)(s), sizeof(s) - 1 })

static inline struct span span_make(const void *p, size_t len)
{
	return (struct span){ (const uint8_t *)p, len };
}

static inline struct span span_cstr(const char *s)
{
	return (struct span){ (const uint8_t *)s, strlen(s) };
}

/* Returns the bytes of s after the first n (n is clamped to s.len). */
static inline struct span span_skip(struct span s, size_t n)
{
	if (n > s.len)
		n = s.len;
	return (struct span){ s.p + n, s.len - n };
}

static inline int span_eq(struct span a, struct span b)
{
	return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* ASCII case-insensitive comparison (protocol verbs, header names). */
static inline int span_eq_nocase(struct span a, struct span b)
{
	if (a.len != b.len)
		return 0;
	for (size_t i = 0; i < a.len; i++) {
		uint8_t x = a.p[i], y = b.p[i];
		if (x >= 'A' && x <= 'Z')
			x += 32;
		if (y >= 'A' && y <= 'Z')
			y += 32;
		if (x != y)
			return 0;
	}
	return 1;
}

/* Returns 1 when s starts with prefix, compared ASCII case-insensitively. */
static inline int span_prefix_nocase(struct span s, struct span prefix)
{
	return s.len >= prefix.len &&
	       span_eq_nocase((struct span){ s.p, prefix.len }, prefix);
}

#endif
