/* The shard (shard.c): one pinned thread, one io_uring, and everything it owns:
 * its listeners, client and upstream connections, buffer pools, timer wheel,
 * its view of the configuration generations. Every object here belongs to
 * exactly one shard and is touched only by it, except the few fields marked
 * "shared". Also the process-wide runtime the shards and main share. */
#ifndef AIGW_CORE_SHARD_H
#define AIGW_CORE_SHARD_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"        /* CFG_MAX_LISTEN, CFG_MAX_SPLIT */
#include "core/conn.h"          /* struct conn: the shard's list head of live connections */
#include "core/gen.h"
#include "core/metrics.h"       /* METRICS_MAX_SHARDS */
#include "core/timer.h"
#include "core/usage.h"         /* struct usage_shard */
#include "policy/prefix_journal.h"  /* struct prefix_journal_cursor */
#include "proto/http1.h"        /* the parse scratch */

#define MAX_SHARDS METRICS_MAX_SHARDS
#define RECV_BUF_SIZE 8192          /* provided-buffer size for client receives */
#define RECV_BUF_COUNT 512          /* per shard; power of two */
#define RECV_BUF_GROUP 1

/* Which object a timer node of the shard's wheel is embedded in (timer_node.kind). */
enum timer_kind { TIMER_CONN = 0, TIMER_UPCONN = 1 };

struct balance_state;
struct prefix_journal;
struct pool_queue;
struct upconn;
struct upstream_idle;
struct xbuf;

/* A shard's view of one generation: its own balancer state and upstream idle pools. */
struct shard_gen {
    struct gen *g;
    struct shard_gen *older;        /* still draining requests */
    unsigned inflight;              /* requests started on this generation */
    struct balance_state *balance;  /* per pool */
    int64_t (*split)[CFG_MAX_SPLIT]; /* per route: its split's round robin state */
    struct upstream_idle *idle;     /* per backend: its idle keep-alive connections */
    uint8_t *fail_streak;           /* per backend: consecutive failed attempts seen by this shard */
    struct pool_queue *queue;       /* per pool: requests waiting for capacity on this shard */
};

struct listener {
    struct shard *sh;
    int fd;
    bool accepting;
    const struct cfg_addr *addr;
    bool tls;                       /* a [tls] listener: its connections get the TLS transport */
    /* out of descriptors: accepting paused (see shard.c, accept_pause) */
    uint64_t resume_ms;             /* 0: not paused */
    uint32_t backoff_ms;
    unsigned fds_held_at_pause;     /* the shard's connections then; fewer: retry early */
    uint64_t last_log_ms;           /* of the last pause logged: one line a second at most */
    unsigned unlogged;              /* pauses since that line */
    bool pause_logged;              /* since the last successful accept */
} __attribute__((aligned(16)));

struct tls_link;

struct shard {
    unsigned id;
    pthread_t thread;
    struct io_uring ring;
    struct shard_metrics *m;
    struct timer_wheel timers;
    uint64_t now_ms, now_us;

    struct io_uring_buf_ring *br;   /* provided buffers for client recv */
    char *br_mem;
    unsigned br_mask;

    struct listener *listeners;     /* [server] listen, then [tls] listen; several per address after a handover */
    unsigned nlisteners;
    unsigned accept_paused;         /* listeners waiting for descriptors */

    struct shard_gen *sg;           /* current generation */
    struct http_request scratch_req;    /* parsed head being handled (one at a time) */
    struct http_response scratch_resp;

    struct tls_link *free_tls_links;    /* transport_tls.c */
    char *tls_plain;                /* a TLS record's plaintext, decrypted before the HTTP layer reads it */
    struct conn *free_conns;
    struct conn live;               /* list head of live client connections */
    unsigned nconns, max_conns;
    struct upconn *free_upconns;
    unsigned nupconns;
    struct xbuf *free_xbufs;
    uint32_t xbuf_size;
    unsigned xbufs_out;
    unsigned relay_ring_bufs;       /* provided buffers holding relayed body bytes (relay.c) */
    struct pipe_pair *free_pipes;
    unsigned npipes;
    struct usage_shard usage;
    unsigned nqueued;               /* requests waiting in any pool queue */
    uint64_t next_queue_poll_ms;

    uint64_t rng[2];                /* request ids */
    /* prefix_index = shared (prefix_share.c): this shard's placements, written by
     * it only and read by the others ("shared"); its position in each other's */
    struct prefix_journal *prefix_journal;
    struct prefix_journal_cursor prefix_cursor[MAX_SHARDS];
    uint64_t realtime_offset_us;    /* CLOCK_REALTIME - CLOCK_MONOTONIC, for log timestamps */
    bool draining;
    bool drain_cut;                 /* drain_timeout ran out: what was left was cut */
};

/* Process-wide, written by main (control plane), read by shards. */
struct runtime {
    unsigned nshards;
    struct shard *shards;
    struct gen *_Atomic current;
    _Atomic bool draining;
    _Atomic uint64_t drain_deadline_ms; /* set before draining: then shards cut what is left */
    _Atomic unsigned shards_running;
    _Atomic bool ready;
    _Atomic bool handed_over;       /* set before draining: a successor accepts on our sockets */
};
extern struct runtime rt;

/* The configuration a connection works under: its request's generation, else its
 * shard's current one. Here rather than in conn.h because it reads struct shard,
 * which embeds a struct conn (so conn.h cannot include this header). */
static inline const struct config *conn_config(const struct conn *c)
{
    return (c->req.sg ? c->req.sg : c->sh->sg)->g->cfg;
}

/* The upstream timeouts of c's request: its pool's (which inherit [timeouts]), or
 * [timeouts] itself before a pool is chosen. Idle covers a request on the client
 * side too, so it follows the pool only once there is one. */
static inline const struct cfg_pool *conn_pool(const struct conn *c)
{
    return c->req.sg && c->req.pool >= 0 ? &c->req.sg->g->cfg->pools[c->req.pool] : NULL;
}
static inline uint64_t conn_idle_ms(const struct conn *c)
{
    const struct cfg_pool *p = conn_pool(c);
    return p ? p->idle_ms : conn_config(c)->timeouts.idle_ms;
}

/* A shard's state for generation g, without its ring, thread or listeners
 * (shard_start_all; the lifecycle unit tests drive one without a thread). */
int shard_init(struct shard *sh, unsigned id, unsigned nshards, struct gen *g);
/* Its ring, provided buffers, clock and timer wheel: on the thread that will
 * submit (the ring is SINGLE_ISSUER). */
int shard_ring_setup(struct shard *sh);
struct io_uring_sqe *shard_sqe(struct shard *sh);
void shard_cancel_and_close(struct shard *sh, int fd);
void shard_release_recv_buf(struct shard *sh, unsigned bid);
char *shard_recv_buf(struct shard *sh, unsigned bid);
/* (its buffer and pipe pools: buf.h) */
void shard_gen_request_done(struct shard *sh, struct shard_gen *sg);
int shard_start_all(void);
bool shard_join_all(uint64_t deadline_ms);
int listeners_open(const struct config *cfg, unsigned nshards);
/* Every listening socket (for a handover) and its address's text; returns how many. */
unsigned listeners_describe(const struct config *cfg, int *fds, const char **texts, unsigned cap);

#endif
