/* The provided-buffer ring (core/bufring.h) on a real ring: real recv
 * completions on a socketpair pick buffers, `out` counts them, running
 * out gives -ENOBUFS, giving them back lets recv continue. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/bufring.h"

#define BGID 7
#define COUNT 8u
#define SIZE 64u

static struct io_uring ring;
static struct bufring br;
static int sv[2] = { -1, -1 };
static bool have_ring;

static void setup(void)
{
	int rc = io_uring_queue_init(32, &ring, 0);
	if (rc == -ENOSYS || rc == -EPERM || rc == -EACCES)
		return; /* the test skips */
	cr_assert_eq(rc, 0, "io_uring_queue_init: %s", strerror(-rc));
	have_ring = true;
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

static void teardown(void)
{
	if (have_ring) {
		bufring_fini(&br, &ring);
		io_uring_queue_exit(&ring);
	}
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
}

#define NEED_RING()                                                         \
	do {                                                                \
		if (!have_ring)                                             \
			cr_skip_test("io_uring is unavailable here");       \
	} while (0)

/* Submits one recv on sv[0] that picks a buffer from the group. */
static void submit_recv(bool multishot, uint64_t tag)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	cr_assert_not_null(sqe);
	if (multishot)
		io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
	else
		io_uring_prep_recv(sqe, sv[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	io_uring_sqe_set_data64(sqe, tag);
	cr_assert_geq(io_uring_submit(&ring), 1);
}

static void wait_cqe(uint64_t tag, int *res_r, uint32_t *flags_r)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = { .tv_sec = 5 };
	int rc = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
	cr_assert_eq(rc, 0, "no completion: %s", strerror(-rc));
	cr_assert_eq(cqe->user_data, tag);
	*res_r = cqe->res;
	*flags_r = cqe->flags;
	io_uring_cqe_seen(&ring, cqe);
}

static void send_msg(unsigned i)
{
	char msg[32];
	int n = snprintf(msg, sizeof(msg), "message %u", i);
	cr_assert_eq(write(sv[1], msg, (size_t)n), n);
}

/* Takes the buffer of a completion and checks its contents and bookkeeping. */
static uint16_t take_checked(int res, uint32_t flags, unsigned i, uint32_t out_before,
			     bool seen[COUNT])
{
	char want[32];
	uint16_t bid = 0xffff;
	int n = snprintf(want, sizeof(want), "message %u", i);
	cr_assert_eq(res, n, "recv %u: res %d", i, res);
	uint8_t *p = bufring_take(&br, flags, &bid);
	cr_assert_not_null(p, "recv %u completed without a buffer", i);
	cr_assert_lt(bid, COUNT);
	cr_assert(!seen[bid], "buffer %u handed out twice", bid);
	seen[bid] = true;
	cr_assert_eq(p, br.mem + (size_t)bid * SIZE, "buffer pointer does not match its id");
	cr_assert_eq(memcmp(p, want, (size_t)n), 0);
	cr_assert_eq(br.out, out_before + 1);
	return bid;
}

Test(bufring, init_rejects_bad_geometry, .init = setup, .fini = teardown)
{
	NEED_RING();
	struct bufring b;
	cr_assert_eq(bufring_init(&b, &ring, 1, 0, 64), -EINVAL);
	cr_assert_eq(bufring_init(&b, &ring, 1, 3, 64), -EINVAL);
	cr_assert_eq(bufring_init(&b, &ring, 1, 65536, 64), -EINVAL);
	cr_assert_eq(bufring_init(&b, &ring, 1, 4, 0), -EINVAL);
	cr_assert_null(b.br, "a failed init leaves a zeroed struct");
	bufring_fini(&b, &ring); /* safe on the zeroed struct */
	struct bufring zero = { 0 };
	bufring_fini(&zero, &ring);
}

Test(bufring, take_without_buffer_flag, .init = setup, .fini = teardown)
{
	NEED_RING();
	uint16_t bid = 0x1234;
	cr_assert_eq(bufring_init(&br, &ring, BGID, COUNT, SIZE), 0);
	cr_assert_null(bufring_take(&br, 0, &bid));
	cr_assert_null(bufring_take(&br, IORING_CQE_F_MORE, &bid));
	/* An id beyond the ring is refused rather than pointing past mem. */
	cr_assert_null(bufring_take(&br, IORING_CQE_F_BUFFER | (COUNT << IORING_CQE_BUFFER_SHIFT),
				    &bid));
	cr_assert_eq(bid, 0x1234);
	cr_assert_eq(br.out, 0);
	cr_assert_eq(br.taken_total, 0);
}

Test(bufring, recv_takes_and_put_returns, .init = setup, .fini = teardown)
{
	NEED_RING();
	bool seen[COUNT] = { false };
	uint16_t bids[COUNT];
	int res;
	uint32_t flags;

	cr_assert_eq(bufring_init(&br, &ring, BGID, COUNT, SIZE), 0);
	cr_assert_eq(br.out, 0);
	for (unsigned i = 0; i < COUNT; i++) {
		send_msg(i);
		submit_recv(false, 100 + i);
		wait_cqe(100 + i, &res, &flags);
		bids[i] = take_checked(res, flags, i, i, seen);
	}
	cr_assert_eq(br.out, COUNT);
	cr_assert_eq(br.taken_total, COUNT);

	/* Every buffer is out: the next recv of waiting data fails. */
	send_msg(COUNT);
	submit_recv(false, 200);
	wait_cqe(200, &res, &flags);
	cr_assert_eq(res, -ENOBUFS, "recv with no buffer left: %d", res);
	cr_assert(!(flags & IORING_CQE_F_BUFFER));
	cr_assert_eq(br.out, COUNT);

	/* Give one back: the waiting data is received into it. */
	bufring_put(&br, bids[3]);
	cr_assert_eq(br.out, COUNT - 1);
	seen[bids[3]] = false;
	submit_recv(false, 201);
	wait_cqe(201, &res, &flags);
	uint16_t again = take_checked(res, flags, COUNT, COUNT - 1, seen);
	cr_assert_eq(again, bids[3], "the only free buffer was %u, got %u", bids[3], again);

	/* Give everything back. */
	bufring_put(&br, again);
	for (unsigned i = 0; i < COUNT; i++)
		if (i != 3)
			bufring_put(&br, bids[i]);
	cr_assert_eq(br.out, 0);
	cr_assert_eq(br.taken_total, COUNT + 1);

	/* And the ring is whole again: COUNT more receives succeed. */
	memset(seen, 0, sizeof(seen));
	for (unsigned i = 0; i < COUNT; i++) {
		send_msg(i);
		submit_recv(false, 300 + i);
		wait_cqe(300 + i, &res, &flags);
		bids[i] = take_checked(res, flags, i, i, seen);
	}
	for (unsigned i = 0; i < COUNT; i++)
		bufring_put(&br, bids[i]);
	cr_assert_eq(br.out, 0);
}

/* The engine's pattern: one multishot recv; it ends with -ENOBUFS when the
 * ring runs dry and is re-armed once buffers come back. */
Test(bufring, multishot_recv_exhaust_and_rearm, .init = setup, .fini = teardown)
{
	NEED_RING();
	bool seen[COUNT] = { false };
	uint16_t bids[COUNT];
	int res;
	uint32_t flags;

	cr_assert_eq(bufring_init(&br, &ring, BGID, COUNT, SIZE), 0);
	submit_recv(true, 1);
	for (unsigned i = 0; i < COUNT; i++) {
		send_msg(i);
		wait_cqe(1, &res, &flags);
		cr_assert(flags & IORING_CQE_F_MORE, "multishot recv ended early at %u (res %d)",
			  i, res);
		bids[i] = take_checked(res, flags, i, i, seen);
	}
	send_msg(COUNT);
	wait_cqe(1, &res, &flags);
	cr_assert_eq(res, -ENOBUFS);
	cr_assert(!(flags & IORING_CQE_F_MORE), "the recv must end when buffers run out");
	cr_assert_eq(br.out, COUNT);

	for (unsigned i = 0; i < COUNT; i++)
		bufring_put(&br, bids[i]);
	cr_assert_eq(br.out, 0);
	memset(seen, 0, sizeof(seen));
	submit_recv(true, 2);
	wait_cqe(2, &res, &flags);
	uint16_t bid = take_checked(res, flags, COUNT, 0, seen);
	bufring_put(&br, bid);
	cr_assert_eq(br.out, 0);
	/* Shut the writer: the multishot recv ends with 0. */
	close(sv[1]);
	sv[1] = -1;
	wait_cqe(2, &res, &flags);
	cr_assert_eq(res, 0);
	cr_assert(!(flags & IORING_CQE_F_MORE));
}
