#include "trace/sampling.h"

#include <string.h>

void trace_new_id(struct trace_rng *r, uint8_t *id, unsigned n)
{
    for (unsigned off = 0; off < n; off += 8) {
        uint64_t v = trace_rng_next(r);
        memcpy(id + off, &v, n - off < 8 ? n - off : 8);
    }
    id[n - 1] |= 1;     /* never all zero: W3C makes such an id invalid */
}
