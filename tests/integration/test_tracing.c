/* OpenTelemetry traces: what reaches a collector (the harness's OTLP/HTTP
 * receiver) for requests through aigw, the traceparent the backend receives
 * (aigw-mockllm --log-traceparent prints it), and requests staying fast while
 * the collector is dead or hung. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(tracing, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_REQ (10000 * h_slow())
#define T_SPANS (5000 * h_slow())
#define KEY_ALICE "sk-itest-trace-alice-4Qx8"

#define CLIENT_TRACE "4bf92f3577b34da6a3ce929d0e0e4736"
#define CLIENT_SPAN "00f067aa0ba902b7"

#define TRACE_ROUTES                                                         \
    "[pool local]\nbackend = 127.0.0.1:%d\n\n"                               \
    "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n" \
    "[route all]\npath = /v1/*\npool = local\nkind = raw\n\n"                \
    "[keys]\nauth = required\nfile = %s\n\n"                                 \
    "[tracing]\notlp_endpoint = http://127.0.0.1:%d/v1/traces\nsample_ratio = %s\nservice_name = aigw-itest\n"

/* ---- reading the OTLP JSON back ---- */

#define MAX_SPANS 64
struct spans {
    int n;
    char *text[MAX_SPANS];      /* each span object's text (and what follows it up to the next) */
};

static void spans_split(struct spans *s, const char *bodies)
{
    static const char start[] = "{\"traceId\":";
    s->n = 0;
    const char *p = strstr(bodies, start);
    while (p && s->n < MAX_SPANS) {
        const char *next = strstr(p + 1, start);
        size_t len = next ? (size_t)(next - p) : strlen(p);
        s->text[s->n++] = strndup(p, len);
        p = next;
    }
}

static void spans_free(struct spans *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->text[i]);
    s->n = 0;
}

/* A top-level string field ("spanId"...) of a span, "" when absent. */
static const char *field(const char *span, const char *name, char *out, size_t cap)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":\"", name);
    const char *p = strstr(span, key);
    out[0] = 0;
    if (p) {
        p += strlen(key);
        size_t n = strcspn(p, "\"");
        snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
    }
    return out;
}

/* An attribute's value (stringValue or intValue) as text; NULL when absent. */
static const char *attr(const char *span, const char *name, char *out, size_t cap)
{
    char key[128];
    snprintf(key, sizeof key, "{\"key\":\"%s\",\"value\":{\"", name);
    const char *p = strstr(span, key);
    if (!p)
        return NULL;
    p = strchr(p + strlen(key), ':');
    if (!p || p[1] != '"')
        return NULL;
    p += 2;
    size_t n = strcspn(p, "\"");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
    return out;
}

static bool is_kind(const char *span, int kind)
{
    char k[16];
    snprintf(k, sizeof k, "\"kind\":%d,", kind);
    return strstr(span, k) != NULL;
}

#define EXPECT_ATTR(span, name, want)                                                       \
    do {                                                                                    \
        char v_[256];                                                                       \
        const char *got_ = attr((span), (name), v_, sizeof v_);                             \
        cr_expect(got_ && strcmp(got_, (want)) == 0, "%s: got %s, want %s\nspan: %s", (name), \
                  got_ ? got_ : "(absent)", (want), (span));                                \
    } while (0)

/* ---- requests ---- */

/* A chat completion with key alice and extra headers; returns the status, and
 * the response body in body (may be NULL). */
static int chat(const struct h_gw *g, const char *extra, char *body, size_t cap)
{
    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, g);
    char hdr[512], req[256];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s%s", h_bearer(KEY_ALICE), extra ? extra : "");
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, h_chat_body(req, sizeof req, 5, false), &r, T_REQ);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "no complete response (%d)\n%s", rc, h_tail(g->tag));
    if (body)
        snprintf(body, cap, "%s", r.body ? r.body : "");
    int status = r.status;
    h_resp_free(&r);
    return status;
}

static void start(struct h_mock *m, struct h_gw *g, int collector_port, const char *ratio, const char *mock_args)
{
    H_MOCK(m, "mock", mock_args);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", NULL));
    h_gw_config(g, NULL, TRACE_ROUTES, m->port, h_keys_path(), collector_port, ratio);
    H_GW(g);
}

Test(tracing, client_span_parents_aigw_span_which_parents_the_attempt_the_backend_sees)
{
    struct h_otlp *o = h_otlp_start(H_OTLP_OK);
    struct h_mock m;
    struct h_gw g = { 0 };
    start(&m, &g, h_otlp_port(o), "0", "--tps 0 --log-traceparent");

    char resp[4096];
    cr_assert_eq(chat(&g, "traceparent: 00-" CLIENT_TRACE "-" CLIENT_SPAN "-01\r\ntracestate: vendor=x\r\n", resp,
                      sizeof resp), 200);
    char *bodies = h_otlp_wait_spans(o, 2, T_SPANS);
    struct spans s;
    spans_split(&s, bodies);
    cr_assert_eq(s.n, 2, "spans received:\n%s", bodies);
    const char *server = is_kind(s.text[0], 2) ? s.text[0] : s.text[1];
    const char *attempt = server == s.text[0] ? s.text[1] : s.text[0];
    cr_assert(is_kind(server, 2) && is_kind(attempt, 3), "one SERVER and one CLIENT span:\n%s", bodies);

    char a[64], b[64];
    /* the client's span -> aigw's SERVER span -> the attempt's CLIENT span */
    cr_expect_str_eq(field(server, "traceId", a, sizeof a), CLIENT_TRACE);
    cr_expect_str_eq(field(attempt, "traceId", a, sizeof a), CLIENT_TRACE);
    cr_expect_str_eq(field(server, "parentSpanId", a, sizeof a), CLIENT_SPAN);
    cr_expect_str_eq(field(attempt, "parentSpanId", a, sizeof a), field(server, "spanId", b, sizeof b));
    cr_expect_str_eq(field(server, "name", a, sizeof a), "POST /v1/chat/completions");

    /* the backend got one traceparent, naming the attempt span, and tracestate as sent */
    char want[128];
    snprintf(want, sizeof want, "traceparent 1 00-%s-%s-01\n", CLIENT_TRACE, field(attempt, "spanId", a, sizeof a));
    char path[600];
    snprintf(path, sizeof path, "%s/mock.out", h_dir());
    char *seen = h_wait_for_text(path, want, T_SPANS);
    cr_expect(seen, "the backend's log lacks '%s':\n%s", want, h_tail_out("mock"));
    free(seen);

    /* attributes: HTTP, GenAI (usage as the mock reported it), aigw's own */
    char num[32];
    EXPECT_ATTR(server, "http.request.method", "POST");
    EXPECT_ATTR(server, "url.path", "/v1/chat/completions");
    EXPECT_ATTR(server, "http.response.status_code", "200");
    EXPECT_ATTR(server, "network.peer.address", "127.0.0.1");
    EXPECT_ATTR(server, "gen_ai.operation.name", "chat");
    EXPECT_ATTR(server, "gen_ai.request.model", "mock-llama-3.1-8b");
    EXPECT_ATTR(server, "gen_ai.response.model", "mock-llama-3.1-8b");
    EXPECT_ATTR(server, "gen_ai.request.max_tokens", "5");
    snprintf(num, sizeof num, "%lld", h_json_int(resp, "prompt_tokens"));
    EXPECT_ATTR(server, "gen_ai.usage.input_tokens", num);
    snprintf(num, sizeof num, "%lld", h_json_int(resp, "completion_tokens"));
    EXPECT_ATTR(server, "gen_ai.usage.output_tokens", num);
    EXPECT_ATTR(server, "aigw.key", "alice");
    EXPECT_ATTR(server, "aigw.route", "chat");
    EXPECT_ATTR(server, "aigw.pool", "local");
    EXPECT_ATTR(server, "aigw.retries", "0");
    EXPECT_ATTR(server, "aigw.queue_wait_ms", "0");
    char backend[64];
    snprintf(backend, sizeof backend, "127.0.0.1:%d", m.port);
    EXPECT_ATTR(server, "aigw.backend", backend);
    EXPECT_ATTR(attempt, "server.address", "127.0.0.1");
    snprintf(num, sizeof num, "%d", m.port);
    EXPECT_ATTR(attempt, "server.port", num);
    EXPECT_ATTR(attempt, "http.response.status_code", "200");
    cr_expect_null(strstr(server, "\"status\":{"), "no error status on a 200");
    cr_expect_null(strstr(bodies, KEY_ALICE), "the key itself never leaves aigw");
    cr_expect(strstr(bodies, "{\"key\":\"service.name\",\"value\":{\"stringValue\":\"aigw-itest\"}}"));

    char *head = h_otlp_first_head(o);
    cr_expect(strncmp(head, "POST /v1/traces HTTP/1.1\r\n", 26) == 0, "%s", head);
    cr_expect(strcasestr(head, "\r\nContent-Type: application/json\r\n"), "%s", head);
    free(head);
    cr_expect_eq(h_wait_metric(g.admin_port, "aigw_trace_spans_total{result=\"exported\"}", H_EQ, 2, T_SPANS), 2);
    cr_expect_eq(h_metric0(g.admin_port, "aigw_trace_spans_total{result=\"dropped\"}"), 0);
    spans_free(&s);
    free(bodies);
    h_finish();
    h_otlp_stop(o);
}

Test(tracing, a_retry_shows_two_attempt_spans_under_one_server_span)
{
    struct h_otlp *o = h_otlp_start(H_OTLP_OK);
    struct h_mock m;
    struct h_gw g = { 0 };
    H_MOCK(&m, "mock", "--tps 0 --log-traceparent");
    int dead = h_free_port();
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", NULL));
    /* the dead backend first in a round robin: each shard's first request tries it */
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tracing]\notlp_endpoint = http://127.0.0.1:%d/v1/traces\nsample_ratio = 1\n",
                dead, m.port, h_keys_path(), h_otlp_port(o));
    H_GW(&g);

    /* every request succeeds; spans arrive until one request shows the retry */
    const char *retried = NULL;
    struct spans s = { 0 };
    char *bodies = NULL;
    for (int i = 0; i < 8 && !retried; i++) {
        cr_assert_eq(chat(&g, NULL, NULL, 0), 200);
        free(bodies);
        spans_free(&s);
        bodies = h_otlp_wait_spans(o, 1, T_SPANS);
        spans_split(&s, bodies);
        char v[32];
        for (int k = 0; k < s.n && !retried; k++)
            if (is_kind(s.text[k], 2) && attr(s.text[k], "aigw.retries", v, sizeof v) && strcmp(v, "1") == 0)
                retried = s.text[k];
    }
    /* wait for the whole batch that carries that request's attempts */
    cr_assert(retried, "no request retried after 8:\n%s", bodies);
    char id[64], trace[64], p[64], t[64];
    field(retried, "spanId", id, sizeof id);
    field(retried, "traceId", trace, sizeof trace);
    int attempts = 0, failed = 0;
    for (int k = 0; k < s.n; k++) {
        if (!is_kind(s.text[k], 3) || strcmp(field(s.text[k], "parentSpanId", p, sizeof p), id) != 0)
            continue;
        cr_expect_str_eq(field(s.text[k], "traceId", t, sizeof t), trace);
        attempts++;
        char port[16];
        if (strstr(s.text[k], "\"status\":{\"code\":2")) {
            failed++;
            snprintf(port, sizeof port, "%d", dead);
            EXPECT_ATTR(s.text[k], "server.port", port);
            cr_expect(strstr(s.text[k], "\"message\":\""), "a failed attempt says why: %s", s.text[k]);
        } else {
            snprintf(port, sizeof port, "%d", m.port);
            EXPECT_ATTR(s.text[k], "server.port", port);
            EXPECT_ATTR(s.text[k], "http.response.status_code", "200");
        }
    }
    cr_expect_eq(attempts, 2, "attempt spans under %s:\n%s", id, bodies);
    cr_expect_eq(failed, 1, "one failed attempt:\n%s", bodies);

    /* a raw route's head is written once: its retry rewrites the traceparent in
     * place, so the backend sees the second attempt's span as parent */
    char retried_raw_attempt[64] = "";
    for (int i = 0; i < 8 && !retried_raw_attempt[0]; i++) {
        struct h_conn c;
        struct h_resp r;
        H_CONNECT_GW(&c, &g);
        char hdr[256];
        snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", h_bearer(KEY_ALICE));
        cr_assert_eq(h_request(&c, "GET", "/v1/raw-thing", hdr, NULL, &r, T_REQ), H_OK, "%s", h_tail(g.tag));
        h_close(&c);
        h_resp_free(&r);
        int before = s.n;
        free(bodies);
        spans_free(&s);
        bodies = h_otlp_wait_spans(o, before + 2, T_SPANS);
        spans_split(&s, bodies);
        char v[32];
        for (int k = 0; k < s.n && !retried_raw_attempt[0]; k++) {
            if (!is_kind(s.text[k], 2) || !strstr(s.text[k], "\"name\":\"GET /v1/*\"") ||
                !attr(s.text[k], "aigw.retries", v, sizeof v) || strcmp(v, "1") != 0)
                continue;
            field(s.text[k], "spanId", id, sizeof id);
            for (int j = 0; j < s.n; j++)
                if (is_kind(s.text[j], 3) && strcmp(field(s.text[j], "parentSpanId", p, sizeof p), id) == 0 &&
                    !strstr(s.text[j], "\"status\":{\"code\":2"))
                    field(s.text[j], "spanId", retried_raw_attempt, sizeof retried_raw_attempt);
        }
    }
    cr_assert(retried_raw_attempt[0], "no raw request retried after 8:\n%s", bodies);
    char want[128], path[600];
    snprintf(want, sizeof want, "-%s-01\n", retried_raw_attempt);
    snprintf(path, sizeof path, "%s/mock.out", h_dir());
    char *seen = h_wait_for_text(path, want, T_SPANS);
    cr_expect(seen, "the backend's log lacks the answering attempt's span %s:\n%s", retried_raw_attempt,
              h_tail_out("mock"));
    free(seen);
    spans_free(&s);
    free(bodies);
    h_finish();
    h_otlp_stop(o);
}

Test(tracing, ratio_zero_exports_only_requests_whose_parent_is_sampled)
{
    struct h_otlp *o = h_otlp_start(H_OTLP_OK);
    struct h_mock m;
    struct h_gw g = { 0 };
    start(&m, &g, h_otlp_port(o), "0", "--tps 0 --log-traceparent");
    char path[600];
    snprintf(path, sizeof path, "%s/mock.out", h_dir());

    for (int i = 0; i < 5; i++)
        cr_assert_eq(chat(&g, NULL, NULL, 0), 200);
    /* an unsampled parent: not traced, and its traceparent passes through as sent */
    cr_assert_eq(chat(&g, "traceparent: 00-" CLIENT_TRACE "-" CLIENT_SPAN "-00\r\n", NULL, 0), 200);
    char *seen = h_wait_for_text(path, "traceparent 1 00-" CLIENT_TRACE "-" CLIENT_SPAN "-00\n", T_SPANS);
    cr_expect(seen, "the unsampled parent went upstream unchanged:\n%s", h_tail_out("mock"));
    free(seen);
    /* an invalid one (all-zero trace id) counts as no parent: ratio 0 traces nothing */
    cr_assert_eq(chat(&g, "traceparent: 00-00000000000000000000000000000000-" CLIENT_SPAN "-01\r\n", NULL, 0), 200);
    /* a sampled parent is traced whatever the ratio */
    cr_assert_eq(chat(&g, "traceparent: 00-" CLIENT_TRACE "-" CLIENT_SPAN "-01\r\n", NULL, 0), 200);

    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_trace_spans_total{result=\"exported\"}", H_GE, 2, T_SPANS), 2);
    char *bodies = h_otlp_wait_spans(o, 2, T_SPANS);
    struct spans s;
    spans_split(&s, bodies);
    cr_expect_eq(s.n, 2, "only the sampled request's two spans:\n%s", bodies);
    char t[64];
    for (int k = 0; k < s.n; k++)
        cr_expect_str_eq(field(s.text[k], "traceId", t, sizeof t), CLIENT_TRACE);
    spans_free(&s);
    free(bodies);
    h_finish();
    h_otlp_stop(o);
}

/* Sequential requests on one kept-alive connection, each timed; the slowest. */
static int64_t slowest_of(const struct h_gw *g, int n)
{
    struct h_conn c;
    H_CONNECT_GW(&c, g);
    char req[256], hdr[256];
    snprintf(hdr, sizeof hdr, "%s", h_bearer(KEY_ALICE));
    h_chat_body(req, sizeof req, 2, false);
    int64_t worst = 0;
    for (int i = 0; i < n; i++) {
        struct h_resp r;
        int64_t t0 = h_now_ms();
        int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, req, &r, T_REQ);
        int64_t took = h_now_ms() - t0;
        cr_assert_eq(rc, H_OK, "request %d: %d\n%s", i, rc, h_tail(g->tag));
        cr_assert_eq(r.status, 200, "request %d: %d", i, r.status);
        h_resp_free(&r);
        if (took > worst)
            worst = took;
    }
    h_close(&c);
    return worst;
}

static void collector_fails_requests_do_not_notice(int collector_port)
{
    struct h_mock m;
    struct h_gw g = { 0 };
    start(&m, &g, collector_port, "1", "--tps 0");
    /* 40 requests over more than one export cycle (200 ms) with the exporter
     * stuck in 1 s timeouts: each stays far below that */
    int64_t t0 = h_now_ms();
    int64_t worst = 0;
    while (h_now_ms() - t0 < 1500) {
        int64_t w = slowest_of(&g, 10);
        if (w > worst)
            worst = w;
    }
    cr_expect_lt(worst, 500 * h_slow(), "slowest request %lld ms while the collector failed", (long long)worst);
    cr_expect_geq(h_wait_metric(g.admin_port, "aigw_trace_export_errors_total", H_GE, 1, T_SPANS), 1,
                  "%s", h_tail(g.tag));
    cr_expect_geq(h_wait_metric(g.admin_port, "aigw_trace_spans_total{result=\"dropped\"}", H_GE, 2, T_SPANS), 2);
    cr_expect_eq(h_metric0(g.admin_port, "aigw_trace_spans_total{result=\"exported\"}"), 0);
    cr_expect(h_wait_log_line(g.tag, "tracing: collector", "spans dropped", T_SPANS), "%s", h_tail(g.tag));
    h_finish();
}

Test(tracing, a_dead_collector_costs_dropped_spans_not_latency)
{
    collector_fails_requests_do_not_notice(h_free_port());
}

Test(tracing, a_hung_collector_costs_dropped_spans_not_latency)
{
    struct h_otlp *o = h_otlp_start(H_OTLP_STALL);
    collector_fails_requests_do_not_notice(h_otlp_port(o));
    cr_expect_geq(h_otlp_posts(o), 1, "the exporter did reach the hung collector");
    h_otlp_stop(o);
}

Test(tracing, a_reload_moves_spans_to_the_new_collector_and_off_stops_them)
{
    struct h_otlp *a = h_otlp_start(H_OTLP_OK), *b = h_otlp_start(H_OTLP_OK);
    struct h_mock m;
    struct h_gw g = { 0 };
    start(&m, &g, h_otlp_port(a), "1", "--tps 0");
    cr_assert_eq(chat(&g, NULL, NULL, 0), 200);
    free(h_otlp_wait_spans(a, 2, T_SPANS));
    cr_assert_eq(h_otlp_spans(a), 2);

    h_gw_config(&g, NULL, TRACE_ROUTES, m.port, h_keys_path(), h_otlp_port(b), "1");
    H_RELOAD(&g, H_RELOAD_APPLIED);
    /* the exporter takes the new endpoint on its next turn (every 20 ms) */
    for (int i = 0; i < 5 && h_otlp_spans(b) == 0; i++) {
        cr_assert_eq(chat(&g, NULL, NULL, 0), 200);
        free(h_otlp_wait_spans(b, 2, 1000 * h_slow()));
    }
    cr_expect_geq(h_otlp_spans(b), 2, "the new collector got the spans:\n%s", h_tail(g.tag));
    int on_a = h_otlp_spans(a);
    cr_expect(h_wait_log_line(g.tag, "tracing: exporting spans to", "", T_SPANS));

    /* tracing off: nothing more to either */
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = local\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                m.port, h_keys_path());
    H_RELOAD(&g, H_RELOAD_APPLIED);
    double exported = h_metric0(g.admin_port, "aigw_trace_spans_total{result=\"exported\"}");
    int on_b = h_otlp_spans(b);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(chat(&g, NULL, NULL, 0), 200);
    /* requests of the new generation make no span at all; the exporter says it stopped */
    cr_expect(h_wait_log_line(g.tag, "tracing: off", NULL, T_SPANS), "%s", h_tail(g.tag));
    cr_expect_eq(h_metric0(g.admin_port, "aigw_trace_spans_total{result=\"exported\"}"), exported);
    cr_expect_eq(h_otlp_spans(a), on_a);
    cr_expect_eq(h_otlp_spans(b), on_b);
    h_finish();
    h_otlp_stop(a);
    h_otlp_stop(b);
}

Test(tracing, a_raw_route_forwards_one_traceparent_naming_its_attempt)
{
    struct h_otlp *o = h_otlp_start(H_OTLP_OK);
    struct h_mock m;
    struct h_gw g = { 0 };
    start(&m, &g, h_otlp_port(o), "0", "--tps 0 --log-traceparent");

    /* two traceparent headers from the client: the backend still gets one, aigw's */
    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, &g);
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%straceparent: 00-" CLIENT_TRACE "-" CLIENT_SPAN "-01\r\n"
             "traceparent: 00-" CLIENT_TRACE "-1111111111111111-01\r\n", h_bearer(KEY_ALICE));
    cr_assert_eq(h_request(&c, "GET", "/v1/some/thing?x=1", hdr, NULL, &r, T_REQ), H_OK, "%s", h_tail(g.tag));
    h_close(&c);
    int status = r.status;
    h_resp_free(&r);

    char *bodies = h_otlp_wait_spans(o, 2, T_SPANS);
    struct spans s;
    spans_split(&s, bodies);
    cr_assert_eq(s.n, 2, "%s", bodies);
    const char *server = is_kind(s.text[0], 2) ? s.text[0] : s.text[1];
    const char *attempt = server == s.text[0] ? s.text[1] : s.text[0];
    char a[128], num[16];
    cr_expect_str_eq(field(server, "name", a, sizeof a), "GET /v1/*");
    cr_expect_str_eq(field(server, "parentSpanId", a, sizeof a), CLIENT_SPAN);
    EXPECT_ATTR(server, "url.path", "/v1/some/thing");
    EXPECT_ATTR(server, "aigw.route", "all");
    snprintf(num, sizeof num, "%d", status);
    EXPECT_ATTR(server, "http.response.status_code", num);
    EXPECT_ATTR(attempt, "http.response.status_code", num);
    cr_expect_null(attr(server, "gen_ai.operation.name", a, sizeof a), "not an AI request");

    char want[128], path[600];
    snprintf(want, sizeof want, "traceparent 1 00-%s-%s-01\n", CLIENT_TRACE, field(attempt, "spanId", a, sizeof a));
    snprintf(path, sizeof path, "%s/mock.out", h_dir());
    char *seen = h_wait_for_text(path, want, T_SPANS);
    cr_expect(seen, "the backend's log lacks '%s':\n%s", want, h_tail_out("mock"));
    free(seen);
    spans_free(&s);
    free(bodies);
    h_finish();
    h_otlp_stop(o);
}
