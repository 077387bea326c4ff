/* Runtime control of backends through the admin API (issue 13 item 4): drain
 * one GPU under load and see no new request reach it while its streams finish;
 * disable and enable it; move the split with weights; the API's errors; what a
 * reload keeps; the shape of GET /backends. The backends are aigw-mockllm, whose
 * own mockllm_requests_total says which one served what. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(backend_control, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_REQ (5000 * h_slow())
#define T_WAIT (10000 * h_slow())
#define ADMIN_TOKEN "adm-itest-bc-5Hq2Zr"
#define AUTH "Authorization: Bearer " ADMIN_TOKEN "\r\n"
#define TIMEOUTS "connect = 1s\nfirst_byte = 10s\nidle = 10s\nclient_header = 2s\nkeepalive = 10s\n"

/* two backends (weights from the caller), round robin, chat through an ai route */
#define POOL_AB                                                                                  \
    "[pool gpu]\nbackend = 127.0.0.1:%d%s\nbackend = 127.0.0.1:%d%s\nbalance = round_robin\n"    \
    "health = /health\nhealth_interval = 50ms\n\n"                                               \
    "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n"

static void with_token(struct h_gw *g)
{
    snprintf(g->admin_extra, sizeof g->admin_extra, "token = %s\n", ADMIN_TOKEN);
    h_admin_token(ADMIN_TOKEN);
}

static void start_ab(struct h_mock *a, struct h_mock *b, struct h_gw *g, const char *mock_args)
{
    H_MOCK(a, "mock-a", mock_args);
    H_MOCK(b, "mock-b", mock_args);
    with_token(g);
    h_gw_config(g, TIMEOUTS, POOL_AB, a->port, "", b->port, "");
    H_GW(g);
}

/* method path on the admin port (headers: extra lines, may be NULL); the caller frees r */
static void admin(const struct h_gw *g, const char *method, const char *path, const char *headers,
                  struct h_resp *r)
{
    struct h_conn c;
    cr_assert_eq(h_connect(&c, g->admin_port), 0, "admin connect");
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", headers ? headers : "");
    int rc = h_request(&c, method, path, hdr, NULL, r, T_REQ);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "admin %s %s: no complete response (%d)\n%s", method, path, rc, h_tail(g->tag));
}

/* POST path with the token; asserts the status; returns the body (malloc'd) */
static char *post_expect(const struct h_gw *g, const char *path, int status)
{
    struct h_resp r;
    admin(g, "POST", path, AUTH, &r);
    cr_assert_eq(r.status, status, "POST %s: %d, expected %d: %s", path, r.status, status, r.body ? r.body : "");
    const char *ct = h_header(&r, "content-type");
    cr_assert(ct && strcmp(ct, "application/json") == 0, "POST %s: content-type %s", path, ct ? ct : "(none)");
    char *body = strdup(r.body ? r.body : "");
    h_resp_free(&r);
    return body;
}

static void post_ok(const struct h_gw *g, const char *fmt, int port)
{
    char path[256];
    snprintf(path, sizeof path, fmt, port);
    free(post_expect(g, path, 200));
}

static char *backends_json(const struct h_gw *g)
{
    struct h_resp r;
    admin(g, "GET", "/backends", AUTH, &r);
    cr_assert_eq(r.status, 200, "GET /backends: %d %s", r.status, r.body ? r.body : "");
    char *body = strdup(r.body);
    h_resp_free(&r);
    return body;
}

/* The JSON object of backend 127.0.0.1:port in a /backends document (malloc'd), NULL if absent. */
static char *backend_obj(const char *json, int port)
{
    char needle[64];
    snprintf(needle, sizeof needle, "\"backend\":\"127.0.0.1:%d\"", port);
    const char *at = strstr(json, needle);
    if (!at)
        return NULL;
    const char *open = at;
    while (open > json && *open != '{')
        open--;
    const char *close = strchr(at, '}');
    cr_assert(close, "unterminated backend object in %s", json);
    return strndup(open, (size_t)(close - open + 1));
}

static void expect_backend(const struct h_gw *g, int port, const char *state, const char *admin_state, int weight)
{
    char *json = backends_json(g);
    char *obj = backend_obj(json, port);
    cr_assert(obj, "backend %d missing from %s", port, json);
    cr_assert(h_json_str_is(obj, "state", state), "backend %d: expected state %s: %s", port, state, obj);
    cr_assert(h_json_str_is(obj, "admin_state", admin_state), "backend %d: expected admin_state %s: %s", port,
              admin_state, obj);
    cr_assert_eq(h_json_int(obj, "weight"), weight, "backend %d: expected weight %d: %s", port, weight, obj);
    free(obj);
    free(json);
}

static double served(const struct h_mock *m)
{
    return h_metric0(m->port, "mockllm_requests_total");
}

/* n chat completions, one connection each; every one must be a 200 */
static void chats(const struct h_gw *g, int n)
{
    for (int i = 0; i < n; i++) {
        struct h_conn c;
        struct h_resp r;
        char body[512];
        H_CONNECT_GW(&c, g);
        int rc = h_request(&c, "POST", "/v1/chat/completions", "Connection: close\r\n",
                           h_chat_body(body, sizeof body, 2, false), &r, T_REQ);
        h_close(&c);
        cr_assert_eq(rc, H_OK, "chat %d: no complete response (%d)\n%s", i, rc, h_tail(g->tag));
        cr_assert_eq(r.status, 200, "chat %d: %d %s", i, r.status, r.body ? r.body : "");
        h_resp_free(&r);
    }
}

static double metric_b(const struct h_gw *g, const char *name, int port, const char *more)
{
    char q[300];
    snprintf(q, sizeof q, "%s{pool=\"gpu\",backend=\"127.0.0.1:%d\"%s%s}", name, port, more ? "," : "",
             more ? more : "");
    return h_metric(g->admin_port, q);
}

#define STREAMS 4
#define STREAM_TOKENS 30    /* at 20 tokens/s: 1.5 s each */

Test(backend_control, drain_under_load_lets_streams_finish_and_sends_nothing_new)
{
    struct h_mock a, b;
    struct h_gw g = { 0 };
    start_ab(&a, &b, &g, "--ttft-ms 0 --tps 20");

    /* streams in flight on both backends (round robin: each shard's first pick is a) */
    struct h_conn sc[STREAMS];
    struct h_resp head[STREAMS];
    for (int i = 0; i < STREAMS; i++) {
        H_CONNECT_GW(&sc[i], &g);
        h_start_chat_stream(&sc[i], STREAM_TOKENS, &head[i], g.tag);
    }
    char q[200];
    snprintf(q, sizeof q, "aigw_backend_outstanding{pool=\"gpu\",backend=\"127.0.0.1:%d\"}", a.port);
    cr_assert_geq(h_wait_metric(g.admin_port, q, H_GE, 1, T_WAIT), 1, "no stream in flight on a");

    char path[200];
    snprintf(path, sizeof path, "/backends/gpu/127.0.0.1:%d/drain", a.port);
    char *body = post_expect(&g, path, 200);
    cr_assert(h_json_str_is(body, "state", "draining"), "drain answered %s", body);
    cr_assert(h_json_str_is(body, "admin_state", "drain"), "drain answered %s", body);
    free(body);
    cr_assert(h_wait_log_line(g.tag, "admin: backend gpu/127.0.0.1:", "drain (was ready)", T_WAIT),
              "no audit line for the drain:\n%s", h_tail(g.tag));

    /* new requests, while a's streams still run: none reaches a */
    double a0 = served(&a), b0 = served(&b);
    chats(&g, 20);
    cr_assert_eq(served(&a), a0, "a drained, yet it got %.0f new requests", served(&a) - a0);
    cr_assert_eq(served(&b), b0 + 20, "b served %.0f of the 20", served(&b) - b0);

    /* the in-flight streams finish, every token and [DONE] */
    for (int i = 0; i < STREAMS; i++) {
        struct h_sse s;
        h_sse_init(&s, &sc[i], &head[i]);
        bool done = false;
        int last = 0;
        int n = h_sse_data_events(&s, T_WAIT, NULL, 0, &done, &last);
        cr_assert(done, "stream %d ended after %d events without [DONE] (%d)\n%s", i, n, last, h_tail(g.tag));
        h_sse_free(&s);
        h_resp_free(&head[i]);
        h_close(&sc[i]);
    }
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 0, T_WAIT), 0, "a's outstanding never reached 0");
    cr_assert_eq(metric_b(&g, "aigw_backend_admin_state", a.port, "state=\"drain\""), 1);
    cr_assert_eq(metric_b(&g, "aigw_backend_admin_state", a.port, "state=\"ready\""), 0);
    cr_assert_eq(metric_b(&g, "aigw_backend_admin_state", b.port, "state=\"ready\""), 1);

    /* the maintenance is over */
    snprintf(path, sizeof path, "/backends/gpu/127.0.0.1:%d/enable", a.port);
    free(post_expect(&g, path, 200));
    a0 = served(&a);
    chats(&g, 8);
    cr_assert_geq(served(&a) - a0, 2, "a enabled again, yet it served %.0f of 8", served(&a) - a0);
    h_finish();
}

Test(backend_control, disable_enable_round_trip_and_readyz)
{
    struct h_mock a, b;
    struct h_gw g = { 0 };
    start_ab(&a, &b, &g, "--ttft-ms 0 --tps 0");

    post_ok(&g, "/backends/gpu/127.0.0.1:%d/disable", b.port);
    expect_backend(&g, b.port, "disabled", "maint", 1);
    expect_backend(&g, a.port, "up", "ready", 1);
    cr_assert_eq(metric_b(&g, "aigw_backend_admin_state", b.port, "state=\"maint\""), 1);
    double a0 = served(&a), b0 = served(&b);
    chats(&g, 10);
    cr_assert_eq(served(&b), b0, "b disabled, yet it got %.0f requests", served(&b) - b0);
    cr_assert_eq(served(&a), a0 + 10);

    /* /status.json shows it, and the pool counts one backend available */
    struct h_resp r;
    admin(&g, "GET", "/status.json", AUTH, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(h_json_str_is(r.body, "state", "disabled"), "/status.json: %s", r.body);
    cr_assert(h_json_str_is(r.body, "admin_state", "maint"), "/status.json: %s", r.body);
    cr_assert_eq(h_json_int(r.body, "backends_available"), 1, "/status.json: %s", r.body);
    h_resp_free(&r);

    /* with both out of service aigw is not ready; one back and it is */
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/disable", a.port);
    int64_t end = h_now_ms() + T_WAIT;
    int status = 0;
    do {
        h_get(g.admin_port, "/readyz", &r, T_REQ);
        status = r.status;
        h_resp_free(&r);
        if (status == 503)
            break;
        h_sleep_ms(20);
    } while (h_now_ms() < end);
    cr_assert_eq(status, 503, "/readyz with every backend disabled");

    post_ok(&g, "/backends/gpu/127.0.0.1:%d/enable", b.port);
    cr_assert(h_wait_log_line(g.tag, "admin: backend gpu/127.0.0.1:", "enable (was maint)", T_WAIT),
              "no audit line for the enable:\n%s", h_tail(g.tag));
    end = h_now_ms() + T_WAIT;
    do {
        h_get(g.admin_port, "/readyz", &r, T_REQ);
        status = r.status;
        h_resp_free(&r);
        if (status == 200)
            break;
        h_sleep_ms(20);
    } while (h_now_ms() < end);
    cr_assert_eq(status, 200, "/readyz with b enabled again");
    expect_backend(&g, b.port, "up", "ready", 1);
    b0 = served(&b);
    chats(&g, 6);
    cr_assert_eq(served(&b), b0 + 6, "only b is enabled; it served %.0f of 6", served(&b) - b0);
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/enable", a.port);
    expect_backend(&g, a.port, "up", "ready", 1);
    h_finish();
}

Test(backend_control, weights_move_the_split)
{
    struct h_mock a, b;
    struct h_gw g = { 0 };
    start_ab(&a, &b, &g, "--ttft-ms 0 --tps 0");

    /* 3:1 — smooth weighted round robin gives each shard exactly 3 of every 4, so
     * over 40 requests a gets 30, give or take a cycle per shard */
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/weight/3", a.port);
    expect_backend(&g, a.port, "up", "ready", 3);
    cr_assert_eq(metric_b(&g, "aigw_backend_weight", a.port, NULL), 3);
    double a0 = served(&a), b0 = served(&b);
    chats(&g, 40);
    double da = served(&a) - a0, db = served(&b) - b0;
    cr_assert_eq(da + db, 40);
    cr_assert(da >= 24 && da <= 36, "weight 3:1 over 40 requests: a %.0f, b %.0f", da, db);

    /* weight 0: no new requests, as drain */
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/weight/0", a.port);
    expect_backend(&g, a.port, "draining", "ready", 0);
    cr_assert(h_wait_log_line(g.tag, "admin: backend gpu/127.0.0.1:", "weight 0 (was 3)", T_WAIT),
              "no audit line for the weight:\n%s", h_tail(g.tag));
    a0 = served(&a);
    b0 = served(&b);
    chats(&g, 12);
    cr_assert_eq(served(&a), a0, "weight 0, yet a got %.0f requests", served(&a) - a0);
    cr_assert_eq(served(&b), b0 + 12);

    /* enable undoes weight 0: the file's weight again */
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/enable", a.port);
    expect_backend(&g, a.port, "up", "ready", 1);
    a0 = served(&a);
    chats(&g, 8);
    cr_assert_geq(served(&a) - a0, 2, "a enabled, served %.0f of 8", served(&a) - a0);
    h_finish();
}

Test(backend_control, errors_and_names)
{
    struct h_mock a, b;
    struct h_gw g = { 0 };
    H_MOCK(&a, "mock-a", "--ttft-ms 0 --tps 0");
    H_MOCK(&b, "mock-b", "--ttft-ms 0 --tps 0");
    with_token(&g);
    /* pool named: a backend written by name (it may resolve to ::1; it need not answer) */
    h_gw_config(&g, TIMEOUTS, POOL_AB "\n[pool named]\nbackend = localhost:%d\n", a.port, "", b.port, "",
                b.port);
    H_GW(&g);
    char path[256];
    struct h_resp r;

    /* the token is required for every backend route */
    snprintf(path, sizeof path, "/backends/gpu/127.0.0.1:%d/drain", a.port);
    admin(&g, "POST", path, NULL, &r);
    cr_assert_eq(r.status, 401, "POST without the token: %d", r.status);
    h_resp_free(&r);
    admin(&g, "GET", "/backends", NULL, &r);
    cr_assert_eq(r.status, 401, "GET /backends without the token: %d", r.status);
    h_resp_free(&r);
    admin(&g, "POST", path, "Authorization: Bearer wrong\r\n", &r);
    cr_assert_eq(r.status, 401);
    h_resp_free(&r);
    expect_backend(&g, a.port, "up", "ready", 1);

    /* wrong methods */
    admin(&g, "GET", path, AUTH, &r);
    cr_assert_eq(r.status, 405, "GET on a POST route: %d", r.status);
    cr_assert_str_eq(h_header(&r, "allow"), "POST");
    h_resp_free(&r);
    admin(&g, "POST", "/backends", AUTH, &r);
    cr_assert_eq(r.status, 405, "POST /backends: %d", r.status);
    h_resp_free(&r);

    /* unknown pool or backend: 404 JSON */
    snprintf(path, sizeof path, "/backends/nopool/127.0.0.1:%d/drain", a.port);
    char *body = post_expect(&g, path, 404);
    cr_assert(h_json_str_is(body, "code", "unknown_pool"), "%s", body);
    free(body);
    body = post_expect(&g, "/backends/gpu/127.0.0.1:1/drain", 404);
    cr_assert(h_json_str_is(body, "code", "unknown_backend"), "%s", body);
    free(body);

    /* bad verbs and weights: 400 */
    static const char *const bad[] = { "/reboot", "/weight/1001", "/weight/-1", "/weight/x", "/weight/",
                                       "/weight", "/drain/1", "/weight/1/2" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(path, sizeof path, "/backends/gpu/127.0.0.1:%d%s", a.port, bad[i]);
        free(post_expect(&g, path, 400));
    }
    free(post_expect(&g, "/backends/gpu/127.0.0.1%zz/drain", 400));
    expect_backend(&g, a.port, "up", "ready", 1);

    /* names: percent-encoded, and as written in the file (localhost:PORT) */
    snprintf(path, sizeof path, "/backends/gpu/127.0.0.1%%3A%d/weight/7", a.port);
    free(post_expect(&g, path, 200));
    expect_backend(&g, a.port, "up", "ready", 7);
    snprintf(path, sizeof path, "/backends/%%67pu/127.0.0.1:%d/drain", b.port);
    free(post_expect(&g, path, 200));
    expect_backend(&g, b.port, "draining", "drain", 1);
    snprintf(path, sizeof path, "/backends/named/localhost:%d/disable", b.port);
    body = post_expect(&g, path, 200);
    cr_assert(h_json_str_is(body, "pool", "named") && h_json_str_is(body, "admin_state", "maint"), "%s", body);
    free(body);
    expect_backend(&g, b.port, "draining", "drain", 1);     /* the same address in pool gpu: untouched */
    h_finish();
}

/* an IPv6 backend named [::1]:PORT, raw and percent-encoded (it need not answer) */
Test(backend_control, ipv6_backend_names)
{
    struct h_mock a;
    struct h_gw g = { 0 };
    H_MOCK(&a, "mock-a", "--ttft-ms 0 --tps 0");
    with_token(&g);
    int port6 = h_free_port();
    h_gw_config(&g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\n\n[pool v6]\nbackend = [::1]:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n",
                a.port, port6);
    H_GW(&g);
    char path[256];
    snprintf(path, sizeof path, "/backends/v6/[::1]:%d/disable", port6);
    char *body = post_expect(&g, path, 200);
    cr_assert(h_json_str_is(body, "state", "disabled"), "%s", body);
    free(body);
    snprintf(path, sizeof path, "/backends/v6/%%5B%%3A%%3A1%%5D%%3A%d/enable", port6);
    body = post_expect(&g, path, 200);
    cr_assert(h_json_str_is(body, "admin_state", "ready"), "%s", body);
    free(body);
    h_finish();
}

Test(backend_control, runtime_state_across_reloads)
{
    struct h_mock a, b, c;
    struct h_gw g = { 0 };
    H_MOCK(&a, "mock-a", "--ttft-ms 0 --tps 0");
    H_MOCK(&b, "mock-b", "--ttft-ms 0 --tps 0");
    H_MOCK(&c, "mock-c", "--ttft-ms 0 --tps 0");
    with_token(&g);
    const char *three = "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d%s\nbackend = 127.0.0.1:%d\n"
                        "balance = round_robin\n\n"
                        "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n";
    h_gw_config(&g, TIMEOUTS, three, a.port, b.port, "", c.port);
    H_GW(&g);

    post_ok(&g, "/backends/gpu/127.0.0.1:%d/drain", a.port);
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/weight/5", b.port);
    post_ok(&g, "/backends/gpu/127.0.0.1:%d/disable", c.port);

    /* the same file: everything kept */
    H_RELOAD(&g, H_RELOAD_APPLIED);
    expect_backend(&g, a.port, "draining", "drain", 1);
    expect_backend(&g, b.port, "up", "ready", 5);
    expect_backend(&g, c.port, "disabled", "maint", 1);
    double a0 = served(&a), c0 = served(&c);
    chats(&g, 6);
    cr_assert_eq(served(&a), a0, "a drained before the reload got %.0f requests after it", served(&a) - a0);
    cr_assert_eq(served(&c), c0);

    /* b's weight changed in the file (the file wins), c removed (its state goes) */
    h_gw_config(&g, TIMEOUTS,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d weight=2\n"
                "balance = round_robin\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n",
                a.port, b.port);
    H_RELOAD(&g, H_RELOAD_APPLIED);
    expect_backend(&g, a.port, "draining", "drain", 1);
    expect_backend(&g, b.port, "up", "ready", 2);
    char *json = backends_json(&g);
    char *obj = backend_obj(json, c.port);
    cr_assert_null(obj, "c was removed from the file, yet /backends shows %s", obj);
    free(json);
    char path[200];
    snprintf(path, sizeof path, "/backends/gpu/127.0.0.1:%d/enable", c.port);
    free(post_expect(&g, path, 404));

    /* c back in the file: it starts ready; a is still drained */
    h_gw_config(&g, TIMEOUTS, three, a.port, b.port, " weight=2", c.port);
    H_RELOAD(&g, H_RELOAD_APPLIED);
    expect_backend(&g, c.port, "up", "ready", 1);
    expect_backend(&g, a.port, "draining", "drain", 1);
    c0 = served(&c);
    chats(&g, 6);
    cr_assert_geq(served(&c) - c0, 1, "c back in the file served %.0f of 6", served(&c) - c0);
    h_finish();
}

Test(backend_control, get_backends_json_shape)
{
    struct h_mock a, b;
    struct h_gw g = { 0 };
    H_MOCK(&a, "mock-a", "--ttft-ms 0 --tps 0");
    H_MOCK(&b, "mock-b", "--ttft-ms 0 --tps 0");
    with_token(&g);
    h_gw_config(&g, TIMEOUTS, POOL_AB, a.port, " weight=4", b.port, "");
    H_GW(&g);

    struct h_resp r;
    admin(&g, "GET", "/backends", AUTH, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(h_header(&r, "content-type"), "application/json");
    char want[1024];
    snprintf(want, sizeof want,
             "{\"backends\":["
             "{\"pool\":\"gpu\",\"backend\":\"127.0.0.1:%d\",\"admin_state\":\"ready\",\"state\":\"up\","
             "\"health\":\"up\",\"weight\":4,\"config_weight\":4,\"outstanding\":0},"
             "{\"pool\":\"gpu\",\"backend\":\"127.0.0.1:%d\",\"admin_state\":\"ready\",\"state\":\"up\","
             "\"health\":\"up\",\"weight\":1,\"config_weight\":1,\"outstanding\":0}]}\n",
             a.port, b.port);
    cr_assert_str_eq(r.body, want);
    h_resp_free(&r);
    h_finish();
}
