#include "core/timer.h"

#include <stddef.h>

void timer_wheel_init(struct timer_wheel *w, uint64_t now_ms)
{
    for (unsigned i = 0; i < TIMER_SLOTS; i++)
        w->slots[i].next = w->slots[i].prev = &w->slots[i];
    w->now_tick = now_ms / TIMER_TICK_MS;
    w->armed = 0;
}

static void link_node(struct timer_wheel *w, struct timer_node *t)
{
    /* rounded up: a timer may fire up to a tick late, never early */
    uint64_t tick = (t->deadline_ms + TIMER_TICK_MS - 1) / TIMER_TICK_MS;
    /* a deadline already past goes into the next slot to be processed */
    if (tick <= w->now_tick)
        tick = w->now_tick + 1;
    struct timer_node *head = &w->slots[tick & (TIMER_SLOTS - 1)];
    t->next = head->next;
    t->prev = head;
    head->next->prev = t;
    head->next = t;
}

static void unlink_node(struct timer_node *t)
{
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

void timer_arm(struct timer_wheel *w, struct timer_node *t, uint64_t deadline_ms)
{
    if (timer_armed(t))
        unlink_node(t);
    else
        w->armed++;
    t->deadline_ms = deadline_ms;
    link_node(w, t);
}

void timer_disarm(struct timer_wheel *w, struct timer_node *t)
{
    if (!timer_armed(t))
        return;
    unlink_node(t);
    w->armed--;
}

void timer_wheel_advance(struct timer_wheel *w, uint64_t now_ms, void (*fire)(struct timer_node *t))
{
    uint64_t target = now_ms / TIMER_TICK_MS;
    /* after a long stall there is no need to visit a slot twice */
    if (target - w->now_tick > TIMER_SLOTS)
        w->now_tick = target - TIMER_SLOTS;
    while (w->now_tick < target) {
        w->now_tick++;
        struct timer_node *head = &w->slots[w->now_tick & (TIMER_SLOTS - 1)];
        /* detach the slot so callbacks that re-arm into this slot are not revisited */
        struct timer_node pending;
        if (head->next == head)
            continue;
        pending.next = head->next;
        pending.prev = head->prev;
        pending.next->prev = &pending;
        pending.prev->next = &pending;
        head->next = head->prev = head;
        while (pending.next != &pending) {
            struct timer_node *t = pending.next;
            unlink_node(t);
            if (t->deadline_ms <= w->now_tick * TIMER_TICK_MS) {
                w->armed--;
                fire(t);
            } else {
                link_node(w, t);    /* a later lap of the wheel */
            }
        }
    }
}

uint64_t timer_wheel_wait_ms(const struct timer_wheel *w, uint64_t now_ms)
{
    if (w->armed == 0)
        return 1000;
    uint64_t next_boundary = (now_ms / TIMER_TICK_MS + 1) * TIMER_TICK_MS;
    return next_boundary - now_ms;
}
