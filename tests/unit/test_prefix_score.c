/* The prefix scorer (balance_pick_load's prefix) and its block index, with
 * scripted engine load and routing histories. */
#include <criterion/criterion.h>
#include <string.h>

#include "policy/balance.h"
#include "policy/prefix_index.h"

enum { NB = 3, BLOCKS = 8 };

/* n backends, up, weight w[i] (the engine's batch slots), idle and known */
static void views(struct backend_view *v, unsigned n, const unsigned *w)
{
    memset(v, 0, n * sizeof *v);
    for (unsigned i = 0; i < n; i++) {
        v[i].up = true;
        v[i].weight = w ? w[i] : 1;
        v[i].kv_usage = 0.0f;
    }
}

static void state(struct balance_state *s, unsigned n, unsigned cache_blocks)
{
    cr_assert_eq(balance_state_init(s, n), 0);
    cr_assert_eq(balance_state_prefix_init(s, cache_blocks), 0);
    balance_state_seed(s, 7);
}

/* a prompt of BLOCKS chained blocks: family f's first `shared` blocks, then its own */
static struct prompt_blocks prompt(uint64_t *block, uint64_t family, unsigned shared, uint64_t own)
{
    uint64_t h = 0;
    for (unsigned k = 0; k < BLOCKS; k++) {
        h = h * 0x9e3779b97f4a7c15ull + (k < shared ? family : own) * 0xbf58476d1ce4e5b9ull + k + 1;
        block[k] = h;
    }
    return (struct prompt_blocks){ block, BLOCKS };
}

/* routes p to backend `to` (the only one up): its index then holds p's blocks */
static void history(struct balance_state *s, struct backend_view *v, unsigned n, unsigned to,
                    const struct prompt_blocks *p)
{
    bool up[8];
    for (unsigned i = 0; i < n; i++) {
        up[i] = v[i].up;
        v[i].up = i == to;
    }
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, s, v, n, p), (int)to);
    for (unsigned i = 0; i < n; i++)
        v[i].up = up[i];
}

Test(prefix_index, evicts_within_its_bound_keeping_what_is_used)
{
    struct prefix_index x;
    cr_assert_eq(prefix_index_init(&x, 64), 0);
    const uint64_t hot = 0xabcdef;
    for (uint64_t h = 1; h <= 1000; h++) {
        prefix_index_insert(&x, h * 0x9e3779b97f4a7c15ull);
        if (h % 8 == 0)
            prefix_index_insert(&x, hot);   /* used all along */
    }
    unsigned held = 0;
    for (uint64_t h = 1; h <= 1000; h++)
        held += prefix_index_has(&x, h * 0x9e3779b97f4a7c15ull);
    cr_expect_leq(held, 64, "held %u of 1000 with capacity 64", held);
    cr_expect_geq(held, 24, "the recent half generation at least: %u", held);
    cr_expect(prefix_index_has(&x, hot), "a hash in use survives");
    cr_expect_not(prefix_index_has(&x, 1 * 0x9e3779b97f4a7c15ull), "the oldest is gone");
    for (uint64_t h = 1000 - 20; h <= 1000; h++)
        cr_expect(prefix_index_has(&x, h * 0x9e3779b97f4a7c15ull), "recent %llu held", (unsigned long long)h);
    prefix_index_free(&x);
}

Test(prefix_index, chained_blocks_match_their_shared_start)
{
    struct prefix_index x;
    cr_assert_eq(prefix_index_init(&x, 256), 0);
    uint64_t a[BLOCKS], b[BLOCKS], c[BLOCKS];
    struct prompt_blocks pa = prompt(a, 1, BLOCKS, 0);
    for (unsigned k = 0; k < BLOCKS; k++)
        prefix_index_insert(&x, pa.block[k]);
    for (unsigned shared = 0; shared <= BLOCKS; shared++) {
        struct prompt_blocks pb = prompt(b, 1, shared, 2);
        cr_expect_eq(prefix_index_match(&x, pb.block, pb.n), shared, "%u shared blocks", shared);
    }
    /* a different first block: nothing, though later blocks were chained from it */
    struct prompt_blocks pc = prompt(c, 3, BLOCKS, 0);
    cr_expect_eq(prefix_index_match(&x, pc.block, pc.n), 0);
    prefix_index_free(&x);
}

Test(prefix_score, affinity_holds_while_there_is_room)
{
    static const unsigned slots[NB] = { 8, 8, 8 };
    struct backend_view v[NB];
    views(v, NB, slots);
    struct balance_state s;
    state(&s, NB, 4096);
    uint64_t b[BLOCKS];
    struct prompt_blocks p = prompt(b, 1, BLOCKS, 0);
    int first = balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p);
    cr_assert(first >= 0);
    cr_expect_eq(s.last_reason, BALANCE_REASON_LOAD, "nothing known yet: capacity's pick");
    /* the same prompt while its engine fills its batch: affinity, though the others are idle */
    for (int i = 1; i < 8; i++) {
        v[first].outstanding = v[first].running = i;
        cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p), first, "running %d", i);
        cr_assert_eq(s.last_reason, BALANCE_REASON_AFFINITY);
    }
    /* another prompt goes by load: to an engine with a free slot */
    v[first].outstanding = v[first].running = 8;
    uint64_t o[BLOCKS];
    struct prompt_blocks other = prompt(o, 9, BLOCKS, 0);
    int k = balance_pick_load(BALANCE_PREFIX, &s, v, NB, &other);
    cr_expect_neq(k, first);
    cr_expect_eq(s.last_reason, BALANCE_REASON_LOAD);
    balance_state_free(&s);
}

Test(prefix_score, spills_when_the_preferred_backend_saturates)
{
    struct backend_view v[NB];
    views(v, NB, NULL);
    struct balance_state s;
    state(&s, NB, 4096);
    uint64_t b[BLOCKS];
    struct prompt_blocks p = prompt(b, 1, BLOCKS, 0);
    history(&s, v, NB, 1, &p);
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p), 1);
    /* saturated by its queue, then by its KV cache: never chosen while another has room */
    v[1].running = 8;
    v[1].waiting = BALANCE_WAITING_SATURATED + 1;
    for (int i = 0; i < 20; i++)
        cr_assert_neq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p), 1);
    v[1].waiting = 0;
    v[1].kv_usage = 0.95f;
    for (int i = 0; i < 20; i++)
        cr_assert_neq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p), 1);
    /* the prefix spread to where it spilled: affinity follows it there */
    int spilled = balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p);
    cr_expect_neq(spilled, 1);
    cr_expect_eq(s.last_reason, BALANCE_REASON_AFFINITY);
    /* every candidate saturated: the least loaded still gets it */
    for (unsigned i = 0; i < NB; i++)
        v[i].kv_usage = 0.95f;
    cr_expect_geq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &p), 0);
    balance_state_free(&s);
}

Test(prefix_score, a_longer_match_ranks_above_a_shorter_one)
{
    static const unsigned slots[NB] = { 8, 8, 8 };
    struct backend_view v[NB];
    views(v, NB, slots);
    struct balance_state s;
    state(&s, NB, 4096);
    uint64_t b0[BLOCKS], b2[BLOCKS], b[BLOCKS];
    struct prompt_blocks one = prompt(b0, 1, 1, 100);   /* shares the first block */
    struct prompt_blocks four = prompt(b2, 1, 4, 200);  /* shares four */
    history(&s, v, NB, 0, &one);
    history(&s, v, NB, 2, &four);
    /* more load on the longer match, within its room */
    v[2].running = v[2].outstanding = 1;
    for (int i = 0; i < 10; i++) {
        struct prompt_blocks q = prompt(b, 1, 6, 300 + (uint64_t)i);
        cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &q), 2, "pick %d", i);
        cr_assert_eq(s.last_reason, BALANCE_REASON_AFFINITY);
    }
    balance_state_free(&s);
}

Test(prefix_score, an_idle_large_engine_beats_a_queued_small_one_holding_the_prefix)
{
    static const unsigned slots[2] = { 4, 16 };
    struct backend_view v[2];
    views(v, 2, slots);
    struct balance_state s;
    state(&s, 2, 4096);
    uint64_t b[BLOCKS];
    struct prompt_blocks p = prompt(b, 5, BLOCKS, 0);
    history(&s, v, 2, 0, &p);
    /* the small engine's batch is half full: the prefill saved wins */
    v[0].running = v[0].outstanding = 2;
    cr_expect_eq(balance_pick_load(BALANCE_PREFIX, &s, v, 2, &p), 0);
    cr_expect_eq(s.last_reason, BALANCE_REASON_AFFINITY);
    /* full, with requests waiting for a slot (not yet saturated): the queue
     * outweighs the prefill saved, the large idle engine gets it */
    v[0].running = 4;
    v[0].waiting = 3;
    v[0].outstanding = 7;
    cr_assert_lt(v[0].waiting, (int32_t)BALANCE_WAITING_SATURATED);
    cr_expect_eq(balance_pick_load(BALANCE_PREFIX, &s, v, 2, &p), 1);
    cr_expect_eq(s.last_reason, BALANCE_REASON_LOAD);
    balance_state_free(&s);
    /* a prompt whose saved prefill outweighs that wait (here: blocks weighing 20
     * times as much, as a prompt 20 times as long would) stays on the small one */
    state(&s, 2, 4096);
    s.tune.prefix_weight = 20.0f;
    struct backend_view w[2];
    views(w, 2, slots);
    history(&s, w, 2, 0, &p);
    cr_expect_eq(balance_pick_load(BALANCE_PREFIX, &s, v, 2, &p), 0);
    cr_expect_eq(s.last_reason, BALANCE_REASON_AFFINITY);
    balance_state_free(&s);
}

Test(prefix_score, prefix_max_blocks_bounds_the_work)
{
    struct backend_view v[NB];
    views(v, NB, NULL);
    struct balance_state s;
    state(&s, NB, 4096);
    s.tune.prefix_max_blocks = 2;
    uint64_t b[BLOCKS], c[BLOCKS];
    struct prompt_blocks p = prompt(b, 1, BLOCKS, 0);
    history(&s, v, NB, 1, &p);
    cr_expect(prefix_index_has(&s.index[1], b[1]));
    cr_expect_not(prefix_index_has(&s.index[1], b[2]), "only the first two blocks are recorded");
    /* a prompt sharing just the first two blocks is a full match */
    struct prompt_blocks q = prompt(c, 1, 2, 7);
    v[1].weight = 4;
    v[1].running = 1;
    cr_expect_eq(balance_pick_load(BALANCE_PREFIX, &s, v, NB, &q), 1);
    balance_state_free(&s);
}

/* the backend a new opening is placed on, with nothing recorded anywhere */
static int home_of(struct backend_view *v, unsigned n, uint64_t opening)
{
    struct balance_state s;
    state(&s, n, 64);
    uint64_t b[1] = { opening };
    struct prompt_blocks p = { b, 1 };
    int k = balance_pick_load(BALANCE_PREFIX, &s, v, n, &p);
    cr_assert_eq(s.last_reason, BALANCE_REASON_LOAD);
    balance_state_free(&s);
    return k;
}

Test(prefix_score, unknown_prompts_have_a_stable_home_in_proportion_to_size)
{
    static const unsigned slots[NB] = { 4, 8, 16 };
    struct backend_view v[NB];
    views(v, NB, slots);
    for (unsigned i = 0; i < NB; i++)
        v[i].id = 0x1000 + i;
    enum { OPENINGS = 2800 };
    static int home[OPENINGS];
    unsigned count[NB] = { 0 };
    for (unsigned o = 0; o < OPENINGS; o++) {
        uint64_t opening = (o + 1) * 0x9e3779b97f4a7c15ull;
        home[o] = home_of(v, NB, opening);
        cr_assert(home[o] >= 0 && home[o] < NB);
        count[home[o]]++;
        cr_assert_eq(home_of(v, NB, opening), home[o], "the same opening, the same home");
    }
    /* 4:8:16 of 2800 is 400:800:1600 */
    cr_expect(count[0] > 300 && count[0] < 500, "small: %u", count[0]);
    cr_expect(count[1] > 680 && count[1] < 920, "middle: %u", count[1]);
    cr_expect(count[2] > 1450 && count[2] < 1750, "large: %u", count[2]);
    /* the small one leaves (down): only its openings move */
    v[0].up = false;
    for (unsigned o = 0; o < OPENINGS; o++) {
        int k = home_of(v, NB, (o + 1) * 0x9e3779b97f4a7c15ull);
        if (home[o] != 0)
            cr_assert_eq(k, home[o], "opening %u moved from %d to %d", o, home[o], k);
        else
            cr_assert(k == 1 || k == 2);
    }
    /* a full home: the opening goes to the next one with a free slot */
    v[0].up = true;
    unsigned o = 0;
    while (home[o] != 2)
        o++;
    v[2].outstanding = v[2].running = 16;
    int k = home_of(v, NB, (o + 1) * 0x9e3779b97f4a7c15ull);
    cr_expect(k == 0 || k == 1, "spilled to %d", k);
}
