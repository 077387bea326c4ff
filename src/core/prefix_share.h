/* prefix_index = shared (prefix_share.c): each shard broadcasts its prefix
 * placements in its own journal (policy/prefix_journal.h) and, before it picks
 * for such a pool, copies the other shards' new placements into its own block
 * indexes. So each shard's indexes hold every shard's placements, a batch
 * behind at most, without a lock or a shared write. */
#ifndef AIGW_CORE_PREFIX_SHARE_H
#define AIGW_CORE_PREFIX_SHARE_H

struct shard;
struct shard_gen;
struct prompt_blocks;

/* The shard's journal, allocated once before the shards start (main thread).
 * Returns 0, or -1 when out of memory. */
int prefix_share_init(struct shard *sh);

/* Applies the other shards' placements published since the last call into
 * sg's indexes (entries of other generations are skipped). Only for the
 * shard's current generation: an older one's picks go without. */
void prefix_share_catch_up(struct shard *sh, struct shard_gen *sg);

/* Broadcasts that blocks [0..n) of prompt went to backend `backend` (its index
 * in pool `pool`) of sg's generation. */
void prefix_share_record(struct shard *sh, const struct shard_gen *sg, unsigned pool, unsigned backend,
                         const struct prompt_blocks *prompt, unsigned n);

#endif
