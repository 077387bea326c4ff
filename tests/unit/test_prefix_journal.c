/* The placement journal of prefix_index = shared: one writer, readers with their
 * own cursors, generations filtered, a lapped reader skipping ahead. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "policy/prefix_journal.h"

enum { SMALL = 256 }; /* words: the smallest valid ring, 2 x (1 + 64) rounded up */

struct seen {
    unsigned n;
    struct { unsigned pool, backend, nblocks; uint64_t first, last; } e[64];
};

static void collect(void *arg, const struct prefix_placement *p)
{
    struct seen *s = arg;
    if (s->n < 64)
        s->e[s->n] = (typeof(s->e[0])){ p->pool, p->backend, p->n, p->block[0], p->block[p->n - 1] };
    s->n++;
}

/* a placement's blocks: tag * 1000 + k + 1 (never 0) */
static void append(struct prefix_journal *j, uint64_t gen, unsigned pool, unsigned backend, uint64_t tag,
                   unsigned n)
{
    uint64_t b[PREFIX_JOURNAL_MAX_BLOCKS];
    for (unsigned k = 0; k < n; k++)
        b[k] = tag * 1000 + k + 1;
    prefix_journal_append(j, gen, pool, backend, b, n);
}

static struct prefix_journal *journal(unsigned words)
{
    static struct prefix_journal j __attribute__((aligned(64)));
    cr_assert_eq(prefix_journal_init(&j, words), 0);
    return &j;
}

Test(prefix_journal, init_rejects_bad_sizes)
{
    struct prefix_journal j __attribute__((aligned(64)));
    cr_assert_eq(prefix_journal_init(&j, 100), -1, "too small for two full entries");
    cr_assert_eq(prefix_journal_init(&j, 1000), -1, "not a power of two");
    cr_assert_eq(prefix_journal_init(&j, SMALL), 0);
    prefix_journal_free(&j);
}

Test(prefix_journal, reader_gets_every_placement_in_order)
{
    struct prefix_journal *j = journal(PREFIX_JOURNAL_WORDS);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    append(j, 7, 0, 2, 1, 3);
    append(j, 7, 5, 0, 2, 64);
    append(j, 7, 1, 32767, 3, 1);
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 7, 0, collect, &s), 3);
    cr_assert_eq(s.n, 3);
    cr_assert_eq(s.e[0].pool, 0);
    cr_assert_eq(s.e[0].backend, 2);
    cr_assert_eq(s.e[0].nblocks, 3);
    cr_assert_eq(s.e[0].first, 1001);
    cr_assert_eq(s.e[0].last, 1003);
    cr_assert_eq(s.e[1].pool, 5);
    cr_assert_eq(s.e[1].nblocks, 64);
    cr_assert_eq(s.e[1].last, 2064);
    cr_assert_eq(s.e[2].backend, 32767);
    cr_assert_eq(s.e[2].first, 3001);
    /* nothing new: nothing handed over again */
    cr_assert_eq(prefix_journal_read(j, &c, 7, 0, collect, &s), 0);
    cr_assert_eq(c.applied, 3);
    cr_assert_eq(c.lapped, 0);
    prefix_journal_free(j);
}

Test(prefix_journal, long_placements_are_capped_and_bad_ones_dropped)
{
    struct prefix_journal *j = journal(SMALL);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    uint64_t b[PREFIX_JOURNAL_MAX_BLOCKS + 10];
    for (unsigned k = 0; k < PREFIX_JOURNAL_MAX_BLOCKS + 10; k++)
        b[k] = k + 1;
    prefix_journal_append(j, 1, 0, 0, b, PREFIX_JOURNAL_MAX_BLOCKS + 10);
    prefix_journal_append(j, 1, PREFIX_JOURNAL_MAX_POOLS, 0, b, 4);     /* pool out of range */
    prefix_journal_append(j, 1, 0, PREFIX_JOURNAL_MAX_BACKENDS, b, 4);  /* backend out of range */
    prefix_journal_append(j, 1, 0, 0, b, 0);                            /* no block */
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 1, 0, collect, &s), 1);
    cr_assert_eq(s.e[0].nblocks, PREFIX_JOURNAL_MAX_BLOCKS);
    cr_assert_eq(s.e[0].last, PREFIX_JOURNAL_MAX_BLOCKS);
    prefix_journal_free(j);
}

Test(prefix_journal, reader_catches_up_in_bounded_batches)
{
    struct prefix_journal *j = journal(PREFIX_JOURNAL_WORDS);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    for (unsigned i = 0; i < 10; i++)
        append(j, 3, 0, i, i + 1, 8);
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 3, 4, collect, &s), 4);
    cr_assert_eq(prefix_journal_read(j, &c, 3, 4, collect, &s), 4);
    append(j, 3, 0, 10, 11, 8);
    cr_assert_eq(prefix_journal_read(j, &c, 3, 0, collect, &s), 3);
    cr_assert_eq(s.n, 11);
    for (unsigned i = 0; i < 11; i++) {
        cr_assert_eq(s.e[i].backend, i, "placement %u out of order", i);
        cr_assert_eq(s.e[i].first, (i + 1) * 1000 + 1);
    }
    prefix_journal_free(j);
}

Test(prefix_journal, a_cursor_begins_at_the_present)
{
    struct prefix_journal *j = journal(SMALL);
    append(j, 1, 0, 0, 1, 4);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    append(j, 1, 0, 1, 2, 4);
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 1, 0, collect, &s), 1);
    cr_assert_eq(s.e[0].backend, 1);
    prefix_journal_free(j);
}

Test(prefix_journal, other_generations_are_skipped)
{
    struct prefix_journal *j = journal(SMALL);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    append(j, 4, 0, 0, 1, 4);   /* the generation before a reload */
    append(j, 5, 0, 1, 2, 4);
    append(j, 4, 0, 2, 3, 4);
    append(j, 5ull + (1ull << 32), 0, 3, 4, 4); /* only the low 32 bits are compared */
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 5, 0, collect, &s), 2);
    cr_assert_eq(s.e[0].backend, 1);
    cr_assert_eq(s.e[1].backend, 3);
    cr_assert_eq(c.lapped, 0);
    /* skipped entries are consumed: a later read does not hand them over */
    cr_assert_eq(prefix_journal_read(j, &c, 4, 0, collect, &s), 0);
    prefix_journal_free(j);
}

Test(prefix_journal, a_lapped_reader_skips_ahead_and_counts_it)
{
    struct prefix_journal *j = journal(SMALL);
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(j, &c);
    /* 10 entries of 33 words: 330 > 256, the oldest were overwritten */
    for (unsigned i = 0; i < 10; i++)
        append(j, 1, 0, i, i + 1, 32);
    struct seen s = { 0 };
    cr_assert_eq(prefix_journal_read(j, &c, 1, 0, collect, &s), 0);
    cr_assert_eq(c.lapped, 1);
    /* from then on it reads what comes, intact */
    append(j, 1, 0, 99, 42, 32);
    cr_assert_eq(prefix_journal_read(j, &c, 1, 0, collect, &s), 1);
    cr_assert_eq(s.e[0].backend, 99);
    cr_assert_eq(s.e[0].first, 42001);
    cr_assert_eq(s.e[0].last, 42032);
    cr_assert_eq(c.lapped, 1);
    prefix_journal_free(j);
}

/* A writer thread racing a reader on a small ring: whatever the reader is handed
 * is a whole placement (its blocks agree with its backend), never a torn mix. */
struct race {
    struct prefix_journal *j;
    unsigned placements;
    _Atomic bool done;
};

static void *writer(void *arg)
{
    struct race *r = arg;
    for (unsigned i = 0; i < r->placements; i++)
        append(r->j, 1, 0, i & 0x7fff, i & 0x7fff, 1 + i % 64);
    atomic_store(&r->done, true);
    return NULL;
}

struct checked {
    unsigned n, bad;
};

static void check(void *arg, const struct prefix_placement *p)
{
    struct checked *c = arg;
    c->n++;
    for (unsigned k = 0; k < p->n; k++)
        if (p->block[k] != (uint64_t)p->backend * 1000 + k + 1)
            c->bad++;
}

Test(prefix_journal, a_racing_reader_never_sees_a_torn_placement)
{
    struct race r = { .j = journal(SMALL), .placements = 200000 };
    struct prefix_journal_cursor c;
    prefix_journal_cursor_init(r.j, &c);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, writer, &r), 0);
    struct checked got = { 0 };
    for (unsigned round = 0; round < 10000000 && !atomic_load(&r.done); round++)
        prefix_journal_read(r.j, &c, 1, 0, check, &got);
    pthread_join(t, NULL);
    /* the reader may have been lapped at every turn: once caught up, the next placement it must get */
    prefix_journal_read(r.j, &c, 1, 0, check, &got);
    unsigned before = got.n;
    append(r.j, 1, 0, 7, 7, 5);
    cr_assert_eq(prefix_journal_read(r.j, &c, 1, 0, check, &got), 1);
    cr_assert_eq(got.n, before + 1);
    cr_assert_eq(got.bad, 0, "%u torn placements among %u", got.bad, got.n);
    cr_assert_gt(got.n, 0);
    cr_assert_leq(got.n, r.placements + 1);
    prefix_journal_free(r.j);
}
