/* Builds a configuration's TLS contexts: see config_tls.h. */
#include "core/config_tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"
#include "tls/tls.h"

static void warn_to_log(void *arg, const char *msg)
{
    (void)arg;
    log_warn("%s", msg);
}

int config_tls_build(struct config *c, char *err, size_t errlen)
{
    if (c->tls.opts.enabled && !c->tls.server) {
        c->tls.server = tls_server_new(&c->tls.opts, c->path, warn_to_log, NULL, err, errlen);
        if (!c->tls.server)
            return -1;
    }
    for (unsigned i = 0; i < c->npools; i++) {
        struct cfg_pool *p = &c->pools[i];
        if (!p->tls || p->tls_client)
            continue;
        /* A service behind TLS is found by its name (SNI, then Host, as a
         * virtual host): the name it is verified as, with a port other than
         * 443, as nginx's proxy_pass https://NAME:PORT sends it. */
        for (unsigned k = 0; k < p->nbackends; k++) {
            struct cfg_backend *b = &p->backends[k];
            const char *name = p->tls_server_name[0] ? p->tls_server_name : b->host;
            const struct sockaddr *sa = (const struct sockaddr *)&b->addr.sa;
            unsigned port = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                                           : ((const struct sockaddr_in *)sa)->sin_port);
            bool v6 = strchr(name, ':') != NULL;
            if (port == 443)
                snprintf(b->tls_host_header, sizeof b->tls_host_header, v6 ? "[%s]" : "%s", name);
            else
                snprintf(b->tls_host_header, sizeof b->tls_host_header, v6 ? "[%s]:%u" : "%s:%u", name, port);
        }
        char why[512];
        p->tls_client = tls_client_new(p->tls_ca, why, sizeof why);
        if (!p->tls_client) {
            snprintf(err, errlen, "%s:%d: [pool %s] %s", c->path, p->tls_ca_line ? p->tls_ca_line : p->line,
                     p->name, why);
            config_tls_release(c);
            return -1;
        }
    }
    return 0;
}

void config_tls_release(struct config *c)
{
    if (c->tls.server)
        tls_server_release(c->tls.server);
    c->tls.server = NULL;
    for (unsigned i = 0; i < c->npools; i++) {
        if (c->pools[i].tls_client)
            tls_client_release(c->pools[i].tls_client);
        c->pools[i].tls_client = NULL;
    }
}
