/* bufring.h - a provided-buffer ring for multishot receives.
 *
 * The kernel picks a buffer when data arrives (so an idle connection pins
 * none), the completion names it, and the one user who handled the
 * completion gives it back with bufring_put() before returning (STYLE.md:
 * one owner at a time). The counters let tests and stats check that no
 * buffer leaks: out == buffers taken by the kernel and not yet given back. */
#ifndef RINGMAIL_CORE_BUFRING_H
#define RINGMAIL_CORE_BUFRING_H

#include <liburing.h>
#include <stdint.h>

struct bufring {
	struct io_uring_buf_ring *br;
	uint8_t *mem;          /* count * size bytes */
	uint32_t count;        /* power of two */
	uint32_t size;         /* bytes per buffer */
	uint16_t bgid;
	uint32_t out;          /* buffers handed to completions, not yet put back */
	uint64_t taken_total;  /* statistics */
	size_t ring_bytes;
};

/* Registers count buffers of size bytes as group bgid on ring. count must be
 * a power of two up to 32768. Returns 0 or a negative errno. */
int bufring_init(struct bufring *b, struct io_uring *ring, uint16_t bgid, uint32_t count,
		 uint32_t size);
/* Unregisters and frees. Safe on a zeroed struct. */
void bufring_fini(struct bufring *b, struct io_uring *ring);
/* Returns the buffer a completion carries (cqe flags with IORING_CQE_F_BUFFER)
 * and counts it as out, or NULL when the flags carry none. *bid_r gets its
 * id for bufring_put(). The pointer stays valid until bufring_put(). */
uint8_t *bufring_take(struct bufring *b, uint32_t cqe_flags, uint16_t *bid_r);
/* Gives buffer bid back to the kernel. */
void bufring_put(struct bufring *b, uint16_t bid);

#endif
