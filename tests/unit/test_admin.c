#include <criterion/criterion.h>
#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/admin.h"
#include "core/metrics.h"

static atomic_bool admin_test_ready;

static bool admin_test_is_ready(void) { return atomic_load(&admin_test_ready); }

static struct cfg_addr loopback_addr(int port)
{
    struct cfg_addr a;
    memset(&a, 0, sizeof a);
    struct sockaddr_in *in = (struct sockaddr_in *)&a.sa;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.salen = sizeof *in;
    snprintf(a.text, sizeof a.text, "127.0.0.1:%d", port);
    return a;
}

static void start_admin(void)
{
    cr_assert_eq(metrics_init(1), 0);
    struct cfg_addr a = loopback_addr(0);
    cr_assert_eq(admin_start(&a, admin_test_is_ready), 0);
    cr_assert_gt(admin_port(), 0);
}

static int admin_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct cfg_addr a = loopback_addr(admin_port());
    cr_assert_eq(connect(fd, (struct sockaddr *)&a.sa, a.salen), 0, "connect: %s", strerror(errno));
    return fd;
}

/* Reads until the server closes (it always does) or 5 s pass. */
static char *read_to_eof(int fd)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap)
            buf = realloc(buf, (cap *= 2) + 1);
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0) {
            cr_assert_eq(n, 0, "recv: %s", strerror(errno));
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

static char *exchange(const char *request)
{
    int fd = admin_connect();
    size_t len = strlen(request);
    cr_assert_eq(send(fd, request, len, MSG_NOSIGNAL), (ssize_t)len);
    return read_to_eof(fd);
}

static char *get(const char *path)
{
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
    return exchange(req);
}

static const char *body_of(const char *resp)
{
    const char *p = strstr(resp, "\r\n\r\n");
    cr_assert_not_null(p, "no head end in: %s", resp);
    return p + 4;
}

Test(admin, healthz)
{
    start_admin();
    char *r = get("/healthz");
    cr_assert_eq(strncmp(r, "HTTP/1.1 200 OK\r\n", 17), 0, "%s", r);
    cr_assert_not_null(strstr(r, "\r\nContent-Length: 3\r\n"));
    cr_assert_not_null(strstr(r, "\r\nConnection: close\r\n"));
    cr_assert_str_eq(body_of(r), "ok\n");
    free(r);
    admin_stop();
}

Test(admin, readyz_follows_the_callback)
{
    start_admin();
    atomic_store(&admin_test_ready, false);
    char *r = get("/readyz");
    cr_assert_eq(strncmp(r, "HTTP/1.1 503 ", 13), 0, "%s", r);
    cr_assert_str_eq(body_of(r), "not ready\n");
    free(r);
    atomic_store(&admin_test_ready, true);
    r = get("/readyz");
    cr_assert_eq(strncmp(r, "HTTP/1.1 200 ", 13), 0, "%s", r);
    cr_assert_str_eq(body_of(r), "ready\n");
    free(r);
    admin_stop();
}

Test(admin, metrics_in_prometheus_text)
{
    start_admin();
    int chat = metrics_route_slot("chat");
    metrics_observe_request(metrics_shard(0), chat, 200, 3000);
    metrics_observe_request(metrics_shard(0), chat, 200, 3000);
    char *r = get("/metrics?x=1");
    cr_assert_eq(strncmp(r, "HTTP/1.1 200 OK\r\n", 17), 0, "%s", r);
    cr_assert_not_null(strstr(r, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "%s", r);
    const char *body = body_of(r);
    char want[64];
    snprintf(want, sizeof want, "\r\nContent-Length: %zu\r\n", strlen(body));
    cr_assert_not_null(strstr(r, want), "%s", r);
    cr_assert_not_null(strstr(body, "\naigw_requests_total{route=\"chat\",status=\"200\"} 2\n"), "%s", body);
    cr_assert_not_null(strstr(body, "\naigw_request_duration_seconds_bucket{le=\"0.005\"} 2\n"), "%s", body);
    free(r);
    admin_stop();
}

Test(admin, head_gets_headers_only)
{
    start_admin();
    char *r = exchange("HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    cr_assert_eq(strncmp(r, "HTTP/1.1 200 OK\r\n", 17), 0, "%s", r);
    cr_assert_not_null(strstr(r, "\r\nContent-Length: 3\r\n"));
    cr_assert_str_eq(body_of(r), "");
    free(r);
    admin_stop();
}

Test(admin, unknown_path_is_404)
{
    start_admin();
    char *r = get("/nope");
    cr_assert_eq(strncmp(r, "HTTP/1.1 404 ", 13), 0, "%s", r);
    free(r);
    r = get("/HEALTHZ");    /* paths are case-sensitive */
    cr_assert_eq(strncmp(r, "HTTP/1.1 404 ", 13), 0, "%s", r);
    free(r);
    r = get("/healthz/");
    cr_assert_eq(strncmp(r, "HTTP/1.1 404 ", 13), 0, "%s", r);
    free(r);
    admin_stop();
}

Test(admin, other_methods_are_405)
{
    start_admin();
    char *r = exchange("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    cr_assert_eq(strncmp(r, "HTTP/1.1 405 ", 13), 0, "%s", r);
    cr_assert_not_null(strstr(r, "\r\nAllow: GET, HEAD\r\n"), "%s", r);
    free(r);
    r = exchange("DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    cr_assert_eq(strncmp(r, "HTTP/1.1 405 ", 13), 0, "%s", r);
    free(r);
    admin_stop();
}

Test(admin, garbage_is_400)
{
    start_admin();
    char *r = exchange("\x01\x02 garbage \xff\r\n\r\n");
    cr_assert_eq(strncmp(r, "HTTP/1.1 400 ", 13), 0, "%s", r);
    free(r);
    r = exchange("GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n");
    cr_assert_eq(strncmp(r, "HTTP/1.1 400 ", 13), 0, "%s", r);
    free(r);
    /* the listener keeps serving */
    r = get("/healthz");
    cr_assert_eq(strncmp(r, "HTTP/1.1 200 ", 13), 0, "%s", r);
    free(r);
    admin_stop();
}

Test(admin, oversized_head_is_431)
{
    start_admin();
    static char req[10000];
    int n = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', sizeof req - (size_t)n - 5);
    memcpy(req + sizeof req - 5, "\r\n\r\n", 5);
    char *r = exchange(req);
    cr_assert_eq(strncmp(r, "HTTP/1.1 431 ", 13), 0, "%s", r);
    free(r);
    admin_stop();
}

/* Descriptors this process holds (the admin thread's included). */
static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;   /* opendir's own */
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(admin, a_silent_client_does_not_delay_others)
{
    start_admin();
    int silent = admin_connect();
    for (int i = 0; i < 20; i++) {
        int64_t t0 = mono_ms();
        char *r = get("/healthz");
        int64_t waited = mono_ms() - t0;
        cr_assert_eq(strncmp(r, "HTTP/1.1 200 ", 13), 0, "%s", r);
        cr_assert_lt(waited, 500, "request %d waited %lld ms behind a silent client", i, (long long)waited);
        free(r);
    }
    close(silent);
    admin_stop();
}

/* A request without "Connection: close" keeps the connection: a second one is
 * answered on it. */
Test(admin, keep_alive_serves_requests_in_turn_and_pipelined)
{
    start_admin();
    atomic_store(&admin_test_ready, true);
    int fd = admin_connect();
    const char *one = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert_eq(send(fd, one, strlen(one), MSG_NOSIGNAL), (ssize_t)strlen(one));
    char buf[4096] = "";
    size_t len = 0;
    while (!strstr(buf, "ok\n")) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        cr_assert_gt(n, 0, "the first answer did not come whole");
        len += (size_t)n;
        buf[len] = '\0';
    }
    cr_assert_null(strstr(buf, "Connection: close"), "%s", buf);
    /* two more at once; the second asks to close */
    const char *two = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    cr_assert_eq(send(fd, two, strlen(two), MSG_NOSIGNAL), (ssize_t)strlen(two));
    char *rest = read_to_eof(fd);
    const char *second = strstr(rest, "HTTP/1.1 200 OK\r\n");
    cr_assert_not_null(second, "%s", rest);
    cr_assert_not_null(strstr(rest, "ready\n"), "%s", rest);
    const char *third = strstr(second + 1, "HTTP/1.1 200 OK\r\n");
    cr_assert_not_null(third, "%s", rest);
    cr_assert_not_null(strstr(third, "\r\nConnection: close\r\n"), "%s", rest);
    cr_assert_str_eq(body_of(third), "ok\n");
    free(rest);
    admin_stop();
}

Test(admin, stop_closes_the_port_even_with_a_client_pending)
{
    start_admin();
    int port = admin_port();
    int before = open_fds();
    int silent = admin_connect();
    /* the admin thread has accepted it once it holds a descriptor of its own for it */
    int64_t t0 = mono_ms();
    while (open_fds() < before + 2 && mono_ms() - t0 < 2000)
        usleep(1000);
    cr_assert_eq(open_fds(), before + 2, "the admin thread did not accept the connection");
    t0 = mono_ms();
    admin_stop();
    cr_assert_lt(mono_ms() - t0, 1500);
    cr_assert_eq(admin_port(), -1);
    close(silent);
    admin_stop();           /* idempotent */

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct cfg_addr a = loopback_addr(port);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a.sa, a.salen), -1);
    cr_assert_eq(errno, ECONNREFUSED);
    close(fd);
}

Test(admin, start_fails_on_a_taken_port)
{
    cr_assert_eq(metrics_init(1), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct cfg_addr a = loopback_addr(0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a.sa, a.salen), 0);
    cr_assert_eq(listen(fd, 1), 0);
    struct sockaddr_in bound;
    socklen_t bl = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &bl);
    struct cfg_addr taken = loopback_addr(ntohs(bound.sin_port));
    cr_assert_eq(admin_start(&taken, NULL), -1);
    cr_assert_eq(errno, EADDRINUSE);
    cr_assert_eq(admin_port(), -1);
    close(fd);
}
