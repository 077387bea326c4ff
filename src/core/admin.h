/* Admin listener: /healthz, /readyz, /metrics, /status, /status.json and /backends
 * (admin_backends.c) on its own thread (control plane).
 * Many clients at once (a poll loop, keep-alive, up to 256 connections), each
 * bounded by the [timeouts] of the current generation, so none can stall the
 * others; /metrics, /status* and /backends need [admin] token
 * when one is set. */
#ifndef AIGW_CORE_ADMIN_H
#define AIGW_CORE_ADMIN_H

#include <stdbool.h>
#include "core/config.h"

/* Binds listen (SO_REUSEADDR; port 0 picks a free one, see admin_port) and starts
 * the thread, which holds the current generation (rt.current, if any: without
 * one it runs on the [timeouts] defaults and no token) and follows reloads.
 * is_ready answers /readyz (called on the admin thread; NULL: always ready). Returns 0, or -1 with errno and a log_error. */
int admin_start(const struct cfg_addr *listen, bool (*is_ready)(void));
/* Stops the thread (interrupting a slow client) and closes the socket. Idempotent. */
void admin_stop(void);
/* The bound port, or -1 when not started. */
int admin_port(void);

#endif
