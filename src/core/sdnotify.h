/* systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram to
 * $NOTIFY_SOCKET. A no-op when not started by systemd. */
#ifndef AIGW_CORE_SDNOTIFY_H
#define AIGW_CORE_SDNOTIFY_H

void sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
