/* A response body on its way to the client (relay.c): splice upstream -> pipe ->
 * client (with a tee to meter usage), or copy when the framing must be followed
 * or no pipe can be had; and the order of the client sends. */
#ifndef AIGW_CORE_RELAY_H
#define AIGW_CORE_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ring.h"
#include "proto/http1.h"    /* struct chunked */

#define PIPE_CHUNK (64 * 1024)      /* bytes spliced per step (default pipe capacity) */

struct conn;
struct io_uring_cqe;
struct pipe_pair;
struct usage_meter;
struct xbuf;

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

/* relay.c's entry points say what became of the response; conn.c acts on it. */
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
struct shard;
void relay_ring_buf_put(struct shard *sh, unsigned bid);

#endif
