/* LLM metrics: [model GLOB] prices, model label resolution, the bucket tables
 * and what metrics_observe_ai exports. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/metrics.h"
#include "core/model_label.h"

static char lm_err[1024];

static struct config *lm_load_ok(const char *text)
{
    struct config *c = NULL;
    cr_assert_eq(config_load_string("test.conf", text, &c, lm_err, sizeof lm_err), 0, "%s\n---\n%s", lm_err, text);
    return c;
}

static void lm_expect_error(const char *text, const char *expected)
{
    struct config *c = NULL;
    cr_expect_eq(config_load_string("test.conf", text, &c, lm_err, sizeof lm_err), -1, "loaded:\n%s", text);
    cr_expect_str_eq(lm_err, expected, "--- config ---\n%s", text);
    if (c)
        config_free(c);
}

/* ---- [model GLOB] ---- */

Test(config_model, prices_are_exact_micro_usd)
{
    struct config *c = lm_load_ok("[model llama-3.1-8b*]\ninput_per_mtok = 0.10\noutput_per_mtok = 0.30\n"
                                  "[model qwen?]\ninput_per_mtok = 3\noutput_per_mtok = 0.000001\n"
                                  "[model gpt-big]\ninput_per_mtok = 1000000\n"
                                  "[model free]\n");
    cr_assert_eq(c->nmodels, 4);
    cr_expect_str_eq(c->models[0].glob, "llama-3.1-8b*");
    cr_expect_eq(c->models[0].input_per_mtok, 100000);
    cr_expect_eq(c->models[0].output_per_mtok, 300000);
    cr_expect_eq(c->models[0].line, 1);
    cr_expect_str_eq(c->models[1].glob, "qwen?");
    cr_expect_eq(c->models[1].input_per_mtok, 3000000);
    cr_expect_eq(c->models[1].output_per_mtok, 1);
    cr_expect_eq(c->models[2].input_per_mtok, 1000000000000ULL);
    cr_expect_eq(c->models[3].input_per_mtok, 0, "prices default to 0");
    cr_expect_eq(c->models[3].output_per_mtok, 0);
    config_free(c);
}

Test(config_model, bad_prices_and_globs_name_the_line)
{
    static const char *const bad[] = { "-1", "1e3", "0.1234567", "abc", ".5", "5.", "1000000.000001", "",
                                       "0,5", "1 000", "+1" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256], want[512];
        snprintf(text, sizeof text, "[model m]\n\ninput_per_mtok = %s\n", bad[i]);
        snprintf(want, sizeof want,
                 "test.conf:3: invalid value for input_per_mtok: '%s' (expected USD per million tokens: a "
                 "decimal number 0-1000000 with at most 6 decimals, such as 0.15)",
                 bad[i]);
        lm_expect_error(text, want);
    }
    lm_expect_error("[model a*]\n[model b]\n[model a*]\n", "test.conf:3: duplicate [model a*] (already on line 1)");
    lm_expect_error("[model a, b]\n", "test.conf:1: invalid model glob 'a, b': one glob per [model] section");
    lm_expect_error("[model m]\ncost = 1\n", "test.conf:2: unknown key 'cost' in [model m]");
    lm_expect_error("[model m]\ninput_per_mtok = 1\ninput_per_mtok = 2\n",
                    "test.conf:3: duplicate key 'input_per_mtok' in [model m]");
}

Test(config_model, printed_by_T_and_read_back)
{
    struct config *c = lm_load_ok("[model llama*]\ninput_per_mtok = 0.1\noutput_per_mtok = 2.5\n"
                                  "[model tiny]\noutput_per_mtok = 0.000001\n");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print(c, f);
    fclose(f);
    cr_expect(strstr(text, "\n[model llama*]\ninput_per_mtok = 0.10\noutput_per_mtok = 2.50\n\n"), "%s", text);
    cr_expect(strstr(text, "\n[model tiny]\ninput_per_mtok = 0.00\noutput_per_mtok = 0.000001\n"), "%s", text);
    struct config *again = lm_load_ok(text);
    cr_expect_eq(again->nmodels, 2);
    cr_expect_eq(again->models[0].input_per_mtok, 100000);
    cr_expect_eq(again->models[0].output_per_mtok, 2500000);
    cr_expect_eq(again->models[1].output_per_mtok, 1);
    free(text);
    config_free(again);
    config_free(c);
}

/* ---- model labels ---- */

static int lm_match(const struct model_labels *t, const char *model)
{
    return model_labels_match(t, model, strlen(model));
}

Test(model_label, config_globs_in_file_order_else_none)
{
    struct config *c = lm_load_ok(
        "[pool p]\nbackend = 127.0.0.1:1\n"
        "[model llama-3.1-8b-instruct]\n"                                   /* line 3 */
        "[route chat]\npath = /v1/chat/completions\npool = p\nmodels = llama*, qwen*\n"  /* line 4 */
        "[route any]\npath = /v1/completions\npool = p\n"                   /* no models: no label */
        "[model qwen*]\n"                                                   /* same glob as the route's */
        "[model mistral-?b]\n");
    struct model_labels t;
    cr_assert_eq(model_labels_build(c, &t), 0);
    cr_assert_eq(t.n, 4, "llama-3.1-8b-instruct, llama*, qwen* (once), mistral-?b; got %u", t.n);
    cr_expect_str_eq(t.glob[0], "llama-3.1-8b-instruct");
    cr_expect_str_eq(t.glob[1], "llama*");
    cr_expect_str_eq(t.glob[2], "qwen*");
    cr_expect_str_eq(t.glob[3], "mistral-?b");
    cr_expect_eq(lm_match(&t, "llama-3.1-8b-instruct"), 0, "the earlier [model] wins over the later route glob");
    cr_expect_eq(lm_match(&t, "llama-3.1-70b"), 1);
    cr_expect_eq(lm_match(&t, "qwen2.5-7b"), 2);
    cr_expect_eq(lm_match(&t, "mistral-7b"), 3);
    cr_expect_eq(lm_match(&t, "mistral-70b"), -1, "? is one byte");
    cr_expect_eq(lm_match(&t, "gpt-4o"), -1, "no glob: other");
    cr_expect_eq(lm_match(&t, ""), -1);
    model_labels_free(&t);
    config_free(c);

    c = lm_load_ok("[pool p]\nbackend = 127.0.0.1:1\n[route chat]\npath = /v1/chat/completions\npool = p\n");
    cr_assert_eq(model_labels_build(c, &t), 0);
    cr_expect_eq(t.n, 0);
    cr_expect_eq(lm_match(&t, "anything"), -1);
    model_labels_free(&t);
    config_free(c);
}

/* ---- buckets and the exported families ---- */

Test(metrics_llm, bucket_placement_le_inclusive)
{
    const struct metrics_buckets *llm = &metrics_llm_buckets, *tok = &metrics_token_buckets;
    cr_expect_eq(llm->n, METRICS_LLM_NBUCKETS);
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 0)], "0.025");
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 25000)], "0.025");
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 25001)], "0.05");
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 300000)], "0.5");
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 300000000)], "300");
    cr_expect_str_eq(llm->le[metrics_bucket_of(llm, 300000001)], "+Inf");
    cr_expect_str_eq(tok->le[metrics_bucket_of(tok, 999)], "0.001");
    cr_expect_str_eq(tok->le[metrics_bucket_of(tok, 20000)], "0.02");
    cr_expect_str_eq(tok->le[metrics_bucket_of(tok, 50001)], "0.075");
    cr_expect_str_eq(tok->le[metrics_bucket_of(tok, 2000000)], "+Inf");
    const struct metrics_buckets *d = &metrics_duration_buckets;
    cr_expect_str_eq(d->le[metrics_bucket_of(d, 5000)], "0.005");
    cr_expect_str_eq(d->le[metrics_bucket_of(d, 60000001)], "+Inf");
    /* bounds increase and match their labels */
    const struct metrics_buckets *all[] = { llm, tok, d };
    for (unsigned t = 0; t < 3; t++)
        for (unsigned i = 0; i + 1 < all[t]->n; i++) {
            if (i)
                cr_expect_gt(all[t]->bound_us[i], all[t]->bound_us[i - 1]);
            char want[32];
            double s = (double)all[t]->bound_us[i] / 1e6;
            snprintf(want, sizeof want, "%g", s);
            cr_expect_str_eq(all[t]->le[i], want);
        }
}

static char *lm_metrics_text(void)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(metrics_render_alloc(&text, &len), 0);
    return text;
}

#define lm_assert_line(text, line) \
    cr_assert(strstr((text), "\n" line "\n"), "missing line: %s\n--- got:\n%s", line, (text))

Test(metrics_llm, observations_render_by_route_pool_model_and_backend)
{
    cr_assert_eq(metrics_init(2), 0);
    int rp = metrics_route_pool_slot("chat", "gpu-a");
    cr_assert_geq(rp, 0);
    cr_expect_eq(metrics_route_pool_slot("chat", "gpu-a"), rp, "stable per pair");
    cr_expect_neq(metrics_route_pool_slot("chat", "gpu-b"), rp);
    int be = metrics_backend_slot("gpu-a", "10.0.0.1:8000");
    int backends[] = { be };
    metrics_set_live_backends(backends, 1);
    cr_expect_eq(metrics_model_slot("other"), 0);
    int llama = metrics_model_slot("llama*");
    cr_expect_gt(llama, 0);

    struct ai_observation o = {
        .route_pool_slot = rp, .backend_slot = be, .model_slot = llama, .status = 200, .answered = true,
        .first_byte_us = 300000, .backend_us = 1200000, .token_gap_us = 20000,
        .prompt_tokens = 11, .completion_tokens = 7,
    };
    metrics_observe_ai(metrics_shard(0), &o);
    o.first_byte_us = 40000;
    o.token_gap_us = 0;     /* fewer than two token events */
    metrics_observe_ai(metrics_shard(1), &o);
    o = (struct ai_observation){ .route_pool_slot = rp, .backend_slot = -1, .model_slot = 0, .status = 429 };
    metrics_observe_ai(metrics_shard(1), &o);   /* refused before a backend: no first byte */

    char *text = lm_metrics_text();
    lm_assert_line(text, "aigw_first_byte_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"0.025\"} 0");
    lm_assert_line(text, "aigw_first_byte_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"0.05\"} 1");
    lm_assert_line(text, "aigw_first_byte_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"0.5\"} 2");
    lm_assert_line(text, "aigw_first_byte_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"+Inf\"} 2");
    lm_assert_line(text, "aigw_first_byte_seconds_sum{route=\"chat\",pool=\"gpu-a\"} 0.340000");
    lm_assert_line(text, "aigw_first_byte_seconds_count{route=\"chat\",pool=\"gpu-a\"} 2");
    cr_expect_null(strstr(text, "pool=\"gpu-b\""), "a pair without observations has no series");
    lm_assert_line(text, "aigw_time_per_output_token_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"0.015\"} 0");
    lm_assert_line(text, "aigw_time_per_output_token_seconds_bucket{route=\"chat\",pool=\"gpu-a\",le=\"0.02\"} 1");
    lm_assert_line(text, "aigw_time_per_output_token_seconds_count{route=\"chat\",pool=\"gpu-a\"} 1");
    lm_assert_line(text, "aigw_model_requests_total{model=\"llama*\",status=\"200\"} 2");
    lm_assert_line(text, "aigw_model_requests_total{model=\"other\",status=\"429\"} 1");
    lm_assert_line(text, "aigw_model_tokens_total{model=\"llama*\",direction=\"prompt\"} 22");
    lm_assert_line(text, "aigw_model_tokens_total{model=\"llama*\",direction=\"completion\"} 14");
    lm_assert_line(text, "aigw_backend_tokens_total{pool=\"gpu-a\",backend=\"10.0.0.1:8000\",direction=\"completion\"} 14");
    lm_assert_line(text, "aigw_backend_request_duration_seconds_bucket{pool=\"gpu-a\",backend=\"10.0.0.1:8000\",le=\"1\"} 0");
    lm_assert_line(text, "aigw_backend_request_duration_seconds_bucket{pool=\"gpu-a\",backend=\"10.0.0.1:8000\",le=\"2.5\"} 2");
    lm_assert_line(text, "# TYPE aigw_first_byte_seconds histogram");
    lm_assert_line(text, "# TYPE aigw_model_requests_total counter");
    free(text);
}

Test(metrics_llm, model_registry_full_counts_as_other)
{
    cr_assert_eq(metrics_init(1), 0);
    char name[32];
    for (int i = 1; i < METRICS_MAX_MODELS; i++) {
        snprintf(name, sizeof name, "m%d*", i);
        cr_assert_eq(metrics_model_slot(name), i);
    }
    cr_expect_eq(metrics_model_slot("one-too-many"), 0, "full: other");
    cr_expect_eq(metrics_model_slot("m5*"), 5, "known labels keep their slot");
}
