#include "policy/prefix_index.h"

#include <stdlib.h>
#include <string.h>

/* the block hashes are XXH3 values already: their low bits index the table */
static uint64_t key_of(uint64_t h)
{
    return h ? h : 1;
}

int prefix_index_init(struct prefix_index *x, unsigned capacity)
{
    memset(x, 0, sizeof *x);
    if (capacity < 2)
        capacity = 2;
    x->half = capacity / 2;
    unsigned size = 4;
    while (size < 2 * x->half)      /* load factor at most 1/2: short probes */
        size *= 2;
    x->mask = size - 1;
    x->table[0] = calloc(size, sizeof(uint64_t));
    x->table[1] = calloc(size, sizeof(uint64_t));
    if (!x->table[0] || !x->table[1]) {
        prefix_index_free(x);
        return -1;
    }
    return 0;
}

void prefix_index_free(struct prefix_index *x)
{
    free(x->table[0]);
    free(x->table[1]);
    memset(x, 0, sizeof *x);
}

static bool table_has(const uint64_t *t, unsigned mask, uint64_t k)
{
    for (unsigned i = (unsigned)k & mask;; i = (i + 1) & mask) {
        if (t[i] == k)
            return true;
        if (t[i] == 0)
            return false;
    }
}

unsigned prefix_index_capacity(const struct prefix_index *x)
{
    return 2 * x->half;
}

int prefix_index_resize(struct prefix_index *x, unsigned capacity)
{
    struct prefix_index resized;
    if (prefix_index_init(&resized, capacity) != 0)
        return -1;
    if (x->table[0]) {
        const uint64_t *older = x->table[!x->cur], *current = x->table[x->cur];
        for (unsigned i = 0; i <= x->mask; i++)
            if (older[i] && !table_has(current, x->mask, older[i]))
                prefix_index_insert(&resized, older[i]);
        for (unsigned i = 0; i <= x->mask; i++)
            if (current[i])
                prefix_index_insert(&resized, current[i]);
    }
    prefix_index_free(x);
    *x = resized;
    return 0;
}

bool prefix_index_has(const struct prefix_index *x, uint64_t h)
{
    if (!x->table[0])
        return false;
    uint64_t k = key_of(h);
    return table_has(x->table[x->cur], x->mask, k) || table_has(x->table[!x->cur], x->mask, k);
}

void prefix_index_insert(struct prefix_index *x, uint64_t h)
{
    if (!x->table[0])
        return;
    uint64_t k = key_of(h);
    uint64_t *t = x->table[x->cur];
    unsigned i = (unsigned)k & x->mask;
    for (; t[i] != 0; i = (i + 1) & x->mask)
        if (t[i] == k)
            return;
    t[i] = k;
    if (++x->count >= x->half) {
        x->cur = !x->cur;
        memset(x->table[x->cur], 0, ((size_t)x->mask + 1) * sizeof(uint64_t));
        x->count = 0;
    }
}

unsigned prefix_index_match(const struct prefix_index *x, const uint64_t *block, unsigned n)
{
    unsigned k = 0;
    while (k < n && prefix_index_has(x, block[k]))
        k++;
    return k;
}
