/* AI routes: the request body is read as an OpenAI request. Bad JSON is refused
 * with a message naming the problem, a non-JSON body with 415, and the route is
 * chosen by the model (404 model_not_found when no route takes it). */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(ai, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

static void post_expect(struct h_conn *c, const struct h_gw *g, const char *ctype, const char *body,
                        int status, const char *code, const char *msg_part)
{
    char extra[128] = "";
    if (ctype)
        snprintf(extra, sizeof extra, "Content-Type: %s\r\n", ctype);
    cr_assert_eq(h_sendf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n%s",
                         extra, strlen(body), body), 0);
    struct h_resp r;
    int rc = h_recv(c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer to %s (%d); aigw stderr:\n%s", body, rc, h_tail(g->tag));
    cr_assert_eq(r.status, status, "%s: status %d %s", body, r.status, r.body);
    if (code)
        cr_assert(h_json_str_is(r.body, "code", code), "%s: code not %s: %s", body, code, r.body);
    if (msg_part)
        cr_assert(strstr(r.body, msg_part), "%s: message does not say '%s': %s", body, msg_part, r.body);
    cr_assert(h_header(&r, "x-request-id"), "no x-request-id on an AI error");
    h_resp_free(&r);
}

Test(ai, invalid_requests_are_refused_with_the_reason)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    /* each is read whole, so the connection stays usable after the 400 */
    post_expect(&c, &g, "application/json", "{\"model\":\"m\",", 400, NULL, "invalid JSON");
    post_expect(&c, &g, "application/json", "{\"messages\":[]}", 400, NULL, "missing \\\"model\\\"");
    post_expect(&c, &g, "application/json", "{\"model\":\"mock-llama-3.1-8b\",\"model\":\"x\"}", 400, NULL,
                "duplicate");
    post_expect(&c, &g, "application/json", "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":\"9\"}", 400, NULL,
                "max_tokens");
    post_expect(&c, &g, "application/json", "[1,2]", 400, NULL, NULL);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 0, "an invalid request reached the backend");

    char good[512];
    h_chat_body(good, sizeof good, 2, false);
    post_expect(&c, &g, "application/json; charset=utf-8", good, 200, NULL, NULL);
    h_close(&c);

    /* not JSON: 415, and the unread body means the connection closes */
    H_CONNECT_GW(&c, &g);
    post_expect(&c, &g, "text/plain", good, 415, NULL, "application/json");
    cr_assert(h_wait_closed(&c, 2000 * h_slow(), NULL));
    h_close(&c);
    H_CONNECT_GW(&c, &g);
    post_expect(&c, &g, NULL, good, 415, NULL, NULL);
    h_close(&c);
    h_finish();
}

Test(ai, the_model_chooses_the_route)
{
    struct h_mock llama, qwen;
    H_MOCK(&llama, "llama", "--tps 0 --ttft-ms 0 --model llama-3.1-8b");
    H_MOCK(&qwen, "qwen", "--tps 0 --ttft-ms 0 --model qwen2-7b --model qwen2-72b");
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool llama]\nbackend = 127.0.0.1:%d\n\n[pool qwen]\nbackend = 127.0.0.1:%d\n\n"
                "[route llama]\npath = /v1/chat/completions\npool = llama\nmodels = llama-*\n\n"
                "[route qwen]\npath = /v1/chat/completions\npool = qwen\nmodels = qwen2-*\n",
                llama.port, qwen.port);
    H_GW(&g);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    static const char *const models[] = { "llama-3.1-8b", "qwen2-7b", "qwen2-72b", "llama-3.1-8b" };
    for (unsigned i = 0; i < 4; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}",
                 models[i]);
        post_expect(&c, &g, "application/json", body, 200, NULL, models[i]);
    }
    cr_assert_eq(h_metric0(llama.port, "mockllm_requests_total"), 2);
    cr_assert_eq(h_metric0(qwen.port, "mockllm_requests_total"), 2);

    post_expect(&c, &g, "application/json", "{\"model\":\"mistral-7b\",\"messages\":[]}", 404,
                "model_not_found", "mistral-7b");
    /* an escaped name is the same name */
    post_expect(&c, &g, "application/json",
                "{\"model\":\"qwen2-\\u0037b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1}",
                200, NULL, "qwen2-7b");
    h_close(&c);
    h_finish();
}
