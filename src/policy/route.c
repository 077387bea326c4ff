#include "policy/route.h"

#include "policy/glob.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"

struct exact_slot {
    uint64_t hash;
    const char *path;           /* NULL: empty slot */
    uint32_t len;
    int32_t route;
};

struct prefix_entry {
    const char *path;
    uint32_t len;
    int32_t route;
};

struct route_table {
    struct exact_slot *slots;   /* open addressing, linear probing */
    uint32_t mask;              /* slot count - 1 (a power of two) */
    struct prefix_entry *prefixes; /* longest first */
    uint32_t nprefixes;
    char *paths;                /* every path, each NUL-terminated */
    int32_t *next_same_path;    /* per route: the next exact route with its path, -1 none */
    const struct glob_list **models; /* per route, borrowed from the config */
    uint32_t nroutes;
};

static int prefix_longest_first(const void *a, const void *b)
{
    const struct prefix_entry *pa = a, *pb = b;
    if (pa->len != pb->len)
        return pa->len > pb->len ? -1 : 1;
    return pa->route < pb->route ? -1 : pa->route > pb->route;   /* file order */
}

int route_table_build(const struct cfg_route *routes, unsigned nroutes, struct route_table **out)
{
    struct route_table *t = calloc(1, sizeof *t);
    if (!t)
        return -1;

    size_t nexact = 0, nprefix = 0, bytes = 0;
    for (unsigned i = 0; i < nroutes; i++) {
        if (routes[i].prefix)
            nprefix++;
        else
            nexact++;
        bytes += routes[i].path_len + 1;
    }
    /* load factor at most 1/2 keeps probe sequences short */
    size_t nslots = 8;
    while (nslots < nexact * 2)
        nslots *= 2;

    t->slots = calloc(nslots, sizeof *t->slots);
    t->prefixes = calloc(nprefix ? nprefix : 1, sizeof *t->prefixes);
    t->paths = malloc(bytes ? bytes : 1);
    t->next_same_path = malloc((nroutes ? nroutes : 1) * sizeof *t->next_same_path);
    t->models = calloc(nroutes ? nroutes : 1, sizeof *t->models);
    if (!t->slots || !t->prefixes || !t->paths || !t->next_same_path || !t->models) {
        route_table_free(t);
        return -1;
    }
    t->mask = (uint32_t)(nslots - 1);

    t->nroutes = nroutes;
    char *p = t->paths;
    for (unsigned i = 0; i < nroutes; i++) {
        const struct cfg_route *r = &routes[i];
        t->next_same_path[i] = -1;
        t->models[i] = r->models;
        memcpy(p, r->path, r->path_len);
        p[r->path_len] = '\0';
        if (r->prefix) {
            t->prefixes[t->nprefixes++] =
                (struct prefix_entry){ .path = p, .len = (uint32_t)r->path_len, .route = (int32_t)i };
        } else {
            uint64_t h = hash_bytes(p, r->path_len);
            uint32_t s = (uint32_t)h & t->mask;
            bool duplicate = false;
            while (t->slots[s].path) {
                /* routes sharing a path (for other models) chain in file order */
                if (t->slots[s].hash == h && t->slots[s].len == r->path_len &&
                    memcmp(t->slots[s].path, p, r->path_len) == 0) {
                    int32_t last = t->slots[s].route;
                    while (t->next_same_path[last] >= 0)
                        last = t->next_same_path[last];
                    t->next_same_path[last] = (int32_t)i;
                    duplicate = true;
                    break;
                }
                s = (s + 1) & t->mask;
            }
            if (!duplicate)
                t->slots[s] = (struct exact_slot){ .hash = h, .path = p,
                                                   .len = (uint32_t)r->path_len, .route = (int32_t)i };
        }
        p += r->path_len + 1;
    }
    qsort(t->prefixes, t->nprefixes, sizeof *t->prefixes, prefix_longest_first);
    *out = t;
    return 0;
}

void route_table_free(struct route_table *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t->prefixes);
    free(t->paths);
    free(t->next_same_path);
    free(t->models);
    free(t);
}

static bool takes_model(const struct route_table *t, int32_t route, const char *model, size_t mlen)
{
    return !t->models[route] || glob_list_match(t->models[route], model, mlen);
}

int route_lookup_model(const struct route_table *t, const char *path, size_t len,
                       const char *model, size_t model_len)
{
    const char *query = len ? memchr(path, '?', len) : NULL;
    if (query)
        len = (size_t)(query - path);
    bool any_path = false;
    uint64_t h = hash_bytes(path, len);
    for (uint32_t s = (uint32_t)h & t->mask;; s = (s + 1) & t->mask) {
        const struct exact_slot *e = &t->slots[s];
        if (!e->path)
            break;
        if (e->hash == h && e->len == len && memcmp(e->path, path, len) == 0) {
            any_path = true;
            for (int32_t r = e->route; r >= 0; r = t->next_same_path[r])
                if (takes_model(t, r, model, model_len))
                    return r;
            break;
        }
    }
    for (uint32_t i = 0; i < t->nprefixes; i++) {
        const struct prefix_entry *e = &t->prefixes[i];
        if (e->len <= len && memcmp(e->path, path, e->len) == 0) {
            any_path = true;
            if (takes_model(t, e->route, model, model_len))
                return e->route;
        }
    }
    return any_path ? ROUTE_NO_MODEL : ROUTE_NO_PATH;
}

int route_lookup(const struct route_table *t, const char *path, size_t len)
{
    const char *query = len ? memchr(path, '?', len) : NULL;
    if (query)
        len = (size_t)(query - path);

    uint64_t h = hash_bytes(path, len);
    /* the table is at most half full, so this ends at an empty slot */
    for (uint32_t s = (uint32_t)h & t->mask;; s = (s + 1) & t->mask) {
        const struct exact_slot *e = &t->slots[s];
        if (!e->path)
            break;
        if (e->hash == h && e->len == len && memcmp(e->path, path, len) == 0)
            return e->route;
    }
    for (uint32_t i = 0; i < t->nprefixes; i++) {
        const struct prefix_entry *e = &t->prefixes[i];
        if (e->len <= len && memcmp(e->path, path, e->len) == 0)
            return e->route;
    }
    return -1;
}
