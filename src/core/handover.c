/* Passing listening sockets to a successor process (handover.h). Modelled on
 * nginx's binary upgrade (the old master execs the new binary with its listening
 * sockets named in an environment variable) and HAProxy's seamless reload (the new
 * process takes the old one's sockets instead of binding new ones), but the old
 * process itself starts the new one, waits for "ready", and only then stops
 * accepting: a successor that fails leaves the old one serving as before. */
#include "core/handover.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/log.h"
#include "util/clock.h"

#define ENV_FDS "AIGW_INHERIT_FDS"
#define ENV_READY "AIGW_READY_FD"

extern char **environ;

struct inherited {
    int fd;
    struct sockaddr_storage ss;
    bool adopted;
};

static struct inherited *inh;
static unsigned ninh;
static int ready_fd = -1;

static char self_exe[4096];
static char **self_argv;

/* ---- the new process ---- */

static bool listening_stream_socket(int fd)
{
    struct stat st;
    int v = 0;
    socklen_t len = sizeof v;
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return false;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) != 0 || v != SOCK_STREAM)
        return false;
    len = sizeof v;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1;
}

static int parse_fd(const char *s, char **end)
{
    errno = 0;
    long v = strtol(s, end, 10);
    if (errno || *end == s || v < 3 || v > 1 << 24)
        return -1;
    return (int)v;
}

void handover_inherit_load(void)
{
    const char *rfd = getenv(ENV_READY);
    if (rfd) {
        char *end;
        int fd = parse_fd(rfd, &end);
        if (fd >= 0 && *end == 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) == 0)
            ready_fd = fd;
        else
            log_warn("%s=%s: not a descriptor; ignored", ENV_READY, rfd);
        unsetenv(ENV_READY);
    }
    const char *list = getenv(ENV_FDS);
    if (!list)
        return;
    if (ready_fd < 0) {
        /* sockets without a parent waiting for us: not a handover */
        log_warn("%s without %s: inherited sockets ignored", ENV_FDS, ENV_READY);
        unsetenv(ENV_FDS);
        return;
    }
    inh = calloc(HANDOVER_MAX_FDS, sizeof *inh);
    for (const char *p = list; inh && *p && ninh < HANDOVER_MAX_FDS; ) {
        char *end;
        int fd = parse_fd(p, &end);
        const char *next = strchr(p, ',');
        if (fd < 0 || (*end != '=' && *end != ',' && *end != 0)) {
            log_warn("%s: '%.*s' is not a descriptor; ignored", ENV_FDS,
                     next ? (int)(next - p) : (int)strlen(p), p);
        } else {
            struct inherited *h = &inh[ninh];
            socklen_t sl = sizeof h->ss;
            if (!listening_stream_socket(fd) || getsockname(fd, (struct sockaddr *)&h->ss, &sl) != 0) {
                log_warn("%s: descriptor %d is not a listening socket; ignored", ENV_FDS, fd);
            } else {
                fcntl(fd, F_SETFD, FD_CLOEXEC);
                h->fd = fd;
                ninh++;
            }
        }
        if (!next)
            break;
        p = next + 1;
    }
    unsetenv(ENV_FDS);
}

bool handover_is_successor(void)
{
    return ready_fd >= 0;
}

/* a's address (and port, unless a asks for any) equals the bound ss */
static bool bound_to(const struct sockaddr_storage *ss, const struct cfg_addr *a)
{
    if (ss->ss_family != a->sa.ss_family)
        return false;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)ss, *y = (const void *)&a->sa;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && (y->sin_port == 0 || x->sin_port == y->sin_port);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)ss, *y = (const void *)&a->sa;
        return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 &&
               (y->sin6_port == 0 || x->sin6_port == y->sin6_port);
    }
    return false;
}

int handover_take(const struct cfg_addr *a)
{
    for (unsigned i = 0; i < ninh; i++)
        if (!inh[i].adopted && bound_to(&inh[i].ss, a)) {
            inh[i].adopted = true;
            return inh[i].fd;
        }
    return -1;
}

void handover_close_unadopted(void)
{
    for (unsigned i = 0; i < ninh; i++) {
        if (inh[i].adopted)
            continue;
        close(inh[i].fd);
        inh[i].adopted = true;
        log_info("handover: inherited descriptor %d: no longer a listen address; closed", inh[i].fd);
    }
    free(inh);
    inh = NULL;
    ninh = 0;
}

void handover_ready(void)
{
    if (ready_fd < 0)
        return;
    static const char msg[] = "ready\n";
    ssize_t n;
    do
        n = write(ready_fd, msg, sizeof msg - 1);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof msg - 1)
        log_warn("handover: telling the old process we serve failed: %s", strerror(errno));
    close(ready_fd);
    ready_fd = -1;
}

/* ---- the old process ---- */

void handover_remember_self(char **argv)
{
    /* resolved now: /proc/self/exe of a replaced file reads "... (deleted)" */
    if (!realpath("/proc/self/exe", self_exe) && !realpath(argv[0], self_exe))
        snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    self_argv = argv;
}

/* environ without our own variables, plus the two for the successor */
static char **successor_env(char *fds_var, char *ready_var)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], ENV_FDS "=", sizeof ENV_FDS) != 0 &&
            strncmp(environ[i], ENV_READY "=", sizeof ENV_READY) != 0)
            env[k++] = environ[i];
    env[k++] = fds_var;
    env[k++] = ready_var;
    return env;
}

static void reap(pid_t pid, char *why, size_t why_cap, const char *what)
{
    int st = 0;
    pid_t r;
    /* SIGKILL, not SIGTERM: a draining aigw shuts its listeners down, and these
     * are the very sockets this process still accepts on */
    kill(pid, SIGKILL);
    do
        r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    if (r == pid && WIFEXITED(st))
        snprintf(why, why_cap, "%s (it exited with status %d)", what, WEXITSTATUS(st));
    else if (r == pid && WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL)
        snprintf(why, why_cap, "%s (it was killed by signal %d)", what, WTERMSIG(st));
    else
        snprintf(why, why_cap, "%s", what);
}

int handover_spawn(const int *fds, const char *const *texts, unsigned nfds, int timeout_ms,
                   pid_t *child, char *why, size_t why_cap)
{
    size_t cap = sizeof ENV_FDS + 1 + (size_t)nfds * 80;
    char *fds_var = malloc(cap), ready_var[64];
    int pipefd[2] = { -1, -1 };
    char **env = NULL;
    int rc = -1;
    if (!fds_var) {
        snprintf(why, why_cap, "out of memory");
        return -1;
    }
    size_t len = (size_t)snprintf(fds_var, cap, "%s=", ENV_FDS);
    for (unsigned i = 0; i < nfds && len < cap; i++)
        len += (size_t)snprintf(fds_var + len, cap - len, "%s%d=%s", i ? "," : "", fds[i], texts[i]);
    if (len >= cap) {
        snprintf(why, why_cap, "too many listening sockets");
        goto out;
    }
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        snprintf(why, why_cap, "pipe: %s", strerror(errno));
        goto out;
    }
    snprintf(ready_var, sizeof ready_var, "%s=%d", ENV_READY, pipefd[1]);
    env = successor_env(fds_var, ready_var);
    if (!env) {
        snprintf(why, why_cap, "out of memory");
        goto out;
    }
    /* posix_spawn, not fork: a forked copy of this process would share, copy on
     * write, the memory the shards' rings have the kernel write into (provided
     * buffers), and the kernel may go on writing into the child's copy; spawn
     * shares nothing until the exec. dup2 of a descriptor onto itself clears its
     * close-on-exec flag (glibc 2.29+), so exactly these are inherited. */
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0) {
        snprintf(why, why_cap, "out of memory");
        goto out;
    }
    int err = 0;
    for (unsigned i = 0; i < nfds && !err; i++)
        err = posix_spawn_file_actions_adddup2(&fa, fds[i], fds[i]);
    if (!err)
        err = posix_spawn_file_actions_adddup2(&fa, pipefd[1], pipefd[1]);
    pid_t pid = -1;
    if (!err)
        err = posix_spawn(&pid, self_exe, &fa, NULL, self_argv, env);
    posix_spawn_file_actions_destroy(&fa);
    if (err) {
        snprintf(why, why_cap, "cannot start %s: %s", self_exe, strerror(err));
        goto out;
    }
    close(pipefd[1]);
    pipefd[1] = -1;
    log_info("handover: started %s as pid %d with %u listening socket(s)", self_exe, (int)pid, nfds);

    char buf[16];
    size_t got = 0;
    uint64_t deadline = clock_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline) {
            reap(pid, why, why_cap, "the new process did not say it serves in time");
            goto out;
        }
        struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
        int n = poll(&p, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            continue;
        ssize_t r = read(pipefd[0], buf + got, sizeof buf - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            reap(pid, why, why_cap, "the new process ended before it served");
            goto out;
        }
        got += (size_t)r;
        buf[got] = 0;
        if (strstr(buf, "ready")) {
            *child = pid;
            rc = 0;
            goto out;
        }
        if (got == sizeof buf - 1) {
            reap(pid, why, why_cap, "the new process said something other than ready");
            goto out;
        }
    }
out:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    free(env);
    free(fds_var);
    return rc;
}
