/* aigw: command line, start-up, and the control thread. The main thread owns
 * signals (every other thread blocks them): SIGHUP reloads (through a new process,
 * a handover, when listen addresses or shards change), SIGUSR1 reopens the access
 * log, SIGUSR2 hands over to the binary now at our path (an upgrade), SIGTERM/SIGINT
 * drain and exit. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/accesslog.h"
#include "core/admin.h"
#include "core/log.h"
#include "core/watch.h"
#include "cluster/snapshot.h"
#include "cluster/sync.h"
#include "trace/exporter.h"
#include "core/gen.h"
#include "core/handover.h"
#include "core/shard.h"
#include "core/readiness.h"
#include "core/sdnotify.h"
#include "core/uring_probe.h"
#include "policy/keys.h"
#include "util/clock.h"
#include "util/file_replace.h"

#include <sys/random.h>

#ifdef AIGW_MIMALLOC
#include <mimalloc.h>
#endif
#include <wolfssl/options.h>
#include "core/config_tls.h"
#include "tls/tls.h"

#define DEFAULT_CONFIG "/etc/aigw.conf"
/* After drain_timeout, how long the shards get to cut, log and settle what was
 * still running (docs/config.md drain_timeout: TimeoutStopSec must cover both). */
#define DRAIN_CUT_GRACE_MS 2000

static void usage(FILE *to)
{
    fprintf(to,
            "usage: aigw [-c FILE]        run (default FILE: " DEFAULT_CONFIG ")\n"
            "       aigw -t [-c FILE]     check the configuration\n"
            "       aigw -T [-c FILE]     check, then print the effective configuration\n"
            "       aigw -v, --version    version and build options\n"
            "       aigw -h, --help       this help\n"
            "       aigw keygen [--append FILE] NAME [TIER]\n"
            "                             a new API key (on stderr) and its keys-file line\n"
            "                             (on stdout, or added to FILE)\n");
}

/* keygen --append FILE: FILE with the line added, checked by the keys loader
 * first (a duplicate name or hash is refused, the file left as it was) and
 * replaced whole, keeping its mode and owner; a new file is 0640. */
static int keygen_append(const char *file, const char *line)
{
    struct stat st = { .st_mode = S_IFREG | 0640, .st_uid = (uid_t)-1, .st_gid = (gid_t)-1 };
    char *text = NULL;
    size_t len = 0;
    FILE *in = fopen(file, "re");
    if (in) {
        if (fstat(fileno(in), &st) != 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "aigw keygen: %s: not a regular file\n", file);
            fclose(in);
            return 1;
        }
        text = malloc((size_t)st.st_size + strlen(line) + 2);
        len = text ? fread(text, 1, (size_t)st.st_size, in) : 0;
        bool bad = !text || ferror(in);
        fclose(in);
        if (bad) {
            fprintf(stderr, "aigw keygen: reading %s failed\n", file);
            free(text);
            return 1;
        }
    } else if (errno == ENOENT) {
        text = malloc(strlen(line) + 2);
        if (!text)
            return 1;
    } else {
        fprintf(stderr, "aigw keygen: %s: %s\n", file, strerror(errno));
        return 1;
    }
    if (len > 0 && text[len - 1] != '\n')
        text[len++] = '\n';
    memcpy(text + len, line, strlen(line) + 1);
    len += strlen(line);

    char err[512];
    struct keyring *ring = NULL;
    int rc = 1;
    if (keyring_load_string(file, text, &ring, err, sizeof err) < 0)
        fprintf(stderr, "aigw keygen: not appended: %s\n", err);
    else if (file_replace(file, text, len, st.st_mode, st.st_uid, st.st_gid, err, sizeof err) < 0)
        fprintf(stderr, "aigw keygen: not appended: %s\n", err);
    else
        rc = 0;
    keyring_free(ring);
    explicit_bzero(text, len);
    free(text);
    return rc;
}

/* The new key goes to stderr, once (only its hash is ever stored); stdout gets
 * the keys-file line alone, so `aigw keygen NAME >> keys` appends it. */
static int keygen(int argc, char **argv)
{
    const char *append = NULL;
    int first = 2;
    if (argc >= 4 && strcmp(argv[2], "--append") == 0) {
        append = argv[3];
        first = 4;
    }
    if (argc - first < 1 || argc - first > 2) {
        fprintf(stderr, "usage: aigw keygen [--append FILE] NAME [TIER]\n");
        return 2;
    }
    uint8_t random[32];
    if (getrandom(random, sizeof random, 0) != (ssize_t)sizeof random) {
        fprintf(stderr, "aigw keygen: getrandom: %s\n", strerror(errno));
        return 1;
    }
    char key[KEY_LEN + 1], line[512];
    if (key_generate(random, key, sizeof key) < 0 ||
        key_file_line(argv[first], argc - first == 2 ? argv[first + 1] : NULL, key, line, sizeof line) < 0) {
        fprintf(stderr, "aigw keygen: invalid NAME or TIER (letters, digits, '.', '_', '-'; "
                        "NAME up to %d, TIER up to %d characters)\n", KEY_NAME_MAX, KEY_TIER_MAX);
        return 2;
    }
    explicit_bzero(random, sizeof random);
    int rc = 0;
    if (append)
        rc = keygen_append(append, line);
    else if (fputs(line, stdout) == EOF || fflush(stdout) != 0)
        rc = 1;
    if (rc == 0)
        fprintf(stderr, "key: %s\n"
                        "Give the key to its user now: it is not stored anywhere and cannot be shown again.\n"
                        "%s%s\n",
                key, append ? "Its line (holding only the key's SHA-256) was added to " :
                              "Its line for the [keys] file (holding only the key's SHA-256) is on stdout",
                append ? append : "");
    explicit_bzero(key, sizeof key);
    return rc;
}

static void print_version(void)
{
    printf("aigw %s\n", AIGW_VERSION);
#ifdef AIGW_MIMALLOC
    printf("allocator: mimalloc %d.%d.%d\n", mi_version() / 100, (mi_version() / 10) % 10,
           mi_version() % 10);
#else
    printf("allocator: libc (sanitizer build)\n");
#endif
    char tls[512];
    tls_describe_library(tls, sizeof tls);
    printf("tls: %s\n", tls);
    printf("tls default ciphers: %s\n", tls_default_ciphers());
    uring_probe_print(stdout);
}

static bool same_addr(const struct cfg_addr *a, const struct cfg_addr *b)
{
    return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

static bool same_listeners(const struct cfg_addr *a, unsigned na, const struct cfg_addr *b, unsigned nb)
{
    bool same = na == nb;
    for (unsigned i = 0; same && i < na; i++)
        same = same_addr(&a[i], &b[i]);
    return same;
}

/* What a reload cannot change in place: sockets and threads. A new process
 * applies it (a handover); NULL when the running one can. The rest of [tls]
 * (certificates, ciphers, client_ca, tickets) applies to new connections. */
static const char *needs_new_process(const struct config *old, const struct config *neu)
{
    if (!same_listeners(old->server.listen, old->server.nlisten, neu->server.listen, neu->server.nlisten))
        return "[server] listen changed";
    if (!same_listeners(old->tls.listen, old->tls.nlisten, neu->tls.listen, neu->tls.nlisten))
        return "[tls] listen changed";
    if (old->server.shards != neu->server.shards)
        return "[server] shards changed";
    if (old->admin.enabled != neu->admin.enabled ||
        (old->admin.enabled && !same_addr(&old->admin.listen, &neu->admin.listen)))
        return "[admin] listen changed";
    if (neu->server.max_header + 4096 > old->server.max_header + 4096 &&
        neu->server.max_header > 12288)
        return "a larger max_header than at start";
    return NULL;
}

/* How long a successor has to load its file and start its shards. */
#define HANDOVER_READY_TIMEOUT_MS 30000

/* Starts a successor with our listening sockets (handover.h); true once it serves,
 * and then this process is to drain and exit. */
static bool hand_over(const char *why)
{
    const struct config *cfg = atomic_load(&rt.current)->cfg;
    static int fds[HANDOVER_MAX_FDS];
    static const char *texts[HANDOVER_MAX_FDS];
    unsigned n = listeners_describe(cfg, fds, texts, HANDOVER_MAX_FDS - 1);
    if (cfg->admin.enabled && admin_listen_fd() >= 0) {
        fds[n] = admin_listen_fd();
        texts[n++] = cfg->admin.listen.text;
    }
    log_info("handover (%s): starting a new process", why);
    sd_notifyf("RELOADING=1\nSTATUS=handover: starting a new process (%s)", why);
    char err[512];
    pid_t child;
    if (handover_spawn(fds, texts, n, HANDOVER_READY_TIMEOUT_MS, &child, err, sizeof err) != 0) {
        log_error("handover failed, this process keeps serving as before: %s", err);
        metrics_count_reload(false);
        sd_notifyf("READY=1\nSTATUS=handover failed: %s", err);
        return false;
    }
    log_info("handover: pid %d serves now; this process (pid %d) stops accepting and drains",
             (int)child, (int)getpid());
    sd_notifyf("MAINPID=%d\nREADY=1\nSTATUS=serving as pid %d (handed over by pid %d)", (int)child,
               (int)child, (int)getpid());
    metrics_count_reload(true);
    return true;
}

static bool reload(const char *path)
{
    sd_notifyf("RELOADING=1\nSTATUS=reloading %s", path);
    char err[1024];
    struct config *cfg = NULL;
    if (config_load(path, &cfg, err, sizeof err) != 0 || config_tls_build(cfg, err, sizeof err) != 0) {
        config_free(cfg);
        log_error("reload refused, keeping the running configuration: %s", err);
        metrics_count_reload(false);
        sd_notifyf("READY=1\nSTATUS=reload refused: %s", err);
        return false;
    }
    struct gen *old = atomic_load(&rt.current);
    const char *why = needs_new_process(old->cfg, cfg);
    if (why) {
        /* the successor loads the file itself */
        config_free(cfg);
        return hand_over(why);
    }
    /* the header size is fixed by the buffers allocated at start */
    if (cfg->server.max_header > old->cfg->server.max_header)
        cfg->server.max_header = old->cfg->server.max_header;
    struct gen *g = gen_create(cfg, old, rt.nshards, err, sizeof err);
    if (!g) {
        log_error("reload refused, keeping the running configuration: %s", err);
        config_free(cfg);
        metrics_count_reload(false);
        sd_notifyf("READY=1\nSTATUS=reload refused: %s", err);
        return false;
    }
    if (alog_configure(cfg->log.access, cfg->log.access_path) != 0)
        log_warn("reload: access log destination unchanged");
    log_set_level(cfg->log.level);
    atomic_store(&old->newer, g);
    atomic_store_explicit(&rt.current, g, memory_order_release);
    gen_unref(old);     /* main's reference */
    limits_sync_wake(); /* hands the old pools' leases over without waiting a sync_interval */
    log_info("configuration reloaded from %s (generation %llu)", path, (unsigned long long)g->id);
    trace_configure(&cfg->tracing);
    metrics_config_loaded(g->id);
    metrics_count_reload(true);
    sd_notifyf("READY=1\nSTATUS=serving (generation %llu)", (unsigned long long)g->id);
    return false;
}

/* The largest soft RLIMIT_NOFILE the kernel takes: the hard limit, unless that is
 * unlimited, which setrlimit refuses above fs.nr_open. */
static rlim_t nofile_ceiling(rlim_t hard)
{
    if (hard != RLIM_INFINITY)
        return hard;
    rlim_t nr_open = 1048576;     /* the kernel's default */
    FILE *f = fopen("/proc/sys/fs/nr_open", "re");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1 && v > 0)
            nr_open = (rlim_t)v;
        fclose(f);
    }
    return nr_open;
}

/* Every client and upstream connection is a descriptor, and the soft limit is
 * often 1024 when the hard one is far higher: take the hard one, as nginx's
 * worker_rlimit_nofile and HAProxy do, and say when max_connections cannot fit. */
static void raise_nofile_limit(const struct config *cfg, unsigned nshards)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0) {
        log_warn("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    rlim_t want = nofile_ceiling(lim.rlim_max);
    if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want) {
        rlim_t was = lim.rlim_cur;
        lim.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &lim) == 0)
            log_info("descriptor limit raised from %llu to %llu", (unsigned long long)was,
                     (unsigned long long)want);
        else
            lim.rlim_cur = was;
    }
    /* a client and its upstream connection each, the listeners, and room for the
     * rest (rings, pipes of bodies being spliced, logs, the admin and watcher) */
    unsigned long long need = 2ull * cfg->server.max_connections +
                              (unsigned long long)nshards * cfg->server.nlisten + 64;
    if (lim.rlim_cur != RLIM_INFINITY && need > lim.rlim_cur)
        log_warn("the descriptor limit (%llu) is below what max_connections = %u needs (about %llu: "
                 "a client and an upstream connection each); past it new clients wait in the "
                 "listen backlog. Raise it (LimitNOFILE= under systemd, ulimit -Hn) or lower "
                 "max_connections",
                 (unsigned long long)lim.rlim_cur, cfg->server.max_connections, need);
}

static unsigned online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    if (n > MAX_SHARDS)
        n = MAX_SHARDS;
    return (unsigned)n;
}

/* Without Redis, the day's quota and spend use of the last run (snapshot.h);
 * before any shard admits from g. */
static void restore_daily_quotas(struct gen *g)
{
    const struct config *cfg = g->cfg;
    const char *dir = cfg->server.state_dir;
    if (cfg->cluster.enabled)
        return;     /* Redis holds the quotas */
    if (!dir[0]) {
        for (unsigned i = 0; i < cfg->ntiers; i++)
            if (cfg->tiers[i].daily_tokens || cfg->tiers[i].daily_spend_micro_usd) {
                log_warn("[tier %s] sets %s without [cluster]: daily quotas restart from zero on "
                         "every restart: set [server] state_dir", cfg->tiers[i].name,
                         cfg->tiers[i].daily_tokens ? "daily_tokens" : "daily_spend");
                break;
            }
        return;
    }
    char why[512];
    int n = snapshot_load(dir, g, (int64_t)time(NULL), why, sizeof why);
    if (n < 0)
        log_warn("%s/%s: ignored: %s", dir, SNAPSHOT_FILE, why);
    else if (why[0])
        log_info("%s/%s: %s: no daily quota use restored", dir, SNAPSHOT_FILE, why);
    else
        log_info("restored the daily quota use of %d key(s) from %s/%s", n, dir, SNAPSHOT_FILE);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "keygen") == 0)
        return keygen(argc, argv);
    handover_remember_self(argv);
    const char *path = DEFAULT_CONFIG;
    bool check_only = false, print_config = false;
    int opt;
    static const struct option long_opts[] = {
        { "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 't' },
        { "version", no_argument, NULL, 'v' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    while ((opt = getopt_long(argc, argv, "c:tTvh", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'T':
            check_only = print_config = true;
            break;
        case 'v':
            print_version();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "aigw: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    char err[1024];
    struct config *cfg = NULL;
    char tls_err[256];
    if (tls_global_init(tls_err, sizeof tls_err) != 0) {
        fprintf(stderr, "aigw: %s\n", tls_err);
        return 1;
    }
    if (config_load(path, &cfg, err, sizeof err) != 0 || config_check_files(cfg, err, sizeof err) != 0 ||
        config_tls_build(cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        config_free(cfg);
        return 1;
    }
    if (check_only) {
        if (print_config)
            config_print(cfg, stdout);
        else
            printf("configuration OK\n");
        config_free(cfg);
        return 0;
    }
    log_set_level(cfg->log.level);
    if (cfg->nroutes == 0)
        log_warn("no [route] configured: every request will get 404");

    /* every thread started from here inherits this mask; only main takes signals */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR1);
    sigaddset(&sigs, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    rt.nshards = cfg->server.shards ? cfg->server.shards : online_cpus();
    raise_nofile_limit(cfg, rt.nshards);
    /* key names since start get metric slots: room for the file to double */
    metrics_reserve_keys(2 * keyring_count(cfg->keys.ring) + 1024);
    if (metrics_init(rt.nshards) != 0) {
        log_error("cannot allocate metrics");
        return 1;
    }
    struct gen *g = gen_create(cfg, NULL, rt.nshards, err, sizeof err);
    if (!g) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (!cfg->keys.configured)
        log_warn("%s has no [keys] section: authentication is off, every client may call every route",
                 cfg->path);
    restore_daily_quotas(g);
    atomic_store(&rt.current, g);
    metrics_config_loaded(g->id);
    if (alog_init(rt.nshards, 0, cfg->log.access, cfg->log.access_path) != 0) {
        log_error("cannot open the access log");
        return 1;
    }
    handover_inherit_load();
    if (listeners_open(cfg, rt.nshards) != 0)
        return 1;
    if (cfg->admin.enabled && admin_start(&cfg->admin.listen, readiness_ready) != 0)
        return 1;
    handover_close_unadopted();
    if (watch_start() != 0)
        return 1;
    if (limits_sync_start() != 0)
        return 1;
    trace_configure(&cfg->tracing);
    if (trace_init(rt.nshards) != 0 || trace_exporter_start() != 0)
        return 1;
    if (shard_start_all() != 0) {
        log_error("cannot start shards");
        return 1;
    }
    uint64_t deadline = clock_mono_ms() + 10000;
    while (atomic_load(&rt.shards_running) < rt.nshards && clock_mono_ms() < deadline) {
        struct timespec nap = { 0, 2000000 };
        nanosleep(&nap, NULL);
    }
    atomic_store(&rt.ready, true);
    for (unsigned i = 0; i < cfg->server.nlisten; i++)
        log_info("listening on %s with %u shard(s)", cfg->server.listen[i].text, rt.nshards);
    if (handover_is_successor()) {
        /* systemd hears of us from the old process (MAINPID=), which is still the
         * unit's main one: it alone may notify under the default NotifyAccess=main */
        log_info("handover: serving as pid %d; the previous process stops accepting", (int)getpid());
        handover_ready();
    } else {
        sd_notifyf("READY=1\nSTATUS=serving on %s with %u shard(s)", cfg->server.listen[0].text,
                   rt.nshards);
    }

    bool handed_over = false;
    for (;;) {
        int sig = sigwaitinfo(&sigs, NULL);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            log_error("sigwaitinfo: %s", strerror(errno));
            break;
        }
        if (sig == SIGHUP) {
            if ((handed_over = reload(path)))
                break;
        } else if (sig == SIGUSR2) {
            if ((handed_over = hand_over("binary upgrade")))
                break;
        } else if (sig == SIGUSR1) {
            alog_reopen();
        } else {
            break;
        }
    }

    struct config *cur = atomic_load(&rt.current)->cfg;
    uint64_t drain_ms = cur->server.drain_timeout_ms;
    if (handed_over) {
        /* the admin socket is shared too: the successor answers /ready from now */
        admin_stop();
        atomic_store(&rt.handed_over, true);
        log_info("handover: draining in-flight requests for up to %llu ms", (unsigned long long)drain_ms);
    } else {
        log_info("stopping: draining in-flight requests for up to %llu ms", (unsigned long long)drain_ms);
        sd_notifyf("STOPPING=1\nSTATUS=draining");
    }
    /* at the deadline the shards cut what is left (logged and settled there);
     * main waits a little longer for that, then exits regardless */
    uint64_t cut_ms = clock_mono_ms() + drain_ms;
    atomic_store(&rt.drain_deadline_ms, cut_ms);
    atomic_store(&rt.draining, true);
    bool all_stopped = shard_join_all(cut_ms + DRAIN_CUT_GRACE_MS);
    watch_stop();
    limits_sync_stop(all_stopped);
    trace_exporter_stop();
    admin_stop();
    if (all_stopped)
        alog_shutdown();    /* frees the rings: only once no shard can write */
    log_info("stopped");
    /* shards still busy after the grace are cut off by the exit */
    _exit(0);
}
