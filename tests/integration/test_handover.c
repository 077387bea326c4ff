/* Seamless handover: SIGUSR2 (binary upgrade) and a SIGHUP that changes listen
 * addresses or shards start a new aigw that takes the listening sockets over;
 * clients under continuous load see no error, streams in flight finish on the old
 * process, a failed successor leaves the old one serving, and a second aigw
 * started by hand still finds the address in use; systemd hears the new main
 * pid from the old process. */
#include "harness.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* the successor is a grandchild: reparented to us when its parent exits, so we
 * can reap it and teardown can stop it */
static void setup(void)
{
    h_setup();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
}

TestSuite(handover, .init = setup, .fini = h_teardown, .timeout = 120);

#define T_RESP (5000 * h_slow())
#define MOCK_ARGS "--tps 200 --ttft-ms 5"

/* ---- continuous load: keep-alive POSTs and streams, until told to stop ---- */

#define PLAIN_CLIENTS 3
#define MAX_REQUESTS 20000          /* per client: bounds the loop if stop never comes */

struct load {
    int port;
    atomic_bool stop;
    atomic_int done, errors, streams, streams_done;
    pthread_mutex_t lock;
    char first_error[512];
};

static void load_error(struct load *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void load_error(struct load *l, const char *fmt, ...)
{
    atomic_fetch_add(&l->errors, 1);
    pthread_mutex_lock(&l->lock);
    if (!l->first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        int k = snprintf(l->first_error, sizeof l->first_error, "[t=%lld] ", (long long)h_now_ms());
        vsnprintf(l->first_error + k, sizeof l->first_error - (size_t)k, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&l->lock);
}

/* POSTs on a kept-alive connection, a new one whenever aigw says Connection: close */
static void *plain_client(void *arg)
{
    struct load *l = arg;
    char body[512];
    h_chat_body(body, sizeof body, 3, false);
    struct h_conn c = {.fd = -1};
    for (int i = 0; i < MAX_REQUESTS && !atomic_load(&l->stop); i++) {
        bool fresh = c.fd < 0;
        if (c.fd < 0 && h_connect(&c, l->port) < 0) {
            load_error(l, "request %d: connect: %s", i, strerror(errno));
            continue;
        }
        struct h_resp r;
        int rc = h_request(&c, "POST", "/v1/chat/completions", NULL, body, &r, T_RESP);
        if (rc != H_OK || r.status != 200)
            load_error(l, "request %d on a %s connection: rc %d status %d %.200s", i, fresh ? "new" : "kept-alive", rc,
                       r.status, r.body ? r.body : "");
        if (rc != H_OK || !r.keep_alive)
            h_close(&c);
        h_resp_free(&r);
        atomic_fetch_add(&l->done, 1);
    }
    if (c.fd >= 0)
        h_close(&c);
    return NULL;
}

/* streams of 40 tokens (200 ms), one after another, each on a new connection */
static void *stream_client(void *arg)
{
    struct load *l = arg;
    char req[1024];
    h_chat_stream_request(req, sizeof req, "x", 40);
    for (int i = 0; i < MAX_REQUESTS && !atomic_load(&l->stop); i++) {
        struct h_conn c = {.fd = -1};
        atomic_fetch_add(&l->streams, 1);
        if (h_connect(&c, l->port) < 0) {
            load_error(l, "stream %d: connect: %s", i, strerror(errno));
            continue;
        }
        struct h_resp head;
        if (h_send(&c, req, strlen(req)) < 0 || h_recv_head(&c, &head, T_RESP) != H_OK || head.status != 200) {
            load_error(l, "stream %d: no 200 head", i);
            h_close(&c);
            continue;
        }
        struct h_sse s;
        h_sse_init(&s, &c, &head);
        bool done = false;
        int last = 0;
        int n = h_sse_data_events(&s, T_RESP, NULL, 0, &done, &last);
        if (done && n >= 40)
            atomic_fetch_add(&l->streams_done, 1);
        else
            load_error(l, "stream %d: %d events, [DONE] %s (last rc %d)", i, n, done ? "came" : "missing", last);
        h_sse_free(&s);
        h_resp_free(&head);
        h_close(&c);
    }
    return NULL;
}

struct load_run {
    struct load l;
    pthread_t t[PLAIN_CLIENTS + 1];
};

static void load_start(struct load_run *lr, int port)
{
    memset(lr, 0, sizeof *lr);
    lr->l.port = port;
    pthread_mutex_init(&lr->l.lock, NULL);
    for (int i = 0; i < PLAIN_CLIENTS; i++)
        pthread_create(&lr->t[i], NULL, plain_client, &lr->l);
    pthread_create(&lr->t[PLAIN_CLIENTS], NULL, stream_client, &lr->l);
}

/* until n more requests were answered (or 20 s) */
static void load_progress(struct load_run *lr, int n)
{
    int want = atomic_load(&lr->l.done) + n;
    int64_t deadline = h_now_ms() + 20000 * h_slow();
    while (atomic_load(&lr->l.done) < want && h_now_ms() < deadline)
        h_sleep_ms(5);
    cr_assert_geq(atomic_load(&lr->l.done), want, "the load made no progress");
}

static void load_stop(struct load_run *lr)
{
    atomic_store(&lr->l.stop, true);
    for (int i = 0; i <= PLAIN_CLIENTS; i++)
        pthread_join(lr->t[i], NULL);
}

/* ---- the handover's two processes ---- */

/* The last pid a "serving as pid" line names in g's log, 0 if none. */
static pid_t last_serving_pid(const struct h_gw *g)
{
    static const char mark[] = "handover: serving as pid ";
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), g->tag);
    char *text = h_read_file(path);
    pid_t pid = 0;
    for (char *p = text; p && (p = strstr(p, mark)); p++)
        pid = (pid_t)atoi(p + sizeof mark - 1);
    free(text);
    return pid;
}

/* The successor of old, once it says it serves. */
static pid_t successor_pid(const struct h_gw *g, pid_t old)
{
    pid_t pid = 0;
    int64_t deadline = h_now_ms() + 20000 * h_slow();
    while (((pid = last_serving_pid(g)) == 0 || pid == old) && h_now_ms() < deadline)
        h_sleep_ms(10);
    cr_assert(pid > 0 && pid != old, "no successor of %d said it serves:\n%s", (int)old, h_tail(g->tag));
    h_track(pid, g->tag);
    return pid;
}

/* The old process exits 0 (drained) and the successor serves g->port. */
static pid_t expect_handed_over(struct h_gw *g)
{
    pid_t old = g->pid;
    pid_t neu = successor_pid(g, old);
    int st = h_wait_exit(old, 15000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the old aigw did not drain and exit 0 (%d):\n%s",
              st, h_tail(g->tag));
    cr_assert(h_alive(neu), "the successor %d is gone:\n%s", (int)neu, h_tail(g->tag));
    g->pid = neu;
    return neu;
}

static void expect_no_errors(struct load_run *lr, const struct h_gw *g)
{
    cr_expect_eq(atomic_load(&lr->l.errors), 0, "%d client error(s) through the handover; first: %s\naigw:\n%s",
                 atomic_load(&lr->l.errors), lr->l.first_error, h_tail(g->tag));
    cr_expect_gt(atomic_load(&lr->l.streams_done), 0, "no stream completed");
}

static void expect_ok(int port, const struct h_gw *g)
{
    char body[512];
    struct h_resp r;
    int rc = h_post(port, "/v1/chat/completions", h_chat_body(body, sizeof body, 2, false), &r, T_RESP);
    cr_assert(rc == H_OK && r.status == 200, "port %d: rc %d status %d\n%s", port, rc, r.status, h_tail(g->tag));
    h_resp_free(&r);
}

static bool refused(int port)
{
    struct h_conn c = {.fd = -1};
    if (h_connect(&c, port) < 0)
        return true;
    h_close(&c);
    return false;
}

/* ---- tests ---- */

Test(handover, sigusr2_upgrade_under_load_loses_nothing)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, MOCK_ARGS, NULL);
    struct load_run lr;
    load_start(&lr, g.port);
    load_progress(&lr, 50);

    /* a long stream in flight across the handover: it finishes on the old process */
    struct h_conn sc = {.fd = -1};
    struct h_resp head;
    H_CONNECT_GW(&sc, &g);
    h_start_chat_stream(&sc, 200, &head, g.tag);      /* 1 s at 200 tokens/s */

    kill(g.pid, SIGUSR2);
    pid_t old = g.pid;
    pid_t neu = successor_pid(&g, old);
    struct h_sse s;
    h_sse_init(&s, &sc, &head);
    bool done = false;
    int last = 0;
    int n = h_sse_data_events(&s, T_RESP, NULL, 0, &done, &last);
    cr_expect(done && n >= 200, "the stream in flight got %d events, [DONE] %s (rc %d)", n, done ? "yes" : "no", last);
    h_sse_free(&s);
    h_resp_free(&head);
    h_close(&sc);

    g.pid = old;
    expect_handed_over(&g);
    cr_assert_eq(g.pid, neu);
    load_progress(&lr, 100);     /* served by the successor alone now */
    load_stop(&lr);
    expect_no_errors(&lr, &g);
    cr_expect(h_wait_log_line(g.tag, "adopted 2 listening socket(s)", NULL, 0), "no sockets adopted:\n%s",
              h_tail(g.tag));
    /* the admin socket went over too */
    cr_expect_eq(h_metric0(g.admin_port, "aigw_config_generation"), 1.0);
    expect_ok(g.port, &g);

    /* the successor stops like any aigw */
    int st = h_stop(neu, 10000 * h_slow());
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the successor did not stop cleanly");
    cr_expect(refused(g.port), "port still open after the successor stopped");
    h_finish();
}

Test(handover, sighup_listen_and_shards_change_under_load)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, MOCK_ARGS, NULL);
    int second = h_free_port();
    struct load_run lr;
    load_start(&lr, g.port);
    load_progress(&lr, 50);

    /* a second address and one more shard */
    snprintf(g.server_extra, sizeof g.server_extra, "listen = 127.0.0.1:%d\n", second);
    g.shards = 3;
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    kill(g.pid, SIGHUP);
    expect_handed_over(&g);
    cr_expect(h_wait_log_line(g.tag, "handover ([server] listen changed)", NULL, 0), "%s", h_tail(g.tag));
    expect_ok(second, &g);
    load_progress(&lr, 50);

    /* fewer shards than sockets: every inherited one is kept (none left unaccepted) */
    g.shards = 1;
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    kill(g.pid, SIGHUP);
    expect_handed_over(&g);
    cr_expect(h_wait_log_line(g.tag, "adopted 3 listening socket(s)", NULL, 0), "%s", h_tail(g.tag));
    load_progress(&lr, 100);
    expect_ok(second, &g);

    /* the second address removed: it stops listening once the old process is gone */
    g.server_extra[0] = 0;
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    kill(g.pid, SIGHUP);
    expect_handed_over(&g);
    load_progress(&lr, 50);
    load_stop(&lr);
    expect_no_errors(&lr, &g);
    cr_expect(refused(second), "a removed address still accepts");
    expect_ok(g.port, &g);
    h_finish();
}

Test(handover, failed_successor_leaves_the_old_process_serving)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", MOCK_ARGS);
    /* a copy of the binary: replaced below, as an upgrade would */
    char bin[600], conf_ok[4096];
    snprintf(bin, sizeof bin, "%s/aigw-copy", h_dir());
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", h_aigw_bin(), bin);
    cr_assert_eq(system(cmd), 0);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    const char *argv[] = {bin, "-c", g.conf, NULL};
    g.pid = h_spawn(g.tag, argv);
    cr_assert(h_wait_log_line(g.tag, "listening on", "shard(s)", 10000 * h_slow()), "aigw did not start:\n%s",
              h_tail(g.tag));
    struct load_run lr;
    load_start(&lr, g.port);
    load_progress(&lr, 30);

    /* the file made invalid after the check: the successor refuses it and exits */
    char *text = h_read_file(g.conf);
    snprintf(conf_ok, sizeof conf_ok, "%s", text);
    free(text);
    h_write_file(g.conf, "%s\n[server]\nno_such_key = 1\n", conf_ok);
    kill(g.pid, SIGUSR2);
    cr_assert(h_wait_log_line(g.tag, "handover failed, this process keeps serving", "exited with status 1",
                              20000 * h_slow()), "%s", h_tail(g.tag));
    load_progress(&lr, 50);
    cr_assert(h_alive(g.pid));

    /* a binary that exits at once */
    h_write_file(g.conf, "%s", conf_ok);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.new", bin);
    h_write_file(tmp, "#!/bin/sh\nexit 3\n");
    cr_assert_eq(chmod(tmp, 0755), 0);
    cr_assert_eq(rename(tmp, bin), 0);
    kill(g.pid, SIGUSR2);
    cr_assert(h_wait_log_line(g.tag, "handover failed", "exited with status 3", 20000 * h_slow()), "%s",
              h_tail(g.tag));
    load_progress(&lr, 50);
    load_stop(&lr);
    expect_no_errors(&lr, &g);
    cr_assert(h_alive(g.pid));
    expect_ok(g.port, &g);
    cr_expect_eq(h_metric0(g.admin_port, "aigw_config_reloads_total{result=\"failed\"}"), 2.0);
    h_finish();
}

Test(handover, a_second_aigw_started_by_hand_still_refuses)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK_AND_GW(&m, &g, MOCK_ARGS, NULL);
    /* even after a handover (the sockets are shared, still one group) */
    kill(g.pid, SIGUSR2);
    expect_handed_over(&g);
    const char *argv[] = {h_aigw_bin(), "-c", g.conf, NULL};
    int st = h_run("second", argv, 10000 * h_slow());
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "a second aigw started (status %d)", st);
    cr_expect(h_wait_log_line("second", "address already in use", NULL, 0), "%s", h_tail("second"));
    /* a forged variable without the ready pipe adopts nothing either */
    char env[64];
    snprintf(env, sizeof env, "AIGW_INHERIT_FDS=3=127.0.0.1:%d", g.port);
    putenv(env);
    st = h_run("forged", argv, 10000 * h_slow());
    unsetenv("AIGW_INHERIT_FDS");
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "aigw with a forged variable started (%d)", st);
    expect_ok(g.port, &g);
    h_finish();
}

Test(handover, sighup_new_tls_listen_moves_tls_to_the_new_port)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", MOCK_ARGS);
    h_gw_tls(&g, NULL);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    struct h_conn c = {.fd = -1};
    H_CONNECT_TLS_GW(&c, &g);
    h_close(&c);

    int old_tls = g.tls_port;
    g.tls_port = h_free_port();
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    kill(g.pid, SIGHUP);
    expect_handed_over(&g);
    cr_expect(h_wait_log_line(g.tag, "handover ([tls] listen changed)", NULL, 0), "%s", h_tail(g.tag));
    H_CONNECT_TLS_GW(&c, &g);
    h_close(&c);
    cr_expect(refused(old_tls), "the old [tls] port still accepts");
    expect_ok(g.port, &g);
    h_finish();
}

/* systemd (a datagram socket at $NOTIFY_SOCKET here) hears the new main pid from
 * the old process, which is the only one the default NotifyAccess=main listens
 * to, and never STOPPING=1 (the service goes on) */
Test(handover, tells_systemd_the_new_main_pid)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", MOCK_ARGS);
    char path[600];
    snprintf(path, sizeof path, "%s/notify.sock", h_dir());
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert(fd >= 0 && strlen(path) < sizeof sa.sun_path);
    strcpy(sa.sun_path, path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind %s: %s", path, strerror(errno));
    struct timeval tv = {.tv_sec = 10 * h_slow()};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setenv("NOTIFY_SOCKET", path, 1);
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    H_GW(&g);
    unsetenv("NOTIFY_SOCKET");

    pid_t old = g.pid;
    kill(old, SIGUSR2);
    pid_t neu = expect_handed_over(&g);
    char want[64], all[8192] = "";
    snprintf(want, sizeof want, "MAINPID=%d\nREADY=1", (int)neu);
    bool seen = false;
    size_t used = 0;
    for (int i = 0; i < 20 && !seen; i++) {     /* READY=1 at start, RELOADING=1, then ours */
        char msg[1024];
        ssize_t n = recv(fd, msg, sizeof msg - 1, MSG_DONTWAIT);
        if (n <= 0)
            break;
        msg[n] = 0;
        used += (size_t)snprintf(all + used, sizeof all - used, "%s|", msg);
        seen = strstr(msg, want) != NULL;
        cr_expect_null(strstr(msg, "STOPPING=1"), "the old process said STOPPING=1: %s", msg);
    }
    cr_expect(seen, "no \"%s\" from the old process; got: %s", want, all);
    close(fd);
    h_finish();
}
