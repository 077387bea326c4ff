/* aigw-mockllm: a simulated OpenAI-compatible inference server (vLLM-style
 * metrics) for aigw's demo, tests and benchmarks. See docs/aigw-mockllm.1. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine.h"
#include "mock.h"
#include "prefix.h"
#include "server.h"

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: aigw-mockllm --listen ADDR:PORT [--model NAME]... [--tps N] [--ttft-ms N]\n"
    "                    [--max-running N] [--max-tokens N] [--kv-capacity TOKENS]\n"
    "                    [--prefill-tps N] [--prefix-cache TOKENS] [--fail-rate P]\n"
    "                    [--log-traceparent]\n"
    "\n"
    "A simulated OpenAI-compatible inference server.\n"
    "\n"
    "  --listen ADDR:PORT     address to serve on (IPv6 as [ADDR]:PORT; port 0 picks one)\n"
    "  --model NAME           a model to serve, repeatable (default mock-llama-3.1-8b)\n"
    "  --tps N                tokens per second per sequence; 0: all at once (default 50)\n"
    "  --ttft-ms N            delay before the first token (default 100)\n"
    "  --max-running N        sequences generating at once, the rest queue (default 0: no limit)\n"
    "  --max-tokens N         completion length when a request sets none (default 256)\n"
    "  --kv-capacity TOKENS   KV-cache size in tokens (default 0: unlimited)\n"
    "  --prefill-tps N        prompt tokens per second of prefill (default 0: free)\n"
    "  --prefix-cache TOKENS  LRU prefix cache size in tokens (default 0: off)\n"
    "  --fail-rate P          fraction 0..1 of model requests answered 500 (default 0)\n"
    "  --log-traceparent      print each request's traceparent headers to stdout, one line\n"
    "                         per request: \"traceparent N VALUE\" (N: how many it had)\n"
    "  --help                 this text\n";

static void die_usage(const char *fmt, const char *arg)
{
    fputs("aigw-mockllm: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\nTry 'aigw-mockllm --help'.\n", stderr);
    exit(EXIT_USAGE);
}

static uint64_t parse_uint(const char *opt, const char *s, uint64_t max)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        die_usage("%s: expects a non-negative integer", opt);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        die_usage("%s: expects a non-negative integer in range", opt);
    return v;
}

static double parse_real(const char *opt, const char *s, double max)
{
    char *end;
    errno = 0;
    if (!*s || *s == ' ')
        die_usage("%s: expects a number", opt);
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < 0 || v > max)
        die_usage("%s: expects a number in range", opt);
    return v;
}

static void check_model_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > MOCK_MAX_MODEL_NAME)
        die_usage("--model: a name of 1 to 200 bytes, got '%s'", name);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x21 || *p == 0x7f || *p == '"' || *p == '\\')
            die_usage("--model '%s': no spaces, quotes, backslashes or control characters", name);
}

/* ADDR:PORT, [V6ADDR]:PORT, *:PORT or :PORT (all addresses), localhost:PORT. */
static int open_listener(const char *spec, char *shown, size_t shown_len)
{
    char host[256];
    const char *colon, *port;
    if (spec[0] == '[') {
        const char *close_br = strchr(spec, ']');
        if (!close_br || close_br[1] != ':')
            die_usage("--listen '%s': expected [ADDR]:PORT", spec);
        if ((size_t)(close_br - spec - 1) >= sizeof host)
            die_usage("--listen '%s': address too long", spec);
        memcpy(host, spec + 1, (size_t)(close_br - spec - 1));
        host[close_br - spec - 1] = '\0';
        port = close_br + 2;
    } else {
        colon = strrchr(spec, ':');
        if (!colon)
            die_usage("--listen '%s': expected ADDR:PORT", spec);
        if ((size_t)(colon - spec) >= sizeof host)
            die_usage("--listen '%s': address too long", spec);
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    uint64_t portnum = parse_uint("--listen port", port, 65535);

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *ai;
    const char *node = (host[0] == '\0' || strcmp(host, "*") == 0) ? "0.0.0.0" : host;
    int rc = getaddrinfo(node, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "aigw-mockllm: --listen '%s': %s\n", spec, gai_strerror(rc));
        exit(EXIT_USAGE);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "aigw-mockllm: cannot listen on %s: %s\n", spec, strerror(errno));
        freeaddrinfo(ai);
        exit(1);
    }
    freeaddrinfo(ai);

    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    char addr[INET6_ADDRSTRLEN] = "?";
    getsockname(fd, (struct sockaddr *)&sa, &salen);
    if (sa.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof addr);
        snprintf(shown, shown_len, "[%s]:%u", addr, ntohs(s6->sin6_port));
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof addr);
        snprintf(shown, shown_len, "%s:%u", addr, ntohs(s4->sin_port));
    }
    (void)portnum;
    return fd;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    enum { O_LISTEN = 1, O_MODEL, O_TPS, O_TTFT, O_MAX_RUNNING, O_MAX_TOKENS, O_KV,
           O_PREFILL, O_PREFIX, O_FAIL, O_LOG_TRACEPARENT, O_HELP };
    static const struct option options[] = {
        { "listen", required_argument, NULL, O_LISTEN },
        { "model", required_argument, NULL, O_MODEL },
        { "tps", required_argument, NULL, O_TPS },
        { "ttft-ms", required_argument, NULL, O_TTFT },
        { "max-running", required_argument, NULL, O_MAX_RUNNING },
        { "max-tokens", required_argument, NULL, O_MAX_TOKENS },
        { "kv-capacity", required_argument, NULL, O_KV },
        { "prefill-tps", required_argument, NULL, O_PREFILL },
        { "prefix-cache", required_argument, NULL, O_PREFIX },
        { "fail-rate", required_argument, NULL, O_FAIL },
        { "log-traceparent", no_argument, NULL, O_LOG_TRACEPARENT },
        { "help", no_argument, NULL, O_HELP },
        { NULL, 0, NULL, 0 },
    };
    struct mock_config cfg = {
        .tps = 50,
        .ttft_ms = 100,
        .max_tokens = 256,
    };
    int opt;

    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        const char *name = optind > 1 && optind - 1 < argc ? argv[optind - 1] : "?";
        switch (opt) {
        case O_LISTEN:
            cfg.listen = optarg;
            break;
        case O_MODEL:
            check_model_name(optarg);
            if (cfg.nmodels == MOCK_MAX_MODELS)
                die_usage("--model: at most %s models", "64");
            cfg.models[cfg.nmodels++] = optarg;
            break;
        case O_TPS:
            cfg.tps = parse_real("--tps", optarg, 1e9);
            break;
        case O_TTFT:
            cfg.ttft_ms = parse_uint("--ttft-ms", optarg, 86400000);
            break;
        case O_MAX_RUNNING:
            cfg.max_running = (uint32_t)parse_uint("--max-running", optarg, 1000000);
            break;
        case O_MAX_TOKENS:
            cfg.max_tokens = (uint32_t)parse_uint("--max-tokens", optarg, MOCK_MAX_MODEL_LEN - 1);
            if (cfg.max_tokens == 0)
                die_usage("%s: must be at least 1", "--max-tokens");
            break;
        case O_KV:
            cfg.kv_capacity = parse_uint("--kv-capacity", optarg, 1ull << 40);
            break;
        case O_PREFILL:
            cfg.prefill_tps = parse_real("--prefill-tps", optarg, 1e12);
            break;
        case O_PREFIX:
            cfg.prefix_cache = parse_uint("--prefix-cache", optarg, 1ull << 30);
            break;
        case O_FAIL:
            cfg.fail_rate = parse_real("--fail-rate", optarg, 1.0);
            break;
        case O_LOG_TRACEPARENT:
            cfg.log_traceparent = true;
            break;
        case O_HELP:
            fputs(usage_text, stdout);
            return 0;
        case ':':
            die_usage("option '%s' needs a value", name);
            break;
        default:
            die_usage("unknown option '%s'", name);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (!cfg.listen)
        die_usage("%s is required", "--listen ADDR:PORT");
    if (cfg.nmodels == 0)
        cfg.models[cfg.nmodels++] = "mock-llama-3.1-8b";

    /* Block the stop signals before anyone can see the listening line, so a quick
     * SIGTERM after it is always handled by the loop and exits 0. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);

    raise_fd_limit();
    char shown[INET6_ADDRSTRLEN + 16];
    int lfd = open_listener(cfg.listen, shown, sizeof shown);
    if (prefix_cache_init(cfg.prefix_cache) < 0) {
        fputs("aigw-mockllm: --prefix-cache: not enough memory\n", stderr);
        return 1;
    }
    engine_init(&cfg);

    fprintf(stderr, "aigw-mockllm listening on %s\n", shown);
    fflush(stderr);
    int rc = server_run(&cfg, lfd);
    close(lfd);
    prefix_cache_free();
    return rc;
}
