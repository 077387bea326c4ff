#include "cluster/sync.h"
#include "core/metrics.h"
#include "core/accesslog.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/backend_admin.h"
#include "core/cost.h"
#include "core/log.h"
#include "core/process_metrics.h"
#include "policy/balance.h"     /* enum balance_reason */
#include "trace/exporter.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/outbuf.h"

/* Columns of requests[][]: the common codes first, then one "other" column per class. */
const char *const metrics_limit_labels[METRICS_NLIMITS] = { "requests", "tokens", "quota", "spend",
                                                            "limits_unavailable" };

static const int status_codes[] = {
    200, 201, 204, 206,
    301, 302, 304,
    400, 401, 403, 404, 405, 408, 413, 415, 429, 431, 499,
    500, 501, 502, 503, 504,
};
#define NCOMMON (sizeof status_codes / sizeof status_codes[0])  /* metrics_status_slot's order */
#define OTHER_1XX NCOMMON   /* then 2xx, 3xx, 4xx, 5xx */
_Static_assert(NCOMMON + 5 == METRICS_NSTATUS, "status columns");
_Static_assert(TERM_COUNT == METRICS_NTERMINATIONS, "termination columns");

static const char *const status_labels[METRICS_NSTATUS] = {
    "200", "201", "204", "206",
    "301", "302", "304",
    "400", "401", "403", "404", "405", "408", "413", "415", "429", "431", "499",
    "500", "501", "502", "503", "504",
    "1xx", "2xx", "3xx", "4xx", "5xx",
};

/* Bucket tables, bounds in µs. Requests and queue waits: web latencies up to a
 * minute. LLM answers: a first token takes tens of ms to minutes (a long prompt's
 * prefill on a busy engine). A token takes milliseconds. */
static const uint64_t duration_bound_us[METRICS_NBUCKETS - 1] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
static const char *const duration_le[METRICS_NBUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1", "2.5", "5", "10", "30", "60", "+Inf",
};
static const uint64_t llm_bound_us[METRICS_LLM_NBUCKETS - 1] = {
    25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000, 30000000, 60000000, 120000000, 300000000,
};
static const char *const llm_le[METRICS_LLM_NBUCKETS] = {
    "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
    "5", "10", "30", "60", "120", "300", "+Inf",
};
static const uint64_t token_bound_us[METRICS_TOKEN_NBUCKETS - 1] = {
    1000, 2500, 5000, 7500, 10000, 15000, 20000,
    30000, 50000, 75000, 100000, 250000, 500000, 1000000,
};
static const char *const token_le[METRICS_TOKEN_NBUCKETS] = {
    "0.001", "0.0025", "0.005", "0.0075", "0.01", "0.015", "0.02",
    "0.03", "0.05", "0.075", "0.1", "0.25", "0.5", "1", "+Inf",
};
const struct metrics_buckets metrics_duration_buckets = { METRICS_NBUCKETS, duration_bound_us, duration_le };
const struct metrics_buckets metrics_llm_buckets = { METRICS_LLM_NBUCKETS, llm_bound_us, llm_le };
const struct metrics_buckets metrics_token_buckets = { METRICS_TOKEN_NBUCKETS, token_bound_us, token_le };

static struct shard_metrics *shards;
static unsigned nshards;

/* Slot registries (control plane). Names live for the process lifetime so that a
 * slot keeps its meaning, and its counters stay monotonic, across reloads. */
static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static char *route_names[METRICS_MAX_ROUTES];
static unsigned nroutes;
static char *backend_pools[METRICS_MAX_BACKENDS];
static char *backend_names[METRICS_MAX_BACKENDS];
static bool backend_live[METRICS_MAX_BACKENDS];
/* written by the watcher thread only */
static _Atomic uint32_t backend_outstanding[METRICS_MAX_BACKENDS];
static _Atomic int32_t backend_waiting[METRICS_MAX_BACKENDS];
static _Atomic int32_t backend_kv[METRICS_MAX_BACKENDS];
static _Atomic uint64_t backend_scraped_ms[METRICS_MAX_BACKENDS];  /* 0: its engine never read */
static _Atomic uint64_t backend_pc_hits[METRICS_MAX_BACKENDS], backend_pc_queries[METRICS_MAX_BACKENDS];
static _Atomic bool backend_pc_known[METRICS_MAX_BACKENDS];
static _Atomic uint32_t backend_cache_tokens[METRICS_MAX_BACKENDS];   /* 0: not reported */
static _Atomic bool backend_down[METRICS_MAX_BACKENDS];   /* zero: up, so never set renders 1 */
static unsigned nbackends;
static char *route_pool_route[METRICS_MAX_ROUTE_POOLS];
static char *route_pool_pool[METRICS_MAX_ROUTE_POOLS];
static unsigned nroute_pools;
static char *model_labels[METRICS_MAX_MODELS];     /* slot 0 is "other" */
static unsigned nmodels;
static bool model_overflow_logged;
static char *pool_names[METRICS_MAX_POOLS];
static bool pool_live[METRICS_MAX_POOLS];
/* written under registry_mu; also read by the shards (metrics_observe_queue_wait) */
static _Atomic unsigned npools;
static char **key_names;            /* [key_capacity]; slot 0 is "" */
static uint32_t *key_index;         /* open addressing over names: slot, 0 empty; 2 x capacity */
static size_t key_index_mask;
static unsigned nkeys = 1;
static unsigned key_capacity = METRICS_MIN_KEYS;
static bool key_overflow_logged;
/* Control plane, one writer each: main (reloads), the access-log writer (reopens). */
static _Atomic uint64_t config_generation;
static _Atomic uint64_t reloads[2];             /* [0] ok, [1] failed */
static _Atomic bool last_reload_ok = true;      /* the start counts as a success */
static _Atomic int64_t last_reload_success_s;   /* wall clock; the start, then each applied reload */
static _Atomic uint64_t access_log_reopens[2];  /* [0] ok, [1] failed */

/* Slot 0 is "" (no route matched). Called with registry_mu held. */
static bool reserve_no_route_slot(void)
{
    if (nroutes > 0)
        return true;
    route_names[0] = strdup("");
    if (!route_names[0])
        return false;
    nroutes = 1;
    return true;
}

int metrics_init(unsigned n)
{
    if (n == 0 || n > METRICS_MAX_SHARDS) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&registry_mu);
    if (shards) {
        pthread_mutex_unlock(&registry_mu);
        errno = EALREADY;
        return -1;
    }
    size_t bytes = (size_t)n * sizeof(struct shard_metrics); /* a multiple of 64 */
    struct shard_metrics *s = aligned_alloc(_Alignof(struct shard_metrics), bytes);
    if (!s || !reserve_no_route_slot()) {
        free(s);
        pthread_mutex_unlock(&registry_mu);
        errno = ENOMEM;
        return -1;
    }
    memset(s, 0, bytes);
    /* one block for every shard's key counters, each shard's on its own lines */
    size_t per_shard = (sizeof(mcounter) * (2 + METRICS_NLIMITS) * key_capacity + 63) / 64 * 64;
    char *keys = aligned_alloc(64, per_shard * n);
    key_names = calloc(key_capacity, sizeof *key_names);
    size_t index_size = 16;
    while (index_size < (size_t)key_capacity * 2)
        index_size *= 2;
    key_index = calloc(index_size, sizeof *key_index);
    key_index_mask = index_size - 1;
    if (!keys || !key_names || !key_index) {
        free(s);
        free(keys);
        free(key_names);
        free(key_index);
        key_names = NULL;
        key_index = NULL;
        pthread_mutex_unlock(&registry_mu);
        errno = ENOMEM;
        return -1;
    }
    memset(keys, 0, per_shard * n);
    for (unsigned i = 0; i < n; i++) {
        char *blk = keys + per_shard * i;
        s[i].tokens = (mcounter (*)[2])blk;
        s[i].ratelimited = (mcounter (*)[METRICS_NLIMITS])(blk + sizeof(mcounter) * 2 * key_capacity);
    }
    shards = s;
    nshards = n;
    pthread_mutex_unlock(&registry_mu);
    return 0;
}

struct shard_metrics *metrics_shard(unsigned shard)
{
    return shards && shard < nshards ? &shards[shard] : NULL;
}

int metrics_route_slot(const char *route)
{
    if (!route)
        route = "";
    pthread_mutex_lock(&registry_mu);
    int slot = -1;
    reserve_no_route_slot();
    for (unsigned i = 0; i < nroutes; i++)
        if (strcmp(route_names[i], route) == 0) {
            slot = (int)i;
            break;
        }
    if (slot < 0 && nroutes > 0 && nroutes < METRICS_MAX_ROUTES) {
        char *name = strdup(route);
        if (name) {
            route_names[nroutes] = name;
            slot = (int)nroutes++;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    return slot;
}

void metrics_reserve_keys(unsigned n)
{
    pthread_mutex_lock(&registry_mu);
    if (!shards && n > key_capacity)
        key_capacity = n;
    pthread_mutex_unlock(&registry_mu);
}

int metrics_key_slot(const char *name)
{
    if (!name || !name[0])
        return 0;   /* "" is slot 0's own label */
    pthread_mutex_lock(&registry_mu);
    int slot = 0;
    size_t at = 0;
    if (key_index) {
        uint64_t h = hash_str(name);
        /* reloads look up every key of the file: a hash, not a scan */
        for (at = h & key_index_mask; key_index[at]; at = (at + 1) & key_index_mask)
            if (strcmp(key_names[key_index[at]], name) == 0) {
                slot = (int)key_index[at];
                break;
            }
    }
    if (slot == 0 && key_index && nkeys < key_capacity) {
        char *copy = strdup(name);
        if (copy) {
            key_names[nkeys] = copy;
            key_index[at] = nkeys;
            slot = (int)nkeys++;
        }
    }
    bool log_it = slot == 0 && key_names && !key_overflow_logged;
    if (log_it)
        key_overflow_logged = true;
    pthread_mutex_unlock(&registry_mu);
    if (log_it)
        log_warn("metrics: more than %u distinct key names since start: key '%s' and later ones "
                 "are counted under key=\"\" (a restart makes room)", key_capacity - 1, name);
    return slot;
}

/* The slot of the label pair (a, b) in a registry of pairs, added when new
 * and there is room; -1 when full or out of memory. Under registry_mu. */
static int pair_slot(char **first, char **second, unsigned *n, unsigned max, const char *a, const char *b)
{
    for (unsigned i = 0; i < *n; i++)
        if (strcmp(first[i], a) == 0 && strcmp(second[i], b) == 0)
            return (int)i;
    if (*n >= max)
        return -1;
    char *x = strdup(a), *y = strdup(b);
    if (!x || !y) {
        free(x);
        free(y);
        return -1;
    }
    first[*n] = x;
    second[*n] = y;
    return (int)(*n)++;
}

int metrics_backend_slot(const char *pool, const char *backend)
{
    pthread_mutex_lock(&registry_mu);
    int slot = pair_slot(backend_pools, backend_names, &nbackends, METRICS_MAX_BACKENDS,
                         pool ? pool : "", backend ? backend : "");
    pthread_mutex_unlock(&registry_mu);
    return slot;
}

void metrics_set_live_backends(const int *slots, unsigned n)
{
    pthread_mutex_lock(&registry_mu);
    memset(backend_live, 0, sizeof backend_live);
    for (unsigned i = 0; i < n; i++)
        if (slots[i] >= 0 && (unsigned)slots[i] < nbackends)
            backend_live[slots[i]] = true;
    pthread_mutex_unlock(&registry_mu);
}

void metrics_set_backend_up(int slot, bool up)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return;
    atomic_store_explicit(&backend_down[slot], !up, memory_order_relaxed);
}

int metrics_route_pool_slot(const char *route, const char *pool)
{
    if (!route || !pool)
        return -1;
    pthread_mutex_lock(&registry_mu);
    int slot = pair_slot(route_pool_route, route_pool_pool, &nroute_pools, METRICS_MAX_ROUTE_POOLS, route, pool);
    pthread_mutex_unlock(&registry_mu);
    return slot;
}

/* Called with registry_mu held. */
static bool reserve_other_model_slot(void)
{
    if (nmodels > 0)
        return true;
    model_labels[0] = strdup("other");
    if (!model_labels[0])
        return false;
    nmodels = 1;
    return true;
}

int metrics_model_slot(const char *label)
{
    if (!label)
        return 0;
    pthread_mutex_lock(&registry_mu);
    int slot = -1;
    if (reserve_other_model_slot()) {
        for (unsigned i = 0; i < nmodels; i++)
            if (strcmp(model_labels[i], label) == 0) {
                slot = (int)i;
                break;
            }
        if (slot < 0 && nmodels < METRICS_MAX_MODELS) {
            char *name = strdup(label);
            if (name) {
                model_labels[nmodels] = name;
                slot = (int)nmodels++;
            }
        }
    }
    bool log_it = slot < 0 && !model_overflow_logged;
    if (log_it)
        model_overflow_logged = true;
    pthread_mutex_unlock(&registry_mu);
    if (log_it)
        log_warn("metrics: more than %d distinct model labels since start: '%s' and later ones "
                 "are counted as model=\"other\" (a restart makes room)", METRICS_MAX_MODELS - 1, label);
    return slot < 0 ? 0 : slot;
}

int metrics_pool_slot(const char *pool)
{
    if (!pool)
        pool = "";
    pthread_mutex_lock(&registry_mu);
    int slot = -1;
    unsigned n = atomic_load_explicit(&npools, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++)
        if (strcmp(pool_names[i], pool) == 0) {
            slot = (int)i;
            break;
        }
    if (slot < 0 && n < METRICS_MAX_POOLS) {
        char *name = strdup(pool);
        if (name) {
            pool_names[n] = name;
            atomic_store_explicit(&npools, n + 1, memory_order_release);
            slot = (int)n;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    return slot;
}

void metrics_set_live_pools(const int *slots, unsigned n)
{
    pthread_mutex_lock(&registry_mu);
    unsigned registered = atomic_load_explicit(&npools, memory_order_relaxed);
    memset(pool_live, 0, sizeof pool_live);
    for (unsigned i = 0; i < n; i++)
        if (slots[i] >= 0 && (unsigned)slots[i] < registered)
            pool_live[slots[i]] = true;
    pthread_mutex_unlock(&registry_mu);
}

void metrics_config_loaded(uint64_t generation)
{
    atomic_store_explicit(&config_generation, generation, memory_order_relaxed);
    atomic_store_explicit(&last_reload_success_s, (int64_t)time(NULL), memory_order_relaxed);
}

/* Release: a scrape that sees the count also sees the generation loaded before it. */
void metrics_count_reload(bool ok)
{
    atomic_store_explicit(&last_reload_ok, ok, memory_order_relaxed);
    atomic_fetch_add_explicit(&reloads[ok ? 0 : 1], 1, memory_order_release);
}

void metrics_count_access_log_reopen(bool ok)
{
    atomic_fetch_add_explicit(&access_log_reopens[ok ? 0 : 1], 1, memory_order_relaxed);
}

unsigned metrics_status_slot(int status)
{
    switch (status) {
    case 200: return 0;
    case 201: return 1;
    case 204: return 2;
    case 206: return 3;
    case 301: return 4;
    case 302: return 5;
    case 304: return 6;
    case 400: return 7;
    case 401: return 8;
    case 403: return 9;
    case 404: return 10;
    case 405: return 11;
    case 408: return 12;
    case 413: return 13;
    case 415: return 14;
    case 429: return 15;
    case 431: return 16;
    case 499: return 17;    /* client gone before the response ended (nginx's code) */
    case 500: return 18;
    case 501: return 19;
    case 502: return 20;
    case 503: return 21;
    case 504: return 22;
    }
    if (status >= 100 && status <= 599)
        return OTHER_1XX + (unsigned)(status / 100 - 1);
    return OTHER_1XX + 4;
}

const char *metrics_status_label(unsigned slot)
{
    return slot < METRICS_NSTATUS ? status_labels[slot] : "5xx";
}

unsigned metrics_bucket_of(const struct metrics_buckets *b, uint64_t us)
{
    unsigned i = 0;
    while (i < b->n - 1 && us > b->bound_us[i])
        i++;
    return i;
}

void metrics_observe_request(struct shard_metrics *m, int route_slot, int status,
                             uint64_t duration_us)
{
    if (route_slot < 0 || route_slot >= METRICS_MAX_ROUTES)
        route_slot = 0;
    mc_add(&m->requests[route_slot][metrics_status_slot(status)], 1);
    mc_add(&m->duration_bucket[metrics_bucket_of(&metrics_duration_buckets, duration_us)], 1);
    mc_add(&m->duration_sum_us, duration_us);
    mc_add(&m->duration_count, 1);
}

void metrics_observe_queue_wait(struct shard_metrics *m, int pool_slot, uint64_t wait_us)
{
    if (pool_slot < 0 || pool_slot >= METRICS_MAX_POOLS ||
        (unsigned)pool_slot >= atomic_load_explicit(&npools, memory_order_relaxed))
        return;
    mc_add(&m->queue_wait_bucket[pool_slot][metrics_bucket_of(&metrics_duration_buckets, wait_us)], 1);
    mc_add(&m->queue_wait_sum_us[pool_slot], wait_us);
    mc_add(&m->queue_wait_count[pool_slot], 1);
}

void metrics_observe_ai(struct shard_metrics *m, const struct ai_observation *o)
{
    int rp = o->route_pool_slot;
    if (rp >= 0 && rp < METRICS_MAX_ROUTE_POOLS) {
        if (o->answered) {
            mc_add(&m->first_byte_bucket[rp][metrics_bucket_of(&metrics_llm_buckets, o->first_byte_us)], 1);
            mc_add(&m->first_byte_sum_us[rp], o->first_byte_us);
        }
        if (o->token_gap_us) {
            mc_add(&m->token_gap_bucket[rp][metrics_bucket_of(&metrics_token_buckets, o->token_gap_us)], 1);
            mc_add(&m->token_gap_sum_us[rp], o->token_gap_us);
        }
    }
    int b = o->backend_slot;
    if (b >= 0 && b < METRICS_MAX_BACKENDS) {
        if (o->answered) {
            mc_add(&m->backend_duration_bucket[b][metrics_bucket_of(&metrics_llm_buckets, o->backend_us)], 1);
            mc_add(&m->backend_duration_sum_us[b], o->backend_us);
        }
        mc_add(&m->backend_tokens[b][TOKENS_PROMPT], o->prompt_tokens);
        mc_add(&m->backend_tokens[b][TOKENS_COMPLETION], o->completion_tokens);
    }
    int md = o->model_slot;
    if (md >= 0 && md < METRICS_MAX_MODELS) {
        mc_add(&m->model_requests[md][metrics_status_slot(o->status)], 1);
        mc_add(&m->model_tokens[md][TOKENS_PROMPT], o->prompt_tokens);
        mc_add(&m->model_tokens[md][TOKENS_COMPLETION], o->completion_tokens);
    }
}

static void cost_cell_add(struct cost_cell *cell, uint64_t pico_usd)
{
    uint64_t pico = pico_usd > UINT64_MAX - cell->pico_rem ? UINT64_MAX : pico_usd + cell->pico_rem;
    uint64_t before = atomic_load_explicit(&cell->nano_usd, memory_order_relaxed);
    uint64_t nano = pico / COST_PICO_PER_NANO;
    cell->pico_rem = (uint32_t)(pico % COST_PICO_PER_NANO);
    atomic_store_explicit(&cell->nano_usd, before > UINT64_MAX - nano ? UINT64_MAX : before + nano,
                          memory_order_relaxed);
}

void metrics_add_cost(struct shard_metrics *m, int key_slot, int model_slot, uint64_t pico_usd)
{
    if (!pico_usd || key_slot < 0 || model_slot < 0 || model_slot >= METRICS_MAX_MODELS)
        return;
    uint32_t pair = ((uint32_t)key_slot << 8 | (uint32_t)model_slot) + 1;
    struct cost_cell *cell = &m->cost_overflow;
    _Static_assert(METRICS_COST_CELLS == 1u << 12, "the hash below takes 12 bits");
    uint32_t at = (uint32_t)(pair * 2654435761u) >> 20;     /* Fibonacci hashing: the top bits mix best */
    for (unsigned i = 0; i < METRICS_COST_PROBES; i++) {
        struct cost_cell *c = &m->cost[(at + i) & (METRICS_COST_CELLS - 1)];
        uint32_t p = atomic_load_explicit(&c->pair, memory_order_relaxed);
        if (p == 0)
            atomic_store_explicit(&c->pair, pair, memory_order_release);
        if (p == 0 || p == pair) {
            cell = c;
            break;
        }
    }
    cost_cell_add(cell, pico_usd);
}

/* ---- rendering ---- */

/* A label value: backslash, double quote and newline escaped (exposition format 0.0.4). */
static void put_label(struct outbuf *o, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        outbuf_put(o, run, (size_t)(s - run));
        outbuf_put(o, esc, 2);
        run = s + 1;
    }
    outbuf_put(o, run, (size_t)(s - run));
}

/* name{label="value",...} v and a newline: nlabels pairs of label name and
 * value in kv, the values escaped. */
static void put_sample(struct outbuf *o, const char *name, unsigned nlabels, const char *const *kv, uint64_t v)
{
    outbuf_str(o, name);
    for (unsigned i = 0; i < nlabels; i++) {
        outbuf_str(o, i ? "\",": "{");
        outbuf_str(o, kv[2 * i]);
        outbuf_str(o, "=\"");
        put_label(o, kv[2 * i + 1]);
    }
    outbuf_str(o, nlabels ? "\"} " : " ");
    outbuf_u64(o, v);
    outbuf_str(o, "\n");
}

void metrics_put_family(struct outbuf *o, const char *name, const char *type, const char *help)
{
    outbuf_str(o, "# HELP ");
    outbuf_str(o, name);
    outbuf_str(o, " ");
    outbuf_str(o, help);
    outbuf_str(o, "\n# TYPE ");
    outbuf_str(o, name);
    outbuf_str(o, " ");
    outbuf_str(o, type);
    outbuf_str(o, "\n");
}

static uint64_t load(const mcounter *c) { return atomic_load_explicit(c, memory_order_relaxed); }

#define SUM_SHARDS(field) ({                                     \
    uint64_t sum_ = 0;                                           \
    for (unsigned s_ = 0; s_ < nshards; s_++)                    \
        sum_ += load(&shards[s_].field);                         \
    sum_; })

/* Microseconds as seconds with six decimals. */
static void put_seconds(struct outbuf *o, uint64_t us)
{
    char tmp[48];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
    outbuf_put(o, tmp, (size_t)n);
}

/* name+suffix{k="v",...[,le="LE"]} and a space: nlabels pairs in kv, escaped. */
static void put_series(struct outbuf *o, const char *name, const char *suffix, unsigned nlabels,
                       const char *const *kv, const char *le)
{
    outbuf_str(o, name);
    outbuf_str(o, suffix);
    for (unsigned i = 0; i < nlabels; i++) {
        outbuf_str(o, i ? "\",": "{");
        outbuf_str(o, kv[2 * i]);
        outbuf_str(o, "=\"");
        put_label(o, kv[2 * i + 1]);
    }
    if (le) {
        outbuf_str(o, nlabels ? "\",le=\"" : "{le=\"");
        outbuf_str(o, le);
    }
    outbuf_str(o, nlabels || le ? "\"} " : " ");
}

/* The sum over shards of the counter `at` bytes into struct shard_metrics. */
static uint64_t sum_at(size_t at)
{
    uint64_t sum = 0;
    for (unsigned s = 0; s < nshards; s++)
        sum += load((const mcounter *)((const char *)&shards[s] + at));
    return sum;
}

/* The total count of a histogram whose b->n bucket counters start `at` bytes
 * into struct shard_metrics. */
static uint64_t histogram_count(const struct metrics_buckets *b, size_t at)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < b->n; i++)
        n += sum_at(at + i * sizeof(mcounter));
    return n;
}

/* One histogram series: its cumulative buckets, _sum and _count. Its b->n
 * bucket counters start `buckets_at` bytes into struct shard_metrics, its
 * microsecond sum `sum_us_at` bytes in. */
static void put_histogram(struct outbuf *o, const char *name, unsigned nlabels, const char *const *kv,
                          const struct metrics_buckets *b, size_t buckets_at, size_t sum_us_at)
{
    uint64_t cumulative = 0;
    for (unsigned i = 0; i < b->n; i++) {
        cumulative += sum_at(buckets_at + i * sizeof(mcounter));
        put_series(o, name, "_bucket", nlabels, kv, b->le[i]);
        outbuf_u64(o, cumulative);
        outbuf_str(o, "\n");
    }
    put_series(o, name, "_sum", nlabels, kv, NULL);
    put_seconds(o, sum_at(sum_us_at));
    /* The +Inf bucket rather than a count of its own: the shards update buckets
     * and sums separately, and a scrape in between must still see _count == +Inf. */
    outbuf_str(o, "\n");
    put_series(o, name, "_count", nlabels, kv, NULL);
    outbuf_u64(o, cumulative);
    outbuf_str(o, "\n");
}

static void render_requests(struct outbuf *o)
{
    metrics_put_family(o, "aigw_requests_total", "counter",
               "Requests answered, by route and HTTP status.");
    for (unsigned r = 0; r < nroutes; r++)
        for (unsigned st = 0; st < METRICS_NSTATUS; st++) {
            uint64_t v = SUM_SHARDS(requests[r][st]);
            if (v == 0)
                continue;
            put_sample(o, "aigw_requests_total", 2,
                       (const char *const[]){ "route", route_names[r], "status", status_labels[st] }, v);
        }
}

static void render_duration(struct outbuf *o)
{
    metrics_put_family(o, "aigw_request_duration_seconds", "histogram",
               "Time from request start to the last response byte sent.");
    put_histogram(o, "aigw_request_duration_seconds", 0, NULL, &metrics_duration_buckets,
                  offsetof(struct shard_metrics, duration_bucket), offsetof(struct shard_metrics, duration_sum_us));
}

/* Time to first token and per output token, by route and pool; series appear
 * with a pair's first observation. */
static void render_llm_latency(struct outbuf *o)
{
    metrics_put_family(o, "aigw_first_byte_seconds", "histogram",
               "AI requests: time from the request head to the first response byte for the client "
               "(streams: the first generated token's event), by route and pool.");
    for (unsigned i = 0; i < nroute_pools; i++) {
        size_t at = offsetof(struct shard_metrics, first_byte_bucket[i]);
        if (histogram_count(&metrics_llm_buckets, at) == 0)
            continue;
        put_histogram(o, "aigw_first_byte_seconds", 2,
                      (const char *const[]){ "route", route_pool_route[i], "pool", route_pool_pool[i] },
                      &metrics_llm_buckets, at, offsetof(struct shard_metrics, first_byte_sum_us[i]));
    }
    metrics_put_family(o, "aigw_time_per_output_token_seconds", "histogram",
               "Streams: the mean spacing of generated-token events (last - first) / (events - 1), "
               "one observation per stream with two or more, by route and pool.");
    for (unsigned i = 0; i < nroute_pools; i++) {
        size_t at = offsetof(struct shard_metrics, token_gap_bucket[i]);
        if (histogram_count(&metrics_token_buckets, at) == 0)
            continue;
        put_histogram(o, "aigw_time_per_output_token_seconds", 2,
                      (const char *const[]){ "route", route_pool_route[i], "pool", route_pool_pool[i] },
                      &metrics_token_buckets, at, offsetof(struct shard_metrics, token_gap_sum_us[i]));
    }
}

/* Requests and tokens by model label; a label appears with its first request. */
static void render_models(struct outbuf *o)
{
    metrics_put_family(o, "aigw_model_requests_total", "counter",
               "AI requests answered, by model (the configured glob it matched, else \"other\") and HTTP status.");
    for (unsigned md = 0; md < nmodels; md++)
        for (unsigned st = 0; st < METRICS_NSTATUS; st++) {
            uint64_t v = SUM_SHARDS(model_requests[md][st]);
            if (v)
                put_sample(o, "aigw_model_requests_total", 2,
                           (const char *const[]){ "model", model_labels[md], "status", status_labels[st] }, v);
        }
    static const char *const directions[2] = { [TOKENS_PROMPT] = "prompt", [TOKENS_COMPLETION] = "completion" };
    metrics_put_family(o, "aigw_model_tokens_total", "counter", "Tokens used by AI requests, by model and direction.");
    for (unsigned md = 0; md < nmodels; md++) {
        uint64_t v[2] = { SUM_SHARDS(model_tokens[md][0]), SUM_SHARDS(model_tokens[md][1]) };
        if (!v[0] && !v[1] && !SUM_SHARDS(model_requests[md][0]))
            continue;
        for (unsigned d = 0; d < 2; d++)
            put_sample(o, "aigw_model_tokens_total", 2,
                       (const char *const[]){ "model", model_labels[md], "direction", directions[d] }, v[d]);
    }
}

struct cost_sample {
    uint32_t pair;
    uint64_t nano_usd;
};

static int by_pair(const void *a, const void *b)
{
    const struct cost_sample *x = a, *y = b;
    return x->pair < y->pair ? -1 : x->pair > y->pair;
}

/* aigw_cost_usd_total: every shard's cells gathered, sorted by pair and summed. */
static void render_cost(struct outbuf *o)
{
    metrics_put_family(o, "aigw_cost_usd_total", "counter",
               "USD charged at the [model] prices for the tokens AI requests used, by key and model; "
               "models without a price add nothing.");
    size_t cap = (size_t)nshards * (METRICS_COST_CELLS + 1), n = 0;
    struct cost_sample *all = cap ? malloc(cap * sizeof *all) : NULL;
    if (!all)
        return;
    for (unsigned s = 0; s < nshards; s++) {
        for (unsigned i = 0; i < METRICS_COST_CELLS; i++) {
            uint32_t pair = atomic_load_explicit(&shards[s].cost[i].pair, memory_order_acquire);
            uint64_t v = load(&shards[s].cost[i].nano_usd);
            if (pair && v)
                all[n++] = (struct cost_sample){ pair, v };
        }
        uint64_t v = load(&shards[s].cost_overflow.nano_usd);
        if (v)
            all[n++] = (struct cost_sample){ 1, v };    /* key "", model "other" */
    }
    qsort(all, n, sizeof *all, by_pair);
    for (size_t i = 0; i < n;) {
        uint32_t pair = all[i].pair;
        uint64_t sum = 0;
        for (; i < n && all[i].pair == pair; i++)
            sum = sum > UINT64_MAX - all[i].nano_usd ? UINT64_MAX : sum + all[i].nano_usd;
        unsigned key = (pair - 1) >> 8, md = (pair - 1) & 0xff;
        outbuf_str(o, "aigw_cost_usd_total{key=\"");
        put_label(o, key > 0 && key < nkeys ? key_names[key] : "");
        outbuf_str(o, "\",model=\"");
        put_label(o, md < nmodels ? model_labels[md] : "other");
        outbuf_str(o, "\"} ");
        outbuf_fixed(o, sum, 9);
        outbuf_str(o, "\n");
    }
    free(all);
}

/* metric{pool="..",backend=".."[,label="value"]} */
static void put_backend_series(struct outbuf *o, const char *metric, unsigned b, const char *label,
                               const char *value)
{
    outbuf_str(o, metric);
    outbuf_str(o, "{pool=\"");
    put_label(o, backend_pools[b]);
    outbuf_str(o, "\",backend=\"");
    put_label(o, backend_names[b]);
    if (label) {
        outbuf_str(o, "\",");
        outbuf_str(o, label);
        outbuf_str(o, "=\"");
        outbuf_str(o, value);
    }
    outbuf_str(o, "\"} ");
}

static void put_backend_labels(struct outbuf *o, const char *metric, unsigned b)
{
    put_backend_series(o, metric, b, NULL, NULL);
}

static void render_upstream_conns(struct outbuf *o)
{
    static const char *const kinds[2] = { [UPCONN_NEW] = "new", [UPCONN_REUSED] = "reused" };
    metrics_put_family(o, "aigw_upstream_connections_total", "counter",
               "Upstream connections used for requests: newly opened or reused from the pool.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!backend_live[b])
            continue;
        for (unsigned k = 0; k < 2; k++) {
            put_backend_series(o, "aigw_upstream_connections_total", b, "kind", kinds[k]);
            outbuf_u64(o, SUM_SHARDS(upstream_conns[b][k]));
            outbuf_str(o, "\n");
        }
    }
}

/* Only backends that did a TLS handshake: plaintext pools get no series. */
static void render_upstream_tls(struct outbuf *o)
{
    static const char *const resumed[2] = { "no", "yes" };      /* as aigw_tls_handshakes_total */
    metrics_put_family(o, "aigw_upstream_tls_handshakes_total", "counter",
               "TLS handshakes with backends (tls = on pools): full, or resumed with a saved session.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!backend_live[b])
            continue;
        uint64_t n[2] = { SUM_SHARDS(upstream_tls_handshakes[b][0]), SUM_SHARDS(upstream_tls_handshakes[b][1]) };
        if (!n[0] && !n[1])
            continue;
        for (unsigned k = 0; k < 2; k++) {
            put_backend_series(o, "aigw_upstream_tls_handshakes_total", b, "resumed", resumed[k]);
            outbuf_u64(o, n[k]);
            outbuf_str(o, "\n");
        }
    }
}

void metrics_set_backend_load(int slot, uint32_t outstanding, int32_t waiting, int32_t kv_permille,
                              uint64_t scraped_ms)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return;
    atomic_store_explicit(&backend_outstanding[slot], outstanding, memory_order_relaxed);
    if (!scraped_ms)
        return;
    atomic_store_explicit(&backend_waiting[slot], waiting + 1, memory_order_relaxed);  /* 0: unknown */
    atomic_store_explicit(&backend_kv[slot], kv_permille + 1, memory_order_relaxed);
    atomic_store_explicit(&backend_scraped_ms[slot], scraped_ms, memory_order_relaxed);
}

void metrics_set_backend_prefix_cache(int slot, uint64_t hits, uint64_t queries)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return;
    atomic_store_explicit(&backend_pc_hits[slot], hits, memory_order_relaxed);
    atomic_store_explicit(&backend_pc_queries[slot], queries, memory_order_relaxed);
    atomic_store_explicit(&backend_pc_known[slot], true, memory_order_release);
}

void metrics_set_backend_cache_tokens(int slot, uint32_t tokens)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return;
    atomic_store_explicit(&backend_cache_tokens[slot], tokens, memory_order_relaxed);
}

/* Gauges from the watcher. The engine's figures stay when its metrics endpoint
 * stops answering: the last value, with its age beside it, tells an incident
 * more than a series that vanishes (routing stops trusting them on its own,
 * after the staleness rule in gen.c). */
static void render_backend_load(struct outbuf *o)
{
    metrics_put_family(o, "aigw_backend_outstanding", "gauge",
               "Requests aigw has in flight to the backend, over all shards.");
    for (unsigned b = 0; b < nbackends; b++)
        if (backend_live[b]) {
            put_backend_labels(o, "aigw_backend_outstanding", b);
            outbuf_u64(o, atomic_load_explicit(&backend_outstanding[b], memory_order_relaxed));
            outbuf_str(o, "\n");
        }
    metrics_put_family(o, "aigw_backend_engine_queue_length", "gauge",
               "Requests waiting in the backend engine's own queue, at the last read of its metrics.");
    for (unsigned b = 0; b < nbackends; b++) {
        int32_t w = atomic_load_explicit(&backend_waiting[b], memory_order_relaxed);
        if (backend_live[b] && w > 0) {
            put_backend_labels(o, "aigw_backend_engine_queue_length", b);
            outbuf_u64(o, (uint64_t)(w - 1));
            outbuf_str(o, "\n");
        }
    }
    metrics_put_family(o, "aigw_backend_kv_cache_usage_ratio", "gauge",
               "The backend engine's KV-cache use (0-1), at the last read of its metrics.");
    for (unsigned b = 0; b < nbackends; b++) {
        int32_t kv = atomic_load_explicit(&backend_kv[b], memory_order_relaxed);
        if (backend_live[b] && kv > 0) {
            char v[16];
            snprintf(v, sizeof v, "%.3f", (kv - 1) / 1000.0);
            put_backend_labels(o, "aigw_backend_kv_cache_usage_ratio", b);
            outbuf_str(o, v);
            outbuf_str(o, "\n");
        }
    }
    metrics_put_family(o, "aigw_backend_engine_cache_tokens", "gauge",
               "The backend engine's KV (prefix) cache capacity in tokens, as its metrics report it "
               "(vLLM cache_config_info, SGLang max_total_num_tokens).");
    for (unsigned b = 0; b < nbackends; b++) {
        uint32_t t = atomic_load_explicit(&backend_cache_tokens[b], memory_order_relaxed);
        if (backend_live[b] && t) {
            put_backend_labels(o, "aigw_backend_engine_cache_tokens", b);
            outbuf_u64(o, t);
            outbuf_str(o, "\n");
        }
    }
    metrics_put_family(o, "aigw_backend_metrics_age_seconds", "gauge",
               "Seconds since the backend engine's metrics were last read successfully.");
    uint64_t now = clock_mono_ms();
    for (unsigned b = 0; b < nbackends; b++) {
        uint64_t at = atomic_load_explicit(&backend_scraped_ms[b], memory_order_relaxed);
        if (backend_live[b] && at) {
            put_backend_labels(o, "aigw_backend_metrics_age_seconds", b);
            outbuf_fixed(o, now > at ? now - at : 0, 3);
            outbuf_str(o, "\n");
        }
    }
}

/* What the admin API set (POST /backends/...): one series per state, 1 for the
 * one in effect, so `aigw_backend_admin_state{state!="ready"} == 1` lists them. */
static void render_backend_admin(struct outbuf *o)
{
    static const char *const states[] = { "ready", "drain", "maint" };
    struct backend_admin_view v[METRICS_MAX_BACKENDS];
    bool known[METRICS_MAX_BACKENDS];
    for (unsigned b = 0; b < nbackends; b++)
        known[b] = backend_live[b] && backend_admin_get((int)b, &v[b]);
    metrics_put_family(o, "aigw_backend_admin_state", "gauge",
               "1 for the backend's state set by the admin API (ready, drain, maint), 0 for the others.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!known[b])
            continue;
        for (unsigned k = 0; k < 3; k++) {
            put_backend_series(o, "aigw_backend_admin_state", b, "state", states[k]);
            outbuf_str(o, v[b].state == (enum backend_admin_state)k ? "1\n" : "0\n");
        }
    }
    metrics_put_family(o, "aigw_backend_weight", "gauge",
               "The backend's weight in effect: the file's, or one set by the admin API (0: no new requests).");
    for (unsigned b = 0; b < nbackends; b++)
        if (known[b]) {
            put_backend_labels(o, "aigw_backend_weight", b);
            outbuf_u64(o, v[b].weight);
            outbuf_str(o, "\n");
        }
}

/* Health and attempt outcomes per backend, from the watcher and the shards. */
static void render_backend_health(struct outbuf *o)
{
    metrics_put_family(o, "aigw_backend_up", "gauge",
               "1 if the backend passes its active check and its circuit is closed, else 0.");
    for (unsigned b = 0; b < nbackends; b++)
        if (backend_live[b]) {
            put_backend_labels(o, "aigw_backend_up", b);
            outbuf_str(o, atomic_load_explicit(&backend_down[b], memory_order_relaxed) ? "0\n" : "1\n");
        }
    static const char *const results[2] = { [ATTEMPT_OK] = "ok", [ATTEMPT_FAILED] = "failed" };
    metrics_put_family(o, "aigw_backend_requests_total", "counter",
               "Attempts sent to the backend, by result: ok (a response head below 500) or failed.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!backend_live[b])
            continue;
        for (unsigned r = 0; r < 2; r++) {
            put_backend_series(o, "aigw_backend_requests_total", b, "result", results[r]);
            outbuf_u64(o, SUM_SHARDS(backend_requests[b][r]));
            outbuf_str(o, "\n");
        }
    }
    metrics_put_family(o, "aigw_backend_retries_total", "counter",
               "Attempts on the backend that failed and were retried on another backend.");
    for (unsigned b = 0; b < nbackends; b++)
        if (backend_live[b]) {
            put_backend_labels(o, "aigw_backend_retries_total", b);
            outbuf_u64(o, SUM_SHARDS(backend_retries[b]));
            outbuf_str(o, "\n");
        }
    static const char *const reasons[2] = { [BALANCE_REASON_LOAD] = "load",
                                             [BALANCE_REASON_AFFINITY] = "affinity" };
    metrics_put_family(o, "aigw_balance_decisions_total", "counter",
               "Requests sent to the backend by the balancer, by what decided: affinity (balance = prefix: "
               "the prompt's blocks recorded there) or load.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!backend_live[b])
            continue;
        for (unsigned r = 0; r < 2; r++) {
            put_backend_series(o, "aigw_balance_decisions_total", b, "reason", reasons[r]);
            outbuf_u64(o, SUM_SHARDS(balance_decisions[b][r]));
            outbuf_str(o, "\n");
        }
    }
    static const struct { const char *name, *help; _Atomic uint64_t *v; } pc[2] = {
        { "aigw_backend_prefix_cache_hits_total",
          "The engine's prefix-cache hits (its vllm:prefix_cache_hits) at the last read of its metrics.",
          backend_pc_hits },
        { "aigw_backend_prefix_cache_queries_total",
          "The engine's prefix-cache queries (its vllm:prefix_cache_queries) at the last read of its metrics.",
          backend_pc_queries },
    };
    for (unsigned k = 0; k < 2; k++) {
        metrics_put_family(o, pc[k].name, "counter", pc[k].help);
        for (unsigned b = 0; b < nbackends; b++)
            if (backend_live[b] && atomic_load_explicit(&backend_pc_known[b], memory_order_acquire)) {
                put_backend_labels(o, pc[k].name, b);
                outbuf_u64(o, atomic_load_explicit(&pc[k].v[b], memory_order_relaxed));
                outbuf_str(o, "\n");
            }
    }
    metrics_put_family(o, "aigw_backend_circuit_opens_total", "counter",
               "Times the backend's circuit breaker opened.");
    for (unsigned b = 0; b < nbackends; b++)
        if (backend_live[b]) {
            put_backend_labels(o, "aigw_backend_circuit_opens_total", b);
            outbuf_u64(o, SUM_SHARDS(circuit_opens[b]));
            outbuf_str(o, "\n");
        }
}

/* What each backend answered: how long, and how many tokens (its tokens per
 * second is the rate of aigw_backend_tokens_total). */
static void render_backend_work(struct outbuf *o)
{
    metrics_put_family(o, "aigw_backend_request_duration_seconds", "histogram",
               "AI requests: the answering attempt, from choosing the backend to the last response byte.");
    for (unsigned b = 0; b < nbackends; b++)
        if (backend_live[b])
            put_histogram(o, "aigw_backend_request_duration_seconds", 2,
                          (const char *const[]){ "pool", backend_pools[b], "backend", backend_names[b] },
                          &metrics_llm_buckets, offsetof(struct shard_metrics, backend_duration_bucket[b]),
                          offsetof(struct shard_metrics, backend_duration_sum_us[b]));
    static const char *const directions[2] = { [TOKENS_PROMPT] = "prompt", [TOKENS_COMPLETION] = "completion" };
    metrics_put_family(o, "aigw_backend_tokens_total", "counter",
               "Tokens of the AI requests the backend answered, by direction.");
    for (unsigned b = 0; b < nbackends; b++) {
        if (!backend_live[b])
            continue;
        for (unsigned d = 0; d < 2; d++) {
            put_backend_series(o, "aigw_backend_tokens_total", b, "direction", directions[d]);
            outbuf_u64(o, SUM_SHARDS(backend_tokens[b][d]));
            outbuf_str(o, "\n");
        }
    }
}

/* metric{pool="NAME" -- the caller closes the braces (more labels may follow). */
static void put_pool_label(struct outbuf *o, const char *metric, unsigned p)
{
    outbuf_str(o, metric);
    outbuf_str(o, "{pool=\"");
    put_label(o, pool_names[p]);
    outbuf_str(o, "\"");
}

/* Queueing, shedding and fallback per pool. */
static void render_pools(struct outbuf *o)
{
    unsigned n = atomic_load_explicit(&npools, memory_order_relaxed);
    metrics_put_family(o, "aigw_pool_queue_length", "gauge",
               "Requests waiting in the pool's queue for capacity, over all shards.");
    for (unsigned p = 0; p < n; p++) {
        if (!pool_live[p])
            continue;
        /* a request may be queued on one shard's count and leave on another's in
         * between two loads; the sum is what matters */
        int64_t sum = 0;
        for (unsigned s = 0; s < nshards; s++)
            sum += atomic_load_explicit(&shards[s].queued[p], memory_order_relaxed);
        put_pool_label(o, "aigw_pool_queue_length", p);
        outbuf_str(o, "} ");
        outbuf_i64(o, sum);
        outbuf_str(o, "\n");
    }
    metrics_put_family(o, "aigw_pool_queue_wait_seconds", "histogram",
               "Time requests spent in the pool's queue (dispatched, shed or gone).");
    for (unsigned p = 0; p < n; p++) {
        if (!pool_live[p])
            continue;
        put_histogram(o, "aigw_pool_queue_wait_seconds", 1, (const char *const[]){ "pool", pool_names[p] },
                      &metrics_duration_buckets, offsetof(struct shard_metrics, queue_wait_bucket[p]),
                      offsetof(struct shard_metrics, queue_wait_sum_us[p]));
    }
    static const char *const reasons[METRICS_NSHED] = {
        [SHED_QUEUE_FULL] = "queue_full",
        [SHED_QUEUE_TIMEOUT] = "queue_timeout",
        [SHED_NO_BACKEND] = "no_backend",
    };
    metrics_put_family(o, "aigw_pool_shed_total", "counter",
               "Requests refused with 503 for lack of capacity in the pool, by reason.");
    for (unsigned p = 0; p < n; p++) {
        if (!pool_live[p])
            continue;
        for (unsigned r = 0; r < METRICS_NSHED; r++) {
            put_pool_label(o, "aigw_pool_shed_total", p);
            outbuf_str(o, ",reason=\"");
            outbuf_str(o, reasons[r]);
            outbuf_str(o, "\"} ");
            outbuf_u64(o, SUM_SHARDS(shed[p][r]));
            outbuf_str(o, "\n");
        }
    }
    metrics_put_family(o, "aigw_pool_fallback_total", "counter",
               "Requests the pool sent on to its fallback pool.");
    for (unsigned p = 0; p < n; p++)
        if (pool_live[p]) {
            put_pool_label(o, "aigw_pool_fallback_total", p);
            outbuf_str(o, "} ");
            outbuf_u64(o, SUM_SHARDS(fallbacks[p]));
            outbuf_str(o, "\n");
        }
}

static void render_relay(struct outbuf *o)
{
    metrics_put_family(o, "aigw_relay_bytes_total", "counter",
               "Response body bytes relayed to clients, by relay mode.");
    outbuf_str(o, "aigw_relay_bytes_total{mode=\"splice\"} ");
    outbuf_u64(o, SUM_SHARDS(relay_bytes[RELAY_SPLICE]));
    outbuf_str(o, "\naigw_relay_bytes_total{mode=\"copy\"} ");
    outbuf_u64(o, SUM_SHARDS(relay_bytes[RELAY_COPY]));
    outbuf_str(o, "\n");
    metrics_put_family(o, "aigw_prefix_share_entries_total", "counter",
               "prefix_index = shared: other shards' prefix placements copied into a shard's block "
               "indexes (applied), and times a shard fell a whole journal behind and skipped ahead (lapped).");
    outbuf_str(o, "aigw_prefix_share_entries_total{result=\"applied\"} ");
    outbuf_u64(o, SUM_SHARDS(prefix_share_applied));
    outbuf_str(o, "\naigw_prefix_share_entries_total{result=\"lapped\"} ");
    outbuf_u64(o, SUM_SHARDS(prefix_share_lapped));
    outbuf_str(o, "\n");
}

/* Labels of tls_failures[]: the engine's reasons in enum tls_fail_reason's order
 * (transport_tls.c checks the correspondence), then the transport's own. */
static const char *const tls_reasons[METRICS_TLS_NREASONS] = {
    "protocol", "version", "no_shared_cipher", "no_client_cert", "bad_cert",
    "bad_name", "alert", "other", [METRICS_TLS_TIMEOUT] = "timeout",
    [METRICS_TLS_PLAIN_HTTP] = "plain_http",
    [METRICS_TLS_CLIENT_CLOSED] = "client_closed",
};

static void render_tls(struct outbuf *o)
{
    static const char *const results[2] = { "ok", "failed" };
    static const char *const versions[3] = { "TLSv1.2", "TLSv1.3", "none" };
    static const char *const resumed[2] = { "no", "yes" };
    metrics_put_family(o, "aigw_tls_handshakes_total", "counter",
               "TLS handshakes with clients, by result, protocol version and resumption.");
    for (unsigned r = 0; r < 2; r++)
        for (unsigned v = 0; v < 3; v++)
            for (unsigned z = 0; z < 2; z++) {
                uint64_t n = SUM_SHARDS(tls_handshakes[r][v][z]);
                /* impossible combinations stay out; the common ones show as 0 */
                if (!n && (v == TLS_HS_VNONE) != (r == TLS_HS_FAILED))
                    continue;
                if (!n && z == 1 && r == TLS_HS_FAILED)
                    continue;
                put_sample(o, "aigw_tls_handshakes_total", 3,
                           (const char *const[]){ "result", results[r], "version", versions[v], "resumed",
                                                  resumed[z] },
                           n);
            }
    metrics_put_family(o, "aigw_tls_handshake_failures_total", "counter",
               "TLS handshakes with clients that failed, by reason.");
    for (unsigned r = 0; r < METRICS_TLS_NREASONS; r++)
        put_sample(o, "aigw_tls_handshake_failures_total", 1, (const char *const[]){ "reason", tls_reasons[r] },
                   SUM_SHARDS(tls_failures[r]));
}

/* Connections taken in and turned away, and clients that left before their
 * response ended. */
static void render_client_connections(struct outbuf *o)
{
    metrics_put_family(o, "aigw_client_connections_accepted_total", "counter",
               "Client connections accepted and taken in (refused ones not included).");
    outbuf_str(o, "aigw_client_connections_accepted_total ");
    outbuf_u64(o, SUM_SHARDS(client_accepted));
    outbuf_str(o, "\n");
    static const char *const reasons[METRICS_NREFUSALS] = {
        [REFUSED_MAX_CONNECTIONS] = "max_connections", [REFUSED_DRAINING] = "draining",
        [REFUSED_NO_FDS] = "no_fds", [REFUSED_NO_MEMORY] = "no_memory",
        [REFUSED_TLS_PLAIN_HTTP] = "tls_plain_http",
    };
    metrics_put_family(o, "aigw_client_connections_refused_total", "counter",
               "Client connections closed before a request was served, or accepts that failed, by reason.");
    for (unsigned r = 0; r < METRICS_NREFUSALS; r++)
        put_sample(o, "aigw_client_connections_refused_total", 1, (const char *const[]){ "reason", reasons[r] },
                   SUM_SHARDS(client_refused[r]));
    metrics_put_family(o, "aigw_client_aborts_total", "counter",
               "Requests whose client went away before the response ended (streams included), by route.");
    for (unsigned r = 0; r < nroutes; r++) {
        uint64_t v = SUM_SHARDS(client_aborts[r]);
        if (v)
            put_sample(o, "aigw_client_aborts_total", 1, (const char *const[]){ "route", route_names[r] }, v);
    }
}

static void render_connections(struct outbuf *o)
{
    metrics_put_family(o, "aigw_connections", "gauge", "Open connections, by side.");
    static const char *const sides[METRICS_NSIDES] = {
        [SIDE_CLIENT] = "client", [SIDE_UPSTREAM] = "upstream", [SIDE_CLIENT_TLS] = "client_tls",
    };
    for (unsigned side = 0; side < METRICS_NSIDES; side++) {
        /* A connection may open on one shard's count and close on another's in
         * between two loads; the sum is what matters. */
        int64_t sum = 0;
        for (unsigned s = 0; s < nshards; s++)
            sum += atomic_load_explicit(&shards[s].connections[side], memory_order_relaxed);
        outbuf_str(o, "aigw_connections{side=\"");
        outbuf_str(o, sides[side]);
        outbuf_str(o, "\"} ");
        outbuf_i64(o, sum);
        outbuf_str(o, "\n");
    }
}

static uint64_t key_tokens(unsigned k, unsigned col) { return SUM_SHARDS(tokens[k][col]); }
static uint64_t key_ratelimited(unsigned k, unsigned col) { return SUM_SHARDS(ratelimited[k][col]); }

/* One per-key family: name{key="NAME",label="columns[c]"} for each non-zero
 * cell. Series appear once a key has used tokens or been limited: a keys file of
 * thousands of names does not mean thousands of zero lines. */
static void render_key_family(struct outbuf *o, const char *name, const char *help, const char *label,
                              const char *const *columns, unsigned ncolumns,
                              uint64_t (*value)(unsigned key, unsigned column))
{
    metrics_put_family(o, name, "counter", help);
    for (unsigned k = 0; shards && k < nkeys; k++)
        for (unsigned col = 0; col < ncolumns; col++) {
            uint64_t v = value(k, col);
            if (v == 0)
                continue;
            put_sample(o, name, 2, (const char *const[]){ "key", k > 0 ? key_names[k] : "", label, columns[col] },
                       v);
        }
}

static void render_keys(struct outbuf *o)
{
    static const char *const directions[2] = { [TOKENS_PROMPT] = "prompt",
                                               [TOKENS_COMPLETION] = "completion" };
    render_key_family(o, "aigw_tokens_total",
                      "Tokens used through AI routes, by API key NAME and direction.", "direction",
                      directions, 2, key_tokens);
    render_key_family(o, "aigw_ratelimited_total",
                      "Requests refused with 429, by API key NAME and the limit that fired.", "limit",
                      metrics_limit_labels, METRICS_NLIMITS, key_ratelimited);
}

/* name{result="ok"} N and name{result="failed"} M */
static void put_ok_failed(struct outbuf *o, const char *name, _Atomic uint64_t counts[2],
                          memory_order order)
{
    static const char *const results[2] = { "ok", "failed" };
    for (unsigned r = 0; r < 2; r++)
        put_sample(o, name, 1, (const char *const[]){ "result", results[r] }, atomic_load_explicit(&counts[r], order));
}

static void render_access_log(struct outbuf *o)
{
    metrics_put_family(o, "aigw_access_log_dropped_total", "counter",
               "Access log lines dropped because a shard's log buffer was full.");
    outbuf_str(o, "aigw_access_log_dropped_total ");
    outbuf_u64(o, SUM_SHARDS(access_log_dropped));
    outbuf_str(o, "\n");
    metrics_put_family(o, "aigw_request_terminations_total", "counter",
               "Requests that ended other than normally, by reason (the access log's termination).");
    for (unsigned t = TERM_NONE + 1; t < TERM_COUNT; t++)
        put_sample(o, "aigw_request_terminations_total", 1,
                   (const char *const[]){ "reason", alog_termination_name((enum termination)t) },
                   SUM_SHARDS(terminations[t]));
    metrics_put_family(o, "aigw_access_log_reopens_total", "counter",
               "Access log file reopens (SIGUSR1), by result; failed: the old file is kept.");
    put_ok_failed(o, "aigw_access_log_reopens_total", access_log_reopens, memory_order_relaxed);
}

/* Reloads, and which generation each shard serves: a reload has taken effect
 * once every shard's generation equals aigw_config_generation. */
static void render_config(struct outbuf *o)
{
    metrics_put_family(o, "aigw_config_reloads_total", "counter",
               "Configuration reloads (SIGHUP), by result; failed: refused, the running one stays.");
    put_ok_failed(o, "aigw_config_reloads_total", reloads, memory_order_acquire);
    /* named as Prometheus names its own (prometheus_config_last_reload_*) */
    metrics_put_family(o, "aigw_config_last_reload_successful", "gauge",
               "1 if the last reload was applied (or none was tried since start), 0 if it was refused.");
    outbuf_str(o, "aigw_config_last_reload_successful ");
    outbuf_u64(o, atomic_load_explicit(&last_reload_ok, memory_order_relaxed) ? 1 : 0);
    outbuf_str(o, "\n");
    metrics_put_family(o, "aigw_config_last_reload_success_timestamp_seconds", "gauge",
               "When the running configuration was loaded (start or the last applied reload), Unix seconds.");
    outbuf_str(o, "aigw_config_last_reload_success_timestamp_seconds ");
    outbuf_i64(o, atomic_load_explicit(&last_reload_success_s, memory_order_relaxed));
    outbuf_str(o, "\n");
    metrics_put_family(o, "aigw_config_generation", "gauge",
               "The configuration generation loaded last (1 at start, one more per applied reload).");
    outbuf_str(o, "aigw_config_generation ");
    outbuf_u64(o, atomic_load_explicit(&config_generation, memory_order_relaxed));
    outbuf_str(o, "\n");
    metrics_put_family(o, "aigw_shard_config_generation", "gauge",
               "The configuration generation each shard serves new requests with.");
    for (unsigned s = 0; s < nshards; s++) {
        outbuf_str(o, "aigw_shard_config_generation{shard=\"");
        outbuf_u64(o, s);
        outbuf_str(o, "\"} ");
        outbuf_i64(o, atomic_load_explicit(&shards[s].config_generation, memory_order_relaxed));
        outbuf_str(o, "\n");
    }
}

/* Per shard, so that a test (or an operator) can see that every shard serves. */
static void render_shards(struct outbuf *o)
{
    metrics_put_family(o, "aigw_shard_requests_total", "counter", "Requests answered, by shard.");
    for (unsigned s = 0; s < nshards; s++) {
        outbuf_str(o, "aigw_shard_requests_total{shard=\"");
        outbuf_u64(o, s);
        outbuf_str(o, "\"} ");
        outbuf_u64(o, load(&shards[s].duration_count));
        outbuf_str(o, "\n");
    }
}

size_t metrics_render(char *buf, size_t cap)
{
    struct outbuf o = outbuf_make(buf, cap);
    pthread_mutex_lock(&registry_mu);
    render_requests(&o);
    render_duration(&o);
    render_llm_latency(&o);
    render_models(&o);
    render_cost(&o);
    render_upstream_conns(&o);
    render_upstream_tls(&o);
    render_backend_load(&o);
    render_backend_health(&o);
    render_backend_admin(&o);
    render_backend_work(&o);
    render_pools(&o);
    render_relay(&o);
    render_connections(&o);
    render_client_connections(&o);
    render_tls(&o);
    render_keys(&o);
    limits_sync_metrics(&o);
    trace_metrics(&o);
    render_access_log(&o);
    render_config(&o);
    render_shards(&o);
    process_metrics_render(&o);
    pthread_mutex_unlock(&registry_mu);
    if (o.len < cap)
        buf[o.len] = '\0';
    else if (cap > 0)
        buf[cap - 1] = '\0';
    return o.len;
}

int metrics_render_alloc(char **out, size_t *len)
{
    size_t cap = 16384;
    /* New series can appear between two passes (a first request on a route), so
     * grow with headroom and retry a few times. */
    for (int attempt = 0; attempt < 8; attempt++) {
        char *buf = malloc(cap);
        if (!buf) {
            errno = ENOMEM;
            return -1;
        }
        size_t n = metrics_render(buf, cap);
        if (n < cap) {
            *out = buf;
            *len = n;
            return 0;
        }
        free(buf);
        cap = n + n / 4 + 4096;
    }
    errno = ENOMEM;
    return -1;
}

/* ---- read accessors for /status ---- */

static enum metrics_status_class status_class(unsigned col)
{
    const char *label = status_labels[col];
    if (strcmp(label, "429") == 0)
        return MSC_429;
    switch (label[0]) {
    case '1': return MSC_1XX;
    case '2': return MSC_2XX;
    case '3': return MSC_3XX;
    case '4': return MSC_4XX;
    default: return MSC_5XX;
    }
}

void metrics_read(struct metrics_reading *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_lock(&registry_mu);
    for (unsigned k = 0; k < nroutes; k++)
        for (unsigned st = 0; st < METRICS_NSTATUS; st++)
            r->route_requests[k][status_class(st)] += SUM_SHARDS(requests[k][st]);
    for (unsigned b = 0; b < nbackends; b++)
        for (unsigned i = 0; i < 2; i++) {
            r->backend_attempts[b][i] = SUM_SHARDS(backend_requests[b][i]);
            r->backend_tokens[b][i] = SUM_SHARDS(backend_tokens[b][i]);
        }
    for (unsigned i = 0; i < nroute_pools; i++) {
        for (unsigned k = 0; k < METRICS_LLM_NBUCKETS; k++)
            r->first_byte_bucket[i][k] = SUM_SHARDS(first_byte_bucket[i][k]);
        for (unsigned k = 0; k < METRICS_TOKEN_NBUCKETS; k++)
            r->token_gap_bucket[i][k] = SUM_SHARDS(token_gap_bucket[i][k]);
    }
    unsigned np = atomic_load_explicit(&npools, memory_order_relaxed);
    for (unsigned p = 0; p < np; p++)
        for (unsigned k = 0; k < METRICS_NSHED; k++)
            r->shed[p][k] = SUM_SHARDS(shed[p][k]);
    for (unsigned k = 0; shards && k < nkeys; k++)
        for (unsigned l = 0; l < METRICS_NLIMITS; l++)
            r->ratelimited[l] += key_ratelimited(k, l);
    pthread_mutex_unlock(&registry_mu);
}

int64_t metrics_pool_queued(int pool_slot)
{
    if (pool_slot < 0 || pool_slot >= METRICS_MAX_POOLS)
        return 0;
    int64_t sum = 0;
    for (unsigned s = 0; s < nshards; s++)
        sum += atomic_load_explicit(&shards[s].queued[pool_slot], memory_order_relaxed);
    return sum;
}

unsigned metrics_nshards(void)
{
    return nshards;
}

static uint64_t key_order_value(const struct metrics_key_total *t, enum metrics_key_order order)
{
    return order == KEYS_BY_SPEND ? t->nano_usd : t->tokens[0] + t->tokens[1];
}

int metrics_top_keys(enum metrics_key_order order, struct metrics_key_total *out, unsigned max)
{
    if (max == 0)
        return 0;
    pthread_mutex_lock(&registry_mu);
    unsigned n = shards ? nkeys : 0;
    uint64_t *spend = calloc(n + 1, sizeof *spend);
    if (!spend) {
        pthread_mutex_unlock(&registry_mu);
        errno = ENOMEM;
        return -1;
    }
    for (unsigned s = 0; s < nshards; s++) {
        for (unsigned i = 0; i < METRICS_COST_CELLS; i++) {
            uint32_t pair = atomic_load_explicit(&shards[s].cost[i].pair, memory_order_acquire);
            unsigned key = pair ? (pair - 1) >> 8 : 0;
            if (pair && key < n)
                spend[key] += load(&shards[s].cost[i].nano_usd);
        }
        if (n)
            spend[0] += load(&shards[s].cost_overflow.nano_usd);
    }
    /* insertion into a sorted top-max: max is small (tens) */
    unsigned have = 0;
    for (unsigned k = 0; k < n; k++) {
        struct metrics_key_total t = { k ? key_names[k] : "", { key_tokens(k, 0), key_tokens(k, 1) }, spend[k] };
        uint64_t v = key_order_value(&t, order);
        if (v == 0 || (have == max && v <= key_order_value(&out[max - 1], order)))
            continue;
        unsigned at = have < max ? have++ : max - 1;
        while (at > 0 && key_order_value(&out[at - 1], order) < v) {
            out[at] = out[at - 1];
            at--;
        }
        out[at] = t;
    }
    free(spend);
    pthread_mutex_unlock(&registry_mu);
    return (int)have;
}
