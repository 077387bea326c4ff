/* Token usage in an OpenAI-compatible response document: a streaming JSON
 * tokenizer that reads, from a body given in pieces of any size, the top-level
 * "usage" counts and whether choices[0] carries generated output. It reads a
 * non-streamed body (chat.completion, text_completion, embeddings list) whole,
 * and the SSE scanner (sse.h) runs it over each event's data.
 *
 * Tolerant rather than validating: the backend is trusted to send JSON, and
 * anything else only means a field is not found. Fixed state, no allocation;
 * the result is the same whatever the split of the input.
 *
 * Counts: "prompt_tokens" and "completion_tokens" of the top-level "usage"
 * object are read as JSON numbers by value, so 1e3 and 1000.0 are 1000. A
 * count larger than 2^64-1 saturates there, never wraps (what is plausible is
 * the caller's judgement). A count that is not a non-negative integer
 * (negative, fractional such as 3.7, or a malformed number) makes the usage
 * USAGE_UNREADABLE: the reader does not guess what the backend meant. A count
 * given as a string or null is not read (as if absent). */
#ifndef AIGW_PROTO_USAGE_JSON_H
#define AIGW_PROTO_USAGE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USAGE_JSON_TRACK_DEPTH 5   /* nesting levels whose keys and indices are tracked */
#define USAGE_JSON_KEY_MAX     20  /* longer keys are none of the ones looked for */

/* A JSON number being read, kept as digits × 10^(zeros - frac ± exp): enough
 * to tell its exact integer value, or that it has none, in fixed state. */
struct usage_json_number {
    uint64_t digits;        /* significant digits up to the last non-zero one, saturating */
    uint32_t zeros;         /* zero digits after them */
    uint32_t frac;          /* digits after the decimal point */
    uint32_t exp;           /* exponent's magnitude, saturating */
    uint8_t part;           /* NUM_* in usage_json.c */
    bool negative, exp_negative;
    bool malformed;
};

enum usage_read {
    USAGE_NONE,             /* no usage count in the document */
    USAGE_FOUND,            /* counts read (a missing one reads 0) */
    USAGE_UNREADABLE,       /* a count is negative, fractional or malformed */
};

/* Tokenizer state for one document. */
struct usage_json {
    uint8_t state;                      /* JS_* in usage_json.c */
    bool expect_key;                    /* in an object, a string here is a key */
    bool str_is_key;
    bool str_marks_content;             /* a non-empty string here is output */
    bool num_wanted;                    /* the number being read is a usage count */
    uint8_t keylen;                     /* > USAGE_JSON_KEY_MAX: too long to be a known key */
    uint32_t depth;                     /* open containers */
    uint64_t obj_mask;                  /* bit d-1 set: the container at depth d is an object */
    uint8_t key[USAGE_JSON_TRACK_DEPTH + 1];    /* known key at each depth (objects) */
    uint32_t index[USAGE_JSON_TRACK_DEPTH + 1]; /* element index at each depth (arrays) */
    char keybuf[USAGE_JSON_KEY_MAX];
    struct usage_json_number num;
    /* found so far */
    bool content;                       /* choices[0] carries output */
    bool has_prompt, has_completion;
    bool bad_count;                     /* a usage count had no non-negative integer value */
    uint64_t prompt, completion;
};

void usage_json_init(struct usage_json *j);
void usage_json_feed(struct usage_json *j, const char *p, size_t n);
/* The document ended (a number running to its end is complete): its usage.
 * Counts are set to 0 unless USAGE_FOUND; a missing count reads 0
 * (embeddings carry no completion_tokens). */
enum usage_read usage_json_usage(struct usage_json *j, uint64_t *prompt, uint64_t *completion);

/* The same for a whole body. Any bytes are safe to pass. */
enum usage_read usage_from_json(const char *body, size_t len, uint64_t *prompt, uint64_t *completion);

#endif
