/* Token buckets and a daily quota shared by all shards without a lock.
 *
 * Each bucket's global state is one int64 in GCRA form: the virtual time at
 * which the bucket is empty, counted in units of one token's refill interval
 * since origin_ns. Time "now" in those units is floor(elapsed * rate / minute),
 * so the bucket's level is a difference of two integers, refilling is implicit,
 * and one CAS both refills and takes. Fractions of a token never drift: the
 * unit count is recomputed from the absolute elapsed time on every use.
 *
 * Shards lease tokens from the global pool into their rl_local and admit from
 * the lease with no shared access. A lease is the tokens a request needs plus a
 * top-up of min(batch, available / (2 * shards)), so leases shrink as the pool
 * drains and the last tokens are taken one request at a time. All atomics are
 * relaxed: each is a self-contained counter and publishes no other memory. */
#include "policy/ratelimit.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "util/outbuf.h"

#define NS_PER_MINUTE   60000000000ULL
#define NS_PER_SECOND   1000000000ULL
#define SECONDS_PER_DAY 86400
#define DAY_SHIFT       42
#define USED_MASK       ((UINT64_C(1) << DAY_SHIFT) - 1)
#define DAY_MAX         ((INT64_C(1) << (64 - DAY_SHIFT)) - 1)
/* Costs and debts saturate here, far beyond any real count, so sums of them
 * cannot overflow an int64. */
#define COST_MAX        (INT64_C(1) << 60)

_Static_assert(RL_MAX_DAILY < USED_MASK / 2, "quota must leave room for debt in the used field");

static uint64_t clamp_u64(uint64_t v, uint64_t hi)
{
    return v > hi ? hi : v;
}

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max_i64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* Cluster mode: tells the sync thread this key's pools moved. Only on the
 * paths that reach the pools (their line is being written anyway), and a
 * plain store only when the flag is clear. */
static void note_pool_touch(const struct rl_global *g)
{
    _Atomic uint64_t *w = g->touched_word;
    if (w && !(atomic_load_explicit(w, memory_order_relaxed) & g->touched_bit))
        atomic_fetch_or_explicit(w, g->touched_bit, memory_order_relaxed);
}

/* The rule that bounds the error: shards * batch <= capacity / 16. Below
 * shards * 16 tokens there is no lease at all and the bucket is exact. */
static int64_t lease_batch(int64_t capacity, uint32_t shards)
{
    return capacity / ((int64_t)shards * 16);
}

static void rate_init(struct rl_rate *r, uint64_t per_minute, uint64_t burst_ms, uint32_t shards)
{
    r->per_minute = clamp_u64(per_minute, RL_MAX_PER_MINUTE);
    if (r->per_minute == 0) {
        r->capacity = 0;
        r->batch = 0;
        return;
    }
    /* <= 1e10 * 86400000 / 60000 = 1.44e13: no overflow in 128 bits, fits in 64 */
    unsigned __int128 cap = (unsigned __int128)r->per_minute * burst_ms / 60000;
    r->capacity = cap < 1 ? 1 : (int64_t)cap;
    r->batch = lease_batch(r->capacity, shards);
}

void rl_global_init(struct rl_global *g, const struct rl_limits *lim, unsigned shards,
                    uint64_t now_ns)
{
    memset(g, 0, sizeof *g);
    g->shards = shards < 1 ? 1 : shards > RL_MAX_SHARDS ? RL_MAX_SHARDS : shards;
    uint64_t burst_ms = lim->burst_ms ? clamp_u64(lim->burst_ms, RL_MAX_BURST_MS) : 60000;
    rate_init(&g->req, lim->rpm, burst_ms, g->shards);
    rate_init(&g->tok, lim->tpm, burst_ms, g->shards);
    g->daily = (int64_t)clamp_u64(lim->daily_tokens, RL_MAX_DAILY);
    g->daily_batch = lease_batch(g->daily, g->shards);
    g->spend = (int64_t)clamp_u64(lim->daily_spend, RL_MAX_DAILY);
    g->spend_batch = lease_batch(g->spend, g->shards);
    g->origin_ns = now_ns;
    /* at origin the unit clock reads 0: empty at -capacity means full */
    atomic_init(&g->req_empty_at, -g->req.capacity);
    atomic_init(&g->tok_empty_at, -g->tok.capacity);
    atomic_init(&g->daily_state, 0);
    atomic_init(&g->spend_state, 0);
}

void rl_local_init(struct rl_local *l)
{
    memset(l, 0, sizeof *l);
}

/* ---- token buckets ---------------------------------------------------- */

static uint64_t elapsed_ns(const struct rl_global *g, uint64_t now_ns)
{
    return now_ns > g->origin_ns ? now_ns - g->origin_ns : 0;
}

/* Tokens refilled since origin: the bucket's unit clock. <= 2^64 * 1e10 / 6e10.
 * In cluster mode the clock stands still at 0: the pool is a plain stock, the
 * GCRA word then reads level = -max(empty_at, -capacity), and only the limits
 * sync thread adds to it. */
static int64_t rate_now(const struct rl_global *g, const struct rl_rate *r, uint64_t now_ns)
{
    if (g->cluster)
        return 0;
    return (int64_t)((unsigned __int128)elapsed_ns(g, now_ns) * r->per_minute / NS_PER_MINUTE);
}

/* The level of the global pool at unit time now (settlement never takes it below 0). */
static int64_t pool_level(const struct rl_rate *r, int64_t empty_at, int64_t now)
{
    return now - max_i64(empty_at, now - r->capacity);
}

/* Nanoseconds from now_ns until the pool has refilled `deficit` more tokens. */
static uint64_t rate_wait_ns(const struct rl_global *g, const struct rl_rate *r, int64_t deficit,
                             uint64_t now_ns)
{
    if (deficit <= 0)
        return 0;
    if (g->cluster) {
        /* the shared bucket refills at the rate */
        unsigned __int128 w = ((unsigned __int128)(uint64_t)deficit * NS_PER_MINUTE + r->per_minute - 1)
                              / r->per_minute;
        return w > UINT64_MAX ? UINT64_MAX : (uint64_t)w;
    }
    uint64_t dt = elapsed_ns(g, now_ns);
    unsigned __int128 target = (unsigned __int128)(uint64_t)(rate_now(g, r, now_ns) + deficit);
    /* first instant at which floor(t * rate / minute) reaches target */
    unsigned __int128 at = (target * NS_PER_MINUTE + r->per_minute - 1) / r->per_minute;
    unsigned __int128 wait = at > dt ? at - dt : 0;
    return wait > UINT64_MAX ? UINT64_MAX : (uint64_t)wait;
}

/* Takes `need` tokens plus a top-up lease when at least `need` are there.
 * On failure *level_out is what the pool holds. Lock-free: a CAS fails only
 * because another shard's succeeded. */
static bool pool_take(const struct rl_global *g, const struct rl_rate *r, _Atomic int64_t *empty_at,
                      int64_t now, int64_t need, int64_t *taken, int64_t *level_out)
{
    int64_t old = atomic_load_explicit(empty_at, memory_order_relaxed);
    for (;;) {
        int64_t base = max_i64(old, now - r->capacity);
        int64_t level = now - base;
        if (level < need) {
            *level_out = level;
            return false;
        }
        int64_t topup = min_i64(r->batch, (level - need) / (2 * (int64_t)g->shards));
        if (atomic_compare_exchange_weak_explicit(empty_at, &old, base + need + topup,
                                                  memory_order_relaxed, memory_order_relaxed)) {
            *taken = need + topup;
            return true;
        }
    }
}

/* Returns n tokens to the pool; a full pool stays full. */
static void pool_put(const struct rl_rate *r, _Atomic int64_t *empty_at, int64_t now, int64_t n)
{
    int64_t old = atomic_load_explicit(empty_at, memory_order_relaxed);
    for (;;) {
        int64_t full = now - r->capacity;
        int64_t next = max_i64(max_i64(old, full) - n, full);
        if (next == old ||
            atomic_compare_exchange_weak_explicit(empty_at, &old, next,
                                                  memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* Takes n tokens whether or not they are there (settling a larger real usage),
 * but not below an empty bucket: a debt would make the wait for the next
 * request, and Retry-After, longer than the bucket's window, and one absurd
 * usage report would lock a key out for as long as it said. Never gives
 * tokens back (another shard's clock may read a little later than ours). */
static void pool_charge(const struct rl_global *g, const struct rl_rate *r, _Atomic int64_t *empty_at,
                        int64_t now, int64_t n)
{
    int64_t old = atomic_load_explicit(empty_at, memory_order_relaxed);
    for (;;) {
        /* cluster mode: below empty is a debt the sync thread pushes to the
         * store, where the shared bucket stops at empty instead */
        int64_t charged = max_i64(old, now - r->capacity) + n;
        int64_t next = g->cluster ? min_i64(charged, COST_MAX) : max_i64(old, min_i64(charged, now));
        if (atomic_compare_exchange_weak_explicit(empty_at, &old, next,
                                                  memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* Admits cost from the shard's lease, leasing from the pool when it runs dry.
 * On refusal the lease goes back to the pool (other shards may use it) and
 * *deficit says how many tokens are missing. */
static bool lease_take(const struct rl_global *g, const struct rl_rate *r, _Atomic int64_t *empty_at,
                       int64_t *lease, int64_t cost, uint64_t now_ns, int64_t *deficit)
{
    if (*lease >= cost) {
        *lease -= cost;
        return true;
    }
    note_pool_touch(g);
    int64_t now = rate_now(g, r, now_ns);
    int64_t need = cost - *lease, taken, level;
    if (pool_take(g, r, empty_at, now, need, &taken, &level)) {
        *lease += taken - cost;
        return true;
    }
    *deficit = need - level;
    if (*lease > 0) {
        pool_put(r, empty_at, now, *lease);
        *lease = 0;
    }
    return false;
}

/* Gives n tokens back: into the lease, and what would make it exceed a batch
 * back to the pool, so the error bound holds. */
static void lease_give(const struct rl_global *g, const struct rl_rate *r, _Atomic int64_t *empty_at,
                       int64_t *lease, int64_t n, uint64_t now_ns)
{
    *lease += n;
    if (*lease > r->batch) {
        note_pool_touch(g);
        pool_put(r, empty_at, rate_now(g, r, now_ns), *lease - r->batch);
        *lease = r->batch;
    }
}

static void lease_charge(const struct rl_global *g, const struct rl_rate *r, _Atomic int64_t *empty_at,
                         int64_t *lease, int64_t n, uint64_t now_ns)
{
    if (*lease >= n) {
        *lease -= n;
        return;
    }
    n -= *lease;
    *lease = 0;
    note_pool_touch(g);
    pool_charge(g, r, empty_at, rate_now(g, r, now_ns), n);
}

/* ---- daily quota -------------------------------------------------------- */

static int64_t utc_day(int64_t unix_s)
{
    return unix_s <= 0 ? 0 : min_i64(unix_s / SECONDS_PER_DAY, DAY_MAX);
}

static uint32_t seconds_to_utc_midnight(int64_t unix_s)
{
    int64_t into_day = unix_s <= 0 ? 0 : unix_s % SECONDS_PER_DAY;
    return (uint32_t)(SECONDS_PER_DAY - into_day);
}

static uint64_t quota_pack(int64_t day, uint64_t used)
{
    return (uint64_t)day << DAY_SHIFT | (used > USED_MASK ? USED_MASK : used);
}

/* The two daily allowances, the token quota and the spend cap, share one
 * mechanism: a packed day|used word per key and a lease per shard. */
struct day_pool {
    int64_t limit, batch;
    _Atomic uint64_t *state;
    _Atomic int64_t *shared_used;   /* cluster mode: the store's view */
};

struct day_lease {
    int64_t *left, *day;
};

static struct day_pool day_pool_of(const struct rl_global *g, enum rl_dim d)
{
    struct rl_global *m = (struct rl_global *)g;   /* the atomics only */
    if (d == RL_DIM_SPEND)
        return (struct day_pool){ g->spend, g->spend_batch, &m->spend_state, &m->shared_spend_used };
    return (struct day_pool){ g->daily, g->daily_batch, &m->daily_state, &m->shared_daily_used };
}

static struct day_lease day_lease_of(struct rl_local *l, enum rl_dim d)
{
    if (d == RL_DIM_SPEND)
        return (struct day_lease){ &l->spend, &l->spend_day };
    return (struct day_lease){ &l->daily, &l->daily_day };
}

/* What a pool has used of a day it has not seen yet: nothing, or in cluster
 * mode all of it (the host holds none of that day's allowance until leased). */
static uint64_t quota_fresh_used(const struct rl_global *g, const struct day_pool *q)
{
    return g->cluster ? (uint64_t)q->limit : 0;
}

/* The pool's use of `day` (a later day than the pool's is fresh). */
static int64_t quota_used_on(const struct rl_global *g, const struct day_pool *q, uint64_t state, int64_t day)
{
    return day == (int64_t)(state >> DAY_SHIFT) ? (int64_t)(state & USED_MASK)
                                                : (int64_t)quota_fresh_used(g, q);
}

/* Changes the pool's usage of `day` by delta; nothing when the pool has moved on
 * to a later day (that day's allowance is gone). */
static void quota_adjust(const struct rl_global *g, const struct day_pool *q, int64_t day, int64_t delta)
{
    note_pool_touch(g);
    uint64_t old = atomic_load_explicit(q->state, memory_order_relaxed);
    for (;;) {
        if ((int64_t)(old >> DAY_SHIFT) != day)
            return;
        int64_t used = (int64_t)(old & USED_MASK);
        int64_t next = delta < 0 ? used - min_i64(-delta, used) : min_i64(used + delta, (int64_t)USED_MASK);
        if (atomic_compare_exchange_weak_explicit(q->state, &old, quota_pack(day, (uint64_t)next),
                                                  memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* Takes `cost` for the shard, using its lease when that is of the pool's
 * current day, and leaving it a top-up. The day never goes back: a shard whose
 * clock still reads yesterday takes from today's pool. */
static bool quota_take(const struct rl_global *g, const struct day_pool *q, struct day_lease ls,
                       int64_t today, int64_t cost)
{
    note_pool_touch(g);
    uint64_t old = atomic_load_explicit(q->state, memory_order_relaxed);
    for (;;) {
        int64_t day = max_i64((int64_t)(old >> DAY_SHIFT), today);
        uint64_t used = (uint64_t)quota_used_on(g, q, old, day);
        int64_t have = *ls.day == day ? *ls.left : 0;
        int64_t need = cost - have;
        int64_t level = q->limit - (int64_t)used;
        if (level < need) {
            /* A lease, when there is one, is of the pool's current day (days
             * only move forward), so it can go back as it is. */
            if (have > 0)
                quota_adjust(g, q, day, -have);
            *ls.left = 0;
            return false;
        }
        int64_t topup = min_i64(q->batch, (level - need) / (2 * (int64_t)g->shards));
        if (atomic_compare_exchange_weak_explicit(q->state, &old,
                                                  quota_pack(day, used + (uint64_t)(need + topup)),
                                                  memory_order_relaxed, memory_order_relaxed)) {
            *ls.left = topup;
            *ls.day = day;
            return true;
        }
    }
}

/* Admits cost from a daily allowance: from the shard's lease when it covers it. */
static bool quota_admit(const struct rl_global *g, const struct day_pool *q, struct day_lease ls,
                        int64_t today, int64_t cost)
{
    if (*ls.day < today) {
        *ls.left = 0;   /* a lease of an earlier day: that allowance is gone */
        *ls.day = today;
    }
    if (*ls.left >= cost) {
        *ls.left -= cost;
        return true;
    }
    return quota_take(g, q, ls, today, cost);
}

/* Gives back (delta < 0) or takes over the limit (delta > 0) what a
 * settlement found, through the shard's lease when it is of the ticket's day. */
static void quota_settle(const struct rl_global *g, const struct day_pool *q, struct day_lease ls,
                         int64_t ticket_day, int64_t delta)
{
    if (*ls.day == ticket_day) {
        if (delta < 0) {
            *ls.left -= delta;
            if (*ls.left > q->batch) {
                delta = -(*ls.left - q->batch);
                *ls.left = q->batch;
            } else {
                delta = 0;
            }
        } else {
            int64_t from_lease = min_i64(*ls.left, delta);
            *ls.left -= from_lease;
            delta -= from_lease;
        }
    }
    if (delta != 0)
        quota_adjust(g, q, ticket_day, delta);
}

/* ---- admission and settlement ----------------------------------------- */

static bool deny(struct rl_verdict *out, enum rl_limit which, bool too_large, uint32_t retry_s)
{
    out->limit = which;
    out->too_large = too_large;
    out->retry_after_s = retry_s;
    return false;
}

static uint32_t retry_seconds(const struct rl_global *g, const struct rl_rate *r, int64_t deficit,
                              uint64_t now_ns)
{
    if (g->cluster) {
        /* this host's pool ran dry: what the shared bucket still holds comes
         * with the next lease, only the rest waits for the refill */
        int64_t shared = atomic_load_explicit(r == &g->req ? (_Atomic int64_t *)&g->shared_req
                                                           : (_Atomic int64_t *)&g->shared_tok,
                                              memory_order_relaxed);
        deficit -= shared > 0 ? min_i64(shared, deficit) : 0;
    }
    uint64_t wait = rate_wait_ns(g, r, deficit, now_ns);
    uint64_t s = wait / NS_PER_SECOND + (wait % NS_PER_SECOND != 0);
    return s < 1 ? 1 : s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

/* Cluster mode: demand the host's pool could not meet, for the sync thread. */
static void note_refused(const struct rl_global *g, struct rl_local *l, enum rl_dim d, int64_t n)
{
    if (!g->cluster)
        return;
    uint64_t v = atomic_load_explicit(&l->refused[d], memory_order_relaxed);
    atomic_store_explicit(&l->refused[d], v + (uint64_t)n, memory_order_relaxed);
}

/* Until 00:00 UTC; but in cluster mode, when what the store has left and what
 * this host's pool holds (the store counts that as used) cover the cost, as
 * soon as the next lease may bring the rest. */
static uint32_t quota_retry_seconds(const struct rl_global *g, enum rl_dim d, int64_t cost, int64_t now_unix_s)
{
    if (g->cluster) {
        struct day_pool q = day_pool_of(g, d);
        int64_t store_left = q.limit - atomic_load_explicit(q.shared_used, memory_order_relaxed);
        int64_t pool = rl_stock(g, d, utc_day(now_unix_s));
        if (max_i64(store_left, 0) + max_i64(pool, 0) >= cost)
            return 1;
    }
    return seconds_to_utc_midnight(now_unix_s);
}

bool rl_admit(struct rl_global *g, struct rl_local *l, uint64_t cost_tokens,
              uint64_t now_ns, int64_t now_unix_s, struct rl_verdict *out)
{
    return rl_admit_priced(g, l, cost_tokens, 0, now_ns, now_unix_s, out);
}

bool rl_admit_priced(struct rl_global *g, struct rl_local *l, uint64_t cost_tokens, uint64_t cost_spend,
                     uint64_t now_ns, int64_t now_unix_s, struct rl_verdict *out)
{
    memset(out, 0, sizeof *out);
    int64_t cost = (int64_t)clamp_u64(cost_tokens, COST_MAX);
    int64_t spend_cost = (int64_t)clamp_u64(cost_spend, COST_MAX);
    bool tokens = g->tok.per_minute && cost > 0;
    bool daily = g->daily && cost > 0;
    bool spend = g->spend && spend_cost > 0;
    if (tokens && cost > g->tok.capacity)
        return deny(out, RL_TOKENS, true, 0);
    if (daily && cost > g->daily)
        return deny(out, RL_QUOTA, true, 0);
    if (spend && spend_cost > g->spend)
        return deny(out, RL_SPEND, true, 0);

    int64_t deficit = 0;
    if (g->req.per_minute && !lease_take(g, &g->req, &g->req_empty_at, &l->req, 1, now_ns, &deficit)) {
        note_refused(g, l, RL_DIM_REQ, 1);
        return deny(out, RL_REQUESTS, false, retry_seconds(g, &g->req, deficit, now_ns));
    }
    if (tokens && !lease_take(g, &g->tok, &g->tok_empty_at, &l->tok, cost, now_ns, &deficit)) {
        if (g->req.per_minute)
            lease_give(g, &g->req, &g->req_empty_at, &l->req, 1, now_ns);
        note_refused(g, l, RL_DIM_TOK, cost);
        return deny(out, RL_TOKENS, false, retry_seconds(g, &g->tok, deficit, now_ns));
    }
    int64_t today = utc_day(now_unix_s);
    struct day_pool quota = day_pool_of(g, RL_DIM_DAILY);
    if (daily && !quota_admit(g, &quota, day_lease_of(l, RL_DIM_DAILY), today, cost)) {
        if (g->req.per_minute)
            lease_give(g, &g->req, &g->req_empty_at, &l->req, 1, now_ns);
        if (tokens)
            lease_give(g, &g->tok, &g->tok_empty_at, &l->tok, cost, now_ns);
        note_refused(g, l, RL_DIM_DAILY, cost);
        return deny(out, RL_QUOTA, false, quota_retry_seconds(g, RL_DIM_DAILY, cost, now_unix_s));
    }
    /* the quota's lease may be of a later day than this shard's clock says */
    int64_t day = daily ? l->daily_day : today;
    struct day_pool cap = day_pool_of(g, RL_DIM_SPEND);
    if (spend && !quota_admit(g, &cap, day_lease_of(l, RL_DIM_SPEND), day, spend_cost)) {
        if (g->req.per_minute)
            lease_give(g, &g->req, &g->req_empty_at, &l->req, 1, now_ns);
        if (tokens)
            lease_give(g, &g->tok, &g->tok_empty_at, &l->tok, cost, now_ns);
        if (daily)
            quota_settle(g, &quota, day_lease_of(l, RL_DIM_DAILY), day, -cost);
        note_refused(g, l, RL_DIM_SPEND, spend_cost);
        return deny(out, RL_SPEND, false, quota_retry_seconds(g, RL_DIM_SPEND, spend_cost, now_unix_s));
    }
    if (spend && l->spend_day != day) {
        /* the spend pool was already on a later day than the quota's lease:
         * the ticket's one day is the later one, where the spend was charged */
        if (daily)
            quota_settle(g, &quota, day_lease_of(l, RL_DIM_DAILY), day, -cost);
        day = l->spend_day;
        if (daily && !quota_admit(g, &quota, day_lease_of(l, RL_DIM_DAILY), day, cost)) {
            quota_settle(g, &cap, day_lease_of(l, RL_DIM_SPEND), day, -spend_cost);
            if (g->req.per_minute)
                lease_give(g, &g->req, &g->req_empty_at, &l->req, 1, now_ns);
            if (tokens)
                lease_give(g, &g->tok, &g->tok_empty_at, &l->tok, cost, now_ns);
            note_refused(g, l, RL_DIM_DAILY, cost);
            return deny(out, RL_QUOTA, false, quota_retry_seconds(g, RL_DIM_DAILY, cost, now_unix_s));
        }
    }
    out->ticket.tokens = (uint64_t)cost;
    out->ticket.spend = spend ? (uint64_t)spend_cost : 0;
    out->ticket.day = day;
    return true;
}

void rl_settle(struct rl_global *g, struct rl_local *l, const struct rl_ticket *t,
               uint64_t actual_tokens, uint64_t now_ns, int64_t now_unix_s)
{
    rl_settle_priced(g, l, t, actual_tokens, t->spend, now_ns, now_unix_s);
}

void rl_settle_priced(struct rl_global *g, struct rl_local *l, const struct rl_ticket *t,
                      uint64_t actual_tokens, uint64_t actual_spend, uint64_t now_ns, int64_t now_unix_s)
{
    int64_t reserved = (int64_t)clamp_u64(t->tokens, COST_MAX);
    int64_t actual = (int64_t)clamp_u64(actual_tokens, COST_MAX);
    if (actual != reserved) {
        if (g->tok.per_minute) {
            if (actual < reserved)
                lease_give(g, &g->tok, &g->tok_empty_at, &l->tok, reserved - actual, now_ns);
            else
                lease_charge(g, &g->tok, &g->tok_empty_at, &l->tok, actual - reserved, now_ns);
        }
        if (g->daily) {
            struct day_pool q = day_pool_of(g, RL_DIM_DAILY);
            quota_settle(g, &q, day_lease_of(l, RL_DIM_DAILY), t->day, actual - reserved);
        }
    }
    int64_t spent = (int64_t)clamp_u64(actual_spend, COST_MAX);
    int64_t spend_reserved = (int64_t)clamp_u64(t->spend, COST_MAX);
    if (g->spend && spent != spend_reserved) {
        struct day_pool q = day_pool_of(g, RL_DIM_SPEND);
        quota_settle(g, &q, day_lease_of(l, RL_DIM_SPEND), t->day, spent - spend_reserved);
    }
}

void rl_global_inherit(struct rl_global *g, const struct rl_global *old, uint64_t now_ns,
                       int64_t now_unix_s)
{
    if (g->req.per_minute && old->req.per_minute) {
        int64_t level = pool_level(&old->req, atomic_load_explicit(&old->req_empty_at, memory_order_relaxed),
                                   rate_now(old, &old->req, now_ns));
        atomic_store_explicit(&g->req_empty_at,
                              rate_now(g, &g->req, now_ns) - min_i64(level, g->req.capacity),
                              memory_order_relaxed);
    }
    if (g->tok.per_minute && old->tok.per_minute) {
        int64_t level = pool_level(&old->tok, atomic_load_explicit(&old->tok_empty_at, memory_order_relaxed),
                                   rate_now(old, &old->tok, now_ns));
        atomic_store_explicit(&g->tok_empty_at,
                              rate_now(g, &g->tok, now_ns) - min_i64(level, g->tok.capacity),
                              memory_order_relaxed);
    }
    if (g->daily && old->daily) {
        uint64_t s = atomic_load_explicit(&old->daily_state, memory_order_relaxed);
        if ((int64_t)(s >> DAY_SHIFT) >= utc_day(now_unix_s))
            atomic_store_explicit(&g->daily_state, s, memory_order_relaxed);
    }
    if (g->spend && old->spend) {
        uint64_t s = atomic_load_explicit(&old->spend_state, memory_order_relaxed);
        if ((int64_t)(s >> DAY_SHIFT) >= utc_day(now_unix_s))
            atomic_store_explicit(&g->spend_state, s, memory_order_relaxed);
    }
}

int64_t rl_utc_day(int64_t unix_s)
{
    return utc_day(unix_s);
}

static int64_t day_used(const struct rl_global *g, enum rl_dim d, int64_t today)
{
    struct day_pool q = day_pool_of(g, d);
    if (!q.limit)
        return 0;
    uint64_t s = atomic_load_explicit(q.state, memory_order_relaxed);
    return (int64_t)(s >> DAY_SHIFT) == today ? (int64_t)(s & USED_MASK) : 0;
}

static void day_restore(struct rl_global *g, enum rl_dim d, int64_t used, int64_t today)
{
    struct day_pool q = day_pool_of(g, d);
    if (!q.limit || used < 0 || today < 0 || today > DAY_MAX)
        return;
    atomic_store_explicit(q.state, quota_pack(today, (uint64_t)used), memory_order_relaxed);
}

int64_t rl_quota_used(const struct rl_global *g, int64_t today)
{
    return day_used(g, RL_DIM_DAILY, today);
}

void rl_quota_restore(struct rl_global *g, int64_t used, int64_t today)
{
    day_restore(g, RL_DIM_DAILY, used, today);
}

int64_t rl_spend_used(const struct rl_global *g, int64_t today)
{
    return day_used(g, RL_DIM_SPEND, today);
}

void rl_spend_restore(struct rl_global *g, int64_t used, int64_t today)
{
    day_restore(g, RL_DIM_SPEND, used, today);
}

/* ---- cluster mode -------------------------------------------------------- */

void rl_global_set_cluster(struct rl_global *g, int64_t now_unix_s)
{
    g->cluster = true;
    /* the unit clock reads 0 from now on: empty at 0 is an empty pool */
    atomic_store_explicit(&g->req_empty_at, 0, memory_order_relaxed);
    atomic_store_explicit(&g->tok_empty_at, 0, memory_order_relaxed);
    atomic_store_explicit(&g->daily_state, quota_pack(utc_day(now_unix_s), (uint64_t)g->daily),
                          memory_order_relaxed);
    atomic_store_explicit(&g->spend_state, quota_pack(utc_day(now_unix_s), (uint64_t)g->spend),
                          memory_order_relaxed);
    atomic_store_explicit(&g->shared_req, g->req.capacity, memory_order_relaxed);
    atomic_store_explicit(&g->shared_tok, g->tok.capacity, memory_order_relaxed);
    atomic_store_explicit(&g->shared_daily_used, 0, memory_order_relaxed);
    atomic_store_explicit(&g->shared_spend_used, 0, memory_order_relaxed);
}

bool rl_has_dim(const struct rl_global *g, enum rl_dim d)
{
    switch (d) {
    case RL_DIM_REQ: return g->req.per_minute != 0;
    case RL_DIM_TOK: return g->tok.per_minute != 0;
    case RL_DIM_SPEND: return g->spend != 0;
    default:         return g->daily != 0;
    }
}

static const struct rl_rate *dim_rate(const struct rl_global *g, enum rl_dim d)
{
    return d == RL_DIM_REQ ? &g->req : &g->tok;
}

static _Atomic int64_t *dim_word(struct rl_global *g, enum rl_dim d)
{
    return d == RL_DIM_REQ ? &g->req_empty_at : &g->tok_empty_at;
}

static bool is_day_dim(enum rl_dim d)
{
    return d == RL_DIM_DAILY || d == RL_DIM_SPEND;
}

/* The day word moved to `today` if it is of an earlier day (empty in cluster
 * mode, where this is used). Returns the state current for today. */
static uint64_t quota_roll(const struct rl_global *g, const struct day_pool *q, int64_t today)
{
    uint64_t old = atomic_load_explicit(q->state, memory_order_relaxed);
    while ((int64_t)(old >> DAY_SHIFT) < today) {
        if (atomic_compare_exchange_weak_explicit(q->state, &old,
                                                  quota_pack(today, quota_fresh_used(g, q)),
                                                  memory_order_relaxed, memory_order_relaxed))
            return quota_pack(today, quota_fresh_used(g, q));
    }
    return old;
}

int64_t rl_stock(const struct rl_global *g, enum rl_dim d, int64_t today)
{
    if (!rl_has_dim(g, d))
        return 0;
    if (is_day_dim(d)) {
        struct day_pool q = day_pool_of(g, d);
        uint64_t s = atomic_load_explicit(q.state, memory_order_relaxed);
        int64_t day = max_i64((int64_t)(s >> DAY_SHIFT), today);
        return q.limit - quota_used_on(g, &q, s, day);
    }
    const struct rl_rate *r = dim_rate(g, d);
    int64_t empty_at = atomic_load_explicit(dim_word((struct rl_global *)g, d), memory_order_relaxed);
    return pool_level(r, empty_at, rate_now(g, r, 0));
}

/* Moves the pool's level by delta (> 0 adds, < 0 takes), keeping it within
 * [floor, capacity]; returns the change made. */
static int64_t stock_move(struct rl_global *g, enum rl_dim d, int64_t delta, int64_t floor, int64_t today)
{
    if (!rl_has_dim(g, d) || delta == 0)
        return 0;
    if (is_day_dim(d)) {
        struct day_pool q = day_pool_of(g, d);
        uint64_t old = quota_roll(g, &q, today);
        for (;;) {
            int64_t day = (int64_t)(old >> DAY_SHIFT);
            int64_t used = (int64_t)(old & USED_MASK);
            int64_t level = q.limit - used;
            int64_t next = delta > 0 ? min_i64(level + delta, q.limit) : max_i64(level + delta, floor);
            if (delta > 0 ? next <= level : next >= level)
                return 0;
            if (atomic_compare_exchange_weak_explicit(q.state, &old,
                                                      quota_pack(day, (uint64_t)(q.limit - next)),
                                                      memory_order_relaxed, memory_order_relaxed))
                return next - level;
        }
    }
    const struct rl_rate *r = dim_rate(g, d);
    _Atomic int64_t *word = dim_word(g, d);
    int64_t old = atomic_load_explicit(word, memory_order_relaxed);
    for (;;) {
        int64_t level = pool_level(r, old, 0);
        int64_t next = delta > 0 ? min_i64(level + delta, r->capacity) : max_i64(level + delta, floor);
        if (delta > 0 ? next <= level : next >= level)
            return 0;
        if (atomic_compare_exchange_weak_explicit(word, &old, -next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return next - level;
    }
}

int64_t rl_stock_add(struct rl_global *g, enum rl_dim d, int64_t n, int64_t today)
{
    return n > 0 ? stock_move(g, d, min_i64(n, COST_MAX), 0, today) : 0;
}

int64_t rl_stock_take(struct rl_global *g, enum rl_dim d, int64_t max, int64_t today)
{
    return max > 0 ? -stock_move(g, d, -min_i64(max, COST_MAX), 0, today) : 0;
}

int64_t rl_stock_charge(struct rl_global *g, enum rl_dim d, int64_t n, int64_t today)
{
    return n > 0 ? -stock_move(g, d, -min_i64(n, COST_MAX), -COST_MAX, today) : 0;
}

int64_t rl_stock_drain(struct rl_global *g, enum rl_dim d, int64_t today)
{
    if (!rl_has_dim(g, d))
        return 0;
    if (is_day_dim(d)) {
        struct day_pool q = day_pool_of(g, d);
        uint64_t old = quota_roll(g, &q, today);
        while (!atomic_compare_exchange_weak_explicit(q.state, &old,
                                                      quota_pack((int64_t)(old >> DAY_SHIFT), (uint64_t)q.limit),
                                                      memory_order_relaxed, memory_order_relaxed))
            ;
        return q.limit - (int64_t)(old & USED_MASK);
    }
    const struct rl_rate *r = dim_rate(g, d);
    int64_t old = atomic_exchange_explicit(dim_word(g, d), 0, memory_order_relaxed);
    return pool_level(r, old, 0);
}

void rl_global_set_touch(struct rl_global *g, _Atomic uint64_t *word, unsigned bit)
{
    g->touched_word = word;
    g->touched_bit = UINT64_C(1) << (bit & 63);
}

uint64_t rl_refused_sum(const struct rl_local *l, size_t stride, unsigned shards, enum rl_dim d)
{
    uint64_t sum = 0;
    for (unsigned s = 0; s < shards; s++)
        sum += atomic_load_explicit((_Atomic uint64_t *)&l[(size_t)s * stride].refused[d],
                                    memory_order_relaxed);
    return sum;
}

void rl_shared_publish(struct rl_global *g, int64_t req_level, int64_t tok_level, int64_t daily_used)
{
    atomic_store_explicit(&g->shared_req, req_level, memory_order_relaxed);
    atomic_store_explicit(&g->shared_tok, tok_level, memory_order_relaxed);
    atomic_store_explicit(&g->shared_daily_used, daily_used, memory_order_relaxed);
}

void rl_shared_publish_spend(struct rl_global *g, int64_t spend_used)
{
    atomic_store_explicit(&g->shared_spend_used, spend_used, memory_order_relaxed);
}

/* ---- headers ------------------------------------------------------------ */

static void rate_status(const struct rl_global *g, const struct rl_rate *r, const _Atomic int64_t *empty_at,
                        int64_t lease, uint64_t now_ns,
                        uint64_t *limit, uint64_t *remaining, uint64_t *reset_ms)
{
    /* the bucket's size: what may be spent at once, so remaining never exceeds
     * it (the per-minute figure itself with the default 60 s burst) */
    *limit = r->per_minute ? (uint64_t)r->capacity : 0;
    *remaining = *reset_ms = 0;
    if (!r->per_minute)
        return;
    int64_t now = rate_now(g, r, now_ns);
    int64_t level = pool_level(r, atomic_load_explicit((_Atomic int64_t *)empty_at, memory_order_relaxed), now)
                    + lease;
    if (g->cluster)     /* the host's pool and lease plus what the shared bucket holds */
        level += atomic_load_explicit(r == &g->req ? (_Atomic int64_t *)&g->shared_req
                                                   : (_Atomic int64_t *)&g->shared_tok,
                                      memory_order_relaxed);
    *remaining = level <= 0 ? 0 : (uint64_t)min_i64(level, r->capacity);
    uint64_t wait = rate_wait_ns(g, r, r->capacity - level, now_ns);
    *reset_ms = wait / 1000000 + (wait % 1000000 != 0);
}

/* What is left of a daily allowance today: the pool and this shard's lease
 * (and in cluster mode what the store has left). */
static uint64_t day_left(const struct rl_global *g, const struct rl_local *l, enum rl_dim d, int64_t now_unix_s)
{
    struct day_pool q = day_pool_of(g, d);
    struct day_lease ls = day_lease_of((struct rl_local *)l, d);
    int64_t today = utc_day(now_unix_s);
    uint64_t s = atomic_load_explicit(q.state, memory_order_relaxed);
    int64_t day = max_i64((int64_t)(s >> DAY_SHIFT), today);
    int64_t left = q.limit - quota_used_on(g, &q, s, day) + (*ls.day == day ? *ls.left : 0);
    if (g->cluster)     /* the host's pool and lease plus what the store has left */
        left += q.limit - atomic_load_explicit(q.shared_used, memory_order_relaxed);
    return left <= 0 ? 0 : (uint64_t)min_i64(left, q.limit);
}

void rl_status(const struct rl_global *g, const struct rl_local *l, uint64_t now_ns,
               int64_t now_unix_s, struct rl_status *out)
{
    memset(out, 0, sizeof *out);
    rate_status(g, &g->req, &g->req_empty_at, l->req, now_ns,
                &out->limit_requests, &out->remaining_requests, &out->reset_requests_ms);
    rate_status(g, &g->tok, &g->tok_empty_at, l->tok, now_ns,
                &out->limit_tokens, &out->remaining_tokens, &out->reset_tokens_ms);
    if (g->daily) {
        out->limit_daily = (uint64_t)g->daily;
        out->remaining_daily = day_left(g, l, RL_DIM_DAILY, now_unix_s);
        out->reset_daily_s = seconds_to_utc_midnight(now_unix_s);
    }
    if (g->spend) {
        out->limit_spend = (uint64_t)g->spend;
        out->remaining_spend = day_left(g, l, RL_DIM_SPEND, now_unix_s);
        out->reset_daily_s = seconds_to_utc_midnight(now_unix_s);
    }
}

const char *rl_limit_name(enum rl_limit which)
{
    switch (which) {
    case RL_REQUESTS: return "requests";
    case RL_TOKENS:   return "tokens";
    case RL_QUOTA:    return "quota";
    case RL_SPEND:    return "spend";
    case RL_UNAVAILABLE: return "limits_unavailable";
    default:          return "";
    }
}

/* Every AI answer formats these: outbuf's digits are cheaper than snprintf's
 * format machinery. "1h2m3.5s", "250ms", "0s". */
static void put_duration(struct outbuf *o, uint64_t ms)
{
    if (ms < 1000) {
        outbuf_u64(o, ms);
        outbuf_str(o, ms ? "ms" : "s");
        return;
    }
    uint64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
    if (h) {
        outbuf_u64(o, h);
        OUTBUF_LIT(o, "h");
    }
    if (h || m) {
        outbuf_u64(o, m);
        OUTBUF_LIT(o, "m");
    }
    outbuf_u64(o, s);
    if (frac) {
        char digits[3] = { (char)('0' + frac / 100), (char)('0' + frac / 10 % 10),
                           (char)('0' + frac % 10) };
        size_t k = 3;
        while (digits[k - 1] == '0')
            k--;
        OUTBUF_LIT(o, ".");
        outbuf_put(o, digits, k);
    }
    OUTBUF_LIT(o, "s");
}

size_t rl_format_duration(char *buf, size_t cap, uint64_t ms)
{
    char tmp[64];
    struct outbuf o = outbuf_make(tmp, sizeof tmp);
    put_duration(&o, ms);
    if (cap > o.len) {
        memcpy(buf, tmp, o.len);
        buf[o.len] = '\0';
    }
    return o.len;
}

static void put_dimension(struct outbuf *o, const char *dim, uint64_t limit, uint64_t remaining,
                          uint64_t reset_ms)
{
    if (!limit)
        return;
    OUTBUF_LIT(o, "x-ratelimit-limit-");
    outbuf_str(o, dim);
    OUTBUF_LIT(o, ": ");
    outbuf_u64(o, limit);
    OUTBUF_LIT(o, "\r\nx-ratelimit-remaining-");
    outbuf_str(o, dim);
    OUTBUF_LIT(o, ": ");
    outbuf_u64(o, remaining);
    OUTBUF_LIT(o, "\r\nx-ratelimit-reset-");
    outbuf_str(o, dim);
    OUTBUF_LIT(o, ": ");
    put_duration(o, reset_ms);
    OUTBUF_LIT(o, "\r\n");
}

size_t rl_headers_write(char *buf, size_t cap, const struct rl_status *s)
{
    if (cap == 0)
        return 0;
    struct outbuf o = outbuf_make(buf, cap - 1);    /* and the NUL */
    put_dimension(&o, "requests", s->limit_requests, s->remaining_requests, s->reset_requests_ms);
    put_dimension(&o, "tokens", s->limit_tokens, s->remaining_tokens, s->reset_tokens_ms);
    size_t n = outbuf_done(&o);
    buf[n] = '\0';
    return n;
}
