/* libFuzzer target: the state_dir snapshot's text (cluster/snapshot_file.h).
 * Any input is either refused with a one-line reason and nothing to free, or
 * parsed into entries that hold: a day, uses and spends in range, valid NAMEs inside
 * the input, sorted with no NAME twice, each found by its NAME. Formatting
 * what was parsed gives a text of the input's length (the syntax has one
 * spelling per value) that parses back to the same day and entries, and
 * formats again to the same bytes.
 *
 * A mutated file almost never keeps its checksum, so each input is parsed
 * twice: as it is (the checks before and of the sum), and with the sum line it
 * should have appended (so mutations reach the lines after the first). */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/snapshot_file.h"
#include "policy/keys.h"
#include "util/hash.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static int name_cmp(const struct snapshot_entry *a, const struct snapshot_entry *b)
{
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = n ? memcmp(a->name, b->name, n) : 0;
    return c ? c : (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

static void check_same(const struct snapshot_file *a, const struct snapshot_file *b)
{
    FUZZ_CHECK(a->day == b->day && a->count == b->count);
    for (size_t i = 0; i < a->count; i++) {
        FUZZ_CHECK(name_cmp(&a->entries[i], &b->entries[i]) == 0);
        FUZZ_CHECK(a->entries[i].used == b->entries[i].used);
        FUZZ_CHECK(a->entries[i].spend == b->entries[i].spend);
        FUZZ_CHECK(a->entries[i].no_tokens == b->entries[i].no_tokens);
    }
}

static void check_parsed(const struct snapshot_file *f, const char *text, size_t len)
{
    FUZZ_CHECK(f->day >= 0 && f->day <= SNAPSHOT_MAX_DAY);
    FUZZ_CHECK(f->count == 0 || f->entries);
    for (size_t i = 0; i < f->count; i++) {
        const struct snapshot_entry *e = &f->entries[i];
        FUZZ_CHECK(e->name >= text && e->name_len <= len && e->name + e->name_len <= text + len);
        FUZZ_CHECK(key_name_valid(e->name, e->name_len));
        FUZZ_CHECK(e->used >= 0 && e->used <= SNAPSHOT_MAX_USED);
        FUZZ_CHECK(e->spend >= 0 && e->spend <= SNAPSHOT_MAX_USED);
        FUZZ_CHECK(!e->no_tokens || (e->used == 0 && e->spend > 0));   /* an entry has a record */
        FUZZ_CHECK(i == 0 || name_cmp(&f->entries[i - 1], e) < 0);   /* sorted, no NAME twice */
        FUZZ_CHECK(snapshot_file_find(f, e->name, e->name_len) == e);
    }

    size_t len2 = 0;
    char *text2 = snapshot_file_format(f->day, f->entries, f->count, &len2);
    if (!text2)
        return;
    FUZZ_CHECK(len2 == len);
    struct snapshot_file f2;
    char err[256] = "";
    FUZZ_CHECK(snapshot_file_parse(text2, len2, &f2, err, sizeof err));
    check_same(f, &f2);
    size_t len3 = 0;
    char *text3 = snapshot_file_format(f2.day, f2.entries, f2.count, &len3);
    FUZZ_CHECK(!text3 || (len3 == len2 && memcmp(text3, text2, len2) == 0));
    free(text3);
    snapshot_file_free(&f2);
    free(text2);
}

static void parse_one(const char *text, size_t len)
{
    struct snapshot_file f = { .day = 7, .count = 7 };
    char err[256] = "";
    if (!snapshot_file_parse(text, len, &f, err, sizeof err)) {
        FUZZ_CHECK(err[0] && !strchr(err, '\n'));
        FUZZ_CHECK(f.entries == NULL && f.count == 0);
        return;
    }
    check_parsed(&f, text, len);
    /* a lookup of any piece of the input answers a matching entry or none */
    size_t n = len < KEY_NAME_MAX ? len : KEY_NAME_MAX;
    const struct snapshot_entry *e = snapshot_file_find(&f, text, n);
    FUZZ_CHECK(!e || (e->name_len == n && memcmp(e->name, text, n) == 0));
    snapshot_file_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* copies of exactly the input's size: ASan sees any read past its end */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    parse_one(text, size);

    char sum_line[32];
    int n = snprintf(sum_line, sizeof sum_line, "sum %016" PRIx64 "\n", hash_checksum64(text, size));
    char *signed_text = malloc(size + (size_t)n);
    if (signed_text) {
        memcpy(signed_text, text, size);
        memcpy(signed_text + size, sum_line, (size_t)n);
        parse_one(signed_text, size + (size_t)n);
        free(signed_text);
    }
    free(text);
    return 0;
}
