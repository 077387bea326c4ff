/* aigw's GET /v1/models lists what the backends really serve (issue 13 item 8):
 * with globbed routes (`models = llama-3.1-*`) the ids come from the backends'
 * own GET /v1/models, kept to what a route to their pool takes and the caller's
 * key allows, and follow a backend that comes back serving another model. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(models_discovery, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define KEY_ALL "sk-itest-md-all-4Hq8Zt2Lx"
#define KEY_SMALL "sk-itest-md-small-9Wp3Nc7Ve"

static bool lists(const char *body, const char *id)
{
    char needle[160];
    snprintf(needle, sizeof needle, "\"id\":\"%s\"", id);
    return strstr(body, needle) != NULL;
}

static int count_ids(const char *body)
{
    int n = 0;
    for (const char *p = body; (p = strstr(p, "\"id\":")); p++)
        n++;
    return n;
}

/* GET path with the key; the status, and the body in *out (malloc'd) on 200. */
static int get_as(int port, const char *key, const char *path, char **out)
{
    struct h_conn c;
    *out = NULL;
    if (h_connect(&c, port) < 0)
        return -1;
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", h_bearer(key));
    struct h_resp r;
    int rc = h_request(&c, "GET", path, hdr, NULL, &r, 3000 * h_slow());
    h_close(&c);
    if (rc != H_OK)
        return -1;
    int status = r.status;
    *out = strdup(r.body ? r.body : "");
    h_resp_free(&r);
    return status;
}

/* Asks /v1/models until it lists want (and, when set, no longer lists gone):
 * the list changes when the watcher has read the backends. The last body. */
static char *wait_listed(int port, const char *key, const char *want, const char *gone, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    char *body = NULL;
    for (int i = 0; i < 1000; i++) {
        free(body);
        int status = get_as(port, key, "/v1/models", &body);
        cr_assert_eq(status, 200, "GET /v1/models: %d %s", status, body ? body : "");
        if (lists(body, want) && !(gone && lists(body, gone)))
            return body;
        if (h_now_ms() >= end)
            break;
        h_sleep_ms(20);
    }
    return body;
}

Test(models_discovery, globbed_routes_list_what_the_backends_serve)
{
    struct h_mock small, big;
    H_MOCK(&small, "mock-small", "--tps 0 --ttft-ms 0 --model llama-3.1-8b --model qwen-2-7b");
    H_MOCK(&big, "mock-big", "--tps 0 --ttft-ms 0 --model llama-3.1-70b --model mistral-large");
    h_write_file(h_keys_path(), "%s%s", h_key_line("all", KEY_ALL, "default", NULL),
                 h_key_line("small", KEY_SMALL, "default", "llama-3.1-8b*,exact-*"));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool small]\nbackend = 127.0.0.1:%d\n\n"
                "[pool big]\nbackend = 127.0.0.1:%d\nhealth = /health\nhealth_interval = 100ms\n"
                "health_fall = 1\nhealth_rise = 1\n\n"
                "[route small]\npath = /v1/chat/completions\npool = small\nmodels = llama-3.1-*\n\n"
                "[route big]\npath = /v1/chat/completions\npool = big\nmodels = llama-*\n\n"
                "[route exact]\npath = /v1/chat/completions\npool = small\nmodels = exact-model\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                small.port, big.port, h_keys_path());
    H_GW(&g);

    char *body = wait_listed(g.port, KEY_ALL, "llama-3.1-70b", NULL, 5000 * h_slow());
    cr_assert(lists(body, "llama-3.1-70b") && lists(body, "llama-3.1-8b"), "the backends' llama models: %s\n%s",
              body, h_tail(g.tag));
    /* served but taken by no route to that pool */
    cr_assert(!lists(body, "qwen-2-7b") && !lists(body, "mistral-large"), "%s", body);
    /* an exact route model is listed as before, served or not */
    cr_assert(lists(body, "exact-model"), "%s", body);
    cr_assert_eq(count_ids(body), 3, "%s", body);
    cr_assert(strstr(body, "\"object\":\"list\"") && strstr(body, "\"object\":\"model\"") &&
                  strstr(body, "\"owned_by\":") && strstr(body, "\"created\":"),
              "not OpenAI's shape: %s", body);
    free(body);

    /* the key's models= filters the list */
    cr_assert_eq(get_as(g.port, KEY_SMALL, "/v1/models", &body), 200);
    cr_assert(lists(body, "llama-3.1-8b") && lists(body, "exact-model"), "%s", body);
    cr_assert_eq(count_ids(body), 2, "key small may use llama-3.1-8b* and exact-*: %s", body);
    free(body);

    /* one model: a served one, one no route takes, one the key may not use */
    cr_assert_eq(get_as(g.port, KEY_ALL, "/v1/models/llama-3.1-70b", &body), 200);
    cr_assert(h_json_str_is(body, "id", "llama-3.1-70b"), "%s", body);
    free(body);
    cr_assert_eq(get_as(g.port, KEY_ALL, "/v1/models/qwen-2-7b", &body), 404);
    free(body);
    cr_assert_eq(get_as(g.port, KEY_SMALL, "/v1/models/llama-3.1-70b", &body), 404);
    free(body);

    /* the big backend is replaced by one serving another model: once it is seen
     * down and up again, the list follows */
    char q[256];
    snprintf(q, sizeof q, "aigw_backend_up{pool=\"big\",backend=\"127.0.0.1:%d\"}", big.port);
    int port = big.port;
    cr_assert_neq(h_stop(big.pid, 3000), -1);
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 0, 3000 * h_slow()), 0, "%s", h_tail(g.tag));
    struct h_mock newer;
    cr_assert_eq(h_mock_start_port(&newer, "mock-newer", port, "--tps 0 --ttft-ms 0 --model llama-3.3-70b"), 0,
                 "%s", h_tail("mock-newer"));
    cr_assert_eq(h_wait_metric(g.admin_port, q, H_EQ, 1, 3000 * h_slow()), 1, "%s", h_tail(g.tag));
    body = wait_listed(g.port, KEY_ALL, "llama-3.3-70b", "llama-3.1-70b", 5000 * h_slow());
    cr_assert(lists(body, "llama-3.3-70b") && !lists(body, "llama-3.1-70b"),
              "after the backend came back with another model: %s\n%s", body, h_tail(g.tag));
    cr_assert(lists(body, "llama-3.1-8b"), "%s", body);
    free(body);

    /* and what is listed can be used */
    struct h_resp r;
    char req[256];
    snprintf(req, sizeof req,
             "{\"model\":\"llama-3.3-70b\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],\"max_tokens\":2}");
    struct h_conn c;
    cr_assert_eq(h_connect(&c, g.port), 0);
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", h_bearer(KEY_ALL));
    cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", hdr, req, &r, 3000 * h_slow()), H_OK);
    cr_assert_eq(r.status, 200, "%d %s", r.status, r.body);
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

/* Routes that name exact models only: the backends are not asked (nothing they
 * say could add to the list), and a reload keeps the list without a gap. */
Test(models_discovery, reload_keeps_the_list_and_exact_routes_ask_nothing)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0 --model llama-3.1-8b");
    h_write_file(h_keys_path(), "%s", h_key_line("all", KEY_ALL, "default", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = p\nmodels = llama-*\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                m.port, h_keys_path());
    H_GW(&g);
    char *body = wait_listed(g.port, KEY_ALL, "llama-3.1-8b", NULL, 5000 * h_slow());
    cr_assert(lists(body, "llama-3.1-8b"), "%s\n%s", body, h_tail(g.tag));
    free(body);

    /* a reload with another route name: the list is there at once */
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat2]\npath = /v1/chat/completions\npool = p\nmodels = llama-*\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                m.port, h_keys_path());
    H_RELOAD(&g, H_RELOAD_APPLIED);
    cr_assert_eq(get_as(g.port, KEY_ALL, "/v1/models", &body), 200);
    cr_assert(lists(body, "llama-3.1-8b"), "the list after a reload: %s", body);
    free(body);

    /* model_list = (empty) turns the asking off: only exact names remain */
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\nmodel_list =\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = p\nmodels = llama-*, exact-one\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                m.port, h_keys_path());
    H_RELOAD(&g, H_RELOAD_APPLIED);
    cr_assert_eq(get_as(g.port, KEY_ALL, "/v1/models", &body), 200);
    cr_assert(lists(body, "exact-one") && !lists(body, "llama-3.1-8b"), "%s", body);
    free(body);
    h_finish();
}
