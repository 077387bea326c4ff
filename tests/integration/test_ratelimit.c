/* Rate limits, quotas and usage metering end to end: limit accuracy with
 * concurrent clients on both shards, 429 answers and their headers, the
 * reservation (prompt estimate + max_tokens) settled against the real usage,
 * a stream's usage read while its body stays on the splice path, the daily
 * quota's reset at 00:00 UTC (with a shifted clock), and spent allowance kept
 * across a reload. */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>


TestSuite(ratelimit, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

#define KEY_A "sk-itest-rl-alice-4Kq9Zt"
#define KEY_B "sk-itest-rl-bob-8Hn2Wy"
#define KEY_NEW "sk-itest-rl-newbie-3Jd7Lp"

/* ---- keys files ---- */

/* ---- a scripted backend ---- */

/* What the SSE backend streams: a role-only first chunk, `events` content
 * chunks of `bytes` bytes of text each, a finish chunk without content, the
 * usage chunk (7 + 33, when `usage`), then [DONE]. Paced: one write per event,
 * 3 ms apart; else the whole body in one write. Either way the head goes alone
 * first, so the whole body is relayed after it, not with it. */
struct sse_spec {
    int events, bytes;
    bool usage, paced;
    int gap_ms;         /* paced: between events (0: 3 ms) */
};

enum sb_mode {
    SB_JSON,            /* a chat completion whose usage says usage_prompt / usage_completion */
    SB_SSE,             /* the stream of sse_body(), close-delimited */
};

struct script_backend {
    int listen_fd, port;
    pthread_t thread;
    _Atomic int mode;
    _Atomic int usage_prompt, usage_completion;
    _Atomic(const char *) usage_text;   /* SB_JSON: the usage object's members verbatim (NULL: the two above) */
    struct sse_spec sse;            /* set before the stream's request */
    atomic_int json_pad;            /* SB_JSON: bytes of content (0: "ok") */
    atomic_bool json_chunked;
    atomic_bool own_ratelimit_headers;  /* SB_JSON: the backend sends x-ratelimit-* of its own */
    atomic_int requests;
};


static char *sse_body(const struct sse_spec *sp, size_t *len_out)
{
    static const char pre[] = "data: {\"id\":\"chatcmpl-s\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                              "\"model\":\"scripted\",\"choices\":[{\"index\":0,";
    size_t cap = (size_t)(sp->events + 4) * ((size_t)sp->bytes + 512), len = 0;
    char *b = malloc(cap);
    len += (size_t)sprintf(b + len, "%s\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
                           pre);
    for (int i = 0; i < sp->events; i++) {
        len += (size_t)sprintf(b + len, "%s\"delta\":{\"content\":\"", pre);
        for (int k = 0; k < sp->bytes; k++)
            b[len++] = (k % 6 == 5) ? ' ' : (char)('a' + (i * 7 + k) % 26);
        len += (size_t)sprintf(b + len, "\"},\"finish_reason\":null}]}\n\n");
    }
    len += (size_t)sprintf(b + len, "%s\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n", pre);
    if (sp->usage)
        len += (size_t)sprintf(b + len,
                               "data: {\"id\":\"chatcmpl-s\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                               "\"model\":\"scripted\",\"choices\":[],"
                               "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":33,\"total_tokens\":40}}\n\n");
    len += (size_t)sprintf(b + len, "data: [DONE]\n\n");
    *len_out = len;
    return b;
}

static void serve_sse(struct script_backend *b, int fd)
{
    struct sse_spec sp = b->sse;
    size_t len;
    char *body = sse_body(&sp, &len);
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                               "Connection: close\r\n\r\n";
    if (h_write_all(fd, head, sizeof head - 1)) {
        h_sleep_ms(150 * h_slow());
        if (!sp.paced) {
            h_write_all(fd, body, len);
        } else {
            for (char *p = body, *e; p < body + len; p = e + 2) {
                e = memmem(p, (size_t)(body + len - p), "\n\n", 2);
                if (!h_write_all(fd, p, (size_t)(e + 2 - p)))
                    break;
                h_sleep_ms(sp.gap_ms ? sp.gap_ms : 3);
            }
        }
    }
    free(body);
}

/* The JSON answer: its message's content is "ok", or json_pad bytes of text;
 * with json_pad, the head goes alone first and the body follows in one write,
 * with Content-Length or (json_chunked) as one chunk. */
static void serve_json(struct script_backend *b, int fd)
{
    int p = atomic_load(&b->usage_prompt), q = atomic_load(&b->usage_completion);
    int pad = atomic_load(&b->json_pad);
    bool chunked = atomic_load(&b->json_chunked);
    char *body = malloc((size_t)pad + 1024);
    int bl = sprintf(body, "{\"id\":\"chatcmpl-j\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"scripted\","
                           "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    if (!pad)
        bl += sprintf(body + bl, "ok");
    for (int k = 0; k < pad; k++)
        body[bl++] = (k % 5 == 4) ? ' ' : (char)('a' + k % 26);
    const char *usage_text = atomic_load(&b->usage_text);
    if (usage_text)
        bl += sprintf(body + bl, "\"},\"finish_reason\":\"stop\"}],\"usage\":{%s}}", usage_text);
    else
        bl += sprintf(body + bl,
                      "\"},\"finish_reason\":\"stop\"}],"
                      "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}",
                      p, q, p + q);
    char head[256];
    int hl = chunked ? snprintf(head, sizeof head,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                                "Connection: close\r\n\r\n")
                     : snprintf(head, sizeof head,
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                "%sConnection: close\r\n\r\n",
                                bl,
                                atomic_load(&b->own_ratelimit_headers)
                                    ? "X-RateLimit-Limit-Tokens: 999999\r\nx-ratelimit-remaining-tokens: 999998\r\n"
                                    : "");
    if (!pad) {
        if (h_write_all(fd, head, (size_t)hl))
            h_write_all(fd, body, (size_t)bl);
    } else if (h_write_all(fd, head, (size_t)hl)) {
        h_sleep_ms(150 * h_slow());
        if (chunked) {
            char size[32];
            int sl = snprintf(size, sizeof size, "%x\r\n", bl);
            if (h_write_all(fd, size, (size_t)sl) && h_write_all(fd, body, (size_t)bl))
                h_write_all(fd, "\r\n0\r\n\r\n", 7);
        } else {
            h_write_all(fd, body, (size_t)bl);
        }
    }
    free(body);
}

/* One connection at a time, closed after each answer (so aigw never pools one). */
static void *script_main(void *arg)
{
    struct script_backend *b = arg;
    for (;;) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        if (h_read_request(fd)) {
            atomic_fetch_add(&b->requests, 1);
            if (atomic_load(&b->mode) == SB_SSE)
                serve_sse(b, fd);
            else
                serve_json(b, fd);
            shutdown(fd, SHUT_WR);
            char sink[256];
            while (read(fd, sink, sizeof sink) > 0) {
            }
        }
        close(fd);
    }
}

static void script_start(struct script_backend *b, enum sb_mode mode)
{
    memset(b, 0, sizeof *b);
    atomic_store(&b->mode, mode);
    atomic_store(&b->usage_prompt, 10);
    atomic_store(&b->usage_completion, 40);
    b->listen_fd = h_listen_loopback(&b->port);
    cr_assert_eq(pthread_create(&b->thread, NULL, script_main, b), 0);
}

/* ---- helpers ---- */

/* A header's value as a number; -1 when absent or not a number. */
static long long header_num(const struct h_resp *r, const char *name)
{
    const char *v = h_header(r, name);
    if (!v || !*v)
        return -1;
    char *end;
    long long n = strtoll(v, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    return *end ? -1 : n;
}

static int once(int port, const char *headers, const char *body, struct h_resp *r)
{
    struct h_conn c;
    memset(r, 0, sizeof *r);
    if (h_connect(&c, port) < 0)
        return H_ECLOSED;
    char hdr[1024];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", headers ? headers : "");
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, body, r, T_RESP);
    h_close(&c);
    return rc;
}

#define EXPECT(rc, r, st, what)                                                                         \
    do {                                                                                                \
        cr_assert_eq((rc), H_OK, "%s: no complete response (%d); aigw stderr:\n%s", (what), (rc),       \
                     h_tail("aigw"));                                                                   \
        cr_assert_eq((r).status, (st), "%s: status %d, want %d: %s\n%s", (what), (r).status, (st),      \
                     (r).body ? (r).body : "", (r).head ? (r).head : "");                               \
    } while (0)

/* Waits until the metric reaches want (settlement runs as the response ends). */
static double metric_settled(int admin_port, const char *query, double want)
{
    int64_t end = h_now_ms() + 2000 * h_slow();
    double v;
    while ((v = h_metric0(admin_port, query)) != want && h_now_ms() < end)
        h_sleep_ms(10);
    return v;
}

/* ---- limit accuracy under concurrent clients ---- */

#define LOAD_THREADS 8

struct load {
    int port;
    const char *auth;
    const char *body;
    const char *code;           /* the 429 code expected */
    const char *limit_header;   /* an x-ratelimit-limit-* header every answer carries */
    long long limit_value;
    const char *remaining_header;   /* on a 429: below what the request needed */
    long long needed;
    int max_retry_after;
    int64_t end_ms;
    atomic_int ok, limited, failed, requests;
    atomic_llong used;          /* prompt + completion tokens of the 200s' usage */
    pthread_mutex_t mu;
    char problem[768];
};

static void load_problem(struct load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void load_problem(struct load *l, const char *fmt, ...)
{
    pthread_mutex_lock(&l->mu);
    if (!l->problem[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->problem, sizeof l->problem, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&l->mu);
}

static void *load_main(void *arg)
{
    struct load *l = arg;
    struct h_conn c = {.fd = -1};
    int on_conn = 0;
    for (int i = 0; i < 100000 && h_now_ms() < l->end_ms; i++) {
        /* new connections now and then: SO_REUSEPORT spreads them over both shards */
        if (c.fd >= 0 && (on_conn >= 4 || c.eof)) {
            h_close(&c);
            c.fd = -1;
        }
        if (c.fd < 0) {
            if (h_connect(&c, l->port) < 0) {
                atomic_fetch_add(&l->failed, 1);
                load_problem(l, "connect failed");
                h_sleep_ms(10);
                continue;
            }
            on_conn = 0;
        }
        on_conn++;
        struct h_resp r;
        int rc = h_request(&c, "POST", "/v1/chat/completions", l->auth, l->body, &r, T_RESP);
        atomic_fetch_add(&l->requests, 1);
        if (rc != H_OK) {
            atomic_fetch_add(&l->failed, 1);
            load_problem(l, "request %d: no complete response (%d)", i, rc);
            h_close(&c);
            c.fd = -1;
            h_resp_free(&r);
            continue;
        }
        if (header_num(&r, l->limit_header) != l->limit_value)
            load_problem(l, "status %d: %s is not %lld:\n%s", r.status, l->limit_header, l->limit_value, r.head);
        if (r.status == 200) {
            atomic_fetch_add(&l->ok, 1);
            long long p = h_json_int(r.body, "prompt_tokens"), q = h_json_int(r.body, "completion_tokens");
            if (p < 0 || q < 0)
                load_problem(l, "200 without usage: %s", r.body);
            else
                atomic_fetch_add(&l->used, p + q);
        } else if (r.status == 429) {
            atomic_fetch_add(&l->limited, 1);
            long long ra = header_num(&r, "retry-after");
            if (ra < 1 || ra > l->max_retry_after)
                load_problem(l, "429 with retry-after %lld (want 1..%d):\n%s", ra, l->max_retry_after, r.head);
            if (!h_json_str_is(r.body, "type", "rate_limit_exceeded") || !h_json_str_is(r.body, "code", l->code))
                load_problem(l, "429 body is not rate_limit_exceeded/%s: %s", l->code, r.body);
            /* (one more for a refill between the refusal and the header) */
            long long rem = header_num(&r, l->remaining_header);
            if (rem < 0 || rem > l->needed)
                load_problem(l, "429 with %s %lld, but the request needed %lld:\n%s", l->remaining_header, rem,
                             l->needed, r.head);
        } else {
            atomic_fetch_add(&l->failed, 1);
            load_problem(l, "unexpected status %d: %s", r.status, r.body);
        }
        if (!r.keep_alive) {
            h_close(&c);
            c.fd = -1;
        }
        h_resp_free(&r);
        h_sleep_ms(1);   /* thousands per second still; leaves the CPUs some air */
    }
    if (c.fd >= 0)
        h_close(&c);
    return NULL;
}

/* Runs LOAD_THREADS clients for ms milliseconds; returns the elapsed window. */
static int64_t run_load(struct load *l, int ms)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_t th[LOAD_THREADS];
    int64_t t0 = h_now_ms();
    l->end_ms = t0 + ms;
    for (int i = 0; i < LOAD_THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, load_main, l), 0);
    for (int i = 0; i < LOAD_THREADS; i++)
        pthread_join(th[i], NULL);
    return h_now_ms() - t0;
}

Test(ratelimit, requests_per_minute_is_exact_across_shards)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("loader", KEY_A, "small", NULL));
    /* capacity 30, one more every 2 s; 30 < shards * 16 means no leases: exact */
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier small]\nrequests_per_minute = 30\nburst = 60s\n",
                m.port, h_keys_path());
    H_GW(&g);

    char body[512];
    struct load l = {.port = g.port, .auth = h_bearer(KEY_A), .body = h_chat_body(body, sizeof body, 1, false),
                     .code = "requests", .limit_header = "x-ratelimit-limit-requests", .limit_value = 30,
                     .remaining_header = "x-ratelimit-remaining-requests", .needed = 1, .max_retry_after = 2};
    struct h_each_shard spread = h_each_shard_begin(&g);
    int64_t window = run_load(&l, 3000);
    cr_assert(h_each_shard_answered(&spread), "the clients did not reach every shard: nothing was tested across shards");
    int ok = atomic_load(&l.ok), limited = atomic_load(&l.limited);
    cr_assert_eq(atomic_load(&l.failed), 0, "%d requests failed; first problem: %s\naigw stderr:\n%s",
                 atomic_load(&l.failed), l.problem, h_tail(g.tag));
    cr_assert_eq(l.problem[0], 0, "%s", l.problem);
    /* refill: 0.5 per second; a window of T s sees at most floor(T/2) + 1 refill instants */
    int most = 30 + (int)(window / 2000) + 1;
    cr_log_info("requests: %d admitted (bound 30..%d), %d refused, in %lld ms", ok, most, limited, (long long)window);
    cr_assert(ok >= 30 && ok <= most,
              "admitted %d of %d requests in %lld ms; a 30-request bucket refilling 1 per 2 s allows 30..%d",
              ok, ok + limited, (long long)window, most);
    cr_assert_gt(limited, 50, "the clients should have been mostly refused (%d 429s)", limited);
    double counted = h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"loader\",limit=\"requests\"}");
    cr_assert_eq(counted, limited, "aigw_ratelimited_total says %.0f, the clients got %d 429s", counted, limited);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_ratelimited_total{limit=\"tokens\"}"), 0);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), ok, "every admitted request, and only those, went upstream");
    h_finish();
}

Test(ratelimit, tokens_per_minute_stays_within_the_lease_bound)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("loader", KEY_A, "tok", NULL));
    /* capacity 6000, 100 per second; batch = 6000 / (2 shards * 16) = 187 */
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier tok]\ntokens_per_minute = 6000\nburst = 60s\n",
                m.port, h_keys_path());
    H_GW(&g);
    const long long capacity = 6000, batch = 6000 / 32, shards = 2;

    /* reserves 4 + 4 (prompt estimate) + 92 = 100; the mock's usage says 4 + 92 */
    char body[512];
    struct load l = {.port = g.port, .auth = h_bearer(KEY_A), .body = h_chat_body(body, sizeof body, 92, false),
                     .code = "tokens", .limit_header = "x-ratelimit-limit-tokens", .limit_value = capacity,
                     .remaining_header = "x-ratelimit-remaining-tokens", .needed = 100, .max_retry_after = 2};
    struct h_each_shard spread = h_each_shard_begin(&g);
    int64_t window = run_load(&l, 3000);
    cr_assert(h_each_shard_answered(&spread), "the clients did not reach every shard: nothing was tested across shards");
    int ok = atomic_load(&l.ok), limited = atomic_load(&l.limited);
    long long used = atomic_load(&l.used);
    cr_assert_eq(atomic_load(&l.failed), 0, "%d requests failed; first problem: %s\naigw stderr:\n%s",
                 atomic_load(&l.failed), l.problem, h_tail(g.tag));
    cr_assert_eq(l.problem[0], 0, "%s", l.problem);
    long long refill = window * 100 / 1000 + 1;
    long long most = capacity + refill + shards * batch;
    long long least = capacity - shards * batch - 100;
    cr_log_info("tokens: %d admitted using %lld (bound %lld..%lld), %d refused, in %lld ms", ok, used, least, most,
                limited, (long long)window);
    cr_assert(used <= most && used >= least,
              "%d requests admitted used %lld tokens in %lld ms; the bound is %lld..%lld "
              "(capacity %lld, refill %lld, shards*batch %lld)",
              ok, used, (long long)window, least, most, capacity, refill, shards * batch);
    cr_assert_gt(limited, 50, "the clients should have been mostly refused (%d 429s)", limited);
    double counted = h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"loader\",limit=\"tokens\"}");
    cr_assert_eq(counted, limited, "aigw_ratelimited_total says %.0f, the clients got %d 429s", counted, limited);
    /* aigw counted what the usage said, for the admitted requests only */
    double prompt = metric_settled(g.admin_port, "aigw_tokens_total{key=\"loader\",direction=\"prompt\"}", 4.0 * ok);
    double completion =
        metric_settled(g.admin_port, "aigw_tokens_total{key=\"loader\",direction=\"completion\"}", 92.0 * ok);
    cr_assert(prompt == 4.0 * ok && completion == 92.0 * ok,
              "aigw_tokens_total prompt %.0f completion %.0f for %d answers of 4 + 92", prompt, completion, ok);
    cr_assert_eq(prompt + completion, used);
    h_finish();
}

/* ---- reservation and settlement ---- */

static long long remaining_tokens(const struct h_resp *r)
{
    return header_num(r, "x-ratelimit-remaining-tokens");
}

Test(ratelimit, settlement_gives_back_what_a_request_did_not_use)
{
    struct script_backend b;
    script_start(&b, SB_JSON);
    atomic_store(&b.usage_prompt, 7);
    atomic_store(&b.usage_completion, 43);   /* 50 used */
    atomic_store(&b.own_ratelimit_headers, true);
    h_write_file(h_keys_path(), "%s", h_key_line("settler", KEY_A, "slow", NULL));
    /* capacity 86400 refilling 1 token per second: the levels below barely move by themselves */
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier slow]\ntokens_per_minute = 60\nburst = 24h\n",
                b.port, h_keys_path());
    H_GW(&g);

    struct h_conn c;   /* one connection: one shard, whose lease the headers include */
    H_CONNECT_GW(&c, &g);
    char body[512];
    struct h_resp r;
    /* reserves 8 (prompt estimate of "Say something.") + 1000 */
    int64_t t0 = h_now_ms();
    int rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 1000, false),
                       &r, T_RESP);
    EXPECT(rc, r, 200, "the 1000-token request");
    /* the backend's own x-ratelimit-* would contradict aigw's: dropped */
    cr_assert_null(strstr(r.head, "99999"), "backend rate-limit headers passed on:\n%s", r.head);
    /* the limit is the bucket's size (60 per minute for 24h); remaining its level */
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-tokens"), 86400, "%s", r.head);
    long long r1 = remaining_tokens(&r);
    cr_assert(r1 >= 86400 - 1008 && r1 <= 86400 - 1008 + 1,
              "remaining after reserving 8 + 1000 of 86400: %lld\n%s", r1, r.head);
    h_resp_free(&r);

    /* the next request reserves 8 + 10: its answer shows the first settled at 50 */
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 10, false), &r,
                   T_RESP);
    int64_t t2 = h_now_ms();
    EXPECT(rc, r, 200, "the next request");
    long long r2 = remaining_tokens(&r);
    long long want = r1 + 1008 - 50 - 18;   /* 940 more than before */
    long long drift = (t2 - t0) / 1000 + 1; /* refill meanwhile */
    cr_assert(r2 >= want && r2 <= want + drift,
              "remaining went from %lld to %lld; settling 1008 reserved against 50 used and reserving 18 "
              "gives %lld (+%lld refill); without settlement it would be %lld",
              r1, r2, want, drift, r1 - 18);
    h_resp_free(&r);
    h_close(&c);

    cr_assert_eq(metric_settled(g.admin_port, "aigw_tokens_total{key=\"settler\",direction=\"prompt\"}", 14), 14);
    cr_assert_eq(metric_settled(g.admin_port, "aigw_tokens_total{key=\"settler\",direction=\"completion\"}", 86), 86);
    h_finish();
}

Test(ratelimit, reservation_is_prompt_estimate_plus_max_tokens_and_every_ai_answer_has_the_headers)
{
    struct script_backend b;
    script_start(&b, SB_JSON);   /* usage 10 + 40 */
    h_write_file(h_keys_path(), "%s%s", h_key_line("alice", KEY_A, "capped", "scripted-*"),
                 h_key_line("bob", KEY_B, "plain", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = p\nmodels = scripted-*\n\n"
                "[route other]\npath = /v1/chat/completions\npool = p\nmodels = other-*\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier capped]\nrequests_per_minute = 60\ntokens_per_minute = 60\nburst = 24h\nmax_tokens = 500\n\n"
                "[tier plain]\ntokens_per_minute = 60\nburst = 24h\n",
                b.port, h_keys_path());
    H_GW(&g);
    const long long cap = 86400;   /* 60 per minute, burst 24h */

    /* two messages, 10 + 5 content bytes: ceil(15 / 4) + 4 * 2 = 12 */
    static const char msgs[] = "\"messages\":[{\"role\":\"system\",\"content\":\"abcdefghij\"},"
                               "{\"role\":\"user\",\"content\":\"12345\"}]";
    char body[512];
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    struct h_resp r;
    int64_t t0 = h_now_ms();

    snprintf(body, sizeof body, "{\"model\":\"scripted-1\",%s,\"max_tokens\":100}", msgs);
    int rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 200, "max_tokens 100");
    /* the limit is the bucket's size: a day's allowance with burst = 24h */
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-requests"), cap, "%s", r.head);
    long long rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq == cap - 1 || rq == cap, "remaining-requests after one: %lld\n%s", rq, r.head);
    cr_assert_not_null(h_header(&r, "x-ratelimit-reset-requests"), "%s", r.head);
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-tokens"), cap, "%s", r.head);
    long long rem = remaining_tokens(&r);
    cr_assert(rem >= cap - 112 && rem <= cap - 111, "reserved 12 + 100: remaining %lld\n%s", rem, r.head);
    const char *reset = h_header(&r, "x-ratelimit-reset-tokens");
    cr_assert(reset && reset[0] && reset[strlen(reset) - 1] == 's', "reset-tokens: %s", reset ? reset : "(none)");
    cr_assert(strstr(reset, "m"), "112 tokens at 1 per second take about 1m52s to refill, not %s", reset);
    h_resp_free(&r);

    /* no max_tokens: the tier's max_tokens (500) is reserved; the first settled at 50 */
    snprintf(body, sizeof body, "{\"model\":\"scripted-1\",%s}", msgs);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 200, "no max_tokens");
    long long drift = (h_now_ms() - t0) / 1000 + 1;
    rem = remaining_tokens(&r);
    cr_assert(rem >= cap - 50 - 512 && rem <= cap - 50 - 512 + drift,
              "after 50 used and 12 + 500 reserved: remaining %lld, want %lld", rem, cap - 562);
    rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq >= cap - 2 && rq <= cap - 2 + drift, "remaining-requests %lld", rq);
    h_resp_free(&r);

    /* aigw's own 4xx answers on AI requests carry the headers too, and take nothing */
    snprintf(body, sizeof body, "{\"model\":\"other-1\",%s,\"max_tokens\":5}", msgs);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 403, "a model alice may not use");
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-tokens"), cap, "403 without rate-limit headers:\n%s",
                 r.head);
    /* the limit is the bucket's size: a day's allowance with burst = 24h */
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-requests"), cap, "%s", r.head);
    drift = (h_now_ms() - t0) / 1000 + 1;
    rem = remaining_tokens(&r);
    cr_assert(rem >= cap - 100 && rem <= cap - 100 + drift, "after two requests of 50: remaining %lld", rem);
    rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq >= cap - 2 && rq <= cap - 2 + drift, "a 403 took a request: remaining-requests %lld", rq);
    h_resp_free(&r);

    snprintf(body, sizeof body, "{\"model\":\"scripted-1\",%s,\"max_tokens\":501}", msgs);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 400, "max_tokens over the tier's 500");
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "%s", r.body);
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-tokens"), cap, "400 without rate-limit headers:\n%s",
                 r.head);
    rem = remaining_tokens(&r);
    drift = (h_now_ms() - t0) / 1000 + 1;
    cr_assert(rem >= cap - 100 && rem <= cap - 100 + drift, "a 400 took tokens: remaining %lld", rem);
    h_resp_free(&r);

    snprintf(body, sizeof body, "{\"model\":\"nothing-routes-this\",%s,\"max_tokens\":5}", msgs);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 404, "a model no route takes");
    cr_assert_eq(header_num(&r, "x-ratelimit-limit-tokens"), cap, "404 without rate-limit headers:\n%s",
                 r.head);
    h_resp_free(&r);
    h_close(&c);

    /* no max_tokens anywhere: 1024 is reserved */
    H_CONNECT_GW(&c, &g);
    snprintf(body, sizeof body, "{\"model\":\"scripted-1\",%s}", msgs);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_B), body, &r, T_RESP);
    EXPECT(rc, r, 200, "bob, no max_tokens, no tier cap");
    rem = remaining_tokens(&r);
    cr_assert(rem >= cap - 12 - 1024 && rem <= cap - 12 - 1024 + 1, "reserved 12 + 1024: remaining %lld", rem);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

/* A request refused by one limit takes nothing from the others; one larger than
 * the bucket itself is refused outright. */
Test(ratelimit, a_refused_request_takes_nothing)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("refused", KEY_A, "both", NULL));
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier both]\nrequests_per_minute = 5\ntokens_per_minute = 60\nburst = 60s\n",
                m.port, h_keys_path());
    H_GW(&g);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    char body[512];
    struct h_resp r;
    /* reserves 8 + 40 of 60 tokens; the mock's usage says 4 + 40 */
    int64_t t0 = h_now_ms();
    int rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 40, false),
                       &r, T_RESP);
    EXPECT(rc, r, 200, "the first request");
    long long rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq == 4 || rq == 5, "5 - 1: remaining-requests %lld\n%s", rq, r.head);
    long long rem = remaining_tokens(&r);
    cr_assert(rem >= 12 && rem <= 13, "60 - 48 reserved: remaining %lld\n%s", rem, r.head);
    h_resp_free(&r);

    /* 16 tokens left, 48 wanted: refused by tokens, and the request it took goes back */
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 40, false), &r,
                   T_RESP);
    EXPECT(rc, r, 429, "the second request");
    cr_assert(h_json_str_is(r.body, "code", "tokens"), "%s", r.body);
    long long drift = (h_now_ms() - t0) / 1000 + 1;   /* tokens refilled meanwhile */
    long long ra = header_num(&r, "retry-after");
    cr_assert(ra >= 32 - drift && ra <= 33, "32 tokens missing at 1 per second: retry-after %lld", ra);
    rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq == 4 || rq == 5, "a request refused for tokens used up a request: remaining-requests %lld\n%s", rq,
              r.head);
    rem = remaining_tokens(&r);
    cr_assert(rem >= 16 && rem <= 16 + drift, "remaining-tokens %lld on the 429 (60 - 44 used)\n%s", rem, r.head);
    h_resp_free(&r);

    /* 8 + 200 can never fit in 60 */
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 200, false), &r,
                   T_RESP);
    EXPECT(rc, r, 429, "a request larger than the bucket");
    cr_assert(h_json_str_is(r.body, "code", "tokens"), "%s", r.body);
    /* waiting never admits it: no Retry-After to wait for */
    cr_assert_null(h_header(&r, "retry-after"), "%s", r.head);
    rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq == 4 || rq == 5, "remaining-requests %lld\n%s", rq, r.head);
    h_resp_free(&r);

    /* a small one still fits */
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 2, false), &r,
                   T_RESP);
    EXPECT(rc, r, 200, "a request that fits");
    rq = header_num(&r, "x-ratelimit-remaining-requests");
    cr_assert(rq == 3 || rq == 4, "two admitted of 5: remaining-requests %lld\n%s", rq, r.head);
    h_resp_free(&r);
    h_close(&c);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"refused\",limit=\"tokens\"}"), 2);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"refused\",limit=\"requests\"}"), 0);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 2);
    h_finish();
}

/* A request that no wait can admit is told what it reserves: without
 * max_tokens that is the tier's max_tokens, or 1024, on top of the prompt. */
Test(ratelimit, a_request_too_large_for_the_bucket_is_told_its_real_size)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s%s", h_key_line("nocap", KEY_A, "tight", NULL), h_key_line("cap", KEY_B, "tightcap", NULL));
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier tight]\ntokens_per_minute = 60\n\n"
                "[tier tightcap]\ntokens_per_minute = 60\nmax_tokens = 500\n",
                m.port, h_keys_path());
    H_GW(&g);

    /* no max_tokens: 8 (prompt estimate) + 1024, resp. + 500, in a 60-token bucket */
    static const char body[] =
        "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}]}";
    struct h_resp r;
    int rc = once(g.port, h_bearer(KEY_A), body, &r);
    EXPECT(rc, r, 429, "8 + 1024 tokens against a 60-token bucket");
    cr_assert(h_json_str_is(r.body, "code", "tokens"), "%s", r.body);
    cr_assert(strstr(r.body, "1032"), "the message should say the request reserves 8 + 1024 = 1032 tokens: %s",
              r.body);
    h_resp_free(&r);
    rc = once(g.port, h_bearer(KEY_B), body, &r);
    EXPECT(rc, r, 429, "8 + 500 tokens against a 60-token bucket");
    cr_assert(strstr(r.body, "508"), "the message should say the request reserves 8 + 500 = 508 tokens: %s", r.body);
    h_resp_free(&r);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 0);
    h_finish();
}

/* SPEC 3: every response through an AI route carries the rate-limit headers,
 * aigw's own errors included, once the caller's key is known. */
Test(ratelimit, errors_on_an_ai_route_carry_the_headers)
{
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "lim", NULL));
    struct h_gw g = {0};
    int dead = h_free_port();   /* nobody listens: 502 */
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier lim]\nrequests_per_minute = 600\ntokens_per_minute = 60000\n",
                dead, h_keys_path());
    H_GW(&g);

    struct {
        const char *what, *ctype, *body;
        int status;
    } cases[] = {
        {"backend down", "application/json",
         "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":5}", 502},
        {"invalid JSON", "application/json", "{\"model\":\"m\",", 400},
        {"max_tokens of the wrong type", "application/json", "{\"model\":\"m\",\"max_tokens\":\"5\"}", 400},
        {"not JSON", "text/plain", "hello", 415},
    };
    char missing[1024] = "";
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct h_conn c;
        H_CONNECT_GW(&c, &g);
        cr_assert_eq(h_sendf(&c,
                             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: %s\r\n"
                             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                             h_bearer(KEY_A), cases[i].ctype, strlen(cases[i].body), cases[i].body),
                     0);
        struct h_resp r;
        int rc = h_recv(&c, &r, T_RESP);
        EXPECT(rc, r, cases[i].status, cases[i].what);
        if (header_num(&r, "x-ratelimit-limit-requests") != 600 || header_num(&r, "x-ratelimit-limit-tokens") != 60000)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), "\n--- %s (%d):\n%s", cases[i].what,
                     r.status, r.head);
        h_resp_free(&r);
        h_close(&c);
    }
    cr_assert_eq(missing[0], 0, "answers on the AI route without the x-ratelimit-* headers:%s", missing);
    h_finish();
}

/* ---- a stream's usage, metered on the splice path ---- */

/* Has the SSE backend stream sp to a streamed chat completion through aigw and
 * reads the whole (close-delimited) answer; checks it is the backend's stream
 * byte for byte and that all of it was spliced, none copied. */
static void stream_through(struct h_gw *g, struct script_backend *b, struct sse_spec sp, bool include_usage)
{
    b->sse = sp;   /* the backend thread reads it after the request arrives */
    size_t want_len;
    char *want = sse_body(&sp, &want_len);

    static const char answered[] = "aigw_requests_total{route=\"chat\",status=\"200\"}";
    double answered0 = h_metric0(g->admin_port, answered);
    double splice0 = h_metric0(g->admin_port, "aigw_relay_bytes_total{mode=\"splice\"}");
    double copy0 = h_metric0(g->admin_port, "aigw_relay_bytes_total{mode=\"copy\"}");
    char body[512];
    snprintf(body, sizeof body,
             "{\"model\":\"scripted-1\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
             "\"max_tokens\":100,\"stream\":true%s}",
             include_usage ? ",\"stream_options\":{\"include_usage\":true}" : "");
    struct h_conn c;
    H_CONNECT_GW(&c, g);
    struct h_resp r;
    int rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), body, &r, T_RESP);
    EXPECT(rc, r, 200, "the stream");
    const char *ct = h_header(&r, "content-type");
    cr_assert(ct && strstr(ct, "text/event-stream"), "content-type %s", ct ? ct : "(none)");
    cr_assert(r.until_close, "a close-delimited stream stays close-delimited:\n%s", r.head);
    cr_assert_not_null(h_header(&r, "x-ratelimit-limit-tokens"), "a stream's head lacks the rate-limit headers:\n%s",
                       r.head);
    cr_assert_eq(r.body_len, want_len, "the client got %zu of the stream's %zu bytes", r.body_len, want_len);
    cr_assert(memcmp(r.body, want, want_len) == 0, "the stream arrived changed");
    h_resp_free(&r);
    h_close(&c);
    free(want);

    /* the client can have every byte before aigw has seen its last splice
     * complete: the request is counted once it has (and so are its bytes) */
    cr_assert_geq(h_wait_metric(g->admin_port, answered, H_GE, answered0 + 1, T_RESP), answered0 + 1,
                  "the stream was never counted as answered");
    double spliced = h_metric0(g->admin_port, "aigw_relay_bytes_total{mode=\"splice\"}") - splice0;
    double copied = h_metric0(g->admin_port, "aigw_relay_bytes_total{mode=\"copy\"}") - copy0;
    cr_assert_eq(spliced, (double)want_len, "spliced %.0f of the stream's %zu bytes (copied %.0f)", spliced, want_len,
                 copied);
    cr_assert_eq(copied, 0, "metering took %.0f bytes of the stream off the splice path", copied);
}

/* aigw with the SSE backend behind it and a key with a roomy token limit. */
static void start_streaming(struct script_backend *b, struct h_gw *g)
{
    script_start(b, SB_SSE);
    h_write_file(h_keys_path(), "%s", h_key_line("streamer", KEY_A, "roomy", NULL));
    h_gw_config(g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier roomy]\ntokens_per_minute = 60\nburst = 24h\n",
                b->port, h_keys_path());
    H_GW(g);
}

#define STREAMER_PROMPT "aigw_tokens_total{key=\"streamer\",direction=\"prompt\"}"
#define STREAMER_COMPLETION "aigw_tokens_total{key=\"streamer\",direction=\"completion\"}"

Test(ratelimit, stream_usage_is_counted_while_the_stream_is_spliced)
{
    struct script_backend b;
    struct h_gw g = {0};
    start_streaming(&b, &g);

    /* 20 events of 1000 bytes, one at a time, and the usage chunk */
    stream_through(&g, &b, (struct sse_spec){.events = 20, .bytes = 1000, .usage = true, .paced = true}, true);
    double p = metric_settled(g.admin_port, STREAMER_PROMPT, 7);
    double q = metric_settled(g.admin_port, STREAMER_COMPLETION, 33);
    cr_assert(p == 7 && q == 33, "the usage chunk says 7 + 33; aigw_tokens_total says %.0f + %.0f", p, q);

    /* the settlement shows in the bucket: 86400 - 40 used - (8 + 5) reserved now */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    atomic_store(&b.mode, SB_JSON);
    char body[512];
    struct h_resp r;
    int rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_A), h_chat_body(body, sizeof body, 5, false), &r,
                       T_RESP);
    EXPECT(rc, r, 200, "a request after the stream");
    /* the stream's connection closed, so this one may be on the other shard,
     * whose view leaves out the stream shard's lease (batch = 86400 / 32) */
    long long rem = remaining_tokens(&r), want = 86400 - 40 - 13, batch = 86400 / 32;
    cr_assert((rem >= want && rem <= want + 10) || (rem >= want - batch && rem <= want - batch + 10),
              "remaining %lld after the stream used 40 of its 108 reserved: want %lld (or %lld from the other "
              "shard); without settlement %lld",
              rem, want, want - batch, want - 68);
    h_resp_free(&r);
    h_close(&c);

    char path[600];
    snprintf(path, sizeof path, "%s/access.log", h_dir());
    int64_t end = h_now_ms() + 3000 * h_slow();
    char *log = NULL;
    while (h_now_ms() < end) {
        free(log);
        log = h_read_file(path);
        if (log && strstr(log, "\"stream\":true"))
            break;
        h_sleep_ms(20);
    }
    cr_assert(log && strstr(log, "\"stream\":true,\"tokens_in\":7,\"tokens_out\":33"),
              "the stream's log line should carry its usage:\n%s", log ? log : "(none)");
    free(log);

    /* 400 KiB in one burst: the inspection pipe holds more than a buffer reads at once */
    atomic_store(&b.mode, SB_SSE);
    stream_through(&g, &b, (struct sse_spec){.events = 100, .bytes = 4000, .usage = true, .paced = false}, true);
    p = metric_settled(g.admin_port, STREAMER_PROMPT, 7 + 10 + 7);
    q = metric_settled(g.admin_port, STREAMER_COMPLETION, 33 + 40 + 33);
    cr_assert(p == 24 && q == 106, "7 + 33, then the JSON answer's 10 + 40, then 7 + 33: aigw_tokens_total says %.0f + %.0f",
              p, q);
    h_finish();
}

Test(ratelimit, stream_without_usage_counts_its_content_events)
{
    struct script_backend b;
    struct h_gw g = {0};
    start_streaming(&b, &g);

    stream_through(&g, &b, (struct sse_spec){.events = 20, .bytes = 1000, .usage = false, .paced = true}, false);
    /* the role-only and finish chunks carry no content: 20 content events */
    double q = metric_settled(g.admin_port, STREAMER_COMPLETION, 20);
    cr_assert_eq(q, 20, "completion tokens %.0f for 20 content events", q);
    /* no usage: the prompt is the estimate, ceil(14 / 4) + 4 */
    double p = metric_settled(g.admin_port, STREAMER_PROMPT, 8);
    cr_assert_eq(p, 8, "prompt tokens %.0f, want the estimate 8", p);

    stream_through(&g, &b, (struct sse_spec){.events = 100, .bytes = 4000, .usage = false, .paced = false}, false);
    q = metric_settled(g.admin_port, STREAMER_COMPLETION, 120);
    cr_assert_eq(q, 120, "completion tokens %.0f after 20 + 100 content events", q);
    h_finish();
}

/* Clients that go away mid-stream while it is spliced and inspected: aigw
 * stays up, keeps no descriptors, and the key's usage is still settled. */
Test(ratelimit, clients_leaving_metered_spliced_streams)
{
    struct script_backend b;
    struct h_gw g = {0};
    start_streaming(&b, &g);
    b.sse = (struct sse_spec){.events = 200, .bytes = 500, .usage = true, .paced = true, .gap_ms = 10};
    int fds0 = h_count_fds(g.pid);
    char body[512];
    snprintf(body, sizeof body,
             "{\"model\":\"scripted-1\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
             "\"max_tokens\":100,\"stream\":true}");
    for (int i = 0; i < 8; i++) {
        struct h_conn c;
        H_CONNECT_GW(&c, &g);
        cr_assert_eq(h_sendf(&c,
                             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                             "Content-Length: %zu\r\n\r\n%s",
                             h_bearer(KEY_A), strlen(body), body),
                     0);
        struct h_resp head;
        int rc = h_recv_head(&c, &head, T_RESP);
        cr_assert_eq(rc, H_OK, "stream %d: no head (%d); aigw stderr:\n%s", i, rc, h_tail(g.tag));
        cr_assert_eq(head.status, 200);
        struct h_sse sse;
        h_sse_init(&sse, &c, &head);
        for (int e = 0; e < 3 + i; e++)
            cr_assert_eq(h_sse_next(&sse, T_RESP), 1, "stream %d: event %d did not arrive", i, e);
        h_sse_free(&sse);
        h_resp_free(&head);
        h_close(&c);   /* gone, mid-stream */
    }
    /* every stream was cut: each settled at what it had streamed, at most 100 each */
    int64_t end = h_now_ms() + 5000 * h_slow();
    int fds = -1;
    while (h_now_ms() < end && (fds = h_count_fds(g.pid)) > fds0)
        h_sleep_ms(50);
    cr_assert_leq(fds, fds0, "aigw holds %d descriptors, %d before the streams", fds, fds0);
    double q = h_metric0(g.admin_port, STREAMER_COMPLETION);
    cr_assert(q >= 8 * 3 && q <= 8 * 100, "completion tokens of 8 cut streams: %.0f", q);

    /* and a whole stream still goes through, metered */
    double q0 = q;
    stream_through(&g, &b, (struct sse_spec){.events = 20, .bytes = 1000, .usage = true, .paced = true}, true);
    q = metric_settled(g.admin_port, STREAMER_COMPLETION, q0 + 33);
    cr_assert_eq(q, q0 + 33);
    h_finish();
}

/* A non-streamed answer too large for one buffer: its usage, at the end, is
 * still read, from the spliced body (Content-Length) or the spliced data of a
 * large chunk. */
Test(ratelimit, usage_at_the_end_of_a_large_answer_is_counted)
{
    struct script_backend b;
    script_start(&b, SB_JSON);
    atomic_store(&b.usage_prompt, 11);
    atomic_store(&b.usage_completion, 22);
    atomic_store(&b.json_pad, 300 * 1000);
    h_write_file(h_keys_path(), "%s", h_key_line("big", KEY_A, "roomy", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier roomy]\ntokens_per_minute = 60\nburst = 24h\n",
                b.port, h_keys_path());
    H_GW(&g);

    char body[512];
    h_chat_body(body, sizeof body, 1000, false);
    for (int chunked = 0; chunked < 2; chunked++) {
        atomic_store(&b.json_chunked, chunked);
        double splice0 = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}");
        struct h_resp r;
        int rc = once(g.port, h_bearer(KEY_A), body, &r);
        EXPECT(rc, r, 200, chunked ? "a large chunked answer" : "a large answer");
        cr_assert_gt(r.body_len, 300 * 1000);
        cr_assert_eq(h_json_int(r.body, "completion_tokens"), 22, "the answer arrived whole");
        h_resp_free(&r);
        double spliced = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}") - splice0;
        cr_assert_gt(spliced, 200 * 1000, "the large body should be spliced (%.0f bytes were)", spliced);
        double p = metric_settled(g.admin_port, "aigw_tokens_total{key=\"big\",direction=\"prompt\"}", 11 * (chunked + 1));
        double q =
            metric_settled(g.admin_port, "aigw_tokens_total{key=\"big\",direction=\"completion\"}", 22 * (chunked + 1));
        cr_assert(p == 11 * (chunked + 1) && q == 22 * (chunked + 1),
                  "%s: the usage says 11 + 22; aigw_tokens_total grew to %.0f + %.0f", chunked ? "chunked" : "length",
                  p, q);
    }
    h_finish();
}

/* A chunked stream of small events (what inference servers send; copied, not
 * spliced), with and without the usage chunk. */
Test(ratelimit, chunked_stream_usage_is_counted)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("chunky", KEY_A, "roomy", NULL));
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier roomy]\ntokens_per_minute = 60\nburst = 24h\n",
                m.port, h_keys_path());
    H_GW(&g);

    for (int with_usage = 1; with_usage >= 0; with_usage--) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
                 "\"max_tokens\":12,\"stream\":true%s}",
                 with_usage ? ",\"stream_options\":{\"include_usage\":true}" : "");
        struct h_resp r;
        int rc = once(g.port, h_bearer(KEY_A), body, &r);
        EXPECT(rc, r, 200, "a mockllm stream");
        cr_assert(strstr(r.body, "[DONE]"), "%s", r.body);
        if (with_usage)
            cr_assert_eq(h_json_int(r.body, "completion_tokens"), 12, "%s", r.body);
        h_resp_free(&r);
    }
    /* with usage: 4 + 12 as the mock says; without: the estimate 8 and 12 content events */
    double p = metric_settled(g.admin_port, "aigw_tokens_total{key=\"chunky\",direction=\"prompt\"}", 4 + 8);
    double q = metric_settled(g.admin_port, "aigw_tokens_total{key=\"chunky\",direction=\"completion\"}", 12 + 12);
    cr_assert(p == 12 && q == 24, "aigw_tokens_total prompt %.0f (want 4 + 8), completion %.0f (want 12 + 12)", p, q);
    h_finish();
}

/* ---- the daily quota ---- */

static int64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(ratelimit, daily_quota_resets_at_utc_midnight)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("daily", KEY_A, "quota", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier quota]\ndaily_tokens = 200\n",
                m.port, h_keys_path());
    /* aigw's wall clock shifted so its next 00:00 UTC comes lead_ms after now */
    const int64_t lead_ms = 4000 * h_slow();
    int64_t now = realtime_ms();
    int64_t to_midnight_ms = 86400000 - now % 86400000;
    long long shift_s = (to_midnight_ms - lead_ms) / 1000;   /* whole seconds: midnight in lead_ms .. lead_ms + 1 s */
    int64_t midnight = now + to_midnight_ms - shift_s * 1000;   /* real time when aigw's day ends */
    char shift[32];
    snprintf(shift, sizeof shift, "%lld", shift_s);
    setenv("AIGW_TEST_CLOCK_SHIFT_S", shift, 1);
    int started = h_gw_start(&g);
    unsetenv("AIGW_TEST_CLOCK_SHIFT_S");
    cr_assert_eq(started, 0, "aigw did not become ready:\n%s", h_tail(g.tag));

    /* each reserves 8 + 50 and uses 4 + 50: three fit in 200, the fourth does not */
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    struct h_resp r;   /* fresh connections: the waits below outlast keep-alive */
    int ok = 0, rc = 0;
    long long used = 0;
    for (int i = 0; i < 10; i++) {
        rc = once(g.port, h_bearer(KEY_A), body, &r);
        cr_assert_eq(rc, H_OK, "request %d: %d; aigw stderr:\n%s", i, rc, h_tail(g.tag));
        if (r.status != 200)
            break;
        ok++;
        used += h_json_int(r.body, "total_tokens");
        h_resp_free(&r);
    }
    int64_t refused_at = realtime_ms();
    cr_assert(refused_at < midnight - 500, "the quota ran out too late to test (%lld ms before the reset)",
              (long long)(midnight - refused_at));
    cr_assert_eq(r.status, 429, "status %d after %d requests: %s", r.status, ok, r.body);
    cr_assert(h_json_str_is(r.body, "type", "rate_limit_exceeded") && h_json_str_is(r.body, "code", "quota"),
              "%s", r.body);
    long long ra = header_num(&r, "retry-after");
    long long left_s = (midnight - refused_at + 999) / 1000;
    cr_assert(ra >= left_s - 1 && ra <= left_s + 1, "retry-after %lld, the day ends in %lld s", ra, left_s);
    h_resp_free(&r);
    cr_assert(ok >= 1 && used <= 200, "%d requests used %lld tokens of a 200-token day", ok, used);
    cr_assert_eq(ok, 3, "a 200-token day takes 3 requests of 54 (reserving 58), took %d", ok);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"daily\",limit=\"quota\"}"), 1);

    /* still refused just before midnight */
    int64_t wait = midnight - 700 - realtime_ms();
    if (wait > 0)
        h_sleep_ms((int)wait);
    rc = once(g.port, h_bearer(KEY_A), body, &r);
    cr_assert_eq(rc, H_OK);
    int64_t asked = realtime_ms();
    if (asked < midnight - 100) {
        cr_assert_eq(r.status, 429, "admitted %lld ms before the day ended: %s", (long long)(midnight - asked),
                     r.body);
        cr_assert(h_json_str_is(r.body, "code", "quota"), "%s", r.body);
    }
    h_resp_free(&r);

    /* and admitted again once the day is over */
    int status = 0;
    int64_t deadline = midnight + 2000 * h_slow();
    int64_t admitted_at = 0;
    while (realtime_ms() < deadline) {
        rc = once(g.port, h_bearer(KEY_A), body, &r);
        cr_assert_eq(rc, H_OK);
        status = r.status;
        h_resp_free(&r);
        if (status == 200) {
            admitted_at = realtime_ms();
            break;
        }
        h_sleep_ms(100);
    }
    cr_assert_eq(status, 200, "still refused %lld ms after aigw's midnight", (long long)(realtime_ms() - midnight));
    cr_assert_geq(admitted_at, midnight - 100, "admitted %lld ms before the day ended",
                  (long long)(midnight - admitted_at));
    h_finish();
}

/* A large keys file (the loader is built for tens of thousands of keys): the
 * last key's usage is still exported under its NAME. */
Test(ratelimit, every_key_of_a_large_keys_file_is_metered_by_name)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    enum { NKEYS = 5000 };
    size_t cap = (size_t)NKEYS * 128, len = 0;
    char *file = malloc(cap);
    for (int i = 0; i < NKEYS; i++) {
        char name[32], key[64];
        snprintf(name, sizeof name, "k%04d", i);
        snprintf(key, sizeof key, "sk-itest-many-%04d", i);
        len += (size_t)snprintf(file + len, cap - len, "%s", h_key_line(name, key, "default", NULL));
    }
    h_write_file(h_keys_path(), "%s", file);
    free(file);
    struct h_gw g = {0};
    h_gw_config(&g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n", m.port, h_keys_path());
    H_GW(&g);

    char body[512];
    h_chat_body(body, sizeof body, 3, false);
    static const int probe[] = {0, 4094, 4095, NKEYS - 1};
    for (unsigned i = 0; i < 4; i++) {
        char key[64], auth[128];
        snprintf(key, sizeof key, "sk-itest-many-%04d", probe[i]);
        snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", key);
        struct h_resp r;
        int rc = once(g.port, auth, body, &r);
        EXPECT(rc, r, 200, key);
        h_resp_free(&r);
    }
    char missing[512] = "";
    for (unsigned i = 0; i < 4; i++) {
        char q[128];
        snprintf(q, sizeof q, "aigw_tokens_total{key=\"k%04d\",direction=\"completion\"}", probe[i]);
        double v = metric_settled(g.admin_port, q, 3);
        if (v != 3)
            snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " k%04d (%.0f)", probe[i], v);
    }
    double anon = h_metric0(g.admin_port, "aigw_tokens_total{key=\"\",direction=\"completion\"}");
    cr_assert_eq(missing[0], 0,
                 "keys whose 3 completion tokens are not in aigw_tokens_total under their name:%s; "
                 "aigw_tokens_total{key=\"\"} holds %.0f",
                 missing, anon);
    h_finish();
}

/* ---- reload ---- */

Test(ratelimit, a_reload_keeps_what_a_key_has_spent)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("spender", KEY_A, "three", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier three]\nrequests_per_minute = 3\n",
                m.port, h_keys_path());
    H_GW(&g);

    char body[512];
    h_chat_body(body, sizeof body, 1, false);
    struct h_resp r;
    for (int i = 0; i < 4; i++) {
        int rc = once(g.port, h_bearer(KEY_A), body, &r);
        EXPECT(rc, r, i < 3 ? 200 : 429, "3 requests per minute");
        if (i < 3)
            cr_assert_eq(header_num(&r, "x-ratelimit-remaining-requests"), 2 - i, "%s", r.head);
        h_resp_free(&r);
    }

    /* a new key and a reload: the spender's bucket stays empty */
    h_write_file(h_keys_path(), "%s%s", h_key_line("spender", KEY_A, "three", NULL),
                 h_key_line("newbie", KEY_NEW, "default", NULL));
    H_RELOAD(&g, H_RELOAD_APPLIED);
    int rc = once(g.port, h_bearer(KEY_NEW), body, &r);
    EXPECT(rc, r, 200, "the key the reload added");
    h_resp_free(&r);
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);) {
        rc = once(g.port, h_bearer(KEY_A), body, &r);
        EXPECT(rc, r, 429, "the spender after the reload");
        cr_assert(h_json_str_is(r.body, "code", "requests"), "%s", r.body);
        h_resp_free(&r);
    }
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 4, "3 of the spender's and 1 of the newbie's");
    h_finish();
}

/* ---- usage no request can have used ---- */

/* An x-ratelimit-reset-* value ("20ms", "1s", "1m30.5s", "5124095h1m2s") in
 * milliseconds; -1 when absent or unreadable. */
static long long reset_ms(const struct h_resp *r, const char *name)
{
    const char *v = h_header(r, name);
    if (!v || !*v)
        return -1;
    double total = 0;
    while (*v) {
        char *end;
        double n = strtod(v, &end);
        if (end == v)
            return -1;
        if (strncmp(end, "ms", 2) == 0) {
            total += n;
            end += 2;
        } else if (*end == 'h' || *end == 'm' || *end == 's') {
            total += n * (*end == 'h' ? 3600000 : *end == 'm' ? 60000 : 1000);
            end++;
        } else {
            return -1;
        }
        v = end;
    }
    return (long long)total;
}

/* The access log line of the request with this X-Request-Id, once written
 * (the request has settled by then); malloc'd. */
static char *settled_line(const char *request_id)
{
    char needle[96];
    snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", request_id);
    char *text = h_wait_for_text(h_access_log_path(), needle, T_RESP);
    cr_assert_not_null(text, "no access log line for %s", request_id);
    char *at = strstr(text, needle), *start = at, *end = strchr(at, '\n');
    while (start > text && start[-1] != '\n')
        start--;
    char *line = strndup(start, end ? (size_t)(end - start) : strlen(start));
    free(text);
    return line;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* A backend answering usage of 2^64-1, 2^63, 2^40+1, 1e12, -5 or 3.7 tokens:
 * aigw_tokens_total never goes down, what is counted stays within what the
 * request can have used (usage.h), the key is never locked out (the next
 * request passes, or waits at most the bucket's 10 s window, and the reset
 * header says no more), and the clamp is logged once. */
Test(ratelimit, absurd_usage_from_a_backend_neither_wraps_counters_nor_locks_the_key_out)
{
    static const char *const absurd[] = { "18446744073709551615", "9223372036854775808", "1099511627777",
                                          "1e12", "-5", "3.7" };
    static char usage[160];
    struct script_backend b;
    script_start(&b, SB_JSON);
    h_write_file(h_keys_path(), "%s", h_key_line("absurd", KEY_A, "t", NULL));
    struct h_gw g = {0};
    g.shards = 1;   /* one shard: one clamp line at most a minute */
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier t]\ntokens_per_minute = 60000\nburst = 10s\ndaily_tokens = 100000000\n",
                b.port, h_keys_path());
    H_GW(&g);

    char body[512];
    h_chat_body(body, sizeof body, 10, false);
    const long long prompt_bound = (long long)strlen(body) + 32768, completion_bound = 10 * 128 + 16;
    double prompt_seen = 0, completion_seen = 0;
    int n = 0;
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        for (int plain = 0; plain < 2; plain++) {   /* the absurd answer, then the next request */
            snprintf(usage, sizeof usage, "\"prompt_tokens\":%s,\"completion_tokens\":%s", absurd[i], absurd[i]);
            atomic_store(&b.usage_text, plain ? NULL : usage);
            char rid[32], hdr[256];
            snprintf(rid, sizeof rid, "absurd-%d", n++);
            snprintf(hdr, sizeof hdr, "%sX-Request-Id: %s\r\n", h_bearer(KEY_A), rid);
            struct h_resp r;
            int rc = once(g.port, hdr, body, &r);
            cr_assert_eq(rc, H_OK, "%s: no answer; aigw stderr:\n%s", absurd[i], h_tail(g.tag));
            if (plain && r.status == 429) {
                long long retry = header_num(&r, "Retry-After");
                cr_assert(retry >= 1 && retry <= 10, "after usage %s: 429 with Retry-After %lld\n%s", absurd[i],
                          retry, r.head);
            } else {
                cr_assert_eq(r.status, 200, "after usage %s: %d\n%s%s", absurd[i], r.status, r.head, r.body);
            }
            long long reset = reset_ms(&r, "x-ratelimit-reset-tokens");
            cr_assert(reset >= 0 && reset <= 10000, "after usage %s: x-ratelimit-reset-tokens %s",
                      absurd[i], h_header(&r, "x-ratelimit-reset-tokens"));
            h_resp_free(&r);

            char *line = settled_line(rid);
            long long in = h_json_int(line, "tokens_in"), out = h_json_int(line, "tokens_out");
            cr_assert(in >= 0 && in <= prompt_bound && out >= 0 && out <= completion_bound,
                      "usage %s counted beyond what the request can have used: %s", absurd[i], line);
            free(line);
            double prompt = h_metric0(g.admin_port, "aigw_tokens_total{key=\"absurd\",direction=\"prompt\"}");
            double completion =
                h_metric0(g.admin_port, "aigw_tokens_total{key=\"absurd\",direction=\"completion\"}");
            cr_assert(prompt >= prompt_seen && completion >= completion_seen,
                      "after usage %s aigw_tokens_total went from %.0f/%.0f to %.0f/%.0f", absurd[i],
                      prompt_seen, completion_seen, prompt, completion);
            prompt_seen = prompt;
            completion_seen = completion;
        }
    }
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), g.tag);
    char *err = h_read_file(path);
    cr_assert_not_null(err);
    cr_assert_eq(count_of(err, "reported usage of"), 1, "the clamp should be logged once:\n%s", err);
    free(err);
    h_finish();
}
