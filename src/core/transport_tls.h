/* The TLS client transport (transport_tls.c): a connection accepted on a [tls]
 * listener reaches the HTTP layer through the engine in src/tls. Ciphertext
 * comes from the shard's multishot recv and is decrypted into the shard's
 * plaintext scratch; what the HTTP layer sends is encrypted into one pool buffer
 * per connection (held only while it has bytes to send) and put on the ring,
 * one send in flight as for plaintext. */
#ifndef AIGW_CORE_TRANSPORT_TLS_H
#define AIGW_CORE_TRANSPORT_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tls_outbuf.h"
#include "core/transport.h"

struct conn;
struct shard;
struct tls_conn;
struct xbuf;

extern const struct transport_ops transport_tls;

/* Per TLS connection; from the shard's free list (a slab: nothing per request). */
struct tls_link {
    struct tls_link *next_free;
    struct tls_conn *t;             /* NULL once freed */
    struct tls_outbuf out;          /* ciphertext on its way to the client */
    bool handshaken;
    bool close_when_flushed;        /* a failed handshake's alert, a plain-HTTP answer */
    bool seen_bytes;                /* the first bytes came (plain HTTP is told from them) */
    bool failure_counted;           /* the handshake's failure is in the metrics */
    char subject[96];               /* the client certificate's subject (mTLS), "" without */
};

/* A connection was accepted on a [tls] listener: its engine connection from the
 * shard's current generation, and handshake_timeout to complete the handshake.
 * False when out of memory (the caller closes it). */
bool transport_tls_begin(struct conn *c);
/* handshake_timeout passed before the handshake completed: counted and closed. */
void transport_tls_expired(struct conn *c);

/* For the access log: what the handshake settled (NULLs/"" when c is plaintext). */
struct tls_log_facts {
    const char *version, *cipher, *sni, *subject;
};
void transport_tls_facts(const struct conn *c, struct tls_log_facts *f);

#endif
