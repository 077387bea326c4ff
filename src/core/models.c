/* GET /v1/models, answered by aigw. See models.h. */
#include "core/models.h"

#include <string.h>

#include "core/admission.h"
#include "core/conn.h"
#include "core/gen.h"
#include "core/shard.h"
#include "policy/glob.h"
#include "policy/keys.h"
#include "util/outbuf.h"

#define MODELS_PATH "/v1/models"
#define MODELS_PATH_LEN (sizeof MODELS_PATH - 1)

bool models_is_path(struct slice path)
{
    if (path.len < MODELS_PATH_LEN || memcmp(path.p, MODELS_PATH, MODELS_PATH_LEN) != 0)
        return false;
    return path.len == MODELS_PATH_LEN ||
           (path.len > MODELS_PATH_LEN + 1 && path.p[MODELS_PATH_LEN] == '/');
}

/* Names that go into JSON unescaped: what config model names are in practice. */
static bool plain_name(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == '"' || *s == '\\' || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* Whether some AI route takes the model. */
static bool routed(const struct config *cfg, const char *name, size_t len)
{
    for (unsigned r = 0; r < cfg->nroutes; r++)
        if (cfg->routes[r].kind == ROUTE_AI &&
            (!cfg->routes[r].models || glob_list_match(cfg->routes[r].models, name, len)))
            return true;
    return false;
}

/* Whether AI route r sends requests to pool p (as its pool or in its split). */
static bool route_uses_pool(const struct cfg_route *r, unsigned p)
{
    if (r->nsplit == 0)
        return r->pool == p;
    for (unsigned i = 0; i < r->nsplit; i++)
        if (r->split[i].pool == p)
            return true;
    return false;
}

/* Whether an AI route that sends to pool p takes the model by its `models`
 * (a route taking any model lists nothing, as the watcher asks nothing for it). */
static bool routed_to(const struct config *cfg, unsigned p, const char *name, size_t len)
{
    for (unsigned r = 0; r < cfg->nroutes; r++)
        if (cfg->routes[r].kind == ROUTE_AI && cfg->routes[r].models && route_uses_pool(&cfg->routes[r], p) &&
            glob_list_match(cfg->routes[r].models, name, len))
            return true;
    return false;
}

/* Whether name is a literal of a `models` list each_model lists first. */
static bool literal_somewhere(const struct config *cfg, const struct key_entry *self, const char *name)
{
    for (unsigned src = 0; src <= cfg->nroutes; src++) {
        const struct glob_list *l = src < cfg->nroutes ? cfg->routes[src].models : self ? self->models : NULL;
        for (unsigned i = 0; l && i < glob_list_count(l); i++)
            if (glob_list_is_literal(l, i) && strcmp(glob_list_pattern(l, i), name) == 0)
                return true;
    }
    return false;
}

/* Calls fn for each model the caller may see, once each: the literal names in
 * routes' and keys' `models` lists (a glob names no model), that some AI route
 * takes and the caller's key allows; then the models the backends say they serve
 * (served_models, kept by the watcher) that an AI route to their pool takes and
 * the caller's key allows. */
static void each_model(const struct conn *c, const struct served_models *served, void (*fn)(void *, const char *),
                       void *ctx)
{
    const struct config *cfg = c->req.sg->g->cfg;
    const struct key_entry *self = admission_caller(c);
    /* sources: every route's list, then the caller's own key's list */
    for (unsigned src = 0; src <= cfg->nroutes; src++) {
        const struct glob_list *l = src < cfg->nroutes ? cfg->routes[src].models
                                    : self ? self->models : NULL;
        for (unsigned i = 0; l && i < glob_list_count(l); i++) {
            if (!glob_list_is_literal(l, i))
                continue;
            const char *name = glob_list_pattern(l, i);
            size_t len = strlen(name);
            if (!plain_name(name) || !routed(cfg, name, len) ||
                !admission_model_allowed(c, name, len))
                continue;
            /* first occurrence only */
            bool seen = false;
            for (unsigned s2 = 0; s2 < src && !seen; s2++) {
                const struct glob_list *m = s2 < cfg->nroutes ? cfg->routes[s2].models : NULL;
                for (unsigned j = 0; m && j < glob_list_count(m) && !seen; j++)
                    seen = glob_list_is_literal(m, j) && strcmp(glob_list_pattern(m, j), name) == 0;
            }
            for (unsigned j = 0; j < i && !seen; j++)
                seen = glob_list_is_literal(l, j) && strcmp(glob_list_pattern(l, j), name) == 0;
            if (!seen)
                fn(ctx, name);
        }
    }
    for (unsigned i = 0; served && i < served->n; i++) {
        const struct served_model *m = &served->m[i];
        /* sorted by id: one listing per id, whichever of its pools takes it */
        bool listed = false;
        for (unsigned j = i; j > 0 && strcmp(served->m[j - 1].id, m->id) == 0 && !listed; j--)
            listed = routed_to(cfg, served->m[j - 1].pool, m->id, strlen(m->id));
        size_t len = strlen(m->id);
        if (listed || !plain_name(m->id) || !routed_to(cfg, m->pool, m->id, len) ||
            !admission_model_allowed(c, m->id, len) || literal_somewhere(cfg, self, m->id))
            continue;
        fn(ctx, m->id);
    }
}

struct models_out {
    struct outbuf out;
    unsigned count;
    const char *only;       /* retrieve one model: its name */
    size_t only_len;
    bool found;
};

static void put_model(struct models_out *o, const char *name)
{
    static const char a[] = "{\"id\":\"";
    static const char b[] = "\",\"object\":\"model\",\"created\":0,\"owned_by\":\"aigw\"}";
    outbuf_put(&o->out, a, sizeof a - 1);
    outbuf_str(&o->out, name);
    outbuf_put(&o->out, b, sizeof b - 1);
}

static void list_model(void *ctx, const char *name)
{
    struct models_out *o = ctx;
    if (o->only) {
        if (strlen(name) == o->only_len && memcmp(name, o->only, o->only_len) == 0) {
            o->found = true;
            put_model(o, name);
        }
        return;
    }
    if (o->count++)
        OUTBUF_LIT(&o->out, ",");
    put_model(o, name);
}

const struct served_models *models_served(const struct conn *c)
{
    return atomic_load_explicit(&c->req.sg->g->served, memory_order_acquire);
}

ssize_t models_body(const struct conn *c, const struct served_models *served, struct slice path, char *out,
                    size_t cap)
{
    struct models_out o = { outbuf_make(out, cap), 0, NULL, 0, false };
    if (path.len > MODELS_PATH_LEN) {
        o.only = path.p + MODELS_PATH_LEN + 1;
        o.only_len = path.len - MODELS_PATH_LEN - 1;
        each_model(c, served, list_model, &o);
        if (!o.found)
            return -1;
    } else {
        static const char head[] = "{\"object\":\"list\",\"data\":[";
        outbuf_put(&o.out, head, sizeof head - 1);
        each_model(c, served, list_model, &o);
        OUTBUF_LIT(&o.out, "]}");
    }
    return (ssize_t)o.out.len;
}
