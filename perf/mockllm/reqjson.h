/* A small, strict-enough reader for OpenAI request bodies: it validates the whole
 * document as JSON and pulls out the few fields the simulation needs. */
#ifndef AIGW_MOCKLLM_REQJSON_H
#define AIGW_MOCKLLM_REQJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum api_kind { API_CHAT, API_COMPLETION, API_EMBEDDING };

#define REQJSON_MAX_INPUTS 2048

/* One embeddings input: a hash of its text (or ids) and its size in tokens. */
struct embed_input {
    uint64_t hash;
    uint64_t tokens;
};

struct llm_request {
    const char *model;          /* raw JSON string contents (escapes kept); NULL if absent */
    size_t model_len;
    bool stream;
    bool include_usage;         /* stream_options.include_usage */
    bool has_max_tokens;        /* max_tokens or max_completion_tokens given (not null) */
    uint64_t max_tokens;        /* saturates at UINT32_MAX */
    uint64_t prompt_bytes;      /* bytes of prompt text: message contents, prompt strings */
    uint64_t prompt_ids;        /* prompt given as token ids */
    uint32_t ninputs;           /* embeddings inputs, filled into the caller's array */
};

/* Receives every span of prompt text, in order (used for prefix-cache hashing). */
typedef void (*text_sink_fn)(void *ctx, const char *p, size_t n);

/* Parses body[0..len). inputs (room for REQJSON_MAX_INPUTS) is used for
 * API_EMBEDDING only and may be NULL otherwise. Returns false with *why set to a
 * message fit for a 400 answer. */
bool llm_request_parse(const char *body, size_t len, enum api_kind kind,
                       struct llm_request *r, struct embed_input *inputs,
                       text_sink_fn sink, void *sink_ctx, const char **why);

#endif
