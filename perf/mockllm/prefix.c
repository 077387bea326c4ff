/* LRU prefix cache: nodes in a fixed array (allocated once at start), an
 * open-addressing table from block hash to node, and an index-linked LRU list. */
#include "prefix.h"
#include "mock.h"

#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX
#define BLOCK_BYTES (MOCK_BLOCK_TOKENS * MOCK_BYTES_PER_TOKEN)

_Static_assert(BLOCK_BYTES == sizeof(((struct prefix_hasher *)0)->block), "block size");

struct node {
    uint64_t key;
    uint32_t prev, next;        /* towards MRU / towards LRU */
};

static struct {
    struct node *nodes;
    uint32_t cap, used;
    uint32_t mru, lru;
    uint32_t *slots;            /* node index + 1; 0 = empty */
    uint32_t mask;
} C;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

void prefix_hasher_reset(struct prefix_hasher *h)
{
    h->chain = 0x243f6a8885a308d3ull;
    h->fill = 0;
    h->nblocks = 0;
}

static void finish_block(struct prefix_hasher *h)
{
    uint64_t x = h->chain;
    for (size_t i = 0; i < BLOCK_BYTES; i += 8) {
        uint64_t w;
        memcpy(&w, h->block + i, 8);
        x = mix64(x ^ w);
    }
    h->chain = x;
    h->hashes[h->nblocks++] = x;
    h->fill = 0;
}

void prefix_hasher_feed(void *hasher, const char *p, size_t n)
{
    struct prefix_hasher *h = hasher;
    while (n && h->nblocks < PREFIX_MAX_BLOCKS) {
        size_t take = BLOCK_BYTES - h->fill;
        if (take > n)
            take = n;
        memcpy(h->block + h->fill, p, take);
        h->fill += (uint32_t)take;
        p += take;
        n -= take;
        if (h->fill == BLOCK_BYTES)
            finish_block(h);
    }
}

int prefix_cache_init(uint64_t capacity_tokens)
{
    uint64_t blocks = capacity_tokens / MOCK_BLOCK_TOKENS;
    if (blocks == 0)
        return 0;
    if (blocks > (1u << 26))
        blocks = 1u << 26;
    uint64_t tsize = 16;
    while (tsize < blocks * 2)
        tsize <<= 1;
    C.nodes = calloc(blocks, sizeof *C.nodes);
    C.slots = calloc(tsize, sizeof *C.slots);
    if (!C.nodes || !C.slots) {
        prefix_cache_free();
        return -1;
    }
    C.cap = (uint32_t)blocks;
    C.mask = (uint32_t)(tsize - 1);
    C.used = 0;
    C.mru = C.lru = NIL;
    return 0;
}

void prefix_cache_free(void)
{
    free(C.nodes);
    free(C.slots);
    memset(&C, 0, sizeof C);
}

int prefix_cache_enabled(void)
{
    return C.cap != 0;
}

static uint32_t slot_of(uint64_t key)
{
    uint32_t i = (uint32_t)mix64(key) & C.mask;
    while (C.slots[i] && C.nodes[C.slots[i] - 1].key != key)
        i = (i + 1) & C.mask;
    return i;
}

/* Linear-probing removal with backward shift, so no tombstones build up. */
static void table_remove(uint64_t key)
{
    uint32_t i = slot_of(key);
    if (!C.slots[i])
        return;
    for (uint32_t j = i;;) {
        C.slots[i] = 0;
        for (;;) {
            j = (j + 1) & C.mask;
            if (!C.slots[j])
                return;
            uint32_t home = (uint32_t)mix64(C.nodes[C.slots[j] - 1].key) & C.mask;
            /* move j into the hole at i unless its home lies cyclically in (i, j] */
            bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays)
                break;
        }
        C.slots[i] = C.slots[j];
        i = j;
    }
}

static void lru_unlink(uint32_t n)
{
    struct node *x = &C.nodes[n];
    if (x->prev != NIL)
        C.nodes[x->prev].next = x->next;
    else
        C.mru = x->next;
    if (x->next != NIL)
        C.nodes[x->next].prev = x->prev;
    else
        C.lru = x->prev;
}

static void lru_push_front(uint32_t n)
{
    struct node *x = &C.nodes[n];
    x->prev = NIL;
    x->next = C.mru;
    if (C.mru != NIL)
        C.nodes[C.mru].prev = n;
    C.mru = n;
    if (C.lru == NIL)
        C.lru = n;
}

static void touch(uint64_t key)
{
    uint32_t i = slot_of(key);
    if (C.slots[i]) {
        uint32_t n = C.slots[i] - 1;
        lru_unlink(n);
        lru_push_front(n);
        return;
    }
    uint32_t n;
    if (C.used < C.cap) {
        n = C.used++;
    } else {
        n = C.lru;
        lru_unlink(n);
        table_remove(C.nodes[n].key);
        i = slot_of(key);
    }
    C.nodes[n].key = key;
    C.slots[i] = n + 1;
    lru_push_front(n);
}

uint32_t prefix_cache_query(const uint64_t *hashes, uint32_t n)
{
    if (!C.cap)
        return 0;
    uint32_t hits = 0;
    while (hits < n && C.slots[slot_of(hashes[hits])])
        hits++;
    /* Touch from the last block back to the first, so eviction takes a prompt's
     * tail before its head: a head is what later prompts share. */
    for (uint32_t k = n; k-- > 0;)
        touch(hashes[k]);
    return hits;
}
