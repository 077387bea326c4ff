/* The TLS client transport: see transport_tls.h. Everything here runs on the
 * connection's shard; the engine (src/tls) never touches a socket. */
#include "core/transport_tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ring.h"
#include "core/shard.h"
#include "proto/openai_error.h"
#include "tls/tls.h"

/* The metrics' reason columns follow the engine's enum (metrics.h). */
_Static_assert(TLS_FAIL_OTHER - 1 == 7 && METRICS_TLS_TIMEOUT == 8,
               "aigw_tls_handshake_failures_total's reasons follow enum tls_fail_reason");

/* Plaintext of one record at most: what tls_read fills per call. */
#define TLS_PLAIN_SCRATCH 16384

static struct tls_link *link_get(struct shard *sh)
{
    struct tls_link *l = sh->free_tls_links;
    if (l)
        sh->free_tls_links = l->next_free;
    else if (!(l = malloc(sizeof *l)))
        return NULL;
    memset(l, 0, sizeof *l);
    return l;
}

static void link_put(struct shard *sh, struct tls_link *l)
{
    l->next_free = sh->free_tls_links;
    sh->free_tls_links = l;
}

static char *plain_scratch(struct shard *sh)
{
    if (!sh->tls_plain)
        sh->tls_plain = malloc(TLS_PLAIN_SCRATCH);     /* once per shard */
    return sh->tls_plain;
}

/* ---- the ciphertext buffer ---- */

static bool out_window(struct conn *c, struct tls_link *l)
{
    return tls_outbuf_window(c->sh, &l->out, l->t);
}

static void out_taken(struct tls_link *l)
{
    tls_outbuf_taken(&l->out, l->t);
}

/* Puts what waits on the ring, unless a send of ours is in flight (its
 * completion does it). */
static void flush(struct conn *c, struct tls_link *l)
{
    const char *p;
    size_t n;
    if (c->state == CS_CLOSING || !tls_outbuf_next(c->sh, &l->out, &p, &n))
        return;
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_CLIENT_SEND));
    c->ops++;
}

/* ---- handshake ---- */

static void count_failure(struct conn *c, unsigned column, const char *why, const char *detail)
{
    c->tls->failure_counted = true;
    mc_add(&c->sh->m->tls_failures[column], 1);
    mc_add(&c->sh->m->tls_handshakes[TLS_HS_FAILED][TLS_HS_VNONE][0], 1);
    log_debug("tls: handshake with %s failed: %s%s%s", c->client, why, detail ? ": " : "",
              detail ? detail : "");
}

static void handshake_done(struct conn *c, struct tls_link *l)
{
    l->handshaken = true;
    struct tls_info info;
    tls_conn_info(l->t, &info);
    unsigned v = info.version && strcmp(info.version, "TLSv1.3") == 0 ? TLS_HS_V13 : TLS_HS_V12;
    mc_add(&c->sh->m->tls_handshakes[TLS_HS_OK][v][info.resumed ? 1 : 0], 1);
    tls_peer_subject(l->t, l->subject, sizeof l->subject);
    /* the handshake's deadline gives way to the first request's */
    conn_set_timer(c, T_HEADER, conn_config(c)->timeouts.client_header_ms);
}

/* A plain HTTP request on the TLS port: told so in plain HTTP, as nginx does. */
static void answer_plain_http(struct conn *c, struct tls_link *l)
{
    count_failure(c, METRICS_TLS_PLAIN_HTTP, "a plain HTTP request", NULL);
    mc_add(&c->sh->m->client_refused[REFUSED_TLS_PLAIN_HTTP], 1);
    struct xbuf *b = tls_outbuf_buffer(c->sh, &l->out);
    size_t n = b ? openai_write_error(b->data + b->len, b->cap - b->len, 400, "invalid_request_error",
                                      "plain_http_to_https_port",
                                      "The plain HTTP request was sent to the HTTPS port; use https://",
                                      false, (struct slice){ NULL, 0 })
                 : 0;
    if (n == 0) {
        conn_close(c);
        return;
    }
    b->len += (uint32_t)n;
    l->close_when_flushed = true;
    flush(c, l);
}

static bool looks_like_http(const char *p, size_t n)
{
    /* a TLS record starts with its content type (0x16 for a handshake); a
     * request line starts with an upper-case method */
    return n > 0 && p[0] >= 'A' && p[0] <= 'Z';
}

/* ---- transport ops ---- */

static void tls_received(struct conn *c, const char *p, size_t n, transport_deliver_fn *deliver)
{
    struct tls_link *l = c->tls;
    if (l->close_when_flushed)
        return;                         /* answered already; closing */
    if (!l->seen_bytes) {
        l->seen_bytes = true;
        if (looks_like_http(p, n)) {
            answer_plain_http(c, l);
            return;
        }
    }
    if (!l->t) {
        /* made with the first bytes, not at accept: a connection that never
         * speaks costs no engine state */
        struct tls_server *srv = conn_config(c)->tls.server;
        l->t = srv ? tls_conn_new_server(srv) : NULL;
        if (!l->t) {
            c->req.error = srv ? "out of memory" : "tls no longer configured";
            conn_close(c);
            return;
        }
    }
    struct tls_io *io = tls_conn_io(l->t);
    io->in = p;
    io->in_len = n;
    io->in_off = 0;
    if (!out_window(c, l)) {
        conn_close(c);
        return;
    }
    if (!l->handshaken) {
        enum tls_status st = tls_handshake(l->t);
        out_taken(l);
        if (st == TLS_FAILED || st == TLS_CLOSED) {
            enum tls_fail_reason r = tls_fail_reason(l->t);
            if (r <= TLS_FAIL_NONE || r >= TLS_FAIL_COUNT)
                r = TLS_FAIL_OTHER;
            count_failure(c, (unsigned)r - 1, tls_fail_reason_name(r), tls_fail_detail(l->t));
            c->req.error = "tls handshake failed";
            l->close_when_flushed = true;
            if (!tls_outbuf_flushed(&l->out))
                flush(c, l);            /* the alert goes out, then the close */
            else
                conn_close(c);
            return;
        }
        if (st == TLS_WANT) {
            flush(c, l);
            return;
        }
        handshake_done(c, l);
    }
    /* application data (maybe in the same flight as the handshake's end) */
    char *scratch = plain_scratch(c->sh);
    for (;;) {
        enum tls_status st = TLS_OK;
        size_t k = scratch ? tls_read(l->t, scratch, TLS_PLAIN_SCRATCH, &st) : 0;
        out_taken(l);
        if (k > 0) {
            deliver(c, scratch, k);
            if (c->state == CS_CLOSING)
                return;
            /* the HTTP layer may have sent meanwhile: the window moved */
            if (!out_window(c, l)) {
                conn_close(c);
                return;
            }
            continue;
        }
        if (st == TLS_WANT)
            break;
        /* close_notify or a broken record: the client is gone as if it closed */
        if (st == TLS_CLOSED) {
            conn_client_gone(c, "client closed");
        } else {
            c->req.error = "tls record error";
            conn_close(c);
        }
        return;
    }
    flush(c, l);
}

static void tls_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    struct tls_link *l = c->tls;
    c->send_inflight = true;
    if (!tls_outbuf_encrypt(c->sh, &l->out, l->t, p, n)) {
        c->req.error = "tls encrypt failed";
        conn_close(c);
        return;
    }
    /* a deferred send reads owner later: the HTTP layer lets go of it only
     * after this send's completion */
    c->send_buf = owner;
    flush(c, l);
}

/* A send of ours completed. */
static int tls_sent(struct conn *c, int res)
{
    struct tls_link *l = c->tls;
    struct tls_outbuf *o = &l->out;
    if (c->state == CS_CLOSING || res < 0) {
        /* nothing more goes out; the HTTP layer's send, if one waits, ends here */
        bool app = o->app_pending || o->deferred_p;
        o->sending = o->app_pending = false;
        o->deferred_p = NULL;
        if (c->state != CS_CLOSING)
            conn_close(c);
        return app ? (res < 0 ? res : -ECONNRESET) : TRANSPORT_SENT_OWN;
    }
    int report = tls_outbuf_sent(c->sh, o, l->t, (size_t)res);
    if (report < 0) {
        c->req.error = "tls encrypt failed";
        conn_close(c);
        return -EPROTO;
    }
    if (l->close_when_flushed && tls_outbuf_flushed(o)) {
        conn_close(c);
        return report > 0 ? report : TRANSPORT_SENT_OWN;
    }
    flush(c, l);
    return report > 0 ? report : TRANSPORT_SENT_OWN;
}

static void tls_release(struct conn *c)
{
    struct tls_link *l = c->tls;
    if (!l)
        return;
    /* a client that sent part of a handshake and went away (or was closed for
     * another reason, e.g. draining) failed it too; one that never spoke did
     * not start one */
    if (l->seen_bytes && !l->handshaken && !l->failure_counted)
        count_failure(c, METRICS_TLS_CLIENT_CLOSED, "closed during the handshake", NULL);
    c->tls = NULL;
    if (l->t)
        tls_conn_free(l->t);
    tls_outbuf_free(c->sh, &l->out);
    mg_add(&c->sh->m->connections[SIDE_CLIENT_TLS], -1);
    link_put(c->sh, l);
}

/* As nginx does: a client that sees the TCP close without close_notify may
 * take it for a truncation attack (OpenSSL 3 then drops the session, so it
 * never resumes). */
static bool tls_close_notify(struct conn *c)
{
    struct tls_link *l = c->tls;
    if (!l->t || !l->handshaken || l->close_when_flushed)
        return false;
    if (!out_window(c, l))
        return false;
    tls_shutdown(l->t);
    out_taken(l);
    if (tls_outbuf_flushed(&l->out))
        return false;
    l->close_when_flushed = true;
    flush(c, l);
    return true;
}

const struct transport_ops transport_tls = {
    .name = "tls",
    .zero_copy = false,
    .received = tls_received,
    .send = tls_send,
    .sent = tls_sent,
    .release = tls_release,
    .close_notify = tls_close_notify,
};

bool transport_tls_begin(struct conn *c)
{
    const struct config *cfg = c->sh->sg->g->cfg;
    struct tls_link *l = link_get(c->sh);
    if (!l)
        return false;
    c->tls = l;
    c->tr = &transport_tls;
    mg_add(&c->sh->m->connections[SIDE_CLIENT_TLS], 1);
    conn_set_timer(c, T_HANDSHAKE, cfg->tls.opts.handshake_timeout_ms);
    return true;
}

void transport_tls_expired(struct conn *c)
{
    struct tls_link *l = c->tls;
    if (l && !l->handshaken && !l->close_when_flushed)
        count_failure(c, METRICS_TLS_TIMEOUT, "handshake_timeout passed", NULL);
    c->req.error = "tls handshake timeout";
    conn_close(c);
}

void transport_tls_facts(const struct conn *c, struct tls_log_facts *f)
{
    memset(f, 0, sizeof *f);
    struct tls_link *l = c->tls;
    if (!l || !l->handshaken)
        return;
    struct tls_info info;
    tls_conn_info(l->t, &info);
    f->version = info.version;
    f->cipher = info.cipher;
    f->sni = info.sni;
    f->subject = l->subject[0] ? l->subject : NULL;
}
