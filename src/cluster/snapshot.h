/* [server] state_dir: a single host's daily quota use (and, with cost
 * accounting, spend) per key NAME, kept across restarts without Redis.
 *
 * The file, STATE_DIR/quotas.state, is written whole and atomically (a
 * temporary file in the same directory, fsync, rename, fsync of the directory)
 * by the limits sync thread every SNAPSHOT_INTERVAL_MS and at shutdown, and
 * read once at start, before the shards run. It says what it is, its version,
 * the UTC day it is of, and a checksum of its contents: a file that is not
 * aigw's, truncated, corrupt, or of another day is reported and ignored, never
 * trusted. A crash loses at most one interval of use (the quota errs on the
 * lenient side by at most that). */
#ifndef AIGW_CLUSTER_SNAPSHOT_H
#define AIGW_CLUSTER_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

struct gen;

#define SNAPSHOT_INTERVAL_MS 2000
#define SNAPSHOT_FILE "quotas.state"

/* Writes g's keys' use of the quota on UTC day of now_unix_s (keys with a
 * daily quota only). 0, or -1 with the reason in err (the previous file, if
 * any, is left as it was). */
int snapshot_save(const char *dir, const struct gen *g, int64_t now_unix_s, char *err, size_t errlen);

/* Reads dir's snapshot and sets the quota use of g's keys found in it by NAME,
 * if the file is of the UTC day of now_unix_s. Returns the number of keys
 * restored (0 when there is no file yet, or it is of an earlier day), or -1
 * with why the file was refused in err (nothing is restored from a refused
 * file). On 0, err says why nothing was looked up when there was a reason (no
 * file yet, an earlier day), else is empty. Before the shards run. */
int snapshot_load(const char *dir, struct gen *g, int64_t now_unix_s, char *err, size_t errlen);

/* The limits sync thread's schedule: with [server] state_dir and no [cluster],
 * saves g's quotas when SNAPSHOT_INTERVAL_MS passed since the last save (a
 * failure is logged, once per distinct reason). snapshot_final saves at once
 * (at shutdown, after the shards stopped). */
void snapshot_tick(const struct gen *g, uint64_t now_ms);
void snapshot_final(const struct gen *g);

#endif
