#include "core/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/admin_backends.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/shard.h"
#include "core/status.h"
#include "proto/http1.h"
#include "util/clock.h"
#include "util/base64.h"
#include "util/ct.h"

#define ADMIN_MAX_CONNS 256
#define ADMIN_MAX_HEAD 8192
#define ADMIN_BACKLOG 512
#define ADMIN_ACCEPTS_PER_WAKE 64
#define ADMIN_ACCEPT_BACKOFF_MS 100
/* After the last response of a connection: how long its peer gets to close first
 * (its unread bytes at our close() would make the kernel reset the connection,
 * which can destroy the response before the client reads it). */
#define ADMIN_LINGER_MS 1000
/* [timeouts] defaults, for an admin listener running without a configuration
 * (the unit tests start it alone). */
#define ADMIN_DEFAULT_HEADER_MS 10000
#define ADMIN_DEFAULT_KEEPALIVE_MS 75000
#define ADMIN_DEFAULT_IDLE_MS 30000

enum admin_phase {
    AP_IDLE,        /* waiting for the first byte of a request */
    AP_HEAD,        /* part of a request head received */
    AP_WRITE,       /* a response is going out */
    AP_LINGER,      /* last response sent and our side shut: waiting for the peer's close */
};

struct admin_conn {
    int fd;
    enum admin_phase phase;
    bool answered;          /* a response went out: idle now means kept alive */
    bool close_after;       /* the response going out is the connection's last */
    uint64_t deadline_ms;   /* the phase's timeout */
    uint64_t idle_since_ms; /* AP_IDLE: since when; the oldest idle one is evicted when full */
    char *out;              /* the pending response (malloc'd), out_sent of out_len sent */
    size_t out_len, out_sent;
    size_t in_len;
    char in[ADMIN_MAX_HEAD];
};

static int listen_fd = -1;
static int stop_fd = -1;            /* eventfd: admin_stop wakes the thread */
static int bound_port = -1;
static bool (*ready_fn)(void);
static pthread_t admin_thread;
static bool running;

/* Admin thread only. */
static struct gen *held;            /* the generation whose config applies; NULL: none (unit tests) */
static struct admin_conn *conns[ADMIN_MAX_CONNS];
static unsigned nconns;
static uint64_t accept_paused_until_ms;

/* Moves to the newest generation, releasing the ones passed (see gen_add_holder). */
static void follow_generations(void)
{
    if (!held)
        return;
    struct gen *cur = atomic_load_explicit(&rt.current, memory_order_acquire);
    while (held != cur) {
        struct gen *next = atomic_load(&held->newer);
        gen_unref(held);
        held = next;
    }
}

static const struct config *current_config(void)
{
    return held ? held->cfg : NULL;
}

static uint64_t header_timeout_ms(void)
{
    return held ? held->cfg->timeouts.client_header_ms : ADMIN_DEFAULT_HEADER_MS;
}

static uint64_t keepalive_timeout_ms(void)
{
    return held ? held->cfg->timeouts.keepalive_ms : ADMIN_DEFAULT_KEEPALIVE_MS;
}

static uint64_t stall_timeout_ms(void)
{
    return held ? held->cfg->timeouts.idle_ms : ADMIN_DEFAULT_IDLE_MS;
}

/* ---- connections ---- */

static void conn_free(unsigned i)
{
    struct admin_conn *c = conns[i];
    close(c->fd);
    free(c->out);
    free(c);
    conns[i] = conns[--nconns];
    conns[nconns] = NULL;
}

static void go_idle(struct admin_conn *c, uint64_t now)
{
    c->phase = AP_IDLE;
    c->idle_since_ms = now;
    c->deadline_ms = now + (c->answered ? keepalive_timeout_ms() : header_timeout_ms());
}

/* Queues a response; the caller's loop sends it. False when out of memory (the
 * connection is then closed). */
static bool respond(struct admin_conn *c, int status, const char *content_type, const char *extra_headers,
                    const char *body, size_t body_len, bool head_only, bool minor0)
{
    char head[768];
    const char *connection = c->close_after ? "Connection: close\r\n"
                             : minor0 ? "Connection: keep-alive\r\n" : "";
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s"
                     "%s"
                     "\r\n",
                     status, http_reason(status), content_type, body_len, extra_headers, connection);
    if (n < 0 || (size_t)n >= sizeof head)
        return false;
    size_t total = (size_t)n + (head_only ? 0 : body_len);
    free(c->out);
    c->out = malloc(total);
    if (!c->out)
        return false;
    memcpy(c->out, head, (size_t)n);
    if (!head_only && body_len)
        memcpy(c->out + n, body, body_len);
    c->out_len = total;
    c->out_sent = 0;
    c->phase = AP_WRITE;
    c->deadline_ms = clock_mono_ms() + stall_timeout_ms();
    return true;
}

static bool respond_text(struct admin_conn *c, int status, const char *body, bool head_only, bool minor0)
{
    return respond(c, status, "text/plain; charset=utf-8", "", body, strlen(body), head_only, minor0);
}

/* An error that ends the connection (the request could not be read). */
static bool respond_final(struct admin_conn *c, int status, const char *body)
{
    c->close_after = true;
    c->in_len = 0;
    return respond_text(c, status, body, false, false);
}

static bool path_is(struct slice path, const char *lit)
{
    size_t n = strlen(lit);
    return path.len == n && memcmp(path.p, lit, n) == 0;
}

/* The credentials after "SCHEME " in v (case-insensitive scheme, spaces
 * skipped); false when v uses another scheme. */
static bool auth_param(struct slice v, const char *scheme_lower, struct slice *param)
{
    size_t sl = strlen(scheme_lower);
    if (v.len < sl || !slice_eq_lower((struct slice){ v.p, sl }, scheme_lower))
        return false;
    param->p = v.p + sl;
    param->len = v.len - sl;
    while (param->len && *param->p == ' ') {
        param->p++;
        param->len--;
    }
    return true;
}

/* The one gate of every protected admin route (/metrics, /status, /status.json, /backends):
 * with [admin] token set, the request must carry "Authorization: Bearer TOKEN",
 * or Basic with the token as the password (any user name), which is what a
 * browser can send for a page. Read from the current generation, so a reload
 * changes it. */
static bool admin_authorized(const struct http_request *req)
{
    const struct config *cfg = current_config();
    if (!cfg || !cfg->admin.token[0])
        return true;
    int h = req->idx[HK_AUTHORIZATION];
    if (h < 0)
        return false;
    struct slice v = req->headers[h].value, param;
    const char *token = cfg->admin.token;
    if (auth_param(v, "bearer ", &param))
        return ct_equal(param.p, param.len, token, strlen(token));
    if (!auth_param(v, "basic ", &param))
        return false;
    unsigned char userpass[sizeof cfg->admin.token + 256];
    long n = base64_decode(param.p, param.len, userpass, sizeof userpass);
    const unsigned char *colon = n > 0 ? memchr(userpass, ':', (size_t)n) : NULL;
    if (!colon)
        return false;
    size_t at = (size_t)(colon - userpass) + 1;
    return ct_equal(userpass + at, (size_t)n - at, token, strlen(token));
}

/* basic: the route is a page a browser loads, so it is asked for Basic
 * credentials (it prompts once, then sends them with the page's fetches too). */
static bool respond_unauthorized(struct admin_conn *c, bool head_only, bool minor0, bool basic)
{
    static const char body[] =
        "{\"error\":{\"message\":\"this admin route needs the [admin] token: "
        "Authorization: Bearer TOKEN (or Basic with the token as password)\","
        "\"type\":\"authentication_error\",\"code\":\"invalid_admin_token\"}}\n";
    return respond(c, 401, "application/json",
                   basic ? "WWW-Authenticate: Basic realm=\"aigw\", charset=\"UTF-8\"\r\n"
                         : "WWW-Authenticate: Bearer realm=\"aigw admin\"\r\n",
                   body, sizeof body - 1, head_only, minor0);
}

static bool path_has_prefix(struct slice path, const char *lit)
{
    size_t n = strlen(lit);
    return path.len >= n && memcmp(path.p, lit, n) == 0;
}

/* GET /backends and POST /backends/POOL/BACKEND/... (admin_backends.c). */
static bool serve_backends(struct admin_conn *c, const struct http_request *req, bool minor0)
{
    bool is_head = req->method_id == METHOD_HEAD;
    bool list = path_is(req->path, "/backends");
    if (!admin_authorized(req))
        return respond_unauthorized(c, is_head, minor0, false);
    bool allowed = list ? req->method_id == METHOD_GET || is_head : req->method_id == METHOD_POST;
    if (!allowed) {
        static const char body[] = "{\"error\":{\"message\":\"method not allowed\","
                                   "\"type\":\"invalid_request_error\",\"code\":\"method_not_allowed\"}}\n";
        return respond(c, 405, "application/json", list ? "Allow: GET, HEAD\r\n" : "Allow: POST\r\n", body,
                       sizeof body - 1, is_head, minor0);
    }
    char *body;
    size_t len;
    size_t skip = strlen("/backends/");
    int status = list ? admin_backends_list(held, &body, &len)
                      : admin_backends_post(held, (struct slice){ req->path.p + skip, req->path.len - skip },
                                            &body, &len);
    if (!body)
        return respond_text(c, 500, "out of memory\n", is_head, minor0);
    bool ok = respond(c, status, "application/json", "", body, len, is_head, minor0);
    free(body);
    return ok;
}

static bool serve_request(struct admin_conn *c, const struct http_request *req)
{
    bool is_get = req->method_id == METHOD_GET;
    bool is_head = req->method_id == METHOD_HEAD;
    bool minor0 = req->minor == 0;
    enum { HEALTHZ, READYZ, METRICS, STATUS_PAGE, STATUS_JSON, UNKNOWN } what =
        path_is(req->path, "/healthz") ? HEALTHZ :
        path_is(req->path, "/readyz") ? READYZ :
        path_is(req->path, "/metrics") ? METRICS :
        path_is(req->path, "/status") ? STATUS_PAGE :
        path_is(req->path, "/status.json") ? STATUS_JSON : UNKNOWN;

    if (what == UNKNOWN && (path_is(req->path, "/backends") || path_has_prefix(req->path, "/backends/")))
        return serve_backends(c, req, minor0);
    if (what == UNKNOWN)
        return respond_text(c, 404, "not found\n", is_head, minor0);
    if (!is_get && !is_head)
        return respond(c, 405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n", "method not allowed\n",
                       strlen("method not allowed\n"), false, minor0);
    switch (what) {
    case HEALTHZ:
        return respond_text(c, 200, "ok\n", is_head, minor0);
    case READYZ:
        if (!ready_fn || ready_fn())
            return respond_text(c, 200, "ready\n", is_head, minor0);
        return respond_text(c, 503, "not ready\n", is_head, minor0);
    case METRICS: {
        if (!admin_authorized(req))
            return respond_unauthorized(c, is_head, minor0, false);
        char *body;
        size_t len;
        if (metrics_render_alloc(&body, &len) < 0)
            return respond_text(c, 500, "out of memory\n", is_head, minor0);
        bool ok = respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", "", body, len, is_head, minor0);
        free(body);
        return ok;
    }
    case STATUS_PAGE:
        if (!admin_authorized(req))
            return respond_unauthorized(c, is_head, minor0, true);
        return respond(c, 200, "text/html; charset=utf-8", "", status_page_html,
                       (size_t)(status_page_html_end - status_page_html), is_head, minor0);
    case STATUS_JSON: {
        if (!admin_authorized(req))
            return respond_unauthorized(c, is_head, minor0, true);
        char *body;
        size_t len;
        if (status_render_json(held, clock_mono_ms(), &body, &len) < 0)
            return respond_text(c, 503, "status unavailable: out of memory\n", is_head, minor0);
        bool ok = respond(c, 200, "application/json", "", body, len, is_head, minor0);
        free(body);
        return ok;
    }
    case UNKNOWN:
        break;
    }
    return false;
}

/* Answers the request at the start of c->in if it is whole. False: close c now. */
static bool try_request(struct admin_conn *c)
{
    struct http_request req;
    const char *why = NULL;
    int st = http_parse_request(c->in, c->in_len, sizeof c->in, &req, &why);
    if (st == HTTP_INCOMPLETE && c->in_len < sizeof c->in)
        return true;
    if (st == HTTP_BAD)
        return respond_final(c, 400, "bad request\n");
    if (st != HTTP_OK)
        return respond_final(c, 431, "request header fields too large\n");
    /* admin routes take no body: one that comes is not read, so it ends the connection */
    c->close_after = !req.keep_alive || req.body != BODY_NONE ||
                     atomic_load_explicit(&rt.draining, memory_order_relaxed);
    bool ok = serve_request(c, &req);
    if (c->close_after)
        c->in_len = 0;
    else {
        memmove(c->in, c->in + req.head_len, c->in_len - req.head_len);
        c->in_len -= req.head_len;
    }
    return ok;
}

static bool on_writable(struct admin_conn *c, uint64_t now);

static bool on_readable(struct admin_conn *c, uint64_t now)
{
    if (c->phase == AP_LINGER) {
        char sink[4096];
        for (int i = 0; i < 16; i++) {
            ssize_t n = recv(c->fd, sink, sizeof sink, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                return false;
            if (n < 0)
                return true;
        }
        return true;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, MSG_DONTWAIT);
    if (n == 0)
        return false;   /* the client went away (between requests, or within a head) */
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c->in_len += (size_t)n;
    if (c->phase == AP_IDLE) {
        c->phase = AP_HEAD;
        c->deadline_ms = now + header_timeout_ms();
    }
    if (!try_request(c))
        return false;
    return c->phase != AP_WRITE || on_writable(c, now);
}

/* Sends what the socket takes. False: close c now. */
static bool on_writable(struct admin_conn *c, uint64_t now)
{
    while (c->out_sent < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_sent += (size_t)n;
            c->deadline_ms = now + stall_timeout_ms();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_sent = 0;
    c->answered = true;
    if (c->close_after) {
        shutdown(c->fd, SHUT_WR);
        c->phase = AP_LINGER;
        c->deadline_ms = now + ADMIN_LINGER_MS;
        return true;
    }
    if (c->in_len == 0) {
        go_idle(c, now);
        return true;
    }
    /* a pipelined request is already here */
    c->phase = AP_HEAD;
    c->deadline_ms = now + header_timeout_ms();
    if (!try_request(c))
        return false;
    return c->phase != AP_WRITE || on_writable(c, now);
}

/* A deadline passed. False: close c now. */
static bool on_timeout(struct admin_conn *c)
{
    /* a head that began, or a new connection that never sent one, hears why */
    if (c->phase == AP_HEAD || (c->phase == AP_IDLE && !c->answered)) {
        if (!respond_final(c, 408, "request timeout\n"))
            return false;
        return on_writable(c, clock_mono_ms());
    }
    return false;   /* kept alive and unused, a reader that stopped reading, or lingering */
}

/* ---- accepting ---- */

static void refuse(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                               "Content-Length: 22\r\nConnection: close\r\n\r\ntoo many admin clients\n";
    ssize_t n = send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    close(fd);
}

/* Makes room for one connection when full: the one idle the longest goes. */
static bool evict_oldest_idle(void)
{
    int oldest = -1;
    for (unsigned i = 0; i < nconns; i++)
        if (conns[i]->phase == AP_IDLE &&
            (oldest < 0 || conns[i]->idle_since_ms < conns[oldest]->idle_since_ms))
            oldest = (int)i;
    if (oldest < 0)
        return false;
    conn_free((unsigned)oldest);
    return true;
}

static void accept_clients(uint64_t now)
{
    for (int k = 0; k < ADMIN_ACCEPTS_PER_WAKE; k++) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_warn("admin: accept: %s", strerror(errno));
                /* the connection stays queued; pause accepting instead of spinning */
                accept_paused_until_ms = now + ADMIN_ACCEPT_BACKOFF_MS;
            }
            return;
        }
        if (nconns == ADMIN_MAX_CONNS && !evict_oldest_idle()) {
            refuse(fd);
            continue;
        }
        struct admin_conn *c = malloc(sizeof *c);
        if (!c) {
            refuse(fd);
            continue;
        }
        c->fd = fd;
        c->answered = false;
        c->close_after = false;
        c->out = NULL;
        c->out_len = c->out_sent = 0;
        c->in_len = 0;
        go_idle(c, now);
        conns[nconns++] = c;
    }
}

/* ---- the loop ---- */

static short wanted_events(const struct admin_conn *c)
{
    return c->phase == AP_WRITE ? POLLOUT : POLLIN;
}

static void *admin_main(void *arg)
{
    (void)arg;
    static struct pollfd p[ADMIN_MAX_CONNS + 2];
    static struct admin_conn *polled[ADMIN_MAX_CONNS];
    for (;;) {
        follow_generations();
        uint64_t now = clock_mono_ms();
        uint64_t wake = status_tick(now);
        for (unsigned i = 0; i < nconns;) {
            struct admin_conn *c = conns[i];
            if (now >= c->deadline_ms && !on_timeout(c)) {
                conn_free(i);
                continue;
            }
            if (c->deadline_ms < wake)
                wake = c->deadline_ms;
            i++;
        }
        unsigned np = 0;
        p[np++] = (struct pollfd){ stop_fd, POLLIN, 0 };
        bool accepting = now >= accept_paused_until_ms;
        if (accepting)
            p[np++] = (struct pollfd){ listen_fd, POLLIN, 0 };
        else if (accept_paused_until_ms < wake)
            wake = accept_paused_until_ms;
        unsigned first_conn = np;
        for (unsigned i = 0; i < nconns; i++) {
            polled[i] = conns[i];
            p[np++] = (struct pollfd){ conns[i]->fd, wanted_events(conns[i]), 0 };
        }
        unsigned npolled = nconns;
        int n = poll(p, np, wake > now ? (int)(wake - now) : 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("admin: poll: %s", strerror(errno));
            break;
        }
        if (p[0].revents)
            break;
        now = clock_mono_ms();
        /* connections first: accepting may evict one and reorder conns[] */
        for (unsigned k = 0; k < npolled; k++) {
            short re = p[first_conn + k].revents;
            if (!re)
                continue;
            struct admin_conn *c = polled[k];
            bool keep = c->phase == AP_WRITE ? on_writable(c, now) : on_readable(c, now);
            if (!keep) {
                for (unsigned i = 0; i < nconns; i++)
                    if (conns[i] == c) {
                        conn_free(i);
                        break;
                    }
            }
        }
        if (accepting && (p[1].revents & POLLIN))
            accept_clients(now);
    }
    while (nconns)
        conn_free(nconns - 1);
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
    if (listen(fd, ADMIN_BACKLOG) < 0)
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
    nconns = 0;
    accept_paused_until_ms = 0;
    held = atomic_load_explicit(&rt.current, memory_order_acquire);
    if (held)
        gen_add_holder(held);
    if (status_start(clock_mono_ms()) < 0)
        log_warn("admin: out of memory for /status: it answers 503");
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
    status_stop();
    if (held)
        gen_unref(held);
    held = NULL;
}

int admin_port(void)
{
    return bound_port;
}
