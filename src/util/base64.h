/* Base64 (RFC 4648, standard alphabet with '=' padding) decoding. */
#ifndef AIGW_UTIL_BASE64_H
#define AIGW_UTIL_BASE64_H

#include <stddef.h>

/* Decodes in[0..n) into out (room for cap bytes). Returns the decoded length,
 * or -1 when the input is not base64 (bad character, bad padding, length not a
 * multiple of 4) or does not fit. */
long base64_decode(const char *in, size_t n, unsigned char *out, size_t cap);

#endif
