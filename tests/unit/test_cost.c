/* Cost accounting: the arithmetic (exact, never rounding a small request to
 * nothing, saturating), which [model] section prices a model, the
 * aigw_cost_usd_total series and the access log's cost_usd. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/accesslog.h"
#include "core/config.h"
#include "core/cost.h"
#include "core/metrics.h"
#include "core/model_label.h"
#include "util/outbuf.h"

Test(cost, tokens_at_micro_usd_per_mtok_are_exact_pico_usd)
{
    /* 1000 prompt at 0.15 USD/Mtok + 500 completion at 0.60: 0.00015 + 0.0003 USD */
    cr_expect_eq(cost_pico_usd(1000, 500, 150000, 600000), 450000000ull);
    cr_expect_eq(cost_pico_usd(1, 0, 1, 1), 1, "one token at the smallest price is not 0");
    cr_expect_eq(cost_pico_usd(0, 1, 0, 1), 1);
    cr_expect_eq(cost_pico_usd(0, 0, 150000, 600000), 0);
    cr_expect_eq(cost_pico_usd(5, 5, 0, 0), 0, "no price, no cost");
    /* a million tokens at 1 USD/Mtok each way: 2 USD */
    cr_expect_eq(cost_pico_usd(1000000, 1000000, 1000000, 1000000), 2 * COST_PICO_PER_USD);
}

Test(cost, saturates_instead_of_wrapping)
{
    cr_expect_eq(cost_pico_usd(UINT64_MAX, 0, 2, 0), UINT64_MAX);
    cr_expect_eq(cost_pico_usd(0, 1ull << 40, 0, CFG_PRICE_MAX_MICRO_USD), UINT64_MAX);
    cr_expect_eq(cost_pico_usd(1ull << 62, 1ull << 62, 2, 2), UINT64_MAX, "each fits, the sum does not");
    cr_expect_eq(cost_pico_usd(UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX), UINT64_MAX);
}

Test(cost, nano_rounding_for_nine_decimals)
{
    cr_expect_eq(cost_nano_rounded(0), 0);
    cr_expect_eq(cost_nano_rounded(499), 0);
    cr_expect_eq(cost_nano_rounded(500), 1);
    cr_expect_eq(cost_nano_rounded(123000499), 123000);
    cr_expect_eq(cost_nano_rounded(UINT64_MAX), UINT64_MAX / 1000 + 1);
}

static const char *fixed(uint64_t v, unsigned decimals)
{
    static char buf[64];
    struct outbuf o = outbuf_make(buf, sizeof buf - 1);
    outbuf_fixed(&o, v, decimals);
    buf[outbuf_done(&o)] = 0;
    return buf;
}

Test(cost, fixed_point_text_without_trailing_zeros)
{
    cr_expect_str_eq(fixed(123000, 9), "0.000123");
    cr_expect_str_eq(fixed(1, 9), "0.000000001");
    cr_expect_str_eq(fixed(0, 9), "0");
    cr_expect_str_eq(fixed(2000000000, 9), "2");
    cr_expect_str_eq(fixed(2500000000, 9), "2.5");
    cr_expect_str_eq(fixed(5, 0), "5");
    cr_expect_str_eq(fixed(UINT64_MAX, 9), "18446744073.709551615");
    cr_expect_str_eq(fixed(UINT64_MAX, 19), "1.8446744073709551615");
}

/* ---- which [model] section prices a model ---- */

static char cost_err[1024];

static int section(const struct model_labels *t, const char *model)
{
    size_t n = strlen(model);
    return model_labels_section(t, model_labels_match(t, model, n), model, n);
}

Test(cost, first_model_section_in_file_order_prices_the_model)
{
    struct config *c = NULL;
    const char *text =
        "[pool p]\nbackend = 127.0.0.1:1\n"
        "[route chat]\npath = /v1/chat/completions\npool = p\nmodels = llama*, qwen2*\n"
        "[model llama-3.1-8b]\ninput_per_mtok = 1\n"        /* section 0 */
        "[model llama*]\ninput_per_mtok = 2\n"              /* 1: the route wrote the glob first */
        "[model qwen*]\ninput_per_mtok = 3\n"               /* 2 */
        "[model qwen2*]\ninput_per_mtok = 4\n"              /* 3: a route's glob, after a section matching too */
        "[model free-*]\n";                                 /* 4: no prices */
    cr_assert_eq(config_load_string("test.conf", text, &c, cost_err, sizeof cost_err), 0, "%s", cost_err);
    struct model_labels t;
    cr_assert_eq(model_labels_build(c, &t), 0);
    cr_expect_eq(section(&t, "llama-3.1-8b"), 0, "label llama* (the route's), priced by the earlier section");
    cr_expect_eq(section(&t, "llama-3.1-70b"), 1, "the route's glob is also [model llama*]");
    cr_expect_eq(section(&t, "qwen2.5"), 2, "label qwen2* (the route's), but [model qwen*] comes first");
    cr_expect_eq(section(&t, "qwen1"), 2);
    cr_expect_eq(section(&t, "free-7b"), 4, "a section without prices still decides: it costs 0");
    cr_expect_eq(section(&t, "gpt-4o"), -1, "no glob: no price");
    cr_expect_eq(c->models[0].input_per_mtok, 1000000);
    model_labels_free(&t);
    config_free(c);
}

/* ---- aigw_cost_usd_total ---- */

static char *cost_metrics_text(void)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(metrics_render_alloc(&text, &len), 0);
    return text;
}

#define cost_assert_line(text, line) \
    cr_assert(strstr((text), "\n" line "\n"), "missing line: %s\n--- got:\n%s", line, (text))

Test(cost, series_sum_shards_per_key_and_model_carrying_sub_nano)
{
    cr_assert_eq(metrics_init(2), 0);
    int alice = metrics_key_slot("alice"), bob = metrics_key_slot("bob");
    int llama = metrics_model_slot("llama*"), qwen = metrics_model_slot("qwen*");
    metrics_add_cost(metrics_shard(0), alice, llama, 450000000);   /* 0.00045 USD */
    metrics_add_cost(metrics_shard(1), alice, llama, 450000000);
    for (int i = 0; i < 3; i++)
        metrics_add_cost(metrics_shard(1), bob, llama, 400);        /* 1200 pico: 1 nano, 200 carried */
    metrics_add_cost(metrics_shard(0), bob, qwen, 0);               /* unpriced: no series */
    char *text = cost_metrics_text();
    cost_assert_line(text, "# TYPE aigw_cost_usd_total counter");
    cost_assert_line(text, "aigw_cost_usd_total{key=\"alice\",model=\"llama*\"} 0.0009");
    cost_assert_line(text, "aigw_cost_usd_total{key=\"bob\",model=\"llama*\"} 0.000000001");
    cr_expect_null(strstr(text, "model=\"qwen*\"} "), "a zero cost made a series:\n%s", text);
    free(text);
    for (int i = 0; i < 2; i++)
        metrics_add_cost(metrics_shard(1), bob, llama, 400);        /* 200 + 800 carried: 2 nano */
    text = cost_metrics_text();
    cost_assert_line(text, "aigw_cost_usd_total{key=\"bob\",model=\"llama*\"} 0.000000002");
    free(text);
}

Test(cost, full_table_charges_key_empty_model_other)
{
    cr_assert_eq(metrics_init(1), 0);
    int llama = metrics_model_slot("llama*");
    char name[32];
    /* more pairs than cells: every charge still counts, the excess under key="" model="other" */
    for (int i = 0; i < METRICS_COST_CELLS + 100; i++) {
        snprintf(name, sizeof name, "k%d", i);
        metrics_add_cost(metrics_shard(0), metrics_key_slot(name), llama, 1000000);   /* 1 micro-USD */
    }
    char *text = cost_metrics_text();
    double total = 0;
    unsigned series = 0;
    for (const char *p = text; (p = strstr(p, "\naigw_cost_usd_total{")); p++, series++)
        total += strtod(strchr(p, '}') + 2, NULL);
    cr_expect_eq(series > METRICS_COST_CELLS / 2, 1, "%u series", series);
    cr_expect(total > (METRICS_COST_CELLS + 100) * 1e-6 * (1 - 1e-9) &&
              total < (METRICS_COST_CELLS + 100) * 1e-6 * (1 + 1e-9), "total %.9f", total);
    cr_expect_not_null(strstr(text, "\naigw_cost_usd_total{key=\"\",model=\"other\"} "), "the overflow series");
    free(text);
}

/* ---- the access log ---- */

Test(cost, access_log_cost_usd_nine_decimals_only_when_charged)
{
    struct alog_entry e = {
        .time_us = 1795299423123456ull, .client = { "1.2.3.4:5", 9 }, .method = { "POST", 4 },
        .target = { "/v1/chat/completions", 20 }, .route = "chat", .pool = "p", .backend = "b",
        .status = 200, .first_byte_us = -1, .ai = true, .model = { "llama", 5 },
        .tokens_in = 1000, .tokens_out = 500, .cost_pusd = 123000400,
    };
    char buf[ALOG_LINE_MAX];
    size_t n = alog_format(buf, sizeof buf, &e);
    cr_assert_gt(n, 0);
    buf[n] = 0;
    cr_expect_not_null(strstr(buf, "\"tokens_out\":500,\"cost_usd\":0.000123,"), "%s", buf);
    e.cost_pusd = 500;
    n = alog_format(buf, sizeof buf, &e);
    buf[n] = 0;
    cr_expect_not_null(strstr(buf, "\"cost_usd\":0.000000001,"), "rounded half up: %s", buf);
    e.cost_pusd = 0;
    n = alog_format(buf, sizeof buf, &e);
    buf[n] = 0;
    cr_expect_null(strstr(buf, "cost_usd"), "no price, no field: %s", buf);
}
