/* Strict single-pass JSON reader for OpenAI request bodies (RFC 8259), in three
 * layers:
 *
 *   tokenizer    json_walk(): the grammar. Nesting on a fixed 32-level stack, no
 *                allocation; each token goes to a handler of the reader, which also
 *                says which value types it accepts next, so a field of the wrong
 *                type is reported before it is scanned.
 *   fields       on_key/on_string/on_number/on_bool/on_open/on_close: what a token
 *                means where it stands. Each open container has a kind (the request,
 *                "messages", a message, a content part, ...) and each value about to
 *                be read a slot naming its field; a table gives the types each slot
 *                accepts. What aigw does not read goes through the "skip" kinds and
 *                slots: validated, never stored.
 *   final check  on_end(): what needs the whole body (model present and clean,
 *                max_tokens reconciled, the prompt estimate).
 *
 * Strings, the bulk of any body, are scanned 16 bytes at a time with SSE2 while
 * they are plain ASCII. */
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

/* ---- bytes: whitespace, strings, numbers ---- */

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
/* ---- tokenizer: the RFC 8259 grammar ---- */

/* JSON value types, as bits: what a field accepts. */
enum {
    T_STRING = 1, T_NUMBER = 2, T_BOOL = 4, T_NULL = 8, T_OBJECT = 16, T_ARRAY = 32,
    T_ANY = 63,
};

/* Why the tokenizer stopped early. */
enum json_error {
    JE_SYNTAX,          /* not JSON: e says where and what was expected */
    JE_WRONG_TYPE,      /* a value of a type the handlers did not allow starts at e.at */
    JE_TOO_DEEP,        /* a container past OPENAI_MAX_DEPTH opens at e.at */
    JE_TRAILING,        /* bytes after the complete value, from e.at */
};

/* The handlers json_walk calls, in document order, with the reader (below, under
 * "fields"). Those returning int return OPENAI_OK to go on; anything else stops
 * the walk and is its result. depth counts the open containers, the new one
 * included for on_open and the closed one excluded for on_close. */
struct reader;
static inline unsigned json_allow(const struct reader *r);     /* T_* of the next value */
static inline int on_key(struct reader *r, unsigned depth, const char *at, const struct jstr *k);
static inline int on_string(struct reader *r, const char *at, const struct jstr *s);
static inline int on_number(struct reader *r, const char *at, size_t len, const struct jnum *n);
static inline void on_bool(struct reader *r, bool v);
static inline void on_open(struct reader *r, unsigned depth, bool array);
static inline void on_close(struct reader *r, unsigned depth);
static int on_end(struct reader *r);
static int on_error(struct reader *r, enum json_error error, struct parse_error e, unsigned depth,
                    const char *end);

/* Walks body[0..len) token by token and hands each to the reader. A value of a
 * type json_allow() excludes is reported before any of it is scanned. The states
 * are labels, not a variable: each token is read where the grammar says it comes,
 * and the handlers, inlined, run right there (a state variable and a token kind to
 * dispatch on cost 20-40% of the whole read, measured). */
static inline __attribute__((always_inline))
int json_walk(struct reader *r, const char *body, size_t len)
{
    const char *p = body;
    const char *const end = body + len;
    uint32_t arrays = 0;        /* one bit per open container, innermost lowest: 1 = array */
    unsigned depth = 0;
    struct parse_error e;
    int rc;

    goto value;

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
        e = (struct parse_error){ p, "expected a string key" };
        goto syntax;
    }
    {
        const char *at = p;
        struct jstr k;
        p = scan_string(p + 1, end, &k, &e);
        if (unlikely(!p))
            goto syntax;
        if (unlikely((rc = on_key(r, depth, at, &k)) != OPENAI_OK))
            return rc;
    }
    p = skip_ws(p, end);
    if (unlikely(p >= end))
        goto eof;
    if (unlikely(*p != ':')) {
        e = (struct parse_error){ p, "expected ':'" };
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
            e = (struct parse_error){ p, "expected a value" };
            goto syntax;
        }
        if (unlikely(!(json_allow(r) & type)))
            return on_error(r, JE_WRONG_TYPE, (struct parse_error){ p, NULL }, depth, end);

        switch (type) {
        case T_STRING: {
            const char *at = p;
            struct jstr s;
            p = scan_string(p + 1, end, &s, &e);
            if (unlikely(!p))
                goto syntax;
            if (unlikely((rc = on_string(r, at, &s)) != OPENAI_OK))
                return rc;
            goto after_scalar;
        }
        case T_NUMBER: {
            const char *at = p;
            struct jnum n;
            p = scan_number(p, end, &n, &e);
            if (unlikely(!p))
                goto syntax;
            if (unlikely((rc = on_number(r, at, (size_t)(p - at), &n)) != OPENAI_OK))
                return rc;
            goto after_scalar;
        }
        case T_BOOL: {
            bool v = *p == 't';
            if (v ? (end - p >= 4 && memcmp(p, "true", 4) == 0)
                  : (end - p >= 5 && memcmp(p, "false", 5) == 0)) {
                p += v ? 4 : 5;
            } else {
                e = (struct parse_error){ p, "invalid literal" };
                goto syntax;
            }
            on_bool(r, v);
            goto after_scalar;
        }
        case T_NULL:
            if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
                p += 4;
                goto after_scalar;
            }
            e = (struct parse_error){ p, "invalid literal" };
            goto syntax;
        default: /* T_OBJECT, T_ARRAY */
            if (unlikely(depth == OPENAI_MAX_DEPTH))
                return on_error(r, JE_TOO_DEEP, (struct parse_error){ p, NULL }, depth, end);
            arrays = arrays << 1 | (type == T_ARRAY);
            depth++;
            p++;
            if (type == T_ARRAY) {
                on_open(r, depth, true);
                goto array_first;
            }
            on_open(r, depth, false);
            goto object_first;
        }
    }

after_scalar:
    if (unlikely(depth == 0))   /* the whole document is this scalar */
        goto done;
after_value:
    p = skip_ws(p, end);
    if (unlikely(p >= end))
        goto eof;
    {
        bool array = arrays & 1;
        if (*p == ',') {
            p = skip_ws(p + 1, end);
            if (array)
                goto value;
            goto key;
        }
        if (*p == (array ? ']' : '}')) {
            p++;
            goto close;
        }
        e = (struct parse_error){ p, array ? "expected ',' or ']'" : "expected ',' or '}'" };
        goto syntax;
    }

close:
    depth--;
    arrays >>= 1;
    on_close(r, depth);
    if (depth > 0)
        goto after_value;
done:
    p = skip_ws(p, end);
    if (p != end)
        return on_error(r, JE_TRAILING, (struct parse_error){ p, NULL }, depth, end);
    return on_end(r);

eof:
    e = (struct parse_error){ end, "unexpected end of input" };
syntax:
    return on_error(r, JE_SYNTAX, e, depth, end);
}

_Static_assert(OPENAI_MAX_DEPTH <= 32, "json_walk keeps one bit per open container in a uint32_t");

/* ---- fields: what aigw reads, and the shapes it accepts ---- */

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
    F_COUNT
};

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
    V_DOCUMENT,         /* the body itself */
    V_COUNT
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
    [V_DOCUMENT]              = { T_OBJECT, "", "", "" },
};

/* The container a value of a slot opens. Other slots do not accept that type. */
static const uint8_t object_frame[V_COUNT] = {
    [V_STREAM_OPTIONS] = F_STREAM_OPTIONS, [V_MESSAGE] = F_MESSAGE, [V_PART] = F_PART,
    [V_DOCUMENT] = F_TOP,
};
static const uint8_t array_frame[V_COUNT] = {
    [V_SKIP] = F_ARR, [V_MESSAGES] = F_MESSAGES, [V_CONTENT] = F_PARTS,
    [V_PROMPT] = F_PROMPT, [V_PROMPT_ITEM] = F_TOKENS,
};
/* The slot of an array's elements (objects: V_SKIP until a key names the field). */
static const uint8_t element_slot[F_COUNT] = {
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

/* The prompt cut into chained block hashes (see openai.h): h is the hash of the
 * block being filled, seeded with the previous block's; fill its bytes so far. */
struct block_chain {
    uint64_t h;
    size_t fill;
    struct openai_request *out;
};

static void prefix_add(struct block_chain *ph, const char *p, size_t n)
{
    struct openai_request *o = ph->out;
    while (n && o->prefix_blocks < OPENAI_PREFIX_BLOCKS_MAX) {
        size_t take = OPENAI_PREFIX_BLOCK - ph->fill;
        if (take > n)
            take = n;
        ph->h = hash_bytes_seeded(p, take, ph->h);
        ph->fill += take;
        p += take;
        n -= take;
        if (ph->fill == OPENAI_PREFIX_BLOCK) {
            o->prefix_block[o->prefix_blocks++] = ph->h ? ph->h : 1;
            ph->fill = 0;
        }
    }
}

/* a string's end: one byte, so "ab","c" and "a","bc" differ */
static void prefix_end_string(struct block_chain *ph)
{
    prefix_add(ph, "", 1);
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

/* ---- the request reader: tokens in, fields out ---- */

/* What the reader knows between tokens. */
struct reader {
    struct openai_request *out;
    const char **why;
    const char *body;
    void (*on_prompt)(void *ctx, const struct openai_prompt_piece *piece);
    void *ctx;
    bool model_optional;

    uint8_t frames[OPENAI_MAX_DEPTH];   /* frames[d-1]: the container open at depth d */
    uint8_t slot;                       /* the field the next value is */

    /* top level */
    uint32_t top_seen;                  /* bits of enum top_key */
    const char *prompt_field;           /* "prompt" or "input", whichever is being read */
    uint8_t prompt_source;              /* the same as enum openai_prompt_source */
    unsigned n_unknown;
    uint64_t unknown_bloom;             /* one bit per hash, skips most searches */

    /* the message and content part being read */
    bool message_has_content;
    bool part_has_type, part_has_text, part_is_text;
    struct jstr part_text;

    bool options_have_include_usage;

    /* max_tokens / max_completion_tokens, reconciled at the end */
    bool has_max_tokens, has_max_completion_tokens;
    uint64_t max_tokens, max_completion_tokens;
    const char *max_tokens_at;

    /* which prompt of a "prompt"/"input" batch the next token ids belong to */
    uint32_t prompt_item, next_prompt_item;
    bool in_token_run;                  /* the last element was a bare token id */

    struct block_chain prefix;
    struct seen_key unknown[OPENAI_MAX_TOP_KEYS];
};

static void reader_init(struct reader *r, const char *body, const struct openai_read_options *opt,
                        struct openai_request *out, const char **why)
{
    r->out = out;
    r->why = why;
    r->body = body;
    r->on_prompt = opt ? opt->on_prompt : NULL;
    r->ctx = opt ? opt->ctx : NULL;
    r->model_optional = opt && opt->model_optional;
    r->slot = V_DOCUMENT;
    r->top_seen = 0;
    r->prompt_field = "prompt";
    r->prompt_source = OPENAI_FROM_PROMPT;
    r->n_unknown = 0;
    r->unknown_bloom = 0;
    r->message_has_content = false;
    r->part_has_type = r->part_has_text = r->part_is_text = false;
    r->part_text = (struct jstr){ NULL, 0, 0, false };
    r->options_have_include_usage = false;
    r->has_max_tokens = r->has_max_completion_tokens = false;
    r->max_tokens = r->max_completion_tokens = 0;
    r->max_tokens_at = body;
    r->prompt_item = r->next_prompt_item = 0;
    r->in_token_run = false;
    r->prefix = (struct block_chain){ 0, 0, out };

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
    out->prefix_blocks = 0;
    out->error_offset = 0;
    out->error[0] = 0;
}

static inline size_t offset_of(const struct reader *r, const char *at)
{
    return (size_t)(at - r->body);
}

__attribute__((noinline))
static void show_prompt_piece(const struct reader *r, uint8_t source, uint32_t item,
                              const char *p, size_t len, size_t decoded, bool token_id)
{
    struct openai_prompt_piece piece = {
        .raw = { p, len }, .decoded = decoded, .item = item, .source = source,
        .token_id = token_id,
    };
    r->on_prompt(r->ctx, &piece);
}

/* A string of prompt text: counted, hashed into the prefix, shown to the caller. */
static inline void prompt_text(struct reader *r, uint8_t source, uint32_t item, const struct jstr *s)
{
    r->out->prompt_bytes += s->decoded;
    prefix_add(&r->prefix, s->p, s->len);
    prefix_end_string(&r->prefix);
    if (unlikely(r->on_prompt))
        show_prompt_piece(r, source, item, s->p, s->len, s->decoded, false);
}

static inline void prompt_token(struct reader *r, const char *at, size_t len)
{
    r->out->prompt_token_ids++;
    if (unlikely(r->on_prompt))
        show_prompt_piece(r, r->prompt_source, r->prompt_item, at, len, 0, true);
}

static inline uint32_t current_message(const struct reader *r)
{
    return r->out->message_count - 1;
}

/* A key of the request object: one of the fields aigw reads (each at most once),
 * or another key, which must not repeat either. */
static int on_top_key(struct reader *r, const struct jstr *k, struct slice text, size_t off)
{
    int id = top_key_id(text);
    if (id != K_UNKNOWN) {
        if (r->top_seen & (1u << id))
            return fail(r->out, r->why, off, "duplicate key \"%s\"", top_key_name[id]);
        r->top_seen |= 1u << id;
        r->slot = top_key_slot[id];
        if (id == K_PROMPT || id == K_INPUT) {
            r->prompt_field = top_key_name[id];
            r->prompt_source = id == K_PROMPT ? OPENAI_FROM_PROMPT : OPENAI_FROM_INPUT;
            r->prompt_item = r->next_prompt_item = 0;
            r->in_token_run = false;
        }
        return OPENAI_OK;
    }
    uint64_t h = key_hash(k);
    uint64_t bit = UINT64_C(1) << (h >> 58);
    if (r->unknown_bloom & bit) {
        for (unsigned i = 0; i < r->n_unknown; i++) {
            const struct seen_key *u = &r->unknown[i];
            if (u->hash == h && decoded_equal(u->p, u->len, u->escaped, k->p, k->len, k->escaped))
                return fail_duplicate(r->out, r->why, off, k);
        }
    }
    if (r->n_unknown == OPENAI_MAX_TOP_KEYS)
        return fail(r->out, r->why, off, "too many top-level keys (limit %d)", OPENAI_MAX_TOP_KEYS);
    r->unknown[r->n_unknown++] = (struct seen_key){ h, k->p, k->len, k->escaped };
    r->unknown_bloom |= bit;
    return OPENAI_OK;
}

/* A key: sets the slot of the value that follows. In the objects aigw reads, a key
 * it acts on may appear once. */
static inline unsigned json_allow(const struct reader *r)
{
    return slot_rules[r->slot].allow;
}

static inline int on_key(struct reader *r, unsigned depth, const char *at, const struct jstr *k)
{
    uint8_t frame = r->frames[depth - 1];
    r->slot = V_SKIP;
    if (frame == F_OBJ)
        return OPENAI_OK;
    char buf[32];
    struct slice t = key_text(k, buf, sizeof buf);
    size_t off = offset_of(r, at);
    switch (frame) {
    case F_TOP:
        return on_top_key(r, k, t, off);
    case F_STREAM_OPTIONS:
        if (text_is(t, "include_usage", 13)) {
            if (r->options_have_include_usage)
                return fail(r->out, r->why, off, "duplicate key \"include_usage\" in stream_options");
            r->options_have_include_usage = true;
            r->slot = V_INCLUDE_USAGE;
        }
        break;
    case F_MESSAGE:
        if (text_is(t, "content", 7)) {
            if (r->message_has_content)
                return fail(r->out, r->why, off, "duplicate key \"content\" in a message");
            r->message_has_content = true;
            r->slot = V_CONTENT;
        }
        break;
    case F_PART:
        if (text_is(t, "type", 4)) {
            if (r->part_has_type)
                return fail(r->out, r->why, off, "duplicate key \"type\" in a content part");
            r->part_has_type = true;
            r->slot = V_PART_TYPE;
        } else if (text_is(t, "text", 4)) {
            if (r->part_has_text)
                return fail(r->out, r->why, off, "duplicate key \"text\" in a content part");
            r->part_has_text = true;
            r->slot = V_PART_TEXT;
        }
        break;
    }
    return OPENAI_OK;
}

static inline int on_string(struct reader *r, const char *at, const struct jstr *s)
{
    switch (r->slot) {
    case V_CONTENT:
        prompt_text(r, OPENAI_FROM_MESSAGES, current_message(r), s);
        break;
    case V_PROMPT:
        prompt_text(r, r->prompt_source, 0, s);
        break;
    case V_PROMPT_ITEM:
        r->in_token_run = false;
        prompt_text(r, r->prompt_source, r->next_prompt_item++, s);
        break;
    case V_PART_TEXT:
        r->part_text = *s;
        break;
    case V_PART_TYPE:
        r->part_is_text = str_is(s, "text", 4);
        break;
    case V_MODEL:
        if (s->len == 0)
            return fail_type(r->out, r->why, offset_of(r, at), r->slot, r->prompt_field);
        r->out->model = (struct slice){ s->p, s->len };
        r->out->model_escaped = s->escaped;
        r->out->model_decoded_len = s->decoded;
        break;
    default:
        break;
    }
    return OPENAI_OK;
}

static inline int on_number(struct reader *r, const char *at, size_t len, const struct jnum *n)
{
    switch (r->slot) {
    case V_MAX_TOKENS:
    case V_MAX_COMPLETION_TOKENS:
        if (n->negative || !n->integer)
            return fail_type(r->out, r->why, offset_of(r, at), r->slot, r->prompt_field);
        if (n->big)
            return fail(r->out, r->why, offset_of(r, at), "\"%s\" is too large",
                        slot_rules[r->slot].field);
        if (r->slot == V_MAX_TOKENS) {
            r->has_max_tokens = true;
            r->max_tokens = n->value;
        } else {
            r->has_max_completion_tokens = true;
            r->max_completion_tokens = n->value;
        }
        r->max_tokens_at = at;
        break;
    case V_PROMPT_ITEM:
        /* bare token ids in a row are one prompt: [1, 2, 3] */
        if (!r->in_token_run) {
            r->in_token_run = true;
            r->prompt_item = r->next_prompt_item++;
        }
        prompt_token(r, at, len);
        break;
    case V_TOKEN:
        prompt_token(r, at, len);
        break;
    default:
        break;
    }
    return OPENAI_OK;
}

static inline void on_bool(struct reader *r, bool v)
{
    if (r->slot == V_STREAM)
        r->out->stream = v;
    else if (r->slot == V_INCLUDE_USAGE)
        r->out->include_usage = v;
}

/* A container opens at depth (1 for the request itself). */
static inline void on_open(struct reader *r, unsigned depth, bool array)
{
    uint8_t frame = array ? array_frame[r->slot] : object_frame[r->slot];
    r->frames[depth - 1] = frame;
    r->slot = element_slot[frame];
    /* most containers are ones aigw skips or the messages: tests, not a jump table */
    if (frame == F_MESSAGE) {
        r->message_has_content = false;
        if (r->out->message_count != UINT32_MAX)
            r->out->message_count++;
    } else if (frame == F_PART) {
        r->part_has_type = r->part_has_text = r->part_is_text = false;
        r->part_text = (struct jstr){ NULL, 0, 0, false };
    } else if (frame == F_STREAM_OPTIONS) {
        r->options_have_include_usage = false;
    } else if (frame == F_PROMPT) {
        r->next_prompt_item = 0;
        r->in_token_run = false;
    } else if (frame == F_TOKENS) {
        r->in_token_run = false;
        r->prompt_item = r->next_prompt_item++;
    }
}

/* The container at depth + 1 closed; depth containers are still open. */
static inline void on_close(struct reader *r, unsigned depth)
{
    uint8_t frame = r->frames[depth];
    /* a part's text counts once its type is known, wherever "type" came */
    if (frame == F_PART && r->part_is_text)
        prompt_text(r, OPENAI_FROM_MESSAGES, current_message(r), &r->part_text);
    if (depth > 0)
        r->slot = element_slot[r->frames[depth - 1]];
}

/* ---- the final check: what can only be judged once the whole body is read ---- */

static int on_end(struct reader *r)
{
    struct openai_request *out = r->out;
    if (!out->model.p) {
        if (!r->model_optional)
            return fail(out, r->why, 0, "missing \"model\"");
    } else {
        if (out->model_decoded_len > OPENAI_MAX_MODEL_LEN)
            return fail(out, r->why, offset_of(r, out->model.p),
                        "\"model\" is too long (limit %d bytes)", OPENAI_MAX_MODEL_LEN);
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
            return fail(out, r->why, offset_of(r, out->model.p),
                        "\"model\" contains a control character");
    }
    if (r->has_max_tokens && r->has_max_completion_tokens &&
        r->max_tokens != r->max_completion_tokens)
        return fail(out, r->why, offset_of(r, r->max_tokens_at),
                    "\"max_tokens\" and \"max_completion_tokens\" differ");
    if (r->has_max_tokens || r->has_max_completion_tokens) {
        out->has_max_tokens = true;
        out->max_tokens = r->has_max_tokens ? r->max_tokens : r->max_completion_tokens;
    }
    out->prompt_tokens_estimate = (out->prompt_bytes + 3) / 4 + 4 * (uint64_t)out->message_count +
                                  out->prompt_token_ids;
    if (out->prompt_tokens_estimate == 0)
        out->prompt_tokens_estimate = 1;
    return OPENAI_OK;
}

/* The walk stopped at something that is not an OpenAI request. */
__attribute__((cold, noinline))
static int on_error(struct reader *r, enum json_error error, struct parse_error e, unsigned depth,
                    const char *end)
{
    struct openai_request *out = r->out;
    size_t off = offset_of(r, e.at);
    switch (error) {
    case JE_WRONG_TYPE:
        if (r->slot == V_DOCUMENT)
            return fail(out, r->why, off, "body is not a JSON object");
        return fail_type(out, r->why, off, r->slot, r->prompt_field);
    case JE_TOO_DEEP:
        return fail(out, r->why, off, "JSON nesting too deep at byte %zu (limit %d)", off,
                    OPENAI_MAX_DEPTH);
    case JE_TRAILING:
        return fail(out, r->why, off, "trailing data after the JSON value at byte %zu", off);
    default: /* JE_SYNTAX */
        if (depth == 0) {       /* the request object never opened */
            if (e.at == end)
                return fail(out, r->why, 0, "body is empty");
            return fail(out, r->why, off, "body is not a JSON object");
        }
        return fail_syntax(out, r->why, r->body, &e);
    }
}

/* ---- the entry points ---- */

int openai_read_request(const char *body, size_t len, const struct openai_read_options *opt,
                        struct openai_request *out, const char **why)
{
    struct reader r;
    reader_init(&r, body, opt, out, why);
    return json_walk(&r, body, len);
}

int openai_parse_request(const char *body, size_t len, struct openai_request *out,
                         const char **why)
{
    return openai_read_request(body, len, NULL, out, why);
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
