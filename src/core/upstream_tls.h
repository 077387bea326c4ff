/* TLS to backends (upstream_tls.c): the engine (src/tls) between an upstream
 * connection's socket and the request that uses it, for pools with `tls = on`.
 *
 * Ciphertext never reaches conn.c or relay.c: a send encrypts into a pool buffer
 * of the connection (held only while ciphertext waits to go out) and its
 * completion reports the plaintext bytes taken; a receive reads ciphertext into
 * a buffer of the connection and decrypts into the buffer the caller named,
 * re-arming itself while a record is incomplete. Completions reach the request
 * as OP_UP_SEND / OP_UP_RECV results, exactly as on a plaintext connection. */
#ifndef AIGW_CORE_UPSTREAM_TLS_H
#define AIGW_CORE_UPSTREAM_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/ring.h"

struct cfg_backend;
struct cfg_pool;
struct tls_session;
struct upconn;

/* Connected: the handshake starts (session: the backend's saved one on this
 * shard, or NULL). conn_upstream_ready follows once it is complete; a failure
 * is the attempt's connect failure (conn_attempt_failed) with the engine's reason. */
void upstream_tls_start(struct upconn *u, const struct cfg_pool *pool, struct tls_session *session);
/* Encrypts what fits of p[0..n) and sends it; the OP_UP_SEND result is the
 * plaintext bytes taken (possibly fewer than n: the caller sends the rest). */
void upstream_tls_send(struct upconn *u, const char *p, size_t n);
/* Plaintext wanted in dst[0..cap): the OP_UP_RECV result is the bytes put there,
 * 0 when the backend closed (close_notify or EOF), -errno on error. */
void upstream_tls_recv(struct upconn *u, char *dst, size_t cap);
/* A send, receive or NOP of the TLS layer completed. */
void upstream_tls_on_cqe(struct upconn *u, enum op op, int res);
/* A response was read whole: the connection's session (when the engine has
 * one and none was saved from this connection) replaces *session, the one the
 * backend's next new connection on this shard resumes. */
void upstream_tls_save_session(struct upconn *u, struct tls_session **session);
/* The connection goes back to the pool: tickets and other post-handshake
 * messages received so far are consumed and the idle watch is armed. False: it
 * cannot be kept (stray application data, a close, a send still pending). */
bool upstream_tls_pool(struct upconn *u);
/* The name backend b of pool must prove (SNI and verification): the pool's
 * tls_server_name, else b's host as written in the configuration. */
void upstream_tls_server_name(const struct cfg_pool *pool, const struct cfg_backend *b, char *out, size_t cap);
/* Its resources, once no operation is in flight. */
void upstream_tls_free(struct upconn *u);

#endif
