/* Daily spend caps end to end: a tier's daily_spend, in USD at the [model]
 * prices, refuses with 429 spend once the day's spend is used; admission
 * reserves the worst case and settlement gives back what the request did not
 * cost; unpriced models are never refused by it; it survives a restart with
 * state_dir, and with [cluster] it is one cap over the gateways, kept in
 * Redis's day hash (field spend).
 *
 * The numbers: mock-llama-* costs 1.00 USD per million prompt tokens and 2.00
 * per million completion tokens, i.e. 1 and 2 micro-USD a token. A chat body
 * of h_chat_body with max_tokens 50 has a prompt estimate of 8 tokens and the
 * mock reports 4 + 50: it reserves 8 + 100 = 108 micro-USD and costs 104. A
 * 400 micro-USD day then admits three (312, and a fourth would reserve up to
 * 420); the shards' leases (at most 2 x 400/32) do not change that. */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(spend, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define T_RESP (5000 * h_slow())
#define KEY_ALICE "sk-itest-spend-alice-4Kd9Wq"
#define COST_EACH 104   /* micro-USD of one h_chat_body(50) request (see above) */
#define MODEL_PRICES "[model mock-llama-*]\ninput_per_mtok = 1.00\noutput_per_mtok = 2.00\n\n"
#define MOCK_ARGS "--tps 0 --ttft-ms 0 --model mock-llama-3.1-8b --model unpriced-7b"

struct answer {
    int status;
    char code[32];          /* the error's code, if any */
    long long retry_after;  /* -1: no Retry-After */
    char *body;             /* malloc'd */
};

/* One chat completion for key on a fresh connection, with extra header lines. */
static struct answer ask(const struct h_gw *g, const char *key, const char *body, const char *extra)
{
    struct answer a = { .retry_after = -1 };
    struct h_conn c;
    struct h_resp r;
    H_CONNECT_GW(&c, g);
    char hdr[512];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s%s", h_bearer(key), extra ? extra : "");
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, body, &r, T_RESP);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "%s: no complete answer (%d); stderr:\n%s", g->tag, rc, h_tail(g->tag));
    a.status = r.status;
    if (r.body && r.status != 200) {
        const char *p = strstr(r.body, "\"code\":\"");
        if (p)
            sscanf(p + 8, "%31[^\"]", a.code);
    }
    const char *ra = h_header(&r, "retry-after");
    if (ra)
        a.retry_after = atoll(ra);
    a.body = strdup(r.body ? r.body : "");
    h_resp_free(&r);
    return a;
}

static void answer_free(struct answer *a)
{
    free(a->body);
    a->body = NULL;
}

static void expect_ok(const struct h_gw *g, const char *body, const char *what)
{
    struct answer a = ask(g, KEY_ALICE, body, NULL);
    cr_assert_eq(a.status, 200, "%s: %d %s", what, a.status, a.body);
    answer_free(&a);
}

/* The same, then waits for the request's access log line: aigw writes it once
 * the request has settled, which the client's answer may come before (and the
 * next request may land on another shard). */
static void expect_ok_settled(const struct h_gw *g, const char *body, const char *what)
{
    static int seq;
    char rid[64], hdr[128], needle[128];
    snprintf(rid, sizeof rid, "spend-%d-%d", (int)getpid(), seq++);
    snprintf(hdr, sizeof hdr, "X-Request-Id: %s\r\n", rid);
    struct answer a = ask(g, KEY_ALICE, body, hdr);
    cr_assert_eq(a.status, 200, "%s: %d %s", what, a.status, a.body);
    answer_free(&a);
    snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", rid);
    char *text = h_wait_for_text(h_access_log_path(), needle, T_RESP);
    cr_assert_not_null(text, "%s: no access log line for %s", what, rid);
    free(text);
}

/* A 429 spend that waiting until 00:00 UTC can cure. */
static void expect_spend_refusal(const struct h_gw *g, const char *body, const char *what)
{
    struct answer a = ask(g, KEY_ALICE, body, NULL);
    cr_assert(a.status == 429 && !strcmp(a.code, "spend"), "%s: %d %s, wanted 429 spend", what, a.status, a.body);
    cr_assert(h_json_str_is(a.body, "type", "rate_limit_exceeded"), "%s", a.body);
    cr_assert(a.retry_after >= 1 && a.retry_after <= 86400, "%s: Retry-After %lld, wanted the time to 00:00 UTC",
              what, a.retry_after);
    answer_free(&a);
}

/* aigw in front of the mock with alice on a tier of `tier_lines`. */
static void start(struct h_mock *m, struct h_gw *g, const char *mock_args, const char *tier_lines)
{
    H_MOCK(m, "mock", mock_args);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "capped", NULL));
    h_gw_config(g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" MODEL_PRICES "[tier capped]\n%s",
                m->port, h_keys_path(), tier_lines);
    H_GW(g);
}

Test(spend, refuses_with_429_spend_once_the_days_spend_is_used)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g, MOCK_ARGS, "daily_spend = 0.000400\n");
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    for (int i = 0; i < 3; i++)
        expect_ok(&g, body, "within the day's spend");
    expect_spend_refusal(&g, body, "the fourth request of a 400 micro-USD day");
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_ratelimited_total{key=\"alice\",limit=\"spend\"}", H_EQ, 1,
                               T_RESP), 1);
    char *log = h_wait_for_text(h_access_log_path(), "\"limit\":\"spend\"", T_RESP);
    cr_assert_not_null(log, "no access log line says limit spend:\n%s", h_read_file(h_access_log_path()));
    free(log);
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 3, "the refused request reached the backend");
    h_finish();
}

/* No max_tokens: 8 + 1024 tokens reserved, 2056 micro-USD; the mock makes 5
 * (4 + 10 = 14 micro-USD). Without the unused 2042 coming back, a 3000
 * micro-USD day would admit one. */
Test(spend, settlement_gives_back_what_the_reservation_did_not_cost)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g, MOCK_ARGS " --max-tokens 5", "daily_spend = 0.003\n");
    const char *body = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"Say something.\"}],\"stream\":false}";
    for (int i = 0; i < 10; i++)
        expect_ok_settled(&g, body, "a request that reserves 2056 and costs 14 micro-USD");
    /* 140 spent: a request reserving more than the 2860 left is refused, for now */
    const char *big = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"Say something.\"}],\"max_tokens\":1450,\"stream\":false}";
    expect_spend_refusal(&g, big, "8 + 2900 micro-USD with 140 spent of 3000");
    h_finish();
}

Test(spend, unpriced_models_are_never_refused_and_a_request_over_the_whole_cap_is_refused_at_once)
{
    struct h_mock m;
    struct h_gw g = {0};
    start(&m, &g, MOCK_ARGS, "daily_spend = 0.000050\n");
    const char *unpriced = "{\"model\":\"unpriced-7b\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],"
                           "\"max_tokens\":50}";
    for (int i = 0; i < 8; i++)
        expect_ok(&g, unpriced, "an unpriced model under a 50 micro-USD cap");
    /* 108 micro-USD at worst: more than the whole day allows, so no Retry-After */
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    int64_t t0 = h_now_ms();
    struct answer a = ask(&g, KEY_ALICE, body, NULL);
    cr_assert(a.status == 429 && !strcmp(a.code, "spend"), "%d %s", a.status, a.body);
    cr_assert_eq(a.retry_after, -1, "a request no day can admit promises a retry: %lld", a.retry_after);
    cr_assert(strstr(a.body, "108 micro-USD"), "the message says what it would cost: %s", a.body);
    answer_free(&a);
    /* the largest max_tokens aigw reads (2^53): its cost saturates, never wraps to a small one */
    const char *huge = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],"
                       "\"max_tokens\":9007199254740992}";
    const char *large = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi.\"}],"
                        "\"max_tokens\":100000000}";
    const char *const hostile[] = { huge, large };
    for (int i = 0; i < 2; i++) {
        a = ask(&g, KEY_ALICE, hostile[i], NULL);
        cr_assert(a.status == 429 && !strcmp(a.code, "spend") && a.retry_after == -1, "%s: %d %s", hostile[i],
                  a.status, a.body);
        answer_free(&a);
    }
    cr_assert_lt(h_now_ms() - t0, T_RESP, "the refusals took %lld ms", (long long)(h_now_ms() - t0));
    cr_assert_eq(h_metric0(m.port, "mockllm_requests_total"), 8, "only the unpriced requests reached the backend");
    h_finish();
}

/* ---- a backend that says more than it could have generated ---- */

struct liar {
    int listen_fd, port;
    pthread_t thread;
};

/* Answers every request with a completion of 4 + 1000 tokens, whatever it asked. */
static void *liar_main(void *arg)
{
    struct liar *b = arg;
    static const char body[] =
        "{\"id\":\"chatcmpl-l\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"mock-llama-3.1-8b\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
        "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1000,"
        "\"total_tokens\":1004}}";
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", sizeof body - 1);
    for (int served = 0; served < 1000; served++) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        if (h_read_request(fd)) {
            h_write_all(fd, head, (size_t)hl);
            h_write_all(fd, body, sizeof body - 1);
        }
        close(fd);
    }
    return NULL;
}

/* Reserves 8 + 20 micro-USD (max_tokens 10), costs 4 + 2000: the spend goes
 * over the 100 micro-USD day, as the daily token quota would, and the next
 * request is refused until 00:00 UTC. */
Test(spend, a_backend_reporting_more_than_max_tokens_takes_the_spend_over_the_cap)
{
    struct liar b;
    b.listen_fd = h_listen_loopback(&b.port);
    cr_assert_geq(b.listen_fd, 0);
    cr_assert_eq(pthread_create(&b.thread, NULL, liar_main, &b), 0);
    pthread_detach(b.thread);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "capped", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool p]\nbackend = 127.0.0.1:%d\n\n[route chat]\npath = /v1/chat/completions\npool = p\n\n"
                "[keys]\nauth = required\nfile = %s\n\n" MODEL_PRICES "[tier capped]\ndaily_spend = 0.0001\n",
                b.port, h_keys_path());
    H_GW(&g);
    char body[512];
    h_chat_body(body, sizeof body, 10, false);
    expect_ok_settled(&g, body, "28 micro-USD at worst of a 100 micro-USD day");
    double cost = h_wait_metric(g.admin_port, "aigw_cost_usd_total{key=\"alice\",model=\"mock-llama-*\"}", H_GE,
                                0.002004 * (1 - 1e-9), T_RESP);
    cr_assert(cost > 0.002 && cost < 0.00201, "the lie was charged at %.9f USD", cost);
    expect_spend_refusal(&g, body, "after a request that cost 2004 micro-USD of a 100 micro-USD day");
    h_finish();
}

/* ---- across a restart ---- */

static void stop_cleanly(struct h_gw *g)
{
    int st = h_stop(g->pid, 10000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw did not exit 0 on SIGTERM (0x%x):\n%s", st,
              h_tail(g->tag));
    g->pid = 0;
}

Test(spend, the_days_spend_survives_a_restart_with_state_dir)
{
    char dir[400], file[480];
    snprintf(dir, sizeof dir, "%s/state", h_dir());
    snprintf(file, sizeof file, "%s/quotas.state", dir);
    cr_assert_eq(mkdir(dir, 0700), 0);
    struct h_mock m;
    struct h_gw g = {0};
    snprintf(g.server_extra, sizeof g.server_extra, "state_dir = %s\n", dir);
    start(&m, &g, MOCK_ARGS, "daily_spend = 0.000400\n");
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    expect_ok(&g, body, "before the restart");
    expect_ok(&g, body, "before the restart");
    stop_cleanly(&g);
    char *text = h_read_file(file);
    cr_assert_not_null(text, "no state file");
    const char *at = strstr(text, "\nspend alice ");
    long long spent = at ? atoll(at + 13) : -1;
    cr_assert(!strncmp(text, "aigw-state 2\n", 13) && spent >= 2 * COST_EACH && spent <= 2 * COST_EACH + 2 * 12,
              "the state file:\n%s", text);
    free(text);

    snprintf(g.tag, sizeof g.tag, "aigw-after");
    H_GW(&g);
    cr_assert(h_wait_log_line(g.tag, "restored the daily quota use of 1 key(s)", NULL, 2000 * h_slow()), "%s",
              h_tail(g.tag));
    expect_ok(&g, body, "the third request of the day, after the restart");
    expect_spend_refusal(&g, body, "the fourth request of the day, after the restart");
    h_finish();
}

/* ---- [cluster]: one cap over the gateways ---- */

/* The day hash's spend field of NAME today (0 if none). */
static long long redis_day_spend(const struct h_redis *r, const char *name)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y%m%d", &tm);
    long long v = h_redis_int(r, "HGET aigw:day:%s:%s spend", day, name);
    return v < 0 ? 0 : v;
}

static void wait_syncs(const struct h_gw *g, int more)
{
    double now = h_metric0(g->admin_port, "aigw_cluster_syncs_total");
    double v = h_wait_metric(g->admin_port, "aigw_cluster_syncs_total", H_GE, now + more, T_RESP);
    cr_assert_geq(v, now + more, "%s: syncs did not advance from %g; stderr:\n%s", g->tag, now, h_tail(g->tag));
}

Test(spend, two_gateways_share_one_cap_kept_in_redis)
{
    struct h_redis redis = {0};
    cr_assert_eq(h_redis_start(&redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    struct h_mock m;
    H_MOCK(&m, "mock", MOCK_ARGS);
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_ALICE, "capped", NULL));
    struct h_gw gw[2] = {{0}};
    for (int i = 0; i < 2; i++) {
        snprintf(gw[i].tag, sizeof gw[i].tag, "aigw-%c", 'a' + i);
        h_gw_config(&gw[i], NULL,
                    H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" MODEL_PRICES
                    "[tier capped]\ndaily_spend = 0.000400\n\n"
                    "[cluster]\nredis = 127.0.0.1:%d\nsync_interval = 20ms\ntimeout = 250ms\n",
                    m.port, h_keys_path(), redis.port);
        H_GW(&gw[i]);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(h_wait_metric(gw[i].admin_port, "aigw_cluster_hosts", H_EQ, 2, T_RESP), 2, "%s",
                     h_tail(gw[i].tag));
        wait_syncs(&gw[i], 3);
    }
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    int ok = 0, refused = 0;
    for (int i = 0; i < 12; i++) {
        struct answer a = ask(&gw[i % 2], KEY_ALICE, body, NULL);
        if (a.status == 200) {
            ok++;
        } else {
            cr_assert(a.status == 429 && !strcmp(a.code, "spend"), "%s: %d %s", gw[i % 2].tag, a.status, a.body);
            refused++;
        }
        answer_free(&a);
        wait_syncs(&gw[i % 2], 2);  /* the store sees this host's use before the other asks */
    }
    cr_log_info("two gateways, one 400 micro-USD cap: %d admitted, %d refused", ok, refused);
    cr_assert(ok >= 1 && ok <= 3, "%d requests of 104 micro-USD admitted on one 400 micro-USD day", ok);
    for (int i = 0; i < 2; i++)
        wait_syncs(&gw[i], 2);
    long long held = redis_day_spend(&redis, "alice");
    cr_assert(held >= ok * COST_EACH && held <= 400, "Redis's day hash says %lld micro-USD spent; %d requests cost %d",
              held, ok, ok * COST_EACH);
    for (int i = 0; i < 2; i++)
        cr_assert_geq(h_metric0(gw[i].admin_port, "aigw_cluster_leased_total{dimension=\"spend\",direction=\"taken\"}"),
                      1, "%s leased no spend", gw[i].tag);
    h_finish();
}
