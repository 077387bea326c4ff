/* HTTP/1.1 parser, chunked scanner and serialisers (src/proto/http1.c). */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "proto/http1.h"
#include "proto/openai_error.h"

#define H1_MAX_HEAD 8192

static struct http_request h1_req;
static struct http_response h1_resp;
static const char *h1_why;

static int h1_parse_req(const char *s)
{
    h1_why = NULL;
    return http_parse_request(s, strlen(s), H1_MAX_HEAD, &h1_req, &h1_why);
}

static int h1_parse_resp(const char *s, int method)
{
    h1_why = NULL;
    return http_parse_response(s, strlen(s), H1_MAX_HEAD, method, &h1_resp, &h1_why);
}

static bool h1_slice_is(struct slice s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

static const struct http_header *h1_find(const struct http_header *hs, unsigned n,
                                         const char *lower_name)
{
    for (unsigned i = 0; i < n; i++)
        if (slice_eq_lower(hs[i].name, lower_name))
            return &hs[i];
    return NULL;
}

static unsigned h1_count(const struct http_header *hs, unsigned n, const char *lower_name)
{
    unsigned c = 0;
    for (unsigned i = 0; i < n; i++)
        if (slice_eq_lower(hs[i].name, lower_name))
            c++;
    return c;
}

#define h1_expect_bad(s)                                                               \
    do {                                                                               \
        int rc_ = h1_parse_req(s);                                                     \
        cr_assert_eq(rc_, HTTP_BAD, "expected HTTP_BAD, got %d for %s", rc_, #s);     \
        cr_assert_not_null(h1_why);                                                    \
    } while (0)

/* ---------------- requests: accepted ---------------- */

Test(http1_req, simple_get)
{
    const char *s = "GET /v1/models?x=1 HTTP/1.1\r\n"
                    "Host: example.com\r\n"
                    "User-Agent:   curl/8.0  \r\n"
                    "Accept: */*\r\n"
                    "\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    cr_assert(h1_slice_is(h1_req.method, "GET"));
    cr_assert_eq(h1_req.method_id, METHOD_GET);
    cr_assert(h1_slice_is(h1_req.target, "/v1/models?x=1"));
    cr_assert(h1_slice_is(h1_req.path, "/v1/models"));
    cr_assert_eq(h1_req.minor, 1);
    cr_assert(h1_req.keep_alive);
    cr_assert_not(h1_req.expect_continue);
    cr_assert_eq(h1_req.body, BODY_NONE);
    cr_assert_eq(h1_req.head_len, strlen(s));
    cr_assert_eq(h1_req.nheaders, 3);
    cr_assert(h1_slice_is(h1_req.headers[1].name, "User-Agent"));
    cr_assert(h1_slice_is(h1_req.headers[1].value, "curl/8.0"), "value must be OWS-trimmed");
    cr_assert_eq(h1_req.idx[HK_HOST], 0);
    cr_assert_eq(h1_req.idx[HK_CONTENT_LENGTH], -1);
    cr_assert_eq(h1_req.headers[0].kind, HK_HOST);
    cr_assert_eq(h1_req.headers[1].kind, HK_OTHER);
}

Test(http1_req, post_with_content_length)
{
    const char *s = "POST /v1/chat/completions HTTP/1.1\r\n"
                    "Host: a\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
                    "{\"model\":\"llama\"}";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    cr_assert_eq(h1_req.method_id, METHOD_POST);
    cr_assert_eq(h1_req.body, BODY_LENGTH);
    cr_assert_eq(h1_req.content_length, 17);
    cr_assert_eq(h1_req.head_len + 17, strlen(s));
    cr_assert_eq(h1_req.idx[HK_CONTENT_TYPE], 1);
    cr_assert_eq(h1_req.idx[HK_CONTENT_LENGTH], 2);
    cr_assert_not(h1_req.headers[2].hop, "Content-Length is not hop-by-hop");
}

Test(http1_req, post_chunked)
{
    const char *s = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChunKed\r\n\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    cr_assert_eq(h1_req.body, BODY_CHUNKED);
    cr_assert(h1_req.headers[1].hop);
}

Test(http1_req, content_length_zero_and_identical_duplicates)
{
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), HTTP_OK);
    cr_assert_eq(h1_req.body, BODY_LENGTH);
    cr_assert_eq(h1_req.content_length, 0);
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
                 HTTP_OK);
    cr_assert_eq(h1_req.content_length, 5);
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), HTTP_OK);
    cr_assert_eq(h1_req.content_length, 5);
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n"),
                 HTTP_OK);
    cr_assert_eq(h1_req.content_length, 9223372036854775807ULL);
}

Test(http1_req, pipelined_requests)
{
    const char *s = "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                    "GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
                    "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    size_t len = strlen(s), off = 0;
    const char *paths[] = { "/a", "/b", "/c" };
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(http_parse_request(s + off, len - off, H1_MAX_HEAD, &h1_req, &h1_why),
                     HTTP_OK, "request %d: %s", i, h1_why);
        cr_assert(h1_slice_is(h1_req.path, paths[i]), "request %d", i);
        off += h1_req.head_len + (h1_req.body == BODY_LENGTH ? h1_req.content_length : 0);
    }
    cr_assert_eq(off, len);
    cr_assert_not(h1_req.keep_alive);
}

Test(http1_req, single_leading_crlf_tolerated)
{
    const char *s = "\r\nGET / HTTP/1.1\r\n\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK);
    cr_assert_eq(h1_req.head_len, strlen(s));
    cr_assert(h1_slice_is(h1_req.method, "GET"));
    h1_expect_bad("\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    h1_expect_bad("\nGET / HTTP/1.1\r\n\r\n");
}

Test(http1_req, keep_alive_rules)
{
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), HTTP_OK);
    cr_assert_not(h1_req.keep_alive);
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n"), HTTP_OK);
    cr_assert_not(h1_req.keep_alive);
    cr_assert_eq(h1_parse_req("GET / HTTP/1.0\r\n\r\n"), HTTP_OK);
    cr_assert_eq(h1_req.minor, 0);
    cr_assert_not(h1_req.keep_alive);
    cr_assert_eq(h1_parse_req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), HTTP_OK);
    cr_assert(h1_req.keep_alive);
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n"), HTTP_OK);
    cr_assert(h1_req.keep_alive);
}

Test(http1_req, hop_by_hop_headers)
{
    const char *s = "GET / HTTP/1.1\r\n"
                    "Host: h\r\n"
                    "Connection: close, X-Foo\r\n"
                    "x-foo: 1\r\n"
                    "X-Bar: 2\r\n"
                    "Keep-Alive: timeout=5\r\n"
                    "Proxy-Connection: keep-alive\r\n"
                    "TE: trailers\r\n"
                    "Trailer: X-Sum\r\n"
                    "Upgrade: websocket\r\n"
                    "Proxy-Authorization: Basic x\r\n"
                    "Content-Type: text/plain\r\n"
                    "\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    const char *hop[] = { "connection", "x-foo", "keep-alive", "proxy-connection", "te",
                          "trailer", "upgrade", "proxy-authorization" };
    const char *end_to_end[] = { "host", "x-bar", "content-type" };
    for (size_t i = 0; i < sizeof hop / sizeof *hop; i++)
        cr_assert(h1_find(h1_req.headers, h1_req.nheaders, hop[i])->hop, "%s", hop[i]);
    for (size_t i = 0; i < sizeof end_to_end / sizeof *end_to_end; i++)
        cr_assert_not(h1_find(h1_req.headers, h1_req.nheaders, end_to_end[i])->hop, "%s",
                      end_to_end[i]);
}

Test(http1_req, header_kinds_case_insensitive)
{
    const char *s = "GET / HTTP/1.1\r\nHOST: h\r\ncontent-LENGTH: 0\r\nX-API-KEY: k\r\n"
                    "authorization: Bearer t\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-proto: http\r\n"
                    "X-Request-ID: r\r\nTraceparent: 00-x\r\nCONTENT-TYPE: a/b\r\nexpect: 100-CONTINUE\r\n"
                    "X-Hostile: 1\r\n\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    uint8_t want[] = { HK_HOST, HK_CONTENT_LENGTH, HK_X_API_KEY, HK_AUTHORIZATION,
                       HK_X_FORWARDED_FOR, HK_X_FORWARDED_PROTO, HK_X_REQUEST_ID,
                       HK_TRACEPARENT, HK_CONTENT_TYPE, HK_EXPECT, HK_OTHER };
    cr_assert_eq(h1_req.nheaders, sizeof want);
    for (unsigned i = 0; i < sizeof want; i++) {
        cr_assert_eq(h1_req.headers[i].kind, want[i], "header %u", i);
        if (want[i] != HK_OTHER)
            cr_assert_eq(h1_req.idx[want[i]], (int16_t)i);
    }
    cr_assert(h1_req.expect_continue);
}

Test(http1_req, header_kind_needs_every_byte_to_match)
{
    static const struct {
        const char *name, *value;
        uint8_t kind;
    } known[] = {
        { "te", "trailers", HK_TE }, { "host", "h", HK_HOST }, { "expect", "100-continue", HK_EXPECT },
        { "trailer", "x", HK_TRAILER }, { "upgrade", "x", HK_UPGRADE },
        { "x-api-key", "k", HK_X_API_KEY }, { "connection", "close", HK_CONNECTION },
        { "keep-alive", "5", HK_KEEP_ALIVE }, { "traceparent", "t", HK_TRACEPARENT },
        { "content-type", "a/b", HK_CONTENT_TYPE }, { "x-request-id", "r", HK_X_REQUEST_ID },
        { "authorization", "a", HK_AUTHORIZATION }, { "content-length", "0", HK_CONTENT_LENGTH },
        { "x-forwarded-for", "f", HK_X_FORWARDED_FOR },
        { "proxy-connection", "close", HK_PROXY_CONNECTION },
        { "transfer-encoding", "chunked", HK_TRANSFER_ENCODING },
        { "x-forwarded-proto", "http", HK_X_FORWARDED_PROTO },
        { "proxy-authorization", "p", HK_PROXY_AUTHORIZATION },
    };
    char buf[256], name[32];
    for (size_t k = 0; k < sizeof known / sizeof *known; k++) {
        size_t len = strlen(known[k].name);
        for (size_t i = 0; i < len; i++)
            name[i] = (char)(i % 2 ? known[k].name[i] : toupper((unsigned char)known[k].name[i]));
        name[len] = '\0';
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\n%s: %s\r\n\r\n", name, known[k].value);
        cr_assert_eq(h1_parse_req(buf), HTTP_OK, "%s", name);
        cr_assert_eq(h1_req.headers[0].kind, known[k].kind, "%s", name);
        for (size_t i = 0; i < len; i++) {
            memcpy(name, known[k].name, len + 1);
            name[i] = name[i] == 'q' ? 'z' : 'q';
            snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\n%s: %s\r\n\r\n", name, known[k].value);
            cr_assert_eq(h1_parse_req(buf), HTTP_OK, "%s", name);
            cr_assert_eq(h1_req.headers[0].kind, HK_OTHER, "%s", name);
        }
    }
}

Test(http1_req, idx_is_first_occurrence)
{
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nA: 1\r\nX-Forwarded-For: a\r\nX-Forwarded-For: b\r\n\r\n"),
                 HTTP_OK);
    cr_assert_eq(h1_req.idx[HK_X_FORWARDED_FOR], 1);
}

Test(http1_req, expect_rules)
{
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
                 HTTP_OK);
    cr_assert(h1_req.expect_continue);
    cr_assert_eq(h1_parse_req("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"),
                 HTTP_OK);
    cr_assert_not(h1_req.expect_continue, "100-continue is ignored in HTTP/1.0");
    cr_assert_not(h1_req.expect_unmet);
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nexpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"),
                 HTTP_OK);
    cr_assert(h1_req.expect_continue, "the expectation is case-insensitive");
    cr_assert_not(h1_req.expect_unmet);
}

/* Any other expectation parses (the framing is sound) and is flagged, so the
 * caller answers 417 rather than 400 (RFC 9110 10.1.1). */
Test(http1_req, unmet_expectations_are_flagged_not_rejected)
{
    static const char *const heads[] = {
        "POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n",
        "GET / HTTP/1.1\r\nExpect: 100-continue, foo\r\n\r\n",
        "GET / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: x=y\r\n\r\n",
        "GET / HTTP/1.1\r\nExpect:\r\n\r\n",
        "GET / HTTP/1.0\r\nExpect: 200-ok\r\n\r\n",
    };
    for (unsigned i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        cr_assert_eq(h1_parse_req(heads[i]), HTTP_OK, "%s: %s", heads[i], h1_why);
        cr_assert(h1_req.expect_unmet, "not flagged: %s", heads[i]);
    }
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), HTTP_OK);
    cr_assert_not(h1_req.expect_unmet, "a request without Expect is not flagged");
}

Test(http1_req, options_asterisk_and_target_forms)
{
    cr_assert_eq(h1_parse_req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), HTTP_OK);
    cr_assert_eq(h1_req.method_id, METHOD_OPTIONS);
    cr_assert(h1_slice_is(h1_req.target, "*"));
    h1_expect_bad("GET * HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET http://a/b HTTP/1.1\r\n\r\n");
    h1_expect_bad("CONNECT a:443 HTTP/1.1\r\n\r\n");
}

Test(http1_req, method_ids_and_extension_methods)
{
    const char *m[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "PURGE", "get" };
    uint8_t id[] = { METHOD_GET, METHOD_HEAD, METHOD_POST, METHOD_PUT, METHOD_DELETE,
                     METHOD_OPTIONS, METHOD_PATCH, METHOD_OTHER, METHOD_OTHER };
    for (size_t i = 0; i < sizeof id; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s / HTTP/1.1\r\n\r\n", m[i]);
        cr_assert_eq(h1_parse_req(buf), HTTP_OK, "%s", m[i]);
        cr_assert_eq(h1_req.method_id, id[i], "%s", m[i]);
    }
}

Test(http1_req, value_with_obs_text_tab_and_empty_value)
{
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nX-A: caf\xc3\xa9\tok\r\nX-Empty:\r\nX-Sp:   \r\n\r\n"),
                 HTTP_OK, "%s", h1_why);
    cr_assert(h1_slice_is(h1_req.headers[0].value, "caf\xc3\xa9\tok"));
    cr_assert_eq(h1_req.headers[1].value.len, 0);
    cr_assert_eq(h1_req.headers[2].value.len, 0);
}

Test(http1_req, long_values_cross_simd_blocks)
{
    char buf[2048];
    char val[700];
    for (size_t i = 0; i < sizeof val - 1; i++)
        val[i] = (char)('!' + i % 90);
    val[sizeof val - 1] = '\0';
    snprintf(buf, sizeof buf, "GET /%s HTTP/1.1\r\nX-Long: %s\r\n\r\n", "abcdefghijklmnopqrstuvwxyz0123456789", val);
    cr_assert_eq(h1_parse_req(buf), HTTP_OK, "%s", h1_why);
    cr_assert(h1_slice_is(h1_req.headers[0].value, val));
    /* a control byte deep inside a long value is still found */
    char *ctl = strstr(buf, "X-Long: ") + 8 + 333;
    *ctl = '\x01';
    h1_expect_bad(buf);
}

Test(http1_req, every_prefix_is_incomplete)
{
    const char *s = "\r\nPOST /v1/chat/completions?stream=1 HTTP/1.1\r\n"
                    "Host: localhost:8080\r\n"
                    "Content-Type: application/json\r\n"
                    "Authorization: Bearer sk-123\r\n"
                    "Content-Length: 2\r\n"
                    "\r\n";
    size_t len = strlen(s);
    for (size_t i = 0; i < len; i++) {
        int rc = http_parse_request(s, i, H1_MAX_HEAD, &h1_req, &h1_why);
        cr_assert_eq(rc, HTTP_INCOMPLETE, "prefix %zu gave %d (%s)", i, rc,
                     rc == HTTP_BAD ? h1_why : "");
    }
    cr_assert_eq(http_parse_request(s, len, H1_MAX_HEAD, &h1_req, &h1_why), HTTP_OK);
    cr_assert_eq(h1_req.head_len, len);
}

Test(http1_req, head_over_max_head_is_too_large)
{
    const char *s = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    size_t len = strlen(s);
    cr_assert_eq(http_parse_request(s, len, len, &h1_req, &h1_why), HTTP_OK, "exact fit");
    cr_assert_eq(http_parse_request(s, len, len - 1, &h1_req, &h1_why), HTTP_TOO_LARGE);
    cr_assert_eq(http_parse_request(s, len - 5, len - 5, &h1_req, &h1_why), HTTP_TOO_LARGE);
    cr_assert_eq(http_parse_request(s, len - 5, len, &h1_req, &h1_why), HTTP_INCOMPLETE);
}

Test(http1_req, too_many_headers_is_too_large)
{
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < HTTP_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-H%d: v\r\n", i);
    snprintf(buf + n, sizeof buf - n, "\r\n");
    cr_assert_eq(h1_parse_req(buf), HTTP_OK, "exactly HTTP_MAX_HEADERS is fine");
    cr_assert_eq(h1_req.nheaders, HTTP_MAX_HEADERS);
    snprintf(buf + n, sizeof buf - n, "X-One-More: v\r\n\r\n");
    cr_assert_eq(h1_parse_req(buf), HTTP_TOO_LARGE);
}

/* ---------------- requests: rejected ---------------- */

Test(http1_reject, both_content_length_and_transfer_encoding)
{
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
}

Test(http1_reject, differing_duplicate_content_length)
{
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5,\r\n\r\n");
}

Test(http1_reject, invalid_content_length)
{
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5a\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n");
}

Test(http1_reject, content_length_overflow)
{
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n");
}

Test(http1_reject, transfer_encoding_gzip_chunked)
{
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
}

Test(http1_reject, transfer_encoding_chunked_twice)
{
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
}

Test(http1_reject, transfer_encoding_identity_and_others)
{
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n");
}

Test(http1_reject, transfer_encoding_in_http10)
{
    h1_expect_bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
}

Test(http1_reject, obs_fold)
{
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\n Host: h\r\n\r\n");
}

Test(http1_reject, whitespace_before_colon)
{
    h1_expect_bad("GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    cr_assert_str_eq(h1_why, "whitespace before colon in header");
    h1_expect_bad("POST / HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n");
}

Test(http1_reject, control_chars_in_name)
{
    h1_expect_bad("GET / HTTP/1.1\r\nX-\x01" "Bad: v\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX-Bad\x7f: v\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX(Bad): v\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\n: v\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nNoColon\r\n\r\n");
}

Test(http1_reject, control_chars_in_value)
{
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\x01z\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\x7fz\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\x1bz\r\n\r\n");
    /* NUL cannot appear in a C literal used with strlen: pass a length. */
    static const char nul[] = "GET / HTTP/1.1\r\nX-A: a\0z\r\n\r\n";
    cr_assert_eq(http_parse_request(nul, sizeof nul - 1, H1_MAX_HEAD, &h1_req, &h1_why), HTTP_BAD);
}

Test(http1_reject, bare_cr_in_value)
{
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n");
    cr_assert_str_eq(h1_why, "bare CR in header value");
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\r\r\n\r\n");
}

Test(http1_reject, bare_lf_line_endings)
{
    h1_expect_bad("GET / HTTP/1.1\nHost: h\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nHost: h\n\r\n");
    h1_expect_bad("GET / HTTP/1.1\r\nHost: h\r\n\n");
    h1_expect_bad("GET / HTTP/1.1\r\nX-A: a\nb\r\n\r\n");
}

Test(http1_reject, request_line_double_space)
{
    h1_expect_bad("GET  / HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET /  HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.1 \r\n\r\n");
}

Test(http1_reject, request_line_missing_version)
{
    h1_expect_bad("GET / \r\n\r\n");
    h1_expect_bad("GET\r\n\r\n");
    h1_expect_bad("GET /\r\nHost: h\r\n\r\n");
}

Test(http1_reject, request_line_lowercase_version)
{
    h1_expect_bad("GET / http/1.1\r\n\r\n");
}

Test(http1_reject, request_line_trailing_garbage)
{
    h1_expect_bad("GET / HTTP/1.1x\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.10\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.\r\n\r\n");
}

Test(http1_reject, request_line_bad_bytes)
{
    h1_expect_bad("G(T / HTTP/1.1\r\n\r\n");
    h1_expect_bad(" GET / HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET /a\tb HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n");
    h1_expect_bad("GET /a\x7f HTTP/1.1\r\n\r\n");
    h1_expect_bad("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");  /* a TLS ClientHello */
}

Test(http1_reject, http09_request)
{
    h1_expect_bad("GET /\r\n");
}

Test(http1_reject, http20_and_http12)
{
    h1_expect_bad("GET / HTTP/2.0\r\n\r\n");
    h1_expect_bad("GET / HTTP/1.2\r\n\r\n");
    h1_expect_bad("GET / HTTP/0.9\r\n\r\n");
    h1_expect_bad("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

Test(http1_reject, multiple_host_headers)
{
    h1_expect_bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    cr_assert_str_eq(h1_why, "multiple Host headers");
    h1_expect_bad("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n");
}

/* aigw reads the first Content-Type (415, the AI path); a backend might read
 * the other: two are refused even when equal. */
Test(http1_reject, multiple_content_type_headers)
{
    h1_expect_bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                  "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    cr_assert_str_eq(h1_why, "multiple Content-Type headers");
    h1_expect_bad("POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                  "content-type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    cr_assert_eq(h1_parse_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json; charset=utf-8\r\n"
                              "Content-Length: 2\r\n\r\n{}"),
                 HTTP_OK, "%s", h1_why);
    /* a response may repeat it: only requests are checked */
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Type: a/b\r\n"
                               "Content-Length: 0\r\n\r\n",
                               METHOD_GET),
                 HTTP_OK, "%s", h1_why);
}

Test(http1_reject, null_why_is_allowed)
{
    const char *s = "GET / HTTP/9.9\r\n\r\n";
    cr_assert_eq(http_parse_request(s, strlen(s), H1_MAX_HEAD, &h1_req, NULL), HTTP_BAD);
}

/* ---------------- chunked ---------------- */

struct h1_sink {
    char buf[65536];
    size_t len;
    unsigned calls;
};

static void h1_collect(void *ctx, const char *p, size_t n)
{
    struct h1_sink *s = ctx;
    cr_assert_leq(s->len + n, sizeof s->buf);
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->calls++;
}

/* Feeds s in pieces of `step` bytes; returns the total consumed, or -1 on error. */
static ssize_t h1_feed(struct chunked *c, const char *s, size_t len, size_t step,
                       struct h1_sink *sink)
{
    size_t off = 0;
    while (off < len && !c->done) {
        size_t n = len - off < step ? len - off : step;
        ssize_t r = chunked_scan(c, s + off, n, h1_collect, sink, &h1_why);
        if (r < 0)
            return -1;
        cr_assert_leq((size_t)r, n);
        if ((size_t)r < n)
            cr_assert(c->done, "short count only when done");
        off += (size_t)r;
    }
    return (ssize_t)off;
}

static ssize_t h1_chunked_all(const char *s, struct h1_sink *sink)
{
    struct chunked c;
    chunked_init(&c);
    h1_why = NULL;
    return chunked_scan(&c, s, strlen(s), h1_collect, sink, &h1_why);
}

Test(http1_chunked, whole_body_at_once)
{
    static struct h1_sink sink;
    const char *s = "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    struct chunked c;
    chunked_init(&c);
    ssize_t r = chunked_scan(&c, s, strlen(s), h1_collect, &sink, &h1_why);
    cr_assert_eq(r, (ssize_t)strlen(s));
    cr_assert(c.done);
    cr_assert_eq(sink.len, 12);
    cr_assert_eq(memcmp(sink.buf, "hello, world", 12), 0);
    cr_assert_eq(chunked_scan(&c, "x", 1, NULL, NULL, &h1_why), 0, "nothing after done");
}

Test(http1_chunked, byte_by_byte_with_extensions_and_trailers)
{
    static struct h1_sink sink;
    const char *s = "A;name=value;x=\"quoted\"\r\n0123456789\r\n"
                    "1a \t;ext\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                    "0;last\r\nX-Checksum: abc\r\nX-Other:\tv \r\n\r\n";
    struct chunked c;
    chunked_init(&c);
    ssize_t r = h1_feed(&c, s, strlen(s), 1, &sink);
    cr_assert_eq(r, (ssize_t)strlen(s), "%s", h1_why);
    cr_assert(c.done);
    cr_assert_eq(sink.len, 36);
    cr_assert_eq(memcmp(sink.buf, "0123456789abcdefghijklmnopqrstuvwxyz", 36), 0);
}

Test(http1_chunked, every_split_size_gives_same_result)
{
    const char *s = "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
    for (size_t step = 1; step <= strlen(s); step++) {
        static struct h1_sink sink;
        sink.len = 0;
        struct chunked c;
        chunked_init(&c);
        cr_assert_eq(h1_feed(&c, s, strlen(s), step, &sink), (ssize_t)strlen(s), "step %zu", step);
        cr_assert_eq(sink.len, 19);
        cr_assert_eq(memcmp(sink.buf, "abc0123456789abcdef", 19), 0);
    }
}

Test(http1_chunked, exact_count_before_pipelined_request)
{
    const char *body = "4\r\nWiki\r\n0\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%s"
                              "GET /next HTTP/1.1\r\n\r\n", body);
    cr_assert_eq(h1_parse_req(buf), HTTP_OK);
    cr_assert_eq(h1_req.body, BODY_CHUNKED);
    const char *rest = buf + h1_req.head_len;
    struct chunked c;
    chunked_init(&c);
    ssize_t r = chunked_scan(&c, rest, strlen(rest), NULL, NULL, &h1_why);
    cr_assert_eq(r, (ssize_t)strlen(body));
    cr_assert(c.done);
    cr_assert_eq(h1_parse_req(rest + r), HTTP_OK);
    cr_assert(h1_slice_is(h1_req.path, "/next"));

    /* the same, fed one byte at a time */
    static struct h1_sink sink;
    chunked_init(&c);
    cr_assert_eq(h1_feed(&c, rest, strlen(rest), 1, &sink), (ssize_t)strlen(body));
}

Test(http1_chunked, largest_size_accepted)
{
    struct chunked c;
    chunked_init(&c);
    const char *s = "7fffffffffffffff\r\nab";
    cr_assert_eq(chunked_scan(&c, s, strlen(s), NULL, NULL, &h1_why), (ssize_t)strlen(s));
    cr_assert_eq(c.remaining, 0x7fffffffffffffffULL - 2);
    cr_assert_not(c.done);
}

Test(http1_chunked, invalid_size_letters)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("zz\r\nab\r\n0\r\n\r\n", &sink), -1);
    cr_assert_not_null(h1_why);
    cr_assert_eq(h1_chunked_all("5z\r\nhello\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, invalid_size_negative)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("-1\r\nx\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("+1\r\nx\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, invalid_size_empty)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("\r\nx\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all(";ext\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, invalid_size_17_hex_digits)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("00000000000000001\r\nx\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, size_overflow)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("8000000000000000\r\n", &sink), -1);
    cr_assert_str_eq(h1_why, "chunk size overflow");
    cr_assert_eq(h1_chunked_all("ffffffffffffffff\r\n", &sink), -1);
}

Test(http1_chunked, whitespace_only_before_extension)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("5 \r\nhello\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("5 5\r\nhello\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, missing_crlf_after_data)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("5\r\nhelloX\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("5\r\nhello\rX0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("5\r\nhello\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, bare_lf_and_bare_cr_in_size_line)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("5\nhello\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("5\rhello\r\n0\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\n\n", &sink), -1);
}

Test(http1_chunked, extension_too_long)
{
    static char s[6000];
    static struct h1_sink sink;
    memset(s, 'a', sizeof s - 1);
    memcpy(s, "1;", 2);
    s[sizeof s - 1] = '\0';
    cr_assert_eq(h1_chunked_all(s, &sink), -1);
    /* also when it trickles in */
    struct chunked c;
    chunked_init(&c);
    ssize_t r = 0;
    for (size_t i = 0; i < sizeof s - 1 && r >= 0; i++)
        r = chunked_scan(&c, s + i, 1, NULL, NULL, &h1_why);
    cr_assert_eq(r, -1);
}

Test(http1_chunked, control_char_in_extension)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("1;a\x01\r\nx\r\n0\r\n\r\n", &sink), -1);
}

Test(http1_chunked, trailers_too_large)
{
    static char s[20000];
    static struct h1_sink sink;
    size_t n = (size_t)snprintf(s, sizeof s, "0\r\n");
    while (n < 17000)
        n += (size_t)snprintf(s + n, sizeof s - n, "X-Trailer: %s\r\n",
                              "0123456789012345678901234567890123456789");
    snprintf(s + n, sizeof s - n, "\r\n");
    cr_assert_eq(h1_chunked_all(s, &sink), -1);
    cr_assert_str_eq(h1_why, "trailers too large");
}

Test(http1_chunked, malformed_trailers)
{
    static struct h1_sink sink;
    cr_assert_eq(h1_chunked_all("0\r\nX-T: a\r\n folded\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\nX-T : a\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\nX-T: a\x01\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\nNoColon\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\n: v\r\n\r\n", &sink), -1);
    cr_assert_eq(h1_chunked_all("0\r\nX-T: a\rb\r\n\r\n", &sink), -1);
}

Test(http1_chunked, error_is_sticky)
{
    struct chunked c;
    chunked_init(&c);
    cr_assert_eq(chunked_scan(&c, "g", 1, NULL, NULL, &h1_why), -1);
    cr_assert_eq(chunked_scan(&c, "0\r\n\r\n", 5, NULL, NULL, &h1_why), -1);
}

/* ---------------- responses ---------------- */

Test(http1_resp, content_length)
{
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    cr_assert_eq(h1_parse_resp(s, METHOD_POST), HTTP_OK, "%s", h1_why);
    cr_assert_eq(h1_resp.status, 200);
    cr_assert_eq(h1_resp.minor, 1);
    cr_assert(h1_slice_is(h1_resp.reason, "OK"));
    cr_assert_eq(h1_resp.body, BODY_LENGTH);
    cr_assert_eq(h1_resp.content_length, 2);
    cr_assert(h1_resp.keep_alive);
    cr_assert_eq(h1_resp.head_len + 2, strlen(s));
    cr_assert_eq(h1_resp.nheaders, 2);
}

Test(http1_resp, no_content_204)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 204 No Content\r\n\r\n", METHOD_DELETE), HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_NONE);
    cr_assert(h1_resp.keep_alive);
}

Test(http1_resp, head_response_has_no_body)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", METHOD_HEAD),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_NONE);
    cr_assert_eq(h1_resp.content_length, 1234);
    cr_assert(h1_resp.keep_alive);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", METHOD_HEAD),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_NONE);
}

Test(http1_resp, not_modified_304)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", METHOD_GET),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_NONE);
    cr_assert(h1_resp.keep_alive);
}

Test(http1_resp, chunked)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", METHOD_POST),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_CHUNKED);
    cr_assert(h1_resp.keep_alive);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", METHOD_POST),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_CHUNKED);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                               METHOD_POST), HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_CHUNKED);
}

Test(http1_resp, chunked_not_final_or_twice_rejected)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", METHOD_GET),
                 HTTP_BAD);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", METHOD_GET),
                 HTTP_BAD);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                               METHOD_GET), HTTP_BAD);
}

Test(http1_resp, transfer_encoding_in_http10_rejected)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", METHOD_GET),
                 HTTP_BAD);
}

Test(http1_resp, until_close)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", METHOD_GET),
                 HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_UNTIL_CLOSE);
    cr_assert_not(h1_resp.keep_alive);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", METHOD_GET), HTTP_OK);
    cr_assert_eq(h1_resp.body, BODY_UNTIL_CLOSE);
    cr_assert_not(h1_resp.keep_alive);
}

Test(http1_resp, interim_100_then_final)
{
    const char *s = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    cr_assert_eq(h1_parse_resp(s, METHOD_POST), HTTP_OK);
    cr_assert_eq(h1_resp.status, 100);
    cr_assert_eq(h1_resp.body, BODY_NONE);
    cr_assert_eq(h1_resp.head_len, strlen("HTTP/1.1 100 Continue\r\n\r\n"));
    cr_assert_eq(h1_parse_resp(s + h1_resp.head_len, METHOD_POST), HTTP_OK);
    cr_assert_eq(h1_resp.status, 201);
    cr_assert_eq(h1_resp.body, BODY_LENGTH);
    cr_assert_eq(h1_resp.content_length, 0);
}

Test(http1_resp, reason_phrase_forms)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", METHOD_GET), HTTP_OK);
    cr_assert_eq(h1_resp.reason.len, 0);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", METHOD_GET), HTTP_OK);
    cr_assert_eq(h1_resp.reason.len, 0);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 404 Not  Found\t!\r\nContent-Length: 0\r\n\r\n", METHOD_GET),
                 HTTP_OK);
    cr_assert(h1_slice_is(h1_resp.reason, "Not  Found\t!"));
}

Test(http1_resp, http10_keep_alive)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", METHOD_GET), HTTP_OK);
    cr_assert_eq(h1_resp.minor, 0);
    cr_assert_not(h1_resp.keep_alive);
    cr_assert_eq(h1_parse_resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                               METHOD_GET), HTTP_OK);
    cr_assert(h1_resp.keep_alive);
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                               METHOD_GET), HTTP_OK);
    cr_assert_not(h1_resp.keep_alive);
}

Test(http1_resp, bad_status_lines)
{
    const char *bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 099 X\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n", "HTTP/2 200 OK\r\n\r\n", "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\n\r\n", "HTTP/1.1 200 OK\rX\r\n\r\n", "HTTP/1.1 200 O\x01K\r\n\r\n", "ICY 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(h1_parse_resp(bad[i], METHOD_GET), HTTP_BAD, "%zu: %s", i, bad[i]);
}

Test(http1_resp, incomplete_and_too_large)
{
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\n";
    size_t len = strlen(s);
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(http_parse_response(s, i, H1_MAX_HEAD, METHOD_GET, &h1_resp, &h1_why),
                     HTTP_INCOMPLETE, "prefix %zu", i);
    cr_assert_eq(http_parse_response(s, len, len - 1, METHOD_GET, &h1_resp, &h1_why), HTTP_TOO_LARGE);
}

/* ---------------- serialisers ---------------- */

Test(http1_write, upstream_head_round_trip)
{
    const char *s = "POST /v1/chat/completions HTTP/1.1\r\n"
                    "Host: gw.example:8080\r\n"
                    "Connection: keep-alive, X-Secret\r\n"
                    "X-Secret: drop-me\r\n"
                    "Keep-Alive: timeout=5\r\n"
                    "TE: trailers\r\n"
                    "Upgrade: h2c\r\n"
                    "Proxy-Authorization: Basic abc\r\n"
                    "X-Forwarded-For: 1.1.1.1\r\n"
                    "X-Request-Id: client-id\r\n"
                    "X-Forwarded-Proto: https\r\n"
                    "Expect: 100-continue\r\n"
                    "Authorization: Bearer client-key\r\n"
                    "x-api-key: client-key\r\n"
                    "x-forwarded-for: 2.2.2.2, 3.3.3.3\r\n"
                    "Content-Type: application/json\r\n"
                    "traceparent: 00-abc-def-01\r\n"
                    "Content-Length: 42\r\n"
                    "\r\n";
    cr_assert_eq(h1_parse_req(s), HTTP_OK, "%s", h1_why);
    struct http_forward fwd = {
        .client_addr = { "10.0.0.7", 8 },
        .proto = { "http", 4 },
        .request_id = { "gen-123", 7 },
        .upstream_auth = { "backend-secret", 14 },
        .strip_client_auth = true,
    };
    char out[2048];
    size_t n = http_write_upstream_head(out, sizeof out, &h1_req, &fwd);
    cr_assert_gt(n, 0);

    static struct http_request up;
    cr_assert_eq(http_parse_request(out, n, sizeof out, &up, &h1_why), HTTP_OK, "%.*s", (int)n, out);
    cr_assert_eq(up.head_len, n);
    cr_assert_eq(up.minor, 1);
    cr_assert(h1_slice_is(up.method, "POST"));
    cr_assert(h1_slice_is(up.target, "/v1/chat/completions"));
    cr_assert_eq(up.body, BODY_LENGTH);
    cr_assert_eq(up.content_length, 42);
    cr_assert(up.keep_alive);
    cr_assert_not(up.expect_continue);
    const char *gone[] = { "x-secret", "keep-alive", "te", "upgrade", "proxy-authorization", "expect",
                           "x-api-key" };
    for (size_t i = 0; i < sizeof gone / sizeof *gone; i++)
        cr_assert_null(h1_find(up.headers, up.nheaders, gone[i]), "%s must be removed", gone[i]);
    const struct {
        const char *name, *value;
    } want[] = {
        { "connection", "keep-alive" },
        { "host", "gw.example:8080" },
        { "x-forwarded-for", "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7" },
        { "x-forwarded-proto", "http" },
        { "x-request-id", "gen-123" },
        { "authorization", "Bearer backend-secret" },
        { "content-type", "application/json" },
        { "traceparent", "00-abc-def-01" },
        { "content-length", "42" },
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        cr_assert_eq(h1_count(up.headers, up.nheaders, want[i].name), 1, "one %s", want[i].name);
        const struct http_header *h = h1_find(up.headers, up.nheaders, want[i].name);
        cr_assert(h1_slice_is(h->value, want[i].value), "%s: %.*s", want[i].name, (int)h->value.len,
                  h->value.p);
    }
    cr_assert(h1_slice_is(up.headers[up.idx[HK_HOST]].name, "Host"), "names keep their case");
    cr_assert(h1_slice_is(up.headers[up.idx[HK_TRACEPARENT]].name, "traceparent"));
}

Test(http1_write, upstream_head_client_auth_kept_and_no_xff)
{
    cr_assert_eq(h1_parse_req("GET /v1/models HTTP/1.0\r\nAuthorization: Bearer k\r\nx-api-key: k\r\n\r\n"),
                 HTTP_OK);
    struct http_forward fwd = { .client_addr = { "::1", 3 }, .proto = { "http", 4 },
                                .request_id = { "r1", 2 } };
    char out[512];
    size_t n = http_write_upstream_head(out, sizeof out, &h1_req, &fwd);
    cr_assert_gt(n, 0);
    static struct http_request up;
    cr_assert_eq(http_parse_request(out, n, sizeof out, &up, &h1_why), HTTP_OK);
    cr_assert_eq(up.minor, 1, "upstream requests are HTTP/1.1");
    cr_assert_eq(up.body, BODY_NONE);
    cr_assert_null(h1_find(up.headers, up.nheaders, "content-length"));
    cr_assert_not_null(h1_find(up.headers, up.nheaders, "authorization"));
    cr_assert_not_null(h1_find(up.headers, up.nheaders, "x-api-key"));
    cr_assert(h1_slice_is(h1_find(up.headers, up.nheaders, "x-forwarded-for")->value, "::1"));
}

Test(http1_write, upstream_head_chunked_framing)
{
    cr_assert_eq(h1_parse_req("POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"), HTTP_OK);
    struct http_forward fwd = { .client_addr = { "1.2.3.4", 7 } };
    char out[512];
    size_t n = http_write_upstream_head(out, sizeof out, &h1_req, &fwd);
    static struct http_request up;
    cr_assert_eq(http_parse_request(out, n, sizeof out, &up, &h1_why), HTTP_OK);
    cr_assert_eq(up.body, BODY_CHUNKED);
    cr_assert_eq(h1_count(up.headers, up.nheaders, "transfer-encoding"), 1);
    cr_assert_null(h1_find(up.headers, up.nheaders, "x-request-id"));
    cr_assert_null(h1_find(up.headers, up.nheaders, "x-forwarded-proto"));
}

Test(http1_write, upstream_head_does_not_overflow)
{
    cr_assert_eq(h1_parse_req("POST /abc HTTP/1.1\r\nHost: h\r\nX-A: 123\r\nContent-Length: 10\r\n\r\n"),
                 HTTP_OK);
    struct http_forward fwd = { .client_addr = { "1.2.3.4", 7 }, .proto = { "http", 4 },
                                .request_id = { "id", 2 } };
    char full[512];
    size_t need = http_write_upstream_head(full, sizeof full, &h1_req, &fwd);
    cr_assert_gt(need, 0);
    for (size_t cap = 0; cap < need; cap++) {
        char out[512];
        memset(out, 'Z', sizeof out);
        cr_assert_eq(http_write_upstream_head(out, cap, &h1_req, &fwd), 0, "cap %zu", cap);
        for (size_t i = cap; i < sizeof out; i++)
            cr_assert_eq(out[i], 'Z', "wrote past cap %zu", cap);
    }
    char exact[512];
    cr_assert_eq(http_write_upstream_head(exact, need, &h1_req, &fwd), need);
    cr_assert_eq(memcmp(exact, full, need), 0);
}

Test(http1_write, client_head_round_trip)
{
    const char *s = "HTTP/1.1 200 OK\r\n"
                    "Content-Type: text/event-stream\r\n"
                    "Connection: keep-alive, X-Internal\r\n"
                    "X-Internal: 1\r\n"
                    "Keep-Alive: timeout=10\r\n"
                    "Transfer-Encoding: chunked\r\n"
                    "Cache-Control: no-cache\r\n"
                    "\r\n";
    cr_assert_eq(h1_parse_resp(s, METHOD_POST), HTTP_OK);
    const char *extra = "x-request-id: abc\r\nx-ratelimit-limit-requests: 10\r\n";
    char out[1024];
    size_t n = http_write_client_head(out, sizeof out, &h1_resp, false,
                                      (struct slice){ extra, strlen(extra) });
    cr_assert_gt(n, 0);
    static struct http_response back;
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_POST, &back, &h1_why), HTTP_OK,
                 "%.*s", (int)n, out);
    cr_assert_eq(back.head_len, n);
    cr_assert_eq(back.status, 200);
    cr_assert_eq(back.body, BODY_CHUNKED);
    cr_assert_not(back.keep_alive);
    cr_assert_null(h1_find(back.headers, back.nheaders, "x-internal"));
    cr_assert_null(h1_find(back.headers, back.nheaders, "keep-alive"));
    cr_assert_eq(h1_count(back.headers, back.nheaders, "connection"), 1);
    cr_assert(h1_slice_is(h1_find(back.headers, back.nheaders, "connection")->value, "close"));
    cr_assert(h1_slice_is(h1_find(back.headers, back.nheaders, "x-request-id")->value, "abc"));
    cr_assert(h1_slice_is(h1_find(back.headers, back.nheaders, "cache-control")->value, "no-cache"));
}

Test(http1_write, client_head_framing_variants)
{
    char out[512];
    static struct http_response back;
    struct slice none = { NULL, 0 };
    size_t n;

    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
                               METHOD_GET), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, true, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &back, &h1_why), HTTP_OK);
    cr_assert_eq(back.body, BODY_LENGTH);
    cr_assert_eq(back.content_length, 7);
    cr_assert_eq(h1_count(back.headers, back.nheaders, "content-length"), 1);
    cr_assert(back.keep_alive);

    /* HEAD: the length is passed on, no body follows */
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", METHOD_HEAD), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, true, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_HEAD, &back, &h1_why), HTTP_OK);
    cr_assert_eq(back.content_length, 99);

    /* 204 never carries a length */
    cr_assert_eq(h1_parse_resp("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", METHOD_GET), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, true, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &back, &h1_why), HTTP_OK);
    cr_assert_null(h1_find(back.headers, back.nheaders, "content-length"));

    /* until-close: no framing header; empty reason gets the standard one */
    cr_assert_eq(h1_parse_resp("HTTP/1.0 200\r\nServer: old\r\n\r\n", METHOD_GET), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, false, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &back, &h1_why), HTTP_OK);
    cr_assert_eq(back.body, BODY_UNTIL_CLOSE);
    cr_assert_eq(back.minor, 1);
    cr_assert(h1_slice_is(back.reason, "OK"));

    /* transfer codings other than chunked reach the client as the backend sent them */
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                               METHOD_GET), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, true, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &back, &h1_why), HTTP_OK);
    cr_assert_eq(back.body, BODY_CHUNKED);
    cr_assert_eq(h1_count(back.headers, back.nheaders, "transfer-encoding"), 1);
    cr_assert(h1_slice_is(h1_find(back.headers, back.nheaders, "transfer-encoding")->value, "gzip, chunked"));
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", METHOD_GET), HTTP_OK);
    n = http_write_client_head(out, sizeof out, &h1_resp, false, none);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &back, &h1_why), HTTP_OK);
    cr_assert_eq(back.body, BODY_UNTIL_CLOSE);
    cr_assert(h1_slice_is(h1_find(back.headers, back.nheaders, "transfer-encoding")->value, "gzip"));

    cr_assert_eq(http_write_client_head(out, 10, &h1_resp, false, none), 0);
}

Test(http1_write, error_response)
{
    char out[1024];
    const char *msg = "bad \"model\" \\ path\n\ttab \x01 caf\xc3\xa9 \xff end";
    const char *extra = "Retry-After: 1\r\n";
    size_t n = openai_write_error(out, sizeof out, 429, "rate_limit_exceeded", "requests", msg, true,
                                (struct slice){ extra, strlen(extra) });
    cr_assert_gt(n, 0);
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_POST, &h1_resp, &h1_why), HTTP_OK,
                 "%.*s", (int)n, out);
    cr_assert_eq(h1_resp.status, 429);
    cr_assert(h1_slice_is(h1_resp.reason, "Too Many Requests"));
    cr_assert_eq(h1_resp.body, BODY_LENGTH);
    cr_assert(h1_resp.keep_alive);
    cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "content-type")->value,
                          "application/json"));
    cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "retry-after")->value, "1"));
    const char *want = "{\"error\":{\"message\":\"bad \\\"model\\\" \\\\ path\\n\\ttab \\u0001 "
                       "caf\xc3\xa9 \\ufffd end\",\"type\":\"rate_limit_exceeded\",\"code\":\"requests\"}}";
    cr_assert_eq(h1_resp.content_length, strlen(want));
    cr_assert_eq(h1_resp.head_len + h1_resp.content_length, n, "Content-Length matches the body");
    cr_assert_eq(memcmp(out + h1_resp.head_len, want, strlen(want)), 0, "%.*s",
                 (int)(n - h1_resp.head_len), out + h1_resp.head_len);
}

Test(http1_write, error_response_null_code_and_close)
{
    char out[512];
    size_t n = openai_write_error(out, sizeof out, 404, "invalid_request_error", NULL, "no route", false,
                                (struct slice){ NULL, 0 });
    cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_GET, &h1_resp, &h1_why), HTTP_OK);
    cr_assert_eq(h1_resp.status, 404);
    cr_assert_not(h1_resp.keep_alive);
    cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "connection")->value, "close"));
    const char *want = "{\"error\":{\"message\":\"no route\",\"type\":\"invalid_request_error\",\"code\":null}}";
    cr_assert_eq(h1_resp.content_length, strlen(want));
    cr_assert_eq(n - h1_resp.head_len, strlen(want));
    cr_assert_eq(memcmp(out + h1_resp.head_len, want, strlen(want)), 0);
}

Test(http1_write, error_response_does_not_overflow)
{
    char full[512];
    size_t need = openai_write_error(full, sizeof full, 502, "server_error", "upstream_error", "x\"y", false,
                                   (struct slice){ NULL, 0 });
    cr_assert_gt(need, 0);
    for (size_t cap = 0; cap < need; cap++) {
        char out[512];
        memset(out, 'Z', sizeof out);
        cr_assert_eq(openai_write_error(out, cap, 502, "server_error", "upstream_error", "x\"y", false,
                                      (struct slice){ NULL, 0 }), 0, "cap %zu", cap);
        for (size_t i = cap; i < sizeof out; i++)
            cr_assert_eq(out[i], 'Z', "wrote past cap %zu", cap);
    }
    char exact[512];
    cr_assert_eq(openai_write_error(exact, need, 502, "server_error", "upstream_error", "x\"y", false,
                                  (struct slice){ NULL, 0 }), need);
}

/* ---- http_write_json_head, and openai_write_error built on it ---- */

static const struct slice h1_none = { NULL, 0 };

static struct slice h1_sl(const char *s)
{
    return (struct slice){ s, strlen(s) };
}

static void h1_expect_json_head(int status, size_t body_len, bool keep_alive, const char *extra,
                                const char *want)
{
    char out[512];
    memset(out, 'Z', sizeof out);
    size_t n = http_write_json_head(out, sizeof out, status, body_len, keep_alive,
                                    extra ? h1_sl(extra) : h1_none);
    cr_assert_eq(n, strlen(want), "got %zu bytes: %.*s", n, (int)n, out);
    cr_assert_eq(memcmp(out, want, n), 0, "got: %.*s", (int)n, out);
    cr_assert_eq(out[n], 'Z', "wrote past the head");
}

Test(http1_write, json_head_exact_bytes)
{
    h1_expect_json_head(200, 42, true, NULL,
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 42\r\n"
        "Connection: keep-alive\r\n"
        "\r\n");
    h1_expect_json_head(200, 0, false, "",
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 0\r\n"
        "Connection: close\r\n"
        "\r\n");
    h1_expect_json_head(429, 1234567, true, "Retry-After: 3\r\nx-ratelimit-limit-requests: 60\r\n",
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 1234567\r\n"
        "Connection: keep-alive\r\n"
        "Retry-After: 3\r\n"
        "x-ratelimit-limit-requests: 60\r\n"
        "\r\n");
    h1_expect_json_head(299, SIZE_MAX, false, "X-Request-Id: r1\r\n",
        "HTTP/1.1 299 Unknown\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 18446744073709551615\r\n"
        "Connection: close\r\n"
        "X-Request-Id: r1\r\n"
        "\r\n");
}

Test(http1_write, json_head_parses_back)
{
    static const char body[] = "{\"object\":\"list\",\"data\":[]}";
    char out[512];
    const char *extra = "Retry-After: 7\r\n";
    for (int ka = 0; ka <= 1; ka++) {
        size_t n = http_write_json_head(out, sizeof out, 200, sizeof body - 1, ka, h1_sl(extra));
        cr_assert_gt(n, 0);
        cr_assert_lt(n + sizeof body - 1, sizeof out);
        memcpy(out + n, body, sizeof body - 1);
        cr_assert_eq(http_parse_response(out, n + sizeof body - 1, sizeof out, METHOD_GET, &h1_resp,
                                         &h1_why), HTTP_OK, "%.*s", (int)n, out);
        cr_assert_eq(h1_resp.status, 200);
        cr_assert_eq(h1_resp.head_len, n);
        cr_assert_eq(h1_resp.body, BODY_LENGTH);
        cr_assert_eq(h1_resp.content_length, sizeof body - 1);
        cr_assert_eq(h1_resp.keep_alive, (bool)ka);
        cr_assert_eq(h1_count(h1_resp.headers, h1_resp.nheaders, "content-type"), 1);
        cr_assert_eq(h1_count(h1_resp.headers, h1_resp.nheaders, "content-length"), 1);
        cr_assert_eq(h1_count(h1_resp.headers, h1_resp.nheaders, "connection"), 1);
        cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "content-type")->value,
                              "application/json"));
        cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "connection")->value,
                              ka ? "keep-alive" : "close"));
        cr_assert(h1_slice_is(h1_find(h1_resp.headers, h1_resp.nheaders, "retry-after")->value, "7"));
    }
}

Test(http1_write, json_head_does_not_overflow)
{
    static const char *const extras[] = { NULL, "Retry-After: 1\r\n",
                                          "A: 1\r\nB: 2\r\nC: 3\r\n" };
    for (size_t x = 0; x < sizeof extras / sizeof extras[0]; x++)
        for (int ka = 0; ka <= 1; ka++) {
            struct slice extra = extras[x] ? h1_sl(extras[x]) : h1_none;
            char full[512];
            size_t need = http_write_json_head(full, sizeof full, 503, 987654321, ka, extra);
            cr_assert_gt(need, 0);
            for (size_t cap = 0; cap < need; cap++) {
                char out[512];
                memset(out, 'Z', sizeof out);
                cr_assert_eq(http_write_json_head(out, cap, 503, 987654321, ka, extra), 0,
                             "extra %zu keep_alive %d cap %zu", x, ka, cap);
                for (size_t i = cap; i < sizeof out; i++)
                    cr_assert_eq(out[i], 'Z', "wrote past cap %zu", cap);
            }
            char exact[512];
            memset(exact, 'Z', sizeof exact);
            cr_assert_eq(http_write_json_head(exact, need, 503, 987654321, ka, extra), need);
            cr_assert_eq(memcmp(exact, full, need), 0);
            cr_assert_eq(exact[need], 'Z');
        }
}

Test(http1_write, error_response_exact_bytes)
{
    char out[1024];
    const char *want =
        "HTTP/1.1 429 Too Many Requests\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 102\r\n"
        "Connection: keep-alive\r\n"
        "Retry-After: 20\r\n"
        "\r\n"
        "{\"error\":{\"message\":\"Rate limit reached for requests\",\"type\":\"rate_limit_exceeded\","
        "\"code\":\"requests\"}}";
    size_t n = openai_write_error(out, sizeof out, 429, "rate_limit_exceeded", "requests",
                                "Rate limit reached for requests", true, h1_sl("Retry-After: 20\r\n"));
    cr_assert_eq(n, strlen(want), "%.*s", (int)n, out);
    cr_assert_eq(memcmp(out, want, n), 0, "%.*s", (int)n, out);

    want =
        "HTTP/1.1 404 Not Found\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 86\r\n"
        "Connection: close\r\n"
        "\r\n"
        "{\"error\":{\"message\":\"no route for \\\"/x\\\"\",\"type\":\"invalid_request_error\","
        "\"code\":null}}";
    n = openai_write_error(out, sizeof out, 404, "invalid_request_error", NULL, "no route for \"/x\"",
                         false, h1_none);
    cr_assert_eq(n, strlen(want), "%.*s", (int)n, out);
    cr_assert_eq(memcmp(out, want, n), 0, "%.*s", (int)n, out);
}

Test(http1_write, error_response_is_json_head_plus_body)
{
    static const struct {
        int status;
        const char *type, *code, *message, *extra;
        bool keep_alive;
    } cases[] = {
        { 400, "invalid_request_error", "bad_json", "bad \"body\"\n\x01\xff caf\xc3\xa9", NULL, true },
        { 401, "invalid_request_error", "invalid_api_key", "", "WWW-Authenticate: Bearer\r\n", false },
        { 503, "server_error", NULL, "all backends busy", "Retry-After: 1\r\nX-Request-Id: q\r\n", true },
        { 299, "", "", "x", "", false },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct slice extra = cases[c].extra ? h1_sl(cases[c].extra) : h1_none;
        char out[1024];
        size_t n = openai_write_error(out, sizeof out, cases[c].status, cases[c].type, cases[c].code,
                                    cases[c].message, cases[c].keep_alive, extra);
        cr_assert_gt(n, 0);
        cr_assert_eq(http_parse_response(out, n, sizeof out, METHOD_POST, &h1_resp, &h1_why), HTTP_OK,
                     "case %zu: %.*s", c, (int)n, out);
        size_t body_len = n - h1_resp.head_len;
        cr_assert_eq(h1_resp.content_length, body_len, "case %zu", c);
        char head[512];
        size_t hn = http_write_json_head(head, sizeof head, cases[c].status, body_len,
                                         cases[c].keep_alive, extra);
        cr_assert_eq(hn, h1_resp.head_len, "case %zu", c);
        cr_assert_eq(memcmp(out, head, hn), 0, "case %zu: the error's head is the JSON head", c);
        cr_assert_eq(memcmp(out + hn, "{\"error\":{\"message\":\"", 21), 0);
        cr_assert_eq(memcmp(out + n - 2, "}}", 2), 0);
    }
}

Test(http1_write, error_response_with_extra_does_not_overflow)
{
    struct slice extra = h1_sl("Retry-After: 20\r\n");
    char full[512];
    size_t need = openai_write_error(full, sizeof full, 429, "rate_limit_exceeded", "tokens",
                                   "slow \"down\"", true, extra);
    cr_assert_gt(need, 0);
    for (size_t cap = 0; cap < need; cap++) {
        char out[512];
        memset(out, 'Z', sizeof out);
        cr_assert_eq(openai_write_error(out, cap, 429, "rate_limit_exceeded", "tokens", "slow \"down\"",
                                      true, extra), 0, "cap %zu", cap);
        /* the head may be written before the body is found not to fit, but never past cap */
        for (size_t i = cap; i < sizeof out; i++)
            cr_assert_eq(out[i], 'Z', "wrote past cap %zu", cap);
    }
    char exact[512];
    cr_assert_eq(openai_write_error(exact, need, 429, "rate_limit_exceeded", "tokens", "slow \"down\"",
                                  true, extra), need);
    cr_assert_eq(memcmp(exact, full, need), 0);
}

Test(http1_misc, reason_phrases)
{
    cr_assert_str_eq(http_reason(200), "OK");
    cr_assert_str_eq(http_reason(400), "Bad Request");
    cr_assert_str_eq(http_reason(413), "Content Too Large");
    cr_assert_str_eq(http_reason(431), "Request Header Fields Too Large");
    cr_assert_str_eq(http_reason(502), "Bad Gateway");
    cr_assert_str_eq(http_reason(504), "Gateway Timeout");
    cr_assert_str_eq(http_reason(299), "Unknown");
}

Test(http1_misc, slice_eq_lower)
{
    cr_assert(slice_eq_lower((struct slice){ "Chunked", 7 }, "chunked"));
    cr_assert_not(slice_eq_lower((struct slice){ "chunke", 6 }, "chunked"));
    cr_assert_not(slice_eq_lower((struct slice){ "chunkedx", 8 }, "chunked"));
    cr_assert(slice_eq_lower((struct slice){ NULL, 0 }, ""));
    cr_assert_not(slice_eq_lower((struct slice){ "\x11", 1 }, "1"), "only letters fold");
}

/* ---- serialiser details the proxy relies on ---- */

Test(http1_ser, missing_host_gets_the_default_host)
{
    cr_assert_eq(h1_parse_req("GET /v1/models HTTP/1.0\r\n\r\n"), HTTP_OK);
    struct http_forward fwd = { .default_host = { "10.0.0.1:8000", 13 } };
    char out[1024];
    size_t n = http_write_upstream_head(out, sizeof out, &h1_req, &fwd);
    cr_assert_gt(n, 0);
    out[n] = 0;
    cr_assert_not_null(strstr(out, "\r\nHost: 10.0.0.1:8000\r\n"), "%s", out);
}

Test(http1_ser, client_host_is_kept_and_not_doubled)
{
    cr_assert_eq(h1_parse_req("GET / HTTP/1.1\r\nHost: api.example\r\n\r\n"), HTTP_OK);
    struct http_forward fwd = { .default_host = { "10.0.0.1:8000", 13 } };
    char out[1024];
    size_t n = http_write_upstream_head(out, sizeof out, &h1_req, &fwd);
    cr_assert_gt(n, 0);
    out[n] = 0;
    cr_assert_not_null(strstr(out, "Host: api.example\r\n"));
    cr_assert_null(strstr(out, "10.0.0.1"), "%s", out);
}

Test(http1_ser, backend_request_id_is_replaced_by_ours)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nX-Request-Id: backend-id\r\nContent-Length: 0\r\n\r\n",
                               METHOD_GET), HTTP_OK);
    char out[1024];
    static const char ours[] = "x-request-id: ours\r\n";
    size_t n = http_write_client_head(out, sizeof out, &h1_resp, true, (struct slice){ ours, sizeof ours - 1 });
    cr_assert_gt(n, 0);
    out[n] = 0;
    cr_assert_null(strstr(out, "backend-id"), "%s", out);
    cr_assert_not_null(strstr(out, "x-request-id: ours\r\n"));
}

Test(http1_ser, dechunked_body_drops_the_chunked_coding)
{
    cr_assert_eq(h1_parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", METHOD_GET), HTTP_OK);
    h1_resp.body = BODY_UNTIL_CLOSE;   /* how the proxy frames it for an HTTP/1.0 client */
    char out[1024];
    size_t n = http_write_client_head(out, sizeof out, &h1_resp, false, (struct slice){ "", 0 });
    cr_assert_gt(n, 0);
    out[n] = 0;
    cr_assert_null(strstr(out, "chunked"), "%s", out);
    cr_assert_not_null(strstr(out, "Connection: close\r\n"));
}

/* ---- chunk data moved unseen (the relay splices it) ---- */

Test(http1_chunked, data_left_and_skip_follow_the_framing)
{
    struct chunked c;
    chunked_init(&c);
    const char *why = NULL;
    static const char start[] = "a\r\n0123";
    cr_assert_eq(chunked_scan(&c, start, sizeof start - 1, NULL, NULL, &why), (ssize_t)(sizeof start - 1));
    cr_assert_eq(chunked_data_left(&c), 6, "10-byte chunk, 4 seen");
    chunked_skip_data(&c, 6);
    cr_assert_eq(chunked_data_left(&c), 0);
    static const char rest[] = "\r\n0\r\n\r\n";
    cr_assert_eq(chunked_scan(&c, rest, sizeof rest - 1, NULL, NULL, &why), (ssize_t)(sizeof rest - 1));
    cr_assert(c.done);
}

Test(http1_chunked, skipping_outside_data_is_an_error)
{
    struct chunked c;
    chunked_init(&c);
    const char *why = NULL;
    cr_assert_eq(chunked_data_left(&c), 0, "no chunk size read yet");
    chunked_skip_data(&c, 1);
    cr_assert_eq(chunked_scan(&c, "5\r\n", 3, NULL, NULL, &why), -1, "a bad skip must poison the scanner");

    chunked_init(&c);
    cr_assert_eq(chunked_scan(&c, "3\r\nab", 5, NULL, NULL, &why), 5);
    chunked_skip_data(&c, 2);   /* more than the 1 byte left */
    cr_assert_eq(chunked_scan(&c, "\r\n0\r\n\r\n", 7, NULL, NULL, &why), -1);
}
