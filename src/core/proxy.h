/* The proxy's object model, private to src/core: shards, client connections,
 * upstream connections, configuration generations. One shard = one thread = one
 * io_uring; every object here belongs to exactly one shard and is touched only by
 * it, except the few fields marked "shared". */
#ifndef AIGW_CORE_PROXY_H
#define AIGW_CORE_PROXY_H

#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/config.h"
#include "core/metrics.h"
#include "core/timer.h"
#include "core/usage.h"
#include "policy/balance.h"
#include "policy/ratelimit.h"
#include "policy/route.h"
#include "proto/http1.h"

#define MAX_SHARDS METRICS_MAX_SHARDS
#define RECV_BUF_SIZE 8192          /* provided-buffer size for client receives */
#define RECV_BUF_COUNT 512          /* per shard; power of two */
#define RECV_BUF_GROUP 1
#define PIPE_CHUNK (64 * 1024)      /* bytes spliced per step (default pipe capacity) */

/* ---- io_uring user_data: object pointer | operation tag (objects are 16-aligned) ---- */
enum op {
    OP_NONE = 0,        /* CQEs nobody waits for (close, cancel) */
    OP_ACCEPT,
    OP_CLIENT_RECV,     /* multishot, provided buffers */
    OP_CLIENT_SEND,
    OP_UP_CONNECT,
    OP_UP_SEND,
    OP_UP_RECV,
    OP_UP_WATCH,        /* recv armed on every pooled upstream connection (upstream.c) */
    OP_SPLICE_IN,       /* upstream socket -> pipe */
    OP_SPLICE_OUT,      /* pipe -> client socket */
    OP_POLL_IN,         /* splice_in said EAGAIN: wait for upstream readable */
    OP_POLL_OUT,        /* splice_out said EAGAIN: wait for client writable */
    OP_CANCEL_RECV,
    OP_TEE,             /* pipe -> inspection pipe: spliced bytes metered for usage */
    OP_INSPECT_READ,    /* inspection pipe -> buffer */
};
#define OP_MASK 15ull
static inline uint64_t ud_make(const void *obj, enum op op) { return (uint64_t)(uintptr_t)obj | op; }
static inline enum op ud_op(uint64_t ud) { return (enum op)(ud & OP_MASK); }
static inline void *ud_ptr(uint64_t ud) { return (void *)(uintptr_t)(ud & ~OP_MASK); }

/* ---- buffers ---- */

/* A fixed-size buffer from the shard's pool (request heads, response heads, copy relay). */
struct xbuf {
    struct xbuf *next_free;
    uint32_t cap;               /* the shard's xbuf_size, or more for a rare oversized queue */
    uint32_t len;               /* bytes used from data[0] */
    uint32_t off;               /* bytes already consumed from the front */
    char data[];
};

struct pipe_pair {
    struct pipe_pair *next_free;
    int rd, wr;
};

/* ---- configuration generations ---- */

/* Per-backend load shared by all shards: each shard writes only its own cell. */
struct backend_load {
    _Atomic uint32_t outstanding;
    char pad[60];
};

/* What the watcher last read of a backend's engine (watch.c writes, shards read).
 * The fields are independent relaxed values: a shard may see one scrape's queue
 * with the next one's KV use, which is as good for routing. */
struct backend_signal {
    _Atomic int32_t waiting;        /* -1: unknown */
    _Atomic int32_t running;        /* -1: unknown */
    _Atomic int32_t kv_permille;    /* KV-cache use x 1000; -1: unknown */
    _Atomic uint64_t scraped_ms;    /* CLOCK_MONOTONIC of the last good scrape; 0: never */
    char pad[40];
};

/* Whether a backend may get requests, shared by all shards (dispatch.c, watch.c).
 * The active check's verdict has one writer, the watcher. The circuit moves by
 * compare-and-swap, done by the shard that sees the event: a run of failures
 * opens it, a request claims the half-open probe, the probe's result closes or
 * reopens it. Those are rare events, never one per request. */
enum circuit_state { CIRCUIT_CLOSED = 0, CIRCUIT_OPEN = 1, CIRCUIT_PROBING = 2 };
/* How an attempt on a backend failed: counted against it (passive checks). */
enum backend_failure { BF_NONE = 0, BF_CONNECT, BF_RESET, BF_TIMEOUT, BF_STATUS };
struct backend_health {
    _Atomic bool checked_up;        /* the active check passes (true without one) */
    _Atomic uint8_t circuit;        /* enum circuit_state */
    _Atomic uint8_t open_cause;     /* enum backend_failure that last opened it */
    _Atomic uint32_t reopens;       /* opens since it last closed: the backoff's exponent */
    _Atomic uint64_t open_until_ms; /* CLOCK_MONOTONIC: when OPEN lets a probe through */
    _Atomic uint32_t transitions;   /* bumped on each circuit change, for the watcher's log */
} __attribute__((aligned(64)));

struct gen {
    uint64_t id;
    struct config *cfg;
    struct route_table *routes;
    int *route_metric_slot;         /* per route */
    int *backend_metric_slot;       /* per global backend index */
    unsigned *pool_first_backend;   /* pool -> index of its first backend in the global list */
    const struct cfg_backend **backend_cfg; /* global index -> cfg */
    const char **backend_pool;      /* global index -> pool name */
    struct backend_load *load;      /* [backend * nshards + shard] (shared) */
    struct backend_signal *signal;  /* per global backend (shared; written by the watcher) */
    struct backend_health *health;  /* per global backend (shared; see struct backend_health) */
    int *pool_metric_slot;          /* per pool */
    uint64_t *backend_id;           /* per global backend: balance_backend_id() */
    uint64_t *backend_interval_ms;  /* per global backend: its pool's metrics_interval */
    unsigned nshards;
    _Atomic int refs;               /* shared: one per shard that may still use it, one for main,
                                     * one for the watcher */
    struct gen *_Atomic newer;      /* shared: the next generation, set when replaced */
    /* per API key (admission.c): keyring entry order */
    struct rl_global *rl_global;    /* shared, lock-free */
    struct rl_local *rl_local;      /* [shard * rl_stride + key]: each shard its own lines */
    unsigned rl_stride;
    int *key_metric_slot;
};

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

/* A backend's idle upstream connections on one shard (upstream.c). */
struct upstream_idle {
    struct upconn *head;            /* LIFO of connections ready to be taken */
    unsigned count;                 /* connections in head */
    const struct cfg_pool *pool;    /* the backend's pool: keepalive limits (set on first use) */
};

/* Requests of one pool waiting for a backend slot on one shard, a FIFO per
 * priority (enum priority), linked through conn.qnext/qprev. */
struct pool_queue {
    struct conn *head[3], *tail[3];
    unsigned len, cap;
};

/* ---- connections ---- */

enum timer_kind { TIMER_CONN = 0, TIMER_UPCONN = 1 };

enum conn_state {
    CS_IDLE,            /* keep-alive, waiting for a request (no buffer held) */
    CS_HEAD,            /* part of a request head received */
    CS_BODY,            /* an AI route's request body being read whole */
    CS_UPSTREAM,        /* request accepted: connecting / sending / waiting for the response head */
    CS_RELAY,           /* response head sent, relaying the body */
    CS_LOCAL,           /* sending a response aigw made itself */
    CS_CLOSING,         /* fd closed, waiting for in-flight operations to complete */
    CS_FREE,
};

/* What the connection's one timer currently measures. */
enum timer_phase { T_HEADER, T_KEEPALIVE, T_CONNECT, T_FIRST_BYTE, T_IDLE, T_QUEUE };

struct upconn;
struct usage_meter;

/* One request on a client connection, from its head to the end of its response.
 * Born in request_begin() (conn.c), which sets every field: nothing of an earlier
 * request survives into the next. */
struct request {
    struct shard_gen *sg;           /* the generation it started on (NULL: no request) */
    int route;                      /* index in sg->g->cfg->routes, -1 none */
    int pool;                       /* the route's pool (or the one its split chose), -1 none */
    uint8_t method_id;              /* enum http_method */
    uint8_t body_kind;              /* enum http_body of the request */
    bool http10;                    /* the request was HTTP/1.0 */
    bool keep_alive;                /* the connection may carry another request after this one */
    bool expect_continue;
    bool body_in_first_send;        /* whole request fits in out: a stale pooled connection can be retried */
    bool resp_started;              /* a response byte went to the client: too late for another status */
    uint16_t status;
    const char *error;              /* why it failed, for the access log */
    struct xbuf *out;               /* head (+body) being sent: upstream request or client response */
    struct xbuf *body;              /* AI routes: the raw head, then the de-chunked body */
    uint32_t body_head_len;
    uint32_t in_body;               /* bytes at conn->in's front that are this request's body */
    uint64_t body_left;             /* BODY_LENGTH: body bytes not yet received */
    uint64_t body_total;            /* body bytes received so far (max_body) */
    struct chunked chunked;
    uint64_t start_us;
    uint64_t bytes_in, bytes_out;

    /* waiting for capacity and moving between backends (dispatch.c) */
    bool queued;                    /* waiting in sg->queue[pool] */
    bool fell_back;                 /* moved to its pool's fallback (one hop only) */
    uint8_t qprio;                  /* enum priority, while queued */
    uint8_t attempts;               /* backends tried beyond the first */
    uint64_t tried;                 /* pool-local indices of the backends tried (mod 64) */
    uint64_t queued_us;             /* when it started waiting */
    uint64_t retry_deadline_ms;     /* first attempt + first_byte: no retry after it */
    struct conn *qnext, *qprev;

    /* the caller and its AI request (admission.c, usage.c) */
    int32_t key;                    /* keyring entry in sg's config, -1: anonymous */
    bool ai;                        /* the body was read as an OpenAI request */
    bool stream;
    bool admitted;                  /* holds a reservation to settle */
    uint8_t limit;                  /* enum rl_limit that refused the request */
    uint32_t retry_after_s;         /* a 429's or 503's Retry-After */
    uint64_t prompt_estimate;
    struct usage_bound usage_bound; /* the most it can have used (usage.h) */
    uint64_t prefix_hash;           /* the prompt's start, for prefix routing; 0: none */
    uint64_t tokens_in, tokens_out; /* counted when the request settled */
    struct rl_ticket ticket;

    /* for the access log; truncated */
    uint8_t request_id_len;
    uint8_t model_len;
    uint16_t target_len;
    char request_id[40];
    char method[16];
    char model[96];
    char target[200];
};

/* One try of a request on one backend. Born in attempt_begin() (dispatch.c) when a
 * backend is chosen; a retry on another backend is a new attempt. */
struct attempt {
    int backend;                    /* global backend index holding a slot, -1 none */
    bool probe;                     /* this attempt is its backend's half-open probe */
    bool up_sending;                /* a send to the upstream is in flight */
    bool upstream_reused;           /* the connection came from the idle pool */
    bool retried;                   /* resent once on a fresh connection after a stale pooled one */
    bool head_topup;                /* the head recv in flight tops up a full first read (upstream.c) */
    struct upconn *up;
    struct xbuf *rbuf;              /* upstream response bytes */
    uint64_t first_byte_us;         /* when the response's first byte came */
};

/* Moving one response body to the client. Born in relay_begin() (relay.c) when
 * the response head arrives. */
struct relay {
    uint8_t resp_body;              /* enum http_body of the response */
    bool resp_keep_alive;           /* the upstream connection may be reused after it */
    bool resp_done;                 /* the upstream response is complete */
    bool dechunk;                   /* strip chunk framing for an HTTP/1.0 client */
    bool copy_only;                 /* no pipe could be had: relay by copying */
    bool tee_failed;                /* a tee fell short: usage can no longer be read */
    bool bulk;                      /* the last receive filled its buffer: the next takes an xbuf */
    bool ring_recv;                 /* the receive in flight takes a provided buffer */
    bool ring_held;                 /* body bytes wait in provided buffer ring_bid */
    bool ring_sending;              /* ... and the client send in flight reads it */
    uint16_t ring_bid;
    uint16_t ring_off, ring_len;    /* sent so far, and bytes to send, of ring_bid */
    uint8_t splice_ops;             /* splices, tees, inspection reads or their polls in flight: the pipes are busy */
    uint8_t meter;                  /* enum meter_kind (usage.c) */
    uint64_t resp_body_left;        /* BODY_LENGTH: bytes still to relay */
    struct chunked resp_chunked;
    struct pipe_pair *pipe;
    uint32_t pipe_bytes;            /* spliced in, not yet out */
    uint32_t ipipe_bytes;           /* teed, not yet read */
    struct pipe_pair *ipipe;        /* inspection pipe: a tee of the spliced bytes, read for usage */
    struct xbuf *ibuf;              /* what the inspection pipe is read into */
    struct usage_meter *usage;      /* while a 2xx AI response is metered */
};

/* A client connection: lives from accept to close and carries one request at a
 * time (HTTP/1.1; pipelined requests wait in `in`). */
struct conn {
    struct shard *sh;
    int fd;
    const struct transport_ops *tr; /* how its bytes are received and sent (transport.h) */
    uint8_t state;                  /* enum conn_state */
    uint8_t ops;                    /* SQEs in flight that name this conn */
    uint8_t tphase;                 /* enum timer_phase */
    bool recv_armed;                /* a recv in flight */
    bool recv_multishot;            /* ... and it is the multishot one (else one buffer) */
    bool recv_paused;               /* input queue full: recv cancelled until drained */
    bool send_inflight;
    bool sending_continue;          /* our "100 Continue" is the send in flight */
    bool send_deferred;             /* out is ready but waits for that send */
    bool in_pinned;                 /* in->data is being read (send in flight): do not move it */
    bool send_buf_orphan;           /* released meanwhile: freed when that send completes */
    bool ring_buf_orphan;           /* the send in flight reads provided buffer ring_orphan_bid,
                                     * which its relay let go of: returned when it completes */
    uint16_t ring_orphan_bid;
    uint8_t client_len;
    struct timer_node timer;
    struct conn *next;              /* free list / shard's list of live connections */
    struct conn *prev;
    struct xbuf *in;                /* unparsed input: partial head, request body, pipelined requests */
    struct xbuf *send_buf;          /* the buffer the client send in flight reads (NULL: none or static) */
    struct pipe_pair *pipe_orphan;  /* a pipe a splice may still use: closed when the conn is freed */
    int up_fd_orphan;               /* an upstream fd a splice may still read: closed when the conn is freed */
    uint64_t last_activity_ms;      /* a byte moved either way: the idle timer's base */
    char client[48];                /* "ip" of the peer */

    struct request req;             /* the current request (req.sg == NULL: none) */
    struct attempt at;              /* its current try on a backend */
    struct relay relay;             /* its response body on the way */
} __attribute__((aligned(16)));

enum upconn_state { UP_CONNECTING, UP_BUSY, UP_IDLE, UP_CLOSING, UP_FREE };

struct upconn {
    struct shard *sh;
    int fd;
    uint8_t state;
    uint8_t ops;
    bool watch_armed;               /* the watch recv (or the NOP handing over early bytes) is in flight */
    bool watch_nop;                 /* ... and it is that NOP */
    bool head_wanted;               /* the request went out: the watch's result is its response */
    bool has_early;                 /* the watch completed before that: early_res waits in owner->rbuf */
    int32_t early_res;
    uint64_t idle_since_ms;         /* when it was released to the pool */
    struct conn *owner;             /* while busy */
    struct shard_gen *sg;
    unsigned backend;               /* global backend index in sg->g */
    struct xbuf *io_buf;            /* the buffer the send/recv in flight uses */
    bool io_buf_orphan;             /* its conn let go of it: freed when that op completes */
    bool splice_pending;            /* a splice reads this fd: the close waits for it */
    struct upconn *next;            /* free list / idle list */
    struct timer_node timer;
} __attribute__((aligned(16)));

struct listener {
    struct shard *sh;
    int fd;
    bool accepting;
    const struct cfg_addr *addr;
    /* out of descriptors: accepting paused (see shard.c, accept_pause) */
    uint64_t resume_ms;             /* 0: not paused */
    uint32_t backoff_ms;
    unsigned fds_held_at_pause;     /* the shard's connections then; fewer: retry early */
    uint64_t last_log_ms;           /* of the last pause logged: one line a second at most */
    unsigned unlogged;              /* pauses since that line */
    bool pause_logged;              /* since the last successful accept */
} __attribute__((aligned(16)));

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

    struct listener listeners[CFG_MAX_LISTEN];
    unsigned nlisteners;
    unsigned accept_paused;         /* listeners waiting for descriptors */

    struct shard_gen *sg;           /* current generation */
    struct http_request scratch_req;    /* parsed head being handled (one at a time) */
    struct http_response scratch_resp;

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
    uint64_t realtime_offset_us;    /* CLOCK_REALTIME - CLOCK_MONOTONIC, for log timestamps */
    bool draining;
    bool stopped;
};

/* Process-wide, written by main (control plane), read by shards. */
struct runtime {
    unsigned nshards;
    struct shard *shards;
    struct gen *_Atomic current;
    _Atomic bool draining;
    _Atomic unsigned shards_running;
    _Atomic bool ready;
};
extern struct runtime rt;

/* shard.c */
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
struct xbuf *xbuf_get(struct shard *sh);
struct xbuf *xbuf_get_cap(struct shard *sh, uint32_t cap);
void xbuf_put(struct shard *sh, struct xbuf *b);
struct pipe_pair *pipe_get(struct shard *sh);
void pipe_put(struct shard *sh, struct pipe_pair *p, bool clean);
void shard_gen_request_done(struct shard *sh, struct shard_gen *sg);
int shard_start_all(void);
bool shard_join_all(uint64_t deadline_ms);
int listeners_open(const struct config *cfg, unsigned nshards);

/* gen.c */
/* prev: the generation it replaces (NULL at start): keys inherit their limits' state */
struct gen *gen_create(struct config *cfg, const struct gen *prev, unsigned nshards, char *err,
                       size_t errlen);
void gen_unref(struct gen *g);
/* Scraped load counts only while fresh: a backend whose metrics stopped coming
 * (stalled, overloaded, unreachable) is unknown, never idle. */
static inline bool backend_signal_fresh(const struct gen *g, unsigned backend, uint64_t now_ms)
{
    uint64_t at = atomic_load_explicit(&g->signal[backend].scraped_ms, memory_order_acquire);
    uint64_t interval = g->backend_interval_ms[backend];
    uint64_t max_age = 3 * interval > interval + 1000 ? 3 * interval : interval + 1000;
    return at && now_ms >= at && now_ms - at <= max_age;
}

static inline uint32_t gen_outstanding(const struct gen *g, unsigned backend)
{
    uint32_t sum = 0;
    for (unsigned s = 0; s < g->nshards; s++)
        sum += atomic_load_explicit(&g->load[backend * g->nshards + s].outstanding, memory_order_relaxed);
    return sum;
}

/* conn.c */
static inline const struct config *conn_config(const struct conn *c)
{
    return (c->req.sg ? c->req.sg : c->sh->sg)->g->cfg;
}
void conn_accepted(struct shard *sh, int fd);
void conn_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe);
void conn_on_upstream_cqe(struct conn *c, enum op op, int res);
void conn_timer_fired(struct conn *c);
void conn_shard_draining(struct conn *c);
void conn_close(struct conn *c);
void conn_maybe_free(struct conn *c);
void conn_upstream_ready(struct conn *c);
void conn_upstream_recv_head(struct conn *c);
void conn_upstream_failed(struct conn *c, int err, const char *why);
void conn_set_timer(struct conn *c, enum timer_phase phase, uint64_t ms);
const struct cfg_timeouts *conn_timeouts(const struct conn *c);
void conn_send_out(struct conn *c);
void conn_drop_buf(struct conn *c, struct xbuf *b);
void conn_send_continue(struct conn *c);
void conn_send_error(struct conn *c, int status, const char *type, const char *code,
                     const char *msg);
bool conn_request_body_complete(const struct conn *c);
void conn_choose_pool(struct conn *c);
void conn_attempt_failed(struct conn *c, enum backend_failure f, int err, const char *why);
enum priority conn_priority(const struct conn *c);
struct http_forward conn_forward_info(const struct conn *c);

/* What dispatch.c decided for a request (conn_dispatched applies it). */
enum dispatch_verdict {
    DISPATCH_GO,        /* c->at.backend holds a slot: start an attempt there */
    DISPATCH_QUEUED,    /* waiting for capacity for up to queue_ms */
    DISPATCH_SHED,      /* no capacity: 503 for shed_reason, with retry_after_s */
};
struct dispatch_outcome {
    uint8_t verdict;                /* enum dispatch_verdict */
    uint8_t shed_reason;            /* enum shed_reason */
    uint32_t retry_after_s;
    uint64_t queue_ms;
};
/* The one way dispatch.c acts on a connection, for the request it was given and
 * for queued ones that a freed slot or a timeout decided. */
void conn_dispatched(struct conn *c, struct dispatch_outcome o);

/* dispatch.c: from a pool to a backend. The request's pool is chosen and its
 * upstream bytes are ready (c->req.out, or for AI requests c->req.body, from which the
 * forwarded head is written per backend). */
void dispatch_request(struct conn *c);
/* An attempt failed before the response reached the client: true if the request
 * went on to another backend (the caller then does nothing more). */
bool dispatch_retry(struct conn *c);
/* The outcome of the current attempt, for the backend's health. */
void dispatch_attempt_result(struct conn *c, enum backend_failure f);
/* The request is done with its backend (or leaves its queue): the slot goes to
 * the next waiting request. */
void dispatch_release(struct conn *c);
void dispatch_queue_expired(struct conn *c);
/* Queued requests look for capacity freed on other shards. */
void dispatch_poll(struct shard *sh);
int dispatch_shard_gen_init(struct shard_gen *sg);
void dispatch_shard_gen_free(struct shard_gen *sg);
/* The view shards and the watcher share of whether a backend takes requests. */
static inline bool backend_available(const struct gen *g, unsigned b)
{
    return atomic_load_explicit(&g->health[b].checked_up, memory_order_relaxed) &&
           atomic_load_explicit(&g->health[b].circuit, memory_order_relaxed) == CIRCUIT_CLOSED;
}

/* ai_request.c */
size_t ai_request_start(struct conn *c, const char *src, size_t n, const struct http_request *req);
ssize_t ai_request_collect(struct conn *c, const char *p, size_t n);
void ai_request_ready(struct conn *c);
/* Writes c->req.out (forwarded head + body) from c->req.body for c->req.pool/c->at.backend.
 * False when it cannot (the error is then sent). */
bool ai_request_build_out(struct conn *c);

/* upstream.c */
void upstream_acquire(struct conn *c);
void upstream_acquire_new(struct conn *c);
void upstream_release(struct upconn *u, bool reusable);
void upconn_on_cqe(struct upconn *u, enum op op, struct io_uring_cqe *cqe);
void upconn_timer_fired(struct upconn *u);
void upconn_close(struct upconn *u);
void upstream_close_idle(struct shard *sh, struct shard_gen *sg);
int upconn_detach_fd(struct upconn *u);
/* The response head is wanted: true if the connection's idle watch brings it. */
bool upstream_head_from_watch(struct conn *c);

/* relay.c: its entry points say what became of the response; conn.c acts on it. */
enum relay_step {
    RELAY_MORE,         /* operations in flight: the relay goes on when they complete */
    RELAY_DONE,         /* the whole response reached the client */
    RELAY_ABORT,        /* the response broke off mid-way (why): close the connection */
    RELAY_REFUSED,      /* the response head cannot be passed on (why): nothing was sent, 502 */
};
struct relay_outcome {
    enum relay_step step;
    const char *why;
};
/* The response head arrived: c->req.out holds the client's head (and the first
 * body bytes) to send when it returns RELAY_MORE. */
struct relay_outcome relay_response_head(struct conn *c, const struct http_response *resp);
struct relay_outcome relay_on_upstream_recv(struct conn *c, int res);
struct relay_outcome relay_client_sent(struct conn *c, int n);
struct relay_outcome relay_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe);
/* The upstream receive in flight brought provided buffer bid (upstream.c). */
void relay_upstream_buffer(struct conn *c, unsigned bid);
/* The request ends: the relay's provided buffer goes back (after a send reading it). */
void relay_end(struct conn *c);
void relay_ring_buf_put(struct shard *sh, unsigned bid);

#endif
