/* The ciphertext a TLS connection sends, for the client transport
 * (transport_tls.c) and TLS to backends (upstream_tls.c) alike: one pool buffer,
 * taken while it holds bytes and returned once they are all on the wire; one
 * send in flight, reading [off, len); the engine's own bytes (handshake
 * flights, tickets, alerts, close_notify) queue behind it; an application send
 * is complete when its last record is on the wire. */
#ifndef AIGW_CORE_TLS_OUTBUF_H
#define AIGW_CORE_TLS_OUTBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct shard;
struct tls_conn;
struct xbuf;

struct tls_outbuf {
    struct xbuf *buf;               /* NULL: nothing to send */
    uint32_t app_end;               /* the application's send is on the wire when off reaches it */
    uint32_t app_bytes;             /* ... and it took this many plaintext bytes */
    bool sending;                   /* a send reads [off, len) */
    bool app_pending;               /* the application waits for app_bytes to be sent */
    const char *deferred_p;         /* an application send that found no room: encrypted */
    size_t deferred_n;              /* once what is in flight has gone */
};

/* The buffer (taken when needed; compacted when no send reads it), for bytes
 * written without the engine. NULL when out of memory. */
struct xbuf *tls_outbuf_buffer(struct shard *sh, struct tls_outbuf *o);
/* Points t's out window at the buffer before a call into the engine. */
bool tls_outbuf_window(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t);
/* After the call: what the engine appended. */
void tls_outbuf_taken(struct tls_outbuf *o, struct tls_conn *t);
/* Encrypts what fits of p[0..n) as the application's send (or defers it until
 * the send in flight completes). False when the engine failed. */
bool tls_outbuf_encrypt(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t, const char *p, size_t n);
/* The bytes to send now, unless a send is in flight or nothing waits (an empty
 * buffer goes back to the pool). Marks the send in flight. */
bool tls_outbuf_next(struct shard *sh, struct tls_outbuf *o, const char **p, size_t *n);
/* A send took n bytes: the application's plaintext bytes now complete (0: none
 * yet, or the send was the engine's own); -1 when encrypting a deferred send
 * failed. The caller sends what tls_outbuf_next gives after this. */
int tls_outbuf_sent(struct shard *sh, struct tls_outbuf *o, struct tls_conn *t, size_t n);
/* Everything written is on the wire. */
bool tls_outbuf_flushed(const struct tls_outbuf *o);
void tls_outbuf_free(struct shard *sh, struct tls_outbuf *o);

#endif
