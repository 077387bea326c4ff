#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/metrics.h"
#include "policy/ratelimit.h"
#include "util/clock.h"

#include <wolfssl/version.h>

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
                                  405, 408, 413, 415, 429, 431, 499, 500, 501, 502, 503, 504 };
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
    cr_assert_str_eq(metrics_status_label(metrics_status_slot(498)), "4xx");
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

/* What tests and operators watch to know a reload, a log reopen or a shard's
 * traffic happened. */
Test(metrics, reloads_generations_reopens_and_per_shard_requests)
{
    cr_assert_eq(metrics_init(2), 0);
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    char *text = metrics_text();
    assert_line(text, "aigw_config_reloads_total{result=\"ok\"} 0");
    assert_line(text, "aigw_config_reloads_total{result=\"failed\"} 0");
    assert_line(text, "aigw_access_log_reopens_total{result=\"ok\"} 0");
    assert_line(text, "aigw_access_log_reopens_total{result=\"failed\"} 0");
    assert_line(text, "aigw_shard_requests_total{shard=\"0\"} 0");
    assert_line(text, "aigw_shard_requests_total{shard=\"1\"} 0");
    free(text);

    metrics_config_loaded(1);
    metrics_shard_adopted(s0, 1);
    metrics_shard_adopted(s1, 1);
    metrics_count_reload(false);
    metrics_config_loaded(2);
    metrics_count_reload(true);
    metrics_shard_adopted(s1, 2);     /* shard 0 has not looked yet */
    metrics_count_access_log_reopen(true);
    metrics_count_access_log_reopen(true);
    metrics_count_access_log_reopen(false);
    metrics_observe_request(s0, 0, 200, 10);
    metrics_observe_request(s1, 0, 404, 10);
    metrics_observe_request(s1, 0, 200, 10);
    text = metrics_text();
    assert_line(text, "aigw_config_reloads_total{result=\"ok\"} 1");
    assert_line(text, "aigw_config_reloads_total{result=\"failed\"} 1");
    assert_line(text, "aigw_config_generation 2");
    assert_line(text, "aigw_shard_config_generation{shard=\"0\"} 1");
    assert_line(text, "aigw_shard_config_generation{shard=\"1\"} 2");
    assert_line(text, "aigw_access_log_reopens_total{result=\"ok\"} 2");
    assert_line(text, "aigw_access_log_reopens_total{result=\"failed\"} 1");
    assert_line(text, "aigw_shard_requests_total{shard=\"0\"} 1");
    assert_line(text, "aigw_shard_requests_total{shard=\"1\"} 2");
    free(text);
}

Test(metrics, render_reports_size_needed_when_buffer_is_small)
{
    cr_assert_eq(metrics_init(1), 0);
    char small[64];
    size_t need = metrics_render(small, sizeof small);
    cr_assert_gt(need, sizeof small);
    cr_assert_eq(small[sizeof small - 1], '\0');
    /* the process_* figures (CPU time, RSS) may grow a digit between two
     * renders: room for that, and the second render says what it wrote */
    char *big = malloc(need + 256);
    size_t got = metrics_render(big, need + 256);
    cr_assert(got >= need - 64 && got <= need + 64, "%zu then %zu", need, got);
    cr_assert_eq(strlen(big), got);
    cr_assert_eq(big[got - 1], '\n');
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
        { "aigw_tokens_total", "counter" },
        { "aigw_ratelimited_total", "counter" },
        { "aigw_access_log_dropped_total", "counter" },
        { "aigw_backend_up", "gauge" },
        { "aigw_backend_requests_total", "counter" },
        { "aigw_backend_retries_total", "counter" },
        { "aigw_backend_circuit_opens_total", "counter" },
        { "aigw_pool_queue_length", "gauge" },
        { "aigw_pool_queue_wait_seconds", "histogram" },
        { "aigw_pool_shed_total", "counter" },
        { "aigw_pool_fallback_total", "counter" },
        { "aigw_access_log_reopens_total", "counter" },
        { "aigw_config_reloads_total", "counter" },
        { "aigw_config_generation", "gauge" },
        { "aigw_shard_config_generation", "gauge" },
        { "aigw_shard_requests_total", "counter" },
        { "aigw_client_connections_accepted_total", "counter" },
        { "aigw_client_connections_refused_total", "counter" },
        { "aigw_client_aborts_total", "counter" },
        { "aigw_backend_engine_queue_length", "gauge" },
        { "aigw_backend_metrics_age_seconds", "gauge" },
        { "aigw_build_info", "gauge" },
        { "process_start_time_seconds", "gauge" },
        { "process_cpu_seconds_total", "counter" },
        { "process_resident_memory_bytes", "gauge" },
        { "process_open_fds", "gauge" },
        { "process_max_fds", "gauge" },
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

/* ---- per API key counters: aigw_tokens_total, aigw_ratelimited_total ---- */

/* Lines of text that start with prefix. */
static unsigned count_lines_with_prefix(const char *text, const char *prefix)
{
    unsigned n = 0;
    size_t len = strlen(prefix);
    for (const char *p = text; *p; ) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return n;
}

/* Registers key names "k1" ... until the registry answers 0; returns how many got a slot. */
static unsigned fill_key_registry(unsigned limit)
{
    char name[32];
    unsigned got = 0;
    for (unsigned i = 1; i <= limit; i++) {
        snprintf(name, sizeof name, "k%u", i);
        int slot = metrics_key_slot(name);
        if (slot == 0)
            break;
        cr_assert_eq(slot, (int)i, "%s got slot %d", name, slot);
        got++;
    }
    return got;
}

Test(metrics, key_slots_are_stable_and_distinct)
{
    cr_assert_eq(metrics_init(1), 0);
    int alice = metrics_key_slot("alice");
    int bob = metrics_key_slot("bob");
    int carol = metrics_key_slot("carol");
    cr_assert_gt(alice, 0, "slot 0 is reserved for key=\"\"");
    cr_assert_gt(bob, 0);
    cr_assert_gt(carol, 0);
    cr_assert_neq(alice, bob);
    cr_assert_neq(alice, carol);
    cr_assert_neq(bob, carol);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(metrics_key_slot("alice"), alice);
        cr_assert_eq(metrics_key_slot("bob"), bob);
        cr_assert_eq(metrics_key_slot("carol"), carol);
    }
    /* names are compared whole, case-sensitively */
    int alice2 = metrics_key_slot("alice2");
    int upper = metrics_key_slot("Alice");
    int prefix = metrics_key_slot("alic");
    cr_assert_gt(alice2, 0);
    cr_assert_gt(upper, 0);
    cr_assert_gt(prefix, 0);
    cr_assert_neq(alice2, alice);
    cr_assert_neq(upper, alice);
    cr_assert_neq(prefix, alice);
    /* the registry keeps its own copy of the name */
    char buf[16];
    strcpy(buf, "dave");
    int dave = metrics_key_slot(buf);
    strcpy(buf, "erin");
    cr_assert_neq(metrics_key_slot(buf), dave);
    cr_assert_eq(metrics_key_slot("dave"), dave);
}

Test(metrics, key_slot_before_init_is_zero)
{
    /* no registry yet: everything counts under key="" */
    cr_assert_eq(metrics_key_slot("alice"), 0);
    cr_assert_eq(metrics_init(1), 0);
    cr_assert_gt(metrics_key_slot("alice"), 0);
}

Test(metrics, key_registry_full_gives_slot_zero, .init = cr_redirect_stderr)
{
    /* stderr as the journal: lines without a time of their own, compared whole */
    struct stat st;
    cr_assert_eq(fstat(STDERR_FILENO, &st), 0);
    char journal[64];
    snprintf(journal, sizeof journal, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", journal, 1);
    cr_assert_eq(metrics_init(1), 0);
    /* default capacity: METRICS_MIN_KEYS slots, slot 0 included */
    cr_assert_eq(fill_key_registry(METRICS_MIN_KEYS + 10), METRICS_MIN_KEYS - 1);
    cr_assert_eq(metrics_key_slot("one-too-many"), 0);
    cr_assert_eq(metrics_key_slot("two-too-many"), 0);
    cr_assert_eq(metrics_key_slot("one-too-many"), 0, "a refused name does not get a slot later");
    /* names already known keep their slots */
    cr_assert_eq(metrics_key_slot("k1"), 1);
    cr_assert_eq(metrics_key_slot("k77"), 77);
    char last[32];
    snprintf(last, sizeof last, "k%u", METRICS_MIN_KEYS - 1);
    cr_assert_eq(metrics_key_slot(last), METRICS_MIN_KEYS - 1);

    /* the last slot's counters exist and render */
    struct shard_metrics *m = metrics_shard(0);
    mc_add(&m->tokens[METRICS_MIN_KEYS - 1][TOKENS_COMPLETION], 9);
    mc_add(&m->ratelimited[METRICS_MIN_KEYS - 1][RL_QUOTA - 1], 2);
    char *text = metrics_text();
    char line[128];
    snprintf(line, sizeof line, "aigw_tokens_total{key=\"%s\",direction=\"completion\"} 9", last);
    assert_line(text, line);
    snprintf(line, sizeof line, "aigw_ratelimited_total{key=\"%s\",limit=\"quota\"} 2", last);
    assert_line(text, line);
    free(text);

    /* the first name refused is logged, once */
    fflush(stderr);
    char want[256];
    snprintf(want, sizeof want,
             "aigw[warn]: metrics: more than %u distinct key names since start: key 'k%u' and later "
             "ones are counted under key=\"\" (a restart makes room)\n",
             METRICS_MIN_KEYS - 1, METRICS_MIN_KEYS);
    cr_assert_stderr_eq_str(want);
}

Test(metrics, reserve_keys_grows_the_registry_before_init)
{
    metrics_reserve_keys(10);       /* smaller than the default: no effect */
    metrics_reserve_keys(5000);
    metrics_reserve_keys(4500);     /* a smaller later call does not shrink it */
    cr_assert_eq(metrics_init(2), 0);
    cr_assert_eq(fill_key_registry(6000), 4999);
    cr_assert_eq(metrics_key_slot("overflow"), 0);

    /* every shard has counters for every slot, and they do not overlap */
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    cr_assert_eq((uintptr_t)s0->tokens % 64, 0);
    cr_assert_eq((uintptr_t)s1->tokens % 64, 0);
    const char *s0_end = (const char *)&s0->ratelimited[5000][0];
    cr_assert_leq((const char *)&s0->tokens[5000][0], (const char *)&s0->ratelimited[0][0]);
    cr_assert(s0_end <= (const char *)s1->tokens || (const char *)&s1->ratelimited[5000][0] <=
              (const char *)s0->tokens, "shard key counters overlap");
    for (unsigned k = 0; k < 5000; k++) {
        mc_add(&s0->tokens[k][TOKENS_PROMPT], 1);
        mc_add(&s1->tokens[k][TOKENS_COMPLETION], 2);
        mc_add(&s0->ratelimited[k][0], 3);
        mc_add(&s1->ratelimited[k][2], 4);
    }
    char *text = metrics_text();
    cr_assert_eq(count_lines_with_prefix(text, "aigw_tokens_total{"), 2 * 5000);
    cr_assert_eq(count_lines_with_prefix(text, "aigw_ratelimited_total{"), 2 * 5000);
    assert_line(text, "aigw_tokens_total{key=\"\",direction=\"prompt\"} 1");
    assert_line(text, "aigw_tokens_total{key=\"k4999\",direction=\"prompt\"} 1");
    assert_line(text, "aigw_tokens_total{key=\"k4999\",direction=\"completion\"} 2");
    assert_line(text, "aigw_ratelimited_total{key=\"k4999\",limit=\"requests\"} 3");
    assert_line(text, "aigw_ratelimited_total{key=\"k4999\",limit=\"quota\"} 4");
    free(text);
}

Test(metrics, reserve_keys_after_init_changes_nothing)
{
    cr_assert_eq(metrics_init(1), 0);
    metrics_reserve_keys(100000);
    cr_assert_eq(fill_key_registry(METRICS_MIN_KEYS + 10), METRICS_MIN_KEYS - 1);
    cr_assert_eq(metrics_key_slot("past-the-end"), 0);
}

Test(metrics, key_series_appear_once_non_zero)
{
    cr_assert_eq(metrics_init(2), 0);
    int alice = metrics_key_slot("alice");
    int bob = metrics_key_slot("bob");
    (void)bob;

    char *text = metrics_text();
    /* the families are there even with nothing counted, the series are not */
    assert_line(text, "# HELP aigw_tokens_total Tokens used through AI routes, by API key NAME and direction.");
    assert_line(text, "# TYPE aigw_tokens_total counter");
    assert_line(text, "# HELP aigw_ratelimited_total Requests refused with 429, by API key NAME and the limit that fired.");
    assert_line(text, "# TYPE aigw_ratelimited_total counter");
    cr_assert_eq(count_lines_with_prefix(text, "aigw_tokens_total{"), 0, "%s", text);
    cr_assert_eq(count_lines_with_prefix(text, "aigw_ratelimited_total{"), 0, "%s", text);
    free(text);

    mc_add(&metrics_shard(1)->tokens[alice][TOKENS_PROMPT], 5);
    mc_add(&metrics_shard(0)->ratelimited[alice][RL_TOKENS - 1], 1);
    text = metrics_text();
    assert_line(text, "aigw_tokens_total{key=\"alice\",direction=\"prompt\"} 5");
    assert_line(text, "aigw_ratelimited_total{key=\"alice\",limit=\"tokens\"} 1");
    cr_assert_eq(count_lines_with_prefix(text, "aigw_tokens_total{"), 1, "%s", text);
    cr_assert_eq(count_lines_with_prefix(text, "aigw_ratelimited_total{"), 1, "%s", text);
    cr_assert_null(strstr(text, "direction=\"completion\""));
    cr_assert_null(strstr(text, "key=\"bob\""));
    free(text);
}

Test(metrics, key_counters_are_summed_across_shards)
{
    cr_assert_eq(metrics_init(3), 0);
    int alice = metrics_key_slot("alice");
    int bob = metrics_key_slot("bob");
    struct shard_metrics *s[3] = { metrics_shard(0), metrics_shard(1), metrics_shard(2) };
    for (int i = 0; i < 3; i++) {
        mc_add(&s[i]->tokens[alice][TOKENS_PROMPT], 100u * (i + 1));   /* 600 */
        mc_add(&s[i]->tokens[alice][TOKENS_COMPLETION], 10u * (i + 1)); /* 60 */
        mc_add(&s[i]->ratelimited[bob][RL_REQUESTS - 1], 1);            /* 3 */
    }
    mc_add(&s[2]->tokens[bob][TOKENS_COMPLETION], 7);
    mc_add(&s[0]->ratelimited[alice][RL_QUOTA - 1], 2);
    mc_add(&s[1]->ratelimited[alice][RL_QUOTA - 1], 2);
    mc_add(&s[1]->tokens[0][TOKENS_PROMPT], 11);        /* no key, or no slot left */
    mc_add(&s[2]->ratelimited[0][RL_REQUESTS - 1], 1);
    /* large values are not truncated */
    mc_add(&s[0]->tokens[bob][TOKENS_PROMPT], UINT64_MAX / 2);
    mc_add(&s[2]->tokens[bob][TOKENS_PROMPT], UINT64_MAX / 2);

    char *text = metrics_text();
    assert_line(text, "aigw_tokens_total{key=\"alice\",direction=\"prompt\"} 600");
    assert_line(text, "aigw_tokens_total{key=\"alice\",direction=\"completion\"} 60");
    assert_line(text, "aigw_tokens_total{key=\"bob\",direction=\"completion\"} 7");
    assert_line(text, "aigw_tokens_total{key=\"bob\",direction=\"prompt\"} 18446744073709551614");
    assert_line(text, "aigw_tokens_total{key=\"\",direction=\"prompt\"} 11");
    assert_line(text, "aigw_ratelimited_total{key=\"bob\",limit=\"requests\"} 3");
    assert_line(text, "aigw_ratelimited_total{key=\"alice\",limit=\"quota\"} 4");
    assert_line(text, "aigw_ratelimited_total{key=\"\",limit=\"requests\"} 1");
    cr_assert_eq(count_lines_with_prefix(text, "aigw_tokens_total{"), 5, "%s", text);
    cr_assert_eq(count_lines_with_prefix(text, "aigw_ratelimited_total{"), 3, "%s", text);

    /* order: by slot, then prompt before completion / requests, tokens, quota;
     * key="" (slot 0) first */
    const char *empty = strstr(text, "aigw_tokens_total{key=\"\",");
    const char *ap = strstr(text, "aigw_tokens_total{key=\"alice\",direction=\"prompt\"}");
    const char *ac = strstr(text, "aigw_tokens_total{key=\"alice\",direction=\"completion\"}");
    const char *bp = strstr(text, "aigw_tokens_total{key=\"bob\",direction=\"prompt\"}");
    cr_assert(empty < ap && ap < ac && ac < bp, "%s", text);
    /* each family's series follow its own HELP/TYPE */
    const char *tok_type = strstr(text, "# TYPE aigw_tokens_total counter\n");
    const char *rl_type = strstr(text, "# TYPE aigw_ratelimited_total counter\n");
    cr_assert(tok_type && rl_type && tok_type < empty && bp < rl_type);
    cr_assert_lt(rl_type, strstr(text, "aigw_ratelimited_total{key="));
    free(text);
}

Test(metrics, limit_labels_match_rl_limit_names)
{
    cr_assert_eq(metrics_init(1), 0);
    int k = metrics_key_slot("k");
    for (unsigned l = 0; l < METRICS_NLIMITS; l++)
        mc_add(&metrics_shard(0)->ratelimited[k][l], l + 1);
    char *text = metrics_text();
    for (unsigned l = 0; l < METRICS_NLIMITS; l++) {
        char line[128];
        snprintf(line, sizeof line, "aigw_ratelimited_total{key=\"k\",limit=\"%s\"} %u",
                 rl_limit_name((enum rl_limit)(l + 1)), l + 1);
        assert_line(text, line);
    }
    free(text);
}

Test(metrics, key_label_values_are_escaped)
{
    cr_assert_eq(metrics_init(1), 0);
    int k = metrics_key_slot("we\"ird\\key\nx");
    int plain = metrics_key_slot("we");
    cr_assert_gt(k, 0);
    cr_assert_neq(k, plain);
    mc_add(&metrics_shard(0)->tokens[k][TOKENS_PROMPT], 1);
    mc_add(&metrics_shard(0)->ratelimited[k][RL_REQUESTS - 1], 2);
    char *text = metrics_text();
    assert_line(text, "aigw_tokens_total{key=\"we\\\"ird\\\\key\\nx\",direction=\"prompt\"} 1");
    assert_line(text, "aigw_ratelimited_total{key=\"we\\\"ird\\\\key\\nx\",limit=\"requests\"} 2");
    free(text);
}

Test(metrics, key_families_have_help_and_type_with_no_keys)
{
    cr_assert_eq(metrics_init(1), 0);
    char *text = metrics_text();
    assert_line(text, "# TYPE aigw_tokens_total counter");
    assert_line(text, "# TYPE aigw_ratelimited_total counter");
    cr_assert_not_null(strstr(text, "\n# HELP aigw_tokens_total "));
    cr_assert_not_null(strstr(text, "\n# HELP aigw_ratelimited_total "));
    free(text);
}

/* ---- backend health and attempts, pool queues ---- */

Test(metrics, backend_up_requests_retries_and_circuit_opens)
{
    cr_assert_eq(metrics_init(2), 0);
    int a = metrics_backend_slot("gpu-a", "10.0.0.11:8000");
    int gone = metrics_backend_slot("gpu-a", "10.0.0.99:8000");
    int b = metrics_backend_slot("gpu-b", "[::1]:8001");
    int live[] = { a, b };
    metrics_set_live_backends(live, 2);
    metrics_set_backend_up(b, false);       /* a is never set: up */
    metrics_set_backend_up(gone, false);
    metrics_set_backend_up(-1, false);      /* ignored */
    metrics_set_backend_up(METRICS_MAX_BACKENDS, false);
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    mc_add(&s0->backend_requests[a][ATTEMPT_OK], 5);
    mc_add(&s1->backend_requests[a][ATTEMPT_OK], 7);
    mc_add(&s0->backend_requests[a][ATTEMPT_FAILED], 1);
    mc_add(&s1->backend_requests[a][ATTEMPT_FAILED], 2);
    mc_add(&s1->backend_requests[b][ATTEMPT_FAILED], 4);
    mc_add(&s0->backend_retries[a], 1);
    mc_add(&s1->backend_retries[a], 1);
    mc_add(&s1->circuit_opens[b], 3);
    mc_add(&s0->backend_requests[gone][ATTEMPT_OK], 9);

    char *text = metrics_text();
    assert_line(text, "# TYPE aigw_backend_up gauge");
    assert_line(text, "aigw_backend_up{pool=\"gpu-a\",backend=\"10.0.0.11:8000\"} 1");
    assert_line(text, "aigw_backend_up{pool=\"gpu-b\",backend=\"[::1]:8001\"} 0");
    assert_line(text, "# TYPE aigw_backend_requests_total counter");
    assert_line(text, "aigw_backend_requests_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\",result=\"ok\"} 12");
    assert_line(text, "aigw_backend_requests_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\",result=\"failed\"} 3");
    assert_line(text, "aigw_backend_requests_total{pool=\"gpu-b\",backend=\"[::1]:8001\",result=\"ok\"} 0");
    assert_line(text, "aigw_backend_requests_total{pool=\"gpu-b\",backend=\"[::1]:8001\",result=\"failed\"} 4");
    assert_line(text, "# TYPE aigw_backend_retries_total counter");
    assert_line(text, "aigw_backend_retries_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\"} 2");
    assert_line(text, "aigw_backend_retries_total{pool=\"gpu-b\",backend=\"[::1]:8001\"} 0");
    assert_line(text, "# TYPE aigw_backend_circuit_opens_total counter");
    assert_line(text, "aigw_backend_circuit_opens_total{pool=\"gpu-a\",backend=\"10.0.0.11:8000\"} 0");
    assert_line(text, "aigw_backend_circuit_opens_total{pool=\"gpu-b\",backend=\"[::1]:8001\"} 3");
    cr_assert_null(strstr(text, "10.0.0.99"), "%s", text);
    free(text);

    /* back up again; a reload that drops gpu-a */
    metrics_set_backend_up(b, true);
    metrics_set_live_backends(&b, 1);
    text = metrics_text();
    assert_line(text, "aigw_backend_up{pool=\"gpu-b\",backend=\"[::1]:8001\"} 1");
    cr_assert_null(strstr(text, "gpu-a"), "%s", text);
    free(text);
}

Test(metrics, pool_slots_are_stable_and_registry_reports_full)
{
    cr_assert_eq(metrics_init(1), 0);
    int a = metrics_pool_slot("gpu-a");
    int b = metrics_pool_slot("gpu-b");
    cr_assert_eq(a, 0, "pools are numbered in order of first use");
    cr_assert_eq(b, 1);
    cr_assert_eq(metrics_pool_slot("gpu-a"), a);
    char name[32];
    for (int i = 2; i < METRICS_MAX_POOLS; i++) {
        snprintf(name, sizeof name, "p%d", i);
        cr_assert_eq(metrics_pool_slot(name), i);
    }
    cr_assert_eq(metrics_pool_slot("one-too-many"), -1);
    cr_assert_eq(metrics_pool_slot("gpu-b"), b);
    cr_assert_eq(metrics_pool_slot("p5"), 5);
}

Test(metrics, pool_queue_shed_and_fallback)
{
    cr_assert_eq(metrics_init(2), 0);
    int a = metrics_pool_slot("gpu-a");
    int old = metrics_pool_slot("old-pool");
    int b = metrics_pool_slot("gpu-\"b\"");
    int live[] = { a, b };
    metrics_set_live_pools(live, 2);
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);

    char *text = metrics_text();
    /* live pools render every series even when zero */
    assert_line(text, "aigw_pool_queue_length{pool=\"gpu-a\"} 0");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"+Inf\"} 0");
    assert_line(text, "aigw_pool_queue_wait_seconds_count{pool=\"gpu-a\"} 0");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-a\",reason=\"no_backend\"} 0");
    assert_line(text, "aigw_pool_fallback_total{pool=\"gpu-a\"} 0");
    free(text);

    mg_add(&s0->queued[a], 3);
    mg_add(&s1->queued[a], 2);
    mg_add(&s1->queued[b], 1);
    mg_add(&s0->queued[old], 6);
    metrics_observe_queue_wait(s1, a, 7000);          /* 7 ms: le="0.01" */
    metrics_observe_queue_wait(s0, old, 1000);
    metrics_observe_queue_wait(s0, -1, 1000);         /* outside the registry: ignored */
    metrics_observe_queue_wait(s0, 3, 1000);
    metrics_observe_queue_wait(s0, METRICS_MAX_POOLS, 1000);
    mc_add(&s0->shed[a][SHED_QUEUE_FULL], 2);
    mc_add(&s1->shed[a][SHED_QUEUE_FULL], 1);
    mc_add(&s1->shed[a][SHED_QUEUE_TIMEOUT], 4);
    mc_add(&s0->shed[b][SHED_NO_BACKEND], 5);
    mc_add(&s0->fallbacks[a], 1);
    mc_add(&s1->fallbacks[a], 2);
    mc_add(&s1->fallbacks[old], 8);

    text = metrics_text();
    assert_line(text, "# TYPE aigw_pool_queue_length gauge");
    assert_line(text, "aigw_pool_queue_length{pool=\"gpu-a\"} 5");
    assert_line(text, "aigw_pool_queue_length{pool=\"gpu-\\\"b\\\"\"} 1");

    assert_line(text, "# TYPE aigw_pool_queue_wait_seconds histogram");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"0.005\"} 0");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"0.01\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"0.025\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"60\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\",le=\"+Inf\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_sum{pool=\"gpu-a\"} 0.007000");
    assert_line(text, "aigw_pool_queue_wait_seconds_count{pool=\"gpu-a\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-\\\"b\\\"\",le=\"+Inf\"} 0");
    assert_line(text, "aigw_pool_queue_wait_seconds_sum{pool=\"gpu-\\\"b\\\"\"} 0.000000");
    assert_line(text, "aigw_pool_queue_wait_seconds_count{pool=\"gpu-\\\"b\\\"\"} 0");
    cr_assert_eq(count_lines_with_prefix(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"gpu-a\","),
                 METRICS_NBUCKETS, "%s", text);

    assert_line(text, "# TYPE aigw_pool_shed_total counter");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-a\",reason=\"queue_full\"} 3");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-a\",reason=\"queue_timeout\"} 4");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-a\",reason=\"no_backend\"} 0");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-\\\"b\\\"\",reason=\"queue_full\"} 0");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-\\\"b\\\"\",reason=\"queue_timeout\"} 0");
    assert_line(text, "aigw_pool_shed_total{pool=\"gpu-\\\"b\\\"\",reason=\"no_backend\"} 5");

    assert_line(text, "# TYPE aigw_pool_fallback_total counter");
    assert_line(text, "aigw_pool_fallback_total{pool=\"gpu-a\"} 3");
    assert_line(text, "aigw_pool_fallback_total{pool=\"gpu-\\\"b\\\"\"} 0");

    /* a pool the configuration does not use is not rendered */
    cr_assert_null(strstr(text, "old-pool"), "%s", text);
    free(text);

    /* a reload that brings old-pool back and drops gpu-a: its counts kept meanwhile */
    metrics_set_live_pools(&old, 1);
    text = metrics_text();
    assert_line(text, "aigw_pool_queue_length{pool=\"old-pool\"} 6");
    assert_line(text, "aigw_pool_queue_wait_seconds_bucket{pool=\"old-pool\",le=\"0.005\"} 1");
    assert_line(text, "aigw_pool_queue_wait_seconds_sum{pool=\"old-pool\"} 0.001000");
    assert_line(text, "aigw_pool_fallback_total{pool=\"old-pool\"} 8");
    cr_assert_null(strstr(text, "gpu-a"), "%s", text);
    cr_assert_null(strstr(text, "gpu-\\\"b"), "%s", text);
    free(text);
}

/* ---- engine figures, connections and aborts ---- */

Test(metrics, engine_figures_stay_with_their_age_when_reads_stop)
{
    cr_assert_eq(metrics_init(1), 0);
    int a = metrics_backend_slot("gpu", "localhost:8000");
    int never = metrics_backend_slot("gpu", "localhost:8001");
    int live[] = { a, never };
    metrics_set_live_backends(live, 2);
    uint64_t two_s_ago = clock_mono_ms() - 2000;
    metrics_set_backend_load(a, 3, 7, 420, two_s_ago);
    metrics_set_backend_load(never, 0, -1, -1, 0);
    /* the next look finds no new scrape (a reload's fresh generation): kept */
    metrics_set_backend_load(a, 1, -1, -1, 0);
    char *text = metrics_text();
    assert_line(text, "aigw_backend_outstanding{pool=\"gpu\",backend=\"localhost:8000\"} 1");
    assert_line(text, "aigw_backend_engine_queue_length{pool=\"gpu\",backend=\"localhost:8000\"} 7");
    assert_line(text, "aigw_backend_kv_cache_usage_ratio{pool=\"gpu\",backend=\"localhost:8000\"} 0.420");
    const char *age = strstr(text, "aigw_backend_metrics_age_seconds{pool=\"gpu\",backend=\"localhost:8000\"} ");
    cr_assert_not_null(age);
    double secs = strtod(strchr(age, '}') + 2, NULL);
    cr_assert(secs >= 2.0 && secs < 60.0, "age %g", secs);
    cr_assert_null(strstr(text, "aigw_backend_engine_queue_length{pool=\"gpu\",backend=\"localhost:8001\"}"),
                   "a never-read engine has a queue length");
    cr_assert_null(strstr(text, "aigw_backend_kv_cache_usage_ratio{pool=\"gpu\",backend=\"localhost:8001\"}"));
    cr_assert_null(strstr(text, "aigw_backend_metrics_age_seconds{pool=\"gpu\",backend=\"localhost:8001\"}"));
    free(text);
}

Test(metrics, connections_refusals_and_aborts_are_summed)
{
    cr_assert_eq(metrics_init(2), 0);
    int chat = metrics_route_slot("chat");
    struct shard_metrics *s0 = metrics_shard(0), *s1 = metrics_shard(1);
    mc_add(&s0->client_accepted, 3);
    mc_add(&s1->client_accepted, 4);
    mc_add(&s0->client_refused[REFUSED_MAX_CONNECTIONS], 1);
    mc_add(&s1->client_refused[REFUSED_MAX_CONNECTIONS], 2);
    mc_add(&s1->client_refused[REFUSED_NO_FDS], 5);
    mc_add(&s0->client_aborts[chat], 1);
    mc_add(&s1->client_aborts[chat], 1);
    char *text = metrics_text();
    assert_line(text, "aigw_client_connections_accepted_total 7");
    assert_line(text, "aigw_client_connections_refused_total{reason=\"max_connections\"} 3");
    assert_line(text, "aigw_client_connections_refused_total{reason=\"no_fds\"} 5");
    assert_line(text, "aigw_client_connections_refused_total{reason=\"draining\"} 0");
    assert_line(text, "aigw_client_connections_refused_total{reason=\"tls_plain_http\"} 0");
    assert_line(text, "aigw_client_aborts_total{route=\"chat\"} 2");
    cr_assert_null(strstr(text, "aigw_client_aborts_total{route=\"\"}"), "routes without aborts have no series");
    assert_line(text, "aigw_build_info{version=\"" AIGW_VERSION "\",wolfssl=\"" LIBWOLFSSL_VERSION_STRING "\"} 1");
    free(text);
}
