/* Integration test harness: starts the real aigw and aigw-mockllm binaries on
 * loopback and talks raw HTTP/1.1 to them.
 *
 * Every wait here is bounded. Spawned processes are registered: h_teardown()
 * (the criterion .fini hook) stops them, an atexit handler kills any left, and
 * PR_SET_PDEATHSIG kills them if the test process dies without either.
 *
 * Binaries come from the environment: AIGW_BIN and MOCKLLM_BIN (absolute paths). */
#ifndef AIGW_ITEST_HARNESS_H
#define AIGW_ITEST_HARNESS_H

#include <stdatomic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <criterion/criterion.h>

/* ---- per-test setup ---- */

/* criterion .init / .fini hooks: a fresh temp dir; stop everything spawned. */
void h_setup(void);
void h_teardown(void);
const char *h_dir(void);                 /* the test's temp dir */
/* Call at the end of a test body that ran the binaries: stops every process
 * still running (aigw first) and fails the test if an aigw did not exit 0 on
 * SIGTERM (LeakSanitizer makes it exit non-zero) or any process's stderr holds
 * a sanitizer report. (criterion ignores assertion failures in .fini hooks.) */
void h_finish(void);
/* 1 normally; 3 when the binaries are sanitizer builds (AIGW_BIN under /asan/)
 * or AIGW_ITEST_SLOW is set. Multiplies deadlines that depend on CPU speed. */
int h_slow(void);

int64_t h_now_ms(void);                  /* CLOCK_MONOTONIC */
void h_sleep_ms(int ms);

/* ---- ports ---- */

/* A loopback port nobody listens on, below the ephemeral range (so outgoing
 * connections never take it), distinct across concurrently running test
 * processes (a shared counter under flock). */
int h_free_port(void);

/* ---- processes ---- */

/* Starts argv[0] with stdout/stderr appended to <dir>/<tag>.out and .err. */
pid_t h_spawn(const char *tag, const char *const argv[]);
/* Processes spawned from now on in this test start with RLIMIT_NOFILE set to
 * soft and hard; 0, 0 restores the inherited limit. */
void h_spawn_nofile(unsigned soft, unsigned hard);
/* Waits up to timeout_ms for pid to exit. Returns the wait status, -1 on timeout. */
int h_wait_exit(pid_t pid, int timeout_ms);
/* SIGTERM, wait up to timeout_ms, then SIGKILL. Returns the wait status
 * (WIFSIGNALED with SIGKILL if it had to be killed). */
int h_stop(pid_t pid, int timeout_ms);
bool h_alive(pid_t pid);
/* A process the test did not spawn but must stop at teardown too: a descendant
 * reparented to the test (which made itself a child subreaper), e.g. the aigw a
 * handover started. */
void h_track(pid_t pid, const char *tag);
/* Runs argv to completion (killed after timeout_ms). Returns the wait status,
 * -1 if it had to be killed; stderr goes to <dir>/<tag>.err. */
int h_run(const char *tag, const char *const argv[], int timeout_ms);

/* Last ~2 KiB of <dir>/<tag>.err (or .out), for assertion messages. Returns a
 * static buffer (one of a few rotating ones). */
const char *h_tail(const char *tag);
const char *h_tail_out(const char *tag);
/* A backend that answers every request "503 Service Unavailable" with an
 * OpenAI-shaped JSON error and closes: what a retry moves away from. */
struct h_b503 {
    int fd, port;
    atomic_int requests;        /* requests it answered */
    pthread_t th;
};
void h_b503_start(struct h_b503 *s);
void h_b503_stop(struct h_b503 *s);

/* The path of an executable found in $PATH (a static buffer), NULL if absent. */
const char *h_find_in_path(const char *prog);
/* Whole file, malloc'd and NUL-terminated; NULL if unreadable. */
char *h_read_file(const char *path);
/* Writes (truncates) path from a format string; aborts the test on failure. */
void h_write_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Open descriptors of pid (entries of /proc/PID/fd), -1 on error. */
int h_count_fds(pid_t pid);
/* Polls until pid holds at most `limit` descriptors (idle pools shrinking
 * after a load), up to timeout_ms. Returns the last count. */
int h_settle_fds(pid_t pid, int limit, int timeout_ms);

/* ---- raw HTTP client ---- */

enum {
    H_OK = 0,
    H_ETIMEOUT = -1,   /* deadline passed */
    H_ECLOSED = -2,    /* peer closed (EOF or reset) before the message was complete */
    H_EPROTO = -3,     /* unparseable response */
};

struct h_conn {
    int fd;
    char *buf;             /* bytes received and not yet consumed */
    size_t len, cap;
    bool eof;              /* peer closed (EOF or RST) */
    int64_t last_rx_ms;    /* when bytes last arrived */
    void *tls;             /* a WOLFSSL after h_connect_tls: every helper below then speaks TLS */
};

#define H_MAX_HEADERS 64
struct h_resp {
    int status;
    char *head;                    /* raw head, NUL-terminated; header slices point into head_copy */
    char *head_copy;
    int nheaders;
    const char *name[H_MAX_HEADERS], *value[H_MAX_HEADERS];
    char *body;                    /* de-chunked, NUL-terminated */
    size_t body_len;
    bool chunked, until_close, keep_alive;
};

/* Connects to 127.0.0.1:port (blocking, bounded by 2 s). 0 or -errno. */
int h_connect(struct h_conn *c, int port);
void h_close(struct h_conn *c);
/* Sends everything (MSG_NOSIGNAL). 0 or -errno (EPIPE/ECONNRESET if the peer closed). */
int h_send(struct h_conn *c, const void *p, size_t n);
int h_sendf(struct h_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads one complete response: head and de-chunked body. A 1xx interim
 * response counts as one (no body); the caller reads again for the final one.
 * h_recv_head stops after the head (for streams; then use h_sse_*).
 * Returns H_OK or H_E*. */
int h_recv(struct h_conn *c, struct h_resp *r, int timeout_ms);
int h_recv_head(struct h_conn *c, struct h_resp *r, int timeout_ms);
void h_resp_free(struct h_resp *r);
/* Header value by case-insensitive name, NULL if absent. */
const char *h_header(const struct h_resp *r, const char *name);

/* Sends a request with Host, Content-Length (if body) and extra header lines
 * (each "Name: value\r\n", may be NULL), then reads the response. */
int h_request(struct h_conn *c, const char *method, const char *path, const char *extra_headers,
              const char *body, struct h_resp *r, int timeout_ms);
/* One request on a fresh connection ("Connection: close"). */
int h_get(int port, const char *path, struct h_resp *r, int timeout_ms);
int h_post(int port, const char *path, const char *body, struct h_resp *r, int timeout_ms);

/* True if the peer closes the connection (EOF or reset, with no more bytes
 * arriving, or after discarding what arrives) within timeout_ms.
 * *got_bytes (optional) counts bytes received meanwhile. */
bool h_wait_closed(struct h_conn *c, int timeout_ms, size_t *got_bytes);

/* A chat completion request body. */
const char *h_chat_body(char *out, size_t cap, int max_tokens, bool stream);

/* ---- SSE over a response body (chunked, Content-Length or until close) ---- */

struct h_sse {
    struct h_conn *c;
    int mode;              /* internal: body framing */
    int cstate;
    uint64_t remaining;
    bool done;             /* body ended with its proper terminator */
    char *data;            /* de-chunked bytes not yet split into events */
    size_t len, cap;
    char event[16384];     /* the last event's text, without the blank line */
    int64_t event_ms;      /* when the bytes completing it arrived */
};

/* After h_recv_head() returned the stream's head. */
void h_sse_init(struct h_sse *s, struct h_conn *c, const struct h_resp *head);
/* Next event: 1 (s->event, s->event_ms set), 0 when the body ended properly,
 * H_ECLOSED if the connection ended before that, H_ETIMEOUT. */
int h_sse_next(struct h_sse *s, int timeout_ms);
void h_sse_free(struct h_sse *s);

/* A whole streamed chat completion request (POST /v1/chat/completions, Host:
 * host, body h_chat_body(max_tokens, stream)) into out; returns out. */
const char *h_chat_stream_request(char *out, size_t cap, const char *host, int max_tokens);
/* Sends a streamed chat completion of max_tokens on c (Host: aigw.test over
 * TLS, else x) and reads the response head into *head; the test fails unless
 * it is a 200 text/event-stream. gw_tag: the aigw whose stderr a failure shows. */
void h_start_chat_stream(struct h_conn *c, int max_tokens, struct h_resp *head, const char *gw_tag);
/* Reads data events (SSE comments and other fields skipped) up to and
 * including "data: [DONE]". Returns how many came; *done: whether [DONE] did
 * (if not, *last_rc holds h_sse_next's last result); arrived_ms (may be NULL):
 * when each of the first `cap` arrived. */
int h_sse_data_events(struct h_sse *s, int timeout_ms, int64_t *arrived_ms, int cap, bool *done, int *last_rc);
/* Reads the stream h_start_chat_stream began on c at t0_ms (`tokens` tokens
 * at `tps` tokens/s) and fails the test unless it came event by event: a data
 * event per token and data: [DONE], spread over at least 70% of the generation
 * time, the first before half of it, in at least tokens/2 separate bursts (at
 * most 63 tokens); then the body ends properly and c answers GET /v1/models
 * with 200. Frees head. */
void h_expect_stream_event_by_event(struct h_conn *c, struct h_resp *head, int64_t t0_ms, int tokens, int tps,
                                    const char *gw_tag);
/* Reads `events` events of the stream on c, closes c (a client going away)
 * and fails the test unless the backend, aigw-mockllm on mock_port, counts a
 * generation aborted (mockllm_aborted_total) within 2 s. Frees head. */
void h_leave_stream_expect_abort(struct h_conn *c, struct h_resp *head, int events, int mock_port);

/* ---- metrics ---- */

/* Scrapes http://127.0.0.1:port/metrics and returns the sum of the samples of
 * every series named like `query`'s name whose labels include all of `query`'s
 * labels, e.g. `aigw_requests_total{route="chat",status="200"}` (label order free).
 * NaN if no series matched or the scrape failed. */
double h_metric(int port, const char *query);
/* Same, 0 when no series matched (a counter not yet exported). NaN if the scrape failed. */
double h_metric0(int port, const char *query);
/* The [admin] token the scrapes above (and so h_wait_metric, H_RELOAD) send as
 * "Authorization: Bearer TOKEN"; NULL or "": none. Reset for every test. */
void h_admin_token(const char *token);
/* Polls h_metric0(port, query) until it compares with want as cmp says, or
 * timeout_ms passes. Returns the last value read (NaN: the scrape failed) for
 * the caller's assertion. */
enum h_cmp { H_EQ, H_GE, H_LE };
double h_wait_metric(int port, const char *query, enum h_cmp cmp, double want, int timeout_ms);

/* ---- the two binaries ---- */

/* Path of the aigw binary under test (AIGW_BIN, else build/aigw). */
const char *h_aigw_bin(void);

struct h_mock {
    int port;
    pid_t pid;
    char tag[32];
};

/* Starts aigw-mockllm on a free port with extra args (space separated, may be
 * NULL); waits for GET /health 200. Returns 0, or -1 (see h_tail(m->tag)). */
int h_mock_start(struct h_mock *m, const char *tag, const char *args);
/* Waits (up to 3 s, stretched by h_slow) until aigw, scraped on admin_port,
 * exports the prefix-cache counters of each of m[0..n) in `pool`: every
 * engine's metrics read once, so picks compare known loads. Returns -1, or the
 * index of the first mock never scraped (for the caller's assertion). */
int h_wait_engines_scraped(int admin_port, const char *pool, const struct h_mock *m, int n);
/* The same on the given port (e.g. the port of a backend that was stopped, to
 * bring it back where aigw's config expects it); retries the bind for up to 2 s. */
int h_mock_start_port(struct h_mock *m, const char *tag, int port, const char *args);

/* For scripted backends: reads one request (head and Content-Length body) from
 * fd into a static buffer. False on EOF, error or a request over 64 KiB. */
bool h_read_request(int fd);

struct h_gw {
    int port, admin_port;
    pid_t pid;
    char tag[32];
    char conf[512];
    char server_extra[512];   /* extra lines for [server] */
    char admin_extra[512];    /* extra lines for [admin] (a token: see h_admin_token) */
    char max_body[16];        /* [server] max_body; empty: 1m */
    char timeouts[512];       /* [timeouts] body; empty: the defaults below */
    char body[4096];          /* pools and routes */
    int shards;               /* [server] shards; 0: 2 (queues are per shard: some tests want 1) */
    char tls[2048];           /* set (h_gw_tls): a [tls] section listening on tls_port with these lines */
    int tls_port;
};

/* Defaults: connect 1s, first_byte 2s, idle 2s, client_header 1s, keepalive 2s. */
#define H_DEFAULT_TIMEOUTS \
    "connect = 1s\nfirst_byte = 2s\nidle = 2s\nclient_header = 1s\nkeepalive = 2s\n"

/* Prepares gw (ports, paths) and writes its config: [server] (listen, shards = 2,
 * max_body = 1m or g->max_body, max_header = 16k, drain_timeout = 5s, server_extra), [admin],
 * [timeouts] (timeouts or the defaults), [log] (access log in the temp dir), then
 * body printf-formatted. Call again to rewrite (for SIGHUP); ports stay. */
void h_gw_config(struct h_gw *g, const char *timeouts, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Starts aigw -c g->conf; waits until the admin /readyz answers 200 (its
 * listeners are open and every shard accepts; no probe connection is left on
 * the listen port). 0, or -1 (see h_tail(g->tag)). */
int h_gw_start(struct h_gw *g);

/* The shards g runs ([server] shards). */
int h_gw_nshards(const struct h_gw *g);

/* ---- waiting for aigw to have done something (never a pause and a hope) ---- */

/* Sends SIGHUP and waits until aigw has dealt with it: refused (counted in
 * aigw_config_reloads_total{result="failed"}), or applied and adopted by every
 * shard (each aigw_shard_config_generation equals aigw_config_generation). */
enum h_reload { H_RELOAD_APPLIED, H_RELOAD_REFUSED, H_RELOAD_TIMEOUT };
enum h_reload h_gw_reload(const struct h_gw *g);
#define H_RELOAD(g, want)                                                                          \
    cr_assert_eq(h_gw_reload(g), (want), "SIGHUP: expected %s; aigw stderr:\n%s",                  \
                 (want) == H_RELOAD_APPLIED ? "the reload applied on every shard" : "the reload refused", \
                 h_tail((g)->tag))
/* Sends SIGUSR1 and waits until the access log file was reopened; false if
 * the reopen failed or was not done in time. */
bool h_gw_reopen_log(const struct h_gw *g);

/* Repeats a request on fresh connections until every shard has answered one
 * (aigw_shard_requests_total), so that what the loop asserts holds on each
 * shard rather than on whichever SO_REUSEPORT happened to pick:
 *     for (struct h_each_shard e = h_each_shard_begin(&g); h_each_shard_next(&e);)
 *         { one request on a new connection, and its assertions }
 * The body runs at least once; the test fails if some shard has answered none
 * after H_EACH_SHARD_ROUNDS rounds (the hash spreads new connections: with two
 * shards, a few rounds). The test must send no other requests meanwhile. */
#define H_EACH_SHARD_ROUNDS 64
#define H_MAX_SHARDS 8
struct h_each_shard {
    const struct h_gw *g;
    int rounds, nshards;
    double base[H_MAX_SHARDS];
};
struct h_each_shard h_each_shard_begin(const struct h_gw *g);
bool h_each_shard_next(struct h_each_shard *e);
/* After other traffic (a load test's clients): true once every shard has
 * answered a request since h_each_shard_begin; waits a moment for the counts. */
bool h_each_shard_answered(const struct h_each_shard *e);

/* ---- API keys ---- */

/* The hex SHA-256 of the string s (what a keys file holds). */
void h_sha256_hex(const char *s, char out[65]);
/* A keys file line "NAME sha256:HEX tier=TIER [models=...]\n" for key (any
 * visible ASCII string), in a static buffer that 8 calls in a row may share. */
const char *h_key_line(const char *name, const char *key, const char *tier, const char *models);
/* h_dir()/keys: where tests put the keys file. */
const char *h_keys_path(void);
/* "Authorization: Bearer KEY\r\n", in a static buffer that 4 calls may share. */
const char *h_bearer(const char *key);

/* A listening TCP socket on 127.0.0.1 and a free port (a scripted backend's);
 * the test fails if it cannot be had. */
int h_listen_loopback(int *port);

/* The file's text once it contains needle (malloc'd), or NULL after timeout_ms
 * (an access log line being written by aigw's writer thread). */
char *h_wait_for_text(const char *path, const char *needle, int timeout_ms);

/* True once a line of <tag>.err (aigw's log) holds a and also b (b may be
 * NULL), within timeout_ms. */
bool h_wait_log_line(const char *tag, const char *a, const char *b, int timeout_ms);

/* Writes all n bytes to fd (a scripted backend's answer); false on error. */
bool h_write_all(int fd, const char *p, size_t n);

/* h_dir()/access.log: where aigw writes its access log (JSON lines). */
const char *h_access_log_path(void);

/* ---- TLS ---- */

/* The test PKI of tests/tls/make-certs.sh (read its header for the files),
 * made on first use in this test process under h_dir()/tls. */
const char *h_tls_dir(void);
/* h_tls_dir()/name, in a static buffer that 8 calls in a row may share. */
const char *h_tls_file(const char *name);

/* Gives g a [tls] section listening on 127.0.0.1:g->tls_port (a free port):
 * cert/key server.pem, handshake_timeout 5s, then `extra` lines (may be NULL;
 * a later handshake_timeout or cert/key pair there adds to or overrides these,
 * as the config reads them). Call before h_gw_config. */
void h_gw_tls(struct h_gw *g, const char *extra);

/* An in-process TLS client (wolfSSL) for the raw HTTP helpers. NULL options:
 * SNI and verified name aigw.test, CA ca.pem, TLS 1.2 or 1.3, no client cert. */
struct h_tls_opts {
    const char *sni;           /* NULL: aigw.test; "": send none */
    const char *verify_name;   /* NULL: the SNI name; "": verify the chain only */
    const char *ca;            /* file; NULL: ca.pem of h_tls_dir() */
    const char *cert, *key;    /* client certificate (mTLS); NULL: none */
    int version;               /* 0: 1.2 or 1.3; 12 or 13: only that one */
};
/* Connects to 127.0.0.1:port and completes the handshake; afterwards h_send,
 * h_recv*, h_request, h_sse_* and h_wait_closed run over TLS and h_close frees
 * the session (without close_notify: as a client that just goes away).
 * 0, or <0 with the reason in h_tls_error(). */
int h_connect_tls(struct h_conn *c, int port, const struct h_tls_opts *o);
const char *h_tls_error(void);
/* "TLSv1.3" etc. and the cipher of a connected h_conn. */
const char *h_tls_version(const struct h_conn *c);
const char *h_tls_cipher(const struct h_conn *c);

/* Runs argv to completion with stdin read from `input` (NULL: /dev/null),
 * killed after timeout_ms. Returns the wait status (-1: it had to be killed);
 * *out (optional) gets its stdout (malloc'd); stderr is in <tag>.err. Earlier
 * <tag>.out and .err are truncated first. */
int h_run_io(const char *tag, const char *const argv[], const char *input, int timeout_ms, char **out);
/* openssl s_client -connect 127.0.0.1:port -CAfile ca.pem -showcerts, then
 * `args` (space separated). With input, also -ign_eof: it sends input and
 * reads until aigw closes (so input should say "Connection: close"); without,
 * it handshakes, prints what was settled, and leaves. Returns its exit code
 * (-1 if killed after 20 s); *out gets its stdout (certificates, "Protocol",
 * "Cipher", "ALPN protocol", "Reused"/"New", and what aigw answered). */
int h_s_client(const char *tag, int port, const char *args, const char *input, char **out);
/* curl -sS --max-time 15 --cacert ca.pem, then `args` (space separated).
 * Returns curl's exit code (-1 if killed); *out gets its stdout. */
int h_curl(const char *tag, const char *args, char **out);
/* True if the first certificate in text (s_client -showcerts) is the first
 * certificate of the PEM file h_tls_file(name). */
bool h_tls_leaf_is(const char *text, const char *name);
/* A real ClientHello record (openssl s_client's, SNI aigw.test), as a client
 * sends it first; returns its length (the test fails if none was had). */
size_t h_tls_client_hello(char *buf, size_t cap);

/* Resident memory of pid in KiB (VmRSS), -1 on error. */
long h_rss_kb(pid_t pid);

/* ---- a mixed load from a few client threads (the leak tests) ---- */

#define H_LOAD_CLIENTS 4
struct h_load_client {
    int port;
    int seed;                   /* 3 * the client's index: each client runs the mix shifted */
    const char *chat;           /* a small chat body (2 tokens) */
    const char *stream_req;     /* a whole streamed chat request (16 tokens, Host: x) */
    struct h_conn ka;           /* the client's kept-alive connection (fd -1: none yet) */
    const char *ka_history[2];  /* the request function's last two on ka, shown with a failure if set */
    int unexpected;
    char first_failure[400];
};
/* One request, the client's i-th. */
typedef void h_load_request(struct h_load_client *cl, int i);
/* Counts an unexpected answer to the i-th request (r may be NULL; detail, an
 * extra line such as h_tls_error(), may be NULL) and describes the first. */
void h_load_unexpected(struct h_load_client *cl, int i, const char *what, int rc, const struct h_resp *r,
                       const char *detail);
/* H_LOAD_CLIENTS threads against port, each calling request(cl, i) for i in
 * [0, per_client) and then closing its kept-alive connection. Returns how many
 * answers were unexpected; copies the first's description into first unless
 * first already holds one. */
int h_load_run(int port, int per_client, h_load_request *request, char *first, size_t first_cap);

/* ---- small helpers for assertions ---- */

/* True if the JSON text has "key": "value" somewhere (whitespace tolerant). */
bool h_json_str_is(const char *json, const char *key, const char *value);
/* The first integer value of "key" in the JSON text, -1 if none. */
long long h_json_int(const char *json, const char *key);

#define H_MOCK(m, tag, args)                                                              \
    cr_assert_eq(h_mock_start((m), (tag), (args)), 0, "aigw-mockllm %s did not become ready:\n%s", \
                 (tag), h_tail(tag))
#define H_CONNECT_GW(c, g)                                                                    \
    cr_assert_eq(h_connect((c), (g)->port), 0, "cannot connect to aigw; its stderr:\n%s", \
                 h_tail((g)->tag))
#define H_CONNECT_TLS_GW(c, g)                                                                      \
    cr_assert_eq(h_connect_tls((c), (g)->tls_port, NULL), 0, "%s\naigw stderr:\n%s", h_tls_error(), \
                 h_tail((g)->tag))
#define H_GW(g) \
    cr_assert_eq(h_gw_start(g), 0, "aigw did not become ready:\n%s", h_tail((g)->tag))

/* The common start: one aigw-mockllm ("mock", mock_args) and aigw in front of it
 * with H_STD_ROUTES and the given [timeouts] body (NULL: the defaults). */
#define H_MOCK_AND_GW(m, g, mock_args, timeouts)                 \
    do {                                                         \
        H_MOCK((m), "mock", (mock_args));                        \
        h_gw_config((g), (timeouts), H_STD_ROUTES, (m)->port);   \
        H_GW(g);                                                 \
    } while (0)

/* The usual pool and routes, in front of one backend port (%d):
 * chat completions through an ai route, everything else under /v1/ raw (and
 * GET /v1/models, which aigw answers itself without a route of that exact
 * path, proxied to the backend as a plain GET). */
#define H_STD_ROUTES                                                   \
    "[pool local]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\n" \
    "max_outstanding = 64\n\n"                                          \
    "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n" \
    "[route models]\npath = /v1/models\npool = local\nkind = raw\n\n"   \
    "[route all]\npath = /v1/*\npool = local\nkind = raw\n"

/* For the load tests: chat and /v1/ to one backend (the first %d), and
 * /dead/... raw to a pool whose backend (the second %d) nobody listens on. */
#define H_ROUTES_WITH_DEAD_POOL                                                   \
    "[pool local]\nbackend = 127.0.0.1:%d\nbalance = least_outstanding\n"         \
    "max_outstanding = 64\n\n"                                                  \
    "[pool dead]\nbackend = 127.0.0.1:%d\n\n"                                    \
    "[route chat]\npath = /v1/chat/completions\npool = local\nkind = ai\n\n"    \
    "[route dead]\npath = /dead/*\npool = dead\nkind = raw\n\n"                 \
    "[route all]\npath = /v1/*\npool = local\nkind = raw\n"


/* ---- Redis (the cluster's shared limits) ---- */

struct redisReply;
struct h_redis {
    int port;
    pid_t pid;
    char tag[32];
    char password[64];        /* set before h_redis_start: requirepass */
};
/* Starts Debian's redis-server on a free loopback port (no persistence, its
 * files in the test's dir), with r->password if set, and extra args (space
 * separated, may be NULL); waits until it answers. 0, or -1 (see h_tail(tag)). */
int h_redis_start(struct h_redis *r, const char *tag, const char *args);
/* The same on r->port (a restart where the gateways expect it). */
int h_redis_restart(struct h_redis *r, const char *args);
/* A command over a fresh hiredis connection (AUTH with r->password first);
 * NULL on failure. The caller frees it with freeReplyObject. */
struct redisReply *h_redis_cmd(const struct h_redis *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* An integer reply, or a string holding a number (HGET, GET); -1 for nil or failure. */
long long h_redis_int(const struct h_redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- an OTLP/HTTP trace receiver (a collector's stand-in) ---- */

/* A thread on a loopback port taking POSTs (keep-alive, several connections)
 * and recording their bodies. H_OTLP_OK answers each 200 {}; H_OTLP_STALL reads
 * requests and never answers (a hung collector). A dead collector is a port
 * nobody listens on (h_free_port). */
enum h_otlp_mode { H_OTLP_OK, H_OTLP_STALL };
struct h_otlp;
struct h_otlp *h_otlp_start(enum h_otlp_mode mode);
int h_otlp_port(const struct h_otlp *o);
/* Complete POSTs received so far, and their spans ("spanId" members). */
int h_otlp_posts(struct h_otlp *o);
int h_otlp_spans(struct h_otlp *o);
/* Waits until at least `spans` spans arrived (timeout_ms); returns every body
 * received so far, concatenated (malloc'd; never NULL), for the assertions. */
char *h_otlp_wait_spans(struct h_otlp *o, int spans, int timeout_ms);
/* The request head of the first POST (malloc'd), to check what aigw sent. */
char *h_otlp_first_head(struct h_otlp *o);
void h_otlp_stop(struct h_otlp *o);

#endif
