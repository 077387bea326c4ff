/* idleconns: open N TCP connections to a server and hold them idle, to measure what an
 * idle keep-alive client costs the server (perf/idle-rss.sh reads the server's RSS
 * while they are held), or hold N streamed chat completions open at once
 * (perf/stream-rss.sh).
 *
 *   idleconns [-n N] [-s SECONDS] [-b BATCH] [-r PATH] [-S] [-T] [-t SECONDS] HOST:PORT
 *
 * Connects are non-blocking, at most BATCH in flight. With -r, each connection first
 * sends "GET PATH" and reads the whole response (Content-Length or chunked), so it is a
 * real keep-alive connection and the server holds it under its keep-alive timeout, not
 * its request-head timeout. Once all are open it prints "ready N" on stdout, holds them
 * for SECONDS (or until SIGINT/SIGTERM), reports how many the server closed meanwhile,
 * and exits. With -S, each connection instead POSTs a streamed chat completion to PATH
 * and counts as ready once the response head and its first body bytes came; its events
 * are read (and dropped) while it is held, and a stream that ends meanwhile is reported.
 * With -T, each connection is TLS (wolfSSL, no certificate check): handshake, then the
 * request and its response; then the client drops its TLS state without a close_notify
 * and holds the bare socket, so 10,000 held connections cost the client descriptors
 * only, and the server still holds a live TLS session for each.
 * Connections are closed with RST so repeated runs leave no TIME_WAIT. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "util/clock.h"

enum conn_state { CONNECTING, HANDSHAKING, SENDING, READING_HEAD, READING_BODY, IDLE, STREAMING, DEAD };

#define HEAD_MAX 16384

struct conn {
    int fd;
    enum conn_state state;
    bool chunked;           /* body ends at the last-chunk; tracked by its final bytes */
    uint64_t body_left;     /* Content-Length bytes still to read */
    char tail[5];           /* last bytes of a chunked body, to spot "0\r\n\r\n" */
    char *head;             /* response head being collected; freed once parsed */
    size_t head_len;
    WOLFSSL *tls;           /* -T: until the response is read; NULL while held */
};

static WOLFSSL_CTX *tls_ctx;    /* -T */

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) { (void)sig; stop_requested = 1; }

static void usage(FILE *out)
{
    fprintf(out,
        "usage: idleconns [-n N] [-s SECONDS] [-b BATCH] [-r PATH] [-S] [-T] [-t SECONDS] HOST:PORT\n"
        "  -n N        connections to open (default 10000)\n"
        "  -s SECONDS  how long to hold them once all are open (default 30)\n"
        "  -b BATCH    connects or requests in flight at once (default 256)\n"
        "  -r PATH     send GET PATH on each and read the response first (keep-alive)\n"
        "  -S          with -r: POST a streamed chat completion to PATH and hold the stream\n"
        "  -T          TLS (with -r; not with -S): held after the response without TLS state\n"
        "  -t SECONDS  give up when no connection makes progress for this long (default 10)\n");
}

static long parse_positive(const char *s, const char *what, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v <= 0 || v > max) {
        fprintf(stderr, "idleconns: bad %s '%s' (1..%ld)\n", what, s, max);
        exit(2);
    }
    return v;
}

static int resolve(const char *hostport, struct sockaddr_storage *sa, socklen_t *salen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || !colon[1])
        return -1;
    size_t hlen = (size_t)(colon - hostport);
    if (hostport[0] == '[' && hlen >= 2 && hostport[hlen - 1] == ']') {
        hostport++;
        hlen -= 2;
    }
    if (hlen >= sizeof host)
        return -1;
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *salen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Enough descriptors for every connection plus a margin; raising the hard limit works
 * for root (CAP_SYS_RESOURCE) and is tried only when the soft limit cannot reach. */
static int raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur >= want)
        return 0;
    if (rl.rlim_max < want) {
        struct rlimit hard = { want, want };
        if (setrlimit(RLIMIT_NOFILE, &hard) == 0)
            return 0;
        fprintf(stderr, "idleconns: need %llu descriptors, hard limit is %llu (raise it: ulimit -Hn)\n",
                (unsigned long long)want, (unsigned long long)rl.rlim_max);
        return -1;
    }
    rl.rlim_cur = want;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

/* Drops the client's TLS state without a close_notify: the server keeps its session. */
static void conn_drop_tls(struct conn *c)
{
    if (c->tls) {
        wolfSSL_free(c->tls);
        c->tls = NULL;
    }
}

static void conn_kill(struct conn *c, int epfd)
{
    conn_drop_tls(c);
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = DEAD;
    free(c->head);
    c->head = NULL;
}

static int watch(int epfd, int op, struct conn *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };
    return epoll_ctl(epfd, op, c->fd, &ev);
}

/* TLS or plain I/O on a connection, with recv/send's contract: -1 with errno EAGAIN when
 * it would block (the connection then watches what TLS waits for), 0 at the peer's close.
 * TLS reads every record already received: wolfSSL returns one per call, and records it
 * holds would wake no epoll_wait. */
static ssize_t conn_recv(struct conn *c, int epfd, char *buf, size_t cap)
{
    if (!c->tls)
        return recv(c->fd, buf, cap, 0);
    size_t got = 0;
    for (;;) {
        int r = wolfSSL_read(c->tls, buf + got, (int)(cap - got));
        if (r > 0) {
            got += (size_t)r;
            if (got == cap)
                return (ssize_t)got;
            continue;
        }
        int err = wolfSSL_get_error(c->tls, r);
        bool would_block = err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE;
        if (would_block)
            watch(epfd, EPOLL_CTL_MOD, c, err == WOLFSSL_ERROR_WANT_READ ? EPOLLIN | EPOLLRDHUP : EPOLLOUT);
        if (got)
            return (ssize_t)got;    /* the close or error shows again on the next call */
        if (would_block) {
            errno = EAGAIN;
            return -1;
        }
        if (err == WOLFSSL_ERROR_ZERO_RETURN)
            return 0;
        errno = ECONNRESET;
        return -1;
    }
}

static ssize_t conn_send(struct conn *c, const char *buf, size_t n)
{
    if (!c->tls)
        return send(c->fd, buf, n, MSG_NOSIGNAL);
    int w = wolfSSL_write(c->tls, buf, (int)n);
    if (w > 0)
        return w;
    errno = wolfSSL_get_error(c->tls, w) == WOLFSSL_ERROR_WANT_WRITE ? EAGAIN : ECONNRESET;
    return -1;
}

/* Drives the client handshake: 1 done, 0 waiting (watching what it waits for), -1 failed. */
static int conn_handshake(struct conn *c, int epfd, const char **why)
{
    if (!c->tls) {
        c->tls = wolfSSL_new(tls_ctx);
        if (!c->tls || wolfSSL_set_fd(c->tls, c->fd) != WOLFSSL_SUCCESS) {
            *why = "wolfSSL_new failed";
            return -1;
        }
    }
    int r = wolfSSL_connect(c->tls);
    if (r == WOLFSSL_SUCCESS)
        return 1;
    int err = wolfSSL_get_error(c->tls, r);
    if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) {
        watch(epfd, EPOLL_CTL_MOD, c, err == WOLFSSL_ERROR_WANT_READ ? EPOLLIN | EPOLLRDHUP : EPOLLOUT);
        return 0;
    }
    static char reason[WOLFSSL_MAX_ERROR_SZ + 32];
    char text[WOLFSSL_MAX_ERROR_SZ];
    snprintf(reason, sizeof reason, "TLS handshake failed: %s", wolfSSL_ERR_error_string((unsigned long)err, text));
    *why = reason;
    return -1;
}

/* Looks at a complete response head: status, and how the body ends. Returns 0 when the
 * connection stays open after the body, -1 (with a reason) when it cannot. */
static int parse_head(struct conn *c, const char **why)
{
    const char *h = c->head;
    if (c->head_len < 12 || strncmp(h, "HTTP/1.", 7) != 0) {
        *why = "not an HTTP/1.x response";
        return -1;
    }
    int status = atoi(h + 9);
    if (status < 200 || status > 299) {
        *why = "non-2xx status";
        return -1;
    }
    bool have_length = false;
    c->chunked = false;
    for (const char *line = strstr(h, "\r\n"); line && line[2] != '\r'; line = strstr(line + 2, "\r\n")) {
        const char *name = line + 2;
        if (!strncasecmp(name, "content-length:", 15)) {
            c->body_left = strtoull(name + 15, NULL, 10);
            have_length = true;
        } else if (!strncasecmp(name, "transfer-encoding:", 18)) {
            c->chunked = strstr(name, "chunked") != NULL;
        } else if (!strncasecmp(name, "connection:", 11)) {
            const char *v = name + 11;
            while (*v == ' ' || *v == '\t')
                v++;
            if (!strncasecmp(v, "close", 5)) {
                *why = "server answered Connection: close";
                return -1;
            }
        }
    }
    if (!c->chunked && !have_length) {
        *why = "close-delimited response";
        return -1;
    }
    return 0;
}

/* Feeds body bytes; returns true when the response is complete. */
static bool consume_body(struct conn *c, const char *p, size_t n)
{
    if (!c->chunked) {
        c->body_left = n >= c->body_left ? 0 : c->body_left - n;
        return c->body_left == 0;
    }
    for (size_t i = 0; i < n; i++) {
        memmove(c->tail, c->tail + 1, sizeof c->tail - 1);
        c->tail[sizeof c->tail - 1] = p[i];
    }
    return memcmp(c->tail, "0\r\n\r\n", 5) == 0;
}

int main(int argc, char **argv)
{
    long nconns = 10000, hold_s = 30, batch = 256, stall_s = 10;
    const char *path = NULL;
    bool stream = false, tls = false;
    int opt;
    while ((opt = getopt(argc, argv, "n:s:b:r:STt:h")) != -1) {
        switch (opt) {
        case 'n': nconns = parse_positive(optarg, "connection count", 1000000); break;
        case 's': hold_s = parse_positive(optarg, "hold time", 86400); break;
        case 'b': batch = parse_positive(optarg, "batch", 65536); break;
        case 't': stall_s = parse_positive(optarg, "stall timeout", 3600); break;
        case 'r':
            if (optarg[0] != '/' || strpbrk(optarg, " \r\n")) {
                fprintf(stderr, "idleconns: -r wants a path starting with '/', without spaces\n");
                return 2;
            }
            path = optarg;
            break;
        case 'S': stream = true; break;
        case 'T': tls = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || (stream && !path) || (tls && (!path || stream))) {
        usage(stderr);
        return 2;
    }
    if (tls) {
        wolfSSL_Init();
        tls_ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
        if (!tls_ctx) {
            fprintf(stderr, "idleconns: wolfSSL_CTX_new failed\n");
            return 1;
        }
        /* The benchmark's throwaway certificate: what is measured is the server's cost. */
        wolfSSL_CTX_set_verify(tls_ctx, WOLFSSL_VERIFY_NONE, NULL);
    }
    const char *target = argv[optind];
    struct sockaddr_storage sa;
    socklen_t salen;
    if (resolve(target, &sa, &salen) != 0) {
        fprintf(stderr, "idleconns: cannot resolve '%s' (want HOST:PORT)\n", target);
        return 2;
    }
    if (raise_nofile((rlim_t)nconns + 64) != 0)
        return 1;

    char request[1024];
    int reqlen = 0;
    if (path && stream) {
        const char *model = getenv("MODEL");
        char bodybuf[512];
        int blen = snprintf(bodybuf, sizeof bodybuf,
                            "{\"model\":\"%s\",\"stream\":true,"
                            "\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a long story.\"}]}",
                            model && *model ? model : "mock-llama-3.1-8b");
        const char *key = getenv("BENCH_KEY");
        reqlen = snprintf(request, sizeof request,
                          "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: aigw-idleconns\r\n"
                          "Content-Type: application/json\r\n%s%s%sContent-Length: %d\r\n\r\n%s",
                          path, target, key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "",
                          blen, bodybuf);
        if (blen < 0 || (size_t)blen >= sizeof bodybuf || reqlen < 0 || (size_t)reqlen >= sizeof request) {
            fprintf(stderr, "idleconns: path or model too long\n");
            return 2;
        }
    } else if (path) {
        reqlen = snprintf(request, sizeof request,
                          "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: aigw-idleconns\r\n\r\n", path, target);
        if (reqlen < 0 || (size_t)reqlen >= sizeof request) {
            fprintf(stderr, "idleconns: path too long\n");
            return 2;
        }
    }

    struct sigaction sact = { .sa_handler = on_stop_signal };
    sigaction(SIGINT, &sact, NULL);
    sigaction(SIGTERM, &sact, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || epfd < 0) {
        perror("idleconns: setup");
        return 1;
    }
    for (long i = 0; i < nconns; i++)
        conns[i].fd = -1;

    int rc = 1;
    long next = 0, in_flight = 0, ready = 0, failed = 0;
    const char *first_error = NULL;
    char readbuf[65536];
    struct epoll_event events[1024];
    double last_progress = clock_mono_s();

    while (ready + failed < nconns && !stop_requested) {
        while (in_flight < batch && next < nconns) {
            struct conn *c = &conns[next++];
            c->fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0) {
                fprintf(stderr, "idleconns: socket: %s after %ld connections\n", strerror(errno), ready);
                goto out;
            }
            c->state = CONNECTING;
            if (connect(c->fd, (struct sockaddr *)&sa, salen) != 0 && errno != EINPROGRESS) {
                if (!first_error)
                    first_error = strerror(errno);
                conn_kill(c, epfd);
                failed++;
                continue;
            }
            watch(epfd, EPOLL_CTL_ADD, c, EPOLLOUT);
            in_flight++;
        }

        int nev = epoll_wait(epfd, events, 1024, 200);
        if (nev < 0 && errno != EINTR) {
            perror("idleconns: epoll_wait");
            goto out;
        }
        for (int i = 0; i < nev; i++) {
            struct conn *c = events[i].data.ptr;
            const char *why = NULL;
            if (c->state == STREAMING) {        /* a held stream's next events */
                ssize_t r = recv(c->fd, readbuf, sizeof readbuf, 0);
                if (r > 0 && !consume_body(c, readbuf, (size_t)r))
                    continue;
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                conn_kill(c, epfd);
                ready--;
                failed++;
                if (!first_error)
                    first_error = "a stream ended before all were open (make it longer)";
                continue;
            }
            if (c->state == IDLE) {             /* the server closed a held connection */
                conn_kill(c, epfd);
                ready--;
                failed++;
                if (!first_error)
                    first_error = "server closed an idle connection";
                continue;
            }
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    why = strerror(err);
                } else if (!path) {
                    c->state = IDLE;
                } else {
                    c->state = tls ? HANDSHAKING : SENDING;
                }
            }
            if (!why && c->state == HANDSHAKING) {
                int done = conn_handshake(c, epfd, &why);
                if (done == 0)
                    continue;
                if (done == 1)
                    c->state = SENDING;
            }
            if (!why && c->state == SENDING) {
                /* A fresh connection takes a short request whole (TLS: one record). */
                ssize_t w = conn_send(c, request, (size_t)reqlen);
                if (w != reqlen) {
                    why = w < 0 ? strerror(errno) : "short send";
                } else {
                    c->state = READING_HEAD;
                    c->head = malloc(HEAD_MAX);
                    c->head_len = 0;
                    if (!c->head) {
                        perror("idleconns: malloc");
                        goto out;
                    }
                    watch(epfd, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLRDHUP);
                    continue;
                }
            }
            if (!why && (c->state == READING_HEAD || c->state == READING_BODY)) {
                ssize_t r = conn_recv(c, epfd, readbuf, sizeof readbuf);
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                    why = r == 0 ? "server closed before the response ended" : strerror(errno);
                } else {
                    const char *p = readbuf;
                    size_t n = (size_t)r;
                    if (c->state == READING_HEAD) {
                        size_t take = n < HEAD_MAX - 1 - c->head_len ? n : HEAD_MAX - 1 - c->head_len;
                        memcpy(c->head + c->head_len, p, take);
                        c->head_len += take;
                        c->head[c->head_len] = '\0';
                        char *end = strstr(c->head, "\r\n\r\n");
                        if (!end) {
                            if (c->head_len >= HEAD_MAX - 1)
                                why = "response head too large";
                            else
                                continue;
                        } else {
                            size_t head_bytes = (size_t)(end + 4 - c->head);
                            size_t before = c->head_len - take;   /* head bytes from earlier reads */
                            p += head_bytes - before;
                            n -= head_bytes - before;
                            if (parse_head(c, &why) == 0) {
                                free(c->head);
                                c->head = NULL;
                                c->state = READING_BODY;
                            }
                        }
                    }
                    if (!why && c->state == READING_BODY && stream) {
                        if (n == 0)
                            continue;       /* held once its first event came */
                        if (consume_body(c, p, n))
                            why = "the stream ended before all were open (make it longer)";
                        else
                            c->state = STREAMING;
                    } else if (!why && c->state == READING_BODY) {
                        if (consume_body(c, p, n) || (!c->chunked && c->body_left == 0))
                            c->state = IDLE;
                        else
                            continue;
                    }
                }
            }
            if (why) {
                if (!first_error)
                    first_error = why;
                conn_kill(c, epfd);
                in_flight--;
                failed++;
                last_progress = clock_mono_s();
                continue;
            }
            if (c->state == STREAMING) {
                in_flight--;
                ready++;
                last_progress = clock_mono_s();
            }
            if (c->state == IDLE) {
                /* Held from now on: only a close by the server may wake us. */
                conn_drop_tls(c);
                watch(epfd, EPOLL_CTL_MOD, c, EPOLLIN | EPOLLRDHUP);
                in_flight--;
                ready++;
                last_progress = clock_mono_s();
            }
        }
        if (clock_mono_s() - last_progress > (double)stall_s) {
            fprintf(stderr, "idleconns: no progress for %ld s with %ld connections pending; giving up\n",
                    stall_s, in_flight);
            goto out;
        }
    }

    if (failed)
        fprintf(stderr, "idleconns: %ld of %ld connections failed (first: %s)\n", failed, nconns,
                first_error ? first_error : "?");
    if (ready == 0) {
        fprintf(stderr, "idleconns: no connection established\n");
        goto out;
    }
    printf("ready %ld\n", ready);
    fflush(stdout);

    long closed_by_server = 0, streams_ended = 0;
    double deadline = clock_mono_s() + (double)hold_s;
    while (!stop_requested) {
        double left = deadline - clock_mono_s();
        if (left <= 0)
            break;
        int nev = epoll_wait(epfd, events, 1024, left > 1.0 ? 1000 : (int)(left * 1000) + 1);
        for (int i = 0; i < nev; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state == STREAMING) {
                ssize_t r = recv(c->fd, readbuf, sizeof readbuf, 0);
                if (r > 0 && consume_body(c, readbuf, (size_t)r)) {
                    c->state = IDLE;
                    streams_ended++;
                } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    conn_kill(c, epfd);
                    closed_by_server++;
                }
                continue;
            }
            if (c->state != IDLE)
                continue;
            ssize_t r = recv(c->fd, readbuf, sizeof readbuf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                conn_kill(c, epfd);
                closed_by_server++;
            }
        }
    }
    printf("held %ld connections; closed by the server while held: %ld", ready - closed_by_server,
           closed_by_server);
    if (stream)
        printf("; streams that ended while held: %ld", streams_ended);
    printf("\n");
    fflush(stdout);
    rc = closed_by_server ? 3 : 0;

out:;
    struct linger rst = { .l_onoff = 1, .l_linger = 0 };
    for (long i = 0; i < nconns; i++) {
        if (conns[i].fd >= 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
            close(conns[i].fd);
        }
        conn_drop_tls(&conns[i]);
        free(conns[i].head);
    }
    free(conns);
    close(epfd);
    if (tls_ctx) {
        wolfSSL_CTX_free(tls_ctx);
        wolfSSL_Cleanup();
    }
    return rc;
}
