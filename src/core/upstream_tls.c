/* TLS to backends: see upstream_tls.h. Runs on the connection's shard; the
 * engine never touches the socket.
 *
 * One send in flight per socket, as everywhere: the engine's own bytes (the
 * handshake's flights, what a post-handshake message asks for) and the
 * request's records share one ciphertext buffer, sent in order; a request send
 * that finds the buffer's tail taken by bytes on the wire waits for them.
 * Receives: at most one ciphertext recv (or a NOP delivering plaintext found
 * without one) in flight. A pooled connection keeps its recv armed while idle
 * (the idle watch): session tickets and other handshake messages are consumed
 * there; application data or a close retires the connection. When a request
 * takes the connection, that recv brings its response, as on plaintext. */
#include "core/upstream_tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/shard.h"
#include "core/tls_outbuf.h"
#include "core/upstream.h"
#include "tls/tls.h"

struct up_tls {
    struct tls_conn *t;
    struct xbuf *in;            /* ciphertext received, not yet given to the engine: [off, len) */
    struct tls_outbuf out;      /* ciphertext on its way to the backend */
    bool handshaken;
    bool reading;               /* a recv (or a NOP standing for one) is in flight */
    bool read_nop;              /* ... and it is the NOP: nop_res is its result */
    bool send_nop;              /* a NOP stands for a send that failed before the ring */
    bool want;                  /* plaintext wanted in dst[0..cap) */
    bool eof;                   /* the socket reported eof_res while nobody wanted plaintext */
    bool session_saved;         /* this connection's session was saved for the next one */
    int nop_res, send_nop_res, eof_res;
    char *dst;
    size_t cap;
};

/* ---- buffers ---- */

static bool out_window(struct upconn *u, struct up_tls *x)
{
    return tls_outbuf_window(u->sh, &x->out, x->t);
}

static bool in_window(struct upconn *u, struct up_tls *x)
{
    if (!x->in) {
        x->in = xbuf_get(u->sh);
        if (!x->in)
            return false;
        x->in->off = x->in->len = 0;
    }
    struct tls_io *io = tls_conn_io(x->t);
    io->in = x->in->data + x->in->off;
    io->in_len = x->in->len - x->in->off;
    io->in_off = 0;
    return true;
}

/* After a call into the engine: what it consumed and what it wrote. */
static void windows_taken(struct up_tls *x)
{
    struct tls_io *io = tls_conn_io(x->t);
    if (x->in) {
        x->in->off += (uint32_t)io->in_off;
        if (x->in->off == x->in->len)
            x->in->off = x->in->len = 0;
    }
    tls_outbuf_taken(&x->out, x->t);
    io->in = NULL;
    io->in_len = io->in_off = 0;
}

/* Puts the waiting ciphertext on the ring, unless a send of ours is in flight
 * (its completion does it). An empty buffer goes back to the pool. */
static void flush(struct upconn *u, struct up_tls *x)
{
    const char *p;
    size_t n;
    if (u->fd < 0 || !tls_outbuf_next(u->sh, &x->out, &p, &n))
        return;
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_send(sqe, u->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_SEND));
    u->ops++;
}

/* A ciphertext recv into the free end of `in`. */
static bool arm_read(struct upconn *u, struct up_tls *x, bool poll_first)
{
    if (!x->in) {
        x->in = xbuf_get(u->sh);
        if (!x->in)
            return false;
        x->in->off = x->in->len = 0;
    } else if (x->in->off > 0) {
        memmove(x->in->data, x->in->data + x->in->off, x->in->len - x->in->off);
        x->in->len -= x->in->off;
        x->in->off = 0;
    }
    if (x->in->len == x->in->cap)
        return false;       /* the engine took nothing of a full buffer */
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_recv(sqe, u->fd, x->in->data + x->in->len, x->in->cap - x->in->len, 0);
    if (poll_first)
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_RECV));
    u->ops++;
    x->reading = true;
    return true;
}

/* A result found outside a completion reaches the request from the completion
 * side, as a plaintext recv's would. */
static void read_nop(struct upconn *u, struct up_tls *x, int res)
{
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_RECV));
    u->ops++;
    x->reading = x->read_nop = true;
    x->nop_res = res;
}

static void send_nop(struct upconn *u, struct up_tls *x, int res)
{
    struct io_uring_sqe *sqe = shard_sqe(u->sh);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, ud_make(u, OP_UP_SEND));
    u->ops++;
    x->send_nop = true;
    x->send_nop_res = res;
}

static const char *backend_addr(const struct upconn *u)
{
    return u->sg->g->backend_cfg[u->backend]->addr.text;
}

/* ---- handshake ---- */

/* For the access log and the client's error (they outlive the connection). */
static const char *handshake_error(enum tls_fail_reason r)
{
    static const char *const why[TLS_FAIL_COUNT] = {
        [TLS_FAIL_NONE] = "upstream tls handshake failed",
        [TLS_FAIL_PROTOCOL] = "upstream tls handshake failed: protocol",
        [TLS_FAIL_VERSION] = "upstream tls handshake failed: version",
        [TLS_FAIL_NO_SHARED_CIPHER] = "upstream tls handshake failed: no_shared_cipher",
        [TLS_FAIL_NO_CLIENT_CERT] = "upstream tls handshake failed: no_client_cert",
        [TLS_FAIL_BAD_CERT] = "upstream tls handshake failed: bad_cert",
        [TLS_FAIL_BAD_NAME] = "upstream tls handshake failed: bad_name",
        [TLS_FAIL_ALERT] = "upstream tls handshake failed: alert",
        [TLS_FAIL_OTHER] = "upstream tls handshake failed: other",
    };
    return r < TLS_FAIL_COUNT && why[r] ? why[r] : why[TLS_FAIL_NONE];
}

/* The backend failed the handshake: a connect failure of this attempt. */
static void handshake_failed(struct upconn *u, const char *why, const char *detail)
{
    log_warn("upstream %s: %s%s%s", backend_addr(u), why, detail && detail[0] ? ": " : "",
             detail ? detail : "");
    /* the saved session may be why: a TLS 1.2 backend that refuses it fails a
     * wolfSSL client's handshake instead of falling back to a full one, and
     * would go on failing every new connection. The next one starts afresh. */
    struct upstream_idle *idle = &u->sg->idle[u->backend];
    if (idle->tls_session) {
        tls_session_free(idle->tls_session);
        idle->tls_session = NULL;
    }
    struct conn *c = u->owner;
    if (!c)
        return;
    conn_attempt_failed(c, BF_CONNECT, EPROTO, why);
    conn_maybe_free(c);
}

static void handshake_done(struct upconn *u, struct up_tls *x)
{
    x->handshaken = true;
    struct tls_info info;
    tls_conn_info(x->t, &info);
    int slot = u->sg->g->backend_metric_slot[u->backend];
    if (slot >= 0)
        mc_add(&u->sh->m->upstream_tls_handshakes[slot][info.resumed ? 1 : 0], 1);
    log_debug("upstream %s: %s %s%s", backend_addr(u), info.version ? info.version : "TLS",
              info.cipher ? info.cipher : "", info.resumed ? " (resumed)" : "");
    u->state = UP_BUSY;
    /* the request's first record goes out behind our Finished, in one send */
    conn_upstream_ready(u->owner);
    if (u->state == UP_BUSY)
        flush(u, x);
}

static void drive_handshake(struct upconn *u, struct up_tls *x)
{
    if (!in_window(u, x) || !out_window(u, x)) {
        handshake_failed(u, "upstream tls handshake failed: out of memory", NULL);
        return;
    }
    enum tls_status st = tls_handshake(x->t);
    windows_taken(x);
    if (st == TLS_OK) {
        handshake_done(u, x);
        return;
    }
    if (st == TLS_WANT) {
        flush(u, x);
        if (!x->reading && !arm_read(u, x, true))
            handshake_failed(u, "upstream tls handshake failed: out of memory", NULL);
        return;
    }
    enum tls_fail_reason r = tls_fail_reason(x->t);
    handshake_failed(u, handshake_error(r), tls_fail_detail(x->t));
}

void upstream_tls_server_name(const struct cfg_pool *pool, const struct cfg_backend *b, char *out, size_t cap)
{
    snprintf(out, cap, "%s", pool->tls_server_name[0] ? pool->tls_server_name : b->host);
}

void upstream_tls_start(struct upconn *u, const struct cfg_pool *pool, struct tls_session *session)
{
    /* once per connection, like the wolfSSL object it carries */
    struct up_tls *x = calloc(1, sizeof *x);
    char name[256];
    upstream_tls_server_name(pool, u->sg->g->backend_cfg[u->backend], name, sizeof name);
    if (x)
        x->t = pool->tls_client ? tls_conn_new_client(pool->tls_client, name, session) : NULL;
    if (!x || !x->t) {
        free(x);
        handshake_failed(u, "upstream tls handshake failed: out of memory", NULL);
        return;
    }
    u->tls = x;
    drive_handshake(u, x);
}

/* ---- application data ---- */

/* False: the engine failed. */
static bool encrypt(struct upconn *u, struct up_tls *x, const char *p, size_t n)
{
    return tls_outbuf_encrypt(u->sh, &x->out, x->t, p, n);
}

void upstream_tls_send(struct upconn *u, const char *p, size_t n)
{
    struct up_tls *x = u->tls;
    if (!encrypt(u, x, p, n)) {
        send_nop(u, x, -EPROTO);
        return;
    }
    flush(u, x);
}

/* Plaintext for the request (0: closed, <0: broken) through its OP_UP_RECV. */
static void deliver_recv(struct upconn *u, struct up_tls *x, int res)
{
    x->want = false;
    if (u->state == UP_BUSY && u->owner)
        conn_on_upstream_cqe(u->owner, OP_UP_RECV, res);
}

/* Decrypts into the wanted buffer what the engine can: >0 bytes, 0 closed,
 * <0 broken, or INT_MIN-like "need more" (TLS_WANT). */
#define NEED_MORE 1
static int decrypt(struct upconn *u, struct up_tls *x, int *res)
{
    if (!in_window(u, x) || !out_window(u, x)) {
        *res = -ENOMEM;
        return 0;
    }
    enum tls_status st = TLS_OK;
    size_t k = tls_read(x->t, x->dst, x->cap, &st);
    windows_taken(x);
    flush(u, x);        /* a post-handshake message may have asked for an answer */
    if (k > 0) {
        *res = (int)k;
        return 0;
    }
    if (st == TLS_WANT)
        return NEED_MORE;
    *res = st == TLS_CLOSED ? 0 : -EPROTO;
    return 0;
}

void upstream_tls_recv(struct upconn *u, char *dst, size_t cap)
{
    struct up_tls *x = u->tls;
    x->want = true;
    x->dst = dst;
    x->cap = cap;
    if (x->reading)
        return;         /* the idle watch's recv is in flight: it brings the answer */
    int res;
    if (decrypt(u, x, &res) == NEED_MORE) {
        if (x->eof)
            read_nop(u, x, x->eof_res);
        else if (!arm_read(u, x, true))
            read_nop(u, x, -ENOMEM);
        return;
    }
    read_nop(u, x, res);
}

/* ---- the idle watch ---- */

/* While pooled: handshake messages (tickets) are consumed; true while nothing
 * else came. Plaintext nobody asked for is a stray answer: the connection's
 * state is unknown. */
static bool idle_consume(struct upconn *u, struct up_tls *x, const char **why)
{
    char stray[64];
    x->dst = stray;
    x->cap = sizeof stray;
    int res;
    int r = decrypt(u, x, &res);
    x->dst = NULL;
    x->cap = 0;
    if (r == NEED_MORE)
        return true;
    *why = res > 0 ? "application data arrived on an idle pooled connection"
           : res == 0 ? "the backend closed an idle pooled connection (close_notify)"
                      : "a broken record arrived on an idle pooled connection";
    return false;
}

void upstream_tls_save_session(struct upconn *u, struct tls_session **session)
{
    struct up_tls *x = u->tls;
    if (!x || !x->handshaken || x->session_saved)
        return;
    /* the tickets came before the response: the next new connection to this
     * backend resumes with it (one saved per backend per shard, the newest) */
    struct tls_session *s = tls_conn_save_session(x->t);
    if (!s)
        return;
    x->session_saved = true;
    if (*session)
        tls_session_free(*session);
    *session = s;
}

bool upstream_tls_pool(struct upconn *u)
{
    struct up_tls *x = u->tls;
    const char *why = NULL;
    if (!x || !x->handshaken || x->reading || x->out.sending || x->out.app_pending || x->out.deferred_p ||
        x->send_nop || x->eof)
        return false;
    x->want = false;
    if (!idle_consume(u, x, &why)) {
        log_debug("upstream %s: %s: closed", backend_addr(u), why);
        return false;
    }
    return arm_read(u, x, true);
}

/* ---- completions ---- */

static void on_read(struct upconn *u, struct up_tls *x, int res)
{
    bool nop = x->read_nop;
    x->reading = x->read_nop = false;
    if (u->state == UP_CLOSING || u->state == UP_FREE)
        return;
    if (nop) {
        deliver_recv(u, x, x->nop_res);
        return;
    }
    if (res > 0) {
        x->in->len += (uint32_t)res;
    } else if (u->state == UP_CONNECTING) {
        handshake_failed(u, res == 0 ? "upstream closed during the tls handshake"
                                     : "upstream reset during the tls handshake", NULL);
        return;
    } else if (u->state == UP_IDLE) {
        log_debug("upstream %s: %s", backend_addr(u),
                  res == 0 ? "the backend closed an idle pooled connection" : "idle pooled connection reset");
        upconn_close(u);
        return;
    } else if (x->want) {
        deliver_recv(u, x, res);
        return;
    } else {
        x->eof = true;      /* told when plaintext is wanted next */
        x->eof_res = res;
        return;
    }
    if (u->state == UP_CONNECTING) {
        drive_handshake(u, x);
        return;
    }
    if (u->state == UP_IDLE) {
        const char *why = NULL;
        if (!idle_consume(u, x, &why)) {
            log_debug("upstream %s: %s: closed", backend_addr(u), why);
            upconn_close(u);
        } else if (!arm_read(u, x, true)) {
            upconn_close(u);
        }
        return;
    }
    if (!x->want)
        return;     /* the request is still being sent: its answer waits in `in` */
    int out;
    if (decrypt(u, x, &out) == NEED_MORE) {
        if (!arm_read(u, x, false))
            deliver_recv(u, x, -ENOMEM);
        return;
    }
    deliver_recv(u, x, out);
}

static void on_sent(struct upconn *u, struct up_tls *x, int res)
{
    if (x->send_nop) {
        x->send_nop = false;
        if (u->state == UP_BUSY && u->owner)
            conn_on_upstream_cqe(u->owner, OP_UP_SEND, x->send_nop_res);
        return;
    }
    x->out.sending = false;
    if (u->state == UP_CLOSING || u->state == UP_FREE)
        return;
    if (res <= 0) {
        if (u->state == UP_CONNECTING) {
            handshake_failed(u, "upstream send failed during the tls handshake", NULL);
        } else if (x->out.app_pending) {
            x->out.app_pending = false;
            if (u->state == UP_BUSY && u->owner)
                conn_on_upstream_cqe(u->owner, OP_UP_SEND, res);
        } else {
            x->eof = true;  /* broken: the next receive says so */
            x->eof_res = res < 0 ? res : -EPIPE;
        }
        return;
    }
    int report = tls_outbuf_sent(u->sh, &x->out, x->t, (size_t)res);
    if (report < 0)
        report = -EPROTO;
    flush(u, x);
    if (report && u->state == UP_BUSY && u->owner)
        conn_on_upstream_cqe(u->owner, OP_UP_SEND, report);
}

void upstream_tls_on_cqe(struct upconn *u, enum op op, int res)
{
    struct up_tls *x = u->tls;
    if (op == OP_UP_SEND)
        on_sent(u, x, res);
    else
        on_read(u, x, res);
}

void upstream_tls_free(struct upconn *u)
{
    struct up_tls *x = u->tls;
    if (!x)
        return;
    u->tls = NULL;
    if (x->t)
        tls_conn_free(x->t);
    xbuf_put(u->sh, x->in);
    tls_outbuf_free(u->sh, &x->out);
    free(x);
}
