/* Upstream connections: a keep-alive pool per shard per backend (LIFO, so the
 * warmest connection is reused first, at most `keepalive` per backend, each closed
 * after `keepalive_timeout`), non-blocking connects through io_uring, and a watch
 * on every moment a connection sits in the pool.
 *
 * The watch: a pooled connection always has one recv armed, into a response
 * buffer it holds while idle (at most `keepalive` of them per backend per
 * shard). Anything it returns while the connection is idle (a stray response such as a 408, garbage, the backend's close) retires
 * the connection: no request is ever sent after bytes nobody asked for. When a
 * request takes the connection, that same recv is its response-head recv, so the
 * watch costs no SQE per request (an earlier idle poll, armed and removed per
 * request, cost about 8% of the CPU of a proxied request).
 *
 * The recv waits for readiness first (IORING_RECVSEND_POLL_FIRST): a poll armed on
 * a socket that already holds bytes or a close fires at once, so nothing that
 * was there when the connection came back is missed, and an empty socket costs
 * no read attempt. What remains is the true race of bytes arriving just as a
 * request takes the connection (HTTP/1.1 cannot tell them from its answer); a
 * close found then is retried on a new connection (conn.c, retry_or_fail), and
 * a request whose body cannot be resent takes only a connection that has been
 * watched for a while.
 *
 * On a `tls = on` pool the handshake follows the connect, and every send and
 * receive (the watch's too) goes through upstream_tls.c, which reads and writes
 * ciphertext in buffers of its own; the pool, the watch's rules and the
 * hand-over to a request are the same. */
#include "core/buf.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/ring.h"
#include "core/shard.h"
#include "core/upstream.h"
#include "core/upstream_tls.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "tls/tls.h"


static struct upstream_idle *idle_of(struct upconn *u)
{
    struct upstream_idle *idle = &u->sg->idle[u->backend];
    if (!idle->pool) {
        const struct gen *g = u->sg->g;
        unsigned p = 0;
        while (p + 1 < g->cfg->npools && g->pool_first_backend[p + 1] <= u->backend)
            p++;
        idle->pool = &g->cfg->pools[p];
    }
    return idle;
}

/* Leaves the pool. */
static void idle_remove(struct upconn *u)
{
    struct upconn **pp = &u->sg->idle[u->backend].head;
    while (*pp && *pp != u)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = u->next;
    u->next = NULL;
    idle_of(u)->count--;
}

/* The watch reads into a response buffer of its own: when a request takes the
 * connection, that buffer becomes its response buffer as it is (no copy; a
 * provided buffer from the shared ring had to be copied, which cost ~10% of the
 * CPU of a 14 KB streamed response). False when no buffer can be had. */
static bool arm_watch(struct upconn *u)
{
    struct xbuf *b = xbuf_get(u->sh);
    if (!b)
        return false;
    b->len = b->off = 0;
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_recv(sqe, u->fd, b->data, b->cap, 0);
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_WATCH));
    u->ops++;
    u->watch_armed = true;
    u->watch_buf = b;
    return true;
}

static void upconn_maybe_free(struct upconn *u)
{
    if (u->state != UP_CLOSING || u->ops != 0)
        return;
    upstream_tls_free(u);     /* its buffers are free of the kernel only now */
    u->state = UP_FREE;
    u->next = u->sh->free_upconns;
    u->sh->free_upconns = u;
}

/* Gives up the fd without closing it: a splice still reads it, and its conn closes
 * it once the splice has completed. Shut down now, so the backend sees the end. */
int upconn_detach_fd(struct upconn *u)
{
    int fd = u->fd;
    shutdown(fd, SHUT_RDWR);
    u->fd = -1;
    return fd;
}

void upconn_close(struct upconn *u)
{
    if (u->state == UP_CLOSING || u->state == UP_FREE)
        return;
    struct shard *sh = u->sh;
    if (u->state == UP_IDLE)
        idle_remove(u);
    timer_disarm(&sh->timers, &u->timer);
    u->state = UP_CLOSING;
    u->owner = NULL;
    u->has_early = u->head_wanted = false;
    if (u->fd >= 0) {
        shard_cancel_and_close(sh, u->fd);
        u->fd = -1;
    }
    sh->nupconns--;
    mg_add(&sh->m->connections[SIDE_UPSTREAM], -1);
    upconn_maybe_free(u);
}

static void count_upstream_conn(struct conn *c, enum upstream_conn_kind kind)
{
    int slot = c->req.sg->g->backend_metric_slot[c->at.backend];
    if (slot >= 0)
        mc_add(&c->sh->m->upstream_conns[slot][kind], 1);
}

void upstream_acquire_new(struct conn *c)
{
    struct shard *sh = c->sh;
    const struct cfg_addr *addr = &c->req.sg->g->backend_cfg[c->at.backend]->addr;
    /* Creating a socket is a plain syscall: it happens once per upstream connection,
     * not per request, since connections are pooled. */
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_upstream_failed(c, errno, "cannot create upstream socket");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct upconn *u = sh->free_upconns;
    if (u) {
        sh->free_upconns = u->next;
    } else {
        u = aligned_alloc(16, sizeof *u);
        if (!u) {
            close(fd);
            conn_upstream_failed(c, ENOMEM, "out of memory");
            return;
        }
    }
    memset(u, 0, sizeof *u);
    u->sh = sh;
    u->fd = fd;
    u->state = UP_CONNECTING;
    u->owner = c;
    u->sg = c->req.sg;
    u->backend = (unsigned)c->at.backend;
    u->timer.kind = TIMER_UPCONN;
    c->at.up = u;
    c->at.upstream_reused = false;
    sh->nupconns++;
    mg_add(&sh->m->connections[SIDE_UPSTREAM], 1);
    count_upstream_conn(c, UPCONN_NEW);

    struct io_uring_sqe *sqe = shard_sqe(sh);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&addr->sa, addr->salen);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_CONNECT));
    u->ops++;
    conn_set_timer(c, T_CONNECT, c->req.sg->g->cfg->pools[c->req.pool].connect_ms);
}

/* A request whose body is streamed cannot be resent if the connection turns out
 * closed after part of it went: it takes only a connection that has been watched
 * for this long, by when a backend that closes after answering (without saying
 * so) has been seen closing. */
#define STREAMED_BODY_MIN_IDLE_MS 100

void upstream_acquire(struct conn *c)
{
    struct upstream_idle *idle = &c->req.sg->idle[c->at.backend];
    struct upconn **pp = &idle->head;
    if (!c->req.body_in_first_send)
        while (*pp && c->sh->now_ms - (*pp)->idle_since_ms < STREAMED_BODY_MIN_IDLE_MS)
            pp = &(*pp)->next;
    struct upconn *u = *pp;
    if (!u) {
        upstream_acquire_new(c);
        return;
    }
    *pp = u->next;
    idle->count--;
    u->next = NULL;
    timer_disarm(&c->sh->timers, &u->timer);
    /* its watch stays armed: it now waits for this request's response head */
    u->state = UP_BUSY;
    u->owner = c;
    c->at.up = u;
    c->at.upstream_reused = true;
    count_upstream_conn(c, UPCONN_REUSED);
    conn_upstream_ready(c);
}

void upstream_release(struct upconn *u, bool reusable)
{
    struct shard *sh = u->sh;
    u->owner = NULL;
    if (u->tls && reusable)
        upstream_tls_save_session(u, &idle_of(u)->tls_session);
    /* a watch still in flight or early bytes: the connection's state is unknown */
    if (!reusable || sh->draining || u->sg != sh->sg || u->state != UP_BUSY || u->watch_armed ||
        u->has_early) {
        upconn_close(u);
        return;
    }
    struct upstream_idle *idle = idle_of(u);
    if (idle->pool->keepalive == 0) {
        upconn_close(u);
        return;
    }
    /* the limit counts idle connections: past it, this one is not spare; and
     * one that cannot be watched is not kept */
    if (idle->count >= idle->pool->keepalive ||
        !(u->tls ? upstream_tls_pool(u) : arm_watch(u))) {
        upconn_close(u);
        return;
    }
    u->idle_since_ms = sh->now_ms;
    u->head_wanted = false;
    u->state = UP_IDLE;
    u->next = idle->head;
    idle->head = u;
    idle->count++;
    timer_arm(&sh->timers, &u->timer, sh->now_ms + idle->pool->keepalive_timeout_ms);
}

void upstream_close_idle(struct shard *sh, struct shard_gen *sg)
{
    for (unsigned b = 0; b < sg->g->cfg->nbackends; b++) {
        while (sg->idle[b].head)
            upconn_close(sg->idle[b].head);
        if (sg->idle[b].tls_session)
            tls_session_free(sg->idle[b].tls_session);
        sg->idle[b].tls_session = NULL;
    }
}

void upconn_timer_fired(struct upconn *u)
{
    if (u->state == UP_IDLE)
        upconn_close(u);    /* idle for keepalive_timeout */
}

bool upstream_head_from_watch(struct conn *c)
{
    struct upconn *u = c->at.up;
    if (u->watch_armed) {
        u->head_wanted = true;
        return true;
    }
    if (!u->has_early)
        return false;
    /* handed over from the completion side, not from inside the caller */
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_WATCH));
    u->ops++;
    u->watch_armed = u->watch_nop = u->head_wanted = true;
    return true;
}

static void on_watch(struct upconn *u, struct io_uring_cqe *cqe)
{
    struct shard *sh = u->sh;
    int res = cqe->res;
    bool nop = u->watch_nop;
    u->watch_armed = u->watch_nop = false;
    struct xbuf *b = NULL;      /* the watch recv's buffer, until someone takes it */
    if (!nop) {
        b = u->watch_buf;
        u->watch_buf = NULL;
    }
    if (u->state == UP_IDLE) {
        xbuf_put(sh, b);
        const char *addr = u->sg->g->backend_cfg[u->backend]->addr.text;
        if (res > 0)
            log_debug("upstream %s: %d bytes arrived on an idle pooled connection: closed", addr, res);
        else if (res == 0)
            log_debug("upstream %s: the backend closed an idle pooled connection", addr);
        else
            log_debug("upstream %s: idle pooled connection: %s: closed", addr, strerror(-res));
        upconn_close(u);
        return;
    }
    struct conn *c = u->owner;
    if (u->state != UP_BUSY || !c) {
        xbuf_put(sh, b);
        return;
    }
    if (nop) {
        res = u->early_res;
    } else if (res > 0) {
        if (!c->at.rbuf) {
            c->at.rbuf = b;     /* the bytes are at its start: its len counts them below */
            b = NULL;
        } else if ((size_t)res <= c->at.rbuf->cap - c->at.rbuf->len) {
            memcpy(c->at.rbuf->data + c->at.rbuf->len, b->data, (size_t)res);
        } else {
            res = -ENOMEM;
        }
    }
    xbuf_put(sh, b);
    if (!u->head_wanted) {
        /* an early answer, or the close, before the whole request went out */
        u->has_early = true;
        u->early_res = res;
        return;
    }
    u->head_wanted = u->has_early = false;
    conn_on_upstream_cqe(c, OP_UP_RECV, res);
}

void upconn_on_cqe(struct upconn *u, enum op op, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->ops--;
    if (op == OP_UP_SEND || op == OP_UP_RECV) {
        if (u->io_buf_orphan)
            xbuf_put(u->sh, u->io_buf);
        u->io_buf = NULL;
        u->io_buf_orphan = false;
    }
    int res = cqe->res;
    struct conn *c = u->owner;
    if (u->tls && (op == OP_UP_SEND || op == OP_UP_RECV)) {
        upstream_tls_on_cqe(u, op, res);
        upconn_maybe_free(u);
        return;
    }
    switch (op) {
    case OP_UP_WATCH:
        on_watch(u, cqe);
        break;
    case OP_UP_CONNECT:
        if (u->state != UP_CONNECTING || !c)
            break;
        if (res < 0) {
            const char *why = res == -ECONNREFUSED ? "upstream refused the connection"
                                                   : "upstream connect failed";
            conn_attempt_failed(c, BF_CONNECT, -res, why);
            conn_maybe_free(c);
            break;
        }
        if (idle_of(u)->pool->tls) {
            /* conn_upstream_ready once the handshake is complete */
            upstream_tls_start(u, idle_of(u)->pool, idle_of(u)->tls_session);
            break;
        }
        u->state = UP_BUSY;
        conn_upstream_ready(c);
        break;
    case OP_UP_RECV:
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            /* the relay's receive into a provided buffer (relay.c) */
            unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            if (u->state == UP_BUSY && c && c->state == CS_RELAY && c->relay.ring_recv)
                relay_upstream_buffer(c, bid);
            else
                shard_release_recv_buf(u->sh, bid);
        }
        /* fall through */
    case OP_UP_SEND:
        if (u->state == UP_BUSY && c)
            conn_on_upstream_cqe(c, op, res);
        break;
    default:
        break;
    }
    upconn_maybe_free(u);
}
