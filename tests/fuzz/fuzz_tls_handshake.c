/* libFuzzer target: arbitrary bytes as a client's first flight into the
 * server side of the TLS engine, in one or several chunks. The first input
 * byte picks the chunk size (0: all at once), the rest is the flight. The
 * engine never reads past the window it is given, never writes past the room
 * it has, answers every failure with a reason, and frees everything (ASan).
 * The certificates come from tests/tls/make-certs.sh, run by the Makefile into
 * AIGW_FUZZ_CERTS before the target runs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls/tls.h"

#ifndef AIGW_FUZZ_CERTS
#define AIGW_FUZZ_CERTS "build/fuzz/certs"
#endif

static struct tls_server *server;
static char out[64 * 1024];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char err[512];
    if (tls_global_init(err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_tls_handshake: %s\n", err);
        abort();
    }
    struct cfg_tls c;
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.ncerts = 2;
    snprintf(c.certs[0].cert, PATH_MAX, "%s/server.pem", AIGW_FUZZ_CERTS);
    snprintf(c.certs[0].key, PATH_MAX, "%s/server.key", AIGW_FUZZ_CERTS);
    snprintf(c.certs[1].cert, PATH_MAX, "%s/wild.pem", AIGW_FUZZ_CERTS);
    snprintf(c.certs[1].key, PATH_MAX, "%s/wild.key", AIGW_FUZZ_CERTS);
    c.min_version = 12;
    c.session_tickets = true;
    c.ticket_rotation_ms = 3600 * 1000;
    server = tls_server_new(&c, "fuzz.conf", NULL, NULL, err, sizeof err);
    if (!server) {
        fprintf(stderr, "fuzz_tls_handshake: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t chunk = data[0] ? data[0] : SIZE_MAX;
    data++, size--;
    struct tls_conn *t = tls_conn_new_server(server);
    if (!t)
        return 0;
    struct tls_io *io = tls_conn_io(t);
    enum tls_status st = TLS_WANT;
    for (size_t off = 0; off < size && st == TLS_WANT;) {
        size_t n = size - off < chunk ? size - off : chunk;
        /* a fresh copy per call: the engine must not keep pointers into a window */
        char *in = malloc(n);
        memcpy(in, data + off, n);
        io->in = in;
        io->in_len = n;
        io->in_off = 0;
        io->out = out;
        io->out_cap = sizeof out;
        io->out_len = 0;
        st = tls_handshake(t);
        if (io->in_off > io->in_len || io->out_len > io->out_cap)
            abort();
        if (st == TLS_FAILED && tls_fail_reason(t) == TLS_FAIL_NONE)
            abort();
        if (st == TLS_FAILED && !tls_fail_detail(t))
            abort();
        off += io->in_off;
        free(in);
        if (io->in_off < n && st == TLS_WANT)
            break;   /* it waits for the server's own flight to be sent: stop here */
        io->in = NULL;
        io->in_len = io->in_off = 0;
    }
    struct tls_info info;
    tls_conn_info(t, &info);
    tls_conn_free(t);
    return 0;
}
