/* Prometheus text exposition format 0.0.4, read strictly, and the load summary
 * aigw takes from an inference server's /metrics (vLLM, SGLang, TGI, llama.cpp).
 *
 * prom_parse walks a whole body once and calls back per sample; it never
 * allocates, never recurses, never reads outside [text, text + len), and holds
 * no state between calls. Anything outside the format is an error naming the
 * line and the problem: a backend whose exposition aigw cannot read for sure
 * gets an unknown load, never a guessed one.
 *
 * Accepted, per the 0.0.4 format (and Go's expfmt parser where the prose is loose):
 *  - lines end in LF; the last line may lack it. A line ending in CR (CRLF) is
 *    an error, whatever the line: no exporter aigw knows emits CRLF, and
 *    Prometheus's parser would read the CR into the last token;
 *  - blank lines and lines of blanks/tabs; tokens separated by blanks or tabs;
 *  - "# HELP name text" (text escapes \\ and \n only), "# TYPE name type"
 *    (counter, gauge, histogram, summary, untyped), other "#" lines ignored;
 *  - samples: name [{label="value",...[,]}] value [timestamp], metric names
 *    [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*, no label name
 *    twice, label values valid UTF-8 with escapes \\ \" \n only;
 *  - values as Go's strconv.ParseFloat reads decimals: [+-]digits[.digits][e[+-]digits]
 *    (".5" and "5." too), NaN (any case, no sign), [+-]Inf and [+-]Infinity (any
 *    case); a finite spelling that overflows a double is an error (Go: ErrRange);
 *  - timestamps: an optional [+-]digits int64 (milliseconds).
 * Not accepted: hex floats and '_' digit separators (Go takes them, no exporter
 * writes them), OpenMetrics "# EOF"/exemplars, quoted UTF-8 metric names.
 * Not checked: family rules (TYPE before samples, one HELP per family, samples
 * of a family contiguous, no repeated series); these need per-family state and
 * do not change what a sample says.
 *
 * Bounds: a line is at most PROM_MAX_LINE bytes, a sample has at most
 * PROM_MAX_LABELS labels, a value or timestamp token at most PROM_MAX_NUMBER
 * bytes. */
#ifndef AIGW_PROTO_PROMTEXT_H
#define AIGW_PROTO_PROMTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROM_MAX_LINE   65536u  /* bytes, without the LF */
#define PROM_MAX_LABELS 64u
#define PROM_MAX_NUMBER 128u    /* a longer value or timestamp token is an error */
#define PROM_MAX_CACHE_TOKENS 4294967295.0 /* engine_load's cache_tokens at most (fits a uint32) */

enum {
    PROM_OK      = 0,
    PROM_ERROR   = -1,  /* malformed; see struct prom_error */
    PROM_STOPPED = 1,   /* the callback asked to stop */
};

struct prom_error {
    size_t line;        /* 1-based line of the problem; 0 when none */
    size_t col;         /* 1-based byte column in that line */
    const char *msg;    /* static string, e.g. "invalid escape in label value" */
};

/* One sample. Pointers are into the text given to prom_parse and valid only as
 * long as it is. */
struct prom_sample {
    const char *name;
    size_t name_len;
    const char *labels;     /* between '{' and '}', as sent (escaped); NULL when no braces */
    size_t labels_len;
    uint32_t nlabels;
    double value;           /* may be NaN or +-Inf */
    bool has_timestamp;
    int64_t timestamp_ms;
    size_t line;
};

/* Return 0 to go on, anything else to stop (prom_parse then returns PROM_STOPPED). */
typedef int (*prom_sample_fn)(void *ctx, const struct prom_sample *s);

/* Parses a whole exposition body. Returns PROM_OK, PROM_STOPPED, or PROM_ERROR
 * with *err filled (err may be NULL). Samples of lines before a bad line have
 * already been passed to fn when PROM_ERROR is returned. fn may be NULL (validate
 * only). */
int prom_parse(const char *text, size_t len, prom_sample_fn fn, void *ctx,
               struct prom_error *err);

/* Looks up label `name` in a raw label block (struct prom_sample.labels) and
 * writes its unescaped value, NUL-terminated, into buf[cap]. *value_len (may be
 * NULL) gets the unescaped length. Returns 0 when found and it fits, -1 when
 * the label is absent (or the block is malformed: any bytes are safe to pass),
 * -2 when found but it needs more than cap - 1 bytes (buf then holds nothing
 * usable; *value_len says how much is needed, without the NUL). */
int prom_label_get(const char *labels, size_t labels_len, const char *name,
                   char *buf, size_t cap, size_t *value_len);

/* ---- engine load summary ---- */

enum prom_engine {
    PROM_ENGINE_UNKNOWN = 0,    /* no recognised metric in the body */
    PROM_ENGINE_VLLM,
    PROM_ENGINE_SGLANG,
    PROM_ENGINE_TGI,
    PROM_ENGINE_LLAMACPP,
};

/* What one scrape says about a backend's load. A field without its has_* flag
 * is unknown and must not be read as zero. */
struct engine_load {
    uint8_t engine;         /* enum prom_engine */
    bool has_waiting, has_running, has_kv_usage;
    double waiting;         /* requests queued inside the engine, >= 0 */
    double running;         /* requests being generated, >= 0 */
    double kv_usage;        /* KV cache (token pool) in use, 0..1 */
    bool has_prefix_cache;  /* both counters below known */
    double prefix_cache_hits, prefix_cache_queries;   /* the engine's counters, as exported */
    bool has_cache_tokens;
    double cache_tokens;    /* KV (prefix) cache capacity in tokens, >= 1 */
};

/* Recognised names. waiting and running: the sum over every series of the
 * name (engines export one per model, or per data-parallel rank). kv_usage:
 * the largest series, since each is a ratio of its own cache and the fullest
 * one is the one that saturates (a sum could pass 1).
 *   vLLM      vllm:num_requests_waiting, vllm:num_requests_running,
 *             vllm:kv_cache_usage_perc (older: vllm:gpu_cache_usage_perc, used
 *             only when the new name is absent; both are 0-1 despite "perc")
 *   SGLang    sglang:num_queue_reqs, sglang:num_running_reqs, sglang:token_usage
 *   TGI       tgi_queue_size, tgi_batch_current_size (no KV figure)
 *   llama.cpp llamacpp:requests_deferred (waiting), llamacpp:requests_processing
 * and the prefix cache's counters, summed like waiting: vllm:prefix_cache_hits
 * and vllm:prefix_cache_queries, with or without _total (the _total sample is
 * used when both are exported, so one counter never counts twice).
 * The cache's capacity in tokens, summed like waiting (one series per engine or
 * rank): vLLM's vllm:cache_config_info, an info gauge whose labels
 * num_gpu_blocks and block_size (plain decimal integers, 1 to 2^32 - 1; vLLM
 * writes "None" before it has profiled the GPU) multiply to it, its value
 * ignored; SGLang's sglang:max_total_num_tokens, a whole number >= 1. A
 * capacity above PROM_MAX_CACHE_TOKENS is unknown, not clamped.
 * The engine is the one of the first recognised sample; recognised names of
 * another engine later in the body are ignored, so figures are never mixed.
 * A field is unknown when its name is absent, when any of its series is NaN,
 * infinite or negative, when a sum overflows, or (kv_usage) when a series is
 * above 1 (not a ratio: guessing a scale is worse than not knowing).
 *
 * Returns 0, or -1 when the body is not valid exposition text (*out then says
 * nothing is known, *err where it failed; err may be NULL). */
int engine_load_parse(const char *text, size_t len, struct engine_load *out,
                      struct prom_error *err);

const char *prom_engine_name(uint8_t engine);   /* "vllm", "sglang", "tgi", "llamacpp", "unknown" */

#endif
