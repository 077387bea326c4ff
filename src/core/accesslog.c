#include "core/accesslog.h"
#include "core/cost.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"
#include "policy/keys.h"
#include "util/clock.h"
#include "util/json_escape.h"
#include "util/outbuf.h"

#define RING_MIN (64u * 1024)
#define RING_DEFAULT (1u * 1024 * 1024)
#define WRITER_TICK_NS (20 * 1000 * 1000L)

/* ---- formatting ---- */

const char *alog_termination_name(enum termination t)
{
    static const char *const names[TERM_COUNT] = {
        [TERM_CLIENT_ABORT] = "client_abort",
        [TERM_DRAIN_TIMEOUT] = "drain_timeout",
        [TERM_UPSTREAM_ERROR] = "upstream_error",
        [TERM_UPSTREAM_TIMEOUT] = "upstream_timeout",
        [TERM_CLIENT_TIMEOUT] = "client_timeout",
    };
    return (unsigned)t < TERM_COUNT ? names[t] : NULL;
}

/* Output budget (escaped bytes) per string field; together with the fixed part
 * they stay well under ALOG_LINE_MAX. */
#define MAX_CLIENT 96
#define MAX_METHOD 32
#define MAX_TARGET 2048
#define MAX_NAME 128        /* route, pool, backend */
#define MAX_REQUEST_ID 200
#define MAX_ERROR 256
#define MAX_BACKEND_ITEM 96 /* each entry of "backends" */

/* Microseconds as milliseconds with three decimals: 1234 -> "1.234". */
static void jb_ms(struct outbuf *b, uint64_t us)
{
    outbuf_u64(b, us / 1000);
    char frac[4] = { '.', (char)('0' + us % 1000 / 100), (char)('0' + us % 100 / 10),
                     (char)('0' + us % 10) };
    outbuf_put(b, frac, sizeof frac);
}

/* A JSON string of s[0..n), escaped, with at most max_out bytes of escaped content;
 * longer ones are cut at a character boundary and end in "...". */
static void jb_str(struct outbuf *b, const char *s, size_t n, size_t max_out)
{
    OUTBUF_LIT(b, "\"");
    if (!json_escape(b, s, n, max_out, JSON_ESCAPE_ALL_CONTROLS))
        OUTBUF_LIT(b, "...");
    OUTBUF_LIT(b, "\"");
}

static void jb_cstr(struct outbuf *b, const char *s, size_t max_out)
{
    if (!s)
        s = "";
    jb_str(b, s, strlen(s), max_out);
}

/* ---- credentials in targets ---- */

/* Writes into a fixed buffer, cutting what does not fit. */
struct cut_buf {
    char *p;
    size_t cap, len;
};

static void cb_put(struct cut_buf *o, const char *s, size_t n)
{
    size_t room = o->cap - o->len;
    if (n > room)
        n = room;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static const char redacted[] = "REDACTED";

static bool is_base62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* The first KEY_PREFIX in s[0..end), or NULL. memchr, not memmem: glibc's
 * memmem sets up tables per call, which costs more than these short runs. */
static const char *find_key_prefix(const char *s, const char *end)
{
    while (end - s >= KEY_PREFIX_LEN && (s = memchr(s, KEY_PREFIX[0], (size_t)(end - s))) != NULL) {
        if (end - s >= KEY_PREFIX_LEN && memcmp(s, KEY_PREFIX, KEY_PREFIX_LEN) == 0)
            return s;
        s++;
    }
    return NULL;
}

/* Copies s[0..n), every aigw key in it (the prefix and the base62 digits after
 * it) written as REDACTED. */
static void put_masking_aigw_keys(struct cut_buf *o, const char *s, size_t n)
{
    const char *end = s + n;
    const char *k;
    while ((k = find_key_prefix(s, end)) != NULL) {
        cb_put(o, s, (size_t)(k - s));
        cb_put(o, redacted, sizeof redacted - 1);
        s = k + KEY_PREFIX_LEN;
        while (s < end && is_base62(*s))
            s++;
    }
    cb_put(o, s, (size_t)(end - s));
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The first bytes of a query component percent-decoded ('+' as space) and in
 * lower case, at most cap of them; *whole says whether that was all of it. */
static size_t decode_lower(const char *s, size_t n, char *out, size_t cap, bool *whole)
{
    size_t i = 0, len = 0;
    while (i < n && len < cap) {
        unsigned char c = (unsigned char)s[i++];
        int hi, lo;
        if (c == '%' && n - i >= 2 && (hi = hex_digit(s[i])) >= 0 && (lo = hex_digit(s[i + 1])) >= 0) {
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        out[len++] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
    }
    *whole = i == n;
    return len;
}

/* name[0..n) equals the lowercase literal lit of the same length, in any case. */
static bool ci_equal(const char *name, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if ((c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c) != lit[i])
            return false;
    }
    return true;
}

/* Query parameters that carry credentials by convention (any case; a name with
 * '%' in it is percent-decoded first). */
static bool credential_param(const char *name, size_t n, bool encoded)
{
    char buf[16];
    if (encoded) {
        bool whole;
        if (n > 3 * sizeof buf)
            return false;
        n = decode_lower(name, n, buf, sizeof buf, &whole);
        if (!whole)
            return false;
        name = buf;
    }
#define IS(lit) ci_equal(name, lit, sizeof lit - 1)
    switch (n) {
    case 3:  return IS("key");
    case 4:  return IS("auth");
    case 5:  return IS("token");
    case 6:  return IS("apikey") || IS("secret");
    case 7:  return IS("api_key") || IS("api-key");
    case 8:  return IS("password");
    case 9:  return IS("x-api-key");
    case 12: return IS("access_token");
    case 13: return IS("authorization") || IS("client_secret");
    default: return false;
    }
#undef IS
}

/* A value that looks like a secret whatever its parameter is called: an
 * OpenAI-style key ("sk-...") or a bearer token. */
static bool credential_value(const char *value, size_t n)
{
    char first = (char)(value[0] | 0x20);
    if (first != 's' && first != 'b' && value[0] != '%')
        return false;
    char buf[7];
    bool whole;
    size_t len = decode_lower(value, n, buf, sizeof buf, &whole);
    return (len >= 3 && memcmp(buf, "sk-", 3) == 0) || (len == 7 && memcmp(buf, "bearer ", 7) == 0);
}

size_t alog_redact_target(char *out, size_t cap, struct slice target)
{
    struct cut_buf o = { out, cap, 0 };
    const char *end = target.p + target.len;
    const char *query = memchr(target.p, '?', target.len);
    /* Text is written in runs: [copied, p) has been looked at and holds no
     * credential parameter. */
    const char *copied = target.p;
    const char *p = query ? query + 1 : end;
    while (p < end && o.len + (size_t)(p - copied) < cap) {
        /* one component: name=value up to '&' */
        static const bool query_mark[256] = { ['&'] = true, ['='] = true, ['%'] = true };
        const char *eq = NULL, *stop = p;
        bool encoded = false;
        for (;;) {
            while (stop < end && !query_mark[(uint8_t)*stop])
                stop++;
            if (stop == end || *stop == '&')
                break;
            if (!eq) {
                if (*stop == '=')
                    eq = stop;
                else
                    encoded = true;
            }
            stop++;
        }
        const char *value = eq ? eq + 1 : p;
        if (value < stop && ((eq && credential_param(p, (size_t)(eq - p), encoded)) ||
                             credential_value(value, (size_t)(stop - value)))) {
            put_masking_aigw_keys(&o, copied, (size_t)(value - copied));
            cb_put(&o, redacted, sizeof redacted - 1);
            copied = stop;
        }
        p = stop < end ? stop + 1 : end;
    }
    put_masking_aigw_keys(&o, copied, (size_t)(p - copied));
    return o.len;
}

/* "2026-11-21T22:17:03" for the current second, formatted once per second per thread. */
static __thread uint64_t cached_sec = UINT64_MAX;
static __thread char cached_date[20];

static void jb_time(struct outbuf *b, uint64_t time_us)
{
    uint64_t sec = time_us / 1000000;
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        char tmp[64];
        if (gmtime_r(&t, &tm) && tm.tm_year + 1900 <= 9999 &&
            snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec) == 19)
            memcpy(cached_date, tmp, 19);
        else
            memcpy(cached_date, "9999-12-31T23:59:59", 19);
        cached_sec = sec;
    }
    uint64_t us = time_us % 1000000;
    char frac[9] = { '.' };
    for (int i = 6; i >= 1; i--) {
        frac[i] = (char)('0' + us % 10);
        us /= 10;
    }
    frac[7] = 'Z';
    frac[8] = '"';
    OUTBUF_LIT(b, "\"");
    outbuf_put(b, cached_date, 19);
    outbuf_put(b, frac, 9);
}

size_t alog_format(char *out, size_t cap, const struct alog_entry *e)
{
    struct outbuf b = outbuf_make(out, cap);
    OUTBUF_LIT(&b, "{\"time\":");
    jb_time(&b, e->time_us);
    OUTBUF_LIT(&b, ",\"client\":");
    jb_str(&b, e->client.p, e->client.len, MAX_CLIENT);
    OUTBUF_LIT(&b, ",\"method\":");
    jb_str(&b, e->method.p, e->method.len, MAX_METHOD);
    OUTBUF_LIT(&b, ",\"target\":");
    jb_str(&b, e->target.p, e->target.len, MAX_TARGET);
    OUTBUF_LIT(&b, ",\"status\":");
    outbuf_i64(&b, e->status);
    OUTBUF_LIT(&b, ",\"route\":");
    jb_cstr(&b, e->route, MAX_NAME);
    OUTBUF_LIT(&b, ",\"pool\":");
    jb_cstr(&b, e->pool, MAX_NAME);
    OUTBUF_LIT(&b, ",\"backend\":");
    jb_cstr(&b, e->backend, MAX_NAME);
    OUTBUF_LIT(&b, ",\"request_id\":");
    jb_str(&b, e->request_id.p, e->request_id.len, MAX_REQUEST_ID);
    OUTBUF_LIT(&b, ",\"bytes_in\":");
    outbuf_u64(&b, e->bytes_in);
    OUTBUF_LIT(&b, ",\"bytes_out\":");
    outbuf_u64(&b, e->bytes_out);
    OUTBUF_LIT(&b, ",\"duration_ms\":");
    jb_ms(&b, e->duration_us);
    OUTBUF_LIT(&b, ",\"upstream_first_byte_ms\":");
    if (e->first_byte_us >= 0)
        jb_ms(&b, (uint64_t)e->first_byte_us);
    else
        OUTBUF_LIT(&b, "null");
    OUTBUF_LIT(&b, ",\"upstream_reused\":");
    if (e->upstream_reused)
        OUTBUF_LIT(&b, "true");
    else
        OUTBUF_LIT(&b, "false");
    OUTBUF_LIT(&b, ",\"queue_ms\":");
    jb_ms(&b, e->queue_us);
    OUTBUF_LIT(&b, ",\"backends\":[");
    for (unsigned i = 0; i < e->nbackends && i < ALOG_BACKENDS_MAX; i++) {
        if (i)
            OUTBUF_LIT(&b, ",");
        jb_cstr(&b, e->backends[i], MAX_BACKEND_ITEM);
    }
    OUTBUF_LIT(&b, "],\"fallback\":");
    if (e->fallback)
        OUTBUF_LIT(&b, "true");
    else
        OUTBUF_LIT(&b, "false");
    OUTBUF_LIT(&b, ",\"termination\":");
    if (alog_termination_name(e->termination))
        jb_cstr(&b, alog_termination_name(e->termination), MAX_NAME);
    else
        OUTBUF_LIT(&b, "null");
    OUTBUF_LIT(&b, ",\"error\":");
    if (e->error)
        jb_cstr(&b, e->error, MAX_ERROR);
    else
        OUTBUF_LIT(&b, "null");
    if (e->key) {
        OUTBUF_LIT(&b, ",\"key\":");
        jb_cstr(&b, e->key, MAX_NAME);
    }
    if (e->tls_version) {
        /* TLS connections only: what the handshake settled */
        OUTBUF_LIT(&b, ",\"tls_version\":");
        jb_cstr(&b, e->tls_version, MAX_NAME);
        OUTBUF_LIT(&b, ",\"tls_cipher\":");
        jb_cstr(&b, e->tls_cipher ? e->tls_cipher : "", MAX_NAME);
        OUTBUF_LIT(&b, ",\"tls_sni\":");
        if (e->tls_sni)
            jb_cstr(&b, e->tls_sni, MAX_NAME);
        else
            OUTBUF_LIT(&b, "null");
        if (e->tls_client_subject) {
            OUTBUF_LIT(&b, ",\"tls_client_subject\":");
            jb_cstr(&b, e->tls_client_subject, MAX_NAME * 2);
        }
    }
    if (e->ai) {
        OUTBUF_LIT(&b, ",\"model\":");
        if (e->model.len)
            jb_str(&b, e->model.p, e->model.len, MAX_NAME);
        else
            OUTBUF_LIT(&b, "null");
        OUTBUF_LIT(&b, ",\"stream\":");
        if (e->stream)
            OUTBUF_LIT(&b, "true");
        else
            OUTBUF_LIT(&b, "false");
        OUTBUF_LIT(&b, ",\"tokens_in\":");
        outbuf_u64(&b, e->tokens_in);
        OUTBUF_LIT(&b, ",\"tokens_out\":");
        outbuf_u64(&b, e->tokens_out);
        if (e->cost_pusd) {
            OUTBUF_LIT(&b, ",\"cost_usd\":");
            outbuf_fixed(&b, cost_nano_rounded(e->cost_pusd), 9);
        }
        OUTBUF_LIT(&b, ",\"limit\":");
        if (e->limit)
            jb_cstr(&b, e->limit, MAX_NAME);
        else
            OUTBUF_LIT(&b, "null");
        if (e->priority) {
            OUTBUF_LIT(&b, ",\"priority\":");
            jb_cstr(&b, e->priority, MAX_NAME);
        }
    }
    OUTBUF_LIT(&b, "}\n");
    return outbuf_done(&b);
}

/* ---- per-shard rings ---- */

/* Single producer (the shard), single consumer (the writer). head and tail count
 * bytes since the start and never wrap in practice (2^64); the shard publishes
 * whole lines only, so the writer always writes whole lines. */
struct alog_ring {
    _Alignas(64) _Atomic uint64_t head;     /* written by the shard */
    uint64_t tail_seen;                     /* the shard's last look at tail */
    char *buf;
    size_t mask;
    _Alignas(64) _Atomic uint64_t tail;     /* written by the writer */
};

static struct alog_ring *rings;
static unsigned nrings;
static _Atomic int current_mode = ACCESS_OFF;  /* what the shards check */

/* Control plane <-> writer. */
static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ctl_cv;
static bool writer_running;
static bool stop_requested;
static bool pending_valid;          /* a destination from alog_configure, not yet taken */
static struct destination {
    enum access_log_mode mode;
    int fd;                         /* -1 when off */
    char path[PATH_MAX];            /* for ACCESS_FILE: reopened by alog_reopen */
} pending;
static _Atomic bool reopen_requested;
static pthread_t writer_thread;

/* The writer's own state. */
static struct destination dest = { ACCESS_OFF, -1, "" };
static bool write_failing;

static void close_destination(struct destination *d)
{
    if (d->mode == ACCESS_FILE && d->fd >= 0)
        close(d->fd);
    d->fd = -1;
}

static int open_destination(struct destination *d, enum access_log_mode mode, const char *path)
{
    d->mode = mode;
    d->fd = -1;
    d->path[0] = '\0';
    if (mode == ACCESS_STDOUT) {
        d->fd = STDOUT_FILENO;
    } else if (mode == ACCESS_FILE) {
        if (!path || !*path || strlen(path) >= sizeof d->path) {
            errno = EINVAL;
            log_error("access log: bad file path");
            return -1;
        }
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            int err = errno;
            log_error("access log: cannot open %s: %s", path, strerror(err));
            errno = err;
            return -1;
        }
        d->fd = fd;
        strcpy(d->path, path);
    }
    return 0;
}

static const char *destination_name(const struct destination *d)
{
    return d->mode == ACCESS_FILE ? d->path : "stdout";
}

/* Writes iov[0..cnt) until done or an error; returns the bytes written and sets
 * *err (0 when all was written). */
static size_t write_all(int fd, struct iovec *iov, int cnt, int *err)
{
    size_t total = 0;
    *err = 0;
    while (cnt > 0) {
        ssize_t n = writev(fd, iov, cnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            break;
        }
        total += (size_t)n;
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return total;
}

/* Writes out what ring r holds. On a write error the unwritten bytes stay in the
 * ring for the next tick (the shard counts drops meanwhile); returns false then. */
static bool drain_ring(struct alog_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (head == tail)
        return true;
    if (dest.fd < 0) {
        atomic_store_explicit(&r->tail, head, memory_order_release);
        return true;
    }
    size_t len = (size_t)(head - tail);
    size_t off = (size_t)tail & r->mask;
    size_t first = r->mask + 1 - off;
    if (first > len)
        first = len;
    struct iovec iov[2] = { { r->buf + off, first }, { r->buf, len - first } };
    int err;
    size_t done = write_all(dest.fd, iov, len > first ? 2 : 1, &err);
    atomic_store_explicit(&r->tail, tail + done, memory_order_release);
    if (err) {
        if (!write_failing && err != EAGAIN)
            log_warn("access log: write to %s failed: %s (retrying; lines that do not fit "
                     "are dropped and counted)", destination_name(&dest), strerror(err));
        write_failing = true;
        return false;
    }
    if (write_failing) {
        log_info("access log: writing to %s again", destination_name(&dest));
        write_failing = false;
    }
    return true;
}

static void drain_all(void)
{
    for (unsigned i = 0; i < nrings; i++)
        if (!drain_ring(&rings[i]))
            break;
}

static void switch_destination(struct destination *next)
{
    close_destination(&dest);
    dest = *next;
    write_failing = false;
    atomic_store_explicit(&current_mode, dest.mode, memory_order_relaxed);
}

static void reopen_destination(void)
{
    if (dest.mode != ACCESS_FILE) {
        log_info("access log: reopen asked; nothing to reopen (it goes to %s)",
                 dest.mode == ACCESS_OFF ? "nowhere: off" : "stdout");
        return;
    }
    struct destination next;
    bool ok = open_destination(&next, ACCESS_FILE, dest.path) == 0;   /* else logged; the old file stays */
    if (ok) {
        switch_destination(&next);
        log_info("access log: reopened %s", dest.path);
    }
    metrics_count_access_log_reopen(ok);
}

static void *writer_main(void *arg)
{
    pthread_mutex_lock(&ctl_mu);
    for (;;) {
        bool stopping = stop_requested;
        bool have_next = pending_valid;
        struct destination next = pending;
        pending_valid = false;
        pthread_mutex_unlock(&ctl_mu);

        drain_all();    /* lines written so far go to the destination they were meant for */
        if (have_next)
            switch_destination(&next);
        if (atomic_exchange_explicit(&reopen_requested, false, memory_order_acq_rel))
            reopen_destination();
        if (have_next)
            drain_all();

        pthread_mutex_lock(&ctl_mu);
        if (stopping)
            break;
        if (!stop_requested && !pending_valid &&
            !atomic_load_explicit(&reopen_requested, memory_order_relaxed)) {
            struct timespec until = clock_mono_after(WRITER_TICK_NS);
            pthread_cond_timedwait(&ctl_cv, &ctl_mu, &until);
        }
    }
    pthread_mutex_unlock(&ctl_mu);
    return NULL;
}

static size_t ring_size_for(size_t requested)
{
    if (requested == 0)
        return RING_DEFAULT;
    size_t size = RING_MIN;
    while (size < requested && size < ((size_t)1 << 40))
        size <<= 1;
    return size;
}

static void free_rings(void)
{
    for (unsigned i = 0; rings && i < nrings; i++)
        free(rings[i].buf);
    free(rings);
    rings = NULL;
    nrings = 0;
}

int alog_init(unsigned nshards, size_t ring_bytes, enum access_log_mode mode, const char *path)
{
    pthread_mutex_lock(&ctl_mu);
    bool running = writer_running;
    pthread_mutex_unlock(&ctl_mu);
    if (running) {
        errno = EALREADY;
        return -1;
    }
    if (nshards == 0) {
        errno = EINVAL;
        log_error("access log: no shards");
        return -1;
    }
    size_t size = ring_size_for(ring_bytes);
    rings = aligned_alloc(_Alignof(struct alog_ring), nshards * sizeof *rings);
    if (!rings)
        goto nomem;
    memset(rings, 0, nshards * sizeof *rings);
    nrings = nshards;
    for (unsigned i = 0; i < nshards; i++) {
        rings[i].buf = malloc(size);
        if (!rings[i].buf)
            goto nomem;
        rings[i].mask = size - 1;
    }

    struct destination first;
    if (open_destination(&first, mode, path) < 0) {
        int err = errno;
        free_rings();
        errno = err;
        return -1;
    }
    dest = first;
    write_failing = false;
    atomic_store_explicit(&reopen_requested, false, memory_order_relaxed);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ctl_cv, &ca);
    pthread_condattr_destroy(&ca);
    stop_requested = false;
    pending_valid = false;
    int rc = pthread_create(&writer_thread, NULL, writer_main, NULL);
    if (rc != 0) {
        close_destination(&dest);
        pthread_cond_destroy(&ctl_cv);
        free_rings();
        log_error("access log: cannot start the writer thread: %s", strerror(rc));
        errno = rc;
        return -1;
    }
    atomic_store_explicit(&current_mode, mode, memory_order_relaxed);
    pthread_mutex_lock(&ctl_mu);
    writer_running = true;
    pthread_mutex_unlock(&ctl_mu);
    return 0;

nomem:
    free_rings();
    log_error("access log: out of memory for %u rings of %zu bytes", nshards, size);
    errno = ENOMEM;
    return -1;
}

void alog_write(unsigned shard, const struct alog_entry *e)
{
    if (atomic_load_explicit(&current_mode, memory_order_relaxed) == ACCESS_OFF)
        return;
    if (!rings || shard >= nrings)
        return;
    struct alog_ring *r = &rings[shard];
    char line[ALOG_LINE_MAX];
    size_t n = alog_format(line, sizeof line, e);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t size = r->mask + 1;
    if (n > size - (size_t)(head - r->tail_seen)) {
        r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (n > size - (size_t)(head - r->tail_seen))
            n = 0;
    }
    if (n == 0) {
        struct shard_metrics *m = metrics_shard(shard);
        if (m)
            mc_add(&m->access_log_dropped, 1);
        return;
    }
    size_t off = (size_t)head & r->mask;
    size_t first = size - off < n ? size - off : n;
    memcpy(r->buf + off, line, first);
    memcpy(r->buf, line + first, n - first);
    atomic_store_explicit(&r->head, head + n, memory_order_release);
}

int alog_configure(enum access_log_mode mode, const char *path)
{
    struct destination next;
    pthread_mutex_lock(&ctl_mu);
    bool running = writer_running;
    pthread_mutex_unlock(&ctl_mu);
    if (!running) {
        errno = EINVAL;
        return -1;
    }
    if (open_destination(&next, mode, path) < 0)
        return -1;
    pthread_mutex_lock(&ctl_mu);
    if (!writer_running) {      /* shut down meanwhile */
        pthread_mutex_unlock(&ctl_mu);
        close_destination(&next);
        errno = EINVAL;
        return -1;
    }
    if (pending_valid)
        close_destination(&pending);
    pending = next;
    pending_valid = true;
    pthread_cond_signal(&ctl_cv);
    pthread_mutex_unlock(&ctl_mu);
    return 0;
}

void alog_reopen(void)
{
    atomic_store_explicit(&reopen_requested, true, memory_order_release);
    pthread_mutex_lock(&ctl_mu);
    if (writer_running)
        pthread_cond_signal(&ctl_cv);
    pthread_mutex_unlock(&ctl_mu);
}

void alog_shutdown(void)
{
    pthread_mutex_lock(&ctl_mu);
    if (!writer_running) {
        pthread_mutex_unlock(&ctl_mu);
        return;
    }
    stop_requested = true;
    pthread_cond_signal(&ctl_cv);
    pthread_mutex_unlock(&ctl_mu);
    pthread_join(writer_thread, NULL);

    pthread_mutex_lock(&ctl_mu);
    writer_running = false;
    if (pending_valid)
        close_destination(&pending);
    pending_valid = false;
    pthread_mutex_unlock(&ctl_mu);
    atomic_store_explicit(&current_mode, ACCESS_OFF, memory_order_relaxed);
    close_destination(&dest);
    dest.mode = ACCESS_OFF;
    pthread_cond_destroy(&ctl_cv);
    free_rings();
}
