/* `kind = ai` requests (ai_request.c): the body read whole, checked as an OpenAI
 * request, routed by model, admitted, and forwarded with its head in one send. */
#ifndef AIGW_CORE_AI_REQUEST_H
#define AIGW_CORE_AI_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct conn;
struct http_request;

size_t ai_request_start(struct conn *c, const char *src, size_t n, const struct http_request *req);
ssize_t ai_request_collect(struct conn *c, const char *p, size_t n);
void ai_request_ready(struct conn *c);
/* Writes c->req.out (forwarded head + body) from c->req.body for c->req.pool/c->at.backend.
 * False when it cannot (the error is then sent). */
bool ai_request_build_out(struct conn *c);

#endif
