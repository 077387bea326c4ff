/* The limits sync thread of one aigw against a real redis-server: what it
 * leases first (the floor), what it gives back (at stop, for a key removed by a
 * reload), and its /metrics. The fleet-wide behaviour (three hosts, accuracy,
 * Redis failures) is test_cluster.c's. */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

TestSuite(cluster_sync, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define KEY_ALICE "sk-itest-sync-alice-4Hq7Lm"
#define KEY_BOB "sk-itest-sync-bob-9Tz2Wc"

/* 1 a minute in a 60-minute bucket: 60 requests, refilling one a minute, so
 * the store's level does not move while a test looks at it, however slow the
 * machine. With one host the floor is 60 / 8 = 7. */
#define TIER_SLOW "[tier slow]\nrequests_per_minute = 1\nburst = 60m\n"
#define BUCKET 60
#define FLOOR 7

static void write_keys(const char *lines)
{
    FILE *f = fopen(h_keys_path(), "w");
    cr_assert_not_null(f);
    fputs(lines, f);
    fclose(f);
}

static void gw_config(struct h_gw *g, const struct h_mock *m, const struct h_redis *r)
{
    h_gw_config(g, NULL,
                H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" TIER_SLOW
                             "\n[cluster]\nredis = 127.0.0.1:%d\nkey_prefix = st:\nsync_interval = 20ms\n",
                m->port, h_keys_path(), r->port);
}

/* The requests level of NAME's shared bucket in Redis (whole requests), once
 * it compares with want as cmp says, or the last one read after timeout_ms. */
static long long wait_bucket(const struct h_redis *r, const char *name, enum h_cmp cmp, long long want,
                             int timeout_ms)
{
    long long v = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        v = h_redis_int(r, "HGET st:rl:%s rl", name);
        if ((cmp == H_EQ && v == want) || (cmp == H_GE && v >= want) || (cmp == H_LE && v >= 0 && v <= want))
            break;
        nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
    }
    return v;
}

static void start_all(struct h_redis *r, struct h_mock *m, struct h_gw *g)
{
    cr_assert_eq(h_redis_start(r, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    H_MOCK(m, "mock", "--tps 0 --ttft-ms 0");
    write_keys(h_key_line("alice", KEY_ALICE, "slow", NULL));
    gw_config(g, m, r);
    H_GW(g);
}

Test(cluster_sync, first_sync_leases_the_floor_and_stop_gives_it_back)
{
    struct h_redis r = { 0 };
    struct h_mock m;
    struct h_gw g = { 0 };
    start_all(&r, &m, &g);
    double taken = h_wait_metric(g.admin_port, "aigw_cluster_leased_total{dimension=\"requests\",direction=\"taken\"}",
                                 H_GE, FLOOR, 5000 * h_slow());
    cr_assert_eq(taken, FLOOR, "an idle host leases its floor (bucket / 8), got %g", taken);
    long long level = wait_bucket(&r, "alice", H_LE, BUCKET - FLOOR, 5000 * h_slow());
    cr_expect_eq(level, BUCKET - FLOOR, "the floor left the shared bucket: level %lld", level);
    /* an idle host asks for nothing more */
    double syncs = h_metric0(g.admin_port, "aigw_cluster_syncs_total");
    h_wait_metric(g.admin_port, "aigw_cluster_syncs_total", H_GE, syncs + 5, 5000 * h_slow());
    cr_expect_eq(h_metric0(g.admin_port, "aigw_cluster_leased_total{dimension=\"requests\",direction=\"taken\"}"),
                 FLOOR);

    /* the host spends three; at SIGTERM what its pool and its shards' leases
     * still hold goes back */
    for (int i = 0; i < 3; i++) {
        struct h_resp resp;
        char body[] = "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
        struct h_conn c;
        cr_assert_eq(h_connect(&c, g.port), 0);
        cr_assert_eq(h_request(&c, "POST", "/v1/chat/completions", h_bearer(KEY_ALICE), body, &resp, 5000 * h_slow()),
                     H_OK);
        cr_expect_eq(resp.status, 200);
        h_resp_free(&resp);
        h_close(&c);
    }
    cr_expect_eq(h_redis_int(&r, "ZCARD st:hosts"), 1, "the running host is counted in the store");
    int st = h_stop(g.pid, 10000 * h_slow());
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw did not stop cleanly:\n%s", h_tail(g.tag));
    cr_expect_eq(h_redis_int(&r, "ZCARD st:hosts"), 0,
                 "a host that stopped is no longer counted, so the others' shares grow at once");
    level = h_redis_int(&r, "HGET st:rl:alice rl");
    cr_expect(level >= BUCKET - 3 && level <= BUCKET,
              "all but the three spent is back in Redis, the shards' own leases included: level %lld", level);
}

Test(cluster_sync, a_key_removed_by_reload_gives_its_lease_back)
{
    struct h_redis r = { 0 };
    struct h_mock m;
    struct h_gw g = { 0 };
    start_all(&r, &m, &g);
    cr_assert_eq(wait_bucket(&r, "alice", H_LE, BUCKET - FLOOR, 5000 * h_slow()), BUCKET - FLOOR);
    write_keys(h_key_line("bob", KEY_BOB, "slow", NULL));
    H_RELOAD(&g, H_RELOAD_APPLIED);
    long long level = wait_bucket(&r, "alice", H_EQ, BUCKET, 5000 * h_slow());
    cr_expect_eq(level, BUCKET, "alice's floor went back to Redis: level %lld", level);
    level = wait_bucket(&r, "bob", H_LE, BUCKET - FLOOR, 5000 * h_slow());
    cr_expect_eq(level, BUCKET - FLOOR, "bob got his floor: level %lld", level);
    cr_expect_eq(h_metric(g.admin_port, "aigw_cluster_hosts"), 1);
}

Test(cluster_sync, metrics_follow_cluster_on_and_off)
{
    struct h_redis r = { 0 };
    struct h_mock m;
    struct h_gw g = { 0 };
    start_all(&r, &m, &g);
    cr_expect_eq(h_wait_metric(g.admin_port, "aigw_cluster_redis_up", H_EQ, 1, 5000 * h_slow()), 1);
    cr_expect_eq(h_metric(g.admin_port, "aigw_cluster_mode{mode=\"shared\"}"), 1);
    cr_expect_eq(h_metric(g.admin_port, "aigw_cluster_mode{mode=\"local\"}"), 0);
    cr_expect_eq(h_metric(g.admin_port, "aigw_cluster_sync_errors_total"), 0);
    cr_expect_geq(h_metric(g.admin_port, "aigw_cluster_sync_duration_seconds_count"), 1);

    /* [cluster] removed: the host's floor goes back and the families go */
    h_gw_config(&g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n" TIER_SLOW, m.port, h_keys_path());
    H_RELOAD(&g, H_RELOAD_APPLIED);
    long long level = wait_bucket(&r, "alice", H_EQ, BUCKET, 5000 * h_slow());
    cr_expect_eq(level, BUCKET, "the lease went back when [cluster] was removed: level %lld", level);
    cr_expect(isnan(h_metric(g.admin_port, "aigw_cluster_redis_up")), "no aigw_cluster_* without [cluster]");
    cr_expect(h_wait_log_line(g.tag, "[cluster] removed", "alone", 5000 * h_slow()));
}
