/* Token accounting from OpenAI-compatible responses: an incremental scanner for
 * streamed (SSE) bodies, and usage from a non-streamed JSON body.
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
 *  - a top-level "usage" object with integer "prompt_tokens" and/or
 *    "completion_tokens" (the final chunk with stream_options.include_usage;
 *    servers that repeat cumulative usage in every chunk: the last one wins);
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

#define SSE_TRACK_DEPTH 5   /* nesting levels whose keys and indices are tracked */
#define SSE_KEY_MAX     20  /* longer keys are none of the ones looked for */

/* Streaming JSON tokenizer state for one document (one event's data). */
struct sse_json {
    uint8_t state;                      /* JS_* in sse.c */
    bool expect_key;                    /* in an object, a string here is a key */
    bool str_is_key;
    bool str_marks_content;             /* a non-empty string here is output */
    bool num_wanted;                    /* the number being read is a usage field */
    uint8_t keylen;                     /* > SSE_KEY_MAX: too long to be a known key */
    uint32_t depth;                     /* open containers */
    uint64_t obj_mask;                  /* bit d-1 set: the container at depth d is an object */
    uint8_t key[SSE_TRACK_DEPTH + 1];   /* known key at each depth (objects) */
    uint32_t index[SSE_TRACK_DEPTH + 1];/* element index at each depth (arrays) */
    char keybuf[SSE_KEY_MAX];
    uint64_t num;
    /* found so far */
    bool content;
    bool has_prompt, has_completion;
    uint64_t prompt, completion;
};

#define SSE_MEMO 256        /* bytes of the previous event's start remembered */
#define SSE_MEMO_MIN 16     /* shorter common starts are not worth a snapshot */

struct sse_scan {
    /* results, valid at any time */
    bool done;                  /* "data: [DONE]" seen */
    bool has_usage;             /* a usage object was seen */
    uint64_t prompt_tokens, completion_tokens;  /* from the last usage object */
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
    struct sse_json json;

    /* Servers repeat the same start in every event ({"id":...,"object":...,
     * "created":...,"model":...,"choices":[{"index":0,"delta":{"content":"): the
     * tokenizer's state after the start the last two events shared is kept, and
     * an event that starts with those bytes resumes from it instead of reading
     * them again. The state machine is deterministic, so results are identical. */
    uint16_t memo_len;          /* bytes in memo: the last event's first data bytes */
    uint16_t snap_pos;          /* 0: no snapshot; else snap is the state after memo[0, snap_pos) */
    char memo[SSE_MEMO];
    struct sse_json snap;
};

void sse_init(struct sse_scan *s);
void sse_feed(struct sse_scan *s, const char *p, size_t n);
/* The body ended: a last line and event without their terminating blank line
 * are taken as complete (the SSE spec would drop them; usage is worth more). */
void sse_finish(struct sse_scan *s);

/* Usage from a non-streamed response body (chat.completion, text_completion,
 * embeddings list): the top-level "usage" object. A missing count reads 0
 * (embeddings carry no completion_tokens). Returns 0 when a usage object with
 * prompt_tokens or completion_tokens was found, -1 otherwise. Any bytes are
 * safe to pass. */
int sse_usage_from_json(const char *body, size_t len, uint64_t *prompt, uint64_t *completion);

/* The same, incrementally, for a body read in pieces: init, feed the pieces,
 * then sse_json_usage (same results as sse_usage_from_json on the whole). */
void sse_json_init(struct sse_json *j);
void sse_json_feed(struct sse_json *j, const char *p, size_t n);
int sse_json_usage(struct sse_json *j, uint64_t *prompt, uint64_t *completion);

#endif
