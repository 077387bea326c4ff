/* Which requests are traced, and the ids of their spans. Pure; the random
 * numbers come from a per-shard generator seeded once (no syscall per request). */
#ifndef AIGW_TRACE_SAMPLING_H
#define AIGW_TRACE_SAMPLING_H

#include <stdbool.h>
#include <stdint.h>

/* xorshift128+: ids must be unique and unpredictable enough to not collide
 * across hosts, not secret. s[0] | s[1] must not be 0. */
struct trace_rng {
    uint64_t s[2];
};

static inline uint64_t trace_rng_next(struct trace_rng *r)
{
    uint64_t s1 = r->s[0];
    const uint64_t s0 = r->s[1];
    r->s[0] = s0;
    s1 ^= s1 << 23;
    r->s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return r->s[1] + s0;
}

/* Fills n bytes (8 or 16) with a random id that is never all zero. */
void trace_new_id(struct trace_rng *r, uint8_t *id, unsigned n);

enum trace_parent_state { TRACE_NO_PARENT, TRACE_PARENT_SAMPLED, TRACE_PARENT_UNSAMPLED };

/* The parent's decision wins (sampled: always traced; unsampled: never); a
 * request without a valid parent is traced with probability
 * sample_millionths / 1e6, decided by `random`. */
static inline bool trace_sample(enum trace_parent_state parent, uint32_t sample_millionths, uint64_t random)
{
    if (parent == TRACE_PARENT_SAMPLED)
        return true;
    if (parent == TRACE_PARENT_UNSAMPLED)
        return false;
    return random % 1000000u < sample_millionths;
}

#endif
