/* The limits sync thread: see sync.h.
 *
 * One turn of the loop: follow the newest generation (handing stock over by
 * key NAME), then, with [cluster], either sync with Redis (every sync_interval,
 * or at once when woken) or, while Redis is down, try to reconnect on a backoff
 * schedule and, under on_redis_down = local, refill the pools at this host's
 * share; and always snapshot_tick. Nothing here is on the request path: shards
 * only read what it leaves in the pools and cluster_admission_state.
 *
 * Tokens in flight: a batch's returns and debts leave the pools when the batch
 * is built and belong to it until Redis acknowledges it. A batch whose call
 * failed waits in the outbox and is sent again, with the same seq, before
 * anything new, so the script applies it exactly once (it replays a seen seq)
 * and nothing is lost or counted twice, whatever the pools did meanwhile. */
#include "cluster/sync.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cluster/lease.h"
#include "cluster/redis.h"
#include "cluster/snapshot.h"
#include "core/admission.h"
#include "core/config.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/shard.h"
#include "policy/keys.h"
#include "policy/ratelimit.h"
#include "util/clock.h"
#include "core/metrics.h"
#include "util/outbuf.h"

_Atomic int cluster_admission_state = CLUSTER_ADMIT_NORMAL;

/* Ops per script call: bounds the script's run time on Redis (one call blocks
 * every other client of that Redis while it runs). */
#define SYNC_CHUNK        256
#define BACKOFF_FIRST_MS  100
#define BACKOFF_MAX_MS    2000
/* Without [cluster], the thread wakes this often for snapshot_tick. */
#define IDLE_TURN_MS      250

/* ---- metrics: written by this thread only, read by the admin thread ---- */

#define SYNC_NBUCKETS 11
static const uint64_t sync_le_us[SYNC_NBUCKETS] = { 500, 1000, 2500, 5000, 10000, 25000, 50000,
                                                    100000, 250000, 500000, 1000000 };
static const char *const sync_le_text[SYNC_NBUCKETS] = { "0.0005", "0.001", "0.0025", "0.005", "0.01",
                                                         "0.025", "0.05", "0.1", "0.25", "0.5", "1" };
enum { LEASE_TAKEN, LEASE_RETURNED };

static struct {
    _Atomic bool enabled;           /* [cluster] in force: the families are shown */
    _Atomic bool redis_up;
    _Atomic uint32_t hosts;
    _Atomic uint64_t syncs;
    _Atomic uint64_t duration_bucket[SYNC_NBUCKETS + 1];    /* the last one: +Inf */
    _Atomic uint64_t duration_sum_us;
    _Atomic uint64_t leased[RL_DIMS][2];
    _Atomic uint64_t errors[REDIS_E_COUNT];
} sm;

static void metric_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

static void metric_observe_sync(uint64_t us)
{
    unsigned b = 0;
    while (b < SYNC_NBUCKETS && us > sync_le_us[b])
        b++;
    metric_add(&sm.duration_bucket[b], 1);
    metric_add(&sm.duration_sum_us, us);
    metric_add(&sm.syncs, 1);
}

/* ---- the thread's state ---- */

/* What the thread remembers of one key of its generation between turns. */
struct key_sync {
    int64_t last_stock[RL_DIMS];    /* the pool's level after this thread last changed it */
    uint64_t last_refused[RL_DIMS]; /* rl_refused_sum then */
    int64_t give_back[RL_DIMS];     /* granted beyond what the pool holds, or handed over
                                     * from a reload: returned in the next batch */
    int64_t owe[RL_DIMS];           /* debts to push in the next batch (outage tallies) */
    int64_t carry_day;              /* the UTC day give_back and owe of the quota are of */
    int64_t made_locally[RL_DIMS];  /* granted by this host itself during an outage */
    uint64_t refill_carry[2];       /* fractions of a token of the local refill */
    struct lease_hold hold[RL_DIMS];/* a lease kept for a request larger than a share */
    int64_t daily_used_seen;        /* the day's use over all hosts, as Redis last said */
    int64_t spend_used_seen;        /* the same of the spend cap (micro-USD) */
    int64_t daily_seen_day;         /* the day of both */
    unsigned quiet_turns;           /* turns since a shard last touched the key's pools */
};

/* A key untouched by the shards for this many turns is looked at only by the
 * sweeps (its lease has settled: an idle host's decays to floor in two), so a
 * turn costs what the active keys cost, not the whole keys file. */
#define QUIET_TURNS 4
/* Every key is looked at this often regardless (hosts joining or leaving
 * change every share and floor), and at each new UTC day. */
#define SWEEP_MS 1000

/* Ops built and not yet acknowledged by Redis, oldest first. The head chunk,
 * once sent, keeps its ops and seq until a call with them succeeds. */
struct outbox {
    struct lease_op *ops;
    char (*names)[KEY_NAME_MAX + 1];
    int32_t *key;                   /* index in the current generation; -1: none (gone) */
    size_t head, n, cap;
    size_t inflight;                /* ops from head sent once under inflight_seq; 0: none */
    uint64_t inflight_seq;
};

static struct syncer {
    struct gen *g;
    struct key_sync *keys;          /* per key of g */
    uint64_t *recent;               /* a bit per key looked at lately or with something
                                     * pending: looked at again next turn */
    unsigned nkeys;
    struct key_name_index *names;   /* g's keys by NAME */

    struct cfg_cluster cl;          /* the [cluster] in force (cl.enabled false: none) */
    struct redis_link *link;
    uint64_t host_id, seq;
    uint32_t hosts;                 /* as the last reply said, >= 1 */
    struct outbox out;

    bool down;                      /* Redis unreachable (since down_since_ms) */
    enum redis_error down_error;
    uint64_t down_since_ms, retry_at_ms, backoff_ms;
    uint64_t next_sync_ms;
    uint64_t next_sweep_ms;
    int64_t swept_day;
    uint64_t last_refill_ns;
    int64_t clock_shift_s;          /* AIGW_TEST_CLOCK_SHIFT_S, as the shards read it */
    uint64_t rng;
} S;

static pthread_t sync_thread;
static int wake_fd = -1;
static _Atomic bool stopping;
static _Atomic bool shards_gone;    /* set by limits_sync_stop: no shard touches its rl_local again */
static bool running;

static int64_t unix_now(void)
{
    return (int64_t)(clock_wall_us() / 1000000u) + S.clock_shift_s;
}

static int64_t today(void)
{
    return rl_utc_day(unix_now());
}

static uint64_t random64(void)
{
    uint64_t v;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) == (ssize_t)sizeof v)
        return v;
    return clock_wall_us() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid() << 32 ^ clock_mono_ns();
}

/* xorshift64*: jitter only */
static uint64_t jitter_next(void)
{
    S.rng ^= S.rng >> 12;
    S.rng ^= S.rng << 25;
    S.rng ^= S.rng >> 27;
    return S.rng * 0x2545f4914f6cdd1dULL;
}

static const char *const dim_label[RL_DIMS] = { "requests", "tokens", "quota", "spend" };

/* ---- per-generation key state ---- */

static bool key_has_limits(const struct rl_global *rg)
{
    for (int d = 0; d < RL_DIMS; d++)
        if (rl_has_dim(rg, (enum rl_dim)d))
            return true;
    return false;
}

/* The daily quota and the spend cap: allowances of a UTC day, not buckets. */
static bool is_day_dim(int d)
{
    return d == RL_DIM_DAILY || d == RL_DIM_SPEND;
}

static int64_t day_limit(const struct rl_global *rg, int d)
{
    return d == RL_DIM_SPEND ? rg->spend : rg->daily;
}

/* The day's use over all hosts of a day dimension, as Redis last said. */
static int64_t day_used_seen(const struct key_sync *ks, int d, int64_t day)
{
    if (ks->daily_seen_day != day)
        return 0;
    return d == RL_DIM_SPEND ? ks->spend_used_seen : ks->daily_used_seen;
}

static unsigned gen_nkeys(const struct gen *g)
{
    return g->rl_global ? keyring_count(g->cfg->keys.ring) : 0;
}

static const char *key_name(const struct gen *g, unsigned k)
{
    return keyring_entry(g->cfg->keys.ring, k)->name;
}

static uint64_t refused_sum(const struct gen *g, unsigned k, enum rl_dim d)
{
    return rl_refused_sum(&g->rl_local[k], g->rl_stride, g->nshards, d);
}

/* A day's quota is worth nothing the next day: what was to be given back or
 * charged for it is dropped at midnight, never applied to the new day. */
static void carry_roll(struct key_sync *ks, int64_t day)
{
    if (ks->carry_day != day) {
        ks->give_back[RL_DIM_DAILY] = ks->owe[RL_DIM_DAILY] = 0;
        ks->give_back[RL_DIM_SPEND] = ks->owe[RL_DIM_SPEND] = 0;
        ks->carry_day = day;
    }
}

/* Measures from here: the pools as they are now, refusals counted so far. */
static void key_rebase(const struct gen *g, unsigned k, struct key_sync *ks, int64_t day)
{
    for (int d = 0; d < RL_DIMS; d++) {
        ks->last_stock[d] = rl_stock(&g->rl_global[k], (enum rl_dim)d, day);
        ks->last_refused[d] = refused_sum(g, k, (enum rl_dim)d);
    }
}

/* Builds the key state for S.g (keeping what the previous one owed by NAME is
 * the caller's business). false: out of memory (logged; keys get no leases). */
static bool keys_build(void)
{
    free(S.keys);
    free(S.recent);
    admission_name_index_free(S.names);
    S.nkeys = gen_nkeys(S.g);
    S.keys = S.nkeys ? calloc(S.nkeys, sizeof *S.keys) : NULL;
    S.recent = S.nkeys ? calloc((S.nkeys + 63) / 64, sizeof *S.recent) : NULL;
    S.names = S.nkeys ? admission_name_index_new(S.g) : NULL;
    if (S.nkeys && (!S.keys || !S.recent || !S.names)) {
        log_error("limits sync: out of memory for %u keys; their limits get no leases", S.nkeys);
        free(S.keys);
        free(S.recent);
        admission_name_index_free(S.names);
        S.keys = NULL;
        S.recent = NULL;
        S.names = NULL;
        S.nkeys = 0;
        return false;
    }
    S.next_sweep_ms = 0;    /* a new generation: every key is looked at next turn */
    int64_t day = today();
    for (unsigned k = 0; k < S.nkeys; k++)
        key_rebase(S.g, k, &S.keys[k], day);
    return true;
}

/* ---- the outbox ---- */

static bool outbox_empty(const struct outbox *o)
{
    return o->head == o->n;
}

static struct lease_op *outbox_push(struct outbox *o, const char *name, int32_t key)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        struct lease_op *ops = realloc(o->ops, cap * sizeof *ops);
        if (ops)
            o->ops = ops;
        char (*names)[KEY_NAME_MAX + 1] = ops ? realloc(o->names, cap * sizeof *names) : NULL;
        if (names)
            o->names = names;
        int32_t *keys = names ? realloc(o->key, cap * sizeof *keys) : NULL;
        if (!keys)
            return NULL;
        o->key = keys;
        o->cap = cap;
    }
    size_t i = o->n++;
    memset(&o->ops[i], 0, sizeof o->ops[i]);
    snprintf(o->names[i], sizeof o->names[i], "%s", name);
    o->key[i] = key;
    return &o->ops[i];
}

static void outbox_clear(struct outbox *o)
{
    o->head = o->n = o->inflight = 0;
}

/* The outbox's ops name keys of the generation they were built for: point
 * them at the same NAMEs in the new one (or nowhere). */
static void outbox_rekey(struct outbox *o)
{
    for (size_t i = o->head; i < o->n; i++)
        o->key[i] = (int32_t)admission_name_index_find(S.names, o->names[i]);
}

static void op_set_limits(struct lease_op *op, const struct rl_global *rg, int64_t day)
{
    op->day = day;
    op->rate[RL_DIM_REQ].per_minute = rg->req.per_minute;
    op->rate[RL_DIM_REQ].capacity = rg->req.capacity;
    op->rate[RL_DIM_TOK].per_minute = rg->tok.per_minute;
    op->rate[RL_DIM_TOK].capacity = rg->tok.capacity;
    op->daily.limit = rg->daily;
    op->spend.limit = rg->spend;
}

static struct lease_day_op *op_day(struct lease_op *op, int d)
{
    return d == RL_DIM_SPEND ? &op->spend : &op->daily;
}

static int64_t *op_want(struct lease_op *op, int d)
{
    return is_day_dim(d) ? &op_day(op, d)->want : &op->rate[d].want;
}

static int64_t *op_ret(struct lease_op *op, int d)
{
    return is_day_dim(d) ? &op_day(op, d)->ret : &op->rate[d].ret;
}

static int64_t *op_debt(struct lease_op *op, int d)
{
    return is_day_dim(d) ? &op_day(op, d)->debt : &op->rate[d].debt;
}

/* amount > 0: give it back; < 0: a debt to push. */
static void op_put(struct lease_op *op, enum rl_dim d, int64_t amount)
{
    if (amount > 0)
        *op_ret(op, d) += amount;
    else
        *op_debt(op, d) -= amount;
}

static bool op_is_empty(struct lease_op *op)
{
    for (int d = 0; d < RL_DIMS; d++)
        if (*op_want(op, d) || *op_ret(op, d) || *op_debt(op, d))
            return false;
    return true;
}

/* Queues stock (or debt) of a key no generation holds any more, with the limits
 * it had, so Redis gets it back. */
static void give_back_orphan(const char *name, const struct rl_global *rg, const int64_t amount[RL_DIMS])
{
    bool any = false;
    for (int d = 0; d < RL_DIMS; d++)
        any |= amount[d] != 0;
    if (!any || !S.cl.enabled)
        return;
    struct lease_op *op = outbox_push(&S.out, name, -1);
    if (!op) {
        log_warn("limits sync: out of memory; key '%s' leases are stranded until they expire", name);
        return;
    }
    op_set_limits(op, rg, today());
    for (int d = 0; d < RL_DIMS; d++)
        op_put(op, (enum rl_dim)d, amount[d]);
}

/* ---- Redis up and down ---- */

static enum cluster_admission down_mode(void)
{
    switch (S.cl.on_redis_down) {
    case REDIS_DOWN_DENY:  return CLUSTER_ADMIT_DENY;
    case REDIS_DOWN_ALLOW: return CLUSTER_ADMIT_ALLOW;
    default:               return CLUSTER_ADMIT_LOCAL;
    }
}

static void schedule_retry(uint64_t now_ms)
{
    /* the wait is backoff_ms, give or take a quarter, so hosts do not reconnect in step */
    uint64_t quarter = S.backoff_ms / 4;
    uint64_t wait = S.backoff_ms - quarter + (quarter ? jitter_next() % (2 * quarter + 1) : 0);
    S.retry_at_ms = now_ms + wait;
    S.backoff_ms = S.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : S.backoff_ms * 2;
}

/* The outage starts: what each key may still grant on its own is its share of
 * what was left of the day when Redis was last seen. */
static void went_down(enum redis_error e, const char *why, uint64_t now_ms)
{
    metric_add(&sm.errors[e], 1);
    atomic_store_explicit(&sm.redis_up, false, memory_order_relaxed);
    if (S.down) {
        schedule_retry(now_ms);
        return;
    }
    S.down = true;
    S.down_error = e;
    S.down_since_ms = now_ms;
    S.backoff_ms = BACKOFF_FIRST_MS;
    schedule_retry(now_ms);
    enum cluster_admission mode = down_mode();
    atomic_store_explicit(&cluster_admission_state, mode, memory_order_relaxed);
    const char *addr = S.cl.redis.text;
    if (mode == CLUSTER_ADMIT_LOCAL) {
        log_warn("limits sync: Redis %s unreachable (%s: %s); on_redis_down = local: enforcing 1/%u of each "
                 "limit locally until it is back", addr, redis_error_name(e), why, S.hosts);
        S.last_refill_ns = clock_mono_ns();
        for (unsigned k = 0; k < S.nkeys; k++) {
            memset(S.keys[k].made_locally, 0, sizeof S.keys[k].made_locally);
            memset(S.keys[k].refill_carry, 0, sizeof S.keys[k].refill_carry);
        }
    } else {
        log_warn("limits sync: Redis %s unreachable (%s: %s); on_redis_down = %s: keys with limits are %s until "
                 "it is back", addr, redis_error_name(e), why, mode == CLUSTER_ADMIT_DENY ? "deny" : "allow",
                 mode == CLUSTER_ADMIT_DENY ? "refused (429 limits_unavailable)" : "admitted unmetered");
    }
}

/* Redis answered again. What this host granted itself meanwhile is owed to the
 * store: the daily quota's whole tally (it is use of the day), and of the rate
 * buckets what of it is still in the pools (what was admitted belongs to a
 * window the shared buckets have refilled since). Pushed with the next batch:
 * once in a batch, a debt goes with its seq and cannot be applied twice. */
static void came_back(uint64_t now_ms)
{
    atomic_store_explicit(&sm.redis_up, true, memory_order_relaxed);
    if (!S.down)
        return;
    S.down = false;
    bool local = cluster_admission_mode() == CLUSTER_ADMIT_LOCAL;
    int64_t day = today();
    if (local) {
        for (unsigned k = 0; k < S.nkeys; k++) {
            struct key_sync *ks = &S.keys[k];
            carry_roll(ks, day);
            for (int d = 0; d < RL_DIMS; d++) {
                int64_t owed = ks->made_locally[d];
                if (!is_day_dim(d)) {
                    int64_t stock = rl_stock(&S.g->rl_global[k], (enum rl_dim)d, day);
                    owed = owed < stock ? owed : stock > 0 ? stock : 0;
                }
                ks->owe[d] += owed;
                ks->made_locally[d] = 0;
            }
        }
    }
    atomic_store_explicit(&cluster_admission_state, CLUSTER_ADMIT_NORMAL, memory_order_relaxed);
    S.next_sweep_ms = 0;    /* every key: the tallies to push, and the store's view to catch up with */
    log_info("limits sync: Redis %s reachable again after %" PRIu64 " ms; limits are shared again%s",
             S.cl.redis.text, now_ms - S.down_since_ms,
             local ? " (what this host granted meanwhile is charged to the store)" : "");
}

static bool ensure_connected(uint64_t now_ms)
{
    if (redis_link_connected(S.link))
        return true;
    if (S.down && now_ms < S.retry_at_ms)
        return false;
    char err[256] = "";
    enum redis_error e = redis_link_connect(S.link, &S.cl, err, sizeof err);
    if (e != REDIS_OK) {
        went_down(e, err, clock_mono_ms());
        return false;
    }
    return true;
}

/* ---- applying a reply ---- */

static void apply_result(const struct lease_op *op, int32_t key, const struct lease_result *r, int64_t day)
{
    const int64_t sent_ret[RL_DIMS] = { op->rate[0].ret, op->rate[1].ret, op->daily.ret, op->spend.ret };
    for (int d = 0; d < RL_DIMS; d++) {
        if (r->granted[d] > 0)
            metric_add(&sm.leased[d][LEASE_TAKEN], (uint64_t)r->granted[d]);
        if (sent_ret[d] > 0)
            metric_add(&sm.leased[d][LEASE_RETURNED], (uint64_t)sent_ret[d]);
    }
    if (key < 0 || (unsigned)key >= S.nkeys) {
        /* the key went away while its lease was on the way: give it straight
         * back (op lives in the outbox, which the give-back may move) */
        char name[KEY_NAME_MAX + 1];
        snprintf(name, sizeof name, "%s", op->name);
        int64_t back[RL_DIMS] = { r->granted[0], r->granted[1], r->granted[2], r->granted[3] };
        for (int d = 0; d < RL_DIMS; d++)
            if (back[d] < 0)
                back[d] = 0;
        struct rl_global none;
        memset(&none, 0, sizeof none);
        none.req.per_minute = op->rate[0].per_minute;
        none.req.capacity = op->rate[0].capacity;
        none.tok.per_minute = op->rate[1].per_minute;
        none.tok.capacity = op->rate[1].capacity;
        none.daily = op->daily.limit;
        none.spend = op->spend.limit;
        give_back_orphan(name, &none, back);
        return;
    }
    struct rl_global *rg = &S.g->rl_global[key];
    struct key_sync *ks = &S.keys[key];
    carry_roll(ks, day);
    for (int d = 0; d < RL_DIMS; d++) {
        int64_t granted = r->granted[d];
        if (granted <= 0)
            continue;
        if (is_day_dim(d) && op->day != day)
            continue;   /* a grant of a day that is over: that allowance is gone */
        int64_t fit = rl_stock_add(rg, (enum rl_dim)d, granted, day);
        ks->last_stock[d] += fit;
        ks->give_back[d] += granted - fit;
        if (granted > fit)
            S.recent[key / 64] |= UINT64_C(1) << (key % 64);
    }
    rl_shared_publish(rg, r->req_level, r->tok_level, r->daily_used);
    rl_shared_publish_spend(rg, r->spend_used);
    ks->daily_used_seen = r->daily_used;
    ks->spend_used_seen = r->spend_used;
    ks->daily_seen_day = op->day;
}

/* Sends the outbox, chunk by chunk, the failed chunk first with its seq. Stops
 * at the first failure (Redis is then down) or, when deadline_ms is not 0,
 * once it passed. An empty outbox is a heartbeat: it keeps this host counted
 * in the store's hosts. Returns true when everything was acknowledged. */
static bool flush(uint64_t deadline_ms)
{
    static struct lease_result res[SYNC_CHUNK];
    bool heartbeat = outbox_empty(&S.out);
    while (heartbeat || !outbox_empty(&S.out)) {
        uint64_t now_ms = clock_mono_ms();
        if (deadline_ms && now_ms >= deadline_ms)
            return false;
        if (!ensure_connected(now_ms))
            return false;
        struct outbox *o = &S.out;
        size_t n = o->inflight ? o->inflight : o->n - o->head;
        if (n > SYNC_CHUNK)
            n = SYNC_CHUNK;
        if (!o->inflight) {
            o->inflight = n;
            o->inflight_seq = ++S.seq;
        }
        for (size_t i = 0; i < n; i++)
            o->ops[o->head + i].name = o->names[o->head + i];
        uint32_t hosts = 0;
        char err[256] = "";
        uint64_t t0 = clock_mono_us();
        enum redis_error e = redis_sync(S.link, S.cl.key_prefix, S.host_id, o->inflight_seq,
                                        n ? &o->ops[o->head] : NULL, n, res, &hosts, err, sizeof err);
        uint64_t took = clock_mono_us() - t0;
        if (e != REDIS_OK) {
            went_down(e, err, clock_mono_ms());
            return false;
        }
        metric_observe_sync(took);
        came_back(clock_mono_ms());
        S.hosts = hosts < 1 ? 1 : hosts;
        atomic_store_explicit(&sm.hosts, S.hosts, memory_order_relaxed);
        int64_t day = today();
        size_t head = o->head;
        o->head += n;
        o->inflight = 0;
        /* apply after advancing: a give-back it queues goes behind, into a later chunk */
        for (size_t i = 0; i < n; i++)
            apply_result(&o->ops[head + i], o->key[head + i], &res[i], day);
        if (outbox_empty(o))
            o->head = o->n = 0;
        heartbeat = false;
    }
    return true;
}

/* ---- building a batch ---- */

/* Moves the key's debts, give-backs and surplus out of its pools and into an
 * op in the outbox, with what its demand calls for; no op when it needs nothing. */
static void build_key_op(unsigned k, int64_t day, uint64_t now_ms)
{
    struct rl_global *rg = &S.g->rl_global[k];
    struct key_sync *ks = &S.keys[k];
    if (!key_has_limits(rg))
        return;
    carry_roll(ks, day);
    struct lease_op op;
    memset(&op, 0, sizeof op);
    op_set_limits(&op, rg, day);
    for (int d = 0; d < RL_DIMS; d++) {
        enum rl_dim dim = (enum rl_dim)d;
        if (!rl_has_dim(rg, dim)) {
            ks->give_back[d] = ks->owe[d] = 0;
            continue;
        }
        int64_t stock = rl_stock(rg, dim, day);
        uint64_t refused_now = refused_sum(S.g, k, dim);
        uint64_t refused = refused_now - ks->last_refused[d];
        ks->last_refused[d] = refused_now;
        int64_t demand = lease_demand(ks->last_stock[d], stock, refused);
        int64_t debt = ks->owe[d];
        ks->owe[d] = 0;
        if (stock < 0) {
            /* the settlement debt leaves the pool with this batch */
            int64_t cleared = rl_stock_add(rg, dim, -stock, day);
            debt += cleared;
            stock += cleared;
        }
        struct lease_bounds b = is_day_dim(d)
            ? lease_daily_bounds(day_limit(rg, d), day_used_seen(ks, d, day), S.hosts)
            : lease_rate_bounds(d == RL_DIM_REQ ? rg->req.capacity : rg->tok.capacity, S.hosts);
        struct lease_plan p = lease_size(&b, demand, refused, stock, &ks->hold[d], now_ms);
        int64_t ret = ks->give_back[d];
        ks->give_back[d] = 0;
        if (p.ret > 0)
            ret += rl_stock_take(rg, dim, p.ret, day);
        ks->last_stock[d] = rl_stock(rg, dim, day);
        *op_want(&op, d) = p.want;
        *op_ret(&op, d) = ret;
        *op_debt(&op, d) = debt;
    }
    if (op_is_empty(&op))
        return;
    struct lease_op *slot = outbox_push(&S.out, key_name(S.g, k), (int32_t)k);
    if (!slot) {
        /* give what was taken out back to the pools' owners next time */
        for (int d = 0; d < RL_DIMS; d++) {
            ks->give_back[d] += *op_ret(&op, d);
            ks->owe[d] += *op_debt(&op, d);
        }
        return;
    }
    *slot = op;
}

/* Whether key k has something of its own to send, or a hold to let go of. */
static bool key_pending(const struct key_sync *ks)
{
    for (int d = 0; d < RL_DIMS; d++)
        if (ks->give_back[d] || ks->owe[d] || ks->hold[d].amount)
            return true;
    return false;
}

/* One turn over the keys that need it: those the shards touched since the last
 * turn (the generation's bitmap, cleared a word at a time), those looked at in
 * the last QUIET_TURNS turns or with something pending, and all of them at a
 * sweep. A quiet keys file costs a scan of its bitmap, not of its keys. */
static void sync_keys(int64_t day, uint64_t now_ms, bool sweep)
{
    unsigned words = (S.nkeys + 63) / 64;
    for (unsigned w = 0; w < words; w++) {
        uint64_t touched = 0;
        if (S.g->rl_touched && atomic_load_explicit(&S.g->rl_touched[w], memory_order_relaxed))
            touched = atomic_exchange_explicit(&S.g->rl_touched[w], 0, memory_order_relaxed);
        uint64_t due = sweep ? ~UINT64_C(0) : touched | S.recent[w];
        S.recent[w] = 0;
        while (due) {
            unsigned bit = (unsigned)__builtin_ctzll(due);
            due &= due - 1;
            unsigned k = w * 64 + bit;
            if (k >= S.nkeys)
                break;
            struct key_sync *ks = &S.keys[k];
            if (touched & (UINT64_C(1) << bit))
                ks->quiet_turns = 0;
            else if (ks->quiet_turns < QUIET_TURNS)
                ks->quiet_turns++;
            build_key_op(k, day, now_ms);
            if (ks->quiet_turns < QUIET_TURNS || key_pending(ks))
                S.recent[w] |= UINT64_C(1) << bit;
        }
    }
}

static void sync_once(uint64_t deadline_ms)
{
    /* what failed before goes first, alone: new wants wait for its answer */
    if (!outbox_empty(&S.out) && !flush(deadline_ms))
        return;
    int64_t day = today();
    uint64_t now_ms = clock_mono_ms();
    bool sweep = now_ms >= S.next_sweep_ms || day != S.swept_day;
    if (sweep) {
        S.next_sweep_ms = now_ms + SWEEP_MS;
        S.swept_day = day;
    }
    sync_keys(day, now_ms, sweep);
    flush(deadline_ms);
}

/* ---- on_redis_down = local ---- */

/* Refills the pools at this host's share of each limit: the rate buckets at
 * per_minute / H, up to capacity / H; the daily quota to its usual target, up
 * to (limit - use last seen) / H over the whole outage. */
static void local_refill(void)
{
    uint64_t now_ns = clock_mono_ns();
    uint64_t elapsed = now_ns - S.last_refill_ns;
    S.last_refill_ns = now_ns;
    int64_t day = today();
    for (unsigned k = 0; k < S.nkeys; k++) {
        struct rl_global *rg = &S.g->rl_global[k];
        struct key_sync *ks = &S.keys[k];
        for (int d = 0; d < 2; d++) {
            enum rl_dim dim = (enum rl_dim)d;
            if (!rl_has_dim(rg, dim))
                continue;
            const struct rl_rate *r = d == RL_DIM_REQ ? &rg->req : &rg->tok;
            int64_t stock = rl_stock(rg, dim, day);
            int64_t n = lease_local_refill(r->per_minute, r->capacity, S.hosts, elapsed, stock,
                                           &ks->refill_carry[d]);
            int64_t fit = rl_stock_add(rg, dim, n, day);
            ks->made_locally[d] += fit;
            ks->last_stock[d] = rl_stock(rg, dim, day);
        }
        for (int d = RL_DIM_DAILY; d <= RL_DIM_SPEND; d++) {
            enum rl_dim dim = (enum rl_dim)d;
            if (!rl_has_dim(rg, dim))
                continue;
            int64_t seen = day_used_seen(ks, d, day);
            int64_t h = S.hosts < 1 ? 1 : S.hosts > LEASE_MAX_HOSTS ? LEASE_MAX_HOSTS : S.hosts;
            int64_t budget = (day_limit(rg, d) - seen) / h - ks->made_locally[d];
            int64_t stock = rl_stock(rg, dim, day);
            uint64_t refused_now = refused_sum(S.g, k, dim);
            uint64_t refused = refused_now - ks->last_refused[d];
            ks->last_refused[d] = refused_now;
            struct lease_bounds b = lease_daily_bounds(day_limit(rg, d), seen, S.hosts);
            struct lease_plan p = lease_size(&b, lease_demand(ks->last_stock[d], stock, refused),
                                             refused, stock, &ks->hold[d], clock_mono_ms());
            int64_t want = p.want < budget ? p.want : budget;
            if (want > 0)
                ks->made_locally[d] += rl_stock_add(rg, dim, want, day);
            ks->last_stock[d] = rl_stock(rg, dim, day);
        }
    }
}

/* ---- generations ---- */

/* Queues every key's stock and debt in g's pools (cluster-mode ones) for Redis. */
static void queue_everything(const struct gen *g, int64_t day)
{
    unsigned n = gen_nkeys(g);
    for (unsigned k = 0; k < n; k++) {
        struct rl_global *rg = &g->rl_global[k];
        if (!rg->cluster || !key_has_limits(rg))
            continue;
        int64_t amount[RL_DIMS] = { 0 };
        for (int d = 0; d < RL_DIMS; d++) {
            amount[d] = rl_stock_drain(rg, (enum rl_dim)d, day);
            if (g == S.g && k < S.nkeys) {
                carry_roll(&S.keys[k], day);
                amount[d] += S.keys[k].give_back[d] - S.keys[k].owe[d];
                S.keys[k].give_back[d] = S.keys[k].owe[d] = 0;
            }
        }
        give_back_orphan(key_name(g, k), rg, amount);
    }
}

/* Returns the stock of the generations given to Redis: [cluster] is being
 * turned off or pointed elsewhere, or aigw is stopping. Bounded by the timeout;
 * skipped while Redis is down (the leases then expire with their buckets). */
static void give_everything_back(const struct gen *a, const struct gen *b)
{
    if (S.down) {
        log_warn("limits sync: Redis %s is unreachable: this host's leases stay there until their buckets "
                 "refill", S.cl.redis.text);
        outbox_clear(&S.out);
        return;
    }
    uint64_t deadline_ms = clock_mono_ms() + S.cl.timeout_ms;
    int64_t day = today();
    queue_everything(a, day);
    if (b && b != a)
        queue_everything(b, day);
    for (size_t i = S.out.head; i < S.out.n; i++)
        S.out.key[i] = -1;      /* grants on the way back now are returned too */
    flush(deadline_ms);
    if (!outbox_empty(&S.out))
        log_warn("limits sync: %zu key leases could not be given back to Redis %s in time; they stay there "
                 "until their buckets refill", S.out.n - S.out.head, S.cl.redis.text);
    outbox_clear(&S.out);
    char err[256];
    if (!S.down && redis_link_connected(S.link) &&
        redis_leave(S.link, S.cl.key_prefix, S.host_id, err, sizeof err) != REDIS_OK)
        log_warn("limits sync: %s (the other hosts count this one for 10 s more)", err);
}

/* Stock that reached an older generation's pools after main moved them (grants
 * and returns landing late) goes to the same key NAME in g; a key gone, or what
 * g cannot hold, goes back to Redis. */
static void hand_over(struct gen *old, int64_t day)
{
    unsigned n = gen_nkeys(old);
    for (unsigned k = 0; k < n; k++) {
        struct rl_global *from = &old->rl_global[k];
        if (!from->cluster || !key_has_limits(from))
            continue;
        int to = admission_name_index_find(S.names, key_name(old, k));
        int64_t left[RL_DIMS];
        if (to >= 0 && S.g->rl_global[to].cluster) {
            admission_move_stock(&S.g->rl_global[to], from, day, left);
        } else {
            for (int d = 0; d < RL_DIMS; d++)
                left[d] = rl_stock_drain(from, (enum rl_dim)d, day);
        }
        give_back_orphan(key_name(old, k), from, left);
    }
}

static bool cluster_same_store(const struct cfg_cluster *a, const struct cfg_cluster *b)
{
    return a->enabled == b->enabled && strcmp(a->redis.text, b->redis.text) == 0 &&
           strcmp(a->key_prefix, b->key_prefix) == 0;
}

static bool cluster_same_login(const struct cfg_cluster *a, const struct cfg_cluster *b)
{
    return strcmp(a->username, b->username) == 0 && strcmp(a->password, b->password) == 0 &&
           a->timeout_ms == b->timeout_ms;
}

/* [cluster] as the new generation has it: a different store (or none) gets
 * this host's stock back first; new credentials or timeout reconnect. */
static void cluster_reconfigure(const struct gen *old, const struct gen *cur)
{
    const struct cfg_cluster *next = &cur->cfg->cluster;
    if (S.cl.enabled && !cluster_same_store(&S.cl, next)) {
        /* main moved the old pools into cur's at the reload: both hold this store's leases */
        give_everything_back(old, cur);
        redis_link_close(S.link);
        if (S.down || cluster_admission_mode() != CLUSTER_ADMIT_NORMAL)
            log_info("limits sync: [cluster] changed while Redis %s was unreachable; admission is normal again",
                     S.cl.redis.text);
        S.down = false;
        atomic_store_explicit(&cluster_admission_state, CLUSTER_ADMIT_NORMAL, memory_order_relaxed);
        atomic_store_explicit(&sm.redis_up, false, memory_order_relaxed);
        S.hosts = 1;
    } else if (S.cl.enabled && !cluster_same_login(&S.cl, next)) {
        redis_link_close(S.link);
    }
    if (S.cl.enabled && next->enabled && S.down && S.cl.on_redis_down != next->on_redis_down) {
        S.cl.on_redis_down = next->on_redis_down;
        atomic_store_explicit(&cluster_admission_state, down_mode(), memory_order_relaxed);
    }
    bool was = S.cl.enabled;
    struct cfg_cluster prev = S.cl;
    S.cl = *next;
    atomic_store_explicit(&sm.enabled, S.cl.enabled, memory_order_relaxed);
    if (!S.cl.enabled && was)
        log_info("limits sync: [cluster] removed: this host enforces its limits alone");
    if (S.cl.enabled && (!was || !cluster_same_store(&prev, next))) {
        S.next_sync_ms = 0;
        log_info("limits sync: sharing limits through Redis %s (prefix '%s', every %" PRIu64 " ms)",
                 S.cl.redis.text, S.cl.key_prefix, S.cl.sync_interval_ms);
    }
}

/* Moves to the newest generation, releasing the ones passed. */
static void follow_generations(void)
{
    struct gen *cur = atomic_load_explicit(&rt.current, memory_order_acquire);
    if (cur == S.g)
        return;
    struct gen *old = S.g;
    cluster_reconfigure(old, cur);
    S.g = cur;
    keys_build();
    outbox_rekey(&S.out);
    int64_t day = today();
    for (struct gen *x = old; x != cur;) {
        if (S.cl.enabled)
            hand_over(x, day);
        struct gen *next = atomic_load(&x->newer);
        gen_unref(x);
        x = next;
    }
    for (unsigned k = 0; k < S.nkeys; k++)
        key_rebase(S.g, k, &S.keys[k], day);
    S.next_sync_ms = 0;     /* sync the new keys now */
}

/* ---- the loop ---- */

static void wait_for(uint64_t ms)
{
    struct pollfd p = { .fd = wake_fd, .events = POLLIN };
    if (poll(&p, 1, ms > 60000 ? 60000 : (int)ms) > 0) {
        uint64_t v;
        if (read(wake_fd, &v, sizeof v) < 0 && errno != EAGAIN)
            log_debug("limits sync: reading its wakeup: %s", strerror(errno));
        S.next_sync_ms = 0;
    }
}

static uint64_t cluster_turn(uint64_t now_ms)
{
    if (S.down) {
        if (now_ms >= S.retry_at_ms)
            flush(0);   /* the failed batch, or a heartbeat: whichever answers brings Redis back */
        if (S.down) {
            if (cluster_admission_mode() == CLUSTER_ADMIT_LOCAL)
                local_refill();
            uint64_t next = now_ms + S.cl.sync_interval_ms;
            return next < S.retry_at_ms ? next : S.retry_at_ms;
        }
        S.next_sync_ms = 0;
    }
    if (now_ms >= S.next_sync_ms) {
        S.next_sync_ms = now_ms + S.cl.sync_interval_ms;
        sync_once(0);
    }
    if (S.down)
        return S.retry_at_ms;
    return S.next_sync_ms;
}

/* At stop, once the shards are gone: what they held in their own leases goes
 * back into the pools, to be returned with the rest (a restart would otherwise
 * strand up to shards x batch of each limit, 1/16 of a daily quota per host). */
static void reclaim_shard_leases(struct gen *g, int64_t day)
{
    unsigned n = gen_nkeys(g);
    for (unsigned k = 0; k < n; k++) {
        struct rl_global *rg = &g->rl_global[k];
        if (!rg->cluster || !key_has_limits(rg))
            continue;
        for (unsigned s = 0; s < g->nshards; s++) {
            struct rl_local *l = &g->rl_local[(size_t)s * g->rl_stride + k];
            rl_stock_add(rg, RL_DIM_REQ, l->req, day);
            rl_stock_add(rg, RL_DIM_TOK, l->tok, day);
            if (l->daily_day == day)
                rl_stock_add(rg, RL_DIM_DAILY, l->daily, day);
            if (l->spend_day == day)
                rl_stock_add(rg, RL_DIM_SPEND, l->spend, day);
            l->req = l->tok = l->daily = l->spend = 0;
        }
    }
}

static void *sync_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stopping)) {
        follow_generations();
        uint64_t now_ms = clock_mono_ms();
        uint64_t wake = now_ms + IDLE_TURN_MS;
        if (S.cl.enabled) {
            uint64_t due = cluster_turn(now_ms);
            if (due < wake)
                wake = due;
        }
        snapshot_tick(S.g, clock_mono_ms());
        now_ms = clock_mono_ms();
        if (!atomic_load(&stopping) && wake > now_ms)
            wait_for(wake - now_ms);
    }
    follow_generations();
    if (S.cl.enabled) {
        if (atomic_load(&shards_gone))
            reclaim_shard_leases(S.g, today());
        give_everything_back(S.g, NULL);
    }
    snapshot_final(S.g);
    return NULL;
}

int limits_sync_start(void)
{
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0) {
        log_error("limits sync: eventfd: %s", strerror(errno));
        return -1;
    }
    memset(&S, 0, sizeof S);
    S.link = redis_link_new();
    if (!S.link) {
        log_error("limits sync: out of memory");
        return -1;
    }
    const char *shift = getenv("AIGW_TEST_CLOCK_SHIFT_S");
    S.clock_shift_s = shift ? strtoll(shift, NULL, 10) : 0;
    S.host_id = random64();
    S.rng = random64() | 1;
    S.hosts = 1;
    S.g = atomic_load_explicit(&rt.current, memory_order_acquire);
    keys_build();
    cluster_reconfigure(S.g, S.g);
    int rc = pthread_create(&sync_thread, NULL, sync_main, NULL);
    if (rc) {
        log_error("limits sync: cannot start its thread: %s", strerror(rc));
        return -1;
    }
    running = true;
    return 0;
}

void limits_sync_wake(void)
{
    uint64_t one = 1;
    if (wake_fd >= 0 && write(wake_fd, &one, sizeof one) < 0)
        (void)0;    /* the counter is full: the thread is woken anyway */
}

void limits_sync_stop(bool shards_stopped)
{
    if (!running)
        return;
    atomic_store(&shards_gone, shards_stopped);
    atomic_store(&stopping, true);
    limits_sync_wake();
    pthread_join(sync_thread, NULL);
    running = false;
    gen_unref(S.g);
    S.g = NULL;
    free(S.keys);
    free(S.recent);
    S.recent = NULL;
    S.keys = NULL;
    admission_name_index_free(S.names);
    S.names = NULL;
    redis_link_free(S.link);
    S.link = NULL;
    free(S.out.ops);
    free(S.out.names);
    free(S.out.key);
    memset(&S.out, 0, sizeof S.out);
}

/* ---- /metrics ---- */

static uint64_t load(const _Atomic uint64_t *c)
{
    return atomic_load_explicit((_Atomic uint64_t *)c, memory_order_relaxed);
}

static void put_seconds_us(struct outbuf *o, uint64_t us)
{
    outbuf_u64(o, us / 1000000);
    char frac[8];
    snprintf(frac, sizeof frac, ".%06" PRIu64, us % 1000000);
    outbuf_str(o, frac);
}

void limits_sync_metrics(struct outbuf *o)
{
    if (!atomic_load_explicit(&sm.enabled, memory_order_relaxed))
        return;
    metrics_put_family(o, "aigw_cluster_redis_up", "gauge", "1 while the last call to the [cluster] Redis succeeded.");
    OUTBUF_LIT(o, "aigw_cluster_redis_up ");
    outbuf_u64(o, atomic_load_explicit(&sm.redis_up, memory_order_relaxed));
    outbuf_char(o, '\n');

    metrics_put_family(o, "aigw_cluster_mode", "gauge",
               "How keys with limits are admitted: shared through Redis, or on_redis_down's mode while it is down.");
    static const char *const modes[] = { "shared", "local", "deny", "allow" };
    int mode = atomic_load_explicit(&cluster_admission_state, memory_order_relaxed);
    for (int m = 0; m < 4; m++) {
        OUTBUF_LIT(o, "aigw_cluster_mode{mode=\"");
        outbuf_str(o, modes[m]);
        OUTBUF_LIT(o, "\"} ");
        outbuf_u64(o, m == mode);
        outbuf_char(o, '\n');
    }

    metrics_put_family(o, "aigw_cluster_hosts", "gauge", "Gateway hosts that synced with Redis in the last 10 s, this one included.");
    OUTBUF_LIT(o, "aigw_cluster_hosts ");
    outbuf_u64(o, atomic_load_explicit(&sm.hosts, memory_order_relaxed));
    outbuf_char(o, '\n');

    metrics_put_family(o, "aigw_cluster_syncs_total", "counter", "Batches Redis acknowledged (one script call each).");
    OUTBUF_LIT(o, "aigw_cluster_syncs_total ");
    outbuf_u64(o, load(&sm.syncs));
    outbuf_char(o, '\n');

    metrics_put_family(o, "aigw_cluster_sync_duration_seconds", "histogram", "Time of one acknowledged batch's script call.");
    uint64_t cumulative = 0;
    for (unsigned b = 0; b <= SYNC_NBUCKETS; b++) {
        cumulative += load(&sm.duration_bucket[b]);
        OUTBUF_LIT(o, "aigw_cluster_sync_duration_seconds_bucket{le=\"");
        outbuf_str(o, b < SYNC_NBUCKETS ? sync_le_text[b] : "+Inf");
        OUTBUF_LIT(o, "\"} ");
        outbuf_u64(o, cumulative);
        outbuf_char(o, '\n');
    }
    OUTBUF_LIT(o, "aigw_cluster_sync_duration_seconds_sum ");
    put_seconds_us(o, load(&sm.duration_sum_us));
    OUTBUF_LIT(o, "\naigw_cluster_sync_duration_seconds_count ");
    outbuf_u64(o, cumulative);
    outbuf_char(o, '\n');

    metrics_put_family(o, "aigw_cluster_leased_total", "counter",
               "Tokens (requests for dimension=requests) leased from Redis, and given back unused.");
    static const char *const dirs[] = { "taken", "returned" };
    for (int d = 0; d < RL_DIMS; d++)
        for (int w = 0; w < 2; w++) {
            OUTBUF_LIT(o, "aigw_cluster_leased_total{dimension=\"");
            outbuf_str(o, dim_label[d]);
            OUTBUF_LIT(o, "\",direction=\"");
            outbuf_str(o, dirs[w]);
            OUTBUF_LIT(o, "\"} ");
            outbuf_u64(o, load(&sm.leased[d][w]));
            outbuf_char(o, '\n');
        }

    metrics_put_family(o, "aigw_cluster_sync_errors_total", "counter", "Failed connects and script calls, by kind.");
    for (int e = 1; e < REDIS_E_COUNT; e++) {
        OUTBUF_LIT(o, "aigw_cluster_sync_errors_total{kind=\"");
        outbuf_str(o, redis_error_name((enum redis_error)e));
        OUTBUF_LIT(o, "\"} ");
        outbuf_u64(o, load(&sm.errors[e]));
        outbuf_char(o, '\n');
    }
}
