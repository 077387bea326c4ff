/* Request cost arithmetic. See cost.h. */
#include "core/cost.h"

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

uint64_t cost_pico_usd(uint64_t prompt, uint64_t completion, uint64_t input_per_mtok,
                       uint64_t output_per_mtok)
{
    uint64_t in = mul_sat(prompt, input_per_mtok), out = mul_sat(completion, output_per_mtok);
    return in > UINT64_MAX - out ? UINT64_MAX : in + out;
}
