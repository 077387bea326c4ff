/* Token accounting from OpenAI-compatible streamed (SSE) responses. (Usage of a
 * non-streamed JSON body: usage_json.h.)
 *
 * The stream scanner takes the de-chunked body in pieces of any size and keeps
 * a small fixed state (no buffering, no allocation): SSE lines and events
 * (LF, CRLF or CR line ends; "data:" with or without the space; comments and
 * other fields ignored), and a streaming JSON tokenizer over each event's data
 * that tracks only the first few levels of nesting. An event of any size, such
 * as a 64 KiB tool-call chunk, is scanned byte by byte as it passes and never
 * held. The result is the same whatever the split of the input.
 *
 * Read from each event's data:
 *  - "[DONE]": the stream's end marker;
 *  - a top-level "usage" object with "prompt_tokens" and/or
 *    "completion_tokens" (the final chunk with stream_options.include_usage;
 *    servers that repeat cumulative usage in every chunk: the last one wins),
 *    read as usage_json.h says: saturating, and unreadable when a count is
 *    not a non-negative integer;
 *  - content events: choices[0] carries generated output, i.e. a non-empty
 *    delta "content", "reasoning_content" or "reasoning" string, a non-empty
 *    delta "tool_calls" array, or a non-empty "text" (legacy completions). With
 *    no usage chunk, their count estimates completion tokens (one per event, as
 *    inference servers stream them). */
#ifndef AIGW_PROTO_SSE_H
#define AIGW_PROTO_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/usage_json.h"

#define SSE_MEMO 256        /* bytes of the previous event's start remembered */
#define SSE_MEMO_MIN 16     /* shorter common starts are not worth a snapshot */

struct sse_scan {
    /* results, valid at any time */
    bool done;                  /* "data: [DONE]" seen */
    bool has_usage;             /* a usage object with a count was seen */
    bool usage_unreadable;      /* the last one had a count that is no non-negative integer */
    uint64_t prompt_tokens, completion_tokens;  /* from the last usage object (0: unreadable) */
    uint64_t content_events;
    uint64_t events;            /* events with data */

    /* parser state */
    uint8_t line;               /* SL_* in sse.c */
    bool after_cr;              /* a CR ended the last line: a LF right after it is part of it */
    uint8_t field_len;
    bool field_is_data;         /* the field name read so far is a prefix of "data" */
    bool event_has_data;
    uint8_t data_head_len;
    char data_head[8];          /* the first bytes of the event's data, to spot "[DONE]" */
    uint64_t data_len;
    struct usage_json json;     /* the current event's data */

    /* Servers repeat the same start in every event ({"id":...,"object":...,
     * "created":...,"model":...,"choices":[{"index":0,"delta":{"content":"): the
     * tokenizer's state after the start the last two events shared is kept, and
     * an event that starts with those bytes resumes from it instead of reading
     * them again. The state machine is deterministic, so results are identical. */
    uint16_t memo_len;          /* bytes in memo: the last event's first data bytes */
    uint16_t snap_pos;          /* 0: no snapshot; else snap is the state after memo[0, snap_pos) */
    char memo[SSE_MEMO];
    struct usage_json snap;
};

void sse_init(struct sse_scan *s);
void sse_feed(struct sse_scan *s, const char *p, size_t n);
/* The body ended: a last line and event without their terminating blank line
 * are taken as complete (the SSE spec would drop them; usage is worth more). */
void sse_finish(struct sse_scan *s);

#endif
