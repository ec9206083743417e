/* test_imap_search.c - the SEARCH program: parsing (good, BAD, BADCHARSET),
 * three-valued evaluation, and the byte scanner for HEADER/BODY/TEXT fed
 * in pieces of every size from 1 byte up, with and without the MIME
 * structure blob. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "proto/imap_search.h"
#include "table_test.h"

/* Table rows leave blob_only out when false. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* Tokenizes the text of a SEARCH command (after the verb) with the real
 * tokenizer. Quoted strings are unquoted into store. Returns the count,
 * or -1 when the tokenizer refused it. */
static long tokenize(const char *text, struct imap_search_tok *t, size_t cap, uint8_t *store)
{
	static char line[16384];
	snprintf(line, sizeof(line), "%s\r\n", text);
	struct imap_parser p;
	imap_parser_init(&p, IMAP_LINE_MAX);
	size_t pos = 0, len = strlen(line), n = 0, so = 0;
	while (pos < len) {
		struct imap_token tk;
		size_t used;
		if (imap_parse_next(&p, span_make(line + pos, len - pos), &used, &tk) != IMAP_PARSE_OK)
			return -1;
		pos += used;
		if (tk.type == IMAP_TOK_EOL)
			break;
		if (n == cap)
			return -1;
		switch (tk.type) {
		case IMAP_TOK_ATOM:
			t[n].kind = IMAP_STOK_ATOM;
			memcpy(store + so, tk.text.p, tk.text.len);
			t[n].text = span_make(store + so, tk.text.len);
			so += tk.text.len;
			break;
		case IMAP_TOK_NIL:
			t[n].kind = IMAP_STOK_NIL;
			t[n].text = SPAN_LIT("NIL");
			break;
		case IMAP_TOK_QUOTED: {
			size_t u = imap_unquote(tk.text, store + so);
			t[n].kind = IMAP_STOK_STRING;
			t[n].text = span_make(store + so, u);
			so += u;
			break;
		}
		case IMAP_TOK_LIST_BEGIN:
			t[n].kind = IMAP_STOK_LBEGIN;
			t[n].text = SPAN_LIT("(");
			break;
		case IMAP_TOK_LIST_END:
			t[n].kind = IMAP_STOK_LEND;
			t[n].text = SPAN_LIT(")");
			break;
		default:
			return -1;
		}
		n++;
	}
	return (long)n;
}

struct prog {
	struct imap_search s;
	struct imap_search_tok t[256];
	uint8_t store[4096];
	uint32_t fail[4096];
};

static int compile(struct prog *p, const char *text)
{
	long n = tokenize(text, p->t, 256, p->store);
	cr_assert_geq(n, 0, "tokenizer refused: %s", text);
	int r = imap_search_parse(&p->s, p->t, (size_t)n);
	if (r == IMAP_SEARCH_OK) {
		cr_assert_leq(p->s.fail_len, 4096);
		imap_search_prepare(&p->s, p->fail);
	}
	return r;
}

/* ---- parsing ---- */

struct pcase {
	const char *text;
	int want;
};

static const struct pcase parse_cases[] = {
	{ "ALL", IMAP_SEARCH_OK },
	{ "body foo", IMAP_SEARCH_OK },
	{ "TEXT \"two words\"", IMAP_SEARCH_OK },
	{ "HEADER X-Mailer foo", IMAP_SEARCH_OK },
	{ "HEADER Received \"\"", IMAP_SEARCH_OK },
	{ "CHARSET UTF-8 BODY \"caf\xc3\xa9\"", IMAP_SEARCH_OK },
	{ "CHARSET us-ascii TEXT x", IMAP_SEARCH_OK },
	{ "CHARSET \"utf-8\" TEXT x", IMAP_SEARCH_OK },
	{ "CHARSET ISO-8859-1 TEXT x", IMAP_SEARCH_BADCHARSET },
	{ "RETURN (MIN MAX) CHARSET KOI8-R TEXT x", IMAP_SEARCH_BADCHARSET },
	{ "RETURN () ALL", IMAP_SEARCH_OK },
	{ "RETURN (COUNT ALL) UID 1:* NOT DELETED", IMAP_SEARCH_OK },
	{ "RETURN (SAVE) ALL", IMAP_SEARCH_OK },
	{ "RETURN (MIN SAVE MAX) $", IMAP_SEARCH_OK },
	{ "OR $ 1,3000:3021 UID $ NOT $", IMAP_SEARCH_OK },
	{ "1,$", IMAP_SEARCH_BAD },
	{ "UID 1,$", IMAP_SEARCH_BAD },
	{ "$:3", IMAP_SEARCH_BAD },
	{ "RETURN (SAVE FOO) ALL", IMAP_SEARCH_BAD },
	{ "RETURN ALL", IMAP_SEARCH_BAD },
	{ "OR (BODY a TEXT b) NOT (HEADER x y SEEN)", IMAP_SEARCH_OK },
	{ "MODSEQ 5", IMAP_SEARCH_OK },
	{ "MODSEQ \"/flags/\\\\Seen\" all 5", IMAP_SEARCH_OK },
	{ "MODSEQ x", IMAP_SEARCH_BAD },
	{ "SENTSINCE 1-Feb-1994 BEFORE \"2-Mar-2020\"", IMAP_SEARCH_OK },
	{ "SINCE 1-Feb-94", IMAP_SEARCH_BAD },
	{ "SINCE 32-Feb-1994", IMAP_SEARCH_BAD },
	{ "SINCE 31-Feb-2020", IMAP_SEARCH_BAD }, /* not 2-Mar-2020 */
	{ "BEFORE 29-Feb-2021", IMAP_SEARCH_BAD },
	{ "ON 31-Apr-2020", IMAP_SEARCH_BAD },
	{ "SENTON 29-Feb-2020 SINCE 31-Dec-2020", IMAP_SEARCH_OK },
	{ "SINCE 31-Dec-1969 BEFORE 1-Jan-1899 ON 1-Jan-0001", IMAP_SEARCH_OK }, /* before 1970 */
	{ "SINCE 1-Jan-0000", IMAP_SEARCH_BAD },
	{ "SINCE 1-Jan-194", IMAP_SEARCH_BAD },
	{ "KEYWORD $Forwarded UNKEYWORD foo", IMAP_SEARCH_OK },
	{ "KEYWORD \"x\"", IMAP_SEARCH_BAD },
	{ "", IMAP_SEARCH_BAD },
	{ "()", IMAP_SEARCH_BAD },
	{ "BODY", IMAP_SEARCH_BAD },
	{ "HEADER Subject", IMAP_SEARCH_BAD },
	{ "HEADER \"Bad:Name\" x", IMAP_SEARCH_BAD },
	{ "HEADER \"\" x", IMAP_SEARCH_BAD },
	{ "OR ALL", IMAP_SEARCH_BAD },
	{ "NOT", IMAP_SEARCH_BAD },
	{ "FOO", IMAP_SEARCH_BAD },
	{ "LARGER -1", IMAP_SEARCH_BAD },
	{ "LARGER 4294967296 SMALLER 9223372036854775807", IMAP_SEARCH_OK }, /* number64 */
	{ "LARGER 9223372036854775808", IMAP_SEARCH_BAD },
	{ "UID (1)", IMAP_SEARCH_BAD },
	{ "1:3,5 UID 2:*", IMAP_SEARCH_OK },
	{ "1:x", IMAP_SEARCH_BAD },
	{ "NEW OLD RECENT ANSWERED UNANSWERED DRAFT UNDRAFT FLAGGED UNFLAGGED", IMAP_SEARCH_OK },
	{ "OLDER 3600 YOUNGER 4294967295", IMAP_SEARCH_OK }, /* WITHIN: nz-number */
	{ "OLDER 0", IMAP_SEARCH_BAD },
	{ "YOUNGER 4294967296", IMAP_SEARCH_BAD },
	{ "YOUNGER -5", IMAP_SEARCH_BAD },
	{ "OLDER \"60\"", IMAP_SEARCH_BAD },
	{ "OLDER", IMAP_SEARCH_BAD },
};

static void check_parse(const struct pcase *c)
{
	struct prog *p = calloc(1, sizeof(*p));
	int r = compile(p, c->text);
	cr_assert_eq(r, c->want, "%s: %d", c->text, r);
	if (r == IMAP_SEARCH_BAD)
		cr_assert(p->s.err != NULL);
	free(p);
}

TABLE_TEST(imap_search, parse, parse_cases, check_parse)

Test(imap_search, limits)
{
	struct imap_search *s = calloc(1, sizeof(*s));
	static struct imap_search_tok t[2000];
	for (size_t i = 0; i < 2000; i++)
		t[i] = (struct imap_search_tok){ IMAP_STOK_ATOM, SPAN_LIT("SEEN") };
	cr_assert_eq(imap_search_parse(s, t, IMAP_SEARCH_KEYS_MAX - 1), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_parse(s, t, IMAP_SEARCH_KEYS_MAX), IMAP_SEARCH_BAD);
	/* nesting deeper than IMAP_LIST_DEPTH_MAX */
	for (size_t i = 0; i < 100; i++)
		t[i] = (struct imap_search_tok){ IMAP_STOK_ATOM, SPAN_LIT("NOT") };
	t[100] = (struct imap_search_tok){ IMAP_STOK_ATOM, SPAN_LIT("ALL") };
	cr_assert_eq(imap_search_parse(s, t, 101), IMAP_SEARCH_BAD);
	cr_assert_eq(imap_search_parse(s, t + 100 - IMAP_LIST_DEPTH_MAX, IMAP_LIST_DEPTH_MAX + 1),
		     IMAP_SEARCH_OK);
	/* an unbalanced list */
	t[0] = (struct imap_search_tok){ IMAP_STOK_LBEGIN, SPAN_LIT("(") };
	cr_assert_eq(imap_search_parse(s, t, 1), IMAP_SEARCH_BAD);
	t[2] = (struct imap_search_tok){ IMAP_STOK_LEND, SPAN_LIT(")") };
	cr_assert_eq(imap_search_parse(s, t + 2, 1), IMAP_SEARCH_BAD);
	free(s);
}

/* ---- evaluation and scanning ---- */

static const char msg_plain[] =
	"From: Alice <alice@example.com>\r\n"
	"To: bob@example.com\r\n"
	"Subject: Hello World\r\n"
	"X-Mailer: FooMail 1.0\r\n"
	"Received: from x by y;\r\n"
	"\tfolded value\r\n"
	"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
	"\r\n"
	"Body text here, with MiXeD case.\r\n"
	"Second line.\r\n";

static const char msg_mime[] =
	"From: a@b\r\n"
	"Subject: parts\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"BB\"\r\n"
	"\r\n"
	"preamble words\r\n"
	"--BB\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"U2VjcmV0IGRlY29kZWQg\r\n"
	"d29yZHMgaW4gYmFzZTY0\r\n"
	"--BB\r\n"
	"Content-Type: text/html\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"<p>caf=C3=A9 soft=\r\n"
	"break =3D equal</p>\r\n"
	"--BB\r\n"
	"Content-Type: application/octet-stream\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"aGlkZGVuIGJpbmFyeQ==\r\n"
	"--BB--\r\n"
	"epilogue\r\n";

struct scase {
	const char *msg;
	const char *prog;
	bool want;
	bool blob_only; /* the answer needs the blob (not true without it) */
};

static const struct scase scan_cases[] = {
	{ msg_plain, "BODY \"text here\"", true },
	{ msg_plain, "BODY \"TEXT HERE\"", true },
	{ msg_plain, "BODY mixed", true },
	{ msg_plain, "BODY \"case.  Second\"", false },
	{ msg_plain, "BODY \"Hello World\"", false },
	{ msg_plain, "TEXT \"hello world\"", true },
	{ msg_plain, "TEXT \"second LINE\"", true },
	{ msg_plain, "TEXT nowhere", false },
	{ msg_plain, "SUBJECT world", true },
	{ msg_plain, "SUBJECT body", false },
	{ msg_plain, "HEADER X-Mailer foomail", true },
	{ msg_plain, "HEADER x-mailer \"mail 1.0\"", true },
	{ msg_plain, "HEADER X-Mailer alice", false },
	{ msg_plain, "HEADER X-Mailer \"\"", true },
	{ msg_plain, "HEADER X-Missing \"\"", false },
	{ msg_plain, "HEADER Received \"y;\tfolded\"", true },
	{ msg_plain, "HEADER Received \"folded value\"", true },
	{ msg_plain, "HEADER Received \"value Date\"", false },
	{ msg_plain, "HEADER X-Mail foo", false },
	{ msg_plain, "HEADER Mailer foo", false },
	{ msg_plain, "FROM ALICE@example", true },
	{ msg_plain, "NOT BODY foomail", true },
	{ msg_plain, "OR BODY nope HEADER x-mailer 1.0", true },
	{ msg_plain, "OR BODY nope HEADER x-mailer 2.0", false },
	{ msg_plain, "NOT (BODY second TEXT mixed)", false },
	{ msg_plain, "(BODY second NOT HEADER Received zzz)", true },
	{ msg_plain, "SENTON 1-Jul-2003 BODY second", true, true },
	{ msg_plain, "BODY \"\"", true },
	{ msg_mime, "BODY \"decoded words\"", true },
	{ msg_mime, "BODY \"words in base64\"", true },
	{ msg_mime, "BODY U2VjcmV0", false },
	{ msg_mime, "BODY \"caf\xc3\xa9 softbreak = equal\"", true },
	{ msg_mime, "BODY \"caf=C3\"", false },
	{ msg_mime, "BODY hidden", false },
	{ msg_mime, "BODY aGlkZGVu", false },
	{ msg_mime, "BODY preamble", true },
	{ msg_mime, "BODY epilogue", true },
	{ msg_mime, "BODY \"text/html\"", true },
	{ msg_mime, "TEXT \"mime-version\"", true },
	{ msg_mime, "BODY \"mime-version\"", false },
	{ msg_mime, "HEADER content-type mixed", true },
	{ msg_mime, "HEADER content-type html", false },
	{ msg_mime, "OR BODY hidden BODY secret", true },
};

static void msg_of(const char *text, struct imap_search_msg *m, const struct mime_blob *mb)
{
	memset(m, 0, sizeof(*m));
	m->seq = m->uid = m->star_seq = m->star_uid = 1;
	m->size = strlen(text);
	m->internal_date = 1057049557; /* 1-Jul-2003 */
	m->mb = mb;
}

/* Scans text with reads of at most step bytes; returns the answer. */
static int scan(const struct imap_search *s, const char *text, const struct imap_search_msg *m,
		size_t step)
{
	struct imap_search_scan *sc = malloc(sizeof(*sc));
	int r = imap_search_eval(s, m, NULL);
	if (r != IMAP_SEARCH_MAYBE) {
		free(sc);
		return r;
	}
	imap_search_scan_begin(sc, s, m);
	uint64_t off, len;
	int guard = 0;
	while (imap_search_scan_next(sc, &off, &len)) {
		cr_assert(off < m->size && len > 0 && off + len <= m->size);
		size_t n = len < step ? (size_t)len : step;
		imap_search_scan_feed(sc, span_make(text + off, n));
		cr_assert(++guard < 100000);
	}
	r = imap_search_scan_result(sc, m);
	free(sc);
	return r;
}

static void check_scan(const struct scase *c)
{
	struct prog *p = calloc(1, sizeof(*p));
	cr_assert_eq(compile(p, c->prog), IMAP_SEARCH_OK, "%s", c->prog);
	struct mime_scanner *ms = malloc(sizeof(*ms));
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blen;
	mime_scan_init(ms);
	mime_scan_feed(ms, span_cstr(c->msg));
	cr_assert_eq(mime_scan_finish(ms, blob, MIME_BLOB_MAX, &blen), 0);
	struct mime_blob mb;
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
	size_t len = strlen(c->msg);
	for (int with_blob = 1; with_blob >= 0; with_blob--) {
		struct imap_search_msg m;
		msg_of(c->msg, &m, with_blob ? &mb : NULL);
		if (!with_blob && (c->blob_only || c->msg == msg_mime))
			continue; /* decoding needs the structure */
		for (size_t step = 1; step <= len; step++) {
			int r = scan(&p->s, c->msg, &m, step);
			cr_assert_eq(r, c->want ? IMAP_SEARCH_YES : IMAP_SEARCH_NO,
				     "%s: step %zu blob %d: %d", c->prog, step, with_blob, r);
		}
	}
	free(ms);
	free(blob);
	free(p);
}

TABLE_TEST(imap_search, scan, scan_cases, check_scan)

/* A needle at every offset of a large body is found with reads of 64 KiB
 * and of odd sizes: matches straddle every read boundary. */
Test(imap_search, straddle)
{
	size_t hdr = 20, size = 70000;
	char *text = malloc(size + 1);
	memcpy(text, "Subject: straddle\r\n\r\n", 21);
	hdr = 21;
	struct prog *p = calloc(1, sizeof(*p));
	cr_assert_eq(compile(p, "BODY NeedleXYZ"), IMAP_SEARCH_OK);
	struct mime_scanner *ms = malloc(sizeof(*ms));
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	for (size_t at = 65536 - 12; at < 65536 + 2; at++) {
		memset(text + hdr, 'a', size - hdr);
		text[size] = '\0';
		memcpy(text + at, "needlexyz", 9);
		size_t blen;
		mime_scan_init(ms);
		mime_scan_feed(ms, span_make(text, size));
		cr_assert_eq(mime_scan_finish(ms, blob, MIME_BLOB_MAX, &blen), 0);
		struct mime_blob mb;
		cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
		struct imap_search_msg m;
		msg_of(text, &m, &mb);
		size_t steps[] = { 65536, 4096, 1000, 7 };
		for (size_t k = 0; k < 4; k++)
			cr_assert_eq(scan(&p->s, text, &m, steps[k]), IMAP_SEARCH_YES, "at %zu step %zu",
				     at, steps[k]);
		text[at + 8] = 'q';
		cr_assert_eq(scan(&p->s, text, &m, 65536), IMAP_SEARCH_NO);
	}
	free(ms);
	free(blob);
	free(p);
	free(text);
}

/* WITHIN (RFC 5032): OLDER n is an internal date more than n seconds
 * before the search's clock, YOUNGER n the rest; the sent date does not
 * count. */
Test(imap_search, within)
{
	struct prog *p = calloc(1, sizeof(*p));
	struct imap_search_msg m;
	msg_of(msg_plain, &m, NULL); /* Date: 1 Jul 2003 */
	static const struct {
		int64_t age; /* now - internal date, seconds */
		const char *prog;
		int want;
	} cases[] = {
		{ 3601, "OLDER 3600", IMAP_SEARCH_YES },  { 3600, "OLDER 3600", IMAP_SEARCH_NO },
		{ 3600, "YOUNGER 3600", IMAP_SEARCH_YES }, { 3601, "YOUNGER 3600", IMAP_SEARCH_NO },
		{ 0, "YOUNGER 1", IMAP_SEARCH_YES },       { -60, "OLDER 1", IMAP_SEARCH_NO },
		{ 90000, "NOT YOUNGER 86400", IMAP_SEARCH_YES },
		{ 90000, "OLDER 3600 YOUNGER 100000", IMAP_SEARCH_YES },
		{ 90000, "OR OLDER 100000 YOUNGER 3600", IMAP_SEARCH_NO },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(compile(p, cases[i].prog), IMAP_SEARCH_OK, "%s", cases[i].prog);
		cr_assert_geq(p->s.now, 1700000000, "the parse sets the clock");
		m.internal_date = p->s.now - cases[i].age;
		cr_assert_eq(imap_search_eval(&p->s, &m, NULL), cases[i].want, "%s at age %lld",
			     cases[i].prog, (long long)cases[i].age);
	}
	free(p);
}

/* Cheap keys decide without reading; byte keys make it MAYBE. */
Test(imap_search, three_valued)
{
	struct prog *p = calloc(1, sizeof(*p));
	struct imap_search_msg m;
	msg_of(msg_plain, &m, NULL);
	m.flags = 1; /* \Seen */
	cr_assert_eq(compile(p, "UNSEEN BODY x"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_NO);
	cr_assert_eq(compile(p, "OR SEEN BODY x"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_YES);
	cr_assert_eq(compile(p, "SEEN NOT BODY x"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_MAYBE);
	cr_assert_eq(compile(p, "2:3 UID 1 LARGER 10"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_NO);
	cr_assert_eq(compile(p, "1 UID * SMALLER 100000 NOT NEW OLD"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_YES);
	free(p);
}

/* A needle made to defeat naive search costs linear time (KMP). */
Test(imap_search, adversarial_needle, .timeout = 20)
{
	size_t size = 4u << 20;
	char *text = malloc(size + 1);
	memcpy(text, "\r\n", 2);
	memset(text + 2, 'a', size - 2);
	text[size] = '\0';
	char prog[9000];
	int o = snprintf(prog, sizeof(prog), "BODY \"");
	memset(prog + o, 'a', 8000);
	snprintf(prog + o + 8000, sizeof(prog) - (size_t)o - 8000, "b\"");
	struct prog *p = calloc(1, sizeof(*p));
	uint8_t *store = malloc(9000);
	long n = tokenize(prog, p->t, 256, store);
	cr_assert_eq(imap_search_parse(&p->s, p->t, (size_t)n), IMAP_SEARCH_OK);
	uint32_t *fail = malloc(p->s.fail_len * sizeof(uint32_t));
	imap_search_prepare(&p->s, fail);
	struct imap_search_msg m;
	msg_of(text, &m, NULL);
	cr_assert_eq(scan(&p->s, text, &m, 65536), IMAP_SEARCH_NO);
	free(fail);
	free(store);
	free(p);
	free(text);
}

/* "$" (RFC 5182) is whatever the caller says the message's saved flag is;
 * SAVE is a RETURN option of its own (alone, no ESEARCH data). */
Test(imap_search, saved_result)
{
	struct prog *p = calloc(1, sizeof(*p));
	struct imap_search_msg m;
	msg_of("x", &m, NULL);
	cr_assert_eq(compile(p, "RETURN (SAVE) ALL"), IMAP_SEARCH_OK);
	cr_assert(p->s.esearch);
	cr_assert_eq(p->s.ret, IMAP_SEARCH_RET_SAVE);
	cr_assert(!p->s.uses_saved);
	cr_assert_eq(compile(p, "RETURN (SAVE MIN) ALL"), IMAP_SEARCH_OK);
	cr_assert_eq(p->s.ret, IMAP_SEARCH_RET_SAVE | IMAP_SEARCH_RET_MIN);
	const char *progs[] = { "$", "UID $", "NOT NOT $", "OR $ DELETED" };
	for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++) {
		cr_assert_eq(compile(p, progs[i]), IMAP_SEARCH_OK, "%s", progs[i]);
		cr_assert(p->s.uses_saved, "%s", progs[i]);
		m.saved = false;
		cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_NO, "%s", progs[i]);
		m.saved = true;
		cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_YES, "%s", progs[i]);
	}
	cr_assert_eq(compile(p, "NOT $"), IMAP_SEARCH_OK);
	cr_assert_eq(imap_search_eval(&p->s, &m, NULL), IMAP_SEARCH_NO);
	free(p);
}
