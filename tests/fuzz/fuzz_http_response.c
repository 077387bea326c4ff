/* libFuzzer: the response parser, the client head serialiser (what it writes
 * must parse again with the same framing) and the JSON error writer (its body
 * must be valid JSON whatever the message bytes are). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http1.h"
#include "proto/openai_error.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static unsigned expected_client_headers(const struct http_response *r)
{
    unsigned n = 0;
    for (unsigned i = 0; i < r->nheaders; i++)
        if (!r->headers[i].hop && r->headers[i].kind != HK_CONTENT_LENGTH &&
            r->headers[i].kind != HK_TRANSFER_ENCODING)
            n++;
    bool codings = false;
    for (unsigned i = 0; i < r->nheaders; i++)
        if (r->headers[i].kind == HK_TRANSFER_ENCODING && r->headers[i].value.len)
            codings = true;
    bool framing = r->body == BODY_LENGTH || r->body == BODY_CHUNKED ||
                   (r->body == BODY_UNTIL_CLOSE && codings) ||
                   (r->body == BODY_NONE && r->idx[HK_CONTENT_LENGTH] >= 0 && r->status >= 200 &&
                    r->status != 204);
    return n + framing + 1 /* Connection */ + 1 /* extra */;
}

/* Length of a JSON string's contents starting at p (just past the opening quote),
 * up to the closing quote; aborts on anything JSON does not allow. */
static size_t json_string_len(const uint8_t *p, const uint8_t *end)
{
    const uint8_t *s = p;
    while (p < end && *p != '"') {
        uint8_t c = *p;
        FUZZ_CHECK(c >= 0x20);
        if (c == '\\') {
            FUZZ_CHECK(p + 1 < end);
            uint8_t e = p[1];
            if (e == 'u') {
                FUZZ_CHECK(end - p >= 6);
                for (int i = 2; i < 6; i++)
                    FUZZ_CHECK(strchr("0123456789abcdef", p[i]) && p[i]);
                p += 6;
            } else {
                FUZZ_CHECK(strchr("\"\\/bfnrt", e) && e);
                p += 2;
            }
            continue;
        }
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
        FUZZ_CHECK(c < 0x80 || (c >= 0xc2 && c <= 0xf4));
        FUZZ_CHECK((size_t)(end - p) >= n);
        for (size_t i = 1; i < n; i++)
            FUZZ_CHECK((p[i] & 0xc0) == 0x80);
        p += n;
    }
    FUZZ_CHECK(p < end);
    return (size_t)(p - s);
}

static void check_error_writer(const uint8_t *data, size_t size)
{
    static char msg[4096], out[40000];
    static struct http_response r;
    size_t m = size < sizeof msg - 1 ? size : sizeof msg - 1;
    memcpy(msg, data, m);
    msg[m] = '\0';
    const char *code = size & 1 ? NULL : "some_code";
    size_t n = openai_write_error(out, sizeof out, 400, "invalid_request_error", code, msg, size & 2,
                                (struct slice){ "X-A: b\r\n", 8 });
    FUZZ_CHECK(n > 0);
    const char *why;
    FUZZ_CHECK(http_parse_response(out, n, n, METHOD_POST, &r, &why) == HTTP_OK);
    FUZZ_CHECK(r.status == 400 && r.body == BODY_LENGTH && r.head_len + r.content_length == n);
    const uint8_t *b = (const uint8_t *)out + r.head_len, *end = (const uint8_t *)out + n;
    static const char pre[] = "{\"error\":{\"message\":\"";
    FUZZ_CHECK(memcmp(b, pre, sizeof pre - 1) == 0);
    b += sizeof pre - 1;
    b += json_string_len(b, end);
    static const char mid[] = "\",\"type\":\"invalid_request_error\",\"code\":";
    FUZZ_CHECK((size_t)(end - b) >= sizeof mid - 1 && memcmp(b, mid, sizeof mid - 1) == 0);
    FUZZ_CHECK(openai_write_error(out, n - 1, 400, "invalid_request_error", code, msg, size & 2,
                                (struct slice){ "X-A: b\r\n", 8 }) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t limits[] = { 32, 8192 };
    static const int methods[] = { METHOD_GET, METHOD_HEAD };
    static struct http_response resp, back;
    static char out[200000];
    const char *buf = (const char *)data;

    for (size_t li = 0; li < 2; li++) {
        for (size_t mi = 0; mi < 2; mi++) {
            const char *why = NULL;
            int rc = http_parse_response(buf, size, limits[li], methods[mi], &resp, &why);
            FUZZ_CHECK(rc >= HTTP_OK && rc <= HTTP_TOO_LARGE);
            if (rc == HTTP_BAD || rc == HTTP_TOO_LARGE)
                FUZZ_CHECK(why != NULL);
            if (rc != HTTP_OK)
                continue;
            FUZZ_CHECK(resp.head_len <= size && resp.head_len <= limits[li]);
            FUZZ_CHECK(resp.status >= 100 && resp.status <= 999);
            FUZZ_CHECK(resp.nheaders <= HTTP_MAX_HEADERS);
            if (methods[mi] == METHOD_HEAD || resp.status < 200 || resp.status == 204 ||
                resp.status == 304)
                FUZZ_CHECK(resp.body == BODY_NONE);
            if (resp.body == BODY_UNTIL_CLOSE)
                FUZZ_CHECK(!resp.keep_alive);
            FUZZ_CHECK(http_parse_response(buf, resp.head_len - 1, limits[li], methods[mi], &back,
                                           &why) == HTTP_INCOMPLETE);

            bool ka = (size & 1) != 0;
            size_t n = http_write_client_head(out, sizeof out, &resp, ka,
                                              (struct slice){ "x-request-id: r\r\n", 17 });
            FUZZ_CHECK(n > 0);
            FUZZ_CHECK(http_write_client_head(out, n - 1, &resp, ka,
                                              (struct slice){ "x-request-id: r\r\n", 17 }) == 0);
            rc = http_parse_response(out, n, n, methods[mi], &back, &why);
            if (expected_client_headers(&resp) > HTTP_MAX_HEADERS) {
                FUZZ_CHECK(rc == HTTP_TOO_LARGE);
                continue;
            }
            FUZZ_CHECK(rc == HTTP_OK);
            FUZZ_CHECK(back.head_len == n && back.status == resp.status && back.minor == 1);
            FUZZ_CHECK(back.nheaders == expected_client_headers(&resp));
            FUZZ_CHECK(back.body == resp.body);
            if (resp.body == BODY_LENGTH)
                FUZZ_CHECK(back.content_length == resp.content_length);
            if (back.body != BODY_UNTIL_CLOSE)
                FUZZ_CHECK(back.keep_alive == ka);
        }
    }
    check_error_writer(data, size);
    return 0;
}
