/* The backend side: a client context per pool (CA bundle, verification always
 * on), connections that send SNI and check the server's name (DNS name or IP
 * address), and session resumption across upstream connections.
 *
 * When a session is resumable: TLS 1.2 tickets (and session ids) arrive within
 * the handshake, so tls_conn_save_session works once tls_handshake returned
 * TLS_OK. A TLS 1.3 server sends its ticket after the handshake, as a
 * post-handshake message that tls_read processes: save the session after the
 * first tls_read that returned response bytes (the ticket precedes them); before
 * that tls_conn_save_session returns NULL. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tls/tls_internal.h"

#define TLS_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

struct tls_client *tls_client_new(const char *ca_file, char *err, size_t errlen)
{
    const char *ca = ca_file && *ca_file ? ca_file : TLS_SYSTEM_CA;
    if (access(ca, R_OK) != 0) {
        tls_set_err(err, errlen, "cannot read CA bundle %s: %s", ca, strerror(errno));
        return NULL;
    }
    struct tls_client *c = calloc(1, sizeof *c);
    if (!c || !(c->ctx = wolfSSL_CTX_new(wolfSSLv23_client_method()))) {
        free(c);
        tls_set_err(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    if (wolfSSL_CTX_SetMinVersion(c->ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_set_cipher_list(c->ctx, tls_default_ciphers()) != WOLFSSL_SUCCESS ||
        tls_set_groups(c->ctx) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_UseSessionTicket(c->ctx) != WOLFSSL_SUCCESS) {
        tls_set_err(err, errlen, "%s refuses the client settings", tls_library_version());
        goto fail;
    }
    if (wolfSSL_CTX_load_verify_locations(c->ctx, ca, NULL) != WOLFSSL_SUCCESS) {
        tls_set_err(err, errlen, "%s holds no usable PEM CA certificate", ca);
        goto fail;
    }
    wolfSSL_CTX_set_verify(c->ctx, WOLFSSL_VERIFY_PEER, NULL);
    return c;
fail:
    wolfSSL_CTX_free(c->ctx);
    free(c);
    return NULL;
}

void tls_client_ref(struct tls_client *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void tls_client_release(struct tls_client *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        wolfSSL_CTX_free(c->ctx);
        free(c);
    }
}

static bool is_ip_address(const char *s)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

struct tls_conn *tls_conn_new_client(struct tls_client *c, const char *server_name,
                                     struct tls_session *session)
{
    struct tls_conn *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->client = c;
    tls_client_ref(c);
    if (!(t->ssl = wolfSSL_new(c->ctx)))
        goto fail;
    tls_conn_attach_io(t);
    char alpn[] = "http/1.1";
    if (wolfSSL_UseALPN(t->ssl, alpn, sizeof alpn - 1, WOLFSSL_ALPN_CONTINUE_ON_MISMATCH) != WOLFSSL_SUCCESS)
        goto fail;
    if (server_name && *server_name) {
        if (is_ip_address(server_name)) {
            /* No SNI for an address (RFC 6066); the certificate must list it. */
            if (wolfSSL_X509_VERIFY_PARAM_set1_ip_asc(wolfSSL_get0_param(t->ssl), server_name) != WOLFSSL_SUCCESS)
                goto fail;
        } else if (wolfSSL_UseSNI(t->ssl, WOLFSSL_SNI_HOST_NAME, server_name,
                                  (unsigned short)strlen(server_name)) != WOLFSSL_SUCCESS ||
                   wolfSSL_check_domain_name(t->ssl, server_name) != WOLFSSL_SUCCESS) {
            goto fail;
        }
    }
    if (session && wolfSSL_set_session(t->ssl, (WOLFSSL_SESSION *)session) != WOLFSSL_SUCCESS)
        goto fail;
    return t;
fail:
    tls_conn_free(t);
    return NULL;
}

struct tls_session *tls_conn_save_session(struct tls_conn *t)
{
    if (!t->client || !t->ssl || !wolfSSL_is_init_finished(t->ssl))
        return NULL;
    WOLFSSL_SESSION *s = wolfSSL_get1_session(t->ssl);
    if (!s)
        return NULL;
    bool tls13 = wolfSSL_version(t->ssl) == TLS1_3_VERSION;
    if (!(wolfSSL_SESSION_has_ticket(s) || (!tls13 && wolfSSL_SESSION_is_resumable(s)))) {
        wolfSSL_SESSION_free(s);
        return NULL;
    }
    return (struct tls_session *)s;
}

void tls_session_free(struct tls_session *s)
{
    if (s)
        wolfSSL_SESSION_free((WOLFSSL_SESSION *)s);
}
