/* Request bodies are streamed upstream whole, in either framing; and clients over
 * max_connections are refused cleanly, with a 503 rather than a reset. */
#include "harness.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(limits, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())
#define PROMPT_BYTES 600000     /* under max_body = 1m, far over any buffer aigw has */

/* A chat request whose one message is PROMPT_BYTES of 'a': the mock counts
 * ceil(bytes / 4) prompt tokens, so the count proves the body arrived whole. */
static char *big_chat_body(size_t *len)
{
    static const char pre[] = "{\"model\":\"mock-llama-3.1-8b\",\"max_tokens\":2,"
                              "\"messages\":[{\"role\":\"user\",\"content\":\"";
    static const char post[] = "\"}]}";
    *len = sizeof pre - 1 + PROMPT_BYTES + sizeof post - 1;
    char *b = malloc(*len + 1);
    memcpy(b, pre, sizeof pre - 1);
    memset(b + sizeof pre - 1, 'a', PROMPT_BYTES);
    memcpy(b + sizeof pre - 1 + PROMPT_BYTES, post, sizeof post);
    return b;
}

static void assert_whole_prompt_arrived(struct h_conn *c, const char *what, const char *tag)
{
    struct h_resp r;
    int rc = h_recv(c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "%s: no response (%d); aigw stderr:\n%s", what, rc, h_tail(tag));
    cr_assert_eq(r.status, 200, "%s: status %d %s", what, r.status, r.body);
    cr_assert_eq(h_json_int(r.body, "prompt_tokens"), PROMPT_BYTES / 4,
                 "%s: the backend saw a different body: %s", what, r.body);
    h_resp_free(&r);
}

Test(limits, large_request_bodies_reach_the_backend_whole)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);
    size_t len;
    char *body = big_chat_body(&len);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);

    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", len), 0);
    cr_assert_eq(h_send(&c, body, len), 0);
    assert_whole_prompt_arrived(&c, "Content-Length body", g.tag);

    /* the same body chunked, in uneven pieces, on the same connection */
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    for (size_t off = 0, piece = 777; off < len; off += piece, piece = piece * 3 % 70001 + 1) {
        size_t n = len - off < piece ? len - off : piece;
        cr_assert_eq(h_sendf(&c, "%zx\r\n", n), 0);
        cr_assert_eq(h_send(&c, body + off, n), 0);
        cr_assert_eq(h_sendf(&c, "\r\n"), 0);
    }
    cr_assert_eq(h_sendf(&c, "0\r\n\r\n"), 0);
    assert_whole_prompt_arrived(&c, "chunked body", g.tag);
    free(body);
    h_close(&c);
    h_finish();
}

Test(limits, clients_over_max_connections_get_503_not_a_reset)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    /* two shards: one connection each */
    snprintf(g.server_extra, sizeof g.server_extra, "max_connections = 2\n");
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);

    enum { N = 4 };
    struct h_conn c[N];
    for (int i = 0; i < N; i++)
        H_CONNECT_GW(&c[i], &g);
    /* a refused client has its 503 waiting before it sends anything: read that
     * first (sending into a closed connection could reset it and lose the answer),
     * so wait until aigw has dealt with every connection: accepted (counted in
     * aigw_connections) or refused (its 503 readable) */
    struct pollfd p[N];
    int64_t end = h_now_ms() + T_RESP;
    for (int settled = 0; settled < N && h_now_ms() < end;) {
        for (int i = 0; i < N; i++)
            p[i] = (struct pollfd){ .fd = c[i].fd, .events = POLLIN };
        double accepted = h_metric0(g.admin_port, "aigw_connections{side=\"client\"}");
        settled = poll(p, N, 20) + (int)accepted;
    }
    int refused = 0, served = 0;
    for (int i = 0; i < N; i++) {
        struct h_resp r;
        int rc = p[i].revents ? h_recv(&c[i], &r, T_RESP)
                              : h_request(&c[i], "GET", "/v1/models", NULL, NULL, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "connection %d: no answer at all (%d)", i, rc);
        if (r.status == 503) {
            refused++;
            cr_assert(h_json_str_is(r.body, "code", "no_capacity"), "503 body: %s", r.body);
            cr_assert_not_null(h_header(&r, "retry-after"));
            cr_assert(!r.keep_alive, "a refused connection is closed");
        } else {
            cr_assert_eq(r.status, 200, "connection %d: status %d", i, r.status);
            served++;
        }
        h_resp_free(&r);
    }
    cr_assert_geq(refused, N - 2, "4 clients, room for 2: %d refused", refused);
    cr_assert_geq(served, 1);
    for (int i = 0; i < N; i++)
        h_close(&c[i]);
    /* the refused ones were never counted; once the others leave there is room again */
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_connections{side=\"client\"}", H_EQ, 0, T_RESP), 0,
                 "aigw still counts client connections after all left");
    struct h_resp r;
    cr_assert_eq(h_get(g.port, "/v1/models", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    h_finish();
}
