/* Configuration generations (gen.c): a loaded config plus what is compiled from
 * it (route table, metric slots, per-key limit state), and the per-backend cells
 * every shard and the watcher share while the generation lives: load, the
 * engines' scraped signal, health. Replaced whole on reload; freed when the last
 * shard, main and the watcher let go of it. */
#ifndef AIGW_CORE_GEN_H
#define AIGW_CORE_GEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/model_label.h"

struct config;
struct cfg_backend;
struct route_table;
struct rl_global;
struct rl_local;

/* Per-backend load shared by all shards: each shard writes only its own cell. */
struct backend_load {
    _Atomic uint32_t outstanding;
    char pad[60];
};

/* What the watcher last read of a backend's engine (watch.c writes, shards read).
 * The fields are independent relaxed values: a shard may see one scrape's queue
 * with the next one's KV use, which is as good for routing. */
struct backend_signal {
    _Atomic int32_t waiting;        /* -1: unknown */
    _Atomic int32_t running;        /* -1: unknown */
    _Atomic int32_t kv_permille;    /* KV-cache use x 1000; -1: unknown */
    _Atomic uint32_t cache_tokens;  /* the engine's KV (prefix) cache capacity; 0: unknown */
    _Atomic uint64_t scraped_ms;    /* CLOCK_MONOTONIC of the last good scrape; 0: never */
    char pad[40];
};

/* Whether a backend may get requests, shared by all shards (dispatch.c, watch.c).
 * The active check's verdict has one writer, the watcher. The circuit moves by
 * compare-and-swap, done by the shard that sees the event: a run of failures
 * opens it, a request claims the half-open probe, the probe's result closes or
 * reopens it. Those are rare events, never one per request. */
enum circuit_state { CIRCUIT_CLOSED = 0, CIRCUIT_OPEN = 1, CIRCUIT_PROBING = 2 };
/* How an attempt on a backend failed: counted against it (passive checks). */
enum backend_failure { BF_NONE = 0, BF_CONNECT, BF_RESET, BF_TIMEOUT, BF_STATUS };
/* "connect errors", "timeouts", ...: what opened a circuit, in log lines and /status. */
const char *backend_failure_name(enum backend_failure f);
struct backend_health {
    _Atomic bool checked_up;        /* the active check passes (true without one) */
    _Atomic uint8_t circuit;        /* enum circuit_state */
    _Atomic uint8_t open_cause;     /* enum backend_failure that last opened it */
    _Atomic uint32_t reopens;       /* opens since it last closed: the backoff's exponent */
    _Atomic uint64_t open_until_ms; /* CLOCK_MONOTONIC: when OPEN lets a probe through */
    _Atomic uint32_t transitions;   /* bumped on each circuit change, for the watcher's log */
} __attribute__((aligned(64)));

/* The models the backends of this generation's pools say they serve (their
 * GET /v1/models, read by the watcher), for aigw's own /v1/models. Immutable once
 * published: the watcher builds a new one when a list changes and swaps the
 * pointer; a replaced one stays on the `older` chain until the generation is
 * freed, because a shard may still be reading it (changes are rare). */
struct served_model {
    const char *id;                 /* NUL-terminated, in the snapshot's own storage */
    unsigned pool;                  /* index into cfg->pools */
};
struct served_models {
    struct served_models *older;    /* the one this replaced, or NULL */
    unsigned n;
    struct served_model m[];        /* sorted by id, then pool; no pair twice */
};

struct gen {
    uint64_t id;
    struct config *cfg;
    struct route_table *routes;
    int *route_metric_slot;         /* per route */
    int *backend_metric_slot;       /* per global backend index */
    unsigned *pool_first_backend;   /* pool -> index of its first backend in the global list */
    const struct cfg_backend **backend_cfg; /* global index -> cfg */
    const char **backend_pool;      /* global index -> pool name */
    uint64_t *backend_id;           /* global index -> hash of its name as configured (prompt homes) */
    struct backend_load *load;      /* [backend * nshards + shard] (shared) */
    struct backend_signal *signal;  /* per global backend (shared; written by the watcher) */
    struct backend_health *health;  /* per global backend (shared; see struct backend_health) */
    int *pool_metric_slot;          /* per pool */
    int *route_pool_metric_slot;    /* [route * npools + pool]: pairs a route can send to; -1 others */
    struct model_labels model_labels; /* the configured model globs (metrics' model label) */
    uint8_t *model_metric_slot;     /* per model label; requests matching none use slot 0, "other" */
    uint64_t *backend_interval_ms;  /* per global backend: its pool's metrics_interval */
    struct served_models *_Atomic served; /* NULL until a backend answered (watch.c writes) */
    unsigned nshards;
    _Atomic int refs;               /* shared: one per shard that may still use it, one for main,
                                     * one for the watcher, one for the limits sync thread */
    struct gen *_Atomic newer;      /* shared: the next generation, set when replaced */
    /* per API key (admission.c): keyring entry order */
    struct rl_global *rl_global;    /* shared, lock-free */
    struct rl_local *rl_local;      /* [shard * rl_stride + key]: each shard its own lines */
    unsigned rl_stride;
    int *key_metric_slot;
    _Atomic uint64_t *rl_touched;   /* cluster mode: a bit per key, set by shards going to
                                     * its pools, cleared by the limits sync thread */
};

/* prev: the generation it replaces (NULL at start): keys inherit their limits' state */
struct gen *gen_create(struct config *cfg, const struct gen *prev, unsigned nshards, char *err,
                       size_t errlen);
void gen_unref(struct gen *g);
/* Sorts s->m by id, then pool, and drops repeated pairs. */
void served_models_sort(struct served_models *s);
/* A control-plane thread started after the first generation (the admin listener)
 * becomes a holder: it owns a reference to current and to every generation created
 * from now on, and releases each as it moves past it, as the watcher does. Main
 * thread, before any reload. */
void gen_add_holder(struct gen *current);
/* Scraped load counts only while fresh: a backend whose metrics stopped coming
 * (stalled, overloaded, unreachable) is unknown, never idle. */
static inline bool backend_signal_fresh(const struct gen *g, unsigned backend, uint64_t now_ms)
{
    uint64_t at = atomic_load_explicit(&g->signal[backend].scraped_ms, memory_order_acquire);
    uint64_t interval = g->backend_interval_ms[backend];
    uint64_t max_age = 3 * interval > interval + 1000 ? 3 * interval : interval + 1000;
    return at && now_ms >= at && now_ms - at <= max_age;
}

static inline uint32_t gen_outstanding(const struct gen *g, unsigned backend)
{
    uint32_t sum = 0;
    for (unsigned s = 0; s < g->nshards; s++)
        sum += atomic_load_explicit(&g->load[backend * g->nshards + s].outstanding, memory_order_relaxed);
    return sum;
}

/* The view shards and the watcher share of whether a backend takes requests. */
static inline bool backend_available(const struct gen *g, unsigned b)
{
    return atomic_load_explicit(&g->health[b].checked_up, memory_order_relaxed) &&
           atomic_load_explicit(&g->health[b].circuit, memory_order_relaxed) == CIRCUIT_CLOSED;
}

#endif
