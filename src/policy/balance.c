#include "policy/balance.h"

#include <stdlib.h>

int balance_state_init(struct balance_state *s, unsigned nbackends)
{
    s->n = nbackends;
    s->rr_next = 0;
    s->current_weight = NULL;
    if (nbackends) {
        s->current_weight = calloc(nbackends, sizeof *s->current_weight);
        if (!s->current_weight) {
            s->n = 0;
            return -1;
        }
    }
    return 0;
}

void balance_state_free(struct balance_state *s)
{
    free(s->current_weight);
    s->current_weight = NULL;
    s->n = 0;
}

static bool available(unsigned i, const uint32_t *outstanding, const bool *up,
                      unsigned max_outstanding)
{
    if (up && !up[i])
        return false;
    return max_outstanding == 0 || !outstanding || outstanding[i] < max_outstanding;
}

static int pick_smooth_weighted(struct balance_state *s, const struct cfg_backend *backends,
                                unsigned n, const uint32_t *outstanding, const bool *up,
                                unsigned max_outstanding)
{
    int64_t total = 0;
    int best = -1;
    for (unsigned i = 0; i < n; i++) {
        if (!available(i, outstanding, up, max_outstanding))
            continue;
        unsigned w = backends[i].weight ? backends[i].weight : 1;
        s->current_weight[i] += w;
        total += w;
        if (best < 0 || s->current_weight[i] > s->current_weight[best])
            best = (int)i;
    }
    if (best >= 0)
        s->current_weight[best] -= total;
    return best;
}

static int pick_least_outstanding(struct balance_state *s, const struct cfg_backend *backends,
                                  unsigned n, const uint32_t *outstanding, const bool *up,
                                  unsigned max_outstanding)
{
    int best = -1;
    uint64_t best_load = 0, best_weight = 1;
    unsigned start = s->rr_next < n ? s->rr_next : 0;
    for (unsigned k = 0; k < n; k++) {
        unsigned i = start + k < n ? start + k : start + k - n;
        if (!available(i, outstanding, up, max_outstanding))
            continue;
        uint64_t load = outstanding ? outstanding[i] : 0;
        uint64_t w = backends[i].weight ? backends[i].weight : 1;
        /* load/w < best_load/best_weight without division */
        if (best < 0 || load * best_weight < best_load * w) {
            best = (int)i;
            best_load = load;
            best_weight = w;
        }
    }
    if (best >= 0)
        s->rr_next = (unsigned)best + 1 < n ? (unsigned)best + 1 : 0;
    return best;
}

int balance_pick(enum balance_kind kind, struct balance_state *s,
                 const struct cfg_backend *backends, unsigned n,
                 const uint32_t *outstanding, const bool *up, unsigned max_outstanding)
{
    if (n > s->n)
        n = s->n;
    if (n == 0)
        return -1;
    switch (kind) {
    case BALANCE_ROUND_ROBIN:
        return pick_smooth_weighted(s, backends, n, outstanding, up, max_outstanding);
    case BALANCE_LEAST_OUTSTANDING:
        return pick_least_outstanding(s, backends, n, outstanding, up, max_outstanding);
    }
    return -1;
}

unsigned split_pick(int64_t *current, const struct cfg_split *split, unsigned n)
{
    int64_t total = 0;
    unsigned best = 0;
    for (unsigned i = 0; i < n; i++) {
        current[i] += split[i].weight;
        total += split[i].weight;
        if (current[i] > current[best])
            best = i;
    }
    current[best] -= total;
    return best;
}
