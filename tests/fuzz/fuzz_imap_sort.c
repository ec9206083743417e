/* fuzz_imap_sort.c - libFuzzer target for proto/imap_sort.c and
 * proto/imap_thread.c.
 *
 * The input is read as a Subject value (base subject into buffers of
 * every size from 0 to 64 bytes and the full one: never longer than the
 * buffer, and a shorter buffer gives no more bytes than a longer one), as
 * a Date value (a parsed date lies in years 1900-9999 give or take a
 * day), as SORT criteria (words split at spaces), and as a whole message
 * through the MIME scanner, whose blob gives every key. Read as a small
 * mailbox (IDs, references, subjects and dates from a few values, so that
 * duplicates, loops and merges are common), its THREAD=REFERENCES text
 * must have balanced parentheses and name every message exactly once. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/imap_sort.h"
#include "proto/imap_thread.h"

static void check_threads(const uint8_t *data, size_t size)
{
	struct imap_thread_msg m[64];
	uint64_t refs[64 * 4];
	static const uint8_t subj[] = "ABCD";
	size_t n = 0, nr = 0, i = 0;
	while (i + 3 <= size && n < 64) {
		uint8_t a = data[i], b = data[i + 1], c = data[i + 2];
		i += 3;
		m[n] = (struct imap_thread_msg){
			.id = (a & 15) ? (uint64_t)(a & 15) : 0, /* 0: no Message-ID */
			.date = b >> 4, .num = (uint32_t)(n + 1), .order = (uint32_t)(n + 1),
			.ref_off = (uint32_t)nr, .subj_off = c & 3, .subj_len = (c >> 2) & 1,
			.refwd = (c >> 3) & 1,
		};
		for (unsigned k = 0; k < ((a >> 4) & 3) && i < size; k++)
			refs[nr++] = (data[i++] & 15) + 1;
		m[n].ref_n = (uint32_t)(nr - m[n].ref_off);
		n++;
	}
	if (!n)
		return;
	size_t len;
	char *t = imap_thread_references(m, n, refs, subj, &len);
	if (!t)
		abort();
	int depth = 0;
	unsigned seen[65] = { 0 };
	for (size_t k = 0; k < len; k++) {
		if (t[k] == '(') {
			depth++;
		} else if (t[k] == ')') {
			if (--depth < 0)
				abort();
		} else if (t[k] >= '1' && t[k] <= '9') {
			unsigned v = 0;
			while (k < len && t[k] >= '0' && t[k] <= '9')
				v = v * 10 + (unsigned)(t[k++] - '0');
			k--;
			if (v == 0 || v > n || seen[v]++)
				abort();
		} else if (t[k] != ' ') {
			abort();
		}
	}
	for (size_t v = 1; v <= n; v++)
		if (seen[v] != 1)
			abort();
	if (depth != 0)
		abort();
	free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct span in = span_make(data, size);
	uint8_t *full = malloc(IMAP_SORT_STRING_MAX);
	size_t nfull = imap_sort_base_subject(in, full, IMAP_SORT_STRING_MAX);
	if (nfull > IMAP_SORT_STRING_MAX)
		abort();
	for (size_t cap = 0; cap <= 64; cap++) {
		uint8_t *b = malloc(cap ? cap : 1);
		if (imap_sort_base_subject(in, b, cap) > cap ||
		    imap_sort_decode_words(in, b, cap) > cap)
			abort();
		free(b);
	}
	int64_t t;
	if (imap_sort_parse_date(in, &t) && (t < -2209075200LL - 86400 || t > 253402300800LL + 86400))
		abort();
	struct span words[64];
	size_t nw = 0, w0 = 0;
	for (size_t i = 0; i <= size && nw < 64; i++)
		if (i == size || data[i] == ' ') {
			if (i > w0)
				words[nw++] = span_make(data + w0, i - w0);
			w0 = i + 1;
		}
	struct imap_sort_crit crit[IMAP_SORT_CRIT_MAX];
	int nc = imap_sort_parse(words, nw, crit, IMAP_SORT_CRIT_MAX);
	if (nc > IMAP_SORT_CRIT_MAX || nc == 0)
		abort();
	for (int k = 0; k < nc; k++)
		if (crit[k].key > IMAP_SORT_DISPLAYTO)
			abort();
	struct mime_scanner *ms = malloc(sizeof(*ms));
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blen;
	struct mime_blob mb;
	mime_scan_init(ms);
	mime_scan_feed(ms, in);
	if (mime_scan_finish(ms, blob, MIME_BLOB_MAX, &blen) == 0 &&
	    mime_blob_parse(span_make(blob, blen), &mb) == 0)
		for (uint8_t key = 0; key <= IMAP_SORT_DISPLAYTO; key++) {
			if (imap_sort_key_is_string(key)) {
				if (imap_sort_key_string(&mb, key, full) > IMAP_SORT_STRING_MAX)
					abort();
			} else {
				(void)imap_sort_key_number(&mb, key, size, 0);
			}
		}
	free(ms);
	free(blob);
	free(full);
	check_threads(data, size);
	return 0;
}
