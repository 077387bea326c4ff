/* A reload's new balance state takes over the prefix indexes of the backends
 * that stay (balance_state_adopt_prefix): affinity survives, joiners start
 * empty, and the old state keeps picking (as capacity) for its in-flight
 * requests. */
#include <criterion/criterion.h>
#include <string.h>

#include "policy/balance.h"
#include "policy/prefix_index.h"

enum { BLOCKS = 8, CACHE = 256 };

static void views(struct backend_view *v, unsigned n)
{
    memset(v, 0, n * sizeof *v);
    for (unsigned i = 0; i < n; i++) {
        v[i].up = true;
        v[i].weight = 1;
    }
}

static void state(struct balance_state *s, unsigned n)
{
    cr_assert_eq(balance_state_init(s, n), 0);
    cr_assert_eq(balance_state_prefix_init(s, CACHE), 0);
    balance_state_seed(s, 11);
}

static struct prompt_blocks prompt(uint64_t *block, uint64_t family)
{
    uint64_t h = 0;
    for (unsigned k = 0; k < BLOCKS; k++) {
        h = h * 0x9e3779b97f4a7c15ull + family * 0xbf58476d1ce4e5b9ull + k + 1;
        block[k] = h;
    }
    return (struct prompt_blocks){ block, BLOCKS };
}

/* routes p with only backend `to` up, so its index records p */
static void route_to(struct balance_state *s, struct backend_view *v, unsigned n, unsigned to,
                     const struct prompt_blocks *p)
{
    for (unsigned i = 0; i < n; i++)
        v[i].up = i == to;
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, s, v, n, p), (int)to);
    for (unsigned i = 0; i < n; i++)
        v[i].up = true;
}

Test(prefix_adopt, staying_backends_keep_their_blocks_joiners_start_empty)
{
    /* old: a b c; new: c x a (b left, x joined, order changed) */
    struct balance_state old, next;
    struct backend_view v[3];
    uint64_t ba[BLOCKS], bb[BLOCKS], bc[BLOCKS];
    struct prompt_blocks pa = prompt(ba, 1), pb = prompt(bb, 2), pc = prompt(bc, 3);
    state(&old, 3);
    views(v, 3);
    route_to(&old, v, 3, 0, &pa);
    route_to(&old, v, 3, 1, &pb);
    route_to(&old, v, 3, 2, &pc);
    old.slots[0] = 8;
    old.slots[2] = 4;

    state(&next, 3);
    const int map[3] = { 2, -1, 0 };
    balance_state_adopt_prefix(&next, &old, map);

    cr_assert_eq(prefix_index_match(&next.index[0], bc, BLOCKS), BLOCKS, "c's blocks moved with it");
    cr_assert_eq(prefix_index_match(&next.index[2], ba, BLOCKS), BLOCKS, "a's blocks moved with it");
    cr_assert_eq(prefix_index_match(&next.index[1], bb, BLOCKS), 0, "the joiner starts empty");
    cr_assert_eq(prefix_index_match(&next.index[0], ba, BLOCKS), 0);
    cr_assert_eq(next.slots[0], 4);
    cr_assert_eq(next.slots[1], 0);
    cr_assert_eq(next.slots[2], 8);

    /* and the new state routes by them: a goes to a, now at position 2 */
    views(v, 3);
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &next, v, 3, &pa), 2);
    cr_assert_eq(next.last_reason, BALANCE_REASON_AFFINITY);
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &next, v, 3, &pc), 0);
    cr_assert_eq(next.last_reason, BALANCE_REASON_AFFINITY);
    /* b left with its backend: placed by load */
    int pick = balance_pick_load(BALANCE_PREFIX, &next, v, 3, &pb);
    cr_assert(pick >= 0 && pick < 3);
    cr_assert_eq(next.last_reason, BALANCE_REASON_LOAD);

    /* the old state still serves its in-flight requests' retries, as capacity */
    cr_assert_null(old.index);
    cr_assert_null(old.slots);
    for (int k = 0; k < 16; k++) {
        pick = balance_pick_load(BALANCE_PREFIX, &old, v, 3, &pa);
        cr_assert(pick >= 0 && pick < 3, "old state picked %d", pick);
        cr_assert_eq(old.last_reason, BALANCE_REASON_LOAD);
    }
    v[0].up = v[1].up = false;
    cr_assert_eq(balance_pick_load(BALANCE_PREFIX, &old, v, 3, &pa), 2);

    balance_state_free(&old);
    balance_state_free(&next);
}

Test(prefix_adopt, one_old_backend_moves_once_and_empty_states_are_left_alone)
{
    struct balance_state old, next, capacity;
    struct backend_view v[2];
    uint64_t ba[BLOCKS];
    struct prompt_blocks pa = prompt(ba, 5);
    state(&old, 2);
    views(v, 2);
    route_to(&old, v, 2, 1, &pa);

    /* a map naming the same old backend twice: the first gets it, the second starts empty */
    state(&next, 2);
    const int map[2] = { 1, 1 };
    balance_state_adopt_prefix(&next, &old, map);
    cr_assert_eq(prefix_index_match(&next.index[0], ba, BLOCKS), BLOCKS);
    cr_assert_eq(prefix_index_match(&next.index[1], ba, BLOCKS), 0);

    /* a successor without an index (the pool is no longer prefix): nothing moves */
    cr_assert_eq(balance_state_init(&capacity, 2), 0);
    balance_state_adopt_prefix(&capacity, &next, map);
    cr_assert_null(capacity.index);
    cr_assert_eq(prefix_index_match(&next.index[0], ba, BLOCKS), BLOCKS, "kept by the state that had it");

    balance_state_free(&old);
    balance_state_free(&next);
    balance_state_free(&capacity);
}
