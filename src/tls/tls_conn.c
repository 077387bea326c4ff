/* One TLS connection over the caller's ciphertext windows (struct tls_io):
 * wolfSSL's I/O callbacks copy from io.in and append to io.out and never touch
 * a socket; the handshake, records, close_notify, what the handshake settled,
 * and why it failed. */
#include <stdlib.h>
#include <string.h>

#include "tls/tls_internal.h"

#define TLS_RECORD_HEADER 5
#define TLS_MAX_PLAINTEXT 16384
/* A ClientHello record may be larger than a plaintext fragment by nothing;
 * allow the slack RFC 8446 gives ciphertext anyway. */
#define TLS_MAX_FIRST_RECORD (TLS_MAX_PLAINTEXT + 256)
/* Per record, the most an AEAD suite adds: header 5, TLS 1.2 explicit nonce 8,
 * tag 16, TLS 1.3 inner content type 1 (no padding is added). */
#define TLS_AEAD_OVERHEAD 32

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    (void)ssl;
    struct tls_conn *t = arg;
    size_t want = (size_t)sz, n = 0;
    struct tls_hello *h = t->hello;
    if (h) {
        size_t k = h->len - h->off < want ? h->len - h->off : want;
        memcpy(buf, h->buf + h->off, k);
        h->off += k;
        n = k;
        if (h->off == h->len) {
            free(h);
            t->hello = NULL;
        }
    }
    struct tls_io *io = &t->io;
    if (n < want && io->in_off < io->in_len) {
        size_t k = io->in_len - io->in_off < want - n ? io->in_len - io->in_off : want - n;
        memcpy(buf + n, io->in + io->in_off, k);
        io->in_off += k;
        n += k;
    }
    return n ? (int)n : WOLFSSL_CBIO_ERR_WANT_READ;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
    (void)ssl;
    struct tls_io *io = &((struct tls_conn *)arg)->io;
    size_t room = io->out_cap - io->out_len;
    if (room == 0)
        return WOLFSSL_CBIO_ERR_WANT_WRITE;
    size_t n = (size_t)sz < room ? (size_t)sz : room;
    memcpy(io->out + io->out_len, buf, n);
    io->out_len += n;
    return (int)n;
}

void tls_conn_attach_io(struct tls_conn *t)
{
    wolfSSL_SSLSetIORecv(t->ssl, io_recv);
    wolfSSL_SSLSetIOSend(t->ssl, io_send);
    wolfSSL_SetIOReadCtx(t->ssl, t);
    wolfSSL_SetIOWriteCtx(t->ssl, t);
}

struct tls_conn *tls_conn_new_server(struct tls_server *s)
{
    /* The WOLFSSL waits for the first ClientHello record: its SNI picks the
     * context (tls_server.c says why). */
    struct tls_conn *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->server = s;
    tls_server_ref(s);
    return t;
}

void tls_conn_free(struct tls_conn *t)
{
    if (!t)
        return;
    /* wolfSSL_free drops the context's reference under wolfSSL's mutex (as
     * wolfSSL_new took it): once per connection, acceptable. */
    if (t->ssl)
        wolfSSL_free(t->ssl);
    free(t->hello);
    if (t->server)
        tls_server_release(t->server);
    if (t->client)
        tls_client_release(t->client);
    free(t);
}

struct tls_io *tls_conn_io(struct tls_conn *t)
{
    return &t->io;
}

static enum tls_fail_reason reason_of(int e)
{
    switch (e) {
    case VERSION_ERROR:
    case UNSUPPORTED_PROTO_VERSION:
        return TLS_FAIL_VERSION;
    case MATCH_SUITE_ERROR:
    case UNSUPPORTED_SUITE:
    case KEY_SHARE_ERROR:
    case ECC_CURVE_ERROR:
        return TLS_FAIL_NO_SHARED_CIPHER;
    case NO_PEER_CERT:
        return TLS_FAIL_NO_CLIENT_CERT;
    case DOMAIN_NAME_MISMATCH:
    case IPADDR_MISMATCH:
        return TLS_FAIL_BAD_NAME;
    case FATAL_ERROR:
        return TLS_FAIL_ALERT;
    case ASN_NO_SIGNER_E:
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
    case ASN_SIG_CONFIRM_E:
    case ASN_SELF_SIGNED_E:
    case ASN_PATHLEN_SIZE_E:
    case ASN_PATHLEN_INV_E:
    case VERIFY_CERT_ERROR:
    case VERIFY_SIGN_ERROR:
    case NOT_CA_ERROR:
    case MAX_CHAIN_ERROR:
    case EXTKEYUSE_AUTH_E:
    case KEYUSE_SIGNATURE_E:
    case KEYUSE_ENCIPHER_E:
    case CRL_CERT_REVOKED:
    case OCSP_CERT_REVOKED:
        return TLS_FAIL_BAD_CERT;
    case PARSE_ERROR:
    case UNKNOWN_HANDSHAKE_TYPE:
    case UNKNOWN_RECORD_TYPE:
    case INCOMPLETE_DATA:
    case BUFFER_ERROR:
    case LENGTH_ERROR:
    case BAD_HELLO:
    case SANITY_MSG_E:
    case DUPLICATE_MSG_E:
    case OUT_OF_ORDER_E:
    case DECODE_E:
    case EXT_NOT_ALLOWED:
    case EXT_MISSING:
    case UNSUPPORTED_EXTENSION:
    case DUPLICATE_TLS_EXT_E:
    case BAD_KEY_SHARE_DATA:
    case MISSING_HANDSHAKE_DATA:
    case HANDSHAKE_SIZE_ERROR:
    case VERIFY_FINISHED_ERROR:
    case VERIFY_MAC_ERROR:
    case DECRYPT_ERROR:
    case BAD_BINDER:
    case PEER_KEY_ERROR:
    case ECC_PEERKEY_ERROR:
    case INVALID_PARAMETER:
    case NO_CHANGE_CIPHER_E:
    case SECURE_RENEGOTIATION_E:
    case COMPRESSION_ERROR:
    case SANITY_CIPHER_E:
    case RECV_OVERFLOW_E:
        return TLS_FAIL_PROTOCOL;
    default:
        return TLS_FAIL_OTHER;
    }
}

static enum tls_status fail(struct tls_conn *t, int e, enum tls_fail_reason r, const char *detail)
{
    if (t->reason == TLS_FAIL_NONE) {
        t->error = e;
        t->reason = r != TLS_FAIL_NONE ? r : reason_of(e);
        t->detail = detail;
    }
    return TLS_FAILED;
}

/* The status of a wolfSSL call that did not succeed. */
static enum tls_status status_of(struct tls_conn *t, int rc)
{
    int e = wolfSSL_get_error(t->ssl, rc);
    switch (e) {
    case WOLFSSL_ERROR_WANT_READ:
    case WOLFSSL_ERROR_WANT_WRITE:
        return TLS_WANT;
    case WOLFSSL_ERROR_ZERO_RETURN:
        return TLS_CLOSED;
    default:
        return fail(t, e, TLS_FAIL_NONE, NULL);
    }
}

static bool looks_like_http(const unsigned char *p, size_t n)
{
    static const char *const methods[] = { "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ",
                                           "PATCH ", "CONNECT ", "TRACE " };
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        size_t m = strlen(methods[i]);
        if (memcmp(p, methods[i], n < m ? n : m) == 0)
            return true;
    }
    return false;
}

/* The first record's header: a handshake record of a sane length, else not TLS
 * at all (refused here, before wolfSSL sees it: plain HTTP or garbage). */
static enum tls_status check_first_header(struct tls_conn *t, const unsigned char *h, size_t *need)
{
    size_t len = (size_t)h[3] << 8 | h[4];
    if (h[0] == 0x16 && h[1] == 3 && len > 0 && len <= TLS_MAX_FIRST_RECORD) {
        *need = TLS_RECORD_HEADER + len;
        return TLS_OK;
    }
    return fail(t, 0, TLS_FAIL_PROTOCOL,
                looks_like_http(h, TLS_RECORD_HEADER) ? "plain HTTP on a TLS port"
                                                     : "not a TLS handshake record");
}

static enum tls_status create_server_ssl(struct tls_conn *t, const unsigned char *rec, size_t len)
{
    char sni[TLS_NAME_MAX];
    unsigned int sni_len = sizeof sni - 1;
    const char *name = NULL;
    if (wolfSSL_SNI_GetFromBuffer(rec, (unsigned)len, WOLFSSL_SNI_HOST_NAME, (unsigned char *)sni,
                                  &sni_len) == WOLFSSL_SUCCESS && sni_len > 0 && sni_len < sizeof sni) {
        sni[sni_len] = 0;
        name = sni;
    }
    t->ssl = wolfSSL_new(tls_server_pick(t->server, name));
    if (!t->ssl)
        return fail(t, MEMORY_ERROR, TLS_FAIL_OTHER, "out of memory");
    tls_conn_attach_io(t);
    return TLS_OK;
}

/* Before the WOLFSSL exists: collect the first record whole (in place when the
 * window holds it, else copied aside as it arrives) and create the WOLFSSL. */
static enum tls_status server_start(struct tls_conn *t)
{
    struct tls_io *io = &t->io;
    const unsigned char *in = (const unsigned char *)io->in + io->in_off;
    size_t avail = io->in_len - io->in_off, need;
    struct tls_hello *h = t->hello;

    if (!h && avail >= TLS_RECORD_HEADER) {
        if (check_first_header(t, in, &need) != TLS_OK)
            return TLS_FAILED;
        if (avail >= need)
            return create_server_ssl(t, in, need);  /* wolfSSL reads it from the window */
    }
    if (!h) {
        /* Room for the header first; grown to the record once its length is known. */
        h = t->hello = malloc(sizeof *h + TLS_RECORD_HEADER);
        if (!h)
            return fail(t, MEMORY_ERROR, TLS_FAIL_OTHER, "out of memory");
        h->len = h->off = 0;
        h->need = TLS_RECORD_HEADER;
    }
    for (;;) {
        size_t k = h->need - h->len < avail ? h->need - h->len : avail;
        memcpy(h->buf + h->len, in, k);
        h->len += k;
        in += k;
        avail -= k;
        io->in_off += k;
        if (h->len < h->need)
            return TLS_WANT;
        if (h->need > TLS_RECORD_HEADER)
            return create_server_ssl(t, h->buf, h->len);
        if (check_first_header(t, h->buf, &need) != TLS_OK)
            return TLS_FAILED;
        struct tls_hello *grown = realloc(h, sizeof *h + need);
        if (!grown)
            return fail(t, MEMORY_ERROR, TLS_FAIL_OTHER, "out of memory");
        h = t->hello = grown;
        h->need = need;
    }
}

enum tls_status tls_handshake(struct tls_conn *t)
{
    if (t->reason != TLS_FAIL_NONE)
        return TLS_FAILED;
    if (!t->ssl) {
        enum tls_status st = server_start(t);
        if (st != TLS_OK)
            return st;
    }
    int rc = t->server ? wolfSSL_accept(t->ssl) : wolfSSL_connect(t->ssl);
    if (rc != WOLFSSL_SUCCESS) {
        enum tls_status st = status_of(t, rc);
        return st == TLS_CLOSED ? fail(t, ZERO_RETURN, TLS_FAIL_PROTOCOL, "closed during the handshake") : st;
    }
    return TLS_OK;
}

enum tls_fail_reason tls_fail_reason(const struct tls_conn *t)
{
    return t->reason;
}

const char *tls_fail_detail(const struct tls_conn *t)
{
    if (t->detail)
        return t->detail;
    if (t->reason == TLS_FAIL_NONE)
        return "";
    return wolfSSL_ERR_reason_error_string((unsigned long)t->error);
}

/* Finishes a write wolfSSL took but could not put in io.out: wolfSSL resends
 * what it holds when called again with the same length. */
static enum tls_status flush_pending(struct tls_conn *t)
{
    static const char unused[1];
    if (!t->write_pending)
        return TLS_OK;
    int rc = wolfSSL_write(t->ssl, unused, (int)t->write_pending);
    if (rc <= 0)
        return status_of(t, rc);
    t->write_pending = 0;
    return TLS_OK;
}

size_t tls_read(struct tls_conn *t, char *buf, size_t cap, enum tls_status *st)
{
    if (!t->ssl || !wolfSSL_is_init_finished(t->ssl)) {
        *st = tls_handshake(t);
        if (*st != TLS_OK)
            return 0;
    }
    if ((*st = flush_pending(t)) == TLS_FAILED)
        return 0;
    int rc = wolfSSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (rc > 0) {
        *st = TLS_OK;
        return (size_t)rc;
    }
    *st = status_of(t, rc);
    return 0;
}

/* The plaintext record size and per-record overhead wolfSSL settled on. */
static void record_shape(const struct tls_conn *t, size_t *frag, size_t *overhead)
{
    *frag = TLS_MAX_PLAINTEXT;
    *overhead = TLS_AEAD_OVERHEAD;
    if (t->ssl && wolfSSL_is_init_finished(t->ssl)) {
        int max = wolfSSL_GetMaxOutputSize(t->ssl), one = wolfSSL_GetOutputSize(t->ssl, 1);
        if (max > 0 && max <= TLS_MAX_PLAINTEXT)
            *frag = (size_t)max;
        if (one > 1)
            *overhead = (size_t)one - 1;
    }
}

size_t tls_write_room(const struct tls_conn *t, size_t n)
{
    size_t frag, overhead;
    record_shape(t, &frag, &overhead);
    return n + (n + frag - 1) / frag * overhead;
}

size_t tls_write(struct tls_conn *t, const char *p, size_t n, enum tls_status *st)
{
    if (t->reason != TLS_FAIL_NONE || !t->ssl) {
        *st = TLS_FAILED;
        return 0;
    }
    if ((*st = flush_pending(t)) != TLS_OK)
        return 0;
    /* Take only what fits in io.out, so wolfSSL never holds ciphertext back. */
    size_t frag, overhead, room = t->io.out_cap - t->io.out_len;
    record_shape(t, &frag, &overhead);
    size_t take = room / (frag + overhead) * frag, rest = room % (frag + overhead);
    if (rest > overhead)
        take += rest - overhead;
    if (take > n)
        take = n;
    if (take > INT_MAX)
        take = INT_MAX / frag * frag;
    if (take == 0) {
        *st = n ? TLS_WANT : TLS_OK;
        return 0;
    }
    int rc = wolfSSL_write(t->ssl, p, (int)take);
    if (rc > 0) {
        *st = TLS_OK;
        return (size_t)rc;
    }
    *st = status_of(t, rc);
    if (*st == TLS_WANT) {
        /* Encrypted and held by wolfSSL: taken; the next call flushes it. */
        t->write_pending = take;
        *st = TLS_OK;
        return take;
    }
    return 0;
}

void tls_shutdown(struct tls_conn *t)
{
    if (t->ssl && t->reason == TLS_FAIL_NONE && flush_pending(t) == TLS_OK)
        wolfSSL_shutdown(t->ssl);
}

static const char *group_name(WOLFSSL *ssl)
{
    const char *g = wolfSSL_get_curve_name(ssl);
    if (!g)
        return NULL;
    if (strcmp(g, "SECP256R1") == 0)
        return "P-256";
    if (strcmp(g, "SECP384R1") == 0)
        return "P-384";
    if (strcmp(g, "SECP521R1") == 0)
        return "P-521";
    return g;
}

void tls_conn_info(struct tls_conn *t, struct tls_info *info)
{
    memset(info, 0, sizeof *info);
    if (!t->ssl)
        return;
    info->version = wolfSSL_get_version(t->ssl);
    info->cipher = wolfSSL_get_cipher_name(t->ssl);
    info->group = group_name(t->ssl);
    info->resumed = wolfSSL_session_reused(t->ssl) == 1;
    info->sni = wolfSSL_get_servername(t->ssl, WOLFSSL_SNI_HOST_NAME);
    char *proto = NULL;
    unsigned short len = 0;
    if (wolfSSL_ALPN_GetProtocol(t->ssl, &proto, &len) == WOLFSSL_SUCCESS && len == 8 &&
        memcmp(proto, "http/1.1", 8) == 0)
        info->alpn = "http/1.1";    /* the only protocol either side offers */
}

void tls_peer_subject(struct tls_conn *t, char *out, size_t cap)
{
    if (!cap)
        return;
    out[0] = 0;
    WOLFSSL_X509 *x = t->ssl ? wolfSSL_get_peer_certificate(t->ssl) : NULL;
    if (!x)
        return;
    if (!wolfSSL_X509_NAME_oneline(wolfSSL_X509_get_subject_name(x), out, (int)(cap > INT_MAX ? INT_MAX : cap)))
        out[0] = 0;
    wolfSSL_X509_free(x);
}
