/* cmd_dns.h - "ringmail dns-records DOMAIN": the zone lines a domain needs
 * so clients find the server (docs/autodiscover.md). */
#ifndef RINGMAIL_APP_CMD_DNS_H
#define RINGMAIL_APP_CMD_DNS_H

#include <stdio.h>

#include "core/config.h"

/* Writes the records for domain (any case, an optional trailing dot) to
 * out, in zone-file syntax with fully qualified names: MX, the RFC 6186 /
 * RFC 8314 SRV records (implicit TLS at priority 0, STARTTLS at
 * DNS_SRV_STARTTLS_PRIORITY; "0 0 0 ." for a service with no listener
 * row), the autoconfig/autodiscover names and the _autodiscover._tcp SRV,
 * SPF and DMARC starting points, and the DKIM record (or a comment saying
 * how it will appear). Ports are the configured listener ports. Warnings
 * (a domain that is not in `domains`) go to err. Returns the exit code: 0,
 * or 2 when domain is not a valid domain name. */
int cmd_dns_records(const struct config *cfg, const char *domain, FILE *out, FILE *err);

#endif
