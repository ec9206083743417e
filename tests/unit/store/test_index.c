/* The in-memory index: replay, flags/MODSEQ, expunge, checkpoint + tail,
 * and a torn tail at every byte offset of the last record. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store/index.h"
#include "store/store.h"

struct logbuf {
	uint8_t *p;
	size_t len, cap;
	size_t last; /* offset of the last record */
};

static void lb_room(struct logbuf *lb, size_t n)
{
	if (lb->len + n > lb->cap) {
		lb->cap = (lb->len + n) * 2;
		lb->p = realloc(lb->p, lb->cap);
		cr_assert(lb->p);
	}
}

static void lb_hdr(struct logbuf *lb, uint32_t uidvalidity)
{
	struct rec_folder_hdr h = { .uidvalidity = uidvalidity, .folder_id = 1 };
	lb_room(lb, 64);
	lb->last = lb->len;
	lb->len += record_put_folder_hdr(lb->p + lb->len, 64, &h);
}

static void lb_append(struct logbuf *lb, uint32_t uid, uint64_t modseq, uint64_t size)
{
	char blob[32];
	int bl = snprintf(blob, sizeof(blob), "blob-%u", uid);
	struct rec_append a = { .uid = uid, .seg = 1, .off = uid * 1000ull, .len = size,
				.date = 1000 + uid, .modseq = modseq,
				.blob = span_make(blob, (size_t)bl) };
	size_t n = record_size_append((size_t)bl);
	lb_room(lb, n);
	lb->last = lb->len;
	cr_assert_eq(record_put_append(lb->p + lb->len, n, &a), n);
	lb->len += n;
}

static void lb_flags(struct logbuf *lb, uint64_t modseq, uint32_t op, uint32_t fl,
		     uint64_t kw, const uint32_t *uids, uint32_t n)
{
	size_t sz = record_size_uids(n);
	lb_room(lb, sz);
	lb->last = lb->len;
	lb->len += record_put_flags(lb->p + lb->len, sz, modseq, op, fl, kw, uids, n);
}

static void lb_expunge(struct logbuf *lb, uint64_t modseq, const uint32_t *uids, uint32_t n)
{
	size_t sz = record_size_uids(n);
	lb_room(lb, sz);
	lb->last = lb->len;
	lb->len += record_put_expunge(lb->p + lb->len, sz, modseq, uids, n);
}

static void build(struct logbuf *lb)
{
	uint32_t u12[] = { 1, 2 }, u3[] = { 3 };

	memset(lb, 0, sizeof(*lb));
	lb_hdr(lb, 777);
	lb_room(lb, 64);
	lb->len += record_put_keyword(lb->p + lb->len, 64, 0, SPAN_LIT("$Label1"));
	lb_append(lb, 1, 1, 100);
	lb_append(lb, 2, 2, 200);
	lb_append(lb, 3, 3, 300);
	lb_flags(lb, 4, REC_FLAGS_ADD, STORE_F_SEEN | STORE_F_FLAGGED, 1, u12, 2);
	lb_flags(lb, 5, REC_FLAGS_REMOVE, STORE_F_FLAGGED, 0, u12, 1);
	lb_expunge(lb, 6, u3, 1);
	lb_append(lb, 5, 7, 500);
}

static void check_full(const struct index *ix)
{
	cr_expect_eq(ix->uidvalidity, 777);
	cr_expect_eq(ix->uidnext, 6);
	cr_expect_eq(ix->highestmodseq, 7);
	cr_assert_eq(ix->n, 3);
	cr_expect_eq(ix->msgs[0].uid, 1);
	cr_expect_eq(ix->msgs[0].flags, STORE_F_SEEN);
	cr_expect_eq(ix->msgs[0].keywords, 1);
	cr_expect_eq(ix->msgs[0].modseq, 5);
	cr_expect_eq(ix->msgs[1].flags, STORE_F_SEEN | STORE_F_FLAGGED);
	cr_expect_eq(ix->msgs[1].modseq, 4);
	cr_expect_eq(ix->msgs[2].uid, 5);
	cr_expect_eq(ix->msgs[2].modseq, 7);
	cr_expect_eq(ix->bytes, 800);
	cr_expect_eq(ix->unseen, 1);
	cr_expect_str_eq(ix->keywords[0], "$Label1");
	cr_expect_eq(ix->msgs[2].blob->len, 6);
	cr_expect_eq(memcmp(ix->msgs[2].blob->data, "blob-5", 6), 0);
	cr_expect_eq(index_find(ix, 3), NULL);
}

Test(index, replay_flags_modseq_expunge)
{
	struct logbuf lb;
	struct index ix;
	size_t good;

	build(&lb);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(good, lb.len);
	check_full(&ix);
	index_clear(&ix);
	free(lb.p);
}

Test(index, set_op_and_unknown_uids)
{
	struct logbuf lb = { 0 };
	struct index ix;
	size_t good;
	uint32_t u[] = { 1, 99 };

	lb_hdr(&lb, 1);
	lb_append(&lb, 1, 1, 10);
	lb_flags(&lb, 2, REC_FLAGS_SET, STORE_F_DRAFT, 6, u, 2);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(ix.msgs[0].flags, STORE_F_DRAFT);
	cr_expect_eq(ix.msgs[0].keywords, 6);
	cr_expect_eq(ix.highestmodseq, 2);
	index_clear(&ix);
	free(lb.p);
}

Test(index, uid_must_increase_and_header_first)
{
	struct logbuf lb = { 0 };
	struct index ix;
	size_t good, first;

	lb_append(&lb, 1, 1, 10);
	index_init(&ix);
	cr_expect_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_BAD);
	cr_expect_eq(good, 0);
	index_clear(&ix);
	lb.len = 0;
	lb_hdr(&lb, 1);
	lb_append(&lb, 5, 1, 10);
	first = lb.len;
	lb_append(&lb, 5, 2, 10);
	cr_expect_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_BAD);
	cr_expect_eq(good, first);
	cr_expect_eq(ix.n, 1);
	index_clear(&ix);
	free(lb.p);
}

Test(index, torn_tail_at_every_byte)
{
	struct logbuf lb;
	size_t good;

	build(&lb);
	for (size_t cut = lb.last; cut < lb.len; cut++) {
		struct index ix;
		int st;
		index_init(&ix);
		st = index_replay(&ix, span_make(lb.p, cut), &good);
		cr_expect_eq(good, lb.last, "cut %zu: good %zu", cut, good);
		cr_expect(st == RECORD_SHORT || (cut == lb.last && st == RECORD_END));
		cr_expect_eq(ix.n, 2);
		cr_expect_eq(ix.uidnext, 4);
		index_clear(&ix);
	}
	/* a zeroed tail after the cut is a clean end */
	memset(lb.p + lb.last, 0, lb.len - lb.last);
	{
		struct index ix;
		index_init(&ix);
		cr_expect_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
		cr_expect_eq(good, lb.last);
		index_clear(&ix);
	}
	free(lb.p);
}

Test(index, flipped_bit_in_last_record_cuts_it)
{
	struct logbuf lb;
	size_t good;

	build(&lb);
	for (size_t bit = lb.last * 8; bit < lb.len * 8; bit += 3) {
		struct index ix;
		int st;
		lb.p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		index_init(&ix);
		st = index_replay(&ix, span_make(lb.p, lb.len), &good);
		cr_expect(st == RECORD_BAD || st == RECORD_SHORT || st == RECORD_END, "bit %zu", bit);
		cr_expect_eq(good, lb.last, "bit %zu", bit);
		index_clear(&ix);
		lb.p[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	free(lb.p);
}

Test(index, checkpoint_round_trip_then_tail)
{
	struct logbuf lb;
	struct index ix, ck;
	size_t good, mid, n;
	uint8_t *buf;
	uint64_t off;
	uint32_t u5[] = { 5 };

	build(&lb);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	n = index_checkpoint_size(&ix);
	buf = malloc(n);
	cr_assert_eq(index_checkpoint_put(&ix, lb.len, buf, n), n);
	cr_expect_eq(index_checkpoint_put(&ix, lb.len, buf, n - 1), 0);

	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	cr_expect_eq(off, lb.len);
	check_full(&ck);

	/* the log goes on after the checkpoint: replay only the tail */
	mid = lb.len;
	lb_flags(&lb, 8, REC_FLAGS_ADD, STORE_F_ANSWERED, 0, u5, 1);
	lb_append(&lb, 6, 9, 600);
	cr_assert_eq(index_replay(&ck, span_make(lb.p + mid, lb.len - mid), &good), RECORD_END);
	cr_expect_eq(ck.n, 4);
	cr_expect_eq(ck.highestmodseq, 9);
	cr_expect_eq(ck.uidnext, 7);
	cr_expect_eq(index_find(&ck, 5)->flags, STORE_F_ANSWERED);
	index_clear(&ck);

	/* any damage to the checkpoint is detected */
	for (size_t i = 0; i < n; i += 5) {
		buf[i] ^= 0x40;
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), -EINVAL);
		cr_expect_eq(ck.n, 0);
		buf[i] ^= 0x40;
	}
	index_init(&ck);
	cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, n - 1), &off), -EINVAL);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}
