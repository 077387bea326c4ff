/* Usage metering and settlement. See usage.h. Per request: a meter from the
 * shard's free list, the scanner's state machine over the body bytes, and at
 * the end a few additions; no lock, no syscall (the clamp's log line aside,
 * at most once a minute per shard). */
#include "core/usage.h"

#include <stdlib.h>

#include "core/admission.h"
#include "core/log.h"
#include "core/conn.h"
#include "core/cost.h"
#include "core/gen.h"
#include "core/relay.h"
#include "core/shard.h"
#include "proto/sse.h"
#include "proto/usage_json.h"

enum meter_kind { METER_NONE, METER_JSON, METER_SSE };

/* The scanner's state for one response. */
struct usage_meter {
    struct usage_meter *next_free;
    union {
        struct sse_scan sse;
        struct usage_json json;
    };
};

#define CLAMP_LOG_INTERVAL_MS 60000

/* ---- what a request can have used ---- */

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

struct usage_bound usage_bound_of(uint64_t body_bytes, bool has_max_tokens, uint64_t max_tokens)
{
    struct usage_bound b = { add_sat(body_bytes, USAGE_PROMPT_SLACK), USAGE_COMPLETION_MAX };
    if (has_max_tokens && max_tokens <= (USAGE_COMPLETION_MAX - USAGE_COMPLETION_SLACK) / USAGE_CHOICES_MAX)
        b.completion = max_tokens * USAGE_CHOICES_MAX + USAGE_COMPLETION_SLACK;
    return b;
}

bool usage_clamp(const struct usage_bound *b, uint64_t *prompt, uint64_t *completion)
{
    bool over = *prompt > b->prompt || *completion > b->completion;
    if (*prompt > b->prompt)
        *prompt = b->prompt;
    if (*completion > b->completion)
        *completion = b->completion;
    return over;
}

/* ---- the meter ---- */

static struct usage_meter *meter_get(struct shard *sh)
{
    struct usage_meter *m = sh->usage.free_meters;
    if (m) {
        sh->usage.free_meters = m->next_free;
        return m;
    }
    return malloc(sizeof *m);   /* the free list grows to the shard's peak of metered responses */
}

static void meter_put(struct shard *sh, struct usage_meter *m)
{
    if (!m)
        return;
    m->next_free = sh->usage.free_meters;
    sh->usage.free_meters = m;
}

void usage_meter_start(struct conn *c, int status)
{
    c->relay.meter = METER_NONE;
    if (!c->req.ai || status < 200 || status > 299)
        return;
    if (!c->relay.usage)
        c->relay.usage = meter_get(c->sh);
    if (!c->relay.usage) {
        c->relay.tee_failed = true;   /* unmetered: settled at its reservation */
        return;
    }
    if (c->req.stream) {
        c->relay.meter = METER_SSE;
        sse_init(&c->relay.usage->sse);
    } else {
        c->relay.meter = METER_JSON;
        usage_json_init(&c->relay.usage->json);
    }
}

void usage_meter_feed(struct conn *c, const char *p, size_t n)
{
    if (c->relay.meter == METER_SSE) {
        struct sse_scan *s = &c->relay.usage->sse;
        sse_feed(s, p, n);
        if (s->content_events != c->req.token_events) {
            /* the bytes go on to the client in this loop turn */
            if (!c->req.token_events)
                c->req.first_token_us = c->sh->now_us;
            c->req.last_token_us = c->sh->now_us;
            c->req.token_events = s->content_events;
        }
    } else if (c->relay.meter == METER_JSON)
        usage_json_feed(&c->relay.usage->json, p, n);
}

/* ---- settlement ---- */

/* What the request used: the response's usage when it had a readable one. A
 * stream without a usage chunk generated about one token per content event;
 * a 2xx answer whose usage is missing or unreadable (or whose bytes could not
 * all be read) is charged what was reserved; no successful response, nothing
 * generated. Returns true when the counts came from the backend. */
static bool usage_of(struct conn *c, uint64_t *prompt, uint64_t *completion)
{
    *prompt = c->req.prompt_estimate;
    *completion = 0;
    bool complete = !c->relay.tee_failed;
    uint64_t reserved_completion = c->req.ticket.tokens > *prompt ? c->req.ticket.tokens - *prompt : 0;
    if (c->relay.meter == METER_SSE) {
        struct sse_scan *s = &c->relay.usage->sse;
        sse_finish(s);
        if (s->has_usage && !s->usage_unreadable && complete) {
            *prompt = s->prompt_tokens;
            *completion = s->completion_tokens;
            return true;
        }
        if (s->has_usage || !complete) {
            *completion = reserved_completion;
            return false;
        }
        *completion = s->content_events;
        return true;
    }
    if (c->relay.meter == METER_JSON) {
        uint64_t p, q;
        if (complete && c->relay.resp_done && usage_json_usage(&c->relay.usage->json, &p, &q) == USAGE_FOUND) {
            *prompt = p;
            *completion = q;
            return true;
        }
        if (c->req.admitted)
            *completion = reserved_completion;
    } else if (!c->req.resp_started || c->req.status < 200 || c->req.status > 299) {
        *prompt = 0;    /* refused, failed or answered by aigw: nothing was generated */
    } else if (c->req.admitted) {
        *completion = reserved_completion;     /* a 2xx that could not be metered */
    }
    return false;
}

/* A backend's usage was clamped: one line now, then at most one a minute per
 * shard, saying how many more there were. */
static void log_clamp(struct conn *c, uint64_t prompt, uint64_t completion)
{
    struct shard *sh = c->sh;
    if (sh->now_ms < sh->usage.next_clamp_log_ms) {
        sh->usage.clamps_unlogged++;
        return;
    }
    const struct gen *g = c->req.sg->g;
    log_warn("backend %s (pool %s) reported usage of %llu prompt and %llu completion tokens "
             "for a request that can have used at most %llu and %llu: counted as that "
             "(%u more such answers on shard %u since the last line; next line in a minute at most)",
             c->at.backend >= 0 ? g->backend_cfg[c->at.backend]->addr.text : "?",
             c->at.backend >= 0 ? g->backend_pool[c->at.backend] : "?",
             (unsigned long long)prompt, (unsigned long long)completion,
             (unsigned long long)c->req.usage_bound.prompt, (unsigned long long)c->req.usage_bound.completion,
             sh->usage.clamps_unlogged, sh->id);
    sh->usage.clamps_unlogged = 0;
    sh->usage.next_clamp_log_ms = sh->now_ms + CLAMP_LOG_INTERVAL_MS;
}

void usage_settle(struct conn *c)
{
    if (!c->req.ai)
        return;
    uint64_t prompt, completion;
    if (usage_of(c, &prompt, &completion)) {
        uint64_t reported_prompt = prompt, reported_completion = completion;
        if (usage_clamp(&c->req.usage_bound, &prompt, &completion))
            log_clamp(c, reported_prompt, reported_completion);
    }
    c->req.tokens_in = prompt;
    c->req.tokens_out = completion;
    c->relay.meter = METER_NONE;
    meter_put(c->sh, c->relay.usage);
    c->relay.usage = NULL;
    struct gen *g = c->req.sg->g;
    struct shard *sh = c->sh;
    int slot = c->req.key >= 0 && g->key_metric_slot ? g->key_metric_slot[c->req.key] : 0;
    mc_add(&sh->m->tokens[slot][TOKENS_PROMPT], prompt);
    mc_add(&sh->m->tokens[slot][TOKENS_COMPLETION], completion);
    if (c->req.price_section) {
        const struct cfg_model *price = &g->cfg->models[c->req.price_section - 1];
        c->req.cost_pusd = cost_pico_usd(prompt, completion, price->input_per_mtok, price->output_per_mtok);
        metrics_add_cost(sh->m, slot, c->req.model_slot, c->req.cost_pusd);
    }
    admission_settle(c, prompt + completion, c->req.cost_pusd);
}
