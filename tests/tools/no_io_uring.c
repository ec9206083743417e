/* no_io_uring - run a command with io_uring blocked by a seccomp filter, as
 * a container runtime that forbids it would (io_uring_setup fails with
 * ENOSYS, or with EPERM given "-e EPERM"), or as a kernel older than 6.1
 * answers (EINVAL given "-e EINVAL": it does not know the setup flags
 * IORING_SETUP_SINGLE_ISSUER/DEFER_TASKRUN).
 *
 *   no_io_uring [-e ENOSYS|EPERM|EINVAL] COMMAND [ARGS...] */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int err = ENOSYS, first = 1;
	if (argc > 2 && !strcmp(argv[1], "-e")) {
		if (!strcmp(argv[2], "EPERM"))
			err = EPERM;
		else if (!strcmp(argv[2], "EINVAL"))
			err = EINVAL;
		else if (strcmp(argv[2], "ENOSYS"))
			err = 0;
		first = 3;
	}
	if (first >= argc || err == 0) {
		fprintf(stderr, "usage: no_io_uring [-e ENOSYS|EPERM|EINVAL] COMMAND [ARGS...]\n");
		return 2;
	}
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
		perror("no_io_uring: seccomp");
		return 1;
	}
	execvp(argv[first], argv + first);
	perror("no_io_uring: exec");
	return 127;
}
