/* Per-pool tuning (issue 13 item 6): a pool's own connect, first_byte and
 * idle override [timeouts], and its health_fall/health_rise and
 * circuit_failures replace the fixed 2/2/5. Two pools in front of the same
 * kind of backend behave differently, each as its own section says. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

TestSuite(pool_tuning, .init = h_setup, .fini = h_teardown, .timeout = 60);

static const char *chat(char *out, size_t cap, const char *model)
{
    snprintf(out, cap,
             "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],"
             "\"max_tokens\":3,\"stream\":false}",
             model);
    return out;
}

/* One chat request for model on a fresh connection; its status and how long it took. */
static int ask(const struct h_gw *g, const char *model, int timeout_ms, struct h_resp *r, int64_t *took)
{
    char body[256];
    int64_t t0 = h_now_ms();
    int rc = h_post(g->port, "/v1/chat/completions", chat(body, sizeof body, model), r, timeout_ms);
    *took = h_now_ms() - t0;
    return rc;
}

static double backend_metric(const struct h_gw *g, const char *name, const char *pool, int port)
{
    char q[256];
    snprintf(q, sizeof q, "%s{pool=\"%s\",backend=\"127.0.0.1:%d\"}", name, pool, port);
    return h_metric0(g->admin_port, q);
}

/* A slow engine (first token after 1.5 s) behind two pools: the one whose
 * first_byte is 400ms answers 504 at its own deadline; the other inherits
 * [timeouts] first_byte = 10s and waits for the answer. */
Test(pool_tuning, first_byte_is_the_pools_own)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 1500 --model fast-8b --model slow-70b");
    struct h_gw g = {0};
    h_gw_config(&g, "connect = 1s\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 2s\n",
                "[pool small]\nbackend = 127.0.0.1:%d\nfirst_byte = 400ms\nretries = 0\n\n"
                "[pool big]\nbackend = 127.0.0.1:%d\n\n"
                "[route fast]\npath = /v1/chat/completions\npool = small\nmodels = fast-*\n\n"
                "[route slow]\npath = /v1/chat/completions\npool = big\nmodels = slow-*\n",
                m.port, m.port);
    H_GW(&g);

    struct h_resp r;
    int64_t took;
    cr_assert_eq(ask(&g, "fast-8b", 5000 * h_slow(), &r, &took), H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 504, "pool small (first_byte = 400ms), an engine 1.5 s to its first token: %d %s",
                 r.status, r.body);
    /* the engine would have answered 200 at 1.5 s: the 504 itself is the pool's deadline */
    cr_assert(took >= 350, "504 after %lld ms; the pool's first_byte is 400ms", (long long)took);
    h_resp_free(&r);

    cr_assert_eq(ask(&g, "slow-70b", 8000 * h_slow(), &r, &took), H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 200, "pool big (inherits first_byte = 10s): %d %s", r.status, r.body);
    cr_assert(took >= 1400, "answered after %lld ms from an engine that takes 1.5 s", (long long)took);
    h_resp_free(&r);
    h_finish();
}

/* A backend whose SYNs go unanswered (a full accept queue, as in the timeouts
 * suite) behind two pools: connect = 200ms in one, [timeouts]'s 1500ms in the
 * other. */
Test(pool_tuning, connect_is_the_pools_own)
{
    int port = h_free_port();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 0), 0);
    int filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    cr_assert(connect(filler, (struct sockaddr *)&a, sizeof a) == 0 || errno == EINPROGRESS);
    struct pollfd first = {.fd = filler, .events = POLLOUT};
    cr_assert_eq(poll(&first, 1, 2000 * h_slow()), 1, "the filler never connected");
    {
        int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = connect(probe, (struct sockaddr *)&a, sizeof a);
        struct pollfd p = {.fd = probe, .events = POLLOUT};
        bool connected = r == 0 || (errno == EINPROGRESS && poll(&p, 1, 300) > 0);
        close(probe);
        if (connected) {
            close(filler);
            close(lfd);
            cr_skip_test("the kernel accepts connections past a full backlog here");
        }
    }

    struct h_gw g = {0};
    h_gw_config(&g, "connect = 1500ms\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 2s\n",
                "[pool quick]\nbackend = 127.0.0.1:%d\nconnect = 200ms\nretries = 0\n\n"
                "[pool patient]\nbackend = 127.0.0.1:%d\nretries = 0\n\n"
                "[route fast]\npath = /v1/chat/completions\npool = quick\nmodels = fast-*\n\n"
                "[route slow]\npath = /v1/chat/completions\npool = patient\nmodels = slow-*\n",
                port, port);
    H_GW(&g);

    struct h_resp r;
    int64_t quick_ms, patient_ms;
    int rc = ask(&g, "fast-8b", 5000 * h_slow(), &r, &quick_ms);
    cr_assert_eq(rc, H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert(r.status == 502 || r.status == 504, "connect timeout: %d %s", r.status, r.body);
    h_resp_free(&r);
    rc = ask(&g, "slow-70b", 6000 * h_slow(), &r, &patient_ms);
    close(filler);
    close(lfd);
    cr_assert_eq(rc, H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    cr_assert(r.status == 502 || r.status == 504, "connect timeout: %d %s", r.status, r.body);
    h_resp_free(&r);
    cr_log_info("connect: pool quick gave up after %lld ms, pool patient after %lld ms", (long long)quick_ms,
                (long long)patient_ms);
    /* compared with each other rather than the clock: a loaded machine slows both */
    cr_assert(quick_ms >= 150 && quick_ms + 700 < patient_ms,
              "pool quick (connect = 200ms) gave up after %lld ms, pool patient (1500ms) after %lld ms",
              (long long)quick_ms, (long long)patient_ms);
    cr_assert(patient_ms >= 1400, "pool patient (inherits connect = 1500ms) gave up after %lld ms",
              (long long)patient_ms);
    h_finish();
}

/* health_fall = 1: one failed check takes the backend down; health_rise = 5
 * at 100ms: it is back no sooner than ~400ms after it answers again. */
Test(pool_tuning, health_fall_and_rise_are_the_pools_own)
{
    struct h_mock m, spare;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    H_MOCK(&spare, "spare", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nhealth = /health\n"
                "health_interval = 100ms\nhealth_fall = 1\nhealth_rise = 5\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                m.port, spare.port);
    H_GW(&g);
    char q[256];
    snprintf(q, sizeof q, "aigw_backend_up{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", m.port);
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 1, 2000 * h_slow()), 1);

    cr_assert_eq(kill(m.pid, SIGSTOP), 0);
    double v = h_wait_metric(g.admin_port, q, H_EQ, 0, 3000 * h_slow());
    if (v != 0)
        kill(m.pid, SIGCONT);
    cr_assert_eq(v, 0, "a stopped backend is still up; aigw stderr:\n%s", h_tail(g.tag));
    char line[128];
    snprintf(line, sizeof line, "backend 127.0.0.1:%d: down: 1 health checks", m.port);
    if (!h_wait_log_line(g.tag, line, NULL, 2000))
        kill(m.pid, SIGCONT);
    cr_assert(h_wait_log_line(g.tag, line, NULL, 10), "no \"%s\" on aigw's stderr:\n%s", line, h_tail(g.tag));

    int64_t resumed = h_now_ms();
    cr_assert_eq(kill(m.pid, SIGCONT), 0);
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 1, 5000 * h_slow()), 1,
                 "the resumed backend never came back; aigw stderr:\n%s", h_tail(g.tag));
    int64_t back_ms = h_now_ms() - resumed;
    cr_log_info("health: up again %lld ms after SIGCONT (health_rise = 5 at 100ms)", (long long)back_ms);
    cr_assert(back_ms >= 350, "up again after %lld ms: 5 passing checks at 100ms take at least 400ms",
              (long long)back_ms);
    snprintf(line, sizeof line, "backend 127.0.0.1:%d: up: 5 health checks", m.port);
    cr_assert(h_wait_log_line(g.tag, line, NULL, 2000), "no \"%s\" on aigw's stderr:\n%s", line, h_tail(g.tag));
    h_finish();
}

/* circuit_failures = 2 on one shard: exactly two 500s reach clients before the
 * failing backend's circuit opens (circuit_open = 30s keeps it open throughout). */
Test(pool_tuning, circuit_failures_is_the_pools_own)
{
    struct h_mock bad, good;
    H_MOCK(&bad, "bad", "--tps 0 --ttft-ms 0 --fail-rate 1");
    H_MOCK(&good, "good", "--tps 0 --ttft-ms 0");
    struct h_gw g = {.shards = 1};
    h_gw_config(&g, NULL,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\n"
                "circuit_failures = 2\ncircuit_open = 30s\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\n",
                bad.port, good.port);
    H_GW(&g);
    int n500 = 0, n200 = 0;
    for (int i = 0; i < 20; i++) {
        struct h_resp r;
        int64_t took;
        cr_assert_eq(ask(&g, "mock-llama-3.1-8b", 5000 * h_slow(), &r, &took), H_OK);
        cr_assert(r.status == 200 || r.status == 500, "request %d: %d %s", i, r.status, r.body);
        n500 += r.status == 500;
        n200 += r.status == 200;
        h_resp_free(&r);
    }
    cr_assert_eq(n500, 2, "%d 500s reached clients with circuit_failures = 2 on one shard", n500);
    cr_assert_eq(n200, 18);
    cr_assert_eq(backend_metric(&g, "aigw_backend_circuit_opens_total", "gpu", bad.port), 1);
    cr_assert_eq(h_metric0(bad.port, "mockllm_failed_total"), 2);
    h_finish();
}
