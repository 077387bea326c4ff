/* The simulated engine's prefix cache: an LRU of prompt blocks, each named by a
 * hash chained over every block before it, so a hit on block k means the whole
 * prompt up to block k was seen before (as vLLM's automatic prefix caching). */
#ifndef AIGW_MOCKLLM_PREFIX_H
#define AIGW_MOCKLLM_PREFIX_H

#include <stddef.h>
#include <stdint.h>

/* Most blocks one prompt contributes; later ones are neither looked up nor cached. */
#define PREFIX_MAX_BLOCKS 8192

/* Cuts prompt text into blocks of MOCK_BLOCK_TOKENS tokens and chains their hashes. */
struct prefix_hasher {
    uint64_t chain;
    uint32_t fill;
    uint32_t nblocks;
    unsigned char block[64];
    uint64_t hashes[PREFIX_MAX_BLOCKS];
};

void prefix_hasher_reset(struct prefix_hasher *h);
void prefix_hasher_feed(void *hasher, const char *p, size_t n);   /* a text_sink_fn */

/* Sizes the cache (in tokens; 0 disables it). Returns -1 if memory is short. */
int prefix_cache_init(uint64_t capacity_tokens);
void prefix_cache_free(void);
int prefix_cache_enabled(void);

/* Looks the prompt's blocks up and returns how many leading blocks were cached;
 * then makes all of them the most recently used (evicting the least recent). */
uint32_t prefix_cache_query(const uint64_t *hashes, uint32_t n);

#endif
