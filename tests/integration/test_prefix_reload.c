/* A reload keeps prefix affinity for the backends that stay: a prompt aigw sent
 * to one engine before SIGHUP goes to that engine after it (its prefix cache is
 * still warm), even when backends join and unrelated keys change; when that
 * engine leaves, the prompt is placed by load elsewhere and nothing fails. */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(prefix_reload, .init = h_setup, .fini = h_teardown, .timeout = 90);

enum { NMOCK = 4, PROMPT_BYTES = 4096 };

#define AFFINITY "aigw_balance_decisions_total{pool=\"gpu\",reason=\"affinity\"}"
#define LOAD "aigw_balance_decisions_total{pool=\"gpu\",reason=\"load\"}"

/* One shard: the block indexes are per shard, so both requests of a pair must
 * meet the same one. `extra` is the changed unrelated key. */
static void configure(struct h_gw *g, const struct h_mock *m, const int *use, int nuse, const char *extra)
{
    char backends[512] = "";
    size_t len = 0;
    for (int i = 0; i < nuse; i++)
        len += (size_t)snprintf(backends + len, sizeof backends - len, "backend = 127.0.0.1:%d\n", m[use[i]].port);
    cr_assert_lt(len, sizeof backends);
    g->shards = 1;
    h_gw_config(g, "connect = 1s\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 10s\n",
                "[pool gpu]\n%sbalance = prefix\nmetrics_interval = 50ms\n%s\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                backends, extra);
}

static double served(const struct h_mock *m, int i)
{
    return h_metric0(m[i].port, "vllm:request_success_total");
}

/* Posts the prompt and returns which mock answered it (by the mocks' success
 * counters), asserting a 200 and the balance reason counted for it. */
static int post(struct h_gw *g, const struct h_mock *m, const char *body, const char *reason_metric)
{
    double before[NMOCK], total0 = 0;
    for (int i = 0; i < NMOCK; i++)
        total0 += before[i] = served(m, i);
    double reason0 = h_metric0(g->admin_port, reason_metric);

    struct h_resp r;
    cr_assert_eq(h_post(g->port, "/v1/chat/completions", body, &r, 10000 * h_slow()), H_OK,
                 "no answer; aigw stderr:\n%s", h_tail(g->tag));
    cr_assert_eq(r.status, 200, "status %d; aigw stderr:\n%s", r.status, h_tail(g->tag));
    h_resp_free(&r);
    cr_assert_eq(h_wait_metric(g->admin_port, reason_metric, H_EQ, reason0 + 1, 3000 * h_slow()), reason0 + 1,
                 "%s did not count this pick; aigw stderr:\n%s", reason_metric, h_tail(g->tag));

    /* the engine counts its success as it finishes: wait for the fleet's total */
    int64_t end = h_now_ms() + 3000 * h_slow();
    for (;;) {
        double total = 0;
        for (int i = 0; i < NMOCK; i++)
            total += served(m, i);
        if (total >= total0 + 1 || h_now_ms() >= end)
            break;
        h_sleep_ms(10);
    }
    int by = -1;
    for (int i = 0; i < NMOCK; i++)
        if (served(m, i) > before[i]) {
            cr_assert_eq(by, -1, "two engines counted one request");
            by = i;
        }
    cr_assert_neq(by, -1, "no engine counted the request");
    return by;
}

Test(prefix_reload, affinity_survives_reloads_for_backends_that_stay)
{
    struct h_mock m[NMOCK];
    for (int i = 0; i < NMOCK; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "mock%d", i);
        H_MOCK(&m[i], tag, "--tps 2000 --ttft-ms 1 --prefill-tps 200000 --prefix-cache 200000 --max-running 8");
    }
    static char system[PROMPT_BYTES + 1], body[PROMPT_BYTES + 512];
    for (int i = 0; i < PROMPT_BYTES; i++)
        system[i] = i % 7 == 6 ? ' ' : (char)('a' + (i * 11) % 26);
    int n = snprintf(body, sizeof body,
                     "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":4,\"messages\":["
                     "{\"role\":\"system\",\"content\":\"%s\"},"
                     "{\"role\":\"user\",\"content\":\"the same question\"}]}",
                     system);
    cr_assert_lt((size_t)n, sizeof body);

    struct h_gw g = {0};
    snprintf(g.tag, sizeof g.tag, "aigw");
    const int three[] = {0, 1, 2}, four[] = {0, 1, 2, 3};
    configure(&g, m, three, 3, "");
    H_GW(&g);

    int first = post(&g, m, body, LOAD);
    cr_assert_eq(post(&g, m, body, AFFINITY), first, "the repeat went elsewhere than the first");

    /* a 4th backend joins and an unrelated key changes: the index of the staying ones is kept */
    configure(&g, m, four, 4, "max_outstanding = 32\n");
    H_RELOAD(&g, H_RELOAD_APPLIED);
    cr_assert_eq(post(&g, m, body, AFFINITY), first, "after the reload the prompt left its engine");

    /* its backend leaves: placed by load on another one, then affinity follows it there */
    int rest[3], nrest = 0;
    for (int i = 0; i < NMOCK; i++)
        if (i != first)
            rest[nrest++] = i;
    configure(&g, m, rest, nrest, "max_outstanding = 32\n");
    H_RELOAD(&g, H_RELOAD_APPLIED);
    int second = post(&g, m, body, LOAD);
    cr_assert_neq(second, first, "sent to a backend no longer configured");
    cr_assert_eq(post(&g, m, body, AFFINITY), second);

    cr_assert_eq(h_metric0(g.admin_port, "aigw_requests_total{status=\"200\"}"), 5);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_reloads_total{result=\"ok\"}"), 2);
    cr_assert(h_alive(g.pid), "aigw died; stderr:\n%s", h_tail(g.tag));
}
