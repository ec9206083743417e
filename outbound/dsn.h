/* dsn.h - delivery status notifications (RFC 3464 multipart/report) as
 * text: bounces and delay notices made by the queue runner, and the success
 * notices (RFC 3461 NOTIFY=SUCCESS) made by the runner ("relayed") and by
 * SMTP local delivery ("delivered", "expanded"). Pure: no I/O. */
#ifndef RINGMAIL_OUTBOUND_DSN_H
#define RINGMAIL_OUTBOUND_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dkim;

/* One recipient's report. orcpt ("type;xtext" as the client gave it),
 * diag and retry_until may be NULL. */
struct dsn_rcpt {
	const char *addr;
	const char *orcpt;
	const char *action;      /* "failed" "delayed" "delivered" "relayed" "expanded" */
	const char *status;      /* "5.1.1", "2.0.0" ... */
	const char *diag;        /* the remote reply: Diagnostic-Code: smtp; ... */
	const char *retry_until; /* a date: Will-Retry-Until */
	const char *note;        /* the human part's line for it: "<addr>: note" */
};

struct dsn_msg {
	const char *hostname;   /* Reporting-MTA and the From's domain */
	const char *to;         /* the envelope sender the DSN goes to */
	const char *envid;      /* ENVID (xtext), or NULL */
	const char *id;         /* the message's id here: X-Ringmail-Queue-ID */
	const char *kind;       /* "dsn" "delay" "success": Message-ID part */
	size_t first;           /* the first reported recipient's index: Message-ID part */
	const char *subject;
	const char *intro;      /* the human part's first paragraph (CRLF lines) */
	int64_t arrival_ms;     /* Arrival-Date */
	const uint8_t *orig;    /* the original: its header section, or all of it */
	size_t orig_len;
	bool full;              /* orig is the whole message (message/rfc822) */
};

/* The length of the header section of p (up to and including the CRLF
 * before the empty line), or n when it does not end within p. */
size_t dsn_header_len(const uint8_t *p, size_t n);

/* The DSN as CRLF text (malloc'ed, *len_r bytes), or NULL when memory is
 * short. */
char *dsn_format(const struct dsn_msg *m, const struct dsn_rcpt *r, size_t n, size_t *len_r);

/* A DSN comes From MAILER-DAEMON@hostname. Receivers that check DMARC want
 * it signed by an aligned domain: the key of hostname, or else of its
 * nearest parent domain that has one (relaxed alignment: a From at
 * mail.example.com aligns with d=example.com). Returns the DKIM-Signature
 * field (caller frees), or NULL: no such key (dk may be NULL), unsigned. */
char *dsn_sign(struct dkim *dk, const char *hostname, const char *text, size_t len);

#endif
