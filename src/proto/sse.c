/* SSE usage scanner and non-streamed usage reader. See sse.h for what is read.
 *
 * The JSON tokenizer is tolerant rather than validating: the backend is trusted
 * to send JSON, and anything else only means a field is not found. It follows
 * strings (with escapes), numbers, literals and brackets; a key's name is kept
 * only when it is short enough to be one of the few looked for; the path to
 * the current value is known for the first SSE_TRACK_DEPTH levels, which is all
 * the fields read need. */
#include "proto/sse.h"

#include <string.h>

enum { JS_VALUE, JS_STRING, JS_ESCAPE, JS_NUMBER, JS_LITERAL };

enum {
    K_OTHER = 0,
    K_USAGE, K_PROMPT_TOKENS, K_COMPLETION_TOKENS,
    K_CHOICES, K_DELTA, K_TEXT, K_CONTENT, K_REASONING_CONTENT, K_REASONING, K_TOOL_CALLS,
};

static const struct { const char *name; uint8_t len, key; } known_keys[] = {
    { "usage", 5, K_USAGE },
    { "prompt_tokens", 13, K_PROMPT_TOKENS },
    { "completion_tokens", 17, K_COMPLETION_TOKENS },
    { "choices", 7, K_CHOICES },
    { "delta", 5, K_DELTA },
    { "text", 4, K_TEXT },
    { "content", 7, K_CONTENT },
    { "reasoning_content", 17, K_REASONING_CONTENT },
    { "reasoning", 9, K_REASONING },
    { "tool_calls", 10, K_TOOL_CALLS },
};

static uint8_t key_id(const char *k, uint8_t len)
{
    for (size_t i = 0; i < sizeof known_keys / sizeof known_keys[0]; i++)
        if (known_keys[i].len == len && memcmp(known_keys[i].name, k, len) == 0)
            return known_keys[i].key;
    return K_OTHER;
}

static void js_init(struct sse_json *j)
{
    memset(j, 0, sizeof *j);
}

static bool is_object(const struct sse_json *j, uint32_t depth)
{
    return depth >= 1 && depth <= 64 && (j->obj_mask >> (depth - 1) & 1);
}

/* Keys and indices are only tracked up to SSE_TRACK_DEPTH. */
static uint8_t key_at(const struct sse_json *j, uint32_t depth)
{
    return depth <= SSE_TRACK_DEPTH && is_object(j, depth) ? j->key[depth] : K_OTHER;
}

/* The current position is inside the object choices[0] (depth 3) or below it. */
static bool in_first_choice(const struct sse_json *j)
{
    return j->depth >= 3 && key_at(j, 1) == K_CHOICES && !is_object(j, 2) && j->index[2] == 0 &&
           is_object(j, 3);
}

/* In the object choices[0].delta (depth 4). */
static bool in_first_delta(const struct sse_json *j)
{
    return j->depth >= 4 && in_first_choice(j) && key_at(j, 3) == K_DELTA && is_object(j, 4);
}

static bool at_usage_count(const struct sse_json *j)
{
    uint8_t k = key_at(j, 2);
    return j->depth == 2 && key_at(j, 1) == K_USAGE && (k == K_PROMPT_TOKENS || k == K_COMPLETION_TOKENS);
}

/* A value of any kind starts at the current position. */
static void js_value_start(struct sse_json *j)
{
    /* an element of choices[0].delta.tool_calls: the array is not empty */
    if (j->depth == 5 && in_first_delta(j) && key_at(j, 4) == K_TOOL_CALLS && !is_object(j, 5))
        j->content = true;
}

static bool string_marks_content(const struct sse_json *j)
{
    if (j->depth == 3)
        return in_first_choice(j) && key_at(j, 3) == K_TEXT;
    if (j->depth == 4 && in_first_delta(j)) {
        uint8_t k = key_at(j, 4);
        return k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REASONING;
    }
    return false;
}

static void js_push(struct sse_json *j, bool object)
{
    js_value_start(j);
    if (j->depth == UINT32_MAX)
        return;
    j->depth++;
    if (j->depth <= 64) {
        if (object)
            j->obj_mask |= UINT64_C(1) << (j->depth - 1);
        else
            j->obj_mask &= ~(UINT64_C(1) << (j->depth - 1));
    }
    if (j->depth <= SSE_TRACK_DEPTH) {
        j->key[j->depth] = K_OTHER;
        j->index[j->depth] = 0;
    }
    j->expect_key = object;
}

static void js_number_end(struct sse_json *j)
{
    if (j->num_wanted) {
        if (key_at(j, 2) == K_PROMPT_TOKENS) {
            j->prompt = j->num;
            j->has_prompt = true;
        } else {
            j->completion = j->num;
            j->has_completion = true;
        }
    }
    j->state = JS_VALUE;
}

/* One byte outside strings, numbers and literals. */
static void js_structural(struct sse_json *j, char c)
{
    switch (c) {
    case ' ': case '\t': case '\n': case '\r':
        break;
    case '{':
        js_push(j, true);
        break;
    case '[':
        js_push(j, false);
        break;
    case '}': case ']':
        if (j->depth > 0)
            j->depth--;
        j->expect_key = false;
        break;
    case ':':
        j->expect_key = false;
        break;
    case ',':
        if (is_object(j, j->depth)) {
            j->expect_key = true;
            if (j->depth <= SSE_TRACK_DEPTH)
                j->key[j->depth] = K_OTHER;
        } else if (j->depth >= 1 && j->depth <= SSE_TRACK_DEPTH && j->index[j->depth] < UINT32_MAX) {
            j->index[j->depth]++;
        }
        break;
    case '"':
        j->state = JS_STRING;
        j->str_is_key = j->expect_key && is_object(j, j->depth);
        j->str_marks_content = false;
        if (j->str_is_key) {
            j->keylen = 0;
        } else {
            js_value_start(j);
            j->str_marks_content = string_marks_content(j);
        }
        break;
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            js_value_start(j);
            j->state = JS_NUMBER;
            j->num_wanted = c != '-' && at_usage_count(j);
            j->num = c == '-' ? 0 : (uint64_t)(c - '0');
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            js_value_start(j);
            j->state = JS_LITERAL;
        }
        /* anything else is not JSON: ignored */
        break;
    }
}

static void js_string_end(struct sse_json *j)
{
    j->state = JS_VALUE;
    j->str_marks_content = false;
    if (!j->str_is_key)
        return;
    if (j->depth <= SSE_TRACK_DEPTH)
        j->key[j->depth] = j->keylen <= SSE_KEY_MAX ? key_id(j->keybuf, j->keylen) : K_OTHER;
    j->expect_key = false;
}

static void js_feed(struct sse_json *j, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        char c = *p;
        switch (j->state) {
        case JS_VALUE:
            js_structural(j, c);
            p++;
            break;
        case JS_STRING:
            if (c == '"') {
                js_string_end(j);
                p++;
                break;
            }
            if (j->str_marks_content) {
                j->content = true;
                j->str_marks_content = false;
            }
            if (j->str_is_key) {
                const char *q = p;
                while (q < end && *q != '"' && *q != '\\')
                    q++;
                size_t k = (size_t)(q - p);
                if (j->keylen + k > SSE_KEY_MAX) {
                    j->keylen = SSE_KEY_MAX + 1;   /* too long to be a key looked for */
                } else {
                    memcpy(j->keybuf + j->keylen, p, k);
                    j->keylen = (uint8_t)(j->keylen + k);
                }
                p = q;
                if (p < end && *p == '\\') {
                    j->keylen = SSE_KEY_MAX + 1;   /* escaped: not a key looked for either */
                    j->state = JS_ESCAPE;
                    p++;
                }
                break;
            }
            /* a value string's body: skip to its end or next escape */
            while (p < end && *p != '"' && *p != '\\')
                p++;
            if (p < end && *p == '\\') {
                j->state = JS_ESCAPE;
                p++;
            }
            break;
        case JS_ESCAPE:
            j->state = JS_STRING;   /* \uXXXX: the hex digits are ordinary string bytes */
            p++;
            break;
        case JS_NUMBER:
            if (c >= '0' && c <= '9') {
                uint64_t d = (uint64_t)(c - '0');
                j->num = j->num > (UINT64_MAX - d) / 10 ? UINT64_MAX : j->num * 10 + d;
                p++;
            } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                j->num_wanted = false;   /* not an integer count */
                p++;
            } else {
                js_number_end(j);        /* c is looked at again as structure */
            }
            break;
        default: /* JS_LITERAL */
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
                p++;
            else
                j->state = JS_VALUE;
            break;
        }
    }
}

/* The document ended: a number running to the end is complete. */
static void js_finish(struct sse_json *j)
{
    if (j->state == JS_NUMBER)
        js_number_end(j);
}

void sse_json_init(struct sse_json *j)
{
    js_init(j);
}

void sse_json_feed(struct sse_json *j, const char *p, size_t n)
{
    js_feed(j, p, n);
}

int sse_json_usage(struct sse_json *j, uint64_t *prompt, uint64_t *completion)
{
    js_finish(j);
    *prompt = j->has_prompt ? j->prompt : 0;
    *completion = j->has_completion ? j->completion : 0;
    return j->has_prompt || j->has_completion ? 0 : -1;
}

int sse_usage_from_json(const char *body, size_t len, uint64_t *prompt, uint64_t *completion)
{
    struct sse_json j;
    js_init(&j);
    js_feed(&j, body, len);
    return sse_json_usage(&j, prompt, completion);
}

/* ---- SSE ---------------------------------------------------------------- */

enum {
    SL_START,       /* at the start of a line */
    SL_FIELD,       /* in a field name */
    SL_DATA_START,  /* just after "data:": a single space here is dropped */
    SL_DATA,        /* in a data value */
    SL_SKIP,        /* comment or a field not read */
};

void sse_init(struct sse_scan *s)
{
    memset(s, 0, sizeof *s);
    js_init(&s->json);
}

static void event_data(struct sse_scan *s, const char *p, size_t n)
{
    size_t room = sizeof s->data_head - s->data_head_len;
    size_t head = n < room ? n : room;
    memcpy(s->data_head + s->data_head_len, p, head);
    s->data_head_len += (uint8_t)head;
    s->data_len += n;
    js_feed(&s->json, p, n);
}

static size_t common_start(const char *a, const char *b, size_t n)
{
    size_t i = 0;
    while (i + 8 <= n && memcmp(a + i, b + i, 8) == 0)
        i += 8;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

/* The whole first data line of an event, p[0, n), in one piece: read with the
 * memo of the previous event's start (see struct sse_scan). */
static void event_first_line(struct sse_scan *s, const char *p, size_t n)
{
    size_t head = n < sizeof s->data_head ? n : sizeof s->data_head;
    memcpy(s->data_head, p, head);
    s->data_head_len = (uint8_t)head;
    s->data_len = n;
    size_t same = common_start(p, s->memo, n < s->memo_len ? n : s->memo_len);
    if (s->snap_pos && same >= s->snap_pos) {
        s->json = s->snap;
        js_feed(&s->json, p + s->snap_pos, n - s->snap_pos);
    } else if (same >= SSE_MEMO_MIN) {
        js_feed(&s->json, p, same);
        s->snap = s->json;
        s->snap_pos = (uint16_t)same;
        js_feed(&s->json, p + same, n - same);
    } else {
        s->snap_pos = 0;
        js_feed(&s->json, p, n);
    }
    s->memo_len = (uint16_t)(n < SSE_MEMO ? n : SSE_MEMO);
    memcpy(s->memo, p, s->memo_len);
}

/* A data line starts: lines of one event are joined with LF, as the spec says. */
static void data_line(struct sse_scan *s)
{
    if (s->event_has_data)
        event_data(s, "\n", 1);
    s->event_has_data = true;
}

static void dispatch(struct sse_scan *s)
{
    if (s->event_has_data) {
        s->events++;
        if (s->data_len == 6 && memcmp(s->data_head, "[DONE]", 6) == 0) {
            s->done = true;
        } else {
            struct sse_json *j = &s->json;
            js_finish(j);
            if (j->has_prompt || j->has_completion) {
                s->has_usage = true;
                s->prompt_tokens = j->has_prompt ? j->prompt : 0;
                s->completion_tokens = j->has_completion ? j->completion : 0;
            }
            if (j->content)
                s->content_events++;
        }
    }
    s->event_has_data = false;
    s->data_head_len = 0;
    s->data_len = 0;
    js_init(&s->json);
}

static void end_of_line(struct sse_scan *s)
{
    switch (s->line) {
    case SL_START:
        dispatch(s);
        break;
    case SL_FIELD:
        /* a line without a colon is a field with an empty value */
        if (s->field_is_data && s->field_len == 4)
            data_line(s);
        break;
    default:
        break;
    }
    s->line = SL_START;
}

void sse_feed(struct sse_scan *s, const char *p, size_t n)
{
    const char *end = p + n;
    while (p < end) {
        char c = *p;
        if (s->after_cr) {
            s->after_cr = false;
            if (c == '\n') {
                p++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            end_of_line(s);
            s->after_cr = c == '\r';
            p++;
            continue;
        }
        switch (s->line) {
        case SL_START:
            if (c == ':') {
                s->line = SL_SKIP;
                p++;
                break;
            }
            s->line = SL_FIELD;
            s->field_len = 0;
            s->field_is_data = true;
            /* fall through */
        case SL_FIELD:
            if (c == ':') {
                if (s->field_is_data && s->field_len == 4) {
                    data_line(s);
                    s->line = SL_DATA_START;
                } else {
                    s->line = SL_SKIP;
                }
            } else {
                if (s->field_len >= 4 || "data"[s->field_len] != c)
                    s->field_is_data = false;
                if (s->field_len < UINT8_MAX)
                    s->field_len++;
            }
            p++;
            break;
        case SL_DATA_START:
            s->line = SL_DATA;
            if (c == ' ') {
                p++;
                break;
            }
            /* fall through */
        case SL_DATA: {
            const char *q = memchr(p, '\n', (size_t)(end - p));
            if (!q)
                q = end;
            const char *cr = memchr(p, '\r', (size_t)(q - p));
            if (cr)
                q = cr;
            /* a first data line seen whole can use the memo */
            if (s->data_len == 0 && q < end)
                event_first_line(s, p, (size_t)(q - p));
            else
                event_data(s, p, (size_t)(q - p));
            p = q;
            break;
        }
        default: { /* SL_SKIP */
            const char *q = memchr(p, '\n', (size_t)(end - p));
            if (!q)
                q = end;
            const char *cr = memchr(p, '\r', (size_t)(q - p));
            p = cr ? cr : q;
            break;
        }
        }
    }
}

void sse_finish(struct sse_scan *s)
{
    if (s->line != SL_START)
        end_of_line(s);
    dispatch(s);
    s->after_cr = false;
}
