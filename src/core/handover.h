/* Seamless handover (handover.c): the running aigw starts its successor and
 * passes it its listening sockets, so an upgrade or a change of listen addresses
 * or shards refuses no connection. The old process stops accepting only once the
 * new one says it serves, then drains and exits.
 *
 * Between the two processes: the sockets are inherited descriptors, listed in
 * AIGW_INHERIT_FDS ("fd=address,..."), and AIGW_READY_FD names the write end of a
 * pipe on which the new process writes "ready". Only a process started this way
 * adopts sockets: without the variable, aigw binds (and claims) its addresses, so
 * a second aigw started by hand still fails with "address already in use". */
#ifndef AIGW_CORE_HANDOVER_H
#define AIGW_CORE_HANDOVER_H

#include <stdbool.h>
#include <sys/types.h>

#include "policy/types.h"       /* cfg_addr */

#define HANDOVER_MAX_FDS 4096

/* ---- the new process ---- */

/* Reads and removes the inherited-socket variables, keeping only descriptors that
 * are listening stream sockets (the rest are logged and left alone: a forged list
 * must not make us close a descriptor of our own). Call once, at start, before
 * the listeners are opened. */
void handover_inherit_load(void);
/* True when started by a handover (with a ready pipe). */
bool handover_is_successor(void);
/* The next unadopted inherited socket listening on a (port 0: any port on a's
 * address), or -1. The caller owns it. */
int handover_take(const struct cfg_addr *a);
/* Closes the inherited sockets no address adopted (addresses removed from the
 * file), logging each, so they stop listening once the old process closes its own. */
void handover_close_unadopted(void);
/* Tells the old process this one serves (writes "ready" on the pipe). */
void handover_ready(void);

/* ---- the old process ---- */

/* Remembers how to start a successor: the executable's resolved path (the file
 * at that path when the successor starts is what runs: a binary upgrade) and the
 * argument vector. Call at start, before any chdir. */
void handover_remember_self(char **argv);
/* Starts the successor with fds (described by texts, for its log) inherited and
 * waits up to timeout_ms for it to say it serves. 0 and *child on success; -1 if it
 * failed to start, exited, or was not ready in time (then it is killed and reaped,
 * and why says so). */
int handover_spawn(const int *fds, const char *const *texts, unsigned nfds, int timeout_ms,
                   pid_t *child, char *why, size_t why_cap);

#endif
