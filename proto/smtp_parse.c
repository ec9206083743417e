/* smtp_parse.c - the SMTP parsers (see smtp_parse.h). */
#include "proto/smtp_parse.h"

#include <string.h>

const char *smtp_parse_result_str(enum smtp_parse_result r)
{
	switch (r) {
	case SMTP_PARSE_OK: return "ok";
	case SMTP_PARSE_AGAIN: return "again";
	case SMTP_PARSE_INVALID: return "invalid";
	case SMTP_PARSE_TOO_LONG: return "too long";
	}
	return "?";
}

static int is_alpha(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static int is_alnum(uint8_t c)
{
	return is_alpha(c) || is_digit(c);
}

static uint8_t to_lower(uint8_t c)
{
	return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c;
}

static int hex_value(uint8_t c)
{
	if (is_digit(c))
		return c - '0';
	c = to_lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Returns the length of the well-formed UTF-8 sequence at p (RFC 3629: no
 * overlong forms, no surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const uint8_t *p, size_t n)
{
	uint8_t c = p[0];
	size_t len;
	uint32_t cp, min;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, cp = c & 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		len = 3, cp = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, cp = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t k = 1; k < len; k++) {
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* span_skip() that also takes the empty span { NULL, 0 } (a caller's
 * zeroed span): NULL + 0 is undefined behaviour in C. */
static struct span skip(struct span s, size_t n)
{
	return n == 0 || s.p == NULL ? s : span_skip(s, n);
}

/* Parses 1*DIGIT filling all of s. Returns OK, INVALID or TOO_LONG (does
 * not fit in 64 bits; checked before multiplying so it never wraps). */
static enum smtp_parse_result parse_u64(struct span s, uint64_t *v_r)
{
	uint64_t v = 0;
	int overflow = 0;

	*v_r = 0;
	if (s.len == 0)
		return SMTP_PARSE_INVALID;
	for (size_t i = 0; i < s.len; i++) {
		if (!is_digit(s.p[i]))
			return SMTP_PARSE_INVALID;
		unsigned d = s.p[i] - '0';
		if (v > (UINT64_MAX - d) / 10)
			overflow = 1;
		else
			v = v * 10 + d;
	}
	if (overflow)
		return SMTP_PARSE_TOO_LONG;
	*v_r = v;
	return SMTP_PARSE_OK;
}

/* ---- lines and commands ------------------------------------------------ */

enum smtp_parse_result smtp_parse_line(struct span in, size_t max,
				       struct smtp_line *line_r,
				       size_t *consumed_r)
{
	size_t window = in.len < max ? in.len : max;
	const uint8_t *lf = window ? memchr(in.p, '\n', window) : NULL;

	memset(line_r, 0, sizeof(*line_r));
	*consumed_r = 0;
	if (lf == NULL) {
		if (in.len < max)
			return SMTP_PARSE_AGAIN;
		/* max octets without an LF: too long whatever follows. Skip
		 * to the next LF if it is already here. */
		const uint8_t *next = in.len > window ?
			memchr(in.p + window, '\n', in.len - window) : NULL;
		if (next != NULL) {
			*consumed_r = (size_t)(next - in.p) + 1;
		} else {
			*consumed_r = in.len;
			line_r->partial = 1;
		}
		return SMTP_PARSE_TOO_LONG;
	}
	size_t end = (size_t)(lf - in.p);
	size_t tlen = end;
	*consumed_r = end + 1;
	if (tlen > 0 && in.p[tlen - 1] == '\r')
		tlen--;
	else
		line_r->bare_lf = 1;
	line_r->text = (struct span){ in.p, tlen };
	if (tlen > 0 && (memchr(in.p, '\r', tlen) || memchr(in.p, '\0', tlen)))
		return SMTP_PARSE_INVALID;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_skip_line(struct span in, size_t *consumed_r)
{
	const uint8_t *lf = in.len ? memchr(in.p, '\n', in.len) : NULL;

	if (lf == NULL) {
		*consumed_r = in.len;
		return SMTP_PARSE_AGAIN;
	}
	*consumed_r = (size_t)(lf - in.p) + 1;
	return SMTP_PARSE_OK;
}

static const struct {
	const char *name;
	enum smtp_verb verb;
} smtp_verbs[] = {
	{ "HELO", SMTP_CMD_HELO },
	{ "EHLO", SMTP_CMD_EHLO },
	{ "MAIL", SMTP_CMD_MAIL },
	{ "RCPT", SMTP_CMD_RCPT },
	{ "DATA", SMTP_CMD_DATA },
	{ "BDAT", SMTP_CMD_BDAT },
	{ "RSET", SMTP_CMD_RSET },
	{ "NOOP", SMTP_CMD_NOOP },
	{ "QUIT", SMTP_CMD_QUIT },
	{ "HELP", SMTP_CMD_HELP },
	{ "VRFY", SMTP_CMD_VRFY },
	{ "EXPN", SMTP_CMD_EXPN },
	{ "STARTTLS", SMTP_CMD_STARTTLS },
	{ "AUTH", SMTP_CMD_AUTH },
};

/* HTTP request methods followed by their SP (RFC 9110 §9 plus PATCH). */
static const char *const http_methods[] = {
	"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ",
	"OPTIONS ", "TRACE ", "PATCH ",
};

const char *smtp_verb_str(enum smtp_verb verb)
{
	if (verb == SMTP_CMD_UNKNOWN)
		return "unknown";
	if (verb == SMTP_CMD_HTTP)
		return "http";
	for (size_t i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++)
		if (smtp_verbs[i].verb == verb)
			return smtp_verbs[i].name;
	return "?";
}

/* Sets cmd's verb, verb_span and (when with_args) args from text. */
static void classify(struct smtp_cmd *cmd, struct span text, int with_args)
{
	for (size_t i = 0; i < sizeof(http_methods) / sizeof(http_methods[0]); i++) {
		size_t n = strlen(http_methods[i]);
		if (text.len >= n && memcmp(text.p, http_methods[i], n) == 0) {
			cmd->verb = SMTP_CMD_HTTP;
			cmd->verb_span = (struct span){ text.p, n - 1 };
			return;
		}
	}
	const uint8_t *sp = text.len ? memchr(text.p, ' ', text.len) : NULL;
	if (sp == NULL && !with_args)
		return;
	size_t vlen = sp ? (size_t)(sp - text.p) : text.len;
	cmd->verb_span = (struct span){ text.p, vlen };
	for (size_t i = 0; i < sizeof(smtp_verbs) / sizeof(smtp_verbs[0]); i++) {
		if (span_eq_nocase(cmd->verb_span, span_cstr(smtp_verbs[i].name))) {
			cmd->verb = smtp_verbs[i].verb;
			break;
		}
	}
	if (!with_args)
		return;
	/* args is never { NULL, 0 }: it points at its end of the line */
	cmd->has_args = sp != NULL;
	cmd->args = sp != NULL ? skip(text, vlen + 1)
			       : (struct span){ text.p + text.len, 0 };
}

enum smtp_parse_result smtp_parse_command_max(struct span in, size_t max,
					      struct smtp_cmd *cmd,
					      size_t *consumed_r)
{
	memset(cmd, 0, sizeof(*cmd));
	enum smtp_parse_result r = smtp_parse_line(in, max, &cmd->line, consumed_r);
	if (r == SMTP_PARSE_OK) {
		classify(cmd, cmd->line.text, 1);
	} else if (r == SMTP_PARSE_TOO_LONG) {
		/* Only the verb, and only when its SP is inside the limit:
		 * enough to retry AUTH with a larger limit or drop HTTP. */
		classify(cmd, (struct span){ in.p, in.len < max ? in.len : max }, 0);
	}
	return r;
}

enum smtp_parse_result smtp_parse_command(struct span in, struct smtp_cmd *cmd,
					  size_t *consumed_r)
{
	return smtp_parse_command_max(in, SMTP_COMMAND_LINE_MAX, cmd, consumed_r);
}

/* ---- MAIL FROM / RCPT TO ----------------------------------------------- */

const char *smtp_path_reason_str(enum smtp_path_reason reason)
{
	switch (reason) {
	case SMTP_PATH_OK: return "ok";
	case SMTP_PATH_ERR_KIND: return "not MAIL or RCPT";
	case SMTP_PATH_ERR_CONTROL: return "control character";
	case SMTP_PATH_ERR_PREFIX: return "missing FROM: or TO:";
	case SMTP_PATH_ERR_BRACKETS: return "missing angle brackets";
	case SMTP_PATH_ERR_NULL_RCPT: return "null recipient";
	case SMTP_PATH_ERR_ROUTE: return "bad source route";
	case SMTP_PATH_ERR_LOCAL: return "bad local part";
	case SMTP_PATH_ERR_DOMAIN: return "bad domain";
	case SMTP_PATH_ERR_LITERAL: return "bad address literal";
	case SMTP_PATH_ERR_UTF8: return "bad UTF-8";
	case SMTP_PATH_ERR_LOCAL_TOO_LONG: return "local part too long";
	case SMTP_PATH_ERR_DOMAIN_TOO_LONG: return "domain too long";
	case SMTP_PATH_ERR_PATH_TOO_LONG: return "path too long";
	case SMTP_PATH_ERR_PARAM: return "bad parameter";
	case SMTP_PATH_ERR_TOO_MANY_PARAMS: return "too many parameters";
	}
	return "?";
}

/* A cursor over the arguments being parsed. */
struct cur {
	const uint8_t *p;
	size_t n;
	size_t i;
	unsigned flags;
};

static int cur_at(const struct cur *c, uint8_t ch)
{
	return c->i < c->n && c->p[c->i] == ch;
}

/* Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str] or
 * an RFC 6531 U-label. The 63-octet label limit applies to ASCII labels
 * (a U-label's limit is that of its A-label, not checked here). */
static enum smtp_path_reason parse_domain(struct cur *c)
{
	size_t start = c->i;

	for (;;) {
		size_t ls = c->i;
		int ascii = 1;
		while (c->i < c->n) {
			uint8_t ch = c->p[c->i];
			if (is_alnum(ch) || ch == '-') {
				c->i++;
			} else if (ch >= 0x80) {
				size_t l = utf8_len(c->p + c->i, c->n - c->i);
				if (l == 0)
					return SMTP_PATH_ERR_UTF8;
				c->flags |= SMTP_PATH_UTF8;
				ascii = 0;
				c->i += l;
			} else {
				break;
			}
		}
		if (c->i == ls || c->p[ls] == '-' || c->p[c->i - 1] == '-')
			return SMTP_PATH_ERR_DOMAIN;
		if (ascii && c->i - ls > SMTP_LABEL_MAX)
			return SMTP_PATH_ERR_DOMAIN_TOO_LONG;
		if (!cur_at(c, '.'))
			break;
		c->i++;
	}
	if (c->i - start > SMTP_DOMAIN_MAX)
		return SMTP_PATH_ERR_DOMAIN_TOO_LONG;
	return SMTP_PATH_OK;
}

/* Snum "." Snum "." Snum "." Snum filling all of p[0..n), Snum 0-255. */
static int parse_ipv4(const uint8_t *p, size_t n)
{
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0;
		size_t ds = i;
		if (part > 0) {
			if (i >= n || p[i] != '.')
				return 0;
			ds = ++i;
		}
		while (i < n && is_digit(p[i]) && i - ds < 3)
			v = v * 10 + (p[i++] - '0');
		if (i == ds || v > 255)
			return 0;
	}
	return i == n;
}

/* An IPv6 address in any RFC 4291 §2.2 text form filling all of p[0..n):
 * 1-4 hex digits per group, at most one "::", an optional dotted IPv4
 * tail; 8 groups, or fewer than 8 with "::". */
static int parse_ipv6(const uint8_t *p, size_t n)
{
	size_t i = 0;
	int groups = 0, dcolon = 0;

	if (n >= 2 && p[0] == ':' && p[1] == ':') {
		dcolon = 1;
		i = 2;
	} else if (n > 0 && p[0] == ':') {
		return 0;
	}
	while (i < n) {
		size_t j = i;
		while (j < n && hex_value(p[j]) >= 0 && j - i < 5)
			j++;
		if (j < n && p[j] == '.') {
			if (!parse_ipv4(p + i, n - i))
				return 0;
			groups += 2;
			i = n;
			break;
		}
		if (j == i || j - i > 4)
			return 0;
		groups++;
		i = j;
		if (i == n)
			break;
		if (p[i] != ':')
			return 0;
		i++;
		if (i < n && p[i] == ':') {
			if (dcolon)
				return 0;
			dcolon = 1;
			i++;
		} else if (i == n) {
			return 0;
		}
	}
	return dcolon ? groups <= 7 : groups == 8;
}

/* "[" (IPv4 / "IPv6:" IPv6) "]". The RFC 5321 General-address-literal
 * (tag:content) is rejected: no tag other than IPv6 is registered. */
static enum smtp_path_reason parse_literal(struct cur *c)
{
	size_t start = ++c->i;

	while (c->i < c->n && c->p[c->i] != ']')
		c->i++;
	if (c->i == c->n)
		return SMTP_PATH_ERR_LITERAL;
	struct span lit = { c->p + start, c->i - start };
	c->i++;
	c->flags |= SMTP_PATH_LITERAL;
	if (span_prefix_nocase(lit, SPAN_LIT("IPv6:"))) {
		c->flags |= SMTP_PATH_IPV6;
		if (!parse_ipv6(lit.p + 5, lit.len - 5))
			return SMTP_PATH_ERR_LITERAL;
	} else if (!parse_ipv4(lit.p, lit.len)) {
		return SMTP_PATH_ERR_LITERAL;
	}
	return SMTP_PATH_OK;
}

static int is_atext(uint8_t ch)
{
	return is_alnum(ch) || (ch != 0 && strchr("!#$%&'*+-/=?^_`{|}~", ch));
}

static void local_char_flags(struct cur *c, uint8_t ch)
{
	if (ch == '%')
		c->flags |= SMTP_PATH_PERCENT;
	else if (ch == '!')
		c->flags |= SMTP_PATH_BANG;
}

/* Local-part = Dot-string / Quoted-string, RFC 6531 UTF-8 allowed. */
static enum smtp_path_reason parse_local(struct cur *c)
{
	if (cur_at(c, '"')) {
		c->flags |= SMTP_PATH_QUOTED;
		c->i++;
		for (;;) {
			if (c->i >= c->n)
				return SMTP_PATH_ERR_LOCAL;
			uint8_t ch = c->p[c->i];
			if (ch == '"') {
				c->i++;
				return SMTP_PATH_OK;
			}
			if (ch == '\\') {
				/* quoted-pairSMTP = "\" %d32-126 */
				if (c->i + 1 >= c->n || c->p[c->i + 1] < 32 ||
				    c->p[c->i + 1] > 126)
					return SMTP_PATH_ERR_LOCAL;
				ch = c->p[c->i + 1];
				c->i += 2;
			} else if (ch >= 0x80) {
				size_t l = utf8_len(c->p + c->i, c->n - c->i);
				if (l == 0)
					return SMTP_PATH_ERR_UTF8;
				c->flags |= SMTP_PATH_UTF8;
				c->i += l;
				continue;
			} else {
				c->i++;
			}
			if (ch == '@')
				c->flags |= SMTP_PATH_QUOTED_AT;
			local_char_flags(c, ch);
		}
	}
	for (;;) {
		size_t as = c->i;
		while (c->i < c->n) {
			uint8_t ch = c->p[c->i];
			if (is_atext(ch)) {
				local_char_flags(c, ch);
				c->i++;
			} else if (ch >= 0x80) {
				size_t l = utf8_len(c->p + c->i, c->n - c->i);
				if (l == 0)
					return SMTP_PATH_ERR_UTF8;
				c->flags |= SMTP_PATH_UTF8;
				c->i += l;
			} else {
				break;
			}
		}
		if (c->i == as)
			return SMTP_PATH_ERR_LOCAL;
		if (!cur_at(c, '.'))
			return SMTP_PATH_OK;
		c->i++;
	}
}

/* A-d-l = At-domain *( "," At-domain ) ":" */
static enum smtp_path_reason parse_route(struct cur *c)
{
	for (;;) {
		if (!cur_at(c, '@'))
			return SMTP_PATH_ERR_ROUTE;
		c->i++;
		enum smtp_path_reason r = parse_domain(c);
		if (r != SMTP_PATH_OK)
			return r == SMTP_PATH_ERR_DOMAIN ? SMTP_PATH_ERR_ROUTE : r;
		if (cur_at(c, ':'))
			return SMTP_PATH_OK;
		if (!cur_at(c, ','))
			return SMTP_PATH_ERR_ROUTE;
		c->i++;
	}
}

/* The path from '<' (at c->i) to '>' inclusive. */
static enum smtp_path_reason parse_angle_path(struct cur *c, enum smtp_verb kind,
					      struct smtp_path *path)
{
	enum smtp_path_reason r;
	size_t open = c->i++;

	if (cur_at(c, '>')) {
		if (kind != SMTP_CMD_MAIL)
			return SMTP_PATH_ERR_NULL_RCPT;
		c->i++;
		c->flags |= SMTP_PATH_NULL;
		path->path = (struct span){ c->p + open + 1, 0 };
		return SMTP_PATH_OK;
	}
	if (cur_at(c, '@')) {
		size_t rs = c->i;
		if ((r = parse_route(c)) != SMTP_PATH_OK)
			return r;
		path->route = (struct span){ c->p + rs, c->i - rs };
		c->i++; /* ':' */
		c->flags |= SMTP_PATH_ROUTE;
	}
	size_t ms = c->i;
	struct span rest = { c->p + c->i, c->n - c->i };
	if (kind == SMTP_CMD_RCPT && !(c->flags & SMTP_PATH_ROUTE) &&
	    span_prefix_nocase(rest, SPAN_LIT("postmaster>"))) {
		c->flags |= SMTP_PATH_POSTMASTER;
		path->local = (struct span){ rest.p, 10 };
		c->i += 10;
	} else {
		if ((r = parse_local(c)) != SMTP_PATH_OK)
			return r;
		path->local = (struct span){ c->p + ms, c->i - ms };
		if (!cur_at(c, '@'))
			return SMTP_PATH_ERR_DOMAIN;
		size_t ds = ++c->i;
		r = cur_at(c, '[') ? parse_literal(c) : parse_domain(c);
		if (r != SMTP_PATH_OK)
			return r;
		path->domain = (struct span){ c->p + ds, c->i - ds };
	}
	path->mailbox = (struct span){ c->p + ms, c->i - ms };
	if (!cur_at(c, '>'))
		return (c->flags & SMTP_PATH_POSTMASTER) ? SMTP_PATH_ERR_DOMAIN
							 : SMTP_PATH_ERR_BRACKETS;
	c->i++;
	path->path = (struct span){ c->p + open + 1, c->i - open - 2 };
	if (path->local.len > SMTP_LOCAL_PART_MAX)
		return SMTP_PATH_ERR_LOCAL_TOO_LONG;
	if (path->domain.len > SMTP_DOMAIN_MAX)
		return SMTP_PATH_ERR_DOMAIN_TOO_LONG;
	if (c->i - open > SMTP_PATH_MAX)
		return SMTP_PATH_ERR_PATH_TOO_LONG;
	return SMTP_PATH_OK;
}

/* Mail-parameters = esmtp-param *(SP esmtp-param), after the path. */
static enum smtp_path_reason parse_params(struct cur *c, struct smtp_param *params,
					  size_t max_params, size_t *nparams_r)
{
	size_t np = 0;

	while (c->i < c->n) {
		if (c->p[c->i] != ' ')
			return SMTP_PATH_ERR_PARAM;
		while (cur_at(c, ' '))
			c->i++;
		if (c->i == c->n)
			break;
		/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
		size_t ks = c->i;
		if (!is_alnum(c->p[c->i]))
			return SMTP_PATH_ERR_PARAM;
		while (c->i < c->n && (is_alnum(c->p[c->i]) || c->p[c->i] == '-'))
			c->i++;
		struct smtp_param prm = { { c->p + ks, c->i - ks }, { NULL, 0 }, 0 };
		if (cur_at(c, '=')) {
			/* esmtp-value = 1*(%d33-60 / %d62-126 / UTF8-non-ascii) */
			size_t vs = ++c->i;
			while (c->i < c->n && c->p[c->i] != ' ') {
				uint8_t ch = c->p[c->i];
				if (ch == '=')
					return SMTP_PATH_ERR_PARAM;
				if (ch >= 0x80) {
					size_t l = utf8_len(c->p + c->i, c->n - c->i);
					if (l == 0)
						return SMTP_PATH_ERR_UTF8;
					c->flags |= SMTP_PATH_PARAM_UTF8;
					c->i += l;
				} else {
					c->i++;
				}
			}
			if (c->i == vs)
				return SMTP_PATH_ERR_PARAM;
			prm.value = (struct span){ c->p + vs, c->i - vs };
			prm.has_value = 1;
		}
		if (c->i < c->n && c->p[c->i] != ' ')
			return SMTP_PATH_ERR_PARAM;
		if (np == max_params)
			return SMTP_PATH_ERR_TOO_MANY_PARAMS;
		params[np++] = prm;
		*nparams_r = np;
	}
	return SMTP_PATH_OK;
}

enum smtp_parse_result smtp_parse_path(struct span args, enum smtp_verb kind,
				       struct smtp_path *path,
				       struct smtp_param *params,
				       size_t max_params, size_t *nparams_r)
{
	struct cur c = { args.p, args.len, 0, 0 };
	enum smtp_path_reason r;

	memset(path, 0, sizeof(*path));
	*nparams_r = 0;
	if (kind != SMTP_CMD_MAIL && kind != SMTP_CMD_RCPT) {
		r = SMTP_PATH_ERR_KIND;
		goto err;
	}
	for (size_t i = 0; i < args.len; i++) {
		if (args.p[i] < 0x20 || args.p[i] == 0x7f) {
			r = SMTP_PATH_ERR_CONTROL;
			goto err;
		}
	}
	struct span prefix = kind == SMTP_CMD_MAIL ? SPAN_LIT("FROM:") : SPAN_LIT("TO:");
	if (!span_prefix_nocase(args, prefix)) {
		r = SMTP_PATH_ERR_PREFIX;
		goto err;
	}
	c.i = prefix.len;
	if (cur_at(&c, ' ')) {
		c.flags |= SMTP_PATH_SPACE;
		while (cur_at(&c, ' '))
			c.i++;
	}
	if (!cur_at(&c, '<')) {
		r = SMTP_PATH_ERR_BRACKETS;
		goto err;
	}
	if ((r = parse_angle_path(&c, kind, path)) != SMTP_PATH_OK)
		goto err;
	if ((r = parse_params(&c, params, max_params, nparams_r)) != SMTP_PATH_OK)
		goto err;
	path->flags = c.flags;
	return SMTP_PARSE_OK;
err:
	path->flags = c.flags;
	path->reason = r;
	return SMTP_PARSE_INVALID;
}

/* ---- ESMTP parameters -------------------------------------------------- */

enum smtp_param_kind smtp_param_kind(struct span keyword)
{
	static const struct {
		const char *name;
		enum smtp_param_kind kind;
	} kinds[] = {
		{ "SIZE", SMTP_PARAM_SIZE },	 { "BODY", SMTP_PARAM_BODY },
		{ "SMTPUTF8", SMTP_PARAM_SMTPUTF8 }, { "RET", SMTP_PARAM_RET },
		{ "ENVID", SMTP_PARAM_ENVID },	 { "NOTIFY", SMTP_PARAM_NOTIFY },
		{ "ORCPT", SMTP_PARAM_ORCPT },	 { "AUTH", SMTP_PARAM_AUTH },
	};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (span_eq_nocase(keyword, span_cstr(kinds[i].name)))
			return kinds[i].kind;
	return SMTP_PARAM_UNKNOWN;
}

enum smtp_parse_result smtp_param_size(const struct smtp_param *p,
				       uint64_t *size_r)
{
	*size_r = 0;
	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	return parse_u64(p->value, size_r);
}

enum smtp_parse_result smtp_param_body(const struct smtp_param *p,
				       enum smtp_body *body_r)
{
	*body_r = 0;
	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	if (span_eq_nocase(p->value, SPAN_LIT("7BIT")))
		*body_r = SMTP_BODY_7BIT;
	else if (span_eq_nocase(p->value, SPAN_LIT("8BITMIME")))
		*body_r = SMTP_BODY_8BITMIME;
	else if (span_eq_nocase(p->value, SPAN_LIT("BINARYMIME")))
		*body_r = SMTP_BODY_BINARYMIME;
	else
		return SMTP_PARSE_INVALID;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_param_smtputf8(const struct smtp_param *p)
{
	return p->has_value ? SMTP_PARSE_INVALID : SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_param_ret(const struct smtp_param *p,
				      enum smtp_ret *ret_r)
{
	*ret_r = 0;
	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	if (span_eq_nocase(p->value, SPAN_LIT("FULL")))
		*ret_r = SMTP_RET_FULL;
	else if (span_eq_nocase(p->value, SPAN_LIT("HDRS")))
		*ret_r = SMTP_RET_HDRS;
	else
		return SMTP_PARSE_INVALID;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_param_envid(const struct smtp_param *p)
{
	size_t len;

	if (!p->has_value || p->value.len > SMTP_ENVID_MAX)
		return SMTP_PARSE_INVALID;
	return smtp_xtext_decode(p->value, NULL, 0, &len);
}

enum smtp_parse_result smtp_param_notify(const struct smtp_param *p,
					 unsigned *notify_r)
{
	unsigned bits = 0;
	size_t i = 0;

	*notify_r = 0;
	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	while (i <= p->value.len) {
		size_t s = i;
		while (i < p->value.len && p->value.p[i] != ',')
			i++;
		struct span tok = { p->value.p + s, i - s };
		unsigned bit;
		if (span_eq_nocase(tok, SPAN_LIT("NEVER")))
			bit = SMTP_NOTIFY_NEVER;
		else if (span_eq_nocase(tok, SPAN_LIT("SUCCESS")))
			bit = SMTP_NOTIFY_SUCCESS;
		else if (span_eq_nocase(tok, SPAN_LIT("FAILURE")))
			bit = SMTP_NOTIFY_FAILURE;
		else if (span_eq_nocase(tok, SPAN_LIT("DELAY")))
			bit = SMTP_NOTIFY_DELAY;
		else
			return SMTP_PARSE_INVALID;
		if (bits & bit)
			return SMTP_PARSE_INVALID;
		bits |= bit;
		i++; /* past ',' (or past the end, ending the loop) */
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return SMTP_PARSE_INVALID;
	*notify_r = bits;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_param_orcpt(const struct smtp_param *p,
					struct span *type_r, struct span *addr_r)
{
	size_t len;

	*type_r = *addr_r = (struct span){ NULL, 0 };
	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	const uint8_t *semi = memchr(p->value.p, ';', p->value.len);
	if (semi == NULL || semi == p->value.p)
		return SMTP_PARSE_INVALID;
	struct span type = { p->value.p, (size_t)(semi - p->value.p) };
	struct span addr = skip(p->value, type.len + 1);
	for (size_t i = 0; i < type.len; i++)
		if (!is_atext(type.p[i]))
			return SMTP_PARSE_INVALID;
	if (addr.len == 0 ||
	    smtp_xtext_decode(addr, NULL, 0, &len) != SMTP_PARSE_OK)
		return SMTP_PARSE_INVALID;
	*type_r = type;
	*addr_r = addr;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_param_auth(const struct smtp_param *p)
{
	size_t len;

	if (!p->has_value)
		return SMTP_PARSE_INVALID;
	if (span_eq(p->value, SPAN_LIT("<>")))
		return SMTP_PARSE_OK;
	return smtp_xtext_decode(p->value, NULL, 0, &len);
}

enum smtp_parse_result smtp_xtext_decode(struct span in, uint8_t *out,
					 size_t cap, size_t *len_r)
{
	size_t n = 0;

	*len_r = 0;
	for (size_t i = 0; i < in.len; i++) {
		uint8_t ch = in.p[i];
		if (ch == '+') {
			if (in.len - i < 3)
				return SMTP_PARSE_INVALID;
			int hi = hex_value(in.p[i + 1]), lo = hex_value(in.p[i + 2]);
			if (hi < 0 || lo < 0)
				return SMTP_PARSE_INVALID;
			ch = (uint8_t)(hi << 4 | lo);
			if (ch < 0x20 || ch > 0x7e)
				return SMTP_PARSE_INVALID;
			i += 2;
		} else if (ch < 0x21 || ch > 0x7e || ch == '=') {
			return SMTP_PARSE_INVALID;
		}
		if (out != NULL) {
			if (n == cap)
				return SMTP_PARSE_TOO_LONG;
			out[n] = ch;
		}
		n++;
	}
	*len_r = n;
	return SMTP_PARSE_OK;
}

/* ---- AUTH and BDAT ----------------------------------------------------- */

enum smtp_parse_result smtp_parse_auth(struct span args, struct span *mech_r,
				       struct span *initial_r, int *has_initial_r)
{
	size_t i = 0;

	*mech_r = *initial_r = (struct span){ NULL, 0 };
	*has_initial_r = 0;
	while (i < args.len && (is_alnum(args.p[i]) || args.p[i] == '-' ||
				args.p[i] == '_'))
		i++;
	if (i == 0 || i > SMTP_AUTH_MECH_MAX)
		return SMTP_PARSE_INVALID;
	struct span mech = { args.p, i };
	if (i == args.len) {
		*mech_r = mech;
		return SMTP_PARSE_OK;
	}
	if (args.p[i] != ' ' || i + 1 == args.len)
		return SMTP_PARSE_INVALID;
	struct span ir = skip(args, i + 1);
	if (span_eq(ir, SPAN_LIT("="))) {
		ir.len = 0;
	} else {
		for (size_t k = 0; k < ir.len; k++) {
			uint8_t ch = ir.p[k];
			if (!is_alnum(ch) && ch != '+' && ch != '/' && ch != '=')
				return SMTP_PARSE_INVALID;
		}
	}
	*mech_r = mech;
	*initial_r = ir;
	*has_initial_r = 1;
	return SMTP_PARSE_OK;
}

enum smtp_parse_result smtp_parse_bdat(struct span args, uint64_t *size_r,
				       int *last_r)
{
	size_t i = 0;

	*size_r = 0;
	*last_r = 0;
	while (i < args.len && is_digit(args.p[i]))
		i++;
	struct span rest = skip(args, i);
	if (rest.len != 0 && !span_eq_nocase(rest, SPAN_LIT(" LAST")))
		return SMTP_PARSE_INVALID;
	enum smtp_parse_result r = parse_u64((struct span){ args.p, i }, size_r);
	if (r == SMTP_PARSE_OK)
		*last_r = rest.len != 0;
	return r;
}

/* ---- DATA -------------------------------------------------------------- */

const char *smtp_data_result_str(enum smtp_data_result r)
{
	switch (r) {
	case SMTP_DATA_MORE: return "more";
	case SMTP_DATA_END: return "end";
	case SMTP_DATA_OUT_FULL: return "out full";
	}
	return "?";
}

/* Scanner states. D_L0 (zero) is a line start after a real CRLF or at the
 * start of the data: only there can a "." begin the end of data. */
enum {
	D_L0 = 0,	/* line start after CRLF (or data start) */
	D_LB,		/* line start after a bare CR or LF */
	D_MID,		/* inside a line */
	D_CR,		/* after a CR (already output), is it CRLF? */
	D_DOT,		/* D_L0 then '.', not output yet */
	D_DOTB,		/* D_LB then '.', not output yet */
	D_DOTCR,	/* D_L0 '.' CR: LF next would end the data */
	D_END,
};

/* hmatch: how much of "received" matched at a header line start. */
#define HM_NAME 8	/* "received" matched; SP/HTAB/':' may follow */
#define HM_DEAD 0xff	/* this line is not a Received: field */

/* ".\r\n": the bytes smtp_data_feed() outputs that are not in its input. */
static const uint8_t data_lit[] = ".\r\n";

struct data_out {
	struct span *v;
	size_t n;
};

static uint64_t sat_add64(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void data_emit(struct smtp_data_state *st, struct data_out *o,
		      const uint8_t *p, size_t len)
{
	struct span *last = o->n ? &o->v[o->n - 1] : NULL;

	if (last && (uintptr_t)(last->p + last->len) == (uintptr_t)p)
		last->len += len;
	else
		o->v[o->n++] = (struct span){ p, len };
	st->size = sat_add64(st->size, len);
}

/* Counts n received octets into the current line's length. */
static void data_wire(struct smtp_data_state *st, size_t n)
{
	uint64_t l = (uint64_t)st->line_len + n;

	st->line_len = l > UINT32_MAX ? UINT32_MAX : (uint32_t)l;
	if (st->line_len > st->longest_line)
		st->longest_line = st->line_len;
	if (st->line_len > SMTP_TEXT_LINE_MAX)
		st->long_line = 1;
}

/* A content octet (not a line ending) was output: track Received:. */
static void data_content(struct smtp_data_state *st, uint8_t ch)
{
	static const char name[] = "received";

	if (!st->headers_done) {
		uint8_t h = st->line_nonempty ? st->hmatch : 0;
		if (h < HM_NAME)
			h = to_lower(ch) == (uint8_t)name[h] ? h + 1 : HM_DEAD;
		else if (h == HM_NAME && ch == ':') {
			if (st->received != UINT32_MAX)
				st->received++;
			h = HM_DEAD;
		} else if (h == HM_NAME && ch != ' ' && ch != '\t')
			h = HM_DEAD;
		st->hmatch = h;
	}
	st->line_nonempty = 1;
}

/* A line ending was output (and counted): close the line. */
static void data_eol(struct smtp_data_state *st)
{
	if (!st->headers_done && !st->line_nonempty) {
		st->headers_done = 1;
		st->header_size = st->size;
	}
	st->line_len = 0;
	st->line_nonempty = 0;
	st->hmatch = 0;
}

enum smtp_data_result smtp_data_feed(struct smtp_data_state *st,
				     struct span in, struct span *out,
				     size_t max_out, size_t *nout_r,
				     size_t *consumed_r)
{
	const uint8_t *dot = data_lit, *cr = data_lit + 1, *lf = data_lit + 2;
	int normalize = st->bare_policy == SMTP_BARE_NORMALIZE;
	struct data_out o = { out, 0 };
	enum smtp_data_result res = SMTP_DATA_MORE;
	size_t i = 0;

	*nout_r = 0;
	*consumed_r = 0;
	if (st->st == D_END)
		return SMTP_DATA_END;
	/* Each step below consumes at most one octet (or one run inside a
	 * line) and adds at most 3 spans; the states that hand an octet on to
	 * another state do so without consuming it. */
	while (i < in.len) {
		if (o.n + SMTP_DATA_OUT_MIN > max_out) {
			res = SMTP_DATA_OUT_FULL;
			break;
		}
		uint8_t ch = in.p[i];
		switch (st->st) {
		case D_L0:
		case D_LB:
			if (ch == '.') {
				st->st = st->st == D_L0 ? D_DOT : D_DOTB;
				data_wire(st, 1);
				i++;
			} else {
				st->st = D_MID;
			}
			break;
		case D_MID:
			if (ch == '\r') {
				data_emit(st, &o, in.p + i, 1);
				data_wire(st, 1);
				st->st = D_CR;
				i++;
			} else if (ch == '\n') {
				st->bare_seen = 1;
				if (normalize)
					data_emit(st, &o, cr, 2);
				else
					data_emit(st, &o, in.p + i, 1);
				data_wire(st, 1);
				data_eol(st);
				st->st = D_LB;
				i++;
			} else if (st->line_nonempty &&
				   (st->headers_done || st->hmatch == HM_DEAD)) {
				/* Fast path: a run up to the next CR or LF. */
				size_t j = i + 1;
				while (j < in.len && in.p[j] != '\r' && in.p[j] != '\n')
					j++;
				data_emit(st, &o, in.p + i, j - i);
				data_wire(st, j - i);
				i = j;
			} else {
				data_content(st, ch);
				data_emit(st, &o, in.p + i, 1);
				data_wire(st, 1);
				i++;
			}
			break;
		case D_CR:
			if (ch == '\n') {
				data_emit(st, &o, in.p + i, 1);
				data_wire(st, 1);
				data_eol(st);
				st->st = D_L0;
				i++;
			} else {
				/* A bare CR: its CR is already out. */
				st->bare_seen = 1;
				if (normalize)
					data_emit(st, &o, lf, 1);
				data_eol(st);
				st->st = D_LB;
			}
			break;
		case D_DOT:
			if (ch == '\r') {
				data_wire(st, 1);
				st->st = D_DOTCR;
				i++;
			} else if (ch == '\n') {
				/* ".\n" is a line "." with a bare ending: keep
				 * the dot; D_MID handles the LF. */
				data_emit(st, &o, dot, 1);
				data_content(st, '.');
				st->st = D_MID;
			} else {
				/* A stuffed dot: drop it. */
				st->st = D_MID;
			}
			break;
		case D_DOTB:
			if (ch == '\r' || ch == '\n') {
				data_emit(st, &o, dot, 1);
				data_content(st, '.');
			}
			st->st = D_MID;
			break;
		case D_DOTCR:
			if (ch == '\n') {
				data_wire(st, 1);
				i++;
				st->st = D_END;
				if (!st->headers_done)
					st->header_size = st->size;
				*nout_r = o.n;
				*consumed_r = i;
				return SMTP_DATA_END;
			}
			/* "." then a bare CR, not the end: output both (they
			 * may have come in an earlier buffer, so from static
			 * storage) and let D_LB handle ch. */
			data_emit(st, &o, dot, 1);
			data_content(st, '.');
			data_emit(st, &o, cr, 1);
			st->bare_seen = 1;
			if (normalize)
				data_emit(st, &o, lf, 1);
			data_eol(st);
			st->st = D_LB;
			break;
		default: /* corrupted state: end rather than loop */
			st->st = D_END;
			*nout_r = o.n;
			*consumed_r = i;
			return SMTP_DATA_END;
		}
	}
	*nout_r = o.n;
	*consumed_r = i;
	return res;
}
