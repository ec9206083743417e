/* Record framing: round trips, truncation at every byte, every bit flip. */
#include <criterion/criterion.h>
#include <string.h>

#include "store/record.h"

static size_t make_append(uint8_t *buf, size_t cap)
{
	struct rec_append a = {
		.uid = 7, .seg = 3, .off = 4096, .len = 1234, .date = 1700000000,
		.modseq = 99, .flags = 5, .data_crc = 0xdeadbeef, .keywords = 0x8001,
		.blob = SPAN_LIT("structure-blob"),
	};
	return record_put_append(buf, cap, &a);
}

Test(record, append_round_trip)
{
	uint8_t buf[256];
	struct record r;
	size_t used, len = make_append(buf, sizeof(buf));

	cr_assert_eq(len, record_size_append(14));
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect_eq(used, len);
	cr_expect_eq(r.type, REC_APPEND);
	cr_expect_eq(r.u.append.uid, 7);
	cr_expect_eq(r.u.append.seg, 3);
	cr_expect_eq(r.u.append.off, 4096);
	cr_expect_eq(r.u.append.len, 1234);
	cr_expect_eq(r.u.append.date, 1700000000);
	cr_expect_eq(r.u.append.modseq, 99);
	cr_expect_eq(r.u.append.flags, 5);
	cr_expect_eq(r.u.append.data_crc, 0xdeadbeef);
	cr_expect_eq(r.u.append.keywords, 0x8001);
	cr_expect(span_eq(r.u.append.blob, SPAN_LIT("structure-blob")));
	cr_expect_eq(make_append(buf, len - 1), 0, "too small a buffer must fail");
}

Test(record, other_types_round_trip)
{
	uint8_t buf[512];
	uint32_t uids[] = { 1, 5, 9 };
	struct record r;
	size_t used, len;
	struct rec_folder_hdr h = { .uidvalidity = 42, .folder_id = 3 };
	struct rec_reloc rl = { .uid = 9, .seg = 4, .off = 77 };
	struct rec_mbox m = { .id = 8, .uidvalidity = 100, .name = SPAN_LIT("Lists/ietf") };

	len = record_put_folder_hdr(buf, sizeof(buf), &h);
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect_eq(r.u.hdr.uidvalidity, 42);
	cr_expect_eq(r.u.hdr.folder_id, 3);

	len = record_put_flags(buf, sizeof(buf), 12, REC_FLAGS_ADD, 3, 0x10, uids, 3);
	cr_assert_eq(len, record_size_uids(3));
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect_eq(r.u.flags.modseq, 12);
	cr_expect_eq(r.u.flags.op, REC_FLAGS_ADD);
	cr_expect_eq(r.u.flags.n, 3);
	cr_expect_eq(record_uid_at(r.u.flags.uids, 2), 9);

	len = record_put_expunge(buf, sizeof(buf), 13, uids, 2);
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect_eq(r.u.expunge.n, 2);
	cr_expect_eq(record_uid_at(r.u.expunge.uids, 1), 5);

	len = record_put_keyword(buf, sizeof(buf), 63, SPAN_LIT("$Junk"));
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect(span_eq(r.u.keyword.name, SPAN_LIT("$Junk")));
	cr_expect_eq(record_put_keyword(buf, sizeof(buf), 64, SPAN_LIT("x")) != 0, 1);
	len = record_put_keyword(buf, sizeof(buf), 64, SPAN_LIT("x"));
	cr_expect_eq(record_next(span_make(buf, len), &r, &used), RECORD_BAD, "idx 64");

	len = record_put_reloc(buf, sizeof(buf), &rl);
	cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
	cr_expect_eq(r.u.reloc.off, 77);

	for (uint32_t t = REC_MBOX_CREATE; t <= REC_MBOX_SUBSCRIBE; t++) {
		len = record_put_mbox(buf, sizeof(buf), t, &m);
		cr_assert_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
		cr_expect_eq(r.type, t);
	}
	cr_expect(span_eq(r.u.mbox.name, SPAN_LIT("Lists/ietf")));
}

Test(record, end_and_zero_tail)
{
	uint8_t buf[64] = { 0 };
	struct record r;
	size_t used;

	cr_expect_eq(record_next(span_make(buf, 0), &r, &used), RECORD_END);
	cr_expect_eq(record_next(span_make(buf, sizeof(buf)), &r, &used), RECORD_END);
}

Test(record, truncated_at_every_byte_is_short)
{
	uint8_t buf[256];
	struct record r;
	size_t used, len = make_append(buf, sizeof(buf));

	for (size_t cut = 1; cut < len; cut++) {
		enum record_status st = record_next(span_make(buf, cut), &r, &used);
		cr_expect_eq(st, RECORD_SHORT, "cut at %zu gave %d", cut, st);
	}
}

Test(record, every_bit_flip_is_detected)
{
	uint8_t buf[256];
	struct record r;
	size_t used, len = make_append(buf, sizeof(buf));

	for (size_t bit = 0; bit < len * 8; bit++) {
		enum record_status st;
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		st = record_next(span_make(buf, len), &r, &used);
		/* a flip in the length may also make it look short or like an end */
		cr_expect_neq(st, RECORD_OK, "bit %zu not detected", bit);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	cr_expect_eq(record_next(span_make(buf, len), &r, &used), RECORD_OK);
}

Test(record, bad_lengths)
{
	uint8_t buf[32] = { 0 };
	struct record r;
	size_t used;
	uint32_t l = 8;

	memcpy(buf, &l, 4);
	cr_expect_eq(record_next(span_make(buf, sizeof(buf)), &r, &used), RECORD_BAD);
	l = RECORD_MAX_LEN + 1;
	memcpy(buf, &l, 4);
	cr_expect_eq(record_next(span_make(buf, sizeof(buf)), &r, &used), RECORD_BAD);
	/* an unknown type with a valid CRC is still bad */
	cr_expect_eq(record_seal(buf, 16, 99), 16);
	cr_expect_eq(record_next(span_make(buf, 16), &r, &used), RECORD_BAD);
}
