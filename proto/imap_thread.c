/* imap_thread.c - THREAD=REFERENCES (RFC 5256 4). See imap_thread.h.
 *
 * Nodes ("containers") hold a message or are dummies standing for a
 * referenced message that is not among the hits; they link by index
 * (parent, first child, next sibling). The steps are the RFC's: link
 * by References (1), gather the roots (2), prune dummies (3), sort the
 * roots (4), merge roots by base subject (5), sort every set of siblings
 * (6). Every walk of the tree is a loop, not a recursion: a chain of
 * replies can be as deep as the mailbox is large. */
#include "proto/imap_thread.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

uint64_t imap_thread_id(struct span id)
{
	uint64_t h = 14695981039346656037ull;
	for (size_t i = 0; i < id.len; i++) {
		h ^= id.p[i];
		h *= 1099511628211ull;
	}
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	return h ? h : 1;
}

size_t imap_thread_ids(struct span v, size_t max, void (*fn)(void *arg, struct span id),
		       void *arg)
{
	size_t n = 0, i = 0;
	int depth = 0;
	while (i < v.len && n < max) {
		uint8_t c = v.p[i];
		if (c == '(') {
			depth++;
		} else if (c == ')' && depth) {
			depth--;
		} else if (c == '<' && !depth) {
			size_t j = i + 1;
			while (j < v.len && v.p[j] != '>' && v.p[j] != '<' && v.p[j] > ' ')
				j++;
			if (j < v.len && v.p[j] == '>' && j > i + 1) {
				fn(arg, span_make(v.p + i, j + 1 - i));
				n++;
				i = j;
			}
		}
		i++;
	}
	return n;
}

struct node {
	uint32_t parent, child, next, msg; /* msg NONE: a dummy */
	uint32_t nkids;
	uint64_t id;
};

struct thr {
	struct node *nd;
	size_t nn;
	uint32_t *tab; /* id -> node, open addressing; NONE: empty */
	size_t tmask;
	uint32_t *scratch;
	const struct imap_thread_msg *m;
	const uint8_t *subj;
};

static uint32_t node_new(struct thr *t, uint64_t id, uint32_t msg)
{
	uint32_t k = (uint32_t)t->nn++;
	t->nd[k] = (struct node){ .parent = NONE, .child = NONE, .next = NONE, .msg = msg, .id = id };
	return k;
}

/* The node of id (never 0), made a dummy when new. */
static uint32_t node_of(struct thr *t, uint64_t id)
{
	size_t i = (size_t)id & t->tmask;
	while (t->tab[i] != NONE) {
		if (t->nd[t->tab[i]].id == id)
			return t->tab[i];
		i = (i + 1) & t->tmask;
	}
	return t->tab[i] = node_new(t, id, NONE);
}

/* Steps of one loop check (a walk up the tree) before it gives up and
 * counts as a loop: the link is not made. Real threads are far less deep;
 * the bound keeps a crafted mailbox from making THREAD quadratic. */
#define THREAD_WALK_MAX 1024

/* Whether linking b under a would make a loop: a is b, or b is one of
 * a's ancestors (or the walk is too long to tell). A node without
 * children is nobody's ancestor. */
static bool would_loop(const struct thr *t, uint32_t a, uint32_t b)
{
	if (a == b)
		return true;
	if (t->nd[b].child == NONE)
		return false;
	unsigned steps = 0;
	for (uint32_t k = t->nd[a].parent; k != NONE; k = t->nd[k].parent)
		if (k == b || ++steps > THREAD_WALK_MAX)
			return true;
	return false;
}

static void unlink_node(struct thr *t, uint32_t c)
{
	uint32_t p = t->nd[c].parent;
	if (p == NONE)
		return;
	uint32_t *q = &t->nd[p].child;
	while (*q != c)
		q = &t->nd[*q].next;
	*q = t->nd[c].next;
	t->nd[p].nkids--;
	t->nd[c].parent = t->nd[c].next = NONE;
}

/* c becomes p's child (c has no parent). */
static void add_child(struct thr *t, uint32_t p, uint32_t c)
{
	t->nd[c].parent = p;
	t->nd[c].next = t->nd[p].child;
	t->nd[p].child = c;
	t->nd[p].nkids++;
}

/* The message that stands for node k: its own, or its first child's. */
static uint32_t msg_for(const struct thr *t, uint32_t k)
{
	while (k != NONE && t->nd[k].msg == NONE)
		k = t->nd[k].child;
	return k == NONE ? NONE : t->nd[k].msg;
}

static int by_date(const void *x, const void *y, void *arg)
{
	const struct thr *t = arg;
	uint32_t a = msg_for(t, *(const uint32_t *)x), b = msg_for(t, *(const uint32_t *)y);
	uint64_t da = a == NONE ? 0 : t->m[a].date, db = b == NONE ? 0 : t->m[b].date;
	if (da != db)
		return da < db ? -1 : 1;
	uint32_t oa = a == NONE ? 0 : t->m[a].order, ob = b == NONE ? 0 : t->m[b].order;
	return (oa > ob) - (oa < ob);
}

/* Sorts p's children by sent date (RFC 5256 2.2; a dummy by its first
 * child's). */
static void sort_kids(struct thr *t, uint32_t p)
{
	size_t n = 0;
	for (uint32_t c = t->nd[p].child; c != NONE; c = t->nd[c].next)
		t->scratch[n++] = c;
	if (n < 2)
		return;
	qsort_r(t->scratch, n, sizeof(uint32_t), by_date, t);
	t->nd[p].child = t->scratch[0];
	for (size_t i = 0; i < n; i++)
		t->nd[t->scratch[i]].next = i + 1 < n ? t->scratch[i + 1] : NONE;
}

/* (3) Prunes the dummies under root, top down. */
static void prune(struct thr *t, uint32_t root, uint32_t *stack)
{
	size_t sp = 0;
	stack[sp++] = root;
	while (sp) {
		uint32_t p = stack[--sp];
		uint32_t queue = t->nd[p].child, head = NONE, nk = 0;
		while (queue != NONE) {
			uint32_t c = queue;
			queue = t->nd[c].next;
			if (t->nd[c].msg == NONE) {
				if (t->nd[c].child == NONE)
					continue; /* a dummy without children goes */
				if (!(p == root && t->nd[c].nkids > 1)) {
					/* its children take its place at this level */
					uint32_t last = t->nd[c].child;
					while (t->nd[last].next != NONE)
						last = t->nd[last].next;
					t->nd[last].next = queue;
					queue = t->nd[c].child;
					continue;
				}
			}
			t->nd[c].parent = p;
			t->nd[c].next = head;
			head = c;
			nk++;
			stack[sp++] = c;
		}
		t->nd[p].child = head;
		t->nd[p].nkids = nk;
	}
}

/* The subject table of step 5: a base subject (kept as it was when it
 * went in: a dummy's first child changes as threads merge into it) and
 * the root child it stands for. */
struct subj_slot {
	uint32_t node;
	struct span s;
};

static struct span thread_subject(const struct thr *t, uint32_t k)
{
	uint32_t m = msg_for(t, k);
	if (m == NONE)
		return span_make(NULL, 0);
	return span_make(t->subj + t->m[m].subj_off, t->m[m].subj_len);
}

static struct subj_slot *subj_find(struct subj_slot *tab, size_t mask, struct span s)
{
	size_t i = (size_t)imap_thread_id(s) & mask;
	while (tab[i].node != NONE &&
	       !(tab[i].s.len == s.len && memcmp(tab[i].s.p, s.p, s.len) == 0))
		i = (i + 1) & mask;
	return &tab[i];
}

static bool is_dummy(const struct thr *t, uint32_t k) { return t->nd[k].msg == NONE; }

static bool refwd(const struct thr *t, uint32_t k)
{
	return !is_dummy(t, k) && t->m[t->nd[k].msg].refwd;
}

/* (5) Merges the root's children that have one base subject. */
static int merge_subjects(struct thr *t, uint32_t root)
{
	size_t nr = 0, cap = 16;
	for (uint32_t c = t->nd[root].child; c != NONE; c = t->nd[c].next)
		nr++;
	while (cap < nr * 2)
		cap *= 2;
	uint32_t *roots = malloc((nr + 1) * sizeof(*roots));
	struct subj_slot *tab = malloc(cap * sizeof(*tab));
	if (!roots || !tab) {
		free(roots);
		free(tab);
		return -1;
	}
	for (size_t i = 0; i < cap; i++)
		tab[i].node = NONE;
	/* roots[] in date order (step 4); scratch[node]: its place there */
	nr = 0;
	for (uint32_t c = t->nd[root].child; c != NONE; c = t->nd[c].next) {
		t->scratch[c] = (uint32_t)nr;
		roots[nr++] = c;
	}
	for (size_t i = 0; i < nr; i++) {
		uint32_t c = roots[i];
		struct span s = thread_subject(t, c);
		if (s.len == 0)
			continue;
		struct subj_slot *e = subj_find(tab, cap - 1, s);
		if (e->node == NONE)
			*e = (struct subj_slot){ .node = c, .s = s };
		else if (!is_dummy(t, e->node) &&
			 (is_dummy(t, c) || (refwd(t, e->node) && !refwd(t, c))))
			e->node = c;
	}
	/* the root's children are rebuilt from roots[] (NONE: merged away) */
	for (size_t i = 0; i < nr; i++) {
		uint32_t c = roots[i];
		struct span s = thread_subject(t, c);
		if (s.len == 0)
			continue;
		struct subj_slot *e = subj_find(tab, cap - 1, s);
		uint32_t o = e->node;
		if (o == c)
			continue;
		if (is_dummy(t, o) && is_dummy(t, c)) {
			while (t->nd[c].child != NONE) {
				uint32_t k = t->nd[c].child;
				t->nd[c].child = t->nd[k].next;
				add_child(t, o, k);
			}
		} else if (is_dummy(t, o) || (refwd(t, c) && !refwd(t, o))) {
			add_child(t, o, c);
		} else {
			/* a new dummy takes o's place among the roots */
			uint32_t d = node_new(t, 0, NONE);
			roots[t->scratch[o]] = d;
			t->scratch[d] = t->scratch[o];
			add_child(t, d, o);
			add_child(t, d, c);
			e->node = d;
		}
		roots[i] = NONE;
	}
	t->nd[root].child = NONE;
	t->nd[root].nkids = 0;
	for (size_t i = nr; i-- > 0;)
		if (roots[i] != NONE)
			add_child(t, root, roots[i]);
	free(roots);
	free(tab);
	return 0;
}

struct out {
	char *p;
	size_t w, cap;
};

static void put(struct out *o, const char *s)
{
	size_t n = strlen(s);
	memcpy(o->p + o->w, s, n);
	o->w += n;
}

static void put_num(struct out *o, const struct thr *t, uint32_t k)
{
	o->w += (size_t)snprintf(o->p + o->w, o->cap - o->w, "%" PRIu32, t->m[t->nd[k].msg].num);
}

/* Writes "(" subtree ")" for node k; frames hold the next child to
 * write (NONE: none left), or the node itself on the way in. */
static void write_thread(struct out *o, const struct thr *t, uint32_t k, uint32_t *stack)
{
	size_t sp = 0;
	put(o, "(");
	for (;;) {
		if (k != NONE) {
			/* into k (inside its parentheses already) */
			uint32_t x = k;
			if (!is_dummy(t, x)) {
				put_num(o, t, x);
				while (t->nd[x].nkids == 1) {
					x = t->nd[x].child;
					put(o, " ");
					put_num(o, t, x);
				}
				if (t->nd[x].nkids)
					put(o, " ");
			}
			stack[sp++] = t->nd[x].child;
			k = NONE;
			continue;
		}
		if (sp == 0)
			break;
		uint32_t next = stack[sp - 1];
		if (next == NONE) {
			put(o, ")");
			sp--;
			continue;
		}
		stack[sp - 1] = t->nd[next].next;
		put(o, "(");
		k = next;
	}
}

char *imap_thread_references(const struct imap_thread_msg *msgs, size_t n, const uint64_t *refs,
			     const uint8_t *subjects, size_t *len_r)
{
	size_t nref = 0;
	for (size_t i = 0; i < n; i++)
		nref += msgs[i].ref_n;
	size_t cap = 2 * n + nref + 2, tsize = 16;
	while (tsize < 2 * (n + nref))
		tsize *= 2;
	struct thr t = { .m = msgs, .subj = subjects, .tmask = tsize - 1 };
	t.nd = malloc(cap * sizeof(*t.nd));
	t.tab = malloc(tsize * sizeof(uint32_t));
	t.scratch = malloc(cap * sizeof(uint32_t));
	uint32_t *stack = malloc((cap + 1) * sizeof(uint32_t));
	struct out o = { .cap = cap * 16 + 16 };
	o.p = malloc(o.cap);
	char *res = NULL;
	if (!t.nd || !t.tab || !t.scratch || !stack || !o.p)
		goto out;
	memset(t.tab, 0xff, tsize * sizeof(uint32_t));
	/* (1) */
	for (uint32_t i = 0; i < n; i++) {
		const struct imap_thread_msg *m = &msgs[i];
		uint32_t x = NONE;
		if (m->id) {
			x = node_of(&t, m->id);
			if (t.nd[x].msg != NONE)
				x = NONE; /* a duplicate Message-ID: unique then */
			else
				t.nd[x].msg = i;
		}
		if (x == NONE)
			x = node_new(&t, 0, i);
		uint32_t prev = NONE;
		for (uint32_t r = 0; r < m->ref_n; r++) {
			uint32_t c = node_of(&t, refs[m->ref_off + r]);
			/* (A) first the parent of the second ..., never
			 * changing a link or making a loop */
			if (prev != NONE && t.nd[c].parent == NONE && !would_loop(&t, prev, c))
				add_child(&t, prev, c);
			prev = c;
		}
		/* (B) the last reference is the parent (no reference: none) */
		if (prev == NONE) {
			unlink_node(&t, x);
		} else if (t.nd[x].parent != prev && !would_loop(&t, prev, x)) {
			unlink_node(&t, x);
			add_child(&t, prev, x);
		}
	}
	/* (2) */
	uint32_t root = node_new(&t, 0, NONE);
	for (uint32_t k = 0; k < root; k++)
		if (t.nd[k].parent == NONE)
			add_child(&t, root, k);
	/* (3), (4) */
	prune(&t, root, stack);
	for (uint32_t c = t.nd[root].child; c != NONE; c = t.nd[c].next)
		if (is_dummy(&t, c))
			sort_kids(&t, c);
	sort_kids(&t, root);
	/* (5) */
	if (merge_subjects(&t, root))
		goto out;
	/* (6) every set of siblings, the deepest first: in reverse of a
	 * breadth-first order, a node's children come before it */
	size_t q = 0, qe = 0;
	stack[qe++] = root;
	while (q < qe)
		for (uint32_t c = t.nd[stack[q++]].child; c != NONE; c = t.nd[c].next)
			stack[qe++] = c;
	for (size_t i = qe; i-- > 0;)
		sort_kids(&t, stack[i]);
	for (uint32_t c = t.nd[root].child; c != NONE; c = t.nd[c].next)
		write_thread(&o, &t, c, stack);
	res = o.p;
	o.p = NULL;
	*len_r = o.w;
out:
	free(o.p);
	free(t.nd);
	free(t.tab);
	free(t.scratch);
	free(stack);
	return res;
}
