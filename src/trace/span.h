/* A finished span as a shard hands it to the exporter: fixed size, copied by
 * value, with bounded copies of its strings (cut to fit, always NUL-terminated). */
#ifndef AIGW_TRACE_SPAN_H
#define AIGW_TRACE_SPAN_H

#include <stdbool.h>
#include <stdint.h>

enum span_kind { SPAN_SERVER = 2, SPAN_CLIENT = 3 };   /* OTLP's SpanKind values */
enum gen_ai_op { GEN_AI_NONE, GEN_AI_CHAT, GEN_AI_TEXT_COMPLETION, GEN_AI_EMBEDDINGS };

#define SPAN_NO_VALUE INT64_MIN         /* an integer attribute that is not exported */

struct span_record {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];
    bool has_parent;
    uint8_t kind;                   /* enum span_kind */
    uint8_t gen_ai_op;              /* enum gen_ai_op */
    bool error;                     /* status ERROR (a 5xx, or a failed attempt) */
    uint16_t status;                /* HTTP status; 0: none (an attempt without an answer) */
    uint16_t server_port;           /* attempts: the backend's port */
    uint64_t start_unix_ns, end_unix_ns;
    /* SPAN_NO_VALUE: not exported */
    int64_t max_tokens, input_tokens, output_tokens, queue_wait_ms, retries;
    char name[96];                  /* "POST /v1/chat/completions" */
    char method[16];
    char path[128];                 /* url.path */
    char model[96];                 /* gen_ai.request.model (and response model) */
    char key[64];                   /* aigw.key: the key's NAME */
    char pool[64];
    char backend[80];               /* HOST:PORT */
    char server_address[80];        /* attempts: the backend's host */
    char route[64];
    char limit[40];                 /* the limit that refused it */
    char peer[48];                  /* network.peer.address: the client */
    char error_text[96];            /* why it failed (status message) */
};

/* Copies s[0..n) into dst (cap bytes), cut to fit and NUL-terminated. */
void span_copy(char *dst, unsigned cap, const char *s, unsigned long n);

#endif
