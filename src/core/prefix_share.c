/* Sharing prefix placements between shards (prefix_share.h). */
#include "core/prefix_share.h"

#include <stdlib.h>
#include <string.h>

#include "core/gen.h"
#include "core/shard.h"
#include "policy/balance.h"
#include "policy/prefix_index.h"
#include "policy/prefix_journal.h"

/* entries read per other shard per catch-up: bounds one pick's extra work; a
 * backlog longer than this is read over the next picks */
#define CATCH_UP_BATCH 256u

int prefix_share_init(struct shard *sh)
{
    sh->prefix_journal = aligned_alloc(64, sizeof *sh->prefix_journal);
    if (!sh->prefix_journal)
        return -1;
    memset(sh->prefix_journal, 0, sizeof *sh->prefix_journal);
    if (prefix_journal_init(sh->prefix_journal, PREFIX_JOURNAL_WORDS) != 0) {
        free(sh->prefix_journal);
        sh->prefix_journal = NULL;
        return -1;
    }
    return 0;
}

static void apply(void *arg, const struct prefix_placement *p)
{
    struct shard_gen *sg = arg;
    const struct config *cfg = sg->g->cfg;
    if (p->pool >= cfg->npools || !cfg->pools[p->pool].prefix_index_shared)
        return;
    struct balance_state *bs = &sg->balance[p->pool];
    if (!bs->index || p->backend >= bs->n)
        return;
    for (unsigned k = 0; k < p->n; k++)
        prefix_index_insert(&bs->index[p->backend], p->block[k]);
}

void prefix_share_catch_up(struct shard *sh, struct shard_gen *sg)
{
    if (sg != sh->sg || !rt.shards)
        return;
    for (unsigned s = 0; s < rt.nshards; s++) {
        const struct prefix_journal *j = rt.shards[s].prefix_journal;
        if (s == sh->id || !j)
            continue;
        struct prefix_journal_cursor *c = &sh->prefix_cursor[s];
        uint64_t lapped = c->lapped;
        unsigned n = prefix_journal_read(j, c, sg->g->id, CATCH_UP_BATCH, apply, sg);
        mc_add(&sh->m->prefix_share_applied, n);
        mc_add(&sh->m->prefix_share_lapped, c->lapped - lapped);
    }
}

void prefix_share_record(struct shard *sh, const struct shard_gen *sg, unsigned pool, unsigned backend,
                         const struct prompt_blocks *prompt, unsigned n)
{
    if (!sh->prefix_journal || rt.nshards < 2)
        return;
    if (n > prompt->n)
        n = prompt->n;
    prefix_journal_append(sh->prefix_journal, sg->g->id, pool, backend, prompt->block, n);
}
