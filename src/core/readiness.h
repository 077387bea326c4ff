/* Readiness (/readyz): whether load balancers should send this aigw traffic.
 * Ready once every shard serves, until draining starts, and only while some
 * backend of the configuration in use can take requests (or it has none) as
 * the backend watcher last saw it: with every backend down, traffic is better
 * sent to another gateway. */
#ifndef AIGW_CORE_READINESS_H
#define AIGW_CORE_READINESS_H

#include <stdbool.h>

/* The watcher, once per pass over the current generation's backends: whether
 * any of them takes requests (true when there are none). */
void readiness_backends_available(bool any);
/* /readyz; any thread. */
bool readiness_ready(void);

#endif
