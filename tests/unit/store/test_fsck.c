/* store_fsck and "ringmail fsck": clean data, torn tails, corrupt bytes,
 * orphan files, a bad checkpoint; report, repair, then clean. */
#include "store_test_util.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "app/cmd_fsck.h"
#include "store/record.h"

static struct loop *L;
static char *D;

static void setup(void)
{
	L = t_loop();
	D = t_tmpdir();
}

static void teardown(void)
{
	loop_free(&L);
	if (D)
		t_rmrf(D);
	free(D);
}

TestSuite(fsck, .init = setup, .fini = teardown);

/* Fills a store: INBOX with small and big messages, a second folder. */
static void fill(void)
{
	struct store_config cfg = { .data_dir = D, .append_buf = 4096, .checkpoint_bytes = 512 };
	struct store *st;
	struct store_user *u;
	struct store_folder *f, *g;
	char big[10000];
	struct waitres w = { 0 };
	uint32_t u1[] = { 1 };

	memset(big, 'x', sizeof(big));
	cr_assert_eq(store_new(&cfg, &st), 0);
	u = t_user(st, L, "alice@example.com");
	f = t_folder(u, L, "INBOX");
	g = t_folder(u, L, "Archive");
	for (int i = 0; i < 10; i++)
		cr_assert_eq(t_append(L, f, "Subject: hi\r\n\r\nhello\r\n", NULL), 0);
	cr_assert_eq(t_append_n(L, &f, 1, big, sizeof(big), 3000, "b", 0, NULL), 0);
	cr_assert_eq(t_append(L, g, "Subject: old\r\n\r\nold\r\n", NULL), 0);
	store_expunge(f, L, u1, 1, wr_modseq, &w);
	t_run(L, &w);
	{
		bool never = false;
		loop_run_until(L, &never, 50);
	}
	store_folder_close(&f);
	store_folder_close(&g);
	store_user_close(&u);
	store_free(&st);
}

static int run_fsck(bool repair, char **out)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);
	int rc = store_fsck(D, repair, fp);
	fclose(fp);
	*out = buf;
	return rc;
}

static char *path(const char *rel)
{
	char *p = malloc(strlen(D) + strlen(rel) + 2);
	sprintf(p, "%s/%s", D, rel);
	return p;
}

Test(fsck, clean)
{
	char *out;

	fill();
	cr_expect_eq(run_fsck(false, &out), 0, "%s", out);
	cr_expect(strstr(out, "alice@example.com/INBOX: 10 messages"), "%s", out);
	cr_expect(strstr(out, "alice@example.com/Archive: 1 messages"), "%s", out);
	free(out);
}

Test(fsck, torn_log_tail_reported_then_repaired)
{
	char *out, *lp = path("mail/alice@example.com/f0/log");
	struct stat sb;

	fill();
	cr_assert_eq(stat(lp, &sb), 0);
	cr_assert_eq(truncate(lp, sb.st_size - 5), 0);
	cr_expect_eq(run_fsck(false, &out), 1);
	cr_expect(strstr(out, "torn record"), "%s", out);
	cr_expect(strstr(out, "PROBLEMS"), "%s", out);
	free(out);
	cr_expect_eq(run_fsck(true, &out), 1);
	cr_expect(strstr(out, "cut there"), "%s", out);
	free(out);
	cr_expect_eq(run_fsck(false, &out), 0, "%s", out);
	free(out);
	free(lp);
}

/* The log cut at every byte offset inside its last record (the expunge
 * fill() ends with): fsck reports a torn record, --repair cuts it, and the
 * folder is clean again with the expunged message back (its expunge was
 * never complete). */
Test(fsck, torn_tail_at_every_offset_of_the_last_record)
{
	char *out, *lp = path("mail/alice@example.com/f0/log");
	char *fdir = path("mail/alice@example.com/f0"), cmd[512];
	uint8_t *log;
	struct stat sb;
	size_t off = 0, last = 0, used;
	struct record r;
	int fd;

	fill();
	cr_assert_eq(stat(lp, &sb), 0);
	log = malloc((size_t)sb.st_size);
	fd = open(lp, O_RDONLY);
	cr_assert_eq(pread(fd, log, (size_t)sb.st_size, 0), sb.st_size);
	close(fd);
	while (record_next(span_make(log + off, (size_t)sb.st_size - off), &r, &used) == RECORD_OK) {
		last = off;
		off += used;
	}
	cr_assert_eq(off, (size_t)sb.st_size, "the filled log must parse to its end");
	cr_assert_gt(off - last, RECORD_HDR_LEN);
	snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s.orig'", fdir, fdir);
	cr_assert_eq(system(cmd), 0);
	for (size_t cut = last + 1; cut < off; cut++) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s.orig' '%s'", fdir, fdir, fdir);
		cr_assert_eq(system(cmd), 0);
		cr_assert_eq(truncate(lp, (off_t)cut), 0);
		cr_expect_eq(run_fsck(false, &out), 1, "cut at %zu: %s", cut, out);
		cr_expect(strstr(out, "torn record"), "cut at %zu: %s", cut, out);
		free(out);
		cr_expect_eq(run_fsck(true, &out), 1, "cut at %zu: %s", cut, out);
		free(out);
		cr_expect_eq(run_fsck(false, &out), 0, "cut at %zu: %s", cut, out);
		cr_expect(strstr(out, "INBOX: 11 messages"), "cut at %zu: %s", cut, out);
		free(out);
	}
	free(log);
	free(lp);
	free(fdir);
}

Test(fsck, flipped_bit_in_log_and_in_message_bytes)
{
	char *out, *lp = path("mail/alice@example.com/f0/log");
	char *sp = path("mail/alice@example.com/f0/s1");
	struct stat sb;
	int fd;
	uint8_t b;

	fill();
	/* a bit of a message's bytes */
	fd = open(sp, O_RDWR);
	cr_assert(fd >= 0);
	cr_assert_eq(pread(fd, &b, 1, 40), 1);
	b ^= 1;
	cr_assert_eq(pwrite(fd, &b, 1, 40), 1);
	close(fd);
	cr_expect_eq(run_fsck(false, &out), 1);
	cr_expect(strstr(out, "do not match their CRC32C"), "%s", out);
	free(out);
	cr_expect_eq(run_fsck(true, &out), 1);
	cr_expect(strstr(out, "expunged"), "%s", out);
	free(out);
	cr_expect_eq(run_fsck(false, &out), 0, "%s", out);
	cr_expect(strstr(out, "INBOX: 9 messages"), "%s", out);
	free(out);
	/* a bit in the middle of the log */
	cr_assert_eq(stat(lp, &sb), 0);
	fd = open(lp, O_RDWR);
	cr_assert_eq(pread(fd, &b, 1, sb.st_size / 2), 1);
	b ^= 0x80;
	cr_assert_eq(pwrite(fd, &b, 1, sb.st_size / 2), 1);
	close(fd);
	cr_expect_eq(run_fsck(false, &out), 1);
	cr_expect(strstr(out, "intact records after it"), "%s", out);
	free(out);
	free(lp);
	free(sp);
}

Test(fsck, orphans_and_bad_checkpoint)
{
	char *out, *orphan = path("mail/alice@example.com/f0/m77");
	char *ck = path("mail/alice@example.com/f0/checkpoint");
	char *dir = path("mail/alice@example.com/f9");
	int fd;

	fill();
	fd = open(orphan, O_WRONLY | O_CREAT, 0600);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, "junk", 4), 4);
	close(fd);
	cr_assert_eq(mkdir(dir, 0700), 0);
	fd = open(ck, O_RDWR);
	cr_assert(fd >= 0, "fill() wrote a checkpoint");
	cr_assert_eq(pwrite(fd, "\xff", 1, 30), 1);
	close(fd);
	cr_expect_eq(run_fsck(false, &out), 1);
	cr_expect(strstr(out, "m77 is referenced by no record"), "%s", out);
	cr_expect(strstr(out, "f9 belongs to no folder"), "%s", out);
	cr_expect(strstr(out, "checkpoint damaged"), "%s", out);
	free(out);
	cr_expect_eq(run_fsck(true, &out), 1);
	free(out);
	cr_expect_eq(run_fsck(false, &out), 0, "%s", out);
	free(out);
	cr_expect_neq(access(orphan, F_OK), 0);
	free(orphan);
	free(ck);
	free(dir);
}

Test(fsck, cli_exit_codes_and_lock)
{
	char *argv_clean[] = { "fsck", "--data", D, NULL };
	char *argv_bad[] = { "fsck", "--bogus", NULL };
	char err[256];
	int lock;

	fill();
	cr_expect_eq(cmd_fsck(3, argv_clean), 0);
	cr_expect_eq(cmd_fsck(2, argv_bad), 2);
	lock = store_lock_datadir(D, err, sizeof(err));
	cr_assert(lock >= 0);
	cr_expect_eq(cmd_fsck(3, argv_clean), 2, "a locked data dir is not checked");
	close(lock);
}
