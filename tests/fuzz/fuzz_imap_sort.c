/* fuzz_imap_sort.c - libFuzzer target for proto/imap_sort.c.
 *
 * The input is read as a Subject value (base subject into buffers of
 * every size from 0 to 64 bytes and the full one: never longer than the
 * buffer, and a shorter buffer gives no more bytes than a longer one), as
 * a Date value (a parsed date lies in years 1900-9999 give or take a
 * day), as SORT criteria (words split at spaces), and as a whole message
 * through the MIME scanner, whose blob gives every key. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/imap_sort.h"

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
	return 0;
}
