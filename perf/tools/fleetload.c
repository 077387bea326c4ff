/* fleetload: an open-loop load generator for streaming chat completions, for
 * perf/fleet.sh.
 *
 *   fleetload --port PORT [--rate R] [--duration S] [--arrival poisson|fixed]
 *             [--max-tokens N] [--model NAME] [--prompt-bytes N]
 *             [--shared-prefixes N] [--prefix-bytes N] [--suffix-bytes N]
 *             [--system-bytes N] [--conversations N] [--turns N] [--turn-bytes N]
 *             [--reply-bytes N] [--timeout S] [--drain S] [--seed N] [--label NAME]
 *             [--ttft-out FILE]
 *
 * The prompts are one of four workloads: random text (plain, the default),
 * --shared-prefixes (one of N fixed prefixes + a random suffix), --system-bytes
 * (one fixed system message + a random user message of --prompt-bytes), or
 * --conversations (multi-turn chats: each arrival takes the next turn of one of N
 * conversations at random, resending its whole history plus a new user message;
 * the history then grows by that message and an assistant reply of --reply-bytes,
 * as a client resends what the model said; after --turns turns a conversation
 * starts over with new text).
 *
 * Requests START on a fixed schedule (Poisson arrivals, or a fixed interval) at
 * --rate per second for --duration seconds, however many are already in flight: a
 * slow server does not slow the arrivals (open loop). Each request gets its own
 * connection to 127.0.0.1:PORT and is a POST /v1/chat/completions with
 * "stream": true. Per request it measures the time to first token (from the
 * request's start to the first SSE data: event carrying content; the role-only
 * first event does not count), the total time, and the outcome:
 *
 *   completed  200 and the stream ended with "data: [DONE]"
 *   shed       503 (the gateway had no capacity)
 *   failed     anything else: another status, a connection error, a stream that
 *              ended without [DONE], or no end within --timeout
 *
 * After --duration, it waits up to --drain seconds (default: --timeout) for the
 * requests in flight; what is still running then is counted as timed out. Prints
 * one machine-readable line on stdout (FLEET_RESULT key=value ...) and a human one
 * on stderr. Percentiles are over completed requests. Loopback only. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"

enum rstate { R_CONNECTING, R_SENDING, R_HEAD, R_BODY };
enum body_mode { B_CHUNKED, B_LENGTH, B_CLOSE };
enum chunk_state { CH_SIZE, CH_SIZE_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER };

#define HEAD_MAX 16384
#define LINE_MAX_KEEP 4096      /* SSE lines are inspected up to this many bytes */

struct req {
    /* Zeroed at the start, up to head. */
    int fd;
    unsigned slot;              /* index in the active array */
    enum rstate state;
    double t_start, t_first;    /* monotonic seconds; t_first 0 until the first token */
    char *out;                  /* the request bytes */
    size_t out_len, out_off;
    size_t head_len;
    int status;
    enum body_mode mode;
    uint64_t body_left;         /* B_LENGTH */
    enum chunk_state ch;
    uint64_t chunk_left;
    int trailer_nl;             /* CH_TRAILER: consecutive line ends seen */
    bool trailer_empty;
    size_t line_len;
    bool done_seen;
    char head[HEAD_MAX];
    char line[LINE_MAX_KEEP];   /* the current SSE line (its first LINE_MAX_KEEP bytes) */
};

static struct {
    int port;
    double rate, duration, timeout, drain;
    bool fixed;
    unsigned max_tokens;
    const char *model;
    const char *label;
    size_t prompt_bytes;
    unsigned shared_prefixes;
    size_t prefix_bytes, suffix_bytes;
    size_t system_bytes;
    unsigned conversations, turns;
    size_t turn_bytes, reply_bytes;
    const char *ttft_out;
    uint64_t seed;
} O = {
    .port = 0, .rate = 10, .duration = 30, .timeout = 60, .drain = -1,
    .max_tokens = 100, .model = "mock-llama-3.1-8b", .label = "-",
    .prompt_bytes = 64, .prefix_bytes = 2048, .suffix_bytes = 64, .seed = 1,
    .turns = 8, .turn_bytes = 512, .reply_bytes = 400,
};

/* A growable byte buffer, for request bodies and conversation histories. */
struct buf {
    char *p;
    size_t len, cap;
};

/* One multi-turn conversation: its messages so far, as JSON array items. */
struct conversation {
    struct buf history;
    unsigned turn;              /* turns sent since it (re)started */
};

static struct {
    uint64_t sent, completed, shed, http_errors, conn_errors, incomplete, timeouts;
    uint64_t max_inflight;
    double max_lag;             /* how late a request started against its schedule */
    double *ttft, *total;
    size_t nres, capres;
} R;

static struct req **active;
static unsigned nactive, capactive;
static int ep;
static char **prefixes;
static char *system_prompt;
static struct conversation *conversations;
static uint64_t rng_state;
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) { (void)sig; stop_requested = 1; }

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng(void) { return splitmix64(&rng_state); }

/* The arrival times draw from their own stream, so that every workload with the
 * same seed gets the same arrivals whatever randomness its prompts consume. */
static uint64_t arrival_state;

static double arrival01(void)
{
    return (double)(splitmix64(&arrival_state) >> 11) / 9007199254740992.0;
}

/* The natural logarithm, x > 0 (the build links no libm): x = m * 2^e, m in [1, 2),
 * ln m = 2 atanh((m - 1) / (m + 1)). */
static double ln(double x)
{
    union { double d; uint64_t u; } v = {.d = x};
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    double z = (v.d - 1) / (v.d + 1), z2 = z * z, term = z, sum = 0;
    for (int k = 1; k < 60; k += 2) {
        sum += term / k;
        term *= z2;
    }
    return e * 0.69314718055994530942 + 2 * sum;
}

static double ceil_pos(double x)        /* x >= 0, small */
{
    double t = (double)(uint64_t)x;
    return t < x ? t + 1 : t;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "fleetload: out of memory\n");
        exit(2);
    }
    return p;
}

/* JSON-safe text: lowercase words separated by spaces. */
static void fill_text(char *p, size_t n)
{
    static const char letters[] = "abcdefghijklmnopqrstuvwxyz";
    size_t word = 0;
    for (size_t i = 0; i < n; i++) {
        if (word > 2 && (rng() % 6 == 0 || word > 9)) {
            p[i] = ' ';
            word = 0;
        } else {
            p[i] = letters[rng() % 26];
            word++;
        }
    }
}

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        fprintf(stderr, "fleetload: out of memory\n");
        exit(2);
    }
    b->p = p;
    b->cap = cap;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/* Appends one message, {"role":ROLE,"content":TEXT}, TEXT being n random bytes if
 * text is NULL; a comma first unless it is the array's first item. */
static void add_message(struct buf *b, const char *role, const char *text, size_t n)
{
    if (b->len)
        buf_str(b, ",");
    buf_str(b, "{\"role\":\"");
    buf_str(b, role);
    buf_str(b, "\",\"content\":\"");
    if (text) {
        buf_add(b, text, n);
    } else {
        buf_reserve(b, n);
        fill_text(b->p + b->len, n);
        b->len += n;
        b->p[b->len] = 0;
    }
    buf_str(b, "\"}");
}

static void usage(FILE *out)
{
    fprintf(out,
        "usage: fleetload --port PORT [options]\n"
        "  --port PORT           aigw (or a backend) on 127.0.0.1:PORT (required)\n"
        "  --rate R              requests started per second (default 10)\n"
        "  --duration S          seconds of arrivals (default 30)\n"
        "  --arrival KIND        poisson (default) or fixed interval\n"
        "  --max-tokens N        max_tokens of every request (default 100)\n"
        "  --model NAME          the model asked for (default mock-llama-3.1-8b)\n"
        "  --prompt-bytes N      bytes of random prompt text (default 64)\n"
        "  --shared-prefixes N   prompts are one of N shared prefixes + a random suffix\n"
        "  --prefix-bytes N      length of each shared prefix (default 2048)\n"
        "  --suffix-bytes N      length of the random suffix (default 64)\n"
        "  --system-bytes N      prompts are one shared N-byte system message + --prompt-bytes\n"
        "  --conversations N     prompts are turns of N multi-turn conversations\n"
        "  --turns N             turns of a conversation before it starts over (default 8)\n"
        "  --turn-bytes N        length of each new user message (default 512)\n"
        "  --reply-bytes N       length of each assistant reply added to a history (default 400)\n"
        "  --ttft-out FILE       write every completed request's TTFT (ms, sorted) to FILE\n"
        "  --timeout S           a request not finished S seconds after it started fails (default 60)\n"
        "  --drain S             after the arrivals, wait at most S seconds (default: the timeout)\n"
        "  --seed N              random seed: the same seed gives the same arrivals and prompts\n"
        "  --label NAME          a name put on the result line\n");
}

static double parse_pos(const char *opt, const char *v, bool zero_ok)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d == d && d < 1e300) || d < 0 || (!zero_ok && d == 0)) {
        fprintf(stderr, "fleetload: bad value '%s' for --%s\n", v, opt);
        exit(2);
    }
    return d;
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"port", 1, 0, 'p'}, {"rate", 1, 0, 'r'}, {"duration", 1, 0, 'd'},
        {"arrival", 1, 0, 'a'}, {"max-tokens", 1, 0, 'm'}, {"model", 1, 0, 'M'},
        {"prompt-bytes", 1, 0, 'b'}, {"shared-prefixes", 1, 0, 's'},
        {"prefix-bytes", 1, 0, 'P'}, {"suffix-bytes", 1, 0, 'S'}, {"timeout", 1, 0, 't'},
        {"drain", 1, 0, 'D'}, {"seed", 1, 0, 'e'}, {"label", 1, 0, 'l'}, {"help", 0, 0, 'h'},
        {"system-bytes", 1, 0, 'y'}, {"conversations", 1, 0, 'c'}, {"turns", 1, 0, 'T'},
        {"turn-bytes", 1, 0, 'u'}, {"reply-bytes", 1, 0, 'R'}, {"ttft-out", 1, 0, 'o'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        const char *name = "";
        for (const struct option *o = opts; o->name; o++)
            if (o->val == c)
                name = o->name;
        switch (c) {
        case 'p': O.port = (int)parse_pos(name, optarg, false); break;
        case 'r': O.rate = parse_pos(name, optarg, false); break;
        case 'd': O.duration = parse_pos(name, optarg, false); break;
        case 'a':
            if (strcmp(optarg, "fixed") == 0)
                O.fixed = true;
            else if (strcmp(optarg, "poisson") == 0)
                O.fixed = false;
            else {
                fprintf(stderr, "fleetload: --arrival is poisson or fixed\n");
                exit(2);
            }
            break;
        case 'm': O.max_tokens = (unsigned)parse_pos(name, optarg, false); break;
        case 'M': O.model = optarg; break;
        case 'b': O.prompt_bytes = (size_t)parse_pos(name, optarg, true); break;
        case 's': O.shared_prefixes = (unsigned)parse_pos(name, optarg, true); break;
        case 'P': O.prefix_bytes = (size_t)parse_pos(name, optarg, true); break;
        case 'S': O.suffix_bytes = (size_t)parse_pos(name, optarg, true); break;
        case 't': O.timeout = parse_pos(name, optarg, false); break;
        case 'D': O.drain = parse_pos(name, optarg, true); break;
        case 'e': O.seed = (uint64_t)parse_pos(name, optarg, true); break;
        case 'l': O.label = optarg; break;
        case 'y': O.system_bytes = (size_t)parse_pos(name, optarg, true); break;
        case 'c': O.conversations = (unsigned)parse_pos(name, optarg, true); break;
        case 'T': O.turns = (unsigned)parse_pos(name, optarg, false); break;
        case 'u': O.turn_bytes = (size_t)parse_pos(name, optarg, false); break;
        case 'R': O.reply_bytes = (size_t)parse_pos(name, optarg, true); break;
        case 'o': O.ttft_out = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc || O.port <= 0 || O.port > 65535) {
        usage(stderr);
        exit(2);
    }
    if (O.rate > 100000 || O.duration > 86400 || O.timeout > 86400 ||
        O.prompt_bytes > (1u << 20) || O.prefix_bytes > (1u << 20) || O.suffix_bytes > (1u << 20) ||
        O.shared_prefixes > 100000 || strlen(O.model) > 200 || strpbrk(O.model, "\"\\") ||
        O.system_bytes > (1u << 20) || O.conversations > 100000 || O.turns > 10000 ||
        O.turn_bytes > (1u << 20) || O.reply_bytes > (1u << 20) ||
        /* a conversation's last turn must stay a sane request */
        (O.conversations && (double)O.turns * (double)(O.turn_bytes + O.reply_bytes) > 4 << 20)) {
        fprintf(stderr, "fleetload: a value is out of range\n");
        exit(2);
    }
    if ((O.shared_prefixes > 0) + (O.system_bytes > 0) + (O.conversations > 0) > 1) {
        fprintf(stderr, "fleetload: --shared-prefixes, --system-bytes and --conversations "
                        "are different workloads; give one\n");
        exit(2);
    }
    if (O.drain < 0)
        O.drain = O.timeout;
}

/* The "messages" array's items for the next request of the workload. */
static void build_messages(struct buf *m)
{
    if (O.conversations) {
        struct conversation *c = &conversations[rng() % O.conversations];
        if (c->turn == O.turns) {
            c->history.len = 0;
            c->turn = 0;
        }
        add_message(&c->history, "user", NULL, O.turn_bytes);
        buf_add(m, c->history.p, c->history.len);
        if (O.reply_bytes)
            add_message(&c->history, "assistant", NULL, O.reply_bytes);
        c->turn++;
        return;
    }
    if (O.system_bytes) {
        add_message(m, "system", system_prompt, O.system_bytes);
        add_message(m, "user", NULL, O.prompt_bytes ? O.prompt_bytes : 1);
        return;
    }
    if (O.shared_prefixes) {
        /* one message: the prefix and the suffix in the same content */
        unsigned k = (unsigned)(rng() % O.shared_prefixes);
        buf_str(m, "{\"role\":\"user\",\"content\":\"");
        buf_add(m, prefixes[k], O.prefix_bytes);
        buf_reserve(m, O.suffix_bytes);
        fill_text(m->p + m->len, O.suffix_bytes);
        m->len += O.suffix_bytes;
        buf_str(m, "\"}");
        return;
    }
    add_message(m, "user", NULL, O.prompt_bytes ? O.prompt_bytes : 1);
}

static char *build_request(size_t *len)
{
    struct buf m = {0}, body = {0}, out = {0};
    build_messages(&m);
    char num[64];
    buf_str(&body, "{\"model\":\"");
    buf_str(&body, O.model);
    buf_str(&body, "\",\"messages\":[");
    buf_add(&body, m.p, m.len);
    snprintf(num, sizeof num, "],\"max_tokens\":%u,\"stream\":true}", O.max_tokens);
    buf_str(&body, num);
    char head[256];
    snprintf(head, sizeof head,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n", O.port, body.len);
    buf_str(&out, head);
    buf_add(&out, body.p, body.len);
    free(m.p);
    free(body.p);
    *len = out.len;
    return out.p;
}

static void record(double v_ttft, double v_total)
{
    if (R.nres == R.capres) {
        R.capres = R.capres ? R.capres * 2 : 1024;
        R.ttft = realloc(R.ttft, R.capres * sizeof *R.ttft);
        R.total = realloc(R.total, R.capres * sizeof *R.total);
        if (!R.ttft || !R.total) {
            fprintf(stderr, "fleetload: out of memory\n");
            exit(2);
        }
    }
    R.ttft[R.nres] = v_ttft;
    R.total[R.nres] = v_total;
    R.nres++;
}

enum outcome { O_COMPLETED, O_SHED, O_HTTP, O_CONN, O_INCOMPLETE, O_TIMEOUT };

static void finish(struct req *q, enum outcome how, double now)
{
    switch (how) {
    case O_COMPLETED:
        R.completed++;
        record(q->t_first - q->t_start, now - q->t_start);
        break;
    case O_SHED: R.shed++; break;
    case O_HTTP: R.http_errors++; break;
    case O_CONN: R.conn_errors++; break;
    case O_INCOMPLETE: R.incomplete++; break;
    case O_TIMEOUT: R.timeouts++; break;
    }
    if (how != O_COMPLETED) {
        /* An abandoned request: reset, so the server sees it go at once. */
        struct linger lg = {1, 0};
        setsockopt(q->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(q->fd);
    active[q->slot] = active[--nactive];
    active[q->slot]->slot = q->slot;
    free(q->out);
    free(q);
}

static void start_request(double now, double scheduled)
{
    if (now - scheduled > R.max_lag)
        R.max_lag = now - scheduled;
    R.sent++;
    struct req *q = xmalloc(sizeof *q);
    memset(q, 0, offsetof(struct req, head));
    q->t_start = now;
    q->out = build_request(&q->out_len);
    q->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (nactive == capactive) {
        capactive = capactive ? capactive * 2 : 256;
        active = realloc(active, capactive * sizeof *active);
        if (!active) {
            fprintf(stderr, "fleetload: out of memory\n");
            exit(2);
        }
    }
    if (q->fd < 0) {
        R.conn_errors++;
        free(q->out);
        free(q);
        return;
    }
    q->slot = nactive;
    active[nactive++] = q;
    if (nactive > R.max_inflight)
        R.max_inflight = nactive;
    int one = 1;
    setsockopt(q->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)O.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    q->state = R_CONNECTING;
    if (connect(q->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        finish(q, O_CONN, now);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = q};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, q->fd, &ev) < 0)
        finish(q, O_CONN, now);
}

/* One complete SSE line (without its line end). */
static void sse_line(struct req *q, double now)
{
    const char *l = q->line;
    size_t n = q->line_len;
    if (n < 5 || memcmp(l, "data:", 5) != 0)
        return;
    l += 5;
    n -= 5;
    while (n && *l == ' ') {
        l++;
        n--;
    }
    if (n == 6 && memcmp(l, "[DONE]", 6) == 0) {
        q->done_seen = true;
        return;
    }
    if (q->t_first > 0)
        return;
    static const char *const keys[] = {"\"content\":\"", "\"text\":\""};
    for (unsigned k = 0; k < 2; k++) {
        const char *p = memmem(l, n, keys[k], strlen(keys[k]));
        if (p) {
            p += strlen(keys[k]);
            if (p < l + n && *p != '"') {
                q->t_first = now;
                return;
            }
        }
    }
}

static void body_bytes(struct req *q, const char *p, size_t n, double now)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\n') {
            if (q->line_len && q->line[q->line_len - 1] == '\r')
                q->line_len--;
            sse_line(q, now);
            q->line_len = 0;
        } else if (q->line_len < LINE_MAX_KEEP) {
            q->line[q->line_len++] = c;
        }
    }
}

/* The end of the response body: judge the request. */
static void body_end(struct req *q, double now)
{
    if (q->line_len) {          /* a last line without its line end */
        sse_line(q, now);
        q->line_len = 0;
    }
    if (q->done_seen && q->t_first > 0)
        finish(q, O_COMPLETED, now);
    else
        finish(q, O_INCOMPLETE, now);
}

/* Feeds n body bytes; returns true once the request is finished (q freed). */
static bool feed_body(struct req *q, const char *p, size_t n, double now)
{
    if (q->mode == B_CLOSE) {
        body_bytes(q, p, n, now);
        return false;
    }
    if (q->mode == B_LENGTH) {
        size_t take = n < q->body_left ? n : (size_t)q->body_left;
        body_bytes(q, p, take, now);
        q->body_left -= take;
        if (q->body_left == 0) {
            body_end(q, now);
            return true;
        }
        return false;
    }
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        switch (q->ch) {
        case CH_SIZE: {
            int d = -1;
            if (c >= '0' && c <= '9') d = c - '0';
            else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
            if (d >= 0) {
                if (q->chunk_left >> 56) {
                    finish(q, O_INCOMPLETE, now);
                    return true;
                }
                q->chunk_left = q->chunk_left * 16 + (uint64_t)d;
            } else if (c == '\r') {
                q->ch = CH_SIZE_LF;
            } else if (c == ';' || c == ' ' || c == '\t') {
                q->ch = CH_SIZE_EXT;
            } else if (c == '\n') {
                goto size_done;
            } else {
                finish(q, O_INCOMPLETE, now);
                return true;
            }
            i++;
            break;
        }
        case CH_SIZE_EXT:
            if (c == '\r')
                q->ch = CH_SIZE_LF;
            else if (c == '\n')
                goto size_done;
            i++;
            break;
        case CH_SIZE_LF:
            if (c != '\n') {
                finish(q, O_INCOMPLETE, now);
                return true;
            }
        size_done:
            i++;
            if (q->chunk_left == 0) {
                q->ch = CH_TRAILER;
                q->trailer_empty = true;
            } else {
                q->ch = CH_DATA;
            }
            break;
        case CH_DATA: {
            size_t take = n - i < q->chunk_left ? n - i : (size_t)q->chunk_left;
            body_bytes(q, p + i, take, now);
            i += take;
            q->chunk_left -= take;
            if (q->chunk_left == 0)
                q->ch = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            q->ch = c == '\r' ? CH_DATA_LF : CH_SIZE;
            if (c == '\n')
                q->ch = CH_SIZE;
            i++;
            break;
        case CH_DATA_LF:
            q->ch = CH_SIZE;
            i++;
            break;
        case CH_TRAILER:
            /* Trailer lines until an empty one. */
            i++;
            if (c == '\n') {
                if (q->trailer_empty) {
                    body_end(q, now);
                    return true;
                }
                q->trailer_empty = true;
            } else if (c != '\r') {
                q->trailer_empty = false;
            }
            break;
        }
    }
    return false;
}

/* Parses the response head in q->head[0..end); returns false if malformed. */
static bool parse_head(struct req *q, size_t end)
{
    q->head[end - 1] = 0;
    if (strncmp(q->head, "HTTP/1.", 7) != 0 || end < 12)
        return false;
    q->status = atoi(q->head + 9);
    q->mode = B_CLOSE;
    char *line = strstr(q->head, "\r\n");
    while (line && line[2] && line[2] != '\r') {
        line += 2;
        char *eol = strstr(line, "\r\n");
        if (eol)
            *eol = 0;
        if (strncasecmp(line, "transfer-encoding:", 18) == 0 && strcasestr(line + 18, "chunked")) {
            q->mode = B_CHUNKED;
            q->ch = CH_SIZE;
        } else if (strncasecmp(line, "content-length:", 15) == 0 && q->mode != B_CHUNKED) {
            q->mode = B_LENGTH;
            q->body_left = strtoull(line + 15, NULL, 10);
        }
        if (!eol)
            break;
        *eol = '\r';
        line = eol;
    }
    return q->status >= 100 && q->status <= 999;
}

static void on_readable(struct req *q, double now)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(q->fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            finish(q, q->state == R_BODY ? O_INCOMPLETE : O_CONN, now);
            return;
        }
        if (n == 0) {
            if (q->state == R_BODY && q->mode == B_CLOSE)
                body_end(q, now);
            else
                finish(q, q->state == R_BODY ? O_INCOMPLETE : O_CONN, now);
            return;
        }
        const char *p = buf;
        size_t len = (size_t)n;
        if (q->state == R_HEAD) {
            size_t room = HEAD_MAX - q->head_len;
            size_t take = len < room ? len : room;
            memcpy(q->head + q->head_len, p, take);
            size_t scan_from = q->head_len > 3 ? q->head_len - 3 : 0;
            q->head_len += take;
            char *e = memmem(q->head + scan_from, q->head_len - scan_from, "\r\n\r\n", 4);
            if (!e) {
                if (q->head_len == HEAD_MAX) {
                    finish(q, O_CONN, now);
                    return;
                }
                continue;
            }
            size_t end = (size_t)(e - q->head) + 4;
            size_t body_in_buf = q->head_len - end;     /* bytes past the head we copied */
            size_t rest_offset = take - body_in_buf;    /* where they are in buf */
            if (!parse_head(q, end)) {
                finish(q, O_CONN, now);
                return;
            }
            if (q->status == 503) {
                finish(q, O_SHED, now);
                return;
            }
            if (q->status != 200) {
                finish(q, O_HTTP, now);
                return;
            }
            q->state = R_BODY;
            p += rest_offset;
            len -= rest_offset;
            if (q->mode == B_LENGTH && q->body_left == 0) {
                body_end(q, now);
                return;
            }
        }
        if (len && feed_body(q, p, len, now))
            return;
    }
}

static void on_writable(struct req *q, double now)
{
    if (q->state == R_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(q->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            finish(q, O_CONN, now);
            return;
        }
        q->state = R_SENDING;
    }
    while (q->out_off < q->out_len) {
        ssize_t n = write(q->fd, q->out + q->out_off, q->out_len - q->out_off);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            finish(q, O_CONN, now);
            return;
        }
        q->out_off += (size_t)n;
    }
    q->state = R_HEAD;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = q};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, q->fd, &ev) < 0)
        finish(q, O_CONN, now);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)     /* nearest rank, of sorted v */
{
    if (n == 0)
        return 0;
    size_t k = (size_t)ceil_pos(p / 100.0 * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("fleetload: epoll_create1");
        return 2;
    }
    rng_state = O.seed * 0x2545f4914f6cdd1dull + 1;
    arrival_state = O.seed * 0x9e3779b97f4a7c15ull + 7;
    if (O.shared_prefixes) {
        prefixes = xmalloc(O.shared_prefixes * sizeof *prefixes);
        for (unsigned k = 0; k < O.shared_prefixes; k++) {
            prefixes[k] = xmalloc(O.prefix_bytes + 1);
            fill_text(prefixes[k], O.prefix_bytes);
        }
    }
    if (O.system_bytes) {
        system_prompt = xmalloc(O.system_bytes);
        fill_text(system_prompt, O.system_bytes);
    }
    if (O.conversations) {
        conversations = calloc(O.conversations, sizeof *conversations);
        if (!conversations) {
            fprintf(stderr, "fleetload: out of memory\n");
            return 2;
        }
    }

    double t0 = clock_mono_s();
    double t_end = t0 + O.duration;
    double t_next = t0;         /* the first request starts at once */
    double last_check = t0;
    struct epoll_event evs[256];
    bool arrivals_done = false;
    double drain_deadline = 0;

    while (!stop_requested) {
        double now = clock_mono_s();
        while (!arrivals_done && t_next <= now) {
            if (t_next >= t_end) {
                arrivals_done = true;
                drain_deadline = now + O.drain;
                break;
            }
            start_request(now, t_next);
            t_next += O.fixed ? 1.0 / O.rate : -ln(1.0 - arrival01()) / O.rate;
        }
        if (!arrivals_done && t_next >= t_end && now >= t_end) {
            arrivals_done = true;
            drain_deadline = now + O.drain;
        }
        if (arrivals_done && (nactive == 0 || now >= drain_deadline))
            break;
        if (now - last_check >= 0.05) {
            last_check = now;
            for (unsigned i = 0; i < nactive;) {
                struct req *q = active[i];
                if (now - q->t_start >= O.timeout)
                    finish(q, O_TIMEOUT, now);     /* moves the last one into slot i */
                else
                    i++;
            }
        }
        double wait = 0.05;
        if (!arrivals_done) {
            double until = (t_next < t_end ? t_next : t_end) - now;
            if (until < wait)
                wait = until;
        } else if (drain_deadline - now < wait) {
            wait = drain_deadline - now;
        }
        int ms = wait <= 0 ? 0 : (int)ceil_pos(wait * 1000);
        int n = epoll_wait(ep, evs, 256, ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("fleetload: epoll_wait");
            return 2;
        }
        now = clock_mono_s();
        for (int i = 0; i < n; i++) {
            struct req *q = evs[i].data.ptr;
            if (q->state == R_CONNECTING || q->state == R_SENDING) {
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    finish(q, O_CONN, now);
                    continue;
                }
                on_writable(q, now);
            } else {
                on_readable(q, now);
            }
        }
    }
    double t_stop = clock_mono_s();
    /* What is still in flight at the end of the drain (or on a signal) timed out. */
    while (nactive)
        finish(active[0], O_TIMEOUT, t_stop);

    qsort(R.ttft, R.nres, sizeof *R.ttft, cmp_double);
    qsort(R.total, R.nres, sizeof *R.total, cmp_double);
    if (O.ttft_out) {
        FILE *f = fopen(O.ttft_out, "w");
        if (!f) {
            fprintf(stderr, "fleetload: %s: %s\n", O.ttft_out, strerror(errno));
            return 2;
        }
        for (size_t i = 0; i < R.nres; i++)
            fprintf(f, "%.3f\n", R.ttft[i] * 1e3);
        if (fclose(f) != 0) {
            fprintf(stderr, "fleetload: %s: write failed\n", O.ttft_out);
            return 2;
        }
    }
    uint64_t failed = R.http_errors + R.conn_errors + R.incomplete + R.timeouts;
    double ttft50 = pct(R.ttft, R.nres, 50) * 1e3, ttft99 = pct(R.ttft, R.nres, 99) * 1e3;
    double ttftmax = pct(R.ttft, R.nres, 100) * 1e3;
    double tot50 = pct(R.total, R.nres, 50) * 1e3, tot99 = pct(R.total, R.nres, 99) * 1e3;
    double elapsed = t_stop - t0;
    printf("FLEET_RESULT label=%s sent=%llu completed=%llu failed=%llu shed=%llu "
           "http_errors=%llu conn_errors=%llu incomplete=%llu timeouts=%llu "
           "ttft_p50_ms=%.1f ttft_p90_ms=%.1f ttft_p99_ms=%.1f ttft_max_ms=%.1f "
           "total_p50_ms=%.1f total_p99_ms=%.1f max_inflight=%llu max_lag_ms=%.1f "
           "offered_rps=%.2f elapsed_s=%.1f\n",
           O.label, (unsigned long long)R.sent, (unsigned long long)R.completed,
           (unsigned long long)failed, (unsigned long long)R.shed,
           (unsigned long long)R.http_errors, (unsigned long long)R.conn_errors,
           (unsigned long long)R.incomplete, (unsigned long long)R.timeouts,
           ttft50, pct(R.ttft, R.nres, 90) * 1e3, ttft99, ttftmax, tot50, tot99,
           (unsigned long long)R.max_inflight, R.max_lag * 1e3,
           (double)R.sent / O.duration, elapsed);
    fflush(stdout);
    fprintf(stderr,
            "fleetload %s: %llu started in %.0f s (%.2f/s offered), %llu completed, %llu failed "
            "(%llu http, %llu conn, %llu incomplete, %llu timeout), %llu shed; "
            "TTFT p50 %.0f ms p90 %.0f ms p99 %.0f ms; total p50 %.0f ms p99 %.0f ms; at most %llu in flight%s\n",
            O.label, (unsigned long long)R.sent, O.duration, (double)R.sent / O.duration,
            (unsigned long long)R.completed, (unsigned long long)failed,
            (unsigned long long)R.http_errors, (unsigned long long)R.conn_errors,
            (unsigned long long)R.incomplete, (unsigned long long)R.timeouts,
            (unsigned long long)R.shed, ttft50, pct(R.ttft, R.nres, 90) * 1e3, ttft99, tot50, tot99,
            (unsigned long long)R.max_inflight, stop_requested ? " (interrupted)" : "");
    return stop_requested ? 130 : 0;
}
