/* mime.c - the MIME structure scanner, its blob, and the IMAP formatters.
 * See mime.h for the interface and docs/mime.md for the blob format. */
#include "proto/mime.h"

#include <errno.h>
#include <string.h>

/* ---- little-endian helpers ----------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | ((uint64_t)get32(p + 4) << 32);
}

/* Blob layout (docs/mime.md). */
#define HDR_SIZE 32
#define REC_SIZE 48
#define FENT_SIZE 3
#define NO_PARENT UINT32_MAX
static const uint8_t blob_magic[4] = { 'R', 'M', 'I', 'M' };

/* ---- lexical helpers over header values ---------------------------------- */

static int is_wsp(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* RFC 2045 token characters: printable ASCII but tspecials. */
static int is_tchar(uint8_t c)
{
	if (c <= 32 || c >= 127)
		return 0;
	return strchr("()<>@,;:\\\"/[]?=", c) == NULL;
}

/* v.p[i] == '(': returns the index after the matching ')' (nested
 * comments, quoted pairs), or v.len when unterminated. */
static size_t skip_comment(struct span v, size_t i)
{
	unsigned depth = 0;

	while (i < v.len) {
		uint8_t c = v.p[i];
		if (c == '\\') {
			i += 2;
			continue;
		}
		if (c == '(')
			depth++;
		else if (c == ')' && --depth == 0)
			return i + 1;
		i++;
	}
	return v.len;
}

/* v.p[i] == open: skips a quoted string or domain literal. */
static size_t skip_quoted(struct span v, size_t i, uint8_t close)
{
	for (i++; i < v.len; i++) {
		if (v.p[i] == '\\')
			i++;
		else if (v.p[i] == close)
			return i + 1;
	}
	return v.len;
}

static size_t skip_cfws(struct span v, size_t i)
{
	while (i < v.len) {
		if (is_wsp(v.p[i]))
			i++;
		else if (v.p[i] == '(')
			i = skip_comment(v, i);
		else
			break;
	}
	return i < v.len ? i : v.len;
}

static size_t scan_token(struct span v, size_t i)
{
	while (i < v.len && is_tchar(v.p[i]))
		i++;
	return i;
}

static struct span sub(struct span v, size_t a, size_t b)
{
	return (struct span){ v.p + a, b - a };
}

static int eq_nocase(struct span a, const char *lit)
{
	return span_eq_nocase(a, span_cstr(lit));
}

int mime_content_type(struct span v, struct span *type_r, struct span *subtype_r,
		      size_t *params_r)
{
	size_t i = skip_cfws(v, 0), s = i;

	i = scan_token(v, i);
	if (i == s)
		return 0;
	*type_r = sub(v, s, i);
	i = skip_cfws(v, i);
	if (i >= v.len || v.p[i] != '/')
		return 0;
	i = skip_cfws(v, i + 1);
	s = i;
	i = scan_token(v, i);
	if (i == s)
		return 0;
	*subtype_r = sub(v, s, i);
	*params_r = i;
	return 1;
}

/* A lenient unquoted parameter value: anything up to ';', whitespace, a
 * comment or a quote (real mail has boundary=----=_Part_1 unquoted). */
static int is_vchar(uint8_t c)
{
	return c > 32 && c != 127 && c != ';' && c != '"' && c != '(';
}

int mime_param_next(struct span v, size_t *pos, struct span *name_r,
		    struct span *value_r)
{
	size_t i = *pos, s;

	for (;;) {
		i = skip_cfws(v, i);
		if (i >= v.len) {
			*pos = v.len;
			return 0;
		}
		if (v.p[i] != ';') {
			/* junk between parameters: skip one item */
			if (v.p[i] == '"')
				i = skip_quoted(v, i, '"');
			else
				i++;
			continue;
		}
		i = skip_cfws(v, i + 1);
		s = i;
		i = scan_token(v, i);
		if (i == s)
			continue;
		*name_r = sub(v, s, i);
		i = skip_cfws(v, i);
		if (i >= v.len || v.p[i] != '=')
			continue;
		i = skip_cfws(v, i + 1);
		s = i;
		if (i < v.len && v.p[i] == '"') {
			i = skip_quoted(v, i, '"');
		} else {
			while (i < v.len && is_vchar(v.p[i]))
				i++;
			if (i == s)
				continue;
		}
		*value_r = sub(v, s, i);
		*pos = i;
		return 1;
	}
}

/* ---- emitters: one renderer, three uses ------------------------------------
 * A renderer turns a raw span into cleaned bytes through em_c(). Run in
 * MEASURE mode it learns the length and whether a literal is needed; run
 * again it writes quoted (escaping) or literal or plain bytes. */

enum { EM_PLAIN, EM_MEASURE, EM_QUOTED, EM_LITERAL };

struct em {
	uint8_t *buf;
	size_t cap, len;
	int mode;
	size_t n;
	int lit;
};

static void put(struct em *e, const void *p, size_t n)
{
	if (e->len < e->cap) {
		size_t k = e->cap - e->len < n ? e->cap - e->len : n;
		memcpy(e->buf + e->len, p, k);
	}
	e->len += n;
}

static void puts_(struct em *e, const char *s)
{
	put(e, s, strlen(s));
}

static void put_u64(struct em *e, uint64_t v)
{
	char tmp[24];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(e, tmp + i, sizeof(tmp) - i);
}

static void em_c(struct em *e, uint8_t c)
{
	switch (e->mode) {
	case EM_MEASURE:
		e->n++;
		if (c >= 0x80 || c == '\r' || c == '\n')
			e->lit = 1;
		return;
	case EM_QUOTED:
		if (c == '"' || c == '\\')
			put(e, "\\", 1);
		/* fallthrough */
	case EM_LITERAL:
		if (c == 0)
			c = ' ';
		/* fallthrough */
	default:
		put(e, &c, 1);
	}
}

typedef void render_fn(struct em *e, struct span raw);

static void r_raw(struct em *e, struct span raw)
{
	for (size_t i = 0; i < raw.len; i++)
		em_c(e, raw.p[i]);
}

/* Emits a quoted string's contents; i at the opening quote. Returns the
 * index after the closing quote. */
static size_t r_qcontent(struct em *e, struct span v, size_t i, int *any)
{
	for (i++; i < v.len && v.p[i] != '"'; i++) {
		if (v.p[i] == '\\' && i + 1 < v.len)
			i++;
		em_c(e, v.p[i]);
		*any = 1;
	}
	return i < v.len ? i + 1 : v.len;
}

static void r_value(struct em *e, struct span raw)
{
	int any = 0;

	if (raw.len && raw.p[0] == '"')
		r_qcontent(e, raw, 0, &any);
	else
		r_raw(e, raw);
}

/* Phrase (spaces 1) or address part (spaces 0). */
static void r_words(struct em *e, struct span v, int spaces)
{
	int any = 0, pending = 0;
	size_t i = 0;

	while (i < v.len) {
		uint8_t c = v.p[i];
		if (is_wsp(c) || c == '(') {
			i = c == '(' ? skip_comment(v, i) : i + 1;
			pending = any;
			continue;
		}
		if (pending && spaces)
			em_c(e, ' ');
		pending = 0;
		if (c == '"') {
			i = r_qcontent(e, v, i, &any);
		} else {
			em_c(e, c);
			any = 1;
			i++;
		}
	}
}

static void r_phrase(struct em *e, struct span raw)
{
	r_words(e, raw, 1);
}

static void r_addrpart(struct em *e, struct span raw)
{
	r_words(e, raw, 0);
}

static void r_comment(struct em *e, struct span raw)
{
	size_t a = 0, b = raw.len;

	if (a < b && raw.p[a] == '(')
		a++;
	if (b > a && raw.p[b - 1] == ')')
		b--;
	while (a < b && is_wsp(raw.p[a]))
		a++;
	while (b > a && is_wsp(raw.p[b - 1]))
		b--;
	for (size_t i = a; i < b; i++) {
		if (raw.p[i] == '\\' && i + 1 < b)
			i++;
		em_c(e, raw.p[i]);
	}
}

static size_t render_plain(render_fn *fn, struct span raw, uint8_t *out, size_t cap)
{
	struct em e = { .buf = out, .cap = cap, .mode = EM_PLAIN };

	fn(&e, raw);
	return e.len;
}

size_t mime_phrase_render(struct span raw, uint8_t *out, size_t cap)
{
	return render_plain(r_phrase, raw, out, cap);
}

size_t mime_addr_part_render(struct span raw, uint8_t *out, size_t cap)
{
	return render_plain(r_addrpart, raw, out, cap);
}

size_t mime_comment_render(struct span raw, uint8_t *out, size_t cap)
{
	return render_plain(r_comment, raw, out, cap);
}

size_t mime_value_render(struct span raw, uint8_t *out, size_t cap)
{
	return render_plain(r_value, raw, out, cap);
}

/* Writes fn(raw) as an IMAP string; when it renders empty, writes
 * if_empty instead (NULL: an empty string ""). */
static void w_string(struct em *e, render_fn *fn, struct span raw, const char *if_empty)
{
	e->mode = EM_MEASURE;
	e->n = 0;
	e->lit = 0;
	fn(e, raw);
	if (e->n == 0 && if_empty) {
		e->mode = EM_PLAIN;
		puts_(e, if_empty);
		return;
	}
	if (e->lit || e->n > MIME_QUOTED_MAX) {
		put(e, "{", 1);
		put_u64(e, e->n);
		put(e, "}\r\n", 3);
		e->mode = EM_LITERAL;
		fn(e, raw);
	} else {
		put(e, "\"", 1);
		e->mode = EM_QUOTED;
		fn(e, raw);
		put(e, "\"", 1);
	}
	e->mode = EM_PLAIN;
}

/* ---- addresses ------------------------------------------------------------ */

void mime_addr_iter_init(struct mime_addr_iter *it, struct span v)
{
	it->v = v;
	it->pos = 0;
	it->in_group = 0;
}

static struct span trim(struct span v)
{
	while (v.len && is_wsp(v.p[0]))
		v = span_skip(v, 1);
	while (v.len && is_wsp(v.p[v.len - 1]))
		v.len--;
	return v;
}

/* Splits an addr-spec at its last '@' outside quotes, comments and
 * literals. */
static void split_addr_spec(struct span v, struct mime_addr *a)
{
	size_t at = v.len, i = 0;

	while (i < v.len) {
		uint8_t c = v.p[i];
		if (c == '"')
			i = skip_quoted(v, i, '"');
		else if (c == '[')
			i = skip_quoted(v, i, ']');
		else if (c == '(')
			i = skip_comment(v, i);
		else {
			if (c == '@')
				at = i;
			i++;
		}
	}
	if (at < v.len) {
		a->local = trim(sub(v, 0, at));
		a->domain = trim(sub(v, at + 1, v.len));
		a->has_domain = 1;
	} else {
		a->local = trim(v);
	}
}

int mime_addr_next(struct mime_addr_iter *it, struct mime_addr *a)
{
	struct span v = it->v;

	memset(a, 0, sizeof(*a));
	for (;;) {
		size_t i = skip_cfws(v, it->pos), j, lt = SIZE_MAX, colon = SIZE_MAX;
		size_t cstart = 0, cend = 0;

		if (i >= v.len) {
			it->pos = v.len;
			if (it->in_group) {
				it->in_group = 0;
				a->type = MIME_ADDR_GROUP_END;
				return 1;
			}
			return 0;
		}
		if (v.p[i] == ',') {
			it->pos = i + 1;
			continue;
		}
		if (v.p[i] == ';') {
			it->pos = i + 1;
			if (it->in_group) {
				it->in_group = 0;
				a->type = MIME_ADDR_GROUP_END;
				return 1;
			}
			continue;
		}
		for (j = i; j < v.len;) {
			uint8_t c = v.p[j];
			if (c == '"') {
				j = skip_quoted(v, j, '"');
			} else if (c == '[') {
				j = skip_quoted(v, j, ']');
			} else if (c == '(') {
				cstart = j;
				j = skip_comment(v, j);
				cend = j;
			} else if (c == '<') {
				lt = j;
				break;
			} else if (c == ':' && !it->in_group) {
				colon = j;
				break;
			} else if (c == ',' || c == ';') {
				break;
			} else {
				j++;
			}
		}
		if (colon != SIZE_MAX) {
			a->type = MIME_ADDR_GROUP_START;
			a->name = trim(sub(v, i, colon));
			it->in_group = 1;
			it->pos = colon + 1;
			return 1;
		}
		a->type = MIME_ADDR_MAILBOX;
		if (lt != SIZE_MAX) {
			size_t gt = lt + 1, s;
			while (gt < v.len && v.p[gt] != '>') {
				if (v.p[gt] == '"')
					gt = skip_quoted(v, gt, '"');
				else if (v.p[gt] == '(')
					gt = skip_comment(v, gt);
				else
					gt++;
			}
			a->name = trim(sub(v, i, lt));
			s = skip_cfws(v, lt + 1);
			if (s < gt && v.p[s] == '@') {
				/* obs-route: "@a,@b:" */
				size_t k = s;
				while (k < gt && v.p[k] != ':')
					k++;
				if (k < gt) {
					a->route = trim(sub(v, s, k));
					s = k + 1;
				}
			}
			split_addr_spec(sub(v, s, gt), a);
			/* junk after '>' is ignored up to the next ',' or ';' */
			j = gt < v.len ? gt + 1 : v.len;
			while (j < v.len && v.p[j] != ',' && v.p[j] != ';') {
				if (v.p[j] == '"')
					j = skip_quoted(v, j, '"');
				else if (v.p[j] == '(')
					j = skip_comment(v, j);
				else
					j++;
			}
		} else {
			split_addr_spec(sub(v, i, j), a);
			if (cend > cstart) {
				a->name = sub(v, cstart, cend);
				a->name_is_comment = 1;
			}
		}
		it->pos = j;
		return 1;
	}
}

/* ---- the scanner ------------------------------------------------------------ */

enum { MODE_HDR, MODE_BODY };
enum { HLINE_NEW, HLINE_CONT };

static const struct {
	const char *name;
	uint8_t id, env;
} field_names[] = {
	{ "content-type", MIME_FIELD_CONTENT_TYPE, 0 },
	{ "content-transfer-encoding", MIME_FIELD_CONTENT_TRANSFER_ENCODING, 0 },
	{ "content-id", MIME_FIELD_CONTENT_ID, 0 },
	{ "content-description", MIME_FIELD_CONTENT_DESCRIPTION, 0 },
	{ "content-disposition", MIME_FIELD_CONTENT_DISPOSITION, 0 },
	{ "content-language", MIME_FIELD_CONTENT_LANGUAGE, 0 },
	{ "content-location", MIME_FIELD_CONTENT_LOCATION, 0 },
	{ "content-md5", MIME_FIELD_CONTENT_MD5, 0 },
	{ "date", MIME_FIELD_DATE, 1 },
	{ "subject", MIME_FIELD_SUBJECT, 1 },
	{ "from", MIME_FIELD_FROM, 1 },
	{ "sender", MIME_FIELD_SENDER, 1 },
	{ "reply-to", MIME_FIELD_REPLY_TO, 1 },
	{ "to", MIME_FIELD_TO, 1 },
	{ "cc", MIME_FIELD_CC, 1 },
	{ "bcc", MIME_FIELD_BCC, 1 },
	{ "in-reply-to", MIME_FIELD_IN_REPLY_TO, 1 },
	{ "message-id", MIME_FIELD_MESSAGE_ID, 1 },
};

static int field_is_env(unsigned id)
{
	return id >= MIME_FIELD_DATE && id < MIME_FIELD_COUNT;
}

static uint64_t blob_size(const struct mime_scanner *sc)
{
	return HDR_SIZE + (uint64_t)sc->nparts * REC_SIZE + sc->arena_len;
}

static void hdr_reset(struct mime_scanner *sc)
{
	sc->seen = 0;
	sc->field_active = 0;
	sc->field_len = 0;
	sc->field_trunc = 0;
	sc->ct_kind = 0;
	sc->ct_digest = 0;
	sc->blen = 0;
	sc->cte_bad = 0;
}

/* Opens a part whose header starts at hdr_off; it becomes current, in
 * header mode. Returns its index or -1 at a limit. */
static int part_new(struct mime_scanner *sc, uint32_t parent, uint64_t hdr_off,
		    uint8_t flags)
{
	struct mime_scan_part *p;

	if (sc->nparts >= sc->parts_max || blob_size(sc) + REC_SIZE > MIME_BLOB_MAX) {
		sc->flags |= MIME_BLOB_PARTS_LIMIT;
		return -1;
	}
	p = &sc->parts[sc->nparts];
	memset(p, 0, sizeof(*p));
	p->parent = parent;
	p->depth = parent == NO_PARENT ? 0 : (uint16_t)(sc->parts[parent].depth + 1);
	p->hdr_off = hdr_off;
	p->flags = flags;
	p->fields_off = sc->arena_len;
	sc->cur = sc->nparts++;
	sc->mode = MODE_HDR;
	hdr_reset(sc);
	return (int)sc->cur;
}

static void store_field(struct mime_scanner *sc, unsigned id, struct span v)
{
	uint8_t *d;

	if (blob_size(sc) + FENT_SIZE + v.len > MIME_BLOB_MAX) {
		sc->flags |= MIME_BLOB_FIELDS_LOST;
		return;
	}
	d = sc->arena + sc->arena_len;
	d[0] = (uint8_t)id;
	put16(d + 1, (uint16_t)v.len);
	if (v.len)
		memcpy(d + FENT_SIZE, v.p, v.len);
	sc->arena_len += (uint32_t)(FENT_SIZE + v.len);
}

/* The structural reading of the first Content-Type. */
static void ct_parse(struct mime_scanner *sc, struct span v)
{
	struct span t, s, n, val;
	size_t pos;
	uint8_t kind;

	if (!mime_content_type(v, &t, &s, &pos))
		return;
	if (eq_nocase(t, "multipart"))
		kind = MIME_KIND_MULTIPART;
	else if (eq_nocase(t, "message") &&
		 (eq_nocase(s, "rfc822") || eq_nocase(s, "global")))
		kind = MIME_KIND_MESSAGE;
	else if (eq_nocase(t, "text"))
		kind = MIME_KIND_TEXT;
	else
		kind = MIME_KIND_OTHER;
	sc->ct_kind = (uint8_t)(kind + 1);
	if (kind != MIME_KIND_MULTIPART)
		return;
	sc->ct_digest = eq_nocase(s, "digest");
	while (mime_param_next(v, &pos, &n, &val)) {
		if (!eq_nocase(n, "boundary"))
			continue;
		size_t len = mime_value_render(val, sc->bound, sizeof(sc->bound));
		sc->blen = len >= 1 && len <= MIME_BOUNDARY_MAX ? (uint8_t)len : 0;
		break;
	}
}

static void cte_parse(struct mime_scanner *sc, struct span v)
{
	size_t i = skip_cfws(v, 0), s = i;
	struct span tok;

	i = scan_token(v, i);
	tok = sub(v, s, i);
	sc->cte_bad = !(eq_nocase(tok, "7bit") || eq_nocase(tok, "8bit") ||
			eq_nocase(tok, "binary"));
	if (i == s || skip_cfws(v, i) != v.len)
		sc->cte_bad = 0; /* not a token: the default, 7bit */
}

/* The header field in sc->field is complete: keep it if wanted. */
static void finish_field(struct mime_scanner *sc)
{
	struct mime_scan_part *p = &sc->parts[sc->cur];
	struct span f = span_make(sc->field, sc->field_len), name, v;
	size_t colon = 0;

	if (!sc->field_active)
		return;
	sc->field_active = 0;
	while (colon < f.len && f.p[colon] != ':')
		colon++;
	if (colon >= f.len)
		return;
	name = trim(sub(f, 0, colon));
	v = trim(sub(f, colon + 1, f.len));
	for (size_t k = 0; k < sizeof(field_names) / sizeof(field_names[0]); k++) {
		unsigned id = field_names[k].id;
		if (!eq_nocase(name, field_names[k].name))
			continue;
		if (field_names[k].env && !(p->flags & MIME_PART_ENVELOPE))
			return;
		if (sc->seen & (1u << id))
			return; /* the first of duplicates wins */
		sc->seen |= 1u << id;
		if (sc->field_trunc)
			p->flags |= MIME_PART_FIELD_TRUNC;
		if (id == MIME_FIELD_CONTENT_TYPE)
			ct_parse(sc, v);
		else if (id == MIME_FIELD_CONTENT_TRANSFER_ENCODING)
			cte_parse(sc, v);
		store_field(sc, id, v);
		return;
	}
}

/* Ends the current part's header at body_off and decides its kind. */
static void classify(struct mime_scanner *sc, uint64_t body_off, uint64_t lines_start)
{
	struct mime_scan_part *p = &sc->parts[sc->cur];

	finish_field(sc);
	p->body_off = body_off;
	p->lines_start = lines_start;
	p->fields_len = sc->arena_len - p->fields_off;
	if (sc->ct_kind == 0) {
		p->flags |= MIME_PART_CT_DEFAULT;
		p->kind = MIME_KIND_TEXT;
		if (p->parent != NO_PARENT && (sc->parts[p->parent].flags & MIME_PART_DIGEST))
			p->kind = MIME_KIND_MESSAGE;
	} else {
		p->kind = (uint8_t)(sc->ct_kind - 1);
		if (sc->ct_digest)
			p->flags |= MIME_PART_DIGEST;
	}
	sc->mode = MODE_BODY;
}

/* The header ended normally (blank line, or a line that is no field:
 * junk, which is then the first body line). Opens what the body holds. */
static void end_header(struct mime_scanner *sc, uint64_t body_off,
		       uint64_t lines_start, int junk)
{
	uint32_t pi = sc->cur;
	struct mime_scan_part *p = &sc->parts[pi];

	classify(sc, body_off, lines_start);
	if (p->kind == MIME_KIND_MULTIPART) {
		if (sc->blen == 0) {
			p->flags |= MIME_PART_OPAQUE;
		} else if (p->depth >= sc->depth_max) {
			p->flags |= MIME_PART_OPAQUE;
			sc->flags |= MIME_BLOB_DEPTH_LIMIT;
		} else {
			struct mime_scan_bound *b = &sc->bounds[sc->nbounds++];
			b->part = pi;
			b->len = sc->blen;
			memcpy(b->b, sc->bound, sc->blen);
		}
	} else if (p->kind == MIME_KIND_MESSAGE) {
		if (sc->cte_bad) {
			p->flags |= MIME_PART_OPAQUE;
		} else if (p->depth >= sc->depth_max) {
			p->flags |= MIME_PART_OPAQUE;
			sc->flags |= MIME_BLOB_DEPTH_LIMIT;
		} else if (part_new(sc, pi, body_off, MIME_PART_ENVELOPE) < 0) {
			p->flags |= MIME_PART_OPAQUE;
		} else if (junk) {
			/* the junk line is no field of the embedded header
			 * either: it is empty, the line starts its body */
			end_header(sc, body_off, lines_start, 1);
		}
	}
}

/* A header cut short (by a boundary or the end): no body, nothing split. */
static void hdr_cut(struct mime_scanner *sc, uint64_t body_off, uint64_t lines_start)
{
	struct mime_scan_part *p = &sc->parts[sc->cur];

	classify(sc, body_off, lines_start);
	if (p->kind == MIME_KIND_MULTIPART || p->kind == MIME_KIND_MESSAGE)
		p->flags |= MIME_PART_OPAQUE;
}

/* Ends the open parts from cur up to (not including) part stop at e, where
 * elines LFs came before e. A part whose body starts after e (its header
 * ended on the line before the boundary) ends where its body starts, and
 * so do its ancestors at least: a part never ends after its parent. */
static void end_parts(struct mime_scanner *sc, uint32_t stop, uint64_t e,
		      uint64_t elines)
{
	for (uint32_t x = sc->cur; x != stop && x < sc->nparts; x = sc->parts[x].parent) {
		struct mime_scan_part *p = &sc->parts[x];
		if (e < p->body_off) {
			e = p->body_off;
			elines = p->lines_start;
		}
		p->end_off = e;
		p->lines = elines - p->lines_start;
	}
}

/* Is the current line a boundary of an open multipart? Innermost first;
 * exact match: "--" boundary ["--"] and only whitespace after it. */
static int boundary_match(struct mime_scanner *sc, uint32_t *k_r, int *close_r)
{
	size_t n = sc->peek_len;

	if (!sc->peek_tail_ws)
		return 0;
	while (n && (sc->peek[n - 1] == ' ' || sc->peek[n - 1] == '\t' ||
		     sc->peek[n - 1] == '\r'))
		n--;
	if (n < 3 || sc->peek[0] != '-' || sc->peek[1] != '-')
		return 0;
	for (uint32_t k = sc->nbounds; k-- > 0;) {
		const struct mime_scan_bound *b = &sc->bounds[k];
		if (n != 2u + b->len && n != 4u + b->len)
			continue;
		if (memcmp(sc->peek + 2, b->b, b->len) != 0)
			continue;
		if (n == 4u + b->len &&
		    (sc->peek[2 + b->len] != '-' || sc->peek[3 + b->len] != '-'))
			continue;
		*k_r = k;
		*close_r = n == 4u + b->len;
		return 1;
	}
	return 0;
}

static void boundary(struct mime_scanner *sc, uint32_t k, int close, uint64_t next_off)
{
	uint32_t kp = sc->bounds[k].part;
	uint64_t e = sc->has_prev_eol ? sc->prev_eol_off : sc->line_off;
	uint64_t elines = sc->has_prev_eol && sc->line_nl ? sc->line_nl - 1 : sc->line_nl;

	if (sc->mode == MODE_HDR)
		hdr_cut(sc, sc->line_off, sc->line_nl);
	end_parts(sc, kp, e, elines);
	sc->nbounds = k + 1;
	if (!close && part_new(sc, kp, next_off, 0) >= 0)
		return;
	/* a close delimiter, or no room for another part: the rest of the
	 * multipart's body is epilogue */
	sc->nbounds = k;
	sc->cur = kp;
	sc->mode = MODE_BODY;
}

static int looks_like_field(const struct mime_scanner *sc)
{
	uint32_t i = 0;

	while (i < sc->field_len && sc->field[i] > 32 && sc->field[i] < 127 &&
	       sc->field[i] != ':')
		i++;
	if (i == 0)
		return 0;
	while (i < sc->field_len && (sc->field[i] == ' ' || sc->field[i] == '\t'))
		i++;
	return i < sc->field_len && sc->field[i] == ':';
}

static void line_begin(struct mime_scanner *sc, uint8_t c)
{
	sc->line_started = 1;
	sc->line_off = sc->off;
	sc->line_nl = sc->nl;
	sc->last_cr = 0;
	sc->peek_len = 0;
	sc->peek_tail_ws = 1;
	sc->peek_on = sc->nbounds > 0 && c == '-';
	if (sc->mode != MODE_HDR)
		return;
	if (c == ' ' || c == '\t') {
		sc->hline = HLINE_CONT; /* unfolding: the CRLF before goes */
	} else {
		finish_field(sc);
		sc->hline = HLINE_NEW;
		sc->field_len = 0;
		sc->field_trunc = 0;
	}
}

static void line_byte(struct mime_scanner *sc, uint8_t c)
{
	if (sc->peek_on) {
		if (sc->peek_len < sizeof(sc->peek)) {
			sc->peek[sc->peek_len++] = c;
		} else if (c != ' ' && c != '\t' && c != '\r') {
			sc->peek_tail_ws = 0;
			if (sc->mode == MODE_BODY)
				sc->peek_on = 0;
		}
	}
	if (sc->mode == MODE_HDR && (sc->hline == HLINE_NEW || sc->field_active)) {
		if (sc->field_len < MIME_HEADER_FIELD_MAX)
			sc->field[sc->field_len++] = c;
		else
			sc->field_trunc = 1;
	}
	sc->last_cr = c == '\r';
}

/* The current line ends: at sc->off there is its LF (has_lf) or the end
 * of the message. */
static void line_end(struct mime_scanner *sc, int has_lf)
{
	uint64_t eol_off = has_lf && sc->last_cr ? sc->off - 1 : sc->off;
	uint64_t next_off = has_lf ? sc->off + 1 : sc->off;
	uint32_t k;
	int close;

	if (sc->peek_on && boundary_match(sc, &k, &close)) {
		boundary(sc, k, close, next_off);
	} else if (sc->mode == MODE_HDR) {
		int strip = sc->last_cr && !sc->field_trunc;
		if (sc->hline == HLINE_NEW) {
			if (strip)
				sc->field_len--;
			if (sc->field_len == 0)
				end_header(sc, next_off, sc->nl + (has_lf ? 1 : 0), 0);
			else if (looks_like_field(sc))
				sc->field_active = 1;
			else
				end_header(sc, sc->line_off, sc->line_nl, 1);
		} else if (sc->field_active && strip) {
			sc->field_len--;
		}
	}
	if (has_lf) {
		sc->nl++;
		sc->prev_eol_off = eol_off;
		sc->has_prev_eol = 1;
	}
	sc->line_started = 0;
}

void mime_scan_init(struct mime_scanner *sc)
{
	/* Only the small head needs clearing: the tables are written before
	 * they are read. */
	memset(sc, 0, offsetof(struct mime_scanner, parts));
	sc->depth_max = MIME_DEPTH_MAX;
	sc->parts_max = MIME_PARTS_MAX;
	part_new(sc, NO_PARENT, 0, MIME_PART_ENVELOPE);
}

void mime_scan_limits(struct mime_scanner *sc, uint32_t depth_max, uint32_t parts_max)
{
	if (depth_max && depth_max < MIME_DEPTH_MAX)
		sc->depth_max = depth_max;
	if (parts_max && parts_max < MIME_PARTS_MAX)
		sc->parts_max = parts_max;
}

void mime_scan_feed(struct mime_scanner *sc, struct span chunk)
{
	const uint8_t *p = chunk.p, *end = chunk.p + chunk.len;

	if (sc->finished || chunk.len == 0)
		return;
	/* One memchr per chunk (gigabytes a second) buys FETCH the right to
	 * send the message without reading it (MIME_BLOB_NUL_FREE). */
	if (!sc->nul_seen && memchr(chunk.p, 0, chunk.len))
		sc->nul_seen = 1;
	while (p < end) {
		if (!sc->line_started)
			line_begin(sc, *p);
		if (sc->mode == MODE_BODY && !sc->peek_on) {
			/* fast path: nothing in this line matters */
			const uint8_t *q = memchr(p, '\n', (size_t)(end - p));
			const uint8_t *stop = q ? q : end;
			if (stop > p) {
				sc->last_cr = stop[-1] == '\r';
				sc->off += (uint64_t)(stop - p);
				p = stop;
			}
			if (!q)
				break;
		} else {
			while (p < end && *p != '\n') {
				line_byte(sc, *p++);
				sc->off++;
				if (sc->mode == MODE_BODY && !sc->peek_on)
					break;
			}
			if (p == end || *p != '\n')
				continue;
		}
		line_end(sc, 1);
		sc->off++;
		p++;
	}
}

int mime_scan_finish(struct mime_scanner *sc, uint8_t *blob, size_t cap, size_t *len_r)
{
	uint64_t size;
	uint8_t *d;

	if (!sc->finished) {
		if (sc->line_started)
			line_end(sc, 0);
		if (sc->mode == MODE_HDR)
			hdr_cut(sc, sc->off, sc->nl);
		end_parts(sc, NO_PARENT, sc->off, sc->nl);
		sc->finished = 1;
	}
	size = blob_size(sc);
	*len_r = (size_t)size;
	if (cap < size)
		return -ENOBUFS;
	memcpy(blob, blob_magic, 4);
	blob[4] = MIME_BLOB_VERSION;
	blob[5] = (uint8_t)(sc->flags | (sc->nul_seen ? 0 : MIME_BLOB_NUL_FREE));
	put16(blob + 6, REC_SIZE);
	put32(blob + 8, sc->nparts);
	put32(blob + 12, sc->arena_len);
	put64(blob + 16, sc->off);
	put64(blob + 24, 0);
	d = blob + HDR_SIZE;
	for (uint32_t i = 0; i < sc->nparts; i++, d += REC_SIZE) {
		const struct mime_scan_part *p = &sc->parts[i];
		put32(d, p->parent);
		put16(d + 4, p->depth);
		d[6] = p->kind;
		d[7] = p->flags;
		put64(d + 8, p->hdr_off);
		put64(d + 16, p->body_off);
		put64(d + 24, p->end_off);
		put64(d + 32, p->lines);
		put32(d + 40, p->fields_off);
		put32(d + 44, p->fields_len);
	}
	if (sc->arena_len)
		memcpy(d, sc->arena, sc->arena_len);
	return 0;
}

/* ---- the reader --------------------------------------------------------------- */

static const uint8_t *rec(const struct mime_blob *mb, uint32_t i)
{
	return mb->b.p + HDR_SIZE + (size_t)i * REC_SIZE;
}

static void rec_read(const struct mime_blob *mb, uint32_t i, struct mime_part *p)
{
	const uint8_t *d = rec(mb, i);

	p->index = i;
	p->parent = get32(d);
	p->depth = get16(d + 4);
	p->kind = d[6];
	p->flags = d[7];
	p->hdr_off = get64(d + 8);
	p->body_off = get64(d + 16);
	p->end_off = get64(d + 24);
	p->lines = get64(d + 32);
}

static struct span strings(const struct mime_blob *mb)
{
	size_t off = HDR_SIZE + (size_t)mb->nparts * REC_SIZE;

	return span_make(mb->b.p + off, mb->b.len - off);
}

static int fields_check(const struct mime_blob *mb, const uint8_t *d, int env)
{
	struct span s = strings(mb);
	uint64_t off = get32(d + 40), len = get32(d + 44), i = 0;

	if (off + len > s.len)
		return -1;
	while (i < len) {
		if (len - i < FENT_SIZE)
			return -1;
		uint8_t id = s.p[off + i];
		uint16_t flen = get16(s.p + off + i + 1);
		if (id >= MIME_FIELD_COUNT || (field_is_env(id) && !env))
			return -1;
		if (flen > len - i - FENT_SIZE)
			return -1;
		i += FENT_SIZE + flen;
	}
	return 0;
}

int mime_blob_parse(struct span b, struct mime_blob *mb_r)
{
	struct mime_blob mb;
	uint64_t strings_len;

	if (b.len < HDR_SIZE || memcmp(b.p, blob_magic, 4) != 0)
		return -EINVAL;
	if (b.p[4] != MIME_BLOB_VERSION)
		return -EPROTONOSUPPORT;
	mb.b = b;
	mb.flags = b.p[5];
	mb.nparts = get32(b.p + 8);
	strings_len = get32(b.p + 12);
	mb.size = get64(b.p + 16);
	if (get16(b.p + 6) != REC_SIZE || (mb.flags & ~MIME_BLOB_FLAGS_ALL) ||
	    get64(b.p + 24) != 0 || mb.nparts < 1 || mb.nparts > MIME_PARTS_MAX ||
	    HDR_SIZE + (uint64_t)mb.nparts * REC_SIZE + strings_len != b.len)
		return -EINVAL;
	for (uint32_t i = 0; i < mb.nparts; i++) {
		struct mime_part p, pp, x;
		rec_read(&mb, i, &p);
		if (p.kind > MIME_KIND_OTHER || (p.flags & ~MIME_PART_FLAGS_ALL) ||
		    p.hdr_off > p.body_off || p.body_off > p.end_off ||
		    p.end_off > mb.size || p.lines > p.end_off - p.body_off)
			return -EINVAL;
		if (fields_check(&mb, rec(&mb, i), p.flags & MIME_PART_ENVELOPE) < 0)
			return -EINVAL;
		if (i == 0) {
			if (p.parent != NO_PARENT || p.depth != 0 || p.hdr_off != 0 ||
			    p.end_off != mb.size || !(p.flags & MIME_PART_ENVELOPE))
				return -EINVAL;
			continue;
		}
		if (p.parent >= i)
			return -EINVAL;
		rec_read(&mb, p.parent, &pp);
		if (p.depth != pp.depth + 1 || p.depth > MIME_DEPTH_MAX)
			return -EINVAL;
		if (pp.kind == MIME_KIND_MESSAGE) {
			if (i != p.parent + 1 || p.hdr_off != pp.body_off ||
			    p.end_off != pp.end_off || !(p.flags & MIME_PART_ENVELOPE))
				return -EINVAL;
		} else if (pp.kind == MIME_KIND_MULTIPART) {
			if (p.hdr_off < pp.body_off || p.end_off > pp.end_off ||
			    (p.flags & MIME_PART_ENVELOPE))
				return -EINVAL;
		} else {
			return -EINVAL;
		}
		/* document order: the parent is i-1 or one of its ancestors,
		 * and the previous sibling ends before this part starts */
		rec_read(&mb, i - 1, &x);
		if (x.index != p.parent) {
			while (x.parent != p.parent) {
				if (x.parent == NO_PARENT || x.depth <= pp.depth)
					return -EINVAL;
				rec_read(&mb, x.parent, &x);
			}
			if (x.end_off > p.hdr_off)
				return -EINVAL;
		}
	}
	*mb_r = mb;
	return 0;
}

int mime_blob_part(const struct mime_blob *mb, uint32_t i, struct mime_part *p_r)
{
	if (i >= mb->nparts)
		return -ENOENT;
	rec_read(mb, i, p_r);
	return 0;
}

int64_t mime_blob_child(const struct mime_blob *mb, uint32_t i, uint32_t k)
{
	struct mime_part p, c;

	if (i >= mb->nparts || k == 0)
		return -ENOENT;
	rec_read(mb, i, &p);
	for (uint32_t j = i + 1; j < mb->nparts; j++) {
		rec_read(mb, j, &c);
		if (c.depth <= p.depth)
			break;
		if (c.parent == i && --k == 0)
			return j;
	}
	return -ENOENT;
}

int mime_blob_field(const struct mime_blob *mb, uint32_t i, enum mime_field f,
		    struct span *value_r)
{
	struct span s = strings(mb);
	const uint8_t *d;
	uint64_t off, len, pos = 0;

	if (i >= mb->nparts)
		return 0;
	d = rec(mb, i);
	off = get32(d + 40);
	len = get32(d + 44);
	if (off + len > s.len)
		return 0;
	while (len - pos >= FENT_SIZE) {
		const uint8_t *e = s.p + off + pos;
		uint16_t flen = get16(e + 1);
		if (flen > len - pos - FENT_SIZE)
			return 0;
		if (e[0] == (uint8_t)f) {
			*value_r = span_make(e + FENT_SIZE, flen);
			return 1;
		}
		pos += FENT_SIZE + flen;
	}
	return 0;
}

/* ---- sections --------------------------------------------------------------- */

static int kw(struct span *s, const char *word)
{
	struct span w = span_cstr(word);

	if (!span_prefix_nocase(*s, w))
		return 0;
	*s = span_skip(*s, w.len);
	return 1;
}

/* The k-th part inside the message m (its own body when not multipart). */
static int64_t msg_child(const struct mime_blob *mb, uint32_t m, uint32_t k)
{
	struct mime_part p;

	rec_read(mb, m, &p);
	if (p.kind == MIME_KIND_MULTIPART)
		return mime_blob_child(mb, m, k);
	return k == 1 ? (int64_t)m : -ENOENT;
}

int mime_blob_section(const struct mime_blob *mb, struct span s,
		      struct mime_section *sec_r)
{
	struct mime_part p;
	int64_t node = 0;
	int in_msg = 1, have_num = 0;

	memset(sec_r, 0, sizeof(*sec_r));
	while (s.len && s.p[0] >= '0' && s.p[0] <= '9') {
		uint32_t k = 0;
		if (s.p[0] == '0')
			return -EINVAL;
		while (s.len && s.p[0] >= '0' && s.p[0] <= '9') {
			if (k > 100000000)
				return -EINVAL;
			k = k * 10 + (uint32_t)(s.p[0] - '0');
			s = span_skip(s, 1);
		}
		if (!in_msg) {
			rec_read(mb, (uint32_t)node, &p);
			if (p.kind == MIME_KIND_MULTIPART) {
				node = mime_blob_child(mb, (uint32_t)node, k);
				k = 0;
			} else if (p.kind == MIME_KIND_MESSAGE) {
				node = mime_blob_child(mb, (uint32_t)node, 1);
			} else {
				node = -ENOENT;
			}
		}
		if (node >= 0 && k)
			node = msg_child(mb, (uint32_t)node, k);
		in_msg = 0;
		have_num = 1;
		if (s.len) {
			if (s.p[0] != '.' || s.len == 1)
				return -EINVAL;
			s = span_skip(s, 1);
		}
		if (node < 0) {
			/* keep checking the syntax */
			while (s.len && ((s.p[0] >= '0' && s.p[0] <= '9') || s.p[0] == '.'))
				s = span_skip(s, 1);
			if (s.len && !(s.p[0] >= 'A' && s.p[0] <= 'Z') &&
			    !(s.p[0] >= 'a' && s.p[0] <= 'z'))
				return -EINVAL;
			return -ENOENT;
		}
	}
	if (s.len == 0) {
		sec_r->what = MIME_SECTION_BODY;
		sec_r->part = (uint32_t)node;
		rec_read(mb, (uint32_t)node, &p);
		if (!have_num) {
			sec_r->off = 0;
			sec_r->len = mb->size;
		} else {
			sec_r->off = p.body_off;
			sec_r->len = p.end_off - p.body_off;
		}
		return 0;
	}
	if (kw(&s, "MIME")) {
		if (!have_num || s.len)
			return -EINVAL;
		rec_read(mb, (uint32_t)node, &p);
		sec_r->what = MIME_SECTION_MIME;
	} else {
		if (kw(&s, "HEADER.FIELDS.NOT")) {
			sec_r->what = MIME_SECTION_HEADER_FIELDS_NOT;
		} else if (kw(&s, "HEADER.FIELDS")) {
			sec_r->what = MIME_SECTION_HEADER_FIELDS;
		} else if (kw(&s, "HEADER")) {
			sec_r->what = MIME_SECTION_HEADER;
		} else if (kw(&s, "TEXT")) {
			sec_r->what = MIME_SECTION_TEXT;
		} else {
			return -EINVAL;
		}
		if ((sec_r->what == MIME_SECTION_HEADER || sec_r->what == MIME_SECTION_TEXT)
		    ? s.len != 0 : (s.len == 0 || s.p[0] != ' '))
			return -EINVAL;
		sec_r->rest = s;
		if (have_num) {
			rec_read(mb, (uint32_t)node, &p);
			if (p.kind != MIME_KIND_MESSAGE)
				return -ENOENT;
			node = mime_blob_child(mb, (uint32_t)node, 1);
			if (node < 0)
				return -ENOENT;
		}
		rec_read(mb, (uint32_t)node, &p);
	}
	sec_r->part = (uint32_t)node;
	if (sec_r->what == MIME_SECTION_TEXT) {
		sec_r->off = p.body_off;
		sec_r->len = p.end_off - p.body_off;
	} else {
		sec_r->off = p.hdr_off;
		sec_r->len = p.body_off - p.hdr_off;
	}
	return 0;
}

/* ---- the formatters ---------------------------------------------------------- */

#define EMPTY_BODY "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)"
#define NIL_ENVELOPE "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"

static void w_nfield(struct em *e, const struct mime_blob *mb, uint32_t i,
		     enum mime_field f)
{
	struct span v;

	if (mime_blob_field(mb, i, f, &v))
		w_string(e, r_raw, v, NULL);
	else
		puts_(e, "NIL");
}

static int addr_any(struct span v)
{
	struct mime_addr_iter it;
	struct mime_addr a;

	mime_addr_iter_init(&it, v);
	return mime_addr_next(&it, &a);
}

static void w_addrs(struct em *e, struct span v)
{
	struct mime_addr_iter it;
	struct mime_addr a;
	int n = 0;

	mime_addr_iter_init(&it, v);
	while (mime_addr_next(&it, &a)) {
		puts_(e, n ? "(" : "((");
		n++;
		switch (a.type) {
		case MIME_ADDR_GROUP_START:
			puts_(e, "NIL NIL ");
			w_string(e, r_phrase, a.name, NULL);
			puts_(e, " NIL)");
			break;
		case MIME_ADDR_GROUP_END:
			puts_(e, "NIL NIL NIL NIL)");
			break;
		default:
			w_string(e, a.name_is_comment ? r_comment : r_phrase, a.name, "NIL");
			put(e, " ", 1);
			w_string(e, r_addrpart, a.route, "NIL");
			put(e, " ", 1);
			w_string(e, r_addrpart, a.local, "\"MISSING_MAILBOX\"");
			put(e, " ", 1);
			if (a.has_domain)
				w_string(e, r_addrpart, a.domain, "\"MISSING_DOMAIN\"");
			else
				puts_(e, "\"MISSING_DOMAIN\"");
			put(e, ")", 1);
		}
	}
	puts_(e, n ? ")" : "NIL");
}

/* Sender and Reply-To fall back to From when absent or empty (RFC 3501). */
static void w_addr_field(struct em *e, const struct mime_blob *mb, uint32_t i,
			 enum mime_field f, int from_default)
{
	struct span v;

	if (mime_blob_field(mb, i, f, &v) && addr_any(v)) {
		w_addrs(e, v);
		return;
	}
	if (from_default && mime_blob_field(mb, i, MIME_FIELD_FROM, &v)) {
		w_addrs(e, v);
		return;
	}
	puts_(e, "NIL");
}

static void w_envelope(struct em *e, const struct mime_blob *mb, uint32_t i)
{
	put(e, "(", 1);
	w_nfield(e, mb, i, MIME_FIELD_DATE);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_SUBJECT);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_FROM, 0);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_SENDER, 1);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_REPLY_TO, 1);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_TO, 0);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_CC, 0);
	put(e, " ", 1);
	w_addr_field(e, mb, i, MIME_FIELD_BCC, 0);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_IN_REPLY_TO);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_MESSAGE_ID);
	put(e, ")", 1);
}

int64_t mime_write_envelope(const struct mime_blob *mb, uint32_t i, uint8_t *buf,
			    size_t cap)
{
	struct em e = { .buf = buf, .cap = cap, .mode = EM_PLAIN };
	struct mime_part p;

	if (mime_blob_part(mb, i, &p) < 0 || !(p.flags & MIME_PART_ENVELOPE))
		return -ENOENT;
	w_envelope(&e, mb, i);
	return (int64_t)e.len;
}

/* Parameters from v at pos as an IMAP list; text parts get the default
 * charset when they name none (charset*=utf-8''... and its continuations
 * charset*0 / charset*0* name one too: RFC 2231). */
static void w_params(struct em *e, struct span v, size_t pos, int have, int text)
{
	struct span n, val;
	int count = 0, charset = 0;

	while (have && count < MIME_PARAMS_MAX && mime_param_next(v, &pos, &n, &val)) {
		put(e, count++ ? " " : "(", 1);
		w_string(e, r_raw, n, NULL);
		put(e, " ", 1);
		w_string(e, r_value, val, NULL);
		if (eq_nocase(n, "charset") ||
		    (n.len >= 8 && eq_nocase(span_make(n.p, 8), "charset*")))
			charset = 1;
	}
	if (text && !charset) {
		puts_(e, count ? " " : "(");
		puts_(e, "\"charset\" \"us-ascii\"");
		count++;
	}
	puts_(e, count ? ")" : "NIL");
}

static void w_disposition(struct em *e, const struct mime_blob *mb, uint32_t i)
{
	struct span v;
	size_t pos, s;

	if (!mime_blob_field(mb, i, MIME_FIELD_CONTENT_DISPOSITION, &v)) {
		puts_(e, "NIL");
		return;
	}
	s = skip_cfws(v, 0);
	pos = scan_token(v, s);
	if (pos == s) {
		puts_(e, "NIL");
		return;
	}
	put(e, "(", 1);
	w_string(e, r_raw, sub(v, s, pos), NULL);
	put(e, " ", 1);
	w_params(e, v, pos, 1, 0);
	put(e, ")", 1);
}

static void w_language(struct em *e, const struct mime_blob *mb, uint32_t i)
{
	struct span v;
	size_t pos = 0;
	int n = 0;

	if (mime_blob_field(mb, i, MIME_FIELD_CONTENT_LANGUAGE, &v)) {
		while ((pos = skip_cfws(v, pos)) < v.len) {
			size_t s = pos;
			pos = scan_token(v, pos);
			if (pos == s) {
				pos++; /* ',' or junk */
				continue;
			}
			put(e, n++ ? " " : "(", 1);
			w_string(e, r_raw, sub(v, s, pos), NULL);
		}
	}
	puts_(e, n ? ")" : "NIL");
}

static void w_ext_common(struct em *e, const struct mime_blob *mb, uint32_t i)
{
	put(e, " ", 1);
	w_disposition(e, mb, i);
	put(e, " ", 1);
	w_language(e, mb, i);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_CONTENT_LOCATION);
}

static void w_body(struct em *e, const struct mime_blob *mb, uint32_t i, bool ext)
{
	struct mime_part p, c;
	struct span ct = { 0 }, type, subtype;
	size_t pos = 0;
	int have_ct;

	rec_read(mb, i, &p);
	have_ct = !(p.flags & MIME_PART_CT_DEFAULT) &&
		  mime_blob_field(mb, i, MIME_FIELD_CONTENT_TYPE, &ct) &&
		  mime_content_type(ct, &type, &subtype, &pos);
	put(e, "(", 1);
	if (p.kind == MIME_KIND_MULTIPART) {
		int any = 0;
		for (uint32_t j = i + 1; j < mb->nparts; j++) {
			rec_read(mb, j, &c);
			if (c.depth <= p.depth)
				break;
			if (c.parent == i) {
				w_body(e, mb, j, ext);
				any = 1;
			}
		}
		if (!any)
			puts_(e, EMPTY_BODY);
		put(e, " ", 1);
		if (have_ct)
			w_string(e, r_raw, subtype, NULL);
		else
			puts_(e, "\"mixed\"");
		if (ext) {
			put(e, " ", 1);
			w_params(e, ct, pos, have_ct, 0);
			w_ext_common(e, mb, i);
		}
		put(e, ")", 1);
		return;
	}
	if (have_ct) {
		w_string(e, r_raw, type, NULL);
		put(e, " ", 1);
		w_string(e, r_raw, subtype, NULL);
	} else if (p.kind == MIME_KIND_MESSAGE) {
		puts_(e, "\"message\" \"rfc822\"");
	} else {
		puts_(e, "\"text\" \"plain\"");
	}
	put(e, " ", 1);
	w_params(e, ct, pos, have_ct, p.kind == MIME_KIND_TEXT);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_CONTENT_ID);
	put(e, " ", 1);
	w_nfield(e, mb, i, MIME_FIELD_CONTENT_DESCRIPTION);
	put(e, " ", 1);
	{
		struct span v;
		size_t s, t;
		if (mime_blob_field(mb, i, MIME_FIELD_CONTENT_TRANSFER_ENCODING, &v) &&
		    (s = skip_cfws(v, 0), t = scan_token(v, s), t > s) &&
		    skip_cfws(v, t) == v.len)
			w_string(e, r_raw, sub(v, s, t), NULL);
		else
			puts_(e, "\"7bit\"");
	}
	put(e, " ", 1);
	put_u64(e, p.end_off - p.body_off);
	if (p.kind == MIME_KIND_TEXT) {
		put(e, " ", 1);
		put_u64(e, p.lines);
	} else if (p.kind == MIME_KIND_MESSAGE) {
		put(e, " ", 1);
		if (i + 1 < mb->nparts && (rec_read(mb, i + 1, &c), c.parent == i)) {
			w_envelope(e, mb, i + 1);
			put(e, " ", 1);
			w_body(e, mb, i + 1, ext);
		} else {
			puts_(e, NIL_ENVELOPE " " EMPTY_BODY);
		}
		put(e, " ", 1);
		put_u64(e, p.lines);
	}
	if (ext) {
		put(e, " ", 1);
		w_nfield(e, mb, i, MIME_FIELD_CONTENT_MD5);
		w_ext_common(e, mb, i);
	}
	put(e, ")", 1);
}

int64_t mime_write_bodystructure(const struct mime_blob *mb, uint32_t i,
				 bool extensible, uint8_t *buf, size_t cap)
{
	struct em e = { .buf = buf, .cap = cap, .mode = EM_PLAIN };

	if (i >= mb->nparts)
		return -ENOENT;
	w_body(&e, mb, i, extensible);
	return (int64_t)e.len;
}
