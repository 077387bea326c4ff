/* The HTTP side of aigw-mockllm: one thread, one edge-triggered epoll loop. */
#ifndef AIGW_MOCKLLM_SERVER_H
#define AIGW_MOCKLLM_SERVER_H

#include "mock.h"

/* Serves on listen_fd (bound, listening, non-blocking) until SIGTERM or SIGINT.
 * Returns the process exit status. */
int server_run(const struct mock_config *cfg, int listen_fd);

#endif
