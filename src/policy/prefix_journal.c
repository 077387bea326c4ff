/* The single-writer placement journal (prefix_journal.h). */
#include "policy/prefix_journal.h"

#include <stdlib.h>

/* An entry's header word: generation (32 bits) | pool (10) | backend (15) | blocks (7). */
static uint64_t header_pack(uint64_t gen_id, unsigned pool, unsigned backend, unsigned n)
{
    return (gen_id & 0xffffffffu) << 32 | (uint64_t)pool << 22 | (uint64_t)backend << 7 | n;
}

int prefix_journal_init(struct prefix_journal *j, unsigned capacity_words)
{
    j->word = NULL;
    if (capacity_words < 2 * (1 + PREFIX_JOURNAL_MAX_BLOCKS) || (capacity_words & (capacity_words - 1)))
        return -1;
    /* calloc: pages a shard never writes (prefix_index = shard) are never touched */
    j->word = calloc(capacity_words, sizeof *j->word);
    if (!j->word)
        return -1;
    j->mask = capacity_words - 1;
    atomic_init(&j->head, 0);
    atomic_init(&j->reserved, 0);
    return 0;
}

void prefix_journal_free(struct prefix_journal *j)
{
    free(j->word);
    j->word = NULL;
}

void prefix_journal_append(struct prefix_journal *j, uint64_t gen_id, unsigned pool, unsigned backend,
                           const uint64_t *block, unsigned n)
{
    if (!j->word || pool >= PREFIX_JOURNAL_MAX_POOLS || backend >= PREFIX_JOURNAL_MAX_BACKENDS || n == 0)
        return;
    if (n > PREFIX_JOURNAL_MAX_BLOCKS)
        n = PREFIX_JOURNAL_MAX_BLOCKS;
    uint64_t h = atomic_load_explicit(&j->head, memory_order_relaxed); /* only this thread writes it */
    atomic_store_explicit(&j->reserved, h + 1 + n, memory_order_relaxed);
    /* a reader that sees any word below must also see the reservation covering it */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&j->word[h & j->mask], header_pack(gen_id, pool, backend, n), memory_order_relaxed);
    for (unsigned k = 0; k < n; k++)
        atomic_store_explicit(&j->word[(h + 1 + k) & j->mask], block[k], memory_order_relaxed);
    atomic_store_explicit(&j->head, h + 1 + n, memory_order_release);
}

void prefix_journal_cursor_init(const struct prefix_journal *j, struct prefix_journal_cursor *c)
{
    c->pos = atomic_load_explicit(&j->head, memory_order_acquire);
    c->applied = 0;
    c->lapped = 0;
}

unsigned prefix_journal_read(const struct prefix_journal *j, struct prefix_journal_cursor *c, uint64_t gen_id,
                             unsigned max_entries, void (*apply)(void *arg, const struct prefix_placement *p),
                             void *arg)
{
    if (!j->word)
        return 0;
    uint64_t cap = (uint64_t)j->mask + 1;
    uint64_t head = atomic_load_explicit(&j->head, memory_order_acquire);
    uint32_t gen = (uint32_t)gen_id;
    unsigned handed = 0, examined = 0;
    uint64_t block[PREFIX_JOURNAL_MAX_BLOCKS];
    while (c->pos != head && (max_entries == 0 || examined < max_entries)) {
        examined++;
        if (head - c->pos > cap) {
            c->lapped++;
            c->pos = head;
            break;
        }
        uint64_t hdr = atomic_load_explicit(&j->word[c->pos & j->mask], memory_order_relaxed);
        unsigned n = (unsigned)(hdr & 0x7f);
        bool sane = n >= 1 && n <= PREFIX_JOURNAL_MAX_BLOCKS && c->pos + 1 + n <= head;
        bool ours = sane && (uint32_t)(hdr >> 32) == gen;
        if (ours)
            for (unsigned k = 0; k < n; k++)
                block[k] = atomic_load_explicit(&j->word[(c->pos + 1 + k) & j->mask], memory_order_relaxed);
        /* were the words just read overwritten meanwhile? (the writer reserves before writing) */
        atomic_thread_fence(memory_order_acquire);
        uint64_t reserved = atomic_load_explicit(&j->reserved, memory_order_relaxed);
        if (reserved - c->pos > cap || !sane) {
            /* a torn header cannot be trusted for its length: resume at a known entry start */
            c->lapped++;
            c->pos = atomic_load_explicit(&j->head, memory_order_acquire);
            break;
        }
        if (ours) {
            struct prefix_placement p = {
                .pool = (unsigned)(hdr >> 22) & (PREFIX_JOURNAL_MAX_POOLS - 1),
                .backend = (unsigned)(hdr >> 7) & (PREFIX_JOURNAL_MAX_BACKENDS - 1),
                .n = n,
                .block = block,
            };
            apply(arg, &p);
            c->applied++;
            handed++;
        }
        c->pos += 1 + n;
    }
    return handed;
}
