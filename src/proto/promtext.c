/* Prometheus text format 0.0.4, strict, and the engine load summary. See
 * promtext.h for the grammar accepted and the contract.
 *
 * The parser is line-local: each line is read on its own between its start and
 * its LF (found with memchr, so the line limit is checked before any byte of
 * the line is looked at), with a cursor that never passes the line's end. No
 * line depends on another, which is what lets the fuzz target compare a body
 * with its prefixes. */
#include "proto/promtext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

/* Byte classes: metric name start/rest, label name start/rest. */
enum { C_MSTART = 1, C_MREST = 2, C_LSTART = 4, C_LREST = 8 };

static uint8_t cls(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')
        return C_MSTART | C_MREST | C_LSTART | C_LREST;
    if (c >= '0' && c <= '9')
        return C_MREST | C_LREST;
    if (c == ':')
        return C_MSTART | C_MREST;
    return 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* The cursor over one line: [p, e), with the line's start to report columns. */
struct cur {
    const char *p, *e, *start;
};

static const char *skip_blanks(const char *p, const char *e)
{
    while (p < e && is_blank(*p))
        p++;
    return p;
}

static const char *token_end(const char *p, const char *e)
{
    while (p < e && !is_blank(*p))
        p++;
    return p;
}

static int fail(struct prom_error *err, size_t line, const struct cur *c, const char *at,
                const char *msg)
{
    if (err) {
        err->line = line;
        err->col = (size_t)(at - c->start) + 1;
        err->msg = msg;
    }
    return PROM_ERROR;
}

static bool ci_eq(const char *s, size_t n, const char *lower)
{
    size_t m = strlen(lower);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lower[i])
            return false;
    }
    return true;
}

/* A value token as Go's strconv.ParseFloat reads a decimal or a special value.
 * The grammar is checked here; the digits are then converted by strtod from a
 * NUL-terminated copy (the text itself need not be terminated). strtod follows
 * LC_NUMERIC, which aigw leaves at "C". */
static const char *parse_value(const char *s, size_t n, double *out)
{
    if (n > PROM_MAX_NUMBER)
        return "value too long";
    size_t i = 0;
    bool neg = false, sign = false;
    if (i < n && (s[i] == '+' || s[i] == '-')) {
        neg = s[i] == '-';
        sign = true;
        i++;
    }
    if (ci_eq(s + i, n - i, "inf") || ci_eq(s + i, n - i, "infinity")) {
        *out = neg ? -INFINITY : INFINITY;
        return NULL;
    }
    if (!sign && ci_eq(s, n, "nan")) {
        *out = NAN;
        return NULL;
    }
    size_t int_digits = 0, frac_digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, int_digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, frac_digits++;
    }
    if (int_digits + frac_digits == 0)
        return "invalid value";
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t exp_digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, exp_digits++;
        if (exp_digits == 0)
            return "invalid value";
    }
    if (i != n)
        return "invalid value";
    char buf[PROM_MAX_NUMBER + 1];
    memcpy(buf, s, n);
    buf[n] = '\0';
    double v = strtod(buf, NULL);
    /* Underflow reads as 0 or a subnormal, as in Go; overflow is Go's ErrRange. */
    if (isinf(v))
        return "value out of range";
    *out = v;
    return NULL;
}

static const char *parse_timestamp(const char *s, size_t n, int64_t *out)
{
    if (n > PROM_MAX_NUMBER)
        return "timestamp too long";
    size_t i = 0;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i == n)
        return "invalid timestamp";
    /* Accumulate as a negative number: INT64_MIN has no positive counterpart. */
    int64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return "invalid timestamp";
        int d = s[i] - '0';
        if (v < (INT64_MIN + d) / 10)
            return "timestamp out of range";
        v = v * 10 - d;
    }
    if (!neg) {
        if (v == INT64_MIN)
            return "timestamp out of range";
        v = -v;
    }
    *out = v;
    return NULL;
}

/* A metric name at c->p; on success c->p is past it. */
static bool read_metric_name(struct cur *c)
{
    if (c->p >= c->e || !(cls((unsigned char)*c->p) & C_MSTART))
        return false;
    c->p++;
    while (c->p < c->e && (cls((unsigned char)*c->p) & C_MREST))
        c->p++;
    return true;
}

/* "# ..." lines: HELP and TYPE are checked, anything else is a comment. */
static int parse_comment(struct cur *c, size_t line, struct prom_error *err)
{
    c->p = skip_blanks(c->p + 1, c->e);
    const char *kw = c->p;
    c->p = token_end(c->p, c->e);
    size_t kwlen = (size_t)(c->p - kw);
    bool help = kwlen == 4 && memcmp(kw, "HELP", 4) == 0;
    bool type = kwlen == 4 && memcmp(kw, "TYPE", 4) == 0;
    if (!help && !type)
        return PROM_OK;

    c->p = skip_blanks(c->p, c->e);
    if (!read_metric_name(c))
        return fail(err, line, c, c->p, help ? "invalid metric name in HELP" : "invalid metric name in TYPE");
    if (c->p < c->e && !is_blank(*c->p))
        return fail(err, line, c, c->p, "invalid character in metric name");
    c->p = skip_blanks(c->p, c->e);

    if (help) {
        /* Docstring: free text, but the only escapes are \\ and \n. */
        for (const char *q = c->p; q < c->e; q++) {
            if (*q != '\\')
                continue;
            if (q + 1 >= c->e || (q[1] != '\\' && q[1] != 'n'))
                return fail(err, line, c, q, "invalid escape in HELP text");
            q++;
        }
        return PROM_OK;
    }

    const char *t = c->p;
    c->p = token_end(c->p, c->e);
    size_t tlen = (size_t)(c->p - t);
    static const char *const types[] = { "counter", "gauge", "histogram", "summary", "untyped" };
    bool known = false;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i]) == tlen && memcmp(types[i], t, tlen) == 0)
            known = true;
    if (tlen == 0)
        return fail(err, line, c, t, "missing type in TYPE");
    if (!known)
        return fail(err, line, c, t, "unknown metric type in TYPE");
    c->p = skip_blanks(c->p, c->e);
    if (c->p != c->e)
        return fail(err, line, c, c->p, "unexpected text after TYPE");
    return PROM_OK;
}

/* The label block after '{' (c->p is past it); on success c->p is past '}'. */
static int parse_labels(struct cur *c, size_t line, struct prom_sample *s, struct prom_error *err)
{
    const char *names[PROM_MAX_LABELS];
    size_t name_lens[PROM_MAX_LABELS];
    uint32_t n = 0;
    s->labels = c->p;
    for (;;) {
        /* Here: right after '{' or after a ','; a label or '}' follows. */
        c->p = skip_blanks(c->p, c->e);
        if (c->p >= c->e)
            return fail(err, line, c, c->p, "unterminated label set");
        if (*c->p == '}')
            break;
        const char *ln = c->p;
        if (!(cls((unsigned char)*c->p) & C_LSTART))
            return fail(err, line, c, c->p, "invalid label name");
        c->p++;
        while (c->p < c->e && (cls((unsigned char)*c->p) & C_LREST))
            c->p++;
        size_t lnlen = (size_t)(c->p - ln);
        if (n == PROM_MAX_LABELS)
            return fail(err, line, c, ln, "too many labels");
        for (uint32_t i = 0; i < n; i++)
            if (name_lens[i] == lnlen && memcmp(names[i], ln, lnlen) == 0)
                return fail(err, line, c, ln, "duplicate label name");
        names[n] = ln;
        name_lens[n] = lnlen;
        n++;

        c->p = skip_blanks(c->p, c->e);
        if (c->p >= c->e || *c->p != '=')
            return fail(err, line, c, c->p, "expected '=' after label name");
        c->p = skip_blanks(c->p + 1, c->e);
        if (c->p >= c->e || *c->p != '"')
            return fail(err, line, c, c->p, "expected '\"' to open label value");
        c->p++;
        for (;;) {
            if (c->p >= c->e)
                return fail(err, line, c, c->p, "unterminated label value");
            unsigned char ch = (unsigned char)*c->p;
            if (ch == '"')
                break;
            if (ch == '\\') {
                if (c->p + 1 >= c->e || (c->p[1] != '\\' && c->p[1] != '"' && c->p[1] != 'n'))
                    return fail(err, line, c, c->p, "invalid escape in label value");
                c->p += 2;
                continue;
            }
            /* Go's utf8.ValidString, which Prometheus applies to label values, has the
             * same rules */
            size_t u = utf8_seq_len(c->p, (size_t)(c->e - c->p));
            if (u == 0)
                return fail(err, line, c, c->p, "label value is not valid UTF-8");
            c->p += u;
        }
        c->p = skip_blanks(c->p + 1, c->e);
        if (c->p >= c->e)
            return fail(err, line, c, c->p, "unterminated label set");
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p == '}')
            break;
        return fail(err, line, c, c->p, "expected ',' or '}' after label value");
    }
    s->labels_len = (size_t)(c->p - s->labels);
    s->nlabels = n;
    c->p++;     /* '}' */
    return PROM_OK;
}

static int parse_sample(struct cur *c, size_t line, prom_sample_fn fn, void *ctx,
                        struct prom_error *err)
{
    struct prom_sample s = { .line = line };
    s.name = c->p;
    if (!read_metric_name(c))
        return fail(err, line, c, c->p, "invalid metric name");
    s.name_len = (size_t)(c->p - s.name);
    /* A name must end at a blank, '{' or the line's end: "foo-1 2" is not foo=-1 @2. */
    if (c->p < c->e && !is_blank(*c->p) && *c->p != '{')
        return fail(err, line, c, c->p, "invalid character in metric name");
    c->p = skip_blanks(c->p, c->e);
    if (c->p < c->e && *c->p == '{') {
        c->p++;
        int r = parse_labels(c, line, &s, err);
        if (r != PROM_OK)
            return r;
        c->p = skip_blanks(c->p, c->e);
    }
    if (c->p >= c->e)
        return fail(err, line, c, c->p, "missing value");
    const char *v = c->p;
    c->p = token_end(c->p, c->e);
    const char *why = parse_value(v, (size_t)(c->p - v), &s.value);
    if (why)
        return fail(err, line, c, v, why);
    c->p = skip_blanks(c->p, c->e);
    if (c->p < c->e) {
        const char *t = c->p;
        c->p = token_end(c->p, c->e);
        why = parse_timestamp(t, (size_t)(c->p - t), &s.timestamp_ms);
        if (why)
            return fail(err, line, c, t, why);
        s.has_timestamp = true;
        c->p = skip_blanks(c->p, c->e);
        if (c->p < c->e)
            return fail(err, line, c, c->p, "unexpected text after timestamp");
    }
    if (fn && fn(ctx, &s) != 0)
        return PROM_STOPPED;
    return PROM_OK;
}

int prom_parse(const char *text, size_t len, prom_sample_fn fn, void *ctx,
               struct prom_error *err)
{
    if (err)
        *err = (struct prom_error){ 0, 0, NULL };
    size_t off = 0, line = 0;
    while (off < len) {
        line++;
        const char *start = text + off;
        size_t rest = len - off;
        /* Never look further than one line past the limit. */
        size_t scan = rest < (size_t)PROM_MAX_LINE + 1 ? rest : (size_t)PROM_MAX_LINE + 1;
        const char *lf = memchr(start, '\n', scan);
        size_t llen = lf ? (size_t)(lf - start) : scan;
        struct cur c = { start, start + llen, start };
        if (llen > PROM_MAX_LINE)
            return fail(err, line, &c, start + PROM_MAX_LINE, "line too long");
        off += llen + (lf ? 1 : 0);

        if (llen > 0 && start[llen - 1] == '\r')
            return fail(err, line, &c, start + llen - 1, "CR before LF (CRLF line ends are not accepted)");
        c.p = skip_blanks(c.p, c.e);
        if (c.p == c.e)
            continue;
        int r = *c.p == '#' ? parse_comment(&c, line, err) : parse_sample(&c, line, fn, ctx, err);
        if (r != PROM_OK)
            return r;
    }
    return PROM_OK;
}

int prom_label_get(const char *labels, size_t labels_len, const char *name,
                   char *buf, size_t cap, size_t *value_len)
{
    if (!labels)
        return -1;
    size_t want = strlen(name);
    const char *p = labels, *e = labels + labels_len;
    for (;;) {
        p = skip_blanks(p, e);
        if (p >= e)
            return -1;
        const char *ln = p;
        while (p < e && (cls((unsigned char)*p) & C_LREST))
            p++;
        size_t lnlen = (size_t)(p - ln);
        if (lnlen == 0)
            return -1;
        p = skip_blanks(p, e);
        if (p >= e || *p != '=')
            return -1;
        p = skip_blanks(p + 1, e);
        if (p >= e || *p != '"')
            return -1;
        p++;
        bool match = lnlen == want && memcmp(ln, name, want) == 0;
        size_t n = 0;
        for (;;) {
            if (p >= e)
                return -1;
            char ch = *p++;
            if (ch == '"')
                break;
            if (ch == '\\' && p < e) {
                char x = *p++;
                ch = x == 'n' ? '\n' : x;   /* \\ and \" stand for themselves */
            }
            if (match && n + 1 < cap)
                buf[n] = ch;
            n++;
        }
        if (match) {
            if (value_len)
                *value_len = n;
            if (n + 1 > cap)
                return -2;
            buf[n] = '\0';
            return 0;
        }
        p = skip_blanks(p, e);
        if (p < e && *p == ',')
            p++;
        else if (p < e)
            return -1;
    }
}

/* ---- engine load ---- */

enum { F_WAITING, F_RUNNING, F_KV, F_KV_OLD, F_PC_HITS, F_PC_HITS_TOTAL, F_PC_QUERIES, F_PC_QUERIES_TOTAL,
       F_CACHE_TOKENS, F_CACHE_CONFIG, F_COUNT };

static const struct {
    const char *name;
    uint8_t len, engine, field;
} known_metrics[] = {
#define M(n, eng, f) { n, sizeof n - 1, eng, f }
    M("vllm:num_requests_waiting", PROM_ENGINE_VLLM, F_WAITING),
    M("vllm:num_requests_running", PROM_ENGINE_VLLM, F_RUNNING),
    M("vllm:kv_cache_usage_perc", PROM_ENGINE_VLLM, F_KV),
    M("vllm:gpu_cache_usage_perc", PROM_ENGINE_VLLM, F_KV_OLD),
    M("vllm:prefix_cache_hits", PROM_ENGINE_VLLM, F_PC_HITS),
    M("vllm:prefix_cache_hits_total", PROM_ENGINE_VLLM, F_PC_HITS_TOTAL),
    M("vllm:prefix_cache_queries", PROM_ENGINE_VLLM, F_PC_QUERIES),
    M("vllm:prefix_cache_queries_total", PROM_ENGINE_VLLM, F_PC_QUERIES_TOTAL),
    M("vllm:cache_config_info", PROM_ENGINE_VLLM, F_CACHE_CONFIG),
    M("sglang:num_queue_reqs", PROM_ENGINE_SGLANG, F_WAITING),
    M("sglang:max_total_num_tokens", PROM_ENGINE_SGLANG, F_CACHE_TOKENS),
    M("sglang:num_running_reqs", PROM_ENGINE_SGLANG, F_RUNNING),
    M("sglang:token_usage", PROM_ENGINE_SGLANG, F_KV),
    M("tgi_queue_size", PROM_ENGINE_TGI, F_WAITING),
    M("tgi_batch_current_size", PROM_ENGINE_TGI, F_RUNNING),
    M("llamacpp:requests_deferred", PROM_ENGINE_LLAMACPP, F_WAITING),
    M("llamacpp:requests_processing", PROM_ENGINE_LLAMACPP, F_RUNNING),
#undef M
};

/* Per field of the engine chosen: how its series combined so far. */
struct field_acc {
    bool seen, bad;
    double v;
};

struct load_ctx {
    uint8_t engine;
    struct field_acc f[F_COUNT];
};

/* A label holding a plain decimal integer 1 to 2^32 - 1: no sign, no spaces, no
 * exponent. NaN when absent or anything else ("None", "", "1e3", "-1"). */
static double label_count(const struct prom_sample *s, const char *name)
{
    char buf[16];
    if (prom_label_get(s->labels, s->labels_len, name, buf, sizeof buf, NULL) != 0 || !buf[0])
        return NAN;
    uint64_t v = 0;
    for (const char *p = buf; *p; p++) {
        if (*p < '0' || *p > '9')
            return NAN;
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return NAN;
    }
    return v ? (double)v : NAN;
}

/* What a sample says of its field: vllm:cache_config_info's figure is in its labels. */
static double sample_value(uint8_t field, const struct prom_sample *s)
{
    if (field == F_CACHE_CONFIG)
        return label_count(s, "num_gpu_blocks") * label_count(s, "block_size");
    return s->value;
}

static int load_sample(void *ctxp, const struct prom_sample *s)
{
    struct load_ctx *ctx = ctxp;
    for (size_t i = 0; i < sizeof known_metrics / sizeof known_metrics[0]; i++) {
        if (known_metrics[i].len != s->name_len || memcmp(known_metrics[i].name, s->name, s->name_len) != 0)
            continue;
        if (ctx->engine == PROM_ENGINE_UNKNOWN)
            ctx->engine = known_metrics[i].engine;
        if (known_metrics[i].engine != ctx->engine)
            return 0;
        uint8_t field = known_metrics[i].field;
        struct field_acc *a = &ctx->f[field];
        double v = sample_value(field, s);
        a->seen = true;
        bool ratio = field == F_KV || field == F_KV_OLD;
        bool capacity = field == F_CACHE_TOKENS || field == F_CACHE_CONFIG;
        /* NaN fails every comparison, so !(v >= 0) catches it with the negatives. */
        if (!(v >= 0) || isinf(v) || (ratio && v > 1.0) ||
            (capacity && (v < 1.0 || v != floor(v) || v > PROM_MAX_CACHE_TOKENS)))
            a->bad = true;
        else if (ratio)
            a->v = v > a->v ? v : a->v;
        else
            a->v += v;
        return 0;
    }
    return 0;
}

static bool field_known(const struct field_acc *a, double *out)
{
    if (!a->seen || a->bad || !isfinite(a->v))
        return false;
    *out = a->v;
    return true;
}

int engine_load_parse(const char *text, size_t len, struct engine_load *out,
                      struct prom_error *err)
{
    struct load_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    memset(out, 0, sizeof *out);
    if (prom_parse(text, len, load_sample, &ctx, err) != PROM_OK)
        return -1;
    out->engine = ctx.engine;
    out->has_waiting = field_known(&ctx.f[F_WAITING], &out->waiting);
    out->has_running = field_known(&ctx.f[F_RUNNING], &out->running);
    /* The older vLLM name counts only when the current one is not exported. */
    const struct field_acc *kv = ctx.f[F_KV].seen ? &ctx.f[F_KV] : &ctx.f[F_KV_OLD];
    out->has_kv_usage = field_known(kv, &out->kv_usage);
    const struct field_acc *hits = ctx.f[F_PC_HITS_TOTAL].seen ? &ctx.f[F_PC_HITS_TOTAL] : &ctx.f[F_PC_HITS];
    const struct field_acc *queries = ctx.f[F_PC_QUERIES_TOTAL].seen ? &ctx.f[F_PC_QUERIES_TOTAL]
                                                                    : &ctx.f[F_PC_QUERIES];
    out->has_prefix_cache = field_known(hits, &out->prefix_cache_hits) &&
                            field_known(queries, &out->prefix_cache_queries);
    /* one engine per body, so only one of the two is ever seen */
    const struct field_acc *cap = ctx.f[F_CACHE_CONFIG].seen ? &ctx.f[F_CACHE_CONFIG] : &ctx.f[F_CACHE_TOKENS];
    out->has_cache_tokens = field_known(cap, &out->cache_tokens) && out->cache_tokens <= PROM_MAX_CACHE_TOKENS;
    return 0;
}

const char *prom_engine_name(uint8_t engine)
{
    switch (engine) {
    case PROM_ENGINE_VLLM: return "vllm";
    case PROM_ENGINE_SGLANG: return "sglang";
    case PROM_ENGINE_TGI: return "tgi";
    case PROM_ENGINE_LLAMACPP: return "llamacpp";
    default: return "unknown";
    }
}
