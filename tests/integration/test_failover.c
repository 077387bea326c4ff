/* Staying up when backends fail or fill up, end to end (issue 4): a backend
 * killed under load costs no request; a stalled one is ejected by the active
 * check and comes back; one answering 500s opens its circuit and recovers
 * through a half-open probe; a full pool queues by tier priority, sheds low
 * priority first, answers 503 no_capacity with Retry-After, or hands over to
 * its fallback pool; connect errors and 503 heads are retried on another
 * backend. */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(failover, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())
#define TIMEOUTS "connect = 1s\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 10s\n"

#define KEY_LO "sk-itest-fo-low-7Rm2Qx"
#define KEY_MID "sk-itest-fo-normal-3Wk8Lp"
#define KEY_HI "sk-itest-fo-high-9Tz4Vn"

/* keys of three tiers, one per priority */
#define TIERS                                                               \
    "[keys]\nauth = required\nfile = %s\n\n"                                \
    "[tier lo]\npriority = low\n\n[tier mid]\npriority = normal\n\n"        \
    "[tier hi]\npriority = high\n\n"

static void write_keys(void)
{
    h_write_file(h_keys_path(), "%s%s%s", h_key_line("low", KEY_LO, "lo", NULL),
                 h_key_line("normal", KEY_MID, "mid", NULL), h_key_line("high", KEY_HI, "hi", NULL));
}

static const char *chat(char *out, size_t cap, const char *model, int max_tokens)
{
    snprintf(out, cap,
             "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
             "\"max_tokens\":%d,\"stream\":false}",
             model, max_tokens);
    return out;
}

/* One request on a fresh connection; extra header lines may be NULL. */
static int post(int port, const char *extra, const char *body, struct h_resp *r, int timeout_ms)
{
    struct h_conn c;
    memset(r, 0, sizeof *r);
    if (h_connect(&c, port) < 0)
        return H_ECLOSED;
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", extra ? extra : "");
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, body, r, timeout_ms);
    h_close(&c);
    return rc;
}

/* ---- metrics of a pool's backend ---- */

static double bmetric(const struct h_gw *g, const char *name, const char *pool, int port, const char *more)
{
    char q[300];
    snprintf(q, sizeof q, "%s{pool=\"%s\",backend=\"127.0.0.1:%d\"%s%s}", name, pool, port, more ? "," : "",
             more ? more : "");
    return h_metric0(g->admin_port, q);
}

static double pmetric(const struct h_gw *g, const char *name, const char *pool, const char *more)
{
    char q[300];
    snprintf(q, sizeof q, "%s{pool=\"%s\"%s%s}", name, pool, more ? "," : "", more ? more : "");
    return h_metric0(g->admin_port, q);
}

static double up(const struct h_gw *g, const char *pool, int port)
{
    char q[300];
    snprintf(q, sizeof q, "aigw_backend_up{pool=\"%s\",backend=\"127.0.0.1:%d\"}", pool, port);
    return h_metric(g->admin_port, q);
}

/* Waits until aigw_backend_up of the backend is want; the time it took, -1 if it never was. */
static int wait_up(const struct h_gw *g, const char *pool, int port, double want, int ms)
{
    int64_t start = h_now_ms(), end = start + ms;
    do {
        if (up(g, pool, port) == want)
            return (int)(h_now_ms() - start);
        h_sleep_ms(10);
    } while (h_now_ms() < end);
    return -1;
}

/* Waits until an engine's metric (on its own /metrics) reaches at least want. */
static bool wait_mock_metric(int port, const char *query, double want, int ms)
{
    int64_t end = h_now_ms() + ms;
    do {
        if (h_metric0(port, query) >= want)
            return true;
        h_sleep_ms(5);
    } while (h_now_ms() < end);
    return false;
}

/* The access log line whose request id is id (malloc'd), NULL after ms. */
static char *log_line(const char *id, int ms)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", id);
    char *text = h_wait_for_text(h_access_log_path(), needle, ms);
    if (!text)
        return NULL;
    char *at = strstr(text, needle), *start = at;
    while (start > text && start[-1] != '\n')
        start--;
    char *eol = strchr(at, '\n');
    size_t n = eol ? (size_t)(eol - start) : strlen(start);
    char *line = strndup(start, n);
    free(text);
    return line;
}

static bool is_no_capacity(const struct h_resp *r)
{
    return r->status == 503 && r->body && h_json_str_is(r->body, "type", "server_error") &&
           h_json_str_is(r->body, "code", "no_capacity");
}

/* Retry-After present and an integer number of seconds >= 1. */
static bool retry_after_ok(const struct h_resp *r)
{
    const char *v = h_header(r, "Retry-After");
    if (!v || !*v)
        return false;
    char *end;
    long s = strtol(v, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    return end != v && *end == 0 && s >= 1;
}

/* ---- a request in flight: sent in order from the test thread, its answer
 * read by a thread of its own, which notes when it completed ---- */

struct flight {
    struct h_conn c;
    struct h_resp r;
    int rc;
    int64_t sent_ms, done_ms;
    atomic_bool done;
    pthread_t th;
    int timeout_ms;
};

static void *flight_main(void *arg)
{
    struct flight *f = arg;
    f->rc = h_recv(&f->c, &f->r, f->timeout_ms);
    f->done_ms = h_now_ms();
    atomic_store(&f->done, true);
    return NULL;
}

static void fly(struct flight *f, const struct h_gw *g, const char *key, const char *body, const char *id)
{
    memset(f, 0, sizeof *f);
    f->timeout_ms = 20000 * h_slow();
    cr_assert_eq(h_connect(&f->c, g->port), 0, "cannot connect to aigw:\n%s", h_tail(g->tag));
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: %s\r\n", key ? h_bearer(key) : "", id);
    cr_assert_eq(h_sendf(&f->c,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                         strlen(body), hdr, body),
                 0);
    f->sent_ms = h_now_ms();
    cr_assert_eq(pthread_create(&f->th, NULL, flight_main, f), 0);
}

static void land(struct flight *f)
{
    pthread_join(f->th, NULL);
    h_close(&f->c);
}

/* Waits up to ms for the flight to complete; true if it did. */
static bool wait_done(struct flight *f, int ms)
{
    int64_t end = h_now_ms() + ms;
    while (!atomic_load(&f->done)) {
        if (h_now_ms() > end)
            return false;
        h_sleep_ms(2);
    }
    return true;
}

/* Occupies the only slot of a max_outstanding = 1 pool: a request of
 * max_tokens on an engine at --tps 20, confirmed running on the engine. */
static void occupy(struct flight *f, const struct h_gw *g, const struct h_mock *m, const char *key,
                   const char *model, int max_tokens, const char *id)
{
    char body[512];
    fly(f, g, key, chat(body, sizeof body, model, max_tokens), id);
    cr_assert(wait_mock_metric(m->port, "vllm:num_requests_running", 1, 2000 * h_slow()),
              "the occupying request never ran on the engine; aigw stderr:\n%s", h_tail(g->tag));
}

/* ============================================================== */

/* ---- 1: killing one of three under load fails no request ---- */

struct loader {
    int port;
    int64_t until;
    int max;
    int sent, ok;
    int bad_status, bad_rc;     /* the first failure */
    char bad_body[200];
    pthread_t th;
};

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    char body[512];
    chat(body, sizeof body, "mock-llama-3.1-8b", 20);
    while (h_now_ms() < l->until && l->sent < l->max) {
        struct h_resp r;
        int rc = post(l->port, NULL, body, &r, 10000 * h_slow());
        l->sent++;
        if (rc == H_OK && r.status == 200) {
            l->ok++;
        } else if (!l->bad_status && !l->bad_rc) {
            l->bad_rc = rc;
            l->bad_status = r.status;
            snprintf(l->bad_body, sizeof l->bad_body, "%s", r.body ? r.body : "");
        }
        h_resp_free(&r);
    }
    return NULL;
}

Test(failover, kill_one_of_three_under_load_fails_nothing)
{
    struct h_mock a, b, c;
    /* 20 tokens at 400 tokens/s after 20 ms: about 70 ms a request */
    H_MOCK(&a, "mock-2", "--tps 400 --ttft-ms 20 --max-running 2");
    H_MOCK(&b, "mock-4", "--tps 400 --ttft-ms 20 --max-running 4");
    H_MOCK(&c, "mock-8", "--tps 400 --ttft-ms 20 --max-running 8");
    struct h_gw g = {0};
    h_gw_config(&g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\n"
                "balance = capacity\nmetrics_interval = 50ms\nhealth_interval = 100ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                a.port, b.port, c.port);
    H_GW(&g);

    enum { N = 6 };
    struct loader l[N];
    int64_t start = h_now_ms();
    for (int i = 0; i < N; i++) {
        memset(&l[i], 0, sizeof l[i]);
        l[i].port = g.port;
        l[i].until = start + 3000;
        l[i].max = 150;
        cr_assert_eq(pthread_create(&l[i].th, NULL, loader_main, &l[i]), 0);
    }
    /* the largest engine, killed once it has served some and holds some in flight */
    cr_assert(wait_mock_metric(c.port, "vllm:request_success_total", 5, 2000 * h_slow()),
              "the engine to be killed served fewer than 5 requests: no load on it");
    cr_assert(wait_mock_metric(c.port, "vllm:num_requests_running", 1, 1000 * h_slow()),
              "the engine to be killed has nothing in flight");
    double running = h_metric0(c.port, "vllm:num_requests_running");
    double served = h_metric0(c.port, "vllm:request_success_total");
    cr_assert_eq(kill(c.pid, SIGKILL), 0);
    int64_t killed = h_now_ms();
    h_wait_exit(c.pid, 2000);
    int down_ms = wait_up(&g, "gpu", c.port, 0, 2000 * h_slow());
    for (int i = 0; i < N; i++)
        pthread_join(l[i].th, NULL);

    int sent = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        sent += l[i].sent;
        ok += l[i].ok;
    }
    cr_log_info("kill_one_of_three: %d requests, %d ok; the killed engine had served %.0f, %.0f running just before; "
                "up=0 %d ms after the kill; retries from it %.0f, its failed attempts %.0f",
                sent, ok, served, running, down_ms, bmetric(&g, "aigw_backend_retries_total", "gpu", c.port, NULL),
                bmetric(&g, "aigw_backend_requests_total", "gpu", c.port, "result=\"failed\""));
    for (int i = 0; i < N; i++)
        cr_expect(l[i].ok == l[i].sent,
                  "client %d: %d of %d requests failed; the first: rc %d status %d body %s", i,
                  l[i].sent - l[i].ok, l[i].sent, l[i].bad_rc, l[i].bad_status, l[i].bad_body);
    cr_assert_eq(ok, sent, "%d of %d requests failed when one backend was killed; aigw stderr:\n%s", sent - ok,
                 sent, h_tail(g.tag));
    cr_assert(sent >= 60, "only %d requests in 3 s: no real load", sent);
    cr_assert(down_ms >= 0, "the killed backend's aigw_backend_up never became 0 (%.0f); aigw stderr:\n%s",
              up(&g, "gpu", c.port), h_tail(g.tag));
    (void)killed;
    h_finish();
}

/* ---- 2: a stalled backend is ejected and comes back ---- */

Test(failover, stalled_backend_is_ejected)
{
    struct h_mock m[3];
    H_MOCK(&m[0], "mock-0", "--tps 0 --ttft-ms 0");
    H_MOCK(&m[1], "mock-1", "--tps 0 --ttft-ms 0");
    H_MOCK(&m[2], "mock-2", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    h_gw_config(&g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\n"
                "balance = round_robin\nhealth = /health\nhealth_interval = 100ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                m[0].port, m[1].port, m[2].port);
    H_GW(&g);
    char body[512];
    chat(body, sizeof body, "mock-llama-3.1-8b", 5);
    /* traffic to all three first, so aigw has pooled connections to each */
    for (int i = 0; i < 6; i++) {
        struct h_resp r;
        cr_assert_eq(post(g.port, NULL, body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(up(&g, "gpu", m[i].port), 1);

    struct h_mock *s = &m[1];
    char addr[64];
    snprintf(addr, sizeof addr, "backend 127.0.0.1:%d: down", s->port);
    cr_assert_eq(kill(s->pid, SIGSTOP), 0);
    int down_ms = wait_up(&g, "gpu", s->port, 0, 1500 * h_slow());
    if (down_ms < 0)
        kill(s->pid, SIGCONT);
    cr_assert(down_ms >= 0, "a SIGSTOPped backend still up after %d ms; aigw stderr:\n%s", 1500 * h_slow(),
              h_tail(g.tag));
    cr_log_info("stalled: aigw_backend_up 0 after %d ms", down_ms);
    cr_expect(h_wait_log_line(g.tag, addr, NULL, 1000), "no \"%s\" on aigw's stderr:\n%s", addr, h_tail(g.tag));

    for (int i = 0; i < 20; i++) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "X-Request-Id: stall-%d\r\n", i);
        struct h_resp r;
        int64_t t = h_now_ms();
        int rc = post(g.port, hdr, body, &r, 1000 * h_slow());
        int64_t took = h_now_ms() - t;
        if (rc != H_OK || r.status != 200 || took > 500 * h_slow())
            kill(s->pid, SIGCONT);
        cr_assert_eq(rc, H_OK, "request %d with a backend stalled: rc %d after %lld ms", i, rc, (long long)took);
        cr_assert_eq(r.status, 200, "request %d with a backend stalled: %d %s", i, r.status, r.body);
        cr_assert(took <= 500 * h_slow(), "request %d took %lld ms with a backend stalled", i, (long long)took);
        h_resp_free(&r);
    }
    char stalled[64];
    snprintf(stalled, sizeof stalled, "\"backend\":\"127.0.0.1:%d\"", s->port);
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "stall-%d", i);
        char *line = log_line(id, 3000 * h_slow());
        if (!line)
            kill(s->pid, SIGCONT);
        cr_assert_not_null(line, "no access log line for %s", id);
        if (strstr(line, stalled))
            kill(s->pid, SIGCONT);
        cr_assert_null(strstr(line, stalled), "a request went to the stalled backend: %s", line);
        free(line);
    }

    cr_assert_eq(kill(s->pid, SIGCONT), 0);
    int up_ms = wait_up(&g, "gpu", s->port, 1, 2000 * h_slow());
    cr_assert(up_ms >= 0, "the resumed backend is not up after %d ms; aigw stderr:\n%s", 2000 * h_slow(),
              h_tail(g.tag));
    cr_log_info("stalled: aigw_backend_up 1 again %d ms after SIGCONT", up_ms);
    snprintf(addr, sizeof addr, "backend 127.0.0.1:%d: up", s->port);
    cr_expect(h_wait_log_line(g.tag, addr, NULL, 1000), "no \"%s\" on aigw's stderr:\n%s", addr, h_tail(g.tag));
    double before = h_metric0(s->port, "mockllm_requests_total");
    for (int i = 0; i < 12; i++) {
        struct h_resp r;
        cr_assert_eq(post(g.port, NULL, body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    double after = h_metric0(s->port, "mockllm_requests_total");
    cr_assert(after - before >= 2, "the resumed backend got %.0f of 12 requests (round robin over 3)", after - before);
    h_finish();
}

/* ---- 3: a backend answering 500s opens its circuit, and recovers ---- */

Test(failover, failing_backend_opens_circuit_and_recovers)
{
    struct h_mock bad, good;
    H_MOCK(&bad, "mock-bad", "--tps 0 --ttft-ms 0 --fail-rate 1");
    H_MOCK(&good, "mock-good", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    h_gw_config(&g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                bad.port, good.port);
    H_GW(&g);
    cr_assert_eq(up(&g, "gpu", bad.port), 1);
    char body[512];
    chat(body, sizeof body, "mock-llama-3.1-8b", 5);

    /* until 20 in a row are 200 (well within the first 1 s backoff) */
    int n500 = 0, n200 = 0, streak = 0, total = 0;
    while (total < 60 && streak < 20) {
        struct h_resp r;
        int rc = post(g.port, NULL, body, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "request %d: rc %d", total, rc);
        cr_assert(r.status == 200 || r.status == 500, "request %d: %d %s", total, r.status, r.body);
        if (r.status == 500) {
            cr_assert(strstr(r.body, "simulated engine failure"), "a 500 not from the engine: %s", r.body);
            n500++;
            streak = 0;
        } else {
            n200++;
            streak++;
        }
        total++;
        h_resp_free(&r);
    }
    cr_log_info("circuit: %d requests, %d answered 500 before the circuit kept them away", total, n500);
    cr_assert(n500 >= 1, "no 500 reached the client: was the failing backend used at all?");
    cr_assert(streak >= 20, "no 20 successes in a row after %d requests (%d 500s); aigw stderr:\n%s", total, n500,
              h_tail(g.tag));
    cr_assert(n500 <= 12, "%d 500s before the circuit opened (5 per shard expected)", n500);
    cr_assert_eq(h_metric0(bad.port, "mockllm_failed_total"), n500);
    cr_assert(bmetric(&g, "aigw_backend_circuit_opens_total", "gpu", bad.port, NULL) >= 1,
              "aigw_backend_circuit_opens_total of the failing backend is %.0f",
              bmetric(&g, "aigw_backend_circuit_opens_total", "gpu", bad.port, NULL));
    /* the gauge follows within ~100 ms; the circuit stays open 1 s */
    int down_ms = wait_up(&g, "gpu", bad.port, 0, 300 * h_slow());
    cr_assert(down_ms >= 0, "aigw_backend_up of a backend with an open circuit is %.0f", up(&g, "gpu", bad.port));
    cr_assert_eq(up(&g, "gpu", good.port), 1);
    cr_assert_eq(bmetric(&g, "aigw_backend_circuit_opens_total", "gpu", good.port, NULL), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", bad.port);
    cr_assert(h_wait_log_line(g.tag, addr, "circuit open", 1000), "no \"circuit open\" for %s on aigw's stderr:\n%s", addr,
              h_tail(g.tag));
    cr_assert(bmetric(&g, "aigw_backend_requests_total", "gpu", bad.port, "result=\"failed\"") >= n500);

    /* the engine is fixed: a healthy one on the same port */
    int port = bad.port;
    cr_assert_neq(h_stop(bad.pid, 3000), -1);
    struct h_mock fixed;
    cr_assert_eq(h_mock_start_port(&fixed, "mock-fixed", port, "--tps 0 --ttft-ms 0"), 0,
                 "aigw-mockllm did not come back on port %d:\n%s", port, h_tail("mock-fixed"));
    int64_t start = h_now_ms(), end = start + 5000 * h_slow();
    int sent = 0;
    bool reached = false;
    while (!reached && h_now_ms() < end) {
        struct h_resp r;
        int rc = post(g.port, NULL, body, &r, T_RESP);
        cr_assert_eq(rc, H_OK);
        cr_assert_eq(r.status, 200, "request %d after the fix: %d %s", sent, r.status, r.body);
        h_resp_free(&r);
        sent++;
        reached = h_metric0(fixed.port, "mockllm_requests_total") >= 1;
        if (!reached)
            h_sleep_ms(50);
    }
    cr_assert(reached, "the fixed backend got no request in %d ms (%d sent); aigw stderr:\n%s", 5000 * h_slow(),
              sent, h_tail(g.tag));
    cr_log_info("circuit: the fixed backend got a request %lld ms after it came back", (long long)(h_now_ms() - start));
    cr_assert(wait_up(&g, "gpu", port, 1, 1000 * h_slow()) >= 0, "aigw_backend_up is %.0f after the probe succeeded",
              up(&g, "gpu", port));
    cr_assert(h_wait_log_line(g.tag, addr, "circuit closed", 1000), "no \"circuit closed\" for %s on aigw's stderr:\n%s",
              addr, h_tail(g.tag));
    /* and it takes its share again */
    double before = h_metric0(fixed.port, "mockllm_requests_total");
    for (int i = 0; i < 10; i++) {
        struct h_resp r;
        cr_assert_eq(post(g.port, NULL, body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    double got = h_metric0(fixed.port, "mockllm_requests_total") - before;
    cr_assert(got >= 3, "the recovered backend got %.0f of 10 round-robin requests", got);
    h_finish();
}

/* One shard, one engine taking one request at a time, a queue of queue_size
 * that waits up to 10 s, and keys of every priority. */
static void one_slot_gw(struct h_gw *g, struct h_mock *m, int queue_size)
{
    H_MOCK(m, "mock", "--tps 20 --ttft-ms 0");
    write_keys();
    *g = (struct h_gw){.shards = 1};
    h_gw_config(g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_size = %d\nqueue_timeout = 10s\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n\n" TIERS,
                m->port, queue_size, h_keys_path());
    H_GW(g);
}

/* ---- 4: the queue serves high before normal before low ---- */

Test(failover, queue_serves_high_before_normal_before_low)
{
    struct h_mock m;
    struct h_gw g;
    one_slot_gw(&g, &m, 8);

    struct flight occ, lo, mid, hi;
    occupy(&occ, &g, &m, KEY_MID, "mock-llama-3.1-8b", 16, "occupier");   /* 800 ms */
    double waits0 = pmetric(&g, "aigw_pool_queue_wait_seconds_count", "gpu", NULL);
    char body[512];
    chat(body, sizeof body, "mock-llama-3.1-8b", 2);   /* 100 ms each */
    /* queued in the worst order: each waits before the next is sent */
    struct flight *order[3] = {&lo, &mid, &hi};
    const char *keys[3] = {KEY_LO, KEY_MID, KEY_HI}, *ids[3] = {"q-low", "q-normal", "q-high"};
    for (int i = 0; i < 3; i++) {
        fly(order[i], &g, keys[i], body, ids[i]);
        double qlen = h_wait_metric(g.admin_port, "aigw_pool_queue_length{pool=\"gpu\"}", H_EQ, i + 1,
                                    2000 * h_slow());
        cr_assert_eq(qlen, i + 1, "aigw_pool_queue_length after %s was sent", ids[i]);
    }
    cr_expect(!atomic_load(&lo.done) && !atomic_load(&mid.done) && !atomic_load(&hi.done),
              "a request was answered while the backend was full");
    land(&occ);
    land(&lo);
    land(&mid);
    land(&hi);
    struct flight *all[] = {&occ, &lo, &mid, &hi};
    const char *names[] = {"occupier", "low", "normal", "high"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(all[i]->rc, H_OK, "%s: rc %d", names[i], all[i]->rc);
        cr_assert_eq(all[i]->r.status, 200, "%s: %d %s", names[i], all[i]->r.status, all[i]->r.body);
    }
    cr_log_info("queue: done after the occupier: high %lld ms, normal %lld ms, low %lld ms",
                (long long)(hi.done_ms - occ.done_ms), (long long)(mid.done_ms - occ.done_ms),
                (long long)(lo.done_ms - occ.done_ms));
    cr_assert(hi.done_ms < mid.done_ms && mid.done_ms < lo.done_ms,
              "completion order should be high, normal, low; done at +%lld (high) +%lld (normal) +%lld (low) ms "
              "after sending low",
              (long long)(hi.done_ms - lo.sent_ms), (long long)(mid.done_ms - lo.sent_ms),
              (long long)(lo.done_ms - lo.sent_ms));
    cr_assert(hi.done_ms >= occ.done_ms, "high finished before the occupier it waited for");
    double waits = pmetric(&g, "aigw_pool_queue_wait_seconds_count", "gpu", NULL) - waits0;
    cr_assert_eq(waits, 3, "aigw_pool_queue_wait_seconds_count rose by %.0f for 3 queued requests", waits);
    cr_assert_eq(pmetric(&g, "aigw_pool_queue_length", "gpu", NULL), 0);
    for (int i = 0; i < 4; i++)
        h_resp_free(&all[i]->r);
    h_finish();
}

/* ---- 5: a full pool answers 503 no_capacity with Retry-After ---- */

Test(failover, full_pool_answers_503_with_retry_after)
{
    struct h_mock mw, mz;
    H_MOCK(&mw, "mock-w", "--tps 20 --ttft-ms 0 --model mock-w");
    H_MOCK(&mz, "mock-z", "--tps 20 --ttft-ms 0 --model mock-z");
    struct h_gw g = {.shards = 1};
    h_gw_config(&g, TIMEOUTS,
                "[pool w]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_timeout = 300ms\n\n"
                "[pool z]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_timeout = 0\n\n"
                "[route w]\npath = /v1/chat/completions\npool = w\nmodels = mock-w\n\n"
                "[route z]\npath = /v1/chat/completions\npool = z\nmodels = mock-z\n",
                mw.port, mz.port);
    H_GW(&g);
    char body[512];

    /* waits 300 ms, then 503 */
    struct flight occ;
    occupy(&occ, &g, &mw, NULL, "mock-w", 30, "occ-w");   /* 1.5 s */
    struct h_resp r;
    int64_t t = h_now_ms();
    int rc = post(g.port, NULL, chat(body, sizeof body, "mock-w", 2), &r, T_RESP);
    int64_t took = h_now_ms() - t;
    cr_assert_eq(rc, H_OK);
    cr_assert(is_no_capacity(&r), "a full pool after queue_timeout: %d %s", r.status, r.body);
    cr_assert(retry_after_ok(&r), "Retry-After: %s", h_header(&r, "Retry-After") ? h_header(&r, "Retry-After") : "(none)");
    cr_log_info("full pool: 503 after %lld ms (queue_timeout 300ms), Retry-After %s", (long long)took,
                h_header(&r, "Retry-After"));
    cr_assert(took >= 250, "503 after %lld ms, before queue_timeout (300ms)", (long long)took);
    cr_assert(took <= 1000 * h_slow(), "503 after %lld ms, queue_timeout is 300ms", (long long)took);
    h_resp_free(&r);
    cr_assert_eq(pmetric(&g, "aigw_pool_shed_total", "w", "reason=\"queue_timeout\""), 1);
    cr_assert_eq(pmetric(&g, "aigw_pool_queue_length", "w", NULL), 0);
    cr_assert(!atomic_load(&occ.done), "the occupier finished early: the test proves nothing");
    land(&occ);
    cr_assert_eq(occ.rc, H_OK);
    cr_assert_eq(occ.r.status, 200);
    h_resp_free(&occ.r);
    /* the engine only ever saw the occupier */
    cr_assert_eq(h_metric0(mw.port, "mockllm_requests_total"), 1);

    /* queue_timeout = 0: 503 at once */
    occupy(&occ, &g, &mz, NULL, "mock-z", 30, "occ-z");
    t = h_now_ms();
    rc = post(g.port, NULL, chat(body, sizeof body, "mock-z", 2), &r, T_RESP);
    took = h_now_ms() - t;
    cr_assert_eq(rc, H_OK);
    cr_assert(is_no_capacity(&r), "a full pool with queue_timeout 0: %d %s", r.status, r.body);
    cr_assert(retry_after_ok(&r), "Retry-After: %s", h_header(&r, "Retry-After") ? h_header(&r, "Retry-After") : "(none)");
    cr_assert(took <= 150 * h_slow(), "queue_timeout 0, yet the 503 took %lld ms", (long long)took);
    h_resp_free(&r);
    cr_assert_eq(pmetric(&g, "aigw_pool_shed_total", "z", NULL), 1);
    cr_assert(!atomic_load(&occ.done), "the occupier finished early: the test proves nothing");
    land(&occ);
    cr_assert_eq(occ.r.status, 200);
    h_resp_free(&occ.r);
    h_finish();
}

/* ---- 6: a full queue sheds low priority first ---- */

Test(failover, full_queue_sheds_low_first)
{
    struct h_mock m;
    struct h_gw g;
    one_slot_gw(&g, &m, 1);
    char body[512];
    chat(body, sizeof body, "mock-llama-3.1-8b", 2);

    struct flight occ, lo1, hi, lo2;
    occupy(&occ, &g, &m, KEY_MID, "mock-llama-3.1-8b", 24, "occupier");   /* 1.2 s */
    fly(&lo1, &g, KEY_LO, body, "low-1");
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_pool_queue_length{pool=\"gpu\"}", H_EQ, 1, 2000 * h_slow()), 1,
                 "the low request is not waiting in the queue");
    cr_assert(!atomic_load(&lo1.done), "the low request was answered (%d) instead of waiting", lo1.r.status);

    /* high displaces the waiting low, which is answered at once */
    fly(&hi, &g, KEY_HI, body, "high");
    cr_assert(wait_done(&lo1, 300 * h_slow()), "the waiting low request was not shed when high arrived");
    land(&lo1);
    cr_assert_eq(lo1.rc, H_OK);
    cr_assert(is_no_capacity(&lo1.r), "displaced low: %d %s", lo1.r.status, lo1.r.body);
    cr_assert(retry_after_ok(&lo1.r), "displaced low: no valid Retry-After");
    cr_log_info("shed: the low one answered %lld ms after high arrived", (long long)(lo1.done_ms - hi.sent_ms));
    cr_assert_eq(pmetric(&g, "aigw_pool_shed_total", "gpu", "reason=\"queue_full\""), 1);

    /* another low, while high waits: shed at once */
    fly(&lo2, &g, KEY_LO, body, "low-2");
    cr_assert(wait_done(&lo2, 300 * h_slow()), "a low request to a queue full of high was not shed at once");
    land(&lo2);
    cr_assert_eq(lo2.rc, H_OK);
    cr_assert(is_no_capacity(&lo2.r), "low against a full queue: %d %s", lo2.r.status, lo2.r.body);
    cr_assert(retry_after_ok(&lo2.r));
    cr_assert_eq(pmetric(&g, "aigw_pool_shed_total", "gpu", "reason=\"queue_full\""), 2);
    cr_assert(!atomic_load(&hi.done), "high finished before the occupier could have");

    land(&occ);
    land(&hi);
    cr_assert_eq(occ.r.status, 200);
    cr_assert_eq(hi.rc, H_OK);
    cr_assert_eq(hi.r.status, 200, "high: %d %s", hi.r.status, hi.r.body);
    cr_assert(hi.done_ms >= occ.done_ms, "high done before the occupier");
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 2, "only the occupier and high reach the engine");
    cr_assert_eq(pmetric(&g, "aigw_pool_shed_total", "gpu", "reason=\"queue_timeout\""), 0);
    h_resp_free(&occ.r);
    h_resp_free(&hi.r);
    h_resp_free(&lo1.r);
    h_resp_free(&lo2.r);
    h_finish();
}

/* ---- 7: the fallback pool takes over when a pool is saturated or down ---- */

Test(failover, fallback_takes_over_when_saturated_or_down)
{
    struct h_mock ma, mb;
    H_MOCK(&ma, "mock-a", "--tps 20 --ttft-ms 0 --model mock-a");
    H_MOCK(&mb, "mock-b", "--tps 0 --ttft-ms 0 --model mock-a --model mock-c");
    int dead = h_free_port();
    struct h_gw g = {.shards = 1};
    h_gw_config(&g, TIMEOUTS,
                "[pool a]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_timeout = 200ms\nfallback = b\n\n"
                "[pool b]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\n\n"
                "[pool c]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nhealth = /health\n"
                "health_interval = 100ms\nqueue_timeout = 2s\nfallback = b\n\n"
                "[route a]\npath = /v1/chat/completions\npool = a\nmodels = mock-a\n\n"
                "[route c]\npath = /v1/chat/completions\npool = c\nmodels = mock-c\n",
                ma.port, mb.port, dead);
    H_GW(&g);
    char body[512];

    /* saturated: after queue_timeout, to b */
    struct flight occ;
    occupy(&occ, &g, &ma, NULL, "mock-a", 20, "occ-a");   /* 1 s */
    struct h_resp r;
    int64_t t = h_now_ms();
    int rc = post(g.port, "X-Request-Id: fb-saturated\r\n", chat(body, sizeof body, "mock-a", 2), &r, T_RESP);
    int64_t took = h_now_ms() - t;
    cr_assert_eq(rc, H_OK);
    cr_assert_eq(r.status, 200, "a saturated pool with a fallback: %d %s", r.status, r.body);
    h_resp_free(&r);
    cr_log_info("fallback: saturated pool a answered by b after %lld ms (queue_timeout 200ms)", (long long)took);
    cr_assert(took >= 150, "answered after %lld ms: it did not wait queue_timeout (200ms) first", (long long)took);
    cr_assert(took <= 900 * h_slow(), "answered after %lld ms", (long long)took);
    cr_assert_eq(h_metric0(mb.port, "mockllm_requests_total"), 1, "the fallback pool's backend did not serve it");
    cr_assert(pmetric(&g, "aigw_pool_fallback_total", "a", NULL) >= 1);
    char *line = log_line("fb-saturated", 3000 * h_slow());
    cr_assert_not_null(line);
    char want[64];
    snprintf(want, sizeof want, "\"backend\":\"127.0.0.1:%d\"", mb.port);
    cr_assert(strstr(line, want), "the access log should name b's backend: %s", line);
    free(line);
    cr_assert(!atomic_load(&occ.done), "the occupier finished early: the test proves nothing");
    land(&occ);
    cr_assert_eq(occ.r.status, 200);
    h_resp_free(&occ.r);

    /* down: to b at once */
    int down_ms = wait_up(&g, "c", dead, 0, 1500 * h_slow());
    cr_assert(down_ms >= 0, "a backend nobody listens on is still up; aigw stderr:\n%s", h_tail(g.tag));
    double b0 = h_metric0(mb.port, "mockllm_requests_total");
    for (int i = 0; i < 5; i++) {
        t = h_now_ms();
        rc = post(g.port, NULL, chat(body, sizeof body, "mock-c", 2), &r, T_RESP);
        took = h_now_ms() - t;
        cr_assert_eq(rc, H_OK);
        cr_assert_eq(r.status, 200, "pool c down, fallback b: %d %s", r.status, r.body);
        cr_assert(took <= 300 * h_slow(), "pool c down: answered after %lld ms, not at once", (long long)took);
        h_resp_free(&r);
    }
    cr_assert_eq(h_metric0(mb.port, "mockllm_requests_total") - b0, 5);
    cr_assert(pmetric(&g, "aigw_pool_fallback_total", "c", NULL) >= 5, "aigw_pool_fallback_total{pool=\"c\"} is %.0f",
              pmetric(&g, "aigw_pool_fallback_total", "c", NULL));
    h_finish();
}

/* ---- 8: retries move a 503 (or a refused connect) to another backend ---- */

Test(failover, retries_move_a_503_to_another_backend)
{
    struct h_b503 s1, s0;
    h_b503_start(&s1);
    h_b503_start(&s0);
    struct h_mock m1, m0, md;
    H_MOCK(&m1, "mock-r1", "--tps 0 --ttft-ms 0 --model m-r1");
    H_MOCK(&m0, "mock-r0", "--tps 0 --ttft-ms 0 --model m-r0");
    H_MOCK(&md, "mock-rd", "--tps 0 --ttft-ms 0 --model m-rd");
    int dead = h_free_port();
    struct h_gw g = {0};
    h_gw_config(&g, TIMEOUTS,
                "[pool r1]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\nretries = 1\n\n"
                "[pool r0]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\nretries = 0\n\n"
                "[pool rd]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\nretries = 1\n\n"
                "[route r1]\npath = /v1/chat/completions\npool = r1\nmodels = m-r1\n\n"
                "[route r0]\npath = /v1/chat/completions\npool = r0\nmodels = m-r0\n\n"
                "[route rd]\npath = /v1/chat/completions\npool = rd\nmodels = m-rd\n",
                s1.port, m1.port, s0.port, m0.port, dead, md.port);
    H_GW(&g);
    char body[512];

    /* retries = 1: the 503s never reach the client */
    for (int i = 0; i < 10; i++) {
        struct h_resp r;
        int rc = post(g.port, NULL, chat(body, sizeof body, "m-r1", 3), &r, T_RESP);
        cr_assert_eq(rc, H_OK, "r1 request %d: rc %d", i, rc);
        cr_assert_eq(r.status, 200, "r1 request %d, retries = 1: %d %s", i, r.status, r.body);
        h_resp_free(&r);
    }
    int got1 = atomic_load(&s1.requests);
    cr_assert(got1 >= 1, "the 503 backend got no request: round robin over two should send it some");
    double retried = bmetric(&g, "aigw_backend_retries_total", "r1", s1.port, NULL);
    cr_log_info("retries: the 503 backend got %d requests, aigw_backend_retries_total %.0f", got1, retried);
    cr_assert(retried >= 1, "aigw_backend_retries_total of the 503 backend is %.0f after %d 503s", retried, got1);
    cr_assert_eq(retried, got1, "each 503 is retried once");
    cr_assert_eq(h_metric0(m1.port, "mockllm_requests_total"), 10);
    cr_assert_eq(bmetric(&g, "aigw_backend_requests_total", "r1", s1.port, "result=\"failed\""), got1);
    cr_assert_eq(bmetric(&g, "aigw_backend_requests_total", "r1", m1.port, "result=\"ok\""), 10);

    /* retries = 0: the backend's 503 is the answer */
    int n503 = 0;
    for (int i = 0; i < 10; i++) {
        struct h_resp r;
        int rc = post(g.port, NULL, chat(body, sizeof body, "m-r0", 3), &r, T_RESP);
        cr_assert_eq(rc, H_OK, "r0 request %d: rc %d", i, rc);
        cr_assert(r.status == 200 || r.status == 503, "r0 request %d: %d %s", i, r.status, r.body);
        if (r.status == 503) {
            cr_assert(strstr(r.body, "scripted overload"), "the 503 should be the backend's: %s", r.body);
            n503++;
        }
        h_resp_free(&r);
    }
    cr_assert(n503 >= 1, "retries = 0, yet no 503 reached the client");
    cr_assert_eq(n503, atomic_load(&s0.requests));
    cr_assert_eq(bmetric(&g, "aigw_backend_retries_total", "r0", s0.port, NULL), 0);

    /* a refused connect is retried too */
    for (int i = 0; i < 10; i++) {
        struct h_resp r;
        int rc = post(g.port, NULL, chat(body, sizeof body, "m-rd", 3), &r, T_RESP);
        cr_assert_eq(rc, H_OK, "rd request %d: rc %d", i, rc);
        cr_assert_eq(r.status, 200, "rd request %d, a dead backend and retries = 1: %d %s", i, r.status, r.body);
        h_resp_free(&r);
    }
    cr_assert_eq(h_metric0(md.port, "mockllm_requests_total"), 10);
    cr_assert(bmetric(&g, "aigw_backend_retries_total", "rd", dead, NULL) >= 1,
              "aigw_backend_retries_total of the dead backend is %.0f",
              bmetric(&g, "aigw_backend_retries_total", "rd", dead, NULL));
    h_finish();
    h_b503_stop(&s1);
    h_b503_stop(&s0);
}
