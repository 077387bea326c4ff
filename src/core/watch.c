/* The backend watcher: one thread for the process (not one per shard) fetches
 * each load-aware pool's `metrics` path from every backend every
 * `metrics_interval`, reads the engine's queue and KV use from it
 * (src/proto/promtext.c), and publishes them in the generation's per-backend
 * cells, which shards read with relaxed loads when they choose a backend. Only
 * this thread writes the cells. It runs the active health checks the same way
 * (`health` every `health_interval`: down after the pool's health_fall failed
 * checks, up after health_rise passing ones), logs the circuits the shards open
 * and close (dispatch.c), and publishes the per-backend gauges of /metrics. It
 * also asks each backend of a pool that AI routes use for its model list (the
 * pool's `model_list`, GET /v1/models by default: at start, every
 * MODELS_INTERVAL_MS, and as soon as the backend is available again) and
 * publishes what they serve as the generation's immutable served_models
 * snapshot, which aigw's own /v1/models lists (models.c). Control
 * plane: plain non-blocking sockets under poll(2), never on a shard's ring. A
 * `tls = on` pool is probed over TLS: the engine over the probe's own buffers,
 * verified as the shards verify (a probe that cannot verify fails).
 *
 * Like a shard, it holds a reference on the generation it works from and moves
 * to the newest one by following `newer`, releasing what it leaves. */
#include "core/watch.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/backend_admin.h"
#include "core/log.h"
#include "core/gen.h"
#include "core/shard.h"
#include "core/readiness.h"
#include "core/upstream_tls.h"
#include "proto/http1.h"
#include "proto/model_list.h"
#include "proto/promtext.h"
#include "policy/glob.h"
#include "tls/tls.h"
#include "util/clock.h"

#define WATCH_MAX_BODY (1 << 20)    /* a /metrics body larger than this is not read */
#define WATCH_TIMEOUT_MS 1000       /* one scrape, connect to last byte */
#define WATCH_TICK_MS 50            /* gauges refresh at least this often */
#define HEALTH_TIMEOUT_MAX_MS 2000  /* a check gets min(health_interval, this) */

enum probe_phase { PROBE_IDLE, PROBE_CONNECTING, PROBE_HANDSHAKE, PROBE_SENDING, PROBE_READING };
#define PROBE_TLS_BUF 16384         /* ciphertext each way */
#define MODELS_INTERVAL_MS 30000    /* a backend's model list is asked again this often */
#define MODELS_RETRY_MS 5000        /* after an unanswered ask (the last good list stays) */
#define MODELS_MAX_PER_BACKEND 1024 /* ids past this are not kept */
enum target_kind { TARGET_METRICS, TARGET_HEALTH, TARGET_MODELS };

/* One backend's scrape or health check: at most one in flight. */
struct target {
    unsigned backend;           /* global index in the generation */
    const struct cfg_pool *pool;
    uint8_t kind;               /* enum target_kind */
    const char *path;
    uint64_t interval_ms, timeout_ms;
    unsigned streak;            /* health: consecutive results against the current verdict */
    int fd;
    uint8_t phase;
    bool failing;               /* the last scrape failed (logged once per run of failures) */
    uint64_t next_ms, deadline_ms;
    char req[1024];
    size_t req_len, sent;
    char *buf;                  /* the response */
    size_t len, cap;
    /* TLS pools: the engine's connection and its ciphertext, each way */
    struct tls_conn *tls;
    char *cin, *cout;
    size_t cin_len, cout_len, cout_sent;
    /* models: the ids of the last good answer, each NUL-terminated, back to back */
    char *ids;
    size_t ids_len;
    unsigned nids;
};

static bool models_changed;         /* a target's ids changed: publish a new snapshot */
static pthread_t watch_thread;
static int stop_fd = -1;
static bool running;

static void probe_close(struct target *t)
{
    if (t->fd >= 0)
        close(t->fd);
    if (t->tls)
        tls_conn_free(t->tls);
    t->tls = NULL;
    t->cin_len = t->cout_len = t->cout_sent = 0;
    t->fd = -1;
    t->phase = PROBE_IDLE;
    t->len = 0;
}

/* A health check's result: the verdict flips after a run of contrary ones. */
static void health_result(struct gen *g, struct target *t, bool ok, const char *why)
{
    struct backend_health *h = &g->health[t->backend];
    bool up = atomic_load_explicit(&h->checked_up, memory_order_relaxed);
    if (ok == up) {
        t->streak = 0;
        return;
    }
    if (++t->streak < (up ? t->pool->health_fall : t->pool->health_rise))
        return;
    t->streak = 0;
    atomic_store_explicit(&h->checked_up, ok, memory_order_relaxed);
    const char *addr = g->backend_cfg[t->backend]->addr.text;
    if (ok)
        log_info("pool %s backend %s: up: %d health checks of %s passed", t->pool->name, addr,
                 t->pool->health_rise, t->path);
    else
        log_warn("pool %s backend %s: down: %d health checks of %s failed (%s)", t->pool->name, addr,
                 t->pool->health_fall, t->path, why);
}

static void probe_failed(struct gen *g, struct target *t, const char *why)
{
    if (t->kind == TARGET_HEALTH) {
        health_result(g, t, false, why);
    } else {
        if (!t->failing)
            log_warn("pool %s backend %s: %s %s: %s", t->pool->name, g->backend_cfg[t->backend]->addr.text,
                     t->kind == TARGET_MODELS ? "models" : "metrics", t->path, why);
        t->failing = true;
        if (t->kind == TARGET_MODELS)
            t->next_ms = clock_mono_ms() + MODELS_RETRY_MS;
    }
    probe_close(t);
}

static void probe_start(struct gen *g, struct target *t, uint64_t now)
{
    const struct cfg_addr *a = &g->backend_cfg[t->backend]->addr;
    t->next_ms = now + t->interval_ms;
    t->deadline_ms = now + t->timeout_ms;
    t->fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
        probe_failed(g, t, strerror(errno));
        return;
    }
    /* upstream_auth too: a remote service (or a TLS front) may want it everywhere */
    const char *auth = t->pool->upstream_auth;
    int n = snprintf(t->req, sizeof t->req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: aigw\r\nAccept: %s\r\n"
                     "%s%s%sConnection: close\r\n\r\n",
                     t->path, a->text, t->kind == TARGET_MODELS ? "application/json" : "text/plain",
                     auth[0] ? "Authorization: Bearer " : "", auth, auth[0] ? "\r\n" : "");
    t->req_len = n > 0 && (size_t)n < sizeof t->req ? (size_t)n : 0;
    t->sent = 0;
    t->len = 0;
    if (connect(t->fd, (const struct sockaddr *)&a->sa, a->salen) < 0 && errno != EINPROGRESS) {
        probe_failed(g, t, strerror(errno));
        return;
    }
    t->phase = PROBE_CONNECTING;
}

struct dechunked {
    char *p;
    size_t len;
};

static void dechunk_into(void *ctx, const char *p, size_t n)
{
    struct dechunked *d = ctx;
    memmove(d->p + d->len, p, n);   /* in place: the output never passes the input */
    d->len += n;
}

struct id_list {
    char *p;
    size_t len, cap;
    unsigned n;
    bool oom;
};

static void id_add(void *ctx, const char *id, size_t len)
{
    struct id_list *l = ctx;
    if (l->oom || l->n >= MODELS_MAX_PER_BACKEND)
        return;
    if (l->cap - l->len < len + 1) {
        size_t want = l->cap ? 2 * l->cap : 1024;
        while (want - l->len < len + 1)
            want *= 2;
        char *np = realloc(l->p, want);
        if (!np) {
            l->oom = true;
            return;
        }
        l->p = np;
        l->cap = want;
    }
    memcpy(l->p + l->len, id, len);
    l->p[l->len + len] = '\0';
    l->len += len + 1;
    l->n++;
}

/* A backend's GET /v1/models answer: its ids replace the ones it gave before. */
static void models_done(struct gen *g, struct target *t, const char *body, size_t blen)
{
    struct id_list l = { 0 };
    if (model_list_parse(body, blen, id_add, &l) < 0 || l.oom) {
        free(l.p);
        probe_failed(g, t, l.oom ? "out of memory" : "not a JSON model list");
        return;
    }
    const char *addr = g->backend_cfg[t->backend]->addr.text;
    if (l.len != t->ids_len || (l.len && memcmp(l.p, t->ids, l.len) != 0)) {
        log_info("pool %s backend %s: serves %u model%s%s%.200s", t->pool->name, addr, l.n, l.n == 1 ? "" : "s",
                 l.n ? ", the first: " : "", l.n ? l.p : "");
        free(t->ids);
        t->ids = l.p;
        t->ids_len = l.len;
        t->nids = l.n;
        models_changed = true;
    } else {
        free(l.p);
    }
    if (t->failing)
        log_info("pool %s backend %s: models %s readable again", t->pool->name, addr, t->path);
    t->failing = false;
    probe_close(t);
}

/* The whole response is in t->buf: read the engine's load (or models) from it. */
static void probe_done(struct gen *g, struct target *t, uint64_t now)
{
    struct http_response resp;
    const char *why = NULL;
    if (http_parse_response(t->buf, t->len, 65536, 1 /* GET */, &resp, &why) != HTTP_OK) {
        probe_failed(g, t, why ? why : "malformed response");
        return;
    }
    if (t->kind == TARGET_HEALTH) {
        char msg[48];
        snprintf(msg, sizeof msg, "status %d", resp.status);
        if (resp.status >= 200 && resp.status < 300) {
            health_result(g, t, true, NULL);
            probe_close(t);
        } else {
            probe_failed(g, t, msg);
        }
        return;
    }
    if (resp.status != 200) {
        char msg[48];
        snprintf(msg, sizeof msg, "status %d", resp.status);
        probe_failed(g, t, msg);
        return;
    }
    char *body = t->buf + resp.head_len;
    size_t blen = t->len - resp.head_len;
    if (resp.body == BODY_LENGTH) {
        if (blen < resp.content_length) {
            probe_failed(g, t, "response cut short");
            return;
        }
        blen = (size_t)resp.content_length;
    } else if (resp.body == BODY_CHUNKED) {
        struct chunked ch;
        chunked_init(&ch);
        struct dechunked d = { body, 0 };
        if (chunked_scan(&ch, body, blen, dechunk_into, &d, &why) < 0 || !ch.done) {
            probe_failed(g, t, why ? why : "chunked body cut short");
            return;
        }
        blen = d.len;
    }
    if (t->kind == TARGET_MODELS) {
        models_done(g, t, body, blen);
        return;
    }
    struct engine_load load;
    struct prom_error perr;
    if (engine_load_parse(body, blen, &load, &perr) != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "line %zu: %s", perr.line, perr.msg ? perr.msg : "unreadable");
        probe_failed(g, t, msg);
        return;
    }
    struct backend_signal *s = &g->signal[t->backend];
    atomic_store_explicit(&s->waiting,
                          load.has_waiting ? (int32_t)(load.waiting > 1e9 ? 1e9 : load.waiting) : -1,
                          memory_order_relaxed);
    atomic_store_explicit(&s->running,
                          load.has_running ? (int32_t)(load.running > 1e9 ? 1e9 : load.running) : -1,
                          memory_order_relaxed);
    atomic_store_explicit(&s->kv_permille, load.has_kv_usage ? (int32_t)(load.kv_usage * 1000 + 0.5) : -1,
                          memory_order_relaxed);
    uint32_t cache_tokens = load.has_cache_tokens ? (uint32_t)load.cache_tokens : 0;
    atomic_store_explicit(&s->cache_tokens, cache_tokens, memory_order_relaxed);
    atomic_store_explicit(&s->scraped_ms, now, memory_order_release);
    metrics_set_backend_cache_tokens(g->backend_metric_slot[t->backend], cache_tokens);
    if (load.has_prefix_cache)
        metrics_set_backend_prefix_cache(g->backend_metric_slot[t->backend],
                                         (uint64_t)(load.prefix_cache_hits < 1e18 ? load.prefix_cache_hits : 1e18),
                                         (uint64_t)(load.prefix_cache_queries < 1e18 ? load.prefix_cache_queries : 1e18));
    if (t->failing)
        log_info("pool %s backend %s: metrics readable again", t->pool->name,
                 g->backend_cfg[t->backend]->addr.text);
    t->failing = false;
    probe_close(t);
}

/* Room for at least 4 KiB more of the response; false (failed) past the limit. */
static bool response_room(struct gen *g, struct target *t)
{
    if (t->cap - t->len >= 4096)
        return true;
    size_t want = t->cap ? t->cap * 2 : 16384;
    if (want > WATCH_MAX_BODY + 65536) {
        probe_failed(g, t, "response too large");
        return false;
    }
    char *nb = realloc(t->buf, want);
    if (!nb) {
        probe_failed(g, t, "out of memory");
        return false;
    }
    t->buf = nb;
    t->cap = want;
    return true;
}

/* ---- probes over TLS: the engine between the socket and the request ---- */

static bool probe_tls_begin(struct gen *g, struct target *t)
{
    if (!t->cin)
        t->cin = malloc(PROBE_TLS_BUF);
    if (!t->cout)
        t->cout = malloc(PROBE_TLS_BUF);
    char name[256];
    upstream_tls_server_name(t->pool, g->backend_cfg[t->backend], name, sizeof name);
    t->tls = t->cin && t->cout && t->pool->tls_client ? tls_conn_new_client(t->pool->tls_client, name, NULL)
                                                      : NULL;
    if (!t->tls) {
        probe_failed(g, t, "out of memory");
        return false;
    }
    t->phase = PROBE_HANDSHAKE;
    return true;
}

static void tls_window(struct target *t)
{
    struct tls_io *io = tls_conn_io(t->tls);
    io->in = t->cin;
    io->in_len = t->cin_len;
    io->in_off = 0;
    io->out = t->cout;
    io->out_len = t->cout_len;
    io->out_cap = PROBE_TLS_BUF;
}

static void tls_taken(struct target *t)
{
    struct tls_io *io = tls_conn_io(t->tls);
    memmove(t->cin, t->cin + io->in_off, t->cin_len - io->in_off);
    t->cin_len -= io->in_off;
    t->cout_len = io->out_len;
}

/* Moves ciphertext both ways without blocking: false (failed) on an error;
 * *eof when the backend closed its side. */
static bool tls_pump(struct gen *g, struct target *t, bool *eof)
{
    while (t->cout_sent < t->cout_len) {
        ssize_t n = send(t->fd, t->cout + t->cout_sent, t->cout_len - t->cout_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            probe_failed(g, t, strerror(errno));
            return false;
        }
        t->cout_sent += (size_t)n;
    }
    if (t->cout_sent == t->cout_len)
        t->cout_sent = t->cout_len = 0;
    *eof = false;
    if (t->cin_len < PROBE_TLS_BUF) {
        ssize_t n = recv(t->fd, t->cin + t->cin_len, PROBE_TLS_BUF - t->cin_len, 0);
        if (n > 0)
            t->cin_len += (size_t)n;
        else if (n == 0)
            *eof = true;
        else if (errno != EAGAIN && errno != EINTR) {
            probe_failed(g, t, strerror(errno));
            return false;
        }
    }
    return true;
}

static void probe_tls_step(struct gen *g, struct target *t, uint64_t now)
{
    bool eof;
    if (!tls_pump(g, t, &eof))
        return;
    while (t->phase == PROBE_HANDSHAKE) {
        tls_window(t);
        enum tls_status st = tls_handshake(t->tls);
        tls_taken(t);
        if (st == TLS_FAILED || st == TLS_CLOSED) {
            char why[200];
            snprintf(why, sizeof why, "tls handshake failed: %s: %s",
                     tls_fail_reason_name(tls_fail_reason(t->tls)), tls_fail_detail(t->tls));
            probe_failed(g, t, why);
            return;
        }
        if (st == TLS_WANT) {
            if (eof) {
                probe_failed(g, t, "closed during the tls handshake");
                return;
            }
            /* The send may be answered at once, and the rest of a flight the
             * engine had not seen may have arrived meanwhile: poll would not
             * report bytes already read, so the engine gets them now. */
            size_t had = t->cin_len;
            if (!tls_pump(g, t, &eof))
                return;
            if (t->cin_len > had || eof)
                continue;
            return;
        }
        t->phase = PROBE_SENDING;
    }
    if (t->phase == PROBE_SENDING) {
        tls_window(t);
        enum tls_status st = TLS_OK;
        size_t took = tls_write(t->tls, t->req, t->req_len, &st);
        tls_taken(t);
        if (took != t->req_len) {
            probe_failed(g, t, "tls write failed");
            return;
        }
        t->phase = PROBE_READING;
        if (!tls_pump(g, t, &eof))
            return;
    }
    /* reading: every record there is, then the verdict if the response is whole */
    for (;;) {
        for (;;) {
            if (!response_room(g, t))
                return;
            tls_window(t);
            enum tls_status st = TLS_OK;
            size_t k = tls_read(t->tls, t->buf + t->len, t->cap - t->len, &st);
            tls_taken(t);
            t->len += k;
            if (k > 0)
                continue;
            if (st == TLS_CLOSED || (st == TLS_WANT && eof)) {
                probe_done(g, t, now);      /* Connection: close: the response ends here */
                return;
            }
            if (st == TLS_FAILED) {
                probe_failed(g, t, "tls record error");
                return;
            }
            break;
        }
        if (t->kind == TARGET_HEALTH && t->len && memmem(t->buf, t->len, "\r\n\r\n", 4)) {
            probe_done(g, t, now);
            return;
        }
        if (!t->cout_len)
            return;
        /* bytes a send's pump read are not reported by poll again */
        size_t had = t->cin_len;
        if (!tls_pump(g, t, &eof) || (t->cin_len == had && !eof))
            return;
    }
}

/* What poll waits for: writable while connecting or with bytes to send. */
static short probe_events(const struct target *t)
{
    if (t->phase == PROBE_CONNECTING || (t->phase == PROBE_SENDING && !t->tls) || t->cout_len)
        return POLLOUT;
    return POLLIN;
}

/* Moves a probe on after poll said its socket is ready. */
static void probe_step(struct gen *g, struct target *t, short revents, uint64_t now)
{
    if (t->phase == PROBE_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            probe_failed(g, t, strerror(err ? err : errno));
            return;
        }
        t->phase = PROBE_SENDING;
        if (t->pool->tls && !probe_tls_begin(g, t))
            return;
    }
    if (t->phase == PROBE_HANDSHAKE || (t->tls && t->phase == PROBE_SENDING)) {
        probe_tls_step(g, t, now);
        return;
    }
    if (t->phase == PROBE_SENDING) {
        ssize_t n = send(t->fd, t->req + t->sent, t->req_len - t->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                probe_failed(g, t, strerror(errno));
            return;
        }
        t->sent += (size_t)n;
        if (t->sent == t->req_len)
            t->phase = PROBE_READING;
        return;
    }
    if (t->phase == PROBE_READING && t->tls) {
        probe_tls_step(g, t, now);
        return;
    }
    if (t->phase == PROBE_READING && (revents & (POLLIN | POLLHUP | POLLERR))) {
        if (!response_room(g, t))
            return;
        ssize_t n = recv(t->fd, t->buf + t->len, t->cap - t->len, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                probe_failed(g, t, strerror(errno));
            return;
        }
        if (n == 0) {
            probe_done(g, t, now);   /* Connection: close: the response ends here */
            return;
        }
        t->len += (size_t)n;
        /* a health check needs only the status line */
        if (t->kind == TARGET_HEALTH && memmem(t->buf, t->len, "\r\n\r\n", 4))
            probe_done(g, t, now);
    }
}

/* Whether the backends of pool p are asked for their models: an AI route sends
 * to it (as its pool or in its split) with a glob in its `models`. Routes that
 * name only exact models list those already. Routes that take any model are
 * catch-alls, often in front of services that are not engines, and list nothing
 * (as before), so their backends get no request they did not ask for. */
static bool pool_wants_models(const struct config *cfg, unsigned p)
{
    for (unsigned r = 0; r < cfg->nroutes; r++) {
        const struct cfg_route *route = &cfg->routes[r];
        if (route->kind != ROUTE_AI)
            continue;
        bool uses = route->nsplit == 0 && route->pool == p;
        for (unsigned i = 0; i < route->nsplit; i++)
            uses |= route->split[i].pool == p;
        if (!uses)
            continue;
        for (unsigned i = 0; route->models && i < glob_list_count(route->models); i++)
            if (!glob_list_is_literal(route->models, i))
                return true;
    }
    return false;
}

static bool backend_in_maintenance(const struct gen *g, unsigned b)
{
    return backend_admin_read(g->backend_metric_slot[b], g->backend_cfg[b]->weight).state == BACKEND_MAINT;
}

/* The targets of a generation: every backend of a pool with a metrics path, again
 * of one with a health path, and again of one AI routes use (its models). */
static struct target *targets_build(struct gen *g, unsigned *count)
{
    const struct config *cfg = g->cfg;
    struct target *t = calloc(cfg->nbackends ? 3 * cfg->nbackends : 1, sizeof *t);
    unsigned n = 0;
    if (!t) {
        *count = 0;
        return NULL;
    }
    uint64_t now = clock_mono_ms();
    for (unsigned p = 0; p < cfg->npools; p++) {
        const struct cfg_pool *pool = &cfg->pools[p];
        bool ai = pool_wants_models(cfg, p);
        for (unsigned i = 0; i < pool->nbackends; i++) {
            for (int kind = TARGET_METRICS; kind <= TARGET_MODELS; kind++) {
                const char *path = kind == TARGET_METRICS ? pool->metrics_path
                                   : kind == TARGET_HEALTH ? pool->health_path
                                   : ai                    ? pool->model_list_path
                                                           : "";
                if (!path[0])
                    continue;
                struct target *x = &t[n++];
                x->backend = g->pool_first_backend[p] + i;
                x->pool = pool;
                x->kind = (uint8_t)kind;
                x->path = path;
                if (kind == TARGET_METRICS || kind == TARGET_MODELS) {
                    x->interval_ms = kind == TARGET_METRICS ? pool->metrics_interval_ms : MODELS_INTERVAL_MS;
                    x->timeout_ms = WATCH_TIMEOUT_MS;
                } else {
                    x->interval_ms = pool->health_interval_ms;
                    x->timeout_ms = pool->health_interval_ms < HEALTH_TIMEOUT_MAX_MS
                                        ? pool->health_interval_ms
                                        : HEALTH_TIMEOUT_MAX_MS;
                }
                x->fd = -1;
                x->next_ms = now;
            }
        }
    }
    *count = n;
    return t;
}

static void targets_free(struct target *t, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        probe_close(&t[i]);
        free(t[i].buf);
        free(t[i].cin);
        free(t[i].cout);
        free(t[i].ids);
    }
    free(t);
}

/* A reload keeps what the backends said they serve: the ids move to the new
 * generation's target of the same pool and backend (asked again at once anyway). */
static void models_carry(struct target *from, unsigned nfrom, struct gen *gfrom, struct target *to, unsigned nto,
                         struct gen *gto)
{
    for (unsigned i = 0; i < nto; i++) {
        if (to[i].kind != TARGET_MODELS)
            continue;
        const char *addr = gto->backend_cfg[to[i].backend]->addr.text;
        for (unsigned j = 0; j < nfrom; j++) {
            if (from[j].kind != TARGET_MODELS || !from[j].ids || strcmp(from[j].pool->name, to[i].pool->name) != 0 ||
                strcmp(gfrom->backend_cfg[from[j].backend]->addr.text, addr) != 0)
                continue;
            to[i].ids = from[j].ids;
            to[i].ids_len = from[j].ids_len;
            to[i].nids = from[j].nids;
            from[j].ids = NULL;
            models_changed = true;
            break;
        }
    }
}

/* Builds the snapshot of every model target's ids and swaps it in. On failure
 * the old one stays (and is tried again at the next change). */
static void models_publish(struct gen *g, const struct target *t, unsigned n)
{
    size_t count = 0, bytes = 0;
    for (unsigned i = 0; i < n; i++)
        if (t[i].kind == TARGET_MODELS) {
            count += t[i].nids;
            bytes += t[i].ids_len;
        }
    struct served_models *s = malloc(sizeof *s + count * sizeof s->m[0] + bytes);
    if (!s) {
        log_warn("watcher: out of memory; /v1/models keeps the backends' previous lists");
        return;
    }
    char *store = (char *)&s->m[count];
    size_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        if (t[i].kind != TARGET_MODELS || !t[i].ids_len)
            continue;
        memcpy(store, t[i].ids, t[i].ids_len);
        const char *id = store;
        for (unsigned j = 0; j < t[i].nids; j++) {
            s->m[k++] = (struct served_model){ id, (unsigned)(t[i].pool - g->cfg->pools) };
            id += strlen(id) + 1;
        }
        store += t[i].ids_len;
    }
    s->n = (unsigned)k;
    served_models_sort(s);
    s->older = atomic_load_explicit(&g->served, memory_order_relaxed);
    atomic_store_explicit(&g->served, s, memory_order_release);
    models_changed = false;
}

/* A backend available again may have come back serving other models: ask now. */
static void models_on_return(struct gen *g, struct target *t, unsigned n, bool *was_up, uint64_t now)
{
    for (unsigned i = 0; i < n; i++) {
        if (t[i].kind != TARGET_MODELS)
            continue;
        bool up = backend_available(g, t[i].backend);
        if (up && !was_up[t[i].backend] && t[i].phase == PROBE_IDLE)
            t[i].next_ms = now;
        was_up[t[i].backend] = up;
    }
}

/* Logs what the shards did to the circuits since the last look. */
static void log_circuits(struct gen *g, uint32_t *seen, uint64_t now)
{
    for (unsigned b = 0; b < g->cfg->nbackends; b++) {
        struct backend_health *h = &g->health[b];
        uint32_t tr = atomic_load_explicit(&h->transitions, memory_order_acquire);
        if (tr == seen[b])
            continue;
        seen[b] = tr;
        uint8_t state = atomic_load_explicit(&h->circuit, memory_order_acquire);
        const char *pool = g->backend_pool[b], *addr = g->backend_cfg[b]->addr.text;
        if (state == CIRCUIT_OPEN) {
            uint64_t until = atomic_load_explicit(&h->open_until_ms, memory_order_relaxed);
            log_warn("pool %s backend %s: circuit open for %llu ms after consecutive %s",
                     pool, addr, (unsigned long long)(until > now ? until - now : 0),
                     backend_failure_name((enum backend_failure)atomic_load_explicit(&h->open_cause,
                                                                             memory_order_relaxed)));
        } else if (state == CIRCUIT_CLOSED) {
            log_info("pool %s backend %s: circuit closed: the probe request succeeded", pool, addr);
        }
    }
}

/* The per-backend gauges of /metrics, from this generation's view. */
static void publish_gauges(struct gen *g)
{
    bool any_available = g->cfg->nbackends == 0;
    for (unsigned b = 0; b < g->cfg->nbackends; b++) {
        bool available = backend_available(g, b);
        /* /readyz counts only backends the admin API lets take requests */
        any_available |= available && backend_admin_takes_new(
                                          backend_admin_read(g->backend_metric_slot[b], g->backend_cfg[b]->weight));
        metrics_set_backend_up(g->backend_metric_slot[b], available);
        const struct backend_signal *s = &g->signal[b];
        metrics_set_backend_load(g->backend_metric_slot[b], gen_outstanding(g, b),
                                 atomic_load_explicit(&s->waiting, memory_order_relaxed),
                                 atomic_load_explicit(&s->kv_permille, memory_order_relaxed),
                                 atomic_load_explicit(&s->scraped_ms, memory_order_acquire));
    }
    readiness_backends_available(any_available);
}

static void *watch_main(void *arg)
{
    (void)arg;
    struct gen *g = atomic_load_explicit(&rt.current, memory_order_acquire);
    unsigned n = 0;
    struct target *t = targets_build(g, &n);
    uint32_t *seen = calloc(g->cfg->nbackends + 1, sizeof *seen);
    bool *was_up = malloc(g->cfg->nbackends + 1);
    if (was_up)
        memset(was_up, 1, g->cfg->nbackends + 1);
    struct pollfd *pfd = NULL;
    unsigned pfd_cap = 0;
    for (;;) {
        struct gen *cur = atomic_load_explicit(&rt.current, memory_order_acquire);
        if (cur != g) {
            unsigned nnew = 0;
            struct target *tnew = targets_build(cur, &nnew);
            models_carry(t, n, g, tnew, nnew, cur);
            models_changed = true;      /* replaces what gen_create carried over by pool */
            targets_free(t, n);
            for (struct gen *x = g; x != cur;) {
                struct gen *next = atomic_load(&x->newer);
                gen_unref(x);
                x = next;
            }
            g = cur;
            t = tnew;
            n = nnew;
            free(seen);
            seen = calloc(g->cfg->nbackends + 1, sizeof *seen);
            free(was_up);
            was_up = malloc(g->cfg->nbackends + 1);
            if (was_up)
                memset(was_up, 1, g->cfg->nbackends + 1);
        }
        uint64_t now = clock_mono_ms();
        uint64_t wake = now + WATCH_TICK_MS;
        for (unsigned i = 0; i < n; i++) {
            if (t[i].phase == PROBE_IDLE && now >= t[i].next_ms) {
                if (t[i].kind == TARGET_HEALTH && backend_in_maintenance(g, t[i].backend))
                    t[i].next_ms = now + t[i].interval_ms;  /* paused, looked at again next interval */
                else
                    probe_start(g, &t[i], now);
            }
            else if (t[i].phase != PROBE_IDLE && now >= t[i].deadline_ms)
                probe_failed(g, &t[i], "timed out");
            uint64_t due = t[i].phase == PROBE_IDLE ? t[i].next_ms : t[i].deadline_ms;
            if (due < wake)
                wake = due;
        }
        if (seen)
            log_circuits(g, seen, now);
        publish_gauges(g);
        if (was_up)
            models_on_return(g, t, n, was_up, now);
        if (models_changed)
            models_publish(g, t, n);

        if (pfd_cap < n + 1) {
            struct pollfd *np = realloc(pfd, (n + 1) * sizeof *np);
            if (!np) {
                log_error("watcher: out of memory; backend load is no longer read");
                break;
            }
            pfd = np;
            pfd_cap = n + 1;
        }
        unsigned npfd = 0;
        pfd[npfd++] = (struct pollfd){ stop_fd, POLLIN, 0 };
        for (unsigned i = 0; i < n && npfd < pfd_cap; i++)
            if (t[i].phase != PROBE_IDLE)
                pfd[npfd++] = (struct pollfd){ t[i].fd, probe_events(&t[i]), 0 };
        int timeout = wake > now ? (int)(wake - now) : 0;
        int r = poll(pfd, npfd, timeout);
        if (r < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            break;
        now = clock_mono_ms();
        /* the pollfds follow the active targets in order */
        unsigned k = 1;
        for (unsigned i = 0; i < n && k < npfd; i++) {
            if (t[i].phase == PROBE_IDLE || t[i].fd != pfd[k].fd)
                continue;
            short re = pfd[k++].revents;
            if (re)
                probe_step(g, &t[i], re, now);
        }
    }
    targets_free(t, n);
    free(seen);
    free(was_up);
    free(pfd);
    gen_unref(g);
    return NULL;
}

int watch_start(void)
{
    stop_fd = eventfd(0, EFD_CLOEXEC);
    if (stop_fd < 0) {
        log_error("watcher: eventfd: %s", strerror(errno));
        return -1;
    }
    int rc = pthread_create(&watch_thread, NULL, watch_main, NULL);
    if (rc) {
        log_error("watcher: cannot start its thread: %s", strerror(rc));
        close(stop_fd);
        stop_fd = -1;
        return -1;
    }
    running = true;
    return 0;
}

void watch_stop(void)
{
    if (!running)
        return;
    uint64_t one = 1;
    if (write(stop_fd, &one, sizeof one) < 0)
        log_warn("watcher: cannot signal the thread to stop: %s", strerror(errno));
    pthread_join(watch_thread, NULL);
    close(stop_fd);
    stop_fd = -1;
    running = false;
}
