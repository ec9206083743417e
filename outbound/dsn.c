/* dsn.c - DSN text (see dsn.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbound/dkim.h"
#include "outbound/dsn.h"

size_t dsn_header_len(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i + 3 < n; i++)
		if (!memcmp(p + i, "\r\n\r\n", 4))
			return i + 2;
	return n;
}

static void date_of(int64_t ms, char *out, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	localtime_r(&t, &tm);
	strftime(out, cap, "%a, %d %b %Y %H:%M:%S %z", &tm);
}

static size_t len0(const char *s)
{
	return s ? strlen(s) : 0;
}

/* Appends to t[*o..cap); past the end, the text is cut (cap is sized so it
 * never is) and *o stays at cap - 1. */
__attribute__((format(printf, 4, 5))) static void put(char *t, size_t cap, size_t *o,
						       const char *fmt, ...)
{
	if (*o + 1 >= cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(t + *o, cap - *o, fmt, ap);
	va_end(ap);
	if (n > 0)
		*o = *o + (size_t)n < cap ? *o + (size_t)n : cap - 1;
}

char *dsn_format(const struct dsn_msg *m, const struct dsn_rcpt *r, size_t n, size_t *len_r)
{
	size_t cap = 8192 + m->orig_len + len0(m->envid) + len0(m->intro) + 3 * len0(m->hostname) +
		     len0(m->to) + len0(m->subject) + 2 * len0(m->id);
	for (size_t i = 0; i < n; i++)
		cap += 256 + 2 * len0(r[i].addr) + len0(r[i].orcpt) + len0(r[i].diag) +
		       len0(r[i].note) + len0(r[i].retry_until);
	char *t = malloc(cap);
	if (!t)
		return NULL;
	char date[64], adate[64], boundary[64];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	date_of((int64_t)now.tv_sec * 1000, date, sizeof(date));
	date_of(m->arrival_ms, adate, sizeof(adate));
	snprintf(boundary, sizeof(boundary), "=_%.40s.%s", m->id, m->kind);
	size_t o = 0;
	put(t, cap, &o,
		"From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
		"To: <%s>\r\n"
		"Subject: %s\r\n"
		"Date: %s\r\n"
		"Message-ID: <%s.%zu.%s@%s>\r\n"
		"Auto-Submitted: auto-replied\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: multipart/report; report-type=delivery-status;\r\n"
		"\tboundary=\"%s\"\r\n"
		"\r\n"
		"This is a MIME-encapsulated message.\r\n"
		"\r\n"
		"--%s\r\n"
		"Content-Type: text/plain; charset=us-ascii\r\n"
		"\r\n"
		"This is the mail system at host %s.\r\n"
		"\r\n"
		"%s\r\n"
		"\r\n",
		m->hostname, m->to, m->subject, date, m->id, m->first, m->kind, m->hostname,
		boundary, boundary, m->hostname, m->intro);
	for (size_t i = 0; i < n; i++)
		put(t, cap, &o, "<%s>: %s\r\n", r[i].addr, r[i].note ? r[i].note : r[i].action);
	put(t, cap, &o,
		"\r\n--%s\r\n"
		"Content-Type: message/delivery-status\r\n"
		"\r\n", boundary);
	if (m->envid)
		put(t, cap, &o, "Original-Envelope-Id: %s\r\n", m->envid);
	put(t, cap, &o,
		"Reporting-MTA: dns; %s\r\n"
		"X-Ringmail-Queue-ID: %s\r\n"
		"Arrival-Date: %s\r\n",
		m->hostname, m->id, adate);
	for (size_t i = 0; i < n; i++) {
		put(t, cap, &o, "\r\n");
		const char *semi = r[i].orcpt ? strchr(r[i].orcpt, ';') : NULL;
		if (semi)
			/* "addr-type;xtext" as the client gave it (RFC 3461 4.2). */
			put(t, cap, &o, "Original-Recipient: %.*s; %s\r\n",
			    (int)(semi - r[i].orcpt), r[i].orcpt, semi + 1);
		put(t, cap, &o,
			"Final-Recipient: rfc822; %s\r\n"
			"Action: %s\r\n"
			"Status: %s\r\n",
			r[i].addr, r[i].action, r[i].status);
		if (r[i].diag)
			put(t, cap, &o, "Diagnostic-Code: smtp; %s\r\n", r[i].diag);
		if (r[i].retry_until)
			put(t, cap, &o, "Will-Retry-Until: %s\r\n", r[i].retry_until);
	}
	put(t, cap, &o, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary,
	    m->full ? "message/rfc822" : "text/rfc822-headers");
	if (m->orig_len && o + m->orig_len + 256 < cap) {
		memcpy(t + o, m->orig, m->orig_len);
		o += m->orig_len;
	}
	put(t, cap, &o, "\r\n--%s--\r\n", boundary);
	*len_r = o;
	return t;
}

char *dsn_sign(struct dkim *dk, const char *hostname, const char *text, size_t len)
{
	if (!dk)
		return NULL;
	for (const char *dom = hostname; dom && strchr(dom, '.');) {
		char *sig = dkim_sign(dk, dom, (const uint8_t *)text, len);
		if (sig)
			return sig;
		dom = strchr(dom, '.') + 1;
	}
	return NULL;
}
