/* GET /v1/models and GET /v1/models/ID, answered by aigw: the models the
 * caller's key may use that some AI route takes: the literal names in the
 * configuration, and what the backends of the routes' pools say they serve. */
#ifndef AIGW_CORE_MODELS_H
#define AIGW_CORE_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "proto/http1.h"

struct conn;
struct served_models;

/* Whether the path is /v1/models or /v1/models/ID. */
bool models_is_path(struct slice path);
/* What the backends of c's generation serve, as the watcher last published it
 * (NULL: not known yet). Taken once per answer, so sizing and writing agree. */
const struct served_models *models_served(const struct conn *c);
/* Writes the JSON body for path (the list, or one model) into out when it fits
 * in cap bytes. Returns its length (snprintf-style: call with cap 0 to size it),
 * or -1 when path names a model the caller may not see (404). */
ssize_t models_body(const struct conn *c, const struct served_models *served, struct slice path, char *out,
                    size_t cap);

#endif
