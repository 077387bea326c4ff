/* The upstream keep-alive pool against a scripted backend that misbehaves on
 * idle connections: a stray 408 or garbage written after answering, a close
 * without "Connection: close", bytes appended after a complete response. Every
 * client must get its own answer (the backend echoes a per-request token), and
 * the pool keeps at most `keepalive` idle connections for `keepalive_timeout`. */
#include "harness.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

TestSuite(upstream_pool, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_RESP (5000 * h_slow())
#define T_EVENT (3000 * h_slow())
#define CLIENTS 20

enum misbehaviour {
    MB_NONE,
    MB_STRAY_408,       /* 150 ms after an answer, if no request came: a 408 response */
    MB_STRAY_GARBAGE,   /* ... 64 bytes that are no HTTP at all */
    MB_STRAY_CLOSE,     /* ... a close (no "Connection: close" was said) */
    MB_APPEND_SAME,     /* garbage in the same write as the response */
    MB_APPEND_NEXT,     /* garbage in a second write right after the response */
    MB_CLOSE_EACH,      /* closes right after each response, without saying so */
};

#define STRAY_DELAY_MS 150

struct backend {
    enum misbehaviour mb;
    int listen_fd, port;
    int hold_until;         /* answers wait until this many requests arrived (0: none) */
    atomic_int requests;
    atomic_int strays;      /* stray responses, garbage or closes done */
    atomic_int accepted;
    atomic_int closed;      /* connections that ended (the peer closed, or we did) */
    pthread_t thread;
};

struct request {
    char token[64];
    uint64_t body_len, body_sum;
};

struct backend_conn {
    struct backend *b;
    int fd;
    char buf[16384];
    size_t have;
};

static bool fill(struct backend_conn *bc)
{
    if (bc->have == sizeof bc->buf)
        return false;
    ssize_t n = read(bc->fd, bc->buf + bc->have, sizeof bc->buf - bc->have);
    if (n <= 0)
        return false;
    bc->have += (size_t)n;
    return true;
}

static const char *header_value(const char *head, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = head; (p = strchr(p, '\n')) != NULL;) {
        p++;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':')
            return p + nl + 1 + strspn(p + nl + 1, " ");
    }
    return NULL;
}

/* One request: its x-token header, and its body's length and byte sum (bodies
 * of any size are read through and not kept). False on EOF or error. */
static bool read_request(struct backend_conn *bc, struct request *r)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (!(end = memmem(bc->buf, bc->have, "\r\n\r\n", 4)))
        if (!fill(bc))
            return false;
    size_t head_len = (size_t)(end + 4 - bc->buf);
    char head[sizeof bc->buf + 1];
    memcpy(head, bc->buf, head_len);
    head[head_len] = '\0';
    const char *tok = header_value(head, "x-token");
    if (tok)
        snprintf(r->token, sizeof r->token, "%.*s", (int)strcspn(tok, "\r\n"), tok);
    const char *cl = header_value(head, "content-length");
    uint64_t left = cl ? strtoull(cl, NULL, 10) : 0;
    memmove(bc->buf, bc->buf + head_len, bc->have - head_len);
    bc->have -= head_len;
    while (left) {
        if (!bc->have && !fill(bc))
            return false;
        size_t k = bc->have < left ? bc->have : (size_t)left;
        for (size_t i = 0; i < k; i++)
            r->body_sum += (unsigned char)bc->buf[i];
        r->body_len += k;
        left -= k;
        memmove(bc->buf, bc->buf + k, bc->have - k);
        bc->have -= k;
    }
    return true;
}

static bool write_str(int fd, const char *s)
{
    return h_write_all(fd, s, strlen(s));
}

static void *serve_connection(void *arg)
{
    struct backend_conn *bc = arg;
    struct backend *b = bc->b;
    struct request r;
    char garbage[64];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (char)(i * 37 + 11);   /* no HTTP at all, NUL and control bytes included */
    while (read_request(bc, &r)) {
        int n = atomic_fetch_add(&b->requests, 1) + 1;
        for (int64_t until = h_now_ms() + 5000; n < b->hold_until && h_now_ms() < until; h_sleep_ms(5))
            n = atomic_load(&b->requests);
        char body[256], resp[512];
        int blen = snprintf(body, sizeof body, "{\"token\":\"%s\",\"len\":%llu,\"sum\":%llu}", r.token,
                            (unsigned long long)r.body_len, (unsigned long long)r.body_sum);
        snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "Content-Length: %d\r\n\r\n%s%s", blen, body, b->mb == MB_APPEND_SAME ? "garbage" : "");
        if (!write_str(bc->fd, resp))
            break;
        if (b->mb == MB_APPEND_NEXT) {
            if (!write_str(bc->fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"))
                break;
            atomic_fetch_add(&b->strays, 1);
        }
        if (b->mb == MB_CLOSE_EACH)
            break;
        if (b->mb < MB_STRAY_408 || b->mb > MB_STRAY_CLOSE)
            continue;
        /* like a server's idle timeout: only on a connection no request came on */
        struct pollfd p = { .fd = bc->fd, .events = POLLIN };
        if (bc->have || poll(&p, 1, STRAY_DELAY_MS) != 0)
            continue;
        if (b->mb == MB_STRAY_CLOSE)
            break;
        if (b->mb == MB_STRAY_408)
            write_str(bc->fd, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\n\r\ntimeout");
        else
            h_write_all(bc->fd, garbage, sizeof garbage);
        atomic_fetch_add(&b->strays, 1);
    }
    close(bc->fd);
    if (b->mb == MB_STRAY_CLOSE)
        atomic_fetch_add(&b->strays, 1);
    atomic_fetch_add(&b->closed, 1);
    free(bc);
    return NULL;
}

static void *accept_loop(void *arg)
{
    struct backend *b = arg;
    for (;;) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        atomic_fetch_add(&b->accepted, 1);
        struct backend_conn *bc = calloc(1, sizeof *bc);
        pthread_t t;
        if (!bc)
            abort();
        bc->b = b;
        bc->fd = fd;
        if (pthread_create(&t, NULL, serve_connection, bc) != 0)
            abort();
        pthread_detach(t);
    }
}

static void backend_start(struct backend *b, enum misbehaviour mb)
{
    memset(b, 0, sizeof *b);
    b->mb = mb;
    b->listen_fd = h_listen_loopback(&b->port);
    cr_assert_eq(pthread_create(&b->thread, NULL, accept_loop, b), 0);
}

/* Waits until *counter reaches want; false after timeout_ms. */
static bool wait_count(atomic_int *counter, int want, int timeout_ms)
{
    for (int64_t until = h_now_ms() + timeout_ms; atomic_load(counter) < want; h_sleep_ms(2))
        if (h_now_ms() >= until)
            return false;
    return true;
}

static void gw_in_front(struct h_gw *g, const struct backend *b, const char *pool_extra)
{
    h_gw_config(g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\n%s\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                b->port, pool_extra ? pool_extra : "");
    H_GW(g);
}

/* One request on a new client connection; asserts the answer carries its token. */
static void request_with_token(struct h_gw *g, bool ai, int i)
{
    char token[32], extra[64], chat[512];
    snprintf(token, sizeof token, "client-%d-%d", i, rand());
    snprintf(extra, sizeof extra, "x-token: %s\r\nConnection: close\r\n", token);
    struct h_conn c;
    H_CONNECT_GW(&c, g);
    struct h_resp r;
    int rc = ai ? h_request(&c, "POST", "/v1/chat/completions", extra, h_chat_body(chat, sizeof chat, 8, false),
                            &r, T_RESP)
                : h_request(&c, "GET", "/v1/echo", extra, NULL, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "client %d: no response (%d); aigw stderr:\n%s", i, rc, h_tail(g->tag));
    cr_assert_eq(r.status, 200, "client %d got status %d: %s", i, r.status, r.body);
    cr_assert(strstr(r.body, token), "client %d got someone else's answer: %s (its token: %s)", i, r.body, token);
    h_resp_free(&r);
    h_close(&c);
}

/* 20 clients one after the other; before each next one the backend has
 * misbehaved on the idle connection the previous one used. */
static void clients_after_strays(enum misbehaviour mb, bool ai)
{
    struct backend b;
    struct h_gw g = {0};
    backend_start(&b, mb);
    gw_in_front(&g, &b, NULL);
    for (int i = 0; i < CLIENTS; i++) {
        request_with_token(&g, ai, i);
        cr_assert(wait_count(&b.strays, i + 1, T_EVENT), "the backend wrote no stray after answer %d", i);
    }
    cr_assert_eq(h_metric0(g.admin_port, "aigw_upstream_connections_total{pool=\"local\",kind=\"reused\"}"), 0,
                 "a connection that had stray bytes (or was closed) while idle was taken again");
    /* the last stray retires the last connection too */
    cr_assert(wait_count(&b.closed, atomic_load(&b.accepted), T_EVENT),
              "aigw keeps %d upstream connection(s) that had stray bytes",
              atomic_load(&b.accepted) - atomic_load(&b.closed));
    h_finish();
}

Test(upstream_pool, stray_408_on_an_idle_connection_reaches_no_client_raw)
{
    clients_after_strays(MB_STRAY_408, false);
}

Test(upstream_pool, stray_408_on_an_idle_connection_reaches_no_client_ai)
{
    clients_after_strays(MB_STRAY_408, true);
}

Test(upstream_pool, stray_garbage_on_an_idle_connection_reaches_no_client)
{
    clients_after_strays(MB_STRAY_GARBAGE, false);
}

Test(upstream_pool, idle_connection_closed_by_the_backend_is_not_reused)
{
    clients_after_strays(MB_STRAY_CLOSE, true);
}

/* The next client comes as soon as the backend has written what it appends
 * (the same write as the response: at once). */
static void clients_after_appended_bytes(enum misbehaviour mb)
{
    struct backend b;
    struct h_gw g = {0};
    backend_start(&b, mb);
    gw_in_front(&g, &b, NULL);
    for (int i = 0; i < CLIENTS; i++) {
        request_with_token(&g, i % 2, i);
        if (mb == MB_APPEND_NEXT)
            cr_assert(wait_count(&b.strays, i + 1, T_EVENT), "the backend appended nothing after answer %d", i);
    }
    h_finish();
}

Test(upstream_pool, bytes_appended_to_a_response_retire_the_connection)
{
    clients_after_appended_bytes(MB_APPEND_SAME);
}

Test(upstream_pool, a_response_written_after_a_response_retires_the_connection)
{
    clients_after_appended_bytes(MB_APPEND_NEXT);
}

/* Raw uploads of 100 KB to 2 MB: their bodies are streamed, so they cannot be
 * resent; a connection the backend closed must never be taken for them. */
Test(upstream_pool, uploads_to_a_backend_closing_after_each_response_all_succeed)
{
    struct backend b;
    struct h_gw g = { .max_body = "4m" };
    backend_start(&b, MB_CLOSE_EACH);
    gw_in_front(&g, &b, NULL);
    size_t max = 2000 * 1024;
    char *body = malloc(max + 1);
    cr_assert(body);
    for (size_t i = 0; i < max; i++)
        body[i] = (char)('a' + i % 23);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    for (int i = 0; i < CLIENTS; i++) {
        size_t len = 100 * 1024 * (size_t)(i + 1);
        char saved = body[len];
        body[len] = '\0';
        uint64_t sum = 0;
        for (size_t k = 0; k < len; k++)
            sum += (unsigned char)body[k];
        char extra[64], want[96];
        snprintf(extra, sizeof extra, "x-token: upload-%d\r\n", i);
        snprintf(want, sizeof want, "\"token\":\"upload-%d\",\"len\":%zu,\"sum\":%llu", i, len,
                 (unsigned long long)sum);
        struct h_resp r;
        int rc = h_request(&c, "POST", "/v1/upload", extra, body, &r, T_RESP);
        body[len] = saved;
        cr_assert_eq(rc, H_OK, "upload %d (%zu bytes): no response (%d); aigw stderr:\n%s", i, len, rc,
                     h_tail(g.tag));
        cr_assert_eq(r.status, 200, "upload %d (%zu bytes): status %d %s", i, len, r.status, r.body);
        cr_assert(strstr(r.body, want), "upload %d: backend saw %s, expected %s", i, r.body, want);
        h_resp_free(&r);
    }
    h_close(&c);
    free(body);
    cr_assert_eq(atomic_load(&b.requests), CLIENTS, "every upload reached the backend once");
    h_finish();
}

/* n requests at once (the backend answers none before all arrived, so each
 * has its own upstream connection); then every answer is read. */
static void burst(struct h_gw *g, struct backend *b, int n)
{
    b->hold_until = atomic_load(&b->requests) + n;
    struct h_conn c[16];
    cr_assert(n <= 16);
    for (int i = 0; i < n; i++) {
        H_CONNECT_GW(&c[i], g);
        cr_assert_eq(h_sendf(&c[i], "GET /v1/burst HTTP/1.1\r\nHost: x\r\nx-token: burst-%d\r\n\r\n", i), 0);
    }
    for (int i = 0; i < n; i++) {
        struct h_resp r;
        int rc = h_recv(&c[i], &r, T_RESP);
        cr_assert_eq(rc, H_OK, "burst request %d: no response (%d); aigw stderr:\n%s", i, rc, h_tail(g->tag));
        cr_assert_eq(r.status, 200, "burst request %d: %d %s", i, r.status, r.body);
        h_resp_free(&r);
        h_close(&c[i]);
    }
}

Test(upstream_pool, keepalive_bounds_the_idle_connections_per_backend)
{
    struct backend b;
    struct h_gw g = { .shards = 1 };
    backend_start(&b, MB_NONE);
    gw_in_front(&g, &b, "keepalive = 2\nkeepalive_timeout = 60s\n");
    burst(&g, &b, 10);
    cr_assert_eq(atomic_load(&b.accepted), 10, "the burst should have needed 10 upstream connections");
    cr_assert(wait_count(&b.closed, 8, T_EVENT), "aigw closed %d of the 8 upstream connections over keepalive",
              atomic_load(&b.closed));
    cr_assert_eq(h_metric(g.admin_port, "aigw_connections{side=\"upstream\"}"), 2,
                 "keepalive = 2 keeps two idle connections");
    /* and they are used: a second burst of two opens none */
    burst(&g, &b, 2);
    cr_assert_eq(atomic_load(&b.accepted), 10, "the two idle connections should have been reused");
    h_finish();
}

Test(upstream_pool, keepalive_timeout_closes_idle_connections)
{
    struct backend b;
    struct h_gw g = { .shards = 1 };
    backend_start(&b, MB_NONE);
    h_gw_config(&g, "connect = 1s\nfirst_byte = 2s\nidle = 2s\nclient_header = 1s\nkeepalive = 30s\n",
                "[pool local]\nbackend = 127.0.0.1:%d\nkeepalive_timeout = 200ms\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                b.port);
    H_GW(&g);
    int64_t t0 = h_now_ms();
    burst(&g, &b, 3);
    cr_assert(wait_count(&b.closed, 3, 2000 * h_slow()), "after keepalive_timeout = 200ms, %d of 3 closed",
              atomic_load(&b.closed));
    cr_assert_geq(h_now_ms() - t0, 200, "closed before keepalive_timeout");
    cr_assert_eq(h_metric(g.admin_port, "aigw_connections{side=\"upstream\"}"), 0);
    h_finish();
}
