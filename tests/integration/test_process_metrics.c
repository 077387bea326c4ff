/* /metrics for incident work: which build runs and how the process fares
 * (process_* as Prometheus client libraries name them), connections taken in
 * and turned away, clients that left mid-response, engine figures that outlive
 * a silent metrics endpoint with their age, and backends named as configured. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

TestSuite(process_metrics, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

static double wall_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* The soft "Max open files" of pid, from /proc/PID/limits; -1 unknown. */
static long long soft_nofile(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    char *text = h_read_file(path);
    long long soft = -1;
    const char *line = text ? strstr(text, "Max open files") : NULL;
    if (line)
        sscanf(line, "Max open files %lld", &soft);
    free(text);
    return soft;
}

Test(process_metrics, build_info_and_process_figures_are_plausible)
{
    double before = wall_s();
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);
    double after = wall_s();

    struct h_resp r;
    cr_assert_eq(h_get(g.admin_port, "/metrics", &r, T_RESP), H_OK);
    cr_assert(strstr(r.body, "# TYPE aigw_build_info gauge\n"), "no aigw_build_info family");
    cr_assert(strstr(r.body, "aigw_build_info{version=\""), "no version label:\n%s", r.body);
    cr_assert(strstr(r.body, "\",wolfssl=\"5."), "no wolfSSL version label");
    h_resp_free(&r);
    cr_assert_eq(h_metric(g.admin_port, "aigw_build_info"), 1);

    /* clock ticks are 10 ms; the start lies between the two readings */
    double start = h_metric(g.admin_port, "process_start_time_seconds");
    cr_assert(start >= before - 1.0 && start <= after + 1.0, "process_start_time_seconds %.2f, aigw started "
              "between %.2f and %.2f", start, before, after);
    double cpu = h_metric(g.admin_port, "process_cpu_seconds_total");
    cr_assert(cpu >= 0 && cpu < 600, "process_cpu_seconds_total %g", cpu);
    double rss = h_metric(g.admin_port, "process_resident_memory_bytes");
    long rss_kb = h_rss_kb(g.pid);
    cr_assert(rss > 1e6 && rss_kb > 0 && rss > rss_kb * 1024.0 / 2 && rss < rss_kb * 1024.0 * 2,
              "process_resident_memory_bytes %.0f, /proc says %ld kB", rss, rss_kb);

    /* the scrape's own connection is open while it is counted: both readings
     * are within a few of each other on an idle gateway */
    int fds = h_count_fds(g.pid);
    double open_fds = h_metric(g.admin_port, "process_open_fds");
    cr_assert(fds > 0 && open_fds >= fds - 3 && open_fds <= fds + 3, "process_open_fds %.0f, /proc/%d/fd has %d",
              open_fds, (int)g.pid, fds);
    long long soft = soft_nofile(g.pid);
    cr_assert(soft > 0);
    cr_assert_eq(h_metric(g.admin_port, "process_max_fds"), (double)soft, "process_max_fds is the soft limit %lld",
                 soft);
    h_finish();
}

Test(process_metrics, connections_over_max_connections_are_counted_refused)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    g.shards = 1;   /* max_connections is split over the shards: 1 is exactly one */
    snprintf(g.server_extra, sizeof g.server_extra, "max_connections = 1\n");
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    double accepted0 = h_metric0(g.admin_port, "aigw_client_connections_accepted_total");
    cr_assert_eq(h_metric0(g.admin_port, "aigw_client_connections_refused_total{reason=\"max_connections\"}"), 0);

    struct h_conn a, b;
    H_CONNECT_GW(&a, &g);
    struct h_resp r;
    cr_assert_eq(h_request(&a, "GET", "/v1/models", NULL, NULL, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_client_connections_accepted_total", H_EQ, accepted0 + 1, T_RESP),
                 accepted0 + 1);

    H_CONNECT_GW(&b, &g);   /* the one too many: its 503 comes unasked */
    cr_assert_eq(h_recv(&b, &r, T_RESP), H_OK, "the second client got no answer");
    cr_assert_eq(r.status, 503);
    h_resp_free(&r);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_client_connections_refused_total{reason=\"max_connections\"}",
                               H_EQ, 1, T_RESP), 1);
    cr_assert_eq(h_metric(g.admin_port, "aigw_client_connections_accepted_total"), accepted0 + 1,
                 "the refused connection was counted accepted too");
    cr_assert_eq(h_metric(g.admin_port, "aigw_client_connections_refused_total{reason=\"no_fds\"}"), 0);
    h_close(&a);
    h_close(&b);
    h_finish();
}

Test(process_metrics, a_client_leaving_mid_stream_is_an_abort)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_client_aborts_total"), 0);

    /* an answered request is no abort */
    struct h_resp r;
    char body[512];
    cr_assert_eq(h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 3, false), &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);

    struct h_conn c;
    struct h_resp head;
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 200, &head, g.tag);
    h_leave_stream_expect_abort(&c, &head, 2, m.port);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_client_aborts_total{route=\"chat\"}", H_EQ, 1, T_RESP), 1,
                 "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(h_metric(g.admin_port, "aigw_client_aborts_total"), 1, "one abort, on route chat only");
    h_finish();
}

/* A backend configured by name keeps the name in every label; its engine's
 * figures stay while its metrics endpoint is silent, with a growing age. */
Test(process_metrics, engine_figures_outlive_a_silent_endpoint_and_labels_are_as_configured)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool gpu]\nbackend = localhost:%d\nbalance = capacity\nmetrics_interval = 50ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n",
                m.port);
    H_GW(&g);
    char q[200];
    snprintf(q, sizeof q, "aigw_backend_engine_queue_length{pool=\"gpu\",backend=\"localhost:%d\"}", m.port);
    /* h_wait_metric reads an absent series as 0: wait for the age, which is never 0 */
    char age_q[200];
    snprintf(age_q, sizeof age_q, "aigw_backend_metrics_age_seconds{pool=\"gpu\",backend=\"localhost:%d\"}", m.port);
    cr_assert_gt(h_wait_metric(g.admin_port, age_q, H_GE, 0.001, 3000 * h_slow()), 0,
                 "no engine metrics for localhost:%d:\n%s", m.port, h_tail(g.tag));
    cr_assert_lt(h_metric(g.admin_port, age_q), 1.0, "fresh metrics are not young");
    cr_assert_eq(h_metric(g.admin_port, q), 0, "no engine queue for localhost:%d", m.port);

    struct h_resp r;
    char body[512];
    cr_assert_eq(h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 3, false), &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    cr_assert_eq(h_get(g.admin_port, "/metrics", &r, T_RESP), H_OK);
    char want[120];
    snprintf(want, sizeof want, "backend=\"localhost:%d\"", m.port);
    cr_assert(strstr(r.body, want), "no series labelled %s", want);
    cr_assert_null(strstr(r.body, "backend=\"127.0.0.1:"), "a series labelled by the resolved address:\n%s", r.body);
    h_resp_free(&r);
    cr_assert_eq(h_get(g.admin_port, "/status.json", &r, T_RESP), H_OK);
    snprintf(want, sizeof want, "\"address\":\"localhost:%d\"", m.port);
    cr_assert(strstr(r.body, want), "/status.json does not name the backend %s:\n%s", want, r.body);
    h_resp_free(&r);
    char *log = h_wait_for_text(h_access_log_path(), want + strlen("\"address\":\""), T_RESP);
    cr_assert_not_null(log, "the access log does not name the backend localhost:%d", m.port);
    free(log);

    cr_assert_eq(kill(m.pid, SIGSTOP), 0);
    /* silent past the staleness rule (interval + 1 s): the figures stay */
    double age = h_wait_metric(g.admin_port, age_q, H_GE, 1.5, 5000 * h_slow());
    kill(m.pid, SIGCONT);
    cr_assert_geq(age, 1.5, "the age did not grow while the engine was stopped");
    snprintf(q, sizeof q, "aigw_backend_engine_queue_length{pool=\"gpu\",backend=\"localhost:%d\"}", m.port);
    cr_assert_eq(h_metric(g.admin_port, q), 0, "the stale engine queue went away");
    snprintf(q, sizeof q, "aigw_backend_kv_cache_usage_ratio{pool=\"gpu\",backend=\"localhost:%d\"}", m.port);
    cr_assert_eq(h_metric(g.admin_port, q), 0, "the stale KV-cache use went away");
    cr_assert_leq(h_wait_metric(g.admin_port, age_q, H_LE, 0.5, 4000 * h_slow()), 0.5,
                  "the age did not fall back once the engine answered again");
    h_finish();
}
