/* No descriptor leaks: 10,000 requests from 4 clients, with malformed
 * requests, client aborts and 502s mixed in, leave aigw's open descriptors
 * where they were. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

TestSuite(fdleak, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define T_RESP (5000 * h_slow())

struct worker {
    int port;
    int count;
    int seed;
    atomic_int *unexpected;
    const char *ka_history[2];      /* the last two requests on the kept-alive connection */
    char first_failure[400];
};

static void note_resp(struct worker *w, int i, const char *what, int rc, const struct h_resp *r)
{
    atomic_fetch_add(w->unexpected, 1);
    if (!w->first_failure[0])
        snprintf(w->first_failure, sizeof w->first_failure,
                 "request %d (%s): rc %d status %d %.150s [before it on the kept-alive connection: %s, %s]",
                 i, what, rc, r ? r->status : 0, r && r->body ? r->body : "",
                 w->ka_history[0] ? w->ka_history[0] : "-", w->ka_history[1] ? w->ka_history[1] : "-");
}

static void note(struct worker *w, int i, const char *what, int rc, int status)
{
    struct h_resp r = {.status = status};
    note_resp(w, i, what, rc, &r);
}

/* One request of kind i % 10 on the worker's kept-alive connection or a new one. */
static void one(struct worker *w, struct h_conn *ka, int i, const char *chat, const char *stream_req)
{
    struct h_resp r = {0};
    struct h_conn c;
    int rc;
    switch ((i + w->seed) % 10) {
    case 0: case 1: case 2: case 3: case 4:     /* good, kept alive */
    case 9:                                     /* 502 from the dead pool, kept alive; 503 once
                                                 * its circuit is open */
        if (ka->fd < 0 || ka->eof) {
            w->ka_history[0] = w->ka_history[1] = "(new connection)";
            h_close(ka);
            if (h_connect(ka, w->port) < 0) {
                note(w, i, "connect", -1, 0);
                return;
            }
        }
        if ((i + w->seed) % 10 == 9) {
            rc = h_request(ka, "POST", "/dead/v1/chat/completions", NULL, chat, &r, T_RESP);
            if (rc != H_OK || (r.status != 502 && r.status != 503)) note_resp(w, i, "dead pool", rc, &r);
        } else {
            rc = h_request(ka, "POST", "/v1/chat/completions", NULL, chat, &r, T_RESP);
            if (rc != H_OK || r.status != 200) note_resp(w, i, "chat", rc, &r);
        }
        w->ka_history[0] = w->ka_history[1];
        w->ka_history[1] = (i + w->seed) % 10 == 9 ? "502/503 from the dead pool" : "chat";
        if (rc != H_OK || !r.keep_alive) h_close(ka);
        h_resp_free(&r);
        return;
    case 5:                                     /* good, new connection each */
        rc = h_get(w->port, "/v1/models", &r, T_RESP);
        if (rc != H_OK || r.status != 200) note_resp(w, i, "models", rc, &r);
        h_resp_free(&r);
        return;
    case 6:                                     /* malformed: 400 and close */
        if (h_connect(&c, w->port) < 0) {
            note(w, i, "connect", -1, 0);
            return;
        }
        h_sendf(&c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n");
        rc = h_recv(&c, &r, T_RESP);
        if (rc != H_OK || r.status != 400) note_resp(w, i, "malformed", rc, &r);
        h_resp_free(&r);
        h_close(&c);
        return;
    case 7:                                     /* client leaves mid-head */
        if (h_connect(&c, w->port) == 0) {
            h_sendf(&c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le");
            h_close(&c);
        }
        return;
    default:                                    /* client leaves right after a stream request */
        if (h_connect(&c, w->port) == 0) {
            h_send(&c, stream_req, strlen(stream_req));
            h_close(&c);
        }
        return;
    }
}

static void *work(void *arg)
{
    struct worker *w = arg;
    char chat[512], stream_req[1024];
    h_chat_body(chat, sizeof chat, 2, false);
    h_chat_stream_request(stream_req, sizeof stream_req, "x", 16);
    struct h_conn ka = {.fd = -1};
    for (int i = 0; i < w->count; i++) one(w, &ka, i, chat, stream_req);
    h_close(&ka);
    return NULL;
}

static int run_workers(int port, int per_worker, atomic_int *unexpected, char *first, size_t first_cap)
{
    struct worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.port = port, .count = per_worker, .seed = i * 3, .unexpected = unexpected};
        pthread_create(&th[i], NULL, work, &w[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        if (w[i].first_failure[0] && !first[0]) snprintf(first, first_cap, "%s", w[i].first_failure);
    return 4 * per_worker;
}

Test(fdleak, ten_thousand_requests_with_errors_leak_no_descriptor)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    int dead = h_free_port();
    h_gw_config(&g, NULL,
                "[pool local]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\nmax_outstanding = 64\n\n"
                "[pool dead]\nbackend = 127.0.0.1:%d\n\n"
                "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n"
                "[route dead]\npath = /dead/*\npool = dead\nkind = raw\n\n"
                "[route all]\npath = /v1/*\npool = local\nkind = raw\n",
                m.port, dead);
    H_GW(&g);

    /* Warm up with the same mix and concurrency, so pools that keep idle
     * resources (upstream keep-alive connections, relay pipes) reach the size
     * this load needs before the baseline is taken. */
    atomic_int unexpected = 0;
    char first[400] = "";
    run_workers(g.port, 100, &unexpected, first, sizeof first);
    cr_assert_eq(atomic_load(&unexpected), 0, "warm-up: %d unexpected answers; first: %s\naigw stderr:\n%s",
                 atomic_load(&unexpected), first, h_tail(g.tag));
    /* the baseline once aigw has closed every warm-up client */
    double clients = h_wait_metric(g.admin_port, "aigw_connections{side=\"client\"}", H_EQ, 0, 5000 * h_slow());
    cr_assert_eq(clients, 0, "aigw still holds %.0f client connections after the warm-up", clients);
    int baseline = h_count_fds(g.pid);
    cr_assert(baseline > 0, "cannot read /proc/%d/fd (aigw gone?); stderr:\n%s", (int)g.pid, h_tail(g.tag));

    int64_t t0 = h_now_ms();
    int sent = run_workers(g.port, 2500, &unexpected, first, sizeof first);
    int64_t took = h_now_ms() - t0;
    cr_assert(h_alive(g.pid), "aigw died under the mixed load; stderr:\n%s", h_tail(g.tag));
    cr_assert_eq(atomic_load(&unexpected), 0, "%d unexpected answers; first: %s\naigw stderr:\n%s",
                 atomic_load(&unexpected), first, h_tail(g.tag));

    /* Slack of 2: idle upstream keep-alive connections and pooled pipes depend on
     * the peak concurrency each phase happened to reach; a real leak over 10,000
     * requests (a third of them errors or aborts) is far larger. */
    int after = h_settle_fds(g.pid, baseline + 2, 5000 * h_slow());
    cr_assert(after <= baseline + 2, "aigw holds %d descriptors after %d requests in %lld ms, %d before",
              after, sent, (long long)took, baseline);
    h_finish();
}
