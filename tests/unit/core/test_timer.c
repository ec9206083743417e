/* The timer wheel (core/timer.h): never early, at most one tick late,
 * re-arm, disarm, callbacks that touch their own slot, several rotations,
 * long stalls, and the count of armed timers. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "core/timer.h"

#define TICK 10u
#define WHEEL_MS ((uint64_t)TIMER_SLOTS * TICK)

/* One test timer: what it expects and what happened to it. */
struct tt {
	struct timer t;
	struct timer_wheel *w;
	uint64_t armed_at, delay; /* ms */
	unsigned fired;
	uint64_t fired_at;        /* the now_ms of the advance that fired it */
	/* behaviour inside the callback */
	struct tt *disarm_other;
	int rearm_times;          /* re-arm itself this many more times */
	uint64_t rearm_delay;
};

static uint64_t g_now; /* the now_ms the test passes to timer_wheel_advance */

static void tt_fire(struct timer *t, void *arg)
{
	struct tt *x = arg;
	cr_assert_eq(t, &x->t, "callback got the wrong timer");
	cr_assert(!timer_armed(t), "a firing timer must be disarmed before its callback");
	x->fired++;
	x->fired_at = g_now;
	if (x->disarm_other)
		timer_disarm(x->w, &x->disarm_other->t);
	if (x->rearm_times > 0) {
		x->rearm_times--;
		x->armed_at = g_now;
		x->delay = x->rearm_delay;
		timer_arm(x->w, &x->t, g_now, x->rearm_delay);
	}
}

static void tt_arm(struct timer_wheel *w, struct tt *x, uint64_t now, uint64_t delay)
{
	x->w = w;
	if (!x->t.fn)
		timer_init(&x->t, tt_fire, x);
	x->armed_at = now;
	x->delay = delay;
	timer_arm(w, &x->t, now, delay);
}

static size_t advance_to(struct timer_wheel *w, uint64_t now)
{
	g_now = now;
	return timer_wheel_advance(w, now);
}

/* Never before the deadline, and no later than the first tick after it. */
static void check_fired_in_window(const struct tt *x, uint64_t step)
{
	uint64_t due = x->armed_at + x->delay;
	cr_assert_eq(x->fired, 1, "timer armed at %llu for %llu ms fired %u times",
		     (unsigned long long)x->armed_at, (unsigned long long)x->delay, x->fired);
	cr_assert_geq(x->fired_at, due, "fired early: at %llu, due %llu",
		      (unsigned long long)x->fired_at, (unsigned long long)due);
	cr_assert_lt(x->fired_at, due + TICK + step, "fired late: at %llu, due %llu",
		     (unsigned long long)x->fired_at, (unsigned long long)due);
}

Test(timer, fires_at_or_after_deadline_never_before)
{
	static struct timer_wheel w;
	enum { N = 400 };
	static struct tt x[N];
	const uint64_t start = 7; /* not on a tick boundary */

	memset(x, 0, sizeof(x));
	timer_wheel_init(&w, TICK, 0);
	for (int i = 0; i < N; i++)
		tt_arm(&w, &x[i], start, (uint64_t)i * 7 % 3001); /* 0..3000 ms, odd values */
	cr_assert_eq(w.count, N);
	for (uint64_t now = start; now <= start + 3001 + 2 * TICK; now++) {
		size_t before = w.count;
		size_t n = advance_to(&w, now);
		cr_assert_eq(before - w.count, n, "advance returned %zu but count fell by %zu", n,
			     before - w.count);
		/* Nothing that is not yet due may have fired. */
		for (int i = 0; i < N; i++)
			if (x[i].fired)
				cr_assert_geq(x[i].fired_at, x[i].armed_at + x[i].delay);
	}
	for (int i = 0; i < N; i++)
		check_fired_in_window(&x[i], 1);
	cr_assert_eq(w.count, 0);
	cr_assert_eq(timer_wheel_next_ms(&w), -1);
}

Test(timer, delay_zero_fires_on_next_tick_not_now)
{
	struct timer_wheel w;
	struct tt x = { 0 };

	timer_wheel_init(&w, TICK, 1000);
	tt_arm(&w, &x, 1000, 0);
	cr_assert_eq(advance_to(&w, 1000), 0, "advancing to the same time fires nothing");
	cr_assert_eq(x.fired, 0);
	cr_assert_eq(advance_to(&w, 1000 + TICK), 1);
	cr_assert_eq(x.fired, 1);
}

Test(timer, rearm_moves_the_deadline)
{
	struct timer_wheel w;
	struct tt later = { 0 }, earlier = { 0 };

	timer_wheel_init(&w, TICK, 0);
	/* Later: 100 ms, moved to 500 ms at t=50 before it fired. */
	tt_arm(&w, &later, 0, 100);
	/* Earlier: 1000 ms, moved to 30 ms at t=50. */
	tt_arm(&w, &earlier, 0, 1000);
	advance_to(&w, 50);
	tt_arm(&w, &later, 50, 500);
	tt_arm(&w, &earlier, 50, 30);
	cr_assert_eq(w.count, 2, "re-arming an armed timer must not count it twice");
	for (uint64_t now = 51; now <= 2000; now++)
		advance_to(&w, now);
	check_fired_in_window(&later, 1);
	check_fired_in_window(&earlier, 1);
	cr_assert_eq(later.fired_at >= 550, 1);
	cr_assert_eq(earlier.fired_at < 100, 1, "earlier fired at %llu",
		     (unsigned long long)earlier.fired_at);
	cr_assert_eq(w.count, 0);
}

Test(timer, disarm_stops_it)
{
	struct timer_wheel w;
	struct tt x = { 0 }, y = { 0 };

	timer_wheel_init(&w, TICK, 0);
	tt_arm(&w, &x, 0, 100);
	tt_arm(&w, &y, 0, 100); /* same slot */
	cr_assert(timer_armed(&x.t));
	timer_disarm(&w, &x.t);
	cr_assert(!timer_armed(&x.t));
	cr_assert_eq(w.count, 1);
	timer_disarm(&w, &x.t); /* twice is harmless */
	cr_assert_eq(w.count, 1);
	for (uint64_t now = 1; now <= 3 * WHEEL_MS; now += 3)
		advance_to(&w, now);
	cr_assert_eq(x.fired, 0, "a disarmed timer fired");
	cr_assert_eq(y.fired, 1, "disarming a neighbour in the slot lost the other timer");
	cr_assert_eq(w.count, 0);
}

/* Two timers in one slot, each disarming the other: exactly one fires. */
Test(timer, callback_disarms_other_timer_of_same_slot)
{
	struct timer_wheel w;
	struct tt a = { 0 }, b = { 0 }, c = { 0 };

	timer_wheel_init(&w, TICK, 0);
	tt_arm(&w, &a, 0, 200);
	tt_arm(&w, &b, 0, 200);
	tt_arm(&w, &c, 0, 200);
	a.disarm_other = &b;
	b.disarm_other = &a;
	cr_assert_eq(advance_to(&w, 200), 2, "a or b, and c");
	cr_assert_eq(a.fired + b.fired, 1, "a fired %u, b fired %u", a.fired, b.fired);
	cr_assert_eq(c.fired, 1);
	cr_assert_eq(w.count, 0);
	cr_assert(!timer_armed(&a.t) && !timer_armed(&b.t));
	advance_to(&w, 10 * WHEEL_MS);
	cr_assert_eq(a.fired + b.fired, 1);
}

/* A due timer disarms one in the same slot that is due a wheel round
 * later (it sits in the list being walked). */
Test(timer, callback_disarms_later_round_in_same_slot)
{
	struct timer_wheel w;
	struct tt a = { 0 }, later = { 0 };

	timer_wheel_init(&w, TICK, 0);
	tt_arm(&w, &later, 0, 200 + WHEEL_MS);
	tt_arm(&w, &a, 0, 200);
	cr_assert_eq(later.t.deadline % TIMER_SLOTS, a.t.deadline % TIMER_SLOTS);
	a.disarm_other = &later;
	advance_to(&w, 200);
	cr_assert_eq(a.fired, 1);
	cr_assert_eq(w.count, 0);
	for (uint64_t now = 200; now <= 3 * WHEEL_MS; now += TICK)
		advance_to(&w, now);
	cr_assert_eq(later.fired, 0);
}

Test(timer, callback_rearms_itself_periodically)
{
	struct timer_wheel w;
	struct tt x = { 0 };

	timer_wheel_init(&w, TICK, 0);
	x.rearm_times = 1000;
	x.rearm_delay = 100;
	tt_arm(&w, &x, 0, 100);
	for (uint64_t now = 1; now <= 1000; now++) {
		unsigned before = x.fired;
		advance_to(&w, now);
		if (x.fired != before) {
			cr_assert_eq(x.fired, before + 1, "fired twice in one advance at %llu",
				     (unsigned long long)now);
			cr_assert_eq(now % 100, 0, "periodic timer fired at %llu",
				     (unsigned long long)now);
		}
	}
	cr_assert_eq(x.fired, 10);
	cr_assert(timer_armed(&x.t));
	cr_assert_eq(w.count, 1);
}

/* Re-arming into the slot being run (0 delay, or exactly one rotation)
 * must wait for a later advance, not loop inside this one. */
Test(timer, callback_rearms_into_the_running_slot)
{
	struct timer_wheel w;
	struct tt zero = { 0 }, round = { 0 };

	timer_wheel_init(&w, TICK, 0);
	zero.rearm_times = 5;
	zero.rearm_delay = 0;
	round.rearm_times = 1;
	round.rearm_delay = WHEEL_MS;
	tt_arm(&w, &zero, 0, 100);
	tt_arm(&w, &round, 0, 100);
	cr_assert_eq(advance_to(&w, 100), 2);
	cr_assert_eq(zero.fired, 1);
	cr_assert_eq(round.fired, 1);
	cr_assert_eq(w.count, 2);
	cr_assert_eq(advance_to(&w, 100 + TICK), 1, "the zero-delay re-arm fires next tick");
	cr_assert_eq(zero.fired, 2);
	for (uint64_t now = 100 + 2 * TICK; now < 100 + WHEEL_MS; now += TICK)
		advance_to(&w, now);
	cr_assert_eq(round.fired, 1, "re-armed a whole rotation ahead fired early");
	advance_to(&w, 100 + WHEEL_MS);
	cr_assert_eq(round.fired, 2);
	cr_assert_eq(zero.fired, 6);
	cr_assert_eq(w.count, 0);
}

/* Deadlines spread over four rotations, random step sizes. */
Test(timer, many_timers_across_rotations)
{
	static struct timer_wheel w;
	enum { N = 5000 };
	struct tt *x = calloc(N, sizeof(*x));
	unsigned seed = 12345;

	cr_assert_not_null(x);
	timer_wheel_init(&w, TICK, 3);
	for (int i = 0; i < N; i++)
		tt_arm(&w, &x[i], 3, (uint64_t)rand_r(&seed) % (4 * WHEEL_MS));
	cr_assert_eq(w.count, N);
	uint64_t now = 3, max_step = 3 * TICK;
	size_t total = 0;
	while (now < 4 * WHEEL_MS + 2 * max_step) {
		now += 1 + (uint64_t)rand_r(&seed) % max_step;
		size_t before = w.count;
		size_t n = advance_to(&w, now);
		total += n;
		cr_assert_eq(before - w.count, n);
		for (int i = 0; i < N; i++)
			if (x[i].fired)
				cr_assert_geq(x[i].fired_at, x[i].armed_at + x[i].delay);
	}
	cr_assert_eq(total, N);
	for (int i = 0; i < N; i++)
		check_fired_in_window(&x[i], max_step);
	free(x);
}

/* The loop stalled for ten rotations: every timer due in that time fires
 * in the one advance, once; timers due after it wait. */
Test(timer, long_stall)
{
	static struct timer_wheel w;
	enum { N = 3000 };
	struct tt *x = calloc(N, sizeof(*x));
	unsigned seed = 99;

	cr_assert_not_null(x);
	timer_wheel_init(&w, TICK, 0);
	size_t due = 0;
	for (int i = 0; i < N; i++) {
		/* half within the stall (up to 3 rotations), half after it */
		uint64_t d = i % 2 ? (uint64_t)rand_r(&seed) % (3 * WHEEL_MS)
				   : 10 * WHEEL_MS + TICK + (uint64_t)rand_r(&seed) % (3 * WHEEL_MS);
		tt_arm(&w, &x[i], 0, d);
		due += i % 2;
	}
	size_t n = advance_to(&w, 10 * WHEEL_MS);
	cr_assert_eq(n, due, "fired %zu of %zu due timers", n, due);
	cr_assert_eq(w.count, N - due);
	for (int i = 0; i < N; i++) {
		if (i % 2)
			cr_assert_eq(x[i].fired, 1);
		else
			cr_assert_eq(x[i].fired, 0, "timer due at %llu fired in the stall",
				     (unsigned long long)x[i].delay);
	}
	/* Stall again past all of them. */
	n = advance_to(&w, 25 * WHEEL_MS);
	cr_assert_eq(n, N - due);
	cr_assert_eq(w.count, 0);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(x[i].fired, 1);
		cr_assert_geq(x[i].fired_at, x[i].delay);
	}
	free(x);
}

Test(timer, count_bookkeeping)
{
	struct timer_wheel w;
	struct tt a = { 0 }, b = { 0 }, c = { 0 };

	timer_wheel_init(&w, TICK, 0);
	cr_assert_eq(w.count, 0);
	cr_assert_eq(timer_wheel_next_ms(&w), -1);
	tt_arm(&w, &a, 0, 50);
	tt_arm(&w, &b, 0, 5000);
	tt_arm(&w, &c, 0, 5000 + WHEEL_MS);
	cr_assert_eq(w.count, 3);
	cr_assert_eq(timer_wheel_next_ms(&w), TICK);
	tt_arm(&w, &a, 0, 70); /* re-arm */
	cr_assert_eq(w.count, 3);
	timer_disarm(&w, &b.t);
	cr_assert_eq(w.count, 2);
	timer_disarm(&w, &b.t);
	cr_assert_eq(w.count, 2);
	cr_assert_eq(advance_to(&w, 100), 1);
	cr_assert_eq(w.count, 1);
	/* Passing c's slot once (a rotation early) keeps it armed and counted. */
	cr_assert_eq(advance_to(&w, 5000 + TICK), 0);
	cr_assert_eq(w.count, 1);
	cr_assert(timer_armed(&c.t));
	cr_assert_eq(advance_to(&w, 5000 + WHEEL_MS), 1);
	cr_assert_eq(w.count, 0);
	cr_assert_eq(timer_wheel_next_ms(&w), -1);
	/* Time going backwards fires nothing and breaks nothing. */
	tt_arm(&w, &a, 5000 + WHEEL_MS, 10);
	cr_assert_eq(advance_to(&w, 10), 0);
	cr_assert_eq(w.count, 1);
	cr_assert_eq(advance_to(&w, 5000 + WHEEL_MS + 10), 1);
}
