/* `make install DESTDIR=... PREFIX=/usr` produces an install that starts: the
 * unit names the binary where PREFIX put it and passes `systemd-analyze verify`
 * inside the installed tree; sysusers and tmpfiles (run into that tree) create
 * the aigw user and give /etc/aigw and its keys file the group and mode the
 * service user needs to read them; the logrotate snippet parses; aigw.conf(5)
 * renders; aigw-mockllm (a test backend) is not installed unless asked for. */
#include "harness.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(install, .init = h_setup, .fini = h_teardown, .timeout = 120);

/* Runs argv; asserts exit 0 and, with quiet, nothing on stderr. Returns stdout (malloc'd). */
static char *run_ok(const char *tag, const char *const argv[], bool quiet)
{
    char *out = NULL;
    int st = h_run_io(tag, argv, NULL, 60000 * h_slow(), &out);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (status 0x%x):\n%s\n%s", argv[0], st,
              out ? out : "", h_tail(tag));
    if (quiet)
        cr_assert_str_eq(h_tail(tag), "", "%s complained:\n%s", argv[0], h_tail(tag));
    return out ? out : strdup("");
}

static void expect_mode(const char *root, const char *path, unsigned mode, uid_t uid, gid_t gid)
{
    char full[1024];
    struct stat st;
    snprintf(full, sizeof full, "%s%s", root, path);
    cr_assert_eq(stat(full, &st), 0, "%s is missing", path);
    cr_expect_eq(st.st_mode & 07777, mode, "%s: mode %o, want %o", path, st.st_mode & 07777, mode);
    if (uid != (uid_t)-1)
        cr_expect_eq(st.st_uid, uid, "%s: owner %u, want %u", path, st.st_uid, uid);
    if (gid != (gid_t)-1)
        cr_expect_eq(st.st_gid, gid, "%s: group %u, want %u", path, st.st_gid, gid);
}

/* The aigw group's id in root's /etc/group, or -1. */
static gid_t group_in(const char *root, const char *name)
{
    char path[1100], line[512];
    snprintf(path, sizeof path, "%s/etc/group", root);
    FILE *f = fopen(path, "r");
    gid_t gid = (gid_t)-1;
    size_t n = strlen(name);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            unsigned g;
            if (sscanf(line + n, ":%*[^:]:%u:", &g) == 1)
                gid = g;
        }
    if (f)
        fclose(f);
    return gid;
}

Test(install, prefix_usr_installs_a_unit_that_verifies_and_a_readable_keys_dir)
{
    cr_assert_eq(geteuid(), 0, "the install test runs as root (systemd-tmpfiles sets owners)");
    char root[1024], build[1024], destdir[1100], buildvar[1100];
    snprintf(root, sizeof root, "%s/root", h_dir());
    /* the build the tests run (build, or build/asan): nothing is rebuilt */
    char bin[1024];
    snprintf(bin, sizeof bin, "%s", getenv("AIGW_BIN"));
    snprintf(build, sizeof build, "%s", dirname(bin));
    snprintf(destdir, sizeof destdir, "DESTDIR=%s", root);
    snprintf(buildvar, sizeof buildvar, "BUILD=%s", build);
    /* a make of its own, not a job of the `make test` that may be running
     * this; `-o all`: it installs the binaries under test and never rebuilds
     * them while other tests run them */
    const char *make[] = { "/usr/bin/env", "-u", "MAKEFLAGS", "-u", "MFLAGS", "-u", "MAKELEVEL", "make",
                           "--no-print-directory", "-o", "all", "install", destdir, "PREFIX=/usr", buildvar,
                           NULL };
    free(run_ok("make-install", make, false));

    char path[1200];
    snprintf(path, sizeof path, "%s/lib/systemd/system/aigw.service", root);
    char *unit = h_read_file(path);
    cr_assert_not_null(unit);
    cr_expect(strstr(unit, "\nExecStart=/usr/bin/aigw -c /etc/aigw.conf\n"), "ExecStart follows PREFIX:\n%s", unit);
    cr_expect(strstr(unit, "\nExecReload=/usr/bin/aigw -t -c /etc/aigw.conf\nExecReload=/bin/kill -HUP $MAINPID\n"),
              "reload checks the file first:\n%s", unit);
    cr_expect_null(strstr(unit, "/usr/local"), "nothing of the default PREFIX is left:\n%s", unit);
    /* `systemctl reload` runs the first ExecReload as written: against a bad
     * file it must fail, with FILE:LINE, before any SIGHUP is sent */
    const char *reload = strstr(unit, "\nExecReload=");
    cr_assert_not_null(reload);
    char cmd0[512], bad[1100], shcmd[4096];
    snprintf(cmd0, sizeof cmd0, "%.*s", (int)strcspn(reload + 12, "\n"), reload + 12);
    snprintf(bad, sizeof bad, "%s/bad.conf", h_dir());
    h_write_file(bad, "[server]\nlisten = 127.0.0.1:1\ndrian_timeout = 5s\n");
    /* the installed binary and the bad file in place of /usr/bin/aigw and /etc/aigw.conf */
    snprintf(shcmd, sizeof shcmd, "set -- %s; shift; exec '%s/usr/bin/aigw' \"$1\" \"$2\" '%s'", cmd0, root, bad);
    const char *check[] = { "/bin/sh", "-c", shcmd, NULL };
    char *out = NULL;
    int st = h_run_io("execreload", check, NULL, 10000 * h_slow(), &out);
    free(out);
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 1, "ExecReload's check passed a bad file (status 0x%x)", st);
    cr_expect(strstr(h_tail("execreload"), "bad.conf:3: unknown key 'drian_timeout'"), "%s", h_tail("execreload"));
    cr_expect_null(strstr(unit, "@BINDIR@"));
    free(unit);
    snprintf(path, sizeof path, "%s/usr/bin/aigw-mockllm", root);
    cr_expect_neq(access(path, F_OK), 0, "aigw-mockllm is a test backend: not installed by default");
    expect_mode(root, "/usr/bin/aigw", 0755, 0, (gid_t)-1);
    expect_mode(root, "/etc/aigw", 0750, (uid_t)-1, (gid_t)-1);

    /* What the README's install steps run next, into the installed tree: the
     * operator's root-only keys file ends up readable by the service's group. */
    snprintf(path, sizeof path, "%s/etc/aigw/keys", root);
    h_write_file(path, "# keys\n");
    cr_assert_eq(chmod(path, 0600), 0);
    char rootopt[1100];
    snprintf(rootopt, sizeof rootopt, "--root=%s", root);
    const char *sysusers[] = { "/usr/bin/systemd-sysusers", rootopt, NULL };
    free(run_ok("sysusers", sysusers, false));
    const char *tmpfiles[] = { "/usr/bin/systemd-tmpfiles", rootopt, "--create", NULL };
    free(run_ok("tmpfiles", tmpfiles, false));
    gid_t aigw = group_in(root, "aigw");
    cr_assert_neq(aigw, (gid_t)-1, "sysusers made no aigw group");
    expect_mode(root, "/etc/aigw", 0750, 0, aigw);
    expect_mode(root, "/etc/aigw/keys", 0640, 0, aigw);
    expect_mode(root, "/var/log/aigw", 0750, (uid_t)-1, aigw);

    /* systemd-analyze resolves the unit's paths and targets inside root: give it
     * the system's own targets, as a real root has them */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/usr/lib/systemd/system' && cp -r /lib/systemd/system/*.target "
             "/lib/systemd/system/system.slice '%s/usr/lib/systemd/system/' 2>/dev/null; "
             "exec systemd-analyze verify --man=no --root='%s' '%s/lib/systemd/system/aigw.service'",
             root, root, root, root);
    const char *verify[] = { "/bin/sh", "-c", cmd, NULL };
    free(run_ok("verify", verify, true));

    /* logrotate looks its users up on this host, which has no aigw user: the
     * snippet is parsed with root in its place */
    snprintf(path, sizeof path, "%s/etc/logrotate.d/aigw", root);
    char *rotate = h_read_file(path);
    cr_assert_not_null(rotate);
    char *create = strstr(rotate, "create 0640 aigw aigw");
    cr_assert_not_null(create, "new logs are the service user's:\n%s", rotate);
    memcpy(create, "create 0640 root root", strlen("create 0640 root root"));
    snprintf(path, sizeof path, "%s/logrotate.conf", h_dir());
    h_write_file(path, "%s", rotate);
    free(rotate);
    char state[1100];
    snprintf(state, sizeof state, "%s/logrotate.state", h_dir());
    const char *logrotate[] = { "/usr/sbin/logrotate", "--debug", "--state", state, path, NULL };
    free(run_ok("logrotate", logrotate, false));
    cr_expect_null(strstr(h_tail("logrotate"), "error"), "logrotate:\n%s", h_tail("logrotate"));

    snprintf(path, sizeof path, "%s/usr/share/man/man5/aigw.conf.5", root);
    snprintf(cmd, sizeof cmd, "MANWIDTH=100 man -l '%s' | col -b", path);
    const char *man[] = { "/bin/sh", "-c", cmd, NULL };
    char *page = run_ok("man", man, false);
    cr_expect(strstr(page, "AIGW.CONF(5)"), "%.2000s", page);
    cr_expect(strstr(page, "max_connections"), "the [server] table is in the page");
    cr_expect(strstr(page, "duplicate key name") || strstr(page, "requests_per_minute"),
              "the later sections are in the page");
    free(page);
    h_finish();
}
