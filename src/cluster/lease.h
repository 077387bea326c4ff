/* Lease sizing for the limits sync thread (lease.c): how many tokens (or
 * requests) a host keeps in a key's pool for one dimension, from its demand over
 * the last sync_interval. Pure arithmetic: no clock, no I/O, no allocation.
 *
 * Per key and dimension, each sync:
 *   demand = what left the pool since the last sync (>= 0) + what the shards
 *            were refused because the pool ran dry
 *   target = clamp(2 x demand, floor, ceiling)
 *   want   = target - stock                when stock < target
 *   ret    = stock - target                when stock > 2 x target (hysteresis),
 *                                          or stock > target with no demand at all
 *                                          (an idle host gives back down to floor)
 * Rate buckets (capacity C, H hosts seen by the store in the last 10 s):
 *   share = C / (2H), floor = max(1, C / (8H)) (at most share, at least 1).
 * Daily quota (limit L, day's use over all hosts U as the store last said,
 * leases included; left R = L - U):
 *   share = R / (2H), floor = max(1, R / (8H)), both 0 when nothing is left:
 *   the hosts split what is left today, so leases shrink geometrically as the
 *   quota runs out and what a host strands at any time is at most R / (2H).
 * ceiling = share; but when the shards were refused while the pool held
 *   stock and nothing left it, what they asked does not fit in it (a token reservation larger than a
 *   share, or the last of a day's quota): then the host *holds* what was
 *   refused, up to C (or R), as its floor and ceiling for LEASE_HOLD_MS, long
 *   enough for the client's retry after Retry-After (1 s) to find it, unless
 *   that much left the pool sooner (the request passed). A burst of ordinary
 *   requests drains the pool first and stays capped at the share.
 *
 * THE ERROR BOUND (see "Shared limits (cluster)" in docs/ARCHITECTURE.md). With
 * H hosts of S shards each, shard lease batch b = C / (16 S) (ratelimit.h):
 *   - Over any window W the cluster admits at most
 *       C + rate x W + sum over hosts (host stock + S x b)
 *     because everything admitted was either in the store's bucket (which
 *     holds at most C and refills at rate) or already in a host's pool or a
 *     shard's lease when W began. Host stock <= ceiling, which is the share
 *     C / (2H) except for LEASE_HOLD_MS after a refused request larger than it
 *     (then at most that request, <= C); so the
 *     over-admission is at most C / 2 + H x S x b <= C / 2 + H x C / 16
 *     in the worst case, and an idle host holds at most floor = C / (8H)
 *     two intervals after it went idle.
 *   - Stranded capacity (refused by one host while another holds stock) is at
 *     most the same sum of host stocks and shard leases.
 *   - The daily quota never over-admits: a lease is charged to the day's use
 *     when it is taken, and the store grants at most what is left. Two
 *     exceptions: settlement debt (real usage beyond the reservation) not yet
 *     pushed, at most one interval's overage per host; and outages under
 *     on_redis_down = local, where each host may grant up to R / H on its own,
 *     R as last seen: at most the remaining quota over all hosts. */
#ifndef AIGW_CLUSTER_LEASE_H
#define AIGW_CLUSTER_LEASE_H

#include <stdint.h>

/* The most hosts lease sizing divides by: more would round every share to 0. */
#define LEASE_MAX_HOSTS 1024
/* How long a host keeps a lease sized for a refused request larger than its
 * share: the client retries after Retry-After (1 s) plus its own latency. */
#define LEASE_HOLD_MS 3000

struct lease_bounds {
    int64_t floor;      /* the least a host keeps, even idle (0: nothing to lease) */
    int64_t share;      /* the most a host keeps from its own demand */
    int64_t max;        /* the most a host's pool may hold: the bucket, or what is left today */
};

struct lease_bounds lease_rate_bounds(int64_t capacity, uint32_t hosts);
struct lease_bounds lease_daily_bounds(int64_t limit, int64_t used_all_hosts, uint32_t hosts);

/* Demand over the last interval: stock_last is the pool's level just after the
 * thread's own last change to it, stock_now its level now, refused what the
 * shards were refused in between. Saturates far below overflow. */
int64_t lease_demand(int64_t stock_last, int64_t stock_now, uint64_t refused);

struct lease_plan {
    int64_t target;
    int64_t want;       /* tokens to lease (> 0) or 0 */
    int64_t ret;        /* tokens to give back (> 0) or 0 */
};

/* A lease kept for a request larger than a share (zero it to start). */
struct lease_hold {
    int64_t amount;
    uint64_t until_ms;
};

/* stock >= 0 (a debt is pushed and cleared before sizing); now_ms: any
 * monotonic clock, for the hold. */
struct lease_plan lease_size(const struct lease_bounds *b, int64_t demand, uint64_t refused,
                             int64_t stock, struct lease_hold *hold, uint64_t now_ms);

/* Under on_redis_down = local: how many tokens to add to a rate pool this
 * turn, at per_minute / hosts over elapsed_ns, up to capacity / hosts held.
 * *carry keeps the fraction of a token between turns (start it at 0). */
int64_t lease_local_refill(uint64_t per_minute, int64_t capacity, uint32_t hosts, uint64_t elapsed_ns,
                           int64_t stock, uint64_t *carry);

#endif
