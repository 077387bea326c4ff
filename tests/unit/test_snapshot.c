/* [server] state_dir snapshots (cluster/snapshot.h): the daily quota use a
 * generation saves is what a fresh generation (a restarted aigw) loads; a file
 * that is foreign, of another version, truncated anywhere, damaged anywhere,
 * malformed, or not a file is refused whole; the sync thread's schedule writes
 * only when something changed, and at shutdown. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cluster/snapshot.h"
#include "core/config.h"
#include "core/gen.h"
#include "core/metrics.h"
#include "policy/keys.h"
#include "policy/ratelimit.h"
#include "util/hash.h"

#define SNT_NOON INT64_C(1718107200)        /* 2024-06-11 12:00:00 UTC */
#define SNT_DAY (SNT_NOON / 86400)
#define SNT_NS UINT64_C(5000000000000)

static char dir[64];
static char keys_path[128], state_path[128];

static void snt_setup(void)
{
    cr_assert_eq(metrics_init(1), 0);
    snprintf(dir, sizeof dir, "/tmp/aigw-snapshot-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(keys_path, sizeof keys_path, "%s/keys", dir);
    snprintf(state_path, sizeof state_path, "%s/%s", dir, SNAPSHOT_FILE);
    FILE *f = fopen(keys_path, "w");
    cr_assert_not_null(f);
    /* the hashes are never looked up here */
    fprintf(f, "alice sha256:%064d tier=quota\n", 1);
    fprintf(f, "bob sha256:%064d tier=quota\n", 2);
    fprintf(f, "carol sha256:%064d tier=free\n", 3);
    fclose(f);
}

static void snt_teardown(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[sizeof dir + 256 + 2];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (rmdir(path) != 0)
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

TestSuite(snapshot, .init = snt_setup, .fini = snt_teardown);

/* A generation as aigw builds one at start: alice and bob with a 1000-token
 * day, carol without a quota. */
static struct gen *snt_gen(bool cluster)
{
    char text[1024], err[512];
    snprintf(text, sizeof text,
             "[server]\nlisten = 127.0.0.1:27001\nstate_dir = %s\n"
             "[admin]\nlisten = off\n"
             "[keys]\nauth = required\nfile = %s\n"
             "[tier quota]\ndaily_tokens = 1000\n"
             "[tier free]\nrequests_per_minute = 100\n%s",
             dir, keys_path, cluster ? "[cluster]\nredis = 127.0.0.1:6379\n" : "");
    struct config *cfg = NULL;
    cr_assert_eq(config_load_string("snapshot.conf", text, &cfg, err, sizeof err), 0, "%s", err);
    struct gen *g = gen_create(cfg, NULL, 1, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    return g;
}

/* gen_create hands out one reference per holder aigw runs (each shard, main,
 * the watcher, the limits sync thread); here the test is all of them. */
static void snt_release(struct gen *g)
{
    for (unsigned holders = g->nshards + 3; holders > 0; holders--)
        gen_unref(g);
}

static struct rl_global *key_of(struct gen *g, const char *name)
{
    for (unsigned k = 0; k < keyring_count(g->cfg->keys.ring); k++)
        if (!strcmp(keyring_entry(g->cfg->keys.ring, k)->name, name))
            return &g->rl_global[k];
    cr_assert_fail("no key %s", name);
    return NULL;
}

/* What requests of `tokens` each do to a key's quota on shard 0. */
static void spend(struct gen *g, const char *name, uint64_t tokens, int64_t unix_s)
{
    struct rl_global *rg = key_of(g, name);
    struct rl_local *l = &g->rl_local[rg - g->rl_global];
    struct rl_verdict v;
    cr_assert(rl_admit(rg, l, tokens, SNT_NS, unix_s, &v), "%s: %" PRIu64 " tokens refused", name, tokens);
}

static int64_t used_of(struct gen *g, const char *name, int64_t unix_s)
{
    return rl_quota_used(key_of(g, name), rl_utc_day(unix_s));
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, p, n), (ssize_t)n);
    close(fd);
}

/* body followed by the "sum" line it should have. */
static void write_signed(const char *body)
{
    char text[4096];
    int n = snprintf(text, sizeof text, "%ssum %016" PRIx64 "\n", body, hash_checksum64(body, strlen(body)));
    write_bytes(state_path, text, (size_t)n);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 16);
    *len = fread(buf, 1, (1 << 16) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* Loads into a fresh generation; nothing may be restored from a refused file. */
static void expect_refused(const char *what, const char *reason_has)
{
    struct gen *g = snt_gen(false);
    char err[512];
    int n = snapshot_load(dir, g, SNT_NOON, err, sizeof err);
    cr_expect_eq(n, -1, "%s: loaded (%d keys)", what, n);
    cr_expect(err[0], "%s: refused without a reason", what);
    if (reason_has)
        cr_expect(strstr(err, reason_has), "%s: reason \"%s\" does not say \"%s\"", what, err, reason_has);
    cr_expect_eq(used_of(g, "alice", SNT_NOON), 0, "%s: alice's use restored from a refused file", what);
    snt_release(g);
}

Test(snapshot, round_trip_restores_each_keys_use_of_the_day)
{
    struct gen *a = snt_gen(false);
    spend(a, "alice", 300, SNT_NOON);
    spend(a, "alice", 250, SNT_NOON);
    spend(a, "carol", 5, SNT_NOON);     /* no quota: not in the file */
    int64_t alice = used_of(a, "alice", SNT_NOON);
    cr_assert_geq(alice, 550);
    char err[512] = "";
    cr_assert_eq(snapshot_save(dir, a, SNT_NOON, err, sizeof err), 0, "%s", err);

    size_t len;
    char *text = slurp(state_path, &len);
    cr_assert_not_null(text);
    char want[256];
    int body = snprintf(want, sizeof want, "aigw-state 1\nday %" PRId64 "\nkey alice %" PRId64 "\n", SNT_DAY, alice);
    cr_expect_eq(len, (size_t)body + 21, "%s", text);
    cr_expect_eq(strncmp(text, want, (size_t)body), 0, "the file:\n%s\nwanted it to begin:\n%s", text, want);
    char sum[32];
    snprintf(sum, sizeof sum, "sum %016" PRIx64 "\n", hash_checksum64(text, (size_t)body));
    cr_expect_str_eq(text + body, sum);
    free(text);

    /* a restarted aigw: alice's day goes on where it was, bob's is untouched */
    struct gen *b = snt_gen(false);
    cr_assert_eq(snapshot_load(dir, b, SNT_NOON + 3600, err, sizeof err), 1, "%s", err);
    cr_expect_eq(used_of(b, "alice", SNT_NOON), alice);
    cr_expect_eq(used_of(b, "bob", SNT_NOON), 0);
    struct rl_global *rg = key_of(b, "alice");
    struct rl_verdict v;
    cr_expect_not(rl_admit(rg, &b->rl_local[rg - b->rl_global], (uint64_t)(1000 - alice + 1), SNT_NS, SNT_NOON, &v),
                  "more than the day's rest admitted after the restart");
    cr_expect_eq(v.limit, RL_QUOTA);
    cr_expect(rl_admit(rg, &b->rl_local[rg - b->rl_global], (uint64_t)(1000 - alice), SNT_NS, SNT_NOON, &v));

    /* no temporary file is left behind */
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d)))
        cr_expect_null(strstr(e->d_name, ".tmp."), "%s left in the state dir", e->d_name);
    closedir(d);
    snt_release(a);
    snt_release(b);
}

Test(snapshot, keys_gone_or_without_a_quota_are_ignored)
{
    char body[256];
    snprintf(body, sizeof body, "aigw-state 1\nday %" PRId64 "\nkey ghost 5\nkey carol 7\nkey bob 10\n", SNT_DAY);
    write_signed(body);
    struct gen *g = snt_gen(false);
    char err[512];
    cr_expect_eq(snapshot_load(dir, g, SNT_NOON, err, sizeof err), 1, "%s", err);
    cr_expect_eq(used_of(g, "bob", SNT_NOON), 10);
    cr_expect_eq(used_of(g, "alice", SNT_NOON), 0);
    snt_release(g);
}

Test(snapshot, a_file_of_an_earlier_day_restores_nothing_and_of_a_later_day_is_refused)
{
    struct gen *a = snt_gen(false);
    spend(a, "alice", 400, SNT_NOON);
    char err[512];
    cr_assert_eq(snapshot_save(dir, a, SNT_NOON, err, sizeof err), 0, "%s", err);
    snt_release(a);

    struct gen *b = snt_gen(false);
    cr_expect_eq(snapshot_load(dir, b, SNT_NOON + 86400, err, sizeof err), 0);
    cr_expect(strstr(err, "earlier"), "%s", err);
    cr_expect_eq(used_of(b, "alice", SNT_NOON + 86400), 0);
    snt_release(b);

    b = snt_gen(false);
    cr_expect_eq(snapshot_load(dir, b, SNT_NOON - 86400, err, sizeof err), -1, "a file from tomorrow loaded");
    cr_expect(strstr(err, "later"), "%s", err);
    snt_release(b);

    /* no file yet: nothing to restore, nothing wrong */
    unlink(state_path);
    b = snt_gen(false);
    cr_expect_eq(snapshot_load(dir, b, SNT_NOON, err, sizeof err), 0);
    snt_release(b);
}

Test(snapshot, foreign_other_version_and_malformed_files_are_refused)
{
    write_bytes(state_path, "", 0);
    expect_refused("an empty file", "empty");
    write_bytes(state_path, "{\"day\": 1}\n", 11);
    expect_refused("a JSON file", "not an aigw state file");
    char body[512];
    snprintf(body, sizeof body, "aigw-state 3\nday %" PRId64 "\nkey alice 5\n", SNT_DAY);
    write_signed(body);
    expect_refused("version 3", "newer");
    snprintf(body, sizeof body, "aigw-state 0\nday %" PRId64 "\nkey alice 5\n", SNT_DAY);
    write_signed(body);
    expect_refused("version 0", "line 1");

    static const char *const bad[] = {
        "key alice\n",              /* no number */
        "key alice x5\n",
        "key alice -5\n",
        "key alice 05\n",
        "key alice 5 6\n",          /* a third column this version does not define */
        "key alice 4398046511104\n",    /* 2^42: more than a quota counter holds */
        "key alice 99999999999999999999999\n",
        "key al!ce 5\n",
        "key  5\n",
        "spend alice 5\n",          /* a record of a later version */
        "\n",
        "key alice 5\r\n",
        "key alice 5\nkey bob 1\nkey alice 6\n",    /* twice */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(body, sizeof body, "aigw-state 1\nday %" PRId64 "\nkey bob 3\n%s", SNT_DAY, bad[i]);
        write_signed(body);
        expect_refused(bad[i], NULL);
    }
    write_signed("aigw-state 1\nkey alice 5\n");
    expect_refused("no day line", "line 2");
    write_signed("aigw-state 1\n");
    expect_refused("only the first line", "day");
    write_signed("aigw-state 1\nday 99999999999\nkey alice 5\n");
    expect_refused("a day out of range", "line 2");
}

/* A good file of two keys, for the damage tests. */
static char *good_file(size_t *len)
{
    struct gen *a = snt_gen(false);
    spend(a, "alice", 120, SNT_NOON);
    spend(a, "bob", 70, SNT_NOON);
    char err[512];
    cr_assert_eq(snapshot_save(dir, a, SNT_NOON, err, sizeof err), 0, "%s", err);
    snt_release(a);
    char *text = slurp(state_path, len);
    cr_assert_not_null(text);
    return text;
}

Test(snapshot, every_truncation_is_refused)
{
    size_t len;
    char *text = good_file(&len);
    for (size_t cut = 0; cut <= len; cut++) {
        write_bytes(state_path, text, cut);
        struct gen *g = snt_gen(false);
        char err[512];
        int n = snapshot_load(dir, g, SNT_NOON, err, sizeof err);
        int64_t restored = used_of(g, "alice", SNT_NOON) + used_of(g, "bob", SNT_NOON);
        snt_release(g);
        if (cut == len) {
            cr_expect_eq(n, 2, "the whole file: %s", err);
            cr_expect_geq(restored, 190);
        } else {
            cr_assert_eq(n, -1, "the first %zu of %zu bytes loaded (%d keys)", cut, len, n);
            cr_assert_eq(restored, 0, "the first %zu bytes restored some use", cut);
        }
    }
    free(text);
}

Test(snapshot, every_flipped_byte_is_refused)
{
    size_t len;
    char *text = good_file(&len);
    for (size_t at = 0; at < len; at++) {
        for (unsigned bit = 0; bit < 8; bit += 5) {
            text[at] ^= (char)(1u << bit);
            write_bytes(state_path, text, len);
            text[at] ^= (char)(1u << bit);
            struct gen *g = snt_gen(false);
            char err[512];
            int n = snapshot_load(dir, g, SNT_NOON, err, sizeof err);
            cr_assert_eq(n, -1, "bit %u of byte %zu flipped: loaded (%d keys)", bit, at, n);
            cr_assert_eq(used_of(g, "alice", SNT_NOON) + used_of(g, "bob", SNT_NOON), 0);
            snt_release(g);
        }
    }
    free(text);
}

Test(snapshot, garbage_a_directory_and_a_huge_file_are_refused)
{
    char junk[4096];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof junk; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        junk[i] = (char)x;
    }
    write_bytes(state_path, junk, sizeof junk);
    expect_refused("random bytes", NULL);
    /* aigw's magic followed by garbage */
    memcpy(junk, "aigw-state 1\n", 13);
    write_bytes(state_path, junk, sizeof junk);
    expect_refused("the magic, then random bytes", NULL);

    int fd = open(state_path, O_WRONLY | O_TRUNC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (64 << 20) + 1), 0);
    close(fd);
    expect_refused("a 64 MiB file", "larger");

    unlink(state_path);
    cr_assert_eq(mkdir(state_path, 0700), 0);
    expect_refused("a directory", "not a regular file");
    /* and saving over it fails without harm */
    struct gen *g = snt_gen(false);
    char err[512];
    cr_expect_eq(snapshot_save(dir, g, SNT_NOON, err, sizeof err), -1);
    cr_expect(err[0]);
    snt_release(g);
}

Test(snapshot, saving_into_a_missing_directory_fails_with_a_reason)
{
    struct gen *g = snt_gen(false);
    char missing[128], err[512];
    snprintf(missing, sizeof missing, "%s/nowhere", dir);
    cr_expect_eq(snapshot_save(missing, g, SNT_NOON, err, sizeof err), -1);
    cr_expect(strstr(err, "nowhere") && strstr(err, "No such file"), "%s", err);
    snt_release(g);
}

static bool state_file_exists(void)
{
    struct stat st;
    return stat(state_path, &st) == 0;
}

Test(snapshot, the_schedule_writes_only_what_changed_and_always_at_shutdown)
{
    struct gen *g = snt_gen(false);
    snapshot_tick(g, 10000);
    cr_assert(state_file_exists(), "the first tick saved nothing");

    /* unchanged: an idle host does not write */
    unlink(state_path);
    snapshot_tick(g, 10000 + SNAPSHOT_INTERVAL_MS);
    cr_expect_not(state_file_exists(), "an unchanged snapshot was written again");

    /* changed, but within the interval: not yet; after it: yes */
    spend(g, "bob", 42, (int64_t)time(NULL));
    snapshot_tick(g, 10000 + SNAPSHOT_INTERVAL_MS + SNAPSHOT_INTERVAL_MS / 2);
    cr_expect_not(state_file_exists(), "saved before the interval passed");
    snapshot_tick(g, 10000 + 2 * SNAPSHOT_INTERVAL_MS);
    cr_assert(state_file_exists(), "a change was not saved after the interval");
    size_t len;
    char *text = slurp(state_path, &len);
    cr_expect(strstr(text, "\nkey bob "), "%s", text);
    free(text);

    unlink(state_path);
    snapshot_final(g);
    cr_expect(state_file_exists(), "nothing saved at shutdown");
    snt_release(g);
}

Test(snapshot, nothing_is_written_with_a_cluster)
{
    struct gen *g = snt_gen(true);
    snapshot_tick(g, 10000);
    snapshot_final(g);
    cr_expect_not(state_file_exists(), "a snapshot written although Redis holds the quotas");
    snt_release(g);
}

/* The example in docs/config.md, byte for byte, is a file aigw loads. */
Test(snapshot, the_documented_example_loads)
{
    static const char doc[] = "aigw-state 1\nday 20425\nkey alice 5310\nkey bob 120\nsum 8898e7cf23c90c87\n";
    write_bytes(state_path, doc, sizeof doc - 1);
    struct gen *g = snt_gen(false);
    char err[512];
    int64_t noon = INT64_C(20425) * 86400 + 43200;
    cr_expect_eq(snapshot_load(dir, g, noon, err, sizeof err), 2, "%s", err);
    cr_expect_eq(used_of(g, "alice", noon), 5310);
    cr_expect_eq(used_of(g, "bob", noon), 120);
    snt_release(g);
}
