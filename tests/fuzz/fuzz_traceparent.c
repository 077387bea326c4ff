/* libFuzzer target: the W3C traceparent parser (trace/traceparent.h). Any
 * input is refused or parsed into non-zero ids; formatting what was parsed as
 * version 00 gives a value that parses back to the same ids and flags, and for
 * a version-00 input, the input's own bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace/traceparent.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct trace_parent p;
    if (!traceparent_parse((const char *)data, size, &p))
        return 0;
    static const uint8_t zero[16];
    FUZZ_CHECK(memcmp(p.trace_id, zero, 16) != 0 && memcmp(p.span_id, zero, 8) != 0);
    char out[TRACEPARENT_LEN];
    traceparent_format(out, p.trace_id, p.span_id, p.flags);
    struct trace_parent q;
    FUZZ_CHECK(traceparent_parse(out, sizeof out, &q));
    FUZZ_CHECK(memcmp(&p, &q, sizeof p) == 0);
    if (data[0] == '0' && data[1] == '0')
        FUZZ_CHECK(size == TRACEPARENT_LEN && memcmp(out, data, size) == 0);
    return 0;
}
