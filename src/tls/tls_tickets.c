/* Session ticket keys: stateless resumption for TLS 1.3 (PSK tickets) and 1.2
 * (RFC 5077 tickets), sealed with our own keys instead of wolfSSL's default
 * ticket key (a context-wide key behind a mutex).
 *
 * A master secret drawn once per process (tls_global_init) outlives every
 * configuration generation, so tickets survive a reload. Time is cut into
 * epochs of ticket_rotation_ms; epoch e's key is HMAC-SHA256(master, e). A
 * ticket is sealed (ChaCha20-Poly1305) under the current epoch's key and names
 * its epoch in key_name; one from the current or the previous epoch opens,
 * anything older is rejected and the client does a full handshake. A TLS 1.3
 * server sends a fresh ticket after every handshake anyway; a TLS 1.2 client
 * keeps its ticket until it is refused (asking wolfSSL 5.5.4 for a new ticket on
 * a 1.2 resumption, WOLFSSL_TICKET_RET_CREATE, sends a NewSessionTicket the
 * client did not expect and it aborts).
 *
 * Each shard thread keeps the two keys it last derived in thread-local storage,
 * so a handshake derives nothing in the steady state and no thread writes
 * memory another reads. */
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include "tls/tls_internal.h"
#include "util/clock.h"

#define TICKET_KEY_LEN 32
#define TICKET_TAG_LEN 8    /* key_name = tag (this process) || epoch, big endian */

static unsigned char ticket_master[TICKET_KEY_LEN];
static unsigned char ticket_name_tag[TICKET_TAG_LEN];
static _Atomic uint64_t ticket_test_clock_ms;

struct epoch_key {
    uint64_t rotation_ms, epoch;
    bool valid;
    unsigned char key[TICKET_KEY_LEN];
};

static __thread struct {
    struct epoch_key keys[2];       /* the last two derived: current and previous epoch */
    unsigned next;                  /* slot the next derivation overwrites */
    unsigned char nonce_prefix[8];  /* drawn once per thread */
    uint32_t nonce_counter;
    bool seeded;
} ticket_tls;

static int hmac_sha256(const unsigned char *msg, size_t n, unsigned char out[32])
{
    Hmac h;
    int ok = wc_HmacInit(&h, NULL, INVALID_DEVID) == 0 &&
             wc_HmacSetKey(&h, WC_SHA256, ticket_master, sizeof ticket_master) == 0 &&
             wc_HmacUpdate(&h, msg, (word32)n) == 0 && wc_HmacFinal(&h, out) == 0;
    wc_HmacFree(&h);
    return ok ? 0 : -1;
}

int tls_tickets_init(char *err, size_t errlen)
{
    if (getrandom(ticket_master, sizeof ticket_master, 0) != (ssize_t)sizeof ticket_master) {
        tls_set_err(err, errlen, "getrandom for the ticket master secret failed");
        return -1;
    }
    static const char label[] = "aigw ticket key name";
    unsigned char mac[32];
    if (hmac_sha256((const unsigned char *)label, sizeof label - 1, mac) != 0) {
        tls_set_err(err, errlen, "HMAC-SHA256 unavailable for ticket keys");
        return -1;
    }
    memcpy(ticket_name_tag, mac, sizeof ticket_name_tag);
    return 0;
}

void tls_tickets_set_clock_for_test(uint64_t now_ms)
{
    atomic_store_explicit(&ticket_test_clock_ms, now_ms, memory_order_relaxed);
}

static uint64_t ticket_now_ms(void)
{
    uint64_t t = atomic_load_explicit(&ticket_test_clock_ms, memory_order_relaxed);
    return t ? t : clock_wall_us() / 1000u;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static const unsigned char *epoch_key(uint64_t rotation_ms, uint64_t epoch)
{
    for (unsigned i = 0; i < 2; i++) {
        struct epoch_key *k = &ticket_tls.keys[i];
        if (k->valid && k->epoch == epoch && k->rotation_ms == rotation_ms)
            return k->key;
    }
    struct epoch_key *k = &ticket_tls.keys[ticket_tls.next];
    ticket_tls.next ^= 1;
    unsigned char msg[16];
    put_be64(msg, rotation_ms);
    put_be64(msg + 8, epoch);
    k->valid = hmac_sha256(msg, sizeof msg, k->key) == 0;
    k->rotation_ms = rotation_ms;
    k->epoch = epoch;
    return k->valid ? k->key : NULL;
}

/* A nonce never repeats under one key: a random 64-bit prefix per thread (drawn
 * again if the counter wraps) and a counter. */
static int next_nonce(unsigned char nonce[CHACHA20_POLY1305_AEAD_IV_SIZE])
{
    if (!ticket_tls.seeded || ticket_tls.nonce_counter == UINT32_MAX) {
        if (getrandom(ticket_tls.nonce_prefix, sizeof ticket_tls.nonce_prefix, 0) !=
            (ssize_t)sizeof ticket_tls.nonce_prefix)
            return -1;
        ticket_tls.seeded = true;
        ticket_tls.nonce_counter = 0;
    }
    uint32_t c = ++ticket_tls.nonce_counter;
    memcpy(nonce, ticket_tls.nonce_prefix, 8);
    nonce[8] = (unsigned char)(c >> 24);
    nonce[9] = (unsigned char)(c >> 16);
    nonce[10] = (unsigned char)(c >> 8);
    nonce[11] = (unsigned char)c;
    return 0;
}

static int ticket_cb(WOLFSSL *ssl, unsigned char key_name[WOLFSSL_TICKET_NAME_SZ],
                     unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
                     int enc, unsigned char *ticket, int len, int *out_len, void *arg)
{
    (void)ssl;
    const uint64_t rotation_ms = *(const uint64_t *)arg;
    const uint64_t now_epoch = ticket_now_ms() / rotation_ms;
    /* The additional data binds the key name and the nonce to the sealed state. */
    unsigned char aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ];

    if (enc) {
        const unsigned char *key = epoch_key(rotation_ms, now_epoch);
        if (!key)
            return WOLFSSL_TICKET_RET_FATAL;
        memcpy(key_name, ticket_name_tag, TICKET_TAG_LEN);
        put_be64(key_name + TICKET_TAG_LEN, now_epoch);
        memset(iv, 0, WOLFSSL_TICKET_IV_SZ);
        if (next_nonce(iv) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
        memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
        memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
        memset(mac, 0, WOLFSSL_TICKET_MAC_SZ);
        if (wc_ChaCha20Poly1305_Encrypt(key, iv, aad, sizeof aad, ticket, (word32)len, ticket, mac) != 0)
            return WOLFSSL_TICKET_RET_FATAL;
        *out_len = len;
        return WOLFSSL_TICKET_RET_OK;
    }

    if (memcmp(key_name, ticket_name_tag, TICKET_TAG_LEN) != 0)
        return WOLFSSL_TICKET_RET_REJECT;   /* another process's (or a forged) ticket */
    uint64_t epoch = get_be64(key_name + TICKET_TAG_LEN);
    if (epoch != now_epoch && epoch + 1 != now_epoch)
        return WOLFSSL_TICKET_RET_REJECT;
    const unsigned char *key = epoch_key(rotation_ms, epoch);
    if (!key)
        return WOLFSSL_TICKET_RET_REJECT;
    memcpy(aad, key_name, WOLFSSL_TICKET_NAME_SZ);
    memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
    if (wc_ChaCha20Poly1305_Decrypt(key, iv, aad, sizeof aad, ticket, (word32)len, mac, ticket) != 0)
        return WOLFSSL_TICKET_RET_REJECT;
    *out_len = len;
    return WOLFSSL_TICKET_RET_OK;
}

int tls_tickets_setup(WOLFSSL_CTX *ctx, const struct cfg_tls *cfg, const uint64_t *rotation_ms)
{
    /* Resumption is stateless: wolfSSL's session cache is global and locked. */
    wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
    if (!cfg->session_tickets) {
        wolfSSL_CTX_set_options(ctx, WOLFSSL_OP_NO_TICKET);
        wolfSSL_CTX_no_ticket_TLSv13(ctx);
        return 0;
    }
    /* A ticket opens for up to two epochs: say so in the lifetime hint and keep
     * wolfSSL's own session timeout (which also bounds tickets) as long. */
    uint64_t life_s = 2 * *rotation_ms / 1000u;
    if (life_s < 1)
        life_s = 1;
    if (life_s > 604800)
        life_s = 604800;    /* RFC 8446's ceiling */
    if (wolfSSL_CTX_set_TicketEncCb(ctx, ticket_cb) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_set_TicketEncCtx(ctx, (void *)rotation_ms) != WOLFSSL_SUCCESS ||
        wolfSSL_CTX_set_TicketHint(ctx, (int)life_s) != WOLFSSL_SUCCESS)
        return -1;
    wolfSSL_CTX_set_timeout(ctx, (unsigned)life_s);
    return 0;
}
