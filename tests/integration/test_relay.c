/* The response relay and the upstream pool against a hand-written backend:
 * chunked bodies with a large chunk (its data spliced, its framing scanned),
 * kept-alive on both sides, de-chunked for an HTTP/1.0 client; close-delimited
 * bodies; and a backend that closes pooled connections behind aigw's back. */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

TestSuite(relay, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())
#define BIG_CHUNK (1024 * 1024)

enum backend_mode {
    MODE_CHUNKED,           /* keep-alive, chunked body with a 1 MiB chunk */
    MODE_CLOSE_DELIMITED,   /* no framing: the close ends the body */
    MODE_KEEPALIVE_THEN_CLOSE, /* says keep-alive, answers "ok", then closes after 50 ms */
    MODE_MIXED_CHUNKS,      /* chunked: small events and bursts of 8-20 KiB, written apart */
};

struct chunk_backend {
    enum backend_mode mode;
    int listen_fd;
    int port;
    atomic_int requests;
    atomic_int connections;
    atomic_int closed;      /* connections the backend has closed */
    pthread_t thread;
};

static char pattern_at(size_t i)
{
    return (char)('a' + (i * 7 + i / 251) % 26);
}

/* Chunk sizes of the mixed body: events, bursts past one receive buffer (8 KiB),
 * past the copy buffer (16 KiB, spliced), and the sizes around them. */
static const size_t mixed_sizes[] = { 40, 8192, 9000, 60, 8191, 8193, 30, 12000, 20000, 5,
                                      16384, 700, 24000, 1 };
#define MIXED_N (sizeof mixed_sizes / sizeof *mixed_sizes)

static size_t mixed_total(void)
{
    size_t t = 0;
    for (size_t i = 0; i < MIXED_N; i++)
        t += mixed_sizes[i];
    return t;
}

/* A chunked body whose chunks are written one by one, a little apart, so aigw's
 * relay moves between its receive buffers, its copy buffer and the splice path
 * within one body. */
static void serve_mixed_chunks(int fd)
{
    static char chunk[32 * 1024];
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    if (!h_write_all(fd, head, sizeof head - 1))
        return;
    size_t at = 0;
    for (size_t i = 0; i < MIXED_N; i++) {
        char line[32];
        int ll = snprintf(line, sizeof line, "%zx\r\n", mixed_sizes[i]);
        for (size_t k = 0; k < mixed_sizes[i]; k++)
            chunk[k] = pattern_at(at + k);
        at += mixed_sizes[i];
        if (!h_write_all(fd, line, (size_t)ll) || !h_write_all(fd, chunk, mixed_sizes[i]) ||
            !h_write_all(fd, "\r\n", 2))
            return;
        usleep(2000);   /* the backend's pace: each chunk its own arrival */
    }
    h_write_all(fd, "0\r\n\r\n", 5);
}

/* Answers every request on every connection with the same chunked body:
 * "hello, " + 1 MiB of pattern + "!" */
static void serve_connection(struct chunk_backend *b, int fd)
{
    char req[8192];
    size_t have = 0;
    static char big[BIG_CHUNK];
    for (size_t i = 0; i < BIG_CHUNK; i++)
        big[i] = pattern_at(i);
    for (;;) {
        char *end;
        while (!(end = memmem(req, have, "\r\n\r\n", 4))) {
            if (have == sizeof req)
                return;
            ssize_t n = read(fd, req + have, sizeof req - have);
            if (n <= 0)
                return;
            have += (size_t)n;
        }
        size_t used = (size_t)(end + 4 - req);
        memmove(req, req + used, have - used);
        have -= used;
        atomic_fetch_add(&b->requests, 1);
        if (b->mode == MODE_KEEPALIVE_THEN_CLOSE) {
            static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            h_write_all(fd, ok, sizeof ok - 1);
            usleep(50 * 1000);  /* long enough for aigw to pool it */
            return;
        }
        if (b->mode == MODE_MIXED_CHUNKS) {
            serve_mixed_chunks(fd);
            continue;
        }
        if (b->mode == MODE_CLOSE_DELIMITED) {
            static const char plain[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, ";
            if (h_write_all(fd, plain, sizeof plain - 1) && h_write_all(fd, big, BIG_CHUNK))
                h_write_all(fd, "!", 1);
            return;     /* the close ends the body */
        }
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n7\r\nhello, \r\n";
        char size_line[32];
        int sl = snprintf(size_line, sizeof size_line, "%x\r\n", BIG_CHUNK);
        static const char tail[] = "\r\n1\r\n!\r\n0\r\n\r\n";
        if (!h_write_all(fd, head, sizeof head - 1) || !h_write_all(fd, size_line, (size_t)sl) ||
            !h_write_all(fd, big, BIG_CHUNK) || !h_write_all(fd, tail, sizeof tail - 1))
            return;
    }
}

static void *backend_main(void *arg)
{
    struct chunk_backend *b = arg;
    for (;;) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        atomic_fetch_add(&b->connections, 1);
        serve_connection(b, fd);
        close(fd);
        atomic_fetch_add(&b->closed, 1);
    }
}

static void backend_start(struct chunk_backend *b, enum backend_mode mode)
{
    memset(b, 0, sizeof *b);
    b->mode = mode;
    b->listen_fd = h_listen_loopback(&b->port);
    cr_assert_eq(pthread_create(&b->thread, NULL, backend_main, b), 0);
}

/* The raw backend in the given mode, and aigw in front of it. */
static void start_behind(struct chunk_backend *b, enum backend_mode mode, struct h_gw *g)
{
    backend_start(b, mode);
    h_gw_config(g, NULL, H_STD_ROUTES, b->port);
    H_GW(g);
}

static void assert_body(const struct h_resp *r)
{
    cr_assert_eq(r->body_len, 7 + BIG_CHUNK + 1, "body length %zu", r->body_len);
    cr_assert(memcmp(r->body, "hello, ", 7) == 0);
    for (size_t i = 0; i < BIG_CHUNK; i++)
        if (r->body[7 + i] != pattern_at(i))
            cr_assert_fail("body differs at byte %zu of the big chunk", i);
    cr_assert_eq(r->body[7 + BIG_CHUNK], '!');
}

Test(relay, large_chunks_are_spliced_and_framing_is_followed)
{
    struct chunk_backend b;
    struct h_gw g = {0};
    start_behind(&b, MODE_CHUNKED, &g);
    double spliced0 = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}");

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    for (int i = 0; i < 2; i++) {
        struct h_resp r;
        int rc = h_request(&c, "GET", "/v1/big", NULL, NULL, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "request %d: no complete response (%d); aigw stderr:\n%s", i, rc, h_tail(g.tag));
        cr_assert_eq(r.status, 200);
        cr_assert(r.chunked, "an HTTP/1.1 client gets the chunked body as chunked");
        cr_assert(r.keep_alive, "the response end was found, so the connection stays open");
        assert_body(&r);
        h_resp_free(&r);
    }
    h_close(&c);
    double spliced = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}") - spliced0;
    cr_assert_geq(spliced, 2.0 * (BIG_CHUNK - 256 * 1024),
                  "the big chunks' data should go by splice; spliced %.0f bytes", spliced);
    cr_assert_eq(atomic_load(&b.connections), 1, "the upstream connection should have been reused");
    h_finish();
}

Test(relay, body_of_small_and_large_chunks_arrives_whole)
{
    struct chunk_backend b;
    struct h_gw g = {0};
    start_behind(&b, MODE_MIXED_CHUNKS, &g);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    /* twice on one connection: the second reuses what the first gave back */
    for (int round = 0; round < 2; round++) {
        struct h_resp r;
        int rc = h_request(&c, "GET", "/v1/mixed", NULL, NULL, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "round %d: no response (%d); aigw stderr:\n%s", round, rc, h_tail(g.tag));
        cr_assert_eq(r.status, 200);
        cr_assert_eq(r.body_len, mixed_total(), "round %d: body length %zu of %zu", round, r.body_len,
                     mixed_total());
        for (size_t i = 0; i < r.body_len; i++)
            if (r.body[i] != pattern_at(i))
                cr_assert_fail("round %d: body differs at byte %zu", round, i);
        h_resp_free(&r);
    }
    h_close(&c);
    h_finish();
}

Test(relay, http10_client_gets_the_chunked_body_dechunked)
{
    struct chunk_backend b;
    struct h_gw g = {0};
    start_behind(&b, MODE_CHUNKED, &g);

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "GET /v1/big HTTP/1.0\r\n\r\n"), 0);
    struct h_resp r;
    int rc = h_recv(&c, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no complete response (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 200);
    cr_assert(!r.chunked, "HTTP/1.0 has no chunked coding:\n%s", r.head);
    cr_assert(r.until_close, "the body ends when aigw closes:\n%s", r.head);
    assert_body(&r);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

Test(relay, close_delimited_response_is_spliced_and_ends_the_connection)
{
    struct chunk_backend b;
    struct h_gw g = {0};
    start_behind(&b, MODE_CLOSE_DELIMITED, &g);
    double spliced0 = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}");

    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    struct h_resp r;
    int rc = h_request(&c, "GET", "/v1/big", NULL, NULL, &r, T_RESP);
    cr_assert_eq(rc, H_OK, "no complete response (%d); aigw stderr:\n%s", rc, h_tail(g.tag));
    cr_assert_eq(r.status, 200);
    cr_assert(r.until_close && !r.keep_alive, "a close-delimited body can only be passed on close-delimited:\n%s",
              r.head);
    assert_body(&r);
    h_resp_free(&r);
    cr_assert(h_wait_closed(&c, 2000 * h_slow(), NULL), "aigw kept the client connection open");
    h_close(&c);
    double spliced = h_metric0(g.admin_port, "aigw_relay_bytes_total{mode=\"splice\"}") - spliced0;
    cr_assert_geq(spliced, BIG_CHUNK - 256 * 1024, "spliced only %.0f bytes", spliced);
    h_finish();
}

/* Two requests on one client connection to a backend that closes every upstream
 * connection 50 ms after answering on it (without saying so): the second one
 * comes once the backend has closed the first connection. */
Test(relay, pooled_connection_closed_by_the_backend_is_dropped_not_reused)
{
    struct chunk_backend b;
    struct h_gw g = {0};
    start_behind(&b, MODE_KEEPALIVE_THEN_CLOSE, &g);
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    for (int i = 0; i < 2; i++) {
        for (int64_t until = h_now_ms() + T_RESP; atomic_load(&b.closed) < i; h_sleep_ms(2))
            cr_assert_lt(h_now_ms(), until, "the backend did not close its connection");
        struct h_resp r;
        int rc = h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_RESP);
        cr_assert_eq(rc, H_OK, "request %d: no response (%d); aigw stderr:\n%s", i, rc, h_tail(g.tag));
        cr_assert_eq(r.status, 200, "request %d: status %d %s", i, r.status, r.body);
        cr_assert_str_eq(r.body, "ok");
        h_resp_free(&r);
    }
    h_close(&c);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_upstream_connections_total{pool=\"local\",kind=\"reused\"}"), 0,
                 "a connection the backend closed while idle must not be reused");
    cr_assert_eq(atomic_load(&b.requests), 2);
    cr_assert_eq(atomic_load(&b.connections), 2);
    /* the second one, closed too, leaves the pool as soon as it is */
    for (int64_t until = h_now_ms() + T_RESP;
         h_metric0(g.admin_port, "aigw_connections{side=\"upstream\"}") != 0; h_sleep_ms(10))
        cr_assert_lt(h_now_ms(), until, "a pooled connection the backend closed is still held");
    h_finish();
}
