/* imap_sort.c - the keys of SORT and THREAD (RFC 5256, RFC 5957). See
 * imap_sort.h. */
#include "proto/imap_sort.h"

#include <string.h>
#include <time.h>

#include "proto/decode.h"

/* ---- criteria ---------------------------------------------------------- */

int imap_sort_parse(const struct span *atoms, size_t n, struct imap_sort_crit *c, size_t cap)
{
	static const char *const names[] = {
		[IMAP_SORT_ARRIVAL] = "ARRIVAL", [IMAP_SORT_CC] = "CC",
		[IMAP_SORT_DATE] = "DATE", [IMAP_SORT_FROM] = "FROM",
		[IMAP_SORT_SIZE] = "SIZE", [IMAP_SORT_SUBJECT] = "SUBJECT",
		[IMAP_SORT_TO] = "TO", [IMAP_SORT_DISPLAYFROM] = "DISPLAYFROM",
		[IMAP_SORT_DISPLAYTO] = "DISPLAYTO",
	};
	size_t k = 0;
	bool reverse = false;
	for (size_t i = 0; i < n; i++) {
		if (span_eq_nocase(atoms[i], SPAN_LIT("REVERSE"))) {
			if (reverse)
				return -1;
			reverse = true;
			continue;
		}
		size_t key = sizeof(names) / sizeof(names[0]);
		for (size_t j = 0; j < sizeof(names) / sizeof(names[0]); j++)
			if (span_eq_nocase(atoms[i], span_cstr(names[j])))
				key = j;
		if (key == sizeof(names) / sizeof(names[0]) || k == cap)
			return -1;
		c[k++] = (struct imap_sort_crit){ .key = (uint8_t)key, .reverse = reverse };
		reverse = false;
	}
	return reverse || k == 0 ? -1 : (int)k;
}

bool imap_sort_key_is_string(uint8_t key)
{
	return key != IMAP_SORT_ARRIVAL && key != IMAP_SORT_DATE && key != IMAP_SORT_SIZE;
}

/* ---- encoded words and whitespace -------------------------------------- */

struct wout {
	uint8_t *p;
	size_t cap, w;
	bool space; /* whitespace seen since the last byte written */
};

static bool is_ws(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void put(struct wout *o, uint8_t c)
{
	if (is_ws(c)) {
		o->space = true;
		return;
	}
	if (c == 0)
		return;
	if (o->space && o->w > 0 && o->w < o->cap)
		o->p[o->w++] = ' ';
	o->space = false;
	if (o->w < o->cap)
		o->p[o->w++] = c;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

enum { CS_UTF8, CS_LATIN1 };

/* An encoded word "=?charset[*lang]?B|Q?text?=" at raw[i]: its end, the
 * text's range, the encoding and the charset; 0 when it is none or its
 * charset is not one decoded here. */
static size_t encoded_word(struct span raw, size_t i, size_t *t0, size_t *t1, uint8_t *enc,
			   int *cs)
{
	const uint8_t *p = raw.p;
	size_t n = raw.len, j = i + 2, c0 = j;
	if (i + 2 > n || p[i] != '=' || p[i + 1] != '?')
		return 0;
	while (j < n && p[j] != '?' && !is_ws(p[j]))
		j++;
	if (j + 3 >= n || p[j] != '?' || p[j + 2] != '?')
		return 0;
	struct span cset = span_make(p + c0, j - c0);
	for (size_t k = 0; k < cset.len; k++)
		if (cset.p[k] == '*') /* RFC 2231 language */
			cset.len = k;
	if (span_eq_nocase(cset, SPAN_LIT("UTF-8")) || span_eq_nocase(cset, SPAN_LIT("US-ASCII")))
		*cs = CS_UTF8;
	else if (span_eq_nocase(cset, SPAN_LIT("ISO-8859-1")) ||
		 span_eq_nocase(cset, SPAN_LIT("LATIN1")))
		*cs = CS_LATIN1;
	else
		return 0;
	*enc = p[j + 1] | 0x20;
	if (*enc != 'b' && *enc != 'q')
		return 0;
	*t0 = j + 3;
	size_t k = *t0;
	while (k + 1 < n && !(p[k] == '?' && p[k + 1] == '=')) {
		if (is_ws(p[k]))
			return 0;
		k++;
	}
	if (k + 1 >= n)
		return 0;
	*t1 = k;
	return k + 2;
}

static void put_cs(struct wout *o, uint8_t c, int cs)
{
	if (cs == CS_LATIN1 && c >= 0x80) {
		put(o, (uint8_t)(0xc0 | c >> 6));
		put(o, (uint8_t)(0x80 | (c & 0x3f)));
	} else {
		put(o, c);
	}
}

static void decode_word(struct wout *o, struct span t, uint8_t enc, int cs)
{
	if (enc == 'q') {
		for (size_t k = 0; k < t.len; k++) {
			int hi, lo;
			if (t.p[k] == '_')
				put(o, ' ');
			else if (t.p[k] == '=' && k + 2 < t.len && (hi = hexval(t.p[k + 1])) >= 0 &&
				 (lo = hexval(t.p[k + 2])) >= 0) {
				put_cs(o, (uint8_t)(hi << 4 | lo), cs);
				k += 2;
			} else {
				put_cs(o, t.p[k], cs);
			}
		}
		return;
	}
	struct decode_b64 d;
	uint8_t buf[DECODE_OUT_MAX(256)];
	decode_b64_init(&d);
	for (size_t k = 0; k < t.len; k += 256) {
		size_t n = decode_b64_feed(&d, span_make(t.p + k, t.len - k < 256 ? t.len - k : 256),
					   buf);
		for (size_t j = 0; j < n; j++)
			put_cs(o, buf[j], cs);
	}
}

size_t imap_sort_decode_words(struct span raw, uint8_t *out, size_t cap)
{
	struct wout o = { .p = out, .cap = cap };
	bool after_word = false, gap = false;
	for (size_t i = 0; i < raw.len;) {
		uint8_t c = raw.p[i];
		if (is_ws(c)) {
			/* between two encoded words it is dropped (RFC 2047 6.2) */
			if (after_word)
				gap = true;
			else
				put(&o, c);
			i++;
			continue;
		}
		size_t t0, t1, end;
		uint8_t enc;
		int cs;
		if (c == '=' && (end = encoded_word(raw, i, &t0, &t1, &enc, &cs)) != 0) {
			decode_word(&o, span_make(raw.p + t0, t1 - t0), enc, cs);
			after_word = true;
			gap = false;
			i = end;
			continue;
		}
		if (gap)
			put(&o, ' ');
		after_word = gap = false;
		put(&o, c);
		i++;
	}
	return o.w;
}

/* i;unicode-casemap for ASCII and Latin-1 letters: to upper case. */
static void fold(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] >= 'a' && p[i] <= 'z')
			p[i] = (uint8_t)(p[i] - 0x20);
		else if (p[i] == 0xc3 && i + 1 < n && p[i + 1] >= 0xa0 && p[i + 1] <= 0xbe &&
			 p[i + 1] != 0xb7) {
			p[i + 1] = (uint8_t)(p[i + 1] - 0x20);
			i++;
		}
	}
}

/* ---- the base subject (RFC 5256 2.1) ------------------------------------ */

#define NOMATCH ((size_t)-1)

/* subj-blob = "[" *BLOBCHAR "]" *WSP at s: its end, or NOMATCH. */
static size_t blob_end(const uint8_t *p, size_t s, size_t e)
{
	if (s >= e || p[s] != '[')
		return NOMATCH;
	size_t j = s + 1;
	while (j < e && p[j] != ']') {
		if (p[j] == '[')
			return NOMATCH;
		j++;
	}
	if (j == e)
		return NOMATCH;
	for (j++; j < e && p[j] == ' '; j++)
		;
	return j;
}

/* *subj-blob subj-refwd at s, subj-refwd = ("re" / ("fw" ["d"])) *WSP
 * [subj-blob] ":" (folded to upper case): its end, or NOMATCH. */
static size_t refwd_end(const uint8_t *p, size_t s, size_t e)
{
	size_t q, j = s;
	while ((q = blob_end(p, j, e)) != NOMATCH)
		j = q;
	if (e - j >= 2 && p[j] == 'R' && p[j + 1] == 'E') {
		j += 2;
	} else if (e - j >= 2 && p[j] == 'F' && p[j + 1] == 'W') {
		j += 2;
		if (j < e && p[j] == 'D')
			j++;
	} else {
		return NOMATCH;
	}
	while (j < e && p[j] == ' ')
		j++;
	if ((q = blob_end(p, j, e)) != NOMATCH)
		j = q;
	return j < e && p[j] == ':' ? j + 1 : NOMATCH;
}

size_t imap_sort_base_subject(struct span raw, uint8_t *out, size_t cap)
{
	bool refwd;
	return imap_sort_base_subject_refwd(raw, out, cap, &refwd);
}

size_t imap_sort_base_subject_refwd(struct span raw, uint8_t *out, size_t cap, bool *refwd_r)
{
	*refwd_r = false;
	size_t n = imap_sort_decode_words(raw, out, cap);
	fold(out, n);
	size_t s = 0, e = n;
	for (;;) {
		/* (2) subj-trailer = "(fwd)" / WSP */
		for (;;) {
			if (e > s && out[e - 1] == ' ')
				e--;
			else if (e - s >= 5 && memcmp(out + e - 5, "(FWD)", 5) == 0)
				e -= 5, *refwd_r = true;
			else
				break;
		}
		/* (3) subj-leader, (4) a subj-blob before a non-empty rest, (5) */
		bool changed;
		do {
			changed = false;
			for (;;) {
				size_t q;
				if (s < e && out[s] == ' ')
					s++;
				else if ((q = refwd_end(out, s, e)) != NOMATCH)
					s = q, *refwd_r = true;
				else
					break;
				changed = true;
			}
			size_t q = blob_end(out, s, e);
			if (q != NOMATCH && q < e) {
				s = q;
				changed = true;
			}
		} while (changed);
		/* (6) "[fwd:" subject "]" */
		if (e - s >= 6 && memcmp(out + s, "[FWD:", 5) == 0 && out[e - 1] == ']') {
			s += 5;
			e--;
			*refwd_r = true;
			continue;
		}
		break;
	}
	memmove(out, out + s, e - s);
	return e - s;
}

/* ---- the sent date ------------------------------------------------------ */

static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_alpha(uint8_t c) { return (uint8_t)((c | 0x20) - 'a') < 26; }

static void skip_sep(const uint8_t *b, size_t n, size_t *i)
{
	while (*i < n && (b[*i] == ' ' || b[*i] == '-'))
		(*i)++;
}

static bool number(const uint8_t *b, size_t n, size_t *i, long *v_r, int *digits_r)
{
	long v = 0;
	int d = 0;
	for (; *i < n && is_digit(b[*i]) && d < 9; (*i)++, d++)
		v = v * 10 + (b[*i] - '0');
	*v_r = v;
	*digits_r = d;
	return d > 0;
}

/* ":" with optional spaces around it (obs-time) */
static bool colon(const uint8_t *b, size_t n, size_t *i)
{
	size_t j = *i;
	while (j < n && b[j] == ' ')
		j++;
	if (j >= n || b[j] != ':')
		return false;
	for (j++; j < n && b[j] == ' '; j++)
		;
	*i = j;
	return true;
}

bool imap_sort_parse_date(struct span v, int64_t *t_r)
{
	/* comments dropped (nested), whitespace runs made one space */
	uint8_t b[256];
	size_t n = 0;
	int depth = 0;
	for (size_t i = 0; i < v.len && n < sizeof(b) - 1; i++) {
		uint8_t c = v.p[i];
		if (c == '\\' && depth) {
			i++;
		} else if (c == '(') {
			depth++;
		} else if (c == ')' && depth) {
			depth--;
		} else if (!depth) {
			if (is_ws(c) || c == ',')
				c = ' ';
			if (c != ' ' || (n && b[n - 1] != ' '))
				b[n++] = c;
		}
	}
	b[n] = '\0';
	size_t i = 0;
	/* [day-of-week ","] */
	while (i < n && is_alpha(b[i]))
		i++;
	long day, year, hour, min, sec = 0;
	int ny, nd;
	skip_sep(b, n, &i);
	if (!number(b, n, &i, &day, &nd))
		return false;
	skip_sep(b, n, &i);
	static const char months[] = "JANFEBMARAPRMAYJUNJULAUGSEPOCTNOVDEC";
	int mon = -1;
	if (n - i < 3)
		return false;
	for (int k = 0; k < 12; k++)
		if ((b[i] & ~0x20) == months[3 * k] && (b[i + 1] & ~0x20) == months[3 * k + 1] &&
		    (b[i + 2] & ~0x20) == months[3 * k + 2])
			mon = k;
	if (mon < 0)
		return false;
	while (i < n && is_alpha(b[i]))
		i++;
	skip_sep(b, n, &i);
	if (!number(b, n, &i, &year, &ny) || i >= n || b[i] != ' ')
		return false;
	skip_sep(b, n, &i);
	if (!number(b, n, &i, &hour, &nd) || !colon(b, n, &i) || !number(b, n, &i, &min, &nd))
		return false;
	if (colon(b, n, &i) && !number(b, n, &i, &sec, &nd))
		return false;
	if (ny == 2)
		year += year < 50 ? 2000 : 1900;
	else if (ny == 3)
		year += 1900;
	if (day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60 || year < 1900 ||
	    year > 9999)
		return false;
	/* zone: ("+" / "-") 4DIGIT, or an obsolete name; none counts as UTC */
	while (i < n && b[i] == ' ')
		i++;
	long off = 0;
	if (i < n && (b[i] == '+' || b[i] == '-') && n - i >= 5 && is_digit(b[i + 1]) &&
	    is_digit(b[i + 2]) && is_digit(b[i + 3]) && is_digit(b[i + 4])) {
		long hh = (b[i + 1] - '0') * 10 + (b[i + 2] - '0');
		long mm = (b[i + 3] - '0') * 10 + (b[i + 4] - '0');
		if (mm > 59)
			return false;
		off = (hh * 60 + mm) * 60;
		if (b[i] == '-')
			off = -off;
	} else if (i < n && is_alpha(b[i])) {
		static const struct { const char *name; int hours; } zones[] = {
			{ "UT", 0 },	 { "GMT", 0 },	{ "EST", -5 }, { "EDT", -4 },
			{ "CST", -6 }, { "CDT", -5 }, { "MST", -7 }, { "MDT", -6 },
			{ "PST", -8 }, { "PDT", -7 },
		};
		size_t j = i;
		while (j < n && is_alpha(b[j]))
			j++;
		struct span z = span_make(b + i, j - i);
		/* military and unknown zones: -0000 (RFC 5322 4.3) */
		for (size_t k = 0; k < sizeof(zones) / sizeof(zones[0]); k++)
			if (span_eq_nocase(z, span_cstr(zones[k].name)))
				off = zones[k].hours * 3600L;
	}
	struct tm tm = { .tm_mday = (int)day, .tm_mon = mon, .tm_year = (int)(year - 1900),
			 .tm_hour = (int)hour, .tm_min = (int)min, .tm_sec = (int)sec };
	*t_r = (int64_t)timegm(&tm) - off;
	return true;
}

/* ---- the keys of a message ---------------------------------------------- */

/* The first mailbox of an address field: its display key (display name,
 * else addr-spec) or its addr-mailbox, folded. */
static size_t addr_key(const struct mime_blob *mb, enum mime_field f, bool display, uint8_t *out)
{
	struct span v;
	if (!mb || !mime_blob_field(mb, 0, f, &v))
		return 0;
	struct mime_addr_iter it;
	struct mime_addr a;
	mime_addr_iter_init(&it, v);
	while (mime_addr_next(&it, &a) == 1) {
		if (a.type != MIME_ADDR_MAILBOX)
			continue;
		uint8_t tmp[IMAP_SORT_STRING_MAX];
		size_t n = 0;
		if (display && a.name.len) {
			n = a.name_is_comment ? mime_comment_render(a.name, tmp, sizeof(tmp))
					      : mime_phrase_render(a.name, tmp, sizeof(tmp));
			if (n > sizeof(tmp))
				n = sizeof(tmp);
			n = imap_sort_decode_words(span_make(tmp, n), out, IMAP_SORT_STRING_MAX);
		}
		if (n == 0) {
			n = mime_addr_part_render(a.local, out, IMAP_SORT_STRING_MAX);
			if (n > IMAP_SORT_STRING_MAX)
				n = IMAP_SORT_STRING_MAX;
			if (display && a.has_domain && n < IMAP_SORT_STRING_MAX) {
				out[n++] = '@';
				size_t d = mime_addr_part_render(a.domain, out + n,
								 IMAP_SORT_STRING_MAX - n);
				n += d < IMAP_SORT_STRING_MAX - n ? d : IMAP_SORT_STRING_MAX - n;
			}
		}
		fold(out, n);
		return n;
	}
	return 0;
}

size_t imap_sort_key_string(const struct mime_blob *mb, uint8_t key, uint8_t *out)
{
	struct span v;
	switch (key) {
	case IMAP_SORT_SUBJECT:
		if (!mb || !mime_blob_field(mb, 0, MIME_FIELD_SUBJECT, &v))
			return 0;
		return imap_sort_base_subject(v, out, IMAP_SORT_STRING_MAX);
	case IMAP_SORT_FROM:
		return addr_key(mb, MIME_FIELD_FROM, false, out);
	case IMAP_SORT_TO:
		return addr_key(mb, MIME_FIELD_TO, false, out);
	case IMAP_SORT_CC:
		return addr_key(mb, MIME_FIELD_CC, false, out);
	case IMAP_SORT_DISPLAYFROM:
		return addr_key(mb, MIME_FIELD_FROM, true, out);
	case IMAP_SORT_DISPLAYTO:
		return addr_key(mb, MIME_FIELD_TO, true, out);
	}
	return 0;
}

static uint64_t time_order(int64_t t)
{
	return (uint64_t)t ^ (1ull << 63);
}

uint64_t imap_sort_key_number(const struct mime_blob *mb, uint8_t key, uint64_t size,
			      int64_t internal_date)
{
	struct span v;
	int64_t t;
	switch (key) {
	case IMAP_SORT_SIZE:
		return size;
	case IMAP_SORT_DATE:
		if (mb && mime_blob_field(mb, 0, MIME_FIELD_DATE, &v) && imap_sort_parse_date(v, &t))
			return time_order(t);
		return time_order(internal_date);
	default:
		return time_order(internal_date);
	}
}
