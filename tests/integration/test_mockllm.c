/* aigw-mockllm on its own: the backend every other integration test relies on
 * (and the harness's HTTP client against a real server). */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(mockllm, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

Test(mockllm, health_models_and_metrics)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--model alpha-7b --model beta-13b --tps 0 --ttft-ms 0");

    struct h_resp r;
    cr_assert_eq(h_get(m.port, "/health", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);

    cr_assert_eq(h_get(m.port, "/v1/models", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"alpha-7b\"") && strstr(r.body, "\"beta-13b\""), "models: %s", r.body);
    h_resp_free(&r);

    cr_assert_eq(h_get(m.port, "/metrics", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "mockllm_aborted_total"), "no mockllm_aborted_total in:\n%s", r.body);
    cr_assert(strstr(r.body, "mockllm_requests_total"), "no mockllm_requests_total in:\n%s", r.body);
    h_resp_free(&r);
    cr_assert_eq(h_metric(m.port, "mockllm_aborted_total"), 0.0);
    h_finish();
}

Test(mockllm, default_model_and_usage_on_a_kept_alive_connection)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");

    struct h_resp r;
    cr_assert_eq(h_get(m.port, "/v1/models", &r, T_RESP), H_OK);
    cr_assert(strstr(r.body, "mock-llama-3.1-8b"), "default model missing: %s", r.body);
    h_resp_free(&r);

    double before = h_metric0(m.port, "mockllm_requests_total");
    struct h_conn c;
    cr_assert_eq(h_connect(&c, m.port), 0);
    char body[512];
    for (int i = 1; i <= 5; i++) {
        h_chat_body(body, sizeof body, i, false);
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_RESP), H_OK,
                     "request %d on a kept-alive connection", i);
        cr_assert_eq(r.status, 200);
        cr_assert(r.keep_alive, "mockllm ended keep-alive:\n%s", r.head);
        cr_assert_eq(h_json_int(r.body, "completion_tokens"), i, "usage for max_tokens %d: %s", i, r.body);
        h_resp_free(&r);
    }
    cr_assert_eq(h_request(&c, "POST", "/v1/completions", NULL,
                           "{\"model\":\"mock-llama-3.1-8b\",\"prompt\":\"Hi\",\"max_tokens\":3}", &r, T_RESP),
                 H_OK);
    cr_assert_eq(r.status, 200, "/v1/completions: %d %s", r.status, r.body);
    cr_assert_eq(h_json_int(r.body, "completion_tokens"), 3, "completions usage: %s", r.body);
    h_resp_free(&r);
    h_close(&c);
    double after = h_metric0(m.port, "mockllm_requests_total");
    cr_assert(after - before >= 6, "mockllm_requests_total rose by %g for 6 completions", after - before);
    h_finish();
}

Test(mockllm, stream_is_paced_and_ends_with_done)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 20 --ttft-ms 100");

    const char *body = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                       "\"max_tokens\":10,\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    struct h_conn c;
    cr_assert_eq(h_connect(&c, m.port), 0);
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: %zu\r\n\r\n%s", strlen(body), body), 0);
    struct h_resp head;
    cr_assert_eq(h_recv_head(&c, &head, T_RESP), H_OK);
    cr_assert_eq(head.status, 200);
    cr_assert(head.chunked, "stream not chunked:\n%s", head.head);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    int rc, data = 0;
    bool usage = false, done = false;
    int64_t first = -1, last = 0;
    while ((rc = h_sse_next(&s, T_RESP)) == 1) {
        if (strncmp(s.event, "data:", 5)) continue;
        cr_assert_not(done, "event after [DONE]: %s", s.event);
        data++;
        if (first < 0) first = s.event_ms - t0;
        last = s.event_ms - t0;
        if (strstr(s.event, "\"usage\"") && h_json_int(s.event, "completion_tokens") == 10) usage = true;
        if (strstr(s.event, "[DONE]")) done = true;
    }
    cr_assert_eq(rc, 0, "stream did not end with the last chunk (%d)", rc);
    cr_assert(done, "no data: [DONE]");
    cr_assert(usage, "no usage chunk with completion_tokens 10 though include_usage was set");
    cr_assert(data >= 12, "%d data events for 10 tokens + usage + [DONE]", data);
    cr_assert(first >= 80, "first event after %lld ms with --ttft-ms 100", (long long)first);
    cr_assert(last >= 500, "10 tokens at 20/s done in %lld ms", (long long)last);
    cr_assert(last <= 2500 * h_slow(), "10 tokens at 20/s took %lld ms", (long long)last);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);
    h_finish();
}

Test(mockllm, client_disconnect_counts_an_abort)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 20 --ttft-ms 0");
    char body[512];
    h_chat_body(body, sizeof body, 200, true);
    struct h_conn c;
    cr_assert_eq(h_connect(&c, m.port), 0);
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: %zu\r\n\r\n%s", strlen(body), body), 0);
    struct h_resp head;
    cr_assert_eq(h_recv_head(&c, &head, T_RESP), H_OK);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    for (int i = 0; i < 2; i++) cr_assert_eq(h_sse_next(&s, T_RESP), 1);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);
    double aborted = h_wait_metric(m.port, "mockllm_aborted_total", H_GE, 1, 2000 * h_slow());
    cr_assert_eq(aborted, 1, "mockllm_aborted_total = %g 2 s after the client left", aborted);
    h_finish();
}

Test(mockllm, instant_mode_answers_at_once)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    char body[512];
    h_chat_body(body, sizeof body, 64, false);
    struct h_conn c;
    cr_assert_eq(h_connect(&c, m.port), 0);
    int64_t t0 = h_now_ms();
    for (int i = 0; i < 200; i++) {
        struct h_resp r;
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    int64_t took = h_now_ms() - t0;
    h_close(&c);
    cr_assert(took < 2000 * h_slow(), "200 instant answers took %lld ms", (long long)took);
    h_finish();
}

Test(mockllm, fail_rate_one_answers_500)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0 --fail-rate 1");
    char body[512];
    h_chat_body(body, sizeof body, 4, false);
    for (int i = 0; i < 3; i++) {
        struct h_resp r;
        cr_assert_eq(h_post(m.port, "/v1/chat/completions", body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 500, "--fail-rate 1: status %d", r.status);
        h_resp_free(&r);
    }
    struct h_resp r;
    cr_assert_eq(h_get(m.port, "/health", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "/health fails with --fail-rate 1");
    h_resp_free(&r);
    h_finish();
}
