/* W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/): parse
 * and format, pure functions over caller buffers. */
#ifndef AIGW_TRACE_TRACEPARENT_H
#define AIGW_TRACE_TRACEPARENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRACEPARENT_LEN 55          /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_FLAG_SAMPLED 0x01

struct trace_parent {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
};

/* Parses a traceparent value. Version 00 must be exactly 55 characters; a later
 * version (not ff) may carry more after a '-', which is ignored, as the spec
 * asks of a parser that knows only 00. Lowercase hex only; an all-zero trace
 * id or span id is invalid. Returns true and fills *out when valid. */
bool traceparent_parse(const char *s, size_t n, struct trace_parent *out);

/* Writes "00-TRACE-SPAN-FLAGS" (TRACEPARENT_LEN bytes, no NUL) into out. */
void traceparent_format(char out[TRACEPARENT_LEN], const uint8_t trace_id[16], const uint8_t span_id[8],
                        uint8_t flags);

/* n bytes as 2n lowercase hex characters (no NUL). */
void trace_hex(char *out, const uint8_t *bytes, size_t n);

#endif
