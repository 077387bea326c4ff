/* Requests through aigw to aigw-mockllm: round trips, keep-alive on both sides,
 * pipelining, balancing, and the errors a backend can cause (502, 504). */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

TestSuite(proxy, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

Test(proxy, round_trip_get_and_post)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    struct h_resp r;
    int rc = h_get(g.port, "/v1/models", &r, T_RESP);
    cr_assert_eq(rc, H_OK, "GET /v1/models: no complete response (%d); aigw stderr:\n%s", rc,
                 h_tail(g.tag));
    cr_assert_eq(r.status, 200, "GET /v1/models: status %d, body %s", r.status, r.body);
    cr_assert(strstr(r.body, "mock-llama-3.1-8b"), "GET /v1/models: backend's model list missing: %s",
              r.body);
    cr_assert(h_header(&r, "x-request-id") && *h_header(&r, "x-request-id"),
              "GET: no x-request-id in the response head:\n%s", r.head);
    h_resp_free(&r);

    char body[512];
    rc = h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 8, false), &r, T_RESP);
    cr_assert_eq(rc, H_OK, "POST chat: no complete response (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 200, "POST chat: status %d, body %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"usage\""), "POST chat: no usage in %s", r.body);
    cr_assert_eq(h_json_int(r.body, "completion_tokens"), 8, "POST chat: completion_tokens != 8 in %s",
                 r.body);
    const char *rid = h_header(&r, "x-request-id");
    cr_assert(rid && *rid, "POST: no x-request-id in the response head:\n%s", r.head);
    char first_id[256];
    snprintf(first_id, sizeof first_id, "%s", rid);
    h_resp_free(&r);

    /* Generated ids differ between requests. */
    rc = h_post(g.port, "/v1/chat/completions", body, &r, T_RESP);
    cr_assert_eq(rc, H_OK);
    cr_assert(h_header(&r, "x-request-id") && strcmp(h_header(&r, "x-request-id"), first_id) != 0,
              "two requests got the same generated x-request-id %s", first_id);
    h_resp_free(&r);

    /* A client's own id comes back unchanged. */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    rc = h_request(&c, "POST", "/v1/chat/completions", "X-Request-Id: itest-rid-4711\r\n", body, &r,
                   T_RESP);
    cr_assert_eq(rc, H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(h_header(&r, "x-request-id") && !strcmp(h_header(&r, "x-request-id"), "itest-rid-4711"),
              "client's X-Request-Id not echoed; head:\n%s", r.head);
    h_resp_free(&r);
    h_close(&c);

    double n = h_metric(g.admin_port, "aigw_requests_total{route=\"chat\",status=\"200\"}");
    cr_assert(n >= 3, "aigw_requests_total{route=\"chat\",status=\"200\"} = %g, expected >= 3", n);
    double hist = h_metric(g.admin_port, "aigw_request_duration_seconds_count");
    cr_assert(hist >= 4, "aigw_request_duration_seconds_count = %g, expected >= 4", hist);
    double inf = h_metric(g.admin_port, "aigw_request_duration_seconds_bucket{le=\"+Inf\"}");
    cr_assert_eq(inf, hist, "histogram: +Inf bucket %g != count %g", inf, hist);
    double sum = h_metric(g.admin_port, "aigw_request_duration_seconds_sum");
    cr_assert(sum > 0 && sum < hist * 5, "aigw_request_duration_seconds_sum = %g for %g requests", sum, hist);
    h_finish();
}

Test(proxy, no_route_is_404_json)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    struct h_resp r;
    cr_assert_eq(h_get(g.port, "/not/a/route", &r, T_RESP), H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 404, "status %d for a path no route takes; body %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"),
              "404 body is not an OpenAI error: %s", r.body);
    h_resp_free(&r);
    h_finish();
}

Test(proxy, keepalive_reused_on_both_sides)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    const char *reused_q = "aigw_upstream_connections_total{pool=\"local\",kind=\"reused\"}";
    const char *new_q = "aigw_upstream_connections_total{pool=\"local\",kind=\"new\"}";
    double reused0 = h_metric0(g.admin_port, reused_q), new0 = h_metric0(g.admin_port, new_q);
    /* The backend's own count of accepted connections, if it exports one. */
    double backend_conns0 = h_metric(m.port, "mockllm_connections_total");

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    char body[512];
    h_chat_body(body, sizeof body, 4, false);
    for (int i = 0; i < 20; i++) {
        struct h_resp r;
        const char *path = i % 2 ? "/v1/models" : "/v1/chat/completions";
        int rc = h_request(&c, i % 2 ? "GET" : "POST", path, NULL, i % 2 ? NULL : body, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "request %d on the kept-alive connection failed (%d); aigw stderr:\n%s",
                     i, rc, h_tail(g.tag));
        cr_assert_eq(r.status, 200, "request %d: status %d", i, r.status);
        cr_assert(r.keep_alive, "request %d: aigw ended keep-alive:\n%s", i, r.head);
        h_resp_free(&r);
    }
    cr_assert_not(c.eof, "aigw closed the client connection");
    double client_conns = h_metric(g.admin_port, "aigw_connections{side=\"client\"}");
    double upstream_conns = h_metric(g.admin_port, "aigw_connections{side=\"upstream\"}");
    cr_assert(client_conns >= 1, "aigw_connections{side=\"client\"} = %g with a client connected",
              client_conns);
    cr_assert(upstream_conns >= 1, "aigw_connections{side=\"upstream\"} = %g with a pooled connection",
              upstream_conns);
    h_close(&c);

    double reused = h_metric0(g.admin_port, reused_q) - reused0;
    double fresh = h_metric0(g.admin_port, new_q) - new0;
    cr_assert(reused >= 15, "upstream connections reused %g times for 20 requests (new: %g)", reused,
              fresh);
    cr_assert(fresh >= 1 && fresh <= 5, "upstream connections opened: %g for 20 sequential requests",
              fresh);
    char q[128];
    snprintf(q, sizeof q,
             "aigw_upstream_connections_total{pool=\"local\",backend=\"127.0.0.1:%d\",kind=\"reused\"}",
             m.port);
    cr_assert(h_metric0(g.admin_port, q) >= 15, "per-backend series %s missing or low", q);
    double backend_conns = h_metric(m.port, "mockllm_connections_total") - backend_conns0;
    if (backend_conns == backend_conns)   /* not NaN: the backend counts connections */
        cr_assert(backend_conns <= 3, "the backend saw %g new connections for 20 requests "
                  "(one of them is this scrape)", backend_conns);
    h_finish();
}

Test(proxy, pipelined_requests_answered_in_order)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    char body[512];
    h_chat_body(body, sizeof body, 3, false);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    /* Three requests in one write: a POST with a body, a GET, a POST. */
    char *all = NULL;
    int n = asprintf(&all,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-1\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s"
                     "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-2\r\n\r\n"
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: pipe-3\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body, strlen(body), body);
    cr_assert(n > 0);
    cr_assert_eq(h_send(&c, all, (size_t)n), 0);
    free(all);

    const char *want[3] = {"pipe-1", "pipe-2", "pipe-3"};
    for (int i = 0; i < 3; i++) {
        struct h_resp r;
        int rc = h_recv(&c, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "pipelined response %d missing (%d); aigw stderr:\n%s", i + 1, rc,
                     h_tail(g.tag));
        cr_assert_eq(r.status, 200, "pipelined response %d: status %d", i + 1, r.status);
        const char *rid = h_header(&r, "x-request-id");
        cr_assert(rid && !strcmp(rid, want[i]), "response %d carries x-request-id %s, expected %s", i + 1,
                  rid ? rid : "(none)", want[i]);
        if (i == 1)
            cr_assert(strstr(r.body, "mock-llama-3.1-8b"), "2nd answer is not the model list: %s", r.body);
        else
            cr_assert(strstr(r.body, "\"usage\""), "answer %d is not a completion: %s", i + 1, r.body);
        h_resp_free(&r);
    }
    h_close(&c);
    h_finish();
}

Test(proxy, round_robin_follows_weights)
{
    struct h_mock a, b;
    struct h_gw g = {0};
    H_MOCK(&a, "mock-a", "--tps 0 --ttft-ms 0");
    H_MOCK(&b, "mock-b", "--tps 0 --ttft-ms 0");
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d weight=2\n"
                "balance = round_robin\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = raw\n",
                a.port, b.port);
    H_GW(&g);

    const char *q = "mockllm_requests_total";
    double a0 = h_metric0(a.port, q), b0 = h_metric0(b.port, q);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    char body[512];
    h_chat_body(body, sizeof body, 2, false);
    for (int i = 0; i < 30; i++) {
        struct h_resp r;
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    h_close(&c);
    /* 30 = 10 whole rounds of weights 1 + 2; a slack of 1 for where a round starts. */
    double da = h_metric0(a.port, q) - a0, db = h_metric0(b.port, q) - b0;
    cr_assert(da >= 9 && da <= 11, "weight 1 backend got %g of 30 requests (weight 2: %g)", da, db);
    cr_assert(db >= 19 && db <= 21, "weight 2 backend got %g of 30 requests (weight 1: %g)", db, da);
    h_finish();
}

Test(proxy, backend_down_is_502)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    int dead = h_free_port();   /* nothing listens there */
    h_gw_config(&g, NULL,
                "[pool dead]\nbackend = 127.0.0.1:%d\n\n"
                "[pool local]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = dead\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                dead, m.port);
    H_GW(&g);

    char body[512];
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    int64_t t0 = h_now_ms();
    struct h_resp r;
    int rc = h_request(&c, "POST", "/v1/chat/completions", "X-Request-Id: itest-down\r\n",
                       h_chat_body(body, sizeof body, 4, false), &r, T_RESP);
    int64_t took = h_now_ms() - t0;
    cr_assert_eq(rc, H_OK, "no response for a dead backend (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 502, "dead backend: status %d, body %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "code", "upstream_error"), "502 body lacks code upstream_error: %s",
              r.body);
    cr_assert(h_header(&r, "x-request-id") && !strcmp(h_header(&r, "x-request-id"), "itest-down"),
              "502 without the client's x-request-id:\n%s", r.head);
    cr_assert(took < 3000, "a refused connect took %lld ms to become a 502", (long long)took);
    h_resp_free(&r);
    /* The gateway still serves the other route on the same connection or a new one. */
    if (c.eof) {
        h_close(&c);
        H_CONNECT_GW(&c, &g);
    }
    rc = h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_RESP);
    cr_assert_eq(rc, H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    h_close(&c);
    cr_assert(h_metric0(g.admin_port, "aigw_requests_total{route=\"chat\",status=\"502\"}") >= 1,
              "502 not counted in aigw_requests_total");
    h_finish();
}

/* A backend that accepts, reads the request and resets the connection. */
struct resetter {
    int fd;
    int accepted;
    volatile int stop;
};

static void *reset_loop(void *arg)
{
    struct resetter *rs = arg;
    int64_t deadline = h_now_ms() + 30000;
    while (!rs->stop && h_now_ms() < deadline) {
        struct pollfd p = {.fd = rs->fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        int c = accept(rs->fd, NULL, NULL);
        if (c < 0) continue;
        rs->accepted++;
        char buf[4096];
        struct pollfd pc = {.fd = c, .events = POLLIN};
        if (poll(&pc, 1, 2000) > 0 && recv(c, buf, sizeof buf, MSG_DONTWAIT) < 0) {
        }
        struct linger lg = {1, 0};
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c);
    }
    return NULL;
}

Test(proxy, backend_reset_before_answer_is_502)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    struct resetter rs = {0};
    int port = h_free_port();
    rs.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(rs.fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(rs.fd, 16), 0);
    pthread_t th;
    pthread_create(&th, NULL, reset_loop, &rs);

    h_gw_config(&g, NULL,
                "[pool rst]\nbackend = 127.0.0.1:%d\n\n"
                "[pool local]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = rst\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                port, m.port);
    H_GW(&g);

    char body[512];
    struct h_resp r;
    int rc = h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 4, false), &r, T_RESP);
    rs.stop = 1;
    pthread_join(th, NULL);
    close(rs.fd);
    cr_assert_eq(rc, H_OK, "no response when the backend resets (%d); aigw stderr:\n%s", rc,
                 h_tail(g.tag));
    cr_assert(rs.accepted >= 1, "aigw never connected to the resetting backend");
    cr_assert_eq(r.status, 502, "backend reset: status %d, body %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "code", "upstream_error"), "502 body lacks upstream_error: %s",
              r.body);
    h_resp_free(&r);
    h_finish();
}

Test(proxy, slow_backend_is_504)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 5000");
    h_gw_config(&g,
                "connect = 1s\nfirst_byte = 500ms\nidle = 2s\nclient_header = 1s\nkeepalive = 2s\n",
                H_STD_ROUTES, m.port);
    H_GW(&g);

    char body[512];
    int64_t t0 = h_now_ms();
    struct h_resp r;
    int rc = h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 4, false), &r, T_RESP);
    int64_t took = h_now_ms() - t0;
    cr_assert_eq(rc, H_OK, "no response from a slow backend (%d) after %lld ms; aigw stderr:\n%s", rc,
                 (long long)took, h_tail(g.tag));
    cr_assert_eq(r.status, 504, "slow backend: status %d after %lld ms, body %s", r.status,
                 (long long)took, r.body);
    cr_assert(h_json_str_is(r.body, "code", "upstream_timeout"), "504 body lacks upstream_timeout: %s",
              r.body);
    cr_assert(took >= 400 && took <= 1500, "504 after %lld ms with first_byte = 500ms", (long long)took);
    h_resp_free(&r);
    h_finish();
}

Test(proxy, large_response_spliced_intact)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0 --max-tokens 20000", NULL);

    const char *q = "aigw_relay_bytes_total{mode=\"splice\"}";
    double before = h_metric0(g.admin_port, q);
    char body[512];
    struct h_resp r;
    int rc = h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 20000, false), &r,
                    3 * T_RESP);
    cr_assert_eq(rc, H_OK, "large response incomplete (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 200, "status %d", r.status);
    const char *cl = h_header(&r, "content-length");
    if (cl) cr_assert_eq(strtoull(cl, NULL, 10), r.body_len, "content-length %s, body %zu bytes", cl,
                         r.body_len);
    cr_assert(r.body_len > 20000, "body of a 20000-token answer is only %zu bytes", r.body_len);
    cr_assert_eq(h_json_int(r.body, "completion_tokens"), 20000, "usage damaged or missing; tail: %s",
                 r.body + (r.body_len > 300 ? r.body_len - 300 : 0));
    size_t e = r.body_len;
    while (e > 0 && (r.body[e - 1] == '\n' || r.body[e - 1] == '\r' || r.body[e - 1] == ' ')) e--;
    cr_assert(e > 0 && r.body[e - 1] == '}', "body does not end as JSON: ...%s",
              r.body + (r.body_len > 100 ? r.body_len - 100 : 0));
    h_resp_free(&r);

    double spliced = h_metric0(g.admin_port, q) - before;
    cr_assert(spliced >= 10000, "aigw_relay_bytes_total{mode=\"splice\"} rose by %g only", spliced);
    h_finish();
}
