/* Prefix-aware routing: with balance = prefix, requests that share a long prompt
 * start go where the engine already holds it, so the engines' own prefix caches
 * hit more often than with balance = capacity, and nothing fails. */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(prefix_routing, .init = h_setup, .fini = h_teardown, .timeout = 90);

enum { NMOCK = 3, FAMILIES = 4, ROUNDS = 8, BATCH = 4, PREFIX_BYTES = 4096 };

static void gw_for(struct h_gw *g, const char *tag, const char *balance, const struct h_mock *m)
{
    snprintf(g->tag, sizeof g->tag, "%s", tag);
    h_gw_config(g, "connect = 1s\nfirst_byte = 20s\nidle = 20s\nclient_header = 2s\nkeepalive = 10s\n",
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\n"
                "balance = %s\nmetrics_interval = 50ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                m[0].port, m[1].port, m[2].port, balance);
    H_GW(g);
    /* every engine scraped (its prefix-cache counters exported) before the first pick */
    int missing = h_wait_engines_scraped(g->admin_port, "gpu", m, NMOCK);
    cr_assert_eq(missing, -1, "%s: no prefix-cache counters scraped from backend %d:\n%s", tag, missing,
                 h_tail(g->tag));
}

static double fleet_sum(const struct h_mock *m, const char *name)
{
    double sum = 0;
    for (int i = 0; i < NMOCK; i++)
        sum += h_metric0(m[i].port, name);
    return sum;
}

/* ROUNDS rounds of BATCH concurrent requests, each one of FAMILIES long shared
 * prompt starts (distinct per run) and a question of its own. Returns the
 * fleet's prefix-cache hit rate over the run; every request must answer 200. */
static double run(struct h_gw *g, const struct h_mock *m, char run_tag)
{
    double hits0 = fleet_sum(m, "vllm:prefix_cache_hits"), queries0 = fleet_sum(m, "vllm:prefix_cache_queries");
    static char system[PREFIX_BYTES + 1], body[PREFIX_BYTES + 512];
    for (int r = 0; r < ROUNDS; r++) {
        struct h_conn c[BATCH];
        for (int k = 0; k < BATCH; k++) {
            int family = (r + k) % FAMILIES;
            for (int i = 0; i < PREFIX_BYTES; i++)
                system[i] = i % 7 == 6 ? ' ' : (char)('a' + (i * 7 + family * 5 + run_tag) % 26);
            system[PREFIX_BYTES] = 0;
            int n = snprintf(body, sizeof body,
                             "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":4,\"messages\":["
                             "{\"role\":\"system\",\"content\":\"%c%d %s\"},"
                             "{\"role\":\"user\",\"content\":\"question %d of round %d\"}]}",
                             run_tag, family, system, k, r);
            cr_assert_lt((size_t)n, sizeof body);
            H_CONNECT_GW(&c[k], g);
            cr_assert_eq(h_sendf(&c[k],
                                 "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", n, body),
                         0);
        }
        for (int k = 0; k < BATCH; k++) {
            struct h_resp resp;
            cr_assert_eq(h_recv(&c[k], &resp, 20000 * h_slow()), H_OK, "%s: round %d request %d: no answer",
                         g->tag, r, k);
            cr_assert_eq(resp.status, 200, "%s: round %d request %d: %d", g->tag, r, k, resp.status);
            h_resp_free(&resp);
            h_close(&c[k]);
        }
    }
    double hits = fleet_sum(m, "vllm:prefix_cache_hits") - hits0;
    double queries = fleet_sum(m, "vllm:prefix_cache_queries") - queries0;
    cr_assert_gt(queries, 0, "%s: the engines saw no prompt", g->tag);
    return hits / queries;
}

Test(prefix_routing, prefix_hits_the_engines_caches_more_than_capacity)
{
    struct h_mock m[NMOCK];
    static const char *const args[NMOCK] = {
        "--tps 2000 --ttft-ms 5 --prefill-tps 200000 --prefix-cache 200000 --max-running 2",
        "--tps 2000 --ttft-ms 5 --prefill-tps 200000 --prefix-cache 200000 --max-running 4",
        "--tps 2000 --ttft-ms 5 --prefill-tps 200000 --prefix-cache 200000 --max-running 8",
    };
    for (int i = 0; i < NMOCK; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "mock%d", i);
        H_MOCK(&m[i], tag, args[i]);
    }
    struct h_gw cap = {0}, pre = {0};
    gw_for(&cap, "aigw-capacity", "capacity", m);
    gw_for(&pre, "aigw-prefix", "prefix", m);

    double rate_capacity = run(&cap, m, 'C');
    double rate_prefix = run(&pre, m, 'P');
    fprintf(stderr, "prefix_routing: prefix-cache hit rate %.3f with capacity, %.3f with prefix\n",
            rate_capacity, rate_prefix);
    cr_expect_gt(rate_prefix, rate_capacity, "hit rate: prefix %.3f, capacity %.3f", rate_prefix, rate_capacity);

    /* what decided, and the engines' counters, as aigw exports them */
    double affinity = h_metric0(pre.admin_port, "aigw_balance_decisions_total{pool=\"gpu\",reason=\"affinity\"}");
    double load = h_metric0(pre.admin_port, "aigw_balance_decisions_total{pool=\"gpu\",reason=\"load\"}");
    cr_expect_eq(affinity + load, ROUNDS * BATCH);
    cr_expect_gt(affinity, load, "affinity %g, load %g", affinity, load);
    cr_expect_eq(h_metric0(cap.admin_port, "aigw_balance_decisions_total{pool=\"gpu\",reason=\"affinity\"}"), 0);
    double engine_hits = fleet_sum(m, "vllm:prefix_cache_hits");
    cr_expect_eq(h_wait_metric(pre.admin_port, "aigw_backend_prefix_cache_hits_total{pool=\"gpu\"}", H_GE,
                               engine_hits, 3000 * h_slow()),
                 engine_hits);
    cr_expect_eq(h_metric0(pre.admin_port, "aigw_requests_total{status=\"200\"}"), ROUNDS * BATCH);
}
