/* Configuration errors are reported as FILE:LINE: message and exit 1, both by
 * `aigw -t` and by a plain start; a good file passes `aigw -t`. */
#include "harness.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

/* A valid configuration; each test replaces or inserts single lines, so the
 * line numbers of the comments below stay true. */
static void write_conf(const char *path, int listen_port, const char *server_extra,
                       const char *timeouts_extra, const char *pool_line, const char *tail)
{
    int p = listen_port ? listen_port : h_free_port(), a = h_free_port(), b = h_free_port();
    h_write_file(path,
                 "[server]\n"                        /* 1 */
                 "listen = 127.0.0.1:%d\n"           /* 2 */
                 "shards = 2\n"                      /* 3 */
                 "%s"                                /* 4: server_extra (one line) */
                 "\n"                                /* 5 */
                 "[admin]\n"                         /* 6 */
                 "listen = 127.0.0.1:%d\n"           /* 7 */
                 "\n"                                /* 8 */
                 "[timeouts]\n"                      /* 9 */
                 "connect = 1s\n"                    /* 10 */
                 "%s"                                /* 11: timeouts_extra (one line) */
                 "\n"                                /* 12 */
                 "[log]\n"                           /* 13 */
                 "access = off\n"                    /* 14 */
                 "level = info\n"                    /* 15 */
                 "\n"                                /* 16 */
                 "[pool local]\n"                    /* 17 */
                 "backend = 127.0.0.1:%d\n"          /* 18 */
                 "balance = round_robin\n"           /* 19 */
                 "\n"                                /* 20 */
                 "[route chat]\n"                    /* 21 */
                 "path = /v1/chat/completions\n"     /* 22 */
                 "%s"                                /* 23: pool line */
                 "%s",                               /* 24-: tail */
                 p, server_extra ? server_extra : "# nothing\n", a,
                 timeouts_extra ? timeouts_extra : "# nothing\n", b,
                 pool_line ? pool_line : "pool = local\n", tail ? tail : "");
}

/* True if stderr names path:line: (or path:alt_line: when alt_line is not 0). */
static bool names_line(const char *err, const char *path, int line, int alt_line)
{
    char want[600];
    snprintf(want, sizeof want, "%s:%d:", path, line);
    if (err && strstr(err, want)) return true;
    snprintf(want, sizeof want, "%s:%d:", path, alt_line);
    return alt_line && err && strstr(err, want);
}

/* Runs aigw on the file (with -t if check_only): it must exit 1 and
 * name FILE:LINE: on stderr. */
static void expect_refused(const char *tag, bool check_only, const char *path, int line, int alt_line,
                           const char *what)
{
    const char *argv_check[] = {h_aigw_bin(), "-t", "-c", path, NULL};
    const char *argv_run[] = {h_aigw_bin(), "-c", path, NULL};
    int st = h_run(tag, check_only ? argv_check : argv_run, 5000 * h_slow());
    char errpath[600];
    snprintf(errpath, sizeof errpath, "%s/%s.err", h_dir(), tag);
    char *err = h_read_file(errpath);
    const char *how = check_only ? "aigw -t -c" : "aigw -c";
    cr_assert(st != -1, "%s: %s with a bad file was still running after 5 s; stderr:\n%s", what, how,
              err ? err : "");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s: %s should exit 1, wait status 0x%x; stderr:\n%s",
              what, how, st, err ? err : "");
    cr_assert(names_line(err, path, line, alt_line), "%s: %s stderr should contain \"%s:%d:\"; it was:\n%s",
              what, how, path, line, err ? err : "(none)");
    free(err);
}

/* Both the check and a plain start (which must not start half-configured) refuse the file. */
static void expect_config_error(const char *path, int line, int alt_line, const char *what)
{
    expect_refused("check", true, path, line, alt_line, what);
    expect_refused("run", false, path, line, alt_line, what);
}

static char conf_path[512];
static void setup(void)
{
    h_setup();
    snprintf(conf_path, sizeof conf_path, "%s/aigw.conf", h_dir());
}

TestSuite(config, .init = setup, .fini = h_teardown, .timeout = 60);

Test(config, check_ok_prints_configuration_ok)
{
    write_conf(conf_path, 0, NULL, NULL, NULL, NULL);
    const char *argv[] = {h_aigw_bin(), "-t", "-c", conf_path, NULL};
    int st = h_run("check", argv, 5000 * h_slow());
    cr_assert(st != -1, "aigw -t did not exit within 5 s");
    char *conf = h_read_file(conf_path);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "aigw -t on a valid file should exit 0 (status 0x%x); stderr:\n%s\nfile:\n%s", st,
              h_tail("check"), conf);
    char out[4500];
    snprintf(out, sizeof out, "%s%s", h_tail_out("check"), h_tail("check"));
    cr_assert(strstr(out, "configuration OK"), "aigw -t should print \"configuration OK\"; got:\n%s",
              out);
    free(conf);
    h_finish();
}

Test(config, unknown_key_names_its_line)
{
    write_conf(conf_path, 0, NULL, "speed_of_light = 3s\n", NULL, NULL);
    expect_config_error(conf_path, 11, 0, "unknown key in [timeouts]");
    h_finish();
}

Test(config, unknown_section_names_its_line)
{
    /* tail: 24 blank, 25 the section, 26 its key. The section's line is right;
     * the line of its first key is accepted (inih reports keys, not sections). */
    write_conf(conf_path, 0, NULL, NULL, NULL, "\n[wormhole]\nsize = 3\n");
    expect_config_error(conf_path, 25, 26, "unknown section [wormhole]");
    h_finish();
}

Test(config, bad_duration_names_its_line)
{
    write_conf(conf_path, 0, NULL, "first_byte = 10 parsecs\n", NULL, NULL);
    expect_config_error(conf_path, 11, 0, "bad duration");
    h_finish();
}

Test(config, bad_size_names_its_line)
{
    write_conf(conf_path, 0, "max_body = lots\n", NULL, NULL, NULL);
    expect_config_error(conf_path, 4, 0, "bad size");
    h_finish();
}

Test(config, route_with_missing_pool_names_its_line)
{
    write_conf(conf_path, 0, NULL, NULL, "pool = nowhere\n", NULL);
    expect_config_error(conf_path, 23, 0, "route naming a missing pool");
    h_finish();
}

Test(config, duplicate_listener_names_its_line)
{
    /* Line 4 listens again on line 2's address. */
    int port = h_free_port();
    char again[64];
    snprintf(again, sizeof again, "listen = 127.0.0.1:%d\n", port);
    write_conf(conf_path, port, again, NULL, NULL, NULL);
    expect_config_error(conf_path, 4, 0, "duplicate listener");
    h_finish();
}

Test(config, admin_on_the_server_address_names_its_line)
{
    int p = h_free_port(), b = h_free_port();
    h_write_file(conf_path,
                 "[server]\n"                       /* 1 */
                 "listen = 127.0.0.1:%d\n"          /* 2 */
                 "\n"                               /* 3 */
                 "[admin]\n"                        /* 4 */
                 "listen = 127.0.0.1:%d\n"          /* 5 */
                 "\n"                               /* 6 */
                 "[pool local]\n"                   /* 7 */
                 "backend = 127.0.0.1:%d\n"         /* 8 */
                 "\n"                               /* 9 */
                 "[route all]\n"                    /* 10 */
                 "path = /v1/*\n"                   /* 11 */
                 "pool = local\n",                  /* 12 */
                 p, p, b);
    expect_config_error(conf_path, 5, 0, "admin listener on the server's address");
    h_finish();
}

/* A minimal valid file with `access = ` on line 8 and an optional [keys] file. */
static void write_conf_with_log(const char *path, const char *access, const char *keys_file)
{
    h_write_file(path,
                 "[server]\n"                       /* 1 */
                 "listen = 127.0.0.1:%d\n"          /* 2 */
                 "\n"                               /* 3 */
                 "[admin]\n"                        /* 4 */
                 "listen = 127.0.0.1:%d\n"          /* 5 */
                 "\n"                               /* 6 */
                 "[log]\n"                          /* 7 */
                 "access = %s\n"                    /* 8 */
                 "\n"                               /* 9 */
                 "[pool local]\n"                   /* 10 */
                 "backend = 127.0.0.1:%d\n"         /* 11 */
                 "\n"                               /* 12 */
                 "[route all]\n"                    /* 13 */
                 "path = /v1/*\n"                   /* 14 */
                 "pool = local\n"                   /* 15 */
                 "%s%s%s",                          /* 16-: [keys] */
                 h_free_port(), h_free_port(), access, h_free_port(),
                 keys_file ? "\n[keys]\nfile = " : "", keys_file ? keys_file : "", keys_file ? "\n" : "");
}

Test(config, access_log_the_daemon_cannot_open_names_its_line)
{
    char missing_dir[600], log_path[600];
    snprintf(missing_dir, sizeof missing_dir, "%s/no-such-dir/access.log", h_dir());
    write_conf_with_log(conf_path, missing_dir, NULL);
    expect_config_error(conf_path, 8, 0, "access log in a directory that does not exist");
    write_conf_with_log(conf_path, h_dir(), NULL);
    expect_config_error(conf_path, 8, 0, "access log path that is a directory");

    /* an openable one passes, and the check leaves what it holds alone */
    snprintf(log_path, sizeof log_path, "%s/access.log", h_dir());
    h_write_file(log_path, "{\"earlier\":\"line\"}\n");
    write_conf_with_log(conf_path, log_path, NULL);
    const char *argv[] = {h_aigw_bin(), "-t", "-c", conf_path, NULL};
    int st = h_run("check-ok", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw -t refused an openable access log:\n%s",
              h_tail("check-ok"));
    char *kept = h_read_file(log_path);
    cr_assert(kept && strcmp(kept, "{\"earlier\":\"line\"}\n") == 0, "aigw -t changed the access log: %s",
              kept ? kept : "(gone)");
    free(kept);
    h_finish();
}

/* stderr of <tag> holds none of the bytes a terminal would act on or garble;
 * shows_escape: the message quotes the file's ESC byte, as \x1b. */
static void expect_printable(const char *tag, const char *what, bool shows_escape)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.err", h_dir(), tag);
    char *err = h_read_file(path);
    cr_assert(err && *err, "%s: nothing on stderr", what);
    for (const unsigned char *p = (const unsigned char *)err; *p; p++)
        cr_assert((*p >= 0x20 && *p < 0x7f) || *p == '\n', "%s: raw byte 0x%02x at offset %zu of stderr: %s",
                  what, *p, (size_t)(p - (const unsigned char *)err), err);
    cr_assert(!shows_escape || strstr(err, "\\x1b"), "%s: the escape byte is not shown as \\x1b: %s", what, err);
    free(err);
}

/* Terminal escapes (set the title, clear the screen) and bytes that are not text. */
#define BINARY_BYTES "\x1b]0;pwned\x07\x1b[2J\xff\xfe\x80 = 1\n"

Test(config, binary_file_is_reported_without_raw_bytes)
{
    FILE *f = fopen(conf_path, "w");
    cr_assert_not_null(f);
    fputs(BINARY_BYTES, f);
    fclose(f);
    const char *argv[] = {h_aigw_bin(), "-t", "-c", conf_path, NULL};
    int st = h_run("binary", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "aigw -t on a binary file: status 0x%x", st);
    expect_printable("binary", "binary configuration file", true);

    char keys[600];
    snprintf(keys, sizeof keys, "%s/keys", h_dir());
    f = fopen(keys, "w");
    cr_assert_not_null(f);
    fputs(BINARY_BYTES, f);
    fclose(f);
    write_conf_with_log(conf_path, "off", keys);
    st = h_run("binary-keys", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1, "aigw -t with a binary keys file: status 0x%x",
              st);
    expect_printable("binary-keys", "binary keys file", false);
    h_finish();
}

/* ---- [tls] ---------------------------------------------------------------------- */

/* The throwaway PKI of tests/tls/make-certs.sh in h_dir()/certs (real files, so
 * these tests hold once loading the configuration also loads the certificates). */
static void make_certs(void)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/certs", h_dir());
    const char *argv[] = {"/bin/sh", "tests/tls/make-certs.sh", dir, NULL};
    int st = h_run("make-certs", argv, 60000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "make-certs.sh failed (0x%x):\n%s", st,
              h_tail("make-certs"));
}

Test(config, tls_errors_name_their_line)
{
    char tail[256];
    int port = h_free_port();
    /* tail: 24 blank, 25 [tls], 26 listen, 27 cert, 28 its key missing */
    snprintf(tail, sizeof tail, "\n[tls]\nlisten = 127.0.0.1:%d\ncert = certs/server.pem\n", port);
    write_conf(conf_path, 0, NULL, NULL, NULL, tail);
    expect_config_error(conf_path, 27, 0, "cert without its key");

    snprintf(tail, sizeof tail,
             "\n[tls]\nlisten = 127.0.0.1:%d\ncert = certs/server.pem\nkey = certs/server.key\nmin_version = 1.1\n",
             port);
    write_conf(conf_path, 0, NULL, NULL, NULL, tail);
    expect_config_error(conf_path, 29, 0, "min_version 1.1");

    snprintf(tail, sizeof tail, "\n[tls]\nlisten = 127.0.0.1:%d\n", port);
    write_conf(conf_path, 0, NULL, NULL, NULL, tail);
    expect_config_error(conf_path, 25, 0, "[tls] without a cert");
    h_finish();
}

Test(config, print_shows_every_tls_key)
{
    make_certs();
    int tls_port = h_free_port(), backend = h_free_port();
    h_write_file(conf_path,
                 "[server]\nlisten = 127.0.0.1:%d\n[admin]\nlisten = off\n"
                 "[tls]\nlisten = 127.0.0.1:%d\n"
                 "cert = certs/server.pem\nkey = certs/server.key\n"
                 "cert = certs/wild.pem\nkey = certs/wild.key\n"
                 "client_ca = certs/ca.pem\nhandshake_timeout = 3s\n"
                 "[pool remote]\nbackend = 127.0.0.1:%d\ntls = on\ntls_ca = certs/ca.pem\n"
                 "tls_server_name = aigw.test\n"
                 "[pool plain]\nbackend = 127.0.0.1:%d\n"
                 "[route all]\npath = /v1/*\npool = remote\n",
                 h_free_port(), tls_port, backend, backend);
    const char *argv[] = {h_aigw_bin(), "-T", "-c", conf_path, NULL};
    int st = h_run("print", argv, 5000 * h_slow());
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw -T exited 0x%x:\n%s", st,
              h_tail("print"));
    char out_path[600];
    snprintf(out_path, sizeof out_path, "%s/print.out", h_dir());
    char *out = h_read_file(out_path);
    cr_assert(out, "no stdout from aigw -T");

    const char *d = h_dir();
    char want[3][2048];
    snprintf(want[0], sizeof want[0],
             "\n[tls]\nlisten = 127.0.0.1:%d\n"
             "cert = %s/certs/server.pem\nkey = %s/certs/server.key\n"
             "cert = %s/certs/wild.pem\nkey = %s/certs/wild.key\n"
             "min_version = 1.2\n"
             "ciphers =                        ; the default order of the linked wolfSSL (aigw -v)\n"
             "client_ca = %s/certs/ca.pem\n"
             "session_tickets = on\nticket_key_rotation = 1h\nhandshake_timeout = 3s\n\n",
             tls_port, d, d, d, d, d);
    snprintf(want[1], sizeof want[1], "\ntls = on\ntls_ca = %s/certs/ca.pem\ntls_server_name = aigw.test\n\n", d);
    snprintf(want[2], sizeof want[2], "\ntls = off\ntls_ca =\ntls_server_name =\n\n");
    for (int i = 0; i < 3; i++)
        cr_expect(strstr(out, want[i]), "aigw -T should print:\n%s\n--- it printed ---\n%s", want[i], out);
    cr_expect_null(strstr(out, "configuration OK"), "-T prints the configuration, not the verdict");

    /* what it prints is a configuration aigw accepts */
    char again[600];
    snprintf(again, sizeof again, "%s/printed.conf", h_dir());
    h_write_file(again, "%s", out);
    const char *argv_check[] = {h_aigw_bin(), "-t", "-c", again, NULL};
    st = h_run("check-printed", argv_check, 5000 * h_slow());
    cr_expect(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "aigw -t refused what -T printed:\n%s",
              h_tail("check-printed"));
    free(out);
    h_finish();
}

Test(config, reload_applies_a_new_tls_certificate_in_place)
{
    make_certs();
    struct h_gw g = {0};
    int first = h_free_port(), backend = h_free_port();
    static const char body[] =
        "[tls]\nlisten = 127.0.0.1:%d\ncert = certs/%s.pem\nkey = certs/%s.key\n"
        "[pool p]\nbackend = 127.0.0.1:%d\n[route all]\npath = /v1/*\npool = p\n";
    h_gw_config(&g, NULL, body, first, "server", "server", backend);
    cr_assert_eq(h_gw_start(&g), 0, "aigw did not start:\n%s", h_tail(g.tag));

    /* another certificate applies on reload, in this process (a new [tls] listen
     * takes a new one: test_handover.c) */
    h_gw_config(&g, NULL, body, first, "server2", "server2", backend);
    H_RELOAD(&g, H_RELOAD_APPLIED);
    /* a handover, when there is one, is logged before the reload would be published */
    cr_expect_not(h_wait_log_line(g.tag, "handover", NULL, 0),
                  "a certificate change must not need a new process:\n%s", h_tail(g.tag));
    h_finish();
}
