#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/usage_json.h"

Test(usage_json, usage_from_chat_completion_json)
{
    const char *body =
        "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1718000000,\"model\":\"m\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"usage: \\\"none\\\"\","
        "\"usage\":{\"prompt_tokens\":1}},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":57,\"completion_tokens\":17,\"total_tokens\":74,"
        "\"prompt_tokens_details\":{\"cached_tokens\":0}}}";
    uint64_t prompt = 1, completion = 1;
    cr_assert_eq(usage_from_json(body, strlen(body), &prompt, &completion), USAGE_FOUND);
    cr_expect_eq(prompt, 57);
    cr_expect_eq(completion, 17);

    /* read in pieces, split at every point: the same */
    size_t n = strlen(body);
    for (size_t cut = 0; cut <= n; cut++) {
        struct usage_json j;
        usage_json_init(&j);
        usage_json_feed(&j, body, cut);
        usage_json_feed(&j, body + cut, n - cut);
        prompt = completion = 1;
        cr_assert_eq(usage_json_usage(&j, &prompt, &completion), USAGE_FOUND, "split at %zu", cut);
        cr_assert(prompt == 57 && completion == 17, "split at %zu: %lu %lu", cut,
                  (unsigned long)prompt, (unsigned long)completion);
    }
}

Test(usage_json, usage_from_completion_and_embeddings_json)
{
    const char *text =
        "{\n  \"object\": \"text_completion\",\n  \"choices\": [ { \"text\": \"hi\", \"index\": 0 } ],\n"
        "  \"usage\": { \"completion_tokens\" : 5 , \"prompt_tokens\" : 3 }\n}";
    uint64_t prompt, completion;
    cr_assert_eq(usage_from_json(text, strlen(text), &prompt, &completion), USAGE_FOUND);
    cr_expect_eq(prompt, 3);
    cr_expect_eq(completion, 5);

    const char *emb = "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,"
                      "\"embedding\":[0.0023,-0.0093,1e-5]}],\"model\":\"e\","
                      "\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}";
    cr_assert_eq(usage_from_json(emb, strlen(emb), &prompt, &completion), USAGE_FOUND);
    cr_expect_eq(prompt, 8);
    cr_expect_eq(completion, 0);
}

Test(usage_json, usage_from_json_absent_or_garbage)
{
    uint64_t prompt, completion;
    const char *cases[] = {
        "",
        "{}",
        "{\"usage\":null}",
        "{\"usage\":{}}",
        "{\"data\":{\"usage\":{\"prompt_tokens\":3}}}",
        "[{\"usage\":{\"prompt_tokens\":3}}]",
        "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\"}}",
        "not json at all \xff\xfe",
        "{\"usage\":{\"prompt_tokens\":\"12\"}}",
        "{\"us\\u0061ge\":{\"prompt_tokens\":3}}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        cr_expect_eq(usage_from_json(cases[i], strlen(cases[i]), &prompt, &completion), USAGE_NONE,
                     "case %zu: %s", i, cases[i]);

    /* huge counts saturate instead of wrapping */
    const char *huge = "{\"usage\":{\"prompt_tokens\":99999999999999999999999,\"completion_tokens\":1}}";
    cr_assert_eq(usage_from_json(huge, strlen(huge), &prompt, &completion), USAGE_FOUND);
    cr_expect_eq(prompt, UINT64_MAX);
}


/* Reads `{"usage":{"prompt_tokens":<num>,"completion_tokens":2}}` whole and
 * split at every point; all must agree. Returns the whole read's result. */
static enum usage_read read_count(const char *num, uint64_t *prompt)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"usage\":{\"prompt_tokens\":%s,\"completion_tokens\":2}}", num);
    uint64_t completion;
    enum usage_read whole = usage_from_json(body, (size_t)n, prompt, &completion);
    for (int cut = 0; cut <= n; cut++) {
        struct usage_json j;
        usage_json_init(&j);
        usage_json_feed(&j, body, (size_t)cut);
        usage_json_feed(&j, body + cut, (size_t)(n - cut));
        uint64_t p2, c2;
        cr_assert_eq(usage_json_usage(&j, &p2, &c2), whole, "%s split at %d", num, cut);
        cr_assert(p2 == *prompt && c2 == completion, "%s split at %d", num, cut);
    }
    return whole;
}

Test(usage_json, counts_are_numbers_read_by_value)
{
    static const struct { const char *text; uint64_t value; } ok[] = {
        { "0", 0 }, { "7", 7 }, { "1000", 1000 }, { "1e3", 1000 }, { "1E+3", 1000 },
        { "1000.0", 1000 }, { "1.5e1", 15 }, { "150e-1", 15 }, { "0.0", 0 }, { "-0", 0 },
        { "0e-7", 0 }, { "1e12", 1000000000000ULL }, { "1099511627777", (1ULL << 40) + 1 },
        { "9223372036854775808", 1ULL << 63 }, { "18446744073709551615", UINT64_MAX },
        /* beyond 2^64 - 1: saturates, never wraps */
        { "18446744073709551616", UINT64_MAX }, { "99999999999999999999999", UINT64_MAX },
        { "1e20", UINT64_MAX }, { "1e999999999", UINT64_MAX },
        { "123456789012345678901234567890e-1", UINT64_MAX },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t prompt = 12345;
        cr_expect_eq(read_count(ok[i].text, &prompt), USAGE_FOUND, "%s", ok[i].text);
        cr_expect_eq(prompt, ok[i].value, "%s read as %llu", ok[i].text, (unsigned long long)prompt);
    }
}

Test(usage_json, a_count_that_is_no_non_negative_integer_makes_usage_unreadable)
{
    static const char *const bad[] = {
        "-5", "-1e3", "3.7", "0.5", "15e-1", "1e-1", "1.", "1e", "1e+", "-", "1.2.3", "1e5e5",
        "--1", "1-", "123456789012345678901234567891e-10",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t prompt = 12345;
        cr_expect_eq(read_count(bad[i], &prompt), USAGE_UNREADABLE, "%s", bad[i]);
        cr_expect_eq(prompt, 0, "%s: counts read 0 when unreadable", bad[i]);
    }
    /* numbers elsewhere may be anything */
    const char *body = "{\"temperature\":-0.7,\"choices\":[{\"logprob\":-1.5e-3}],"
                       "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"cost\":-2.5}}";
    uint64_t p, q;
    cr_expect_eq(usage_from_json(body, strlen(body), &p, &q), USAGE_FOUND);
    cr_expect(p == 3 && q == 4);
}
