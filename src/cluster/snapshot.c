/* state_dir snapshots: see snapshot.h.
 *
 * The file, version 1, is text, one record a line, each line ending in "\n":
 *
 *     aigw-state 1
 *     day 20425
 *     key NAME TOKENS_USED
 *     ...
 *     sum HEX
 *
 * "aigw-state VERSION" comes first and "day D" (the UTC day number, days since
 * 1970-01-01) second; then one "key" line per key that used some of its daily
 * quota that day, in any order, each NAME once (the keys file's NAME rule),
 * TOKENS_USED a decimal in [0, SNAPSHOT_MAX_USED]; "sum" is last: the 16
 * lowercase hex digits of hash_checksum64 over every byte before that line.
 * Anything else (another first line, a missing or mismatched sum, an unknown
 * or malformed line, a repeated NAME, a file over SNAPSHOT_MAX_BYTES) refuses
 * the whole file.
 *
 * Growing it (daily spend, a later issue): new kinds of records, such as
 * "spend NAME MICRO_USD", come with a new version number, and a reader accepts
 * every version up to its own with the records each of them defines. A
 * version-1 file is then a file without spend lines and keeps loading; an
 * older aigw refuses a newer file by its version ("written by a newer aigw")
 * rather than misread it.
 *
 * The sync thread is the only caller of snapshot_tick and snapshot_final, so
 * their schedule state below needs no lock. */
#include "cluster/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/gen.h"
#include "core/log.h"
#include "policy/keys.h"
#include "policy/ratelimit.h"
#include "util/hash.h"
#include "util/outbuf.h"

#define SNAPSHOT_VERSION 1
#define SNAPSHOT_MAGIC "aigw-state "
/* A keys file is at most 64 MiB and each of its lines is longer than the
 * "key" line it gives here: any file aigw wrote fits. */
#define SNAPSHOT_MAX_BYTES (64u << 20)
/* What the quota's use counter of struct rl_global holds (42 bits). */
#define SNAPSHOT_MAX_USED ((INT64_C(1) << 42) - 1)
/* Later than any clock aigw runs under (year 29349). */
#define SNAPSHOT_MAX_DAY 10000000
/* "sum " + 16 hex digits + "\n" */
#define SUM_LINE_LEN 21
/* "key " NAME " " up to 20 digits "\n" */
#define KEY_LINE_MAX (4 + KEY_NAME_MAX + 1 + 20 + 1)

struct snap_key {
    const char *name;       /* into the file's text, not NUL-terminated */
    size_t len;
    int64_t used;
};

struct snap_file {
    int64_t day;
    struct snap_key *keys;  /* sorted by name */
    size_t nkeys;
};

/* ---- the text ---- */

static void put_sum_line(struct outbuf *o)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t sum = hash_checksum64(o->buf, o->len);
    char line[SUM_LINE_LEN];
    memcpy(line, "sum ", 4);
    for (int i = 0; i < 16; i++)
        line[4 + i] = hex[(sum >> (60 - 4 * i)) & 0xf];
    line[20] = '\n';
    outbuf_put(o, line, sizeof line);
}

/* The file's text for g's keys on UTC day `today`, malloc'd; NULL when out of
 * memory. */
static char *snapshot_format(const struct gen *g, int64_t today, size_t *len_out)
{
    const struct keyring *ring = g->cfg->keys.ring;
    unsigned n = g->rl_global ? keyring_count(ring) : 0;
    size_t cap = 64 + (size_t)n * KEY_LINE_MAX + SUM_LINE_LEN;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    struct outbuf o = outbuf_make(buf, cap);
    OUTBUF_LIT(&o, SNAPSHOT_MAGIC);
    outbuf_u64(&o, SNAPSHOT_VERSION);
    OUTBUF_LIT(&o, "\nday ");
    outbuf_i64(&o, today);
    outbuf_char(&o, '\n');
    for (unsigned k = 0; k < n; k++) {
        const struct rl_global *rg = &g->rl_global[k];
        if (!rg->daily)
            continue;
        int64_t used = rl_quota_used(rg, today);
        if (used <= 0)
            continue;
        OUTBUF_LIT(&o, "key ");
        outbuf_str(&o, keyring_entry(ring, k)->name);
        outbuf_char(&o, ' ');
        outbuf_i64(&o, used > SNAPSHOT_MAX_USED ? SNAPSHOT_MAX_USED : used);
        outbuf_char(&o, '\n');
    }
    put_sum_line(&o);
    *len_out = o.len;
    return buf;
}

static bool refuse(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool refuse(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return false;
}

/* A decimal of 1 to 19 digits, no sign, no leading zero (but "0"). */
static bool parse_decimal(const char *p, size_t len, int64_t max, int64_t *out)
{
    if (len == 0 || len > 19 || (p[0] == '0' && len > 1))
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static int key_cmp(const void *a, const void *b)
{
    const struct snap_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The line starting at p (end: the file's end): its length without "\n". */
static size_t line_len(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? (size_t)(nl - p) : (size_t)(end - p);
}

/* Checks and reads text[0, len) into *out (out->keys malloc'd, pointing into
 * text). False with the reason in err: nothing in *out to free then. */
static bool snapshot_parse(const char *text, size_t len, struct snap_file *out, char *err, size_t errlen)
{
    *out = (struct snap_file){ 0 };
    const char *end = text + len;
    if (len == 0)
        return refuse(err, errlen, "empty file");
    size_t magic = sizeof SNAPSHOT_MAGIC - 1;
    if (memcmp(text, SNAPSHOT_MAGIC, len < magic ? len : magic) != 0)
        return refuse(err, errlen, "not an aigw state file (it does not start with \"aigw-state\")");
    if (len < magic)
        return refuse(err, errlen, "truncated (%zu bytes)", len);
    if (text[len - 1] != '\n')
        return refuse(err, errlen, "truncated (it does not end with a whole line)");
    size_t first = line_len(text, end);
    int64_t version;
    if (!parse_decimal(text + magic, first - magic, INT32_MAX, &version) || version == 0)
        return refuse(err, errlen, "line 1: not \"aigw-state VERSION\"");
    if (version > SNAPSHOT_VERSION)
        return refuse(err, errlen, "written by a newer aigw (version %" PRId64 "; this one reads up to %d)",
                      version, SNAPSHOT_VERSION);

    /* the checksum first: a truncated or damaged file says so, whatever line
     * the damage falls on */
    if (len < SUM_LINE_LEN || memcmp(end - SUM_LINE_LEN, "sum ", 4) != 0 ||
        (len > SUM_LINE_LEN && end[-SUM_LINE_LEN - 1] != '\n'))
        return refuse(err, errlen, "truncated (no \"sum\" line at its end)");
    uint64_t want = 0;
    for (const char *p = end - SUM_LINE_LEN + 4; p < end - 1; p++) {
        int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10 : -1;
        if (d < 0)
            return refuse(err, errlen, "the \"sum\" line is not 16 lowercase hex digits");
        want = want << 4 | (uint64_t)d;
    }
    size_t body = len - SUM_LINE_LEN;
    if (hash_checksum64(text, body) != want)
        return refuse(err, errlen, "checksum mismatch (the file is damaged or was edited)");

    size_t lines = 0;
    for (const char *p = text; p < text + body; p++)
        lines += *p == '\n';
    struct snap_key *keys = malloc((lines ? lines : 1) * sizeof *keys);
    if (!keys)
        return refuse(err, errlen, "out of memory");
    size_t nkeys = 0;
    int64_t day = -1;
    unsigned lineno = 2;
    bool ok = true;
    for (const char *p = text + first + 1; ok && p < text + body; lineno++) {
        size_t n = line_len(p, text + body);
        const char *sp = memchr(p, ' ', n);
        if (lineno == 2) {
            if (!sp || (size_t)(sp - p) != 3 || memcmp(p, "day", 3) != 0 ||
                !parse_decimal(sp + 1, n - 4, SNAPSHOT_MAX_DAY, &day))
                ok = refuse(err, errlen, "line 2: not \"day N\"");
        } else if (sp && (size_t)(sp - p) == 3 && memcmp(p, "key", 3) == 0) {
            const char *name = sp + 1;
            const char *sp2 = memchr(name, ' ', n - 4);
            struct snap_key *k = &keys[nkeys];
            if (!sp2 || !key_name_valid(name, (size_t)(sp2 - name)))
                ok = refuse(err, errlen, "line %u: not \"key NAME TOKENS_USED\"", lineno);
            else if (!parse_decimal(sp2 + 1, (size_t)(p + n - sp2 - 1), SNAPSHOT_MAX_USED, &k->used))
                ok = refuse(err, errlen, "line %u: the tokens used are not a number in [0, %" PRId64 "]", lineno,
                            SNAPSHOT_MAX_USED);
            k->name = name;
            k->len = (size_t)(sp2 ? sp2 - name : 0);
            nkeys++;
        } else {
            ok = refuse(err, errlen, "line %u: not a record this version defines", lineno);
        }
        p += n + 1;
    }
    if (ok && day < 0)
        ok = refuse(err, errlen, "no \"day\" line");
    if (ok && nkeys > 1) {
        qsort(keys, nkeys, sizeof *keys, key_cmp);
        for (size_t i = 1; ok && i < nkeys; i++)
            if (key_cmp(&keys[i - 1], &keys[i]) == 0)
                ok = refuse(err, errlen, "key %.*s appears more than once", (int)keys[i].len, keys[i].name);
    }
    if (!ok) {
        free(keys);
        return false;
    }
    *out = (struct snap_file){ .day = day, .keys = keys, .nkeys = nkeys };
    return true;
}

/* ---- the disk ---- */

static bool snapshot_path(char *out, size_t cap, const char *dir, const char *name, char *err, size_t errlen)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return refuse(err, errlen, "%s/%s: path too long", dir, name);
    return true;
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Replaces DIR/quotas.state with text: whole or not at all, and on disk
 * before this returns. */
static int write_atomically(const char *dir, const char *text, size_t len, char *err, size_t errlen)
{
    char path[PATH_MAX], tmp[PATH_MAX], name[64];
    snprintf(name, sizeof name, ".%s.tmp.%ld", SNAPSHOT_FILE, (long)getpid());
    if (!snapshot_path(path, sizeof path, dir, SNAPSHOT_FILE, err, errlen) ||
        !snapshot_path(tmp, sizeof tmp, dir, name, err, errlen))
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    const char *failed = !write_all(fd, text, len) ? "writing" : fsync(fd) != 0 ? "syncing" : NULL;
    int saved_errno = errno;
    if (close(fd) != 0 && !failed) {
        failed = "closing";
        saved_errno = errno;
    }
    if (!failed && rename(tmp, path) != 0) {
        failed = "renaming";
        saved_errno = errno;
    }
    if (failed) {
        snprintf(err, errlen, "%s %s: %s", failed, tmp, strerror(saved_errno));
        unlink(tmp);
        return -1;
    }
    /* the rename itself is durable only once the directory is */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "syncing the directory %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
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
    char *text = snapshot_format(g, rl_utc_day(now_unix_s), &len);
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
    struct snap_file f;
    if (!snapshot_parse(text, len, &f, err, errlen)) {
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
            struct snap_key probe = { .name = name, .len = strlen(name) };
            const struct snap_key *hit = f.nkeys ? bsearch(&probe, f.keys, f.nkeys, sizeof *f.keys, key_cmp) : NULL;
            if (!hit || !g->rl_global[k].daily)
                continue;   /* no use that day, or no quota now */
            rl_quota_restore(&g->rl_global[k], hit->used, today);
            restored++;
        }
    }
    free(f.keys);
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
    char *text = snapshot_format(g, rl_utc_day((int64_t)time(NULL)), &len);
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
