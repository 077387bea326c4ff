/* The snapshot's text without the disk (cluster/snapshot_file.h): what
 * snapshot_file_format writes is the documented file byte for byte and parses
 * back to the same day and entries; a parsed file finds each key by NAME; a
 * refused text says why and leaves nothing to free. */
#include <criterion/criterion.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/snapshot_file.h"
#include "util/hash.h"

static const char doc_example[] = "aigw-state 1\nday 20425\nkey alice 5310\nkey bob 120\nsum 8898e7cf23c90c87\n";

static struct snapshot_entry entry(const char *name, int64_t used)
{
    return (struct snapshot_entry){ .name = name, .name_len = strlen(name), .used = used };
}

/* body followed by the "sum" line it should have, into text. */
static size_t sign(char *text, size_t cap, const char *body)
{
    int n = snprintf(text, cap, "%ssum %016" PRIx64 "\n", body, hash_checksum64(body, strlen(body)));
    cr_assert(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static int64_t used_of(const struct snapshot_file *f, const char *name)
{
    const struct snapshot_entry *e = snapshot_file_find(f, name, strlen(name));
    return e ? e->used : -1;
}

Test(snapshot_file, formats_the_documented_example_byte_for_byte)
{
    struct snapshot_entry entries[] = { entry("alice", 5310), entry("bob", 120) };
    size_t len = 0;
    char *text = snapshot_file_format(20425, entries, 2, &len);
    cr_assert_not_null(text);
    cr_expect_eq(len, sizeof doc_example - 1);
    cr_expect(len == sizeof doc_example - 1 && memcmp(text, doc_example, len) == 0, "formatted:\n%.*s", (int)len,
              text);
    free(text);
}

Test(snapshot_file, parses_entries_in_any_order_and_finds_each_by_name)
{
    char text[512], err[256] = "";
    size_t len = sign(text, sizeof text, "aigw-state 1\nday 20425\nkey bob 120\nkey alice 5310\nkey a.b-c_d 0\n");
    struct snapshot_file f;
    cr_assert(snapshot_file_parse(text, len, &f, err, sizeof err), "%s", err);
    cr_expect_eq(f.day, 20425);
    cr_expect_eq(f.count, 3);
    cr_expect_eq(used_of(&f, "alice"), 5310);
    cr_expect_eq(used_of(&f, "bob"), 120);
    cr_expect_eq(used_of(&f, "a.b-c_d"), 0);
    cr_expect_eq(used_of(&f, "al"), -1, "a prefix of a NAME found");
    cr_expect_eq(used_of(&f, "alicea"), -1);
    cr_expect_eq(used_of(&f, "carol"), -1);
    for (size_t i = 0; i < f.count; i++)
        cr_expect(f.entries[i].name >= text && f.entries[i].name + f.entries[i].name_len <= text + len);
    snapshot_file_free(&f);
    cr_expect_null(f.entries);
}

Test(snapshot_file, a_use_the_file_cannot_hold_is_written_clamped_and_reads_back)
{
    struct snapshot_entry entries[] = { entry("big", INT64_MAX), entry("neg", -7), entry("max", SNAPSHOT_MAX_USED) };
    size_t len = 0;
    char *text = snapshot_file_format(SNAPSHOT_MAX_DAY, entries, 3, &len);
    cr_assert_not_null(text);
    struct snapshot_file f;
    char err[256] = "";
    cr_assert(snapshot_file_parse(text, len, &f, err, sizeof err), "%s\n%.*s", err, (int)len, text);
    cr_expect_eq(f.day, SNAPSHOT_MAX_DAY);
    cr_expect_eq(used_of(&f, "big"), SNAPSHOT_MAX_USED);
    cr_expect_eq(used_of(&f, "neg"), 0);
    cr_expect_eq(used_of(&f, "max"), SNAPSHOT_MAX_USED);
    snapshot_file_free(&f);
    free(text);
}

Test(snapshot_file, a_day_without_keys_round_trips)
{
    size_t len = 0;
    char *text = snapshot_file_format(0, NULL, 0, &len);
    cr_assert_not_null(text);
    cr_expect_eq(len, strlen("aigw-state 1\nday 0\n") + 21);
    struct snapshot_file f;
    char err[256] = "";
    cr_assert(snapshot_file_parse(text, len, &f, err, sizeof err), "%s", err);
    cr_expect_eq(f.day, 0);
    cr_expect_eq(f.count, 0);
    cr_expect_eq(used_of(&f, "alice"), -1);
    snapshot_file_free(&f);
    free(text);
}

Test(snapshot_file, a_refused_text_says_why_and_leaves_nothing_to_free)
{
    static const struct {
        const char *body;       /* signed before parsing, unless raw */
        bool raw;
        const char *reason_has;
    } cases[] = {
        { "", true, "empty" },
        { "aigw-stat", true, "truncated (9 bytes)" },
        { "{\"day\": 1}\n", true, "not an aigw state file" },
        { "aigw-state 1\nday 1\nsum 0000000000000000\n", true, "checksum mismatch" },
        { "aigw-state 1\nday 1\nsum 00000000000000GG\n", true, "16 lowercase hex" },
        { "aigw-state 1\nday 1\n", true, "no \"sum\" line" },
        { "aigw-state 1\nday 1\nsum 0", true, "whole line" },
        { "aigw-state 3\nday 1\n", false, "newer aigw (version 3" },
        { "aigw-state 01\nday 1\n", false, "line 1" },
        /* 19 digits over INT64_MAX: refused, not wrapped to a negative number */
        { "aigw-state 9880465111004651110\n", true, "line 1" },
        { "aigw-state 1\nday 9223372036854775808\n", false, "line 2" },
        { "aigw-state 1\nday 1\nkey alice 9999999999999999999\n", false, "line 3: the tokens used" },
        { "aigw-state 1\n", false, "no \"day\" line" },
        { "aigw-state 1\nday -1\n", false, "line 2" },
        { "aigw-state 1\nday 10000001\n", false, "line 2" },
        { "aigw-state 1\nday 1\nkey alice 4398046511104\n", false, "line 3: the tokens used are not a number" },
        { "aigw-state 1\nday 1\nkey bob 1\nkey al!ce 1\n", false, "line 4: not \"key NAME TOKENS_USED\"" },
        { "aigw-state 1\nday 1\nkey bob 1\nspend bob 1\n", false, "line 4: not a record this version defines" },
        { "aigw-state 1\nday 1\nkey bob 1\nkey alice 2\nkey bob 3\n", false, "key bob appears more than once" },
        { "aigw-state 2\nday 1\nspend bob 1\nkey bob 1\nspend bob 3\n", false, "spend bob appears more than once" },
        { "aigw-state 2\nday 1\nspend bob 0\n", false, "line 3: the micro-USD spent are not a number in [1," },
        { "aigw-state 2\nday 1\nspend bob 4398046511104\n", false, "line 3: the micro-USD spent" },
        { "aigw-state 2\nday 1\nspend b!b 1\n", false, "line 3: not \"spend NAME MICRO_USD\"" },
        { "aigw-state 2\nday 1\nspend bob\n", false, "line 3: not \"spend NAME MICRO_USD\"" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char text[512], err[256] = "";
        size_t len = strlen(cases[i].body);
        if (cases[i].raw)
            memcpy(text, cases[i].body, len);
        else
            len = sign(text, sizeof text, cases[i].body);
        struct snapshot_file f = { .day = 99, .count = 99 };
        cr_expect_not(snapshot_file_parse(text, len, &f, err, sizeof err), "accepted: %s", cases[i].body);
        cr_expect(strstr(err, cases[i].reason_has), "%s: reason \"%s\" does not say \"%s\"", cases[i].body, err,
                  cases[i].reason_has);
        cr_expect(f.entries == NULL && f.count == 0, "%s: something left to free", cases[i].body);
    }
}

/* Version 2: the spend cap's use rides along, as "spend NAME MICRO_USD" lines. */
static const char doc_example_v2[] =
    "aigw-state 2\nday 20425\nkey alice 5310\nspend alice 2750000\nspend carol 12\nsum ";

Test(snapshot_file, version_2_carries_spend_and_round_trips)
{
    struct snapshot_entry entries[] = {
        { .name = "alice", .name_len = 5, .used = 5310, .spend = 2750000 },
        { .name = "carol", .name_len = 5, .spend = 12, .no_tokens = true },
    };
    size_t len = 0;
    char *text = snapshot_file_format(20425, entries, 2, &len);
    cr_assert_not_null(text);
    cr_expect(len > sizeof doc_example_v2 - 1 && memcmp(text, doc_example_v2, sizeof doc_example_v2 - 1) == 0,
              "formatted:\n%.*s", (int)len, text);
    struct snapshot_file f;
    char err[256] = "";
    cr_assert(snapshot_file_parse(text, len, &f, err, sizeof err), "%s", err);
    cr_expect_eq(f.count, 2);
    const struct snapshot_entry *a = snapshot_file_find(&f, "alice", 5), *c = snapshot_file_find(&f, "carol", 5);
    cr_assert(a && c);
    cr_expect(a->used == 5310 && a->spend == 2750000 && !a->no_tokens);
    cr_expect(c->used == 0 && c->spend == 12 && c->no_tokens);
    size_t len2 = 0;
    char *again = snapshot_file_format(f.day, f.entries, f.count, &len2);
    cr_expect(again && len2 == len && memcmp(again, text, len) == 0, "not the same bytes:\n%.*s", (int)len2, again);
    free(again);
    snapshot_file_free(&f);
    free(text);
}

Test(snapshot_file, spend_lines_in_any_order_merge_with_the_key_line)
{
    char text[512], err[256] = "";
    size_t len = sign(text, sizeof text, "aigw-state 2\nday 7\nspend bob 9\nkey alice 3\nkey bob 4\n");
    struct snapshot_file f;
    cr_assert(snapshot_file_parse(text, len, &f, err, sizeof err), "%s", err);
    cr_expect_eq(f.count, 2);
    const struct snapshot_entry *b = snapshot_file_find(&f, "bob", 3), *a = snapshot_file_find(&f, "alice", 5);
    cr_assert(a && b);
    cr_expect(b->used == 4 && b->spend == 9 && !b->no_tokens);
    cr_expect(a->used == 3 && a->spend == 0);
    snapshot_file_free(&f);
}
