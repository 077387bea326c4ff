#include <criterion/criterion.h>

#include "core/usage.h"

/* The rule a backend's usage is believed by (usage.h): prompt at most the body's
 * bytes plus a slack, completion at most max_tokens for each of up to 128
 * choices plus a slack, or a global ceiling. */
Test(usage, bound_follows_body_size_and_max_tokens)
{
    struct usage_bound b = usage_bound_of(2048, true, 100);
    cr_expect_eq(b.prompt, 2048 + USAGE_PROMPT_SLACK);
    cr_expect_eq(b.completion, 100 * USAGE_CHOICES_MAX + USAGE_COMPLETION_SLACK);

    b = usage_bound_of(2048, false, 0);
    cr_expect_eq(b.completion, USAGE_COMPLETION_MAX, "no max_tokens: the ceiling");
    b = usage_bound_of(2048, true, UINT64_C(1) << 53);
    cr_expect_eq(b.completion, USAGE_COMPLETION_MAX, "a huge max_tokens: the ceiling");
    b = usage_bound_of(UINT64_MAX, true, 0);
    cr_expect_eq(b.prompt, UINT64_MAX, "saturates");
    cr_expect_eq(b.completion, USAGE_COMPLETION_SLACK);
}

Test(usage, clamp_reports_when_usage_was_beyond_the_bound)
{
    struct usage_bound b = usage_bound_of(1000, true, 10);
    uint64_t p = 900, q = 1000;
    cr_expect_not(usage_clamp(&b, &p, &q), "plausible usage is kept");
    cr_expect(p == 900 && q == 1000);

    static const uint64_t absurd[] = { UINT64_MAX, UINT64_C(1) << 63, (UINT64_C(1) << 40) + 1,
                                       1000000000000ULL };
    for (size_t i = 0; i < sizeof absurd / sizeof absurd[0]; i++) {
        p = absurd[i];
        q = 5;
        cr_expect(usage_clamp(&b, &p, &q));
        cr_expect(p == b.prompt && q == 5, "prompt %llu -> %llu", (unsigned long long)absurd[i],
                  (unsigned long long)p);
        p = 5;
        q = absurd[i];
        cr_expect(usage_clamp(&b, &p, &q));
        cr_expect(p == 5 && q == b.completion);
    }
}
