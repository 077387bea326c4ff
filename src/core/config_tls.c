/* Builds a configuration's TLS contexts: see config_tls.h. */
#include "core/config_tls.h"

#include <stdio.h>

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
