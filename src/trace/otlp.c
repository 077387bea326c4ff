#include "trace/otlp.h"

#include <string.h>

#include "trace/traceparent.h"
#include "util/json_escape.h"

static void put_string(struct outbuf *o, const char *s)
{
    outbuf_char(o, '"');
    json_escape(o, s, strlen(s), SIZE_MAX, JSON_ESCAPE_SHORT_FORMS);
    outbuf_char(o, '"');
}

static void put_hex(struct outbuf *o, const uint8_t *b, size_t n)
{
    char hex[32];
    trace_hex(hex, b, n);
    outbuf_char(o, '"');
    outbuf_put(o, hex, 2 * n);
    outbuf_char(o, '"');
}

/* Attributes are written comma-separated; *first tracks the separator. */
static void attr_str(struct outbuf *o, bool *first, const char *key, const char *value)
{
    if (!value[0])
        return;
    if (!*first)
        outbuf_char(o, ',');
    *first = false;
    OUTBUF_LIT(o, "{\"key\":");
    put_string(o, key);
    OUTBUF_LIT(o, ",\"value\":{\"stringValue\":");
    put_string(o, value);
    OUTBUF_LIT(o, "}}");
}

/* int64 is a JSON string in the protobuf mapping */
static void attr_int(struct outbuf *o, bool *first, const char *key, int64_t value)
{
    if (value == SPAN_NO_VALUE)
        return;
    if (!*first)
        outbuf_char(o, ',');
    *first = false;
    OUTBUF_LIT(o, "{\"key\":");
    put_string(o, key);
    OUTBUF_LIT(o, ",\"value\":{\"intValue\":\"");
    outbuf_i64(o, value);
    OUTBUF_LIT(o, "\"}}");
}

static const char *gen_ai_op_name(uint8_t op)
{
    switch ((enum gen_ai_op)op) {
    case GEN_AI_CHAT: return "chat";
    case GEN_AI_TEXT_COMPLETION: return "text_completion";
    case GEN_AI_EMBEDDINGS: return "embeddings";
    default: return "";
    }
}

static void put_span(struct outbuf *o, const struct span_record *s)
{
    OUTBUF_LIT(o, "{\"traceId\":");
    put_hex(o, s->trace_id, 16);
    OUTBUF_LIT(o, ",\"spanId\":");
    put_hex(o, s->span_id, 8);
    if (s->has_parent) {
        OUTBUF_LIT(o, ",\"parentSpanId\":");
        put_hex(o, s->parent_id, 8);
    }
    OUTBUF_LIT(o, ",\"name\":");
    put_string(o, s->name);
    OUTBUF_LIT(o, ",\"kind\":");
    outbuf_u64(o, s->kind);
    OUTBUF_LIT(o, ",\"startTimeUnixNano\":\"");
    outbuf_u64(o, s->start_unix_ns);
    OUTBUF_LIT(o, "\",\"endTimeUnixNano\":\"");
    outbuf_u64(o, s->end_unix_ns);
    OUTBUF_LIT(o, "\",\"attributes\":[");
    bool first = true;
    attr_str(o, &first, "http.request.method", s->method);
    attr_str(o, &first, "url.path", s->path);
    if (s->status)
        attr_int(o, &first, "http.response.status_code", s->status);
    if (s->kind == SPAN_CLIENT) {
        attr_str(o, &first, "server.address", s->server_address);
        if (s->server_port)
            attr_int(o, &first, "server.port", s->server_port);
    } else {
        attr_str(o, &first, "network.peer.address", s->peer);
    }
    attr_str(o, &first, "gen_ai.operation.name", gen_ai_op_name(s->gen_ai_op));
    attr_str(o, &first, "gen_ai.request.model", s->model);
    if (s->kind == SPAN_SERVER) {
        attr_str(o, &first, "gen_ai.response.model", s->model);
        attr_int(o, &first, "gen_ai.request.max_tokens", s->max_tokens);
        attr_int(o, &first, "gen_ai.usage.input_tokens", s->input_tokens);
        attr_int(o, &first, "gen_ai.usage.output_tokens", s->output_tokens);
    }
    attr_str(o, &first, "aigw.key", s->key);
    attr_str(o, &first, "aigw.route", s->route);
    attr_str(o, &first, "aigw.pool", s->pool);
    attr_str(o, &first, "aigw.backend", s->backend);
    attr_int(o, &first, "aigw.queue_wait_ms", s->queue_wait_ms);
    attr_int(o, &first, "aigw.retries", s->retries);
    attr_str(o, &first, "aigw.limit", s->limit);
    OUTBUF_LIT(o, "]");
    if (s->error) {
        OUTBUF_LIT(o, ",\"status\":{\"code\":2");     /* STATUS_CODE_ERROR */
        if (s->error_text[0]) {
            OUTBUF_LIT(o, ",\"message\":");
            put_string(o, s->error_text);
        }
        OUTBUF_LIT(o, "}");
    }
    OUTBUF_LIT(o, "}");
}

void otlp_encode(struct outbuf *o, const char *service_name, const struct span_record *spans, size_t n)
{
    OUTBUF_LIT(o, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\","
                  "\"value\":{\"stringValue\":");
    put_string(o, service_name);
    OUTBUF_LIT(o, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"aigw\"},\"spans\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            outbuf_char(o, ',');
        put_span(o, &spans[i]);
    }
    OUTBUF_LIT(o, "]}]}]}");
}
