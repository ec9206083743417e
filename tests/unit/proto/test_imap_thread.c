/* test_imap_thread.c - THREAD=REFERENCES (RFC 5256 4) on small mailboxes
 * whose threads are worked out by hand from the RFC's steps: chains,
 * siblings, dummies kept and pruned, subject merging with and without
 * replies, duplicate IDs, reference loops, date order; a chain of 200,000
 * replies (no recursion); and the message-ID scanner. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "proto/imap_sort.h"
#include "proto/imap_thread.h"

/* A message: its ID, its references (space-separated IDs, oldest
 * first), its Subject and a date (any order-preserving number). */
struct tm_msg {
	const char *id, *refs, *subject;
	uint64_t date;
};

static char *thread(const struct tm_msg *in, size_t n)
{
	struct imap_thread_msg *m = calloc(n, sizeof(*m));
	uint64_t refs[256];
	uint8_t subj[4096];
	size_t nr = 0, ns = 0;
	for (size_t i = 0; i < n; i++) {
		m[i].id = in[i].id ? imap_thread_id(span_cstr(in[i].id)) : 0;
		m[i].date = in[i].date;
		m[i].num = (uint32_t)(i + 1);
		m[i].order = (uint32_t)(i + 1);
		m[i].ref_off = (uint32_t)nr;
		if (in[i].refs) {
			char buf[256];
			snprintf(buf, sizeof(buf), "%s", in[i].refs);
			for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " "))
				refs[nr++] = imap_thread_id(span_cstr(tok));
		}
		m[i].ref_n = (uint32_t)(nr - m[i].ref_off);
		m[i].subj_off = (uint32_t)ns;
		m[i].subj_len = (uint32_t)imap_sort_base_subject_refwd(
			span_cstr(in[i].subject ? in[i].subject : ""), subj + ns, 256, &m[i].refwd);
		ns += m[i].subj_len;
	}
	size_t len;
	char *t = imap_thread_references(m, n, refs, subj, &len);
	cr_assert(t);
	char *z = malloc(len + 1);
	memcpy(z, t, len);
	z[len] = 0;
	free(t);
	free(m);
	return z;
}

#define CHECK(want, ...)                                                          \
	do {                                                                      \
		static const struct tm_msg in_[] = { __VA_ARGS__ };               \
		char *got_ = thread(in_, sizeof(in_) / sizeof(in_[0]));           \
		cr_assert_str_eq(got_, want);                                     \
		free(got_);                                                       \
	} while (0)

Test(thread, chains_and_siblings)
{
	CHECK("(1 2 3)", { "<a>", NULL, "s", 1 }, { "<b>", "<a>", "Re: s", 2 },
	      { "<c>", "<a> <b>", "Re: s", 3 });
	CHECK("(1 (2)(3))", { "<a>", NULL, "s", 1 }, { "<b>", "<a>", "Re: s", 2 },
	      { "<c>", "<a>", "Re: s", 3 });
	/* the References chain links a and b even though only c names them */
	CHECK("(1 2 3)", { "<a>", NULL, "x", 1 }, { "<b>", NULL, "y", 2 },
	      { "<c>", "<a> <b>", "z", 3 });
	/* siblings by date, not by number */
	CHECK("(1 (3)(2))", { "<a>", NULL, "s", 1 }, { "<b>", "<a>", "Re: s", 9 },
	      { "<c>", "<a>", "Re: s", 5 });
}

Test(thread, dummies)
{
	/* the parent is not in the mailbox: a dummy with two children stays
	 * at the top */
	CHECK("((1)(2))", { "<b>", "<a>", "Re: s", 1 }, { "<c>", "<a>", "Re: s", 2 });
	/* a dummy with one child gives way to it */
	CHECK("(1 2)", { "<b>", "<a>", "Re: s", 1 }, { "<c>", "<b>", "Re: s", 2 });
	/* a dummy below a message is replaced by its children */
	CHECK("(1 (2)(3))", { "<a>", NULL, "s", 1 }, { "<c>", "<a> <x>", "Re: s", 2 },
	      { "<d>", "<a> <x>", "Re: s", 3 });
}

Test(thread, subjects)
{
	/* a reply without references joins the thread of its subject */
	CHECK("(1 2)", { "<a>", NULL, "hello", 1 }, { "<b>", NULL, "Re: hello", 2 });
	CHECK("(2 1)", { "<b>", NULL, "Re: hello", 2 }, { "<a>", NULL, "hello", 1 });
	/* two that are not replies: both under a new dummy */
	CHECK("((1)(2))", { "<a>", NULL, "hello", 1 }, { "<b>", NULL, "hello", 2 });
	/* an empty subject merges nothing */
	CHECK("(1)(2)", { "<a>", NULL, "", 1 }, { "<b>", NULL, "Re:", 2 });
	/* different subjects: threads in date order */
	CHECK("(2)(1)(3)", { "<a>", NULL, "one", 5 }, { "<b>", NULL, "two", 1 },
	      { "<c>", NULL, "three", 7 });
}

Test(thread, duplicates_and_loops)
{
	/* the second <a> is another message; the reply goes to the first */
	CHECK("(1 3)(2)", { "<a>", NULL, "x", 1 }, { "<a>", NULL, "y", 2 },
	      { "<r>", "<a>", "z", 3 });
	/* a and b name each other: no loop is made */
	CHECK("(2 1)", { "<a>", "<b>", "p", 1 }, { "<b>", "<a>", "q", 1 });
	/* a message that names itself */
	CHECK("(1)", { "<a>", "<a>", "p", 1 });
	/* no Message-ID at all */
	CHECK("(1)(2)", { NULL, NULL, "p", 1 }, { NULL, "<zz>", "q", 2 });
}

Test(thread, deep_chain_has_no_recursion)
{
	size_t n = 200000;
	struct imap_thread_msg *m = calloc(n, sizeof(*m));
	uint64_t *refs = malloc(n * sizeof(*refs));
	uint8_t subj[1] = { 'S' };
	for (size_t i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "<%zu@x>", i);
		m[i].id = imap_thread_id(span_cstr(id));
		refs[i] = m[i].id;
		m[i].date = i;
		m[i].num = m[i].order = (uint32_t)(i + 1);
		m[i].ref_off = i ? (uint32_t)(i - 1) : 0;
		m[i].ref_n = i ? 1 : 0;
		m[i].subj_len = 1;
	}
	size_t len;
	char *t = imap_thread_references(m, n, refs, subj, &len);
	cr_assert(t);
	cr_assert(len > 2 && t[0] == '(' && t[len - 1] == ')');
	cr_assert_eq(memcmp(t, "(1 2 3 4 ", 9), 0);
	cr_assert(memchr(t + 1, '(', len - 1) == NULL); /* one chain */
	free(t);
	/* and as a comb: every message a child of the first (one level,
	 * 200,000 siblings) */
	for (size_t i = 1; i < n; i++)
		m[i].ref_off = 0;
	t = imap_thread_references(m, n, refs, subj, &len);
	cr_assert(t);
	cr_assert_eq(memcmp(t, "(1 (2)(3)", 9), 0);
	free(t);
	free(m);
	free(refs);
}

static void collect(void *arg, struct span id)
{
	char *out = arg;
	strncat(out, (const char *)id.p, id.len);
	strcat(out, "|");
}

Test(thread, message_id_scanner)
{
	char out[256] = "";
	cr_assert_eq(imap_thread_ids(SPAN_LIT("<a@x> (comment <no@x>)\r\n <b@y>  junk <c@z>"), 10,
				     collect, out), 3);
	cr_assert_str_eq(out, "<a@x>|<b@y>|<c@z>|");
	out[0] = 0;
	cr_assert_eq(imap_thread_ids(SPAN_LIT("<> <a b> <ok> <unclosed"), 10, collect, out), 1);
	cr_assert_str_eq(out, "<ok>|");
	out[0] = 0;
	cr_assert_eq(imap_thread_ids(SPAN_LIT("<1> <2> <3>"), 2, collect, out), 2);
	cr_assert_str_eq(out, "<1>|<2>|");
	cr_assert_neq(imap_thread_id(SPAN_LIT("<a@x>")), imap_thread_id(SPAN_LIT("<A@x>")));
	cr_assert_neq(imap_thread_id(SPAN_LIT("")), 0);
}
