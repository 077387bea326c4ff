/* [server] state_dir end to end: a key's daily quota use survives a clean
 * restart and a crash after a snapshot; a truncated or garbage state file is
 * refused with a log line and the quota starts from zero; a state_dir that is
 * not a directory fails `aigw -t` with FILE:LINE; daily quotas with nowhere to
 * survive a restart are warned about.
 *
 * The numbers: a 200-token day; each request reserves 8 + 50 tokens and uses
 * 4 + 50 (mockllm's usage), so a fresh day admits three. After two before a
 * restart, one more fits and the next is refused (without the snapshot it
 * would be admitted). Shards' quota leases count as used in the snapshot
 * (at most 2 x 6 tokens here), which does not change those outcomes. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(state_dir, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define T_RESP (5000 * h_slow())
#define KEY "sk-itest-state-dana-7Rw3Qe"
#define QUOTA_TIERS "[tier quota]\ndaily_tokens = 200\n"

static char state_dir[400], state_file[480];

/* mockllm and aigw with a `daily` key on a 200-token day, its quotas kept in
 * h_dir()/state (made here); g->tag names this run's log. */
static void start_pair(struct h_mock *m, struct h_gw *g)
{
    snprintf(state_dir, sizeof state_dir, "%s/state", h_dir());
    snprintf(state_file, sizeof state_file, "%s/quotas.state", state_dir);
    mkdir(state_dir, 0700);
    H_MOCK(m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("daily", KEY, "quota", NULL));
    snprintf(g->server_extra, sizeof g->server_extra, "state_dir = %s\n", state_dir);
    h_gw_config(g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" QUOTA_TIERS, m->port,
                h_keys_path());
    H_GW(g);
}

/* Starts aigw again with the same config, its log under a new tag. */
static void restart(struct h_gw *g, const char *tag)
{
    snprintf(g->tag, sizeof g->tag, "%s", tag);
    H_GW(g);
}

/* One chat completion of 50 tokens for the key; the status. */
static int chat(const struct h_gw *g, char *code, size_t codecap)
{
    char body[512];
    h_chat_body(body, sizeof body, 50, false);
    struct h_conn c;
    H_CONNECT_GW(&c, g);
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Connection: close\r\n%s", h_bearer(KEY));
    struct h_resp r;
    int rc = h_request(&c, "POST", "/v1/chat/completions", hdr, body, &r, T_RESP);
    h_close(&c);
    cr_assert_eq(rc, H_OK, "no complete response (%d); aigw stderr:\n%s", rc, h_tail(g->tag));
    int status = r.status;
    if (code) {
        code[0] = '\0';
        if (status != 200 && h_json_str_is(r.body, "code", "quota"))
            snprintf(code, codecap, "quota");
    }
    if (status != 200 && status != 429)
        cr_assert_fail("status %d: %s", status, r.body);
    h_resp_free(&r);
    return status;
}

static void expect_admitted(const struct h_gw *g, int n, const char *when)
{
    for (int i = 0; i < n; i++)
        cr_assert_eq(chat(g, NULL, 0), 200, "%s: request %d of %d refused", when, i + 1, n);
}

static void expect_quota_refusal(const struct h_gw *g, const char *when)
{
    char code[16];
    int status = chat(g, code, sizeof code);
    cr_assert(status == 429 && !strcmp(code, "quota"), "%s: status %d (code %s), wanted 429 quota", when, status,
              code);
}

/* The tokens the state file says the key used, -1 when the file or the line is
 * not there. */
static long long file_use(void)
{
    char *text = h_read_file(state_file);
    if (!text)
        return -1;
    const char *at = strstr(text, "\nkey daily ");
    long long used = at ? strtoll(at + 11, NULL, 10) : -1;
    free(text);
    return used;
}

static void stop_cleanly(struct h_gw *g)
{
    int st = h_stop(g->pid, 10000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw did not exit 0 on SIGTERM (0x%x):\n%s", st,
              h_tail(g->tag));
    g->pid = 0;
}

Test(state_dir, the_days_quota_use_survives_a_restart)
{
    struct h_mock m;
    struct h_gw g = {0};
    start_pair(&m, &g);
    cr_assert(h_wait_log_line(g.tag, "quotas.state: none yet", NULL, 2000 * h_slow()), "%s", h_tail(g.tag));
    expect_admitted(&g, 2, "before the restart");
    stop_cleanly(&g);
    long long used = file_use();
    cr_assert(used >= 108 && used <= 120, "the state file says %lld tokens used, wanted 108 (+ leases)", used);

    restart(&g, "aigw-after");
    cr_assert(h_wait_log_line(g.tag, "restored the daily quota use of 1 key(s) from", "quotas.state",
                              2000 * h_slow()),
              "%s", h_tail(g.tag));
    expect_admitted(&g, 1, "after the restart");
    expect_quota_refusal(&g, "after the restart, the fourth request of the day");
    h_finish();
}

Test(state_dir, a_crash_after_a_snapshot_keeps_the_use)
{
    struct h_mock m;
    struct h_gw g = {0};
    start_pair(&m, &g);
    expect_admitted(&g, 2, "before the crash");
    /* the sync thread saves what changed every SNAPSHOT_INTERVAL_MS (2 s) */
    long long used = -1;
    int64_t deadline = h_now_ms() + 6000 * h_slow();
    while ((used = file_use()) < 108 && h_now_ms() < deadline)
        h_sleep_ms(50);
    cr_assert(used >= 108, "no snapshot of the use within 6 s (file says %lld):\n%s", used, h_tail(g.tag));
    kill(g.pid, SIGKILL);
    cr_assert_neq(h_wait_exit(g.pid, 5000), -1);
    g.pid = 0;

    restart(&g, "aigw-after");
    cr_assert(h_wait_log_line(g.tag, "restored the daily quota use of 1 key(s)", NULL, 2000 * h_slow()), "%s",
              h_tail(g.tag));
    expect_admitted(&g, 1, "after the crash");
    expect_quota_refusal(&g, "after the crash, the fourth request of the day");
    h_finish();
}

/* Writes the state file before aigw starts; it must say it ignores it, and
 * the day must start from zero. */
static void expect_refused_at_start(const char *content, size_t len, const char *why)
{
    struct h_mock m;
    struct h_gw g = {0};
    snprintf(state_dir, sizeof state_dir, "%s/state", h_dir());
    snprintf(state_file, sizeof state_file, "%s/quotas.state", state_dir);
    mkdir(state_dir, 0700);
    FILE *f = fopen(state_file, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(content, 1, len, f), len);
    fclose(f);
    start_pair(&m, &g);
    cr_assert(h_wait_log_line(g.tag, "quotas.state: ignored: ", why, 2000 * h_slow()),
              "no refusal saying \"%s\" in the log:\n%s", why, h_tail(g.tag));
    expect_admitted(&g, 3, "a fresh day");
    expect_quota_refusal(&g, "the fourth request of a fresh day");
    stop_cleanly(&g);
    /* and what it saved instead is a good file */
    cr_assert_geq(file_use(), 162, "after the refused file, no good snapshot was written");
    h_finish();
}

Test(state_dir, a_truncated_state_file_is_refused)
{
    char text[256];
    /* a file of today that says the day is spent, cut before its "sum" line */
    int n = snprintf(text, sizeof text, "aigw-state 1\nday %lld\nkey daily 190\n", (long long)(time(NULL) / 86400));
    expect_refused_at_start(text, (size_t)n, "truncated");
}

Test(state_dir, a_garbage_state_file_is_refused)
{
    char junk[2048];
    unsigned x = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (char)(x >> 16);
    }
    junk[0] = 'Z';
    expect_refused_at_start(junk, sizeof junk, "not an aigw state file");
}

/* The line of the config that sets state_dir. */
static int state_dir_line(const char *conf)
{
    char *text = h_read_file(conf);
    cr_assert_not_null(text);
    int line = 1;
    for (const char *p = text; *p; p++) {
        if ((p == text || p[-1] == '\n') && !strncmp(p, "state_dir", 9))
            break;
        line += *p == '\n';
    }
    free(text);
    return line;
}

static void expect_check_fails(const struct h_gw *g, const char *tag, const char *message)
{
    const char *argv[] = {h_aigw_bin(), "-t", "-c", g->conf, NULL};
    int st = h_run(tag, argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "aigw -t: wait status 0x%x:\n%s", st, h_tail(tag));
    char want[1024];
    snprintf(want, sizeof want, "%s:%d: state_dir ", g->conf, state_dir_line(g->conf));
    cr_assert(h_wait_log_line(tag, want, message, 1000), "wanted \"%s...%s\":\n%s", want, message, h_tail(tag));
}

Test(state_dir, a_state_dir_that_is_not_a_writable_directory_fails_the_check)
{
    char path[400];
    snprintf(path, sizeof path, "%s/a-file", h_dir());
    h_write_file(path, "not a directory\n");
    struct h_gw g = {0};
    snprintf(g.server_extra, sizeof g.server_extra, "state_dir = %s\n", path);
    h_gw_config(&g, NULL, "[pool p]\nbackend = 127.0.0.1:9\n\n[route r]\npath = /v1/*\npool = p\n");
    expect_check_fails(&g, "check-file", "is not a directory");

    snprintf(g.server_extra, sizeof g.server_extra, "state_dir = %s/missing\n", h_dir());
    h_gw_config(&g, NULL, "[pool p]\nbackend = 127.0.0.1:9\n\n[route r]\npath = /v1/*\npool = p\n");
    expect_check_fails(&g, "check-missing", "No such file or directory");

    /* starting fails the same way */
    const char *argv[] = {h_aigw_bin(), "-c", g.conf, NULL};
    int st = h_run("start-missing", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "aigw: wait status 0x%x:\n%s", st,
              h_tail("start-missing"));
    cr_assert(h_wait_log_line("start-missing", ": state_dir ", "No such file or directory", 1000), "%s",
              h_tail("start-missing"));

    /* a directory is fine */
    snprintf(g.server_extra, sizeof g.server_extra, "state_dir = %s\n", h_dir());
    h_gw_config(&g, NULL, "[pool p]\nbackend = 127.0.0.1:9\n\n[route r]\npath = /v1/*\npool = p\n");
    const char *check[] = {h_aigw_bin(), "-t", "-c", g.conf, NULL};
    st = h_run("check-ok", check, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw -t: wait status 0x%x:\n%s", st,
              h_tail("check-ok"));
}

Test(state_dir, daily_quotas_without_a_state_dir_are_warned_about)
{
    struct h_mock m;
    H_MOCK(&m, "mock", "--tps 0 --ttft-ms 0");
    h_write_file(h_keys_path(), "%s", h_key_line("daily", KEY, "quota", NULL));
    struct h_gw g = {0};
    h_gw_config(&g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" QUOTA_TIERS, m.port,
                h_keys_path());
    H_GW(&g);
    cr_assert(h_wait_log_line(g.tag, "daily quotas restart from zero on every restart", "set [server] state_dir",
                              2000 * h_slow()),
              "%s", h_tail(g.tag));
    h_finish();
}
