/* cmd_dns.c - "ringmail dns-records DOMAIN" (see cmd_dns.h). */
#include "app/cmd_dns.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

#include "core/config.h"
#include "outbound/dkim.h"
#include "proto/discovery.h"

/* SRV priority of the STARTTLS services: after the implicit-TLS ones at 0
 * (RFC 8314 5.1: clients prefer the lower number). */
#define DNS_SRV_STARTTLS_PRIORITY 10
#define DNS_MX_PREFERENCE 10

static bool valid_domain(const char *s)
{
	return config_dns_name_valid(s, 253, false);
}

static void srv(FILE *out, const char *service, const char *domain, int prio, unsigned port,
		const char *host)
{
	if (port)
		fprintf(out, "%s._tcp.%s. IN SRV %d 1 %u %s.\n", service, domain, prio, port, host);
	else /* RFC 6186 3.4 / RFC 2782: the service is not offered */
		fprintf(out, "%s._tcp.%s. IN SRV 0 0 0 .\n", service, domain);
}

static uint16_t https_port(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nlisteners; i++)
		if (cfg->listeners[i].proto == PROTO_HTTP && cfg->listeners[i].security == SEC_TLS)
			return cfg->listeners[i].port;
	return 0;
}

int cmd_dns_records(const struct config *cfg, const char *domain_arg, FILE *out, FILE *err)
{
	char domain[CONFIG_STR_MAX];
	size_t n = strlen(domain_arg);
	struct discovery_settings st = { 0 };
	const char *host = cfg->hostname;
	bool local = false;

	while (n && domain_arg[n - 1] == '.')
		n--;
	if (n == 0 || n >= sizeof(domain)) {
		fprintf(err, "ringmail: '%s' is not a valid domain name\n", domain_arg);
		return 2;
	}
	for (size_t i = 0; i < n; i++)
		domain[i] = (char)tolower((unsigned char)domain_arg[i]);
	domain[n] = '\0';
	if (!valid_domain(domain)) {
		fprintf(err, "ringmail: '%s' is not a valid domain name\n", domain_arg);
		return 2;
	}
	for (size_t i = 0; i < cfg->ndomains; i++)
		local |= !strcmp(cfg->domains[i], domain);
	if (!local)
		fprintf(err, "ringmail: warning: %s is not in domains (%s); add it before publishing "
			"these records\n", domain, cfg->ndomains ? cfg->domains[0] : "");
	discovery_settings_from_config(cfg, &st);

	fprintf(out, "; DNS records for %s, served by %s (ringmail dns-records).\n", domain, host);
	fprintf(out, "; %s needs its own A/AAAA records; they are not printed here.\n", host);
	fprintf(out, "%s. IN MX %d %s.\n", domain, DNS_MX_PREFERENCE, host);
	fprintf(out, "; RFC 6186 / RFC 8314: implicit TLS first (priority 0), STARTTLS after "
		"(priority %d).\n", DNS_SRV_STARTTLS_PRIORITY);
	srv(out, "_submissions", domain, 0, st.smtps, host);
	srv(out, "_imaps", domain, 0, st.imaps, host);
	srv(out, "_pop3s", domain, 0, st.pop3s, host);
	srv(out, "_submission", domain, DNS_SRV_STARTTLS_PRIORITY, st.submission, host);
	srv(out, "_imap", domain, DNS_SRV_STARTTLS_PRIORITY, st.imap, host);
	srv(out, "_pop3", domain, DNS_SRV_STARTTLS_PRIORITY, st.pop3, host);
	fprintf(out, "; Auto-discovery: Thunderbird asks autoconfig.%s, Outlook autodiscover.%s "
		"and then the SRV record.\n", domain, domain);
	fprintf(out, "; Over HTTPS the certificate must name them too ([tls] sni.NAME or a SAN).\n");
	static const char *const names[] = { "autoconfig", "autodiscover" };
	for (size_t i = 0; i < 2; i++) {
		char name[2 * CONFIG_STR_MAX];
		snprintf(name, sizeof(name), "%s.%s", names[i], domain);
		if (strcmp(name, host) != 0) /* no CNAME of the server's own name */
			fprintf(out, "%s. IN CNAME %s.\n", name, host);
	}
	srv(out, "_autodiscover", domain, 0, https_port(cfg), host);
	fprintf(out, "; SPF and DMARC: starting points; tighten p= to reject once reports are clean.\n");
	fprintf(out, "%s. IN TXT \"v=spf1 mx -all\"\n", domain);
	fprintf(out, "_dmarc.%s. IN TXT \"v=DMARC1; p=quarantine; adkim=s; aspf=s; "
		"rua=mailto:postmaster@%s\"\n", domain, domain);

	/* DKIM: the record of DATA/dkim/DOMAIN.key (outbound/dkim.h). */
	int rc = dkim_dns_record(cfg->data_dir, domain, cfg->ob_dkim_selector, out, err);
	if (rc == -ENOENT)
		fprintf(out, "; DKIM: no key in %s/dkim/ for %s yet. `ringmail dkim keygen %s` "
			"creates %s/dkim/%s.key\n; and prints the SELECTOR._domainkey.%s. TXT "
			"record to publish.\n", cfg->data_dir, domain, domain, cfg->data_dir,
			domain, domain);
	else if (rc)
		return 1;
	return 0;
}
