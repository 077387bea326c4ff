/* /etc/aigw.conf: INI (inih) parsed into an immutable configuration object.
 * Every error is "FILE:LINE: message". A loaded config is never modified; a reload
 * builds a new one (a new generation) and the old one lives until unused. */
#ifndef AIGW_CORE_CONFIG_H
#define AIGW_CORE_CONFIG_H

#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "policy/types.h"   /* cfg_addr, cfg_backend, cfg_route, balance_kind */
#include "tls/tls.h"        /* cfg_tls */

struct keyring;

#define CFG_MAX_LISTEN 16

/* Ranges of the per-pool health and circuit keys. */
#define CFG_HEALTH_STREAK_MAX 100u          /* health_rise, health_fall: 1..this */
#define CFG_CIRCUIT_FAILURES_MAX 1000u      /* circuit_failures: 1..this */
#define CFG_CIRCUIT_OPEN_MIN_MS 100ULL      /* circuit_open, circuit_open_max: this..1h */
#define CFG_CIRCUIT_OPEN_MAX_MS 3600000ULL

struct cfg_pool {
    char name[CFG_NAME_MAX];
    struct cfg_backend *backends;
    unsigned nbackends;
    enum balance_kind balance;  /* default least_outstanding */
    unsigned max_outstanding;   /* per backend, across shards; default 64 */
    /* balance = prefix (docs/config.md has the scorer's formula) */
    unsigned prefix_hash_kib;   /* prompt KiB hashed into blocks; 1-16, default 16 */
    unsigned prefix_cache_blocks; /* block hashes remembered per backend per shard; 0 (default):
                                   * auto, from the engine's cache (balance_prefix_fit) */
    float prefix_weight, queue_weight, kv_weight; /* the scorer's weights; balance.h's defaults */
    bool prefix_index_shared;   /* prefix_index = shared (default): the shards learn each other's placements */
    char upstream_auth[512];    /* empty: none */
    char metrics_path[128];     /* scraped for the engines' load; empty: none. Default
                                 * /metrics for capacity and prefix pools, else none */
    bool metrics_set;           /* metrics = given in the file */
    uint64_t metrics_interval_ms; /* default 250ms */
    char health_path[128];      /* active check: GET every health_interval, 2xx is healthy;
                                 * empty: passive checks only. Default /health for
                                 * capacity and prefix pools, else none */
    bool health_set;            /* health = given in the file */
    uint64_t health_interval_ms; /* default 1s; 10ms..60s */
    char model_list_path[128];  /* the backends' model list (OpenAI GET /v1/models), read for
                                 * aigw's own /v1/models; default /v1/models; empty: not asked */
    uint64_t queue_timeout_ms;  /* how long a request may wait for capacity; default 5s; 0: none */
    unsigned queue_size;        /* requests that may wait, over all shards; default (and
                                 * 0 in the file: not given) max_outstanding x backends */
    unsigned retries;           /* tries on another backend before any response byte; default 1 */
    int fallback;               /* pool index used when this one is down or saturated; -1: none */
    unsigned keepalive;         /* idle upstream connections kept per backend per shard; default 32; 0: none */
    uint64_t keepalive_timeout_ms; /* an idle upstream connection is closed after this; default 60s */
    bool tls;                   /* TLS to the backends; default off */
    char tls_ca[PATH_MAX];      /* CA bundle verifying them; empty: the system's */
    int tls_ca_line;
    char tls_server_name[256];  /* SNI and the name verified; empty: each backend's host as written */
    /* Upstream timeouts of an attempt on this pool's backends: written in the pool,
     * else [timeouts]'s (resolved once the whole file is read). */
    uint64_t connect_ms, first_byte_ms, idle_ms;
    bool connect_set, first_byte_set, idle_set;
    unsigned health_rise;       /* passing checks that bring a down backend back; default 2 */
    unsigned health_fall;       /* failed checks that take it down; default 2 */
    unsigned circuit_failures;  /* consecutive failed attempts (one shard) opening its circuit; default 5 */
    uint64_t circuit_open_ms;   /* the circuit's first open; doubles on each reopen; default 1s */
    uint64_t circuit_open_max_ms; /* the doubling stops here; default 30s */
    struct tls_client *tls_client; /* built from the above by the loader's caller; NULL without tls */
    int line;
};

/* Who waits and who is shed first when backends are saturated. */
enum priority { PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW };

/* [tier NAME]: the limits every key of the tier gets, each key its own buckets. */
struct cfg_tier {
    char name[CFG_NAME_MAX];
    uint64_t requests_per_minute;   /* 0 (default): unlimited */
    uint64_t tokens_per_minute;     /* 0 (default): unlimited */
    uint64_t burst_ms;              /* bucket size as time of refill; default 60s */
    uint64_t max_tokens;            /* largest max_tokens a request may ask; 0 (default): no cap */
    uint64_t daily_tokens;          /* quota per UTC day; 0 (default): none */
    uint64_t daily_spend_micro_usd; /* spend cap per UTC day in micro-USD (USD x 1e6; prices
                                     * from [model]); 0 (default): none */
    enum priority priority;         /* default normal */
    int line;
};
/* A key whose tier is "default" when no [tier default] exists: no limits. */
#define CFG_NO_TIER UINT32_MAX

/* [model GLOB]: facts about the models a glob matches (the request's "model").
 * Prices are USD per million tokens held exactly, in micro-USD: 0.15 is 150000.
 * Used by cost accounting (core/cost.h); the glob is also a model metric label. */
#define CFG_PRICE_MAX_MICRO_USD 1000000000000ULL    /* 1000000 USD per million tokens */
struct cfg_model {
    char glob[257];                 /* one glob (policy/glob.h), as written */
    uint64_t input_per_mtok;        /* micro-USD per million prompt tokens; default 0 */
    uint64_t output_per_mtok;       /* micro-USD per million completion tokens; default 0 */
    int line;
};

/* Largest daily_spend: 1000000 USD a day, in micro-USD (fits the quota's 42 bits). */
#define CFG_SPEND_MAX_MICRO_USD 1000000000000ULL

/* What admission does while Redis cannot be reached ([cluster] on_redis_down). */
enum redis_down_policy { REDIS_DOWN_LOCAL, REDIS_DOWN_DENY, REDIS_DOWN_ALLOW };

#define CFG_CLUSTER_SYNC_MIN_MS 5
#define CFG_CLUSTER_SYNC_MAX_MS 10000
#define CFG_CLUSTER_TIMEOUT_MIN_MS 10
#define CFG_CLUSTER_TIMEOUT_MAX_MS 10000

/* [cluster]: per-key limits, quotas and spend shared across hosts through Redis. */
struct cfg_cluster {
    bool enabled;               /* a [cluster] section with redis = set */
    struct cfg_addr redis;      /* HOST:PORT */
    char username[128];         /* empty: AUTH with the password alone */
    char password[256];         /* empty: no AUTH */
    char key_prefix[64];        /* default "aigw:" */
    uint64_t sync_interval_ms;  /* default 50ms; 5ms..10s */
    uint64_t timeout_ms;        /* connect, command and read timeout; default 250ms; 10ms..10s */
    enum redis_down_policy on_redis_down; /* default local */
    int line;                   /* of the section, for messages */
};

/* [tracing]: OpenTelemetry spans exported as OTLP/HTTP with JSON encoding. */
#define CFG_TRACING_SAMPLE_ONE 1000000u  /* sample_ratio is held in millionths */
struct cfg_tracing {
    bool enabled;               /* otlp_endpoint is set */
    char endpoint[512];         /* as written: http://HOST:PORT/PATH */
    struct cfg_addr collector;  /* HOST:PORT of the endpoint */
    char path[256];             /* the endpoint's path; default /v1/traces */
    uint32_t sample_millionths; /* of requests without a sampled traceparent; default 10000 (0.01) */
    char service_name[128];     /* resource attribute service.name; default "aigw" */
    int line;                   /* of otlp_endpoint, for messages */
};

enum access_log_mode { ACCESS_OFF, ACCESS_STDOUT, ACCESS_FILE };
enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

struct config {
    char path[PATH_MAX];
    struct {
        struct cfg_addr listen[CFG_MAX_LISTEN];
        unsigned nlisten;       /* default: one, 0.0.0.0:8080 */
        unsigned shards;        /* 0 = auto (one per online CPU) */
        unsigned max_connections; /* default 100000 */
        size_t max_body;        /* default 1m */
        size_t max_header;      /* default 16k; at most 64k */
        uint64_t drain_timeout_ms; /* default 30s */
        char state_dir[PATH_MAX]; /* daily quotas (and spend) snapshotted here; empty (default): not kept */
        int state_dir_line;     /* of `state_dir = DIR`, for messages */
    } server;
    struct {
        bool enabled;           /* default: 127.0.0.1:9090 */
        struct cfg_addr listen;
        char token[256];        /* one word; set: /metrics (and the other protected admin
                                 * routes) need "Authorization: Bearer TOKEN"; empty: open */
    } admin;
    struct cfg_timeouts {
        uint64_t connect_ms;    /* 2s */
        uint64_t first_byte_ms; /* 60s */
        uint64_t idle_ms;       /* 30s */
        uint64_t client_header_ms; /* 10s */
        uint64_t keepalive_ms;  /* 75s */
    } timeouts;
    struct {
        struct cfg_addr listen[CFG_MAX_LISTEN];
        unsigned nlisten;       /* none without a [tls] section */
        struct cfg_tls opts;    /* opts.enabled = nlisten > 0 */
        struct tls_server *server; /* built from opts by the loader's caller; NULL until then */
    } tls;
    struct {
        enum access_log_mode access; /* default stdout */
        char access_path[PATH_MAX];
        int access_line;        /* of `access = /path`, for messages */
        enum log_level level;   /* default info */
    } log;
    struct cfg_pool *pools;
    unsigned npools;
    struct cfg_route *routes;   /* in file order */
    unsigned nroutes;
    unsigned nbackends;         /* sum over pools */
    struct {
        bool configured;        /* a [keys] section exists */
        bool required;          /* auth = required (the default with [keys]) */
        char file[PATH_MAX];    /* empty: no keys file (then auth must be off) */
        struct keyring *ring;   /* loaded with the config; NULL without a file */
        uint32_t *key_tier;     /* per keyring entry: index into tiers, or CFG_NO_TIER */
    } keys;
    struct cfg_tier *tiers;     /* in file order */
    unsigned ntiers;
    struct cfg_model *models;   /* [model GLOB] sections, in file order */
    unsigned nmodels;
    struct cfg_cluster cluster;
    struct cfg_tracing tracing;
};

/* Loads and validates path. On success returns 0 and *out. On failure returns -1
 * and writes "FILE:LINE: message" (or "FILE: message" when no line applies) to err. */
int config_load(const char *path, struct config **out, char *err, size_t errlen);
/* Same over an in-memory text; name is used in error messages (for tests). */
int config_load_string(const char *name, const char *text, struct config **out,
                       char *err, size_t errlen);
void config_free(struct config *c);
/* What `aigw -t` checks beyond the file itself: opens what the daemon will open
 * at start, the way it will (the keys file is already read by config_load). 0,
 * or -1 and "FILE:LINE: message" in err. */
int config_check_files(const struct config *c, char *err, size_t errlen);
/* `aigw -T`: the effective configuration, every default written out, as INI that
 * aigw reads back (upstream_auth is shown as set, never its value). */
void config_print(const struct config *c, FILE *out);

/* Value parsers shared with other modules; each returns 0 or -1 (bad value). */
int config_parse_duration_ms(const char *s, uint64_t *out);  /* "250ms" "2s" "1m" "1h"; bare number = seconds */
int config_parse_size(const char *s, uint64_t *out);         /* "512" "16k" "1m" "2g" (binary multiples) */
int config_parse_addr(const char *s, struct cfg_addr *out);  /* "host:port", "[v6]:port"; host may be a name */

#endif
