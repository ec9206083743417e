/* record.c - log record framing and payload encoding. Little-endian only
 * (checked at compile time), so fields are copied with memcpy. */
#include "store/record.h"

#include <string.h>

#include "store/crc32c.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the on-disk format is little-endian; add byte swaps first");

/* A cursor over a payload; any overrun sets bad instead of reading past. */
struct rd {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static void rd_get(struct rd *r, void *v, size_t n)
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

static uint32_t rd32(struct rd *r) { uint32_t v; rd_get(r, &v, 4); return v; }
static uint64_t rd64(struct rd *r) { uint64_t v; rd_get(r, &v, 8); return v; }

static const uint8_t *rd_bytes(struct rd *r, size_t n)
{
	const uint8_t *p = r->p;
	if (r->bad || r->left < n) {
		r->bad = true;
		return NULL;
	}
	r->p += n;
	r->left -= n;
	return p;
}

static struct span rd_name(struct rd *r, size_t max)
{
	uint32_t n = rd32(r);
	const uint8_t *p;

	if (n > max) {
		r->bad = true;
		return (struct span){ NULL, 0 };
	}
	p = rd_bytes(r, n);
	return (struct span){ p, p ? n : 0 };
}

static uint32_t record_crc(const uint8_t *rec, size_t len)
{
	return crc32c(crc32c(0, rec, 4), rec + 8, len - 8);
}

size_t record_seal(uint8_t *rec, size_t len, uint32_t type)
{
	uint32_t l = (uint32_t)len, zero = 0, crc;

	memcpy(rec, &l, 4);
	memcpy(rec + 8, &type, 4);
	memcpy(rec + 12, &zero, 4);
	crc = record_crc(rec, len);
	memcpy(rec + 4, &crc, 4);
	return len;
}

enum record_status record_next(struct span in, struct record *r, size_t *used_r)
{
	uint32_t len, crc, zero;
	struct rd d;

	if (in.len == 0)
		return RECORD_END;
	if (in.len < 4)
		return RECORD_SHORT;
	memcpy(&len, in.p, 4);
	if (len == 0)
		return RECORD_END;
	if (len < RECORD_HDR_LEN || len > RECORD_MAX_LEN)
		return RECORD_BAD;
	if (in.len < len)
		return RECORD_SHORT;
	memcpy(&crc, in.p + 4, 4);
	if (crc != record_crc(in.p, len))
		return RECORD_BAD;
	memset(r, 0, sizeof(*r));
	memcpy(&r->type, in.p + 8, 4);
	memcpy(&zero, in.p + 12, 4);
	if (zero != 0)
		return RECORD_BAD;
	r->len = len;
	d = (struct rd){ in.p + RECORD_HDR_LEN, len - RECORD_HDR_LEN, false };

	switch (r->type) {
	case REC_FOLDER_HDR:
		r->u.hdr.magic = rd32(&d);
		r->u.hdr.version = rd32(&d);
		r->u.hdr.uidvalidity = rd32(&d);
		r->u.hdr.folder_id = rd32(&d);
		if (r->u.hdr.version >= FOLDER_LOG_VERSION_GEN) {
			r->u.hdr.gen = rd32(&d);
			if (rd32(&d) != 0)
				return RECORD_BAD;
		}
		if (r->u.hdr.magic != FOLDER_LOG_MAGIC)
			return RECORD_BAD;
		break;
	case REC_APPEND: {
		struct rec_append *a = &r->u.append;
		uint32_t bl;
		a->uid = rd32(&d);
		a->seg = rd32(&d);
		a->off = rd64(&d);
		a->len = rd64(&d);
		a->date = (int64_t)rd64(&d);
		a->modseq = rd64(&d);
		a->flags = rd32(&d);
		a->data_crc = rd32(&d);
		a->keywords = rd64(&d);
		bl = rd32(&d);
		if (bl > RECORD_BLOB_MAX)
			return RECORD_BAD;
		a->blob.p = rd_bytes(&d, bl);
		a->blob.len = bl;
		if (a->uid == 0)
			return RECORD_BAD;
		break;
	}
	case REC_FLAGS: {
		struct rec_flags *f = &r->u.flags;
		f->modseq = rd64(&d);
		f->op = rd32(&d);
		f->flags = rd32(&d);
		f->keywords = rd64(&d);
		f->n = rd32(&d);
		if (f->n > RECORD_MAX_UIDS || f->op > REC_FLAGS_REMOVE)
			return RECORD_BAD;
		f->uids = rd_bytes(&d, 4 * (size_t)f->n);
		break;
	}
	case REC_EXPUNGE: {
		struct rec_expunge *e = &r->u.expunge;
		e->modseq = rd64(&d);
		e->n = rd32(&d);
		if (e->n > RECORD_MAX_UIDS)
			return RECORD_BAD;
		e->uids = rd_bytes(&d, 4 * (size_t)e->n);
		break;
	}
	case REC_KEYWORD:
		r->u.keyword.idx = rd32(&d);
		r->u.keyword.name = rd_name(&d, RECORD_NAME_MAX);
		if (r->u.keyword.idx >= 64)
			return RECORD_BAD;
		break;
	case REC_RELOC:
		r->u.reloc.uid = rd32(&d);
		r->u.reloc.seg = rd32(&d);
		r->u.reloc.off = rd64(&d);
		break;
	case REC_STATE: {
		struct rec_state *st = &r->u.state;
		st->uidnext = rd32(&d);
		st->max_seg = rd32(&d);
		st->highestmodseq = rd64(&d);
		st->gone_floor = rd64(&d);
		st->n = rd32(&d);
		if (rd32(&d) != 0 || st->n > RECORD_STATE_RUNS_MAX)
			return RECORD_BAD;
		st->runs = rd_bytes(&d, 16 * (size_t)st->n);
		break;
	}
	case REC_MBOX_CREATE:
		r->u.mbox.id = rd32(&d);
		r->u.mbox.uidvalidity = rd32(&d);
		r->u.mbox.name = rd_name(&d, RECORD_NAME_MAX);
		break;
	case REC_MBOX_RENAME:
		r->u.mbox.id = rd32(&d);
		r->u.mbox.name = rd_name(&d, RECORD_NAME_MAX);
		break;
	case REC_MBOX_DELETE:
		r->u.mbox.id = rd32(&d);
		break;
	case REC_MBOX_SUBSCRIBE:
		r->u.mbox.on = rd32(&d);
		r->u.mbox.name = rd_name(&d, RECORD_NAME_MAX);
		break;
	default:
		return RECORD_BAD;
	}
	/* A payload must be consumed exactly: trailing bytes mean a format we
	 * do not understand, which must not be half-applied. */
	if (d.bad || d.left != 0)
		return RECORD_BAD;
	*used_r = len;
	return RECORD_OK;
}

/* ---- encoding ---------------------------------------------------------- */

struct wr {
	uint8_t *p;
	size_t left;
	bool bad;
};

static void wr_put(struct wr *w, const void *v, size_t n)
{
	if (w->bad || w->left < n) {
		w->bad = true;
		return;
	}
	if (n)
		memcpy(w->p, v, n);
	w->p += n;
	w->left -= n;
}

static void wr32(struct wr *w, uint32_t v) { wr_put(w, &v, 4); }
static void wr64(struct wr *w, uint64_t v) { wr_put(w, &v, 8); }

static void wr_name(struct wr *w, struct span s)
{
	if (s.len > RECORD_NAME_MAX) {
		w->bad = true;
		return;
	}
	wr32(w, (uint32_t)s.len);
	wr_put(w, s.p, s.len);
}

static struct wr wr_begin(uint8_t *out, size_t cap)
{
	if (cap < RECORD_HDR_LEN)
		return (struct wr){ NULL, 0, true };
	return (struct wr){ out + RECORD_HDR_LEN, cap - RECORD_HDR_LEN, false };
}

static size_t wr_end(struct wr *w, uint8_t *out, uint32_t type)
{
	size_t len;

	if (w->bad)
		return 0;
	len = (size_t)(w->p - out);
	if (len > RECORD_MAX_LEN)
		return 0;
	return record_seal(out, len, type);
}

size_t record_put_folder_hdr(uint8_t *out, size_t cap, const struct rec_folder_hdr *h)
{
	struct wr w = wr_begin(out, cap);
	wr32(&w, FOLDER_LOG_MAGIC);
	wr32(&w, h->gen ? FOLDER_LOG_VERSION_GEN : FOLDER_LOG_VERSION);
	wr32(&w, h->uidvalidity);
	wr32(&w, h->folder_id);
	if (h->gen) {
		wr32(&w, h->gen);
		wr32(&w, 0);
	}
	return wr_end(&w, out, REC_FOLDER_HDR);
}

size_t record_size_append(size_t bloblen)
{
	return RECORD_HDR_LEN + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 4 + 8 + 4 + bloblen;
}

size_t record_put_append(uint8_t *out, size_t cap, const struct rec_append *a)
{
	struct wr w = wr_begin(out, cap);

	if (a->blob.len > RECORD_BLOB_MAX)
		return 0;
	wr32(&w, a->uid);
	wr32(&w, a->seg);
	wr64(&w, a->off);
	wr64(&w, a->len);
	wr64(&w, (uint64_t)a->date);
	wr64(&w, a->modseq);
	wr32(&w, a->flags);
	wr32(&w, a->data_crc);
	wr64(&w, a->keywords);
	wr32(&w, (uint32_t)a->blob.len);
	wr_put(&w, a->blob.p, a->blob.len);
	return wr_end(&w, out, REC_APPEND);
}

size_t record_size_uids(uint32_t n)
{
	return RECORD_HDR_LEN + 8 + 4 + 4 + 8 + 4 + 4 * (size_t)n;
}

size_t record_put_flags(uint8_t *out, size_t cap, uint64_t modseq, uint32_t op,
			uint32_t flags, uint64_t keywords, const uint32_t *uids, uint32_t n)
{
	struct wr w = wr_begin(out, cap);

	if (n > RECORD_MAX_UIDS)
		return 0;
	wr64(&w, modseq);
	wr32(&w, op);
	wr32(&w, flags);
	wr64(&w, keywords);
	wr32(&w, n);
	wr_put(&w, uids, 4 * (size_t)n);
	return wr_end(&w, out, REC_FLAGS);
}

size_t record_put_expunge(uint8_t *out, size_t cap, uint64_t modseq,
			  const uint32_t *uids, uint32_t n)
{
	struct wr w = wr_begin(out, cap);

	if (n > RECORD_MAX_UIDS)
		return 0;
	wr64(&w, modseq);
	wr32(&w, n);
	wr_put(&w, uids, 4 * (size_t)n);
	return wr_end(&w, out, REC_EXPUNGE);
}

size_t record_put_keyword(uint8_t *out, size_t cap, uint32_t idx, struct span name)
{
	struct wr w = wr_begin(out, cap);
	wr32(&w, idx);
	wr_name(&w, name);
	return wr_end(&w, out, REC_KEYWORD);
}

size_t record_put_reloc(uint8_t *out, size_t cap, const struct rec_reloc *r)
{
	struct wr w = wr_begin(out, cap);
	wr32(&w, r->uid);
	wr32(&w, r->seg);
	wr64(&w, r->off);
	return wr_end(&w, out, REC_RELOC);
}

size_t record_size_state(uint32_t nruns)
{
	return RECORD_HDR_LEN + 4 + 4 + 8 + 8 + 4 + 4 + 16 * (size_t)nruns;
}

size_t record_put_state(uint8_t *out, size_t cap, const struct rec_state *st)
{
	struct wr w = wr_begin(out, cap);

	if (st->n > RECORD_STATE_RUNS_MAX)
		return 0;
	wr32(&w, st->uidnext);
	wr32(&w, st->max_seg);
	wr64(&w, st->highestmodseq);
	wr64(&w, st->gone_floor);
	wr32(&w, st->n);
	wr32(&w, 0);
	wr_put(&w, st->runs, 16 * (size_t)st->n);
	return wr_end(&w, out, REC_STATE);
}

size_t record_put_mbox(uint8_t *out, size_t cap, uint32_t type, const struct rec_mbox *m)
{
	struct wr w = wr_begin(out, cap);

	switch (type) {
	case REC_MBOX_CREATE:
		wr32(&w, m->id);
		wr32(&w, m->uidvalidity);
		wr_name(&w, m->name);
		break;
	case REC_MBOX_RENAME:
		wr32(&w, m->id);
		wr_name(&w, m->name);
		break;
	case REC_MBOX_DELETE:
		wr32(&w, m->id);
		break;
	case REC_MBOX_SUBSCRIBE:
		wr32(&w, m->on);
		wr_name(&w, m->name);
		break;
	default:
		return 0;
	}
	return wr_end(&w, out, type);
}
