#include "core/status.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend_admin.h"
#include "core/config.h"
#include "core/gen.h"
#include "core/metrics.h"
#include "util/json_escape.h"
#include "util/outbuf.h"

#define STATUS_NAME_MAX 1024    /* bytes of escaped text per name: a bound, never a cut in practice */

struct reading {
    uint64_t taken_ms;
    struct metrics_reading m;
};

/* Admin thread only. ring[(first + i) % STATUS_READINGS], i < nring, oldest first. */
static struct reading *ring;
static unsigned first, nring;
static uint64_t next_tick_ms, started_ms;
static struct reading *now_reading;     /* the one taken for a render */

int status_start(uint64_t now_ms)
{
    ring = calloc(STATUS_READINGS, sizeof *ring);
    now_reading = calloc(1, sizeof *now_reading);
    if (!ring || !now_reading) {
        status_stop();
        errno = ENOMEM;
        return -1;
    }
    started_ms = now_ms;
    first = nring = 0;
    next_tick_ms = now_ms;
    status_tick(now_ms);
    return 0;
}

void status_stop(void)
{
    free(ring);
    free(now_reading);
    ring = NULL;
    now_reading = NULL;
}

uint64_t status_tick(uint64_t now_ms)
{
    if (!ring)
        return now_ms + STATUS_TICK_MS;
    if (now_ms < next_tick_ms)
        return next_tick_ms;
    struct reading *r;
    if (nring < STATUS_READINGS)
        r = &ring[(first + nring++) % STATUS_READINGS];
    else {
        r = &ring[first];
        first = (first + 1) % STATUS_READINGS;
    }
    r->taken_ms = now_ms;
    metrics_read(&r->m);
    next_tick_ms = now_ms + STATUS_TICK_MS;
    return next_tick_ms;
}

/* ---- figures over the window ---- */

/* The window: from the oldest reading kept to the one taken for this render. */
struct window {
    const struct metrics_reading *old, *now;
    double seconds;     /* 0: no time passed yet, rates unknown */
};

static double rate(const struct window *w, uint64_t now_count, uint64_t old_count)
{
    return w->seconds > 0 && now_count >= old_count ? (double)(now_count - old_count) / w->seconds : 0;
}

/* The q-quantile of a histogram given per-bucket counts, in µs, as Prometheus'
 * histogram_quantile: linear inside the bucket that holds the rank (from 0 for
 * the first), the highest finite bound when the rank falls in +Inf. NAN: empty. */
static double bucket_quantile(const struct metrics_buckets *b, const uint64_t *counts, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < b->n; i++)
        total += counts[i];
    if (total == 0)
        return NAN;
    double rank = q * (double)total, below = 0;
    for (unsigned i = 0; i < b->n; i++) {
        double in = (double)counts[i];
        if (below + in >= rank && in > 0) {
            if (i == b->n - 1)
                return (double)b->bound_us[b->n - 2];
            double lower = i ? (double)b->bound_us[i - 1] : 0, upper = (double)b->bound_us[i];
            return lower + (upper - lower) * (rank - below) / in;
        }
        below += in;
    }
    return (double)b->bound_us[b->n - 2];
}

/* ---- JSON ---- */

static void put_key(struct outbuf *o, const char *key)
{
    outbuf_char(o, '"');
    outbuf_str(o, key);
    outbuf_str(o, "\":");
}

static void put_string(struct outbuf *o, const char *s)
{
    outbuf_char(o, '"');
    json_escape(o, s, strlen(s), STATUS_NAME_MAX, JSON_ESCAPE_SHORT_FORMS);
    outbuf_char(o, '"');
}

/* A number, or null when unknown (NAN); finite, so always valid JSON. */
static void put_double(struct outbuf *o, double v)
{
    if (isnan(v) || isinf(v)) {
        outbuf_str(o, "null");
        return;
    }
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp, "%.3f", v);
    /* trailing fraction zeros add nothing */
    while (n > 1 && tmp[n - 1] == '0')
        n--;
    if (n > 0 && tmp[n - 1] == '.')
        n--;
    outbuf_put(o, tmp, (size_t)n);
}

static void put_field_u64(struct outbuf *o, const char *key, uint64_t v)
{
    put_key(o, key);
    outbuf_u64(o, v);
    outbuf_char(o, ',');
}

static void put_field_double(struct outbuf *o, const char *key, double v)
{
    put_key(o, key);
    put_double(o, v);
    outbuf_char(o, ',');
}

/* Drops the comma the last field left before a closing bracket. */
static void close_with(struct outbuf *o, char c)
{
    if (o->len > 0 && o->len <= o->cap && o->buf[o->len - 1] == ',')
        o->len--;
    else if (o->len > o->cap && o->len > 0)
        o->len--;   /* measuring: mostly a comma was there; an empty list makes this one
                     * short, which the caller's headroom absorbs */
    outbuf_char(o, c);
}

/* "key":{"name":now[0],...}, counters by name over the window; *sum and *sum0
 * get their totals now and at the window's start (for a rate). A NULL now
 * (a label without a metric slot) writes zeros. */
static void put_counter_map(struct outbuf *o, const char *key, const char *const *names, unsigned n,
                            const uint64_t *now, const uint64_t *old, uint64_t *sum, uint64_t *sum0)
{
    *sum = *sum0 = 0;
    put_key(o, key);
    outbuf_char(o, '{');
    for (unsigned k = 0; k < n; k++) {
        uint64_t v = now ? now[k] : 0;
        *sum += v;
        *sum0 += old ? old[k] : 0;
        put_field_u64(o, names[k], v);
    }
    close_with(o, '}');
    outbuf_char(o, ',');
}

static const char *const balance_names[] = {
    [BALANCE_ROUND_ROBIN] = "round_robin", [BALANCE_LEAST_OUTSTANDING] = "least_outstanding",
    [BALANCE_CAPACITY] = "capacity", [BALANCE_PREFIX] = "prefix",
};

/* A backend's state and why, as the shards see it (backend_available) plus saturation. */
static void put_backend_state(struct outbuf *o, const struct gen *g, const struct cfg_pool *pool, unsigned b,
                              uint32_t outstanding, uint64_t now_ms)
{
    const struct backend_health *h = &g->health[b];
    uint8_t circuit = atomic_load_explicit(&h->circuit, memory_order_relaxed);
    char why[512];
    const char *state;
    struct backend_admin_view adm = backend_admin_read(g->backend_metric_slot[b], g->backend_cfg[b]->weight);
    if (adm.state == BACKEND_MAINT) {
        state = "disabled";
        snprintf(why, sizeof why, "disabled by the admin API: no new requests, health checks paused");
    } else if (adm.state == BACKEND_DRAIN || adm.weight == 0) {
        state = "draining";
        snprintf(why, sizeof why, "%s by the admin API: no new requests; %u in flight finishing",
                 adm.state == BACKEND_DRAIN ? "drained" : "weight 0", outstanding);
    } else if (!atomic_load_explicit(&h->checked_up, memory_order_relaxed)) {
        state = "down";
        snprintf(why, sizeof why, "active health check failing: GET %s", pool->health_path);
    } else if (circuit == CIRCUIT_OPEN) {
        state = "circuit_open";
        uint64_t until = atomic_load_explicit(&h->open_until_ms, memory_order_relaxed);
        snprintf(why, sizeof why, "circuit open after consecutive %s; probe in %llu ms",
                 backend_failure_name((enum backend_failure)atomic_load_explicit(&h->open_cause, memory_order_relaxed)),
                 (unsigned long long)(until > now_ms ? until - now_ms : 0));
    } else if (circuit == CIRCUIT_PROBING) {
        state = "circuit_half_open";
        snprintf(why, sizeof why, "circuit half-open after consecutive %s: one probe request is testing it",
                 backend_failure_name((enum backend_failure)atomic_load_explicit(&h->open_cause, memory_order_relaxed)));
    } else if (pool->max_outstanding && outstanding >= pool->max_outstanding) {
        state = "saturated";
        snprintf(why, sizeof why, "%u requests outstanding: max_outstanding reached", outstanding);
    } else {
        state = "up";
        why[0] = '\0';
    }
    put_key(o, "state");
    put_string(o, state);
    outbuf_char(o, ',');
    put_key(o, "reason");
    if (why[0])
        put_string(o, why);
    else
        outbuf_str(o, "null");
    outbuf_char(o, ',');
}

static void put_backend(struct outbuf *o, const struct gen *g, const struct cfg_pool *pool, unsigned b,
                        const struct window *w, uint64_t now_ms)
{
    int slot = g->backend_metric_slot[b];
    bool counted = slot >= 0 && slot < METRICS_MAX_BACKENDS;
    uint32_t outstanding = gen_outstanding(g, b);
    outbuf_char(o, '{');
    put_key(o, "address");
    put_string(o, g->backend_cfg[b]->addr.text);
    outbuf_char(o, ',');
    put_backend_state(o, g, pool, b, outstanding, now_ms);
    struct backend_admin_view adm = backend_admin_read(slot, g->backend_cfg[b]->weight);
    put_key(o, "admin_state");
    put_string(o, backend_admin_state_name(adm.state));
    outbuf_char(o, ',');
    put_field_u64(o, "weight", adm.weight);
    put_field_u64(o, "outstanding", outstanding);
    put_field_u64(o, "max_outstanding", pool->max_outstanding);
    bool fresh = backend_signal_fresh(g, b, now_ms);
    int32_t waiting = atomic_load_explicit(&g->signal[b].waiting, memory_order_relaxed);
    int32_t kv = atomic_load_explicit(&g->signal[b].kv_permille, memory_order_relaxed);
    put_field_double(o, "engine_queue", fresh && waiting >= 0 ? (double)waiting : NAN);
    put_field_double(o, "kv_cache_usage", fresh && kv >= 0 ? kv / 1000.0 : NAN);
    uint64_t ok = 0, failed = 0, ok0 = 0, failed0 = 0, tok = 0, tok0 = 0;
    if (counted) {
        ok = w->now->backend_attempts[slot][ATTEMPT_OK];
        failed = w->now->backend_attempts[slot][ATTEMPT_FAILED];
        ok0 = w->old->backend_attempts[slot][ATTEMPT_OK];
        failed0 = w->old->backend_attempts[slot][ATTEMPT_FAILED];
        tok = w->now->backend_tokens[slot][TOKENS_COMPLETION];
        tok0 = w->old->backend_tokens[slot][TOKENS_COMPLETION];
    }
    put_field_u64(o, "requests_total", ok + failed);
    put_field_u64(o, "failed_total", failed);
    put_field_double(o, "requests_per_s", rate(w, ok + failed, ok0 + failed0));
    uint64_t attempts = ok + failed - (ok0 + failed0);
    put_field_double(o, "error_rate", attempts ? (double)(failed - failed0) / (double)attempts : NAN);
    put_field_double(o, "tokens_per_s", rate(w, tok, tok0));
    close_with(o, '}');
    outbuf_char(o, ',');
}

static void put_quantiles(struct outbuf *o, const char *p50_key, const char *p95_key,
                          const struct metrics_buckets *b, const uint64_t *counts)
{
    put_field_double(o, p50_key, bucket_quantile(b, counts, 0.50) / 1000.0);
    put_field_double(o, p95_key, bucket_quantile(b, counts, 0.95) / 1000.0);
}

static void put_pool(struct outbuf *o, const struct gen *g, unsigned p, const struct window *w, uint64_t now_ms)
{
    const struct config *cfg = g->cfg;
    const struct cfg_pool *pool = &cfg->pools[p];
    int slot = g->pool_metric_slot[p];
    bool counted = slot >= 0 && slot < METRICS_MAX_POOLS;
    outbuf_char(o, '{');
    put_key(o, "name");
    put_string(o, pool->name);
    outbuf_char(o, ',');
    put_key(o, "balance");
    put_string(o, pool->balance < sizeof balance_names / sizeof balance_names[0] ? balance_names[pool->balance] : "");
    outbuf_char(o, ',');
    unsigned b0 = g->pool_first_backend[p], available = 0;
    for (unsigned i = 0; i < pool->nbackends; i++)
        available += backend_available(g, b0 + i) &&
                     backend_admin_takes_new(backend_admin_read(g->backend_metric_slot[b0 + i],
                                                                pool->backends[i].weight));
    put_field_u64(o, "backends_available", available);
    /* last-minute latency over every route sending here */
    uint64_t ttft[METRICS_LLM_NBUCKETS] = { 0 }, tpot[METRICS_TOKEN_NBUCKETS] = { 0 };
    for (unsigned r = 0; r < cfg->nroutes; r++) {
        int pair = g->route_pool_metric_slot[r * cfg->npools + p];
        if (pair < 0 || pair >= METRICS_MAX_ROUTE_POOLS)
            continue;
        for (unsigned k = 0; k < METRICS_LLM_NBUCKETS; k++)
            ttft[k] += w->now->first_byte_bucket[pair][k] - w->old->first_byte_bucket[pair][k];
        for (unsigned k = 0; k < METRICS_TOKEN_NBUCKETS; k++)
            tpot[k] += w->now->token_gap_bucket[pair][k] - w->old->token_gap_bucket[pair][k];
    }
    put_quantiles(o, "ttft_p50_ms", "ttft_p95_ms", &metrics_llm_buckets, ttft);
    put_quantiles(o, "tpot_p50_ms", "tpot_p95_ms", &metrics_token_buckets, tpot);
    uint64_t att = 0, att0 = 0, failed = 0, failed0 = 0, tok = 0, tok0 = 0;
    for (unsigned i = 0; i < pool->nbackends; i++) {
        int bs = g->backend_metric_slot[b0 + i];
        if (bs < 0 || bs >= METRICS_MAX_BACKENDS)
            continue;
        att += w->now->backend_attempts[bs][0] + w->now->backend_attempts[bs][1];
        att0 += w->old->backend_attempts[bs][0] + w->old->backend_attempts[bs][1];
        failed += w->now->backend_attempts[bs][ATTEMPT_FAILED];
        failed0 += w->old->backend_attempts[bs][ATTEMPT_FAILED];
        tok += w->now->backend_tokens[bs][TOKENS_COMPLETION];
        tok0 += w->old->backend_tokens[bs][TOKENS_COMPLETION];
    }
    put_field_double(o, "requests_per_s", rate(w, att, att0));
    put_field_double(o, "error_rate", att > att0 ? (double)(failed - failed0) / (double)(att - att0) : NAN);
    put_field_double(o, "tokens_per_s", rate(w, tok, tok0));
    put_key(o, "queue");
    outbuf_char(o, '{');
    int64_t queued = counted ? metrics_pool_queued(slot) : 0;
    put_field_u64(o, "length", queued > 0 ? (uint64_t)queued : 0);
    put_field_u64(o, "size", pool->queue_size);
    static const char *const shed_names[METRICS_NSHED] = {
        [SHED_QUEUE_FULL] = "queue_full", [SHED_QUEUE_TIMEOUT] = "queue_timeout", [SHED_NO_BACKEND] = "no_backend",
    };
    uint64_t shed, shed0;
    put_counter_map(o, "shed_total", shed_names, METRICS_NSHED, counted ? w->now->shed[slot] : NULL,
                    counted ? w->old->shed[slot] : NULL, &shed, &shed0);
    put_field_double(o, "shed_per_s", rate(w, shed, shed0));
    close_with(o, '}');
    outbuf_char(o, ',');
    put_key(o, "backends");
    outbuf_char(o, '[');
    for (unsigned i = 0; i < pool->nbackends; i++)
        put_backend(o, g, pool, b0 + i, w, now_ms);
    close_with(o, ']');
    close_with(o, '}');
    outbuf_char(o, ',');
}

static void put_route(struct outbuf *o, const struct gen *g, unsigned r, const struct window *w)
{
    int slot = g->route_metric_slot[r];
    bool counted = slot >= 0 && slot < METRICS_MAX_ROUTES;
    static const char *const classes[METRICS_NCLASSES] = {
        [MSC_1XX] = "1xx", [MSC_2XX] = "2xx", [MSC_3XX] = "3xx", [MSC_4XX] = "4xx", [MSC_429] = "429", [MSC_5XX] = "5xx",
    };
    uint64_t total, total0;
    outbuf_char(o, '{');
    put_key(o, "name");
    put_string(o, g->cfg->routes[r].name);
    outbuf_char(o, ',');
    put_counter_map(o, "status_total", classes, METRICS_NCLASSES, counted ? w->now->route_requests[slot] : NULL,
                    counted ? w->old->route_requests[slot] : NULL, &total, &total0);
    put_field_u64(o, "requests_total", total);
    put_field_double(o, "requests_per_s", rate(w, total, total0));
    put_key(o, "status_per_s");
    outbuf_char(o, '{');
    for (unsigned c = 0; c < METRICS_NCLASSES; c++)
        put_field_double(o, classes[c], counted ? rate(w, w->now->route_requests[slot][c],
                                                      w->old->route_requests[slot][c]) : 0);
    close_with(o, '}');
    outbuf_char(o, ',');
    uint64_t errors = counted ? w->now->route_requests[slot][MSC_5XX] - w->old->route_requests[slot][MSC_5XX] : 0;
    put_field_double(o, "error_rate", total > total0 ? (double)errors / (double)(total - total0) : NAN);
    close_with(o, '}');
    outbuf_char(o, ',');
}

static void put_keys(struct outbuf *o, const struct metrics_key_total *keys, int n)
{
    outbuf_char(o, '[');
    for (int i = 0; i < n; i++) {
        outbuf_char(o, '{');
        put_key(o, "name");
        put_string(o, keys[i].name);
        outbuf_char(o, ',');
        put_field_u64(o, "prompt_tokens", keys[i].tokens[TOKENS_PROMPT]);
        put_field_u64(o, "completion_tokens", keys[i].tokens[TOKENS_COMPLETION]);
        put_field_u64(o, "tokens", keys[i].tokens[0] + keys[i].tokens[1]);
        put_key(o, "cost_usd");
        outbuf_fixed(o, keys[i].nano_usd, 9);
        close_with(o, '}');
        outbuf_char(o, ',');
    }
    close_with(o, ']');
    outbuf_char(o, ',');
}

struct render_input {
    const struct gen *g;
    uint64_t now_ms;
    struct window w;
    struct metrics_key_total by_tokens[STATUS_TOP_KEYS], by_spend[STATUS_TOP_KEYS];
    int nby_tokens, nby_spend;
};

static void render(struct outbuf *o, const struct render_input *in)
{
    const struct gen *g = in->g;
    const struct window *w = &in->w;
    outbuf_char(o, '{');
    put_key(o, "version");
    put_string(o, AIGW_VERSION);
    outbuf_char(o, ',');
    put_field_double(o, "uptime_s", (double)(in->now_ms - started_ms) / 1000.0);
    put_field_u64(o, "config_generation", g ? g->id : 0);
    put_field_u64(o, "shards", metrics_nshards());
    put_field_double(o, "window_s", w->seconds);
    put_key(o, "pools");
    outbuf_char(o, '[');
    for (unsigned p = 0; g && p < g->cfg->npools; p++)
        put_pool(o, g, p, w, in->now_ms);
    close_with(o, ']');
    outbuf_char(o, ',');
    put_key(o, "routes");
    outbuf_char(o, '[');
    for (unsigned r = 0; g && r < g->cfg->nroutes; r++)
        put_route(o, g, r, w);
    close_with(o, ']');
    outbuf_char(o, ',');
    put_key(o, "keys");
    outbuf_char(o, '{');
    put_key(o, "window");
    put_string(o, "lifetime");
    outbuf_char(o, ',');
    put_key(o, "top_by_tokens");
    put_keys(o, in->by_tokens, in->nby_tokens);
    put_key(o, "top_by_spend");
    put_keys(o, in->by_spend, in->nby_spend);
    close_with(o, '}');
    outbuf_char(o, ',');
    uint64_t denied, denied0;
    put_counter_map(o, "rate_limited_total", metrics_limit_labels, METRICS_NLIMITS, w->now->ratelimited,
                    w->old->ratelimited, &denied, &denied0);
    put_field_double(o, "rate_limited_per_s", rate(w, denied, denied0));
    close_with(o, '}');
    outbuf_char(o, '\n');
}

int status_render_json(const struct gen *g, uint64_t now_ms, char **out, size_t *len)
{
    if (!ring || nring == 0) {
        errno = ENOMEM;
        return -1;
    }
    static struct render_input in;
    in.g = g;
    in.now_ms = now_ms;
    now_reading->taken_ms = now_ms;
    metrics_read(&now_reading->m);
    const struct reading *oldest = &ring[first];
    in.w.old = &oldest->m;
    in.w.now = &now_reading->m;
    in.w.seconds = now_ms > oldest->taken_ms ? (double)(now_ms - oldest->taken_ms) / 1000.0 : 0;
    in.nby_tokens = metrics_top_keys(KEYS_BY_TOKENS, in.by_tokens, STATUS_TOP_KEYS);
    in.nby_spend = metrics_top_keys(KEYS_BY_SPEND, in.by_spend, STATUS_TOP_KEYS);
    if (in.nby_tokens < 0 || in.nby_spend < 0) {
        errno = ENOMEM;
        return -1;
    }
    /* measured first, then written: the figures are fixed above, only live
     * gauges (outstanding, the engines' load) may change length in between */
    size_t cap = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        char *buf = cap ? malloc(cap) : NULL;
        if (cap && !buf)
            break;
        struct outbuf o = outbuf_make(buf, cap);
        render(&o, &in);
        if (buf && !outbuf_overflowed(&o)) {
            *out = buf;
            *len = o.len;
            return 0;
        }
        free(buf);
        cap = o.len + 1024;
    }
    errno = ENOMEM;
    return -1;
}
