/* index.c - the in-memory folder index: apply, replay, checkpoints. */
#include "store/index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "store/crc32c.h"
#include "store/store.h"

/* An expunged message's mark, outside STORE_F_ALL: its slot stays, with
 * its UID (so the binary search stays right) and no blob, until
 * index_squeeze(). index_apply() squeezes before it returns; index_replay()
 * once at its end, so that a log of many EXPUNGE records does not move the
 * whole table once per record. */
#define INDEX_F_EXPUNGED 0x80000000u

/* An arena of IBLOB_MAP_MIN bytes or more is its own mapping, 2 MiB
 * aligned and open to transparent huge pages: it is filled once, by one
 * read, then kept, and faulting it in 2 MiB pages costs one fault and
 * one clear per 2 MiB instead of 512 faults (the largest part of opening
 * a big folder otherwise). It is cut to its blob area in place (munmap of
 * the tail, never a move). Its iblob's len is IBLOB_MAPPED, a length no
 * blob has. */
enum { MAP_ALIGN = 2u << 20, IBLOB_MAP_MIN = 8u << 20 };
#define IBLOB_MAPPED UINT32_MAX

struct iblob_map {
	size_t maplen;
	struct iblob b;
};

struct iblob *iblob_new(struct span b)
{
	struct iblob *x;

	if (b.len >= IBLOB_MAPPED || !(x = malloc(sizeof(*x) + b.len)))
		return NULL;
	atomic_init(&x->refs, 1);
	x->len = (uint32_t)b.len;
	if (b.len)
		memcpy(x->data, b.p, b.len);
	return x;
}

static size_t page_up(size_t n)
{
	size_t pg = 4096;
	return (n + pg - 1) & ~(pg - 1);
}

static struct iblob *iblob_map(size_t len)
{
	size_t need = page_up(offsetof(struct iblob_map, b.data) + len);
	uint8_t *p, *a;
	struct iblob_map *m;

	if (need < len || need > SIZE_MAX - MAP_ALIGN)
		return NULL;
	p = mmap(NULL, need + MAP_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	a = (uint8_t *)(((uintptr_t)p + MAP_ALIGN - 1) & ~(uintptr_t)(MAP_ALIGN - 1));
	if (a > p)
		munmap(p, (size_t)(a - p));
	munmap(a + need, (size_t)(p + need + MAP_ALIGN - (a + need)));
	(void)madvise(a, need, MADV_HUGEPAGE); /* advice: fine if refused */
	m = (struct iblob_map *)(void *)a;
	m->maplen = need;
	atomic_init(&m->b.refs, 1);
	m->b.len = IBLOB_MAPPED;
	return &m->b;
}

/* Asks for huge pages on the 2 MiB-aligned part of a large table (the
 * index's, from malloc: its own mapping at that size), which is filled
 * at once by a load or replay; advice only. */
static void table_advise_huge(void *p, size_t len)
{
	uintptr_t lo = ((uintptr_t)p + MAP_ALIGN - 1) & ~(uintptr_t)(MAP_ALIGN - 1);
	uintptr_t hi = ((uintptr_t)p + len) & ~(uintptr_t)(MAP_ALIGN - 1);

	if (len >= IBLOB_MAP_MIN && hi > lo)
		(void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

struct iblob *iblob_alloc(size_t len)
{
	struct iblob *x;

	if (len >= IBLOB_MAP_MIN)
		return iblob_map(len);
	if (len > SIZE_MAX - sizeof(*x) || !(x = malloc(sizeof(*x) + len)))
		return NULL;
	atomic_init(&x->refs, 1);
	x->len = 0;
	return x;
}

/* Cuts an arena (refs 1, no one else has it) to len bytes of data. A
 * mapped one stays where it is; a malloc'ed one may move (returned), or
 * stays as it was when realloc fails. */
static struct iblob *iblob_shrink(struct iblob *b, size_t len)
{
	if (b->len == IBLOB_MAPPED) {
		struct iblob_map *m = (struct iblob_map *)(void *)((uint8_t *)b - offsetof(struct iblob_map, b));
		size_t keep = page_up(offsetof(struct iblob_map, b.data) + len);
		if (keep < m->maplen) {
			munmap((uint8_t *)m + keep, m->maplen - keep);
			m->maplen = keep;
		}
		return b;
	}
	struct iblob *a = realloc(b, sizeof(*b) + len);
	return a ? a : b;
}

struct iblob *iblob_ref(struct iblob *b)
{
	atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	return b;
}

void iblob_unref(struct iblob **b_r)
{
	struct iblob *b = *b_r;

	*b_r = NULL;
	if (!b || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (b->len == IBLOB_MAPPED) {
		struct iblob_map *m = (struct iblob_map *)(void *)((uint8_t *)b - offsetof(struct iblob_map, b));
		munmap(m, m->maplen);
	} else {
		free(b);
	}
}

void index_init(struct index *ix)
{
	memset(ix, 0, sizeof(*ix));
	ix->uidnext = 1;
}

void index_clear(struct index *ix)
{
	for (size_t i = 0; i < ix->n; i++)
		iblob_unref(&ix->msgs[i].blob);
	free(ix->msgs);
	for (unsigned i = 0; i < 64; i++)
		free(ix->keywords[i]);
	free(ix->gone);
	index_init(ix);
}

static ssize_t index_pos(const struct index *ix, uint32_t uid)
{
	size_t lo = 0, hi = ix->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ix->n && ix->msgs[lo].uid == uid ? (ssize_t)lo : -1;
}

/* index_pos(), searching up from hint first: the UIDs of a record usually
 * ascend, so the next one is a few steps on (galloping), not a whole
 * binary search over a table that does not fit the cache. */
static ssize_t index_pos_near(const struct index *ix, uint32_t uid, size_t hint)
{
	size_t lo = hint, hi, step = 1;

	if (hint >= ix->n || ix->msgs[hint].uid > uid)
		return index_pos(ix, uid);
	/* msgs[lo].uid <= uid < msgs[hi].uid (or hi == n) */
	while (lo + step < ix->n && ix->msgs[lo + step].uid <= uid) {
		lo += step;
		step *= 2;
	}
	hi = lo + step < ix->n ? lo + step : ix->n;
	while (lo + 1 < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->msgs[mid].uid <= uid)
			lo = mid;
		else
			hi = mid;
	}
	return ix->msgs[lo].uid == uid ? (ssize_t)lo : -1;
}

struct index_msg *index_find(const struct index *ix, uint32_t uid)
{
	ssize_t i = index_pos(ix, uid);
	return i < 0 || (ix->msgs[i].flags & INDEX_F_EXPUNGED) ? NULL : &ix->msgs[i];
}

int index_keyword(const struct index *ix, struct span name)
{
	for (unsigned i = 0; i < 64; i++)
		if (ix->keywords[i] && span_eq_nocase(span_cstr(ix->keywords[i]), name))
			return (int)i;
	return -1;
}

static void index_set_flags(struct index *ix, struct index_msg *m, uint32_t flags)
{
	if (!(m->flags & STORE_F_SEEN))
		ix->unseen--;
	if (m->flags & STORE_F_DELETED)
		ix->deleted--;
	m->flags = flags;
	if (!(m->flags & STORE_F_SEEN))
		ix->unseen++;
	if (m->flags & STORE_F_DELETED)
		ix->deleted++;
}

static int apply_append(struct index *ix, const struct rec_append *a)
{
	struct index_msg *m;

	/* the store hands out UIDs up to UINT32_MAX - 1: UIDNEXT never wraps */
	if (a->uid < ix->uidnext || a->uid == UINT32_MAX)
		return -EINVAL;
	if (ix->n == ix->cap) {
		size_t cap = ix->cap ? ix->cap * 2 : 64;
		struct index_msg *p = realloc(ix->msgs, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		ix->msgs = p;
		ix->cap = cap;
	}
	m = &ix->msgs[ix->n];
	*m = (struct index_msg){
		.uid = a->uid, .flags = a->flags & STORE_F_ALL, .keywords = a->keywords,
		.modseq = a->modseq, .size = a->len, .date = a->date, .seg = a->seg,
		.data_crc = a->data_crc, .off = a->off,
	};
	m->blob = iblob_new(a->blob);
	if (!m->blob)
		return -ENOMEM;
	m->blen = m->blob->len;
	ix->n++;
	ix->uidnext = a->uid + 1;
	if (a->modseq > ix->highestmodseq)
		ix->highestmodseq = a->modseq;
	ix->bytes += a->len;
	if (!(m->flags & STORE_F_SEEN))
		ix->unseen++;
	if (m->flags & STORE_F_DELETED)
		ix->deleted++;
	if (RECORD_SEG_NUM(a->seg) > ix->max_seg)
		ix->max_seg = RECORD_SEG_NUM(a->seg);
	return 0;
}

/* A message whose flags and keywords the record leaves as they were keeps
 * its MODSEQ (RFC 7162 3.1: "each time ... metadata is changed"), so a
 * CONDSTORE client has nothing to fetch again after a STORE that changed
 * nothing; HIGHESTMODSEQ moves only when some message changed. Decided
 * here, as records are applied in log (= MODSEQ) order, not when the
 * change is reserved: then changes of other sessions still in flight
 * (reserved, not yet applied) would decide it wrongly. Replay applies the
 * same records in the same order: the same result. */
static void apply_flags(struct index *ix, const struct rec_flags *f)
{
	size_t hint = 0;
	bool changed = false;

	for (uint32_t i = 0; i < f->n; i++) {
		ssize_t p = index_pos_near(ix, record_uid_at(f->uids, i), hint);
		struct index_msg *m;
		uint32_t fl;
		uint64_t kw;

		if (p < 0)
			continue;
		hint = (size_t)p;
		m = &ix->msgs[p];
		if (m->flags & INDEX_F_EXPUNGED)
			continue;
		switch (f->op) {
		case REC_FLAGS_SET:
			fl = f->flags;
			kw = f->keywords;
			break;
		case REC_FLAGS_ADD:
			fl = m->flags | f->flags;
			kw = m->keywords | f->keywords;
			break;
		default:
			fl = m->flags & ~f->flags;
			kw = m->keywords & ~f->keywords;
			break;
		}
		fl &= STORE_F_ALL;
		if (fl == (m->flags & STORE_F_ALL) && kw == m->keywords)
			continue;
		index_set_flags(ix, m, fl);
		m->keywords = kw;
		m->modseq = f->modseq;
		changed = true;
	}
	if (changed && f->modseq > ix->highestmodseq)
		ix->highestmodseq = f->modseq;
}

/* Room for k more expunge runs (at most INDEX_GONE_MAX in all), allocated
 * before anything changes so that an expunge either applies whole or not. */
static int gone_reserve(struct index *ix, size_t k)
{
	size_t want = ix->ngone + k;
	struct index_gone *p;

	if (want > INDEX_GONE_MAX)
		want = INDEX_GONE_MAX;
	if (want <= ix->gone_cap)
		return 0;
	if (want < 2 * ix->gone_cap)
		want = 2 * ix->gone_cap < INDEX_GONE_MAX ? 2 * ix->gone_cap : INDEX_GONE_MAX;
	p = realloc(ix->gone, want * sizeof(*p));
	if (!p)
		return -ENOMEM;
	ix->gone = p;
	ix->gone_cap = want;
	return 0;
}

/* Remembers that uid was expunged at modseq. Calls come in log order, and
 * within a record in UID order, so a run grows at its end. */
static void gone_add(struct index *ix, uint32_t uid, uint64_t modseq)
{
	struct index_gone *last = ix->ngone ? &ix->gone[ix->ngone - 1] : NULL;

	if (last && last->modseq == modseq && last->hi + 1 == uid) {
		last->hi = uid;
		return;
	}
	if (ix->ngone == INDEX_GONE_MAX) {
		/* forget the oldest quarter at once, not one run per expunge */
		size_t d = INDEX_GONE_MAX / 4;
		if (ix->gone[d - 1].modseq > ix->gone_floor)
			ix->gone_floor = ix->gone[d - 1].modseq;
		memmove(ix->gone, ix->gone + d, (ix->ngone - d) * sizeof(*ix->gone));
		ix->ngone -= d;
	}
	ix->gone[ix->ngone++] = (struct index_gone){ uid, uid, modseq };
}


static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int apply_expunge(struct index *ix, const struct rec_expunge *e, uint64_t *freed_r)
{
	uint64_t freed = 0;
	uint32_t *sorted = NULL;
	bool in_order = true;
	size_t hint = 0;

	/* every UID could start a run of its own */
	if (gone_reserve(ix, e->n))
		return -ENOMEM;
	/* Runs are remembered in UID order within a record, whatever the
	 * order of its UIDs (store_expunge() takes any): sort a copy when
	 * they are not already ascending. */
	for (uint32_t i = 1; i < e->n && in_order; i++)
		in_order = record_uid_at(e->uids, i - 1) <= record_uid_at(e->uids, i);
	if (!in_order) {
		if (!(sorted = malloc((size_t)e->n * sizeof(*sorted))))
			return -ENOMEM;
		for (uint32_t i = 0; i < e->n; i++)
			sorted[i] = record_uid_at(e->uids, i);
		qsort(sorted, e->n, sizeof(*sorted), uid_cmp);
	}
	for (uint32_t i = 0; i < e->n; i++) {
		uint32_t uid = sorted ? sorted[i] : record_uid_at(e->uids, i);
		ssize_t p = index_pos_near(ix, uid, hint);
		struct index_msg *m;

		if (p < 0 || (ix->msgs[p].flags & INDEX_F_EXPUNGED))
			continue; /* unknown, or repeated */
		hint = (size_t)p;
		m = &ix->msgs[p];
		m->flags |= INDEX_F_EXPUNGED;
		if (ix->arena && m->blob == ix->arena) {
			ix->arena_live -= m->blen;
			if (--ix->arena_msgs == 0) {
				/* freed below, unless a view has it */
				ix->arena = NULL;
				ix->arena_bytes = ix->arena_live = 0;
			}
		}
		if (!ix->marked || (size_t)p < ix->marked_from)
			ix->marked_from = (size_t)p;
		ix->marked++;
		gone_add(ix, m->uid, e->modseq);
		freed += m->size;
		ix->bytes -= m->size;
		if (!(m->flags & STORE_F_SEEN))
			ix->unseen--;
		if (m->flags & STORE_F_DELETED)
			ix->deleted--;
		iblob_unref(&m->blob);
	}
	free(sorted);
	if (e->modseq > ix->highestmodseq)
		ix->highestmodseq = e->modseq;
	*freed_r = freed;
	return 0;
}

/* Gives the messages still in the arena blobs of their own once less
 * than half of it is live, so that expunged blobs are not kept forever;
 * on a failed allocation the rest stay (tried again after the next
 * expunge). The arena goes with its last reference. */
static void arena_trim(struct index *ix)
{
	struct iblob *a = ix->arena;

	if (!a || ix->arena_live * 2 >= ix->arena_bytes)
		return;
	for (size_t i = 0; i < ix->n; i++) {
		struct index_msg *m = &ix->msgs[i];
		struct iblob *own;

		if (m->blob != a)
			continue;
		if (!(own = iblob_new(index_msg_blob(m))))
			return;
		ix->arena_live -= m->blen;
		iblob_unref(&m->blob);
		m->blob = own;
		m->boff = 0;
		if (--ix->arena_msgs == 0) {
			ix->arena = NULL;
			ix->arena_bytes = ix->arena_live = 0;
			return; /* no other message points into a */
		}
	}
}

/* Drops the slots apply_expunge() marked, in one pass. */
static void index_squeeze(struct index *ix)
{
	size_t w = ix->marked_from;

	if (!ix->marked)
		return;
	for (size_t r = ix->marked_from; r < ix->n; r++)
		if (!(ix->msgs[r].flags & INDEX_F_EXPUNGED))
			ix->msgs[w++] = ix->msgs[r];
	ix->n = w;
	ix->marked = 0;
	ix->marked_from = 0;
	arena_trim(ix);
}

static int gone_cmp(const void *a, const void *b)
{
	const struct index_gone *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

int index_vanished(const struct index *ix, uint64_t since, struct index_gone **out_r,
		   size_t *n_r)
{
	size_t lo = 0, hi = ix->ngone, n, w = 0;
	struct index_gone *out;

	*out_r = NULL;
	*n_r = 0;
	/* runs are in MODSEQ order: the ones above since are a suffix */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ix->gone[mid].modseq <= since)
			lo = mid + 1;
		else
			hi = mid;
	}
	n = ix->ngone - lo;
	if (n) {
		out = malloc(n * sizeof(*out));
		if (!out)
			return -ENOMEM;
		memcpy(out, ix->gone + lo, n * sizeof(*out));
		qsort(out, n, sizeof(*out), gone_cmp);
		for (size_t r = 0; r < n; r++) {
			if (w && (uint64_t)out[w - 1].hi + 1 >= out[r].lo) {
				if (out[r].hi > out[w - 1].hi)
					out[w - 1].hi = out[r].hi;
				continue;
			}
			out[w++] = out[r];
		}
		*out_r = out;
		*n_r = w;
	}
	return since >= ix->gone_floor;
}

/* A rewritten log's state record: it raises the counters to what the log
 * had before its expunged records were dropped, and brings back the
 * memory of expunges. It never lowers a counter, and the runs must be ones
 * replay could have built (none above UIDNEXT or HIGHESTMODSEQ). Their
 * order is not checked: a rewrite writes the runs replay gave it, and must
 * replay whatever they are, or the records after it would be cut. */
static int apply_state(struct index *ix, const struct rec_state *st)
{
	struct index_gone *g = NULL;

	if (st->uidnext < ix->uidnext || st->highestmodseq < ix->highestmodseq ||
	    st->max_seg < ix->max_seg || st->gone_floor > st->highestmodseq || st->uidnext == 0)
		return -EINVAL;
	if (st->n > INDEX_GONE_MAX)
		return -EINVAL;
	for (uint32_t i = 0; i < st->n; i++) {
		uint32_t lo, hi;
		uint64_t ms;
		record_run_at(st->runs, i, &lo, &hi, &ms);
		if (lo == 0 || lo > hi || hi >= st->uidnext || ms > st->highestmodseq)
			return -EINVAL;
	}
	if (st->n && !(g = malloc(st->n * sizeof(*g))))
		return -ENOMEM;
	for (uint32_t i = 0; i < st->n; i++)
		record_run_at(st->runs, i, &g[i].lo, &g[i].hi, &g[i].modseq);
	free(ix->gone);
	ix->gone = g;
	ix->ngone = ix->gone_cap = st->n;
	ix->gone_floor = st->gone_floor;
	ix->uidnext = st->uidnext;
	ix->highestmodseq = st->highestmodseq;
	ix->max_seg = st->max_seg;
	return 0;
}

static int index_replay_marked(struct index *ix, struct span log, size_t *good_r);

/* At most this many messages' room reserved at once by a replay (288 MiB
 * of address space); a longer log grows the table by doubling past it. */
#define INDEX_RESERVE_MAX ((size_t)4 << 20)

/* index_apply() without the squeeze. */
static int apply(struct index *ix, const struct record *r, uint64_t *freed_r)
{
	uint64_t freed = 0;

	if (!ix->have_hdr && r->type != REC_FOLDER_HDR)
		return -EINVAL;
	switch (r->type) {
	case REC_FOLDER_HDR:
		/* a generation is written only by a rewrite, as version 2 */
		if (ix->have_hdr ||
		    (r->u.hdr.version == FOLDER_LOG_VERSION ? r->u.hdr.gen != 0
		     : r->u.hdr.version != FOLDER_LOG_VERSION_GEN || r->u.hdr.gen == 0))
			return -EINVAL;
		ix->have_hdr = true;
		ix->uidvalidity = r->u.hdr.uidvalidity;
		ix->folder_id = r->u.hdr.folder_id;
		ix->log_gen = r->u.hdr.gen;
		break;
	case REC_APPEND: {
		int err = apply_append(ix, &r->u.append);
		if (err)
			return err;
		break;
	}
	case REC_FLAGS:
		apply_flags(ix, &r->u.flags);
		break;
	case REC_EXPUNGE: {
		int err = apply_expunge(ix, &r->u.expunge, &freed);
		if (err)
			return err;
		break;
	}
	case REC_KEYWORD: {
		char *name = strndup((const char *)r->u.keyword.name.p, r->u.keyword.name.len);
		if (!name)
			return -ENOMEM;
		free(ix->keywords[r->u.keyword.idx]);
		ix->keywords[r->u.keyword.idx] = name;
		break;
	}
	case REC_STATE: {
		int err = apply_state(ix, &r->u.state);
		if (err)
			return err;
		break;
	}
	case REC_RELOC: {
		struct index_msg *m = index_find(ix, r->u.reloc.uid);
		if (m) {
			m->seg = r->u.reloc.seg;
			m->off = r->u.reloc.off;
		}
		if (RECORD_SEG_NUM(r->u.reloc.seg) > ix->max_seg)
			ix->max_seg = RECORD_SEG_NUM(r->u.reloc.seg);
		break;
	}
	default:
		return -EINVAL;
	}
	if (freed_r)
		*freed_r = freed;
	return 0;
}

int index_apply(struct index *ix, const struct record *r, uint64_t *freed_r)
{
	int err = apply(ix, r, freed_r);

	index_squeeze(ix);
	return err;
}

int index_replay(struct index *ix, struct span log, size_t *good_r)
{
	int st = index_replay_marked(ix, log, good_r);
	size_t keep = ix->n + ix->n / 4 + 64;

	index_squeeze(ix);
	/* give back the unused part of the room reserved above, past some
	 * headroom for the next appends (a shrink, cheap) */
	if (ix->cap > keep + keep / 4) {
		struct index_msg *p = realloc(ix->msgs, keep * sizeof(*p));
		if (p) {
			ix->msgs = p;
			ix->cap = keep;
		}
	}
	return st;
}

/* index_replay() leaving the expunged slots marked. */
static int index_replay_marked(struct index *ix, struct span log, size_t *good_r)
{
	size_t off = 0, most = log.len / record_size_append(0);

	if (most > INDEX_RESERVE_MAX)
		most = INDEX_RESERVE_MAX;

	/* Room for every append the log could hold, at once: doubling copies
	 * the table into fresh memory each time (7 MB for 98k messages, on a
	 * checkpoint's exact-size table at the first append of the tail).
	 * Room never used is address space, never touched; index_replay()
	 * gives most of it back. On failure, doubling it is. */
	if (most && ix->n + most > ix->cap) {
		struct index_msg *p = realloc(ix->msgs, (ix->n + most) * sizeof(*p));
		if (p) {
			ix->msgs = p;
			ix->cap = ix->n + most;
			table_advise_huge(p, ix->cap * sizeof(*p));
		}
	}

	for (;;) {
		struct record r;
		size_t used;
		enum record_status st = record_next(span_skip(log, off), &r, &used);
		int err;

		if (st != RECORD_OK) {
			*good_r = off;
			return (int)st;
		}
		err = apply(ix, &r, NULL);
		if (err == -ENOMEM) {
			*good_r = off;
			return err;
		}
		if (err) {
			*good_r = off;
			return RECORD_BAD;
		}
		off += used;
	}
}

/* ---- a rewritten log ---------------------------------------------------- */

static size_t kw_record_size(const char *name)
{
	return RECORD_HDR_LEN + 4 + 4 + strlen(name);
}

size_t index_base_size(const struct index *ix)
{
	size_t n = RECORD_HDR_LEN + 24 + record_size_state((uint32_t)ix->ngone);

	for (unsigned i = 0; i < 64; i++)
		if (ix->keywords[i])
			n += kw_record_size(ix->keywords[i]);
	for (size_t i = 0; i < ix->n; i++)
		n += record_size_append(ix->msgs[i].blen);
	return n;
}

_Static_assert(sizeof(struct index_gone) == 16, "a state record's run is an index_gone");

size_t index_base_next(const struct index *ix, struct index_base_cursor *c, uint8_t *out,
		       size_t cap)
{
	size_t len = 0, n;

	for (;;) {
		switch (c->stage) {
		case 0: {
			/* the next generation: a checkpoint of the old log
			 * cannot be taken for one of this */
			struct rec_folder_hdr h = { .uidvalidity = ix->uidvalidity,
						    .folder_id = ix->folder_id,
						    .gen = index_next_gen(ix) };
			if (!(n = record_put_folder_hdr(out + len, cap - len, &h)))
				return len;
			len += n;
			c->stage = 1;
			c->i = 0;
			continue;
		}
		case 1:
			for (; c->i < 64; c->i++) {
				const char *k = ix->keywords[c->i];
				if (!k)
					continue;
				if (!(n = record_put_keyword(out + len, cap - len, (uint32_t)c->i,
							     span_cstr(k))))
					return len;
				len += n;
			}
			c->stage = 2;
			c->i = 0;
			continue;
		case 2:
			for (; c->i < ix->n; c->i++) {
				const struct index_msg *m = &ix->msgs[c->i];
				struct rec_append a = {
					.uid = m->uid, .seg = m->seg, .off = m->off, .len = m->size,
					.date = m->date, .modseq = m->modseq, .flags = m->flags,
					.data_crc = m->data_crc, .keywords = m->keywords,
					.blob = index_msg_blob(m),
				};
				if (!(n = record_put_append(out + len, cap - len, &a)))
					return len;
				len += n;
			}
			c->stage = 3;
			continue;
		case 3: {
			struct rec_state st = {
				.uidnext = ix->uidnext, .max_seg = ix->max_seg,
				.highestmodseq = ix->highestmodseq, .gone_floor = ix->gone_floor,
				.n = (uint32_t)ix->ngone, .runs = (const uint8_t *)ix->gone,
			};
			if (!(n = record_put_state(out + len, cap - len, &st)))
				return len;
			len += n;
			c->stage = 4;
			continue;
		}
		default:
			return len;
		}
	}
}

/* ---- checkpoints ------------------------------------------------------ */

/* Versions 1 and 2: the header, keywords, then per message its fields and
 * blob inline. Version 3: the header adds log_gen u32 and the blob area's
 * length u64; then keywords, the blob area (every blob, in message order),
 * and a table of fixed-size message records (the blob's length last). */
enum {
	CK_HDR = 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4 + 8 + 4,
	CK_HDR3 = CK_HDR + 4 + 8,
	CK_MSG = 4 + 4 + 8 + 8 + 8 + 8 + 4 + 4 + 8 + 4,
};
/* version 2 and 3, after the messages: gone_floor u64, n u64, n runs (lo, hi, modseq) */
enum { CK_GONE_HDR = 8 + 8, CK_GONE = 4 + 4 + 8 };

static uint64_t blob_bytes(const struct index *ix)
{
	uint64_t n = 0;

	for (size_t i = 0; i < ix->n; i++)
		n += ix->msgs[i].blen;
	return n;
}

size_t index_checkpoint_size(const struct index *ix)
{
	size_t n = CK_HDR3 + 4;

	for (unsigned i = 0; i < 64; i++)
		if (ix->keywords[i])
			n += 8 + strlen(ix->keywords[i]);
	n += ix->n * CK_MSG + blob_bytes(ix);
	return n + CK_GONE_HDR + ix->ngone * CK_GONE;
}

static uint8_t *put(uint8_t *p, const void *v, size_t n)
{
	memcpy(p, v, n);
	return p + n;
}
#define PUT(p, v) put((p), &(v), sizeof(v))

size_t index_checkpoint_put(const struct index *ix, uint64_t log_off, uint8_t *out, size_t cap)
{
	size_t need = index_checkpoint_size(ix);
	uint32_t magic = CHECKPOINT_MAGIC, ver = CHECKPOINT_VERSION, nkw = 0, crc;
	uint64_t nmsg = ix->n, nblob = blob_bytes(ix);
	uint8_t *p = out;

	if (cap < need)
		return 0;
	for (unsigned i = 0; i < 64; i++)
		nkw += ix->keywords[i] != NULL;
	p = PUT(p, magic);
	p = PUT(p, ver);
	p = PUT(p, log_off);
	p = PUT(p, ix->uidvalidity);
	p = PUT(p, ix->uidnext);
	p = PUT(p, ix->highestmodseq);
	p = PUT(p, ix->folder_id);
	p = PUT(p, ix->max_seg);
	p = PUT(p, nmsg);
	p = PUT(p, nkw);
	p = PUT(p, ix->log_gen);
	p = PUT(p, nblob);
	for (uint32_t i = 0; i < 64; i++) {
		uint32_t len;
		if (!ix->keywords[i])
			continue;
		len = (uint32_t)strlen(ix->keywords[i]);
		p = PUT(p, i);
		p = PUT(p, len);
		p = put(p, ix->keywords[i], len);
	}
	for (size_t i = 0; i < ix->n; i++) {
		struct span b = index_msg_blob(&ix->msgs[i]);
		if (b.len)
			p = put(p, b.p, b.len);
	}
	for (size_t i = 0; i < ix->n; i++) {
		const struct index_msg *m = &ix->msgs[i];
		p = PUT(p, m->uid);
		p = PUT(p, m->flags);
		p = PUT(p, m->keywords);
		p = PUT(p, m->modseq);
		p = PUT(p, m->size);
		p = PUT(p, m->date);
		p = PUT(p, m->seg);
		p = PUT(p, m->data_crc);
		p = PUT(p, m->off);
		p = PUT(p, m->blen);
	}
	uint64_t ngone = ix->ngone;
	p = PUT(p, ix->gone_floor);
	p = PUT(p, ngone);
	for (size_t i = 0; i < ix->ngone; i++) {
		p = PUT(p, ix->gone[i].lo);
		p = PUT(p, ix->gone[i].hi);
		p = PUT(p, ix->gone[i].modseq);
	}
	crc = crc32c(0, out, (size_t)(p - out));
	p = PUT(p, crc);
	return (size_t)(p - out);
}

struct ck_rd {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static void get(struct ck_rd *r, void *v, size_t n)
{
	if (r->bad || r->left < n) {
		r->bad = true;
		memset(v, 0, n);
		return;
	}
	memcpy(v, r->p, n);
	r->p += n;
	r->left -= n;
}
#define GET(r, v) get((r), &(v), sizeof(v))

static void skip(struct ck_rd *r, size_t n)
{
	if (r->bad || r->left < n) {
		r->bad = true;
		return;
	}
	r->p += n;
	r->left -= n;
}

/* A message record's fields, then its checks against what came before. */
static bool ck_msg_ok(const struct index *ix, const struct index_msg *m)
{
	return m->uid != 0 && m->uid < ix->uidnext &&
	       (!ix->n || m->uid > ix->msgs[ix->n - 1].uid) &&
	       RECORD_SEG_NUM(m->seg) <= ix->max_seg && !(m->flags & ~(uint32_t)STORE_F_ALL);
}

static void ck_msg_count(struct index *ix, const struct index_msg *m)
{
	ix->bytes += m->size;
	ix->unseen += !(m->flags & STORE_F_SEEN);
	ix->deleted += !!(m->flags & STORE_F_DELETED);
}

/* Versions 1 and 2: fields and blob inline; blobs copied. */
static int ck_msgs_v2(struct index *ix, struct ck_rd *r, uint64_t nmsg)
{
	for (uint64_t k = 0; k < nmsg; k++) {
		struct index_msg m = { 0 };
		uint32_t bl;
		GET(r, m.uid);
		GET(r, m.flags);
		GET(r, m.keywords);
		GET(r, m.modseq);
		GET(r, m.size);
		GET(r, m.date);
		GET(r, m.seg);
		GET(r, m.data_crc);
		GET(r, m.off);
		GET(r, bl);
		if (r->bad || bl > r->left || !ck_msg_ok(ix, &m))
			return -EINVAL;
		m.blob = iblob_new(span_make(r->p, bl));
		if (!m.blob)
			return -ENOMEM;
		m.blen = bl;
		r->p += bl;
		r->left -= bl;
		ix->msgs[ix->n++] = m;
		ck_msg_count(ix, &m);
	}
	return 0;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

/* Version 3: the table at r, blobs at blobs[0..nblob) inside the arena.
 * The messages point into the arena (one reference each, taken by the
 * caller), or get copies when offsets would not fit in 32 bits. */
static int ck_msgs_v3(struct index *ix, struct ck_rd *r, uint64_t nmsg, struct iblob *arena,
		      const uint8_t *blobs, uint64_t nblob)
{
	uint64_t base = (uint64_t)(blobs - arena->data), boff = 0;
	bool copy = base + nblob > UINT32_MAX;
	const uint8_t *t = r->p;

	if (nmsg > r->left / CK_MSG)
		return -EINVAL;
	for (uint64_t k = 0; k < nmsg; k++, t += CK_MSG) {
		struct index_msg m = {
			.uid = rd32(t), .flags = rd32(t + 4), .keywords = rd64(t + 8),
			.modseq = rd64(t + 16), .size = rd64(t + 24), .date = (int64_t)rd64(t + 32),
			.seg = rd32(t + 40), .data_crc = rd32(t + 44), .off = rd64(t + 48),
			.blen = rd32(t + 56),
		};
		if (m.blen > nblob - boff || !ck_msg_ok(ix, &m))
			return -EINVAL;
		if (copy) {
			if (!(m.blob = iblob_new(span_make(blobs + boff, m.blen))))
				return -ENOMEM;
		} else {
			m.blob = arena;
			m.boff = (uint32_t)(base + boff);
		}
		boff += m.blen;
		ix->msgs[ix->n++] = m;
		ck_msg_count(ix, &m);
	}
	/* canonical: the blob area holds the blobs and nothing else */
	if (boff != nblob)
		return -EINVAL;
	skip(r, (size_t)nmsg * CK_MSG);
	return 0;
}

int index_checkpoint_load(struct index *ix, struct span in, uint64_t *log_off_r)
{
	struct iblob *arena = iblob_alloc(in.len);

	if (!arena)
		return -ENOMEM;
	if (in.len)
		memcpy(arena->data, in.p, in.len);
	return index_checkpoint_load_arena(ix, &arena, in.len, log_off_r);
}

int index_checkpoint_load_arena(struct index *ix, struct iblob **arena_r, size_t len,
				uint64_t *log_off_r)
{
	struct iblob *arena = *arena_r;
	struct ck_rd r;
	uint32_t magic, ver, nkw, crc;
	uint64_t nmsg, log_off, nblob = 0;
	const uint8_t *blobs = NULL;
	uint32_t prev_kw = 0;
	size_t in_arena = 0;
	int err = -EINVAL;

	*arena_r = NULL;
	if (len < CK_HDR + 4)
		goto err;
	memcpy(&crc, arena->data + len - 4, 4);
	if (crc != crc32c(0, arena->data, len - 4))
		goto err;
	r = (struct ck_rd){ arena->data, len - 4, false };
	GET(&r, magic);
	GET(&r, ver);
	GET(&r, log_off);
	GET(&r, ix->uidvalidity);
	GET(&r, ix->uidnext);
	GET(&r, ix->highestmodseq);
	GET(&r, ix->folder_id);
	GET(&r, ix->max_seg);
	GET(&r, nmsg);
	GET(&r, nkw);
	if (ver == 3) {
		GET(&r, ix->log_gen);
		GET(&r, nblob);
	}
	if (r.bad || magic != CHECKPOINT_MAGIC || ver < 1 || ver > 3 || nkw > 64 ||
	    nmsg > r.left / CK_MSG)
		goto err;
	ix->have_hdr = true;
	for (uint32_t k = 0; k < nkw; k++) {
		uint32_t i, kl;
		GET(&r, i);
		GET(&r, kl);
		/* canonical: in increasing slot order, as index_checkpoint_put()
		 * writes them */
		if (r.bad || i >= 64 || kl > r.left || kl > RECORD_NAME_MAX ||
		    (k && i <= prev_kw))
			goto err;
		prev_kw = i;
		ix->keywords[i] = strndup((const char *)r.p, kl);
		if (!ix->keywords[i]) {
			err = -ENOMEM;
			goto err;
		}
		r.p += kl;
		r.left -= kl;
	}
	if (nmsg) {
		/* headroom for the appends of the log after the checkpoint (a
		 * quarter: untouched address space until used), so that its
		 * replay does not copy the table to grow it */
		size_t cap = (size_t)nmsg + (size_t)nmsg / 4 + 1024;
		ix->msgs = malloc(cap * sizeof(*ix->msgs));
		if (!ix->msgs) {
			err = -ENOMEM;
			goto err;
		}
		ix->cap = cap;
		table_advise_huge(ix->msgs, cap * sizeof(*ix->msgs));
	}
	if (ver == 3) {
		blobs = r.p;
		if (nblob > r.left)
			goto err;
		skip(&r, (size_t)nblob);
		err = ck_msgs_v3(ix, &r, nmsg, arena, blobs, nblob);
		if (err) {
			/* messages loaded so far point into the arena: forget
			 * them, it is freed below */
			for (size_t i = 0; i < ix->n; i++)
				if (ix->msgs[i].blob == arena)
					ix->msgs[i].blob = NULL;
			goto err;
		}
		err = -EINVAL;
		for (size_t i = 0; i < ix->n; i++)
			in_arena += ix->msgs[i].blob == arena;
	} else if ((err = ck_msgs_v2(ix, &r, nmsg))) {
		goto err;
	} else {
		err = -EINVAL;
	}
	if (ver == 1) {
		/* no expunge memory: what the checkpoint covers is forgotten */
		ix->gone_floor = ix->highestmodseq;
	} else {
		uint64_t ngone;
		GET(&r, ix->gone_floor);
		GET(&r, ngone);
		if (r.bad || ngone > INDEX_GONE_MAX || ngone > r.left / CK_GONE ||
		    ix->gone_floor > ix->highestmodseq)
			goto err_arena;
		if (ngone && gone_reserve(ix, (size_t)ngone)) {
			err = -ENOMEM;
			goto err_arena;
		}
		for (uint64_t k = 0; k < ngone; k++) {
			struct index_gone g;
			GET(&r, g.lo);
			GET(&r, g.hi);
			GET(&r, g.modseq);
			/* canonical: runs in MODSEQ order, none above the folder's */
			if (r.bad || g.lo == 0 || g.lo > g.hi || g.hi >= ix->uidnext ||
			    g.modseq > ix->highestmodseq ||
			    (ix->ngone && g.modseq < ix->gone[ix->ngone - 1].modseq))
				goto err_arena;
			ix->gone[ix->ngone++] = g;
		}
	}
	if (r.left != 0)
		goto err_arena;
	if (in_arena) {
		/* Keep the arena up to the end of the blob area: the table
		 * and the runs after it are copied out. A mapped arena is cut
		 * in place; realloc may move a small one (ASan's always
		 * does): the messages follow it. */
		size_t keep = (size_t)(blobs + nblob - arena->data);
		if (len - keep >= 4096) {
			struct iblob *a = iblob_shrink(arena, keep);
			if (a != arena) {
				arena = a;
				for (size_t i = 0; i < ix->n; i++)
					ix->msgs[i].blob = a;
			}
		}
		/* one reference per message, and ours, dropped below; no one
		 * else has seen the arena yet */
		atomic_store_explicit(&arena->refs, (unsigned)in_arena + 1, memory_order_relaxed);
		ix->arena = arena;
		ix->arena_msgs = in_arena;
		ix->arena_bytes = ix->arena_live = nblob;
	}
	iblob_unref(&arena);
	*log_off_r = log_off;
	return 0;
err_arena:
	for (size_t i = 0; i < ix->n; i++)
		if (ix->msgs[i].blob == arena)
			ix->msgs[i].blob = NULL;
err:
	index_clear(ix);
	iblob_unref(&arena);
	return err;
}
