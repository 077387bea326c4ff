/* Capacity-aware routing: aigw reads each backend engine's /metrics and sends
 * work where there is room (balance = capacity), and stops trusting metrics that
 * stopped coming. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

TestSuite(capacity, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

static void capacity_gw(struct h_gw *g, int port_small, int port_large)
{
    h_gw_config(g, "connect = 1s\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 10s\n",
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = capacity\n"
                "metrics_interval = 50ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                port_small, port_large);
    H_GW(g);
}

static double gauge(struct h_gw *g, const char *name, int port)
{
    char q[200];
    snprintf(q, sizeof q, "%s{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", name, port);
    return h_metric(g->admin_port, q);
}

/* Waits until the gauge of the backend on port is exported (fresh metrics) or,
 * with want_absent, until it is gone. */
static bool wait_gauge(struct h_gw *g, const char *name, int port, bool want_absent, int ms)
{
    int64_t end = h_now_ms() + ms;
    do {
        double v = gauge(g, name, port);
        if (want_absent ? v != v : v == v)
            return true;
        h_sleep_ms(20);
    } while (h_now_ms() < end);
    return false;
}

/* Two engines, one with 2 sequence slots and one with 16: a burst of 24
 * streams staggered over half a second. Once the small one's queue shows in
 * its metrics, new requests go to the large one. */
Test(capacity, work_goes_where_the_engine_has_room)
{
    struct h_mock small, large;
    H_MOCK(&small, "small", "--tps 40 --ttft-ms 10 --max-running 2");
    H_MOCK(&large, "large", "--tps 40 --ttft-ms 10 --max-running 16");
    struct h_gw g = {0};
    capacity_gw(&g, small.port, large.port);
    cr_assert(wait_gauge(&g, "aigw_backend_engine_queue_length", small.port, false, 3000 * h_slow()),
              "no fresh metrics from the small engine; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert(wait_gauge(&g, "aigw_backend_engine_queue_length", large.port, false, 3000 * h_slow()));

    enum { N = 24 };
    struct h_conn c[N];
    char body[512];
    h_chat_body(body, sizeof body, 40, true);
    for (int i = 0; i < N; i++) {
        H_CONNECT_GW(&c[i], &g);
        cr_assert_eq(h_sendf(&c[i],
                             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                             strlen(body), body),
                     0);
        h_sleep_ms(20);
    }
    for (int i = 0; i < N; i++) {
        struct h_resp r;
        cr_assert_eq(h_recv(&c[i], &r, 4 * T_RESP), H_OK, "stream %d did not complete", i);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
        h_close(&c[i]);
    }
    double done_small = h_metric0(small.port, "vllm:request_success_total");
    double done_large = h_metric0(large.port, "vllm:request_success_total");
    cr_assert_eq(done_small + done_large, N);
    /* equal shares would be 12 each; least_outstanding gives about that */
    cr_assert(done_small <= 8, "the 2-slot engine got %.0f of %d streams (the 16-slot one %.0f)", done_small, N,
              done_large);
    h_finish();
}

/* A stalled engine's metrics stop coming: aigw keeps exporting its last queue
 * length, with an age that grows past the staleness rule (routing treats it as
 * unknown then), and the age falls back when the engine answers again. */
Test(capacity, stale_metrics_are_not_trusted)
{
    struct h_mock a, b;
    H_MOCK(&a, "a", "--tps 0 --ttft-ms 0");
    H_MOCK(&b, "b", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    capacity_gw(&g, a.port, b.port);
    cr_assert(wait_gauge(&g, "aigw_backend_engine_queue_length", a.port, false, 3000 * h_slow()),
              "no fresh metrics; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(gauge(&g, "aigw_backend_kv_cache_usage_ratio", a.port), 0);
    cr_assert_lt(gauge(&g, "aigw_backend_metrics_age_seconds", a.port), 1.0);

    cr_assert_eq(kill(a.pid, SIGSTOP), 0);
    /* 50 ms interval: stale after 1.05 s (interval + 1 s) */
    char q[200];
    snprintf(q, sizeof q, "aigw_backend_metrics_age_seconds{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", a.port);
    double age = h_wait_metric(g.admin_port, q, H_GE, 1.2, 4000 * h_slow());
    cr_assert_geq(age, 1.2, "a stalled engine's metrics age stayed at %g", age);
    cr_assert_eq(gauge(&g, "aigw_backend_engine_queue_length", a.port), 0, "the last queue length went away");
    cr_assert_lt(gauge(&g, "aigw_backend_metrics_age_seconds", b.port), 1.0, "the live engine's metrics aged too");
    kill(a.pid, SIGCONT);
    cr_assert_leq(h_wait_metric(g.admin_port, q, H_LE, 0.5, 4000 * h_slow()), 0.5,
                  "metrics did not come back after the engine resumed");
    h_finish();
}
