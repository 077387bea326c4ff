/* Metrics that answer LLM questions: time to first token and per output token
 * by route and pool, requests and tokens by model (bounded labels), and what
 * each backend answered. The mock's --ttft-ms and --tps are the known truth. */
#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(llm_metrics, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_REQ (10000 * h_slow())
#define T_METRIC (5000 * h_slow())

/* One pool in front of the mock, a chat route taking any model, and a [model]
 * section naming the mock's: its glob is the model label. */
#define LLM_ROUTES                                                          \
    "[pool local]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\n" \
    "max_outstanding = 64\n\n"                                          \
    "[route chat]\npath = /v1/chat/completions\npool = local\n\n"        \
    "[model mock-llama-*]\ninput_per_mtok = 0.10\noutput_per_mtok = 0.30\n"

static double metric(const struct h_gw *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static double metric(const struct h_gw *g, const char *fmt, ...)
{
    char q[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q, sizeof q, fmt, ap);
    va_end(ap);
    return h_metric0(g->admin_port, q);
}

/* "name":N in a JSON text, -1 when absent. */
static long long json_int(const char *text, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(text, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

Test(llm_metrics, stream_first_token_and_token_spacing)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--ttft-ms 300 --tps 20");  /* a token every 50 ms */
    h_gw_config(&g, NULL, LLM_ROUTES, m.port);
    H_GW(&g);

    struct h_conn c;
    struct h_resp head;
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 20, &head, g.tag);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    bool done = false;
    int rc;
    int events = h_sse_data_events(&s, T_REQ, NULL, 0, &done, &rc);
    cr_assert(done, "stream did not finish (%d events, rc %d)", events, rc);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);

    const char *rp = "route=\"chat\",pool=\"local\"";
    double n = h_wait_metric(g.admin_port, "aigw_first_byte_seconds_count{route=\"chat\",pool=\"local\"}", H_EQ, 1,
                             T_METRIC);
    cr_assert_eq(n, 1, "one stream, one first-byte observation; got %g\n%s", n, h_tail(g.tag));
    /* the first token comes after ttft (300 ms), so not in le=0.25; generous slack above */
    cr_assert_eq(metric(&g, "aigw_first_byte_seconds_bucket{%s,le=\"0.25\"}", rp), 0,
                 "first token observed before the mock's 300 ms ttft");
    cr_assert_eq(metric(&g, "aigw_first_byte_seconds_bucket{%s,le=\"2.5\"}", rp), 1,
                 "first token observed later than ttft + 2.2 s");
    double sum = metric(&g, "aigw_first_byte_seconds_sum{%s}", rp);
    cr_assert(sum >= 0.3 && sum <= 2.5, "first byte %g s, ttft is 0.3 s", sum);

    cr_assert_eq(metric(&g, "aigw_time_per_output_token_seconds_count{%s}", rp), 1,
                 "one stream of 20 tokens, one per-token observation");
    double gap = metric(&g, "aigw_time_per_output_token_seconds_sum{%s}", rp);
    cr_assert(gap >= 0.04 && gap <= 0.25, "time per output token %g s, the mock makes one every 0.05 s", gap);
    cr_assert_eq(metric(&g, "aigw_time_per_output_token_seconds_bucket{%s,le=\"0.03\"}", rp), 0);
    cr_assert_eq(metric(&g, "aigw_time_per_output_token_seconds_bucket{%s,le=\"0.25\"}", rp), 1);
    h_finish();
}

Test(llm_metrics, non_stream_first_byte_and_tokens_by_model_and_backend)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--ttft-ms 200 --tps 0");
    h_gw_config(&g, NULL, LLM_ROUTES, m.port);
    H_GW(&g);

    char body[512];
    struct h_resp r;
    cr_assert_eq(h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 7, false), &r, T_REQ), H_OK);
    cr_assert_eq(r.status, 200, "%s", r.body);
    long long prompt = json_int(r.body, "prompt_tokens"), completion = json_int(r.body, "completion_tokens");
    cr_assert(prompt > 0 && completion == 7, "mock usage: %s", r.body);
    h_resp_free(&r);

    const char *rp = "route=\"chat\",pool=\"local\"";
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_model_requests_total{model=\"mock-llama-*\",status=\"200\"}",
                               H_EQ, 1, T_METRIC), 1, "the request by its [model] glob\n%s", h_tail(g.tag));
    cr_assert_eq(metric(&g, "aigw_first_byte_seconds_count{%s}", rp), 1, "a non-stream request counts too");
    cr_assert_eq(metric(&g, "aigw_first_byte_seconds_bucket{%s,le=\"0.1\"}", rp), 0, "answer before ttft");
    cr_assert_eq(metric(&g, "aigw_first_byte_seconds_bucket{%s,le=\"2.5\"}", rp), 1);
    cr_assert_eq(metric(&g, "aigw_time_per_output_token_seconds_count{%s}", rp), 0, "no stream, no spacing");

    cr_assert_eq(metric(&g, "aigw_model_tokens_total{model=\"mock-llama-*\",direction=\"prompt\"}"), (double)prompt);
    cr_assert_eq(metric(&g, "aigw_model_tokens_total{model=\"mock-llama-*\",direction=\"completion\"}"),
                 (double)completion);
    char be[64];
    snprintf(be, sizeof be, "pool=\"local\",backend=\"127.0.0.1:%d\"", m.port);
    cr_assert_eq(metric(&g, "aigw_backend_tokens_total{%s,direction=\"prompt\"}", be), (double)prompt);
    cr_assert_eq(metric(&g, "aigw_backend_tokens_total{%s,direction=\"completion\"}", be), (double)completion);
    cr_assert_eq(metric(&g, "aigw_backend_request_duration_seconds_count{%s}", be), 1);
    cr_assert_eq(metric(&g, "aigw_backend_request_duration_seconds_bucket{%s,le=\"0.1\"}", be), 0,
                 "the backend took the mock's 200 ms");
    h_finish();
}

Test(llm_metrics, thousand_model_names_stay_one_label)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--ttft-ms 0 --tps 0");
    h_gw_config(&g, NULL, LLM_ROUTES, m.port);
    H_GW(&g);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    int64_t deadline = h_now_ms() + 60000 * h_slow();
    for (int i = 0; i < 1000; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"client-model-%d\",\"messages\":[{\"role\":\"user\","
                                    "\"content\":\"hi\"}],\"max_tokens\":1}", i);
        struct h_resp r;
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_REQ), H_OK, "request %d", i);
        cr_assert_eq(r.status, 404, "request %d: the mock knows no client-model-%d: %d", i, i, r.status);
        h_resp_free(&r);
        cr_assert(h_now_ms() < deadline, "1000 requests took over 60 s");
    }
    h_close(&c);

    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_model_requests_total{model=\"other\",status=\"404\"}", H_EQ, 1000,
                               T_METRIC), 1000, "every unknown model counted as other\n%s", h_tail(g.tag));
    struct h_resp r;
    cr_assert_eq(h_get(g.admin_port, "/metrics", &r, T_REQ), H_OK);
    cr_assert_null(strstr(r.body, "client-model-"), "a client's model name became a label");
    unsigned series = 0;
    for (const char *p = r.body; (p = strstr(p, "aigw_model_requests_total{")); p++)
        series++;
    cr_assert_eq(series, 1, "model series: %u", series);
    cr_assert_lt(r.body_len, 64 * 1024, "/metrics grew to %zu bytes", r.body_len);
    h_resp_free(&r);
    h_finish();
}

Test(llm_metrics, errors_by_model)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--model slow-1 --ttft-ms 5000 --tps 0");
    int dead = h_free_port();
    h_gw_config(&g, "connect = 1s\nfirst_byte = 1s\nidle = 2s\nclient_header = 1s\nkeepalive = 2s\n",
                "[pool slow]\nbackend = 127.0.0.1:%d\n\n"
                "[pool dead]\nbackend = 127.0.0.1:%d\nretries = 0\n\n"
                "[route slow]\npath = /v1/chat/completions\nmodels = slow-*\npool = slow\n\n"
                "[route dead]\npath = /v1/chat/completions\nmodels = dead-*\npool = dead\n",
                m.port, dead);
    H_GW(&g);

    struct h_resp r;
    const char *slow = "{\"model\":\"slow-1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}";
    const char *gone = "{\"model\":\"dead-1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}";
    cr_assert_eq(h_post(g.port, "/v1/chat/completions", slow, &r, T_REQ), H_OK);
    cr_assert_eq(r.status, 504, "first_byte passed: %d %s", r.status, r.body);
    h_resp_free(&r);
    cr_assert_eq(h_post(g.port, "/v1/chat/completions", gone, &r, T_REQ), H_OK);
    cr_assert_eq(r.status, 502, "backend refuses connections: %d %s", r.status, r.body);
    h_resp_free(&r);

    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_model_requests_total{model=\"dead-*\",status=\"502\"}", H_EQ, 1,
                               T_METRIC), 1, "\n%s", h_tail(g.tag));
    cr_assert_eq(metric(&g, "aigw_model_requests_total{model=\"slow-*\",status=\"504\"}"), 1);
    cr_assert_eq(metric(&g, "aigw_model_requests_total{model=\"other\"}"), 0);
    cr_assert_eq(metric(&g, "aigw_model_tokens_total{model=\"dead-*\",direction=\"completion\"}"), 0,
                 "nothing generated");
    h_finish();
}
