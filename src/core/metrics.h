/* Metrics registry: per-shard counters, each written only by its shard (relaxed
 * atomic load+store, no lock prefix), summed across shards when /metrics is scraped.
 * Label sets that come from the configuration (route names, pool/backend pairs) get
 * a stable slot at config load time, so counters stay monotonic across reloads. */
#ifndef AIGW_CORE_METRICS_H
#define AIGW_CORE_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_SHARDS 256
#define METRICS_MAX_ROUTES 128      /* route slots; slot 0 is "" (no route matched) */
#define METRICS_MAX_BACKENDS 512
#define METRICS_MAX_POOLS 128
#define METRICS_NSTATUS 28          /* 23 common codes + one "other" column per class; see metrics_status_slot() */
#define METRICS_NTERMINATIONS 6     /* TERM_COUNT (accesslog.h) */
#define METRICS_NBUCKETS 14         /* duration histogram buckets, +Inf included */
#define METRICS_LLM_NBUCKETS 14     /* LLM latency buckets (first byte, backend request), +Inf included */
#define METRICS_TOKEN_NBUCKETS 15   /* time-per-output-token buckets, +Inf included */
#define METRICS_MAX_ROUTE_POOLS 256 /* (route, pool) pairs a route can send to, over the process lifetime */
#define METRICS_MAX_MODELS 128      /* model label slots; slot 0 is "other" */
_Static_assert(METRICS_MAX_MODELS <= 256, "a request keeps its model slot in a byte");
#define METRICS_MIN_KEYS 4096       /* API key slots at least; slot 0 is "" (no key, or past the last slot) */

enum relay_mode { RELAY_SPLICE = 0, RELAY_COPY = 1 };
/* aigw_connections' side label. client counts every client connection;
 * client_tls counts those of them on a [tls] listener. */
enum conn_side { SIDE_CLIENT = 0, SIDE_UPSTREAM = 1, SIDE_CLIENT_TLS = 2, METRICS_NSIDES = 3 };
/* aigw_tls_handshakes_total{result,version,resumed}: client-side handshakes */
enum tls_hs_result { TLS_HS_OK = 0, TLS_HS_FAILED = 1 };
enum tls_hs_version { TLS_HS_V12 = 0, TLS_HS_V13 = 1, TLS_HS_VNONE = 2 };   /* none: failed before one was settled */
/* aigw_tls_handshake_failures_total{reason}: the engine's reasons (src/tls/tls.h,
 * enum tls_fail_reason, TLS_FAIL_PROTOCOL..TLS_FAIL_OTHER in that order) and the
 * transport's own two */
#define METRICS_TLS_NREASONS 11
#define METRICS_TLS_TIMEOUT 8       /* handshake_timeout passed */
#define METRICS_TLS_PLAIN_HTTP 9    /* a plain HTTP request on the TLS port */
#define METRICS_TLS_CLIENT_CLOSED 10 /* the client closed in the middle of the handshake */
enum upstream_conn_kind { UPCONN_NEW = 0, UPCONN_REUSED = 1 };
enum token_direction { TOKENS_PROMPT = 0, TOKENS_COMPLETION = 1 };
/* aigw_backend_requests_total's result label: how one attempt on a backend ended
 * (a response head with status < 500, or a connect error, reset, timeout or 5xx) */
enum attempt_result { ATTEMPT_OK = 0, ATTEMPT_FAILED = 1 };
/* aigw_pool_shed_total's reason label: why a request got 503 no_capacity */
enum shed_reason {
    SHED_QUEUE_FULL = 0,    /* "queue_full": the pool's queue was full (lowest priority shed) */
    SHED_QUEUE_TIMEOUT = 1, /* "queue_timeout": waited queue_timeout without capacity */
    SHED_NO_BACKEND = 2,    /* "no_backend": every backend down or its circuit open */
    METRICS_NSHED = 3,
};
/* aigw_client_connections_refused_total's reason label: why a connection the
 * kernel accepted was closed before any request was read, or (no_fds,
 * no_memory) why an accept failed and the connection waits in the backlog */
enum conn_refusal {
    REFUSED_MAX_CONNECTIONS = 0,    /* "max_connections": the shard's share was full (503 or a close on TLS) */
    REFUSED_DRAINING = 1,           /* "draining": the shard is draining for shutdown or handover */
    REFUSED_NO_FDS = 2,             /* "no_fds": accept failed with EMFILE/ENFILE */
    REFUSED_NO_MEMORY = 3,          /* "no_memory": accept failed with ENOBUFS/ENOMEM */
    REFUSED_TLS_PLAIN_HTTP = 4,     /* "tls_plain_http": plain HTTP on a TLS listener (400, closed) */
    METRICS_NREFUSALS = 5,
};
/* aigw_ratelimited_total's limit label: ratelimit.h's enum rl_limit minus one */
#define METRICS_NLIMITS 5
/* Their label values, in that order (also /status.json's rate_limited_total). */
extern const char *const metrics_limit_labels[METRICS_NLIMITS];

typedef _Atomic uint64_t mcounter;
typedef _Atomic int64_t mgauge;

/* aigw_cost_usd_total: one cell per (key, model label) pair a shard has charged,
 * in a fixed open-addressed table (the key x model matrix would be megabytes per
 * shard). The shard alone writes; a cell's pair is published before its first
 * amount, and never changes after. Pairs past the table's room are charged to
 * cost_overflow, shown as key="", model="other". */
#define METRICS_COST_CELLS 4096         /* per shard; a power of two */
#define METRICS_COST_PROBES 64          /* cells tried for a new pair before cost_overflow */
struct cost_cell {
    _Atomic uint32_t pair;              /* (key slot << 8 | model slot) + 1; 0: free */
    uint32_t pico_rem;                  /* pico-USD below one nano-USD, carried to the next request */
    mcounter nano_usd;                  /* saturates at UINT64_MAX */
};

/* A histogram's bucket table: n buckets, the last one +Inf; bound_us[i] is bucket
 * i's upper bound (inclusive, as Prometheus "le") and le[i] its label. */
struct metrics_buckets {
    unsigned n;
    const uint64_t *bound_us;       /* n - 1 bounds */
    const char *const *le;          /* n labels */
};
extern const struct metrics_buckets metrics_duration_buckets;  /* 5ms..60s: requests, queue waits */
extern const struct metrics_buckets metrics_llm_buckets;       /* 25ms..300s: first byte, backend requests */
extern const struct metrics_buckets metrics_token_buckets;     /* 1ms..1s: time per output token */
/* The bucket (index into b->le) a time falls in. */
unsigned metrics_bucket_of(const struct metrics_buckets *b, uint64_t us);

struct shard_metrics {
    mcounter requests[METRICS_MAX_ROUTES][METRICS_NSTATUS];
    mcounter duration_bucket[METRICS_NBUCKETS];   /* cumulative at render time, not here */
    mcounter duration_sum_us;
    mcounter duration_count;                      /* also aigw_shard_requests_total */
    mcounter upstream_conns[METRICS_MAX_BACKENDS][2];
    mcounter upstream_tls_handshakes[METRICS_MAX_BACKENDS][2];  /* TLS pools: full, resumed */
    mcounter relay_bytes[2];
    mgauge connections[METRICS_NSIDES];
    mcounter tls_handshakes[2][3][2];              /* result, version, resumed */
    mcounter tls_failures[METRICS_TLS_NREASONS];
    mcounter access_log_dropped;
    mcounter client_accepted;                       /* connections taken in (conn_accepted) */
    mcounter client_refused[METRICS_NREFUSALS];
    mcounter client_aborts[METRICS_MAX_ROUTES];     /* clients gone before their response ended */
    mcounter terminations[METRICS_NTERMINATIONS];  /* enum termination (accesslog.h); [0] unused */
    /* per API key slot, sized at metrics_init (see metrics_reserve_keys) */
    mcounter (*tokens)[2];                          /* enum token_direction */
    mcounter (*ratelimited)[METRICS_NLIMITS];
    /* per backend slot */
    mcounter backend_requests[METRICS_MAX_BACKENDS][2];    /* enum attempt_result */
    mcounter backend_retries[METRICS_MAX_BACKENDS];        /* attempts on it retried elsewhere */
    mcounter balance_decisions[METRICS_MAX_BACKENDS][2];   /* picks of it, by enum balance_reason */
    mcounter prefix_share_applied;  /* other shards' placements copied in (prefix_share.c) */
    mcounter prefix_share_lapped;   /* times a journal's writer overtook this shard (placements lost) */
    mcounter circuit_opens[METRICS_MAX_BACKENDS];
    /* per pool slot */
    mgauge queued[METRICS_MAX_POOLS];                      /* requests waiting now */
    mcounter queue_wait_bucket[METRICS_MAX_POOLS][METRICS_NBUCKETS]; /* as duration_bucket */
    mcounter queue_wait_sum_us[METRICS_MAX_POOLS];
    mcounter queue_wait_count[METRICS_MAX_POOLS];
    mcounter shed[METRICS_MAX_POOLS][METRICS_NSHED];
    mcounter fallbacks[METRICS_MAX_POOLS];                 /* requests it sent to its fallback */
    /* AI requests (metrics_observe_ai): per (route, pool) pair slot */
    mcounter first_byte_bucket[METRICS_MAX_ROUTE_POOLS][METRICS_LLM_NBUCKETS];
    mcounter first_byte_sum_us[METRICS_MAX_ROUTE_POOLS];
    mcounter token_gap_bucket[METRICS_MAX_ROUTE_POOLS][METRICS_TOKEN_NBUCKETS];
    mcounter token_gap_sum_us[METRICS_MAX_ROUTE_POOLS];
    /* per backend slot: the attempt that answered, and what it generated */
    mcounter backend_duration_bucket[METRICS_MAX_BACKENDS][METRICS_LLM_NBUCKETS];
    mcounter backend_duration_sum_us[METRICS_MAX_BACKENDS];
    mcounter backend_tokens[METRICS_MAX_BACKENDS][2];      /* enum token_direction */
    /* per model label slot */
    mcounter model_requests[METRICS_MAX_MODELS][METRICS_NSTATUS];
    mcounter model_tokens[METRICS_MAX_MODELS][2];          /* enum token_direction */
    struct cost_cell cost[METRICS_COST_CELLS];
    struct cost_cell cost_overflow;
    mgauge config_generation;      /* the generation this shard serves new requests with */
} __attribute__((aligned(64)));

/* Single-writer increment: plain load+store, no locked instruction. */
static inline void mc_add(mcounter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
static inline void mg_add(mgauge *g, int64_t n)
{
    atomic_store_explicit(g, atomic_load_explicit(g, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

/* A shard took generation `id` for its new requests (at start and on each reload):
 * aigw_shard_config_generation, how a reload is seen to have reached every shard. */
static inline void metrics_shard_adopted(struct shard_metrics *m, uint64_t id)
{
    atomic_store_explicit(&m->config_generation, (int64_t)id, memory_order_relaxed);
}

struct outbuf;
/* "# HELP name help\n# TYPE name type\n": a family's head in the exposition,
 * for every module that renders a part of /metrics. */
void metrics_put_family(struct outbuf *o, const char *name, const char *type, const char *help);

/* Creates the registry for nshards (1..METRICS_MAX_SHARDS) shards, all zero. Call
 * once at start: -1 with errno EINVAL (bad count), EALREADY (second call) or ENOMEM. */
int metrics_init(unsigned nshards);
/* The counters of shard `shard`; NULL before metrics_init or when out of range. */
struct shard_metrics *metrics_shard(unsigned shard);

/* Slot for a route name (stable for the process lifetime; -1 when full).
 * Control plane only (takes a mutex). */
int metrics_route_slot(const char *route);
/* Slot for a pool/backend pair ("gpu-a", "10.0.0.11:8000"); -1 when full. */
int metrics_backend_slot(const char *pool, const char *backend);
/* Before metrics_init: make room for at least n distinct key names over the
 * process lifetime (default METRICS_MIN_KEYS; main asks for a multiple of the
 * starting keys file, so reloads can add keys). */
void metrics_reserve_keys(unsigned n);
/* Slot for an API key's NAME (stable for the process lifetime); 0 when the
 * registry is full (those keys are then counted under key="", and the first
 * such key is logged). */
int metrics_key_slot(const char *name);
/* The watcher's view of a backend (one writer): aigw's requests in flight to it,
 * and what its engine's metrics said at their last good scrape (scraped_ms,
 * CLOCK_MONOTONIC): its queue and KV-cache use x 1000 (-1: unknown). A
 * scraped_ms of 0 (none yet, e.g. just after a reload) keeps the figures set
 * before; they are rendered, stale or not, with aigw_backend_metrics_age_seconds. */
void metrics_set_backend_load(int slot, uint32_t outstanding, int32_t waiting, int32_t kv_permille,
                              uint64_t scraped_ms);
/* The engine's prefix-cache counters as its last good scrape gave them (the
 * watcher, one writer); rendered as aigw_backend_prefix_cache_{hits,queries}_total
 * once set. */
void metrics_set_backend_prefix_cache(int slot, uint64_t hits, uint64_t queries);
/* The engine's KV (prefix) cache capacity in tokens at its last good scrape (the
 * watcher, one writer); 0: it does not say, and no series is rendered. */
void metrics_set_backend_cache_tokens(int slot, uint32_t tokens);
/* Marks which backend slots the current configuration uses (others are not rendered). */
void metrics_set_live_backends(const int *slots, unsigned n);
/* The watcher's verdict on a backend (one writer): up (active check passing and
 * circuit closed) or not; aigw_backend_up{pool,backend}. Slots never set render 1. */
void metrics_set_backend_up(int slot, bool up);
/* Slot for the pair of a route and a pool it can send to (by its pool, split or
 * a fallback): the labels of aigw_first_byte_seconds and
 * aigw_time_per_output_token_seconds. Stable for the process lifetime; -1 when
 * full. Control plane only. */
int metrics_route_pool_slot(const char *route, const char *pool);
/* Slot for a model label (a configured glob or model name), stable for the
 * process lifetime; 0 ("other") for "other" itself and when the registry is
 * full (the first such label is logged). Control plane only. */
int metrics_model_slot(const char *label);
/* Slot for a pool name (stable for the process lifetime; -1 when full).
 * Control plane only. */
int metrics_pool_slot(const char *pool);
/* Marks which pool slots the current configuration uses (others are not rendered). */
void metrics_set_live_pools(const int *slots, unsigned n);
/* Records one request's wait in a pool's queue (it left the queue after wait_us:
 * dispatched, shed or gone). A slot outside the registry is ignored. */
void metrics_observe_queue_wait(struct shard_metrics *m, int pool_slot, uint64_t wait_us);

/* Main thread: the configuration generation it loaded last (at start and on each
 * accepted reload): aigw_config_generation. */
void metrics_config_loaded(uint64_t generation);
/* Main thread: a SIGHUP reload was applied (ok) or refused, after
 * metrics_config_loaded for an applied one: aigw_config_reloads_total{result}. */
void metrics_count_reload(bool ok);
/* Access-log writer thread: the log file was reopened (SIGUSR1), or the reopen
 * failed and the old file is kept: aigw_access_log_reopens_total{result}. */
void metrics_count_access_log_reopen(bool ok);

/* Maps an HTTP status to its column in requests[][] (unknown codes share a column per
 * class, rendered as status="4xx" etc.; codes outside 100..599 count as "5xx"). */
unsigned metrics_status_slot(int status);
/* The status label of a column: "200", ..., "1xx" ... "5xx". */
const char *metrics_status_label(unsigned slot);
/* Records one finished request. A route_slot outside the registry (e.g. -1 from a full
 * registry) is counted as "no route" (slot 0). */
void metrics_observe_request(struct shard_metrics *m, int route_slot, int status, uint64_t duration_us);

/* One finished AI request's LLM figures, times in µs. A slot outside its
 * registry (e.g. -1) skips the families it labels.
 *  - answered: a backend answered (first_byte_us and backend_us are set):
 *    first_byte_us runs from the request head to the first response byte for the
 *    client (for streams, the first content event); backend_us from the answering
 *    attempt's start (backend chosen) to the last response byte;
 *  - token_gap_us: the mean spacing of a stream's content events; 0: fewer than two;
 *  - status, prompt and completion tokens: by model, and tokens by backend. */
struct ai_observation {
    int route_pool_slot, backend_slot, model_slot;
    int status;
    bool answered;
    uint64_t first_byte_us, backend_us, token_gap_us;
    uint64_t prompt_tokens, completion_tokens;
};
void metrics_observe_ai(struct shard_metrics *m, const struct ai_observation *o);

/* One settled request's cost (pico-USD, cost.h) for aigw_cost_usd_total{key,
 * model}; 0 adds nothing, so an unpriced model never gets a series. Shard only. */
void metrics_add_cost(struct shard_metrics *m, int key_slot, int model_slot, uint64_t pico_usd);

/* ---- read accessors for /status (status.c), control plane ---- */

/* Status classes of a route's requests for /status: 429 apart from the other 4xx. */
enum metrics_status_class { MSC_1XX, MSC_2XX, MSC_3XX, MSC_4XX, MSC_429, MSC_5XX, METRICS_NCLASSES };
/* The cumulative counters /status derives rates and last-minute percentiles from,
 * summed over the shards (the same sums /metrics renders), indexed by metric slot. */
struct metrics_reading {
    uint64_t route_requests[METRICS_MAX_ROUTES][METRICS_NCLASSES];
    uint64_t backend_attempts[METRICS_MAX_BACKENDS][2];        /* enum attempt_result */
    uint64_t backend_tokens[METRICS_MAX_BACKENDS][2];          /* enum token_direction */
    uint64_t first_byte_bucket[METRICS_MAX_ROUTE_POOLS][METRICS_LLM_NBUCKETS];   /* per bucket, not cumulative */
    uint64_t token_gap_bucket[METRICS_MAX_ROUTE_POOLS][METRICS_TOKEN_NBUCKETS];
    uint64_t shed[METRICS_MAX_POOLS][METRICS_NSHED];
    uint64_t ratelimited[METRICS_NLIMITS];                     /* over all keys */
};
/* Fills r (takes the registry mutex). */
void metrics_read(struct metrics_reading *r);
/* The requests waiting in a pool's queue now, over all shards (aigw_pool_queue_length). */
int64_t metrics_pool_queued(int pool_slot);
/* One API key's lifetime totals. name lives for the process lifetime ("" for slot 0). */
struct metrics_key_total {
    const char *name;
    uint64_t tokens[2];                 /* enum token_direction */
    uint64_t nano_usd;                  /* aigw_cost_usd_total summed over models */
};
enum metrics_key_order { KEYS_BY_TOKENS, KEYS_BY_SPEND };
/* The keys with the most tokens (or spend) over the process lifetime, largest
 * first, at most max of them, keys with nothing left out. Returns how many were
 * written, or -1 with errno ENOMEM. */
int metrics_top_keys(enum metrics_key_order order, struct metrics_key_total *out, unsigned max);
/* The shard count metrics_init was given (0 before). */
unsigned metrics_nshards(void);

/* Renders Prometheus text exposition format 0.0.4 into buf, snprintf-style: returns
 * the length of the whole output (without the NUL); it fitted, NUL-terminated, only
 * if that is < cap, else the caller grows buf past the returned size and retries.
 * Control plane (takes the registry mutex). Works with zero shards (all zeros). */
size_t metrics_render(char *buf, size_t cap);
/* metrics_render into a malloc'd buffer (*out, NUL-terminated, *len bytes).
 * Returns 0, or -1 with errno ENOMEM. The caller frees *out. */
int metrics_render_alloc(char **out, size_t *len);

#endif
