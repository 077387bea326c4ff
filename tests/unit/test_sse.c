#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sse.h"

struct sset_result {
    bool done, has_usage, unreadable;
    uint64_t prompt, completion, content_events, events;
};

static struct sset_result sset_collect(const struct sse_scan *s)
{
    return (struct sset_result){ s->done, s->has_usage, s->usage_unreadable, s->prompt_tokens, s->completion_tokens,
                                 s->content_events, s->events };
}

static struct sset_result sset_whole(const char *p, size_t n)
{
    struct sse_scan s;
    sse_init(&s);
    sse_feed(&s, p, n);
    sse_finish(&s);
    return sset_collect(&s);
}

static void sset_expect_same(struct sset_result a, struct sset_result b, const char *how, size_t at)
{
    cr_assert(a.done == b.done && a.has_usage == b.has_usage && a.unreadable == b.unreadable &&
              a.prompt == b.prompt &&
              a.completion == b.completion && a.content_events == b.content_events &&
              a.events == b.events,
              "%s %zu: done %d/%d usage %d/%d prompt %lu/%lu completion %lu/%lu content %lu/%lu events %lu/%lu",
              how, at, a.done, b.done, a.has_usage, b.has_usage, (unsigned long)a.prompt,
              (unsigned long)b.prompt, (unsigned long)a.completion, (unsigned long)b.completion,
              (unsigned long)a.content_events, (unsigned long)b.content_events,
              (unsigned long)a.events, (unsigned long)b.events);
}

/* Scans p whole, byte by byte and split at every point; all must agree. */
static struct sset_result sset_scan_all_ways(const char *p)
{
    size_t n = strlen(p);
    struct sset_result whole = sset_whole(p, n);

    struct sse_scan s;
    sse_init(&s);
    for (size_t i = 0; i < n; i++)
        sse_feed(&s, p + i, 1);
    sse_finish(&s);
    sset_expect_same(whole, sset_collect(&s), "byte by byte", 0);

    for (size_t cut = 0; cut <= n; cut++) {
        sse_init(&s);
        sse_feed(&s, p, cut);
        sse_feed(&s, p + cut, n - cut);
        sse_finish(&s);
        sset_expect_same(whole, sset_collect(&s), "split at", cut);
    }
    return whole;
}

static const char sset_openai_stream[] =
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,"
    "\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\" \\\"world\\\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,"
    "\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_1\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15,"
    "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0}}}\n\n"
    "data: [DONE]\n\n";

static const char sset_vllm_stream[] =
    "data: {\"id\":\"chatcmpl-b2\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
    "\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n"
    "data: {\"id\":\"chatcmpl-b2\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
    "\"Hi\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n"
    "data: {\"id\":\"chatcmpl-b2\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
    "\" there\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n"
    "data: {\"id\":\"chatcmpl-b2\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
    "\"\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}]}\r\n\r\n"
    "data: {\"id\":\"chatcmpl-b2\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,"
    "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,"
    "\"total_tokens\":22,\"completion_tokens\":2}}\r\n\r\n"
    "data: [DONE]\r\n\r\n";

Test(sse, openai_stream_with_usage_any_split)
{
    struct sset_result r = sset_scan_all_ways(sset_openai_stream);
    cr_expect(r.done);
    cr_expect(r.has_usage);
    cr_expect_eq(r.prompt, 12);
    cr_expect_eq(r.completion, 3);
    cr_expect_eq(r.content_events, 3, "role chunk and finish chunk are not content: %lu",
                 (unsigned long)r.content_events);
    cr_expect_eq(r.events, 7);
}

Test(sse, vllm_stream_crlf_any_split)
{
    struct sset_result r = sset_scan_all_ways(sset_vllm_stream);
    cr_expect(r.done);
    cr_expect(r.has_usage);
    cr_expect_eq(r.prompt, 20);
    cr_expect_eq(r.completion, 2);
    cr_expect_eq(r.content_events, 2);
    cr_expect_eq(r.events, 6);
}

Test(sse, stream_without_usage_counts_content_events)
{
    const char *stream =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"c\"},\"finish_reason\":null}]}\n\n"
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n"
        "data: [DONE]\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.done);
    cr_expect_not(r.has_usage);
    cr_expect_eq(r.content_events, 4);
}

Test(sse, legacy_completions_count_text)
{
    const char *stream =
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" Once\","
        "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\" upon\","
        "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"\","
        "\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[],\"usage\":"
        "{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n"
        "data: [DONE]\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.done && r.has_usage);
    cr_expect_eq(r.content_events, 2);
    cr_expect_eq(r.prompt, 4);
    cr_expect_eq(r.completion, 2);
}

Test(sse, comments_other_fields_no_space_and_cr_only)
{
    const char *stream =
        ": keep-alive\n\n"
        "event: message\nid: 7\nretry: 1000\n"
        "data:{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
        ":comment\r"
        "data:{\"choices\":[{\"delta\":{\"content\":\"y\"}}]}\r\r"
        "dat: {\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}}\n\n"
        "datax: {\"usage\":{\"prompt_tokens\":98,\"completion_tokens\":98}}\n\n"
        "data:{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\r\n\r\n"
        "data:[DONE]\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.done);
    cr_expect_eq(r.content_events, 2);
    cr_expect(r.has_usage);
    cr_expect_eq(r.prompt, 5, "fields other than data are ignored: %lu", (unsigned long)r.prompt);
    cr_expect_eq(r.completion, 2);
    cr_expect_eq(r.events, 4);
}

Test(sse, multi_line_data_is_one_event)
{
    const char *stream =
        "data: {\"choices\":[{\"delta\":\n"
        "data: {\"content\":\"x\"}}],\n"
        "data: \"usage\":{\"prompt_tokens\":3,\n"
        "data: \"completion_tokens\":1}}\n"
        "\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect_eq(r.events, 1);
    cr_expect_eq(r.content_events, 1);
    cr_expect(r.has_usage);
    cr_expect_eq(r.prompt, 3);
    cr_expect_eq(r.completion, 1);
    cr_expect_not(r.done);
}

Test(sse, only_top_level_usage_and_first_choice_count)
{
    const char *stream =
        /* usage nested inside a choice is not the response's usage */
        "data: {\"choices\":[{\"delta\":{},\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":7}}]}\n\n"
        /* content of choices[1] is not counted: one event per token of choice 0 */
        "data: {\"choices\":[{\"delta\":{}},{\"delta\":{\"content\":\"z\"}}]}\n\n"
        /* a "content" key elsewhere is not output */
        "data: {\"x\":{\"choices\":[{\"delta\":{\"content\":\"q\"}}]},\"content\":\"q\"}\n\n"
        /* usage with float or negative counts is unreadable, not read as numbers */
        "data: {\"usage\":{\"prompt_tokens\":-4,\"completion_tokens\":1.5}}\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.has_usage && r.unreadable && r.prompt == 0 && r.completion == 0);
    cr_expect_eq(r.content_events, 0);
    cr_expect_eq(r.events, 4);
}

Test(sse, last_usage_wins_and_tool_calls_count)
{
    const char *stream =
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\"}}]}}],"
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1}}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[]}}],"
        "\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.has_usage);
    cr_expect_eq(r.completion, 2);
    cr_expect_eq(r.content_events, 1, "an empty tool_calls array is not output");
}

Test(sse, finish_takes_unterminated_last_event)
{
    const char *stream = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.has_usage);
    cr_expect_eq(r.completion, 9);

    struct sse_scan s;
    sse_init(&s);
    sse_feed(&s, stream, strlen(stream));
    cr_expect_not(s.has_usage, "an event is complete only at its blank line (or sse_finish)");
    sse_feed(&s, "\n\n", 2);
    cr_expect(s.has_usage);
}

Test(sse, done_must_be_exact)
{
    struct sset_result r = sset_scan_all_ways("data: [DONE]x\n\ndata: [DONE\n\ndata:  [DONE]\n\n");
    cr_expect_not(r.done);
    cr_expect_eq(r.events, 3);
    r = sset_scan_all_ways("data: [DONE]\n\n");
    cr_expect(r.done);
}

Test(sse, huge_tool_call_event_is_scanned_not_buffered)
{
    size_t big = 256 * 1024;
    const char *head = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                       "\"function\":{\"arguments\":\"";
    const char *tail = "\"}}]}}]}\n\n"
                       "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":4000}}\n\n"
                       "data: [DONE]\n\n";
    size_t hl = strlen(head), tl = strlen(tail);
    char *buf = malloc(hl + big + tl);
    cr_assert_not_null(buf);
    memcpy(buf, head, hl);
    for (size_t i = 0; i < big; i++)   /* escaped quotes and braces inside the string */
        buf[hl + i] = "ab{[\\\"]}"[i % 8];
    memcpy(buf + hl + big, tail, tl);
    size_t n = hl + big + tl;

    struct sset_result whole = sset_whole(buf, n);
    cr_expect(whole.done && whole.has_usage);
    cr_expect_eq(whole.completion, 4000);
    cr_expect_eq(whole.content_events, 1);

    /* the struct is all the state there is (with the memo of an event's start):
     * bounded, whatever the event size */
    cr_expect_leq(sizeof(struct sse_scan), 640);

    struct sse_scan s;
    sse_init(&s);
    for (size_t off = 0; off < n; off += 1000)
        sse_feed(&s, buf + off, n - off < 1000 ? n - off : 1000);
    sse_finish(&s);
    sset_expect_same(whole, sset_collect(&s), "1000-byte pieces", 0);
    free(buf);
}

Test(sse, deep_nesting_and_garbage_never_crash)
{
    size_t depth = 100000;
    char *buf = malloc(depth * 2 + 200);
    cr_assert_not_null(buf);
    size_t n = 0;
    n += (size_t)sprintf(buf, "data: ");
    memset(buf + n, '[', depth);
    n += depth;
    memset(buf + n, ']', depth);
    n += depth;
    n += (size_t)sprintf(buf + n, "\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
    struct sset_result r = sset_whole(buf, n);
    cr_expect(r.has_usage, "state is sound again after deep nesting");
    cr_expect_eq(r.completion, 2);

    /* unbalanced closers, stray quotes, control bytes, NULs, random bytes */
    const char junk[] = "data: }}]]\"\\\x01\x00{{:,,\"usage\":{\"prompt_tokens\":\n\n\r\r\n:\n\ndata\n\n";
    r = sset_whole(junk, sizeof junk - 1);
    cr_expect_eq(r.events, 2);

    uint32_t x = 12345;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < 4096; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            static const char alphabet[] = "data: {}[]\",:\\\n\r0123usage_tokensx";
            buf[i] = alphabet[x % (sizeof alphabet - 1)];
        }
        struct sse_scan s;
        sse_init(&s);
        sse_feed(&s, buf, 4096);
        sse_finish(&s);
    }
    free(buf);
}

/* The memo of the previous event's start resumes the tokenizer mid-event; the
 * events below share starts that end inside a number, a key, a string with
 * content pending, an escape, and right before a usage object. Read whole
 * (memo), byte by byte (no memo) and split everywhere, the counts must agree. */
Test(sse, memo_of_a_shared_event_start_changes_nothing)
{
    static const char stream[] =
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000001,\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000001,\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"\\\"q\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[{\"index\":0,"
        "\"delta\":{\"contents\":\"not content\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[{\"index\":0,"
        "\"delta\":{}},{\"index\":1,\"delta\":{\"content\":\"second choice\"}}]}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[],"
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n"
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1718000002,\"choices\":[],"
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":4}}\n\n"
        "data: [DONE]\n\n";
    struct sset_result r = sset_scan_all_ways(stream);
    cr_expect(r.done);
    cr_expect(r.has_usage);
    cr_expect_eq(r.prompt, 12);
    cr_expect_eq(r.completion, 4);
    /* "a" and "\"q" in choices[0]: the empty ones, "contents" and choices[1] are not content */
    cr_expect_eq(r.content_events, 2);
    cr_expect_eq(r.events, 9);
}

/* A usage chunk whose count is negative or fractional leaves the stream's usage
 * unreadable (the caller charges the reservation); a later readable one wins. */
Test(sse, usage_with_a_count_that_is_no_integer_is_unreadable)
{
    struct sset_result r = sset_scan_all_ways(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":3}}\n\n"
        "data: [DONE]\n\n");
    cr_expect(r.has_usage && r.unreadable);
    cr_expect(r.prompt == 0 && r.completion == 0);
    struct sse_scan s;
    const char two[] = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3.7}}\n\n";
    sse_init(&s);
    sse_feed(&s, two, sizeof two - 1);
    sse_finish(&s);
    cr_expect(s.has_usage && s.usage_unreadable);
    const char three[] = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3.7}}\n\n"
                         "data: {\"usage\":{\"prompt_tokens\":1e12,\"completion_tokens\":4}}\n\n";
    sse_init(&s);
    sse_feed(&s, three, sizeof three - 1);
    sse_finish(&s);
    cr_expect(s.has_usage && !s.usage_unreadable);
    cr_expect_eq(s.prompt_tokens, 1000000000000ULL);
    cr_expect_eq(s.completion_tokens, 4);
}
