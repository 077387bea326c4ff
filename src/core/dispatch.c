/* Dispatch: from a request's pool to one of its backends, and what happens when
 * none will do.
 *
 * A backend is a candidate while its active check passes, its circuit is closed
 * and it has fewer than max_outstanding requests in flight over all shards; the
 * pool's balancer picks among the candidates. When every backend that is up is
 * busy, the request waits in the pool's queue on this shard, a FIFO per tier
 * priority, for up to queue_timeout. When none is up, or the wait ran out, it
 * goes to the pool's fallback (one hop), else it gets 503 no_capacity.
 *
 * Passive checks: each shard counts the consecutive failed attempts it saw per
 * backend (connect errors, resets before the response, first_byte timeouts,
 * 5xx answers); at the pool's circuit_failures the backend's circuit opens, shared by
 * all shards, for circuit_open, doubling on each reopen up to circuit_open_max. Once it has passed, the
 * next request that would use the backend claims it as the half-open probe;
 * the probe's answer closes the circuit or reopens it. Counting per shard keeps
 * the per-request path free of shared writes: only transitions are shared.
 *
 * Retries: an attempt that failed before any response byte reached the client
 * (a connect error, a reset, a 502 or 503 answer) goes to another backend of
 * the pool, at most `retries` times and never past the first attempt's
 * first_byte deadline. */
#include "core/backend_admin.h"
#include "core/conn.h"
#include "core/dispatch.h"
#include "core/gen.h"
#include "core/prefix_share.h"
#include "core/shard.h"
#include "policy/balance.h"

#include <stdlib.h>
#include <string.h>

#define QUEUE_POLL_MS 5             /* queued requests look for slots freed on other shards */

enum pick_failure { PICK_BUSY, PICK_DOWN };

static unsigned pool_first(const struct conn *c)
{
    return c->req.sg->g->pool_first_backend[c->req.pool];
}

static void load_add(struct conn *c, unsigned backend, int delta)
{
    const struct gen *g = c->req.sg->g;
    struct backend_load *cell = &g->load[(size_t)backend * g->nshards + c->sh->id];
    atomic_store_explicit(&cell->outstanding,
                          atomic_load_explicit(&cell->outstanding, memory_order_relaxed) + (uint32_t)delta,
                          memory_order_relaxed);
}

static uint64_t backoff_ms(const struct cfg_pool *pool, uint32_t reopens)
{
    uint64_t ms = pool->circuit_open_ms;
    for (uint32_t i = 0; i < reopens && ms < pool->circuit_open_max_ms; i++)
        ms *= 2;
    return ms < pool->circuit_open_max_ms ? ms : pool->circuit_open_max_ms;
}

static void circuit_set(struct backend_health *h, enum circuit_state to)
{
    atomic_store_explicit(&h->circuit, (uint8_t)to, memory_order_release);
    atomic_fetch_add_explicit(&h->transitions, 1, memory_order_relaxed);
}

/* Opens (or reopens after a failed probe) for the next backoff. open_until is
 * written before the state, so whoever sees OPEN sees its deadline. */
static bool circuit_open(const struct cfg_pool *pool, struct backend_health *h, enum circuit_state from,
                         enum backend_failure cause, uint64_t now_ms)
{
    uint32_t reopens = atomic_load_explicit(&h->reopens, memory_order_relaxed);
    atomic_store_explicit(&h->open_until_ms, now_ms + backoff_ms(pool, reopens), memory_order_relaxed);
    atomic_store_explicit(&h->open_cause, (uint8_t)cause, memory_order_relaxed);
    uint8_t expect = (uint8_t)from;
    if (!atomic_compare_exchange_strong_explicit(&h->circuit, &expect, CIRCUIT_OPEN,
                                                 memory_order_acq_rel, memory_order_relaxed))
        return false;
    atomic_store_explicit(&h->reopens, reopens + 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->transitions, 1, memory_order_relaxed);
    return true;
}

/* Picks a backend of c->req.pool that c has not tried, or claims a half-open
 * probe (*probe is then true). */
static int pick(struct conn *c, enum pick_failure *why, bool *probe_claimed)
{
    struct shard *sh = c->sh;
    struct shard_gen *sg = c->req.sg;
    const struct gen *g = sg->g;
    const struct cfg_pool *pool = &g->cfg->pools[c->req.pool];
    unsigned first = pool_first(c), n = pool->nbackends;
    uint32_t outstanding[n ? n : 1];
    bool up[n ? n : 1];
    unsigned weight[n ? n : 1];
    bool any_up = false;
    int probe = -1;
    for (unsigned i = 0; i < n; i++) {
        unsigned b = first + i;
        outstanding[i] = gen_outstanding(g, b);
        bool tried = c->req.tried & (1ull << (i & 63));
        /* drained, disabled or weight 0 from the admin API: no new request */
        struct backend_admin_view adm = backend_admin_read(g->backend_metric_slot[b], pool->backends[i].weight);
        bool admitted = backend_admin_takes_new(adm);
        weight[i] = adm.weight;
        up[i] = !tried && admitted && backend_available(g, b);
        any_up |= up[i];
        const struct backend_health *h = &g->health[b];
        if (!tried && admitted && !up[i] && probe < 0 &&
            atomic_load_explicit(&h->circuit, memory_order_acquire) == CIRCUIT_OPEN &&
            atomic_load_explicit(&h->checked_up, memory_order_relaxed) &&
            sh->now_ms >= atomic_load_explicit(&h->open_until_ms, memory_order_relaxed) &&
            outstanding[i] < pool->max_outstanding)
            probe = (int)i;
    }
    if (probe >= 0) {
        struct backend_health *h = &g->health[first + (unsigned)probe];
        uint8_t expect = CIRCUIT_OPEN;
        if (atomic_compare_exchange_strong_explicit(&h->circuit, &expect, CIRCUIT_PROBING,
                                                    memory_order_acq_rel, memory_order_relaxed)) {
            atomic_fetch_add_explicit(&h->transitions, 1, memory_order_relaxed);
            *probe_claimed = true;
            return (int)first + probe;
        }
    }
    *probe_claimed = false;
    int pick;
    /* the weights in effect (the admin API may have changed them) and, for
     * capacity and prefix, the engines' own load as the watcher last read it */
    bool engine_load = pool->balance == BALANCE_CAPACITY || pool->balance == BALANCE_PREFIX;
    struct backend_view view[n ? n : 1];
    for (unsigned i = 0; i < n; i++) {
        unsigned b = first + i;
        const struct backend_signal *s = &g->signal[b];
        bool fresh = engine_load && backend_signal_fresh(g, b, sh->now_ms);
        int32_t kv = fresh ? atomic_load_explicit(&s->kv_permille, memory_order_relaxed) : -1;
        view[i] = (struct backend_view){
            .outstanding = outstanding[i],
            .max_outstanding = pool->max_outstanding,
            .weight = weight[i],
            .up = up[i],
            .waiting = fresh ? atomic_load_explicit(&s->waiting, memory_order_relaxed) : BALANCE_UNKNOWN,
            .running = fresh ? atomic_load_explicit(&s->running, memory_order_relaxed) : BALANCE_UNKNOWN,
            .kv_usage = kv >= 0 ? (float)kv / 1000.0f : -1.0f,
            .cache_blocks = fresh ? balance_cache_blocks(atomic_load_explicit(&s->cache_tokens,
                                                                              memory_order_relaxed))
                                  : 0,
            .id = g->backend_id[b],
        };
    }
    struct prompt_blocks prompt = { c->req.prefix_block, c->req.prefix_blocks };
    struct balance_state *bs = &sg->balance[c->req.pool];
    bool share = pool->balance == BALANCE_PREFIX && pool->prefix_index_shared && bs->index && prompt.n > 0;
    if (share)
        prefix_share_catch_up(sh, sg);
    pick = balance_pick_load(pool->balance, bs, view, n, &prompt);
    if (pick < 0) {
        *why = any_up ? PICK_BUSY : PICK_DOWN;
        return -1;
    }
    if (share)
        prefix_share_record(sh, sg, (unsigned)c->req.pool, (unsigned)pick, &prompt, bs->tune.prefix_max_blocks);
    int slot = g->backend_metric_slot[first + (unsigned)pick];
    if (slot >= 0)
        mc_add(&sh->m->balance_decisions[slot][bs->last_reason], 1);
    return (int)(first + (unsigned)pick);
}

/* Sends c to backend b: it holds a slot there, and conn.c begins a new attempt. */
static void go(struct conn *c, unsigned b, bool probe)
{
    c->at.backend = (int)b;
    c->at.probe = probe;
    c->req.tried |= 1ull << ((b - pool_first(c)) & 63);
    load_add(c, b, 1);
    conn_dispatched(c, (struct dispatch_outcome){ .verdict = DISPATCH_GO });
}

/* ---- the queue ---- */

static void queue_unlink(struct conn *c)
{
    struct shard *sh = c->sh;
    struct pool_queue *q = &c->req.sg->queue[c->req.pool];
    unsigned p = c->req.qprio;
    if (c->req.qprev)
        c->req.qprev->req.qnext = c->req.qnext;
    else
        q->head[p] = c->req.qnext;
    if (c->req.qnext)
        c->req.qnext->req.qprev = c->req.qprev;
    else
        q->tail[p] = c->req.qprev;
    c->req.qnext = c->req.qprev = NULL;
    c->req.queued = false;
    q->len--;
    sh->nqueued--;
    int slot = c->req.sg->g->pool_metric_slot[c->req.pool];
    mg_add(&sh->m->queued[slot], -1);
    c->req.queue_us += sh->now_us - c->req.queued_us;
    metrics_observe_queue_wait(sh->m, slot, sh->now_us - c->req.queued_us);
}

static unsigned retry_after_s(const struct conn *c, enum shed_reason reason)
{
    const struct gen *g = c->req.sg->g;
    const struct cfg_pool *pool = &g->cfg->pools[c->req.pool];
    uint64_t ms = reason == SHED_NO_BACKEND ? pool->circuit_open_max_ms : pool->queue_timeout_ms;
    if (reason == SHED_NO_BACKEND) {
        /* when the first backend may be back: a circuit's probe, or health_rise checks */
        uint64_t now = c->sh->now_ms;
        unsigned first = pool_first(c);
        for (unsigned i = 0; i < pool->nbackends; i++) {
            const struct backend_health *h = &g->health[first + i];
            uint64_t until = atomic_load_explicit(&h->open_until_ms, memory_order_relaxed);
            bool checked_up = atomic_load_explicit(&h->checked_up, memory_order_relaxed);
            uint64_t at = !checked_up    ? pool->health_rise * pool->health_interval_ms
                          : until > now ? until - now
                                        : 0;
            if (at < ms)
                ms = at;
        }
    }
    uint64_t s = (ms + 999) / 1000;
    return s < 1 ? 1 : s > 30 ? 30 : (unsigned)s;
}

/* No backend of c's pool will take it: its fallback pool, or 503. */
static void fall_back_or_shed(struct conn *c, enum shed_reason reason)
{
    struct shard *sh = c->sh;
    const struct config *cfg = c->req.sg->g->cfg;
    const struct cfg_pool *pool = &cfg->pools[c->req.pool];
    int slot = c->req.sg->g->pool_metric_slot[c->req.pool];
    /* a raw request's head is written once, with its pool's upstream credentials:
     * it may only move to a pool that uses the same */
    if (!c->req.fell_back && pool->fallback >= 0 &&
        ((c->req.ai && c->req.body) || strcmp(pool->upstream_auth, cfg->pools[pool->fallback].upstream_auth) == 0)) {
        mc_add(&sh->m->fallbacks[slot], 1);
        c->req.fell_back = true;
        c->req.pool = pool->fallback;
        c->req.tried = 0;
        c->req.attempts = 0;
        dispatch_request(c);
        return;
    }
    mc_add(&sh->m->shed[slot][reason], 1);
    conn_dispatched(c, (struct dispatch_outcome){ .verdict = DISPATCH_SHED,
                                                  .shed_reason = (uint8_t)reason,
                                                  .retry_after_s = retry_after_s(c, reason) });
}

static void enqueue(struct conn *c)
{
    struct shard *sh = c->sh;
    const struct cfg_pool *pool = &c->req.sg->g->cfg->pools[c->req.pool];
    struct pool_queue *q = &c->req.sg->queue[c->req.pool];
    if (pool->queue_timeout_ms == 0) {
        fall_back_or_shed(c, SHED_QUEUE_TIMEOUT);
        return;
    }
    enum priority prio = conn_priority(c);
    if (q->len >= q->cap) {
        /* full: the newest request of the lowest priority below c's makes room */
        struct conn *victim = NULL;
        for (int p = PRIORITY_LOW; p > (int)prio && !victim; p--)
            victim = q->tail[p];
        if (!victim) {
            fall_back_or_shed(c, SHED_QUEUE_FULL);
            return;
        }
        queue_unlink(victim);
        fall_back_or_shed(victim, SHED_QUEUE_FULL);
    }
    c->req.qprio = (uint8_t)prio;
    c->req.qnext = NULL;
    c->req.qprev = q->tail[prio];
    if (q->tail[prio])
        q->tail[prio]->req.qnext = c;
    else
        q->head[prio] = c;
    q->tail[prio] = c;
    q->len++;
    c->req.queued = true;
    c->req.queued_us = sh->now_us;
    sh->nqueued++;
    mg_add(&sh->m->queued[c->req.sg->g->pool_metric_slot[c->req.pool]], 1);
    conn_dispatched(c, (struct dispatch_outcome){ .verdict = DISPATCH_QUEUED,
                                                  .queue_ms = pool->queue_timeout_ms });
}

/* Hands free slots of a pool to its waiting requests, highest priority first. */
static void pump(struct shard_gen *sg, unsigned pool)
{
    struct pool_queue *q = &sg->queue[pool];
    while (q->len) {
        struct conn *c = q->head[PRIORITY_HIGH] ? q->head[PRIORITY_HIGH]
                       : q->head[PRIORITY_NORMAL] ? q->head[PRIORITY_NORMAL]
                                                  : q->head[PRIORITY_LOW];
        enum pick_failure why;
        bool probe;
        int b = pick(c, &why, &probe);
        if (b < 0 && why == PICK_BUSY)
            return;
        queue_unlink(c);
        if (b < 0)
            fall_back_or_shed(c, SHED_NO_BACKEND);
        else
            go(c, (unsigned)b, probe);
    }
}

void dispatch_request(struct conn *c)
{
    if (c->req.sg->queue[c->req.pool].len) {
        /* others wait already: behind them by priority, then whoever is first goes */
        enqueue(c);
        pump(c->req.sg, (unsigned)c->req.pool);
        return;
    }
    enum pick_failure why;
    bool probe;
    int b = pick(c, &why, &probe);
    if (b >= 0)
        go(c, (unsigned)b, probe);
    else if (why == PICK_DOWN)
        fall_back_or_shed(c, SHED_NO_BACKEND);
    else
        enqueue(c);
}

void dispatch_queue_expired(struct conn *c)
{
    if (!c->req.queued)
        return;
    queue_unlink(c);
    fall_back_or_shed(c, SHED_QUEUE_TIMEOUT);
}

void dispatch_poll(struct shard *sh)
{
    if (sh->now_ms < sh->next_queue_poll_ms)
        return;
    sh->next_queue_poll_ms = sh->now_ms + QUEUE_POLL_MS;
    for (struct shard_gen *sg = sh->sg; sg && sh->nqueued; sg = sg->older)
        for (unsigned p = 0; p < sg->g->cfg->npools; p++)
            if (sg->queue[p].len)
                pump(sg, p);
}

/* ---- health and retries ---- */

void dispatch_attempt_result(struct conn *c, enum backend_failure f)
{
    struct shard *sh = c->sh;
    if (c->at.backend < 0)
        return;
    unsigned b = (unsigned)c->at.backend;
    const struct gen *g = c->req.sg->g;
    struct backend_health *h = &g->health[b];
    const struct cfg_pool *pool = &g->cfg->pools[c->req.pool];
    int slot = g->backend_metric_slot[b];
    mc_add(&sh->m->backend_requests[slot][f == BF_NONE ? ATTEMPT_OK : ATTEMPT_FAILED], 1);
    if (f == BF_NONE) {
        c->req.sg->fail_streak[b] = 0;
        if (c->at.probe) {
            c->at.probe = false;
            atomic_store_explicit(&h->reopens, 0, memory_order_relaxed);
            circuit_set(h, CIRCUIT_CLOSED);
        }
        return;
    }
    if (c->at.probe) {
        c->at.probe = false;
        if (circuit_open(pool, h, CIRCUIT_PROBING, f, sh->now_ms))
            mc_add(&sh->m->circuit_opens[slot], 1);
        return;
    }
    if (++c->req.sg->fail_streak[b] < pool->circuit_failures)
        return;
    c->req.sg->fail_streak[b] = 0;
    if (atomic_load_explicit(&h->circuit, memory_order_relaxed) == CIRCUIT_CLOSED &&
        circuit_open(pool, h, CIRCUIT_CLOSED, f, sh->now_ms))
        mc_add(&sh->m->circuit_opens[slot], 1);
}

/* Gives the backend slot back. A probe that ended without an answer (the client
 * left) lets the next request probe at once. */
static void release_slot(struct conn *c)
{
    unsigned b = (unsigned)c->at.backend;
    if (c->at.probe) {
        struct backend_health *h = &c->req.sg->g->health[b];
        c->at.probe = false;
        atomic_store_explicit(&h->open_until_ms, c->sh->now_ms, memory_order_relaxed);
        circuit_set(h, CIRCUIT_OPEN);
    }
    load_add(c, b, -1);
}

void dispatch_release(struct conn *c)
{
    if (c->req.queued)
        queue_unlink(c);
    if (c->at.backend < 0)
        return;
    release_slot(c);
    c->at.backend = -1;
    /* (a backend is always one of c->req.pool's: a fallback moves c before it picks) */
    if (c->req.sg->queue[c->req.pool].len)
        pump(c->req.sg, (unsigned)c->req.pool);
}

bool dispatch_retry(struct conn *c)
{
    struct shard *sh = c->sh;
    /* (a send still in flight reads c->req.out: it cannot be reused yet) */
    if (c->at.backend < 0 || c->req.resp_started || c->req.queued || c->at.up_sending)
        return false;
    const struct cfg_pool *pool = &c->req.sg->g->cfg->pools[c->req.pool];
    bool resendable = c->req.ai ? c->req.body != NULL : c->req.out && c->req.body_in_first_send;
    if (!resendable || c->req.attempts >= pool->retries ||
        (c->req.retry_deadline_ms && sh->now_ms >= c->req.retry_deadline_ms))
        return false;
    unsigned from = (unsigned)c->at.backend;
    enum pick_failure why;
    /* the failed backend's slot is not offered to the queue: this request goes on */
    release_slot(c);
    c->at.backend = -1;
    bool probe;
    int b = pick(c, &why, &probe);
    if (b < 0) {
        load_add(c, from, 1);
        c->at.backend = (int)from;
        return false;
    }
    mc_add(&sh->m->backend_retries[c->req.sg->g->backend_metric_slot[from]], 1);
    c->req.attempts++;
    go(c, (unsigned)b, probe);
    return true;
}

int dispatch_shard_gen_init(struct shard_gen *sg)
{
    const struct config *cfg = sg->g->cfg;
    sg->fail_streak = calloc(cfg->nbackends ? cfg->nbackends : 1, sizeof *sg->fail_streak);
    sg->queue = calloc(cfg->npools ? cfg->npools : 1, sizeof *sg->queue);
    if (!sg->fail_streak || !sg->queue)
        return -1;
    for (unsigned p = 0; p < cfg->npools; p++) {
        unsigned size = cfg->pools[p].queue_size, n = sg->g->nshards ? sg->g->nshards : 1;
        sg->queue[p].cap = (size + n - 1) / n;
    }
    return 0;
}

void dispatch_shard_gen_free(struct shard_gen *sg)
{
    free(sg->fail_streak);
    free(sg->queue);
    sg->fail_streak = NULL;
    sg->queue = NULL;
}
