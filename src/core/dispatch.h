/* From a pool to a backend (dispatch.c): candidates (health, circuit,
 * max_outstanding), the per-pool priority queue, fallback, shedding, passive
 * outlier detection, retries on another backend. Dispatch decides; the
 * connection acts on the decision (conn_dispatched, conn.h). */
#ifndef AIGW_CORE_DISPATCH_H
#define AIGW_CORE_DISPATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "core/gen.h"       /* enum backend_failure */

struct conn;
struct shard;
struct shard_gen;

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

/* Requests of one pool waiting for a backend slot on one shard, a FIFO per
 * priority (enum priority), linked through conn.qnext/qprev. */
struct pool_queue {
    struct conn *head[3], *tail[3];
    unsigned len, cap;
};

/* The request's pool is chosen and its upstream bytes are ready (c->req.out, or
 * for AI requests c->req.body, from which the forwarded head is written per
 * backend). */
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

#endif
