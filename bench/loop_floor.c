/* loop_floor.c - the kernel floor built from ringmail's own engine (issue
 * 10, point 3): core/server.c and core/loop.c serving one listener with a
 * trivial session that sends "220 floor ESMTP", waits for a line starting
 * with QUIT, sends "221 bye" and closes (flushing). Everything a greet cycle
 * costs in ringmail beyond this is the protocol session's (proto/, tls/,
 * the store); everything this costs beyond floor-server (the epoll floor)
 * is the engine's: io_uring, the provided-buffer ring, timers, counters.
 *
 *   loop-floor [--port PORT] [--address ADDR] [--log-level warn]
 *
 * One loop (threads = 1). SIGINT/SIGTERM stop it through the engine's own
 * drain. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/server.h"

static int floor_open(struct conn *c)
{
	static const char greeting[] = "220 floor ESMTP\r\n";
	return conn_send(c, greeting, sizeof(greeting) - 1);
}

static ssize_t floor_data(struct conn *c, struct span in)
{
	size_t off = 0;
	for (;;) {
		const uint8_t *nl = memchr(in.p + off, '\n', in.len - off);
		if (!nl)
			return (ssize_t)off; /* keep the partial line */
		size_t n = (size_t)(nl - (in.p + off));
		if (n >= 4 && strncasecmp((const char *)in.p + off, "QUIT", 4) == 0) {
			static const char bye[] = "221 bye\r\n";
			conn_send(c, bye, sizeof(bye) - 1);
			conn_close(c, true);
			return (ssize_t)in.len;
		}
		off += n + 1; /* any other line: ignored */
	}
}

static void floor_close(struct conn *c, enum conn_close_reason reason)
{
	(void)c;
	(void)reason;
}

static const struct conn_ops floor_ops = {
	.open = floor_open,
	.data = floor_data,
	.close = floor_close,
};

static const struct conn_ops *ops_for(struct server *srv, const struct listener_config *lc)
{
	(void)srv;
	(void)lc;
	return &floor_ops;
}

int main(int argc, char **argv)
{
	const char *port = "2625", *address = "127.0.0.1", *level = "warn";
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "address", required_argument, NULL, 'a' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "p:a:l:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'p': port = optarg; break;
		case 'a': address = optarg; break;
		case 'l': level = optarg; break;
		default:
			fprintf(stderr, "usage: loop-floor [--port PORT] [--address ADDR] "
					"[--log-level LEVEL]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	char text[512], err[1024];
	int n = snprintf(text, sizeof(text),
			 "[server]\nthreads = 1\nlog_level = %s\n"
			 "[limits]\nmax_connections_per_ip = 100000\n"
			 "[listener floor]\naddress = %s\nport = %s\nprotocol = smtp\n",
			 level, address, port);
	struct config *cfg = malloc(sizeof(*cfg));
	if (!cfg)
		return 1;
	config_defaults(cfg);
	if (config_parse_text(cfg, "loop-floor", text, (size_t)n, err, sizeof(err)) ||
	    config_validate(cfg, err, sizeof(err))) {
		fprintf(stderr, "loop-floor: %s\n", err);
		free(cfg);
		return 2;
	}
	if (server_check_io_uring(err, sizeof(err))) {
		fprintf(stderr, "loop-floor: %s\n", err);
		free(cfg);
		return 77;
	}
	struct server srv;
	struct server_app app = { .ops_for = ops_for };
	if (server_init(&srv, cfg, NULL, &app, err, sizeof(err)) ||
	    server_bind(&srv, err, sizeof(err))) {
		fprintf(stderr, "loop-floor: %s\n", err);
		return 1;
	}
	printf("listening %s %s\n", address, port);
	fflush(stdout);
	int rc = server_run(&srv);
	server_free(&srv);
	return rc;
}
