/* Request bodies on raw routes are flow-controlled: a client uploading faster
 * than the backend reads is slowed down (aigw stops reading from it) instead of
 * aigw queueing the body, so memory per upload stays small and the body arrives
 * whole however large it is. */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

TestSuite(upload, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define UPLOAD_BYTES (64ull * 1024 * 1024)
#define BACKEND_READ 65536          /* bytes per read ... */
#define BACKEND_PAUSE_US 4000       /* ... then a pause: about 16 MB/s at most */

/* The upload's bytes: a stream both sides can regenerate, so the backend checks
 * every byte (as a hash would) without holding the body. */
static inline unsigned char body_byte(uint64_t i)
{
    uint64_t x = (i >> 3) * 0x9E3779B97F4A7C15ull;
    return (unsigned char)(x >> (8 * (i & 7)));
}

struct slow_backend {
    int listen_fd, port;
    pthread_t thread;
    _Atomic uint64_t received;      /* body bytes read so far */
    _Atomic uint64_t first_bad;     /* offset of the first wrong byte, UINT64_MAX: none */
};

static void *slow_backend_main(void *arg)
{
    struct slow_backend *b = arg;
    int fd = accept(b->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    static char buf[BACKEND_READ];
    size_t have = 0;
    char *end = NULL;
    struct timeval tv = { .tv_sec = 20 };   /* a stalled upload fails the test, never hangs it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
        ssize_t n = have < sizeof buf ? read(fd, buf + have, sizeof buf - have) : -1;
        if (n <= 0) {
            close(fd);
            return NULL;
        }
        have += (size_t)n;
    }
    uint64_t got = 0;
    uint64_t bad = UINT64_MAX;
    size_t body_start = (size_t)(end + 4 - buf);
    for (size_t i = body_start; i < have; i++, got++)
        if (bad == UINT64_MAX && (unsigned char)buf[i] != body_byte(got))
            bad = got;
    while (got < UPLOAD_BYTES) {
        usleep(BACKEND_PAUSE_US);
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++, got++)
            if (bad == UINT64_MAX && (unsigned char)buf[i] != body_byte(got))
                bad = got;
        atomic_store(&b->received, got);
    }
    atomic_store(&b->received, got);
    atomic_store(&b->first_bad, bad);
    char resp[128];
    int rl = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s",
                      got == UPLOAD_BYTES && bad == UINT64_MAX ? 5 : 3,
                      got == UPLOAD_BYTES && bad == UINT64_MAX ? "whole" : "bad");
    h_write_all(fd, resp, (size_t)rl);
    close(fd);
    return NULL;
}

/* aigw's resident set, from /proc (kB). */
static long rss_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *s = h_read_file(path);
    if (!s)
        return -1;
    char *p = strstr(s, "VmRSS:");
    long kb = p ? strtol(p + 6, NULL, 10) : -1;
    free(s);
    return kb;
}

struct uploader {
    int port;
    int rc;
    atomic_bool done;
    struct h_resp resp;
};

static void *upload_main(void *arg)
{
    struct uploader *u = arg;
    struct h_conn c;
    u->rc = h_connect(&c, u->port);
    if (u->rc) {
        atomic_store(&u->done, true);
        return NULL;
    }
    struct timeval tv = { .tv_sec = 20 };
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    h_sendf(&c, "POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: %llu\r\n\r\n", (unsigned long long)UPLOAD_BYTES);
    static unsigned char chunk[256 * 1024];
    for (uint64_t off = 0; off < UPLOAD_BYTES; off += sizeof chunk) {
        for (size_t i = 0; i < sizeof chunk; i++)
            chunk[i] = body_byte(off + i);
        if ((u->rc = h_send(&c, chunk, sizeof chunk)) != 0)
            break;
    }
    /* an early answer (an error) is read either way */
    u->rc = h_recv(&c, &u->resp, 60000 * h_slow());
    h_close(&c);
    atomic_store(&u->done, true);
    return NULL;
}

Test(upload, large_upload_to_a_slow_backend_arrives_whole_with_flat_memory)
{
    struct slow_backend b = { .first_bad = UINT64_MAX };
    b.listen_fd = h_listen_loopback(&b.port);
    cr_assert_eq(pthread_create(&b.thread, NULL, slow_backend_main, &b), 0);
    struct h_gw g = {0};
    snprintf(g.max_body, sizeof g.max_body, "128m");
    h_gw_config(&g, "connect = 1s\nfirst_byte = 60s\nidle = 10s\nclient_header = 5s\nkeepalive = 5s\n",
                H_STD_ROUTES, b.port);
    H_GW(&g);

    long rss_before = rss_kb(g.pid);
    cr_assert_gt(rss_before, 0);
    struct uploader u = { .port = g.port };
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, upload_main, &u), 0);
    /* sample aigw's memory while the body moves */
    long rss_peak = rss_before, rss_warm = -1, rss_peak_after_warm = -1;
    while (!atomic_load(&u.done)) {
        long kb = rss_kb(g.pid);
        /* the first megabytes touch the shard's receive buffers once; from there
         * on, memory must not follow the body */
        if (rss_warm < 0 && atomic_load(&b.received) >= UPLOAD_BYTES / 4)
            rss_warm = kb;
        if (rss_warm >= 0 && kb > rss_peak_after_warm)
            rss_peak_after_warm = kb;
        if (getenv("UPLOAD_TRACE"))
            fprintf(stderr, "rss %ld kB at %llu bytes\n", kb, (unsigned long long)atomic_load(&b.received));
        if (kb > rss_peak)
            rss_peak = kb;
        h_sleep_ms(50);     /* a sampling period, not a wait for an event */
    }
    pthread_join(t, NULL);
    pthread_join(b.thread, NULL);
    close(b.listen_fd);

    cr_assert_eq(u.rc, H_OK, "the upload got no answer (%d); aigw stderr:\n%s", u.rc, h_tail(g.tag));
    cr_assert_eq(u.resp.status, 200, "status %d: %s", u.resp.status, u.resp.body);
    cr_assert_eq(atomic_load(&b.first_bad), UINT64_MAX, "the body differs at byte %llu",
                 (unsigned long long)atomic_load(&b.first_bad));
    cr_assert_eq(atomic_load(&b.received), UPLOAD_BYTES, "the backend got %llu of %llu bytes",
                 (unsigned long long)atomic_load(&b.received), (unsigned long long)UPLOAD_BYTES);
    cr_assert_str_eq(u.resp.body, "whole");
    h_resp_free(&u.resp);
    /* a 64 MiB body through a backend reading at ~16 MB/s: aigw holds a few
     * buffers of it at a time, not megabytes */
    cr_assert_lt(rss_peak - rss_before, 8 * 1024, "aigw's RSS grew by %ld kB during the upload",
                 rss_peak - rss_before);
    cr_assert_geq(rss_warm, 0, "no RSS sample after the first quarter of the body");
    cr_assert_lt(rss_peak_after_warm - rss_warm, 1024,
                 "aigw's RSS grew by %ld kB over the last three quarters of the body",
                 rss_peak_after_warm - rss_warm);
    h_finish();
}
