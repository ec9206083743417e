/* imap_parse.c - the IMAP command tokenizer, sequence sets and modified
 * UTF-7. See imap_parse.h. */
#include "proto/imap_parse.h"

#include <errno.h>
#include <string.h>

enum { MODE_TOKENS = 0, MODE_LITERAL = 1, MODE_SKIP = 2, MODE_SKIP_LITERAL = 3 };

/* skip_st: where a skipped line's tail is in "{n+}" CRLF ("~{n+}" too) */
enum { SKIP_NONE = 0, SKIP_DIGITS, SKIP_PLUS, SKIP_BRACE, SKIP_CR };

void imap_parser_init(struct imap_parser *p, size_t line_max)
{
	memset(p, 0, sizeof(*p));
	p->line_max = line_max;
}

static void reset_command(struct imap_parser *p)
{
	size_t max = p->line_max;
	imap_parser_init(p, max);
}

bool imap_parse_in_command(const struct imap_parser *p)
{
	return p->line_len > 0 || p->mode != MODE_TOKENS;
}

/* ATOM-CHAR of RFC 3501, plus the list-wildcards "%" "*" and "]"
 * (resp-specials are allowed in ASTRING-CHAR) and "\" (flags): what the
 * session then checks per argument. */
static bool atom_char(uint8_t c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return c != '(' && c != ')' && c != '{' && c != '"';
}

/* Scans a literal header "{n}", "{n+}", "~{n}" at in[i] ("{" or "~").
 * Returns OK with *end_r just past the CRLF, AGAIN or INVALID. */
static enum imap_parse_result scan_literal(struct span in, size_t i, size_t *end_r,
					   struct imap_token *tok)
{
	tok->binary = false;
	tok->nonsync = false;
	if (in.p[i] == '~') {
		tok->binary = true;
		i++;
	}
	i++; /* '{' */
	uint64_t n = 0;
	size_t digits = 0;
	for (; i < in.len && in.p[i] >= '0' && in.p[i] <= '9'; i++) {
		n = n * 10 + (uint64_t)(in.p[i] - '0');
		/* 11 digits can hold no more than 2^32 - 1: stop early so a
		 * 20-digit (or longer) size can never wrap. */
		if (++digits > 10 || n > IMAP_LITERAL_SIZE_MAX)
			return IMAP_PARSE_INVALID;
	}
	if (i == in.len)
		return IMAP_PARSE_AGAIN;
	if (digits == 0)
		return IMAP_PARSE_INVALID;
	if (in.p[i] == '+') {
		tok->nonsync = true;
		if (++i == in.len)
			return IMAP_PARSE_AGAIN;
	}
	if (in.p[i] != '}')
		return IMAP_PARSE_INVALID;
	if (++i == in.len)
		return IMAP_PARSE_AGAIN;
	if (in.p[i] == '\r') {
		if (++i == in.len)
			return IMAP_PARSE_AGAIN;
	}
	if (in.p[i] != '\n')
		return IMAP_PARSE_INVALID; /* a literal ends its line */
	tok->size = n;
	*end_r = i + 1;
	return IMAP_PARSE_OK;
}

/* Scans a quoted string starting at in[i] ('"'). */
static enum imap_parse_result scan_quoted(struct span in, size_t i, size_t *end_r,
					  struct imap_token *tok)
{
	size_t start = ++i;
	tok->escaped = false;
	for (; i < in.len; i++) {
		uint8_t c = in.p[i];
		if (c == '"') {
			tok->text = span_make(in.p + start, i - start);
			*end_r = i + 1;
			return IMAP_PARSE_OK;
		}
		if (c == '\0' || c == '\r' || c == '\n')
			return IMAP_PARSE_INVALID;
		if (c == '\\') {
			if (++i == in.len)
				return IMAP_PARSE_AGAIN;
			if (in.p[i] != '"' && in.p[i] != '\\')
				return IMAP_PARSE_INVALID;
			tok->escaped = true;
		}
	}
	return IMAP_PARSE_AGAIN;
}

/* Whether an atom that starts with pre goes on with a "[...]" section
 * that may hold spaces and parentheses: the FETCH items BODY[...],
 * BODY.PEEK[...], BINARY[...], BINARY.PEEK[...], BINARY.SIZE[...]. Any
 * other "[" is an ATOM-CHAR like the rest ("foo[bar" is a valid keyword
 * or mailbox name). */
static bool section_prefix(struct span pre)
{
	static const char *const names[] = { "BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK",
					     "BINARY.SIZE" };
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
		if (span_eq_nocase(pre, span_cstr(names[k])))
			return true;
	return false;
}

/* Scans an atom at in[i]; "[...]" after a FETCH section item's name is
 * taken whole. */
static enum imap_parse_result scan_atom(struct span in, size_t i, size_t *end_r,
					struct imap_token *tok)
{
	size_t start = i;
	bool bracket = false;
	for (; i < in.len; i++) {
		uint8_t c = in.p[i];
		if (bracket) {
			if (c == ']')
				bracket = false;
			else if (c == '\0' || c == '\r' || c == '\n' || c >= 0x80 || c == '[')
				return IMAP_PARSE_INVALID;
			continue;
		}
		if (c == ' ' || c == ')' || c == '\r' || c == '\n')
			break;
		if (c == '[' && section_prefix(span_make(in.p + start, i - start))) {
			bracket = true;
			continue;
		}
		if (!atom_char(c))
			return IMAP_PARSE_INVALID;
	}
	if (i == in.len)
		return IMAP_PARSE_AGAIN;
	if (bracket)
		return IMAP_PARSE_INVALID;
	tok->text = span_make(in.p + start, i - start);
	tok->type = span_eq_nocase(tok->text, SPAN_LIT("NIL")) ? IMAP_TOK_NIL : IMAP_TOK_ATOM;
	*end_r = i;
	return IMAP_PARSE_OK;
}

/* AGAIN, unless the bytes held for the incomplete token already exceed the
 * command limit. */
static enum imap_parse_result again(const struct imap_parser *p, size_t have)
{
	return p->line_len + have > p->line_max ? IMAP_PARSE_TOO_LONG : IMAP_PARSE_AGAIN;
}

enum imap_parse_result imap_parse_next(struct imap_parser *p, struct span in, size_t *used_r,
				       struct imap_token *tok)
{
	*used_r = 0;
	memset(tok, 0, sizeof(*tok));
	if (p->mode == MODE_SKIP || p->mode == MODE_SKIP_LITERAL)
		return IMAP_PARSE_INVALID;
	if (p->mode == MODE_LITERAL) {
		if (in.len == 0 && p->literal_left)
			return IMAP_PARSE_AGAIN;
		size_t n = in.len < p->literal_left ? in.len : (size_t)p->literal_left;
		tok->type = IMAP_TOK_LITERAL_DATA;
		tok->text = span_make(in.p, n);
		p->literal_left -= n;
		if (p->literal_left == 0) {
			tok->last = true;
			p->mode = MODE_TOKENS;
			p->need_sep = 1;
			p->lit_started = 0;
		}
		*used_r = n;
		return IMAP_PARSE_OK;
	}

	size_t i = 0;
	bool sep = false;
	while (i < in.len && in.p[i] == ' ') {
		i++;
		sep = true;
	}
	if (i == in.len)
		return again(p, i);
	uint8_t c = in.p[i];
	size_t end = 0;
	enum imap_parse_result r;

	if (c == '\r' || c == '\n') {
		if (c == '\r') {
			if (i + 1 == in.len)
				return again(p, i + 1);
			if (in.p[i + 1] != '\n')
				return IMAP_PARSE_INVALID;
			i++;
		}
		if (p->depth)
			return IMAP_PARSE_INVALID; /* a list left open */
		if (p->line_len + i + 1 > p->line_max)
			return IMAP_PARSE_TOO_LONG;
		tok->type = IMAP_TOK_EOL;
		*used_r = i + 1;
		reset_command(p);
		return IMAP_PARSE_OK;
	}
	if (p->need_sep && !sep && c != ')')
		return IMAP_PARSE_INVALID;

	if (c == '(') {
		if (p->depth >= IMAP_LIST_DEPTH_MAX)
			return IMAP_PARSE_INVALID;
		p->depth++;
		tok->type = IMAP_TOK_LIST_BEGIN;
		tok->text = span_make(in.p + i, 1);
		end = i + 1;
		p->need_sep = 0;
	} else if (c == ')') {
		if (p->depth == 0)
			return IMAP_PARSE_INVALID;
		p->depth--;
		tok->type = IMAP_TOK_LIST_END;
		tok->text = span_make(in.p + i, 1);
		end = i + 1;
		p->need_sep = 1;
	} else if (c == '"') {
		r = scan_quoted(in, i, &end, tok);
		if (r == IMAP_PARSE_AGAIN)
			return again(p, in.len);
		if (r != IMAP_PARSE_OK)
			return r;
		tok->type = IMAP_TOK_QUOTED;
		p->need_sep = 1;
	} else if (c == '{' || (c == '~' && i + 1 < in.len && in.p[i + 1] == '{') ||
		   (c == '~' && i + 1 == in.len)) {
		if (c == '~' && i + 1 == in.len)
			return again(p, in.len); /* "~" alone: a literal8 or an atom */
		r = scan_literal(in, i, &end, tok);
		if (r == IMAP_PARSE_AGAIN)
			return again(p, in.len);
		if (r != IMAP_PARSE_OK)
			return r;
		tok->type = IMAP_TOK_LITERAL;
		tok->text = span_make(in.p + i, end - i);
		p->mode = MODE_LITERAL;
		p->literal_left = tok->size;
		p->need_sep = 0;
	} else {
		r = scan_atom(in, i, &end, tok);
		if (r == IMAP_PARSE_AGAIN)
			return again(p, in.len);
		if (r != IMAP_PARSE_OK)
			return r;
		p->need_sep = 1;
	}
	if (p->line_len + end > p->line_max)
		return IMAP_PARSE_TOO_LONG;
	p->line_len += end;
	*used_r = end;
	return IMAP_PARSE_OK;
}

enum imap_parse_result imap_parse_skip_line(struct imap_parser *p, struct span in,
					    size_t *used_r)
{
	if (p->mode != MODE_SKIP && p->mode != MODE_SKIP_LITERAL) {
		p->mode = MODE_SKIP;
		p->skip_st = SKIP_NONE;
	}
	size_t i = 0;
	while (i < in.len) {
		if (p->mode == MODE_SKIP_LITERAL) {
			/* the data of a non-synchronising literal the client sent
			 * on the dead line: never taken for commands */
			size_t n = in.len - i < p->literal_left ? in.len - i : (size_t)p->literal_left;
			i += n;
			p->literal_left -= n;
			if (p->literal_left == 0) {
				p->mode = MODE_SKIP;
				p->skip_st = SKIP_NONE;
			}
			continue;
		}
		uint8_t c = in.p[i++];
		if (c == '{') {
			p->skip_st = SKIP_DIGITS;
			p->skip_digits = 0;
			p->literal_left = 0;
			continue;
		}
		switch (p->skip_st) {
		case SKIP_DIGITS:
			if (c >= '0' && c <= '9' && p->skip_digits < 10) {
				p->literal_left = p->literal_left * 10 + (uint64_t)(c - '0');
				p->skip_digits++;
				continue;
			}
			p->skip_st = c == '+' && p->skip_digits ? SKIP_PLUS : SKIP_NONE;
			continue;
		case SKIP_PLUS:
			p->skip_st = c == '}' ? SKIP_BRACE : SKIP_NONE;
			continue;
		case SKIP_BRACE:
		case SKIP_CR:
			if (c == '\r' && p->skip_st == SKIP_BRACE) {
				p->skip_st = SKIP_CR;
				continue;
			}
			if (c == '\n') {
				/* the command goes on after the literal ({0+}: at
				 * once, on the next line) */
				p->skip_st = SKIP_NONE;
				if (p->literal_left)
					p->mode = MODE_SKIP_LITERAL;
				continue;
			}
			break;
		default:
			break;
		}
		p->skip_st = SKIP_NONE;
		if (c == '\n') {
			*used_r = i;
			reset_command(p);
			return IMAP_PARSE_OK;
		}
	}
	*used_r = in.len;
	return IMAP_PARSE_AGAIN;
}

void imap_parse_literal_skip(struct imap_parser *p)
{
	if (p->mode != MODE_LITERAL)
		return;
	p->mode = MODE_TOKENS;
	p->literal_left = 0;
	p->need_sep = 1;
}

size_t imap_unquote(struct span text, uint8_t *out)
{
	size_t o = 0;
	for (size_t i = 0; i < text.len; i++) {
		if (text.p[i] == '\\' && i + 1 < text.len)
			i++;
		out[o++] = text.p[i];
	}
	return o;
}

/* ---- numbers and sequence sets -------------------------------------------- */

int imap_parse_number(struct span s, bool nz, uint32_t *n_r)
{
	uint64_t n = 0;
	if (s.len == 0 || s.len > 10)
		return -EINVAL;
	for (size_t i = 0; i < s.len; i++) {
		if (s.p[i] < '0' || s.p[i] > '9')
			return -EINVAL;
		n = n * 10 + (uint64_t)(s.p[i] - '0');
	}
	if (n > UINT32_MAX || (nz && n == 0))
		return -EINVAL;
	*n_r = (uint32_t)n;
	return 0;
}

int imap_parse_number64(struct span s, bool nz, uint64_t *n_r)
{
	uint64_t n = 0;
	if (s.len == 0 || s.len > 19)
		return -EINVAL;
	for (size_t i = 0; i < s.len; i++) {
		if (s.p[i] < '0' || s.p[i] > '9')
			return -EINVAL;
		n = n * 10 + (uint64_t)(s.p[i] - '0'); /* 19 digits fit in 64 bits */
	}
	if (n > INT64_MAX || (nz && n == 0))
		return -EINVAL;
	*n_r = n;
	return 0;
}

int imap_parse_section_part(struct span s)
{
	if (s.len == 0)
		return 0;
	size_t i = 0;
	for (;;) {
		size_t j = i;
		while (j < s.len && s.p[j] != '.')
			j++;
		uint32_t n;
		if (s.p[i] == '0' || imap_parse_number(span_make(s.p + i, j - i), true, &n))
			return -EINVAL; /* also an empty piece: "1..2", ".1", "1." */
		if (j == s.len)
			return 0;
		i = j + 1;
		if (i == s.len)
			return -EINVAL;
	}
}

/* header-list = "(" header-fld-name *(SP header-fld-name) ")", the
 * names atoms or quoted strings, and nothing after it. */
static int header_list(struct span s)
{
	if (s.len < 3 || s.p[0] != '(' || s.p[s.len - 1] != ')')
		return -EINVAL;
	size_t i = 1, end = s.len - 1;
	for (;;) {
		size_t start = i;
		if (i < end && s.p[i] == '"') {
			for (i++; i < end && s.p[i] != '"'; i++) {
				if (s.p[i] == '\0' || s.p[i] == '\r' || s.p[i] == '\n')
					return -EINVAL; /* not a TEXT-CHAR */
				if (s.p[i] == ']')
					return -EINVAL; /* the section is one atom up to "]" */
				if (s.p[i] == '\\' && (++i == end || (s.p[i] != '"' && s.p[i] != '\\')))
					return -EINVAL;
			}
			if (i++ == end)
				return -EINVAL;
		} else {
			while (i < end && atom_char(s.p[i]) && s.p[i] != '[' && s.p[i] != ']')
				i++;
			if (i == start)
				return -EINVAL;
		}
		if (i == end)
			return 0;
		if (s.p[i] != ' ')
			return -EINVAL;
		i++;
	}
}

int imap_parse_section(struct span s)
{
	/* the section-part: nz-numbers joined by dots, up to the first
	 * piece that is not a number */
	size_t i = 0;
	while (i < s.len && s.p[i] >= '0' && s.p[i] <= '9') {
		while (i < s.len && s.p[i] >= '0' && s.p[i] <= '9')
			i++;
		if (i == s.len)
			return imap_parse_section_part(s);
		if (s.p[i] != '.')
			return -EINVAL;
		i++;
	}
	bool part = i > 0;
	if (part && imap_parse_section_part(span_make(s.p, i - 1)))
		return -EINVAL;
	struct span t = span_skip(s, i);
	if (t.len == 0)
		return part ? -EINVAL : 0; /* "1." */
	if (span_eq_nocase(t, SPAN_LIT("MIME")))
		return part ? 0 : -EINVAL;
	if (span_eq_nocase(t, SPAN_LIT("HEADER")) || span_eq_nocase(t, SPAN_LIT("TEXT")))
		return 0;
	if (span_prefix_nocase(t, SPAN_LIT("HEADER.FIELDS.NOT ")))
		return header_list(span_skip(t, 18));
	if (span_prefix_nocase(t, SPAN_LIT("HEADER.FIELDS ")))
		return header_list(span_skip(t, 14));
	return -EINVAL;
}

/* seq-number: nz-number or "*" (0 here). */
static int seq_number(struct span s, uint32_t *n_r)
{
	if (s.len == 1 && s.p[0] == '*') {
		*n_r = 0;
		return 0;
	}
	if (s.len && s.p[0] == '0')
		return -EINVAL; /* nz-number: no leading zero */
	return imap_parse_number(s, true, n_r);
}

int imap_parse_seqset(struct span s, struct imap_range *ranges, size_t cap, size_t *n_r)
{
	size_t n = 0, i = 0;
	if (s.len == 0)
		return -EINVAL;
	while (i <= s.len) {
		size_t j = i;
		while (j < s.len && s.p[j] != ',')
			j++;
		struct span el = span_make(s.p + i, j - i);
		if (el.len == 0)
			return -EINVAL;
		const uint8_t *colon = memchr(el.p, ':', el.len);
		struct imap_range r;
		if (colon) {
			size_t k = (size_t)(colon - el.p);
			if (seq_number(span_make(el.p, k), &r.lo) ||
			    seq_number(span_make(el.p + k + 1, el.len - k - 1), &r.hi))
				return -EINVAL;
		} else {
			if (seq_number(el, &r.lo))
				return -EINVAL;
			r.hi = r.lo;
		}
		if (n == cap)
			return -E2BIG;
		ranges[n++] = r;
		i = j + 1;
	}
	*n_r = n;
	return 0;
}

bool imap_seqset_contains(const struct imap_range *ranges, size_t n, uint32_t num,
			  uint32_t star)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t lo = ranges[i].lo ? ranges[i].lo : star;
		uint32_t hi = ranges[i].hi ? ranges[i].hi : star;
		if (lo == 0 || hi == 0)
			continue;
		if (lo > hi) {
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		if (num >= lo && num <= hi)
			return true;
	}
	return false;
}

/* ---- modified UTF-7 ---------------------------------------------------------- */

static const char mb64[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int mb64_val(uint8_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

static int put_utf8(uint8_t *out, size_t cap, size_t *o, uint32_t cp)
{
	uint8_t b[4];
	size_t n;
	if (cp < 0x80) {
		b[0] = (uint8_t)cp;
		n = 1;
	} else if (cp < 0x800) {
		b[0] = (uint8_t)(0xc0 | (cp >> 6));
		b[1] = (uint8_t)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		b[0] = (uint8_t)(0xe0 | (cp >> 12));
		b[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (uint8_t)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		b[0] = (uint8_t)(0xf0 | (cp >> 18));
		b[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (uint8_t)(0x80 | (cp & 0x3f));
		n = 4;
	}
	if (cap - *o < n)
		return -ENOSPC;
	memcpy(out + *o, b, n);
	*o += n;
	return 0;
}

ssize_t imap_mutf7_decode(struct span in, uint8_t *out, size_t cap)
{
	size_t i = 0, o = 0;
	bool prev_shift = false;
	while (i < in.len) {
		uint8_t c = in.p[i];
		if (c < 0x20 || c > 0x7e)
			return -EINVAL;
		if (c != '&') {
			if (o == cap)
				return -ENOSPC;
			out[o++] = c;
			i++;
			prev_shift = false;
			continue;
		}
		i++;
		if (i < in.len && in.p[i] == '-') {
			if (o == cap)
				return -ENOSPC;
			out[o++] = '&';
			i++;
			prev_shift = false;
			continue;
		}
		if (prev_shift)
			return -EINVAL; /* two shifts in a row should be one */
		uint32_t bits = 0, hi = 0;
		unsigned nbits = 0, units = 0;
		for (; i < in.len && in.p[i] != '-'; i++) {
			int v = mb64_val(in.p[i]);
			if (v < 0)
				return -EINVAL;
			bits = (bits << 6) | (uint32_t)v;
			nbits += 6;
			if (nbits < 16)
				continue;
			nbits -= 16;
			uint32_t u = (bits >> nbits) & 0xffff;
			bits &= (1u << nbits) - 1;
			units++;
			uint32_t cp;
			if (hi) {
				if (u < 0xdc00 || u > 0xdfff)
					return -EINVAL;
				cp = 0x10000 + ((hi - 0xd800) << 10) + (u - 0xdc00);
				hi = 0;
			} else if (u >= 0xd800 && u <= 0xdbff) {
				hi = u;
				continue;
			} else if (u >= 0xdc00 && u <= 0xdfff) {
				return -EINVAL;
			} else {
				cp = u;
			}
			if (cp <= 0x7f)
				return -EINVAL; /* ASCII is written directly, controls never */
			int rc = put_utf8(out, cap, &o, cp);
			if (rc)
				return rc;
		}
		if (i == in.len)
			return -EINVAL; /* no closing "-" */
		i++;
		if (hi || nbits >= 6 || bits != 0 || units == 0)
			return -EINVAL;
		prev_shift = true;
	}
	return (ssize_t)o;
}

/* The next code point of strict UTF-8 at in[*i]. -1: invalid. */
static int64_t utf8_next(struct span in, size_t *i)
{
	uint8_t c = in.p[*i];
	uint32_t cp;
	size_t n;
	if (c < 0x80) {
		(*i)++;
		return c;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		cp = c & 0x1f;
		n = 1;
	} else if (c >= 0xe0 && c <= 0xef) {
		cp = c & 0x0f;
		n = 2;
	} else if (c >= 0xf0 && c <= 0xf4) {
		cp = c & 0x07;
		n = 3;
	} else {
		return -1;
	}
	if (in.len - *i - 1 < n)
		return -1;
	for (size_t k = 1; k <= n; k++) {
		uint8_t d = in.p[*i + k];
		if ((d & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (d & 0x3f);
	}
	if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*i += n + 1;
	return cp;
}

ssize_t imap_mutf7_encode(struct span in, uint8_t *out, size_t cap)
{
	size_t i = 0, o = 0;
	bool shift = false;
	uint32_t bits = 0;
	unsigned nbits = 0;
#define PUT(ch)                             \
	do {                                \
		if (o == cap)               \
			return -ENOSPC;     \
		out[o++] = (uint8_t)(ch);   \
	} while (0)
	while (i < in.len) {
		int64_t cp = utf8_next(in, &i);
		if (cp < 0 || cp < 0x20 || cp == 0x7f)
			return -EINVAL;
		if (cp <= 0x7e) {
			if (shift) {
				if (nbits)
					PUT(mb64[(bits << (6 - nbits)) & 63]);
				PUT('-');
				shift = false;
				bits = nbits = 0;
			}
			PUT(cp);
			if (cp == '&')
				PUT('-');
			continue;
		}
		if (!shift) {
			PUT('&');
			shift = true;
		}
		uint32_t units[2];
		size_t nu;
		if (cp >= 0x10000) {
			units[0] = 0xd800 + (uint32_t)((cp - 0x10000) >> 10);
			units[1] = 0xdc00 + (uint32_t)((cp - 0x10000) & 0x3ff);
			nu = 2;
		} else {
			units[0] = (uint32_t)cp;
			nu = 1;
		}
		for (size_t k = 0; k < nu; k++) {
			bits = (bits << 16) | units[k];
			nbits += 16;
			while (nbits >= 6) {
				nbits -= 6;
				PUT(mb64[(bits >> nbits) & 63]);
			}
			bits &= (1u << nbits) - 1;
		}
	}
	if (shift) {
		if (nbits)
			PUT(mb64[(bits << (6 - nbits)) & 63]);
		PUT('-');
	}
#undef PUT
	return (ssize_t)o;
}

bool imap_utf8_valid(struct span s)
{
	for (size_t i = 0; i < s.len;)
		if (utf8_next(s, &i) < 0)
			return false;
	return true;
}

ssize_t imap_utf8_name(struct span in, uint8_t *out, size_t cap)
{
	for (size_t i = 0; i < in.len;) {
		int64_t cp = utf8_next(in, &i);
		if (cp < 0x20 || cp == 0x7f)
			return -EINVAL; /* invalid UTF-8 (-1) or a control character */
	}
	if (in.len > cap)
		return -ENOSPC;
	memcpy(out, in.p, in.len);
	return (ssize_t)in.len;
}

const char *imap_new_name_check(struct span name, bool create, size_t *len_r)
{
	size_t n = name.len;
	if (create && n > 0 && name.p[n - 1] == '/')
		n--;
	*len_r = n;
	if (n == 0)
		return "Name is empty";
	if (name.p[0] == '/')
		return "Begins with hierarchy separator";
	for (size_t i = 1; i < n; i++)
		if (name.p[i] == '/' && name.p[i - 1] == '/')
			return "Has adjacent hierarchy separators";
	if (name.p[n - 1] == '/')
		return "Ends with hierarchy separator";
	return NULL;
}
