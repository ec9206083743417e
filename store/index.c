/* index.c - the in-memory folder index: apply, replay, checkpoints. */
#include "store/index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store/crc32c.h"
#include "store/store.h"

struct iblob *iblob_new(struct span b)
{
	struct iblob *x = malloc(sizeof(*x) + b.len);

	if (!x)
		return NULL;
	atomic_init(&x->refs, 1);
	x->len = (uint32_t)b.len;
	if (b.len)
		memcpy(x->data, b.p, b.len);
	return x;
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
	if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
		free(b);
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

struct index_msg *index_find(const struct index *ix, uint32_t uid)
{
	ssize_t i = index_pos(ix, uid);
	return i < 0 ? NULL : &ix->msgs[i];
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

static void apply_flags(struct index *ix, const struct rec_flags *f)
{
	for (uint32_t i = 0; i < f->n; i++) {
		struct index_msg *m = index_find(ix, record_uid_at(f->uids, i));
		uint32_t fl;
		uint64_t kw;

		if (!m)
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
		index_set_flags(ix, m, fl & STORE_F_ALL);
		m->keywords = kw;
		m->modseq = f->modseq;
	}
	if (f->modseq > ix->highestmodseq)
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

/* apply_expunge()'s mark, outside STORE_F_ALL; never left set. */
#define INDEX_F_EXPUNGED 0x80000000u

static int apply_expunge(struct index *ix, const struct rec_expunge *e, uint64_t *freed_r)
{
	uint64_t freed = 0;
	size_t w = 0;
	bool any = false;

	/* every UID could start a run of its own */
	if (gone_reserve(ix, e->n))
		return -ENOMEM;
	/* Mark, then squeeze once: O(n log N + N). The mark is a flag bit, not
	 * the UID (0 as before), so that the binary search stays right whatever
	 * the order of the record's UIDs: store_expunge() takes any order, and
	 * a zeroed UID in the middle misled the search for a smaller one. */
	for (uint32_t i = 0; i < e->n; i++) {
		ssize_t p = index_pos(ix, record_uid_at(e->uids, i));
		if (p >= 0) {
			ix->msgs[p].flags |= INDEX_F_EXPUNGED;
			any = true;
		}
	}
	if (any) {
		for (size_t r = 0; r < ix->n; r++) {
			struct index_msg *m = &ix->msgs[r];
			if (m->flags & INDEX_F_EXPUNGED) {
				gone_add(ix, m->uid, e->modseq);
				freed += m->size;
				ix->bytes -= m->size;
				if (!(m->flags & STORE_F_SEEN))
					ix->unseen--;
				if (m->flags & STORE_F_DELETED)
					ix->deleted--;
				iblob_unref(&m->blob);
				continue;
			}
			ix->msgs[w++] = *m;
		}
		ix->n = w;
	}
	if (e->modseq > ix->highestmodseq)
		ix->highestmodseq = e->modseq;
	*freed_r = freed;
	return 0;
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

int index_apply(struct index *ix, const struct record *r, uint64_t *freed_r)
{
	uint64_t freed = 0;

	if (!ix->have_hdr && r->type != REC_FOLDER_HDR)
		return -EINVAL;
	switch (r->type) {
	case REC_FOLDER_HDR:
		if (ix->have_hdr || r->u.hdr.version != FOLDER_LOG_VERSION)
			return -EINVAL;
		ix->have_hdr = true;
		ix->uidvalidity = r->u.hdr.uidvalidity;
		ix->folder_id = r->u.hdr.folder_id;
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

int index_replay(struct index *ix, struct span log, size_t *good_r)
{
	size_t off = 0;

	for (;;) {
		struct record r;
		size_t used;
		enum record_status st = record_next(span_skip(log, off), &r, &used);
		int err;

		if (st != RECORD_OK) {
			*good_r = off;
			return (int)st;
		}
		err = index_apply(ix, &r, NULL);
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
	size_t n = RECORD_HDR_LEN + 16 + record_size_state((uint32_t)ix->ngone);

	for (unsigned i = 0; i < 64; i++)
		if (ix->keywords[i])
			n += kw_record_size(ix->keywords[i]);
	for (size_t i = 0; i < ix->n; i++)
		n += record_size_append(ix->msgs[i].blob->len);
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
			struct rec_folder_hdr h = { .uidvalidity = ix->uidvalidity,
						    .folder_id = ix->folder_id };
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
					.blob = span_make(m->blob->data, m->blob->len),
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

enum { CK_HDR = 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4 + 8 + 4, CK_MSG = 4 + 4 + 8 + 8 + 8 + 8 + 4 + 4 + 8 + 4 };
/* version 2, after the messages: gone_floor u64, n u64, n runs (lo, hi, modseq) */
enum { CK_GONE_HDR = 8 + 8, CK_GONE = 4 + 4 + 8 };

size_t index_checkpoint_size(const struct index *ix)
{
	size_t n = CK_HDR + 4;

	for (unsigned i = 0; i < 64; i++)
		if (ix->keywords[i])
			n += 8 + strlen(ix->keywords[i]);
	for (size_t i = 0; i < ix->n; i++)
		n += CK_MSG + ix->msgs[i].blob->len;
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
	uint64_t nmsg = ix->n;
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
		p = PUT(p, m->blob->len);
		p = put(p, m->blob->data, m->blob->len);
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

int index_checkpoint_load(struct index *ix, struct span in, uint64_t *log_off_r)
{
	struct ck_rd r;
	uint32_t magic, ver, nkw, crc;
	uint64_t nmsg, log_off;
	uint32_t prev_kw = 0;
	int err = -EINVAL;

	if (in.len < CK_HDR + 4)
		return -EINVAL;
	memcpy(&crc, in.p + in.len - 4, 4);
	if (crc != crc32c(0, in.p, in.len - 4))
		return -EINVAL;
	r = (struct ck_rd){ in.p, in.len - 4, false };
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
	if (r.bad || magic != CHECKPOINT_MAGIC || (ver != 1 && ver != CHECKPOINT_VERSION) || nkw > 64 ||
	    nmsg > r.left / CK_MSG)
		goto err;
	ix->have_hdr = true;
	for (uint32_t k = 0; k < nkw; k++) {
		uint32_t i, len;
		GET(&r, i);
		GET(&r, len);
		/* canonical: in increasing slot order, as index_checkpoint_put()
		 * writes them */
		if (r.bad || i >= 64 || len > r.left || len > RECORD_NAME_MAX ||
		    (k && i <= prev_kw))
			goto err;
		prev_kw = i;
		ix->keywords[i] = strndup((const char *)r.p, len);
		if (!ix->keywords[i]) {
			err = -ENOMEM;
			goto err;
		}
		r.p += len;
		r.left -= len;
	}
	if (nmsg) {
		ix->msgs = calloc(nmsg, sizeof(*ix->msgs));
		if (!ix->msgs) {
			err = -ENOMEM;
			goto err;
		}
		ix->cap = nmsg;
	}
	for (uint64_t k = 0; k < nmsg; k++) {
		struct index_msg m;
		uint32_t bl;
		GET(&r, m.uid);
		GET(&r, m.flags);
		GET(&r, m.keywords);
		GET(&r, m.modseq);
		GET(&r, m.size);
		GET(&r, m.date);
		GET(&r, m.seg);
		GET(&r, m.data_crc);
		GET(&r, m.off);
		GET(&r, bl);
		if (r.bad || bl > r.left || m.uid == 0 || m.uid >= ix->uidnext ||
		    (ix->n && m.uid <= ix->msgs[ix->n - 1].uid) || RECORD_SEG_NUM(m.seg) > ix->max_seg ||
		    (m.flags & ~(uint32_t)STORE_F_ALL))
			goto err;
		m.blob = iblob_new(span_make(r.p, bl));
		if (!m.blob) {
			err = -ENOMEM;
			goto err;
		}
		r.p += bl;
		r.left -= bl;
		ix->msgs[ix->n++] = m;
		ix->bytes += m.size;
		if (!(m.flags & STORE_F_SEEN))
			ix->unseen++;
		if (m.flags & STORE_F_DELETED)
			ix->deleted++;
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
			goto err;
		if (ngone && gone_reserve(ix, (size_t)ngone)) {
			err = -ENOMEM;
			goto err;
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
				goto err;
			ix->gone[ix->ngone++] = g;
		}
	}
	if (r.left != 0)
		goto err;
	*log_off_r = log_off;
	return 0;
err:
	index_clear(ix);
	return err;
}
