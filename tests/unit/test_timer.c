#include <criterion/criterion.h>

#include "core/timer.h"

#define N 64
static struct timer_node nodes[N];
static int fired_order[N * 4];
static int nfired;

static void record(struct timer_node *t)
{
    fired_order[nfired++] = (int)(t - nodes);
}

static void reset(void)
{
    memset(nodes, 0, sizeof nodes);
    nfired = 0;
}

Test(timer, fires_at_or_after_deadline_never_before)
{
    static struct timer_wheel w;
    reset();
    timer_wheel_init(&w, 1000);
    timer_arm(&w, &nodes[0], 1000 + 50);
    timer_arm(&w, &nodes[1], 1000 + 10);
    timer_wheel_advance(&w, 1000 + 9, record);
    cr_assert_eq(nfired, 0);
    timer_wheel_advance(&w, 1000 + 17, record);    /* one tick past 10ms */
    cr_assert_eq(nfired, 1);
    cr_assert_eq(fired_order[0], 1);
    timer_wheel_advance(&w, 1000 + 49, record);
    cr_assert_eq(nfired, 1);
    timer_wheel_advance(&w, 1000 + 60, record);
    cr_assert_eq(nfired, 2);
    cr_assert_eq(fired_order[1], 0);
    cr_assert_eq(w.armed, 0);
}

Test(timer, deadlines_beyond_one_lap_wait_for_their_lap)
{
    static struct timer_wheel w;
    reset();
    timer_wheel_init(&w, 0);
    uint64_t lap = (uint64_t)TIMER_SLOTS * TIMER_TICK_MS;
    timer_arm(&w, &nodes[0], lap * 3 + 40);
    for (uint64_t t = 0; t < lap * 3; t += 100)
        timer_wheel_advance(&w, t, record);
    cr_assert_eq(nfired, 0, "a far timer fired a lap early");
    timer_wheel_advance(&w, lap * 3 + 48, record);
    cr_assert_eq(nfired, 1);
}

Test(timer, rearm_and_disarm_move_the_timer)
{
    static struct timer_wheel w;
    reset();
    timer_wheel_init(&w, 0);
    timer_arm(&w, &nodes[0], 100);
    timer_arm(&w, &nodes[0], 500);     /* re-arm later: not at 100 */
    timer_arm(&w, &nodes[1], 100);
    timer_disarm(&w, &nodes[1]);
    cr_assert_not(timer_armed(&nodes[1]));
    timer_wheel_advance(&w, 200, record);
    cr_assert_eq(nfired, 0);
    timer_wheel_advance(&w, 520, record);
    cr_assert_eq(nfired, 1);
    cr_assert_eq(fired_order[0], 0);
}

static struct timer_wheel rearm_wheel;
static void rearm_in_callback(struct timer_node *t)
{
    record(t);
    if (nfired < 3)
        timer_arm(&rearm_wheel, t, t->deadline_ms + 100);
}

Test(timer, callback_may_rearm_itself)
{
    reset();
    timer_wheel_init(&rearm_wheel, 0);
    timer_arm(&rearm_wheel, &nodes[0], 100);
    timer_wheel_advance(&rearm_wheel, 110, rearm_in_callback);
    cr_assert_eq(nfired, 1, "a timer re-armed in its callback must not fire again in the same pass");
    timer_wheel_advance(&rearm_wheel, 1000, rearm_in_callback);
    cr_assert_eq(nfired, 3);
}

Test(timer, past_deadline_fires_on_next_advance_and_long_stall_is_safe)
{
    static struct timer_wheel w;
    reset();
    timer_wheel_init(&w, 10000);
    for (int i = 0; i < N; i++)
        timer_arm(&w, &nodes[i], (uint64_t)(i * 37) % 5000 + 5000);  /* all already past */
    timer_wheel_advance(&w, 10000 + TIMER_TICK_MS, record);
    cr_assert_eq(nfired, N);
    cr_assert_eq(w.armed, 0);
    /* an hour-long stall must not loop an hour's worth of ticks */
    timer_arm(&w, &nodes[0], 10000 + 3600 * 1000);
    timer_wheel_advance(&w, 10000 + 3600 * 1000 + 100, record);
    cr_assert_eq(nfired, N + 1);
}
