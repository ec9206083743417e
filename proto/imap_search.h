/* imap_search.h - the IMAP SEARCH program (RFC 3501 6.4.4, RFC 9051 6.4.4,
 * ESEARCH RFC 4731, CONDSTORE's MODSEQ key RFC 7162): parse, evaluate, and
 * scan message bytes for BODY, TEXT and HEADER keys.
 *
 * Pure code: no allocation, no I/O, no globals. The session turns a
 * command's tokens into struct imap_search_tok, parses them into a struct
 * imap_search (its spans point into the tokens' bytes: keep those alive),
 * gives it memory for the substring tables (imap_search_prepare), then
 * per message:
 *
 *   r = imap_search_eval(s, &msg, NULL);       cheap keys only
 *   if (r == IMAP_SEARCH_MAYBE) {              a key needs the bytes
 *       imap_search_scan_begin(&sc, s, &msg);
 *       while (imap_search_scan_next(&sc, &off, &len)) {
 *           read up to len bytes at off (any amount > 0);
 *           imap_search_scan_feed(&sc, bytes);
 *           if ((r = imap_search_scan_result(&sc, &msg)) != MAYBE) break;
 *       }
 *       r = imap_search_scan_result(&sc, &msg);  definite once next is false
 *   }
 *
 * Strings are compared as bytes after ASCII case folding (UTF-8 needles
 * match UTF-8 text; other charsets of the message are not converted), with
 * Knuth-Morris-Pratt matchers whose state carries across reads: a match
 * split between two reads is found, and the work is linear in the bytes
 * read times the number of such keys, whatever the needle. */
#ifndef RINGMAIL_PROTO_IMAP_SEARCH_H
#define RINGMAIL_PROTO_IMAP_SEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/span.h"
#include "proto/decode.h"
#include "proto/imap_parse.h"
#include "proto/mime.h"

/* Keys in one program (every NOT, OR, parenthesized list counts one). */
#define IMAP_SEARCH_KEYS_MAX 512
/* Ranges of all sequence sets of one program. */
#define IMAP_SEARCH_SET_MAX 1024

/* One token of the command after "SEARCH". Text of a NIL is "NIL". */
enum imap_search_tok_kind {
	IMAP_STOK_ATOM,
	IMAP_STOK_NIL,
	IMAP_STOK_STRING, /* quoted (unquoted already) or literal */
	IMAP_STOK_LBEGIN,
	IMAP_STOK_LEND,
};

struct imap_search_tok {
	uint8_t kind;
	struct span text;
};

enum imap_search_kind {
	ISK_ALL, ISK_NONE, ISK_FLAG, ISK_KEYWORD, ISK_SEQ, ISK_UID, ISK_LARGER, ISK_SMALLER,
	ISK_BEFORE, ISK_ON, ISK_SINCE, ISK_SENTBEFORE, ISK_SENTON, ISK_SENTSINCE, ISK_MODSEQ,
	ISK_OLDER, ISK_YOUNGER, /* WITHIN (RFC 5032): num is the interval in seconds */
	ISK_HEADER, /* HEADER, FROM, TO, CC, BCC, SUBJECT */
	ISK_BODY, ISK_TEXT,
	ISK_SAVED,  /* "$" or "UID $" (RFC 5182): the saved result */
	ISK_NOT, ISK_OR, ISK_AND,
};

/* Keys in prefix order: NOT is followed by its key, OR by its two, AND
 * (a list, and the whole program as key 0) by num keys. */
struct imap_search_key {
	uint8_t kind;          /* enum imap_search_kind */
	bool neg;              /* ISK_FLAG / ISK_KEYWORD: UN- */
	int8_t field;          /* ISK_HEADER: the enum mime_field the blob keeps, or -1 */
	uint32_t flag;         /* ISK_FLAG: STORE_F_* bit */
	uint64_t num;          /* size, day (since the epoch), modseq, AND count;
				* ISK_KEYWORD: keyword bits, set by the caller */
	struct span name;      /* ISK_HEADER field name, ISK_KEYWORD keyword */
	struct span str;       /* the string to look for */
	uint32_t set_off, set_n;
	uint32_t fail_off;     /* the needle's table in the caller's array */
};

/* RETURN options (ESEARCH). */
#define IMAP_SEARCH_RET_MIN 1u
#define IMAP_SEARCH_RET_MAX 2u
#define IMAP_SEARCH_RET_COUNT 4u
#define IMAP_SEARCH_RET_ALL 8u
/* SEARCHRES (RFC 5182): keep the result for "$". Alone it suppresses the
 * ESEARCH response. */
#define IMAP_SEARCH_RET_SAVE 16u

/* What the byte keys need read. */
#define IMAP_SEARCH_NEED_HEADER 1u
#define IMAP_SEARCH_NEED_BODY 2u

struct imap_search {
	struct imap_search_key keys[IMAP_SEARCH_KEYS_MAX];
	size_t n;
	struct imap_range set[IMAP_SEARCH_SET_MAX];
	size_t set_used;
	bool esearch;          /* RETURN (...) was given */
	unsigned ret;          /* IMAP_SEARCH_RET_* (ALL when RETURN () is empty) */
	bool modseq;           /* a MODSEQ key: the reply carries the highest */
	bool uses_saved;       /* a "$" key: the caller sets imap_search_msg.saved */
	unsigned need;         /* IMAP_SEARCH_NEED_* */
	size_t nbytekeys;      /* HEADER, BODY and TEXT keys */
	size_t fail_len;       /* uint32_t entries imap_search_prepare() needs */
	const uint32_t *fail;  /* the tables (imap_search_prepare()) */
	const char *err;       /* after IMAP_SEARCH_BAD: why (a static string) */
	int64_t now;           /* OLDER/YOUNGER count back from it: the parse's
				* wall clock, seconds since the epoch */
};

enum imap_search_parse_result {
	IMAP_SEARCH_OK = 0,
	IMAP_SEARCH_BAD,        /* syntax: BAD, s->err says why */
	IMAP_SEARCH_BADCHARSET, /* NO [BADCHARSET (UTF-8 US-ASCII)] */
};

/* Parses "[RETURN (opts)] [CHARSET name] key..." from t[0..n). CHARSET
 * UTF-8 and US-ASCII are accepted (any case). The spans in *s point into
 * the tokens' text. Returns an enum imap_search_parse_result. */
int imap_search_parse(struct imap_search *s, const struct imap_search_tok *t, size_t n);

/* An RFC 3501 date ("1-Feb-1994", day of one or two digits, month in any
 * case, year 0001 to 9999) as days since the epoch, negative before
 * 1970; IMAP_SEARCH_DAY_INVALID when invalid (no such day either). */
#define IMAP_SEARCH_DAY_INVALID INT64_MIN
int64_t imap_search_parse_day(struct span s);

/* Builds the substring tables into fail[0..s->fail_len) (the caller's
 * memory, kept as long as the program is used; NULL when fail_len is 0).
 * Needed before evaluating or scanning. */
void imap_search_prepare(struct imap_search *s, uint32_t *fail);

/* ---- evaluation --------------------------------------------------------- */

enum imap_search_truth { IMAP_SEARCH_NO = 0, IMAP_SEARCH_YES = 1, IMAP_SEARCH_MAYBE = 2 };

/* A message as the evaluator sees it. */
struct imap_search_msg {
	uint32_t seq, uid;          /* its numbers */
	uint32_t star_seq, star_uid;/* what "*" means: the largest in use */
	uint32_t flags;
	uint64_t keywords, modseq, size;
	int64_t internal_date;      /* seconds since the epoch */
	bool saved;                 /* in the saved result ("$"); read only when
				       the program uses_saved */
	const struct mime_blob *mb; /* its structure; NULL when absent or corrupt */
};

/* Evaluates the program for m. res[k] is the outcome of byte key k
 * (HEADER/BODY/TEXT) so far, or res NULL when nothing was read: keys that
 * the structure blob cannot answer are then MAYBE. Returns an enum
 * imap_search_truth (three-valued: NOT MAYBE is MAYBE, NO AND MAYBE is NO). */
int imap_search_eval(const struct imap_search *s, const struct imap_search_msg *m,
		     const uint8_t *res);

/* ---- scanning message bytes ------------------------------------------------ */

/* Private state of one message's scan; read nothing but through the
 * functions below. About 7 KiB: keep it off small stacks. */
struct imap_search_scan {
	const struct imap_search *s;
	const struct mime_blob *mb;
	uint64_t size, pos, stop, hdr_end, seg_end;
	uint32_t next_part;
	uint8_t phase, hstate, seg_mode;
	bool name_ws, want_body, hdr_known;
	uint16_t nh, nb, nt;             /* header, body (BODY+TEXT), TEXT keys */
	uint16_t hk[IMAP_SEARCH_KEYS_MAX], bk[IMAP_SEARCH_KEYS_MAX], tk[IMAP_SEARCH_KEYS_MAX];
	uint32_t kmp[IMAP_SEARCH_KEYS_MAX];
	int32_t npos[IMAP_SEARCH_KEYS_MAX];
	uint8_t active[IMAP_SEARCH_KEYS_MAX];
	uint8_t res[IMAP_SEARCH_KEYS_MAX];
	struct decode_b64 b64;
	struct decode_qp qp;
	uint8_t dbuf[DECODE_OUT_MAX(1024)];
};

/* Starts scanning message m (size m->size, structure m->mb or none): only
 * what the keys still undecided need is read. The program (and its
 * tables) and m->mb must stay valid during the scan. */
void imap_search_scan_begin(struct imap_search_scan *sc, const struct imap_search *s,
			    const struct imap_search_msg *m);

/* The next bytes wanted: true with the offset and the most that may be read
 * there (read any amount from 1 to *len_r); false when the scan is over.
 * Header bytes are read from offset 0, body bytes from the body's start;
 * base64 parts that are not text/ * are skipped. */
bool imap_search_scan_next(struct imap_search_scan *sc, uint64_t *off_r, uint64_t *len_r);

/* Feeds the bytes read at the offset scan_next() gave (data.len at most
 * the length it allowed). */
void imap_search_scan_feed(struct imap_search_scan *sc, struct span data);

/* The result so far: definite (YES/NO) as soon as the keys read decide
 * it, and always once scan_next() returned false. */
int imap_search_scan_result(const struct imap_search_scan *sc, const struct imap_search_msg *m);

#endif
