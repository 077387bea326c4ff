/* libFuzzer: the request parser, and the proxy invariant that every request it
 * accepts serialises into an upstream head it accepts again, with the same
 * framing and no hop-by-hop header left. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http1.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static bool in_buf(struct slice s, const char *buf, size_t len)
{
    return s.p >= buf && s.len <= len && (size_t)(s.p - buf) <= len - s.len;
}

static bool same(struct slice a, struct slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* Headers http_write_upstream_head emits for req with fwd. */
static unsigned expected_upstream_headers(const struct http_request *req,
                                          const struct http_forward *fwd, bool *has_xff)
{
    unsigned n = 0;
    *has_xff = fwd->client_addr.len > 0;
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (h->hop)
            continue;
        switch (h->kind) {
        case HK_X_FORWARDED_FOR:
            if (h->value.len)
                *has_xff = true;
            continue;
        case HK_CONTENT_LENGTH: case HK_TRANSFER_ENCODING: case HK_EXPECT:
        case HK_X_FORWARDED_PROTO: case HK_X_REQUEST_ID:
            continue;
        case HK_AUTHORIZATION:
            if (fwd->strip_client_auth || fwd->upstream_auth.len)
                continue;
            break;
        case HK_X_API_KEY:
            if (fwd->strip_client_auth)
                continue;
            break;
        default:
            break;
        }
        n++;
    }
    n += (req->body != BODY_NONE) + 1 /* Connection */ + (fwd->upstream_auth.len > 0) + *has_xff +
         (fwd->proto.len > 0) + (fwd->request_id.len > 0);
    return n;
}

static void check_request(const char *buf, size_t size, size_t max_head, const struct http_request *req)
{
    FUZZ_CHECK(req->head_len > 0 && req->head_len <= size && req->head_len <= max_head);
    FUZZ_CHECK(req->nheaders <= HTTP_MAX_HEADERS);
    FUZZ_CHECK(req->minor <= 1);
    FUZZ_CHECK(req->body == BODY_NONE || req->body == BODY_LENGTH || req->body == BODY_CHUNKED);
    FUZZ_CHECK(req->content_length <= (uint64_t)INT64_MAX);
    FUZZ_CHECK(in_buf(req->method, buf, req->head_len) && req->method.len > 0);
    FUZZ_CHECK(in_buf(req->target, buf, req->head_len) && req->target.len > 0);
    FUZZ_CHECK(req->path.p == req->target.p && req->path.len <= req->target.len);
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        FUZZ_CHECK(in_buf(h->name, buf, req->head_len) && h->name.len > 0);
        FUZZ_CHECK(in_buf(h->value, buf, req->head_len));
        for (size_t j = 0; j < h->value.len; j++)
            FUZZ_CHECK(h->value.p[j] != '\r' && h->value.p[j] != '\n' && h->value.p[j] != '\0');
    }
    for (unsigned k = 0; k <= HK_CONTENT_TYPE; k++) {
        int16_t ix = req->idx[k];
        FUZZ_CHECK(ix >= -1 && ix < (int)req->nheaders);
        if (ix >= 0)
            FUZZ_CHECK(req->headers[ix].kind == k);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t limits[] = { 24, 512, 8192, 65536 };
    static struct http_request req, again, up;
    static char out[200000];
    const char *buf = (const char *)data;

    for (size_t li = 0; li < sizeof limits / sizeof *limits; li++) {
        size_t max_head = limits[li];
        const char *why = NULL;
        int rc = http_parse_request(buf, size, max_head, &req, &why);
        FUZZ_CHECK(rc >= HTTP_OK && rc <= HTTP_TOO_LARGE);
        if (rc == HTTP_INCOMPLETE)
            FUZZ_CHECK(size < max_head);
        if (rc == HTTP_BAD || rc == HTTP_TOO_LARGE)
            FUZZ_CHECK(why != NULL);
        if (rc != HTTP_OK)
            continue;
        check_request(buf, size, max_head, &req);

        /* the head alone parses the same; every shorter prefix is incomplete */
        FUZZ_CHECK(http_parse_request(buf, req.head_len, req.head_len, &again, &why) == HTTP_OK);
        FUZZ_CHECK(again.head_len == req.head_len && again.body == req.body &&
                   again.content_length == req.content_length);
        FUZZ_CHECK(http_parse_request(buf, req.head_len - 1, max_head, &again, &why) == HTTP_INCOMPLETE);
        FUZZ_CHECK(http_parse_request(buf, req.head_len / 2, max_head, &again, &why) == HTTP_INCOMPLETE);

        struct http_forward fwd = {
            .client_addr = { "192.0.2.1", 9 },
            .proto = { "http", 4 },
            .request_id = { "fuzz-id", 7 },
            .upstream_auth = { "k", size & 1 },
            .strip_client_auth = (size & 2) != 0,
        };
        size_t n = http_write_upstream_head(out, sizeof out, &req, &fwd);
        FUZZ_CHECK(n > 0);
        FUZZ_CHECK(http_write_upstream_head(out, n - 1, &req, &fwd) == 0);
        bool has_xff;
        unsigned want = expected_upstream_headers(&req, &fwd, &has_xff);
        rc = http_parse_request(out, n, n, &up, &why);
        if (want > HTTP_MAX_HEADERS) {
            FUZZ_CHECK(rc == HTTP_TOO_LARGE);
            continue;
        }
        FUZZ_CHECK(rc == HTTP_OK);
        FUZZ_CHECK(up.head_len == n && up.nheaders == want);
        FUZZ_CHECK(same(up.method, req.method) && same(up.target, req.target));
        FUZZ_CHECK(up.method_id == req.method_id && up.minor == 1 && up.keep_alive);
        FUZZ_CHECK(up.body == req.body && up.content_length == req.content_length);
        FUZZ_CHECK(!up.expect_continue);
        for (unsigned i = 0; i < up.nheaders; i++)
            FUZZ_CHECK(!up.headers[i].hop || up.headers[i].kind == HK_CONNECTION ||
                       up.headers[i].kind == HK_TRANSFER_ENCODING);
        FUZZ_CHECK(up.idx[HK_X_REQUEST_ID] >= 0 &&
                   same(up.headers[up.idx[HK_X_REQUEST_ID]].value, fwd.request_id));
        if (has_xff) {
            struct slice x = up.headers[up.idx[HK_X_FORWARDED_FOR]].value;
            FUZZ_CHECK(x.len >= 9 && memcmp(x.p + x.len - 9, "192.0.2.1", 9) == 0);
        }
    }
    return 0;
}
