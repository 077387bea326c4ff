#include "core/req_trace.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "core/admission.h"
#include "core/buf.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/shard.h"
#include "policy/keys.h"
#include "proto/http1.h"
#include "trace/exporter.h"
#include "trace/sampling.h"
#include "util/outbuf.h"

void req_trace_begin(struct conn *c, const struct http_request *req)
{
    struct req_trace *t = &c->req.trace;
    struct trace_shard *ts = trace_shard_of(c->sh->id);
    struct trace_parent parent;
    enum trace_parent_state state = TRACE_NO_PARENT;
    int i = req->idx[HK_TRACEPARENT];
    if (i >= 0 && traceparent_parse(req->headers[i].value.p, req->headers[i].value.len, &parent))
        state = parent.flags & TRACE_FLAG_SAMPLED ? TRACE_PARENT_SAMPLED : TRACE_PARENT_UNSAMPLED;
    uint64_t random = state == TRACE_NO_PARENT ? trace_rng_next(&ts->rng) : 0;
    if (!trace_sample(state, c->req.sg->g->cfg->tracing.sample_millionths, random))
        return;
    t->sampled = true;
    t->max_tokens = -1;
    if (state != TRACE_NO_PARENT) {
        t->has_parent = true;
        memcpy(t->trace_id, parent.trace_id, sizeof t->trace_id);
        memcpy(t->parent_id, parent.span_id, sizeof t->parent_id);
    } else {
        trace_new_id(&ts->rng, t->trace_id, sizeof t->trace_id);
    }
    trace_new_id(&ts->rng, t->server_id, sizeof t->server_id);
    /* made now: a raw route's head is written once, before its first attempt */
    trace_new_id(&ts->rng, t->attempt_id, sizeof t->attempt_id);
    t->attempt_fresh = true;
    traceparent_format(t->header, t->trace_id, t->attempt_id, TRACE_FLAG_SAMPLED);
}

void req_trace_attempt_begin(struct conn *c)
{
    struct req_trace *t = &c->req.trace;
    if (!t->first_attempt_us)
        t->first_attempt_us = c->sh->now_us;
    t->attempt_open = true;
    if (t->attempt_fresh) {
        t->attempt_fresh = false;
        return;
    }
    trace_new_id(&trace_shard_of(c->sh->id)->rng, t->attempt_id, sizeof t->attempt_id);
    traceparent_format(t->header, t->trace_id, t->attempt_id, TRACE_FLAG_SAMPLED);
    /* an AI request's head is written again for each attempt (with the new
     * header); a raw route's is kept, so its traceparent is rewritten in place */
    if (!c->req.ai && c->req.out) {
        static const char name[] = "\r\ntraceparent: ";
        char *at = memmem(c->req.out->data, c->req.out->len, name, sizeof name - 1);
        if (at && (size_t)(at - c->req.out->data) + sizeof name - 1 + TRACEPARENT_LEN <= c->req.out->len)
            memcpy(at + sizeof name - 1, t->header, TRACEPARENT_LEN);
    }
}

static enum gen_ai_op operation_of(const char *path, size_t n)
{
    static const struct { const char *suffix; enum gen_ai_op op; } ops[] = {
        { "/chat/completions", GEN_AI_CHAT },
        { "/completions", GEN_AI_TEXT_COMPLETION },
        { "/embeddings", GEN_AI_EMBEDDINGS },
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        size_t k = strlen(ops[i].suffix);
        if (n >= k && memcmp(path + n - k, ops[i].suffix, k) == 0)
            return ops[i].op;
    }
    return GEN_AI_NONE;
}

static uint64_t unix_ns(const struct conn *c, uint64_t mono_us)
{
    return (mono_us + c->sh->realtime_offset_us) * 1000u;
}

/* What the SERVER span and attempt spans share: ids, name, HTTP and GenAI basics. */
static void fill_common(const struct conn *c, struct span_record *s)
{
    const struct request *rq = &c->req;
    const struct config *cfg = rq->sg->g->cfg;
    memset(s, 0, sizeof *s);
    memcpy(s->trace_id, rq->trace.trace_id, sizeof s->trace_id);
    s->max_tokens = s->input_tokens = s->output_tokens = s->queue_wait_ms = s->retries = SPAN_NO_VALUE;
    size_t plen = rq->target_len;
    const char *q = memchr(rq->target, '?', plen);
    if (q)
        plen = (size_t)(q - rq->target);
    span_copy(s->method, sizeof s->method, rq->method, strlen(rq->method));
    span_copy(s->path, sizeof s->path, rq->target, plen);
    /* the name stays low in cardinality: the route's path when one matched */
    const struct cfg_route *route = rq->route >= 0 ? &cfg->routes[rq->route] : NULL;
    const char *npath = route ? route->path : s->path;
    struct outbuf name = outbuf_make(s->name, sizeof s->name - 1);
    outbuf_str(&name, rq->method);
    outbuf_char(&name, ' ');
    outbuf_str(&name, npath);
    if (route && route->prefix)
        outbuf_char(&name, '*');
    s->name[name.len < name.cap ? name.len : name.cap] = '\0';
    if (route)
        span_copy(s->route, sizeof s->route, route->name, strlen(route->name));
    if (rq->ai) {
        s->gen_ai_op = (uint8_t)operation_of(s->path, strlen(s->path));
        span_copy(s->model, sizeof s->model, rq->model, rq->model_len);
    }
    if (c->at.backend >= 0) {
        const char *pool = rq->sg->g->backend_pool[c->at.backend];
        span_copy(s->pool, sizeof s->pool, pool, strlen(pool));
        const char *addr = rq->sg->g->backend_cfg[c->at.backend]->addr.text;
        span_copy(s->backend, sizeof s->backend, addr, strlen(addr));
    }
}

static void push_attempt(struct conn *c, const char *why)
{
    struct req_trace *t = &c->req.trace;
    t->attempt_open = false;
    struct span_record *s = span_ring_reserve(trace_shard_of(c->sh->id)->ring);
    if (!s)
        return;
    fill_common(c, s);
    s->kind = SPAN_CLIENT;
    memcpy(s->span_id, t->attempt_id, sizeof s->span_id);
    memcpy(s->parent_id, t->server_id, sizeof s->parent_id);
    s->has_parent = true;
    s->start_unix_ns = unix_ns(c, c->at.start_us);
    s->end_unix_ns = unix_ns(c, c->sh->now_us);
    if (c->at.backend >= 0) {
        const struct cfg_addr *a = &c->req.sg->g->backend_cfg[c->at.backend]->addr;
        const char *colon = strrchr(a->text, ':');
        size_t hlen = colon ? (size_t)(colon - a->text) : strlen(a->text);
        const char *host = a->text;
        if (hlen >= 2 && host[0] == '[') {
            host++;
            hlen -= 2;
        }
        span_copy(s->server_address, sizeof s->server_address, host, hlen);
        s->server_port = a->sa.ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port)
                                                     : ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
    }
    if (why) {
        s->error = true;
        span_copy(s->error_text, sizeof s->error_text, why, strlen(why));
    } else if (c->at.first_byte_us) {
        s->status = c->req.status;
        s->error = c->req.status >= 500;
    } else {
        s->error = true;    /* ended without the backend's answer */
        const char *e = c->req.error ? c->req.error : "no response";
        span_copy(s->error_text, sizeof s->error_text, e, strlen(e));
    }
    span_ring_commit(trace_shard_of(c->sh->id)->ring);
}

void req_trace_attempt_failed(struct conn *c, const char *why)
{
    if (c->req.trace.attempt_open)
        push_attempt(c, why ? why : "failed");
}

void req_trace_finish(struct conn *c)
{
    struct req_trace *t = &c->req.trace;
    const struct request *rq = &c->req;
    if (t->attempt_open)
        push_attempt(c, NULL);
    struct span_ring *ring = trace_shard_of(c->sh->id)->ring;
    struct span_record *s = span_ring_reserve(ring);
    if (!s)
        return;
    fill_common(c, s);
    s->kind = SPAN_SERVER;
    memcpy(s->span_id, t->server_id, sizeof s->span_id);
    memcpy(s->parent_id, t->parent_id, sizeof s->parent_id);
    s->has_parent = t->has_parent;
    s->start_unix_ns = unix_ns(c, rq->start_us);
    s->end_unix_ns = unix_ns(c, c->sh->now_us);
    s->status = rq->status;
    s->error = rq->status >= 500;
    if (s->error && rq->error)
        span_copy(s->error_text, sizeof s->error_text, rq->error, strlen(rq->error));
    span_copy(s->peer, sizeof s->peer, c->client, c->client_len);
    if (rq->ai) {
        if (t->max_tokens >= 0)
            s->max_tokens = t->max_tokens;
        if (rq->status >= 200 && rq->status < 300) {
            s->input_tokens = (int64_t)rq->tokens_in;
            s->output_tokens = (int64_t)rq->tokens_out;
        }
    }
    const struct config *cfg = rq->sg->g->cfg;
    if (rq->key >= 0) {
        const char *name = keyring_entry(cfg->keys.ring, (unsigned)rq->key)->name;
        span_copy(s->key, sizeof s->key, name, strlen(name));
    }
    if (t->first_attempt_us) {
        s->queue_wait_ms = rq->queued_us && rq->queued_us < t->first_attempt_us
                               ? (int64_t)((t->first_attempt_us - rq->queued_us) / 1000u) : 0;
        s->retries = rq->attempts;
    }
    const char *limit = admission_limit_label(c);
    if (limit)
        span_copy(s->limit, sizeof s->limit, limit, strlen(limit));
    span_ring_commit(ring);
}
