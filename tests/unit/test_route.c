#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "policy/route.h"

static struct config *routet_config(const char *routes)
{
    char text[65536], err[512];
    snprintf(text, sizeof text, "[pool p]\nbackend = 127.0.0.1:1\n%s", routes);
    struct config *c = NULL;
    cr_assert_eq(config_load_string("route.conf", text, &c, err, sizeof err), 0, "%s", err);
    return c;
}

static int routet_lookup(const struct route_table *t, const char *path)
{
    return route_lookup(t, path, strlen(path));
}

static struct route_table *routet_build(const struct config *c)
{
    struct route_table *t = NULL;
    cr_assert_eq(route_table_build(c->routes, c->nroutes, &t), 0);
    cr_assert_not_null(t);
    return t;
}

Test(route, exact_and_prefix)
{
    struct config *c = routet_config("[route chat]\npath = /v1/chat/completions\npool = p\n"
                                     "[route v1]\npath = /v1/*\npool = p\n"
                                     "[route v1chat]\npath = /v1/chat/*\npool = p\n"
                                     "[route models]\npath = /v1/models\npool = p\n"
                                     "[route v1exact]\npath = /v1/\npool = p\n");
    struct route_table *t = routet_build(c);

    cr_expect_eq(routet_lookup(t, "/v1/chat/completions"), 0, "exact beats both prefixes");
    cr_expect_eq(routet_lookup(t, "/v1/models"), 3);
    cr_expect_eq(routet_lookup(t, "/v1/"), 4, "exact /v1/ beats prefix /v1/*");
    cr_expect_eq(routet_lookup(t, "/v1/chat/other"), 2, "longest prefix wins");
    cr_expect_eq(routet_lookup(t, "/v1/chat/"), 2);
    cr_expect_eq(routet_lookup(t, "/v1/chat/completions/x"), 2);
    cr_expect_eq(routet_lookup(t, "/v1/chat"), 1, "/v1/chat is not under /v1/chat/");
    cr_expect_eq(routet_lookup(t, "/v1/embeddings"), 1);
    cr_expect_eq(routet_lookup(t, "/v1"), -1, "a prefix /v1/ does not match /v1");
    cr_expect_eq(routet_lookup(t, "/v2/chat/completions"), -1);
    cr_expect_eq(routet_lookup(t, "/"), -1);
    cr_expect_eq(routet_lookup(t, ""), -1);
    cr_expect_eq(routet_lookup(t, "/V1/models"), -1, "paths are case-sensitive");
    cr_expect_eq(routet_lookup(t, "/v1/models/"), 1);

    /* the length counts, not a NUL */
    cr_expect_eq(route_lookup(t, "/v1/modelsXYZ", 10), 3);
    cr_expect_eq(route_lookup(t, "/v1/models", 9), 1);

    /* a query string is not part of the path */
    cr_expect_eq(routet_lookup(t, "/v1/models?limit=5"), 3);
    cr_expect_eq(routet_lookup(t, "/v1/chat/completions?"), 0);
    cr_expect_eq(routet_lookup(t, "/v1?x=/v1/models"), -1);

    route_table_free(t);
    config_free(c);
}

Test(route, catch_all_and_empty)
{
    struct config *c = routet_config("[route all]\npath = /*\npool = p\n"
                                     "[route health]\npath = /health\npool = p\nkind = raw\n");
    struct route_table *t = routet_build(c);
    cr_expect_eq(routet_lookup(t, "/health"), 1);
    cr_expect_eq(routet_lookup(t, "/anything/at/all"), 0);
    cr_expect_eq(routet_lookup(t, "/"), 0);
    cr_expect_eq(routet_lookup(t, "nothing-absolute"), -1);
    route_table_free(t);
    config_free(c);

    c = routet_config("");
    t = routet_build(c);
    cr_expect_eq(routet_lookup(t, "/v1/chat/completions"), -1);
    cr_expect_eq(route_lookup(t, NULL, 0), -1);
    route_table_free(t);
    config_free(c);
    route_table_free(NULL);
}

Test(route, many_routes_all_found)
{
    /* enough exact paths to fill several probe chains, plus prefixes of every length */
    static char text[60000];
    int n = 0;
    for (int i = 0; i < 300; i++)
        n += snprintf(text + n, sizeof text - (size_t)n,
                      "[route e%d]\npath = /api/%d/x\npool = p\n", i, i);
    n += snprintf(text + n, sizeof text - (size_t)n, "[route pa]\npath = /api/*\npool = p\n");
    n += snprintf(text + n, sizeof text - (size_t)n, "[route pa1]\npath = /api/1*\npool = p\n");
    snprintf(text + n, sizeof text - (size_t)n, "[route pa12]\npath = /api/12*\npool = p\n");
    struct config *c = routet_config(text);
    struct route_table *t = routet_build(c);
    char path[64];
    for (int i = 0; i < 300; i++) {
        snprintf(path, sizeof path, "/api/%d/x", i);
        cr_expect_eq(routet_lookup(t, path), i, "%s", path);
    }
    cr_expect_eq(routet_lookup(t, "/api/300/x"), 300, "falls to /api/*");
    cr_expect_eq(routet_lookup(t, "/api/1/y"), 301, "/api/1*");
    cr_expect_eq(routet_lookup(t, "/api/123/y"), 302, "/api/12* is longer than /api/1*");
    cr_expect_eq(routet_lookup(t, "/api/12/x"), 12, "exact still wins");
    cr_expect_eq(routet_lookup(t, "/apx"), -1);
    route_table_free(t);
    config_free(c);
}

Test(route_model, first_route_for_the_path_that_takes_the_model)
{
    struct config *c = NULL;
    char err[512];
    const char *text = "[pool a]\nbackend = 127.0.0.1:1\n"
                       "[route llama]\npath = /v1/chat/completions\npool = a\nmodels = llama*\n"
                       "[route qwen]\npath = /v1/chat/completions\npool = a\nmodels = qwen*\n"
                       "[route anychat]\npath = /v1/chat/*\npool = a\n"
                       "[route only_emb]\npath = /v1/embeddings\npool = a\nmodels = bge-*\n";
    cr_assert_eq(config_load_string("test.conf", text, &c, err, sizeof err), 0, "%s", err);
    struct route_table *t = NULL;
    cr_assert_eq(route_table_build(c->routes, c->nroutes, &t), 0);
#define LM(path, model) route_lookup_model(t, path, strlen(path), model, strlen(model))
    cr_assert_eq(LM("/v1/chat/completions", "llama-3.1-8b"), 0);
    cr_assert_eq(LM("/v1/chat/completions", "qwen2-7b"), 1);
    cr_assert_eq(LM("/v1/chat/completions?x=1", "qwen2-7b"), 1);
    cr_assert_eq(LM("/v1/chat/completions", "mistral"), 2, "falls through to the prefix route");
    cr_assert_eq(LM("/v1/embeddings", "bge-m3"), 3);
    cr_assert_eq(LM("/v1/embeddings", "e5"), ROUTE_NO_MODEL);
    cr_assert_eq(LM("/v2/anything", "llama"), ROUTE_NO_PATH);
#undef LM
    route_table_free(t);
    config_free(c);
}
