/* libFuzzer: the OpenAI request reader. Whatever the bytes, a result and never a
 * crash; an accepted body satisfies the reader's invariants, its model decodes to
 * the length reported, and cutting the closing brace makes it invalid again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/openai.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static bool in_buf(struct slice s, const char *buf, size_t len)
{
    return s.p >= buf && s.len <= len && (size_t)(s.p - buf) <= len - s.len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char out[1 << 20];
    const char *buf = (const char *)data;
    struct openai_request req;
    const char *why = NULL;

    /* the decoder never grows arbitrary bytes and never reads past them */
    if (size <= sizeof out)
        FUZZ_CHECK(openai_unescape((struct slice){ buf, size }, out, size) != 0 || size == 0);
    (void)openai_content_type_is_json((struct slice){ buf, size });

    int rc = openai_parse_request(buf, size, &req, &why);
    FUZZ_CHECK(rc == OPENAI_OK || rc == OPENAI_BAD);
    if (rc == OPENAI_BAD) {
        FUZZ_CHECK(why == req.error && why[0] != 0);
        FUZZ_CHECK(strlen(why) < sizeof req.error);
        FUZZ_CHECK(req.error_offset <= size);
        return 0;
    }
    FUZZ_CHECK(why == NULL);
    FUZZ_CHECK(size >= 2);
    FUZZ_CHECK(in_buf(req.model, buf, size) && req.model.len > 0);
    FUZZ_CHECK(req.model_decoded_len > 0 && req.model_decoded_len <= req.model.len);
    FUZZ_CHECK(req.model_decoded_len <= OPENAI_MAX_MODEL_LEN);
    FUZZ_CHECK(req.model_escaped || req.model_decoded_len == req.model.len);
    FUZZ_CHECK(req.prompt_bytes <= size);
    FUZZ_CHECK(req.message_count <= size / 2);
    FUZZ_CHECK(req.prompt_token_ids <= size / 2);
    FUZZ_CHECK(req.prompt_tokens_estimate >= 1);
    FUZZ_CHECK(req.prompt_tokens_estimate ==
               (req.prompt_bytes + 3) / 4 + 4 * (uint64_t)req.message_count + req.prompt_token_ids ||
               (req.prompt_bytes == 0 && req.message_count == 0 && req.prompt_token_ids == 0));
    FUZZ_CHECK(!req.has_max_tokens ? req.max_tokens == 0 : req.max_tokens <= OPENAI_MAX_TOKENS_LIMIT);

    size_t n = openai_unescape(req.model, out, req.model_decoded_len);
    FUZZ_CHECK(n == req.model_decoded_len);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((uint8_t)out[i] >= 0x20 && out[i] != 0x7f);
    FUZZ_CHECK(openai_unescape(req.model, out, req.model_decoded_len - 1) == 0);
    if (!req.model_escaped)
        FUZZ_CHECK(memcmp(out, req.model.p, n) == 0);

    /* the object ends at the last non-whitespace byte; without it, the body is bad */
    size_t last = size;
    while (last > 0 && strchr(" \t\r\n", buf[last - 1]) && buf[last - 1] != 0)
        last--;
    FUZZ_CHECK(last > 0 && buf[last - 1] == '}');
    struct openai_request cut;
    FUZZ_CHECK(openai_parse_request(buf, last - 1, &cut, &why) == OPENAI_BAD);
    /* and with only the trailing whitespace removed, it reads the same */
    FUZZ_CHECK(openai_parse_request(buf, last, &cut, &why) == OPENAI_OK);
    FUZZ_CHECK(cut.prompt_bytes == req.prompt_bytes && cut.max_tokens == req.max_tokens &&
               cut.stream == req.stream && cut.message_count == req.message_count);
    return 0;
}
