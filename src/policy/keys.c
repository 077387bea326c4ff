#include "policy/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include "util/hash.h"

#define KEYS_FILE_MAX (64u << 20)

struct hash_slot {
    uint64_t tag;       /* the first 8 bytes of the entry's hash */
    uint32_t entry;     /* index + 1; 0: empty slot */
};

struct keyring {
    struct key_entry *entries;
    unsigned n;
    struct hash_slot *slots;   /* open addressing, linear probing, at most half full */
    uint32_t mask;
};

/* ---- hashing ---------------------------------------------------------------- */

static int sha256(const void *data, size_t len, uint8_t out[32])
{
    wc_Sha256 ctx;
    if (len > UINT32_MAX || wc_InitSha256(&ctx) != 0)
        return -1;
    int rc = wc_Sha256Update(&ctx, data, (word32)len);
    if (rc == 0)
        rc = wc_Sha256Final(&ctx, out);
    wc_Sha256Free(&ctx);
    return rc == 0 ? 0 : -1;
}

static uint64_t hash_tag(const uint8_t hash[32])
{
    uint64_t t;
    memcpy(&t, hash, sizeof t);
    return t;
}

/* Takes the same time whatever the bytes are. */
static bool equal_ct(const uint8_t *a, const uint8_t *b, size_t n)
{
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* ---- the load --------------------------------------------------------------- */

struct name_slot {
    uint64_t hash;
    uint32_t entry;     /* index + 1; 0: empty slot */
};

struct loader {
    const char *name;
    char *err;
    size_t errlen;
    struct keyring *k;
    unsigned cap;               /* entries allocated */
    unsigned *lines;            /* line of each entry, for duplicate messages */
    struct name_slot *names;    /* duplicate-name check, load time only */
    uint32_t names_mask;
};

__attribute__((format(printf, 3, 4)))
static int fail(struct loader *ld, unsigned line, const char *fmt, ...)
{
    if (!ld->err || ld->errlen == 0)
        return -1;
    int n = line ? snprintf(ld->err, ld->errlen, "%s:%u: ", ld->name, line)
                 : snprintf(ld->err, ld->errlen, "%s: ", ld->name);
    if (n >= 0 && (size_t)n < ld->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    /* file names and values are echoed: keep the message one printable line */
    for (char *p = ld->err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -1;
}

static bool is_ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

static bool valid_ident(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_ident_char(s[i]))
            return false;
    return true;
}

bool key_name_valid(const char *s, size_t len)
{
    return valid_ident(s, len, KEY_NAME_MAX);
}

static bool valid_presented_key(const char *s, size_t len)
{
    if (len == 0 || len > KEY_PRESENTED_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool starts_with(const char *p, size_t len, const char *lit)
{
    size_t n = strlen(lit);
    return len >= n && memcmp(p, lit, n) == 0;
}

/* Echoed values are cut so one bad line cannot make a huge message. */
#define QUOTE_MAX 64
#define QUOTE(p, len) (int)((len) < QUOTE_MAX ? (len) : QUOTE_MAX), (p)

static uint32_t table_size_for(unsigned n)
{
    uint32_t size = 16;
    while (size < 2u * n)
        size *= 2;
    return size;
}

static void hash_insert(struct hash_slot *slots, uint32_t mask, uint64_t tag, uint32_t entry)
{
    uint32_t s = (uint32_t)tag & mask;
    while (slots[s].entry)
        s = (s + 1) & mask;
    slots[s] = (struct hash_slot){ .tag = tag, .entry = entry };
}

static void name_insert(struct name_slot *slots, uint32_t mask, uint64_t h, uint32_t entry)
{
    uint32_t s = (uint32_t)h & mask;
    while (slots[s].entry)
        s = (s + 1) & mask;
    slots[s] = (struct name_slot){ .hash = h, .entry = entry };
}

/* Makes room for one more entry: grows the entry array and rebuilds both tables
 * so they stay at most half full. */
static int reserve_entry(struct loader *ld)
{
    struct keyring *k = ld->k;
    if (k->n < ld->cap)
        return 0;
    if (ld->cap >= (1u << 30))
        return -1;
    unsigned cap = ld->cap ? ld->cap * 2 : 16;
    struct key_entry *entries = realloc(k->entries, cap * sizeof *entries);
    if (entries) {
        /* the entry being parsed is freed on failure: it must start zeroed */
        memset(entries + ld->cap, 0, (cap - ld->cap) * sizeof *entries);
        k->entries = entries;
    }
    unsigned *lines = realloc(ld->lines, cap * sizeof *lines);
    if (lines)
        ld->lines = lines;
    uint32_t size = table_size_for(cap);
    struct hash_slot *slots = calloc(size, sizeof *slots);
    struct name_slot *names = calloc(size, sizeof *names);
    if (!entries || !lines || !slots || !names) {
        free(slots);
        free(names);
        return -1;
    }
    for (unsigned i = 0; i < k->n; i++) {
        hash_insert(slots, size - 1, hash_tag(k->entries[i].hash), i + 1);
        name_insert(names, size - 1, hash_bytes(k->entries[i].name, strlen(k->entries[i].name)),
                    i + 1);
    }
    free(k->slots);
    free(ld->names);
    k->slots = slots;
    k->mask = size - 1;
    ld->names = names;
    ld->names_mask = size - 1;
    ld->cap = cap;
    return 0;
}

static const struct key_entry *find_hash(const struct keyring *k, const uint8_t hash[32])
{
    uint64_t tag = hash_tag(hash);
    /* at most half full, so the probe ends at an empty slot */
    for (uint32_t s = (uint32_t)tag & k->mask;; s = (s + 1) & k->mask) {
        const struct hash_slot *e = &k->slots[s];
        if (!e->entry)
            return NULL;
        if (e->tag == tag && equal_ct(k->entries[e->entry - 1].hash, hash, 32))
            return &k->entries[e->entry - 1];
    }
}

static int find_name(const struct loader *ld, const char *name, size_t len)
{
    uint64_t h = hash_bytes(name, len);
    for (uint32_t s = (uint32_t)h & ld->names_mask;; s = (s + 1) & ld->names_mask) {
        const struct name_slot *e = &ld->names[s];
        if (!e->entry)
            return -1;
        const char *other = ld->k->entries[e->entry - 1].name;
        if (e->hash == h && strlen(other) == len && memcmp(other, name, len) == 0)
            return (int)(e->entry - 1);
    }
}

/* The next field of line[*pos, len), or false at the end of the line or at a
 * field that starts a comment. */
static bool next_field(const char *line, size_t len, size_t *pos, struct slice *f)
{
    size_t i = *pos;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len || line[i] == '#')
        return false;
    size_t start = i;
    while (i < len && line[i] != ' ' && line[i] != '\t')
        i++;
    *f = (struct slice){ line + start, i - start };
    *pos = i;
    return true;
}

static int parse_line(struct loader *ld, const char *line, size_t len, unsigned lineno)
{
    if (len && line[len - 1] == '\r')
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(ld, lineno, "control character (byte 0x%02x)", c);
    }

    size_t pos = 0;
    struct slice name, hash, f;
    if (!next_field(line, len, &pos, &name))
        return 0;   /* blank or comment */
    if (!valid_ident(name.p, name.len, KEY_NAME_MAX))
        return fail(ld, lineno, "invalid key name '%.*s': 1-64 characters of A-Z a-z 0-9 . _ -",
                    QUOTE(name.p, name.len));
    if (!next_field(line, len, &pos, &hash))
        return fail(ld, lineno, "missing sha256:HEX after the key name");
    if (!starts_with(hash.p, hash.len, "sha256:"))
        return fail(ld, lineno, "expected sha256:HEX after the key name, got '%.*s'",
                    QUOTE(hash.p, hash.len));

    if (reserve_entry(ld) < 0)
        return fail(ld, lineno, "out of memory");
    struct key_entry *e = &ld->k->entries[ld->k->n];
    memset(e, 0, sizeof *e);

    const char *hex = hash.p + 7;
    size_t hexlen = hash.len - 7;
    if (hexlen != 64)
        return fail(ld, lineno, "sha256: wants 64 hex digits, got %zu characters", hexlen);
    for (size_t i = 0; i < 32; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return fail(ld, lineno, "sha256: '%.64s' is not 64 hex digits", hex);
        e->hash[i] = (uint8_t)(hi << 4 | lo);
    }

    bool have_tier = false;
    while (next_field(line, len, &pos, &f)) {
        if (starts_with(f.p, f.len, "tier=")) {
            if (have_tier)
                return fail(ld, lineno, "tier= given twice");
            if (!valid_ident(f.p + 5, f.len - 5, KEY_TIER_MAX))
                return fail(ld, lineno, "invalid tier '%.*s': 1-63 characters of A-Z a-z 0-9 . _ -",
                            QUOTE(f.p + 5, f.len - 5));
            memcpy(e->tier, f.p + 5, f.len - 5);
            e->tier[f.len - 5] = '\0';
            have_tier = true;
        } else if (starts_with(f.p, f.len, "models=")) {
            if (e->models)
                return fail(ld, lineno, "models= given twice");
            if (f.len == 7)
                return fail(ld, lineno, "models= is empty (leave it out to allow any model)");
            const char *why = NULL;
            struct glob_list *models = NULL;
            if (glob_list_compile_n(f.p + 7, f.len - 7, &models, &why) < 0)
                return fail(ld, lineno, "models=: %s", why);
            e->models = models;
        } else {
            return fail(ld, lineno, "unknown field '%.*s' (expected tier= or models=)",
                        QUOTE(f.p, f.len));
        }
    }
    if (!have_tier)
        return fail(ld, lineno, "missing tier=");

    int other = find_name(ld, name.p, name.len);
    if (other >= 0)
        return fail(ld, lineno, "duplicate key name '%.*s' (first on line %u)",
                    QUOTE(name.p, name.len), ld->lines[other]);
    const struct key_entry *same = find_hash(ld->k, e->hash);
    if (same)
        return fail(ld, lineno, "duplicate sha256 (the same key as '%s' on line %u)",
                    same->name, ld->lines[same - ld->k->entries]);

    memcpy(e->name, name.p, name.len);
    e->name[name.len] = '\0';
    e->line = (int)lineno;
    unsigned idx = ld->k->n++;
    ld->lines[idx] = lineno;
    hash_insert(ld->k->slots, ld->k->mask, hash_tag(e->hash), idx + 1);
    name_insert(ld->names, ld->names_mask, hash_bytes(name.p, name.len), idx + 1);
    return 0;
}

/* text need not be NUL-terminated; a NUL byte in it is a control character. */
static int load_text(const char *name, const char *text, size_t len, struct keyring **out,
                     char *err, size_t errlen)
{
    struct loader ld = { .name = name, .err = err, .errlen = errlen };
    ld.k = calloc(1, sizeof *ld.k);
    if (!ld.k || reserve_entry(&ld) < 0) {
        free(ld.lines);
        free(ld.names);
        keyring_free(ld.k);
        return fail(&ld, 0, "out of memory");
    }

    int rc = 0;
    unsigned lineno = 0;
    for (size_t start = 0; start < len && rc == 0;) {
        const char *nl = memchr(text + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - text) : len;
        rc = parse_line(&ld, text + start, end - start, ++lineno);
        start = end + 1;
    }
    if (rc < 0 && ld.k->n < ld.cap) {
        /* the entry being parsed may already own a glob list */
        glob_list_free(ld.k->entries[ld.k->n].models);
    }
    free(ld.lines);
    free(ld.names);
    if (rc < 0) {
        keyring_free(ld.k);
        return -1;
    }
    *out = ld.k;
    return 0;
}

int keyring_load_string(const char *name, const char *text, struct keyring **out,
                        char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    return load_text(name, text, strlen(text), out, err, errlen);
}

int keyring_load(const char *path, struct keyring **out, char *err, size_t errlen)
{
    struct loader ld = { .name = path, .err = err, .errlen = errlen };
    if (err && errlen)
        err[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == EACCES)
        /* the commonest install mistake: a root-only file and a service user */
        return fail(&ld, 0, "cannot open: %s (the user aigw runs as must read it: "
                            "chgrp aigw %s && chmod 0640 %s)", strerror(errno), path, path);
    if (fd < 0)
        return fail(&ld, 0, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return fail(&ld, 0, "cannot read: %s", strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(&ld, 0, "not a regular file");
    }
    if (st.st_size > (off_t)KEYS_FILE_MAX) {
        close(fd);
        return fail(&ld, 0, "larger than %u MiB", KEYS_FILE_MAX >> 20);
    }
    /* the file may grow between fstat and read: read to EOF, bounded */
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len == cap) {
            if (cap > KEYS_FILE_MAX) {
                free(buf);
                close(fd);
                return fail(&ld, 0, "larger than %u MiB", KEYS_FILE_MAX >> 20);
            }
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return fail(&ld, 0, "read error: %s", strerror(e));
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!buf)
        return fail(&ld, 0, "out of memory");
    int rc = load_text(path, buf, len, out, err, errlen);
    free(buf);
    return rc;
}

void keyring_free(struct keyring *k)
{
    if (!k)
        return;
    for (unsigned i = 0; i < k->n; i++)
        glob_list_free(k->entries[i].models);
    free(k->entries);
    free(k->slots);
    free(k);
}

/* ---- per request ------------------------------------------------------------ */

const struct key_entry *keyring_lookup(const struct keyring *k, const char *key, size_t len)
{
    uint8_t hash[32];
    if (!k || !k->n || len == 0 || sha256(key, len, hash) < 0)
        return NULL;
    return find_hash(k, hash);
}

unsigned keyring_count(const struct keyring *k)
{
    return k ? k->n : 0;
}

const struct key_entry *keyring_entry(const struct keyring *k, unsigned i)
{
    return k && i < k->n ? &k->entries[i] : NULL;
}

bool key_entry_allows_model(const struct key_entry *e, const char *model, size_t len)
{
    return glob_list_match(e->models, model, len);
}

static struct slice trim_ows(struct slice v)
{
    while (v.len && (v.p[0] == ' ' || v.p[0] == '\t')) {
        v.p++;
        v.len--;
    }
    while (v.len && (v.p[v.len - 1] == ' ' || v.p[v.len - 1] == '\t'))
        v.len--;
    return v;
}

bool key_from_authorization(struct slice v, struct slice *key)
{
    v = trim_ows(v);
    static const char scheme[] = "bearer";
    size_t n = sizeof scheme - 1;
    if (v.len <= n || strncasecmp(v.p, scheme, n) != 0 || v.p[n] != ' ')
        return false;
    size_t i = n;
    while (i < v.len && v.p[i] == ' ')
        i++;
    struct slice k = { v.p + i, v.len - i };
    if (!valid_presented_key(k.p, k.len))
        return false;
    *key = k;
    return true;
}

bool key_from_x_api_key(struct slice v, struct slice *key)
{
    v = trim_ows(v);
    if (!valid_presented_key(v.p, v.len))
        return false;
    *key = v;
    return true;
}

/* The header of the given kind and whether there are more than one of it; NULL
 * if none. Headers before idx[kind] are of other kinds, so the scan starts there. */
static const struct http_header *only_header(const struct http_request *req, enum http_header_kind kind,
                                             bool *duplicated)
{
    int first = req->idx[kind];
    if (first < 0)
        return NULL;
    for (unsigned i = (unsigned)first + 1; i < req->nheaders; i++)
        if (req->headers[i].kind == kind)
            *duplicated = true;
    return &req->headers[first];
}

enum key_presented key_from_request(const struct http_request *req, struct slice *key)
{
    bool duplicated = false;
    const struct http_header *auth = only_header(req, HK_AUTHORIZATION, &duplicated);
    const struct http_header *xkey = only_header(req, HK_X_API_KEY, &duplicated);
    if (duplicated)
        return KEY_CONFLICT;
    struct slice from_auth, from_xkey;
    bool auth_ok = auth && key_from_authorization(auth->value, &from_auth);
    bool xkey_ok = xkey && key_from_x_api_key(xkey->value, &from_xkey);
    if (auth && xkey) {
        if (!auth_ok || !xkey_ok || from_auth.len != from_xkey.len ||
            memcmp(from_auth.p, from_xkey.p, from_auth.len) != 0)
            return KEY_CONFLICT;
    }
    if (auth_ok || xkey_ok) {
        *key = auth_ok ? from_auth : from_xkey;
        return KEY_PRESENTED;
    }
    return auth || xkey ? KEY_UNUSABLE : KEY_ABSENT;
}

/* ---- keygen ----------------------------------------------------------------- */

int key_generate(const uint8_t random[32], char *key_out, size_t cap)
{
    static const char alphabet[] = KEY_BASE62_ALPHABET;
    if (cap < KEY_LEN + 1)
        return -1;
    uint8_t num[32];
    memcpy(num, random, sizeof num);
    memcpy(key_out, KEY_PREFIX, KEY_PREFIX_LEN);
    /* long division of the 256-bit big-endian number by 62, least significant
     * digit first, written from the right */
    for (int d = KEY_DIGITS - 1; d >= 0; d--) {
        unsigned rem = 0;
        for (size_t i = 0; i < sizeof num; i++) {
            unsigned cur = rem << 8 | num[i];
            num[i] = (uint8_t)(cur / 62);
            rem = cur % 62;
        }
        key_out[KEY_PREFIX_LEN + d] = alphabet[rem];
    }
    key_out[KEY_LEN] = '\0';
    return KEY_LEN;
}

int key_file_line(const char *name, const char *tier, const char *key, char *out, size_t cap)
{
    if (!tier)
        tier = "default";
    if (!name || !key || !valid_ident(name, strlen(name), KEY_NAME_MAX) ||
        !valid_ident(tier, strlen(tier), KEY_TIER_MAX) || !valid_presented_key(key, strlen(key)))
        return -1;
    uint8_t hash[32];
    if (sha256(key, strlen(key), hash) < 0)
        return -1;
    char hex[65];
    for (size_t i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", hash[i]);
    int n = snprintf(out, cap, "%s sha256:%s tier=%s\n", name, hex, tier);
    return n >= 0 && (size_t)n < cap ? n : -1;
}
