#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "policy/balance.h"
#include "policy/keys.h"

static char cfgt_err[1024];

static struct config *cfgt_load_ok(const char *text)
{
    struct config *c = NULL;
    int rc = config_load_string("test.conf", text, &c, cfgt_err, sizeof cfgt_err);
    cr_assert_eq(rc, 0, "expected the config to load, got: %s\n--- config ---\n%s", cfgt_err, text);
    cr_assert_not_null(c);
    return c;
}

static void cfgt_expect_error(const char *text, const char *expected)
{
    struct config *c = (struct config *)0x1;
    int rc = config_load_string("test.conf", text, &c, cfgt_err, sizeof cfgt_err);
    cr_expect_eq(rc, -1, "expected an error for:\n%s", text);
    cr_expect_eq(c, (struct config *)0x1, "out must stay untouched on error");
    cr_expect_str_eq(cfgt_err, expected, "--- config ---\n%s", text);
}

/* ---- the SPEC's example, restricted to what this version supports -------------- */

Test(config, spec_example_parses)
{
    static const char text[] =
        "[server]\n"
        "listen = 0.0.0.0:8080            ; repeatable\n"
        "listen = [::1]:8081\n"
        "shards = 4\n"
        "max_connections = 5000\n"
        "max_body = 2m\n"
        "max_header = 32k\n"
        "drain_timeout = 45s\n"
        "\n"
        "[admin]\n"
        "listen = 127.0.0.1:9191          ; /metrics /healthz /readyz\n"
        "\n"
        "[timeouts]\n"
        "connect = 250ms\n"
        "first_byte = 2m\n"
        "idle = 1h\n"
        "client_header = 7s\n"
        "keepalive = 90s\n"
        "\n"
        "# a hash comment\n"
        "[log]\n"
        "access = /var/log/aigw/access.log\n"
        "level = debug\n"
        "\n"
        "[route chat]\n"
        "path = /v1/chat/completions\n"
        "pool = gpu-a                     ; defined below\n"
        "\n"
        "[pool gpu-a]\n"
        "backend = 10.0.0.11:8000\n"
        "backend = 10.0.0.12:8000 weight=2\n"
        "balance = round_robin\n"
        "max_outstanding = 128\n"
        "upstream_auth = sk-upstream-secret\n"
        "\n"
        "[pool gpu-b]\n"
        "backend = [fe80::1]:9000 weight=1000\n"
        "\n"
        "[route everything]\n"
        "path = /v1/*\n"
        "pool = gpu-b\n"
        "kind = raw\n";
    struct config *c = cfgt_load_ok(text);

    cr_assert_str_eq(c->path, "test.conf");
    cr_assert_eq(c->server.nlisten, 2);
    cr_expect_str_eq(c->server.listen[0].text, "0.0.0.0:8080");
    cr_expect_eq(c->server.listen[0].line, 2);
    cr_expect_eq(c->server.listen[0].sa.ss_family, AF_INET);
    cr_expect_eq(ntohs(((struct sockaddr_in *)&c->server.listen[0].sa)->sin_port), 8080);
    cr_expect_str_eq(c->server.listen[1].text, "[::1]:8081");
    cr_expect_eq(c->server.listen[1].sa.ss_family, AF_INET6);
    cr_expect_eq(c->server.listen[1].salen, sizeof(struct sockaddr_in6));
    cr_expect_eq(c->server.shards, 4);
    cr_expect_eq(c->server.max_connections, 5000);
    cr_expect_eq(c->server.max_body, 2u << 20);
    cr_expect_eq(c->server.max_header, 32u << 10);
    cr_expect_eq(c->server.drain_timeout_ms, 45000);

    cr_expect(c->admin.enabled);
    cr_expect_str_eq(c->admin.listen.text, "127.0.0.1:9191");
    cr_expect_eq(c->admin.listen.line, 11);

    cr_expect_eq(c->timeouts.connect_ms, 250);
    cr_expect_eq(c->timeouts.first_byte_ms, 120000);
    cr_expect_eq(c->timeouts.idle_ms, 3600000);
    cr_expect_eq(c->timeouts.client_header_ms, 7000);
    cr_expect_eq(c->timeouts.keepalive_ms, 90000);

    cr_expect_eq(c->log.access, ACCESS_FILE);
    cr_expect_str_eq(c->log.access_path, "/var/log/aigw/access.log");
    cr_expect_eq(c->log.level, LOG_DEBUG);

    cr_assert_eq(c->npools, 2);
    const struct cfg_pool *a = &c->pools[0], *b = &c->pools[1];
    cr_expect_str_eq(a->name, "gpu-a");
    cr_expect_eq(a->line, 29);
    cr_assert_eq(a->nbackends, 2);
    cr_expect_str_eq(a->backends[0].addr.text, "10.0.0.11:8000");
    cr_expect_eq(a->backends[0].weight, 1);
    cr_expect_eq(a->backends[0].addr.line, 30);
    cr_expect_str_eq(a->backends[1].addr.text, "10.0.0.12:8000");
    cr_expect_eq(a->backends[1].weight, 2);
    cr_expect_eq(a->balance, BALANCE_ROUND_ROBIN);
    cr_expect_eq(a->max_outstanding, 128);
    cr_expect_str_eq(a->upstream_auth, "sk-upstream-secret");
    cr_expect_str_eq(b->name, "gpu-b");
    cr_assert_eq(b->nbackends, 1);
    cr_expect_str_eq(b->backends[0].addr.text, "[fe80::1]:9000");
    cr_expect_eq(b->backends[0].weight, 1000);
    cr_expect_eq(b->balance, BALANCE_LEAST_OUTSTANDING);
    cr_expect_eq(b->max_outstanding, 64);
    cr_expect_str_eq(b->upstream_auth, "");
    cr_expect_eq(c->nbackends, 3);

    cr_assert_eq(c->nroutes, 2);
    const struct cfg_route *chat = &c->routes[0], *all = &c->routes[1];
    cr_expect_str_eq(chat->name, "chat");
    cr_expect_str_eq(chat->path, "/v1/chat/completions");
    cr_expect_eq(chat->path_len, strlen("/v1/chat/completions"));
    cr_expect_not(chat->prefix);
    cr_expect_eq(chat->pool, 0, "a route may name a pool defined later in the file");
    cr_expect_eq(chat->kind, ROUTE_AI);
    cr_expect_eq(chat->line, 25);
    cr_expect_str_eq(all->name, "everything");
    cr_expect_str_eq(all->path, "/v1/");
    cr_expect_eq(all->path_len, 4);
    cr_expect(all->prefix);
    cr_expect_eq(all->pool, 1);
    cr_expect_eq(all->kind, ROUTE_RAW);
    config_free(c);
}

Test(config, defaults)
{
    struct config *c = cfgt_load_ok("");
    cr_assert_eq(c->server.nlisten, 1);
    cr_expect_str_eq(c->server.listen[0].text, "0.0.0.0:8080");
    cr_expect_eq(c->server.shards, 0);
    cr_expect_eq(c->server.max_connections, 100000);
    cr_expect_eq(c->server.max_body, 1u << 20);
    cr_expect_eq(c->server.max_header, 16u << 10);
    cr_expect_eq(c->server.drain_timeout_ms, 30000);
    cr_expect(c->admin.enabled);
    cr_expect_str_eq(c->admin.listen.text, "127.0.0.1:9090");
    cr_expect_eq(c->timeouts.connect_ms, 2000);
    cr_expect_eq(c->timeouts.first_byte_ms, 60000);
    cr_expect_eq(c->timeouts.idle_ms, 30000);
    cr_expect_eq(c->timeouts.client_header_ms, 10000);
    cr_expect_eq(c->timeouts.keepalive_ms, 75000);
    cr_expect_eq(c->log.access, ACCESS_STDOUT);
    cr_expect_eq(c->log.level, LOG_INFO);
    cr_expect_eq(c->npools, 0);
    cr_expect_eq(c->nroutes, 0);
    cr_expect_eq(c->nbackends, 0);
    cr_expect_not(c->keys.configured, "no [keys]: auth is off");
    cr_expect_not(c->keys.required);
    cr_expect_str_eq(c->keys.file, "");
    cr_expect_null(c->keys.ring);
    cr_expect_null(c->keys.key_tier);
    cr_expect_eq(c->ntiers, 0);
    config_free(c);

    c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\n[route r]\npath = /x\npool = p\n");
    cr_expect_eq(c->pools[0].balance, BALANCE_LEAST_OUTSTANDING);
    cr_expect_eq(c->pools[0].max_outstanding, 64);
    cr_expect_eq(c->pools[0].backends[0].weight, 1);
    cr_expect_eq(c->routes[0].kind, ROUTE_AI);
    cr_expect_eq(c->routes[0].nsplit, 0);
    config_free(c);
}

Test(config, syntax_variants_accepted)
{
    /* indented keys (no continuation lines), CRLF, a BOM, ':' as separator,
     * comments of both kinds, blank lines, spaces inside the brackets */
    struct config *c = cfgt_load_ok("\xEF\xBB\xBF[server]\r\n"
                                    "    listen = 127.0.0.1:8000\r\n"
                                    "    shards: auto\r\n"
                                    "\t; comment\r\n"
                                    "  # comment\r\n"
                                    "\r\n"
                                    "[ pool   p1 ]   \r\n"
                                    "  backend = 127.0.0.1:8001   weight=3   ; trailing comment\r\n");
    cr_expect_eq(c->server.nlisten, 1);
    cr_expect_str_eq(c->server.listen[0].text, "127.0.0.1:8000");
    cr_expect_eq(c->server.shards, 0);
    cr_assert_eq(c->npools, 1);
    cr_expect_str_eq(c->pools[0].name, "p1");
    cr_expect_eq(c->pools[0].backends[0].weight, 3);
    config_free(c);
}

Test(config, admin_off_and_log_off)
{
    struct config *c = cfgt_load_ok("[admin]\nlisten = off\n[log]\naccess = off\nlevel = warn\n");
    cr_expect_not(c->admin.enabled);
    cr_expect_eq(c->log.access, ACCESS_OFF);
    cr_expect_eq(c->log.level, LOG_WARN);
    config_free(c);

    c = cfgt_load_ok("[admin]\nlisten =\n[log]\naccess = stdout\nlevel = error\n");
    cr_expect_not(c->admin.enabled);
    cr_expect_eq(c->log.access, ACCESS_STDOUT);
    cr_expect_eq(c->log.level, LOG_ERROR);
    config_free(c);

    /* with admin off, its default address is free for a data-plane listener */
    c = cfgt_load_ok("[admin]\nlisten = off\n[server]\nlisten = 127.0.0.1:9090\n");
    cr_expect_str_eq(c->server.listen[0].text, "127.0.0.1:9090");
    config_free(c);
}

Test(config, limits_accepted)
{
    struct config *c = cfgt_load_ok("[server]\nshards = 256\nmax_header = 1k\nmax_body = 0\n"
                                    "drain_timeout = 0\nmax_connections = 1\n"
                                    "[pool p]\nbackend = 127.0.0.1:65535 weight=1000\n"
                                    "max_outstanding = 1000000\n");
    cr_expect_eq(c->server.shards, 256);
    cr_expect_eq(c->server.max_header, 1024);
    cr_expect_eq(c->server.max_body, 0);
    cr_expect_eq(c->server.drain_timeout_ms, 0);
    cr_expect_eq(c->server.max_connections, 1);
    cr_expect_eq(c->pools[0].max_outstanding, 1000000);
    config_free(c);

    c = cfgt_load_ok("[server]\nmax_header = 64k\nshards = 1\n");
    cr_expect_eq(c->server.max_header, 65536);
    cr_expect_eq(c->server.shards, 1);
    config_free(c);

    char text[64 + 17 * 32];
    int n = snprintf(text, sizeof text, "[server]\n");
    for (int i = 0; i < CFG_MAX_LISTEN; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "listen = 127.0.0.1:%d\n", 8000 + i);
    c = cfgt_load_ok(text);
    cr_expect_eq(c->server.nlisten, CFG_MAX_LISTEN);
    config_free(c);
}

/* ---- errors ---------------------------------------------------------------------- */

Test(config_errors, unknown_sections)
{
    cfgt_expect_error("[server]\nshards = 2\n\n[cluster east]\nredis = 127.0.0.1:6379\n",
                      "test.conf:4: unknown section [cluster east] ([cluster] takes no name)");
    cfgt_expect_error("[keys x]\n", "test.conf:1: unknown section [keys x] ([keys] takes no name)");
    cfgt_expect_error("[tier]\n", "test.conf:1: unknown section [tier] ([tier] needs a name: [tier NAME])");
    cfgt_expect_error("; x\n[foo]\n", "test.conf:2: unknown section [foo]");
    cfgt_expect_error("[pool]\nbackend = 127.0.0.1:1\n", "test.conf:1: unknown section [pool] ([pool] needs a name: [pool NAME])");
    cfgt_expect_error("[route]\n", "test.conf:1: unknown section [route] ([route] needs a name: [route NAME])");
    cfgt_expect_error("[server extra]\n", "test.conf:1: unknown section [server extra] ([server] takes no name)");
    cfgt_expect_error("[Server]\n", "test.conf:1: unknown section [Server] (did you mean [server]?)");
    cfgt_expect_error("[]\n", "test.conf:1: unknown section []");
    cfgt_expect_error("[pool a b]\n",
                      "test.conf:1: invalid pool name 'a b' (expected 1-63 letters, digits, '-', '_' or '.')");
    cfgt_expect_error("[route a/b]\n",
                      "test.conf:1: invalid route name 'a/b' (expected 1-63 letters, digits, '-', '_' or '.')");
    cfgt_expect_error("[server]\n[admin]\n[server]\n", "test.conf:3: duplicate section [server]");
}

Test(config_errors, unknown_keys)
{
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:1\nworkers = 4\n",
                      "test.conf:3: unknown key 'workers' in [server]");
    cfgt_expect_error("[pool gpu-a]\nbackend = 127.0.0.1:1\nhealthcheck = /health\n",
                      "test.conf:3: unknown key 'healthcheck' in [pool gpu-a]");
    cfgt_expect_error("[route r]\nweights = a:90 b:10\n", "test.conf:2: unknown key 'weights' in [route r]");
    cfgt_expect_error("[tier t]\nrpm = 60\n", "test.conf:2: unknown key 'rpm' in [tier t]");
    cfgt_expect_error("[keys]\nauth = off\ntoken = x\n", "test.conf:3: unknown key 'token' in [keys]");
    cfgt_expect_error("[timeouts]\nConnect = 1s\n", "test.conf:2: unknown key 'Connect' in [timeouts] (did you mean 'connect'?)");
    cfgt_expect_error("[server]\ndrian_timeout = 5s\n",
                      "test.conf:2: unknown key 'drian_timeout' in [server] (did you mean 'drain_timeout'?)");
    cfgt_expect_error("[pools gpu]\n", "test.conf:1: unknown section [pools gpu] (did you mean [pool gpu]?)");
    cfgt_expect_error("[timeouts]\nfirst_byte = 5000\n",
                      "test.conf:2: invalid value for first_byte: '5000' has no unit: add one (ms, s, m, h), "
                      "such as 5000ms or 5000s");
    cfgt_expect_error("[timeouts]\nfirst_byte = 5s # the 8B pool\n",
                      "test.conf:2: '#' after a value is not a comment here ('#' starts a comment only at "
                      "the start of a line): use ' ; ' for a comment after a value");
    cfgt_expect_error("\nlisten = 127.0.0.1:1\n", "test.conf:2: key 'listen' is outside any section");
    cfgt_expect_error("[log]\nlevel = info\nlevel = debug\n",
                      "test.conf:3: duplicate key 'level' in [log]");
}

Test(config_errors, bad_server_values)
{
    cfgt_expect_error("[server]\nshards = 0\n",
                      "test.conf:2: invalid value for shards: '0' (expected auto or a number 1-256)");
    cfgt_expect_error("[server]\nshards = 257\n",
                      "test.conf:2: invalid value for shards: '257' (expected auto or a number 1-256)");
    cfgt_expect_error("[server]\nshards =\n",
                      "test.conf:2: invalid value for shards: '' (expected auto or a number 1-256)");
    cfgt_expect_error("[server]\nmax_connections = 0\n",
                      "test.conf:2: invalid value for max_connections: '0' (expected a number 1-10000000)");
    cfgt_expect_error("[server]\nmax_body = 1x\n",
                      "test.conf:2: invalid value for max_body: '1x' (expected a size such as 512k, 1m or 2g)");
    cfgt_expect_error("[server]\nmax_header = 512\n",
                      "test.conf:2: invalid value for max_header: '512' (expected a size from 1k to 64k)");
    cfgt_expect_error("[server]\nmax_header = 65537\n",
                      "test.conf:2: invalid value for max_header: '65537' (expected a size from 1k to 64k)");
    cfgt_expect_error("[server]\ndrain_timeout = -1s\n",
                      "test.conf:2: invalid value for drain_timeout: '-1s' (expected a duration such as 500ms, 30s, 5m or 1h)");
    cfgt_expect_error("[server]\nlisten =\n",
                      "test.conf:2: invalid value for listen: '' (expected HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535)");
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:0\n",
                      "test.conf:2: invalid value for listen: '127.0.0.1:0' (expected HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535)");
    cfgt_expect_error("[admin]\nlisten = nowhere\n",
                      "test.conf:2: invalid value for listen: 'nowhere' (expected HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535)");
}

Test(config_errors, bad_timeouts_and_log)
{
    static const char *const keys[] = { "connect", "first_byte", "idle", "client_header", "keepalive" };
    static const char *const values[] = { "0", "0ms", "1.5s", "10 s", "1sec", "-5", "", "99999999999999999999999h" };
    char text[256], want[512];
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            snprintf(text, sizeof text, "[timeouts]\n\n%s = %s\n", keys[k], values[v]);
            snprintf(want, sizeof want,
                     "test.conf:3: invalid value for %s: '%s' (expected a duration above zero such as 500ms, 30s, 5m or 1h)",
                     keys[k], values[v]);
            cfgt_expect_error(text, want);
        }
    }
    cfgt_expect_error("[log]\naccess = logs/access.log\n",
                      "test.conf:2: invalid value for access: 'logs/access.log' (expected stdout, off or an absolute path)");
    cfgt_expect_error("[log]\naccess =\n",
                      "test.conf:2: invalid value for access: '' (expected stdout, off or an absolute path)");
    cfgt_expect_error("[log]\nlevel = verbose\n",
                      "test.conf:2: invalid value for level: 'verbose' (expected error, warn, info or debug)");
}

Test(config_errors, bad_pool_values)
{
    cfgt_expect_error("[pool p]\nbalance = random\n",
                      "test.conf:2: invalid value for balance: 'random' (expected capacity, prefix, "
                      "least_outstanding or round_robin)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nmetrics = metrics\n",
                      "test.conf:3: invalid value for metrics: 'metrics' (expected a path starting with '/', "
                      "or empty for none)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nmetrics = /a b\n",
                      "test.conf:3: invalid value for metrics: '/a b' (expected a path without spaces or "
                      "control characters)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nmetrics_interval = 5ms\n",
                      "test.conf:3: invalid value for metrics_interval: '5ms' (expected a duration from 10ms "
                      "to 60s)");
    cfgt_expect_error("[pool p]\nmax_outstanding = 0\n",
                      "test.conf:2: invalid value for max_outstanding: '0' (expected a number 1-1000000)");
    cfgt_expect_error("[pool p]\nmax_outstanding = 1000001\n",
                      "test.conf:2: invalid value for max_outstanding: '1000001' (expected a number 1-1000000)");
    cfgt_expect_error("[pool p]\nbackend =\n",
                      "test.conf:2: invalid value for backend: '' (expected HOST:PORT [weight=N] with weight 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1 weight=0\n",
                      "test.conf:2: invalid value for backend: '127.0.0.1:1 weight=0' (expected HOST:PORT [weight=N] with weight 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1 weight=1001\n",
                      "test.conf:2: invalid value for backend: '127.0.0.1:1 weight=1001' (expected HOST:PORT [weight=N] with weight 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1 weight=2 weight=3\n",
                      "test.conf:2: invalid value for backend: '127.0.0.1:1 weight=2 weight=3' (expected HOST:PORT [weight=N] with weight 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1 backup\n",
                      "test.conf:2: invalid value for backend: '127.0.0.1:1 backup' (expected HOST:PORT [weight=N] with weight 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1\n",
                      "test.conf:2: invalid value for backend: '127.0.0.1' (expected HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nbackend = 127.0.0.1:1 weight=2\n",
                      "test.conf:3: duplicate backend 127.0.0.1:1 in pool 'p' (already on line 2)");
    {
        /* a name and the address it resolves to are one backend */
        struct cfg_addr local;
        cr_assert_eq(config_parse_addr("localhost:1", &local), 0);
        char text[400], want[800];
        snprintf(text, sizeof text, "[pool p]\nbackend = %s\nbackend = localhost:1\n", local.text);
        snprintf(want, sizeof want, "test.conf:3: duplicate backend localhost:1 in pool 'p': it is %s, as %s on line 2 is",
                 local.text, local.text);
        cfgt_expect_error(text, want);
    }
    cfgt_expect_error("[pool p]\nupstream_auth = two words\n",
                      "test.conf:2: invalid value for upstream_auth: must not contain spaces or control characters");
}

Test(config_errors, pool_without_backend)
{
    cfgt_expect_error("[server]\n\n[pool empty]\nbalance = round_robin\n",
                      "test.conf:3: pool 'empty' has no backend");
    cfgt_expect_error("[pool empty]\n", "test.conf:1: pool 'empty' has no backend");
    cfgt_expect_error("[pool empty]\n; nothing\n[log]\nlevel = info\n",
                      "test.conf:1: pool 'empty' has no backend");
}

Test(config_errors, duplicate_names_and_paths)
{
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n[pool a]\nbackend = 127.0.0.1:2\n",
                      "test.conf:3: duplicate pool 'a' (already on line 1)");
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n"
                      "[route r]\npath = /a\npool = a\n"
                      "[route r]\npath = /b\npool = a\n",
                      "test.conf:6: duplicate route 'r' (already on line 3)");
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n"
                      "[route one]\npath = /v1/*\npool = a\n"
                      "[route two]\npool = a\npath = /v1/*\n",
                      "test.conf:8: route 'two': path /v1/* is already taken, for every model, by route 'one' (line 3)");
    /* an exact path and a prefix with the same text are different routes */
    struct config *c = cfgt_load_ok("[pool a]\nbackend = 127.0.0.1:1\n"
                                    "[route one]\npath = /v1/\npool = a\n"
                                    "[route two]\npath = /v1/*\npool = a\n");
    config_free(c);
}

Test(config_errors, routes)
{
    cfgt_expect_error("[route chat]\npath = /v1/chat/completions\n\npool = gpu-z\n"
                      "[pool gpu-a]\nbackend = 127.0.0.1:1\n",
                      "test.conf:4: route 'chat': unknown pool 'gpu-z'");
    cfgt_expect_error("[route chat]\npool = a\n[pool a]\nbackend = 127.0.0.1:1\n",
                      "test.conf:1: route 'chat' has no path");
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n[route chat]\npath = /x\n",
                      "test.conf:3: route 'chat' has no pool or split");
    cfgt_expect_error("[route r]\npath = v1/chat\n",
                      "test.conf:2: invalid value for path: 'v1/chat' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npath = /v1/*/x\n",
                      "test.conf:2: invalid value for path: '/v1/*/x' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npath = /v1/**\n",
                      "test.conf:2: invalid value for path: '/v1/**' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npath = /a b\n",
                      "test.conf:2: invalid value for path: '/a b' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npath = /models?x=1\n",
                      "test.conf:2: invalid value for path: '/models?x=1' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npath =\n",
                      "test.conf:2: invalid value for path: '' (expected an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*)");
    cfgt_expect_error("[route r]\npool =\n",
                      "test.conf:2: invalid value for pool: '' (expected the name of a [pool NAME] section)");
    cfgt_expect_error("[route r]\nkind = grpc\n",
                      "test.conf:2: invalid value for kind: 'grpc' (expected ai or raw)");
}

Test(config_errors, duplicate_listeners)
{
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:8080\nlisten = *:80\nlisten = 127.0.0.1:8080\n",
                      "test.conf:4: duplicate listener 127.0.0.1:8080 (already on line 2)");
    cfgt_expect_error("[server]\nlisten = *:8080\nlisten = 0.0.0.0:8080\n",
                      "test.conf:3: duplicate listener 0.0.0.0:8080 (already on line 2)");
    cfgt_expect_error("[server]\nlisten = [::1]:80\nlisten = [0:0::1]:80\n",
                      "test.conf:3: duplicate listener [::1]:80 (already on line 2)");
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:7000\n[admin]\nlisten = 127.0.0.1:7000\n",
                      "test.conf:4: duplicate listener 127.0.0.1:7000 (already on line 2)");
    cfgt_expect_error("[admin]\nlisten = 127.0.0.1:7000\n[server]\nlisten = 127.0.0.1:7000\n",
                      "test.conf:4: duplicate listener 127.0.0.1:7000 (already on line 2)");
    /* against the defaults: server 0.0.0.0:8080, admin 127.0.0.1:9090 */
    cfgt_expect_error("[admin]\n\nlisten = 0.0.0.0:8080\n",
                      "test.conf:3: duplicate listener 0.0.0.0:8080 ([server] listen and [admin] listen)");
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:9090\n",
                      "test.conf:2: duplicate listener 127.0.0.1:9090 ([server] listen and [admin] listen)");

    char text[64 + 17 * 32];
    int n = snprintf(text, sizeof text, "[server]\n");
    for (int i = 0; i <= CFG_MAX_LISTEN; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "listen = 127.0.0.1:%d\n", 8000 + i);
    cfgt_expect_error(text, "test.conf:18: too many listen addresses in [server] (at most 16)");
}

Test(config_errors, syntax)
{
    cfgt_expect_error("[server]\nshards = 2\nshards auto\n", "test.conf:3: syntax error");
    /* inih also splits at ':', so a forgotten '=' before an address is caught here */
    cfgt_expect_error("[server]\nlisten 127.0.0.1:1\n", "test.conf:2: syntax error");
    cfgt_expect_error("[server\nshards = 2\n", "test.conf:1: syntax error");
    cfgt_expect_error("[server ; comment]\n", "test.conf:1: syntax error");
    /* the first error in the file wins, whichever kind it is */
    cfgt_expect_error("[server]\nbogus\nshards = 0\n", "test.conf:2: syntax error");
    cfgt_expect_error("[server]\nshards = 0\nbogus\n",
                      "test.conf:2: invalid value for shards: '0' (expected auto or a number 1-256)");
    cfgt_expect_error("[server]\nshards = 0\n[tls]\n",
                      "test.conf:2: invalid value for shards: '0' (expected auto or a number 1-256)");
}

Test(config_errors, long_lines)
{
    /* 1024 characters is the limit, newline excluded */
    char *text = malloc(4096);
    cr_assert_not_null(text);
    int n = sprintf(text, "[pool p]\nbackend = 127.0.0.1:1\n;");
    memset(text + n, 'x', 1023);
    n += 1023;
    strcpy(text + n, "\nmax_outstanding = 5\n");
    struct config *c = cfgt_load_ok(text);
    cr_expect_eq(c->pools[0].max_outstanding, 5);
    config_free(c);

    n = sprintf(text, "[pool p]\nbackend = 127.0.0.1:1\n;");
    memset(text + n, 'x', 1024);
    n += 1024;
    strcpy(text + n, "\nmax_outstanding = 5\n");
    cfgt_expect_error(text, "test.conf:3: line too long (at most 1024 characters)");

    /* also without a newline at the end of the file */
    n = sprintf(text, "[log]\nlevel = ");
    memset(text + n, 'y', 1100);
    text[n + 1100] = '\0';
    cfgt_expect_error(text, "test.conf:2: line too long (at most 1024 characters)");

    /* a value longer than inih's default 200-byte buffer is read whole */
    n = sprintf(text, "[pool p]\nbackend = 127.0.0.1:1\nupstream_auth = ");
    memset(text + n, 'k', 511);
    strcpy(text + n + 511, "\n");
    c = cfgt_load_ok(text);
    cr_expect_eq(strlen(c->pools[0].upstream_auth), 511);
    config_free(c);
    text[n + 511] = 'k';
    strcpy(text + n + 512, "\n");
    cfgt_expect_error(text, "test.conf:3: invalid value for upstream_auth: too long (at most 511 characters)");
    free(text);
}

Test(config_errors, control_bytes_not_echoed)
{
    cfgt_expect_error("[log]\nlevel = \x1b[31mred\n",
                      "test.conf:2: invalid value for level: '\\x1b[31mred' (expected error, warn, info or debug)");
    cfgt_expect_error("[log]\nlevel = \xff\xfe\x7f\n",
                      "test.conf:2: invalid value for level: '\\xff\\xfe\\x7f' (expected error, warn, info or debug)");
}

Test(config_errors, small_error_buffer_and_null)
{
    struct config *c = NULL;
    char small[12];
    cr_expect_eq(config_load_string("test.conf", "[tls]\n", &c, small, sizeof small), -1);
    cr_expect_str_eq(small, "test.conf:1");
    cr_expect_eq(config_load_string("test.conf", "[tls]\n", &c, NULL, 0), -1);
    cr_expect_null(c);
}

/* ---- real files ---------------------------------------------------------------- */

static void cfgt_write_file(char *path, size_t pathlen, const char *data, size_t len)
{
    snprintf(path, pathlen, "/tmp/aigw-test-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

Test(config_file, load_from_file)
{
    char path[64], want[256];
    static const char good[] = "[server]\nlisten = 127.0.0.1:18080\n[pool p]\nbackend = localhost:18001\n";
    cfgt_write_file(path, sizeof path, good, sizeof good - 1);
    struct config *c = NULL;
    cr_assert_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), 0, "%s", cfgt_err);
    cr_expect_str_eq(c->path, path);
    cr_expect_str_eq(c->server.listen[0].text, "127.0.0.1:18080");
    /* a backend keeps its configured name for logs, metrics and /status */
    cr_expect_str_eq(c->pools[0].backends[0].addr.text, "localhost:18001");
    int fam = c->pools[0].backends[0].addr.sa.ss_family;
    cr_expect(fam == AF_INET || fam == AF_INET6, "localhost resolved");
    config_free(c);
    unlink(path);

    static const char bad[] = "[server]\n\n[timeouts]\nidle = forever\n";
    cfgt_write_file(path, sizeof path, bad, sizeof bad - 1);
    c = NULL;
    cr_expect_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), -1);
    snprintf(want, sizeof want,
             "%s:4: invalid value for idle: 'forever' (expected a duration above zero such as 500ms, 30s, 5m or 1h)", path);
    cr_expect_str_eq(cfgt_err, want);
    cr_expect_null(c);
    unlink(path);

    static const char nul[] = "[server]\nshards = 2\0junk\n";
    cfgt_write_file(path, sizeof path, nul, sizeof nul - 1);
    cr_expect_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), -1);
    snprintf(want, sizeof want, "%s:2: NUL byte in line", path);
    cr_expect_str_eq(cfgt_err, want);
    unlink(path);
}

Test(config_file, missing_and_unreadable)
{
    struct config *c = NULL;
    cr_expect_eq(config_load("/nonexistent/aigw.conf", &c, cfgt_err, sizeof cfgt_err), -1);
    cr_expect_str_eq(cfgt_err, "/nonexistent/aigw.conf: cannot open: No such file or directory");
    cr_expect_null(c);

    cr_expect_eq(config_load("/tmp", &c, cfgt_err, sizeof cfgt_err), -1);
    cr_expect_str_eq(cfgt_err, "/tmp: read error: Is a directory");
    cr_expect_null(c);
}

Test(config_file, shipped_example_loads)
{
    /* tests are built from the repository root, so __FILE__ leads back to it */
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", __FILE__);
    char *cut = strstr(path, "tests/unit/test_config.c");
    cr_assert_not_null(cut);
    strcpy(cut, "examples/aigw.conf");
    struct config *c = NULL;
    cr_assert_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), 0, "%s", cfgt_err);
    cr_expect_str_eq(c->server.listen[0].text, "127.0.0.1:8080");
    cr_expect_str_eq(c->admin.listen.text, "127.0.0.1:9090");
    cr_assert_eq(c->npools, 1);
    cr_expect_eq(c->pools[0].nbackends, 2);
    cr_expect_eq(c->pools[0].balance, BALANCE_LEAST_OUTSTANDING);
    cr_expect_gt(c->nroutes, 0);
    cr_expect_eq(c->log.access, ACCESS_STDOUT);
    config_free(c);
}

/* ---- value parsers --------------------------------------------------------------- */

Test(config_parse, durations)
{
    static const struct { const char *in; uint64_t ms; } good[] = {
        { "250ms", 250 }, { "0ms", 0 }, { "2s", 2000 }, { "1m", 60000 }, { "1h", 3600000 },
        { "0", 0 }, { "007s", 7000 }, { "8784h", 8784ULL * 3600000 },
        { "31622400000ms", 31622400000ULL },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 12345;
        cr_expect_eq(config_parse_duration_ms(good[i].in, &v), 0, "%s", good[i].in);
        cr_expect_eq(v, good[i].ms, "%s -> %llu", good[i].in, (unsigned long long)v);
    }
    static const char *const bad[] = {
        "", "10", "5000", "ms", "s", "-1", "+1", " 1s", "1s ", "1.5s", "1sec", "1S", "1H", "1d", "1 s", "0x10",
        "8785h", "31622400001ms", "18446744073709551615", "18446744073709551616",
        "99999999999999999999999999ms",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 12345;
        cr_expect_eq(config_parse_duration_ms(bad[i], &v), -1, "'%s' should be rejected", bad[i]);
        cr_expect_eq(v, 12345, "'%s' must not write", bad[i]);
    }
    cr_expect_eq(config_parse_duration_ms(NULL, &(uint64_t){ 0 }), -1);
}

Test(config_parse, sizes)
{
    static const struct { const char *in; uint64_t bytes; } good[] = {
        { "512", 512 }, { "0", 0 }, { "16k", 16384 }, { "16K", 16384 }, { "1m", 1048576 },
        { "2g", 2147483648ULL }, { "2G", 2147483648ULL },
        { "18446744073709551615", UINT64_MAX }, { "17179869183g", 17179869183ULL << 30 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 12345;
        cr_expect_eq(config_parse_size(good[i].in, &v), 0, "%s", good[i].in);
        cr_expect_eq(v, good[i].bytes, "%s", good[i].in);
    }
    static const char *const bad[] = {
        "", "k", "-1", "+1", "1kb", "1 k", " 1k", "1k ", "1.5m", "1t", "0x10",
        "18446744073709551616", "17179869184g", "18014398509481984k",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 12345;
        cr_expect_eq(config_parse_size(bad[i], &v), -1, "'%s' should be rejected", bad[i]);
        cr_expect_eq(v, 12345);
    }
}

static unsigned cfgt_port(const struct cfg_addr *a)
{
    return a->sa.ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port)
                                       : ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
}

Test(config_parse, addresses)
{
    struct cfg_addr a;
    cr_assert_eq(config_parse_addr("127.0.0.1:8000", &a), 0);
    cr_expect_str_eq(a.text, "127.0.0.1:8000");
    cr_expect_eq(a.sa.ss_family, AF_INET);
    cr_expect_eq(a.salen, sizeof(struct sockaddr_in));
    cr_expect_eq(cfgt_port(&a), 8000);
    cr_expect_eq(((struct sockaddr_in *)&a.sa)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

    cr_assert_eq(config_parse_addr("[::1]:8000", &a), 0);
    cr_expect_str_eq(a.text, "[::1]:8000");
    cr_expect_eq(a.sa.ss_family, AF_INET6);
    cr_expect_eq(cfgt_port(&a), 8000);

    cr_assert_eq(config_parse_addr("[0:0:0:0:0:0:0:1]:1", &a), 0);
    cr_expect_str_eq(a.text, "[::1]:1", "IPv6 text is normalised");

    cr_assert_eq(config_parse_addr("*:80", &a), 0);
    cr_expect_str_eq(a.text, "0.0.0.0:80");
    cr_expect_eq(a.sa.ss_family, AF_INET);

    cr_assert_eq(config_parse_addr("[::]:65535", &a), 0);
    cr_expect_str_eq(a.text, "[::]:65535");

    cr_assert_eq(config_parse_addr("localhost:8001", &a), 0);
    cr_expect(strcmp(a.text, "127.0.0.1:8001") == 0 || strcmp(a.text, "[::1]:8001") == 0, "%s", a.text);
    cr_expect_eq(cfgt_port(&a), 8001);

    static const char *const bad[] = {
        "", ":80", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+80",
        "127.0.0.1:80x", "127.0.0.1: 80", "::1:80", "[::1]", "[::1]80", "[::1]x:80", "[]:80",
        "[127.0.0.1]:80", "[*]:80", "1.2.3:80", "127.1:80", "0x7f.1:80", "2130706433:80",
        "bad!host:80", "-lead:80", "a b:80", "256.1.1.1:80",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&a, 0x5a, sizeof a);
        cr_expect_eq(config_parse_addr(bad[i], &a), -1, "'%s' should be rejected", bad[i]);
        cr_expect_eq(a.text[0], 0x5a, "'%s' must not write", bad[i]);
    }
}

Test(config_routes, routes_share_a_path_for_different_models)
{
    struct config *c = NULL;
    char err[512];
    const char *text = "[pool a]\nbackend = 127.0.0.1:1\n[pool b]\nbackend = 127.0.0.1:2\n"
                       "[route llama]\npath = /v1/chat/completions\npool = a\nmodels = llama-3.1-*, llama3*\n"
                       "[route qwen]\npath = /v1/chat/completions\npool = b\nmodels = qwen*\n"
                       "[route rest]\npath = /v1/*\npool = a\n";
    cr_assert_eq(config_load_string("test.conf", text, &c, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c->routes[0].models_text, "llama-3.1-*, llama3*");
    cr_assert_not_null(c->routes[0].models);
    cr_assert_null(c->routes[2].models, "no models key: any model");
    config_free(c);
}

Test(config_routes, bad_model_globs_name_their_line)
{
    struct config *c = NULL;
    char err[512];
    cr_assert_eq(config_load_string("test.conf", "[route r]\npath = /x\nmodels = a,,b\n", &c, err, sizeof err), -1);
    cr_assert(strncmp(err, "test.conf:3: invalid value for models:", 38) == 0, "%s", err);
}

/* ---- [tier NAME] ------------------------------------------------------------------ */

Test(config_tiers, every_key_and_defaults)
{
    struct config *c = cfgt_load_ok("[tier free]\n"
                                    "requests_per_minute = 60\n"
                                    "tokens_per_minute = 40000\n"
                                    "burst = 10s\n"
                                    "max_tokens = 4096\n"
                                    "daily_tokens = 1000000\n"
                                    "priority = low\n"
                                    "\n"
                                    "[tier pro]\n"
                                    "priority = high\n"
                                    "[tier plain.default_2]\n"
                                    "[tier normal]\n"
                                    "priority = normal\n");
    cr_assert_eq(c->ntiers, 4);
    const struct cfg_tier *t = &c->tiers[0];
    cr_expect_str_eq(t->name, "free");
    cr_expect_eq(t->line, 1);
    cr_expect_eq(t->requests_per_minute, 60);
    cr_expect_eq(t->tokens_per_minute, 40000);
    cr_expect_eq(t->burst_ms, 10000);
    cr_expect_eq(t->max_tokens, 4096);
    cr_expect_eq(t->daily_tokens, 1000000);
    cr_expect_eq(t->priority, PRIORITY_LOW);

    t = &c->tiers[1];
    cr_expect_str_eq(t->name, "pro");
    cr_expect_eq(t->line, 9);
    cr_expect_eq(t->priority, PRIORITY_HIGH);

    t = &c->tiers[2];
    cr_expect_str_eq(t->name, "plain.default_2");
    cr_expect_eq(t->requests_per_minute, 0, "default: unlimited");
    cr_expect_eq(t->tokens_per_minute, 0, "default: unlimited");
    cr_expect_eq(t->burst_ms, 60000, "default burst 60s");
    cr_expect_eq(t->max_tokens, 0, "default: no cap");
    cr_expect_eq(t->daily_tokens, 0, "default: no quota");
    cr_expect_eq(t->priority, PRIORITY_NORMAL);
    cr_expect_eq(c->tiers[3].priority, PRIORITY_NORMAL);
    cr_expect_not(c->keys.configured, "tiers without [keys]");
    config_free(c);
}

Test(config_tiers, limits_accepted)
{
    struct config *c = cfgt_load_ok("[tier max]\n"
                                    "requests_per_minute = 10000000000\n"
                                    "tokens_per_minute = 10000000000\n"
                                    "burst = 24h\n"
                                    "max_tokens = 10000000\n"
                                    "daily_tokens = 1099511627776\n"
                                    "[tier min]\n"
                                    "requests_per_minute = 0\n"
                                    "tokens_per_minute = 0\n"
                                    "burst = 1ms\n"
                                    "max_tokens = 0\n"
                                    "daily_tokens = 0\n");
    cr_assert_eq(c->ntiers, 2);
    cr_expect_eq(c->tiers[0].requests_per_minute, 10000000000ULL);
    cr_expect_eq(c->tiers[0].tokens_per_minute, 10000000000ULL);
    cr_expect_eq(c->tiers[0].burst_ms, 86400000ULL);
    cr_expect_eq(c->tiers[0].max_tokens, 10000000ULL);
    cr_expect_eq(c->tiers[0].daily_tokens, 1ULL << 40);
    cr_expect_eq(c->tiers[1].requests_per_minute, 0);
    cr_expect_eq(c->tiers[1].burst_ms, 1);
    config_free(c);

    c = cfgt_load_ok("[tier b]\nburst = 86400000ms\n");
    cr_expect_eq(c->tiers[0].burst_ms, 86400000ULL);
    config_free(c);
}

Test(config_tiers, bad_values)
{
    static const struct {
        const char *key, *expected;
        const char *bad[8];
    } cases[] = {
        { "requests_per_minute", "a number 0-10000000000, 0 for unlimited",
          { "10000000001", "-1", "1.5", "", "1k", "unlimited", "99999999999999999999999", NULL } },
        { "tokens_per_minute", "a number 0-10000000000, 0 for unlimited",
          { "10000000001", "-1", "", "40 000", NULL } },
        { "burst", "a duration above zero up to 24h such as 10s, 60s or 5m",
          { "0", "0ms", "25h", "86400001ms", "1441m", "", "1d", NULL } },
        { "max_tokens", "a number 0-10000000, 0 for no cap", { "10000001", "-1", "", "4k", NULL } },
        { "daily_tokens", "a number 0-1099511627776, 0 for no quota",
          { "1099511627777", "-5", "", "1m", NULL } },
        { "priority", "high, normal or low", { "urgent", "", "High", "0", NULL } },
    };
    char text[256], want[512];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        for (size_t v = 0; cases[k].bad[v]; v++) {
            snprintf(text, sizeof text, "[tier free]\n; limits\n\n%s = %s\n", cases[k].key,
                     cases[k].bad[v]);
            snprintf(want, sizeof want, "test.conf:4: invalid value for %s: '%s' (expected %s)",
                     cases[k].key, cases[k].bad[v], cases[k].expected);
            cfgt_expect_error(text, want);
        }
    }
}

Test(config_tiers, section_errors)
{
    cfgt_expect_error("[tier a]\nburst = 1s\n[tier b]\n\n[tier a]\n",
                      "test.conf:5: duplicate tier 'a' (already on line 1)");
    cfgt_expect_error("[tier a b]\n",
                      "test.conf:1: invalid tier name 'a b' (expected 1-63 letters, digits, '-', '_' or '.')");
    cfgt_expect_error("[tier a/b]\n",
                      "test.conf:1: invalid tier name 'a/b' (expected 1-63 letters, digits, '-', '_' or '.')");
    cfgt_expect_error("[tier a]\nburst = 1s\nburst = 2s\n",
                      "test.conf:3: duplicate key 'burst' in [tier a]");
    cfgt_expect_error("[tier a]\nqueue_timeout = 5s\n",
                      "test.conf:2: unknown key 'queue_timeout' in [tier a]");
    /* a tier and a pool may share a name: they live in different namespaces */
    struct config *c = cfgt_load_ok("[tier a]\n[pool a]\nbackend = 127.0.0.1:1\n");
    cr_expect_eq(c->ntiers, 1);
    cr_expect_eq(c->npools, 1);
    config_free(c);
}

/* ---- [keys] ----------------------------------------------------------------------- */

#define CFGT_HASH_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define CFGT_HASH_HELLO "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
#define CFGT_HASH_OTHER "00000000000000000000000000000000000000000000000000000000000000ff"
#define CFGT_HASH_FOUR "11111111111111111111111111111111111111111111111111111111111111aa"

/* A fresh directory for a test's files; cfgt_rm_tree cleans it up. */
static void cfgt_tmpdir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/aigw-test-keys-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void cfgt_put(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fputs(text, f) >= 0, 1);
    cr_assert_eq(fclose(f), 0);
}

static void cfgt_rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(config_keys, auth_and_file_combinations)
{
    cfgt_expect_error("[keys]\n", "test.conf:1: auth = required needs a keys file");
    cfgt_expect_error("[server]\n\n[keys]\nauth = required\n[log]\nlevel = info\n",
                      "test.conf:3: auth = required needs a keys file");
    cfgt_expect_error("[keys]\nauth = maybe\n",
                      "test.conf:2: invalid value for auth: 'maybe' (expected required or off)");
    cfgt_expect_error("[keys]\nauth =\n",
                      "test.conf:2: invalid value for auth: '' (expected required or off)");
    cfgt_expect_error("[keys]\nauth = off\nfile =\n",
                      "test.conf:3: invalid value for file: '' (expected the path of the keys file)");
    cfgt_expect_error("[keys]\nauth = off\n[keys]\nauth = off\n", "test.conf:3: duplicate section [keys]");
    cfgt_expect_error("[keys]\nauth = off\nauth = required\n", "test.conf:3: duplicate key 'auth' in [keys]");
    /* the first error in the file wins: [keys] is checked when its section ends */
    cfgt_expect_error("[keys]\n[server]\nshards = 0\n", "test.conf:1: auth = required needs a keys file");

    struct config *c = cfgt_load_ok("[server]\n[keys]\nauth = off\n");
    cr_expect(c->keys.configured);
    cr_expect_not(c->keys.required);
    cr_expect_str_eq(c->keys.file, "");
    cr_expect_null(c->keys.ring);
    cr_expect_null(c->keys.key_tier);
    config_free(c);

    /* the keys file is read at load: a missing one fails the configuration */
    cfgt_expect_error("[keys]\nfile = /nonexistent/aigw/keys\n",
                      "/nonexistent/aigw/keys: cannot open: No such file or directory");
    cfgt_expect_error("[keys]\nauth = off\nfile = /nonexistent/aigw/keys\n",
                      "/nonexistent/aigw/keys: cannot open: No such file or directory");
    cfgt_expect_error("[keys]\nfile = /tmp\n", "/tmp: not a regular file");
}

Test(config_keys, keys_file_loaded_and_tiers_resolved)
{
    char dir[64], text[512];
    cfgt_tmpdir(dir, sizeof dir);
    cfgt_put(dir, "keys",
             "# aigw keys\n"
             "alice sha256:" CFGT_HASH_ABC " tier=free\n"
             "bob sha256:" CFGT_HASH_HELLO " tier=pro models=llama*\n"
             "\n"
             "carol sha256:" CFGT_HASH_OTHER " tier=default\n"
             "dave sha256:" CFGT_HASH_FOUR " tier=free\n");

    /* tiers may come before or after [keys]; "default" needs no section */
    snprintf(text, sizeof text,
             "[tier pro]\npriority = high\n[keys]\nfile = %s/keys\n[tier free]\nrequests_per_minute = 60\n",
             dir);
    struct config *c = cfgt_load_ok(text);
    cr_expect(c->keys.configured);
    cr_expect(c->keys.required, "auth = required is the default");
    char want[128];
    snprintf(want, sizeof want, "%s/keys", dir);
    cr_expect_str_eq(c->keys.file, want);
    cr_assert_not_null(c->keys.ring);
    cr_assert_not_null(c->keys.key_tier);
    cr_assert_eq(keyring_count(c->keys.ring), 4);
    cr_expect_str_eq(keyring_entry(c->keys.ring, 0)->name, "alice");
    cr_expect_eq(c->keys.key_tier[0], 1, "alice: [tier free]");
    cr_expect_eq(c->keys.key_tier[1], 0, "bob: [tier pro]");
    cr_expect_eq(c->keys.key_tier[2], CFG_NO_TIER, "carol: default without [tier default]");
    cr_expect_eq(c->keys.key_tier[3], 1, "dave: [tier free]");
    const struct key_entry *e = keyring_lookup(c->keys.ring, "hello", 5);
    cr_assert_not_null(e);
    cr_expect_str_eq(e->name, "bob");
    config_free(c);

    /* with a [tier default], "default" is that tier */
    snprintf(text, sizeof text,
             "[keys]\nauth = off\nfile = %s/keys\n[tier free]\n[tier pro]\n[tier default]\nmax_tokens = 100\n",
             dir);
    c = cfgt_load_ok(text);
    cr_expect_not(c->keys.required);
    cr_expect_eq(c->keys.key_tier[0], 0);
    cr_expect_eq(c->keys.key_tier[1], 1);
    cr_expect_eq(c->keys.key_tier[2], 2, "carol: [tier default]");
    cr_expect_eq(c->keys.key_tier[3], 0);
    config_free(c);

    /* an empty keys file is valid: with auth = required nobody gets in */
    cfgt_put(dir, "empty", "# nobody yet\n");
    snprintf(text, sizeof text, "[keys]\nfile = %s/empty\n", dir);
    c = cfgt_load_ok(text);
    cr_expect_not_null(c->keys.ring);
    cr_expect_eq(keyring_count(c->keys.ring), 0);
    cr_expect_not_null(c->keys.key_tier);
    config_free(c);
    cfgt_rm_tree(dir);
}

Test(config_keys, unknown_tier_names_the_keys_file_line)
{
    char dir[64], text[512], want[768], path[128];
    cfgt_tmpdir(dir, sizeof dir);
    cfgt_put(dir, "keys",
             "alice sha256:" CFGT_HASH_ABC " tier=free\n"
             "# comment\n"
             "\n"
             "bob sha256:" CFGT_HASH_HELLO " tier=gold\n");
    snprintf(text, sizeof text, "[keys]\nfile = %s/keys\n[tier free]\n", dir);
    snprintf(want, sizeof want, "%s/keys:4: unknown tier 'gold' (no [tier gold] in test.conf)", dir);
    cfgt_expect_error(text, want);

    /* the same through a real file: the configuration's path is named */
    snprintf(path, sizeof path, "%s/aigw.conf", dir);
    cfgt_put(dir, "aigw.conf", text);
    struct config *c = NULL;
    cr_expect_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), -1);
    snprintf(want, sizeof want, "%s/keys:4: unknown tier 'gold' (no [tier gold] in %s)", dir, path);
    cr_expect_str_eq(cfgt_err, want);
    cr_expect_null(c);

    /* no [tier] at all: only "default" keys load */
    cfgt_put(dir, "keys", "alice sha256:" CFGT_HASH_ABC " tier=default\n"
                          "bob sha256:" CFGT_HASH_HELLO " tier=free\n");
    snprintf(text, sizeof text, "[keys]\nfile = %s/keys\n", dir);
    snprintf(want, sizeof want, "%s/keys:2: unknown tier 'free' (no [tier free] in test.conf)", dir);
    cfgt_expect_error(text, want);

    /* the keyring's own errors come through as they are */
    cfgt_put(dir, "keys", "alice sha256:" CFGT_HASH_ABC " tier=free\nbob sha256:zz tier=free\n");
    snprintf(text, sizeof text, "[tier free]\n[keys]\nfile = %s/keys\n", dir);
    snprintf(want, sizeof want, "%s/keys:2: sha256: wants 64 hex digits, got 2 characters", dir);
    cfgt_expect_error(text, want);
    cfgt_rm_tree(dir);
}

Test(config_keys, relative_path_is_next_to_the_config)
{
    char dir[64], path[128], want[256];
    cfgt_tmpdir(dir, sizeof dir);
    char sub[128];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    cfgt_put(dir, "keys", "alice sha256:" CFGT_HASH_ABC " tier=default\n");
    cfgt_put(dir, "sub/keys2", "bob sha256:" CFGT_HASH_HELLO " tier=default\n");
    cfgt_put(dir, "aigw.conf", "[keys]\nfile = keys\n");
    cfgt_put(dir, "aigw2.conf", "[keys]\nfile = sub/keys2\n");

    snprintf(path, sizeof path, "%s/aigw.conf", dir);
    struct config *c = NULL;
    cr_assert_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), 0, "%s", cfgt_err);
    snprintf(want, sizeof want, "%s/keys", dir);
    cr_expect_str_eq(c->keys.file, want);
    cr_expect_eq(keyring_count(c->keys.ring), 1);
    cr_expect_eq(c->keys.key_tier[0], CFG_NO_TIER);
    config_free(c);

    snprintf(path, sizeof path, "%s/aigw2.conf", dir);
    cr_assert_eq(config_load(path, &c, cfgt_err, sizeof cfgt_err), 0, "%s", cfgt_err);
    snprintf(want, sizeof want, "%s/sub/keys2", dir);
    cr_expect_str_eq(c->keys.file, want);
    cr_expect_str_eq(keyring_entry(c->keys.ring, 0)->name, "bob");
    config_free(c);

    /* in-memory text: relative to the name's directory, or to the current one */
    snprintf(path, sizeof path, "%s/sub/mem.conf", dir);
    cr_assert_eq(config_load_string(path, "[keys]\nfile = keys2\n", &c, cfgt_err, sizeof cfgt_err), 0,
                 "%s", cfgt_err);
    snprintf(want, sizeof want, "%s/sub/keys2", dir);
    cr_expect_str_eq(c->keys.file, want);
    config_free(c);

    char cwd[PATH_MAX];
    cr_assert_not_null(getcwd(cwd, sizeof cwd));
    cr_assert_eq(chdir(dir), 0);
    c = cfgt_load_ok("[keys]\nfile = keys\n");
    cr_expect_str_eq(c->keys.file, "keys");
    cr_expect_eq(keyring_count(c->keys.ring), 1);
    config_free(c);
    cfgt_expect_error("[keys]\nfile = nokeys\n", "nokeys: cannot open: No such file or directory");
    cr_assert_eq(chdir(cwd), 0);
    cfgt_rm_tree(dir);
}

/* ---- route split -------------------------------------------------------------------- */

Test(config_split, parsed_and_resolved)
{
    struct config *c = cfgt_load_ok("[pool a]\nbackend = 127.0.0.1:1\n"
                                    "[route r]\npath = /v1/*\nsplit = b:90   a:10\t c:1000000\n"
                                    "[route one]\npath = /one\nsplit = c:1\n"
                                    "[route plain]\npath = /plain\npool = b\n"
                                    "[pool b]\nbackend = 127.0.0.1:2\n"
                                    "[pool c]\nbackend = 127.0.0.1:3\n");
    cr_assert_eq(c->nroutes, 3);
    const struct cfg_route *r = &c->routes[0];
    cr_assert_eq(r->nsplit, 3);
    cr_expect_eq(r->split[0].pool, 1, "pools defined later in the file");
    cr_expect_eq(r->split[0].weight, 90);
    cr_expect_eq(r->split[1].pool, 0);
    cr_expect_eq(r->split[1].weight, 10);
    cr_expect_eq(r->split[2].pool, 2);
    cr_expect_eq(r->split[2].weight, 1000000);
    cr_expect_eq(r->pool, 1, "pool is split[0].pool");
    cr_assert_eq(c->routes[1].nsplit, 1);
    cr_expect_eq(c->routes[1].pool, 2);
    cr_expect_eq(c->routes[1].split[0].weight, 1);
    cr_expect_eq(c->routes[2].nsplit, 0);
    cr_expect_eq(c->routes[2].pool, 1);
    config_free(c);

    /* CFG_MAX_SPLIT pools */
    char text[1024];
    int n = 0;
    for (int i = 0; i < CFG_MAX_SPLIT; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "[pool p%d]\nbackend = 127.0.0.1:%d\n", i, i + 1);
    n += snprintf(text + n, sizeof text - (size_t)n, "[route r]\npath = /x\nsplit =");
    for (int i = 0; i < CFG_MAX_SPLIT; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, " p%d:%d", i, i + 1);
    snprintf(text + n, sizeof text - (size_t)n, "\n");
    c = cfgt_load_ok(text);
    cr_assert_eq(c->routes[0].nsplit, CFG_MAX_SPLIT);
    cr_expect_eq(c->routes[0].split[CFG_MAX_SPLIT - 1].pool, CFG_MAX_SPLIT - 1);
    cr_expect_eq(c->routes[0].split[CFG_MAX_SPLIT - 1].weight, CFG_MAX_SPLIT);
    config_free(c);

    /* one too many */
    snprintf(text + n, sizeof text - (size_t)n, " p0:1\n");
    char want[128];
    snprintf(want, sizeof want, "test.conf:%d: route 'r': too many pools in split (at most 8)",
             2 * CFG_MAX_SPLIT + 3);
    cfgt_expect_error(text, want);
}

Test(config_split, errors)
{
    static const char pools[] = "[pool a]\nbackend = 127.0.0.1:1\n[pool b]\nbackend = 127.0.0.1:2\n";
    char text[512];
    snprintf(text, sizeof text, "%s[route r]\npath = /x\nsplit = a:50 z:50\n", pools);
    cfgt_expect_error(text, "test.conf:7: route 'r': unknown pool 'z'");
    snprintf(text, sizeof text, "[route r]\npath = /x\nsplit = a:50 b:50\n\n%s", pools);
    struct config *c = cfgt_load_ok(text);
    config_free(c);
    snprintf(text, sizeof text, "[route r]\npath = /x\nsplit = a:50 b:50\n[pool a]\nbackend = 127.0.0.1:1\n");
    cfgt_expect_error(text, "test.conf:3: route 'r': unknown pool 'b'");

    snprintf(text, sizeof text, "%s[route r]\npath = /x\nsplit = a:50 b:25 a:25\n", pools);
    cfgt_expect_error(text, "test.conf:7: route 'r': pool 'a' appears twice in split");

    snprintf(text, sizeof text, "%s[route r]\npath = /x\npool = a\nsplit = a:1\n", pools);
    cfgt_expect_error(text, "test.conf:8: route 'r': pool and split are exclusive");
    snprintf(text, sizeof text, "%s[route r]\nsplit = a:1 b:1\npath = /x\npool = b\n", pools);
    cfgt_expect_error(text, "test.conf:8: route 'r': pool and split are exclusive");
    snprintf(text, sizeof text, "%s\n[route r]\npath = /x\nkind = raw\n", pools);
    cfgt_expect_error(text, "test.conf:6: route 'r' has no pool or split");

    static const char *const bad[] = {
        "", "a", "a:", ":5", "a:0", "a:1000001", "a:-1", "a:1.5", "a:+1", "a:1 b", "a:1,b:2",
        "a:1x", "a : 1", "a:1:2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[256];
        snprintf(text, sizeof text, "%s[route r]\npath = /x\nsplit = %s\n", pools, bad[i]);
        snprintf(want, sizeof want,
                 "test.conf:7: invalid value for split: '%s' (expected POOL:WEIGHT pairs separated by spaces, weight 1-1000000)",
                 bad[i]);
        cfgt_expect_error(text, want);
    }
    snprintf(text, sizeof text, "%s[route r]\npath = /x\nsplit = a:1\nsplit = b:1\n", pools);
    cfgt_expect_error(text, "test.conf:8: duplicate key 'split' in [route r]");
}

/* capacity and prefix pools read the engines' /metrics unless told otherwise */
Test(config_file, load_aware_balancers_scrape_metrics_by_default)
{
    struct config *c = NULL;
    char err[512] = "";
    int rc = config_load_string("t.conf",
                                "[pool a]\nbackend = 127.0.0.1:1\nbalance = capacity\n\n"
                                "[pool b]\nbackend = 127.0.0.1:2\nbalance = prefix\nmetrics =\n"
                                "metrics_interval = 100ms\n\n"
                                "[pool c]\nbackend = 127.0.0.1:3\n\n"
                                "[pool d]\nbackend = 127.0.0.1:4\nmetrics = /stats\n",
                                &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    cr_expect_eq(c->pools[0].balance, BALANCE_CAPACITY);
    cr_expect_str_eq(c->pools[0].metrics_path, "/metrics");
    cr_expect_eq(c->pools[0].metrics_interval_ms, 250);
    cr_expect_eq(c->pools[1].balance, BALANCE_PREFIX);
    cr_expect_str_eq(c->pools[1].metrics_path, "", "an explicit empty metrics = means none");
    cr_expect_eq(c->pools[1].metrics_interval_ms, 100);
    cr_expect_eq(c->pools[2].balance, BALANCE_LEAST_OUTSTANDING);
    cr_expect_str_eq(c->pools[2].metrics_path, "");
    cr_expect_str_eq(c->pools[3].metrics_path, "/stats");
    config_free(c);
}

/* ---- [pool] health, queue, retries, fallback ------------------------------------- */

Test(config_pool, health_queue_retries_fallback_defaults)
{
    struct config *c = cfgt_load_ok("[pool cap]\nbackend = 127.0.0.1:1\nbackend = 127.0.0.1:2\n"
                                    "backend = 127.0.0.1:3\nbalance = capacity\n"
                                    "max_outstanding = 10\n\n"
                                    "[pool lo]\nbackend = 127.0.0.1:4\nbackend = 127.0.0.1:5\n\n"
                                    "[pool pre]\nbackend = 127.0.0.1:6\nbalance = prefix\n"
                                    "queue_size = 0\n\n"
                                    "[pool rr]\nbackend = 127.0.0.1:7\nbalance = round_robin\n");
    cr_assert_eq(c->npools, 4);
    const struct cfg_pool *cap = &c->pools[0], *lo = &c->pools[1], *pre = &c->pools[2],
                          *rr = &c->pools[3];
    cr_expect_str_eq(cap->health_path, "/health", "capacity pools check /health by default");
    cr_expect_not(cap->health_set);
    cr_expect_str_eq(lo->health_path, "", "least_outstanding pools: passive checks only");
    cr_expect_not(lo->health_set);
    cr_expect_str_eq(pre->health_path, "/health");
    cr_expect_str_eq(rr->health_path, "");
    for (unsigned i = 0; i < c->npools; i++) {
        const struct cfg_pool *p = &c->pools[i];
        cr_expect_eq(p->health_interval_ms, 1000, "pool %s", p->name);
        cr_expect_eq(p->queue_timeout_ms, 5000, "pool %s", p->name);
        cr_expect_eq(p->retries, 1, "pool %s", p->name);
        cr_expect_eq(p->fallback, -1, "pool %s", p->name);
    }
    cr_expect_eq(cap->queue_size, 10 * 3, "max_outstanding x backends");
    cr_expect_eq(lo->queue_size, 64 * 2);
    cr_expect_eq(pre->queue_size, 64 * 1, "queue_size = 0 means the default");
    cr_expect_eq(rr->queue_size, 64);
    config_free(c);
}

Test(config_pool, health_queue_retries_fallback_parsed)
{
    struct config *c = cfgt_load_ok("[pool a]\nbackend = 127.0.0.1:1\nbackend = 127.0.0.1:2\n"
                                    "balance = capacity\n"
                                    "health = /v1/health?deep=1\n"
                                    "health_interval = 250ms\n"
                                    "queue_timeout = 2m\n"
                                    "queue_size = 1000000\n"
                                    "retries = 5\n"
                                    "fallback = b\n"
                                    "[pool b]\nbackend = 127.0.0.1:3\n"
                                    "health =\n"
                                    "health_interval = 60s\n"
                                    "queue_timeout = 0\n"
                                    "queue_size = 1\n"
                                    "retries = 0\n"
                                    "fallback = a\n"
                                    "[pool c]\nbackend = 127.0.0.1:4\nbalance = prefix\n"
                                    "health = \n"
                                    "health_interval = 10ms\n"
                                    "queue_timeout = 10m\n"
                                    "fallback =\n");
    const struct cfg_pool *a = &c->pools[0], *b = &c->pools[1], *p3 = &c->pools[2];
    cr_expect_str_eq(a->health_path, "/v1/health?deep=1");
    cr_expect(a->health_set);
    cr_expect_eq(a->health_interval_ms, 250);
    cr_expect_eq(a->queue_timeout_ms, 120000);
    cr_expect_eq(a->queue_size, 1000000);
    cr_expect_eq(a->retries, 5);
    cr_expect_eq(a->fallback, 1, "a pool declared later is resolved");
    cr_expect_str_eq(b->health_path, "");
    cr_expect(b->health_set);
    cr_expect_eq(b->health_interval_ms, 60000);
    cr_expect_eq(b->queue_timeout_ms, 0, "queue_timeout = 0: no waiting");
    cr_expect_eq(b->queue_size, 1);
    cr_expect_eq(b->retries, 0);
    cr_expect_eq(b->fallback, 0, "fallbacks may name each other (one hop at run time)");
    cr_expect_str_eq(p3->health_path, "", "an explicit empty health = means none, even for prefix");
    cr_expect(p3->health_set);
    cr_expect_eq(p3->health_interval_ms, 10);
    cr_expect_eq(p3->queue_timeout_ms, 600000);
    cr_expect_eq(p3->fallback, -1, "an empty fallback = means none");
    config_free(c);

    static const char *const zeros[] = { "0", "0s", "0ms", "0m", "0h" };
    for (size_t i = 0; i < sizeof zeros / sizeof zeros[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nqueue_timeout = %s\n", zeros[i]);
        c = cfgt_load_ok(text);
        cr_expect_eq(c->pools[0].queue_timeout_ms, 0, "queue_timeout = %s", zeros[i]);
        config_free(c);
    }
}

Test(config_pool, fallback_resolved_to_a_later_pool)
{
    struct config *c = cfgt_load_ok("[route r]\npath = /x\npool = first\n\n"
                                    "[pool first]\nbackend = 127.0.0.1:1\nfallback = third\n\n"
                                    "[pool second]\nbackend = 127.0.0.1:2\n\n"
                                    "[pool third]\nbackend = 127.0.0.1:3\nfallback = second\n");
    cr_assert_eq(c->npools, 3);
    cr_expect_eq(c->pools[0].fallback, 2);
    cr_expect_eq(c->pools[1].fallback, -1);
    cr_expect_eq(c->pools[2].fallback, 1);
    config_free(c);
}

Test(config_pool, errors)
{
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n\nfallback = nowhere\n[pool b]\nbackend = 127.0.0.1:2\n",
                      "test.conf:4: fallback: no pool named 'nowhere'");
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\n[pool b]\nbackend = 127.0.0.1:2\nfallback = A\n",
                      "test.conf:5: fallback: no pool named 'A'");
    char text[512], longname[CFG_NAME_MAX + 2];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    snprintf(text, sizeof text, "[pool a]\nbackend = 127.0.0.1:1\nfallback = %s\n", longname);
    char want[512];
    snprintf(want, sizeof want, "test.conf:3: fallback: no pool named '%s'", longname);
    cfgt_expect_error(text, want);
    cfgt_expect_error("[pool b]\nbackend = 127.0.0.1:2\n[pool a]\nbackend = 127.0.0.1:1\nfallback = a\n",
                      "test.conf:5: fallback: pool 'a' cannot be its own fallback");
    cfgt_expect_error("[pool a]\nbackend = 127.0.0.1:1\nfallback = b\nfallback = b\n[pool b]\nbackend = 127.0.0.1:2\n",
                      "test.conf:4: duplicate key 'fallback' in [pool a]");

    static const char *const bad_retries[] = { "6", "-1", "", "1x", "one", "1.0" };
    for (size_t i = 0; i < sizeof bad_retries / sizeof bad_retries[0]; i++) {
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nretries = %s\n", bad_retries[i]);
        snprintf(want, sizeof want, "test.conf:3: invalid value for retries: '%s' (expected a number 0-5)",
                 bad_retries[i]);
        cfgt_expect_error(text, want);
    }

    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nhealth = health\n",
                      "test.conf:3: invalid value for health: 'health' (expected a path starting with '/', "
                      "or empty for none)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nhealth = /a b\n",
                      "test.conf:3: invalid value for health: '/a b' (expected a path without spaces or "
                      "control characters)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nhealth = /a\tb\n",
                      "test.conf:3: invalid value for health: '/a\\x09b' (expected a path without spaces or "
                      "control characters)");
    char longpath[200];
    longpath[0] = '/';
    memset(longpath + 1, 'h', 127);
    longpath[128] = '\0';
    snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nhealth = %s\n", longpath);
    cfgt_expect_error(text, "test.conf:3: invalid value for health: too long (at most 127 characters)");
    longpath[127] = '\0';
    snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nhealth = %s\n", longpath);
    struct config *c = cfgt_load_ok(text);
    cr_expect_str_eq(c->pools[0].health_path, longpath);
    config_free(c);

    static const char *const bad_interval[] = { "5ms", "9ms", "61s", "2m", "0", "", "1.5s", "-1s" };
    for (size_t i = 0; i < sizeof bad_interval / sizeof bad_interval[0]; i++) {
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nhealth_interval = %s\n",
                 bad_interval[i]);
        snprintf(want, sizeof want,
                 "test.conf:3: invalid value for health_interval: '%s' (expected a duration from 10ms to 60s)",
                 bad_interval[i]);
        cfgt_expect_error(text, want);
    }

    static const char *const bad_timeout[] = { "600001ms", "11m", "1h", "", "-1", "5 s", "1.5s", "5sec" };
    for (size_t i = 0; i < sizeof bad_timeout / sizeof bad_timeout[0]; i++) {
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nqueue_timeout = %s\n",
                 bad_timeout[i]);
        snprintf(want, sizeof want,
                 "test.conf:3: invalid value for queue_timeout: '%s' (expected a duration from 0 to 10m)",
                 bad_timeout[i]);
        cfgt_expect_error(text, want);
    }

    static const char *const bad_size[] = { "1000001", "-1", "", "1k", "10 0" };
    for (size_t i = 0; i < sizeof bad_size / sizeof bad_size[0]; i++) {
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\nqueue_size = %s\n", bad_size[i]);
        snprintf(want, sizeof want,
                 "test.conf:3: invalid value for queue_size: '%s' (expected a number 0-1000000, 0 for "
                 "max_outstanding x backends)",
                 bad_size[i]);
        cfgt_expect_error(text, want);
    }
}

/* ---- [pool] keepalive, keepalive_timeout ---------------------------------------- */

Test(config_pool, keepalive_keys)
{
    struct config *c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\n"
                                    "[pool q]\nbackend = 127.0.0.1:2\nkeepalive = 0\nkeepalive_timeout = 200ms\n");
    cr_expect_eq(c->pools[0].keepalive, 32);
    cr_expect_eq(c->pools[0].keepalive_timeout_ms, 60000);
    cr_expect_eq(c->pools[1].keepalive, 0, "0: no idle connection kept");
    cr_expect_eq(c->pools[1].keepalive_timeout_ms, 200);
    config_free(c);

    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkeepalive = -1\n",
                      "test.conf:3: invalid value for keepalive: '-1' (expected a number 0-100000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkeepalive = 100001\n",
                      "test.conf:3: invalid value for keepalive: '100001' (expected a number 0-100000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkeepalive_timeout = 0\n",
                      "test.conf:3: invalid value for keepalive_timeout: '0' (expected a duration from 1ms to 24h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkeepalive_timeout = 25h\n",
                      "test.conf:3: invalid value for keepalive_timeout: '25h' (expected a duration from 1ms to 24h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkeepalive = 2\nkeepalive = 3\n",
                      "test.conf:4: duplicate key 'keepalive' in [pool p]");
}

/* ---- [tls] ----------------------------------------------------------------------- */

#define CFGT_TLS_PAIR "cert = /etc/aigw/tls/a.pem\nkey = /etc/aigw/tls/a.key\n"

Test(config_tls, no_section_means_no_tls)
{
    struct config *c = cfgt_load_ok("[server]\nshards = 1\n");
    cr_expect_not(c->tls.opts.enabled);
    cr_expect_eq(c->tls.nlisten, 0);
    cr_expect_null(c->tls.server);
    config_free(c);
}

Test(config_tls, every_key_parses)
{
    struct config *c = cfgt_load_ok(
        "[server]\n"
        "listen = 127.0.0.1:8080\n"
        "[tls]\n"
        "listen = 0.0.0.0:8443            ; repeatable\n"
        "listen = [::1]:8444\n"
        "cert = /etc/aigw/tls/a.pem\n"
        "key  = /etc/aigw/tls/a.key\n"
        "cert = b.pem                     ; relative: from the config file's directory\n"
        "key = b.key\n"
        "min_version = 1.3\n"
        "ciphers = TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256\n"
        "client_ca = /etc/aigw/tls/clients.pem\n"
        "session_tickets = off\n"
        "ticket_key_rotation = 30m\n"
        "handshake_timeout = 500ms\n");
    const struct cfg_tls *t = &c->tls.opts;
    cr_expect(t->enabled);
    cr_expect_eq(c->tls.nlisten, 2);
    cr_expect_str_eq(c->tls.listen[0].text, "0.0.0.0:8443");
    cr_expect_eq(c->tls.listen[0].line, 4);
    cr_expect_str_eq(c->tls.listen[1].text, "[::1]:8444");
    cr_expect_eq(t->ncerts, 2);
    cr_expect_str_eq(t->certs[0].cert, "/etc/aigw/tls/a.pem");
    cr_expect_str_eq(t->certs[0].key, "/etc/aigw/tls/a.key");
    cr_expect_eq(t->certs[0].cert_line, 6);
    cr_expect_eq(t->certs[0].key_line, 7);
    cr_expect_str_eq(t->certs[1].cert, "b.pem", "test.conf has no directory: the path stays as written");
    cr_expect_str_eq(t->certs[1].key, "b.key");
    cr_expect_eq(t->certs[1].cert_line, 8);
    cr_expect_eq(t->certs[1].key_line, 9);
    cr_expect_eq(t->min_version, 13);
    cr_expect_eq(t->min_version_line, 10);
    cr_expect_str_eq(t->ciphers, "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256");
    cr_expect_eq(t->ciphers_line, 11);
    cr_expect_str_eq(t->client_ca, "/etc/aigw/tls/clients.pem");
    cr_expect_eq(t->client_ca_line, 12);
    cr_expect_not(t->session_tickets);
    cr_expect_eq(t->ticket_rotation_ms, 30 * 60 * 1000);
    cr_expect_eq(t->handshake_timeout_ms, 500);
    cr_expect_null(c->tls.server, "the contexts are built by the loader's caller");
    cr_expect_eq(c->server.nlisten, 1, "[tls] listen is not a plaintext listener");
    config_free(c);
}

Test(config_tls, defaults)
{
    struct config *c = cfgt_load_ok("[server]\nlisten = 127.0.0.1:8080\n[tls]\nlisten = *:8443\n" CFGT_TLS_PAIR);
    const struct cfg_tls *t = &c->tls.opts;
    cr_expect(t->enabled);
    cr_expect_str_eq(c->tls.listen[0].text, "0.0.0.0:8443");
    cr_expect_eq(t->min_version, 12);
    cr_expect_eq(t->min_version_line, 0);
    cr_expect_str_eq(t->ciphers, "", "empty: the engine's default order");
    cr_expect_str_eq(t->client_ca, "", "no mTLS");
    cr_expect(t->session_tickets);
    cr_expect_eq(t->ticket_rotation_ms, 3600 * 1000);
    cr_expect_eq(t->handshake_timeout_ms, 10000);
    config_free(c);
}

Test(config_tls, paths_are_taken_from_the_config_files_directory)
{
    char dir[64], conf[128];
    cfgt_tmpdir(dir, sizeof dir);
    cfgt_put(dir, "aigw.conf",
             "[tls]\nlisten = 127.0.0.1:8443\ncert = tls/a.pem\nkey = /abs/a.key\nclient_ca = ca.pem\n"
             "[pool p]\nbackend = 127.0.0.1:1\ntls = on\ntls_ca = cas/backends.pem\n");
    snprintf(conf, sizeof conf, "%s/aigw.conf", dir);
    struct config *c = NULL;
    cr_assert_eq(config_load(conf, &c, cfgt_err, sizeof cfgt_err), 0, "%s", cfgt_err);
    char want[256];
    snprintf(want, sizeof want, "%s/tls/a.pem", dir);
    cr_expect_str_eq(c->tls.opts.certs[0].cert, want);
    cr_expect_str_eq(c->tls.opts.certs[0].key, "/abs/a.key");
    snprintf(want, sizeof want, "%s/ca.pem", dir);
    cr_expect_str_eq(c->tls.opts.client_ca, want);
    snprintf(want, sizeof want, "%s/cas/backends.pem", dir);
    cr_expect_str_eq(c->pools[0].tls_ca, want);
    config_free(c);
    cfgt_rm_tree(dir);
}

Test(config_tls, section_needs_listen_and_cert)
{
    cfgt_expect_error("[server]\nshards = 1\n[tls]\n" CFGT_TLS_PAIR, "test.conf:3: [tls] has no listen");
    cfgt_expect_error("[tls]\n", "test.conf:1: [tls] has no listen");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\n[log]\nlevel = info\n",
                      "test.conf:1: [tls] has no cert (and key)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "[tls]\n",
                      "test.conf:5: duplicate section [tls]");
    /* the section is checked when it ends: its error comes before a later one */
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\n[tls]\n", "test.conf:1: [tls] has no cert (and key)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "port = 443\n",
                      "test.conf:5: unknown key 'port' in [tls]");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "min_version = 1.2\nmin_version = 1.3\n",
                      "test.conf:6: duplicate key 'min_version' in [tls]");
}

Test(config_tls, certs_and_keys_pair_up)
{
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert = a.pem\n",
                      "test.conf:3: cert a.pem has no key (each cert must be followed by its key)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert = a.pem\n[log]\nlevel = info\n",
                      "test.conf:3: cert a.pem has no key (each cert must be followed by its key)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert = a.pem\ncert = b.pem\nkey = b.key\n",
                      "test.conf:3: cert a.pem has no key (each cert must be followed by its key)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\nkey = a.key\ncert = a.pem\n",
                      "test.conf:3: key without a cert (each key must follow its cert)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert = a.pem\nkey = a.key\nkey = b.key\n",
                      "test.conf:5: key without a cert (each key must follow its cert)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert =\n",
                      "test.conf:3: invalid value for cert: '' (expected the path of a PEM certificate chain)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\ncert = a.pem\nkey =\n",
                      "test.conf:4: invalid value for key: '' (expected the path of the PEM private key of the cert above)");

    /* at most TLS_MAX_CERTS pairs */
    char text[4096];
    size_t n = (size_t)snprintf(text, sizeof text, "[tls]\nlisten = 127.0.0.1:8443\n");
    for (int i = 0; i <= TLS_MAX_CERTS; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "cert = %d.pem\nkey = %d.key\n", i, i);
    char want[128];
    snprintf(want, sizeof want, "test.conf:%d: too many certificates in [tls] (at most %d)",
             3 + 2 * TLS_MAX_CERTS, TLS_MAX_CERTS);
    cfgt_expect_error(text, want);
    /* exactly TLS_MAX_CERTS is fine */
    n = (size_t)snprintf(text, sizeof text, "[tls]\nlisten = 127.0.0.1:8443\n");
    for (int i = 0; i < TLS_MAX_CERTS; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "cert = %d.pem\nkey = %d.key\n", i, i);
    struct config *c = cfgt_load_ok(text);
    cr_expect_eq(c->tls.opts.ncerts, TLS_MAX_CERTS);
    cr_expect_str_eq(c->tls.opts.certs[TLS_MAX_CERTS - 1].key, "15.key");
    config_free(c);
}

Test(config_tls, value_errors)
{
    static const struct { const char *line, *want; } cases[] = {
        { "min_version = 1.1",
          "invalid value for min_version: '1.1' (TLS 1.0 and 1.1 are not supported; expected 1.2 or 1.3)" },
        { "min_version = 1.0",
          "invalid value for min_version: '1.0' (TLS 1.0 and 1.1 are not supported; expected 1.2 or 1.3)" },
        { "min_version = 1.4", "invalid value for min_version: '1.4' (expected 1.2 or 1.3)" },
        { "min_version = TLSv1.3", "invalid value for min_version: 'TLSv1.3' (expected 1.2 or 1.3)" },
        { "session_tickets = yes", "invalid value for session_tickets: 'yes' (expected on or off)" },
        { "ticket_key_rotation = 59s",
          "invalid value for ticket_key_rotation: '59s' (expected a duration from 1m to 168h (7 days))" },
        { "ticket_key_rotation = 169h",
          "invalid value for ticket_key_rotation: '169h' (expected a duration from 1m to 168h (7 days))" },
        { "handshake_timeout = 99ms",
          "invalid value for handshake_timeout: '99ms' (expected a duration from 100ms to 5m)" },
        { "handshake_timeout = 301s",
          "invalid value for handshake_timeout: '301s' (expected a duration from 100ms to 5m)" },
        { "handshake_timeout = 0",
          "invalid value for handshake_timeout: '0' (expected a duration from 100ms to 5m)" },
        { "ciphers = A:B C",
          "invalid value for ciphers: 'A:B C' (expected a ':'-separated cipher list without spaces, or empty for the default)" },
        { "listen = 127.0.0.1:0",
          "invalid value for listen: '127.0.0.1:0' (expected HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535)" },
        { "client_ca = a\x01" "b", "invalid value for client_ca: control character in path" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512], want[512];
        snprintf(text, sizeof text, "[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "%s\n", cases[i].line);
        snprintf(want, sizeof want, "test.conf:5: %s", cases[i].want);
        cfgt_expect_error(text, want);
    }
    /* the bounds themselves are accepted */
    struct config *c = cfgt_load_ok("[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR
                                    "ticket_key_rotation = 168h\nhandshake_timeout = 100ms\nciphers =\n");
    cr_expect_eq(c->tls.opts.ticket_rotation_ms, 168ULL * 3600 * 1000);
    cr_expect_eq(c->tls.opts.handshake_timeout_ms, 100);
    cr_expect_str_eq(c->tls.opts.ciphers, "");
    config_free(c);
    c = cfgt_load_ok("[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "ticket_key_rotation = 1m\nhandshake_timeout = 5m\n");
    cr_expect_eq(c->tls.opts.ticket_rotation_ms, 60000);
    cr_expect_eq(c->tls.opts.handshake_timeout_ms, 300000);
    config_free(c);
}

Test(config_tls, listen_addresses_are_not_shared)
{
    /* with [server] and [admin] listeners, in either order */
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:8080\n[tls]\nlisten = 127.0.0.1:8080\n",
                      "test.conf:4: duplicate listener 127.0.0.1:8080 (already on line 2)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8080\n" CFGT_TLS_PAIR "[server]\nlisten = 127.0.0.1:8080\n",
                      "test.conf:6: duplicate listener 127.0.0.1:8080 (already on line 2)");
    cfgt_expect_error("[admin]\nlisten = 127.0.0.1:9443\n[tls]\nlisten = 127.0.0.1:9443\n",
                      "test.conf:4: duplicate listener 127.0.0.1:9443 (already on line 2)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:9443\n" CFGT_TLS_PAIR "[admin]\nlisten = 127.0.0.1:9443\n",
                      "test.conf:6: duplicate listener 127.0.0.1:9443 (already on line 2)");
    cfgt_expect_error("[tls]\nlisten = 127.0.0.1:8443\nlisten = 127.0.0.1:8443\n",
                      "test.conf:3: duplicate listener 127.0.0.1:8443 (already on line 2)");
    /* with the defaults, found once the file is read: at the [tls] listen line */
    cfgt_expect_error("[tls]\nlisten = *:8080\n" CFGT_TLS_PAIR,
                      "test.conf:2: duplicate listener 0.0.0.0:8080 ([server] listen's default)");
    cfgt_expect_error("[server]\nlisten = 127.0.0.1:8080\n[tls]\nlisten = 127.0.0.1:9090\n" CFGT_TLS_PAIR,
                      "test.conf:4: duplicate listener 127.0.0.1:9090 ([admin] listen's default)");
    /* a default replaced later is not a conflict; neither is a disabled admin */
    struct config *c = cfgt_load_ok("[tls]\nlisten = *:8080\nlisten = 127.0.0.1:9090\n" CFGT_TLS_PAIR
                                    "[server]\nlisten = 127.0.0.1:8081\n[admin]\nlisten = off\n");
    cr_expect_eq(c->tls.nlisten, 2);
    config_free(c);

    char text[2048];
    size_t n = (size_t)snprintf(text, sizeof text, "[tls]\n");
    for (int i = 0; i <= CFG_MAX_LISTEN; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, "listen = 127.0.0.1:%d\n", 8443 + i);
    char want[128];
    snprintf(want, sizeof want, "test.conf:%d: too many listen addresses in [tls] (at most %d)",
             2 + CFG_MAX_LISTEN, CFG_MAX_LISTEN);
    cfgt_expect_error(text, want);
}

/* ---- [pool] tls, tls_ca, tls_server_name ------------------------------------------- */

Test(config_pool_tls, keys_and_defaults)
{
    struct config *c = cfgt_load_ok(
        "[pool plain]\nbackend = 127.0.0.1:1\n"
        "[pool remote]\nbackend = 127.0.0.1:443\ntls = on\n"
        "[pool fronted]\nbackend = 127.0.0.1:8443\ntls = on\ntls_ca = /etc/aigw/backends-ca.pem\n"
        "tls_server_name = gpu1.internal.example\n"
        "[pool by-ip]\nbackend = 127.0.0.1:8443\ntls_server_name = 10.0.0.7\ntls = on\n"
        "[pool v6]\nbackend = 127.0.0.1:8443\ntls = on\ntls_server_name = fe80::1\n"
        "[pool off]\nbackend = 127.0.0.1:1\ntls = off\ntls_ca =\ntls_server_name =\n");
    cr_expect_not(c->pools[0].tls, "off by default");
    cr_expect_str_eq(c->pools[0].tls_ca, "");
    cr_expect_str_eq(c->pools[0].tls_server_name, "");
    cr_expect(c->pools[1].tls);
    cr_expect_str_eq(c->pools[1].tls_ca, "", "empty: the system bundle");
    cr_expect_str_eq(c->pools[1].tls_server_name, "", "empty: each backend's host");
    cr_expect(c->pools[2].tls);
    cr_expect_str_eq(c->pools[2].tls_ca, "/etc/aigw/backends-ca.pem");
    cr_expect_eq(c->pools[2].tls_ca_line, 9);
    cr_expect_str_eq(c->pools[2].tls_server_name, "gpu1.internal.example");
    cr_expect_str_eq(c->pools[3].tls_server_name, "10.0.0.7");
    cr_expect_str_eq(c->pools[4].tls_server_name, "fe80::1");
    cr_expect_str_eq(c->pools[0].backends[0].host, "127.0.0.1", "the default server name: the host as written");
    cr_expect_not(c->pools[5].tls, "empty values are the defaults: allowed with tls = off");
    for (unsigned i = 0; i < c->npools; i++)
        cr_expect_null(c->pools[i].tls_client);
    config_free(c);
}

Test(config_pool_tls, errors)
{
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ntls = yes\n",
                      "test.conf:3: invalid value for tls: 'yes' (expected on or off)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ntls_ca = /etc/ca.pem\n",
                      "test.conf:3: tls_ca needs tls = on in pool 'p'");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ntls_ca = /etc/ca.pem\ntls = off\n[route r]\npath = /\npool = p\n",
                      "test.conf:3: tls_ca needs tls = on in pool 'p'");
    cfgt_expect_error("[pool p]\ntls_server_name = api.example.com\nbackend = 127.0.0.1:1\n",
                      "test.conf:2: tls_server_name needs tls = on in pool 'p'");
    static const char *const bad_names[] = { "-bad.example", "a b", "*.example.com", "256.1.1.1",
                                             "https://api.example.com", "api.example.com:443" };
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        char text[512], want[512];
        snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\ntls = on\ntls_server_name = %s\n",
                 bad_names[i]);
        snprintf(want, sizeof want,
                 "test.conf:4: invalid value for tls_server_name: '%s' (expected a host name or an IP "
                 "address, or empty for each backend's host)",
                 bad_names[i]);
        cfgt_expect_error(text, want);
    }
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ntls = on\ntls = off\n",
                      "test.conf:4: duplicate key 'tls' in [pool p]");
}

/* ---- aigw -T ---------------------------------------------------------------------- */

static char *cfgt_print(const struct config *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    config_print(c, f);
    cr_assert_eq(fclose(f), 0);
    return text;
}

Test(config_print, tls_keys_with_their_effective_values)
{
    struct config *c = cfgt_load_ok(
        "[server]\nlisten = 127.0.0.1:8080\n"
        "[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "cert = b.pem\nkey = b.key\nclient_ca = /ca.pem\n"
        "ticket_key_rotation = 90m\nhandshake_timeout = 2500ms\n"
        "[pool gpu]\nbackend = 127.0.0.1:1\ntls = on\ntls_server_name = gpu.example\nupstream_auth = sk-secret\n"
        "[pool plain]\nbackend = 127.0.0.1:2\n");
    char *text = cfgt_print(c);
    static const char *const want[] = {
        "\n[tls]\nlisten = 127.0.0.1:8443\n"
        "cert = /etc/aigw/tls/a.pem\nkey = /etc/aigw/tls/a.key\ncert = b.pem\nkey = b.key\n"
        "min_version = 1.2\n"
        "ciphers =                        ; the default order of the linked wolfSSL (aigw -v)\n"
        "client_ca = /ca.pem\nsession_tickets = on\nticket_key_rotation = 90m\nhandshake_timeout = 2500ms\n\n",
        "\ntls = on\ntls_ca =                         ; the system's CA bundle\ntls_server_name = gpu.example\n\n",
        "\ntls = off\ntls_ca =\ntls_server_name =\n\n",
        "# upstream_auth = (set, not shown)\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(strstr(text, want[i]), "missing:\n%s\n--- in ---\n%s", want[i], text);
    cr_expect_null(strstr(text, "sk-secret"), "upstream_auth's value is never printed");
    free(text);
    config_free(c);

    c = cfgt_load_ok("[server]\nshards = 1\n");
    text = cfgt_print(c);
    cr_expect(strstr(text, "\n# [tls]: none (no TLS listener)\n"), "%s", text);
    free(text);
    config_free(c);
}

/* What -T prints is a configuration aigw reads as the same one. */
Test(config_print, reads_back_the_same)
{
    static const char original[] =
        "[server]\nlisten = 127.0.0.1:8080\nlisten = [::1]:8081\nshards = 3\nmax_body = 0\n"
        "max_header = 20k\ndrain_timeout = 0\n"
        "[admin]\nlisten = off\n"
        "[tls]\nlisten = 127.0.0.1:8443\n" CFGT_TLS_PAIR "min_version = 1.3\nciphers = TLS13-CHACHA20-POLY1305-SHA256\n"
        "session_tickets = off\n"
        "[timeouts]\nconnect = 1500ms\nfirst_byte = 2m\n"
        "[log]\naccess = off\nlevel = debug\n"
        "[pool a]\nbackend = 127.0.0.1:1 weight=3\nbalance = capacity\nfallback = b\ntls = on\n"
        "tls_ca = /ca.pem\ntls_server_name = a.example\nqueue_timeout = 0\n"
        "[pool b]\nbackend = 127.0.0.1:2\nbackend = 127.0.0.1:3\nkeepalive = 0\n"
        "[route chat]\npath = /v1/chat/completions\npool = a\nmodels = llama*, qwen*\n"
        "[route rest]\npath = /v1/*\nsplit = a:90 b:10\nkind = raw\n"
        "[keys]\nauth = off\n"
        "[tier free]\nrequests_per_minute = 60\nburst = 10s\npriority = low\n";
    struct config *c = cfgt_load_ok(original);
    char *first = cfgt_print(c);
    struct config *again = cfgt_load_ok(first);
    char *second = cfgt_print(again);
    cr_expect_str_eq(second, first);
    cr_expect_eq(again->tls.opts.min_version, 13);
    cr_expect_not(again->tls.opts.session_tickets);
    cr_expect_eq(again->pools[0].balance, BALANCE_CAPACITY);
    cr_expect_str_eq(again->pools[0].metrics_path, "/metrics");
    cr_expect_eq(again->routes[1].nsplit, 2);
    free(first);
    free(second);
    config_free(c);
    config_free(again);
}

Test(config_pool_tls, backend_host_as_written_is_kept_for_the_server_name)
{
    struct config *c = cfgt_load_ok("[pool p]\ntls = on\nbackend = localhost:8443\nbackend = [::1]:8444 weight=2\n"
                                    "backend = 127.0.0.2:8443\n");
    cr_expect_str_eq(c->pools[0].backends[0].host, "localhost");
    cr_expect_str_eq(c->pools[0].backends[1].host, "::1");
    cr_expect_str_eq(c->pools[0].backends[2].host, "127.0.0.2");
    config_free(c);
}

Test(config_cluster, defaults_and_values)
{
    struct config *c = cfgt_load_ok("[server]\nshards = 1\n");
    cr_expect_not(c->cluster.enabled);
    cr_expect_str_eq(c->server.state_dir, "");
    cr_expect_str_eq(c->cluster.key_prefix, "aigw:");
    cr_expect_eq(c->cluster.sync_interval_ms, 50);
    cr_expect_eq(c->cluster.timeout_ms, 250);
    cr_expect_eq(c->cluster.on_redis_down, REDIS_DOWN_LOCAL);
    config_free(c);

    c = cfgt_load_ok("[server]\nstate_dir = /var/lib/aigw\n[cluster]\nredis = 127.0.0.1:6390\n"
                     "username = gw\npassword = s3cret\nkey_prefix = prod:\nsync_interval = 20ms\n"
                     "timeout = 100ms\non_redis_down = deny\n");
    cr_expect(c->cluster.enabled);
    cr_expect_str_eq(c->server.state_dir, "/var/lib/aigw");
    cr_expect_str_eq(c->cluster.redis.text, "127.0.0.1:6390");
    cr_expect_str_eq(c->cluster.username, "gw");
    cr_expect_str_eq(c->cluster.password, "s3cret");
    cr_expect_str_eq(c->cluster.key_prefix, "prod:");
    cr_expect_eq(c->cluster.sync_interval_ms, 20);
    cr_expect_eq(c->cluster.timeout_ms, 100);
    cr_expect_eq(c->cluster.on_redis_down, REDIS_DOWN_DENY);
    config_free(c);
}

Test(config_cluster, errors)
{
    cfgt_expect_error("[cluster]\nredis = 127.0.0.1:6379\nsync_interval = 1ms\n",
                      "test.conf:3: invalid value for sync_interval: '1ms' (expected a duration from 5ms to 10s)");
    cfgt_expect_error("[cluster]\nredis = 127.0.0.1:6379\non_redis_down = maybe\n",
                      "test.conf:3: invalid value for on_redis_down: 'maybe' (expected local, deny or allow)");
    cfgt_expect_error("[cluster]\npassword = x\n", "test.conf:1: [cluster] sets credentials but no redis");
    cfgt_expect_error("[cluster]\nredis = 127.0.0.1:6379\nusername = u\n",
                      "test.conf:1: [cluster] username needs a password");
    cfgt_expect_error("[cluster]\nredis = 127.0.0.1:6379\npassword = two words\n",
                      "test.conf:3: invalid value for password: must not contain spaces or control characters");
    cfgt_expect_error("[cluster]\nredis = 127.0.0.1:6379\n[cluster]\n", "test.conf:3: duplicate section [cluster]");
}

/* ---- per-pool timeouts, health and circuit thresholds ------------------------------ */

Test(config_pool_tuning, pools_inherit_timeouts_unless_they_say_otherwise)
{
    /* [timeouts] after the pools: inheritance is resolved once the file is read */
    struct config *c = cfgt_load_ok("[pool big]\nbackend = 127.0.0.1:1\nfirst_byte = 120s\nconnect = 500ms\n"
                                    "health_rise = 3\nhealth_fall = 1\ncircuit_failures = 2\n"
                                    "circuit_open = 250ms\ncircuit_open_max = 4s\n"
                                    "[pool small]\nbackend = 127.0.0.1:2\nidle = 5s\n"
                                    "[timeouts]\nconnect = 3s\nfirst_byte = 20s\nidle = 40s\n");
    const struct cfg_pool *big = &c->pools[0], *small = &c->pools[1];
    cr_expect_eq(big->first_byte_ms, 120000);
    cr_expect_eq(big->connect_ms, 500);
    cr_expect_eq(big->idle_ms, 40000);
    cr_expect_eq(small->first_byte_ms, 20000);
    cr_expect_eq(small->connect_ms, 3000);
    cr_expect_eq(small->idle_ms, 5000);
    cr_expect_eq(big->health_rise, 3);
    cr_expect_eq(big->health_fall, 1);
    cr_expect_eq(big->circuit_failures, 2);
    cr_expect_eq(big->circuit_open_ms, 250);
    cr_expect_eq(big->circuit_open_max_ms, 4000);
    /* the defaults: what aigw did before these keys existed */
    cr_expect_eq(small->health_rise, 2);
    cr_expect_eq(small->health_fall, 2);
    cr_expect_eq(small->circuit_failures, 5);
    cr_expect_eq(small->circuit_open_ms, 1000);
    cr_expect_eq(small->circuit_open_max_ms, 30000);
    config_free(c);

    /* a long circuit_open alone carries the ceiling with it */
    c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\ncircuit_open = 2m\n");
    cr_expect_eq(c->pools[0].circuit_open_ms, 120000);
    cr_expect_eq(c->pools[0].circuit_open_max_ms, 120000);
    config_free(c);
}

Test(config_pool_tuning, bad_values_name_their_line)
{
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nfirst_byte = 0s\n",
                      "test.conf:3: invalid value for first_byte: '0s' (expected a duration above zero such as "
                      "500ms, 30s, 5m or 1h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nconnect = soon\n",
                      "test.conf:3: invalid value for connect: 'soon' (expected a duration above zero such as "
                      "500ms, 30s, 5m or 1h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nhealth_rise = 0\n",
                      "test.conf:3: invalid value for health_rise: '0' (expected a number 1-100)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nhealth_fall = 101\n",
                      "test.conf:3: invalid value for health_fall: '101' (expected a number 1-100)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ncircuit_failures = 0\n",
                      "test.conf:3: invalid value for circuit_failures: '0' (expected a number 1-1000)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ncircuit_open = 10ms\n",
                      "test.conf:3: invalid value for circuit_open: '10ms' (expected a duration from 100ms to 1h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ncircuit_open_max = 2h\n",
                      "test.conf:3: invalid value for circuit_open_max: '2h' (expected a duration from 100ms to 1h)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\ncircuit_open_max = 2s\ncircuit_open = 5s\n",
                      "test.conf:4: pool 'p': circuit_open_max (2000 ms) is below circuit_open (5000 ms)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nidle = 1s\nidle = 2s\n",
                      "test.conf:4: duplicate key 'idle' in [pool p]");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nmodel_list = v1/models\n",
                      "test.conf:3: invalid value for model_list: 'v1/models' (expected a path starting with '/', "
                      "or empty for none)");
}

Test(config_pool_tuning, model_list_default_and_off)
{
    struct config *c = cfgt_load_ok("[pool a]\nbackend = 127.0.0.1:1\n[pool b]\nbackend = 127.0.0.1:2\nmodel_list =\n"
                                    "[pool c]\nbackend = 127.0.0.1:3\nmodel_list = /api/models\n");
    cr_expect_str_eq(c->pools[0].model_list_path, "/v1/models");
    cr_expect_str_eq(c->pools[1].model_list_path, "");
    cr_expect_str_eq(c->pools[2].model_list_path, "/api/models");
    char *text = cfgt_print(c);
    cr_expect(strstr(text, "\nmodel_list = /v1/models\n") && strstr(text, "\nmodel_list =\n") &&
                  strstr(text, "\nmodel_list = /api/models\n"),
              "%s", text);
    free(text);
    config_free(c);
}

Test(config_pool_tuning, print_shows_each_pools_effective_values)
{
    struct config *c = cfgt_load_ok("[timeouts]\nfirst_byte = 45s\n"
                                    "[pool big]\nbackend = 127.0.0.1:1\nfirst_byte = 2m\nhealth_fall = 3\n"
                                    "[pool small]\nbackend = 127.0.0.1:2\n");
    char *text = cfgt_print(c);
    static const char *const want[] = {
        "[pool big]\n", "connect = 2s\nfirst_byte = 2m\nidle = 30s\nhealth_rise = 2\nhealth_fall = 3\n"
        "circuit_failures = 5\ncircuit_open = 1s\ncircuit_open_max = 30s\n",
        "connect = 2s\nfirst_byte = 45s\nidle = 30s\nhealth_rise = 2\nhealth_fall = 2\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(strstr(text, want[i]), "missing:\n%s\n--- in ---\n%s", want[i], text);
    struct config *again = cfgt_load_ok(text);
    cr_expect_eq(again->pools[0].first_byte_ms, 120000);
    cr_expect_eq(again->pools[1].first_byte_ms, 45000);
    cr_expect_eq(again->pools[0].health_fall, 3);
    config_free(again);
    free(text);
    config_free(c);
}

Test(config_pool_tuning, prefix_cache_blocks_auto_or_a_number)
{
    struct config *c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\nbalance = prefix\n"
                                    "prefix_cache_blocks = auto\n"
                                    "[pool q]\nbackend = 127.0.0.1:2\nbalance = prefix\n"
                                    "prefix_cache_blocks = 100000\n");
    cr_expect_eq(c->pools[0].prefix_cache_blocks, 0);
    cr_expect_eq(c->pools[1].prefix_cache_blocks, 100000);
    char *text = cfgt_print(c);
    cr_expect(strstr(text, "prefix_cache_blocks = auto\n"), "%s", text);
    cr_expect(strstr(text, "prefix_cache_blocks = 100000\n"), "%s", text);
    free(text);
    config_free(c);
    static const char *const bad[] = { "Auto", "auto1", "0", "15", "1048577", "-1", "4k", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char conf[128], want[256];
        snprintf(conf, sizeof conf, "[pool p]\nbackend = 127.0.0.1:1\nprefix_cache_blocks = %s\n", bad[i]);
        snprintf(want, sizeof want,
                 "test.conf:3: invalid value for prefix_cache_blocks: '%s' (expected auto or a number "
                 "16-1048576 (blocks remembered per backend))", bad[i]);
        cfgt_expect_error(conf, want);
    }
}

Test(config_pool_tuning, prefix_scorer_keys)
{
    struct config *c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\nbalance = prefix\n"
                                    "prefix_hash_kib = 4\nprefix_cache_blocks = 1024\n"
                                    "prefix_weight = 2\nqueue_weight = 0.75\nkv_weight = 0\n"
                                    "[pool q]\nbackend = 127.0.0.1:2\nbalance = prefix\n");
    const struct cfg_pool *p = &c->pools[0], *q = &c->pools[1];
    cr_expect_eq(p->prefix_hash_kib, 4);
    cr_expect_eq(p->prefix_cache_blocks, 1024);
    cr_expect_float_eq(p->prefix_weight, 2.0f, 1e-6);
    cr_expect_float_eq(p->queue_weight, 0.75f, 1e-6);
    cr_expect_float_eq(p->kv_weight, 0.0f, 1e-6);
    /* the defaults (balance.h says why) */
    cr_expect_eq(q->prefix_hash_kib, 16);
    cr_expect_eq(q->prefix_cache_blocks, 0, "auto: from the engine's cache");
    cr_expect_float_eq(q->prefix_weight, BALANCE_PREFIX_WEIGHT, 1e-6);
    cr_expect_float_eq(q->queue_weight, BALANCE_QUEUE_WEIGHT, 1e-6);
    cr_expect_float_eq(q->kv_weight, BALANCE_KV_WEIGHT, 1e-6);
    config_free(c);
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nprefix_hash_kib = 17\n",
                      "test.conf:3: invalid value for prefix_hash_kib: '17' (expected a number 1-16 "
                      "(KiB of prompt hashed))");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nqueue_weight = -1\n",
                      "test.conf:3: invalid value for queue_weight: '-1' (expected a decimal number 0-100000 "
                      "such as 0.5)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nqueue_weight = 100001\n",
                      "test.conf:3: invalid value for queue_weight: '100001' (expected a decimal number 0-100000 "
                      "such as 0.5)");
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nkv_weight = 1e3\n",
                      "test.conf:3: invalid value for kv_weight: '1e3' (expected a decimal number 0-100000 "
                      "such as 0.5)");
}

Test(config_pool_tuning, prefix_index_key)
{
    struct config *c = cfgt_load_ok("[pool p]\nbackend = 127.0.0.1:1\nbalance = prefix\nprefix_index = shared\n"
                                    "[pool q]\nbackend = 127.0.0.1:2\nbalance = prefix\nprefix_index = shard\n"
                                    "[pool r]\nbackend = 127.0.0.1:3\nbalance = prefix\n");
    cr_expect(c->pools[0].prefix_index_shared);
    cr_expect(!c->pools[1].prefix_index_shared);
    cr_expect(c->pools[2].prefix_index_shared, "the default is shared");
    config_free(c);
    cfgt_expect_error("[pool p]\nbackend = 127.0.0.1:1\nprefix_index = global\n",
                      "test.conf:3: invalid value for prefix_index: 'global' (expected shard or shared)");
}
