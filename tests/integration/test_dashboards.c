/* examples/prometheus-alerts.yml and examples/grafana-aigw.json stay true: the
 * rules pass promtool (syntax, and tests/alerts/aigw-alerts.test.yml's synthetic
 * series fire or stay quiet as they should), and every aigw_* name and label
 * either file uses is one a live aigw exports (scripts/check-dashboards.py
 * against a scrape of a gateway that served a key, a stream, a 429 and synced
 * with Redis). */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

TestSuite(dashboards, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define KEY_CAROL "sk-itest-dash-carol-7Rw2Qp"

static void expect_run_ok(const char *tag, const char *const argv[], int timeout_ms)
{
    char *out = NULL;
    int st = h_run_io(tag, argv, NULL, timeout_ms, &out);
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s %s %s failed (status %d):\n%s\n%s", argv[0],
              argv[1], argv[2], st, out ? out : "", h_tail(tag));
    free(out);
}

Test(dashboards, alert_rules_pass_promtool)
{
    /* Debian's prometheus package (scripts/deps.sh) ships promtool */
    const char *check[] = { "/usr/bin/promtool", "check", "rules", "examples/prometheus-alerts.yml", NULL };
    expect_run_ok("promtool-check", check, 20000 * h_slow());
    const char *unit[] = { "/usr/bin/promtool", "test", "rules", "tests/alerts/aigw-alerts.test.yml", NULL };
    expect_run_ok("promtool-test", unit, 20000 * h_slow());
}

/* Polls until a series named by query exists (a gauge whose first value
 * arrives with the backend watcher's first read), or timeout_ms passes. */
static bool wait_series(int port, const char *query, int timeout_ms)
{
    for (int64_t end = h_now_ms() + timeout_ms; h_now_ms() < end; h_sleep_ms(20))
        if (!isnan(h_metric(port, query)))
            return true;
    return false;
}

Test(dashboards, every_metric_they_use_is_exported)
{
    struct h_redis r = { 0 };
    cr_assert_eq(h_redis_start(&r, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 200 --ttft-ms 0 --kv-capacity 100000");
    h_write_file(h_keys_path(), "%s", h_key_line("carol", KEY_CAROL, "one", NULL));
    struct h_gw g = { 0 };
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\nbalance = capacity\nmetrics = /metrics\n"
                "metrics_interval = 50ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n"
                "[keys]\nauth = off\nfile = %s\n\n"
                "[tier one]\nrequests_per_minute = 1\nburst = 1m\n\n"
                "[model mock-*]\ninput_per_mtok = 0.10\noutput_per_mtok = 0.30\n\n"
                "[cluster]\nredis = 127.0.0.1:%d\nkey_prefix = dash:\nsync_interval = 20ms\n",
                m.port, h_keys_path(), r.port);
    H_GW(&g);

    /* a stream without a key: first-token and token-spacing observations */
    struct h_conn c;
    struct h_resp head;
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 8, &head, g.tag);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    bool done = false;
    int rc;
    int events = h_sse_data_events(&s, 10000 * h_slow(), NULL, 0, &done, &rc);
    cr_assert(done, "stream did not finish (%d events, rc %d)\n%s", events, rc, h_tail(g.tag));
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);

    /* carol's tier allows one request a minute: a 429 within a few */
    char body[256];
    h_chat_body(body, sizeof body, 4, false);
    int got429 = 0;
    for (int i = 0; i < 10 && !got429; i++) {
        struct h_resp resp;
        H_CONNECT_GW(&c, &g);
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_CAROL), body, &resp,
                               10000 * h_slow()),
                     H_OK);
        got429 = resp.status == 429;
        h_resp_free(&resp);
        h_close(&c);
    }
    cr_expect(got429, "carol never got a 429\n%s", h_tail(g.tag));

    int t = 10000 * h_slow();
    cr_expect_eq(h_wait_metric(g.admin_port, "aigw_time_per_output_token_seconds_count", H_GE, 1, t), 1);
    cr_expect_geq(h_wait_metric(g.admin_port, "aigw_ratelimited_total{key=\"carol\"}", H_GE, 1, t), 1);
    cr_expect_eq(h_wait_metric(g.admin_port, "aigw_cluster_redis_up", H_EQ, 1, t), 1);
    cr_expect_geq(h_wait_metric(g.admin_port, "aigw_cluster_sync_duration_seconds_count", H_GE, 1, t), 1);
    cr_expect(wait_series(g.admin_port, "aigw_backend_kv_cache_usage_ratio", t), "no KV-cache series\n%s",
              h_tail(g.tag));
    cr_expect(wait_series(g.admin_port, "aigw_backend_engine_queue_length", t), "no queue depth series\n%s",
              h_tail(g.tag));

    cr_expect(wait_series(g.admin_port, "aigw_cost_usd_total", t), "no cost series\n%s", h_tail(g.tag));

    struct h_resp scrape;
    cr_assert_eq(h_get(g.admin_port, "/metrics", &scrape, 5000 * h_slow()), H_OK);
    cr_assert_eq(scrape.status, 200);
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.txt", h_dir());
    h_write_file(path, "%s", scrape.body);
    h_resp_free(&scrape);

    const char *check[] = { "/usr/bin/python3", "scripts/check-dashboards.py", path, "examples/grafana-aigw.json",
                            "examples/prometheus-alerts.yml", NULL };
    expect_run_ok("check-dashboards", check, 20000 * h_slow());
    h_finish();
}
