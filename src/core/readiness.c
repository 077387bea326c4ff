#include "core/readiness.h"

#include <stdatomic.h>

#include "core/shard.h"

/* Until the watcher's first pass: backends start up (gen.c), so no false alarm. */
static _Atomic bool backends_available = true;

void readiness_backends_available(bool any)
{
    atomic_store_explicit(&backends_available, any, memory_order_relaxed);
}

bool readiness_ready(void)
{
    return atomic_load(&rt.ready) && !atomic_load(&rt.draining) &&
           atomic_load_explicit(&backends_available, memory_order_relaxed);
}
