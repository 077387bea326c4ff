/* The client_header, keepalive and connect timeouts. (first_byte is in
 * test_proxy.c, idle in test_stream.c.) */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

TestSuite(timeouts, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define SHORT_TIMEOUTS "connect = 1s\nfirst_byte = 10s\nidle = 2s\nclient_header = 1s\nkeepalive = 1s\n"

/* After a timeout the connection must close; a 408 before that is fine. */
static void expect_closed_by_timeout(struct h_conn *c, int64_t since, int min_ms, int max_ms,
                                     const char *what, const char *tag)
{
    struct h_resp r;
    int rc = h_recv(c, &r, max_ms + 3000);
    int64_t took = h_now_ms() - since;
    if (rc == H_OK) {
        cr_assert_eq(r.status, 408, "%s: got status %d instead of a close (or 408)", what, r.status);
        h_resp_free(&r);
        cr_assert(h_wait_closed(c, 1000, NULL), "%s: connection left open after the 408", what);
    } else {
        cr_assert_neq(rc, H_ETIMEOUT, "%s: connection still open after %lld ms; aigw stderr:\n%s", what,
                      (long long)took, h_tail(tag));
        cr_assert_eq(rc, H_ECLOSED, "%s: garbage instead of a close (%d)", what, rc);
        cr_assert_eq(c->len, 0, "%s: partial response before the close", what);
    }
    cr_assert(took >= min_ms && took <= max_ms, "%s: closed after %lld ms, expected %d..%d", what,
              (long long)took, min_ms, max_ms);
}

Test(timeouts, client_header_cuts_an_incomplete_head)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", SHORT_TIMEOUTS);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_sendf(&c, "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept:"), 0);
    expect_closed_by_timeout(&c, t0, 800, 2500, "half a head", g.tag);
    h_close(&c);
    h_finish();
}

Test(timeouts, client_header_is_for_the_whole_head_not_per_read)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", SHORT_TIMEOUTS);

    /* A slowloris client: one header byte every 150 ms, never finishing. */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    int64_t t0 = h_now_ms();
    cr_assert_eq(h_sendf(&c, "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"), 0);
    const char *drip = "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    bool closed = false;
    for (size_t i = 0; i < strlen(drip) && h_now_ms() - t0 < 4000; i++) {
        if (h_send(&c, drip + i, 1) < 0) {
            closed = true;
            break;
        }
        struct pollfd p = {.fd = c.fd, .events = POLLIN};
        if (poll(&p, 1, 150) > 0) {
            closed = true;
            break;
        }
    }
    int64_t took = h_now_ms() - t0;
    cr_assert(closed, "a head dripping for %lld ms was not cut (client_header = 1s)", (long long)took);
    cr_assert(took <= 2500, "a dripping head was cut only after %lld ms (client_header = 1s)",
              (long long)took);
    h_close(&c);
    h_finish();
}

Test(timeouts, keepalive_closes_an_idle_connection)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", SHORT_TIMEOUTS);

    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_request(&c, "GET", "/v1/models", NULL, NULL, &r, 5000 * h_slow()), H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert(r.keep_alive, "response ended keep-alive:\n%s", r.head);
    h_resp_free(&r);
    int64_t t0 = h_now_ms();
    size_t got = 0;
    bool closed = h_wait_closed(&c, 4000, &got);
    int64_t took = h_now_ms() - t0;
    cr_assert(closed, "idle keep-alive connection still open after %lld ms (keepalive = 1s)",
              (long long)took);
    cr_assert_eq(got, 0, "%zu unexpected bytes on an idle keep-alive connection", got);
    cr_assert(took >= 700 && took <= 2500, "idle keep-alive connection closed after %lld ms, keepalive = 1s",
              (long long)took);
    h_close(&c);
    h_finish();
}

/* A backend whose SYNs go unanswered: a listening socket with backlog 0 whose
 * accept queue is already full (one connection queued, never accepted). Linux
 * then drops further SYNs, so aigw's connect hangs until its own timeout, the
 * way it would for a host that vanished from the network. */
Test(timeouts, connect_timeout_to_an_unresponsive_backend)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");

    int port = h_free_port();
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(lfd, 0), 0);
    int fillers[3];
    for (int i = 0; i < 3; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (connect(fillers[i], (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        }
    }
    /* the first one's handshake completes and fills the accept queue */
    struct pollfd first = {.fd = fillers[0], .events = POLLOUT};
    cr_assert_eq(poll(&first, 1, 2000 * h_slow()), 1, "the first filler never connected");
    /* Sanity: this machine really drops SYNs to a full accept queue. */
    {
        int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = connect(probe, (struct sockaddr *)&a, sizeof a);
        struct pollfd p = {.fd = probe, .events = POLLOUT};
        bool connected = r == 0 || (errno == EINPROGRESS && poll(&p, 1, 300) > 0);
        close(probe);
        if (connected) {
            for (int i = 0; i < 3; i++) close(fillers[i]);
            close(lfd);
            cr_skip_test("the kernel accepts connections past a full backlog here");
        }
    }

    h_gw_config(&g, SHORT_TIMEOUTS,
                "[pool blackhole]\nbackend = 127.0.0.1:%d\n\n"
                "[pool local]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = blackhole\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                port, m.port);
    H_GW(&g);

    char body[512];
    int64_t t0 = h_now_ms();
    struct h_resp r;
    int rc = h_post(g.port, "/v1/chat/completions", h_chat_body(body, sizeof body, 4, false), &r, 8000);
    int64_t took = h_now_ms() - t0;
    for (int i = 0; i < 3; i++) close(fillers[i]);
    close(lfd);
    cr_assert_eq(rc, H_OK, "no answer %lld ms after connecting to an unresponsive backend (%d); "
                 "aigw stderr:\n%s", (long long)took, rc, h_tail(g.tag));
    cr_assert(r.status == 502 || r.status == 504, "connect timeout: status %d, body %s", r.status, r.body);
    cr_assert(h_json_str_is(r.body, "type", "server_error") || strstr(r.body, "\"error\""),
              "connect timeout answer is not an OpenAI error: %s", r.body);
    /* connect = 1s; one retry (SPEC: retries = 1 by default) may double it. */
    cr_assert(took >= 800 && took <= 3500, "connect timeout answered after %lld ms, connect = 1s",
              (long long)took);
    h_resp_free(&r);
    h_finish();
}

Test(timeouts, stalled_request_body_is_408_not_blamed_on_the_backend)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", SHORT_TIMEOUTS);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    int64_t t0 = h_now_ms();
    /* promises 100 bytes, sends 10, then nothing */
    cr_assert_eq(h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":"), 0);
    struct h_resp r;
    cr_assert_eq(h_recv(&c, &r, 5000 * h_slow()), H_OK, "aigw stderr:\n%s", h_tail(g.tag));
    int64_t took = h_now_ms() - t0;
    cr_assert_eq(r.status, 408, "a client that stops sending its body: status %d %s", r.status, r.body);
    cr_assert(took >= 1800, "408 after only %lld ms (idle = 2s)", (long long)took);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

/* first_byte is met by the response's first byte: a head trickling in after it
 * is held to the idle timeout, not to first_byte. */
static void *trickling_head_backend(void *arg)
{
    int lfd = *(int *)arg;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    static const char *const pieces[] = { "HTTP/1.1 200 OK\r\n", "Content-Type: text/plain\r\n",
                                          "Content-Length: 2\r\n", "X-Trickle: yes\r\n", "\r\nok" };
    if (h_read_request(fd))
        for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
            if (i)
                usleep(500 * 1000);     /* the backend's pace: 2 s for the whole head */
            if (!h_write_all(fd, pieces[i], strlen(pieces[i])))
                break;
        }
    /* until aigw lets go of the connection (bounded) */
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char sink[256];
    while (read(fd, sink, sizeof sink) > 0)
        ;
    close(fd);
    return NULL;
}

Test(timeouts, first_byte_ends_with_the_first_byte_not_the_whole_head)
{
    int port;
    int lfd = h_listen_loopback(&port);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, trickling_head_backend, &lfd), 0);
    struct h_gw g = {0};
    h_gw_config(&g, "connect = 1s\nfirst_byte = 1s\nidle = 3s\nclient_header = 1s\nkeepalive = 1s\n",
                H_STD_ROUTES, port);
    H_GW(&g);

    struct h_resp r;
    int rc = h_get(g.port, "/v1/slow-head", &r, 10000 * h_slow());
    cr_assert_eq(rc, H_OK, "no response (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 200, "a head that began at once but took 2 s got %d: %s", r.status, r.body);
    cr_assert_str_eq(r.body, "ok");
    cr_assert_str_eq(h_header(&r, "x-trickle"), "yes");
    h_resp_free(&r);
    pthread_join(t, NULL);
    close(lfd);
    h_finish();
}
