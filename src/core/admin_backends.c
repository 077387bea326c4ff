#include "core/admin_backends.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend_admin.h"
#include "core/config.h"
#include "core/gen.h"
#include "core/log.h"
#include "util/json_escape.h"
#include "util/outbuf.h"

#define ONE_BACKEND_JSON_MAX 1024   /* names are bounded: pool CFG_NAME_MAX, address 80 */

static void put_json_string(struct outbuf *o, const char *s)
{
    outbuf_char(o, '"');
    json_escape(o, s, strlen(s), 512, JSON_ESCAPE_SHORT_FORMS);
    outbuf_char(o, '"');
}

/* What a client of the API sees: the admin state, and what it means with health. */
static void put_backend(struct outbuf *o, const struct gen *g, unsigned b)
{
    const struct cfg_backend *cb = g->backend_cfg[b];
    int slot = g->backend_metric_slot[b];
    struct backend_admin_view v;
    if (!backend_admin_get(slot, &v))
        v = backend_admin_read(slot, cb->weight);
    bool healthy = backend_available(g, b);
    const char *state = v.state == BACKEND_MAINT ? "disabled"
                        : v.state == BACKEND_DRAIN || v.weight == 0 ? "draining"
                        : healthy ? "up" : "down";
    outbuf_str(o, "{\"pool\":");
    put_json_string(o, g->backend_pool[b]);
    outbuf_str(o, ",\"backend\":");
    put_json_string(o, cb->addr.text);
    outbuf_str(o, ",\"admin_state\":\"");
    outbuf_str(o, backend_admin_state_name(v.state));
    outbuf_str(o, "\",\"state\":\"");
    outbuf_str(o, state);
    outbuf_str(o, "\",\"health\":\"");
    outbuf_str(o, healthy ? "up" : "down");
    outbuf_str(o, "\",\"weight\":");
    outbuf_u64(o, v.weight);
    outbuf_str(o, ",\"config_weight\":");
    outbuf_u64(o, cb->weight);
    outbuf_str(o, ",\"outstanding\":");
    outbuf_u64(o, gen_outstanding(g, b));
    outbuf_char(o, '}');
}

static int out_of_memory(char **body, size_t *len)
{
    *body = NULL;
    *len = 0;
    return 500;
}

static int finish(struct outbuf *o, char *buf, int status, char **body, size_t *len)
{
    if (outbuf_overflowed(o)) {
        free(buf);
        return out_of_memory(body, len);    /* cannot happen: the sizes bound the names */
    }
    *body = buf;
    *len = o->len;
    return status;
}

int admin_backends_list(const struct gen *g, char **body, size_t *len)
{
    unsigned n = g ? g->cfg->nbackends : 0;
    size_t cap = 64 + (size_t)n * ONE_BACKEND_JSON_MAX;
    char *buf = malloc(cap);
    if (!buf)
        return out_of_memory(body, len);
    struct outbuf o = outbuf_make(buf, cap);
    outbuf_str(&o, "{\"backends\":[");
    for (unsigned b = 0; b < n; b++) {
        if (b)
            outbuf_char(&o, ',');
        put_backend(&o, g, b);
    }
    outbuf_str(&o, "]}\n");
    return finish(&o, buf, 200, body, len);
}

static int error(int status, const char *code, const char *message, char **body, size_t *len)
{
    size_t cap = 256 + strlen(message) * 6;
    char *buf = malloc(cap);
    if (!buf)
        return out_of_memory(body, len);
    struct outbuf o = outbuf_make(buf, cap);
    outbuf_str(&o, "{\"error\":{\"message\":");
    put_json_string(&o, message);
    outbuf_str(&o, ",\"type\":\"invalid_request_error\",\"code\":\"");
    outbuf_str(&o, code);
    outbuf_str(&o, "\"}}\n");
    return finish(&o, buf, status, body, len);
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* One path segment, percent-decoded into out (NUL-terminated). False when
 * malformed, empty, too long or decoding to a NUL. */
static bool decode_segment(const char *p, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;   /* fewer than two hex digits follow */
            int hi = hex_value(p[i + 1]);
            int lo = hex_value(p[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (char)(hi << 4 | lo);
            i += 2;
            if (c == '\0')
                return false;
        }
        if (k + 1 >= cap)
            return false;
        out[k++] = c;
    }
    out[k] = '\0';
    return k > 0;
}

/* Whether name is how the file wrote backend cb (host:port, [v6]:port) or its
 * normalised address. */
static bool backend_named(const struct cfg_backend *cb, const char *name)
{
    if (strcmp(cb->addr.text, name) == 0)
        return true;
    const char *port = strrchr(cb->addr.text, ':');
    if (!port || !cb->host[0])
        return false;
    char written[sizeof cb->host + 8];
    int n = strchr(cb->host, ':') ? snprintf(written, sizeof written, "[%s]%s", cb->host, port)
                                  : snprintf(written, sizeof written, "%s%s", cb->host, port);
    return n > 0 && (size_t)n < sizeof written && strcmp(written, name) == 0;
}

/* N in 0..BACKEND_WEIGHT_MAX, digits only */
static bool parse_weight(const char *s, unsigned *w)
{
    unsigned v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > BACKEND_WEIGHT_MAX)
            return false;
    }
    *w = v;
    return true;
}

int admin_backends_post(const struct gen *g, struct slice rest, char **body, size_t *len)
{
    static const char usage[] =
        "expected POST /backends/POOL/BACKEND/drain, /disable, /enable or /weight/N (N 0-1000)";
    /* the segments: POOL, BACKEND, VERB[, N] */
    struct slice seg[5];
    unsigned nseg = 0;
    size_t start = 0;
    for (size_t i = 0; i <= rest.len; i++) {
        if (i < rest.len && rest.p[i] != '/')
            continue;
        if (nseg == 5)
            return error(400, "bad_route", usage, body, len);
        seg[nseg++] = (struct slice){ rest.p + start, i - start };
        start = i + 1;
    }
    char pool_name[CFG_NAME_MAX], backend_name[300], verb[16], arg[16] = "";
    if (nseg < 3 || nseg > 4 ||
        !decode_segment(seg[0].p, seg[0].len, pool_name, sizeof pool_name) ||
        !decode_segment(seg[1].p, seg[1].len, backend_name, sizeof backend_name) ||
        !decode_segment(seg[2].p, seg[2].len, verb, sizeof verb) ||
        (nseg == 4 && !decode_segment(seg[3].p, seg[3].len, arg, sizeof arg)))
        return error(400, "bad_route", usage, body, len);

    enum { DRAIN, DISABLE, ENABLE, WEIGHT } what;
    unsigned weight = 0;
    if (nseg == 3 && strcmp(verb, "drain") == 0)
        what = DRAIN;
    else if (nseg == 3 && strcmp(verb, "disable") == 0)
        what = DISABLE;
    else if (nseg == 3 && strcmp(verb, "enable") == 0)
        what = ENABLE;
    else if (strcmp(verb, "weight") == 0) {
        if (nseg != 4 || !parse_weight(arg, &weight))
            return error(400, "bad_weight", "the weight must be a whole number from 0 to 1000: "
                         "POST /backends/POOL/BACKEND/weight/N", body, len);
        what = WEIGHT;
    } else
        return error(400, "bad_verb", usage, body, len);

    const struct config *cfg = g ? g->cfg : NULL;
    int pool = -1;
    for (unsigned p = 0; cfg && p < cfg->npools; p++)
        if (strcmp(cfg->pools[p].name, pool_name) == 0)
            pool = (int)p;
    char msg[512];
    if (pool < 0) {
        snprintf(msg, sizeof msg, "no pool named '%s' in the configuration in use", pool_name);
        return error(404, "unknown_pool", msg, body, len);
    }
    int b = -1;
    const struct cfg_pool *cp = &cfg->pools[pool];
    for (unsigned i = 0; i < cp->nbackends; i++)
        if (backend_named(&cp->backends[i], backend_name))
            b = (int)(g->pool_first_backend[pool] + i);
    if (b < 0) {
        snprintf(msg, sizeof msg, "pool '%s' has no backend '%s' (write it as in the file, host:port)",
                 pool_name, backend_name);
        return error(404, "unknown_backend", msg, body, len);
    }

    int slot = g->backend_metric_slot[b];
    struct backend_admin_view was;
    int rc = what == WEIGHT ? backend_admin_set_weight(slot, weight, &was)
                            : backend_admin_set_state(slot, what == DRAIN ? BACKEND_DRAIN
                                                          : what == DISABLE ? BACKEND_MAINT : BACKEND_READY, &was);
    if (rc != 0)
        return error(404, "unknown_backend", "the backend left the configuration (a reload removed it)",
                     body, len);
    const char *addr = g->backend_cfg[b]->addr.text;
    if (what == WEIGHT)
        log_info("admin: backend %s/%s weight %u (was %u)", pool_name, addr, weight, was.weight);
    else
        log_info("admin: backend %s/%s %s (was %s%s)", pool_name, addr,
                 what == DRAIN ? "drain" : what == DISABLE ? "disable" : "enable",
                 backend_admin_state_name(was.state), was.weight == 0 ? ", weight 0" : "");

    char *buf = malloc(ONE_BACKEND_JSON_MAX + 2);
    if (!buf)
        return out_of_memory(body, len);
    struct outbuf o = outbuf_make(buf, ONE_BACKEND_JSON_MAX + 2);
    put_backend(&o, g, (unsigned)b);
    outbuf_char(&o, '\n');
    return finish(&o, buf, 200, body, len);
}
