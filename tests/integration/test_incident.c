/* What the night shift reads during an incident (issue 13, items 2, 3, 9):
 * a stream cut at drain_timeout is logged with its termination and settled;
 * reloads are counted with the time of the last success, and "restart needed"
 * compares with what runs; the access log shows queue wait, the backends tried
 * in order, fallback and termination; a client abort mid-stream is 499; an
 * unrouted model is attributed to no route; error log lines carry a time off
 * the journal; SIGUSR1 says it reopened; 503 bodies name no pool. */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(incident, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define T_RESP (5000 * h_slow())
#define T_LOG (3000 * h_slow())

/* The access log line holding needle (malloc'd), NULL after ms. */
static char *log_line_with(const char *needle, int ms)
{
    char *text = h_wait_for_text(h_access_log_path(), needle, ms);
    if (!text)
        return NULL;
    char *at = strstr(text, needle), *start = at;
    while (start > text && start[-1] != '\n')
        start--;
    char *eol = strchr(at, '\n');
    char *line = strndup(start, eol ? (size_t)(eol - start) : strlen(start));
    free(text);
    return line;
}

static char *log_line(const char *id)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"request_id\":\"%s\"", id);
    return log_line_with(needle, T_LOG);
}

/* The number after "key": in line, -1 if absent. */
static long long json_num(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static double json_double(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    return p ? strtod(p + strlen(pat), NULL) : -1;
}

static const char *chat_model(char *out, size_t cap, const char *model, int max_tokens, bool stream)
{
    snprintf(out, cap,
             "{\"model\":\"%s\",\"max_tokens\":%d,\"stream\":%s,"
             "\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}",
             model, max_tokens, stream ? "true" : "false");
    return out;
}

/* Sends a chat request on c (not waiting for the answer). */
static void send_chat(struct h_conn *c, const char *extra, const char *body, const char *id)
{
    cr_assert_eq(h_sendf(c,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\nX-Request-Id: %s\r\n%s\r\n%s",
                         strlen(body), id, extra ? extra : "", body),
                 0);
}

static int post_chat(int port, const char *extra, const char *body, const char *id, struct h_resp *r)
{
    struct h_conn c;
    if (h_connect(&c, port) != 0)
        return H_ECLOSED;
    send_chat(&c, extra, body, id);
    int rc = h_recv(&c, r, T_RESP);
    h_close(&c);
    return rc;
}

/* ---- item 2: a stream cut at drain_timeout ---- */

#define DRAIN_KEY "sk-itest-incident-drain-4Tq9"

Test(incident, stream_cut_at_drain_timeout_is_logged_and_settled)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 20 --ttft-ms 0");
    char state_dir[400], state_file[480];
    snprintf(state_dir, sizeof state_dir, "%s/state", h_dir());
    snprintf(state_file, sizeof state_file, "%s/quotas.state", state_dir);
    mkdir(state_dir, 0700);
    h_write_file(h_keys_path(), "%s", h_key_line("night", DRAIN_KEY, "day", NULL));
    struct h_gw g = {.shards = 1};
    snprintf(g.server_extra, sizeof g.server_extra, "state_dir = %s\n", state_dir);
    h_gw_config(&g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n[tier day]\ndaily_tokens = 2000\n",
                m.port, h_keys_path());
    /* the harness's drain_timeout (5s) made short */
    char *conf = h_read_file(g.conf);
    char *dt = strstr(conf, "drain_timeout = 5s");
    cr_assert_not_null(dt);
    dt[16] = '1';
    h_write_file(g.conf, "%s", conf);
    free(conf);
    H_GW(&g);

    /* 400 tokens at 20/s: 20 s, far past drain_timeout */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    char body[512];
    send_chat(&c, h_bearer(DRAIN_KEY), chat_model(body, sizeof body, "mock-llama-3.1-8b", 400, true), "cut-1");
    struct h_resp head;
    cr_assert_eq(h_recv_head(&c, &head, T_RESP), H_OK, "no stream head; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(head.status, 200, "%d %s", head.status, head.body ? head.body : "");
    struct h_sse sse;
    h_sse_init(&sse, &c, &head);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(h_sse_next(&sse, T_RESP), 1, "event %d of the stream did not come", i);

    int64_t t0 = h_now_ms();
    cr_assert_eq(kill(g.pid, SIGTERM), 0);
    int st = h_wait_exit(g.pid, (1000 + 2000 + 3000) * h_slow());
    int64_t took = h_now_ms() - t0;
    cr_assert(st != -1, "aigw still running %lld ms after SIGTERM with drain_timeout 1s", (long long)took);
    g.pid = 0;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status 0x%x; stderr:\n%s", st, h_tail(g.tag));
    cr_assert(took >= 900, "exited %lld ms after SIGTERM, before drain_timeout (1s)", (long long)took);
    cr_assert(h_wait_log_line(g.tag, "drain_timeout: cut 1 request(s)", NULL, 0), "%s", h_tail(g.tag));
    int rc;
    int events = 3;
    while ((rc = h_sse_next(&sse, T_RESP)) == 1 && events < 1000)
        events++;
    cr_assert_eq(rc, H_ECLOSED, "the cut stream should end without its terminator (rc %d)", rc);
    h_sse_free(&sse);
    h_resp_free(&head);
    h_close(&c);

    char *line = log_line("cut-1");
    cr_assert_not_null(line, "no access log line for the stream cut at drain_timeout; log:\n%s",
                       h_read_file(h_access_log_path()));
    cr_assert(strstr(line, "\"termination\":\"drain_timeout\""), "%s", line);
    cr_assert(strstr(line, "\"status\":200"), "the client got a 200 head: %s", line);
    cr_assert(strstr(line, "\"key\":\"night\""), "%s", line);
    long long tin = json_num(line, "tokens_in"), tout = json_num(line, "tokens_out");
    cr_assert(tout >= 3 && tout < 400, "settled on the %lld tokens generated so far, not the 400 asked: %s", tout,
              line);
    cr_assert(tout >= events - 2 && tout <= events + 25, "tokens_out %lld, the client saw %d events", tout, events);
    free(line);

    /* settled for billing: the day's use written at exit is what was used, not the reservation */
    char *text = h_read_file(state_file);
    cr_assert_not_null(text, "no %s after a clean exit", state_file);
    const char *at = strstr(text, "\nkey night ");
    cr_assert_not_null(at, "no line for the key in the state file:\n%s", text);
    long long used = strtoll(at + 11, NULL, 10);
    free(text);
    cr_log_info("drain cut: %d events seen, tokens_in %lld tokens_out %lld, day's use %lld", events, tin, tout, used);
    cr_assert(used >= tin + tout && used < tin + 400,
              "the day's use is %lld: wanted the %lld tokens used (plus unused lease), below the reservation",
              used, tin + tout);
    h_finish();
}

/* ---- item 3: reload tells the truth ---- */

Test(incident, reloads_are_counted_with_their_result_and_time)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    struct h_gw g = {0};
    time_t started = time(NULL);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    double ts0 = h_metric(g.admin_port, "aigw_config_last_reload_success_timestamp_seconds");
    cr_assert(ts0 >= (double)started - 1 && ts0 <= (double)time(NULL) + 1, "the start's load time: %.0f", ts0);
    cr_assert_eq(h_metric(g.admin_port, "aigw_config_last_reload_successful"), 1);

    /* a refused reload: counted, the gauge says so, the success time stays */
    char conf_a[4096];
    char *a = h_read_file(g.conf);
    snprintf(conf_a, sizeof conf_a, "%s", a);
    free(a);
    h_write_file(g.conf, "%s\n[no_such_section]\nfoo = bar\n", conf_a);
    H_RELOAD(&g, H_RELOAD_REFUSED);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_reloads_total{result=\"failed\"}"), 1);
    cr_assert_eq(h_metric(g.admin_port, "aigw_config_last_reload_successful"), 0);
    cr_assert_eq(h_metric(g.admin_port, "aigw_config_last_reload_success_timestamp_seconds"), ts0);

    /* the file as it was: applied in place (same listeners and shards, so no
     * handover and no warning), counted, and the success time moves */
    h_write_file(g.conf, "%s", conf_a);
    time_t before_ok = time(NULL);
    H_RELOAD(&g, H_RELOAD_APPLIED);
    cr_assert_eq(h_metric(g.admin_port, "aigw_config_last_reload_successful"), 1);
    double ts1 = h_metric(g.admin_port, "aigw_config_last_reload_success_timestamp_seconds");
    cr_assert(ts1 >= (double)before_ok - 1 && ts1 <= (double)time(NULL) + 1, "the reload's time: %.0f", ts1);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_config_reloads_total{result=\"ok\"}"), 1);
    cr_assert_null(strstr(h_tail(g.tag), "restart aigw"), "nothing asks for a restart:\n%s", h_tail(g.tag));
    h_finish();
}

/* ---- item 9: the access log's incident fields ---- */

Test(incident, access_log_lists_the_backends_tried_in_order)
{
    struct h_b503 s;
    h_b503_start(&s);
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    struct h_gw g = {.shards = 1};
    h_gw_config(&g, NULL,
                "[pool gpu]\nbackend = 127.0.0.1:%d\nbackend = 127.0.0.1:%d\nbalance = round_robin\nretries = 1\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = gpu\nkind = ai\n",
                s.port, m.port);
    H_GW(&g);
    /* round robin over two on one shard: one of the first two starts on the 503 backend */
    char body[512], want[200];
    snprintf(want, sizeof want, "\"backends\":[\"127.0.0.1:%d\",\"127.0.0.1:%d\"]", s.port, m.port);
    bool seen = false;
    for (int i = 0; i < 2; i++) {
        char id[32];
        snprintf(id, sizeof id, "retry-%d", i);
        struct h_resp r;
        cr_assert_eq(post_chat(g.port, NULL, chat_model(body, sizeof body, "mock-llama-3.1-8b", 2, false), id, &r), H_OK);
        cr_assert_eq(r.status, 200, "%d %s", r.status, r.body);
        h_resp_free(&r);
        char *line = log_line(id);
        cr_assert_not_null(line);
        if (strstr(line, want)) {
            seen = true;
            char b[64];
            snprintf(b, sizeof b, "\"backend\":\"127.0.0.1:%d\"", m.port);
            cr_assert(strstr(line, b), "the backend that answered is the last tried: %s", line);
            cr_assert(strstr(line, "\"termination\":null"), "a retried success ended normally: %s", line);
            cr_assert(strstr(line, "\"fallback\":false"), "%s", line);
        } else {
            snprintf(want + 100, 100, "\"backends\":[\"127.0.0.1:%d\"]", m.port);
            cr_assert(strstr(line, want + 100), "one try on the good backend: %s", line);
            snprintf(want, sizeof want, "\"backends\":[\"127.0.0.1:%d\",\"127.0.0.1:%d\"]", s.port, m.port);
        }
        free(line);
    }
    cr_assert(seen, "no request was retried (the 503 backend got %d)", atomic_load(&s.requests));
    h_finish();
    h_b503_stop(&s);
}

Test(incident, access_log_shows_queue_wait_and_fallback_and_503s_name_no_pool)
{
    struct h_mock ma, mb;
    H_MOCK(&ma, "mock-a", "--tps 20 --ttft-ms 0 --model mock-a");
    H_MOCK(&mb, "mock-b", "--tps 0 --ttft-ms 0 --model mock-a --model mock-q");
    struct h_mock mq;
    H_MOCK(&mq, "mock-q", "--tps 20 --ttft-ms 0 --model mock-q");
    struct h_gw g = {.shards = 1};
    h_gw_config(&g, NULL,
                "[pool secret-a100-pool]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_timeout = 200ms\nfallback = spare\n\n"
                "[pool spare]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\n\n"
                "[pool hidden-h100-pool]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 1\n"
                "queue_timeout = 300ms\n\n"
                "[route a]\npath = /v1/chat/completions\npool = secret-a100-pool\nmodels = mock-a\n\n"
                "[route q]\npath = /v1/chat/completions\npool = hidden-h100-pool\nmodels = mock-q\n",
                ma.port, mb.port, mq.port);
    H_GW(&g);
    char body[512];

    /* pool a full: the request waits queue_timeout, then its fallback serves it */
    struct h_conn occ;
    H_CONNECT_GW(&occ, &g);
    send_chat(&occ, NULL, chat_model(body, sizeof body, "mock-a", 30, false), "occ-a");   /* 1.5 s */
    cr_assert_geq(h_wait_metric(ma.port, "vllm:num_requests_running", H_GE, 1, 2000 * h_slow()), 1,
                 "the occupying request never ran; aigw stderr:\n%s", h_tail(g.tag));
    struct h_resp r;
    cr_assert_eq(post_chat(g.port, NULL, chat_model(body, sizeof body, "mock-a", 2, false), "fb-1", &r), H_OK);
    cr_assert_eq(r.status, 200, "%d %s", r.status, r.body);
    h_resp_free(&r);
    char *line = log_line("fb-1");
    cr_assert_not_null(line);
    char want[128];
    snprintf(want, sizeof want, "\"backends\":[\"127.0.0.1:%d\"]", mb.port);
    cr_assert(strstr(line, "\"fallback\":true"), "%s", line);
    cr_assert(strstr(line, want), "only the fallback's backend was tried: %s", line);
    double q = json_double(line, "queue_ms");
    cr_assert(q >= 150 && q <= 1500 * h_slow(), "queue_ms %.3f: it waited queue_timeout (200ms) first: %s", q, line);
    free(line);
    h_close(&occ);

    /* pool q full and no fallback: 503 after its queue_timeout; the body names no pool, the log does */
    H_CONNECT_GW(&occ, &g);
    send_chat(&occ, NULL, chat_model(body, sizeof body, "mock-q", 30, false), "occ-q");
    cr_assert_geq(h_wait_metric(mq.port, "vllm:num_requests_running", H_GE, 1, 2000 * h_slow()), 1,
                 "the occupying request never ran; aigw stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(post_chat(g.port, NULL, chat_model(body, sizeof body, "mock-q", 2, false), "shed-1", &r), H_OK);
    cr_assert_eq(r.status, 503, "%d %s", r.status, r.body);
    cr_assert(strstr(r.body, "\"no_capacity\""), "%s", r.body);
    cr_assert_null(strstr(r.body, "hidden-h100-pool"), "the 503 body names the pool: %s", r.body);
    cr_assert_null(strstr(r.body, "300"), "the 503 body tells the pool's queue_timeout: %s", r.body);
    h_resp_free(&r);
    line = log_line("shed-1");
    cr_assert_not_null(line);
    cr_assert(strstr(line, "\"pool\":\"hidden-h100-pool\""), "the log keeps the pool: %s", line);
    cr_assert(strstr(line, "\"backends\":[]"), "%s", line);
    q = json_double(line, "queue_ms");
    cr_assert(q >= 250, "queue_ms %.3f, queue_timeout 300ms: %s", q, line);
    free(line);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_pool_shed_total{pool=\"hidden-h100-pool\"}"), 1);
    h_close(&occ);
    h_finish();
}

Test(incident, client_abort_mid_stream_is_499_and_unrouted_models_have_no_route)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 20 --ttft-ms 0");
    struct h_gw g = {0};
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\nmodels = mock-*\n",
                m.port);
    H_GW(&g);

    /* a client leaving mid-stream */
    struct h_conn c;
    H_CONNECT_GW(&c, &g);
    char body[512];
    send_chat(&c, NULL, chat_model(body, sizeof body, "mock-llama-3.1-8b", 200, true), "abort-1");
    struct h_resp head;
    cr_assert_eq(h_recv_head(&c, &head, T_RESP), H_OK);
    cr_assert_eq(head.status, 200);
    h_leave_stream_expect_abort(&c, &head, 3, m.port);
    char *line = log_line("abort-1");
    cr_assert_not_null(line);
    cr_assert(strstr(line, "\"status\":499"), "a client abort mid-stream is 499: %s", line);
    cr_assert(strstr(line, "\"termination\":\"client_abort\""), "%s", line);
    cr_assert(json_num(line, "tokens_out") >= 2, "settled on the tokens it got (3 events, the first a role): %s", line);
    free(line);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_requests_total{route=\"chat\",status=\"499\"}", H_EQ, 1, T_LOG), 1);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_requests_total{route=\"chat\",status=\"200\"}"), 0);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_request_terminations_total{reason=\"client_abort\"}"), 1);

    /* a model no route serves: 404, and no route is blamed */
    struct h_resp r;
    cr_assert_eq(post_chat(g.port, NULL, chat_model(body, sizeof body, "gpt-nonesuch", 2, false), "unrouted-1", &r),
                 H_OK);
    cr_assert_eq(r.status, 404, "%d %s", r.status, r.body);
    h_resp_free(&r);
    line = log_line("unrouted-1");
    cr_assert_not_null(line);
    cr_assert(strstr(line, "\"route\":\"\""), "an unrouted model is not the route's: %s", line);
    free(line);
    cr_assert_eq(h_wait_metric(g.admin_port, "aigw_requests_total{route=\"\",status=\"404\"}", H_EQ, 1, T_LOG), 1);
    cr_assert_eq(h_metric0(g.admin_port, "aigw_requests_total{route=\"chat\",status=\"404\"}"), 0);
    h_finish();
}

/* ---- error log ---- */

/* The first line of the err file holding needle starts with an ISO 8601 UTC time. */
static bool line_is_stamped(const char *tag, const char *needle)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), tag);
    char *text = h_read_file(path);
    cr_assert_not_null(text);
    char *at = strstr(text, needle);
    cr_assert_not_null(at, "no '%s' in %s:\n%s", needle, path, text);
    char *start = at;
    while (start > text && start[-1] != '\n')
        start--;
    int y, mo, d, h, mi, s, ms;
    char z;
    bool stamped = sscanf(start, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c ", &y, &mo, &d, &h, &mi, &s, &ms, &z) == 8 &&
                   z == 'Z' && y >= 2020 && mo >= 1 && mo <= 12;
    bool bare = strncmp(start, "aigw[", 5) == 0;
    free(text);
    cr_assert(stamped || bare, "a line neither stamped nor bare: %.80s", start);
    return stamped;
}

Test(incident, error_log_has_times_off_the_journal_and_sigusr1_says_it_reopened)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    unsetenv("JOURNAL_STREAM");
    struct h_gw g = {0};
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    cr_assert(line_is_stamped(g.tag, "aigw[info]: listening on"), "stderr to a file: lines carry their time");
    cr_assert(h_gw_reopen_log(&g), "SIGUSR1 did not reopen the access log; stderr:\n%s", h_tail(g.tag));
    cr_assert(h_wait_log_line(g.tag, "aigw[info]: access log: reopened", h_access_log_path(), T_LOG),
              "SIGUSR1 should log the reopen and the path; stderr:\n%s", h_tail(g.tag));
    cr_assert(line_is_stamped(g.tag, "access log: reopened"));

    /* under journald (JOURNAL_STREAM names stderr's device and inode) the journal stamps lines */
    struct h_gw j = {0};
    snprintf(j.tag, sizeof j.tag, "aigw-journal");
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), j.tag);
    h_write_file(path, "%s", "");
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    char js[64];
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
    h_gw_config(&j, NULL, H_STD_ROUTES, m.port);
    int started = h_gw_start(&j);
    unsetenv("JOURNAL_STREAM");
    cr_assert_eq(started, 0, "aigw did not become ready:\n%s", h_tail(j.tag));
    cr_assert_not(line_is_stamped(j.tag, "aigw[info]: listening on"), "under journald lines carry no time of their own");
    h_finish();
}
