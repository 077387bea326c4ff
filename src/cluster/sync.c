/* The limits sync thread: see sync.h. SKELETON: follows generations only; the
 * Redis sync, local fallback and snapshots are being written. */
#include "cluster/sync.h"
#include "cluster/snapshot.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/gen.h"
#include "core/log.h"
#include "core/shard.h"
#include "util/clock.h"

_Atomic int cluster_admission_state = CLUSTER_ADMIT_NORMAL;

static pthread_t sync_thread;
static int wake_fd = -1;
static _Atomic bool stopping;
static bool running;

/* Lets go of g and the generations after it up to the current one. */
static struct gen *follow_newest(struct gen *g)
{
    struct gen *cur = atomic_load_explicit(&rt.current, memory_order_acquire);
    for (struct gen *x = g; x != cur;) {
        struct gen *next = atomic_load(&x->newer);
        gen_unref(x);
        x = next;
    }
    return cur;
}

static void *sync_main(void *arg)
{
    (void)arg;
    struct gen *g = atomic_load(&rt.current);
    while (!atomic_load(&stopping)) {
        g = follow_newest(g);
        snapshot_tick(g, clock_mono_ms());
        struct pollfd p = { .fd = wake_fd, .events = POLLIN };
        if (poll(&p, 1, 50) > 0) {
            uint64_t v;
            if (read(wake_fd, &v, sizeof v) < 0)
                (void)0;
        }
    }
    g = follow_newest(g);
    snapshot_final(g);
    return NULL;
}

int limits_sync_start(void)
{
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0) {
        log_error("limits sync: eventfd: %s", strerror(errno));
        return -1;
    }
    int rc = pthread_create(&sync_thread, NULL, sync_main, NULL);
    if (rc) {
        log_error("limits sync: cannot start its thread: %s", strerror(rc));
        return -1;
    }
    running = true;
    return 0;
}

void limits_sync_wake(void)
{
    uint64_t one = 1;
    if (wake_fd >= 0 && write(wake_fd, &one, sizeof one) < 0)
        (void)0;
}

void limits_sync_stop(void)
{
    if (!running)
        return;
    atomic_store(&stopping, true);
    limits_sync_wake();
    pthread_join(sync_thread, NULL);
    running = false;
}

void limits_sync_metrics(struct outbuf *o)
{
    (void)o;
}
