/* cmd_fsck.c - "ringmail fsck [--data DIR] [--repair]". */
#include "app/cmd_fsck.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"

static int usage(void)
{
	fprintf(stderr, "usage: ringmail fsck [--data DIR] [--repair]\n"
			"  checks every folder of every user; exit 0 clean, 1 problems, 2 error\n");
	return 2;
}

int cmd_fsck(int argc, char **argv)
{
	const char *dir = "./ringmail-data";
	bool repair = false;
	char err[512] = "";
	int lock, rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--data") && i + 1 < argc)
			dir = argv[++i];
		else if (!strncmp(argv[i], "--data=", 7))
			dir = argv[i] + 7;
		else if (!strcmp(argv[i], "--repair"))
			repair = true;
		else
			return usage();
	}
	/* never under a running server: it appends while we would cut */
	lock = store_lock_datadir(dir, err, sizeof(err));
	if (lock < 0) {
		fprintf(stderr, "ringmail fsck: %s\n", err[0] ? err : strerror(-lock));
		return 2;
	}
	rc = store_fsck(dir, repair, stdout);
	close(lock);
	if (rc < 0) {
		fprintf(stderr, "ringmail fsck: %s: %s\n", dir, strerror(-rc));
		return 2;
	}
	return rc;
}
