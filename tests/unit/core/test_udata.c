/* Typed user_data (core/udata.h): every op round-trips, unknown ops are
 * rejected, pointers survive, generations wrap at 24 bits. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "core/loop.h"
#include "core/udata.h"

static const enum udata_op all_ops[] = {
	UDATA_ACCEPT, UDATA_RECV, UDATA_SEND, UDATA_CLOSE, UDATA_CANCEL, UDATA_TICK,
	UDATA_LOGWRITE, UDATA_CB, UDATA_MSG, UDATA_IGNORE,
};
#define NOPS (sizeof(all_ops) / sizeof(all_ops[0]))

Test(udata, op_table_is_complete)
{
	/* If an op is added, this test's table must learn it. */
	cr_assert_eq(NOPS, UDATA_OP_MAX - 1);
}

Test(udata, conn_round_trip_every_op)
{
	static const uint32_t idxs[] = { 0, 1, 1023, 0x7fffffff, 0xffffffff };
	static const uint32_t gens[] = { 0, 1, 0xabcdef, UDATA_GEN_MASK };

	for (size_t o = 0; o < NOPS; o++)
		for (size_t i = 0; i < sizeof(idxs) / sizeof(idxs[0]); i++)
			for (size_t g = 0; g < sizeof(gens) / sizeof(gens[0]); g++) {
				struct udata u = { 0 };
				uint64_t v = udata_conn(all_ops[o], idxs[i], gens[g]);
				cr_assert_neq(v, 0);
				cr_assert_eq(udata_decode(v, &u), 0, "op %d rejected", all_ops[o]);
				cr_assert_eq(u.op, all_ops[o]);
				cr_assert_eq(u.idx, idxs[i]);
				cr_assert_eq(u.gen, gens[g]);
			}
}

Test(udata, generation_is_masked_to_24_bits)
{
	struct udata u;
	/* A generation that wrapped past 24 bits must not spill into the op. */
	uint64_t v = udata_conn(UDATA_RECV, 5, 0x1000001u);
	cr_assert_eq(udata_decode(v, &u), 0);
	cr_assert_eq(u.op, UDATA_RECV);
	cr_assert_eq(u.gen, 1);
	cr_assert_eq(u.idx, 5);
	v = udata_conn(UDATA_SEND, 7, 0xffffffffu);
	cr_assert_eq(udata_decode(v, &u), 0);
	cr_assert_eq(u.op, UDATA_SEND);
	cr_assert_eq(u.gen, UDATA_GEN_MASK);
	/* Two generations 2^24 apart are the same slot generation: that is the
	 * documented wrap, and why the inflight count is the first guard. */
	cr_assert_eq(udata_conn(UDATA_SEND, 7, 3), udata_conn(UDATA_SEND, 7, 3 + (1u << 24)));
	cr_assert_neq(udata_conn(UDATA_SEND, 7, 3), udata_conn(UDATA_SEND, 7, 4));
}

Test(udata, unknown_ops_rejected)
{
	static const unsigned bad[] = { 0, UDATA_OP_MAX, UDATA_OP_MAX + 1, 0x7f, 0x80, 0xff };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct udata u = { .op = UDATA_RECV, .idx = 42 };
		uint64_t v = ((uint64_t)bad[i] << 56) | 0x123456789abcull;
		cr_assert_eq(udata_decode(v, &u), -EINVAL, "op %#x accepted", bad[i]);
	}
	struct udata u;
	cr_assert_eq(udata_decode(0, &u), -EINVAL, "a zero user_data is an error");
	cr_assert_eq(udata_decode(UINT64_MAX, &u), -EINVAL);
}

Test(udata, pointer_round_trip)
{
	struct loop_cb stack_cb;
	static struct loop_cb static_cb;
	struct loop_cb *heap_cb = malloc(sizeof(*heap_cb));
	const void *ptrs[] = { &stack_cb, &static_cb, heap_cb, NULL,
			       (const void *)(uintptr_t)UDATA_PAYLOAD_MASK };

	cr_assert_not_null(heap_cb);
	for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) {
		uint64_t v = 0;
		struct udata u;
		cr_assert_eq(udata_ptr(UDATA_CB, ptrs[i], &v), 0, "pointer %p refused", ptrs[i]);
		cr_assert_eq(udata_decode(v, &u), 0);
		cr_assert_eq(u.op, UDATA_CB);
		cr_assert_eq((const void *)(uintptr_t)u.payload, ptrs[i]);
	}
	/* loop_cb_udata() is the same encoding. */
	struct udata u;
	cr_assert_eq(udata_decode(loop_cb_udata(heap_cb), &u), 0);
	cr_assert_eq(u.op, UDATA_CB);
	cr_assert_eq((void *)(uintptr_t)u.payload, heap_cb);
	free(heap_cb);
}

Test(udata, pointer_too_wide_rejected)
{
	uint64_t v = 0x1234;
	const void *wide[] = {
		(const void *)(uintptr_t)(UDATA_PAYLOAD_MASK + 1),
		(const void *)(uintptr_t)0xff00000000001000ull,
		(const void *)(uintptr_t)UINT64_MAX,
	};
	for (size_t i = 0; i < sizeof(wide) / sizeof(wide[0]); i++) {
		cr_assert_eq(udata_ptr(UDATA_CB, wide[i], &v), -EINVAL, "%p accepted", wide[i]);
		cr_assert_eq(v, 0x1234, "output written on failure");
	}
}

Test(udata, msg_payload_round_trip_and_mask)
{
	static const uint64_t payloads[] = { 0, 1, 0xdeadbeef, UDATA_PAYLOAD_MASK };
	struct udata u;

	for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
		cr_assert_eq(udata_decode(udata_msg(payloads[i]), &u), 0);
		cr_assert_eq(u.op, UDATA_MSG);
		cr_assert_eq(u.payload, payloads[i]);
	}
	/* A payload wider than 56 bits is cut, never turned into another op. */
	cr_assert_eq(udata_decode(udata_msg(UINT64_MAX), &u), 0);
	cr_assert_eq(u.op, UDATA_MSG);
	cr_assert_eq(u.payload, UDATA_PAYLOAD_MASK);
}
