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
 * Growing it (daily spend, a later issue): new kinds of records, such as
 * "spend NAME MICRO_USD", come with a new version number, and a reader accepts
 * every version up to its own with the records each of them defines. A
 * version-1 file is then a file without spend lines and keeps loading; an
 * older aigw refuses a newer file by its version ("written by a newer aigw")
 * rather than misread it. */
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

static void put_text(struct outbuf *o, int64_t day, const struct snapshot_entry *entries, size_t count)
{
    OUTBUF_LIT(o, SNAPSHOT_MAGIC);
    outbuf_u64(o, SNAPSHOT_VERSION);
    OUTBUF_LIT(o, "\nday ");
    outbuf_i64(o, day);
    outbuf_char(o, '\n');
    for (size_t i = 0; i < count; i++) {
        int64_t used = entries[i].used;
        OUTBUF_LIT(o, "key ");
        outbuf_put(o, entries[i].name, entries[i].name_len);
        outbuf_char(o, ' ');
        outbuf_i64(o, used < 0 ? 0 : used > SNAPSHOT_MAX_USED ? SNAPSHOT_MAX_USED : used);
        outbuf_char(o, '\n');
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
            if (!sp2 || !key_name_valid(name, (size_t)(sp2 - name)))
                ok = refuse(err, errlen, "line %u: not \"key NAME TOKENS_USED\"", lineno);
            else if (!parse_decimal(sp2 + 1, (size_t)(p + n - sp2 - 1), SNAPSHOT_MAX_USED, &e->used))
                ok = refuse(err, errlen, "line %u: the tokens used are not a number in [0, %" PRId64 "]", lineno,
                            SNAPSHOT_MAX_USED);
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
        qsort(entries, count, sizeof *entries, entry_cmp);
        for (size_t i = 1; ok && i < count; i++)
            if (entry_cmp(&entries[i - 1], &entries[i]) == 0)
                ok = refuse(err, errlen, "key %.*s appears more than once", (int)entries[i].name_len,
                            entries[i].name);
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
