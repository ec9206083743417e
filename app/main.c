/* main.c - the ringmail command line. */
#include <errno.h>
#include <getopt.h>
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/server.h"
#include "proto/stream.h"

#ifndef RINGMAIL_VERSION
#define RINGMAIL_VERSION "unknown"
#endif

static void usage(FILE *out)
{
	fprintf(out,
		"usage: ringmail serve [--config FILE] [--data DIR] [--port-offset N] [--threads N]\n"
		"                      [--domain D] [--hostname H] [--log-level LEVEL]\n"
		"       ringmail check-config [--config FILE] [same overrides as serve]\n"
		"       ringmail version\n"
		"\n"
		"With no --config, serve uses the embedded default: every port of the\n"
		"provider table (465 587 25 26 2025 2525 993 143 995 110) on all addresses.\n"
		"--port-offset N adds N to every port (unprivileged runs and tests).\n");
}

struct overrides {
	const char *config;
	const char *data;
	const char *domain;
	const char *hostname;
	const char *log_level;
	long port_offset;
	long threads;
};

static int parse_overrides(int argc, char **argv, struct overrides *o)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "data", required_argument, NULL, 'd' },
		{ "port-offset", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "domain", required_argument, NULL, 'D' },
		{ "hostname", required_argument, NULL, 'H' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int ch;

	memset(o, 0, sizeof(*o));
	o->port_offset = -1;
	o->threads = -1;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "c:d:p:t:D:H:l:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 'd': o->data = optarg; break;
		case 'D': o->domain = optarg; break;
		case 'H': o->hostname = optarg; break;
		case 'l': o->log_level = optarg; break;
		case 'p':
			o->port_offset = strtol(optarg, &end, 10);
			if (*end || o->port_offset < 0 || o->port_offset > 60000) {
				fprintf(stderr, "ringmail: --port-offset must be 0..60000\n");
				return -1;
			}
			break;
		case 't':
			o->threads = strtol(optarg, &end, 10);
			if (*end || o->threads < 0 || o->threads > 1024) {
				fprintf(stderr, "ringmail: --threads must be 0..1024\n");
				return -1;
			}
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ringmail: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

/* Loads the configuration and applies the command-line overrides through
 * the same parser as the file, so they are validated the same way. */
static int load_config(const struct overrides *o, struct config *cfg)
{
	char err[1024], text[1024];
	int rc = config_load(cfg, o->config, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "ringmail: %s\n", err);
		return rc;
	}
	int n = snprintf(text, sizeof(text), "[server]\n");
	if (o->data)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "data = %s\n", o->data);
	if (o->domain)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "domains = %s\n", o->domain);
	if (o->hostname)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "hostname = %s\n", o->hostname);
	if (o->log_level)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "log_level = %s\n", o->log_level);
	if (o->port_offset >= 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "port_offset = %ld\n",
			      o->port_offset);
	if (o->threads >= 0)
		n += snprintf(text + n, sizeof(text) - (size_t)n, "threads = %ld\n", o->threads);
	if ((size_t)n >= sizeof(text)) {
		fprintf(stderr, "ringmail: command-line values too long\n");
		return -EINVAL;
	}
	/* Keep listeners: the override text has none, so nothing is replaced. */
	char src[CONFIG_STR_MAX];
	memcpy(src, cfg->source, sizeof(src));
	rc = config_parse_text(cfg, "command line", text, (size_t)n, err, sizeof(err));
	memcpy(cfg->source, src, sizeof(src));
	if (rc == 0)
		rc = config_validate(cfg, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "ringmail: %s\n", err);
		return rc;
	}
	return 0;
}

static int cmd_check_config(int argc, char **argv)
{
	struct overrides o;
	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg || parse_overrides(argc, argv, &o)) {
		free(cfg);
		return 2;
	}
	if (load_config(&o, cfg)) {
		free(cfg);
		return 2;
	}
	config_print(cfg, stdout);
	free(cfg);
	return 0;
}

static const struct conn_ops *ops_for(struct server *srv, const struct listener_config *lc)
{
	(void)srv;
	return stream_conn_ops(lc->proto);
}

static int mkdir_p(const char *path, mode_t mode)
{
	char buf[CONFIG_STR_MAX];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int cmd_serve(int argc, char **argv)
{
	struct overrides o;
	struct server srv;
	char err[1024];
	int rc;

	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg || parse_overrides(argc, argv, &o)) {
		free(cfg);
		return 2;
	}
	if (load_config(&o, cfg)) {
		free(cfg);
		return 2;
	}
	if (server_check_io_uring(err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		free(cfg);
		return 1;
	}
	if ((rc = mkdir_p(cfg->data_dir, 0750))) {
		fprintf(stderr, "ringmail: cannot create data directory %s: %s\n", cfg->data_dir,
			strerror(-rc));
		free(cfg);
		return 1;
	}
	struct server_app app = { .ops_for = ops_for };
	if (server_init(&srv, cfg, o.config, &app, err, sizeof(err)) ||
	    server_bind(&srv, err, sizeof(err)) || server_drop_privileges(&srv, err, sizeof(err))) {
		fprintf(stderr, "ringmail: %s\n", err);
		server_free(&srv);
		return 1;
	}
	rc = server_run(&srv);
	server_free(&srv);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (!strcmp(cmd, "check-config"))
		return cmd_check_config(argc - 1, argv + 1);
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("ringmail %s (jemalloc %s)\n", RINGMAIL_VERSION, JEMALLOC_VERSION);
		return 0;
	}
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "ringmail: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
