/* udata.h - typed io_uring user_data.
 *
 * Every SQE the engine submits carries a 64-bit user_data built here and
 * nothing else: the top 8 bits are the operation, the rest depends on it.
 *   connection ops (ACCEPT uses the listener index): op:8 | gen:24 | idx:32
 *   UDATA_CB: op:8 | pointer:56 to a struct loop_cb (user-space pointers
 *             on x86-64 and arm64 fit in 56 bits; udata_cb() checks)
 *   UDATA_MSG: op:8 | payload:56; the message kind travels in cqe->res
 * udata_decode() rejects values whose op is unknown, so a stray or corrupt
 * completion is logged and dropped instead of being dispatched. */
#ifndef RINGMAIL_CORE_UDATA_H
#define RINGMAIL_CORE_UDATA_H

#include <errno.h>
#include <stdint.h>

enum udata_op {
	UDATA_NONE = 0,  /* never submitted: a zero user_data is an error */
	UDATA_ACCEPT,    /* idx: listener index in the loop */
	UDATA_RECV,      /* multishot recv of a connection */
	UDATA_SEND,      /* the connection's one in-flight send */
	UDATA_CLOSE,     /* close(2) of a connection's socket */
	UDATA_CANCEL,    /* async cancel of a connection's recv */
	UDATA_TICK,      /* the loop's timer tick */
	UDATA_LOGWRITE,  /* the loop's log buffer write to stderr */
	UDATA_CB,        /* generic completion: pointer to struct loop_cb */
	UDATA_MSG,       /* IORING_OP_MSG_RING from another loop or thread */
	UDATA_IGNORE,    /* completions nobody waits for (cancel results) */
	UDATA_OP_MAX,
};

#define UDATA_GEN_MASK 0xffffffu
#define UDATA_PAYLOAD_MASK ((UINT64_C(1) << 56) - 1)

struct udata {
	enum udata_op op;
	uint32_t idx;     /* connection ops */
	uint32_t gen;     /* connection ops: generation of the slot */
	uint64_t payload; /* UDATA_CB (a pointer) and UDATA_MSG */
};

static inline uint64_t udata_conn(enum udata_op op, uint32_t idx, uint32_t gen)
{
	return ((uint64_t)op << 56) | ((uint64_t)(gen & UDATA_GEN_MASK) << 32) | idx;
}

/* Returns 0 with *u_r filled, or -EINVAL for a pointer that does not fit. */
static inline int udata_ptr(enum udata_op op, const void *p, uint64_t *u_r)
{
	uint64_t v = (uint64_t)(uintptr_t)p;
	if (v & ~UDATA_PAYLOAD_MASK)
		return -EINVAL;
	*u_r = ((uint64_t)op << 56) | v;
	return 0;
}

static inline uint64_t udata_msg(uint64_t payload)
{
	return ((uint64_t)UDATA_MSG << 56) | (payload & UDATA_PAYLOAD_MASK);
}

/* Returns 0 with *u filled, or -EINVAL for an unknown op. */
static inline int udata_decode(uint64_t v, struct udata *u)
{
	unsigned op = (unsigned)(v >> 56);
	if (op == UDATA_NONE || op >= UDATA_OP_MAX)
		return -EINVAL;
	u->op = (enum udata_op)op;
	u->idx = (uint32_t)v;
	u->gen = (uint32_t)(v >> 32) & UDATA_GEN_MASK;
	u->payload = v & UDATA_PAYLOAD_MASK;
	return 0;
}

#endif
