#include "core/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"
#include "proto/http1.h"
#include "util/clock.h"

#define ADMIN_MAX_HEAD 8192
#define ADMIN_IO_TIMEOUT_MS 2000
#define ADMIN_ACCEPT_BACKOFF_MS 100

static int listen_fd = -1;
static int stop_fd = -1;            /* eventfd: admin_stop wakes the thread */
static int bound_port = -1;
static bool (*ready_fn)(void);
static pthread_t admin_thread;
static bool running;

/* Waits until fd is ready for events, the deadline passes (0) or admin_stop is
 * called (-1). Returns 1 when ready. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - (int64_t)clock_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p[2] = { { fd, events, 0 }, { stop_fd, POLLIN, 0 } };
        int n = poll(p, 2, (int)left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (p[1].revents)
            return -1;
        if (p[0].revents)
            return 1;
    }
}

/* Sends all of buf before the deadline; false if the client did not take it. */
static bool send_all(int fd, const char *buf, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) == 1)
                continue;
        }
        return false;
    }
    return true;
}

static void respond(int fd, int status, const char *content_type, const char *extra_headers,
                    const char *body, size_t body_len, bool head_only)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, http_reason(status), content_type, body_len, extra_headers);
    if (n < 0 || (size_t)n >= sizeof head)
        return;
    int64_t deadline = (int64_t)clock_mono_ms() + ADMIN_IO_TIMEOUT_MS;
    if (send_all(fd, head, (size_t)n, deadline) && !head_only)
        send_all(fd, body, body_len, deadline);
}

static void respond_text(int fd, int status, const char *body, bool head_only)
{
    respond(fd, status, "text/plain; charset=utf-8", "", body, strlen(body), head_only);
}

static bool path_is(struct slice path, const char *lit)
{
    size_t n = strlen(lit);
    return path.len == n && memcmp(path.p, lit, n) == 0;
}

static void serve_request(int fd, const struct http_request *req)
{
    bool is_get = req->method_id == METHOD_GET;
    bool is_head = req->method_id == METHOD_HEAD;
    enum { HEALTHZ, READYZ, METRICS, UNKNOWN } what =
        path_is(req->path, "/healthz") ? HEALTHZ :
        path_is(req->path, "/readyz") ? READYZ :
        path_is(req->path, "/metrics") ? METRICS : UNKNOWN;

    if (what == UNKNOWN) {
        respond_text(fd, 404, "not found\n", is_head);
        return;
    }
    if (!is_get && !is_head) {
        respond(fd, 405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n",
                "method not allowed\n", strlen("method not allowed\n"), false);
        return;
    }
    switch (what) {
    case HEALTHZ:
        respond_text(fd, 200, "ok\n", is_head);
        break;
    case READYZ:
        if (!ready_fn || ready_fn())
            respond_text(fd, 200, "ready\n", is_head);
        else
            respond_text(fd, 503, "not ready\n", is_head);
        break;
    case METRICS: {
        char *body;
        size_t len;
        if (metrics_render_alloc(&body, &len) < 0) {
            respond_text(fd, 500, "out of memory\n", is_head);
            break;
        }
        respond(fd, 200, "text/plain; version=0.0.4; charset=utf-8", "", body, len, is_head);
        free(body);
        break;
    }
    case UNKNOWN:
        break;
    }
}

/* Reads one request head (2 s at most) and answers it. */
static void serve_connection(int fd)
{
    char buf[ADMIN_MAX_HEAD];
    size_t len = 0;
    int64_t deadline = (int64_t)clock_mono_ms() + ADMIN_IO_TIMEOUT_MS;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n == 0)
            return;     /* the client went away before a whole head */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return;
            int w = wait_fd(fd, POLLIN, deadline);
            if (w == 1)
                continue;
            if (w == 0)
                respond_text(fd, 408, "request timeout\n", false);
            return;
        }
        len += (size_t)n;
        struct http_request req;
        const char *why = NULL;
        int st = http_parse_request(buf, len, sizeof buf, &req, &why);
        if (st == HTTP_OK) {
            serve_request(fd, &req);
            return;
        }
        if (st == HTTP_BAD) {
            respond_text(fd, 400, "bad request\n", false);
            return;
        }
        if (st == HTTP_TOO_LARGE || len == sizeof buf) {
            respond_text(fd, 431, "request header fields too large\n", false);
            return;
        }
    }
}

/* Ends the connection without a reset: unread request bytes at close() would make
 * the kernel send RST, which can destroy the response before the client reads it. */
static void finish_connection(int fd)
{
    shutdown(fd, SHUT_WR);
    char sink[1024];
    for (int i = 0; i < 64; i++)
        if (recv(fd, sink, sizeof sink, MSG_DONTWAIT) <= 0)
            break;
    close(fd);
}

static void *admin_main(void *arg)
{
    for (;;) {
        struct pollfd p[2] = { { listen_fd, POLLIN, 0 }, { stop_fd, POLLIN, 0 } };
        int n = poll(p, 2, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("admin: poll: %s", strerror(errno));
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_warn("admin: accept: %s", strerror(errno));
                /* the connection stays queued; back off instead of spinning */
                struct pollfd s = { stop_fd, POLLIN, 0 };
                if (poll(&s, 1, ADMIN_ACCEPT_BACKOFF_MS) > 0)
                    break;
            }
            continue;
        }
        serve_connection(fd);
        finish_connection(fd);
    }
    return NULL;
}

int admin_start(const struct cfg_addr *listen_addr, bool (*is_ready)(void))
{
    if (running) {
        errno = EALREADY;
        log_error("admin: already started");
        return -1;
    }
    const char *what = "socket";
    int fd = socket(listen_addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    what = "setsockopt(SO_REUSEADDR)";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto fail;
    what = "bind";
    if (bind(fd, (const struct sockaddr *)&listen_addr->sa, listen_addr->salen) < 0)
        goto fail;
    what = "listen";
    if (listen(fd, 64) < 0)
        goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    what = "getsockname";
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
        goto fail;
    what = "eventfd";
    stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd < 0)
        goto fail;
    bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    listen_fd = fd;
    ready_fn = is_ready;
    int rc = pthread_create(&admin_thread, NULL, admin_main, NULL);
    if (rc != 0) {
        listen_fd = -1;
        bound_port = -1;
        errno = rc;
        what = "pthread_create";
        goto fail;
    }
    running = true;
    size_t tl = strlen(listen_addr->text);
    if (tl >= 2 && strcmp(listen_addr->text + tl - 2, ":0") == 0)
        log_info("admin: listening on %s (port %d)", listen_addr->text, bound_port);
    else
        log_info("admin: listening on %s", listen_addr->text);
    return 0;

fail:;
    int err = errno;
    log_error("admin: %s %s: %s", what, listen_addr->text, strerror(err));
    if (fd >= 0)
        close(fd);
    if (stop_fd >= 0)
        close(stop_fd);
    stop_fd = -1;
    errno = err;
    return -1;
}

void admin_stop(void)
{
    if (!running)
        return;
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(stop_fd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
    pthread_join(admin_thread, NULL);
    close(listen_fd);
    close(stop_fd);
    listen_fd = stop_fd = -1;
    bound_port = -1;
    running = false;
}

int admin_port(void)
{
    return bound_port;
}
