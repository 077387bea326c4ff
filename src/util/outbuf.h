/* A bounded output writer: appends into a fixed buffer and counts every byte it
 * was given, stored or not, the way snprintf does. The stored bytes are always a
 * prefix of the output; once something did not fit, nothing more is stored, and
 * len > cap says so. Counting with cap 0 measures an output before writing it. */
#ifndef AIGW_UTIL_OUTBUF_H
#define AIGW_UTIL_OUTBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct outbuf {
    char *buf;
    size_t cap;
    size_t len;     /* bytes appended so far; more than cap once one did not fit */
};

static inline struct outbuf outbuf_make(char *buf, size_t cap)
{
    return (struct outbuf){ buf, cap, 0 };
}

void outbuf_put_slow(struct outbuf *o, const void *s, size_t n);

static inline void outbuf_put(struct outbuf *o, const void *s, size_t n)
{
    if (__builtin_expect(o->len + n <= o->cap, 1)) {
        if (n)
            memcpy(o->buf + o->len, s, n);
        o->len += n;
    } else {
        outbuf_put_slow(o, s, n);
    }
}

#define OUTBUF_LIT(o, lit) outbuf_put((o), (lit), sizeof(lit) - 1)

static inline void outbuf_str(struct outbuf *o, const char *s) { outbuf_put(o, s, strlen(s)); }

static inline void outbuf_char(struct outbuf *o, char c) { outbuf_put(o, &c, 1); }

/* Room for n bytes the caller writes itself, counted as appended; NULL (and
 * overflowed) when they do not fit. */
static inline char *outbuf_reserve(struct outbuf *o, size_t n)
{
    if (__builtin_expect(o->len + n <= o->cap, 1)) {
        char *at = o->buf + o->len;
        o->len += n;
        return at;
    }
    o->len += n;
    return NULL;
}

void outbuf_u64(struct outbuf *o, uint64_t v);
void outbuf_i64(struct outbuf *o, int64_t v);
/* v / 10^decimals as a decimal number without exponent or trailing fraction
 * zeros: (123000, 9) is "0.000123", (5, 0) is "5". Integer arithmetic only, so
 * it is exact and cheap enough for a shard. decimals <= 19. */
void outbuf_fixed(struct outbuf *o, uint64_t v, unsigned decimals);

static inline bool outbuf_overflowed(const struct outbuf *o) { return o->len > o->cap; }

/* The length of the output, or 0 when it did not fit. */
static inline size_t outbuf_done(const struct outbuf *o) { return o->len > o->cap ? 0 : o->len; }

#endif
