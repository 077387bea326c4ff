/* Descriptors: aigw takes the hard RLIMIT_NOFILE at start and says when
 * max_connections cannot fit in it; out of descriptors, it stops accepting for a
 * while instead of spinning on EMFILE, and serves again once they come free. */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TestSuite(fdlimit, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define T_RESP (5000 * h_slow())
#define NOFILE 64           /* aigw needs about 15 to run with 2 shards */
#define CLIENTS 150         /* more than it can hold; the rest wait in the backlog */
#define EPISODE_MS 2000

/* user + system CPU time of pid, from /proc/PID/stat (fields 14 and 15). */
static double cpu_seconds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *text = h_read_file(path);
    cr_assert_not_null(text, "cannot read %s", path);
    const char *p = strrchr(text, ')');
    unsigned long long utime = 0, stime = 0;
    cr_assert(p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) == 2,
              "unexpected %s: %s", path, text);
    free(text);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static int count_lines_with(const char *tag, const char *needle)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), tag);
    char *text = h_read_file(path);
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)); p += strlen(needle))
        n++;
    free(text);
    return n;
}

static const char *limits_of(pid_t pid)
{
    static char line[256];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    char *text = h_read_file(path);
    const char *l = text ? strstr(text, "Max open files") : NULL;
    snprintf(line, sizeof line, "%.*s", l ? (int)strcspn(l, "\n") : 0, l ? l : "");
    free(text);
    return line;
}

Test(fdlimit, raises_the_soft_limit_to_the_hard_one)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    h_spawn_nofile(NOFILE, 4096);
    H_GW(&g);
    h_spawn_nofile(0, 0);
    unsigned long long soft = 0, hard = 0;
    const char *line = limits_of(g.pid);
    cr_assert_eq(sscanf(line, "Max open files %llu %llu", &soft, &hard), 2, "no limit in: %s", line);
    cr_assert_eq(soft, 4096, "the soft limit stayed at %llu (hard %llu)", soft, hard);
    cr_assert(strstr(h_tail(g.tag), "descriptor limit raised from 64 to 4096"), "not logged:\n%s",
              h_tail(g.tag));
    h_finish();
}

Test(fdlimit, out_of_descriptors_pauses_accepting_and_recovers)
{
    struct h_mock m;
    struct h_gw g = {0};
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_gw_config(&g, NULL, H_STD_ROUTES, m.port);
    h_spawn_nofile(NOFILE, NOFILE);
    int64_t started = h_now_ms();
    H_GW(&g);
    h_spawn_nofile(0, 0);
    cr_assert(strstr(h_tail(g.tag), "descriptor limit (64) is below what max_connections = 100000 needs"),
              "no warning that max_connections does not fit:\n%s", h_tail(g.tag));

    struct h_conn *clients = calloc(CLIENTS, sizeof *clients);
    for (int i = 0; i < CLIENTS; i++)
        cr_assert_eq(h_connect(&clients[i], g.port), 0, "connect %d", i);
    char errpath[600];
    snprintf(errpath, sizeof errpath, "%s/%s.err", h_dir(), g.tag);
    char *log = h_wait_for_text(errpath, "Too many open files", 5000 * h_slow());
    cr_assert_not_null(log, "aigw never met EMFILE:\n%s", h_tail(g.tag));
    free(log);

    /* the episode: connections keep waiting in the backlog all along */
    double cpu0 = cpu_seconds(g.pid);
    int64_t t0 = h_now_ms();
    h_sleep_ms(EPISODE_MS);
    double cpu = cpu_seconds(g.pid) - cpu0, wall = (double)(h_now_ms() - t0) / 1000;
    cr_assert_lt(cpu, 0.2 * wall, "aigw used %.2f s of CPU in %.2f s out of descriptors", cpu, wall);
    /* one line a second per shard at most, and a first one each */
    double elapsed = (double)(h_now_ms() - started) / 1000;
    int lines = count_lines_with(g.tag, "Too many open files");
    cr_assert_leq(lines, 2 * (int)(elapsed + 2), "%d log lines about EMFILE in %.1f s", lines, elapsed);

    for (int i = 0; i < CLIENTS; i++)
        h_close(&clients[i]);
    free(clients);
    char again[64];
    snprintf(again, sizeof again, "accepting on 127.0.0.1:%d again", g.port);
    log = h_wait_for_text(errpath, again, 3000 * h_slow());
    cr_assert_not_null(log, "recovery not logged:\n%s", h_tail(g.tag));
    free(log);
    /* the closed clients still wait in the backlog: aigw accepts each and sees it
     * gone, so descriptors come free over a moment, not at once; until then a
     * request may get 502 (no descriptor for its upstream socket) */
    int status = 0;
    char body[256] = "";
    for (int64_t until = h_now_ms() + 5000 * h_slow(); status != 200 && h_now_ms() < until;) {
        struct h_resp r;
        if (h_get(g.port, "/v1/models", &r, T_RESP) == H_OK) {
            status = r.status;
            snprintf(body, sizeof body, "%s", r.body ? r.body : "");
            h_resp_free(&r);
        }
        if (status != 200)
            h_sleep_ms(50);
    }
    cr_assert_eq(status, 200, "no 200 once descriptors came free: %d %s\n%s", status, body, h_tail(g.tag));
    h_finish();
}
