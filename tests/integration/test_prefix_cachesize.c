/* prefix_cache_blocks = auto: aigw reads each engine's cache capacity from its
 * metrics (aigw_backend_engine_cache_tokens) and sizes its record of the blocks
 * sent there to it, so it forgets a prompt about when the engine does. */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(prefix_cachesize, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void gw_prefix(struct h_gw *g, const char *tag, const char *pool_extra, const struct h_mock *m, int n)
{
    snprintf(g->tag, sizeof g->tag, "%s", tag);
    g->shards = 1;      /* one shard, one record: what a prompt finds does not depend on the connection */
    char backends[256] = "";
    for (int i = 0; i < n; i++) {
        size_t len = strlen(backends);
        snprintf(backends + len, sizeof backends - len, "backend = 127.0.0.1:%d\n", m[i].port);
    }
    h_gw_config(g, NULL,
                "[pool gpu]\n%sbalance = prefix\nmetrics_interval = 50ms\n%s\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                backends, pool_extra);
    H_GW(g);
}

static double cache_tokens(const struct h_gw *g, const struct h_mock *m, double want)
{
    char q[160];
    snprintf(q, sizeof q, "aigw_backend_engine_cache_tokens{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", m->port);
    return h_wait_metric(g->admin_port, q, H_EQ, want, 3000 * h_slow());
}

Test(prefix_cachesize, the_engines_cache_capacity_is_exported)
{
    struct h_mock m[2];
    H_MOCK(&m[0], "mock-cache", "--prefix-cache 8192");
    H_MOCK(&m[1], "mock-nocache", NULL);
    struct h_gw g = {0};
    gw_prefix(&g, "aigw", "", m, 2);
    cr_expect_eq(cache_tokens(&g, &m[0], 8192), 8192, "%s", h_tail(g.tag));
    /* the other one scraped too, and it says nothing of its cache: no series */
    char q[160];
    snprintf(q, sizeof q, "aigw_backend_metrics_age_seconds{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", m[1].port);
    double age = h_metric(g.admin_port, q);
    for (int i = 0; i < 150 && age != age; i++) {
        h_sleep_ms(20);
        age = h_metric(g.admin_port, q);
    }
    cr_assert(age == age, "backend 2 never scraped:\n%s", h_tail(g.tag));
    snprintf(q, sizeof q, "aigw_backend_engine_cache_tokens{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", m[1].port);
    double none = h_metric(g.admin_port, q);
    cr_expect(none != none, "a series for an engine that reports no cache size: %g", none);
}

/* A chat request whose prompt starts with 2 KiB (8 blocks) of family f's text. */
static void ask(const struct h_gw *g, int family)
{
    static char text[2049], body[2600];
    for (int i = 0; i < 2048; i++)
        text[i] = i % 9 == 8 ? ' ' : (char)('a' + (i * 3 + family * 11) % 26);
    text[2048] = 0;
    int n = snprintf(body, sizeof body,
                     "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":2,\"messages\":["
                     "{\"role\":\"system\",\"content\":\"family %d: %s\"}]}", family, text);
    cr_assert_lt((size_t)n, sizeof body);
    struct h_resp r;
    cr_assert_eq(h_post(g->port, "/v1/chat/completions", body, &r, 10000 * h_slow()), H_OK, "%s", h_tail(g->tag));
    cr_assert_eq(r.status, 200, "family %d: %d", family, r.status);
    h_resp_free(&r);
}

/* Prompt 0, then 16 others (128 blocks), then prompt 0 again: returns whether
 * the last pick was by affinity (aigw still remembered prompt 0 there). */
static bool remembered_after_turnover(const struct h_gw *g)
{
    ask(g, 0);
    for (int f = 1; f <= 16; f++)
        ask(g, f);
    const char *aff = "aigw_balance_decisions_total{pool=\"gpu\",reason=\"affinity\"}";
    const char *load = "aigw_balance_decisions_total{pool=\"gpu\",reason=\"load\"}";
    cr_assert_eq(h_metric0(g->admin_port, aff), 0, "distinct prompts matched: %s", h_tail(g->tag));
    ask(g, 0);
    cr_assert_eq(h_metric0(g->admin_port, aff) + h_metric0(g->admin_port, load), 18);
    return h_metric0(g->admin_port, aff) == 1;
}

Test(prefix_cachesize, a_small_engine_cache_makes_aigw_forget)
{
    struct h_mock m;
    /* 1024 tokens: 16 blocks of prompt, raised to the 64-block floor */
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0 --prefix-cache 1024");
    struct h_gw small = {0}, big = {0};
    gw_prefix(&small, "aigw-auto", "", &m, 1);
    gw_prefix(&big, "aigw-fixed", "prefix_cache_blocks = 100000\n", &m, 1);
    cr_assert_eq(cache_tokens(&small, &m, 1024), 1024, "%s", h_tail(small.tag));
    cr_assert_eq(cache_tokens(&big, &m, 1024), 1024, "%s", h_tail(big.tag));
    cr_expect_not(remembered_after_turnover(&small), "auto: the 64-block record still held prompt 0");
    cr_expect(remembered_after_turnover(&big), "100000 blocks: prompt 0 forgotten");
}
