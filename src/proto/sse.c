/* SSE usage scanner. See sse.h for what is read; each event's data goes through
 * the JSON reader of usage_json.h. */
#include "proto/sse.h"

#include <string.h>

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
    usage_json_init(&s->json);
}

static void event_data(struct sse_scan *s, const char *p, size_t n)
{
    size_t room = sizeof s->data_head - s->data_head_len;
    size_t head = n < room ? n : room;
    memcpy(s->data_head + s->data_head_len, p, head);
    s->data_head_len += (uint8_t)head;
    s->data_len += n;
    usage_json_feed(&s->json, p, n);
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
        usage_json_feed(&s->json, p + s->snap_pos, n - s->snap_pos);
    } else if (same >= SSE_MEMO_MIN) {
        usage_json_feed(&s->json, p, same);
        s->snap = s->json;
        s->snap_pos = (uint16_t)same;
        usage_json_feed(&s->json, p + same, n - same);
    } else {
        s->snap_pos = 0;
        usage_json_feed(&s->json, p, n);
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
            uint64_t prompt, completion;
            enum usage_read r = usage_json_usage(&s->json, &prompt, &completion);
            if (r != USAGE_NONE) {
                s->has_usage = true;
                s->usage_unreadable = r == USAGE_UNREADABLE;
                s->prompt_tokens = prompt;
                s->completion_tokens = completion;
            }
            if (s->json.content)
                s->content_events++;
        }
    }
    s->event_has_data = false;
    s->data_head_len = 0;
    s->data_len = 0;
    usage_json_init(&s->json);
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
