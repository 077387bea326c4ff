/* OpenAI-shaped JSON error responses, the answers aigw (and aigw-mockllm) make
 * themselves: {"error":{"message":"...","type":"...","code":"..."}}. Pure
 * functions, no I/O. */
#ifndef AIGW_PROTO_OPENAI_ERROR_H
#define AIGW_PROTO_OPENAI_ERROR_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/http1.h"    /* struct slice, http_write_json_head */

/* A complete HTTP/1.1 response whose body is an OpenAI error object; code is null
 * when NULL. message, type and code are JSON-escaped (invalid UTF-8 becomes
 * U+FFFD, so the body is always valid JSON). extra: CRLF-terminated header lines
 * to add, may be empty. Returns bytes written, or 0 (nothing past cap written)
 * if it does not fit. */
size_t openai_write_error(char *out, size_t cap, int status, const char *type,
                          const char *code, const char *message, bool keep_alive,
                          struct slice extra);

#endif
