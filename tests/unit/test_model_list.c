/* Model ids from a backend's GET /v1/models answer (src/proto/model_list.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/model_list.h"

static char ml_seen[2048];

static void ml_collect(void *ctx, const char *id, size_t len)
{
    (void)ctx;
    size_t at = strlen(ml_seen);
    snprintf(ml_seen + at, sizeof ml_seen - at, "%s%.*s", at ? "|" : "", (int)len, id);
}

static int ml_parse(const char *text)
{
    ml_seen[0] = '\0';
    /* an exact-size copy: ASan sees any read past the end */
    size_t n = strlen(text);
    char *copy = malloc(n ? n : 1);
    memcpy(copy, text, n);
    int rc = model_list_parse(copy, n, ml_collect, NULL);
    free(copy);
    return rc;
}

Test(model_list, engines_answers)
{
    /* vLLM's shape, with nested permission objects and numbers */
    cr_expect_eq(ml_parse("{\"object\":\"list\",\"data\":[{\"id\":\"meta-llama/Llama-3.1-70B\",\"object\":\"model\","
                          "\"created\":1717000000,\"owned_by\":\"vllm\",\"max_model_len\":8192,"
                          "\"permission\":[{\"allow_sampling\":true,\"group\":null}]},"
                          "{\"id\":\"lora-a\",\"parent\":\"meta-llama/Llama-3.1-70B\"}]}"),
                 2);
    cr_expect_str_eq(ml_seen, "meta-llama/Llama-3.1-70B|lora-a");
    cr_expect_eq(ml_parse(" { \"data\" : [ ] , \"object\" : \"list\" } \n"), 0);
    cr_expect_str_eq(ml_seen, "");
    /* escapes are decoded; entries without a string id are skipped */
    cr_expect_eq(ml_parse("{\"data\":[{\"id\":\"a\\/b\\u0063\"},{\"id\":7},{\"name\":\"x\"},\"str\",3,{\"id\":\"\"}]}"), 1);
    cr_expect_str_eq(ml_seen, "a/bc");
    /* no data at all: none */
    cr_expect_eq(ml_parse("{\"object\":\"list\"}"), 0);
}

Test(model_list, refuses_what_is_not_a_list)
{
    static const char *const bad[] = {
        "", "[]", "{", "{\"data\":[{\"id\":\"a\"}", "{\"data\":[{\"id\":\"a\"}]} x", "not json",
        "{\"data\":[{\"id\":\"a\\", "{\"data\":[{\"id\" \"a\"}]}", "{\"data\":[,]}", "{\"a\":\"\x01\"}",
        "<html>404</html>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(ml_parse(bad[i]), -1, "accepted: %s", bad[i]);
    /* nesting is bounded */
    char deep[200] = "{\"x\":";
    for (int i = 0; i < 60; i++)
        strcat(deep, "[");
    cr_expect_eq(ml_parse(deep), -1);
}

Test(model_list, long_ids_are_skipped)
{
    char text[1024];
    char id[MODEL_ID_MAX + 2];
    memset(id, 'x', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    snprintf(text, sizeof text, "{\"data\":[{\"id\":\"%s\"},{\"id\":\"ok\"}]}", id);
    cr_expect_eq(ml_parse(text), 1);
    cr_expect_str_eq(ml_seen, "ok");
}
