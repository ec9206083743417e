#include "core/bufring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int bufring_init(struct bufring *b, struct io_uring *ring, uint16_t bgid, uint32_t count,
		 uint32_t size)
{
	struct io_uring_buf_reg reg;
	int rc;

	memset(b, 0, sizeof(*b));
	if (count == 0 || count > 32768 || (count & (count - 1)) || size == 0)
		return -EINVAL;
	b->count = count;
	b->size = size;
	b->bgid = bgid;
	b->ring_bytes = count * sizeof(struct io_uring_buf);
	b->br = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
		     -1, 0);
	if (b->br == MAP_FAILED) {
		b->br = NULL;
		return -errno;
	}
	b->mem = malloc((size_t)count * size);
	if (!b->mem) {
		rc = -ENOMEM;
		goto err;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)b->br;
	reg.ring_entries = count;
	reg.bgid = bgid;
	rc = io_uring_register_buf_ring(ring, &reg, 0);
	if (rc)
		goto err;
	io_uring_buf_ring_init(b->br);
	for (uint32_t i = 0; i < count; i++)
		io_uring_buf_ring_add(b->br, b->mem + (size_t)i * size, size, (uint16_t)i,
				      io_uring_buf_ring_mask(count), (int)i);
	io_uring_buf_ring_advance(b->br, (int)count);
	return 0;
err:
	free(b->mem);
	munmap(b->br, b->ring_bytes);
	memset(b, 0, sizeof(*b));
	return rc;
}

void bufring_fini(struct bufring *b, struct io_uring *ring)
{
	if (!b->br)
		return;
	io_uring_unregister_buf_ring(ring, b->bgid);
	munmap(b->br, b->ring_bytes);
	free(b->mem);
	memset(b, 0, sizeof(*b));
}

uint8_t *bufring_take(struct bufring *b, uint32_t cqe_flags, uint16_t *bid_r)
{
	if (!(cqe_flags & IORING_CQE_F_BUFFER))
		return NULL;
	uint16_t bid = (uint16_t)(cqe_flags >> IORING_CQE_BUFFER_SHIFT);
	if (bid >= b->count)
		return NULL;
	*bid_r = bid;
	b->out++;
	b->taken_total++;
	return b->mem + (size_t)bid * b->size;
}

void bufring_put(struct bufring *b, uint16_t bid)
{
	io_uring_buf_ring_add(b->br, b->mem + (size_t)bid * b->size, b->size, bid,
			      io_uring_buf_ring_mask(b->count), 0);
	io_uring_buf_ring_advance(b->br, 1);
	b->out--;
}
