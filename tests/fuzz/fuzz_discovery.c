/* libFuzzer target for proto/discovery.c: everything a client controls on
 * the way into an auto-discovery document.
 *
 * The input is used four ways:
 * 1. as an Autodiscover request body: the <EMailAddress> extracted from it
 *    must be NUL-terminated, as long as returned, and shorter than the
 *    buffer; discovery_autodiscover_other_schema must not read past it;
 * 2. the extracted address (or, failing that, the input itself) through
 *    discovery_check_address against two local domains: an accepted one is
 *    "local@domain" with a dot-atom local part of at most 64 bytes and the
 *    domain one of the local ones in lower case; and then every document
 *    is built for it: each must be complete, every '&' in it must start an
 *    entity, and no '<' or '"' from the address may reach it unescaped
 *    (the document holds the XML-escaped address);
 * 3. as a Host field: discovery_domain_for_host returns NULL or one of the
 *    configured domains;
 * 4. as a string for discovery_buf_xml: un-escaping the output gives the
 *    input back. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/discovery.h"

#define CHECK(x)                                                              \
	do {                                                                  \
		if (!(x))                                                     \
			__builtin_trap();                                     \
	} while (0)

static struct config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	config_defaults(&cfg);
	strcpy(cfg.domains[0], "example.com");
	strcpy(cfg.domains[1], "example.org");
	cfg.ndomains = 2;
	return 0;
}

static const char *const entities[] = { "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#" };

/* Every '&' in p[0..n) starts one of the entities above. */
static void check_entities(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != '&')
			continue;
		bool ok = false;
		for (size_t e = 0; e < sizeof(entities) / sizeof(entities[0]); e++) {
			size_t el = strlen(entities[e]);
			if (n - i >= el && !memcmp(p + i, entities[e], el))
				ok = true;
		}
		CHECK(ok);
	}
}

/* Un-escapes what discovery_buf_xml wrote; returns the length. */
static size_t unescape(const char *p, size_t n, char *out)
{
	static const char chars[] = "&<>\"'";
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		if (p[i] != '&') {
			out[o++] = p[i++];
			continue;
		}
		size_t e;
		for (e = 0; e < 5; e++) {
			size_t el = strlen(entities[e]);
			if (n - i >= el && !memcmp(p + i, entities[e], el)) {
				out[o++] = chars[e];
				i += el;
				break;
			}
		}
		CHECK(e < 5);
	}
	return o;
}

static bool is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

static void check_documents(const char *address)
{
	struct discovery_settings s = {
		.hostname = "mail.example.com", .domain = strchr(address, '@') + 1,
		.address = address, .imaps = 993, .pop3s = 995, .smtps = 465,
		.imap = 143, .pop3 = 110, .submission = 587,
	};
	struct discovery_buf esc = { 0 };
	discovery_buf_xml(&esc, address);
	CHECK(!esc.failed);
	void (*const docs[])(const struct discovery_settings *, struct discovery_buf *) = {
		discovery_thunderbird, discovery_autodiscover, discovery_mobileconfig,
	};
	for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
		struct discovery_buf b = { 0 };
		docs[d](&s, &b);
		CHECK(!b.failed && b.len > 0 && b.len <= DISCOVERY_DOC_MAX);
		check_entities(b.p, b.len);
		CHECK(memmem(b.p, b.len, esc.p, esc.len) != NULL);
		/* The raw address appears only if escaping left it unchanged. */
		if (strpbrk(address, "<>\"&'"))
			CHECK(memmem(b.p, b.len, address, strlen(address)) == NULL);
		discovery_buf_free(&b);
	}
	discovery_buf_free(&esc);
}

static void check_address(const uint8_t *p, size_t n)
{
	char out[DISCOVERY_ADDRESS_MAX + 2];
	int rc = discovery_check_address(span_make(p, n), (const char (*)[CONFIG_STR_MAX])cfg.domains,
					 cfg.ndomains, out, sizeof(out));
	if (rc != 0) {
		CHECK(rc == -EINVAL || rc == -ENOENT);
		return;
	}
	size_t len = strlen(out);
	CHECK(len < sizeof(out));
	const char *at = strchr(out, '@');
	CHECK(at && at > out && (size_t)(at - out) <= DISCOVERY_LOCAL_MAX);
	CHECK(!strcmp(at + 1, "example.com") || !strcmp(at + 1, "example.org"));
	for (const char *c = out; c < at; c++)
		CHECK(is_atext((unsigned char)*c) || (*c == '.' && c > out && c + 1 < at && c[1] != '.'));
	check_documents(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* 1. Autodiscover body */
	char email[DISCOVERY_ADDRESS_MAX + 2];
	memset(email, 'x', sizeof(email));
	ptrdiff_t n = discovery_autodiscover_email(span_make(data, size), email, sizeof(email));
	CHECK(n >= -1);
	if (n >= 0) {
		CHECK((size_t)n < sizeof(email) && email[n] == '\0' && strlen(email) == (size_t)n);
		check_address((const uint8_t *)email, (size_t)n);
	}
	(void)discovery_autodiscover_other_schema(span_make(data, size));

	/* 2. the input as an address */
	check_address(data, size);

	/* 3. Host field */
	const char *d = discovery_domain_for_host(&cfg, span_make(data, size));
	CHECK(!d || d == cfg.domains[0] || d == cfg.domains[1]);

	/* 4. XML escaping round trip (up to the first NUL) */
	char *str = malloc(size + 1);
	if (!str)
		return 0;
	if (size)
		memcpy(str, data, size);
	str[size] = '\0';
	struct discovery_buf b = { 0 };
	discovery_buf_xml(&b, str);
	if (!b.failed && b.len) {
		char *back = malloc(b.len + 1);
		if (!back)
			__builtin_trap();
		size_t bl = unescape(b.p, b.len, back);
		CHECK(bl == strlen(str) && !memcmp(back, str, bl));
		CHECK(memchr(b.p, '<', b.len) == NULL && memchr(b.p, '"', b.len) == NULL);
		free(back);
	}
	discovery_buf_free(&b);
	free(str);
	return 0;
}
