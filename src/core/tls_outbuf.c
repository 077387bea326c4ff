/* The ciphertext a TLS connection sends: see tls_outbuf.h. */
#include "core/tls_outbuf.h"

#include <string.h>

#include "core/buf.h"
#include "tls/tls.h"

struct xbuf *tls_outbuf_buffer(struct shard *sh, struct tls_outbuf *o)
{
    if (!o->buf) {
        o->buf = xbuf_get(sh);
        if (!o->buf)
            return NULL;
        o->buf->off = o->buf->len = 0;
    } else if (!o->sending && o->buf->off > 0) {
        /* nothing in flight reads it: what is left moves to the front */
        uint32_t left = o->buf->len - o->buf->off;
        memmove(o->buf->data, o->buf->data + o->buf->off, left);
        if (o->app_pending)
            o->app_end -= o->buf->off;
        o->buf->off = 0;
        o->buf->len = left;
    }
    return o->buf;
}

bool tls_outbuf_window(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t)
{
    struct xbuf *b = tls_outbuf_buffer(sh, o);
    if (!b)
        return false;
    struct tls_io *io = tls_conn_io(t);
    io->out = b->data;
    io->out_len = b->len;
    io->out_cap = b->cap;
    return true;
}

void tls_outbuf_taken(struct tls_outbuf *o, struct tls_conn *t)
{
    if (o->buf)
        o->buf->len = (uint32_t)tls_conn_io(t)->out_len;
}

/* The most plaintext whose ciphertext fits in room. */
static size_t plaintext_fitting(const struct tls_conn *t, size_t n, size_t room)
{
    if (tls_write_room(t, n) <= room)
        return n;
    size_t lo = 0, hi = n;
    while (lo + 1 < hi) {               /* the largest m with room(m) <= room */
        size_t mid = lo + (hi - lo) / 2;
        if (tls_write_room(t, mid) <= room)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

bool tls_outbuf_encrypt(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t, const char *p, size_t n)
{
    if (!tls_outbuf_window(sh, o, t))
        return false;
    size_t m = plaintext_fitting(t, n, o->buf->cap - o->buf->len);
    if (m == 0) {
        /* the engine's own bytes fill the buffer and are on the wire: after them */
        o->deferred_p = p;
        o->deferred_n = n;
        return true;
    }
    enum tls_status st = TLS_OK;
    size_t took = tls_write(t, p, m, &st);
    tls_outbuf_taken(o, t);
    if (took == 0)
        return false;
    o->app_pending = true;
    o->app_end = o->buf->len;
    o->app_bytes = (uint32_t)took;
    return true;
}

bool tls_outbuf_next(struct shard *sh, struct tls_outbuf *o, const char **p, size_t *n)
{
    if (o->sending || !o->buf)
        return false;
    if (o->buf->off == o->buf->len) {
        xbuf_put(sh, o->buf);           /* an idle connection holds no buffer */
        o->buf = NULL;
        return false;
    }
    *p = o->buf->data + o->buf->off;
    *n = o->buf->len - o->buf->off;
    o->sending = true;
    return true;
}

int tls_outbuf_sent(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t, size_t n)
{
    o->sending = false;
    o->buf->off += (uint32_t)n;
    int report = 0;
    if (o->app_pending && o->buf->off >= o->app_end) {
        o->app_pending = false;
        report = (int)o->app_bytes;
    }
    if (o->deferred_p && !o->app_pending) {
        const char *p = o->deferred_p;
        o->deferred_p = NULL;
        if (!tls_outbuf_encrypt(sh, o, t, p, o->deferred_n))
            return -1;
    }
    return report;
}

bool tls_outbuf_flushed(const struct tls_outbuf *o)
{
    return !o->buf || o->buf->off == o->buf->len;
}

void tls_outbuf_free(struct shard *sh, struct tls_outbuf *o)
{
    xbuf_put(sh, o->buf);
    o->buf = NULL;
}
