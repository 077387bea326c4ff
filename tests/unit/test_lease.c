#include <criterion/criterion.h>

#include <stdint.h>

#include "cluster/lease.h"

/* One host's pool for one dimension across sync intervals: each interval the
 * shards take `use` (up to what the pool holds; the rest is refused), then the
 * sync sizes the lease and the store grants what was asked. */
struct lt_host {
    int64_t stock, last_stock;
    uint64_t refused_total, refused_seen;
    struct lease_plan last;
    struct lease_hold hold;
    uint64_t now_ms;
};

static void lt_interval(struct lt_host *h, const struct lease_bounds *b, int64_t use)
{
    int64_t taken = use < h->stock ? use : h->stock;
    h->stock -= taken;
    h->refused_total += (uint64_t)(use - taken);
    uint64_t refused = h->refused_total - h->refused_seen;
    h->refused_seen = h->refused_total;
    int64_t demand = lease_demand(h->last_stock, h->stock, refused);
    h->last = lease_size(b, demand, refused, h->stock, &h->hold, h->now_ms);
    h->now_ms += 50;
    h->stock += h->last.want - h->last.ret;
    h->last_stock = h->stock;
}

Test(lease, bounds_split_the_bucket_between_hosts)
{
    struct lease_bounds b = lease_rate_bounds(6000, 1);
    cr_expect_eq(b.share, 3000);
    cr_expect_eq(b.floor, 750);
    cr_expect_eq(b.max, 6000);
    b = lease_rate_bounds(6000, 3);
    cr_expect_eq(b.share, 1000, "capacity / (2 x hosts)");
    cr_expect_eq(b.floor, 250, "capacity / (8 x hosts)");
    /* a small bucket still leases one at a time */
    b = lease_rate_bounds(3, 3);
    cr_expect_eq(b.share, 1);
    cr_expect_eq(b.floor, 1);
    /* 0 hosts (no reply yet) counts as one */
    b = lease_rate_bounds(800, 0);
    cr_expect_eq(b.share, 400);
}

Test(lease, daily_bounds_split_what_is_left_today)
{
    struct lease_bounds b = lease_daily_bounds(1000000, 400000, 3);
    cr_expect_eq(b.max, 600000);
    cr_expect_eq(b.share, 100000);
    cr_expect_eq(b.floor, 25000);
    b = lease_daily_bounds(1000, 1000, 2);
    cr_expect_eq(b.share, 0, "nothing left: nothing to lease");
    cr_expect_eq(b.floor, 0);
    b = lease_daily_bounds(1000, 5000, 2);  /* over by settlement debt */
    cr_expect_eq(b.max, 0);
    cr_expect_eq(b.floor, 0);
}

Test(lease, first_sync_leases_the_floor)
{
    struct lease_bounds b = lease_rate_bounds(6000, 3);
    struct lease_hold hold = { 0 };
    struct lease_plan p = lease_size(&b, 0, 0, 0, &hold, 0);
    cr_expect_eq(p.want, 250);
    cr_expect_eq(p.ret, 0);
}

Test(lease, idle_host_gives_back_down_to_floor_within_two_intervals)
{
    struct lease_bounds b = lease_rate_bounds(6000, 3);
    struct lt_host h = { 0 };
    for (int i = 0; i < 10; i++)
        lt_interval(&h, &b, 2000);      /* busy: the lease grows to the share */
    cr_expect_eq(h.stock, b.share);
    lt_interval(&h, &b, 0);
    cr_expect_gt(h.last.ret, 0, "an idle interval gives back");
    lt_interval(&h, &b, 0);
    cr_expect_eq(h.stock, b.floor, "an idle host holds its floor (%lld)", (long long)h.stock);
    lt_interval(&h, &b, 0);
    cr_expect_eq(h.last.want, 0);
    cr_expect_eq(h.last.ret, 0, "and stays there without traffic");
}

Test(lease, burst_grows_the_lease_to_the_share_and_no_further)
{
    struct lease_bounds b = lease_rate_bounds(60000, 2);
    struct lt_host h = { 0 };
    lt_interval(&h, &b, 0);
    cr_expect_eq(h.stock, b.floor);
    int64_t prev = h.stock;
    for (int i = 0; i < 3; i++) {
        lt_interval(&h, &b, 1000000);
        cr_expect_geq(h.stock, prev, "grows under a burst");
        prev = h.stock;
    }
    cr_expect_eq(h.stock, b.share, "capped at capacity / (2 x hosts) = %lld, got %lld", (long long)b.share,
                 (long long)h.stock);
}

Test(lease, refused_demand_grows_the_lease)
{
    struct lease_bounds b = lease_rate_bounds(6000, 1);
    struct lease_hold hold = { 0 };
    /* the pool ran dry: 100 left it, 400 more were refused */
    int64_t demand = lease_demand(100, 0, 400);
    cr_expect_eq(demand, 500);
    struct lease_plan p = lease_size(&b, demand, 400, 0, &hold, 0);
    cr_expect_eq(p.target, 1000, "twice the demand");
    cr_expect_eq(p.want, 1000);
}

Test(lease, a_request_larger_than_the_share_gets_a_lease_on_retry)
{
    /* 40000 tokens a minute, 3 hosts: a share is 6666, a request reserves 10000 */
    struct lease_bounds b = lease_rate_bounds(40000, 3);
    struct lease_hold hold = { 0 };
    cr_expect_lt(b.share, 10000);
    struct lease_plan p = lease_size(&b, lease_demand(b.floor, b.floor, 10000), 10000, b.floor, &hold, 1000);
    cr_expect_eq(p.target, 10000, "the pool can hold the refused request next time");
    /* idle intervals until the client retries after Retry-After: the lease stays */
    int64_t stock = b.floor + p.want;
    for (uint64_t t = 1050; t < 1000 + LEASE_HOLD_MS; t += 50) {
        p = lease_size(&b, 0, 0, stock, &hold, t);
        cr_assert_eq(p.ret, 0, "given back at %llu ms, before the retry could use it", (unsigned long long)t);
    }
    /* the retry passes: the hold has done its job and the lease follows demand again */
    p = lease_size(&b, lease_demand(stock, stock - 10000, 0), 0, stock - 10000, &hold, 2000);
    cr_expect_eq(hold.amount, 0);
    cr_expect_leq(p.target, b.share > 20000 ? 20000 : b.share);
    /* a retry that never comes: the hold ends after LEASE_HOLD_MS */
    p = lease_size(&b, lease_demand(b.floor, b.floor, 10000), 10000, b.floor, &hold, 5000);
    cr_expect_eq(hold.amount, 10000);
    p = lease_size(&b, 0, 0, 10000, &hold, 5000 + LEASE_HOLD_MS);
    cr_expect_eq(p.target, b.floor);
    cr_expect_eq(p.ret, 10000 - b.floor);
    /* never more than the bucket */
    hold = (struct lease_hold){ 0 };
    p = lease_size(&b, lease_demand(b.floor, b.floor, 1000000), 1000000, b.floor, &hold, 0);
    cr_expect_eq(p.target, 40000);
    /* an empty pool refusing is plain shortage: no hold, the share as usual */
    hold = (struct lease_hold){ 0 };
    p = lease_size(&b, lease_demand(0, 0, 1000000), 1000000, 0, &hold, 0);
    cr_expect_eq(p.target, b.share);
    cr_expect_eq(hold.amount, 0);
}

Test(lease, hysteresis_keeps_a_busy_pool_steady)
{
    struct lease_bounds b = lease_rate_bounds(100000, 1);
    struct lease_hold hold = { 0 };
    /* target 2 x 20000 = 40000: a stock up to 80000 stays */
    struct lease_plan p = lease_size(&b, 20000, 0, 79000, &hold, 0);
    cr_expect_eq(p.target, 40000);
    cr_expect_eq(p.want, 0);
    cr_expect_eq(p.ret, 0);
    p = lease_size(&b, 20000, 0, 81000, &hold, 0);
    cr_expect_eq(p.ret, 41000, "above twice the target: back to the target");
    p = lease_size(&b, 20000, 0, 30000, &hold, 0);
    cr_expect_eq(p.want, 10000);
}

Test(lease, three_hosts_share_one_bucket)
{
    struct lease_bounds b = lease_rate_bounds(9000, 3);
    struct lt_host h[3] = { 0 };
    for (int i = 0; i < 20; i++)
        for (int k = 0; k < 3; k++)
            lt_interval(&h[k], &b, 5000);
    int64_t held = h[0].stock + h[1].stock + h[2].stock;
    cr_expect_leq(held, 9000 / 2, "hosts together hold at most half the bucket, held %lld", (long long)held);
    for (int k = 0; k < 3; k++)
        cr_expect_eq(h[k].stock, 1500);
}

Test(lease, huge_limits_do_not_overflow)
{
    int64_t cap = INT64_C(14400000000000);  /* 1e10 per minute x 24 h burst */
    struct lease_bounds b = lease_rate_bounds(cap, 1);
    struct lease_hold hold = { 0 };
    struct lease_plan p = lease_size(&b, INT64_MAX, UINT64_MAX, 1, &hold, 0);
    cr_expect_eq(p.target, cap, "at most the bucket");
    cr_expect_eq(p.want, cap - 1);
    cr_expect_geq(lease_demand(INT64_MAX, INT64_MIN + 1, UINT64_MAX), 0);
    cr_expect_geq(lease_demand(0, 0, UINT64_MAX), 0);
    hold = (struct lease_hold){ 0 };
    p = lease_size(&b, 0, 0, INT64_MAX / 2, &hold, 0);
    cr_expect_eq(p.ret, INT64_MAX / 2 - b.floor);
    uint64_t carry = 0;
    int64_t n = lease_local_refill(10000000000ULL, cap, 1, UINT64_MAX, 0, &carry);
    cr_expect_eq(n, cap);
}

Test(lease, local_refill_is_the_hosts_share_of_the_rate)
{
    uint64_t carry = 0;
    /* 60 a minute, 3 hosts: one every 3 s on this host */
    int64_t n = 0;
    for (int i = 0; i < 60; i++)    /* 60 x 50 ms = 3 s */
        n += lease_local_refill(60, 60, 3, 50000000, n, &carry);
    cr_expect_eq(n, 1, "fractions carry over between turns");
    /* capped at capacity / hosts */
    n = lease_local_refill(60, 60, 3, 3600ULL * 1000000000ULL, 0, &carry);
    cr_expect_eq(n, 20);
    cr_expect_eq(lease_local_refill(60, 60, 3, 3600ULL * 1000000000ULL, 20, &carry), 0);
    cr_expect_eq(carry, 0, "a full pool banks nothing");
}
