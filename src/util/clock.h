/* The clocks aigw reads: monotonic time for deadlines and durations, wall time
 * for what people read (log times, daily quotas). Header-only so that the perf
 * tools, which do not link libaigw, use the same reading. */
#ifndef AIGW_UTIL_CLOCK_H
#define AIGW_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t clock_ns_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t clock_mono_ns(void) { return clock_ns_of(CLOCK_MONOTONIC); }
static inline uint64_t clock_mono_us(void) { return clock_mono_ns() / 1000u; }
static inline uint64_t clock_mono_ms(void) { return clock_mono_ns() / 1000000u; }
static inline double clock_mono_s(void) { return (double)clock_mono_ns() / 1e9; }

/* Microseconds since the Unix epoch. */
static inline uint64_t clock_wall_us(void) { return clock_ns_of(CLOCK_REALTIME) / 1000u; }

/* The CLOCK_MONOTONIC instant ns from now, for pthread_cond_timedwait on a
 * condition variable set to that clock. */
static inline struct timespec clock_mono_after(uint64_t ns)
{
    uint64_t at = clock_mono_ns() + ns;
    return (struct timespec){ .tv_sec = (time_t)(at / 1000000000u), .tv_nsec = (long)(at % 1000000000u) };
}

#endif
