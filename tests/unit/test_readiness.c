#include <criterion/criterion.h>
#include <stdatomic.h>

#include "core/shard.h"
#include "core/readiness.h"

/* Criterion runs every test in its own process: rt starts zeroed. */

Test(readiness, not_ready_until_serving)
{
    cr_assert_not(readiness_ready());
    atomic_store(&rt.ready, true);
    cr_assert(readiness_ready(), "serving, and backends count as up until the watcher has looked");
}

Test(readiness, follows_the_watchers_view_of_the_backends)
{
    atomic_store(&rt.ready, true);
    readiness_backends_available(false);
    cr_assert_not(readiness_ready(), "every backend down");
    readiness_backends_available(true);
    cr_assert(readiness_ready());
}

Test(readiness, draining_is_not_ready)
{
    atomic_store(&rt.ready, true);
    readiness_backends_available(true);
    atomic_store(&rt.draining, true);
    cr_assert_not(readiness_ready());
}
