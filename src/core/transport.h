/* The transport seam: how a client connection's bytes reach the HTTP layer and
 * leave it. conn.c receives and sends only through these calls; relay.c splices
 * only when the transport says the bytes on the wire are the HTTP bytes.
 *
 * Plaintext (transport.c) and TLS (transport_tls.c). TLS: `received` decrypts what
 * the ring brought and delivers plaintext (zero or more times, possibly later,
 * from a handshake's completion), `send` encrypts into a buffer of its own and
 * puts the ciphertext on the ring. An HTTP/2 framer would sit at the same place,
 * delivering each stream's bytes to its own request (see docs/ARCHITECTURE.md). */
#ifndef AIGW_CORE_TRANSPORT_H
#define AIGW_CORE_TRANSPORT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

struct conn;
struct xbuf;

/* Where a transport hands the application's bytes (conn.c's request parser). */
typedef void transport_deliver_fn(struct conn *c, const char *p, size_t n);

struct transport_ops {
    const char *name;
    /* The bytes on the socket are the HTTP stream itself: the response relay may
     * splice socket to socket. False for any transport that transforms them. */
    bool zero_copy;
    /* n bytes came from the socket: deliver what they carry for the HTTP layer. */
    void (*received)(struct conn *c, const char *p, size_t n, transport_deliver_fn *deliver);
    /* Puts p[0..n) on the way to the client: one send in flight per connection;
     * its completion is the connection's OP_CLIENT_SEND with the count of
     * application bytes it took. owner: the buffer p lies in (NULL: static). */
    void (*send)(struct conn *c, struct xbuf *owner, const char *p, size_t n);
    /* An OP_CLIENT_SEND completed with res. Returns what the HTTP layer's send
     * completion is (application bytes taken, or -errno), or TRANSPORT_SENT_OWN
     * when it was the transport's own send (a handshake flight, the rest of a
     * record). NULL: res is the HTTP layer's. */
    int (*sent)(struct conn *c, int res);
    /* The connection is freed (no operation in flight): let go of the transport's
     * state. NULL: none. */
    void (*release)(struct conn *c);
    /* aigw closes the connection cleanly (after a response, or idle): say so to
     * the peer first (TLS close_notify). True when the transport closes the
     * connection itself once that went out. NULL: nothing to say. */
    bool (*close_notify)(struct conn *c);
};
#define TRANSPORT_SENT_OWN INT_MIN

extern const struct transport_ops transport_plain;

#endif
