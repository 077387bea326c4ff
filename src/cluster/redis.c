/* The limits sync thread's Redis link: see redis.h. */
#include "cluster/redis.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* after redis.h: hiredis defines REDIS_OK as 0, the value of our enumerator */
#include <hiredis/hiredis.h>

#include "core/config.h"

/* The lease script. One call applies a whole batch atomically on Redis's clock.
 *   KEYS: host record, hosts zset, then per op: its bucket hash, its day hash
 *   ARGV: seq, host id, then per op OP_ARGS numbers:
 *         requests  per_minute capacity want ret debt
 *         tokens    per_minute capacity want ret debt
 *         daily     limit want ret debt
 *         spend     limit want ret debt (micro-USD), UTC day number
 * Replies {hosts, {req_granted, tok_granted, daily_granted, spend_granted,
 * req_level, tok_level, daily_used, spend_used}, ...}. The reply is also kept in the host record,
 * flat, so that a batch sent again after a lost reply gets it back instead of
 * being applied twice. Numbers are written with string.format: Redis would
 * turn a Lua number into text with 14 digits only. */
#define OP_ARGS 19
#define RESULT_INTS 8
static const char lease_script[] =
    "local host_key, hosts_key = KEYS[1], KEYS[2]\n"
    "local seq, host = ARGV[1], ARGV[2]\n"
    "\n"
    "if redis.call('HGET', host_key, 'seq') == seq then\n"
    "  local stored = redis.call('HGET', host_key, 'reply')\n"
    "  if stored then\n"
    "    local flat = {}\n"
    "    for v in string.gmatch(stored, '[^,]+') do flat[#flat + 1] = tonumber(v) end\n"
    "    local reply = { flat[1] }\n"
    "    for i = 2, #flat - 7, 8 do\n"
    "      reply[#reply + 1] = { flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4], flat[i + 5],\n"
    "                            flat[i + 6], flat[i + 7] }\n"
    "    end\n"
    "    return reply\n"
    "  end\n"
    "end\n"
    "\n"
    "local clock = redis.call('TIME')\n"
    "local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])\n"
    "local function real(x) return string.format('%.17g', x) end\n"
    "local function int(x) return string.format('%.0f', x) end\n"
    "\n"
    "-- One dimension of a bucket hash (level field lf, its time tf): refill by\n"
    "-- the time elapsed, take back ret, charge debt, grant what is whole.\n"
    "-- Returns the grant, the level left, and the ms until the bucket is full.\n"
    "local function lease_rate(key, lf, tf, a)\n"
    "  local per_minute, capacity = tonumber(ARGV[a]), tonumber(ARGV[a + 1])\n"
    "  if per_minute <= 0 then return 0, 0, 0 end\n"
    "  local want, ret, debt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])\n"
    "  local per_us = per_minute / 60e6\n"
    "  local held = redis.call('HMGET', key, lf, tf)\n"
    "  local level = capacity\n"
    "  if held[1] and held[2] then\n"
    "    local elapsed = math.max(0, now - tonumber(held[2]))\n"
    "    level = math.min(capacity, tonumber(held[1]) + elapsed * per_us)\n"
    "  end\n"
    "  level = math.min(capacity, level + ret)\n"
    "  level = math.max(0, level - debt)\n"
    "  local grant = math.max(0, math.min(want, math.floor(level)))\n"
    "  level = level - grant\n"
    "  redis.call('HSET', key, lf, real(level), tf, int(now))\n"
    "  return grant, math.floor(level), (capacity - level) / per_us / 1000\n"
    "end\n"
    "\n"
    "-- A day's allowance in field f of the day hash: tok (tokens) or spend\n"
    "-- (micro-USD).\n"
    "local function lease_daily(key, f, a, day)\n"
    "  local limit = tonumber(ARGV[a])\n"
    "  if limit <= 0 then return 0, 0 end\n"
    "  local want, ret, debt = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "  local used = tonumber(redis.call('HGET', key, f) or '0') or 0\n"
    "  used = math.max(0, used - ret) + debt\n"
    "  local grant = math.max(0, math.min(want, limit - used))\n"
    "  used = used + grant\n"
    "  redis.call('HSET', key, f, int(used))\n"
    "  -- kept until 48 h after the day began: a day's use outlives the day\n"
    "  -- everywhere on earth\n"
    "  redis.call('EXPIREAT', key, int(day * 86400 + 172800))\n"
    "  return grant, used\n"
    "end\n"
    "\n"
    "local flat, reply = {}, {}\n"
    "local nops = (#KEYS - 2) / 2\n"
    "for i = 0, nops - 1 do\n"
    "  local bucket, day_key, a = KEYS[3 + 2 * i], KEYS[4 + 2 * i], 3 + 19 * i  -- 19: OP_ARGS\n"
    "  local rq_grant, rq_level, rq_full = lease_rate(bucket, 'rl', 'rt', a)\n"
    "  local tk_grant, tk_level, tk_full = lease_rate(bucket, 'tl', 'tt', a + 5)\n"
    "  if tonumber(ARGV[a]) > 0 or tonumber(ARGV[a + 5]) > 0 then\n"
    "    redis.call('PEXPIRE', bucket, int(math.ceil(math.max(rq_full, tk_full)) + 60000))\n"
    "  end\n"
    "  local day = tonumber(ARGV[a + 18])\n"
    "  local d_grant, d_used = lease_daily(day_key, 'tok', a + 10, day)\n"
    "  local s_grant, s_used = lease_daily(day_key, 'spend', a + 14, day)\n"
    "  local r = { rq_grant, tk_grant, d_grant, s_grant, rq_level, tk_level, d_used, s_used }\n"
    "  reply[i + 2] = r\n"
    "  for _, v in ipairs(r) do flat[#flat + 1] = int(v) end\n"
    "end\n"
    "\n"
    "redis.call('ZADD', hosts_key, int(now), host)\n"
    "redis.call('ZREMRANGEBYSCORE', hosts_key, '-inf', '(' .. int(now - 10e6))\n"
    "local hosts = redis.call('ZCARD', hosts_key)\n"
    "redis.call('EXPIRE', hosts_key, 60)\n"
    "reply[1] = hosts\n"
    "table.insert(flat, 1, int(hosts))\n"
    "\n"
    "redis.call('HSET', host_key, 'seq', seq, 'reply', table.concat(flat, ','))\n"
    "redis.call('EXPIRE', host_key, 3600)\n"
    "return reply\n";

struct redis_link {
    redisContext *c;
    char addr[96];              /* HOST:PORT as configured, for messages */
    uint64_t timeout_ms;
    char sha[41];               /* of lease_script, as SCRIPT LOAD answered */
    /* The EVALSHA command of the last batch, reused: they grow with the batch. */
    const char **argv;
    size_t *argvlen;
    size_t argv_cap;
    char *text;                 /* the arguments' bytes (key names, numbers) */
    size_t text_cap;
};

const char *redis_error_name(enum redis_error e)
{
    switch (e) {
    case REDIS_OK: return "ok";
    case REDIS_E_CONNECT: return "connect";
    case REDIS_E_TIMEOUT: return "timeout";
    case REDIS_E_AUTH: return "auth";
    case REDIS_E_SCRIPT: return "script";
    case REDIS_E_PROTOCOL: return "protocol";
    case REDIS_E_COUNT: break;
    }
    return "unknown";
}

struct redis_link *redis_link_new(void)
{
    struct redis_link *r = calloc(1, sizeof(struct redis_link));
    if (r)
        snprintf(r->addr, sizeof r->addr, "(never connected)");
    return r;
}

void redis_link_close(struct redis_link *r)
{
    if (r->c) {
        redisFree(r->c);
        r->c = NULL;
    }
}

void redis_link_free(struct redis_link *r)
{
    if (!r)
        return;
    redis_link_close(r);
    free(r->argv);
    free(r->argvlen);
    free(r->text);
    free(r);
}

bool redis_link_connected(const struct redis_link *r)
{
    return r->c != NULL;
}

/* Every failure closes the link: the caller reconnects (with its backoff). */
static enum redis_error fail(struct redis_link *r, enum redis_error e, char *err, size_t errlen, const char *fmt,
                             ...) __attribute__((format(printf, 5, 6)));
static enum redis_error fail(struct redis_link *r, enum redis_error e, char *err, size_t errlen, const char *fmt,
                             ...)
{
    if (errlen) {
        int n = snprintf(err, errlen, "redis %s: ", r->addr);
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    redis_link_close(r);
    return e;
}

/* What hiredis reported when a command got no reply. A read that hit
 * SO_RCVTIMEO comes back as EAGAIN ("Resource temporarily unavailable"). */
static enum redis_error io_failure(struct redis_link *r, const char *what, char *err, size_t errlen)
{
    const redisContext *c = r->c;
    if (c->err == REDIS_ERR_IO &&
        (!strcmp(c->errstr, strerror(EAGAIN)) || !strcmp(c->errstr, strerror(EWOULDBLOCK)) ||
         !strcmp(c->errstr, strerror(ETIMEDOUT))))
        return fail(r, REDIS_E_TIMEOUT, err, errlen, "no reply to %s within %" PRIu64 "ms", what, r->timeout_ms);
    if (c->err == REDIS_ERR_EOF)
        return fail(r, REDIS_E_PROTOCOL, err, errlen, "connection closed by the server during %s", what);
    return fail(r, REDIS_E_PROTOCOL, err, errlen, "%s failed: %s", what, c->errstr[0] ? c->errstr : "I/O error");
}

static bool starts_with(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

static bool is_auth_error(const char *s)
{
    return starts_with(s, "NOAUTH") || starts_with(s, "WRONGPASS") || strstr(s, "password");
}

/* A server's error text with the password masked, in case some server
 * version echoes what it was sent. */
static void copy_masked(char *out, size_t cap, const char *s, const char *secret)
{
    size_t n = strlen(secret), o = 0;
    while (*s && o + 1 < cap) {
        if (n && !strncmp(s, secret, n)) {
            for (int k = 0; k < 3 && o + 1 < cap; k++)
                out[o++] = '*';
            s += n;
        } else {
            out[o++] = *s++;
        }
    }
    out[o] = '\0';
}

static enum redis_error load_script(struct redis_link *r, char *err, size_t errlen)
{
    const char *argv[] = { "SCRIPT", "LOAD", lease_script };
    const size_t len[] = { 6, 4, sizeof lease_script - 1 };
    redisReply *rep = redisCommandArgv(r->c, 3, argv, len);
    if (!rep)
        return io_failure(r, "SCRIPT LOAD", err, errlen);
    enum redis_error e = REDIS_OK;
    if (rep->type == REDIS_REPLY_ERROR)
        e = fail(r, is_auth_error(rep->str) ? REDIS_E_AUTH : REDIS_E_SCRIPT, err, errlen,
                 "SCRIPT LOAD refused: %s", rep->str);
    else if (rep->type != REDIS_REPLY_STRING || rep->len != 40)
        e = fail(r, REDIS_E_PROTOCOL, err, errlen, "SCRIPT LOAD: unexpected reply (type %d)", rep->type);
    else
        memcpy(r->sha, rep->str, 41);
    freeReplyObject(rep);
    return e;
}

static enum redis_error authenticate(struct redis_link *r, const struct cfg_cluster *cl, char *err, size_t errlen)
{
    const char *argv[3] = { "AUTH" };
    size_t len[3] = { 4 };
    int argc = 1;
    if (cl->username[0]) {
        argv[argc] = cl->username;
        len[argc++] = strlen(cl->username);
    }
    argv[argc] = cl->password;
    len[argc++] = strlen(cl->password);
    redisReply *rep = redisCommandArgv(r->c, argc, argv, len);
    if (!rep)
        return io_failure(r, "AUTH", err, errlen);
    enum redis_error e = REDIS_OK;
    if (rep->type == REDIS_REPLY_ERROR) {
        char said[256];
        copy_masked(said, sizeof said, rep->str, cl->password);
        /* not every refusal is about the credentials (e.g. max clients reached) */
        e = fail(r, is_auth_error(rep->str) ? REDIS_E_AUTH : REDIS_E_PROTOCOL, err, errlen, "AUTH refused%s%s: %s",
                 cl->username[0] ? " for user " : "", cl->username, said);
    } else if (rep->type != REDIS_REPLY_STATUS) {
        e = fail(r, REDIS_E_PROTOCOL, err, errlen, "AUTH: unexpected reply (type %d)", rep->type);
    }
    freeReplyObject(rep);
    return e;
}

enum redis_error redis_link_connect(struct redis_link *r, const struct cfg_cluster *cl, char *err, size_t errlen)
{
    redis_link_close(r);
    snprintf(r->addr, sizeof r->addr, "%.*s", (int)sizeof r->addr - 1, cl->redis.text);  /* numeric: short */
    r->timeout_ms = cl->timeout_ms;
    char host[NI_MAXHOST], port[NI_MAXSERV];
    int gai = getnameinfo((const struct sockaddr *)&cl->redis.sa, cl->redis.salen, host, sizeof host, port,
                          sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
    if (gai)
        return fail(r, REDIS_E_CONNECT, err, errlen, "unusable address: %s", gai_strerror(gai));
    struct timeval tv = { .tv_sec = (time_t)(cl->timeout_ms / 1000),
                          .tv_usec = (suseconds_t)(cl->timeout_ms % 1000 * 1000) };
    redisContext *c = redisConnectWithTimeout(host, atoi(port), tv);
    if (!c)
        return fail(r, REDIS_E_CONNECT, err, errlen, "cannot connect: out of memory");
    if (c->err) {
        enum redis_error e = fail(r, REDIS_E_CONNECT, err, errlen, "cannot connect: %s", c->errstr);
        redisFree(c);
        return e;
    }
    r->c = c;
    if (redisSetTimeout(c, tv) != REDIS_OK || redisEnableKeepAlive(c) != REDIS_OK)
        return fail(r, REDIS_E_CONNECT, err, errlen, "cannot set socket options: %s", c->errstr);
    if (cl->password[0]) {
        enum redis_error e = authenticate(r, cl, err, errlen);
        if (e)
            return e;
    }
    return load_script(r, err, errlen);
}

/* ---- a batch's EVALSHA command ---- */

static bool ensure_capacity(struct redis_link *r, size_t argc, size_t text)
{
    if (argc > r->argv_cap) {
        const char **argv = realloc(r->argv, argc * sizeof *argv);
        if (!argv)
            return false;
        r->argv = argv;
        size_t *len = realloc(r->argvlen, argc * sizeof *len);
        if (!len)
            return false;
        r->argvlen = len;
        r->argv_cap = argc;
    }
    if (text > r->text_cap) {
        char *t = realloc(r->text, text);
        if (!t)
            return false;
        r->text = t;
        r->text_cap = text;
    }
    return true;
}

struct command_builder {
    struct redis_link *r;
    size_t argc, used;
};

/* Appends one argument; the capacity was reserved for all of them. */
static void add_arg(struct command_builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_arg(struct command_builder *b, const char *fmt, ...)
{
    char *at = b->r->text + b->used;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(at, b->r->text_cap - b->used, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= b->r->text_cap - b->used)   /* cannot happen: sized in build_command */
        n = (int)(b->r->text_cap - b->used - 1);
    b->r->argv[b->argc] = at;
    b->r->argvlen[b->argc++] = (size_t)n;
    b->used += (size_t)n + 1;
}

static int64_t nonneg(int64_t v)
{
    return v > 0 ? v : 0;
}

#define DAY_TEXT_MAX 40   /* YYYYMMDD, or a wider year for a nonsense day */

/* YYYYMMDD of a UTC day number. */
static void day_digits(int64_t day, char out[DAY_TEXT_MAX])
{
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(out, DAY_TEXT_MAX, "00000000");
        return;
    }
    snprintf(out, DAY_TEXT_MAX, "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

#define NUM_MAX 24   /* a formatted 64-bit number and its NUL */

static bool build_command(struct redis_link *r, const char *prefix, uint64_t host_id, uint64_t seq,
                          const struct lease_op *ops, size_t n, size_t *argc_out)
{
    size_t plen = strlen(prefix);
    size_t argc = 3 + 2 + 2 * n + 2 + OP_ARGS * n;
    size_t text = 4 * NUM_MAX + 2 * (plen + 8) + NUM_MAX;
    for (size_t i = 0; i < n; i++)
        text += 2 * (plen + strlen(ops[i].name)) + sizeof "rl:" + sizeof "day::" + DAY_TEXT_MAX + OP_ARGS * NUM_MAX;
    if (!ensure_capacity(r, argc, text))
        return false;

    struct command_builder b = { .r = r };
    r->argv[b.argc] = "EVALSHA";
    r->argvlen[b.argc++] = 7;
    r->argv[b.argc] = r->sha;
    r->argvlen[b.argc++] = 40;
    add_arg(&b, "%zu", 2 + 2 * n);
    add_arg(&b, "%shost:%" PRIx64, prefix, host_id);
    add_arg(&b, "%shosts", prefix);
    for (size_t i = 0; i < n; i++) {
        char day[DAY_TEXT_MAX];
        day_digits(ops[i].day, day);
        add_arg(&b, "%srl:%s", prefix, ops[i].name);
        add_arg(&b, "%sday:%s:%s", prefix, day, ops[i].name);
    }
    add_arg(&b, "%" PRIu64, seq);
    add_arg(&b, "%" PRIx64, host_id);
    for (size_t i = 0; i < n; i++) {
        const struct lease_op *op = &ops[i];
        for (int d = 0; d < 2; d++) {
            const struct lease_rate_op *q = &op->rate[d];
            add_arg(&b, "%" PRIu64, q->per_minute);
            add_arg(&b, "%" PRId64, nonneg(q->capacity));
            add_arg(&b, "%" PRId64, nonneg(q->want));
            add_arg(&b, "%" PRId64, nonneg(q->ret));
            add_arg(&b, "%" PRId64, nonneg(q->debt));
        }
        add_arg(&b, "%" PRId64, nonneg(op->daily.limit));
        add_arg(&b, "%" PRId64, nonneg(op->daily.want));
        add_arg(&b, "%" PRId64, nonneg(op->daily.ret));
        add_arg(&b, "%" PRId64, nonneg(op->daily.debt));
        add_arg(&b, "%" PRId64, nonneg(op->spend.limit));
        add_arg(&b, "%" PRId64, nonneg(op->spend.want));
        add_arg(&b, "%" PRId64, nonneg(op->spend.ret));
        add_arg(&b, "%" PRId64, nonneg(op->spend.debt));
        add_arg(&b, "%" PRId64, op->day);
    }
    *argc_out = b.argc;
    return true;
}

static bool is_int(const redisReply *e)
{
    return e && e->type == REDIS_REPLY_INTEGER;
}

/* {hosts, {RESULT_INTS integers} per op}; false if the reply has another shape. */
static bool read_reply(const redisReply *rep, size_t n, struct lease_result *out, uint32_t *hosts)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != n + 1 || !is_int(rep->element[0]) ||
        rep->element[0]->integer < 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = rep->element[i + 1];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != RESULT_INTS)
            return false;
        for (size_t k = 0; k < RESULT_INTS; k++)
            if (!is_int(e->element[k]))
                return false;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply **v = rep->element[i + 1]->element;
        out[i] = (struct lease_result){
            .granted = { v[0]->integer, v[1]->integer, v[2]->integer, v[3]->integer },
            .req_level = v[4]->integer,
            .tok_level = v[5]->integer,
            .daily_used = v[6]->integer,
            .spend_used = v[7]->integer,
        };
    }
    long long h = rep->element[0]->integer;
    *hosts = h > UINT32_MAX ? UINT32_MAX : (uint32_t)h;
    return true;
}

enum redis_error redis_sync(struct redis_link *r, const char *prefix, uint64_t host_id, uint64_t seq,
                            const struct lease_op *ops, size_t n, struct lease_result *out, uint32_t *hosts,
                            char *err, size_t errlen)
{
    if (!r->c)
        return fail(r, REDIS_E_CONNECT, err, errlen, "not connected");
    size_t argc;
    if (!build_command(r, prefix, host_id, seq, ops, n, &argc))
        return fail(r, REDIS_E_PROTOCOL, err, errlen, "out of memory building a batch of %zu keys", n);

    redisReply *rep = NULL;
    /* Redis forgets scripts when it restarts or on SCRIPT FLUSH: load it again, once. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rep = redisCommandArgv(r->c, (int)argc, r->argv, r->argvlen);
        if (!rep)
            return io_failure(r, "the lease script", err, errlen);
        if (rep->type != REDIS_REPLY_ERROR || !starts_with(rep->str, "NOSCRIPT") || attempt == 1)
            break;
        freeReplyObject(rep);
        rep = NULL;
        enum redis_error e = load_script(r, err, errlen);
        if (e)
            return e;
    }

    enum redis_error e = REDIS_OK;
    if (rep->type == REDIS_REPLY_ERROR)
        e = fail(r, is_auth_error(rep->str) ? REDIS_E_AUTH : REDIS_E_SCRIPT, err, errlen,
                 "the lease script failed: %s", rep->str);
    else if (!read_reply(rep, n, out, hosts))
        e = fail(r, REDIS_E_PROTOCOL, err, errlen,
                 "the lease script's reply has an unexpected shape (type %d, %zu elements for %zu keys)",
                 rep->type, rep->type == REDIS_REPLY_ARRAY ? rep->elements : (size_t)0, n);
    freeReplyObject(rep);
    return e;
}

enum redis_error redis_leave(struct redis_link *r, const char *prefix, uint64_t host_id, char *err,
                             size_t errlen)
{
    if (!r->c)
        return fail(r, REDIS_E_CONNECT, err, errlen, "not connected");
    char hosts[128], id[32];
    snprintf(hosts, sizeof hosts, "%shosts", prefix);
    snprintf(id, sizeof id, "%" PRIx64, host_id);
    const char *argv[] = { "ZREM", hosts, id };
    size_t argvlen[] = { 4, strlen(hosts), strlen(id) };
    redisReply *rep = redisCommandArgv(r->c, 3, argv, argvlen);
    if (!rep)
        return io_failure(r, "ZREM of this host", err, errlen);
    enum redis_error e = REDIS_OK;
    if (rep->type == REDIS_REPLY_ERROR)
        e = fail(r, is_auth_error(rep->str) ? REDIS_E_AUTH : REDIS_E_PROTOCOL, err, errlen,
                 "ZREM of this host failed: %s", rep->str);
    freeReplyObject(rep);
    return e;
}
