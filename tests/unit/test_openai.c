/* OpenAI request body reader (src/proto/openai.c). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/openai.h"

static struct openai_request oa_req;
static const char *oa_why;

static int oa_parse_n(const char *s, size_t n)
{
    oa_why = NULL;
    return openai_parse_request(s, n, &oa_req, &oa_why);
}

static int oa_parse(const char *s)
{
    return oa_parse_n(s, strlen(s));
}

static bool oa_slice_is(struct slice s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

#define oa_expect_ok(body)                                                             \
    do {                                                                               \
        int rc_ = oa_parse(body);                                                      \
        cr_assert_eq(rc_, OPENAI_OK, "expected OK for %s, got: %s", body,              \
                     oa_why ? oa_why : "(null)");                                     \
    } while (0)

#define oa_expect_bad_n(body, n, want)                                                 \
    do {                                                                               \
        int rc_ = oa_parse_n(body, n);                                                 \
        cr_assert_eq(rc_, OPENAI_BAD, "expected BAD for %s", body);                    \
        cr_assert_not_null(oa_why);                                                    \
        cr_assert_str_eq(oa_why, want, "body %s", body);                               \
    } while (0)

#define oa_expect_bad(body, want) oa_expect_bad_n(body, strlen(body), want)

/* ---------------- realistic requests ---------------- */

static const char oa_chat_body[] =
    "{\n"
    "  \"model\": \"llama-3.1-8b-instruct\",\n"
    "  \"messages\": [\n"
    "    {\"role\": \"system\", \"content\": \"You are a helpful assistant.\"},\n"
    "    {\"role\": \"user\", \"content\": \"What is the weather in Paris?\"}\n"
    "  ],\n"
    "  \"temperature\": 0.7,\n"
    "  \"top_p\": 1e-1,\n"
    "  \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\",\n"
    "     \"description\": \"Get the weather\", \"parameters\": {\"type\": \"object\",\n"
    "     \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}],\n"
    "  \"tool_choice\": \"auto\",\n"
    "  \"response_format\": {\"type\": \"json_object\"},\n"
    "  \"logit_bias\": {\"50256\": -100},\n"
    "  \"stop\": null,\n"
    "  \"user\": \"user-1234\"\n"
    "}\n";

Test(openai, chat_with_tools_and_response_format)
{
    oa_expect_ok(oa_chat_body);
    cr_assert(oa_slice_is(oa_req.model, "llama-3.1-8b-instruct"));
    cr_assert_not(oa_req.model_escaped);
    cr_assert_eq(oa_req.model_decoded_len, strlen("llama-3.1-8b-instruct"));
    cr_assert_not(oa_req.stream);
    cr_assert_not(oa_req.include_usage);
    cr_assert_not(oa_req.has_max_tokens);
    cr_assert_eq(oa_req.message_count, 2);
    uint64_t bytes = strlen("You are a helpful assistant.") + strlen("What is the weather in Paris?");
    cr_assert_eq(oa_req.prompt_bytes, bytes);
    cr_assert_eq(oa_req.prompt_token_ids, 0);
    cr_assert_eq(oa_req.prompt_tokens_estimate, (bytes + 3) / 4 + 4 * 2);
    /* the model slice points into the body */
    cr_assert(oa_req.model.p > oa_chat_body && oa_req.model.p < oa_chat_body + sizeof oa_chat_body);
}

Test(openai, multimodal_parts_count_text_only)
{
    oa_expect_ok("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":["
                 "{\"type\":\"text\",\"text\":\"What is in this image?\"},"
                 "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==\",\"detail\":\"high\"}},"
                 "{\"text\":\"And this one?\",\"type\":\"text\"},"
                 "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"AAAA\",\"format\":\"wav\"}},"
                 "{\"type\":\"image_url\",\"text\":\"not text: not counted\"}"
                 "]},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
                 "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]},"
                 "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}]}");
    cr_assert_eq(oa_req.message_count, 3);
    cr_assert_eq(oa_req.prompt_bytes,
                 strlen("What is in this image?") + strlen("And this one?") + strlen("42"));
}

Test(openai, completions_prompt_string_and_array)
{
    oa_expect_ok("{\"model\":\"m\",\"prompt\":\"Once upon a time\",\"max_tokens\":16}");
    cr_assert_eq(oa_req.prompt_bytes, 16);
    cr_assert_eq(oa_req.message_count, 0);
    cr_assert(oa_req.has_max_tokens);
    cr_assert_eq(oa_req.max_tokens, 16);
    cr_assert_eq(oa_req.prompt_tokens_estimate, 4);

    oa_expect_ok("{\"prompt\":[\"abc\",\"defgh\",\"\"],\"model\":\"m\"}");
    cr_assert_eq(oa_req.prompt_bytes, 8);
    cr_assert_eq(oa_req.prompt_tokens_estimate, 2);
}

Test(openai, prompt_token_ids)
{
    oa_expect_ok("{\"model\":\"m\",\"prompt\":[1,2,3,4,5]}");
    cr_assert_eq(oa_req.prompt_token_ids, 5);
    cr_assert_eq(oa_req.prompt_bytes, 0);
    cr_assert_eq(oa_req.prompt_tokens_estimate, 5);

    oa_expect_ok("{\"model\":\"m\",\"prompt\":[[1,2],[3],[]]}");
    cr_assert_eq(oa_req.prompt_token_ids, 3);
}

Test(openai, embeddings_input)
{
    oa_expect_ok("{\"model\":\"text-embedding-3-small\",\"input\":\"The food was delicious\",\"encoding_format\":\"float\"}");
    cr_assert_eq(oa_req.prompt_bytes, strlen("The food was delicious"));
    oa_expect_ok("{\"model\":\"e5\",\"input\":[\"first\",\"second one\"],\"dimensions\":256}");
    cr_assert_eq(oa_req.prompt_bytes, 15);
    cr_assert_eq(oa_req.prompt_tokens_estimate, 4);
}

Test(openai, stream_and_include_usage)
{
    oa_expect_ok("{\"model\":\"m\",\"messages\":[],\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true,\"other\":[1]}}");
    cr_assert(oa_req.stream);
    cr_assert(oa_req.include_usage);
    cr_assert_eq(oa_req.prompt_tokens_estimate, 1, "an empty request still costs 1");

    oa_expect_ok("{\"model\":\"m\",\"stream\":false,\"stream_options\":{\"include_usage\":false}}");
    cr_assert_not(oa_req.stream);
    cr_assert_not(oa_req.include_usage);

    oa_expect_ok("{\"model\":\"m\",\"stream\":null,\"stream_options\":null}");
    cr_assert_not(oa_req.stream);

    /* include_usage elsewhere is not stream_options.include_usage */
    oa_expect_ok("{\"model\":\"m\",\"stream\":true,\"include_usage\":true,\"x\":{\"include_usage\":true}}");
    cr_assert(oa_req.stream);
    cr_assert_not(oa_req.include_usage);
}

Test(openai, max_completion_tokens)
{
    oa_expect_ok("{\"model\":\"m\",\"max_completion_tokens\":1000}");
    cr_assert(oa_req.has_max_tokens);
    cr_assert_eq(oa_req.max_tokens, 1000);

    oa_expect_ok("{\"model\":\"m\",\"max_tokens\":7,\"max_completion_tokens\":7}");
    cr_assert_eq(oa_req.max_tokens, 7);

    oa_expect_ok("{\"model\":\"m\",\"max_tokens\":null,\"max_completion_tokens\":9}");
    cr_assert_eq(oa_req.max_tokens, 9);

    oa_expect_ok("{\"model\":\"m\",\"max_tokens\":null}");
    cr_assert_not(oa_req.has_max_tokens);

    oa_expect_ok("{\"model\":\"m\",\"max_tokens\":0}");
    cr_assert(oa_req.has_max_tokens);
    cr_assert_eq(oa_req.max_tokens, 0);

    oa_expect_ok("{\"model\":\"m\",\"max_tokens\":9007199254740992}");
    cr_assert_eq(oa_req.max_tokens, UINT64_C(9007199254740992));

    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":7,\"max_completion_tokens\":8}",
                  "\"max_tokens\" and \"max_completion_tokens\" differ");
}

/* ---------------- counting ---------------- */

Test(openai, prompt_bytes_count_decoded_escapes)
{
    /* \n -> 1, \u00e9 -> 2, \u20ac -> 3, surrogate pair -> 4, \" -> 1, \/ -> 1 */
    oa_expect_ok("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\\nb\"}]}");
    cr_assert_eq(oa_req.prompt_bytes, 3);
    oa_expect_ok("{\"model\":\"m\",\"prompt\":\"\\u00e9\"}");
    cr_assert_eq(oa_req.prompt_bytes, 2);
    oa_expect_ok("{\"model\":\"m\",\"prompt\":\"\\u20AC\"}");
    cr_assert_eq(oa_req.prompt_bytes, 3);
    oa_expect_ok("{\"model\":\"m\",\"prompt\":\"\\ud83d\\ude00\"}");
    cr_assert_eq(oa_req.prompt_bytes, 4);
    oa_expect_ok("{\"model\":\"m\",\"prompt\":\"\\\"\\\\\\/\\b\\f\\r\\t\\u0000\"}");
    cr_assert_eq(oa_req.prompt_bytes, 8);
    /* raw UTF-8 counts as its bytes: é (2) € (3) 😀 (4) */
    oa_expect_ok("{\"model\":\"m\",\"input\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}");
    cr_assert_eq(oa_req.prompt_bytes, 9);
    /* a long string crossing the 16-byte fast path with escapes and UTF-8 inside */
    oa_expect_ok("{\"model\":\"m\",\"input\":\"0123456789abcdef0123456789\\n\xc3\xa9xyz0123456789abcdef\\u00e9\"}");
    cr_assert_eq(oa_req.prompt_bytes, 26 + 1 + 2 + 3 + 16 + 2);
}

Test(openai, text_part_with_escaped_type)
{
    oa_expect_ok("{\"model\":\"m\",\"messages\":[{\"content\":[{\"type\":\"t\\u0065xt\",\"text\":\"hi\"}]}]}");
    cr_assert_eq(oa_req.prompt_bytes, 2);
}

/* ---------------- model ---------------- */

Test(openai, escaped_model_and_unescape)
{
    oa_expect_ok("{\"model\":\"caf\\u00e9-\\\"v2\\\"\\/x\"}");
    cr_assert(oa_req.model_escaped);
    cr_assert_eq(oa_req.model_decoded_len, strlen("caf\xc3\xa9-\"v2\"/x"));
    char buf[64];
    size_t n = openai_unescape(oa_req.model, buf, sizeof buf);
    cr_assert_eq(n, oa_req.model_decoded_len);
    cr_assert_eq(memcmp(buf, "caf\xc3\xa9-\"v2\"/x", n), 0);
    /* does not fit: 0, and no write past cap */
    char small[5] = "zzzzz";
    cr_assert_eq(openai_unescape(oa_req.model, small, 4), 0);
    cr_assert_eq(small[4], 'z');
    /* surrogate pair to 4 bytes */
    struct slice s = { "\\ud83d\\ude00!", 13 };
    cr_assert_eq(openai_unescape(s, buf, sizeof buf), 5);
    cr_assert_eq(memcmp(buf, "\xf0\x9f\x98\x80!", 5), 0);
    /* malformed input is copied, never read past its end */
    struct slice bad = { "a\\u12", 5 };
    cr_assert_eq(openai_unescape(bad, buf, sizeof buf), 5);
    cr_assert_eq(memcmp(buf, "a\\u12", 5), 0);
}

Test(openai, escaped_key_is_the_same_key)
{
    oa_expect_ok("{\"mod\\u0065l\":\"m\",\"str\\u0065am\":true}");
    cr_assert(oa_slice_is(oa_req.model, "m"));
    cr_assert(oa_req.stream);
    oa_expect_bad("{\"model\":\"cheap\",\"mod\\u0065l\":\"expensive\"}", "duplicate key \"model\"");
    oa_expect_bad("{\"model\":\"m\",\"x\\u0079z\":1,\"xyz\":2}", "duplicate key \"xyz\"");
}

Test(openai, model_errors)
{
    oa_expect_bad("{\"messages\":[]}", "missing \"model\"");
    oa_expect_bad("{}", "missing \"model\"");
    oa_expect_bad("{\"model\":\"\"}", "\"model\" must be a non-empty string");
    oa_expect_bad("{\"model\":null}", "\"model\" must be a non-empty string");
    oa_expect_bad("{\"model\":42}", "\"model\" must be a non-empty string");
    oa_expect_bad("{\"model\":[\"a\"]}", "\"model\" must be a non-empty string");
    char body[OPENAI_MAX_MODEL_LEN + 64];
    int n = snprintf(body, sizeof body, "{\"model\":\"");
    memset(body + n, 'x', OPENAI_MAX_MODEL_LEN);
    snprintf(body + n + OPENAI_MAX_MODEL_LEN, sizeof body - (size_t)n - OPENAI_MAX_MODEL_LEN, "\"}");
    oa_expect_ok(body);
    cr_assert_eq(oa_req.model_decoded_len, OPENAI_MAX_MODEL_LEN);
    /* 255 x and an é: 257 bytes once decoded */
    snprintf(body + n + OPENAI_MAX_MODEL_LEN - 1, sizeof body - (size_t)n - OPENAI_MAX_MODEL_LEN + 1,
             "\\u00e9\"}");
    oa_expect_bad(body, "\"model\" is too long (limit 256 bytes)");
    oa_expect_bad("{\"model\":\"a\\u0000b\"}", "\"model\" contains a control character");
    oa_expect_bad("{\"model\":\"a\\nb\"}", "\"model\" contains a control character");
    oa_expect_bad("{\"model\":\"a\x7f\"}", "\"model\" contains a control character");
    oa_expect_bad("{\"model\":\"a\\u007F\"}", "\"model\" contains a control character");
}

/* ---------------- rejected: syntax ---------------- */

Test(openai, invalid_json_syntax)
{
    oa_expect_bad("", "body is empty");
    oa_expect_bad("  \r\n", "body is empty");
    oa_expect_bad("[]", "body is not a JSON object");
    oa_expect_bad("\"model\"", "body is not a JSON object");
    oa_expect_bad("null", "body is not a JSON object");
    oa_expect_bad("\xef\xbb\xbf{\"model\":\"m\"}", "body is not a JSON object");
    oa_expect_bad("{\"model\" \"m\"}", "invalid JSON at byte 9: expected ':'");
    oa_expect_bad("{\"model\":\"m\",}", "invalid JSON at byte 13: expected a string key");
    oa_expect_bad("{model:\"m\"}", "invalid JSON at byte 1: expected a string key");
    oa_expect_bad("{'model':'m'}", "invalid JSON at byte 1: expected a string key");
    oa_expect_bad("{\"model\":\"m\" \"x\":1}", "invalid JSON at byte 13: expected ',' or '}'");
    oa_expect_bad("{\"model\":\"m\",\"a\":[1 2]}", "invalid JSON at byte 20: expected ',' or ']'");
    oa_expect_bad("{\"model\":\"m\",\"a\":[1,]}", "invalid JSON at byte 20: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\"", "invalid JSON at byte 12: unexpected end of input");
    oa_expect_bad("{\"model\":\"m", "invalid JSON at byte 9: unterminated string");
    oa_expect_bad("{\"model\":\"m\"}}", "trailing data after the JSON value at byte 13");
    oa_expect_bad("{\"model\":\"m\"} {}", "trailing data after the JSON value at byte 14");
    oa_expect_bad_n("{\"model\":\"m\"}\0", 14, "trailing data after the JSON value at byte 13");
}

Test(openai, whitespace_is_exactly_four_bytes)
{
    oa_expect_ok(" \t\r\n{ \t\r\n\"model\" \t\r\n: \t\r\n\"m\" \t\r\n, \"a\" : [ 1 , 2 ] } \t\r\n");
    oa_expect_bad("{\"model\":\f\"m\"}", "invalid JSON at byte 9: expected a value");
    oa_expect_bad("{\"model\":\v\"m\"}", "invalid JSON at byte 9: expected a value");
    oa_expect_bad("{\"model\":\xc2\xa0\"m\"}", "invalid JSON at byte 9: expected a value");
    oa_expect_bad_n("{\"model\":\0\"m\"}", 14, "invalid JSON at byte 9: expected a value");
}

Test(openai, literals_exactly)
{
    oa_expect_ok("{\"model\":\"m\",\"a\":[true,false,null]}");
    oa_expect_bad("{\"model\":\"m\",\"a\":tru}", "invalid JSON at byte 17: invalid literal");
    oa_expect_bad("{\"model\":\"m\",\"a\":True}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":nul", "invalid JSON at byte 17: invalid literal");
    oa_expect_bad("{\"model\":\"m\",\"a\":falsey}", "invalid JSON at byte 22: expected ',' or '}'");
    oa_expect_bad("{\"model\":\"m\",\"a\":NaN}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":Infinity}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":undefined}", "invalid JSON at byte 17: expected a value");
}

Test(openai, numbers_by_the_grammar)
{
    oa_expect_ok("{\"model\":\"m\",\"a\":[0,-0,1,-1,0.5,-0.5,1e5,1E+5,1e-5,1.25e10,123456789012345678901234567890]}");
    oa_expect_bad("{\"model\":\"m\",\"a\":01}", "invalid JSON at byte 18: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":+1}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":.5}", "invalid JSON at byte 17: expected a value");
    oa_expect_bad("{\"model\":\"m\",\"a\":1.}", "invalid JSON at byte 19: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":1.e5}", "invalid JSON at byte 19: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":1e}", "invalid JSON at byte 19: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":1e+}", "invalid JSON at byte 20: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":-}", "invalid JSON at byte 18: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":--1}", "invalid JSON at byte 18: invalid number");
    oa_expect_bad("{\"model\":\"m\",\"a\":0x10}", "invalid JSON at byte 18: expected ',' or '}'");
    oa_expect_bad("{\"model\":\"m\",\"a\":1_000}", "invalid JSON at byte 18: expected ',' or '}'");
}

Test(openai, huge_numbers_in_skipped_fields)
{
    static char body[40100];
    int n = snprintf(body, sizeof body, "{\"model\":\"m\",\"seed\":");
    memset(body + n, '9', 20000);
    n += 20000;
    n += snprintf(body + n, sizeof body - (size_t)n, ".5e");
    memset(body + n, '9', 20000);
    n += 20000;
    snprintf(body + n, sizeof body - (size_t)n, "}");
    oa_expect_ok(body);
}

Test(openai, strings_escapes)
{
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\x41\"}", "invalid JSON at byte 18: invalid escape in string");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\'\"}", "invalid JSON at byte 18: invalid escape in string");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\u12g4\"}", "invalid JSON at byte 18: invalid \\u escape");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\u12\"}", "invalid JSON at byte 18: invalid \\u escape");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\U0041\"}", "invalid JSON at byte 18: invalid escape in string");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\ud83d\"}", "invalid JSON at byte 18: unpaired UTF-16 surrogate");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\ud83dx\\ude00\"}", "invalid JSON at byte 18: unpaired UTF-16 surrogate");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\ude00\\ud83d\"}", "invalid JSON at byte 18: unpaired UTF-16 surrogate");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\ud83d\\u0041\"}", "invalid JSON at byte 18: unpaired UTF-16 surrogate");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\ud83d\\ud83d\"}", "invalid JSON at byte 18: unpaired UTF-16 surrogate");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"a\tb\"}", "invalid JSON at byte 19: control character in string");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"a\nb\"}", "invalid JSON at byte 19: control character in string");
    oa_expect_bad_n("{\"model\":\"m\",\"a\":\"a\0b\"}", 22, "invalid JSON at byte 19: control character in string");
    /* control character found by the 16-byte scan */
    oa_expect_bad("{\"model\":\"m\",\"a\":\"0123456789abcdef0123\x1f\"}",
                  "invalid JSON at byte 38: control character in string");
    oa_expect_bad("{\"model\":\"m\",\"a\":\"\\", "invalid JSON at byte 17: unterminated string");
    /* DEL and all other printable bytes are fine raw */
    oa_expect_ok("{\"model\":\"m\",\"a\":\"\x7f ~!#$%&'()*+,-./:;<=>?@[]^_`{|}\"}");
}

Test(openai, strings_utf8)
{
    /* valid boundaries: U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF */
    oa_expect_ok("{\"model\":\"m\",\"a\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf"
                 "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"}");
    const char *bad[] = {
        "\x80",             /* lone continuation */
        "\xbf",
        "\xc0\x80",         /* overlong NUL */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\x80",     /* overlong 3-byte */
        "\xe0\x9f\xbf",
        "\xf0\x80\x80\x80", /* overlong 4-byte */
        "\xf0\x8f\xbf\xbf",
        "\xed\xa0\x80",     /* UTF-16 surrogate D800 in UTF-8 */
        "\xed\xbf\xbf",
        "\xf4\x90\x80\x80", /* > U+10FFFF */
        "\xf5\x80\x80\x80",
        "\xff",
        "\xc3",             /* truncated */
        "\xe2\x82",
        "\xf0\x9f\x98",
        "\xc3\x28",         /* bad continuation */
        "\xe2\x28\xa1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"a\":\"x%s\"}", bad[i]);
        oa_expect_bad(body, "invalid JSON at byte 19: invalid UTF-8 in string");
        /* the same inside a key, and past the 16-byte fast path */
        snprintf(body, sizeof body, "{\"model\":\"m\",\"0123456789abcdef%s\":1}", bad[i]);
        oa_expect_bad(body, "invalid JSON at byte 30: invalid UTF-8 in string");
    }
}

/* ---------------- rejected: duplicates ---------------- */

Test(openai, duplicate_keys)
{
    oa_expect_bad("{\"model\":\"a\",\"model\":\"b\"}", "duplicate key \"model\"");
    oa_expect_bad("{\"model\":\"a\",\"stream\":true,\"stream\":false}", "duplicate key \"stream\"");
    oa_expect_bad("{\"model\":\"a\",\"max_tokens\":1,\"max_tokens\":1}", "duplicate key \"max_tokens\"");
    oa_expect_bad("{\"model\":\"a\",\"messages\":[],\"messages\":[]}", "duplicate key \"messages\"");
    oa_expect_bad("{\"model\":\"a\",\"prompt\":\"x\",\"prompt\":\"y\"}", "duplicate key \"prompt\"");
    oa_expect_bad("{\"temperature\":1,\"model\":\"a\",\"temperature\":2}", "duplicate key \"temperature\"");
    oa_expect_bad("{\"model\":\"a\",\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}",
                  "duplicate key \"include_usage\" in stream_options");
    oa_expect_bad("{\"model\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"content\":\"y\"}]}",
                  "duplicate key \"content\" in a message");
    oa_expect_bad("{\"model\":\"a\",\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":\"a\",\"text\":\"b\"}]}]}",
                  "duplicate key \"text\" in a content part");
    oa_expect_bad("{\"model\":\"a\",\"messages\":[{\"content\":[{\"type\":\"text\",\"type\":\"image_url\"}]}]}",
                  "duplicate key \"type\" in a content part");
    /* the same key in different messages or parts is fine; duplicates inside parts
     * aigw does not read are allowed */
    oa_expect_ok("{\"model\":\"a\",\"messages\":[{\"content\":\"x\"},{\"content\":\"y\"}],"
                 "\"metadata\":{\"k\":1,\"k\":2},\"other\":[{\"a\":1,\"a\":1}]}");
    cr_assert_eq(oa_req.prompt_bytes, 2);
    /* the reported name of an unknown key is printable and bounded */
    oa_expect_bad("{\"model\":\"a\",\"\xc3\xa9\\\"k\":1,\"\xc3\xa9\\\"k\":1}", "duplicate key \"????k\"");
}

Test(openai, many_top_level_keys)
{
    static char body[OPENAI_MAX_TOP_KEYS * 16 + 64];
    int n = snprintf(body, sizeof body, "{\"model\":\"m\"");
    for (int i = 0; i < OPENAI_MAX_TOP_KEYS; i++)
        n += snprintf(body + n, sizeof body - (size_t)n, ",\"k%d\":%d", i, i);
    snprintf(body + n, sizeof body - (size_t)n, "}");
    oa_expect_ok(body);
    snprintf(body + n, sizeof body - (size_t)n, ",\"k%d\":0}", OPENAI_MAX_TOP_KEYS);
    oa_expect_bad(body, "too many top-level keys (limit 128)");
    /* a duplicate late in a long list is still found */
    snprintf(body + n, sizeof body - (size_t)n, "}");
    memcpy(strstr(body, "\"k127\""), "\"k000\"", 6);
    oa_expect_ok(body);
    memcpy(strstr(body, "\"k000\""), "\"k1\":0,\"k7\"", 6);
    oa_expect_bad(body, "duplicate key \"k1\"");
}

/* ---------------- rejected: wrong types ---------------- */

Test(openai, wrong_types)
{
    oa_expect_bad("{\"model\":\"m\",\"stream\":\"yes\"}", "\"stream\" must be a boolean");
    oa_expect_bad("{\"model\":\"m\",\"stream\":1}", "\"stream\" must be a boolean");
    oa_expect_bad("{\"model\":\"m\",\"stream_options\":true}", "\"stream_options\" must be an object");
    oa_expect_bad("{\"model\":\"m\",\"stream_options\":{\"include_usage\":\"true\"}}",
                  "\"stream_options.include_usage\" must be a boolean");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":\"10\"}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":-1}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":-0}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":10.0}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":1e3}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":true}", "\"max_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":9007199254740993}", "\"max_tokens\" is too large");
    oa_expect_bad("{\"model\":\"m\",\"max_tokens\":99999999999999999999999999999999}",
                  "\"max_tokens\" is too large");
    oa_expect_bad("{\"model\":\"m\",\"max_completion_tokens\":1.5}",
                  "\"max_completion_tokens\" must be a non-negative integer");
    oa_expect_bad("{\"model\":\"m\",\"max_completion_tokens\":18446744073709551617}",
                  "\"max_completion_tokens\" is too large");
    oa_expect_bad("{\"model\":\"m\",\"messages\":{}}", "\"messages\" must be an array of objects");
    oa_expect_bad("{\"model\":\"m\",\"messages\":null}", "\"messages\" must be an array of objects");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[\"hi\"]}", "\"messages\" must be an array of objects");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":\"a\"},[]]}",
                  "\"messages\" must be an array of objects");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":1}]}",
                  "\"content\" of a message must be a string, an array of content parts, or null");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":{\"text\":\"a\"}}]}",
                  "\"content\" of a message must be a string, an array of content parts, or null");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":[\"a\"]}]}", "\"content\" parts must be objects");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":[{\"type\":1}]}]}",
                  "\"type\" of a content part must be a string");
    oa_expect_bad("{\"model\":\"m\",\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":null}]}]}",
                  "\"text\" of a content part must be a string");
    oa_expect_bad("{\"model\":\"m\",\"prompt\":{}}", "\"prompt\" must be a string, an array of strings, or token ids");
    oa_expect_bad("{\"model\":\"m\",\"prompt\":[null]}", "\"prompt\" must be a string, an array of strings, or token ids");
    oa_expect_bad("{\"model\":\"m\",\"input\":true}", "\"input\" must be a string, an array of strings, or token ids");
    oa_expect_bad("{\"model\":\"m\",\"input\":[[\"a\"]]}", "\"input\" must be a string, an array of strings, or token ids");
    oa_expect_bad("{\"model\":\"m\",\"input\":[[[1]]]}", "\"input\" must be a string, an array of strings, or token ids");
    /* null where OpenAI allows it */
    oa_expect_ok("{\"model\":\"m\",\"prompt\":null,\"messages\":[{\"role\":\"assistant\",\"content\":null}]}");
    /* names nested elsewhere are not the fields aigw reads */
    oa_expect_ok("{\"model\":\"m\",\"metadata\":{\"model\":1,\"stream\":\"x\",\"max_tokens\":-5,\"messages\":3}}");
    oa_expect_ok("{\"model\":\"m\",\"messages\":[{\"stream\":1,\"model\":2,\"text\":3,\"type\":4}]}");
}

/* ---------------- nesting ---------------- */

static void oa_nested(char *body, size_t cap, int depth)
{
    /* the top-level object is level 1; levels 2..depth are arrays under "a" */
    int n = snprintf(body, cap, "{\"model\":\"m\",\"a\":");
    for (int i = 1; i < depth; i++)
        body[n++] = '[';
    for (int i = 1; i < depth; i++)
        body[n++] = ']';
    body[n++] = '}';
    body[n] = 0;
}

Test(openai, nesting_limit)
{
    char body[256];
    oa_nested(body, sizeof body, OPENAI_MAX_DEPTH);
    oa_expect_ok(body);
    oa_nested(body, sizeof body, OPENAI_MAX_DEPTH + 1);
    oa_expect_bad(body, "JSON nesting too deep at byte 48 (limit 32)");
    /* objects count the same */
    char obj[512];
    int n = snprintf(obj, sizeof obj, "{\"model\":\"m\"");
    for (int i = 1; i < OPENAI_MAX_DEPTH; i++)
        n += snprintf(obj + n, sizeof obj - (size_t)n, ",\"a\":{\"b\":1");
    for (int i = 1; i < OPENAI_MAX_DEPTH; i++)
        obj[n++] = '}';
    obj[n++] = '}';
    obj[n] = 0;
    oa_expect_ok(obj);
    /* a deep attack body fails fast and cleanly */
    static char deep[100000];
    memset(deep, '[', sizeof deep - 1);
    deep[0] = '{';
    memcpy(deep + 1, "\"a\":", 4);
    deep[sizeof deep - 1] = 0;
    oa_expect_bad(deep, "JSON nesting too deep at byte 36 (limit 32)");
}

/* ---------------- truncation, size ---------------- */

Test(openai, every_truncated_prefix_is_bad)
{
    static const char *bodies[] = {
        oa_chat_body,
        "{\"model\":\"m\",\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":\"h\\u00e9\\ud83d\\ude00\"}]}],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":100,\"n\":-1.5e+3}",
        "{\"model\":\"e\",\"input\":[[1,2],\"ab\xc3\xa9\"]}",
    };
    for (size_t b = 0; b < sizeof bodies / sizeof *bodies; b++) {
        size_t len = strlen(bodies[b]);
        cr_assert_eq(oa_parse_n(bodies[b], len), OPENAI_OK, "%s", oa_why);
        /* heap copies of exactly len bytes so ASan sees any over-read */
        for (size_t i = 0; i < len; i++) {
            char *copy = malloc(i + 1);
            memcpy(copy, bodies[b], i);
            int rc = oa_parse_n(copy, i);
            /* the chat body ends in "}\n": only the prefix without the newline is whole */
            if (b == 0 && i == len - 1)
                cr_assert_eq(rc, OPENAI_OK);
            else
                cr_assert_eq(rc, OPENAI_BAD, "body %zu prefix %zu parsed", b, i);
            free(copy);
        }
    }
}

Test(openai, one_mib_body)
{
    const size_t target = 1u << 20;
    char *body = malloc(target + 256);
    size_t n = (size_t)sprintf(body, "{\"model\":\"m\",\"messages\":[");
    uint64_t want = 0;
    uint32_t count = 0;
    static const char msg[] = "{\"role\":\"user\",\"content\":\"The quick brown fox jumps over the lazy dog. \\u00e9\\n\"}";
    while (n + sizeof msg + 8 < target) {
        if (count)
            body[n++] = ',';
        memcpy(body + n, msg, sizeof msg - 1);
        n += sizeof msg - 1;
        want += strlen("The quick brown fox jumps over the lazy dog. ") + 2 + 1;
        count++;
    }
    n += (size_t)sprintf(body + n, "]}");
    cr_assert_eq(oa_parse_n(body, n), OPENAI_OK, "%s", oa_why);
    cr_assert_eq(oa_req.message_count, count);
    cr_assert_eq(oa_req.prompt_bytes, want);
    cr_assert_eq(oa_req.prompt_tokens_estimate, (want + 3) / 4 + 4 * (uint64_t)count);
    free(body);
}

/* ---------------- content type ---------------- */

Test(openai, content_type_json)
{
    cr_assert(openai_content_type_is_json((struct slice){ "application/json", 16 }));
    cr_assert(openai_content_type_is_json((struct slice){ "Application/JSON; charset=utf-8", 31 }));
    cr_assert(openai_content_type_is_json((struct slice){ "application/json ;charset=UTF-8", 31 }));
    cr_assert_not(openai_content_type_is_json((struct slice){ "application/jsonx", 17 }));
    cr_assert_not(openai_content_type_is_json((struct slice){ "application/json-seq", 20 }));
    cr_assert_not(openai_content_type_is_json((struct slice){ "text/plain", 10 }));
    cr_assert_not(openai_content_type_is_json((struct slice){ "application/x-www-form-urlencoded", 33 }));
    cr_assert_not(openai_content_type_is_json((struct slice){ "", 0 }));
}

/* ---------------- cost (printed, not asserted) ---------------- */

static double oa_ns_per_parse(const char *body, size_t n)
{
    const int iterations = 100000;
    struct timespec t0, t1;
    uint64_t sink = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < iterations; i++) {
        struct openai_request r;
        if (openai_parse_request(body, n, &r, NULL) == OPENAI_OK)
            sink += r.prompt_bytes;
        __asm__ volatile("" : : "r"(sink) : "memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_assert_gt(sink, 0);
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / iterations;
}

Test(openai, perf_2k_chat_body)
{
    /* one long user message: mostly string scanning */
    char body[4096];
    int n = snprintf(body, sizeof body,
                     "{\"model\":\"llama-3.1-8b-instruct\",\"stream\":false,\"max_tokens\":256,"
                     "\"temperature\":0.7,\"messages\":[{\"role\":\"system\",\"content\":"
                     "\"You are a helpful assistant. Answer concisely.\"},{\"role\":\"user\",\"content\":\"");
    while (n < 2048 - 40)
        n += snprintf(body + n, sizeof body - (size_t)n, "Tell me about the history of Paris. ");
    n += snprintf(body + n, sizeof body - (size_t)n, "\\n\"}]}");
    cr_assert_eq(oa_parse_n(body, (size_t)n), OPENAI_OK, "%s", oa_why);
    double ns = oa_ns_per_parse(body, (size_t)n);
    fprintf(stderr, "openai: %d-byte chat body, one long message: %.0f ns/parse (%.2f GB/s)\n",
            n, ns, n / ns);

    /* a pretty-printed conversation of short turns: mostly structure */
    char convo[4096];
    int m = snprintf(convo, sizeof convo,
                     "{\n  \"model\": \"llama-3.1-8b-instruct\",\n  \"stream\": true,\n"
                     "  \"stream_options\": {\"include_usage\": true},\n  \"max_tokens\": 256,\n"
                     "  \"temperature\": 0.7,\n  \"messages\": [\n");
    for (int i = 0; m < 2048 - 100; i++)
        m += snprintf(convo + m, sizeof convo - (size_t)m,
                      "%s    {\"role\": \"%s\", \"content\": \"Turn %d: caf\\u00e9, ok?\"}",
                      i ? ",\n" : "", i & 1 ? "assistant" : "user", i);
    m += snprintf(convo + m, sizeof convo - (size_t)m, "\n  ]\n}\n");
    cr_assert_eq(oa_parse_n(convo, (size_t)m), OPENAI_OK, "%s", oa_why);
    ns = oa_ns_per_parse(convo, (size_t)m);
    fprintf(stderr, "openai: %d-byte chat body, %u short messages: %.0f ns/parse (%.2f GB/s)\n",
            m, oa_req.message_count, ns, m / ns);
}

/* a chat body: a system prompt of sys_len 'S' bytes, then the user's text */
static void oa_chat(char *out, size_t cap, size_t sys_len, const char *user)
{
    static char sys[8192];
    memset(sys, 'S', sys_len);
    sys[sys_len] = 0;
    snprintf(out, cap, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":\"%s\"}]}", sys, user);
}

/* prefix_block: prompts that share their first k blocks share k hashes and part
 * at the first block where they differ; short or absent prompts have none. */
Test(openai, prefix_blocks_are_chained)
{
    static char a[16384], b[16384];
    uint64_t ha[OPENAI_PREFIX_BLOCKS_MAX];
    /* a 2000-byte system prompt (7 full blocks and part of an 8th), then the user */
    oa_chat(a, sizeof a, 2000, "first question, long enough to fill the rest of the eighth block......");
    oa_chat(b, sizeof b, 2000, "another one");
    cr_assert_eq(oa_parse(a), OPENAI_OK);
    uint32_t na = oa_req.prefix_blocks;
    cr_assert_geq(na, 8, "blocks: %u", na);
    memcpy(ha, oa_req.prefix_block, sizeof ha);
    cr_assert_eq(oa_parse(b), OPENAI_OK);
    cr_assert_geq(oa_req.prefix_blocks, 7);
    for (unsigned k = 0; k < 7; k++) {
        cr_expect_eq(oa_req.prefix_block[k], ha[k], "block %u is shared", k);
        cr_expect_neq(oa_req.prefix_block[k], 0);
    }
    if (oa_req.prefix_blocks > 7)
        cr_expect_neq(oa_req.prefix_block[7], ha[7], "the first block that differs");
    /* a different first byte: no block in common, though the rest is the same */
    a[strlen("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"")] = 'T';
    cr_assert_eq(oa_parse(a), OPENAI_OK);
    for (unsigned k = 0; k < oa_req.prefix_blocks && k < na; k++)
        cr_expect_neq(oa_req.prefix_block[k], ha[k], "block %u is chained to the first", k);

    /* at most OPENAI_PREFIX_BLOCKS_MAX blocks, whatever the prompt's length */
    static char big[40000], ss[12000];
    memset(ss, 'S', 10000);
    ss[10000] = 0;
    int m = snprintf(big, sizeof big, "{\"model\":\"m\",\"prompt\":[\"%s\",\"%s\"]}", ss, ss);
    cr_assert_lt((size_t)m, sizeof big);
    cr_assert_eq(oa_parse(big), OPENAI_OK);
    cr_expect_eq(oa_req.prefix_blocks, OPENAI_PREFIX_BLOCKS_MAX);

    /* string boundaries count: "ab","c" is not "a","bc" */
    char as[128], cs[400], body[1024];
    memset(as, 'a', 100);
    as[100] = 0;
    memset(cs, 'c', 300);
    cs[300] = 0;
    snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":[\"%sb\",\"%s\"]}", as, cs);
    cr_assert_eq(oa_parse(body), OPENAI_OK);
    cr_assert_eq(oa_req.prefix_blocks, 1);
    uint64_t h2 = oa_req.prefix_block[0];
    snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":[\"%s\",\"b%s\"]}", as, cs);
    cr_assert_eq(oa_parse(body), OPENAI_OK);
    cr_assert_eq(oa_req.prefix_blocks, 1);
    cr_expect_neq(oa_req.prefix_block[0], h2);
    /* a text part counts like content; an image part does not */
    oa_chat(a, sizeof a, 600, "hi");
    cr_assert_eq(oa_parse(a), OPENAI_OK);
    cr_assert_eq(oa_req.prefix_blocks, 2);
    uint64_t h3 = oa_req.prefix_block[1];
    snprintf(b, sizeof b, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":["
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}},{\"type\":\"text\",\"text\":\"%.600s\"}]},"
             "{\"role\":\"user\",\"content\":\"hi\"}]}", strstr(a, "SSSS"));
    cr_assert_eq(oa_parse(b), OPENAI_OK);
    cr_assert_eq(oa_req.prefix_blocks, 2);
    cr_expect_eq(oa_req.prefix_block[1], h3);
    /* short prompts: not one full block */
    cr_assert_eq(oa_parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"), OPENAI_OK);
    cr_expect_eq(oa_req.prefix_blocks, 0);
    /* no prompt text at all */
    cr_assert_eq(oa_parse("{\"model\":\"m\",\"messages\":[]}"), OPENAI_OK);
    cr_expect_eq(oa_req.prefix_blocks, 0);
}

/* ---------------- openai_read_request: options for aigw-mockllm ---------------- */

#define OA_MAX_PIECES 16

struct oa_pieces {
    unsigned n;
    struct openai_prompt_piece piece[OA_MAX_PIECES];
    char raw[OA_MAX_PIECES][32];
};

static void oa_collect(void *ctx, const struct openai_prompt_piece *piece)
{
    struct oa_pieces *ps = ctx;
    cr_assert_lt(ps->n, OA_MAX_PIECES);
    ps->piece[ps->n] = *piece;
    snprintf(ps->raw[ps->n], sizeof ps->raw[0], "%.*s", (int)piece->raw.len,
             piece->raw.len ? piece->raw.p : "");
    ps->n++;
}

static void oa_read_pieces(const char *body, struct oa_pieces *ps)
{
    memset(ps, 0, sizeof *ps);
    struct openai_read_options opt = { .on_prompt = oa_collect, .ctx = ps };
    oa_why = NULL;
    cr_assert_eq(openai_read_request(body, strlen(body), &opt, &oa_req, &oa_why), OPENAI_OK,
                 "%s: %s", body, oa_why ? oa_why : "");
    /* the pieces are what the request's counts are made of */
    uint64_t bytes = 0, ids = 0;
    for (unsigned i = 0; i < ps->n; i++) {
        bytes += ps->piece[i].decoded;
        ids += ps->piece[i].token_id;
    }
    cr_assert_eq(bytes, oa_req.prompt_bytes, "%s", body);
    cr_assert_eq(ids, oa_req.prompt_token_ids, "%s", body);
    /* and reading with a hook decides exactly what reading without one does */
    struct openai_request plain;
    cr_assert_eq(openai_parse_request(body, strlen(body), &plain, NULL), OPENAI_OK);
    cr_assert_eq(plain.prompt_tokens_estimate, oa_req.prompt_tokens_estimate);
    cr_assert_eq(plain.prefix_blocks, oa_req.prefix_blocks);
    cr_assert(memcmp(plain.prefix_block, oa_req.prefix_block,
                     plain.prefix_blocks * sizeof plain.prefix_block[0]) == 0);
}

#define oa_expect_piece(ps, i, src, itm, tok, text)                                    \
    do {                                                                               \
        cr_assert_eq((ps)->piece[i].source, src, "piece %d source", i);               \
        cr_assert_eq((ps)->piece[i].item, itm, "piece %d item", i);                   \
        cr_assert_eq((ps)->piece[i].token_id, tok, "piece %d token_id", i);           \
        cr_assert_str_eq((ps)->raw[i], text, "piece %d", i);                          \
    } while (0)

Test(openai, prompt_pieces_of_messages)
{
    struct oa_pieces ps;
    oa_read_pieces("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be br\\u0069ef.\"},"
                   "{\"role\":\"user\",\"content\":[{\"text\":\"look\",\"type\":\"text\"},"
                   "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"},\"text\":\"not counted\"}]},"
                   "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}],"
                   "\"prompt\":\"p\"}", &ps);
    cr_assert_eq(ps.n, 3);
    /* raw bytes as sent, decoded length beside them */
    oa_expect_piece(&ps, 0, OPENAI_FROM_MESSAGES, 0, false, "Be br\\u0069ef.");
    cr_assert_eq(ps.piece[0].decoded, 9);
    /* a text part counts once its object closed, "type" after "text" or not */
    oa_expect_piece(&ps, 1, OPENAI_FROM_MESSAGES, 1, false, "look");
    oa_expect_piece(&ps, 2, OPENAI_FROM_PROMPT, 0, false, "p");
}

Test(openai, prompt_pieces_of_batches)
{
    struct oa_pieces ps;
    oa_read_pieces("{\"model\":\"m\",\"prompt\":[\"a\",\"b\\n\"]}", &ps);
    cr_assert_eq(ps.n, 2);
    oa_expect_piece(&ps, 0, OPENAI_FROM_PROMPT, 0, false, "a");
    oa_expect_piece(&ps, 1, OPENAI_FROM_PROMPT, 1, false, "b\\n");
    cr_assert_eq(ps.piece[1].decoded, 2);

    /* a flat array of token ids is one prompt; each inner array is one */
    oa_read_pieces("{\"model\":\"m\",\"prompt\":[11, 22,33]}", &ps);
    cr_assert_eq(ps.n, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ps.piece[i].item, 0);
    oa_expect_piece(&ps, 2, OPENAI_FROM_PROMPT, 0, true, "33");
    cr_assert_eq(ps.piece[2].decoded, 0);

    oa_read_pieces("{\"model\":\"m\",\"input\":[[1,2],[3],\"x\",[]]}", &ps);
    cr_assert_eq(ps.n, 4);
    oa_expect_piece(&ps, 0, OPENAI_FROM_INPUT, 0, true, "1");
    oa_expect_piece(&ps, 1, OPENAI_FROM_INPUT, 0, true, "2");
    oa_expect_piece(&ps, 2, OPENAI_FROM_INPUT, 1, true, "3");
    oa_expect_piece(&ps, 3, OPENAI_FROM_INPUT, 2, false, "x");

    /* a string, then a run of ids, then a string: three prompts */
    oa_read_pieces("{\"model\":\"m\",\"input\":[\"a\",1,2,\"b\"]}", &ps);
    cr_assert_eq(ps.n, 4);
    oa_expect_piece(&ps, 1, OPENAI_FROM_INPUT, 1, true, "1");
    oa_expect_piece(&ps, 2, OPENAI_FROM_INPUT, 1, true, "2");
    oa_expect_piece(&ps, 3, OPENAI_FROM_INPUT, 2, false, "b");

    /* both fields in one body: each numbers its own batch */
    oa_read_pieces("{\"model\":\"m\",\"prompt\":[\"a\",\"b\"],\"input\":\"c\"}", &ps);
    cr_assert_eq(ps.n, 3);
    oa_expect_piece(&ps, 2, OPENAI_FROM_INPUT, 0, false, "c");
}

Test(openai, model_optional)
{
    struct openai_read_options opt = { .model_optional = true };
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3}";
    cr_assert_eq(openai_read_request(body, strlen(body), &opt, &oa_req, &oa_why), OPENAI_OK, "%s", oa_why);
    cr_assert_null(oa_req.model.p);
    cr_assert_eq(oa_req.model.len, 0);
    cr_assert_eq(oa_req.max_tokens, 3);
    cr_assert_eq(oa_req.prompt_bytes, 2);
    /* without the option, and with a NULL options pointer, it is still required */
    oa_expect_bad(body, "missing \"model\"");
    cr_assert_eq(openai_read_request(body, strlen(body), NULL, &oa_req, &oa_why), OPENAI_BAD);
    /* a model that is there is checked as always */
    body = "{\"model\":\"\"}";
    cr_assert_eq(openai_read_request(body, strlen(body), &opt, &oa_req, &oa_why), OPENAI_BAD);
    cr_assert_str_eq(oa_why, "\"model\" must be a non-empty string");
    body = "{\"model\":null}";
    cr_assert_eq(openai_read_request(body, strlen(body), &opt, &oa_req, &oa_why), OPENAI_BAD);
    body = "{\"model\":\"a\\u0001\"}";
    cr_assert_eq(openai_read_request(body, strlen(body), &opt, &oa_req, &oa_why), OPENAI_BAD);
    cr_assert_str_eq(oa_why, "\"model\" contains a control character");
}

/* Where the document itself is wrong, the offset is that of its first byte. */
Test(openai, top_level_error_offsets)
{
    static const struct { const char *body; const char *why; size_t offset; } cases[] = {
        { "", "body is empty", 0 },
        { " \n ", "body is empty", 0 },
        { "  [1]", "body is not a JSON object", 2 },
        { "\t3", "body is not a JSON object", 1 },
        { " tru", "body is not a JSON object", 1 },
        { "  x{}", "body is not a JSON object", 2 },
        { " {", "invalid JSON at byte 2: unexpected end of input", 2 },
        { "{\"model\":\"m\"} x", "trailing data after the JSON value at byte 14", 14 },
        { "{\"model\":\"m\",\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
          "JSON nesting too deep at byte 48 (limit 32)", 48 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oa_expect_bad(cases[i].body, cases[i].why);
        cr_assert_eq(oa_req.error_offset, cases[i].offset, "%s", cases[i].body);
    }
}
