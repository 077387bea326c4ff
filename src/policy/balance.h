/* Backend selection within a pool. Pure: the caller passes the load and health it
 * knows; nothing here does I/O or allocates after balance_state_init. Each shard
 * keeps its own balance_state per pool, so nothing is shared between threads. */
#ifndef AIGW_POLICY_BALANCE_H
#define AIGW_POLICY_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"

struct balance_state {
    unsigned n;                 /* backends this state was made for */
    unsigned rr_next;           /* least_outstanding: where the next tie-break scan starts */
    int64_t *current_weight;    /* round_robin: smooth weighted round robin state */
};

/* Returns 0, or -1 when out of memory. nbackends may be 0. */
int balance_state_init(struct balance_state *s, unsigned nbackends);
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
 *     candidate after the previous pick, so equal load spreads evenly. */
int balance_pick(enum balance_kind kind, struct balance_state *s,
                 const struct cfg_backend *backends, unsigned n,
                 const uint32_t *outstanding, const bool *up, unsigned max_outstanding);

/* A route's `split`: picks one of split[0..n) by weight, with the same smooth
 * weighted round robin (over any sum(weights) picks each gets exactly its weight).
 * current[0..n) is the caller's state, zeroed at first. */
unsigned split_pick(int64_t *current, const struct cfg_split *split, unsigned n);

#endif
