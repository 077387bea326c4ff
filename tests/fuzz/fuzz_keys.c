/* libFuzzer target: the keys file loader and the header helpers. Any input either
 * loads or fails with one line starting "fuzz.keys:". A loaded keyring answers
 * lookups of strings taken from the input, and its entries' model globs match
 * names taken from the input, without crashing. The line key_file_line writes
 * for an entry's name and tier loads back and finds that entry's key. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/keys.h"

static void check_error(const char *err)
{
    if (strncmp(err, "fuzz.keys:", 10) != 0 || strchr(err, '\n'))
        abort();
}

static void round_trip(const struct key_entry *e, const char *key)
{
    char line[256], err[512];
    if (key_file_line(e->name, e->tier, key, line, sizeof line) < 0)
        abort();   /* a loaded name and tier are always valid */
    struct keyring *k = NULL;
    if (keyring_load_string("fuzz.keys", line, &k, err, sizeof err) != 0)
        abort();
    const struct key_entry *found = keyring_lookup(k, key, strlen(key));
    if (!found || strcmp(found->name, e->name) != 0 || strcmp(found->tier, e->tier) != 0)
        abort();
    keyring_free(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;

    struct slice whole = { text, size }, key;
    if (key_from_authorization(whole, &key) &&
        (key.len == 0 || key.p < text || key.p + key.len > text + size))
        abort();
    if (key_from_x_api_key(whole, &key) &&
        (key.len == 0 || key.p < text || key.p + key.len > text + size))
        abort();

    struct keyring *k = NULL;
    char err[1024] = "";
    if (keyring_load_string("fuzz.keys", text, &k, err, sizeof err) != 0) {
        check_error(err);
        if (k)
            abort();
        free(text);
        return 0;
    }

    keyring_lookup(k, text, size);
    keyring_lookup(k, text, size / 2);
    for (size_t i = 0; i + 8 <= size && i < 64; i += 8)
        keyring_lookup(k, text + i, 8);
    unsigned n = keyring_count(k);
    for (unsigned i = 0; i < n && i < 8; i++) {
        const struct key_entry *e = keyring_entry(k, i);
        keyring_lookup(k, e->name, strlen(e->name));
        key_entry_allows_model(e, text, size);
        key_entry_allows_model(e, e->name, strlen(e->name));
        for (unsigned j = 0; j < glob_list_count(e->models); j++) {
            const char *pat = glob_list_pattern(e->models, j);
            if (!key_entry_allows_model(e, pat, strlen(pat)) && !strpbrk(pat, "*?"))
                abort();   /* a literal pattern matches itself */
        }
        if (i < 2)
            round_trip(e, e->name);
    }
    keyring_free(k);
    free(text);
    return 0;
}
