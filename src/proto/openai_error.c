/* OpenAI-shaped JSON error responses. */
#include "proto/openai_error.h"

#include <string.h>

/* Length of the valid UTF-8 sequence at s (NUL-terminated), or 0 if invalid.
 * Each continuation byte is checked before the next is read, so the NUL stops it. */
static size_t utf8_seq_len(const uint8_t *s)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
#define CONT(b) ((uint8_t)((b) - 0x80) < 0x40)
    if (c >= 0xc2 && c <= 0xdf)
        return CONT(s[1]) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if (!CONT(s[1]) || (c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f))
            return 0;
        return CONT(s[2]) ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (!CONT(s[1]) || (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
            return 0;
        return CONT(s[2]) && CONT(s[3]) ? 4 : 0;
    }
#undef CONT
    return 0;
}

/* JSON string contents for s: quotes, backslashes and control bytes escaped,
 * invalid UTF-8 replaced by U+FFFD so the body is always valid JSON. With
 * dst NULL only counts. Returns the length. */
static size_t json_escape(char *dst, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = (const uint8_t *)(s ? s : "");
    size_t n = 0;
    char esc[8];

    while (*p) {
        uint8_t c = *p;
        const char *src;
        size_t len;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            src = (const char *)p;
            len = 1;
            p++;
        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            src = esc;
            len = 2;
            p++;
        } else if (c < 0x20) {
            esc[0] = '\\';
            len = 2;
            switch (c) {
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                len = 6;
            }
            src = esc;
            p++;
        } else {
            len = utf8_seq_len(p);
            if (len) {
                src = (const char *)p;
                p += len;
            } else {
                src = "\\ufffd";
                len = 6;
                p++;
            }
        }
        if (dst)
            memcpy(dst + n, src, len);
        n += len;
    }
    return n;
}

size_t openai_write_error(char *out, size_t cap, int status, const char *type,
                          const char *code, const char *message, bool keep_alive,
                          struct slice extra)
{
    static const char b0[] = "{\"error\":{\"message\":\"";
    static const char b1[] = "\",\"type\":\"";
    static const char b2[] = "\",\"code\":";
    static const char b3[] = "}}";
    size_t msg_len = json_escape(NULL, message);
    size_t type_len = json_escape(NULL, type);
    size_t code_len = code ? json_escape(NULL, code) + 2 : 4;
    size_t body_len = sizeof b0 - 1 + msg_len + sizeof b1 - 1 + type_len + sizeof b2 - 1 +
                      code_len + sizeof b3 - 1;
    size_t hlen = http_write_json_head(out, cap, status, body_len, keep_alive, extra);
    if (hlen == 0 || body_len > cap - hlen)
        return 0;

    char *q = out + hlen;
    memcpy(q, b0, sizeof b0 - 1);
    q += sizeof b0 - 1;
    q += json_escape(q, message);
    memcpy(q, b1, sizeof b1 - 1);
    q += sizeof b1 - 1;
    q += json_escape(q, type);
    memcpy(q, b2, sizeof b2 - 1);
    q += sizeof b2 - 1;
    if (code) {
        *q++ = '"';
        q += json_escape(q, code);
        *q++ = '"';
    } else {
        memcpy(q, "null", 4);
        q += 4;
    }
    memcpy(q, b3, sizeof b3 - 1);
    q += sizeof b3 - 1;
    return (size_t)(q - out);
}
