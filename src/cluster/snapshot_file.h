/* The text of a state_dir snapshot (STATE_DIR/quotas.state, see snapshot.h),
 * apart from the disk and the generation: a UTC day and (NAME, tokens used,
 * micro-USD spent) entries, formatted and parsed. No I/O, no log, no clock, so it is
 * unit-tested and fuzzed on its own (tests/fuzz/fuzz_snapshot.c). */
#ifndef AIGW_CLUSTER_SNAPSHOT_FILE_H
#define AIGW_CLUSTER_SNAPSHOT_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The newest version this aigw reads (it writes the oldest that holds the
 * entries: 1 when none has spend). */
#define SNAPSHOT_VERSION 2
/* What the quota's use counter of struct rl_global holds (42 bits). */
#define SNAPSHOT_MAX_USED ((INT64_C(1) << 42) - 1)
/* Later than any clock aigw runs under (year 29349). */
#define SNAPSHOT_MAX_DAY 10000000

struct snapshot_entry {
    const char *name;       /* a key NAME, not NUL-terminated */
    size_t name_len;
    int64_t used;           /* tokens of that day's quota */
    int64_t spend;          /* micro-USD of that day's spend cap; 0: no spend record */
    bool no_tokens;         /* a spend record only: no tokens record for the NAME */
};

struct snapshot_file {
    int64_t day;                        /* days since 1970-01-01, UTC */
    struct snapshot_entry *entries;     /* sorted by name, each name once */
    size_t count;
};

/* The file's text for day and entries, in their order, malloc'd (its length
 * in *len_out); NULL when out of memory. Each name must be a valid NAME
 * (key_name_valid) and appear once; a use or spend outside [0,
 * SNAPSHOT_MAX_USED] is written clamped into it, as the file cannot hold more.
 * An entry gets a tokens record unless no_tokens, and a spend record when its
 * spend is above 0. */
char *snapshot_file_format(int64_t day, const struct snapshot_entry *entries, size_t count, size_t *len_out);

/* Checks text[0, len) whole and reads it into *out, whose names point into
 * text (free out with snapshot_file_free, before text). False with the reason
 * in err, and nothing in *out to free, when any of it is not what this version
 * writes: the file is then not to be trusted at all. */
bool snapshot_file_parse(const char *text, size_t len, struct snapshot_file *out, char *err, size_t errlen);

/* f's entry for name[0, len), or NULL. */
const struct snapshot_entry *snapshot_file_find(const struct snapshot_file *f, const char *name, size_t len);

void snapshot_file_free(struct snapshot_file *f);

#endif
