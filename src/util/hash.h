/* The one non-cryptographic hash: XXH3 (libxxhash). For hash tables, routing keys
 * and duplicate checks; never for anything an attacker must not forge. Values are
 * stable across processes and runs of the same build (the prefix balancer and
 * tests rely on that), not across a change of algorithm. */
#ifndef AIGW_UTIL_HASH_H
#define AIGW_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

uint64_t hash_bytes(const void *p, size_t n);

/* A different function per seed; chaining pieces as
 * h = hash_bytes_seeded(piece, len, h) hashes a sequence of pieces, with their
 * boundaries counting ("ab","c" is not "a","bc"). */
uint64_t hash_bytes_seeded(const void *p, size_t n, uint64_t seed);

/* XXH3-64 with seed 0, pinned: for checksums kept on disk (the state_dir
 * snapshot), which must read the same after hash_bytes changes algorithm. */
uint64_t hash_checksum64(const void *p, size_t n);

static inline uint64_t hash_str(const char *s) { return hash_bytes(s, strlen(s)); }

#endif
