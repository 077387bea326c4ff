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

void relay_response_head(struct conn *c, const struct http_response *resp);
void relay_on_upstream_recv(struct conn *c, int res);
void relay_client_sent(struct conn *c, int n);
void relay_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe);

#endif
