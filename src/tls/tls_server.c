/* Server contexts: one WOLFSSL_CTX per configured certificate, all with the
 * same versions, ciphers, groups, ALPN, client CA and tickets; the names each
 * certificate answers for SNI; configuration errors as FILE:LINE.
 *
 * SNI: the connection reads the server name from the buffered first ClientHello
 * record (wolfSSL_SNI_GetFromBuffer) and only then creates its WOLFSSL from the
 * context that name picks (tls_conn.c). Chosen over a servername callback that
 * switches contexts with wolfSSL_set_SSL_CTX because the WOLFSSL is then built
 * whole from one context (cipher suites, key type, certificate, key): nothing is
 * copied half-way, it behaves the same for TLS 1.3 and 1.2, and certificates of
 * different key types (ECDSA, RSA) can be mixed. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls/tls_internal.h"

#include <wolfssl/openssl/evp.h>
#include <wolfssl/openssl/pem.h>

#define TLS_MAX_FILE (1u << 20)     /* PEM files are a few KiB; a CA bundle ~200 KiB */

struct load {
    const char *conf;
    char *err;
    size_t errlen;
};

/* Reads a whole file; NULL with the error written (path and strerror). */
static unsigned char *read_file(const struct load *ld, int line, const char *what, const char *path,
                                size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: %s: cannot read %s: %s", ld->conf, line, what, path,
                    strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > TLS_MAX_FILE) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: %s: %s is not a regular file under 1 MiB", ld->conf,
                    line, what, path);
        close(fd);
        return NULL;
    }
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0) {
            tls_set_err(ld->err, ld->errlen, "%s:%d: %s: cannot read %s: %s", ld->conf, line, what, path,
                        r < 0 ? strerror(errno) : "file shrank while reading");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    if (!buf) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: out of memory", ld->conf, line);
        return NULL;
    }
    buf[got] = 0;
    *len = got;
    return buf;
}

static void add_name(struct tls_cert_ctx *c, const char *name)
{
    if (c->nnames == TLS_MAX_NAMES || !*name || strlen(name) >= TLS_NAME_MAX)
        return;
    char *dst = c->names[c->nnames++];
    for (size_t i = 0; (dst[i] = (char)tolower((unsigned char)name[i])); i++)
        ;
}

static bool is_ip_literal(const char *s)
{
    return strchr(s, ':') || strspn(s, "0123456789.") == strlen(s);
}

/* The leaf's names (SAN DNS names, else the CN) and its validity, which is
 * warned about, not refused: an operator renewing late still serves. */
static int read_leaf(const struct load *ld, const struct cfg_tls_cert *cc, const unsigned char *pem,
                     size_t len, struct tls_cert_ctx *c, tls_warn_fn *warn, void *warn_arg)
{
    WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_buffer(pem, (int)len, WOLFSSL_FILETYPE_PEM);
    if (!x) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: cert: %s holds no PEM certificate", ld->conf,
                    cc->cert_line, cc->cert);
        return -1;
    }
    for (char *n; (n = wolfSSL_X509_get_next_altname(x));)
        if (!is_ip_literal(n))
            add_name(c, n);
    if (c->nnames == 0) {
        char cn[TLS_NAME_MAX];
        if (wolfSSL_X509_NAME_get_text_by_NID(wolfSSL_X509_get_subject_name(x), NID_commonName, cn,
                                              sizeof cn) > 0)
            add_name(c, cn);
    }
    if (warn) {
        char msg[PATH_MAX + 128];
        if (wolfSSL_X509_cmp_current_time(wolfSSL_X509_get_notAfter(x)) < 0) {
            snprintf(msg, sizeof msg, "%s:%d: cert: %s has expired (clients will refuse it)", ld->conf,
                     cc->cert_line, cc->cert);
            warn(warn_arg, msg);
        } else if (wolfSSL_X509_cmp_current_time(wolfSSL_X509_get_notBefore(x)) > 0) {
            snprintf(msg, sizeof msg, "%s:%d: cert: %s is not valid yet (clients will refuse it)",
                     ld->conf, cc->cert_line, cc->cert);
            warn(warn_arg, msg);
        }
    }
    wolfSSL_X509_free(x);
    return 0;
}

/* Whether key is the private half of the leaf's public key: a signature made
 * with it verifies under the certificate. (wolfSSL_CTX_check_private_key of
 * 5.5.4 compares only the key types of ECC keys, not the keys.) */
static bool key_matches(const unsigned char *cert, size_t clen, const unsigned char *key, size_t klen)
{
    static const unsigned char msg[] = "aigw: does this key match its certificate?";
    unsigned char sig[1024];
    size_t siglen = sizeof sig;
    WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_buffer(cert, (int)clen, WOLFSSL_FILETYPE_PEM);
    WOLFSSL_EVP_PKEY *pub = x ? wolfSSL_X509_get_pubkey(x) : NULL;
    WOLFSSL_BIO *bio = wolfSSL_BIO_new_mem_buf(key, (int)klen);
    WOLFSSL_EVP_PKEY *priv = bio ? wolfSSL_PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    WOLFSSL_EVP_MD_CTX *sign = wolfSSL_EVP_MD_CTX_new(), *verify = wolfSSL_EVP_MD_CTX_new();
    bool ok = pub && priv && sign && verify &&
              wolfSSL_EVP_DigestSignInit(sign, NULL, wolfSSL_EVP_sha256(), NULL, priv) == 1 &&
              wolfSSL_EVP_DigestSignUpdate(sign, msg, sizeof msg) == 1 &&
              wolfSSL_EVP_DigestSignFinal(sign, sig, &siglen) == 1 &&
              wolfSSL_EVP_DigestVerifyInit(verify, NULL, wolfSSL_EVP_sha256(), NULL, pub) == 1 &&
              wolfSSL_EVP_DigestVerifyUpdate(verify, msg, sizeof msg) == 1 &&
              wolfSSL_EVP_DigestVerifyFinal(verify, sig, siglen) == 1;
    wolfSSL_EVP_MD_CTX_free(sign);
    wolfSSL_EVP_MD_CTX_free(verify);
    wolfSSL_EVP_PKEY_free(priv);
    wolfSSL_BIO_free(bio);
    wolfSSL_EVP_PKEY_free(pub);
    wolfSSL_X509_free(x);
    return ok;
}

static int alpn_select(WOLFSSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    /* Only http/1.1 until aigw speaks HTTP/2; a client offering neither gets no
     * ALPN answer and the handshake goes on. */
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Every name in the list must be a suite wolfSSL knows (wolfSSL itself skips
 * unknown names silently), and one must be a TLS 1.3 suite: TLS 1.3 is always
 * on, and wolfSSL does not fall back to 1.2 for a 1.3 client it has no 1.3
 * suite for. */
static int check_ciphers(const struct load *ld, WOLFSSL_CTX *ctx, const char *list, int line)
{
    char one[128];
    bool tls13 = false;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ":, ");
        if (n >= sizeof one) {
            tls_set_err(ld->err, ld->errlen, "%s:%d: ciphers: a name too long in the list", ld->conf, line);
            return -1;
        }
        if (n) {
            memcpy(one, p, n);
            one[n] = 0;
            unsigned char cs0 = 0, cs1 = 0;
            int flags = 0;
            if (wolfSSL_get_cipher_suite_from_name(one, &cs0, &cs1, &flags) != 0 ||
                wolfSSL_CTX_set_cipher_list(ctx, one) != WOLFSSL_SUCCESS) {
                tls_set_err(ld->err, ld->errlen, "%s:%d: ciphers: \"%s\" is not a cipher suite %s knows",
                            ld->conf, line, one, tls_library_version());
                return -1;
            }
            tls13 |= cs0 == 0x13;   /* TLS 1.3 suites are 0x13,0x0N */
        }
        p += n;
        p += strspn(p, ":, ");
    }
    if (!tls13) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: ciphers: the list needs a TLS 1.3 suite (e.g. "
                    "TLS13-CHACHA20-POLY1305-SHA256)", ld->conf, line);
        return -1;
    }
    if (wolfSSL_CTX_set_cipher_list(ctx, list) != WOLFSSL_SUCCESS) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: ciphers: no usable cipher suite in \"%s\"", ld->conf,
                    line, list);
        return -1;
    }
    return 0;
}

/* Everything but the certificate: the same on every context of the server. */
static int setup_ctx(const struct load *ld, WOLFSSL_CTX *ctx, const struct cfg_tls *cfg,
                     const unsigned char *ca, size_t ca_len, const uint64_t *rotation_ms)
{
    int minv = cfg->min_version == 13 ? WOLFSSL_TLSV1_3 : WOLFSSL_TLSV1_2;
    if (wolfSSL_CTX_SetMinVersion(ctx, minv) != WOLFSSL_SUCCESS) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: min_version: not supported by %s", ld->conf,
                    cfg->min_version_line, tls_library_version());
        return -1;
    }
    /* No renegotiation: this wolfSSL is built without it (HAVE_SECURE_RENEGOTIATION
     * unset: a second ClientHello is refused). No compression (not built in
     * either; said anyway). The server's cipher order wins. */
    wolfSSL_CTX_set_options(ctx, WOLFSSL_OP_NO_COMPRESSION | WOLFSSL_OP_CIPHER_SERVER_PREFERENCE);
    const char *ciphers = cfg->ciphers[0] ? cfg->ciphers : tls_default_ciphers();
    if (check_ciphers(ld, ctx, ciphers, cfg->ciphers_line) != 0)
        return -1;
    if (tls_set_groups(ctx) != WOLFSSL_SUCCESS) {
        tls_set_err(ld->err, ld->errlen, "%s: %s refuses the groups X25519, P-256, P-384", ld->conf,
                    tls_library_version());
        return -1;
    }
    wolfSSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (ca) {
        if (wolfSSL_CTX_load_verify_buffer(ctx, ca, (long)ca_len, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
            tls_set_err(ld->err, ld->errlen, "%s:%d: client_ca: %s holds no usable PEM CA certificate",
                        ld->conf, cfg->client_ca_line, cfg->client_ca);
            return -1;
        }
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else {
        wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
    }
    if (tls_tickets_setup(ctx, cfg, rotation_ms) != 0) {
        tls_set_err(ld->err, ld->errlen, "%s: %s refuses the session ticket setup", ld->conf,
                    tls_library_version());
        return -1;
    }
    return 0;
}

static int load_cert(const struct load *ld, struct tls_cert_ctx *c, const struct cfg_tls_cert *cc,
                     tls_warn_fn *warn, void *warn_arg)
{
    size_t clen = 0, klen = 0;
    unsigned char *cert = read_file(ld, cc->cert_line, "cert", cc->cert, &clen);
    if (!cert)
        return -1;
    int rc = -1;
    unsigned char *key = read_file(ld, cc->key_line, "key", cc->key, &klen);
    if (!key)
        goto out;
    if (wolfSSL_CTX_use_certificate_chain_buffer(c->ctx, cert, (long)clen) != WOLFSSL_SUCCESS) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: cert: %s holds no usable PEM certificate chain",
                    ld->conf, cc->cert_line, cc->cert);
        goto out;
    }
    if (read_leaf(ld, cc, cert, clen, c, warn, warn_arg) != 0)
        goto out;
    if (wolfSSL_CTX_use_PrivateKey_buffer(c->ctx, key, (long)klen, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: key: %s holds no usable PEM private key", ld->conf,
                    cc->key_line, cc->key);
        goto out;
    }
    if (wolfSSL_CTX_check_private_key(c->ctx) != WOLFSSL_SUCCESS || !key_matches(cert, clen, key, klen)) {
        tls_set_err(ld->err, ld->errlen, "%s:%d: key: %s does not match the certificate %s", ld->conf,
                    cc->key_line, cc->key, cc->cert);
        goto out;
    }
    rc = 0;
out:
    if (key)
        memset(key, 0, klen);   /* do not leave the private key in freed heap */
    free(key);
    free(cert);
    return rc;
}

static void server_free(struct tls_server *s)
{
    for (unsigned i = 0; i < s->ncerts; i++)
        wolfSSL_CTX_free(s->certs[i].ctx);
    free(s);
}

struct tls_server *tls_server_new(const struct cfg_tls *cfg, const char *conf_path, tls_warn_fn *warn,
                                  void *warn_arg, char *err, size_t errlen)
{
    const struct load ld = { conf_path, err, errlen };
    if (cfg->ncerts == 0 || cfg->ncerts > TLS_MAX_CERTS) {
        tls_set_err(err, errlen, "%s: [tls] needs between 1 and %d cert/key pairs", conf_path, TLS_MAX_CERTS);
        return NULL;
    }
    struct tls_server *s = calloc(1, sizeof *s);
    if (!s) {
        tls_set_err(err, errlen, "%s: out of memory", conf_path);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->ticket_rotation_ms = cfg->ticket_rotation_ms ? cfg->ticket_rotation_ms : 3600 * 1000;
    unsigned char *ca = NULL;
    size_t ca_len = 0;
    if (cfg->client_ca[0] && !(ca = read_file(&ld, cfg->client_ca_line, "client_ca", cfg->client_ca, &ca_len)))
        goto fail;
    for (unsigned i = 0; i < cfg->ncerts; i++) {
        struct tls_cert_ctx *c = &s->certs[i];
        c->ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
        if (!c->ctx) {
            tls_set_err(err, errlen, "%s: out of memory", conf_path);
            goto fail;
        }
        s->ncerts++;
        if (setup_ctx(&ld, c->ctx, cfg, ca, ca_len, &s->ticket_rotation_ms) != 0 ||
            load_cert(&ld, c, &cfg->certs[i], warn, warn_arg) != 0)
            goto fail;
    }
    free(ca);
    return s;
fail:
    free(ca);
    server_free(s);
    return NULL;
}

void tls_server_ref(struct tls_server *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void tls_server_release(struct tls_server *s)
{
    if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        server_free(s);
}

/* "*.example.com" covers exactly one more label: "a.example.com", not
 * "example.com" nor "a.b.example.com". */
static bool wildcard_match(const char *pattern, const char *name)
{
    if (pattern[0] != '*' || pattern[1] != '.')
        return false;
    const char *dot = strchr(name, '.');
    return dot && dot != name && strcasecmp(dot, pattern + 1) == 0;
}

WOLFSSL_CTX *tls_server_pick(const struct tls_server *s, const char *sni)
{
    if (sni && *sni) {
        for (unsigned i = 0; i < s->ncerts; i++)
            for (unsigned j = 0; j < s->certs[i].nnames; j++)
                if (strcasecmp(s->certs[i].names[j], sni) == 0)
                    return s->certs[i].ctx;
        for (unsigned i = 0; i < s->ncerts; i++)
            for (unsigned j = 0; j < s->certs[i].nnames; j++)
                if (wildcard_match(s->certs[i].names[j], sni))
                    return s->certs[i].ctx;
    }
    return s->certs[0].ctx;
}
