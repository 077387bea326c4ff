/* UTF-8 as RFC 3629 defines it (table 4): no overlong forms, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequences. Inline: the
 * OpenAI body reader calls it for every non-ASCII character of a prompt. */
#ifndef AIGW_UTIL_UTF8_H
#define AIGW_UTIL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1-4) of the well-formed sequence at the start of p[0..n), n >= 1, or
 * 0 when the bytes there are not one. */
static inline size_t utf8_seq_len(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint8_t c = s[0], lo = 0x80, hi = 0xbf;     /* allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c < 0xc2)
        return 0;
    if (c < 0xe0)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        return n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (c < 0xf5) {
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        return n >= 4 && s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 &&
               (s[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

#endif
