/* What a request cost: its settled tokens at its model's [model] prices. Prices
 * are micro-USD per million tokens, so tokens x price is exactly pico-USD: no
 * division, no rounding, and a one-token request at the smallest price (one
 * micro-USD per million tokens) still costs 1 pico-USD rather than 0. */
#ifndef AIGW_CORE_COST_H
#define AIGW_CORE_COST_H

#include <stdint.h>

#define COST_PICO_PER_NANO 1000u
#define COST_PICO_PER_MICRO 1000000u
#define COST_PICO_PER_USD 1000000000000ULL

/* prompt x input_per_mtok + completion x output_per_mtok in pico-USD, saturating
 * at UINT64_MAX (18.4 million USD) instead of wrapping. */
uint64_t cost_pico_usd(uint64_t prompt, uint64_t completion, uint64_t input_per_mtok,
                       uint64_t output_per_mtok);
/* pico-USD to nano-USD, the access log's nine decimals: rounded half up. */
static inline uint64_t cost_nano_rounded(uint64_t pico)
{
    return pico / COST_PICO_PER_NANO + (pico % COST_PICO_PER_NANO >= COST_PICO_PER_NANO / 2);
}

#endif
