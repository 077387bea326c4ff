/* Reads the model ids out of an OpenAI-style `GET /v1/models` answer
 * ({"object":"list","data":[{"id":"...",...},...]}), as engines (vLLM, SGLang,
 * TGI, aigw-mockllm) serve it. Pure; the watcher uses it to learn what each
 * backend really serves. */
#ifndef AIGW_PROTO_MODEL_LIST_H
#define AIGW_PROTO_MODEL_LIST_H

#include <stdbool.h>
#include <stddef.h>

#define MODEL_ID_MAX 256    /* longer ids are skipped */

/* Calls fn(ctx, id, len) for each entry of "data" with a string "id" of 1 to
 * MODEL_ID_MAX bytes once unescaped (entries without one are skipped). Returns
 * the number of ids passed, or -1 when the text is not such a JSON object (fn
 * may have been called for the entries before the fault). Never reads outside
 * body[0..len); nesting deeper than 32 is refused. */
int model_list_parse(const char *body, size_t len, void (*fn)(void *ctx, const char *id, size_t len), void *ctx);

#endif
