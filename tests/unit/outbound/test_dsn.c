/* test_dsn.c - the DSN text (outbound/dsn.c): RFC 3464 structure, what each
 * recipient group carries, the quoted original, and long fields. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "outbound/dsn.h"

static char *fmt(const struct dsn_msg *m, const struct dsn_rcpt *r, size_t n, size_t *len)
{
	char *t = dsn_format(m, r, n, len);
	cr_assert_not_null(t);
	cr_assert_eq(strlen(t), *len, "NUL inside or length wrong");
	return t;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

Test(dsn, header_len)
{
	cr_assert_eq(dsn_header_len((const uint8_t *)"A: b\r\n\r\nbody", 13), 6);
	cr_assert_eq(dsn_header_len((const uint8_t *)"A: b\r\nC: d\r\n", 12), 12);
	cr_assert_eq(dsn_header_len((const uint8_t *)"\r\n\r\n", 4), 2);
	cr_assert_eq(dsn_header_len((const uint8_t *)"", 0), 0);
}

Test(dsn, success_notice_structure)
{
	const char orig[] = "From: a@example.com\r\nSubject: hi\r\n\r\n";
	struct dsn_rcpt r[2] = {
		{ .addr = "a@example.com", .orcpt = "rfc822;me@example.org", .action = "delivered",
		  .status = "2.0.0", .note = "delivered to the mailbox" },
		{ .addr = "team@example.com", .action = "expanded", .status = "2.0.0" },
	};
	struct dsn_msg m = { .hostname = "mail.example.com", .to = "a@example.com",
			     .envid = "env+2B1", .id = "1f.2", .kind = "success",
			     .subject = "Successful Mail Delivery Report", .intro = "Delivered.",
			     .arrival_ms = 1795700000000, .orig = (const uint8_t *)orig,
			     .orig_len = sizeof(orig) - 1 };
	size_t len;
	char *t = fmt(&m, r, 2, &len);
	cr_assert(strstr(t, "From: Mail Delivery System <MAILER-DAEMON@mail.example.com>\r\n"));
	cr_assert(strstr(t, "To: <a@example.com>\r\n"));
	cr_assert(strstr(t, "Message-ID: <1f.2.0.success@mail.example.com>\r\n"));
	cr_assert(strstr(t, "report-type=delivery-status"));
	cr_assert(strstr(t, "Original-Envelope-Id: env+2B1\r\nReporting-MTA: dns; mail.example.com\r\n"));
	cr_assert(strstr(t, "\r\n\r\nOriginal-Recipient: rfc822; me@example.org\r\n"
			    "Final-Recipient: rfc822; a@example.com\r\nAction: delivered\r\n"
			    "Status: 2.0.0\r\n"));
	cr_assert(strstr(t, "\r\n\r\nFinal-Recipient: rfc822; team@example.com\r\n"
			    "Action: expanded\r\nStatus: 2.0.0\r\n"));
	cr_assert(strstr(t, "<a@example.com>: delivered to the mailbox\r\n"));
	cr_assert(strstr(t, "<team@example.com>: expanded\r\n")); /* no note: the action */
	cr_assert_eq(count(t, "Diagnostic-Code"), 0);
	cr_assert(strstr(t, "Content-Type: text/rfc822-headers\r\n\r\nFrom: a@example.com\r\n"
			    "Subject: hi\r\n\r\n"));
	/* three parts and the closing boundary, last */
	cr_assert_eq(count(t, "--=_1f.2.success\r\n"), 3);
	const char *end = "\r\n--=_1f.2.success--\r\n";
	cr_assert_str_eq(t + len - strlen(end), end);
	free(t);
}

Test(dsn, long_fields_fit_and_no_original)
{
	char diag[4000];
	memset(diag, 'x', sizeof(diag) - 1);
	diag[sizeof(diag) - 1] = '\0';
	struct dsn_rcpt r[40];
	for (size_t i = 0; i < 40; i++)
		r[i] = (struct dsn_rcpt){ .addr = "b@remote.example", .action = "failed",
					  .status = "5.1.1", .diag = diag, .note = diag,
					  .retry_until = "Thu, 1 Jan 2027 00:00:00 +0000" };
	struct dsn_msg m = { .hostname = "mail.example.com", .to = "a@example.com", .id = "9",
			     .kind = "dsn", .subject = "Undelivered", .intro = "Failed." };
	size_t len;
	char *t = fmt(&m, r, 40, &len);
	cr_assert_eq(count(t, "Diagnostic-Code: smtp; "), 40, "nothing was cut");
	cr_assert_eq(count(t, "Will-Retry-Until: "), 40);
	cr_assert(strstr(t, "Content-Type: text/rfc822-headers\r\n\r\n\r\n--=_9.dsn--\r\n"));
	free(t);
}
