#include <criterion/criterion.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "proto/openai.h"
#include "util/clock.h"
#include "util/ct.h"
#include "util/hash.h"
#include "util/json_escape.h"
#include "util/outbuf.h"
#include "util/utf8.h"

/* ---------------- utf8 ---------------- */

static size_t u8len(const char *s, size_t n) { return utf8_seq_len(s, n); }
#define U8(lit) u8len((lit), sizeof(lit) - 1)

Test(utf8, the_bounds_of_each_length_are_valid)
{
    cr_expect_eq(U8("A"), 1);
    cr_expect_eq(U8("\x7f"), 1);
    cr_expect_eq(U8("\xc2\x80"), 2);            /* U+0080 */
    cr_expect_eq(U8("\xdf\xbf"), 2);            /* U+07FF */
    cr_expect_eq(U8("\xe0\xa0\x80"), 3);        /* U+0800 */
    cr_expect_eq(U8("\xed\x9f\xbf"), 3);        /* U+D7FF, just below the surrogates */
    cr_expect_eq(U8("\xee\x80\x80"), 3);        /* U+E000, just above them */
    cr_expect_eq(U8("\xef\xbf\xbf"), 3);        /* U+FFFF */
    cr_expect_eq(U8("\xf0\x90\x80\x80"), 4);    /* U+10000 */
    cr_expect_eq(U8("\xf4\x8f\xbf\xbf"), 4);    /* U+10FFFF */
    /* only the first sequence counts */
    cr_expect_eq(U8("\xc3\xa9\xc3\xa9"), 2);
}

Test(utf8, overlongs_surrogates_and_past_u10ffff_are_not)
{
    cr_expect_eq(U8("\xc0\x80"), 0);            /* overlong NUL */
    cr_expect_eq(U8("\xc0\xaf"), 0);            /* overlong '/' */
    cr_expect_eq(U8("\xc1\xbf"), 0);
    cr_expect_eq(U8("\xe0\x80\x80"), 0);
    cr_expect_eq(U8("\xe0\x9f\xbf"), 0);        /* overlong U+07FF */
    cr_expect_eq(U8("\xf0\x80\x80\x80"), 0);
    cr_expect_eq(U8("\xf0\x8f\xbf\xbf"), 0);    /* overlong U+FFFF */
    cr_expect_eq(U8("\xed\xa0\x80"), 0);        /* U+D800 */
    cr_expect_eq(U8("\xed\xbf\xbf"), 0);        /* U+DFFF */
    cr_expect_eq(U8("\xf4\x90\x80\x80"), 0);    /* U+110000 */
    cr_expect_eq(U8("\xf5\x80\x80\x80"), 0);
    cr_expect_eq(U8("\xff"), 0);
    cr_expect_eq(U8("\x80"), 0);                /* a continuation byte alone */
    cr_expect_eq(U8("\xbf"), 0);
}

Test(utf8, truncated_sequences_are_not_and_nothing_past_n_is_read)
{
    cr_expect_eq(U8("\xc3"), 0);
    cr_expect_eq(U8("\xe2\x82"), 0);
    cr_expect_eq(U8("\xf0\x9f\x98"), 0);
    cr_expect_eq(U8("\xe2\x41\x42"), 0);        /* cut short by ASCII */
    cr_expect_eq(U8("\xf0\x9f\x98\x41"), 0);
    /* the bytes are there, but past n */
    cr_expect_eq(u8len("\xc3\xa9", 1), 0);
    cr_expect_eq(u8len("\xe2\x82\xac", 2), 0);
    cr_expect_eq(u8len("\xf0\x9f\x98\x80", 3), 0);
}

/* The definition, spelled differently: decode the code point, then check it. */
static size_t reference_len(const uint8_t *s)
{
    if (s[0] < 0x80)
        return 1;
    size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (n == 0 || s[0] >= 0xf8)
        return 0;
    uint32_t cp = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min_of[5] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min_of[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

Test(utf8, agrees_with_the_definition_on_every_three_byte_start)
{
    static const uint8_t fourth[] = { 0x80, 0xbf, 0x41, 0xc0 };
    uint8_t s[4];
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++)
                for (unsigned d = 0; d < sizeof fourth; d++) {
                    s[0] = (uint8_t)a;
                    s[1] = (uint8_t)b;
                    s[2] = (uint8_t)c;
                    s[3] = fourth[d];
                    size_t got = utf8_seq_len(s, 4), want = reference_len(s);
                    if (got != want)
                        cr_assert_fail("%02x %02x %02x %02x: %zu, want %zu", a, b, c, fourth[d], got, want);
                }
}

/* ---------------- json_escape ---------------- */

static char esc_out[4096];

static const char *escape_n(const char *s, size_t n, size_t max_out, enum json_escape_style style,
                            bool *whole)
{
    struct outbuf o = outbuf_make(esc_out, sizeof esc_out - 1);
    bool w = json_escape(&o, s, n, max_out, style);
    cr_assert(!outbuf_overflowed(&o));
    esc_out[o.len] = '\0';
    if (whole)
        *whole = w;
    return esc_out;
}

#define ESC(lit, style) escape_n((lit), sizeof(lit) - 1, SIZE_MAX, (style), NULL)

Test(json_escape, quotes_backslashes_and_control_bytes)
{
    cr_expect_str_eq(ESC("plain text / ok", JSON_ESCAPE_SHORT_FORMS), "plain text / ok");
    cr_expect_str_eq(ESC("a\"b\\c", JSON_ESCAPE_SHORT_FORMS), "a\\\"b\\\\c");
    cr_expect_str_eq(ESC("a\"b\\c", JSON_ESCAPE_ALL_CONTROLS), "a\\\"b\\\\c");
    cr_expect_str_eq(ESC("\n\r\t\b\f", JSON_ESCAPE_SHORT_FORMS), "\\n\\r\\t\\b\\f");
    cr_expect_str_eq(ESC("\n\r\t\b\f", JSON_ESCAPE_ALL_CONTROLS),
                     "\\u000a\\u000d\\u0009\\u0008\\u000c");
    cr_expect_str_eq(ESC("\x01\x1f", JSON_ESCAPE_SHORT_FORMS), "\\u0001\\u001f");
    cr_expect_str_eq(ESC("\x01\x1f", JSON_ESCAPE_ALL_CONTROLS), "\\u0001\\u001f");
    cr_expect_str_eq(ESC("a\0b", JSON_ESCAPE_SHORT_FORMS), "a\\u0000b");
    /* DEL is valid JSON as it is; the log style spells it out */
    cr_expect_str_eq(ESC("\x7f", JSON_ESCAPE_SHORT_FORMS), "\x7f");
    cr_expect_str_eq(ESC("\x7f", JSON_ESCAPE_ALL_CONTROLS), "\\u007f");
    cr_expect_str_eq(ESC("", JSON_ESCAPE_SHORT_FORMS), "");
}

Test(json_escape, utf8_passes_and_each_bad_byte_is_a_replacement)
{
    const char *good = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
    cr_expect_str_eq(escape_n(good, strlen(good), SIZE_MAX, JSON_ESCAPE_ALL_CONTROLS, NULL), good);
    cr_expect_str_eq(ESC("\xff", JSON_ESCAPE_SHORT_FORMS), "\\ufffd");
    cr_expect_str_eq(ESC("\xc0\xaf", JSON_ESCAPE_SHORT_FORMS), "\\ufffd\\ufffd");          /* overlong */
    cr_expect_str_eq(ESC("\xed\xa0\x80", JSON_ESCAPE_SHORT_FORMS), "\\ufffd\\ufffd\\ufffd"); /* surrogate */
    cr_expect_str_eq(ESC("\xf4\x90\x80\x80", JSON_ESCAPE_SHORT_FORMS),
                     "\\ufffd\\ufffd\\ufffd\\ufffd");                                      /* > U+10FFFF */
    cr_expect_str_eq(ESC("x\xe2\x82", JSON_ESCAPE_SHORT_FORMS), "x\\ufffd\\ufffd");        /* cut short */
    cr_expect_str_eq(ESC("\xe2\x82" "A", JSON_ESCAPE_SHORT_FORMS), "\\ufffd\\ufffdA");
}

Test(json_escape, every_byte_value_gives_valid_json)
{
    char raw[256];
    for (int i = 0; i < 256; i++)
        raw[i] = (char)i;
    for (int style = JSON_ESCAPE_SHORT_FORMS; style <= JSON_ESCAPE_ALL_CONTROLS; style++) {
        static char body[4096];
        struct outbuf o = outbuf_make(body, sizeof body);
        OUTBUF_LIT(&o, "{\"model\":\"m\",\"prompt\":\"");
        cr_assert(json_escape(&o, raw, sizeof raw, SIZE_MAX, (enum json_escape_style)style));
        OUTBUF_LIT(&o, "\"}");
        cr_assert(!outbuf_overflowed(&o));
        struct openai_request req;
        const char *why = NULL;
        cr_expect_eq(openai_parse_request(body, o.len, &req, &why), OPENAI_OK, "style %d: %s",
                     style, why ? why : "");
        /* 128 ASCII bytes decode to one byte each, 128 bad ones to U+FFFD (3 bytes) */
        cr_expect_eq(req.prompt_bytes, 128 + 128 * 3, "style %d", style);
    }
}

Test(json_escape, max_out_cuts_between_characters_and_says_so)
{
    static const struct {
        const char *in;
        size_t max_out;
        const char *want;
        bool whole;
    } cases[] = {
        { "abcdef", 6, "abcdef", true },                    /* an exact fit is whole */
        { "abcdefg", 6, "abcdef", false },                  /* ASCII is cut anywhere */
        { "ab\x01", 7, "ab", false },                       /* an escape is not split */
        { "ab\x01", 8, "ab\\u0001", true },
        { "a\xe2\x82\xac", 3, "a", false },                 /* nor a character */
        { "a\xe2\x82\xac", 4, "a\xe2\x82\xac", true },
        { "abc", 0, "", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool whole;
        const char *got = escape_n(cases[i].in, strlen(cases[i].in), cases[i].max_out,
                                   JSON_ESCAPE_SHORT_FORMS, &whole);
        cr_expect_str_eq(got, cases[i].want, "case %zu", i);
        cr_expect_eq(whole, cases[i].whole, "case %zu", i);
    }
}

/* ---------------- outbuf ---------------- */

Test(outbuf, exact_fit_and_overflow_by_one)
{
    char buf[8];
    memset(buf, '#', sizeof buf);
    struct outbuf o = outbuf_make(buf, 5);
    OUTBUF_LIT(&o, "hel");
    outbuf_str(&o, "lo");
    cr_expect_not(outbuf_overflowed(&o));
    cr_expect_eq(outbuf_done(&o), 5);
    cr_expect_eq(memcmp(buf, "hello#", 6), 0, "nothing past cap is written");

    o = outbuf_make(buf, 5);
    OUTBUF_LIT(&o, "hello!");
    cr_expect(outbuf_overflowed(&o));
    cr_expect_eq(outbuf_done(&o), 0);
    cr_expect_eq(o.len, 6, "counts what did not fit, as snprintf does");
    cr_expect_eq(memcmp(buf, "hello#", 6), 0);
}

Test(outbuf, stores_a_prefix_and_nothing_after_an_overflow)
{
    char buf[9];
    memset(buf, '#', sizeof buf);
    struct outbuf o = outbuf_make(buf, 8);
    OUTBUF_LIT(&o, "abc");
    OUTBUF_LIT(&o, "defghi");
    OUTBUF_LIT(&o, "x");
    outbuf_char(&o, 'y');
    cr_expect_eq(o.len, 11);
    cr_expect_eq(memcmp(buf, "abcdefgh#", 9), 0);
    cr_expect_null(outbuf_reserve(&o, 0), "no room once overflowed");
    cr_expect_eq(outbuf_done(&o), 0);
}

Test(outbuf, counting_with_no_buffer_measures)
{
    struct outbuf o = outbuf_make(NULL, 0);
    OUTBUF_LIT(&o, "Content-Length: ");
    outbuf_u64(&o, 1234);
    cr_expect_eq(o.len, 20);
    cr_expect(outbuf_overflowed(&o));
    struct outbuf empty = outbuf_make(NULL, 0);
    OUTBUF_LIT(&empty, "");
    cr_expect_not(outbuf_overflowed(&empty));
}

Test(outbuf, numbers_at_their_limits)
{
    char buf[32];
    struct outbuf o = outbuf_make(buf, 20);
    outbuf_u64(&o, UINT64_MAX);
    cr_expect_eq(outbuf_done(&o), 20);
    cr_expect_eq(memcmp(buf, "18446744073709551615", 20), 0);

    o = outbuf_make(buf, 19);
    outbuf_u64(&o, UINT64_MAX);
    cr_expect(outbuf_overflowed(&o), "one digit short");

    o = outbuf_make(buf, sizeof buf);
    outbuf_u64(&o, 0);
    OUTBUF_LIT(&o, " ");
    outbuf_i64(&o, INT64_MIN);
    OUTBUF_LIT(&o, " ");
    outbuf_i64(&o, -1);
    outbuf_char(&o, '\0');
    cr_expect_str_eq(buf, "0 -9223372036854775808 -1");
}

Test(outbuf, reserve_hands_out_room_or_nothing)
{
    char buf[6];
    struct outbuf o = outbuf_make(buf, 6);
    char *p = outbuf_reserve(&o, 4);
    cr_assert_eq(p, buf);
    memcpy(p, "abcd", 4);
    cr_expect_null(outbuf_reserve(&o, 3));
    cr_expect(outbuf_overflowed(&o));
    cr_expect_eq(o.len, 7);
}

/* ---------------- hash ---------------- */

Test(hash, is_xxh3_so_values_hold_across_processes)
{
    /* XXH3_64bits reference values (xxHash 0.8) */
    cr_expect_eq(hash_bytes("", 0), UINT64_C(0x2d06800538d394c2));
    cr_expect_eq(hash_bytes("abc", 3), UINT64_C(0x78af5f94892f3950));
    cr_expect_eq(hash_bytes_seeded("abc", 3, 1), UINT64_C(0x6b4467b443c76228));
    cr_expect_eq(hash_str("abc"), hash_bytes("abc", 3));
}

Test(hash, chaining_by_seed_keeps_piece_boundaries)
{
    uint64_t ab_c = hash_bytes_seeded("c", 1, hash_bytes_seeded("ab", 2, 0));
    uint64_t a_bc = hash_bytes_seeded("bc", 2, hash_bytes_seeded("a", 1, 0));
    cr_expect_neq(ab_c, a_bc);
    cr_expect_eq(ab_c, hash_bytes_seeded("c", 1, hash_bytes_seeded("ab", 2, 0)));
    cr_expect_neq(hash_bytes_seeded("abc", 3, 1), hash_bytes_seeded("abc", 3, 2));
}

/* ---------------- clock ---------------- */

Test(clock, units_agree_and_time_goes_forward)
{
    uint64_t ns0 = clock_mono_ns();
    uint64_t us = clock_mono_us(), ms = clock_mono_ms();
    uint64_t ns1 = clock_mono_ns();
    cr_expect_geq(ns1, ns0);
    cr_expect_geq(us, ns0 / 1000);
    cr_expect_leq(us, ns1 / 1000);
    cr_expect_geq(ms, ns0 / 1000000);
    cr_expect_leq(ms, ns1 / 1000000);

    struct timespec later = clock_mono_after(1500000000u);
    uint64_t at = (uint64_t)later.tv_sec * 1000000000u + (uint64_t)later.tv_nsec;
    cr_expect_geq(at, ns1 + 1500000000u);
    cr_expect_lt(later.tv_nsec, 1000000000L);

    uint64_t wall = clock_wall_us();
    uint64_t now_s = (uint64_t)time(NULL);
    cr_expect(wall / 1000000 + 1 >= now_s && wall / 1000000 <= now_s + 1, "wall clock in seconds");
}

/* ---------------- ct_equal ---------------- */

Test(ct_equal, only_the_same_bytes_and_length_are_equal)
{
    const char *secret = "s3cret-token";
    size_t n = strlen(secret);
    cr_assert(ct_equal("s3cret-token", n, secret, n));
    cr_assert(!ct_equal("s3cret-tokeN", n, secret, n));
    cr_assert(!ct_equal("S3cret-token", n, secret, n));
    cr_assert(!ct_equal("s3cret-toke", n - 1, secret, n), "a prefix");
    cr_assert(!ct_equal("s3cret-token!", n + 1, secret, n), "a longer guess");
    cr_assert(!ct_equal("", 0, secret, n));
    cr_assert(ct_equal("", 0, "", 0));
    /* a guess the secret's bytes followed by NULs is not the secret */
    cr_assert(!ct_equal("s3cret-token\0\0", n + 2, secret, n));
}
