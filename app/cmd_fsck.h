/* cmd_fsck.h - "ringmail fsck": check and repair a data directory offline
 * (docs/store.md). */
#ifndef RINGMAIL_APP_CMD_FSCK_H
#define RINGMAIL_APP_CMD_FSCK_H

/* argv[0] is "fsck"; options: --data DIR (default ./ringmail-data),
 * --repair. Returns the exit code: 0 clean, 1 problems found (and repaired
 * with --repair), 2 usage error or the check could not run (for example a
 * server owns the data dir). */
int cmd_fsck(int argc, char **argv);

#endif
