/* OpenAI-shaped JSON error responses. */
#include "proto/openai_error.h"

#include <stdint.h>
#include <string.h>

#include "util/json_escape.h"
#include "util/outbuf.h"

/* s (NULL: "") as the contents of a JSON string, JSON's short escapes where it has them. */
static void put_json_text(struct outbuf *o, const char *s)
{
    if (s)
        json_escape(o, s, strlen(s), SIZE_MAX, JSON_ESCAPE_SHORT_FORMS);
}

static void put_error_body(struct outbuf *o, const char *type, const char *code,
                           const char *message)
{
    OUTBUF_LIT(o, "{\"error\":{\"message\":\"");
    put_json_text(o, message);
    OUTBUF_LIT(o, "\",\"type\":\"");
    put_json_text(o, type);
    OUTBUF_LIT(o, "\",\"code\":");
    if (code) {
        OUTBUF_LIT(o, "\"");
        put_json_text(o, code);
        OUTBUF_LIT(o, "\"");
    } else {
        OUTBUF_LIT(o, "null");
    }
    OUTBUF_LIT(o, "}}");
}

size_t openai_write_error(char *out, size_t cap, int status, const char *type,
                          const char *code, const char *message, bool keep_alive,
                          struct slice extra)
{
    /* measured first: the head states its length */
    struct outbuf body = outbuf_make(NULL, 0);
    put_error_body(&body, type, code, message);
    size_t hlen = http_write_json_head(out, cap, status, body.len, keep_alive, extra);
    if (hlen == 0)
        return 0;
    body = outbuf_make(out + hlen, cap - hlen);
    put_error_body(&body, type, code, message);
    return outbuf_overflowed(&body) ? 0 : hlen + body.len;
}
