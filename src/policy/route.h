/* Route table compiled from a configuration: which route a request path takes.
 * Pure: no I/O, no allocation after route_table_build. Exact paths are found
 * through a hash; prefix routes (a path ending in '*') are tried longest first. An exact
 * match beats any prefix. */
#ifndef AIGW_POLICY_ROUTE_H
#define AIGW_POLICY_ROUTE_H

#include <stddef.h>

#include "core/config.h"

struct route_table;

/* Builds the table for c->routes. The table keeps its own copy of the paths, so
 * it does not depend on c staying alive. Returns 0, or -1 when out of memory. */
int route_table_build(const struct config *c, struct route_table **out);
void route_table_free(struct route_table *t);

/* path: the request target's path. Anything from the first '?' on (a query) is
 * ignored. Returns the index into c->routes, or -1 when no route matches. */
int route_lookup(const struct route_table *t, const char *path, size_t len);

#endif
