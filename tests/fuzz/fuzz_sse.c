/* libFuzzer: the SSE usage scanner. The first byte seeds how the rest is split;
 * whatever the split, the results must equal those of feeding it in one piece.
 * (The non-streamed usage reader: fuzz_usage_json.c.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sse.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static void scan(struct sse_scan *s, const char *buf, size_t len, uint32_t seed)
{
    uint32_t x = seed | 1;
    size_t off = 0;
    sse_init(s);
    while (off < len) {
        size_t n = len - off;
        if (seed) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t piece = (seed & 0x40) ? x % 3 : 1 + x % ((seed & 0x30) ? 300 : 5);
            if (piece < n)
                n = piece;
        }
        sse_feed(s, buf + off, n);
        off += n;
    }
    sse_finish(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    struct sse_scan whole, split;
    scan(&whole, buf, len, 0);
    scan(&split, buf, len, data[0] ? data[0] : 1);
    FUZZ_CHECK(whole.done == split.done && whole.has_usage == split.has_usage);
    FUZZ_CHECK(whole.usage_unreadable == split.usage_unreadable);
    FUZZ_CHECK(whole.prompt_tokens == split.prompt_tokens);
    FUZZ_CHECK(whole.completion_tokens == split.completion_tokens);
    FUZZ_CHECK(whole.content_events == split.content_events && whole.events == split.events);
    FUZZ_CHECK(whole.content_events <= whole.events);
    FUZZ_CHECK(whole.has_usage || (whole.prompt_tokens == 0 && whole.completion_tokens == 0));
    FUZZ_CHECK(!whole.usage_unreadable || (whole.has_usage && whole.prompt_tokens == 0 &&
                                           whole.completion_tokens == 0));

    return 0;
}
