#include "core/timer.h"

#include <string.h>

static uint64_t to_tick(const struct timer_wheel *w, uint64_t ms)
{
	return ms / w->tick_ms;
}

void timer_wheel_init(struct timer_wheel *w, uint32_t tick_ms, uint64_t now_ms)
{
	memset(w, 0, sizeof(*w));
	w->tick_ms = tick_ms ? tick_ms : 1;
	w->now = to_tick(w, now_ms);
}

void timer_init(struct timer *t, void (*fn)(struct timer *, void *), void *arg)
{
	memset(t, 0, sizeof(*t));
	t->fn = fn;
	t->arg = arg;
}

static void link_slot(struct timer_wheel *w, struct timer *t)
{
	struct timer **head = &w->slots[t->deadline & (TIMER_SLOTS - 1)];
	t->next = *head;
	if (t->next)
		t->next->pprev = &t->next;
	t->pprev = head;
	*head = t;
}

static void unlink_timer(struct timer *t)
{
	*t->pprev = t->next;
	if (t->next)
		t->next->pprev = t->pprev;
	t->next = NULL;
	t->pprev = NULL;
}

void timer_arm(struct timer_wheel *w, struct timer *t, uint64_t now_ms, uint64_t delay_ms)
{
	if (timer_armed(t))
		timer_disarm(w, t);
	/* Round up so a timer never fires early. */
	uint64_t deadline = to_tick(w, now_ms + delay_ms + w->tick_ms - 1);
	if (deadline <= w->now)
		deadline = w->now + 1;
	t->deadline = deadline;
	link_slot(w, t);
	w->count++;
}

void timer_disarm(struct timer_wheel *w, struct timer *t)
{
	if (!timer_armed(t))
		return;
	unlink_timer(t);
	w->count--;
}

/* Fires the due timers of one slot. The slot's list is moved to a local
 * head first and popped one timer at a time, so a callback that disarms
 * another timer of the same slot (or re-arms itself into it) is safe. */
static size_t run_slot(struct timer_wheel *w, uint64_t tick)
{
	struct timer **slot = &w->slots[tick & (TIMER_SLOTS - 1)];
	struct timer *pending = *slot;
	size_t fired = 0;

	*slot = NULL;
	if (pending)
		pending->pprev = &pending;
	while (pending) {
		struct timer *t = pending;
		unlink_timer(t);
		if (t->deadline > w->now) {
			link_slot(w, t); /* a later round of the wheel */
			continue;
		}
		w->count--;
		fired++;
		t->fn(t, t->arg);
	}
	return fired;
}

size_t timer_wheel_advance(struct timer_wheel *w, uint64_t now_ms)
{
	uint64_t target = to_tick(w, now_ms);
	size_t fired = 0;

	if (target <= w->now)
		return 0;
	if (w->count == 0) {
		w->now = target;
		return 0;
	}
	/* After a long stall visit each slot at most once. */
	uint64_t from = w->now + 1;
	if (target - w->now > TIMER_SLOTS)
		from = target - TIMER_SLOTS + 1;
	w->now = target;
	for (uint64_t tick = from; tick <= target && w->count; tick++)
		fired += run_slot(w, tick);
	return fired;
}

int64_t timer_wheel_next_ms(const struct timer_wheel *w)
{
	return w->count ? (int64_t)w->tick_ms : -1;
}
