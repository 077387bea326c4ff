/* Configuration loader: inih does the INI tokenising; everything else is here.
 *
 * Debian's inih has no line numbers in the handler and a 200-byte line buffer, so
 * lines come through our own reader: it counts them (the handler reports errors
 * at ctx->lineno, which is the line inih is processing), rejects over-long lines
 * instead of letting inih split them into pieces, and sees section headers
 * itself, because inih never calls the handler for a section without keys
 * (an empty "[pool x]" or an unknown "[tls]" must still be reported). */
#include "core/config.h"
#include "core/config_tls.h"
#include "policy/balance.h"  /* the prefix scorer's defaults */
#include "policy/glob.h"
#include "policy/keys.h"
#include "proto/openai.h"     /* OPENAI_PREFIX_BLOCK: prefix_hash_kib's bound */

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest accepted line, newline excluded. */
#define CFG_LINE_MAX 1024
/* Bounds that keep absurd files from costing absurd time (checks are quadratic). */
#define CFG_MAX_POOLS 1024
#define CFG_MAX_ROUTES 1024
#define CFG_MAX_BACKENDS 1024          /* per pool */
#define CFG_MAX_TIERS 1024
#define CFG_MAX_MODELS 1024
#define CFG_DURATION_MAX_MS (366ULL * 24 * 3600 * 1000)

enum section_kind {
    SEC_NONE, SEC_SERVER, SEC_ADMIN, SEC_TLS, SEC_TIMEOUTS, SEC_LOG, SEC_POOL, SEC_ROUTE,
    SEC_KEYS, SEC_TIER, SEC_CLUSTER, SEC_MODEL, SEC_TRACING, SEC_COUNT
};

/* Pool names as written, resolved once the whole file is read (pools may come
 * after the routes that use them). */
struct pending_route {
    char pool[CFG_NAME_MAX];
    int pool_line;
    char split[CFG_MAX_SPLIT][CFG_NAME_MAX];    /* parallel to cfg_route.split */
    int split_line;
};

/* A pool's fallback as written, resolved once the whole file is read (the pool it
 * names may come later). */
struct pending_pool {
    char fallback[CFG_NAME_MAX];    /* empty: none */
    int fallback_line;
    int tls_server_name_line;       /* for "tls_server_name needs tls = on" */
    int circuit_open_line, circuit_open_max_line; /* 0: not written */
};

struct load_ctx {
    struct config *c;
    const char *name;           /* file name for messages */

    /* line source: a FILE, or an in-memory text */
    FILE *file;
    const char *text;
    size_t text_pos, text_len;
    int lineno;

    bool failed;
    int err_line;
    char *err;
    size_t errlen;

    enum section_kind sec;
    int sec_line;
    char sec_text[96];          /* "pool gpu-a", for messages */
    uint32_t seen_keys;         /* bit per key of the current section's table */
    bool section_seen[SEC_COUNT];

    unsigned pool_cap, route_cap, backend_cap, tier_cap, model_cap;
    struct pending_route *pending;  /* parallel to c->routes */
    struct pending_pool *pending_pools; /* parallel to c->pools */
    bool listen_configured;
    bool admin_configured;
    bool tls_cert_waits_for_key;    /* [tls]: the last cert has no key yet */
};

/* ---- errors ---------------------------------------------------------------- */

/* file: the file the message is about (the config, or the keys file). */
static void vfail_in(struct load_ctx *x, const char *file, int line, const char *fmt, va_list ap)
{
    if (x->failed)
        return;
    x->failed = true;
    x->err_line = line;
    if (!x->err || x->errlen == 0)
        return;
    int n = line > 0 ? snprintf(x->err, x->errlen, "%s:%d: ", file, line)
                     : snprintf(x->err, x->errlen, "%s: ", file);
    if (n >= 0 && (size_t)n < x->errlen)
        vsnprintf(x->err + n, x->errlen - (size_t)n, fmt, ap);
}

/* Messages echo bytes of the file (values, keys, a binary file's first line) and
 * go to a terminal: control bytes could drive it and stray bytes garble it, so
 * both are shown as \xNN. Every byte above 0x7f is escaped too, which keeps the
 * message plain ASCII without deciding what is valid UTF-8; the names aigw
 * accepts are ASCII. Truncates rather than cut an escape in half. */
static void escape_message(char *err, size_t errlen)
{
    if (!err || errlen == 0)
        return;
    char out[1024];
    size_t cap = errlen < sizeof out ? errlen : sizeof out, o = 0;
    for (const unsigned char *p = (const unsigned char *)err; *p; p++) {
        bool plain = *p >= 0x20 && *p < 0x7f;
        size_t need = plain ? 1 : 4;
        if (o + need >= cap)
            break;
        if (plain)
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", *p);
    }
    out[o] = '\0';
    memcpy(err, out, o + 1);
}

static void vfail_at(struct load_ctx *x, int line, const char *fmt, va_list ap)
{
    vfail_in(x, x->name, line, fmt, ap);
}

__attribute__((format(printf, 4, 5)))
static int fail_in(struct load_ctx *x, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_in(x, file, line, fmt, ap);
    va_end(ap);
    return -1;
}

__attribute__((format(printf, 3, 4)))
static int fail_at(struct load_ctx *x, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(x, line, fmt, ap);
    va_end(ap);
    return -1;
}

/* The common case: an error on the line being parsed. */
__attribute__((format(printf, 2, 3)))
static int fail(struct load_ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(x, x->lineno, fmt, ap);
    va_end(ap);
    return -1;
}

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static int bad_value(struct load_ctx *x, const char *key, const char *value, const char *expected)
{
    if (strncmp(expected, "a duration", 10) == 0 && all_digits(value) && strspn(value, "0") < strlen(value))
        return fail(x, "invalid value for %s: '%s' has no unit: add one (ms, s, m, h), such as %sms or %ss",
                    key, value, value, value);
    return fail(x, "invalid value for %s: '%s' (expected %s)", key, value, expected);
}

/* Levenshtein distance of two short names, capped at 9 (enough to rank "did
 * you mean" candidates; longer names are never close). */
static unsigned name_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 9;
    unsigned row[41];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned diag = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned up = row[j];
            unsigned best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb] > 9 ? 9 : row[lb];
}

/* The closest of names (NULL-terminated, every `stride` bytes) to word when it
 * is a likely typo of it: one edit in a short word, two in a longer one. */
static const char *closest_name(const char *word, const void *names, size_t stride)
{
    const char *best = NULL;
    unsigned best_d = 3;
    for (const char *const *n = names; *n; n = (const char *const *)((const char *)n + stride)) {
        unsigned d = name_distance(word, *n);
        if (d < best_d && d <= (strlen(word) <= 4 ? 1u : 2u)) {
            best = *n;
            best_d = d;
        }
    }
    return best;
}

/* ---- value parsers ------------------------------------------------------------ */

/* Decimal digits only: no sign, no spaces, no base prefixes. *end gets the first
 * non-digit. Fails on no digits or overflow. */
static int parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return -1;
    *out = v;
    *end = p;
    return 0;
}

static int parse_uint_range(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    const char *end;
    if (parse_digits(s, &v, &end) < 0 || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int config_parse_duration_ms(const char *s, uint64_t *out)
{
    uint64_t v, mult;
    const char *unit;
    if (!s || parse_digits(s, &v, &unit) < 0)
        return -1;
    /* a bare number means milliseconds to HAProxy users and seconds to nginx
     * users: only 0, the same in every unit, goes without one */
    if (*unit == '\0' && v != 0)
        return -1;
    if (strcmp(unit, "ms") == 0 || *unit == '\0')
        mult = 1;
    else if (strcmp(unit, "s") == 0)
        mult = 1000;
    else if (strcmp(unit, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(unit, "h") == 0)
        mult = 3600 * 1000;
    else
        return -1;
    if (v > CFG_DURATION_MAX_MS / mult)
        return -1;
    *out = v * mult;
    return 0;
}

int config_parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *unit;
    unsigned shift;
    if (!s || parse_digits(s, &v, &unit) < 0)
        return -1;
    switch (*unit) {
    case '\0': shift = 0; break;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    default: return -1;
    }
    if (*unit && unit[1])
        return -1;
    if (v > (UINT64_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

/* RFC 1123 host name characters; checked before getaddrinfo so garbage never
 * becomes a DNS query. */
static bool valid_hostname(const char *h, size_t len)
{
    if (len == 0 || len > 253 || h[0] == '-' || h[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (!isalnum(ch) && ch != '-' && ch != '.' && ch != '_')
            return false;
    }
    /* an all-digit last label is a mistyped address ("256.1.1.1"), not a name */
    size_t end = h[len - 1] == '.' ? len - 1 : len, i = end;
    while (i > 0 && h[i - 1] != '.')
        i--;
    for (size_t k = i; k < end; k++)
        if (!isdigit((unsigned char)h[k]))
            return true;
    return false;
}

static int format_addr(struct cfg_addr *a)
{
    char host[NI_MAXHOST];
    if (getnameinfo((struct sockaddr *)&a->sa, a->salen, host, sizeof host, NULL, 0,
                    NI_NUMERICHOST) != 0)
        return -1;
    unsigned port = a->sa.ss_family == AF_INET6
                        ? ntohs(((struct sockaddr_in6 *)&a->sa)->sin6_port)
                        : ntohs(((struct sockaddr_in *)&a->sa)->sin_port);
    int n = a->sa.ss_family == AF_INET6
                ? snprintf(a->text, sizeof a->text, "[%s]:%u", host, port)
                : snprintf(a->text, sizeof a->text, "%s:%u", host, port);
    return n > 0 && (size_t)n < sizeof a->text ? 0 : -1;
}

/* why (may be NULL) gets a short reason for messages. */
static int parse_addr(const char *s, struct cfg_addr *out, char *why, size_t whylen)
{
    char host[256];
    const char *colon;
    size_t hostlen;
    bool bracketed = false;

    if (why && whylen)
        why[0] = '\0';
    if (!s || !*s)
        return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -1;
        bracketed = true;
        hostlen = (size_t)(close - s - 1);
        memcpy(host, s + 1, hostlen < sizeof host ? hostlen : 0);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen))        /* bare IPv6 needs brackets */
            return -1;
        memcpy(host, s, hostlen < sizeof host ? hostlen : 0);
    }
    if (hostlen == 0 || hostlen >= sizeof host)
        return -1;
    host[hostlen] = '\0';

    uint64_t port;
    if (parse_uint_range(colon + 1, 1, 65535, &port) < 0)
        return -1;

    struct cfg_addr a;
    memset(&a, 0, sizeof a);
    if (!bracketed && strcmp(host, "*") == 0) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a.sa;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port);
        a.salen = sizeof *sin;
    } else {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_socktype = SOCK_STREAM;
        if (bracketed) {
            hints.ai_family = AF_INET6;
            hints.ai_flags = AI_NUMERICHOST;
        } else {
            struct in_addr v4;
            if (inet_pton(AF_INET, host, &v4) == 1) {
                hints.ai_family = AF_INET;
                hints.ai_flags = AI_NUMERICHOST;
            } else {
                /* inet_aton's legacy forms ("10.1", "0x7f.1") are typos far more
                 * often than intent, and getaddrinfo would quietly accept them */
                if (!valid_hostname(host, hostlen) || inet_aton(host, &v4) != 0)
                    return -1;
                hints.ai_family = AF_UNSPEC;
            }
        }
        int rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0 || !res) {
            if (why && whylen && !(hints.ai_flags & AI_NUMERICHOST))
                snprintf(why, whylen, "cannot resolve '%s': %s", host,
                         rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
            if (res)
                freeaddrinfo(res);
            return -1;
        }
        if (res->ai_addrlen > sizeof a.sa) {
            freeaddrinfo(res);
            return -1;
        }
        memcpy(&a.sa, res->ai_addr, res->ai_addrlen);
        a.salen = res->ai_addrlen;
        freeaddrinfo(res);
        if (a.sa.ss_family == AF_INET)
            ((struct sockaddr_in *)&a.sa)->sin_port = htons((uint16_t)port);
        else if (a.sa.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&a.sa)->sin6_port = htons((uint16_t)port);
        else
            return -1;
    }
    if (format_addr(&a) < 0)
        return -1;
    *out = a;
    return 0;
}

int config_parse_addr(const char *s, struct cfg_addr *out)
{
    return parse_addr(s, out, NULL, 0);
}

/* Same address family, address and port (and IPv6 scope): two spellings of one
 * backend ("localhost:8000", "127.0.0.1:8000") are the same backend. */
static bool sockaddr_same(const struct cfg_addr *a, const struct cfg_addr *b)
{
    if (a->sa.ss_family != b->sa.ss_family)
        return false;
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->sa, *y = (const void *)&b->sa;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)&a->sa, *y = (const void *)&b->sa;
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

static bool addr_equal(const struct cfg_addr *a, const struct cfg_addr *b)
{
    /* text is normalised from the numeric address, port and scope */
    return strcmp(a->text, b->text) == 0;
}

static int set_addr(struct load_ctx *x, const char *key, const char *value, struct cfg_addr *out)
{
    char why[512];
    if (parse_addr(value, out, why, sizeof why) < 0) {
        if (why[0])
            return fail(x, "invalid value for %s: '%s' (%s)", key, value, why);
        return bad_value(x, key, value, "HOST:PORT, [IPv6]:PORT or *:PORT with port 1-65535");
    }
    out->line = x->lineno;
    return 0;
}

/* Pool and route names end up in metric labels and logs: keep them plain. */
static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || len >= CFG_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return false;
    }
    return true;
}

/* Values that go into a request line, a header or a cipher list: a space or control byte
 * could split them. */
static bool has_space_or_control(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v <= 0x20 || *v == 0x7f)
            return true;
    return false;
}

/* Every file the configuration names (keys, certificates, CAs): a relative path
 * is taken from the directory of the configuration file (the current directory
 * when its name has none), so the file means the same wherever aigw starts.
 * Empty stays empty. Control bytes would garble the messages that name the file. */
static int set_path(struct load_ctx *x, const char *key, const char *value, char *dst, size_t cap)
{
    size_t len = strlen(value), dirlen = 0;
    for (const char *p = value; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return fail(x, "invalid value for %s: control character in path", key);
    if (len && value[0] != '/') {
        const char *slash = strrchr(x->name, '/');
        if (slash)
            dirlen = (size_t)(slash - x->name) + 1;
    }
    if (dirlen + len >= cap)
        return fail(x, "invalid value for %s: path too long", key);
    memcpy(dst, x->name, dirlen);
    memcpy(dst + dirlen, value, len + 1);
    return 0;
}

/* Sections and repeatable keys fill tables that double as they go: cap is
 * the new capacity (next_cap), *table is replaced only on success. */
static unsigned next_cap(unsigned cap)
{
    return cap ? cap * 2 : 4;
}

static bool table_grow(void *table, unsigned cap, size_t elem)
{
    void **t = table;
    void *grown = realloc(*t, (size_t)cap * elem);
    if (!grown)
        return false;
    *t = grown;
    return true;
}

/* A value that is one word (upstream_auth, Redis AUTH arguments, key
 * prefixes): they go out as a header value or as binary-safe Redis strings,
 * but a line of the file cannot carry a newline and a space would be
 * ambiguous to the reader. */
static int set_word(struct load_ctx *x, const char *key, const char *value, char *out, size_t cap)
{
    size_t len = strlen(value);
    if (len >= cap)
        return fail(x, "invalid value for %s: too long (at most %zu characters)", key, cap - 1);
    if (has_space_or_control(value))
        return fail(x, "invalid value for %s: must not contain spaces or control characters", key);
    memcpy(out, value, len + 1);
    return 0;
}

static int parse_on_off(struct load_ctx *x, const char *key, const char *value, bool *out)
{
    if (strcmp(value, "on") == 0)
        *out = true;
    else if (strcmp(value, "off") == 0)
        *out = false;
    else
        return bad_value(x, key, value, "on or off");
    return 0;
}

/* ---- [server] ---------------------------------------------------------------- */

/* Defaults ([server] 0.0.0.0:8080, [admin] 127.0.0.1:9090) may still be replaced
 * later in the file: they are compared in finish(). */
static int check_listener_unique(struct load_ctx *x, const struct cfg_addr *a, bool is_admin)
{
    struct config *c = x->c;
    for (unsigned i = 0; i < c->tls.nlisten; i++)
        if (addr_equal(&c->tls.listen[i], a))
            return fail(x, "duplicate listener %s (already on line %d)", a->text,
                        c->tls.listen[i].line);
    if (x->listen_configured) {
        for (unsigned i = 0; i < c->server.nlisten; i++)
            if (addr_equal(&c->server.listen[i], a))
                return fail(x, "duplicate listener %s (already on line %d)", a->text,
                            c->server.listen[i].line);
    }
    if (!is_admin && x->admin_configured && c->admin.enabled && addr_equal(&c->admin.listen, a))
        return fail(x, "duplicate listener %s (already on line %d)", a->text,
                    c->admin.listen.line);
    return 0;
}

static int server_listen(struct load_ctx *x, const char *key, const char *value)
{
    struct config *c = x->c;
    struct cfg_addr a;
    if (set_addr(x, key, value, &a) < 0 || check_listener_unique(x, &a, false) < 0)
        return -1;
    if (!x->listen_configured) {
        x->listen_configured = true;
        c->server.nlisten = 0;          /* drop the default */
    }
    if (c->server.nlisten == CFG_MAX_LISTEN)
        return fail(x, "too many listen addresses in [server] (at most %d)", CFG_MAX_LISTEN);
    c->server.listen[c->server.nlisten++] = a;
    return 0;
}

static int server_shards(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (strcmp(value, "auto") == 0)
        v = 0;
    else if (parse_uint_range(value, 1, 256, &v) < 0)
        return bad_value(x, key, value, "auto or a number 1-256");
    x->c->server.shards = (unsigned)v;
    return 0;
}

static int server_max_connections(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 1, 10000000, &v) < 0)
        return bad_value(x, key, value, "a number 1-10000000");
    x->c->server.max_connections = (unsigned)v;
    return 0;
}

static int server_max_body(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (config_parse_size(value, &v) < 0 || v > SIZE_MAX)
        return bad_value(x, key, value, "a size such as 512k, 1m or 2g");
    x->c->server.max_body = (size_t)v;
    return 0;
}

static int server_max_header(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (config_parse_size(value, &v) < 0 || v < 1024 || v > 65536)
        return bad_value(x, key, value, "a size from 1k to 64k");
    x->c->server.max_header = (size_t)v;
    return 0;
}

static int server_drain_timeout(struct load_ctx *x, const char *key, const char *value)
{
    if (config_parse_duration_ms(value, &x->c->server.drain_timeout_ms) < 0)
        return bad_value(x, key, value, "a duration such as 500ms, 30s, 5m or 1h");
    return 0;
}

static int server_state_dir(struct load_ctx *x, const char *key, const char *value)
{
    x->c->server.state_dir_line = x->lineno;
    if (value[0] == '\0') {
        x->c->server.state_dir[0] = '\0';
        return 0;
    }
    return set_path(x, key, value, x->c->server.state_dir, sizeof x->c->server.state_dir);
}

/* ---- [admin] ----------------------------------------------------------------- */

static int admin_listen(struct load_ctx *x, const char *key, const char *value)
{
    struct config *c = x->c;
    x->admin_configured = true;
    if (value[0] == '\0' || strcmp(value, "off") == 0) {
        c->admin.enabled = false;
        return 0;
    }
    struct cfg_addr a;
    if (set_addr(x, key, value, &a) < 0 || check_listener_unique(x, &a, true) < 0)
        return -1;
    c->admin.enabled = true;
    c->admin.listen = a;
    return 0;
}

static int admin_token(struct load_ctx *x, const char *key, const char *value)
{
    return set_word(x, key, value, x->c->admin.token, sizeof x->c->admin.token);
}

/* ---- [tls] ------------------------------------------------------------------- */

static int tls_listen(struct load_ctx *x, const char *key, const char *value)
{
    struct config *c = x->c;
    struct cfg_addr a;
    if (set_addr(x, key, value, &a) < 0 || check_listener_unique(x, &a, false) < 0)
        return -1;
    if (c->tls.nlisten == CFG_MAX_LISTEN)
        return fail(x, "too many listen addresses in [tls] (at most %d)", CFG_MAX_LISTEN);
    c->tls.listen[c->tls.nlisten++] = a;
    c->tls.opts.enabled = true;
    return 0;
}

/* Certificates and keys pair up in file order: each cert, then its key. */
static int tls_cert_has_no_key(struct load_ctx *x)
{
    const struct cfg_tls_cert *open = &x->c->tls.opts.certs[x->c->tls.opts.ncerts - 1];
    return fail_at(x, open->cert_line, "cert %s has no key (each cert must be followed by its key)",
                   open->cert);
}

static int tls_cert(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tls *t = &x->c->tls.opts;
    if (x->tls_cert_waits_for_key)
        return tls_cert_has_no_key(x);
    if (value[0] == '\0')
        return bad_value(x, key, value, "the path of a PEM certificate chain");
    if (t->ncerts == TLS_MAX_CERTS)
        return fail(x, "too many certificates in [tls] (at most %d)", TLS_MAX_CERTS);
    struct cfg_tls_cert *cert = &t->certs[t->ncerts];
    if (set_path(x, key, value, cert->cert, sizeof cert->cert) < 0)
        return -1;
    cert->cert_line = x->lineno;
    t->ncerts++;
    x->tls_cert_waits_for_key = true;
    return 0;
}

static int tls_key(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tls *t = &x->c->tls.opts;
    if (!x->tls_cert_waits_for_key)
        return fail(x, "key without a cert (each key must follow its cert)");
    if (value[0] == '\0')
        return bad_value(x, key, value, "the path of the PEM private key of the cert above");
    struct cfg_tls_cert *cert = &t->certs[t->ncerts - 1];
    if (set_path(x, key, value, cert->key, sizeof cert->key) < 0)
        return -1;
    cert->key_line = x->lineno;
    x->tls_cert_waits_for_key = false;
    return 0;
}

static int tls_min_version(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tls *t = &x->c->tls.opts;
    if (strcmp(value, "1.2") == 0)
        t->min_version = 12;
    else if (strcmp(value, "1.3") == 0)
        t->min_version = 13;
    else if (strcmp(value, "1.0") == 0 || strcmp(value, "1.1") == 0)
        return fail(x, "invalid value for %s: '%s' (TLS 1.0 and 1.1 are not supported; expected 1.2 or 1.3)",
                    key, value);
    else
        return bad_value(x, key, value, "1.2 or 1.3");
    t->min_version_line = x->lineno;
    return 0;
}

/* The list itself is checked by the engine when it builds the contexts. */
static int tls_ciphers(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tls *t = &x->c->tls.opts;
    size_t len = strlen(value);
    if (len >= sizeof t->ciphers)
        return fail(x, "invalid value for %s: too long (at most %zu characters)", key,
                    sizeof t->ciphers - 1);
    if (has_space_or_control(value))
        return bad_value(x, key, value, "a ':'-separated cipher list without spaces, or empty for the default");
    memcpy(t->ciphers, value, len + 1);
    t->ciphers_line = x->lineno;
    return 0;
}

static int tls_client_ca(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tls *t = &x->c->tls.opts;
    if (set_path(x, key, value, t->client_ca, sizeof t->client_ca) < 0)
        return -1;
    t->client_ca_line = x->lineno;
    return 0;
}

static int tls_session_tickets(struct load_ctx *x, const char *key, const char *value)
{
    return parse_on_off(x, key, value, &x->c->tls.opts.session_tickets);
}

#define TLS_TICKET_ROTATION_MIN_MS (60ULL * 1000)
#define TLS_TICKET_ROTATION_MAX_MS (7ULL * 24 * 3600 * 1000)
#define TLS_HANDSHAKE_TIMEOUT_MIN_MS 100ULL
#define TLS_HANDSHAKE_TIMEOUT_MAX_MS (5ULL * 60 * 1000)

static int tls_ticket_key_rotation(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < TLS_TICKET_ROTATION_MIN_MS ||
        ms > TLS_TICKET_ROTATION_MAX_MS)
        return bad_value(x, key, value, "a duration from 1m to 168h (7 days)");
    x->c->tls.opts.ticket_rotation_ms = ms;
    return 0;
}

static int tls_handshake_timeout(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < TLS_HANDSHAKE_TIMEOUT_MIN_MS ||
        ms > TLS_HANDSHAKE_TIMEOUT_MAX_MS)
        return bad_value(x, key, value, "a duration from 100ms to 5m");
    x->c->tls.opts.handshake_timeout_ms = ms;
    return 0;
}

/* ---- [timeouts] -------------------------------------------------------------- */

static int set_timeout(struct load_ctx *x, const char *key, const char *value, uint64_t *out)
{
    uint64_t v;
    if (config_parse_duration_ms(value, &v) < 0 || v == 0)
        return bad_value(x, key, value, "a duration above zero such as 500ms, 30s, 5m or 1h");
    *out = v;
    return 0;
}

static int timeout_connect(struct load_ctx *x, const char *k, const char *v)
{ return set_timeout(x, k, v, &x->c->timeouts.connect_ms); }
static int timeout_first_byte(struct load_ctx *x, const char *k, const char *v)
{ return set_timeout(x, k, v, &x->c->timeouts.first_byte_ms); }
static int timeout_idle(struct load_ctx *x, const char *k, const char *v)
{ return set_timeout(x, k, v, &x->c->timeouts.idle_ms); }
static int timeout_client_header(struct load_ctx *x, const char *k, const char *v)
{ return set_timeout(x, k, v, &x->c->timeouts.client_header_ms); }
static int timeout_keepalive(struct load_ctx *x, const char *k, const char *v)
{ return set_timeout(x, k, v, &x->c->timeouts.keepalive_ms); }

/* ---- [log] ------------------------------------------------------------------- */

static int key_log_access(struct load_ctx *x, const char *key, const char *value)
{
    struct config *c = x->c;
    if (strcmp(value, "stdout") == 0) {
        c->log.access = ACCESS_STDOUT;
    } else if (strcmp(value, "off") == 0) {
        c->log.access = ACCESS_OFF;
    } else if (value[0] == '/' && strlen(value) < sizeof c->log.access_path) {
        c->log.access = ACCESS_FILE;
        strcpy(c->log.access_path, value);
        c->log.access_line = x->lineno;
        return 0;
    } else {
        return bad_value(x, key, value, "stdout, off or an absolute path");
    }
    c->log.access_path[0] = '\0';
    return 0;
}

static int key_log_level(struct load_ctx *x, const char *key, const char *value)
{
    static const char *const names[] = { [LOG_ERROR] = "error", [LOG_WARN] = "warn",
                                         [LOG_INFO] = "info", [LOG_DEBUG] = "debug" };
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(value, names[i]) == 0) {
            x->c->log.level = (enum log_level)i;
            return 0;
        }
    }
    return bad_value(x, key, value, "error, warn, info or debug");
}

/* ---- [pool NAME] ------------------------------------------------------------- */

static struct cfg_pool *cur_pool(struct load_ctx *x) { return &x->c->pools[x->c->npools - 1]; }

static int pool_backend(struct load_ctx *x, const char *key, const char *value)
{
    static const char expected[] = "HOST:PORT [weight=N] with weight 1-1000";
    struct cfg_pool *p = cur_pool(x);
    char buf[CFG_LINE_MAX + 1];
    snprintf(buf, sizeof buf, "%s", value);

    char *save = NULL;
    char *addr = strtok_r(buf, " \t", &save);
    if (!addr)
        return bad_value(x, key, value, expected);

    struct cfg_backend b = { .weight = 1 };
    if (set_addr(x, key, addr, &b.addr) < 0)
        return -1;
    /* parse_addr accepted it: "[v6]:port" or "host:port", the host under 256 bytes */
    const char *host = addr[0] == '[' ? addr + 1 : addr;
    const char *host_end = addr[0] == '[' ? strchr(addr, ']') : strrchr(addr, ':');
    snprintf(b.host, sizeof b.host, "%.*s", (int)(host_end - host), host);
    char resolved[sizeof b.addr.text];
    memcpy(resolved, b.addr.text, sizeof resolved);
    unsigned port = b.addr.sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&b.addr.sa)->sin6_port)
                                                    : ntohs(((struct sockaddr_in *)&b.addr.sa)->sin_port);
    snprintf(b.addr.text, sizeof b.addr.text, addr[0] == '[' ? "[%s]:%u" : "%s:%u", b.host, port);
    bool weight_seen = false;
    for (char *opt; (opt = strtok_r(NULL, " \t", &save)) != NULL;) {
        uint64_t w;
        if (weight_seen || strncmp(opt, "weight=", 7) != 0 ||
            parse_uint_range(opt + 7, 1, 1000, &w) < 0)
            return bad_value(x, key, value, expected);
        b.weight = (unsigned)w;
        weight_seen = true;
    }
    for (unsigned i = 0; i < p->nbackends; i++)
        if (sockaddr_same(&p->backends[i].addr, &b.addr)) {
            if (strcmp(p->backends[i].addr.text, b.addr.text) == 0)
                return fail(x, "duplicate backend %s in pool '%s' (already on line %d)",
                            b.addr.text, p->name, p->backends[i].addr.line);
            return fail(x, "duplicate backend %s in pool '%s': it is %s, as %s on line %d is",
                        b.addr.text, p->name, resolved, p->backends[i].addr.text, p->backends[i].addr.line);
        }
    if (p->nbackends == CFG_MAX_BACKENDS)
        return fail(x, "too many backends in pool '%s' (at most %d)", p->name, CFG_MAX_BACKENDS);
    if (p->nbackends == x->backend_cap) {
        unsigned cap = next_cap(x->backend_cap);
        if (!table_grow(&p->backends, cap, sizeof *p->backends))
            return fail(x, "out of memory");
        x->backend_cap = cap;
    }
    p->backends[p->nbackends++] = b;
    return 0;
}

static int pool_balance(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    if (strcmp(value, "round_robin") == 0)
        p->balance = BALANCE_ROUND_ROBIN;
    else if (strcmp(value, "least_outstanding") == 0)
        p->balance = BALANCE_LEAST_OUTSTANDING;
    else if (strcmp(value, "capacity") == 0)
        p->balance = BALANCE_CAPACITY;
    else if (strcmp(value, "prefix") == 0)
        p->balance = BALANCE_PREFIX;
    else
        return bad_value(x, key, value, "capacity, prefix, least_outstanding or round_robin");
    return 0;
}

static int pool_max_outstanding(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 1, 1000000, &v) < 0)
        return bad_value(x, key, value, "a number 1-1000000");
    cur_pool(x)->max_outstanding = (unsigned)v;
    return 0;
}

/* A path aigw itself requests from every backend (metrics, health): empty for none. */
static int set_probe_path(struct load_ctx *x, const char *key, const char *value, char *dst, size_t cap)
{
    size_t len = strlen(value);
    if (len >= cap)
        return fail(x, "invalid value for %s: too long (at most %zu characters)", key, cap - 1);
    if (len && value[0] != '/')
        return bad_value(x, key, value, "a path starting with '/', or empty for none");
    if (has_space_or_control(value))
        return bad_value(x, key, value, "a path without spaces or control characters");
    memcpy(dst, value, len + 1);
    return 0;
}

static int set_probe_interval(struct load_ctx *x, const char *key, const char *value, uint64_t *dst)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < 10 || ms > 60000)
        return bad_value(x, key, value, "a duration from 10ms to 60s");
    *dst = ms;
    return 0;
}

static int pool_prefix_hash_kib(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 1, OPENAI_PREFIX_BLOCKS_MAX * OPENAI_PREFIX_BLOCK / 1024, &v) < 0)
        return bad_value(x, key, value, "a number 1-16 (KiB of prompt hashed)");
    cur_pool(x)->prefix_hash_kib = (unsigned)v;
    return 0;
}

static int pool_prefix_index(struct load_ctx *x, const char *key, const char *value)
{
    if (strcmp(value, "shard") == 0)
        cur_pool(x)->prefix_index_shared = false;
    else if (strcmp(value, "shared") == 0)
        cur_pool(x)->prefix_index_shared = true;
    else
        return bad_value(x, key, value, "shard or shared");
    return 0;
}

static int pool_prefix_cache_blocks(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (strcmp(value, "auto") == 0) {
        cur_pool(x)->prefix_cache_blocks = 0;
        return 0;
    }
    if (parse_uint_range(value, 16, 1u << 20, &v) < 0)
        return bad_value(x, key, value, "auto or a number 16-1048576 (blocks remembered per backend)");
    cur_pool(x)->prefix_cache_blocks = (unsigned)v;
    return 0;
}

/* A scorer weight: a plain decimal 0-100 such as 0.5 (no exponent, no sign). */
static int parse_score_weight(struct load_ctx *x, const char *key, const char *value, float *out)
{
    char *end;
    double v = strtod(value, &end);
    if (!value[0] || strspn(value, "0123456789.") != strlen(value) || *end ||
        !(v >= 0.0 && v <= BALANCE_SCORE_WEIGHT_MAX))
        return bad_value(x, key, value, "a decimal number 0-100000 such as 0.5");
    *out = (float)v;
    return 0;
}

static int pool_prefix_weight(struct load_ctx *x, const char *key, const char *value)
{
    return parse_score_weight(x, key, value, &cur_pool(x)->prefix_weight);
}

static int pool_queue_weight(struct load_ctx *x, const char *key, const char *value)
{
    return parse_score_weight(x, key, value, &cur_pool(x)->queue_weight);
}

static int pool_kv_weight(struct load_ctx *x, const char *key, const char *value)
{
    return parse_score_weight(x, key, value, &cur_pool(x)->kv_weight);
}

static int pool_metrics(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    p->metrics_set = true;
    return set_probe_path(x, key, value, p->metrics_path, sizeof p->metrics_path);
}

static int pool_metrics_interval(struct load_ctx *x, const char *key, const char *value)
{
    return set_probe_interval(x, key, value, &cur_pool(x)->metrics_interval_ms);
}

static int pool_health(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    p->health_set = true;
    return set_probe_path(x, key, value, p->health_path, sizeof p->health_path);
}

static int pool_model_list(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    return set_probe_path(x, key, value, p->model_list_path, sizeof p->model_list_path);
}

static int pool_health_interval(struct load_ctx *x, const char *key, const char *value)
{
    return set_probe_interval(x, key, value, &cur_pool(x)->health_interval_ms);
}

#define POOL_QUEUE_TIMEOUT_MAX_MS (10ULL * 60 * 1000)

/* 0 is allowed: no waiting, a request that finds no capacity is answered at once. */
static int pool_queue_timeout(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms > POOL_QUEUE_TIMEOUT_MAX_MS)
        return bad_value(x, key, value, "a duration from 0 to 10m");
    cur_pool(x)->queue_timeout_ms = ms;
    return 0;
}

/* 0: the default, computed in close_section() once the backends are known. */
static int pool_queue_size(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 0, 1000000, &v) < 0)
        return bad_value(x, key, value, "a number 0-1000000, 0 for max_outstanding x backends");
    cur_pool(x)->queue_size = (unsigned)v;
    return 0;
}

static int pool_retries(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 0, 5, &v) < 0)
        return bad_value(x, key, value, "a number 0-5");
    cur_pool(x)->retries = (unsigned)v;
    return 0;
}

/* 0: no idle connection is kept; every request opens its own. */
static int pool_keepalive(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (parse_uint_range(value, 0, 100000, &v) < 0)
        return bad_value(x, key, value, "a number 0-100000");
    cur_pool(x)->keepalive = (unsigned)v;
    return 0;
}

#define POOL_KEEPALIVE_TIMEOUT_MAX_MS (24ULL * 60 * 60 * 1000)

static int pool_keepalive_timeout(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms == 0 || ms > POOL_KEEPALIVE_TIMEOUT_MAX_MS)
        return bad_value(x, key, value, "a duration from 1ms to 24h");
    cur_pool(x)->keepalive_timeout_ms = ms;
    return 0;
}

/* connect, first_byte, idle: a pool's own, else [timeouts]'s (filled in finish()). */
static int pool_connect(struct load_ctx *x, const char *k, const char *v)
{
    cur_pool(x)->connect_set = true;
    return set_timeout(x, k, v, &cur_pool(x)->connect_ms);
}
static int pool_first_byte(struct load_ctx *x, const char *k, const char *v)
{
    cur_pool(x)->first_byte_set = true;
    return set_timeout(x, k, v, &cur_pool(x)->first_byte_ms);
}
static int pool_idle(struct load_ctx *x, const char *k, const char *v)
{
    cur_pool(x)->idle_set = true;
    return set_timeout(x, k, v, &cur_pool(x)->idle_ms);
}

static int set_streak(struct load_ctx *x, const char *key, const char *value, unsigned max, unsigned *out)
{
    uint64_t v;
    if (parse_uint_range(value, 1, max, &v) < 0) {
        char want[32];
        snprintf(want, sizeof want, "a number 1-%u", max);
        return bad_value(x, key, value, want);
    }
    *out = (unsigned)v;
    return 0;
}
static int pool_health_rise(struct load_ctx *x, const char *k, const char *v)
{ return set_streak(x, k, v, CFG_HEALTH_STREAK_MAX, &cur_pool(x)->health_rise); }
static int pool_health_fall(struct load_ctx *x, const char *k, const char *v)
{ return set_streak(x, k, v, CFG_HEALTH_STREAK_MAX, &cur_pool(x)->health_fall); }
static int pool_circuit_failures(struct load_ctx *x, const char *k, const char *v)
{ return set_streak(x, k, v, CFG_CIRCUIT_FAILURES_MAX, &cur_pool(x)->circuit_failures); }

static int set_circuit_open(struct load_ctx *x, const char *key, const char *value, uint64_t *out, int *line)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < CFG_CIRCUIT_OPEN_MIN_MS || ms > CFG_CIRCUIT_OPEN_MAX_MS)
        return bad_value(x, key, value, "a duration from 100ms to 1h");
    *out = ms;
    *line = x->lineno;
    return 0;
}
static int pool_circuit_open(struct load_ctx *x, const char *k, const char *v)
{
    return set_circuit_open(x, k, v, &cur_pool(x)->circuit_open_ms,
                            &x->pending_pools[x->c->npools - 1].circuit_open_line);
}
static int pool_circuit_open_max(struct load_ctx *x, const char *k, const char *v)
{
    return set_circuit_open(x, k, v, &cur_pool(x)->circuit_open_max_ms,
                            &x->pending_pools[x->c->npools - 1].circuit_open_max_line);
}

/* The pool is resolved in finish(): it may come later in the file. Empty: none. */
static int pool_fallback(struct load_ctx *x, const char *key, const char *value)
{
    (void)key;
    struct cfg_pool *p = cur_pool(x);
    struct pending_pool *pp = &x->pending_pools[x->c->npools - 1];
    size_t len = strlen(value);
    if (len >= sizeof pp->fallback)
        return fail(x, "fallback: no pool named '%s'", value);
    if (strcmp(value, p->name) == 0)
        return fail(x, "fallback: pool '%s' cannot be its own fallback", p->name);
    memcpy(pp->fallback, value, len + 1);
    pp->fallback_line = x->lineno;
    return 0;
}

static int pool_upstream_auth(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    return set_word(x, key, value, p->upstream_auth, sizeof p->upstream_auth);
}

static int pool_tls(struct load_ctx *x, const char *key, const char *value)
{
    return parse_on_off(x, key, value, &cur_pool(x)->tls);
}

static int pool_tls_ca(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    if (set_path(x, key, value, p->tls_ca, sizeof p->tls_ca) < 0)
        return -1;
    p->tls_ca_line = x->lineno;
    return 0;
}

/* A DNS name (verified against the certificate's names) or an IP address
 * (against its IP SANs); empty: each backend's host as written. */
static int pool_tls_server_name(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_pool *p = cur_pool(x);
    size_t len = strlen(value);
    unsigned char ip[sizeof(struct in6_addr)];
    if (len >= sizeof p->tls_server_name ||
        (len && !valid_hostname(value, len) && inet_pton(AF_INET, value, ip) != 1 &&
         inet_pton(AF_INET6, value, ip) != 1))
        return bad_value(x, key, value, "a host name or an IP address, or empty for each backend's host");
    memcpy(p->tls_server_name, value, len + 1);
    x->pending_pools[x->c->npools - 1].tls_server_name_line = x->lineno;
    return 0;
}

/* ---- [route NAME] ------------------------------------------------------------ */

static struct cfg_route *cur_route(struct load_ctx *x) { return &x->c->routes[x->c->nroutes - 1]; }

static int route_path(struct load_ctx *x, const char *key, const char *value)
{
    static const char expected[] =
        "an absolute path such as /v1/chat/completions, or a prefix ending in * such as /v1/*";
    struct cfg_route *r = cur_route(x);
    size_t len = strlen(value);
    if (len == 0 || value[0] != '/' || len >= sizeof r->path)
        return bad_value(x, key, value, expected);
    bool prefix = value[len - 1] == '*';
    size_t plen = prefix ? len - 1 : len;
    for (size_t i = 0; i < plen; i++) {
        unsigned char ch = (unsigned char)value[i];
        /* a request path never holds these: such a route could never match */
        if (ch <= 0x20 || ch >= 0x7f || ch == '*' || ch == '?' || ch == '#')
            return bad_value(x, key, value, expected);
    }
    for (unsigned i = 0; i + 1 < x->c->nroutes; i++) {
        const struct cfg_route *o = &x->c->routes[i];
        /* routes may share a path for different models; after one that takes
         * every model, another could never be reached */
        if (o->prefix == prefix && o->path_len == plen && memcmp(o->path, value, plen) == 0 &&
            !o->models)
            return fail(x, "route '%s': path %s is already taken, for every model, by route '%s' (line %d)",
                        r->name, value, o->name, o->line);
    }
    memcpy(r->path, value, plen);
    r->path[plen] = '\0';
    r->path_len = plen;
    r->prefix = prefix;
    return 0;
}

static int route_pool(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_route *r = cur_route(x);
    struct pending_route *pr = &x->pending[x->c->nroutes - 1];
    size_t len = strlen(value);
    if (len == 0)
        return bad_value(x, key, value, "the name of a [pool NAME] section");
    if (r->nsplit)
        return fail(x, "route '%s': pool and split are exclusive", r->name);
    if (len >= sizeof pr->pool)
        return fail(x, "route '%s': unknown pool '%s'", r->name, value);
    memcpy(pr->pool, value, len + 1);
    pr->pool_line = x->lineno;
    return 0;
}

/* "gpu-a:90 gpu-canary:10"; the pools are resolved in finish(). */
static int route_split(struct load_ctx *x, const char *key, const char *value)
{
    static const char expected[] = "POOL:WEIGHT pairs separated by spaces, weight 1-1000000";
    struct cfg_route *r = cur_route(x);
    struct pending_route *pr = &x->pending[x->c->nroutes - 1];
    if (pr->pool[0])
        return fail(x, "route '%s': pool and split are exclusive", r->name);
    char buf[CFG_LINE_MAX + 1];
    snprintf(buf, sizeof buf, "%s", value);

    unsigned n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        char *colon = strchr(tok, ':');
        uint64_t w;
        if (!colon || colon == tok || parse_uint_range(colon + 1, 1, 1000000, &w) < 0)
            return bad_value(x, key, value, expected);
        *colon = '\0';
        size_t len = (size_t)(colon - tok);
        if (n == CFG_MAX_SPLIT)
            return fail(x, "route '%s': too many pools in split (at most %d)", r->name,
                        CFG_MAX_SPLIT);
        if (len >= sizeof pr->split[0])
            return fail(x, "route '%s': unknown pool '%s'", r->name, tok);
        for (unsigned i = 0; i < n; i++)
            if (strcmp(pr->split[i], tok) == 0)
                return fail(x, "route '%s': pool '%s' appears twice in split", r->name, tok);
        memcpy(pr->split[n], tok, len + 1);
        r->split[n].weight = (unsigned)w;
        n++;
    }
    if (n == 0)
        return bad_value(x, key, value, expected);
    r->nsplit = n;
    pr->split_line = x->lineno;
    return 0;
}

static int route_models(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_route *r = cur_route(x);
    const char *why = NULL;
    if (strlen(value) >= sizeof r->models_text)
        return bad_value(x, key, value, "a comma-separated list of model globs");
    if (glob_list_compile(value, &r->models, &why) != 0)
        return fail(x, "invalid value for models: %s", why ? why : "bad glob list");
    snprintf(r->models_text, sizeof r->models_text, "%s", value);
    return 0;
}

static int route_kind(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_route *r = cur_route(x);
    if (strcmp(value, "ai") == 0)
        r->kind = ROUTE_AI;
    else if (strcmp(value, "raw") == 0)
        r->kind = ROUTE_RAW;
    else
        return bad_value(x, key, value, "ai or raw");
    return 0;
}

/* ---- [keys] ------------------------------------------------------------------ */

static int keys_auth(struct load_ctx *x, const char *key, const char *value)
{
    if (strcmp(value, "required") == 0)
        x->c->keys.required = true;
    else if (strcmp(value, "off") == 0)
        x->c->keys.required = false;
    else
        return bad_value(x, key, value, "required or off");
    return 0;
}

/* The file is read in finish(). */
static int keys_file(struct load_ctx *x, const char *key, const char *value)
{
    if (value[0] == '\0')
        return bad_value(x, key, value, "the path of the keys file");
    return set_path(x, key, value, x->c->keys.file, sizeof x->c->keys.file);
}

/* ---- [tier NAME] ------------------------------------------------------------- */

#define TIER_RATE_MAX 10000000000ULL
#define TIER_MAX_TOKENS_MAX 10000000ULL
#define TIER_DAILY_MAX (1ULL << 40)
#define TIER_BURST_MAX_MS (24ULL * 3600 * 1000)

static struct cfg_tier *cur_tier(struct load_ctx *x) { return &x->c->tiers[x->c->ntiers - 1]; }

static int tier_requests_per_minute(struct load_ctx *x, const char *key, const char *value)
{
    if (parse_uint_range(value, 0, TIER_RATE_MAX, &cur_tier(x)->requests_per_minute) < 0)
        return bad_value(x, key, value, "a number 0-10000000000, 0 for unlimited");
    return 0;
}

static int tier_tokens_per_minute(struct load_ctx *x, const char *key, const char *value)
{
    if (parse_uint_range(value, 0, TIER_RATE_MAX, &cur_tier(x)->tokens_per_minute) < 0)
        return bad_value(x, key, value, "a number 0-10000000000, 0 for unlimited");
    return 0;
}

static int tier_burst(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t v;
    if (config_parse_duration_ms(value, &v) < 0 || v == 0 || v > TIER_BURST_MAX_MS)
        return bad_value(x, key, value, "a duration above zero up to 24h such as 10s, 60s or 5m");
    cur_tier(x)->burst_ms = v;
    return 0;
}

static int tier_max_tokens(struct load_ctx *x, const char *key, const char *value)
{
    if (parse_uint_range(value, 0, TIER_MAX_TOKENS_MAX, &cur_tier(x)->max_tokens) < 0)
        return bad_value(x, key, value, "a number 0-10000000, 0 for no cap");
    return 0;
}

static int tier_daily_tokens(struct load_ctx *x, const char *key, const char *value)
{
    if (parse_uint_range(value, 0, TIER_DAILY_MAX, &cur_tier(x)->daily_tokens) < 0)
        return bad_value(x, key, value, "a number 0-1099511627776, 0 for no quota");
    return 0;
}

static int tier_priority(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tier *t = cur_tier(x);
    if (strcmp(value, "high") == 0)
        t->priority = PRIORITY_HIGH;
    else if (strcmp(value, "normal") == 0)
        t->priority = PRIORITY_NORMAL;
    else if (strcmp(value, "low") == 0)
        t->priority = PRIORITY_LOW;
    else
        return bad_value(x, key, value, "high, normal or low");
    return 0;
}

/* ---- [model GLOB] ------------------------------------------------------------ */

static struct cfg_model *cur_model(struct load_ctx *x) { return &x->c->models[x->c->nmodels - 1]; }

/* "0.15", "3", "2.5": a decimal number of USD with at most 6 decimals, read
 * exactly as micro-USD (no float: 0.1 stays 100000). */
static int parse_micro_usd(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t whole, frac = 0;
    const char *end;
    if (parse_digits(s, &whole, &end) < 0 || whole > max / 1000000)
        return -1;
    if (*end == '.') {
        unsigned digits = 0;
        for (end++; *end >= '0' && *end <= '9'; end++) {
            if (++digits > 6)
                return -1;
            frac = frac * 10 + (uint64_t)(*end - '0');
        }
        if (digits == 0)
            return -1;
        for (; digits < 6; digits++)
            frac *= 10;
    }
    if (*end != '\0' || whole * 1000000 + frac > max)
        return -1;
    *out = whole * 1000000 + frac;
    return 0;
}

static int model_price(struct load_ctx *x, const char *key, const char *value, uint64_t *out)
{
    if (parse_micro_usd(value, CFG_PRICE_MAX_MICRO_USD, out) < 0)
        return bad_value(x, key, value,
                         "USD per million tokens: a decimal number 0-1000000 with at most 6 decimals, such as 0.15");
    return 0;
}

static int model_input_per_mtok(struct load_ctx *x, const char *key, const char *value)
{
    return model_price(x, key, value, &cur_model(x)->input_per_mtok);
}

static int model_output_per_mtok(struct load_ctx *x, const char *key, const char *value)
{
    return model_price(x, key, value, &cur_model(x)->output_per_mtok);
}

static int tier_daily_spend(struct load_ctx *x, const char *key, const char *value)
{
    if (parse_micro_usd(value, CFG_SPEND_MAX_MICRO_USD, &cur_tier(x)->daily_spend_micro_usd) < 0)
        return bad_value(x, key, value,
                         "USD a day: a decimal number 0-1000000 with at most 6 decimals, such as 5.00; 0 for no cap");
    return 0;
}

/* ---- [cluster] --------------------------------------------------------------- */

static int cluster_redis(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_cluster *cl = &x->c->cluster;
    if (value[0] == '\0' || strcmp(value, "off") == 0) {
        cl->enabled = false;
        return 0;
    }
    if (set_addr(x, key, value, &cl->redis) < 0)
        return -1;
    cl->enabled = true;
    return 0;
}


static int cluster_username(struct load_ctx *x, const char *key, const char *value)
{
    return set_word(x, key, value, x->c->cluster.username, sizeof x->c->cluster.username);
}

static int cluster_password(struct load_ctx *x, const char *key, const char *value)
{
    return set_word(x, key, value, x->c->cluster.password, sizeof x->c->cluster.password);
}

static int cluster_key_prefix(struct load_ctx *x, const char *key, const char *value)
{
    return set_word(x, key, value, x->c->cluster.key_prefix, sizeof x->c->cluster.key_prefix);
}

static int cluster_sync_interval(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < CFG_CLUSTER_SYNC_MIN_MS ||
        ms > CFG_CLUSTER_SYNC_MAX_MS)
        return bad_value(x, key, value, "a duration from 5ms to 10s");
    x->c->cluster.sync_interval_ms = ms;
    return 0;
}

static int cluster_timeout(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t ms;
    if (config_parse_duration_ms(value, &ms) < 0 || ms < CFG_CLUSTER_TIMEOUT_MIN_MS ||
        ms > CFG_CLUSTER_TIMEOUT_MAX_MS)
        return bad_value(x, key, value, "a duration from 10ms to 10s");
    x->c->cluster.timeout_ms = ms;
    return 0;
}

static int cluster_on_redis_down(struct load_ctx *x, const char *key, const char *value)
{
    enum redis_down_policy *p = &x->c->cluster.on_redis_down;
    if (strcmp(value, "local") == 0)
        *p = REDIS_DOWN_LOCAL;
    else if (strcmp(value, "deny") == 0)
        *p = REDIS_DOWN_DENY;
    else if (strcmp(value, "allow") == 0)
        *p = REDIS_DOWN_ALLOW;
    else
        return bad_value(x, key, value, "local, deny or allow");
    return 0;
}

/* ---- [tracing] --------------------------------------------------------------- */

/* "http://HOST:PORT/PATH" (PORT defaults to 4318, PATH to /v1/traces); empty or
 * "off": tracing off. Only plain http: a collector is normally a sidecar or on
 * the local network, and the exporter must never block on a handshake. */
static int tracing_otlp_endpoint(struct load_ctx *x, const char *key, const char *value)
{
    struct cfg_tracing *t = &x->c->tracing;
    t->line = x->lineno;
    if (value[0] == '\0' || strcmp(value, "off") == 0) {
        t->enabled = false;
        return 0;
    }
    static const char scheme[] = "http://";
    if (strncmp(value, scheme, sizeof scheme - 1) != 0)
        return bad_value(x, key, value, "an http:// URL such as http://127.0.0.1:4318/v1/traces");
    if (strlen(value) >= sizeof t->endpoint)
        return bad_value(x, key, value, "a URL of at most 511 characters");
    const char *host = value + sizeof scheme - 1;
    const char *slash = strchr(host, '/');
    size_t hostlen = slash ? (size_t)(slash - host) : strlen(host);
    char hostport[300];
    if (hostlen == 0 || hostlen + 6 >= sizeof hostport)
        return bad_value(x, key, value, "an http:// URL with a host");
    memcpy(hostport, host, hostlen);
    hostport[hostlen] = '\0';
    /* a port is there when the text after the last ':' is past any "]" */
    const char *colon = strrchr(hostport, ':');
    const char *bracket = strrchr(hostport, ']');
    if (!colon || (bracket && colon < bracket))
        memcpy(hostport + hostlen, ":4318", sizeof ":4318");
    if (config_parse_addr(hostport, &t->collector) < 0)
        return bad_value(x, key, value, "an http:// URL with HOST:PORT");
    const char *path = slash ? slash : "/v1/traces";
    if (strlen(path) >= sizeof t->path)
        return bad_value(x, key, value, "a URL whose path has at most 255 characters");
    for (const char *p = path; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return bad_value(x, key, value, "a URL without spaces or control characters");
    snprintf(t->path, sizeof t->path, "%s", path);
    snprintf(t->endpoint, sizeof t->endpoint, "%s", value);
    t->enabled = true;
    return 0;
}

/* A ratio 0-1 with at most 6 decimals, held in millionths. */
static int tracing_sample_ratio(struct load_ctx *x, const char *key, const char *value)
{
    uint64_t millionths;
    if (parse_micro_usd(value, CFG_TRACING_SAMPLE_ONE, &millionths) < 0)
        return bad_value(x, key, value, "a ratio from 0 to 1 with at most 6 decimals, such as 0.01");
    x->c->tracing.sample_millionths = (uint32_t)millionths;
    return 0;
}

static int tracing_service_name(struct load_ctx *x, const char *key, const char *value)
{
    return set_word(x, key, value, x->c->tracing.service_name, sizeof x->c->tracing.service_name);
}

/* ---- sections ---------------------------------------------------------------- */

struct key_def {
    const char *name;
    int (*set)(struct load_ctx *x, const char *key, const char *value);
    bool repeatable;
};

static const struct key_def server_keys[] = {
    { "listen", server_listen, true },
    { "shards", server_shards, false },
    { "max_connections", server_max_connections, false },
    { "max_body", server_max_body, false },
    { "max_header", server_max_header, false },
    { "drain_timeout", server_drain_timeout, false },
    { "state_dir", server_state_dir, false },
    { NULL, NULL, false },
};
static const struct key_def admin_keys[] = {
    { "listen", admin_listen, false },
    { "token", admin_token, false },
    { NULL, NULL, false },
};
static const struct key_def tls_keys[] = {
    { "listen", tls_listen, true },
    { "cert", tls_cert, true },
    { "key", tls_key, true },
    { "min_version", tls_min_version, false },
    { "ciphers", tls_ciphers, false },
    { "client_ca", tls_client_ca, false },
    { "session_tickets", tls_session_tickets, false },
    { "ticket_key_rotation", tls_ticket_key_rotation, false },
    { "handshake_timeout", tls_handshake_timeout, false },
    { NULL, NULL, false },
};
static const struct key_def timeout_keys[] = {
    { "connect", timeout_connect, false },
    { "first_byte", timeout_first_byte, false },
    { "idle", timeout_idle, false },
    { "client_header", timeout_client_header, false },
    { "keepalive", timeout_keepalive, false },
    { NULL, NULL, false },
};
static const struct key_def log_keys[] = {
    { "access", key_log_access, false },
    { "level", key_log_level, false },
    { NULL, NULL, false },
};
static const struct key_def pool_keys[] = {
    { "backend", pool_backend, true },
    { "balance", pool_balance, false },
    { "max_outstanding", pool_max_outstanding, false },
    { "prefix_hash_kib", pool_prefix_hash_kib, false },
    { "prefix_cache_blocks", pool_prefix_cache_blocks, false },
    { "prefix_index", pool_prefix_index, false },
    { "prefix_weight", pool_prefix_weight, false },
    { "queue_weight", pool_queue_weight, false },
    { "kv_weight", pool_kv_weight, false },
    { "upstream_auth", pool_upstream_auth, false },
    { "metrics", pool_metrics, false },
    { "metrics_interval", pool_metrics_interval, false },
    { "health", pool_health, false },
    { "health_interval", pool_health_interval, false },
    { "model_list", pool_model_list, false },
    { "queue_timeout", pool_queue_timeout, false },
    { "queue_size", pool_queue_size, false },
    { "retries", pool_retries, false },
    { "fallback", pool_fallback, false },
    { "keepalive", pool_keepalive, false },
    { "keepalive_timeout", pool_keepalive_timeout, false },
    { "tls", pool_tls, false },
    { "tls_ca", pool_tls_ca, false },
    { "tls_server_name", pool_tls_server_name, false },
    { "connect", pool_connect, false },
    { "first_byte", pool_first_byte, false },
    { "idle", pool_idle, false },
    { "health_rise", pool_health_rise, false },
    { "health_fall", pool_health_fall, false },
    { "circuit_failures", pool_circuit_failures, false },
    { "circuit_open", pool_circuit_open, false },
    { "circuit_open_max", pool_circuit_open_max, false },
    { NULL, NULL, false },
};
static const struct key_def route_keys[] = {
    { "path", route_path, false },
    { "pool", route_pool, false },
    { "split", route_split, false },
    { "kind", route_kind, false },
    { "models", route_models, false },
    { NULL, NULL, false },
};
static const struct key_def keys_keys[] = {
    { "auth", keys_auth, false },
    { "file", keys_file, false },
    { NULL, NULL, false },
};
static const struct key_def tier_keys[] = {
    { "requests_per_minute", tier_requests_per_minute, false },
    { "tokens_per_minute", tier_tokens_per_minute, false },
    { "burst", tier_burst, false },
    { "max_tokens", tier_max_tokens, false },
    { "daily_tokens", tier_daily_tokens, false },
    { "priority", tier_priority, false },
    { "daily_spend", tier_daily_spend, false },
    { NULL, NULL, false },
};

static const struct key_def model_keys[] = {
    { "input_per_mtok", model_input_per_mtok, false },
    { "output_per_mtok", model_output_per_mtok, false },
    { NULL, NULL, false },
};

static const struct key_def cluster_keys[] = {
    { "redis", cluster_redis, false },
    { "username", cluster_username, false },
    { "password", cluster_password, false },
    { "key_prefix", cluster_key_prefix, false },
    { "sync_interval", cluster_sync_interval, false },
    { "timeout", cluster_timeout, false },
    { "on_redis_down", cluster_on_redis_down, false },
    { NULL, NULL, false },
};

static const struct key_def tracing_keys[] = {
    { "otlp_endpoint", tracing_otlp_endpoint, false },
    { "sample_ratio", tracing_sample_ratio, false },
    { "service_name", tracing_service_name, false },
    { NULL, NULL, false },
};

static const struct key_def *const section_keys[SEC_COUNT] = {
    [SEC_SERVER] = server_keys, [SEC_ADMIN] = admin_keys, [SEC_TLS] = tls_keys,
    [SEC_TIMEOUTS] = timeout_keys,
    [SEC_LOG] = log_keys, [SEC_POOL] = pool_keys, [SEC_ROUTE] = route_keys,
    [SEC_KEYS] = keys_keys, [SEC_TIER] = tier_keys, [SEC_CLUSTER] = cluster_keys,
    [SEC_MODEL] = model_keys, [SEC_TRACING] = tracing_keys,
};

/* Checks that need the whole section: run when the next section starts or at EOF. */
static int close_section(struct load_ctx *x)
{
    if (x->sec == SEC_POOL) {
        struct cfg_pool *p = cur_pool(x);
        if (p->nbackends == 0)
            return fail_at(x, x->sec_line, "pool '%s' has no backend", p->name);
        /* the load-aware balancers read the engines' metrics and health unless told
         * otherwise */
        bool load_aware = p->balance == BALANCE_CAPACITY || p->balance == BALANCE_PREFIX;
        if (!p->metrics_set && load_aware)
            memcpy(p->metrics_path, "/metrics", sizeof "/metrics");
        if (!p->health_set && load_aware)
            memcpy(p->health_path, "/health", sizeof "/health");
        /* all backends are known now: at most 1000000 x 1024, fits an unsigned */
        if (p->queue_size == 0)
            p->queue_size = p->max_outstanding * p->nbackends;
        /* said in either order within the section, so checked once it is whole */
        if (!p->tls && p->tls_ca[0])
            return fail_at(x, p->tls_ca_line, "tls_ca needs tls = on in pool '%s'", p->name);
        if (!p->tls && p->tls_server_name[0])
            return fail_at(x, x->pending_pools[x->c->npools - 1].tls_server_name_line,
                           "tls_server_name needs tls = on in pool '%s'", p->name);
        /* a long circuit_open alone raises the default ceiling with it */
        const struct pending_pool *pp = &x->pending_pools[x->c->npools - 1];
        if (!pp->circuit_open_max_line && p->circuit_open_max_ms < p->circuit_open_ms)
            p->circuit_open_max_ms = p->circuit_open_ms;
        if (p->circuit_open_max_ms < p->circuit_open_ms)
            return fail_at(x, pp->circuit_open_max_line > pp->circuit_open_line ? pp->circuit_open_max_line
                                                                                 : pp->circuit_open_line,
                           "pool '%s': circuit_open_max (%llu ms) is below circuit_open (%llu ms)", p->name,
                           (unsigned long long)p->circuit_open_max_ms, (unsigned long long)p->circuit_open_ms);
    } else if (x->sec == SEC_ROUTE) {
        const struct cfg_route *r = cur_route(x);
        if (r->path_len == 0)
            return fail_at(x, x->sec_line, "route '%s' has no path", r->name);
        if (x->pending[x->c->nroutes - 1].pool[0] == '\0' && r->nsplit == 0)
            return fail_at(x, x->sec_line, "route '%s' has no pool or split", r->name);
    } else if (x->sec == SEC_CLUSTER) {
        const struct cfg_cluster *cl = &x->c->cluster;
        if (!cl->enabled && (cl->username[0] || cl->password[0]))
            return fail_at(x, x->sec_line, "[cluster] sets credentials but no redis");
        if (cl->username[0] && !cl->password[0])
            return fail_at(x, x->sec_line, "[cluster] username needs a password");
    } else if (x->sec == SEC_TLS) {
        const struct cfg_tls *t = &x->c->tls.opts;
        if (x->tls_cert_waits_for_key)
            return tls_cert_has_no_key(x);
        if (x->c->tls.nlisten == 0)
            return fail_at(x, x->sec_line, "[tls] has no listen");
        if (t->ncerts == 0)
            return fail_at(x, x->sec_line, "[tls] has no cert (and key)");
    } else if (x->sec == SEC_KEYS) {
        if (x->c->keys.required && x->c->keys.file[0] == '\0')
            return fail_at(x, x->sec_line, "auth = required needs a keys file");
    }
    x->sec = SEC_NONE;
    return 0;
}

static int open_pool(struct load_ctx *x, const char *name, size_t len)
{
    struct config *c = x->c;
    for (unsigned i = 0; i < c->npools; i++)
        if (strlen(c->pools[i].name) == len && memcmp(c->pools[i].name, name, len) == 0)
            return fail(x, "duplicate pool '%s' (already on line %d)", c->pools[i].name,
                        c->pools[i].line);
    if (c->npools == CFG_MAX_POOLS)
        return fail(x, "too many pools (at most %d)", CFG_MAX_POOLS);
    if (c->npools == x->pool_cap) {
        unsigned cap = next_cap(x->pool_cap);
        if (!table_grow(&c->pools, cap, sizeof *c->pools) ||
            !table_grow(&x->pending_pools, cap, sizeof *x->pending_pools))
            return fail(x, "out of memory");
        x->pool_cap = cap;
    }
    struct cfg_pool *p = &c->pools[c->npools];
    memset(p, 0, sizeof *p);
    memset(&x->pending_pools[c->npools], 0, sizeof x->pending_pools[0]);
    c->npools++;
    memcpy(p->name, name, len);
    p->balance = BALANCE_LEAST_OUTSTANDING;
    p->max_outstanding = 64;
    p->prefix_hash_kib = OPENAI_PREFIX_BLOCKS_MAX * OPENAI_PREFIX_BLOCK / 1024;
    p->prefix_cache_blocks = 0;     /* auto */
    p->prefix_weight = BALANCE_PREFIX_WEIGHT;
    p->queue_weight = BALANCE_QUEUE_WEIGHT;
    p->kv_weight = BALANCE_KV_WEIGHT;
    p->prefix_index_shared = true; /* measured: perf/results/fleet-issue14-shared-*.txt */
    p->metrics_interval_ms = 250;
    p->health_interval_ms = 1000;
    p->queue_timeout_ms = 5000;
    p->retries = 1;
    p->fallback = -1;
    p->keepalive = 32;
    p->keepalive_timeout_ms = 60000;
    memcpy(p->model_list_path, "/v1/models", sizeof "/v1/models");
    p->health_rise = 2;
    p->health_fall = 2;
    p->circuit_failures = 5;
    p->circuit_open_ms = 1000;
    p->circuit_open_max_ms = 30000;
    p->line = x->lineno;
    x->backend_cap = 0;
    return 0;
}

static int open_route(struct load_ctx *x, const char *name, size_t len)
{
    struct config *c = x->c;
    for (unsigned i = 0; i < c->nroutes; i++)
        if (strlen(c->routes[i].name) == len && memcmp(c->routes[i].name, name, len) == 0)
            return fail(x, "duplicate route '%s' (already on line %d)", c->routes[i].name,
                        c->routes[i].line);
    if (c->nroutes == CFG_MAX_ROUTES)
        return fail(x, "too many routes (at most %d)", CFG_MAX_ROUTES);
    if (c->nroutes == x->route_cap) {
        unsigned cap = next_cap(x->route_cap);
        if (!table_grow(&c->routes, cap, sizeof *c->routes) ||
            !table_grow(&x->pending, cap, sizeof *x->pending))
            return fail(x, "out of memory");
        x->route_cap = cap;
    }
    struct cfg_route *r = &c->routes[c->nroutes];
    memset(r, 0, sizeof *r);
    memset(&x->pending[c->nroutes], 0, sizeof x->pending[0]);
    c->nroutes++;
    memcpy(r->name, name, len);
    r->kind = ROUTE_AI;
    r->line = x->lineno;
    return 0;
}

static int open_tier(struct load_ctx *x, const char *name, size_t len)
{
    struct config *c = x->c;
    for (unsigned i = 0; i < c->ntiers; i++)
        if (strlen(c->tiers[i].name) == len && memcmp(c->tiers[i].name, name, len) == 0)
            return fail(x, "duplicate tier '%s' (already on line %d)", c->tiers[i].name,
                        c->tiers[i].line);
    if (c->ntiers == CFG_MAX_TIERS)
        return fail(x, "too many tiers (at most %d)", CFG_MAX_TIERS);
    if (c->ntiers == x->tier_cap) {
        unsigned cap = next_cap(x->tier_cap);
        if (!table_grow(&c->tiers, cap, sizeof *c->tiers))
            return fail(x, "out of memory");
        x->tier_cap = cap;
    }
    struct cfg_tier *t = &c->tiers[c->ntiers++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, len);
    t->burst_ms = 60000;
    t->priority = PRIORITY_NORMAL;
    t->line = x->lineno;
    return 0;
}

/* [model GLOB]: the name is one glob (no list), compared as written. */
static int open_model(struct load_ctx *x, const char *name, size_t len)
{
    struct config *c = x->c;
    const char *why = NULL;
    struct glob_list *check = NULL;
    if (memchr(name, ',', len))
        return fail(x, "invalid model glob '%.*s': one glob per [model] section", (int)len, name);
    if (len >= sizeof c->models[0].glob || glob_list_compile_n(name, len, &check, &why) != 0 || !check)
        return fail(x, "invalid model glob '%.*s': %s", (int)len, name,
                    why ? why : "expected 1-256 bytes, no spaces or control characters");
    glob_list_free(check);
    for (unsigned i = 0; i < c->nmodels; i++)
        if (strlen(c->models[i].glob) == len && memcmp(c->models[i].glob, name, len) == 0)
            return fail(x, "duplicate [model %s] (already on line %d)", c->models[i].glob, c->models[i].line);
    if (c->nmodels == CFG_MAX_MODELS)
        return fail(x, "too many [model] sections (at most %d)", CFG_MAX_MODELS);
    if (c->nmodels == x->model_cap) {
        unsigned cap = next_cap(x->model_cap);
        if (!table_grow(&c->models, cap, sizeof *c->models))
            return fail(x, "out of memory");
        x->model_cap = cap;
    }
    struct cfg_model *m = &c->models[c->nmodels++];
    memset(m, 0, sizeof *m);
    memcpy(m->glob, name, len);
    m->line = x->lineno;
    return 0;
}

/* inner: the text between '[' and ']'. */
static int open_section(struct load_ctx *x, const char *inner, size_t len)
{
    static const char *const singletons[SEC_COUNT] = {
        [SEC_SERVER] = "server", [SEC_ADMIN] = "admin", [SEC_TLS] = "tls", [SEC_TIMEOUTS] = "timeouts",
        [SEC_LOG] = "log", [SEC_KEYS] = "keys", [SEC_CLUSTER] = "cluster",
        [SEC_TRACING] = "tracing",
    };
    if (close_section(x) < 0)
        return -1;
    while (len && isspace((unsigned char)*inner))
        inner++, len--;
    while (len && isspace((unsigned char)inner[len - 1]))
        len--;
    snprintf(x->sec_text, sizeof x->sec_text, "%.*s", (int)len, inner);

    size_t kind_len = 0;
    while (kind_len < len && !isspace((unsigned char)inner[kind_len]))
        kind_len++;
    const char *name = inner + kind_len;
    size_t name_len = len - kind_len;
    while (name_len && isspace((unsigned char)*name))
        name++, name_len--;

    enum section_kind kind = SEC_NONE;
    for (int k = 0; k < SEC_COUNT; k++)
        if (singletons[k] && strlen(singletons[k]) == kind_len &&
            memcmp(singletons[k], inner, kind_len) == 0 && name_len == 0)
            kind = (enum section_kind)k;
    if (name_len && kind_len == 4 && memcmp(inner, "pool", 4) == 0)
        kind = SEC_POOL;
    if (name_len && kind_len == 5 && memcmp(inner, "route", 5) == 0)
        kind = SEC_ROUTE;
    if (name_len && kind_len == 4 && memcmp(inner, "tier", 4) == 0)
        kind = SEC_TIER;
    if (name_len && kind_len == 5 && memcmp(inner, "model", 5) == 0)
        kind = SEC_MODEL;
    if (kind == SEC_NONE) {
        static const char *const kinds[] = { "server", "admin", "tls", "timeouts", "log", "keys", "cluster",
                                             "tracing", "pool", "route", "tier", "model", NULL };
        char word[64];
        snprintf(word, sizeof word, "%.*s", (int)(kind_len < 63 ? kind_len : 63), inner);
        const char *near = closest_name(word, kinds, sizeof kinds[0]);
        bool named_kind = near && (!strcmp(near, "pool") || !strcmp(near, "route") || !strcmp(near, "tier") ||
                                   !strcmp(near, "model"));
        if (near && strcmp(near, word) == 0)    /* the kind is right, the name is not */
            return named_kind ? fail(x, "unknown section [%.*s] ([%s] needs a name: [%s NAME])", (int)len,
                                     inner, near, near)
                              : fail(x, "unknown section [%.*s] ([%s] takes no name)", (int)len, inner, near);
        if (near && (named_kind == (name_len > 0)))
            return fail(x, "unknown section [%.*s] (did you mean [%s%s%.*s]?)", (int)len, inner, near,
                        name_len ? " " : "", (int)name_len, name);
        return fail(x, "unknown section [%.*s]", (int)len, inner);
    }

    if (kind == SEC_POOL || kind == SEC_ROUTE || kind == SEC_TIER) {
        const char *what = kind == SEC_POOL ? "pool" : kind == SEC_ROUTE ? "route" : "tier";
        if (!valid_name(name, name_len))
            return fail(x, "invalid %s name '%.*s' (expected 1-%d letters, digits, '-', '_' or '.')",
                        what, (int)name_len, name, CFG_NAME_MAX - 1);
        int rc = kind == SEC_POOL    ? open_pool(x, name, name_len)
                 : kind == SEC_ROUTE ? open_route(x, name, name_len)
                                     : open_tier(x, name, name_len);
        if (rc < 0)
            return -1;
    } else if (kind == SEC_MODEL) {
        if (open_model(x, name, name_len) < 0)
            return -1;
    } else {
        if (x->section_seen[kind])
            return fail(x, "duplicate section [%s]", singletons[kind]);
        x->section_seen[kind] = true;
        if (kind == SEC_KEYS) {
            x->c->keys.configured = true;
            x->c->keys.required = true;
        }
    }
    x->sec = kind;
    x->sec_line = x->lineno;
    x->seen_keys = 0;
    return 0;
}

/* Mirrors inih's own reading of a line (BOM, whitespace, comments, inline
 * comments inside "[...]") so both agree on which lines are section headers. */
static int scan_line_for_section(struct load_ctx *x, const char *line)
{
    const char *s = line;
    if (x->lineno == 1 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
        (unsigned char)s[2] == 0xBF)
        s += 3;
    while (*s && isspace((unsigned char)*s))
        s++;
    if (*s != '[')
        return 0;
    const char *p = s + 1;
    bool was_space = false;
    while (*p && *p != ']' && !(was_space && *p == ';')) {
        was_space = isspace((unsigned char)*p);
        p++;
    }
    if (*p != ']')
        return 0;               /* inih reports it as a syntax error */
    return open_section(x, s + 1, (size_t)(p - s - 1));
}

static int source_getc(struct load_ctx *x)
{
    if (x->file)
        return getc(x->file);
    return x->text_pos < x->text_len ? (unsigned char)x->text[x->text_pos++] : EOF;
}

/* fgets-shaped reader handed to ini_parse_stream. Returning NULL ends the parse,
 * which is also how an error found here or in the handler stops it. */
static char *read_line(char *str, int num, void *stream)
{
    struct load_ctx *x = stream;
    if (x->failed || num < 3)
        return NULL;
    size_t limit = (size_t)num - 2;     /* room for '\n' and '\0' */
    if (limit > CFG_LINE_MAX)
        limit = CFG_LINE_MAX;

    size_t n = 0;
    int ch = EOF;
    for (;;) {
        ch = source_getc(x);
        if (ch == EOF || ch == '\n')
            break;
        if (ch == '\0') {
            fail_at(x, x->lineno + 1, "NUL byte in line");
            return NULL;
        }
        if (n == limit) {
            fail_at(x, x->lineno + 1, "line too long (at most %zu characters)", limit);
            return NULL;
        }
        str[n++] = (char)ch;
    }
    if (ch == EOF && n == 0) {
        if (x->file && ferror(x->file))
            fail_at(x, 0, "read error: %s", strerror(errno));
        return NULL;
    }
    if (ch == '\n')
        str[n++] = '\n';
    str[n] = '\0';
    x->lineno++;
    if (scan_line_for_section(x, str) < 0)
        return NULL;
    return str;
}

static int handle_key(void *user, const char *section, const char *key, const char *value)
{
    struct load_ctx *x = user;
    (void)section;              /* inih truncates it at 50 bytes; we track our own */
    if (x->failed)
        return 0;
    /* "listen 127.0.0.1:80": inih took ':' as the separator */
    if (strpbrk(key, " \t")) {
        fail(x, "syntax error");
        return 0;
    }
    if (x->sec == SEC_NONE) {
        fail(x, "key '%s' is outside any section", key);
        return 0;
    }
    /* inih ends a value at " ;" only: "5s # why" would reach the parsers whole */
    for (const char *h = strchr(value, '#'); h; h = strchr(h + 1, '#'))
        if (h > value && (h[-1] == ' ' || h[-1] == '\t')) {
            fail(x, "'#' after a value is not a comment here ('#' starts a comment only at the start "
                    "of a line): use ' ; ' for a comment after a value");
            return 0;
        }
    const struct key_def *keys = section_keys[x->sec];
    for (unsigned i = 0; keys[i].name; i++) {
        if (strcmp(keys[i].name, key) != 0)
            continue;
        if (!keys[i].repeatable && (x->seen_keys & (1u << i))) {
            fail(x, "duplicate key '%s' in [%s]", key, x->sec_text);
            return 0;
        }
        x->seen_keys |= 1u << i;
        return keys[i].set(x, key, value) == 0;
    }
    const char *near = closest_name(key, &keys[0].name, sizeof keys[0]);
    if (near)
        fail(x, "unknown key '%s' in [%s] (did you mean '%s'?)", key, x->sec_text, near);
    else
        fail(x, "unknown key '%s' in [%s]", key, x->sec_text);
    return 0;
}

/* ---- whole-file checks and entry points --------------------------------------- */

static unsigned find_pool(const struct config *c, const char *name)
{
    unsigned p = 0;
    while (p < c->npools && strcmp(c->pools[p].name, name) != 0)
        p++;
    return p;
}

/* Reads the keys file and gives each key its tier. The keyring's own errors
 * already read "KEYSFILE:LINE: message" and are passed on as they are. */
static int load_keys(struct load_ctx *x)
{
    struct config *c = x->c;
    if (c->keys.file[0] == '\0')
        return 0;
    if (keyring_load(c->keys.file, &c->keys.ring, x->err, x->errlen) < 0) {
        x->failed = true;
        x->err_line = 0;
        return -1;
    }
    unsigned n = keyring_count(c->keys.ring);
    c->keys.key_tier = calloc(n ? n : 1, sizeof *c->keys.key_tier);
    if (!c->keys.key_tier)
        return fail_at(x, 0, "out of memory");
    unsigned last = 0;          /* keys tend to share a few tiers: try the last one first */
    for (unsigned i = 0; i < n; i++) {
        const struct key_entry *e = keyring_entry(c->keys.ring, i);
        unsigned t = last;
        if (t >= c->ntiers || strcmp(c->tiers[t].name, e->tier) != 0) {
            t = 0;
            while (t < c->ntiers && strcmp(c->tiers[t].name, e->tier) != 0)
                t++;
        }
        if (t < c->ntiers) {
            c->keys.key_tier[i] = t;
            last = t;
        } else if (strcmp(e->tier, "default") == 0) {
            c->keys.key_tier[i] = CFG_NO_TIER;
        } else {
            return fail_in(x, c->keys.file, e->line, "unknown tier '%s' (no [tier %s] in %s)",
                           e->tier, e->tier, x->name);
        }
    }
    return 0;
}

static int finish(struct load_ctx *x)
{
    struct config *c = x->c;
    if (close_section(x) < 0)
        return -1;

    /* [timeouts] may follow the pools: what a pool did not say it inherits now */
    for (unsigned i = 0; i < c->npools; i++) {
        struct cfg_pool *p = &c->pools[i];
        if (!p->connect_set)
            p->connect_ms = c->timeouts.connect_ms;
        if (!p->first_byte_set)
            p->first_byte_ms = c->timeouts.first_byte_ms;
        if (!p->idle_set)
            p->idle_ms = c->timeouts.idle_ms;
    }

    /* a default listener can collide with a configured one only here */
    for (unsigned i = 0; i < c->tls.nlisten; i++) {
        const struct cfg_addr *l = &c->tls.listen[i];
        if (!x->listen_configured && addr_equal(l, &c->server.listen[0]))
            return fail_at(x, l->line, "duplicate listener %s ([server] listen's default)", l->text);
        if (!x->admin_configured && addr_equal(l, &c->admin.listen))
            return fail_at(x, l->line, "duplicate listener %s ([admin] listen's default)", l->text);
    }
    if (c->admin.enabled) {
        for (unsigned i = 0; i < c->server.nlisten; i++) {
            const struct cfg_addr *l = &c->server.listen[i];
            if (addr_equal(l, &c->admin.listen))
                return fail_at(x, l->line > c->admin.listen.line ? l->line : c->admin.listen.line,
                               "duplicate listener %s ([server] listen and [admin] listen)",
                               l->text);
        }
    }

    for (unsigned i = 0; i < c->nroutes; i++) {
        struct cfg_route *r = &c->routes[i];
        const struct pending_route *pr = &x->pending[i];
        if (r->nsplit) {
            for (unsigned j = 0; j < r->nsplit; j++) {
                unsigned p = find_pool(c, pr->split[j]);
                if (p == c->npools)
                    return fail_at(x, pr->split_line, "route '%s': unknown pool '%s'", r->name,
                                   pr->split[j]);
                r->split[j].pool = p;
            }
            r->pool = r->split[0].pool;
            continue;
        }
        unsigned p = find_pool(c, pr->pool);
        if (p == c->npools)
            return fail_at(x, pr->pool_line, "route '%s': unknown pool '%s'", r->name, pr->pool);
        r->pool = p;
    }
    /* one hop: a fallback pool's own fallback is not followed at run time */
    for (unsigned i = 0; i < c->npools; i++) {
        const struct pending_pool *pp = &x->pending_pools[i];
        if (pp->fallback[0] == '\0')
            continue;
        unsigned p = find_pool(c, pp->fallback);
        if (p == c->npools)
            return fail_at(x, pp->fallback_line, "fallback: no pool named '%s'", pp->fallback);
        c->pools[i].fallback = (int)p;
    }
    c->nbackends = 0;
    for (unsigned i = 0; i < c->npools; i++)
        c->nbackends += c->pools[i].nbackends;
    return load_keys(x);
}

static struct config *config_new(const char *name)
{
    struct config *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->path, sizeof c->path, "%s", name);
    if (config_parse_addr("0.0.0.0:8080", &c->server.listen[0]) < 0 ||
        config_parse_addr("127.0.0.1:9090", &c->admin.listen) < 0) {
        free(c);
        return NULL;
    }
    c->server.nlisten = 1;
    c->server.shards = 0;
    c->server.max_connections = 100000;
    c->server.max_body = 1 << 20;
    c->server.max_header = 16 << 10;
    c->server.drain_timeout_ms = 30000;
    c->admin.enabled = true;
    memcpy(c->cluster.key_prefix, "aigw:", sizeof "aigw:");
    c->cluster.sync_interval_ms = 50;
    c->tracing.sample_millionths = 10000;
    memcpy(c->tracing.service_name, "aigw", sizeof "aigw");
    memcpy(c->tracing.path, "/v1/traces", sizeof "/v1/traces");
    c->cluster.timeout_ms = 250;
    c->cluster.on_redis_down = REDIS_DOWN_LOCAL;
    c->timeouts.connect_ms = 2000;
    c->timeouts.first_byte_ms = 60000;
    c->timeouts.idle_ms = 30000;
    c->timeouts.client_header_ms = 10000;
    c->timeouts.keepalive_ms = 75000;
    c->log.access = ACCESS_STDOUT;
    c->log.level = LOG_INFO;
    c->tls.opts.min_version = 12;
    c->tls.opts.session_tickets = true;
    c->tls.opts.ticket_rotation_ms = 3600 * 1000;
    c->tls.opts.handshake_timeout_ms = 10000;
    return c;
}

static pthread_once_t inih_setup_once = PTHREAD_ONCE_INIT;

/* Debian builds inih with runtime options. Continuation lines would turn an
 * indented "key = value" into part of the previous value, so they are off; the
 * line buffer is sized for CFG_LINE_MAX; inih stops at its first syntax error. */
static void inih_setup(void)
{
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
    ini_allow_no_value = false;
    ini_use_stack = true;
    ini_max_line = CFG_LINE_MAX + 3;
}

static int load(struct load_ctx *x, struct config **out)
{
    pthread_once(&inih_setup_once, inih_setup);
    x->c = config_new(x->name);
    if (!x->c) {
        fail_at(x, 0, "out of memory");
        return -1;
    }
    int rc = ini_parse_stream(read_line, x, handle_key, x);
    if (rc > 0 && (!x->failed || rc < x->err_line)) {
        x->failed = false;      /* inih's error comes first in the file */
        fail_at(x, rc, "syntax error");
    } else if (rc < 0 && !x->failed) {
        fail_at(x, 0, "out of memory");
    }
    if (!x->failed)
        finish(x);
    free(x->pending);
    x->pending = NULL;
    free(x->pending_pools);
    x->pending_pools = NULL;
    if (x->failed) {
        config_free(x->c);
        return -1;
    }
    *out = x->c;
    return 0;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct load_ctx x = { .name = path, .err = err, .errlen = errlen };
    if (err && errlen)
        err[0] = '\0';
    x.file = fopen(path, "re");
    if (!x.file) {
        fail_at(&x, 0, "cannot open: %s", strerror(errno));
        escape_message(err, errlen);
        return -1;
    }
    int rc = load(&x, out);
    fclose(x.file);
    if (rc != 0)
        escape_message(err, errlen);
    return rc;
}

int config_load_string(const char *name, const char *text, struct config **out,
                       char *err, size_t errlen)
{
    struct load_ctx x = { .name = name, .err = err, .errlen = errlen,
                          .text = text, .text_len = strlen(text) };
    if (err && errlen)
        err[0] = '\0';
    int rc = load(&x, out);
    if (rc != 0)
        escape_message(err, errlen);
    return rc;
}

/* The access log is opened as accesslog.c opens it: for append, created when
 * missing, never truncated; a file created here stays (the daemon would create
 * it too). An error names the line of `access =`. */
/* The snapshot is written by rename into the directory: it must be one aigw
 * can create files in. */
static int check_state_dir(struct load_ctx *x, const struct config *c)
{
    const char *dir = c->server.state_dir;
    struct stat st;
    if (stat(dir, &st) != 0)
        return fail_at(x, c->server.state_dir_line, "state_dir %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return fail_at(x, c->server.state_dir_line, "state_dir %s is not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0)
        return fail_at(x, c->server.state_dir_line, "state_dir %s is not writable: %s", dir, strerror(errno));
    return 0;
}

int config_check_files(const struct config *c, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    struct load_ctx x = { .name = c->path, .err = err, .errlen = errlen };
    if (c->server.state_dir[0] && check_state_dir(&x, c) != 0) {
        escape_message(err, errlen);
        return -1;
    }
    if (c->log.access != ACCESS_FILE)
        return 0;
    int fd = open(c->log.access_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    fail_at(&x, c->log.access_line, "access log %s cannot be opened for appending: %s",
            c->log.access_path, strerror(errno));
    escape_message(err, errlen);
    return -1;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    config_tls_release(c);      /* what config_tls_build made, if it ran; reads the pools */
    for (unsigned i = 0; i < c->npools; i++)
        free(c->pools[i].backends);
    free(c->pools);
    for (unsigned i = 0; i < c->nroutes; i++)
        glob_list_free(c->routes[i].models);
    free(c->routes);
    free(c->tiers);
    free(c->models);
    keyring_free(c->keys.ring);
    free(c->keys.key_tier);
    free(c);
}

/* ---- aigw -T ------------------------------------------------------------------ */

/* The largest unit that states the value exactly, so it reads back the same. */
/* micro-USD as a decimal that parse_micro_usd reads back: 0.15, 2.50, 0.000001 */
static void print_micro_usd(FILE *out, const char *key, uint64_t micro)
{
    char frac[8];
    snprintf(frac, sizeof frac, "%06llu", (unsigned long long)(micro % 1000000));
    size_t n = 6;
    while (n > 2 && frac[n - 1] == '0')
        n--;
    fprintf(out, "%s = %llu.%.*s\n", key, (unsigned long long)(micro / 1000000), (int)n, frac);
}

static void print_duration(FILE *out, const char *key, uint64_t ms)
{
    if (ms == 0)
        fprintf(out, "%s = 0s\n", key);
    else if (ms % (3600 * 1000) == 0)
        fprintf(out, "%s = %lluh\n", key, (unsigned long long)(ms / (3600 * 1000)));
    else if (ms % (60 * 1000) == 0)
        fprintf(out, "%s = %llum\n", key, (unsigned long long)(ms / (60 * 1000)));
    else if (ms % 1000 == 0)
        fprintf(out, "%s = %llus\n", key, (unsigned long long)(ms / 1000));
    else
        fprintf(out, "%s = %llums\n", key, (unsigned long long)ms);
}

static void print_size(FILE *out, const char *key, uint64_t v)
{
    static const char units[] = "gmk";
    for (unsigned i = 0; i < 3; i++) {
        unsigned shift = 30 - 10 * i;
        if (v && v % (1ULL << shift) == 0) {
            fprintf(out, "%s = %llu%c\n", key, (unsigned long long)(v >> shift), units[i]);
            return;
        }
    }
    fprintf(out, "%s = %llu\n", key, (unsigned long long)v);
}

static const char *on_off(bool v) { return v ? "on" : "off"; }

/* An empty value, the default of several keys, shown as "key =" without a
 * trailing space; note (may be NULL) says what empty means. */
static void print_text(FILE *out, const char *key, const char *value, const char *note)
{
    char assign[64];
    snprintf(assign, sizeof assign, "%s =", key);
    if (value[0])
        fprintf(out, "%s %s\n", assign, value);
    else if (note)
        fprintf(out, "%-32s ; %s\n", assign, note);
    else
        fprintf(out, "%s\n", assign);
}

static void print_tls(const struct config *c, FILE *out)
{
    const struct cfg_tls *t = &c->tls.opts;
    if (!t->enabled) {
        fprintf(out, "# [tls]: none (no TLS listener)\n\n");
        return;
    }
    fprintf(out, "[tls]\n");
    for (unsigned i = 0; i < c->tls.nlisten; i++)
        fprintf(out, "listen = %s\n", c->tls.listen[i].text);
    for (unsigned i = 0; i < t->ncerts; i++)
        fprintf(out, "cert = %s\nkey = %s\n", t->certs[i].cert, t->certs[i].key);
    fprintf(out, "min_version = 1.%d\n", t->min_version - 10);
    print_text(out, "ciphers", t->ciphers, "the default order of the linked wolfSSL (aigw -v)");
    print_text(out, "client_ca", t->client_ca, "no client certificates asked for");
    fprintf(out, "session_tickets = %s\n", on_off(t->session_tickets));
    print_duration(out, "ticket_key_rotation", t->ticket_rotation_ms);
    print_duration(out, "handshake_timeout", t->handshake_timeout_ms);
    fprintf(out, "\n");
}

static void print_pool(const struct config *c, const struct cfg_pool *p, FILE *out)
{
    static const char *const balance[] = {
        [BALANCE_ROUND_ROBIN] = "round_robin", [BALANCE_LEAST_OUTSTANDING] = "least_outstanding",
        [BALANCE_CAPACITY] = "capacity", [BALANCE_PREFIX] = "prefix",
    };
    fprintf(out, "[pool %s]\n", p->name);
    for (unsigned i = 0; i < p->nbackends; i++)
        fprintf(out, "backend = %s weight=%u\n", p->backends[i].addr.text, p->backends[i].weight);
    fprintf(out, "balance = %s\n", balance[p->balance]);
    fprintf(out, "max_outstanding = %u\n", p->max_outstanding);
    fprintf(out, "prefix_hash_kib = %u\n", p->prefix_hash_kib);
    if (p->prefix_cache_blocks)
        fprintf(out, "prefix_cache_blocks = %u\n", p->prefix_cache_blocks);
    else
        fprintf(out, "prefix_cache_blocks = auto\n");
    fprintf(out, "prefix_index = %s\n", p->prefix_index_shared ? "shared" : "shard");
    fprintf(out, "prefix_weight = %g\nqueue_weight = %g\nkv_weight = %g\n", (double)p->prefix_weight,
            (double)p->queue_weight, (double)p->kv_weight);
    /* a credential: a configuration dump gets pasted into tickets and chats */
    fprintf(out, p->upstream_auth[0] ? "# upstream_auth = (set, not shown)\n" : "upstream_auth =\n");
    print_text(out, "metrics", p->metrics_path, NULL);
    print_duration(out, "metrics_interval", p->metrics_interval_ms);
    print_text(out, "health", p->health_path, NULL);
    print_duration(out, "health_interval", p->health_interval_ms);
    print_text(out, "model_list", p->model_list_path, NULL);
    print_duration(out, "queue_timeout", p->queue_timeout_ms);
    fprintf(out, "queue_size = %u\n", p->queue_size);
    fprintf(out, "retries = %u\n", p->retries);
    print_text(out, "fallback", p->fallback >= 0 ? c->pools[p->fallback].name : "", NULL);
    fprintf(out, "keepalive = %u\n", p->keepalive);
    print_duration(out, "keepalive_timeout", p->keepalive_timeout_ms);
    print_duration(out, "connect", p->connect_ms);
    print_duration(out, "first_byte", p->first_byte_ms);
    print_duration(out, "idle", p->idle_ms);
    fprintf(out, "health_rise = %u\nhealth_fall = %u\n", p->health_rise, p->health_fall);
    fprintf(out, "circuit_failures = %u\n", p->circuit_failures);
    print_duration(out, "circuit_open", p->circuit_open_ms);
    print_duration(out, "circuit_open_max", p->circuit_open_max_ms);
    fprintf(out, "tls = %s\n", on_off(p->tls));
    print_text(out, "tls_ca", p->tls_ca, p->tls ? "the system's CA bundle" : NULL);
    print_text(out, "tls_server_name", p->tls_server_name,
               p->tls ? "each backend's host as written" : NULL);
    fprintf(out, "\n");
}

static void print_route(const struct config *c, const struct cfg_route *r, FILE *out)
{
    fprintf(out, "[route %s]\npath = %s%s\n", r->name, r->path, r->prefix ? "*" : "");
    if (r->nsplit) {
        fprintf(out, "split =");
        for (unsigned i = 0; i < r->nsplit; i++)
            fprintf(out, " %s:%u", c->pools[r->split[i].pool].name, r->split[i].weight);
        fprintf(out, "\n");
    } else {
        fprintf(out, "pool = %s\n", c->pools[r->pool].name);
    }
    fprintf(out, "kind = %s\n", r->kind == ROUTE_RAW ? "raw" : "ai");
    print_text(out, "models", r->models_text, NULL);
    fprintf(out, "\n");
}

static void print_cluster(const struct cfg_cluster *cl, FILE *out)
{
    static const char *const down[] = { [REDIS_DOWN_LOCAL] = "local", [REDIS_DOWN_DENY] = "deny",
                                        [REDIS_DOWN_ALLOW] = "allow" };
    if (!cl->enabled) {
        fprintf(out, "# [cluster]: none (limits are kept by this host alone)\n");
        return;
    }
    fprintf(out, "[cluster]\nredis = %s\n", cl->redis.text);
    if (cl->username[0])
        fprintf(out, "username = %s\n", cl->username);
    if (cl->password[0])
        fprintf(out, "# password: set\n");
    fprintf(out, "key_prefix = %s\n", cl->key_prefix);
    print_duration(out, "sync_interval", cl->sync_interval_ms);
    print_duration(out, "timeout", cl->timeout_ms);
    fprintf(out, "on_redis_down = %s\n", down[cl->on_redis_down]);
}

static void print_tracing(const struct cfg_tracing *t, FILE *out)
{
    if (!t->enabled) {
        fprintf(out, "\n# [tracing]: none (no spans are exported)\n");
        return;
    }
    fprintf(out, "\n[tracing]\notlp_endpoint = %s\n", t->endpoint);
    print_micro_usd(out, "sample_ratio", t->sample_millionths);
    fprintf(out, "service_name = %s\n", t->service_name);
}

void config_print(const struct config *c, FILE *out)
{
    static const char *const levels[] = { [LOG_ERROR] = "error", [LOG_WARN] = "warn",
                                          [LOG_INFO] = "info", [LOG_DEBUG] = "debug" };
    static const char *const priorities[] = { [PRIORITY_HIGH] = "high",
                                              [PRIORITY_NORMAL] = "normal", [PRIORITY_LOW] = "low" };
    fprintf(out, "# %s, as aigw reads it, every default written out\n\n[server]\n", c->path);
    for (unsigned i = 0; i < c->server.nlisten; i++)
        fprintf(out, "listen = %s\n", c->server.listen[i].text);
    if (c->server.shards)
        fprintf(out, "shards = %u\n", c->server.shards);
    else
        fprintf(out, "shards = auto\n");
    fprintf(out, "max_connections = %u\n", c->server.max_connections);
    print_size(out, "max_body", c->server.max_body);
    print_size(out, "max_header", c->server.max_header);
    print_duration(out, "drain_timeout", c->server.drain_timeout_ms);
    fprintf(out, "state_dir = %s\n", c->server.state_dir);

    fprintf(out, "\n[admin]\nlisten = %s\n", c->admin.enabled ? c->admin.listen.text : "off");
    if (c->admin.token[0])
        fprintf(out, "# token: set\n");
    fprintf(out, "\n");
    print_tls(c, out);

    fprintf(out, "[timeouts]\n");
    print_duration(out, "connect", c->timeouts.connect_ms);
    print_duration(out, "first_byte", c->timeouts.first_byte_ms);
    print_duration(out, "idle", c->timeouts.idle_ms);
    print_duration(out, "client_header", c->timeouts.client_header_ms);
    print_duration(out, "keepalive", c->timeouts.keepalive_ms);

    fprintf(out, "\n[log]\naccess = %s\nlevel = %s\n\n",
            c->log.access == ACCESS_FILE ? c->log.access_path
            : c->log.access == ACCESS_OFF ? "off" : "stdout",
            levels[c->log.level]);

    for (unsigned i = 0; i < c->npools; i++)
        print_pool(c, &c->pools[i], out);
    for (unsigned i = 0; i < c->nroutes; i++)
        print_route(c, &c->routes[i], out);

    if (c->keys.configured) {
        fprintf(out, "[keys]\nauth = %s\n", c->keys.required ? "required" : "off");
        if (c->keys.file[0])
            fprintf(out, "file = %s\n", c->keys.file);
        else
            fprintf(out, "# file: none (no key is known)\n");
        fprintf(out, "\n");
    } else
        fprintf(out, "# [keys]: none (authentication is off)\n\n");
    for (unsigned i = 0; i < c->ntiers; i++) {
        const struct cfg_tier *t = &c->tiers[i];
        fprintf(out, "[tier %s]\nrequests_per_minute = %llu\ntokens_per_minute = %llu\n", t->name,
                (unsigned long long)t->requests_per_minute, (unsigned long long)t->tokens_per_minute);
        print_duration(out, "burst", t->burst_ms);
        fprintf(out, "max_tokens = %llu\ndaily_tokens = %llu\n",
                (unsigned long long)t->max_tokens, (unsigned long long)t->daily_tokens);
        print_micro_usd(out, "daily_spend", t->daily_spend_micro_usd);
        fprintf(out, "priority = %s\n\n", priorities[t->priority]);
    }
    for (unsigned i = 0; i < c->nmodels; i++) {
        const struct cfg_model *m = &c->models[i];
        fprintf(out, "[model %s]\n", m->glob);
        print_micro_usd(out, "input_per_mtok", m->input_per_mtok);
        print_micro_usd(out, "output_per_mtok", m->output_per_mtok);
        fprintf(out, "\n");
    }
    print_cluster(&c->cluster, out);
    print_tracing(&c->tracing, out);
}
