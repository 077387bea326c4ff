/* Shared limits across gateway hosts ([cluster]): three aigw processes on
 * loopback share one real redis-server and one key. What a user of the fleet
 * sees: together the hosts admit about one limit (not three), a daily quota
 * spent through one host is spent on the others, unused reservations come
 * back, and Redis failing (killed, stopped, restarted, wrong password) never
 * makes a request wait, and is handled as [cluster] on_redis_down says.
 *
 * The upper bounds are the documented error bound (docs/ARCHITECTURE.md
 * "Shared limits (cluster)", src/cluster/lease.h): over a window W the cluster
 * admits at most capacity + rate × W + Σ over hosts of (host stock + S × shard
 * batch), with host stock ≤ share = capacity / (2H) and shard batch =
 * capacity / (S × 16) (ratelimit.c). */
#include "harness.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(cluster, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define T_RESP (5000 * h_slow())
#define HOSTS 3
#define SHARDS 2

#define KEY_A "sk-itest-cluster-alice-7Rm2Qx"
#define KEY_B "sk-itest-cluster-bob-3Vw8Kp"
#define KEY_C "sk-itest-cluster-carol-5Jt4Ns"

/* ---- the fleet: Redis, one backend, up to three gateways ---- */

struct fleet {
    struct h_redis redis;
    struct h_mock mock;
    struct h_gw gw[HOSTS];
    int n;
    char tiers[1024];       /* [tier ...] sections */
    char cluster[512];      /* the [cluster] body (empty: no [cluster]) */
};

/* The [cluster] section: Redis at its port, sync_interval `sync` (NULL: 20ms),
 * timeout 250ms, then `extra` lines. */
static void fleet_cluster_sync(struct fleet *f, const char *sync, const char *extra)
{
    snprintf(f->cluster, sizeof f->cluster, "redis = 127.0.0.1:%d\nsync_interval = %s\ntimeout = 250ms\n%s",
             f->redis.port, sync ? sync : "20ms", extra ? extra : "");
}

static void fleet_cluster(struct fleet *f, const char *extra)
{
    fleet_cluster_sync(f, NULL, extra);
}

/* Writes gateway i's config: the standard routes to the mock, the keys file
 * keys_path (NULL: h_keys_path()), the fleet's tiers and [cluster]. */
static void fleet_config(struct fleet *f, int i, const char *keys_path)
{
    struct h_gw *g = &f->gw[i];
    if (!g->tag[0]) snprintf(g->tag, sizeof g->tag, "aigw-%c", 'a' + i);
    g->shards = SHARDS;
    h_gw_config(g, NULL, H_STD_ROUTES "\n[keys]\nauth = required\nfile = %s\n\n%s\n%s%s", f->mock.port,
                keys_path ? keys_path : h_keys_path(), f->tiers, f->cluster[0] ? "[cluster]\n" : "", f->cluster);
}

/* Starts a redis-server (unless with_redis is false), the mock (mock_args) and n gateways. */
static void fleet_start(struct fleet *f, int n, bool with_redis, const char *mock_args)
{
    if (with_redis)
        cr_assert_eq(h_redis_start(&f->redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    H_MOCK(&f->mock, "mock", mock_args);
    f->n = n;
    for (int i = 0; i < n; i++) {
        fleet_config(f, i, NULL);
        H_GW(&f->gw[i]);
    }
}

/* Waits until gateway g has completed `more` syncs beyond what it counts now. */
static void wait_syncs(const struct h_gw *g, int more);

/* Every gateway reaches Redis, counts the whole fleet among the hosts, and has
 * synced a few times since (its pools sized for H = f->n), so what a test
 * measures starts from a settled cluster. */
static void fleet_wait_synced(const struct fleet *f, int min_syncs)
{
    for (int i = 0; i < f->n; i++) {
        double v = h_wait_metric(f->gw[i].admin_port, "aigw_cluster_redis_up", H_EQ, 1, 5000 * h_slow());
        cr_assert_eq(v, 1, "%s: aigw_cluster_redis_up is %g, not 1; stderr:\n%s", f->gw[i].tag, v,
                     h_tail(f->gw[i].tag));
        v = h_wait_metric(f->gw[i].admin_port, "aigw_cluster_syncs_total", H_GE, min_syncs, 5000 * h_slow());
        cr_assert_geq(v, min_syncs, "%s: aigw_cluster_syncs_total is %g; stderr:\n%s", f->gw[i].tag, v,
                      h_tail(f->gw[i].tag));
    }
    for (int i = 0; i < f->n; i++) {
        double v = h_wait_metric(f->gw[i].admin_port, "aigw_cluster_hosts", H_EQ, f->n, 5000 * h_slow());
        cr_assert_eq(v, f->n, "%s sees %g hosts, not %d", f->gw[i].tag, v, f->n);
    }
    for (int i = 0; i < f->n; i++) wait_syncs(&f->gw[i], 3);
}

/* Redis, [cluster] with the defaults, n gateways over one mock, and every
 * gateway synced with Redis a couple of times: most tests start so. */
static void fleet_up(struct fleet *f, int n, const char *mock_args)
{
    cr_assert_eq(h_redis_start(&f->redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    fleet_cluster(f, NULL);
    fleet_start(f, n, false, mock_args);
    fleet_wait_synced(f, 2);
}


/* Waits until gateway g has completed `more` syncs beyond what it counts now. */
static void wait_syncs(const struct h_gw *g, int more)
{
    double now = h_metric0(g->admin_port, "aigw_cluster_syncs_total");
    double v = h_wait_metric(g->admin_port, "aigw_cluster_syncs_total", H_GE, now + more, 5000 * h_slow());
    cr_assert_geq(v, now + more, "%s: syncs did not advance from %g (now %g); stderr:\n%s", g->tag, now, v,
                  h_tail(g->tag));
}

static void kill_redis(struct h_redis *r, int sig)
{
    cr_assert_eq(kill(r->pid, sig), 0, "cannot signal redis-server %d", (int)r->pid);
    if (sig == SIGKILL)
        cr_assert_neq(h_wait_exit(r->pid, 5000), -1, "redis-server did not die on SIGKILL");
}

static void wait_redis_up(const struct h_gw *g, double want, int timeout_ms)
{
    double v = h_wait_metric(g->admin_port, "aigw_cluster_redis_up", H_EQ, want, timeout_ms);
    cr_assert_eq(v, want, "%s: aigw_cluster_redis_up is %g, expected %g; stderr:\n%s", g->tag, v, want,
                 h_tail(g->tag));
}

/* The day hash's "tok" of key NAME for UTC day `unix_s` falls in (0 if none). */
static long long redis_day_tokens(const struct h_redis *r, const char *name, time_t unix_s)
{
    struct tm tm;
    gmtime_r(&unix_s, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y%m%d", &tm);
    long long v = h_redis_int(r, "HGET aigw:day:%s:%s tok", day, name);
    return v < 0 ? 0 : v;
}

/* The day's tokens over the time the test ran (a test crossing 00:00 UTC sums both days). */
static long long redis_tokens_since(const struct h_redis *r, const char *name, time_t t0)
{
    time_t t1 = time(NULL);
    long long v = redis_day_tokens(r, name, t0);
    if (t1 / 86400 != t0 / 86400) v += redis_day_tokens(r, name, t1);
    return v;
}

/* What the cluster holds for key NAME, for failure messages: Redis's count of
 * the day and each gateway's mode and quota leases. A static buffer. */
static const char *fleet_state(const struct fleet *f, const char *name, time_t day0)
{
    static char buf[1024];
    size_t n = (size_t)snprintf(buf, sizeof buf, "Redis day tok of %s: %lld;", name,
                                redis_tokens_since(&f->redis, name, day0));
    for (int h = 0; h < f->n && n < sizeof buf; h++) {
        int a = f->gw[h].admin_port;
        n += (size_t)snprintf(buf + n, sizeof buf - n,
                              " %s: redis_up %g hosts %g syncs %g quota leased %g returned %g;", f->gw[h].tag,
                              h_metric0(a, "aigw_cluster_redis_up"), h_metric0(a, "aigw_cluster_hosts"),
                              h_metric0(a, "aigw_cluster_syncs_total"),
                              h_metric0(a, "aigw_cluster_leased_total{dimension=\"quota\",direction=\"taken\"}"),
                              h_metric0(a, "aigw_cluster_leased_total{dimension=\"quota\",direction=\"returned\"}"));
    }
    return buf;
}

/* A chat completion without max_tokens: the gateway reserves the tier's
 * max_tokens, the mock generates its --max-tokens. */
static const char *chat_body_default_len(char *out, size_t cap)
{
    snprintf(out, cap,
             "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":\"Say something.\"}],"
             "\"stream\":false}");
    return out;
}

/* ---- one request ---- */

struct answer {
    int status;
    char code[32];          /* the error's code, if any */
    bool retry_after;
    int retry_after_s;
    long long tokens;       /* usage.total_tokens of a 200 */
    int64_t ms;
};

/* One request on a fresh connection. */
static struct answer ask(const struct h_gw *g, const char *key, const char *body)
{
    struct answer a = {0};
    struct h_conn c;
    struct h_resp r;
    memset(&r, 0, sizeof r);
    int64_t t0 = h_now_ms();
    H_CONNECT_GW(&c, g);
    char extra[256];
    snprintf(extra, sizeof extra, "Authorization: Bearer %s\r\nConnection: close\r\n", key);
    int rc = h_request(&c, "POST", "/v1/chat/completions", extra, body, &r, T_RESP);
    a.ms = h_now_ms() - t0;
    cr_assert_eq(rc, H_OK, "%s: no answer (rc %d); stderr:\n%s", g->tag, rc, h_tail(g->tag));
    a.status = r.status;
    if (r.body && r.status != 200) {
        const char *p = strstr(r.body, "\"code\"");
        if (p && (p = strchr(p + 6, '"')))
            sscanf(p + 1, "%31[^\"]", a.code);
    }
    const char *ra = h_header(&r, "retry-after");
    a.retry_after = ra != NULL;
    a.retry_after_s = ra ? atoi(ra) : 0;
    if (r.status == 200 && r.body) a.tokens = h_json_int(r.body, "total_tokens");
    h_resp_free(&r);
    h_close(&c);
    return a;
}

/* ---- a paced load over the gateways ---- */

#define LOAD_THREADS 6

struct load {
    const struct fleet *f;
    int weights[HOSTS];     /* percent of the attempts each gateway gets */
    const char *key, *body;
    int attempts, duration_ms;
    /* results */
    atomic_int ok[HOSTS], refused[HOSTS], other;
    atomic_llong tokens[HOSTS];
    atomic_int codes_requests, codes_tokens, codes_quota, codes_unavailable;
    atomic_llong max_ms;
    atomic_int missing_retry_after;
    char first_other[256];
    atomic_flag first_other_set;
    int64_t t0;
    int next_thread;
    pthread_mutex_t lock;
};

/* The gateway of attempt i: a fixed spread that follows the weights. */
static int load_pick(const struct load *l, int i)
{
    int x = (i * 37) % 100, acc = 0;
    for (int h = 0; h < HOSTS; h++) {
        acc += l->weights[h];
        if (x < acc) return h;
    }
    return 0;
}

static void load_note_other(struct load *l, int host, int rc, int status)
{
    atomic_fetch_add(&l->other, 1);
    if (!atomic_flag_test_and_set(&l->first_other_set))
        snprintf(l->first_other, sizeof l->first_other, "gateway %d: rc %d status %d", host, rc, status);
}

static void *load_thread(void *arg)
{
    struct load *l = arg;
    pthread_mutex_lock(&l->lock);
    int t = l->next_thread++;
    pthread_mutex_unlock(&l->lock);
    struct h_conn conns[HOSTS];
    for (int h = 0; h < HOSTS; h++) conns[h].fd = -1;
    char extra[256];
    snprintf(extra, sizeof extra, "Authorization: Bearer %s\r\n", l->key);
    for (int i = t; i < l->attempts; i += LOAD_THREADS) {
        int64_t at = l->t0 + (int64_t)i * l->duration_ms / l->attempts;
        int64_t now = h_now_ms();
        if (at > now) h_sleep_ms((int)(at - now));   /* pacing, not a wait for an outcome */
        int h = load_pick(l, i);
        const struct h_gw *g = &l->f->gw[h];
        if (conns[h].fd < 0 && h_connect(&conns[h], g->port) < 0) {
            conns[h].fd = -1;
            load_note_other(l, h, H_ECLOSED, 0);
            continue;
        }
        struct h_resp r;
        memset(&r, 0, sizeof r);
        int64_t t0 = h_now_ms();
        int rc = h_request(&conns[h], "POST", "/v1/chat/completions", extra, l->body, &r, T_RESP);
        int64_t ms = h_now_ms() - t0;
        long long prev = atomic_load(&l->max_ms);
        while (ms > prev && !atomic_compare_exchange_weak(&l->max_ms, &prev, ms)) {}
        if (rc != H_OK) {
            load_note_other(l, h, rc, 0);
        } else if (r.status == 200) {
            atomic_fetch_add(&l->ok[h], 1);
            long long tok = r.body ? h_json_int(r.body, "total_tokens") : -1;
            if (tok > 0) atomic_fetch_add(&l->tokens[h], tok);
        } else if (r.status == 429) {
            atomic_fetch_add(&l->refused[h], 1);
            if (!h_header(&r, "retry-after")) atomic_fetch_add(&l->missing_retry_after, 1);
            if (h_json_str_is(r.body, "code", "requests")) atomic_fetch_add(&l->codes_requests, 1);
            else if (h_json_str_is(r.body, "code", "tokens")) atomic_fetch_add(&l->codes_tokens, 1);
            else if (h_json_str_is(r.body, "code", "quota")) atomic_fetch_add(&l->codes_quota, 1);
            else if (h_json_str_is(r.body, "code", "limits_unavailable")) atomic_fetch_add(&l->codes_unavailable, 1);
        } else {
            load_note_other(l, h, rc, r.status);
        }
        bool keep = rc == H_OK && r.keep_alive;
        h_resp_free(&r);
        if (!keep) {
            h_close(&conns[h]);
            conns[h].fd = -1;
        }
    }
    for (int h = 0; h < HOSTS; h++)
        if (conns[h].fd >= 0) h_close(&conns[h]);
    return NULL;
}

/* Runs the load to its end: `attempts` requests paced evenly over duration_ms. */
static void load_run(struct load *l)
{
    pthread_mutex_init(&l->lock, NULL);
    l->t0 = h_now_ms();
    pthread_t th[LOAD_THREADS];
    for (int t = 0; t < LOAD_THREADS; t++) pthread_create(&th[t], NULL, load_thread, l);
    for (int t = 0; t < LOAD_THREADS; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&l->lock);
}

static int load_ok(const struct load *l)
{
    int n = 0;
    for (int h = 0; h < HOSTS; h++) n += atomic_load(&l->ok[h]);
    return n;
}

static long long load_tokens(const struct load *l)
{
    long long n = 0;
    for (int h = 0; h < HOSTS; h++) n += atomic_load(&l->tokens[h]);
    return n;
}

/* ---- 1. accuracy ---- */

/* rpm 600, burst 6s: capacity 60, refill 10/s. */
#define RPM 600
#define RPM_CAPACITY 60
#define RPM_REFILL_PER_S 10

/* The documented over-admission over all hosts for a bucket of `capacity`:
 * each host's stock (≤ capacity / 2H) plus each of its shards' lease. */
static double cluster_bound(double capacity)
{
    double share = capacity / (2.0 * HOSTS);
    double shard_batch = capacity / (SHARDS * 16.0);
    if (shard_batch < 1) shard_batch = 1;
    return HOSTS * (share + SHARDS * shard_batch);
}

static const char *const RPM_TIER = "[tier shared]\nrequests_per_minute = 600\nburst = 6s\n";

/* Drives 300 attempts over 3 s through the fleet with the given weights;
 * returns the admitted requests; *window_s: from before the first gateway
 * started (its first sync touches the bucket, full) to the end of the load. */
static int rpm_load(const struct fleet *f, const int weights[HOSTS], int64_t started_ms, double *window_s,
                    struct load *l)
{
    char body[512];
    memset(l, 0, sizeof *l);
    l->f = f;
    memcpy(l->weights, weights, sizeof l->weights);
    l->key = KEY_A;
    l->body = h_chat_body(body, sizeof body, 1, false);
    l->attempts = 300;
    l->duration_ms = 3000;
    load_run(l);
    *window_s = (double)(h_now_ms() - started_ms) / 1000.0;
    cr_assert_eq(atomic_load(&l->other), 0, "unexpected answers (first: %s); stderr a:\n%s", l->first_other,
                 h_tail("aigw-a"));
    cr_assert_eq(atomic_load(&l->missing_retry_after), 0, "a 429 without Retry-After");
    return load_ok(l);
}

/* Runs the cluster's load and checks it against the bound; returns the admitted. */
static int accuracy_requests(const int weights[HOSTS], const char *what)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "shared", NULL));
    snprintf(f.tiers, sizeof f.tiers, "%s", RPM_TIER);
    int64_t started = h_now_ms();
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0");

    struct load l;
    double window;
    int admitted = rpm_load(&f, weights, started, &window, &l);
    double bound = RPM_CAPACITY + RPM_REFILL_PER_S * window + cluster_bound(RPM_CAPACITY);
    double limit_in_load = RPM_CAPACITY + RPM_REFILL_PER_S * 3.0;
    cr_log_info("cluster %s: admitted %d of 300 (per host %d/%d/%d) over %.2fs; upper bound %.1f", what, admitted,
                atomic_load(&l.ok[0]), atomic_load(&l.ok[1]), atomic_load(&l.ok[2]), window, bound);
    cr_assert_leq(admitted, bound, "%s: three hosts admitted %d requests over %.2f s; the shared limit allows at "
                  "most %.1f (capacity %d + %d/s + bound %.1f)", what, admitted, window, bound, RPM_CAPACITY,
                  RPM_REFILL_PER_S, cluster_bound(RPM_CAPACITY));
    cr_assert_geq(admitted, limit_in_load / 2, "%s: only %d admitted; the limit allows %.0f in the load", what,
                  admitted, limit_in_load);
    cr_assert_eq(atomic_load(&l.codes_requests), atomic_load(&l.refused[0]) + atomic_load(&l.refused[1]) +
                 atomic_load(&l.refused[2]), "every refusal is a 429 code requests");
    cr_assert_eq(admitted + atomic_load(&l.codes_requests), 300);
    /* the hosts shared one limit: each took part */
    for (int h = 0; h < HOSTS; h++)
        cr_assert_gt(atomic_load(&l.ok[h]) + atomic_load(&l.refused[h]), 0);
    h_finish();
    return admitted;
}

Test(cluster, requests_limit_shared_even_load_vs_independent_hosts)
{
    static const int even[HOSTS] = {34, 33, 33};
    int shared = accuracy_requests(even, "even");

    /* The contrast: the same load on three gateways without [cluster]. */
    struct fleet f = {0};
    snprintf(f.tiers, sizeof f.tiers, "%s", RPM_TIER);
    for (int i = 0; i < HOSTS; i++) snprintf(f.gw[i].tag, sizeof f.gw[i].tag, "aigw-solo-%c", 'a' + i);
    int64_t started = h_now_ms();
    fleet_start(&f, HOSTS, false, "--tps 0 --ttft-ms 0");
    struct load l;
    double window;
    int independent = rpm_load(&f, even, started, &window, &l);
    cr_log_info("independent hosts: admitted %d of 300 over %.2fs (shared: %d)", independent, window, shared);
    cr_assert_gt(independent, 1.5 * shared,
                 "three independent hosts admitted %d, the cluster %d: expected about three times one limit",
                 independent, shared);
    h_finish();
}

Test(cluster, requests_limit_shared_skewed_load)
{
    static const int skewed[HOSTS] = {80, 10, 10};
    accuracy_requests(skewed, "skewed 80/10/10");
}

/* tpm 6000, burst 6s: capacity 600, refill 100/s. A request reserves 8 + 2
 * and uses 4 + 2 (the mock's usage): settlement gives back 4 each. */
Test(cluster, tokens_limit_shared_skewed_load)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "shared", NULL));
    snprintf(f.tiers, sizeof f.tiers, "[tier shared]\ntokens_per_minute = 6000\nburst = 6s\n");
    int64_t started = h_now_ms();
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0");

    char body[512];
    struct load l;
    memset(&l, 0, sizeof l);
    l.f = &f;
    l.weights[0] = 60, l.weights[1] = 30, l.weights[2] = 10;
    l.key = KEY_A;
    l.body = h_chat_body(body, sizeof body, 2, false);
    l.attempts = 360;
    l.duration_ms = 3000;
    load_run(&l);
    double window = (double)(h_now_ms() - started) / 1000.0;
    cr_assert_eq(atomic_load(&l.other), 0, "unexpected answers (first: %s)", l.first_other);
    long long used = load_tokens(&l);
    double capacity = 600, refill = 100;
    /* reservations in flight can hold up to 4 more per admitted request than
     * the usage says, on the strict side; the bound is on reserved tokens */
    double bound = capacity + refill * window + cluster_bound(capacity);
    cr_log_info("tokens: used %lld (%d requests) over %.2fs; upper bound %.1f", used, load_ok(&l), window, bound);
    cr_assert_leq(used, bound, "three hosts let %lld tokens through over %.2f s; at most %.1f", used, window, bound);
    cr_assert_geq(used, 0.4 * (capacity + refill * 3.0), "only %lld tokens admitted", used);
    cr_assert_gt(atomic_load(&l.codes_tokens), 0, "the load never met the tokens limit");
    cr_assert_eq(atomic_load(&l.codes_tokens), atomic_load(&l.refused[0]) + atomic_load(&l.refused[1]) +
                 atomic_load(&l.refused[2]), "every refusal is a 429 code tokens");
    h_finish();
}

/* A request larger than a host's lease (the share, capacity / 2H) on a key
 * that is otherwise idle: the host refuses it at first, its next lease brings
 * what was refused, and a client that retries a while later (as Retry-After
 * tells it; here at most 1 s later, which is 50 sync intervals) is admitted,
 * not refused on every retry because the lease was given back meanwhile. */
Test(cluster, a_request_larger_than_a_hosts_lease_passes_when_retried)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "tok", NULL));
    /* capacity 6000: share 1000, floor 250 with 3 hosts; a request reserves 8 + 1200 */
    snprintf(f.tiers, sizeof f.tiers, "[tier tok]\ntokens_per_minute = 6000\nburst = 60s\n");
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0");

    char body[512];
    h_chat_body(body, sizeof body, 1200, false);
    struct answer a = {0};
    int attempts = 0;
    for (; attempts < 3; attempts++) {
        a = ask(&f.gw[0], KEY_A, body);
        if (a.status == 200) break;
        cr_assert_eq(a.status, 429, "%d %s", a.status, a.code);
        cr_assert_str_eq(a.code, "tokens");
        cr_assert(a.retry_after);
        wait_syncs(&f.gw[0], 3);
        /* the client waits as told, up to 1 s */
        h_sleep_ms(a.retry_after_s >= 1 ? 1000 : 100);
    }
    cr_log_info("large request: admitted after %d refusals (bucket full, 6000 tokens)", attempts);
    cr_assert_eq(a.status, 200,
                 "a 1208-token request on a full 6000-token bucket was refused %d times in a row, each retry a "
                 "second later (Retry-After %d); the lease brought for it is given back before the retry", attempts,
                 a.retry_after_s);
    h_finish();
}

/* The same for the daily quota: a key with 20000 tokens a day and nothing
 * used asks for 1008 (more than an idle host's floor, 20000 / 8H). It must be
 * admitted, or refused with a short Retry-After (not until 00:00 UTC: most of
 * the day's quota is left) and admitted on the retry. */
Test(cluster, a_request_larger_than_a_hosts_quota_lease_passes_when_retried)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "quota", NULL));
    snprintf(f.tiers, sizeof f.tiers, "[tier quota]\ndaily_tokens = 20000\nmax_tokens = 1000\n");
    time_t day0 = time(NULL);
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0 --max-tokens 5");

    char body[512];
    chat_body_default_len(body, sizeof body);   /* reserves 8 + 1000 */
    struct answer a = ask(&f.gw[0], KEY_A, body);
    cr_log_info("large quota request: first answer %d %s Retry-After %d", a.status, a.code, a.retry_after_s);
    if (a.status == 429) {
        cr_assert_str_eq(a.code, "quota");
        cr_assert_leq(a.retry_after_s, 2,
                      "an unused 20000-token daily quota refused a 1008-token request with Retry-After %d s; %s",
                      a.retry_after_s, fleet_state(&f, "alice", day0));
        wait_syncs(&f.gw[0], 3);
        h_sleep_ms(a.retry_after_s * 1000);   /* the client waits as told */
        a = ask(&f.gw[0], KEY_A, body);
    }
    cr_assert_eq(a.status, 200, "%d %s; %s", a.status, a.code, fleet_state(&f, "alice", day0));
    h_finish();
}

/* Below the limit nothing is refused: one key at about half its tokens limit
 * (50 requests/s of 24 tokens reserved, 20 used, against 2200 tokens/s and a
 * 1 s burst), spread over the three hosts at sync_interval 50ms. Capacity
 * that sits in other hosts' leases may strand a request now and then (the
 * documented stranded capacity); a refusal rate of more than a tenth is not
 * that. */
Test(cluster, below_the_limit_requests_are_not_refused)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "tok", NULL));
    snprintf(f.tiers, sizeof f.tiers, "[tier tok]\ntokens_per_minute = 132000\nburst = 1s\n");
    cr_assert_eq(h_redis_start(&f.redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    fleet_cluster_sync(&f, "50ms", NULL);
    fleet_start(&f, HOSTS, false, "--tps 0 --ttft-ms 0");
    fleet_wait_synced(&f, 2);

    char body[512];
    struct load l;
    memset(&l, 0, sizeof l);
    l.f = &f;
    l.weights[0] = 34, l.weights[1] = 33, l.weights[2] = 33;
    l.key = KEY_A;
    l.body = h_chat_body(body, sizeof body, 16, false);   /* 8 + 16 reserved, 4 + 16 used */
    l.attempts = 150;
    l.duration_ms = 3000;
    load_run(&l);
    int refused = atomic_load(&l.refused[0]) + atomic_load(&l.refused[1]) + atomic_load(&l.refused[2]);
    cr_log_info("below the limit: %d of 150 refused (per host %d/%d/%d)", refused, atomic_load(&l.refused[0]),
                atomic_load(&l.refused[1]), atomic_load(&l.refused[2]));
    cr_assert_eq(atomic_load(&l.other), 0, "unexpected answers (first: %s)", l.first_other);
    cr_assert_leq(refused, 15, "%d of 150 requests refused at half the tokens limit (%d tokens in them)", refused,
                  refused * 24);
    h_finish();
}

/* ---- 2. a daily quota spent through one host is spent everywhere ---- */

Test(cluster, daily_quota_spent_on_one_host_refused_on_the_others)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "quota", NULL));
    /* a request reserves 8 + 2 and uses 6: about 330 requests spend it */
    const long long quota = 2000;
    snprintf(f.tiers, sizeof f.tiers, "[tier quota]\ndaily_tokens = %lld\n", quota);
    time_t day0 = time(NULL);
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0");

    char body[512];
    h_chat_body(body, sizeof body, 2, false);
    long long used = 0;
    int admitted_a = 0, refusals_in_a_row = 0;
    /* Spend it through host a. A refusal may only mean that a's pool ran dry
     * before its next lease: it is spent when a refuses three times in a row
     * with a sync in between. */
    for (int i = 0; i < 600 && refusals_in_a_row < 3; i++) {
        struct answer a = ask(&f.gw[0], KEY_A, body);
        if (a.status == 200) {
            admitted_a++;
            used += a.tokens;
            refusals_in_a_row = 0;
            continue;
        }
        cr_assert_eq(a.status, 429, "host a answered %d", a.status);
        cr_assert_str_eq(a.code, "quota");
        cr_assert(a.retry_after, "a quota 429 without Retry-After");
        refusals_in_a_row++;
        wait_syncs(&f.gw[0], 1);
    }
    cr_assert_eq(refusals_in_a_row, 3, "host a never ran out of the quota (%d admitted)", admitted_a);
    cr_log_info("quota: host a admitted %d (%lld tokens) before refusing; %s", admitted_a, used,
                fleet_state(&f, "alice", day0));
    cr_assert_geq(used, quota / 2, "host a spent only %lld of %lld before refusing across syncs; %s", used, quota,
                  fleet_state(&f, "alice", day0));

    /* b and c: at most what their own small leases held, then quota */
    int admitted_bc = 0;
    for (int h = 1; h < HOSTS; h++) {
        bool refused = false;
        for (int i = 0; i < 60 && !refused; i++) {
            struct answer a = ask(&f.gw[h], KEY_A, body);
            if (a.status == 200) {
                admitted_bc++;
                used += a.tokens;
                continue;
            }
            cr_assert_eq(a.status, 429, "%s answered %d", f.gw[h].tag, a.status);
            cr_assert_str_eq(a.code, "quota", "%s refused with %s", f.gw[h].tag, a.code);
            cr_assert(a.retry_after);
            refused = true;
        }
        cr_assert(refused, "%s never refused: it has a quota of its own; %s", f.gw[h].tag,
                  fleet_state(&f, "alice", day0));
    }
    cr_log_info("quota: b+c admitted %d more; %lld tokens used of %lld", admitted_bc, used, quota);
    cr_assert_leq(used, quota, "the hosts together used %lld tokens of a %lld-token daily quota", used, quota);
    long long in_redis = redis_tokens_since(&f.redis, "alice", day0);
    cr_assert_leq(in_redis, quota, "Redis counts %lld tokens used of %lld", in_redis, quota);
    cr_assert_geq(in_redis, used, "Redis counts %lld tokens, the answers %lld", in_redis, used);
    h_finish();
}

/* ---- 3. settlement: what a reservation did not use comes back ---- */

/* What the shards of every host may still hold of a daily quota after their
 * host gave its pool back (a shard's lease is at most limit / (16 S)). */
static long long shard_leases_bound(long long daily, int hosts)
{
    return hosts * SHARDS * (daily / (16 * SHARDS));
}

Test(cluster, settlement_returns_unused_reservations_across_hosts)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "big", NULL));
    /* no max_tokens in the request: 8 + 1000 reserved; the mock makes 5: 4 + 5 used */
    const long long daily = 100000;
    snprintf(f.tiers, sizeof f.tiers,
             "[tier big]\ntokens_per_minute = 600000\nmax_tokens = 1000\ndaily_tokens = %lld\n", daily);
    time_t day0 = time(NULL);
    fleet_up(&f, HOSTS, "--tps 0 --ttft-ms 0 --max-tokens 5");

    char body[512];
    chat_body_default_len(body, sizeof body);
    long long used = 0;
    const int n = 60;   /* 60 × 1008 reserved would be 60480, beyond what the shards may hold */
    for (int i = 0; i < n; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200, "request %d on %s: %d %s; %s", i, f.gw[i % HOSTS].tag, a.status, a.code,
                     fleet_state(&f, "alice", day0));
        cr_assert_eq(a.tokens, 9, "the mock's usage changed: %lld", a.tokens);
        used += a.tokens;
    }
    for (int h = 0; h < HOSTS; h++) wait_syncs(&f.gw[h], 2);
    long long held = redis_tokens_since(&f.redis, "alice", day0);
    cr_assert_geq(held, used, "Redis counts %lld tokens, the answers %lld", held, used);
    /* Stopping a gateway gives its leases back. */
    for (int h = 0; h < HOSTS; h++) {
        int st = h_stop(f.gw[h].pid, 10000 * h_slow());
        cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s did not exit 0: 0x%x\n%s", f.gw[h].tag,
                  st, h_tail(f.gw[h].tag));
    }
    long long after = redis_tokens_since(&f.redis, "alice", day0);
    long long stranded = shard_leases_bound(daily, HOSTS);
    cr_log_info("settlement: used %lld (%d × 9), Redis %lld while running, %lld after stop (%lld more than used; "
                "shards' leases ≤ %lld)", used, n, held, after, after - used, stranded);
    cr_assert_geq(after, used, "Redis counts %lld tokens for the day, less than the %lld used", after, used);
    cr_assert_leq(after, used + stranded,
                  "after every gateway stopped, Redis counts %lld tokens for the day; the backend reported %lld "
                  "(%d requests reserving 1008 and using 9), and the shards can hold at most %lld", after, used, n,
                  stranded);
    h_finish();
}

/* ---- 4. Redis killed under load ---- */

struct bg_load {
    struct load l;
    pthread_t th;
    char body[512];
};

static void *bg_load_main(void *arg)
{
    load_run(&((struct bg_load *)arg)->l);
    return NULL;
}

static void bg_load_start(struct bg_load *b, const struct fleet *f, const int weights[HOSTS], int attempts,
                          int duration_ms)
{
    memset(&b->l, 0, sizeof b->l);
    b->l.f = f;
    memcpy(b->l.weights, weights, sizeof b->l.weights);
    b->l.key = KEY_A;
    b->l.body = h_chat_body(b->body, sizeof b->body, 1, false);
    b->l.attempts = attempts;
    b->l.duration_ms = duration_ms;
    pthread_create(&b->th, NULL, bg_load_main, b);
}

/* Returns whether the access log has a line of key alice whose limit is
 * `label` (a JSON string value, or null). */
static bool access_log_has_limit(const char *label, int timeout_ms)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"limit\":\"%s\"", label);
    char *text = h_wait_for_text(h_access_log_path(), needle, timeout_ms);
    free(text);
    return text != NULL;
}

static const int ONLY_A[HOSTS] = {100, 0, 0};

/* The fleet under a load of about 60 requests/s (the limit's refill is 10/s),
 * Redis SIGKILLed in the middle; every answer within 1 s (the [cluster]
 * timeout is 250ms); each gateway sees Redis down. */
static void redis_killed_under_load(struct fleet *f, const char *policy, int hosts)
{
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "shared", NULL));
    snprintf(f->tiers, sizeof f->tiers, "%s", RPM_TIER);
    cr_assert_eq(h_redis_start(&f->redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    char extra[64];
    snprintf(extra, sizeof extra, "on_redis_down = %s\n", policy);
    fleet_cluster(f, extra);
    fleet_start(f, hosts, false, "--tps 0 --ttft-ms 0");
    fleet_wait_synced(f, 2);

    static const int spread3[HOSTS] = {34, 33, 33};
    struct bg_load *b = calloc(1, sizeof *b);
    bg_load_start(b, f, hosts == HOSTS ? spread3 : ONLY_A, 90, 1500);
    /* kill Redis in the middle of the load: once its first answers came back */
    for (int64_t end = h_now_ms() + 5000 * h_slow(); h_now_ms() < end; h_sleep_ms(10)) {
        int answered = atomic_load(&b->l.other);
        for (int i = 0; i < HOSTS; i++)
            answered += atomic_load(&b->l.ok[i]) + atomic_load(&b->l.refused[i]);
        if (answered >= 10)
            break;
    }
    kill_redis(&f->redis, SIGKILL);
    pthread_join(b->th, NULL);
    long long max_ms = atomic_load(&b->l.max_ms);
    cr_assert_eq(atomic_load(&b->l.other), 0, "unexpected answers while Redis died (first: %s)", b->l.first_other);
    cr_assert_lt(max_ms, 1000 * h_slow(), "a request took %lld ms while Redis died (timeout 250ms)", max_ms);
    free(b);
    for (int h = 0; h < hosts; h++) {
        wait_redis_up(&f->gw[h], 0, 3000 * h_slow());
        double v = h_metric0(f->gw[h].admin_port, "aigw_cluster_sync_errors_total");
        cr_assert_gt(v, 0, "%s counts no sync error", f->gw[h].tag);
    }
}

Test(cluster, redis_killed_local_enforces_a_share_per_host)
{
    struct fleet f = {0};
    redis_killed_under_load(&f, "local", HOSTS);
    char text[64];
    snprintf(text, sizeof text, "aigw_cluster_mode{mode=\"local\"}");
    cr_assert_eq(h_wait_metric(f.gw[0].admin_port, text, H_EQ, 1, 2000), 1, "host a is not in local mode");

    /* Host a alone now, 2 s at 50/s: it admits about its share, 1/3 of the limit. */
    struct load l;
    char body[512];
    memset(&l, 0, sizeof l);
    l.f = &f;
    memcpy(l.weights, ONLY_A, sizeof l.weights);
    l.key = KEY_A;
    l.body = h_chat_body(body, sizeof body, 1, false);
    l.attempts = 100;
    l.duration_ms = 2000;
    int64_t t0 = h_now_ms();
    load_run(&l);
    double window = (double)(h_now_ms() - t0) / 1000.0;
    int admitted = atomic_load(&l.ok[0]);
    /* its share of the bucket and of the refill, plus what its pools held when Redis died */
    double bound = (RPM_CAPACITY + RPM_REFILL_PER_S * window) / HOSTS + RPM_CAPACITY / (2.0 * HOSTS) + SHARDS * 2;
    cr_log_info("local: host a admitted %d of 100 over %.2fs alone; bound %.1f; max latency %lld ms", admitted,
                window, bound, (long long)atomic_load(&l.max_ms));
    cr_assert_eq(atomic_load(&l.other), 0, "unexpected answers (first: %s)", l.first_other);
    cr_assert_leq(admitted, bound, "host a admitted %d during the outage: more than its 1/%d share (%.1f)", admitted,
                  HOSTS, bound);
    cr_assert_geq(admitted, 3, "host a admitted only %d: local mode should keep enforcing, not refuse all", admitted);
    cr_assert_gt(atomic_load(&l.codes_requests), 0, "host a never refused: it is not enforcing the limit");
    cr_assert_lt(atomic_load(&l.max_ms), 1000 * h_slow());
    cr_assert(access_log_has_limit("redis_down:local", 3000), "no access log line says redis_down:local");
    cr_assert(access_log_has_limit("redis_down:local:requests", 3000),
              "no refusal logged as redis_down:local:requests");
    h_finish();
}

Test(cluster, redis_killed_deny_refuses_with_limits_unavailable)
{
    struct fleet f = {0};
    redis_killed_under_load(&f, "deny", 1);
    char body[512];
    h_chat_body(body, sizeof body, 1, false);
    for (int i = 0; i < 5; i++) {
        struct answer a = ask(&f.gw[0], KEY_A, body);
        cr_assert_eq(a.status, 429, "Redis down, on_redis_down = deny: got %d", a.status);
        cr_assert_str_eq(a.code, "limits_unavailable");
        cr_assert(a.retry_after, "limits_unavailable without Retry-After");
        cr_assert_lt(a.ms, 1000 * h_slow());
    }
    cr_assert(access_log_has_limit("redis_down:deny", 3000), "no access log line says redis_down:deny");
    h_finish();
}

Test(cluster, redis_killed_allow_admits_unmetered)
{
    struct fleet f = {0};
    redis_killed_under_load(&f, "allow", 1);
    char body[512];
    h_chat_body(body, sizeof body, 1, false);
    /* more than the bucket holds, all admitted */
    for (int i = 0; i < RPM_CAPACITY + 10; i++) {
        struct answer a = ask(&f.gw[0], KEY_A, body);
        cr_assert_eq(a.status, 200, "Redis down, on_redis_down = allow: request %d got %d %s", i, a.status, a.code);
        cr_assert_lt(a.ms, 1000 * h_slow());
    }
    cr_assert(access_log_has_limit("redis_down:allow", 3000), "no access log line says redis_down:allow");
    h_finish();
}

/* ---- 5. Redis stopped: nothing waits for it ---- */

Test(cluster, redis_stopped_requests_never_wait)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "shared", NULL));
    snprintf(f.tiers, sizeof f.tiers, "[tier shared]\nrequests_per_minute = 6000\n");
    fleet_up(&f, 1, "--tps 0 --ttft-ms 0");

    kill_redis(&f.redis, SIGSTOP);
    char body[512];
    h_chat_body(body, sizeof body, 1, false);
    int64_t t0 = h_now_ms();
    for (int i = 0; i < 20; i++) {
        struct answer a = ask(&f.gw[0], KEY_A, body);
        cr_assert_eq(a.status, 200, "request %d with Redis stopped: %d %s", i, a.status, a.code);
        cr_assert_lt(a.ms, 1000 * h_slow(), "request %d took %lld ms with Redis stopped", i, (long long)a.ms);
    }
    double v = h_wait_metric(f.gw[0].admin_port, "aigw_cluster_sync_errors_total{kind=\"timeout\"}", H_GE, 1,
                             3000 * h_slow());
    cr_assert_geq(v, 1, "no sync timed out while Redis was stopped; stderr:\n%s", h_tail("aigw-a"));
    cr_log_info("stopped: 20 requests in %lld ms", (long long)(h_now_ms() - t0));
    wait_redis_up(&f.gw[0], 0, 3000 * h_slow());

    kill_redis(&f.redis, SIGCONT);
    wait_redis_up(&f.gw[0], 1, 6000 * h_slow());
    wait_syncs(&f.gw[0], 2);
    struct answer a = ask(&f.gw[0], KEY_A, body);
    cr_assert_eq(a.status, 200);
    cr_assert_eq(h_metric0(f.gw[0].admin_port, "aigw_cluster_mode{mode=\"shared\"}"), 1,
                 "back to shared limits after SIGCONT");
    h_finish();
}

/* ---- 6. Redis restarted: shared again, nothing counted twice ---- */

Test(cluster, redis_restarted_limits_global_again_no_double_counting)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "big", NULL));
    const long long daily = 20000;
    snprintf(f.tiers, sizeof f.tiers,
             "[tier big]\nrequests_per_minute = 6000\nmax_tokens = 100\ndaily_tokens = %lld\n", daily);
    time_t day0 = time(NULL);
    /* an append-only file written at every command: the restart keeps the data */
    static const char *const persist = "--appendonly yes --appendfsync always";
    cr_assert_eq(h_redis_start(&f.redis, "redis", persist), 0, "redis-server did not start:\n%s", h_tail("redis"));
    fleet_cluster(&f, NULL);
    fleet_start(&f, HOSTS, false, "--tps 0 --ttft-ms 0 --max-tokens 5");
    fleet_wait_synced(&f, 2);

    char body[512];
    chat_body_default_len(body, sizeof body);
    long long used = 0;
    for (int i = 0; i < 12; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200);
        used += a.tokens;
    }
    int st = h_stop(f.redis.pid, 5000);
    cr_assert(st != -1, "redis-server did not stop");
    for (int h = 0; h < HOSTS; h++) wait_redis_up(&f.gw[h], 0, 3000 * h_slow());
    /* during the outage (on_redis_down = local) */
    for (int i = 0; i < 6; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200, "local mode refused: %d %s", a.status, a.code);
        used += a.tokens;
    }
    cr_assert_eq(h_redis_restart(&f.redis, persist), 0, "redis-server did not restart:\n%s", h_tail("redis"));
    for (int h = 0; h < HOSTS; h++) {
        wait_redis_up(&f.gw[h], 1, 6000 * h_slow());
        double v = h_wait_metric(f.gw[h].admin_port, "aigw_cluster_hosts", H_EQ, HOSTS, 3000 * h_slow());
        cr_assert_eq(v, HOSTS, "%s sees %g hosts after the restart", f.gw[h].tag, v);
        cr_assert_eq(h_metric0(f.gw[h].admin_port, "aigw_cluster_mode{mode=\"shared\"}"), 1);
    }
    for (int i = 0; i < 6; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200);
        used += a.tokens;
    }
    for (int h = 0; h < HOSTS; h++) wait_syncs(&f.gw[h], 2);
    for (int h = 0; h < HOSTS; h++) {
        int s = h_stop(f.gw[h].pid, 10000 * h_slow());
        cr_assert(s != -1 && WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s did not exit 0:\n%s", f.gw[h].tag,
                  h_tail(f.gw[h].tag));
    }
    long long in_redis = redis_tokens_since(&f.redis, "alice", day0);
    long long stranded = shard_leases_bound(daily, HOSTS);
    cr_log_info("restart: used %lld; Redis counts %lld (shards' leases ≤ %lld)", used, in_redis, stranded);
    cr_assert_geq(in_redis, used, "after a Redis restart, Redis counts %lld tokens; the backend reported %lld",
                  in_redis, used);
    cr_assert_leq(in_redis, used + stranded,
                  "after a Redis restart and every gateway stopped, Redis counts %lld tokens; the backend reported "
                  "%lld (24 requests of 9) and the shards can hold at most %lld", in_redis, used, stranded);
    h_finish();
}

/* ---- 7. password ---- */

Test(cluster, redis_password_right_and_wrong)
{
    struct fleet f = {0};
    static const char *const good = "itest-redis-pw-G00d", *const bad = "itest-redis-pw-WR0NG";
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "shared", NULL));
    snprintf(f.tiers, sizeof f.tiers, "%s", RPM_TIER);
    snprintf(f.redis.password, sizeof f.redis.password, "%s", good);
    cr_assert_eq(h_redis_start(&f.redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    H_MOCK(&f.mock, "mock", "--tps 0 --ttft-ms 0");
    f.n = 2;
    char extra[128];
    snprintf(extra, sizeof extra, "password = %s\n", good);
    fleet_cluster(&f, extra);
    fleet_config(&f, 0, NULL);
    H_GW(&f.gw[0]);
    snprintf(extra, sizeof extra, "password = %s\non_redis_down = local\n", bad);
    fleet_cluster(&f, extra);
    fleet_config(&f, 1, NULL);
    H_GW(&f.gw[1]);

    wait_redis_up(&f.gw[0], 1, 5000 * h_slow());
    double v = h_wait_metric(f.gw[1].admin_port, "aigw_cluster_sync_errors_total{kind=\"auth\"}", H_GE, 1,
                             5000 * h_slow());
    cr_assert_geq(v, 1, "a wrong password is not counted as an auth error; stderr:\n%s", h_tail("aigw-b"));
    cr_assert_eq(h_metric0(f.gw[1].admin_port, "aigw_cluster_redis_up"), 0);
    cr_assert(h_wait_log_line("aigw-b", "AUTH", "refused", 3000), "no log line says AUTH refused:\n%s",
              h_tail("aigw-b"));
    char body[512];
    h_chat_body(body, sizeof body, 1, false);
    struct answer a = ask(&f.gw[0], KEY_A, body);
    cr_assert_eq(a.status, 200, "aigw-a: %d %s", a.status, a.code);
    /* b enforces locally, from pools it fills itself at its share of the refill */
    int64_t end = h_now_ms() + 3000 * h_slow();
    int refused = 0;
    do {
        a = ask(&f.gw[1], KEY_A, body);
        if (a.status == 200) break;
        cr_assert_eq(a.status, 429, "aigw-b: %d %s", a.status, a.code);
        cr_assert_str_eq(a.code, "requests");
        refused++;
        wait_syncs(&f.gw[0], 2);   /* a moment: b's sync thread refills on its own turns */
    } while (h_now_ms() < end);
    cr_log_info("password: b (wrong password, local) admitted after %d refusals", refused);
    cr_assert_eq(a.status, 200, "aigw-b (Redis refused its password, on_redis_down = local) never admitted a "
                 "request in 3 s; stderr:\n%s", h_tail("aigw-b"));
    cr_assert(access_log_has_limit("redis_down:local", 3000), "b's answer is not logged as redis_down:local");
    for (int h = 0; h < 2; h++) {
        char path[600];
        snprintf(path, sizeof path, "%s/%s.err", h_dir(), f.gw[h].tag);
        char *err = h_read_file(path);
        cr_assert(err);
        bool leaked = strstr(err, good) || strstr(err, bad);
        free(err);
        cr_assert(!leaked, "%s's log shows a Redis password", f.gw[h].tag);
    }
    h_finish();
}

/* ---- 8. a gateway restarted mid-day keeps the day's quota ---- */

Test(cluster, gateway_restarted_keeps_the_days_quota)
{
    struct fleet f = {0};
    char keys[512];
    snprintf(keys, sizeof keys, "%s%s", h_key_line("alice", KEY_A, "quota", NULL),
             h_key_line("bob", KEY_B, "quota", NULL));
    h_write_file(h_keys_path(), "%s", keys);
    const long long quota = 2000;
    snprintf(f.tiers, sizeof f.tiers, "[tier quota]\ndaily_tokens = %lld\n", quota);
    time_t day0 = time(NULL);
    fleet_up(&f, 2, "--tps 0 --ttft-ms 0");

    char body[512];
    h_chat_body(body, sizeof body, 2, false);
    /* spend alice's quota on both gateways */
    int refused_in_a_row = 0, admitted = 0;
    for (int i = 0; i < 800 && refused_in_a_row < 4; i++) {
        struct answer a = ask(&f.gw[i % 2], KEY_A, body);
        if (a.status == 200) {
            admitted++;
            refused_in_a_row = 0;
            continue;
        }
        cr_assert_eq(a.status, 429);
        cr_assert_str_eq(a.code, "quota");
        refused_in_a_row++;
        wait_syncs(&f.gw[i % 2], 1);
    }
    cr_assert_eq(refused_in_a_row, 4, "alice's quota was never spent (%d admitted)", admitted);

    int st = h_stop(f.gw[0].pid, 10000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw-a did not exit 0:\n%s", h_tail("aigw-a"));
    /* what is left of alice's day once a gave its leases back */
    long long left = quota - redis_tokens_since(&f.redis, "alice", day0);
    H_GW(&f.gw[0]);
    wait_redis_up(&f.gw[0], 1, 5000 * h_slow());
    wait_syncs(&f.gw[0], 2);
    /* bob, same tier, untouched: admitted, so the restarted host does lease */
    struct answer b = ask(&f.gw[0], KEY_B, body);
    cr_assert_eq(b.status, 200, "bob on the restarted gateway: %d %s; %s", b.status, b.code,
                 fleet_state(&f, "bob", day0));
    /* alice on the restarted host: at most what was left of her day, never a fresh quota */
    long long after = 0;
    bool refused = false;
    for (int i = 0; i < 60 && !refused; i++) {
        struct answer a = ask(&f.gw[0], KEY_A, body);
        if (a.status == 200) {
            after += a.tokens;
            continue;
        }
        cr_assert_eq(a.status, 429);
        cr_assert_str_eq(a.code, "quota");
        refused = true;
    }
    cr_log_info("restart: alice had %lld left of %lld; the restarted host admitted %lld", left, quota, after);
    cr_assert(refused, "the restarted gateway gave alice a fresh quota");
    cr_assert_leq(after, left, "the restarted gateway admitted %lld tokens of alice's; %lld were left of the day",
                  after, left);
    h_finish();
}

/* ---- 9. reload ---- */

Test(cluster, reload_changes_cluster_settings_and_keys_without_losing_counts)
{
    struct fleet f = {0};
    h_write_file(h_keys_path(), "%s", h_key_line("alice", KEY_A, "quota", NULL));
    snprintf(f.tiers, sizeof f.tiers, "[tier quota]\nrequests_per_minute = 6000\ndaily_tokens = 100000\n");
    time_t day0 = time(NULL);
    cr_assert_eq(h_redis_start(&f.redis, "redis", NULL), 0, "redis-server did not start:\n%s", h_tail("redis"));
    fleet_cluster_sync(&f, "50ms", "on_redis_down = local\n");
    fleet_start(&f, HOSTS, false, "--tps 0 --ttft-ms 0");
    fleet_wait_synced(&f, 2);

    char body[512];
    h_chat_body(body, sizeof body, 2, false);
    long long used = 0;
    for (int i = 0; i < 9; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200);
        used += a.tokens;
    }

    /* how long a takes for 10 syncs at 50ms */
    int64_t t0 = h_now_ms();
    wait_syncs(&f.gw[0], 10);
    int64_t slow_ms = h_now_ms() - t0;

    /* a: a faster sync, deny when Redis is down, and a key of its own */
    char keys_a[600];
    snprintf(keys_a, sizeof keys_a, "%s/keys-a", h_dir());
    char keys[512];
    snprintf(keys, sizeof keys, "%s%s", h_key_line("alice", KEY_A, "quota", NULL),
             h_key_line("carol", KEY_C, "quota", NULL));
    h_write_file(keys_a, "%s", keys);
    fleet_cluster_sync(&f, "20ms", "on_redis_down = deny\n");
    fleet_config(&f, 0, keys_a);
    H_RELOAD(&f.gw[0], H_RELOAD_APPLIED);
    wait_syncs(&f.gw[0], 3);
    t0 = h_now_ms();
    wait_syncs(&f.gw[0], 10);
    int64_t fast_ms = h_now_ms() - t0;
    cr_log_info("reload: 10 syncs took %lld ms at 50ms, %lld ms at 20ms", (long long)slow_ms, (long long)fast_ms);
    cr_assert_lt(fast_ms * 4, slow_ms * 3, "sync_interval 50ms -> 20ms by reload: 10 syncs took %lld ms, then %lld ms",
                 (long long)slow_ms, (long long)fast_ms);

    for (int i = 0; i < 9; i++) {
        struct answer a = ask(&f.gw[i % HOSTS], KEY_A, body);
        cr_assert_eq(a.status, 200, "alice after a's reload, on %s: %d %s", f.gw[i % HOSTS].tag, a.status, a.code);
        used += a.tokens;
    }
    struct answer c = ask(&f.gw[0], KEY_C, body);
    cr_assert_eq(c.status, 200, "carol on a: %d %s", c.status, c.code);
    c = ask(&f.gw[1], KEY_C, body);
    cr_assert_eq(c.status, 401, "carol exists on a only; b answered %d", c.status);
    for (int h = 0; h < HOSTS; h++) wait_syncs(&f.gw[h], 2);
    long long in_redis = redis_tokens_since(&f.redis, "alice", day0);
    cr_log_info("reload: alice used %lld; Redis counts %lld (leases included)", used, in_redis);
    cr_assert_geq(in_redis, used, "counts lost over a reload: Redis %lld, used %lld", in_redis, used);
    cr_assert_leq(in_redis, 100000);
    for (int h = 0; h < HOSTS; h++) {
        double v = h_wait_metric(f.gw[h].admin_port, "aigw_cluster_hosts", H_EQ, HOSTS, 3000 * h_slow());
        cr_assert_eq(v, HOSTS, "%s sees %g hosts", f.gw[h].tag, v);
    }

    /* the reloaded on_redis_down: a denies, b still enforces locally */
    kill_redis(&f.redis, SIGKILL);
    wait_redis_up(&f.gw[0], 0, 3000 * h_slow());
    wait_redis_up(&f.gw[1], 0, 3000 * h_slow());
    struct answer a = ask(&f.gw[0], KEY_A, body);
    cr_assert_eq(a.status, 429, "a (reloaded to deny) answered %d with Redis down", a.status);
    cr_assert_str_eq(a.code, "limits_unavailable");
    a = ask(&f.gw[1], KEY_A, body);
    cr_assert_eq(a.status, 200, "b (local) answered %d %s with Redis down", a.status, a.code);
    h_finish();
}
