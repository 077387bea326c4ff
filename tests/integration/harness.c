/* Integration test harness; see harness.h. */
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
/* A failed assertion longjmps out of a test, leaving its client buffers (and
 * its TLS client's sessions, whose stacks end inside libwolfssl) behind, and
 * libcriterion keeps a few bytes to the end: none is a product leak. The
 * daemons under test are separate processes and stay fully checked. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:tests/integration/\nleak:libcriterion\nleak:libwolfssl\n";
}
#endif

/* ---- per-test state (criterion runs each test in its own process) ---- */

#define MAX_PROCS 32
static pid_t procs[MAX_PROCS];
static char proc_tags[MAX_PROCS][32];
static char test_dir[256];
static bool atexit_registered;

static void kill_all_now(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] > 0) {
            kill(procs[i], SIGCONT);   /* a stopped process still dies of SIGKILL; harmless */
            kill(procs[i], SIGKILL);
            waitpid(procs[i], NULL, 0);
            procs[i] = 0;
        }
    }
}

static void forget_pid(pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i] == pid) procs[i] = 0;
}

static void remember_pid(pid_t pid, const char *tag)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] == 0) {
            procs[i] = pid;
            snprintf(proc_tags[i], sizeof proc_tags[i], "%s", tag);
            return;
        }
    }
    /* Registry full: the test is wrong; kill the process rather than leak it. */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fprintf(stderr, "harness: more than %d processes in one test\n", MAX_PROCS);
    abort();
}

void h_track(pid_t pid, const char *tag)
{
    remember_pid(pid, tag);
}

static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR)
            remove_tree(path);   /* the TLS certificates' directory */
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

void h_setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    h_admin_token(NULL);
    if (!atexit_registered) {
        atexit(kill_all_now);
        atexit_registered = true;
    }
    snprintf(test_dir, sizeof test_dir, "/tmp/aigw-itest-XXXXXX");
    if (!mkdtemp(test_dir)) {
        perror("mkdtemp");
        abort();
    }
}

void h_teardown(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] > 0) {
            kill(procs[i], SIGCONT);
            h_stop(procs[i], 3000);
        }
    }
    kill_all_now();
    /* Keep the logs of a run when asked to, for debugging. */
    if (test_dir[0] && !getenv("AIGW_ITEST_KEEP")) remove_tree(test_dir);
}

/* Sanitizer reports in any log of the test; returns the first file's name or NULL. */
static const char *sanitizer_report(void)
{
    static char found[512];
    DIR *d = opendir(test_dir);
    if (!d) return NULL;
    struct dirent *e;
    const char *hit = NULL;
    while (!hit && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 4, ".err") != 0) continue;
        snprintf(found, sizeof found, "%s/%s", test_dir, e->d_name);
        char *text = h_read_file(found);
        if (text && (strstr(text, "ERROR: AddressSanitizer") || strstr(text, "ERROR: LeakSanitizer") ||
                     strstr(text, "runtime error:")))
            hit = found;
        free(text);
    }
    closedir(d);
    return hit;
}

void h_finish(void)
{
    /* aigw first, so it drains against live backends. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < MAX_PROCS; i++) {
            bool is_aigw = !strncmp(proc_tags[i], "aigw", 4);
            if (procs[i] <= 0 || is_aigw != (pass == 0)) continue;
            char tag[32];
            memcpy(tag, proc_tags[i], sizeof tag);
            kill(procs[i], SIGCONT);
            int st = h_stop(procs[i], 10000 * h_slow());
            if (is_aigw)
                cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                          "%s did not exit 0 on SIGTERM (wait status 0x%x); stderr:\n%s", tag, st,
                          h_tail(tag));
        }
    }
    const char *report = sanitizer_report();
    if (report) {
        char *text = h_read_file(report);
        const char *at = strstr(text, "ERROR: ");
        if (!at) at = strstr(text, "runtime error:");
        cr_assert_fail("sanitizer report in %s:\n%.3000s", report, at ? at : text);
    }
}

const char *h_dir(void)
{
    return test_dir;
}

int h_slow(void)
{
    static int slow;
    if (!slow) {
        const char *bin = getenv("AIGW_BIN");
        slow = (getenv("AIGW_ITEST_SLOW") || (bin && strstr(bin, "/asan/"))) ? 3 : 1;
    }
    return slow;
}

int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* ---- ports ---- */

static bool port_is_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* No SO_REUSEADDR: fails also while TIME_WAIT sockets hold the port. */
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int h_free_port(void)
{
    /* The range just below the ephemeral ports: no outgoing connection takes
     * them between this check and the server's bind. */
    int lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768;
        fclose(f);
    }
    int base = lo > 12000 ? lo - 12000 : 1024, span = lo > 12000 ? 12000 : lo - 1024;
    if (span <= 0) {
        base = 20000;
        span = 10000;
    }

    int fd = open("/tmp/aigw-itest-ports", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    unsigned counter = (unsigned)getpid() * 7919u;
    if (fd >= 0) {
        flock(fd, LOCK_EX);
        char b[32] = {0};
        if (pread(fd, b, sizeof b - 1, 0) > 0) counter = (unsigned)strtoul(b, NULL, 10);
    }
    int port = -1;
    for (int tries = 0; tries < 500; tries++) {
        int p = base + (int)(counter++ % (unsigned)span);
        if (port_is_free(p)) {
            port = p;
            break;
        }
    }
    if (fd >= 0) {
        char b[32];
        int n = snprintf(b, sizeof b, "%u\n", counter);
        if (ftruncate(fd, 0) == 0 && pwrite(fd, b, (size_t)n, 0) != n) {
        }
        flock(fd, LOCK_UN);
        close(fd);
    }
    if (port < 0) {
        fprintf(stderr, "harness: no free port\n");
        abort();
    }
    return port;
}

/* ---- processes ---- */

static struct rlimit spawn_nofile;

void h_spawn_nofile(unsigned soft, unsigned hard)
{
    spawn_nofile.rlim_cur = soft;
    spawn_nofile.rlim_max = hard;
}

static pid_t spawn_io(const char *tag, const char *const argv[], const char *stdin_path);

pid_t h_spawn(const char *tag, const char *const argv[])
{
    return spawn_io(tag, argv, "/dev/null");
}

static pid_t spawn_io(const char *tag, const char *const argv[], const char *stdin_path)
{
    char out[512], err[512];
    snprintf(out, sizeof out, "%s/%s.out", test_dir, tag);
    snprintf(err, sizeof err, "%s/%s.err", test_dir, tag);
    int ofd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int efd = open(err, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (ofd < 0 || efd < 0) {
        perror("harness: open log");
        abort();
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        /* Die with the test process, whatever way it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(ofd, 1);
        dup2(efd, 2);
        int infd = open(stdin_path, O_RDONLY);
        if (infd >= 0) dup2(infd, 0);
        /* The test process ignores SIGPIPE; the daemon must cope on its own. */
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (spawn_nofile.rlim_max && setrlimit(RLIMIT_NOFILE, &spawn_nofile) != 0) {
            dprintf(2, "harness: setrlimit(RLIMIT_NOFILE): %s\n", strerror(errno));
            _exit(127);
        }
        execv(argv[0], (char *const *)argv);
        dprintf(2, "harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(ofd);
    close(efd);
    remember_pid(pid, tag);
    return pid;
}

int h_wait_exit(pid_t pid, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            forget_pid(pid);
            return st;
        }
        if (r < 0 && errno != EINTR) {
            forget_pid(pid);
            return -1;
        }
        if (h_now_ms() >= deadline) return -1;
        h_sleep_ms(5);
    }
}

int h_stop(pid_t pid, int timeout_ms)
{
    if (pid <= 0) return -1;
    kill(pid, SIGTERM);
    int st = h_wait_exit(pid, timeout_ms);
    if (st != -1) return st;
    kill(pid, SIGKILL);
    return h_wait_exit(pid, 5000);
}

bool h_alive(pid_t pid)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        forget_pid(pid);
        return false;
    }
    return r == 0;
}

int h_run(const char *tag, const char *const argv[], int timeout_ms)
{
    pid_t pid = h_spawn(tag, argv);
    int st = h_wait_exit(pid, timeout_ms);
    if (st == -1) {
        kill(pid, SIGKILL);
        h_wait_exit(pid, 5000);
    }
    return st;
}

char *h_read_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t cap = 4096, len = 0;
    char *b = malloc(cap);
    for (;;) {
        if (len + 1 >= cap) b = realloc(b, cap *= 2);
        ssize_t n = read(fd, b + len, cap - len - 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    b[len] = 0;
    return b;
}

static const char *tail_of(const char *tag, const char *ext)
{
    static char bufs[4][2200];
    static int next;
    char *out = bufs[next++ % 4];
    char path[512];
    snprintf(path, sizeof path, "%s/%s.%s", test_dir, tag, ext);
    char *all = h_read_file(path);
    if (!all) {
        snprintf(out, sizeof bufs[0], "(no %s)", path);
        return out;
    }
    size_t n = strlen(all);
    const char *start = n > 2000 ? all + n - 2000 : all;
    snprintf(out, sizeof bufs[0], "%s", start);
    free(all);
    return out;
}

const char *h_tail(const char *tag)
{
    return tail_of(tag, "err");
}

const char *h_tail_out(const char *tag)
{
    return tail_of(tag, "out");
}

void h_write_file(const char *path, const char *fmt, ...)
{
    /* Written aside and renamed: a reload never reads a half-written file. */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        perror(tmp);
        abort();
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        perror(path);
        abort();
    }
}

int h_count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

int h_settle_fds(pid_t pid, int limit, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    int n = h_count_fds(pid);
    while (n > limit && h_now_ms() < deadline) {
        h_sleep_ms(50);
        n = h_count_fds(pid);
    }
    return n;
}

/* ---- raw HTTP client ---- */

int h_connect(struct h_conn *c, int port)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  /* bounds connect() and send() */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    c->fd = fd;
    c->cap = 16384;
    c->buf = malloc(c->cap);
    return 0;
}

void h_close(struct h_conn *c)
{
    if (c->tls) wolfSSL_free(c->tls);
    c->tls = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static int tls_send(struct h_conn *c, const void *p, size_t n);

int h_send(struct h_conn *c, const void *p, size_t n)
{
    if (c->tls) return tls_send(c, p, n);
    const char *s = p;
    int64_t deadline = h_now_ms() + 5000;
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && h_now_ms() < deadline) continue;
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int h_sendf(struct h_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) return -ENOMEM;
    int r = h_send(c, s, (size_t)n);
    free(s);
    return r;
}

/* Reads more bytes into c->buf. >0 bytes read, 0 on EOF/reset, H_ETIMEOUT. */
static int tls_fill(struct h_conn *c, int64_t deadline);

static int conn_fill(struct h_conn *c, int64_t deadline)
{
    if (c->eof) return 0;
    if (c->tls) return tls_fill(c, deadline);
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0) return H_ETIMEOUT;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) return H_ETIMEOUT;
        if (c->cap - c->len < 8192) c->buf = realloc(c->buf, c->cap *= 2);
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            c->eof = true;   /* ECONNRESET and friends: the peer is gone */
            return 0;
        }
        if (n == 0) {
            c->eof = true;
            return 0;
        }
        c->len += (size_t)n;
        c->last_rx_ms = h_now_ms();
        return (int)n;
    }
}

static void conn_consume(struct h_conn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static const char *find_head_end(const char *b, size_t len)
{
    return memmem(b, len, "\r\n\r\n", 4);
}

static bool token_in_list(const char *list, const char *tok)
{
    size_t tl = strlen(tok);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if ((size_t)(t - p) == tl && !strncasecmp(p, tok, tl)) return true;
        p = e;
    }
    return false;
}

enum { BODY_NONE, BODY_LEN, BODY_CHUNKED, BODY_CLOSE };
enum { CH_SIZE, CH_DATA, CH_DATA_CRLF, CH_TRAILER, CH_DONE };

int h_recv_head(struct h_conn *c, struct h_resp *r, int timeout_ms)
{
    memset(r, 0, sizeof *r);
    int64_t deadline = h_now_ms() + timeout_ms;
    const char *end;
    while (!(end = find_head_end(c->buf, c->len))) {
        if (c->len > 256 * 1024) return H_EPROTO;
        int n = conn_fill(c, deadline);
        if (n == 0) return H_ECLOSED;
        if (n < 0) return n;
    }
    size_t hl = (size_t)(end - c->buf) + 4;
    r->head = strndup(c->buf, hl);
    r->head_copy = strndup(c->buf, hl);
    conn_consume(c, hl);

    if (strncmp(r->head, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)r->head[9]))
        return H_EPROTO;
    r->status = atoi(r->head + 9);
    bool http10 = r->head[7] == '0';

    char *line = strstr(r->head_copy, "\r\n") + 2;
    while (*line && strncmp(line, "\r\n", 2) != 0 && r->nheaders < H_MAX_HEADERS) {
        char *eol = strstr(line, "\r\n");
        *eol = 0;
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = 0;
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t') v++;
            char *ve = v + strlen(v);
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) *--ve = 0;
            r->name[r->nheaders] = line;
            r->value[r->nheaders] = v;
            r->nheaders++;
        }
        line = eol + 2;
    }
    const char *connection = h_header(r, "connection");
    r->keep_alive = connection ? !token_in_list(connection, "close") : !http10;
    if (connection && http10 && token_in_list(connection, "keep-alive")) r->keep_alive = true;
    const char *te = h_header(r, "transfer-encoding");
    if (r->status < 200 || r->status == 204 || r->status == 304) {
        /* no body */
    } else if (te && token_in_list(te, "chunked")) {
        r->chunked = true;
    } else if (!h_header(r, "content-length")) {
        r->until_close = true;
        r->keep_alive = false;
    }
    return H_OK;
}

const char *h_header(const struct h_resp *r, const char *name)
{
    for (int i = 0; i < r->nheaders; i++)
        if (!strcasecmp(r->name[i], name)) return r->value[i];
    return NULL;
}

void h_resp_free(struct h_resp *r)
{
    free(r->head);
    free(r->head_copy);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* ---- body decoding, shared by h_recv and the SSE reader ---- */

struct body_state {
    int mode;
    int cstate;
    uint64_t remaining;
    bool done;
};

static void body_state_init(struct body_state *b, const struct h_resp *r)
{
    memset(b, 0, sizeof *b);
    if (r->status < 200 || r->status == 204 || r->status == 304) {
        b->mode = BODY_NONE;
        b->done = true;
    } else if (r->chunked) {
        b->mode = BODY_CHUNKED;
        b->cstate = CH_SIZE;
    } else if (r->until_close) {
        b->mode = BODY_CLOSE;
    } else {
        b->mode = BODY_LEN;
        b->remaining = strtoull(h_header(r, "content-length"), NULL, 10);
        b->done = b->remaining == 0;
    }
}

static void append(char **dst, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (nc < *len + n + 1) nc *= 2;
        *dst = realloc(*dst, nc);
        *cap = nc;
    }
    memcpy(*dst + *len, p, n);
    *len += n;
    (*dst)[*len] = 0;
}

/* Decodes what c->buf holds into dst. Returns 1 if progress was made (or the
 * body is done), 0 if more bytes are needed, H_EPROTO on bad framing. */
static int body_decode(struct h_conn *c, struct body_state *b, char **dst, size_t *len, size_t *cap)
{
    bool progress = false;
    while (!b->done) {
        if (b->mode == BODY_LEN || b->mode == BODY_CLOSE) {
            size_t n = c->len;
            if (b->mode == BODY_LEN && n > b->remaining) n = (size_t)b->remaining;
            if (n == 0) break;
            append(dst, len, cap, c->buf, n);
            conn_consume(c, n);
            if (b->mode == BODY_LEN) {
                b->remaining -= n;
                b->done = b->remaining == 0;
            }
            progress = true;
            continue;
        }
        /* chunked */
        if (b->cstate == CH_DATA) {
            size_t n = c->len < b->remaining ? c->len : (size_t)b->remaining;
            if (n == 0) break;
            append(dst, len, cap, c->buf, n);
            conn_consume(c, n);
            b->remaining -= n;
            if (b->remaining == 0) b->cstate = CH_DATA_CRLF;
            progress = true;
            continue;
        }
        if (b->cstate == CH_DATA_CRLF) {
            if (c->len < 2) break;
            if (c->buf[0] != '\r' || c->buf[1] != '\n') return H_EPROTO;
            conn_consume(c, 2);
            b->cstate = CH_SIZE;
            continue;
        }
        char *eol = memmem(c->buf, c->len, "\r\n", 2);
        if (!eol) {
            if (c->len > 4096) return H_EPROTO;
            break;
        }
        size_t ll = (size_t)(eol - c->buf);
        if (b->cstate == CH_SIZE) {
            char *endp;
            char tmp[64];
            if (ll == 0 || ll >= sizeof tmp) return H_EPROTO;
            memcpy(tmp, c->buf, ll);
            tmp[ll] = 0;
            errno = 0;
            uint64_t sz = strtoull(tmp, &endp, 16);
            if (endp == tmp || errno || (*endp && *endp != ';' && *endp != ' ')) return H_EPROTO;
            conn_consume(c, ll + 2);
            if (sz == 0) {
                b->cstate = CH_TRAILER;
            } else {
                b->cstate = CH_DATA;
                b->remaining = sz;
            }
        } else { /* CH_TRAILER: lines until an empty one */
            conn_consume(c, ll + 2);
            if (ll == 0) {
                b->cstate = CH_DONE;
                b->done = true;
                progress = true;
            }
        }
    }
    return progress || b->done;
}

int h_recv(struct h_conn *c, struct h_resp *r, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    int rc = h_recv_head(c, r, timeout_ms);
    if (rc != H_OK) return rc;
    struct body_state b;
    body_state_init(&b, r);
    size_t cap = 0;
    r->body = NULL;
    append(&r->body, &r->body_len, &cap, "", 0);
    for (;;) {
        int d = body_decode(c, &b, &r->body, &r->body_len, &cap);
        if (d < 0) return d;
        if (b.done) return H_OK;
        if (d > 0) continue;
        if (c->eof) return b.mode == BODY_CLOSE ? H_OK : H_ECLOSED;
        int n = conn_fill(c, deadline);
        if (n < 0) return n;
    }
}

int h_request(struct h_conn *c, const char *method, const char *path, const char *extra_headers,
              const char *body, struct h_resp *r, int timeout_ms)
{
    char cl[64] = "";
    if (body) snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen(body));
    int rc = h_sendf(c, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s\r\n%s", method, path,
                     body ? "Content-Type: application/json\r\n" : "", cl,
                     extra_headers ? extra_headers : "", body ? body : "");
    if (rc < 0) {
        memset(r, 0, sizeof *r);
        return H_ECLOSED;
    }
    return h_recv(c, r, timeout_ms);
}

static int one_shot(int port, const char *method, const char *path, const char *body,
                    struct h_resp *r, int timeout_ms)
{
    struct h_conn c;
    memset(r, 0, sizeof *r);
    if (h_connect(&c, port) < 0) return H_ECLOSED;
    int rc = h_request(&c, method, path, "Connection: close\r\n", body, r, timeout_ms);
    h_close(&c);
    return rc;
}

int h_get(int port, const char *path, struct h_resp *r, int timeout_ms)
{
    return one_shot(port, "GET", path, NULL, r, timeout_ms);
}

int h_post(int port, const char *path, const char *body, struct h_resp *r, int timeout_ms)
{
    return one_shot(port, "POST", path, body, r, timeout_ms);
}

bool h_wait_closed(struct h_conn *c, int timeout_ms, size_t *got_bytes)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    size_t got = 0;
    bool closed = false;
    for (;;) {
        got += c->len;
        c->len = 0;
        int n = conn_fill(c, deadline);
        if (n == 0) {
            got += c->len;
            c->len = 0;
            closed = true;
            break;
        }
        if (n < 0) break;
    }
    if (got_bytes) *got_bytes = got;
    return closed;
}

const char *h_chat_body(char *out, size_t cap, int max_tokens, bool stream)
{
    snprintf(out, cap,
             "{\"model\":\"mock-llama-3.1-8b\",\"messages\":[{\"role\":\"user\",\"content\":"
             "\"Say something.\"}],\"max_tokens\":%d,\"stream\":%s}",
             max_tokens, stream ? "true" : "false");
    return out;
}

/* ---- SSE ---- */

void h_sse_init(struct h_sse *s, struct h_conn *c, const struct h_resp *head)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    struct body_state b;
    body_state_init(&b, head);
    s->mode = b.mode;
    s->cstate = b.cstate;
    s->remaining = b.remaining;
    s->done = b.done;
}

int h_sse_next(struct h_sse *s, int timeout_ms)
{
    int64_t deadline = h_now_ms() + timeout_ms;
    for (;;) {
        char *sep = s->data ? memmem(s->data, s->len, "\n\n", 2) : NULL;
        if (sep) {
            size_t n = (size_t)(sep - s->data);
            size_t k = n < sizeof s->event - 1 ? n : sizeof s->event - 1;
            memcpy(s->event, s->data, k);
            s->event[k] = 0;
            if (k && s->event[k - 1] == '\r') s->event[k - 1] = 0;
            memmove(s->data, sep + 2, s->len - n - 2);
            s->len -= n + 2;
            s->event_ms = s->c->last_rx_ms;
            return 1;
        }
        if (s->done) return 0;
        struct body_state b = {s->mode, s->cstate, s->remaining, s->done};
        int d = body_decode(s->c, &b, &s->data, &s->len, &s->cap);
        s->cstate = b.cstate;
        s->remaining = b.remaining;
        s->done = b.done;
        if (d < 0) return d;
        if (d > 0) continue;
        if (s->c->eof) {
            if (s->mode != BODY_CLOSE) return H_ECLOSED;
            s->done = true;
            continue;
        }
        int n = conn_fill(s->c, deadline);
        if (n < 0) return n;
    }
}

void h_sse_free(struct h_sse *s)
{
    free(s->data);
    s->data = NULL;
}

const char *h_chat_stream_request(char *out, size_t cap, const char *host, int max_tokens)
{
    char body[512];
    h_chat_body(body, sizeof body, max_tokens, true);
    snprintf(out, cap,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             host, strlen(body), body);
    return out;
}

/* " over TLS" for messages about a connection that speaks TLS. */
static const char *over_tls(const struct h_conn *c)
{
    return c->tls ? " over TLS" : "";
}

void h_start_chat_stream(struct h_conn *c, int max_tokens, struct h_resp *head, const char *gw_tag)
{
    char req[1024];
    /* over TLS, the name the test certificate carries */
    h_chat_stream_request(req, sizeof req, c->tls ? "aigw.test" : "x", max_tokens);
    cr_assert_eq(h_send(c, req, strlen(req)), 0, "sending a stream request%s; aigw stderr:\n%s", over_tls(c),
                 h_tail(gw_tag));
    int rc = h_recv_head(c, head, 5000 * h_slow());
    cr_assert_eq(rc, H_OK, "no response head for a stream%s (%d); aigw stderr:\n%s", over_tls(c), rc,
                 h_tail(gw_tag));
    cr_assert_eq(head->status, 200, "stream%s: status %d\n%s", over_tls(c), head->status, head->head);
    const char *ct = h_header(head, "content-type");
    cr_assert(ct && strstr(ct, "text/event-stream"), "stream content-type: %s", ct ? ct : "(none)");
}

int h_sse_data_events(struct h_sse *s, int timeout_ms, int64_t *arrived_ms, int cap, bool *done, int *last_rc)
{
    int n = 0, rc;
    *done = false;
    while ((rc = h_sse_next(s, timeout_ms)) == 1) {
        if (strncmp(s->event, "data:", 5) != 0) continue;   /* comments, other fields */
        if (arrived_ms && n < cap) arrived_ms[n] = s->event_ms;
        n++;
        if (strstr(s->event, "[DONE]")) {
            *done = true;
            break;
        }
    }
    *last_rc = rc;
    return n;
}

void h_expect_stream_event_by_event(struct h_conn *c, struct h_resp *head, int64_t t0_ms, int tokens, int tps,
                                    const char *gw_tag)
{
    const int timeout_ms = 5000 * h_slow();
    struct h_sse s;
    h_sse_init(&s, c, head);
    int64_t arrived[64];
    bool done;
    int rc, n = h_sse_data_events(&s, timeout_ms, arrived, 64, &done, &rc);
    cr_assert(done, "stream%s ended without data: [DONE] (rc %d after %d events); aigw stderr:\n%s", over_tls(c),
              rc, n, h_tail(gw_tag));
    cr_assert(n >= tokens + 1, "only %d data events for %d tokens", n, tokens);
    int timed = n < 64 ? n : 64;
    int64_t first = arrived[0] - t0_ms, total = arrived[timed - 1] - t0_ms;
    int64_t generation_ms = (int64_t)tokens * 1000 / tps;
    cr_assert(total >= generation_ms * 7 / 10, "a %d-token stream at %d tokens/s took only %lld ms", tokens, tps,
              (long long)total);
    cr_assert(first < total / 2, "first event after %lld ms of %lld: the stream was buffered", (long long)first,
              (long long)total);
    int bursts = 1;
    for (int i = 1; i < timed; i++)
        if (arrived[i] != arrived[i - 1]) bursts++;
    cr_assert(bursts >= tokens / 2, "%d events%s arrived in only %d bursts: not event by event", n, over_tls(c),
              bursts);

    /* The response ends properly after [DONE] and the connection stays usable. */
    rc = h_sse_next(&s, timeout_ms);
    cr_assert_eq(rc, 0, "stream body did not end properly after [DONE] (%d)", rc);
    h_sse_free(&s);
    h_resp_free(head);
    struct h_resp r;
    cr_assert_eq(h_request(c, "GET", "/v1/models", NULL, NULL, &r, timeout_ms), H_OK,
                 "connection%s not reusable after a stream", over_tls(c));
    cr_assert_eq(r.status, 200);
    h_resp_free(&r);
}

void h_leave_stream_expect_abort(struct h_conn *c, struct h_resp *head, int events, int mock_port)
{
    bool tls = c->tls != NULL;
    double aborted0 = h_metric0(mock_port, "mockllm_aborted_total");
    cr_assert(aborted0 == aborted0, "mockllm /metrics unreadable");
    struct h_sse s;
    h_sse_init(&s, c, head);
    for (int i = 0; i < events; i++)
        cr_assert_eq(h_sse_next(&s, 5000 * h_slow()), 1, "event %d of the stream%s missing", i + 1, over_tls(c));
    h_sse_free(&s);
    h_resp_free(head);
    h_close(c);
    double aborted = h_wait_metric(mock_port, "mockllm_aborted_total", H_GE, aborted0 + 1, 2000 * h_slow());
    cr_assert(aborted >= aborted0 + 1,
              "mockllm_aborted_total still %g (was %g) 2 s after the%s client left: upstream not closed", aborted,
              aborted0, tls ? " TLS" : "");
}

/* ---- metrics ---- */

struct label {
    char name[64];
    char value[256];
};

/* Parses `name{a="x",b="y"}` (labels optional) from *p. Returns label count or -1. */
static int parse_series(const char **p, char *name, size_t name_cap, struct label *labels, int max)
{
    const char *s = *p;
    size_t n = 0;
    while (*s && (isalnum((unsigned char)*s) || *s == '_' || *s == ':')) {
        if (n + 1 < name_cap) name[n++] = *s;
        s++;
    }
    name[n] = 0;
    if (n == 0) return -1;
    int nl = 0;
    if (*s == '{') {
        s++;
        while (*s && *s != '}') {
            while (*s == ',' || *s == ' ') s++;
            if (*s == '}') break;
            struct label dummy, *l = nl < max ? &labels[nl] : &dummy;
            size_t k = 0;
            while (*s && *s != '=' && *s != '}') {
                if (k + 1 < sizeof l->name) l->name[k++] = *s;
                s++;
            }
            l->name[k] = 0;
            if (*s != '=' || s[1] != '"') return -1;
            s += 2;
            k = 0;
            while (*s && *s != '"') {
                if (*s == '\\' && s[1]) s++;
                if (k + 1 < sizeof l->value) l->value[k++] = *s;
                s++;
            }
            l->value[k] = 0;
            if (*s != '"') return -1;
            s++;
            nl++;
        }
        if (*s != '}') return -1;
        s++;
    }
    *p = s;
    return nl < max ? nl : max;
}

static char admin_token[256];    /* h_admin_token */

void h_admin_token(const char *token)
{
    snprintf(admin_token, sizeof admin_token, "%s", token ? token : "");
}

static double metric_scrape(int port, const char *query, bool missing_is_zero)
{
    char qname[256];
    struct label ql[16];
    const char *qp = query;
    int nq = parse_series(&qp, qname, sizeof qname, ql, 16);
    if (nq < 0) return NAN;

    struct h_resp r;
    memset(&r, 0, sizeof r);
    struct h_conn c;
    int rc = H_ECLOSED;
    if (h_connect(&c, port) == 0) {
        char headers[400];
        snprintf(headers, sizeof headers, "Connection: close\r\n%s%s%s", admin_token[0] ? "Authorization: Bearer " : "",
                 admin_token, admin_token[0] ? "\r\n" : "");
        rc = h_request(&c, "GET", "/metrics", headers, NULL, &r, 5000 * h_slow());
        h_close(&c);
    }
    if (rc != H_OK || r.status != 200) {
        h_resp_free(&r);
        return NAN;
    }
    double sum = 0;
    bool found = false;
    for (char *line = r.body; line && *line;) {
        char *eol = strchr(line, '\n');
        if (eol) *eol = 0;
        if (*line != '#') {
            char name[256];
            struct label l[16];
            const char *lp = line;
            int nl = parse_series(&lp, name, sizeof name, l, 16);
            if (nl >= 0 && !strcmp(name, qname)) {
                bool match = true;
                for (int i = 0; i < nq && match; i++) {
                    bool has = false;
                    for (int j = 0; j < nl; j++)
                        if (!strcmp(ql[i].name, l[j].name) && !strcmp(ql[i].value, l[j].value))
                            has = true;
                    match = has;
                }
                if (match) {
                    sum += strtod(lp, NULL);
                    found = true;
                }
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    h_resp_free(&r);
    if (!found) return missing_is_zero ? 0.0 : NAN;
    return sum;
}

double h_metric(int port, const char *query)
{
    return metric_scrape(port, query, false);
}

int h_wait_engines_scraped(int admin_port, const char *pool, const struct h_mock *m, int n)
{
    for (int i = 0; i < n; i++) {
        char q[200];
        snprintf(q, sizeof q, "aigw_backend_prefix_cache_queries_total{pool=\"%s\",backend=\"127.0.0.1:%d\"}",
                 pool, m[i].port);
        int64_t end = h_now_ms() + 3000 * h_slow();
        double v = h_metric(admin_port, q);
        while (v != v && h_now_ms() < end) {
            h_sleep_ms(20);
            v = h_metric(admin_port, q);
        }
        if (v != v)
            return i;
    }
    return -1;
}

double h_metric0(int port, const char *query)
{
    return metric_scrape(port, query, true);
}

static bool compares(double v, enum h_cmp cmp, double want)
{
    return cmp == H_EQ ? v == want : cmp == H_GE ? v >= want : v <= want;
}

double h_wait_metric(int port, const char *query, enum h_cmp cmp, double want, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        double v = h_metric0(port, query);
        if (compares(v, cmp, want) || h_now_ms() > end)
            return v;
        h_sleep_ms(10);
    }
}

/* ---- the binaries ---- */

static const char *bin_path(const char *env, const char *fallback)
{
    const char *p = getenv(env);
    return p && *p ? p : fallback;
}

const char *h_aigw_bin(void)
{
    return bin_path("AIGW_BIN", "build/aigw");
}

static bool http_200(int port, const char *path)
{
    struct h_resp r;
    int rc = h_get(port, path, &r, 1000 * h_slow());
    bool ok = rc == H_OK && r.status == 200;
    h_resp_free(&r);
    return ok;
}

/* Polls every 20 ms until ready or the process died or 10 s (x slow) passed.
 * Only the health URL is asked: aigw's /readyz says 200 once its listeners are
 * open and every shard accepts, and a probe connection to the listen port
 * would linger as a client connection a test then finds counted. */
static bool wait_ready(pid_t pid, int health_port, const char *health_path)
{
    int64_t deadline = h_now_ms() + 10000 * h_slow();
    while (h_now_ms() < deadline) {
        if (!h_alive(pid)) return false;
        if (http_200(health_port, health_path)) return true;
        h_sleep_ms(20);
    }
    return false;
}

/* Spawns aigw-mockllm on m->port; true once it answers GET /health. */
static bool mock_spawn(struct h_mock *m, const char *args)
{
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", m->port);
    char argbuf[512];
    snprintf(argbuf, sizeof argbuf, "%s", args ? args : "");
    const char *argv[40];
    int n = 0;
    argv[n++] = bin_path("MOCKLLM_BIN", "build/aigw-mockllm");
    argv[n++] = "--listen";
    argv[n++] = listen;
    for (char *save, *t = strtok_r(argbuf, " ", &save); t && n < 38; t = strtok_r(NULL, " ", &save))
        argv[n++] = t;
    argv[n] = NULL;
    m->pid = h_spawn(m->tag, argv);
    if (wait_ready(m->pid, m->port, "/health"))
        return true;
    h_stop(m->pid, 2000);
    m->pid = 0;
    return false;
}

int h_mock_start(struct h_mock *m, const char *tag, const char *args)
{
    memset(m, 0, sizeof *m);
    snprintf(m->tag, sizeof m->tag, "%s", tag);
    /* A second try on a fresh port covers a port taken between check and bind. */
    for (int attempt = 0; attempt < 2; attempt++) {
        m->port = h_free_port();
        if (mock_spawn(m, args))
            return 0;
    }
    return -1;
}

int h_mock_start_port(struct h_mock *m, const char *tag, int port, const char *args)
{
    memset(m, 0, sizeof *m);
    snprintf(m->tag, sizeof m->tag, "%s", tag);
    m->port = port;
    /* The port was just given up by another process: the bind may need a moment. */
    int64_t end = h_now_ms() + 2000;
    do {
        if (mock_spawn(m, args))
            return 0;
        h_sleep_ms(100);
    } while (h_now_ms() < end);
    return -1;
}

bool h_read_request(int fd)
{
    static __thread char b[65536];
    size_t have = 0;
    char *end;
    while (!(end = memmem(b, have, "\r\n\r\n", 4))) {
        if (have == sizeof b)
            return false;
        ssize_t n = read(fd, b + have, sizeof b - have);
        if (n <= 0)
            return false;
        have += (size_t)n;
    }
    size_t head = (size_t)(end + 4 - b), body = 0;
    for (char *p = b; p < b + head; p++)
        if ((p == b || p[-1] == '\n') && !strncasecmp(p, "content-length:", 15)) {
            body = strtoul(p + 15, NULL, 10);
            break;
        }
    if (head + body > sizeof b)
        return false;
    while (have < head + body) {
        ssize_t n = read(fd, b + have, head + body - have);
        if (n <= 0)
            return false;
        have += (size_t)n;
    }
    return true;
}

static void gw_write(struct h_gw *g)
{
    h_write_file(g->conf,
                 "# written by the aigw integration tests\n"
                 "[server]\n"
                 "listen = 127.0.0.1:%d\n"
                 "shards = %d\n"
                 "max_body = %s\n"
                 "max_header = 16k\n"
                 "drain_timeout = 5s\n"
                 "%s"
                 "\n[admin]\n"
                 "listen = 127.0.0.1:%d\n"
                 "%s"
                 "\n[timeouts]\n"
                 "%s"
                 "\n[log]\n"
                 "access = %s/access.log\n"
                 "level = info\n"
                 "%s%.0d%s%s"
                 "\n%s",
                 g->port, g->shards > 0 ? g->shards : 2, g->max_body[0] ? g->max_body : "1m",
                 g->server_extra, g->admin_port, g->admin_extra,
                 g->timeouts[0] ? g->timeouts : H_DEFAULT_TIMEOUTS, h_dir(),
                 g->tls[0] ? "\n[tls]\nlisten = 127.0.0.1:" : "", g->tls[0] ? g->tls_port : 0,
                 g->tls[0] ? "\n" : "", g->tls, g->body);
}

void h_gw_config(struct h_gw *g, const char *timeouts, const char *fmt, ...)
{
    if (!g->tag[0]) snprintf(g->tag, sizeof g->tag, "aigw");
    if (!g->port) g->port = h_free_port();
    if (!g->admin_port) g->admin_port = h_free_port();
    if (g->tls[0] && !g->tls_port) g->tls_port = h_free_port();
    if (!g->conf[0]) snprintf(g->conf, sizeof g->conf, "%s/%s.conf", h_dir(), g->tag);
    snprintf(g->timeouts, sizeof g->timeouts, "%s", timeouts ? timeouts : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->body, sizeof g->body, fmt, ap);
    va_end(ap);
    gw_write(g);
}

int h_gw_start(struct h_gw *g)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (attempt > 0) {   /* fresh ports, in case one was taken meanwhile */
            g->port = h_free_port();
            g->admin_port = h_free_port();
            if (g->tls[0]) g->tls_port = h_free_port();
            gw_write(g);
        }
        const char *argv[] = {h_aigw_bin(), "-c", g->conf, NULL};
        g->pid = h_spawn(g->tag, argv);
        if (wait_ready(g->pid, g->admin_port, "/readyz")) return 0;
        h_stop(g->pid, 2000);
        g->pid = 0;
    }
    return -1;
}

/* ---- JSON probes for assertions (not a parser: good enough for known shapes) ---- */

static const char *json_value_of(const char *json, const char *key, const char *from)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(from ? from : json, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (isspace((unsigned char)*p)) p++;
    if (*p != ':') return json_value_of(json, key, p);
    p++;
    while (isspace((unsigned char)*p)) p++;
    return p;
}

bool h_json_str_is(const char *json, const char *key, const char *value)
{
    if (!json) return false;
    size_t vl = strlen(value);
    for (const char *from = json;;) {
        const char *v = json_value_of(json, key, from);
        if (!v) return false;
        if (*v == '"' && !strncmp(v + 1, value, vl) && v[1 + vl] == '"') return true;
        from = v;
    }
}

long long h_json_int(const char *json, const char *key)
{
    if (!json) return -1;
    for (const char *from = json;;) {
        const char *v = json_value_of(json, key, from);
        if (!v) return -1;
        if (isdigit((unsigned char)*v)) return strtoll(v, NULL, 10);
        from = v;
    }
}

/* ---- API keys ---- */

void h_sha256_hex(const char *s, char out[65])
{
    wc_Sha256 ctx;
    byte h[32];
    cr_assert_eq(wc_InitSha256(&ctx), 0);
    cr_assert_eq(wc_Sha256Update(&ctx, (const byte *)s, (word32)strlen(s)), 0);
    cr_assert_eq(wc_Sha256Final(&ctx, h), 0);
    wc_Sha256Free(&ctx);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

const char *h_key_line(const char *name, const char *key, const char *tier, const char *models)
{
    static char bufs[8][512];
    static int next;
    char *out = bufs[next++ % 8];
    char hex[65];
    h_sha256_hex(key, hex);
    snprintf(out, sizeof bufs[0], "%s sha256:%s tier=%s%s%s\n", name, hex, tier, models ? " models=" : "",
             models ? models : "");
    return out;
}

const char *h_access_log_path(void)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/access.log", h_dir());
    return p;
}

const char *h_keys_path(void)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/keys", h_dir());
    return p;
}

const char *h_bearer(const char *key)
{
    static char bufs[4][256];
    static int next;
    char *out = bufs[next++ % 4];
    snprintf(out, sizeof bufs[0], "Authorization: Bearer %s\r\n", key);
    return out;
}

int h_listen_loopback(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 64), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

char *h_wait_for_text(const char *path, const char *needle, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        char *text = h_read_file(path);
        if (text && strstr(text, needle))
            return text;
        free(text);
        if (h_now_ms() > end)
            return NULL;
        h_sleep_ms(20);
    }
}

bool h_wait_log_line(const char *tag, const char *a, const char *b, int timeout_ms)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), tag);
    int64_t end = h_now_ms() + timeout_ms;
    for (;;) {
        char *text = h_read_file(path);
        bool hit = false;
        for (char *line = text; line && *line && !hit;) {
            char *eol = strchr(line, '\n');
            if (eol)
                *eol = 0;
            hit = strstr(line, a) && (!b || strstr(line, b));
            line = eol ? eol + 1 : NULL;
        }
        free(text);
        if (hit)
            return true;
        if (h_now_ms() > end)
            return false;
        h_sleep_ms(20);
    }
}

bool h_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* ---- waiting for aigw to have done something ---- */

int h_gw_nshards(const struct h_gw *g)
{
    return g->shards > 0 ? g->shards : 2;
}

/* Every shard's value of name{shard="N"} into out; false if one is missing. */
static bool shard_values(const struct h_gw *g, const char *name, double *out)
{
    int n = h_gw_nshards(g);
    cr_assert_leq(n, H_MAX_SHARDS);
    for (int s = 0; s < n; s++) {
        char q[128];
        snprintf(q, sizeof q, "%s{shard=\"%d\"}", name, s);
        out[s] = h_metric(g->admin_port, q);
        if (out[s] != out[s])
            return false;
    }
    return true;
}

static bool every_shard_on(const struct h_gw *g, double generation)
{
    double gen[H_MAX_SHARDS];
    if (!shard_values(g, "aigw_shard_config_generation", gen))
        return false;
    for (int s = 0; s < h_gw_nshards(g); s++)
        if (gen[s] != generation)
            return false;
    return true;
}

#define RELOADS_OK "aigw_config_reloads_total{result=\"ok\"}"
#define RELOADS_FAILED "aigw_config_reloads_total{result=\"failed\"}"

enum h_reload h_gw_reload(const struct h_gw *g)
{
    double ok0 = h_metric(g->admin_port, RELOADS_OK), failed0 = h_metric(g->admin_port, RELOADS_FAILED);
    cr_assert(ok0 == ok0 && failed0 == failed0, "no aigw_config_reloads_total before SIGHUP; aigw stderr:\n%s",
              h_tail(g->tag));
    cr_assert_eq(kill(g->pid, SIGHUP), 0);
    int64_t end = h_now_ms() + 10000 * h_slow();
    while (h_now_ms() < end) {
        if (h_metric0(g->admin_port, RELOADS_FAILED) > failed0)
            return H_RELOAD_REFUSED;
        if (h_metric0(g->admin_port, RELOADS_OK) > ok0) {
            /* counted after the new generation was published: this is it */
            double generation = h_metric(g->admin_port, "aigw_config_generation");
            while (h_now_ms() < end) {
                if (every_shard_on(g, generation))
                    return H_RELOAD_APPLIED;
                h_sleep_ms(10);
            }
            break;
        }
        h_sleep_ms(10);
    }
    return H_RELOAD_TIMEOUT;
}

bool h_gw_reopen_log(const struct h_gw *g)
{
    const char *ok = "aigw_access_log_reopens_total{result=\"ok\"}";
    const char *failed = "aigw_access_log_reopens_total{result=\"failed\"}";
    double ok0 = h_metric(g->admin_port, ok), failed0 = h_metric(g->admin_port, failed);
    if (ok0 != ok0 || failed0 != failed0 || kill(g->pid, SIGUSR1) != 0)
        return false;
    int64_t end = h_now_ms() + 5000 * h_slow();
    while (h_now_ms() < end) {
        if (h_metric0(g->admin_port, failed) > failed0)
            return false;
        if (h_metric0(g->admin_port, ok) > ok0)
            return true;
        h_sleep_ms(10);
    }
    return false;
}

struct h_each_shard h_each_shard_begin(const struct h_gw *g)
{
    struct h_each_shard e = {.g = g, .nshards = h_gw_nshards(g)};
    cr_assert(shard_values(g, "aigw_shard_requests_total", e.base),
              "no aigw_shard_requests_total; aigw stderr:\n%s", h_tail(g->tag));
    return e;
}

/* Shards that have answered nothing since begin; 0 when all have. */
static int shards_unseen(const struct h_each_shard *e, int *first_unseen)
{
    double now[H_MAX_SHARDS];
    if (!shard_values(e->g, "aigw_shard_requests_total", now))
        return e->nshards;
    int unseen = 0;
    for (int s = e->nshards - 1; s >= 0; s--)
        if (now[s] <= e->base[s]) {
            unseen++;
            *first_unseen = s;
        }
    return unseen;
}

bool h_each_shard_answered(const struct h_each_shard *e)
{
    int shard = -1;
    /* a request is counted as it ends, which may be just after its answer arrived */
    int64_t end = h_now_ms() + 2000 * h_slow();
    for (;;) {
        if (shards_unseen(e, &shard) == 0)
            return true;
        if (h_now_ms() > end)
            return false;
        h_sleep_ms(20);
    }
}

bool h_each_shard_next(struct h_each_shard *e)
{
    int shard = -1;
    if (e->rounds++ == 0)
        return true;
    if (shards_unseen(e, &shard) == 0)
        return false;
    if (e->rounds <= H_EACH_SHARD_ROUNDS)
        return true;
    if (h_each_shard_answered(e))
        return false;
    shards_unseen(e, &shard);
    cr_assert_fail("shard %d answered none of %d requests on new connections; aigw stderr:\n%s", shard,
                   H_EACH_SHARD_ROUNDS, h_tail(e->g->tag));
    return false;
}

/* ---- TLS ---- */

const char *h_tls_dir(void)
{
    static char dir[600];
    if (!dir[0] || strncmp(dir, test_dir, strlen(test_dir)) != 0) {
        snprintf(dir, sizeof dir, "%s/tls", test_dir);
        const char *argv[] = {"/bin/sh", "tests/tls/make-certs.sh", dir, NULL};
        int st = h_run("make-certs", argv, 60000 * h_slow());
        cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "tests/tls/make-certs.sh %s failed (status 0x%x; run from the source tree):\n%s", dir, st,
                  h_tail("make-certs"));
    }
    return dir;
}

const char *h_tls_file(const char *name)
{
    static char bufs[8][700];
    static int next;
    char *out = bufs[next++ % 8];
    snprintf(out, sizeof bufs[0], "%s/%s", h_tls_dir(), name);
    return out;
}

void h_gw_tls(struct h_gw *g, const char *extra)
{
    extra = extra ? extra : "";
    snprintf(g->tls, sizeof g->tls, "cert = %s\nkey = %s\n%s%s", h_tls_file("server.pem"),
             h_tls_file("server.key"), strstr(extra, "handshake_timeout") ? "" : "handshake_timeout = 5s\n",
             extra);
}

static __thread char tls_err[512];

const char *h_tls_error(void)
{
    return tls_err;
}

/* Client contexts, one per (CA, client certificate, version), shared by the
 * test's threads (a context is read-only once made). */
struct tls_ctx_slot {
    char ca[600], cert[600], key[600];
    int version;
    WOLFSSL_CTX *ctx;
};
static struct tls_ctx_slot tls_ctxs[8];
static pthread_mutex_t tls_ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_init_once(void)
{
    wolfSSL_Init();
}

static WOLFSSL_CTX *tls_client_ctx(const char *ca, const char *cert, const char *key, int version)
{
    pthread_once(&tls_once, tls_init_once);
    pthread_mutex_lock(&tls_ctx_lock);
    WOLFSSL_CTX *ctx = NULL;
    struct tls_ctx_slot *free_slot = NULL;
    for (size_t i = 0; i < sizeof tls_ctxs / sizeof tls_ctxs[0] && !ctx; i++) {
        struct tls_ctx_slot *s = &tls_ctxs[i];
        if (!s->ctx) {
            if (!free_slot) free_slot = s;
            continue;
        }
        if (!strcmp(s->ca, ca) && !strcmp(s->cert, cert ? cert : "") && !strcmp(s->key, key ? key : "") &&
            s->version == version)
            ctx = s->ctx;
    }
    if (!ctx) {
        WOLFSSL_METHOD *m = version == 12 ? wolfTLSv1_2_client_method()
                            : version == 13 ? wolfTLSv1_3_client_method()
                                            : wolfSSLv23_client_method();
        ctx = wolfSSL_CTX_new(m);
        if (!ctx) {
            snprintf(tls_err, sizeof tls_err, "wolfSSL_CTX_new failed");
        } else if (wolfSSL_CTX_load_verify_locations(ctx, ca, NULL) != WOLFSSL_SUCCESS) {
            snprintf(tls_err, sizeof tls_err, "cannot load CA %s", ca);
            wolfSSL_CTX_free(ctx);
            ctx = NULL;
        } else if (cert && (wolfSSL_CTX_use_certificate_chain_file(ctx, cert) != WOLFSSL_SUCCESS ||
                            wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS)) {
            snprintf(tls_err, sizeof tls_err, "cannot load client certificate %s / %s", cert, key);
            wolfSSL_CTX_free(ctx);
            ctx = NULL;
        } else {
            wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, NULL);
            if (free_slot) {   /* else: a context per connection (more than 8 kinds in one test) */
                snprintf(free_slot->ca, sizeof free_slot->ca, "%s", ca);
                snprintf(free_slot->cert, sizeof free_slot->cert, "%s", cert ? cert : "");
                snprintf(free_slot->key, sizeof free_slot->key, "%s", key ? key : "");
                free_slot->version = version;
                free_slot->ctx = ctx;
            }
        }
    }
    pthread_mutex_unlock(&tls_ctx_lock);
    return ctx;
}

/* Waits until fd is ready for what wolfSSL asked for (err: WANT_READ/WANT_WRITE).
 * False when the deadline passed. */
static bool tls_wait(int fd, int err, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - h_now_ms();
        if (left <= 0) return false;
        struct pollfd pfd = {.fd = fd, .events = err == WOLFSSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
        int pr = poll(&pfd, 1, (int)left);
        if (pr > 0) return true;
        if (pr == 0) return false;
        if (errno != EINTR) return false;
    }
}

int h_connect_tls(struct h_conn *c, int port, const struct h_tls_opts *o)
{
    static const struct h_tls_opts defaults;
    if (!o) o = &defaults;
    tls_err[0] = 0;
    const char *ca = o->ca ? o->ca : h_tls_file("ca.pem");
    const char *sni = o->sni ? o->sni : "aigw.test";
    const char *name = o->verify_name ? o->verify_name : sni;
    int rc = h_connect(c, port);
    if (rc < 0) {
        snprintf(tls_err, sizeof tls_err, "connect: %s", strerror(-rc));
        return rc;
    }
    WOLFSSL_CTX *ctx = tls_client_ctx(ca, o->cert, o->key, o->version);
    WOLFSSL *ssl = ctx ? wolfSSL_new(ctx) : NULL;
    if (!ssl) {
        if (!tls_err[0]) snprintf(tls_err, sizeof tls_err, "wolfSSL_new failed");
        h_close(c);
        return -ENOMEM;
    }
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    wolfSSL_set_fd(ssl, c->fd);
    if (*sni) wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, sni, (unsigned short)strlen(sni));
    if (*name) wolfSSL_check_domain_name(ssl, name);
    c->tls = ssl;
    int64_t deadline = h_now_ms() + 5000 * h_slow();
    for (;;) {
        int ret = wolfSSL_connect(ssl);
        if (ret == WOLFSSL_SUCCESS) return 0;
        int err = wolfSSL_get_error(ssl, ret);
        if ((err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) && tls_wait(c->fd, err, deadline))
            continue;
        char reason[WOLFSSL_MAX_ERROR_SZ];
        wolfSSL_ERR_error_string_n((unsigned long)err, reason, sizeof reason);
        snprintf(tls_err, sizeof tls_err, "TLS handshake with 127.0.0.1:%d failed: %s (%d)%s", port, reason,
                 err, err == WOLFSSL_ERROR_WANT_READ ? ", timed out" : "");
        h_close(c);
        return err < 0 ? err : -EPROTO;
    }
}

const char *h_tls_version(const struct h_conn *c)
{
    return c->tls ? wolfSSL_get_version(c->tls) : "";
}

const char *h_tls_cipher(const struct h_conn *c)
{
    return c->tls ? wolfSSL_get_cipher_name(c->tls) : "";
}

/* conn_fill over TLS: >0 plaintext bytes, 0 on close (close_notify, EOF, a
 * fatal alert or error), H_ETIMEOUT. */
static int tls_fill(struct h_conn *c, int64_t deadline)
{
    for (;;) {
        if (c->cap - c->len < 8192) c->buf = realloc(c->buf, c->cap *= 2);
        int n = wolfSSL_read(c->tls, c->buf + c->len, (int)(c->cap - c->len));
        if (n > 0) {
            c->len += (size_t)n;
            c->last_rx_ms = h_now_ms();
            return n;
        }
        int err = wolfSSL_get_error(c->tls, n);
        if (err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) {
            if (!tls_wait(c->fd, err, deadline)) return H_ETIMEOUT;
            continue;
        }
        c->eof = true;
        return 0;
    }
}

static int tls_send(struct h_conn *c, const void *p, size_t n)
{
    const char *s = p;
    int64_t deadline = h_now_ms() + 5000;
    while (n > 0) {
        int chunk = n > 16384 ? 16384 : (int)n;
        int w = wolfSSL_write(c->tls, s, chunk);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
            continue;
        }
        int err = wolfSSL_get_error(c->tls, w);
        if ((err == WOLFSSL_ERROR_WANT_READ || err == WOLFSSL_ERROR_WANT_WRITE) && tls_wait(c->fd, err, deadline))
            continue;
        return -EPIPE;
    }
    return 0;
}

int h_run_io(const char *tag, const char *const argv[], const char *input, int timeout_ms, char **out)
{
    char in_path[600], out_path[600], err_path[600];
    snprintf(in_path, sizeof in_path, "%s/%s.in", test_dir, tag);
    snprintf(out_path, sizeof out_path, "%s/%s.out", test_dir, tag);
    snprintf(err_path, sizeof err_path, "%s/%s.err", test_dir, tag);
    if (truncate(out_path, 0) != 0 && errno != ENOENT) perror(out_path);
    if (truncate(err_path, 0) != 0 && errno != ENOENT) perror(err_path);
    if (input) h_write_file(in_path, "%s", input);
    pid_t pid = spawn_io(tag, argv, input ? in_path : "/dev/null");
    int st = h_wait_exit(pid, timeout_ms);
    if (st == -1) {
        kill(pid, SIGKILL);
        h_wait_exit(pid, 5000);
    }
    if (out) {
        *out = h_read_file(out_path);
        if (!*out) *out = strdup("");
    }
    return st;
}

/* argv from a fixed prefix and space separated args (in argbuf, which it cuts up). */
static int build_argv(const char **argv, int max, int n, char *argbuf)
{
    for (char *save, *t = strtok_r(argbuf, " ", &save); t && n < max - 1; t = strtok_r(NULL, " ", &save))
        argv[n++] = t;
    argv[n] = NULL;
    return n;
}

static int exit_code(int st)
{
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int h_s_client(const char *tag, int port, const char *args, const char *input, char **out)
{
    char connect[64], argbuf[2048];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", port);
    snprintf(argbuf, sizeof argbuf, "%s", args ? args : "");
    const char *argv[64];
    int n = 0;
    argv[n++] = "/usr/bin/openssl";
    argv[n++] = "s_client";
    argv[n++] = "-connect";
    argv[n++] = connect;
    argv[n++] = "-CAfile";
    argv[n++] = h_tls_file("ca.pem");
    argv[n++] = "-showcerts";
    if (input) argv[n++] = "-ign_eof";
    build_argv(argv, 64, n, argbuf);
    return exit_code(h_run_io(tag, argv, input, 20000 * h_slow(), out));
}

int h_curl(const char *tag, const char *args, char **out)
{
    char argbuf[2048];
    snprintf(argbuf, sizeof argbuf, "%s", args ? args : "");
    const char *argv[64];
    int n = 0;
    argv[n++] = "/usr/bin/curl";
    argv[n++] = "-sS";
    argv[n++] = "--max-time";
    argv[n++] = h_slow() > 1 ? "45" : "15";
    argv[n++] = "--cacert";
    argv[n++] = h_tls_file("ca.pem");
    build_argv(argv, 64, n, argbuf);
    return exit_code(h_run_io(tag, argv, NULL, 60000 * h_slow(), out));
}

/* The first "-----BEGIN CERTIFICATE-----" block of text, without whitespace,
 * into out (malloc'd); NULL if none. */
static char *first_cert(const char *text)
{
    const char *b = text ? strstr(text, "-----BEGIN CERTIFICATE-----") : NULL;
    const char *e = b ? strstr(b, "-----END CERTIFICATE-----") : NULL;
    if (!e) return NULL;
    char *out = malloc((size_t)(e - b) + 1), *o = out;
    for (const char *p = b; p < e; p++)
        if (!isspace((unsigned char)*p)) *o++ = *p;
    *o = 0;
    return out;
}

bool h_tls_leaf_is(const char *text, const char *name)
{
    char *file = h_read_file(h_tls_file(name));
    char *want = first_cert(file), *got = first_cert(text);
    bool same = want && got && !strcmp(want, got);
    free(file);
    free(want);
    free(got);
    return same;
}

size_t h_tls_client_hello(char *buf, size_t cap)
{
    int port;
    int lfd = h_listen_loopback(&port);
    char connect[64];
    snprintf(connect, sizeof connect, "127.0.0.1:%d", port);
    const char *argv[] = {"/usr/bin/openssl", "s_client", "-connect", connect, "-servername", "aigw.test", NULL};
    pid_t pid = h_spawn("hello-client", argv);
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 10000 * h_slow()), 1, "openssl s_client did not connect:\n%s", h_tail("hello-client"));
    int fd = accept(lfd, NULL, NULL);
    cr_assert_geq(fd, 0);
    struct timeval tv = {5 * h_slow(), 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t have = 0, want = 5;
    while (have < want) {
        cr_assert_leq(want, cap, "a ClientHello of %zu bytes", want);
        ssize_t n = read(fd, buf + have, want - have);
        cr_assert_gt(n, 0, "the ClientHello ended after %zu bytes", have);
        have += (size_t)n;
        if (have >= 5 && want == 5) {
            cr_assert_eq((unsigned char)buf[0], 0x16, "not a handshake record: 0x%02x", (unsigned char)buf[0]);
            want = 5 + (((size_t)(unsigned char)buf[3] << 8) | (unsigned char)buf[4]);
        }
    }
    close(fd);
    close(lfd);
    h_stop(pid, 2000);
    return have;
}

long h_rss_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *text = h_read_file(path);
    const char *p = text ? strstr(text, "VmRSS:") : NULL;
    long kb = p ? strtol(p + 6, NULL, 10) : -1;
    free(text);
    return kb;
}

/* ---- a mixed load ---- */

void h_load_unexpected(struct h_load_client *cl, int i, const char *what, int rc, const struct h_resp *r,
                       const char *detail)
{
    cl->unexpected++;
    if (cl->first_failure[0]) return;
    char history[160] = "";
    if (cl->ka_history[0] || cl->ka_history[1])
        snprintf(history, sizeof history, " [before it on the kept-alive connection: %s, %s]",
                 cl->ka_history[0] ? cl->ka_history[0] : "-", cl->ka_history[1] ? cl->ka_history[1] : "-");
    snprintf(cl->first_failure, sizeof cl->first_failure, "request %d (%s): rc %d status %d %.150s%s%s%s", i, what,
             rc, r ? r->status : 0, r && r->body ? r->body : "", history, detail ? " " : "", detail ? detail : "");
}

struct load_thread {
    struct h_load_client cl;
    int count;
    h_load_request *request;
    pthread_t th;
};

static void *load_thread_main(void *arg)
{
    struct load_thread *t = arg;
    for (int i = 0; i < t->count; i++) t->request(&t->cl, i);
    h_close(&t->cl.ka);
    return NULL;
}

int h_load_run(int port, int per_client, h_load_request *request, char *first, size_t first_cap)
{
    char chat[512], stream_req[1024];
    h_chat_body(chat, sizeof chat, 2, false);
    h_chat_stream_request(stream_req, sizeof stream_req, "x", 16);
    struct load_thread t[H_LOAD_CLIENTS];
    int started = 0;
    for (; started < H_LOAD_CLIENTS; started++) {
        struct load_thread *lt = &t[started];
        *lt = (struct load_thread){.count = per_client, .request = request};
        lt->cl = (struct h_load_client){.port = port, .seed = started * 3, .chat = chat, .stream_req = stream_req,
                                        .ka = {.fd = -1}};
        if (pthread_create(&lt->th, NULL, load_thread_main, lt) != 0) break;
    }
    int unexpected = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(t[i].th, NULL);
        unexpected += t[i].cl.unexpected;
        if (t[i].cl.first_failure[0] && !first[0]) snprintf(first, first_cap, "%s", t[i].cl.first_failure);
    }
    /* after the joins: the threads use this stack frame */
    cr_assert_eq(started, H_LOAD_CLIENTS, "could start only %d load threads", started);
    return unexpected;
}

/* ---- Redis ---- */

static redisContext *redis_open(const struct h_redis *r)
{
    struct timeval tv = { 1, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (r->password[0]) {
        redisReply *a = redisCommand(c, "AUTH %s", r->password);
        bool ok = a && a->type == REDIS_REPLY_STATUS;
        if (a)
            freeReplyObject(a);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static bool redis_spawn(struct h_redis *r, const char *args)
{
    char port[16], dir[512], argbuf[512];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(dir, sizeof dir, "%s/%s.redis", test_dir, r->tag);
    mkdir(dir, 0755);
    snprintf(argbuf, sizeof argbuf, "%s", args ? args : "");
    const char *argv[48];
    int n = 0;
    argv[n++] = "/usr/bin/redis-server";   /* h_spawn execs without a PATH search; Debian's path */
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = dir;
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    if (r->password[0]) {
        argv[n++] = "--requirepass";
        argv[n++] = r->password;
    }
    for (char *save, *t = strtok_r(argbuf, " ", &save); t && n < 46; t = strtok_r(NULL, " ", &save))
        argv[n++] = t;
    argv[n] = NULL;
    r->pid = h_spawn(r->tag, argv);
    int64_t deadline = h_now_ms() + 10000 * h_slow();
    while (h_now_ms() < deadline && h_alive(r->pid)) {
        redisContext *c = redis_open(r);
        if (c) {
            redisReply *p = redisCommand(c, "PING");
            bool ok = p && p->type == REDIS_REPLY_STATUS;
            if (p)
                freeReplyObject(p);
            redisFree(c);
            if (ok)
                return true;
        }
        h_sleep_ms(20);
    }
    h_stop(r->pid, 2000);
    r->pid = 0;
    return false;
}

int h_redis_start(struct h_redis *r, const char *tag, const char *args)
{
    snprintf(r->tag, sizeof r->tag, "%s", tag);
    for (int attempt = 0; attempt < 2; attempt++) {
        r->port = h_free_port();
        if (redis_spawn(r, args))
            return 0;
    }
    return -1;
}

int h_redis_restart(struct h_redis *r, const char *args)
{
    int64_t end = h_now_ms() + 2000;
    do {
        if (redis_spawn(r, args))
            return 0;
        h_sleep_ms(100);
    } while (h_now_ms() < end);
    return -1;
}

static redisReply *redis_vcmd(const struct h_redis *r, const char *fmt, va_list ap)
{
    redisContext *c = redis_open(r);
    if (!c)
        return NULL;
    redisReply *rep = redisvCommand(c, fmt, ap);
    redisFree(c);
    return rep;
}

redisReply *h_redis_cmd(const struct h_redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(r, fmt, ap);
    va_end(ap);
    return rep;
}

long long h_redis_int(const struct h_redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redis_vcmd(r, fmt, ap);
    va_end(ap);
    long long v = -1;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        v = rep->integer;
    else if (rep && rep->type == REDIS_REPLY_STRING)
        v = strtoll(rep->str, NULL, 10);
    if (rep)
        freeReplyObject(rep);
    return v;
}

/* ---- an OTLP/HTTP trace receiver ---- */

#define OTLP_MAX_CONNS 16

struct h_otlp_conn {
    int fd;
    char *buf;
    size_t len, cap;
};

struct h_otlp {
    int port, listen_fd;
    enum h_otlp_mode mode;
    pthread_t thread;
    _Atomic bool stop;
    pthread_mutex_t mu;
    char *bodies;               /* every body, concatenated */
    size_t blen;
    int posts, spans;
    char *first_head;
    struct h_otlp_conn conns[OTLP_MAX_CONNS];
};

static int count_spans(const char *p, size_t n)
{
    int k = 0;
    static const char needle[] = "\"spanId\"";
    for (const char *q = p; (q = memmem(q, n - (size_t)(q - p), needle, sizeof needle - 1)); q++)
        k++;
    return k;
}

/* Takes every complete request at the front of c's buffer. */
static void otlp_take_requests(struct h_otlp *o, struct h_otlp_conn *c)
{
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head = (size_t)(end - c->buf) + 4;
        size_t clen = 0;
        for (char *l = c->buf; l < end; l = strstr(l, "\r\n") + 2) {
            if (strncasecmp(l, "content-length:", 15) == 0)
                clen = strtoul(l + 15, NULL, 10);
        }
        if (c->len < head + clen)
            return;
        pthread_mutex_lock(&o->mu);
        if (!o->first_head)
            o->first_head = strndup(c->buf, head);
        o->bodies = realloc(o->bodies, o->blen + clen + 2);
        memcpy(o->bodies + o->blen, c->buf + head, clen);
        o->blen += clen;
        o->bodies[o->blen++] = '\n';
        o->bodies[o->blen] = '\0';
        o->posts++;
        o->spans += count_spans(c->buf + head, clen);
        pthread_mutex_unlock(&o->mu);
        memmove(c->buf, c->buf + head + clen, c->len - head - clen);
        c->len -= head + clen;
        if (o->mode == H_OTLP_OK) {
            static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            if (!h_write_all(c->fd, ok, sizeof ok - 1)) {
                close(c->fd);
                c->fd = -1;
                return;
            }
        }
    }
}

static void *otlp_main(void *arg)
{
    struct h_otlp *o = arg;
    while (!atomic_load(&o->stop)) {
        struct pollfd p[OTLP_MAX_CONNS + 1];
        p[0] = (struct pollfd){ .fd = o->listen_fd, .events = POLLIN };
        for (int i = 0; i < OTLP_MAX_CONNS; i++)
            p[i + 1] = (struct pollfd){ .fd = o->conns[i].fd, .events = POLLIN };
        if (poll(p, OTLP_MAX_CONNS + 1, 50) <= 0)
            continue;
        if (p[0].revents & POLLIN) {
            int fd = accept4(o->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            int i = 0;
            while (fd >= 0 && i < OTLP_MAX_CONNS && o->conns[i].fd >= 0)
                i++;
            if (fd >= 0 && i == OTLP_MAX_CONNS)
                close(fd);
            else if (fd >= 0)
                o->conns[i].fd = fd;
        }
        for (int i = 0; i < OTLP_MAX_CONNS; i++) {
            struct h_otlp_conn *c = &o->conns[i];
            if (c->fd < 0 || !(p[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (c->cap - c->len < 65536) {
                c->cap = c->cap * 2 + 65536;
                c->buf = realloc(c->buf, c->cap);
            }
            ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
            if (r <= 0) {
                close(c->fd);
                c->fd = -1;
                c->len = 0;
                continue;
            }
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            otlp_take_requests(o, c);
        }
    }
    return NULL;
}

struct h_otlp *h_otlp_start(enum h_otlp_mode mode)
{
    struct h_otlp *o = calloc(1, sizeof *o);
    cr_assert(o);
    o->mode = mode;
    pthread_mutex_init(&o->mu, NULL);
    for (int i = 0; i < OTLP_MAX_CONNS; i++)
        o->conns[i].fd = -1;
    o->listen_fd = h_listen_loopback(&o->port);
    cr_assert_eq(pthread_create(&o->thread, NULL, otlp_main, o), 0);
    return o;
}

int h_otlp_port(const struct h_otlp *o) { return o->port; }

int h_otlp_posts(struct h_otlp *o)
{
    pthread_mutex_lock(&o->mu);
    int n = o->posts;
    pthread_mutex_unlock(&o->mu);
    return n;
}

int h_otlp_spans(struct h_otlp *o)
{
    pthread_mutex_lock(&o->mu);
    int n = o->spans;
    pthread_mutex_unlock(&o->mu);
    return n;
}

char *h_otlp_wait_spans(struct h_otlp *o, int spans, int timeout_ms)
{
    int64_t end = h_now_ms() + timeout_ms;
    while (h_otlp_spans(o) < spans && h_now_ms() < end)
        h_sleep_ms(20);
    pthread_mutex_lock(&o->mu);
    char *text = strdup(o->bodies ? o->bodies : "");
    pthread_mutex_unlock(&o->mu);
    return text;
}

char *h_otlp_first_head(struct h_otlp *o)
{
    pthread_mutex_lock(&o->mu);
    char *text = strdup(o->first_head ? o->first_head : "");
    pthread_mutex_unlock(&o->mu);
    return text;
}

void h_otlp_stop(struct h_otlp *o)
{
    if (!o)
        return;
    atomic_store(&o->stop, true);
    pthread_join(o->thread, NULL);
    close(o->listen_fd);
    for (int i = 0; i < OTLP_MAX_CONNS; i++) {
        if (o->conns[i].fd >= 0)
            close(o->conns[i].fd);
        free(o->conns[i].buf);
    }
    free(o->bodies);
    free(o->first_head);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

const char *h_find_in_path(const char *prog)
{
    static char path[1024];
    const char *env = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", env ? env : "/usr/local/bin:/usr/bin:/bin");
    for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof path, "%s/%s", d, prog);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

static void *b503_main(void *arg)
{
    struct h_b503 *s = arg;
    static const char body[] =
        "{\"error\":{\"message\":\"scripted overload\",\"type\":\"server_error\",\"code\":\"scripted_503\"}}";
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     sizeof body - 1, body);
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            return NULL;   /* the listening socket was shut down */
        if (h_read_request(c)) {
            atomic_fetch_add(&s->requests, 1);
            h_write_all(c, resp, (size_t)n);
        }
        close(c);
    }
}

void h_b503_start(struct h_b503 *s)
{
    memset(s, 0, sizeof *s);
    s->fd = h_listen_loopback(&s->port);
    cr_assert_eq(pthread_create(&s->th, NULL, b503_main, s), 0);
}

void h_b503_stop(struct h_b503 *s)
{
    shutdown(s->fd, SHUT_RDWR);
    pthread_join(s->th, NULL);
    close(s->fd);
}
