/* The admin API's backend routes (admin thread only; admin.c checks the token
 * and routes here): GET /backends, POST /backends/POOL/BACKEND/drain|disable|
 * enable and POST /backends/POOL/BACKEND/weight/N. docs/config.md, "Admin
 * listener", documents them; backend_admin.h holds the state they change. */
#ifndef AIGW_CORE_ADMIN_BACKENDS_H
#define AIGW_CORE_ADMIN_BACKENDS_H

#include <stddef.h>

#include "proto/http1.h"

struct gen;

/* Every backend of g (NULL: none) as {"backends":[...]}. The body is malloc'd;
 * returns the HTTP status (200, or 500 when out of memory with *body NULL). */
int admin_backends_list(const struct gen *g, char **body, size_t *len);

/* POST of the path after "/backends/": changes the backend and answers with its
 * new state (200), or a JSON error: 400 (bad verb, weight or encoding), 404
 * (unknown pool or backend). BACKEND is matched as written in the file
 * (localhost:8000, [::1]:8000) or normalised (127.0.0.1:8000), raw or
 * percent-encoded. */
int admin_backends_post(const struct gen *g, struct slice rest, char **body, size_t *len);

#endif
