/* libFuzzer: the Prometheus text parser and the engine load summary.
 *
 * Invariants, beyond "no crash, no read outside the input" (ASan):
 *  - the parser is line-local, so a prefix that ends just after a LF parses
 *    exactly the samples of its lines, and fails exactly as the whole did when
 *    it contains the bad line (same line, column, message), or succeeds when
 *    it stops before it;
 *  - every sample's name and label block lie inside the input, the name obeys
 *    the metric name grammar, lines only grow;
 *  - prom_label_get agrees with itself across buffer sizes;
 *  - engine_load_parse fails exactly when prom_parse does, and what it reports
 *    is finite, non-negative, a ratio for the KV figure, and a whole number of
 *    tokens in range for the cache capacity. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/promtext.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

#define MAX_TRACKED 4096

struct seen {
    const char *buf;
    size_t len;
    size_t n;
    size_t last_line;
    size_t lines[MAX_TRACKED];  /* line of each sample, for the first MAX_TRACKED */
};

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static void check_label(const struct prom_sample *s, const char *name)
{
    char big[256], small[256];
    size_t n = 0, n2 = 0;
    int r = prom_label_get(s->labels, s->labels_len, name, big, sizeof big, &n);
    FUZZ_CHECK(r == 0 || r == -1 || r == -2);
    if (r == -1)
        return;
    FUZZ_CHECK(n <= s->labels_len);     /* unescaping only shrinks */
    if (r == 0) {
        FUZZ_CHECK(n < sizeof big && big[n] == '\0');
        /* Exactly too small, then exactly enough. */
        FUZZ_CHECK(prom_label_get(s->labels, s->labels_len, name, small, n, &n2) == -2 && n2 == n);
        FUZZ_CHECK(prom_label_get(s->labels, s->labels_len, name, small, n + 1, &n2) == 0 && n2 == n);
        FUZZ_CHECK(memcmp(small, big, n + 1) == 0);
    } else {
        FUZZ_CHECK(n + 1 > sizeof big);
    }
}

static int on_sample(void *ctx, const struct prom_sample *s)
{
    struct seen *w = ctx;
    FUZZ_CHECK(s->name_len >= 1 && inside(s->name, s->name_len, w->buf, w->len));
    unsigned char c0 = (unsigned char)s->name[0];
    FUZZ_CHECK((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z') || c0 == '_' || c0 == ':');
    if (s->labels) {
        /* The block lies between its braces, both inside the input. */
        FUZZ_CHECK(inside(s->labels, s->labels_len + 1, w->buf, w->len));
        FUZZ_CHECK(s->labels > s->name && s->labels[-1] == '{' && s->labels[s->labels_len] == '}');
    } else {
        FUZZ_CHECK(s->labels_len == 0 && s->nlabels == 0);
    }
    FUZZ_CHECK(s->nlabels <= PROM_MAX_LABELS);
    FUZZ_CHECK(s->line >= 1 && s->line >= w->last_line);
    w->last_line = s->line;
    if (w->n < MAX_TRACKED)
        w->lines[w->n] = s->line;
    w->n++;
    check_label(s, "model_name");
    check_label(s, "le");
    check_label(s, "a");
    check_label(s, "num_gpu_blocks");
    check_label(s, "block_size");
    return 0;
}

static int stop_now(void *ctx, const struct prom_sample *s)
{
    return 1;
}

static struct seen whole, part;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct prom_error err;
    memset(&whole, 0, sizeof whole);
    whole.buf = buf;
    whole.len = size;
    int r = prom_parse(buf, size, on_sample, &whole, &err);
    FUZZ_CHECK(r == PROM_OK || r == PROM_ERROR);
    if (r == PROM_OK)
        FUZZ_CHECK(err.line == 0 && err.msg == NULL);
    else
        FUZZ_CHECK(err.line >= 1 && err.col >= 1 && err.msg && err.line >= whole.last_line);

    /* Prefixes ending after a LF (the first 32 of them, to bound the cost). */
    size_t line = 0;
    for (size_t off = 0; off < size && line < 32; off++) {
        if (buf[off] != '\n')
            continue;
        line++;     /* the prefix [0, off + 1) holds lines 1..line */
        memset(&part, 0, sizeof part);
        part.buf = buf;
        part.len = off + 1;
        struct prom_error perr;
        int pr = prom_parse(buf, off + 1, on_sample, &part, &perr);
        if (r == PROM_ERROR && err.line <= line) {
            FUZZ_CHECK(pr == PROM_ERROR && perr.line == err.line && perr.col == err.col &&
                       strcmp(perr.msg, err.msg) == 0);
        } else {
            FUZZ_CHECK(pr == PROM_OK);
        }
        /* The samples are those of the whole whose line is in the prefix. */
        size_t expect = 0;
        for (size_t i = 0; i < whole.n && i < MAX_TRACKED; i++)
            if (whole.lines[i] <= line)
                expect++;
        if (whole.n <= MAX_TRACKED)
            FUZZ_CHECK(part.n == expect);
        FUZZ_CHECK(part.n <= whole.n);
    }

    if (r == PROM_OK && whole.n > 0)
        FUZZ_CHECK(prom_parse(buf, size, stop_now, NULL, NULL) == PROM_STOPPED);
    FUZZ_CHECK(prom_parse(buf, size, NULL, NULL, NULL) == r);

    struct engine_load l;
    int lr = engine_load_parse(buf, size, &l, NULL);
    FUZZ_CHECK(lr == (r == PROM_OK ? 0 : -1));
    FUZZ_CHECK(l.engine <= PROM_ENGINE_LLAMACPP);
    if (lr != 0)
        FUZZ_CHECK(l.engine == PROM_ENGINE_UNKNOWN && !l.has_waiting && !l.has_running && !l.has_kv_usage);
    if (l.has_waiting)
        FUZZ_CHECK(isfinite(l.waiting) && l.waiting >= 0);
    if (l.has_running)
        FUZZ_CHECK(isfinite(l.running) && l.running >= 0);
    if (l.has_kv_usage)
        FUZZ_CHECK(l.kv_usage >= 0 && l.kv_usage <= 1);
    if (l.has_cache_tokens)
        FUZZ_CHECK(l.cache_tokens >= 1 && l.cache_tokens <= PROM_MAX_CACHE_TOKENS &&
                   l.cache_tokens == floor(l.cache_tokens));
    if (l.engine == PROM_ENGINE_UNKNOWN)
        FUZZ_CHECK(!l.has_waiting && !l.has_running && !l.has_kv_usage && !l.has_cache_tokens);
    return 0;
}
