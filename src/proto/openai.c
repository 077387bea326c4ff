/* Strict single-pass JSON reader for OpenAI request bodies (RFC 8259).
 *
 * The parser is a loop over states (expect key, expect value, after value) with the
 * open containers on a fixed stack. Each open container has a kind (the top-level
 * object, "messages", a message, a content part, ...), and each value about to be
 * read has a slot saying which field it is; a table gives the JSON types each slot
 * accepts, so a field of the wrong type is reported before it is read. Everything
 * aigw does not read goes through the same code in the "skip" kinds and slots:
 * validated, never stored. Strings, the bulk of any body, are scanned 16 bytes at a
 * time with SSE2 while they are plain ASCII. */
#include "proto/openai.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "util/hash.h"
#include "util/utf8.h"

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Kinds of open containers. Objects first, then arrays. */
enum frame {
    F_OBJ,              /* an object aigw does not read */
    F_TOP,              /* the request */
    F_STREAM_OPTIONS,
    F_MESSAGE,          /* an element of "messages" */
    F_PART,             /* an element of a message's "content" array */
    F_ARR,              /* an array aigw does not read */
    F_MESSAGES,
    F_PARTS,            /* a message's "content" array */
    F_PROMPT,           /* "prompt" / "input" array */
    F_TOKENS,           /* an array of token ids inside F_PROMPT */
};
#define FRAME_IS_ARRAY(f) ((f) >= F_ARR)

/* Which field the next value is. */
enum slot {
    V_SKIP,
    V_MODEL,
    V_STREAM,
    V_STREAM_OPTIONS,
    V_INCLUDE_USAGE,
    V_MAX_TOKENS,
    V_MAX_COMPLETION_TOKENS,
    V_MESSAGES,
    V_MESSAGE,
    V_CONTENT,
    V_PART,
    V_PART_TYPE,
    V_PART_TEXT,
    V_PROMPT,
    V_PROMPT_ITEM,
    V_TOKEN,
    V_COUNT
};

enum {
    T_STRING = 1, T_NUMBER = 2, T_BOOL = 4, T_NULL = 8, T_OBJECT = 16, T_ARRAY = 32,
    T_ANY = 63,
};

/* What each slot accepts and how a wrong type is reported:
 * "\"<field>\"<context> must be <what>". A NULL field means the prompt field's name
 * ("prompt" or "input"), known only at run time. */
static const struct slot_rule {
    uint8_t allow;
    const char *field, *context, *what;
} slot_rules[V_COUNT] = {
    [V_SKIP]                  = { T_ANY, "", "", "" },
    [V_MODEL]                 = { T_STRING, "model", "", "a non-empty string" },
    [V_STREAM]                = { T_BOOL | T_NULL, "stream", "", "a boolean" },
    [V_STREAM_OPTIONS]        = { T_OBJECT | T_NULL, "stream_options", "", "an object" },
    [V_INCLUDE_USAGE]         = { T_BOOL | T_NULL, "stream_options.include_usage", "", "a boolean" },
    [V_MAX_TOKENS]            = { T_NUMBER | T_NULL, "max_tokens", "", "a non-negative integer" },
    [V_MAX_COMPLETION_TOKENS] = { T_NUMBER | T_NULL, "max_completion_tokens", "", "a non-negative integer" },
    [V_MESSAGES]              = { T_ARRAY, "messages", "", "an array of objects" },
    [V_MESSAGE]               = { T_OBJECT, "messages", "", "an array of objects" },
    [V_CONTENT]               = { T_STRING | T_ARRAY | T_NULL, "content", " of a message",
                                  "a string, an array of content parts, or null" },
    [V_PART]                  = { T_OBJECT, "content", " parts", "objects" },
    [V_PART_TYPE]             = { T_STRING, "type", " of a content part", "a string" },
    [V_PART_TEXT]             = { T_STRING, "text", " of a content part", "a string" },
    [V_PROMPT]                = { T_STRING | T_ARRAY | T_NULL, NULL, "",
                                  "a string, an array of strings, or token ids" },
    [V_PROMPT_ITEM]           = { T_STRING | T_NUMBER | T_ARRAY, NULL, "",
                                  "a string, an array of strings, or token ids" },
    [V_TOKEN]                 = { T_NUMBER, NULL, "", "a string, an array of strings, or token ids" },
};

/* The container a value of a slot opens. Other slots do not accept that type. */
static const uint8_t object_frame[V_COUNT] = {
    [V_STREAM_OPTIONS] = F_STREAM_OPTIONS, [V_MESSAGE] = F_MESSAGE, [V_PART] = F_PART,
};
static const uint8_t array_frame[V_COUNT] = {
    [V_SKIP] = F_ARR, [V_MESSAGES] = F_MESSAGES, [V_CONTENT] = F_PARTS,
    [V_PROMPT] = F_PROMPT, [V_PROMPT_ITEM] = F_TOKENS,
};
/* The slot of an array's elements. */
static const uint8_t element_slot[F_TOKENS + 1] = {
    [F_ARR] = V_SKIP, [F_MESSAGES] = V_MESSAGE, [F_PARTS] = V_PART,
    [F_PROMPT] = V_PROMPT_ITEM, [F_TOKENS] = V_TOKEN,
};

/* Top-level keys aigw reads; bits in the "seen" set. */
enum top_key {
    K_UNKNOWN = -1, K_MODEL, K_STREAM, K_STREAM_OPTIONS, K_MAX_TOKENS,
    K_MAX_COMPLETION_TOKENS, K_MESSAGES, K_PROMPT, K_INPUT,
};
static const char *const top_key_name[] = {
    "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "messages", "prompt", "input",
};
static const uint8_t top_key_slot[] = {
    V_MODEL, V_STREAM, V_STREAM_OPTIONS, V_MAX_TOKENS, V_MAX_COMPLETION_TOKENS,
    V_MESSAGES, V_PROMPT, V_PROMPT,
};

/* JSON whitespace: SP HT LF CR, nothing else. */
static const uint8_t json_ws[256] = { [' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1 };

/* String bytes that need no attention: 0x20..0x7f except '"' and '\\'. */
static const uint8_t plain[256] = {
    [0x20] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

struct parse_error {
    const char *at;
    const char *msg;
};

/* A scanned string: contents between the quotes. */
struct jstr {
    const char *p;
    size_t len;
    size_t decoded;     /* bytes it decodes to */
    bool escaped;
};

/* The prompt's start, hashed for prefix-affine routing: the raw (still escaped)
 * bytes of the prompt strings in document order, one chained hash per string
 * (so boundaries count), up to OPENAI_PREFIX_BYTES; each string's end takes one
 * byte of that budget. */
struct prefix_hash {
    uint64_t h;
    size_t left;
    bool any;
};

static void prefix_add(struct prefix_hash *ph, const char *p, size_t n)
{
    if (!ph->left)
        return;
    ph->any = true;
    if (n > ph->left)
        n = ph->left;
    ph->h = hash_bytes_seeded(p, n, ph->h);
    ph->left -= n;
    if (ph->left)
        ph->left--;
}

/* A scanned number. value is exact only when integer && !big. */
struct jnum {
    bool negative, integer, big;
    uint64_t value;
};

__attribute__((noinline))
static const char *skip_ws_run(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i sp = _mm_set1_epi8(' '), ht = _mm_set1_epi8('\t'),
                  lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i ws = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, sp), _mm_cmpeq_epi8(v, ht)),
                                  _mm_or_si128(_mm_cmpeq_epi8(v, lf), _mm_cmpeq_epi8(v, cr)));
        unsigned other = ~(unsigned)_mm_movemask_epi8(ws) & 0xffffu;
        if (other)
            return p + __builtin_ctz(other);
        p += 16;
    }
#endif
    while (p < end && json_ws[(uint8_t)*p])
        p++;
    return p;
}

/* First non-whitespace byte at or after p. Most gaps are empty or one space; the
 * longer runs of pretty-printed bodies (",\n    ") end in one 16-byte compare
 * rather than in a byte loop whose exit the CPU mispredicts. */
static inline const char *skip_ws(const char *p, const char *end)
{
    if (likely(p < end) && !json_ws[(uint8_t)*p])
        return p;
    if (likely(end - p >= 2) && !json_ws[(uint8_t)p[1]])
        return p + 1;
    return skip_ws_run(p, end);
}

static inline bool is_digit(uint8_t c)
{
    return (uint8_t)(c - '0') < 10;
}

static inline int hex_digit(uint8_t c)
{
    if (is_digit(c))
        return c - '0';
    c |= 0x20;
    if ((uint8_t)(c - 'a') < 6)
        return c - 'a' + 10;
    return -1;
}

/* Four hex digits at p (the caller checked there are four bytes); -1 if not hex. */
static int hex4(const char *p)
{
    int a = hex_digit((uint8_t)p[0]), b = hex_digit((uint8_t)p[1]);
    int c = hex_digit((uint8_t)p[2]), d = hex_digit((uint8_t)p[3]);
    if ((a | b | c | d) < 0)
        return -1;
    return a << 12 | b << 8 | c << 4 | d;
}

/* Scans a string whose opening quote is at p[-1]. Returns the byte after the closing
 * quote and fills *s, or NULL with *e set. */
static inline const char *scan_string(const char *p, const char *end, struct jstr *s,
                                      struct parse_error *e)
{
    const char *start = p;
    size_t saved = 0;   /* raw bytes of escapes minus the bytes they decode to */
    bool escaped = false;

    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                      space = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
            /* signed compare: bytes >= 0x80 are negative and stop the run too */
            __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                     _mm_cmpeq_epi8(v, bslash)),
                                        _mm_cmplt_epi8(v, space));
            unsigned mask = (unsigned)_mm_movemask_epi8(stop);
            if (mask) {
                p += __builtin_ctz(mask);
                goto special;
            }
            p += 16;
        }
#endif
        while (p < end && plain[(uint8_t)*p])
            p++;
#ifdef __SSE2__
special:
#endif
        if (unlikely(p >= end)) {
            e->at = start - 1;
            e->msg = "unterminated string";
            return NULL;
        }
        uint8_t c = (uint8_t)*p;
        if (likely(c == '"'))
            break;
        if (c == '\\') {
            escaped = true;
            if (end - p < 2) {
                e->at = start - 1;
                e->msg = "unterminated string";
                return NULL;
            }
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                saved += 1;
                continue;
            case 'u':
                break;
            default:
                e->at = p;
                e->msg = "invalid escape in string";
                return NULL;
            }
            int cu = end - p >= 6 ? hex4(p + 2) : -1;
            if (cu < 0) {
                e->at = p;
                e->msg = "invalid \\u escape";
                return NULL;
            }
            if (cu >= 0xd800 && cu <= 0xdfff) {
                int low = -1;
                if (cu <= 0xdbff && end - p >= 12 && p[6] == '\\' && p[7] == 'u')
                    low = hex4(p + 8);
                if (low < 0xdc00 || low > 0xdfff) {
                    e->at = p;
                    e->msg = "unpaired UTF-16 surrogate";
                    return NULL;
                }
                p += 12;
                saved += 12 - 4;
                continue;
            }
            p += 6;
            saved += 6 - (cu < 0x80 ? 1 : cu < 0x800 ? 2 : 3);
            continue;
        }
        if (c < 0x20) {
            e->at = p;
            e->msg = "control character in string";
            return NULL;
        }
        /* c >= 0x80 */
        size_t seq = utf8_seq_len(p, (size_t)(end - p));
        if (!seq) {
            e->at = p;
            e->msg = "invalid UTF-8 in string";
            return NULL;
        }
        p += seq;
    }
    s->p = start;
    s->len = (size_t)(p - start);
    s->decoded = s->len - saved;
    s->escaped = escaped;
    return p + 1;
}

/* Scans a number by the RFC 8259 grammar; the first byte is '-' or a digit. Never
 * overflows: the value is only accumulated while it is at most 2^53. */
static const char *scan_number(const char *p, const char *end, struct jnum *n,
                               struct parse_error *e)
{
    uint64_t v = 0;
    n->negative = n->big = false;
    n->integer = true;
    if (*p == '-') {
        n->negative = true;
        p++;
    }
    if (p >= end || !is_digit((uint8_t)*p))
        goto bad;
    if (*p == '0') {
        p++;
        if (p < end && is_digit((uint8_t)*p))
            goto bad;   /* leading zero */
    } else {
        for (; p < end && is_digit((uint8_t)*p); p++) {
            if (v <= OPENAI_MAX_TOKENS_LIMIT)
                v = v * 10 + (uint64_t)(*p - '0');
        }
    }
    if (p < end && *p == '.') {
        n->integer = false;
        p++;
        if (p >= end || !is_digit((uint8_t)*p))
            goto bad;
        while (p < end && is_digit((uint8_t)*p))
            p++;
    }
    if (p < end && (*p | 0x20) == 'e') {
        n->integer = false;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit((uint8_t)*p))
            goto bad;
        while (p < end && is_digit((uint8_t)*p))
            p++;
    }
    n->big = v > OPENAI_MAX_TOKENS_LIMIT;
    n->value = v;
    return p;
bad:
    e->at = p;
    e->msg = "invalid number";
    return NULL;
}

/* Decodes one character of validated string contents at *pp into out; returns its
 * byte count (1-4). Defensive for unvalidated input: a malformed escape yields the
 * backslash itself, and nothing past end is read. */
static size_t decode_char(const char **pp, const char *end, uint8_t out[4])
{
    const char *p = *pp;
    if (*p != '\\' || end - p < 2) {
        out[0] = (uint8_t)*p;
        *pp = p + 1;
        return 1;
    }
    uint8_t simple = 0;
    switch (p[1]) {
    case '"': simple = '"'; break;
    case '\\': simple = '\\'; break;
    case '/': simple = '/'; break;
    case 'b': simple = '\b'; break;
    case 'f': simple = '\f'; break;
    case 'n': simple = '\n'; break;
    case 'r': simple = '\r'; break;
    case 't': simple = '\t'; break;
    case 'u': break;
    default:
        out[0] = '\\';
        *pp = p + 1;
        return 1;
    }
    if (simple) {
        out[0] = simple;
        *pp = p + 2;
        return 1;
    }
    int cu = end - p >= 6 ? hex4(p + 2) : -1;
    if (cu < 0) {
        out[0] = '\\';
        *pp = p + 1;
        return 1;
    }
    uint32_t cp = (uint32_t)cu;
    p += 6;
    if (cu >= 0xd800 && cu <= 0xdfff) {
        int low = -1;
        if (cu <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u')
            low = hex4(p + 2);
        if (low >= 0xdc00 && low <= 0xdfff) {
            cp = 0x10000 + (((uint32_t)cu - 0xd800) << 10) + ((uint32_t)low - 0xdc00);
            p += 6;
        } else {
            cp = 0xfffd;    /* unpaired: the replacement character */
        }
    }
    *pp = p;
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

size_t openai_unescape(struct slice s, char *out, size_t cap)
{
    const char *p = s.p, *end = s.p + s.len;
    size_t n = 0;
    while (p < end) {
        uint8_t ch[4];
        size_t k = decode_char(&p, end, ch);
        if (k > cap - n)
            return 0;
        memcpy(out + n, ch, k);
        n += k;
    }
    return n;
}

/* Equality of two validated strings after decoding. */
static bool decoded_equal(const char *a, size_t alen, bool aesc, const char *b, size_t blen, bool besc)
{
    if (!aesc && !besc)
        return alen == blen && memcmp(a, b, alen) == 0;
    const char *ae = a + alen, *be = b + blen;
    while (a < ae && b < be) {
        uint8_t ca[4], cb[4];
        size_t na = decode_char(&a, ae, ca), nb = decode_char(&b, be, cb);
        if (na != nb || memcmp(ca, cb, na) != 0)
            return false;
    }
    return a == ae && b == be;
}

/* Whether a string's decoded contents equal lit (ASCII, no escapes needed). */
static bool str_is(const struct jstr *s, const char *lit, size_t litlen)
{
    if (!s->escaped)
        return s->len == litlen && memcmp(s->p, lit, litlen) == 0;
    return s->decoded == litlen && decoded_equal(s->p, s->len, true, lit, litlen, false);
}

/* The decoded form of a key when it may be one of the short names aigw reads;
 * the raw bytes when they have no escapes. len 0 and p NULL when too long. */
static struct slice key_text(const struct jstr *k, char *buf, size_t cap)
{
    if (!k->escaped)
        return (struct slice){ k->p, k->len };
    if (k->decoded > cap)
        return (struct slice){ NULL, 0 };
    size_t n = openai_unescape((struct slice){ k->p, k->len }, buf, cap);
    return (struct slice){ buf, n };
}

static inline bool text_is(struct slice t, const char *lit, size_t litlen)
{
    return t.len == litlen && memcmp(t.p, lit, litlen) == 0;
}

static int top_key_id(struct slice t)
{
    switch (t.len) {
    case 5:
        if (text_is(t, "model", 5)) return K_MODEL;
        if (text_is(t, "input", 5)) return K_INPUT;
        break;
    case 6:
        if (text_is(t, "stream", 6)) return K_STREAM;
        if (text_is(t, "prompt", 6)) return K_PROMPT;
        break;
    case 8:
        if (text_is(t, "messages", 8)) return K_MESSAGES;
        break;
    case 10:
        if (text_is(t, "max_tokens", 10)) return K_MAX_TOKENS;
        break;
    case 14:
        if (text_is(t, "stream_options", 14)) return K_STREAM_OPTIONS;
        break;
    case 21:
        if (text_is(t, "max_completion_tokens", 21)) return K_MAX_COMPLETION_TOKENS;
        break;
    }
    return K_UNKNOWN;
}

#define KEY_HASH_BYTES 64

/* For the duplicate check of keys aigw does not read: keys that decode alike hash
 * alike. Only the first KEY_HASH_BYTES decoded bytes are hashed (the decoded
 * length seeds it), so an escaped key decodes into a small buffer; long keys
 * sharing that start cost one comparison each, and there are at most
 * OPENAI_MAX_TOP_KEYS of them. */
static uint64_t key_hash(const struct jstr *k)
{
    if (!k->escaped)
        return hash_bytes_seeded(k->p, k->len < KEY_HASH_BYTES ? k->len : KEY_HASH_BYTES, k->decoded);
    uint8_t start[KEY_HASH_BYTES + 4];
    size_t n = 0;
    const char *p = k->p, *end = k->p + k->len;
    while (p < end && n < KEY_HASH_BYTES)
        n += decode_char(&p, end, start + n);
    return hash_bytes_seeded(start, n < KEY_HASH_BYTES ? n : KEY_HASH_BYTES, k->decoded);
}

struct seen_key {
    uint64_t hash;
    const char *p;
    size_t len;
    bool escaped;
};

__attribute__((cold, noinline, format(printf, 4, 5)))
static int fail(struct openai_request *out, const char **why, size_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->error, sizeof out->error, fmt, ap);
    va_end(ap);
    out->error_offset = offset;
    if (why)
        *why = out->error;
    return OPENAI_BAD;
}

__attribute__((cold, noinline))
static int fail_syntax(struct openai_request *out, const char **why, const char *body,
                       const struct parse_error *e)
{
    size_t off = (size_t)(e->at - body);
    return fail(out, why, off, "invalid JSON at byte %zu: %s", off, e->msg);
}

__attribute__((cold, noinline))
static int fail_type(struct openai_request *out, const char **why, size_t off, uint8_t slot,
                     const char *prompt_field)
{
    const struct slot_rule *r = &slot_rules[slot];
    return fail(out, why, off, "\"%s\"%s must be %s", r->field ? r->field : prompt_field,
                r->context, r->what);
}

/* A key of the body for a message: printable ASCII, at most 40 characters. */
__attribute__((cold, noinline))
static int fail_duplicate(struct openai_request *out, const char **why, size_t off,
                          const struct jstr *k)
{
    char name[48];
    size_t n = 0;
    for (size_t i = 0; i < k->len && n < 40; i++) {
        uint8_t c = (uint8_t)k->p[i];
        name[n++] = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? (char)c : '?';
    }
    name[n] = 0;
    return fail(out, why, off, "duplicate key \"%s%s\"", name, k->len > 40 ? "..." : "");
}

int openai_parse_request(const char *body, size_t len, struct openai_request *out,
                         const char **why)
{
    const char *p = body;
    const char *const end = body + len;
    struct parse_error e;
    uint8_t stack[OPENAI_MAX_DEPTH];
    unsigned depth = 0;
    uint8_t slot = V_SKIP;
    uint8_t frame;

    uint32_t top_seen = 0;                  /* bits of enum top_key */
    struct seen_key unknown[OPENAI_MAX_TOP_KEYS];
    unsigned n_unknown = 0;
    uint64_t unknown_bloom = 0;             /* one bit per hash, skips most searches */
    const char *prompt_field = "prompt";

    bool message_has_content = false;
    bool part_has_type = false, part_has_text = false, part_is_text = false;
    uint64_t part_text_bytes = 0;
    struct slice part_text = { NULL, 0 };
    struct prefix_hash prefix = { 0, OPENAI_PREFIX_BYTES, false };
    bool options_have_include_usage = false;

    bool has_max_tokens = false, has_max_completion_tokens = false;
    uint64_t max_tokens = 0, max_completion_tokens = 0;
    const char *max_tokens_at = body;

    out->model = (struct slice){ NULL, 0 };
    out->model_escaped = false;
    out->model_decoded_len = 0;
    out->stream = false;
    out->include_usage = false;
    out->has_max_tokens = false;
    out->max_tokens = 0;
    out->message_count = 0;
    out->prompt_bytes = 0;
    out->prompt_token_ids = 0;
    out->prompt_tokens_estimate = 0;
    out->prefix_hash = 0;
    out->error_offset = 0;
    out->error[0] = 0;

    p = skip_ws(p, end);
    if (p == end)
        return fail(out, why, 0, "body is empty");
    if (*p != '{')
        return fail(out, why, (size_t)(p - body), "body is not a JSON object");
    stack[depth++] = F_TOP;
    p++;

object_first:
    p = skip_ws(p, end);
    if (p < end && *p == '}') {
        p++;
        goto close;
    }
key:
    if (unlikely(p >= end))
        goto eof;
    if (unlikely(*p != '"')) {
        e.at = p;
        e.msg = "expected a string key";
        goto syntax;
    }
    {
        const char *key_at = p;
        struct jstr k;
        p = scan_string(p + 1, end, &k, &e);
        if (unlikely(!p))
            goto syntax;
        frame = stack[depth - 1];
        slot = V_SKIP;
        if (frame != F_OBJ) {
            char buf[32];
            struct slice t = key_text(&k, buf, sizeof buf);
            switch (frame) {
            case F_TOP: {
                int id = top_key_id(t);
                if (id != K_UNKNOWN) {
                    if (top_seen & (1u << id))
                        return fail(out, why, (size_t)(key_at - body), "duplicate key \"%s\"",
                                    top_key_name[id]);
                    top_seen |= 1u << id;
                    slot = top_key_slot[id];
                    if (id == K_PROMPT || id == K_INPUT)
                        prompt_field = top_key_name[id];
                    break;
                }
                uint64_t h = key_hash(&k);
                uint64_t bit = UINT64_C(1) << (h >> 58);
                if (unknown_bloom & bit) {
                    for (unsigned i = 0; i < n_unknown; i++)
                        if (unknown[i].hash == h &&
                            decoded_equal(unknown[i].p, unknown[i].len, unknown[i].escaped,
                                          k.p, k.len, k.escaped))
                            return fail_duplicate(out, why, (size_t)(key_at - body), &k);
                }
                if (n_unknown == OPENAI_MAX_TOP_KEYS)
                    return fail(out, why, (size_t)(key_at - body),
                                "too many top-level keys (limit %d)", OPENAI_MAX_TOP_KEYS);
                unknown[n_unknown++] = (struct seen_key){ h, k.p, k.len, k.escaped };
                unknown_bloom |= bit;
                break;
            }
            case F_STREAM_OPTIONS:
                if (text_is(t, "include_usage", 13)) {
                    if (options_have_include_usage)
                        return fail(out, why, (size_t)(key_at - body),
                                    "duplicate key \"include_usage\" in stream_options");
                    options_have_include_usage = true;
                    slot = V_INCLUDE_USAGE;
                }
                break;
            case F_MESSAGE:
                if (text_is(t, "content", 7)) {
                    if (message_has_content)
                        return fail(out, why, (size_t)(key_at - body),
                                    "duplicate key \"content\" in a message");
                    message_has_content = true;
                    slot = V_CONTENT;
                }
                break;
            case F_PART:
                if (text_is(t, "type", 4)) {
                    if (part_has_type)
                        return fail(out, why, (size_t)(key_at - body),
                                    "duplicate key \"type\" in a content part");
                    part_has_type = true;
                    slot = V_PART_TYPE;
                } else if (text_is(t, "text", 4)) {
                    if (part_has_text)
                        return fail(out, why, (size_t)(key_at - body),
                                    "duplicate key \"text\" in a content part");
                    part_has_text = true;
                    slot = V_PART_TEXT;
                }
                break;
            }
        }
    }
    p = skip_ws(p, end);
    if (unlikely(p >= end))
        goto eof;
    if (unlikely(*p != ':')) {
        e.at = p;
        e.msg = "expected ':'";
        goto syntax;
    }
    p++;
    goto value;

array_first:
    p = skip_ws(p, end);
    if (p < end && *p == ']') {
        p++;
        goto close;
    }
    slot = element_slot[stack[depth - 1]];

value:
    p = skip_ws(p, end);
    if (unlikely(p >= end))
        goto eof;
    {
        uint8_t type;
        switch (*p) {
        case '"': type = T_STRING; break;
        case '{': type = T_OBJECT; break;
        case '[': type = T_ARRAY; break;
        case 't': case 'f': type = T_BOOL; break;
        case 'n': type = T_NULL; break;
        case '-': case '0': case '1': case '2': case '3': case '4':
        case '5': case '6': case '7': case '8': case '9':
            type = T_NUMBER;
            break;
        default:
            e.at = p;
            e.msg = "expected a value";
            goto syntax;
        }
        if (unlikely(!(slot_rules[slot].allow & type)))
            return fail_type(out, why, (size_t)(p - body), slot, prompt_field);

        switch (type) {
        case T_STRING: {
            const char *at = p;
            struct jstr s;
            p = scan_string(p + 1, end, &s, &e);
            if (unlikely(!p))
                goto syntax;
            switch (slot) {
            case V_CONTENT:
            case V_PROMPT:
            case V_PROMPT_ITEM:
                out->prompt_bytes += s.decoded;
                prefix_add(&prefix, s.p, s.len);
                break;
            case V_PART_TEXT:
                part_text_bytes = s.decoded;
                part_text = (struct slice){ s.p, s.len };
                break;
            case V_PART_TYPE:
                part_is_text = str_is(&s, "text", 4);
                break;
            case V_MODEL:
                if (s.len == 0)
                    return fail_type(out, why, (size_t)(at - body), slot, prompt_field);
                out->model = (struct slice){ s.p, s.len };
                out->model_escaped = s.escaped;
                out->model_decoded_len = s.decoded;
                break;
            default:
                break;
            }
            goto after_value;
        }
        case T_NUMBER: {
            const char *at = p;
            struct jnum n;
            p = scan_number(p, end, &n, &e);
            if (unlikely(!p))
                goto syntax;
            switch (slot) {
            case V_MAX_TOKENS:
            case V_MAX_COMPLETION_TOKENS:
                if (n.negative || !n.integer)
                    return fail_type(out, why, (size_t)(at - body), slot, prompt_field);
                if (n.big)
                    return fail(out, why, (size_t)(at - body), "\"%s\" is too large",
                                slot_rules[slot].field);
                if (slot == V_MAX_TOKENS) {
                    has_max_tokens = true;
                    max_tokens = n.value;
                } else {
                    has_max_completion_tokens = true;
                    max_completion_tokens = n.value;
                }
                max_tokens_at = at;
                break;
            case V_PROMPT_ITEM:
            case V_TOKEN:
                out->prompt_token_ids++;
                break;
            default:
                break;
            }
            goto after_value;
        }
        case T_BOOL: {
            bool v = *p == 't';
            if (v ? (end - p >= 4 && memcmp(p, "true", 4) == 0)
                  : (end - p >= 5 && memcmp(p, "false", 5) == 0)) {
                p += v ? 4 : 5;
            } else {
                e.at = p;
                e.msg = "invalid literal";
                goto syntax;
            }
            if (slot == V_STREAM)
                out->stream = v;
            else if (slot == V_INCLUDE_USAGE)
                out->include_usage = v;
            goto after_value;
        }
        case T_NULL:
            if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
                p += 4;
                goto after_value;
            }
            e.at = p;
            e.msg = "invalid literal";
            goto syntax;
        case T_OBJECT:
            if (unlikely(depth == OPENAI_MAX_DEPTH))
                goto too_deep;
            frame = object_frame[slot];
            stack[depth++] = frame;
            if (frame == F_MESSAGE) {
                message_has_content = false;
                if (out->message_count != UINT32_MAX)
                    out->message_count++;
            } else if (frame == F_PART) {
                part_has_type = part_has_text = part_is_text = false;
                part_text_bytes = 0;
                part_text = (struct slice){ NULL, 0 };
            } else if (frame == F_STREAM_OPTIONS) {
                options_have_include_usage = false;
            }
            p++;
            goto object_first;
        default: /* T_ARRAY */
            if (unlikely(depth == OPENAI_MAX_DEPTH))
                goto too_deep;
            stack[depth++] = array_frame[slot];
            p++;
            goto array_first;
        }
    }

after_value:
    p = skip_ws(p, end);
    if (unlikely(p >= end))
        goto eof;
    frame = stack[depth - 1];
    if (*p == ',') {
        p = skip_ws(p + 1, end);
        if (FRAME_IS_ARRAY(frame)) {
            slot = element_slot[frame];
            goto value;
        }
        goto key;
    }
    if (*p == (FRAME_IS_ARRAY(frame) ? ']' : '}')) {
        p++;
        goto close;
    }
    e.at = p;
    e.msg = FRAME_IS_ARRAY(frame) ? "expected ',' or ']'" : "expected ',' or '}'";
    goto syntax;

close:
    frame = stack[--depth];
    if (frame == F_PART && part_is_text) {
        out->prompt_bytes += part_text_bytes;
        prefix_add(&prefix, part_text.p, part_text.len);
    }
    if (depth > 0)
        goto after_value;

    p = skip_ws(p, end);
    if (p != end)
        return fail(out, why, (size_t)(p - body), "trailing data after the JSON value at byte %zu",
                    (size_t)(p - body));

    if (!out->model.p)
        return fail(out, why, 0, "missing \"model\"");
    if (out->model_decoded_len > OPENAI_MAX_MODEL_LEN)
        return fail(out, why, (size_t)(out->model.p - body), "\"model\" is too long (limit %d bytes)",
                    OPENAI_MAX_MODEL_LEN);
    {
        /* a model name ends up in routing, logs and metric labels: no control
         * characters (raw ones below 0x20 the scanner already refused) */
        const char *m = out->model.p, *mend = m + out->model.len;
        bool control = false;
        if (!out->model_escaped) {
            control = memchr(m, 0x7f, out->model.len) != NULL;
        } else {
            while (m < mend && !control) {
                uint8_t ch[4];
                control = decode_char(&m, mend, ch) == 1 && (ch[0] < 0x20 || ch[0] == 0x7f);
            }
        }
        if (control)
            return fail(out, why, (size_t)(out->model.p - body),
                        "\"model\" contains a control character");
    }
    if (has_max_tokens && has_max_completion_tokens && max_tokens != max_completion_tokens)
        return fail(out, why, (size_t)(max_tokens_at - body),
                    "\"max_tokens\" and \"max_completion_tokens\" differ");
    if (has_max_tokens || has_max_completion_tokens) {
        out->has_max_tokens = true;
        out->max_tokens = has_max_tokens ? max_tokens : max_completion_tokens;
    }
    out->prompt_tokens_estimate = (out->prompt_bytes + 3) / 4 + 4 * (uint64_t)out->message_count +
                                  out->prompt_token_ids;
    if (out->prompt_tokens_estimate == 0)
        out->prompt_tokens_estimate = 1;
    if (prefix.any)
        out->prefix_hash = prefix.h ? prefix.h : 1;
    return OPENAI_OK;

eof:
    e.at = end;
    e.msg = "unexpected end of input";
    goto syntax;
too_deep:
    return fail(out, why, (size_t)(p - body), "JSON nesting too deep at byte %zu (limit %d)",
                (size_t)(p - body), OPENAI_MAX_DEPTH);
syntax:
    return fail_syntax(out, why, body, &e);
}

bool openai_content_type_is_json(struct slice value)
{
    static const char want[] = "application/json";
    const size_t n = sizeof want - 1;
    if (value.len < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)value.p[i];
        if ((uint8_t)(c - 'A') < 26)
            c |= 0x20;
        if (c != (uint8_t)want[i])
            return false;
    }
    const char *p = value.p + n, *end = value.p + value.len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p == end || *p == ';';
}
