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
#define BALANCE_WAITING_COST      2.0f  /* a waiting request's extra cost over a running one */
/* The prefix scorer's weights (see balance_pick_load), in blocks of prefill
 * (256 bytes of prompt, about 64 tokens): a matched block is worth one, a whole
 * turn of waiting for a batch slot (a running request's time on the engine)
 * queue_weight, a full KV cache kv_weight. A turn is physically worth more
 * (2 s of decode against 16 ms a block at 4000 prompt tokens/s: ~125), but a
 * spill also costs the engine it lands on the prefill's time in a slot and
 * evicts another prefix from its cache, so waiting a little where the prefix is
 * pays: perf/fleet.sh (prefixes, 60 s) gave 80% prefix-cache hits and TTFT p50
 * 304 ms with 32 against 57% and 566 ms with 128. KV use only tips close calls:
 * saturation (kv_saturated) is what keeps a full cache from being picked. */
#define BALANCE_PREFIX_WEIGHT     1.0f
#define BALANCE_QUEUE_WEIGHT      32.0f
#define BALANCE_KV_WEIGHT         8.0f
#define BALANCE_PREFIX_BUSY_WEIGHT 1.0
#define BALANCE_SCORE_WEIGHT_MAX  100000.0
#define BALANCE_PREFIX_CACHE_BLOCKS 4096u /* per backend, while its engine's cache size is unknown */
/* prefix_cache_blocks = auto sizes each backend's index from its engine's cache
 * capacity (balance_cache_blocks), within these bounds. */
#define BALANCE_CACHE_BLOCKS_MIN    64u
#define BALANCE_CACHE_BLOCKS_MAX    1048576u
#define BALANCE_BYTES_PER_TOKEN     4u  /* prompt text per token: English with BPE tokenisers */
/* The record is larger than the engine's cache: the two-generation record holds
 * between half and all of its size, and remembering where a prefix lived for a
 * while after its engine evicted it keeps sending it back there, so each engine
 * keeps serving the same prefixes. Measured with perf/fleet.sh (prefixes, 60 s):
 * 1x the cache gave 51-61% prefix-cache hits, 4x 80%, 21x 79%. */
#define BALANCE_RECORD_PER_CACHE    4u

struct balance_tuning {
    float kv_knee;              /* BALANCE_KV_KNEE, in [0, 1) */
    float kv_gain;              /* BALANCE_KV_GAIN, >= 0 */
    float kv_saturated;         /* BALANCE_KV_SATURATED */
    uint32_t waiting_saturated; /* BALANCE_WAITING_SATURATED */
    float waiting_cost;         /* BALANCE_WAITING_COST, >= 0 */
    float prefix_weight;        /* BALANCE_PREFIX_WEIGHT, >= 0 */
    float queue_weight;         /* BALANCE_QUEUE_WEIGHT, >= 0 */
    float kv_weight;            /* BALANCE_KV_WEIGHT, >= 0 */
    unsigned prefix_max_blocks; /* prompt blocks scored at most; default all */
};

/* Why the last balance_pick_load chose its backend. */
enum balance_reason {
    BALANCE_REASON_LOAD,        /* load alone (every kind but prefix, and prefix without a match) */
    BALANCE_REASON_AFFINITY,    /* prefix: a non-zero prompt match decided it */
};

struct prefix_index;
struct backend_view;

struct balance_state {
    unsigned n;                 /* backends this state was made for */
    unsigned rr_next;           /* least_outstanding, capacity: where tie-breaks start */
    int64_t *current_weight;    /* round_robin: smooth weighted round robin state */
    uint64_t rng;               /* capacity: xorshift64* state, never 0 */
    struct balance_tuning tune; /* capacity, prefix */
    struct prefix_index *index; /* prefix: per backend, where the blocks went; NULL: none */
    bool index_auto;            /* prefix: balance_prefix_fit sizes index[] from the engines' caches */
    uint32_t *slots;            /* prefix: per backend, the largest running count seen */
    enum balance_reason last_reason;
};

/* Returns 0, or -1 when out of memory. nbackends may be 0. The RNG is seeded from
 * the state's address (so the shards' states draw differently); tests and callers
 * wanting a fixed sequence call balance_state_seed afterwards. */
int balance_state_init(struct balance_state *s, unsigned nbackends);
void balance_state_seed(struct balance_state *s, uint64_t seed);
/* Gives the state its prefix index: cache_blocks block hashes per backend
 * (prefix_index.h), allocated now and never per pick. cache_blocks 0 is `auto`:
 * BALANCE_PREFIX_CACHE_BLOCKS each for now, then balance_prefix_fit follows the
 * engines' caches. Returns 0, or -1 when out of memory. Without it, prefix
 * picks as capacity. */
int balance_state_prefix_init(struct balance_state *s, unsigned cache_blocks);
/* The record for an engine cache of `tokens` tokens: BALANCE_RECORD_PER_CACHE
 * times that cache in prompt blocks (openai.h's OPENAI_PREFIX_BLOCK bytes,
 * BALANCE_BYTES_PER_TOKEN bytes a token), clamped to [BALANCE_CACHE_BLOCKS_MIN,
 * BALANCE_CACHE_BLOCKS_MAX]; 0 when tokens is 0 (unknown). */
uint32_t balance_cache_blocks(uint64_t tokens);
/* With an `auto` index (balance_state_prefix_init with 0): resizes backend i's
 * index to v[i].cache_blocks when that is known and differs from its size by
 * more than a quarter either way, keeping the hashes held (prefix_index_resize).
 * The hysteresis means a scrape that wobbles never reallocates: an engine's
 * cache size is fixed at its start, so this allocates about once per backend
 * and shard in a process's life (and after a reload, which builds new states),
 * never per request. Unknown sizes (0) leave an index as it is. Without enough
 * memory the index keeps its size, and the next call tries again. Call before
 * balance_pick_load; balance_pick_load's prefix case does. */
void balance_prefix_fit(struct balance_state *s, const struct backend_view *v, unsigned n);
void balance_state_free(struct balance_state *s);
/* A configuration reload: hands old's prefix knowledge to next, its successor
 * (both prefix states, balance_state_prefix_init'ed). For each backend i of
 * next, map[i] is the same backend's position in old, or -1 for one that
 * joined; its block index and slots estimate move over (the index's tables by
 * pointer, at whatever size they have, replacing next's empty one). Afterwards
 * old has no index and no slots: the indexes of backends that left are freed
 * now, and old (still serving its in-flight requests and their retries) picks
 * as capacity. No-op when either state has no index. Never fails. */
void balance_state_adopt_prefix(struct balance_state *next, struct balance_state *old, const int *map);

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
    uint32_t cache_blocks;      /* the engine's cache as prompt blocks (balance_cache_blocks); 0: unknown */
    uint64_t id;                /* prefix: the backend's identity for prompt homes (a hash of its
                                 * name as configured, stable across reloads); 0: its position */
};

/* A prompt as the prefix balancer sees it: chained block hashes (openai.h's
 * prefix_block), so block k matches only where blocks 0..k-1 did. */
struct prompt_blocks {
    const uint64_t *block;
    unsigned n;
};

/* Picks a backend among v[0..n) (n as for balance_pick). A candidate is up and,
 * when its max_outstanding is not 0, has outstanding < max_outstanding. Returns
 * the index, or -1 when there is no candidate. Never allocates; O(n).
 *   round_robin, least_outstanding: exactly balance_pick with the same weights,
 *     outstanding counts, health and per-backend limits (prompt unused).
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
 *   prefix. prompt: the request's blocks (NULL or none: picks as capacity).
 *     Each candidate (the unsaturated ones while there are any) is scored in
 *     blocks of prefill, as an estimate of the time to its first token:
 *
 *       matched  = the longest run of the prompt's leading blocks found in the
 *                  backend's index (at most tune.prefix_max_blocks)
 *       slots    = max(weight, the largest running count seen from it)
 *       ahead    = max(outstanding, running + waiting)
 *       turns    = max(0, ahead + 1 − slots) / slots
 *       busy     = min(ahead, slots) / slots
 *       score    = prefix_weight × matched − queue_weight × turns
 *                  − kv_weight × kv − BALANCE_PREFIX_BUSY_WEIGHT × busy
 *
 *     matched is the prefill saved; turns is the wait for a batch slot, in
 *     units of a running request's whole time on the engine (a request that
 *     must wait behind `slots` others waits about one such turn), so
 *     queue_weight is that time in blocks of prefill; busy (less than one
 *     block) spreads equal matches over the emptier engines. ahead, kv with
 *     unknown values replaced as for capacity. The highest score wins if it
 *     has matched > 0 (last_reason AFFINITY). Otherwise (no match anywhere, or
 *     the wait outweighs every match) the prompt goes to its home: of the
 *     candidates with a free slot (ahead + 1 <= slots), the highest weighted
 *     rendezvous score of its first block and the backend's id, weighted by
 *     slots; with no free slot anywhere, capacity's pick (last_reason LOAD
 *     for both). The picked backend's index then records the prompt's blocks,
 *     so a hot prefix spreads to a second backend when the first is busy and
 *     affinity follows it there. */
int balance_pick_load(enum balance_kind kind, struct balance_state *s,
                      const struct backend_view *v, unsigned n, const struct prompt_blocks *prompt);

/* A route's `split`: picks one of split[0..n) by weight, with the same smooth
 * weighted round robin (over any sum(weights) picks each gets exactly its weight).
 * current[0..n) is the caller's state, zeroed at first. */
unsigned split_pick(int64_t *current, const struct cfg_split *split, unsigned n);

#endif
