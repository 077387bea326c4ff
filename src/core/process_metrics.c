#include "core/process_metrics.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "tls/tls.h"
#include "core/metrics.h"
#include "util/outbuf.h"

/* /proc/self/stat's fields after the command name (which may hold spaces and
 * parentheses, hence the last ')'): utime, stime and starttime in clock ticks,
 * rss in pages. */
struct proc_stat {
    unsigned long long utime, stime, starttime;
    long long rss;
};

static int read_proc_stat(struct proc_stat *st)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime(14) stime(15) cutime cstime priority nice threads itreal
     * starttime(22) vsize rss(24) */
    int got = sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu %*u %lld",
                     &st->utime, &st->stime, &st->starttime, &st->rss);
    return got == 4 ? 0 : -1;
}

/* The boot time in seconds since the epoch (/proc/stat's btime); 0 unknown. */
static unsigned long long boot_time(void)
{
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return 0;
    char line[256];
    unsigned long long bt = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %llu", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

/* Entries of /proc/self/fd, less the one opendir holds while counting; -1 unknown. */
static long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;
}

/* name value: value is ticks/hz in seconds, with two decimals (clock ticks are 10 ms). */
static void put_ticks(struct outbuf *o, const char *name, unsigned long long ticks, long hz)
{
    outbuf_str(o, name);
    outbuf_char(o, ' ');
    outbuf_fixed(o, (uint64_t)(ticks * 100 / (unsigned long long)hz), 2);
    outbuf_char(o, '\n');
}

void process_metrics_render(struct outbuf *o)
{
    metrics_put_family(o, "aigw_build_info", "gauge", "Always 1; the labels say which aigw and which TLS library run.");
    outbuf_str(o, "aigw_build_info{version=\"" AIGW_VERSION "\",wolfssl=\"");
    const char *tls = tls_library_version();    /* "wolfSSL 5.5.4" */
    const char *sp = strchr(tls, ' ');
    outbuf_str(o, sp ? sp + 1 : tls);
    outbuf_str(o, "\"} 1\n");

    long hz = sysconf(_SC_CLK_TCK);
    struct proc_stat st;
    bool have_stat = hz > 0 && read_proc_stat(&st) == 0;
    unsigned long long bt = have_stat ? boot_time() : 0;
    if (have_stat && bt) {
        metrics_put_family(o, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
        put_ticks(o, "process_start_time_seconds", bt * (unsigned long long)hz + st.starttime, hz);
    }
    if (have_stat) {
        metrics_put_family(o, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        put_ticks(o, "process_cpu_seconds_total", st.utime + st.stime, hz);
        long page = sysconf(_SC_PAGESIZE);
        metrics_put_family(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        outbuf_str(o, "process_resident_memory_bytes ");
        outbuf_u64(o, st.rss > 0 && page > 0 ? (uint64_t)st.rss * (uint64_t)page : 0);
        outbuf_char(o, '\n');
    }
    long fds = open_fds();
    if (fds >= 0) {
        metrics_put_family(o, "process_open_fds", "gauge", "Number of open file descriptors.");
        outbuf_str(o, "process_open_fds ");
        outbuf_u64(o, (uint64_t)fds);
        outbuf_char(o, '\n');
    }
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
        metrics_put_family(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        outbuf_str(o, "process_max_fds ");
        outbuf_u64(o, lim.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)lim.rlim_cur);
        outbuf_char(o, '\n');
    }
}
