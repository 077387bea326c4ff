/* `make run`'s demo script stops what it started, by whichever signal it is ended:
 * Ctrl-C (SIGINT), SIGTERM (a supervisor, `timeout`, make forwarding it) or SIGHUP
 * (the terminal went away). */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(demo, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define MAX_CHILDREN 8

struct proc_id {
    pid_t pid;
    unsigned long long start;   /* start time: a reused pid is another process */
};

/* ppid and start time of pid from /proc/PID/stat (fields 4 and 22); false if gone
 * or a zombie. */
static bool proc_stat(pid_t pid, pid_t *ppid, unsigned long long *start, char *comm, size_t comm_cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *text = h_read_file(path);
    if (!text)
        return false;
    char *open = strchr(text, '('), *close = strrchr(text, ')');
    char state = 0;
    int pp = 0;
    bool ok = open && close &&
              sscanf(close + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                     &state, &pp, start) == 3 && state != 'Z';
    if (ok && comm)
        snprintf(comm, comm_cap, "%.*s", (int)(close - open - 1), open + 1);
    if (ppid)
        *ppid = pp;
    free(text);
    return ok;
}

/* The script's aigw and aigw-mockllm children. */
static int children_of(pid_t parent, struct proc_id *out, int cap)
{
    DIR *d = opendir("/proc");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < cap) {
        pid_t pid = (pid_t)atoi(e->d_name), ppid;
        char comm[32];
        if (pid > 0 && proc_stat(pid, &ppid, &out[n].start, comm, sizeof comm) && ppid == parent &&
            !strncmp(comm, "aigw", 4)) {
            out[n].pid = pid;
            n++;
        }
    }
    closedir(d);
    return n;
}

static bool still_running(const struct proc_id *p)
{
    unsigned long long start;
    return proc_stat(p->pid, NULL, &start, NULL, 0) && start == p->start;
}

static void run_and_stop_with(int sig)
{
    char ports[64], listen_port[16], admin_port[16], tls_port[16], build[600];
    snprintf(listen_port, sizeof listen_port, "%d", h_free_port());
    snprintf(admin_port, sizeof admin_port, "%d", h_free_port());
    snprintf(tls_port, sizeof tls_port, "%d", h_free_port());
    snprintf(ports, sizeof ports, "%d %d", h_free_port(), h_free_port());
    snprintf(build, sizeof build, "%s", h_aigw_bin());
    setenv("AIGW_DEMO_LISTEN_PORT", listen_port, 1);
    setenv("AIGW_DEMO_ADMIN_PORT", admin_port, 1);
    setenv("AIGW_DEMO_TLS_PORT", tls_port, 1);
    setenv("AIGW_DEMO_BACKEND_PORTS", ports, 1);
    setenv("BUILD", dirname(build), 1);

    char tag[32], out[600];
    snprintf(tag, sizeof tag, "demo-%s", sigabbrev_np(sig));
    snprintf(out, sizeof out, "%s/%s.out", h_dir(), tag);
    const char *argv[] = {"/bin/sh", "scripts/run-demo.sh", NULL};
    pid_t script = h_spawn(tag, argv);
    char *text = h_wait_for_text(out, "aigw's output follows", 20000 * h_slow());
    cr_assert_not_null(text, "the demo did not start; stderr:\n%s\nstdout:\n%s", h_tail(tag), h_tail_out(tag));
    free(text);

    struct proc_id kids[MAX_CHILDREN];
    int n = children_of(script, kids, MAX_CHILDREN);
    cr_assert_eq(n, 3, "expected aigw and two aigw-mockllm under the demo script, found %d", n);

    cr_assert_eq(kill(script, sig), 0);
    int st = h_wait_exit(script, 15000 * h_slow());
    if (st == -1)
        h_stop(script, 1000);
    int left = 0;
    for (int i = 0; i < n; i++) {
        if (still_running(&kids[i])) {
            kill(kids[i].pid, SIGKILL);     /* not the harness's children: clean up here */
            left++;
        }
    }
    cr_assert(st != -1, "the demo script was still running 15 s after SIG%s", sigabbrev_np(sig));
    cr_assert_eq(left, 0, "after SIG%s the demo script left %d of its %d processes running", sigabbrev_np(sig),
                 left, n);
}

Test(demo, every_way_of_ending_it_stops_what_it_started)
{
    /* one after another: the script's files live in one directory under BUILD */
    run_and_stop_with(SIGTERM);
    run_and_stop_with(SIGINT);
    run_and_stop_with(SIGHUP);
    h_finish();
}
