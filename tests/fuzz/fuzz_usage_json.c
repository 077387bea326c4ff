/* libFuzzer: usage of a non-streamed response body. The first byte seeds how
 * the rest is split; read in pieces, the result must equal the whole read. */
#include <stdint.h>
#include <stdlib.h>

#include "proto/usage_json.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    uint64_t prompt = 7, completion = 7;
    enum usage_read r = usage_from_json(buf, len, &prompt, &completion);
    FUZZ_CHECK(r == USAGE_NONE || r == USAGE_FOUND || r == USAGE_UNREADABLE);
    FUZZ_CHECK(r == USAGE_FOUND || (prompt == 0 && completion == 0));

    struct usage_json j;
    usage_json_init(&j);
    uint32_t x = data[0] | 0x100;
    for (size_t off = 0; off < len;) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        size_t n = 1 + x % 64;
        if (n > len - off)
            n = len - off;
        usage_json_feed(&j, buf + off, n);
        off += n;
    }
    uint64_t p2, c2;
    FUZZ_CHECK(usage_json_usage(&j, &p2, &c2) == r && p2 == prompt && c2 == completion);
    return 0;
}
