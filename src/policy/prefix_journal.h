/* A shard's broadcast of its prefix placements, so the other shards' block
 * indexes learn them in batches (pool key prefix_index = shared).
 *
 * One writer (the owning shard) appends an entry per placement to a fixed ring
 * of 64-bit words: a header (generation, pool, backend, block count), then the
 * placed block hashes. Readers (every other shard) copy entries from their own
 * cursor up to the writer's published position. Nothing is locked or allocated
 * after init; the writer never waits for a reader. A reader that falls more
 * than a ring behind loses entries: it skips to the writer's position and
 * counts it (an index then misses some placements, which only costs affinity).
 *
 * Memory order: the writer first announces how far it is about to write
 * (`reserved`), then a release fence, then the words, then publishes `head`
 * (release). A reader loads head (acquire), copies an entry with relaxed loads,
 * then an acquire fence and reads `reserved`: if the writer may since have
 * overwritten the entry's words, the copy is dropped as lapped. */
#ifndef AIGW_POLICY_PREFIX_JOURNAL_H
#define AIGW_POLICY_PREFIX_JOURNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define PREFIX_JOURNAL_MAX_BLOCKS 64u   /* blocks per entry: OPENAI_PREFIX_BLOCKS_MAX */
#define PREFIX_JOURNAL_WORDS (1u << 16) /* per shard: 512 KiB, >= 1000 full placements */
#define PREFIX_JOURNAL_MAX_POOLS 1024u
#define PREFIX_JOURNAL_MAX_BACKENDS 32768u

struct prefix_journal {
    _Atomic uint64_t *word;             /* [capacity], allocated once */
    unsigned mask;                      /* capacity - 1 */
    /* the writer's, each on its own line: readers poll them */
    _Alignas(64) _Atomic uint64_t head; /* words published (monotonic) */
    _Alignas(64) _Atomic uint64_t reserved; /* words the writer may have written */
};

/* One reader's position in one writer's journal. */
struct prefix_journal_cursor {
    uint64_t pos;
    uint64_t applied;                   /* entries handed to the reader */
    uint64_t lapped;                    /* times the writer overtook the reader (entries lost) */
};

/* One placement read back. */
struct prefix_placement {
    unsigned pool, backend, n;
    const uint64_t *block;              /* [n], valid during the callback only */
};

/* capacity_words: a power of two >= 2 x (1 + PREFIX_JOURNAL_MAX_BLOCKS).
 * Returns 0, or -1 when out of memory or capacity_words is not valid. */
int prefix_journal_init(struct prefix_journal *j, unsigned capacity_words);
void prefix_journal_free(struct prefix_journal *j);

/* The writer's append: generation gen_id (its low 32 bits are compared),
 * pool < PREFIX_JOURNAL_MAX_POOLS, backend < PREFIX_JOURNAL_MAX_BACKENDS (its
 * index in the pool); block[0..n) with n capped at PREFIX_JOURNAL_MAX_BLOCKS.
 * Out-of-range pool or backend, or n == 0: nothing is written. */
void prefix_journal_append(struct prefix_journal *j, uint64_t gen_id, unsigned pool, unsigned backend,
                           const uint64_t *block, unsigned n);

/* A cursor starting at what the writer has published so far (a reader that
 * begins now sees only placements from now on). */
void prefix_journal_cursor_init(const struct prefix_journal *j, struct prefix_journal_cursor *c);

/* Hands each entry of generation gen_id from c->pos up to the writer's current
 * position to apply(arg, placement), skipping other generations' entries, and
 * advances c. Returns the entries handed over. At most max_entries entries (of
 * any generation) are read per call (0: no bound), so a burst costs a bounded
 * time per batch; the rest waits for the next call. */
unsigned prefix_journal_read(const struct prefix_journal *j, struct prefix_journal_cursor *c, uint64_t gen_id,
                             unsigned max_entries, void (*apply)(void *arg, const struct prefix_placement *p),
                             void *arg);

#endif
