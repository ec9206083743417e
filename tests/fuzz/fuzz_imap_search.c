/* fuzz_imap_search.c - libFuzzer target for proto/imap_search.c (the
 * SEARCH program parser, evaluator and byte scanner).
 *
 * The input's first line is tokenized with proto/imap_parse.c (literal
 * data included) and parsed as a SEARCH program; the rest is a message,
 * whose structure blob the MIME scanner computes. When the program parses,
 * the message is scanned with reads of the whole size and of a size taken
 * from the input's first two bytes, with and without the blob: every read
 * the scanner asks for must lie inside the message, the scan must end,
 * both read sizes must give the same answer, and an answer the cheap keys
 * already gave must not change. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/imap_search.h"

#define TOKS_MAX 4096

static struct mime_scanner *ms;
static uint8_t *blob;

static int scan(const struct imap_search *s, const struct imap_search_msg *m, const uint8_t *msg,
		size_t step)
{
	static struct imap_search_scan sc;
	int pre = imap_search_eval(s, m, NULL);
	imap_search_scan_begin(&sc, s, m);
	uint64_t off, len;
	size_t reads = 0;
	while (imap_search_scan_next(&sc, &off, &len)) {
		if (len == 0 || off >= m->size || len > m->size - off)
			abort();
		size_t n = len < step ? (size_t)len : step;
		imap_search_scan_feed(&sc, span_make(msg + off, n));
		if (++reads > m->size + 2)
			abort(); /* no progress */
	}
	int r = imap_search_scan_result(&sc, m);
	if (r == IMAP_SEARCH_MAYBE || (pre != IMAP_SEARCH_MAYBE && pre != r))
		abort();
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!ms) {
		ms = malloc(sizeof(*ms));
		blob = malloc(MIME_BLOB_MAX);
	}
	const uint8_t *nl = memchr(data, '\n', size);
	size_t plen = nl ? (size_t)(nl - data) + 1 : size;
	const uint8_t *msg = data + plen;
	size_t msize = size - plen;

	/* The program: the tokenizer's tokens, literal data gathered. */
	struct imap_search_tok *t = malloc(TOKS_MAX * sizeof(*t));
	uint8_t *store = malloc(plen + 1);
	size_t nt = 0, so = 0, pos = 0;
	struct imap_parser p;
	imap_parser_init(&p, IMAP_LINE_MAX);
	bool ok = false;
	while (pos < plen && nt < TOKS_MAX) {
		struct imap_token tk;
		size_t used;
		if (imap_parse_next(&p, span_make(data + pos, plen - pos), &used, &tk) != IMAP_PARSE_OK)
			break;
		pos += used;
		if (tk.type == IMAP_TOK_EOL) {
			ok = true;
			break;
		}
		struct imap_search_tok *x = &t[nt];
		switch (tk.type) {
		case IMAP_TOK_ATOM:
			x->kind = IMAP_STOK_ATOM;
			x->text = tk.text;
			break;
		case IMAP_TOK_NIL:
			x->kind = IMAP_STOK_NIL;
			x->text = SPAN_LIT("NIL");
			break;
		case IMAP_TOK_QUOTED:
			x->kind = IMAP_STOK_STRING;
			x->text = span_make(store + so, imap_unquote(tk.text, store + so));
			so += x->text.len;
			break;
		case IMAP_TOK_LIST_BEGIN:
			x->kind = IMAP_STOK_LBEGIN;
			x->text = tk.text;
			break;
		case IMAP_TOK_LIST_END:
			x->kind = IMAP_STOK_LEND;
			x->text = tk.text;
			break;
		case IMAP_TOK_LITERAL:
			x->kind = IMAP_STOK_STRING;
			x->text = span_make(store + so, 0);
			break;
		case IMAP_TOK_LITERAL_DATA:
			/* appended to the literal's string (store is big enough:
			 * data never exceeds the line) */
			if (nt == 0 || t[nt - 1].kind != IMAP_STOK_STRING)
				abort();
			memcpy(store + so, tk.text.p, tk.text.len);
			so += tk.text.len;
			t[nt - 1].text.len += tk.text.len;
			continue;
		default:
			continue;
		}
		nt++;
	}
	struct imap_search *s = malloc(sizeof(*s));
	if (ok && imap_search_parse(s, t, nt) == IMAP_SEARCH_OK) {
		uint32_t *fail = malloc((s->fail_len + 1) * sizeof(uint32_t));
		imap_search_prepare(s, fail);
		size_t blen;
		mime_scan_init(ms);
		mime_scan_feed(ms, span_make(msg, msize));
		struct mime_blob mb;
		bool mb_ok = mime_scan_finish(ms, blob, MIME_BLOB_MAX, &blen) == 0 &&
			     mime_blob_parse(span_make(blob, blen), &mb) == 0;
		struct imap_search_msg m = {
			.seq = 2, .uid = 7, .star_seq = 3, .star_uid = 9, .flags = data[0] & 31,
			.keywords = 1, .modseq = 5, .size = msize, .internal_date = 1057049557,
			.saved = data[0] & 32, /* "$" */
		};
		size_t step = size >= 2 ? ((size_t)data[0] << 8 | data[1]) % 4096 + 1 : 1;
		for (int with = 0; with < 2; with++) {
			m.mb = with && mb_ok ? &mb : NULL;
			int a = scan(s, &m, msg, msize ? msize : 1);
			int b = scan(s, &m, msg, step);
			if (a != b)
				abort();
		}
		free(fail);
	}
	free(s);
	free(store);
	free(t);
	return 0;
}
