/* /status.json and the /status page (served by the admin listener, admin thread
 * only). Rates and last-minute percentiles come from a ring of cumulative
 * metrics readings the admin thread takes every STATUS_TICK_MS: the shards do
 * no work for it. docs/status.md documents every field. */
#ifndef AIGW_CORE_STATUS_H
#define AIGW_CORE_STATUS_H

#include <stddef.h>
#include <stdint.h>

struct gen;

#define STATUS_TICK_MS 5000     /* one reading every 5 s ... */
#define STATUS_READINGS 13      /* ... 13 kept: the window covers the last 60 s */
#define STATUS_TOP_KEYS 10

/* Allocates the ring and takes the first reading (the window starts there).
 * Returns 0, or -1 with errno ENOMEM (then /status.json answers 503). */
int status_start(uint64_t now_ms);
void status_stop(void);
/* Takes a reading when one is due; returns when the next one is (CLOCK_MONOTONIC ms). */
uint64_t status_tick(uint64_t now_ms);
/* The JSON document for generation g (NULL: no configuration, no pools or routes)
 * into a malloc'd buffer the caller frees. Returns 0, or -1 with errno ENOMEM. */
int status_render_json(const struct gen *g, uint64_t now_ms, char **out, size_t *len);

/* The page (status_page.html, embedded at build time: see status_page.c). */
extern const char status_page_html[];
extern const char status_page_html_end[];

#endif
