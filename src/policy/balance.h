/* Backend selection within a pool. Pure: the caller passes the load and health it
 * knows; nothing here does I/O, reads a clock or allocates after balance_state_init.
 * Each shard keeps its own balance_state per pool, so nothing is shared between
 * threads. */
#ifndef AIGW_POLICY_BALANCE_H
#define AIGW_POLICY_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "policy/types.h"

/* Thresholds of the capacity and prefix balancers (see balance_pick_load).
 * balance_state_init sets the defaults below; the caller may change them. */
#define BALANCE_KV_KNEE           0.70f /* KV use above which a backend's score grows */
#define BALANCE_KV_GAIN           4.0f  /* score × (1 + gain) at KV use 1.0 */
#define BALANCE_KV_SATURATED      0.90f /* KV use above this: saturated */
#define BALANCE_WAITING_SATURATED 16u   /* engine waiting queue above this: saturated */
#define BALANCE_PREFIX_BOUND      1.25f /* prefix: spill past this × the weighted mean */
#define BALANCE_WAITING_COST      2.0f  /* a waiting request's extra cost over a running one */

struct balance_tuning {
    float kv_knee;              /* BALANCE_KV_KNEE, in [0, 1) */
    float kv_gain;              /* BALANCE_KV_GAIN, >= 0 */
    float kv_saturated;         /* BALANCE_KV_SATURATED */
    uint32_t waiting_saturated; /* BALANCE_WAITING_SATURATED */
    float prefix_bound;         /* BALANCE_PREFIX_BOUND, >= 1 */
    float waiting_cost;         /* BALANCE_WAITING_COST, >= 0 */
};

struct balance_state {
    unsigned n;                 /* backends this state was made for */
    unsigned rr_next;           /* least_outstanding, capacity: where tie-breaks start */
    int64_t *current_weight;    /* round_robin: smooth weighted round robin state */
    uint64_t rng;               /* capacity: xorshift64* state, never 0 */
    struct balance_tuning tune; /* capacity, prefix */
};

/* Returns 0, or -1 when out of memory. nbackends may be 0. The RNG is seeded from
 * the state's address (so the shards' states draw differently); tests and callers
 * wanting a fixed sequence call balance_state_seed afterwards. */
int balance_state_init(struct balance_state *s, unsigned nbackends);
void balance_state_seed(struct balance_state *s, uint64_t seed);
void balance_state_free(struct balance_state *s);

/* Picks a backend among backends[0..n). A backend is a candidate when it is up
 * (up == NULL: all are) and has fewer than max_outstanding requests in flight
 * (0: no limit). outstanding[i] is aigw's in-flight count to backend i summed
 * over shards (NULL: all zero). Returns the index, or -1 when there is no
 * candidate. n must equal the n the state was initialised with (extra backends
 * beyond it are never picked).
 *   round_robin: smooth weighted round robin (as nginx): over any run of
 *     sum(weights) picks with a stable candidate set, each backend gets exactly
 *     its weight, interleaved rather than in bursts.
 *   least_outstanding: the least outstanding/weight; ties go to the first
 *     candidate after the previous pick, so equal load spreads evenly.
 *   capacity, prefix: need the engines' load (balance_pick_load); given only
 *     these arrays they pick as least_outstanding. */
int balance_pick(enum balance_kind kind, struct balance_state *s,
                 const struct cfg_backend *backends, unsigned n,
                 const uint32_t *outstanding, const bool *up, unsigned max_outstanding);

/* What the caller knows of one backend when it picks. */
#define BALANCE_UNKNOWN (-1)
struct backend_view {
    uint32_t outstanding;       /* aigw's requests in flight to it, summed over shards */
    uint32_t max_outstanding;   /* 0: no limit */
    uint32_t weight;            /* relative capacity; 0 counts as 1 */
    bool up;                    /* health: false is never picked */
    /* The engine's scraped load. Negative (BALANCE_UNKNOWN), or NaN for kv_usage:
     * unknown. Metrics that are stale must be passed as unknown, never as 0. */
    int32_t waiting;            /* requests queued in the engine, not yet running */
    int32_t running;            /* sequences being generated */
    float kv_usage;             /* KV-cache use, 0..1 (above 1 counts as 1) */
    uint64_t id;                /* prefix: stable identity, balance_backend_id(); 0: the index */
};

/* A stable identity of a backend for the prefix balancer's hashing: a hash of its
 * normalised address, so a backend keeps its keys when others are added, removed
 * or reordered in the pool. Never 0. */
uint64_t balance_backend_id(const struct cfg_backend *b);

/* Picks a backend among v[0..n) (n as for balance_pick). A candidate is up and,
 * when its max_outstanding is not 0, has outstanding < max_outstanding. Returns
 * the index, or -1 when there is no candidate. Never allocates; O(n).
 *   round_robin, least_outstanding: exactly balance_pick with the same weights,
 *     outstanding counts, health and per-backend limits (prefix_hash unused).
 *
 *   capacity. Unknown values are first replaced, conservatively: an unknown
 *     waiting, running or kv_usage by the worst (largest) known value of that
 *     field among the candidates, or 0 when no candidate knows it (a pool
 *     without metrics: the score is then (outstanding + 1) / weight). So unknown load never looks lighter than the busiest
 *     known engine's, and with the tie-break below a backend with unknown load
 *     never wins against a known one with the same outstanding and weight. Then
 *
 *       queued   = max(outstanding, running + waiting) + waiting_cost × waiting
 *       kvf      = 1 + kv_gain × max(0, kv − kv_knee) / (1 − kv_knee)
 *       score    = (queued + 1) / weight × kvf
 *
 *     queued is the work ahead of a new request: aigw's own in-flight count is
 *     current, the engine's running + waiting (scraped, an interval old) also
 *     shows other clients' load, and whichever is larger counts. A request
 *     waiting in the engine counts 1 + waiting_cost (3) times as much as a
 *     running one: a waiting queue means the batch is full, and a new request
 *     would wait for a slot rather than share the GPU. The +1 is the request
 *     being placed, so at equal (zero) load the heavier backend wins. Dividing by weight makes the score the queue per unit of
 *     capacity. kvf is 1 up to the knee (0.7) and grows linearly to 1 + gain
 *     (5×) at a full cache, where the engine starts preempting and recomputing.
 *
 *     A backend is saturated when kv > kv_saturated (0.9) or waiting >
 *     waiting_saturated (16), with the replaced values (so a backend with
 *     unknown metrics is saturated when the worst known one is). Saturated
 *     backends are candidates only when every candidate is saturated.
 *
 *     Among the remaining candidates, power of two choices: two distinct ones
 *     drawn from the state's RNG (with at most two, both), and the lower score
 *     wins. Ties go to the one with fewer unknown fields, then to the first
 *     after the previous capacity pick (as least_outstanding), so equal load
 *     spreads evenly and a backend with unknown load never beats a known-idle
 *     one with the same outstanding.
 *
 *   prefix. prefix_hash is a hash of the prompt's first blocks (0: no prompt,
 *     which picks as capacity). The preferred backend is the one among the
 *     candidates with the highest weighted rendezvous (HRW) score
 *     weight / −ln(u), u = hash(prefix_hash, id) in (0, 1): each backend gets a
 *     share of the keys proportional to its weight, and adding, removing or
 *     losing a backend moves only the keys it gains or held. Bounded load: when
 *     the preferred backend is saturated, or its outstanding exceeds
 *       prefix_bound × O × weight / W + 1
 *     (O, W: the candidates' total outstanding and weight; 1.25 × the mean for
 *     equal weights; + 1 so an idle fleet keeps affinity), the pick is the
 *     capacity choice among the others: the preferred backend is then ranked
 *     after every other unsaturated candidate (and, when it is saturated itself,
 *     after every other one), so it is picked only when nothing better is left. */
int balance_pick_load(enum balance_kind kind, struct balance_state *s,
                      const struct backend_view *v, unsigned n, uint64_t prefix_hash);

/* A route's `split`: picks one of split[0..n) by weight, with the same smooth
 * weighted round robin (over any sum(weights) picks each gets exactly its weight).
 * current[0..n) is the caller's state, zeroed at first. */
unsigned split_pick(int64_t *current, const struct cfg_split *split, unsigned n);

#endif
