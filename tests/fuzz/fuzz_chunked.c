/* libFuzzer: the incremental chunked scanner. The first byte seeds how the rest
 * is split; whatever the split, the outcome (error or not, bytes consumed, data
 * delivered) must equal that of scanning the input in one piece. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http1.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

struct fuzz_sink {
    const char *lo, *hi;    /* the piece being scanned: spans must lie inside */
    uint64_t bytes, hash;
};

static void fuzz_on_data(void *ctx, const char *p, size_t n)
{
    struct fuzz_sink *s = ctx;
    FUZZ_CHECK(p >= s->lo && n <= (size_t)(s->hi - p));
    for (size_t i = 0; i < n; i++)
        s->hash = (s->hash ^ (uint8_t)p[i]) * 1099511628211ULL;
    s->bytes += n;
}

struct fuzz_outcome {
    bool error, done;
    size_t consumed;
    uint64_t bytes, hash;
};

static struct fuzz_outcome scan(const char *buf, size_t len, uint32_t seed)
{
    struct chunked c;
    struct fuzz_sink sink = { .hash = 14695981039346656037ULL };
    struct fuzz_outcome o = { 0 };
    uint32_t x = seed | 1;
    size_t off = 0;

    chunked_init(&c);
    while (off < len) {
        size_t n = len - off;
        if (seed) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t piece = 1 + x % ((seed & 0x30) ? 300 : 5);
            if (piece < n)
                n = piece;
        }
        sink.lo = buf + off;
        sink.hi = buf + off + n;
        const char *why = NULL;
        ssize_t r = chunked_scan(&c, buf + off, n, fuzz_on_data, &sink, &why);
        if (r < 0) {
            FUZZ_CHECK(r == -1 && why != NULL);
            o.error = true;
            break;
        }
        FUZZ_CHECK((size_t)r <= n);
        FUZZ_CHECK((size_t)r == n || c.done);
        off += (size_t)r;
        if (c.done)
            break;
    }
    o.done = c.done;
    o.consumed = off;
    o.bytes = sink.bytes;
    o.hash = sink.hash;
    if (!o.error)
        FUZZ_CHECK(o.bytes <= o.consumed);
    if (o.done) {
        FUZZ_CHECK(chunked_scan(&c, buf, len, NULL, NULL, NULL) == 0);
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    struct fuzz_outcome whole = scan(buf, len, 0);
    struct fuzz_outcome split = scan(buf, len, data[0] ? data[0] : 1);
    FUZZ_CHECK(whole.error == split.error);
    if (!whole.error) {
        FUZZ_CHECK(whole.done == split.done && whole.consumed == split.consumed);
        FUZZ_CHECK(whole.bytes == split.bytes && whole.hash == split.hash);
    }
    return 0;
}
