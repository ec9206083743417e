/* store_fsck.c - offline check and repair of a data directory.
 *
 * A tool, not the server: plain blocking I/O on a data dir no server owns.
 * Per folder it replays the whole log (not trusting the checkpoint), cuts a
 * torn or corrupt tail, checks the checkpoint against the log, checks every
 * message's bytes against the CRC32C in its record, and finds files no
 * record references. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/crc32c.h"
#include "store/index.h"
#include "store/record.h"
#include "store/store.h"
#include "store/store_private.h"

struct fsck {
	bool repair;
	FILE *out;
	int problems;
};

static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);

	if (p) {
		memcpy(p, a, la);
		p[la] = '/';
		memcpy(p + la + 1, b, lb + 1);
	}
	return p;
}

/* Reads a whole file; *len_r its size. NULL with errno set on failure. */
static uint8_t *slurp(const char *path, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	uint8_t *buf = NULL;
	size_t got = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0 || !(buf = malloc((size_t)sb.st_size + 1)))
		goto out;
	while (got < (size_t)sb.st_size) {
		ssize_t n = pread(fd, buf + got, (size_t)sb.st_size - got, (off_t)got);
		if (n <= 0) {
			free(buf);
			buf = NULL;
			if (n == 0)
				errno = EIO;
			goto out;
		}
		got += (size_t)n;
	}
	*len_r = got;
out:
	close(fd);
	return buf;
}

static int cut_file(const char *path, size_t at)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)at) < 0 || fdatasync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static int append_file(const char *path, const void *p, size_t len)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, p, len) != (ssize_t)len || fdatasync(fd) < 0)
		rc = errno ? -errno : -EIO;
	close(fd);
	return rc;
}

static int fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static void problem(struct fsck *k, const char *where, const char *fmt, const char *what,
		    const char *fix)
{
	k->problems++;
	fprintf(k->out, "  %s: %s%s%s%s\n", where, fmt, what ? what : "", k->repair && fix ? ": " : "",
		k->repair && fix ? fix : "");
}

static const char *status_str(int st)
{
	return st == RECORD_SHORT ? "torn record" : "corrupt record";
}

static bool seg_referenced(const struct index *ix, uint32_t seg)
{
	for (size_t i = 0; i < ix->n; i++)
		if (ix->msgs[i].seg == seg)
			return true;
	return false;
}

static int rm_tree(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (!d)
		return unlink(path) == 0 ? 0 : -errno;
	while ((e = readdir(d))) {
		char *p;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if ((p = join(path, e->d_name))) {
			rm_tree(p);
			free(p);
		}
	}
	closedir(d);
	return rmdir(path) == 0 ? 0 : -errno;
}

/* Checks one folder directory. */
static void fsck_folder(struct fsck *k, const char *user, const char *name, const char *dir)
{
	char *logp = join(dir, STORE_LOG), *ckp = join(dir, STORE_CHECKPOINT);
	uint8_t *log = NULL, *ck = NULL;
	size_t loglen = 0, cklen = 0, good = 0;
	struct index ix, cix;
	int st, before = k->problems;
	char where[1200];
	uint32_t *bad = NULL;
	size_t nbad = 0;

	snprintf(where, sizeof(where), "%s/%s", user, name);
	index_init(&ix);
	index_init(&cix);
	if (!logp || !ckp)
		goto out;
	log = slurp(logp, &loglen);
	if (!log) {
		if (errno == ENOENT)
			fprintf(k->out, "%s: no log yet (never used)\n", where);
		else
			problem(k, where, "cannot read the log: ", strerror(errno), NULL);
		goto out;
	}
	st = index_replay(&ix, span_make(log, loglen), &good);
	if (st < 0) {
		problem(k, where, "out of memory", NULL, NULL);
		goto out;
	}
	if (good < loglen) {
		/* a zeroed tail left by the server's own recovery is clean */
		bool zero = true;
		for (size_t i = good; i < loglen && zero; i++)
			zero = log[i] == 0;
		if (!zero || st != RECORD_END) {
			char what[160];
			size_t later = 0;
			/* count intact records beyond the damage: what a cut loses */
			for (size_t i = good + 1; i + RECORD_HDR_LEN <= loglen; i++) {
				struct record r;
				size_t used;
				if (record_next(span_make(log + i, loglen - i), &r, &used) == RECORD_OK) {
					later++;
					i += used - 1;
				}
			}
			snprintf(what, sizeof(what), "%s at byte %zu of %zu (%zu intact records after it)",
				 status_str(st), good, loglen, later);
			problem(k, where, "log: ", what, "cut there");
			if (k->repair && cut_file(logp, good) < 0)
				problem(k, where, "cannot cut the log: ", strerror(errno), NULL);
		}
	}
	if (!ix.have_hdr) {
		problem(k, where, "log has no valid header", NULL, NULL);
		goto out;
	}

	/* the checkpoint must agree with the log it covers */
	ck = slurp(ckp, &cklen);
	if (ck) {
		uint64_t off = 0;
		size_t g2 = 0;
		int e = index_checkpoint_load(&cix, span_make(ck, cklen), &off);
		const char *why = NULL;
		if (e)
			why = "damaged";
		else if (cix.log_gen != ix.log_gen)
			why = "is of the log before a rewrite";
		else if (off > good)
			why = "covers more log than there is";
		else if (index_replay(&cix, span_make(log + off, good - off), &g2) < 0 || g2 != good - off)
			why = "the log after it does not apply";
		else if (cix.n != ix.n || cix.uidnext != ix.uidnext ||
			 cix.highestmodseq != ix.highestmodseq || cix.bytes != ix.bytes)
			why = "disagrees with the log";
		if (why) {
			problem(k, where, "checkpoint ", why, "removed (the log rebuilds it)");
			if (k->repair && unlink(ckp) < 0)
				problem(k, where, "cannot remove the checkpoint: ", strerror(errno), NULL);
		}
	}

	/* every message's bytes, against its CRC */
	for (size_t i = 0; i < ix.n; i++) {
		struct index_msg *m = &ix.msgs[i];
		char sn[16], *sp, what[200];
		int fd;
		uint32_t crc = 0;
		uint64_t done = 0;
		static uint8_t buf[1 << 16];
		store_seg_name(m->seg, sn);
		sp = join(dir, sn);
		fd = sp ? open(sp, O_RDONLY | O_CLOEXEC) : -1;
		free(sp);
		if (fd < 0) {
			snprintf(what, sizeof(what), "uid %u: segment %s missing", m->uid, sn);
			goto bad_msg;
		}
		while (done < m->size) {
			size_t want = m->size - done < sizeof(buf) ? m->size - done : sizeof(buf);
			ssize_t n = pread(fd, buf, want, (off_t)(m->off + done));
			if (n <= 0)
				break;
			crc = crc32c(crc, buf, (size_t)n);
			done += (uint64_t)n;
		}
		close(fd);
		if (done < m->size) {
			snprintf(what, sizeof(what), "uid %u: segment %s too short", m->uid, sn);
			goto bad_msg;
		}
		if (crc != m->data_crc) {
			snprintf(what, sizeof(what), "uid %u: bytes do not match their CRC32C", m->uid);
			goto bad_msg;
		}
		continue;
bad_msg:
		problem(k, where, what, NULL, "expunged");
		uint32_t *v = realloc(bad, (nbad + 1) * sizeof(*v));
		if (v) {
			bad = v;
			bad[nbad++] = m->uid;
		}
	}
	if (k->repair && nbad) {
		size_t sz = record_size_uids((uint32_t)nbad);
		uint8_t *rec = malloc(sz);
		size_t n = rec ? record_put_expunge(rec, sz, ix.highestmodseq + 1, bad, (uint32_t)nbad) : 0;
		if (n && append_file(logp, rec, n) == 0) {
			/* the checkpoint no longer matches: the log rebuilds it */
			unlink(ckp);
		} else {
			problem(k, where, "cannot log the expunge of damaged messages", NULL, NULL);
		}
		free(rec);
	}

	/* files nothing references */
	{
		DIR *d = opendir(dir);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			const char *n = e->d_name;
			char what[300];
			unsigned num;
			char c;
			bool orphan = false;
			if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, STORE_LOG) ||
			    !strcmp(n, STORE_CHECKPOINT))
				continue;
			if (sscanf(n, "%c%u", &c, &num) == 2 && (c == 's' || c == 'm')) {
				uint32_t seg = num | (c == 'm' ? SEG_SINGLE : 0);
				char back[16];
				store_seg_name(seg, back);
				if (strcmp(back, n) != 0)
					goto unknown;
				orphan = !seg_referenced(&ix, seg);
				if (!orphan)
					continue;
				if (c == 's') {
					struct stat sb;
					char *p = join(dir, n);
					/* an empty shared segment is what a server opens
					 * on every start; not worth a report */
					if (p && stat(p, &sb) == 0 && sb.st_size == 0)
						orphan = false;
					if (!orphan && k->repair)
						unlink(p);
					free(p);
					if (!orphan)
						continue;
				}
			} else if (!strcmp(n, STORE_CHECKPOINT_TMP) || !strcmp(n, STORE_LOG_NEW)) {
				/* an unfinished checkpoint, or a log rewrite a
				 * crash cut before its rename */
				orphan = true;
			}
			if (!orphan) {
unknown:
				snprintf(what, sizeof(what), "unknown file %s (left alone)", n);
				fprintf(k->out, "  %s: %s\n", where, what);
				continue;
			}
			snprintf(what, sizeof(what), "file %s is referenced by no record", n);
			problem(k, where, what, NULL, "removed");
			if (k->repair) {
				char *p = join(dir, n);
				if (p && unlink(p) < 0)
					problem(k, where, "cannot remove it: ", strerror(errno), NULL);
				free(p);
			}
		}
		if (d)
			closedir(d);
		if (k->repair)
			fsync_dir(dir);
	}
out:
	fprintf(k->out, "%s: %zu messages, uidvalidity %u, uidnext %u, highestmodseq %llu: %s\n",
		where, ix.n, ix.uidvalidity, ix.uidnext, (unsigned long long)ix.highestmodseq,
		k->problems == before ? "ok" : k->repair ? "repaired" : "PROBLEMS");
	free(bad);
	index_clear(&ix);
	index_clear(&cix);
	free(log);
	free(ck);
	free(logp);
	free(ckp);
}

struct fentry {
	uint32_t id;
	char *name;
};

static void fsck_user(struct fsck *k, const char *user, const char *udir)
{
	char *lp = join(udir, STORE_FOLDERS_LOG);
	uint8_t *log;
	size_t len = 0, off = 0, used, n = 1;
	struct fentry *v = calloc(1, sizeof(*v));
	struct record r;
	enum record_status st;
	DIR *d;
	struct dirent *e;

	if (!lp || !v)
		goto out;
	v[0] = (struct fentry){ STORE_INBOX_ID, strdup("INBOX") };
	log = slurp(lp, &len);
	if (!log && errno != ENOENT)
		problem(k, user, "cannot read the folder list: ", strerror(errno), NULL);
	while (log && (st = record_next(span_make(log + off, len - off), &r, &used)) == RECORD_OK) {
		if (r.type == REC_MBOX_CREATE) {
			struct fentry *w;
			bool dup = false;
			for (size_t i = 0; i < n; i++)
				dup |= v[i].id == r.u.mbox.id ||
				       (strlen(v[i].name) == r.u.mbox.name.len &&
					!memcmp(v[i].name, r.u.mbox.name.p, r.u.mbox.name.len));
			w = realloc(v, (n + 1) * sizeof(*v));
			if (w) {
				v = w;
				if (!dup)
					v[n++] = (struct fentry){ r.u.mbox.id,
								  strndup((const char *)r.u.mbox.name.p,
									  r.u.mbox.name.len) };
			}
		} else if (r.type == REC_MBOX_RENAME || r.type == REC_MBOX_DELETE) {
			for (size_t i = 1; i < n; i++)
				if (v[i].id == r.u.mbox.id) {
					free(v[i].name);
					if (r.type == REC_MBOX_DELETE) {
						v[i] = v[--n];
					} else {
						v[i].name = strndup((const char *)r.u.mbox.name.p,
								    r.u.mbox.name.len);
					}
					break;
				}
		} else if (r.type != REC_MBOX_SUBSCRIBE) {
			st = RECORD_BAD;
			break;
		}
		off += used;
	}
	if (log && off < len) {
		bool zero = true;
		for (size_t i = off; i < len && zero; i++)
			zero = log[i] == 0;
		if (!zero) {
			char what[120];
			snprintf(what, sizeof(what), "%s at byte %zu of %zu", status_str(st), off, len);
			problem(k, user, "folder list: ", what, "cut there");
			if (k->repair && cut_file(lp, off) < 0)
				problem(k, user, "cannot cut it: ", strerror(errno), NULL);
		}
	}
	free(log);
	for (size_t i = 0; i < n; i++) {
		char dn[24], *fd;
		snprintf(dn, sizeof(dn), "f%u", v[i].id);
		fd = join(udir, dn);
		if (fd && v[i].name)
			fsck_folder(k, user, v[i].name, fd);
		free(fd);
	}
	/* folder directories no list entry names: deleted, or a create that
	 * never finished */
	d = opendir(udir);
	while (d && (e = readdir(d))) {
		unsigned id;
		char tail;
		bool known = false;
		if (sscanf(e->d_name, "f%u%c", &id, &tail) != 1)
			continue;
		for (size_t i = 0; i < n; i++)
			known |= v[i].id == id;
		if (!known) {
			char what[300], *p;
			snprintf(what, sizeof(what), "directory %s belongs to no folder", e->d_name);
			problem(k, user, what, NULL, "removed");
			if (k->repair && (p = join(udir, e->d_name))) {
				rm_tree(p);
				free(p);
			}
		}
	}
	if (d)
		closedir(d);
	if (k->repair)
		fsync_dir(udir);
out:
	for (size_t i = 0; v && i < n; i++)
		free(v[i].name);
	free(v);
	free(lp);
}

int store_fsck(const char *data_dir, bool repair, FILE *report)
{
	struct fsck k = { .repair = repair, .out = report };
	char *mail = join(data_dir, STORE_MAIL_DIR);
	DIR *d;
	struct dirent *e;

	if (!mail)
		return -ENOMEM;
	d = opendir(mail);
	if (!d) {
		int err = -errno;
		free(mail);
		if (err == -ENOENT) {
			fprintf(report, "%s: no mail yet\n", data_dir);
			return 0;
		}
		return err;
	}
	while ((e = readdir(d))) {
		char *udir;
		if (e->d_name[0] == '.')
			continue;
		if ((udir = join(mail, e->d_name))) {
			fsck_user(&k, e->d_name, udir);
			free(udir);
		}
	}
	closedir(d);
	free(mail);
	fprintf(report, "%d problem%s found%s\n", k.problems, k.problems == 1 ? "" : "s",
		k.problems && repair ? " and repaired" : "");
	return k.problems ? 1 : 0;
}
