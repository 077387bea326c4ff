/* Streams (SSE) through aigw: unbuffered delivery, the client going away, the
 * backend stalling. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

TestSuite(stream, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_EVENT (5000 * h_slow())

/* Sends a streamed chat completion on c and reads the response head. */
static void start_stream(struct h_conn *c, struct h_gw *g, int max_tokens, struct h_resp *head)
{
    char body[512];
    H_CONNECT_GW(c, g);
    h_chat_body(body, sizeof body, max_tokens, true);
    cr_assert_eq(h_sendf(c,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                         strlen(body), body),
                 0);
    int rc = h_recv_head(c, head, T_EVENT);
    cr_assert_eq(rc, H_OK, "no response head for a stream (%d); aigw stderr:\n%s", rc, h_tail(g->tag));
    cr_assert_eq(head->status, 200, "stream: status %d\n%s", head->status, head->head);
    const char *ct = h_header(head, "content-type");
    cr_assert(ct && strstr(ct, "text/event-stream"), "stream content-type: %s", ct ? ct : "(none)");
}

Test(stream, events_arrive_one_by_one)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);

    struct h_conn c;
    struct h_resp head;
    int64_t t0 = h_now_ms();
    start_stream(&c, &g, 20, &head);
    struct h_sse s;
    h_sse_init(&s, &c, &head);

    int64_t times[64];
    int n = 0, rc;
    bool done = false;
    while ((rc = h_sse_next(&s, T_EVENT)) == 1) {
        if (strncmp(s.event, "data:", 5) != 0) continue;   /* comments, other fields */
        if (n < 64) times[n++] = s.event_ms - t0;
        if (strstr(s.event, "[DONE]")) {
            done = true;
            break;
        }
    }
    cr_assert(done, "stream ended without data: [DONE] (rc %d after %d events); aigw stderr:\n%s", rc, n,
              h_tail(g.tag));
    cr_assert(n >= 21, "only %d data events for 20 tokens", n);
    int64_t total = times[n - 1];
    cr_assert(total >= 700, "a 20-token stream at 20 tokens/s took only %lld ms", (long long)total);
    cr_assert(times[0] < total / 2, "first event after %lld ms of %lld: the stream was buffered",
              (long long)times[0], (long long)total);
    int distinct = 1;
    for (int i = 1; i < n; i++)
        if (times[i] != times[i - 1]) distinct++;
    cr_assert(distinct >= 10, "%d events arrived in only %d bursts: not event by event", n, distinct);

    /* The response ends properly after [DONE] and the connection stays usable. */
    rc = h_sse_next(&s, T_EVENT);
    cr_assert_eq(rc, 0, "stream body did not end properly after [DONE] (%d)", rc);
    h_sse_free(&s);
    h_resp_free(&head);
    struct h_resp r;
    cr_assert_eq(h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_EVENT), H_OK,
                 "connection not reusable after a stream");
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

Test(stream, client_disconnect_aborts_generation)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);

    double aborted0 = h_metric0(m.port, "mockllm_aborted_total");
    cr_assert(aborted0 == aborted0, "mockllm /metrics unreadable");

    struct h_conn c;
    struct h_resp head;
    start_stream(&c, &g, 200, &head);   /* 10 s of tokens */
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(h_sse_next(&s, T_EVENT), 1, "event %d of the stream missing", i + 1);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);

    double aborted = h_wait_metric(m.port, "mockllm_aborted_total", H_GE, aborted0 + 1, 2000 * h_slow());
    cr_assert(aborted >= aborted0 + 1,
              "mockllm_aborted_total still %g (was %g) 2 s after the client left: upstream not closed",
              aborted, aborted0);
    h_finish();
}

Test(stream, stalled_backend_ends_stream_after_idle)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 20 --ttft-ms 0");
    h_gw_config(&g,
                "connect = 1s\nfirst_byte = 2s\nidle = 1s\nclient_header = 1s\nkeepalive = 2s\n",
                H_STD_ROUTES, m.port);
    H_GW(&g);

    struct h_conn c;
    struct h_resp head;
    start_stream(&c, &g, 200, &head);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(h_sse_next(&s, T_EVENT), 1, "event %d of the stream missing", i + 1);

    /* The backend freezes mid-stream (teardown sends SIGCONT before stopping it). */
    cr_assert_eq(kill(m.pid, SIGSTOP), 0);
    int64_t t_stop = h_now_ms();
    int rc;
    bool done = false;
    while ((rc = h_sse_next(&s, 6000)) == 1)
        if (strstr(s.event, "[DONE]")) done = true;
    int64_t took = h_now_ms() - t_stop;
    kill(m.pid, SIGCONT);
    cr_assert_not(done, "a stalled stream cannot have finished");
    cr_assert_neq(rc, H_ETIMEOUT, "client stream still open %lld ms after the backend stalled (idle = 1s)",
                  (long long)took);
    cr_assert_eq(rc, H_ECLOSED,
                 "a stream cut by the idle timeout must end visibly (no terminating chunk); rc %d", rc);
    cr_assert(took >= 800 && took <= 3000, "stream ended %lld ms after the stall, idle = 1s",
              (long long)took);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);
    h_finish();
}
