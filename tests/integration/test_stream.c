/* Streams (SSE) through aigw: unbuffered delivery, the client going away, the
 * backend stalling. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

TestSuite(stream, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_EVENT (5000 * h_slow())

Test(stream, events_arrive_one_by_one)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);

    struct h_conn c;
    struct h_resp head;
    int64_t t0 = h_now_ms();
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 20, &head, g.tag);
    h_expect_stream_event_by_event(&c, &head, t0, 20, 20, g.tag);
    h_close(&c);
    h_finish();
}

Test(stream, client_disconnect_aborts_generation)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);

    struct h_conn c;
    struct h_resp head;
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 200, &head, g.tag);   /* 10 s of tokens */
    h_leave_stream_expect_abort(&c, &head, 3, m.port);
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
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 200, &head, g.tag);
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
