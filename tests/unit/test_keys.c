#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy/keys.h"

/* SHA-256("abc") and SHA-256("hello"): published values, not computed here */
#define KT_HASH_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define KT_HASH_HELLO "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
#define KT_HASH_OTHER "00000000000000000000000000000000000000000000000000000000000000ff"

static struct keyring *keyt_load(const char *text)
{
    struct keyring *k = NULL;
    char err[512] = "";
    cr_assert_eq(keyring_load_string("keys.txt", text, &k, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(k);
    return k;
}

static const struct key_entry *keyt_lookup(const struct keyring *k, const char *key)
{
    return keyring_lookup(k, key, strlen(key));
}

static struct slice keyt_slice(const char *s)
{
    return (struct slice){ s, strlen(s) };
}

Test(keys, valid_file)
{
    struct keyring *k = keyt_load(
        "# aigw keys\n"
        "\n"
        "alice sha256:" KT_HASH_ABC " tier=free\n"
        "   # indented comment\n"
        "bob.ci_2-x\tsha256:" KT_HASH_HELLO "\t tier=pro models=llama-3.1-8b*,qwen*  # team bob\r\n"
        "carol sha256:" "00000000000000000000000000000000000000000000000000000000000000FF"
        " models=gpt-4o tier=T.1\n"
        " \t \n"
        "# the end, no newline after the last line\n"
        "dave sha256:" "11111111111111111111111111111111111111111111111111111111111111aa tier=free");
    cr_assert_eq(keyring_count(k), 4);

    const struct key_entry *e = keyring_entry(k, 0);
    cr_expect_str_eq(e->name, "alice");
    cr_expect_str_eq(e->tier, "free");
    cr_expect_null(e->models, "no models=: any model");
    cr_expect_eq(e->hash[0], 0xba);
    cr_expect_eq(e->hash[31], 0xad);

    e = keyring_entry(k, 1);
    cr_expect_str_eq(e->name, "bob.ci_2-x");
    cr_expect_str_eq(e->tier, "pro");
    cr_assert_not_null(e->models);
    cr_expect_eq(glob_list_count(e->models), 2);

    e = keyring_entry(k, 2);
    cr_expect_str_eq(e->name, "carol");
    cr_expect_str_eq(e->tier, "T.1");
    cr_expect_eq(e->hash[31], 0xff, "upper-case hex");
    cr_expect_eq(e->hash[0], 0x00);

    cr_expect_str_eq(keyring_entry(k, 3)->name, "dave");
    cr_expect_null(keyring_entry(k, 4));

    /* each entry knows its line in the file (1-based; blank and comment lines count) */
    cr_expect_eq(keyring_entry(k, 0)->line, 3);
    cr_expect_eq(keyring_entry(k, 1)->line, 5);
    cr_expect_eq(keyring_entry(k, 2)->line, 6);
    cr_expect_eq(keyring_entry(k, 3)->line, 9, "the last line, without a newline");

    cr_expect_str_eq(keyt_lookup(k, "abc")->name, "alice");
    cr_expect_str_eq(keyt_lookup(k, "hello")->name, "bob.ci_2-x");
    keyring_free(k);
}

Test(keys, lookup_refuses_near_keys)
{
    struct keyring *k = keyt_load("alice sha256:" KT_HASH_ABC " tier=free\n"
                                  "bob sha256:" KT_HASH_HELLO " tier=free\n");
    static const char *const wrong[] = { "ab", "abcd", "ABC", "abc ", " abc", "abc\n",
                                         "hellO", "hell", "hello!", "x", KT_HASH_ABC };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        cr_expect_null(keyt_lookup(k, wrong[i]), "'%s' must not be a key", wrong[i]);
    cr_expect_null(keyring_lookup(k, "abc", 0), "an empty key is never a key");
    cr_expect_not_null(keyring_lookup(k, "abcdef", 3), "only the given bytes are hashed");
    cr_expect_null(keyring_lookup(NULL, "abc", 3));
    keyring_free(k);

    k = keyt_load("# nobody\n");
    cr_expect_eq(keyring_count(k), 0);
    cr_expect_null(keyt_lookup(k, "abc"));
    keyring_free(k);
}

Test(keys, models_attached)
{
    struct keyring *k = keyt_load("alice sha256:" KT_HASH_ABC " tier=free models=llama-3.1-8b*,qwen2-7b\n"
                                  "bob sha256:" KT_HASH_HELLO " tier=free\n");
    const struct key_entry *a = keyt_lookup(k, "abc"), *b = keyt_lookup(k, "hello");
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_expect(key_entry_allows_model(a, "llama-3.1-8b-instruct", 21));
    cr_expect(key_entry_allows_model(a, "qwen2-7b", 8));
    cr_expect_not(key_entry_allows_model(a, "qwen2-72b", 9));
    cr_expect_not(key_entry_allows_model(a, "llama-3.1-70b", 13));
    cr_expect(key_entry_allows_model(b, "llama-3.1-70b", 13), "no models=: anything");
    keyring_free(k);
}

Test(keys, errors_name_file_and_line)
{
    static const struct {
        const char *text, *err;
    } cases[] = {
        { "alice sha256:" KT_HASH_ABC " tier=a\n\nbad!name sha256:" KT_HASH_HELLO " tier=a\n",
          "keys.txt:3: invalid key name 'bad!name': 1-64 characters of A-Z a-z 0-9 . _ -" },
        { "# c\n"
          "a123456789a123456789a123456789a123456789a123456789a123456789abcde sha256:" KT_HASH_ABC " tier=a\n",
          "keys.txt:2: invalid key name 'a123456789a123456789a123456789a123456789a123456789a123456789abcd'"
          ": 1-64 characters of A-Z a-z 0-9 . _ -" },
        { "alice\n", "keys.txt:1: missing sha256:HEX after the key name" },
        { "alice  # sha256:" KT_HASH_ABC " tier=a\n", "keys.txt:1: missing sha256:HEX after the key name" },
        { "alice md5:900150983cd24fb0d6963f7d28e17f72 tier=a\n",
          "keys.txt:1: expected sha256:HEX after the key name, got 'md5:900150983cd24fb0d6963f7d28e17f72'" },
        { "alice tier=a sha256:" KT_HASH_ABC "\n",
          "keys.txt:1: expected sha256:HEX after the key name, got 'tier=a'" },
        { "sha256:" KT_HASH_ABC " tier=a\n",
          "keys.txt:1: invalid key name 'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f'"
          ": 1-64 characters of A-Z a-z 0-9 . _ -" },
        { "\n\nalice sha256:abc tier=a\n", "keys.txt:3: sha256: wants 64 hex digits, got 3 characters" },
        { "alice sha256:" KT_HASH_ABC "0 tier=a\n", "keys.txt:1: sha256: wants 64 hex digits, got 65 characters" },
        { "alice sha256: tier=a\n", "keys.txt:1: sha256: wants 64 hex digits, got 0 characters" },
        { "alice sha256:g a7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad tier=a\n",
          "keys.txt:1: sha256: wants 64 hex digits, got 1 characters" },
        { "alice sha256:ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad tier=a\n",
          "keys.txt:1: sha256: 'ga7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad' "
          "is not 64 hex digits" },
        { "alice sha256:" KT_HASH_ABC "\n", "keys.txt:1: missing tier=" },
        { "alice sha256:" KT_HASH_ABC " models=qwen*\n", "keys.txt:1: missing tier=" },
        { "alice sha256:" KT_HASH_ABC " # tier=a\n", "keys.txt:1: missing tier=" },
        { "alice sha256:" KT_HASH_ABC " tier=\n",
          "keys.txt:1: invalid tier '': 1-63 characters of A-Z a-z 0-9 . _ -" },
        { "alice sha256:" KT_HASH_ABC " tier=a/b\n",
          "keys.txt:1: invalid tier 'a/b': 1-63 characters of A-Z a-z 0-9 . _ -" },
        { "alice sha256:" KT_HASH_ABC " tier=a tier=b\n", "keys.txt:1: tier= given twice" },
        { "alice sha256:" KT_HASH_ABC " tier=a owner=bob\n",
          "keys.txt:1: unknown field 'owner=bob' (expected tier= or models=)" },
        { "alice sha256:" KT_HASH_ABC " tier=a TIER=b\n",
          "keys.txt:1: unknown field 'TIER=b' (expected tier= or models=)" },
        { "alice sha256:" KT_HASH_ABC " tier=a models=qwen*, llama*\n",
          "keys.txt:1: models=: empty item in model list" },   /* a space ends the field */
        { "alice sha256:" KT_HASH_ABC " tier=a models=qwen* llama*\n",
          "keys.txt:1: unknown field 'llama*' (expected tier= or models=)" },
        { "alice sha256:" KT_HASH_ABC " tier=a models=\n",
          "keys.txt:1: models= is empty (leave it out to allow any model)" },
        { "alice sha256:" KT_HASH_ABC " tier=a models=a,,b\n", "keys.txt:1: models=: empty item in model list" },
        { "alice sha256:" KT_HASH_ABC " tier=a models=a, \n", "keys.txt:1: models=: empty item in model list" },
        { "alice sha256:" KT_HASH_ABC " models=a tier=a models=b\n", "keys.txt:1: models= given twice" },
        { "alice sha256:" KT_HASH_ABC " tier=a\n"
          "bob sha256:" KT_HASH_HELLO " tier=a\n"
          "# alice again\n"
          "alice sha256:" KT_HASH_OTHER " tier=b\n",
          "keys.txt:4: duplicate key name 'alice' (first on line 1)" },
        { "alice sha256:" KT_HASH_OTHER " tier=a\n"
          "bob sha256:" KT_HASH_ABC " tier=a\n"
          "\n"
          "carol sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD tier=a\n",
          "keys.txt:4: duplicate sha256 (the same key as 'bob' on line 2)" },
        { "alice sha256:" KT_HASH_ABC " tier=a\nbo\x01" "b sha256:" KT_HASH_HELLO " tier=a\n",
          "keys.txt:2: control character (byte 0x01)" },
        { "alice sha256:" KT_HASH_ABC " tier=a\x7f\n", "keys.txt:1: control character (byte 0x7f)" },
        { "alice sha256:" KT_HASH_ABC " tier=a\r\r\n", "keys.txt:1: control character (byte 0x0d)" },
        { "alice sha256:" KT_HASH_ABC " tier=a\vb\n", "keys.txt:1: control character (byte 0x0b)" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct keyring *k = NULL;
        char err[512] = "";
        cr_expect_eq(keyring_load_string("keys.txt", cases[i].text, &k, err, sizeof err), -1,
                     "case %zu should fail", i);
        cr_expect_null(k);
        cr_expect_str_eq(err, cases[i].err, "case %zu: got \"%s\"", i, err);
    }
}

Test(keys, error_message_is_one_line_and_fits)
{
    struct keyring *k = NULL;
    char err[40];
    cr_expect_eq(keyring_load_string("dir/\nkeys", "x y\n", &k, err, sizeof err), -1);
    cr_expect_null(strchr(err, '\n'), "a newline in the file name is not echoed");
    cr_expect_eq(strncmp(err, "dir/?keys:1: ", 13), 0, "%s", err);
    cr_expect_lt(strlen(err), sizeof err);
    cr_expect_eq(keyring_load_string("keys.txt", "x y\n", &k, NULL, 0), -1, "err may be NULL");
}

Test(keys, many_keys)
{
    /* grows the tables several times; every key is found by its own hash */
    enum { N = 3000 };
    char *text = malloc((size_t)N * 128);
    cr_assert_not_null(text);
    char *p = text;
    for (int i = 0; i < N; i++) {
        char key[32], name[32], line[256];
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(name, sizeof name, "k%d", i);
        cr_assert_gt(key_file_line(name, i % 2 ? "odd" : "even", key, line, sizeof line), 0);
        p = stpcpy(p, line);
    }
    struct keyring *k = keyt_load(text);
    cr_assert_eq(keyring_count(k), N);
    for (int i = 0; i < N; i++) {
        char key[32], name[32];
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(name, sizeof name, "k%d", i);
        const struct key_entry *e = keyt_lookup(k, key);
        cr_assert_not_null(e, "%s", key);
        cr_assert_str_eq(e->name, name);
        cr_assert_str_eq(e->tier, i % 2 ? "odd" : "even");
    }
    cr_expect_null(keyt_lookup(k, "key-3000"));
    keyring_free(k);
    free(text);
}

Test(keys, lookup_cost)
{
    enum { NKEYS = 1000, ROUNDS = 200000 };
    char *text = malloc((size_t)NKEYS * 160);
    cr_assert_not_null(text);
    char *p = text, keys[NKEYS][KEY_LEN + 1];
    for (int i = 0; i < NKEYS; i++) {
        uint8_t rnd[32];
        for (size_t j = 0; j < sizeof rnd; j++)
            rnd[j] = (uint8_t)(i * 131 + (int)j * 7 + (i >> 3));
        memcpy(rnd, &i, sizeof i);
        cr_assert_eq(key_generate(rnd, keys[i], sizeof keys[i]), KEY_LEN);
        char name[16], line[256];
        snprintf(name, sizeof name, "k%d", i);
        cr_assert_gt(key_file_line(name, NULL, keys[i], line, sizeof line), 0);
        p = stpcpy(p, line);
    }
    struct keyring *k = keyt_load(text);

    struct timespec t0, t1;
    unsigned found = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < ROUNDS; i++)
        found += keyring_lookup(k, keys[i % NKEYS], KEY_LEN) != NULL;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    cr_expect_eq(found, ROUNDS);
    double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / ROUNDS;
    fprintf(stderr, "keyring_lookup: %.0f ns per lookup (%d-byte key, %d keys)\n", ns, KEY_LEN, NKEYS);
    keyring_free(k);
    free(text);
}

Test(keys, authorization_header)
{
    static const struct {
        const char *value, *key;   /* key NULL: refused */
    } cases[] = {
        { "Bearer sk-aigw-abc", "sk-aigw-abc" },
        { "bearer k", "k" },
        { "BEARER k", "k" },
        { "Bearer  k", "k" },          /* more than one space */
        { "  Bearer k  ", "k" },       /* OWS around the value */
        { "Bearer k\t", "k" },
        { "Bearer", NULL },
        { "Bearer ", NULL },
        { "Bearer    ", NULL },
        { "Bearerk", NULL },
        { "Bearer\tk", NULL },         /* the separator is SP */
        { "Basic k", NULL },
        { "Bearer k extra", NULL },    /* trailing garbage is refused, not cut */
        { "Bearer k\x01", NULL },
        { "Bearer k\xc3\xa9", NULL },   /* non-ASCII */
        { "Bear k", NULL },
        { "", NULL },
        { "k", NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct slice key = { "untouched", 9 };
        bool ok = key_from_authorization(keyt_slice(cases[i].value), &key);
        if (cases[i].key) {
            cr_expect(ok, "'%s' should give a key", cases[i].value);
            cr_expect_eq(key.len, strlen(cases[i].key), "'%s'", cases[i].value);
            cr_expect_eq(memcmp(key.p, cases[i].key, key.len), 0, "'%s'", cases[i].value);
        } else {
            cr_expect_not(ok, "'%s' should be refused", cases[i].value);
            cr_expect_eq(key.len, 9, "the output is untouched on refusal");
        }
    }

    char longv[7 + KEY_PRESENTED_MAX + 2];
    memcpy(longv, "Bearer ", 7);
    memset(longv + 7, 'k', KEY_PRESENTED_MAX);
    longv[7 + KEY_PRESENTED_MAX] = '\0';
    struct slice key;
    cr_expect(key_from_authorization(keyt_slice(longv), &key));
    longv[7 + KEY_PRESENTED_MAX] = 'k';
    longv[7 + KEY_PRESENTED_MAX + 1] = '\0';
    cr_expect_not(key_from_authorization(keyt_slice(longv), &key), "longer than KEY_PRESENTED_MAX");
}

Test(keys, x_api_key_header)
{
    struct slice key;
    cr_expect(key_from_x_api_key(keyt_slice("sk-aigw-abc"), &key));
    cr_expect_eq(key.len, 11);
    cr_expect(key_from_x_api_key(keyt_slice(" \tsk-x "), &key));
    cr_expect_eq(key.len, 4);
    cr_expect_eq(memcmp(key.p, "sk-x", 4), 0);
    cr_expect_not(key_from_x_api_key(keyt_slice(""), &key));
    cr_expect_not(key_from_x_api_key(keyt_slice("   "), &key));
    cr_expect_not(key_from_x_api_key(keyt_slice("Bearer sk-x"), &key), "no scheme in x-api-key");
    cr_expect_not(key_from_x_api_key(keyt_slice("a b"), &key));
    cr_expect_not(key_from_x_api_key((struct slice){ "a\0b", 3 }, &key));
}

/* What key_from_request makes of a request head's credential headers. */
Test(keys, key_from_request_takes_one_credential)
{
    static const struct {
        const char *headers;
        enum key_presented want;
        const char *key;
    } cases[] = {
        { "", KEY_ABSENT, NULL },
        { "Authorization: Bearer k1\r\n", KEY_PRESENTED, "k1" },
        { "x-api-key: k2\r\n", KEY_PRESENTED, "k2" },
        { "Authorization: Basic YTpi\r\n", KEY_UNUSABLE, NULL },
        { "X-Api-Key: a b\r\n", KEY_UNUSABLE, NULL },
        /* the same key both ways names one caller */
        { "Authorization: Bearer k1\r\nx-api-key: k1\r\n", KEY_PRESENTED, "k1" },
        { "x-api-key: k1\r\nAuthorization: bearer  k1\r\n", KEY_PRESENTED, "k1" },
        /* duplicates, even equal ones */
        { "Authorization: Bearer k1\r\nAuthorization: Bearer k2\r\n", KEY_CONFLICT, NULL },
        { "Authorization: Bearer k1\r\nauthorization: Bearer k1\r\n", KEY_CONFLICT, NULL },
        { "x-api-key: k1\r\nX-API-KEY: k1\r\n", KEY_CONFLICT, NULL },
        { "Authorization: Bearer k1\r\nx-api-key: k1\r\nx-api-key: k1\r\n", KEY_CONFLICT, NULL },
        /* both, not naming the same key */
        { "Authorization: Bearer k1\r\nx-api-key: k2\r\n", KEY_CONFLICT, NULL },
        { "Authorization: Bearer k1\r\nx-api-key: k11\r\n", KEY_CONFLICT, NULL },
        { "Authorization: Basic YTpi\r\nx-api-key: k1\r\n", KEY_CONFLICT, NULL },
        { "Authorization: Bearer k1\r\nx-api-key: \r\n", KEY_CONFLICT, NULL },
        /* other headers between them change nothing */
        { "Authorization: Bearer k1\r\nX-Other: x\r\nAccept: */*\r\n", KEY_PRESENTED, "k1" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char head[512];
        snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n", cases[i].headers);
        struct http_request req;
        const char *why = NULL;
        cr_assert_eq(http_parse_request(head, strlen(head), sizeof head, &req, &why), HTTP_OK, "%s", why);
        struct slice key = { "untouched", 9 };
        enum key_presented got = key_from_request(&req, &key);
        cr_expect_eq(got, cases[i].want, "case %zu (%s): got %d, want %d", i, cases[i].headers, got,
                     cases[i].want);
        if (cases[i].key)
            cr_expect(key.len == strlen(cases[i].key) && memcmp(key.p, cases[i].key, key.len) == 0,
                      "case %zu: key %.*s", i, (int)key.len, key.p);
        else
            cr_expect_eq(key.len, 9, "case %zu: the output is untouched without a key", i);
    }
}

Test(keys, generate_format)
{
    static const char alphabet[] = KEY_BASE62_ALPHABET;
    cr_assert_eq(strlen(alphabet), 62);

    uint8_t rnd[32] = { 0 };
    char key[KEY_LEN + 1];
    cr_assert_eq(key_generate(rnd, key, sizeof key), KEY_LEN);
    cr_expect_str_eq(key, "sk-aigw-0000000000000000000000000000000000000000000");

    rnd[31] = 62;
    key_generate(rnd, key, sizeof key);
    cr_expect_str_eq(key, "sk-aigw-0000000000000000000000000000000000000000010", "62 is '10' in base 62");

    /* cross-checked with Python big integers */
    memset(rnd, 0xff, sizeof rnd);
    key_generate(rnd, key, sizeof key);
    cr_expect_str_eq(key, "sk-aigw-yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1");
    for (int i = 0; i < 32; i++)
        rnd[i] = (uint8_t)i;
    key_generate(rnd, key, sizeof key);
    cr_expect_str_eq(key, "sk-aigw-003aUlTJC7tjlCTQj2uNU3MFagCXG9LRKRcwGkBIDlf");
    cr_expect_eq(rnd[5], 5, "the random input is not modified");

    cr_expect_eq(strlen(key), (size_t)8 + 43);
    cr_expect_eq(strspn(key + 8, alphabet), 43);

    char small[KEY_LEN];
    cr_expect_eq(key_generate(rnd, small, sizeof small), -1, "no room for the NUL");

    /* one bit of difference anywhere gives a different key */
    char other[KEY_LEN + 1];
    for (int bit = 0; bit < 256; bit += 37) {
        uint8_t r2[32];
        memcpy(r2, rnd, sizeof r2);
        r2[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        key_generate(r2, other, sizeof other);
        cr_expect_str_neq(key, other, "bit %d", bit);
    }
}

Test(keys, file_line_format_and_validation)
{
    char line[256];
    int n = key_file_line("alice", "pro", "abc", line, sizeof line);
    cr_expect_str_eq(line, "alice sha256:" KT_HASH_ABC " tier=pro\n");
    cr_expect_eq(n, (int)strlen(line));
    key_file_line("bob", NULL, "hello", line, sizeof line);
    cr_expect_str_eq(line, "bob sha256:" KT_HASH_HELLO " tier=default\n");

    cr_expect_eq(key_file_line("bad name", NULL, "k", line, sizeof line), -1);
    cr_expect_eq(key_file_line("", NULL, "k", line, sizeof line), -1);
    cr_expect_eq(key_file_line("a", "t/x", "k", line, sizeof line), -1);
    cr_expect_eq(key_file_line("a", "", "k", line, sizeof line), -1);
    cr_expect_eq(key_file_line("a", NULL, "", line, sizeof line), -1);
    cr_expect_eq(key_file_line("a", NULL, "k k", line, sizeof line), -1);
    cr_expect_eq(key_file_line("a", NULL, "abc", line, 20), -1, "too small a buffer");
    char name65[66];
    memset(name65, 'n', 65);
    name65[65] = '\0';
    cr_expect_eq(key_file_line(name65, NULL, "k", line, sizeof line), -1);
    name65[64] = '\0';
    cr_expect_gt(key_file_line(name65, NULL, "k", line, sizeof line), 0, "64 characters is allowed");
}

Test(keys, keygen_round_trip)
{
    uint8_t r1[32], r2[32];
    for (int i = 0; i < 32; i++) {
        r1[i] = (uint8_t)(i * 37 + 11);
        r2[i] = (uint8_t)(i * 37 + 12);
    }
    char k1[KEY_LEN + 1], k2[KEY_LEN + 1], text[512], line[256];
    cr_assert_eq(key_generate(r1, k1, sizeof k1), KEY_LEN);
    cr_assert_eq(key_generate(r2, k2, sizeof k2), KEY_LEN);
    cr_expect_str_neq(k1, k2);

    cr_assert_gt(key_file_line("ci-bot", "pro", k1, line, sizeof line), 0);
    strcpy(text, line);
    cr_assert_gt(key_file_line("alice", NULL, k2, line, sizeof line), 0);
    strcat(text, line);
    cr_expect_null(strstr(text, k1), "the key itself is not in its line");

    struct keyring *k = keyt_load(text);
    const struct key_entry *e = keyt_lookup(k, k1);
    cr_assert_not_null(e);
    cr_expect_str_eq(e->name, "ci-bot");
    cr_expect_str_eq(e->tier, "pro");
    e = keyt_lookup(k, k2);
    cr_assert_not_null(e);
    cr_expect_str_eq(e->name, "alice");
    cr_expect_str_eq(e->tier, "default");

    /* as presented by a client */
    char header[128];
    snprintf(header, sizeof header, "Bearer %s", k1);
    struct slice presented;
    cr_assert(key_from_authorization(keyt_slice(header), &presented));
    e = keyring_lookup(k, presented.p, presented.len);
    cr_assert_not_null(e);
    cr_expect_str_eq(e->name, "ci-bot");
    k1[KEY_LEN - 1] ^= 1;
    cr_expect_null(keyt_lookup(k, k1), "a key one character off is unknown");
    keyring_free(k);
}

Test(keys, real_file)
{
    char path[] = "/tmp/aigw-keys-test-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "# written by the test\n"
                        "alice sha256:" KT_HASH_ABC " tier=free models=qwen*\n"
                        "bob sha256:" KT_HASH_HELLO " tier=pro\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);

    struct keyring *k = NULL;
    char err[512] = "";
    cr_assert_eq(keyring_load(path, &k, err, sizeof err), 0, "%s", err);
    cr_expect_eq(keyring_count(k), 2);
    const struct key_entry *e = keyt_lookup(k, "abc");
    cr_assert_not_null(e);
    cr_expect_str_eq(e->name, "alice");
    cr_expect(key_entry_allows_model(e, "qwen2", 5));
    cr_expect_not(key_entry_allows_model(e, "llama", 5));
    cr_expect_eq(e->line, 2);
    cr_expect_eq(keyt_lookup(k, "hello")->line, 3);
    keyring_free(k);

    /* an error in a file names the path and line; a NUL byte is a control character */
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("alice sha256:" KT_HASH_ABC " tier=free\n", f);
    fwrite("bob\0", 1, 4, f);
    fclose(f);
    k = NULL;
    cr_expect_eq(keyring_load(path, &k, err, sizeof err), -1);
    cr_expect_null(k);
    char want[600];
    snprintf(want, sizeof want, "%s:2: control character (byte 0x00)", path);
    cr_expect_str_eq(err, want);

    unlink(path);
    cr_expect_eq(keyring_load(path, &k, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
    cr_expect_str_eq(err, want);

    cr_expect_eq(keyring_load("/tmp", &k, err, sizeof err), -1);
    cr_expect_str_eq(err, "/tmp: not a regular file");
}
