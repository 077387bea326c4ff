/* The TLS contexts a configuration needs, built from its parsed [tls] section
 * and pools' tls keys (config_tls.c). Separate from config_load because it reads
 * certificate files: `aigw -t`, start and reload call it after parsing; every
 * error is "FILE:LINE: message", and a reload that fails here keeps the old
 * configuration. config_free releases what it built. */
#ifndef AIGW_CORE_CONFIG_TLS_H
#define AIGW_CORE_CONFIG_TLS_H

#include <stddef.h>

struct config;

/* 0, or -1 with err. Warnings (an expired certificate) go to the error log. */
int config_tls_build(struct config *c, char *err, size_t errlen);
void config_tls_release(struct config *c);

#endif
