/* Upstream connections (upstream.c): connect, the per-backend keep-alive pool of
 * each shard, and the idle watch that retires a pooled connection on any byte or
 * close. */
#ifndef AIGW_CORE_UPSTREAM_H
#define AIGW_CORE_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ring.h"
#include "core/timer.h"

struct cfg_pool;
struct conn;
struct io_uring_cqe;
struct shard;
struct shard_gen;
struct tls_session;
struct up_tls;
struct xbuf;

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
    struct xbuf *watch_buf;         /* the buffer the watch recv fills (upstream.c) */
    uint64_t idle_since_ms;         /* when it was released to the pool */
    struct conn *owner;             /* while busy */
    struct shard_gen *sg;
    unsigned backend;               /* global backend index in sg->g */
    struct xbuf *io_buf;            /* the buffer the send/recv in flight uses */
    bool io_buf_orphan;             /* its conn let go of it: freed when that op completes */
    bool splice_pending;            /* a splice reads this fd: the close waits for it */
    struct up_tls *tls;             /* a TLS pool's engine state (upstream_tls.c); NULL: plaintext */
    struct upconn *next;            /* free list / idle list */
    struct timer_node timer;
} __attribute__((aligned(16)));

/* A backend's idle upstream connections on one shard (and, on a TLS pool, the
 * one session saved for resuming). */
struct upstream_idle {
    struct upconn *head;            /* LIFO of connections ready to be taken */
    unsigned count;                 /* connections in head */
    const struct cfg_pool *pool;    /* the backend's pool: keepalive limits (set on first use) */
    struct tls_session *tls_session; /* TLS pools: the session the next new connection resumes */
};

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

#endif
