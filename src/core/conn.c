/* Client connections: receiving and parsing requests, authenticating the caller,
 * choosing the route and the backend, forwarding the request head and body
 * upstream (streamed on raw routes), receiving the response head, answering
 * errors and GET /v1/models, keep-alive and pipelining, timeouts, and teardown.
 * AI routes' bodies are read and checked in ai_request.c; the response body relay
 * is in relay.c; upstream connections in upstream.c. */
#include "core/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/accesslog.h"
#include "core/admission.h"
#include "core/log.h"
#include "policy/keys.h"
#include "proto/openai.h"

static void process_input(struct conn *c);
static void request_finish(struct conn *c);
static void pump_request_body(struct conn *c);

/* ---- small helpers ---- */


static void arm_timer(struct conn *c, uint8_t phase, uint64_t ms)
{
    c->tphase = phase;
    timer_arm(&c->sh->timers, &c->timer, c->sh->now_ms + ms);
}

void conn_set_timer(struct conn *c, enum timer_phase phase, uint64_t ms)
{
    arm_timer(c, (uint8_t)phase, ms);
}

const struct cfg_timeouts *conn_timeouts(const struct conn *c)
{
    return &conn_config(c)->timeouts;
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RECV_BUF_GROUP;
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_CLIENT_RECV));
    c->recv_armed = true;
    c->ops++;
}

/* Stops reading from a client whose queued input is full; resumed by resume_recv. */
static void pause_recv(struct conn *c)
{
    if (c->recv_paused)
        return;
    c->recv_paused = true;
    if (c->recv_armed) {
        struct io_uring_sqe *sqe = shard_sqe(c->sh);
        io_uring_prep_cancel64(sqe, ud_make(c, OP_CLIENT_RECV), 0);
        io_uring_sqe_set_data64(sqe, 0);
    }
}

static void resume_recv(struct conn *c)
{
    if (!c->recv_paused)
        return;
    c->recv_paused = false;
    if (!c->recv_armed && c->state != CS_CLOSING)
        arm_recv(c);
}

/* Sends out[off..len) to the client. Exactly one client send is in flight at a time. */
static void client_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_CLIENT_SEND));
    c->send_inflight = true;
    c->send_buf = owner;
    c->ops++;
}

/* Lets go of a buffer. One that an SQE in flight still reads or fills is handed to
 * that operation and freed when it completes: never reused under the kernel. */
/* Our own "100 Continue": the client waits for it before sending the body. */
void conn_send_continue(struct conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    client_send(c, NULL, cont, sizeof cont - 1);
    c->sending_continue = true;
}

void conn_drop_buf(struct conn *c, struct xbuf *b)
{
    if (!b)
        return;
    if (c->send_buf == b) {
        c->send_buf_orphan = true;
        return;
    }
    if (c->up && c->up->io_buf == b) {
        c->up->io_buf_orphan = true;
        return;
    }
    xbuf_put(c->sh, b);
}

static void next_request_id(struct conn *c)
{
    /* xorshift128+: ids only need to be unique, not secret */
    uint64_t *s = c->sh->rng, v[2];
    for (int k = 0; k < 2; k++) {
        uint64_t s1 = s[0];
        const uint64_t s0 = s[1];
        s[0] = s0;
        s1 ^= s1 << 23;
        s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
        v[k] = s[1] + s0;
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++)
        c->request_id[i] = hex[(v[i / 16] >> ((i % 16) * 4)) & 15];
    c->request_id_len = 32;
}

static bool request_id_acceptable(struct slice v)
{
    if (v.len == 0 || v.len > sizeof(((struct conn *)0)->request_id))
        return false;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char ch = (unsigned char)v.p[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            return false;
    }
    return true;
}

static struct slice request_id_header(struct conn *c, char *buf, size_t cap)
{
    static const char name[] = "x-request-id: ";
    size_t n = sizeof name - 1;
    if (n + c->request_id_len + 2 > cap)
        return (struct slice){ buf, 0 };
    memcpy(buf, name, n);
    memcpy(buf + n, c->request_id, c->request_id_len);
    n += c->request_id_len;
    buf[n++] = '\r';
    buf[n++] = '\n';
    return (struct slice){ buf, n };
}

/* ---- lifecycle ---- */

static void conn_free(struct conn *c)
{
    c->state = CS_FREE;
    c->next = c->sh->free_conns;
    c->sh->free_conns = c;
}

void conn_maybe_free(struct conn *c)
{
    if (c->state != CS_CLOSING || c->ops != 0)
        return;
    /* no splice can use these any more */
    xbuf_put(c->sh, c->ibuf);   /* an inspection read may have used it until now */
    c->ibuf = NULL;
    while (c->pipe_orphan) {
        struct pipe_pair *p = c->pipe_orphan;
        c->pipe_orphan = p->next_free;
        pipe_put(c->sh, p, false);
    }
    if (c->up_fd_orphan >= 0) {
        struct io_uring_sqe *sqe = shard_sqe(c->sh);
        io_uring_prep_close(sqe, c->up_fd_orphan);
        io_uring_sqe_set_data64(sqe, 0);
        c->up_fd_orphan = -1;
    }
    conn_free(c);
}

void conn_accepted(struct shard *sh, int fd)
{
    struct conn *c = sh->free_conns;
    if (c) {
        sh->free_conns = c->next;
    } else {
        c = aligned_alloc(16, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
    }
    memset(c, 0, sizeof *c);
    c->sh = sh;
    c->fd = fd;
    c->up_fd_orphan = -1;
    c->state = CS_IDLE;
    c->route = -1;
    c->backend = -1;
    c->timer.kind = TIMER_CONN;
    c->timer.prev = c->timer.next = NULL;

    /* The peer address, once per connection: multishot accept cannot return one
     * reliably, and it is needed for X-Forwarded-For and the access log. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    c->client_len = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        const void *a = ss.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                                  : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
        if (inet_ntop(ss.ss_family, a, c->client, sizeof c->client))
            c->client_len = (uint8_t)strlen(c->client);
    }

    c->next = sh->live.next;
    c->prev = &sh->live;
    sh->live.next->prev = c;
    sh->live.next = c;
    sh->nconns++;
    mg_add(&sh->m->connections[SIDE_CLIENT], 1);
    arm_recv(c);
    /* a new connection gets client_header to send its first request */
    arm_timer(c, T_HEADER, conn_config(c)->timeouts.client_header_ms);
}

/* Abandons the current request (if any): upstream closed, accounting done. */
static void request_abort(struct conn *c, int status)
{
    if (!c->sg)
        return;
    if (!c->status)
        c->status = (uint16_t)status;
    c->keep_alive = false;
    request_finish(c);
}

void conn_close(struct conn *c)
{
    if (c->state == CS_CLOSING || c->state == CS_FREE)
        return;
    c->state = CS_CLOSING;
    conn_drop_buf(c, c->in);    /* while c->up is attached: a send may read it */
    c->in = NULL;
    /* a client gone mid-request: 499 in logs and metrics, as nginx counts it */
    request_abort(c, 499);
    struct shard *sh = c->sh;
    timer_disarm(&sh->timers, &c->timer);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    sh->nconns--;
    mg_add(&sh->m->connections[SIDE_CLIENT], -1);
    shard_cancel_and_close(sh, c->fd);
    c->fd = -1;
}

void conn_shard_draining(struct conn *c)
{
    if (c->state == CS_IDLE) {
        conn_close(c);
        conn_maybe_free(c);
    } else {
        c->keep_alive = false;
    }
}

/* Closes the request's upstream connection (not reusable: its state is unknown),
 * after handing it the response buffer if its recv may still fill it. */
static void abandon_upstream(struct conn *c)
{
    conn_drop_buf(c, c->rbuf);
    c->rbuf = NULL;
    struct upconn *u = c->up;
    c->up = NULL;
    u->owner = NULL;
    upconn_close(u);
}

/* ---- local responses ---- */

/* The header lines every answer aigw makes carries: x-request-id, the caller's
 * x-ratelimit-* on AI requests, and Retry-After where waiting helps. */
#define LOCAL_EXTRA_MAX (64 + RL_HEADERS_MAX + 32)
static struct slice local_extra(struct conn *c, int status, char *buf)
{
    struct slice ex = request_id_header(c, buf, 64);
    if (c->ai)
        ex.len += admission_headers(c, buf + ex.len, RL_HEADERS_MAX);
    if (status == 503 || (status == 429 && c->retry_after_s))
        ex.len += (size_t)snprintf(buf + ex.len, 32, "retry-after: %u\r\n",
                                   c->retry_after_s ? c->retry_after_s : 1);
    return ex;
}

/* Prepares to answer the current request from aigw itself: gives up the
 * upstream side and decides keep-alive. False when it is too late for a status
 * (the connection is then closed). */
static bool local_answer_begin(struct conn *c, int status, const char *msg)
{
    struct shard *sh = c->sh;
    if (c->resp_started) {
        /* too late for a status: the client sees the stream end early */
        c->error = msg;
        conn_close(c);
        return false;
    }
    if (c->up) {
        conn_drop_buf(c, c->out);   /* the upstream send may still read it */
        c->out = NULL;
        abandon_upstream(c);
    }
    bool body_pending = !(c->req_body == BODY_NONE ||
                          (c->req_body == BODY_LENGTH && c->req_body_left == 0 && c->in_body == 0) ||
                          (c->req_body == BODY_CHUNKED && c->req_chunked.done && c->in_body == 0));
    if (body_pending || sh->draining)
        c->keep_alive = false;
    c->status = (uint16_t)status;
    if (!c->error)
        c->error = msg;
    return true;
}

/* c->out holds the whole answer: send it. */
static void local_answer_send(struct conn *c)
{
    struct shard *sh = c->sh;
    c->state = CS_LOCAL;
    c->resp_started = true;
    c->last_activity_ms = sh->now_ms;
    arm_timer(c, T_IDLE, conn_config(c)->timeouts.idle_ms);
    conn_send_out(c);
}

/* Answers the current request with an OpenAI-shaped error. Closes afterwards unless
 * keep-alive is safe (the request had no body left unread on the connection). */
void conn_send_error(struct conn *c, int status, const char *type, const char *code,
                     const char *msg)
{
    struct shard *sh = c->sh;
    if (!local_answer_begin(c, status, msg))
        return;
    if (!c->out)
        c->out = xbuf_get(sh);
    if (!c->out) {
        conn_close(c);
        return;
    }
    char extra[LOCAL_EXTRA_MAX];
    struct slice ex = local_extra(c, status, extra);
    c->out->off = 0;
    c->out->len = (uint32_t)http_write_error(c->out->data, c->out->cap, status, type, code, msg,
                                             c->keep_alive, ex);
    local_answer_send(c);
}

/* GET /v1/models: the models the caller may use, in OpenAI's list shape. */
static void send_models(struct conn *c, struct slice path)
{
    struct shard *sh = c->sh;
    ssize_t blen = admission_models_body(c, path, NULL, 0);
    if (blen < 0) {
        char msg[300];
        size_t id_len = path.len - sizeof "/v1/models/" + 1;   /* a model path has an id */
        snprintf(msg, sizeof msg, "The model `%.*s` does not exist or you do not have access to it",
                 (int)(id_len > 200 ? 200 : id_len), path.p + path.len - id_len);
        conn_send_error(c, 404, "invalid_request_error", "model_not_found", msg);
        return;
    }
    if (!local_answer_begin(c, 200, NULL))
        return;
    char extra[LOCAL_EXTRA_MAX];
    struct slice ex = local_extra(c, 200, extra);
    c->out = xbuf_get_cap(sh, (uint32_t)((size_t)blen + 256 + ex.len));
    if (!c->out) {
        conn_close(c);
        return;
    }
    size_t hlen = http_write_json_head(c->out->data, c->out->cap, 200, (size_t)blen, c->keep_alive, ex);
    if (hlen == 0) {
        conn_close(c);
        return;
    }
    admission_models_body(c, path, c->out->data + hlen, c->out->cap - hlen);
    c->out->off = 0;
    c->out->len = (uint32_t)(hlen + (size_t)blen);
    if (c->req_method == METHOD_HEAD)
        c->out->len = (uint32_t)hlen;
    local_answer_send(c);
}

/* What admission.c knows of the request starts empty. */
static void reset_admission(struct conn *c)
{
    c->key = -1;
    c->ai = c->stream = c->admitted = c->tee_failed = false;
    c->limit = RL_NONE;
    c->meter = 0;
    c->retry_after_s = 0;
    c->model_len = 0;
    c->prompt_estimate = c->tokens_in = c->tokens_out = 0;
    c->prefix_hash = 0;
}

/* For errors found while parsing, before a request is set up. */
static void reject_head(struct conn *c, int status, const char *msg)
{
    struct shard *sh = c->sh;
    c->sg = sh->sg;
    c->sg->inflight++;
    c->start_us = sh->now_us;
    c->route = c->backend = c->pool = -1;
    c->queued = c->probe = false;
    reset_admission(c);
    c->error = NULL;
    c->status = 0;
    c->first_byte_us = 0;
    c->bytes_in = c->bytes_out = 0;
    c->upstream_reused = false;
    c->req_body = BODY_NONE;
    c->keep_alive = false;
    c->method[0] = 0;
    c->target_len = 0;
    next_request_id(c);
    conn_send_error(c, status, "invalid_request_error", NULL, msg);
}

/* ---- request setup ---- */

bool conn_request_body_complete(const struct conn *c)
{
    return c->req_body == BODY_NONE ||
           (c->req_body == BODY_LENGTH && c->req_body_left == 0) ||
           (c->req_body == BODY_CHUNKED && c->req_chunked.done);
}

/* Classifies bytes that follow what was already classified as request body.
 * Returns how many of them are body, or -1 on bad chunked framing. */
static ssize_t classify_body(struct conn *c, const char *p, size_t n, const char **why)
{
    if (n == 0 || conn_request_body_complete(c))
        return 0;
    size_t k;
    if (c->req_body == BODY_LENGTH) {
        k = n < c->req_body_left ? n : (size_t)c->req_body_left;
        c->req_body_left -= k;
    } else {
        ssize_t r = chunked_scan(&c->req_chunked, p, n, NULL, NULL, why);
        if (r < 0)
            return -1;
        k = (size_t)r;
    }
    c->req_body_total += k;
    return (ssize_t)k;
}

static void copy_slice(char *dst, size_t cap, struct slice s, uint16_t *len_out)
{
    size_t n = s.len < cap ? s.len : cap;
    memcpy(dst, s.p, n);
    *len_out = (uint16_t)n;
}

/* Picks the request's pool: the route's, or one by its split. */
void conn_choose_pool(struct conn *c)
{
    struct shard_gen *sg = c->sg;
    const struct cfg_route *route = &sg->g->cfg->routes[c->route];
    c->pool = (int)(route->nsplit ? route->split[split_pick(sg->split[c->route], route->split,
                                                            route->nsplit)].pool
                                  : route->pool);
}

/* The caller's tier priority decides its place in a pool's queue. */
enum priority conn_priority(const struct conn *c)
{
    const struct config *cfg = c->sg->g->cfg;
    if (c->key < 0 || !cfg->keys.key_tier)
        return PRIORITY_NORMAL;
    uint32_t t = cfg->keys.key_tier[c->key];
    return t == CFG_NO_TIER ? PRIORITY_NORMAL : cfg->tiers[t].priority;
}

/* What the forwarded head gains, for the chosen pool and backend. The caller's
 * key is for aigw only: it never goes upstream when aigw checks keys. */
struct http_forward conn_forward_info(const struct conn *c)
{
    const struct gen *g = c->sg->g;
    const struct cfg_pool *pool = &g->cfg->pools[c->pool];
    /* an HTTP/1.0 request without Host gets the backend's address; one written
     * before the backend is known (a raw route's head) gets the pool's first */
    unsigned b = c->backend >= 0 ? (unsigned)c->backend : g->pool_first_backend[c->pool];
    const char *host = g->backend_cfg[b]->addr.text;
    return (struct http_forward){
        .client_addr = { c->client, c->client_len },
        .proto = { "http", 4 },
        .request_id = { c->request_id, c->request_id_len },
        .upstream_auth = { pool->upstream_auth, strlen(pool->upstream_auth) },
        .default_host = { host, strlen(host) },
        .strip_client_auth = g->cfg->keys.configured,
    };
}

/* A complete head was parsed from src[0..n). Sets the request up and returns how
 * many bytes of src it consumed (head plus the body bytes copied out); the rest
 * of src becomes the front of c->in, its first c->in_body bytes classified body. */
static size_t start_request(struct conn *c, const char *src, size_t n, const struct http_request *req)
{
    struct shard *sh = c->sh;
    struct shard_gen *sg = sh->sg;
    const struct config *cfg = sg->g->cfg;

    c->sg = sg;
    sg->inflight++;
    c->start_us = sh->now_us;
    c->state = CS_UPSTREAM;
    c->route = -1;
    c->backend = -1;
    c->pool = -1;
    reset_admission(c);
    c->status = 0;
    c->error = NULL;
    c->resp_started = c->resp_done = c->retried = c->upstream_reused = false;
    c->queued = c->probe = c->fell_back = false;
    c->attempts = 0;
    c->tried = 0;
    c->retry_deadline_ms = 0;
    c->first_byte_us = 0;
    c->bytes_in = req->head_len;
    c->bytes_out = 0;
    c->req_method = req->method_id;
    c->req_body = req->body;
    c->req_body_left = req->content_length;
    c->req_body_total = 0;
    c->in_body = 0;
    chunked_init(&c->req_chunked);
    c->keep_alive = req->keep_alive && !sh->draining;
    c->expect_continue = req->expect_continue;
    c->client_http10 = req->minor == 0;
    c->dechunk = false;
    uint16_t mlen;
    copy_slice(c->method, sizeof c->method - 1, req->method, &mlen);
    c->method[mlen] = 0;
    copy_slice(c->target, sizeof c->target, req->target, &c->target_len);
    if (req->idx[HK_X_REQUEST_ID] >= 0 && request_id_acceptable(req->headers[req->idx[HK_X_REQUEST_ID]].value)) {
        struct slice v = req->headers[req->idx[HK_X_REQUEST_ID]].value;
        memcpy(c->request_id, v.p, v.len);
        c->request_id_len = (uint8_t)v.len;
    } else {
        next_request_id(c);
    }

    if (req->minor == 1 && req->idx[HK_HOST] < 0) {
        /* RFC 9112 3.2: an HTTP/1.1 request without Host gets 400 */
        c->keep_alive = false;
        conn_send_error(c, 400, "invalid_request_error", NULL, "missing Host header");
        return n;
    }
    /* answers that leave a body unread close the connection; without one, what
     * follows the head is the next pipelined request */
    bool no_body = req->body == BODY_NONE || (req->body == BODY_LENGTH && req->content_length == 0);
    size_t consumed = no_body ? req->head_len : n;
    enum auth_result auth = admission_authenticate(c, req);
    if (auth != AUTH_OK) {
        conn_send_error(c, 401, "authentication_error", "invalid_api_key",
                   auth == AUTH_MISSING
                       ? "Missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`"
                       : "Incorrect API key provided");
        return consumed;
    }
    /* the first route for the path decides whether the body is read as an
     * OpenAI request (and the route then chosen by its model) */
    int path_route = route_lookup(sg->g->routes, req->path.p, req->path.len);
    /* GET /v1/models is aigw's own, unless a route claims that exact path */
    if ((req->method_id == METHOD_GET || req->method_id == METHOD_HEAD) &&
        admission_is_models_path(req->path) &&
        !(path_route >= 0 && !cfg->routes[path_route].prefix &&
          cfg->routes[path_route].path_len == req->path.len)) {
        send_models(c, req->path);
        return consumed;
    }
    if (path_route >= 0 && cfg->routes[path_route].kind == ROUTE_AI &&
        !(req->body == BODY_NONE || (req->body == BODY_LENGTH && req->content_length == 0))) {
        c->route = path_route;
        return ai_request_start(c, src, n, req);
    }

    size_t head = req->head_len;
    const char *why = NULL;
    ssize_t body_avail = classify_body(c, src + head, n - head, &why);
    if (body_avail < 0) {
        conn_send_error(c, 400, "invalid_request_error", NULL, why);
        return n;
    }
    if (req->body == BODY_LENGTH && req->content_length > cfg->server.max_body) {
        conn_send_error(c, 413, "invalid_request_error", NULL, "request body too large");
        return head + (size_t)body_avail;
    }
    c->route = path_route;
    if (c->route < 0) {
        conn_send_error(c, 404, "invalid_request_error", "not_found", "no route for this path");
        return head + (size_t)body_avail;
    }
    conn_choose_pool(c);
    c->out = xbuf_get(sh);
    if (!c->out) {
        conn_send_error(c, 503, "server_error", "no_capacity", "out of memory");
        return n;
    }
    struct http_forward fwd = conn_forward_info(c);
    size_t hlen = http_write_upstream_head(c->out->data, sh->xbuf_size, req, &fwd);
    if (hlen == 0) {
        conn_send_error(c, 431, "invalid_request_error", NULL, "request head too large to forward");
        return head + (size_t)body_avail;
    }
    size_t room = sh->xbuf_size - hlen;
    size_t copy = (size_t)body_avail < room ? (size_t)body_avail : room;
    memcpy(c->out->data + hlen, src + head, copy);
    c->out->len = (uint32_t)(hlen + copy);
    c->out->off = 0;
    c->in_body = (uint32_t)((size_t)body_avail - copy);
    c->bytes_in += copy;
    c->body_in_first_send = conn_request_body_complete(c) && c->in_body == 0;

    if (c->expect_continue && !conn_request_body_complete(c) && body_avail == 0) {
        conn_send_continue(c);
    }
    dispatch_request(c);
    return head + copy;
}

/* ---- input ---- */

static bool in_reserve(struct conn *c)
{
    if (!c->in) {
        c->in = xbuf_get(c->sh);
        if (!c->in)
            return false;
    }
    return true;
}

/* Appends received bytes to c->in; returns false if they did not all fit. */
static bool in_append(struct conn *c, const char *p, size_t n)
{
    if (!in_reserve(c))
        return false;
    struct xbuf *b = c->in;
    uint32_t cap = c->sh->xbuf_size;
    if (b->len + n > b->cap && b->off > 0 && !c->in_pinned) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        /* Completions already queued when we paused reading can overshoot the queue;
         * the kernel has handed us those bytes, so keep them in a larger block. */
        size_t want = (size_t)b->cap * 2;
        if (want < (size_t)b->len + n)
            want = (size_t)b->len + n;
        /* one completion batch can bring at most the whole provided-buffer ring */
        if (want > (size_t)cap + (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE)
            return false;
        struct xbuf *big = xbuf_get_cap(c->sh, (uint32_t)want);
        if (!big)
            return false;
        memcpy(big->data, b->data, b->len);
        big->len = b->len;
        big->off = b->off;
        conn_drop_buf(c, b);    /* a send may still read the old block */
        c->in = b = big;
    }
    memcpy(b->data + b->len, p, n);
    b->len += (uint32_t)n;
    return true;
}

static void in_consume(struct conn *c, size_t n)
{
    c->in->off += (uint32_t)n;
    if (c->in->off == c->in->len && !c->in_pinned) {
        conn_drop_buf(c, c->in);
        c->in = NULL;
    }
}

static void parse_error(struct conn *c, int res, const char *why)
{
    if (res == HTTP_TOO_LARGE)
        reject_head(c, 431, why ? why : "request head too large");
    else
        reject_head(c, 400, why ? why : "malformed request");
}

/* Handles bytes received while no request is active (CS_IDLE / CS_HEAD). */
static void on_head_bytes(struct conn *c, const char *p, size_t n)
{
    struct shard *sh = c->sh;
    size_t max_head = conn_config(c)->server.max_header;
    const char *why = NULL;
    if (!c->in) {
        /* fast path: parse in place in the provided buffer */
        int r = http_parse_request(p, n, max_head, &sh->scratch_req, &why);
        if (r == HTTP_OK) {
            size_t used = start_request(c, p, n, &sh->scratch_req);
            if (used < n && c->state != CS_CLOSING && !in_append(c, p + used, n - used)) {
                /* cannot happen with xbuf_size >= RECV_BUF_SIZE, but never lose bytes silently */
                c->keep_alive = false;
            }
            return;
        }
        if (r != HTTP_INCOMPLETE) {
            parse_error(c, r, why);
            return;
        }
    }
    if (!in_append(c, p, n)) {
        reject_head(c, 431, "request head too large");
        return;
    }
    if (c->state == CS_IDLE) {
        c->state = CS_HEAD;
        arm_timer(c, T_HEADER, conn_config(c)->timeouts.client_header_ms);
    }
    process_input(c);
}

/* Parses what is queued in c->in while the connection is between requests. */
static void process_input(struct conn *c)
{
    struct shard *sh = c->sh;
    while (c->in && (c->state == CS_IDLE || c->state == CS_HEAD)) {
        const char *p = c->in->data + c->in->off;
        size_t n = c->in->len - c->in->off;
        const char *why = NULL;
        int r = http_parse_request(p, n, conn_config(c)->server.max_header, &sh->scratch_req, &why);
        if (r == HTTP_INCOMPLETE) {
            if (c->state == CS_IDLE) {
                c->state = CS_HEAD;
                arm_timer(c, T_HEADER, conn_config(c)->timeouts.client_header_ms);
            }
            return;
        }
        if (r != HTTP_OK) {
            parse_error(c, r, why);
            return;
        }
        /* start_request reads the head from c->in, so nothing may move it meanwhile */
        c->in_pinned = true;
        size_t used = start_request(c, p, n, &sh->scratch_req);
        c->in_pinned = false;
        if (c->state == CS_CLOSING)
            return;
        in_consume(c, used);
        return;     /* one request at a time: the next is parsed when this one ends */
    }
}

/* Bytes that arrive while a request is in flight: its body, or pipelined requests. */
static void on_busy_bytes(struct conn *c, const char *p, size_t n)
{
    if (c->state == CS_BODY) {
        ssize_t k = ai_request_collect(c, p, n);
        if (k < 0)
            return;
        c->last_activity_ms = c->sh->now_ms;
        if ((size_t)k < n && !in_append(c, p + k, n - (size_t)k)) {
            conn_send_error(c, 400, "invalid_request_error", NULL, "too much data sent ahead of the response");
            return;
        }
        if (conn_request_body_complete(c))
            ai_request_ready(c);
        return;
    }
    if (c->state == CS_UPSTREAM && !conn_request_body_complete(c)) {
        /* classified before queueing, so max_body is enforced on what arrives */
        const char *why = NULL;
        ssize_t k = classify_body(c, p, n, &why);
        if (k < 0) {
            conn_send_error(c, 400, "invalid_request_error", NULL, why);
            return;
        }
        if (c->req_body_total > conn_config(c)->server.max_body) {
            conn_send_error(c, 413, "invalid_request_error", NULL, "request body too large");
            return;
        }
        if (!in_append(c, p, n)) {
            conn_send_error(c, 503, "server_error", NULL, "out of memory queueing the request body");
            return;
        }
        c->in_body += (uint32_t)k;
        pump_request_body(c);
    } else if (!in_append(c, p, n)) {
        c->error = "client sent more than aigw queues while busy";
        conn_send_error(c, 400, "invalid_request_error", NULL, "too much data sent ahead of the response");
        return;
    }
    if (c->in && c->in->len - c->in->off >= c->sh->xbuf_size / 2)
        pause_recv(c);
}

static void on_recv(struct conn *c, struct io_uring_cqe *cqe)
{
    struct shard *sh = c->sh;
    int res = cqe->res;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->recv_armed = false;
    if (res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        char *p = shard_recv_buf(sh, bid);
        if (c->state == CS_IDLE || c->state == CS_HEAD)
            on_head_bytes(c, p, (size_t)res);
        else if (c->state != CS_CLOSING)
            on_busy_bytes(c, p, (size_t)res);
        shard_release_recv_buf(sh, bid);
    } else if (res == -ENOBUFS) {
        /* the shard's buffer ring ran dry; nothing lost, re-armed below */
    } else if (res == -ECANCELED) {
        /* our own pause; if reading resumed meanwhile, it is re-armed below */
    } else if (c->state != CS_CLOSING) {
        /* EOF or error: the client is gone. Mid-request the upstream is closed at
         * once so the backend stops generating. */
        c->error = res == 0 ? "client closed" : "client reset";
        conn_close(c);
        return;
    }
    if (!c->recv_armed && !c->recv_paused && c->state != CS_CLOSING)
        arm_recv(c);
}

/* ---- talking to the upstream ---- */

static void up_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    struct upconn *u = c->up;
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_send(sqe, u->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_SEND));
    u->ops++;
    u->io_buf = owner;
    c->up_sending = true;
}

static void up_recv_head(struct conn *c)
{
    struct upconn *u = c->up;
    if (!c->rbuf) {
        c->rbuf = xbuf_get(c->sh);
        if (!c->rbuf) {
            conn_send_error(c, 502, "server_error", "upstream_error", "out of memory");
            return;
        }
    }
    if (upstream_head_from_watch(c))
        return;     /* a pooled connection's idle watch is this recv already */
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_recv(sqe, u->fd, c->rbuf->data + c->rbuf->len, c->sh->xbuf_size - c->rbuf->len, 0);
    /* the request has only just gone out: wait for readiness instead of a
     * recvmsg that would almost always find nothing yet */
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_RECV));
    u->ops++;
    u->io_buf = c->rbuf;
}

void conn_upstream_recv_head(struct conn *c)
{
    up_recv_head(c);
}

/* Connected (or a pooled connection taken): send the head and what body we have. */
void conn_upstream_ready(struct conn *c)
{
    arm_timer(c, T_IDLE, conn_config(c)->timeouts.idle_ms);
    c->last_activity_ms = c->sh->now_ms;
    up_send(c, c->out, c->out->data + c->out->off, c->out->len - c->out->off);
}

static void request_sent(struct conn *c)
{
    if (!c->body_in_first_send) {
        conn_drop_buf(c, c->out);
        c->out = NULL;
    }
    /* first_byte runs from the first attempt's request: a retry gets what is left */
    uint64_t now = c->sh->now_ms;
    if (!c->retry_deadline_ms)
        c->retry_deadline_ms = now + conn_config(c)->timeouts.first_byte_ms;
    arm_timer(c, T_FIRST_BYTE, c->retry_deadline_ms > now ? c->retry_deadline_ms - now : 1);
    up_recv_head(c);
}

static void pump_request_body(struct conn *c)
{
    if (c->up_sending || !c->up || c->up->state != UP_BUSY || c->out)
        return;
    if (c->in_body > 0) {
        c->in_pinned = true;
        up_send(c, c->in, c->in->data + c->in->off, c->in_body);
    } else if (conn_request_body_complete(c)) {
        request_sent(c);
    }
}

static void retry_or_fail(struct conn *c, int err, const char *why)
{
    /* A pooled connection the backend had already closed: the request never reached
     * it, so it is safe to send again on a fresh connection once. */
    if (c->upstream_reused && c->body_in_first_send && !c->retried && c->out && !c->resp_started) {
        c->retried = true;
        abandon_upstream(c);
        c->out->off = 0;
        upstream_acquire_new(c);
        return;
    }
    conn_attempt_failed(c, BF_RESET, err, why);
}

/* The backend failed this attempt: count it against the backend, then try
 * another one if the request may be retried, else answer the error. */
void conn_attempt_failed(struct conn *c, enum backend_failure f, int err, const char *why)
{
    dispatch_attempt_result(c, f);
    if (dispatch_retry(c))
        return;
    conn_upstream_failed(c, err, why);
}

/* Gives up the current attempt's upstream side so the request can go out again. */
void conn_abandon_attempt(struct conn *c)
{
    if (c->up)
        abandon_upstream(c);
    conn_drop_buf(c, c->rbuf);
    c->rbuf = NULL;
    if (c->out)
        c->out->off = 0;
    c->up_sending = c->in_pinned = false;
    c->first_byte_us = 0;
    c->status = 0;
    c->retried = c->upstream_reused = false;
}

void conn_upstream_failed(struct conn *c, int err, const char *why)
{
    if (err == ETIMEDOUT && c->tphase == T_FIRST_BYTE)
        conn_send_error(c, 504, "server_error", "upstream_timeout", why);
    else
        conn_send_error(c, 502, "server_error", "upstream_error", why);
}

static void on_up_sent(struct conn *c, int res)
{
    c->up_sending = false;
    if (res <= 0) {
        c->in_pinned = false;
        retry_or_fail(c, -res, res == 0 ? "upstream closed" : "upstream send failed");
        return;
    }
    c->last_activity_ms = c->sh->now_ms;
    if (c->out) {
        c->out->off += (uint32_t)res;
        if (c->out->off < c->out->len) {
            up_send(c, c->out, c->out->data + c->out->off, c->out->len - c->out->off);
            return;
        }
        if (!c->body_in_first_send) {
            conn_drop_buf(c, c->out);
            c->out = NULL;
        } else {
            request_sent(c);
            return;
        }
    } else {
        c->in_pinned = false;
        c->in_body -= (uint32_t)res;
        c->bytes_in += (uint64_t)res;
        c->in->off += (uint32_t)res;
        if (c->in->off == c->in->len) {
            conn_drop_buf(c, c->in);
            c->in = NULL;
        }
        resume_recv(c);
    }
    pump_request_body(c);
}

/* Response head bytes arrived in rbuf. */
static void on_up_head(struct conn *c, int res)
{
    struct shard *sh = c->sh;
    if (res <= 0) {
        retry_or_fail(c, res == 0 ? ECONNRESET : -res,
                      res == 0 ? "upstream closed before answering" : "upstream reset before answering");
        return;
    }
    if (!c->first_byte_us)
        c->first_byte_us = sh->now_us;
    c->rbuf->len += (uint32_t)res;
    struct http_response *resp = &sh->scratch_resp;
    for (;;) {
        const char *why = NULL;
        const char *p = c->rbuf->data + c->rbuf->off;
        size_t n = c->rbuf->len - c->rbuf->off;
        int r = http_parse_response(p, n, conn_config(c)->server.max_header, c->req_method, resp, &why);
        if (r == HTTP_INCOMPLETE) {
            if (c->rbuf->len == sh->xbuf_size) {
                conn_attempt_failed(c, BF_STATUS, EPROTO, "upstream response head too large");
                return;
            }
            up_recv_head(c);
            return;
        }
        if (r != HTTP_OK) {
            conn_attempt_failed(c, BF_STATUS, EPROTO, why ? why : "malformed upstream response");
            return;
        }
        if (resp->status >= 200)
            break;
        if (resp->status == 101) {
            conn_attempt_failed(c, BF_STATUS, EPROTO, "upstream switched protocols");
            return;
        }
        /* interim 1xx: skip it; the client already got our own 100 Continue */
        c->rbuf->off += (uint32_t)resp->head_len;
        if (c->rbuf->off == c->rbuf->len) {
            c->rbuf->off = c->rbuf->len = 0;
            up_recv_head(c);
            return;
        }
    }
    dispatch_attempt_result(c, resp->status >= 500 ? BF_STATUS : BF_NONE);
    /* a backend that is overloaded or broken said so before anything reached
     * the client: another one may answer */
    if ((resp->status == 502 || resp->status == 503) && dispatch_retry(c))
        return;
    /* the request can no longer be retried: the backend answered */
    conn_drop_buf(c, c->out);
    c->out = NULL;
    xbuf_put(sh, c->body);
    c->body = NULL;
    relay_response_head(c, resp);
}

void conn_on_upstream_cqe(struct conn *c, enum op op, int res)
{
    if (op == OP_UP_SEND)
        on_up_sent(c, res);
    else if (c->state == CS_UPSTREAM)
        on_up_head(c, res);
    else if (c->state == CS_RELAY)
        relay_on_upstream_recv(c, res);
    conn_maybe_free(c);
}

/* ---- sending to the client ---- */

void conn_send_out(struct conn *c)
{
    if (c->send_inflight) {
        c->send_deferred = true;    /* behind our 100 Continue */
        return;
    }
    client_send(c, c->out, c->out->data + c->out->off, c->out->len - c->out->off);
}

void conn_send_rbuf(struct conn *c)
{
    client_send(c, c->rbuf, c->rbuf->data + c->rbuf->off, c->rbuf->len - c->rbuf->off);
}

void conn_response_done(struct conn *c)
{
    request_finish(c);
}

static void on_sent(struct conn *c, int res)
{
    c->send_inflight = false;
    if (res < 0) {
        c->error = "client send failed";
        conn_close(c);
        return;
    }
    c->last_activity_ms = c->sh->now_ms;
    if (c->sending_continue) {
        c->sending_continue = false;
        if (c->send_deferred) {
            c->send_deferred = false;
            conn_send_out(c);
        }
        return;
    }
    c->bytes_out += (uint64_t)res;
    if (c->state == CS_LOCAL) {
        c->out->off += (uint32_t)res;
        if (c->out->off < c->out->len) {
            conn_send_out(c);
            return;
        }
        request_finish(c);
        return;
    }
    if (c->state == CS_RELAY)
        relay_client_sent(c, res);
}

/* ---- end of a request ---- */

static void request_finish(struct conn *c)
{
    struct shard *sh = c->sh;
    struct shard_gen *sg = c->sg;
    if (!sg)
        return;
    const struct config *cfg = sg->g->cfg;
    uint64_t dur = sh->now_us - c->start_us;
    admission_settle(c);
    int route_slot = c->route >= 0 ? sg->g->route_metric_slot[c->route] : 0;
    metrics_observe_request(sh->m, route_slot, c->status, dur);
    if (cfg->log.access != ACCESS_OFF) {
        struct alog_entry e = {
            .time_us = c->start_us + sh->realtime_offset_us,
            .client = { c->client, c->client_len },
            .method = { c->method, strlen(c->method) },
            .target = { c->target, c->target_len },
            .request_id = { c->request_id, c->request_id_len },
            .route = c->route >= 0 ? cfg->routes[c->route].name : "",
            .pool = c->backend >= 0 ? sg->g->backend_pool[c->backend] : "",
            .backend = c->backend >= 0 ? sg->g->backend_cfg[c->backend]->addr.text : "",
            .status = c->status,
            .bytes_in = c->bytes_in,
            .bytes_out = c->bytes_out,
            .duration_us = dur,
            .first_byte_us = c->first_byte_us ? (int64_t)(c->first_byte_us - c->start_us) : -1,
            .upstream_reused = c->upstream_reused,
            .error = c->error,
            .ai = c->ai,
            .model = { c->model, c->model_len },
            .stream = c->stream,
            .tokens_in = c->tokens_in,
            .tokens_out = c->tokens_out,
            .limit = c->limit ? rl_limit_name((enum rl_limit)c->limit) : NULL,
        };
        if (c->key >= 0) {
            e.key = keyring_entry(cfg->keys.ring, (unsigned)c->key)->name;
            uint32_t t = cfg->keys.key_tier ? cfg->keys.key_tier[c->key] : CFG_NO_TIER;
            static const char *const prio[] = { [PRIORITY_HIGH] = "high",
                                                 [PRIORITY_NORMAL] = "normal",
                                                 [PRIORITY_LOW] = "low" };
            e.priority = prio[t == CFG_NO_TIER ? PRIORITY_NORMAL : cfg->tiers[t].priority];
        }
        alog_write(sh->id, &e);
    }
    dispatch_release(c);
    /* buffers first, while c->up is attached: an op in flight may still use them */
    xbuf_put(sh, c->body);      /* never used by an operation */
    c->body = NULL;
    conn_drop_buf(c, c->out);
    c->out = NULL;
    conn_drop_buf(c, c->rbuf);
    c->rbuf = NULL;
    if (c->splice_ops) {
        /* a splice in io-wq resolves its input fd when it runs: the pipes and the
         * upstream socket stay open until its completion (conn_maybe_free) */
        c->pipe_orphan = c->pipe;
        if (c->ipipe) {
            c->ipipe->next_free = c->pipe_orphan;
            c->pipe_orphan = c->ipipe;
        }
        if (c->up)
            c->up_fd_orphan = upconn_detach_fd(c->up);
        c->keep_alive = false;      /* (only a closing connection gets here) */
    } else {
        pipe_put(sh, c->pipe, c->pipe_bytes == 0);
        pipe_put(sh, c->ipipe, c->ipipe_bytes == 0);
        xbuf_put(sh, c->ibuf);
        c->ibuf = NULL;
    }
    c->pipe = c->ipipe = NULL;
    c->pipe_bytes = c->ipipe_bytes = 0;
    if (c->up) {
        struct upconn *u = c->up;
        c->up = NULL;
        u->owner = NULL;
        upstream_release(u, c->resp_done && c->resp_keep_alive && !c->splice_ops);
    }
    c->sg = NULL;
    c->route = c->backend = c->pool = -1;
    c->error = NULL;
    shard_gen_request_done(sh, sg);
    if (c->state == CS_CLOSING)
        return;

    if (!c->keep_alive || sh->draining || c->in_body > 0) {
        conn_close(c);
        return;
    }
    c->state = CS_IDLE;
    /* the request's generation may be gone now: the next wait is the current one's */
    arm_timer(c, T_KEEPALIVE, sh->sg->g->cfg->timeouts.keepalive_ms);
    resume_recv(c);
    process_input(c);
}

/* ---- timers ---- */

void conn_timer_fired(struct conn *c)
{
    struct shard *sh = c->sh;
    const struct config *cfg = conn_config(c);
    switch (c->tphase) {
    case T_KEEPALIVE:
        conn_close(c);
        break;
    case T_HEADER:
        if (c->state == CS_HEAD)
            reject_head(c, 408, "request head not received in time");
        else
            conn_close(c);
        break;
    case T_CONNECT:
        conn_attempt_failed(c, BF_CONNECT, ETIMEDOUT, "upstream connect timeout");
        break;
    case T_FIRST_BYTE:
        conn_attempt_failed(c, BF_TIMEOUT, ETIMEDOUT, "upstream did not answer within first_byte");
        break;
    case T_QUEUE:
        dispatch_queue_expired(c);
        break;
    case T_IDLE:
        if (sh->now_ms < c->last_activity_ms + cfg->timeouts.idle_ms) {
            timer_arm(&sh->timers, &c->timer, c->last_activity_ms + cfg->timeouts.idle_ms);
            break;
        }
        c->error = "idle timeout";
        if (c->state == CS_BODY ||
            (c->state == CS_UPSTREAM && !c->resp_started && !conn_request_body_complete(c) && c->in_body == 0))
            /* we wait for the client's body, not for the backend */
            conn_send_error(c, 408, "invalid_request_error", NULL, "request body not received in time");
        else if (c->state == CS_UPSTREAM && !c->resp_started) {
            if (c->up)
                dispatch_attempt_result(c, BF_TIMEOUT);
            conn_send_error(c, 504, "server_error", "upstream_timeout", "upstream idle timeout");
        }
        else
            conn_close(c);
        break;
    }
    conn_maybe_free(c);
}

/* ---- completions ---- */

void conn_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->ops--;
    if (op == OP_CLIENT_SEND) {
        if (c->send_buf_orphan)
            xbuf_put(c->sh, c->send_buf);
        c->send_buf = NULL;
        c->send_buf_orphan = false;
    }
    if (c->state == CS_CLOSING) {
        if (op == OP_CLIENT_RECV && cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER))
            shard_release_recv_buf(c->sh, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        conn_maybe_free(c);
        return;
    }
    switch (op) {
    case OP_CLIENT_RECV:
        on_recv(c, cqe);
        break;
    case OP_CLIENT_SEND:
        on_sent(c, cqe->res);
        break;
    default:
        relay_on_cqe(c, op, cqe);
        break;
    }
    conn_maybe_free(c);
}
