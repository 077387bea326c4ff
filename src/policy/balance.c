#include "policy/balance.h"

#include <stdlib.h>
#include <string.h>

#include "util/hash.h"

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
    s->tune = (struct balance_tuning){
        .kv_knee = BALANCE_KV_KNEE,
        .kv_gain = BALANCE_KV_GAIN,
        .kv_saturated = BALANCE_KV_SATURATED,
        .waiting_saturated = BALANCE_WAITING_SATURATED,
        .prefix_bound = BALANCE_PREFIX_BOUND,
        .waiting_cost = BALANCE_WAITING_COST,
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

void balance_state_free(struct balance_state *s)
{
    free(s->current_weight);
    s->current_weight = NULL;
    s->n = 0;
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

/* What one scan of the candidates finds, for the unknown-value rule and the bound. */
struct fleet {
    unsigned ncand;
    uint64_t sum_outstanding, sum_weight;
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
        f->sum_outstanding += v[i].outstanding;
        f->sum_weight += v[i].weight ? v[i].weight : 1;
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
    double queued = (out > running + waiting ? out : running + waiting) + t->waiting_cost * waiting;
    double kvf = 1.0;
    if (kv > t->kv_knee && t->kv_knee < 1.0f)
        kvf += t->kv_gain * (kv - t->kv_knee) / (1.0 - t->kv_knee);
    e.score = (queued + 1.0) / (double)(b->weight ? b->weight : 1) * kvf;
    e.saturated = kv > t->kv_saturated || waiting > (double)t->waiting_saturated;
    return e;
}

/* saturated backends last; the excluded one (prefix's over-bound preference) just
 * before them */
static unsigned rank_of(const struct eff *e, unsigned i, int exclude)
{
    return (e->saturated ? 2u : 0u) + ((int)i == exclude ? 1u : 0u);
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
                         const struct fleet *f, int exclude)
{
    if (f->ncand == 0)
        return -1;
    /* the best rank present, and how many candidates hold it */
    unsigned best_rank = ~0u, count = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        struct eff e = effective(&s->tune, f, &v[i]);
        unsigned r = rank_of(&e, i, exclude);
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
        if (rank_of(&e, i, exclude) != best_rank)
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

/* ln(u) for u in (0, 1), without libm (src/policy is linked without it in places):
 * u = m·2^e with m in [√½, √2), ln m = 2·atanh((m−1)/(m+1)) as a series; the
 * error is below 1e-11, far finer than the hashing needs. */
static double ln_unit(double u)
{
    union { double d; uint64_t b; } x = { .d = u };
    int e = (int)((x.b >> 52) & 0x7ff) - 1023;
    x.b = (x.b & UINT64_C(0x000fffffffffffff)) | UINT64_C(0x3ff0000000000000);
    double m = x.d;
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e++;
    }
    double t = (m - 1.0) / (m + 1.0), t2 = t * t;
    double series = t * (1.0 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7 + t2 * (1.0 / 9 +
                    t2 * (1.0 / 11 + t2 * (1.0 / 13)))))));
    return (double)e * 0.6931471805599453 + 2.0 * series;
}

/* weighted rendezvous hashing: the candidate with the highest weight / −ln(u) */
static int prefix_preferred(const struct backend_view *v, unsigned n, uint64_t key)
{
    int best = -1;
    double best_score = 0.0;
    for (unsigned i = 0; i < n; i++) {
        if (!view_candidate(&v[i]))
            continue;
        uint64_t id = v[i].id ? v[i].id : (uint64_t)i + 1;
        uint64_t h = mix64(key ^ mix64(id ^ UINT64_C(0x6a09e667f3bcc909)));
        double u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);  /* (0, 1) */
        double score = (double)(v[i].weight ? v[i].weight : 1) / -ln_unit(u);
        if (best < 0 || score > best_score) {
            best = (int)i;
            best_score = score;
        }
    }
    return best;
}

static int pick_prefix(struct balance_state *s, const struct backend_view *v, unsigned n,
                       const struct fleet *f, uint64_t key)
{
    int p = prefix_preferred(v, n, key);
    if (p < 0)
        return -1;
    struct eff e = effective(&s->tune, f, &v[p]);
    double w = v[p].weight ? v[p].weight : 1;
    double bound = (double)s->tune.prefix_bound * (double)f->sum_outstanding * w /
                   (double)f->sum_weight + 1.0;
    if (!e.saturated && (double)v[p].outstanding <= bound)
        return p;
    return pick_capacity(s, v, n, f, p);
}

int balance_pick_load(enum balance_kind kind, struct balance_state *s,
                      const struct backend_view *v, unsigned n, uint64_t prefix_hash)
{
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
        return pick_capacity(s, v, n, &f, -1);
    case BALANCE_PREFIX:
        fleet_scan(v, n, &f);
        if (prefix_hash == 0)
            return pick_capacity(s, v, n, &f, -1);
        return pick_prefix(s, v, n, &f, prefix_hash);
    }
    return -1;
}

uint64_t balance_backend_id(const struct cfg_backend *b)
{
    /* the normalised address: the same backend keeps its id across reloads */
    uint64_t h = hash_bytes(b->addr.text, strnlen(b->addr.text, sizeof b->addr.text));
    return h ? h : 1;
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
