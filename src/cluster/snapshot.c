/* state_dir snapshots: see snapshot.h. The file's text (its format, its
 * checks) is snapshot_file.c's; here are the walk over a generation's keys,
 * the disk, and the sync thread's schedule.
 *
 * The sync thread is the only caller of snapshot_tick and snapshot_final, so
 * their schedule state below needs no lock. */
#include "cluster/snapshot.h"
#include "util/file_replace.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cluster/snapshot_file.h"
#include "core/config.h"
#include "core/gen.h"
#include "core/log.h"
#include "policy/keys.h"
#include "policy/ratelimit.h"
#include "util/hash.h"

/* A keys file is at most 64 MiB and each of its lines is longer than the
 * "key" line it gives here: any file aigw wrote fits. */
#define SNAPSHOT_MAX_BYTES (64u << 20)

/* ---- the generation's keys ---- */

/* The file's text for g's keys on UTC day `today` (those with a daily quota
 * that used some of it, in the keys file's order), malloc'd; NULL when out of
 * memory. */
static char *snapshot_text(const struct gen *g, int64_t today, size_t *len_out)
{
    const struct keyring *ring = g->cfg->keys.ring;
    unsigned n = g->rl_global ? keyring_count(ring) : 0;
    struct snapshot_entry *entries = malloc((n ? n : 1) * sizeof *entries);
    if (!entries)
        return NULL;
    size_t count = 0;
    for (unsigned k = 0; k < n; k++) {
        const struct rl_global *rg = &g->rl_global[k];
        int64_t used = rl_quota_used(rg, today), spend = rl_spend_used(rg, today);
        if (used <= 0 && spend <= 0)
            continue;
        const char *name = keyring_entry(ring, k)->name;
        entries[count++] = (struct snapshot_entry){ .name = name, .name_len = strlen(name), .used = used,
                                                    .spend = spend, .no_tokens = used <= 0 };
    }
    char *text = snapshot_file_format(today, entries, count, len_out);
    free(entries);
    return text;
}

/* ---- the disk ---- */

static bool snapshot_path(char *out, size_t cap, const char *dir, const char *name, char *err, size_t errlen)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "%s/%s: path too long", dir, name);
        return false;
    }
    return true;
}

/* Replaces DIR/quotas.state with text: whole or not at all, and on disk
 * before this returns. */
static int write_atomically(const char *dir, const char *text, size_t len, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (!snapshot_path(path, sizeof path, dir, SNAPSHOT_FILE, err, errlen))
        return -1;
    return file_replace(path, text, len, 0600, (uid_t)-1, (gid_t)-1, err, errlen);
}

/* DIR/quotas.state's text, malloc'd, in *text; 0 when there is none; -1 with
 * err set when it cannot be read or is not a plausible file. */
static int read_snapshot(const char *dir, char **text, size_t *len, char *err, size_t errlen)
{
    char path[PATH_MAX];
    if (!snapshot_path(path, sizeof path, dir, SNAPSHOT_FILE, err, errlen))
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) {
            snprintf(err, errlen, "none yet");
            return 0;
        }
        snprintf(err, errlen, "cannot open it: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    char *buf = NULL;
    size_t have = 0;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "fstat: %s", strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "not a regular file");
    } else if ((uint64_t)st.st_size > SNAPSHOT_MAX_BYTES) {
        snprintf(err, errlen, "larger than %u bytes", SNAPSHOT_MAX_BYTES);
    } else if (!(buf = malloc((size_t)st.st_size + 1))) {
        snprintf(err, errlen, "out of memory");
    } else {
        /* one byte more than its size: a file growing meanwhile is not ours */
        ssize_t r;
        for (;;) {
            r = read(fd, buf + have, (size_t)st.st_size + 1 - have);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0 || (have += (size_t)r) > (size_t)st.st_size)
                break;
        }
        if (r < 0)
            snprintf(err, errlen, "reading it: %s", strerror(errno));
        else if (have != (size_t)st.st_size)
            snprintf(err, errlen, "it changed while being read");
        else
            *text = buf, *len = have, buf = NULL;
    }
    close(fd);
    if (buf || !*text) {
        free(buf);
        return -1;
    }
    return 1;
}

/* ---- the API ---- */

int snapshot_save(const char *dir, const struct gen *g, int64_t now_unix_s, char *err, size_t errlen)
{
    size_t len;
    char *text = snapshot_text(g, rl_utc_day(now_unix_s), &len);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = write_atomically(dir, text, len, err, errlen);
    free(text);
    return rc;
}

int snapshot_load(const char *dir, struct gen *g, int64_t now_unix_s, char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    char *text = NULL;
    size_t len = 0;
    int rc = read_snapshot(dir, &text, &len, err, errlen);
    if (rc <= 0)
        return rc;
    struct snapshot_file f;
    if (!snapshot_file_parse(text, len, &f, err, errlen)) {
        free(text);
        return -1;
    }
    int64_t today = rl_utc_day(now_unix_s);
    int restored = 0;
    if (f.day > today) {
        snprintf(err, errlen, "of UTC day %" PRId64 ", later than today (%" PRId64 "): is the clock right?", f.day,
                 today);
        restored = -1;
    } else if (f.day < today) {
        /* not an error: err says why nothing was restored */
        snprintf(err, errlen, "of an earlier UTC day (%" PRId64 "; today is %" PRId64 ")", f.day, today);
    } else {
        const struct keyring *ring = g->cfg->keys.ring;
        unsigned n = g->rl_global ? keyring_count(ring) : 0;
        for (unsigned k = 0; k < n; k++) {
            const char *name = keyring_entry(ring, k)->name;
            const struct snapshot_entry *hit = snapshot_file_find(&f, name, strlen(name));
            struct rl_global *rg = &g->rl_global[k];
            if (!hit || (!rg->daily && !rg->spend))
                continue;   /* no use that day, or no quota nor spend cap now */
            if (!hit->no_tokens)
                rl_quota_restore(rg, hit->used, today);
            rl_spend_restore(rg, hit->spend, today);
            restored++;
        }
    }
    snapshot_file_free(&f);
    free(text);
    return restored;
}

/* ---- the sync thread's schedule ---- */

static struct {
    uint64_t last_try_ms;
    bool tried;
    bool saved;                 /* the fields below describe the file on disk */
    uint64_t saved_sum;
    size_t saved_len;
    char saved_dir[PATH_MAX];
    char failure[512];          /* the failure last logged; empty after a save */
} sched;

static bool snapshots_wanted(const struct gen *g)
{
    return g && !g->cfg->cluster.enabled && g->cfg->server.state_dir[0];
}

static void save_if_changed(const struct gen *g, bool always)
{
    const char *dir = g->cfg->server.state_dir;
    size_t len;
    char *text = snapshot_text(g, rl_utc_day((int64_t)time(NULL)), &len);
    char err[sizeof sched.failure];
    if (!text) {
        snprintf(err, sizeof err, "out of memory");
    } else {
        uint64_t sum = hash_checksum64(text, len);
        bool same = sched.saved && sched.saved_sum == sum && sched.saved_len == len &&
                    strcmp(sched.saved_dir, dir) == 0;
        int rc = same && !always ? 0 : write_atomically(dir, text, len, err, sizeof err);
        free(text);
        if (rc == 0) {
            if (sched.failure[0])
                log_info("%s/%s: saved again", dir, SNAPSHOT_FILE);
            sched.failure[0] = '\0';
            sched.saved = true;
            sched.saved_sum = sum;
            sched.saved_len = len;
            snprintf(sched.saved_dir, sizeof sched.saved_dir, "%s", dir);
            return;
        }
    }
    sched.saved = false;
    /* once per distinct reason: a full disk is not worth a line every 2 s */
    if (always || strcmp(err, sched.failure) != 0)
        log_warn("%s/%s: cannot save the daily quotas: %s", dir, SNAPSHOT_FILE, err);
    snprintf(sched.failure, sizeof sched.failure, "%s", err);
}

void snapshot_tick(const struct gen *g, uint64_t now_ms)
{
    if (!snapshots_wanted(g))
        return;
    if (sched.tried && now_ms - sched.last_try_ms < SNAPSHOT_INTERVAL_MS)
        return;
    sched.tried = true;
    sched.last_try_ms = now_ms;
    save_if_changed(g, false);
}

void snapshot_final(const struct gen *g)
{
    if (snapshots_wanted(g))
        save_if_changed(g, true);
}
