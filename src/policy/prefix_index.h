/* Where a pool's prompt blocks went: per backend, a bounded set of the block
 * hashes aigw routed there recently, as an estimate of what the engine's prefix
 * (KV) cache holds. Memory is allocated once (prefix_index_init); inserting and
 * looking up never allocate. Not thread-safe: each shard keeps its own. */
#ifndef AIGW_POLICY_PREFIX_INDEX_H
#define AIGW_POLICY_PREFIX_INDEX_H

#include <stdbool.h>
#include <stdint.h>

/* Approximate LRU in two generations: inserts go to the current one; when it
 * holds capacity/2 hashes the older one is emptied and becomes the current one.
 * A hash inserted again while only in the older generation is copied to the
 * current one, so what is used survives and what is not leaves within two
 * rotations. At most `capacity` hashes are held; a hash is forgotten only after
 * at least capacity/2 other distinct hashes were inserted after its last use. */
struct prefix_index {
    uint64_t *table[2];     /* open addressing, linear probing; 0 is an empty slot */
    unsigned mask;          /* table size - 1 (a power of two, >= 2 x half) */
    unsigned half;          /* hashes per generation */
    unsigned count;         /* in the current generation */
    unsigned cur;           /* 0 or 1 */
};

/* capacity: the hashes kept, >= 2. Returns 0, or -1 when out of memory. */
int prefix_index_init(struct prefix_index *x, unsigned capacity);
void prefix_index_free(struct prefix_index *x);
/* The hashes it holds at most (capacity rounded down to even). */
unsigned prefix_index_capacity(const struct prefix_index *x);
/* Reallocates x to hold `capacity` hashes, keeping what it holds: the older
 * generation's hashes are inserted first, then the current one's, so when the
 * new size is smaller the older ones are the first to go (within a generation
 * the order of use is not recorded, so which of them stay is arbitrary).
 * O(old table size) and it allocates: for rare calls only, never per request.
 * Returns 0, or -1 when out of memory (x is then unchanged). */
int prefix_index_resize(struct prefix_index *x, unsigned capacity);

bool prefix_index_has(const struct prefix_index *x, uint64_t h);
void prefix_index_insert(struct prefix_index *x, uint64_t h);

/* How many of block[0..n) are held, counting from block[0] up to the first one
 * that is not (chained hashes: block k is held only if its prefix was). */
unsigned prefix_index_match(const struct prefix_index *x, const uint64_t *block, unsigned n);

#endif
