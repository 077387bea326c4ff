/* `aigw keygen NAME [TIER]`: a new key printed once, and a keys-file line that
 * holds only its hash and that the keys loader accepts and matches to the key. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "policy/keys.h"

TestSuite(keygen, .init = h_setup, .fini = h_teardown, .timeout = 30);

/* Runs keygen; fills key and line (without its newline) from its output. */
static void run_keygen(const char *tag, const char *name, const char *tier, char *key, char *line)
{
    const char *bin = getenv("AIGW_BIN");
    cr_assert_not_null(bin);
    const char *argv[] = { bin, "keygen", name, tier, NULL };
    int st = h_run(tag, argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "keygen failed:\n%s", h_tail(tag));
    const char *out = h_tail_out(tag);
    const char *k = strstr(out, "key:  ");
    cr_assert_not_null(k, "no key in the output:\n%s", out);
    cr_assert_eq(sscanf(k, "key:  %63s", key), 1);
    const char *l = strstr(out, name);
    while (l && (l == out || l[-1] != '\n'))
        l = strstr(l + 1, name);
    cr_assert_not_null(l, "no keys-file line starting with %s:\n%s", name, out);
    size_t n = strcspn(l, "\n");
    memcpy(line, l, n);
    line[n] = 0;
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
