/* SIGHUP reloads without losing a request; an invalid file keeps the old
 * configuration; SIGTERM drains a running stream and exits 0. */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

TestSuite(signals, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define T_RESP (5000 * h_slow())

struct traffic {
    int port;
    int total;
    atomic_int done;
    atomic_int ok;
    char first_failure[512];
};

/* Sequential requests, a new connection every 10th (and whenever aigw ends one). */
static void *traffic_loop(void *arg)
{
    struct traffic *t = arg;
    char body[512];
    h_chat_body(body, sizeof body, 3, false);
    struct h_conn c = {.fd = -1};
    for (int i = 0; i < t->total; i++) {
        if (c.fd >= 0 && (i % 10 == 0 || c.eof)) h_close(&c);
        if (c.fd < 0 && h_connect(&c, t->port) < 0) {
            if (!t->first_failure[0])
                snprintf(t->first_failure, sizeof t->first_failure, "request %d: connect failed", i);
            atomic_fetch_add(&t->done, 1);
            continue;
        }
        char rid[64];
        snprintf(rid, sizeof rid, "X-Request-Id: hup-%d\r\n", i);
        struct h_resp r;
        int rc = h_request(&c, "POST", "/v1/chat/completions", rid, body, &r, T_RESP);
        if (rc == H_OK && r.status == 200) {
            atomic_fetch_add(&t->ok, 1);
        } else if (!t->first_failure[0]) {
            snprintf(t->first_failure, sizeof t->first_failure, "request %d: rc %d status %d %.300s", i, rc,
                     r.status, r.body ? r.body : "");
        }
        if (rc != H_OK || !r.keep_alive) h_close(&c);
        h_resp_free(&r);
        atomic_fetch_add(&t->done, 1);
    }
    if (c.fd >= 0) h_close(&c);
    return NULL;
}

static void wait_progress(struct traffic *t, int n)
{
    int64_t deadline = h_now_ms() + 20000 * h_slow();
    while (atomic_load(&t->done) < n && h_now_ms() < deadline) h_sleep_ms(2);
}

#define REQS "mockllm_requests_total"

/* One request on a new connection; it must be answered 200. */
static void one_ok(int port)
{
    char body[512];
    struct h_resp r;
    int rc = h_post(port, "/v1/chat/completions", h_chat_body(body, sizeof body, 2, false), &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer (%d)", rc);
    cr_assert_eq(r.status, 200, "status %d: %s", r.status, r.body ? r.body : "");
    h_resp_free(&r);
}

/* Every shard sends new requests to the backend on `to`, and none to the one on `from`. */
static void every_shard_uses(const struct h_gw *g, int to, int from)
{
    double to0 = h_metric0(to, REQS), from0 = h_metric0(from, REQS);
    int n = 0;
    for (struct h_each_shard e = h_each_shard_begin(g); h_each_shard_next(&e); n++)
        one_ok(g->port);
    double dto = h_metric0(to, REQS) - to0, dfrom = h_metric0(from, REQS) - from0;
    cr_assert_eq(dto, n, "the backend of the configuration in use got %g of %d requests", dto, n);
    cr_assert_eq(dfrom, 0, "the other backend got %g requests", dfrom);
}

Test(signals, sighup_under_traffic_loses_no_request)
{
    struct h_mock a, b;
    struct h_gw g = {0};
    H_MOCK(&a, "mock-a", "--tps 0 --ttft-ms 0");
    H_MOCK(&b, "mock-b", "--tps 0 --ttft-ms 0");
    h_gw_config(&g, NULL, H_STD_ROUTES, a.port);
    H_GW(&g);

    struct traffic t = {.port = g.port, .total = 300};
    pthread_t th;
    pthread_create(&th, NULL, traffic_loop, &t);

    /* Switch the pool's backend back and forth under traffic, ending on B;
     * each reload applied on every shard before the next. */
    const int at[3] = {50, 130, 210};
    const int to[3] = {b.port, a.port, b.port};
    for (int i = 0; i < 3; i++) {
        wait_progress(&t, at[i]);
        h_gw_config(&g, NULL, H_STD_ROUTES, to[i]);
        H_RELOAD(&g, H_RELOAD_APPLIED);
    }
    pthread_join(th, NULL);

    cr_assert(h_alive(g.pid), "aigw died during reloads; stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(atomic_load(&t.ok), 300, "%d of 300 requests failed across 3 reloads; first: %s\n"
                 "aigw stderr:\n%s", 300 - atomic_load(&t.ok), t.first_failure, h_tail(g.tag));
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_generation"), 4, "one generation at start, three reloads");
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_reloads_total{result=\"ok\"}"), 3);

    /* After the last reload, every shard sends new traffic to B, none to A. */
    every_shard_uses(&g, b.port, a.port);
    h_finish();
}

Test(signals, sighup_with_invalid_file_keeps_old_config)
{
    struct h_mock a, b;
    struct h_gw g = {0};
    H_MOCK(&a, "mock-a", "--tps 0 --ttft-ms 0");
    H_MOCK(&b, "mock-b", "--tps 0 --ttft-ms 0");
    h_gw_config(&g, NULL, H_STD_ROUTES, a.port);
    H_GW(&g);
    every_shard_uses(&g, a.port, b.port);

    /* An invalid file that also names B: if any of it were applied, B would get traffic. */
    char conf[600];
    snprintf(conf, sizeof conf, "%s", g.conf);
    h_write_file(conf,
                 "[server]\nlisten = 127.0.0.1:%d\nshards = 2\n\n[admin]\nlisten = 127.0.0.1:%d\n\n"
                 "[pool local]\nbackend = 127.0.0.1:%d\n\n[route all]\npath = /v1/*\npool = local\n\n"
                 "[no_such_section]\nfoo = bar\n",
                 g.port, g.admin_port, b.port);
    H_RELOAD(&g, H_RELOAD_REFUSED);

    cr_assert(h_alive(g.pid), "aigw exited on an invalid reload; stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_generation"), 1, "a refused file made a generation");
    every_shard_uses(&g, a.port, b.port);
    cr_assert(h_wait_log_line(g.tag, "reload refused", conf, 1000 * h_slow()),
              "the refused reload is not logged with its file name; stderr:\n%s", h_tail(g.tag));

    /* A valid reload afterwards still works. */
    h_gw_config(&g, NULL, H_STD_ROUTES, b.port);
    H_RELOAD(&g, H_RELOAD_APPLIED);
    every_shard_uses(&g, b.port, a.port);
    h_finish();
}

Test(signals, sigterm_drains_a_running_stream)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 10 --ttft-ms 0", NULL);

    /* 20 tokens at 10/s: a 2-second stream. */
    char body[512];
    h_chat_body(body, sizeof body, 20, true);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                         strlen(body), body),
                 0);
    struct h_resp head;
    cr_assert_eq(h_recv_head(&c, &head, T_RESP), H_OK, "no stream head; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(head.status, 200);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    for (int i = 0; i < 2; i++) cr_assert_eq(h_sse_next(&s, T_RESP), 1, "event %d missing", i + 1);

    cr_assert_eq(kill(g.pid, SIGTERM), 0);
    int64_t t_term = h_now_ms();

    /* New connections are refused soon after SIGTERM. */
    bool refused = false;
    while (h_now_ms() - t_term < 1000) {
        struct h_conn probe;
        int rc = h_connect(&probe, g.port);
        if (rc == -ECONNREFUSED) {
            refused = true;
            break;
        }
        if (rc == 0) h_close(&probe);
        h_sleep_ms(20);
    }

    /* The running stream still completes. */
    int rc, events = 2;
    bool done = false;
    while ((rc = h_sse_next(&s, T_RESP)) == 1) {
        events++;
        if (strstr(s.event, "[DONE]")) done = true;
    }
    cr_assert(done, "stream cut by SIGTERM after %d events (rc %d); aigw stderr:\n%s", events, rc,
              h_tail(g.tag));
    cr_assert_eq(rc, 0, "stream body not ended properly after [DONE] during drain (%d)", rc);
    cr_assert(refused, "new connections still accepted 1 s after SIGTERM");
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);

    int st = h_wait_exit(g.pid, 8000 * h_slow());
    cr_assert(st != -1, "aigw still running %lld ms after SIGTERM with nothing in flight",
              (long long)(h_now_ms() - t_term));
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw exit status 0x%x after SIGTERM; stderr:\n%s", st,
              h_tail(g.tag));
    h_finish();
}

Test(signals, sigterm_does_not_wait_for_idle_keepalive)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    /* keepalive far longer than drain_timeout (5s) */
    h_gw_config(&g, "connect = 1s\nfirst_byte = 2s\nidle = 2s\nclient_header = 1s\nkeepalive = 60s\n",
                H_STD_ROUTES, m.port);
    H_GW(&g);

    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);

    int64_t t0 = h_now_ms();
    cr_assert_eq(kill(g.pid, SIGTERM), 0);
    int st = h_wait_exit(g.pid, 8000 * h_slow());
    int64_t took = h_now_ms() - t0;
    cr_assert(st != -1, "aigw did not exit after SIGTERM");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x; stderr:\n%s", st, h_tail(g.tag));
    cr_assert(took < 2000 * h_slow(),
              "an idle keep-alive connection held shutdown for %lld ms (drain_timeout = 5s)", (long long)took);
    cr_assert(h_wait_closed(&c, 1000, NULL), "idle client connection not closed at shutdown");
    h_close(&c);
    h_finish();
}
