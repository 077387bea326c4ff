/* Admission: API keys, model permissions, rate limits and usage settlement. See
 * admission.h. Everything per request here is arithmetic on the shard's own
 * rl_local and, when a lease runs out, one CAS on the key's rl_global. */
#include "core/admission.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/proxy.h"
#include "policy/glob.h"
#include "policy/keys.h"
#include "proto/openai.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/outbuf.h"

enum meter_kind { METER_NONE, METER_JSON, METER_SSE };

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
}

/* The previous generation's keys by NAME: an open-addressing table built once
 * per reload (control plane), so a reload of 100k keys stays linear. */
struct name_index {
    const struct keyring *ring;
    int32_t *slot;          /* key index, -1 empty */
    size_t mask;
};

static bool name_index_build(struct name_index *ix, const struct gen *g)
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

static int name_index_find(const struct name_index *ix, const char *name)
{
    if (!ix->slot)
        return -1;
    for (size_t i = hash_str(name) & ix->mask; ix->slot[i] >= 0; i = (i + 1) & ix->mask)
        if (strcmp(keyring_entry(ix->ring, (unsigned)ix->slot[i])->name, name) == 0)
            return ix->slot[i];
    return -1;
}

int admission_gen_init(struct gen *g, const struct gen *prev, char *err, size_t errlen)
{
    const struct config *cfg = g->cfg;
    unsigned n = keyring_count(cfg->keys.ring);
    if (n == 0)
        return 0;
    /* each shard's block of locals starts on its own cache line */
    unsigned per_line = 64 / sizeof(struct rl_local);
    g->rl_stride = (n + per_line - 1) / per_line * per_line;
    g->rl_global = aligned_alloc(64, sizeof(struct rl_global) * n);
    g->rl_local = aligned_alloc(64, sizeof(struct rl_local) * g->rl_stride * g->nshards);
    g->key_metric_slot = calloc(n, sizeof(int));
    if (!g->rl_global || !g->rl_local || !g->key_metric_slot) {
        snprintf(err, errlen, "%s: out of memory for %u keys", cfg->path, n);
        return -1;
    }
    for (size_t i = 0; i < (size_t)g->rl_stride * g->nshards; i++)
        rl_local_init(&g->rl_local[i]);
    uint64_t now_ns = clock_mono_ns();
    int64_t now_unix = (int64_t)time(NULL);
    struct name_index before;
    if (!name_index_build(&before, prev)) {
        snprintf(err, errlen, "%s: out of memory for %u keys", cfg->path, n);
        return -1;
    }
    for (unsigned k = 0; k < n; k++) {
        const struct key_entry *e = keyring_entry(cfg->keys.ring, k);
        struct rl_limits lim;
        tier_limits(key_tier(cfg, k), &lim);
        rl_global_init(&g->rl_global[k], &lim, g->nshards, now_ns);
        int old = name_index_find(&before, e->name);
        if (old >= 0)
            rl_global_inherit(&g->rl_global[k], &prev->rl_global[old], now_ns, now_unix);
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
}

/* ---- who is calling ---- */

static const struct config *req_cfg(const struct conn *c) { return c->sg->g->cfg; }

enum auth_result admission_authenticate(struct conn *c, const struct http_request *req)
{
    const struct config *cfg = req_cfg(c);
    c->key = -1;
    if (!cfg->keys.ring)
        return cfg->keys.required ? AUTH_INVALID : AUTH_OK;
    struct slice key = { NULL, 0 };
    bool presented = false, usable = false;
    int ia = req->idx[HK_AUTHORIZATION], ix = req->idx[HK_X_API_KEY];
    if (ia >= 0) {
        presented = true;
        usable = key_from_authorization(req->headers[ia].value, &key);
    } else if (ix >= 0) {
        presented = true;
        usable = key_from_x_api_key(req->headers[ix].value, &key);
    }
    if (usable) {
        const struct key_entry *e = keyring_lookup(cfg->keys.ring, key.p, key.len);
        if (e) {
            c->key = (int32_t)(e - keyring_entry(cfg->keys.ring, 0));
            return AUTH_OK;
        }
    }
    if (!cfg->keys.required)
        return AUTH_OK;
    return presented ? AUTH_INVALID : AUTH_MISSING;
}

static const struct key_entry *caller(const struct conn *c)
{
    return c->key >= 0 ? keyring_entry(req_cfg(c)->keys.ring, (unsigned)c->key) : NULL;
}

static const struct cfg_tier *caller_tier(const struct conn *c)
{
    return c->key >= 0 ? key_tier(req_cfg(c), (unsigned)c->key) : NULL;
}

bool admission_model_allowed(const struct conn *c, const char *model, size_t len)
{
    const struct key_entry *e = caller(c);
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
    const struct gen *g = c->sg->g;
    return &g->rl_local[(size_t)c->sh->id * g->rl_stride + (unsigned)c->key];
}

uint64_t admission_reservation(const struct conn *c, const struct openai_request *ai)
{
    const struct cfg_tier *t = caller_tier(c);
    uint64_t completion = ai->has_max_tokens  ? ai->max_tokens
                          : t && t->max_tokens ? t->max_tokens
                                               : ADMISSION_DEFAULT_COMPLETION;
    return ai->prompt_tokens_estimate + completion;
}

bool admission_admit(struct conn *c, const struct openai_request *ai, struct rl_verdict *out)
{
    memset(out, 0, sizeof *out);
    c->admitted = false;
    if (!caller_tier(c))
        return true;
    uint64_t cost = admission_reservation(c, ai);
    struct gen *g = c->sg->g;
    struct shard *sh = c->sh;
    if (!rl_admit(&g->rl_global[c->key], caller_local(c), cost, now_ns(sh), unix_now(sh), out)) {
        c->limit = (uint8_t)out->limit;
        mc_add(&sh->m->ratelimited[g->key_metric_slot[c->key]][out->limit - 1], 1);
        return false;
    }
    c->ticket = out->ticket;
    c->admitted = true;
    return true;
}

size_t admission_headers(const struct conn *c, char *buf, size_t cap)
{
    if (!caller_tier(c))
        return 0;
    struct rl_status st;
    rl_status(&c->sg->g->rl_global[c->key], caller_local(c), now_ns(c->sh), unix_now(c->sh), &st);
    return rl_headers_write(buf, cap, &st);
}

/* ---- usage ---- */

static struct usage_meter *meter_get(struct shard *sh)
{
    struct usage_meter *m = sh->free_meters;
    if (m) {
        sh->free_meters = m->next_free;
        return m;
    }
    return malloc(sizeof *m);   /* the free list grows to the shard's peak of metered responses */
}

static void meter_put(struct shard *sh, struct usage_meter *m)
{
    if (!m)
        return;
    m->next_free = sh->free_meters;
    sh->free_meters = m;
}

void admission_meter_start(struct conn *c, int status)
{
    c->meter = METER_NONE;
    if (!c->ai || status < 200 || status > 299)
        return;
    if (!c->usage)
        c->usage = meter_get(c->sh);
    if (!c->usage) {
        c->tee_failed = true;   /* unmetered: settled at its reservation */
        return;
    }
    if (c->stream) {
        c->meter = METER_SSE;
        sse_init(&c->usage->sse);
    } else {
        c->meter = METER_JSON;
        sse_json_init(&c->usage->json);
    }
}

void admission_meter(struct conn *c, const char *p, size_t n)
{
    if (c->meter == METER_SSE)
        sse_feed(&c->usage->sse, p, n);
    else if (c->meter == METER_JSON)
        sse_json_feed(&c->usage->json, p, n);
}

/* What the request used: the response's usage when it had one. A stream
 * without a usage chunk generated about one token per content event; a 2xx
 * answer without usage (or whose bytes could not all be read) is charged what
 * was reserved; no successful response, nothing generated. */
static void usage_of(struct conn *c, uint64_t *prompt, uint64_t *completion)
{
    *prompt = c->prompt_estimate;
    *completion = 0;
    bool complete = !c->tee_failed;
    uint64_t reserved_completion = c->ticket.tokens > *prompt ? c->ticket.tokens - *prompt : 0;
    if (c->meter == METER_SSE) {
        struct sse_scan *s = &c->usage->sse;
        sse_finish(s);
        if (s->has_usage && complete) {
            *prompt = s->prompt_tokens;
            *completion = s->completion_tokens;
        } else if (s->has_usage || !complete) {
            *completion = reserved_completion;
        } else {
            *completion = s->content_events;
        }
    } else if (c->meter == METER_JSON) {
        uint64_t p, q;
        if (complete && c->resp_done && sse_json_usage(&c->usage->json, &p, &q) == 0) {
            *prompt = p;
            *completion = q;
        } else if (c->admitted) {
            *completion = reserved_completion;
        }
    } else if (!c->resp_started || c->status < 200 || c->status > 299) {
        *prompt = 0;    /* refused, failed or answered by aigw: nothing was generated */
    } else if (c->admitted) {
        *completion = reserved_completion;     /* a 2xx that could not be metered */
    }
}

void admission_settle(struct conn *c)
{
    if (!c->ai)
        return;
    uint64_t prompt, completion;
    usage_of(c, &prompt, &completion);
    c->tokens_in = prompt;
    c->tokens_out = completion;
    c->meter = METER_NONE;
    meter_put(c->sh, c->usage);
    c->usage = NULL;
    struct gen *g = c->sg->g;
    struct shard *sh = c->sh;
    int slot = c->key >= 0 && g->key_metric_slot ? g->key_metric_slot[c->key] : 0;
    mc_add(&sh->m->tokens[slot][TOKENS_PROMPT], prompt);
    mc_add(&sh->m->tokens[slot][TOKENS_COMPLETION], completion);
    if (c->admitted) {
        rl_settle(&g->rl_global[c->key], caller_local(c), &c->ticket, prompt + completion,
                  now_ns(sh), unix_now(sh));
        c->admitted = false;
    }
}

/* ---- GET /v1/models ---- */

#define MODELS_PATH "/v1/models"
#define MODELS_PATH_LEN (sizeof MODELS_PATH - 1)

bool admission_is_models_path(struct slice path)
{
    if (path.len < MODELS_PATH_LEN || memcmp(path.p, MODELS_PATH, MODELS_PATH_LEN) != 0)
        return false;
    return path.len == MODELS_PATH_LEN ||
           (path.len > MODELS_PATH_LEN + 1 && path.p[MODELS_PATH_LEN] == '/');
}

/* Names that go into JSON unescaped: what config model names are in practice. */
static bool plain_name(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == '"' || *s == '\\' || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* Whether some AI route takes the model. */
static bool routed(const struct config *cfg, const char *name, size_t len)
{
    for (unsigned r = 0; r < cfg->nroutes; r++)
        if (cfg->routes[r].kind == ROUTE_AI &&
            (!cfg->routes[r].models || glob_list_match(cfg->routes[r].models, name, len)))
            return true;
    return false;
}

/* Calls fn for each model the caller may see, once each: the literal names in
 * routes' and keys' `models` lists (a glob names no model), that some AI route
 * takes and the caller's key allows. */
static void each_model(const struct conn *c, void (*fn)(void *, const char *), void *ctx)
{
    const struct config *cfg = req_cfg(c);
    const struct key_entry *self = caller(c);
    /* sources: every route's list, then the caller's own key's list */
    for (unsigned src = 0; src <= cfg->nroutes; src++) {
        const struct glob_list *l = src < cfg->nroutes ? cfg->routes[src].models
                                    : self ? self->models : NULL;
        for (unsigned i = 0; l && i < glob_list_count(l); i++) {
            if (!glob_list_is_literal(l, i))
                continue;
            const char *name = glob_list_pattern(l, i);
            size_t len = strlen(name);
            if (!plain_name(name) || !routed(cfg, name, len) ||
                !admission_model_allowed(c, name, len))
                continue;
            /* first occurrence only */
            bool seen = false;
            for (unsigned s2 = 0; s2 < src && !seen; s2++) {
                const struct glob_list *m = s2 < cfg->nroutes ? cfg->routes[s2].models : NULL;
                for (unsigned j = 0; m && j < glob_list_count(m) && !seen; j++)
                    seen = glob_list_is_literal(m, j) && strcmp(glob_list_pattern(m, j), name) == 0;
            }
            for (unsigned j = 0; j < i && !seen; j++)
                seen = glob_list_is_literal(l, j) && strcmp(glob_list_pattern(l, j), name) == 0;
            if (!seen)
                fn(ctx, name);
        }
    }
}

struct models_out {
    struct outbuf out;
    unsigned count;
    const char *only;       /* retrieve one model: its name */
    size_t only_len;
    bool found;
};

static void put_model(struct models_out *o, const char *name)
{
    static const char a[] = "{\"id\":\"";
    static const char b[] = "\",\"object\":\"model\",\"created\":0,\"owned_by\":\"aigw\"}";
    outbuf_put(&o->out, a, sizeof a - 1);
    outbuf_str(&o->out, name);
    outbuf_put(&o->out, b, sizeof b - 1);
}

static void list_model(void *ctx, const char *name)
{
    struct models_out *o = ctx;
    if (o->only) {
        if (strlen(name) == o->only_len && memcmp(name, o->only, o->only_len) == 0) {
            o->found = true;
            put_model(o, name);
        }
        return;
    }
    if (o->count++)
        OUTBUF_LIT(&o->out, ",");
    put_model(o, name);
}

ssize_t admission_models_body(const struct conn *c, struct slice path, char *out, size_t cap)
{
    struct models_out o = { outbuf_make(out, cap), 0, NULL, 0, false };
    if (path.len > MODELS_PATH_LEN) {
        o.only = path.p + MODELS_PATH_LEN + 1;
        o.only_len = path.len - MODELS_PATH_LEN - 1;
        each_model(c, list_model, &o);
        if (!o.found)
            return -1;
    } else {
        static const char head[] = "{\"object\":\"list\",\"data\":[";
        outbuf_put(&o.out, head, sizeof head - 1);
        each_model(c, list_model, &o);
        OUTBUF_LIT(&o.out, "]}");
    }
    return (ssize_t)o.out.len;
}
