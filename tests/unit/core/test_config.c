/* The configuration (core/config.h): the embedded default, every kind of
 * bad input as "FILE:LINE: message", durations and sizes, listener
 * replacement, and config_print() round trips. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

/* Writes len bytes to a new temporary file; returns its malloc'd path. */
static char *write_tmp(const char *text, size_t len)
{
	char *path = strdup("/tmp/ringmail-test-config-XXXXXX");
	cr_assert_not_null(path);
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

/* config_load() of a file holding text; returns rc, err filled. */
static int load_text(struct config *cfg, const char *text, size_t len, char **path_r, char *err,
		     size_t errlen)
{
	char *path = write_tmp(text, len);
	err[0] = '\0';
	int rc = config_load(cfg, path, err, errlen);
	unlink(path);
	*path_r = path;
	return rc;
}

/* ---- the embedded default ---------------------------------------------- */

struct want_listener {
	const char *name;
	uint16_t port;
	enum listener_proto proto;
	enum listener_security security;
	enum listener_role role;
};

static const struct want_listener default_rows[] = {
	{ "smtps", 465, PROTO_SMTP, SEC_TLS, ROLE_SUBMISSION },
	{ "submission", 587, PROTO_SMTP, SEC_STARTTLS, ROLE_SUBMISSION },
	{ "smtp", 25, PROTO_SMTP, SEC_PLAIN, ROLE_MX },
	{ "smtp-26", 26, PROTO_SMTP, SEC_PLAIN, ROLE_MX },
	{ "smtp-2025", 2025, PROTO_SMTP, SEC_PLAIN, ROLE_MX },
	{ "smtp-2525", 2525, PROTO_SMTP, SEC_PLAIN, ROLE_MX },
	{ "imaps", 993, PROTO_IMAP, SEC_TLS, ROLE_MX },
	{ "imap", 143, PROTO_IMAP, SEC_PLAIN, ROLE_MX },
	{ "pop3s", 995, PROTO_POP3, SEC_DUAL, ROLE_MX },
	{ "pop3", 110, PROTO_POP3, SEC_PLAIN, ROLE_MX },
	{ "http", 80, PROTO_HTTP, SEC_PLAIN, ROLE_MX },
	{ "https", 443, PROTO_HTTP, SEC_TLS, ROLE_MX },
};
#define NDEFAULT (sizeof(default_rows) / sizeof(default_rows[0]))

static void check_default_listeners(const struct config *cfg)
{
	cr_assert_eq(cfg->nlisteners, NDEFAULT);
	for (size_t i = 0; i < NDEFAULT; i++) {
		const struct want_listener *w = &default_rows[i];
		const struct listener_config *l = &cfg->listeners[i];
		cr_assert_str_eq(l->name, w->name);
		cr_assert_eq(l->port, w->port, "%s: port %u", w->name, l->port);
		cr_assert_eq(l->proto, w->proto, "%s: protocol %s", w->name,
			     config_proto_str(l->proto));
		cr_assert_eq(l->security, w->security, "%s: security %s", w->name,
			     config_security_str(l->security));
		if (w->proto == PROTO_SMTP)
			cr_assert_eq(l->role, w->role, "%s: role %s", w->name,
				     config_role_str(l->role));
		cr_assert(l->address[0] == '\0' || !strcmp(l->address, "*"),
			  "%s: address '%s'", w->name, l->address);
	}
}

Test(config, embedded_default_parses_and_validates)
{
	static struct config cfg;
	char err[512] = "";

	cr_assert_eq(config_load(&cfg, NULL, err, sizeof(err)), 0, "%s", err);
	check_default_listeners(&cfg);
	cr_assert_str_eq(cfg.hostname, "mail.example.com");
	cr_assert_eq(cfg.ndomains, 1);
	cr_assert_str_eq(cfg.domains[0], "example.com");
	cr_assert_eq(cfg.port_offset, 0);
	/* the limits that were constants keep their values */
	cr_assert_eq(cfg.imap_literal_max, 64 * 1024);
	cr_assert_eq(cfg.pop3_line_max, 255);
	cr_assert_eq(cfg.checkpoint_after, 4u << 20);
	/* every user gets the five special-use folders (Dovecot's auto = subscribe) */
	cr_assert_eq(cfg.nauto_folders, 5);
	static const char *const autos[] = { "Sent", "Drafts", "Trash", "Junk", "Archive" };
	for (size_t i = 0; i < 5; i++)
		cr_assert_str_eq(cfg.auto_folders[i], autos[i]);
	cr_assert_eq(config_validate(&cfg, err, sizeof(err)), 0, "%s", err);
}

/* The [outbound] defaults docs/queue.md promises: retries from 5 minutes,
 * doubling up to 4 hours, for 5 days, then a bounce. */
Test(config, outbound_defaults)
{
	static struct config cfg;
	char err[512] = "";

	cr_assert_eq(config_load(&cfg, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg.ob_retry_min_ms, 5u * 60 * 1000);
	cr_assert_eq(cfg.ob_retry_max_ms, 4u * 3600 * 1000);
	cr_assert_eq(cfg.ob_expire_ms, 5u * 24 * 3600 * 1000, "expire %u ms",
		     (unsigned)cfg.ob_expire_ms);
	cr_assert_eq(cfg.ob_timeout_ms, 5u * 60 * 1000);
	cr_assert_eq(cfg.ob_idle_ms, 30u * 1000);
	cr_assert_eq(cfg.ob_delay_ms, 4u * 3600 * 1000);
	cr_assert_eq(cfg.ob_mx_port, 25);
	cr_assert_eq(cfg.ob_max_per_domain, 8);
	cr_assert_eq(cfg.ob_max_per_connection, 100);
	cr_assert_str_eq(cfg.ob_dns, "", "no dns: /etc/resolv.conf");
	cr_assert_str_eq(cfg.ob_smart_host, "");
	cr_assert_not(cfg.ob_smart_verify);
	cr_assert_str_eq(cfg.ob_dkim_selector, "ringmail");
}

/* [outbound] values in a file reach the struct (durations in ms too). */
Test(config, outbound_values_reach_the_struct)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"[outbound]\ndns = 127.0.0.1:5353\nmx_port = 2525\nretry_min = 250ms\n"
		"retry_max = 2s\nexpire = 120h\ntimeout = 10s\nmax_per_domain = 2\n"
		"max_per_connection = 7\nconnection_idle = 4s\ndelay_warning = 1m\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_str_eq(cfg.ob_dns, "127.0.0.1:5353");
	cr_assert_eq(cfg.ob_mx_port, 2525);
	cr_assert_eq(cfg.ob_retry_min_ms, 250);
	cr_assert_eq(cfg.ob_retry_max_ms, 2000);
	cr_assert_eq(cfg.ob_expire_ms, 120u * 3600 * 1000);
	cr_assert_eq(cfg.ob_timeout_ms, 10000);
	cr_assert_eq(cfg.ob_max_per_domain, 2);
	cr_assert_eq(cfg.ob_max_per_connection, 7);
	cr_assert_eq(cfg.ob_idle_ms, 4000);
	cr_assert_eq(cfg.ob_delay_ms, 60000);
}

Test(config, embedded_default_text_alone)
{
	static struct config cfg;
	char err[512] = "";

	config_defaults(&cfg);
	cr_assert_eq(cfg.nlisteners, 0, "config_defaults has no listeners");
	cr_assert_eq(config_parse_text(&cfg, "x", config_default_text, strlen(config_default_text),
				       err, sizeof(err)),
		     0, "%s", err);
	check_default_listeners(&cfg);
}

/* config.h: listener_config.line is "0: embedded default". */
Test(config, default_listeners_carry_line_zero)
{
	static struct config cfg;
	char err[512] = "";

	cr_assert_eq(config_load(&cfg, NULL, err, sizeof(err)), 0, "%s", err);
	for (size_t i = 0; i < cfg.nlisteners; i++)
		cr_expect_eq(cfg.listeners[i].line, 0, "[listener %s] has line %d",
			     cfg.listeners[i].name, cfg.listeners[i].line);
}

Test(config, file_without_listeners_keeps_defaults)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] = "[server]\nhostname = mx.example.net\n[limits]\nmax_connections = 5\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	check_default_listeners(&cfg);
	cr_assert_str_eq(cfg.hostname, "mx.example.net");
	cr_assert_eq(cfg.max_connections, 5);
}

Test(config, file_listeners_replace_defaults)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"[listener only]\n"
		"port = 2000\n"
		"protocol = imap\n"
		"\n"
		"[listener second]\n"
		"address = 127.0.0.1\n"
		"port = 2001\n"
		"protocol = smtp\n"
		"security = starttls\n"
		"role = submission\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_eq(cfg.nlisteners, 2);
	cr_assert_str_eq(cfg.listeners[0].name, "only");
	cr_assert_eq(cfg.listeners[0].port, 2000);
	cr_assert_eq(cfg.listeners[0].proto, PROTO_IMAP);
	cr_assert_eq(cfg.listeners[0].security, SEC_PLAIN);
	cr_assert_eq(cfg.listeners[0].line, 1);
	cr_assert_str_eq(cfg.listeners[1].name, "second");
	cr_assert_str_eq(cfg.listeners[1].address, "127.0.0.1");
	cr_assert_eq(cfg.listeners[1].port, 2001);
	cr_assert_eq(cfg.listeners[1].proto, PROTO_SMTP);
	cr_assert_eq(cfg.listeners[1].security, SEC_STARTTLS);
	cr_assert_eq(cfg.listeners[1].role, ROLE_SUBMISSION);
	cr_assert_eq(cfg.listeners[1].line, 5);
}

/* ---- bad input ----------------------------------------------------------- */

/* Arrays, not pointers: Criterion copies parameters into the test process
 * byte by byte. */
struct bad_case {
	char text[160];
	int line;
	char msg[96]; /* must appear right after "FILE:LINE: " */
};

static const struct bad_case bad_cases[] = {
	/* sections */
	{ "[bogus]\n", 1, "unknown section [bogus]" },
	{ "[server]\nhostname = a.example\n\n[Server]\n", 4, "unknown section [Server]" },
	{ "[server\n", 1, "expected [section]" },
	{ "[server] x\n", 1, "expected [section]" },
	{ "[listener]\n", 1, "unknown section [listener]" },
	{ "[listener   ]\n", 1, "unknown section [listener]" },
	/* unknown keys, per section */
	{ "[server]\nhostname = a.example\nfoo = 1\n", 3, "unknown key 'foo' in [server]" },
	{ "[limits]\n\n# c\nbar = 2\n", 4, "unknown key 'bar' in [limits]" },
	{ "[tls]\nbaz = 1\n", 2, "unknown key 'baz' in [tls]" },
	{ "[listener x]\nport = 2000\nqux = 1\n", 3, "unknown key 'qux' in [listener x]" },
	/* structure */
	{ "# comment\nhostname = a\n", 2, "'hostname' outside of a section" },
	{ "\n\n\nthreads=1\n[server]\n", 4, "'threads' outside of a section" },
	{ "[server]\nhostname\n", 2, "expected key = value" },
	{ "[server]\n = value\n", 2, "expected key = value" },
	{ "[server]\r\nbogus = 1\r\n", 2, "unknown key 'bogus' in [server]" },
	/* numbers */
	{ "[server]\nthreads = many\n", 2, "threads must be a number" },
	{ "[server]\nthreads = 1025\n", 2, "threads must be a number" },
	{ "[server]\nthreads = -1\n", 2, "threads must be a number" },
	{ "[server]\nthreads = 4 cores\n", 2, "threads must be a number" },
	{ "[server]\nport_offset = 60001\n", 2, "port_offset must be a number" },
	{ "[server]\nrecv_buffers = 0\n", 2, "recv_buffers must be a power of two from 1 to 32768" },
	{ "[server]\nrecv_buffers = 384\n", 2, "recv_buffers must be a power of two" },
	{ "[server]\nrecv_buffers = 65536\n", 2, "recv_buffers must be a power of two" },
	{ "[server]\nrecv_buffers = many\n", 2, "recv_buffers must be a power of two" },
	{ "[limits]\nmax_connections = 0\n", 2, "max_connections must be a number from 1" },
	{ "[limits]\nmax_connections_per_ip = 12x\n", 2, "max_connections_per_ip must be a number" },
	{ "[limits]\nmax_bad_commands = 1001\n", 2, "max_bad_commands must be a number" },
	{ "[limits]\nimap_compress_level = 10\n", 2, "imap_compress_level must be a number" },
	{ "[limits]\nmax_connections = 99999999999999999999999\n", 2,
	  "max_connections must be a number" },
	/* ports */
	{ "[listener a]\nport = 0\n", 2, "port must be a number from 1 to 65535" },
	{ "[listener a]\nport = 65536\n", 2, "port must be a number from 1 to 65535" },
	{ "[listener a]\nport = 25x\n", 2, "port must be a number from 1 to 65535" },
	{ "[listener a]\nport =\n", 2, "port must be a number from 1 to 65535" },
	{ "[listener a]\nprotocol = smtp\n", 1, "[listener a] needs a port" },
	{ "[server]\nport_offset = 1000\n[listener a]\nport = 65000\n", 3,
	  "[listener a] port 65000 + port_offset 1000 is above 65535" },
	/* durations */
	{ "[limits]\nprelogin_timeout = 10x\n", 2, "prelogin_timeout must be a positive duration" },
	{ "[limits]\nidle_timeout = 0\n", 2, "idle_timeout must be a positive duration" },
	{ "[limits]\ndual_wait = s\n", 2, "dual_wait must be a positive duration" },
	{ "[limits]\nhandshake_timeout = 1.5s\n", 2, "handshake_timeout must be a positive duration" },
	{ "[limits]\nprelogin_timeout = 5000000s\n", 2, "prelogin_timeout must be a positive duration" },
	{ "[limits]\nauth_delay = 0\n", 2, "auth_delay must be a positive duration" },
	{ "[limits]\nauth_delay_max = x\n", 2, "auth_delay_max must be a positive duration" },
	{ "[limits]\nmime_depth_max = 33\n", 2, "mime_depth_max must be a number from 1 to 32" },
	{ "[limits]\nmime_parts_max = 0\n", 2, "mime_parts_max must be a number from 1 to 1000" },
	{ "[limits]\nsmtp_line_max = 999\n", 2, "smtp_line_max must be a number from 1000 to 1000000" },
	{ "[limits]\nsmtp_command_line_max = 511\n", 2,
	  "smtp_command_line_max must be a number from 512 to 65536" },
	{ "[limits]\nsmtp_command_line_max = 65537\n", 2,
	  "smtp_command_line_max must be a number from 512 to 65536" },
	{ "[limits]\nsmtp_greet_pause = 61s\n", 2, "smtp_greet_pause must be a duration from 0 to 60s" },
	{ "[limits]\nsmtp_greet_pause = soon\n", 2, "smtp_greet_pause must be a duration from 0 to 60s" },
	{ "[limits]\nimap_line_max = 4096\n", 2, "imap_line_max must be a number from 8192 to 16777216" },
	{ "[limits]\nimap_literal_max = 1023\n", 2, "imap_literal_max must be a number from 1024 to 16777216" },
	{ "[limits]\nimap_literal_max = 16777217\n", 2, "imap_literal_max must be a number from 1024" },
	{ "[server]\ncheckpoint_after = 4000\n", 2, "checkpoint_after must be a size of at least 4k" },
	{ "[limits]\npop3_line_max = 127\n", 2, "pop3_line_max must be a number from 128 to 2100" },
	{ "[limits]\npop3_line_max = 2101\n", 2, "pop3_line_max must be a number from 128 to 2100" },
	{ "[server]\nshutdown_grace = 1d\n", 2, "shutdown_grace must be a duration" },
	{ "[tls]\nticket_rotate = 30s\n", 2, "ticket_rotate must be a duration of at least 1m" },
	/* sizes */
	{ "[limits]\nsend_queue_max = 4x\n", 2, "send_queue_max must be a size" },
	{ "[limits]\nsend_queue_max = 1k\n", 2, "send_queue_max must be a size of at least 4k" },
	{ "[limits]\nsend_queue_max = 64kk\n", 2, "send_queue_max must be a size" },
	{ "[limits]\nquota_storage = 10q\n", 2, "quota_storage must be a size" },
	{ "[limits]\nquota_messages = -1\n", 2, "quota_messages must be a number" },
	{ "[limits]\nfolders_max = 2000000\n", 2, "folders_max must be a number" },
	{ "[server]\nauto_folders = Sent inbox\n", 2, "auto_folders: 'inbox' is not a usable folder name" },
	{ "[server]\nauto_folders = inbox/Sent\n", 2, "auto_folders: 'inbox/Sent' is not a usable" },
	{ "[server]\nauto_folders = /Sent\n", 2, "auto_folders: '/Sent' is not a usable" },
	{ "[server]\nauto_folders = Sent/\n", 2, "auto_folders: 'Sent/' is not a usable" },
	{ "[server]\nauto_folders = a//b\n", 2, "auto_folders: 'a//b' is not a usable" },
	{ "[server]\nauto_folders = Se*nt\n", 2, "auto_folders: 'Se*nt' is not a usable" },
	{ "[server]\nauto_folders = \"Sent\"\n", 2, "auto_folders: '\"Sent\"' is not a usable" },
	{ "[server]\nauto_folders = Entw\xc3\xbcrfe\n", 2, "auto_folders: 'Entw\xc3\xbcrfe' is not a usable" },
	{ "[server]\nauto_folders = Sent Trash Sent\n", 2, "auto_folders names 'Sent' twice" },
	{ "[server]\nauto_folders = a b c d e f g h i j k l m n o p q\n", 2,
	  "more than 16 auto_folders" },
	/* duplicates */
	{ "[listener a]\nport = 2000\n[listener a]\nport = 2001\n", 3,
	  "listener 'a' is defined twice (first at line 1)" },
	{ "[listener a]\nport = 2000\n\n[listener b]\nport = 2000\n", 4,
	  "[listener b] uses port 2000, already used by [listener a] at line 1" },
	/* enums */
	{ "[listener a]\nport = 2000\nprotocol = gopher\n", 3,
	  "protocol must be smtp, imap, pop3 or http" },
	{ "[listener a]\nport = 2000\nprotocol = http\nsecurity = starttls\n", 1,
	  "[listener a] protocol http takes security plain or tls" },
	{ "[listener a]\nsecurity = ssl\n", 2, "security must be plain, starttls, tls or dual" },
	{ "[listener a]\nrole = relay\n", 2, "role must be mx or submission" },
	{ "[server]\nlog_level = loud\n", 2, "log_level must be debug, info, warn or error" },
	{ "[limits]\nplaintext_auth = maybe\n", 2, "plaintext_auth must be yes or no" },
	{ "[limits]\nimap_unauthenticate = maybe\n", 2, "imap_unauthenticate must be yes or no" },
	/* names */
	{ "[server]\nhostname = bad_host\n", 2, "'bad_host' is not a valid host name" },
	{ "[server]\nhostname = a..b\n", 2, "'a..b' is not a valid host name" },
	{ "[server]\nhostname = mail.example.com.\n", 2, "'mail.example.com.' is not a valid host name" },
	{ "[server]\nhostname =\n", 2, "'' is not a valid host name" },
	{ "[server]\ndomains = example.com, bad!domain\n", 2, "'bad!domain' is not a valid domain name" },
	{ "[server]\ndomains = , ,\n", 2, "domains needs at least one domain" },
	{ "[tls]\nsni.bad_name = a.pem,b.pem\n", 2, "'bad_name' is not a valid SNI host name" },
	{ "[tls]\ncert = only-one-file\n", 2, "expected CERT_FILE,KEY_FILE" },
	{ "[tls]\ncert = a.pem,\n", 2, "expected CERT_FILE,KEY_FILE" },
};

ParameterizedTestParameters(config, bad_input)
{
	return cr_make_param_array(struct bad_case, bad_cases,
				   sizeof(bad_cases) / sizeof(bad_cases[0]));
}

static void expect_error(const char *path, const char *err, int line, const char *msg,
			 const char *text)
{
	char prefix[512];
	snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
	cr_assert_eq(strncmp(err, prefix, strlen(prefix)), 0,
		     "input %s\nwant prefix '%s'\ngot '%s'", text, prefix, err);
	cr_assert_eq(strncmp(err + strlen(prefix), msg, strlen(msg)), 0,
		     "input %s\nwant message '%s'\ngot '%s'", text, msg, err);
}

ParameterizedTest(const struct bad_case *c, config, bad_input)
{
	static struct config cfg;
	char err[512], *path;

	int rc = load_text(&cfg, c->text, strlen(c->text), &path, err, sizeof(err));
	cr_assert_eq(rc, -EINVAL, "input accepted: %s", c->text);
	expect_error(path, err, c->line, c->msg, c->text);
	free(path);
}

/* The parser alone (no file, no validation) reports the name it is given. */
Test(config, parse_text_uses_given_name)
{
	static struct config cfg;
	char err[256];
	static const char text[] = "[server]\n\nnope = 1\n";

	config_defaults(&cfg);
	cr_assert_eq(config_parse_text(&cfg, "given.conf", text, strlen(text), err, sizeof(err)),
		     -EINVAL);
	cr_assert_str_eq(err, "given.conf:3: unknown key 'nope' in [server]");
}

/* The same port on "" and "*" is the same socket: the second must be
 * refused at validation, not at bind time with an "already in use" message
 * that blames another program. */
Test(config, duplicate_port_star_and_empty_address)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"[listener a]\nport = 2000\n[listener b]\naddress = *\nport = 2000\n";

	int rc = load_text(&cfg, text, strlen(text), &path, err, sizeof(err));
	cr_expect_eq(rc, -EINVAL, "port 2000 on '' and '*' accepted");
	if (rc)
		expect_error(path, err, 3, "[listener b] uses port 2000", text);
	free(path);
}

Test(config, nul_byte)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] = "[server]\nhostname = mail.example.com\nhost\0name = x\n";

	int rc = load_text(&cfg, text, sizeof(text) - 1, &path, err, sizeof(err));
	cr_assert_eq(rc, -EINVAL, "a NUL byte was accepted");
	expect_error(path, err, 3, "NUL byte in line", "(with NUL)");
	free(path);
	/* A NUL inside a comment line is refused as well: a file with NULs is
	 * not a text file. */
	static const char text2[] = "[server]\n# a\0b\n";
	rc = load_text(&cfg, text2, sizeof(text2) - 1, &path, err, sizeof(err));
	cr_assert_eq(rc, -EINVAL);
	expect_error(path, err, 2, "NUL byte in line", "(comment with NUL)");
	free(path);
}

Test(config, over_long_line)
{
	static struct config cfg;
	char err[512], *path;
	char text[4096];

	/* 1023 bytes of comment: the longest line that fits. */
	size_t n = (size_t)sprintf(text, "[server]\n");
	memset(text + n, '#', 1023);
	n += 1023;
	text[n++] = '\n';
	n += (size_t)sprintf(text + n, "hostname = long.example\n");
	cr_assert_eq(load_text(&cfg, text, n, &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_str_eq(cfg.hostname, "long.example");

	/* One more byte is refused with the line number. */
	n = (size_t)sprintf(text, "[server]\nhostname = a.example\n");
	memset(text + n, '#', 1024);
	n += 1024;
	text[n++] = '\n';
	cr_assert_eq(load_text(&cfg, text, n, &path, err, sizeof(err)), -EINVAL);
	expect_error(path, err, 3, "line longer than", "(1024-byte line)");
	free(path);

	/* Also without a final newline. */
	n = (size_t)sprintf(text, "[server]\n");
	memset(text + n, 'x', 3000);
	n += 3000;
	cr_assert_eq(load_text(&cfg, text, n, &path, err, sizeof(err)), -EINVAL);
	expect_error(path, err, 2, "line longer than", "(3000-byte last line)");
	free(path);
}

Test(config, missing_file)
{
	static struct config cfg;
	char err[512] = "";
	int rc = config_load(&cfg, "/nonexistent/ringmail.conf", err, sizeof(err));
	cr_assert_eq(rc, -ENOENT);
	cr_assert(strstr(err, "/nonexistent/ringmail.conf") != NULL, "%s", err);
}

Test(config, comments_and_whitespace)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"# top comment\n"
		"; another\n"
		"  [server]  \n"
		"\thostname   =   spaced.example   # trailing comment\n"
		"threads=3\n"
		"\n"
		"[limits]\n"
		"prelogin_timeout = 1500ms\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_str_eq(cfg.hostname, "spaced.example");
	cr_assert_eq(cfg.threads, 3);
	cr_assert_eq(cfg.prelogin_timeout_ms, 1500);
}

/* ---- durations and sizes ------------------------------------------------- */

struct dur_case {
	char s[32];
	int rc;
	uint32_t ms;
};

static const struct dur_case dur_cases[] = {
	{ "10s", 0, 10000 },
	{ "500ms", 0, 500 },
	{ "2m", 0, 120000 },
	{ "1h", 0, 3600000 },
	{ "30", 0, 30000 },
	{ "0", 0, 0 },
	{ "0ms", 0, 0 },
	{ "4294967295ms", 0, UINT32_MAX },
	{ "4294967s", 0, 4294967000u },
	{ "71582m", 0, 4294920000u },
	{ "1193h", 0, 4294800000u },
	{ "4294967296ms", -EINVAL, 0 },
	{ "4294968s", -EINVAL, 0 },
	{ "4294968", -EINVAL, 0 },
	{ "71583m", -EINVAL, 0 },
	{ "1194h", -EINVAL, 0 },
	{ "99999999999999999999999", -EINVAL, 0 },
	{ "18446744073709551615ms", -EINVAL, 0 },
	{ "", -EINVAL, 0 },
	{ "s", -EINVAL, 0 },
	{ "ms", -EINVAL, 0 },
	{ "-1s", -EINVAL, 0 },
	{ "+1s", -EINVAL, 0 },
	{ " 1s", -EINVAL, 0 },
	{ "1.5s", -EINVAL, 0 },
	{ "10 s", -EINVAL, 0 },
	{ "10sec", -EINVAL, 0 },
	{ "1d", -EINVAL, 0 },
	{ "5mss", -EINVAL, 0 },
};

ParameterizedTestParameters(config, duration)
{
	return cr_make_param_array(struct dur_case, dur_cases,
				   sizeof(dur_cases) / sizeof(dur_cases[0]));
}

ParameterizedTest(const struct dur_case *c, config, duration)
{
	uint32_t ms = 0xdeadbeef;
	int rc = config_parse_duration_ms(c->s, &ms);
	cr_assert_eq(rc, c->rc, "'%s': rc %d", c->s, rc);
	if (c->rc == 0)
		cr_assert_eq(ms, c->ms, "'%s': %u ms", c->s, ms);
	else
		cr_assert_eq(ms, 0xdeadbeef, "'%s': output written on failure", c->s);
}

struct size_case {
	char s[32];
	int rc;
	uint64_t bytes;
};

static const struct size_case size_cases[] = {
	{ "4096", 0, 4096 },
	{ "0", 0, 0 },
	{ "64k", 0, 65536 },
	{ "64K", 0, 65536 },
	{ "64kb", 0, 65536 },
	{ "50m", 0, 50ull << 20 },
	{ "50M", 0, 50ull << 20 },
	{ "1g", 0, 1ull << 30 },
	{ "1gb", 0, 1ull << 30 },
	{ "18446744073709551615", 0, UINT64_MAX },
	{ "17179869183g", 0, (17179869183ull) << 30 },
	{ "17179869184g", -EINVAL, 0 },
	{ "18014398509481984k", -EINVAL, 0 },
	{ "18446744073709551616", -EINVAL, 0 },
	{ "1t", -EINVAL, 0 },
	{ "k", -EINVAL, 0 },
	{ "", -EINVAL, 0 },
	{ "-1", -EINVAL, 0 },
	{ "1kk", -EINVAL, 0 },
	{ "1kbx", -EINVAL, 0 },
	{ "1 k", -EINVAL, 0 },
	{ "1.5m", -EINVAL, 0 },
};

ParameterizedTestParameters(config, size)
{
	return cr_make_param_array(struct size_case, size_cases,
				   sizeof(size_cases) / sizeof(size_cases[0]));
}

ParameterizedTest(const struct size_case *c, config, size)
{
	uint64_t v = 0xdeadbeef;
	int rc = config_parse_size(c->s, &v);
	cr_assert_eq(rc, c->rc, "'%s': rc %d", c->s, rc);
	if (c->rc == 0)
		cr_assert_eq(v, c->bytes, "'%s': %llu", c->s, (unsigned long long)v);
	else
		cr_assert_eq(v, 0xdeadbeef, "'%s': output written on failure", c->s);
}

/* Values in the file reach the struct. */
Test(config, values_reach_the_struct)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"[server]\nshutdown_grace = 2m\ncheckpoint_after = 64k\n"
		"[limits]\nprelogin_timeout = 1s\nidle_timeout = 1h\ndual_wait = 250ms\n"
		"handshake_timeout = 7\nsend_queue_max = 8m\nmax_bad_commands = 3\n"
		"plaintext_auth = no\nauth_delay = 250ms\nauth_delay_max = 4s\n"
		"mime_depth_max = 8\nmime_parts_max = 100\nquota_storage = 2g\nquota_messages = 5000\n"
		"imap_unauthenticate = no\nfolders_max = 50\nimap_literal_max = 4096\n"
		"pop3_line_max = 128\nimap_compress_level = 0\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_eq(cfg.folders_max, 50);
	cr_assert_eq(cfg.imap_compress_level, 0);
	cr_assert_eq(cfg.checkpoint_after, 64 * 1024);
	cr_assert_eq(cfg.imap_literal_max, 4096);
	cr_assert_eq(cfg.pop3_line_max, 128);
	cr_assert_eq(cfg.quota_storage, 2ull << 30);
	cr_assert_eq(cfg.quota_messages, 5000);
	cr_assert_eq(cfg.shutdown_grace_ms, 120000);
	cr_assert_eq(cfg.prelogin_timeout_ms, 1000);
	cr_assert_eq(cfg.idle_timeout_ms, 3600000);
	cr_assert_eq(cfg.dual_wait_ms, 250);
	cr_assert_eq(cfg.handshake_timeout_ms, 7000);
	cr_assert_eq(cfg.send_queue_max, 8u << 20);
	cr_assert_eq(cfg.max_bad_commands, 3);
	cr_assert_eq(cfg.plaintext_auth, false);
	cr_assert_eq(cfg.imap_unauthenticate, false);
	cr_assert_eq(cfg.auth_delay_ms, 250);
	cr_assert_eq(cfg.auth_delay_max_ms, 4000);
	cr_assert_eq(cfg.mime_depth_max, 8);
	cr_assert_eq(cfg.mime_parts_max, 100);
}

/* ---- config_print round trip --------------------------------------------- */

static char *print_to_string(const struct config *cfg, size_t *len_r)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	cr_assert_not_null(f);
	config_print(cfg, f);
	fclose(f);
	*len_r = len;
	return buf;
}

static bool same_address(const char *a, const char *b)
{
	bool any_a = !a[0] || !strcmp(a, "*"), any_b = !b[0] || !strcmp(b, "*");
	return any_a || any_b ? any_a == any_b : !strcmp(a, b);
}

static void expect_same_config(const struct config *a, const struct config *b)
{
	cr_assert_str_eq(a->hostname, b->hostname);
	cr_assert_eq(a->ndomains, b->ndomains);
	for (size_t i = 0; i < a->ndomains; i++)
		cr_assert_str_eq(a->domains[i], b->domains[i]);
	cr_assert_str_eq(a->data_dir, b->data_dir);
	cr_assert_str_eq(a->user, b->user);
	cr_assert_eq(a->threads, b->threads);
	cr_assert_eq(a->recv_buffers, b->recv_buffers);
	cr_assert_eq(a->port_offset, b->port_offset);
	cr_assert_eq(a->shutdown_grace_ms, b->shutdown_grace_ms);
	cr_assert_str_eq(a->log_level, b->log_level);
	cr_assert_eq(a->max_connections, b->max_connections);
	cr_assert_eq(a->max_connections_per_ip, b->max_connections_per_ip);
	cr_assert_eq(a->prelogin_timeout_ms, b->prelogin_timeout_ms);
	cr_assert_eq(a->idle_timeout_ms, b->idle_timeout_ms);
	cr_assert_eq(a->dual_wait_ms, b->dual_wait_ms);
	cr_assert_eq(a->handshake_timeout_ms, b->handshake_timeout_ms);
	cr_assert_eq(a->max_bad_commands, b->max_bad_commands);
	cr_assert_eq(a->send_queue_max, b->send_queue_max);
	cr_assert_eq(a->plaintext_auth, b->plaintext_auth);
	cr_assert_eq(a->imap_unauthenticate, b->imap_unauthenticate);
	cr_assert_eq(a->auth_delay_ms, b->auth_delay_ms);
	cr_assert_eq(a->auth_delay_max_ms, b->auth_delay_max_ms);
	cr_assert_eq(a->mime_depth_max, b->mime_depth_max);
	cr_assert_eq(a->mime_parts_max, b->mime_parts_max);
	cr_assert_eq(a->smtp_line_max, b->smtp_line_max);
	cr_assert_eq(a->smtp_command_line_max, b->smtp_command_line_max);
	cr_assert_eq(a->smtp_greet_pause_ms, b->smtp_greet_pause_ms);
	cr_assert_eq(a->smtp_timeout_ms, b->smtp_timeout_ms);
	cr_assert_eq(a->message_size_max, b->message_size_max);
	cr_assert_eq(a->recipients_max, b->recipients_max);
	cr_assert_eq(a->imap_line_max, b->imap_line_max);
	cr_assert_eq(a->imap_literal_max, b->imap_literal_max);
	cr_assert_eq(a->pop3_line_max, b->pop3_line_max);
	cr_assert_eq(a->quota_storage, b->quota_storage);
	cr_assert_eq(a->quota_messages, b->quota_messages);
	cr_assert_eq(a->folders_max, b->folders_max);
	cr_assert_eq(a->nauto_folders, b->nauto_folders);
	for (size_t i = 0; i < a->nauto_folders; i++)
		cr_assert_str_eq(a->auto_folders[i], b->auto_folders[i]);
	cr_assert_eq(a->ncerts, b->ncerts);
	for (size_t i = 0; i < a->ncerts; i++) {
		cr_assert_str_eq(a->certs[i].name, b->certs[i].name);
		cr_assert_str_eq(a->certs[i].cert, b->certs[i].cert);
		cr_assert_str_eq(a->certs[i].key, b->certs[i].key);
	}
	cr_assert_eq(a->ticket_rotate_s, b->ticket_rotate_s);
	cr_assert_eq(a->nlisteners, b->nlisteners);
	for (size_t i = 0; i < a->nlisteners; i++) {
		const struct listener_config *x = &a->listeners[i], *y = &b->listeners[i];
		cr_assert_str_eq(x->name, y->name);
		cr_assert(same_address(x->address, y->address), "[listener %s] '%s' vs '%s'",
			  x->name, x->address, y->address);
		cr_assert_eq(x->port, y->port);
		cr_assert_eq(x->proto, y->proto);
		cr_assert_eq(x->security, y->security);
		if (x->proto == PROTO_SMTP)
			cr_assert_eq(x->role, y->role);
	}
}

/* print(cfg) loads back to cfg, and printing that gives the same text. */
static void round_trip(const struct config *cfg)
{
	static struct config back;
	char err[512];
	size_t len, len2;
	char *text = print_to_string(cfg, &len);
	char *path = write_tmp(text, len);

	int rc = config_load(&back, path, err, sizeof(err));
	unlink(path);
	cr_assert_eq(rc, 0, "printed configuration does not load: %s\n%s", err, text);
	expect_same_config(cfg, &back);
	char *text2 = print_to_string(&back, &len2);
	/* Only the first comment line (the source) may differ. */
	const char *body = strchr(text, '\n'), *body2 = strchr(text2, '\n');
	cr_assert_not_null(body);
	cr_assert_not_null(body2);
	cr_assert_str_eq(body, body2);
	free(path);
	free(text);
	free(text2);
}

/* auto_folders: blanks and commas separate names, an empty value turns it
 * off, a later line replaces an earlier one. */
Test(config, auto_folders_values)
{
	static struct config cfg;
	char err[512], *path;
	static const char custom[] = "[server]\nauto_folders = Sent,Trash  Lists/Work\tNotes\n";
	static const char off[] = "[server]\nauto_folders = Sent\nauto_folders =\n";

	cr_assert_eq(load_text(&cfg, custom, strlen(custom), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_eq(cfg.nauto_folders, 4);
	cr_assert_str_eq(cfg.auto_folders[0], "Sent");
	cr_assert_str_eq(cfg.auto_folders[1], "Trash");
	cr_assert_str_eq(cfg.auto_folders[2], "Lists/Work");
	cr_assert_str_eq(cfg.auto_folders[3], "Notes");
	round_trip(&cfg);
	cr_assert_eq(load_text(&cfg, off, strlen(off), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_eq(cfg.nauto_folders, 0);
	round_trip(&cfg);
}

Test(config, print_round_trip_default)
{
	static struct config cfg;
	char err[512];
	cr_assert_eq(config_load(&cfg, NULL, err, sizeof(err)), 0, "%s", err);
	round_trip(&cfg);
}

Test(config, print_round_trip_everything_set)
{
	static struct config cfg;
	char err[512], *path;
	static const char text[] =
		"[server]\n"
		"hostname = mx1.Example.NET\n"
		"domains = example.net, Example.ORG  other.example\n"
		"data = /var/lib/ringmail test\n"
		"user = nobody\n"
		"threads = 6\n"
		"recv_buffers = 8\n"
		"port_offset = 10000\n"
		"shutdown_grace = 1500ms\n"
		"log_level = debug\n"
		"[limits]\n"
		"max_connections = 12345\n"
		"max_connections_per_ip = 7\n"
		"prelogin_timeout = 90s\n"
		"idle_timeout = 2h\n"
		"dual_wait = 250ms\n"
		"handshake_timeout = 3s\n"
		"max_bad_commands = 4\n"
		"send_queue_max = 3m\n"
		"plaintext_auth = no\n"
		"imap_unauthenticate = no\n"
		"imap_compress_level = 9\n"
		"quota_storage = 1m\n"
		"quota_messages = 77\n"
		"folders_max = 12\n"
		"smtp_command_line_max = 2048\n"
		"smtp_greet_pause = 1500ms\n"
		"smtp_timeout = 7m\n"
		"imap_literal_max = 100000\n"
		"pop3_line_max = 2100\n"
		"[tls]\n"
		"cert = /etc/ringmail/a.pem,/etc/ringmail/a.key\n"
		"sni.mail.example.org = /etc/ringmail/b.pem,/etc/ringmail/b.key\n"
		"ticket_rotate = 2h\n"
		"[listener one]\n"
		"address = 127.0.0.1\nport = 1465\nprotocol = smtp\nsecurity = tls\nrole = submission\n"
		"[listener two]\n"
		"address = ::1\nport = 1143\nprotocol = imap\nsecurity = starttls\n"
		"[listener three]\n"
		"port = 1995\nprotocol = pop3\nsecurity = dual\n"
		"[listener four]\n"
		"address = *\nport = 1025\nprotocol = smtp\nrole = mx\n";

	cr_assert_eq(load_text(&cfg, text, strlen(text), &path, err, sizeof(err)), 0, "%s", err);
	free(path);
	cr_assert_eq(cfg.ndomains, 3);
	cr_assert_str_eq(cfg.domains[1], "example.org", "domains are lowercased");
	cr_assert_eq(cfg.ncerts, 2);
	cr_assert_eq(cfg.nlisteners, 4);
	cr_assert_eq(cfg.recv_buffers, 8);
	cr_assert_eq(cfg.smtp_command_line_max, 2048);
	cr_assert_eq(cfg.smtp_greet_pause_ms, 1500);
	round_trip(&cfg);
}
