/* HTTP/1.1 wire format: strict request/response head parsing, chunked framing,
 * and the head serialisers aigw needs. Pure functions over caller buffers; no I/O,
 * no allocation. Parsed heads are slices into the caller's buffer, valid as long
 * as that buffer is. */
#ifndef AIGW_PROTO_HTTP1_H
#define AIGW_PROTO_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HTTP_MAX_HEADERS 64

struct slice {
    const char *p;
    size_t len;
};

/* Header names aigw acts on; everything else is HK_OTHER and passed through. */
enum http_header_kind {
    HK_OTHER = 0,
    HK_HOST,
    HK_CONTENT_LENGTH,
    HK_TRANSFER_ENCODING,
    HK_CONNECTION,
    HK_KEEP_ALIVE,
    HK_PROXY_CONNECTION,
    HK_TE,
    HK_TRAILER,
    HK_UPGRADE,
    HK_EXPECT,
    HK_PROXY_AUTHORIZATION,
    HK_AUTHORIZATION,
    HK_X_API_KEY,
    HK_X_FORWARDED_FOR,
    HK_X_FORWARDED_PROTO,
    HK_X_REQUEST_ID,
    HK_TRACEPARENT,
    HK_CONTENT_TYPE,
};

struct http_header {
    struct slice name, value;   /* value has surrounding OWS trimmed */
    uint8_t kind;               /* enum http_header_kind */
    bool hop;                   /* hop-by-hop: a fixed hop-by-hop name, or named in Connection */
};

enum http_body {
    BODY_NONE,          /* no body */
    BODY_LENGTH,        /* content_length bytes follow */
    BODY_CHUNKED,       /* chunked coding; see struct chunked */
    BODY_UNTIL_CLOSE,   /* responses only: body ends when the server closes */
};

enum http_method {
    METHOD_OTHER, METHOD_GET, METHOD_HEAD, METHOD_POST, METHOD_PUT,
    METHOD_DELETE, METHOD_OPTIONS, METHOD_PATCH,
};

struct http_request {
    struct slice method;
    struct slice target;        /* as sent: origin-form "/a/b?x=1" */
    struct slice path;          /* target up to '?' */
    uint8_t method_id;          /* enum http_method */
    uint8_t minor;              /* HTTP/1.<minor>: 0 or 1 */
    bool keep_alive;            /* from version + Connection tokens */
    bool expect_continue;       /* Expect: 100-continue */
    bool expect_unmet;          /* an Expect member other than 100-continue: the head
                                 * parses, the caller answers 417 (RFC 9110 10.1.1) */
    uint8_t body;               /* enum http_body: NONE, LENGTH or CHUNKED */
    uint64_t content_length;
    size_t head_len;            /* bytes of the head, through the blank line */
    uint16_t nheaders;
    int16_t idx[HK_CONTENT_TYPE + 1]; /* index of the first header of each kind, -1 if absent */
    struct http_header headers[HTTP_MAX_HEADERS];
};

struct http_response {
    int status;
    uint8_t minor;
    bool keep_alive;
    uint8_t body;               /* enum http_body */
    uint64_t content_length;
    struct slice reason;
    size_t head_len;
    uint16_t nheaders;
    int16_t idx[HK_CONTENT_TYPE + 1];
    struct http_header headers[HTTP_MAX_HEADERS];
};

enum http_parse_status {
    HTTP_OK = 0,
    HTTP_INCOMPLETE = 1,        /* need more bytes (and len < max_head) */
    HTTP_BAD = 2,               /* malformed or forbidden: 400 (requests) / 502 (responses) */
    HTTP_TOO_LARGE = 3,         /* head longer than max_head, or too many headers: 431 */
};

/* Parses a request head at the start of buf[0..len). On HTTP_OK fills *req.
 * On HTTP_BAD / HTTP_TOO_LARGE sets *why to a static human-readable reason.
 * Rejects (HTTP_BAD): request-line garbage, HTTP/0.9 and versions other than
 * 1.0/1.1, obs-fold, whitespace before ':', control chars or bare CR in names or
 * values, both Content-Length and Transfer-Encoding, differing duplicate
 * Content-Length, non-numeric or overflowing Content-Length, Transfer-Encoding
 * other than exactly "chunked", Transfer-Encoding on HTTP/1.0, more than one Host
 * or Content-Type. An unmet Expect is not an error here: see expect_unmet. */
int http_parse_request(const char *buf, size_t len, size_t max_head,
                       struct http_request *req, const char **why);

/* Same for a response head. request_method decides bodies of HEAD answers;
 * 1xx/204/304 have no body. Neither Content-Length nor chunked: BODY_UNTIL_CLOSE.
 * A 1xx interim response parses as HTTP_OK with status < 200; the caller skips it. */
int http_parse_response(const char *buf, size_t len, size_t max_head, int request_method,
                        struct http_response *resp, const char **why);

/* Case-insensitive comparison of a slice with a NUL-terminated lowercase literal. */
bool slice_eq_lower(struct slice s, const char *lower);

/* ---- chunked coding, incremental ---- */

struct chunked {
    uint8_t state;
    bool done;                  /* the last chunk and trailers have been consumed */
    uint64_t remaining;         /* data bytes left in the current chunk */
    uint32_t line_len;          /* bytes in the current size/trailer line (bounded) */
    uint32_t trailer_bytes;
};

void chunked_init(struct chunked *c);

/* Scans buf[0..len) as the continuation of a chunked body. Returns how many bytes
 * belong to the body (== len unless the body ended inside buf; then the count up to
 * and including the final CRLF, and c->done is set), or -1 on a framing error with
 * *why set (bad hex, size overflow past 2^63, missing CRLF, line too long, trailers
 * over 16 KiB or malformed). If on_data is not NULL it is called with every span of
 * chunk data (not framing) in order, so a caller can de-chunk. */
ssize_t chunked_scan(struct chunked *c, const char *buf, size_t len,
                     void (*on_data)(void *ctx, const char *p, size_t n), void *ctx,
                     const char **why);

/* Data bytes of the current chunk not yet scanned (0 unless inside chunk data).
 * A caller may move up to that many bytes without showing them to chunked_scan
 * (a relay splicing them), then reports it with chunked_skip_data. */
uint64_t chunked_data_left(const struct chunked *c);
void chunked_skip_data(struct chunked *c, uint64_t n);

/* ---- serialisers ---- */

/* What a proxy adds to a forwarded request head. */
struct http_forward {
    struct slice client_addr;   /* appended to X-Forwarded-For */
    struct slice proto;         /* X-Forwarded-Proto value: "http" / "https" */
    struct slice request_id;    /* X-Request-Id value (client's or generated) */
    struct slice upstream_auth; /* non-empty: "Authorization: Bearer <this>" replaces the client's */
    struct slice default_host;  /* Host to send when the client sent none (HTTP/1.0) */
    struct slice host;          /* non-empty: the Host sent in place of the client's */
    struct slice traceparent;   /* non-empty: the traceparent sent in place of the client's */
    bool strip_client_auth;     /* drop Authorization and x-api-key from the client */
};

/* Writes the upstream request head: request line as HTTP/1.1, every non-hop header
 * except Expect, X-Forwarded-Proto, X-Request-Id (rewritten), X-Forwarded-For
 * (appended to) and, when fwd->traceparent is set, traceparent (replaced), then the framing header (Content-Length or Transfer-Encoding:
 * chunked, from req->body), "Connection: keep-alive", the forwarding headers, and
 * the blank line. Returns bytes written, or 0 if it did not fit in cap. */
size_t http_write_upstream_head(char *out, size_t cap, const struct http_request *req,
                                const struct http_forward *fwd);

/* Writes the client response head: "HTTP/1.1 <status> <reason>", every non-hop
 * header of resp except X-Request-Id (the caller puts its own in extra), the framing header for resp->body (BODY_UNTIL_CLOSE: none),
 * "Connection: keep-alive" or "Connection: close" per client_keep_alive, then
 * extra (already CRLF-terminated header lines, may be empty), then the blank line.
 * Returns bytes written, or 0 if it did not fit. */
size_t http_write_client_head(char *out, size_t cap, const struct http_response *resp,
                              bool client_keep_alive, struct slice extra);

/* The head of a complete response with a JSON body of body_len bytes (the caller
 * writes the body after it; OpenAI error bodies: proto/openai_error.h). extra as
 * above. Returns bytes written or 0. */
size_t http_write_json_head(char *out, size_t cap, int status, size_t body_len, bool keep_alive,
                            struct slice extra);

/* Reason phrase for a status code ("OK", "Bad Gateway", ...; "Unknown" otherwise). */
const char *http_reason(int status);

#endif
