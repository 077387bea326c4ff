/* Upstream connections: a keep-alive pool per shard per backend (LIFO, so the
 * warmest connection is reused first), non-blocking connects through io_uring,
 * and a poll on pooled connections that stay idle, so a backend that closes them
 * is noticed rather than found out by the next request.
 *
 * Under load a pooled connection is reused within microseconds; adding and
 * removing a poll every time would cost two SQEs per request. So the poll is
 * armed only once a connection has been idle for IDLE_WATCH_MS; a connection the
 * backend closed within that window fails before any response byte and the
 * request is resent on a new connection (conn.c, retry_or_fail). */
#include "core/proxy.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

#define IDLE_WATCH_MS 1000

static void idle_remove(struct upconn *u)
{
    struct upconn **pp = &u->sg->idle[u->backend];
    while (*pp && *pp != u)
        pp = &(*pp)->next;
    if (*pp)
        *pp = u->next;
    u->next = NULL;
}

/* Readable while idle means the backend closed it (or sent junk): drop it then. */
static void arm_idle_poll(struct upconn *u)
{
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_poll_add(sqe, u->fd, POLLIN | POLLRDHUP);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_IDLE_POLL));
    u->ops++;
    u->idle_poll_armed = true;
}

static void upconn_maybe_free(struct upconn *u)
{
    if (u->state != UP_CLOSING || u->ops != 0)
        return;
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
    conn_set_timer(c, T_CONNECT, c->req.sg->g->cfg->timeouts.connect_ms);
}

void upstream_acquire(struct conn *c)
{
    struct upconn **head = &c->req.sg->idle[c->at.backend];
    struct upconn *u = *head;
    if (!u) {
        upstream_acquire_new(c);
        return;
    }
    *head = u->next;
    u->next = NULL;
    timer_disarm(&c->sh->timers, &u->timer);
    if (u->idle_poll_armed) {
        /* otherwise the response itself would fire it, and a completion seen after the
         * connection is idle again would look like the backend closing it */
        struct io_uring_sqe *sqe = shard_sqe(c->sh);
        io_uring_prep_poll_remove(sqe, ud_make(u, OP_UP_IDLE_POLL));
        io_uring_sqe_set_data64(sqe, 0);
    }
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
    if (!reusable || sh->draining || u->sg != sh->sg || u->state != UP_BUSY) {
        upconn_close(u);
        return;
    }
    u->state = UP_IDLE;
    u->idle_watched = false;
    u->next = u->sg->idle[u->backend];
    u->sg->idle[u->backend] = u;
    uint64_t keepalive = u->sg->g->cfg->timeouts.keepalive_ms;
    timer_arm(&sh->timers, &u->timer, sh->now_ms + (keepalive < IDLE_WATCH_MS ? keepalive : IDLE_WATCH_MS));
}

void upstream_close_idle(struct shard *sh, struct shard_gen *sg)
{
    (void)sh;
    for (unsigned b = 0; b < sg->g->cfg->nbackends; b++)
        while (sg->idle[b])
            upconn_close(sg->idle[b]);
}

void upconn_timer_fired(struct upconn *u)
{
    if (u->state != UP_IDLE)
        return;
    uint64_t keepalive = u->sg->g->cfg->timeouts.keepalive_ms;
    if (u->idle_watched || keepalive <= IDLE_WATCH_MS) {
        upconn_close(u);    /* idle for keepalive */
        return;
    }
    u->idle_watched = true;
    if (!u->idle_poll_armed)
        arm_idle_poll(u);
    timer_arm(&u->sh->timers, &u->timer, u->sh->now_ms + keepalive - IDLE_WATCH_MS);
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
    switch (op) {
    case OP_UP_IDLE_POLL:
        u->idle_poll_armed = false;
        if (u->state != UP_IDLE)
            break;  /* taken meanwhile: a real close shows up as a failed request and a retry */
        if (res == -ECANCELED)
            arm_idle_poll(u);   /* the cancel from its last reuse; it is idle again */
        else
            upconn_close(u);
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
        u->state = UP_BUSY;
        conn_upstream_ready(c);
        break;
    case OP_UP_SEND:
    case OP_UP_RECV:
        if (u->state == UP_BUSY && c)
            conn_on_upstream_cqe(c, op, res);
        break;
    default:
        break;
    }
    upconn_maybe_free(u);
}
