/* state_dir snapshots: see snapshot.h. PLACEHOLDER: being written (issue 11);
 * nothing is saved or loaded yet. */
#include "cluster/snapshot.h"

int snapshot_save(const char *dir, const struct gen *g, int64_t now_unix_s, char *err, size_t errlen)
{
    (void)dir, (void)g, (void)now_unix_s, (void)err, (void)errlen;
    return 0;
}

int snapshot_load(const char *dir, struct gen *g, int64_t now_unix_s, char *err, size_t errlen)
{
    (void)dir, (void)g, (void)now_unix_s, (void)err, (void)errlen;
    return 0;
}

void snapshot_tick(const struct gen *g, uint64_t now_ms)
{
    (void)g, (void)now_ms;
}

void snapshot_final(const struct gen *g)
{
    (void)g;
}
