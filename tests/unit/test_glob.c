#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/glob.h"

static bool globt_one(const char *pat, const char *name)
{
    return glob_match(pat, strlen(pat), name, strlen(name));
}

static struct glob_list *globt_compile(const char *text)
{
    struct glob_list *l = NULL;
    const char *why = NULL;
    cr_assert_eq(glob_list_compile(text, &l, &why), 0, "'%s': %s", text, why ? why : "");
    return l;
}

static bool globt_list(const struct glob_list *l, const char *name)
{
    return glob_list_match(l, name, strlen(name));
}

Test(glob, match_table)
{
    static const struct {
        const char *pat, *name;
        bool match;
    } cases[] = {
        { "llama-3.1-8b*", "llama-3.1-8b", true },
        { "llama-3.1-8b*", "llama-3.1-8b-instruct", true },
        { "llama-3.1-8b*", "llama-3.1-70b", false },
        { "llama-3.1-8b*", "Llama-3.1-8b", false },      /* case-sensitive */
        { "qwen*", "qwen", true },
        { "qwen*", "qwe", false },
        { "qwen", "qwen", true },
        { "qwen", "qwen2", false },
        { "qwen", "", false },
        { "*", "", true },
        { "*", "anything at all", true },
        { "**", "", true },
        { "?", "", false },
        { "?", "a", true },
        { "?", "ab", false },
        { "a?c", "abc", true },
        { "a?c", "ac", false },
        { "*b", "b", true },
        { "*b", "ab", true },
        { "*b", "ba", false },
        { "a*b*c", "abc", true },
        { "a*b*c", "aXXbYYc", true },
        { "a*b*c", "acb", false },
        { "a*b*c", "abcb", false },
        { "a*b*c", "abcbc", true },
        { "*a*", "xyz", false },
        { "*a*", "xaz", true },
        { "a*a", "a", false },              /* head and tail may not overlap */
        { "a*a", "aa", true },
        { "ab*ba", "aba", false },
        { "ab*ba", "abba", true },
        { "*?", "", false },
        { "*?", "x", true },
        { "?*?", "x", false },
        { "?*?", "xy", true },
        { "*x?z*", "..xyz..", true },
        { "*x?z*", "..xz..", false },
        { "[a]", "[a]", true },             /* only * and ? are special */
        { "[a]", "a", false },
        { "a\\*", "a\\bc", true },
        { "gpt-4o-?\?\?\?-?\?-?\?", "gpt-4o-2024-08-06", true },
        { "gpt-4o-?\?\?\?-?\?-?\?", "gpt-4o-mini", false },
        { "mistral*instruct*v0.?", "mistral-7b-instruct-v0.3", true },
        { "mistral*instruct*v0.?", "mistral-7b-instruct-v0.31", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_eq(globt_one(cases[i].pat, cases[i].name), cases[i].match,
                     "'%s' vs '%s' should be %s", cases[i].pat, cases[i].name,
                     cases[i].match ? "a match" : "no match");
}

Test(glob, names_need_not_be_terminated)
{
    const char buf[] = "qwen2-7bXXXX";
    struct glob_list *l = globt_compile("qwen2-7b, llama*b");
    cr_expect(glob_list_match(l, buf, 8));
    cr_expect_not(glob_list_match(l, buf, 9), "the byte after the name is not part of it");
    cr_expect(glob_list_match(l, "llama-8bX", 8));
    cr_expect_not(glob_list_match(l, "llama-8bX", 9));
    cr_expect_not(glob_list_match(l, NULL, 0));
    glob_list_free(l);
}

Test(glob, list_compile_and_match)
{
    struct glob_list *l = globt_compile("  llama-3.1-8b* ,qwen*,\tgpt-4o ,  ?x  ");
    cr_assert_eq(glob_list_count(l), 4);
    cr_expect_str_eq(glob_list_pattern(l, 0), "llama-3.1-8b*");
    cr_expect_str_eq(glob_list_pattern(l, 1), "qwen*");
    cr_expect_str_eq(glob_list_pattern(l, 2), "gpt-4o");
    cr_expect_str_eq(glob_list_pattern(l, 3), "?x");
    cr_expect_null(glob_list_pattern(l, 4));
    cr_expect(glob_list_is_literal(l, 2));
    cr_expect_not(glob_list_is_literal(l, 0));
    cr_expect_not(glob_list_is_literal(l, 3));

    cr_expect(globt_list(l, "llama-3.1-8b-instruct"));
    cr_expect(globt_list(l, "qwen2.5-72b"));
    cr_expect(globt_list(l, "gpt-4o"));
    cr_expect(globt_list(l, "ax"));
    cr_expect_not(globt_list(l, "gpt-4o-mini"));
    cr_expect_not(globt_list(l, "x"));
    cr_expect_not(globt_list(l, ""));
    cr_expect_not(globt_list(l, " qwen"));
    glob_list_free(l);
}

Test(glob, empty_text_is_null_and_null_matches_anything)
{
    struct glob_list *l = (struct glob_list *)1;
    const char *why = NULL;
    cr_assert_eq(glob_list_compile("", &l, &why), 0);
    cr_expect_null(l);
    l = (struct glob_list *)1;
    cr_assert_eq(glob_list_compile(" \t ", &l, &why), 0);
    cr_expect_null(l);
    cr_expect(glob_list_match(NULL, "any-model", 9));
    cr_expect(glob_list_match(NULL, "", 0));
    cr_expect_eq(glob_list_count(NULL), 0);
    glob_list_free(NULL);
}

Test(glob, compile_errors)
{
    char long_pat[GLOB_PATTERN_MAX + 2];
    memset(long_pat, 'a', sizeof long_pat - 1);
    long_pat[sizeof long_pat - 1] = '\0';
    char max_pat[GLOB_PATTERN_MAX + 1];
    memset(max_pat, 'a', sizeof max_pat - 1);
    max_pat[sizeof max_pat - 1] = '\0';

    static const struct {
        const char *text, *why;
    } cases[] = {
        { ",a", "empty item in model list" },
        { "a,", "empty item in model list" },
        { "a, ,b", "empty item in model list" },
        { "a,,b", "empty item in model list" },
        { ",", "empty item in model list" },
        { "a\x01", "control character in model pattern" },
        { "a\x7f" "b", "control character in model pattern" },
        { "a\rb", "control character in model pattern" },
        { "qwen* llama*", "space inside a model pattern (missing comma?)" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct glob_list *l = NULL;
        const char *why = NULL;
        cr_expect_eq(glob_list_compile(cases[i].text, &l, &why), -1, "'%s' should fail", cases[i].text);
        cr_expect_null(l);
        cr_expect_str_eq(why ? why : "", cases[i].why, "'%s'", cases[i].text);
    }

    struct glob_list *l = NULL;
    const char *why = NULL;
    cr_expect_eq(glob_list_compile(long_pat, &l, &why), -1);
    cr_expect_str_eq(why ? why : "", "model pattern longer than 256 bytes");
    cr_expect_eq(glob_list_compile("\x01", &l, &why), -1, "a control byte is not blank");

    l = globt_compile(max_pat);
    cr_expect(globt_list(l, max_pat), "256 bytes is allowed");
    glob_list_free(l);

    /* a NUL inside counted text is a control character, not an end */
    cr_expect_eq(glob_list_compile_n("a\0b", 3, &l, &why), -1);
}

Test(glob, many_stars_stay_fast)
{
    /* the classic exponential case for recursive matchers */
    size_t n = 100000;
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, 'a', n);
    s[n] = '\0';

    char pat[GLOB_PATTERN_MAX + 1];
    size_t p = 0;
    while (p + 2 < GLOB_PATTERN_MAX - 2) {
        pat[p++] = 'a';
        pat[p++] = '*';
    }
    pat[p++] = 'b';
    pat[p] = '\0';
    struct glob_list *l = globt_compile(pat);
    struct glob_list *l2 = globt_compile("a*a*a*a*b*a");   /* the tail does not decide it */
    char near[GLOB_PATTERN_MAX + 1];                         /* a long near-miss middle */
    near[0] = '*';
    memset(near + 1, 'a', GLOB_PATTERN_MAX - 3);
    near[GLOB_PATTERN_MAX - 2] = 'b';
    near[GLOB_PATTERN_MAX - 1] = '*';
    near[GLOB_PATTERN_MAX] = '\0';
    struct glob_list *l3 = globt_compile(near);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cr_expect_not(globt_list(l, s));
    cr_expect_not(globt_list(l2, s));
    cr_expect_not(globt_list(l3, s));
    s[n - 1] = 'b';
    cr_expect(globt_list(l, s));
    cr_expect_not(globt_list(l2, s));
    cr_expect(globt_list(l3, s));
    s[n - 1] = 'a';
    s[100] = 'b';
    cr_expect(globt_list(l2, s));
    cr_expect_not(globt_list(l3, s), "the only 'b' has too few 'a's before it");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    cr_expect_lt(ms, 2000.0, "matching took %.1f ms", ms);

    glob_list_free(l);
    glob_list_free(l2);
    glob_list_free(l3);
    free(s);
}

/* the textbook recursive definition, exponential but fine for short inputs */
static bool globt_reference(const char *p, size_t pn, const char *s, size_t sn)
{
    if (pn == 0)
        return sn == 0;
    if (p[0] == '*')
        return globt_reference(p + 1, pn - 1, s, sn) || (sn && globt_reference(p, pn, s + 1, sn - 1));
    return sn && (p[0] == '?' || p[0] == s[0]) && globt_reference(p + 1, pn - 1, s + 1, sn - 1);
}

Test(glob, agrees_with_reference)
{
    static const char pat_bytes[] = "ab*?";
    uint32_t x = 12345;
    for (int round = 0; round < 200000; round++) {
        char pat[9], name[11];
        x = x * 1103515245u + 12345u;
        size_t pn = 1 + (x >> 16) % 8;
        x = x * 1103515245u + 12345u;
        size_t sn = (x >> 16) % 11;
        for (size_t i = 0; i < pn; i++) {
            x = x * 1103515245u + 12345u;
            pat[i] = pat_bytes[(x >> 16) % 4];
        }
        for (size_t i = 0; i < sn; i++) {
            x = x * 1103515245u + 12345u;
            name[i] = "ab"[(x >> 16) % 2];
        }
        pat[pn] = name[sn] = '\0';
        bool want = globt_reference(pat, pn, name, sn);
        cr_assert_eq(glob_match(pat, pn, name, sn), want, "'%s' vs '%s'", pat, name);
        struct glob_list *l = globt_compile(pat);
        cr_assert_eq(globt_list(l, name), want, "list '%s' vs '%s'", pat, name);
        glob_list_free(l);
    }
}
