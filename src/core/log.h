/* Error log: human-readable lines to stderr, each starting with an ISO 8601 UTC
 * time unless stderr is the journal (which stamps lines itself). For the control plane and for rare events on shards; per-request detail goes
 * to the access log instead. */
#ifndef AIGW_CORE_LOG_H
#define AIGW_CORE_LOG_H

#include "core/config.h"

void log_set_level(enum log_level level);
/* stderr is systemd's journal stream (JOURNAL_STREAM names its device:inode). */
bool log_stderr_is_journal(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
