/* What the files of src/tls share: the objects behind the opaque types of
 * tls.h and the helpers one file provides to another. Nothing outside
 * src/tls includes this. */
#ifndef AIGW_TLS_INTERNAL_H
#define AIGW_TLS_INTERNAL_H

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <stdatomic.h>

#include "tls/tls.h"

/* SNI names per certificate we keep (SAN DNS names, else the CN). */
#define TLS_MAX_NAMES 32
#define TLS_NAME_MAX 256

struct tls_cert_ctx {
    WOLFSSL_CTX *ctx;
    unsigned nnames;
    char names[TLS_MAX_NAMES][TLS_NAME_MAX];    /* lower case; "*.x.y" kept as is */
};

struct tls_server {
    atomic_uint refs;       /* the owner's reference plus one per live tls_conn */
    uint64_t ticket_rotation_ms;    /* the ticket callback's argument */
    unsigned ncerts;        /* certs[0] is the default */
    struct tls_cert_ctx certs[TLS_MAX_CERTS];
};

struct tls_client {
    atomic_uint refs;
    WOLFSSL_CTX *ctx;
};

/* A ClientHello record collected before the WOLFSSL exists (the SNI picks the
 * context it is made from). Allocated only while a first record arrives in
 * pieces; freed when wolfSSL has read it. */
struct tls_hello {
    size_t len, need, off;  /* have, want (5 until the header is known), handed to wolfSSL */
    unsigned char buf[];
};

struct tls_conn {
    WOLFSSL *ssl;               /* server side: NULL until the first record picked the context */
    struct tls_server *server;  /* exactly one of server/client is set */
    struct tls_client *client;
    struct tls_io io;
    struct tls_hello *hello;
    int error;                  /* wolfSSL's code of the failure; 0: none */
    enum tls_fail_reason reason;
    const char *detail;         /* set when the engine itself failed the connection */
    size_t write_pending;       /* plaintext bytes wolfSSL took but could not flush */
};

/* tls_server.c: the context a ClientHello's SNI (NULL: none) selects. */
WOLFSSL_CTX *tls_server_pick(const struct tls_server *s, const char *sni);
void tls_server_ref(struct tls_server *s);

/* tls_client.c */
void tls_client_ref(struct tls_client *c);

/* tls_conn.c: installs the memory I/O callbacks on a new WOLFSSL. */
void tls_conn_attach_io(struct tls_conn *t);

/* tls_tickets.c: sets the ticket callback (or turns tickets off) on a server context. */
int tls_tickets_setup(WOLFSSL_CTX *ctx, const struct cfg_tls *cfg, const uint64_t *rotation_ms);
int tls_tickets_init(char *err, size_t errlen);

/* tls_lib.c */
int tls_set_groups(WOLFSSL_CTX *ctx);    /* X25519, P-256, P-384 */
void tls_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *tls_wolf_error_string(int code, char *buf, size_t cap);

#endif
