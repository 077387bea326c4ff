#include "trace/traceparent.h"

#include <string.h>

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;      /* uppercase is not valid in a traceparent */
}

/* 2n hex characters into n bytes; false on a non-hex character. */
static bool unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static bool all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

bool traceparent_parse(const char *s, size_t n, struct trace_parent *out)
{
    uint8_t version;
    if (n < TRACEPARENT_LEN || !unhex(s, &version, 1) || s[2] != '-')
        return false;
    if (version == 0xff)
        return false;
    if (version == 0 && n != TRACEPARENT_LEN)
        return false;
    if (n > TRACEPARENT_LEN && s[TRACEPARENT_LEN] != '-')
        return false;
    struct trace_parent p;
    if (!unhex(s + 3, p.trace_id, 16) || s[35] != '-' || !unhex(s + 36, p.span_id, 8) || s[52] != '-' ||
        !unhex(s + 53, &p.flags, 1))
        return false;
    if (all_zero(p.trace_id, 16) || all_zero(p.span_id, 8))
        return false;
    *out = p;
    return true;
}

void trace_hex(char *out, const uint8_t *bytes, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[bytes[i] >> 4];
        out[2 * i + 1] = hex[bytes[i] & 15];
    }
}

void traceparent_format(char out[TRACEPARENT_LEN], const uint8_t trace_id[16], const uint8_t span_id[8],
                        uint8_t flags)
{
    memcpy(out, "00-", 3);
    trace_hex(out + 3, trace_id, 16);
    out[35] = '-';
    trace_hex(out + 36, span_id, 8);
    out[52] = '-';
    trace_hex(out + 53, &flags, 1);
}
