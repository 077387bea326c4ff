/* aigw-mockllm: shared configuration and small buffer helpers. */
#ifndef AIGW_MOCKLLM_MOCK_H
#define AIGW_MOCKLLM_MOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MOCK_MAX_MODELS 64
#define MOCK_MAX_MODEL_NAME 200
/* The longest sequence (prompt + completion) accepted, like an engine's max_model_len. */
#define MOCK_MAX_MODEL_LEN (1u << 20)
/* Prefix-cache block size in tokens (vLLM's default block size). */
#define MOCK_BLOCK_TOKENS 16
/* Prompt bytes per token: the simulation's tokenizer. */
#define MOCK_BYTES_PER_TOKEN 4

/* Which API a request is for (the route it came on). */
enum api_kind { API_CHAT, API_COMPLETION, API_EMBEDDING };

struct mock_config {
    const char *listen;
    const char *models[MOCK_MAX_MODELS];
    unsigned nmodels;
    double tps;                 /* decode tokens/s per sequence; 0: instant */
    uint64_t ttft_ms;           /* fixed delay before the first token */
    uint32_t max_running;       /* 0: unlimited */
    uint32_t max_tokens;        /* completion length when the request names none */
    uint64_t kv_capacity;       /* KV-cache tokens; 0: unlimited */
    double prefill_tps;         /* prompt tokens/s of prefill; 0: free */
    uint64_t prefix_cache;      /* LRU prefix cache size in tokens; 0: off */
    double fail_rate;           /* fraction of model requests answered with 500 */
    bool log_traceparent;       /* each request's traceparent to stdout (tests of aigw's tracing) */
};

/* A growable byte buffer. Growth is rare (buffers are reused), so it aborts on OOM. */
struct buf {
    char *p;
    size_t len, cap;
};

void buf_grow(struct buf *b, size_t need);      /* ensures cap >= need */
void buf_shrink(struct buf *b, size_t cap);     /* drops content, resizes to cap */
void buf_free(struct buf *b);

static inline void buf_reserve(struct buf *b, size_t extra)
{
    if (b->cap - b->len < extra)
        buf_grow(b, b->len + extra);
}

static inline void buf_put(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

#define BUF_LIT(b, s) buf_put((b), (s), sizeof(s) - 1)

static inline void buf_str(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* Decimal digits of v at p (room for 20); returns the count. */
static inline size_t fmt_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

static inline void buf_u64(struct buf *b, uint64_t v)
{
    buf_reserve(b, 20);
    b->len += fmt_u64(b->p + b->len, v);
}

#endif
