/* Client connections (conn.c): a connection from accept to close, the request
 * it carries, that request's attempt on a backend, and the response relay
 * embedded in it (relay.h). conn.c owns the connection's state; the other
 * request-path modules write the fields given in docs/ARCHITECTURE.md ("Who
 * writes what") and answer with outcomes. */
#ifndef AIGW_CORE_CONN_H
#define AIGW_CORE_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "core/accesslog.h"     /* enum termination, ALOG_BACKENDS_MAX */
#include "core/config.h"        /* enum priority */
#include "core/dispatch.h"      /* struct dispatch_outcome, enum backend_failure */
#include "core/relay.h"
#include "core/req_trace.h"
#include "core/ring.h"
#include "core/timer.h"
#include "core/usage.h"         /* struct usage_bound */
#include "policy/ratelimit.h"   /* struct rl_ticket */
#include "proto/http1.h"        /* struct chunked, struct http_forward */
#include "proto/openai.h"       /* OPENAI_PREFIX_BLOCKS_MAX */

struct io_uring_cqe;
struct pipe_pair;
struct tls_link;
struct shard;
struct shard_gen;
struct transport_ops;
struct upconn;
struct xbuf;

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
enum timer_phase { T_HEADER, T_KEEPALIVE, T_CONNECT, T_FIRST_BYTE, T_IDLE, T_QUEUE, T_HANDSHAKE };

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
    uint8_t limit_mode;             /* enum cluster_admission the decision was made under */
    uint32_t retry_after_s;         /* a 429's or 503's Retry-After */
    uint64_t prompt_estimate;
    struct usage_bound usage_bound; /* the most it can have used (usage.h) */
    uint32_t prefix_blocks;         /* the prompt's chained block hashes, for prefix routing */
    uint64_t prefix_block[OPENAI_PREFIX_BLOCKS_MAX];
    uint64_t tokens_in, tokens_out; /* counted when the request settled */
    uint8_t model_slot;             /* its model's metric label slot (0: "other"), set with the model */
    uint32_t price_section;         /* its model's [model] section (cfg->models index) + 1; 0: none */
    uint64_t cost_pusd;             /* pico-USD, set when the request settled (cost.h) */
    /* a stream's generated-token (content) events as they pass to the client (usage.c) */
    uint64_t token_events;
    uint64_t first_token_us, last_token_us;
    struct rl_ticket ticket;
    struct req_trace trace;         /* sampled: its ids and traceparent (req_trace.h) */

    /* for the access log; truncated */
    uint8_t termination;            /* enum termination: why it ended, if not normally */
    uint8_t ntried;                 /* backends_tried entries used */
    int32_t backends_tried[ALOG_BACKENDS_MAX]; /* global backend indices, first tries in order */
    uint64_t queue_us;              /* waits for capacity added up */
    uint8_t request_id_len;
    uint8_t model_len;
    uint16_t target_len;
    char request_id[40];
    char method[16];
    char model[96];
    char target[200];
};

/* One try of a request on one backend. Born in attempt_begin() (conn.c) when a
 * backend is chosen; a retry on another backend is a new attempt. */
struct attempt {
    int backend;                    /* global backend index holding a slot, -1 none */
    bool probe;                     /* this attempt is its backend's half-open probe */
    bool up_sending;                /* a send to the upstream is in flight */
    bool upstream_reused;           /* the connection came from the idle pool */
    bool retried;                   /* resent once on a fresh connection after a stale pooled one */
    struct upconn *up;
    struct xbuf *rbuf;              /* upstream response bytes */
    uint64_t first_byte_us;         /* when the response's first byte came */
    uint64_t start_us;              /* when its backend was chosen */
};

/* A client connection: lives from accept to close and carries one request at a
 * time (HTTP/1.1; pipelined requests wait in `in`). */
struct conn {
    struct shard *sh;
    int fd;
    const struct transport_ops *tr; /* how its bytes are received and sent (transport.h) */
    struct tls_link *tls;           /* the TLS transport's state; NULL: plaintext */
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

/* tls: accepted on a [tls] listener */
void conn_accepted(struct shard *sh, int fd, bool tls);
void conn_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe);
void conn_on_upstream_cqe(struct conn *c, enum op op, int res);
void conn_timer_fired(struct conn *c);
/* Its shard starts draining; handed_over: a successor accepts on the same sockets
 * (connections then end only where the client was told Connection: close). */
void conn_shard_draining(struct conn *c, bool handed_over);
/* drain_timeout ran out with c still open: its request (if any) is cut, logged
 * with termination drain_timeout and settled on what it used so far. */
void conn_drain_expired(struct conn *c);
/* The client went away (closed, reset, a send failed, TLS close_notify) under
 * its request: the connection closes, the request ends as 499 (termination
 * client_abort) and counts in aigw_client_aborts_total. */
void conn_client_aborted(struct conn *c, const char *why);
void conn_close(struct conn *c);
void conn_maybe_free(struct conn *c);
void conn_upstream_ready(struct conn *c);
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
/* The one way dispatch.c acts on a connection, for the request it was given and
 * for queued ones that a freed slot or a timeout decided (dispatch.h). */
void conn_dispatched(struct conn *c, struct dispatch_outcome o);

#endif
