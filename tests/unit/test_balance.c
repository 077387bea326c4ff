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

/* ---- split_pick: a route's weighted split between pools ---- */

static unsigned split_setup(struct cfg_split *sp, const unsigned *weights, unsigned n)
{
    unsigned total = 0;
    memset(sp, 0, n * sizeof *sp);
    for (unsigned i = 0; i < n; i++) {
        sp[i].pool = 10 + i;        /* split_pick returns the index, never the pool */
        sp[i].weight = weights[i];
        total += weights[i];
    }
    return total;
}

/* Picks `count` times from a fresh state into seq[]; checks every pick is in range. */
static void split_run(const unsigned *weights, unsigned n, unsigned *seq, unsigned count)
{
    struct cfg_split sp[CFG_MAX_SPLIT];
    int64_t current[CFG_MAX_SPLIT] = { 0 };
    split_setup(sp, weights, n);
    for (unsigned i = 0; i < count; i++) {
        seq[i] = split_pick(current, sp, n);
        cr_assert_lt(seq[i], n);
    }
}

/* Every window of `total` consecutive picks holds each entry exactly its weight. */
static void split_check_windows(const unsigned *weights, unsigned n, const unsigned *seq,
                                unsigned count, unsigned total)
{
    unsigned have[CFG_MAX_SPLIT] = { 0 };
    for (unsigned i = 0; i < count; i++) {
        have[seq[i]]++;
        if (i >= total)
            have[seq[i - total]]--;
        if (i + 1 >= total)
            for (unsigned k = 0; k < n; k++)
                cr_assert_eq(have[k], weights[k], "weights[%u]=%u: %u picks in the window "
                             "ending at %u", k, weights[k], have[k], i);
    }
}

Test(split, any_window_of_sum_weights_matches_the_weights)
{
    static const struct { unsigned n; unsigned w[CFG_MAX_SPLIT]; } cases[] = {
        { 2, { 3, 1 } },
        { 2, { 1, 1 } },
        { 2, { 2, 3 } },
        { 3, { 5, 1, 1 } },
        { 4, { 5, 1, 3, 1 } },
        { 3, { 1, 1, 1 } },
        { 4, { 1, 2, 3, 4 } },
        { 3, { 97, 13, 1 } },
        { CFG_MAX_SPLIT, { 7, 3, 2, 8, 1, 1, 1, 1 } },
        { CFG_MAX_SPLIT, { 1, 1, 1, 1, 1, 1, 1, 1 } },
        { CFG_MAX_SPLIT, { 100, 200, 300, 400, 500, 600, 700, 800 } },
    };
    static unsigned seq[4 * 3600];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned total = 0;
        for (unsigned k = 0; k < cases[c].n; k++)
            total += cases[c].w[k];
        unsigned count = 4 * total;
        cr_assert_leq(count, sizeof seq / sizeof seq[0]);
        split_run(cases[c].w, cases[c].n, seq, count);
        split_check_windows(cases[c].w, cases[c].n, seq, count, total);
    }
}

Test(split, state_returns_to_zero_after_each_cycle)
{
    static const unsigned weights[] = { 7, 3, 2, 8, 1 };
    struct cfg_split sp[5];
    unsigned total = split_setup(sp, weights, 5);
    int64_t current[5] = { 0 };
    for (int cycle = 0; cycle < 5; cycle++) {
        for (unsigned i = 0; i < total; i++) {
            split_pick(current, sp, 5);
            int64_t sum = 0;
            for (int k = 0; k < 5; k++) {
                sum += current[k];
                cr_assert(current[k] > -(int64_t)total && current[k] < (int64_t)total,
                          "current[%d]=%lld", k, (long long)current[k]);
            }
            cr_assert_eq(sum, 0, "the state always sums to zero");
        }
        for (int k = 0; k < 5; k++)
            cr_assert_eq(current[k], 0, "cycle %d: current[%d]=%lld", cycle, k, (long long)current[k]);
    }
}

Test(split, picks_are_interleaved)
{
    /* nginx's smooth weighted round robin: 5:1:1 gives a a b a c a a */
    static const unsigned w511[] = { 5, 1, 1 };
    static const unsigned want511[] = { 0, 0, 1, 0, 2, 0, 0 };
    unsigned seq[3 * 7];
    split_run(w511, 3, seq, 3 * 7);
    for (unsigned i = 0; i < 3 * 7; i++)
        cr_assert_eq(seq[i], want511[i % 7], "pick %u: %u", i, seq[i]);

    /* 3:1 gives a a b a; the 1-weight entry is never picked twice in a row, and comes
     * round exactly every 4 picks */
    static const unsigned w31[] = { 3, 1 };
    static const unsigned want31[] = { 0, 0, 1, 0 };
    unsigned s31[40];
    split_run(w31, 2, s31, 40);
    for (unsigned i = 0; i < 40; i++)
        cr_assert_eq(s31[i], want31[i % 4], "pick %u: %u", i, s31[i]);

    /* weights K:1: the light entry once every K+1 picks; K:M with M <= K: the lighter
     * entry never twice in a row */
    for (unsigned heavy = 1; heavy <= 20; heavy++)
        for (unsigned light = 1; light <= heavy; light++) {
            unsigned w[2] = { heavy, light }, s[3 * 40];
            unsigned count = 3 * (heavy + light);
            split_run(w, 2, s, count);
            int last = -1;
            for (unsigned i = 0; i < count; i++) {
                if (s[i] != 1)
                    continue;
                cr_assert(last < 0 || i - (unsigned)last >= 2,
                          "%u:%u: entry 1 twice in a row at pick %u", heavy, light, i);
                if (light == 1 && last >= 0)
                    cr_assert_eq(i - (unsigned)last, heavy + 1, "%u:1 at pick %u", heavy, i);
                last = (int)i;
            }
            /* and the same with the light entry listed first */
            unsigned r[2] = { light, heavy };
            split_run(r, 2, s, count);
            for (unsigned i = 1; light < heavy && i < count; i++)
                cr_assert(!(s[i] == 0 && s[i - 1] == 0),
                          "%u:%u reversed: entry 0 twice in a row at pick %u", light, heavy, i);
        }

    /* equal weights rotate in order */
    static const unsigned w1111[] = { 1, 1, 1, 1 };
    unsigned s4[12];
    split_run(w1111, 4, s4, 12);
    for (unsigned i = 0; i < 12; i++)
        cr_assert_eq(s4[i], i % 4);
}

Test(split, single_entry_is_always_picked)
{
    static const unsigned weights[] = { 1, 5, 1000000 };
    for (size_t w = 0; w < sizeof weights / sizeof weights[0]; w++) {
        struct cfg_split sp[1];
        split_setup(sp, &weights[w], 1);
        int64_t current[1] = { 0 };
        for (int i = 0; i < 1000; i++) {
            cr_assert_eq(split_pick(current, sp, 1), 0);
            cr_assert_eq(current[0], 0, "weight %u: the state stays at zero", weights[w]);
        }
    }
}

Test(split, large_weights_do_not_overflow)
{
    /* the configuration allows 1..1000000 per entry and CFG_MAX_SPLIT entries */
    static const unsigned heavy[CFG_MAX_SPLIT] = { 1000000, 1000000, 1000000, 1000000,
                                                   1000000, 1000000, 1000000, 1000000 };
    static const unsigned mixed[4] = { 1000000, 1, 999999, 3 };
    static const struct { const unsigned *w; unsigned n; } cases[] = {
        { heavy, CFG_MAX_SPLIT }, { mixed, 4 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned n = cases[c].n;
        struct cfg_split sp[CFG_MAX_SPLIT];
        int64_t total = (int64_t)split_setup(sp, cases[c].w, n);
        int64_t current[CFG_MAX_SPLIT] = { 0 };
        unsigned count[CFG_MAX_SPLIT] = { 0 };
        unsigned first_light = 0;
        bool seen_light = false;
        for (int64_t i = 0; i < total; i++) {
            unsigned k = split_pick(current, sp, n);
            cr_assert_lt(k, n);
            count[k]++;
            if (cases[c].w[k] == 1 && !seen_light) {
                seen_light = true;
                first_light = (unsigned)i;
            }
        }
        for (unsigned k = 0; k < n; k++) {
            cr_assert_eq(count[k], cases[c].w[k], "case %zu entry %u: %u picks", c, k, count[k]);
            cr_assert_eq(current[k], 0, "case %zu: current[%u]=%lld after a cycle", c, k,
                         (long long)current[k]);
        }
        if (cases[c].w == mixed)
            /* the weight-1 entry comes up mid-cycle, not at either end */
            cr_assert(first_light > total / 4 && first_light < total - total / 4,
                      "weight 1 first picked at %u of %lld", first_light, (long long)total);
    }
}

Test(split, each_route_state_is_independent)
{
    static const unsigned weights[] = { 2, 1 };
    struct cfg_split sp[2];
    split_setup(sp, weights, 2);
    int64_t a[2] = { 0 }, b[2] = { 0 };
    unsigned seq_a[6], seq_b[6];
    for (int i = 0; i < 6; i++) {
        seq_a[i] = split_pick(a, sp, 2);
        if (i % 2 == 0)
            seq_b[i / 2] = split_pick(b, sp, 2);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(seq_b[i], seq_a[i], "state b follows its own sequence");
}
