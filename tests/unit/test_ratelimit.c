#include <criterion/criterion.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/admission.h"
#include "policy/ratelimit.h"

#define RLT_SEC 1000000000ULL
#define RLT_T0 (5000 * RLT_SEC)         /* an arbitrary monotonic reading */
#define RLT_MIDNIGHT INT64_C(1718064000) /* 2024-06-11 00:00:00 UTC */
#define RLT_NOON (RLT_MIDNIGHT + 12 * 3600)

static struct rl_global *rlt_global(uint64_t rpm, uint64_t tpm, uint64_t burst_ms, uint64_t daily,
                                    unsigned shards)
{
    struct rl_global *g = aligned_alloc(64, sizeof *g);
    cr_assert_not_null(g);
    struct rl_limits lim = { .rpm = rpm, .tpm = tpm, .burst_ms = burst_ms, .daily_tokens = daily };
    rl_global_init(g, &lim, shards, RLT_T0);
    return g;
}

/* Admits cost-sized requests until one is refused; returns how many passed. */
static unsigned rlt_drain(struct rl_global *g, struct rl_local *l, uint64_t cost, uint64_t now_ns,
                          int64_t unix_s, struct rl_verdict *last)
{
    unsigned n = 0;
    while (n < 1000000 && rl_admit(g, l, cost, now_ns, unix_s, last))
        n++;
    return n;
}

Test(ratelimit, requests_burst_refill_and_retry_after)
{
    struct rl_global *g = rlt_global(60, 0, 60000, 0, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;

    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0, RLT_NOON, &v), 60, "a full bucket holds a minute's allowance");
    cr_expect_eq(v.limit, RL_REQUESTS);
    cr_expect_not(v.too_large);
    cr_expect_eq(v.retry_after_s, 1);
    cr_expect_str_eq(rl_limit_name(v.limit), "requests");

    /* half a second later nothing has refilled; retry-after rounds up */
    cr_expect_not(rl_admit(g, &l, 0, RLT_T0 + RLT_SEC / 2, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 1);
    /* one per second */
    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0 + RLT_SEC, RLT_NOON, &v), 1);
    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0 + 31 * RLT_SEC, RLT_NOON, &v), 30);
    /* a long idle time refills no more than the bucket */
    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v), 60);
    free(g);

    g = rlt_global(1, 0, 0, 0, 1);
    rl_local_init(&l);
    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0, RLT_NOON, &v), 1);
    cr_expect_eq(v.retry_after_s, 60);
    cr_expect_not(rl_admit(g, &l, 0, RLT_T0 + 59 * RLT_SEC + RLT_SEC / 2, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 1);
    cr_expect(rl_admit(g, &l, 0, RLT_T0 + 60 * RLT_SEC, RLT_NOON, &v));
    free(g);
}

Test(ratelimit, burst_is_bucket_size_as_refill_time)
{
    struct rl_verdict v;
    struct rl_local l;

    /* 600 tokens/min with a 10 s burst: a bucket of 100, refilling 10/s */
    struct rl_global *g = rlt_global(0, 600, 10000, 0, 1);
    rl_local_init(&l);
    cr_expect_eq(rlt_drain(g, &l, 10, RLT_T0, RLT_NOON, &v), 10);
    cr_expect_eq(v.limit, RL_TOKENS);
    cr_expect_eq(v.retry_after_s, 1);
    cr_expect_eq(rlt_drain(g, &l, 10, RLT_T0 + 5 * RLT_SEC, RLT_NOON, &v), 5);
    /* asking for more than the bucket can ever hold */
    cr_expect_not(rl_admit(g, &l, 101, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_TOKENS);
    cr_expect(v.too_large);
    cr_expect(rl_admit(g, &l, 100, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v));
    free(g);

    /* 60 rpm with a 2-minute burst holds 120 */
    g = rlt_global(60, 0, 120000, 0, 1);
    rl_local_init(&l);
    cr_expect_eq(rlt_drain(g, &l, 0, RLT_T0, RLT_NOON, &v), 120);
    free(g);
}

Test(ratelimit, tokens_retry_after_counts_the_deficit)
{
    struct rl_global *g = rlt_global(0, 1000, 60000, 0, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_expect(rl_admit(g, &l, 400, RLT_T0, RLT_NOON, &v));
    cr_expect(rl_admit(g, &l, 400, RLT_T0, RLT_NOON, &v));
    cr_expect_not(rl_admit(g, &l, 400, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_TOKENS);
    cr_expect_eq(v.retry_after_s, 12, "200 tokens missing at 1000/min: 12 s, got %u", v.retry_after_s);
    cr_expect_not(rl_admit(g, &l, 400, RLT_T0 + 11 * RLT_SEC, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 1);
    cr_expect(rl_admit(g, &l, 400, RLT_T0 + 12 * RLT_SEC, RLT_NOON, &v));
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0 + 12 * RLT_SEC, RLT_NOON, &v));
    free(g);
}

Test(ratelimit, daily_quota_resets_at_utc_midnight)
{
    struct rl_global *g = rlt_global(0, 0, 0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    int64_t before = RLT_MIDNIGHT - 10;

    cr_expect(rl_admit(g, &l, 600, RLT_T0, before, &v));
    cr_expect(rl_admit(g, &l, 400, RLT_T0, before, &v));
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0, before, &v));
    cr_expect_eq(v.limit, RL_QUOTA);
    cr_expect_eq(v.retry_after_s, 10, "seconds until 00:00 UTC: %u", v.retry_after_s);
    cr_expect_str_eq(rl_limit_name(v.limit), "quota");
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0 + 9 * RLT_SEC, RLT_MIDNIGHT - 1, &v));
    cr_expect_eq(v.retry_after_s, 1);

    /* the monotonic clock says nothing about the day: only now_unix_s does */
    cr_expect(rl_admit(g, &l, 1000, RLT_T0 + 10 * RLT_SEC, RLT_MIDNIGHT, &v));
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0 + 11 * RLT_SEC, RLT_MIDNIGHT + 1, &v));
    cr_expect_eq(v.retry_after_s, 86399);

    /* more than a whole day's quota can never pass */
    cr_expect_not(rl_admit(g, &l, 1001, RLT_T0, RLT_MIDNIGHT + 86400, &v));
    cr_expect(v.too_large);
    free(g);
}

Test(ratelimit, settle_across_midnight_does_not_touch_the_new_day)
{
    struct rl_global *g = rlt_global(0, 0, 0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_expect(rl_admit(g, &l, 500, RLT_T0, RLT_MIDNIGHT - 5, &v));
    struct rl_ticket t = v.ticket;
    cr_expect(rl_admit(g, &l, 1, RLT_T0, RLT_MIDNIGHT + 5, &v), "a new day");
    rl_settle(g, &l, &t, 0, RLT_T0, RLT_MIDNIGHT + 6);
    cr_expect_eq(rlt_drain(g, &l, 1, RLT_T0, RLT_MIDNIGHT + 7, &v), 999,
                 "yesterday's refund does not raise today's quota");
    free(g);
}

Test(ratelimit, settlement_returns_unused_reservation)
{
    struct rl_global *g = rlt_global(0, 2000, 60000, 10000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    struct rl_status st;

    cr_assert(rl_admit(g, &l, 1000, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.ticket.tokens, 1000);
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.remaining_tokens, 1000);
    cr_expect_eq(st.remaining_daily, 9000);

    rl_settle(g, &l, &v.ticket, 50, RLT_T0, RLT_NOON);   /* used 50: 950 come back */
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.remaining_tokens, 1950);
    cr_expect_eq(st.remaining_daily, 9950);
    /* and the next admissions see them */
    cr_expect(rl_admit(g, &l, 1950, RLT_T0, RLT_NOON, &v));
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_TOKENS);
    free(g);
}

Test(ratelimit, settlement_over_reservation_empties_the_bucket_and_no_further)
{
    struct rl_global *g = rlt_global(0, 1000, 60000, 3000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    struct rl_status st;

    cr_assert(rl_admit(g, &l, 600, RLT_T0, RLT_NOON, &v));
    rl_settle(g, &l, &v.ticket, 1500, RLT_T0, RLT_NOON);  /* the backend went over */
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.remaining_tokens, 0);
    cr_expect_eq(st.remaining_daily, 1500, "the quota counts all of it");
    cr_expect_eq(st.reset_tokens_ms, 60000, "empty, not in debt: one window to full");
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 1, "one token at 1000/min: 60 ms, got %u", v.retry_after_s);
    cr_expect(rl_admit(g, &l, 1, RLT_T0 + 60 * RLT_SEC / 1000, RLT_NOON, &v));
    free(g);
}

/* Absurd usage from a backend: the bucket is emptied, but Retry-After and the
 * reset header stay within the bucket's window (burst), and a full bucket's
 * worth is admitted again one window later. */
Test(ratelimit, absurd_usage_cannot_lock_a_key_out_beyond_the_window)
{
    static const uint64_t absurd[] = { UINT64_MAX, UINT64_C(1) << 63, (UINT64_C(1) << 40) + 1,
                                       1000000000000ULL };
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        for (unsigned burst_s = 10; burst_s <= 3600; burst_s *= 360) {
            struct rl_global *g = rlt_global(60, 6000, burst_s * 1000ULL, 0, 2);
            struct rl_local a, b;
            rl_local_init(&a);
            rl_local_init(&b);
            struct rl_verdict v;
            struct rl_status st;
            uint64_t cap = (uint64_t)g->tok.capacity;
            cr_assert(rl_admit(g, &a, 100, RLT_T0, RLT_NOON, &v));
            rl_settle(g, &a, &v.ticket, absurd[i], RLT_T0, RLT_NOON);
            rl_status(g, &b, RLT_T0, RLT_NOON, &st);
            cr_expect_leq(st.reset_tokens_ms, burst_s * 1000ULL, "usage %llu, burst %us: reset %llu ms",
                          (unsigned long long)absurd[i], burst_s, (unsigned long long)st.reset_tokens_ms);
            cr_expect_not(rl_admit(g, &b, cap, RLT_T0, RLT_NOON, &v));
            cr_expect_eq(v.limit, RL_TOKENS);
            cr_expect(!v.too_large);
            cr_expect(v.retry_after_s >= 1 && v.retry_after_s <= burst_s,
                      "usage %llu, burst %us: Retry-After %u", (unsigned long long)absurd[i], burst_s,
                      v.retry_after_s);
            uint64_t later = RLT_T0 + (uint64_t)v.retry_after_s * RLT_SEC;
            cr_expect(rl_admit(g, &b, cap, later, RLT_NOON, &v), "usage %llu, burst %us: admitted after %u s",
                      (unsigned long long)absurd[i], burst_s, v.retry_after_s);
            free(g);
        }
    }
}

static bool rlt_status_eq(const struct rl_status *a, const struct rl_status *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

Test(ratelimit, denial_takes_nothing)
{
    struct rl_verdict v;
    struct rl_local l;
    struct rl_status before, after;

    /* tokens refuse after requests said yes: the request is given back */
    struct rl_global *g = rlt_global(10, 1000, 60000, 100000, 1);
    rl_local_init(&l);
    cr_assert(rl_admit(g, &l, 900, RLT_T0, RLT_NOON, &v));
    rl_status(g, &l, RLT_T0, RLT_NOON, &before);
    cr_expect_eq(before.remaining_requests, 9);
    cr_expect_eq(before.remaining_tokens, 100);
    cr_expect_not(rl_admit(g, &l, 200, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_TOKENS);
    rl_status(g, &l, RLT_T0, RLT_NOON, &after);
    cr_expect(rlt_status_eq(&before, &after), "requests %lu -> %lu, daily %lu -> %lu",
              (unsigned long)before.remaining_requests, (unsigned long)after.remaining_requests,
              (unsigned long)before.remaining_daily, (unsigned long)after.remaining_daily);
    cr_expect_eq(rlt_drain(g, &l, 100, RLT_T0, RLT_NOON, &v), 1);
    free(g);

    /* the quota refuses after both buckets said yes: both are given back */
    g = rlt_global(10, 100000, 60000, 1000, 1);
    rl_local_init(&l);
    cr_assert(rl_admit(g, &l, 900, RLT_T0, RLT_NOON, &v));
    rl_status(g, &l, RLT_T0, RLT_NOON, &before);
    cr_expect_not(rl_admit(g, &l, 200, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_QUOTA);
    rl_status(g, &l, RLT_T0, RLT_NOON, &after);
    cr_expect(rlt_status_eq(&before, &after), "requests %lu -> %lu, tokens %lu -> %lu",
              (unsigned long)before.remaining_requests, (unsigned long)after.remaining_requests,
              (unsigned long)before.remaining_tokens, (unsigned long)after.remaining_tokens);
    cr_expect_eq(rlt_drain(g, &l, 1, RLT_T0, RLT_NOON, &v), 9, "9 requests left, 100 quota tokens");
    free(g);
}

Test(ratelimit, unlimited_dimensions_are_skipped)
{
    struct rl_global *g = rlt_global(0, 0, 0, 0, 4);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    for (int i = 0; i < 10000; i++)
        cr_assert(rl_admit(g, &l, UINT64_MAX, RLT_T0, RLT_NOON, &v));
    struct rl_status st;
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.limit_requests, 0);
    cr_expect_eq(st.limit_tokens, 0);
    cr_expect_eq(st.limit_daily, 0);
    char buf[RL_HEADERS_MAX];
    cr_expect_eq(rl_headers_write(buf, sizeof buf, &st), 0);
    free(g);
}

Test(ratelimit, reset_duration_format)
{
    static const struct { uint64_t ms; const char *s; } cases[] = {
        { 0, "0s" }, { 1, "1ms" }, { 20, "20ms" }, { 999, "999ms" }, { 1000, "1s" },
        { 1500, "1.5s" }, { 1020, "1.02s" }, { 1001, "1.001s" }, { 59999, "59.999s" },
        { 60000, "1m0s" }, { 360000, "6m0s" }, { 361500, "6m1.5s" }, { 3600000, "1h0m0s" },
        { 3723004, "1h2m3.004s" }, { 86400000, "24h0m0s" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        size_t n = rl_format_duration(buf, sizeof buf, cases[i].ms);
        cr_expect_str_eq(buf, cases[i].s, "%lu ms", (unsigned long)cases[i].ms);
        cr_expect_eq(n, strlen(cases[i].s));
    }
    char small[4] = "xyz";
    cr_expect_eq(rl_format_duration(small, sizeof small, 360000), 4);
    cr_expect_str_eq(small, "xyz", "too small a buffer is left alone");
}

Test(ratelimit, status_headers)
{
    struct rl_global *g = rlt_global(60, 1000, 60000, 0, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_assert(rl_admit(g, &l, 100, RLT_T0, RLT_NOON, &v));
    struct rl_status st;
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    char buf[RL_HEADERS_MAX];
    size_t n = rl_headers_write(buf, sizeof buf, &st);
    const char *want =
        "x-ratelimit-limit-requests: 60\r\n"
        "x-ratelimit-remaining-requests: 59\r\n"
        "x-ratelimit-reset-requests: 1s\r\n"
        "x-ratelimit-limit-tokens: 1000\r\n"
        "x-ratelimit-remaining-tokens: 900\r\n"
        "x-ratelimit-reset-tokens: 6s\r\n";
    cr_expect_str_eq(buf, want);
    cr_expect_eq(n, strlen(want));
    /* half a second on, the reset counts down */
    rl_status(g, &l, RLT_T0 + RLT_SEC / 2, RLT_NOON, &st);
    cr_expect_eq(st.reset_requests_ms, 500);
    cr_expect_eq(st.reset_tokens_ms, 5500);
    cr_expect_eq(rl_headers_write(buf, 50, &st), 0, "too small a buffer");
    free(g);
}

Test(ratelimit, leases_outliving_a_refill_stay_within_bound)
{
    /* A lease outlives a refill of the pool: that is the documented error. */
    struct rl_global *g = rlt_global(0, 6400, 60000, 0, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_expect_eq(g->tok.batch, 400, "batch = capacity / (shards * 16)");
    cr_assert(rl_admit(g, &l, 1, RLT_T0, RLT_NOON, &v));
    unsigned n = rlt_drain(g, &l, 1, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v);
    cr_expect_geq(n, 6400);
    cr_expect_leq(n, 6400 + 400);
    free(g);

    /* four shards each take a lease, sit idle while the pool refills, then
     * drain: at most one bucket plus shards * batch */
    g = rlt_global(0, 64000, 60000, 0, 4);
    int64_t bound = 4 * g->tok.batch;
    cr_expect_eq(bound, 4000);
    struct rl_local shard[4];
    for (int i = 0; i < 4; i++) {
        rl_local_init(&shard[i]);
        cr_assert(rl_admit(g, &shard[i], 1, RLT_T0, RLT_NOON, &v));
    }
    unsigned total = 0;
    for (int i = 0; i < 4; i++)
        total += rlt_drain(g, &shard[i], 1, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v);
    cr_expect_geq(total, 64000);
    cr_expect_leq(total, 64000 + bound, "admitted %u", total);
    free(g);

    /* below shards * 16 there is no lease at all: exact */
    g = rlt_global(31, 0, 60000, 0, 2);
    cr_expect_eq(g->req.batch, 0);
    struct rl_local a, b;
    rl_local_init(&a);
    rl_local_init(&b);
    cr_assert(rl_admit(g, &a, 0, RLT_T0, RLT_NOON, &v));
    cr_assert(rl_admit(g, &b, 0, RLT_T0, RLT_NOON, &v));
    total = rlt_drain(g, &a, 0, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v) +
            rlt_drain(g, &b, 0, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v);
    cr_expect_eq(total, 31);
    free(g);
}

Test(ratelimit, reload_inherits_levels_and_quota)
{
    struct rl_global *old = rlt_global(60, 1000, 60000, 5000, 2);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_assert(rl_admit(old, &l, 700, RLT_T0, RLT_NOON, &v));
    /* what this shard leased beyond the request stays with the old generation: lost */
    int64_t lost_requests = l.req, lost_daily = l.daily;
    cr_expect(lost_requests >= 0 && lost_daily > 0);

    /* the tier changes: a smaller token bucket, a larger request bucket */
    struct rl_global *g = aligned_alloc(64, sizeof *g);
    cr_assert_not_null(g);
    struct rl_limits lim = { .rpm = 120, .tpm = 200, .burst_ms = 60000, .daily_tokens = 6000 };
    rl_global_init(g, &lim, 2, RLT_T0 + RLT_SEC);
    rl_global_inherit(g, old, RLT_T0 + RLT_SEC, RLT_NOON);
    struct rl_status st;
    rl_local_init(&l);
    rl_status(g, &l, RLT_T0 + RLT_SEC, RLT_NOON, &st);
    cr_expect_eq(st.remaining_requests, 60 - lost_requests,
                 "59 left (less the old lease) plus 1 refilled in a second: %llu",
                 (unsigned long long)st.remaining_requests);
    cr_expect_eq(st.remaining_tokens, 200, "clamped to the new bucket");
    cr_expect_eq(st.remaining_daily, 5300 - lost_daily,
                 "700 of the quota were used today, and the old lease is lost: %llu",
                 (unsigned long long)st.remaining_daily);
    free(old);
    free(g);
}

/* ---- concurrency -------------------------------------------------------- */

struct rlt_worker {
    pthread_t thread;
    struct rl_global *g;
    struct rl_local l;          /* this "shard's" own */
    _Atomic uint64_t *clock;    /* NULL: the clock is frozen at RLT_T0 */
    uint64_t clock_step;
    uint64_t cost_max;          /* costs cycle 1..cost_max (0: always 0) */
    uint64_t deadline;          /* real time, CLOCK_MONOTONIC ns */
    uint32_t seed;
    uint64_t admitted, tokens, denied;
};

static uint64_t rlt_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * RLT_SEC + (uint64_t)ts.tv_nsec;
}

static void *rlt_hammer(void *arg)
{
    struct rlt_worker *w = arg;
    uint32_t x = w->seed | 1;
    for (uint64_t i = 0; i < 20000000; i++) {
        if ((i & 255) == 0 && rlt_real_ns() > w->deadline)
            break;
        uint64_t now = w->clock ? atomic_fetch_add(w->clock, w->clock_step) + w->clock_step : RLT_T0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        uint64_t cost = w->cost_max ? 1 + x % w->cost_max : 0;
        struct rl_verdict v;
        if (rl_admit(w->g, &w->l, cost, now, RLT_NOON, &v)) {
            w->admitted++;
            w->tokens += cost;
        } else {
            w->denied++;
        }
    }
    return NULL;
}

#define RLT_THREADS 4

static void rlt_run(struct rl_global *g, _Atomic uint64_t *clock, uint64_t step, uint64_t cost_max,
                    uint64_t run_ms, uint64_t *admitted, uint64_t *tokens)
{
    struct rlt_worker w[RLT_THREADS];
    uint64_t deadline = rlt_real_ns() + run_ms * 1000000;
    for (int i = 0; i < RLT_THREADS; i++) {
        w[i] = (struct rlt_worker){ .g = g, .clock = clock, .clock_step = step, .cost_max = cost_max,
                                    .deadline = deadline, .seed = 2654435761u * (uint32_t)(i + 1) };
        rl_local_init(&w[i].l);
        cr_assert_eq(pthread_create(&w[i].thread, NULL, rlt_hammer, &w[i]), 0);
    }
    *admitted = *tokens = 0;
    for (int i = 0; i < RLT_THREADS; i++) {
        pthread_join(w[i].thread, NULL);
        cr_expect_gt(w[i].denied, 0, "every shard ran into the limit");
        *admitted += w[i].admitted;
        *tokens += w[i].tokens;
    }
}

Test(ratelimit, concurrent_shards_stay_within_bound_requests)
{
    struct rl_global *g = rlt_global(100, 0, 60000, 0, RLT_THREADS);
    int64_t bound = RLT_THREADS * g->req.batch;
    uint64_t admitted, tokens;
    rlt_run(g, NULL, 0, 0, 1000, &admitted, &tokens);
    cr_expect_leq(admitted, 100 + bound, "admitted %lu, bound %ld", (unsigned long)admitted, (long)bound);
    cr_expect_geq(admitted, 100 - bound, "admitted %lu, bound %ld", (unsigned long)admitted, (long)bound);
    free(g);
}

Test(ratelimit, concurrent_shards_stay_within_bound_tokens_and_quota)
{
    /* frozen clock: tokens bucket of 200000 (batch 3125), quota of 150000 */
    struct rl_global *g = rlt_global(0, 200000, 60000, 150000, RLT_THREADS);
    uint64_t admitted, tokens;
    rlt_run(g, NULL, 0, 300, 300, &admitted, &tokens);
    int64_t bound = RLT_THREADS * g->daily_batch;
    cr_expect_leq(tokens, 150000, "a quota never admits more than itself: %lu", (unsigned long)tokens);
    cr_expect_geq(tokens, 150000 - bound, "admitted %lu, bound %ld", (unsigned long)tokens, (long)bound);
    free(g);

    g = rlt_global(0, 200000, 60000, 0, RLT_THREADS);
    rlt_run(g, NULL, 0, 300, 300, &admitted, &tokens);
    bound = RLT_THREADS * g->tok.batch;
    cr_expect_leq(tokens, 200000 + bound, "admitted %lu, bound %ld", (unsigned long)tokens, (long)bound);
    cr_expect_geq(tokens, 200000 - bound, "admitted %lu, bound %ld", (unsigned long)tokens, (long)bound);
    free(g);
}

Test(ratelimit, concurrent_shards_with_refill_stay_within_bound)
{
    /* 6M tokens/min = 100 per ms, a bucket of 6M, leases up to 93750; each
     * attempt moves the shared clock by 1 ms (100 tokens of refill) and asks
     * for 200 on average, so the shards outrun the refill and the pool runs dry. */
    struct rl_global *g = rlt_global(0, 6000000, 60000, 0, RLT_THREADS);
    _Atomic uint64_t clock = RLT_T0;
    uint64_t admitted, tokens;
    rlt_run(g, &clock, 1000000, 400, 500, &admitted, &tokens);
    uint64_t elapsed = atomic_load(&clock) - RLT_T0;
    uint64_t refilled = elapsed / 1000000 * 100;   /* exact: 1 ms is 100 tokens */
    int64_t bound = RLT_THREADS * g->tok.batch;
    uint64_t ideal = 6000000 + refilled;
    cr_expect_leq(tokens, ideal + bound, "admitted %lu, ideal %lu, bound %ld", (unsigned long)tokens,
                  (unsigned long)ideal, (long)bound);
    /* below: the bound, plus what a final attempt per shard could not use */
    cr_expect_geq(tokens + bound + RLT_THREADS * 400, ideal, "admitted %lu, ideal %lu, bound %ld",
                  (unsigned long)tokens, (unsigned long)ideal, (long)bound);
    cr_expect_gt(refilled, 6000000, "the run outlasted the burst: %lu refilled", (unsigned long)refilled);
    free(g);
}

/* ---- cluster mode: host pools fed by the limits sync thread ---- */

static struct rl_global *rlt_cluster(uint64_t rpm, uint64_t tpm, uint64_t daily, unsigned shards)
{
    struct rl_global *g = rlt_global(rpm, tpm, 60000, daily, shards);
    rl_global_set_cluster(g, RLT_NOON);
    return g;
}

#define RLT_TODAY (RLT_NOON / 86400)

Test(ratelimit, cluster_pools_start_empty_and_count_refusals)
{
    struct rl_global *g = rlt_cluster(60, 1000, 5000, 2);
    struct rl_local l[2];
    rl_local_init(&l[0]);
    rl_local_init(&l[1]);
    for (int d = 0; d < RL_DIMS; d++)
        cr_expect_eq(rl_stock(g, (enum rl_dim)d, RLT_TODAY), 0, "dimension %d starts empty", d);
    struct rl_verdict v;
    cr_expect_not(rl_admit(g, &l[0], 10, RLT_T0, RLT_NOON, &v), "nothing leased yet");
    cr_expect_eq(v.limit, RL_REQUESTS);
    cr_expect_eq(v.retry_after_s, 1);
    cr_expect_not(rl_admit(g, &l[1], 10, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(rl_refused_sum(l, 1, 2, RL_DIM_REQ), 2, "both shards' refusals are the demand");

    cr_expect_eq(rl_stock_add(g, RL_DIM_REQ, 5, RLT_TODAY), 5);
    cr_expect_not(rl_admit(g, &l[0], 10, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_TOKENS);
    cr_expect_eq(rl_refused_sum(l, 1, 2, RL_DIM_TOK), 10);
    cr_expect_eq(rl_stock(g, RL_DIM_REQ, RLT_TODAY) + l[0].req, 5, "the request taken for it went back");

    cr_expect_eq(rl_stock_add(g, RL_DIM_TOK, 100, RLT_TODAY), 100);
    cr_expect_not(rl_admit(g, &l[0], 10, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_QUOTA);
    cr_expect_eq(v.retry_after_s, 1, "the store still has quota: retry soon, not at midnight");
    cr_expect_eq(rl_refused_sum(l, 1, 2, RL_DIM_DAILY), 10);

    cr_expect_eq(rl_stock_add(g, RL_DIM_DAILY, 100, RLT_TODAY), 100);
    cr_expect(rl_admit(g, &l[0], 10, RLT_T0, RLT_NOON, &v));
    /* time passing refills nothing: only the sync thread adds */
    unsigned n = rlt_drain(g, &l[0], 10, RLT_T0 + 3600 * RLT_SEC, RLT_NOON, &v);
    cr_expect_eq(n, 4, "5 requests leased, one taken before");
    free(g);
}

Test(ratelimit, cluster_stock_add_take_hold_at_most_the_bucket)
{
    struct rl_global *g = rlt_cluster(60, 0, 1000, 1);
    cr_expect_eq(rl_stock_add(g, RL_DIM_REQ, 100, RLT_TODAY), 60, "a pool holds at most the bucket");
    cr_expect_eq(rl_stock_add(g, RL_DIM_REQ, 1, RLT_TODAY), 0);
    cr_expect_eq(rl_stock_take(g, RL_DIM_REQ, 25, RLT_TODAY), 25);
    cr_expect_eq(rl_stock_take(g, RL_DIM_REQ, 100, RLT_TODAY), 35, "never below zero");
    cr_expect_eq(rl_stock(g, RL_DIM_REQ, RLT_TODAY), 0);
    cr_expect_eq(rl_stock_add(g, RL_DIM_TOK, 100, RLT_TODAY), 0, "an unlimited dimension holds nothing");
    cr_expect_eq(rl_stock_add(g, RL_DIM_DAILY, 5000, RLT_TODAY), 1000, "at most the quota");
    cr_expect_eq(rl_stock_add(g, RL_DIM_REQ, -5, RLT_TODAY), 0);
    cr_expect_eq(rl_stock_take(g, RL_DIM_REQ, -5, RLT_TODAY), 0);
    free(g);
}

Test(ratelimit, cluster_settlement_beyond_the_pool_is_a_debt)
{
    struct rl_global *g = rlt_cluster(0, 1000, 10000, 1);
    struct rl_local l;
    rl_local_init(&l);
    rl_stock_add(g, RL_DIM_TOK, 100, RLT_TODAY);
    rl_stock_add(g, RL_DIM_DAILY, 100, RLT_TODAY);
    struct rl_verdict v;
    cr_assert(rl_admit(g, &l, 100, RLT_T0, RLT_NOON, &v));
    rl_settle(g, &l, &v.ticket, 350, RLT_T0, RLT_NOON);
    cr_expect_eq(rl_stock(g, RL_DIM_TOK, RLT_TODAY), -250, "below zero: owed to the store");
    cr_expect_eq(rl_stock(g, RL_DIM_DAILY, RLT_TODAY), -250);
    cr_expect_not(rl_admit(g, &l, 1, RLT_T0, RLT_NOON, &v), "a pool in debt admits nothing");
    cr_expect_eq(rl_stock_charge(g, RL_DIM_TOK, 50, RLT_TODAY), 50);
    cr_expect_eq(rl_stock_drain(g, RL_DIM_TOK, RLT_TODAY), -300, "drain reports the debt");
    cr_expect_eq(rl_stock(g, RL_DIM_TOK, RLT_TODAY), 0, "and clears it");
    /* what the sync thread does when it pushes a debt: adds it back to zero */
    cr_expect_eq(rl_stock_add(g, RL_DIM_DAILY, 250, RLT_TODAY), 250);
    cr_expect_eq(rl_stock(g, RL_DIM_DAILY, RLT_TODAY), 0);
    free(g);
}

Test(ratelimit, cluster_daily_pool_of_an_earlier_day_is_empty)
{
    struct rl_global *g = rlt_cluster(0, 0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    cr_expect_eq(rl_stock_add(g, RL_DIM_DAILY, 300, RLT_TODAY), 300);
    cr_expect_eq(rl_stock(g, RL_DIM_DAILY, RLT_TODAY + 1), 0, "yesterday's lease is not today's");
    cr_expect_eq(rl_stock_drain(g, RL_DIM_DAILY, RLT_TODAY + 1), 0, "nothing to give back for a new day");
    cr_expect_eq(rl_stock_add(g, RL_DIM_DAILY, 200, RLT_TODAY + 1), 200);
    struct rl_verdict v;
    cr_expect_eq(rlt_drain(g, &l, 50, RLT_T0, RLT_NOON + 86400, &v), 4);
    cr_expect_eq(v.limit, RL_QUOTA);
    free(g);
}

Test(ratelimit, cluster_status_counts_the_shared_bucket_once)
{
    struct rl_global *g = rlt_cluster(60, 0, 0, 1);
    struct rl_local l;
    rl_local_init(&l);
    rl_stock_add(g, RL_DIM_REQ, 10, RLT_TODAY);
    rl_shared_publish(g, 20, 0, 0);
    struct rl_status st;
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.limit_requests, 60);
    cr_expect_eq(st.remaining_requests, 30, "the host's pool plus what the store holds");
    cr_expect_eq(st.reset_requests_ms, 30000, "30 missing at one a second, got %llu ms",
                 (unsigned long long)st.reset_requests_ms);
    free(g);
}

Test(ratelimit, cluster_daily_status_and_retry)
{
    struct rl_global *g = rlt_cluster(0, 0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    rl_stock_add(g, RL_DIM_DAILY, 100, RLT_TODAY);
    rl_shared_publish(g, 0, 0, 900);    /* this host's 100 included */
    struct rl_status st;
    rl_status(g, &l, RLT_T0, RLT_NOON, &st);
    cr_expect_eq(st.remaining_daily, 200);
    struct rl_verdict v;
    cr_expect_not(rl_admit(g, &l, 150, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 1, "the store has 100 more: the next lease may bring them");
    rl_shared_publish(g, 0, 0, 1000);
    cr_expect_not(rl_admit(g, &l, 150, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 12 * 3600, "the day's quota is gone everywhere: until midnight");
    free(g);
}

Test(ratelimit, cluster_move_stock_hands_back_what_does_not_fit)
{
    struct rl_global *old = rlt_cluster(60, 1000, 5000, 1);
    struct rl_global *neu = rlt_cluster(20, 1000, 0, 1);     /* a smaller bucket, no quota any more */
    rl_stock_add(old, RL_DIM_REQ, 50, RLT_TODAY);
    rl_stock_add(old, RL_DIM_TOK, 400, RLT_TODAY);
    rl_stock_charge(old, RL_DIM_DAILY, 70, RLT_TODAY);     /* a settlement debt */
    rl_shared_publish(old, 5, 6, 7);
    int64_t left[RL_DIMS];
    admission_move_stock(neu, old, RLT_TODAY, left);
    cr_expect_eq(rl_stock(neu, RL_DIM_REQ, RLT_TODAY), 20);
    cr_expect_eq(left[RL_DIM_REQ], 30, "what the smaller pool cannot hold goes back");
    cr_expect_eq(rl_stock(neu, RL_DIM_TOK, RLT_TODAY), 400);
    cr_expect_eq(left[RL_DIM_TOK], 0);
    cr_expect_eq(left[RL_DIM_DAILY], -70, "a debt the new pool cannot carry is still owed");
    for (int d = 0; d < RL_DIMS; d++)
        cr_expect_eq(rl_stock(old, (enum rl_dim)d, RLT_TODAY), 0, "the old pools are drained");
    cr_expect_eq(atomic_load(&neu->shared_daily_used), 7);
    free(old);
    free(neu);
}

/* ---- the daily spend cap (micro-USD) ---- */

static struct rl_global *rlt_spend(uint64_t daily_tokens, uint64_t daily_spend, unsigned shards)
{
    struct rl_global *g = aligned_alloc(64, sizeof *g);
    cr_assert_not_null(g);
    struct rl_limits lim = { .daily_tokens = daily_tokens, .daily_spend = daily_spend };
    rl_global_init(g, &lim, shards, RLT_T0);
    return g;
}

Test(ratelimit, spend_admits_until_the_cap_then_refuses_until_midnight)
{
    struct rl_global *g = rlt_spend(0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    unsigned n = 0;
    while (n < 100 && rl_admit_priced(g, &l, 10, 300, RLT_T0, RLT_NOON, &v))
        n++;
    cr_expect_eq(n, 3, "300 micro-USD each on a 1000 day");
    cr_expect_eq(v.limit, RL_SPEND);
    cr_expect_not(v.too_large);
    cr_expect_eq(v.retry_after_s, 12 * 3600, "until 00:00 UTC");
    cr_expect_str_eq(rl_limit_name(RL_SPEND), "spend");
    cr_expect(rl_admit_priced(g, &l, 10, 100, RLT_T0, RLT_NOON, &v), "100 still fit");
    cr_expect(rl_admit_priced(g, &l, 10, 0, RLT_T0, RLT_NOON, &v), "an unpriced request is never refused");
    cr_expect(rl_admit_priced(g, &l, 10, 300, RLT_T0, RLT_MIDNIGHT + 86400, &v), "a new day");
    free(g);
}

Test(ratelimit, spend_over_the_whole_cap_is_too_large)
{
    struct rl_global *g = rlt_spend(0, 1000, 2);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_expect_not(rl_admit_priced(g, &l, 10, 1001, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_SPEND);
    cr_expect(v.too_large);
    cr_expect_eq(v.retry_after_s, 0, "no wait admits it");
    cr_expect(rl_admit_priced(g, &l, 10, 1000, RLT_T0, RLT_NOON, &v), "the whole cap at once is fine");
    free(g);
}

Test(ratelimit, spend_refusal_gives_back_the_quota_it_took)
{
    struct rl_global *g = rlt_spend(1000, 100, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_assert(rl_admit_priced(g, &l, 100, 90, RLT_T0, RLT_NOON, &v));
    cr_expect_not(rl_admit_priced(g, &l, 100, 20, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_SPEND);
    cr_expect_eq(rl_quota_used(g, RLT_TODAY) - l.daily * (l.daily_day == RLT_TODAY), 100,
                 "the refused request's tokens went back to the quota");
    cr_expect(rl_admit_priced(g, &l, 900, 10, RLT_T0, RLT_NOON, &v), "the rest of both fits");
    free(g);
}

Test(ratelimit, spend_settles_up_and_down_like_the_quota)
{
    struct rl_global *g = rlt_spend(0, 1000, 1);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_assert(rl_admit_priced(g, &l, 10, 900, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.ticket.spend, 900);
    rl_settle_priced(g, &l, &v.ticket, 10, 50, RLT_T0, RLT_NOON);     /* cost 50: 850 back */
    cr_expect(rl_admit_priced(g, &l, 10, 950, RLT_T0, RLT_NOON, &v));
    cr_expect_not(rl_admit_priced(g, &l, 10, 1, RLT_T0, RLT_NOON, &v));

    struct rl_global *h = rlt_spend(0, 1000, 1);
    rl_local_init(&l);
    cr_assert(rl_admit_priced(h, &l, 10, 100, RLT_T0, RLT_NOON, &v));
    rl_settle_priced(h, &l, &v.ticket, 10, 1500, RLT_T0, RLT_NOON);   /* the backend went over */
    cr_expect_eq(rl_spend_used(h, RLT_TODAY), 1500, "over the cap until midnight");
    cr_expect_not(rl_admit_priced(h, &l, 10, 1, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.limit, RL_SPEND);
    cr_expect(rl_admit_priced(h, &l, 10, 1, RLT_T0, RLT_MIDNIGHT + 86400, &v), "the next day starts afresh");

    /* rl_settle leaves the spend as reserved; a ticket of yesterday changes nothing */
    struct rl_global *k = rlt_spend(0, 1000, 64);   /* 64 shards: no lease, exact counts */
    rl_local_init(&l);
    cr_assert(rl_admit_priced(k, &l, 10, 400, RLT_T0, RLT_MIDNIGHT - 5, &v));
    struct rl_ticket t = v.ticket;
    rl_settle(k, &l, &t, 5, RLT_T0, RLT_MIDNIGHT - 4);
    cr_expect_eq(rl_spend_used(k, RLT_TODAY - 1), 400);
    cr_assert(rl_admit_priced(k, &l, 10, 1, RLT_T0, RLT_MIDNIGHT + 5, &v));
    rl_settle_priced(k, &l, &t, 10, 0, RLT_T0, RLT_MIDNIGHT + 6);
    cr_expect_eq(rl_spend_used(k, RLT_TODAY), 1, "yesterday's give-back is not today's");
    free(g);
    free(h);
    free(k);
}

Test(ratelimit, spend_is_inherited_on_reload_and_restored_from_a_snapshot)
{
    struct rl_global *old = rlt_spend(0, 1000, 64);    /* 64 shards: no lease, exact counts */
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_assert(rl_admit_priced(old, &l, 10, 700, RLT_T0, RLT_NOON, &v));
    struct rl_global *neu = rlt_spend(0, 1000, 64);
    rl_global_inherit(neu, old, RLT_T0, RLT_NOON);
    cr_expect_eq(rl_spend_used(neu, RLT_TODAY), 700);
    rl_local_init(&l);
    cr_expect_not(rl_admit_priced(neu, &l, 10, 301, RLT_T0, RLT_NOON, &v));
    cr_expect(rl_admit_priced(neu, &l, 10, 300, RLT_T0, RLT_NOON, &v));

    struct rl_global *fresh = rlt_spend(0, 1000, 1);
    rl_spend_restore(fresh, 999, RLT_TODAY);
    cr_expect_eq(rl_spend_used(fresh, RLT_TODAY), 999);
    cr_expect_eq(rl_spend_used(fresh, RLT_TODAY + 1), 0, "of another day: nothing");
    struct rl_global *nocap = rlt_spend(0, 0, 1);
    rl_spend_restore(nocap, 999, RLT_TODAY);
    cr_expect_eq(rl_spend_used(nocap, RLT_TODAY), 0, "no cap, nothing kept");
    free(old);
    free(neu);
    free(fresh);
    free(nocap);
}

Test(ratelimit, cluster_spend_is_a_stock_of_its_own)
{
    struct rl_global *g = aligned_alloc(64, sizeof *g);
    cr_assert_not_null(g);
    struct rl_limits lim = { .daily_tokens = 1000, .daily_spend = 500 };
    rl_global_init(g, &lim, 1, RLT_T0);
    rl_global_set_cluster(g, RLT_NOON);
    struct rl_local l;
    rl_local_init(&l);
    struct rl_verdict v;
    cr_expect(rl_has_dim(g, RL_DIM_SPEND));
    cr_expect_eq(rl_stock(g, RL_DIM_SPEND, RLT_TODAY), 0, "starts empty");
    rl_stock_add(g, RL_DIM_DAILY, 1000, RLT_TODAY);
    cr_expect_not(rl_admit_priced(g, &l, 10, 100, RLT_T0, RLT_NOON, &v), "no spend leased yet");
    cr_expect_eq(v.limit, RL_SPEND);
    cr_expect_eq(v.retry_after_s, 1, "the store has the whole day's spend left");
    cr_expect_eq(rl_refused_sum(&l, 1, 1, RL_DIM_SPEND), 100, "the demand for the sync thread");
    cr_expect_eq(rl_stock(g, RL_DIM_DAILY, RLT_TODAY) + l.daily, 1000, "the quota went back");
    cr_expect_eq(rl_stock_add(g, RL_DIM_SPEND, 5000, RLT_TODAY), 500, "at most the cap");
    cr_assert(rl_admit_priced(g, &l, 10, 100, RLT_T0, RLT_NOON, &v));
    rl_settle_priced(g, &l, &v.ticket, 10, 700, RLT_T0, RLT_NOON);
    cr_expect_eq(rl_stock(g, RL_DIM_SPEND, RLT_TODAY) + l.spend, -200, "a settlement beyond the pool is a debt");
    cr_expect_eq(rl_stock_drain(g, RL_DIM_SPEND, RLT_TODAY) + l.spend, -200);
    rl_shared_publish_spend(g, 500);
    cr_expect_not(rl_admit_priced(g, &l, 10, 1, RLT_T0, RLT_NOON, &v));
    cr_expect_eq(v.retry_after_s, 12 * 3600, "spent everywhere: until midnight");
    free(g);
}
