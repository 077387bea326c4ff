#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/accesslog.h"
#include "core/metrics.h"

#define SL(s) ((struct slice){ (s), sizeof(s) - 1 })

static struct alog_entry typical_entry(void)
{
    return (struct alog_entry){
        .time_us = 1795299423123456ull,     /* 2026-11-21T22:17:03.123456Z */
        .client = SL("10.1.2.3:51234"),
        .method = SL("POST"),
        .target = SL("/v1/chat/completions"),
        .request_id = SL("abc-123"),
        .route = "chat",
        .pool = "gpu-a",
        .backend = "10.0.0.11:8000",
        .status = 200,
        .bytes_in = 512,
        .bytes_out = 2048,
        .duration_us = 1234,
        .first_byte_us = 567,
        .upstream_reused = true,
        .error = NULL,
    };
}

static const char typical_line[] =
    "{\"time\":\"2026-11-21T22:17:03.123456Z\",\"client\":\"10.1.2.3:51234\",\"method\":\"POST\","
    "\"target\":\"/v1/chat/completions\",\"status\":200,\"route\":\"chat\",\"pool\":\"gpu-a\","
    "\"backend\":\"10.0.0.11:8000\",\"request_id\":\"abc-123\",\"bytes_in\":512,\"bytes_out\":2048,"
    "\"duration_ms\":1.234,\"upstream_first_byte_ms\":0.567,\"upstream_reused\":true,"
    "\"queue_ms\":0.000,\"backends\":[],\"fallback\":false,\"termination\":null,\"error\":null}\n";

static char *format_entry(const struct alog_entry *e)
{
    static char buf[ALOG_LINE_MAX];
    size_t n = alog_format(buf, sizeof buf, e);
    cr_assert_gt(n, 0);
    cr_assert_eq(buf[n - 1], '\n');
    buf[n] = '\0';      /* never fills the whole buffer in these tests */
    return buf;
}

Test(accesslog, formats_a_typical_entry)
{
    struct alog_entry e = typical_entry();
    cr_assert_str_eq(format_entry(&e), typical_line);
}

Test(accesslog, formats_an_error_without_route_or_upstream)
{
    struct alog_entry e = typical_entry();
    e.time_us = 0;
    e.route = "";
    e.pool = "";
    e.backend = NULL;
    e.request_id = (struct slice){ NULL, 0 };
    e.status = 404;
    e.duration_us = 12345678;
    e.first_byte_us = -1;
    e.upstream_reused = false;
    e.error = "no route";
    cr_assert_str_eq(format_entry(&e),
        "{\"time\":\"1970-01-01T00:00:00.000000Z\",\"client\":\"10.1.2.3:51234\",\"method\":\"POST\","
        "\"target\":\"/v1/chat/completions\",\"status\":404,\"route\":\"\",\"pool\":\"\","
        "\"backend\":\"\",\"request_id\":\"\",\"bytes_in\":512,\"bytes_out\":2048,"
        "\"duration_ms\":12345.678,\"upstream_first_byte_ms\":null,\"upstream_reused\":false,"
        "\"queue_ms\":0.000,\"backends\":[],\"fallback\":false,\"termination\":null,"
        "\"error\":\"no route\"}\n");
}

Test(accesslog, escapes_hostile_strings)
{
    struct alog_entry e = typical_entry();
    e.target = SL("/a\"b\\c\nd\te\x01" "f\x7fg"
                  "\xc3\xa9"            /* é */
                  "\xe2\x82\xac"        /* € */
                  "\xf0\x9f\x98\x80"    /* U+1F600 */
                  "\xff"                /* never valid */
                  "\xc0\xaf"            /* overlong '/' */
                  "\xed\xa0\x80"        /* surrogate U+D800 */
                  "\xe2\x82");          /* cut short */
    e.method = SL("G\"ET\r");
    e.request_id = SL("id\0x");
    e.error = "bad \"thing\"\\";
    const char *line = format_entry(&e);
    cr_assert_not_null(strstr(line,
        "\"target\":\"/a\\\"b\\\\c\\u000ad\\u0009e\\u0001f\\u007fg\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
        "\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\","), "%s", line);
    cr_assert_not_null(strstr(line, "\"method\":\"G\\\"ET\\u000d\","), "%s", line);
    cr_assert_not_null(strstr(line, "\"request_id\":\"id\\u0000x\","), "%s", line);
    cr_assert_not_null(strstr(line, "\"error\":\"bad \\\"thing\\\"\\\\\"}\n"), "%s", line);
    /* one line: the only newline is the terminator */
    cr_assert_eq(strchr(line, '\n'), line + strlen(line) - 1);
}

Test(accesslog, cuts_long_fields_at_a_character_boundary)
{
    static char target[10000];
    memset(target, 'a', sizeof target);
    struct alog_entry e = typical_entry();
    e.target = (struct slice){ target, sizeof target };
    const char *line = format_entry(&e);
    char want[2048 + 32];
    memcpy(want, "\"target\":\"", 10);
    memset(want + 10, 'a', 2048);
    strcpy(want + 10 + 2048, "...\",\"status\":200,");
    cr_assert_not_null(strstr(line, want));

    /* escapes are not split: 341 whole "\u0001" (2046 bytes), then the marker */
    static char ctl[1000];
    memset(ctl, 1, sizeof ctl);
    e.target = (struct slice){ ctl, sizeof ctl };
    line = format_entry(&e);
    const char *start = strstr(line, "\"target\":\"") + 10;
    const char *end = strstr(start, "...\",\"status\"");
    cr_assert_not_null(end);
    cr_assert_eq(end - start, 341 * 6);
    for (const char *p = start; p < end; p += 6)
        cr_assert_eq(memcmp(p, "\\u0001", 6), 0);

    /* and a multi-byte character is not split either */
    static char euros[3 * 1000];
    for (size_t i = 0; i < sizeof euros; i += 3)
        memcpy(euros + i, "\xe2\x82\xac", 3);
    e.target = (struct slice){ euros, sizeof euros };
    line = format_entry(&e);
    start = strstr(line, "\"target\":\"") + 10;
    end = strstr(start, "...\",\"status\"");
    cr_assert_not_null(end);
    cr_assert_eq(end - start, 682 * 3);
}

Test(accesslog, worst_case_entry_fits_a_line)
{
    static char junk[20000];
    memset(junk, '\x01', sizeof junk - 1);
    struct alog_entry e = {
        .time_us = UINT64_MAX,
        .client = { junk, sizeof junk - 1 },
        .method = { junk, sizeof junk - 1 },
        .target = { junk, sizeof junk - 1 },
        .request_id = { junk, sizeof junk - 1 },
        .route = junk, .pool = junk, .backend = junk, .error = junk,
        .status = INT_MIN,
        .bytes_in = UINT64_MAX, .bytes_out = UINT64_MAX,
        .duration_us = UINT64_MAX, .first_byte_us = INT64_MAX,
        .upstream_reused = true,
        .queue_us = UINT64_MAX,
        .backends = { junk, junk, junk, junk }, .nbackends = ALOG_BACKENDS_MAX,
        .fallback = true, .termination = TERM_DRAIN_TIMEOUT,
        .key = junk, .ai = true, .model = { junk, sizeof junk - 1 }, .stream = true,
        .tokens_in = UINT64_MAX, .tokens_out = UINT64_MAX, .cost_pusd = UINT64_MAX,
        .limit = junk, .priority = junk,
        .tls_version = junk, .tls_cipher = junk, .tls_sni = junk, .tls_client_subject = junk,
    };
    static char big[4 * ALOG_LINE_MAX];
    size_t need = alog_format(big, sizeof big, &e);
    char buf[ALOG_LINE_MAX];
    size_t n = alog_format(buf, sizeof buf, &e);
    cr_assert_gt(n, 0, "needs %zu bytes", need);
    cr_assert_eq(buf[n - 1], '\n');
    cr_assert_not_null(memmem(buf, n, "\"status\":-2147483648,", 21));
    cr_assert_not_null(memmem(buf, n, "\"bytes_in\":18446744073709551615,", 32));
}

Test(accesslog, incident_fields_show_queue_backends_fallback_and_termination)
{
    struct alog_entry e = typical_entry();
    e.status = 499;
    e.queue_us = 250500;
    e.backends[0] = "127.0.0.1:8001";
    e.backends[1] = "127.0.0.1:8002";
    e.nbackends = 2;
    e.fallback = true;
    e.termination = TERM_CLIENT_ABORT;
    e.error = "client closed";
    char *line = format_entry(&e);
    cr_assert_not_null(strstr(line, "\"status\":499,"), "%s", line);
    cr_assert_not_null(strstr(line, "\"queue_ms\":250.500,\"backends\":[\"127.0.0.1:8001\",\"127.0.0.1:8002\"],"
                                    "\"fallback\":true,\"termination\":\"client_abort\",\"error\":\"client closed\"}"),
                      "%s", line);
    cr_assert_str_eq(alog_termination_name(TERM_DRAIN_TIMEOUT), "drain_timeout");
    cr_assert_null(alog_termination_name(TERM_NONE));
    cr_assert_null(alog_termination_name(TERM_COUNT));
}

Test(accesslog, too_small_buffer_gives_zero)
{
    struct alog_entry e = typical_entry();
    char buf[64];
    cr_assert_eq(alog_format(buf, sizeof buf, &e), 0);
    char exact[sizeof typical_line - 1];
    cr_assert_eq(alog_format(exact, sizeof exact, &e), sizeof typical_line - 1);
    cr_assert_eq(memcmp(exact, typical_line, sizeof exact), 0);
}

/* ---- key and AI fields ---- */

/* typical_line without its closing "}\n", to append the optional fields to */
#define TYPICAL_PREFIX_LEN (sizeof typical_line - 1 - 2)

static void assert_typical_then(const char *line, const char *tail)
{
    cr_assert_eq(strncmp(line, typical_line, TYPICAL_PREFIX_LEN), 0, "%s", line);
    cr_assert_str_eq(line + TYPICAL_PREFIX_LEN, tail, "%s", line);
}

static struct alog_entry ai_entry(void)
{
    struct alog_entry e = typical_entry();
    e.key = "team-a.prod";
    e.ai = true;
    e.model = SL("gpt-4o-mini");
    e.stream = true;
    e.tokens_in = 1234;
    e.tokens_out = 56;
    e.limit = NULL;
    e.priority = "high";
    return e;
}

Test(accesslog, ai_entry_has_every_ai_field)
{
    struct alog_entry e = ai_entry();
    assert_typical_then(format_entry(&e),
        ",\"key\":\"team-a.prod\",\"model\":\"gpt-4o-mini\",\"stream\":true,\"tokens_in\":1234,"
        "\"tokens_out\":56,\"limit\":null,\"priority\":\"high\"}\n");
}

Test(accesslog, ai_entry_refused_before_the_model_was_read)
{
    struct alog_entry e = ai_entry();
    e.status = 429;
    e.model = (struct slice){ NULL, 0 };
    e.stream = false;
    e.tokens_in = 0;
    e.tokens_out = 0;
    e.limit = "requests";
    e.priority = NULL;
    const char *line = format_entry(&e);
    cr_assert_not_null(strstr(line, "\"status\":429,"), "%s", line);
    const char *tail = strstr(line, ",\"key\":");
    cr_assert_not_null(tail, "%s", line);
    cr_assert_str_eq(tail, ",\"key\":\"team-a.prod\",\"model\":null,\"stream\":false,\"tokens_in\":0,"
                           "\"tokens_out\":0,\"limit\":\"requests\"}\n");

    /* an empty slice with a non-NULL pointer is "not read" too */
    e.model = (struct slice){ "gpt-4o", 0 };
    e.limit = "quota";
    tail = strstr(format_entry(&e), ",\"model\":");
    cr_assert_str_eq(tail, ",\"model\":null,\"stream\":false,\"tokens_in\":0,\"tokens_out\":0,"
                           "\"limit\":\"quota\"}\n");
}

Test(accesslog, ai_entry_without_key)
{
    struct alog_entry e = ai_entry();
    e.key = NULL;
    e.priority = NULL;
    e.stream = false;
    e.tokens_in = UINT64_MAX;
    e.tokens_out = 0;
    e.limit = "tokens";
    assert_typical_then(format_entry(&e),
        ",\"model\":\"gpt-4o-mini\",\"stream\":false,\"tokens_in\":18446744073709551615,"
        "\"tokens_out\":0,\"limit\":\"tokens\"}\n");
}

Test(accesslog, key_without_ai)
{
    struct alog_entry e = typical_entry();
    e.key = "ops_bot-1";
    assert_typical_then(format_entry(&e), ",\"key\":\"ops_bot-1\"}\n");

    /* an empty NAME is still written: the pointer decides */
    e.key = "";
    assert_typical_then(format_entry(&e), ",\"key\":\"\"}\n");
}

Test(accesslog, non_ai_entry_has_no_ai_fields)
{
    /* every AI field set, but ai is false: none of them is written */
    struct alog_entry e = ai_entry();
    e.ai = false;
    e.key = NULL;
    e.limit = "requests";
    cr_assert_str_eq(format_entry(&e), typical_line);

    static const char *const ai_only[] = { "\"model\"", "\"stream\"", "\"tokens_in\"",
                                           "\"tokens_out\"", "\"limit\"", "\"priority\"" };
    e.key = "k";
    const char *line = format_entry(&e);
    for (size_t i = 0; i < sizeof ai_only / sizeof ai_only[0]; i++)
        cr_assert_null(strstr(line, ai_only[i]), "%s in %s", ai_only[i], line);
    assert_typical_then(line, ",\"key\":\"k\"}\n");
}

Test(accesslog, odd_model_names_are_escaped)
{
    struct alog_entry e = ai_entry();
    e.priority = NULL;
    e.model = SL("a\"b\\c\nd\x01" "e\x7f" "\xc3\xa9" "\xff" "\xed\xa0\x80" "f\0g" "\xe2\x82");
    const char *line = format_entry(&e);
    cr_assert_not_null(strstr(line,
        ",\"model\":\"a\\\"b\\\\c\\u000ad\\u0001e\\u007f\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffd"
        "f\\u0000g\\ufffd\\ufffd\",\"stream\":"), "%s", line);
    cr_assert_eq(strchr(line, '\n'), line + strlen(line) - 1);

    /* key, limit and priority go through the same escaping */
    e.key = "k\"1";
    e.limit = "re\\q";
    e.priority = "p\n";
    line = format_entry(&e);
    cr_assert_not_null(strstr(line, ",\"key\":\"k\\\"1\","), "%s", line);
    cr_assert_not_null(strstr(line, ",\"limit\":\"re\\\\q\","), "%s", line);
    cr_assert_not_null(strstr(line, ",\"priority\":\"p\\u000a\"}\n"), "%s", line);
}

Test(accesslog, long_model_and_key_are_cut)
{
    static char model[1000];
    memset(model, 'm', sizeof model);
    struct alog_entry e = ai_entry();
    e.model = (struct slice){ model, sizeof model };
    char key[300];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    e.key = key;
    const char *line = format_entry(&e);

    char want[200];
    memcpy(want, ",\"model\":\"", 10);
    memset(want + 10, 'm', 128);
    strcpy(want + 10 + 128, "...\",\"stream\":true,");
    cr_assert_not_null(strstr(line, want), "%s", line);
    memcpy(want, ",\"key\":\"", 8);
    memset(want + 8, 'k', 128);
    strcpy(want + 8 + 128, "...\",\"model\":");
    cr_assert_not_null(strstr(line, want), "%s", line);

    /* a model exactly at the limit is not cut */
    e.model = (struct slice){ model, 128 };
    line = format_entry(&e);
    memcpy(want, ",\"model\":\"", 10);
    memset(want + 10, 'm', 128);
    strcpy(want + 10 + 128, "\",\"stream\":true,");
    cr_assert_not_null(strstr(line, want), "%s", line);
}

/* Every string field at its longest output for a given filler byte sequence. */
static size_t format_worst(char *buf, size_t cap, const char *unit, size_t unit_len)
{
    static char junk[20000];
    size_t n = 0;
    while (n + unit_len < sizeof junk) {
        memcpy(junk + n, unit, unit_len);
        n += unit_len;
    }
    junk[n] = '\0';
    struct slice all = { junk, n };
    struct alog_entry e = {
        .time_us = UINT64_MAX,
        .client = all, .method = all, .target = all, .request_id = all,
        .route = junk, .pool = junk, .backend = junk, .error = junk,
        .status = INT_MIN,
        .bytes_in = UINT64_MAX, .bytes_out = UINT64_MAX,
        .duration_us = UINT64_MAX, .first_byte_us = INT64_MAX,
        .upstream_reused = true,
        .key = junk,
        .ai = true,
        .model = all,
        .stream = true,
        .tokens_in = UINT64_MAX, .tokens_out = UINT64_MAX,
        .limit = junk,
        .priority = junk,
    };
    return alog_format(buf, cap, &e);
}

Test(accesslog, worst_case_ai_entry_fits_a_line)
{
    static const struct { const char *unit; size_t len; } fillers[] = {
        { "a", 1 },                 /* fills every budget exactly */
        { "\x01", 1 },              /* 6-byte escapes */
        { "\"", 1 },                /* 2-byte escapes */
        { "\xff", 1 },              /* invalid UTF-8: \ufffd */
        { "\xe2\x82\xac", 3 },      /* 3-byte characters */
        { "\xf0\x9f\x98\x80", 4 },  /* 4-byte characters */
        { "ab\x01", 3 },
    };
    size_t longest = 0;
    for (size_t i = 0; i < sizeof fillers / sizeof fillers[0]; i++) {
        char buf[ALOG_LINE_MAX];
        size_t n = format_worst(buf, sizeof buf, fillers[i].unit, fillers[i].len);
        cr_assert_gt(n, 0, "filler %zu does not fit", i);
        cr_assert_lt(n, ALOG_LINE_MAX);
        cr_assert_eq(buf[n - 1], '\n');
        cr_assert_eq(memchr(buf, '\n', n), buf + n - 1, "one line");
        static const char tokens[] = "\"tokens_in\":18446744073709551615,"
                                     "\"tokens_out\":18446744073709551615,";
        cr_assert_not_null(memmem(buf, n, tokens, sizeof tokens - 1), "filler %zu", i);
        cr_assert_not_null(memmem(buf, n, ",\"priority\":\"", 13), "filler %zu", i);
        cr_assert_eq(memcmp(buf + n - 6, "...\"}\n", 6), 0, "filler %zu: priority is cut", i);
        if (n > longest)
            longest = n;
    }
    /* the all-ASCII filler reaches every budget exactly: 14 strings cut, the numbers at
     * their longest; what a line can be at most */
    char buf[ALOG_LINE_MAX];
    size_t ascii = format_worst(buf, sizeof buf, "a", 1);
    cr_assert_eq(ascii, longest);
    /* the line is exactly one byte shorter than that without room: 0 */
    cr_assert_eq(format_worst(buf, ascii - 1, "a", 1), 0);
    cr_assert_eq(format_worst(buf, ascii, "a", 1), ascii);
}

Test(accesslog, ai_entry_too_small_buffer_gives_zero_and_stays_inside)
{
    struct alog_entry e = ai_entry();
    e.limit = "tokens";
    char full[ALOG_LINE_MAX];
    size_t need = alog_format(full, sizeof full, &e);
    cr_assert_gt(need, 0);
    for (size_t cap = 0; cap < need; cap++) {
        char out[ALOG_LINE_MAX];
        memset(out, 'Z', sizeof out);
        cr_assert_eq(alog_format(out, cap, &e), 0, "cap %zu", cap);
        for (size_t i = cap; i < sizeof out; i++)
            cr_assert_eq(out[i], 'Z', "wrote past cap %zu", cap);
    }
    char exact[ALOG_LINE_MAX];
    cr_assert_eq(alog_format(exact, need, &e), need);
    cr_assert_eq(memcmp(exact, full, need), 0);
}

/* ---- writer thread ---- */

static char tmp_dir[64];

static void make_tmp_dir(void)
{
    strcpy(tmp_dir, "/tmp/aigw-alog-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp_dir));
}

static void remove_tmp_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
    cr_assert_eq(system(cmd), 0);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap)
            buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, ms % 1000 * 1000000L };
    nanosleep(&ts, NULL);
}

/* True if this process has a descriptor open on path (the writer thread's). */
static bool file_held_open(const char *path)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    bool held = false;
    struct dirent *e;
    while (!held && (e = readdir(d))) {
        char link[300], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            held = strcmp(target, path) == 0;
        }
    }
    closedir(d);
    return held;
}

/* Waits up to 2 s for the file to reach min_size bytes. */
static bool wait_file_size(const char *path, off_t min_size)
{
    for (int i = 0; i < 400; i++) {
        if (file_size(path) >= min_size)
            return true;
        sleep_ms(5);
    }
    return false;
}

static size_t count_lines(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

struct producer_args {
    unsigned shard;
    unsigned lines;
};

static void *producer_main(void *arg)
{
    const struct producer_args *a = arg;
    struct alog_entry e = typical_entry();
    for (unsigned i = 0; i < a->lines; i++)
        alog_write(a->shard, &e);
    return NULL;
}

/* ---- credentials in targets ---- */

static const char *redact(const char *target, size_t cap)
{
    static char out[1024];
    cr_assert_leq(cap, sizeof out - 1);
    memset(out, '#', sizeof out);
    size_t n = alog_redact_target(out, cap, (struct slice){ target, strlen(target) });
    cr_assert_leq(n, cap, "wrote past cap for %s", target);
    cr_assert_eq(out[cap], '#', "wrote past cap for %s", target);
    out[n] = '\0';
    return out;
}

Test(accesslog, redacts_credentials_in_the_target)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        /* nothing to hide: copied as is */
        { "/v1/chat/completions", "/v1/chat/completions" },
        { "/v1/files?purpose=fine-tune&limit=5", "/v1/files?purpose=fine-tune&limit=5" },
        { "/x?", "/x?" },
        { "/x?&&a=1&", "/x?&&a=1&" },
        { "*", "*" },
        /* by parameter name, any case, percent-encoded or not */
        { "/v1/x?api_key=s3cret", "/v1/x?api_key=REDACTED" },
        { "/v1/x?a=1&key=s3cret&b=2", "/v1/x?a=1&key=REDACTED&b=2" },
        { "/v1/x?TOKEN=s3cret", "/v1/x?TOKEN=REDACTED" },
        { "/v1/x?access_token=a.b.c&apikey=1&api-key=2&x-api-key=3", "/v1/x?access_token=REDACTED&apikey=REDACTED"
          "&api-key=REDACTED&x-api-key=REDACTED" },
        { "/v1/x?auth=1&authorization=2&password=3&secret=4&client_secret=5",
          "/v1/x?auth=REDACTED&authorization=REDACTED&password=REDACTED&secret=REDACTED&client_secret=REDACTED" },
        { "/v1/x?api%5Fkey=s3cret&Api%5fKey=s3cret", "/v1/x?api%5Fkey=REDACTED&Api%5fKey=REDACTED" },
        { "/v1/x?key=a=b=c", "/v1/x?key=REDACTED" },        /* the value runs to the next '&' */
        { "/v1/x?key=a;b&c=d", "/v1/x?key=REDACTED&c=d" },
        /* names that only look alike are kept */
        { "/v1/x?keys=1&monkey=2&key_id=3&tokens=4", "/v1/x?keys=1&monkey=2&key_id=3&tokens=4" },
        /* an empty value has nothing to hide */
        { "/v1/x?key=&token", "/v1/x?key=&token" },
        /* by the look of the value, whatever the name */
        { "/v1/x?q=sk-proj-abc123", "/v1/x?q=REDACTED" },
        { "/v1/x?q=SK-abc", "/v1/x?q=REDACTED" },
        { "/v1/x?q=sk%2Dabc", "/v1/x?q=REDACTED" },
        { "/v1/x?h=Bearer%20abc&i=bearer+abc&j=Bearer", "/v1/x?h=REDACTED&i=REDACTED&j=Bearer" },
        { "/v1/x?sk-abc&next=1", "/v1/x?REDACTED&next=1" },   /* a bare parameter is a value */
        { "/v1/x?q=skate", "/v1/x?q=skate" },
        /* an aigw key anywhere, up to its last base62 digit */
        { "/v1/files/sk-aigw-Ab09zZ/content", "/v1/files/REDACTED/content" },
        { "/v1/sk-aigw-Ab09zZ", "/v1/REDACTED" },
        { "/v1/a-sk-aigw-Ab09zZ.json?x=1", "/v1/a-REDACTED.json?x=1" },
        { "/v1/x?note=my-sk-aigw-Ab09zZ-here", "/v1/x?note=my-REDACTED-here" },
        { "/v1/x?note=sk-aigw-", "/v1/x?note=REDACTED" },
        { "/sk-aigw-a/sk-aigw-b?c=sk-aigw-d", "/REDACTED/REDACTED?c=REDACTED" },
        { "/v1/SK-AIGW-abc", "/v1/SK-AIGW-abc" },          /* aigw keys are written in lower case */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_str_eq(redact(cases[i].in, 1000), cases[i].out, "case %zu: %s", i, cases[i].in);
}

Test(accesslog, redacted_target_is_cut_at_cap)
{
    cr_assert_str_eq(redact("/v1/x?key=s3cret&b=2", 12), "/v1/x?key=RE");
    cr_assert_str_eq(redact("/v1/x?key=s3cret&b=2", 19), "/v1/x?key=REDACTED&");
    cr_assert_str_eq(redact("/v1/sk-aigw-abc/x", 6), "/v1/RE");
    cr_assert_str_eq(redact("/v1/x?a=1", 0), "");
    /* a secret longer than what is kept is still hidden whole */
    char big[700];
    snprintf(big, sizeof big, "/v1/x?api_key=%0600d", 7);
    cr_assert_str_eq(redact(big, 200), "/v1/x?api_key=REDACTED");
}

Test(accesslog, writes_lines_from_shard_threads_to_a_file)
{
    make_tmp_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/access.log", tmp_dir);
    mode_t mask = umask(022);
    umask(mask);
    cr_assert_eq(metrics_init(2), 0);
    cr_assert_eq(alog_init(2, 0, ACCESS_FILE, path), 0);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0640 & ~mask);

    pthread_t t[2];
    struct producer_args args[2] = { { 0, 100 }, { 1, 100 } };
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, producer_main, &args[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    alog_shutdown();

    size_t len;
    char *text = slurp(path, &len);
    cr_assert_not_null(text);
    cr_assert_eq(len, 200 * (sizeof typical_line - 1));
    for (size_t off = 0; off < len; off += sizeof typical_line - 1)
        cr_assert_eq(memcmp(text + off, typical_line, sizeof typical_line - 1), 0);
    cr_assert_eq(atomic_load(&metrics_shard(0)->access_log_dropped), 0);
    free(text);
    remove_tmp_dir();
}

Test(accesslog, full_ring_drops_and_counts)
{
    make_tmp_dir();
    char path[128];
    snprintf(path, sizeof path, "%s/access.log", tmp_dir);
    cr_assert_eq(metrics_init(1), 0);
    cr_assert_eq(alog_init(1, 1, ACCESS_FILE, path), 0);    /* smallest ring: 64 KiB */

    static char target[2000];
    memset(target, 'x', sizeof target);
    struct alog_entry e = typical_entry();
    e.target = (struct slice){ target, sizeof target };
    /* ~2.3 MB in a burst, far faster than a 20 ms writer tick drains 64 KiB */
    enum { N = 1000 };
    for (int i = 0; i < N; i++)
        alog_write(0, &e);
    alog_shutdown();

    char *text = slurp(path, NULL);
    size_t written = count_lines(text);
    uint64_t dropped = atomic_load(&metrics_shard(0)->access_log_dropped);
    cr_assert_gt(dropped, 0);
    cr_assert_eq(written + dropped, N, "written %zu dropped %lu", written, (unsigned long)dropped);
    free(text);
    remove_tmp_dir();
}

Test(accesslog, reopen_follows_a_rotated_file)
{
    make_tmp_dir();
    char path[128], rotated[128];
    snprintf(path, sizeof path, "%s/access.log", tmp_dir);
    snprintf(rotated, sizeof rotated, "%s/access.log.1", tmp_dir);
    cr_assert_eq(metrics_init(1), 0);
    cr_assert_eq(alog_init(1, 0, ACCESS_FILE, path), 0);

    struct alog_entry e = typical_entry();
    alog_write(0, &e);
    cr_assert(wait_file_size(path, sizeof typical_line - 1));
    cr_assert_eq(rename(path, rotated), 0);
    alog_reopen();
    cr_assert(wait_file_size(path, 0), "reopen did not create the file");
    e.status = 201;
    alog_write(0, &e);
    alog_shutdown();

    char *old_text = slurp(rotated, NULL), *new_text = slurp(path, NULL);
    cr_assert_str_eq(old_text, typical_line);
    cr_assert_eq(count_lines(new_text), 1);
    cr_assert_not_null(strstr(new_text, "\"status\":201,"));
    free(old_text);
    free(new_text);
    remove_tmp_dir();
}

Test(accesslog, off_writes_nothing_and_configure_switches_on)
{
    make_tmp_dir();
    char path[128], bad[160];
    snprintf(path, sizeof path, "%s/access.log", tmp_dir);
    snprintf(bad, sizeof bad, "%s/missing-dir/access.log", tmp_dir);
    cr_assert_eq(metrics_init(1), 0);
    cr_assert_eq(alog_init(1, 0, ACCESS_OFF, NULL), 0);
    struct alog_entry e = typical_entry();
    alog_write(0, &e);

    cr_assert_eq(alog_configure(ACCESS_FILE, bad), -1);
    cr_assert_eq(errno, ENOENT);
    cr_assert_eq(alog_configure(ACCESS_FILE, path), 0);
    /* the writer switches within a tick; until then lines are still off */
    bool seen = false;
    for (int i = 0; i < 400 && !seen; i++) {
        alog_write(0, &e);
        sleep_ms(5);
        seen = file_size(path) > 0;
    }
    cr_assert(seen);
    cr_assert(file_held_open(path));
    cr_assert_eq(alog_configure(ACCESS_OFF, NULL), 0);
    /* the writer has switched to off once it has closed the file */
    bool closed = false;
    for (int i = 0; i < 400 && !closed; i++) {
        closed = !file_held_open(path);
        if (!closed)
            sleep_ms(5);
    }
    cr_assert(closed, "the writer still holds the file 2 s after the switch to off");
    off_t before = file_size(path);
    alog_write(0, &e);
    alog_shutdown();
    cr_assert_eq(file_size(path), before);

    char *text = slurp(path, NULL);
    size_t lines = count_lines(text);
    cr_assert_gt(lines, 0);
    cr_assert_eq(strlen(text), lines * (sizeof typical_line - 1));
    free(text);
    remove_tmp_dir();
}

Test(accesslog, init_fails_cleanly_on_bad_path)
{
    cr_assert_eq(alog_init(1, 0, ACCESS_FILE, "/nonexistent-dir/x/access.log"), -1);
    cr_assert_eq(errno, ENOENT);
    struct alog_entry e = typical_entry();
    alog_write(0, &e);      /* not started: ignored */
    alog_shutdown();        /* not started: no-op */
    cr_assert_eq(alog_init(1, 0, ACCESS_OFF, NULL), 0);
    alog_shutdown();
}
