/* aigw-mockllm's HTTP server: a single-threaded, edge-triggered epoll loop over
 * non-blocking sockets. Connections and their buffers are recycled through a free
 * list; a request is parsed in place in the connection's input buffer (chunked
 * bodies are de-chunked in place), answered into its output buffer, and written
 * with one write() per batch. Timed answers are driven by the engine's heap.
 *
 * Half-close counts as the client going away (as uvicorn does): a generation in
 * flight is aborted. */
#include "server.h"

#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "prefix.h"
#include "proto/http1.h"
#include "proto/openai.h"
#include "proto/openai_error.h"
#include "util/clock.h"
#include "util/hash.h"

#define IN_INITIAL   (16 * 1024)
#define OUT_INITIAL  (16 * 1024)
#define BUF_KEEP     (256 * 1024)       /* larger buffers shrink back once idle */
#define MAX_HEAD     (64 * 1024)
#define MAX_BODY     (8u * 1024 * 1024)
#define OUT_HIGH     (256 * 1024)       /* stop producing for a client this far behind */
#define OUT_LOW      (64 * 1024)        /* ... and resume below this */
#define PUMP_ROUNDS  32                 /* reads per connection per loop turn */
#define MAX_EVENTS   256
#define TIMER_BUDGET 4096               /* timer steps per loop turn, so I/O is not starved */
#define MAX_INPUTS   2048               /* embeddings inputs per request */
#define EMBED_DIMS   8

enum phase { PH_HEAD, PH_BODY_LENGTH, PH_BODY_CHUNKED };
enum route { R_NONE, R_CHAT, R_COMPLETIONS, R_EMBEDDINGS, R_MODELS, R_HEALTH, R_METRICS };

struct conn {
    int fd;
    bool dead;
    bool closing;           /* close once the output is written; read no more requests */
    bool can_read, can_write;   /* edge-triggered readiness not yet used up */
    bool rd_eof;            /* read returned 0 or failed */
    bool hup;               /* the peer shut down its side */
    bool out_stalled;       /* stopped parsing because the client reads too slowly */
    bool deferred;          /* on the deferred list */
    bool body_overflow;

    /* the request being read */
    uint8_t phase, route, method, minor;
    bool keep_alive;
    uint32_t head_len;
    uint64_t content_length;
    uint64_t body_len;      /* chunked: de-chunked bytes so far */
    uint64_t scan_off;      /* chunked: where scanning resumes, from the request start */
    struct chunked chunk;

    struct buf in;          /* the current request starts at in.p + rpos */
    size_t rpos;
    struct buf out;         /* unwritten output starts at out.p + wpos */
    size_t wpos;

    struct seq *gen;        /* the generation this connection waits for */
    struct conn *next;      /* free list, graveyard or deferred list */
    struct conn *all_prev, *all_next;
};

static char tag_listen, tag_signal;

/* One embeddings input: a hash of its text (or token ids) and its size in tokens. */
struct embed_input {
    uint64_t hash;
    uint64_t tokens;
};

static struct {
    const struct mock_config *cfg;
    int ep, lfd, sfd;
    bool stop;
    uint64_t now;           /* CLOCK_MONOTONIC ns, once per loop turn */
    int64_t wall;           /* CLOCK_REALTIME s */
    int64_t started;
    char date[48];
    size_t date_len;
    int64_t date_sec;
    struct conn *free, *graveyard, *deferred, *all;
    uint64_t next_id;
    uint64_t rng;
    size_t model_len[MOCK_MAX_MODELS];
    struct http_request req;
    struct buf scratch;
    struct prefix_hasher hasher;
    struct embed_input inputs[MAX_INPUTS];
    /* counters for /metrics */
    uint64_t requests, failed, conns_total;
    uint32_t conns_open;
    bool accept_warned;
} S;

/* ---- buffers ---- */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fputs("aigw-mockllm: out of memory\n", stderr);
        abort();
    }
    return q;
}

void buf_grow(struct buf *b, size_t need)
{
    if (b->cap >= need)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < need)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

void buf_shrink(struct buf *b, size_t cap)
{
    b->len = 0;
    if (b->cap != cap) {
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}

void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static size_t out_pending(const struct conn *c)
{
    return c->out.len - c->wpos;
}

/* ---- time ---- */

static void update_clock(void)
{
    S.now = clock_mono_ns();
    S.wall = (int64_t)(clock_wall_us() / 1000000u);
    if (S.wall != S.date_sec) {
        struct tm tm;
        time_t t = (time_t)S.wall;
        gmtime_r(&t, &tm);
        S.date_len = strftime(S.date, sizeof S.date, "date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        S.date_sec = S.wall;
    }
}

/* xorshift64*: deterministic, so a --fail-rate run is reproducible. */
static double random01(void)
{
    S.rng ^= S.rng >> 12;
    S.rng ^= S.rng << 25;
    S.rng ^= S.rng >> 27;
    return (double)((S.rng * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}

/* ---- response writing ---- */

static void put_head(struct conn *c, int status, const char *ctype, bool has_length,
                     uint64_t length, bool chunked, const char *extra)
{
    struct buf *o = &c->out;
    buf_reserve(o, 512);
    BUF_LIT(o, "HTTP/1.1 ");
    buf_u64(o, (uint64_t)status);
    buf_put(o, " ", 1);
    buf_str(o, http_reason(status));
    BUF_LIT(o, "\r\n");
    buf_put(o, S.date, S.date_len);
    BUF_LIT(o, "server: aigw-mockllm\r\ncontent-type: ");
    buf_str(o, ctype);
    BUF_LIT(o, "\r\n");
    if (has_length) {
        BUF_LIT(o, "content-length: ");
        buf_u64(o, length);
        BUF_LIT(o, "\r\n");
    }
    if (chunked)
        BUF_LIT(o, "transfer-encoding: chunked\r\n");
    if (!c->keep_alive)
        BUF_LIT(o, "connection: close\r\n");
    else if (c->minor == 0)
        BUF_LIT(o, "connection: keep-alive\r\n");
    if (extra)
        buf_str(o, extra);
    BUF_LIT(o, "\r\n");
}

/* A complete response with a Content-Length body (none on HEAD). */
static void reply(struct conn *c, int status, const char *ctype, const char *body,
                  size_t len, const char *extra)
{
    put_head(c, status, ctype, true, len, false, extra);
    if (c->method != METHOD_HEAD)
        buf_put(&c->out, body, len);
    if (!c->keep_alive)
        c->closing = true;
}

/* An OpenAI-shaped error. keep: the request was read whole, so the connection
 * may stay open if the client wants it. */
static void reply_error(struct conn *c, int status, const char *type, const char *code,
                        const char *message, bool keep, const char *extra)
{
    struct slice ex = { extra ? extra : "", extra ? strlen(extra) : 0 };
    c->keep_alive = c->keep_alive && keep;
    size_t need = 1024 + ex.len + strlen(message) * 6;
    buf_reserve(&c->out, need);
    char *at = c->out.p + c->out.len;
    size_t n = openai_write_error(at, c->out.cap - c->out.len, status, type, code, message,
                                c->keep_alive, ex);
    if (n && c->method == METHOD_HEAD) {
        char *end = memmem(at, n, "\r\n\r\n", 4);
        if (end)
            n = (size_t)(end + 4 - at);
    }
    c->out.len += n;
    if (!c->keep_alive || n == 0)
        c->closing = true;
}

/* ---- streamed events ---- */

struct ev {
    char p[1024];
    size_t n;
};

static void ev_put(struct ev *e, const char *s, size_t n)
{
    memcpy(e->p + e->n, s, n);
    e->n += n;
}

#define EV_LIT(e, s) ev_put((e), (s), sizeof(s) - 1)

static void ev_u64(struct ev *e, uint64_t v)
{
    e->n += fmt_u64(e->p + e->n, v);
}

static void ev_chunk_start(struct ev *e, const struct seq *s)
{
    const char *model = S.cfg->models[s->model];
    e->n = 0;
    EV_LIT(e, "data: {\"id\":\"");
    if (s->api == API_CHAT)
        EV_LIT(e, "chatcmpl-");
    else
        EV_LIT(e, "cmpl-");
    ev_u64(e, s->id);
    if (s->api == API_CHAT)
        EV_LIT(e, "\",\"object\":\"chat.completion.chunk\",\"created\":");
    else
        EV_LIT(e, "\",\"object\":\"text_completion\",\"created\":");
    ev_u64(e, (uint64_t)s->created);
    EV_LIT(e, ",\"model\":\"");
    ev_put(e, model, S.model_len[s->model]);
    EV_LIT(e, "\",\"choices\":[");
}

/* Frames one SSE event as its own HTTP chunk (or raw, close-delimited). */
static void send_event(struct conn *c, const struct seq *s, const char *p, size_t n)
{
    struct buf *o = &c->out;
    buf_reserve(o, n + 16);
    if (s->chunked) {
        o->len += (size_t)snprintf(o->p + o->len, 16, "%zx\r\n", n);
        memcpy(o->p + o->len, p, n);
        o->len += n;
        memcpy(o->p + o->len, "\r\n", 2);
        o->len += 2;
    } else {
        memcpy(o->p + o->len, p, n);
        o->len += n;
    }
}

static void emit_role(struct conn *c, const struct seq *s)
{
    struct ev e;
    ev_chunk_start(&e, s);
    EV_LIT(&e, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
               "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    send_event(c, s, e.p, e.n);
}

static void emit_token(struct conn *c, const struct seq *s, uint32_t k)
{
    struct ev e;
    ev_chunk_start(&e, s);
    if (s->api == API_CHAT)
        EV_LIT(&e, "{\"index\":0,\"delta\":{\"content\":\"tok");
    else
        EV_LIT(&e, "{\"index\":0,\"text\":\"tok");
    ev_u64(&e, k);
    if (s->api == API_CHAT)
        EV_LIT(&e, " \"},\"logprobs\":null,\"finish_reason\":");
    else
        EV_LIT(&e, " \",\"logprobs\":null,\"finish_reason\":");
    if (k + 1 == s->max_tokens)
        EV_LIT(&e, "\"length\"}]}\n\n");
    else
        EV_LIT(&e, "null}]}\n\n");
    send_event(c, s, e.p, e.n);
}

static void emit_usage(struct conn *c, const struct seq *s)
{
    struct ev e;
    ev_chunk_start(&e, s);
    EV_LIT(&e, "],\"usage\":{\"prompt_tokens\":");
    ev_u64(&e, s->prompt_tokens);
    EV_LIT(&e, ",\"total_tokens\":");
    ev_u64(&e, (uint64_t)s->prompt_tokens + s->max_tokens);
    EV_LIT(&e, ",\"completion_tokens\":");
    ev_u64(&e, s->max_tokens);
    EV_LIT(&e, "}}\n\n");
    send_event(c, s, e.p, e.n);
}

uint32_t server_emit(struct seq *s, uint32_t n)
{
    struct conn *c = s->owner;
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (out_pending(c) >= OUT_HIGH)
            break;
        uint32_t k = s->generated + i;
        if (k == 0 && s->api == API_CHAT)
            emit_role(c, s);
        emit_token(c, s, k);
    }
    return i;
}

static void put_usage(struct buf *b, const struct seq *s)
{
    BUF_LIT(b, "\"usage\":{\"prompt_tokens\":");
    buf_u64(b, s->prompt_tokens);
    BUF_LIT(b, ",\"completion_tokens\":");
    buf_u64(b, s->max_tokens);
    BUF_LIT(b, ",\"total_tokens\":");
    buf_u64(b, (uint64_t)s->prompt_tokens + s->max_tokens);
    BUF_LIT(b, "}");
}

static void reply_completion(struct conn *c, const struct seq *s)
{
    struct buf *b = &S.scratch;
    const char *model = S.cfg->models[s->model];
    b->len = 0;
    buf_reserve(b, 512 + (size_t)s->max_tokens * 11);
    if (s->api == API_CHAT) {
        BUF_LIT(b, "{\"id\":\"chatcmpl-");
        buf_u64(b, s->id);
        BUF_LIT(b, "\",\"object\":\"chat.completion\",\"created\":");
    } else {
        BUF_LIT(b, "{\"id\":\"cmpl-");
        buf_u64(b, s->id);
        BUF_LIT(b, "\",\"object\":\"text_completion\",\"created\":");
    }
    buf_u64(b, (uint64_t)s->created);
    BUF_LIT(b, ",\"model\":\"");
    buf_put(b, model, S.model_len[s->model]);
    if (s->api == API_CHAT)
        BUF_LIT(b, "\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    else
        BUF_LIT(b, "\",\"choices\":[{\"index\":0,\"text\":\"");
    buf_reserve(b, (size_t)s->max_tokens * 11 + 16);
    char *p = b->p + b->len;
    for (uint32_t k = 0; k < s->max_tokens; k++) {
        memcpy(p, "tok", 3);
        p += 3;
        p += fmt_u64(p, k);
        *p++ = ' ';
    }
    b->len = (size_t)(p - b->p);
    if (s->api == API_CHAT)
        BUF_LIT(b, "\"},\"logprobs\":null,\"finish_reason\":\"length\"}],");
    else
        BUF_LIT(b, "\",\"logprobs\":null,\"finish_reason\":\"length\"}],");
    put_usage(b, s);
    BUF_LIT(b, "}");
    reply(c, 200, "application/json", b->p, b->len, NULL);
    if (b->cap > BUF_KEEP)
        buf_shrink(b, 64 * 1024);
}

void server_done(struct seq *s)
{
    struct conn *c = s->owner;
    if (s->stream) {
        if (s->include_usage)
            emit_usage(c, s);
        send_event(c, s, "data: [DONE]\n\n", 14);
        if (s->chunked)
            BUF_LIT(&c->out, "0\r\n\r\n");
        if (!c->keep_alive)
            c->closing = true;
    } else {
        reply_completion(c, s);
    }
    c->gen = NULL;
}

/* ---- endpoints ---- */

static void reply_models(struct conn *c)
{
    struct buf *b = &S.scratch;
    b->len = 0;
    BUF_LIT(b, "{\"object\":\"list\",\"data\":[");
    for (unsigned i = 0; i < S.cfg->nmodels; i++) {
        if (i)
            BUF_LIT(b, ",");
        BUF_LIT(b, "{\"id\":\"");
        buf_put(b, S.cfg->models[i], S.model_len[i]);
        BUF_LIT(b, "\",\"object\":\"model\",\"created\":");
        buf_u64(b, (uint64_t)S.started);
        BUF_LIT(b, ",\"owned_by\":\"aigw-mockllm\",\"max_model_len\":");
        buf_u64(b, S.cfg->kv_capacity && S.cfg->kv_capacity < MOCK_MAX_MODEL_LEN
                       ? S.cfg->kv_capacity : MOCK_MAX_MODEL_LEN);
        BUF_LIT(b, "}");
    }
    BUF_LIT(b, "]}");
    reply(c, 200, "application/json", b->p, b->len, NULL);
}

static void metric_head(struct buf *b, const char *name, const char *type, const char *help)
{
    BUF_LIT(b, "# HELP ");
    buf_str(b, name);
    buf_put(b, " ", 1);
    buf_str(b, help);
    BUF_LIT(b, "\n# TYPE ");
    buf_str(b, name);
    buf_put(b, " ", 1);
    buf_str(b, type);
    buf_put(b, "\n", 1);
}

static void metric_u64(struct buf *b, const char *name, const char *type, const char *help,
                       bool labeled, uint64_t v)
{
    metric_head(b, name, type, help);
    buf_str(b, name);
    if (labeled) {
        BUF_LIT(b, "{model_name=\"");
        buf_put(b, S.cfg->models[0], S.model_len[0]);
        BUF_LIT(b, "\"}");
    }
    buf_put(b, " ", 1);
    buf_u64(b, v);
    buf_put(b, "\n", 1);
}

static void reply_metrics(struct conn *c)
{
    const struct engine_stats *st = engine_stats();
    struct buf *b = &S.scratch;
    char num[64];
    b->len = 0;
    metric_u64(b, "vllm:num_requests_running", "gauge",
               "Number of requests in model execution batches.", true, st->running);
    metric_u64(b, "vllm:num_requests_waiting", "gauge",
               "Number of requests waiting to be processed.", true, st->waiting);
    metric_head(b, "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    BUF_LIT(b, "vllm:kv_cache_usage_perc{model_name=\"");
    buf_put(b, S.cfg->models[0], S.model_len[0]);
    double usage = S.cfg->kv_capacity ? (double)st->kv_used / (double)S.cfg->kv_capacity : 0.0;
    buf_put(b, num, (size_t)snprintf(num, sizeof num, "\"} %.6g\n", usage));
    /* vLLM's info gauge of its cache settings. In vLLM the prefix cache IS the KV
     * cache (finished requests' blocks stay there until evicted for new ones), so
     * its size is num_gpu_blocks; this mock keeps a separate LRU for prefixes, and
     * that LRU is what a router's index should mirror, so it is the figure when set. */
    uint64_t cache_tokens = S.cfg->prefix_cache ? S.cfg->prefix_cache : S.cfg->kv_capacity;
    if (cache_tokens / MOCK_BLOCK_TOKENS) {
        metric_head(b, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
        BUF_LIT(b, "vllm:cache_config_info{block_size=\"");
        buf_u64(b, MOCK_BLOCK_TOKENS);
        BUF_LIT(b, "\",cache_dtype=\"auto\",enable_prefix_caching=\"");
        buf_str(b, S.cfg->prefix_cache ? "True" : "False");
        BUF_LIT(b, "\",gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"0\",num_gpu_blocks=\"");
        buf_u64(b, cache_tokens / MOCK_BLOCK_TOKENS);
        BUF_LIT(b, "\",num_gpu_blocks_override=\"None\",swap_space=\"4\"} 1.0\n");
    }
    metric_u64(b, "vllm:request_success_total", "counter",
               "Count of successfully processed requests.", true, st->success);
    metric_u64(b, "vllm:prefix_cache_queries", "counter",
               "Prefix cache queries, in terms of number of queried tokens.", true,
               st->prefix_queries);
    metric_u64(b, "vllm:prefix_cache_hits", "counter",
               "Prefix cache hits, in terms of number of cached tokens.", true, st->prefix_hits);
    metric_u64(b, "vllm:num_preemptions_total", "counter",
               "Cumulative number of preemptions from the engine.", true, st->preemptions);
    metric_u64(b, "vllm:prompt_tokens_total", "counter",
               "Number of prefill tokens processed.", true, st->prompt_tokens);
    metric_u64(b, "vllm:generation_tokens_total", "counter",
               "Number of generation tokens processed.", true, st->generation_tokens);
    metric_u64(b, "mockllm_requests_total", "counter",
               "Requests received on the /v1/ endpoints.", false, S.requests);
    metric_u64(b, "mockllm_aborted_total", "counter",
               "Generations stopped because the client went away.", false, st->aborted);
    metric_u64(b, "mockllm_failed_total", "counter",
               "Requests answered 500 by --fail-rate.", false, S.failed);
    metric_u64(b, "mockllm_connections_total", "counter",
               "Client connections accepted.", false, S.conns_total);
    metric_u64(b, "mockllm_open_connections", "gauge",
               "Client connections open.", false, S.conns_open);
    reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", b->p, b->len, NULL);
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void reply_embeddings(struct conn *c, uint32_t ninputs, unsigned model)
{
    struct buf *b = &S.scratch;
    uint64_t tokens = 0;
    char num[32];
    b->len = 0;
    BUF_LIT(b, "{\"object\":\"list\",\"data\":[");
    for (uint32_t i = 0; i < ninputs; i++) {
        const struct embed_input *in = &S.inputs[i];
        double v[EMBED_DIMS], norm = 0;
        for (unsigned d = 0; d < EMBED_DIMS; d++) {
            v[d] = (double)(mix64(in->hash + d) >> 11) * 0x1.0p-52 - 1.0;
            norm += v[d] * v[d];
        }
        norm = norm > 0 ? sqrt(norm) : 1;
        if (i)
            BUF_LIT(b, ",");
        BUF_LIT(b, "{\"object\":\"embedding\",\"index\":");
        buf_u64(b, i);
        BUF_LIT(b, ",\"embedding\":[");
        for (unsigned d = 0; d < EMBED_DIMS; d++)
            buf_put(b, num, (size_t)snprintf(num, sizeof num, "%s%.6f", d ? "," : "", v[d] / norm));
        BUF_LIT(b, "]}");
        tokens += in->tokens ? in->tokens : 1;
    }
    BUF_LIT(b, "],\"model\":\"");
    buf_put(b, S.cfg->models[model], S.model_len[model]);
    BUF_LIT(b, "\",\"usage\":{\"prompt_tokens\":");
    buf_u64(b, tokens);
    BUF_LIT(b, ",\"total_tokens\":");
    buf_u64(b, tokens);
    BUF_LIT(b, "}}");
    reply(c, 200, "application/json", b->p, b->len, NULL);
}

static void put_stream_head(struct conn *c, struct seq *s)
{
    /* HTTP/1.0 has no chunked coding: the stream ends when the connection does. */
    s->chunked = c->minor >= 1;
    if (!s->chunked)
        c->keep_alive = false;
    /* as SSE servers such as sse-starlette do: tells nginx not to buffer the stream */
    put_head(c, 200, "text/event-stream; charset=utf-8", false, 0, s->chunked,
             "x-accel-buffering: no\r\ncache-control: no-cache\r\n");
}

/* What the simulation takes from a request's prompt, gathered from the pieces
 * aigw's reader shows (src/proto/openai.h): only the field the route reads, sized
 * in raw bytes (escapes as sent) at MOCK_BYTES_PER_TOKEN, as the engine's
 * tokenizer would see them. */
struct prompt_reading {
    uint8_t source;                 /* enum openai_prompt_source the route reads */
    bool embedding;
    struct prefix_hasher *hasher;   /* NULL: no prefix cache */
    uint64_t bytes, ids;
    uint32_t ninputs;               /* embeddings inputs in S.inputs */
    uint32_t item;                  /* the batch item of the last input */
    bool too_many;
};

static void take_prompt_piece(void *ctx, const struct openai_prompt_piece *piece)
{
    struct prompt_reading *pr = ctx;
    if (piece->source != pr->source)
        return;
    if (piece->token_id)
        pr->ids++;
    else
        pr->bytes += piece->raw.len;
    if (pr->hasher && !piece->token_id)
        prefix_hasher_feed(pr->hasher, piece->raw.p, piece->raw.len);
    if (!pr->embedding)
        return;
    /* each item of an "input" batch is one input, its own vector */
    if (pr->ninputs == 0 || piece->item != pr->item) {
        if (pr->ninputs == MAX_INPUTS) {
            pr->too_many = true;
            return;
        }
        S.inputs[pr->ninputs++] = (struct embed_input){ 0xcbf29ce484222325ull, 0 };
        pr->item = piece->item;
    }
    struct embed_input *in = &S.inputs[pr->ninputs - 1];
    in->hash = hash_bytes_seeded(piece->raw.p, piece->raw.len, in->hash);
    if (piece->token_id)
        in->tokens++;
    else
        in->tokens = (piece->raw.len + MOCK_BYTES_PER_TOKEN - 1) / MOCK_BYTES_PER_TOKEN;
}

static void handle_model_request(struct conn *c, const char *body, size_t len)
{
    enum api_kind kind = c->route == R_CHAT ? API_CHAT
                       : c->route == R_COMPLETIONS ? API_COMPLETION : API_EMBEDDING;
    bool hashing = prefix_cache_enabled() && kind != API_EMBEDDING;
    struct prompt_reading pr = {
        .source = kind == API_CHAT ? OPENAI_FROM_MESSAGES
                : kind == API_COMPLETION ? OPENAI_FROM_PROMPT : OPENAI_FROM_INPUT,
        .embedding = kind == API_EMBEDDING,
        .hasher = hashing ? &S.hasher : NULL,
    };
    /* a request that names no model gets the first one, as vLLM does */
    const struct openai_read_options opt = {
        .model_optional = true, .on_prompt = take_prompt_piece, .ctx = &pr,
    };
    struct openai_request r;
    const char *why;
    char msg[512];

    if (hashing)
        prefix_hasher_reset(&S.hasher);
    if (openai_read_request(body, len, &opt, &r, &why) != OPENAI_OK) {
        reply_error(c, 400, "invalid_request_error", NULL, why, true, NULL);
        return;
    }
    if (pr.too_many) {
        reply_error(c, 400, "invalid_request_error", NULL, "too many inputs", true, NULL);
        return;
    }
    unsigned model = 0;
    char decoded[OPENAI_MAX_MODEL_LEN];
    struct slice name = r.model;
    if (r.model_escaped) {
        /* a model name written with JSON escapes is the name it decodes to */
        name.len = openai_unescape(r.model, decoded, sizeof decoded);
        name.p = decoded;
    }
    if (name.p) {
        for (model = 0; model < S.cfg->nmodels; model++)
            if (S.model_len[model] == name.len &&
                memcmp(S.cfg->models[model], name.p, name.len) == 0)
                break;
        if (model == S.cfg->nmodels) {
            snprintf(msg, sizeof msg, "The model `%.*s` does not exist.", (int)name.len, name.p);
            reply_error(c, 404, "invalid_request_error", "model_not_found", msg, true, NULL);
            return;
        }
    }
    if (kind == API_EMBEDDING && pr.ninputs == 0) {
        reply_error(c, 400, "invalid_request_error", NULL, "input must not be empty", true, NULL);
        return;
    }
    if (r.has_max_tokens && r.max_tokens == 0) {
        reply_error(c, 400, "invalid_request_error", NULL, "max_tokens must be at least 1",
                    true, NULL);
        return;
    }
    uint64_t completion = r.has_max_tokens ? r.max_tokens : S.cfg->max_tokens;
    uint64_t prompt = (pr.bytes + MOCK_BYTES_PER_TOKEN - 1) / MOCK_BYTES_PER_TOKEN + pr.ids;
    if (prompt == 0)
        prompt = 1;
    uint64_t limit = MOCK_MAX_MODEL_LEN;
    if (S.cfg->kv_capacity && S.cfg->kv_capacity < limit)
        limit = S.cfg->kv_capacity;
    if (kind != API_EMBEDDING && prompt + completion > limit) {
        snprintf(msg, sizeof msg,
                 "This model's maximum context length is %llu tokens. However, you requested "
                 "%llu tokens (%llu in the messages, %llu in the completion). Please reduce "
                 "the length of the messages or completion.",
                 (unsigned long long)limit, (unsigned long long)(prompt + completion),
                 (unsigned long long)prompt, (unsigned long long)completion);
        reply_error(c, 400, "invalid_request_error", NULL, msg, true, NULL);
        return;
    }
    if (S.cfg->fail_rate > 0 && random01() < S.cfg->fail_rate) {
        S.failed++;
        reply_error(c, 500, "server_error", "internal_error",
                    "simulated engine failure (--fail-rate)", true, NULL);
        return;
    }
    if (kind == API_EMBEDDING) {
        reply_embeddings(c, pr.ninputs, model);
        return;
    }

    uint64_t cached = 0;
    if (hashing) {
        uint32_t blocks = prefix_cache_query(S.hasher.hashes, S.hasher.nblocks);
        cached = (uint64_t)blocks * MOCK_BLOCK_TOKENS;
        if (cached >= prompt)       /* the last prompt token is always computed */
            cached = prompt - 1;
        engine_note_prefix(prompt, cached);
    }

    struct seq *s = seq_alloc();
    s->owner = c;
    s->id = ++S.next_id;
    s->created = S.wall;
    s->model = (uint16_t)model;
    s->api = (uint8_t)kind;
    s->stream = r.stream;
    s->include_usage = r.stream && r.include_usage;
    s->prompt_tokens = (uint32_t)prompt;
    s->cached_tokens = (uint32_t)cached;
    s->max_tokens = (uint32_t)completion;
    c->gen = s;
    if (s->stream)
        put_stream_head(c, s);
    engine_submit(s, S.now);
    if (engine_take_if_due(s, S.now))
        engine_step(s, S.now);      /* may finish s at once */
}

static uint8_t route_of(struct slice path)
{
#define PATH_IS(lit) (path.len == sizeof(lit) - 1 && memcmp(path.p, lit, path.len) == 0)
    if (PATH_IS("/v1/chat/completions"))
        return R_CHAT;
    if (PATH_IS("/v1/completions"))
        return R_COMPLETIONS;
    if (PATH_IS("/v1/embeddings"))
        return R_EMBEDDINGS;
    if (PATH_IS("/v1/models"))
        return R_MODELS;
    if (PATH_IS("/health"))
        return R_HEALTH;
    if (PATH_IS("/metrics"))
        return R_METRICS;
    return R_NONE;
#undef PATH_IS
}

static void handle_request(struct conn *c, const char *body, size_t len)
{
    bool get = c->method == METHOD_GET || c->method == METHOD_HEAD;
    switch (c->route) {
    case R_NONE:
        reply_error(c, 404, "invalid_request_error", "not_found", "Not Found", true, NULL);
        return;
    case R_HEALTH:
    case R_MODELS:
    case R_METRICS:
        if (!get) {
            reply_error(c, 405, "invalid_request_error", "method_not_allowed",
                        "Method Not Allowed", true, "Allow: GET, HEAD\r\n");
        } else if (c->route == R_HEALTH) {
            reply(c, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
        } else if (c->route == R_MODELS) {
            reply_models(c);
        } else {
            reply_metrics(c);
        }
        return;
    default:
        S.requests++;
        if (c->method != METHOD_POST) {
            reply_error(c, 405, "invalid_request_error", "method_not_allowed",
                        "Method Not Allowed", true, "Allow: POST\r\n");
            return;
        }
        handle_model_request(c, body, len);
        return;
    }
}

/* ---- request framing ---- */

static void on_chunk_data(void *ctx, const char *p, size_t n)
{
    struct conn *c = ctx;
    if (c->body_overflow)
        return;
    if (c->body_len + n > MAX_BODY) {
        c->body_overflow = true;
        return;
    }
    /* De-chunk in place: the decoded body never overtakes the raw bytes. */
    memmove(c->in.p + c->rpos + c->head_len + c->body_len, p, n);
    c->body_len += n;
}

/* Scans newly arrived chunked bytes; true once the body is complete. */
static bool scan_chunked(struct conn *c)
{
    char *base = c->in.p + c->rpos;
    size_t avail = c->in.len - c->rpos;
    if (avail <= c->scan_off)
        return false;
    const char *why = NULL;
    ssize_t n = chunked_scan(&c->chunk, base + c->scan_off, avail - c->scan_off,
                             on_chunk_data, c, &why);
    if (n < 0) {
        reply_error(c, 400, "invalid_request_error", NULL,
                    why ? why : "malformed chunked body", false, NULL);
        return false;
    }
    if (c->body_overflow) {
        reply_error(c, 413, "invalid_request_error", "request_too_large",
                    "request body too large", false, NULL);
        return false;
    }
    size_t body_end = c->head_len + c->body_len;
    if (!c->chunk.done) {
        c->in.len = c->rpos + body_end;     /* framing already consumed */
        c->scan_off = body_end;
        return false;
    }
    size_t raw_end = c->scan_off + (size_t)n;
    size_t tail = avail - raw_end;
    memmove(base + body_end, base + raw_end, tail);
    c->in.len = c->rpos + body_end + tail;
    return true;
}

/* A parsed head: note what the request needs; false if it was refused. */
/* "traceparent N FIRST-VALUE" ("-" when none): what a test of aigw's tracing
 * checks the backend received. */
static void log_traceparent(const struct http_request *q)
{
    unsigned n = 0;
    struct slice first = { "-", 1 };
    for (unsigned i = 0; i < q->nheaders; i++) {
        if (q->headers[i].kind != HK_TRACEPARENT)
            continue;
        if (n++ == 0)
            first = q->headers[i].value;
    }
    printf("traceparent %u %.*s\n", n, (int)first.len, first.p);
    fflush(stdout);
}

static bool start_request(struct conn *c)
{
    const struct http_request *q = &S.req;
    c->head_len = (uint32_t)q->head_len;
    c->minor = q->minor;
    c->keep_alive = q->keep_alive;
    c->method = q->method_id;
    c->route = route_of(q->path);
    c->body_len = 0;
    c->body_overflow = false;
    c->phase = PH_HEAD;
    if (S.cfg->log_traceparent)
        log_traceparent(q);
    if (q->body == BODY_LENGTH && q->content_length > 0) {
        if (q->content_length > MAX_BODY) {
            reply_error(c, 413, "invalid_request_error", "request_too_large",
                        "request body too large", false, NULL);
            return false;
        }
        c->content_length = q->content_length;
        c->phase = PH_BODY_LENGTH;
    } else if (q->body == BODY_CHUNKED) {
        chunked_init(&c->chunk);
        c->scan_off = c->head_len;
        c->phase = PH_BODY_CHUNKED;
    }
    return true;
}

/* Reads one request from the input buffer and answers it; false when more bytes
 * are needed or the connection is done. */
static bool conn_advance(struct conn *c)
{
    size_t avail = c->in.len - c->rpos;
    if (c->phase == PH_HEAD) {
        if (avail == 0)
            return false;
        const char *why = NULL;
        int rc = http_parse_request(c->in.p + c->rpos, avail, MAX_HEAD, &S.req, &why);
        if (rc == HTTP_INCOMPLETE)
            return false;
        if (rc != HTTP_OK) {
            c->method = METHOD_OTHER;
            c->keep_alive = false;
            if (rc == HTTP_TOO_LARGE)
                reply_error(c, 431, "invalid_request_error", "request_header_too_large",
                            why ? why : "request head too large", false, NULL);
            else
                reply_error(c, 400, "invalid_request_error", NULL,
                            why ? why : "malformed request", false, NULL);
            return false;
        }
        if (!start_request(c))
            return false;
        if (S.req.expect_continue && c->phase != PH_HEAD && avail == c->head_len)
            BUF_LIT(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    }

    size_t end = c->head_len;
    const char *body = NULL;
    size_t body_len = 0;
    if (c->phase == PH_BODY_LENGTH) {
        end = c->head_len + c->content_length;
        if (avail < end)
            return false;
        body = c->in.p + c->rpos + c->head_len;
        body_len = c->content_length;
    } else if (c->phase == PH_BODY_CHUNKED) {
        if (!scan_chunked(c))
            return false;
        body = c->in.p + c->rpos + c->head_len;
        body_len = c->body_len;
        end = c->head_len + c->body_len;
    }
    c->phase = PH_HEAD;
    handle_request(c, body, body_len);
    c->rpos += end;
    if (c->rpos == c->in.len)
        c->rpos = c->in.len = 0;
    return true;
}

static void conn_process(struct conn *c)
{
    c->out_stalled = false;
    while (!c->dead && !c->closing && !c->gen) {
        if (out_pending(c) >= OUT_HIGH) {
            c->out_stalled = true;
            break;
        }
        if (!conn_advance(c))
            break;
    }
}

/* ---- connection I/O ---- */

static void conn_close(struct conn *c)
{
    if (c->dead)
        return;
    if (c->gen) {
        engine_abort(c->gen, S.now);
        c->gen = NULL;
    }
    if (c->closing && !c->rd_eof) {
        /* Lingering close: drain what the client already sent, so the kernel does
         * not answer it with a reset that could destroy our last response. */
        static char sink[16384];
        shutdown(c->fd, SHUT_WR);
        for (int i = 0; i < 16 && read(c->fd, sink, sizeof sink) > 0; i++)
            ;
    }
    close(c->fd);
    c->fd = -1;
    c->dead = true;
    S.conns_open--;
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        S.all = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    c->next = S.graveyard;
    S.graveyard = c;
}

/* Room to read into, making it if the current request needs it. */
static size_t in_room(struct conn *c)
{
    if (c->rpos) {
        memmove(c->in.p, c->in.p + c->rpos, c->in.len - c->rpos);
        c->in.len -= c->rpos;
        c->rpos = 0;
    }
    if (c->in.len < c->in.cap)
        return c->in.cap - c->in.len;
    if (c->gen || c->closing)
        return 0;           /* busy: pipelined requests wait in the socket */
    size_t want;
    switch (c->phase) {
    case PH_BODY_LENGTH:
        want = c->head_len + c->content_length;
        break;
    case PH_BODY_CHUNKED:
        want = c->in.cap * 2;
        if (want > c->head_len + MAX_BODY + MAX_HEAD)
            want = c->head_len + MAX_BODY + MAX_HEAD;
        break;
    default:
        want = c->in.cap * 2;
        if (want > 2 * MAX_HEAD)
            want = 2 * MAX_HEAD;
        break;
    }
    if (want > c->in.cap)
        buf_grow(&c->in, want);
    return c->in.cap - c->in.len;
}

/* One read; true if it brought bytes. */
static bool conn_read_some(struct conn *c)
{
    size_t room = in_room(c);
    if (room == 0)
        return false;
    ssize_t n = read(c->fd, c->in.p + c->in.len, room);
    if (n > 0) {
        c->in.len += (size_t)n;
        /* A short read drained the socket; the next arrival raises a new edge.
         * After a hang-up keep reading until EOF instead. */
        if ((size_t)n < room && !c->hup)
            c->can_read = false;
        return true;
    }
    if (n < 0 && errno == EINTR)
        return true;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->can_read = false;
        return false;
    }
    c->rd_eof = true;
    c->can_read = false;
    return false;
}

static void conn_flush(struct conn *c)
{
    while (c->wpos < c->out.len && c->can_write) {
        size_t len = c->out.len - c->wpos;
        ssize_t n = write(c->fd, c->out.p + c->wpos, len);
        if (n > 0) {
            c->wpos += (size_t)n;
            if ((size_t)n < len)
                c->can_write = false;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->can_write = false;
            break;
        }
        conn_close(c);      /* EPIPE, ECONNRESET: the client is gone */
        return;
    }
    if (c->wpos == c->out.len) {
        c->wpos = c->out.len = 0;
        if (c->out.cap > BUF_KEEP)
            buf_shrink(&c->out, OUT_INITIAL);
        if (c->closing) {
            conn_close(c);
            return;
        }
    } else if (c->wpos >= OUT_LOW) {
        memmove(c->out.p, c->out.p + c->wpos, c->out.len - c->wpos);
        c->out.len -= c->wpos;
        c->wpos = 0;
    }
    if (c->gen && c->gen->write_blocked && out_pending(c) < OUT_LOW)
        engine_unblock(c->gen);
}

static void defer(struct conn *c)
{
    if (c->deferred)
        return;
    c->deferred = true;
    c->next = S.deferred;
    S.deferred = c;
}

/* Reads, answers and writes as far as the connection allows right now. */
static void conn_pump(struct conn *c)
{
    for (unsigned round = 0; !c->dead; round++) {
        bool again = false;
        if (c->can_read && !c->rd_eof)
            again = conn_read_some(c);
        conn_process(c);
        if (c->dead)
            return;
        conn_flush(c);
        if (c->dead)
            return;
        if (c->out_stalled && out_pending(c) < OUT_LOW)
            again = true;
        if (!again || c->rd_eof)
            break;
        if (round >= PUMP_ROUNDS) {
            defer(c);       /* let the other connections have a turn */
            return;
        }
    }
    if (c->dead || !(c->rd_eof || c->hup))
        return;
    if (c->gen || out_pending(c) == 0) {
        conn_close(c);      /* counts an abort if a generation was in flight */
        return;
    }
    c->closing = true;      /* write what is owed, then close */
}

static struct conn *conn_new(int fd)
{
    struct conn *c = S.free;
    if (c) {
        S.free = c->next;
    } else {
        c = calloc(1, sizeof *c);
        if (!c)
            return NULL;
    }
    struct buf in = c->in, out = c->out;
    memset(c, 0, sizeof *c);
    c->in = in;
    c->out = out;
    c->in.len = c->out.len = 0;
    if (c->in.cap != IN_INITIAL)
        buf_shrink(&c->in, IN_INITIAL);
    if (c->out.cap != OUT_INITIAL)
        buf_shrink(&c->out, OUT_INITIAL);
    c->fd = fd;
    c->can_write = true;
    c->all_next = S.all;
    if (S.all)
        S.all->all_prev = c;
    S.all = c;
    S.conns_open++;
    S.conns_total++;
    return c;
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(S.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && !S.accept_warned) {
                fprintf(stderr, "aigw-mockllm: accept: %s\n", strerror(errno));
                S.accept_warned = true;
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_new(fd);
        if (!c) {
            close(fd);
            continue;
        }
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                  .data.ptr = c };
        if (epoll_ctl(S.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            conn_close(c);
    }
}

static void on_conn_event(struct conn *c, uint32_t events)
{
    if (c->dead)
        return;
    if (events & EPOLLERR) {
        conn_close(c);
        return;
    }
    if (events & EPOLLOUT)
        c->can_write = true;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
        c->can_read = true;
    if (events & (EPOLLRDHUP | EPOLLHUP))
        c->hup = true;
    conn_pump(c);
}

static void run_deferred(void)
{
    struct conn *list = S.deferred;
    S.deferred = NULL;
    while (list) {
        struct conn *c = list;
        list = c->next;
        c->deferred = false;
        if (!c->dead)
            conn_pump(c);
    }
}

static void run_timers(void)
{
    struct seq *s;
    for (unsigned budget = TIMER_BUDGET; budget && (s = engine_pop_due(S.now)); budget--) {
        struct conn *c = s->owner;
        engine_step(s, S.now);      /* may finish and free s */
        if (c->gen)
            conn_flush(c);
        else
            conn_pump(c);           /* answer pipelined requests, or close */
    }
}

static void reap(void)
{
    struct conn *keep = NULL;
    while (S.graveyard) {
        struct conn *c = S.graveyard;
        S.graveyard = c->next;
        if (c->deferred) {          /* still linked from the deferred list */
            c->next = keep;
            keep = c;
            continue;
        }
        if (c->in.cap > BUF_KEEP)
            buf_shrink(&c->in, IN_INITIAL);
        if (c->out.cap > BUF_KEEP)
            buf_shrink(&c->out, OUT_INITIAL);
        c->next = S.free;
        S.free = c;
    }
    S.graveyard = keep;
}

static int wait_events(struct epoll_event *evs)
{
    uint64_t deadline;
    struct timespec ts, *tp = NULL;
    if (S.deferred) {
        ts = (struct timespec){ 0, 0 };
        tp = &ts;
    } else if (engine_next_deadline(&deadline)) {
        update_clock();
        uint64_t d = deadline > S.now ? deadline - S.now : 0;
        ts.tv_sec = (time_t)(d / 1000000000ull);
        ts.tv_nsec = (long)(d % 1000000000ull);
        tp = &ts;
    }
    int n = epoll_pwait2(S.ep, evs, MAX_EVENTS, tp, NULL);
    if (n < 0 && errno == ENOSYS) {
        int ms = tp ? (int)(tp->tv_sec * 1000 + (tp->tv_nsec + 999999) / 1000000) : -1;
        n = epoll_wait(S.ep, evs, MAX_EVENTS, ms);
    }
    return n;
}

static void shutdown_all(void)
{
    for (struct conn *c = S.deferred; c; c = c->next)
        c->deferred = false;
    S.deferred = NULL;
    while (S.all)
        conn_close(S.all);
    reap();
    while (S.free) {
        struct conn *c = S.free;
        S.free = c->next;
        buf_free(&c->in);
        buf_free(&c->out);
        free(c);
    }
    buf_free(&S.scratch);
}

int server_run(const struct mock_config *cfg, int listen_fd)
{
    struct epoll_event evs[MAX_EVENTS];
    sigset_t mask;

    memset(&S, 0, sizeof S);
    S.cfg = cfg;
    S.lfd = listen_fd;
    S.rng = 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < cfg->nmodels; i++)
        S.model_len[i] = strlen(cfg->models[i]);
    update_clock();
    S.started = S.wall;
    buf_grow(&S.scratch, 64 * 1024);

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    S.sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    S.ep = epoll_create1(EPOLL_CLOEXEC);
    if (S.sfd < 0 || S.ep < 0) {
        perror("aigw-mockllm: epoll/signalfd");
        return 1;
    }
    struct epoll_event lev = { .events = EPOLLIN | EPOLLET, .data.ptr = &tag_listen };
    struct epoll_event sev = { .events = EPOLLIN, .data.ptr = &tag_signal };
    if (epoll_ctl(S.ep, EPOLL_CTL_ADD, S.lfd, &lev) < 0 ||
        epoll_ctl(S.ep, EPOLL_CTL_ADD, S.sfd, &sev) < 0) {
        perror("aigw-mockllm: epoll_ctl");
        return 1;
    }

    while (!S.stop) {
        int n = wait_events(evs);
        if (n < 0 && errno != EINTR) {
            perror("aigw-mockllm: epoll_wait");
            break;
        }
        update_clock();
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &tag_listen)
                on_accept();
            else if (tag == &tag_signal)
                S.stop = true;
            else
                on_conn_event(tag, evs[i].events);
        }
        run_deferred();
        run_timers();
        reap();
    }

    shutdown_all();
    engine_fini();
    close(S.ep);
    close(S.sfd);
    return 0;
}
