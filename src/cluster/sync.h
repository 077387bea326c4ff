/* The limits sync thread (sync.c): the control-plane side of per-key limits.
 *
 * With [cluster], it keeps every key's host pools (struct rl_global in cluster
 * mode, ratelimit.h) topped up with tokens leased from buckets held in Redis,
 * gives back what sits unused, pushes settlement debts, and publishes the
 * store's view for headers, in one batched script call every sync_interval.
 * Shards never wait for it: they admit from what it left in the pools. When
 * Redis cannot be reached it switches admission to [cluster] on_redis_down.
 * Without [cluster] and with [server] state_dir, it snapshots the daily quotas
 * to disk (snapshot.h) every SNAPSHOT_INTERVAL_MS.
 *
 * Like the watcher it holds a reference on the generation it works from and
 * moves to the newest one by following `newer`, handing the old pools' stock
 * over to the new generation's keys by NAME. */
#ifndef AIGW_CLUSTER_SYNC_H
#define AIGW_CLUSTER_SYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct outbuf;

/* How admission treats keys with limits, process-wide. One writer (the sync
 * thread); shards read it with a relaxed load per admission. */
enum cluster_admission {
    CLUSTER_ADMIT_NORMAL = 0,   /* no [cluster], or Redis reachable: admit from the pools */
    CLUSTER_ADMIT_LOCAL,        /* Redis down, on_redis_down = local: the pools are
                                 * refilled by this host at its share of each limit */
    CLUSTER_ADMIT_DENY,         /* Redis down, on_redis_down = deny: 429 limits_unavailable */
    CLUSTER_ADMIT_ALLOW,        /* Redis down, on_redis_down = allow: admit unmetered */
};

extern _Atomic int cluster_admission_state;

static inline enum cluster_admission cluster_admission_mode(void)
{
    return (enum cluster_admission)atomic_load_explicit(&cluster_admission_state, memory_order_relaxed);
}

/* Starts the thread; call once rt.current is set. 0, or -1 (logged). */
int limits_sync_start(void);
/* Wakes it at once (main, after publishing a reloaded generation). */
void limits_sync_wake(void);
/* Stops it: returns this host's unused leases to Redis (within [cluster]
 * timeout), writes a last snapshot, joins. Call after the shards stopped;
 * shards_stopped says they all did, so what sits in their own leases is
 * returned too (else it is left: strict side). */
void limits_sync_stop(bool shards_stopped);

/* The aigw_cluster_* families, for /metrics (metrics.c). */
void limits_sync_metrics(struct outbuf *o);

#endif
