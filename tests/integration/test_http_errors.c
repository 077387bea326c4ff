/* Malformed and oversized requests end to end: 400 and close (also for
 * duplicated Host, Content-Type, Transfer-Encoding), 431, 413, Expect:
 * 100-continue, and 417 for any other expectation. */
#include "harness.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

TestSuite(http_errors, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

static void start(struct h_mock *m, struct h_gw *g)
{
    H_MOCK(m, "mock", "--tps 0 --ttft-ms 0");
    h_gw_config(g, NULL, H_STD_ROUTES, m->port);
    H_GW(g);
}

/* Sends raw bytes on a new connection: expects a 400 OpenAI error and the close. */
static void expect_400_and_close(struct h_gw *g, const char *what, const char *raw)
{
    struct h_conn c;
    cr_assert_eq(h_connect(&c, g->port), 0, "%s: cannot connect to aigw; its stderr:\n%s", what,
                 h_tail(g->tag));
    h_send(&c, raw, strlen(raw));   /* aigw may close before taking everything */
    struct h_resp r;
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "%s: no response (%d); aigw stderr:\n%s", what, rc, h_tail(g->tag));
    cr_assert_eq(r.status, 400, "%s: status %d, body %s", what, r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "%s: not an OpenAI error: %s", what,
              r.body);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 2000, NULL), "%s: connection left open after the 400", what);
    h_close(&c);
}

Test(http_errors, bad_framing_is_400_and_close)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    expect_400_and_close(&g, "Content-Length and Transfer-Encoding",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    expect_400_and_close(&g, "differing Content-Lengths",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         "Content-Length: 6\r\n\r\nhello!");
    expect_400_and_close(&g, "Transfer-Encoding gzip, chunked",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                         "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    expect_400_and_close(&g, "bad chunk size",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    expect_400_and_close(&g, "chunk size overflow",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n");
    expect_400_and_close(&g, "non-numeric Content-Length",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello");
    h_finish();
}

Test(http_errors, bad_head_syntax_is_400_and_close)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    expect_400_and_close(&g, "obs-fold",
                         "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n");
    expect_400_and_close(&g, "whitespace before colon",
                         "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Space : a\r\n\r\n");
    expect_400_and_close(&g, "control character in a value",
                         "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Ctl: a\001b\r\n\r\n");
    expect_400_and_close(&g, "bare CR in a value",
                         "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Cr: a\rb\r\n\r\n");
    expect_400_and_close(&g, "request line garbage", "\x16\x03\x01 hello there\r\n\r\n");
    expect_400_and_close(&g, "HTTP/0.9", "GET /v1/models\r\n\r\n");
    expect_400_and_close(&g, "HTTP/2.0 version", "GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n");
    h_finish();
}

Test(http_errors, duplicate_semantic_headers_are_400_and_close)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    expect_400_and_close(&g, "two Host headers",
                         "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    expect_400_and_close(&g, "two Content-Type headers",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    expect_400_and_close(&g, "the same Content-Type twice",
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    expect_400_and_close(&g, "two Transfer-Encoding headers",
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 0, "a refused request reached the backend");
    h_finish();
}

Test(http_errors, expect_other_than_100_continue_is_417)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    /* with a body: answered at once, then closed (the body is never read) */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             "Content-Length: 2\r\nExpect: 200-ok\r\n\r\n"),
                 0);
    struct h_resp r;
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer to Expect: 200-ok (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 417, "Expect: 200-ok: status %d %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "417 not an OpenAI error: %s", r.body);
    cr_assert(strstr(r.body, "Expect"), "the message should name the header: %s", r.body);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 2000 * h_slow(), NULL), "connection left open with an unread body");
    h_close(&c);

    /* without a body: the connection goes on serving */
    H_CONNECT_GW(&c, &g);
    rc = h_request(&c, "GET", "/v1/models", "Expect: 100-continue, something-else\r\n", NULL, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 417, "Expect with an unknown member: status %d %s", r.status, r.body);
    h_resp_free(&r);
    char body[512];
    rc = h_request(&c, "POST", "/v1/chat/completions", NULL,
                   h_chat_body(body, sizeof body, 2, false), &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer on the same connection after the 417 (%d)", rc);
    cr_assert_eq(r.status, 200, "after the 417: status %d %s", r.status, r.body);
    h_resp_free(&r);
    h_close(&c);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 1,
                 "only the request without an expectation may reach the backend");
    h_finish();
}

Test(http_errors, head_too_large_is_431)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    static char big[20 * 1024 + 1];
    memset(big, 'a', sizeof big - 1);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    h_sendf(&c, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", big);
    struct h_resp r;
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no response to a 20 KiB head (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 431, "20 KiB head with max_header = 16k: status %d", r.status);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "431 not an OpenAI error: %s",
              r.body);
    h_resp_free(&r);
    h_close(&c);

    /* Just under the limit passes. */
    big[12 * 1024] = 0;
    H_CONNECT_GW(&c, &g);
    static char hdr[sizeof big + 16];
    snprintf(hdr, sizeof hdr, "X-Big: %s\r\n", big);
    cr_assert_eq(h_request(&c, "GET", "/v1/models", hdr, NULL, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "a 12 KiB head with max_header = 16k: status %d", r.status);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

/* Sends up to total body bytes in 64 KiB pieces while watching for an answer. */
static int send_until_answered(struct h_conn *c, size_t total, bool chunked)
{
    static char piece[64 * 1024];
    memset(piece, 'x', sizeof piece);
    for (size_t sent = 0; sent < total; sent += sizeof piece) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0) return 1;
        int rc = chunked ? h_sendf(c, "%zx\r\n", sizeof piece) : 0;
        if (rc == 0) rc = h_send(c, piece, sizeof piece);
        if (rc == 0 && chunked) rc = h_send(c, "\r\n", 2);
        if (rc < 0) return 1;   /* aigw stopped reading: its answer should be waiting */
    }
    return 0;
}

Test(http_errors, body_too_large_is_413)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    /* Declared by Content-Length: refused from the head alone. */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
                         2 * 1024 * 1024),
                 0);
    send_until_answered(&c, 2 * 1024 * 1024, false);
    struct h_resp r;
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer to a 2 MiB body (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 413, "2 MiB body with max_body = 1m: status %d %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "413 not an OpenAI error: %s",
              r.body);
    h_resp_free(&r);
    h_close(&c);

    /* Chunked: no length up front, refused once it passes the limit. */
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"),
                 0);
    send_until_answered(&c, 2 * 1024 * 1024, true);
    rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no answer to a 2 MiB chunked body (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 413, "2 MiB chunked body with max_body = 1m: status %d %s", r.status, r.body);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

Test(http_errors, expect_100_continue)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g);

    char body[512];
    h_chat_body(body, sizeof body, 4, false);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                             "Expect: 100-continue\r\n\r\n",
                         strlen(body)),
                 0);
    struct h_resp r;
    int rc = h_recv(&c, &r, 2000 * h_slow());
    cr_assert_eq(rc, H_OK, "no interim response to Expect: 100-continue (%d)", rc);
    cr_assert_eq(r.status, 100, "expected HTTP/1.1 100 Continue, got:\n%s", r.head);
    cr_assert(!strncmp(r.head, "HTTP/1.1 100", 12), "interim response: %s", r.head);
    h_resp_free(&r);
    cr_assert_eq(h_send(&c, body, strlen(body)), 0);
    rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no final response after 100 Continue (%d)", rc);
    cr_assert_eq(r.status, 200, "final status %d, body %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"usage\""), "final body: %s", r.body);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

Test(http_errors, http11_without_host_is_400_http10_without_host_is_proxied)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "GET /v1/models HTTP/1.1\r\n\r\n"), 0);
    struct h_resp r;
    cr_assert_eq(h_recv(&c, &r, T_RESP), H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 400, "HTTP/1.1 without Host: status %d", r.status);
    cr_assert(strstr(r.body, "Host"), "the error should name the missing header: %s", r.body);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 2000 * h_slow(), NULL), "connection left open after a 400");
    h_close(&c);

    /* HTTP/1.0 may omit Host; aigw supplies one for the HTTP/1.1 backend */
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "GET /v1/models HTTP/1.0\r\n\r\n"), 0);
    cr_assert_eq(h_recv(&c, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "HTTP/1.0 without Host: status %d %s", r.status, r.body);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}
