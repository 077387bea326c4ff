/* Runtime control of backends from the admin API (POST /backends/POOL/BACKEND/...):
 * drain, disable (maintenance), enable and a runtime weight, as HAProxy's
 * `set server state ready|drain|maint` and `set server weight`.
 *
 * The state is process-wide, one cell per (pool, backend) pair, indexed by the
 * backend's metric slot (metrics_backend_slot: the process's stable number for
 * that pair), so it outlives generations: a reload keeps it for a backend still
 * in the file. Writers are control-plane threads only (the admin thread for
 * changes, main for what a reload does), serialised by a mutex; the shards read
 * a cell with one relaxed load per backend they consider.
 *
 * What a reload does (backend_admin_bind): a backend removed from the file loses
 * its runtime state (added again later, it starts ready with its file weight);
 * one still there keeps drain/disable until enabled, and its runtime weight until
 * the file changes that backend's weight. */
#ifndef AIGW_CORE_BACKEND_ADMIN_H
#define AIGW_CORE_BACKEND_ADMIN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/metrics.h"

enum backend_admin_state {
    BACKEND_READY = 0,      /* health decides */
    BACKEND_DRAIN = 1,      /* no new request; in-flight ones finish; health checked */
    BACKEND_MAINT = 2,      /* as drain, and health checks paused, /readyz ignores it */
};

#define BACKEND_WEIGHT_MAX 1000u    /* as `backend = ... weight=N` in the file */

/* A cell: state << 16 | (runtime weight + 1), or 0 in the low half for "the
 * file's weight". All zero (the initial value) is ready with the file's weight. */
extern _Atomic uint32_t backend_admin_cells[METRICS_MAX_BACKENDS];

struct backend_admin_view {
    enum backend_admin_state state;
    unsigned weight;            /* in effect: the runtime one, or the file's */
    bool weight_overridden;     /* set at runtime */
};

static inline struct backend_admin_view backend_admin_read(int slot, unsigned file_weight)
{
    struct backend_admin_view v = { BACKEND_READY, file_weight, false };
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return v;
    uint32_t c = atomic_load_explicit(&backend_admin_cells[slot], memory_order_relaxed);
    v.state = (enum backend_admin_state)(c >> 16);
    if (c & 0xffffu) {
        v.weight = (c & 0xffffu) - 1;
        v.weight_overridden = true;
    }
    return v;
}

/* Whether the balancer may give the backend a new request: ready and weight > 0. */
static inline bool backend_admin_takes_new(struct backend_admin_view v)
{
    return v.state == BACKEND_READY && v.weight > 0;
}

/* What a configuration generation makes of the cells (main thread, gen_create,
 * after which nothing fails): slots[0..n) are its backends' metric slots and
 * file_weights their weights. See the reload rule above. */
void backend_admin_bind(const int *slots, const unsigned *file_weights, unsigned n);

/* The admin API's changes. Return 0, or -1 when the slot is not in the
 * configuration in use (a reload removed it meanwhile). *was receives the state
 * before. */
int backend_admin_set_state(int slot, enum backend_admin_state state, struct backend_admin_view *was);
/* weight 0..BACKEND_WEIGHT_MAX; 0: no new requests, as drain. */
int backend_admin_set_weight(int slot, unsigned weight, struct backend_admin_view *was);

/* The state and weight in effect of a backend of the configuration in use
 * (control plane: /metrics, /backends). False when the slot is not in it. */
bool backend_admin_get(int slot, struct backend_admin_view *v);

const char *backend_admin_state_name(enum backend_admin_state s);   /* "ready", "drain", "maint" */

#endif
