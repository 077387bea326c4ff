/* The snapshot's text: see snapshot_file.h.
 *
 * Version 1 is text, one record a line, each line ending in "\n":
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
 * or malformed line, a repeated NAME) refuses the whole file.
 *
 * Version 2 adds "spend NAME MICRO_USD" lines (the day's spend cap use, a
 * decimal in [1, SNAPSHOT_MAX_USED]), in any order among the key lines, each
 * NAME at most once as a spend line; a NAME may have a key line, a spend line
 * or both. A reader accepts every version up to its own with the records each
 * of them defines: a version-1 file is a file without spend lines and keeps
 * loading, and a spend line in it is refused. The writer writes the oldest
 * version that holds what it writes (1 when nothing was spent), so an older
 * aigw still reads it; it refuses a newer file by its version ("written by a
 * newer aigw") rather than misread it. */
#include "cluster/snapshot_file.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/keys.h"
#include "util/hash.h"
#include "util/outbuf.h"

#define SNAPSHOT_MAGIC "aigw-state "
/* "sum " + 16 hex digits + "\n" */
#define SUM_LINE_LEN 21

/* ---- formatting ---- */

static void put_sum_line(struct outbuf *o)
{
    static const char hex[] = "0123456789abcdef";
    /* only once the body is stored: a measuring pass has nothing to sum */
    uint64_t sum = outbuf_overflowed(o) ? 0 : hash_checksum64(o->buf, o->len);
    char line[SUM_LINE_LEN];
    memcpy(line, "sum ", 4);
    for (int i = 0; i < 16; i++)
        line[4 + i] = hex[(sum >> (60 - 4 * i)) & 0xf];
    line[20] = '\n';
    outbuf_put(o, line, sizeof line);
}

static int64_t clamp_used(int64_t v)
{
    return v < 0 ? 0 : v > SNAPSHOT_MAX_USED ? SNAPSHOT_MAX_USED : v;
}

static void put_record(struct outbuf *o, const char *kind, const struct snapshot_entry *e, int64_t value)
{
    outbuf_str(o, kind);
    outbuf_char(o, ' ');
    outbuf_put(o, e->name, e->name_len);
    outbuf_char(o, ' ');
    outbuf_i64(o, clamp_used(value));
    outbuf_char(o, '\n');
}

static void put_text(struct outbuf *o, int64_t day, const struct snapshot_entry *entries, size_t count)
{
    bool spent = false;
    for (size_t i = 0; i < count && !spent; i++)
        spent = entries[i].spend > 0;
    OUTBUF_LIT(o, SNAPSHOT_MAGIC);
    outbuf_u64(o, spent ? 2 : 1);
    OUTBUF_LIT(o, "\nday ");
    outbuf_i64(o, day);
    outbuf_char(o, '\n');
    for (size_t i = 0; i < count; i++) {
        if (!entries[i].no_tokens || entries[i].spend <= 0)
            put_record(o, "key", &entries[i], entries[i].used);
        if (entries[i].spend > 0)
            put_record(o, "spend", &entries[i], entries[i].spend);
    }
    put_sum_line(o);
}

char *snapshot_file_format(int64_t day, const struct snapshot_entry *entries, size_t count, size_t *len_out)
{
    /* measured first, so no name length or entry count can overflow a guess */
    struct outbuf measure = outbuf_make(NULL, 0);
    put_text(&measure, day, entries, count);
    char *buf = malloc(measure.len ? measure.len : 1);
    if (!buf)
        return NULL;
    struct outbuf o = outbuf_make(buf, measure.len);
    put_text(&o, day, entries, count);
    *len_out = o.len;
    return buf;
}

/* ---- parsing ---- */

static bool refuse(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool refuse(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return false;
}

/* A decimal in [0, max], no sign, no leading zero (but "0"). */
static bool parse_decimal(const char *p, size_t len, int64_t max, int64_t *out)
{
    if (len == 0 || (p[0] == '0' && len > 1))
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        int digit = p[i] - '0';
        /* checked before it happens: 19 digits can exceed INT64_MAX, and a
         * wrapped value would pass as a negative version or use */
        if (v > (max - digit) / 10)
            return false;
        v = v * 10 + digit;
    }
    *out = v;
    return true;
}

static int entry_cmp(const void *a, const void *b)
{
    const struct snapshot_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = n ? memcmp(x->name, y->name, n) : 0;
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* While parsing, each line is an entry of its own: a key line with no_tokens
 * false, a spend line with no_tokens true. By NAME, then key lines first. */
static int record_cmp(const void *a, const void *b)
{
    const struct snapshot_entry *x = a, *y = b;
    int c = entry_cmp(a, b);
    return c ? c : (int)x->no_tokens - (int)y->no_tokens;
}

/* The line starting at p (end: the text's end): its length without "\n". */
static size_t line_len(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return nl ? (size_t)(nl - p) : (size_t)(end - p);
}

bool snapshot_file_parse(const char *text, size_t len, struct snapshot_file *out, char *err, size_t errlen)
{
    *out = (struct snapshot_file){ 0 };
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

    /* every line of the body but the first two is at most one entry */
    size_t lines = 0;
    for (const char *p = text; p < text + body; p++)
        lines += *p == '\n';
    struct snapshot_entry *entries = malloc((lines ? lines : 1) * sizeof *entries);
    if (!entries)
        return refuse(err, errlen, "out of memory");
    size_t count = 0;
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
            struct snapshot_entry *e = &entries[count];
            *e = (struct snapshot_entry){ 0 };
            if (!sp2 || !key_name_valid(name, (size_t)(sp2 - name)))
                ok = refuse(err, errlen, "line %u: not \"key NAME TOKENS_USED\"", lineno);
            else if (!parse_decimal(sp2 + 1, (size_t)(p + n - sp2 - 1), SNAPSHOT_MAX_USED, &e->used))
                ok = refuse(err, errlen, "line %u: the tokens used are not a number in [0, %" PRId64 "]", lineno,
                            SNAPSHOT_MAX_USED);
            e->name = name;
            e->name_len = (size_t)(sp2 ? sp2 - name : 0);
            count++;
        } else if (version >= 2 && sp && (size_t)(sp - p) == 5 && memcmp(p, "spend", 5) == 0) {
            const char *name = sp + 1;
            const char *sp2 = memchr(name, ' ', n - 6);
            struct snapshot_entry *e = &entries[count];
            *e = (struct snapshot_entry){ .no_tokens = true };
            if (!sp2 || !key_name_valid(name, (size_t)(sp2 - name)))
                ok = refuse(err, errlen, "line %u: not \"spend NAME MICRO_USD\"", lineno);
            else if (!parse_decimal(sp2 + 1, (size_t)(p + n - sp2 - 1), SNAPSHOT_MAX_USED, &e->spend) ||
                     e->spend == 0)
                ok = refuse(err, errlen, "line %u: the micro-USD spent are not a number in [1, %" PRId64 "]",
                            lineno, SNAPSHOT_MAX_USED);
            e->name = name;
            e->name_len = (size_t)(sp2 ? sp2 - name : 0);
            count++;
        } else {
            ok = refuse(err, errlen, "line %u: not a record this version defines", lineno);
        }
        p += n + 1;
    }
    if (ok && day < 0)
        ok = refuse(err, errlen, "no \"day\" line");
    if (ok && count > 1) {
        qsort(entries, count, sizeof *entries, record_cmp);
        for (size_t i = 1; ok && i < count; i++)
            if (record_cmp(&entries[i - 1], &entries[i]) == 0)
                ok = refuse(err, errlen, "%s %.*s appears more than once", entries[i].no_tokens ? "spend" : "key",
                            (int)entries[i].name_len, entries[i].name);
    }
    if (ok) {
        /* a NAME's key line and spend line make one entry */
        size_t merged = 0;
        for (size_t i = 0; i < count; i++) {
            if (merged && entries[i].no_tokens && entry_cmp(&entries[merged - 1], &entries[i]) == 0)
                entries[merged - 1].spend = entries[i].spend;
            else
                entries[merged++] = entries[i];
        }
        count = merged;
    }
    if (!ok) {
        free(entries);
        return false;
    }
    *out = (struct snapshot_file){ .day = day, .entries = entries, .count = count };
    return true;
}

const struct snapshot_entry *snapshot_file_find(const struct snapshot_file *f, const char *name, size_t len)
{
    struct snapshot_entry probe = { .name = name, .name_len = len };
    return f->count ? bsearch(&probe, f->entries, f->count, sizeof *f->entries, entry_cmp) : NULL;
}

void snapshot_file_free(struct snapshot_file *f)
{
    free(f->entries);
    *f = (struct snapshot_file){ 0 };
}
