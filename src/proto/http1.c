/* HTTP/1.1 per RFC 9112, strict: anything that two implementations could read
 * differently (the root of request smuggling) is rejected rather than repaired.
 * One pass over the bytes, table-driven, SSE2 for the long runs (targets and
 * header values); no allocation, no I/O. */
#include "proto/http1.h"

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "util/outbuf.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Internal only: ran out of bytes before the head ended. The public entry points
 * turn it into HTTP_INCOMPLETE or HTTP_TOO_LARGE depending on max_head. */
#define NEED_MORE (-1)

#define CL_MAX ((uint64_t)INT64_MAX)       /* keeps lengths safe for off_t/ssize_t users */
#define CHUNK_LINE_MAX 4096u
#define CHUNK_TRAILERS_MAX 16384u

/* Byte classes. C_TCHAR: RFC 9110 token char. C_VALUE: allowed inside a field value
 * (HTAB, SP, VCHAR, obs-text). C_TARGET: request-target byte (visible ASCII). */
enum { C_TCHAR = 1, C_VALUE = 2, C_TARGET = 4 };

static const uint8_t cclass[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    2, 7, 6, 7, 7, 7, 7, 7, 6, 6, 7, 7, 6, 7, 7, 6, /* 0x20 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, /* 0x30 */
    6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x40 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 7, 7, /* 0x50 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, /* 0x60 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 7, 6, 7, 0, /* 0x70 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x80 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x90 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xa0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xb0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xc0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xd0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xe0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0xf0 */
};

#define IS_TCHAR(c) (cclass[(uint8_t)(c)] & C_TCHAR)
#define IS_VALUE(c) (cclass[(uint8_t)(c)] & C_VALUE)
#define IS_OWS(c)   ((c) == ' ' || (c) == '\t')

static inline uint8_t ascii_lower(uint8_t c)
{
    return (uint8_t)(c - 'A') < 26 ? (uint8_t)(c | 0x20) : c;
}

static inline int hex_value(uint8_t c)
{
    if ((uint8_t)(c - '0') < 10)
        return c - '0';
    c |= 0x20;
    if ((uint8_t)(c - 'a') < 6)
        return c - 'a' + 10;
    return -1;
}

/* First byte at or after p outside [lo, 0x7e]; the caller decides what it is.
 * Bytes >= 0x80 stop the scan too (obs-text is rare and handled by the caller). */
static inline const char *skip_printable(const char *p, const char *end, uint8_t lo)
{
#ifdef __SSE2__
    const __m128i vlo = _mm_set1_epi8((char)lo), vdel = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        /* signed compare: 0x80..0xff are negative, so they count as "below lo" */
        __m128i stop = _mm_or_si128(_mm_cmplt_epi8(v, vlo), _mm_cmpeq_epi8(v, vdel));
        unsigned mask = (unsigned)_mm_movemask_epi8(stop);
        if (mask)
            return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    while (p < end && (uint8_t)((uint8_t)*p - lo) < (uint8_t)(0x7f - lo))
        p++;
    return p;
}

static inline uint64_t load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t load32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Compares a header name (tchar only, already validated) with a lowercase literal
 * of letters and '-'. OR-ing 0x20 into every byte is exact here: among tchars only
 * letters map onto letters, and only '-' maps onto '-'. Words at a time, the last
 * one overlapping; len is a constant at every call, so this unrolls. */
static inline bool name_is(const char *n, const char *lit, size_t len)
{
    const uint64_t fold8 = 0x2020202020202020ULL;
    const uint32_t fold4 = 0x20202020u;
    if (len >= 8) {
        for (size_t i = 0; i + 8 < len; i += 8)
            if ((load64(n + i) | fold8) != load64(lit + i))
                return false;
        return (load64(n + len - 8) | fold8) == load64(lit + len - 8);
    }
    if (len >= 4)
        return (load32(n) | fold4) == load32(lit) &&
               (load32(n + len - 4) | fold4) == load32(lit + len - 4);
    for (size_t i = 0; i < len; i++)
        if ((uint8_t)(n[i] | 0x20) != (uint8_t)lit[i])
            return false;
    return true;
}

static uint8_t classify_header(const char *n, size_t len)
{
    switch (len) {
    case 2:  return name_is(n, "te", 2) ? HK_TE : HK_OTHER;
    case 4:  return name_is(n, "host", 4) ? HK_HOST : HK_OTHER;
    case 6:  return name_is(n, "expect", 6) ? HK_EXPECT : HK_OTHER;
    case 7:
        if (name_is(n, "trailer", 7)) return HK_TRAILER;
        if (name_is(n, "upgrade", 7)) return HK_UPGRADE;
        return HK_OTHER;
    case 9:  return name_is(n, "x-api-key", 9) ? HK_X_API_KEY : HK_OTHER;
    case 10:
        if (name_is(n, "connection", 10)) return HK_CONNECTION;
        if (name_is(n, "keep-alive", 10)) return HK_KEEP_ALIVE;
        return HK_OTHER;
    case 11: return name_is(n, "traceparent", 11) ? HK_TRACEPARENT : HK_OTHER;
    case 12:
        if (name_is(n, "content-type", 12)) return HK_CONTENT_TYPE;
        if (name_is(n, "x-request-id", 12)) return HK_X_REQUEST_ID;
        return HK_OTHER;
    case 13: return name_is(n, "authorization", 13) ? HK_AUTHORIZATION : HK_OTHER;
    case 14: return name_is(n, "content-length", 14) ? HK_CONTENT_LENGTH : HK_OTHER;
    case 15: return name_is(n, "x-forwarded-for", 15) ? HK_X_FORWARDED_FOR : HK_OTHER;
    case 16: return name_is(n, "proxy-connection", 16) ? HK_PROXY_CONNECTION : HK_OTHER;
    case 17:
        if (name_is(n, "transfer-encoding", 17)) return HK_TRANSFER_ENCODING;
        if (name_is(n, "x-forwarded-proto", 17)) return HK_X_FORWARDED_PROTO;
        return HK_OTHER;
    case 19: return name_is(n, "proxy-authorization", 19) ? HK_PROXY_AUTHORIZATION : HK_OTHER;
    default: return HK_OTHER;
    }
}

static const bool kind_is_hop[HK_CONTENT_TYPE + 1] = {
    [HK_CONNECTION] = true, [HK_KEEP_ALIVE] = true, [HK_PROXY_CONNECTION] = true,
    [HK_TE] = true, [HK_TRAILER] = true, [HK_TRANSFER_ENCODING] = true,
    [HK_UPGRADE] = true, [HK_PROXY_AUTHORIZATION] = true,
};

bool slice_eq_lower(struct slice s, const char *lower)
{
    for (size_t i = 0; i < s.len; i++)
        if (lower[i] == '\0' || ascii_lower((uint8_t)s.p[i]) != (uint8_t)lower[i])
            return false;
    return lower[s.len] == '\0';
}

static bool slice_eq_ci(const char *a, const char *b, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (ascii_lower((uint8_t)a[i]) != ascii_lower((uint8_t)b[i]))
            return false;
    return true;
}

/* ---- comma-separated lists (Connection, Transfer-Encoding, Content-Length) ---- */

/* Iterates the elements of a #list value, OWS trimmed; empty elements ("a,,b")
 * come back as empty slices. */
struct list_iter {
    const char *p, *end;
    bool done;
};

static inline struct list_iter list_of(struct slice v)
{
    return (struct list_iter){ v.p, v.p + v.len, false };
}

static bool list_next(struct list_iter *it, struct slice *elem)
{
    if (it->done)
        return false;
    const char *p = it->p, *end = it->end;
    while (p < end && IS_OWS(*p))
        p++;
    const char *start = p;
    while (p < end && *p != ',')
        p++;
    const char *stop = p;
    while (stop > start && IS_OWS(stop[-1]))
        stop--;
    elem->p = start;
    elem->len = (size_t)(stop - start);
    if (p == end)
        it->done = true;
    else
        it->p = p + 1;
    return true;
}

/* Content-Length = 1*DIGIT, or a list of identical values ("5, 5") that some
 * senders produce when merging. Anything else is ambiguous framing. */
static bool parse_content_length(struct slice v, uint64_t *out)
{
    struct list_iter it = list_of(v);
    struct slice e;
    bool any = false;
    uint64_t first = 0;
    while (list_next(&it, &e)) {
        if (e.len == 0)
            return false;
        uint64_t n = 0;
        for (size_t i = 0; i < e.len; i++) {
            unsigned d = (uint8_t)e.p[i] - (unsigned)'0';
            if (d > 9 || n > (CL_MAX - d) / 10)
                return false;
            n = n * 10 + d;
        }
        if (any && n != first)
            return false;
        first = n;
        any = true;
    }
    if (!any)
        return false;
    *out = first;
    return true;
}

/* ---- header fields ---- */

/* What the semantic headers said, gathered while parsing them. */
struct head_facts {
    uint64_t content_length;
    bool has_cl;
    bool conn_close, conn_keep_alive, conn_names_headers;
    bool expect_continue, expect_other;
    bool te_final_chunked;      /* responses: last coding seen is chunked */
    uint8_t te_headers, te_chunked, hosts, content_types;
};

struct head_fields {
    struct http_header *headers;
    uint16_t *nheaders;
    int16_t *idx;
};

static int note_field(struct http_header *h, struct head_facts *f, const char **why)
{
    switch (h->kind) {
    case HK_CONTENT_LENGTH: {
        uint64_t n;
        if (!parse_content_length(h->value, &n)) {
            *why = "invalid Content-Length";
            return HTTP_BAD;
        }
        if (f->has_cl && n != f->content_length) {
            *why = "conflicting Content-Length headers";
            return HTTP_BAD;
        }
        f->has_cl = true;
        f->content_length = n;
        break;
    }
    case HK_TRANSFER_ENCODING: {
        struct list_iter it = list_of(h->value);
        struct slice e;
        if (f->te_headers < 255)
            f->te_headers++;
        while (list_next(&it, &e)) {
            if (e.len == 0)
                continue;
            bool chunked = slice_eq_lower(e, "chunked");
            f->te_final_chunked = chunked;
            if (chunked && f->te_chunked < 255)
                f->te_chunked++;
        }
        break;
    }
    case HK_CONNECTION: {
        struct list_iter it = list_of(h->value);
        struct slice e;
        while (list_next(&it, &e)) {
            if (e.len == 0)
                continue;
            if (slice_eq_lower(e, "close"))
                f->conn_close = true;
            else if (slice_eq_lower(e, "keep-alive"))
                f->conn_keep_alive = true;
            else
                f->conn_names_headers = true;
        }
        break;
    }
    case HK_EXPECT:
        if (slice_eq_lower(h->value, "100-continue"))
            f->expect_continue = true;
        else
            f->expect_other = true;
        break;
    case HK_HOST:
        if (f->hosts < 255)
            f->hosts++;
        break;
    case HK_CONTENT_TYPE:
        if (f->content_types < 255)
            f->content_types++;
        break;
    default:
        break;
    }
    return HTTP_OK;
}

/* Every header named by a Connection option is hop-by-hop (RFC 9110 7.6.1). Rare,
 * so done as a second pass only when such an option was seen. */
static void mark_connection_options(struct http_header *hs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (hs[i].kind != HK_CONNECTION)
            continue;
        struct list_iter it = list_of(hs[i].value);
        struct slice e;
        while (list_next(&it, &e)) {
            if (e.len == 0)
                continue;
            for (unsigned j = 0; j < n; j++)
                if (hs[j].name.len == e.len && slice_eq_ci(hs[j].name.p, e.p, e.len))
                    hs[j].hop = true;
        }
    }
}

/* Parses header lines from *pp through the blank line. On HTTP_OK *pp is just
 * past the blank line. Returns HTTP_OK, NEED_MORE, HTTP_BAD or HTTP_TOO_LARGE. */
static int parse_fields(const char **pp, const char *end, struct head_fields out,
                        struct head_facts *facts, const char **why)
{
    const char *p = *pp;
    unsigned n = 0;

    memset(out.idx, 0xff, sizeof(int16_t) * (HK_CONTENT_TYPE + 1));
    memset(facts, 0, sizeof *facts);
    for (;;) {
        if (p == end)
            return NEED_MORE;
        if (*p == '\r') {
            if (p + 1 == end)
                return NEED_MORE;
            if (p[1] != '\n') {
                *why = "bare CR in header section";
                return HTTP_BAD;
            }
            p += 2;
            break;
        }
        if (unlikely(!IS_TCHAR(*p))) {
            if (IS_OWS(*p))
                *why = "obs-fold or whitespace at start of header line";
            else if (*p == '\n')
                *why = "bare LF in header section";
            else if (*p == ':')
                *why = "empty header name";
            else
                *why = "invalid character in header name";
            return HTTP_BAD;
        }
        if (unlikely(n == HTTP_MAX_HEADERS)) {
            *why = "too many header fields";
            return HTTP_TOO_LARGE;
        }

        const char *name = p++;
        while (likely(end - p >= 4) && IS_TCHAR(p[0]) && IS_TCHAR(p[1]) && IS_TCHAR(p[2]) &&
               IS_TCHAR(p[3]))
            p += 4;
        while (p < end && IS_TCHAR(*p))
            p++;
        if (p == end)
            return NEED_MORE;
        if (unlikely(*p != ':')) {
            *why = IS_OWS(*p) ? "whitespace before colon in header"
                              : "invalid character in header name";
            return HTTP_BAD;
        }
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && IS_OWS(*p))
            p++;
        const char *value = p;
        for (;;) {
            p = skip_printable(p, end, 0x20);
            if (p == end)
                return NEED_MORE;
            if (*p == '\r')
                break;
            if (unlikely(!IS_VALUE(*p))) {
                *why = *p == '\n' ? "bare LF in header value"
                                  : "control character in header value";
                return HTTP_BAD;
            }
            p++;    /* HTAB or obs-text */
        }
        if (p + 1 == end)
            return NEED_MORE;
        if (unlikely(p[1] != '\n')) {
            *why = "bare CR in header value";
            return HTTP_BAD;
        }
        const char *vend = p;
        while (vend > value && IS_OWS(vend[-1]))
            vend--;
        p += 2;

        struct http_header *h = &out.headers[n];
        uint8_t kind = classify_header(name, name_len);
        h->name.p = name;
        h->name.len = name_len;
        h->value.p = value;
        h->value.len = (size_t)(vend - value);
        h->kind = kind;
        h->hop = kind_is_hop[kind];
        if (kind != HK_OTHER) {
            if (out.idx[kind] < 0)
                out.idx[kind] = (int16_t)n;
            int rc = note_field(h, facts, why);
            if (rc != HTTP_OK)
                return rc;
        }
        n++;
    }
    *out.nheaders = (uint16_t)n;
    if (facts->conn_names_headers)
        mark_connection_options(out.headers, n);
    *pp = p;
    return HTTP_OK;
}

/* "HTTP/1." DIGIT at p. Returns HTTP_OK with *minor set, NEED_MORE while what is
 * there is still a prefix of a valid version, HTTP_BAD otherwise. */
static int parse_version(const char *p, const char *end, uint8_t *minor)
{
    static const char proto[] = "HTTP/1.";
    size_t avail = (size_t)(end - p);
    if (avail < 8)
        return memcmp(p, proto, avail < 7 ? avail : 7) == 0 ? NEED_MORE : HTTP_BAD;
    if (memcmp(p, proto, 7) != 0 || (uint8_t)(p[7] - '0') > 9)
        return HTTP_BAD;
    *minor = (uint8_t)(p[7] - '0');
    return HTTP_OK;
}

static uint8_t method_id(const char *m, size_t len)
{
    switch (len) {
    case 3:
        if (memcmp(m, "GET", 3) == 0) return METHOD_GET;
        if (memcmp(m, "PUT", 3) == 0) return METHOD_PUT;
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0) return METHOD_POST;
        if (memcmp(m, "HEAD", 4) == 0) return METHOD_HEAD;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0) return METHOD_PATCH;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0) return METHOD_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0) return METHOD_OPTIONS;
        break;
    }
    return METHOD_OTHER;
}

static int parse_request_head(const char *buf, const char *end, struct http_request *req,
                              const char **why)
{
    const char *p = buf;

    /* RFC 9112 2.2: a server SHOULD ignore at least one empty line before the
     * request line (some clients send a CRLF after a POST body). One is enough. */
    if (p < end && *p == '\r') {
        if (p + 1 == end)
            return NEED_MORE;
        if (p[1] != '\n') {
            *why = "bare CR before request line";
            return HTTP_BAD;
        }
        p += 2;
    }

    const char *method = p;
    while (p < end && IS_TCHAR(*p))
        p++;
    if (p == end)
        return NEED_MORE;
    if (unlikely(*p != ' ' || p == method)) {
        *why = p == method ? "invalid request line" : "invalid method";
        return HTTP_BAD;
    }
    req->method.p = method;
    req->method.len = (size_t)(p - method);
    req->method_id = method_id(method, req->method.len);
    p++;

    const char *target = p;
    p = skip_printable(p, end, 0x21);
    if (p == end)
        return NEED_MORE;
    if (unlikely(*p != ' ')) {
        *why = *p == '\r' || *p == '\n' ? "request line without HTTP version"
                                        : "invalid character in request target";
        return HTTP_BAD;
    }
    size_t target_len = (size_t)(p - target);
    if (unlikely(target_len == 0)) {
        *why = "empty request target";
        return HTTP_BAD;
    }
    if (*target == '/') {
        const char *q = memchr(target, '?', target_len);
        req->path.p = target;
        req->path.len = q ? (size_t)(q - target) : target_len;
    } else if (target_len == 1 && *target == '*' && req->method_id == METHOD_OPTIONS) {
        req->path.p = target;
        req->path.len = 1;
    } else {
        *why = "request target not in origin-form";
        return HTTP_BAD;
    }
    req->target.p = target;
    req->target.len = target_len;
    p++;

    int rc = parse_version(p, end, &req->minor);
    if (rc != HTTP_OK) {
        if (rc == HTTP_BAD)
            *why = "invalid HTTP version";
        return rc;
    }
    if (req->minor > 1) {
        *why = "unsupported HTTP version";
        return HTTP_BAD;
    }
    p += 8;
    if (p == end || (*p == '\r' && p + 1 == end))
        return NEED_MORE;
    if (p[0] != '\r' || p[1] != '\n') {
        *why = "invalid request line ending";
        return HTTP_BAD;
    }
    p += 2;

    struct head_facts f;
    struct head_fields out = { req->headers, &req->nheaders, req->idx };
    rc = parse_fields(&p, end, out, &f, why);
    if (rc != HTTP_OK)
        return rc;

    if (f.hosts > 1) {
        *why = "multiple Host headers";
        return HTTP_BAD;
    }
    /* aigw reads the first to decide 415 and the AI path; a backend could read
     * the other (RFC 9110 5.3: Content-Type is not a list) */
    if (f.content_types > 1) {
        *why = "multiple Content-Type headers";
        return HTTP_BAD;
    }
    req->content_length = 0;
    if (f.te_headers) {
        if (f.has_cl) {
            *why = "both Content-Length and Transfer-Encoding";
            return HTTP_BAD;
        }
        if (req->minor == 0) {
            *why = "Transfer-Encoding in HTTP/1.0 request";
            return HTTP_BAD;
        }
        if (f.te_headers != 1 ||
            !slice_eq_lower(req->headers[req->idx[HK_TRANSFER_ENCODING]].value, "chunked")) {
            *why = "Transfer-Encoding other than chunked";
            return HTTP_BAD;
        }
        req->body = BODY_CHUNKED;
    } else if (f.has_cl) {
        req->body = BODY_LENGTH;
        req->content_length = f.content_length;
    } else {
        req->body = BODY_NONE;
    }
    req->keep_alive = req->minor >= 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
    /* RFC 9110 10.1.1: a 100-continue expectation in HTTP/1.0 is ignored. */
    req->expect_continue = f.expect_continue && req->minor >= 1;
    req->expect_unmet = f.expect_other;
    req->head_len = (size_t)(p - buf);
    return HTTP_OK;
}

int http_parse_request(const char *buf, size_t len, size_t max_head,
                       struct http_request *req, const char **why)
{
    const char *unused_why;
    if (!why)
        why = &unused_why;
    size_t limit = len < max_head ? len : max_head;
    int rc = parse_request_head(buf, buf + limit, req, why);
    if (rc != NEED_MORE)
        return rc;
    if (len >= max_head) {
        *why = "request head too large";
        return HTTP_TOO_LARGE;
    }
    return HTTP_INCOMPLETE;
}

static int parse_response_head(const char *buf, const char *end, int request_method,
                               struct http_response *resp, const char **why)
{
    const char *p = buf;
    int rc = parse_version(p, end, &resp->minor);
    if (rc != HTTP_OK) {
        if (rc == HTTP_BAD)
            *why = "invalid HTTP version in status line";
        return rc;
    }
    p += 8;
    /* SP 3DIGIT, then SP reason or (leniently, as many servers do) CRLF at once */
    if ((size_t)(end - p) < 4)
        return NEED_MORE;
    if (p[0] != ' ' || (uint8_t)(p[1] - '1') > 8 || (uint8_t)(p[2] - '0') > 9 ||
        (uint8_t)(p[3] - '0') > 9) {
        *why = "invalid status line";
        return HTTP_BAD;
    }
    resp->status = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    p += 4;
    if (p == end)
        return NEED_MORE;
    const char *reason = p;
    if (*p == ' ') {
        reason = ++p;
        for (;;) {
            p = skip_printable(p, end, 0x20);
            if (p == end)
                return NEED_MORE;
            if (*p == '\r')
                break;
            if (!IS_VALUE(*p)) {
                *why = "invalid character in reason phrase";
                return HTTP_BAD;
            }
            p++;
        }
    }
    if (*p != '\r') {
        *why = "invalid status line";
        return HTTP_BAD;
    }
    resp->reason.p = reason;
    resp->reason.len = (size_t)(p - reason);
    if (p + 1 == end)
        return NEED_MORE;
    if (p[1] != '\n') {
        *why = "invalid status line ending";
        return HTTP_BAD;
    }
    p += 2;

    struct head_facts f;
    struct head_fields out = { resp->headers, &resp->nheaders, resp->idx };
    rc = parse_fields(&p, end, out, &f, why);
    if (rc != HTTP_OK)
        return rc;

    int status = resp->status;
    resp->content_length = f.has_cl ? f.content_length : 0;
    /* RFC 9112 6.3: the order of these rules matters. */
    if (request_method == METHOD_HEAD || status < 200 || status == 204 || status == 304) {
        resp->body = BODY_NONE;
    } else if (f.te_headers) {
        if (f.has_cl) {
            *why = "both Content-Length and Transfer-Encoding";
            return HTTP_BAD;
        }
        /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty. */
        if (resp->minor == 0) {
            *why = "Transfer-Encoding in HTTP/1.0 response";
            return HTTP_BAD;
        }
        if (f.te_chunked > 1 || (f.te_chunked == 1 && !f.te_final_chunked)) {
            *why = "chunked is not the final transfer coding";
            return HTTP_BAD;
        }
        resp->body = f.te_final_chunked ? BODY_CHUNKED : BODY_UNTIL_CLOSE;
    } else if (f.has_cl) {
        resp->body = BODY_LENGTH;
    } else {
        resp->body = BODY_UNTIL_CLOSE;
    }
    resp->keep_alive = resp->body != BODY_UNTIL_CLOSE &&
        (resp->minor >= 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close));
    resp->head_len = (size_t)(p - buf);
    return HTTP_OK;
}

int http_parse_response(const char *buf, size_t len, size_t max_head, int request_method,
                        struct http_response *resp, const char **why)
{
    const char *unused_why;
    if (!why)
        why = &unused_why;
    size_t limit = len < max_head ? len : max_head;
    int rc = parse_response_head(buf, buf + limit, request_method, resp, why);
    if (rc != NEED_MORE)
        return rc;
    if (len >= max_head) {
        *why = "response head too large";
        return HTTP_TOO_LARGE;
    }
    return HTTP_INCOMPLETE;
}

/* ---- chunked coding ---- */

enum chunk_state {
    CK_SIZE_START,      /* first hex digit of a chunk size */
    CK_SIZE,            /* more hex digits, ';', BWS or CR */
    CK_SIZE_BWS,        /* whitespace after the size: only ';' may follow */
    CK_EXT,             /* chunk extensions, up to CR */
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER_START,   /* a trailer field or the final CRLF */
    CK_TRAILER_NAME,
    CK_TRAILER_VALUE,
    CK_TRAILER_LF,
    CK_FINAL_LF,
    CK_ERROR,
};

void chunked_init(struct chunked *c)
{
    memset(c, 0, sizeof *c);
    c->state = CK_SIZE_START;
}

uint64_t chunked_data_left(const struct chunked *c)
{
    return c->state == CK_DATA && !c->done ? c->remaining : 0;
}

void chunked_skip_data(struct chunked *c, uint64_t n)
{
    if (c->state != CK_DATA || n > c->remaining) {
        c->state = CK_ERROR;    /* a caller bug must not pass for valid framing */
        return;
    }
    c->remaining -= n;
    if (c->remaining == 0)
        c->state = CK_DATA_CR;
}

ssize_t chunked_scan(struct chunked *c, const char *buf, size_t len,
                     void (*on_data)(void *ctx, const char *p, size_t n), void *ctx,
                     const char **why)
{
    const char *p = buf, *end = buf + len;
    const char *err;

    const char *unused_why;
    if (!why)
        why = &unused_why;
    if (c->done)
        return 0;
    if (c->state == CK_ERROR) {
        *why = "chunked framing error";
        return -1;
    }
    while (p < end) {
        uint8_t ch = (uint8_t)*p;
        switch (c->state) {
        case CK_DATA: {
            size_t n = (size_t)(end - p);
            if (n > c->remaining)
                n = (size_t)c->remaining;
            if (on_data)
                on_data(ctx, p, n);
            p += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CK_DATA_CR;
            continue;
        }
        case CK_DATA_CR:
            if (ch != '\r') { err = "missing CRLF after chunk data"; goto fail; }
            c->state = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (ch != '\n') { err = "missing CRLF after chunk data"; goto fail; }
            c->state = CK_SIZE_START;
            c->line_len = 0;
            break;
        case CK_SIZE_START:
        case CK_SIZE: {
            int d = hex_value(ch);
            if (d >= 0) {
                if (c->state == CK_SIZE_START)
                    c->remaining = 0;
                if (c->line_len >= 16) { err = "chunk size has too many digits"; goto fail; }
                if (c->remaining > ((uint64_t)INT64_MAX >> 4)) { err = "chunk size overflow"; goto fail; }
                c->remaining = c->remaining << 4 | (uint64_t)d;
                c->line_len++;
                c->state = CK_SIZE;
                break;
            }
            if (c->state == CK_SIZE_START) { err = "invalid chunk size"; goto fail; }
            c->line_len++;
            if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if (ch == ';')
                c->state = CK_EXT;
            else if (IS_OWS(ch))
                c->state = CK_SIZE_BWS;
            else { err = "invalid chunk size"; goto fail; }
            break;
        }
        case CK_SIZE_BWS:
            if (++c->line_len > CHUNK_LINE_MAX) { err = "chunk size line too long"; goto fail; }
            if (ch == ';')
                c->state = CK_EXT;
            else if (!IS_OWS(ch)) { err = "invalid chunk size"; goto fail; }
            break;
        case CK_EXT: {
            /* Extensions carry nothing aigw uses; bound them and refuse control bytes. */
            const char *q = p;
            while (q < end && *q != '\r' && IS_VALUE(*q))
                q++;
            size_t n = (size_t)(q - p);
            if (n > CHUNK_LINE_MAX || c->line_len + n > CHUNK_LINE_MAX) {
                err = "chunk extension too long";
                goto fail;
            }
            c->line_len += (uint32_t)n;
            p = q;
            if (p == end)
                continue;
            if (*p != '\r') { err = "invalid character in chunk extension"; goto fail; }
            c->state = CK_SIZE_LF;
            break;
        }
        case CK_SIZE_LF:
            if (ch != '\n') { err = "bare CR in chunk size line"; goto fail; }
            if (c->remaining == 0) {
                c->state = CK_TRAILER_START;
                c->trailer_bytes = 0;
            } else {
                c->state = CK_DATA;
            }
            break;
        case CK_TRAILER_START:
        case CK_TRAILER_NAME:
        case CK_TRAILER_VALUE:
        case CK_TRAILER_LF:
        case CK_FINAL_LF:
            if (++c->trailer_bytes > CHUNK_TRAILERS_MAX) { err = "trailers too large"; goto fail; }
            switch (c->state) {
            case CK_TRAILER_START:
                if (ch == '\r')
                    c->state = CK_FINAL_LF;
                else if (IS_TCHAR(ch))
                    c->state = CK_TRAILER_NAME;
                else { err = "invalid trailer field"; goto fail; }
                break;
            case CK_TRAILER_NAME:
                if (ch == ':')
                    c->state = CK_TRAILER_VALUE;
                else if (!IS_TCHAR(ch)) { err = "invalid trailer field name"; goto fail; }
                break;
            case CK_TRAILER_VALUE:
                if (ch == '\r')
                    c->state = CK_TRAILER_LF;
                else if (!IS_VALUE(ch)) { err = "invalid trailer field value"; goto fail; }
                break;
            case CK_TRAILER_LF:
                if (ch != '\n') { err = "bare CR in trailer"; goto fail; }
                c->state = CK_TRAILER_START;
                break;
            default: /* CK_FINAL_LF */
                if (ch != '\n') { err = "bare CR after trailers"; goto fail; }
                c->done = true;
                return (ssize_t)(p + 1 - buf);
            }
            break;
        default:
            err = "chunked framing error";
            goto fail;
        }
        p++;
    }
    return (ssize_t)len;

fail:
    c->state = CK_ERROR;
    *why = err;
    return -1;
}

/* ---- serialisers ---- */

/* Serialisers write into an outbuf; when something does not fit, the whole
 * serialisation reports 0. */
static inline void put_slice(struct outbuf *o, struct slice s)
{
    outbuf_put(o, s.p, s.len);
}

static inline void put_header(struct outbuf *o, struct slice name, struct slice value)
{
    char *q = outbuf_reserve(o, name.len + value.len + 4);
    if (unlikely(!q))
        return;
    memcpy(q, name.p, name.len);
    q += name.len;
    *q++ = ':';
    *q++ = ' ';
    if (value.len)
        memcpy(q, value.p, value.len);
    q += value.len;
    *q++ = '\r';
    *q = '\n';
}

size_t http_write_upstream_head(char *out, size_t cap, const struct http_request *req,
                                const struct http_forward *fwd)
{
    struct outbuf o = outbuf_make(out, cap);
    bool replace_auth = fwd->upstream_auth.len > 0;

    put_slice(&o, req->method);
    OUTBUF_LIT(&o, " ");
    put_slice(&o, req->target);
    OUTBUF_LIT(&o, " HTTP/1.1\r\n");
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (h->hop)
            continue;
        switch (h->kind) {
        case HK_CONTENT_LENGTH:
        case HK_TRANSFER_ENCODING:
        case HK_EXPECT:
        case HK_X_FORWARDED_PROTO:
        case HK_X_REQUEST_ID:
        case HK_X_FORWARDED_FOR:
            continue;
        case HK_AUTHORIZATION:
            if (fwd->strip_client_auth || replace_auth)
                continue;
            break;
        case HK_X_API_KEY:
            if (fwd->strip_client_auth)
                continue;
            break;
        case HK_HOST:
            if (fwd->host.len)
                continue;
            break;
        case HK_TRACEPARENT:
            if (fwd->traceparent.len)
                continue;
            break;
        default:
            break;
        }
        put_header(&o, h->name, h->value);
    }

    if (fwd->host.len) {
        OUTBUF_LIT(&o, "Host: ");
        put_slice(&o, fwd->host);
        OUTBUF_LIT(&o, "\r\n");
    } else if (req->idx[HK_HOST] < 0 && fwd->default_host.len) {
        /* HTTP/1.0 clients may omit Host; HTTP/1.1 backends require one */
        OUTBUF_LIT(&o, "Host: ");
        put_slice(&o, fwd->default_host);
        OUTBUF_LIT(&o, "\r\n");
    }
    if (req->body == BODY_LENGTH) {
        OUTBUF_LIT(&o, "Content-Length: ");
        outbuf_u64(&o, req->content_length);
        OUTBUF_LIT(&o, "\r\n");
    } else if (req->body == BODY_CHUNKED) {
        OUTBUF_LIT(&o, "Transfer-Encoding: chunked\r\n");
    }
    OUTBUF_LIT(&o, "Connection: keep-alive\r\n");
    if (replace_auth) {
        OUTBUF_LIT(&o, "Authorization: Bearer ");
        put_slice(&o, fwd->upstream_auth);
        OUTBUF_LIT(&o, "\r\n");
    }

    /* One X-Forwarded-For: every value the client sent, in order, then the client. */
    bool xff_open = false;
    if (req->idx[HK_X_FORWARDED_FOR] >= 0) {
        for (unsigned i = (unsigned)req->idx[HK_X_FORWARDED_FOR]; i < req->nheaders; i++) {
            const struct http_header *h = &req->headers[i];
            if (h->kind != HK_X_FORWARDED_FOR || h->hop || h->value.len == 0)
                continue;
            if (xff_open)
                OUTBUF_LIT(&o, ", ");
            else
                OUTBUF_LIT(&o, "X-Forwarded-For: ");
            xff_open = true;
            put_slice(&o, h->value);
        }
    }
    if (fwd->client_addr.len) {
        if (xff_open)
            OUTBUF_LIT(&o, ", ");
        else
            OUTBUF_LIT(&o, "X-Forwarded-For: ");
        xff_open = true;
        put_slice(&o, fwd->client_addr);
    }
    if (xff_open)
        OUTBUF_LIT(&o, "\r\n");
    if (fwd->proto.len) {
        OUTBUF_LIT(&o, "X-Forwarded-Proto: ");
        put_slice(&o, fwd->proto);
        OUTBUF_LIT(&o, "\r\n");
    }
    if (fwd->request_id.len) {
        OUTBUF_LIT(&o, "X-Request-Id: ");
        put_slice(&o, fwd->request_id);
        OUTBUF_LIT(&o, "\r\n");
    }
    if (fwd->traceparent.len) {
        OUTBUF_LIT(&o, "traceparent: ");
        put_slice(&o, fwd->traceparent);
        OUTBUF_LIT(&o, "\r\n");
    }
    OUTBUF_LIT(&o, "\r\n");
    return outbuf_done(&o);
}

static void put_status_line(struct outbuf *o, int status, struct slice reason)
{
    OUTBUF_LIT(o, "HTTP/1.1 ");
    outbuf_u64(o, (uint64_t)(status < 0 ? 0 : status));
    OUTBUF_LIT(o, " ");
    if (reason.len) {
        put_slice(o, reason);
    } else {
        outbuf_str(o, http_reason(status));
    }
    OUTBUF_LIT(o, "\r\n");
}

static void put_connection(struct outbuf *o, bool keep_alive)
{
    if (keep_alive)
        OUTBUF_LIT(o, "Connection: keep-alive\r\n");
    else
        OUTBUF_LIT(o, "Connection: close\r\n");
}

static void put_transfer_codings(struct outbuf *o, const struct http_response *resp)
{
    bool started = false;
    if (resp->idx[HK_TRANSFER_ENCODING] < 0)
        return;
    for (unsigned i = (unsigned)resp->idx[HK_TRANSFER_ENCODING]; i < resp->nheaders; i++) {
        const struct http_header *h = &resp->headers[i];
        if (h->kind != HK_TRANSFER_ENCODING || h->value.len == 0)
            continue;
        /* a chunked body passed on de-chunked (HTTP/1.0 client) loses that coding */
        if (resp->body == BODY_UNTIL_CLOSE && slice_eq_lower(h->value, "chunked"))
            continue;
        if (started)
            OUTBUF_LIT(o, ", ");
        else
            OUTBUF_LIT(o, "Transfer-Encoding: ");
        started = true;
        put_slice(o, h->value);
    }
    if (started)
        OUTBUF_LIT(o, "\r\n");
}

size_t http_write_client_head(char *out, size_t cap, const struct http_response *resp,
                              bool client_keep_alive, struct slice extra)
{
    struct outbuf o = outbuf_make(out, cap);

    put_status_line(&o, resp->status, resp->reason);
    for (unsigned i = 0; i < resp->nheaders; i++) {
        const struct http_header *h = &resp->headers[i];
        if (h->hop || h->kind == HK_CONTENT_LENGTH || h->kind == HK_TRANSFER_ENCODING ||
            h->kind == HK_X_REQUEST_ID)
            continue;
        put_header(&o, h->name, h->value);
    }
    switch (resp->body) {
    case BODY_LENGTH:
        OUTBUF_LIT(&o, "Content-Length: ");
        outbuf_u64(&o, resp->content_length);
        OUTBUF_LIT(&o, "\r\n");
        break;
    case BODY_CHUNKED:
    case BODY_UNTIL_CLOSE:
        /* The backend's codings as sent (chunked last, or none of them chunked
         * for a close-delimited body), so nothing like "gzip, chunked" is lost. */
        put_transfer_codings(&o, resp);
        break;
    case BODY_NONE:
        /* HEAD and 304 answers may state the length of what GET would return;
         * 1xx and 204 must not carry one (RFC 9110 8.6). */
        if (resp->idx[HK_CONTENT_LENGTH] >= 0 && resp->status >= 200 && resp->status != 204) {
            OUTBUF_LIT(&o, "Content-Length: ");
            outbuf_u64(&o, resp->content_length);
            OUTBUF_LIT(&o, "\r\n");
        }
        break;
    default:
        break;
    }
    put_connection(&o, client_keep_alive);
    put_slice(&o, extra);
    OUTBUF_LIT(&o, "\r\n");
    return outbuf_done(&o);
}

size_t http_write_json_head(char *out, size_t cap, int status, size_t body_len, bool keep_alive,
                            struct slice extra)
{
    struct outbuf o = outbuf_make(out, cap);
    put_status_line(&o, status, (struct slice){ NULL, 0 });
    OUTBUF_LIT(&o, "Content-Type: application/json\r\nContent-Length: ");
    outbuf_u64(&o, body_len);
    OUTBUF_LIT(&o, "\r\n");
    put_connection(&o, keep_alive);
    put_slice(&o, extra);
    OUTBUF_LIT(&o, "\r\n");
    return outbuf_done(&o);
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "Unknown";
    }
}
