/* The Redis link and its lease script (src/cluster/redis.c) against a real
 * redis-server: what a batch grants and leaves in Redis (bucket levels on
 * Redis's clock, capacity, returns and debts, daily use), the replay of a
 * batch whose reply was lost, the hosts count, expiries on every key, AUTH
 * (password, ACL user, refused), and how each failure is classified: a closed
 * port, a stopped server, a flushed script cache, a restarted server. */
#include "harness.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* before hiredis.h, whose REDIS_OK macro (0, the same value) would otherwise
 * stand in for the enumerator's name */
#include "cluster/redis.h"
#include "core/config.h"

#include <hiredis/hiredis.h>

TestSuite(redis_link, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define PREFIX "aigw:"
#define TIMEOUT_MS 300

static struct cfg_cluster cluster_for(int port, const char *username, const char *password)
{
    struct cfg_cluster cl = { .enabled = true, .timeout_ms = (uint64_t)TIMEOUT_MS * h_slow(),
                              .sync_interval_ms = 50 };
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    cr_assert_eq(config_parse_addr(addr, &cl.redis), 0);
    snprintf(cl.key_prefix, sizeof cl.key_prefix, PREFIX);
    snprintf(cl.username, sizeof cl.username, "%s", username ? username : "");
    snprintf(cl.password, sizeof cl.password, "%s", password ? password : "");
    return cl;
}

static struct redis_link *link_to(const struct h_redis *rd)
{
    struct cfg_cluster cl = cluster_for(rd->port, NULL, rd->password);
    struct redis_link *r = redis_link_new();
    cr_assert(r);
    char err[512] = "";
    enum redis_error e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "connect: %s: %s", redis_error_name(e), err);
    cr_assert(redis_link_connected(r));
    return r;
}

static void start_redis(struct h_redis *rd)
{
    cr_assert_eq(h_redis_start(rd, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
}

static int64_t today(void)
{
    return (int64_t)time(NULL) / 86400;
}

static const char *day_text(int64_t day)
{
    static char buf[32];
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y%m%d", &tm);
    return buf;
}

/* A key with a requests bucket only. */
static struct lease_op req_op(const char *name, uint64_t per_minute, int64_t capacity, int64_t want)
{
    return (struct lease_op){ .name = name, .day = today(),
                              .rate[0] = { .per_minute = per_minute, .capacity = capacity, .want = want } };
}

/* A key with a daily quota only. */
static struct lease_op daily_op(const char *name, int64_t limit, int64_t want, int64_t ret, int64_t debt)
{
    return (struct lease_op){ .name = name, .day = today(),
                              .daily = { .limit = limit, .want = want, .ret = ret, .debt = debt } };
}

static uint64_t next_seq = 1;

/* One batch, which must succeed; returns the hosts count. */
static uint32_t sync_ok(struct redis_link *r, uint64_t host, const struct lease_op *ops, size_t n,
                        struct lease_result *out)
{
    char err[512] = "";
    uint32_t hosts = 0;
    enum redis_error e = redis_sync(r, PREFIX, host, next_seq++, ops, n, out, &hosts, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "sync: %s: %s", redis_error_name(e), err);
    return hosts;
}

static struct lease_result sync_one(struct redis_link *r, struct lease_op op)
{
    struct lease_result res;
    sync_ok(r, 1, &op, 1, &res);
    return res;
}

/* HGET as a real number (bucket levels keep fractions); NAN if absent. */
static double redis_real(const struct h_redis *rd, const char *key, const char *field)
{
    redisReply *rep = h_redis_cmd(rd, "HGET %s %s", key, field);
    double v = rep && rep->type == REDIS_REPLY_STRING ? strtod(rep->str, NULL) : NAN;
    if (rep)
        freeReplyObject(rep);
    return v;
}

/* HGETALL as one "field=value;" string (field order as Redis keeps it). */
static char *redis_hash_text(const struct h_redis *rd, const char *key)
{
    redisReply *rep = h_redis_cmd(rd, "HGETALL %s", key);
    cr_assert(rep && rep->type == REDIS_REPLY_ARRAY, "HGETALL %s failed", key);
    size_t cap = 64;
    for (size_t i = 0; i < rep->elements; i++)
        cap += rep->element[i]->len + 2;
    char *s = calloc(1, cap);
    for (size_t i = 0; i + 1 < rep->elements; i += 2) {
        strcat(s, rep->element[i]->str);
        strcat(s, "=");
        strcat(s, rep->element[i + 1]->str);
        strcat(s, ";");
    }
    freeReplyObject(rep);
    return s;
}

Test(redis_link, grants_at_most_what_is_wanted_and_the_bucket_keeps_the_rest)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    /* 1 per minute: no refill worth a token during the test */
    struct lease_op op = req_op("team.alpha-1", 1, 100, 30);
    op.rate[1] = (struct lease_rate_op){ .per_minute = 1, .capacity = 1000, .want = 250 };
    struct lease_result res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 30);
    cr_assert_eq(res.granted[1], 250);
    cr_assert_eq(res.granted[2], 0, "no daily quota: nothing granted");
    cr_assert_eq(res.req_level, 70);
    cr_assert_eq(res.tok_level, 750);
    cr_assert_eq(res.daily_used, 0);
    cr_assert_float_eq(redis_real(&rd, PREFIX "rl:team.alpha-1", "rl"), 70.0, 0.01);
    cr_assert_float_eq(redis_real(&rd, PREFIX "rl:team.alpha-1", "tl"), 750.0, 0.02);

    /* more than is left: only what is left */
    op.rate[0].want = 500;
    op.rate[1].want = 0;
    res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 70, "granted %" PRId64 " of the 70 left", res.granted[0]);
    cr_assert_eq(res.req_level, 0);
    cr_assert_eq(res.granted[1], 0);
    cr_assert_eq(res.tok_level, 750);
    cr_assert_lt(redis_real(&rd, PREFIX "rl:team.alpha-1", "rl"), 1.0);

    /* an unlimited key: not touched in Redis */
    struct lease_op free_op = { .name = "free.key", .day = today() };
    res = sync_one(r, free_op);
    cr_assert_eq(res.granted[0] + res.granted[1] + res.granted[2], 0);
    cr_assert_eq(h_redis_int(&rd, "EXISTS %s", PREFIX "rl:free.key"), 0);
    cr_assert_eq(h_redis_int(&rd, "EXISTS %s%s:free.key", PREFIX "day:", day_text(today())), 0);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, an_empty_bucket_refills_on_redis_clock)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    /* 120 per minute: 2 a second */
    struct lease_op op = req_op("slow-refill.key", 120, 10, 10);
    struct lease_result res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 10);
    cr_assert_eq(res.req_level, 0);
    int64_t t0 = h_now_ms();

    op.rate[0].want = 0;
    int64_t level = 0, deadline = t0 + 5000 * h_slow();
    for (int i = 0; i < 1000 && level < 2 && h_now_ms() < deadline; i++) {
        h_sleep_ms(20);
        level = sync_one(r, op).req_level;
    }
    int64_t waited = h_now_ms() - t0;
    cr_assert_geq(level, 2, "the bucket did not refill in %" PRId64 " ms", waited);
    /* 2 tokens at 2/s take a second: not sooner (10 ms of slack for clocks) */
    cr_assert_geq(waited, 990, "2 tokens came back after %" PRId64 " ms, at 2 per second", waited);

    /* and what came back can be leased */
    op.rate[0].want = 2;
    res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 2);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, refill_and_returns_stop_at_capacity)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    /* 600000 per minute: full again within a few ms */
    struct lease_op op = req_op("fast.key", 600000, 10, 4);
    struct lease_result res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 4);
    op.rate[0].want = 0;
    int64_t level = 0, deadline = h_now_ms() + 5000 * h_slow();
    for (int i = 0; i < 1000 && level < 10 && h_now_ms() < deadline; i++) {
        h_sleep_ms(5);
        level = sync_one(r, op).req_level;
    }
    cr_assert_eq(level, 10, "the bucket refilled to %" PRId64 ", capacity 10", level);
    cr_assert_leq(redis_real(&rd, PREFIX "rl:fast.key", "rl"), 10.0);

    /* a slow bucket: a return above capacity is cut at capacity */
    struct lease_op slow = req_op("slow.key", 1, 10, 6);
    res = sync_one(r, slow);
    cr_assert_eq(res.req_level, 4);
    slow.rate[0].want = 0;
    slow.rate[0].ret = 50;
    res = sync_one(r, slow);
    cr_assert_eq(res.req_level, 10, "returning 50 to a bucket of 10 left %" PRId64, res.req_level);
    cr_assert_float_eq(redis_real(&rd, PREFIX "rl:slow.key", "rl"), 10.0, 0.01);

    /* a return and a lease in one op: the return first, then the lease */
    slow.rate[0].want = 3;
    slow.rate[0].ret = 50;
    res = sync_one(r, slow);
    cr_assert_eq(res.granted[0], 3);
    cr_assert_eq(res.req_level, 7);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_debt_empties_a_bucket_but_never_below_zero)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    struct lease_op op = req_op("owes.key", 1, 100, 0);
    op.rate[1] = (struct lease_rate_op){ .per_minute = 1, .capacity = 1000, .debt = 300 };
    op.rate[0].debt = 500;
    struct lease_result res = sync_one(r, op);
    cr_assert_eq(res.req_level, 0);
    cr_assert_eq(res.tok_level, 700);
    cr_assert_geq(redis_real(&rd, PREFIX "rl:owes.key", "rl"), 0.0);

    /* the debt over what was there is not carried: nothing to lease, nothing owed */
    op.rate[0].debt = 0;
    op.rate[1].debt = 0;
    op.rate[0].ret = 5;
    op.rate[0].want = 5;
    res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 5, "a bucket floored at 0 then given 5 grants %" PRId64, res.granted[0]);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_daily_quota_is_honoured_debts_pass_it_and_returns_lower_the_use)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);
    char day_key[128];
    snprintf(day_key, sizeof day_key, PREFIX "day:%s:quota.team-b", day_text(today()));

    struct lease_result res = sync_one(r, daily_op("quota.team-b", 100, 60, 0, 0));
    cr_assert_eq(res.granted[2], 60);
    cr_assert_eq(res.daily_used, 60);
    res = sync_one(r, daily_op("quota.team-b", 100, 60, 0, 0));
    cr_assert_eq(res.granted[2], 40, "granted %" PRId64 " with 40 left of the day", res.granted[2]);
    cr_assert_eq(res.daily_used, 100);
    cr_assert_eq(h_redis_int(&rd, "HGET %s tok", day_key), 100);

    /* a settlement beyond the lease is charged: the day passes its limit */
    res = sync_one(r, daily_op("quota.team-b", 100, 10, 0, 30));
    cr_assert_eq(res.granted[2], 0);
    cr_assert_eq(res.daily_used, 130);
    cr_assert_eq(h_redis_int(&rd, "HGET %s tok", day_key), 130);

    /* tokens given back lower the use, and are leased again */
    res = sync_one(r, daily_op("quota.team-b", 100, 0, 50, 0));
    cr_assert_eq(res.daily_used, 80);
    res = sync_one(r, daily_op("quota.team-b", 100, 50, 0, 0));
    cr_assert_eq(res.granted[2], 20);
    cr_assert_eq(res.daily_used, 100);

    /* a return larger than the use stops at 0 */
    res = sync_one(r, daily_op("quota.team-b", 100, 0, 1000, 0));
    cr_assert_eq(res.daily_used, 0);
    cr_assert_eq(h_redis_int(&rd, "HGET %s tok", day_key), 0);

    /* another day is another hash */
    struct lease_op tomorrow = daily_op("quota.team-b", 100, 7, 0, 0);
    tomorrow.day = today() + 1;
    res = sync_one(r, tomorrow);
    cr_assert_eq(res.daily_used, 7);
    cr_assert_eq(h_redis_int(&rd, "HGET %sday:%s:quota.team-b tok", PREFIX, day_text(today() + 1)), 7);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, hosts_count_the_distinct_hosts_that_synced_lately)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *a = link_to(&rd), *b = link_to(&rd);

    cr_assert_eq(sync_ok(a, 0xa1, NULL, 0, NULL), 1, "a heartbeat counts its host");
    cr_assert_eq(sync_ok(a, 0xa1, NULL, 0, NULL), 1, "the same host twice is one host");
    struct lease_op op = req_op("shared.key", 60, 10, 1);
    struct lease_result res;
    cr_assert_eq(sync_ok(b, 0xb2, &op, 1, &res), 2);
    cr_assert_eq(sync_ok(a, 0xa1, NULL, 0, NULL), 2);
    cr_assert_eq(h_redis_int(&rd, "ZCARD %s", PREFIX "hosts"), 2);
    cr_assert_neq(h_redis_int(&rd, "EXISTS %s", PREFIX "host:a1"), 0, "the host record is named by the host id in hex");

    /* a host last seen long ago (score: its sync time in µs) no longer counts */
    redisReply *added = h_redis_cmd(&rd, "ZADD %s 1000000 c3", PREFIX "hosts");
    cr_assert(added && added->type == REDIS_REPLY_INTEGER && added->integer == 1);
    freeReplyObject(added);
    cr_assert_eq(sync_ok(b, 0xb2, NULL, 0, NULL), 2);
    cr_assert_eq(h_redis_int(&rd, "ZSCORE %s c3", PREFIX "hosts"), -1, "the stale host was not pruned");

    redis_link_free(a);
    redis_link_free(b);
    h_finish();
}

Test(redis_link, a_batch_sent_again_returns_the_first_reply_and_changes_nothing)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);
    char day_key[128];
    snprintf(day_key, sizeof day_key, PREFIX "day:%s:retry.key", day_text(today()));

    struct lease_op ops[2] = { req_op("retry.key", 60, 100, 30), req_op("other.key", 60, 50, 5) };
    ops[0].daily = (typeof(ops[0].daily)){ .limit = 1000, .want = 400 };
    struct lease_result first[2], again[2];
    char err[512] = "";
    uint32_t hosts1 = 0, hosts2 = 0;
    cr_assert_eq(redis_sync(r, PREFIX, 7, 42, ops, 2, first, &hosts1, err, sizeof err), REDIS_OK, "%s", err);
    cr_assert_eq(first[0].granted[0], 30);
    cr_assert_eq(first[0].granted[2], 400);
    cr_assert_eq(first[1].granted[0], 5);

    char *bucket = redis_hash_text(&rd, PREFIX "rl:retry.key");
    char *day = redis_hash_text(&rd, day_key);
    char *host = redis_hash_text(&rd, PREFIX "host:7");
    /* the lost reply's batch again (what it asks is the same; what Redis
     * would grant now differs: the bucket has less, and time has passed) */
    cr_assert_eq(redis_sync(r, PREFIX, 7, 42, ops, 2, again, &hosts2, err, sizeof err), REDIS_OK, "%s", err);
    cr_assert_eq(memcmp(first, again, sizeof first), 0, "the replayed batch got another reply");
    cr_assert_eq(hosts1, hosts2);
    char *bucket2 = redis_hash_text(&rd, PREFIX "rl:retry.key");
    char *day2 = redis_hash_text(&rd, day_key);
    char *host2 = redis_hash_text(&rd, PREFIX "host:7");
    cr_assert_str_eq(bucket2, bucket, "the bucket changed on a replay");
    cr_assert_str_eq(day2, day, "the day's use changed on a replay");
    cr_assert_str_eq(host2, host);

    /* the next seq is applied */
    cr_assert_eq(redis_sync(r, PREFIX, 7, 43, ops, 2, again, &hosts2, err, sizeof err), REDIS_OK, "%s", err);
    cr_assert_eq(again[0].granted[0], 30);
    cr_assert_eq(again[0].daily_used, 800);

    free(bucket), free(day), free(host), free(bucket2), free(day2), free(host2);
    redis_link_free(r);
    h_finish();
}

Test(redis_link, every_key_written_expires)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    /* 60 per minute, 10 short of full: full in 10 s */
    struct lease_op op = req_op("ttl.key", 60, 100, 10);
    op.daily = (typeof(op.daily)){ .limit = 1000, .want = 10 };
    sync_ok(r, 0x51, &op, 1, (struct lease_result[1]){ 0 });

    long long bucket_ms = h_redis_int(&rd, "PTTL %s", PREFIX "rl:ttl.key");
    cr_assert(bucket_ms > 60000 && bucket_ms <= 70000, "bucket PTTL %lld ms: full in 10 s, plus a minute",
              bucket_ms);
    char day_key[128];
    snprintf(day_key, sizeof day_key, PREFIX "day:%s:ttl.key", day_text(today()));
    long long day_ttl = h_redis_int(&rd, "TTL %s", day_key);
    cr_assert_gt(day_ttl, 0);
    long long day_at = h_redis_int(&rd, "EXPIRETIME %s", day_key);
    cr_assert_eq(day_at, today() * 86400 + 48 * 3600, "the day's hash expires 48 h after the day began");
    long long host_ttl = h_redis_int(&rd, "TTL %s", PREFIX "host:51");
    cr_assert(host_ttl > 0 && host_ttl <= 3600, "host record TTL %lld", host_ttl);
    long long hosts_ttl = h_redis_int(&rd, "TTL %s", PREFIX "hosts");
    cr_assert(hosts_ttl > 0 && hosts_ttl <= 60, "hosts TTL %lld", hosts_ttl);

    /* nothing else was written, and nothing without an expiry */
    redisReply *keys = h_redis_cmd(&rd, "KEYS *");
    cr_assert(keys && keys->type == REDIS_REPLY_ARRAY);
    cr_assert_eq(keys->elements, 4, "%zu keys in Redis", keys->elements);
    for (size_t i = 0; i < keys->elements; i++)
        cr_assert_gt(h_redis_int(&rd, "PTTL %s", keys->element[i]->str), 0, "%s has no expiry",
                     keys->element[i]->str);
    freeReplyObject(keys);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, big_batches_and_names_that_look_like_formats)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);

    /* one small batch first, so the buffers have to grow */
    struct lease_op one = req_op("%s%n%d.key", 60, 10, 3);
    struct lease_result res = sync_one(r, one);
    cr_assert_eq(res.granted[0], 3);
    cr_assert_eq(h_redis_int(&rd, "HGET %s rl", PREFIX "rl:%s%n%d.key"), 7);

    enum { N = 400 };
    static struct lease_op ops[N];
    static struct lease_result out[N];
    static char names[N][48];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "tenant-%03d.team.with-a-rather-long-name", i);
        ops[i] = req_op(names[i], 60, 100 + i, i % 7);
        ops[i].daily = (typeof(ops[i].daily)){ .limit = 1000, .want = i };
    }
    sync_ok(r, 9, ops, N, out);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(out[i].granted[0], i % 7, "key %d", i);
        cr_assert_eq(out[i].req_level, 100 + i - i % 7, "key %d", i);
        cr_assert_eq(out[i].granted[2], i, "key %d", i);
    }
    cr_assert_eq(h_redis_int(&rd, "HGET %sday:%s:%s tok", PREFIX, day_text(today()), names[N - 1]), N - 1);

    /* and a small one again on the same buffers */
    res = sync_one(r, one);
    cr_assert_eq(res.granted[0], 3);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_password_and_an_acl_user_authenticate)
{
    struct h_redis rd = { 0 };
    snprintf(rd.password, sizeof rd.password, "pw-Zq81-secret");
    start_redis(&rd);

    struct redis_link *r = link_to(&rd);
    cr_assert_eq(sync_one(r, req_op("auth.key", 60, 10, 2)).granted[0], 2);

    redisReply *ok = h_redis_cmd(&rd, "ACL SETUSER gw on >gw-pass-77 ~* +@all");
    cr_assert(ok && ok->type == REDIS_REPLY_STATUS, "ACL SETUSER failed");
    freeReplyObject(ok);
    struct cfg_cluster cl = cluster_for(rd.port, "gw", "gw-pass-77");
    char err[512] = "";
    enum redis_error e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "ACL user: %s: %s", redis_error_name(e), err);
    cr_assert_eq(sync_one(r, req_op("auth.key", 60, 10, 2)).granted[0], 2);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_wrong_password_is_an_auth_error_that_does_not_show_it)
{
    struct h_redis rd = { 0 };
    snprintf(rd.password, sizeof rd.password, "right-pw-19");
    start_redis(&rd);
    struct redis_link *r = redis_link_new();
    char err[512] = "", addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", rd.port);

    struct cfg_cluster cl = cluster_for(rd.port, NULL, "WRONG-pw-4242");
    enum redis_error e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_E_AUTH, "%s: %s", redis_error_name(e), err);
    cr_assert(!redis_link_connected(r));
    cr_assert(strstr(err, addr), "the message names the address: %s", err);
    cr_assert(strstr(err, "AUTH refused"), "%s", err);
    cr_assert(!strstr(err, "WRONG-pw-4242"), "the password is in the message: %s", err);

    /* a wrong ACL user */
    cl = cluster_for(rd.port, "nobody", "WRONG-pw-4242");
    e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_E_AUTH, "%s: %s", redis_error_name(e), err);
    cr_assert(!strstr(err, "WRONG-pw-4242"), "the password is in the message: %s", err);

    /* no password where one is required */
    cl = cluster_for(rd.port, NULL, NULL);
    e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_E_AUTH, "%s: %s", redis_error_name(e), err);
    cr_assert(!redis_link_connected(r));

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_closed_port_is_a_connect_error_at_once)
{
    int port = h_free_port();
    struct cfg_cluster cl = cluster_for(port, NULL, NULL);
    struct redis_link *r = redis_link_new();
    char err[512] = "";
    int64_t t0 = h_now_ms();
    enum redis_error e = redis_link_connect(r, &cl, err, sizeof err);
    int64_t took = h_now_ms() - t0;
    cr_assert_eq(e, REDIS_E_CONNECT, "%s: %s", redis_error_name(e), err);
    cr_assert_lt(took, (int64_t)cl.timeout_ms + 200, "refused after %" PRId64 " ms", took);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    cr_assert(strstr(err, addr), "%s", err);
    cr_assert(!redis_link_connected(r));

    /* a batch on a link that is not connected fails, it does not crash */
    uint32_t hosts;
    e = redis_sync(r, PREFIX, 1, 1, NULL, 0, NULL, &hosts, err, sizeof err);
    cr_assert_neq(e, REDIS_OK);
    redis_link_free(r);
}

Test(redis_link, a_stopped_redis_is_a_timeout_within_the_configured_bound)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);
    struct cfg_cluster cl = cluster_for(rd.port, NULL, NULL);
    int64_t margin = 500 * h_slow();

    cr_assert_eq(kill(rd.pid, SIGSTOP), 0);
    char err[512] = "";
    uint32_t hosts;
    struct lease_op op = req_op("stopped.key", 60, 10, 1);
    struct lease_result res;
    int64_t t0 = h_now_ms();
    enum redis_error e = redis_sync(r, PREFIX, 1, 1, &op, 1, &res, &hosts, err, sizeof err);
    int64_t took = h_now_ms() - t0;
    enum redis_error e2 = REDIS_OK;
    char err2[512] = "";
    int64_t took2 = 0;
    if (e == REDIS_E_TIMEOUT && !redis_link_connected(r)) {
        /* the kernel still accepts the connection: AUTH or SCRIPT LOAD times out */
        t0 = h_now_ms();
        e2 = redis_link_connect(r, &cl, err2, sizeof err2);
        took2 = h_now_ms() - t0;
    }
    kill(rd.pid, SIGCONT);
    cr_assert_eq(e, REDIS_E_TIMEOUT, "%s: %s", redis_error_name(e), err);
    cr_assert(!redis_link_connected(r), "the link stays open after a timeout");
    cr_assert_geq(took, (int64_t)cl.timeout_ms - 10, "timed out after %" PRId64 " ms", took);
    cr_assert_lt(took, (int64_t)cl.timeout_ms + margin, "timed out after %" PRId64 " ms", took);
    cr_assert(strstr(err, "no reply"), "%s", err);
    cr_assert_eq(e2, REDIS_E_TIMEOUT, "connect to a stopped redis: %s: %s", redis_error_name(e2), err2);
    cr_assert_lt(took2, (int64_t)cl.timeout_ms + margin, "connect gave up after %" PRId64 " ms", took2);

    /* running again: the same batch is applied once */
    e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "%s: %s", redis_error_name(e), err);
    e = redis_sync(r, PREFIX, 1, 1, &op, 1, &res, &hosts, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "%s: %s", redis_error_name(e), err);
    cr_assert_eq(res.granted[0], 1);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_flushed_script_cache_is_loaded_again)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);
    struct lease_op op = req_op("flush.key", 60, 10, 2);
    cr_assert_eq(sync_one(r, op).granted[0], 2);

    redisReply *ok = h_redis_cmd(&rd, "SCRIPT FLUSH");
    cr_assert(ok && ok->type == REDIS_REPLY_STATUS);
    freeReplyObject(ok);
    struct lease_result res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 2);
    cr_assert_eq(res.req_level, 6);
    cr_assert(redis_link_connected(r));

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_restarted_redis_is_reached_again_by_reconnecting)
{
    struct h_redis rd = { 0 };
    start_redis(&rd);
    struct redis_link *r = link_to(&rd);
    struct lease_op op = req_op("restart.key", 60, 10, 2);
    cr_assert_eq(sync_one(r, op).granted[0], 2);

    h_stop(rd.pid, 5000);
    cr_assert_eq(h_redis_restart(&rd, NULL), 0, "redis-server did not restart:\n%s", h_tail("redis"));

    char err[512] = "";
    uint32_t hosts;
    struct lease_result res;
    enum redis_error e = redis_sync(r, PREFIX, 1, next_seq++, &op, 1, &res, &hosts, err, sizeof err);
    cr_assert_eq(e, REDIS_E_PROTOCOL, "the old connection: %s: %s", redis_error_name(e), err);
    cr_assert(!redis_link_connected(r));

    struct cfg_cluster cl = cluster_for(rd.port, NULL, NULL);
    e = redis_link_connect(r, &cl, err, sizeof err);
    cr_assert_eq(e, REDIS_OK, "%s: %s", redis_error_name(e), err);
    /* a fresh server (no persistence here): a full bucket again */
    res = sync_one(r, op);
    cr_assert_eq(res.granted[0], 2);
    cr_assert_eq(res.req_level, 8);

    redis_link_free(r);
    h_finish();
}

Test(redis_link, a_read_only_replica_refuses_the_script)
{
    struct h_redis primary = { 0 }, replica = { 0 };
    start_redis(&primary);
    char args[64];
    snprintf(args, sizeof args, "--replicaof 127.0.0.1 %d", primary.port);
    cr_assert_eq(h_redis_start(&replica, "replica", args), 0, "the replica did not start:\n%s", h_tail("replica"));
    struct redis_link *r = link_to(&replica);

    char err[512] = "";
    uint32_t hosts;
    struct lease_op op = req_op("replica.key", 60, 10, 1);
    struct lease_result res;
    enum redis_error e = redis_sync(r, PREFIX, 1, 1, &op, 1, &res, &hosts, err, sizeof err);
    cr_assert_eq(e, REDIS_E_SCRIPT, "%s: %s", redis_error_name(e), err);
    cr_assert(strstr(err, "READONLY"), "%s", err);
    cr_assert(!redis_link_connected(r));

    redis_link_free(r);
    h_finish();
}

/* ---- a fake server, for the answers a real one does not give on demand ---- */

enum fake_mode {
    FAKE_NOSCRIPT_ALWAYS,       /* EVALSHA: -NOSCRIPT, however often the script is loaded */
    FAKE_WRONG_SHAPE,           /* EVALSHA: an integer instead of the reply array */
    FAKE_HANG_UP,               /* EVALSHA: the connection closed without a reply */
};

struct fake_redis {
    int listen_fd, port;
    enum fake_mode mode;
    pthread_t thread;
    _Atomic int script_loads, evalshas;
};

/* One command of the request stream in buf: 1 and its name (uppercased) and
 * length in bytes, 0 if incomplete, -1 if not RESP. */
static int resp_command(const char *buf, size_t len, char *name, size_t name_cap, size_t *used)
{
    const char *p = buf, *end = buf + len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return 0;
    if (*p != '*')
        return -1;
    long argc = strtol(p + 1, NULL, 10);
    p = nl + 1;
    for (long i = 0; i < argc; i++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return 0;
        if (*p != '$')
            return -1;
        long n = strtol(p + 1, NULL, 10);
        p = nl + 1;
        if (end - p < n + 2)
            return 0;
        if (i == 0) {
            size_t k = (size_t)n < name_cap - 1 ? (size_t)n : name_cap - 1;
            for (size_t j = 0; j < k; j++)
                name[j] = (char)toupper((unsigned char)p[j]);
            name[k] = '\0';
        }
        p += n + 2;
    }
    *used = (size_t)(p - buf);
    return 1;
}

static void *fake_redis_main(void *arg)
{
    struct fake_redis *f = arg;
    struct pollfd pl = { .fd = f->listen_fd, .events = POLLIN };
    if (poll(&pl, 1, 10000) != 1)
        return NULL;
    int fd = accept(f->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    static const char sha[] = "0123456789abcdef0123456789abcdef01234567";
    char *buf = malloc(1 << 20);
    size_t len = 0;
    for (int rounds = 0; rounds < 1000; rounds++) {
        struct pollfd pc = { .fd = fd, .events = POLLIN };
        if (poll(&pc, 1, 10000) != 1)
            break;
        ssize_t got = read(fd, buf + len, (1 << 20) - len);
        if (got <= 0)
            break;
        len += (size_t)got;
        char name[32];
        size_t used;
        int rc;
        bool hang_up = false;
        while ((rc = resp_command(buf, len, name, sizeof name, &used)) == 1) {
            memmove(buf, buf + used, len - used);
            len -= used;
            const char *answer = "+OK\r\n";
            char load_answer[64];
            if (!strcmp(name, "SCRIPT")) {
                f->script_loads++;
                snprintf(load_answer, sizeof load_answer, "$40\r\n%s\r\n", sha);
                answer = load_answer;
            } else if (!strcmp(name, "EVALSHA")) {
                f->evalshas++;
                if (f->mode == FAKE_NOSCRIPT_ALWAYS)
                    answer = "-NOSCRIPT No matching script. Please use EVAL.\r\n";
                else if (f->mode == FAKE_WRONG_SHAPE)
                    answer = ":1\r\n";
                else
                    hang_up = true;
            }
            if (hang_up)
                break;
            h_write_all(fd, answer, strlen(answer));
        }
        if (rc < 0 || hang_up)
            break;
    }
    free(buf);
    close(fd);
    return NULL;
}

static void fake_redis_start(struct fake_redis *f, enum fake_mode mode)
{
    f->mode = mode;
    f->listen_fd = h_listen_loopback(&f->port);
    cr_assert_eq(pthread_create(&f->thread, NULL, fake_redis_main, f), 0);
}

static void fake_redis_stop(struct fake_redis *f)
{
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
}

static enum redis_error fake_sync(struct fake_redis *f, char *err, size_t errlen)
{
    struct cfg_cluster cl = cluster_for(f->port, NULL, NULL);
    struct redis_link *r = redis_link_new();
    enum redis_error e = redis_link_connect(r, &cl, err, errlen);
    cr_assert_eq(e, REDIS_OK, "connect to the fake server: %s: %s", redis_error_name(e), err);
    struct lease_op op = req_op("fake.key", 60, 10, 1);
    struct lease_result res;
    uint32_t hosts;
    e = redis_sync(r, PREFIX, 1, 1, &op, 1, &res, &hosts, err, errlen);
    cr_assert(!redis_link_connected(r), "the link stays open after %s", redis_error_name(e));
    redis_link_free(r);
    fake_redis_stop(f);
    return e;
}

Test(redis_link, a_script_that_stays_unknown_is_loaded_once_more_then_a_script_error)
{
    struct fake_redis f = { 0 };
    fake_redis_start(&f, FAKE_NOSCRIPT_ALWAYS);
    char err[512] = "";
    enum redis_error e = fake_sync(&f, err, sizeof err);
    cr_assert_eq(e, REDIS_E_SCRIPT, "%s: %s", redis_error_name(e), err);
    cr_assert(strstr(err, "NOSCRIPT"), "%s", err);
    cr_assert_eq(f.script_loads, 2, "SCRIPT LOAD sent %d times: at connect and once after NOSCRIPT",
                 f.script_loads);
    cr_assert_eq(f.evalshas, 2, "EVALSHA sent %d times: once, and once again after the reload", f.evalshas);
}

Test(redis_link, a_reply_of_the_wrong_shape_is_a_protocol_error)
{
    struct fake_redis f = { 0 };
    fake_redis_start(&f, FAKE_WRONG_SHAPE);
    char err[512] = "";
    enum redis_error e = fake_sync(&f, err, sizeof err);
    cr_assert_eq(e, REDIS_E_PROTOCOL, "%s: %s", redis_error_name(e), err);
}

Test(redis_link, a_connection_closed_without_a_reply_is_a_protocol_error)
{
    struct fake_redis f = { 0 };
    fake_redis_start(&f, FAKE_HANG_UP);
    char err[512] = "";
    enum redis_error e = fake_sync(&f, err, sizeof err);
    cr_assert_eq(e, REDIS_E_PROTOCOL, "%s: %s", redis_error_name(e), err);
    cr_assert(strstr(err, "closed"), "%s", err);
}
