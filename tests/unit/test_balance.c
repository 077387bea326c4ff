#include <criterion/criterion.h>

#include <string.h>

#include "core/config.h"
#include "policy/balance.h"

static void balt_backends(struct cfg_backend *b, const unsigned *weights, unsigned n)
{
    memset(b, 0, n * sizeof *b);
    for (unsigned i = 0; i < n; i++)
        b[i].weight = weights[i];
}

Test(balance, round_robin_matches_weights_exactly)
{
    static const unsigned weights[] = { 5, 1, 3, 1 };   /* sum 10: 1000 picks = 100 rounds */
    struct cfg_backend b[4];
    balt_backends(b, weights, 4);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 4), 0);
    unsigned count[4] = { 0 };
    int prev = -1, longest_run = 0, run = 0;
    for (int i = 0; i < 1000; i++) {
        int k = balance_pick(BALANCE_ROUND_ROBIN, &s, b, 4, NULL, NULL, 64);
        cr_assert(k >= 0 && k < 4);
        count[k]++;
        run = k == prev ? run + 1 : 1;
        if (run > longest_run)
            longest_run = run;
        prev = k;
    }
    for (int i = 0; i < 4; i++)
        cr_expect_eq(count[i], weights[i] * 100, "backend %d: %u picks", i, count[i]);
    /* smooth: the weight-5 backend is interleaved, never picked 5 times in a row */
    cr_expect_leq(longest_run, 2);
    balance_state_free(&s);
}

Test(balance, round_robin_equal_weights_rotate)
{
    static const unsigned weights[] = { 1, 1, 1 };
    struct cfg_backend b[3];
    balt_backends(b, weights, 3);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 3), 0);
    for (int i = 0; i < 9; i++)
        cr_expect_eq(balance_pick(BALANCE_ROUND_ROBIN, &s, b, 3, NULL, NULL, 0), i % 3);
    balance_state_free(&s);
}

Test(balance, round_robin_skips_down_and_full)
{
    static const unsigned weights[] = { 1, 2, 1, 1 };
    struct cfg_backend b[4];
    balt_backends(b, weights, 4);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 4), 0);
    bool up[4] = { true, true, false, true };
    uint32_t outstanding[4] = { 0, 0, 0, 8 };          /* backend 3 is at max_outstanding */
    unsigned count[4] = { 0 };
    for (int i = 0; i < 300; i++) {
        int k = balance_pick(BALANCE_ROUND_ROBIN, &s, b, 4, outstanding, up, 8);
        cr_assert(k >= 0);
        count[k]++;
    }
    cr_expect_eq(count[0], 100);
    cr_expect_eq(count[1], 200);
    cr_expect_eq(count[2], 0, "down");
    cr_expect_eq(count[3], 0, "full");

    /* back up and below the limit: it gets its share again */
    up[2] = true;
    outstanding[3] = 7;
    memset(count, 0, sizeof count);
    for (int i = 0; i < 500; i++)
        count[balance_pick(BALANCE_ROUND_ROBIN, &s, b, 4, outstanding, up, 8)]++;
    cr_expect_geq(count[2], 95);
    cr_expect_geq(count[3], 95);
    balance_state_free(&s);
}

Test(balance, none_available)
{
    static const unsigned weights[] = { 1, 3 };
    struct cfg_backend b[2];
    balt_backends(b, weights, 2);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 2), 0);
    uint32_t outstanding[2] = { 4, 5 };
    bool up[2] = { false, false };
    bool half[2] = { false, true };
    for (int kind = BALANCE_ROUND_ROBIN; kind <= BALANCE_LEAST_OUTSTANDING; kind++) {
        cr_expect_eq(balance_pick((enum balance_kind)kind, &s, b, 2, outstanding, NULL, 4), -1,
                     "all at max_outstanding");
        cr_expect_eq(balance_pick((enum balance_kind)kind, &s, b, 2, NULL, up, 4), -1, "all down");
        cr_expect_eq(balance_pick((enum balance_kind)kind, &s, b, 2, outstanding, half, 4), -1,
                     "one down, one full");
        cr_expect_eq(balance_pick((enum balance_kind)kind, &s, b, 0, NULL, NULL, 4), -1, "empty");
        cr_expect_geq(balance_pick((enum balance_kind)kind, &s, b, 2, outstanding, NULL, 0), 0,
                      "max_outstanding 0 means no limit");
    }
    balance_state_free(&s);

    struct balance_state empty;
    cr_assert_eq(balance_state_init(&empty, 0), 0);
    cr_expect_eq(balance_pick(BALANCE_ROUND_ROBIN, &empty, b, 2, NULL, NULL, 4), -1,
                 "a state made for 0 backends picks none");
    balance_state_free(&empty);
}

Test(balance, least_outstanding_picks_least_loaded)
{
    static const unsigned weights[] = { 1, 1, 1, 1 };
    struct cfg_backend b[4];
    balt_backends(b, weights, 4);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 4), 0);
    uint32_t outstanding[4] = { 5, 2, 7, 3 };
    for (int i = 0; i < 5; i++)
        cr_expect_eq(balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 4, outstanding, NULL, 64), 1);

    bool up[4] = { true, false, true, true };
    cr_expect_eq(balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 4, outstanding, up, 64), 3,
                 "the least loaded is down: next least");
    outstanding[3] = 6;
    cr_expect_eq(balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 4, outstanding, up, 6), 0,
                 "3 is full at max_outstanding 6, 2 is over it: 0 is left");
    cr_expect_eq(balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 4, outstanding, up, 5), -1,
                 "every backend that is up is at max_outstanding");
    balance_state_free(&s);
}

Test(balance, least_outstanding_respects_weight)
{
    static const unsigned weights[] = { 1, 4 };
    struct cfg_backend b[2];
    balt_backends(b, weights, 2);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 2), 0);
    uint32_t outstanding[2] = { 0, 0 };
    /* simulate requests that never finish: picks follow the 1:4 ratio */
    for (int i = 0; i < 100; i++) {
        int k = balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 2, outstanding, NULL, 1000);
        cr_assert(k >= 0);
        outstanding[k]++;
    }
    cr_expect_eq(outstanding[0], 20);
    cr_expect_eq(outstanding[1], 80);
    balance_state_free(&s);
}

Test(balance, least_outstanding_spreads_ties)
{
    static const unsigned weights[] = { 1, 1, 1, 1, 1 };
    struct cfg_backend b[5];
    balt_backends(b, weights, 5);
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 5), 0);
    uint32_t outstanding[5] = { 3, 3, 9, 3, 3 };
    unsigned count[5] = { 0 };
    /* load reported stays equal (requests finish between picks): ties must rotate */
    for (int i = 0; i < 400; i++)
        count[balance_pick(BALANCE_LEAST_OUTSTANDING, &s, b, 5, outstanding, NULL, 64)]++;
    cr_expect_eq(count[0], 100);
    cr_expect_eq(count[1], 100);
    cr_expect_eq(count[2], 0);
    cr_expect_eq(count[3], 100);
    cr_expect_eq(count[4], 100);
    balance_state_free(&s);
}
