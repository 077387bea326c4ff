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

/* ---- balance_pick_load: capacity, prefix, and the old kinds from views ---- */

/* n backends, up, weight 1, no limit, engine idle and known */
static void bv_idle(struct backend_view *v, unsigned n)
{
    memset(v, 0, n * sizeof *v);
    for (unsigned i = 0; i < n; i++) {
        v[i].up = true;
        v[i].weight = 1;
        v[i].waiting = 0;
        v[i].running = 0;
        v[i].kv_usage = 0.0f;
    }
}

static void bv_unknown(struct backend_view *b)
{
    b->waiting = BALANCE_UNKNOWN;
    b->running = BALANCE_UNKNOWN;
    b->kv_usage = -1.0f;
}

static void bst_init(struct balance_state *s, unsigned n, uint64_t seed)
{
    cr_assert_eq(balance_state_init(s, n), 0);
    cr_assert_eq(balance_state_prefix_init(s, 64), 0);
    balance_state_seed(s, seed);
}

/* a one-block prompt (the struct lives until the next call) */
static const struct prompt_blocks *pb1(uint64_t h)
{
    static uint64_t block;
    static struct prompt_blocks pb = { &block, 1 };
    block = h;
    return &pb;
}

/* a small deterministic generator for the tests' own choices */
static uint64_t tst_rng = 88172645463325252ull;
static unsigned tst_below(unsigned m)
{
    tst_rng ^= tst_rng << 13;
    tst_rng ^= tst_rng >> 7;
    tst_rng ^= tst_rng << 17;
    return (unsigned)(tst_rng % m);
}

Test(balance_load, old_kinds_pick_exactly_as_balance_pick)
{
    static const unsigned weights[] = { 3, 1, 2, 1, 5, 1 };
    enum { N = 6 };
    struct cfg_backend b[N];
    balt_backends(b, weights, N);
    for (int kind = BALANCE_ROUND_ROBIN; kind <= BALANCE_LEAST_OUTSTANDING; kind++) {
        struct balance_state sa, sb;
        bst_init(&sa, N, 1);
        bst_init(&sb, N, 2);
        uint32_t outstanding[N] = { 0 };
        bool up[N];
        struct backend_view v[N];
        bv_idle(v, N);
        for (int step = 0; step < 5000; step++) {
            unsigned max = step % 500 < 250 ? 8 : 0;
            for (unsigned i = 0; i < N; i++) {
                up[i] = tst_below(10) != 0;
                outstanding[i] = tst_below(10);
                v[i] = (struct backend_view){ .outstanding = outstanding[i], .max_outstanding = max,
                                              .weight = weights[i], .up = up[i],
                                              .waiting = (int32_t)tst_below(30) - 5,
                                              .running = (int32_t)tst_below(30) - 5,
                                              .kv_usage = (float)tst_below(100) / 100.0f };
            }
            int ka = balance_pick((enum balance_kind)kind, &sa, b, N, outstanding, up, max);
            int kb = balance_pick_load((enum balance_kind)kind, &sb, v, N, pb1(12345));
            cr_assert_eq(ka, kb, "kind %d step %d: balance_pick %d, balance_pick_load %d",
                         kind, step, ka, kb);
        }
        balance_state_free(&sa);
        balance_state_free(&sb);
    }
}

Test(balance_load, new_kinds_through_balance_pick_are_least_outstanding)
{
    static const unsigned weights[] = { 1, 1, 1, 1 };
    struct cfg_backend b[4];
    balt_backends(b, weights, 4);
    struct balance_state sl, sc;
    bst_init(&sl, 4, 1);
    bst_init(&sc, 4, 1);
    uint32_t outstanding[4] = { 3, 3, 9, 3 };
    for (int kind = BALANCE_CAPACITY; kind <= BALANCE_PREFIX; kind++)
        for (int i = 0; i < 50; i++)
            cr_assert_eq(balance_pick((enum balance_kind)kind, &sc, b, 4, outstanding, NULL, 64),
                         balance_pick(BALANCE_LEAST_OUTSTANDING, &sl, b, 4, outstanding, NULL, 64));
    balance_state_free(&sl);
    balance_state_free(&sc);
}

Test(balance_load, saturated_gets_nothing_while_another_has_room)
{
    enum { N = 3 };
    struct backend_view v[N];
    struct balance_state s;
    bst_init(&s, N, 7);
    for (int why = 0; why < 2; why++) {
        bv_idle(v, N);
        /* backend 1 is the least loaded by aigw's count, but saturated */
        v[0].outstanding = 20; v[0].running = 20; v[0].kv_usage = 0.6f;
        v[1].outstanding = 1;  v[1].running = 1;
        v[2].outstanding = 30; v[2].running = 16; v[2].waiting = 14; v[2].kv_usage = 0.85f;
        if (why == 0)
            v[1].kv_usage = 0.93f;              /* KV cache nearly full */
        else
            v[1].waiting = 17;                  /* a long queue */
        unsigned count[N] = { 0 };
        for (int i = 0; i < 1000; i++) {
            int k = balance_pick_load(BALANCE_CAPACITY, &s, v, N, NULL);
            cr_assert(k >= 0 && k < N);
            count[k]++;
        }
        cr_expect_eq(count[1], 0, "why %d: the saturated backend got %u picks", why, count[1]);
        cr_expect_gt(count[0], count[2], "why %d: 0 has more room than 2", why);

        /* every one saturated: the best score among them, and 1 has by far the least */
        v[0].kv_usage = 0.95f;
        v[2].waiting = 40;
        memset(count, 0, sizeof count);
        for (int i = 0; i < 1000; i++)
            count[balance_pick_load(BALANCE_CAPACITY, &s, v, N, NULL)]++;
        cr_expect_gt(count[1], 600, "why %d: all saturated: 1 got %u", why, count[1]);
        cr_expect_eq(count[0] + count[1] + count[2], 1000);
    }
    /* the thresholds are the state's */
    bv_idle(v, 2);
    v[0].kv_usage = 0.85f;
    v[1].kv_usage = 0.5f;
    v[1].outstanding = 10;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 0, "0.85 is not saturated");
    s.tune.kv_saturated = 0.8f;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1, "0.85 > 0.8: saturated");
    balance_state_free(&s);
}

Test(balance_load, max_outstanding_and_down_are_never_picked)
{
    enum { N = 4 };
    struct backend_view v[N];
    struct balance_state s;
    bst_init(&s, N, 3);
    bv_idle(v, N);
    v[0].outstanding = 8; v[0].max_outstanding = 8;      /* full: the only known-idle engine */
    v[1].outstanding = 0; v[1].up = false;               /* down: the least loaded */
    v[2].outstanding = 30; v[2].waiting = 5; v[2].kv_usage = 0.8f;
    v[3].outstanding = 31; v[3].waiting = 5; v[3].kv_usage = 0.8f; v[3].max_outstanding = 40;
    for (int kind = BALANCE_ROUND_ROBIN; kind <= BALANCE_PREFIX; kind++) {
        unsigned count[N] = { 0 };
        for (uint64_t i = 0; i < 2000; i++) {
            int k = balance_pick_load((enum balance_kind)kind, &s, v, N, pb1(i * 0x9e3779b97f4a7c15ull));
            cr_assert(k >= 0 && k < N);
            count[k]++;
        }
        cr_expect_eq(count[0], 0, "kind %d: at max_outstanding", kind);
        cr_expect_eq(count[1], 0, "kind %d: down", kind);
        cr_expect_gt(count[2], 0, "kind %d", kind);
    }
    /* nothing left: -1 from every kind */
    v[2].up = false;
    v[3].outstanding = 40;
    for (int kind = BALANCE_ROUND_ROBIN; kind <= BALANCE_PREFIX; kind++) {
        cr_expect_eq(balance_pick_load((enum balance_kind)kind, &s, v, N, NULL), -1, "kind %d", kind);
        cr_expect_eq(balance_pick_load((enum balance_kind)kind, &s, v, N, pb1(42)), -1, "kind %d", kind);
        cr_expect_eq(balance_pick_load((enum balance_kind)kind, &s, v, 0, pb1(42)), -1, "kind %d", kind);
    }
    /* max_outstanding 0: no limit */
    v[3].max_outstanding = 0;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, N, NULL), 3);
    cr_expect_eq(balance_pick_load(BALANCE_PREFIX, &s, v, N, pb1(42)), 3);
    balance_state_free(&s);

    struct balance_state empty;
    bst_init(&empty, 0, 1);
    bv_idle(v, N);
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &empty, v, N, NULL), -1,
                 "a state made for 0 backends picks none");
    balance_state_free(&empty);
}

/* The rule: an unknown waiting or kv_usage is taken as the worst known value of that
 * field among the candidates (0 if none is known); on an equal score the backend
 * with fewer unknown fields wins. So unknown load is never better than the worst
 * known load, and never wins a tie against a known one. */
Test(balance_load, unknown_metrics_are_not_idle)
{
    struct backend_view v[3];
    struct balance_state s;
    bst_init(&s, 3, 11);

    /* same outstanding; 0's metrics are stale, 1 is known idle */
    bv_idle(v, 2);
    v[0].outstanding = v[1].outstanding = 3;
    v[1].running = 3;
    bv_unknown(&v[0]);
    for (int i = 0; i < 100; i++)
        cr_assert_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);
    /* only kv unknown is enough to lose the tie */
    bv_idle(v, 2);
    v[0].kv_usage = __builtin_nanf("");
    for (int i = 0; i < 100; i++)
        cr_assert_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);

    /* the unknown one is assumed as loaded as the worst known one (queue 6,
     * 10 running, KV 0.8): it loses to a known idle one, and ties with (so loses
     * to) the busy one itself. Pairs, as power of two choices compares them. */
    bv_idle(v, 3);
    bv_unknown(&v[0]);
    v[1].waiting = 6; v[1].running = 10; v[1].kv_usage = 0.8f; v[1].outstanding = 4;
    v[2].outstanding = 4; v[2].running = 4;
    v[0].outstanding = 4;
    unsigned count[3] = { 0 };
    v[1].max_outstanding = 4;           /* full: not a candidate, its metrics still count */
    for (int i = 0; i < 100; i++)
        count[balance_pick_load(BALANCE_CAPACITY, &s, v, 3, NULL)]++;
    cr_expect_eq(count[2], 100, "known idle always wins: %u %u %u", count[0], count[1], count[2]);
    v[1].max_outstanding = 0;
    v[2].up = false;
    memset(count, 0, sizeof count);
    for (int i = 0; i < 100; i++)
        count[balance_pick_load(BALANCE_CAPACITY, &s, v, 3, NULL)]++;
    cr_expect_eq(count[1], 100, "an equal score goes to the known one: %u %u", count[0], count[1]);

    /* a stale backend is saturated when the worst known one is */
    bv_idle(v, 3);
    bv_unknown(&v[0]);
    v[1].kv_usage = 0.95f;
    v[2].kv_usage = 0.5f; v[2].outstanding = 20; v[2].running = 20;
    memset(count, 0, sizeof count);
    for (int i = 0; i < 300; i++)
        count[balance_pick_load(BALANCE_CAPACITY, &s, v, 3, NULL)]++;
    cr_expect_eq(count[2], 300, "0 (stale) and 1 count as saturated: %u %u %u",
                 count[0], count[1], count[2]);

    /* nobody knows anything (a pool without metrics): weighted least outstanding */
    bv_idle(v, 3);
    for (int i = 0; i < 3; i++)
        bv_unknown(&v[i]);
    v[0].outstanding = 5; v[1].outstanding = 2; v[2].outstanding = 4;
    for (int i = 0; i < 100; i++)
        cr_assert_neq(balance_pick_load(BALANCE_CAPACITY, &s, v, 3, NULL), 0);
    balance_state_free(&s);
}

Test(balance_load, kv_above_the_knee_costs_more)
{
    struct backend_view v[2];
    struct balance_state s;
    bst_init(&s, 2, 5);
    bv_idle(v, 2);
    /* 0: 4 in flight, KV 0.85 (score 5 × (1 + 4 × 0.5) = 15); 1: 10 in flight, KV 0.5 (11) */
    v[0].outstanding = 4; v[0].running = 4; v[0].kv_usage = 0.85f;
    v[1].outstanding = 10; v[1].running = 10; v[1].kv_usage = 0.5f;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);
    v[0].kv_usage = 0.7f;           /* at the knee: no penalty, 5 < 11 */
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 0);
    /* waiting costs more: 0 has 4 in flight but all queued (4 + 2×4 + 1 = 13), 1
     * has 7 running (8) */
    bv_idle(v, 2);
    v[0].outstanding = 4; v[0].waiting = 4;
    v[1].outstanding = 7; v[1].running = 7;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);
    /* another client's load shows in running + waiting even when aigw sends nothing */
    bv_idle(v, 2);
    v[0].outstanding = 0; v[0].running = 12;
    v[1].outstanding = 5; v[1].running = 5;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);
    balance_state_free(&s);
}

Test(balance_load, equal_load_with_two_is_deterministic_and_alternates)
{
    struct backend_view v[2];
    struct balance_state a, b;
    bst_init(&a, 2, 1);
    bst_init(&b, 2, 999);
    bv_idle(v, 2);
    for (int i = 0; i < 20; i++) {
        int ka = balance_pick_load(BALANCE_CAPACITY, &a, v, 2, NULL);
        cr_assert_eq(ka, i % 2, "equal load: ties rotate");
        cr_assert_eq(balance_pick_load(BALANCE_CAPACITY, &b, v, 2, NULL), ka,
                     "n <= 2: no randomness, the seed does not matter");
    }
    balance_state_free(&a);
    balance_state_free(&b);
}

Test(balance_load, seeded_sequences_repeat)
{
    enum { N = 8 };
    struct backend_view v[N];
    bv_idle(v, N);
    struct balance_state a, b, c;
    bst_init(&a, N, 42);
    bst_init(&b, N, 42);
    bst_init(&c, N, 43);
    unsigned same_c = 0;
    for (int i = 0; i < 1000; i++) {
        int ka = balance_pick_load(BALANCE_CAPACITY, &a, v, N, NULL);
        cr_assert_eq(balance_pick_load(BALANCE_CAPACITY, &b, v, N, NULL), ka);
        same_c += balance_pick_load(BALANCE_CAPACITY, &c, v, N, NULL) == ka;
        v[ka].outstanding++;
        if (i % 3 == 0)
            v[tst_below(N)].outstanding /= 2;
    }
    cr_expect_lt(same_c, 900, "another seed draws other pairs (%u of 1000 equal)", same_c);
    balance_state_free(&a);
    balance_state_free(&b);
    balance_state_free(&c);
}

Test(balance_load, weights_are_respected_without_metrics)
{
    static const unsigned weights[] = { 1, 2, 4, 1 };
    enum { N = 4 };
    struct backend_view v[N];
    bv_idle(v, N);
    for (unsigned i = 0; i < N; i++) {
        v[i].weight = weights[i];
        bv_unknown(&v[i]);
    }
    struct balance_state s;
    bst_init(&s, N, 17);
    /* requests that never finish: the picks follow the weights */
    for (int i = 0; i < 8000; i++) {
        int k = balance_pick_load(BALANCE_CAPACITY, &s, v, N, NULL);
        cr_assert(k >= 0);
        v[k].outstanding++;
    }
    for (unsigned i = 0; i < N; i++)
        cr_expect(v[i].outstanding >= weights[i] * 1000 * 95 / 100 &&
                  v[i].outstanding <= weights[i] * 1000 * 105 / 100,
                  "weight %u: %u of 8000", weights[i], v[i].outstanding);
    /* idle fleet: the heavier backend first */
    bv_idle(v, 2);
    v[1].weight = 3;
    cr_expect_eq(balance_pick_load(BALANCE_CAPACITY, &s, v, 2, NULL), 1);
    balance_state_free(&s);
}

/* A scripted fleet of three engines with unequal capacity (at most 4, 8 and 16
 * sequences at once, each request 10 ticks of generation, the rest wait FIFO, KV
 * use 0.8 × running/max), load at 80% of the fleet's capacity, metrics scraped
 * every 5 ticks (so up to half a request old) while outstanding is live. */
struct sim_gpu {
    unsigned cap, running, waiting;
    unsigned rem[16];
    int32_t m_waiting, m_running;
    float m_kv;
};

struct sim_result {
    unsigned picks[3];
    unsigned max_waiting, final_waiting;
    double mean_waiting;        /* requests waiting in all engines, averaged over ticks */
};

static struct sim_result sim_run(enum balance_kind kind, bool weight_by_capacity)
{
    enum { N = 3, T = 10, TICKS = 20000 };
    struct sim_gpu g[N] = { { .cap = 4 }, { .cap = 8 }, { .cap = 16 } };
    struct backend_view v[N];
    struct balance_state s;
    struct sim_result res;
    memset(&res, 0, sizeof res);
    bst_init(&s, N, 2024);
    static const unsigned arrivals[4] = { 2, 2, 2, 3 };   /* 2.25/tick: 80% of 2.8 */
    double waiting_sum = 0;
    for (unsigned t = 0; t < TICKS; t++) {
        for (unsigned i = 0; i < N; i++) {
            for (unsigned r = 0; r < g[i].running;) {
                if (--g[i].rem[r] > 0) {
                    r++;
                } else if (g[i].waiting) {
                    g[i].waiting--;
                    g[i].rem[r++] = T;
                } else {
                    g[i].rem[r] = g[i].rem[--g[i].running];
                }
            }
            if (t % 5 == 0) {
                g[i].m_waiting = (int32_t)g[i].waiting;
                g[i].m_running = (int32_t)g[i].running;
                g[i].m_kv = 0.8f * (float)g[i].running / (float)g[i].cap;
            }
        }
        for (unsigned a = 0; a < arrivals[t % 4]; a++) {
            for (unsigned i = 0; i < N; i++)
                v[i] = (struct backend_view){ .outstanding = g[i].running + g[i].waiting,
                                              .weight = weight_by_capacity ? g[i].cap : 1,
                                              .up = true, .waiting = g[i].m_waiting,
                                              .running = g[i].m_running, .kv_usage = g[i].m_kv };
            int k = balance_pick_load(kind, &s, v, N, NULL);
            cr_assert(k >= 0);
            res.picks[k]++;
            if (g[k].running < g[k].cap)
                g[k].rem[g[k].running++] = T;
            else
                g[k].waiting++;
        }
        for (unsigned i = 0; i < N; i++) {
            waiting_sum += g[i].waiting;
            if (g[i].waiting > res.max_waiting)
                res.max_waiting = g[i].waiting;
        }
    }
    res.final_waiting = g[0].waiting + g[1].waiting + g[2].waiting;
    res.mean_waiting = waiting_sum / TICKS;
    balance_state_free(&s);
    return res;
}

Test(balance_load, power_of_two_spreads_by_capacity)
{
    static const unsigned cap[3] = { 4, 8, 16 };
    /* weights say the capacity: the picks follow it and queues stay near empty */
    struct sim_result r = sim_run(BALANCE_CAPACITY, true);
    unsigned total = r.picks[0] + r.picks[1] + r.picks[2];
    for (int i = 0; i < 3; i++) {
        double share = (double)r.picks[i] / total, want = cap[i] / 28.0;
        cr_expect(share > want * 0.85 && share < want * 1.15, "weighted: engine %d (max %u "
                  "running): %.3f of picks, capacity share %.3f", i, cap[i], share, want);
    }
    cr_expect_lt(r.mean_waiting, 1.0, "weighted: %.2f waiting on average", r.mean_waiting);
    cr_expect_leq(r.max_waiting, 8, "weighted: longest queue %u", r.max_waiting);

    /* equal weights: only the engines' metrics tell the capacities apart. The small
     * engine is kept at what it can serve (at most 0.4/tick of 2.25: 17.8%), not a
     * third, and the queues stay short */
    r = sim_run(BALANCE_CAPACITY, false);
    total = r.picks[0] + r.picks[1] + r.picks[2];
    cr_expect_leq((double)r.picks[0] / total, 0.4 / 2.25 * 1.02, "engine 0: %u of %u",
                  r.picks[0], total);
    cr_expect_gt(r.picks[2], r.picks[1]);
    cr_expect_gt(r.picks[1], r.picks[0]);
    cr_expect_lt(r.mean_waiting, 4.0, "unweighted: %.2f waiting on average", r.mean_waiting);
    cr_expect_leq(r.max_waiting, 12, "unweighted: longest queue %u", r.max_waiting);
    cr_expect_leq(r.final_waiting, 12);

    /* least outstanding sees only aigw's own counts: several times the queueing */
    struct sim_result lo = sim_run(BALANCE_LEAST_OUTSTANDING, false);
    cr_expect_gt(lo.mean_waiting, 2 * r.mean_waiting, "least_outstanding %.2f, capacity %.2f",
                 lo.mean_waiting, r.mean_waiting);
    /* and round robin drowns the small engine */
    struct sim_result rr = sim_run(BALANCE_ROUND_ROBIN, false);
    cr_expect_gt(rr.final_waiting, 1000, "round robin: %u waiting at the end", rr.final_waiting);
}

/* ---- prefix: the scorer is in test_prefix_score.c ---- */

Test(balance_load, prefix_without_a_prompt_is_capacity)
{
    enum { N = 5 };
    struct backend_view v[N];
    bv_idle(v, N);
    for (unsigned i = 0; i < N; i++)
        v[i].outstanding = v[i].running = 6;
    struct balance_state a, b;
    bst_init(&a, N, 77);
    bst_init(&b, N, 77);
    v[2].outstanding = 1;
    v[4].waiting = 3;
    struct prompt_blocks none = { NULL, 0 };
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &a, v, N, i & 1 ? &none : NULL),
                     balance_pick_load(BALANCE_CAPACITY, &b, v, N, NULL));
        cr_assert_eq(a.last_reason, BALANCE_REASON_LOAD);
    }
    balance_state_free(&a);
    balance_state_free(&b);
}
