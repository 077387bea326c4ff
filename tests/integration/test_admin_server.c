/* The admin listener as its clients see it: many at once (browsers holding
 * keep-alive connections, scrapers, load balancers' health checks), none able
 * to delay the others, and [admin] token guarding /metrics. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

TestSuite(admin_server, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define TOKEN_A "tok-A-7f3b9c1e55d24a80"
#define TOKEN_B "tok-B-c2e81d0a94f7b361"

/* Timeouts long enough that the checks below run while the stuck clients are
 * still stuck, short enough that the test sees them end. */
#define STUCK_TIMEOUTS \
    "connect = 1s\nfirst_byte = 2s\nidle = 3s\nclient_header = 3s\nkeepalive = 3s\n"

/* True once the peer has closed or reset c's connection, seen without reading
 * (a client that stopped reading still holds unread bytes). */
static bool peer_gone(int fd, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - h_now_ms();
        if (left <= 0)
            return false;
        struct pollfd p = { fd, POLLRDHUP, 0 };
        int n = poll(&p, 1, (int)left);
        if (n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return true;
    }
}

/* One GET on a fresh connection; fails the test unless it is answered with
 * `status` within 500 ms. */
static void expect_prompt(const struct h_gw *g, const char *path, int status, int round)
{
    struct h_resp r;
    int64_t t0 = h_now_ms();
    int rc = h_get(g->admin_port, path, &r, 5000);
    int64_t took = h_now_ms() - t0;
    cr_assert_eq(rc, H_OK, "round %d: GET %s failed (%d)", round, path, rc);
    cr_assert_eq(r.status, status, "round %d: GET %s: %d", round, path, r.status);
    cr_assert_lt(took, 500, "round %d: GET %s took %lld ms while other clients were stuck", round, path,
                 (long long)took);
    h_resp_free(&r);
}

static void start_gw(struct h_gw *g, struct h_mock *m, const char *timeouts)
{
    H_MOCK(m, "mock", NULL);
    h_gw_config(g, timeouts, H_STD_ROUTES, m->port);
    H_GW(g);
}

Test(admin_server, stuck_clients_do_not_delay_others_and_are_closed)
{
    struct h_mock m = { 0 };
    struct h_gw g = { 0 };
    start_gw(&g, &m, STUCK_TIMEOUTS);

    int fds_before = h_count_fds(g.pid);
    cr_assert_gt(fds_before, 0);
    struct h_conn silent, half, nonreader;
    cr_assert_eq(h_connect(&silent, g.admin_port), 0);
    cr_assert_eq(h_connect(&half, g.admin_port), 0);
    cr_assert_eq(h_sendf(&half, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow:"), 0);
    /* a reader with a small window that asks for many /metrics and reads none */
    int small = 4096;
    nonreader.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(nonreader.fd, 0);
    setsockopt(nonreader.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)g.admin_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    cr_assert_eq(connect(nonreader.fd, (struct sockaddr *)&a, sizeof a), 0);
    static char many[1500 * 40];
    size_t len = 0;
    for (int i = 0; i < 1500; i++)
        len += (size_t)snprintf(many + len, sizeof many - len, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert_eq(send(nonreader.fd, many, len, MSG_NOSIGNAL), (ssize_t)len);
    int64_t stuck_at = h_now_ms();

    /* others are served at once, for as long as the stuck ones are there */
    int rounds = 0;
    while (rounds < 300 && (rounds < 20 || h_now_ms() - stuck_at < 1500)) {
        expect_prompt(&g, "/readyz", 200, rounds);
        expect_prompt(&g, "/metrics", 200, rounds);
        rounds++;
    }
    cr_assert_lt(h_now_ms() - stuck_at, 2500, "the checks outlived the stuck clients' timeouts");

    /* and the stuck ones end: 408 for the heads that did not come, a close for the reader */
    struct h_resp r;
    cr_assert_eq(h_recv(&silent, &r, 10000), H_OK, "the silent client got no answer");
    cr_assert_eq(r.status, 408);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&silent, 5000, NULL), "the silent client's connection stayed open");
    cr_assert_eq(h_recv(&half, &r, 10000), H_OK, "the half-head client got no answer");
    cr_assert_eq(r.status, 408);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&half, 5000, NULL), "the half-head client's connection stayed open");
    /* its FIN cannot reach a full window: aigw's descriptors tell */
    int fds_after = h_settle_fds(g.pid, fds_before, 10000 * h_slow());
    cr_assert_leq(fds_after, fds_before, "the client that does not read was never closed (%d descriptors, %d before)",
                  fds_after, fds_before);
    close(nonreader.fd);
    h_close(&silent);
    h_close(&half);
    h_finish();
}

Test(admin_server, hundred_keep_alive_clients_all_answered_and_no_fd_leaks)
{
    struct h_mock m = { 0 };
    struct h_gw g = { 0 };
    start_gw(&g, &m, STUCK_TIMEOUTS);
    int before = h_count_fds(g.pid);
    cr_assert_gt(before, 0);

    enum { CLIENTS = 100, ROUNDS = 4 };
    static struct h_conn c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        cr_assert_eq(h_connect(&c[i], g.admin_port), 0, "client %d cannot connect", i);
    for (int round = 0; round < ROUNDS; round++) {
        /* every client asks before any reads: the listener holds them all at once */
        for (int i = 0; i < CLIENTS; i++)
            cr_assert_eq(h_sendf(&c[i], "GET %s HTTP/1.1\r\nHost: x\r\n\r\n",
                                 (i + round) % 2 ? "/metrics" : "/readyz"), 0);
        for (int i = 0; i < CLIENTS; i++) {
            struct h_resp r;
            int rc = h_recv(&c[i], &r, 10000);
            cr_assert_eq(rc, H_OK, "client %d round %d: %d", i, round, rc);
            cr_assert_eq(r.status, 200, "client %d round %d: %d", i, round, r.status);
            cr_assert(r.keep_alive, "client %d round %d: the connection was not kept", i, round);
            if ((i + round) % 2)
                cr_assert_not_null(strstr(r.body, "aigw_requests_total"), "client %d: %s", i, r.body);
            else
                cr_assert_str_eq(r.body, "ready\n");
            h_resp_free(&r);
        }
    }
    for (int i = 0; i < CLIENTS; i++)
        h_close(&c[i]);
    int after = h_settle_fds(g.pid, before, 10000);
    cr_assert_leq(after, before, "aigw holds %d descriptors after its admin clients left, %d before", after,
                  before);
    h_finish();
}

Test(admin_server, keep_alive_and_connection_close)
{
    struct h_mock m = { 0 };
    struct h_gw g = { 0 };
    start_gw(&g, &m, NULL);

    struct h_conn c;
    cr_assert_eq(h_connect(&c, g.admin_port), 0);
    struct h_resp r;
    cr_assert_eq(h_request(&c, "GET", "/healthz", NULL, NULL, &r, 5000), H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "ok\n");
    cr_assert(r.keep_alive);
    h_resp_free(&r);
    cr_assert_eq(h_request(&c, "GET", "/metrics", NULL, NULL, &r, 5000), H_OK, "no second answer on the connection");
    cr_assert_eq(r.status, 200);
    cr_assert_not_null(strstr(r.body, "aigw_config_generation"));
    h_resp_free(&r);
    cr_assert_eq(h_request(&c, "GET", "/nope", NULL, NULL, &r, 5000), H_OK);
    cr_assert_eq(r.status, 404);
    h_resp_free(&r);
    cr_assert_eq(h_request(&c, "GET", "/readyz", "Connection: close\r\n", NULL, &r, 5000), H_OK);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(h_header(&r, "Connection"), "close");
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 5000, NULL), "Connection: close was not honoured");
    h_close(&c);

    /* a bad head is a 400 that ends the connection */
    cr_assert_eq(h_connect(&c, g.admin_port), 0);
    cr_assert_eq(h_sendf(&c, "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n"), 0);
    cr_assert_eq(h_recv(&c, &r, 5000), H_OK);
    cr_assert_eq(r.status, 400);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 5000, NULL));
    h_close(&c);
    h_finish();
}

/* GET path with an optional bearer token on a fresh connection; returns the response. */
static struct h_resp get_with(const struct h_gw *g, const char *path, const char *token)
{
    struct h_conn c;
    struct h_resp r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(h_connect(&c, g->admin_port), 0);
    char headers[300];
    snprintf(headers, sizeof headers, "Connection: close\r\n%s", token ? h_bearer(token) : "");
    cr_assert_eq(h_request(&c, "GET", path, headers, NULL, &r, 5000), H_OK, "GET %s", path);
    h_close(&c);
    return r;
}

static void expect_unauthorized(const struct h_gw *g, const char *token)
{
    struct h_resp r = get_with(g, "/metrics", token);
    cr_assert_eq(r.status, 401, "/metrics with %s: %d", token ? token : "no token", r.status);
    const char *www = h_header(&r, "WWW-Authenticate");
    cr_assert(www && strncmp(www, "Bearer", 6) == 0, "WWW-Authenticate: %s", www ? www : "(none)");
    cr_assert(h_json_str_is(r.body, "type", "authentication_error"), "%s", r.body);
    cr_assert(h_json_str_is(r.body, "code", "invalid_admin_token"), "%s", r.body);
    cr_assert_null(strstr(r.body, "aigw_"), "%s", r.body);
    h_resp_free(&r);
}

static void expect_metrics(const struct h_gw *g, const char *token)
{
    struct h_resp r = get_with(g, "/metrics", token);
    cr_assert_eq(r.status, 200, "/metrics with %s: %d %s", token, r.status, r.body);
    cr_assert_not_null(strstr(r.body, "aigw_config_generation"));
    h_resp_free(&r);
}

static void expect_open(const struct h_gw *g)
{
    struct h_resp r = get_with(g, "/healthz", NULL);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    r = get_with(g, "/readyz", NULL);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
}

static bool file_has(const char *tag, const char *ext, const char *needle)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.%s", h_dir(), tag, ext);
    char *text = h_read_file(path);
    bool has = text && strstr(text, needle);
    free(text);
    return has;
}

Test(admin_server, token_guards_metrics_and_follows_reloads)
{
    struct h_mock m = { 0 };
    struct h_gw g = { 0 };
    H_MOCK(&m, "mock", NULL);
    snprintf(g.admin_extra, sizeof g.admin_extra, "token = %s\n", TOKEN_A);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);

    expect_unauthorized(&g, NULL);
    expect_unauthorized(&g, "wrong");
    expect_unauthorized(&g, TOKEN_A "x");
    expect_metrics(&g, TOKEN_A);
    expect_open(&g);

    /* aigw -T tells that a token is set, never which */
    const char *argv[] = { h_aigw_bin(), "-T", "-c", g.conf, NULL };
    char *out = NULL;
    int st = h_run_io("print", argv, NULL, 5000 * h_slow(), &out);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw -T: 0x%x %s", st, h_tail("print"));
    cr_assert_not_null(strstr(out, "\n[admin]\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\n# token: set\n"), "%s", out);
    cr_assert_null(strstr(out, TOKEN_A), "aigw -T printed the token:\n%s", out);
    free(out);

    /* a reload brings the new token: the old one no longer opens /metrics */
    snprintf(g.admin_extra, sizeof g.admin_extra, "token = %s\n", TOKEN_B);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    h_admin_token(TOKEN_B);
    cr_assert_eq(kill(g.pid, SIGHUP), 0);
    cr_assert(h_wait_log_line(g.tag, "configuration reloaded", "generation 2", 10000 * h_slow()),
              "the reload was not applied:\n%s", h_tail(g.tag));
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_config_generation", H_EQ, 2, 5000 * h_slow()), 2);
    expect_metrics(&g, TOKEN_B);
    expect_unauthorized(&g, TOKEN_A);
    expect_unauthorized(&g, NULL);
    expect_open(&g);

    /* a reload that removes the token opens /metrics again */
    g.admin_extra[0] = '\0';
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_RELOAD(&g, H_RELOAD_APPLIED);     /* scrapes with TOKEN_B, which an open /metrics ignores */
    expect_metrics(&g, NULL);

    h_finish();
    cr_assert(!file_has(g.tag, "err", TOKEN_A) && !file_has(g.tag, "err", TOKEN_B), "a token is in aigw's stderr");
    cr_assert(!file_has(g.tag, "out", TOKEN_A) && !file_has(g.tag, "out", TOKEN_B), "a token is in aigw's stdout");
}

Test(admin_server, a_bad_token_value_is_refused_with_its_line)
{
    char conf[600];
    snprintf(conf, sizeof conf, "%s/bad.conf", h_dir());
    h_write_file(conf, "[server]\nlisten = 127.0.0.1:%d\n[admin]\nlisten = 127.0.0.1:%d\ntoken = two words\n"
                       "[pool p]\nbackend = 127.0.0.1:9\n[route r]\npath = /v1/*\npool = p\n",
                 h_free_port(), h_free_port());
    const char *argv[] = { h_aigw_bin(), "-t", "-c", conf, NULL };
    int st = h_run("check", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0, "aigw -t accepted a token with a space");
    cr_assert(file_has("check", "err", "bad.conf:5: invalid value for token: must not contain spaces"),
              "%s", h_tail("check"));
    cr_assert(!file_has("check", "err", "two words"), "%s", h_tail("check"));
}

/* Over 256 connections, the one idle the longest makes room for a new one. */
Test(admin_server, full_listener_evicts_the_oldest_idle_connection)
{
    struct h_mock m = { 0 };
    struct h_gw g = { 0 };
    start_gw(&g, &m, "connect = 1s\nfirst_byte = 2s\nidle = 10s\nclient_header = 10s\nkeepalive = 10s\n");
    enum { FULL = 256 };
    static struct h_conn c[FULL + 1];
    for (int i = 0; i < FULL; i++) {
        cr_assert_eq(h_connect(&c[i], g.admin_port), 0, "client %d", i);
        struct h_resp r;
        cr_assert_eq(h_request(&c[i], "GET", "/healthz", NULL, NULL, &r, 5000), H_OK, "client %d", i);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    cr_assert_eq(h_connect(&c[FULL], g.admin_port), 0);
    struct h_resp r;
    cr_assert_eq(h_request(&c[FULL], "GET", "/readyz", NULL, NULL, &r, 5000), H_OK, "the 257th client got no answer");
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    cr_assert(peer_gone(c[0].fd, 5000), "the oldest idle connection was not closed");
    /* the next oldest is still served */
    cr_assert_eq(h_request(&c[1], "GET", "/healthz", NULL, NULL, &r, 5000), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    for (int i = 0; i <= FULL; i++)
        h_close(&c[i]);
    h_finish();
}
