#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"

/* Criterion runs every test in its own process, so each starts with an empty registry. */

static char *metrics_text(void)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(metrics_render_alloc(&text, &len), 0);
    cr_assert_eq(strlen(text), len);
    return text;
}

/* True if text has exactly this line. */
static bool metrics_has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define assert_line(text, line) \
    cr_assert(metrics_has_line((text), (line)), "missing line: %s\n--- got:\n%s", (line), (text))

Test(metrics, init_rejects_bad_counts_and_second_call)
{
    cr_assert_eq(metrics_init(0), -1);
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(metrics_init(METRICS_MAX_SHARDS + 1), -1);
    cr_assert_eq(metrics_init(2), 0);
    cr_assert_eq(metrics_init(2), -1);
    cr_assert_eq(errno, EALREADY);
    cr_assert_not_null(metrics_shard(1));
    cr_assert_null(metrics_shard(2));
    cr_assert_eq((uintptr_t)metrics_shard(0) % 64, 0);
}

Test(metrics, status_slots_map_common_codes_to_their_own_column)
{
    static const int common[] = { 200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404,
                                  405, 408, 413, 415, 429, 431, 500, 501, 502, 503, 504 };
    bool used[METRICS_NSTATUS] = { false };
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++) {
        unsigned slot = metrics_status_slot(common[i]);
        cr_assert_lt(slot, METRICS_NSTATUS);
        cr_assert_not(used[slot], "status %d shares a column", common[i]);
        used[slot] = true;
        char want[8];
        snprintf(want, sizeof want, "%d", common[i]);
        cr_assert_str_eq(metrics_status_label(slot), want);
    }
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(101)), "1xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(202)), "2xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(299)), "2xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(307)), "3xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(418)), "4xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(499)), "4xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(599)), "5xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(0)), "5xx");
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(999)), "5xx");
    cr_assert_eq(metrics_status_slot(418), metrics_status_slot(451));
}

Test(metrics, slots_are_stable_per_name)
{
    cr_assert_eq(metrics_init(1), 0);
    cr_assert_eq(metrics_route_slot(""), 0);
    int chat = metrics_route_slot("chat");
    int embed = metrics_route_slot("embed");
    cr_assert_gt(chat, 0);
    cr_assert_gt(embed, 0);
    cr_assert_neq(chat, embed);
    cr_assert_eq(metrics_route_slot("chat"), chat);
    cr_assert_eq(metrics_route_slot("embed"), embed);

    int a1 = metrics_backend_slot("gpu-a", "10.0.0.11:8000");
    int b1 = metrics_backend_slot("gpu-b", "10.0.0.11:8000");
    int a2 = metrics_backend_slot("gpu-a", "10.0.0.12:8000");
    cr_assert_geq(a1, 0);
    cr_assert_neq(a1, b1);
    cr_assert_neq(a1, a2);
    cr_assert_eq(metrics_backend_slot("gpu-a", "10.0.0.11:8000"), a1);
    cr_assert_eq(metrics_backend_slot("gpu-b", "10.0.0.11:8000"), b1);
}

Test(metrics, route_registry_reports_full)
{
    cr_assert_eq(metrics_init(1), 0);
    char name[32];
    for (int i = 1; i < METRICS_MAX_ROUTES; i++) {
        snprintf(name, sizeof name, "r%d", i);
        cr_assert_eq(metrics_route_slot(name), i);
    }
    cr_assert_eq(metrics_route_slot("one-too-many"), -1);
    cr_assert_eq(metrics_route_slot("r5"), 5);
}

Test(metrics, requests_are_summed_across_shards)
{
    cr_assert_eq(metrics_init(2), 0);
    int chat = metrics_route_slot("chat");
    int embed = metrics_route_slot("embed");
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    metrics_observe_request(s0, chat, 200, 1000);
    metrics_observe_request(s0, chat, 200, 1000);
    metrics_observe_request(s1, chat, 200, 1000);
    metrics_observe_request(s1, chat, 502, 1000);
    metrics_observe_request(s1, embed, 418, 1000);
    metrics_observe_request(s0, -1, 404, 1000);    /* no route matched */

    char *text = metrics_text();
    assert_line(text, "# HELP aigw_requests_total Requests answered, by route and HTTP status.");
    assert_line(text, "# TYPE aigw_requests_total counter");
    assert_line(text, "aigw_requests_total{route=\"chat\",status=\"200\"} 3");
    assert_line(text, "aigw_requests_total{route=\"chat\",status=\"502\"} 1");
    assert_line(text, "aigw_requests_total{route=\"embed\",status=\"4xx\"} 1");
    assert_line(text, "aigw_requests_total{route=\"\",status=\"404\"} 1");
    /* zero series are left out */
    cr_assert_null(strstr(text, "route=\"embed\",status=\"200\""));
    cr_assert_null(strstr(text, "route=\"\",status=\"200\""));
    free(text);
}

Test(metrics, histogram_buckets_are_cumulative)
{
    cr_assert_eq(metrics_init(2), 0);
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    metrics_observe_request(s0, 0, 200, 1000);         /* 1 ms */
    metrics_observe_request(s1, 0, 200, 5000);         /* exactly 5 ms: le is inclusive */
    metrics_observe_request(s0, 0, 200, 7000);         /* 7 ms */
    metrics_observe_request(s1, 0, 200, 2000000);      /* 2 s */
    metrics_observe_request(s0, 0, 200, 100000000);    /* 100 s: only +Inf */

    char *text = metrics_text();
    assert_line(text, "# TYPE aigw_request_duration_seconds histogram");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"0.005\"} 2");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"0.01\"} 3");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"0.025\"} 3");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"1\"} 3");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"2.5\"} 4");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"60\"} 4");
    assert_line(text, "aigw_request_duration_seconds_bucket{le=\"+Inf\"} 5");
    assert_line(text, "aigw_request_duration_seconds_sum 102.013000");
    assert_line(text, "aigw_request_duration_seconds_count 5");

    /* buckets appear in increasing order */
    const char *prev = text;
    static const char *const les[] = { "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                                       "1", "2.5", "5", "10", "30", "60", "+Inf" };
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "_bucket{le=\"%s\"}", les[i]);
        const char *at = strstr(text, needle);
        cr_assert_not_null(at, "%s", needle);
        cr_assert_gt(at, prev);
        prev = at;
    }
    free(text);
}

Test(metrics, label_values_are_escaped)
{
    cr_assert_eq(metrics_init(1), 0);
    int r = metrics_route_slot("we\"ird\\path\nx");
    metrics_observe_request(metrics_shard(0), r, 200, 10);
    int b = metrics_backend_slot("p\"ool", "back\\end");
    metrics_set_live_backends(&b, 1);

    char *text = metrics_text();
    assert_line(text, "aigw_requests_total{route=\"we\\\"ird\\\\path\\nx\",status=\"200\"} 1");
    assert_line(text, "aigw_upstream_connections_total{pool=\"p\\\"ool\",backend=\"back\\\\end\",kind=\"new\"} 0");
    free(text);
}

Test(metrics, upstream_connections_only_for_live_backends)
{
    cr_assert_eq(metrics_init(2), 0);
    int a = metrics_backend_slot("gpu-a", "10.0.0.11:8000");
    int gone = metrics_backend_slot("gpu-a", "10.0.0.99:8000");
    int b = metrics_backend_slot("gpu-b", "[::1]:8001");
    int live[] = { a, b };
    metrics_set_live_backends(live, 2);
    mc_add(&metrics_shard(0)->upstream_conns[a][UPCONN_NEW], 2);
    mc_add(&metrics_shard(1)->upstream_conns[a][UPCONN_NEW], 1);
    mc_add(&metrics_shard(1)->upstream_conns[a][UPCONN_REUSED], 40);
    mc_add(&metrics_shard(0)->upstream_conns[gone][UPCONN_NEW], 7);

    char *text = metrics_text();
    assert_line(text, "# TYPE aigw_upstream_connections_total counter");
    assert_line(text, "aigw_upstream_connections_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\",kind=\"new\"} 3");
    assert_line(text, "aigw_upstream_connections_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\",kind=\"reused\"} 40");
    assert_line(text, "aigw_upstream_connections_total{pool=\"gpu-b\",backend=\"[::1]:8001\",kind=\"new\"} 0");
    assert_line(text, "aigw_upstream_connections_total{pool=\"gpu-b\",backend=\"[::1]:8001\",kind=\"reused\"} 0");
    cr_assert_null(strstr(text, "10.0.0.99"));
    free(text);

    /* a reload that drops gpu-b; the slot keeps its counts should it come back */
    metrics_set_live_backends(&a, 1);
    text = metrics_text();
    cr_assert_null(strstr(text, "gpu-b"));
    free(text);
}

Test(metrics, relay_connections_and_drops)
{
    cr_assert_eq(metrics_init(2), 0);
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    char *text = metrics_text();
    /* present even when zero */
    assert_line(text, "aigw_relay_bytes_total{mode=\"splice\"} 0");
    assert_line(text, "aigw_relay_bytes_total{mode=\"copy\"} 0");
    assert_line(text, "aigw_connections{side=\"client\"} 0");
    assert_line(text, "aigw_connections{side=\"upstream\"} 0");
    assert_line(text, "aigw_access_log_dropped_total 0");
    free(text);

    mc_add(&s0->relay_bytes[RELAY_SPLICE], 1000);
    mc_add(&s1->relay_bytes[RELAY_SPLICE], 24);
    mc_add(&s1->relay_bytes[RELAY_COPY], 5);
    mg_add(&s0->connections[SIDE_CLIENT], 3);
    mg_add(&s1->connections[SIDE_CLIENT], -1);   /* opened on one count, closed on another */
    mg_add(&s1->connections[SIDE_UPSTREAM], 2);
    mc_add(&s0->access_log_dropped, 4);
    text = metrics_text();
    assert_line(text, "# TYPE aigw_relay_bytes_total counter");
    assert_line(text, "aigw_relay_bytes_total{mode=\"splice\"} 1024");
    assert_line(text, "aigw_relay_bytes_total{mode=\"copy\"} 5");
    assert_line(text, "# TYPE aigw_connections gauge");
    assert_line(text, "aigw_connections{side=\"client\"} 2");
    assert_line(text, "aigw_connections{side=\"upstream\"} 2");
    assert_line(text, "# TYPE aigw_access_log_dropped_total counter");
    assert_line(text, "aigw_access_log_dropped_total 4");
    free(text);
}

Test(metrics, render_reports_size_needed_when_buffer_is_small)
{
    cr_assert_eq(metrics_init(1), 0);
    char small[64];
    size_t need = metrics_render(small, sizeof small);
    cr_assert_gt(need, sizeof small);
    cr_assert_eq(small[sizeof small - 1], '\0');
    char *big = malloc(need + 1);
    cr_assert_eq(metrics_render(big, need + 1), need);
    cr_assert_eq(strlen(big), need);
    cr_assert_eq(big[need - 1], '\n');
    cr_assert_eq(strncmp(big, small, sizeof small - 1), 0);
    free(big);
}

Test(metrics, every_family_has_help_and_type)
{
    cr_assert_eq(metrics_init(1), 0);
    char *text = metrics_text();
    static const char *const families[][2] = {
        { "aigw_requests_total", "counter" },
        { "aigw_request_duration_seconds", "histogram" },
        { "aigw_upstream_connections_total", "counter" },
        { "aigw_relay_bytes_total", "counter" },
        { "aigw_connections", "gauge" },
        { "aigw_access_log_dropped_total", "counter" },
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "# TYPE %s %s", families[i][0], families[i][1]);
        assert_line(text, line);
        snprintf(line, sizeof line, "\n# HELP %s ", families[i][0]);
        bool at_start = strncmp(text, line + 1, strlen(line + 1)) == 0;
        cr_assert(at_start || strstr(text, line), "no HELP for %s", families[i][0]);
    }
    free(text);
}
