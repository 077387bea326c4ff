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
