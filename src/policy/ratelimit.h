/* Per-key rate limits: requests per minute, tokens per minute (token buckets with
 * a burst size), a daily token quota and a daily spend cap (micro-USD), both of
 * which reset at 00:00 UTC.
 *
 * Shape: one struct rl_global per key, shared by all shards (atomics only, no
 * lock), and one struct rl_local per key per shard (plain fields, touched only
 * by that shard's thread). A shard admits from its local lease and goes to the
 * global pool, with a CAS, only when the lease cannot cover a request. Pure: the
 * caller passes the time (now_ns from a monotonic clock, now_unix_s for the
 * quota's UTC day); nothing here reads a clock, allocates or does I/O.
 *
 * Accuracy (see "Rate limits" in docs/ARCHITECTURE.md): a lease is at most
 * `batch` = capacity / (shards * 16) tokens (0 for small limits: no lease, every
 * admission is a CAS on the global pool and the limit is exact). Over any time
 * window, a bucket admits at most capacity + refill + shards * batch; tokens
 * left in other shards' leases can make it admit less by up to shards * batch.
 * The daily quota never admits more than daily_tokens (plus settlement debt),
 * nor the spend cap more than daily_spend. */
#ifndef AIGW_POLICY_RATELIMIT_H
#define AIGW_POLICY_RATELIMIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Rates above this (per minute) are clamped to it: effectively unlimited, and it
 * keeps the bucket arithmetic inside 64 bits for any clock value. */
#define RL_MAX_PER_MINUTE 10000000000ULL
#define RL_MAX_DAILY      (1ULL << 40)
#define RL_MAX_BURST_MS   86400000ULL
#define RL_MAX_SHARDS     1024
/* rl_headers_write never needs more than this. */
#define RL_HEADERS_MAX    400

/* A tier's limits. 0 means unlimited for that dimension; burst_ms 0 means 60 s
 * (a bucket holds one minute's allowance). */
struct rl_limits {
    uint64_t rpm;           /* requests_per_minute */
    uint64_t tpm;           /* tokens_per_minute */
    uint64_t burst_ms;      /* bucket size, as time of refill */
    uint64_t daily_tokens;  /* quota per UTC day */
    uint64_t daily_spend;   /* micro-USD per UTC day */
};

/* RL_UNAVAILABLE: the cluster's store cannot be reached and [cluster]
 * on_redis_down = deny (decided by admission, never by rl_admit). */
enum rl_limit { RL_NONE = 0, RL_REQUESTS, RL_TOKENS, RL_QUOTA, RL_SPEND, RL_UNAVAILABLE };

/* One token bucket's parameters; read-only after rl_global_init. */
struct rl_rate {
    uint64_t per_minute;    /* 0: unlimited */
    int64_t capacity;       /* bucket size in tokens, >= 1 */
    int64_t batch;          /* largest lease a shard keeps, >= 0 */
};

/* Shared by all shards. Must be 64-byte aligned (aligned_alloc/posix_memalign or
 * an array of them): the parameters sit on a read-only cache line and the three
 * atomics on their own line, so admissions that stay local never miss on it. */
struct rl_global {
    struct rl_rate req, tok;
    int64_t daily;          /* 0: no quota */
    int64_t daily_batch;
    int64_t spend;          /* micro-USD; 0: no spend cap */
    int64_t spend_batch;
    uint64_t origin_ns;     /* now_ns at init: bucket time is measured from it */
    uint32_t shards;
    bool cluster;           /* rl_global_set_cluster: pools are fed by the limits
                             * sync thread, not refilled by time */
    /* Cluster mode: the bit a shard sets when it goes to the pools (a lease
     * ran dry, a settlement reached them), in a bitmap of all keys that the
     * sync thread clears a word at a time: it looks only at keys touched
     * lately, between periodic sweeps of all of them. NULL: none. */
    _Atomic uint64_t *touched_word;
    uint64_t touched_bit;

    /* Bucket state as GCRA "empty time": the virtual time, in units of one
     * token's refill interval since origin_ns, at which the bucket was (or will
     * be) empty. Level at time u = min(capacity, u - empty_at). */
    _Alignas(64) _Atomic int64_t req_empty_at;
    _Atomic int64_t tok_empty_at;
    /* Quota: UTC day number << 42 | tokens used that day. */
    _Atomic uint64_t daily_state;
    /* Spend cap: UTC day number << 42 | micro-USD spent that day. */
    _Atomic uint64_t spend_state;

    /* Cluster mode: what the shared store last said (written by the limits
     * sync thread, read for x-ratelimit-* headers): the shared buckets' levels
     * and the day's use of the quota over all hosts. */
    _Alignas(64) _Atomic int64_t shared_req, shared_tok;
    _Atomic int64_t shared_daily_used;
    _Atomic int64_t shared_spend_used;
};

/* One shard's leases for one key. Zero it (rl_local_init) before use. Only that
 * shard's thread touches it. */
struct rl_local {
    int64_t req, tok;       /* leased and not yet admitted */
    int64_t daily;
    int64_t daily_day;      /* the UTC day the daily lease belongs to */
    int64_t spend;          /* micro-USD */
    int64_t spend_day;
    /* Cluster mode: what this shard was refused because the host's pool ran
     * dry, per enum rl_dim: the demand the limits sync thread sizes leases by.
     * Written by the shard only (relaxed), read by the sync thread. */
    _Atomic uint64_t refused[4];   /* RL_DIMS */
};

/* What an admission reserved; the caller keeps it with the request and passes
 * it to rl_settle when the real usage is known. */
struct rl_ticket {
    uint64_t tokens;
    uint64_t spend;         /* micro-USD */
    int64_t day;            /* UTC day the quota and the spend were charged on */
};

struct rl_verdict {
    enum rl_limit limit;        /* RL_NONE: admitted; else the limit that fired */
    bool too_large;             /* the cost exceeds the bucket or the quota itself:
                                 * no wait will ever admit it (retry_after_s is 0) */
    uint32_t retry_after_s;     /* when denied: seconds until enough refills (>= 1),
                                 * for RL_QUOTA and RL_SPEND seconds until 00:00 UTC */
    struct rl_ticket ticket;    /* when admitted: for rl_settle */
};

/* For the x-ratelimit-* headers. A limit is the bucket's size (the per-minute
 * rate with the default 60 s burst); 0 means unlimited: omit its headers.
 * remaining is approximate: the global pool plus this shard's lease (tokens in
 * other shards' leases are not seen). reset is the time until the bucket would
 * be full again if nothing more were taken. */
struct rl_status {
    uint64_t limit_requests, remaining_requests, reset_requests_ms;
    uint64_t limit_tokens, remaining_tokens, reset_tokens_ms;
    uint64_t limit_daily, remaining_daily, reset_daily_s;
    uint64_t limit_spend, remaining_spend;  /* micro-USD; reset as reset_daily_s */
};

/* shards: how many shards share g (each with its own rl_local). Out-of-range
 * values are clamped to the RL_MAX_* above. Buckets start full. */
void rl_global_init(struct rl_global *g, const struct rl_limits *lim, unsigned shards,
                    uint64_t now_ns);
void rl_local_init(struct rl_local *l);

/* Carries the state of a key's previous global (the same key under an older
 * configuration) into a freshly initialised g: bucket levels (clamped to the
 * new sizes) and the quota used today. Tokens in the old globals' leases are
 * not carried (they are lost, which only errs on the strict side); whatever
 * shards still take from old after this call is not seen by g. */
void rl_global_inherit(struct rl_global *g, const struct rl_global *old, uint64_t now_ns,
                       int64_t now_unix_s);

/* Admits a request that reserves cost_tokens: one from the requests bucket,
 * cost_tokens from the tokens bucket and from the daily quota. All or nothing:
 * when any limit refuses, whatever was taken for the others is given back and
 * out says which limit fired (checked in the order requests, tokens, quota) and
 * when to retry. Returns true when admitted. */
bool rl_admit(struct rl_global *g, struct rl_local *l, uint64_t cost_tokens,
              uint64_t now_ns, int64_t now_unix_s, struct rl_verdict *out);
/* The same, also reserving cost_spend micro-USD from the spend cap (checked
 * last, after the quota). */
bool rl_admit_priced(struct rl_global *g, struct rl_local *l, uint64_t cost_tokens, uint64_t cost_spend,
                     uint64_t now_ns, int64_t now_unix_s, struct rl_verdict *out);

/* Settles an admitted request against its real token count: reserved - actual
 * goes back to the tokens bucket and the quota, or, when actual > reserved, the
 * difference is taken without a check: the tokens bucket down to empty, never
 * below (so a later request waits at most the bucket's window, and so do
 * Retry-After and x-ratelimit-reset-tokens); the quota may go over, which
 * holds until the next UTC day. Quota changes for a ticket from an earlier UTC
 * day are dropped: that day's quota is gone. */
void rl_settle(struct rl_global *g, struct rl_local *l, const struct rl_ticket *t,
               uint64_t actual_tokens, uint64_t now_ns, int64_t now_unix_s);
/* The same, also settling the spend cap against actual_spend micro-USD, as the
 * quota: the difference goes back, or is taken over the cap until the next UTC
 * day. rl_settle leaves the spend as reserved. */
void rl_settle_priced(struct rl_global *g, struct rl_local *l, const struct rl_ticket *t,
                      uint64_t actual_tokens, uint64_t actual_spend, uint64_t now_ns, int64_t now_unix_s);

void rl_status(const struct rl_global *g, const struct rl_local *l, uint64_t now_ns,
               int64_t now_unix_s, struct rl_status *out);

/* "requests" | "tokens" | "quota" | "spend" | "limits_unavailable" ("" for RL_NONE): the error `code` and the
 * metric label. */
const char *rl_limit_name(enum rl_limit which);

/* A duration as OpenAI's x-ratelimit-reset-* show it (Go's time.Duration
 * format, millisecond resolution): "0s", "20ms", "1s", "1.5s", "6m0s", "1h2m3s".
 * Returns the length; writes a NUL-terminated string when cap > length. */
size_t rl_format_duration(char *buf, size_t cap, uint64_t ms);

/* Writes the x-ratelimit-{limit,remaining,reset}-{requests,tokens} header lines
 * ("Name: value\r\n") for the limited dimensions. Returns the bytes written, or
 * 0 when cap is too small (RL_HEADERS_MAX is always enough). */
size_t rl_headers_write(char *buf, size_t cap, const struct rl_status *s);

/* The UTC day number of a unix time (the quota's day). */
int64_t rl_utc_day(int64_t unix_s);

/* The daily quota's use on UTC day `today`, as a snapshot keeps it (tokens in
 * shards' leases count as used: a restart loses them, on the strict side). */
int64_t rl_quota_used(const struct rl_global *g, int64_t today);
/* Sets the use of `today` (a snapshot read at start, before any shard runs). */
void rl_quota_restore(struct rl_global *g, int64_t used, int64_t today);
/* The same for the spend cap, in micro-USD. */
int64_t rl_spend_used(const struct rl_global *g, int64_t today);
void rl_spend_restore(struct rl_global *g, int64_t used, int64_t today);

/* ---- cluster mode ------------------------------------------------------
 *
 * With [cluster], a key's rl_global is this host's share of buckets kept in a
 * shared store (src/cluster): its pools do not refill with time. The limits
 * sync thread (the only caller of the functions below, besides
 * rl_global_set_cluster) fills them with tokens leased from the store, takes
 * back what sits unused, and pushes settlement debts (a pool below zero). Shards
 * admit and settle exactly as in local mode, except that a settlement larger
 * than the reservation takes the pool below zero instead of stopping at empty,
 * so the store is charged for it. */
enum rl_dim { RL_DIM_REQ, RL_DIM_TOK, RL_DIM_DAILY, RL_DIM_SPEND };
#define RL_DIMS 4

/* Right after rl_global_init, before any shard sees g: every pool starts empty. */
void rl_global_set_cluster(struct rl_global *g, int64_t now_unix_s);

/* Whether g limits dimension d at all. */
bool rl_has_dim(const struct rl_global *g, enum rl_dim d);

/* The tokens (requests) in the host pool of d now, not counting shards'
 * leases; below 0 when settlements owe more than the pool held. For
 * RL_DIM_DAILY and RL_DIM_SPEND, of UTC day `today` (0 when the pool is of an
 * earlier day). */
int64_t rl_stock(const struct rl_global *g, enum rl_dim d, int64_t today);

/* Puts n >= 0 leased tokens into the pool of d (daily: of day `today`; a pool of
 * an earlier day is moved to today, empty, first). Returns how many fit: a pool
 * holds at most its bucket's capacity (daily: the quota). */
int64_t rl_stock_add(struct rl_global *g, enum rl_dim d, int64_t n, int64_t today);

/* Takes up to max >= 0 tokens out of the pool of d, never below zero, to give
 * back to the store. Returns how many. */
int64_t rl_stock_take(struct rl_global *g, enum rl_dim d, int64_t max, int64_t today);

/* Takes n >= 0 tokens out of the pool of d whether there or not: below zero is
 * a debt the sync thread pushes to the store. Returns how many. */
int64_t rl_stock_charge(struct rl_global *g, enum rl_dim d, int64_t n, int64_t today);

/* Takes whatever the pool of d holds, debt included, leaving it at zero:
 * returns the level it had (negative: a debt). For moving stock between
 * generations, and for pushing debts. */
int64_t rl_stock_drain(struct rl_global *g, enum rl_dim d, int64_t today);

/* Where g says a shard went to its pools: bit `bit` of *word (before any shard sees g). */
void rl_global_set_touch(struct rl_global *g, _Atomic uint64_t *word, unsigned bit);

/* Sum over a key's shards of rl_local.refused[d]: l is shard 0's local, the
 * others follow every `stride` entries. */
uint64_t rl_refused_sum(const struct rl_local *l, size_t stride, unsigned shards, enum rl_dim d);

/* The store's view after a sync, for headers: bucket levels, quota used today. */
void rl_shared_publish(struct rl_global *g, int64_t req_level, int64_t tok_level, int64_t daily_used);
/* The store's view of the day's spend over all hosts (micro-USD). */
void rl_shared_publish_spend(struct rl_global *g, int64_t spend_used);

#endif
