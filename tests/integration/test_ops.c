/* What an operator relies on around the proxying: the access log's lines,
 * SIGUSR1 reopening it after logrotate, and systemd's notify protocol. */
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(ops, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

Test(ops, access_log_line_names_the_request)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    struct h_resp r;
    cr_assert_eq(h_request(&c, "GET", "/v1/models?probe=1", "X-Request-Id: log-probe-1\r\n", NULL, &r, T_RESP),
                 H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    cr_assert_eq(h_request(&c, "GET", "/nowhere", NULL, NULL, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 404);
    h_resp_free(&r);
    h_close(&c);

    char path[600];
    snprintf(path, sizeof path, "%s/access.log", h_dir());
    char *log = h_wait_for_text(path, "\"target\":\"/nowhere\"", 3000 * h_slow());
    cr_assert_not_null(log, "access log has no line for /nowhere:\n%s", h_read_file(path));
    char *line = strstr(log, "\"request_id\":\"log-probe-1\"");
    cr_assert_not_null(line, "access log line lacks the client's request id:\n%s", log);
    while (line > log && line[-1] != '\n')
        line--;
    cr_assert(strstr(line, "\"method\":\"GET\",\"target\":\"/v1/models?probe=1\",\"status\":200,"
                           "\"route\":\"models\",\"pool\":\"local\""),
              "unexpected access log line:\n%s", line);
    cr_assert(strstr(log, "\"status\":404,\"route\":\"\""), "404 not logged:\n%s", log);
    free(log);
    h_finish();
}

Test(ops, sigusr1_reopens_the_access_log_after_rotation)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    char path[600], rotated[620];
    snprintf(path, sizeof path, "%s/access.log", h_dir());
    snprintf(rotated, sizeof rotated, "%s/access.log.1", h_dir());
    struct h_resp r;
    cr_assert_eq(h_get(g.port, "/v1/models?before=rotation", &r, T_RESP), H_OK);
    h_resp_free(&r);
    char *log = h_wait_for_text(path, "before=rotation", 3000 * h_slow());
    cr_assert_not_null(log, "first line never written");
    free(log);

    /* what logrotate does: rename, then signal */
    cr_assert_eq(rename(path, rotated), 0);
    cr_assert(h_gw_reopen_log(&g), "SIGUSR1: the access log was not reopened; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(h_get(g.port, "/v1/models?after=rotation", &r, T_RESP), H_OK);
    h_resp_free(&r);

    log = h_wait_for_text(path, "after=rotation", 3000 * h_slow());
    cr_assert_not_null(log, "no new access.log with the line after SIGUSR1");
    cr_assert_null(strstr(log, "before=rotation"), "new file holds old lines:\n%s", log);
    free(log);
    char *old = h_read_file(rotated);
    cr_assert(old && !strstr(old, "after=rotation"), "line after rotation went to the rotated file");
    free(old);
    h_finish();
}

/* A stand-in for systemd: a datagram socket at $NOTIFY_SOCKET. */
static int notify_socket(char *path, size_t cap)
{
    snprintf(path, cap, "%s/notify.sock", h_dir());
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    cr_assert_lt(strlen(path), sizeof sa.sun_path, "temp dir path too long for a unix socket");
    strcpy(sa.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s: %s", path, strerror(errno));
    struct timeval tv = { .tv_sec = 5 * h_slow() };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Reads notify datagrams until one contains want; returns all text read. */
static bool notified(int fd, const char *want, char *all, size_t cap)
{
    size_t used = strlen(all);
    for (int i = 0; i < 20; i++) {
        char msg[1024];
        ssize_t n = recv(fd, msg, sizeof msg - 1, 0);
        if (n <= 0)
            return false;
        msg[n] = 0;
        used += (size_t)snprintf(all + used, cap > used ? cap - used : 0, "%s|", msg);
        if (strstr(msg, want))
            return true;
    }
    return false;
}

Test(ops, speaks_the_systemd_notify_protocol)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    char path[600];
    int fd = notify_socket(path, sizeof path);
    setenv("NOTIFY_SOCKET", path, 1);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    unsetenv("NOTIFY_SOCKET");

    char all[8192] = "";
    cr_assert(notified(fd, "READY=1", all, sizeof all), "no READY=1; got: %s", all);
    cr_assert_eq(kill(g.pid, SIGHUP), 0);
    cr_assert(notified(fd, "RELOADING=1", all, sizeof all), "no RELOADING=1 on SIGHUP; got: %s", all);
    cr_assert(notified(fd, "READY=1", all, sizeof all), "no READY=1 after the reload; got: %s", all);
    cr_assert_eq(kill(g.pid, SIGTERM), 0);
    cr_assert(notified(fd, "STOPPING=1", all, sizeof all), "no STOPPING=1 on SIGTERM; got: %s", all);
    int st = h_wait_exit(g.pid, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw did not exit 0 after SIGTERM");
    g.pid = 0;
    close(fd);
    h_finish();
}

/* ---- one instance per address ---- */

/* Prepares a second gateway config in front of the same backend: same listen port
 * as g, its own admin port (the admin listener alone would already refuse it). */
static void second_gw(struct h_gw *g2, const struct h_gw *g, const char *tag, int backend_port)
{
    memset(g2, 0, sizeof *g2);
    snprintf(g2->tag, sizeof g2->tag, "%s", tag);
    g2->port = g->port;
    h_gw_config(g2, NULL, H_STD_ROUTES, backend_port);
}

#define FRESH_CLIENTS 40

Test(ops, second_instance_on_the_same_address_refuses_to_start)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);

    struct h_gw g2;
    second_gw(&g2, &g, "aigw2", m.port);
    const char *argv[] = {h_aigw_bin(), "-c", g2.conf, NULL};
    pid_t second = h_spawn(g2.tag, argv);
    int st = h_wait_exit(second, 5000 * h_slow());
    if (st == -1)
        h_stop(second, 2000);
    cr_assert(st != -1, "a second aigw on 127.0.0.1:%d started and kept running; stderr:\n%s", g.port,
              h_tail(g2.tag));
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "the second aigw should exit 1 (wait status 0x%x)", st);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", g.port);
    const char *err = h_tail(g2.tag);
    cr_assert(strstr(err, want) && strstr(err, "already in use"),
              "the refusal should name the address and say it is in use; stderr:\n%s", err);

    /* SO_REUSEPORT hashes fresh connections over every socket in the group: had the
     * second instance joined, some of these would have gone to it. */
    for (int i = 0; i < FRESH_CLIENTS; i++) {
        struct h_resp r;
        cr_assert_eq(h_get(g.port, "/v1/models", &r, T_RESP), H_OK, "request %d failed", i);
        cr_assert_eq(r.status, 200);
        h_resp_free(&r);
    }
    double served = h_wait_metric(g.admin_port, "aigw_requests_total{route=\"models\"}", H_GE, FRESH_CLIENTS,
                                  3000 * h_slow());
    cr_assert_eq(served, FRESH_CLIENTS, "the first aigw counted %g of %d requests", served, FRESH_CLIENTS);
    h_finish();
}

Test(ops, restart_binds_again_over_closed_connections)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 0 --ttft-ms 0", NULL);
    /* "Connection: close": aigw closes first, leaving TIME_WAIT sockets on its port */
    for (int i = 0; i < 5; i++) {
        struct h_resp r;
        cr_assert_eq(h_get(g.port, "/v1/models", &r, T_RESP), H_OK);
        h_resp_free(&r);
    }
    int st = h_stop(g.pid, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw did not stop cleanly");
    g.pid = 0;

    int port = g.port;
    H_GW(&g);
    cr_assert_eq(g.port, port, "the restarted aigw could not listen on its port again:\n%s", h_tail(g.tag));
    struct h_resp r;
    cr_assert_eq(h_get(g.port, "/v1/models", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
    h_finish();
}

/* The old process releases its listeners when it starts draining, so a new one can
 * take the address while the old one finishes its streams. */
Test(ops, new_instance_starts_while_the_old_one_drains)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, "--tps 20 --ttft-ms 0", NULL);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    struct h_resp head;
    h_start_chat_stream(&c, 40, &head, g.tag);
    struct h_sse sse;
    h_sse_init(&sse, &c, &head);
    cr_assert_eq(h_sse_next(&sse, T_RESP), 1, "no first event");

    cr_assert_eq(kill(g.pid, SIGTERM), 0);
    int64_t end = h_now_ms() + 3000 * h_slow();
    struct h_conn probe;
    while (h_connect(&probe, g.port) == 0) {
        h_close(&probe);
        cr_assert_lt(h_now_ms(), end, "the draining aigw still accepts connections");
        h_sleep_ms(10);
    }
    cr_assert(h_alive(g.pid), "the old aigw exited before its stream ended");

    struct h_gw g2;
    second_gw(&g2, &g, "aigw2", m.port);
    H_GW(&g2);
    cr_assert_eq(g2.port, g.port, "the new aigw could not take the port of the draining one:\n%s",
                 h_tail(g2.tag));
    struct h_resp r;
    cr_assert_eq(h_get(g2.port, "/v1/models", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);

    int got;
    while ((got = h_sse_next(&sse, T_RESP)) == 1) {
    }
    cr_assert_eq(got, 0, "the old aigw's stream did not end properly (%d)", got);
    h_sse_free(&sse);
    h_resp_free(&head);
    h_close(&c);
    int st = h_wait_exit(g.pid, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the old aigw did not exit 0 after draining");
    g.pid = 0;
    h_finish();
}
