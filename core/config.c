#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* The port table of DESIGN.md. Keep docs/config.md in step. */
const char config_default_text[] =
	"[server]\n"
	"hostname = mail.example.com\n"
	"domains = example.com\n"
	"data = ./ringmail-data\n"
	"threads = 0\n"
	"\n"
	"[listener smtps]\n"
	"port = 465\nprotocol = smtp\nsecurity = tls\nrole = submission\n"
	"[listener submission]\n"
	"port = 587\nprotocol = smtp\nsecurity = starttls\nrole = submission\n"
	"[listener smtp]\n"
	"port = 25\nprotocol = smtp\nsecurity = plain\nrole = mx\n"
	"[listener smtp-26]\n"
	"port = 26\nprotocol = smtp\nsecurity = plain\nrole = mx\n"
	"[listener smtp-2025]\n"
	"port = 2025\nprotocol = smtp\nsecurity = plain\nrole = mx\n"
	"[listener smtp-2525]\n"
	"port = 2525\nprotocol = smtp\nsecurity = plain\nrole = mx\n"
	"[listener imaps]\n"
	"port = 993\nprotocol = imap\nsecurity = tls\n"
	"[listener imap]\n"
	"port = 143\nprotocol = imap\nsecurity = plain\n"
	"[listener pop3s]\n"
	"port = 995\nprotocol = pop3\nsecurity = dual\n"
	"[listener pop3]\n"
	"port = 110\nprotocol = pop3\nsecurity = plain\n"
	/* auto-discovery (docs/autodiscover.md) */
	"[listener http]\n"
	"port = 80\nprotocol = http\nsecurity = plain\n"
	"[listener https]\n"
	"port = 443\nprotocol = http\nsecurity = tls\n";

static const char *const proto_names[] = { "smtp", "imap", "pop3", "http" };
static const char *const security_names[] = { "plain", "starttls", "tls", "dual" };
static const char *const role_names[] = { "mx", "submission" };

const char *config_proto_str(enum listener_proto p) { return proto_names[p]; }
const char *config_security_str(enum listener_security s) { return security_names[s]; }
const char *config_role_str(enum listener_role r) { return role_names[r]; }

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	strcpy(cfg->source, "(embedded default)");
	strcpy(cfg->hostname, "mail.example.com");
	strcpy(cfg->domains[0], "example.com");
	cfg->ndomains = 1;
	strcpy(cfg->data_dir, "./ringmail-data");
	cfg->recv_buffers = CONFIG_RECV_BUFFERS_DEFAULT;
	cfg->shutdown_grace_ms = 10000;
	strcpy(cfg->log_level, "info");
	cfg->max_connections = 100000;
	cfg->max_connections_per_ip = 200;
	cfg->max_connections_per_user = 50;
	cfg->prelogin_timeout_ms = 60000;
	cfg->idle_timeout_ms = 30 * 60000;
	cfg->dual_wait_ms = 1000;
	cfg->handshake_timeout_ms = 10000;
	cfg->max_bad_commands = 10;
	cfg->auth_delay_ms = 2000;
	cfg->auth_delay_max_ms = 15000;
	cfg->mime_depth_max = 32;
	cfg->mime_parts_max = 1000;
	cfg->send_queue_max = 4u << 20;
	cfg->plaintext_auth = true;
	cfg->imap_unauthenticate = true;
	cfg->imap_compress_level = 1;
	cfg->message_size_max = 50u << 20;
	cfg->recipients_max = 1000;
	cfg->smtp_timeout_ms = 5 * 60000;
	cfg->pop3_autologout_ms = 10 * 60000; /* RFC 1939 3: at least 10 minutes */
	cfg->header_size_max = 1u << 20;
	cfg->max_hops = 50;
	cfg->smtp_line_max = 1000;
	cfg->smtp_command_line_max = 512; /* SMTP_COMMAND_LINE_MAX */
	cfg->imap_line_max = 64 * 1024; /* IMAP_LINE_MAX */
	cfg->imap_literal_max = 64 * 1024;
	cfg->pop3_line_max = 255; /* POP3_LINE_MAX */
	cfg->ticket_rotate_s = 3600;
	cfg->ob_mx_port = 25;
	cfg->folders_max = 10000;
	cfg->segment_max = 64u << 20;
	cfg->compact_after = 0;
	cfg->checkpoint_after = 4u << 20; /* STORE_CHECKPOINT_DEFAULT */
	/* the special-use names the store knows (RFC 6154; store.c specials[]) */
	static const char *const autos[] = { "Sent", "Drafts", "Trash", "Junk", "Archive" };
	for (size_t i = 0; i < sizeof(autos) / sizeof(autos[0]); i++)
		strcpy(cfg->auto_folders[i], autos[i]);
	cfg->nauto_folders = sizeof(autos) / sizeof(autos[0]);
	snprintf(cfg->ob_smart_ca, sizeof(cfg->ob_smart_ca), "/etc/ssl/certs/ca-certificates.crt");
	cfg->ob_retry_min_ms = 5 * 60000;
	cfg->ob_retry_max_ms = 4 * 3600000;
	cfg->ob_expire_ms = 5u * 24 * 3600000;
	cfg->ob_timeout_ms = 5 * 60000;
	cfg->ob_idle_ms = 30000;
	cfg->ob_delay_ms = 4 * 3600000;
	cfg->ob_max_per_domain = 8;
	cfg->ob_max_per_connection = 100;
	strcpy(cfg->ob_dkim_selector, "ringmail");
}

static int fail(char *err, size_t errlen, const char *fname, int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static int fail(char *err, size_t errlen, const char *fname, int line, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(err, errlen, "%s:%d: ", fname, line);
	if (n < 0 || (size_t)n >= errlen)
		return -EINVAL;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int config_parse_duration_ms(const char *s, uint32_t *ms_r)
{
	char *end;
	unsigned long long v, mul = 1000;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	if (strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "s") == 0 || *end == '\0')
		mul = 1000;
	else if (strcmp(end, "m") == 0)
		mul = 60000;
	else if (strcmp(end, "h") == 0)
		mul = 3600000;
	else
		return -EINVAL;
	if (v > UINT32_MAX / mul)
		return -EINVAL;
	*ms_r = (uint32_t)(v * mul);
	return 0;
}

int config_parse_size(const char *s, uint64_t *bytes_r)
{
	char *end;
	unsigned long long v, mul = 1;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (tolower((unsigned char)*end)) {
	case '\0': mul = 1; break;
	case 'k': mul = 1ull << 10; break;
	case 'm': mul = 1ull << 20; break;
	case 'g': mul = 1ull << 30; break;
	default: return -EINVAL;
	}
	if (*end && end[1] && !(tolower((unsigned char)end[1]) == 'b' && end[2] == '\0'))
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -EINVAL;
	*bytes_r = v * mul;
	return 0;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *v_r)
{
	char *end;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*v_r = v;
	return 0;
}

static int parse_bool(const char *s, bool *b_r)
{
	if (!strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "on") || !strcmp(s, "1"))
		*b_r = true;
	else if (!strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "off") || !strcmp(s, "0"))
		*b_r = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_enum(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	return -1;
}

static int copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap)
		return -EINVAL;
	memcpy(dst, src, n + 1);
	return 0;
}

bool config_dns_name_valid(const char *s, size_t max, bool underscore)
{
	size_t label = 0, n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum(c) || c == '-' || (underscore && c == '_')) {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

/* A host or domain name: letters, digits, '-', '.', no empty label. */
static bool valid_hostname(const char *s)
{
	return config_dns_name_valid(s, 253, false);
}

enum section { SEC_NONE, SEC_SERVER, SEC_LIMITS, SEC_TLS_S, SEC_LISTENER, SEC_OUTBOUND };

struct parse_ctx {
	struct config *cfg;
	const char *fname;
	int line;
	enum section section;
	struct listener_config *listener;
	char *err;
	size_t errlen;
	bool saw_listener;
};

#define BAD(ctx, ...) fail((ctx)->err, (ctx)->errlen, (ctx)->fname, (ctx)->line, __VA_ARGS__)

/* The next word of a list separated by blanks or commas: its start (and
 * its length in *len_r), or NULL at the end. */
static const char *list_word(const char *p, size_t *len_r)
{
	while (*p == ' ' || *p == ',' || *p == '\t')
		p++;
	if (!*p)
		return NULL;
	const char *e = p;
	while (*e && *e != ',' && *e != ' ' && *e != '\t')
		e++;
	*len_r = (size_t)(e - p);
	return p;
}

static int set_domains(struct parse_ctx *ctx, const char *value)
{
	struct config *cfg = ctx->cfg;
	const char *p = value;

	cfg->ndomains = 0;
	size_t n;
	while ((p = list_word(p, &n))) {
		const char *e = p + n;
		if (cfg->ndomains == CONFIG_MAX_DOMAINS)
			return BAD(ctx, "more than %d domains", CONFIG_MAX_DOMAINS);
		if (n >= CONFIG_STR_MAX)
			return BAD(ctx, "domain name too long");
		char *d = cfg->domains[cfg->ndomains];
		for (size_t i = 0; i < n; i++)
			d[i] = (char)tolower((unsigned char)p[i]);
		d[n] = '\0';
		if (!valid_hostname(d))
			return BAD(ctx, "'%s' is not a valid domain name", d);
		cfg->ndomains++;
		p = e;
	}
	if (cfg->ndomains == 0)
		return BAD(ctx, "domains needs at least one domain");
	return 0;
}

/* auto_folders: names separated by blanks or commas; none turns it off.
 * A name is printable ASCII without the IMAP wildcards, quotes and
 * backslash, no '/' at either end or twice in a row, and not INBOX. */
static int set_auto_folders(struct parse_ctx *ctx, const char *value)
{
	struct config *cfg = ctx->cfg;
	const char *p = value;

	cfg->nauto_folders = 0;
	size_t n;
	while ((p = list_word(p, &n))) {
		const char *e = p + n;
		if (cfg->nauto_folders == CONFIG_MAX_AUTO_FOLDERS)
			return BAD(ctx, "more than %d auto_folders", CONFIG_MAX_AUTO_FOLDERS);
		if (n >= CONFIG_AUTO_FOLDER_MAX)
			return BAD(ctx, "auto_folders: a name is longer than %d bytes",
				   CONFIG_AUTO_FOLDER_MAX - 1);
		char *d = cfg->auto_folders[cfg->nauto_folders];
		memcpy(d, p, n);
		d[n] = '\0';
		bool ok = d[0] != '/' && d[n - 1] != '/' && !strstr(d, "//") &&
			  strcasecmp(d, "INBOX") != 0 &&
			  /* IMAP spells INBOX's inferiors "INBOX/..." */
			  (strncasecmp(d, "INBOX/", 6) != 0 || strncmp(d, "INBOX/", 6) == 0);
		for (size_t i = 0; i < n && ok; i++)
			ok = d[i] > 0x20 && d[i] < 0x7f && !strchr("%*\"\\", d[i]);
		if (!ok)
			return BAD(ctx, "auto_folders: '%s' is not a usable folder name (printable "
				   "ASCII but %% * \" \\, no '/' at either end, not INBOX)", d);
		bool dup = false;
		for (size_t i = 0; i < cfg->nauto_folders && !dup; i++)
			dup = !strcmp(cfg->auto_folders[i], d);
		if (dup)
			return BAD(ctx, "auto_folders names '%s' twice", d);
		cfg->nauto_folders++;
		p = e;
	}
	return 0;
}

static int set_server(struct parse_ctx *ctx, const char *key, const char *value)
{
	struct config *cfg = ctx->cfg;
	unsigned long v;

	if (!strcmp(key, "hostname")) {
		if (!valid_hostname(value) || copy_str(cfg->hostname, sizeof(cfg->hostname), value))
			return BAD(ctx, "'%s' is not a valid host name", value);
	} else if (!strcmp(key, "domains") || !strcmp(key, "domain")) {
		return set_domains(ctx, value);
	} else if (!strcmp(key, "data")) {
		if (!*value || copy_str(cfg->data_dir, sizeof(cfg->data_dir), value))
			return BAD(ctx, "data needs a directory path shorter than %d bytes",
				   CONFIG_STR_MAX);
	} else if (!strcmp(key, "user")) {
		if (copy_str(cfg->user, sizeof(cfg->user), value))
			return BAD(ctx, "user name too long");
	} else if (!strcmp(key, "postmaster")) {
		if (copy_str(cfg->postmaster, sizeof(cfg->postmaster), value) ||
		    !strchr(value, '@'))
			return BAD(ctx, "postmaster must be an address (user@domain)");
	} else if (!strcmp(key, "threads")) {
		if (parse_uint(value, 1024, &v))
			return BAD(ctx, "threads must be a number from 0 (one per CPU) to 1024");
		cfg->threads = (unsigned)v;
	} else if (!strcmp(key, "recv_buffers")) {
		if (parse_uint(value, CONFIG_RECV_BUFFERS_MAX, &v) || v == 0 || (v & (v - 1)))
			return BAD(ctx, "recv_buffers must be a power of two from 1 to %u",
				   CONFIG_RECV_BUFFERS_MAX);
		cfg->recv_buffers = (unsigned)v;
	} else if (!strcmp(key, "port_offset")) {
		if (parse_uint(value, 60000, &v))
			return BAD(ctx, "port_offset must be a number from 0 to 60000");
		cfg->port_offset = (unsigned)v;
	} else if (!strcmp(key, "shutdown_grace")) {
		if (config_parse_duration_ms(value, &cfg->shutdown_grace_ms))
			return BAD(ctx, "shutdown_grace must be a duration such as 10s");
	} else if (!strcmp(key, "segment_max")) {
		if (config_parse_size(value, &cfg->segment_max) || cfg->segment_max < 4096)
			return BAD(ctx, "segment_max must be a size of at least 4k");
	} else if (!strcmp(key, "compact_after")) {
		if (config_parse_size(value, &cfg->compact_after))
			return BAD(ctx, "compact_after must be a size (0: half of segment_max)");
	} else if (!strcmp(key, "checkpoint_after")) {
		if (config_parse_size(value, &cfg->checkpoint_after) ||
		    cfg->checkpoint_after < 4096)
			return BAD(ctx, "checkpoint_after must be a size of at least 4k");
	} else if (!strcmp(key, "auto_folders")) {
		return set_auto_folders(ctx, value);
	} else if (!strcmp(key, "log_level")) {
		if (strcmp(value, "debug") && strcmp(value, "info") && strcmp(value, "warn") &&
		    strcmp(value, "error"))
			return BAD(ctx, "log_level must be debug, info, warn or error");
		copy_str(cfg->log_level, sizeof(cfg->log_level), value);
	} else {
		return BAD(ctx, "unknown key '%s' in [server]", key);
	}
	return 0;
}

static int set_limits(struct parse_ctx *ctx, const char *key, const char *value)
{
	struct config *cfg = ctx->cfg;
	unsigned long v;
	static const struct {
		const char *key;
		size_t off;
	} durations[] = {
		{ "prelogin_timeout", offsetof(struct config, prelogin_timeout_ms) },
		{ "idle_timeout", offsetof(struct config, idle_timeout_ms) },
		{ "dual_wait", offsetof(struct config, dual_wait_ms) },
		{ "handshake_timeout", offsetof(struct config, handshake_timeout_ms) },
		{ "smtp_timeout", offsetof(struct config, smtp_timeout_ms) },
		{ "pop3_autologout", offsetof(struct config, pop3_autologout_ms) },
		{ "auth_delay", offsetof(struct config, auth_delay_ms) },
		{ "auth_delay_max", offsetof(struct config, auth_delay_max_ms) },
	};
	static const struct {
		const char *key;
		size_t off;
		unsigned long min, max;
	} counts[] = {
		{ "max_connections", offsetof(struct config, max_connections), 1, 10000000 },
		{ "max_connections_per_ip", offsetof(struct config, max_connections_per_ip), 1, 10000000 },
		{ "max_connections_per_user", offsetof(struct config, max_connections_per_user), 1, 10000000 },
		{ "max_bad_commands", offsetof(struct config, max_bad_commands), 1, 1000 },
		{ "imap_compress_level", offsetof(struct config, imap_compress_level), 0, 9 },
		{ "recipients_max", offsetof(struct config, recipients_max), 1, 100000 },
		{ "max_hops", offsetof(struct config, max_hops), 1, 1000 },
		/* RFC 5321 4.5.3.1.6: at least 1000 octets must be accepted */
		{ "smtp_line_max", offsetof(struct config, smtp_line_max), 1000, 1000000 },
		/* RFC 5321 4.5.3.1.4: at least 512; at most what a session's
		 * input buffer holds comfortably (CONN_INPUT_MAX is 256 KiB) */
		{ "smtp_command_line_max", offsetof(struct config, smtp_command_line_max), 512, 65536 },
		/* at least the pre-login limit (IMAP_LINE_MAX_PRELOGIN, 8 KiB) */
		{ "imap_line_max", offsetof(struct config, imap_line_max), 8192, 16777216 },
		/* room for a LOGIN password or a mailbox name (RECORD_NAME_MAX) */
		{ "imap_literal_max", offsetof(struct config, imap_literal_max), 1024, 16777216 },
		/* "USER " and a 120-octet name; at most POP3_AUTH_LINE_MAX, the
		 * length every line is read up to */
		{ "pop3_line_max", offsetof(struct config, pop3_line_max), 128, 2100 },
		/* the hard maxima are proto/mime.h's MIME_DEPTH_MAX and
		 * MIME_PARTS_MAX (the scanner's arrays) */
		{ "mime_depth_max", offsetof(struct config, mime_depth_max), 1, 32 },
		{ "mime_parts_max", offsetof(struct config, mime_parts_max), 1, 1000 },
	};

	for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
		if (strcmp(key, durations[i].key))
			continue;
		uint32_t *dst = (uint32_t *)((char *)cfg + durations[i].off);
		if (config_parse_duration_ms(value, dst) || *dst == 0)
			return BAD(ctx, "%s must be a positive duration such as 30s or 500ms", key);
		return 0;
	}
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		if (strcmp(key, counts[i].key))
			continue;
		if (parse_uint(value, counts[i].max, &v) || v < counts[i].min)
			return BAD(ctx, "%s must be a number from %lu to %lu", key, counts[i].min,
				   counts[i].max);
		*(uint32_t *)((char *)cfg + counts[i].off) = (uint32_t)v;
		return 0;
	}
	if (!strcmp(key, "smtp_greet_pause")) {
		/* 0 turns it off; a long pause only delays every client */
		if (config_parse_duration_ms(value, &cfg->smtp_greet_pause_ms) ||
		    cfg->smtp_greet_pause_ms > 60000)
			return BAD(ctx, "smtp_greet_pause must be a duration from 0 to 60s");
		return 0;
	}
	if (!strcmp(key, "send_queue_max")) {
		if (config_parse_size(value, &cfg->send_queue_max) || cfg->send_queue_max < 4096)
			return BAD(ctx, "send_queue_max must be a size of at least 4k");
		return 0;
	}
	if (!strcmp(key, "message_size_max")) {
		if (config_parse_size(value, &cfg->message_size_max) || cfg->message_size_max < 1024)
			return BAD(ctx, "message_size_max must be a size of at least 1k");
		return 0;
	}
	if (!strcmp(key, "quota_storage")) {
		if (config_parse_size(value, &cfg->quota_storage))
			return BAD(ctx, "quota_storage must be a size (0: no limit)");
		return 0;
	}
	if (!strcmp(key, "quota_messages")) {
		if (parse_uint(value, UINT32_MAX, &v))
			return BAD(ctx, "quota_messages must be a number (0: no limit)");
		cfg->quota_messages = v;
		return 0;
	}
	if (!strcmp(key, "folders_max")) {
		if (parse_uint(value, 1000000, &v))
			return BAD(ctx, "folders_max must be a number up to 1000000 (0: no limit)");
		cfg->folders_max = (uint32_t)v;
		return 0;
	}
	if (!strcmp(key, "header_size_max")) {
		if (config_parse_size(value, &cfg->header_size_max) || cfg->header_size_max < 1024)
			return BAD(ctx, "header_size_max must be a size of at least 1k");
		return 0;
	}
	if (!strcmp(key, "smtp_bare_lf")) {
		if (!strcmp(value, "reject"))
			cfg->smtp_bare_lf_normalize = false;
		else if (!strcmp(value, "normalize"))
			cfg->smtp_bare_lf_normalize = true;
		else
			return BAD(ctx, "smtp_bare_lf must be reject or normalize");
		return 0;
	}
	if (!strcmp(key, "plaintext_auth")) {
		if (parse_bool(value, &cfg->plaintext_auth))
			return BAD(ctx, "plaintext_auth must be yes or no");
		return 0;
	}
	if (!strcmp(key, "imap_unauthenticate")) {
		if (parse_bool(value, &cfg->imap_unauthenticate))
			return BAD(ctx, "imap_unauthenticate must be yes or no");
		return 0;
	}
	return BAD(ctx, "unknown key '%s' in [limits]", key);
}

static int set_cert(struct parse_ctx *ctx, const char *name, const char *value)
{
	struct config *cfg = ctx->cfg;
	struct tls_cert_entry *e = NULL;
	const char *comma = strchr(value, ',');

	for (size_t i = 0; i < cfg->ncerts; i++)
		if (!strcmp(cfg->certs[i].name, name))
			e = &cfg->certs[i];
	if (!e) {
		if (cfg->ncerts == CONFIG_MAX_CERTS)
			return BAD(ctx, "more than %d certificates", CONFIG_MAX_CERTS);
		e = &cfg->certs[cfg->ncerts++];
		memset(e, 0, sizeof(*e));
		copy_str(e->name, sizeof(e->name), name);
	}
	if (!comma)
		return BAD(ctx, "expected CERT_FILE,KEY_FILE");
	size_t n = (size_t)(comma - value);
	if (n == 0 || n >= sizeof(e->cert) || !comma[1] ||
	    copy_str(e->key, sizeof(e->key), comma + 1))
		return BAD(ctx, "expected CERT_FILE,KEY_FILE");
	memcpy(e->cert, value, n);
	e->cert[n] = '\0';
	return 0;
}

static int set_tls(struct parse_ctx *ctx, const char *key, const char *value)
{
	struct config *cfg = ctx->cfg;

	if (!strcmp(key, "cert"))
		return set_cert(ctx, "", value);
	if (!strncmp(key, "sni.", 4)) {
		/* "*.example.org": a wildcard for one label (tls/ matches it). */
		if (!valid_hostname(strncmp(key + 4, "*.", 2) ? key + 4 : key + 6))
			return BAD(ctx, "'%s' is not a valid SNI host name", key + 4);
		return set_cert(ctx, key + 4, value);
	}
	if (!strcmp(key, "ticket_rotate")) {
		uint32_t ms;
		if (config_parse_duration_ms(value, &ms) || ms < 60000)
			return BAD(ctx, "ticket_rotate must be a duration of at least 1m");
		cfg->ticket_rotate_s = ms / 1000;
		return 0;
	}
	return BAD(ctx, "unknown key '%s' in [tls] (cert = CERT,KEY or sni.NAME = CERT,KEY)", key);
}

static int set_listener(struct parse_ctx *ctx, const char *key, const char *value)
{
	struct listener_config *l = ctx->listener;
	unsigned long v;
	int e;

	if (!strcmp(key, "address")) {
		if (copy_str(l->address, sizeof(l->address), value))
			return BAD(ctx, "address too long");
	} else if (!strcmp(key, "port")) {
		if (parse_uint(value, 65535, &v) || v == 0)
			return BAD(ctx, "port must be a number from 1 to 65535");
		l->port = (uint16_t)v;
	} else if (!strcmp(key, "protocol")) {
		if ((e = parse_enum(value, proto_names, 4)) < 0)
			return BAD(ctx, "protocol must be smtp, imap, pop3 or http");
		l->proto = (enum listener_proto)e;
	} else if (!strcmp(key, "security")) {
		if ((e = parse_enum(value, security_names, 4)) < 0)
			return BAD(ctx, "security must be plain, starttls, tls or dual");
		l->security = (enum listener_security)e;
	} else if (!strcmp(key, "role")) {
		if ((e = parse_enum(value, role_names, 2)) < 0)
			return BAD(ctx, "role must be mx or submission");
		l->role = (enum listener_role)e;
	} else {
		return BAD(ctx, "unknown key '%s' in [listener %s]", key, l->name);
	}
	return 0;
}

static int set_outbound(struct parse_ctx *ctx, const char *key, const char *value)
{
	struct config *cfg = ctx->cfg;
	unsigned long v;
	static const struct {
		const char *key;
		size_t off;
	} durations[] = {
		{ "retry_min", offsetof(struct config, ob_retry_min_ms) },
		{ "retry_max", offsetof(struct config, ob_retry_max_ms) },
		{ "expire", offsetof(struct config, ob_expire_ms) },
		{ "timeout", offsetof(struct config, ob_timeout_ms) },
		{ "connection_idle", offsetof(struct config, ob_idle_ms) },
		{ "delay_warning", offsetof(struct config, ob_delay_ms) },
	};
	for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
		if (strcmp(key, durations[i].key))
			continue;
		uint32_t *dst = (uint32_t *)((char *)cfg + durations[i].off);
		if (config_parse_duration_ms(value, dst) || *dst == 0)
			return BAD(ctx, "%s must be a positive duration such as 30s or 5m", key);
		return 0;
	}
	if (!strcmp(key, "dns")) {
		if (copy_str(cfg->ob_dns, sizeof(cfg->ob_dns), value))
			return BAD(ctx, "dns too long");
	} else if (!strcmp(key, "mx_port")) {
		if (parse_uint(value, 65535, &v) || v == 0)
			return BAD(ctx, "mx_port must be a number from 1 to 65535");
		cfg->ob_mx_port = (uint16_t)v;
	} else if (!strcmp(key, "max_per_domain")) {
		if (parse_uint(value, 10000, &v) || v == 0)
			return BAD(ctx, "max_per_domain must be a number from 1 to 10000");
		cfg->ob_max_per_domain = (uint32_t)v;
	} else if (!strcmp(key, "max_per_connection")) {
		if (parse_uint(value, 100000, &v) || v == 0)
			return BAD(ctx, "max_per_connection must be a number from 1 to 100000");
		cfg->ob_max_per_connection = (uint32_t)v;
	} else if (!strcmp(key, "smart_host")) {
		if (copy_str(cfg->ob_smart_host, sizeof(cfg->ob_smart_host), value))
			return BAD(ctx, "smart_host too long");
	} else if (!strcmp(key, "smart_user")) {
		if (copy_str(cfg->ob_smart_user, sizeof(cfg->ob_smart_user), value))
			return BAD(ctx, "smart_user too long");
	} else if (!strcmp(key, "smart_tls")) {
		if (!strcmp(value, "implicit"))
			cfg->ob_smart_implicit = true;
		else if (!strcmp(value, "starttls"))
			cfg->ob_smart_implicit = false;
		else
			return BAD(ctx, "smart_tls must be starttls or implicit");
	} else if (!strcmp(key, "smart_tls_verify")) {
		bool b;
		if (parse_bool(value, &b))
			return BAD(ctx, "smart_tls_verify must be yes or no");
		cfg->ob_smart_verify = b;
	} else if (!strcmp(key, "smart_tls_ca")) {
		if (!*value || copy_str(cfg->ob_smart_ca, sizeof(cfg->ob_smart_ca), value))
			return BAD(ctx, "smart_tls_ca must be a file name");
	} else if (!strcmp(key, "smart_password")) {
		if (copy_str(cfg->ob_smart_password, sizeof(cfg->ob_smart_password), value))
			return BAD(ctx, "smart_password too long");
	} else if (!strcmp(key, "dkim_selector")) {
		if (!*value || copy_str(cfg->ob_dkim_selector, sizeof(cfg->ob_dkim_selector), value))
			return BAD(ctx, "dkim_selector must be a short name");
	} else {
		return BAD(ctx, "unknown key '%s' in [outbound]", key);
	}
	return 0;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	char *e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int parse_section(struct parse_ctx *ctx, char *name)
{
	struct config *cfg = ctx->cfg;

	name = trim(name);
	if (!strcmp(name, "server")) {
		ctx->section = SEC_SERVER;
	} else if (!strcmp(name, "limits")) {
		ctx->section = SEC_LIMITS;
	} else if (!strcmp(name, "tls")) {
		ctx->section = SEC_TLS_S;
	} else if (!strcmp(name, "outbound")) {
		ctx->section = SEC_OUTBOUND;
	} else if (!strncmp(name, "listener", 8) && (name[8] == ' ' || name[8] == '\t')) {
		char *lname = trim(name + 9);
		if (!*lname)
			return BAD(ctx, "[listener NAME] needs a name");
		if (!ctx->saw_listener) {
			/* The file's listeners replace the defaults. */
			cfg->nlisteners = 0;
			ctx->saw_listener = true;
		}
		for (size_t i = 0; i < cfg->nlisteners; i++)
			if (!strcmp(cfg->listeners[i].name, lname))
				return BAD(ctx, "listener '%s' is defined twice (first at line %d)",
					   lname, cfg->listeners[i].line);
		if (cfg->nlisteners == CONFIG_MAX_LISTENERS)
			return BAD(ctx, "more than %d listeners", CONFIG_MAX_LISTENERS);
		struct listener_config *l = &cfg->listeners[cfg->nlisteners++];
		memset(l, 0, sizeof(*l));
		if (copy_str(l->name, sizeof(l->name), lname))
			return BAD(ctx, "listener name too long");
		l->line = ctx->line;
		l->security = SEC_PLAIN;
		l->role = ROLE_MX;
		ctx->listener = l;
		ctx->section = SEC_LISTENER;
	} else {
		return BAD(ctx, "unknown section [%s] (server, limits, tls, outbound, listener NAME)", name);
	}
	return 0;
}

int config_parse_text(struct config *cfg, const char *fname, const char *text, size_t len,
		      char *err, size_t errlen)
{
	struct parse_ctx ctx = {
		.cfg = cfg, .fname = fname, .err = err, .errlen = errlen,
	};
	size_t pos = 0;
	char buf[1024];
	int rc;

	while (pos < len) {
		size_t end = pos;
		while (end < len && text[end] != '\n')
			end++;
		ctx.line++;
		size_t n = end - pos;
		if (n >= sizeof(buf))
			return BAD(&ctx, "line longer than %zu bytes", sizeof(buf) - 1);
		memcpy(buf, text + pos, n);
		buf[n] = '\0';
		pos = end < len ? end + 1 : end;
		if (memchr(buf, '\0', n))
			return BAD(&ctx, "NUL byte in line");

		char *s = trim(buf);
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;
		if (*s == '[') {
			char *close = strchr(s, ']');
			if (!close || trim(close + 1)[0] != '\0')
				return BAD(&ctx, "expected [section]");
			*close = '\0';
			if ((rc = parse_section(&ctx, s + 1)))
				return rc;
			continue;
		}
		char *eq = strchr(s, '=');
		if (!eq)
			return BAD(&ctx, "expected key = value");
		*eq = '\0';
		char *key = trim(s), *value = trim(eq + 1);
		/* Strip a trailing comment introduced by " #". */
		char *hash = strstr(value, " #");
		if (hash) {
			*hash = '\0';
			value = trim(value);
		}
		if (!*key)
			return BAD(&ctx, "expected key = value");
		switch (ctx.section) {
		case SEC_NONE:
			return BAD(&ctx, "'%s' outside of a section", key);
		case SEC_SERVER: rc = set_server(&ctx, key, value); break;
		case SEC_LIMITS: rc = set_limits(&ctx, key, value); break;
		case SEC_TLS_S: rc = set_tls(&ctx, key, value); break;
		case SEC_LISTENER: rc = set_listener(&ctx, key, value); break;
		case SEC_OUTBOUND: rc = set_outbound(&ctx, key, value); break;
		default: rc = -EINVAL; break;
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* "" and "*" both mean every address. */
static bool same_address(const char *a, const char *b)
{
	if (!strcmp(a, "*"))
		a = "";
	if (!strcmp(b, "*"))
		b = "";
	return strcmp(a, b) == 0;
}

int config_validate(const struct config *cfg, char *err, size_t errlen)
{
	if (cfg->nlisteners == 0)
		return fail(err, errlen, cfg->source, 0, "no listeners");
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct listener_config *l = &cfg->listeners[i];
		if (l->port == 0)
			return fail(err, errlen, cfg->source, l->line,
				    "[listener %s] needs a port", l->name);
		if ((unsigned)l->port + cfg->port_offset > 65535)
			return fail(err, errlen, cfg->source, l->line,
				    "[listener %s] port %u + port_offset %u is above 65535", l->name,
				    l->port, cfg->port_offset);
		if (l->proto == PROTO_HTTP && l->security != SEC_PLAIN && l->security != SEC_TLS)
			return fail(err, errlen, cfg->source, l->line,
				    "[listener %s] protocol http takes security plain or tls", l->name);
		for (size_t j = 0; j < i; j++) {
			const struct listener_config *o = &cfg->listeners[j];
			if (o->port == l->port && same_address(o->address, l->address))
				return fail(err, errlen, cfg->source, l->line,
					    "[listener %s] uses port %u, already used by [listener %s] at line %d",
					    l->name, l->port, o->name, o->line);
		}
	}
	for (size_t i = 0; i < cfg->ncerts; i++)
		if (!cfg->certs[i].cert[0] || !cfg->certs[i].key[0])
			return fail(err, errlen, cfg->source, 0, "certificate '%s' needs CERT,KEY",
				    cfg->certs[i].name);
	if (cfg->auth_delay_max_ms < cfg->auth_delay_ms)
		return fail(err, errlen, cfg->source, 0,
			    "auth_delay_max (%ums) is below auth_delay (%ums)",
			    cfg->auth_delay_max_ms, cfg->auth_delay_ms);
	return 0;
}

int config_load(struct config *cfg, const char *path, char *err, size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	int rc;

	config_defaults(cfg);
	/* The default listeners first; a file with [listener] rows replaces them. */
	rc = config_parse_text(cfg, "(embedded default)", config_default_text,
			       strlen(config_default_text), err, errlen);
	if (rc)
		return rc;
	for (size_t i = 0; i < cfg->nlisteners; i++)
		cfg->listeners[i].line = 0; /* "(embedded default)", not a file line */
	if (path) {
		FILE *f = fopen(path, "r");
		if (!f) {
			snprintf(err, errlen, "%s: %s", path, strerror(errno));
			return -errno;
		}
		struct stat st;
		if (fstat(fileno(f), &st) == 0 && st.st_size > (1 << 20)) {
			fclose(f);
			snprintf(err, errlen, "%s: larger than 1 MiB", path);
			return -EFBIG;
		}
		text = malloc((size_t)st.st_size + 1);
		if (!text) {
			fclose(f);
			return -ENOMEM;
		}
		len = fread(text, 1, (size_t)st.st_size, f);
		fclose(f);
		copy_str(cfg->source, sizeof(cfg->source), path);
		rc = config_parse_text(cfg, path, text, len, err, errlen);
		free(text);
		if (rc)
			return rc;
	}
	return config_validate(cfg, err, errlen);
}

void config_print(const struct config *cfg, FILE *out)
{
	fprintf(out, "# effective configuration from %s\n", cfg->source);
	fprintf(out, "[server]\nhostname = %s\ndomains = ", cfg->hostname);
	for (size_t i = 0; i < cfg->ndomains; i++)
		fprintf(out, "%s%s", i ? ", " : "", cfg->domains[i]);
	fprintf(out, "\ndata = %s\nthreads = %u", cfg->data_dir, cfg->threads);
	if (cfg->threads == 0) {
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		fprintf(out, "   # one loop per online CPU: %ld here", ncpu > 0 ? ncpu : 1);
	}
	fprintf(out, "\nrecv_buffers = %u\nport_offset = %u\nshutdown_grace = %ums\n"
		"log_level = %s\nsegment_max = %llu\ncompact_after = %llu\ncheckpoint_after = %llu\n",
		cfg->recv_buffers, cfg->port_offset, cfg->shutdown_grace_ms, cfg->log_level,
		(unsigned long long)cfg->segment_max, (unsigned long long)cfg->compact_after,
		(unsigned long long)cfg->checkpoint_after);
	if (cfg->nauto_folders == 0) /* no comment after it: it would be the value */
		fprintf(out, "# no auto_folders: a new user has INBOX only\n");
	fprintf(out, "auto_folders =");
	for (size_t i = 0; i < cfg->nauto_folders; i++)
		fprintf(out, " %s", cfg->auto_folders[i]);
	fprintf(out, "\n");
	if (cfg->user[0])
		fprintf(out, "user = %s\n", cfg->user);
	if (cfg->postmaster[0])
		fprintf(out, "postmaster = %s\n", cfg->postmaster);
	fprintf(out, "\n[limits]\nmax_connections = %u\nmax_connections_per_ip = %u\n"
		"max_connections_per_user = %u\n"
		"prelogin_timeout = %ums\nidle_timeout = %ums\ndual_wait = %ums\n"
		"handshake_timeout = %ums\nmax_bad_commands = %u\nsend_queue_max = %llu\n"
		"plaintext_auth = %s\nmessage_size_max = %llu\nrecipients_max = %u\n"
		"smtp_timeout = %ums\nheader_size_max = %llu\nmax_hops = %u\nsmtp_bare_lf = %s\n"
		"quota_storage = %llu\nquota_messages = %llu\npop3_autologout = %ums\n",
		cfg->max_connections, cfg->max_connections_per_ip, cfg->max_connections_per_user,
		cfg->prelogin_timeout_ms,
		cfg->idle_timeout_ms, cfg->dual_wait_ms, cfg->handshake_timeout_ms,
		cfg->max_bad_commands, (unsigned long long)cfg->send_queue_max,
		cfg->plaintext_auth ? "yes" : "no", (unsigned long long)cfg->message_size_max,
		cfg->recipients_max, cfg->smtp_timeout_ms,
		(unsigned long long)cfg->header_size_max, cfg->max_hops,
		cfg->smtp_bare_lf_normalize ? "normalize" : "reject",
		(unsigned long long)cfg->quota_storage, (unsigned long long)cfg->quota_messages,
		cfg->pop3_autologout_ms);
	fprintf(out, "auth_delay = %ums\nauth_delay_max = %ums\nmime_depth_max = %u\n"
		"mime_parts_max = %u\nsmtp_line_max = %u\nsmtp_command_line_max = %u\n"
		"smtp_greet_pause = %ums\nimap_line_max = %u\n"
		"imap_literal_max = %u\npop3_line_max = %u\n"
		"imap_unauthenticate = %s\nimap_compress_level = %u\nfolders_max = %u\n",
		cfg->auth_delay_ms, cfg->auth_delay_max_ms, cfg->mime_depth_max, cfg->mime_parts_max,
		cfg->smtp_line_max, cfg->smtp_command_line_max, cfg->smtp_greet_pause_ms,
		cfg->imap_line_max, cfg->imap_literal_max, cfg->pop3_line_max,
		cfg->imap_unauthenticate ? "yes" : "no", cfg->imap_compress_level, cfg->folders_max);
	fprintf(out, "\n[outbound]\n%s%s\nmx_port = %u\nretry_min = %ums\nretry_max = %ums\n"
		"expire = %ums\ntimeout = %ums\nconnection_idle = %ums\ndelay_warning = %ums\n"
		"max_per_domain = %u\n"
		"max_per_connection = %u\n"
		"dkim_selector = %s\n",
		cfg->ob_dns[0] ? "dns = " : "# dns: from ", cfg->ob_dns[0] ? cfg->ob_dns : "/etc/resolv.conf",
		cfg->ob_mx_port,
		cfg->ob_retry_min_ms, cfg->ob_retry_max_ms, cfg->ob_expire_ms, cfg->ob_timeout_ms,
		cfg->ob_idle_ms, cfg->ob_delay_ms,
		cfg->ob_max_per_domain, cfg->ob_max_per_connection, cfg->ob_dkim_selector);
	if (cfg->ob_smart_host[0])
		fprintf(out, "smart_host = %s\nsmart_tls = %s\n", cfg->ob_smart_host,
			cfg->ob_smart_implicit ? "implicit" : "starttls");
	if (cfg->ob_smart_host[0] && cfg->ob_smart_verify)
		fprintf(out, "smart_tls_verify = yes\nsmart_tls_ca = %s\n", cfg->ob_smart_ca);
	if (cfg->ob_smart_user[0])
		fprintf(out, "smart_user = %s\nsmart_password = ********\n", cfg->ob_smart_user);
	fprintf(out, "\n[tls]\nticket_rotate = %us\n", cfg->ticket_rotate_s);
	for (size_t i = 0; i < cfg->ncerts; i++) {
		if (cfg->certs[i].name[0])
			fprintf(out, "sni.%s = %s,%s\n", cfg->certs[i].name, cfg->certs[i].cert,
				cfg->certs[i].key);
		else
			fprintf(out, "cert = %s,%s\n", cfg->certs[i].cert, cfg->certs[i].key);
	}
	if (cfg->ncerts == 0)
		fprintf(out, "# no certificate: a self-signed one is generated in %s/tls/\n",
			cfg->data_dir);
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		const struct listener_config *l = &cfg->listeners[i];
		bool any = !l->address[0] || !strcmp(l->address, "*");
		fprintf(out, "\n[listener %s]\naddress = %s%s\nport = %u", l->name,
			any ? "*" : l->address, any ? "   # every address, IPv6 and IPv4" : "",
			l->port);
		if (cfg->port_offset)
			fprintf(out, "   # listening on %u", l->port + cfg->port_offset);
		fprintf(out, "\nprotocol = %s\nsecurity = %s\n", config_proto_str(l->proto),
			config_security_str(l->security));
		if (l->proto == PROTO_SMTP)
			fprintf(out, "role = %s\n", config_role_str(l->role));
	}
}
