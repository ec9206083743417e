/* discovery.h - the auto-discovery documents: Thunderbird autoconfig
 * (config-v1.1.xml), Microsoft Autodiscover POX (autodiscover.xml) and the
 * Apple configuration profile (.mobileconfig), plus the address checks and
 * escaping they share. No I/O: the HTTP session (http_session.c) routes
 * requests here and sends what comes back. docs/autodiscover.md describes
 * the documents.
 *
 * Every value that reaches a document is XML-escaped (&, <, >, ", '),
 * including the configured hostname and domain; the address a client sends
 * must first pass discovery_check_address(). */
#ifndef RINGMAIL_PROTO_DISCOVERY_H
#define RINGMAIL_PROTO_DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/span.h"

/* RFC 5321 4.5.3.1: local part and whole path limits. */
#define DISCOVERY_LOCAL_MAX 64u
#define DISCOVERY_ADDRESS_MAX 254u
/* The largest document built (a guard, the real ones are ~3 KiB). */
#define DISCOVERY_DOC_MAX (64u * 1024u)

/* What the documents describe. Ports are the configured listener ports
 * (port_offset is not added: it is for tests and unprivileged runs behind
 * a redirect); 0 means "no such row", and the row is left out. */
struct discovery_settings {
	const char *hostname;    /* the server every row names */
	const char *domain;      /* the mail domain (lower case) */
	const char *address;     /* user@domain, or NULL: use placeholders */
	uint16_t imaps, pop3s, smtps;        /* recommended: implicit TLS */
	uint16_t imap, pop3, submission;     /* alternatives: STARTTLS */
};

/* Fills the ports of s from cfg's listener rows: imaps = the first IMAP
 * row with security tls, pop3s = POP3 tls or dual, smtps = SMTP tls with
 * role submission, imap/pop3 = plain or starttls rows, submission = SMTP
 * starttls (or plain) with role submission. hostname, domain and address
 * are left alone. */
void discovery_settings_from_config(const struct config *cfg, struct discovery_settings *s);

/* A growing output buffer; failed is set (and stays set) when memory ran
 * out or DISCOVERY_DOC_MAX was reached. Free with discovery_buf_free(). */
struct discovery_buf {
	char *p;
	size_t len, cap;
	bool failed;
};
void discovery_buf_free(struct discovery_buf *b);
void discovery_buf_add(struct discovery_buf *b, const char *s, size_t n);
void discovery_buf_str(struct discovery_buf *b, const char *s);
/* Appends s with &, <, >, " and ' replaced by their XML entities. */
void discovery_buf_xml(struct discovery_buf *b, const char *s);

/* Checks a client-supplied address: a dot-atom local part (RFC 5322 atext,
 * at most DISCOVERY_LOCAL_MAX bytes), '@', and one of the n local domains
 * (case-insensitive). On success writes "local@domain" (the domain in
 * lower case, NUL-terminated, at most cap bytes) to out and returns 0.
 * Returns -EINVAL for a malformed address (HTTP 400) and -ENOENT for a
 * well-formed one in a domain that is not local (HTTP 404). */
int discovery_check_address(struct span addr, const char (*domains)[CONFIG_STR_MAX], size_t n,
			    char *out, size_t cap);

/* The local domain a request without an address is about, from its Host
 * field: the host itself or its parent (autoconfig.example.com ->
 * example.com) when that is local; the first local domain when the host is
 * an IP address, a single label, empty, or the configured hostname.
 * Returns the domain (a string of cfg, valid as long as cfg), or NULL when
 * the host names a domain that is not served (HTTP 404). */
const char *discovery_domain_for_host(const struct config *cfg, struct span host);

/* Microsoft Autodiscover request body: the text of the first
 * <EMailAddress> element (any namespace prefix), whitespace trimmed and the
 * five predefined XML entities decoded, into out (cap bytes,
 * NUL-terminated). Returns its length, or -1 when there is none or it does
 * not fit. Bounded by body.len; no XML library. */
ptrdiff_t discovery_autodiscover_email(struct span body, char *out, size_t cap);

/* The Autodiscover request asks for a response schema other than Outlook's
 * (for example the mobilesync one of ActiveSync): true. */
bool discovery_autodiscover_other_schema(struct span body);

/* A deterministic UUID (RFC 9562 version 8, name-based, from SHA-256 of
 * "ringmail\n" kind "\n" a "\n" b) as 36 upper-case characters and a NUL. */
void discovery_uuid(const char *kind, const char *a, const char *b, char out[37]);

/* The documents. Each appends to b; check b->failed. */
void discovery_thunderbird(const struct discovery_settings *s, struct discovery_buf *b);
void discovery_autodiscover(const struct discovery_settings *s, struct discovery_buf *b);
/* Outlook's error response (ErrorCode 600 invalid request, 601 no
 * provider for the schema asked). */
void discovery_autodiscover_error(int code, const char *message, struct discovery_buf *b);
void discovery_mobileconfig(const struct discovery_settings *s, struct discovery_buf *b);

#endif
