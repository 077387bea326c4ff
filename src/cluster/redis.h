/* The limits sync thread's connection to Redis (redis.c, over hiredis): one
 * blocking connection whose connect, command and read are bounded by [cluster]
 * timeout, and the one Lua script that leases, returns and settles tokens for a
 * batch of keys atomically, on Redis's clock.
 *
 * Layout in Redis, under key_prefix P (every key expires):
 *   P rl:NAME           hash: the key's shared buckets, GCRA-free "level at ts":
 *                       rl/rt (requests level, its time in µs), tl/tt (tokens);
 *                       expires when it would be full again plus a minute
 *   P day:YYYYMMDD:NAME hash: that UTC day's use: tok (tokens); spend (micro-USD,
 *                       for the spend cap) goes in the same hash; expires 48 h
 *                       after the day began
 *   P host:ID           hash: seq and reply of the host's last applied batch, so
 *                       a batch retried after a lost reply is not applied twice
 *   P hosts             sorted set: host ids by last sync time (pruned after
 *                       10 s), whose count sizes each host's share
 * Used only by that thread: nothing here is thread-safe or async. */
#ifndef AIGW_CLUSTER_REDIS_H
#define AIGW_CLUSTER_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cfg_cluster;
struct redis_link;

enum redis_error {
    REDIS_OK = 0,
    REDIS_E_CONNECT,            /* refused, unreachable, or the connect timed out */
    REDIS_E_TIMEOUT,            /* a command's reply did not come within the timeout */
    REDIS_E_AUTH,               /* AUTH refused (wrong password or user) */
    REDIS_E_SCRIPT,             /* the script failed or was refused (e.g. a read-only replica) */
    REDIS_E_PROTOCOL,           /* a reply of the wrong shape, or the connection broke */
    REDIS_E_COUNT
};

/* For aigw_cluster_sync_errors_total{kind} and logs. */
const char *redis_error_name(enum redis_error e);

/* One key's part of a sync batch. Dimensions with per_minute (or limit) 0 are
 * not limited and not touched. want: tokens to lease; ret: unused tokens given
 * back; debt: tokens used beyond what was leased (settlements), charged
 * without a check (a bucket stops at empty, a day's use may pass its limit). */
struct lease_rate_op {
    uint64_t per_minute;
    int64_t capacity;
    int64_t want, ret, debt;
};
/* A UTC day's allowance: the token quota (tokens) or the spend cap (micro-USD). */
struct lease_day_op {
    int64_t limit, want, ret, debt;
};
struct lease_op {
    const char *name;           /* the key's NAME */
    int64_t day;                /* UTC day number of the daily and spend ops */
    struct lease_rate_op rate[2];   /* [RL_DIM_REQ], [RL_DIM_TOK] */
    struct lease_day_op daily, spend;
};
/* What Redis answered for one op: what it granted (<= want), and its view
 * after the op: the buckets' levels and the day's use over all hosts. */
struct lease_result {
    int64_t granted[4];         /* by enum rl_dim */
    int64_t req_level, tok_level;
    int64_t daily_used, spend_used;
};

struct redis_link *redis_link_new(void);
void redis_link_free(struct redis_link *r);
/* Connects (closing any connection it had), authenticates and loads the script.
 * REDIS_OK, or the error with a message for the log in err. */
enum redis_error redis_link_connect(struct redis_link *r, const struct cfg_cluster *cl, char *err,
                                    size_t errlen);
bool redis_link_connected(const struct redis_link *r);
/* Drops the connection (after an error: the next call reconnects). */
void redis_link_close(struct redis_link *r);

/* Runs one batch of n ops (n may be 0: a heartbeat) as one script call. seq
 * identifies the batch: sending the same host_id and seq again returns the
 * first call's results without applying it twice. On REDIS_OK, out[0..n) and
 * *hosts (hosts seen in the last 10 s, this one included) are set. Any other
 * result leaves the link closed. */
enum redis_error redis_sync(struct redis_link *r, const char *prefix, uint64_t host_id, uint64_t seq,
                            const struct lease_op *ops, size_t n, struct lease_result *out,
                            uint32_t *hosts, char *err, size_t errlen);

/* Takes this host out of the store's hosts (a graceful stop, or [cluster]
 * pointed elsewhere), so the others' shares grow at their next sync instead of
 * 10 s later. */
enum redis_error redis_leave(struct redis_link *r, const char *prefix, uint64_t host_id, char *err,
                             size_t errlen);

#endif
