/* Usage counts and output markers from an OpenAI response document. See
 * usage_json.h for what is read.
 *
 * The tokenizer follows strings (with escapes), numbers, literals and brackets;
 * a key's name is kept only when it is short enough to be one of the few looked
 * for; the path to the current value is known for the first
 * USAGE_JSON_TRACK_DEPTH levels, which is all the fields read need. */
#include "proto/usage_json.h"

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

static void js_init(struct usage_json *j)
{
    memset(j, 0, sizeof *j);
}

static bool is_object(const struct usage_json *j, uint32_t depth)
{
    return depth >= 1 && depth <= 64 && (j->obj_mask >> (depth - 1) & 1);
}

/* Keys and indices are only tracked up to USAGE_JSON_TRACK_DEPTH. */
static uint8_t key_at(const struct usage_json *j, uint32_t depth)
{
    return depth <= USAGE_JSON_TRACK_DEPTH && is_object(j, depth) ? j->key[depth] : K_OTHER;
}

/* The current position is inside the object choices[0] (depth 3) or below it. */
static bool in_first_choice(const struct usage_json *j)
{
    return j->depth >= 3 && key_at(j, 1) == K_CHOICES && !is_object(j, 2) && j->index[2] == 0 &&
           is_object(j, 3);
}

/* In the object choices[0].delta (depth 4). */
static bool in_first_delta(const struct usage_json *j)
{
    return j->depth >= 4 && in_first_choice(j) && key_at(j, 3) == K_DELTA && is_object(j, 4);
}

static bool at_usage_count(const struct usage_json *j)
{
    uint8_t k = key_at(j, 2);
    return j->depth == 2 && key_at(j, 1) == K_USAGE && (k == K_PROMPT_TOKENS || k == K_COMPLETION_TOKENS);
}

/* A value of any kind starts at the current position. */
static void js_value_start(struct usage_json *j)
{
    /* an element of choices[0].delta.tool_calls: the array is not empty */
    if (j->depth == 5 && in_first_delta(j) && key_at(j, 4) == K_TOOL_CALLS && !is_object(j, 5))
        j->content = true;
}

static bool string_marks_content(const struct usage_json *j)
{
    if (j->depth == 3)
        return in_first_choice(j) && key_at(j, 3) == K_TEXT;
    if (j->depth == 4 && in_first_delta(j)) {
        uint8_t k = key_at(j, 4);
        return k == K_CONTENT || k == K_REASONING_CONTENT || k == K_REASONING;
    }
    return false;
}

static void js_push(struct usage_json *j, bool object)
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
    if (j->depth <= USAGE_JSON_TRACK_DEPTH) {
        j->key[j->depth] = K_OTHER;
        j->index[j->depth] = 0;
    }
    j->expect_key = object;
}

/* ---- numbers ---- */

enum { NUM_INT_START, NUM_INT, NUM_FRAC_START, NUM_FRAC, NUM_EXP_START, NUM_EXP_SIGN, NUM_EXP };

/* Beyond this exponent any non-zero value is either above 2^64 or below 1. */
#define EXP_CAP 100000

static uint64_t mul_pow10_sat(uint64_t v, uint64_t times)
{
    for (; times && v; times--) {
        if (v > UINT64_MAX / 10)
            return UINT64_MAX;
        v *= 10;
    }
    return v;
}

static void number_start(struct usage_json_number *n, char c)
{
    memset(n, 0, sizeof *n);
    n->negative = c == '-';
    n->part = n->negative ? NUM_INT_START : NUM_INT;
    n->digits = n->negative ? 0 : (uint64_t)(c - '0');
}

static void number_digit(struct usage_json_number *n, unsigned d)
{
    switch (n->part) {
    case NUM_INT_START: case NUM_INT:
    case NUM_FRAC_START: case NUM_FRAC:
        if (n->part >= NUM_FRAC_START) {
            n->part = NUM_FRAC;
            if (n->frac < UINT32_MAX)
                n->frac++;
        } else {
            n->part = NUM_INT;
        }
        if (d == 0) {
            if (n->zeros < UINT32_MAX)
                n->zeros++;
            break;
        }
        {
            uint64_t v = mul_pow10_sat(n->digits, (uint64_t)n->zeros + 1);
            n->digits = v > UINT64_MAX - d ? UINT64_MAX : v + d;
            n->zeros = 0;
        }
        break;
    default: /* the exponent */
        n->part = NUM_EXP;
        n->exp = n->exp * 10 + d > EXP_CAP ? EXP_CAP : n->exp * 10 + d;
        break;
    }
}

/* Any other byte of a number: '.', 'e', 'E', '+', '-'. */
static void number_mark(struct usage_json_number *n, char c)
{
    if (c == '.' && n->part == NUM_INT)
        n->part = NUM_FRAC_START;
    else if ((c == 'e' || c == 'E') && (n->part == NUM_INT || n->part == NUM_FRAC))
        n->part = NUM_EXP_START;
    else if ((c == '+' || c == '-') && n->part == NUM_EXP_START) {
        n->part = NUM_EXP_SIGN;
        n->exp_negative = c == '-';
    } else
        n->malformed = true;
}

/* The number's value when it is a non-negative integer (saturating at
 * UINT64_MAX); false when it is negative, fractional or malformed. */
static bool number_count(const struct usage_json_number *n, uint64_t *out)
{
    if (n->malformed || (n->part != NUM_INT && n->part != NUM_FRAC && n->part != NUM_EXP))
        return false;
    if (n->digits == 0) {
        *out = 0;   /* zero whatever its sign, fraction or exponent */
        return true;
    }
    if (n->negative)
        return false;
    /* digits ends in a non-zero digit: a negative scale leaves a fraction */
    int64_t scale = (int64_t)n->zeros - (int64_t)n->frac +
                    (n->exp_negative ? -(int64_t)n->exp : (int64_t)n->exp);
    if (scale < 0)
        return false;
    *out = mul_pow10_sat(n->digits, (uint64_t)scale);
    return true;
}

static void js_number_end(struct usage_json *j)
{
    uint64_t v;
    if (j->num_wanted) {
        if (!number_count(&j->num, &v)) {
            j->bad_count = true;
        } else if (key_at(j, 2) == K_PROMPT_TOKENS) {
            j->prompt = v;
            j->has_prompt = true;
        } else {
            j->completion = v;
            j->has_completion = true;
        }
    }
    j->state = JS_VALUE;
}

/* One byte outside strings, numbers and literals. */
static void js_structural(struct usage_json *j, char c)
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
            if (j->depth <= USAGE_JSON_TRACK_DEPTH)
                j->key[j->depth] = K_OTHER;
        } else if (j->depth >= 1 && j->depth <= USAGE_JSON_TRACK_DEPTH && j->index[j->depth] < UINT32_MAX) {
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
            j->num_wanted = at_usage_count(j);
            number_start(&j->num, c);
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
            js_value_start(j);
            j->state = JS_LITERAL;
        }
        /* anything else is not JSON: ignored */
        break;
    }
}

static void js_string_end(struct usage_json *j)
{
    j->state = JS_VALUE;
    j->str_marks_content = false;
    if (!j->str_is_key)
        return;
    if (j->depth <= USAGE_JSON_TRACK_DEPTH)
        j->key[j->depth] = j->keylen <= USAGE_JSON_KEY_MAX ? key_id(j->keybuf, j->keylen) : K_OTHER;
    j->expect_key = false;
}

static void js_feed(struct usage_json *j, const char *p, size_t n)
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
                if (j->keylen + k > USAGE_JSON_KEY_MAX) {
                    j->keylen = USAGE_JSON_KEY_MAX + 1;   /* too long to be a key looked for */
                } else {
                    memcpy(j->keybuf + j->keylen, p, k);
                    j->keylen = (uint8_t)(j->keylen + k);
                }
                p = q;
                if (p < end && *p == '\\') {
                    j->keylen = USAGE_JSON_KEY_MAX + 1;   /* escaped: not a key looked for either */
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
                number_digit(&j->num, (unsigned)(c - '0'));
                p++;
            } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                number_mark(&j->num, c);
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
static void js_finish(struct usage_json *j)
{
    if (j->state == JS_NUMBER)
        js_number_end(j);
}

void usage_json_init(struct usage_json *j)
{
    js_init(j);
}

void usage_json_feed(struct usage_json *j, const char *p, size_t n)
{
    js_feed(j, p, n);
}

enum usage_read usage_json_usage(struct usage_json *j, uint64_t *prompt, uint64_t *completion)
{
    js_finish(j);
    *prompt = *completion = 0;
    if (j->bad_count)
        return USAGE_UNREADABLE;
    if (!j->has_prompt && !j->has_completion)
        return USAGE_NONE;
    *prompt = j->has_prompt ? j->prompt : 0;
    *completion = j->has_completion ? j->completion : 0;
    return USAGE_FOUND;
}

enum usage_read usage_from_json(const char *body, size_t len, uint64_t *prompt, uint64_t *completion)
{
    struct usage_json j;
    js_init(&j);
    js_feed(&j, body, len);
    return usage_json_usage(&j, prompt, completion);
}
