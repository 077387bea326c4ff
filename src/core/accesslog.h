/* Access log: one JSON object per line. Shards format lines into their own
 * single-producer ring buffer (no syscall, no lock, no malloc); a writer thread
 * drains the rings and writes them to stdout or a file. A full ring drops the line
 * and counts it (aigw_access_log_dropped_total) rather than block a shard. */
#ifndef AIGW_CORE_ACCESSLOG_H
#define AIGW_CORE_ACCESSLOG_H

#include <stdint.h>
#include "core/config.h"
#include "proto/http1.h"

/* Why a request ended other than normally: the access log's "termination" and
 * aigw_request_terminations_total{reason}. */
enum termination {
    TERM_NONE,
    TERM_CLIENT_ABORT,      /* the client closed or reset mid-request (logged as 499) */
    TERM_DRAIN_TIMEOUT,     /* still running when drain_timeout ran out at shutdown */
    TERM_UPSTREAM_ERROR,    /* the backend failed or broke the response */
    TERM_UPSTREAM_TIMEOUT,  /* the backend did not answer in time (connect, first_byte, idle) */
    TERM_CLIENT_TIMEOUT,    /* the client did not send or read in time */
    TERM_COUNT
};

/* "client_abort", ...; NULL for TERM_NONE. */
const char *alog_termination_name(enum termination t);

/* Backends the access log lists per request (the first ones tried, in order). */
#define ALOG_BACKENDS_MAX 4

struct alog_entry {
    uint64_t time_us;           /* CLOCK_REALTIME at request start */
    struct slice client;        /* "1.2.3.4:5678" */
    struct slice method, target;
    struct slice request_id;
    const char *route;          /* "" when none matched */
    const char *pool;           /* "" when none */
    const char *backend;        /* "" when none */
    int status;
    uint64_t bytes_in;          /* request bytes from the client (head + body) */
    uint64_t bytes_out;         /* response bytes to the client (head + body) */
    uint64_t duration_us;       /* request start to last byte sent */
    int64_t first_byte_us;      /* upstream first byte after request start; -1 if none */
    bool upstream_reused;
    uint64_t queue_us;          /* time waited for capacity (all waits added up) */
    const char *backends[ALOG_BACKENDS_MAX]; /* tried, in order, as configured ("host:port") */
    unsigned nbackends;
    bool fallback;              /* served by (or moved to) its pool's fallback */
    enum termination termination;
    const char *error;          /* NULL, or what went wrong ("connect refused", "first_byte timeout", ...) */
    /* who called: written whenever a key was presented and known */
    const char *key;            /* the key's NAME (never the key), NULL: none */
    /* AI requests (ai set): the fields below are written only for them */
    bool ai;
    struct slice model;         /* empty: not read (the request was refused before) */
    bool stream;
    uint64_t tokens_in, tokens_out; /* prompt and completion tokens counted */
    uint64_t cost_pusd;         /* pico-USD at the [model] prices (cost.h); 0: no cost_usd field */
    const char *limit;          /* the limit that refused it ("requests" ...), NULL: none */
    const char *priority;       /* the key's tier priority */
    /* TLS connections (tls_version set): the handshake's outcome */
    const char *tls_version;    /* "TLSv1.3" */
    const char *tls_cipher;
    const char *tls_sni;        /* NULL: the client sent no server name */
    const char *tls_client_subject; /* mTLS: the client certificate's subject; NULL: none */
};

/* Longest line alog_format produces: string fields longer than their share are cut
 * and end in "..." (the target keeps its first 2 KiB), so a line is never dropped
 * for being too long. */
#define ALOG_LINE_MAX 6144

/* Starts the writer thread for nshards rings (ring_bytes each, rounded up to a
 * power of two, at least 64 KiB; 0 means 1 MiB). path is used for ACCESS_FILE.
 * Returns 0, or -1 with errno (and a log_error) when the file cannot be opened or
 * memory or the thread cannot be had. Call before the shards start. */
int alog_init(unsigned nshards, size_t ring_bytes, enum access_log_mode mode, const char *path);
/* Called by shard `shard` only. Never blocks: formats the line and copies it into
 * the shard's ring, or counts it in aigw_access_log_dropped_total when full. */
void alog_write(unsigned shard, const struct alog_entry *e);
/* Switches destination (reload). A file is opened here, so an error is returned
 * (-1, errno, log_error) and the old destination stays. Lines already buffered go
 * to the old destination. Control plane. */
int alog_configure(enum access_log_mode mode, const char *path);
/* Makes the writer reopen the file by its path (SIGUSR1, logrotate). Call from a
 * normal thread, not from inside a signal handler. */
void alog_reopen(void);
/* Writes out everything buffered so far, stops the writer and frees the rings.
 * Call after the shards have stopped. */
void alog_shutdown(void);

/* Writes e as one JSON line (with '\n') into out; returns length, 0 if it does not
 * fit (never with cap >= ALOG_LINE_MAX). Strings are JSON-escaped: control chars
 * as \u00XX, invalid UTF-8 bytes as \ufffd. Pure; exposed for tests. */
size_t alog_format(char *out, size_t cap, const struct alog_entry *e);

/* The request target as the access log shows it, without credentials: in the
 * query, the value of a parameter named api_key, apikey, api-key, x-api-key,
 * key, access_token, token, auth, authorization, password, secret or
 * client_secret (any case, percent-decoded), and any value starting with "sk-"
 * or "Bearer " (decoded, any case), becomes REDACTED; anywhere in the target, an
 * aigw key (KEY_PREFIX and the base62 digits after it) becomes REDACTED. Empty
 * values stay empty. Writes at most cap bytes into out (the rest is cut) and
 * returns how many. Pure; called where a request's target is kept for its line. */
size_t alog_redact_target(char *out, size_t cap, struct slice target);

#endif
