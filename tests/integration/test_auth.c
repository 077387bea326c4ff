/* API keys end to end: 401 without a known key (Bearer and x-api-key both
 * accepted), 400 for duplicate or conflicting credentials, 403 for a model the
 * key may not use, 400 over the tier's max_tokens; the key never goes upstream
 * (upstream_auth replaces it) and never reaches the access log, whose line names
 * the key and the AI fields and whose target has credentials REDACTED; GET
 * /v1/models answered per key; keys reloaded on SIGHUP; a route's split. */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


TestSuite(auth, .init = h_setup, .fini = h_teardown, .timeout = 60);
TestSuite(models, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())

/* Keys are any visible ASCII; made up here so the test knows them. */
#define KEY_ALICE "sk-itest-alice-7Qm2vX9pL4"
#define KEY_BOB   "sk-itest-bob-Zr8Kw1Nc0T"
#define KEY_CAROL "sk-itest-carol-u5Yh3Jd6Sa"
#define KEY_DAVE  "sk-itest-dave-Pb4Ge7Rt2W"
#define KEY_NOBODY "sk-itest-nobody-000000000"

/* ---- keys files ---- */

/* ---- a scripted backend that records what reaches it ---- */

#define REC_MAX 64

struct rec_backend {
    int listen_fd, port;
    pthread_t thread;
    pthread_mutex_t mu;
    int nreq;
    char *req[REC_MAX];   /* each request as received: head and body */
};

/* Reads one request (head and Content-Length body) into a malloc'd string. */
static char *read_request(int fd)
{
    size_t cap = 65536, have = 0;
    char *b = malloc(cap + 1);
    char *end = NULL;
    while (!(end = memmem(b, have, "\r\n\r\n", 4))) {
        if (have == cap)
            goto fail;
        ssize_t n = read(fd, b + have, cap - have);
        if (n <= 0)
            goto fail;
        have += (size_t)n;
    }
    size_t head = (size_t)(end + 4 - b);
    size_t body = 0;
    b[have] = 0;
    for (char *p = b; p < b + head; p++) {
        if ((p == b || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15)) {
            body = strtoul(p + 15, NULL, 10);
            break;
        }
    }
    if (head + body > cap)
        goto fail;
    while (have < head + body) {
        ssize_t n = read(fd, b + have, head + body - have);
        if (n <= 0)
            goto fail;
        have += (size_t)n;
    }
    b[have] = 0;
    return b;
fail:
    free(b);
    return NULL;
}

/* Answers every request with a small chat completion and its usage, then
 * closes (so aigw never pools a connection this one-at-a-time server holds). */
static void *rec_main(void *arg)
{
    struct rec_backend *b = arg;
    for (;;) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        char *req = read_request(fd);
        if (req) {
            pthread_mutex_lock(&b->mu);
            if (b->nreq < REC_MAX)
                b->req[b->nreq] = req;
            else
                free(req);
            b->nreq++;
            pthread_mutex_unlock(&b->mu);
            static const char body[] =
                "{\"id\":\"chatcmpl-rec\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"rec\","
                "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
                "\"finish_reason\":\"stop\"}],"
                "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}";
            char head[256];
            int hl = snprintf(head, sizeof head,
                              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                              "Connection: close\r\n\r\n",
                              sizeof body - 1);
            if (h_write_all(fd, head, (size_t)hl))
                h_write_all(fd, body, sizeof body - 1);
            shutdown(fd, SHUT_WR);
            char sink[256];
            while (read(fd, sink, sizeof sink) > 0) {
            }
        }
        close(fd);
    }
}

static void rec_start(struct rec_backend *b)
{
    memset(b, 0, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    b->listen_fd = h_listen_loopback(&b->port);
    cr_assert_eq(pthread_create(&b->thread, NULL, rec_main, b), 0);
}

static int rec_count(struct rec_backend *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->nreq;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* A copy of the i-th recorded request (free it). */
static char *rec_get(struct rec_backend *b, int i)
{
    pthread_mutex_lock(&b->mu);
    char *s = i < b->nreq && i < REC_MAX && b->req[i] ? strdup(b->req[i]) : NULL;
    pthread_mutex_unlock(&b->mu);
    return s;
}

/* ---- requests ---- */

/* One request on a fresh connection (closed after), with extra header lines. */
static int once(int port, const char *method, const char *path, const char *headers, const char *body,
                struct h_resp *r)
{
    struct h_conn c;
    memset(r, 0, sizeof *r);
    if (h_connect(&c, port) < 0)
        return H_ECLOSED;
    char hdr[2048];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", headers ? headers : "");
    int rc = h_request(&c, method, path, hdr, body, r, T_RESP);
    h_close(&c);
    return rc;
}

static const char *xapikey(const char *key)
{
    static char bufs[4][256];
    static int next;
    char *out = bufs[next++ % 4];
    snprintf(out, sizeof bufs[0], "x-api-key: %s\r\n", key);
    return out;
}

static const char *chat_body(const char *model, int max_tokens)
{
    static char bufs[4][512];
    static int next;
    char *out = bufs[next++ % 4];
    snprintf(out, sizeof bufs[0],
             "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
             "\"max_tokens\":%d}",
             model, max_tokens);
    return out;
}

#define EXPECT(rc, r, st, what)                                                                         \
    do {                                                                                                \
        cr_assert_eq((rc), H_OK, "%s: no complete response (%d); aigw stderr:\n%s", (what), (rc),       \
                     h_tail("aigw"));                                                                   \
        cr_assert_eq((r).status, (st), "%s: status %d, want %d: %s", (what), (r).status, (st),          \
                     (r).body ? (r).body : "");                                                         \
    } while (0)

static void expect_error(const struct h_resp *r, const char *what, const char *type, const char *code)
{
    cr_assert(h_json_str_is(r->body, "type", type), "%s: type is not %s: %s", what, type, r->body);
    if (code)
        cr_assert(h_json_str_is(r->body, "code", code), "%s: code is not %s: %s", what, code, r->body);
    cr_assert(strstr(r->body, "\"message\""), "%s: no message: %s", what, r->body);
}

static void expect_401(int port, const char *method, const char *path, const char *headers, const char *body,
                       const char *what)
{
    struct h_resp r;
    int rc = once(port, method, path, headers, body, &r);
    EXPECT(rc, r, 401, what);
    expect_error(&r, what, "authentication_error", "invalid_api_key");
    h_resp_free(&r);
}

/* The whole line of text holding needle (malloc'd), or NULL. */
static char *line_with(const char *text, const char *needle)
{
    const char *p = strstr(text, needle);
    if (!p)
        return NULL;
    const char *s = p;
    while (s > text && s[-1] != '\n')
        s--;
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    return strndup(s, n);
}

/* A mockllm and aigw in front of it with keys required: alice and bob, tier default. */
static void start_with_alice_and_bob(struct h_mock *m, struct h_gw *g)
{
    H_MOCK(m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "# itest keys\n%s%s", h_key_line("alice", KEY_ALICE, "default", NULL),
                 h_key_line("bob", KEY_BOB, "default", NULL));
    h_gw_config(g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n", m->port, h_keys_path());
    H_GW(g);
}

/* ---- tests ---- */

Test(auth, missing_or_unknown_key_is_401_on_every_route_and_both_headers_work)
{
    struct h_mock m;
    struct h_gw g = {0};
    start_with_alice_and_bob(&m, &g);

    const char *body = chat_body("mock-llama-3.1-8b", 2);
    /* no key: chat (AI), raw, the aigw-answered /v1/models, and a path no route takes */
    expect_401(g.port, "POST", "/v1/chat/completions", NULL, body, "chat without a key");
    expect_401(g.port, "GET", "/v1/files", NULL, NULL, "raw route without a key");
    expect_401(g.port, "GET", "/v1/models", NULL, NULL, "models without a key");
    expect_401(g.port, "GET", "/nowhere", NULL, NULL, "unrouted path without a key");
    /* unknown keys, and keys not presented the way aigw reads them */
    expect_401(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_NOBODY), body, "unknown Bearer key");
    expect_401(g.port, "POST", "/v1/chat/completions", xapikey(KEY_NOBODY), body, "unknown x-api-key");
    expect_401(g.port, "GET", "/v1/files", h_bearer(KEY_NOBODY), NULL, "unknown key on a raw route");
    expect_401(g.port, "POST", "/v1/chat/completions", "Authorization: Basic YWxpY2U6eA==\r\n", body,
               "Basic auth");
    expect_401(g.port, "POST", "/v1/chat/completions", "Authorization: Bearer \r\n", body, "empty Bearer");
    char almost[64];
    snprintf(almost, sizeof almost, "%s", KEY_ALICE);
    almost[strlen(almost) - 1] ^= 1;
    expect_401(g.port, "POST", "/v1/chat/completions", h_bearer(almost), body, "a key one bit off");
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 0, "a request without a valid key reached the backend");

    /* a known key, either way, on AI and raw routes */
    struct h_resp r;
    int rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r);
    EXPECT(rc, r, 200, "chat with a Bearer key");
    cr_assert(strstr(r.body, "chat.completion"), "%s", r.body);
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", xapikey(KEY_BOB), body, &r);
    EXPECT(rc, r, 200, "chat with x-api-key");
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", "authorization: bearer " KEY_BOB "\r\n", body, &r);
    EXPECT(rc, r, 200, "the Bearer scheme is case-insensitive");
    h_resp_free(&r);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 3);
    rc = once(g.port, "GET", "/v1/files", xapikey(KEY_ALICE), NULL, &r);
    cr_assert_eq(rc, H_OK);
    cr_assert_neq(r.status, 401, "raw route with a valid key: %d %s", r.status, r.body);
    h_resp_free(&r);

    /* a 401 on a kept-alive connection without a body leaves it usable */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    rc = h_request(&c, "GET", "/v1/models", NULL, NULL, &r, T_RESP);
    EXPECT(rc, r, 401, "kept-alive GET without a key");
    h_resp_free(&r);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r, T_RESP);
    EXPECT(rc, r, 200, "the same connection, now with a key");
    h_resp_free(&r);
    h_close(&c);
    h_finish();
}

Test(auth, the_key_never_goes_upstream_and_upstream_auth_replaces_it)
{
    struct rec_backend b;
    rec_start(&b);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", NULL));
    struct h_gw g = {0};
    /* chat goes to a pool with its own upstream credentials, the rest to one without */
    h_gw_config(&g, NULL,
                "[pool withauth]\nbackend = 127.0.0.1:%d\nupstream_auth = backend-secret-42\n\n"
                "[pool plain]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = withauth\nkind = ai\n\n"
                "[route all]\npath = /v1/*\npool = plain\nkind = raw\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                b.port, b.port, h_keys_path());
    H_GW(&g);

    const char *body = chat_body("any-model", 2);
    struct {
        const char *method, *path, *headers, *body;
        bool upstream_auth;
    } cases[] = {
        {"POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, true},
        {"POST", "/v1/chat/completions", xapikey(KEY_ALICE), body, true},
        {"GET", "/v1/files", h_bearer(KEY_ALICE), NULL, false},
        {"POST", "/v1/raw-echo", xapikey(KEY_ALICE), body, false},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "case %u: %s %s %.*s", i, cases[i].method, cases[i].path,
                 (int)strcspn(cases[i].headers, ":"), cases[i].headers);
        struct h_resp r;
        int rc = once(g.port, cases[i].method, cases[i].path, cases[i].headers, cases[i].body, &r);
        EXPECT(rc, r, 200, what);
        h_resp_free(&r);
        cr_assert_eq(rec_count(&b), (int)i + 1, "%s: the backend got %d requests", what, rec_count(&b));
        char *up = rec_get(&b, (int)i);
        cr_assert_not_null(up);
        cr_assert_null(strstr(up, KEY_ALICE), "%s: the client's key went upstream:\n%s", what, up);
        cr_assert_null(strcasestr(up, "\nx-api-key:"), "%s: x-api-key went upstream:\n%s", what, up);
        char *auth = strcasestr(up, "\nauthorization:");
        if (cases[i].upstream_auth) {
            cr_assert_not_null(auth, "%s: no upstream_auth sent:\n%s", what, up);
            cr_assert(!strncmp(auth + 1 + 14, " Bearer backend-secret-42\r\n", 27),
                      "%s: upstream Authorization is not the pool's:\n%s", what, up);
            cr_assert_null(strcasestr(auth + 1, "\nauthorization:"), "%s: two Authorization headers:\n%s", what,
                           up);
        } else {
            cr_assert_null(auth, "%s: an Authorization header went upstream:\n%s", what, up);
        }
        /* the request itself does go upstream */
        cr_assert(!strncmp(up, cases[i].method, strlen(cases[i].method)), "%s:\n%s", what, up);
        if (cases[i].body)
            cr_assert(strstr(up, cases[i].body), "%s: body not forwarded as is:\n%s", what, up);
        free(up);
    }
    h_finish();
}

Test(auth, model_not_allowed_is_403_and_max_tokens_over_the_tier_cap_is_400)
{
    struct h_mock llama, qwen;
    H_MOCK(&llama, "llama", "--tps 0 --ttft-ms 0 --model llama-3.1-8b");
    H_MOCK(&qwen, "qwen", "--tps 0 --ttft-ms 0 --model qwen2-7b");
    h_write_file(h_keys_path(), "%s%s", h_key_line("alice", KEY_ALICE, "capped", "llama-*"),
                 h_key_line("bob", KEY_BOB, "default", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool llama]\nbackend = 127.0.0.1:%d\n\n[pool qwen]\nbackend = 127.0.0.1:%d\n\n"
                "[route llama]\npath = /v1/chat/completions\npool = llama\nmodels = llama-*\n\n"
                "[route qwen]\npath = /v1/chat/completions\npool = qwen\nmodels = qwen2-*\n\n"
                "[keys]\nauth = required\nfile = %s\n\n"
                "[tier capped]\nmax_tokens = 100\n",
                llama.port, qwen.port, h_keys_path());
    H_GW(&g);

    struct h_resp r;
    int rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), chat_body("qwen2-7b", 5), &r);
    EXPECT(rc, r, 403, "alice (llama-* only) asking for qwen2-7b");
    expect_error(&r, "403", "permission_error", "model_not_allowed");
    cr_assert(strstr(r.body, "qwen2-7b"), "the message should name the model: %s", r.body);
    h_resp_free(&r);
    /* no route for the model: 404 comes first, even for a key that may not use it */
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), chat_body("mistral-7b", 5), &r);
    EXPECT(rc, r, 404, "a model no route takes");
    expect_error(&r, "404", "invalid_request_error", "model_not_found");
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), chat_body("llama-3.1-8b", 5), &r);
    EXPECT(rc, r, 200, "alice asking for llama-3.1-8b");
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_BOB), chat_body("qwen2-7b", 5), &r);
    EXPECT(rc, r, 200, "bob (any model) asking for qwen2-7b");
    h_resp_free(&r);

    /* the tier's max_tokens: equal passes, more is 400 */
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), chat_body("llama-3.1-8b", 100), &r);
    EXPECT(rc, r, 200, "max_tokens at the cap");
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), chat_body("llama-3.1-8b", 101), &r);
    EXPECT(rc, r, 400, "max_tokens over the cap");
    expect_error(&r, "400", "invalid_request_error", NULL);
    cr_assert(strstr(r.body, "max_tokens"), "%s", r.body);
    h_resp_free(&r);
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE),
              "{\"model\":\"llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
              "\"max_completion_tokens\":500}",
              &r);
    EXPECT(rc, r, 400, "max_completion_tokens over the cap");
    h_resp_free(&r);
    /* bob's tier has no cap */
    rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_BOB), chat_body("llama-3.1-8b", 500), &r);
    EXPECT(rc, r, 200, "no cap on the default tier");
    h_resp_free(&r);

    cr_assert_eq(h_metric0(qwen.port, "mockllm_requests_total"), 1, "only bob's qwen request may reach qwen");
    cr_assert_eq(h_metric0(llama.port, "mockllm_requests_total"), 3);
    h_finish();
}

Test(auth, access_log_names_the_key_and_never_holds_it)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s%s", h_key_line("alice", KEY_ALICE, "gold", NULL),
                 h_key_line("carol", KEY_CAROL, "tiny", "mock-*"));
    h_gw_config(&g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n"
                "[tier gold]\npriority = high\n\n"
                "[tier tiny]\nrequests_per_minute = 2\npriority = low\n",
                m.port, h_keys_path());
    H_GW(&g);

    char hdr[512];
    struct h_resp r;
    /* 14 content bytes: the mock's usage says 4 prompt tokens and max_tokens completion tokens */
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-ok\r\n", h_bearer(KEY_ALICE));
    int rc = once(g.port, "POST", "/v1/chat/completions", hdr, chat_body("mock-llama-3.1-8b", 7), &r);
    EXPECT(rc, r, 200, "alice");
    cr_assert_eq(h_json_int(r.body, "prompt_tokens"), 4, "%s", r.body);
    h_resp_free(&r);
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-401\r\n", h_bearer(KEY_NOBODY));
    rc = once(g.port, "POST", "/v1/chat/completions", hdr, chat_body("mock-llama-3.1-8b", 7), &r);
    EXPECT(rc, r, 401, "unknown key");
    h_resp_free(&r);
    for (int i = 0; i < 3; i++) {
        snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-carol-%d\r\n", xapikey(KEY_CAROL), i);
        rc = once(g.port, "POST", "/v1/chat/completions", hdr, chat_body("mock-llama-3.1-8b", 3), &r);
        EXPECT(rc, r, i < 2 ? 200 : 429, "carol, 2 requests per minute");
        h_resp_free(&r);
    }
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-raw\r\n", h_bearer(KEY_ALICE));
    rc = once(g.port, "GET", "/v1/files", hdr, NULL, &r);
    cr_assert_eq(rc, H_OK);
    h_resp_free(&r);

    char path[600];
    snprintf(path, sizeof path, "%s/access.log", h_dir());
    char *log = NULL;
    static const char *const ids[] = {"log-ok", "log-401", "log-carol-2", "log-raw"};
    for (unsigned i = 0; i < 4; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", ids[i]);
        free(log);
        log = h_wait_for_text(path, needle, 3000 * h_slow());
        cr_assert_not_null(log, "no access log line for %s:\n%s", ids[i], h_read_file(path));
    }

    char *ok = line_with(log, "\"request_id\":\"log-ok\"");
    cr_assert(strstr(ok, "\"status\":200"), "%s", ok);
    cr_assert(strstr(ok, "\"key\":\"alice\""), "the line should name the key: %s", ok);
    cr_assert(strstr(ok, "\"model\":\"mock-llama-3.1-8b\""), "%s", ok);
    cr_assert(strstr(ok, "\"stream\":false"), "%s", ok);
    cr_assert(strstr(ok, "\"tokens_in\":4"), "tokens_in should be the usage's prompt_tokens: %s", ok);
    cr_assert(strstr(ok, "\"tokens_out\":7"), "tokens_out should be the usage's completion_tokens: %s", ok);
    cr_assert(strstr(ok, "\"limit\":null"), "%s", ok);
    cr_assert(strstr(ok, "\"priority\":\"high\""), "%s", ok);

    char *unknown = line_with(log, "\"request_id\":\"log-401\"");
    cr_assert(strstr(unknown, "\"status\":401"), "%s", unknown);
    cr_assert_null(strstr(unknown, "\"key\":\"alice\""), "%s", unknown);
    cr_assert_null(strstr(unknown, "\"key\":\"carol\""), "%s", unknown);

    char *ok2 = line_with(log, "\"request_id\":\"log-carol-1\"");
    cr_assert_not_null(ok2);
    cr_assert(strstr(ok2, "\"key\":\"carol\"") && strstr(ok2, "\"priority\":\"low\"") &&
                  strstr(ok2, "\"tokens_out\":3") && strstr(ok2, "\"limit\":null"),
              "%s", ok2);
    char *limited = line_with(log, "\"request_id\":\"log-carol-2\"");
    cr_assert(strstr(limited, "\"status\":429"), "%s", limited);
    cr_assert(strstr(limited, "\"key\":\"carol\""), "%s", limited);
    cr_assert(strstr(limited, "\"limit\":\"requests\""), "the line should say which limit fired: %s", limited);
    cr_assert(strstr(limited, "\"tokens_in\":0") && strstr(limited, "\"tokens_out\":0"),
              "a refused request used no tokens: %s", limited);

    char *raw = line_with(log, "\"request_id\":\"log-raw\"");
    cr_assert(strstr(raw, "\"key\":\"alice\""), "a raw request is the key's too: %s", raw);

    /* no key, known or not, anywhere in what aigw wrote */
    static const char *const secrets[] = {KEY_ALICE, KEY_CAROL, KEY_NOBODY};
    static const char *const files[] = {"access.log", "aigw.err", "aigw.out"};
    for (unsigned f = 0; f < 3; f++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", h_dir(), files[f]);
        char *text = h_read_file(p);
        for (unsigned s = 0; text && s < 3; s++)
            cr_assert_null(strstr(text, secrets[s]), "%s holds a key:\n%s", files[f], text);
        free(text);
    }
    free(ok);
    free(unknown);
    free(ok2);
    free(limited);
    free(raw);
    free(log);
    h_finish();
}

static void expect_400_credentials(int port, const char *method, const char *path, const char *headers,
                                   const char *body, const char *what)
{
    struct h_resp r;
    int rc = once(port, method, path, headers, body, &r);
    EXPECT(rc, r, 400, what);
    expect_error(&r, what, "invalid_request_error", NULL);
    cr_assert(strstr(r.body, "credentials"), "%s: the message should say why: %s", what, r.body);
    h_resp_free(&r);
}

Test(auth, duplicate_or_conflicting_credentials_are_400)
{
    struct h_mock m;
    struct h_gw g = {0};
    start_with_alice_and_bob(&m, &g);

    const char *body = chat_body("mock-llama-3.1-8b", 2);
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%s%s", h_bearer(KEY_ALICE), h_bearer(KEY_BOB));
    expect_400_credentials(g.port, "POST", "/v1/chat/completions", hdr, body, "two Authorization headers");
    expect_400_credentials(g.port, "GET", "/v1/files", hdr, NULL, "two Authorization headers, raw route");
    expect_400_credentials(g.port, "GET", "/v1/models", hdr, NULL, "two Authorization headers, /v1/models");
    snprintf(hdr, sizeof hdr, "%s%s", h_bearer(KEY_ALICE), h_bearer(KEY_ALICE));
    expect_400_credentials(g.port, "POST", "/v1/chat/completions", hdr, body,
                           "the same Authorization header twice");
    snprintf(hdr, sizeof hdr, "%s%s", xapikey(KEY_ALICE), xapikey(KEY_ALICE));
    expect_400_credentials(g.port, "POST", "/v1/chat/completions", hdr, body, "two x-api-key headers");
    snprintf(hdr, sizeof hdr, "%s%s", h_bearer(KEY_ALICE), xapikey(KEY_BOB));
    expect_400_credentials(g.port, "POST", "/v1/chat/completions", hdr, body,
                           "Authorization and x-api-key naming different keys");
    snprintf(hdr, sizeof hdr, "%s%s", xapikey(KEY_BOB), h_bearer(KEY_ALICE));
    expect_400_credentials(g.port, "GET", "/v1/files", hdr, NULL,
                           "x-api-key and Authorization naming different keys, raw route");
    snprintf(hdr, sizeof hdr, "Authorization: Basic YWxpY2U6eA==\r\n%s", xapikey(KEY_ALICE));
    expect_400_credentials(g.port, "POST", "/v1/chat/completions", hdr, body,
                           "Basic Authorization next to a valid x-api-key");
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 0,
                 "a request with conflicting credentials reached the backend");

    /* the same key in both headers names one caller: accepted */
    struct h_resp r;
    snprintf(hdr, sizeof hdr, "%s%s", h_bearer(KEY_ALICE), xapikey(KEY_ALICE));
    int rc = once(g.port, "POST", "/v1/chat/completions", hdr, body, &r);
    EXPECT(rc, r, 200, "the same key as Bearer and x-api-key");
    h_resp_free(&r);

    /* a 400 without a body leaves a kept-alive connection usable */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    snprintf(hdr, sizeof hdr, "%s%s", h_bearer(KEY_ALICE), xapikey(KEY_BOB));
    rc = h_request(&c, "GET", "/v1/models", hdr, NULL, &r, T_RESP);
    EXPECT(rc, r, 400, "kept-alive GET with conflicting keys");
    h_resp_free(&r);
    rc = h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r, T_RESP);
    EXPECT(rc, r, 200, "the same connection, now with one key");
    h_resp_free(&r);
    h_close(&c);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 2);
    h_finish();
}

Test(auth, credentials_in_the_target_never_reach_the_access_log)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", NULL));
    h_gw_config(&g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n", m.port, h_keys_path());
    H_GW(&g);

    char hdr[512];
    struct h_resp r;
    /* by parameter name, any case */
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-names\r\n", h_bearer(KEY_ALICE));
    int rc = once(g.port, "GET",
                  "/v1/files?purpose=fine-tune&api_key=PlainSecret-1&Token=PlainSecret-2"
                  "&access_token=PlainSecret-3&key=PlainSecret-4&limit=5",
                  hdr, NULL, &r);
    cr_assert_eq(rc, H_OK);
    h_resp_free(&r);
    /* by the look of the value: an aigw key anywhere, sk- and Bearer values */
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-values\r\n", h_bearer(KEY_ALICE));
    rc = once(g.port, "GET",
              "/v1/files/sk-aigw-PlainSecret7xYz0123456789/content?x=sk-proj-PlainSecret-5"
              "&y=Bearer%20PlainSecret-6&z=ok",
              hdr, NULL, &r);
    cr_assert_eq(rc, H_OK);
    h_resp_free(&r);
    /* the caller's own key in the query of an AI request */
    snprintf(hdr, sizeof hdr, "%sX-Request-Id: log-ai\r\n", h_bearer(KEY_ALICE));
    rc = once(g.port, "POST", "/v1/chat/completions?api_key=" KEY_ALICE, hdr, chat_body("mock-llama-3.1-8b", 2),
              &r);
    EXPECT(rc, r, 200, "chat with its key in the query too");
    h_resp_free(&r);

    char *log = NULL;
    static const char *const ids[] = {"log-names", "log-values", "log-ai"};
    for (unsigned i = 0; i < 3; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", ids[i]);
        free(log);
        log = h_wait_for_text(h_access_log_path(), needle, 3000 * h_slow());
        cr_assert_not_null(log, "no access log line for %s:\n%s", ids[i], h_read_file(h_access_log_path()));
    }
    static const char *const targets[] = {
        "\"target\":\"/v1/files?purpose=fine-tune&api_key=REDACTED&Token=REDACTED&access_token=REDACTED"
        "&key=REDACTED&limit=5\"",
        "\"target\":\"/v1/files/REDACTED/content?x=REDACTED&y=REDACTED&z=ok\"",
        "\"target\":\"/v1/chat/completions?api_key=REDACTED\"",
    };
    for (unsigned i = 0; i < 3; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", ids[i]);
        char *line = line_with(log, needle);
        cr_assert_not_null(line);
        cr_assert(strstr(line, targets[i]), "want %s in:\n%s", targets[i], line);
        free(line);
    }
    static const char *const files[] = {"access.log", "aigw.err", "aigw.out"};
    for (unsigned f = 0; f < 3; f++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", h_dir(), files[f]);
        char *text = h_read_file(p);
        cr_assert(!text || (!strstr(text, "PlainSecret") && !strstr(text, KEY_ALICE)), "%s holds a secret:\n%s",
                  files[f], text);
        free(text);
    }
    free(log);
    h_finish();
}

Test(auth, keys_reload_on_sighup)
{
    struct h_mock m;
    struct h_gw g = {0};
    start_with_alice_and_bob(&m, &g);

    const char *body = chat_body("mock-llama-3.1-8b", 1);
    struct h_resp r;
    int rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r);
    EXPECT(rc, r, 200, "alice before the reload");
    h_resp_free(&r);
    expect_401(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_DAVE), body, "dave before he is added");

    /* alice leaves, dave arrives; only the keys file changes */
    h_write_file(h_keys_path(), "%s%s", h_key_line("bob", KEY_BOB, "default", NULL),
                 h_key_line("dave", KEY_DAVE, "default", NULL));
    H_RELOAD(&g, H_RELOAD_APPLIED);
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);) {
        rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_DAVE), body, &r);
        EXPECT(rc, r, 200, "dave, added by the reload");
        h_resp_free(&r);
    }
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);)
        expect_401(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, "removed key");
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);) {
        rc = once(g.port, "POST", "/v1/chat/completions", xapikey(KEY_BOB), body, &r);
        EXPECT(rc, r, 200, "bob, kept across the reload");
        h_resp_free(&r);
    }

    /* a keys file with an error (and alice back in it) is refused: the running keys stay */
    h_write_file(h_keys_path(), "%sbroken-line-without-hash\n", h_key_line("alice", KEY_ALICE, "default", NULL));
    H_RELOAD(&g, H_RELOAD_REFUSED);
    cr_assert(h_alive(g.pid), "aigw died on a bad keys file:\n%s", h_tail(g.tag));
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);)
        expect_401(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, "alice, from a refused file");
    for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);) {
        rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_DAVE), body, &r);
        EXPECT(rc, r, 200, "dave, still in the running keys");
        h_resp_free(&r);
    }
    h_finish();
}

Test(auth, auth_off_lets_anyone_in_and_known_keys_keep_their_limits)
{
    struct rec_backend b;
    rec_start(&b);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "two", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = off\nfile = %s\n\n"
                "[tier two]\nrequests_per_minute = 2\n",
                b.port, h_keys_path());
    H_GW(&g);

    const char *body = chat_body("m", 1);
    struct h_resp r;
    /* without a key, and with one not in the file: anonymous, no limits */
    for (int i = 0; i < 6; i++) {
        int rc = once(g.port, "POST", "/v1/chat/completions", i % 2 ? h_bearer(KEY_NOBODY) : NULL, body, &r);
        EXPECT(rc, r, 200, i % 2 ? "unknown key, auth off" : "no key, auth off");
        cr_assert_null(h_header(&r, "x-ratelimit-limit-requests"), "anonymous has no limits:\n%s", r.head);
        h_resp_free(&r);
        char *up = rec_get(&b, i);
        cr_assert_not_null(up);
        cr_assert_null(strstr(up, KEY_NOBODY), "an unknown key went upstream:\n%s", up);
        cr_assert_null(strcasestr(up, "\nauthorization:"), "an Authorization header went upstream:\n%s", up);
        free(up);
    }
    /* a known key is that key's, limits and all */
    for (int i = 0; i < 3; i++) {
        int rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r);
        EXPECT(rc, r, i < 2 ? 200 : 429, "alice, 2 requests per minute, auth off");
        h_resp_free(&r);
    }
    cr_assert_eq(h_metric0(g.admin_port, "aigw_ratelimited_total{key=\"alice\",limit=\"requests\"}"), 1);
    cr_assert_eq(rec_count(&b), 8);
    h_finish();
}

/* ---- GET /v1/models, split ---- */

/* How many entries a models list has ("id" fields). */
static int count_ids(const char *body)
{
    int n = 0;
    for (const char *p = body; (p = strstr(p, "\"id\":")); p++)
        n++;
    return n;
}

static bool lists(const char *body, const char *id)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"id\":\"%s\"", id);
    return strstr(body, needle) != NULL;
}

static void get_models(int port, const char *key, const char *path, int status, struct h_resp *r)
{
    int rc = once(port, "GET", path, key ? h_bearer(key) : NULL, NULL, r);
    char what[256];
    snprintf(what, sizeof what, "GET %s with %s", path, key ? key : "no key");
    EXPECT(rc, *r, status, what);
}

Test(models, list_shows_what_each_key_may_use)
{
    struct rec_backend b;
    rec_start(&b);
    h_write_file(h_keys_path(), "%s%s%s",
                 h_key_line("alice", KEY_ALICE, "default", "llama-*"),
                 h_key_line("bob", KEY_BOB, "default", NULL),
                 /* qwen2-72b: named only by the key, taken by the glob qwen*; gpt-4o: no route */
                 h_key_line("carol", KEY_CAROL, "default", "qwen2-72b,qwen2-7b,gpt-4o"));
    struct h_gw g = {0};
    /* no route of the exact path /v1/models: aigw answers it (the prefix route does not count).
     * model_list off: this backend counts every request it gets, and what the
     * backends serve is the models_discovery suite's */
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\nmodel_list =\n\n"
                "[route llama]\npath = /v1/chat/completions\npool = p\nmodels = llama-3.1-8b, llama-3.1-70b\n\n"
                "[route qwen]\npath = /v1/chat/completions\npool = p\nmodels = qwen2-7b, qwen*\n\n"
                "[route rest]\npath = /v1/*\npool = p\nkind = raw\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                b.port, h_keys_path());
    H_GW(&g);

    struct h_resp r;
    get_models(g.port, KEY_ALICE, "/v1/models", 200, &r);
    cr_assert(strstr(r.body, "\"object\":\"list\"") && strstr(r.body, "\"data\":["), "not a list: %s", r.body);
    cr_assert(lists(r.body, "llama-3.1-8b") && lists(r.body, "llama-3.1-70b"), "alice: %s", r.body);
    cr_assert_eq(count_ids(r.body), 2, "alice may use exactly the two llama models: %s", r.body);
    cr_assert(strstr(r.body, "\"object\":\"model\""), "%s", r.body);
    const char *ct = h_header(&r, "content-type");
    cr_assert(ct && strstr(ct, "application/json"), "content-type %s", ct ? ct : "(none)");
    h_resp_free(&r);

    get_models(g.port, KEY_BOB, "/v1/models", 200, &r);
    cr_assert(lists(r.body, "llama-3.1-8b") && lists(r.body, "llama-3.1-70b") && lists(r.body, "qwen2-7b"),
              "bob: %s", r.body);
    cr_assert_eq(count_ids(r.body), 3, "bob sees the literal names of the routes, once each: %s", r.body);
    h_resp_free(&r);

    get_models(g.port, KEY_CAROL, "/v1/models", 200, &r);
    cr_assert(lists(r.body, "qwen2-7b") && lists(r.body, "qwen2-72b"), "carol: %s", r.body);
    cr_assert(!lists(r.body, "gpt-4o"), "gpt-4o has no route: %s", r.body);
    cr_assert_eq(count_ids(r.body), 2, "carol: %s", r.body);
    h_resp_free(&r);

    /* one model */
    get_models(g.port, KEY_CAROL, "/v1/models/qwen2-72b", 200, &r);
    cr_assert(h_json_str_is(r.body, "id", "qwen2-72b") && h_json_str_is(r.body, "object", "model"), "%s",
              r.body);
    cr_assert_null(strstr(r.body, "\"data\""), "one model, not a list: %s", r.body);
    h_resp_free(&r);
    get_models(g.port, KEY_ALICE, "/v1/models/llama-3.1-70b", 200, &r);
    cr_assert(h_json_str_is(r.body, "id", "llama-3.1-70b"), "%s", r.body);
    h_resp_free(&r);
    get_models(g.port, KEY_ALICE, "/v1/models/qwen2-7b", 404, &r);
    expect_error(&r, "a model alice may not use", "invalid_request_error", "model_not_found");
    h_resp_free(&r);
    get_models(g.port, KEY_CAROL, "/v1/models/gpt-4o", 404, &r);
    h_resp_free(&r);
    get_models(g.port, KEY_BOB, "/v1/models/no-such-model", 404, &r);
    h_resp_free(&r);
    get_models(g.port, NULL, "/v1/models", 401, &r);
    h_resp_free(&r);

    cr_assert_eq(rec_count(&b), 0, "GET /v1/models went to the backend");
    h_finish();
}

Test(models, a_route_of_the_exact_path_takes_v1_models_upstream)
{
    struct rec_backend b;
    rec_start(&b);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", "llama-*"));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n"
                "[route llama]\npath = /v1/chat/completions\npool = p\nmodels = llama-3.1-8b\n\n"
                "[route models]\npath = /v1/models\npool = p\nkind = raw\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                b.port, h_keys_path());
    H_GW(&g);

    struct h_resp r;
    get_models(g.port, NULL, "/v1/models", 401, &r);   /* the key is still checked */
    h_resp_free(&r);
    get_models(g.port, KEY_ALICE, "/v1/models", 200, &r);
    cr_assert(strstr(r.body, "chatcmpl-rec"), "GET /v1/models should be the backend's answer: %s", r.body);
    h_resp_free(&r);
    cr_assert_eq(rec_count(&b), 1);
    char *up = rec_get(&b, 0);
    cr_assert(!strncmp(up, "GET /v1/models HTTP/1.1\r\n", 25), "%s", up);
    cr_assert_null(strstr(up, KEY_ALICE), "the key went upstream:\n%s", up);
    free(up);
    /* that route is for its exact path only: one model is still aigw's */
    get_models(g.port, KEY_ALICE, "/v1/models/llama-3.1-8b", 200, &r);
    cr_assert(h_json_str_is(r.body, "id", "llama-3.1-8b"), "%s", r.body);
    h_resp_free(&r);
    cr_assert_eq(rec_count(&b), 1);
    h_finish();
}

Test(models, split_spreads_a_route_by_weight)
{
    struct h_mock a, bm;
    H_MOCK(&a, "mock-a", "--tps 0 --ttft-ms 0");
    H_MOCK(&bm, "mock-b", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "default", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool a]\nbackend = 127.0.0.1:%d\n\n[pool b]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\nsplit = a:3 b:1\n\n"
                "[keys]\nauth = required\nfile = %s\n",
                a.port, bm.port, h_keys_path());
    H_GW(&g);

    /* fresh connections: the requests land on both shards, each with its own
     * smooth weighted round robin, exact over its own requests */
    const char *body = chat_body("mock-llama-3.1-8b", 1);
    for (int i = 0; i < 40; i++) {
        struct h_resp r;
        int rc = once(g.port, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &r);
        EXPECT(rc, r, 200, "split request");
        h_resp_free(&r);
    }
    double na = h_metric0(a.port, "mockllm_requests_total");
    double nb = h_metric0(bm.port, "mockllm_requests_total");
    cr_assert_eq(na + nb, 40, "a %.0f + b %.0f", na, nb);
    /* each shard is within 1 of its 3:1 share (the pattern a a b a) */
    cr_assert(na >= 28 && na <= 32, "3:1 over 40 requests: a got %.0f, b %.0f", na, nb);

    char path[600];
    snprintf(path, sizeof path, "%s/access.log", h_dir());
    int64_t end = h_now_ms() + 3000 * h_slow();
    int la = 0, lb = 0;
    while (h_now_ms() < end) {
        char *log = h_read_file(path);
        la = lb = 0;
        for (const char *p = log; p && (p = strstr(p, "\"pool\":\"a\"")); p++)
            la++;
        for (const char *p = log; p && (p = strstr(p, "\"pool\":\"b\"")); p++)
            lb++;
        free(log);
        if (la + lb >= 40)
            break;
        h_sleep_ms(20);
    }
    cr_assert(la == (int)na && lb == (int)nb, "access log pools a %d b %d, backends a %.0f b %.0f", la, lb, na, nb);
    h_finish();
}
