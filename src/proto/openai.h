/* OpenAI request bodies: the few fields aigw acts on (model, stream,
 * stream_options.include_usage, max_tokens / max_completion_tokens and a prompt-size
 * estimate), read by a strict RFC 8259 validator in one pass over the bytes. Not a
 * DOM: nothing is built, nothing is allocated, nesting is tracked in a fixed array.
 * The whole body is validated, including every part aigw does not read, so what is
 * forwarded is exactly what was checked. Pure functions, no I/O. */
#ifndef AIGW_PROTO_OPENAI_H
#define AIGW_PROTO_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/http1.h"    /* struct slice */

#define OPENAI_MAX_DEPTH 32         /* nested objects/arrays, the top-level object included */
#define OPENAI_MAX_TOP_KEYS 128     /* distinct top-level keys (there are ~40 real ones) */
#define OPENAI_MAX_TOKENS_LIMIT (UINT64_C(1) << 53)   /* largest max_tokens accepted */
#define OPENAI_MAX_MODEL_LEN 256    /* decoded bytes; model names go into logs and labels */
#define OPENAI_PREFIX_BLOCK 256     /* prompt bytes per prefix block (about 64 tokens: a few KV-cache blocks) */
#define OPENAI_PREFIX_BLOCKS_MAX 64 /* blocks hashed at most: the first 16 KiB of prompt */

enum openai_status {
    OPENAI_OK = 0,
    OPENAI_BAD = 1,     /* invalid JSON or a field of the wrong shape: answer 400 */
};

struct openai_request {
    struct slice model;             /* contents between the quotes, still JSON-escaped; points into body */
    bool model_escaped;             /* model contains backslash escapes: decode with openai_unescape */
    size_t model_decoded_len;       /* bytes model decodes to (== model.len when not escaped) */
    bool stream;                    /* "stream"; false when absent or null */
    bool include_usage;             /* "stream_options": {"include_usage"}; false when absent or null */
    bool has_max_tokens;            /* "max_tokens" or "max_completion_tokens" present and not null */
    uint64_t max_tokens;            /* its value, <= OPENAI_MAX_TOKENS_LIMIT */
    uint32_t message_count;         /* elements of "messages" (saturates) */
    uint64_t prompt_bytes;          /* decoded UTF-8 bytes of prompt text, see below */
    uint64_t prompt_token_ids;      /* integers in "prompt"/"input" given as token ids */
    uint64_t prompt_tokens_estimate;/* see below; >= 1 */
    uint32_t prefix_blocks;         /* full blocks of prompt text hashed, <= OPENAI_PREFIX_BLOCKS_MAX */
    uint64_t prefix_block[OPENAI_PREFIX_BLOCKS_MAX]; /* chained hashes, see below; never 0 */
    size_t error_offset;            /* OPENAI_BAD: byte of body where the problem was found */
    char error[120];                /* OPENAI_BAD: the message *why points to */
};

/* Parses body[0..len) as an OpenAI request (chat completions, completions,
 * embeddings). On OPENAI_OK fills *out. On OPENAI_BAD sets *why (if why is not NULL)
 * to a message naming the problem, stored in out->error (valid as long as *out is),
 * e.g. "invalid JSON at byte 17: expected ':'", "duplicate key \"model\"",
 * "\"stream\" must be a boolean", "missing \"model\"".
 *
 * Rejected: anything that is not RFC 8259 JSON (whitespace other than SP/HT/LF/CR,
 * bad escapes, raw control characters or invalid UTF-8 in strings (overlongs,
 * surrogates, > U+10FFFF), unpaired \u surrogates, numbers off the grammar, literals
 * other than true/false/null, trailing data); a top level that is not an object;
 * nesting deeper than OPENAI_MAX_DEPTH; a duplicate top-level key (any key, compared
 * after unescaping, so "mod\u0065l" duplicates "model"); more than
 * OPENAI_MAX_TOP_KEYS distinct top-level keys besides the eight read here; a
 * duplicate "content" in a message,
 * "type"/"text" in a content part, "include_usage" in stream_options (duplicates
 * deeper inside parts aigw does not read are allowed: they cannot change what aigw
 * decides, and the backend sees the same bytes);
 * and wrong shapes of the fields read:
 *   model                  non-empty string of at most OPENAI_MAX_MODEL_LEN decoded
 *                          bytes without control characters (required)
 *   stream                 boolean or null
 *   stream_options         object or null; its include_usage boolean or null
 *   max_tokens,
 *   max_completion_tokens  integer 0..2^53 or null (10.0, 1e3, -1 are rejected); when
 *                          both are given they must be equal
 *   messages               array of objects; each "content" a string, an array of
 *                          objects (content parts), or null; a part's "type" and
 *                          "text" strings
 *   prompt, input          string, array of strings / token ids (numbers) / arrays
 *                          of token ids, or null
 *
 * prompt_bytes counts decoded bytes (an escape counts as the UTF-8 bytes it stands
 * for: \n is 1, \u00e9 is 2, a surrogate pair is 4) of: messages[].content strings,
 * the "text" of content parts whose "type" is "text" (image, audio and other parts
 * are not counted), and the strings of "prompt" and "input". Tool definitions and
 * tool-call arguments are not counted.
 *
 * prompt_tokens_estimate = ceil(prompt_bytes / 4) + 4 * message_count
 *                          + prompt_token_ids, at least 1
 * (about 4 bytes per token for English text, plus per-message framing, after
 * OpenAI's cookbook). It is an admission estimate; the real count comes from usage.
 *
 * prefix_block: the prompt strings (raw JSON bytes, escapes as sent, in document
 * order; each string's end counts as one byte) cut into OPENAI_PREFIX_BLOCK-byte
 * blocks, each hashed chained with the one before: prefix_block[k] depends on
 * every byte up to the end of block k. Two prompts that share their first k
 * blocks share their first k hashes and differ from the first block where they
 * differ, so a prefix balancer can tell how much of a prompt an engine's prefix
 * cache probably holds. Only full blocks count (an engine caches full blocks):
 * a prompt shorter than one block has none. */
int openai_parse_request(const char *body, size_t len, struct openai_request *out,
                         const char **why);

/* Where a piece of prompt was found. */
enum openai_prompt_source {
    OPENAI_FROM_MESSAGES,   /* a message's "content" string, or the "text" of a text part */
    OPENAI_FROM_PROMPT,     /* "prompt" */
    OPENAI_FROM_INPUT,      /* "input" */
};

/* One piece of the prompt as openai_parse_request counts it (see prompt_bytes
 * above): a string, or a token id of "prompt"/"input". */
struct openai_prompt_piece {
    struct slice raw;       /* string contents as sent (escapes kept) or the token id's
                               digits; points into the body; may be empty */
    size_t decoded;         /* bytes the string decodes to; 0 for a token id */
    uint32_t item;          /* FROM_MESSAGES: the message's index. Otherwise which prompt
                               of a batch: a string, an array of token ids, and a run of
                               token ids directly in the field's array are one prompt
                               each, numbered from 0 ("a" / ["a","b"] / [1,2] / [[1],[2]]
                               are 0 / 0,1 / 0,0 / 0,1) */
    uint8_t source;         /* enum openai_prompt_source */
    bool token_id;
};

/* For callers that need more than struct openai_request (aigw-mockllm). */
struct openai_read_options {
    bool model_optional;    /* a body without "model" is accepted (out->model.p NULL) */
    /* called for each piece of the prompt, in document order; a text part's text
     * once its object has closed */
    void (*on_prompt)(void *ctx, const struct openai_prompt_piece *piece);
    void *ctx;
};

/* openai_parse_request with options (NULL: the same as openai_parse_request).
 * Pieces shown to on_prompt before an OPENAI_BAD result are to be discarded. */
int openai_read_request(const char *body, size_t len, const struct openai_read_options *opt,
                        struct openai_request *out, const char **why);

/* Decodes the contents of a JSON string as returned by openai_parse_request (e.g.
 * out->model) into out[0..cap). Returns the decoded length, or 0 if it does not fit
 * (model is never empty, so 0 is unambiguous there). Not NUL-terminated. Never reads
 * outside s, even if s is not valid JSON string contents. */
size_t openai_unescape(struct slice s, char *out, size_t cap);

/* Whether a Content-Type header value names JSON: "application/json", any case,
 * optionally followed by parameters ("; charset=utf-8"). Anything else: 415. */
bool openai_content_type_is_json(struct slice value);

#endif
