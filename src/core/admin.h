/* Admin listener: /healthz, /readyz and /metrics on its own thread (control plane).
 * One connection at a time, each closed after its response; a client gets 2 s to
 * send its request head and 2 s to take the response, so none can stall it. */
#ifndef AIGW_CORE_ADMIN_H
#define AIGW_CORE_ADMIN_H

#include <stdbool.h>
#include "core/config.h"

/* Binds listen (SO_REUSEADDR; port 0 picks a free one, see admin_port) and starts
 * the thread. is_ready answers /readyz (called on the admin thread; NULL: always
 * ready). Returns 0, or -1 with errno and a log_error. */
int admin_start(const struct cfg_addr *listen, bool (*is_ready)(void));
/* Stops the thread (interrupting a slow client) and closes the socket. Idempotent. */
void admin_stop(void);
/* The bound port, or -1 when not started. */
int admin_port(void);

#endif
