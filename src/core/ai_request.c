/* AI routes (kind = ai): the request body is read whole (de-chunked, up to
 * max_body), checked as an OpenAI request, the route chosen by its model, the
 * caller admitted against its key's permissions and limits (admission.c), and
 * head plus body forwarded in one send, with Content-Length. */
#include "core/ai_request.h"
#include "core/buf.h"
#include "core/conn.h"
#include "core/dispatch.h"
#include "core/gen.h"
#include "core/model_label.h"
#include "core/shard.h"
#include "policy/route.h"

#include <stdio.h>
#include <string.h>

#include "core/admission.h"
#include "core/usage.h"
#include "proto/openai.h"

#define FORWARD_HEAD_EXTRA 1024

struct body_sink {
    struct conn *c;
    bool overflow;
};

/* Appends decoded body bytes to c->req.body, growing it up to the head + max_body. */
static bool body_append(struct conn *c, const char *p, size_t n)
{
    struct xbuf *b = c->req.body;
    size_t limit = (size_t)c->req.body_head_len + conn_config(c)->server.max_body;
    if ((size_t)b->len + n > limit)
        return false;
    if ((size_t)b->len + n > b->cap) {
        size_t want = (size_t)b->cap * 2;
        if (want < (size_t)b->len + n)
            want = (size_t)b->len + n;
        if (want > limit)
            want = limit;
        struct xbuf *big = xbuf_get_cap(c->sh, (uint32_t)want);
        if (!big)
            return false;
        memcpy(big->data, b->data, b->len);
        big->len = b->len;
        xbuf_put(c->sh, b);     /* no operation ever reads the body buffer */
        c->req.body = b = big;
    }
    memcpy(b->data + b->len, p, n);
    b->len += (uint32_t)n;
    return true;
}

static void body_sink_data(void *ctx, const char *p, size_t n)
{
    struct body_sink *s = ctx;
    if (!s->overflow && !body_append(s->c, p, n))
        s->overflow = true;
}

/* Takes the request body's bytes from p[0..n) into c->req.body (de-chunked).
 * Returns how many of them belonged to the body, or -1 with the error sent. */
ssize_t ai_request_collect(struct conn *c, const char *p, size_t n)
{
    if (n == 0 || conn_request_body_complete(c))
        return 0;
    size_t k;
    bool overflow = false;
    if (c->req.body_kind == BODY_LENGTH) {
        k = n < c->req.body_left ? n : (size_t)c->req.body_left;
        overflow = !body_append(c, p, k);
        c->req.body_left -= k;
    } else {
        const char *why = NULL;
        struct body_sink sink = { c, false };
        ssize_t r = chunked_scan(&c->req.chunked, p, n, body_sink_data, &sink, &why);
        if (r < 0) {
            c->req.keep_alive = false;
            conn_send_error(c, 400, "invalid_request_error", NULL, why);
            return -1;
        }
        k = (size_t)r;
        overflow = sink.overflow;
    }
    if (overflow) {
        c->req.keep_alive = false;
        conn_send_error(c, 413, "invalid_request_error", NULL, "request body too large");
        return -1;
    }
    c->req.body_total += k;
    c->req.bytes_in += k;
    return (ssize_t)k;
}

/* The whole body is in: check it, choose the route by its model, forward it. */
void ai_request_ready(struct conn *c)
{
    struct shard *sh = c->sh;
    const struct config *cfg = c->req.sg->g->cfg;
    struct http_request *req = &sh->scratch_req;
    const char *why = NULL;
    /* the head was parsed once already; it is kept raw in front of the body */
    if (http_parse_request(c->req.body->data, c->req.body_head_len, cfg->server.max_header, req, &why) != HTTP_OK) {
        conn_send_error(c, 400, "invalid_request_error", NULL, "malformed request");
        return;
    }
    const char *body = c->req.body->data + c->req.body_head_len;
    size_t blen = c->req.body->len - c->req.body_head_len;
    struct openai_request ai;
    if (openai_parse_request(body, blen, &ai, &why) != OPENAI_OK) {
        c->req.error = "invalid JSON body";     /* why lives in ai: not for the log */
        conn_send_error(c, 400, "invalid_request_error", NULL, why);
        return;
    }
    c->req.ai = true;
    c->req.stream = ai.stream;
    c->req.prompt_estimate = ai.prompt_tokens_estimate;
    c->req.trace.max_tokens = ai.has_max_tokens ? (int64_t)ai.max_tokens : -1;
    c->req.usage_bound = usage_bound_of(blen, ai.has_max_tokens, ai.max_tokens);
    c->req.prefix_blocks = ai.prefix_blocks;
    memcpy(c->req.prefix_block, ai.prefix_block, ai.prefix_blocks * sizeof ai.prefix_block[0]);
    char model[OPENAI_MAX_MODEL_LEN + 1];
    size_t mlen = ai.model.len < sizeof model ? ai.model.len : sizeof model - 1;
    if (ai.model_escaped)
        mlen = openai_unescape(ai.model, model, sizeof model);
    else
        memcpy(model, ai.model.p, mlen);
    model[mlen] = 0;
    c->req.model_len = (uint8_t)(mlen < sizeof c->req.model ? mlen : sizeof c->req.model);
    memcpy(c->req.model, model, c->req.model_len);
    const struct gen *g = c->req.sg->g;
    int label = model_labels_match(&g->model_labels, model, mlen);
    c->req.model_slot = label >= 0 ? g->model_metric_slot[label] : 0;
    c->req.price_section = (uint32_t)(model_labels_section(&g->model_labels, label, model, mlen) + 1);
    char msg[400];
    int route = route_lookup_model(c->req.sg->g->routes, req->path.p, req->path.len, model, mlen);
    if (route < 0) {
        snprintf(msg, sizeof msg, "The model `%s` does not exist or is not served here", model);
        c->req.error = "model not found";
        c->req.route = -1;      /* the path matched a route, but no route serves this model */
        conn_send_error(c, 404, "invalid_request_error", "model_not_found", msg);
        return;
    }
    c->req.route = route;
    if (!admission_model_allowed(c, model, mlen)) {
        snprintf(msg, sizeof msg, "This API key may not use the model `%s`", model);
        c->req.error = "model not allowed";
        conn_send_error(c, 403, "permission_error", "model_not_allowed", msg);
        return;
    }
    uint64_t cap = admission_max_tokens_exceeded(c, &ai);
    if (cap) {
        snprintf(msg, sizeof msg, "max_tokens is %llu, more than the %llu this API key may ask for",
                 (unsigned long long)ai.max_tokens, (unsigned long long)cap);
        c->req.error = "max_tokens over the tier's cap";
        conn_send_error(c, 400, "invalid_request_error", "max_tokens_too_large", msg);
        return;
    }
    struct rl_verdict verdict;
    if (!admission_admit(c, &ai, &verdict)) {
        const char *which = rl_limit_name(verdict.limit);
        if (verdict.too_large && verdict.limit == RL_SPEND)
            snprintf(msg, sizeof msg, "Request too expensive: at worst it costs %llu micro-USD (prompt "
                     "estimate %llu + max_tokens %llu tokens at the model's prices), more than this API "
                     "key's daily spend cap can ever allow; ask for fewer max_tokens",
                     (unsigned long long)admission_spend_reservation(c, &ai),
                     (unsigned long long)ai.prompt_tokens_estimate,
                     (unsigned long long)(admission_reservation(c, &ai) - ai.prompt_tokens_estimate));
        else if (verdict.too_large)
            /* no Retry-After: waiting never admits it */
            snprintf(msg, sizeof msg, "Request too large: it reserves %llu tokens (prompt estimate "
                     "%llu + max_tokens %llu), more than this API key's %s limit can ever allow; "
                     "ask for fewer max_tokens",
                     (unsigned long long)admission_reservation(c, &ai),
                     (unsigned long long)ai.prompt_tokens_estimate,
                     (unsigned long long)(admission_reservation(c, &ai) - ai.prompt_tokens_estimate),
                     which);
        else if (verdict.limit == RL_UNAVAILABLE)
            snprintf(msg, sizeof msg, "This API key's limits are shared across gateways and cannot be "
                     "checked right now (the limits store is unreachable); retry in %u s",
                     verdict.retry_after_s);
        else
            snprintf(msg, sizeof msg, "Rate limit reached for %s of this API key; retry in %u s",
                     which, verdict.retry_after_s);
        c->req.retry_after_s = verdict.too_large ? 0 : verdict.retry_after_s ? verdict.retry_after_s : 1;
        c->req.error = "rate limited";
        conn_send_error(c, 429, "rate_limit_exceeded", which, msg);
        return;
    }
    conn_choose_pool(c);
    c->req.body_kind = BODY_LENGTH;
    c->req.body_left = 0;
    c->req.in_body = 0;
    c->req.body_in_first_send = true;
    c->state = CS_UPSTREAM;
    /* c->req.body stays until the backend answers: the forwarded request is written
     * from it for each backend tried, which may be in another pool */
    dispatch_request(c);
}

bool ai_request_build_out(struct conn *c)
{
    struct shard *sh = c->sh;
    const struct config *cfg = c->req.sg->g->cfg;
    struct http_request req;
    const char *why = NULL;
    if (http_parse_request(c->req.body->data, c->req.body_head_len, cfg->server.max_header, &req, &why) != HTTP_OK) {
        conn_send_error(c, 400, "invalid_request_error", NULL, "malformed request");
        return false;
    }
    const char *body = c->req.body->data + c->req.body_head_len;
    size_t blen = c->req.body->len - c->req.body_head_len;
    /* the forwarded head is the client's plus what a proxy adds (forwarding
     * headers, framing, upstream credentials): within FORWARD_HEAD_EXTRA */
    const struct cfg_pool *pool = &cfg->pools[c->req.pool];
    size_t head_room = c->req.body_head_len + FORWARD_HEAD_EXTRA + strlen(pool->upstream_auth);
    conn_drop_buf(c, c->req.out);
    c->req.out = NULL;
    struct xbuf *out = xbuf_get_cap(sh, (uint32_t)(head_room + blen));
    if (!out) {
        conn_send_error(c, 503, "server_error", "no_capacity", "out of memory");
        return false;
    }
    /* the body goes on de-chunked, with its length */
    req.body = BODY_LENGTH;
    req.content_length = blen;
    struct http_forward fwd = conn_forward_info(c);
    size_t hlen = http_write_upstream_head(out->data, out->cap - blen, &req, &fwd);
    if (hlen == 0) {
        xbuf_put(sh, out);
        conn_send_error(c, 431, "invalid_request_error", NULL, "request head too large to forward");
        return false;
    }
    memcpy(out->data + hlen, body, blen);
    out->len = (uint32_t)(hlen + blen);
    out->off = 0;
    c->req.out = out;
    return true;
}

/* An AI route with a body: keep the raw head, then collect the body. */
size_t ai_request_start(struct conn *c, const char *src, size_t n, const struct http_request *req)
{
    struct shard *sh = c->sh;
    const struct config *cfg = c->req.sg->g->cfg;
    size_t head = req->head_len;
    c->req.ai = true;   /* from here every answer carries the caller's x-ratelimit-* */
    int ct = req->idx[HK_CONTENT_TYPE];
    if (ct < 0 || !openai_content_type_is_json(req->headers[ct].value)) {
        c->req.keep_alive = false;      /* the body stays unread */
        conn_send_error(c, 415, "invalid_request_error", NULL, "Content-Type must be application/json");
        return n;
    }
    if (req->body == BODY_LENGTH && req->content_length > cfg->server.max_body) {
        c->req.keep_alive = false;
        conn_send_error(c, 413, "invalid_request_error", NULL, "request body too large");
        return n;
    }
    size_t want = head + (req->body == BODY_LENGTH ? (size_t)req->content_length : 0);
    c->req.body = xbuf_get_cap(sh, (uint32_t)(want > sh->xbuf_size ? want : sh->xbuf_size));
    if (!c->req.body) {
        c->req.keep_alive = false;
        conn_send_error(c, 503, "server_error", "no_capacity", "out of memory");
        return n;
    }
    memcpy(c->req.body->data, src, head);
    c->req.body->len = (uint32_t)head;
    c->req.body_head_len = (uint32_t)head;
    c->state = CS_BODY;
    c->last_activity_ms = sh->now_ms;
    conn_set_timer(c, T_IDLE, conn_idle_ms(c));
    ssize_t used = ai_request_collect(c, src + head, n - head);
    if (used < 0)
        return n;
    if (conn_request_body_complete(c)) {
        ai_request_ready(c);
    } else if (c->req.expect_continue && used == 0) {
        conn_send_continue(c);
    }
    return head + (size_t)used;
}

