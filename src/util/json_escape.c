#include "util/json_escape.h"

#include <stdint.h>

#include "util/utf8.h"

static bool plain(uint8_t c, uint8_t plain_end)
{
    return c >= 0x20 && c < plain_end && c != '"' && c != '\\';
}

bool json_escape(struct outbuf *o, const char *s, size_t n, size_t max_out,
                 enum json_escape_style style)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *u = (const uint8_t *)s;
    /* bytes below this (and from 0x20) copy as they are */
    const uint8_t plain_end = style == JSON_ESCAPE_ALL_CONTROLS ? 0x7f : 0x80;
    size_t used = 0, i = 0;

    while (i < n) {
        uint8_t c = u[i];
        char esc[6];
        const char *piece = esc;
        size_t piece_len, consumed = 1;
        if (plain(c, plain_end)) {
            /* a run of plain ASCII in one copy */
            size_t j = i + 1;
            while (j < n && plain(u[j], plain_end))
                j++;
            piece = s + i;
            piece_len = j - i;
            if (piece_len > max_out - used)
                piece_len = max_out - used;     /* ASCII may be cut anywhere */
            if (piece_len == 0)
                return false;
            consumed = piece_len;
        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            piece_len = 2;
        } else if (c < 0x20 || c == 0x7f) {
            const char *shortform = NULL;
            if (style == JSON_ESCAPE_SHORT_FORMS) {
                switch (c) {
                case '\n': shortform = "\\n"; break;
                case '\r': shortform = "\\r"; break;
                case '\t': shortform = "\\t"; break;
                case '\b': shortform = "\\b"; break;
                case '\f': shortform = "\\f"; break;
                }
            }
            if (shortform) {
                piece = shortform;
                piece_len = 2;
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                piece_len = 6;
            }
        } else if ((consumed = utf8_seq_len(u + i, n - i)) != 0) {
            piece = s + i;
            piece_len = consumed;
        } else {
            piece = "\\ufffd";
            piece_len = 6;
            consumed = 1;
        }
        if (piece_len > max_out - used)
            return false;
        outbuf_put(o, piece, piece_len);
        used += piece_len;
        i += consumed;
    }
    return true;
}
