/* Comparing secrets (tokens, passwords) without telling an attacker, through
 * the time taken, how much of a guess was right. */
#ifndef AIGW_UTIL_CT_H
#define AIGW_UTIL_CT_H

#include <stdbool.h>
#include <stddef.h>

/* Whether given equals secret. The time depends on secret_len only, never on
 * given's bytes or length. */
static inline bool ct_equal(const void *given, size_t given_len, const void *secret, size_t secret_len)
{
    const volatile unsigned char *g = given, *s = secret;
    unsigned diff = given_len != secret_len;
    for (size_t i = 0; i < secret_len; i++)
        diff |= (unsigned)(s[i] ^ (i < given_len ? g[i] : 0u));
    return diff == 0;
}

#endif
