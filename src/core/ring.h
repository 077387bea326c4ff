/* What a completion is for: every SQE's user_data is the object it belongs to
 * (a conn, upconn or listener, all 16-byte aligned) with the operation in the low
 * bits. Every module that queues an SQE encodes; the shard's completion
 * demultiplexer (shard.c, demux_cqe) decodes and hands the CQE to the owner. */
#ifndef AIGW_CORE_RING_H
#define AIGW_CORE_RING_H

#include <stdint.h>

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
    OP_TEE,             /* pipe -> inspection pipe: spliced bytes metered for usage */
    OP_INSPECT_READ,    /* inspection pipe -> buffer */
};
#define OP_MASK 15ull
static inline uint64_t ud_make(const void *obj, enum op op) { return (uint64_t)(uintptr_t)obj | op; }
static inline enum op ud_op(uint64_t ud) { return (enum op)(ud & OP_MASK); }
static inline void *ud_ptr(uint64_t ud) { return (void *)(uintptr_t)(ud & ~OP_MASK); }

#endif
