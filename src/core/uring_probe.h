/* What this kernel's io_uring offers, found by trying it (for `aigw -v` and the
 * start-up log). Nothing is assumed from the kernel version. */
#ifndef AIGW_CORE_URING_PROBE_H
#define AIGW_CORE_URING_PROBE_H

#include <stdio.h>

void uring_probe_print(FILE *out);

#endif
