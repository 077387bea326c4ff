/* GET /v1/models answers: see model_list.h. A small scanner rather than a JSON
 * library: the shape is fixed, and whatever else an engine puts in an entry
 * (permissions, max_model_len, nested objects) is skipped without being built. */
#include "proto/model_list.h"

#include <string.h>

#include "proto/openai.h"   /* openai_unescape */

#define MODEL_LIST_MAX_DEPTH 32

struct scan {
    const char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static bool at(struct scan *s, char ch)
{
    skip_ws(s);
    return s->p < s->end && *s->p == ch;
}

/* A string at s->p: its still-escaped contents in *out. */
static bool scan_string(struct scan *s, struct slice *out)
{
    if (!at(s, '"'))
        return false;
    const char *begin = ++s->p;
    while (s->p < s->end) {
        unsigned char ch = (unsigned char)*s->p;
        if (ch == '\\') {
            if (s->end - s->p < 2)
                return false;
            s->p += 2;
            continue;
        }
        if (ch == '"') {
            out->p = begin;
            out->len = (size_t)(s->p - begin);
            s->p++;
            return true;
        }
        if (ch < 0x20)
            return false;
        s->p++;
    }
    return false;
}

static bool scan_value(struct scan *s, int depth);

/* An object's or an array's members after the opening bracket, each handed to
 * member (NULL: skipped) with its key for objects. */
static bool scan_members(struct scan *s, char close, int depth,
                         bool (*member)(struct scan *, struct slice key, void *), void *arg)
{
    s->p++;
    if (at(s, close)) {
        s->p++;
        return true;
    }
    for (;;) {
        struct slice key = { NULL, 0 };
        if (close == '}') {
            if (!scan_string(s, &key) || !at(s, ':'))
                return false;
            s->p++;
        }
        if (!(member ? member(s, key, arg) : scan_value(s, depth + 1)))
            return false;
        if (at(s, ',')) {
            s->p++;
            continue;
        }
        if (at(s, close)) {
            s->p++;
            return true;
        }
        return false;
    }
}

static bool scan_value(struct scan *s, int depth)
{
    skip_ws(s);
    if (s->p >= s->end)
        return false;
    char ch = *s->p;
    if (ch == '"') {
        struct slice x;
        return scan_string(s, &x);
    }
    if (ch == '{' || ch == '[')
        return depth < MODEL_LIST_MAX_DEPTH && scan_members(s, ch == '{' ? '}' : ']', depth, NULL, NULL);
    /* a number, true, false or null: what JSON spells with these */
    const char *begin = s->p;
    while (s->p < s->end && (strchr("0123456789+-.eEtrufalsn", *s->p) != NULL) && *s->p)
        s->p++;
    return s->p > begin;
}

struct reader {
    void (*fn)(void *, const char *, size_t);
    void *ctx;
    int count;
    struct slice id;
    bool has_id;
};

static bool key_is(struct slice key, const char *name)
{
    return key.len == strlen(name) && memcmp(key.p, name, key.len) == 0;
}

static bool entry_member(struct scan *s, struct slice key, void *arg)
{
    struct reader *r = arg;
    if (key_is(key, "id") && at(s, '"')) {
        r->has_id = scan_string(s, &r->id);
        return r->has_id;
    }
    return scan_value(s, 3);
}

static bool data_element(struct scan *s, struct slice key, void *arg)
{
    (void)key;
    struct reader *r = arg;
    if (!at(s, '{'))
        return scan_value(s, 2);
    r->has_id = false;
    if (!scan_members(s, '}', 2, entry_member, r))
        return false;
    char id[MODEL_ID_MAX];
    size_t n = r->has_id ? openai_unescape(r->id, id, sizeof id) : 0;
    if (n > 0) {
        r->fn(r->ctx, id, n);
        r->count++;
    }
    return true;
}

static bool top_member(struct scan *s, struct slice key, void *arg)
{
    if (key_is(key, "data") && at(s, '['))
        return scan_members(s, ']', 1, data_element, arg);
    return scan_value(s, 1);
}

int model_list_parse(const char *body, size_t len, void (*fn)(void *ctx, const char *id, size_t len), void *ctx)
{
    struct scan s = { body, body + len };
    struct reader r = { fn, ctx, 0, { NULL, 0 }, false };
    if (!at(&s, '{') || !scan_members(&s, '}', 0, top_member, &r))
        return -1;
    skip_ws(&s);
    return s.p == s.end ? r.count : -1;
}
