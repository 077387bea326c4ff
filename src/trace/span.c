#include "trace/span.h"

#include <string.h>

void span_copy(char *dst, unsigned cap, const char *s, unsigned long n)
{
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, s, n);
    dst[n] = '\0';
}
