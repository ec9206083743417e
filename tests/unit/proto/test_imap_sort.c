/* test_imap_sort.c - SORT and THREAD keys (RFC 5256, RFC 5957): the
 * criteria, the base subject of RFC 5256 2.1 case by case, RFC 2047
 * words, the sent date with its obsolete forms, and the address keys of
 * real header fields through the MIME scanner's blob. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "proto/imap_sort.h"
#include "table_test.h"

struct subj_case {
	const char *raw, *want;
};

static const struct subj_case subj_cases[] = {
	{ "hello", "HELLO" },
	{ "Re: hello", "HELLO" },
	{ "RE: Re: re: hello", "HELLO" },
	{ "re:hello", "HELLO" },
	{ "Fw: hi", "HI" },
	{ "fwd:hi", "HI" },
	{ "FWD : hi", "HI" },
	{ "Re[2]: hello", "HELLO" },
	{ "Re [list]: hello", "HELLO" },
	{ "[list] Re: hello", "HELLO" },
	{ "[list] hello", "HELLO" },
	{ "[list]", "[LIST]" },              /* the blob stays: nothing after it */
	{ "[a] [b] hello", "HELLO" },
	{ "Re: Fwd: Re: [x] [y] hello", "HELLO" },
	{ "hello (fwd)", "HELLO" },
	{ "hello (fwd) (FWD)  ", "HELLO" },
	{ "[fwd: Re: hello]", "HELLO" },
	{ "[Fwd: [fwd: hi]] (fwd)", "HI" },
	{ "Reply: hi", "REPLY: HI" },         /* "re" must be followed by ":" */
	{ "Fwded: hi", "FWDED: HI" },
	{ "  hello \t  world  ", "HELLO WORLD" },
	{ "Re:", "" },
	{ "", "" },
	{ "[unclosed hello", "[UNCLOSED HELLO" },
	{ "=?UTF-8?Q?Re=3A_caf=C3=A9?=", "CAF\xc3\x89" },
	{ "=?utf-8?b?w6l0w6k=?=", "\xc3\x89T\xc3\x89" },
	{ "=?ISO-8859-1?B?UulzdW3p?=", "R\xc3\x89SUM\xc3\x89" },
	{ "=?iso-8859-1?q?=E9t=E9?= suite", "\xc3\x89T\xc3\x89 SUITE" },
	{ "=?utf-8?q?a?= =?utf-8?q?b?=", "AB" },       /* no space between two words */
	{ "=?utf-8?q?a?= b =?utf-8?q?c?=", "A B C" },
	{ "=?utf-8*en?q?Re:_x?=", "X" },               /* RFC 2231 language */
	{ "=?koi8-r?B?8NLJ18XU?=", "=?KOI8-R?B?8NLJ18XU?=" }, /* not decoded here */
	{ "=?utf-8?x?abc?=", "=?UTF-8?X?ABC?=" },
	{ "=?utf-8?q?broken", "=?UTF-8?Q?BROKEN" },
	{ "\xc3\xa0 la carte", "\xc3\x80 LA CARTE" },   /* Latin-1 letters fold */
	{ "\xc3\xb7", "\xc3\xb7" },                     /* the division sign does not */
};

static void check_subj(const struct subj_case *c)
{
	uint8_t out[IMAP_SORT_STRING_MAX];
	size_t n = imap_sort_base_subject(span_cstr(c->raw), out, sizeof(out));
	cr_assert_eq(n, strlen(c->want), "%s: %.*s", c->raw, (int)n, out);
	cr_assert_eq(memcmp(out, c->want, n), 0, "%s: %.*s", c->raw, (int)n, out);
}

TABLE_TEST(sort, base_subject, subj_cases, check_subj)

Test(sort, base_subject_is_cut_at_cap)
{
	uint8_t out[8];
	/* decoded up to the cap, then folded and stripped: "RE: A LO" -> "A LO" */
	cr_assert_eq(imap_sort_base_subject(SPAN_LIT("Re: a long subject"), out, sizeof(out)), 4);
	cr_assert_eq(memcmp(out, "A LO", 4), 0);
}

struct date_case {
	const char *v;
	bool ok;
	int64_t t;
};

static const struct date_case date_cases[] = {
	{ "Tue, 1 Jul 2003 10:52:37 +0200", true, 1057049557 },
	{ "1 Jul 2003 10:52:37 +0200", true, 1057049557 },
	{ "Tue, 1 Jul 2003 10 : 52 : 37 +0200 (CEST)", true, 1057049557 },
	{ "Tue,  01 jul 2003 08:52:37 GMT", true, 1057049557 },
	{ "1 Jul 03 10:52 GMT", true, 1057056720 },
	{ "Wed, 2 Jan 1980 00:00:00 -0500 (EST)", true, 315637200 },
	{ "Sat, 31 Dec 99 23:59:59 EST", true, 946702799 },
	{ "(comment) Tue, 1 Jul 2003 08:52:37", true, 1057049557 }, /* no zone: UTC */
	{ "Tue, 1 Jul 2003 08:52:37 Z", true, 1057049557 },          /* military: -0000 */
	{ "garbage", false, 0 },
	{ "", false, 0 },
	{ "32 Jan 2003 10:00 +0000", false, 0 },
	{ "1 Foo 2003 10:00 +0000", false, 0 },
	{ "1 Jan 2003", false, 0 },
	{ "1 Jan 2003 24:00 +0000", false, 0 },
	{ "1 Jan 2003 10:00 +0099", false, 0 },
	{ "1 Jan 0001 10:00 +0000", false, 0 },
};

static void check_date(const struct date_case *c)
{
	int64_t t = -1;
	bool ok = imap_sort_parse_date(span_cstr(c->v), &t);
	cr_assert_eq(ok, c->ok, "%s", c->v);
	if (ok)
		cr_assert_eq(t, c->t, "%s: %lld", c->v, (long long)t);
}

TABLE_TEST(sort, sent_date, date_cases, check_date)

Test(sort, criteria)
{
	struct imap_sort_crit c[IMAP_SORT_CRIT_MAX];
	struct span a[] = { SPAN_LIT("reverse"), SPAN_LIT("DATE"), SPAN_LIT("subject"),
			    SPAN_LIT("REVERSE"), SPAN_LIT("DisplayFrom") };
	cr_assert_eq(imap_sort_parse(a, 5, c, IMAP_SORT_CRIT_MAX), 3);
	cr_assert(c[0].key == IMAP_SORT_DATE && c[0].reverse);
	cr_assert(c[1].key == IMAP_SORT_SUBJECT && !c[1].reverse);
	cr_assert(c[2].key == IMAP_SORT_DISPLAYFROM && c[2].reverse);
	struct span bad1[] = { SPAN_LIT("DATE"), SPAN_LIT("REVERSE") };
	cr_assert_eq(imap_sort_parse(bad1, 2, c, IMAP_SORT_CRIT_MAX), -1);
	struct span bad2[] = { SPAN_LIT("REVERSE"), SPAN_LIT("REVERSE"), SPAN_LIT("SIZE") };
	cr_assert_eq(imap_sort_parse(bad2, 3, c, IMAP_SORT_CRIT_MAX), -1);
	struct span bad3[] = { SPAN_LIT("NAME") };
	cr_assert_eq(imap_sort_parse(bad3, 1, c, IMAP_SORT_CRIT_MAX), -1);
	cr_assert_eq(imap_sort_parse(a, 0, c, IMAP_SORT_CRIT_MAX), -1);
	cr_assert_eq(imap_sort_parse(a, 5, c, 2), -1);
	cr_assert(imap_sort_key_is_string(IMAP_SORT_CC));
	cr_assert(!imap_sort_key_is_string(IMAP_SORT_ARRIVAL));
	cr_assert(!imap_sort_key_is_string(IMAP_SORT_SIZE));
}

/* The keys of one message, through the scanner's blob. */
struct key_case {
	const char *header;
	uint8_t key;
	const char *want;
};

static const struct key_case key_cases[] = {
	{ "From: \"Doe, John\" <John.Doe@Example.com>\r\n", IMAP_SORT_FROM, "JOHN.DOE" },
	{ "From: \"Doe, John\" <John.Doe@Example.com>\r\n", IMAP_SORT_DISPLAYFROM, "DOE, JOHN" },
	{ "From: jd@example.com (John Doe)\r\n", IMAP_SORT_DISPLAYFROM, "JOHN DOE" },
	{ "From: <jd@example.com>\r\n", IMAP_SORT_DISPLAYFROM, "JD@EXAMPLE.COM" },
	{ "From: =?utf-8?q?=C3=A9mile?= <e@x.org>\r\n", IMAP_SORT_DISPLAYFROM, "\xc3\x89MILE" },
	{ "To: team: a@x.org, b@x.org;, c@x.org\r\n", IMAP_SORT_TO, "A" },
	{ "To: undisclosed-recipients:;\r\n", IMAP_SORT_TO, "" },
	{ "To: Zed <z@x.org>\r\n", IMAP_SORT_DISPLAYTO, "ZED" },
	{ "Cc: \"q\\\"uote\" <cc@x.org>, d@x.org\r\n", IMAP_SORT_CC, "CC" },
	{ "Subject: Re: [list] Hello\r\n", IMAP_SORT_SUBJECT, "HELLO" },
	{ "X-Other: 1\r\n", IMAP_SORT_FROM, "" },
	{ "X-Other: 1\r\n", IMAP_SORT_SUBJECT, "" },
};

static void check_key(const struct key_case *c)
{
	char msg[1024];
	snprintf(msg, sizeof(msg), "%sDate: 1 Jul 2003 10:52:37 +0200\r\n\r\nbody\r\n", c->header);
	struct mime_scanner *ms = malloc(sizeof(*ms));
	uint8_t *blob = malloc(MIME_BLOB_MAX);
	size_t blen;
	mime_scan_init(ms);
	mime_scan_feed(ms, span_cstr(msg));
	cr_assert_eq(mime_scan_finish(ms, blob, MIME_BLOB_MAX, &blen), 0);
	struct mime_blob mb;
	cr_assert_eq(mime_blob_parse(span_make(blob, blen), &mb), 0);
	uint8_t out[IMAP_SORT_STRING_MAX];
	size_t n = imap_sort_key_string(&mb, c->key, out);
	cr_assert_eq(n, strlen(c->want), "%s: %.*s", c->header, (int)n, out);
	cr_assert_eq(memcmp(out, c->want, n), 0, "%s: %.*s", c->header, (int)n, out);
	cr_assert_eq(imap_sort_key_number(&mb, IMAP_SORT_DATE, 7, 99),
		     (uint64_t)1057049557 ^ (1ull << 63));
	free(ms);
	free(blob);
}

TABLE_TEST(sort, address_and_subject_keys, key_cases, check_key)

Test(sort, number_keys_order_like_time)
{
	cr_assert_eq(imap_sort_key_number(NULL, IMAP_SORT_SIZE, 1234, 5), 1234);
	/* no blob: the internal date stands for the sent date */
	cr_assert_eq(imap_sort_key_number(NULL, IMAP_SORT_DATE, 1, 5),
		     imap_sort_key_number(NULL, IMAP_SORT_ARRIVAL, 1, 5));
	/* before the epoch sorts before after it */
	cr_assert_lt(imap_sort_key_number(NULL, IMAP_SORT_ARRIVAL, 1, -10),
		     imap_sort_key_number(NULL, IMAP_SORT_ARRIVAL, 1, 10));
	cr_assert_lt(imap_sort_key_number(NULL, IMAP_SORT_ARRIVAL, 1, -10),
		     imap_sort_key_number(NULL, IMAP_SORT_ARRIVAL, 1, -9));
	cr_assert_eq(imap_sort_key_string(NULL, IMAP_SORT_SUBJECT, (uint8_t[8]){ 0 }), 0);
}
