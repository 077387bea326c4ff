/* Response relay: the rewritten response head goes to the client together with the
 * body bytes that came with it; the rest of the body follows as it arrives.
 *   - Content-Length and close-delimited bodies on a plaintext client: spliced
 *     upstream socket -> pipe -> client socket (no copy through user space), with a
 *     pipe from the shard's pool held only while the body is in flight.
 *   - Chunked bodies: the framing is copied through a buffer and scanned, because
 *     it says where the response ends; the data of a large chunk, whose length the
 *     size line gave, is spliced unseen. Small chunks (an SSE event each) are
 *     cheaper copied than spliced: a splice is an io-wq round trip.
 *   - Any TLS client or TLS upstream: copied (decrypted into a pool buffer for
 *     a TLS upstream: no provided buffer, no splice).
 * Copying receives into a provided buffer from the shard's ring, which the kernel
 * picks only when bytes arrive, and sends from it: a stream waiting for its next
 * token holds no buffer at all. Once a receive fills its buffer (a body pouring
 * in), the next ones use a pool buffer twice that size, until one comes short.
 * Splice on sockets is not pollable in io_uring: a splice that finds nothing to
 * move returns -EAGAIN, and we arm a poll and retry instead of spinning.
 *
 * The relay acts on its own resources (buffers, pipes, the sends and receives of
 * the body) and tells the connection what became of the response through the
 * struct relay_outcome its entry points return; it never ends a request or
 * closes a connection itself. */
#include "core/buf.h"
#include "core/conn.h"
#include "core/relay.h"
#include "core/ring.h"
#include "core/shard.h"
#include "core/upstream.h"
#include "core/upstream_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <strings.h>

#include "core/admission.h"
#include "core/log.h"
#include "core/transport.h"
#include "core/usage.h"

static struct relay_outcome relay_next(struct conn *c);

static const struct relay_outcome relay_more = { RELAY_MORE, NULL };

static struct relay_outcome relay_abort(const char *why)
{
    return (struct relay_outcome){ RELAY_ABORT, why };
}

static struct relay_outcome relay_refuse(const char *why)
{
    return (struct relay_outcome){ RELAY_REFUSED, why };
}

/* Provided buffers the relays of a shard may hold at once: the ring is shared with
 * client receives, which must not run dry because many clients read slowly. */
#define RELAY_RING_BUFS_MAX (RECV_BUF_COUNT / 4)

void relay_ring_buf_put(struct shard *sh, unsigned bid)
{
    sh->relay_ring_bufs--;
    shard_release_recv_buf(sh, bid);
}

/* Lets go of the provided buffer; a send in flight that reads it gets it, and the
 * connection returns it to the ring when that send completes. */
static void ring_buf_drop(struct conn *c)
{
    if (!c->relay.ring_held)
        return;
    c->relay.ring_held = false;
    if (c->relay.ring_sending) {
        c->relay.ring_sending = false;
        c->ring_buf_orphan = true;
        c->ring_orphan_bid = c->relay.ring_bid;
        return;
    }
    relay_ring_buf_put(c->sh, c->relay.ring_bid);
}

void relay_upstream_buffer(struct conn *c, unsigned bid)
{
    c->sh->relay_ring_bufs++;
    c->relay.ring_held = true;
    c->relay.ring_bid = (uint16_t)bid;
    c->relay.ring_off = c->relay.ring_len = 0;
}

void relay_end(struct conn *c)
{
    ring_buf_drop(c);
}

struct body_view {
    struct conn *c;
    char *dst;      /* de-chunking: where the data goes (in place) */
    size_t len;
};

/* Chunk data: metered for usage, and for an HTTP/1.0 client moved down over the
 * framing, in place (dst never passes src). */
static void on_chunk_data(void *ctx, const char *p, size_t n)
{
    struct body_view *d = ctx;
    usage_meter_feed(d->c, p, n);
    if (d->c->relay.dechunk) {
        memmove(d->dst + d->len, p, n);
        d->len += n;
    }
}

/* Takes n received body bytes at p: returns how many bytes at p are to be sent on
 * (what belongs to the response; for an HTTP/1.0 client a chunked body is
 * de-chunked in place), or -1. Bytes after the response's end disqualify the
 * upstream connection from reuse. Body bytes are metered for usage on the way. */
static ssize_t classify_response_body(struct conn *c, char *p, size_t n)
{
    size_t k = 0;
    switch (c->relay.resp_body) {
    case BODY_NONE:
        c->relay.resp_done = true;
        break;
    case BODY_LENGTH:
        k = n < c->relay.resp_body_left ? n : (size_t)c->relay.resp_body_left;
        c->relay.resp_body_left -= k;
        if (c->relay.resp_body_left == 0)
            c->relay.resp_done = true;
        usage_meter_feed(c, p, k);
        break;
    case BODY_CHUNKED: {
        const char *why = NULL;
        struct body_view d = { c, p, 0 };
        bool see_data = c->relay.dechunk || c->relay.meter;
        ssize_t r = chunked_scan(&c->relay.resp_chunked, p, n, see_data ? on_chunk_data : NULL, &d, &why);
        if (r < 0) {
            c->req.error = why;
            return -1;
        }
        if (c->relay.resp_chunked.done)
            c->relay.resp_done = true;
        if (c->relay.dechunk) {
            if ((size_t)r < n)
                c->relay.resp_keep_alive = false;
            if (d.len)
                mc_add(&c->sh->m->relay_bytes[RELAY_COPY], d.len);
            return (ssize_t)d.len;
        }
        k = (size_t)r;
        break;
    }
    case BODY_UNTIL_CLOSE:
        k = n;
        usage_meter_feed(c, p, k);
        break;
    }
    if (k < n)
        c->relay.resp_keep_alive = false;
    if (k)
        mc_add(&c->sh->m->relay_bytes[RELAY_COPY], k);
    return (ssize_t)k;
}

/* aigw's x-ratelimit-* describe the caller's limits here; a backend's own (an
 * upstream gateway's) would contradict them. */
static void drop_backend_ratelimit_headers(struct http_response *resp)
{
    static const char prefix[] = "x-ratelimit-";
    for (unsigned i = 0; i < resp->nheaders; i++) {
        struct slice n = resp->headers[i].name;
        if (n.len > sizeof prefix - 1 && strncasecmp(n.p, prefix, sizeof prefix - 1) == 0)
            resp->headers[i].hop = true;
    }
}

/* The response's relay begins: every per-relay field starts here. */
static void relay_begin(struct conn *c, const struct http_response *resp)
{
    c->relay = (struct relay){
        .resp_body = resp->body,
        .resp_keep_alive = resp->keep_alive,
        .resp_body_left = resp->content_length,
    };
    chunked_init(&c->relay.resp_chunked);
}

struct relay_outcome relay_response_head(struct conn *c, const struct http_response *resp)
{
    struct shard *sh = c->sh;
    c->req.status = (uint16_t)resp->status;
    relay_begin(c, resp);
    usage_meter_start(c, resp->status);
    /* a close-delimited body can only be passed on close-delimited */
    bool keep = c->req.keep_alive && !sh->draining && resp->body != BODY_UNTIL_CLOSE;
    /* HTTP/1.0 clients know no chunked coding: de-chunk and close-delimit */
    c->relay.dechunk = c->req.http10 && resp->body == BODY_CHUNKED;
    if (c->relay.dechunk)
        keep = false;
    c->req.keep_alive = keep;

    size_t body_at = c->at.rbuf->off + resp->head_len;
    char *p = c->at.rbuf->data + body_at;
    size_t avail = c->at.rbuf->len - body_at;
    ssize_t k = classify_response_body(c, p, avail);
    if (k < 0)
        return relay_refuse("malformed chunked response from upstream");
    struct xbuf *out = xbuf_get(sh);
    if (!out)
        return relay_refuse("out of memory");
    char extra[64 + RL_HEADERS_MAX];
    size_t elen = 0;
    memcpy(extra, "x-request-id: ", 14);
    elen = 14;
    memcpy(extra + elen, c->req.request_id, c->req.request_id_len);
    elen += c->req.request_id_len;
    extra[elen++] = '\r';
    extra[elen++] = '\n';
    if (c->req.ai) {
        size_t rl = admission_headers(c, extra + elen, RL_HEADERS_MAX);
        elen += rl;
        if (rl)
            drop_backend_ratelimit_headers(&sh->scratch_resp);
    }
    struct http_response *framing = &sh->scratch_resp;   /* == resp */
    uint8_t body_kind = framing->body;
    if (c->relay.dechunk)
        framing->body = BODY_UNTIL_CLOSE;
    size_t hlen = http_write_client_head(out->data, sh->xbuf_size, framing, keep, (struct slice){ extra, elen });
    framing->body = body_kind;
    if (hlen == 0) {
        xbuf_put(sh, out);
        return relay_refuse("upstream response head too large");
    }
    size_t room = sh->xbuf_size - hlen;
    size_t copy = (size_t)k < room ? (size_t)k : room;
    memcpy(out->data + hlen, p, copy);
    out->len = (uint32_t)(hlen + copy);
    out->off = 0;
    /* what did not fit waits in rbuf and is sent next */
    c->at.rbuf->off = (uint32_t)(body_at + copy);
    c->at.rbuf->len = (uint32_t)(body_at + (size_t)k);
    c->req.out = out;
    c->state = CS_RELAY;
    c->req.resp_started = true;
    c->last_activity_ms = sh->now_ms;
    return relay_more;     /* the connection sends out, then the body follows */
}

/* ---- copy ---- */

/* Into a pool buffer: a body pouring in, or no provided buffer to be had. */
static void copy_recv(struct conn *c)
{
    c->at.rbuf->off = c->at.rbuf->len = 0;
    if (c->at.up->tls) {
        upstream_tls_recv(c->at.up, c->at.rbuf->data, c->sh->xbuf_size);
        return;
    }
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_recv(sqe, c->at.up->fd, c->at.rbuf->data, c->sh->xbuf_size, 0);
    io_uring_sqe_set_data64(sqe, ud_make(c->at.up, OP_UP_RECV));
    c->at.up->ops++;
    c->at.up->io_buf = c->at.rbuf;
}

/* Into a provided buffer, picked by the kernel when bytes arrive (upstream.c hands
 * it over with relay_upstream_buffer before the completion comes here). */
static void ring_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_recv(sqe, c->at.up->fd, NULL, RECV_BUF_SIZE, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RECV_BUF_GROUP;
    io_uring_sqe_set_data64(sqe, ud_make(c->at.up, OP_UP_RECV));
    c->at.up->ops++;
    c->relay.ring_recv = true;
}

static struct relay_outcome copy_recv_pool(struct conn *c)
{
    if (!c->at.rbuf) {
        c->at.rbuf = xbuf_get(c->sh);
        if (!c->at.rbuf)
            return relay_abort("out of memory");
    }
    copy_recv(c);
    return relay_more;
}

struct relay_outcome relay_on_upstream_recv(struct conn *c, int res)
{
    bool ring = c->relay.ring_recv;
    c->relay.ring_recv = false;
    if (ring && res == -ENOBUFS)
        return copy_recv_pool(c);     /* the ring ran dry: nothing lost */
    if (res < 0)
        return relay_abort("upstream reset mid-response");
    c->last_activity_ms = c->sh->now_ms;
    if (res == 0) {
        if (c->relay.resp_body != BODY_UNTIL_CLOSE)
            return relay_abort("upstream closed mid-response");
        c->relay.resp_done = true;
        c->relay.resp_keep_alive = false;
        return relay_next(c);
    }
    char *p = ring ? shard_recv_buf(c->sh, c->relay.ring_bid) : c->at.rbuf->data;
    ssize_t k = classify_response_body(c, p, (size_t)res);
    if (k < 0)
        return relay_abort("malformed chunked response from upstream");
    /* a full buffer: more is probably waiting, take the larger pool buffer */
    c->relay.bulk = (uint32_t)res == (ring ? RECV_BUF_SIZE : c->sh->xbuf_size);
    if (ring) {
        c->relay.ring_off = 0;
        c->relay.ring_len = (uint16_t)k;
    } else {
        c->at.rbuf->off = 0;
        c->at.rbuf->len = (uint32_t)k;
    }
    return relay_next(c);
}

/* ---- splice ---- */

/* Below this much chunk data still to come, a chunked body is copied. */
#define SPLICE_MIN_CHUNK_DATA (16 * 1024)

static void splice_in(struct conn *c)
{
    size_t len = PIPE_CHUNK;
    if (c->relay.resp_body == BODY_LENGTH && c->relay.resp_body_left < len)
        len = (size_t)c->relay.resp_body_left;
    if (c->relay.resp_body == BODY_CHUNKED && chunked_data_left(&c->relay.resp_chunked) < len)
        len = (size_t)chunked_data_left(&c->relay.resp_chunked);
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_splice(sqe, c->at.up->fd, -1, c->relay.pipe->wr, -1, (unsigned)len,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_SPLICE_IN));
    c->ops++;
    c->relay.splice_ops++;
    c->at.up->splice_pending = true;
}

static void splice_out(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_splice(sqe, c->relay.pipe->rd, -1, c->fd, -1, c->relay.pipe_bytes,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_SPLICE_OUT));
    c->ops++;
    c->relay.splice_ops++;
}

/* Usage metering on the splice path: the bytes just spliced in are duplicated
 * into the inspection pipe (tee: page references, no copy) before the splice out
 * moves them on; the link keeps that order within one submission. */
static void tee_then_splice_out(struct conn *c)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_tee(sqe, c->relay.pipe->rd, c->relay.ipipe->wr, c->relay.pipe_bytes, SPLICE_F_NONBLOCK);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_TEE));
    sqe->flags |= IOSQE_IO_LINK;
    c->ops++;
    c->relay.splice_ops++;
    splice_out(c);
}

/* Reads what the tee put in the inspection pipe (pipes read without blocking,
 * so this completes inline) and meters it. */
static void inspect_read(struct conn *c)
{
    uint32_t len = c->relay.ipipe_bytes < c->relay.ibuf->cap ? c->relay.ipipe_bytes : c->relay.ibuf->cap;
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_read(sqe, c->relay.ipipe->rd, c->relay.ibuf->data, len, 0);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_INSPECT_READ));
    c->ops++;
    c->relay.splice_ops++;
}

/* The inspection lost bytes: usage can no longer be read from this response
 * (admission settles it conservatively); the relay goes on unmetered. */
static void inspect_give_up(struct conn *c)
{
    c->relay.tee_failed = true;
    if (c->relay.ipipe_bytes) {
        pipe_put(c->sh, c->relay.ipipe, false);
        c->relay.ipipe = NULL;
        c->relay.ipipe_bytes = 0;
    }
}

static void poll_fd(struct conn *c, int fd, unsigned events, enum op op)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_poll_add(sqe, fd, events);
    io_uring_sqe_set_data64(sqe, ud_make(c, op));
    c->ops++;
    c->relay.splice_ops++;
}

static bool metering_spliced(const struct conn *c)
{
    return c->relay.meter && c->relay.ipipe && !c->relay.tee_failed;
}

struct relay_outcome relay_on_cqe(struct conn *c, enum op op, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    c->relay.splice_ops--;
    if (c->at.up && op == OP_SPLICE_IN)
        c->at.up->splice_pending = false;
    if (c->state != CS_RELAY || !c->at.up) {
        /* the request ended under us (client gone): a pipe with bytes in flight is discarded */
        return relay_more;
    }
    c->last_activity_ms = c->sh->now_ms;
    switch (op) {
    case OP_SPLICE_IN:
        if (res > 0) {
            c->relay.pipe_bytes += (uint32_t)res;
            if (c->relay.resp_body == BODY_LENGTH) {
                c->relay.resp_body_left -= (uint64_t)res;
                if (c->relay.resp_body_left == 0)
                    c->relay.resp_done = true;
            } else if (c->relay.resp_body == BODY_CHUNKED) {
                chunked_skip_data(&c->relay.resp_chunked, (uint64_t)res);
            }
            if (metering_spliced(c))
                tee_then_splice_out(c);
            else
                splice_out(c);
        } else if (res == 0) {
            if (c->relay.resp_body != BODY_UNTIL_CLOSE)
                return relay_abort("upstream closed mid-response");
            c->relay.resp_done = true;
            c->relay.resp_keep_alive = false;
            return relay_next(c);
        } else if (res == -EAGAIN) {
            poll_fd(c, c->at.up->fd, POLLIN | POLLRDHUP, OP_POLL_IN);
        } else {
            return relay_abort("upstream reset mid-response");
        }
        return relay_more;
    case OP_POLL_IN:
        if (res < 0)
            return relay_abort("upstream poll failed");
        splice_in(c);
        return relay_more;
    case OP_TEE:
        /* an empty inspection pipe as large as the relay pipe takes it all; a
         * short tee also cancelled the linked splice out (retried below) */
        if (res > 0)
            c->relay.ipipe_bytes += (uint32_t)res;
        if (res < 0 || (uint32_t)res < c->relay.pipe_bytes)
            inspect_give_up(c);
        return relay_more;
    case OP_INSPECT_READ:
        if (res <= 0) {
            inspect_give_up(c);
        } else {
            usage_meter_feed(c, c->relay.ibuf->data, (size_t)res);
            c->relay.ipipe_bytes -= (uint32_t)res;
        }
        if (!c->relay.splice_ops)
            return relay_next(c);
        return relay_more;
    case OP_SPLICE_OUT:
        if (res > 0) {
            c->relay.pipe_bytes -= (uint32_t)res;
            c->req.bytes_out += (uint64_t)res;
            mc_add(&c->sh->m->relay_bytes[RELAY_SPLICE], (uint64_t)res);
            if (c->relay.pipe_bytes == 0)
                return relay_next(c);
            splice_out(c);
        } else if (res == -EAGAIN || res == -ECANCELED) {
            poll_fd(c, c->fd, POLLOUT, OP_POLL_OUT);
        } else {
            return relay_abort("client went away mid-response");
        }
        return relay_more;
    case OP_POLL_OUT:
        if (res < 0)
            return relay_abort("client poll failed");
        splice_out(c);
        return relay_more;
    default:
        return relay_more;
    }
}

/* ---- sequencing ---- */

static struct relay_outcome relay_next(struct conn *c)
{
    struct shard *sh = c->sh;
    if (c->at.rbuf && c->at.rbuf->off < c->at.rbuf->len) {
        c->tr->send(c, c->at.rbuf, c->at.rbuf->data + c->at.rbuf->off, c->at.rbuf->len - c->at.rbuf->off);
        return relay_more;
    }
    if (c->relay.ring_held) {
        if (c->relay.ring_off < c->relay.ring_len) {
            c->relay.ring_sending = true;
            c->tr->send(c, NULL, shard_recv_buf(sh, c->relay.ring_bid) + c->relay.ring_off,
                        (size_t)(c->relay.ring_len - c->relay.ring_off));
            return relay_more;
        }
        ring_buf_drop(c);     /* all sent: back to the ring before waiting for more */
    }
    if (c->relay.ipipe_bytes) {
        inspect_read(c);
        return relay_more;
    }
    if (c->relay.resp_done)
        return (struct relay_outcome){ RELAY_DONE, NULL };
    bool spliceable = c->tr->zero_copy && !c->relay.copy_only && !c->at.up->tls &&
                      (c->relay.resp_body == BODY_LENGTH || c->relay.resp_body == BODY_UNTIL_CLOSE ||
                       (c->relay.resp_body == BODY_CHUNKED &&
                        chunked_data_left(&c->relay.resp_chunked) >= SPLICE_MIN_CHUNK_DATA));
    if (spliceable && !c->relay.pipe) {
        c->relay.pipe = pipe_get(sh);
        if (!c->relay.pipe)
            c->relay.copy_only = true;    /* out of pipes: copying still works */
    }
    /* metered bodies splice only with a place to inspect them */
    if (spliceable && c->relay.pipe && c->relay.meter && !c->relay.tee_failed && !c->relay.ipipe) {
        c->relay.ipipe = pipe_get(sh);
        c->relay.ibuf = c->relay.ipipe ? xbuf_get(sh) : NULL;
        if (!c->relay.ibuf) {
            pipe_put(sh, c->relay.ipipe, true);
            c->relay.ipipe = NULL;
            spliceable = false;     /* copying meters as it goes */
        }
    }
    if (spliceable && c->relay.pipe) {
        conn_drop_buf(c, c->at.rbuf);  /* long bodies hold a pipe, not a buffer */
        c->at.rbuf = NULL;
        splice_in(c);
        return relay_more;
    }
    /* a TLS upstream decrypts into a buffer named before the bytes come */
    if (c->relay.bulk || sh->relay_ring_bufs >= RELAY_RING_BUFS_MAX || c->at.up->tls)
        return copy_recv_pool(c);
    /* waiting for the next bytes (an SSE stream's next token) holds no buffer */
    conn_drop_buf(c, c->at.rbuf);
    c->at.rbuf = NULL;
    ring_recv(c);
    return relay_more;
}

/* The client took n bytes of what we sent from out (the head), rbuf or the
 * provided buffer (body). */
struct relay_outcome relay_client_sent(struct conn *c, int n)
{
    if (c->req.out) {
        c->req.out->off += (uint32_t)n;
        if (c->req.out->off < c->req.out->len) {
            c->tr->send(c, c->req.out, c->req.out->data + c->req.out->off, c->req.out->len - c->req.out->off);
            return relay_more;
        }
        conn_drop_buf(c, c->req.out);
        c->req.out = NULL;
    } else if (c->relay.ring_sending) {
        c->relay.ring_sending = false;
        c->relay.ring_off = (uint16_t)(c->relay.ring_off + n);
    } else if (c->at.rbuf) {
        c->at.rbuf->off += (uint32_t)n;
    }
    return relay_next(c);
}
