#include <criterion/criterion.h>

#include "core/backend_admin.h"

/* Criterion runs every test in its own process: the cells start zeroed. What a
 * reload does to the runtime state, as backend_admin.h promises it. */

static struct backend_admin_view view(int slot, unsigned file_weight)
{
    return backend_admin_read(slot, file_weight);
}

Test(backend_admin, starts_ready_with_the_files_weight)
{
    int slots[] = { 0, 1 };
    unsigned weights[] = { 3, 1 };
    backend_admin_bind(slots, weights, 2);
    struct backend_admin_view v = view(0, 3);
    cr_assert_eq(v.state, BACKEND_READY);
    cr_assert_eq(v.weight, 3);
    cr_assert_not(v.weight_overridden);
    cr_assert(backend_admin_takes_new(v));
}

Test(backend_admin, drain_and_weight_zero_take_nothing_new_enable_undoes_both)
{
    int slots[] = { 0 };
    unsigned weights[] = { 2 };
    backend_admin_bind(slots, weights, 1);
    struct backend_admin_view was;
    cr_assert_eq(backend_admin_set_state(0, BACKEND_DRAIN, &was), 0);
    cr_assert_eq(was.state, BACKEND_READY);
    cr_assert_not(backend_admin_takes_new(view(0, 2)));
    cr_assert_eq(backend_admin_set_state(0, BACKEND_READY, &was), 0);
    cr_assert_eq(was.state, BACKEND_DRAIN);
    cr_assert(backend_admin_takes_new(view(0, 2)));

    cr_assert_eq(backend_admin_set_weight(0, 0, &was), 0);
    cr_assert_eq(was.weight, 2);
    cr_assert_not(backend_admin_takes_new(view(0, 2)), "weight 0 drains");
    cr_assert_eq(backend_admin_set_state(0, BACKEND_READY, &was), 0);
    struct backend_admin_view v = view(0, 2);
    cr_assert(backend_admin_takes_new(v));
    cr_assert_eq(v.weight, 2, "enable gives the file's weight back after weight 0");
    cr_assert_eq(backend_admin_set_weight(0, BACKEND_WEIGHT_MAX + 1, &was), -1);
}

Test(backend_admin, a_reload_keeps_state_and_weight_until_the_file_changes_the_weight)
{
    int slots[] = { 0, 1 };
    unsigned weights[] = { 1, 1 };
    backend_admin_bind(slots, weights, 2);
    struct backend_admin_view was;
    backend_admin_set_state(0, BACKEND_MAINT, &was);
    backend_admin_set_weight(1, 9, &was);

    backend_admin_bind(slots, weights, 2);     /* the same file */
    cr_assert_eq(view(0, 1).state, BACKEND_MAINT);
    cr_assert_eq(view(1, 1).weight, 9);

    unsigned changed[] = { 1, 4 };
    backend_admin_bind(slots, changed, 2);     /* b's weight edited in the file */
    cr_assert_eq(view(0, 1).state, BACKEND_MAINT);
    cr_assert_eq(view(1, 4).weight, 4, "the file's new weight wins");
    cr_assert_not(view(1, 4).weight_overridden);
}

Test(backend_admin, a_removed_backend_loses_its_state_and_cannot_be_changed)
{
    int slots[] = { 0, 1 };
    unsigned weights[] = { 1, 1 };
    backend_admin_bind(slots, weights, 2);
    struct backend_admin_view was;
    backend_admin_set_state(1, BACKEND_DRAIN, &was);

    backend_admin_bind(slots, weights, 1);     /* slot 1 removed */
    cr_assert_eq(backend_admin_set_state(1, BACKEND_DRAIN, &was), -1);
    cr_assert_not(backend_admin_get(1, &was));
    backend_admin_bind(slots, weights, 2);     /* back in the file */
    cr_assert_eq(view(1, 1).state, BACKEND_READY, "it comes back ready");
    cr_assert_eq(backend_admin_set_state(-1, BACKEND_DRAIN, &was), -1);
    cr_assert_eq(backend_admin_set_state(METRICS_MAX_BACKENDS, BACKEND_DRAIN, &was), -1);
}
