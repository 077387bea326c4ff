#include "policy/glob.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum glob_kind {
    GLOB_LITERAL,   /* no wildcard: equal length and bytes */
    GLOB_PREFIX,    /* "abc*": one trailing '*', no '?' */
    GLOB_GENERAL,
};

struct glob_pat {
    const char *text;   /* NUL-terminated, inside the list's allocation */
    uint16_t len;
    uint8_t kind;
};

struct glob_list {
    unsigned n;
    struct glob_pat pats[];   /* list order; the pattern bytes follow the array */
};

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s holds at least len bytes */
static bool segment_eq(const char *pat, size_t len, const char *s)
{
    for (size_t i = 0; i < len; i++)
        if (pat[i] != '?' && pat[i] != s[i])
            return false;
    return true;
}

/* Leftmost position in s[from, to) where the star-free segment pat matches, or
 * SIZE_MAX. */
static size_t segment_find(const char *pat, size_t len, const char *s, size_t from, size_t to)
{
    if (to - from < len)
        return SIZE_MAX;
    for (size_t i = from; i + len <= to; i++)
        if (segment_eq(pat, len, s + i))
            return i;
    return SIZE_MAX;
}

/* The pattern is head*mid*...*mid*tail. head must sit at the start and tail at
 * the end; the middle segments are each placed leftmost after the previous one,
 * which is optimal because a '*' separates each from the next, so every segment
 * is searched once: O(plen × n) in the worst case, never exponential. */
bool glob_match(const char *pat, size_t plen, const char *s, size_t n)
{
    if (!s)
        s = "";   /* an empty name may come as (NULL, 0); keep pointer arithmetic defined */
    const char *first = memchr(pat, '*', plen);
    if (!first)
        return n == plen && segment_eq(pat, plen, s);
    const char *last = memrchr(pat, '*', plen);
    size_t head = (size_t)(first - pat);
    size_t tail = plen - (size_t)(last - pat) - 1;
    if (n < head + tail || !segment_eq(pat, head, s) || !segment_eq(last + 1, tail, s + n - tail))
        return false;

    size_t pos = head, end = n - tail;
    const char *p = first + 1;
    while (p < last) {
        const char *star = memchr(p, '*', (size_t)(last - p) + 1);   /* found: last is a star */
        size_t seglen = (size_t)(star - p);
        if (seglen) {
            size_t at = segment_find(p, seglen, s, pos, end);
            if (at == SIZE_MAX)
                return false;
            pos = at + seglen;
        }
        p = star + 1;
    }
    return true;
}

static enum glob_kind classify(const char *p, size_t len)
{
    const char *star = memchr(p, '*', len);
    bool any_q = memchr(p, '?', len) != NULL;
    if (!star && !any_q)
        return GLOB_LITERAL;
    if (!any_q && star == p + len - 1)
        return GLOB_PREFIX;
    return GLOB_GENERAL;
}

static const char *check_pattern(const char *p, size_t len)
{
    if (len == 0)
        return "empty item in model list";
    if (len > GLOB_PATTERN_MAX)
        return "model pattern longer than 256 bytes";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f)
            return "control character in model pattern";
        if (c == ' ')
            return "space inside a model pattern (missing comma?)";
    }
    return NULL;
}

/* Calls visit(ctx, item, len) for each trimmed item; stops at the first error. */
static const char *for_each_item(const char *text, size_t len,
                                 const char *(*visit)(void *, const char *, size_t), void *ctx)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < len && text[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && is_blank(text[a]))
            a++;
        while (b > a && is_blank(text[b - 1]))
            b--;
        const char *why = visit(ctx, text + a, b - a);
        if (why)
            return why;
        if (i == len)
            return NULL;
        i++;   /* past the comma */
    }
}

struct sizing {
    unsigned n;
    size_t bytes;
};

static const char *size_item(void *ctx, const char *p, size_t len)
{
    struct sizing *sz = ctx;
    const char *why = check_pattern(p, len);
    if (why)
        return why;
    sz->n++;
    sz->bytes += len + 1;
    return NULL;
}

struct filling {
    struct glob_list *l;
    char *next;
};

static const char *fill_item(void *ctx, const char *p, size_t len)
{
    struct filling *f = ctx;
    memcpy(f->next, p, len);
    f->next[len] = '\0';
    f->l->pats[f->l->n++] = (struct glob_pat){ .text = f->next, .len = (uint16_t)len,
                                               .kind = (uint8_t)classify(p, len) };
    f->next += len + 1;
    return NULL;
}

int glob_list_compile_n(const char *text, size_t len, struct glob_list **out, const char **why)
{
    size_t i = 0;
    while (i < len && is_blank(text[i]))
        i++;
    if (i == len) {
        *out = NULL;
        return 0;
    }

    struct sizing sz = { 0, 0 };
    const char *bad = for_each_item(text, len, size_item, &sz);
    if (bad) {
        *why = bad;
        return -1;
    }
    struct glob_list *l = malloc(sizeof *l + sz.n * sizeof l->pats[0] + sz.bytes);
    if (!l) {
        *why = "out of memory";
        return -1;
    }
    l->n = 0;
    struct filling f = { l, (char *)&l->pats[sz.n] };
    for_each_item(text, len, fill_item, &f);
    *out = l;
    return 0;
}

int glob_list_compile(const char *text, struct glob_list **out, const char **why)
{
    return glob_list_compile_n(text, strlen(text), out, why);
}

void glob_list_free(struct glob_list *l)
{
    free(l);
}

bool glob_list_match(const struct glob_list *l, const char *s, size_t n)
{
    if (!l)
        return true;
    if (!s)
        s = "";
    /* exact names first: one length compare each, and most lists name models */
    for (unsigned i = 0; i < l->n; i++) {
        const struct glob_pat *g = &l->pats[i];
        if (g->kind == GLOB_LITERAL && g->len == n && memcmp(g->text, s, n) == 0)
            return true;
    }
    for (unsigned i = 0; i < l->n; i++) {
        const struct glob_pat *g = &l->pats[i];
        switch (g->kind) {
        case GLOB_LITERAL:
            break;
        case GLOB_PREFIX:
            if (n >= g->len - 1u && memcmp(g->text, s, g->len - 1u) == 0)
                return true;
            break;
        default:
            if (glob_match(g->text, g->len, s, n))
                return true;
            break;
        }
    }
    return false;
}

unsigned glob_list_count(const struct glob_list *l)
{
    return l ? l->n : 0;
}

const char *glob_list_pattern(const struct glob_list *l, unsigned i)
{
    return l && i < l->n ? l->pats[i].text : NULL;
}

bool glob_list_is_literal(const struct glob_list *l, unsigned i)
{
    return l && i < l->n && l->pats[i].kind == GLOB_LITERAL;
}
