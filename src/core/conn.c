/* Client connections: receiving and parsing requests, authenticating the caller,
 * choosing the route and the backend, forwarding the request head and body
 * upstream (streamed on raw routes), receiving the response head, answering
 * errors and GET /v1/models, keep-alive and pipelining, timeouts, and teardown.
 * AI routes' bodies are read and checked in ai_request.c; the response body relay
 * is in relay.c; upstream connections in upstream.c. */
#include "core/ai_request.h"
#include "core/buf.h"
#include "core/conn.h"
#include "core/dispatch.h"
#include "core/gen.h"
#include "core/relay.h"
#include "core/ring.h"
#include "core/shard.h"
#include "core/upstream.h"
#include "core/upstream_tls.h"
#include "policy/balance.h"
#include "policy/route.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/accesslog.h"
#include "core/admission.h"
#include "core/log.h"
#include "core/transport.h"
#include "core/transport_tls.h"
#include "core/models.h"
#include "core/usage.h"
#include "policy/keys.h"
#include "proto/openai.h"
#include "proto/openai_error.h"

static void process_input(struct conn *c);
static void request_finish(struct conn *c);
static void relay_act(struct conn *c, struct relay_outcome o);
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

/* A raw route's request body still arriving while it is forwarded. */
static bool streaming_body(const struct conn *c)
{
    return c->state == CS_UPSTREAM && c->req.sg && !conn_request_body_complete(c);
}

/* Reads from the client. Between requests and while waiting for a response, a
 * multishot recv: an idle connection then holds no buffer and costs no SQE per
 * read. While a request body streams upstream, one buffer at a time, re-armed
 * only when the queue has room: the client is slowed to the backend's pace
 * (TCP flow control) instead of aigw buffering whatever it sends. */
static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    c->recv_multishot = !streaming_body(c);
    if (c->recv_multishot)
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RECV_BUF_GROUP;
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_CLIENT_RECV));
    c->recv_armed = true;
    c->ops++;
}

static void cancel_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_cancel64(sqe, ud_make(c, OP_CLIENT_RECV), 0);
    io_uring_sqe_set_data64(sqe, 0);
}

/* Stops reading from a client whose queued input is full; resumed by resume_recv. */
static void pause_recv(struct conn *c)
{
    if (c->recv_paused)
        return;
    c->recv_paused = true;
    /* a one-shot recv brings at most one more buffer: let it finish */
    if (c->recv_armed && c->recv_multishot)
        cancel_recv(c);
}

/* Enough queued, or no room for one more receive buffer while a send reads the
 * queue (it cannot be moved then, and it must not grow without bound). */
static bool in_queue_full(const struct conn *c)
{
    return c->in && (c->in->len - c->in->off >= c->sh->xbuf_size / 2 ||
                     (c->in_pinned && c->in->cap - c->in->len < RECV_BUF_SIZE));
}

static void resume_recv(struct conn *c)
{
    /* a streaming body waits until the backend took some of the queue */
    if (!c->recv_paused || (streaming_body(c) && in_queue_full(c)))
        return;
    c->recv_paused = false;
    if (!c->recv_armed && c->state != CS_CLOSING)
        arm_recv(c);
}

/* Sends p[0..n) to the client. Exactly one client send is in flight at a time. */
static void client_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    c->tr->send(c, owner, p, n);
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
    if (c->at.up && c->at.up->io_buf == b) {
        c->at.up->io_buf_orphan = true;
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
        c->req.request_id[i] = hex[(v[i / 16] >> ((i % 16) * 4)) & 15];
    c->req.request_id_len = 32;
}

static bool request_id_acceptable(struct slice v)
{
    if (v.len == 0 || v.len > sizeof(((struct request *)0)->request_id))
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
    if (n + c->req.request_id_len + 2 > cap)
        return (struct slice){ buf, 0 };
    memcpy(buf, name, n);
    memcpy(buf + n, c->req.request_id, c->req.request_id_len);
    n += c->req.request_id_len;
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
    xbuf_put(c->sh, c->relay.ibuf);   /* an inspection read may have used it until now */
    c->relay.ibuf = NULL;
    while (c->pipe_orphan) {
        struct pipe_pair *p = c->pipe_orphan;
        c->pipe_orphan = p->next_free;
        pipe_put(c->sh, p, false);
    }
    if (c->send_buf_orphan) {
        /* its last send completed as the transport's own (it had copied it) */
        xbuf_put(c->sh, c->send_buf);
        c->send_buf = NULL;
        c->send_buf_orphan = false;
    }
    if (c->tr->release)
        c->tr->release(c);
    if (c->up_fd_orphan >= 0) {
        struct io_uring_sqe *sqe = shard_sqe(c->sh);
        io_uring_prep_close(sqe, c->up_fd_orphan);
        io_uring_sqe_set_data64(sqe, 0);
        c->up_fd_orphan = -1;
    }
    conn_free(c);
}

void conn_accepted(struct shard *sh, int fd, bool tls)
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
    c->tr = &transport_plain;
    c->up_fd_orphan = -1;
    c->state = CS_IDLE;
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
    mc_add(&sh->m->client_accepted, 1);
    mg_add(&sh->m->connections[SIDE_CLIENT], 1);
    if (tls) {
        /* handshake_timeout first; client_header once the handshake is done */
        if (!transport_tls_begin(c)) {
            conn_close(c);
            conn_maybe_free(c);
            return;
        }
    } else {
        /* a new connection gets client_header to send its first request */
        arm_timer(c, T_HEADER, conn_config(c)->timeouts.client_header_ms);
    }
    arm_recv(c);
}

/* The connection closes under the current request (if any): it ends with
 * `status` unless it already has one, and is logged and settled as usual. */
static void request_end_on_close(struct conn *c, int status)
{
    if (!c->req.sg)
        return;
    if (!c->req.status)
        c->req.status = (uint16_t)status;
    c->req.keep_alive = false;
    request_finish(c);
}

void conn_close(struct conn *c)
{
    if (c->state == CS_CLOSING || c->state == CS_FREE)
        return;
    c->state = CS_CLOSING;
    conn_drop_buf(c, c->in);    /* while c->at.up is attached: a send may read it */
    c->in = NULL;
    /* a client gone mid-request: 499 in logs and metrics, as nginx counts it */
    request_end_on_close(c, 499);
    struct shard *sh = c->sh;
    timer_disarm(&sh->timers, &c->timer);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    sh->nconns--;
    mg_add(&sh->m->connections[SIDE_CLIENT], -1);
    shard_cancel_and_close(sh, c->fd);
    c->fd = -1;
}

/* A close aigw chooses (after a response, or an idle keep-alive connection):
 * the transport may say goodbye first (TLS close_notify) and close once that
 * went out, within a second. */
static void conn_close_clean(struct conn *c)
{
    if (c->tr->close_notify && c->tr->close_notify(c)) {
        c->state = CS_IDLE;
        arm_timer(c, T_KEEPALIVE, 1000);
        return;
    }
    conn_close(c);
}

/* The client went away (closed, reset, or a send to it failed) before its
 * request ended: 499, as nginx counts it, even mid-stream. */
void conn_client_aborted(struct conn *c, const char *why)
{
    if (c->state == CS_CLOSING || c->state == CS_FREE)
        return;
    const struct shard_gen *sg = c->req.sg;
    if (sg) {
        c->req.status = 499;
        c->req.termination = TERM_CLIENT_ABORT;
        c->req.error = why;
        int route_slot = c->req.route >= 0 ? sg->g->route_metric_slot[c->req.route] : 0;
        if (route_slot < 0 || route_slot >= METRICS_MAX_ROUTES)
            route_slot = 0;
        mc_add(&c->sh->m->client_aborts[route_slot], 1);
    }
    conn_close(c);
}

void conn_drain_expired(struct conn *c)
{
    if (c->state == CS_CLOSING || c->state == CS_FREE)
        return;
    if (c->req.sg) {
        c->req.termination = TERM_DRAIN_TIMEOUT;
        c->req.error = "cut at drain_timeout";
        if (!c->req.status)
            c->req.status = 503;    /* no response began: the client gets none */
    }
    conn_close(c);
    conn_maybe_free(c);
}

/* The grace an idle keep-alive connection gets when its shard drains after a
 * handover: a client that keeps using it sends its next request within it (and is
 * told Connection: close); one that is quiet that long is unlikely to send just
 * as it closes. */
#define HANDOVER_IDLE_GRACE_MS 1000

void conn_shard_draining(struct conn *c, bool handed_over)
{
    if (c->state == CS_IDLE && handed_over) {
        if (conn_config(c)->timeouts.keepalive_ms > HANDOVER_IDLE_GRACE_MS)
            arm_timer(c, T_KEEPALIVE, HANDOVER_IDLE_GRACE_MS);
    } else if (c->state == CS_IDLE) {
        conn_close_clean(c);
        conn_maybe_free(c);
    } else if (!handed_over || !c->req.resp_started) {
        c->req.keep_alive = false;
    }
    /* else the head went out promising keep-alive: the client may send its next
     * request as soon as it has read this response, so after a handover the
     * connection goes idle (with the grace above) rather than closing under it */
}

/* Closes the request's upstream connection (not reusable: its state is unknown),
 * after handing it the response buffer if its recv may still fill it. */
static void abandon_upstream(struct conn *c)
{
    conn_drop_buf(c, c->at.rbuf);
    c->at.rbuf = NULL;
    struct upconn *u = c->at.up;
    c->at.up = NULL;
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
    if (c->req.ai)
        ex.len += admission_headers(c, buf + ex.len, RL_HEADERS_MAX);
    if (status == 503 || (status == 429 && c->req.retry_after_s))
        ex.len += (size_t)snprintf(buf + ex.len, 32, "retry-after: %u\r\n",
                                   c->req.retry_after_s ? c->req.retry_after_s : 1);
    return ex;
}

/* Prepares to answer the current request from aigw itself: gives up the
 * upstream side and decides keep-alive. False when it is too late for a status
 * (the connection is then closed). */
static bool local_answer_begin(struct conn *c, int status, const char *msg)
{
    struct shard *sh = c->sh;
    if (c->req.resp_started) {
        /* too late for a status: the client sees the stream end early */
        c->req.error = msg;
        conn_close(c);
        return false;
    }
    if (c->at.up) {
        conn_drop_buf(c, c->req.out);   /* the upstream send may still read it */
        c->req.out = NULL;
        abandon_upstream(c);
    }
    bool body_pending = !(c->req.body_kind == BODY_NONE ||
                          (c->req.body_kind == BODY_LENGTH && c->req.body_left == 0 && c->req.in_body == 0) ||
                          (c->req.body_kind == BODY_CHUNKED && c->req.chunked.done && c->req.in_body == 0));
    if (body_pending || sh->draining)
        c->req.keep_alive = false;
    c->req.status = (uint16_t)status;
    if (!c->req.error)
        c->req.error = msg;
    return true;
}

/* c->req.out holds the whole answer: send it. */
static void local_answer_send(struct conn *c)
{
    struct shard *sh = c->sh;
    c->state = CS_LOCAL;
    c->req.resp_started = true;
    c->last_activity_ms = sh->now_ms;
    arm_timer(c, T_IDLE, conn_idle_ms(c));
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
    if (!c->req.out)
        c->req.out = xbuf_get(sh);
    if (!c->req.out) {
        conn_close(c);
        return;
    }
    char extra[LOCAL_EXTRA_MAX];
    struct slice ex = local_extra(c, status, extra);
    c->req.out->off = 0;
    c->req.out->len = (uint32_t)openai_write_error(c->req.out->data, c->req.out->cap, status, type, code, msg,
                                             c->req.keep_alive, ex);
    local_answer_send(c);
}

/* GET /v1/models: the models the caller may use, in OpenAI's list shape. */
static void send_models(struct conn *c, struct slice path)
{
    struct shard *sh = c->sh;
    const struct served_models *served = models_served(c);
    ssize_t blen = models_body(c, served, path, NULL, 0);
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
    c->req.out = xbuf_get_cap(sh, (uint32_t)((size_t)blen + 256 + ex.len));
    if (!c->req.out) {
        conn_close(c);
        return;
    }
    size_t hlen = http_write_json_head(c->req.out->data, c->req.out->cap, 200, (size_t)blen, c->req.keep_alive, ex);
    if (hlen == 0) {
        conn_close(c);
        return;
    }
    models_body(c, served, path, c->req.out->data + hlen, c->req.out->cap - hlen);
    c->req.out->off = 0;
    c->req.out->len = (uint32_t)(hlen + (size_t)blen);
    if (c->req.method_id == METHOD_HEAD)
        c->req.out->len = (uint32_t)hlen;
    local_answer_send(c);
}

/* A request begins on c: every per-request field starts from this one
 * definition, so nothing of the previous request on the connection survives
 * (its status, whether a response byte went out, its caller, its backend). */
static void request_begin(struct conn *c)
{
    struct shard *sh = c->sh;
    c->req = (struct request){
        .sg = sh->sg,
        .route = -1,
        .pool = -1,
        .key = -1,
        .limit = RL_NONE,
        .start_us = sh->now_us,
    };
    chunked_init(&c->req.chunked);
    c->at = (struct attempt){ .backend = -1 };
    c->relay = (struct relay){ .resp_body = BODY_NONE };
    c->req.sg->inflight++;
}

/* For errors found while parsing, before a request is set up. */
static void reject_head(struct conn *c, int status, const char *msg)
{
    request_begin(c);
    next_request_id(c);
    conn_send_error(c, status, "invalid_request_error", NULL, msg);
}

/* ---- request setup ---- */

bool conn_request_body_complete(const struct conn *c)
{
    return c->req.body_kind == BODY_NONE ||
           (c->req.body_kind == BODY_LENGTH && c->req.body_left == 0) ||
           (c->req.body_kind == BODY_CHUNKED && c->req.chunked.done);
}

/* Classifies bytes that follow what was already classified as request body.
 * Returns how many of them are body, or -1 on bad chunked framing. */
static ssize_t classify_body(struct conn *c, const char *p, size_t n, const char **why)
{
    if (n == 0 || conn_request_body_complete(c))
        return 0;
    size_t k;
    if (c->req.body_kind == BODY_LENGTH) {
        k = n < c->req.body_left ? n : (size_t)c->req.body_left;
        c->req.body_left -= k;
    } else {
        ssize_t r = chunked_scan(&c->req.chunked, p, n, NULL, NULL, why);
        if (r < 0)
            return -1;
        k = (size_t)r;
    }
    c->req.body_total += k;
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
    struct shard_gen *sg = c->req.sg;
    const struct cfg_route *route = &sg->g->cfg->routes[c->req.route];
    c->req.pool = (int)(route->nsplit ? route->split[split_pick(sg->split[c->req.route], route->split,
                                                            route->nsplit)].pool
                                  : route->pool);
}

/* The caller's tier priority decides its place in a pool's queue. */
enum priority conn_priority(const struct conn *c)
{
    const struct config *cfg = c->req.sg->g->cfg;
    if (c->req.key < 0 || !cfg->keys.key_tier)
        return PRIORITY_NORMAL;
    uint32_t t = cfg->keys.key_tier[c->req.key];
    return t == CFG_NO_TIER ? PRIORITY_NORMAL : cfg->tiers[t].priority;
}

/* What the forwarded head gains, for the chosen pool and backend. The caller's
 * key is for aigw only: it never goes upstream when aigw checks keys. */
struct http_forward conn_forward_info(const struct conn *c)
{
    const struct gen *g = c->req.sg->g;
    const struct cfg_pool *pool = &g->cfg->pools[c->req.pool];
    /* an HTTP/1.0 request without Host gets the backend's address; one written
     * before the backend is known (a raw route's head) gets the pool's first */
    unsigned b = c->at.backend >= 0 ? (unsigned)c->at.backend : g->pool_first_backend[c->req.pool];
    const char *host = g->backend_cfg[b]->addr.text;
    const char *tls_host = g->backend_cfg[b]->tls_host_header;
    return (struct http_forward){
        .host = { tls_host, strlen(tls_host) },
        .client_addr = { c->client, c->client_len },
        .proto = c->tls ? (struct slice){ "https", 5 } : (struct slice){ "http", 4 },
        .request_id = { c->req.request_id, c->req.request_id_len },
        .traceparent = c->req.trace.sampled ? (struct slice){ c->req.trace.header, TRACEPARENT_LEN } : (struct slice){ 0 },
        .upstream_auth = { pool->upstream_auth, strlen(pool->upstream_auth) },
        .default_host = { host, strlen(host) },
        .strip_client_auth = g->cfg->keys.configured,
    };
}

/* A complete head was parsed from src[0..n). Sets the request up and returns how
 * many bytes of src it consumed (head plus the body bytes copied out); the rest
 * of src becomes the front of c->in, its first c->req.in_body bytes classified body. */
static size_t start_request(struct conn *c, const char *src, size_t n, const struct http_request *req)
{
    struct shard *sh = c->sh;
    struct shard_gen *sg = sh->sg;
    const struct config *cfg = sg->g->cfg;

    request_begin(c);
    c->state = CS_UPSTREAM;
    c->req.bytes_in = req->head_len;
    c->req.method_id = req->method_id;
    c->req.body_kind = req->body;
    c->req.body_left = req->content_length;
    c->req.keep_alive = req->keep_alive && !sh->draining;
    c->req.expect_continue = req->expect_continue;
    c->req.http10 = req->minor == 0;
    uint16_t mlen;
    copy_slice(c->req.method, sizeof c->req.method - 1, req->method, &mlen);
    c->req.method[mlen] = 0;
    c->req.target_len = (uint16_t)alog_redact_target(c->req.target, sizeof c->req.target, req->target);
    if (cfg->tracing.enabled)
        req_trace_begin(c, req);
    if (req->idx[HK_X_REQUEST_ID] >= 0 && request_id_acceptable(req->headers[req->idx[HK_X_REQUEST_ID]].value)) {
        struct slice v = req->headers[req->idx[HK_X_REQUEST_ID]].value;
        memcpy(c->req.request_id, v.p, v.len);
        c->req.request_id_len = (uint8_t)v.len;
    } else {
        next_request_id(c);
    }

    if (req->minor == 1 && req->idx[HK_HOST] < 0) {
        /* RFC 9112 3.2: an HTTP/1.1 request without Host gets 400 */
        c->req.keep_alive = false;
        conn_send_error(c, 400, "invalid_request_error", NULL, "missing Host header");
        return n;
    }
    /* answers that leave a body unread close the connection; without one, what
     * follows the head is the next pipelined request */
    bool no_body = req->body == BODY_NONE || (req->body == BODY_LENGTH && req->content_length == 0);
    size_t consumed = no_body ? req->head_len : n;
    if (req->expect_unmet) {
        conn_send_error(c, 417, "invalid_request_error", NULL,
                        "unsupported Expect: only 100-continue is supported");
        return consumed;
    }
    enum auth_result auth = admission_authenticate(c, req);
    if (auth == AUTH_CONFLICT) {
        conn_send_error(c, 400, "invalid_request_error", NULL,
                        "duplicate or conflicting credentials: send one key, as `Authorization: Bearer "
                        "KEY` or `x-api-key: KEY`");
        return consumed;
    }
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
        models_is_path(req->path) &&
        !(path_route >= 0 && !cfg->routes[path_route].prefix &&
          cfg->routes[path_route].path_len == req->path.len)) {
        send_models(c, req->path);
        return consumed;
    }
    if (path_route >= 0 && cfg->routes[path_route].kind == ROUTE_AI &&
        !(req->body == BODY_NONE || (req->body == BODY_LENGTH && req->content_length == 0))) {
        c->req.route = path_route;
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
    c->req.route = path_route;
    if (c->req.route < 0) {
        conn_send_error(c, 404, "invalid_request_error", "not_found", "no route for this path");
        return head + (size_t)body_avail;
    }
    conn_choose_pool(c);
    c->req.out = xbuf_get(sh);
    if (!c->req.out) {
        conn_send_error(c, 503, "server_error", "no_capacity", "out of memory");
        return n;
    }
    struct http_forward fwd = conn_forward_info(c);
    size_t hlen = http_write_upstream_head(c->req.out->data, sh->xbuf_size, req, &fwd);
    if (hlen == 0) {
        conn_send_error(c, 431, "invalid_request_error", NULL, "request head too large to forward");
        return head + (size_t)body_avail;
    }
    size_t room = sh->xbuf_size - hlen;
    size_t copy = (size_t)body_avail < room ? (size_t)body_avail : room;
    memcpy(c->req.out->data + hlen, src + head, copy);
    c->req.out->len = (uint32_t)(hlen + copy);
    c->req.out->off = 0;
    c->req.in_body = (uint32_t)((size_t)body_avail - copy);
    c->req.bytes_in += copy;
    c->req.body_in_first_send = conn_request_body_complete(c) && c->req.in_body == 0;

    if (c->req.expect_continue && !conn_request_body_complete(c) && body_avail == 0) {
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

/* Moves the unconsumed input to the front of its buffer. */
static void in_compact(struct conn *c)
{
    struct xbuf *b = c->in;
    if (!b || b->off == 0 || c->in_pinned)
        return;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}

/* Appends received bytes to c->in; returns false if they did not all fit. */
static bool in_append(struct conn *c, const char *p, size_t n)
{
    if (!in_reserve(c))
        return false;
    struct xbuf *b = c->in;
    uint32_t cap = c->sh->xbuf_size;
    if (b->len + n > b->cap)
        in_compact(c);
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
                c->req.keep_alive = false;
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
        if (c->req.body_total > conn_config(c)->server.max_body) {
            conn_send_error(c, 413, "invalid_request_error", NULL, "request body too large");
            return;
        }
        if (!in_append(c, p, n)) {
            conn_send_error(c, 503, "server_error", NULL, "out of memory queueing the request body");
            return;
        }
        c->req.in_body += (uint32_t)k;
        pump_request_body(c);
        /* the body goes on at the backend's pace: from the multishot recv to one
         * buffer at a time (what the multishot already brought is queued) */
        if (c->recv_armed && c->recv_multishot && streaming_body(c))
            cancel_recv(c);
    } else if (!in_append(c, p, n)) {
        c->req.error = "client sent more than aigw queues while busy";
        conn_send_error(c, 400, "invalid_request_error", NULL, "too much data sent ahead of the response");
        return;
    }
    if (in_queue_full(c))
        pause_recv(c);
}

/* What the transport delivers: a request head, or bytes while a request runs. */
static void on_client_bytes(struct conn *c, const char *p, size_t n)
{
    if (c->state == CS_IDLE || c->state == CS_HEAD)
        on_head_bytes(c, p, n);
    else if (c->state != CS_CLOSING)
        on_busy_bytes(c, p, n);
}

static void on_recv(struct conn *c, struct io_uring_cqe *cqe)
{
    struct shard *sh = c->sh;
    int res = cqe->res;
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->recv_armed = false;
    if (res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        c->tr->received(c, shard_recv_buf(sh, bid), (size_t)res, on_client_bytes);
        shard_release_recv_buf(sh, bid);
    } else if (res == -ENOBUFS) {
        /* the shard's buffer ring ran dry; nothing lost, re-armed below */
    } else if (res == -ECANCELED) {
        /* our own pause; if reading resumed meanwhile, it is re-armed below */
    } else if (c->state != CS_CLOSING) {
        /* EOF or error: the client is gone. Mid-request the upstream is closed at
         * once so the backend stops generating. */
        conn_client_aborted(c, res == 0 ? "client closed" : "client reset");
        return;
    }
    if (!c->recv_armed && !c->recv_paused && c->state != CS_CLOSING)
        arm_recv(c);
}

/* ---- talking to the upstream ---- */

static void up_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    struct upconn *u = c->at.up;
    c->at.up_sending = true;
    if (u->tls) {
        upstream_tls_send(u, p, n);     /* encrypted now: owner is not read later */
        return;
    }
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_send(sqe, u->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_SEND));
    u->ops++;
    u->io_buf = owner;
}

static void up_recv_head(struct conn *c)
{
    struct upconn *u = c->at.up;
    if (!c->at.rbuf) {
        c->at.rbuf = xbuf_get(c->sh);
        if (!c->at.rbuf) {
            conn_send_error(c, 502, "server_error", "upstream_error", "out of memory");
            return;
        }
    }
    if (u->tls) {
        upstream_tls_recv(u, c->at.rbuf->data + c->at.rbuf->len, c->sh->xbuf_size - c->at.rbuf->len);
        return;
    }
    if (upstream_head_from_watch(c))
        return;     /* a pooled connection's idle watch is this recv already */
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_recv(sqe, u->fd, c->at.rbuf->data + c->at.rbuf->len, c->sh->xbuf_size - c->at.rbuf->len, 0);
    /* the request has only just gone out: wait for readiness instead of a
     * recvmsg that would almost always find nothing yet */
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_RECV));
    u->ops++;
    u->io_buf = c->at.rbuf;
}

/* Connected (or a pooled connection taken): send the head and what body we have. */
void conn_upstream_ready(struct conn *c)
{
    arm_timer(c, T_IDLE, conn_idle_ms(c));
    c->last_activity_ms = c->sh->now_ms;
    up_send(c, c->req.out, c->req.out->data + c->req.out->off, c->req.out->len - c->req.out->off);
}

static void request_sent(struct conn *c)
{
    if (!c->req.body_in_first_send) {
        conn_drop_buf(c, c->req.out);
        c->req.out = NULL;
    }
    /* first_byte runs from the first attempt's request: a retry gets what is left */
    uint64_t now = c->sh->now_ms;
    if (!c->req.retry_deadline_ms)
        c->req.retry_deadline_ms = now + conn_pool(c)->first_byte_ms;
    arm_timer(c, T_FIRST_BYTE, c->req.retry_deadline_ms > now ? c->req.retry_deadline_ms - now : 1);
    up_recv_head(c);
}

static void pump_request_body(struct conn *c)
{
    if (c->at.up_sending || !c->at.up || c->at.up->state != UP_BUSY || c->req.out)
        return;
    if (c->req.in_body > 0) {
        c->in_pinned = true;
        up_send(c, c->in, c->in->data + c->in->off, c->req.in_body);
    } else if (conn_request_body_complete(c)) {
        request_sent(c);
    }
}

static void retry_or_fail(struct conn *c, int err, const char *why)
{
    /* A pooled connection the backend had already closed: the request never reached
     * it, so it is safe to send again on a fresh connection once. */
    if (c->at.upstream_reused && c->req.body_in_first_send && !c->at.retried && c->req.out && !c->req.resp_started) {
        c->at.retried = true;
        abandon_upstream(c);
        c->req.out->off = 0;
        upstream_acquire_new(c);
        return;
    }
    conn_attempt_failed(c, BF_RESET, err, why);
}

/* The backend failed this attempt: count it against the backend, then try
 * another one if the request may be retried, else answer the error. */
void conn_attempt_failed(struct conn *c, enum backend_failure f, int err, const char *why)
{
    if (c->req.trace.sampled)
        req_trace_attempt_failed(c, why);
    dispatch_attempt_result(c, f);
    if (dispatch_retry(c))
        return;
    conn_upstream_failed(c, err, why);
}

/* A new attempt on the backend dispatch chose (c->at.backend, c->at.probe): what
 * the previous attempt held goes first (its upstream connection is closed: its
 * state is unknown), then every other attempt field starts here. */
static void attempt_begin(struct conn *c)
{
    if (c->at.up)
        abandon_upstream(c);
    conn_drop_buf(c, c->at.rbuf);
    if (c->req.out)
        c->req.out->off = 0;
    c->in_pinned = false;
    c->req.status = 0;
    c->at = (struct attempt){ .backend = c->at.backend, .probe = c->at.probe, .start_us = c->sh->now_us };
    if (c->req.ntried < ALOG_BACKENDS_MAX)
        c->req.backends_tried[c->req.ntried++] = c->at.backend;
    if (c->req.trace.sampled)
        req_trace_attempt_begin(c);
}

/* The client learns that capacity ran out, not how the fleet is organised: the
 * pool stays in the access log and metrics. */
static void send_shed(struct conn *c, enum shed_reason reason)
{
    const char *msg;
    if (reason == SHED_NO_BACKEND) {
        c->req.error = "no backend up";
        msg = "No backend is available for this request; retry later";
    } else if (reason == SHED_QUEUE_FULL) {
        c->req.error = "queue full";
        msg = "All backends are busy and the queue is full; retry later";
    } else {
        c->req.error = "queue timeout";
        msg = "All backends stayed busy for too long; retry later";
    }
    conn_send_error(c, 503, "server_error", "no_capacity", msg);
}

void conn_dispatched(struct conn *c, struct dispatch_outcome o)
{
    switch ((enum dispatch_verdict)o.verdict) {
    case DISPATCH_GO:
        attempt_begin(c);
        c->state = CS_UPSTREAM;
        if (c->req.ai && c->req.body && !ai_request_build_out(c))
            return;
        upstream_acquire(c);
        break;
    case DISPATCH_QUEUED:
        c->state = CS_UPSTREAM;
        arm_timer(c, T_QUEUE, o.queue_ms);
        break;
    case DISPATCH_SHED:
        c->req.retry_after_s = o.retry_after_s;
        send_shed(c, (enum shed_reason)o.shed_reason);
        break;
    }
}

void conn_upstream_failed(struct conn *c, int err, const char *why)
{
    c->req.termination = err == ETIMEDOUT ? TERM_UPSTREAM_TIMEOUT : TERM_UPSTREAM_ERROR;
    if (err == ETIMEDOUT && c->tphase == T_FIRST_BYTE)
        conn_send_error(c, 504, "server_error", "upstream_timeout", why);
    else
        conn_send_error(c, 502, "server_error", "upstream_error", why);
}

static void on_up_sent(struct conn *c, int res)
{
    c->at.up_sending = false;
    if (res <= 0) {
        c->in_pinned = false;
        retry_or_fail(c, -res, res == 0 ? "upstream closed" : "upstream send failed");
        return;
    }
    c->last_activity_ms = c->sh->now_ms;
    if (c->req.out) {
        c->req.out->off += (uint32_t)res;
        if (c->req.out->off < c->req.out->len) {
            up_send(c, c->req.out, c->req.out->data + c->req.out->off, c->req.out->len - c->req.out->off);
            return;
        }
        if (!c->req.body_in_first_send) {
            conn_drop_buf(c, c->req.out);
            c->req.out = NULL;
        } else {
            request_sent(c);
            return;
        }
    } else {
        c->in_pinned = false;
        c->req.in_body -= (uint32_t)res;
        c->req.bytes_in += (uint64_t)res;
        c->in->off += (uint32_t)res;
        if (c->in->off == c->in->len) {
            conn_drop_buf(c, c->in);
            c->in = NULL;
        } else {
            /* no send reads the queue now: room at its end for the next buffer */
            in_compact(c);
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
    if (!c->at.first_byte_us) {
        /* first_byte is met: the rest of the head may come at the idle pace */
        c->at.first_byte_us = sh->now_us;
        arm_timer(c, T_IDLE, conn_idle_ms(c));
    }
    c->last_activity_ms = sh->now_ms;
    c->at.rbuf->len += (uint32_t)res;
    struct http_response *resp = &sh->scratch_resp;
    for (;;) {
        const char *why = NULL;
        const char *p = c->at.rbuf->data + c->at.rbuf->off;
        size_t n = c->at.rbuf->len - c->at.rbuf->off;
        int r = http_parse_response(p, n, conn_config(c)->server.max_header, c->req.method_id, resp, &why);
        if (r == HTTP_INCOMPLETE) {
            if (c->at.rbuf->len == sh->xbuf_size) {
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
        c->at.rbuf->off += (uint32_t)resp->head_len;
        if (c->at.rbuf->off == c->at.rbuf->len) {
            c->at.rbuf->off = c->at.rbuf->len = 0;
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
    conn_drop_buf(c, c->req.out);
    c->req.out = NULL;
    xbuf_put(sh, c->req.body);
    c->req.body = NULL;
    struct relay_outcome o = relay_response_head(c, resp);
    if (o.step == RELAY_MORE) {
        conn_set_timer(c, T_IDLE, conn_timeouts(c)->idle_ms);
        conn_send_out(c);
        return;
    }
    relay_act(c, o);
}

void conn_on_upstream_cqe(struct conn *c, enum op op, int res)
{
    if (op == OP_UP_SEND)
        on_up_sent(c, res);
    else if (c->state == CS_UPSTREAM)
        on_up_head(c, res);
    else if (c->state == CS_RELAY)
        relay_act(c, relay_on_upstream_recv(c, res));
    conn_maybe_free(c);
}

/* ---- sending to the client ---- */

void conn_send_out(struct conn *c)
{
    if (c->send_inflight) {
        c->send_deferred = true;    /* behind our 100 Continue */
        return;
    }
    client_send(c, c->req.out, c->req.out->data + c->req.out->off, c->req.out->len - c->req.out->off);
}

/* What the relay said became of the response. */
static void relay_act(struct conn *c, struct relay_outcome o)
{
    switch (o.step) {
    case RELAY_MORE:
        break;
    case RELAY_DONE:
        request_finish(c);
        break;
    case RELAY_ABORT:
        c->req.error = o.why;
        c->req.termination = TERM_UPSTREAM_ERROR;
        c->relay.resp_keep_alive = false;
        conn_close(c);
        break;
    case RELAY_REFUSED:
        conn_upstream_failed(c, EPROTO, o.why);
        break;
    }
}

static void on_sent(struct conn *c, int res)
{
    c->send_inflight = false;
    if (res < 0) {
        conn_client_aborted(c, "client send failed");
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
    c->req.bytes_out += (uint64_t)res;
    if (c->state == CS_LOCAL) {
        c->req.out->off += (uint32_t)res;
        if (c->req.out->off < c->req.out->len) {
            conn_send_out(c);
            return;
        }
        request_finish(c);
        return;
    }
    if (c->state == CS_RELAY)
        relay_act(c, relay_client_sent(c, res));
}

/* ---- end of a request ---- */

/* The LLM view of a finished AI request (metrics.h, struct ai_observation). */
static void observe_ai(struct conn *c)
{
    const struct gen *g = c->req.sg->g;
    const struct request *rq = &c->req;
    uint64_t now = c->sh->now_us;
    bool answered = c->at.backend >= 0 && c->at.first_byte_us;
    struct ai_observation o = {
        .route_pool_slot = rq->route >= 0 && rq->pool >= 0
                               ? g->route_pool_metric_slot[(size_t)rq->route * g->cfg->npools + (unsigned)rq->pool]
                               : -1,
        .backend_slot = c->at.backend >= 0 ? g->backend_metric_slot[c->at.backend] : -1,
        .model_slot = rq->model_slot,
        .status = rq->status,
        .answered = answered,
        /* a stream's first byte for the client that matters is its first token */
        .first_byte_us = (rq->token_events ? rq->first_token_us : c->at.first_byte_us) - rq->start_us,
        .backend_us = now - c->at.start_us,
        .token_gap_us = rq->token_events >= 2 ? (rq->last_token_us - rq->first_token_us) / (rq->token_events - 1) : 0,
        .prompt_tokens = rq->tokens_in,
        .completion_tokens = rq->tokens_out,
    };
    metrics_observe_ai(c->sh->m, &o);
}

static void request_finish(struct conn *c)
{
    struct shard *sh = c->sh;
    struct shard_gen *sg = c->req.sg;
    if (!sg)
        return;
    const struct config *cfg = sg->g->cfg;
    uint64_t dur = sh->now_us - c->req.start_us;
    usage_settle(c);
    int route_slot = c->req.route >= 0 ? sg->g->route_metric_slot[c->req.route] : 0;
    metrics_observe_request(sh->m, route_slot, c->req.status, dur);
    if (c->req.ai)
        observe_ai(c);
    if (c->req.termination)
        mc_add(&sh->m->terminations[c->req.termination], 1);
    if (cfg->log.access != ACCESS_OFF) {
        struct alog_entry e = {
            .time_us = c->req.start_us + sh->realtime_offset_us,
            .client = { c->client, c->client_len },
            .method = { c->req.method, strlen(c->req.method) },
            .target = { c->req.target, c->req.target_len },
            .request_id = { c->req.request_id, c->req.request_id_len },
            .route = c->req.route >= 0 ? cfg->routes[c->req.route].name : "",
            /* a shed request names the pool that had no room (its 503 body does not) */
            .pool = c->at.backend >= 0 ? sg->g->backend_pool[c->at.backend]
                    : c->req.pool >= 0 ? cfg->pools[c->req.pool].name : "",
            .backend = c->at.backend >= 0 ? sg->g->backend_cfg[c->at.backend]->addr.text : "",
            .status = c->req.status,
            .bytes_in = c->req.bytes_in,
            .bytes_out = c->req.bytes_out,
            .duration_us = dur,
            .first_byte_us = c->at.first_byte_us ? (int64_t)(c->at.first_byte_us - c->req.start_us) : -1,
            .upstream_reused = c->at.upstream_reused,
            .queue_us = c->req.queue_us,
            .nbackends = c->req.ntried,
            .fallback = c->req.fell_back,
            .termination = (enum termination)c->req.termination,
            .error = c->req.error,
            .ai = c->req.ai,
            .model = { c->req.model, c->req.model_len },
            .stream = c->req.stream,
            .tokens_in = c->req.tokens_in,
            .tokens_out = c->req.tokens_out,
            .cost_pusd = c->req.cost_pusd,
            .limit = admission_limit_label(c),
        };
        for (unsigned i = 0; i < c->req.ntried; i++)
            e.backends[i] = sg->g->backend_cfg[c->req.backends_tried[i]]->addr.text;
        if (c->req.key >= 0) {
            e.key = keyring_entry(cfg->keys.ring, (unsigned)c->req.key)->name;
            uint32_t t = cfg->keys.key_tier ? cfg->keys.key_tier[c->req.key] : CFG_NO_TIER;
            static const char *const prio[] = { [PRIORITY_HIGH] = "high",
                                                 [PRIORITY_NORMAL] = "normal",
                                                 [PRIORITY_LOW] = "low" };
            e.priority = prio[t == CFG_NO_TIER ? PRIORITY_NORMAL : cfg->tiers[t].priority];
        }
        if (c->tls) {
            struct tls_log_facts f;
            transport_tls_facts(c, &f);
            e.tls_version = f.version;
            e.tls_cipher = f.cipher;
            e.tls_sni = f.sni;
            e.tls_client_subject = f.subject;
        }
        alog_write(sh->id, &e);
    }
    if (c->req.trace.sampled)
        req_trace_finish(c);
    dispatch_release(c);
    /* buffers first, while c->at.up is attached: an op in flight may still use them */
    xbuf_put(sh, c->req.body);      /* never used by an operation */
    c->req.body = NULL;
    conn_drop_buf(c, c->req.out);
    c->req.out = NULL;
    conn_drop_buf(c, c->at.rbuf);
    c->at.rbuf = NULL;
    relay_end(c);
    if (c->relay.splice_ops) {
        /* a splice in io-wq resolves its input fd when it runs: the pipes and the
         * upstream socket stay open until its completion (conn_maybe_free) */
        c->pipe_orphan = c->relay.pipe;
        if (c->relay.ipipe) {
            c->relay.ipipe->next_free = c->pipe_orphan;
            c->pipe_orphan = c->relay.ipipe;
        }
        if (c->at.up)
            c->up_fd_orphan = upconn_detach_fd(c->at.up);
        c->req.keep_alive = false;      /* (only a closing connection gets here) */
    } else {
        pipe_put(sh, c->relay.pipe, c->relay.pipe_bytes == 0);
        pipe_put(sh, c->relay.ipipe, c->relay.ipipe_bytes == 0);
        xbuf_put(sh, c->relay.ibuf);
        c->relay.ibuf = NULL;
    }
    c->relay.pipe = c->relay.ipipe = NULL;
    c->relay.pipe_bytes = c->relay.ipipe_bytes = 0;
    if (c->at.up) {
        struct upconn *u = c->at.up;
        c->at.up = NULL;
        u->owner = NULL;
        upstream_release(u, c->relay.resp_done && c->relay.resp_keep_alive && !c->relay.splice_ops);
    }
    c->req.sg = NULL;     /* no request: the next one is born in request_begin */
    shard_gen_request_done(sh, sg);
    if (c->state == CS_CLOSING)
        return;

    bool handed_over = atomic_load_explicit(&rt.handed_over, memory_order_relaxed);
    if (!c->req.keep_alive || (sh->draining && !handed_over) || c->req.in_body > 0) {
        conn_close_clean(c);
        return;
    }
    c->state = CS_IDLE;
    /* the request's generation may be gone now: the next wait is the current one's */
    uint64_t keepalive_ms = sh->sg->g->cfg->timeouts.keepalive_ms;
    if (sh->draining && keepalive_ms > HANDOVER_IDLE_GRACE_MS)
        keepalive_ms = HANDOVER_IDLE_GRACE_MS;
    arm_timer(c, T_KEEPALIVE, keepalive_ms);
    resume_recv(c);
    process_input(c);
}

/* ---- timers ---- */

void conn_timer_fired(struct conn *c)
{
    struct shard *sh = c->sh;
    switch (c->tphase) {
    case T_KEEPALIVE:
        conn_close_clean(c);
        break;
    case T_HEADER:
        if (c->state == CS_HEAD) {
            c->req.termination = TERM_CLIENT_TIMEOUT;
            reject_head(c, 408, "request head not received in time");
        }
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
    case T_HANDSHAKE:
        transport_tls_expired(c);
        break;
    case T_IDLE:
        if (sh->now_ms < c->last_activity_ms + conn_idle_ms(c)) {
            timer_arm(&sh->timers, &c->timer, c->last_activity_ms + conn_idle_ms(c));
            break;
        }
        c->req.error = "idle timeout";
        if (c->state == CS_BODY ||
            (c->state == CS_UPSTREAM && !c->req.resp_started && !conn_request_body_complete(c) && c->req.in_body == 0)) {
            /* we wait for the client's body, not for the backend */
            c->req.termination = TERM_CLIENT_TIMEOUT;
            conn_send_error(c, 408, "invalid_request_error", NULL, "request body not received in time");
        } else if (c->state == CS_UPSTREAM && !c->req.resp_started) {
            c->req.termination = TERM_UPSTREAM_TIMEOUT;
            if (c->at.up)
                dispatch_attempt_result(c, BF_TIMEOUT);
            conn_send_error(c, 504, "server_error", "upstream_timeout", "upstream idle timeout");
        } else {
            /* mid-response: a send to the client still waiting means the
             * client stopped reading; otherwise the backend went quiet */
            if (c->req.sg)
                c->req.termination = c->send_inflight ? TERM_CLIENT_TIMEOUT : TERM_UPSTREAM_TIMEOUT;
            conn_close(c);
        }
        break;
    }
    conn_maybe_free(c);
}

/* ---- completions ---- */

void conn_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->ops--;
    int sent = cqe->res;
    if (op == OP_CLIENT_SEND && c->tr->sent) {
        sent = c->tr->sent(c, cqe->res);
        if (sent == TRANSPORT_SENT_OWN) {
            conn_maybe_free(c);
            return;
        }
    }
    if (op == OP_CLIENT_SEND) {
        if (c->send_buf_orphan)
            xbuf_put(c->sh, c->send_buf);
        c->send_buf = NULL;
        c->send_buf_orphan = false;
        if (c->ring_buf_orphan)
            relay_ring_buf_put(c->sh, c->ring_orphan_bid);
        c->ring_buf_orphan = false;
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
        on_sent(c, sent);
        break;
    default:
        relay_act(c, relay_on_cqe(c, op, cqe));
        break;
    }
    conn_maybe_free(c);
}
