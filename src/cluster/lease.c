/* Lease sizing: see lease.h. */
#include "cluster/lease.h"


/* Demands and targets saturate here: far above any bucket (RL_MAX_PER_MINUTE x
 * RL_MAX_BURST_MS is about 1.4e13), and 2 x it still fits an int64. */
#define LEASE_DEMAND_MAX (INT64_C(1) << 60)
#define NS_PER_MINUTE    60000000000ULL

static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t hosts_of(uint32_t hosts)
{
    return hosts < 1 ? 1 : hosts > LEASE_MAX_HOSTS ? LEASE_MAX_HOSTS : (int64_t)hosts;
}

/* share = what / (2H), floor = max(1, what / (8H)) <= share; 0 when what is 0. */
static struct lease_bounds split(int64_t what, uint32_t hosts)
{
    struct lease_bounds b = { 0, 0, max_i64(what, 0) };
    if (b.max == 0)
        return b;
    int64_t h = hosts_of(hosts);
    b.share = max_i64(1, b.max / (2 * h));
    b.floor = min_i64(max_i64(1, b.max / (8 * h)), b.share);
    return b;
}

struct lease_bounds lease_rate_bounds(int64_t capacity, uint32_t hosts)
{
    return split(capacity, hosts);
}

struct lease_bounds lease_daily_bounds(int64_t limit, int64_t used_all_hosts, uint32_t hosts)
{
    return split(limit - max_i64(used_all_hosts, 0), hosts);
}

int64_t lease_demand(int64_t stock_last, int64_t stock_now, uint64_t refused)
{
    /* in unsigned arithmetic: the difference of any two int64 fits a uint64 */
    uint64_t gone = stock_last > stock_now ? (uint64_t)stock_last - (uint64_t)stock_now : 0;
    int64_t left_pool = gone > (uint64_t)LEASE_DEMAND_MAX ? LEASE_DEMAND_MAX : (int64_t)gone;
    int64_t ref = refused > (uint64_t)LEASE_DEMAND_MAX ? LEASE_DEMAND_MAX : (int64_t)refused;
    return min_i64(left_pool + ref, LEASE_DEMAND_MAX);
}

struct lease_plan lease_size(const struct lease_bounds *b, int64_t demand, uint64_t refused,
                             int64_t stock, struct lease_hold *hold, uint64_t now_ms)
{
    struct lease_plan p = { 0, 0, 0 };
    int64_t ref = refused > (uint64_t)LEASE_DEMAND_MAX ? LEASE_DEMAND_MAX : (int64_t)refused;
    demand = min_i64(max_i64(demand, 0), LEASE_DEMAND_MAX);
    /* Refused while the pool held stock and nothing left it: what was asked
     * does not fit in what the host holds (a burst of ordinary requests
     * drains the pool first; an empty pool is plain shortage). Hold that much
     * for the retry, until it passed or had time to. */
    if (ref > 0 && demand <= ref && stock > 0) {
        hold->amount = max_i64(hold->amount, min_i64(ref, b->max));
        hold->until_ms = now_ms + LEASE_HOLD_MS;
    } else if (hold->amount && (now_ms >= hold->until_ms || demand >= hold->amount)) {
        hold->amount = 0;
    }
    int64_t held = min_i64(hold->amount, b->max);
    int64_t ceiling = max_i64(b->share, held);
    int64_t floor = max_i64(b->floor, held);
    p.target = max_i64(min_i64(2 * demand, ceiling), floor);
    stock = max_i64(stock, 0);
    if (stock < p.target)
        p.want = p.target - stock;
    else if (stock > 2 * p.target || (demand == 0 && stock > p.target))
        p.ret = stock - p.target;
    return p;
}

int64_t lease_local_refill(uint64_t per_minute, int64_t capacity, uint32_t hosts, uint64_t elapsed_ns,
                           int64_t stock, uint64_t *carry)
{
    int64_t h = hosts_of(hosts);
    int64_t room = capacity / h - stock;
    if (per_minute == 0 || room <= 0) {
        *carry = 0;     /* a full pool does not bank refill for later */
        return 0;
    }
    /* tokens = elapsed x rate / (minute x H); the remainder, < minute x H, stays */
    unsigned __int128 per = (unsigned __int128)NS_PER_MINUTE * (uint64_t)h;
    unsigned __int128 acc = (unsigned __int128)elapsed_ns * per_minute + *carry;
    unsigned __int128 tokens = acc / per;
    *carry = (uint64_t)(acc % per);
    if (tokens >= (unsigned __int128)room) {
        *carry = 0;
        return room;
    }
    return (int64_t)tokens;
}
