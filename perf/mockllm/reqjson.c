/* Request-body reader: a recursive-descent JSON validator with bounded depth that
 * looks at a handful of top-level keys and skips the rest. No allocation. */
#include "reqjson.h"
#include "mock.h"

#include <string.h>

#define MAX_DEPTH 64

struct jp {
    const char *p, *end;
    const char *why;
};

struct text_ctx {
    text_sink_fn sink;
    void *ctx;
};

static bool fail(struct jp *j, const char *why)
{
    if (!j->why)
        j->why = why;
    return false;
}

static void skip_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static bool peek(struct jp *j, char c)
{
    skip_ws(j);
    return j->p < j->end && *j->p == c;
}

static bool expect(struct jp *j, char c)
{
    if (!peek(j, c))
        return fail(j, "invalid JSON in request body");
    j->p++;
    return true;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A string at j->p; *out gets its raw contents between the quotes (escapes kept). */
static bool parse_string(struct jp *j, const char **out, size_t *out_len)
{
    if (!expect(j, '"'))
        return false;
    const char *start = j->p;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            if (out) {
                *out = start;
                *out_len = (size_t)(j->p - start);
            }
            j->p++;
            return true;
        }
        if (c < 0x20)
            return fail(j, "invalid JSON in request body: control character in string");
        if (c == '\\') {
            if (j->end - j->p < 2)
                break;
            char e = j->p[1];
            if (e == 'u') {
                if (j->end - j->p < 6 || !is_hex(j->p[2]) || !is_hex(j->p[3]) ||
                    !is_hex(j->p[4]) || !is_hex(j->p[5]))
                    return fail(j, "invalid JSON in request body: bad \\u escape");
                j->p += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return fail(j, "invalid JSON in request body: bad escape");
            j->p += 2;
            continue;
        }
        j->p++;
    }
    return fail(j, "invalid JSON in request body: unterminated string");
}

/* A number. *is_uint tells whether it is a plain non-negative integer; its value
 * (saturating at UINT32_MAX) goes to *value. */
static bool parse_number(struct jp *j, bool *is_uint, uint64_t *value)
{
    skip_ws(j);
    const char *p = j->p, *end = j->end;
    bool uint_form = true;
    uint64_t v = 0;
    if (p < end && *p == '-') {
        uint_form = false;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return fail(j, "invalid JSON in request body: bad number");
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (v < UINT32_MAX)
                v = v * 10 + (uint64_t)(*p - '0');
            p++;
        }
    }
    if (v > UINT32_MAX)
        v = UINT32_MAX;
    if (p < end && *p == '.') {
        uint_form = false;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(j, "invalid JSON in request body: bad number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        uint_form = false;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(j, "invalid JSON in request body: bad number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    j->p = p;
    if (is_uint)
        *is_uint = uint_form;
    if (value)
        *value = v;
    return true;
}

static bool parse_literal(struct jp *j, const char *word)
{
    size_t n = strlen(word);
    skip_ws(j);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return fail(j, "invalid JSON in request body");
    j->p += n;
    return true;
}

/* true/false/null: 1, 0, -1 in *out. Anything else is an error. */
static bool parse_bool_or_null(struct jp *j, int *out, const char *why)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == 't' && parse_literal(j, "true")) {
        *out = 1;
        return true;
    }
    if (j->p < j->end && *j->p == 'f' && parse_literal(j, "false")) {
        *out = 0;
        return true;
    }
    if (j->p < j->end && *j->p == 'n' && parse_literal(j, "null")) {
        *out = -1;
        return true;
    }
    return fail(j, why);
}

static bool skip_value(struct jp *j, int depth);

static bool skip_container(struct jp *j, char close, bool object, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(j, "invalid JSON in request body: nesting too deep");
    j->p++;
    if (peek(j, close)) {
        j->p++;
        return true;
    }
    for (;;) {
        if (object) {
            if (!parse_string(j, NULL, NULL) || !expect(j, ':'))
                return false;
        }
        if (!skip_value(j, depth + 1))
            return false;
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        return expect(j, close);
    }
}

static bool skip_value(struct jp *j, int depth)
{
    skip_ws(j);
    if (j->p >= j->end)
        return fail(j, "invalid JSON in request body: unexpected end");
    switch (*j->p) {
    case '{': return skip_container(j, '}', true, depth);
    case '[': return skip_container(j, ']', false, depth);
    case '"': return parse_string(j, NULL, NULL);
    case 't': return parse_literal(j, "true");
    case 'f': return parse_literal(j, "false");
    case 'n': return parse_literal(j, "null");
    default:  return parse_number(j, NULL, NULL);
    }
}

/* Iterates an object's members: calls member() with the raw key, the value at j->p. */
typedef bool (*member_fn)(struct jp *j, const char *key, size_t key_len, void *ctx, int depth);

static bool walk_object(struct jp *j, member_fn member, void *ctx, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(j, "invalid JSON in request body: nesting too deep");
    if (!expect(j, '{'))
        return false;
    if (peek(j, '}')) {
        j->p++;
        return true;
    }
    for (;;) {
        const char *key;
        size_t key_len;
        if (!parse_string(j, &key, &key_len) || !expect(j, ':'))
            return false;
        if (!member(j, key, key_len, ctx, depth + 1))
            return false;
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        return expect(j, '}');
    }
}

/* Iterates an array's elements: calls element() with the value at j->p. */
typedef bool (*element_fn)(struct jp *j, void *ctx, int depth);

static bool walk_array(struct jp *j, element_fn element, void *ctx, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(j, "invalid JSON in request body: nesting too deep");
    if (!expect(j, '['))
        return false;
    if (peek(j, ']')) {
        j->p++;
        return true;
    }
    for (;;) {
        if (!element(j, ctx, depth + 1))
            return false;
        if (peek(j, ',')) {
            j->p++;
            continue;
        }
        return expect(j, ']');
    }
}

static bool key_is(const char *key, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(key, lit, len) == 0;
}

static uint64_t hash_bytes(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- prompt text ---- */

struct prompt_ctx {
    struct llm_request *r;
    struct text_ctx text;
};

static void take_text(struct prompt_ctx *pc, const char *s, size_t n)
{
    pc->r->prompt_bytes += n;
    if (pc->text.sink && n)
        pc->text.sink(pc->text.ctx, s, n);
}

/* A string is prompt text; anything else is validated and ignored. */
static bool text_or_skip(struct jp *j, struct prompt_ctx *pc, int depth)
{
    if (peek(j, '"')) {
        const char *s;
        size_t n;
        if (!parse_string(j, &s, &n))
            return false;
        take_text(pc, s, n);
        return true;
    }
    return skip_value(j, depth);
}

/* chat content part: {"type":"text","text":"..."} */
static bool content_part_member(struct jp *j, const char *key, size_t len, void *ctx, int depth)
{
    if (key_is(key, len, "text"))
        return text_or_skip(j, ctx, depth);
    return skip_value(j, depth);
}

static bool content_part(struct jp *j, void *ctx, int depth)
{
    if (peek(j, '{'))
        return walk_object(j, content_part_member, ctx, depth);
    return text_or_skip(j, ctx, depth);
}

static bool message_member(struct jp *j, const char *key, size_t len, void *ctx, int depth)
{
    if (key_is(key, len, "content")) {
        if (peek(j, '['))
            return walk_array(j, content_part, ctx, depth);
        return text_or_skip(j, ctx, depth);
    }
    return skip_value(j, depth);
}

static bool message(struct jp *j, void *ctx, int depth)
{
    if (!peek(j, '{'))
        return fail(j, "each message must be an object");
    return walk_object(j, message_member, ctx, depth);
}

/* completions prompt element: a string, a token id, or an array of token ids */
static bool prompt_element(struct jp *j, void *ctx, int depth);

static bool prompt_value(struct jp *j, struct prompt_ctx *pc, int depth)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == '[')
        return walk_array(j, prompt_element, pc, depth);
    if (j->p < j->end && (*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))) {
        pc->r->prompt_ids++;
        return parse_number(j, NULL, NULL);
    }
    return text_or_skip(j, pc, depth);
}

static bool prompt_element(struct jp *j, void *ctx, int depth)
{
    return prompt_value(j, ctx, depth);
}

/* ---- embeddings input ---- */

struct input_ctx {
    struct llm_request *r;
    struct embed_input *inputs;
    struct embed_input *cur;    /* the input ids are being added to */
};

static bool input_id(struct jp *j, void *ctx, int depth)
{
    struct input_ctx *ic = ctx;
    const char *start;
    skip_ws(j);
    start = j->p;
    if (!parse_number(j, NULL, NULL))
        return fail(j, "input token ids must be numbers");
    ic->cur->tokens++;
    ic->cur->hash = hash_bytes(ic->cur->hash, start, (size_t)(j->p - start));
    return true;
}

static struct embed_input *new_input(struct jp *j, struct input_ctx *ic)
{
    if (ic->r->ninputs >= REQJSON_MAX_INPUTS) {
        fail(j, "too many inputs");
        return NULL;
    }
    struct embed_input *in = &ic->inputs[ic->r->ninputs++];
    in->hash = 0xcbf29ce484222325ull;
    in->tokens = 0;
    return in;
}

static bool input_element(struct jp *j, void *ctx, int depth)
{
    struct input_ctx *ic = ctx;
    skip_ws(j);
    if (j->p < j->end && *j->p == '"') {
        const char *s;
        size_t n;
        if (!parse_string(j, &s, &n))
            return false;
        struct embed_input *in = new_input(j, ic);
        if (!in)
            return false;
        in->hash = hash_bytes(in->hash, s, n);
        in->tokens = (n + MOCK_BYTES_PER_TOKEN - 1) / MOCK_BYTES_PER_TOKEN;
        ic->r->prompt_bytes += n;
        return true;
    }
    if (j->p < j->end && *j->p == '[') {
        if (!(ic->cur = new_input(j, ic)))
            return false;
        bool ok = walk_array(j, input_id, ic, depth);
        ic->r->prompt_ids += ic->cur->tokens;
        ic->cur = NULL;
        return ok;
    }
    /* a flat array of token ids is one input */
    if (!ic->cur && !(ic->cur = new_input(j, ic)))
        return false;
    if (!input_id(j, ic, depth))
        return false;
    ic->r->prompt_ids++;
    return true;
}

static bool input_value(struct jp *j, struct input_ctx *ic, int depth)
{
    skip_ws(j);
    if (j->p < j->end && *j->p == '[') {
        ic->cur = NULL;
        bool ok = walk_array(j, input_element, ic, depth);
        ic->cur = NULL;
        return ok;
    }
    if (j->p < j->end && *j->p == '"')
        return input_element(j, ic, depth);
    return fail(j, "input must be a string or an array");
}

/* ---- top level ---- */

struct top_ctx {
    struct llm_request *r;
    enum api_kind kind;
    struct prompt_ctx prompt;
    struct input_ctx input;
};

static bool stream_options_member(struct jp *j, const char *key, size_t len, void *ctx, int depth)
{
    struct llm_request *r = ctx;
    if (key_is(key, len, "include_usage")) {
        int v;
        if (!parse_bool_or_null(j, &v, "stream_options.include_usage must be a boolean"))
            return false;
        r->include_usage = v == 1;
        return true;
    }
    return skip_value(j, depth);
}

static bool top_member(struct jp *j, const char *key, size_t len, void *vctx, int depth)
{
    struct top_ctx *t = vctx;
    struct llm_request *r = t->r;

    if (key_is(key, len, "model")) {
        if (peek(j, 'n')) {
            r->model = NULL;
            return parse_literal(j, "null");
        }
        if (!peek(j, '"'))
            return fail(j, "model must be a string");
        return parse_string(j, &r->model, &r->model_len);
    }
    if (key_is(key, len, "stream")) {
        int v;
        if (!parse_bool_or_null(j, &v, "stream must be a boolean"))
            return false;
        r->stream = v == 1;
        return true;
    }
    if (key_is(key, len, "max_tokens") || key_is(key, len, "max_completion_tokens")) {
        if (peek(j, 'n')) {
            r->has_max_tokens = false;
            return parse_literal(j, "null");
        }
        bool is_uint;
        uint64_t v;
        if (!peek(j, '-') && !(j->p < j->end && *j->p >= '0' && *j->p <= '9'))
            return fail(j, "max_tokens must be an integer");
        if (!parse_number(j, &is_uint, &v))
            return false;
        if (!is_uint)
            return fail(j, "max_tokens must be a positive integer");
        r->has_max_tokens = true;
        r->max_tokens = v;
        return true;
    }
    if (key_is(key, len, "stream_options")) {
        if (peek(j, 'n'))
            return parse_literal(j, "null");
        if (!peek(j, '{'))
            return fail(j, "stream_options must be an object");
        return walk_object(j, stream_options_member, r, depth);
    }
    if (t->kind == API_CHAT && key_is(key, len, "messages")) {
        if (!peek(j, '['))
            return fail(j, "messages must be an array");
        return walk_array(j, message, &t->prompt, depth);
    }
    if (t->kind == API_COMPLETION && key_is(key, len, "prompt"))
        return prompt_value(j, &t->prompt, depth);
    if (t->kind == API_EMBEDDING && key_is(key, len, "input")) {
        t->r->ninputs = 0;
        return input_value(j, &t->input, depth);
    }
    return skip_value(j, depth);
}

bool llm_request_parse(const char *body, size_t len, enum api_kind kind,
                       struct llm_request *r, struct embed_input *inputs,
                       text_sink_fn sink, void *sink_ctx, const char **why)
{
    struct jp j = { body, body + len, NULL };
    memset(r, 0, sizeof *r);
    struct top_ctx t = {
        .r = r,
        .kind = kind,
        .prompt = { r, { sink, sink_ctx } },
        .input = { r, inputs, NULL },
    };
    if (len == 0) {
        *why = "request body is empty; expected a JSON object";
        return false;
    }
    if (!peek(&j, '{')) {
        *why = "request body must be a JSON object";
        return false;
    }
    if (!walk_object(&j, top_member, &t, 0)) {
        *why = j.why ? j.why : "invalid JSON in request body";
        return false;
    }
    skip_ws(&j);
    if (j.p != j.end) {
        *why = "invalid JSON in request body: trailing data";
        return false;
    }
    return true;
}
