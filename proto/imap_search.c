/* imap_search.c - the IMAP SEARCH program: parser, three-valued evaluator
 * and the byte scanner for HEADER, BODY and TEXT keys (see imap_search.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proto/imap_search.h"

/* Same bits as STORE_F_* in store/store.h (this file stays below store/). */
enum { F_SEEN = 1u << 0, F_ANSWERED = 1u << 1, F_FLAGGED = 1u << 2, F_DELETED = 1u << 3,
       F_DRAFT = 1u << 4 };

static uint8_t fold(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* v as a decimal number of 1 to max digits (max <= 19: no overflow). */
static bool digits_value(struct span v, size_t max, uint64_t *n_r)
{
	uint64_t n = 0;
	if (!v.len || v.len > max)
		return false;
	for (size_t d = 0; d < v.len; d++) {
		if (v.p[d] < '0' || v.p[d] > '9')
			return false;
		n = n * 10 + (uint64_t)(v.p[d] - '0');
	}
	*n_r = n;
	return true;
}

/* ---- parsing ------------------------------------------------------------------ */

int64_t imap_search_parse_day(struct span s)
{
	static const char *const mon[] = { "jan", "feb", "mar", "apr", "may", "jun",
					   "jul", "aug", "sep", "oct", "nov", "dec" };
	char buf[32];
	if (s.len >= sizeof(buf))
		return -1;
	memcpy(buf, s.p, s.len);
	buf[s.len] = '\0';
	int d, y, used = 0;
	char m[4];
	if (sscanf(buf, "%2d-%3[A-Za-z]-%4d%n", &d, m, &y, &used) != 3 || (size_t)used != s.len ||
	    strlen(strrchr(buf, '-') + 1) != 4)
		return IMAP_SEARCH_DAY_INVALID; /* date-year is 4DIGIT */
	int mi = -1;
	for (int k = 0; k < 12; k++)
		if (strcasecmp(m, mon[k]) == 0)
			mi = k;
	if (mi < 0 || d < 1 || d > 31 || y < 1)
		return IMAP_SEARCH_DAY_INVALID;
	struct tm tm = { .tm_mday = d, .tm_mon = mi, .tm_year = y - 1900 };
	time_t t = timegm(&tm);
	if (tm.tm_mday != d || tm.tm_mon != mi)
		return IMAP_SEARCH_DAY_INVALID; /* 31-Feb, 31-Apr: timegm() rolled it over */
	/* midnight UTC: a whole number of days, also before 1970 */
	return (int64_t)t / 86400;
}

/* The day of a Date: header value ("Tue, 1 Jul 2003 10:52:37 +0200"). */
static int64_t header_day(struct span v)
{
	char buf[128];
	size_t n = v.len < sizeof(buf) - 1 ? v.len : sizeof(buf) - 1;
	memcpy(buf, v.p, n);
	buf[n] = '\0';
	char *p = strchr(buf, ',');
	p = p ? p + 1 : buf;
	int d, y;
	char m[4];
	if (sscanf(p, "%d %3s %d", &d, m, &y) != 3 || d < 1 || d > 31 || y < 0 || y > 9999)
		return IMAP_SEARCH_DAY_INVALID;
	char spec[32];
	snprintf(spec, sizeof(spec), "%d-%s-%d", d, m, y < 50 ? y + 2000 : y < 100 ? y + 1900 : y);
	return imap_search_parse_day(span_cstr(spec));
}

struct pctx {
	struct imap_search *s;
	const struct imap_search_tok *t;
	size_t n, i;
};

static bool tok_is(const struct pctx *c, size_t i, const char *word)
{
	return i < c->n && c->t[i].kind == IMAP_STOK_ATOM &&
	       span_eq_nocase(c->t[i].text, span_cstr(word));
}

static bool tok_astring(const struct pctx *c, size_t i)
{
	return i < c->n && (c->t[i].kind == IMAP_STOK_ATOM || c->t[i].kind == IMAP_STOK_STRING ||
			    c->t[i].kind == IMAP_STOK_NIL);
}

static int set_key(struct pctx *c, struct imap_search_key *k, struct span v, uint8_t kind)
{
	struct imap_search *s = c->s;
	size_t n;
	if (imap_parse_seqset(v, s->set + s->set_used, IMAP_SEARCH_SET_MAX - s->set_used, &n))
		return -1;
	k->kind = kind;
	k->set_off = (uint32_t)s->set_used;
	k->set_n = (uint32_t)n;
	s->set_used += n;
	return 0;
}

/* The blob field id of a header name, or -1. */
static int blob_field(struct span name)
{
	static const char *const names[MIME_FIELD_COUNT] = {
		[MIME_FIELD_CONTENT_TYPE] = "Content-Type",
		[MIME_FIELD_CONTENT_TRANSFER_ENCODING] = "Content-Transfer-Encoding",
		[MIME_FIELD_CONTENT_ID] = "Content-ID",
		[MIME_FIELD_CONTENT_DESCRIPTION] = "Content-Description",
		[MIME_FIELD_CONTENT_DISPOSITION] = "Content-Disposition",
		[MIME_FIELD_CONTENT_LANGUAGE] = "Content-Language",
		[MIME_FIELD_CONTENT_LOCATION] = "Content-Location",
		[MIME_FIELD_CONTENT_MD5] = "Content-MD5",
		[MIME_FIELD_DATE] = "Date",
		[MIME_FIELD_SUBJECT] = "Subject",
		[MIME_FIELD_FROM] = "From",
		[MIME_FIELD_SENDER] = "Sender",
		[MIME_FIELD_REPLY_TO] = "Reply-To",
		[MIME_FIELD_TO] = "To",
		[MIME_FIELD_CC] = "Cc",
		[MIME_FIELD_BCC] = "Bcc",
		[MIME_FIELD_IN_REPLY_TO] = "In-Reply-To",
		[MIME_FIELD_MESSAGE_ID] = "Message-ID",
	};
	for (int f = 0; f < MIME_FIELD_COUNT; f++)
		if (span_eq_nocase(name, span_cstr(names[f])))
			return f;
	return -1;
}

static int parse_key(struct pctx *c, int depth);

static int parse_key(struct pctx *c, int depth)
{
	struct imap_search *s = c->s;
	if (c->i >= c->n || s->n >= IMAP_SEARCH_KEYS_MAX || depth > IMAP_LIST_DEPTH_MAX)
		return -1;
	size_t self = s->n++;
	struct imap_search_key *k = &s->keys[self];
	memset(k, 0, sizeof(*k));
	k->field = -1;
	const struct imap_search_tok *t = &c->t[c->i++];
	if (t->kind == IMAP_STOK_LBEGIN) {
		uint64_t cnt = 0;
		k->kind = ISK_AND;
		while (c->i < c->n && c->t[c->i].kind != IMAP_STOK_LEND) {
			if (parse_key(c, depth + 1))
				return -1;
			cnt++;
		}
		if (c->i >= c->n || cnt == 0)
			return -1;
		c->i++;
		s->keys[self].num = cnt;
		return 0;
	}
	if (t->kind != IMAP_STOK_ATOM)
		return -1;
	struct span a = t->text;
	static const struct {
		const char *name;
		uint32_t flag;
		bool neg;
	} flags[] = {
		{ "ANSWERED", F_ANSWERED, 0 },	 { "DELETED", F_DELETED, 0 },
		{ "DRAFT", F_DRAFT, 0 },	 { "FLAGGED", F_FLAGGED, 0 },
		{ "SEEN", F_SEEN, 0 },		 { "UNANSWERED", F_ANSWERED, 1 },
		{ "UNDELETED", F_DELETED, 1 },	 { "UNDRAFT", F_DRAFT, 1 },
		{ "UNFLAGGED", F_FLAGGED, 1 },	 { "UNSEEN", F_SEEN, 1 },
	};
	for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++)
		if (span_eq_nocase(a, span_cstr(flags[f].name))) {
			k->kind = ISK_FLAG;
			k->flag = flags[f].flag;
			k->neg = flags[f].neg;
			return 0;
		}
	/* No message is ever \Recent here (RFC 9051 dropped it): OLD is
	 * every message, NEW and RECENT none. */
	if (span_eq_nocase(a, SPAN_LIT("ALL")) || span_eq_nocase(a, SPAN_LIT("OLD"))) {
		k->kind = ISK_ALL;
		return 0;
	}
	if (span_eq_nocase(a, SPAN_LIT("NEW")) || span_eq_nocase(a, SPAN_LIT("RECENT"))) {
		k->kind = ISK_NONE;
		return 0;
	}
	if (span_eq_nocase(a, SPAN_LIT("NOT"))) {
		k->kind = ISK_NOT;
		return parse_key(c, depth + 1);
	}
	if (span_eq_nocase(a, SPAN_LIT("OR"))) {
		k->kind = ISK_OR;
		if (parse_key(c, depth + 1))
			return -1;
		return parse_key(c, depth + 1);
	}
	if (span_eq(a, SPAN_LIT("$"))) {
		/* RFC 5182: the saved result, a whole sequence-set ("1,$" is
		 * not one) */
		k->kind = ISK_SAVED;
		s->uses_saved = true;
		return 0;
	}
	if (a.len && ((a.p[0] >= '0' && a.p[0] <= '9') || a.p[0] == '*'))
		return set_key(c, k, a, ISK_SEQ);
	/* keys with arguments */
	if (c->i >= c->n)
		return -1;
	size_t v = c->i++;
	struct span val = c->t[v].text;
	if (span_eq_nocase(a, SPAN_LIT("UID"))) {
		if (c->t[v].kind == IMAP_STOK_ATOM && span_eq(val, SPAN_LIT("$"))) {
			k->kind = ISK_SAVED; /* the same messages as "$" */
			s->uses_saved = true;
			return 0;
		}
		return c->t[v].kind == IMAP_STOK_ATOM ? set_key(c, k, val, ISK_UID) : -1;
	}
	if (span_eq_nocase(a, SPAN_LIT("KEYWORD")) || span_eq_nocase(a, SPAN_LIT("UNKEYWORD"))) {
		k->kind = ISK_KEYWORD;
		k->neg = a.len == 9;
		k->name = val;
		return c->t[v].kind == IMAP_STOK_ATOM && val.len ? 0 : -1;
	}
	if (span_eq_nocase(a, SPAN_LIT("LARGER")) || span_eq_nocase(a, SPAN_LIT("SMALLER"))) {
		uint64_t n; /* number64 (RFC 9051) */
		if (c->t[v].kind != IMAP_STOK_ATOM || imap_parse_number64(val, false, &n))
			return -1;
		k->kind = a.len == 6 ? ISK_LARGER : ISK_SMALLER;
		k->num = n;
		return 0;
	}
	if (span_eq_nocase(a, SPAN_LIT("MODSEQ"))) {
		/* MODSEQ [entry-name entry-type-req] mod-sequence-valzer */
		if (c->t[v].kind == IMAP_STOK_STRING) {
			if (!(tok_is(c, c->i, "priv") || tok_is(c, c->i, "shared") ||
			      tok_is(c, c->i, "all")) || c->i + 1 >= c->n)
				return -1;
			c->i++;
			v = c->i++;
			val = c->t[v].text;
		}
		uint64_t n;
		if (c->t[v].kind != IMAP_STOK_ATOM || !digits_value(val, 19, &n))
			return -1;
		k->kind = ISK_MODSEQ;
		k->num = n;
		s->modseq = true;
		return 0;
	}
	if (span_eq_nocase(a, SPAN_LIT("OLDER")) || span_eq_nocase(a, SPAN_LIT("YOUNGER"))) {
		/* RFC 5032: an nz-number of seconds */
		uint64_t n;
		if (c->t[v].kind != IMAP_STOK_ATOM || !digits_value(val, 10, &n) || n == 0 ||
		    n > UINT32_MAX)
			return -1;
		k->kind = fold(a.p[0]) == 'o' ? ISK_OLDER : ISK_YOUNGER;
		k->num = n;
		return 0;
	}
	static const struct {
		const char *name;
		uint8_t kind;
	} dates[] = {
		{ "BEFORE", ISK_BEFORE },	  { "ON", ISK_ON },	    { "SINCE", ISK_SINCE },
		{ "SENTBEFORE", ISK_SENTBEFORE }, { "SENTON", ISK_SENTON }, { "SENTSINCE", ISK_SENTSINCE },
	};
	for (size_t d = 0; d < sizeof(dates) / sizeof(dates[0]); d++)
		if (span_eq_nocase(a, span_cstr(dates[d].name))) {
			int64_t day = c->t[v].kind == IMAP_STOK_LBEGIN || c->t[v].kind ==
				IMAP_STOK_LEND ? IMAP_SEARCH_DAY_INVALID : imap_search_parse_day(val);
			if (day == IMAP_SEARCH_DAY_INVALID)
				return -1;
			k->kind = dates[d].kind;
			k->num = (uint64_t)day;
			return 0;
		}
	if (!tok_astring(c, v))
		return -1;
	static const char *const fields[] = { "FROM", "TO", "CC", "BCC", "SUBJECT" };
	for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++)
		if (span_eq_nocase(a, span_cstr(fields[f]))) {
			k->kind = ISK_HEADER;
			k->name = span_cstr(fields[f]);
			k->field = (int8_t)blob_field(k->name);
			k->str = val;
			return 0;
		}
	if (span_eq_nocase(a, SPAN_LIT("HEADER"))) {
		if (!tok_astring(c, c->i) || !val.len)
			return -1;
		for (size_t b = 0; b < val.len; b++)
			if (val.p[b] <= ' ' || val.p[b] == ':' || val.p[b] >= 0x7f)
				return -1; /* RFC 5322 ftext */
		k->kind = ISK_HEADER;
		k->name = val;
		k->field = (int8_t)blob_field(val);
		k->str = c->t[c->i++].text;
		return 0;
	}
	if (span_eq_nocase(a, SPAN_LIT("BODY")) || span_eq_nocase(a, SPAN_LIT("TEXT"))) {
		k->kind = a.len == 4 && fold(a.p[0]) == 'b' ? ISK_BODY : ISK_TEXT;
		k->str = val;
		return 0;
	}
	return -1;
}

int imap_search_parse(struct imap_search *s, const struct imap_search_tok *t, size_t n)
{
	s->n = 0;
	s->set_used = 0;
	s->esearch = false;
	s->ret = 0;
	s->modseq = false;
	s->uses_saved = false;
	s->need = 0;
	s->nbytekeys = 0;
	s->fail_len = 0;
	s->err = "Invalid search criteria";
	s->now = (int64_t)time(NULL);
	struct pctx c = { s, t, n, 0 };
	if (tok_is(&c, 0, "RETURN")) {
		s->esearch = true;
		if (n < 2 || t[1].kind != IMAP_STOK_LBEGIN) {
			s->err = "Syntax: SEARCH RETURN (options) keys";
			return IMAP_SEARCH_BAD;
		}
		size_t i = 2;
		for (; i < n && t[i].kind != IMAP_STOK_LEND; i++) {
			if (tok_is(&c, i, "MIN"))
				s->ret |= IMAP_SEARCH_RET_MIN;
			else if (tok_is(&c, i, "MAX"))
				s->ret |= IMAP_SEARCH_RET_MAX;
			else if (tok_is(&c, i, "COUNT"))
				s->ret |= IMAP_SEARCH_RET_COUNT;
			else if (tok_is(&c, i, "ALL"))
				s->ret |= IMAP_SEARCH_RET_ALL;
			else if (tok_is(&c, i, "SAVE"))
				s->ret |= IMAP_SEARCH_RET_SAVE;
			else {
				s->err = "Unknown RETURN option";
				return IMAP_SEARCH_BAD;
			}
		}
		if (i >= n) {
			s->err = "Syntax: SEARCH RETURN (options) keys";
			return IMAP_SEARCH_BAD;
		}
		if (!s->ret)
			s->ret = IMAP_SEARCH_RET_ALL; /* RFC 4731 3.1 */
		c.i = i + 1;
	}
	if (tok_is(&c, c.i, "CHARSET")) {
		if (!tok_astring(&c, c.i + 1)) {
			s->err = "Syntax: SEARCH CHARSET name keys";
			return IMAP_SEARCH_BAD;
		}
		struct span cs = t[c.i + 1].text;
		if (!span_eq_nocase(cs, SPAN_LIT("UTF-8")) && !span_eq_nocase(cs, SPAN_LIT("US-ASCII")))
			return IMAP_SEARCH_BADCHARSET;
		c.i += 2;
	}
	/* Key 0: the whole program, an AND of the top-level keys. */
	struct imap_search_key *all = &s->keys[s->n++];
	memset(all, 0, sizeof(*all));
	all->kind = ISK_AND;
	all->field = -1;
	uint64_t cnt = 0;
	while (c.i < n) {
		if (parse_key(&c, 0))
			return IMAP_SEARCH_BAD;
		cnt++;
	}
	if (!cnt)
		return IMAP_SEARCH_BAD;
	s->keys[0].num = cnt;
	for (size_t k = 0; k < s->n; k++) {
		struct imap_search_key *key = &s->keys[k];
		if (key->kind != ISK_HEADER && key->kind != ISK_BODY && key->kind != ISK_TEXT)
			continue;
		s->nbytekeys++;
		s->need |= key->kind == ISK_HEADER ? IMAP_SEARCH_NEED_HEADER
			 : key->kind == ISK_BODY ? IMAP_SEARCH_NEED_BODY
			 : IMAP_SEARCH_NEED_HEADER | IMAP_SEARCH_NEED_BODY;
		key->fail_off = (uint32_t)s->fail_len;
		s->fail_len += key->str.len;
	}
	s->err = NULL;
	return IMAP_SEARCH_OK;
}

void imap_search_prepare(struct imap_search *s, uint32_t *fail)
{
	s->fail = fail;
	for (size_t k = 0; k < s->n; k++) {
		const struct imap_search_key *key = &s->keys[k];
		if (key->kind != ISK_HEADER && key->kind != ISK_BODY && key->kind != ISK_TEXT)
			continue;
		/* KMP: f[i] is the longest proper prefix of needle[0..i] that is
		 * also its suffix (case-folded). */
		const uint8_t *p = key->str.p;
		uint32_t *f = fail + key->fail_off, q = 0;
		if (key->str.len)
			f[0] = 0;
		for (size_t i = 1; i < key->str.len; i++) {
			while (q && fold(p[i]) != fold(p[q]))
				q = f[q - 1];
			if (fold(p[i]) == fold(p[q]))
				q++;
			f[i] = q;
		}
	}
}

/* ---- evaluation ---------------------------------------------------------------- */

/* Runs key's matcher over data from state *q; true when the needle was
 * seen (then *q is 0). */
static bool kmp_run(const struct imap_search *s, const struct imap_search_key *key, uint32_t *q_io,
		    const uint8_t *d, size_t len)
{
	const uint8_t *p = key->str.p;
	const uint32_t *f = s->fail + key->fail_off;
	uint32_t q = *q_io, n = (uint32_t)key->str.len;
	uint8_t c0 = fold(p[0]);
	for (size_t i = 0; i < len; i++) {
		uint8_t c = fold(d[i]);
		if (q == 0) {
			/* the common case: looking for the first byte */
			while (c != c0 && ++i < len)
				c = fold(d[i]);
			if (i == len)
				break;
		}
		while (q && c != fold(p[q]))
			q = f[q - 1];
		if (c == fold(p[q]) && ++q == n) {
			*q_io = 0;
			return true;
		}
	}
	*q_io = q;
	return false;
}

/* A HEADER key answered from the blob: YES/NO, or MAYBE when the blob
 * does not keep the field or may have lost or cut it. (The blob keeps the
 * first of duplicate fields only; later duplicates are not searched.) */
static int header_from_blob(const struct imap_search *s, const struct imap_search_key *key,
			    const struct mime_blob *mb)
{
	struct mime_part p0;
	struct span v;
	if (!mb || key->field < 0 || (mb->flags & MIME_BLOB_FIELDS_LOST) ||
	    mime_blob_part(mb, 0, &p0) || (p0.flags & MIME_PART_FIELD_TRUNC))
		return IMAP_SEARCH_MAYBE;
	if (!mime_blob_field(mb, 0, (enum mime_field)key->field, &v))
		return IMAP_SEARCH_NO;
	if (key->str.len == 0)
		return IMAP_SEARCH_YES;
	uint32_t q = 0;
	return kmp_run(s, key, &q, v.p, v.len) ? IMAP_SEARCH_YES : IMAP_SEARCH_NO;
}

static int ev(const struct imap_search *s, size_t *k, const struct imap_search_msg *m,
	      const uint8_t *res)
{
	size_t idx = (*k)++;
	const struct imap_search_key *key = &s->keys[idx];
	switch (key->kind) {
	case ISK_ALL:
		return IMAP_SEARCH_YES;
	case ISK_NONE:
		return IMAP_SEARCH_NO;
	case ISK_FLAG:
		return ((m->flags & key->flag) != 0) != key->neg;
	case ISK_KEYWORD:
		return ((m->keywords & key->num) != 0) != key->neg;
	case ISK_SEQ:
		return imap_seqset_contains(s->set + key->set_off, key->set_n, m->seq, m->star_seq);
	case ISK_UID:
		return imap_seqset_contains(s->set + key->set_off, key->set_n, m->uid, m->star_uid);
	case ISK_SAVED:
		return m->saved;
	case ISK_LARGER:
		return m->size > key->num;
	case ISK_SMALLER:
		return m->size < key->num;
	case ISK_MODSEQ:
		return m->modseq >= key->num;
	case ISK_OLDER: /* more than num seconds before now */
		return m->internal_date < s->now - (int64_t)key->num;
	case ISK_YOUNGER: /* within num seconds of now: NOT OLDER */
		return m->internal_date >= s->now - (int64_t)key->num;
	case ISK_BEFORE:
	case ISK_ON:
	case ISK_SINCE:
	case ISK_SENTBEFORE:
	case ISK_SENTON:
	case ISK_SENTSINCE: {
		int64_t day = IMAP_SEARCH_DAY_INVALID;
		struct span v;
		if (key->kind >= ISK_SENTBEFORE && m->mb &&
		    mime_blob_field(m->mb, 0, MIME_FIELD_DATE, &v))
			day = header_day(v);
		if (day == IMAP_SEARCH_DAY_INVALID) /* no usable Date: the internal date */
			day = m->internal_date >= 0 ? m->internal_date / 86400
						    : (m->internal_date - 86399) / 86400;
		int64_t want = (int64_t)key->num;
		if (key->kind == ISK_BEFORE || key->kind == ISK_SENTBEFORE)
			return day < want;
		if (key->kind == ISK_ON || key->kind == ISK_SENTON)
			return day == want;
		return day >= want;
	}
	case ISK_HEADER: {
		int r = header_from_blob(s, key, m->mb);
		if (r != IMAP_SEARCH_MAYBE)
			return r;
		return res ? res[idx] : IMAP_SEARCH_MAYBE;
	}
	case ISK_BODY:
	case ISK_TEXT:
		if (key->str.len == 0)
			return IMAP_SEARCH_YES;
		return res ? res[idx] : IMAP_SEARCH_MAYBE;
	case ISK_NOT: {
		int r = ev(s, k, m, res);
		return r == IMAP_SEARCH_MAYBE ? r : !r;
	}
	case ISK_OR: {
		int x = ev(s, k, m, res);
		int y = ev(s, k, m, res);
		if (x == IMAP_SEARCH_YES || y == IMAP_SEARCH_YES)
			return IMAP_SEARCH_YES;
		return x == IMAP_SEARCH_NO && y == IMAP_SEARCH_NO ? IMAP_SEARCH_NO : IMAP_SEARCH_MAYBE;
	}
	case ISK_AND: {
		int r = IMAP_SEARCH_YES;
		for (uint64_t c = 0; c < key->num; c++) {
			int x = ev(s, k, m, res);
			if (x == IMAP_SEARCH_NO)
				r = IMAP_SEARCH_NO;
			else if (x == IMAP_SEARCH_MAYBE && r == IMAP_SEARCH_YES)
				r = IMAP_SEARCH_MAYBE;
		}
		return r;
	}
	}
	return IMAP_SEARCH_NO;
}

int imap_search_eval(const struct imap_search *s, const struct imap_search_msg *m,
		     const uint8_t *res)
{
	size_t k = 0;
	return s->n ? ev(s, &k, m, res) : IMAP_SEARCH_NO;
}

/* ---- scanning ------------------------------------------------------------------ */

enum { PH_HEADER, PH_BODY, PH_DONE };
enum { H_START, H_NAME, H_VALUE, H_SKIP };
enum { SEG_RAW, SEG_B64, SEG_QP, SEG_SKIP };

static bool kmp_feed(struct imap_search_scan *sc, uint16_t k, const uint8_t *d, size_t len)
{
	return kmp_run(sc->s, &sc->s->keys[k], &sc->kmp[k], d, len);
}

/* Feeds keys list[0..*n) and drops those that matched (now YES). */
static void feed_list(struct imap_search_scan *sc, uint16_t *list, uint16_t *n, const uint8_t *d,
		      size_t len)
{
	for (uint16_t i = 0; i < *n;) {
		uint16_t k = list[i];
		if (sc->res[k] == IMAP_SEARCH_MAYBE && !kmp_feed(sc, k, d, len)) {
			i++;
			continue;
		}
		if (sc->res[k] == IMAP_SEARCH_MAYBE)
			sc->res[k] = IMAP_SEARCH_YES;
		list[i] = list[--*n];
	}
}

/* A body byte range, as the body keys see it (decoded when it is). */
static void body_bytes(struct imap_search_scan *sc, const uint8_t *d, size_t len)
{
	if (sc->seg_mode == SEG_RAW) {
		feed_list(sc, sc->bk, &sc->nb, d, len);
		return;
	}
	if (sc->seg_mode == SEG_SKIP)
		return;
	for (size_t off = 0; off < len && sc->nb;) {
		size_t n = len - off < 1024 ? len - off : 1024;
		struct span in = span_make(d + off, n);
		size_t w = sc->seg_mode == SEG_B64 ? decode_b64_feed(&sc->b64, in, sc->dbuf)
						   : decode_qp_feed(&sc->qp, in, sc->dbuf);
		feed_list(sc, sc->bk, &sc->nb, sc->dbuf, w);
		off += n;
	}
}

static bool is_leaf(const struct mime_part *p)
{
	return (p->kind != MIME_KIND_MULTIPART && p->kind != MIME_KIND_MESSAGE) ||
	       (p->flags & MIME_PART_OPAQUE);
}

static uint8_t leaf_mode(const struct mime_blob *mb, const struct mime_part *p)
{
	struct span cte;
	if (!mime_blob_field(mb, p->index, MIME_FIELD_CONTENT_TRANSFER_ENCODING, &cte))
		return SEG_RAW;
	switch (decode_cte_parse(cte)) { /* as FETCH BINARY reads it */
	case DECODE_CTE_QP:
		return SEG_QP;
	case DECODE_CTE_BASE64:
		return p->kind == MIME_KIND_TEXT ? SEG_B64 : SEG_SKIP;
	default:
		return SEG_RAW;
	}
}

/* Sets up the body segment that starts at pos: raw bytes up to the next
 * encoded leaf part, or that part. */
static void seg_next(struct imap_search_scan *sc)
{
	if (sc->seg_mode == SEG_QP) {
		/* an escape cut by the part's end is text */
		uint8_t tail[4];
		size_t w = decode_qp_finish(&sc->qp, tail);
		feed_list(sc, sc->bk, &sc->nb, tail, w);
	}
	sc->seg_mode = SEG_RAW;
	sc->seg_end = sc->size;
	if (!sc->mb)
		return;
	for (uint32_t j = sc->next_part; j < sc->mb->nparts; j++) {
		struct mime_part p;
		uint8_t mode;
		if (mime_blob_part(sc->mb, j, &p) || !is_leaf(&p) || p.end_off <= p.body_off ||
		    p.body_off < sc->pos || (mode = leaf_mode(sc->mb, &p)) == SEG_RAW)
			continue;
		sc->next_part = j;
		if (sc->pos < p.body_off) {
			sc->seg_end = p.body_off;
			return;
		}
		sc->next_part = j + 1;
		sc->seg_mode = mode;
		sc->seg_end = p.end_off;
		decode_b64_init(&sc->b64);
		decode_qp_init(&sc->qp);
		return;
	}
	sc->next_part = sc->mb->nparts;
}

static void finish(struct imap_search_scan *sc)
{
	for (size_t k = 0; k < sc->s->n; k++)
		if (sc->res[k] == IMAP_SEARCH_MAYBE)
			sc->res[k] = IMAP_SEARCH_NO;
	sc->phase = PH_DONE;
}

static void header_end(struct imap_search_scan *sc)
{
	for (uint16_t i = 0; i < sc->nh; i++)
		if (sc->res[sc->hk[i]] == IMAP_SEARCH_MAYBE)
			sc->res[sc->hk[i]] = IMAP_SEARCH_NO;
	sc->nh = 0;
	sc->hdr_end = sc->pos;
	if (!sc->want_body) {
		finish(sc);
		return;
	}
	sc->phase = PH_BODY;
	sc->seg_end = sc->pos; /* seg_next() at the first body byte */
}

static void new_field(struct imap_search_scan *sc)
{
	sc->name_ws = false;
	for (uint16_t i = 0; i < sc->nh; i++) {
		uint16_t k = sc->hk[i];
		sc->npos[k] = 0;
		sc->active[k] = 0;
		sc->kmp[k] = 0;
	}
}

/* One header byte for the HEADER keys: field names are matched as they
 * come, values unfolded (CR and LF dropped, continuation whitespace kept). */
static void header_byte(struct imap_search_scan *sc, uint8_t c)
{
	if (c == '\r')
		return;
	switch (sc->hstate) {
	case H_START:
		if (c == ' ' || c == '\t') {
			sc->hstate = H_VALUE; /* a continuation line */
			break;
		}
		if (c == '\n')
			return; /* the blank line: the caller ends the header */
		new_field(sc);
		sc->hstate = H_NAME;
		/* fall through */
	case H_NAME:
		if (c == ':') {
			sc->hstate = H_VALUE;
			for (uint16_t i = 0; i < sc->nh; i++) {
				uint16_t k = sc->hk[i];
				sc->active[k] = sc->npos[k] == (int32_t)sc->s->keys[k].name.len;
				if (sc->active[k] && sc->s->keys[k].str.len == 0)
					sc->res[k] = IMAP_SEARCH_YES;
			}
			return;
		}
		if (c == '\n') {
			sc->hstate = H_START; /* not a field */
			return;
		}
		if (c == ' ' || c == '\t') {
			sc->name_ws = true;
			return;
		}
		for (uint16_t i = 0; i < sc->nh; i++) {
			uint16_t k = sc->hk[i];
			struct span nm = sc->s->keys[k].name;
			if (sc->npos[k] < 0)
				continue;
			if (sc->name_ws || (size_t)sc->npos[k] >= nm.len ||
			    fold(nm.p[sc->npos[k]]) != fold(c))
				sc->npos[k] = -1;
			else
				sc->npos[k]++;
		}
		return;
	case H_VALUE:
		break;
	}
	if (c == '\n') {
		sc->hstate = H_START;
		return;
	}
	for (uint16_t i = 0; i < sc->nh; i++) {
		uint16_t k = sc->hk[i];
		if (sc->active[k] && sc->res[k] == IMAP_SEARCH_MAYBE &&
		    sc->s->keys[k].str.len && kmp_feed(sc, k, &c, 1))
			sc->res[k] = IMAP_SEARCH_YES;
	}
}

void imap_search_scan_begin(struct imap_search_scan *sc, const struct imap_search *s,
			    const struct imap_search_msg *m)
{
	sc->s = s;
	sc->mb = m->mb;
	sc->size = m->size;
	sc->pos = 0;
	sc->nh = sc->nb = sc->nt = 0;
	sc->phase = PH_HEADER;
	sc->hstate = H_START;
	sc->seg_mode = SEG_RAW;
	sc->seg_end = 0;
	sc->next_part = 0;
	sc->name_ws = false;
	struct mime_part p0;
	bool have_p0 = m->mb && mime_blob_part(m->mb, 0, &p0) == 0;
	sc->hdr_known = have_p0;
	sc->hdr_end = have_p0 ? p0.body_off : m->size;
	for (size_t k = 0; k < s->n; k++) {
		const struct imap_search_key *key = &s->keys[k];
		sc->res[k] = IMAP_SEARCH_MAYBE;
		sc->kmp[k] = 0;
		sc->npos[k] = 0;
		sc->active[k] = 0;
		if (key->kind == ISK_HEADER) {
			int r = header_from_blob(s, key, m->mb);
			sc->res[k] = (uint8_t)r;
			if (r == IMAP_SEARCH_MAYBE)
				sc->hk[sc->nh++] = (uint16_t)k;
		} else if (key->kind == ISK_BODY || key->kind == ISK_TEXT) {
			if (key->str.len == 0) {
				sc->res[k] = IMAP_SEARCH_YES;
				continue;
			}
			sc->bk[sc->nb++] = (uint16_t)k;
			if (key->kind == ISK_TEXT)
				sc->tk[sc->nt++] = (uint16_t)k;
		}
	}
	sc->want_body = sc->nb > 0;
	sc->stop = sc->want_body ? m->size : sc->hdr_end;
	if (!sc->nh && !sc->nt && sc->want_body && have_p0) {
		/* BODY only: start at the body */
		sc->pos = p0.body_off;
		header_end(sc);
	} else if (!sc->nh && !sc->nb) {
		finish(sc);
	}
}

bool imap_search_scan_next(struct imap_search_scan *sc, uint64_t *off_r, uint64_t *len_r)
{
	if (sc->phase == PH_BODY) {
		if (!sc->nb) {
			finish(sc);
			return false;
		}
		for (;;) {
			if (sc->pos >= sc->seg_end)
				seg_next(sc);
			if (sc->seg_mode != SEG_SKIP || sc->pos >= sc->stop)
				break;
			sc->pos = sc->seg_end; /* not text: not read at all */
		}
	}
	if (sc->phase == PH_DONE)
		return false;
	if (sc->pos >= sc->stop) {
		finish(sc);
		return false;
	}
	*off_r = sc->pos;
	*len_r = sc->stop - sc->pos;
	return true;
}

void imap_search_scan_feed(struct imap_search_scan *sc, struct span data)
{
	const uint8_t *d = data.p;
	size_t len = data.len;
	if (len > sc->stop - sc->pos)
		len = (size_t)(sc->stop - sc->pos);
	while (len && sc->phase != PH_DONE) {
		if (sc->phase == PH_HEADER) {
			size_t n = len;
			if (sc->hdr_known && n > sc->hdr_end - sc->pos)
				n = (size_t)(sc->hdr_end - sc->pos);
			bool blank = false;
			for (size_t i = 0; i < n; i++) {
				uint8_t prev = sc->hstate;
				header_byte(sc, d[i]);
				/* Without a structure blob the blank line ends it. */
				if (!sc->hdr_known && d[i] == '\n' && prev == H_START) {
					n = i + 1;
					blank = true;
					break;
				}
			}
			feed_list(sc, sc->tk, &sc->nt, d, n);
			/* TEXT keys matched in the header are done for the body too */
			for (uint16_t i = 0; i < sc->nb;) {
				if (sc->res[sc->bk[i]] != IMAP_SEARCH_MAYBE)
					sc->bk[i] = sc->bk[--sc->nb];
				else
					i++;
			}
			sc->pos += n;
			d += n;
			len -= n;
			if (blank || (sc->hdr_known && sc->pos >= sc->hdr_end))
				header_end(sc);
			continue;
		}
		if (sc->pos >= sc->seg_end)
			seg_next(sc);
		size_t n = len;
		if (n > sc->seg_end - sc->pos)
			n = (size_t)(sc->seg_end - sc->pos);
		body_bytes(sc, d, n);
		sc->pos += n;
		d += n;
		len -= n;
	}
	if (sc->phase == PH_BODY && !sc->nb)
		finish(sc);
	if (sc->phase != PH_DONE && sc->pos >= sc->stop) {
		if (sc->phase == PH_HEADER)
			header_end(sc);
		if (sc->phase == PH_BODY && sc->seg_mode == SEG_QP) {
			uint8_t tail[4];
			size_t w = decode_qp_finish(&sc->qp, tail);
			feed_list(sc, sc->bk, &sc->nb, tail, w);
		}
		finish(sc);
	}
}

int imap_search_scan_result(const struct imap_search_scan *sc, const struct imap_search_msg *m)
{
	return imap_search_eval(sc->s, m, sc->res);
}
