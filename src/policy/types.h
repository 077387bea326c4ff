/* The configuration's vocabulary that policy decides on: backends and how a pool
 * balances them, routes and their splits. Here rather than in core/config.h so
 * that src/policy (and the fuzz targets linking it without src/core) never
 * depends on core; core/config.h builds struct config from these. */
#ifndef AIGW_POLICY_TYPES_H
#define AIGW_POLICY_TYPES_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct glob_list;

#define CFG_NAME_MAX 64

struct cfg_addr {
    struct sockaddr_storage sa;
    socklen_t salen;
    /* for logs, metrics and /status: listeners normalised from the numeric
     * address ("127.0.0.1:8000", "[::1]:8000"); backends as configured, so a
     * name stays a name ("localhost:8000", "gpu-1.internal:8000") */
    char text[272];
    int line;                   /* where it was configured */
};

enum balance_kind { BALANCE_ROUND_ROBIN, BALANCE_LEAST_OUTSTANDING, BALANCE_CAPACITY, BALANCE_PREFIX };

struct cfg_backend {
    struct cfg_addr addr;
    char host[256];             /* as written, without port or brackets: a pool's default TLS server name */
    char tls_host_header[300];  /* TLS pools: the Host sent upstream (config_tls.c); "": the client's */
    unsigned weight;            /* >= 1, default 1 */
};

enum route_kind { ROUTE_AI, ROUTE_RAW };

/* `split = gpu-a:90 gpu-canary:10`: the route spreads its requests over pools by
 * weight instead of sending them all to `pool`. */
#define CFG_MAX_SPLIT 8
struct cfg_split {
    unsigned pool;              /* index into config.pools */
    unsigned weight;            /* >= 1 */
};

struct cfg_route {
    char name[CFG_NAME_MAX];
    char path[256];             /* without the trailing '*' for prefixes */
    size_t path_len;
    bool prefix;                /* configured with a trailing '*' ("/x/" then '*'): matches any path starting with path */
    unsigned pool;              /* index into config.pools; with split: split[0].pool */
    struct cfg_split split[CFG_MAX_SPLIT];
    unsigned nsplit;            /* 0: every request goes to pool */
    enum route_kind kind;       /* default ai */
    struct glob_list *models;   /* model globs this route takes; NULL: any model */
    char models_text[512];
    int line;
};

#endif
