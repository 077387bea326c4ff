/* prefix_cache_blocks = auto: the prefix index sized from the engine's cache
 * (balance_cache_blocks, balance_prefix_fit) and resized keeping what it holds
 * (prefix_index_resize). */
#include <criterion/criterion.h>
#include <string.h>

#include "policy/balance.h"
#include "policy/prefix_index.h"

static unsigned held(const struct prefix_index *x, uint64_t from, uint64_t to)
{
    unsigned n = 0;
    for (uint64_t h = from; h <= to; h++)
        n += prefix_index_has(x, h);
    return n;
}

Test(prefix_index, resize_grow_keeps_everything)
{
    struct prefix_index x;
    cr_assert_eq(prefix_index_init(&x, 64), 0);
    for (uint64_t h = 1; h <= 40; h++)     /* a rotation at 32: both generations in use */
        prefix_index_insert(&x, h);
    cr_assert_eq(prefix_index_resize(&x, 4096), 0);
    cr_expect_eq(prefix_index_capacity(&x), 4096);
    cr_expect_eq(held(&x, 1, 40), 40);
    /* and it now keeps far more than 64 */
    for (uint64_t h = 1000; h < 3000; h++)
        prefix_index_insert(&x, h);
    cr_expect_eq(held(&x, 1000, 2999), 2000);
    prefix_index_free(&x);
}

Test(prefix_index, resize_shrink_keeps_the_current_generation)
{
    struct prefix_index x;
    cr_assert_eq(prefix_index_init(&x, 4096), 0);
    /* 1..2048 fill the first generation, 2049..3000 are the current one */
    for (uint64_t h = 1; h <= 3000; h++)
        prefix_index_insert(&x, h);
    cr_assert_eq(prefix_index_resize(&x, 1024), 0);
    cr_expect_eq(prefix_index_capacity(&x), 1024);
    /* re-inserted older first: the 952 most recent are the last 952 inserted */
    cr_expect_eq(held(&x, 2049, 3000), 952);
    cr_expect_eq(held(&x, 1, 2048), 0);
    prefix_index_free(&x);
}

Test(prefix_index, resize_of_an_empty_index)
{
    struct prefix_index x;
    memset(&x, 0, sizeof x);
    cr_assert_eq(prefix_index_resize(&x, 100), 0);
    cr_expect_eq(prefix_index_capacity(&x), 100);
    prefix_index_insert(&x, 7);
    cr_expect(prefix_index_has(&x, 7));
    prefix_index_free(&x);
}

Test(prefix_fit, tokens_to_blocks)
{
    cr_expect_eq(balance_cache_blocks(0), 0, "unknown stays unknown");
    cr_expect_eq(balance_cache_blocks(1), BALANCE_CACHE_BLOCKS_MIN);
    cr_expect_eq(balance_cache_blocks(1024), 64);
    /* 4 bytes a token, 256-byte blocks, 4 times the cache */
    cr_expect_eq(balance_cache_blocks(8192), 128 * BALANCE_RECORD_PER_CACHE);
    cr_expect_eq(balance_cache_blocks(262144), 4096 * BALANCE_RECORD_PER_CACHE);
    cr_expect_eq(balance_cache_blocks(UINT64_C(1) << 40), BALANCE_CACHE_BLOCKS_MAX);
}

static void views(struct backend_view *v, unsigned n)
{
    memset(v, 0, n * sizeof *v);
    for (unsigned i = 0; i < n; i++) {
        v[i].up = true;
        v[i].weight = 1;
    }
}

Test(prefix_fit, follows_the_view_with_hysteresis)
{
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 3), 0);
    cr_assert_eq(balance_state_prefix_init(&s, 0), 0);      /* auto */
    struct backend_view v[3];
    views(v, 3);
    for (unsigned i = 0; i < 3; i++)
        cr_expect_eq(prefix_index_capacity(&s.index[i]), BALANCE_PREFIX_CACHE_BLOCKS);
    balance_prefix_fit(&s, v, 3);      /* nothing known: nothing moves */
    for (unsigned i = 0; i < 3; i++)
        cr_expect_eq(prefix_index_capacity(&s.index[i]), BALANCE_PREFIX_CACHE_BLOCKS);

    v[0].cache_blocks = 128;
    v[1].cache_blocks = 5000;          /* within 25% of 4096: kept */
    v[2].cache_blocks = 5200;          /* beyond: resized */
    balance_prefix_fit(&s, v, 3);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 128);
    cr_expect_eq(prefix_index_capacity(&s.index[1]), 4096);
    cr_expect_eq(prefix_index_capacity(&s.index[2]), 5200);

    /* a wobbling figure never reallocates; a real change does */
    v[0].cache_blocks = 150;
    balance_prefix_fit(&s, v, 3);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 128);
    v[0].cache_blocks = 97;
    balance_prefix_fit(&s, v, 3);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 128);
    v[0].cache_blocks = 161;
    balance_prefix_fit(&s, v, 3);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 160);
    /* unknown again (stale metrics): the size stays */
    v[0].cache_blocks = 0;
    balance_prefix_fit(&s, v, 3);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 160);
    balance_state_free(&s);
}

Test(prefix_fit, a_configured_size_always_wins)
{
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 2), 0);
    cr_assert_eq(balance_state_prefix_init(&s, 1000), 0);
    struct backend_view v[2];
    views(v, 2);
    v[0].cache_blocks = 64;
    v[1].cache_blocks = 100000;
    balance_prefix_fit(&s, v, 2);
    cr_expect_eq(prefix_index_capacity(&s.index[0]), 1000);
    cr_expect_eq(prefix_index_capacity(&s.index[1]), 1000);
    balance_state_free(&s);
}

enum { BLOCKS = 8 };

static struct prompt_blocks prompt(uint64_t *block, uint64_t family)
{
    for (unsigned k = 0; k < BLOCKS; k++)
        block[k] = family * 1000003u + k + 1;
    return (struct prompt_blocks){ block, BLOCKS };
}

/* Routes p to backend `to` by leaving only it up. */
static void send_to(struct balance_state *s, struct backend_view *v, unsigned to, const struct prompt_blocks *p)
{
    v[0].up = to == 0;
    v[1].up = to == 1;
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, s, v, 2, p), (int)to);
    v[0].up = v[1].up = true;
}

/* What a small engine cache means for routing: a prompt sent long ago is
 * forgotten once the engine's cache (64 blocks) has turned over, while an index
 * sized for a large cache still sends it back. */
static enum balance_reason revisit(uint32_t cache_blocks)
{
    struct balance_state s;
    cr_assert_eq(balance_state_init(&s, 2), 0);
    cr_assert_eq(balance_state_prefix_init(&s, 0), 0);
    balance_state_seed(&s, 3);
    struct backend_view v[2];
    views(v, 2);
    v[0].cache_blocks = v[1].cache_blocks = cache_blocks;
    uint64_t b[BLOCKS], o[BLOCKS];
    struct prompt_blocks first = prompt(b, 1);
    send_to(&s, v, 0, &first);
    for (uint64_t f = 2; f < 12; f++) {        /* 80 other blocks to the same engine */
        struct prompt_blocks other = prompt(o, f);
        send_to(&s, v, 0, &other);
    }
    int pick = balance_pick_load(BALANCE_PREFIX, &s, v, 2, &first);
    enum balance_reason r = s.last_reason;
    cr_expect(pick == 0 || r == BALANCE_REASON_LOAD);
    balance_state_free(&s);
    return r;
}

Test(prefix_fit, a_small_engine_cache_forgets_old_prompts)
{
    cr_expect_eq(revisit(64), BALANCE_REASON_LOAD);
    cr_expect_eq(revisit(100000), BALANCE_REASON_AFFINITY);
    cr_expect_eq(revisit(0), BALANCE_REASON_AFFINITY, "unknown: 4096 blocks");
}
