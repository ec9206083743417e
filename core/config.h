/* config.h - the configuration: one INI-style file, or the embedded default.
 *
 *   [server]            hostname, domains, data, threads, user, ...
 *   [limits]            connection caps and timeouts
 *   [tls]               certificates (cert = / key = / sni.NAME = cert,key)
 *   [outbound]          queue and remote delivery: dns, mx_port, retries, smart host
 *   [listener NAME]     one row of the port table: address, port,
 *                       protocol (smtp|imap|pop3|http), security
 *                       (tls|starttls|plain|dual), role (smtp: submission|mx)
 *
 * Lines are `key = value`; `#` and `;` start comments; durations take ms, s,
 * m or h suffixes (a bare number means seconds); sizes take k, m, g. A file
 * without any [listener] section gets the default listeners. Every error is
 * reported as "FILE:LINE: what is wrong". docs/config.md lists every key. */
#ifndef RINGMAIL_CORE_CONFIG_H
#define RINGMAIL_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_LISTENERS 64
#define CONFIG_MAX_DOMAINS 64
#define CONFIG_MAX_CERTS 32
#define CONFIG_STR_MAX 256
/* [server] auto_folders: folders every user has (store_config.auto_folders) */
#define CONFIG_MAX_AUTO_FOLDERS 16
#define CONFIG_AUTO_FOLDER_MAX 128 /* bytes of one name, NUL included */
/* [server] recv_buffers: receive buffers of LOOP_BUF_SIZE (16 KiB) in each
 * loop's provided-buffer ring; a power of two (the ring's size). */
#define CONFIG_RECV_BUFFERS_DEFAULT 512u
#define CONFIG_RECV_BUFFERS_MAX 32768u

/* PROTO_HTTP: the auto-discovery listener (proto/http_session.c); security
 * plain or tls only. */
enum listener_proto { PROTO_SMTP, PROTO_IMAP, PROTO_POP3, PROTO_HTTP };

enum listener_security {
	SEC_PLAIN,    /* plaintext; STARTTLS offered; login allowed unless
			 limits.plaintext_auth = no */
	SEC_STARTTLS, /* plaintext greeting; TLS required before login */
	SEC_TLS,      /* implicit TLS from the first byte */
	SEC_DUAL,     /* implicit TLS when the client speaks first with a
			 ClientHello; otherwise a plaintext greeting that only
			 offers the upgrade (the seed table's "POP3 STARTTLS 995") */
};

enum listener_role { ROLE_MX, ROLE_SUBMISSION };

struct listener_config {
	char name[64];
	char address[64];   /* "" or "*": every address (IPv6 and IPv4) */
	uint16_t port;      /* before port_offset */
	enum listener_proto proto;
	enum listener_security security;
	enum listener_role role;  /* SMTP only */
	int line;           /* where it was defined (0: embedded default) */
};

struct tls_cert_entry {
	char name[CONFIG_STR_MAX];   /* SNI name; "" for the default */
	char cert[CONFIG_STR_MAX];
	char key[CONFIG_STR_MAX];
};

struct config {
	char source[CONFIG_STR_MAX];  /* file name, or "(embedded default)" */
	/* [server] */
	char hostname[CONFIG_STR_MAX];
	char domains[CONFIG_MAX_DOMAINS][CONFIG_STR_MAX];
	size_t ndomains;
	char data_dir[CONFIG_STR_MAX];
	char user[64];                /* drop privileges to this user */
	char postmaster[CONFIG_STR_MAX]; /* postmaster@ of every domain; "" default */
	unsigned threads;             /* 0: one per online CPU */
	unsigned recv_buffers;        /* provided receive buffers per loop (power of 2) */
	unsigned port_offset;
	uint32_t shutdown_grace_ms;
	uint64_t segment_max;   /* a shared segment file rolls over past this size */
	uint64_t compact_after; /* expunged bytes that start a compaction (0: segment_max / 2) */
	uint64_t checkpoint_after; /* log bytes after which a folder checkpoints or rewrites its log */
	/* created and subscribed for every user (Dovecot's auto = subscribe);
	 * default Sent Drafts Trash Junk Archive, none when set empty */
	char auto_folders[CONFIG_MAX_AUTO_FOLDERS][CONFIG_AUTO_FOLDER_MAX];
	size_t nauto_folders;
	char log_level[16];
	/* [limits] */
	uint32_t max_connections;
	uint32_t max_connections_per_ip;
	uint32_t max_connections_per_user; /* logged-in IMAP sessions per user */
	uint32_t prelogin_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t dual_wait_ms;        /* SEC_DUAL: wait for a ClientHello */
	uint32_t handshake_timeout_ms;
	uint32_t max_bad_commands;
	uint64_t send_queue_max;
	bool plaintext_auth;          /* login allowed on SEC_PLAIN rows */
	bool imap_unauthenticate;     /* IMAP UNAUTHENTICATE offered (RFC 8437 8) */
	uint32_t imap_compress_level; /* IMAP COMPRESS=DEFLATE zlib level; 0: not offered */
	uint32_t auth_delay_ms;       /* first failed login's delay, per address */
	uint32_t auth_delay_max_ms;   /* the delay doubles up to this */
	uint32_t mime_depth_max;      /* MIME nesting split (<= MIME_DEPTH_MAX) */
	uint32_t mime_parts_max;      /* parts split per message (<= MIME_PARTS_MAX) */
	/* SMTP (RFC 5321 4.5.3) */
	uint64_t message_size_max;    /* SIZE; 552 past it */
	uint32_t recipients_max;      /* 452 past it */
	uint32_t smtp_timeout_ms;     /* server timeout, RFC 5321 4.5.3.2.7 */
	uint32_t pop3_autologout_ms;  /* POP3 idle time after login (RFC 1939 3) */
	uint32_t smtp_greet_pause_ms; /* "220-" then this pause then "220 "; 0: off */
	uint32_t smtp_command_line_max; /* SMTP command line, CRLF included (RFC: 512) */
	uint64_t header_size_max;     /* header section of a message */
	uint32_t smtp_line_max;       /* DATA text line, CRLF included (RFC: 1000) */
	uint32_t imap_line_max;       /* IMAP command text after login (literals aside) */
	uint32_t imap_literal_max;    /* IMAP literal bytes per command outside APPEND */
	uint32_t pop3_line_max;       /* POP3 command line, CRLF included (RFC 2449: 255);
				       * AUTH and PASS lines are exempt */
	uint32_t max_hops;            /* Received: fields before "mail loop" */
	bool smtp_bare_lf_normalize;  /* bare CR/LF in DATA: normalise, or reject */
	/* Mailbox quota per user (store/store.h quota_bytes/_messages);
	 * 0: no limit. IMAP QUOTA reports them (RFC 9208). */
	uint64_t quota_storage;       /* bytes */
	uint64_t quota_messages;
	uint32_t folders_max;               /* folders a user may create (0: no limit) */
	/* [tls] */
	struct tls_cert_entry certs[CONFIG_MAX_CERTS];
	size_t ncerts;
	uint32_t ticket_rotate_s;
	/* [outbound] (docs/queue.md): the queue and remote delivery */
	char ob_dns[CONFIG_STR_MAX];        /* "HOST:PORT[,...]"; "": /etc/resolv.conf */
	uint16_t ob_mx_port;                /* port of remote MX hosts (25) */
	uint32_t ob_retry_min_ms;           /* first retry after a 4xx (backoff doubles) */
	uint32_t ob_retry_max_ms;           /* longest wait between attempts */
	uint32_t ob_expire_ms;              /* give up (bounce) after this (5 days) */
	uint32_t ob_timeout_ms;             /* per network step of a delivery */
	uint32_t ob_idle_ms;                /* an unused connection stays open this long */
	uint32_t ob_delay_ms;               /* NOTIFY=DELAY: a delay DSN after this */
	uint32_t ob_max_per_domain;         /* concurrent connections per destination */
	uint32_t ob_max_per_connection;     /* transactions on one reused connection */
	char ob_smart_host[CONFIG_STR_MAX]; /* "host:port": relay everything there */
	char ob_smart_user[CONFIG_STR_MAX]; /* AUTH PLAIN to the smart host, when set */
	char ob_smart_password[CONFIG_STR_MAX];
	bool ob_smart_implicit;             /* smart_tls = implicit: TLS from connect */
	bool ob_smart_verify;               /* smart_tls_verify: check its certificate */
	char ob_smart_ca[CONFIG_STR_MAX];   /* the CAs it is checked against (PEM) */
	char ob_dkim_selector[64];          /* DKIM selector of DATA/dkim/<domain>.key */
	/* [listener *] */
	struct listener_config listeners[CONFIG_MAX_LISTENERS];
	size_t nlisteners;
};

/* The embedded default configuration text (the port table of DESIGN.md). */
extern const char config_default_text[];

/* Fills cfg with the built-in defaults of every key and no listeners. */
void config_defaults(struct config *cfg);

/* Parses text (len bytes, need not be NUL-terminated) over cfg, which
 * should hold config_defaults(). fname names the source in messages.
 * Returns 0, or -EINVAL with "FNAME:LINE: message" in err. Pure: no I/O. */
int config_parse_text(struct config *cfg, const char *fname, const char *text, size_t len,
		      char *err, size_t errlen);

/* Loads path (NULL: the embedded default) into cfg: defaults, then the file,
 * then the default listeners when the file names none, then validation.
 * Returns 0, or a negative errno with a message in err. */
int config_load(struct config *cfg, const char *path, char *err, size_t errlen);

/* Checks cross-field rules (duplicate ports, missing hostname...). Returns
 * 0 or -EINVAL with "FNAME:LINE: message" in err. */
int config_validate(const struct config *cfg, char *err, size_t errlen);

/* Writes the effective configuration in the file format. */
void config_print(const struct config *cfg, FILE *out);

const char *config_proto_str(enum listener_proto p);
const char *config_security_str(enum listener_security s);
const char *config_role_str(enum listener_role r);

/* Parses "10s", "500ms", "2m", "1h", "30" (seconds). 0 or -EINVAL. */
int config_parse_duration_ms(const char *s, uint32_t *ms_r);
/* Parses "4096", "64k", "50m", "1g". 0 or -EINVAL. */
int config_parse_size(const char *s, uint64_t *bytes_r);
/* A DNS name: labels of letters, digits and '-' (and '_' when underscore,
 * as DKIM selectors and SRV owners use), 1 to 63 bytes each, no empty
 * label, at most max bytes in all. */
bool config_dns_name_valid(const char *s, size_t max, bool underscore);

#endif
