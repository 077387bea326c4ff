/* The request lifecycle without network I/O: one shard (a real io_uring that is
 * never submitted, its provided buffers, timer wheel, metrics and a
 * configuration generation) drives a client connection through its states with
 * hand-made completions. After each step the test reads what aigw queued on
 * the submission ring (a SEND on the client's socket and the bytes it would
 * put on the wire, a CONNECT to a backend, a RECV and its flags) and takes
 * those SQEs off the ring as the kernel would, so nothing ever reaches the
 * kernel and the ring never fills. The client's socket is one end of a
 * socketpair; backends' sockets are created by aigw and never connected. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/accesslog.h"
#include "core/buf.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/relay.h"
#include "core/ring.h"
#include "core/shard.h"
#include "core/upstream.h"

/* Static, so that whatever the shard still owns when a test ends stays
 * reachable (LeakSanitizer) */
static struct shard sh;
static char tmp_dir[64];
static char keys_path[128];
static char access_log_path[128];
static bool access_log_open;
static int client_peer = -1;    /* the client's own end of the socketpair */
static int client_fd = -1;      /* aigw's end (c->fd becomes -1 when aigw closes it) */

#define BACKEND_A 27011
#define BACKEND_B 27012
#define BACKEND_RAW 27013
#define CLIENT_HEADER_MS 10000
#define FIRST_BYTE_MS 2000
#define IDLE_MS 20000

/* sha256("hello"): the caller's key is "hello" */
#define KEYS_FILE "caller sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 tier=paid\n"

static const char conf_fmt[] =
    "[server]\n"
    "listen = 127.0.0.1:27001\n"
    "max_body = 64m\n"
    "[admin]\n"
    "listen = off\n"
    "[timeouts]\n"
    "first_byte = 2s\n"
    "idle = 20s\n"
    "client_header = 10s\n"
    "[log]\n"
    "access = %s\n"
    "[keys]\n"
    "auth = off\n"
    "file = %s\n"
    "[tier paid]\n"
    "tokens_per_minute = 1000000\n"
    "[pool gpu]\n"
    "backend = 127.0.0.1:27011\n"
    "backend = 127.0.0.1:27012\n"
    "retries = 1\n"
    "[pool files]\n"
    "backend = 127.0.0.1:27013\n"
    "[route chat]\n"
    "path = /v1/chat/completions\n"
    "pool = gpu\n"
    "models = m1\n"
    "[route gpu-raw]\n"
    "path = /gpu/*\n"
    "kind = raw\n"
    "pool = gpu\n"
    "[route files]\n"
    "path = /files/*\n"
    "kind = raw\n"
    "pool = files\n";

/* ---- the submission ring, read and emptied as the kernel would ---- */

static struct io_uring_sqe sq_log[4096];
static unsigned sq_logged;

/* Copies the SQEs aigw queued since the last look into sq_log and takes them
 * off the ring (the head moves as if the kernel had consumed them). */
static void sq_take(void)
{
    struct io_uring_sq *sq = &sh.ring.sq;
    unsigned head = *sq->khead;
    for (; head != sq->sqe_tail; head++) {
        cr_assert_lt(sq_logged, sizeof sq_log / sizeof sq_log[0], "more SQEs than the test expects");
        sq_log[sq_logged++] = sq->sqes[head & sq->ring_mask];
    }
    *sq->khead = head;
    sq->sqe_head = head;
}

/* Where the next step's SQEs will start in sq_log. */
static unsigned sq_mark(void)
{
    sq_take();
    return sq_logged;
}

/* The first SQE queued at or after `from` with this opcode on fd (-1: any). */
static const struct io_uring_sqe *sq_find(unsigned from, uint8_t opcode, int fd)
{
    sq_take();
    for (unsigned i = from; i < sq_logged; i++)
        if (sq_log[i].opcode == opcode && (fd < 0 || sq_log[i].fd == fd))
            return &sq_log[i];
    return NULL;
}

static unsigned sq_count(unsigned from, uint8_t opcode, int fd)
{
    sq_take();
    unsigned n = 0;
    for (unsigned i = from; i < sq_logged; i++)
        n += sq_log[i].opcode == opcode && (fd < 0 || sq_log[i].fd == fd);
    return n;
}

static unsigned sq_index(const struct io_uring_sqe *s)
{
    return (unsigned)(s - sq_log);
}

/* The kernel's answer to one SQE, handed to its owner as the shard's loop would. */
static void complete(const struct io_uring_sqe *s, int res, unsigned flags)
{
    struct io_uring_cqe cqe = { .user_data = s->user_data, .res = res, .flags = flags };
    enum op op = ud_op(s->user_data);
    if (op == OP_UP_CONNECT || op == OP_UP_SEND || op == OP_UP_RECV || op == OP_UP_WATCH)
        upconn_on_cqe(ud_ptr(s->user_data), op, &cqe);
    else
        conn_on_cqe(ud_ptr(s->user_data), op, &cqe);
}

/* Time passes on the shard: due timers fire, as in the shard's loop. */
static void fire_timer(struct timer_node *t)
{
    char *p = (char *)t;
    if (t->kind == TIMER_UPCONN)
        upconn_timer_fired((struct upconn *)(p - offsetof(struct upconn, timer)));
    else
        conn_timer_fired((struct conn *)(p - offsetof(struct conn, timer)));
}

static void advance_ms(uint64_t ms)
{
    sh.now_ms += ms;
    sh.now_us += ms * 1000;
    timer_wheel_advance(&sh.timers, sh.now_ms, fire_timer);
}

/* ---- the shard ---- */

static void shard_up(void)
{
    cr_assert_eq(metrics_init(1), 0);
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/aigw-lifecycle-XXXXXX");
    cr_assert_not_null(mkdtemp(tmp_dir));
    snprintf(keys_path, sizeof keys_path, "%s/keys", tmp_dir);
    FILE *f = fopen(keys_path, "w");
    cr_assert_not_null(f);
    fputs(KEYS_FILE, f);
    fclose(f);

    snprintf(access_log_path, sizeof access_log_path, "%s/access.log", tmp_dir);
    cr_assert_eq(alog_init(1, 0, ACCESS_FILE, access_log_path), 0);
    access_log_open = true;

    char text[sizeof conf_fmt + sizeof access_log_path + sizeof keys_path], err[512];
    snprintf(text, sizeof text, conf_fmt, access_log_path, keys_path);
    struct config *cfg = NULL;
    cr_assert_eq(config_load_string("lifecycle.conf", text, &cfg, err, sizeof err), 0, "%s", err);
    struct gen *g = gen_create(cfg, NULL, 1, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    atomic_store(&rt.current, g);
    cr_assert_eq(shard_init(&sh, 0, 1, g), 0);
    cr_assert_eq(shard_ring_setup(&sh), 0);
}

static void shard_down(void)
{
    if (client_peer >= 0)
        close(client_peer);
    if (access_log_open)
        alog_shutdown();
    unlink(access_log_path);
    unlink(keys_path);
    rmdir(tmp_dir);
}

TestSuite(lifecycle, .init = shard_up, .fini = shard_down);

/* ---- the client ---- */

/* A client connects: aigw arms a multishot recv with buffer select on it. */
static struct conn *client_connects(void)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    client_fd = sv[0];
    client_peer = sv[1];
    unsigned from = sq_mark();
    conn_accepted(&sh, client_fd, false);
    struct conn *c = sh.live.next;
    cr_assert_eq(c->fd, client_fd);
    const struct io_uring_sqe *r = sq_find(from, IORING_OP_RECV, client_fd);
    cr_assert_not_null(r, "no recv armed on a new connection");
    cr_assert(r->ioprio & IORING_RECV_MULTISHOT);
    cr_assert(r->flags & IOSQE_BUFFER_SELECT);
    cr_assert_eq(r->buf_group, RECV_BUF_GROUP);
    return c;
}

static unsigned next_bid;

/* n bytes from the client: the kernel filled a provided buffer and completed the
 * connection's recv with it (a multishot recv stays armed, a one-shot ends). */
static void client_writes_n(struct conn *c, const char *p, size_t n)
{
    cr_assert(c->recv_armed, "the client's bytes arrive, but aigw has no recv armed");
    cr_assert_leq(n, RECV_BUF_SIZE);
    unsigned bid = next_bid++ % RECV_BUF_COUNT;
    memcpy(shard_recv_buf(&sh, bid), p, n);
    unsigned flags = IORING_CQE_F_BUFFER | bid << IORING_CQE_BUFFER_SHIFT;
    if (c->recv_multishot)
        flags |= IORING_CQE_F_MORE;
    struct io_uring_cqe cqe = { .user_data = ud_make(c, OP_CLIENT_RECV), .res = (int)n, .flags = flags };
    conn_on_cqe(c, OP_CLIENT_RECV, &cqe);
}

static void client_writes(struct conn *c, const char *s)
{
    client_writes_n(c, s, strlen(s));
}

/* What a peer on fd received: each SEND aigw queued on it from *done on is
 * completed in order, all bytes taken, and its bytes collected. */
static char wire[1 << 16];

static const char *peer_reads(int fd, unsigned *done)
{
    size_t len = 0;
    const struct io_uring_sqe *s;
    while ((s = sq_find(*done, IORING_OP_SEND, fd))) {
        *done = sq_index(s) + 1;
        cr_assert_lt(len + s->len, sizeof wire);
        memcpy(wire + len, (const char *)(uintptr_t)s->addr, s->len);
        len += s->len;
        complete(s, (int)s->len, 0);
    }
    wire[len] = '\0';
    return wire;
}

static unsigned client_sends_done;

static const char *client_reads(void)
{
    return peer_reads(client_fd, &client_sends_done);
}

static uint64_t requests_with_status(int status)
{
    uint64_t n = 0;
    for (unsigned r = 0; r < METRICS_MAX_ROUTES; r++)
        n += atomic_load(&sh.m->requests[r][metrics_status_slot(status)]);
    return n;
}

/* The access log so far (the writer is stopped to flush it: once per test). */
static char *access_log(void)
{
    alog_shutdown();
    access_log_open = false;
    static char text[1 << 16];
    FILE *f = fopen(access_log_path, "r");
    cr_assert_not_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

/* ---- backends ---- */

struct backend {
    struct upconn *u;
    int fd;
    uint16_t port;
    unsigned sends_done;    /* its sends already taken */
    unsigned recvs_done;    /* its recvs already answered */
};

/* aigw opens a connection to a backend: the CONNECT queued at or after from. */
static struct backend backend_connect_queued(unsigned from)
{
    const struct io_uring_sqe *s = sq_find(from, IORING_OP_CONNECT, -1);
    cr_assert_not_null(s, "no connect to a backend");
    const struct sockaddr_in *a = (const struct sockaddr_in *)(uintptr_t)s->addr;
    cr_assert_eq(a->sin_family, AF_INET);
    cr_assert_eq(a->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    struct backend b = { .u = ud_ptr(s->user_data), .fd = s->fd, .port = ntohs(a->sin_port),
                         .sends_done = sq_index(s) + 1, .recvs_done = sq_index(s) + 1 };
    cr_assert_eq(b.u->fd, b.fd);
    cr_assert_eq(ud_op(s->user_data), OP_UP_CONNECT);
    return b;
}

static void backend_accepts(struct backend *b)
{
    const struct io_uring_sqe *s = sq_find(b->sends_done - 1, IORING_OP_CONNECT, b->fd);
    complete(s, 0, 0);
}

static const char *backend_reads(struct backend *b)
{
    return peer_reads(b->fd, &b->sends_done);
}

/* The next send aigw queued to the backend, left for the test to complete. */
static const struct io_uring_sqe *backend_send_queued(struct backend *b)
{
    const struct io_uring_sqe *s = sq_find(b->sends_done, IORING_OP_SEND, b->fd);
    cr_assert_not_null(s, "nothing sent to the backend");
    b->sends_done = sq_index(s) + 1;
    return s;
}

/* The backend sends bytes: into the buffer of the recv aigw armed on it. */
static void backend_writes(struct backend *b, const char *resp)
{
    const struct io_uring_sqe *r = sq_find(b->recvs_done, IORING_OP_RECV, b->fd);
    cr_assert_not_null(r, "the backend answers, but aigw has no recv armed on its connection");
    b->recvs_done = sq_index(r) + 1;
    size_t n = strlen(resp);
    cr_assert_leq(n, r->len);
    memcpy((char *)(uintptr_t)r->addr, resp, n);
    complete(r, (int)n, 0);
}

/* ---- the tests ---- */

static const char models_request[] = "GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n";

/* A GET /v1/models that aigw answers itself, on connection c. */
static void served_models(struct conn *c)
{
    client_writes(c, models_request);
    const char *resp = client_reads();
    cr_assert(strncmp(resp, "HTTP/1.1 200 ", 13) == 0, "%s", resp);
    cr_assert_not_null(strstr(resp, "{\"object\":\"list\",\"data\":[{\"id\":\"m1\""), "%s", resp);
    cr_assert_null(strcasestr(resp, "connection: close"), "%s", resp);
    cr_assert_eq(c->state, CS_IDLE);
}

/* The reshape's bug: resp_started outlived the served request, and a malformed
 * request after it was closed without an answer (logged 499). */
Test(lifecycle, malformed_request_after_served_one_gets_400)
{
    struct conn *c = client_connects();
    served_models(c);

    unsigned from = sq_mark();
    client_writes(c, "GET /gpu/x HTTP/1.1\r\nHost: gw\r\nno colon in this line\r\n\r\n");
    const char *resp = client_reads();
    cr_assert(strncmp(resp, "HTTP/1.1 400 ", 13) == 0, "the client got: '%s'", resp);
    cr_assert_not_null(strstr(resp, "\"type\":\"invalid_request_error\""), "%s", resp);
    cr_assert_not_null(strcasestr(resp, "connection: close"), "%s", resp);
    /* after the answer, not instead of it */
    const struct io_uring_sqe *close_sqe = sq_find(from, IORING_OP_CLOSE, client_fd);
    cr_assert_not_null(close_sqe);
    cr_assert_gt(sq_index(close_sqe), sq_index(sq_find(from, IORING_OP_SEND, client_fd)));
    cr_assert_eq(requests_with_status(200), 1);
    cr_assert_eq(requests_with_status(400), 1);
    cr_assert_eq(requests_with_status(499), 0);

    /* the object is recycled only once the kernel has ended its last operation,
     * the multishot recv cancelled with the fd */
    cr_assert_eq(c->state, CS_CLOSING);
    cr_assert_eq(atomic_load(&sh.m->connections[SIDE_CLIENT]), 0);
    struct io_uring_cqe ended = { .user_data = ud_make(c, OP_CLIENT_RECV), .res = -ECANCELED };
    conn_on_cqe(c, OP_CLIENT_RECV, &ended);
    cr_assert_eq(c->state, CS_FREE);
    cr_assert_eq(sh.free_conns, c);
}

Test(lifecycle, slow_head_after_served_request_gets_408)
{
    struct conn *c = client_connects();
    served_models(c);

    client_writes(c, "GET /v1/models HTTP/1.1\r\nHo");
    cr_assert_eq(c->state, CS_HEAD);
    cr_assert_eq(c->tphase, T_HEADER);
    advance_ms(CLIENT_HEADER_MS - 100);
    cr_assert_str_eq(client_reads(), "", "answered before client_header passed");
    advance_ms(100 + TIMER_TICK_MS);
    const char *resp = client_reads();
    cr_assert(strncmp(resp, "HTTP/1.1 408 ", 13) == 0, "the client got: '%s'", resp);
    cr_assert_not_null(strstr(resp, "request head not received in time"), "%s", resp);
    cr_assert_eq(requests_with_status(408), 1);
    cr_assert_eq(requests_with_status(499), 0);
}

/* A whole AI request through a backend, with the caller's key and the usage the
 * backend reports: every per-request field ends up set. */
static void served_chat(struct conn *c)
{
    static const char body[] = "{\"model\":\"m1\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char req[512];
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer hello\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             sizeof body - 1, body);
    unsigned from = sq_mark();
    client_writes(c, req);
    struct backend b = backend_connect_queued(from);
    cr_assert(b.port == BACKEND_A || b.port == BACKEND_B);
    backend_accepts(&b);
    const char *up = backend_reads(&b);
    cr_assert(strncmp(up, "POST /v1/chat/completions HTTP/1.1\r\n", 36) == 0, "%s", up);
    cr_assert_null(strstr(up, "hello"), "the caller's key went upstream: %s", up);
    cr_assert_not_null(strstr(up, body), "%s", up);

    static const char answer[] =
        "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
        "{\"role\":\"assistant\",\"content\":\"hey\"}}],"
        "\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}";
    char resp[512];
    snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
             sizeof answer - 1, answer);
    backend_writes(&b, resp);
    const char *got = client_reads();
    cr_assert(strncmp(got, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", got);
    cr_assert_not_null(strstr(got, answer), "%s", got);
    cr_assert_not_null(strcasestr(got, "x-ratelimit-limit-tokens: 1000000\r\n"), "%s", got);
    cr_assert_eq(c->state, CS_IDLE);
}

Test(lifecycle, next_request_starts_with_nothing_of_the_previous)
{
    struct conn *c = client_connects();
    served_chat(c);
    /* what the served request leaves behind on the connection */
    cr_assert_eq(c->req.key, 0);
    cr_assert_eq(c->req.tokens_in, 7);
    cr_assert_eq(c->req.tokens_out, 3);
    cr_assert_eq(c->req.status, 200);
    cr_assert(c->req.resp_started && c->req.ai);
    cr_assert_eq(c->relay.resp_done, true);
    cr_assert_neq(c->at.first_byte_us, 0);

    /* the next request, on another pool: in flight to its backend */
    unsigned from = sq_mark();
    client_writes(c, "GET /files/a HTTP/1.1\r\nHost: gw\r\n\r\n");
    struct backend b = backend_connect_queued(from);
    cr_assert_eq(b.port, BACKEND_RAW);
    cr_assert_eq(c->state, CS_UPSTREAM);
    cr_assert_not_null(c->req.sg);
    cr_assert_eq(c->req.key, -1);
    cr_assert_eq(c->req.tokens_in, 0);
    cr_assert_eq(c->req.tokens_out, 0);
    cr_assert_eq(c->req.status, 0);
    cr_assert_null(c->req.error);
    cr_assert_eq(c->req.resp_started, false);
    cr_assert_eq(c->req.ai, false);
    cr_assert_eq(c->req.admitted, false);
    cr_assert_eq(c->req.model_len, 0);
    cr_assert_eq(c->req.bytes_out, 0);
    cr_assert_eq(c->req.attempts, 0);
    cr_assert_eq(c->req.retry_deadline_ms, 0);
    cr_assert_str_eq(c->req.target, "/files/a");
    cr_assert_eq(c->at.backend, (int)c->req.sg->g->pool_first_backend[1]);
    cr_assert_eq(c->at.up, b.u);
    cr_assert_eq(c->at.upstream_reused, false);
    cr_assert_eq(c->at.retried, false);
    cr_assert_eq(c->at.first_byte_us, 0);
    cr_assert_null(c->at.rbuf);
    cr_assert_eq(c->relay.resp_done, false);
    cr_assert_eq(c->relay.resp_keep_alive, false);
    cr_assert_eq(c->relay.meter, 0);
    cr_assert_null(c->relay.usage);
    cr_assert_null(c->relay.pipe);
    cr_assert_eq(c->relay.pipe_bytes, 0);

    /* and it is answered and counted as itself */
    backend_accepts(&b);
    cr_assert(strncmp(backend_reads(&b), "GET /files/a HTTP/1.1\r\n", 23) == 0);
    backend_writes(&b, "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno");
    const char *got = client_reads();
    cr_assert(strncmp(got, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "%s", got);
    cr_assert_eq(c->req.tokens_in, 0);
    cr_assert_eq(requests_with_status(200), 1);
    cr_assert_eq(requests_with_status(404), 1);
}

/* The access log tells each request's own story: a malformed request after an
 * AI request with a key is not logged with that key, model, backend or tokens. */
Test(lifecycle, request_after_an_ai_request_is_logged_as_itself)
{
    struct conn *c = client_connects();
    served_chat(c);
    client_writes(c, "GET /gpu/x HTTP/1.1\r\nHost: gw\r\nno colon in this line\r\n\r\n");
    const char *resp = client_reads();
    cr_assert(strncmp(resp, "HTTP/1.1 400 ", 13) == 0, "the client got: '%s'", resp);
    cr_assert_null(strcasestr(resp, "x-ratelimit-"), "the previous caller's limits: %s", resp);

    char *first = access_log();
    char *second = strchr(first, '\n');
    cr_assert_not_null(second, "%s", first);
    *second++ = '\0';
    cr_assert_not_null(strstr(first, "\"status\":200"), "%s", first);
    cr_assert_not_null(strstr(first, "\"key\":\"caller\""), "%s", first);
    cr_assert_not_null(strstr(first, "\"tokens_in\":7,\"tokens_out\":3"), "%s", first);
    cr_assert_not_null(strstr(first, "\"backend\":\"127.0.0.1:2701"), "%s", first);
    cr_assert_not_null(strstr(second, "\"status\":400"), "%s", second);
    cr_assert_null(strstr(second, "/v1/chat/completions"), "%s", second);
    cr_assert_not_null(strstr(second, "\"backend\":\"\""), "%s", second);
    cr_assert_not_null(strstr(second, "\"upstream_first_byte_ms\":null"), "%s", second);
    cr_assert_null(strstr(second, "\"key\""), "%s", second);
    cr_assert_null(strstr(second, "\"model\""), "%s", second);
    cr_assert_null(strstr(second, "\"tokens_in\""), "%s", second);
    cr_assert_eq(strchr(second, '\n'), second + strlen(second) - 1, "more than two lines: %s", second);
}

/* A raw upload goes at the backend's pace: once its body streams, the client is
 * read one buffer at a time, and not at all while half a buffer's worth waits. */
Test(lifecycle, raw_request_body_is_read_at_the_backends_pace)
{
    struct conn *c = client_connects();
    size_t half = sh.xbuf_size / 2;
    static char chunk[RECV_BUF_SIZE];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (char)('a' + i % 26);

    unsigned from = sq_mark();
    client_writes(c, "POST /files/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n");
    struct backend b = backend_connect_queued(from);
    cr_assert_eq(c->state, CS_UPSTREAM);

    /* the first body bytes come on the multishot recv, which is then cancelled */
    from = sq_mark();
    client_writes_n(c, chunk, sizeof chunk);
    const struct io_uring_sqe *cancel = sq_find(from, IORING_OP_ASYNC_CANCEL, -1);
    cr_assert_not_null(cancel, "the multishot recv stays armed under a streaming body");
    cr_assert_eq(cancel->addr, ud_make(c, OP_CLIENT_RECV));
    cr_assert_eq(sq_count(from, IORING_OP_RECV, client_fd), 0);
    /* its end re-arms a one-shot recv */
    from = sq_mark();
    struct io_uring_cqe ended = { .user_data = ud_make(c, OP_CLIENT_RECV), .res = -ECANCELED };
    conn_on_cqe(c, OP_CLIENT_RECV, &ended);
    const struct io_uring_sqe *r = sq_find(from, IORING_OP_RECV, client_fd);
    cr_assert_not_null(r);
    cr_assert_eq(r->ioprio & IORING_RECV_MULTISHOT, 0, "a multishot recv under a streaming body");
    cr_assert(r->flags & IOSQE_BUFFER_SELECT);
    cr_assert(c->recv_armed && !c->recv_multishot);

    /* the backend is still connecting: the queue fills to half a buffer, no more recv */
    from = sq_mark();
    client_writes_n(c, chunk, sizeof chunk);
    cr_assert_geq(c->in->len - c->in->off, half);
    cr_assert_eq(sq_count(from, IORING_OP_RECV, client_fd), 0, "a recv armed with a full queue");
    cr_assert_eq(c->recv_armed, false);

    /* connected: head and the queued body go; partial sends keep the client waiting
     * while half a buffer or more is queued */
    backend_accepts(&b);
    const struct io_uring_sqe *s = backend_send_queued(&b);     /* the head */
    cr_assert(strncmp((const char *)(uintptr_t)s->addr, "POST /files/upload HTTP/1.1\r\n", 29) == 0);
    complete(s, (int)s->len, 0);
    s = backend_send_queued(&b);
    cr_assert_eq(s->len, 2 * sizeof chunk);
    cr_assert_eq(memcmp((const char *)(uintptr_t)s->addr, chunk, sizeof chunk), 0);
    cr_assert_eq(memcmp((const char *)(uintptr_t)s->addr + sizeof chunk, chunk, sizeof chunk), 0);
    from = sq_mark();
    complete(s, 4096, 0);
    cr_assert_geq(c->in->len - c->in->off, half);
    cr_assert_eq(sq_count(from, IORING_OP_RECV, client_fd), 0, "a recv armed with a full queue");
    s = backend_send_queued(&b);
    cr_assert_eq(s->len, 2 * sizeof chunk - 4096);
    /* below half: one buffer's recv again */
    size_t took = s->len - (half - 1);
    complete(s, (int)took, 0);
    cr_assert_lt(c->in->len - c->in->off, half);
    r = sq_find(from, IORING_OP_RECV, client_fd);
    cr_assert_not_null(r, "no recv once the queue has room");
    cr_assert_eq(r->ioprio & IORING_RECV_MULTISHOT, 0);
    cr_assert_eq(sq_count(from, IORING_OP_RECV, client_fd), 1);
}

/* A 503 from the first backend, before anything reached the client: the retry is
 * a new attempt on the other backend, with nothing of the first. */
Test(lifecycle, retry_is_a_fresh_attempt_on_another_backend)
{
    struct conn *c = client_connects();
    unsigned from = sq_mark();
    client_writes(c, "GET /gpu/x HTTP/1.1\r\nHost: gw\r\n\r\n");
    struct backend first = backend_connect_queued(from);
    backend_accepts(&first);
    backend_reads(&first);
    from = sq_mark();
    backend_writes(&first, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");

    cr_assert_str_eq(client_reads(), "", "the client saw the failed attempt");
    /* the first attempt's connection is closed: its state is unknown */
    cr_assert_not_null(sq_find(from, IORING_OP_CLOSE, first.fd));
    struct backend second = backend_connect_queued(from);
    cr_assert_neq(second.port, first.port);
    cr_assert(second.port == BACKEND_A || second.port == BACKEND_B);
    cr_assert_eq(c->at.up, second.u);
    cr_assert_eq(c->at.first_byte_us, 0);
    cr_assert_null(c->at.rbuf);
    cr_assert_eq(c->at.upstream_reused, false);
    cr_assert_eq(c->at.retried, false);
    cr_assert_eq(c->req.status, 0);
    cr_assert_eq(c->req.attempts, 1);

    backend_accepts(&second);
    cr_assert(strncmp(backend_reads(&second), "GET /gpu/x HTTP/1.1\r\n", 21) == 0);
    backend_writes(&second, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    const char *got = client_reads();
    cr_assert(strncmp(got, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", got);
    cr_assert(strstr(got, "\r\n\r\nok") && !strstr(got, "busy"), "%s", got);
    cr_assert_eq(requests_with_status(200), 1);
    cr_assert_eq(requests_with_status(503), 0);
}

/* first_byte ends with the response's first byte: a head that trickles in after
 * it is held to idle, not to first_byte. */
Test(lifecycle, first_byte_of_the_head_switches_to_the_idle_timer)
{
    struct conn *c = client_connects();
    unsigned from = sq_mark();
    client_writes(c, "GET /gpu/x HTTP/1.1\r\nHost: gw\r\n\r\n");
    struct backend b = backend_connect_queued(from);
    backend_accepts(&b);
    backend_reads(&b);
    cr_assert_eq(c->tphase, T_FIRST_BYTE);
    cr_assert_eq(c->timer.deadline_ms, sh.now_ms + FIRST_BYTE_MS);

    backend_writes(&b, "HTTP/1.1 200 OK\r\n");
    cr_assert_eq(c->tphase, T_IDLE);
    cr_assert_eq(c->timer.deadline_ms, sh.now_ms + IDLE_MS);
    advance_ms(FIRST_BYTE_MS + 1000);
    cr_assert_str_eq(client_reads(), "", "a 504 for a head whose first byte came in time");
    backend_writes(&b, "Content-Length: 2\r\n\r\nok");
    const char *got = client_reads();
    cr_assert(strncmp(got, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", got);

    /* a backend silent for idle after its first byte gets 504 */
    from = sq_mark();
    client_writes(c, "GET /gpu/y HTTP/1.1\r\nHost: gw\r\n\r\n");
    if (sq_find(from, IORING_OP_CONNECT, -1)) {
        /* least_outstanding rotated to the other backend */
        b = backend_connect_queued(from);
        backend_accepts(&b);
    } else {
        cr_assert_eq(c->at.up, b.u, "neither the pooled connection nor a new one");
    }
    backend_reads(&b);
    backend_writes(&b, "HTTP/1.1 200 OK\r\n");
    advance_ms(IDLE_MS - 1000);
    cr_assert_str_eq(client_reads(), "");
    advance_ms(1000 + TIMER_TICK_MS);
    got = client_reads();
    cr_assert(strncmp(got, "HTTP/1.1 504 ", 13) == 0, "%s", got);
    cr_assert_not_null(strstr(got, "\"code\":\"upstream_timeout\""), "%s", got);
}
