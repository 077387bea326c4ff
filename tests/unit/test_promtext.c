#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/promtext.h"

/* ---- helpers ---- */

#define PT_MAX 64

struct pt_got {
    size_t n;
    struct prom_sample s[PT_MAX];
};

static int pt_collect(void *ctx, const struct prom_sample *s)
{
    struct pt_got *g = ctx;
    if (g->n < PT_MAX)
        g->s[g->n] = *s;
    g->n++;
    return 0;
}

static int pt_parse(const char *text, struct pt_got *g, struct prom_error *err)
{
    memset(g, 0, sizeof *g);
    return prom_parse(text, strlen(text), pt_collect, g, err);
}

/* One sample line: parses, yields exactly one sample, returns its value. */
static double pt_value(const char *text)
{
    struct pt_got g;
    struct prom_error err;
    int r = pt_parse(text, &g, &err);
    cr_assert_eq(r, PROM_OK, "%s: line %zu: %s", text, err.line, err.msg ? err.msg : "");
    cr_assert_eq(g.n, 1, "%s: %zu samples", text, g.n);
    return g.s[0].value;
}

/* Must fail at `line` with a message containing `what`. */
static void pt_reject(const char *text, size_t line, const char *what)
{
    struct pt_got g;
    struct prom_error err;
    int r = pt_parse(text, &g, &err);
    cr_assert_eq(r, PROM_ERROR, "accepted: \"%s\"", text);
    cr_assert_eq(err.line, line, "\"%s\": line %zu, expected %zu (%s)", text, err.line, line, err.msg);
    cr_assert(err.msg && strstr(err.msg, what), "\"%s\": message \"%s\", expected \"%s\"", text,
              err.msg, what);
    cr_assert(err.col >= 1);
}

static struct engine_load pt_load(const char *text)
{
    struct engine_load l;
    struct prom_error err;
    int r = engine_load_parse(text, strlen(text), &l, &err);
    cr_assert_eq(r, 0, "line %zu: %s", err.line, err.msg ? err.msg : "");
    return l;
}

static bool pt_near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

/* ---- each engine's real exposition ---- */

/* aigw-mockllm's /metrics, captured with curl from build/aigw-mockllm. */
static const char mockllm_body[] =
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{model_name=\"mock-llama-3.1-8b\"} 3\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{model_name=\"mock-llama-3.1-8b\"} 7\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{model_name=\"mock-llama-3.1-8b\"} 0.4375\n"
    "# HELP vllm:request_success_total Count of successfully processed requests.\n"
    "# TYPE vllm:request_success_total counter\n"
    "vllm:request_success_total{model_name=\"mock-llama-3.1-8b\"} 0\n"
    "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.\n"
    "# TYPE vllm:prefix_cache_queries counter\n"
    "vllm:prefix_cache_queries{model_name=\"mock-llama-3.1-8b\"} 0\n"
    "# HELP mockllm_requests_total Requests received on the /v1/ endpoints.\n"
    "# TYPE mockllm_requests_total counter\n"
    "mockllm_requests_total 0\n"
    "# HELP mockllm_open_connections Client connections open.\n"
    "# TYPE mockllm_open_connections gauge\n"
    "mockllm_open_connections 1\n";

Test(promtext, mockllm_metrics)
{
    struct engine_load l = pt_load(mockllm_body);
    cr_assert_eq(l.engine, PROM_ENGINE_VLLM);
    cr_assert_str_eq(prom_engine_name(l.engine), "vllm");
    cr_assert(l.has_waiting && l.has_running && l.has_kv_usage);
    cr_assert(pt_near(l.waiting, 7) && pt_near(l.running, 3) && pt_near(l.kv_usage, 0.4375));

    struct pt_got g;
    cr_assert_eq(pt_parse(mockllm_body, &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 7);
    char buf[64];
    size_t n;
    cr_assert_eq(prom_label_get(g.s[0].labels, g.s[0].labels_len, "model_name", buf, sizeof buf, &n), 0);
    cr_assert_str_eq(buf, "mock-llama-3.1-8b");
    cr_assert_eq(n, strlen("mock-llama-3.1-8b"));
    cr_assert_null(g.s[5].labels);     /* mockllm_requests_total: no braces */
    cr_assert_eq(g.s[5].nlabels, 0);
}

/* vLLM V1 (prometheus_client): float values, one series per data-parallel
 * engine, histograms with le="+Inf", _created gauges with big exponents. */
static const char vllm_v1_body[] =
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    "python_gc_objects_collected_total{generation=\"0\"} 7522.0\n"
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"/home/jovyan/qwen3-8b\"} 12.0\n"
    "vllm:num_requests_running{engine=\"1\",model_name=\"/home/jovyan/qwen3-8b\"} 10.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"/home/jovyan/qwen3-8b\"} 4.0\n"
    "vllm:num_requests_waiting{engine=\"1\",model_name=\"/home/jovyan/qwen3-8b\"} 0.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"/home/jovyan/qwen3-8b\"} 0.765\n"
    "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"/home/jovyan/qwen3-8b\"} 0.52\n"
    "# HELP vllm:request_decode_time_seconds Histogram of time spent in DECODE phase for request.\n"
    "# TYPE vllm:request_decode_time_seconds histogram\n"
    "vllm:request_decode_time_seconds_sum{engine=\"1\",model_name=\"/home/jovyan/qwen3-8b\"} 0.5371\n"
    "vllm:request_decode_time_seconds_bucket{engine=\"1\",le=\"0.3\",model_name=\"/home/jovyan/qwen3-8b\"} 0.0\n"
    "vllm:request_decode_time_seconds_bucket{engine=\"1\",le=\"+Inf\",model_name=\"/home/jovyan/qwen3-8b\"} 1.0\n"
    "vllm:request_decode_time_seconds_count{engine=\"1\",model_name=\"/home/jovyan/qwen3-8b\"} 1.0\n"
    "# HELP vllm:request_success_created Count of successfully processed requests.\n"
    "# TYPE vllm:request_success_created gauge\n"
    "vllm:request_success_created{engine=\"0\",finished_reason=\"stop\",model_name=\"/home/jovyan/qwen3-8b\"} 1.7541266361416047e+09\n";

Test(promtext, vllm_v1_data_parallel_series_summed)
{
    struct engine_load l = pt_load(vllm_v1_body);
    cr_assert_eq(l.engine, PROM_ENGINE_VLLM);
    cr_assert(l.has_waiting && pt_near(l.waiting, 4));
    cr_assert(l.has_running && pt_near(l.running, 22));
    /* A ratio per engine: the fullest one, not the sum (1.285). */
    cr_assert(l.has_kv_usage && pt_near(l.kv_usage, 0.765));

    struct pt_got g;
    cr_assert_eq(pt_parse(vllm_v1_body, &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 12);
    cr_assert(pt_near(g.s[11].value, 1.7541266361416047e+09));
    char le[16];
    cr_assert_eq(prom_label_get(g.s[9].labels, g.s[9].labels_len, "le", le, sizeof le, NULL), 0);
    cr_assert_str_eq(le, "+Inf");
    cr_assert_eq(g.s[9].nlabels, 3);
}

/* vLLM V0 (before 0.10): gpu_cache_usage_perc. */
static const char vllm_v0_body[] =
    "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 2.0\n"
    "# HELP vllm:num_requests_swapped Number of requests swapped to CPU.\n"
    "# TYPE vllm:num_requests_swapped gauge\n"
    "vllm:num_requests_swapped{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 5.0\n"
    "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.9\n"
    "# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:cpu_cache_usage_perc gauge\n"
    "vllm:cpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n";

Test(promtext, vllm_v0_gpu_cache_usage)
{
    struct engine_load l = pt_load(vllm_v0_body);
    cr_assert_eq(l.engine, PROM_ENGINE_VLLM);
    cr_assert(l.has_waiting && pt_near(l.waiting, 5));
    cr_assert(l.has_running && pt_near(l.running, 2));
    cr_assert(l.has_kv_usage && pt_near(l.kv_usage, 0.9));
}

Test(promtext, vllm_new_kv_name_preferred_over_old)
{
    /* Versions in between export both; the old name may be stale or zero. */
    struct engine_load l = pt_load("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.1\n"
                                   "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.6\n");
    cr_assert(l.has_kv_usage && pt_near(l.kv_usage, 0.6));
    cr_assert(!l.has_waiting && !l.has_running);
    /* The new name present but unusable: unknown, not the old name's value. */
    l = pt_load("vllm:kv_cache_usage_perc 1.5\nvllm:gpu_cache_usage_perc 0.2\n");
    cr_assert(!l.has_kv_usage);
}

/* SGLang (docs.sglang.io production metrics; engine_type/tp_rank labels of 0.5). */
static const char sglang_body[] =
    "# HELP sglang:num_running_reqs The number of running requests.\n"
    "# TYPE sglang:num_running_reqs gauge\n"
    "sglang:num_running_reqs{engine_type=\"unified\",model_name=\"Qwen-32B\",pp_rank=\"0\",tp_rank=\"0\"} 14.0\n"
    "# HELP sglang:num_used_tokens The number of used tokens.\n"
    "# TYPE sglang:num_used_tokens gauge\n"
    "sglang:num_used_tokens{engine_type=\"unified\",model_name=\"Qwen-32B\",pp_rank=\"0\",tp_rank=\"0\"} 8123.0\n"
    "# HELP sglang:token_usage The token usage.\n"
    "# TYPE sglang:token_usage gauge\n"
    "sglang:token_usage{engine_type=\"unified\",model_name=\"Qwen-32B\",pp_rank=\"0\",tp_rank=\"0\"} 0.28\n"
    "# HELP sglang:gen_throughput The generation throughput (token/s).\n"
    "# TYPE sglang:gen_throughput gauge\n"
    "sglang:gen_throughput{engine_type=\"unified\",model_name=\"Qwen-32B\",pp_rank=\"0\",tp_rank=\"0\"} 0.8371284457403783\n"
    "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.\n"
    "# TYPE sglang:num_queue_reqs gauge\n"
    "sglang:num_queue_reqs{engine_type=\"unified\",model_name=\"Qwen-32B\",pp_rank=\"0\",tp_rank=\"0\"} 3.0\n"
    "# HELP sglang:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE sglang:prompt_tokens_total counter\n"
    "sglang:prompt_tokens_total{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 8.128902e+06\n"
    "# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
    "# TYPE sglang:time_to_first_token_seconds histogram\n"
    "sglang:time_to_first_token_seconds_sum{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 2.3518979474117756e+06\n"
    "sglang:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n";

Test(promtext, sglang_metrics)
{
    struct engine_load l = pt_load(sglang_body);
    cr_assert_eq(l.engine, PROM_ENGINE_SGLANG);
    cr_assert(l.has_waiting && pt_near(l.waiting, 3));
    cr_assert(l.has_running && pt_near(l.running, 14));
    cr_assert(l.has_kv_usage && pt_near(l.kv_usage, 0.28));
}

/* TGI's router (Rust metrics-exporter-prometheus): TYPE without HELP, integer
 * values, a blank line between families, summaries with quantile labels. */
static const char tgi_body[] =
    "# TYPE tgi_request_count counter\n"
    "tgi_request_count 1520\n"
    "\n"
    "# TYPE tgi_queue_size gauge\n"
    "tgi_queue_size 6\n"
    "\n"
    "# TYPE tgi_batch_current_size gauge\n"
    "tgi_batch_current_size 32\n"
    "\n"
    "# TYPE tgi_batch_current_max_tokens gauge\n"
    "tgi_batch_current_max_tokens 18342\n"
    "\n"
    "# TYPE tgi_request_duration summary\n"
    "tgi_request_duration{quantile=\"0\"} 0.012345\n"
    "tgi_request_duration{quantile=\"0.5\"} 1.2838\n"
    "tgi_request_duration{quantile=\"1\"} 30.012\n"
    "tgi_request_duration_sum 2010.5\n"
    "tgi_request_duration_count 1519\n"
    "\n"
    "# TYPE tgi_batch_inference_duration histogram\n"
    "tgi_batch_inference_duration_bucket{method=\"prefill\",le=\"0.005\"} 0\n"
    "tgi_batch_inference_duration_bucket{method=\"prefill\",le=\"+Inf\"} 215\n"
    "tgi_batch_inference_duration_sum{method=\"prefill\"} 8.5\n"
    "tgi_batch_inference_duration_count{method=\"prefill\"} 215\n"
    "\n";

Test(promtext, tgi_metrics)
{
    struct engine_load l = pt_load(tgi_body);
    cr_assert_eq(l.engine, PROM_ENGINE_TGI);
    cr_assert(l.has_waiting && pt_near(l.waiting, 6));
    cr_assert(l.has_running && pt_near(l.running, 32));
    cr_assert(!l.has_kv_usage);
}

/* llama.cpp server --metrics. */
static const char llamacpp_body[] =
    "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
    "# TYPE llamacpp:prompt_tokens_total counter\n"
    "llamacpp:prompt_tokens_total 33065\n"
    "# HELP llamacpp:prompt_seconds_total Prompt process time\n"
    "# TYPE llamacpp:prompt_seconds_total counter\n"
    "llamacpp:prompt_seconds_total 235.743\n"
    "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.\n"
    "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
    "llamacpp:prompt_tokens_seconds 2.37151\n"
    "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n"
    "# TYPE llamacpp:n_decode_total counter\n"
    "llamacpp:n_decode_total 7850\n"
    "# HELP llamacpp:requests_processing Number of requests processing.\n"
    "# TYPE llamacpp:requests_processing gauge\n"
    "llamacpp:requests_processing 2\n"
    "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
    "# TYPE llamacpp:requests_deferred gauge\n"
    "llamacpp:requests_deferred 9\n";

Test(promtext, llamacpp_metrics)
{
    struct engine_load l = pt_load(llamacpp_body);
    cr_assert_eq(l.engine, PROM_ENGINE_LLAMACPP);
    cr_assert(l.has_waiting && pt_near(l.waiting, 9));
    cr_assert(l.has_running && pt_near(l.running, 2));
    cr_assert(!l.has_kv_usage);
}

/* ---- the load summary's rules ---- */

Test(promtext, load_unknown_engine_and_missing_metrics)
{
    struct engine_load l = pt_load("# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1027\n");
    cr_assert_eq(l.engine, PROM_ENGINE_UNKNOWN);
    cr_assert_str_eq(prom_engine_name(l.engine), "unknown");
    cr_assert(!l.has_waiting && !l.has_running && !l.has_kv_usage);

    l = pt_load("");
    cr_assert_eq(l.engine, PROM_ENGINE_UNKNOWN);
    cr_assert(!l.has_waiting && !l.has_running && !l.has_kv_usage);

    /* Only one of the three exported. */
    l = pt_load("vllm:num_requests_running 4\n");
    cr_assert_eq(l.engine, PROM_ENGINE_VLLM);
    cr_assert(l.has_running && !l.has_waiting && !l.has_kv_usage);
}

Test(promtext, load_duplicate_series_summed)
{
    /* One series per model, and the same series repeated: all summed. */
    struct engine_load l = pt_load("sglang:num_queue_reqs{model_name=\"a\"} 2\n"
                                   "sglang:num_queue_reqs{model_name=\"b\"} 3.5\n"
                                   "sglang:num_queue_reqs{model_name=\"b\"} 1\n"
                                   "sglang:token_usage{model_name=\"a\"} 0.2\n"
                                   "sglang:token_usage{model_name=\"b\"} 0.7\n");
    cr_assert(l.has_waiting && pt_near(l.waiting, 6.5));
    cr_assert(l.has_kv_usage && pt_near(l.kv_usage, 0.7));
}

Test(promtext, load_nan_inf_negative_make_field_unknown)
{
    struct engine_load l = pt_load("vllm:num_requests_waiting NaN\n"
                                   "vllm:num_requests_running 3\n"
                                   "vllm:kv_cache_usage_perc 0.5\n");
    cr_assert(!l.has_waiting && l.has_running && l.has_kv_usage);

    l = pt_load("vllm:num_requests_waiting{m=\"a\"} 1\nvllm:num_requests_waiting{m=\"b\"} +Inf\n");
    cr_assert(!l.has_waiting);
    l = pt_load("vllm:num_requests_running -1\n");
    cr_assert(!l.has_running);
    l = pt_load("vllm:num_requests_running -0\n");     /* -0 is zero */
    cr_assert(l.has_running && l.running == 0);
    l = pt_load("vllm:kv_cache_usage_perc -Inf\n");
    cr_assert(!l.has_kv_usage);
    /* A "ratio" above 1 is not a ratio (a percent-scaled exporter?). */
    l = pt_load("sglang:token_usage 28.0\n");
    cr_assert(!l.has_kv_usage);
    l = pt_load("sglang:token_usage 1\n");
    cr_assert(l.has_kv_usage && l.kv_usage == 1.0);
    /* Finite series whose sum overflows. */
    l = pt_load("tgi_queue_size{a=\"1\"} 1.7976931348623157e308\ntgi_queue_size{a=\"2\"} 1.7976931348623157e308\n");
    cr_assert(!l.has_waiting);
    l = pt_load("tgi_queue_size 1.7976931348623157e308\n");
    cr_assert(l.has_waiting && l.waiting == 1.7976931348623157e308);
}

Test(promtext, load_first_engine_wins)
{
    struct engine_load l = pt_load("tgi_queue_size 2\n"
                                   "vllm:num_requests_waiting 50\n"
                                   "vllm:num_requests_running 50\n");
    cr_assert_eq(l.engine, PROM_ENGINE_TGI);
    cr_assert(l.has_waiting && pt_near(l.waiting, 2));
    cr_assert(!l.has_running);
}

Test(promtext, load_parse_error_is_an_error)
{
    struct engine_load l;
    struct prom_error err;
    const char *body = "vllm:num_requests_waiting 3\nvllm:num_requests_running{x=\"1} 2\n";
    cr_assert_eq(engine_load_parse(body, strlen(body), &l, &err), -1);
    cr_assert_eq(err.line, 2);
    cr_assert(!l.has_waiting && !l.has_running && !l.has_kv_usage);
    cr_assert_eq(l.engine, PROM_ENGINE_UNKNOWN);
    cr_assert_eq(engine_load_parse(body, strlen(body), &l, NULL), -1);
}

/* ---- values ---- */

Test(promtext, values_as_go_parsefloat)
{
    cr_assert(isnan(pt_value("a NaN")));
    cr_assert(isnan(pt_value("a nan\n")));
    cr_assert(isnan(pt_value("a NAN\n")));
    cr_assert(pt_value("a +Inf\n") == INFINITY);
    cr_assert(pt_value("a -Inf\n") == -INFINITY);
    cr_assert(pt_value("a inf\n") == INFINITY);
    cr_assert(pt_value("a Infinity\n") == INFINITY);
    cr_assert(pt_value("a -infinity\n") == -INFINITY);
    cr_assert(pt_value("a 0\n") == 0);
    cr_assert(pt_value("a -0.0\n") == 0 && signbit(pt_value("a -0.0\n")));
    cr_assert(pt_value("a 1e3\n") == 1000);
    cr_assert(pt_value("a 1E+3\n") == 1000);
    cr_assert(pt_value("a 2.5e-3\n") == 2.5e-3);
    cr_assert(pt_value("a .5\n") == 0.5);
    cr_assert(pt_value("a 5.\n") == 5);
    cr_assert(pt_value("a +7\n") == 7);
    cr_assert(pt_value("a 007\n") == 7);
    cr_assert(pt_value("a 1.7976931348623157e308\n") == 1.7976931348623157e308);
    cr_assert(pt_value("a 4.9e-324\n") > 0);
    cr_assert(pt_value("a 1e-400\n") == 0);     /* underflow: 0, as Go */
    cr_assert(pt_value("a 123456789012345678901234567890\n") == 123456789012345678901234567890.0);
}

Test(promtext, values_rejected)
{
    pt_reject("a 1e309\n", 1, "out of range");
    pt_reject("a -1.8e308\n", 1, "out of range");
    pt_reject("a +NaN\n", 1, "invalid value");
    pt_reject("a Nan2\n", 1, "invalid value");
    pt_reject("a infin\n", 1, "invalid value");
    pt_reject("a 0x10\n", 1, "invalid value");
    pt_reject("a 1_000\n", 1, "invalid value");
    pt_reject("a 1e\n", 1, "invalid value");
    pt_reject("a 1e+\n", 1, "invalid value");
    pt_reject("a .\n", 1, "invalid value");
    pt_reject("a -\n", 1, "invalid value");
    pt_reject("a 1,5\n", 1, "invalid value");
    pt_reject("a 1.2.3\n", 1, "invalid value");
    pt_reject("a \"1\"\n", 1, "invalid value");
    pt_reject("a\n", 1, "missing value");
    pt_reject("a{b=\"c\"}\n", 1, "missing value");
    pt_reject("a   \t \n", 1, "missing value");
    char big[PROM_MAX_NUMBER + 16];
    memset(big, '1', sizeof big);
    memcpy(big, "a ", 2);
    big[PROM_MAX_NUMBER + 3] = '\0';     /* PROM_MAX_NUMBER + 1 digits */
    pt_reject(big, 1, "too long");
}

Test(promtext, timestamps)
{
    struct pt_got g;
    cr_assert_eq(pt_parse("a 1 1712345678901\nb 2\nc 3 -5\nd 4 9223372036854775807\n"
                          "e 5 -9223372036854775808\nf 6 +12\n", &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 6);
    cr_assert(g.s[0].has_timestamp && g.s[0].timestamp_ms == 1712345678901);
    cr_assert(!g.s[1].has_timestamp);
    cr_assert(g.s[2].timestamp_ms == -5);
    cr_assert(g.s[3].timestamp_ms == INT64_MAX);
    cr_assert(g.s[4].timestamp_ms == INT64_MIN);
    cr_assert(g.s[5].timestamp_ms == 12);
    pt_reject("a 1 9223372036854775808\n", 1, "timestamp out of range");
    pt_reject("a 1 -9223372036854775809\n", 1, "timestamp out of range");
    pt_reject("a 1 1.5\n", 1, "invalid timestamp");
    pt_reject("a 1 1e3\n", 1, "invalid timestamp");
    pt_reject("a 1 -\n", 1, "invalid timestamp");
    pt_reject("a 1 2 3\n", 1, "after timestamp");
}

/* ---- names, labels, escapes ---- */

Test(promtext, names)
{
    struct pt_got g;
    cr_assert_eq(pt_parse(":a 1\n_b:c_9 2\n  \tindented 3  \t\nspaced {x=\"1\"} 4\n", &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 4);
    cr_assert_eq(g.s[2].name_len, strlen("indented"));
    cr_assert_eq(memcmp(g.s[2].name, "indented", 8), 0);
    cr_assert_eq(g.s[3].nlabels, 1);
    pt_reject("1abc 1\n", 1, "invalid metric name");
    pt_reject("a-b 1\n", 1, "invalid character in metric name");
    pt_reject("a.b 1\n", 1, "invalid character in metric name");
    pt_reject("{a=\"b\"} 1\n", 1, "invalid metric name");
    pt_reject("{\"utf8.name\"} 1\n", 1, "invalid metric name");
    pt_reject("na\xc3\xafve 1\n", 1, "invalid character in metric name");
}

Test(promtext, labels_with_escapes)
{
    const char *text = "a{path=\"C:\\\\dir\\\\x\",msg=\"say \\\"hi\\\"\\nbye\",e=\"\",u=\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"} 1\n";
    struct pt_got g;
    struct prom_error err;
    cr_assert_eq(pt_parse(text, &g, &err), PROM_OK, "%s", err.msg);
    cr_assert_eq(g.n, 1);
    cr_assert_eq(g.s[0].nlabels, 4);
    const struct prom_sample *s = &g.s[0];
    char buf[64];
    size_t n;
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "path", buf, sizeof buf, &n), 0);
    cr_assert_str_eq(buf, "C:\\dir\\x");
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "msg", buf, sizeof buf, &n), 0);
    cr_assert_str_eq(buf, "say \"hi\"\nbye");
    cr_assert_eq(n, 12);
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "e", buf, sizeof buf, &n), 0);
    cr_assert_str_eq(buf, "");
    cr_assert_eq(n, 0);
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "u", buf, sizeof buf, NULL), 0);
    cr_assert_str_eq(buf, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "pat", buf, sizeof buf, NULL), -1);
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "paths", buf, sizeof buf, NULL), -1);
    /* Too small: -2 and the length needed; exactly enough fits. */
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "msg", buf, 12, &n), -2);
    cr_assert_eq(n, 12);
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "msg", buf, 13, &n), 0);
    cr_assert_eq(prom_label_get(s->labels, s->labels_len, "e", buf, 0, &n), -2);
    cr_assert_eq(prom_label_get(NULL, 0, "e", buf, sizeof buf, &n), -1);
    /* Any bytes are safe to the helper. */
    cr_assert_eq(prom_label_get("x=\"unterminated", 15, "x", buf, sizeof buf, &n), -1);
    cr_assert_eq(prom_label_get("=\"v\"", 4, "x", buf, sizeof buf, &n), -1);
    cr_assert_eq(prom_label_get("a=\"1\" junk b=\"2\"", 16, "b", buf, sizeof buf, &n), -1);
}

Test(promtext, label_syntax)
{
    struct pt_got g;
    cr_assert_eq(pt_parse("a{} 1\nb{x=\"1\",} 2\nc{ x = \"1\" , y=\"2\" } 3\nd{x=\"}{,=\"} 4\n", &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 4);
    cr_assert_eq(g.s[0].nlabels, 0);
    cr_assert_not_null(g.s[0].labels);
    cr_assert_eq(g.s[0].labels_len, 0);
    cr_assert_eq(g.s[1].nlabels, 1);
    cr_assert_eq(g.s[2].nlabels, 2);
    char buf[8];
    cr_assert_eq(prom_label_get(g.s[2].labels, g.s[2].labels_len, "y", buf, sizeof buf, NULL), 0);
    cr_assert_str_eq(buf, "2");
    cr_assert_eq(prom_label_get(g.s[3].labels, g.s[3].labels_len, "x", buf, sizeof buf, NULL), 0);
    cr_assert_str_eq(buf, "}{,=");

    pt_reject("a{,} 1\n", 1, "invalid label name");
    pt_reject("a{x=\"1\",,} 1\n", 1, "invalid label name");
    pt_reject("a{1x=\"1\"} 1\n", 1, "invalid label name");
    pt_reject("a{x:y=\"1\"} 1\n", 1, "expected '='");
    pt_reject("a{x} 1\n", 1, "expected '='");
    pt_reject("a{x=1} 1\n", 1, "expected '\"'");
    pt_reject("a{x='1'} 1\n", 1, "expected '\"'");
    pt_reject("a{x=\"1\" y=\"2\"} 1\n", 1, "expected ',' or '}'");
    pt_reject("a{x=\"1\"\n", 1, "unterminated label set");
    pt_reject("a{x=\"1} 1\n", 1, "unterminated label value");
    pt_reject("a{x=\"1\",x=\"2\"} 1\n", 1, "duplicate label name");
    pt_reject("a{x=\"a\\tb\"} 1\n", 1, "invalid escape");
    pt_reject("a{x=\"a\\\"} 1\n", 1, "unterminated label value");
    pt_reject("a{x=\"\\u00e9\"} 1\n", 1, "invalid escape");
    pt_reject("a{x=\"\xff\"} 1\n", 1, "UTF-8");
    pt_reject("a{x=\"\xc3\"} 1\n", 1, "UTF-8");               /* truncated */
    pt_reject("a{x=\"\xc0\xaf\"} 1\n", 1, "UTF-8");           /* overlong */
    pt_reject("a{x=\"\xed\xa0\x80\"} 1\n", 1, "UTF-8");       /* surrogate */
    pt_reject("a{x=\"\xf4\x90\x80\x80\"} 1\n", 1, "UTF-8");   /* past U+10FFFF */
    pt_reject("a{x=\"1\"}{y=\"2\"} 1\n", 1, "invalid value");
}

Test(promtext, label_count_bound)
{
    char line[4096];
    size_t o = 0;
    o += (size_t)snprintf(line + o, sizeof line - o, "m{");
    for (unsigned i = 0; i < PROM_MAX_LABELS; i++)
        o += (size_t)snprintf(line + o, sizeof line - o, "l%u=\"%u\",", i, i);
    snprintf(line + o, sizeof line - o, "} 1\n");
    struct pt_got g;
    cr_assert_eq(pt_parse(line, &g, NULL), PROM_OK);
    cr_assert_eq(g.s[0].nlabels, PROM_MAX_LABELS);
    char buf[8];
    cr_assert_eq(prom_label_get(g.s[0].labels, g.s[0].labels_len, "l63", buf, sizeof buf, NULL), 0);
    cr_assert_str_eq(buf, "63");

    snprintf(line + o, sizeof line - o, "extra=\"x\"} 1\n");
    pt_reject(line, 1, "too many labels");
}

/* ---- comments, HELP, TYPE ---- */

Test(promtext, comments_help_type)
{
    struct pt_got g;
    struct prom_error err;
    const char *ok =
        "# just a comment, with \\ anything \xff in it\n"
        "#\n"
        "#HELP tight Help right after the hash.\n"
        "# HELP a Line one\\nline two with a \\\\ backslash.\n"
        "# HELP b\n"
        "# TYPE a counter\n"
        "#  TYPE\tb\tgauge  \n"
        "# TYPE c histogram\n# TYPE d summary\n# TYPE e untyped\n"
        "# help is not HELP: lower case is a comment\n"
        "a 1\n";
    cr_assert_eq(pt_parse(ok, &g, &err), PROM_OK, "line %zu: %s", err.line, err.msg);
    cr_assert_eq(g.n, 1);
    cr_assert_eq(g.s[0].line, 12);

    pt_reject("# HELP\n", 1, "invalid metric name in HELP");
    pt_reject("# HELP 9x text\n", 1, "invalid metric name in HELP");
    pt_reject("# HELP a-b text\n", 1, "invalid character in metric name");
    pt_reject("# HELP a bad \\t escape\n", 1, "invalid escape in HELP");
    pt_reject("# HELP a ends in backslash\\\n", 1, "invalid escape in HELP");
    pt_reject("# HELP a \\\"quoted\\\"\n", 1, "invalid escape in HELP");
    pt_reject("# TYPE a\n", 1, "missing type");
    pt_reject("# TYPE a Gauge\n", 1, "unknown metric type");
    pt_reject("# TYPE a info\n", 1, "unknown metric type");
    pt_reject("# TYPE a gauge extra\n", 1, "unexpected text after TYPE");
    pt_reject("# TYPE\n", 1, "invalid metric name in TYPE");
}

/* ---- lines ---- */

Test(promtext, line_ends)
{
    struct pt_got g;
    /* A last line without LF is taken; blank lines and blank-only lines skipped. */
    cr_assert_eq(pt_parse("\n\n  \t\na 1\n\nb 2", &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 2);
    cr_assert_eq(g.s[0].line, 4);
    cr_assert_eq(g.s[1].line, 6);
    cr_assert_eq(pt_parse("", &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 0);
    cr_assert_eq(pt_parse("# only a comment", &g, NULL), PROM_OK);

    /* CRLF is rejected, on any kind of line, with a message that says so. */
    pt_reject("a 1\r\n", 1, "CRLF");
    pt_reject("a 1\nb 2\r\nc 3\n", 2, "CRLF");
    pt_reject("# HELP a text\r\na 1\n", 1, "CRLF");
    pt_reject("\r\n", 1, "CRLF");
    pt_reject("a 1\r", 1, "CRLF");
    /* A CR inside a line is just a bad byte where it stands. */
    pt_reject("a 1\r2\n", 1, "invalid value");
}

Test(promtext, error_names_the_line_and_earlier_samples_delivered)
{
    struct pt_got g;
    struct prom_error err;
    int r = pt_parse("# TYPE a gauge\na 1\n\nb{x=\"1\"} 2\nc{x=\"1\" 3\nd 4\n", &g, &err);
    cr_assert_eq(r, PROM_ERROR);
    cr_assert_eq(err.line, 5);
    cr_assert_eq(err.col, 9);   /* where the ',' or '}' was expected */
    cr_assert_str_eq(err.msg, "expected ',' or '}' after label value");
    cr_assert_eq(g.n, 2);
    /* err may be NULL. */
    cr_assert_eq(prom_parse("x y\n", 4, NULL, NULL, NULL), PROM_ERROR);
}

Test(promtext, line_length_bound)
{
    size_t n = PROM_MAX_LINE + 64;
    char *text = malloc(n + 8);
    cr_assert_not_null(text);
    /* A comment of exactly PROM_MAX_LINE bytes, then a sample: fine. */
    memset(text, 'x', PROM_MAX_LINE);
    text[0] = '#';
    memcpy(text + PROM_MAX_LINE, "\na 1\n", 5);
    struct pt_got g;
    memset(&g, 0, sizeof g);
    cr_assert_eq(prom_parse(text, PROM_MAX_LINE + 5, pt_collect, &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 1);
    /* One more byte: too long, with or without a LF anywhere after. */
    memset(text, 'x', PROM_MAX_LINE + 1);
    text[0] = '#';
    struct prom_error err;
    cr_assert_eq(prom_parse(text, PROM_MAX_LINE + 1, NULL, NULL, &err), PROM_ERROR);
    cr_assert_str_eq(err.msg, "line too long");
    memcpy(text + PROM_MAX_LINE + 1, "\na 1\n", 5);
    cr_assert_eq(prom_parse(text, PROM_MAX_LINE + 6, NULL, NULL, &err), PROM_ERROR);
    cr_assert_eq(err.line, 1);
    cr_assert_str_eq(err.msg, "line too long");
    free(text);
}

Test(promtext, never_reads_past_len)
{
    /* The parser is given a length inside a longer string: what lies past it
     * must not count (here it would make the label set and value complete). */
    const char *text = "a{x=\"1\"} 2\nb{y=\"2\"} 3";
    struct pt_got g;
    memset(&g, 0, sizeof g);
    cr_assert_eq(prom_parse(text, 11, pt_collect, &g, NULL), PROM_OK);
    cr_assert_eq(g.n, 1);
    struct prom_error err;
    cr_assert_eq(prom_parse(text, 16, NULL, NULL, &err), PROM_ERROR);
    cr_assert_str_eq(err.msg, "unterminated label value");
    cr_assert_eq(prom_parse(text, 20, NULL, NULL, &err), PROM_ERROR);
    cr_assert_str_eq(err.msg, "missing value");
    cr_assert_eq(prom_parse(text, 21, NULL, NULL, &err), PROM_OK);
    /* A value cut short is that shorter value: 3 of "30". */
    memset(&g, 0, sizeof g);
    cr_assert_eq(prom_parse("a 30", 3, pt_collect, &g, NULL), PROM_OK);
    cr_assert(g.s[0].value == 3);
}

static int pt_stop_after_two(void *ctx, const struct prom_sample *s)
{
    int *n = ctx;
    return ++*n >= 2;
}

Test(promtext, callback_stops)
{
    int n = 0;
    cr_assert_eq(prom_parse("a 1\nb 2\nc 3\n", 12, pt_stop_after_two, &n, NULL), PROM_STOPPED);
    cr_assert_eq(n, 2);
    /* Validation only. */
    cr_assert_eq(prom_parse("a 1\nb 2\nc 3\n", 12, NULL, NULL, NULL), PROM_OK);
}

/* vllm:prefix_cache_{hits,queries}: summed over series; the _total sample wins
 * when both are exported, so a counter never counts twice. */
Test(promtext, prefix_cache_counters_with_and_without_total)
{
    struct engine_load l = pt_load("vllm:num_requests_running 1\n"
                                   "vllm:prefix_cache_queries{model_name=\"m\"} 1000\n"
                                   "vllm:prefix_cache_hits{model_name=\"m\"} 600\n");
    cr_assert(l.has_prefix_cache);
    cr_expect(pt_near(l.prefix_cache_hits, 600));
    cr_expect(pt_near(l.prefix_cache_queries, 1000));
    l = pt_load("vllm:prefix_cache_queries_total{engine=\"0\"} 300\n"
                "vllm:prefix_cache_queries_total{engine=\"1\"} 200\n"
                "vllm:prefix_cache_hits_total{engine=\"0\"} 50\n"
                "vllm:prefix_cache_hits_total{engine=\"1\"} 25\n"
                "vllm:prefix_cache_hits 9999\n");
    cr_assert(l.has_prefix_cache);
    cr_expect(pt_near(l.prefix_cache_hits, 75));
    cr_expect(pt_near(l.prefix_cache_queries, 500));
    /* one of the two missing, or a bad value: not known */
    l = pt_load("vllm:prefix_cache_hits 5\n");
    cr_expect_not(l.has_prefix_cache);
    l = pt_load("vllm:prefix_cache_hits 5\nvllm:prefix_cache_queries NaN\n");
    cr_expect_not(l.has_prefix_cache);
    l = pt_load("sglang:num_queue_reqs 1\nvllm:prefix_cache_hits 5\nvllm:prefix_cache_queries 9\n");
    cr_expect_not(l.has_prefix_cache, "another engine's figures are never mixed in");
}

/* The engine's cache capacity in tokens: vLLM's cache_config_info labels
 * (num_gpu_blocks x block_size, in any order among its other labels), SGLang's
 * max_total_num_tokens; anything not a plain count leaves it unknown. */
Test(promtext, cache_capacity_vllm_and_sglang)
{
    struct engine_load l = pt_load(
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\","
        "gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"0\",num_gpu_blocks=\"512\","
        "num_gpu_blocks_override=\"None\",swap_space=\"4\"} 1.0\n");
    cr_assert(l.has_cache_tokens);
    cr_expect(pt_near(l.cache_tokens, 8192));
    cr_expect_eq(l.engine, PROM_ENGINE_VLLM);
    l = pt_load("vllm:cache_config_info{num_gpu_blocks=\"27000\",engine=\"0\",block_size=\"32\"} 1\n");
    cr_assert(l.has_cache_tokens, "labels in another order");
    cr_expect(pt_near(l.cache_tokens, 864000));
    l = pt_load("sglang:num_queue_reqs 0\nsglang:max_total_num_tokens{model_name=\"m\"} 419430\n");
    cr_assert(l.has_cache_tokens);
    cr_expect(pt_near(l.cache_tokens, 419430));
    cr_expect_eq(l.engine, PROM_ENGINE_SGLANG);

    static const char *const unknown[] = {
        "vllm:num_requests_running 1\n",                                            /* absent */
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"None\"} 1\n",    /* not profiled yet */
        "vllm:cache_config_info{block_size=\"16\"} 1\n",
        "vllm:cache_config_info{num_gpu_blocks=\"512\"} 1\n",
        "vllm:cache_config_info 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"\"} 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"-5\"} 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"1e3\"} 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\" 512\"} 1\n",
        "vllm:cache_config_info{block_size=\"0\",num_gpu_blocks=\"512\"} 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"4294967296\"} 1\n",
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"99999999999999999999999999\"} 1\n",
        "vllm:cache_config_info{block_size=\"65536\",num_gpu_blocks=\"65536\"} 1\n",  /* 2^32 tokens */
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"512\"} 1\n"
        "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"None\"} 1\n",    /* one bad series */
        "sglang:max_total_num_tokens NaN\n",
        "sglang:max_total_num_tokens -1\n",
        "sglang:max_total_num_tokens 0\n",
        "sglang:max_total_num_tokens 1.5\n",
        "sglang:max_total_num_tokens 1e300\n",
        "sglang:num_queue_reqs 1\nvllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"512\"} 1\n",
    };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        l = pt_load(unknown[i]);
        cr_expect_not(l.has_cache_tokens, "known from: %s", unknown[i]);
    }
    /* two ranks, each its own cache: the capacity is their sum */
    l = pt_load("vllm:cache_config_info{engine=\"0\",block_size=\"16\",num_gpu_blocks=\"100\"} 1\n"
                "vllm:cache_config_info{engine=\"1\",block_size=\"16\",num_gpu_blocks=\"50\"} 1\n");
    cr_assert(l.has_cache_tokens);
    cr_expect(pt_near(l.cache_tokens, 2400));
}
