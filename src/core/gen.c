/* Configuration generations: a loaded config plus everything compiled from it
 * (route table, metric slots, the flat backend list and its shared load cells).
 * Immutable once published; shards adopt the newest at their next loop turn and
 * keep older ones alive only while their requests still run. */
#include "core/gen.h"
#include "core/metrics.h"
#include "policy/balance.h"
#include "policy/route.h"
#include "util/hash.h"

#include "core/admission.h"
#include "core/backend_admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

static _Atomic uint64_t next_gen_id = 1;
/* holders that joined after the first generation (gen_add_holder) */
static _Atomic unsigned late_holders;

static void gen_free(struct gen *g)
{
    route_table_free(g->routes);
    config_free(g->cfg);
    free(g->route_metric_slot);
    free(g->backend_metric_slot);
    free(g->backend_id);
    free(g->pool_first_backend);
    free(g->backend_cfg);
    free(g->backend_pool);
    free(g->load);
    free(g->signal);
    free(g->health);
    free(g->pool_metric_slot);
    free(g->route_pool_metric_slot);
    model_labels_free(&g->model_labels);
    free(g->model_metric_slot);
    free(g->backend_interval_ms);
    for (struct served_models *m = atomic_load(&g->served), *older; m; m = older) {
        older = m->older;
        free(m);
    }
    admission_gen_free(g);
    free(g);
}

/* The (route, pool) pairs a route can send to: its pool or split pools, and
 * their fallbacks (one hop, as dispatch.c moves a request). */
static int build_route_pool_slots(struct gen *g, char *err, size_t errlen)
{
    const struct config *cfg = g->cfg;
    size_t n = (size_t)cfg->nroutes * cfg->npools;
    g->route_pool_metric_slot = malloc((n ? n : 1) * sizeof(int));
    if (!g->route_pool_metric_slot) {
        snprintf(err, errlen, "%s: out of memory", cfg->path);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        g->route_pool_metric_slot[i] = -1;
    for (unsigned r = 0; r < cfg->nroutes; r++) {
        const struct cfg_route *route = &cfg->routes[r];
        unsigned first[CFG_MAX_SPLIT + 1];
        unsigned nfirst = 0;
        if (route->nsplit)
            for (unsigned i = 0; i < route->nsplit; i++)
                first[nfirst++] = route->split[i].pool;
        else
            first[nfirst++] = route->pool;
        for (unsigned i = 0; i < nfirst; i++) {
            int chain[2] = { (int)first[i], cfg->pools[first[i]].fallback };
            for (unsigned k = 0; k < 2 && chain[k] >= 0; k++) {
                int *slot = &g->route_pool_metric_slot[(size_t)r * cfg->npools + (unsigned)chain[k]];
                if (*slot >= 0)
                    continue;
                *slot = metrics_route_pool_slot(route->name, cfg->pools[chain[k]].name);
                if (*slot < 0) {
                    snprintf(err, errlen, "%s: too many distinct route and pool pairs for metrics (max %d)",
                             cfg->path, METRICS_MAX_ROUTE_POOLS);
                    return -1;
                }
            }
        }
    }
    return 0;
}

static int build_model_slots(struct gen *g, char *err, size_t errlen)
{
    if (model_labels_build(g->cfg, &g->model_labels) != 0 ||
        !(g->model_metric_slot = calloc(g->model_labels.n + 1, 1))) {
        snprintf(err, errlen, "%s: out of memory", g->cfg->path);
        return -1;
    }
    for (unsigned i = 0; i < g->model_labels.n; i++)
        g->model_metric_slot[i] = (uint8_t)metrics_model_slot(g->model_labels.glob[i]);
    return 0;
}

/* A reload keeps what is known of backends it keeps (same pool, same address):
 * a backend that was down or had its circuit open stays so until checked again. */
static void inherit_health(struct gen *g, const struct gen *prev)
{
    for (unsigned b = 0; b < g->cfg->nbackends; b++)
        for (unsigned o = 0; o < prev->cfg->nbackends; o++) {
            if (strcmp(g->backend_pool[b], prev->backend_pool[o]) != 0 ||
                strcmp(g->backend_cfg[b]->addr.text, prev->backend_cfg[o]->addr.text) != 0)
                continue;
            const struct backend_health *from = &prev->health[o];
            struct backend_health *to = &g->health[b];
            atomic_store(&to->checked_up, atomic_load(&from->checked_up));
            /* a probe in flight belongs to the old generation: the new one may send its own */
            uint8_t circuit = atomic_load(&from->circuit);
            atomic_store(&to->circuit, circuit == CIRCUIT_CLOSED ? CIRCUIT_CLOSED : CIRCUIT_OPEN);
            atomic_store(&to->open_cause, atomic_load(&from->open_cause));
            atomic_store(&to->reopens, atomic_load(&from->reopens));
            atomic_store(&to->open_until_ms, atomic_load(&from->open_until_ms));
            break;
        }
}

static int served_cmp(const void *a, const void *b)
{
    const struct served_model *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    return c ? c : (x->pool > y->pool) - (x->pool < y->pool);
}

void served_models_sort(struct served_models *s)
{
    qsort(s->m, s->n, sizeof s->m[0], served_cmp);
    unsigned out = 0;
    for (unsigned i = 0; i < s->n; i++)
        if (!out || served_cmp(&s->m[out - 1], &s->m[i]) != 0)
            s->m[out++] = s->m[i];
    s->n = out;
}

/* What the previous generation's backends serve, for the pools it shares by name
 * (and that still ask), until the watcher has moved over: a reload leaves no gap
 * in /v1/models. */
static void inherit_served(struct gen *g, const struct gen *prev)
{
    const struct served_models *old = atomic_load_explicit(&prev->served, memory_order_acquire);
    if (!old)
        return;
    size_t bytes = 0;
    for (unsigned i = 0; i < old->n; i++)
        bytes += strlen(old->m[i].id) + 1;
    struct served_models *s = malloc(sizeof *s + old->n * sizeof s->m[0] + bytes);
    if (!s)
        return;     /* the watcher publishes its own soon */
    char *store = (char *)&s->m[old->n];
    s->older = NULL;
    s->n = 0;
    for (unsigned i = 0; i < old->n; i++) {
        const char *name = prev->cfg->pools[old->m[i].pool].name;
        for (unsigned p = 0; p < g->cfg->npools; p++) {
            const struct cfg_pool *pool = &g->cfg->pools[p];
            if (strcmp(pool->name, name) != 0 || !pool->model_list_path[0])
                continue;
            size_t len = strlen(old->m[i].id) + 1;
            memcpy(store, old->m[i].id, len);
            s->m[s->n++] = (struct served_model){ store, p };
            store += len;
            break;
        }
    }
    served_models_sort(s);
    atomic_store_explicit(&g->served, s, memory_order_release);
}

const char *backend_failure_name(enum backend_failure f)
{
    switch (f) {
    case BF_CONNECT: return "connect errors";
    case BF_RESET: return "connections reset";
    case BF_TIMEOUT: return "timeouts";
    case BF_STATUS: return "5xx answers";
    default: return "failures";
    }
}

struct gen *gen_create(struct config *cfg, const struct gen *prev, unsigned nshards, char *err,
                       size_t errlen)
{
    struct gen *g = calloc(1, sizeof *g);
    if (!g)
        goto oom;
    g->cfg = cfg;
    g->nshards = nshards;
    unsigned nb = cfg->nbackends;
    g->route_metric_slot = calloc(cfg->nroutes + 1, sizeof(int));
    g->backend_metric_slot = calloc(nb + 1, sizeof(int));
    g->pool_first_backend = calloc(cfg->npools + 1, sizeof(unsigned));
    g->backend_cfg = calloc(nb + 1, sizeof *g->backend_cfg);
    g->backend_pool = calloc(nb + 1, sizeof *g->backend_pool);
    g->backend_id = calloc(nb + 1, sizeof *g->backend_id);
    g->load = aligned_alloc(64, sizeof(struct backend_load) * ((size_t)nb * nshards + 1));
    g->signal = aligned_alloc(64, sizeof(struct backend_signal) * (nb + 1));
    g->backend_interval_ms = calloc(nb + 1, sizeof *g->backend_interval_ms);
    g->health = aligned_alloc(64, sizeof(struct backend_health) * (nb + 1));
    g->pool_metric_slot = calloc(cfg->npools + 1, sizeof(int));
    if (!g->health || !g->pool_metric_slot ||
        !g->route_metric_slot || !g->backend_metric_slot || !g->pool_first_backend ||
        !g->backend_cfg || !g->backend_pool || !g->backend_id || !g->load || !g->signal ||
        !g->backend_interval_ms)
        goto oom;
    for (unsigned b = 0; b < nb; b++) {
        atomic_init(&g->signal[b].waiting, -1);
        atomic_init(&g->signal[b].running, -1);
        atomic_init(&g->signal[b].kv_permille, -1);
        atomic_init(&g->signal[b].cache_tokens, 0);
        atomic_init(&g->signal[b].scraped_ms, 0);
        memset(&g->health[b], 0, sizeof g->health[b]);
        atomic_init(&g->health[b].checked_up, true);
        atomic_init(&g->health[b].circuit, CIRCUIT_CLOSED);
    }
    for (size_t i = 0; i < (size_t)nb * nshards; i++)
        atomic_init(&g->load[i].outstanding, 0);
    if (route_table_build(cfg->routes, cfg->nroutes, &g->routes) != 0)
        goto oom;

    for (unsigned r = 0; r < cfg->nroutes; r++) {
        g->route_metric_slot[r] = metrics_route_slot(cfg->routes[r].name);
        if (g->route_metric_slot[r] < 0) {
            snprintf(err, errlen, "%s: too many distinct route names for metrics (max %d)",
                     cfg->path, METRICS_MAX_ROUTES - 1);
            goto fail;
        }
    }
    unsigned b = 0;
    for (unsigned p = 0; p < cfg->npools; p++) {
        g->pool_first_backend[p] = b;
        g->pool_metric_slot[p] = metrics_pool_slot(cfg->pools[p].name);
        if (g->pool_metric_slot[p] < 0) {
            snprintf(err, errlen, "%s: too many distinct pool names for metrics (max %d)",
                     cfg->path, METRICS_MAX_POOLS);
            goto fail;
        }
        for (unsigned i = 0; i < cfg->pools[p].nbackends; i++, b++) {
            g->backend_cfg[b] = &cfg->pools[p].backends[i];
            g->backend_pool[b] = cfg->pools[p].name;
            g->backend_id[b] = hash_str(cfg->pools[p].backends[i].addr.text);
            g->backend_interval_ms[b] = cfg->pools[p].metrics_interval_ms;
            g->backend_metric_slot[b] = metrics_backend_slot(cfg->pools[p].name,
                                                             cfg->pools[p].backends[i].addr.text);
            if (g->backend_metric_slot[b] < 0) {
                snprintf(err, errlen, "%s: too many distinct backends for metrics (max %d)",
                         cfg->path, METRICS_MAX_BACKENDS);
                goto fail;
            }
        }
    }
    if (build_route_pool_slots(g, err, errlen) != 0 || build_model_slots(g, err, errlen) != 0)
        goto fail;
    if (admission_gen_init(g, prev, err, errlen) != 0)
        goto fail;
    unsigned *file_weights = calloc(nb + 1, sizeof *file_weights);
    if (!file_weights)
        goto oom;
    for (unsigned i = 0; i < nb; i++)
        file_weights[i] = g->backend_cfg[i]->weight;
    /* nothing fails from here: the runtime state follows this configuration */
    backend_admin_bind(g->backend_metric_slot, file_weights, nb);
    free(file_weights);
    if (prev) {
        inherit_health(g, prev);
        inherit_served(g, prev);
    }
    metrics_set_live_backends(g->backend_metric_slot, nb);
    metrics_set_live_pools(g->pool_metric_slot, cfg->npools);
    g->id = atomic_fetch_add(&next_gen_id, 1);
    /* the shards, main, the watcher, the limits sync thread, and the late holders */
    atomic_init(&g->refs, (int)nshards + 3 + (int)atomic_load(&late_holders));
    atomic_init(&g->newer, NULL);
    return g;
oom:
    snprintf(err, errlen, "%s: out of memory", cfg->path);
fail:
    if (g) {
        g->cfg = NULL;      /* the caller still owns cfg on failure */
        gen_free(g);
    }
    return NULL;
}

void gen_add_holder(struct gen *current)
{
    atomic_fetch_add(&late_holders, 1);
    atomic_fetch_add(&current->refs, 1);
}

void gen_unref(struct gen *g)
{
    if (atomic_fetch_sub(&g->refs, 1) == 1)
        gen_free(g);
}
