/* Unit tests for proto/discovery.c: address checks, XML escaping, the
 * domain a Host names, the Autodiscover request extraction, deterministic
 * UUIDs, and the rows and order of each document. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "table_test.h"
#include "proto/discovery.h"

static void two_domains(struct config *cfg)
{
	config_defaults(cfg);
	strcpy(cfg->domains[0], "example.com");
	strcpy(cfg->domains[1], "example.org");
	cfg->ndomains = 2;
}

struct addr_case {
	const char *in;
	int rc;
	const char *out;
};

static const struct addr_case addr_cases[] = {
	{ "bob@example.com", 0, "bob@example.com" },
	{ "Bob.Smith@EXAMPLE.ORG", 0, "Bob.Smith@example.org" },
	{ "a&b'c+d@example.com", 0, "a&b'c+d@example.com" },
	{ "bob@example.net", -ENOENT, NULL },
	{ "bob@sub.example.com", -ENOENT, NULL },
	{ "bob", -EINVAL, NULL },
	{ "@example.com", -EINVAL, NULL },
	{ "bob@", -EINVAL, NULL },
	{ ".bob@example.com", -EINVAL, NULL },
	{ "bob.@example.com", -EINVAL, NULL },
	{ "b..ob@example.com", -EINVAL, NULL },
	{ "<b>@example.com", -EINVAL, NULL },
	{ "b\"o@example.com", -EINVAL, NULL },
	{ "b o@example.com", -EINVAL, NULL },
	{ "bob@exa<mple.com", -EINVAL, NULL },
	{ "bob@example..com", -EINVAL, NULL },
	{ "a@b@example.com", -EINVAL, NULL },
	{ "x12345678901234567890123456789012345678901234567890123456789012345@example.com",
	  -EINVAL, NULL },
};

static void check_addr(const struct addr_case *c)
{
	struct config cfg;
	char out[DISCOVERY_ADDRESS_MAX + 1];
	two_domains(&cfg);
	int rc = discovery_check_address(span_cstr(c->in), cfg.domains, cfg.ndomains, out,
					 sizeof(out));
	cr_assert_eq(rc, c->rc, "%s: rc %d", c->in, rc);
	if (!rc)
		cr_assert_str_eq(out, c->out);
}

TABLE_TEST(discovery, address, addr_cases, check_addr)

Test(discovery, escaping)
{
	struct discovery_buf b = { 0 };
	discovery_buf_xml(&b, "a&b<c>d\"e'f");
	discovery_buf_add(&b, "", 1);
	cr_assert_str_eq(b.p, "a&amp;b&lt;c&gt;d&quot;e&apos;f");
	discovery_buf_free(&b);
}

Test(discovery, buffer_cap)
{
	struct discovery_buf b = { 0 };
	char *big = malloc(DISCOVERY_DOC_MAX + 1);
	memset(big, 'x', DISCOVERY_DOC_MAX + 1);
	discovery_buf_add(&b, big, DISCOVERY_DOC_MAX);
	cr_assert(!b.failed);
	discovery_buf_add(&b, big, 1);
	cr_assert(b.failed);
	discovery_buf_free(&b);
	free(big);
}

Test(discovery, domain_for_host)
{
	struct config cfg;
	two_domains(&cfg);
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("autoconfig.example.org")),
			 "example.org");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("Example.ORG:443")),
			 "example.org");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("example.org.")), "example.org");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("mail.example.com")),
			 "example.com");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("127.0.0.1:8080")),
			 "example.com");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("[::1]:80")), "example.com");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("localhost")), "example.com");
	cr_assert_str_eq(discovery_domain_for_host(&cfg, SPAN_LIT("")), "example.com");
	cr_assert_null(discovery_domain_for_host(&cfg, SPAN_LIT("autoconfig.example.net")));
	cr_assert_null(discovery_domain_for_host(&cfg, SPAN_LIT("a.b.example.com")));
}

Test(discovery, autodiscover_email)
{
	char out[DISCOVERY_ADDRESS_MAX + 1];
	static const char body[] =
		"<?xml version=\"1.0\"?><Autodiscover xmlns=\"x\"><Request>"
		"<EMailAddress>\n  bob@example.com </EMailAddress>"
		"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
		"outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
	cr_assert_eq(discovery_autodiscover_email(span_cstr(body), out, sizeof(out)), 15);
	cr_assert_str_eq(out, "bob@example.com");
	cr_assert(!discovery_autodiscover_other_schema(span_cstr(body)));
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<a:emailaddress x=\"1\">a&amp;b@c</a:emailaddress>"),
						  out, sizeof(out)), 5);
	cr_assert_str_eq(out, "a&b@c");
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<EMailAddress/><EMailAddress>x@y</EMailAddress>"),
						  out, sizeof(out)), 3);
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<XEMailAddress>x@y</XEMailAddress>"),
						  out, sizeof(out)), -1);
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<EMailAddress>x@y"), out, sizeof(out)), -1);
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<EMailAddress>&#64;</EMailAddress>"),
						  out, sizeof(out)), -1);
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT("<EMailAddress>abcdef</EMailAddress>"),
						  out, 4), -1);
	cr_assert_eq(discovery_autodiscover_email(SPAN_LIT(""), out, sizeof(out)), -1);
	cr_assert(discovery_autodiscover_other_schema(SPAN_LIT(
		"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
		"mobilesync/responseschema/2006</AcceptableResponseSchema>")));
}

Test(discovery, uuid)
{
	char a[37], b[37], c[37];
	discovery_uuid("k", "host", "bob@example.com", a);
	discovery_uuid("k", "host", "bob@example.com", b);
	discovery_uuid("k", "host", "eve@example.com", c);
	cr_assert_str_eq(a, b);
	cr_assert_str_neq(a, c);
	cr_assert_eq(strlen(a), 36);
	cr_assert_eq(a[8], '-');
	cr_assert_eq(a[14], '8'); /* version 8 */
	cr_assert(strchr("89AB", a[19]) != NULL); /* RFC 9562 variant */
}

static char *doc(void (*fn)(const struct discovery_settings *, struct discovery_buf *),
		 const struct discovery_settings *s)
{
	struct discovery_buf b = { 0 };
	fn(s, &b);
	discovery_buf_add(&b, "", 1);
	cr_assert(!b.failed);
	return b.p;
}

Test(discovery, documents)
{
	struct config cfg;
	struct discovery_settings s = { .hostname = "mail.example.com", .domain = "example.com",
					.address = "a&b@example.com" };
	config_defaults(&cfg);
	char err[256];
	cr_assert_eq(config_load(&cfg, NULL, err, sizeof(err)), 0, "%s", err);
	discovery_settings_from_config(&cfg, &s);
	cr_assert_eq(s.imaps, 993);
	cr_assert_eq(s.pop3s, 995);
	cr_assert_eq(s.smtps, 465);
	cr_assert_eq(s.imap, 143);
	cr_assert_eq(s.pop3, 110);
	cr_assert_eq(s.submission, 587);

	char *tb = doc(discovery_thunderbird, &s);
	cr_assert_not_null(strstr(tb, "<username>a&amp;b@example.com</username>"));
	cr_assert_null(strstr(tb, "a&b"));
	char *p993 = strstr(tb, "<port>993</port>"), *p995 = strstr(tb, "<port>995</port>");
	char *p143 = strstr(tb, "<port>143</port>"), *p110 = strstr(tb, "<port>110</port>");
	char *p465 = strstr(tb, "<port>465</port>"), *p587 = strstr(tb, "<port>587</port>");
	cr_assert(p993 && p995 && p143 && p110 && p465 && p587);
	cr_assert(p993 < p995 && p995 < p143 && p143 < p110 && p465 < p587);
	free(tb);

	s.address = NULL;
	tb = doc(discovery_thunderbird, &s);
	cr_assert_not_null(strstr(tb, "<username>%EMAILADDRESS%</username>"));
	free(tb);

	s.address = "a&b@example.com";
	char *ad = doc(discovery_autodiscover, &s);
	cr_assert_not_null(strstr(ad, "<LoginName>a&amp;b@example.com</LoginName>"));
	cr_assert_null(strstr(ad, "<Port>143</Port>"));
	free(ad);

	char *mc = doc(discovery_mobileconfig, &s);
	cr_assert_not_null(strstr(mc, "<string>a&amp;b@example.com</string>"));
	cr_assert_not_null(strstr(mc, "<string>com.example.mail.ringmail.profile."));
	free(mc);

	/* A missing row is left out, not printed as port 0. */
	s.pop3 = 0;
	tb = doc(discovery_thunderbird, &s);
	cr_assert_null(strstr(tb, "<port>0</port>"));
	cr_assert_null(strstr(tb, "<port>110</port>"));
	free(tb);
}
