/* API keys: the keys file, lookup of a presented key, the key's place in the
 * request headers, and the formatting half of `aigw keygen`.
 *
 * The keys file (SPEC §2, [keys] file) holds one key per line:
 *
 *     NAME sha256:HEX tier=TIER [models=GLOB,GLOB,...]
 *
 * - fields are separated by spaces or tabs; NAME comes first, sha256:HEX second,
 *   then tier= (required) and models= (optional) in either order, each once;
 * - NAME: 1-64 of [A-Za-z0-9._-], unique in the file; logs and metrics use it;
 * - HEX: the SHA-256 of the key, 64 hex digits (either case), unique in the file;
 *   only this hash is ever on disk;
 * - TIER: 1-63 of [A-Za-z0-9._-]; that the tier exists is the caller's check;
 * - models=: comma-separated model globs (policy/glob.h) with no spaces; absent
 *   means any model; present but empty is an error;
 * - blank lines, and lines whose first field starts with '#', are ignored; a field
 *   starting with '#' ends the line (a trailing comment); CRLF line ends are
 *   accepted; other control characters are errors.
 *
 * Errors are one line, "FILE:LINE: message", FILE being the name the caller
 * gives (the path for keyring_load).
 *
 * Lookup hashes the presented key once with SHA-256 and probes an open-addressing
 * table keyed by the first 8 bytes of that hash; the full 32 bytes are compared in
 * constant time. (Which table slots are probed depends on the hash of the
 * presented key, which tells an attacker nothing about stored hashes.) */
#ifndef AIGW_POLICY_KEYS_H
#define AIGW_POLICY_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/glob.h"
#include "proto/http1.h"

#define KEY_NAME_MAX 64
#define KEY_TIER_MAX 63
/* Longest key a client may present: longer values are refused by the header
 * helpers (they would be unknown anyway; this bounds the hashing). */
#define KEY_PRESENTED_MAX 512

/* What `aigw keygen` prints: "sk-aigw-" and the base62 digits of 32 random bytes
 * read as one big-endian 256-bit number, most significant digit first, padded
 * with '0' to 43 digits (62^43 > 2^256). Base62 alphabet, in digit order:
 * 0-9, A-Z, a-z. */
#define KEY_PREFIX "sk-aigw-"
#define KEY_PREFIX_LEN 8
#define KEY_DIGITS 43
#define KEY_LEN (KEY_PREFIX_LEN + KEY_DIGITS)
#define KEY_BASE62_ALPHABET "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

struct key_entry {
    char name[KEY_NAME_MAX + 1];
    uint8_t hash[32];
    char tier[KEY_TIER_MAX + 1];
    struct glob_list *models;   /* NULL: any model */
    int line;                   /* 1-based line of the key in its file, for messages */
};

struct keyring;   /* immutable after load; safe to read from any thread */

/* Reads and parses the file at path (at most 64 MiB); errors name the path.
 * Returns 0 and *out, or -1 with the message in err. */
int keyring_load(const char *path, struct keyring **out, char *err, size_t errlen);
/* Parses text; errors start with "name:". */
int keyring_load_string(const char *name, const char *text, struct keyring **out,
                        char *err, size_t errlen);
void keyring_free(struct keyring *k);

/* The entry whose hash is SHA-256(key[0, len)), or NULL (also for a NULL
 * keyring or an empty key). No allocation. */
const struct key_entry *keyring_lookup(const struct keyring *k, const char *key, size_t len);

/* Entries in file order. */
unsigned keyring_count(const struct keyring *k);
const struct key_entry *keyring_entry(const struct keyring *k, unsigned i);

/* Whether s[0, len) is a valid NAME (the rule above): for files that name keys. */
bool key_name_valid(const char *s, size_t len);

/* Whether the key may use the model named by model[0, len). */
bool key_entry_allows_model(const struct key_entry *e, const char *model, size_t len);

/* The presented key, as a slice of the header value v:
 * - Authorization: "Bearer" (any case), one or more spaces, then the key. Other
 *   schemes ("Basic ...") and "Bearer" with no key are refused.
 * - x-api-key: the whole value is the key.
 * Leading and trailing spaces/tabs (OWS, which the head parser already trims)
 * are ignored. The key must be 1 to KEY_PRESENTED_MAX visible ASCII characters
 * (0x21-0x7e): a key followed by anything ("Bearer k extra") is refused, not cut.
 * Returns false when there is no acceptable key; *key is then untouched. */
bool key_from_authorization(struct slice v, struct slice *key);
bool key_from_x_api_key(struct slice v, struct slice *key);

enum key_presented {
    KEY_ABSENT,         /* neither header */
    KEY_PRESENTED,      /* *key is the key */
    KEY_UNUSABLE,       /* a header without an acceptable key in it */
    KEY_CONFLICT,       /* duplicate or conflicting credentials (SPEC §3: 400) */
};

/* The caller's key from the request head. At most one Authorization and one
 * x-api-key header; a second of either, even with the same value, is
 * KEY_CONFLICT. When both are sent they must name the same key (accepted: one
 * caller either way); anything else with both, including one of them not
 * holding an acceptable key ("Basic ..."), is KEY_CONFLICT, so no reader can take
 * a different credential than aigw did. *key is set only for KEY_PRESENTED. */
enum key_presented key_from_request(const struct http_request *req, struct slice *key);

/* Writes the new key for random (see KEY_PREFIX) and a NUL into key_out.
 * Returns KEY_LEN, or -1 when cap < KEY_LEN + 1. */
int key_generate(const uint8_t random[32], char *key_out, size_t cap);

/* Writes "NAME sha256:<hex of SHA-256(key)> tier=TIER\n" and a NUL into out.
 * tier NULL means "default". name and tier follow the keys file rules; key must
 * be a presentable key (1-KEY_PRESENTED_MAX visible ASCII). Returns the line's
 * length, or -1 when something is invalid or cap is too small. */
int key_file_line(const char *name, const char *tier, const char *key, char *out, size_t cap);

#endif
