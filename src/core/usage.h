/* Usage of AI requests: what a response says it used, read as its body passes
 * (the meter), believed up to what the request can plausibly have used, and
 * settled when the request ends: counted in aigw_tokens_total and charged
 * against the caller's reservation (admission.h).
 *
 * State: a meter per metered response, from a per-shard free list (taken only
 * while a 2xx AI response is relayed, so idle connections carry none). */
#ifndef AIGW_CORE_USAGE_H
#define AIGW_CORE_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;
struct usage_meter;

/* What a request can plausibly have used; a backend's usage beyond it is
 * clamped to it (and logged, at most once a minute per shard):
 *  - prompt: the request body's bytes plus USAGE_PROMPT_SLACK. A prompt token
 *    is at least one byte of the body (text, or a token id and its comma);
 *    what a server adds without bytes (chat template, media it fetches by URL)
 *    fits the slack.
 *  - completion: max_tokens for each of up to USAGE_CHOICES_MAX choices (the
 *    `n` OpenAI allows; aigw does not read it) plus USAGE_COMPLETION_SLACK; no
 *    max_tokens, or more than that: USAGE_COMPLETION_MAX, longer than any
 *    generation today's models make in one request. */
#define USAGE_PROMPT_SLACK      32768
#define USAGE_CHOICES_MAX       128
#define USAGE_COMPLETION_SLACK  16
#define USAGE_COMPLETION_MAX    (UINT64_C(1) << 20)

struct usage_bound {
    uint64_t prompt, completion;
};

struct usage_bound usage_bound_of(uint64_t body_bytes, bool has_max_tokens, uint64_t max_tokens);
/* Clamps *prompt and *completion to b. True when either was above it. */
bool usage_clamp(const struct usage_bound *b, uint64_t *prompt, uint64_t *completion);

/* A shard's usage state, in struct shard. */
struct usage_shard {
    struct usage_meter *free_meters;
    uint64_t next_clamp_log_ms;     /* clamps are logged at most once a minute */
    uint32_t clamps_unlogged;       /* clamped since the last line */
};

/* Starts metering the response whose status is status (called with its head):
 * 2xx answers to AI requests only. */
void usage_meter_start(struct conn *c, int status);
/* Feeds response body bytes (de-chunked) to the request's meter. */
void usage_meter_feed(struct conn *c, const char *p, size_t n);

/* The request ended: what it used (the response's usage, clamped to its
 * bound; a stream without a usage chunk counts its content events; a 2xx
 * whose usage is unreadable, the reservation; no response, nothing) goes to
 * aigw_tokens_total and settles its reservation; the meter goes back. */
void usage_settle(struct conn *c);

#endif
