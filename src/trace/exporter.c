#include "trace/exporter.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "proto/http1.h"
#include "trace/otlp.h"
#include "util/clock.h"

#define POLL_MS 20u                 /* how often fill levels are looked at */
#define BODY_CAP (8u << 20)         /* a batch of TRACE_BATCH_MAX full spans fits well below */
#define RESP_CAP 8192u

static unsigned nshards;
static struct trace_shard *shards;

/* what main hands over; the thread copies it when `version` moved */
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cfg_tracing cfg_pending;
static _Atomic unsigned cfg_version;

static struct {
    _Atomic uint64_t exported, dropped, errors;  /* dropped: at export (the rings count their own) */
} stats;

/* the thread's own state */
static struct {
    struct cfg_tracing cfg;
    unsigned cfg_version;
    int fd;                     /* keep-alive connection to the collector, -1 none */
    struct span_record *batch;
    char *body;
    char resp[RESP_CAP];
    bool warned;                /* one log line per outage, not one per batch */
} X = { .fd = -1 };

static pthread_t thread;
static bool running;
static _Atomic bool stopping;
static int wake_fd = -1;

int trace_init(unsigned n)
{
    /* aligned: each shard's cell on its own cache lines */
    shards = aligned_alloc(_Alignof(struct trace_shard), n * sizeof *shards);
    if (!shards)
        return -1;
    memset(shards, 0, n * sizeof *shards);
    nshards = n;
    for (unsigned s = 0; s < n; s++) {
        shards[s].ring = span_ring_new(TRACE_RING_SLOTS);
        if (!shards[s].ring)
            return -1;
        if (getrandom(shards[s].rng.s, sizeof shards[s].rng.s, 0) != sizeof shards[s].rng.s)
            shards[s].rng.s[0] = (uint64_t)time(NULL) ^ ((uint64_t)s << 32) ^ (uint64_t)getpid();
        shards[s].rng.s[0] |= 1;
    }
    return 0;
}

struct trace_shard *trace_shard_of(unsigned shard)
{
    return &shards[shard];
}

void trace_configure(const struct cfg_tracing *t)
{
    pthread_mutex_lock(&cfg_lock);
    cfg_pending = *t;
    atomic_fetch_add(&cfg_version, 1);
    pthread_mutex_unlock(&cfg_lock);
}

static void add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

/* ---- the collector connection ---- */

static void disconnect(void)
{
    if (X.fd >= 0)
        close(X.fd);
    X.fd = -1;
}

static int wait_fd(int fd, short events)
{
    struct pollfd p = { .fd = fd, .events = events };
    int r;
    do
        r = poll(&p, 1, TRACE_IO_TIMEOUT_MS);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        errno = ETIMEDOUT;
    return r > 0 ? 0 : -1;
}

/* A blocking socket whose every send and receive gives up after the timeout. */
static int connect_collector(const struct cfg_addr *a)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)&a->sa, a->salen) < 0) {
        int err = 0;
        socklen_t len = sizeof err;
        if (errno != EINPROGRESS || wait_fd(fd, POLLOUT) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            if (err)
                errno = err;
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
    }
    struct timeval tv = { .tv_sec = TRACE_IO_TIMEOUT_MS / 1000, .tv_usec = (TRACE_IO_TIMEOUT_MS % 1000) * 1000 };
    int one = 1;
    if (fcntl(fd, F_SETFL, 0) < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t r = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        while (n > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

/* Reads the collector's answer; its status, or -1 (then the connection is not
 * reusable). *keep: the connection may carry the next batch. */
static int read_response(bool *keep)
{
    size_t len = 0;
    struct http_response resp;
    const char *why = NULL;
    for (;;) {
        ssize_t r = recv(X.fd, X.resp + len, sizeof X.resp - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        len += (size_t)r;
        int st = http_parse_response(X.resp, len, sizeof X.resp, METHOD_POST, &resp, &why);
        if (st == HTTP_INCOMPLETE)
            continue;
        if (st != HTTP_OK)
            return -1;
        if (resp.status < 200) {    /* an interim answer: the real one follows */
            memmove(X.resp, X.resp + resp.head_len, len - resp.head_len);
            len -= resp.head_len;
            continue;
        }
        break;
    }
    /* the body (a small JSON, often empty) is skipped; only a known length keeps the connection */
    *keep = resp.keep_alive && resp.body == BODY_LENGTH;
    if (*keep) {
        uint64_t have = len - resp.head_len, left = resp.content_length > have ? resp.content_length - have : 0;
        while (left > 0) {
            ssize_t r = recv(X.fd, X.resp, left < sizeof X.resp ? left : sizeof X.resp, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                *keep = false;
                break;
            }
            left -= (uint64_t)r;
        }
    } else if (resp.body == BODY_NONE) {
        *keep = resp.keep_alive;
    }
    return resp.status;
}

/* POSTs body; the HTTP status, or -1 with a reason in why. A kept connection the
 * collector closed meanwhile gets one retry on a fresh one. */
static int post(const char *body, size_t blen, const char **why)
{
    char head[768];
    int hlen = snprintf(head, sizeof head,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nUser-Agent: aigw/" AIGW_VERSION "\r\n\r\n",
                        X.cfg.path, X.cfg.collector.text, blen);
    for (int tries = 0; tries < 2; tries++) {
        bool reused = X.fd >= 0;
        if (!reused) {
            X.fd = connect_collector(&X.cfg.collector);
            if (X.fd < 0) {
                *why = strerror(errno);
                return -1;
            }
        }
        struct iovec iov[2] = { { head, (size_t)hlen }, { (void *)body, blen } };
        bool keep = false;
        int status = send_all(X.fd, iov, 2) == 0 ? read_response(&keep) : -1;
        if (status < 0) {
            bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
            *why = timed_out ? "timed out" : "connection lost";
            disconnect();
            if (reused && !timed_out)
                continue;   /* the collector closed the kept connection meanwhile */
            return -1;
        }
        if (!keep)
            disconnect();
        return status;
    }
    return -1;
}

/* Exports n spans of X.batch; false when they were dropped. After a failure,
 * the rest of the turn is dropped without trying (failed_turn): a hung
 * collector then costs one timeout per turn, however many spans wait. */
static bool export_batch(unsigned n, bool failed_turn)
{
    if (n == 0)
        return true;
    if (failed_turn) {
        add(&stats.dropped, n);
        return false;
    }
    struct outbuf o = outbuf_make(X.body, BODY_CAP);
    otlp_encode(&o, X.cfg.service_name, X.batch, n);
    const char *why = "body too large";
    int status = o.len <= o.cap ? post(X.body, o.len, &why) : -1;
    if (status >= 200 && status < 300) {
        add(&stats.exported, n);
        if (X.warned)
            log_info("tracing: exporting to %s again", X.cfg.endpoint);
        X.warned = false;
        return true;
    }
    add(&stats.dropped, n);
    add(&stats.errors, 1);
    if (!X.warned) {
        if (status > 0)
            log_warn("tracing: collector %s answered %d: %u spans dropped", X.cfg.endpoint, status, n);
        else
            log_warn("tracing: collector %s: %s: %u spans dropped (and more until it is back)",
                     X.cfg.endpoint, why, n);
    }
    X.warned = true;
    return false;
}

/* Empties every ring into batches of at most TRACE_BATCH_MAX spans; returns
 * how many spans it took. */
static unsigned drain(void)
{
    unsigned taken = 0;
    unsigned n = 0;
    bool failed = false;
    for (unsigned s = 0; s < nshards; s++) {
        for (;;) {
            uint32_t got = span_ring_pop(shards[s].ring, X.batch + n, TRACE_BATCH_MAX - n);
            if (got == 0)
                break;
            taken += got;
            if (!X.cfg.enabled) {   /* turned off: what was still queued goes */
                add(&stats.dropped, got);
                continue;
            }
            n += got;
            if (n == TRACE_BATCH_MAX) {
                failed |= !export_batch(n, failed);
                n = 0;
            }
        }
    }
    if (X.cfg.enabled)
        export_batch(n, failed);
    return taken;
}

static bool a_ring_half_full(void)
{
    for (unsigned s = 0; s < nshards; s++)
        if (span_ring_fill(shards[s].ring) >= TRACE_RING_SLOTS / 2)
            return true;
    return false;
}

static void follow_config(void)
{
    unsigned v = atomic_load(&cfg_version);
    if (v == X.cfg_version)
        return;
    pthread_mutex_lock(&cfg_lock);
    struct cfg_tracing next = cfg_pending;
    X.cfg_version = atomic_load(&cfg_version);
    pthread_mutex_unlock(&cfg_lock);
    bool moved = !next.enabled || !X.cfg.enabled || strcmp(next.endpoint, X.cfg.endpoint) != 0;
    if (moved) {
        disconnect();
        X.warned = false;
        if (next.enabled)
            log_info("tracing: exporting spans to %s (sample_ratio %u/1000000, service.name %s)",
                     next.endpoint, next.sample_millionths, next.service_name);
        else if (X.cfg.enabled)
            log_info("tracing: off");
    }
    X.cfg = next;
}

static void *exporter_main(void *arg)
{
    (void)arg;
    uint64_t next_flush = clock_mono_ms() + TRACE_FLUSH_MS;
    while (!atomic_load(&stopping)) {
        follow_config();
        uint64_t now = clock_mono_ms();
        if (now >= next_flush || a_ring_half_full()) {
            /* a busy turn (a ring's worth of spans) goes again at once: under a
             * sustained load the collector, not the polling, sets the pace */
            bool busy = drain() >= TRACE_RING_SLOTS / 2;
            next_flush = clock_mono_ms() + TRACE_FLUSH_MS;
            if (busy)
                continue;
        }
        struct pollfd p = { .fd = wake_fd, .events = POLLIN };
        if (poll(&p, 1, POLL_MS) > 0) {
            uint64_t v;
            if (read(wake_fd, &v, sizeof v) < 0)
                (void)0;
        }
    }
    follow_config();
    drain();    /* the shards are gone: what they left */
    return NULL;
}

int trace_exporter_start(void)
{
    X.batch = malloc(TRACE_BATCH_MAX * sizeof *X.batch);
    X.body = malloc(BODY_CAP);
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!X.batch || !X.body || wake_fd < 0) {
        log_error("tracing: cannot start the exporter: out of resources");
        return -1;
    }
    int rc = pthread_create(&thread, NULL, exporter_main, NULL);
    if (rc) {
        log_error("tracing: cannot start the exporter thread: %s", strerror(rc));
        return -1;
    }
    running = true;
    return 0;
}

void trace_exporter_stop(void)
{
    if (running) {
        atomic_store(&stopping, true);
        uint64_t one = 1;
        if (write(wake_fd, &one, sizeof one) < 0)
            (void)0;
        pthread_join(thread, NULL);
        running = false;
    }
    /* the rings stay: a shard cut off past drain_timeout may still push, and
     * /metrics reads their counters until the process exits */
    disconnect();
}

void trace_metrics(struct outbuf *o)
{
    uint64_t ring_dropped = 0;
    for (unsigned s = 0; s < nshards; s++)
        ring_dropped += atomic_load_explicit(&shards[s].ring->dropped, memory_order_relaxed);
    OUTBUF_LIT(o, "# HELP aigw_trace_spans_total Spans finished while [tracing] is on, by fate: exported "
                  "(the collector took them) or dropped (a full queue, or a failed export).\n"
                  "# TYPE aigw_trace_spans_total counter\naigw_trace_spans_total{result=\"exported\"} ");
    outbuf_u64(o, atomic_load_explicit(&stats.exported, memory_order_relaxed));
    OUTBUF_LIT(o, "\naigw_trace_spans_total{result=\"dropped\"} ");
    outbuf_u64(o, atomic_load_explicit(&stats.dropped, memory_order_relaxed) + ring_dropped);
    OUTBUF_LIT(o, "\n# HELP aigw_trace_export_errors_total POSTs to the OTLP collector that failed "
                  "(refused, timed out, or answered other than 2xx).\n"
                  "# TYPE aigw_trace_export_errors_total counter\naigw_trace_export_errors_total ");
    outbuf_u64(o, atomic_load_explicit(&stats.errors, memory_order_relaxed));
    outbuf_char(o, '\n');
}
