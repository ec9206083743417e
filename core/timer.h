/* timer.h - a hashed timing wheel for per-connection deadlines.
 *
 * Pure: no clock of its own, no allocation. The loop feeds it the time once
 * per tick. Arming, re-arming and disarming are O(1); advancing visits only
 * the slots that passed. A timer fires at the first tick at or after its
 * deadline, so the resolution is tick_ms. Timers are intrusive: embed a
 * struct timer in the object it belongs to. */
#ifndef RINGMAIL_CORE_TIMER_H
#define RINGMAIL_CORE_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TIMER_SLOTS 512u /* power of two */

struct timer {
	struct timer *next;
	struct timer **pprev; /* NULL when not armed */
	uint64_t deadline;    /* in ticks */
	void (*fn)(struct timer *t, void *arg);
	void *arg;
};

struct timer_wheel {
	struct timer *slots[TIMER_SLOTS];
	uint64_t now;      /* current tick */
	uint32_t tick_ms;
	size_t count;      /* armed timers */
};

void timer_wheel_init(struct timer_wheel *w, uint32_t tick_ms, uint64_t now_ms);
/* Sets the callback of t (once, before arming). */
void timer_init(struct timer *t, void (*fn)(struct timer *, void *), void *arg);
/* Arms t to fire delay_ms after now_ms (re-arms when armed). */
void timer_arm(struct timer_wheel *w, struct timer *t, uint64_t now_ms, uint64_t delay_ms);
void timer_disarm(struct timer_wheel *w, struct timer *t);
static inline bool timer_armed(const struct timer *t) { return t->pprev != NULL; }
/* Fires every timer whose deadline is at or before now_ms, in no promised
 * order. A callback may arm or disarm any timer, itself included. Returns
 * the number fired. */
size_t timer_wheel_advance(struct timer_wheel *w, uint64_t now_ms);
/* Milliseconds until the earliest possible firing (one tick), or -1 when
 * nothing is armed. */
int64_t timer_wheel_next_ms(const struct timer_wheel *w);

#endif
