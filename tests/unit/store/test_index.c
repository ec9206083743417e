/* The in-memory index: replay, flags/MODSEQ, expunge, checkpoint + tail,
 * and a torn tail at every byte offset of the last record. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store/crc32c.h"
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
	cr_expect(span_eq(index_msg_blob(&ix->msgs[2]), SPAN_LIT("blob-5")));
	cr_expect(span_eq(index_msg_blob(&ix->msgs[0]), SPAN_LIT("blob-1")));
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

/* A version 1 or 2 checkpoint of ix, as those versions wrote it (the
 * format is frozen: kept here, not in the store, which writes only the
 * current version). malloc'ed; *n_r its length. */
static uint8_t *put_v12(const struct index *ix, uint64_t log_off, uint32_t ver, size_t *n_r)
{
	size_t cap = 64 + 64 * 300 + ix->n * 200 + ix->ngone * 16, n = 0;
	uint8_t *b = malloc(cap);
	uint32_t magic = CHECKPOINT_MAGIC, nkw = 0, crc;
	uint64_t nmsg = ix->n, ngone = ix->ngone;

#define P(v) (memcpy(b + n, &(v), sizeof(v)), n += sizeof(v))
	cr_assert(b);
	for (unsigned i = 0; i < 64; i++)
		nkw += ix->keywords[i] != NULL;
	P(magic); P(ver); P(log_off); P(ix->uidvalidity); P(ix->uidnext);
	P(ix->highestmodseq); P(ix->folder_id); P(ix->max_seg); P(nmsg); P(nkw);
	for (uint32_t i = 0; i < 64; i++) {
		uint32_t len;
		if (!ix->keywords[i])
			continue;
		len = (uint32_t)strlen(ix->keywords[i]);
		P(i); P(len);
		memcpy(b + n, ix->keywords[i], len);
		n += len;
	}
	for (size_t i = 0; i < ix->n; i++) {
		const struct index_msg *m = &ix->msgs[i];
		struct span bl = index_msg_blob(m);
		uint32_t len = (uint32_t)bl.len;
		P(m->uid); P(m->flags); P(m->keywords); P(m->modseq); P(m->size); P(m->date);
		P(m->seg); P(m->data_crc); P(m->off); P(len);
		memcpy(b + n, bl.p, bl.len);
		n += bl.len;
	}
	if (ver >= 2) {
		P(ix->gone_floor); P(ngone);
		for (size_t i = 0; i < ix->ngone; i++) {
			P(ix->gone[i].lo); P(ix->gone[i].hi); P(ix->gone[i].modseq);
		}
	}
	crc = crc32c(0, b, n);
	P(crc);
#undef P
	cr_assert_leq(n, cap);
	*n_r = n;
	return b;
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

/* ---- the memory of expunges (QRESYNC) -------------------------------------- */

static void expect_ranges(const struct index *ix, uint64_t since, int complete,
			  const uint32_t *want, size_t nwant)
{
	struct index_gone *g;
	size_t n;

	cr_assert_eq(index_vanished(ix, since, &g, &n), complete, "since %llu",
		     (unsigned long long)since);
	cr_assert_eq(n, nwant / 2, "since %llu: %zu ranges", (unsigned long long)since, n);
	for (size_t i = 0; i < n; i++) {
		cr_expect_eq(g[i].lo, want[2 * i], "since %llu range %zu", (unsigned long long)since, i);
		cr_expect_eq(g[i].hi, want[2 * i + 1], "since %llu range %zu", (unsigned long long)since, i);
	}
	free(g);
}

Test(index, vanished_since_modseq)
{
	struct logbuf lb = { 0 };
	struct index ix;
	size_t good;
	/* 1..10; expunge 4,5 (m11), then 9,2,3 out of order (m12), then 7 (m13) */
	uint32_t a[] = { 4, 5 }, b[] = { 9, 2, 3 }, c[] = { 7, 7, 42 };

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 10; u++)
		lb_append(&lb, u, u, 10);
	lb_expunge(&lb, 11, a, 2);
	lb_expunge(&lb, 12, b, 3);
	lb_expunge(&lb, 13, c, 3); /* a repeated and an unknown UID are ignored */
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(ix.n, 4, "1 6 8 10 are left");
	cr_expect(index_find(&ix, 2) == NULL && index_find(&ix, 9) == NULL,
		  "UIDs given out of order are all expunged");
	cr_expect_eq(ix.unseen, 4);
	cr_expect_eq(ix.bytes, 40);

	expect_ranges(&ix, 13, 1, NULL, 0);
	expect_ranges(&ix, 12, 1, (uint32_t[]){ 7, 7 }, 2);
	expect_ranges(&ix, 11, 1, (uint32_t[]){ 2, 3, 7, 7, 9, 9 }, 6);
	/* adjacent runs from different records are merged in the answer */
	expect_ranges(&ix, 0, 1, (uint32_t[]){ 2, 5, 7, 7, 9, 9 }, 6);
	expect_ranges(&ix, 10, 1, (uint32_t[]){ 2, 5, 7, 7, 9, 9 }, 6);
	index_clear(&ix);
	free(lb.p);
}

Test(index, vanished_memory_is_bounded)
{
	struct logbuf lb = { 0 };
	struct index ix;
	size_t good;
	const uint32_t n = 2 * INDEX_GONE_MAX + 10;

	/* every other UID expunged by a record of its own: one run each */
	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 2 * n; u++)
		lb_append(&lb, u, u, 1);
	for (uint32_t k = 0; k < n; k++) {
		uint32_t u = 2 * k + 1;
		lb_expunge(&lb, 2 * n + 1 + k, &u, 1);
	}
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_leq(ix.ngone, INDEX_GONE_MAX);
	cr_expect_leq(ix.gone_cap, INDEX_GONE_MAX);
	cr_expect_gt(ix.gone_floor, 2 * n);
	/* recent history is exact; older than the floor is incomplete */
	expect_ranges(&ix, 3 * n - 1, 1, (uint32_t[]){ 2 * n - 1, 2 * n - 1 }, 2);
	{
		struct index_gone *g;
		size_t k;
		cr_expect_eq(index_vanished(&ix, 0, &g, &k), 0);
		cr_expect_eq(k, ix.ngone);
		free(g);
		cr_expect_eq(index_vanished(&ix, ix.gone_floor, &g, &k), 1);
		free(g);
	}
	/* one record expunging more runs than the memory holds */
	{
		struct logbuf l2 = { 0 };
		struct index i2;
		uint32_t *odd = malloc(n * sizeof(*odd));
		for (uint32_t k = 0; k < n; k++)
			odd[k] = 2 * k + 1;
		lb_hdr(&l2, 1);
		for (uint32_t u = 1; u <= 2 * n; u++)
			lb_append(&l2, u, u, 1);
		lb_expunge(&l2, 3 * n, odd, n);
		index_init(&i2);
		cr_assert_eq(index_replay(&i2, span_make(l2.p, l2.len), &good), RECORD_END);
		cr_expect_eq(i2.n, n);
		cr_expect_leq(i2.ngone, INDEX_GONE_MAX);
		cr_expect_eq(i2.gone_floor, 3 * n);
		{
			struct index_gone *g;
			size_t k;
			cr_expect_eq(index_vanished(&i2, 2 * n, &g, &k), 0, "some were forgotten");
			free(g);
		}
		index_clear(&i2);
		free(odd);
		free(l2.p);
	}
	index_clear(&ix);
	free(lb.p);
}

Test(index, vanished_survives_checkpoint)
{
	struct logbuf lb = { 0 };
	struct index ix, ck;
	size_t good, n;
	uint8_t *buf;
	uint64_t off;
	uint32_t a[] = { 2, 3 }, b[] = { 5 };

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 6; u++)
		lb_append(&lb, u, u, 10);
	lb_expunge(&lb, 7, a, 2);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	n = index_checkpoint_size(&ix);
	buf = malloc(n);
	cr_assert_eq(index_checkpoint_put(&ix, lb.len, buf, n), n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	expect_ranges(&ck, 6, 1, (uint32_t[]){ 2, 3 }, 2);
	/* the log after the checkpoint adds to it */
	size_t mid = lb.len;
	lb_expunge(&lb, 8, b, 1);
	cr_assert_eq(index_replay(&ck, span_make(lb.p + mid, lb.len - mid), &good), RECORD_END);
	expect_ranges(&ck, 6, 1, (uint32_t[]){ 2, 3, 5, 5 }, 4);
	expect_ranges(&ck, 7, 1, (uint32_t[]){ 5, 5 }, 2);
	index_clear(&ck);

	/* a version 1 checkpoint (no runs) loads with everything it covers
	 * forgotten: answers about older MODSEQs are incomplete */
	{
		size_t n1;
		uint8_t *v1 = put_v12(&ix, lb.len, 1, &n1);
		index_init(&ck);
		cr_assert_eq(index_checkpoint_load(&ck, span_make(v1, n1), &off), 0);
		cr_expect_eq(ck.n, 4);
		cr_expect_eq(ck.gone_floor, 7);
		struct index_gone *g;
		size_t k;
		cr_expect_eq(index_vanished(&ck, 6, &g, &k), 0);
		cr_expect_eq(k, 0);
		free(g);
		expect_ranges(&ck, 7, 1, NULL, 0);
		index_clear(&ck);
		free(v1);
	}
	/* damage in the runs is detected */
	for (size_t i = n - 4 - 32; i < n - 4; i++) {
		buf[i] ^= 0x10;
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), -EINVAL);
		buf[i] ^= 0x10;
	}
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

Test(index, deleted_count_follows_flags_expunge_and_checkpoint)
{
	struct logbuf lb = { 0 };
	struct index ix, ck;
	size_t good, n;
	uint8_t *buf;
	uint64_t off;
	uint32_t u123[] = { 1, 2, 3 }, u2[] = { 2 }, u3[] = { 3 };

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 4; u++)
		lb_append(&lb, u, u, 10);
	lb_flags(&lb, 5, REC_FLAGS_ADD, STORE_F_DELETED, 0, u123, 3);
	lb_flags(&lb, 6, REC_FLAGS_REMOVE, STORE_F_DELETED, 0, u2, 1);
	lb_flags(&lb, 7, REC_FLAGS_SET, STORE_F_SEEN | STORE_F_DELETED, 0, u3, 1);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(ix.deleted, 2);
	n = index_checkpoint_size(&ix);
	buf = malloc(n);
	cr_assert_eq(index_checkpoint_put(&ix, lb.len, buf, n), n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	cr_expect_eq(ck.deleted, 2);
	size_t mid = lb.len;
	lb_expunge(&lb, 8, u3, 1);
	cr_assert_eq(index_replay(&ck, span_make(lb.p + mid, lb.len - mid), &good), RECORD_END);
	cr_expect_eq(ck.deleted, 1);
	index_clear(&ck);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

/* The log a rewrite writes (index_base_next) replays to the same index:
 * here one whose newest message (uid 5) and uid 3 were expunged, so only
 * the STATE record can say UIDNEXT 6, HIGHESTMODSEQ 8 and the expunges. */
Test(index, rewritten_log_replays_to_the_same_state)
{
	struct logbuf lb;
	struct index ix, b;
	struct index_base_cursor c = { 0 };
	uint32_t u5[] = { 5 };
	size_t good, len = 0, n, size;
	uint8_t *out;
	struct index_gone *g;
	size_t ng;

	build(&lb);
	lb_expunge(&lb, 8, u5, 1);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_assert_eq(ix.n, 2);
	size = index_base_size(&ix);
	cr_expect_lt(size, lb.len);
	out = malloc(size + RECORD_MAX_LEN);
	/* in small pieces: a record never straddles two calls */
	while ((n = index_base_next(&ix, &c, out + len, len + 200 <= size ? 200 : size - len)))
		len += n;
	cr_assert_eq(c.stage, INDEX_BASE_DONE);
	cr_assert_eq(len, size);
	index_init(&b);
	cr_assert_eq(index_replay(&b, span_make(out, len), &good), RECORD_END);
	cr_assert_eq(good, len);
	cr_expect_eq(b.uidvalidity, 777);
	cr_expect_eq(ix.log_gen, 0, "a log never rewritten is generation 0");
	cr_expect_eq(b.log_gen, 1, "its rewrite is the next");
	cr_expect_eq(b.uidnext, 6);
	cr_expect_eq(b.highestmodseq, 8);
	cr_assert_eq(b.n, 2);
	cr_expect_eq(b.msgs[0].flags, STORE_F_SEEN);
	cr_expect_eq(b.msgs[0].keywords, 1);
	cr_expect_eq(b.msgs[0].modseq, 5);
	cr_expect_eq(b.msgs[1].modseq, 4);
	cr_expect_str_eq(b.keywords[0], "$Label1");
	cr_expect_eq(b.bytes, 300);
	cr_assert_eq(index_vanished(&b, 0, &g, &ng), 1);
	cr_assert_eq(ng, 2);
	cr_expect(g[0].lo == 3 && g[0].hi == 3 && g[1].lo == 5 && g[1].hi == 5);
	free(g);
	{
		/* a generation is a version 2 header's, never 0; version 1 has none */
		uint8_t rec[64];
		struct record r;
		struct index t;
		size_t used;
		struct rec_folder_hdr h = { .uidvalidity = 1, .folder_id = 1, .gen = 5 };
		size_t k = record_put_folder_hdr(rec, sizeof(rec), &h);
		cr_assert_eq(record_next(span_make(rec, k), &r, &used), RECORD_OK);
		cr_expect_eq(r.u.hdr.version, FOLDER_LOG_VERSION_GEN);
		cr_expect_eq(r.u.hdr.gen, 5);
		uint32_t zero = 0;
		memcpy(rec + RECORD_HDR_LEN + 16, &zero, 4);
		record_seal(rec, k, REC_FOLDER_HDR);
		index_init(&t);
		cr_expect_eq(index_replay(&t, span_make(rec, k), &good), RECORD_BAD);
		index_clear(&t);
		h.gen = 0;
		cr_expect_eq(record_put_folder_hdr(rec, sizeof(rec), &h), RECORD_HDR_LEN + 16);
	}
	/* and the folder goes on after it: UID 6 next, not 3 */
	lb.len = 0;
	lb_append(&lb, 6, 9, 600);
	cr_expect_eq(index_replay(&b, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(b.n, 3);
	index_clear(&b);
	/* a state record never lowers a counter: a log that has moved past it
	 * cannot take it */
	{
		struct rec_state st = { .uidnext = 4, .highestmodseq = 8 };
		uint8_t rec[128];
		size_t k = record_put_state(rec, sizeof(rec), &st);
		cr_assert_gt(k, 0);
		cr_expect_eq(index_replay(&ix, span_make(rec, k), &good), RECORD_BAD);
		cr_expect_eq(good, 0);
		cr_expect_eq(ix.uidnext, 6);
		/* nor name an expunged UID at or above its UIDNEXT */
		uint8_t run[16] = { 0 };
		uint32_t lo = 2, hi = 7;
		memcpy(run, &lo, 4);
		memcpy(run + 4, &hi, 4);
		st = (struct rec_state){ .uidnext = 7, .highestmodseq = 9, .n = 1, .runs = run };
		k = record_put_state(rec, sizeof(rec), &st);
		cr_expect_eq(index_replay(&ix, span_make(rec, k), &good), RECORD_BAD);
	}
	index_clear(&ix);
	free(out);
	free(lb.p);
}

/* ---- checkpoint version 3: blobs in one arena ----------------------------- */

static uint8_t *put_current(const struct index *ix, uint64_t log_off, size_t *n_r)
{
	size_t n = index_checkpoint_size(ix);
	uint8_t *buf = malloc(n);

	cr_assert(buf);
	cr_assert_eq(index_checkpoint_put(ix, log_off, buf, n), n);
	*n_r = n;
	return buf;
}

/* The blob of every message of the build() log, by UID. */
static void check_blobs(const struct index *ix)
{
	for (size_t i = 0; i < ix->n; i++) {
		char want[32];
		int wl = snprintf(want, sizeof(want), "blob-%u", ix->msgs[i].uid);
		cr_expect(span_eq(index_msg_blob(&ix->msgs[i]), span_make(want, (size_t)wl)),
			  "uid %u", ix->msgs[i].uid);
	}
}

Test(index, checkpoint_v3_round_trip_keeps_blobs_in_one_arena)
{
	struct logbuf lb;
	struct index ix, ck;
	size_t good, n, n2;
	uint8_t *buf, *again;
	uint64_t off;
	uint32_t ver, u1[] = { 1 };

	build(&lb);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	cr_expect_eq(ix.log_gen, 0);
	ix.log_gen = 7;
	buf = put_current(&ix, lb.len, &n);
	memcpy(&ver, buf + 4, 4);
	cr_expect_eq(ver, 3);

	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	cr_expect_eq(off, lb.len);
	cr_expect_eq(ck.log_gen, 7);
	check_full(&ck);
	check_blobs(&ck);
	/* one arena, one reference per message */
	for (size_t i = 1; i < ck.n; i++)
		cr_expect_eq(ck.msgs[i].blob, ck.msgs[0].blob);
	cr_expect_eq(atomic_load(&ck.msgs[0].blob->refs), ck.n);
	/* canonical: written back byte for byte */
	again = put_current(&ck, off, &n2);
	cr_expect_eq(n2, n);
	cr_expect_eq(memcmp(again, buf, n), 0);
	free(again);

	/* a holder of a reference (a view) keeps the arena past an expunge
	 * and past the index itself */
	struct iblob *held = iblob_ref(ck.msgs[0].blob);
	struct span b1 = index_msg_blob(&ck.msgs[0]);
	size_t mid = lb.len;
	lb_expunge(&lb, 8, u1, 1);
	lb_append(&lb, 6, 9, 600);
	cr_assert_eq(index_replay(&ck, span_make(lb.p + mid, lb.len - mid), &good), RECORD_END);
	cr_expect_eq(ck.n, 3);
	check_blobs(&ck);
	cr_expect_neq(ck.msgs[2].blob, ck.msgs[0].blob, "an append has its own blob");
	/* a checkpoint of a mixed index (arena and own blobs) round-trips */
	again = put_current(&ck, lb.len, &n2);
	{
		struct index c2;
		index_init(&c2);
		cr_assert_eq(index_checkpoint_load(&c2, span_make(again, n2), &off), 0);
		cr_expect_eq(c2.n, 3);
		check_blobs(&c2);
		cr_expect_eq(c2.msgs[2].blob, c2.msgs[0].blob);
		index_clear(&c2);
	}
	free(again);
	index_clear(&ck);
	cr_expect(span_eq(b1, SPAN_LIT("blob-1")), "still readable through the held reference");
	iblob_unref(&held);
	cr_expect_null(held);

	/* the arena version of load takes the buffer over */
	struct iblob *a = iblob_alloc(n);
	cr_assert(a);
	memcpy(a->data, buf, n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load_arena(&ck, &a, n, &off), 0);
	cr_expect_null(a);
	check_full(&ck);
	index_clear(&ck);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

Test(index, checkpoint_v2_still_loads)
{
	struct logbuf lb;
	struct index ix, ck, c3;
	size_t good, n, n3;
	uint8_t *v2, *v3;
	uint64_t off;
	uint32_t u2[] = { 2 };

	build(&lb);
	lb_expunge(&lb, 8, u2, 1);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	ix.log_gen = 9; /* not in version 2: it loads as 0 */
	v2 = put_v12(&ix, lb.len, 2, &n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(v2, n), &off), 0);
	cr_expect_eq(off, lb.len);
	cr_expect_eq(ck.log_gen, 0);
	cr_expect_eq(ck.n, 2);
	cr_expect_eq(ck.uidnext, 6);
	cr_expect_eq(ck.bytes, 600);
	cr_expect_eq(ck.ngone, ix.ngone);
	cr_expect_eq(ck.gone_floor, ix.gone_floor);
	check_blobs(&ck);
	cr_expect_neq(ck.msgs[0].blob, ck.msgs[1].blob, "version 2 blobs are copied");
	/* written back as version 3, which loads to the same state */
	v3 = put_current(&ck, off, &n3);
	index_init(&c3);
	cr_assert_eq(index_checkpoint_load(&c3, span_make(v3, n3), &off), 0);
	cr_expect_eq(c3.n, 2);
	cr_expect_eq(c3.bytes, 600);
	cr_expect_eq(c3.unseen, ck.unseen);
	cr_expect_eq(c3.ngone, ck.ngone);
	check_blobs(&c3);
	/* a damaged version 2 one is refused too */
	v2[n / 2] ^= 1;
	index_clear(&ck);
	cr_expect_eq(index_checkpoint_load(&ck, span_make(v2, n), &off), -EINVAL);
	cr_expect_eq(ck.n, 0);
	index_clear(&c3);
	index_clear(&ix);
	free(v2);
	free(v3);
	free(lb.p);
}

/* Rewrites the trailing CRC after an edit, so that only the structure
 * checks can refuse it. */
static void reseal(uint8_t *buf, size_t n)
{
	uint32_t crc = crc32c(0, buf, n - 4);
	memcpy(buf + n - 4, &crc, 4);
}

Test(index, checkpoint_v3_damage_is_refused)
{
	struct logbuf lb;
	struct index ix, ck;
	size_t good, n, hdr = 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4; /* up to blob bytes */
	size_t kw = 8 + strlen("$Label1"), nblob = 3 * strlen("blob-1"), tbl, rec = 60;
	uint8_t *buf;
	uint64_t off, v;
	uint32_t w;

	build(&lb);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	buf = put_current(&ix, lb.len, &n);
	tbl = hdr + 8 + kw + nblob;
	cr_assert_eq(n, tbl + 3 * rec + 16 + 16 + 4, "the layout docs/store.md gives");
	memcpy(&v, buf + hdr, 8);
	cr_assert_eq(v, nblob);

	/* any flipped bit anywhere */
	for (size_t bit = 0; bit < n * 8; bit++) {
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), -EINVAL, "bit %zu", bit);
		cr_expect_eq(ck.n, 0);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	/* every shorter prefix */
	for (size_t k = 0; k < n; k++) {
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, k), &off), -EINVAL, "len %zu", k);
	}
	/* with a valid CRC: a blob area that does not add up to the blobs
	 * (one byte shorter: the table is misread; the last blob's length
	 * one too long: past the area) */
	{
		uint8_t *b = malloc(n);
		memcpy(b, buf, n);
		v = nblob - 1;
		memcpy(b + hdr, &v, 8);
		reseal(b, n);
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(b, n), &off), -EINVAL);
		memcpy(b, buf, n);
		memcpy(&w, b + tbl + 2 * rec + 56, 4);
		w++;
		memcpy(b + tbl + 2 * rec + 56, &w, 4);
		reseal(b, n);
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(b, n), &off), -EINVAL);
		/* the first blob's length one too short: the area has a byte
		 * left over */
		memcpy(b, buf, n);
		memcpy(&w, b + tbl + 56, 4);
		w--;
		memcpy(b + tbl + 56, &w, 4);
		reseal(b, n);
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(b, n), &off), -EINVAL);
		/* UIDs out of order in the table */
		memcpy(b, buf, n);
		memcpy(b + tbl, buf + tbl + rec, 4);
		memcpy(b + tbl + rec, buf + tbl, 4);
		reseal(b, n);
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(b, n), &off), -EINVAL);
		/* an unknown version */
		memcpy(b, buf, n);
		w = 4;
		memcpy(b + 4, &w, 4);
		reseal(b, n);
		index_init(&ck);
		cr_expect_eq(index_checkpoint_load(&ck, span_make(b, n), &off), -EINVAL);
		free(b);
	}
	/* and it still loads untouched */
	index_init(&ck);
	cr_expect_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	index_clear(&ck);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

/* A checkpoint whose table is large enough to be cut off the arena (the
 * realloc may move it: under ASan it always does, and the messages must
 * follow). */
Test(index, checkpoint_v3_arena_shrunk_to_its_blobs)
{
	struct logbuf lb = { 0 };
	struct index ix, ck;
	size_t good, n;
	uint8_t *buf;
	uint64_t off;
	uint32_t odd[150];

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 300; u++)
		lb_append(&lb, u, u, 10);
	for (uint32_t k = 0; k < 150; k++)
		odd[k] = 2 * k + 1;
	lb_expunge(&lb, 301, odd, 150);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	buf = put_current(&ix, lb.len, &n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	cr_assert_eq(ck.n, 150);
	check_blobs(&ck);
	for (size_t i = 1; i < ck.n; i++)
		cr_assert_eq(ck.msgs[i].blob, ck.msgs[0].blob);
	cr_expect_eq(atomic_load(&ck.msgs[0].blob->refs), 150);
	cr_expect_eq(ck.ngone, 150);
	index_clear(&ck);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

/* Replay leaves expunged slots marked until its end; applying the same
 * records one at a time squeezes after each. Both reach the same state,
 * with flags, re-expunges and appends after an expunge in between. */
Test(index, replay_equals_records_applied_one_by_one)
{
	struct logbuf lb = { 0 };
	struct index a, b;
	size_t good, off = 0;
	uint32_t x1[] = { 40, 3, 17, 3, 999 }, f1[] = { 3, 4, 40 }, x2[] = { 4, 40, 5 },
		 x3[] = { 60, 61, 62, 1 };

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 50; u++)
		lb_append(&lb, u, u, u);
	lb_expunge(&lb, 51, x1, 5);
	lb_flags(&lb, 52, REC_FLAGS_ADD, STORE_F_SEEN | STORE_F_DELETED, 0, f1, 3);
	lb_expunge(&lb, 53, x2, 3);
	for (uint32_t u = 60; u <= 70; u++)
		lb_append(&lb, u, 54, 100);
	lb_expunge(&lb, 55, x3, 4);
	/* UIDs out of order, repeated, unknown, expunged: the search from the
	 * previous position falls back to a whole one */
	uint32_t f2[] = { 50, 2, 49, 2, 1000, 3, 70, 0, 60, 6 };
	lb_flags(&lb, 56, REC_FLAGS_ADD, STORE_F_ANSWERED, 0, f2, 10);
	index_init(&a);
	cr_assert_eq(index_replay(&a, span_make(lb.p, lb.len), &good), RECORD_END);
	index_init(&b);
	while (off < lb.len) {
		struct record r;
		size_t used;
		cr_assert_eq(record_next(span_make(lb.p + off, lb.len - off), &r, &used), RECORD_OK);
		cr_assert_eq(index_apply(&b, &r, NULL), 0);
		off += used;
	}
	cr_assert_eq(a.n, 50 - 3 - 2 - 1 + 11 - 3);
	for (size_t i = 0; i < a.n; i++) {
		uint32_t u = a.msgs[i].uid;
		bool want = u == 50 || u == 2 || u == 49 || u == 70 || u == 6;
		cr_expect_eq(!!(a.msgs[i].flags & STORE_F_ANSWERED), want, "uid %u", u);
		cr_expect_eq(a.msgs[i].modseq, want ? 56 : (u >= 60 ? 54 : u), "uid %u", u);
	}
	cr_assert_eq(a.n, b.n);
	for (size_t i = 0; i < a.n; i++) {
		cr_expect_eq(a.msgs[i].uid, b.msgs[i].uid);
		cr_expect_eq(a.msgs[i].flags, b.msgs[i].flags);
		cr_expect(span_eq(index_msg_blob(&a.msgs[i]), index_msg_blob(&b.msgs[i])));
	}
	cr_expect_null(index_find(&a, 3));
	cr_expect_null(index_find(&a, 40));
	cr_expect_not_null(index_find(&a, 2));
	cr_expect_eq(a.bytes, b.bytes);
	cr_expect_eq(a.unseen, b.unseen);
	cr_expect_eq(a.deleted, b.deleted);
	cr_expect_eq(a.deleted, 0, "the \\Deleted ones were expunged");
	cr_expect_eq(a.marked, 0);
	cr_assert_eq(a.ngone, b.ngone);
	for (size_t i = 0; i < a.ngone; i++) {
		cr_expect_eq(a.gone[i].lo, b.gone[i].lo);
		cr_expect_eq(a.gone[i].hi, b.gone[i].hi);
		cr_expect_eq(a.gone[i].modseq, b.gone[i].modseq);
	}
	expect_ranges(&a, 50, 1, (uint32_t[]){ 1, 1, 3, 5, 17, 17, 40, 40, 60, 62 }, 10);
	index_clear(&a);
	index_clear(&b);
	free(lb.p);
}

/* A checkpoint of 8 MiB or more is read into its own mapping, cut to its
 * blob area in place: its blobs survive expunges and the index. */
Test(index, checkpoint_v3_large_arena_is_mapped)
{
	struct logbuf lb = { 0 };
	struct index ix, ck;
	size_t good, n, mid;
	uint8_t *buf;
	uint64_t off;
	enum { N = 2000, BL = 5000 };
	static char blob[BL];
	uint32_t *even = malloc(N / 2 * sizeof(*even));

	cr_assert(even);
	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= N; u++) {
		memset(blob, 'a' + (int)(u % 26), BL);
		snprintf(blob, 16, "%u", u);
		struct rec_append a = { .uid = u, .seg = 1, .off = u * 1000ull, .len = 10,
					.date = u, .modseq = u, .blob = span_make(blob, BL) };
		size_t rn = record_size_append(BL);
		lb_room(&lb, rn);
		cr_assert_eq(record_put_append(lb.p + lb.len, rn, &a), rn);
		lb.len += rn;
	}
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	buf = put_current(&ix, lb.len, &n);
	cr_assert_geq(n, 8u << 20);
	struct iblob *a = iblob_alloc(n);
	cr_assert(a);
	memcpy(a->data, buf, n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load_arena(&ck, &a, n, &off), 0);
	cr_assert_eq(ck.n, N);
	cr_expect_eq(ck.msgs[0].blob->len, UINT32_MAX, "a mapped arena");
	cr_expect_eq(atomic_load(&ck.msgs[0].blob->refs), N);
	for (size_t i = 0; i < ck.n; i++) {
		struct span b = index_msg_blob(&ck.msgs[i]);
		char want[24];
		snprintf(want, sizeof(want), "%u", (unsigned)(i + 1));
		cr_assert_eq(ck.msgs[i].blob, ck.msgs[0].blob);
		cr_assert_eq(b.len, BL);
		cr_assert_str_eq((const char *)b.p, want);
		cr_assert_eq(b.p[BL - 1], 'a' + (int)((i + 1) % 26));
	}
	/* the last blob is at the very end of what was kept */
	struct iblob *held = iblob_ref(ck.msgs[N - 1].blob);
	struct span last = index_msg_blob(&ck.msgs[N - 1]);
	for (uint32_t k = 0; k < N / 2; k++)
		even[k] = 2 * k + 2;
	mid = lb.len;
	lb_expunge(&lb, N + 1, even, N / 2);
	cr_assert_eq(index_replay(&ck, span_make(lb.p + mid, lb.len - mid), &good), RECORD_END);
	cr_expect_eq(ck.n, N / 2);
	cr_expect_eq(atomic_load(&held->refs), N / 2 + 1);
	index_clear(&ck);
	cr_expect_eq(last.p[BL - 1], 'a' + N % 26);
	cr_expect_eq(atomic_load(&held->refs), 1);
	iblob_unref(&held);
	index_clear(&ix);
	free(buf);
	free(even);
	free(lb.p);
}

/* Once expunges leave less than half of the arena live, the messages left
 * get blobs of their own: the arena then lives only as long as a view
 * (here: a held reference) that has it. */
Test(index, arena_is_let_go_when_mostly_expunged)
{
	struct logbuf lb = { 0 };
	struct index ix, ck;
	size_t good, n;
	uint8_t *buf;
	uint64_t off, freed;
	uint32_t first[40], more[40];

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 100; u++)
		lb_append(&lb, u, u, 10);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	buf = put_current(&ix, lb.len, &n);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	struct iblob *arena = ck.msgs[0].blob, *held = iblob_ref(arena);
	cr_expect_eq(ck.arena, arena);
	cr_expect_eq(ck.arena_msgs, 100);

	/* 40 of 100 gone: most still live, all still in the arena */
	for (uint32_t k = 0; k < 40; k++)
		first[k] = k + 1;
	struct record r = { .type = REC_EXPUNGE };
	r.u.expunge = (struct rec_expunge){ .modseq = 101, .n = 40 };
	uint8_t ubuf[160];
	memcpy(ubuf, first, sizeof(first));
	r.u.expunge.uids = ubuf;
	cr_assert_eq(index_apply(&ck, &r, &freed), 0);
	cr_expect_eq(ck.n, 60);
	cr_expect_eq(ck.arena_msgs, 60);
	for (size_t i = 0; i < ck.n; i++)
		cr_expect_eq(ck.msgs[i].blob, arena);
	cr_expect_eq(atomic_load(&arena->refs), 61);

	/* 20 more: 40 of 100 left, under half: they move out */
	for (uint32_t k = 0; k < 20; k++)
		more[k] = 41 + k;
	r.u.expunge = (struct rec_expunge){ .modseq = 102, .n = 20 };
	memcpy(ubuf, more, 20 * 4);
	r.u.expunge.uids = ubuf;
	cr_assert_eq(index_apply(&ck, &r, &freed), 0);
	cr_assert_eq(ck.n, 40);
	cr_expect_null(ck.arena);
	for (size_t i = 0; i < ck.n; i++) {
		cr_expect_neq(ck.msgs[i].blob, arena);
		cr_expect_eq(ck.msgs[i].boff, 0);
	}
	check_blobs(&ck);
	cr_expect_eq(atomic_load(&arena->refs), 1, "only the view's reference is left");
	iblob_unref(&held);
	/* and the index goes on with its own blobs */
	free(buf);
	buf = put_current(&ck, off, &n);
	index_clear(&ck);
	index_init(&ck);
	cr_assert_eq(index_checkpoint_load(&ck, span_make(buf, n), &off), 0);
	cr_expect_eq(ck.n, 40);
	check_blobs(&ck);
	index_clear(&ck);
	index_clear(&ix);
	free(buf);
	free(lb.p);
}

/* Ascending UIDs found by galloping from the previous one, with gaps of
 * every size and UIDs that are absent (expunged or never there). */
Test(index, flags_on_ascending_uids_with_gaps)
{
	struct logbuf lb = { 0 };
	struct index ix;
	size_t good;
	uint32_t gone[100], pick[400];
	uint32_t ng = 0, np = 0;

	lb_hdr(&lb, 1);
	for (uint32_t u = 1; u <= 3000; u++)
		if (u % 3 != 0) /* every third UID never appended */
			lb_append(&lb, u, 1, 1);
	for (uint32_t u = 5; u <= 3000 && ng < 100; u += 29)
		gone[ng++] = u;
	lb_expunge(&lb, 2, gone, ng);
	/* gaps growing 1, 2, 3, ... then a jump to the end */
	for (uint32_t u = 1, d = 1; u <= 3000 && np < 399; u += d++)
		pick[np++] = u;
	pick[np++] = 2999;
	lb_flags(&lb, 3, REC_FLAGS_ADD, STORE_F_FLAGGED, 0, pick, np);
	index_init(&ix);
	cr_assert_eq(index_replay(&ix, span_make(lb.p, lb.len), &good), RECORD_END);
	for (size_t i = 0; i < ix.n; i++) {
		uint32_t u = ix.msgs[i].uid;
		bool want = false;
		for (uint32_t k = 0; k < np; k++)
			want |= pick[k] == u;
		cr_expect_eq(!!(ix.msgs[i].flags & STORE_F_FLAGGED), want, "uid %u", u);
	}
	index_clear(&ix);
	free(lb.p);
}
