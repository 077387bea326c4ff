/* `aigw keygen [--append FILE] NAME [TIER]`: a new key printed once (stderr), and
 * a keys-file line (stdout alone, so `>> keys` works; or added to FILE) that
 * holds only its hash and that the keys loader accepts and matches to the key. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "policy/keys.h"

TestSuite(keygen, .init = h_setup, .fini = h_teardown, .timeout = 30);

/* The key keygen printed on stderr (run `tag`). */
static void key_of(const char *tag, char *key)
{
    const char *err = h_tail(tag);
    const char *k = strstr(err, "key: ");
    cr_assert_not_null(k, "no key on stderr:\n%s", err);
    cr_assert_eq(sscanf(k, "key: %63s", key), 1);
}

/* Runs keygen; fills key (stderr) and line (stdout, which must be that one line
 * and nothing else). */
static void run_keygen(const char *tag, const char *name, const char *tier, char *key, char *line)
{
    const char *bin = getenv("AIGW_BIN");
    cr_assert_not_null(bin);
    const char *argv[] = { bin, "keygen", name, tier, NULL };
    char *out = NULL;
    int st = h_run_io(tag, argv, NULL, 5000 * h_slow(), &out);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "keygen failed:\n%s", h_tail(tag));
    cr_assert_not_null(out);
    size_t n = strlen(out);
    cr_assert(n > 1 && out[n - 1] == '\n' && strchr(out, '\n') == out + n - 1,
              "stdout must be the keys-file line alone:\n%s", out);
    cr_assert_eq(strncmp(out, name, strlen(name)), 0, "stdout: %s", out);
    memcpy(line, out, n - 1);
    line[n - 1] = 0;
    free(out);
    key_of(tag, key);
}

Test(keygen, printed_line_loads_and_matches_the_printed_key)
{
    char key1[64], key2[64], line1[512], line2[512];
    run_keygen("keygen1", "alice", "pro", key1, line1);
    run_keygen("keygen2", "bob", NULL, key2, line2);
    cr_assert_eq(strncmp(key1, "sk-aigw-", 8), 0, "key format: %s", key1);
    cr_assert_eq(strlen(key1), KEY_LEN);
    cr_assert_str_neq(key1, key2, "two runs gave the same key");
    cr_assert_null(strstr(line1, key1), "the keys-file line must not hold the key itself");
    cr_assert(strstr(line2, "tier=default"), "default tier: %s", line2);

    char file[1200], err[256];
    snprintf(file, sizeof file, "# made by aigw keygen\n%s\n%s\n", line1, line2);
    struct keyring *k = NULL;
    cr_assert_eq(keyring_load_string("keys", file, &k, err, sizeof err), 0, "%s\n%s", err, file);
    const struct key_entry *e = keyring_lookup(k, key1, strlen(key1));
    cr_assert_not_null(e);
    cr_assert_str_eq(e->name, "alice");
    cr_assert_str_eq(e->tier, "pro");
    e = keyring_lookup(k, key2, strlen(key2));
    cr_assert(e && !strcmp(e->name, "bob"));
    key1[10] ^= 1;
    cr_assert_null(keyring_lookup(k, key1, strlen(key1)), "a changed key must not match");
    keyring_free(k);
    h_finish();
}

Test(keygen, bad_names_are_refused)
{
    const char *bin = getenv("AIGW_BIN");
    const char *argv[] = { bin, "keygen", "has space", NULL };
    int st = h_run("keygen-bad", argv, 5000 * h_slow());
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status 0x%x", st);
    cr_assert(strstr(h_tail("keygen-bad"), "invalid NAME"), "%s", h_tail("keygen-bad"));
    const char *none[] = { bin, "keygen", NULL };
    st = h_run("keygen-none", none, 5000 * h_slow());
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    h_finish();
}

/* `aigw keygen NAME >> keys`, twice, then `--append keys`: the file loads and
 * knows all three keys; --append keeps the file's mode, and refuses a name
 * already there without touching the file. */
Test(keygen, appended_lines_load_and_duplicates_are_refused)
{
    const char *bin = getenv("AIGW_BIN");
    char keys[512], key1[64], key2[64], key3[64], line1[512], line2[512];
    snprintf(keys, sizeof keys, "%s", h_keys_path());
    h_write_file(keys, "# operators' keys, no newline at the end");
    run_keygen("kg-a", "alice", NULL, key1, line1);
    run_keygen("kg-b", "bob", NULL, key2, line2);
    char *text = h_read_file(keys);
    h_write_file(keys, "%s\n%s\n%s", text, line1, line2);    /* what >> does, less the last newline */
    free(text);
    cr_assert_eq(chmod(keys, 0640), 0);

    const char *argv[] = { bin, "keygen", "--append", keys, "carol", NULL };
    int st = h_run("kg-c", argv, 5000 * h_slow());
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x: %s", st, h_tail("kg-c"));
    key_of("kg-c", key3);
    cr_assert_str_eq(h_tail_out("kg-c"), "", "--append prints nothing on stdout");
    struct stat sb;
    cr_assert_eq(stat(keys, &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0640, "mode %o", sb.st_mode & 07777);

    char *after = h_read_file(keys), err[256];
    struct keyring *k = NULL;
    cr_assert_eq(keyring_load_string(keys, after, &k, err, sizeof err), 0, "%s\n%s", err, after);
    const char *want[] = { key1, key2, key3 }, *names[] = { "alice", "bob", "carol" };
    for (int i = 0; i < 3; i++) {
        const struct key_entry *e = keyring_lookup(k, want[i], strlen(want[i]));
        cr_assert(e && !strcmp(e->name, names[i]), "%s not found in:\n%s", names[i], after);
    }
    keyring_free(k);

    const char *dup[] = { bin, "keygen", "--append", keys, "bob", NULL };
    st = h_run("kg-dup", dup, 5000 * h_slow());
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x", st);
    cr_assert(strstr(h_tail("kg-dup"), "duplicate key name 'bob'"), "%s", h_tail("kg-dup"));
    cr_assert_null(strstr(h_tail("kg-dup"), "key: "), "no key is shown when nothing was added");
    char *unchanged = h_read_file(keys);
    cr_assert_str_eq(unchanged, after, "a refused --append must leave the file as it was");
    free(unchanged);
    free(after);
    h_finish();
}
