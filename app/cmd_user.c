/* cmd_user.c - "ringmail user add|del|passwd|list": edits the passwd file.
 *
 * Every change rewrites the whole file: lines it does not touch (comments,
 * other users, even lines the server reports as bad) are kept byte for
 * byte. The new file is written beside the old one, fsynced, renamed over
 * it, and the directory is fsynced, so a crash leaves either the old or the
 * new file. An exclusive flock on <data>/passwd.lock keeps two runs from
 * losing each other's change. The running server notices the new mtime
 * within a second. */
#include "app/cmd_user.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "store/auth.h"
#include "store/users.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static int usage(FILE *f)
{
	fprintf(f,
		"usage: ringmail user add ADDRESS [--data DIR]\n"
		"       ringmail user passwd ADDRESS [--data DIR]\n"
		"       ringmail user del ADDRESS [--data DIR]\n"
		"       ringmail user list [--data DIR]\n"
		"The password is read from standard input (one line) when it is not a\n"
		"terminal, else prompted for twice with echo off. DIR defaults to %s.\n",
		USERS_DATA_DIR_DEFAULT);
	return f == stdout ? EXIT_OK : EXIT_USAGE;
}

/* ---- passwords ------------------------------------------------------------ */

static void chomp(char *s, size_t *len)
{
	while (*len > 0 && (s[*len - 1] == '\n' || s[*len - 1] == '\r'))
		s[--*len] = '\0';
}

/* Reads one line from fd's stream with echo off when it is a terminal.
 * Returns a malloc'd string (the caller wipes and frees it) or NULL. */
static char *read_secret(FILE *in, const char *prompt, bool tty, size_t *len_r)
{
	struct termios old, noecho;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (tty) {
		/* Echo off before the prompt: what is typed (or pasted) as soon
		 * as the prompt shows must neither be echoed nor flushed away. */
		if (tcgetattr(fileno(in), &old) == 0) {
			noecho = old;
			noecho.c_lflag &= ~(tcflag_t)ECHO;
			noecho.c_lflag |= ECHONL;
			tcsetattr(fileno(in), TCSANOW, &noecho);
		}
		fputs(prompt, stderr);
		fflush(stderr);
	}
	n = getline(&line, &cap, in);
	if (tty)
		tcsetattr(fileno(in), TCSANOW, &old);
	if (n < 0) {
		if (line != NULL)
			explicit_bzero(line, cap);
		free(line);
		return NULL;
	}
	*len_r = (size_t)n;
	chomp(line, len_r);
	return line;
}

static void wipe(char *s, size_t len)
{
	if (s != NULL) {
		explicit_bzero(s, len);
		free(s);
	}
}

/* Gets a new password and hashes it into field. Returns an exit code. */
static int new_password(char *field, size_t size)
{
	bool tty = isatty(STDIN_FILENO);
	size_t len = 0, len2 = 0;
	char *pw, *again = NULL;
	int r;

	pw = read_secret(stdin, "New password: ", tty, &len);
	if (pw == NULL) {
		fprintf(stderr, "ringmail user: no password given on standard input\n");
		return EXIT_FAIL;
	}
	if (tty) {
		again = read_secret(stdin, "Retype new password: ", tty, &len2);
		if (again == NULL || len != len2 || memcmp(pw, again, len) != 0) {
			fprintf(stderr, "ringmail user: the passwords do not match\n");
			wipe(pw, len);
			wipe(again, len2);
			return EXIT_FAIL;
		}
		wipe(again, len2);
	}
	if (len == 0) {
		fprintf(stderr, "ringmail user: empty password refused\n");
		wipe(pw, len);
		return EXIT_FAIL;
	}
	if (len > AUTH_PASS_MAX) {
		fprintf(stderr, "ringmail user: password longer than %u bytes refused\n",
			AUTH_PASS_MAX);
		wipe(pw, len);
		return EXIT_FAIL;
	}
	r = users_password_hash(span_make(pw, len), field, size);
	wipe(pw, len);
	if (r < 0) {
		fprintf(stderr, "ringmail user: cannot hash the password: %s\n",
			r == -EINVAL ? "it contains a NUL byte" : strerror(-r));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}

/* ---- the file --------------------------------------------------------------- */

struct text {
	char *p;
	size_t len;
};

static int read_all(const char *path, struct text *t)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 0;

	t->p = NULL;
	t->len = 0;
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	for (;;) {
		if (cap - t->len < 4096) {
			char *n = realloc(t->p, cap + 65536);

			if (n == NULL) {
				close(fd);
				return -ENOMEM;
			}
			t->p = n;
			cap += 65536;
		}
		ssize_t n = read(fd, t->p + t->len, cap - t->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		if (n == 0)
			break;
		t->len += (size_t)n;
	}
	close(fd);
	return 0;
}

/* Finds the line of addr: its offset and length (with the '\n'). */
static bool find_user(const struct text *t, const char *addr, size_t *off_r, size_t *len_r)
{
	size_t off = 0;

	while (off < t->len) {
		const char *line = t->p + off;
		const char *nl = memchr(line, '\n', t->len - off);
		size_t n = nl != NULL ? (size_t)(nl - line) + 1 : t->len - off;
		struct span s = span_make(line, n);

		while (s.len > 0 && (s.p[0] == ' ' || s.p[0] == '\t'))
			s = span_skip(s, 1);
		const uint8_t *colon = memchr(s.p, ':', s.len);
		if (s.len > 0 && s.p[0] != '#' && colon != NULL &&
		    span_eq_nocase(span_make(s.p, (size_t)(colon - s.p)), span_cstr(addr))) {
			*off_r = off;
			*len_r = n;
			return true;
		}
		off += n;
	}
	return false;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes the three pieces as the new passwd file, atomically. */
static int replace_file(const char *dir, const char *path, const char *a, size_t alen,
			const char *b, size_t blen, const char *c, size_t clen)
{
	char tmp[4096];
	int fd, dfd, r;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	r = fchmod(fd, 0600) < 0 ? -errno : 0;
	if (r == 0)
		r = write_all(fd, a, alen);
	if (r == 0)
		r = write_all(fd, b, blen);
	if (r == 0)
		r = write_all(fd, c, clen);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	r = fsync(dfd) < 0 ? -errno : 0;
	close(dfd);
	return r;
}

static int lock_dir(const char *dir, bool create, int *fd_r)
{
	char path[4096];
	int fd;

	if (create && mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	snprintf(path, sizeof(path), "%s/passwd.lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			int e = -errno;
			close(fd);
			return e;
		}
	}
	*fd_r = fd;
	return 0;
}

/* ---- subcommands ------------------------------------------------------------ */

static int cmd_list(const char *dir)
{
	struct users_config cfg = { .data_dir = dir };
	struct users *u;
	int r = users_open(&cfg, &u);

	if (r < 0) {
		fprintf(stderr, "ringmail user: cannot read %s/passwd: %s\n", dir, strerror(-r));
		return EXIT_FAIL;
	}
	const struct users_snap *s = users_snap_get(u);
	for (size_t i = 0; i < users_snap_count(s); i++) {
		const struct users_entry *e = users_snap_entry(s, i);

		printf("%s\t%s\n", e->addr, users_scheme_str(e->scheme));
	}
	users_snap_put(&s);
	users_free(&u);
	return fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL;
}

static int cmd_change(const char *verb, const char *dir, const char *addr)
{
	char path[4096], field[USERS_HASH_MAX + 32], line[USERS_LINE_MAX + 2];
	struct text t = { 0 };
	size_t off = 0, len = 0;
	int lockfd = -1, rc = EXIT_FAIL, r;
	bool add = strcmp(verb, "add") == 0, del = strcmp(verb, "del") == 0;

	if (!users_addr_valid(span_cstr(addr))) {
		fprintf(stderr, "ringmail user: '%s' is not a full address (user@domain)\n", addr);
		return EXIT_USAGE;
	}
	if (strlen(dir) > 4000) {
		fprintf(stderr, "ringmail user: data directory path too long\n");
		return EXIT_USAGE;
	}
	r = lock_dir(dir, add, &lockfd);
	if (r < 0) {
		fprintf(stderr, "ringmail user: cannot lock %s/passwd.lock: %s\n", dir,
			strerror(-r));
		return EXIT_FAIL;
	}
	snprintf(path, sizeof(path), "%s/%s", dir, USERS_PASSWD_FILE);
	r = read_all(path, &t);
	if (r < 0) {
		fprintf(stderr, "ringmail user: cannot read %s: %s\n", path, strerror(-r));
		goto out;
	}
	bool found = find_user(&t, addr, &off, &len);
	if (add && found) {
		const char *l = t.p + off, *colon = memchr(l, ':', len);

		fprintf(stderr, "ringmail user: %s already exists (as %.*s)\n", addr,
			(int)(colon - l), l);
		goto out;
	}
	if (!add && !found) {
		fprintf(stderr, "ringmail user: no user %s in %s\n", addr, path);
		goto out;
	}
	if (del) {
		r = replace_file(dir, path, t.p, off, "", 0, t.p + off + len,
				 t.len - off - len);
	} else {
		rc = new_password(field, sizeof(field));
		if (rc != EXIT_OK)
			goto out;
		rc = EXIT_FAIL;
		int n;
		if (add) {
			/* Appended; a last line without '\n' gets one first. */
			bool nl = t.len > 0 && t.p[t.len - 1] != '\n';
			n = snprintf(line, sizeof(line), "%s%s:%s\n", nl ? "\n" : "", addr, field);
			off = t.len;
			len = 0;
		} else {
			/* Keep the address as stored and every field after the
			 * password (uid, gid, home, extra fields). */
			const char *l = t.p + off;
			size_t linelen = len - (l[len - 1] == '\n');
			const char *c1 = memchr(l, ':', linelen);
			const char *c2 = memchr(c1 + 1, ':', linelen - (size_t)(c1 + 1 - l));
			size_t tail = c2 != NULL ? linelen - (size_t)(c2 - l) : 0;

			n = snprintf(line, sizeof(line), "%.*s:%s%.*s\n", (int)(c1 - l), l, field,
				     (int)tail, c2 != NULL ? c2 : "");
		}
		if (n < 0 || (size_t)n >= sizeof(line)) {
			fprintf(stderr, "ringmail user: the new line would be too long\n");
			goto out;
		}
		r = replace_file(dir, path, t.p, off, line, (size_t)n, t.p + off + len,
				 t.len - off - len);
		explicit_bzero(field, sizeof(field));
	}
	if (r < 0) {
		fprintf(stderr, "ringmail user: cannot write %s: %s\n", path, strerror(-r));
		goto out;
	}
	fprintf(stderr, "ringmail user: %s %s\n",
		add ? "added" : del ? "deleted" : "changed the password of", addr);
	rc = EXIT_OK;
out:
	free(t.p);
	if (lockfd >= 0)
		close(lockfd);
	return rc;
}

int cmd_user(int argc, char **argv)
{
	const char *dir = USERS_DATA_DIR_DEFAULT, *verb = NULL, *addr = NULL;
	int i = 0;

	if (argc > 0 && strcmp(argv[0], "user") == 0)
		i = 1;
	for (; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
			return usage(stdout);
		if (strcmp(a, "--data") == 0) {
			if (++i == argc)
				return usage(stderr);
			dir = argv[i];
		} else if (strncmp(a, "--data=", 7) == 0) {
			dir = a + 7;
		} else if (a[0] == '-' && a[1] != '\0') {
			fprintf(stderr, "ringmail user: unknown option %s\n", a);
			return usage(stderr);
		} else if (verb == NULL) {
			verb = a;
		} else if (addr == NULL) {
			addr = a;
		} else {
			fprintf(stderr, "ringmail user: unexpected argument %s\n", a);
			return usage(stderr);
		}
	}
	if (verb == NULL || dir[0] == '\0')
		return usage(stderr);
	if (strcmp(verb, "list") == 0) {
		if (addr != NULL) {
			fprintf(stderr, "ringmail user: list takes no address\n");
			return usage(stderr);
		}
		return cmd_list(dir);
	}
	if (strcmp(verb, "add") != 0 && strcmp(verb, "del") != 0 && strcmp(verb, "passwd") != 0) {
		fprintf(stderr, "ringmail user: unknown command %s\n", verb);
		return usage(stderr);
	}
	if (addr == NULL)
		return usage(stderr);
	return cmd_change(verb, dir, addr);
}
