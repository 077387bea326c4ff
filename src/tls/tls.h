/* TLS over aigw's own buffers (wolfSSL). No socket is ever handed to wolfSSL:
 * its I/O callbacks read ciphertext from a window the caller sets (what the
 * ring's recv brought) and append the ciphertext it writes to a buffer the
 * caller owns and puts on the ring. src/tls includes nothing of src/core: the
 * client transport (core/transport_tls.c) and the upstream side drive it.
 *
 * Objects:
 *   struct tls_server   one per configuration generation: a context per
 *                       certificate, the SNI table, ALPN, versions, ciphers,
 *                       client CA. Immutable once built; shared by all shards.
 *   struct tls_client   one per pool with `tls = on`: CA bundle, verification.
 *   struct tls_conn     one per TLS connection (client side or server side).
 *                       Used by one shard thread only.
 * Ticket keys are process-wide (not per generation), so resumption survives a
 * reload; they rotate by epoch and the previous epoch's key still decrypts. */
#ifndef AIGW_TLS_TLS_H
#define AIGW_TLS_TLS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tls_session;

/* ---- configuration ([tls] section; filled by core/config.c) ---- */

#define TLS_MAX_CERTS 16

struct cfg_tls_cert {
    char cert[PATH_MAX];        /* PEM chain: leaf first */
    char key[PATH_MAX];         /* PEM private key of the leaf */
    int cert_line, key_line;    /* where they were configured (0: not given) */
};

struct cfg_tls {
    bool enabled;                       /* a [tls] section with at least one listen */
    struct cfg_tls_cert certs[TLS_MAX_CERTS];
    unsigned ncerts;
    int min_version;                    /* 12 (default) or 13 */
    int min_version_line;
    char ciphers[1024];                 /* wolfSSL cipher list; empty: tls_default_ciphers() */
    int ciphers_line;
    char client_ca[PATH_MAX];           /* set: client certificates required (mTLS) */
    int client_ca_line;
    bool session_tickets;               /* default on */
    uint64_t ticket_rotation_ms;        /* ticket key epoch length; default 1h */
    uint64_t handshake_timeout_ms;      /* default 10s */
};

/* ---- library facts, for `aigw -v` and the startup log ---- */

const char *tls_library_version(void);          /* "wolfSSL 5.5.4" */
/* The server's default cipher order: the fastest first on the linked library
 * (measured: ChaCha20-Poly1305 before AES-GCM when AES has no hardware path). */
const char *tls_default_ciphers(void);
/* One line on what the linked wolfSSL offers: versions, AEADs (and whether AES
 * has a hardware path), groups, session tickets. */
void tls_describe_library(char *out, size_t cap);

/* Once per process, before any other call (wolfSSL_Init, allocators, the
 * ticket master secret). 0 or -1 with a message in err. */
int tls_global_init(char *err, size_t errlen);

/* ---- server side ---- */

struct tls_server;

/* A warning found while building (an expired certificate): reported, not fatal. */
typedef void tls_warn_fn(void *arg, const char *file_line_message);

/* Builds the contexts from cfg: loads every cert/key pair, checks that each key
 * matches its certificate, reads each certificate's names (SAN DNS names, else
 * CN) for SNI, loads client_ca, sets versions, ciphers, ALPN (http/1.1 only),
 * tickets. On error returns NULL and writes "FILE:LINE: message" to err, where
 * FILE is conf_path and LINE the offending key's line (unreadable file, bad PEM,
 * key not matching its certificate, unknown cipher list, bad CA file). An
 * expired (or not yet valid) certificate is a warning through warn. */
struct tls_server *tls_server_new(const struct cfg_tls *cfg, const char *conf_path,
                                  tls_warn_fn *warn, void *warn_arg, char *err, size_t errlen);
/* Frees it once no tls_conn made from it remains (connections made from an old
 * generation keep theirs alive: reference counted, last one out frees). */
void tls_server_release(struct tls_server *s);

/* ---- client side (to backends) ---- */

struct tls_client;

/* ca_file: PEM bundle; NULL or "": the system's (/etc/ssl/certs/ca-certificates.crt).
 * Verification is always on (peer certificate chain and server name). */
struct tls_client *tls_client_new(const char *ca_file, char *err, size_t errlen);
void tls_client_release(struct tls_client *c);

/* ---- connections ---- */

struct tls_conn;

/* The ciphertext windows of one call. The caller points `in` at bytes received
 * and `out` at free space in its send buffer before each call into the engine;
 * the engine consumes from in (in_off advances) and appends to out (out_len
 * advances). When in runs dry, wolfSSL is told WANT_READ; when out is full,
 * WANT_WRITE (callers size out so that a write of tls_write_room() fits). */
struct tls_io {
    const char *in;
    size_t in_len, in_off;
    char *out;
    size_t out_len, out_cap;
};

/* NULL when out of memory. */
struct tls_conn *tls_conn_new_server(struct tls_server *s);
/* server_name: SNI sent and the name verified. session: from
 * tls_conn_save_session of an earlier connection to the same backend, or NULL. */
struct tls_conn *tls_conn_new_client(struct tls_client *c, const char *server_name,
                                     struct tls_session *session);
void tls_conn_free(struct tls_conn *t);

struct tls_io *tls_conn_io(struct tls_conn *t);

enum tls_status {
    TLS_OK,             /* done (handshake complete / bytes moved) */
    TLS_WANT,           /* needs more ciphertext in (or room out): call again */
    TLS_CLOSED,         /* the peer sent close_notify */
    TLS_FAILED,         /* fatal: flush out (an alert may be there), then close */
};

/* Why a handshake failed: counted by reason in aigw_tls_handshake_failures_total. */
enum tls_fail_reason {
    TLS_FAIL_NONE,
    TLS_FAIL_PROTOCOL,      /* not TLS, malformed, unexpected message */
    TLS_FAIL_VERSION,       /* offered only versions below min_version */
    TLS_FAIL_NO_SHARED_CIPHER,
    TLS_FAIL_NO_CLIENT_CERT,    /* mTLS: none sent */
    TLS_FAIL_BAD_CERT,      /* a certificate that does not verify (either side) */
    TLS_FAIL_BAD_NAME,      /* client side: the server's name does not match */
    TLS_FAIL_ALERT,         /* the peer sent a fatal alert */
    TLS_FAIL_OTHER,
    TLS_FAIL_COUNT
};
const char *tls_fail_reason_name(enum tls_fail_reason r);  /* "protocol", "version", ... */

/* Drives the handshake with what io holds. TLS_OK once complete. */
enum tls_status tls_handshake(struct tls_conn *t);
enum tls_fail_reason tls_fail_reason(const struct tls_conn *t);
/* wolfSSL's own words for the failure, for the error log. */
const char *tls_fail_detail(const struct tls_conn *t);

/* Decrypts into buf: >0 plaintext bytes; 0 with *st = TLS_WANT when io.in ran
 * dry; 0 with *st = TLS_CLOSED or TLS_FAILED. Post-handshake messages (tickets,
 * key updates) are handled here and may append to io.out. */
size_t tls_read(struct tls_conn *t, char *buf, size_t cap, enum tls_status *st);

/* Encrypts p[0..n) into io.out; returns the plaintext bytes taken (all of n when
 * out has room for them: see tls_write_room), 0 with *st = TLS_FAILED on error. */
size_t tls_write(struct tls_conn *t, const char *p, size_t n, enum tls_status *st);
/* Ciphertext bytes needed to encrypt n plaintext bytes (record overhead included). */
size_t tls_write_room(const struct tls_conn *t, size_t n);

/* Appends close_notify to io.out (best effort). */
void tls_shutdown(struct tls_conn *t);

/* ---- what the handshake settled (valid after tls_handshake returned TLS_OK) ---- */

struct tls_info {
    const char *version;    /* "TLSv1.3", "TLSv1.2" */
    const char *cipher;     /* IANA-ish name wolfSSL reports, e.g. "TLS_CHACHA20_POLY1305_SHA256" */
    const char *group;      /* key exchange group, e.g. "X25519"; NULL if unknown */
    bool resumed;
    const char *sni;        /* server name the client asked for; NULL: none */
    const char *alpn;       /* negotiated protocol; NULL: none */
};
void tls_conn_info(struct tls_conn *t, struct tls_info *info);
/* The client certificate's subject ("/CN=alice/O=..."), "" without one. */
void tls_peer_subject(struct tls_conn *t, char *out, size_t cap);

/* ---- client-side resumption ---- */

struct tls_session;
/* After a client handshake: a session to resume the next connection with (NULL
 * if none). The caller keeps at most one per backend per shard. */
struct tls_session *tls_conn_save_session(struct tls_conn *t);
void tls_session_free(struct tls_session *s);

/* ---- ticket keys (process-wide) ---- */

/* For tests: the time the ticket-key epochs are computed from (ms; 0: real clock). */
void tls_tickets_set_clock_for_test(uint64_t now_ms);

#endif
