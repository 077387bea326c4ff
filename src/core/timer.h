/* Per-shard hashed timer wheel. Each connection owns at most one timer node and
 * re-arms it as it changes phase; arming is O(1) (unlink + link), firing costs
 * nothing for slots with no due timers. Far deadlines wrap around the wheel and
 * are re-checked when their slot comes up. */
#ifndef AIGW_CORE_TIMER_H
#define AIGW_CORE_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#define TIMER_SLOTS 1024        /* power of two */
#define TIMER_TICK_MS 8

struct timer_node {
    struct timer_node *next, *prev;     /* NULL prev: not armed */
    uint64_t deadline_ms;
    uint8_t kind;                       /* owner's tag: which object embeds this node */
};

struct timer_wheel {
    struct timer_node slots[TIMER_SLOTS];   /* list heads */
    uint64_t now_tick;                      /* last tick processed */
    unsigned armed;
};

void timer_wheel_init(struct timer_wheel *w, uint64_t now_ms);
void timer_arm(struct timer_wheel *w, struct timer_node *t, uint64_t deadline_ms);
void timer_disarm(struct timer_wheel *w, struct timer_node *t);
static inline bool timer_armed(const struct timer_node *t) { return t->prev != 0; }

/* Calls fire(t) for every timer due at now_ms. fire may re-arm or disarm any timer. */
void timer_wheel_advance(struct timer_wheel *w, uint64_t now_ms, void (*fire)(struct timer_node *t));
/* Milliseconds until the next tick boundary with armed timers (bounded, for the loop's wait). */
uint64_t timer_wheel_wait_ms(const struct timer_wheel *w, uint64_t now_ms);

#endif
