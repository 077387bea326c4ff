/* The backend watcher thread: scrapes the engines' load for capacity and prefix
 * routing (see watch.c). */
#ifndef AIGW_CORE_WATCH_H
#define AIGW_CORE_WATCH_H

/* Starts the thread; call once rt.current is set. 0, or -1 (logged). */
int watch_start(void);
/* Stops and joins it. */
void watch_stop(void);

#endif
