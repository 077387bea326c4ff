/* Route table compiled from a configuration: which route a request path takes.
 * Pure: no I/O, no allocation after route_table_build. Exact paths are found
 * through a hash; prefix routes (a path ending in '*') are tried longest first. An exact
 * match beats any prefix. */
#ifndef AIGW_POLICY_ROUTE_H
#define AIGW_POLICY_ROUTE_H

#include <stddef.h>

#include "policy/types.h"

struct route_table;

/* Builds the table for routes[0..nroutes) (a config's routes, in file order). The
 * table keeps its own copy of the paths but borrows each route's model globs, so
 * it must not outlive the routes. Returns 0, or -1 when out of memory. */
int route_table_build(const struct cfg_route *routes, unsigned nroutes, struct route_table **out);
void route_table_free(struct route_table *t);

/* path: the request target's path. Anything from the first '?' on (a query) is
 * ignored. Returns the route's index (as given to route_table_build), or -1 when
 * no route matches. */
int route_lookup(const struct route_table *t, const char *path, size_t len);

#define ROUTE_NO_PATH (-1)      /* no route for the path */
#define ROUTE_NO_MODEL (-2)     /* routes for the path, none takes the model */

/* Among the routes for path (exact ones in file order, then prefixes longest
 * first, file order within a length), the first whose models globs take model.
 * Returns the route index, ROUTE_NO_PATH or ROUTE_NO_MODEL. */
int route_lookup_model(const struct route_table *t, const char *path, size_t len,
                       const char *model, size_t model_len);

#endif
