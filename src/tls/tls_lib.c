/* Facts about the linked wolfSSL and the process-wide start. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/version.h>
#include <wolfssl/ssl.h>

#include "tls/tls_internal.h"

/* The server's default order puts first the AEAD that is fastest on the linked
 * library, as measured on the development machine (tests/unit/test_tls.c
 * `tls/bench_*` prints the figures; perf/README.md has them):
 * - Debian 12's libwolfssl 5.5.4 (portable C, no AES-NI): ChaCha20-Poly1305 is about
 *   3x AES-GCM, so it leads;
 * - the fast build (scripts/wolfssl-fast.sh, `make WOLFSSL=fast`: AES-NI, AVX2 and
 *   SP assembly) on a CPU with AES-NI: AES-128-GCM is about 1.8x ChaCha20-Poly1305
 *   there, so it leads.
 * AES-128-GCM before AES-256-GCM; ECDHE only, ECDSA before RSA within each AEAD. */
#define CHACHA_FIRST_CIPHERS \
    "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
#define AES_FIRST_CIPHERS \
    "TLS13-AES128-GCM-SHA256:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES256-GCM-SHA384:" \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"

/* AES has a hardware path only when the library was built with AES-NI and this CPU
 * has it: a library built with it checks the CPU itself and otherwise falls back to
 * its portable C, which is as slow as Debian's. */
static bool aes_has_hardware_path(void)
{
#if defined(WOLFSSL_AESNI) && (defined(__x86_64__) || defined(__i386__))
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#else
    return false;
#endif
}

const char *tls_library_version(void)
{
    return "wolfSSL " LIBWOLFSSL_VERSION_STRING;
}

const char *tls_default_ciphers(void)
{
    return aes_has_hardware_path() ? AES_FIRST_CIPHERS : CHACHA_FIRST_CIPHERS;
}

void tls_describe_library(char *out, size_t cap)
{
    const char *aes = "AES-GCM (software only, no hardware path)";
#ifdef WOLFSSL_AESNI
    aes = aes_has_hardware_path() ? "AES-GCM (AES-NI)"
                                  : "AES-GCM (library built for AES-NI, this CPU lacks it: software, no hardware path)";
#endif
    /* What else the fast build brings; wolfSSL picks each variant by CPUID at run time. */
#ifdef USE_INTEL_SPEEDUP
    const char *speedup = "; x86-64 assembly for ChaCha20, Poly1305, GHASH (AVX/AVX2)";
#else
    const char *speedup = "";
#endif
#ifdef WOLFSSL_SP_X86_64_ASM
    const char *sp = "; x86-64 assembly for P-256, P-384 (SP)";
#else
    const char *sp = "";
#endif
#if !defined(USE_INTEL_SPEEDUP) && !defined(WOLFSSL_SP_X86_64_ASM)
    speedup = "; no assembly";
#endif
    snprintf(out, cap, "%s: TLS 1.3, 1.2; AEADs ChaCha20-Poly1305, %s; groups X25519, P-256, P-384; "
             "session tickets%s%s; kTLS no", tls_library_version(), aes, speedup, sp);
}

int tls_set_groups(WOLFSSL_CTX *ctx)
{
    /* X25519 first: twice as cheap as P-256 on Debian's software-only build, and as
     * cheap on the fast build (SP assembly), where it costs nothing to keep. */
    int groups[] = { WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1 };
    return wolfSSL_CTX_set_groups(ctx, groups, (int)(sizeof groups / sizeof *groups));
}

int tls_global_init(char *err, size_t errlen)
{
    if (wolfSSL_Init() != WOLFSSL_SUCCESS) {
        tls_set_err(err, errlen, "wolfSSL_Init failed");
        return -1;
    }
    return tls_tickets_init(err, errlen);
}

const char *tls_fail_reason_name(enum tls_fail_reason r)
{
    static const char *const names[TLS_FAIL_COUNT] = {
        [TLS_FAIL_NONE] = "none",
        [TLS_FAIL_PROTOCOL] = "protocol",
        [TLS_FAIL_VERSION] = "version",
        [TLS_FAIL_NO_SHARED_CIPHER] = "no_shared_cipher",
        [TLS_FAIL_NO_CLIENT_CERT] = "no_client_cert",
        [TLS_FAIL_BAD_CERT] = "bad_cert",
        [TLS_FAIL_BAD_NAME] = "bad_name",
        [TLS_FAIL_ALERT] = "alert",
        [TLS_FAIL_OTHER] = "other",
    };
    return (unsigned)r < TLS_FAIL_COUNT ? names[r] : "other";
}

void tls_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *tls_wolf_error_string(int code, char *buf, size_t cap)
{
    char tmp[WOLFSSL_MAX_ERROR_SZ];
    wolfSSL_ERR_error_string_n((unsigned long)code, tmp, sizeof tmp);
    snprintf(buf, cap, "%s (%d)", tmp, code);
    return buf;
}
