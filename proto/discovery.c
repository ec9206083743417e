/* discovery.c - the auto-discovery documents (see discovery.h).
 *
 * Order of rows: the recommended implicit-TLS rows (IMAP 993, POP3 995,
 * SMTP 465) come first in every format; the formats that can list
 * alternatives (Thunderbird's) then list the STARTTLS rows (IMAP 143,
 * POP3 110 with STLS, SMTP 587). Autodiscover and the Apple profile
 * describe one server per protocol: the recommended one. */
#include "proto/discovery.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- settings ------------------------------------------------------------ */

static uint16_t find_port(const struct config *cfg, enum listener_proto proto, unsigned secmask,
			  int role)
{
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct listener_config *l = &cfg->listeners[i];
		if (l->proto != proto || !(secmask & (1u << l->security)))
			continue;
		if (role >= 0 && (int)l->role != role)
			continue;
		return l->port;
	}
	return 0;
}

#define SEC(x) (1u << (x))

void discovery_settings_from_config(const struct config *cfg, struct discovery_settings *s)
{
	s->imaps = find_port(cfg, PROTO_IMAP, SEC(SEC_TLS), -1);
	s->pop3s = find_port(cfg, PROTO_POP3, SEC(SEC_TLS) | SEC(SEC_DUAL), -1);
	s->smtps = find_port(cfg, PROTO_SMTP, SEC(SEC_TLS), ROLE_SUBMISSION);
	s->imap = find_port(cfg, PROTO_IMAP, SEC(SEC_STARTTLS) | SEC(SEC_PLAIN), -1);
	s->pop3 = find_port(cfg, PROTO_POP3, SEC(SEC_STARTTLS) | SEC(SEC_PLAIN), -1);
	s->submission = find_port(cfg, PROTO_SMTP, SEC(SEC_STARTTLS), ROLE_SUBMISSION);
	if (!s->submission)
		s->submission = find_port(cfg, PROTO_SMTP, SEC(SEC_PLAIN), ROLE_SUBMISSION);
}

/* ---- the buffer ------------------------------------------------------------ */

void discovery_buf_free(struct discovery_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

void discovery_buf_add(struct discovery_buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n > DISCOVERY_DOC_MAX) {
		b->failed = true;
		return;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

void discovery_buf_str(struct discovery_buf *b, const char *s)
{
	discovery_buf_add(b, s, strlen(s));
}

void discovery_buf_xml(struct discovery_buf *b, const char *s)
{
	for (const char *p = s; *p; p++) {
		switch (*p) {
		case '&': discovery_buf_str(b, "&amp;"); break;
		case '<': discovery_buf_str(b, "&lt;"); break;
		case '>': discovery_buf_str(b, "&gt;"); break;
		case '"': discovery_buf_str(b, "&quot;"); break;
		case '\'': discovery_buf_str(b, "&apos;"); break;
		default: discovery_buf_add(b, p, 1); break;
		}
	}
}

static void add_uint(struct discovery_buf *b, unsigned v)
{
	char n[16];
	int k = snprintf(n, sizeof(n), "%u", v);
	discovery_buf_add(b, n, (size_t)k);
}

/* <tag>escaped value</tag> */
static void element(struct discovery_buf *b, const char *indent, const char *tag, const char *v)
{
	discovery_buf_str(b, indent);
	discovery_buf_str(b, "<");
	discovery_buf_str(b, tag);
	discovery_buf_str(b, ">");
	discovery_buf_xml(b, v);
	discovery_buf_str(b, "</");
	discovery_buf_str(b, tag);
	discovery_buf_str(b, ">\n");
}

static void element_uint(struct discovery_buf *b, const char *indent, const char *tag, unsigned v)
{
	char n[16];
	snprintf(n, sizeof(n), "%u", v);
	element(b, indent, tag, n);
}

/* ---- addresses ------------------------------------------------------------- */

static bool is_atext(uint8_t c)
{
	if (isalnum(c))
		return true;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool valid_domain_syntax(struct span d)
{
	size_t label = 0;
	if (d.len == 0 || d.len > 253)
		return false;
	for (size_t i = 0; i < d.len; i++) {
		uint8_t c = d.p[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum(c) || c == '-') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

int discovery_check_address(struct span addr, const char (*domains)[CONFIG_STR_MAX], size_t n,
			    char *out, size_t cap)
{
	const uint8_t *at = addr.len ? memrchr(addr.p, '@', addr.len) : NULL;
	if (!at || addr.len > DISCOVERY_ADDRESS_MAX || addr.len + 1 > cap)
		return -EINVAL;
	struct span local = span_make(addr.p, (size_t)(at - addr.p));
	struct span dom = span_skip(addr, local.len + 1);
	if (local.len == 0 || local.len > DISCOVERY_LOCAL_MAX || local.p[0] == '.' ||
	    local.p[local.len - 1] == '.')
		return -EINVAL;
	for (size_t i = 0; i < local.len; i++) {
		if (local.p[i] == '.') {
			if (local.p[i - 1] == '.')
				return -EINVAL;
		} else if (!is_atext(local.p[i])) {
			return -EINVAL;
		}
	}
	if (!valid_domain_syntax(dom))
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (!span_eq_nocase(dom, span_cstr(domains[i])))
			continue;
		memcpy(out, local.p, local.len);
		out[local.len] = '@';
		memcpy(out + local.len + 1, domains[i], dom.len);
		out[addr.len] = '\0';
		return 0;
	}
	return -ENOENT;
}

static bool is_ip_or_single_label(struct span h)
{
	if (h.len == 0 || h.p[0] == '[')
		return true;
	bool digits_dots = true, dot = false;
	for (size_t i = 0; i < h.len; i++) {
		if (h.p[i] == '.')
			dot = true;
		else if (!isdigit(h.p[i]))
			digits_dots = false;
	}
	return digits_dots || !dot;
}

const char *discovery_domain_for_host(const struct config *cfg, struct span host)
{
	/* Drop the port: "name:443", "[::1]:443". */
	if (host.len && host.p[0] != '[') {
		const uint8_t *colon = memchr(host.p, ':', host.len);
		if (colon)
			host.len = (size_t)(colon - host.p);
	}
	while (host.len && host.p[host.len - 1] == '.')
		host.len--; /* a fully qualified "example.com." */
	for (size_t i = 0; i < cfg->ndomains; i++)
		if (span_eq_nocase(host, span_cstr(cfg->domains[i])))
			return cfg->domains[i];
	const uint8_t *dot = host.len ? memchr(host.p, '.', host.len) : NULL;
	if (dot) {
		struct span parent = span_skip(host, (size_t)(dot - host.p) + 1);
		for (size_t i = 0; i < cfg->ndomains; i++)
			if (span_eq_nocase(parent, span_cstr(cfg->domains[i])))
				return cfg->domains[i];
	}
	if (is_ip_or_single_label(host) || span_eq_nocase(host, span_cstr(cfg->hostname)))
		return cfg->ndomains ? cfg->domains[0] : NULL;
	return NULL;
}

/* ---- Autodiscover request ------------------------------------------------- */

static const uint8_t *find_nocase(struct span hay, struct span needle)
{
	if (needle.len == 0 || hay.len < needle.len)
		return NULL;
	for (size_t i = 0; i + needle.len <= hay.len; i++)
		if (span_eq_nocase(span_make(hay.p + i, needle.len), needle))
			return hay.p + i;
	return NULL;
}

/* The text content of the first element named name (after an optional
 * "prefix:"), up to the next '<'. False when there is none. */
static bool element_content(struct span body, struct span name, struct span *content_r)
{
	struct span rest = body;
	for (;;) {
		const uint8_t *hit = find_nocase(rest, name);
		if (!hit)
			return false;
		size_t at = (size_t)(hit - rest.p);
		struct span after = span_skip(rest, at + name.len);
		/* Walk back over an optional prefix to the '<'. */
		size_t k = at;
		while (k > 0 && rest.p[k - 1] != '<' && rest.p[k - 1] != '>' &&
		       rest.p[k - 1] != '/' && !isspace(rest.p[k - 1]))
			k--;
		bool open_tag = k > 0 && rest.p[k - 1] == '<' &&
				(k == at || rest.p[at - 1] == ':');
		if (open_tag && after.len) {
			/* Skip attributes up to the '>' (never a self-closing tag). */
			const uint8_t *gt = memchr(after.p, '>', after.len);
			if (!gt)
				return false;
			if (gt > after.p && gt[-1] == '/') {
				rest = span_skip(after, (size_t)(gt - after.p) + 1);
				continue;
			}
			if (after.p[0] == '>' || isspace(after.p[0])) {
				struct span c = span_skip(after, (size_t)(gt - after.p) + 1);
				const uint8_t *lt = memchr(c.p, '<', c.len);
				if (!lt)
					return false;
				*content_r = span_make(c.p, (size_t)(lt - c.p));
				return true;
			}
		}
		rest = span_skip(rest, at + 1);
	}
}

ptrdiff_t discovery_autodiscover_email(struct span body, char *out, size_t cap)
{
	struct span c;
	if (!element_content(body, SPAN_LIT("EMailAddress"), &c))
		return -1;
	while (c.len && isspace(c.p[0]))
		c = span_skip(c, 1);
	while (c.len && isspace(c.p[c.len - 1]))
		c.len--;
	static const struct {
		const char *ent;
		char ch;
	} ents[] = { { "&amp;", '&' }, { "&lt;", '<' }, { "&gt;", '>' },
		     { "&quot;", '"' }, { "&apos;", '\'' } };
	size_t o = 0;
	for (size_t i = 0; i < c.len;) {
		char ch = (char)c.p[i];
		size_t used = 1;
		if (ch == '&') {
			size_t k;
			for (k = 0; k < sizeof(ents) / sizeof(ents[0]); k++) {
				size_t el = strlen(ents[k].ent);
				if (c.len - i >= el && !memcmp(c.p + i, ents[k].ent, el)) {
					ch = ents[k].ch;
					used = el;
					break;
				}
			}
			if (k == sizeof(ents) / sizeof(ents[0]))
				return -1; /* a character reference: not an address */
		}
		if (o + 1 >= cap || ch == '\0')
			return -1;
		out[o++] = ch;
		i += used;
	}
	out[o] = '\0';
	return (ptrdiff_t)o;
}

bool discovery_autodiscover_other_schema(struct span body)
{
	struct span c;
	if (!element_content(body, SPAN_LIT("AcceptableResponseSchema"), &c))
		return false;
	return find_nocase(c, SPAN_LIT("/outlook/responseschema/")) == NULL;
}

/* ---- UUIDs ------------------------------------------------------------------- */

void discovery_uuid(const char *kind, const char *a, const char *b, char out[37])
{
	uint8_t d[WC_SHA256_DIGEST_SIZE];
	wc_Sha256 sha;
	static const char hex[] = "0123456789ABCDEF";

	memset(d, 0, sizeof(d));
	if (wc_InitSha256(&sha) == 0) {
		wc_Sha256Update(&sha, (const byte *)"ringmail\n", 9);
		wc_Sha256Update(&sha, (const byte *)kind, (word32)strlen(kind));
		wc_Sha256Update(&sha, (const byte *)"\n", 1);
		wc_Sha256Update(&sha, (const byte *)a, (word32)strlen(a));
		wc_Sha256Update(&sha, (const byte *)"\n", 1);
		wc_Sha256Update(&sha, (const byte *)b, (word32)strlen(b));
		wc_Sha256Final(&sha, d);
		wc_Sha256Free(&sha);
	}
	d[6] = (uint8_t)((d[6] & 0x0f) | 0x80); /* version 8 */
	d[8] = (uint8_t)((d[8] & 0x3f) | 0x80); /* variant 10 */
	size_t o = 0;
	for (size_t i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[d[i] >> 4];
		out[o++] = hex[d[i] & 15];
	}
	out[o] = '\0';
}

/* ---- Thunderbird ---------------------------------------------------------- */

static void tb_server(struct discovery_buf *b, const struct discovery_settings *s, bool incoming,
		      const char *type, unsigned port, const char *socket_type)
{
	if (!port)
		return;
	discovery_buf_str(b, incoming ? "    <incomingServer type=\"" : "    <outgoingServer type=\"");
	discovery_buf_str(b, type);
	discovery_buf_str(b, "\">\n");
	element(b, "      ", "hostname", s->hostname);
	element_uint(b, "      ", "port", port);
	element(b, "      ", "socketType", socket_type);
	element(b, "      ", "authentication", "password-cleartext");
	element(b, "      ", "username", s->address ? s->address : "%EMAILADDRESS%");
	discovery_buf_str(b, incoming ? "    </incomingServer>\n" : "    </outgoingServer>\n");
}

void discovery_thunderbird(const struct discovery_settings *s, struct discovery_buf *b)
{
	discovery_buf_str(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
			     "<clientConfig version=\"1.1\">\n  <emailProvider id=\"");
	discovery_buf_xml(b, s->domain);
	discovery_buf_str(b, "\">\n");
	element(b, "    ", "domain", s->domain);
	element(b, "    ", "displayName", s->domain);
	element(b, "    ", "displayShortName", s->domain);
	tb_server(b, s, true, "imap", s->imaps, "SSL");
	tb_server(b, s, true, "pop3", s->pop3s, "SSL");
	tb_server(b, s, true, "imap", s->imap, "STARTTLS");
	tb_server(b, s, true, "pop3", s->pop3, "STARTTLS");
	tb_server(b, s, false, "smtp", s->smtps, "SSL");
	tb_server(b, s, false, "smtp", s->submission, "STARTTLS");
	discovery_buf_str(b, "  </emailProvider>\n</clientConfig>\n");
}

/* ---- Microsoft Autodiscover (POX) ------------------------------------------ */

static void ad_protocol(struct discovery_buf *b, const struct discovery_settings *s,
			const char *type, unsigned port)
{
	if (!port)
		return;
	discovery_buf_str(b, "      <Protocol>\n");
	element(b, "        ", "Type", type);
	element(b, "        ", "Server", s->hostname);
	element_uint(b, "        ", "Port", port);
	element(b, "        ", "DomainRequired", "off");
	element(b, "        ", "LoginName", s->address);
	element(b, "        ", "SPA", "off");
	element(b, "        ", "SSL", "on");
	element(b, "        ", "AuthRequired", "on");
	if (!strcmp(type, "SMTP")) {
		element(b, "        ", "UsePOPAuth", "on");
		element(b, "        ", "SMTPLast", "off");
	}
	discovery_buf_str(b, "      </Protocol>\n");
}

void discovery_autodiscover(const struct discovery_settings *s, struct discovery_buf *b)
{
	discovery_buf_str(b,
		"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
		"<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n"
		"  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n"
		"    <User>\n");
	element(b, "      ", "DisplayName", s->address);
	discovery_buf_str(b, "    </User>\n    <Account>\n"
			     "      <AccountType>email</AccountType>\n"
			     "      <Action>settings</Action>\n");
	ad_protocol(b, s, "IMAP", s->imaps);
	ad_protocol(b, s, "POP3", s->pop3s);
	ad_protocol(b, s, "SMTP", s->smtps);
	discovery_buf_str(b, "    </Account>\n  </Response>\n</Autodiscover>\n");
}

void discovery_autodiscover_error(int code, const char *message, struct discovery_buf *b)
{
	discovery_buf_str(b,
		"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
		"<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n"
		"  <Response>\n    <Error>\n      <ErrorCode>");
	add_uint(b, (unsigned)code);
	discovery_buf_str(b, "</ErrorCode>\n");
	element(b, "      ", "Message", message);
	discovery_buf_str(b, "    </Error>\n  </Response>\n</Autodiscover>\n");
}

/* ---- Apple configuration profile ------------------------------------------ */

static void pl_string(struct discovery_buf *b, const char *key, const char *v)
{
	element(b, "\t\t\t", "key", key);
	element(b, "\t\t\t", "string", v);
}

static void pl_int(struct discovery_buf *b, const char *key, unsigned v)
{
	element(b, "\t\t\t", "key", key);
	element_uint(b, "\t\t\t", "integer", v);
}

static void pl_bool(struct discovery_buf *b, const char *key, bool v)
{
	element(b, "\t\t\t", "key", key);
	discovery_buf_str(b, v ? "\t\t\t<true/>\n" : "\t\t\t<false/>\n");
}

/* "com.example.mail" from hostname "mail.example.com": the profile's
 * reverse-DNS identifier prefix. */
static void reverse_dns(const char *host, char *out, size_t cap)
{
	size_t n = strlen(host), o = 0;
	out[0] = '\0';
	while (n > 0) {
		size_t e = n, st = n;
		while (st > 0 && host[st - 1] != '.')
			st--;
		size_t l = e - st;
		if (o + l + 2 > cap)
			break;
		if (o)
			out[o++] = '.';
		memcpy(out + o, host + st, l);
		o += l;
		out[o] = '\0';
		n = st ? st - 1 : 0;
	}
}

void discovery_mobileconfig(const struct discovery_settings *s, struct discovery_buf *b)
{
	char rdns[CONFIG_STR_MAX], ident[CONFIG_STR_MAX + 64], uuid_top[37], uuid_acct[37];
	const char *who = s->address ? s->address : s->domain;

	reverse_dns(s->hostname, rdns, sizeof(rdns));
	discovery_uuid("mobileconfig-profile", s->hostname, who, uuid_top);
	discovery_uuid("mobileconfig-account", s->hostname, who, uuid_acct);
	discovery_buf_str(b,
		"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
		"\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
		"<plist version=\"1.0\">\n<dict>\n"
		"\t<key>PayloadContent</key>\n\t<array>\n\t\t<dict>\n");
	pl_string(b, "EmailAccountDescription", who);
	if (s->address) {
		pl_string(b, "EmailAccountName", s->address);
		pl_string(b, "EmailAddress", s->address);
	}
	pl_string(b, "EmailAccountType", s->imaps ? "EmailTypeIMAP" : "EmailTypePOP");
	pl_string(b, "IncomingMailServerAuthentication", "EmailAuthPassword");
	pl_string(b, "IncomingMailServerHostName", s->hostname);
	pl_int(b, "IncomingMailServerPortNumber", s->imaps ? s->imaps : s->pop3s);
	pl_bool(b, "IncomingMailServerUseSSL", true);
	if (s->address)
		pl_string(b, "IncomingMailServerUsername", s->address);
	pl_string(b, "OutgoingMailServerAuthentication", "EmailAuthPassword");
	pl_string(b, "OutgoingMailServerHostName", s->hostname);
	pl_int(b, "OutgoingMailServerPortNumber", s->smtps);
	pl_bool(b, "OutgoingMailServerUseSSL", true);
	if (s->address)
		pl_string(b, "OutgoingMailServerUsername", s->address);
	pl_bool(b, "OutgoingPasswordSameAsIncomingPassword", true);
	pl_string(b, "PayloadDescription", "Email account settings");
	pl_string(b, "PayloadDisplayName", who);
	snprintf(ident, sizeof(ident), "%s.ringmail.account.%s", rdns, uuid_acct);
	pl_string(b, "PayloadIdentifier", ident);
	pl_string(b, "PayloadType", "com.apple.mail.managed");
	pl_string(b, "PayloadUUID", uuid_acct);
	pl_int(b, "PayloadVersion", 1);
	pl_bool(b, "PreventAppSheet", false);
	pl_bool(b, "PreventMove", false);
	pl_bool(b, "SMIMEEnabled", false);
	discovery_buf_str(b, "\t\t</dict>\n\t</array>\n");
	/* The top-level dictionary: one tab less. */
	discovery_buf_str(b, "\t<key>PayloadDescription</key>\n\t<string>Mail settings for ");
	discovery_buf_xml(b, who);
	discovery_buf_str(b, "</string>\n\t<key>PayloadDisplayName</key>\n\t<string>");
	discovery_buf_xml(b, s->domain);
	discovery_buf_str(b, " mail</string>\n\t<key>PayloadIdentifier</key>\n\t<string>");
	discovery_buf_xml(b, rdns);
	discovery_buf_str(b, ".ringmail.profile.");
	discovery_buf_str(b, uuid_top);
	discovery_buf_str(b, "</string>\n\t<key>PayloadOrganization</key>\n\t<string>");
	discovery_buf_xml(b, s->domain);
	discovery_buf_str(b, "</string>\n\t<key>PayloadRemovalDisallowed</key>\n\t<false/>\n"
			     "\t<key>PayloadType</key>\n\t<string>Configuration</string>\n"
			     "\t<key>PayloadUUID</key>\n\t<string>");
	discovery_buf_str(b, uuid_top);
	discovery_buf_str(b, "</string>\n\t<key>PayloadVersion</key>\n\t<integer>1</integer>\n"
			     "</dict>\n</plist>\n");
}
