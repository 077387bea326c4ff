#include "trace/span_ring.h"

#include <stdlib.h>

struct span_ring *span_ring_new(uint32_t slots)
{
    if (slots == 0 || (slots & (slots - 1)))
        return NULL;
    struct span_ring *r = calloc(1, sizeof *r + (size_t)slots * sizeof r->slots[0]);
    if (r)
        r->mask = slots - 1;
    return r;
}

void span_ring_free(struct span_ring *r)
{
    free(r);
}

struct span_record *span_ring_reserve(struct span_ring *r)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail > r->mask) {
        atomic_store_explicit(&r->dropped, atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return NULL;
    }
    return &r->slots[head & r->mask];
}

void span_ring_commit(struct span_ring *r)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

uint32_t span_ring_pop(struct span_ring *r, struct span_record *out, uint32_t max)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint32_t n = head - tail;
    if (n > max)
        n = max;
    for (uint32_t i = 0; i < n; i++)
        out[i] = r->slots[(tail + i) & r->mask];
    atomic_store_explicit(&r->tail, tail + n, memory_order_release);
    return n;
}

uint32_t span_ring_fill(struct span_ring *r)
{
    return atomic_load_explicit(&r->head, memory_order_acquire) -
           atomic_load_explicit(&r->tail, memory_order_acquire);
}
