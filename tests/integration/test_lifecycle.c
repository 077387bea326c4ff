/* A request's state is born with it: what an earlier request on the same
 * keep-alive connection did (its response already sent, its caller, its
 * backend) never decides how the next one is answered. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(lifecycle, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

/* Serves one request on c, then sends `next` raw on the same connection and
 * expects the error `status` as an OpenAI JSON body, then the close. */
static void served_then_bad(struct h_gw *g, const char *what, const char *next, int status)
{
    struct h_conn c;
    H_CONNECT_GW(&c, g);
    struct h_resp r;
    cr_assert_eq(h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_RESP), H_OK,
                 "%s: first request failed; aigw stderr:\n%s", what, h_tail(g->tag));
    cr_assert_eq(r.status, 200, "%s: first request status %d", what, r.status);
    cr_assert(r.keep_alive, "%s: the first response must keep the connection", what);
    h_resp_free(&r);

    h_send(&c, next, strlen(next));
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "%s: the second request got no answer (%d): closed silently; aigw stderr:\n%s",
                 what, rc, h_tail(g->tag));
    cr_assert_eq(r.status, status, "%s: status %d, body %s", what, r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "invalid_request_error"), "%s: not an OpenAI error: %s", what,
              r.body);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, T_RESP, NULL), "%s: connection left open after the error", what);
    h_close(&c);

    char needle[64];
    snprintf(needle, sizeof needle, "\"status\":%d", status);
    char *log = h_wait_for_text(h_access_log_path(), needle, T_RESP);
    cr_assert(log, "%s: no access log line with %s", what, needle);
    free(log);
}

Test(lifecycle, malformed_request_after_a_served_one_is_answered)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0 --model m", NULL);

    served_then_bad(&g, "header line without a colon",
                    "GET /v1/models HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400);
    h_finish();
}

Test(lifecycle, head_too_large_after_a_served_one_is_431)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0 --model m", NULL);

    /* 20 KiB of headers: over max_header = 16k */
    size_t n = 20 * 1024;
    char *big = malloc(n + 256);
    cr_assert(big);
    int k = snprintf(big, 256, "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Fill: ");
    memset(big + k, 'a', n);
    strcpy(big + k + n, "\r\n\r\n");
    served_then_bad(&g, "20 KiB head", big, 431);
    free(big);
    h_finish();
}

Test(lifecycle, slow_head_after_a_served_one_is_408)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0 --model m", NULL);

    /* half a head, then nothing: client_header (1 s) runs out */
    served_then_bad(&g, "half a head", "GET /v1/models HTTP/1.1\r\nHo", 408);
    h_finish();
}
