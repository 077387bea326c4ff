/* prefix_index = shared with shards = 2: a prompt placed by one shard is known
 * to the other, so every repeat of it goes where the first one went, whichever
 * shard its connection lands on. With prefix_index = shard each shard learns a
 * prompt on its own: at most one load decision per shard, affinity after. */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(prefix_share, .init = h_setup, .fini = h_teardown, .timeout = 90);

enum { NMOCK = 3, REPEATS = 16, SYSTEM_BYTES = 2048 };

static void gw_for(struct h_gw *g, const char *tag, const char *index, const struct h_mock *m)
{
    snprintf(g->tag, sizeof g->tag, "%s", tag);
    g->shards = 2;
    h_gw_config(g, "connect = 1s\nfirst_byte = 20s\nidle = 20s\nclient_header = 2s\nkeepalive = 10s\n",
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\n"
                /* only the match scores: a request's engine load, scraped an interval
                 * late, must not turn a repeat into a load pick on a busy test machine */
                "balance = prefix\nprefix_index = %s\nqueue_weight = 0\nkv_weight = 0\nmetrics_interval = 50ms\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                m[0].port, m[1].port, m[2].port, index);
    H_GW(g);
    /* every engine's load known before the first pick, so picks compare known loads */
    int missing = h_wait_engines_scraped(g->admin_port, "gpu", m, NMOCK);
    cr_assert_eq(missing, -1, "%s: no prefix-cache counters scraped from backend %d:\n%s", tag, missing,
                 h_tail(g->tag));
}

/* The same prompt, once and then REPEATS times, one at a time, each on a fresh
 * connection (SO_REUSEPORT spreads them over the shards). */
static void send_all(const struct h_gw *g, char run_tag)
{
    static char system[SYSTEM_BYTES + 1], body[SYSTEM_BYTES + 256];
    for (int i = 0; i < SYSTEM_BYTES; i++)
        system[i] = i % 7 == 6 ? ' ' : (char)('a' + (i * 11 + run_tag) % 26);
    system[SYSTEM_BYTES] = 0;
    snprintf(body, sizeof body,
             "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":2,\"messages\":["
             "{\"role\":\"system\",\"content\":\"%s\"},{\"role\":\"user\",\"content\":\"hello\"}]}",
             system);
    for (int r = 0; r <= REPEATS; r++) {
        struct h_resp resp;
        cr_assert_eq(h_post(g->port, "/v1/chat/completions", body, &resp, 20000 * h_slow()), H_OK,
                     "%s: request %d: no answer", g->tag, r);
        cr_assert_eq(resp.status, 200, "%s: request %d: %d", g->tag, r, resp.status);
        h_resp_free(&resp);
    }
}

static double decisions(const struct h_gw *g, const char *reason)
{
    char q[128];
    snprintf(q, sizeof q, "aigw_balance_decisions_total{pool=\"gpu\",reason=\"%s\"}", reason);
    return h_metric0(g->admin_port, q);
}

static void start_mocks(struct h_mock *m)
{
    for (int i = 0; i < NMOCK; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "mock%d", i);
        H_MOCK(&m[i], tag, "--tps 2000 --ttft-ms 5 --prefill-tps 200000 --prefix-cache 200000 --max-running 8");
    }
}

Test(prefix_share, a_prompt_placed_by_one_shard_is_known_to_the_other)
{
    struct h_mock m[NMOCK];
    start_mocks(m);
    struct h_gw g = {0};
    gw_for(&g, "aigw-shared", "shared", m);
    send_all(&g, 'S');
    /* the first request was placed by load; every repeat followed it, on either shard */
    cr_expect_eq(decisions(&g, "load"), 1, "%s", h_tail(g.tag));
    cr_expect_eq(decisions(&g, "affinity"), REPEATS);
    int went = 0;
    for (int i = 0; i < NMOCK; i++) {
        char q[160];
        snprintf(q, sizeof q, "aigw_balance_decisions_total{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", m[i].port);
        double n = h_metric0(g.admin_port, q);
        cr_expect(n == 0 || n == REPEATS + 1, "backend %d got %g of the %d requests", i, n, REPEATS + 1);
        went += n > 0;
    }
    cr_expect_eq(went, 1, "the prompt went to %d backends", went);
    /* what a shard copied from the other: at most every placement but its own first */
    double applied = h_metric0(g.admin_port, "aigw_prefix_share_entries_total{result=\"applied\"}");
    fprintf(stderr, "prefix_share: %g placements copied between the shards\n", applied);
    cr_expect_leq(applied, REPEATS + 1);
    cr_expect_eq(h_metric0(g.admin_port, "aigw_prefix_share_entries_total{result=\"lapped\"}"), 0);
}

Test(prefix_share, per_shard_indexes_learn_a_prompt_once_per_shard)
{
    struct h_mock m[NMOCK];
    start_mocks(m);
    struct h_gw g = {0};
    gw_for(&g, "aigw-shard", "shard", m);
    send_all(&g, 'P');
    /* each shard places the prompt by load the first time it sees it, then by affinity */
    double load = decisions(&g, "load"), affinity = decisions(&g, "affinity");
    cr_expect_eq(load + affinity, REPEATS + 1);
    cr_expect_geq(load, 1);
    cr_expect_leq(load, h_gw_nshards(&g), "load decisions %g with %d shards", load, h_gw_nshards(&g));
    cr_expect_eq(h_metric0(g.admin_port, "aigw_prefix_share_entries_total{result=\"applied\"}"), 0);
}
