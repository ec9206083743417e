/* cmd_user.h - "ringmail user": manage the passwd file (docs/users.md). */
#ifndef RINGMAIL_APP_CMD_USER_H
#define RINGMAIL_APP_CMD_USER_H

/* Runs "ringmail user add|del|passwd ADDRESS [--data DIR]" or
 * "ringmail user list [--data DIR]". argv[0] may be "user" (skipped) or the
 * subcommand itself. Passwords come from standard input (one line) when it
 * is not a terminal, else from a prompt with echo off and a confirmation;
 * never from the command line. Returns the exit code: 0 done, 1 failure,
 * 2 usage error. */
int cmd_user(int argc, char **argv);

#endif
