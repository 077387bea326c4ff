#include "core/backend_admin.h"

#include <pthread.h>

_Atomic uint32_t backend_admin_cells[METRICS_MAX_BACKENDS];

/* Control plane only, under mu. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bool configured[METRICS_MAX_BACKENDS];       /* in the configuration in use */
static unsigned file_weight[METRICS_MAX_BACKENDS];  /* its weight in that file */

static uint32_t cell(enum backend_admin_state s, bool overridden, unsigned weight)
{
    return (uint32_t)s << 16 | (overridden ? weight + 1 : 0);
}

void backend_admin_bind(const int *slots, const unsigned *file_weights, unsigned n)
{
    bool now[METRICS_MAX_BACKENDS] = { false };
    pthread_mutex_lock(&mu);
    for (unsigned i = 0; i < n; i++) {
        int s = slots[i];
        if (s < 0 || s >= METRICS_MAX_BACKENDS)
            continue;
        now[s] = true;
        if (!configured[s]) {
            /* new, or back after a removal: starts afresh */
            atomic_store_explicit(&backend_admin_cells[s], 0, memory_order_relaxed);
        } else if (file_weight[s] != file_weights[i]) {
            /* the file's new weight wins over one set at runtime */
            uint32_t c = atomic_load_explicit(&backend_admin_cells[s], memory_order_relaxed);
            atomic_store_explicit(&backend_admin_cells[s], c & 0xffff0000u, memory_order_relaxed);
        }
        file_weight[s] = file_weights[i];
    }
    for (unsigned s = 0; s < METRICS_MAX_BACKENDS; s++) {
        if (configured[s] && !now[s])
            atomic_store_explicit(&backend_admin_cells[s], 0, memory_order_relaxed);
        configured[s] = now[s];
    }
    pthread_mutex_unlock(&mu);
}

static int update(int slot, bool set_state, enum backend_admin_state state, bool set_weight, unsigned weight,
                  struct backend_admin_view *was)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return -1;
    pthread_mutex_lock(&mu);
    if (!configured[slot]) {
        pthread_mutex_unlock(&mu);
        return -1;
    }
    struct backend_admin_view v = backend_admin_read(slot, file_weight[slot]);
    *was = v;
    if (set_state) {
        v.state = state;
        /* enable undoes a drain by weight 0 as well */
        if (state == BACKEND_READY && v.weight_overridden && v.weight == 0)
            v.weight_overridden = false;
    }
    if (set_weight) {
        v.weight = weight;
        v.weight_overridden = true;
    }
    atomic_store_explicit(&backend_admin_cells[slot], cell(v.state, v.weight_overridden, v.weight),
                          memory_order_relaxed);
    pthread_mutex_unlock(&mu);
    return 0;
}

int backend_admin_set_state(int slot, enum backend_admin_state state, struct backend_admin_view *was)
{
    return update(slot, true, state, false, 0, was);
}

int backend_admin_set_weight(int slot, unsigned weight, struct backend_admin_view *was)
{
    if (weight > BACKEND_WEIGHT_MAX)
        return -1;
    return update(slot, false, BACKEND_READY, true, weight, was);
}

bool backend_admin_get(int slot, struct backend_admin_view *v)
{
    if (slot < 0 || slot >= METRICS_MAX_BACKENDS)
        return false;
    pthread_mutex_lock(&mu);
    bool in_use = configured[slot];
    if (in_use)
        *v = backend_admin_read(slot, file_weight[slot]);
    pthread_mutex_unlock(&mu);
    return in_use;
}

const char *backend_admin_state_name(enum backend_admin_state s)
{
    switch (s) {
    case BACKEND_READY: return "ready";
    case BACKEND_DRAIN: return "drain";
    case BACKEND_MAINT: return "maint";
    }
    return "ready";
}
