#include "policy/balance.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "policy/prefix_index.h"
#include "proto/openai.h"

/* splitmix64's finaliser: a bijective 64-bit mix */
static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

void balance_state_seed(struct balance_state *s, uint64_t seed)
{
    s->rng = mix64(seed);
    if (!s->rng)
        s->rng = UINT64_C(0x853c49e6748fea9b);
}

int balance_state_init(struct balance_state *s, unsigned nbackends)
{
    s->n = nbackends;
    s->rr_next = 0;
    s->current_weight = NULL;
    s->index = NULL;
    s->index_auto = false;
    s->slots = NULL;
    s->last_reason = BALANCE_REASON_LOAD;
    s->tune = (struct balance_tuning){
        .kv_knee = BALANCE_KV_KNEE,
        .kv_gain = BALANCE_KV_GAIN,
        .kv_saturated = BALANCE_KV_SATURATED,
        .waiting_saturated = BALANCE_WAITING_SATURATED,
        .waiting_cost = BALANCE_WAITING_COST,
        .prefix_weight = BALANCE_PREFIX_WEIGHT,
        .queue_weight = BALANCE_QUEUE_WEIGHT,
        .kv_weight = BALANCE_KV_WEIGHT,
        .prefix_max_blocks = ~0u,
    };
    balance_state_seed(s, (uint64_t)(uintptr_t)s);
    if (nbackends) {
        s->current_weight = calloc(nbackends, sizeof *s->current_weight);
        if (!s->current_weight) {
            s->n = 0;
            return -1;
        }
    }
    return 0;
}

/* Frees s's prefix indexes (all n of them; zeroed ones are no-ops) and slots. */
static void prefix_state_free(struct balance_state *s)
{
    if (s->index)
        for (unsigned i = 0; i < s->n; i++)
            prefix_index_free(&s->index[i]);
    free(s->index);
    free(s->slots);
    s->index = NULL;
    s->slots = NULL;
}

int balance_state_prefix_init(struct balance_state *s, unsigned cache_blocks)
{
    if (s->index || s->n == 0)
        return 0;
    s->index_auto = cache_blocks == 0;
    if (s->index_auto)
        cache_blocks = BALANCE_PREFIX_CACHE_BLOCKS;
    s->index = calloc(s->n, sizeof *s->index);
    s->slots = calloc(s->n, sizeof *s->slots);
    if (!s->index || !s->slots)
        goto oom;
    for (unsigned i = 0; i < s->n; i++)
        if (prefix_index_init(&s->index[i], cache_blocks) != 0)
            goto oom;
    return 0;
oom:
    prefix_state_free(s);
    return -1;
}

void balance_state_free(struct balance_state *s)
{
    prefix_state_free(s);
    free(s->current_weight);
    s->current_weight = NULL;
    s->n = 0;
}

void balance_state_adopt_prefix(struct balance_state *next, struct balance_state *old, const int *map)
{
    if (!next->index || !old->index)
        return;
    for (unsigned i = 0; i < next->n; i++) {
        int j = map[i];
        if (j < 0 || (unsigned)j >= old->n || !old->index[j].table[0])
            continue;   /* joined, or old's entry already handed to an earlier i */
        prefix_index_free(&next->index[i]);
        next->index[i] = old->index[j];
        memset(&old->index[j], 0, sizeof old->index[j]);
        next->slots[i] = old->slots[j];
    }
    prefix_state_free(old);
}

/* The backends as balance_pick (arrays, one limit) or balance_pick_load (views)
 * passes them, so round_robin and least_outstanding run the same code for both. */
struct src {
    const struct cfg_backend *backends;
    const uint32_t *outstanding;
    const bool *up;
    unsigned max_outstanding;
    const struct backend_view *v;   /* not NULL: the fields above are unused */
};

static bool view_candidate(const struct backend_view *b)
{
    return b->up && (b->max_outstanding == 0 || b->outstanding < b->max_outstanding);
}

static bool available(const struct src *c, unsigned i)
{
    if (c->v)
        return view_candidate(&c->v[i]);
    if (c->up && !c->up[i])
        return false;
    return c->max_outstanding == 0 || !c->outstanding || c->outstanding[i] < c->max_outstanding;
}

static uint64_t weight_of(const struct src *c, unsigned i)
{
    unsigned w = c->v ? c->v[i].weight : c->backends[i].weight;
    return w ? w : 1;
}

static uint64_t load_of(const struct src *c, unsigned i)
{
    if (c->v)
        return c->v[i].outstanding;
    return c->outstanding ? c->outstanding[i] : 0;
}

static int pick_smooth_weighted(struct balance_state *s, const struct src *c, unsigned n)
{
    int64_t total = 0;
    int best = -1;
    for (unsigned i = 0; i < n; i++) {
        if (!available(c, i))
            continue;
        int64_t w = (int64_t)weight_of(c, i);
        s->current_weight[i] += w;
        total += w;
        if (best < 0 || s->current_weight[i] > s->current_weight[best])
            best = (int)i;
    }
    if (best >= 0)
        s->current_weight[best] -= total;
    return best;
}

static int pick_least_outstanding(struct balance_state *s, const struct src *c, unsigned n)
{
    int best = -1;
    uint64_t best_load = 0, best_weight = 1;
    unsigned start = s->rr_next < n ? s->rr_next : 0;
    for (unsigned k = 0; k < n; k++) {
        unsigned i = start + k < n ? start + k : start + k - n;
        if (!available(c, i))
            continue;
        uint64_t load = load_of(c, i);
        uint64_t w = weight_of(c, i);
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
    struct src c = { .backends = backends, .outstanding = outstanding, .up = up,
                     .max_outstanding = max_outstanding };
    switch (kind) {
    case BALANCE_ROUND_ROBIN:
        return pick_smooth_weighted(s, &c, n);
    case BALANCE_LEAST_OUTSTANDING:
    case BALANCE_CAPACITY:
    case BALANCE_PREFIX:
        return pick_least_outstanding(s, &c, n);
    }
    return -1;
}

/* ---- capacity and prefix ---- */

/* xorshift64*: the state's own generator, no shared state, no syscalls */
static uint64_t rng_next(struct balance_state *s)
{
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * UINT64_C(0x2545f4914f6cdd1d);
}

/* uniform in [0, m), m >= 1 (the high 32 bits, scaled: no division) */
static unsigned rng_below(struct balance_state *s, unsigned m)
{
    return (unsigned)(((rng_next(s) >> 32) * (uint64_t)m) >> 32);
}

static bool kv_known(float kv)
{
    return kv >= 0.0f;      /* false for NaN and negatives */
}

/* What one scan of the candidates finds, for the unknown-value rule. */
struct fleet {
    unsigned ncand;
    int64_t worst_waiting;  /* -1: no candidate knows its queue */
    int64_t worst_running;  /* -1: no candidate knows how many it runs */
    float worst_kv;         /* -1: no candidate knows its KV use */
};

static void fleet_scan(const struct backend_view *v, unsigned n, struct fleet *f)
{
    memset(f, 0, sizeof *f);
    f->worst_waiting = -1;
    f->worst_running = -1;
    f->worst_kv = -1.0f;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        f->ncand++;
        if (v[i].waiting >= 0 && v[i].waiting > f->worst_waiting)
            f->worst_waiting = v[i].waiting;
        if (v[i].running >= 0 && v[i].running > f->worst_running)
            f->worst_running = v[i].running;
        if (kv_known(v[i].kv_usage) && v[i].kv_usage > f->worst_kv)
            f->worst_kv = v[i].kv_usage > 1.0f ? 1.0f : v[i].kv_usage;
    }
}

/* A candidate's load with unknown values replaced (see balance.h). */
struct eff {
    double score;
    double queued;          /* the work ahead of a new request, waiting weighed up */
    double ahead;           /* the requests ahead of a new one: max(outstanding, running + waiting) */
    double kv;
    unsigned unknown;       /* how many of waiting, running, kv_usage were unknown */
    bool saturated;
};

static struct eff effective(const struct balance_tuning *t, const struct fleet *f,
                            const struct backend_view *b)
{
    struct eff e = { 0 };
    double waiting, running, kv;
    if (b->waiting >= 0) {
        waiting = b->waiting;
    } else {
        waiting = f->worst_waiting > 0 ? (double)f->worst_waiting : 0.0;
        e.unknown++;
    }
    if (b->running >= 0) {
        running = b->running;
    } else {
        running = f->worst_running > 0 ? (double)f->worst_running : 0.0;
        e.unknown++;
    }
    if (kv_known(b->kv_usage)) {
        kv = b->kv_usage > 1.0f ? 1.0 : b->kv_usage;
    } else {
        kv = f->worst_kv > 0.0f ? f->worst_kv : 0.0;
        e.unknown++;
    }
    double out = b->outstanding;
    e.ahead = out > running + waiting ? out : running + waiting;
    double queued = e.ahead + t->waiting_cost * waiting;
    double kvf = 1.0;
    if (kv > t->kv_knee && t->kv_knee < 1.0f)
        kvf += t->kv_gain * (kv - t->kv_knee) / (1.0 - t->kv_knee);
    e.score = (queued + 1.0) / (double)(b->weight ? b->weight : 1) * kvf;
    e.queued = queued;
    e.kv = kv;
    e.saturated = kv > t->kv_saturated || waiting > (double)t->waiting_saturated;
    return e;
}

/* saturated backends last */
static unsigned rank_of(const struct eff *e)
{
    return e->saturated ? 1u : 0u;
}

/* Is a (effective ea) a better pick than b (eb)? */
static bool better(const struct balance_state *s, unsigned n, unsigned a, const struct eff *ea,
                   unsigned b, const struct eff *eb)
{
    if (ea->score != eb->score)
        return ea->score < eb->score;
    if (ea->unknown != eb->unknown)
        return ea->unknown < eb->unknown;
    unsigned start = s->rr_next < n ? s->rr_next : 0;
    unsigned da = a >= start ? a - start : a + n - start;
    unsigned db = b >= start ? b - start : b + n - start;
    return da < db;
}

static int pick_capacity(struct balance_state *s, const struct backend_view *v, unsigned n,
                         const struct fleet *f)
{
    if (f->ncand == 0)
        return -1;
    /* the best rank present, and how many candidates hold it */
    unsigned best_rank = ~0u, count = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        struct eff e = effective(&s->tune, f, &v[i]);
        unsigned r = rank_of(&e);
        if (r < best_rank) {
            best_rank = r;
            count = 0;
        }
        if (r == best_rank)
            count++;
    }
    /* the two choices, as ordinals among those candidates */
    unsigned want_a = 0, want_b = 1;
    if (count > 2) {
        want_a = rng_below(s, count);
        want_b = rng_below(s, count - 1);
        if (want_b >= want_a)
            want_b++;
    }
    int a = -1, b = -1;
    struct eff ea = { 0 }, eb = { 0 };
    unsigned ord = 0;
    for (unsigned i = 0; i < n && (a < 0 || (b < 0 && count > 1)); i++) {
        if (!view_candidate(&v[i]))
            continue;
        struct eff e = effective(&s->tune, f, &v[i]);
        if (rank_of(&e) != best_rank)
            continue;
        if (ord == want_a) {
            a = (int)i;
            ea = e;
        } else if (ord == want_b) {
            b = (int)i;
            eb = e;
        }
        ord++;
    }
    int pick = a;
    if (b >= 0 && better(s, n, (unsigned)b, &eb, (unsigned)a, &ea))
        pick = b;
    s->rr_next = (unsigned)pick + 1 < n ? (unsigned)pick + 1 : 0;
    return pick;
}

/* A backend's batch slots as the prefix scorer counts them: its weight, or
 * the most it was ever seen running if more; at least 1. */
static double slots_of(const struct balance_state *s, const struct backend_view *v, unsigned i)
{
    uint32_t slots = v[i].weight > s->slots[i] ? v[i].weight : s->slots[i];
    return slots ? (double)slots : 1.0;
}

/* Where a prompt that no engine is known to hold goes: of the candidates with a
 * free batch slot, the one with the highest weighted rendezvous score for the
 * prompt's first block, weighted by batch slots. The same opening goes to the
 * same engine while it has room, so a prefix forgotten everywhere comes back
 * where it lived, new ones spread in proportion to the engines' sizes, and a
 * backend joining or leaving moves only its share. -1: none has a free slot. */
static int pick_home(const struct balance_state *s, const struct backend_view *v, unsigned n,
                     const struct fleet *f, bool room, uint64_t opening)
{
    int best = -1;
    double best_key = 0.0;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        struct eff e = effective(&s->tune, f, &v[i]);
        if (room && e.saturated)
            continue;
        double slots = slots_of(s, v, i);
        if (e.ahead + 1.0 > slots)
            continue;
        uint64_t h = mix64(opening ^ (v[i].id ? v[i].id : (uint64_t)i + 1));
        double u = ((double)(h >> 11) + 0.5) * 0x1.0p-53;     /* in (0, 1) */
        double key = -slots / log(u);
        if (best < 0 || key > best_key) {
            best = (int)i;
            best_key = key;
        }
    }
    return best;
}

/* The prefix scorer (balance.h). */
static int pick_prefix(struct balance_state *s, const struct backend_view *v, unsigned n,
                       const struct fleet *f, const struct prompt_blocks *prompt)
{
    unsigned nb = prompt->n < s->tune.prefix_max_blocks ? prompt->n : s->tune.prefix_max_blocks;
    bool room = false;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        if (v[i].running > 0 && (uint32_t)v[i].running > s->slots[i])
            s->slots[i] = (uint32_t)v[i].running;
        room |= !effective(&s->tune, f, &v[i]).saturated;
    }
    int best = -1;
    unsigned best_matched = 0;
    double best_score = 0.0;
    struct eff best_eff = { 0 };
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        struct eff e = effective(&s->tune, f, &v[i]);
        if (room && e.saturated)
            continue;
        unsigned matched = prefix_index_match(&s->index[i], prompt->block, nb);
        double slots = slots_of(s, v, i);
        /* requests that must finish before this one gets a batch slot */
        double turns = e.ahead + 1.0 > slots ? (e.ahead + 1.0 - slots) / slots : 0.0;
        double busy = (e.ahead < slots ? e.ahead : slots) / slots;
        double score = s->tune.prefix_weight * matched - s->tune.queue_weight * turns -
                       s->tune.kv_weight * e.kv - BALANCE_PREFIX_BUSY_WEIGHT * busy;
        if (best < 0 || score > best_score ||
            (score == best_score && better(s, n, i, &e, (unsigned)best, &best_eff))) {
            best = (int)i;
            best_score = score;
            best_eff = e;
            best_matched = matched;
        }
    }
    int pick;
    if (best >= 0 && best_matched > 0) {
        pick = best;
        s->last_reason = BALANCE_REASON_AFFINITY;
    } else {
        pick = pick_home(s, v, n, f, room, prompt->block[0]);
        if (pick < 0)
            pick = pick_capacity(s, v, n, f);
        if (pick < 0)
            return -1;
    }
    for (unsigned k = 0; k < nb; k++)
        prefix_index_insert(&s->index[pick], prompt->block[k]);
    return pick;
}

uint32_t balance_cache_blocks(uint64_t tokens)
{
    if (tokens == 0)
        return 0;
    uint64_t blocks = tokens / (OPENAI_PREFIX_BLOCK / BALANCE_BYTES_PER_TOKEN) * BALANCE_RECORD_PER_CACHE;
    if (blocks < BALANCE_CACHE_BLOCKS_MIN)
        return BALANCE_CACHE_BLOCKS_MIN;
    return blocks > BALANCE_CACHE_BLOCKS_MAX ? BALANCE_CACHE_BLOCKS_MAX : (uint32_t)blocks;
}

void balance_prefix_fit(struct balance_state *s, const struct backend_view *v, unsigned n)
{
    if (!s->index || !s->index_auto)
        return;
    if (n > s->n)
        n = s->n;
    for (unsigned i = 0; i < n; i++) {
        uint64_t want = v[i].cache_blocks, have = prefix_index_capacity(&s->index[i]);
        if (want && (want * 4 > have * 5 || want * 4 < have * 3))
            (void)prefix_index_resize(&s->index[i], (unsigned)want);
    }
}

int balance_pick_load(enum balance_kind kind, struct balance_state *s,
                      const struct backend_view *v, unsigned n, const struct prompt_blocks *prompt)
{
    s->last_reason = BALANCE_REASON_LOAD;
    if (n > s->n)
        n = s->n;
    if (n == 0)
        return -1;
    struct src c = { .v = v };
    struct fleet f;
    switch (kind) {
    case BALANCE_ROUND_ROBIN:
        return pick_smooth_weighted(s, &c, n);
    case BALANCE_LEAST_OUTSTANDING:
        return pick_least_outstanding(s, &c, n);
    case BALANCE_CAPACITY:
        fleet_scan(v, n, &f);
        return pick_capacity(s, v, n, &f);
    case BALANCE_PREFIX:
        fleet_scan(v, n, &f);
        if (!prompt || prompt->n == 0 || s->tune.prefix_max_blocks == 0 || !s->index)
            return pick_capacity(s, v, n, &f);
        balance_prefix_fit(s, v, n);
        return pick_prefix(s, v, n, &f, prompt);
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
