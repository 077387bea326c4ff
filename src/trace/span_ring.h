/* A bounded single-producer/single-consumer ring of finished spans: the shard
 * pushes, the exporter thread pops. No lock and no syscall on either side; a
 * full ring drops the span and counts it (the producer is that counter's one
 * writer). */
#ifndef AIGW_TRACE_SPAN_RING_H
#define AIGW_TRACE_SPAN_RING_H

#include <stdatomic.h>
#include <stdint.h>

#include "trace/span.h"

struct span_ring {
    _Atomic uint32_t head;          /* next slot the producer fills */
    _Atomic uint64_t dropped;       /* spans the ring had no room for (producer writes) */
    char pad1[48];
    _Atomic uint32_t tail;          /* next slot the consumer reads */
    char pad2[60];
    uint32_t mask;
    struct span_record slots[];
};

/* slots: a power of two. NULL when out of memory. */
struct span_ring *span_ring_new(uint32_t slots);
void span_ring_free(struct span_ring *r);

/* Producer: the slot to fill, or NULL (and the span counted dropped) when full;
 * the filled slot becomes visible with span_ring_commit. */
struct span_record *span_ring_reserve(struct span_ring *r);
void span_ring_commit(struct span_ring *r);

/* Consumer: copies up to max spans out, oldest first; returns how many. */
uint32_t span_ring_pop(struct span_ring *r, struct span_record *out, uint32_t max);
uint32_t span_ring_fill(struct span_ring *r);
static inline uint32_t span_ring_capacity(const struct span_ring *r) { return r->mask + 1; }

#endif
