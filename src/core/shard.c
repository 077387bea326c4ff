/* A shard: one pinned thread, one io_uring, its own listeners (SO_REUSEPORT),
 * provided-buffer ring, buffer and pipe pools, timer wheel and connections.
 * The loop submits and waits once per turn, hands each completion to its owner by
 * the tag in user_data (demux_cqe), then advances the timer wheel. */
#include "core/buf.h"
#include "core/conn.h"
#include "core/dispatch.h"
#include "core/gen.h"
#include "core/handover.h"
#include "core/prefix_share.h"
#include "core/ring.h"
#include "core/shard.h"
#include "core/upstream.h"
#include "policy/balance.h"
#include "proto/openai.h"     /* OPENAI_PREFIX_BLOCK */

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "util/clock.h"

struct runtime rt;

/* Listener sockets are opened by main before the shards start, so that a busy
 * port fails the start with a clear message instead of a half-started process.
 * Usually one socket per address and shard; after a handover an address may have
 * more sockets than there are shards (the old process had more): each shard then
 * takes several, since every socket of a SO_REUSEPORT group gets its share of new
 * connections and none may be left unaccepted. */
struct listen_fd {
    int fd;
    unsigned addr;          /* index: [server] listen, then [tls] listen */
    unsigned shard;
};
static struct listen_fd *listen_fds;
static unsigned nlisten_fds;

static const struct cfg_addr *listener_addr(const struct config *cfg, unsigned i)
{
    return i < cfg->server.nlisten ? &cfg->server.listen[i] : &cfg->tls.listen[i - cfg->server.nlisten];
}

/* One socket of a listen address. SO_REUSEPORT would let a second aigw (or any
 * process of the same user) join the address and take part of its traffic, so
 * the first socket of each address claims it: it is bound without SO_REUSEPORT,
 * which fails if anything listens there, and only then gets SO_REUSEPORT (before
 * listen(), so it forms the group) for the other shards' sockets to join. The
 * check and the claim are the one bind, so two instances starting at once cannot
 * both pass. SO_REUSEADDR keeps a restart working while connections of the old
 * process are still draining or in TIME_WAIT: only a listening socket conflicts. */
static int open_listener(const struct cfg_addr *a, bool claim)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!claim)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    /* accepted sockets inherit TCP_NODELAY: SSE events must not wait for Nagle */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) < 0 ||
        (claim && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void listeners_close_opened(void)
{
    for (unsigned i = 0; i < nlisten_fds; i++)
        close(listen_fds[i].fd);
    nlisten_fds = 0;
}

int listeners_open(const struct config *cfg, unsigned nshards)
{
    unsigned n = cfg->server.nlisten + cfg->tls.nlisten;
    free(listen_fds);
    listen_fds = calloc((size_t)n * nshards + HANDOVER_MAX_FDS, sizeof *listen_fds);
    if (!listen_fds) {
        log_error("cannot allocate the listener table");
        return -1;
    }
    nlisten_fds = 0;
    for (unsigned i = 0; i < n; i++) {
        const struct cfg_addr *a = listener_addr(cfg, i);
        /* sockets handed over by the process we succeed: they are already in the
         * group, so the new ones only join it (no claim against our own parent) */
        unsigned k = 0;
        for (int fd; (fd = handover_take(a)) >= 0; k++)
            listen_fds[nlisten_fds++] = (struct listen_fd){ .fd = fd, .addr = i, .shard = k % nshards };
        if (k)
            log_info("%s: adopted %u listening socket(s) from the previous process", a->text, k);
        /* the first socket of an address claims it before any other joins */
        for (unsigned s = k; s < nshards; s++) {
            int fd = open_listener(a, s == 0);
            if (fd < 0 && errno == EADDRINUSE)
                log_error("cannot listen on %s: address already in use; another process listens "
                          "there (is aigw already running?)", a->text);
            else if (fd < 0)
                log_error("cannot listen on %s: %s", a->text, strerror(errno));
            if (fd < 0) {
                listeners_close_opened();
                return -1;
            }
            listen_fds[nlisten_fds++] = (struct listen_fd){ .fd = fd, .addr = i, .shard = s };
        }
    }
    return 0;
}

unsigned listeners_describe(const struct config *cfg, int *fds, const char **texts, unsigned cap)
{
    unsigned n = 0;
    for (unsigned i = 0; i < nlisten_fds && n < cap; i++, n++) {
        fds[n] = listen_fds[i].fd;
        texts[n] = listener_addr(cfg, listen_fds[i].addr)->text;
    }
    return n;
}

/* ---- time ---- */

static void shard_clock(struct shard *sh)
{
    sh->now_us = clock_mono_us();
    sh->now_ms = sh->now_us / 1000u;
}

/* ---- submission ---- */

struct io_uring_sqe *shard_sqe(struct shard *sh)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&sh->ring);
    while (!sqe) {
        /* SQ full: flush what we have; the kernel copies SQEs at submit */
        io_uring_submit(&sh->ring);
        sqe = io_uring_get_sqe(&sh->ring);
    }
    return sqe;
}

/* Cancels every operation on fd and closes it, both through the ring. The
 * cancelled operations still complete (-ECANCELED) to whoever queued them. */
void shard_cancel_and_close(struct shard *sh, int fd)
{
    struct io_uring_sqe *sqe = shard_sqe(sh);
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, 0);
    sqe = shard_sqe(sh);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, 0);
}

/* ---- provided buffers ---- */

char *shard_recv_buf(struct shard *sh, unsigned bid)
{
    return sh->br_mem + (size_t)bid * RECV_BUF_SIZE;
}

void shard_release_recv_buf(struct shard *sh, unsigned bid)
{
    io_uring_buf_ring_add(sh->br, shard_recv_buf(sh, bid), RECV_BUF_SIZE, (unsigned short)bid,
                          sh->br_mask, 0);
    io_uring_buf_ring_advance(sh->br, 1);
}

static int setup_buf_ring(struct shard *sh)
{
    size_t ring_bytes = RECV_BUF_COUNT * sizeof(struct io_uring_buf);
    void *ring_mem;
    if (posix_memalign(&ring_mem, 4096, ring_bytes))
        return -ENOMEM;
    sh->br = ring_mem;
    io_uring_buf_ring_init(sh->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)sh->br,
        .ring_entries = RECV_BUF_COUNT,
        .bgid = RECV_BUF_GROUP,
    };
    int ret = io_uring_register_buf_ring(&sh->ring, &reg, 0);
    if (ret)
        return ret;
    sh->br_mem = aligned_alloc(4096, (size_t)RECV_BUF_COUNT * RECV_BUF_SIZE);
    if (!sh->br_mem)
        return -ENOMEM;
    sh->br_mask = io_uring_buf_ring_mask(RECV_BUF_COUNT);
    for (unsigned i = 0; i < RECV_BUF_COUNT; i++)
        io_uring_buf_ring_add(sh->br, shard_recv_buf(sh, i), RECV_BUF_SIZE, (unsigned short)i,
                              sh->br_mask, (int)i);
    io_uring_buf_ring_advance(sh->br, RECV_BUF_COUNT);
    return 0;
}

/* ---- fixed-size buffers and pipes, per shard, recycled ---- */

struct xbuf *xbuf_get(struct shard *sh)
{
    struct xbuf *b = sh->free_xbufs;
    if (b) {
        sh->free_xbufs = b->next_free;
    } else {
        b = malloc(sizeof *b + sh->xbuf_size);   /* grows the pool; steady state reuses */
        if (!b)
            return NULL;
    }
    b->len = b->off = 0;
    b->cap = sh->xbuf_size;
    b->next_free = NULL;
    sh->xbufs_out++;
    return b;
}

/* A buffer of at least cap bytes: the pool's size when that is enough (the common
 * case), else one allocated for this request and freed by xbuf_put. */
struct xbuf *xbuf_get_cap(struct shard *sh, uint32_t cap)
{
    if (cap <= sh->xbuf_size)
        return xbuf_get(sh);
    struct xbuf *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->len = b->off = 0;
    b->cap = cap;
    b->next_free = NULL;
    sh->xbufs_out++;
    return b;
}

void xbuf_put(struct shard *sh, struct xbuf *b)
{
    if (!b)
        return;
    sh->xbufs_out--;
    if (b->cap != sh->xbuf_size) {
        free(b);
        return;
    }
    b->next_free = sh->free_xbufs;
    sh->free_xbufs = b;
}

struct pipe_pair *pipe_get(struct shard *sh)
{
    struct pipe_pair *p = sh->free_pipes;
    if (p) {
        sh->free_pipes = p->next_free;
        p->next_free = NULL;
        return p;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return NULL;    /* pipe-user-pages limits: the caller copies instead */
    p = malloc(sizeof *p);
    if (!p) {
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    p->rd = fds[0];
    p->wr = fds[1];
    p->next_free = NULL;
    sh->npipes++;
    return p;
}

void pipe_put(struct shard *sh, struct pipe_pair *p, bool clean)
{
    if (!p)
        return;
    if (!clean) {
        /* bytes left in it belong to an aborted response: never reuse */
        close(p->rd);
        close(p->wr);
        free(p);
        sh->npipes--;
        return;
    }
    p->next_free = sh->free_pipes;
    sh->free_pipes = p;
}

/* ---- generations ---- */

static struct shard_gen *shard_gen_new(struct gen *g)
{
    struct shard_gen *sg = calloc(1, sizeof *sg);
    if (!sg)
        return NULL;
    sg->g = g;
    sg->balance = calloc(g->cfg->npools ? g->cfg->npools : 1, sizeof *sg->balance);
    sg->idle = calloc(g->cfg->nbackends ? g->cfg->nbackends : 1, sizeof *sg->idle);
    sg->split = calloc(g->cfg->nroutes ? g->cfg->nroutes : 1, sizeof *sg->split);
    if (!sg->balance || !sg->idle || !sg->split || dispatch_shard_gen_init(sg) != 0)
        goto fail;
    for (unsigned p = 0; p < g->cfg->npools; p++) {
        const struct cfg_pool *pool = &g->cfg->pools[p];
        struct balance_state *b = &sg->balance[p];
        if (balance_state_init(b, pool->nbackends))
            goto fail;
        if (pool->balance == BALANCE_PREFIX) {
            /* this shard's own index: nothing it writes per request is shared */
            if (balance_state_prefix_init(b, pool->prefix_cache_blocks))
                goto fail;
            b->tune.prefix_weight = pool->prefix_weight;
            b->tune.queue_weight = pool->queue_weight;
            b->tune.kv_weight = pool->kv_weight;
            b->tune.prefix_max_blocks = pool->prefix_hash_kib * 1024 / OPENAI_PREFIX_BLOCK;
        }
    }
    return sg;
fail:
    if (sg->balance)
        for (unsigned p = 0; p < g->cfg->npools; p++)
            balance_state_free(&sg->balance[p]);
    dispatch_shard_gen_free(sg);
    free(sg->balance);
    free(sg->idle);
    free(sg->split);
    free(sg);
    return NULL;
}

static void shard_gen_free(struct shard *sh, struct shard_gen *sg)
{
    upstream_close_idle(sh, sg);
    for (unsigned p = 0; p < sg->g->cfg->npools; p++)
        balance_state_free(&sg->balance[p]);
    dispatch_shard_gen_free(sg);
    free(sg->balance);
    free(sg->idle);
    free(sg->split);
    gen_unref(sg->g);
    free(sg);
}

/* A reload keeps where prompts went for the backends that stay: a prefix pool
 * of the same name, still prefix with the same prefix_cache_blocks, takes the
 * old generation's index of each backend configured with the same address
 * text. Anything else (a backend that joined or whose address changed, a pool
 * that became prefix or resized its index) starts empty. Out of memory: all
 * start empty, as before this existed. */
static void shard_gen_keep_prefix(struct shard *sh, struct shard_gen *next, struct shard_gen *old)
{
    const struct config *nc = next->g->cfg, *oc = old->g->cfg;
    int *map = NULL;
    for (unsigned p = 0; p < nc->npools; p++) {
        const struct cfg_pool *np = &nc->pools[p];
        if (np->balance != BALANCE_PREFIX || np->nbackends == 0)
            continue;
        unsigned q = 0;
        while (q < oc->npools && strcmp(oc->pools[q].name, np->name) != 0)
            q++;
        if (q == oc->npools)
            continue;
        const struct cfg_pool *op = &oc->pools[q];
        if (op->balance != BALANCE_PREFIX || op->prefix_cache_blocks != np->prefix_cache_blocks)
            continue;
        if (!map && !(map = malloc(nc->nbackends * sizeof *map))) {
            log_error("shard %u: out of memory keeping prefix indexes across a reload; they start empty",
                      sh->id);
            return;
        }
        unsigned kept = 0;
        for (unsigned i = 0; i < np->nbackends; i++) {
            map[i] = -1;
            for (unsigned j = 0; j < op->nbackends && map[i] < 0; j++)
                if (strcmp(np->backends[i].addr.text, op->backends[j].addr.text) == 0)
                    map[i] = (int)j;
            kept += map[i] >= 0;
        }
        balance_state_adopt_prefix(&next->balance[p], &old->balance[q], map);
        log_debug("shard %u: pool %s keeps the prefix index of %u of its %u backends", sh->id, np->name,
                  kept, np->nbackends);
    }
    free(map);
}

/* Frees older generations that no request uses any more. */
static void shard_gen_collect(struct shard *sh)
{
    struct shard_gen **pp = &sh->sg->older;
    while (*pp) {
        struct shard_gen *sg = *pp;
        if (sg->inflight == 0) {
            *pp = sg->older;
            shard_gen_free(sh, sg);
        } else {
            pp = &sg->older;
        }
    }
}

void shard_gen_request_done(struct shard *sh, struct shard_gen *sg)
{
    sg->inflight--;
    if (sg != sh->sg && sg->inflight == 0)
        shard_gen_collect(sh);
}

/* Switches to the newest generation main has published. Generations this shard
 * skipped over are released on the way (their refs counted this shard in). */
static void shard_gen_adopt(struct shard *sh)
{
    struct gen *cur = atomic_load_explicit(&rt.current, memory_order_acquire);
    if (cur == sh->sg->g)
        return;
    struct shard_gen *sg = shard_gen_new(cur);
    if (!sg) {
        log_error("shard %u: out of memory adopting configuration generation %llu", sh->id,
                  (unsigned long long)cur->id);
        return;
    }
    for (struct gen *g = atomic_load(&sh->sg->g->newer); g && g != cur; ) {
        struct gen *next = atomic_load(&g->newer);
        gen_unref(g);
        g = next;
    }
    shard_gen_keep_prefix(sh, sg, sh->sg);
    sg->older = sh->sg;
    sh->sg = sg;
    metrics_shard_adopted(sh->m, cur->id);
    /* idle upstream connections of the old generation are not reused */
    upstream_close_idle(sh, sg->older);
    shard_gen_collect(sh);
    log_debug("shard %u: configuration generation %llu", sh->id, (unsigned long long)cur->id);
}

/* ---- accept ---- */

static void arm_accept(struct shard *sh, struct listener *l)
{
    struct io_uring_sqe *sqe = shard_sqe(sh);
    io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud_make(l, OP_ACCEPT));
    l->accepting = true;
}

/* Over max_connections: answer 503 and close, without allocating anything. The
 * close is hard-linked, so it runs whether or not the send got through. */
#define BUSY_BODY "{\"error\":{\"message\":\"too many connections\",\"type\":\"server_error\",\"code\":\"no_capacity\"}}"
_Static_assert(sizeof BUSY_BODY - 1 == 87, "the Content-Length below must match BUSY_BODY");

static void refuse_connection(struct shard *sh, int fd, bool tls)
{
    struct io_uring_sqe *sqe;
    if (tls) {
        /* a plaintext answer would read as garbage to a TLS client, and a
         * handshake just to say 503 is what an overloaded server can least
         * afford: the client sees the close and retries */
        sqe = shard_sqe(sh);
        io_uring_prep_close(sqe, fd);
        io_uring_sqe_set_data64(sqe, 0);
        return;
    }
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: 87\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" BUSY_BODY;
    sqe = shard_sqe(sh);
    io_uring_prep_send(sqe, fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    io_uring_sqe_set_data64(sqe, 0);
    sqe->flags |= IOSQE_IO_HARDLINK;
    sqe = shard_sqe(sh);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, 0);
}

/* Out of descriptors (EMFILE, ENFILE) or kernel memory, the connection stays in
 * the listen backlog and an accept armed again at once fails again at once: a
 * core spent and a log line per try, for as long as it lasts. The listener rests
 * instead, for a back-off doubling from 20 ms to 500 ms while the condition lasts,
 * or until this shard has closed a connection (a descriptor came free), whichever
 * comes first; it logs one line a second at most, and one when it recovers. */
#define ACCEPT_BACKOFF_MIN_MS 20
#define ACCEPT_BACKOFF_MAX_MS 500
#define ACCEPT_LOG_INTERVAL_MS 1000

static bool accept_should_pause(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static unsigned fds_held(const struct shard *sh)
{
    return sh->nconns + sh->nupconns;
}

static void accept_pause(struct shard *sh, struct listener *l, int err)
{
    l->backoff_ms = l->backoff_ms ? 2 * l->backoff_ms : ACCEPT_BACKOFF_MIN_MS;
    if (l->backoff_ms > ACCEPT_BACKOFF_MAX_MS)
        l->backoff_ms = ACCEPT_BACKOFF_MAX_MS;
    if (!l->resume_ms)
        sh->accept_paused++;
    l->resume_ms = sh->now_ms + l->backoff_ms;
    l->fds_held_at_pause = fds_held(sh);
    l->unlogged++;
    if (l->last_log_ms && sh->now_ms - l->last_log_ms < ACCEPT_LOG_INTERVAL_MS)
        return;
    log_warn("shard %u: accept on %s: %s; accepts paused for %u ms (%u time(s) since the last "
             "such message)", sh->id, l->addr->text, strerror(err), l->backoff_ms, l->unlogged);
    l->last_log_ms = sh->now_ms;
    l->unlogged = 0;
    l->pause_logged = true;
}

static void accept_recovered(struct shard *sh, struct listener *l)
{
    if (l->pause_logged)
        log_info("shard %u: accepting on %s again", sh->id, l->addr->text);
    l->pause_logged = false;
    l->backoff_ms = 0;
}

/* Re-arms the paused listeners that are due; returns the ms until the next one is. */
static uint64_t accept_resume_due(struct shard *sh)
{
    uint64_t next = UINT64_MAX;
    for (unsigned i = 0; i < sh->nlisteners; i++) {
        struct listener *l = &sh->listeners[i];
        if (!l->resume_ms)
            continue;
        if (sh->now_ms < l->resume_ms && fds_held(sh) >= l->fds_held_at_pause) {
            if (l->resume_ms - sh->now_ms < next)
                next = l->resume_ms - sh->now_ms;
            continue;
        }
        l->resume_ms = 0;
        sh->accept_paused--;
        if (!l->accepting && !sh->draining && l->fd >= 0)
            arm_accept(sh, l);
    }
    return next;
}

static void on_accept(struct shard *sh, struct listener *l, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        l->accepting = false;
    if (cqe->res >= 0) {
        if (l->backoff_ms)
            accept_recovered(sh, l);
        if (sh->draining && !atomic_load_explicit(&rt.handed_over, memory_order_relaxed)) {
            mc_add(&sh->m->client_refused[REFUSED_DRAINING], 1);
            close(cqe->res);
        } else if (sh->nconns >= sh->max_conns) {
            mc_add(&sh->m->client_refused[REFUSED_MAX_CONNECTIONS], 1);
            refuse_connection(sh, cqe->res, l->tls);
        } else {
            conn_accepted(sh, cqe->res, l->tls);
        }
    } else if (accept_should_pause(-cqe->res)) {
        bool no_fds = cqe->res == -EMFILE || cqe->res == -ENFILE;
        mc_add(&sh->m->client_refused[no_fds ? REFUSED_NO_FDS : REFUSED_NO_MEMORY], 1);
        accept_pause(sh, l, -cqe->res);
    } else if (cqe->res != -ECANCELED && cqe->res != -EBADF && cqe->res != -EINVAL) {
        log_warn("shard %u: accept on %s: %s", sh->id, l->addr->text, strerror(-cqe->res));
    }
    if (!l->accepting && !l->resume_ms && !sh->draining && l->fd >= 0)
        arm_accept(sh, l);
}

static void stop_listening(struct shard *sh)
{
    for (unsigned i = 0; i < sh->nlisteners; i++) {
        struct listener *l = &sh->listeners[i];
        if (l->fd < 0)
            continue;
        /* The armed multishot accept holds the socket until its completion is
         * reaped, so close() alone would leave it listening; shutdown() stops the
         * listen at once, and new connects are refused. Not after a handover: the
         * socket is shared with the successor, which goes on accepting on it. */
        if (!atomic_load(&rt.handed_over))
            shutdown(l->fd, SHUT_RDWR);
        struct io_uring_sqe *sqe = shard_sqe(sh);
        io_uring_prep_cancel_fd(sqe, l->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, 0);
        io_uring_submit(&sh->ring);
        close(l->fd);
        l->fd = -1;
    }
}

/* A cancelled multishot accept may still have taken a connection whose
 * completion is not reaped yet: leaving then would drop it (after a handover the
 * socket is shared, so such a connection is one a client is waiting on). */
static bool accept_in_flight(const struct shard *sh)
{
    for (unsigned i = 0; i < sh->nlisteners; i++)
        if (sh->listeners[i].accepting)
            return true;
    return false;
}

/* ---- completions ---- */

/* Hands a completion to the object its user_data names. */
static void demux_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    enum op op = ud_op(ud);
    void *obj = ud_ptr(ud);
    switch (op) {
    case OP_NONE:
        return;
    case OP_ACCEPT:
        on_accept(sh, obj, cqe);
        return;
    case OP_CLIENT_RECV:
    case OP_CLIENT_SEND:
    case OP_SPLICE_IN:
    case OP_SPLICE_OUT:
    case OP_POLL_IN:
    case OP_POLL_OUT:
    case OP_TEE:
    case OP_INSPECT_READ:
        conn_on_cqe(obj, op, cqe);
        return;
    case OP_UP_CONNECT:
    case OP_UP_SEND:
    case OP_UP_RECV:
    case OP_UP_WATCH:
        upconn_on_cqe(obj, op, cqe);
        return;
    }
}

static void on_timer(struct timer_node *t)
{
    char *p = (char *)t;
    if (t->kind == TIMER_UPCONN)
        upconn_timer_fired((struct upconn *)(p - offsetof(struct upconn, timer)));
    else
        conn_timer_fired((struct conn *)(p - offsetof(struct conn, timer)));
}

static void shard_begin_drain(struct shard *sh)
{
    sh->draining = true;
    stop_listening(sh);
    /* idle keep-alive clients go now; the others finish their request first. After
     * a handover, idle ones stay until their keep-alive timeout instead: closing
     * now races a request the client may already have sent on them, which it
     * would see fail; a request that comes is answered with Connection: close
     * (so is any connection the last accepts took), and the client reconnects to
     * the successor. */
    bool handed_over = atomic_load(&rt.handed_over);
    struct conn *c = sh->live.next;
    while (c != &sh->live) {
        struct conn *next = c->next;
        conn_shard_draining(c, handed_over);
        c = next;
    }
    upstream_close_idle(sh, sh->sg);
    for (struct shard_gen *sg = sh->sg->older; sg; sg = sg->older)
        upstream_close_idle(sh, sg);
}

/* drain_timeout is over: the requests still running are cut here, on their
 * shard, so each is logged and settled (main only waits a moment longer). */
static void shard_cut_at_drain_timeout(struct shard *sh)
{
    sh->drain_cut = true;
    unsigned n = 0;
    struct conn *c = sh->live.next;
    while (c != &sh->live) {
        struct conn *next = c->next;
        n += c->req.sg != NULL;
        conn_drain_expired(c);
        c = next;
    }
    if (n)
        log_warn("shard %u: drain_timeout: cut %u request(s) still in flight (logged with "
                 "termination drain_timeout)", sh->id, n);
}

static int ring_init(struct shard *sh)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = 16384;
    int ret = io_uring_queue_init_params(2048, &sh->ring, &p);
    if (ret == -EINVAL) {
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE;
        p.cq_entries = 16384;
        ret = io_uring_queue_init_params(2048, &sh->ring, &p);
    }
    if (ret == -EINVAL) {
        memset(&p, 0, sizeof p);
        ret = io_uring_queue_init_params(2048, &sh->ring, &p);
    }
    return ret;
}

int shard_ring_setup(struct shard *sh)
{
    int ret = ring_init(sh);
    if (ret < 0) {
        log_error("shard %u: io_uring setup failed: %s", sh->id, strerror(-ret));
        return ret;
    }
    ret = setup_buf_ring(sh);
    if (ret < 0) {
        log_error("shard %u: provided buffer ring: %s", sh->id, strerror(-ret));
        return ret;
    }
    shard_clock(sh);
    sh->realtime_offset_us = clock_wall_us() - sh->now_us;
    /* Test hook: shifts the wall clock the shards see (daily quotas, log times),
     * so a test can put the UTC day's end a few seconds ahead. */
    const char *shift = getenv("AIGW_TEST_CLOCK_SHIFT_S");
    if (shift)
        sh->realtime_offset_us += (uint64_t)(strtoll(shift, NULL, 10) * 1000000);
    timer_wheel_init(&sh->timers, sh->now_ms);
    return 0;
}

static void *shard_main(void *arg)
{
    struct shard *sh = arg;
    char name[16];
    snprintf(name, sizeof name, "aigw-shard%u", sh->id);
    pthread_setname_np(pthread_self(), name);

    if (shard_ring_setup(sh) < 0)
        exit(1);
    metrics_shard_adopted(sh->m, sh->sg->g->id);
    for (unsigned i = 0; i < sh->nlisteners; i++)
        arm_accept(sh, &sh->listeners[i]);
    atomic_fetch_add(&rt.shards_running, 1);

    for (;;) {
        if (!sh->draining && atomic_load_explicit(&rt.draining, memory_order_relaxed))
            shard_begin_drain(sh);
        if (sh->draining && !sh->drain_cut) {
            uint64_t cut_ms = atomic_load_explicit(&rt.drain_deadline_ms, memory_order_acquire);
            if (cut_ms && sh->now_ms >= cut_ms)     /* 0: not set yet */
                shard_cut_at_drain_timeout(sh);
        }
        if (sh->draining && sh->nconns == 0 && sh->nupconns == 0 && !accept_in_flight(sh))
            break;
        if (atomic_load_explicit(&rt.current, memory_order_relaxed) != sh->sg->g)
            shard_gen_adopt(sh);

        uint64_t wait_ms = timer_wheel_wait_ms(&sh->timers, sh->now_ms);
        if (wait_ms > 50)
            wait_ms = 50;   /* bounds how late a shard sees a reload or a drain */
        if (sh->nqueued && wait_ms > 5)
            wait_ms = 5;    /* waiting requests look for slots freed by other shards */
        if (sh->accept_paused) {
            uint64_t resume = accept_resume_due(sh);
            if (wait_ms > resume)
                wait_ms = resume;
        }
        struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = (long long)wait_ms * 1000000 };
        struct io_uring_cqe *cqe;
        int ret = io_uring_submit_and_wait_timeout(&sh->ring, &cqe, 1, &ts, NULL);
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY)
            log_warn("shard %u: io_uring_enter: %s", sh->id, strerror(-ret));
        shard_clock(sh);
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&sh->ring, head, cqe) {
            demux_cqe(sh, cqe);
            seen++;
        }
        io_uring_cq_advance(&sh->ring, seen);
        timer_wheel_advance(&sh->timers, sh->now_ms, on_timer);
        if (sh->nqueued)
            dispatch_poll(sh);
    }
    io_uring_submit(&sh->ring);
    atomic_fetch_sub(&rt.shards_running, 1);
    return NULL;
}

static void pin_to_cpu(pthread_attr_t *attr, unsigned id)
{
    cpu_set_t online;
    if (sched_getaffinity(0, sizeof online, &online) != 0)
        return;
    unsigned n = (unsigned)CPU_COUNT(&online), k = id % (n ? n : 1);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &online))
            continue;
        if (k-- == 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_attr_setaffinity_np(attr, sizeof one, &one);
            return;
        }
    }
}

int shard_init(struct shard *sh, unsigned id, unsigned nshards, struct gen *g)
{
    const struct config *cfg = g->cfg;
    uint32_t xsize = (uint32_t)cfg->server.max_header + 4096;
    sh->id = id;
    sh->m = metrics_shard(id);
    sh->xbuf_size = xsize < 16384 ? 16384 : xsize;
    sh->live.next = sh->live.prev = &sh->live;
    sh->max_conns = cfg->server.max_connections / nshards;
    if (sh->max_conns == 0)
        sh->max_conns = 1;
    sh->sg = shard_gen_new(g);
    if (!sh->sg)
        return -1;
    if (getrandom(sh->rng, sizeof sh->rng, 0) != sizeof sh->rng)
        sh->rng[0] = (uint64_t)time(NULL) ^ id, sh->rng[1] = 0x9e3779b97f4a7c15ull;
    sh->rng[0] |= 1;
    return 0;
}

int shard_start_all(void)
{
    struct gen *g = atomic_load(&rt.current);
    const struct config *cfg = g->cfg;
    rt.shards = calloc(rt.nshards, sizeof *rt.shards);
    if (!rt.shards)
        return -1;
    for (unsigned s = 0; s < rt.nshards; s++) {
        struct shard *sh = &rt.shards[s];
        if (shard_init(sh, s, rt.nshards, g) != 0 || prefix_share_init(sh) != 0)
            return -1;
        unsigned mine = 0;
        for (unsigned i = 0; i < nlisten_fds; i++)
            mine += listen_fds[i].shard == s;
        sh->listeners = aligned_alloc(_Alignof(struct listener), (mine ? mine : 1) * sizeof *sh->listeners);
        if (!sh->listeners)
            return -1;
        memset(sh->listeners, 0, (mine ? mine : 1) * sizeof *sh->listeners);
        sh->nlisteners = 0;
        for (unsigned i = 0; i < nlisten_fds; i++) {
            if (listen_fds[i].shard != s)
                continue;
            struct listener *l = &sh->listeners[sh->nlisteners++];
            l->sh = sh;
            l->fd = listen_fds[i].fd;
            l->addr = listener_addr(cfg, listen_fds[i].addr);
            l->tls = listen_fds[i].addr >= cfg->server.nlisten;
        }
    }
    for (unsigned s = 0; s < rt.nshards; s++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pin_to_cpu(&attr, s);
        if (pthread_create(&rt.shards[s].thread, &attr, shard_main, &rt.shards[s]) != 0) {
            pthread_attr_destroy(&attr);
            return -1;
        }
        pthread_attr_destroy(&attr);
    }
    return 0;
}

bool shard_join_all(uint64_t deadline_ms)
{
    for (;;) {
        if (atomic_load(&rt.shards_running) == 0)
            break;
        if (clock_mono_ms() >= deadline_ms) {
            log_warn("drain timeout: %u shard(s) still had requests in flight",
                     atomic_load(&rt.shards_running));
            return false;
        }
        struct timespec nap = { 0, 20 * 1000000 };
        nanosleep(&nap, NULL);
    }
    for (unsigned s = 0; s < rt.nshards; s++)
        pthread_join(rt.shards[s].thread, NULL);
    return true;
}
