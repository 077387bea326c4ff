#include "util/outbuf.h"

void outbuf_put_slow(struct outbuf *o, const void *s, size_t n)
{
    if (o->len < o->cap)
        memcpy(o->buf + o->len, s, o->cap - o->len);
    o->len += n;
}

void outbuf_u64(struct outbuf *o, uint64_t v)
{
    char tmp[20];
    char *q = tmp + sizeof tmp;
    do {
        *--q = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    outbuf_put(o, q, (size_t)(tmp + sizeof tmp - q));
}

void outbuf_fixed(struct outbuf *o, uint64_t v, unsigned decimals)
{
    uint64_t scale = 1;
    for (unsigned i = 0; i < decimals; i++)
        scale *= 10;
    outbuf_u64(o, v / scale);
    uint64_t frac = v % scale;
    if (!frac)
        return;
    unsigned digits = decimals;
    while (frac % 10 == 0) {
        frac /= 10;
        digits--;
    }
    char tmp[20];
    for (unsigned i = digits; i > 0; i--) {
        tmp[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    tmp[0] = '.';
    outbuf_put(o, tmp, digits + 1);
}

void outbuf_i64(struct outbuf *o, int64_t v)
{
    if (v < 0) {
        OUTBUF_LIT(o, "-");
        outbuf_u64(o, (uint64_t)0 - (uint64_t)v);
    } else {
        outbuf_u64(o, (uint64_t)v);
    }
}
