/* A request's trace (req_trace.c): whether it is sampled, its ids, the
 * traceparent sent upstream, and the span records it hands to its shard's ring
 * (trace/exporter.h) when an attempt or the request ends. Unsampled requests
 * (and every request while [tracing] is off) cost the caller one branch. */
#ifndef AIGW_CORE_REQ_TRACE_H
#define AIGW_CORE_REQ_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#include "trace/traceparent.h"

struct conn;
struct http_request;

struct req_trace {
    bool sampled;                   /* everything below is set only when true */
    bool has_parent;                /* the client sent a valid traceparent */
    bool attempt_fresh;             /* attempt_id is made but no attempt used it yet */
    bool attempt_open;              /* an attempt began and its span is not pushed yet */
    uint8_t trace_id[16];
    uint8_t parent_id[8];           /* the client's span */
    uint8_t server_id[8];           /* aigw's SERVER span */
    uint8_t attempt_id[8];          /* the current attempt's CLIENT span */
    int64_t max_tokens;             /* the request's max_tokens; -1: none (ai_request.c) */
    uint64_t first_attempt_us;      /* when the first attempt began (queue wait's end) */
    char header[TRACEPARENT_LEN];   /* traceparent sent upstream: 00-trace-attempt-01 */
};

/* A request head arrived while [tracing] is on: continues the client's
 * traceparent or decides by sample_ratio. */
void req_trace_begin(struct conn *c, const struct http_request *req);
/* For sampled requests only: */
void req_trace_attempt_begin(struct conn *c);
/* The current attempt failed (why) and the request may go on to another one. */
void req_trace_attempt_failed(struct conn *c, const char *why);
/* The request's last byte went (or it ended otherwise): its last attempt's
 * span and its SERVER span go to the ring. */
void req_trace_finish(struct conn *c);

#endif
