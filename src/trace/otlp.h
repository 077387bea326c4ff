/* Spans as an OTLP/HTTP JSON request body (ExportTraceServiceRequest in the
 * protobuf JSON mapping that every OpenTelemetry collector accepts): one
 * resourceSpans with service.name, one scopeSpans, the spans. Pure. */
#ifndef AIGW_TRACE_OTLP_H
#define AIGW_TRACE_OTLP_H

#include <stddef.h>

#include "trace/span.h"
#include "util/outbuf.h"

/* Appends the body to o (check o->len <= o->cap for overflow). */
void otlp_encode(struct outbuf *o, const char *service_name, const struct span_record *spans, size_t n);

#endif
