/* The process's own figures for /metrics, under the names Prometheus client
 * libraries use (process_start_time_seconds, process_open_fds, ...), and
 * aigw_build_info. Read from /proc/self at scrape time on the admin thread:
 * nothing on the shards. */
#ifndef AIGW_CORE_PROCESS_METRICS_H
#define AIGW_CORE_PROCESS_METRICS_H

struct outbuf;

/* Appends the families; one that cannot be read (no /proc) is left out. */
void process_metrics_render(struct outbuf *o);

#endif
