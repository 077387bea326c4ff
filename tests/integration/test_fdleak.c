/* No descriptor leaks: 10,000 requests from 4 clients, with malformed
 * requests, client aborts and 502s mixed in, leave aigw's open descriptors
 * where they were. */
#include "harness.h"

#include <stdio.h>
#include <string.h>

TestSuite(fdleak, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_RESP (5000 * h_slow())

/* One request of kind i % 10 on the client's kept-alive connection or a new one. */
static void one(struct h_load_client *cl, int i)
{
    struct h_resp r = {0};
    struct h_conn c, *ka = &cl->ka;
    int rc;
    switch ((i + cl->seed) % 10) {
    case 0: case 1: case 2: case 3: case 4:     /* good, kept alive */
    case 9:                                     /* 502 from the dead pool, kept alive; 503 once
                                                 * its circuit is open */
        if (ka->fd < 0 || ka->eof) {
            cl->ka_history[0] = cl->ka_history[1] = "(new connection)";
            h_close(ka);
            if (h_connect(ka, cl->port) < 0) {
                h_load_unexpected(cl, i, "connect", -1, NULL, NULL);
                return;
            }
        }
        if ((i + cl->seed) % 10 == 9) {
            rc = h_request(ka, "POST", "/dead/v1/chat/completions", NULL, cl->chat, &r, T_RESP);
            if (rc != H_OK || (r.status != 502 && r.status != 503)) h_load_unexpected(cl, i, "dead pool", rc, &r, NULL);
        } else {
            rc = h_request(ka, "POST", "/v1/chat/completions", NULL, cl->chat, &r, T_RESP);
            if (rc != H_OK || r.status != 200) h_load_unexpected(cl, i, "chat", rc, &r, NULL);
        }
        cl->ka_history[0] = cl->ka_history[1];
        cl->ka_history[1] = (i + cl->seed) % 10 == 9 ? "502/503 from the dead pool" : "chat";
        if (rc != H_OK || !r.keep_alive) h_close(ka);
        h_resp_free(&r);
        return;
    case 5:                                     /* good, new connection each */
        rc = h_get(cl->port, "/v1/models", &r, T_RESP);
        if (rc != H_OK || r.status != 200) h_load_unexpected(cl, i, "models", rc, &r, NULL);
        h_resp_free(&r);
        return;
    case 6:                                     /* malformed: 400 and close */
        if (h_connect(&c, cl->port) < 0) {
            h_load_unexpected(cl, i, "connect", -1, NULL, NULL);
            return;
        }
        h_sendf(&c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n");
        rc = h_recv(&c, &r, T_RESP);
        if (rc != H_OK || r.status != 400) h_load_unexpected(cl, i, "malformed", rc, &r, NULL);
        h_resp_free(&r);
        h_close(&c);
        return;
    case 7:                                     /* client leaves mid-head */
        if (h_connect(&c, cl->port) == 0) {
            h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le");
            h_close(&c);
        }
        return;
    default:                                    /* client leaves right after a stream request */
        if (h_connect(&c, cl->port) == 0) {
            h_send(&c, cl->stream_req, strlen(cl->stream_req));
            h_close(&c);
        }
        return;
    }
}

Test(fdleak, ten_thousand_requests_with_errors_leak_no_descriptor)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    int dead = h_free_port();
    h_gw_config(&g, NULL, H_ROUTES_WITH_DEAD_POOL, m.port, dead);
    H_GW(&g);

    /* Warm up with the same mix and concurrency, so pools that keep idle
     * resources (upstream keep-alive connections, relay pipes) reach the size
     * this load needs before the baseline is taken. */
    char first[400] = "";
    int unexpected = h_load_run(g.port, 100, one, first, sizeof first);
    cr_assert_eq(unexpected, 0, "warm-up: %d unexpected answers; first: %s\naigw stderr:\n%s", unexpected, first,
                 h_tail(g.tag));
    /* the baseline once aigw has closed every warm-up client */
    double clients = h_wait_metric(g.admin_port, "aigw_connections{side=\"client\"}", H_EQ, 0, 5000 * h_slow());
    cr_assert_eq(clients, 0, "aigw still holds %.0f client connections after the warm-up", clients);
    int baseline = h_count_fds(g.pid);
    cr_assert(baseline > 0, "cannot read /proc/%d/fd (aigw gone?); stderr:\n%s", (int)g.pid, h_tail(g.tag));

    int64_t t0 = h_now_ms();
    unexpected = h_load_run(g.port, 2500, one, first, sizeof first);
    int sent = H_LOAD_CLIENTS * 2500;
    int64_t took = h_now_ms() - t0;
    cr_assert(h_alive(g.pid), "aigw died under the mixed load; stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(unexpected, 0, "%d unexpected answers; first: %s\naigw stderr:\n%s", unexpected, first,
                 h_tail(g.tag));

    /* Slack of 2: idle upstream keep-alive connections and pooled pipes depend on
     * the peak concurrency each phase happened to reach; a real leak over 10,000
     * requests (a third of them errors or aborts) is far larger. */
    int after = h_settle_fds(g.pid, baseline + 2, 5000 * h_slow());
    cr_assert(after <= baseline + 2, "aigw holds %d descriptors after %d requests in %lld ms, %d before",
              after, sent, (long long)took, baseline);
    h_finish();
}
