/* The /status page and /status.json: the document's content after known
 * traffic through mocks whose --ttft-ms is the known truth, the [admin] token
 * (Bearer and Basic), the page's self-containment, and the page in a real
 * headless chromium (tests/browser/status-page.js). */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

TestSuite(status, .init = h_setup, .fini = h_teardown, .timeout = 180);

#define T_REQ (10000 * h_slow())
#define T_METRIC (5000 * h_slow())
#define ADMIN_TOKEN "adm-status-3kQ9x"
#define KEY_ALICE "sk-itest-status-alice-5Rt1"
#define KEY_BOB "sk-itest-status-bob-8Wq2"

/* Two backends with active checks (down 2 checks after the process stops),
 * priced models so the keys have a spend. */
#define STATUS_ROUTES                                                                         \
    "[pool local]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\n"   \
    "health = /health\nhealth_interval = 100ms\n\n"                                           \
    "[route chat]\npath = /v1/chat/completions\npool = local\n\n"                             \
    "[model mock-llama-*]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n\n"                  \
    "[keys]\nauth = required\nfile = %s\n"

static void start(struct h_mock *a, struct h_mock *b, struct h_gw *g, bool token)
{
    H_MOCK(a, "mock-a", "--model mock-llama-3.1-8b --ttft-ms 300 --tps 0");
    H_MOCK(b, "mock-b", "--model mock-llama-3.1-8b --ttft-ms 300 --tps 0");
    h_write_file(h_keys_path(), "%s%s", h_key_line("alice", KEY_ALICE, "default", NULL),
                 h_key_line("bob", KEY_BOB, "default", NULL));
    if (token) {
        snprintf(g->admin_extra, sizeof g->admin_extra, "token = %s\n", ADMIN_TOKEN);
        h_admin_token(ADMIN_TOKEN);
    }
    h_gw_config(g, NULL, STATUS_ROUTES, a->port, b->port, h_keys_path());
    H_GW(g);
}

/* One chat completion with key's bearer (NULL: none); returns the status. */
static int chat(const struct h_gw *g, const char *key)
{
    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, g);
    char hdr[256], body[1024];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", key ? h_bearer(key) : "");
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, h_chat_body(body, sizeof body, 8, false), &r, T_REQ);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "no complete response (%d)\n%s", rc, h_tail(g->tag));
    int status = r.status;
    h_resp_free(&r);
    return status;
}

/* GET path on the admin port with extra headers; the caller frees r. */
static void admin_get(const struct h_gw *g, const char *path, const char *headers, struct h_resp *r)
{
    struct h_conn c;
    cr_assert_eq(h_connect(&c, g->admin_port), 0, "admin connect");
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", headers ? headers : "");
    int rc = h_request(&c, "GET", path, hdr, NULL, r, T_REQ);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "admin %s: no complete response (%d)", path, rc);
}

static char *status_json(const struct h_gw *g, const char *headers)
{
    struct h_resp r;
    admin_get(g, "/status.json", headers, &r);
    cr_assert_eq(r.status, 200, "/status.json: %d %s", r.status, r.body ? r.body : "");
    cr_assert_str_eq(h_header(&r, "content-type"), "application/json");
    cr_assert_str_eq(h_header(&r, "cache-control"), "no-store");
    char *body = strdup(r.body);
    h_resp_free(&r);
    return body;
}

/* The number after "name": at or after `from` (NAN when absent or null). */
static double json_num_after(const char *from, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = from ? strstr(from, key) : NULL;
    if (!p || strncmp(p + strlen(key), "null", 4) == 0)
        return NAN;
    return strtod(p + strlen(key), NULL);
}

Test(status, json_after_known_traffic)
{
    struct h_mock a, b;
    struct h_gw g = {0};
    start(&a, &b, &g, false);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(chat(&g, KEY_ALICE), 200);
    cr_assert_eq(chat(&g, KEY_BOB), 200);
    cr_assert_eq(chat(&g, NULL), 401);     /* refused before routing: no route's count */
    h_wait_metric(g.admin_port, "aigw_requests_total{route=\"chat\"}", H_GE, 4, T_METRIC);

    char *s = status_json(&g, NULL);
    cr_assert(strstr(s, "\"version\":\"") && strstr(s, "\"config_generation\":1,") && strstr(s, "\"shards\":2,"),
              "%s", s);
    char want[256];
    for (int i = 0; i < 2; i++) {
        snprintf(want, sizeof want, "{\"address\":\"127.0.0.1:%d\",\"state\":\"up\",\"reason\":null,",
                 i ? b.port : a.port);
        cr_assert(strstr(s, want), "no %s in %s", want, s);
    }
    cr_assert(strstr(s, "\"name\":\"chat\",\"status_total\":{\"1xx\":0,\"2xx\":4,\"3xx\":0,\"4xx\":0,\"429\":0,\"5xx\":0}"),
              "route status mix: %s", s);
    /* every answer came after the mocks' 300 ms: the 0.25-0.5 s bucket (and a
     * loaded machine's slack above), never below the truth's bucket */
    const char *pool = strstr(s, "\"name\":\"local\"");
    double p50 = json_num_after(pool, "ttft_p50_ms"), p95 = json_num_after(pool, "ttft_p95_ms");
    cr_assert(p50 >= 250 && p50 <= 2500 * h_slow(), "ttft p50 %g ms: %s", p50, s);
    cr_assert(p95 >= p50 && p95 <= 5000 * h_slow(), "ttft p95 %g ms: %s", p95, s);
    cr_assert(json_num_after(pool, "requests_per_s") > 0, "%s", s);
    cr_assert(strstr(s, "\"top_by_tokens\":[{\"name\":\"alice\""), "alice first by tokens: %s", s);
    cr_assert(strstr(s, "\"top_by_spend\":[{\"name\":\"alice\""), "alice first by spend: %s", s);
    cr_assert(strstr(s, "\"rate_limited_total\":{\"requests\":0,\"tokens\":0,\"quota\":0,\"spend\":0,"
                        "\"limits_unavailable\":0}"),
              "every limit aigw_ratelimited_total has: %s", s);
    const char *bob = strstr(strstr(s, "\"top_by_tokens\""), "\"name\":\"bob\"");
    cr_assert(bob && bob < strstr(s, "\"top_by_spend\""), "bob second by tokens: %s", s);
    free(s);

    /* a backend that stops shows down, and why */
    h_stop(b.pid, 5000);
    char q[128];
    snprintf(q, sizeof q, "aigw_backend_up{backend=\"127.0.0.1:%d\"}", b.port);
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 0, T_METRIC), 0, "backend b still up");
    s = status_json(&g, NULL);
    snprintf(want, sizeof want,
             "{\"address\":\"127.0.0.1:%d\",\"state\":\"down\",\"reason\":\"active health check failing: GET /health\"",
             b.port);
    cr_assert(strstr(s, want), "no %s in %s", want, s);
    cr_assert(strstr(s, "\"backends_available\":1,"), "%s", s);
    free(s);
}

Test(status, token_bearer_basic_and_page)
{
    struct h_mock a, b;
    struct h_gw g = {0};
    start(&a, &b, &g, true);
    struct h_resp r;
    const char *paths[] = { "/status", "/status.json" };
    for (int i = 0; i < 2; i++) {
        admin_get(&g, paths[i], NULL, &r);
        cr_assert_eq(r.status, 401, "%s without the token: %d", paths[i], r.status);
        cr_assert_str_eq(h_header(&r, "www-authenticate"), "Basic realm=\"aigw\", charset=\"UTF-8\"");
        h_resp_free(&r);
        admin_get(&g, paths[i], "Authorization: Basic YWRtaW46d3Jvbmc=\r\n", &r);   /* admin:wrong */
        cr_assert_eq(r.status, 401, "%s with a wrong password: %d", paths[i], r.status);
        h_resp_free(&r);
        admin_get(&g, paths[i], "Authorization: Bearer " ADMIN_TOKEN "\r\n", &r);
        cr_assert_eq(r.status, 200, "%s with Bearer: %d", paths[i], r.status);
        h_resp_free(&r);
        /* base64("anyone:adm-status-3kQ9x") */
        admin_get(&g, paths[i], "Authorization: Basic YW55b25lOmFkbS1zdGF0dXMtM2tROXg=\r\n", &r);
        cr_assert_eq(r.status, 200, "%s with Basic: %d", paths[i], r.status);
        if (i == 0) {
            cr_assert_str_eq(h_header(&r, "content-type"), "text/html; charset=utf-8");
            cr_assert_str_eq(h_header(&r, "cache-control"), "no-store");
            cr_assert(strstr(r.body, "<!DOCTYPE html>") && strstr(r.body, "status.json"), "page: %.200s", r.body);
            /* self-contained: nothing from another host, no asset at all */
            cr_assert(!strstr(r.body, "http://") && !strstr(r.body, "https://"), "absolute URL in the page");
            cr_assert(!strstr(r.body, "src=") && !strstr(r.body, "href="), "an asset reference in the page");
            cr_assert(!strstr(r.body, "\"//") && !strstr(r.body, "'//") && !strstr(r.body, "url("),
                      "a protocol-relative URL in the page");
        }
        h_resp_free(&r);
    }
}

Test(status, page_in_headless_chromium)
{
    cr_assert_eq(access("tests/browser/node_modules/puppeteer-core", R_OK), 0,
                 "tests/browser/node_modules/puppeteer-core missing: run scripts/deps.sh (make deps) from the source tree");
    const char *node_path = h_find_in_path("node");
    cr_assert(node_path, "node is not installed: run scripts/deps.sh");
    char node[1024];
    snprintf(node, sizeof node, "%s", node_path);
    cr_assert(h_find_in_path("chromium"), "chromium is not installed: run scripts/deps.sh");

    struct h_mock a, b;
    struct h_gw g = {0};
    start(&a, &b, &g, true);
    cr_assert_eq(chat(&g, KEY_ALICE), 200);
    char url[128], ready[1024], sent[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/status", g.admin_port);
    snprintf(ready, sizeof ready, "%s/page-ready", h_dir());
    snprintf(sent, sizeof sent, "%s/traffic-sent", h_dir());
    const char *argv[] = { node, "tests/browser/status-page.js", url, ADMIN_TOKEN, h_dir(), NULL };
    pid_t pid = h_spawn("browser", argv);
    cr_assert(pid > 0, "spawn node");
    char *text = h_wait_for_text(ready, "1", 60000 * h_slow());
    cr_assert(text, "the page never showed its first figures:\n%s", h_tail("browser"));
    free(text);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(chat(&g, KEY_BOB), 200);
    h_write_file(sent, "1");
    int st = h_wait_exit(pid, 60000 * h_slow());
    const char *out = h_tail_out("browser");
    cr_assert_eq(st, 0, "browser test failed (0x%x):\n%s\n%s", st, out, h_tail("browser"));
    cr_assert(strstr(out, "PASS"), "%s", out);
    char png[1024];
    snprintf(png, sizeof png, "%s/status.png", h_dir());
    struct stat sb;
    cr_assert(stat(png, &sb) == 0 && sb.st_size > 1000, "no screenshot at %s", png);
    printf("status page screenshot: %s\n", png);
}
