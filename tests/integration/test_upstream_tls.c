/* TLS to backends ([pool] tls = on): the backend is a TLS-fronted engine, a
 * second aigw ("front") with a [tls] listener in front of aigw-mockllm, which
 * requires an API key there. The aigw under test reaches it over TLS with the
 * test CA and tls_server_name = aigw.test, carrying the key as upstream_auth. */
#include "harness.h"

#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

TestSuite(upstream_tls, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_RESP (5000 * h_slow())
#define UPSTREAM_KEY "sk-front-7f3a9c"
#define HANDSHAKES(resumed) "aigw_upstream_tls_handshakes_total{pool=\"remote\",resumed=\"" resumed "\"}"
#define UPCONNS(kind) "aigw_upstream_connections_total{pool=\"remote\",kind=\"" kind "\"}"

/* The TLS-fronted engine: mockllm (mock_args), and front before it on a [tls]
 * listener (server.pem: aigw.test, localhost, 127.0.0.1), keys required, the
 * health and metrics paths routed too; front_timeouts: its [timeouts] (NULL:
 * the defaults). */
static void start_front(struct h_mock *m, struct h_gw *front, const char *mock_args, const char *front_timeouts)
{
    H_MOCK(m, "mock", mock_args);
    snprintf(front->tag, sizeof front->tag, "front");
    h_write_file(h_keys_path(), "%s", h_key_line("gateway", UPSTREAM_KEY, "default", NULL));
    h_gw_tls(front, NULL);
    h_gw_config(front, front_timeouts,
                H_STD_ROUTES "\n[route health]\npath = /health\npool = local\nkind = raw\n\n"
                             "[route metrics]\npath = /metrics\npool = local\nkind = raw\n\n"
                             "[keys]\nauth = required\nfile = %s\n",
                m->port, h_keys_path());
    H_GW(front);
}

/* The aigw under test: pool "remote" reaches front's TLS port with tls = on,
 * the test CA (or ca_file) and pool_extra lines. */
static void start_gw_at(struct h_gw *g, const char *tag, int port, const char *ca_file, const char *pool_extra)
{
    snprintf(g->tag, sizeof g->tag, "%s", tag);
    h_gw_config(g, NULL,
                "[pool remote]\nbackend = 127.0.0.1:%d\ntls = on\ntls_ca = %s\n%s\n"
                "[route chat]\npath = /v1/chat/completions\npool = remote\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = remote\nkind = raw\n",
                port, h_tls_file(ca_file ? ca_file : "ca.pem"), pool_extra);
    H_GW(g);
}

static void start_gw(struct h_gw *g, const char *tag, const struct h_gw *front, const char *ca_file,
                     const char *pool_extra)
{
    start_gw_at(g, tag, front->tls_port, ca_file, pool_extra);
}

static void expect_chat_ok(const struct h_gw *g, const struct h_gw *front)
{
    char body[512];
    struct h_resp r;
    h_chat_body(body, sizeof body, 4, false);
    cr_assert_eq(h_post(g->port, "/v1/chat/completions", body, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "through the TLS backend: %d %s\naigw:\n%s\nfront:\n%s", r.status, r.body,
                 h_tail(g->tag), h_tail(front->tag));
    cr_assert(strstr(r.body, "chat.completion"), "%s", r.body);
    h_resp_free(&r);
}

Test(upstream_tls, requests_and_a_stream_over_a_verified_backend_with_upstream_auth)
{
    struct h_mock m;
    struct h_gw front = {0}, g = {0}, no_auth = {0};
    start_front(&m, &front, "--tps 200 --ttft-ms 0", NULL);
    start_gw(&g, "aigw", &front, NULL,
             "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\n");

    expect_chat_ok(&g, &front);
    struct h_resp r;      /* a raw route: the body streams through as it comes */
    cr_assert_eq(h_post(g.port, "/v1/embeddings", "{\"model\":\"mock-llama-3.1-8b\",\"input\":\"hello\"}", &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "raw route over TLS: %d %s\n%s", r.status, r.body, h_tail(g.tag));
    cr_assert(strstr(r.body, "embedding"), "%s", r.body);
    h_resp_free(&r);

    /* a stream arrives whole, event by event, through the decrypting relay */
    struct h_conn c;
    struct h_resp head;
    H_CONNECT_GW(&c, &g);
    h_start_chat_stream(&c, 40, &head, g.tag);
    struct h_sse s;
    h_sse_init(&s, &c, &head);
    bool done;
    int rc, events = h_sse_data_events(&s, T_RESP, NULL, 0, &done, &rc);
    cr_assert(done, "the stream over TLS ended without [DONE] (rc %d after %d events); aigw:\n%s", rc, events,
              h_tail(g.tag));
    cr_assert_geq(events, 41, "only %d data events for 40 tokens", events);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&c);

    /* the front saw TLS handshakes from us, and only with the key: without
     * upstream_auth it refuses (its 401 passes through) */
    cr_assert_geq(h_metric0(front.admin_port, "aigw_tls_handshakes_total{result=\"ok\"}"), 1);
    start_gw(&no_auth, "aigw-noauth", &front, NULL, "tls_server_name = aigw.test\n");
    char small[512];
    h_chat_body(small, sizeof small, 4, false);
    cr_assert_eq(h_post(no_auth.port, "/v1/chat/completions", small, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 401, "without upstream_auth the key-checking backend answered %d %s", r.status, r.body);
    h_resp_free(&r);
    h_finish();
}

Test(upstream_tls, wrong_name_or_untrusted_ca_is_502_with_the_reason_logged)
{
    struct h_mock m;
    struct h_gw front = {0}, wrong_name = {0}, wrong_ca = {0};
    start_front(&m, &front, "--tps 0 --ttft-ms 0", NULL);
    start_gw(&wrong_name, "aigw-wrongname", &front, NULL,
             "tls_server_name = wrong.test\nupstream_auth = " UPSTREAM_KEY "\n");
    start_gw(&wrong_ca, "aigw-wrongca", &front, "wrongca.pem",
             "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\n");

    const struct h_gw *refused[] = { &wrong_name, &wrong_ca };
    char body[512];
    h_chat_body(body, sizeof body, 4, false);
    for (int i = 0; i < 2; i++) {
        struct h_resp r;
        cr_assert_eq(h_post(refused[i]->port, "/v1/chat/completions", body, &r, T_RESP), H_OK);
        cr_assert_eq(r.status, 502, "%s: a backend that does not verify answered %d %s", refused[i]->tag,
                     r.status, r.body);
        cr_assert(h_json_str_is(r.body, "code", "upstream_error"), "%s", r.body);
        h_resp_free(&r);
        cr_assert(h_wait_log_line(refused[i]->tag, "upstream 127.0.0.1:", "tls handshake failed", T_RESP),
                  "%s: the handshake failure is not in the error log:\n%s", refused[i]->tag,
                  h_tail(refused[i]->tag));
    }
    /* the access log names it too (both gateways write to the test's log) */
    char *log = h_wait_for_text(h_access_log_path(), "upstream tls handshake failed", T_RESP);
    cr_assert(log, "no access log line with the handshake failure");
    free(log);
    cr_assert_eq(h_metric0(m.port, "vllm:request_success_total"), 0,
                 "a request reached the engine through a backend that did not verify");
    h_finish();
}

Test(upstream_tls, keepalive_reuses_and_new_connections_resume)
{
    struct h_mock m;
    struct h_gw front = {0}, g = {0}, fresh = {0};
    start_front(&m, &front, "--tps 0 --ttft-ms 0", NULL);
    g.shards = 1;
    start_gw(&g, "aigw", &front, NULL, "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\n");

    /* one client connection, three requests: one upstream connection, kept */
    struct h_conn c;
    char body[512];
    h_chat_body(body, sizeof body, 4, false);
    H_CONNECT_GW(&c, &g);
    for (int i = 0; i < 3; i++) {
        struct h_resp r;
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_RESP),
                     H_OK);
        cr_assert_eq(r.status, 200, "request %d: %d %s\n%s", i, r.status, r.body, h_tail(g.tag));
        h_resp_free(&r);
    }
    /* a body of many records, then the connection is still good */
    char big[512];
    h_chat_body(big, sizeof big, 6000, false);
    struct h_resp r;
    cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", NULL, big, &r, T_RESP), H_OK);
    cr_assert_eq(r.status, 200, "large answer: %d\n%s", r.status, h_tail(g.tag));
    cr_assert_gt(r.body_len, 32768, "a 6000-token answer of only %zu bytes", r.body_len);
    cr_assert(strstr(r.body, "\"usage\""), "the large answer arrived cut");
    h_resp_free(&r);
    h_close(&c);
    cr_assert_eq(h_metric0(g.admin_port, UPCONNS("new")), 1, "the TLS upstream connection was not kept");
    cr_assert_eq(h_metric0(g.admin_port, UPCONNS("reused")), 3, "the TLS upstream connection was not reused");
    cr_assert_eq(h_metric0(g.admin_port, HANDSHAKES("no")), 1);

    /* keepalive = 0: every request opens a connection; from the second on it
     * resumes the session the one before saved */
    fresh.shards = 1;
    start_gw(&fresh, "aigw-fresh", &front, NULL,
             "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\nkeepalive = 0\n");
    for (int i = 0; i < 3; i++)
        expect_chat_ok(&fresh, &front);
    cr_assert_eq(h_metric0(fresh.admin_port, UPCONNS("new")), 3);
    cr_assert_eq(h_metric0(fresh.admin_port, HANDSHAKES("no")), 1, "only the first handshake is a full one");
    cr_assert_eq(h_metric0(fresh.admin_port, HANDSHAKES("yes")), 2, "new connections did not resume:\n%s",
                 h_tail(fresh.tag));
    double seen = h_metric0(front.admin_port, "aigw_tls_handshakes_total{result=\"ok\",resumed=\"yes\"}");
    cr_assert_geq(seen, 2, "the backend saw %g resumed handshakes (full: %g)", seen,
                  h_metric0(front.admin_port, "aigw_tls_handshakes_total{result=\"ok\",resumed=\"no\"}"));
    h_finish();
}

Test(upstream_tls, backend_closing_an_idle_tls_connection_retires_it)
{
    struct h_mock m;
    struct h_gw front = {0}, g = {0};
    /* the front closes idle client connections after 1 s */
    start_front(&m, &front, "--tps 0 --ttft-ms 0",
                "connect = 1s\nfirst_byte = 2s\nidle = 2s\nclient_header = 1s\nkeepalive = 1s\n");
    start_gw(&g, "aigw", &front, NULL,
             "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\nkeepalive_timeout = 60s\n");

    expect_chat_ok(&g, &front);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_connections{side=\"upstream\"}"), 1, "not pooled");
    double left = h_wait_metric(g.admin_port, "aigw_connections{side=\"upstream\"}", H_EQ, 0, 5000 * h_slow());
    cr_assert_eq(left, 0, "the pooled TLS connection the backend closed was not retired:\n%s", h_tail(g.tag));

    /* the next request gets a new connection and succeeds: nothing stale was used */
    expect_chat_ok(&g, &front);
    cr_assert_eq(h_metric0(g.admin_port, UPCONNS("new")), 2);
    cr_assert_eq(h_metric0(g.admin_port, UPCONNS("reused")), 0);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_requests_total{status=\"502\"}"), 0);
    h_finish();
}

Test(upstream_tls, health_checks_and_metrics_scrapes_speak_tls)
{
    struct h_mock m;
    struct h_gw front = {0}, g = {0}, wrong = {0};
    start_front(&m, &front, "--tps 0 --ttft-ms 0", NULL);
    /* capacity pools scrape /metrics and check /health by default */
    start_gw(&g, "aigw", &front, NULL,
             "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\nbalance = capacity\n"
             "metrics_interval = 100ms\nhealth_interval = 100ms\n");
    double health = h_wait_metric(front.admin_port, "aigw_requests_total{route=\"health\",status=\"200\"}", H_GE,
                                  3, 5000 * h_slow());
    cr_assert_geq(health, 3, "no health checks reached the backend over TLS:\n%s", h_tail(g.tag));
    double scrapes = h_wait_metric(front.admin_port, "aigw_requests_total{route=\"metrics\",status=\"200\"}", H_GE,
                                   3, 5000 * h_slow());
    cr_assert_geq(scrapes, 3, "no metrics scrapes reached the backend over TLS:\n%s", h_tail(g.tag));
    cr_assert_eq(h_metric0(g.admin_port, "aigw_backend_up{pool=\"remote\"}"), 1);
    /* a scrape was read whole: the engine's KV use is published (only while fresh) */
    double kv = NAN;
    for (int64_t end = h_now_ms() + 5000 * h_slow(); isnan(kv) && h_now_ms() < end; h_sleep_ms(50))
        kv = h_metric(g.admin_port, "aigw_backend_kv_cache_usage_ratio{pool=\"remote\"}");
    cr_assert(!isnan(kv), "no metrics scrape over TLS was read:\n%s", h_tail(g.tag));
    expect_chat_ok(&g, &front);

    /* a check that cannot verify fails: the backend goes down */
    start_gw(&wrong, "aigw-wrongname", &front, NULL,
             "tls_server_name = wrong.test\nbalance = capacity\nhealth_interval = 1s\n");
    cr_assert(h_wait_log_line(wrong.tag, "down:", "tls handshake failed", 5000 * h_slow()),
              "a health check that failed verification did not take the backend down:\n%s", h_tail(wrong.tag));
    h_finish();
}

/* A TCP relay between aigw and the front that hands the front's bytes on one
 * TLS record at a time, a little apart: a handshake flight arrives in pieces,
 * the last ones while the client is still working on those before. */
#define RELAY_PAIRS 8
#define RELAY_BUF 65536

struct record_relay {
    int lfd, port, to_port;
    atomic_bool stop;
    pthread_t th;
    atomic_int pieces;          /* records handed on by themselves */
    struct relay_pair {
        int c, s;               /* aigw's side, the front's side */
        size_t len;
        char buf[RELAY_BUF];    /* the front's bytes not handed on yet */
    } pair[RELAY_PAIRS];
};

static void relay_pair_close(struct relay_pair *p)
{
    if (p->c >= 0)
        close(p->c);
    if (p->s >= 0)
        close(p->s);
    p->c = p->s = -1;
    p->len = 0;
}

static void relay_accept(struct record_relay *r)
{
    int c = accept(r->lfd, NULL, NULL);
    if (c < 0)
        return;
    struct relay_pair *p = NULL;
    for (int i = 0; i < RELAY_PAIRS && !p; i++)
        if (r->pair[i].c < 0)
            p = &r->pair[i];
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->to_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (!p || s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(c);
        if (s >= 0)
            close(s);
        return;
    }
    p->c = c;
    p->s = s;
    p->len = 0;
}

/* The front's bytes: every whole record goes on by itself, 300 us apart. */
static bool relay_from_front(struct record_relay *r, struct relay_pair *p)
{
    ssize_t n = read(p->s, p->buf + p->len, RELAY_BUF - p->len);
    if (n <= 0) {
        h_write_all(p->c, p->buf, p->len);
        return false;
    }
    p->len += (size_t)n;
    size_t off = 0;
    while (p->len - off >= 5) {
        size_t rec = 5 + (((size_t)(uint8_t)p->buf[off + 3] << 8) | (uint8_t)p->buf[off + 4]);
        if (p->len - off < rec)
            break;
        if (!h_write_all(p->c, p->buf + off, rec))
            return false;
        atomic_fetch_add(&r->pieces, 1);
        off += rec;
        usleep(300);
    }
    memmove(p->buf, p->buf + off, p->len - off);
    p->len -= off;
    if (p->len == RELAY_BUF) {          /* not TLS: hand it on as it is */
        bool ok = h_write_all(p->c, p->buf, p->len);
        p->len = 0;
        return ok;
    }
    return true;
}

static void *record_relay_main(void *arg)
{
    struct record_relay *r = arg;
    while (!atomic_load(&r->stop)) {
        struct pollfd pfd[1 + 2 * RELAY_PAIRS];
        int map[1 + 2 * RELAY_PAIRS];
        int n = 0;
        pfd[n++] = (struct pollfd){ r->lfd, POLLIN, 0 };
        for (int i = 0; i < RELAY_PAIRS; i++) {
            if (r->pair[i].c < 0)
                continue;
            map[n] = 2 * i;
            pfd[n++] = (struct pollfd){ r->pair[i].c, POLLIN, 0 };
            map[n] = 2 * i + 1;
            pfd[n++] = (struct pollfd){ r->pair[i].s, POLLIN, 0 };
        }
        if (poll(pfd, (nfds_t)n, 50) <= 0)
            continue;
        for (int k = 1; k < n; k++) {
            struct relay_pair *p = &r->pair[map[k] / 2];
            if (!pfd[k].revents || p->c < 0)
                continue;
            bool ok;
            if (map[k] % 2) {
                ok = relay_from_front(r, p);
            } else {
                char b[16384];
                ssize_t got = read(p->c, b, sizeof b);
                ok = got > 0 && h_write_all(p->s, b, (size_t)got);
            }
            if (!ok)
                relay_pair_close(p);
        }
        if (pfd[0].revents)
            relay_accept(r);
    }
    for (int i = 0; i < RELAY_PAIRS; i++)
        relay_pair_close(&r->pair[i]);
    return NULL;
}

Test(upstream_tls, probes_read_a_handshake_that_arrives_record_by_record)
{
    /* Bytes read while sending are bytes poll will not report again: a probe
     * that left the end of the front's flight unread waited out its timeout. */
    struct h_mock m;
    struct h_gw front = {0}, g = {0};
    start_front(&m, &front, "--tps 0 --ttft-ms 0", NULL);
    struct record_relay *r = calloc(1, sizeof *r);
    cr_assert(r);
    for (int i = 0; i < RELAY_PAIRS; i++)
        r->pair[i].c = r->pair[i].s = -1;
    r->to_port = front.tls_port;
    r->lfd = h_listen_loopback(&r->port);
    cr_assert_eq(pthread_create(&r->th, NULL, record_relay_main, r), 0);
    start_gw_at(&g, "aigw", r->port, NULL,
                "tls_server_name = aigw.test\nupstream_auth = " UPSTREAM_KEY "\nbalance = capacity\n"
                "metrics_interval = 100ms\nhealth_interval = 500ms\n");

    double scrapes = h_wait_metric(front.admin_port, "aigw_requests_total{route=\"metrics\",status=\"200\"}", H_GE,
                                   30, 20000 * h_slow());
    double health = h_wait_metric(front.admin_port, "aigw_requests_total{route=\"health\",status=\"200\"}", H_GE,
                                  4, 5000 * h_slow());
    atomic_store(&r->stop, true);
    pthread_join(r->th, NULL);
    close(r->lfd);
    int pieces = atomic_load(&r->pieces);
    free(r);
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), g.tag);
    char *log = h_read_file(path);
    cr_assert(log);
    const char *stuck = strstr(log, "timed out");
    cr_assert_null(stuck, "a probe waited for bytes it had already read:\n%.300s", stuck);
    free(log);
    cr_assert_geq(scrapes, 30, "%g scrapes went through the relay:\n%s", scrapes, h_tail(g.tag));
    cr_assert_geq(health, 4, "%g health checks went through the relay:\n%s", health, h_tail(g.tag));
    cr_assert_geq(pieces, 34 * 3, "the relay handed on only %d records", pieces);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_backend_up{pool=\"remote\"}"), 1);
    h_finish();
}

/* A plaintext backend behind the front that keeps the head of the one request
 * it answers: what Host the TLS hop carried. */
struct host_probe {
    int fd, port;
    pthread_t th;
    char head[4096];
};

static void *host_probe_main(void *arg)
{
    struct host_probe *p = arg;
    int c = accept(p->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    size_t have = 0;
    while (have < sizeof p->head - 1 && !strstr(p->head, "\r\n\r\n")) {
        ssize_t n = read(c, p->head + have, sizeof p->head - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        p->head[have] = '\0';
    }
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    h_write_all(c, ok, sizeof ok - 1);
    close(c);
    return NULL;
}

Test(upstream_tls, the_backend_is_asked_for_by_its_verified_name)
{
    /* A TLS service is found by its name (SNI, then Host): the client's Host
     * names the gateway, not the service behind it. */
    struct host_probe p = {0};
    p.fd = h_listen_loopback(&p.port);
    cr_assert_eq(pthread_create(&p.th, NULL, host_probe_main, &p), 0);
    struct h_gw front = {0}, g = {0};
    snprintf(front.tag, sizeof front.tag, "front");
    h_gw_tls(&front, NULL);
    h_gw_config(&front, NULL, "[pool local]\nbackend = 127.0.0.1:%d\n\n[route all]\npath = /*\npool = local\nkind = raw\n",
                p.port);
    H_GW(&front);
    start_gw(&g, "aigw", &front, NULL, "tls_server_name = aigw.test\n");

    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, &g);
    cr_assert_eq(h_sendf(&c, "GET /v1/anything HTTP/1.1\r\nHost: gateway.example\r\n\r\n"), 0);
    cr_assert_eq(h_recv(&c, &r, T_RESP), H_OK, "no answer; aigw:\n%s", h_tail(g.tag));
    cr_assert_eq(r.status, 200, "%d %s\naigw:\n%s", r.status, r.body, h_tail(g.tag));
    h_resp_free(&r);
    h_close(&c);
    pthread_join(p.th, NULL);
    close(p.fd);
    char want[64];
    snprintf(want, sizeof want, "\r\nHost: aigw.test:%d\r\n", front.tls_port);
    cr_assert(strstr(p.head, want), "the backend did not get %s; its head:\n%s", want + 2, p.head);
    cr_assert_null(strstr(p.head, "gateway.example"), "the client's Host reached the TLS backend:\n%s", p.head);
    h_finish();
}
