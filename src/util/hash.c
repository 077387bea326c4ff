#include "util/hash.h"

/* Compiled into this file: no shared library to load, and XXH3's short-input
 * paths are inlined into the two entry points. */
#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t hash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

uint64_t hash_bytes_seeded(const void *p, size_t n, uint64_t seed)
{
    return XXH3_64bits_withSeed(p, n, seed);
}

uint64_t hash_checksum64(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}
