/* Admission: API keys, model permissions and rate limits. See admission.h.
 * Everything per request here is arithmetic on the shard's own rl_local and,
 * when a lease runs out, one CAS on the key's rl_global. */
#include "core/admission.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/conn.h"
#include "core/cost.h"
#include "core/gen.h"
#include "core/shard.h"
#include "cluster/sync.h"
#include "policy/keys.h"
#include "proto/openai.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/outbuf.h"

/* ---- per-generation key state ---- */

static const struct cfg_tier *key_tier(const struct config *cfg, unsigned key)
{
    uint32_t t = cfg->keys.key_tier ? cfg->keys.key_tier[key] : CFG_NO_TIER;
    return t == CFG_NO_TIER ? NULL : &cfg->tiers[t];
}

static void tier_limits(const struct cfg_tier *t, struct rl_limits *lim)
{
    memset(lim, 0, sizeof *lim);
    if (!t)
        return;
    lim->rpm = t->requests_per_minute;
    lim->tpm = t->tokens_per_minute;
    lim->burst_ms = t->burst_ms;
    lim->daily_tokens = t->daily_tokens;
    lim->daily_spend = t->daily_spend_micro_usd;
}

/* A generation's keys by NAME: an open-addressing table built once per reload
 * (control plane), so a reload of 100k keys stays linear. */
struct key_name_index {
    const struct keyring *ring;
    int32_t *slot;          /* key index, -1 empty */
    size_t mask;
};

static bool name_index_build(struct key_name_index *ix, const struct gen *g)
{
    ix->ring = g ? g->cfg->keys.ring : NULL;
    ix->slot = NULL;
    ix->mask = 0;
    unsigned n = keyring_count(ix->ring);
    if (!n || !g->rl_global)
        return true;
    size_t size = 16;
    while (size < (size_t)n * 2)
        size *= 2;
    ix->slot = malloc(size * sizeof *ix->slot);
    if (!ix->slot)
        return false;
    ix->mask = size - 1;
    for (size_t i = 0; i < size; i++)
        ix->slot[i] = -1;
    for (unsigned k = 0; k < n; k++) {
        size_t i = hash_str(keyring_entry(ix->ring, k)->name) & ix->mask;
        while (ix->slot[i] >= 0)
            i = (i + 1) & ix->mask;
        ix->slot[i] = (int32_t)k;
    }
    return true;
}

static int name_index_find(const struct key_name_index *ix, const char *name)
{
    if (!ix->slot)
        return -1;
    for (size_t i = hash_str(name) & ix->mask; ix->slot[i] >= 0; i = (i + 1) & ix->mask)
        if (strcmp(keyring_entry(ix->ring, (unsigned)ix->slot[i])->name, name) == 0)
            return ix->slot[i];
    return -1;
}

struct key_name_index *admission_name_index_new(const struct gen *g)
{
    struct key_name_index *ix = malloc(sizeof *ix);
    if (ix && !name_index_build(ix, g)) {
        free(ix);
        return NULL;
    }
    return ix;
}

int admission_name_index_find(const struct key_name_index *ix, const char *name)
{
    return ix ? name_index_find(ix, name) : -1;
}

void admission_name_index_free(struct key_name_index *ix)
{
    if (ix)
        free(ix->slot);
    free(ix);
}

/* A key's state across a reload. Local to local: bucket levels and the day's
 * quota use. Cluster to cluster: the host's leased stock moves over (the store
 * keeps the rest). Local to cluster: the store is authoritative, nothing
 * carries. Cluster to local: the day's use over all hosts, as last synced. */
static void carry_key_state(struct rl_global *neu, struct rl_global *old, uint64_t now_ns, int64_t now_unix)
{
    int64_t today = rl_utc_day(now_unix);
    if (!neu->cluster && !old->cluster)
        rl_global_inherit(neu, old, now_ns, now_unix);
    else if (neu->cluster && old->cluster)
        admission_move_stock(neu, old, today, NULL);
    else if (!neu->cluster) {
        rl_quota_restore(neu, atomic_load_explicit(&old->shared_daily_used, memory_order_relaxed), today);
        rl_spend_restore(neu, atomic_load_explicit(&old->shared_spend_used, memory_order_relaxed), today);
    }
}

void admission_move_stock(struct rl_global *neu, struct rl_global *old, int64_t today,
                          int64_t left[RL_DIMS])
{
    for (int d = 0; d < RL_DIMS; d++) {
        if (left)
            left[d] = 0;
        if (!rl_has_dim(old, (enum rl_dim)d))
            continue;
        int64_t level = rl_stock_drain(old, (enum rl_dim)d, today);
        /* a lower limit than before holds less: without `left` the rest is
         * stranded in the store until it refills (or midnight), on the strict side */
        int64_t moved = 0;
        if (level > 0)
            moved = rl_stock_add(neu, (enum rl_dim)d, level, today);
        else if (level < 0 && rl_has_dim(neu, (enum rl_dim)d))
            moved = -rl_stock_charge(neu, (enum rl_dim)d, -level, today);
        if (left)
            left[d] = level - moved;
    }
    rl_shared_publish(neu, atomic_load_explicit(&old->shared_req, memory_order_relaxed),
                      atomic_load_explicit(&old->shared_tok, memory_order_relaxed),
                      atomic_load_explicit(&old->shared_daily_used, memory_order_relaxed));
    rl_shared_publish_spend(neu, atomic_load_explicit(&old->shared_spend_used, memory_order_relaxed));
}

int admission_gen_init(struct gen *g, const struct gen *prev, char *err, size_t errlen)
{
    const struct config *cfg = g->cfg;
    unsigned n = keyring_count(cfg->keys.ring);
    if (n == 0)
        return 0;
    /* each shard's block of locals starts on its own cache line: the stride
     * is the fewest locals filling whole lines (which also makes the size a
     * multiple of the alignment, as aligned_alloc requires) */
    unsigned unit = 1;
    while ((unit * sizeof(struct rl_local)) % 64)
        unit++;
    g->rl_stride = (n + unit - 1) / unit * unit;
    g->rl_global = aligned_alloc(64, sizeof(struct rl_global) * n);
    g->rl_local = aligned_alloc(64, sizeof(struct rl_local) * g->rl_stride * g->nshards);
    g->key_metric_slot = calloc(n, sizeof(int));
    if (cfg->cluster.enabled && !(g->rl_touched = calloc((n + 63) / 64, sizeof *g->rl_touched))) {
        snprintf(err, errlen, "%s: out of memory for %u keys", cfg->path, n);
        return -1;
    }
    if (!g->rl_global || !g->rl_local || !g->key_metric_slot) {
        snprintf(err, errlen, "%s: out of memory for %u keys", cfg->path, n);
        return -1;
    }
    for (size_t i = 0; i < (size_t)g->rl_stride * g->nshards; i++)
        rl_local_init(&g->rl_local[i]);
    uint64_t now_ns = clock_mono_ns();
    int64_t now_unix = (int64_t)time(NULL);
    struct key_name_index before;
    if (!name_index_build(&before, prev)) {
        snprintf(err, errlen, "%s: out of memory for %u keys", cfg->path, n);
        return -1;
    }
    for (unsigned k = 0; k < n; k++) {
        const struct key_entry *e = keyring_entry(cfg->keys.ring, k);
        struct rl_limits lim;
        tier_limits(key_tier(cfg, k), &lim);
        struct rl_global *rg = &g->rl_global[k];
        rl_global_init(rg, &lim, g->nshards, now_ns);
        if (cfg->cluster.enabled) {
            rl_global_set_cluster(rg, now_unix);
            rl_global_set_touch(rg, &g->rl_touched[k / 64], k % 64);
        }
        int old = name_index_find(&before, e->name);
        if (old >= 0)
            carry_key_state(rg, &prev->rl_global[old], now_ns, now_unix);
        g->key_metric_slot[k] = metrics_key_slot(e->name);
    }
    free(before.slot);
    return 0;
}

void admission_gen_free(struct gen *g)
{
    free(g->rl_global);
    free(g->rl_local);
    free(g->key_metric_slot);
    free((void *)g->rl_touched);
}

/* ---- who is calling ---- */

static const struct config *req_cfg(const struct conn *c) { return c->req.sg->g->cfg; }

enum auth_result admission_authenticate(struct conn *c, const struct http_request *req)
{
    const struct config *cfg = req_cfg(c);
    c->req.key = -1;
    if (!cfg->keys.ring)
        return cfg->keys.required ? AUTH_INVALID : AUTH_OK;
    struct slice key = { NULL, 0 };
    enum key_presented presented = key_from_request(req, &key);
    if (presented == KEY_CONFLICT)
        return AUTH_CONFLICT;
    if (presented == KEY_PRESENTED) {
        const struct key_entry *e = keyring_lookup(cfg->keys.ring, key.p, key.len);
        if (e) {
            c->req.key = (int32_t)(e - keyring_entry(cfg->keys.ring, 0));
            return AUTH_OK;
        }
    }
    if (!cfg->keys.required)
        return AUTH_OK;
    return presented == KEY_ABSENT ? AUTH_MISSING : AUTH_INVALID;
}

const struct key_entry *admission_caller(const struct conn *c)
{
    return c->req.key >= 0 ? keyring_entry(req_cfg(c)->keys.ring, (unsigned)c->req.key) : NULL;
}

static const struct cfg_tier *caller_tier(const struct conn *c)
{
    return c->req.key >= 0 ? key_tier(req_cfg(c), (unsigned)c->req.key) : NULL;
}

bool admission_model_allowed(const struct conn *c, const char *model, size_t len)
{
    const struct key_entry *e = admission_caller(c);
    return !e || key_entry_allows_model(e, model, len);
}

uint64_t admission_max_tokens_exceeded(const struct conn *c, const struct openai_request *ai)
{
    const struct cfg_tier *t = caller_tier(c);
    if (!t || !t->max_tokens || !ai->has_max_tokens || ai->max_tokens <= t->max_tokens)
        return 0;
    return t->max_tokens;
}

/* ---- limits ---- */

static int64_t unix_now(const struct shard *sh)
{
    return (int64_t)((sh->now_us + sh->realtime_offset_us) / 1000000u);
}

static uint64_t now_ns(const struct shard *sh) { return sh->now_us * 1000u; }

static struct rl_local *caller_local(const struct conn *c)
{
    const struct gen *g = c->req.sg->g;
    return &g->rl_local[(size_t)c->sh->id * g->rl_stride + (unsigned)c->req.key];
}

static uint64_t completion_allowance(const struct conn *c, const struct openai_request *ai)
{
    const struct cfg_tier *t = caller_tier(c);
    return ai->has_max_tokens  ? ai->max_tokens
           : t && t->max_tokens ? t->max_tokens
                                : ADMISSION_DEFAULT_COMPLETION;
}

uint64_t admission_reservation(const struct conn *c, const struct openai_request *ai)
{
    return ai->prompt_tokens_estimate + completion_allowance(c, ai);
}

/* pico-USD to micro-USD, rounded up: a request that cost anything is charged
 * at least one micro-USD, so the cap is never passed by rounding. */
static uint64_t micro_usd_up(uint64_t pusd)
{
    return pusd / COST_PICO_PER_MICRO + (pusd % COST_PICO_PER_MICRO != 0);
}

uint64_t admission_spend_reservation(const struct conn *c, const struct openai_request *ai)
{
    if (!c->req.price_section)
        return 0;
    const struct cfg_model *price = &req_cfg(c)->models[c->req.price_section - 1];
    return micro_usd_up(cost_pico_usd(ai->prompt_tokens_estimate, completion_allowance(c, ai),
                                      price->input_per_mtok, price->output_per_mtok));
}

bool admission_admit(struct conn *c, const struct openai_request *ai, struct rl_verdict *out)
{
    memset(out, 0, sizeof *out);
    c->req.admitted = false;
    if (!caller_tier(c))
        return true;
    uint64_t cost = admission_reservation(c, ai);
    uint64_t spend = admission_spend_reservation(c, ai);
    struct gen *g = c->req.sg->g;
    struct shard *sh = c->sh;
    enum cluster_admission mode = g->cfg->cluster.enabled ? cluster_admission_mode() : CLUSTER_ADMIT_NORMAL;
    c->req.limit_mode = (uint8_t)mode;
    if (mode == CLUSTER_ADMIT_ALLOW)
        return true;    /* unmetered: nothing reserved, nothing to settle */
    if (mode == CLUSTER_ADMIT_DENY) {
        out->limit = RL_UNAVAILABLE;
        out->retry_after_s = 1;
        c->req.limit = RL_UNAVAILABLE;
        mc_add(&sh->m->ratelimited[g->key_metric_slot[c->req.key]][RL_UNAVAILABLE - 1], 1);
        return false;
    }
    if (!rl_admit_priced(&g->rl_global[c->req.key], caller_local(c), cost, spend, now_ns(sh), unix_now(sh),
                         out)) {
        c->req.limit = (uint8_t)out->limit;
        mc_add(&sh->m->ratelimited[g->key_metric_slot[c->req.key]][out->limit - 1], 1);
        return false;
    }
    c->req.ticket = out->ticket;
    c->req.admitted = true;
    return true;
}

const char *admission_limit_label(const struct conn *c)
{
    static const char *const local[] = {
        [RL_NONE] = "redis_down:local", [RL_REQUESTS] = "redis_down:local:requests",
        [RL_TOKENS] = "redis_down:local:tokens", [RL_QUOTA] = "redis_down:local:quota",
        [RL_SPEND] = "redis_down:local:spend",
        [RL_UNAVAILABLE] = "redis_down:deny",
    };
    switch ((enum cluster_admission)c->req.limit_mode) {
    case CLUSTER_ADMIT_LOCAL: return c->req.limit <= RL_UNAVAILABLE ? local[c->req.limit] : NULL;
    case CLUSTER_ADMIT_DENY:  return "redis_down:deny";
    case CLUSTER_ADMIT_ALLOW: return "redis_down:allow";
    default:                  return c->req.limit ? rl_limit_name((enum rl_limit)c->req.limit) : NULL;
    }
}

size_t admission_headers(const struct conn *c, char *buf, size_t cap)
{
    if (!caller_tier(c))
        return 0;
    struct rl_status st;
    rl_status(&c->req.sg->g->rl_global[c->req.key], caller_local(c), now_ns(c->sh), unix_now(c->sh), &st);
    return rl_headers_write(buf, cap, &st);
}

void admission_settle(struct conn *c, uint64_t used_tokens, uint64_t cost_pusd)
{
    if (!c->req.admitted)
        return;
    rl_settle_priced(&c->req.sg->g->rl_global[c->req.key], caller_local(c), &c->req.ticket, used_tokens,
                     micro_usd_up(cost_pusd), now_ns(c->sh), unix_now(c->sh));
    c->req.admitted = false;
}
