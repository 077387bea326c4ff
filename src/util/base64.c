#include "util/base64.h"

#include <stdbool.h>

static int sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long base64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4)
        return -1;
    size_t len = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        unsigned pad = 0;
        for (unsigned k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && last && k >= 2) {
                pad++;
                v[k] = 0;
                continue;
            }
            if (pad)
                return -1;      /* data after padding */
            v[k] = sextet(c);
            if (v[k] < 0)
                return -1;
        }
        unsigned long triple = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 | (unsigned long)v[2] << 6 |
                               (unsigned long)v[3];
        unsigned bytes = 3 - pad;
        if (len + bytes > cap)
            return -1;
        for (unsigned k = 0; k < bytes; k++)
            out[len++] = (unsigned char)(triple >> (16 - 8 * k));
    }
    return (long)len;
}
