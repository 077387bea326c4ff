/* Cost accounting: the tokens each request used, at its model's [model] prices,
 * in aigw_cost_usd_total{key,model} and the access log's cost_usd. The mock's
 * usage in its answers is the truth the expected cost is computed from. */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(cost, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_REQ (10000 * h_slow())
#define T_METRIC (5000 * h_slow())
#define KEY_ALICE "sk-itest-cost-alice-7Hw2"
#define KEY_BOB "sk-itest-cost-bob-9Pz4"

/* 0.15 and 0.60 USD per million tokens: 150000 and 600000 micro-USD, so one
 * prompt token costs 150000 pico-USD and one completion token 600000. */
#define PRICE_IN_PICO 150000.0
#define PRICE_OUT_PICO 600000.0
#define COST_ROUTES                                                          \
    "[pool local]\nbackend = 127.0.0.1:%d\n\n"                               \
    "[route chat]\npath = /v1/chat/completions\npool = local\n\n"           \
    "[model mock-llama-*]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n\n" \
    "[keys]\nauth = required\nfile = %s\n"

static void start(struct h_mock *m, struct h_gw *g)
{
    H_MOCK(m, "mock", "--model mock-llama-3.1-8b --model unpriced-7b --tps 0");
    h_write_file(h_keys_path(), "%s%s", h_key_line("alice", KEY_ALICE, "default", NULL),
                 h_key_line("bob", KEY_BOB, "default", NULL));
    h_gw_config(g, NULL, COST_ROUTES, m->port, h_keys_path());
    H_GW(g);
}

/* "name":N in a JSON text (its last occurrence: a stream's usage chunk), -1 when absent. */
static long long json_int(const char *text, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = NULL;
    for (const char *q = text; (q = strstr(q, key)); q++)
        p = q;
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* One chat completion with key's bearer; fails the test unless 200. */
static void chat(const struct h_gw *g, const char *key, const char *body, long long *prompt, long long *completion)
{
    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, g);
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", h_bearer(key));
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, body, &r, T_REQ);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "no complete response (%d)\n%s", rc, h_tail(g->tag));
    cr_assert_eq(r.status, 200, "status %d: %s", r.status, r.body ? r.body : "");
    *prompt = json_int(r.body, "prompt_tokens");
    *completion = json_int(r.body, "completion_tokens");
    cr_assert(*prompt > 0 && *completion > 0, "mock usage: %s", r.body);
    h_resp_free(&r);
}

static bool near(double got, double want)
{
    return fabs(got - want) <= 1e-9 * fabs(want) + 1e-15;
}

/* The cost_usd values of the access log lines holding `needle`, once there are
 * `want` of them (bounded by T_METRIC; the writer thread writes them). */
static int log_costs(const char *needle, double *cost, int want)
{
    int n = 0;
    for (int64_t end = h_now_ms() + T_METRIC; n < want && h_now_ms() < end; h_sleep_ms(20)) {
        char *text = h_read_file(h_access_log_path());
        n = 0;
        for (char *line = text; line && *line && n < want;) {
            char *nl = strchr(line, '\n');
            if (!nl)
                break;  /* a line still being written */
            *nl = 0;
            if (strstr(line, needle)) {
                const char *p = strstr(line, "\"cost_usd\":");
                cost[n++] = p ? strtod(p + strlen("\"cost_usd\":"), NULL) : -1;
            }
            line = nl + 1;
        }
        free(text);
    }
    return n;
}

Test(cost, priced_requests_sum_exactly_per_key_and_model)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);
    enum { N = 6 };
    char body[512];
    long long prompt = 0, completion = 0;
    for (int i = 0; i < N; i++)
        chat(&g, KEY_ALICE, h_chat_body(body, sizeof body, 7, false), &prompt, &completion);
    cr_assert_eq(completion, 7);
    double one = (prompt * PRICE_IN_PICO + completion * PRICE_OUT_PICO) / 1e12;
    const char *series = "aigw_cost_usd_total{key=\"alice\",model=\"mock-llama-*\"}";
    double got = h_wait_metric(g.admin_port, series, H_GE, N * one * (1 - 1e-9), T_METRIC);
    cr_assert(near(got, N * one), "%s = %.12f, want %d x %.12f\n%s", series, got, N, one, h_tail(g.tag));
    cr_assert_eq(h_metric0(g.admin_port, "aigw_cost_usd_total{key=\"bob\"}"), 0, "bob sent nothing");

    double cost[N];
    cr_assert_eq(log_costs("\"mock-llama-3.1-8b\"", cost, N), N, "access log lines:\n%s",
                 h_read_file(h_access_log_path()));
    for (int i = 0; i < N; i++)
        cr_assert(near(cost[i], one), "line %d: cost_usd %.12f, want %.12f", i, cost[i], one);
    h_finish();
}

Test(cost, tiny_request_costs_more_than_zero)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);
    char body[512];
    long long prompt, completion;
    chat(&g, KEY_ALICE, h_chat_body(body, sizeof body, 1, false), &prompt, &completion);
    double one = (prompt * PRICE_IN_PICO + completion * PRICE_OUT_PICO) / 1e12;
    double got = h_wait_metric(g.admin_port, "aigw_cost_usd_total{key=\"alice\",model=\"mock-llama-*\"}", H_GE,
                               one * (1 - 1e-9), T_METRIC);
    cr_assert(got > 0 && near(got, one), "cost %.12f, want %.12f\n%s", got, one, h_tail(g.tag));
    h_finish();
}

Test(cost, unpriced_model_adds_nothing)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);
    const char *body = "{\"model\":\"unpriced-7b\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],"
                       "\"max_tokens\":5}";
    long long prompt, completion;
    chat(&g, KEY_BOB, body, &prompt, &completion);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_tokens_total{key=\"bob\",direction=\"completion\"}", H_EQ, 5,
                               T_METRIC), 5, "the request was metered\n%s", h_tail(g.tag));
    struct h_resp r;
    cr_assert_eq(h_get(g.admin_port, "/metrics", &r, T_REQ), H_OK);
    cr_assert_not_null(strstr(r.body, "# TYPE aigw_cost_usd_total counter"), "the family is described");
    cr_assert_null(strstr(r.body, "aigw_cost_usd_total{"), "an unpriced model made a cost series:\n%s",
                   strstr(r.body, "aigw_cost_usd_total{"));
    h_resp_free(&r);
    double cost[1];
    cr_assert_eq(log_costs("\"unpriced-7b\"", cost, 1), 1, "the request's access log line");
    cr_assert_eq(cost[0], -1, "an unpriced request's line has no cost_usd");
    h_finish();
}

Test(cost, stream_is_charged_its_usage_chunk)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);
    const char *body = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"Say something longer.\"}],\"max_tokens\":11,\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true}}";
    long long prompt, completion;
    chat(&g, KEY_BOB, body, &prompt, &completion);
    cr_assert_eq(completion, 11, "the usage chunk's completion tokens");
    double one = (prompt * PRICE_IN_PICO + completion * PRICE_OUT_PICO) / 1e12;
    const char *series = "aigw_cost_usd_total{key=\"bob\",model=\"mock-llama-*\"}";
    double got = h_wait_metric(g.admin_port, series, H_GE, one * (1 - 1e-9), T_METRIC);
    cr_assert(near(got, one), "%s = %.12f, want %.12f\n%s", series, got, one, h_tail(g.tag));
    double cost[1];
    cr_assert_eq(log_costs("\"stream\":true", cost, 1), 1, "the stream's access log line");
    cr_assert(near(cost[0], one), "cost_usd %.12f, want %.12f", cost[0], one);
    h_finish();
}
