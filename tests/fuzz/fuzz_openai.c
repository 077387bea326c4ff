/* libFuzzer: the OpenAI request reader. Whatever the bytes, a result and never a
 * crash; an accepted body satisfies the reader's invariants, its model decodes to
 * the length reported, and cutting the closing brace makes it invalid again.
 * openai_read_request with options (aigw-mockllm's way) decides the same, and the
 * prompt pieces it shows add up to the counts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/openai.h"

#define FUZZ_CHECK(cond) do { if (!(cond)) abort(); } while (0)

static bool in_buf(struct slice s, const char *buf, size_t len)
{
    return s.p >= buf && s.len <= len && (size_t)(s.p - buf) <= len - s.len;
}

struct pieces {
    const char *buf;
    size_t size;
    uint64_t decoded, token_ids;
    uint32_t last_item[3];
};

static void count_piece(void *ctx, const struct openai_prompt_piece *piece)
{
    struct pieces *ps = ctx;
    FUZZ_CHECK(piece->raw.len == 0 || in_buf(piece->raw, ps->buf, ps->size));
    FUZZ_CHECK(piece->source <= OPENAI_FROM_INPUT);
    FUZZ_CHECK(piece->token_id ? piece->decoded == 0 && piece->raw.len > 0
                               : piece->decoded <= piece->raw.len);
    /* items only move forward within a field (a new field starts over at 0) */
    if (piece->item != 0)
        FUZZ_CHECK(piece->item >= ps->last_item[piece->source]);
    ps->last_item[piece->source] = piece->item;
    ps->decoded += piece->decoded;
    ps->token_ids += piece->token_id;
}

/* The same body through openai_read_request: the same decision, the same fields
 * (apart from a missing model, which model_optional accepts). */
static void check_with_options(const char *buf, size_t size, int rc, const struct openai_request *req)
{
    struct pieces ps = { .buf = buf, .size = size };
    struct openai_read_options opt = { .model_optional = true, .on_prompt = count_piece, .ctx = &ps };
    struct openai_request o;
    const char *why = NULL;
    int orc = openai_read_request(buf, size, &opt, &o, &why);
    bool missing_model = rc == OPENAI_BAD && strcmp(req->error, "missing \"model\"") == 0;
    if (rc == OPENAI_BAD && !missing_model) {
        FUZZ_CHECK(orc == OPENAI_BAD);
        FUZZ_CHECK(strcmp(o.error, req->error) == 0 && o.error_offset == req->error_offset);
        return;
    }
    if (missing_model) {
        if (orc == OPENAI_BAD)      /* a later check (max_tokens) */
            return;
        FUZZ_CHECK(o.model.p == NULL);
    } else {
        FUZZ_CHECK(orc == OPENAI_OK);
        FUZZ_CHECK(o.model.p == req->model.p && o.model.len == req->model.len);
        FUZZ_CHECK(o.stream == req->stream && o.include_usage == req->include_usage &&
                   o.max_tokens == req->max_tokens && o.prefix_blocks == req->prefix_blocks &&
                   memcmp(o.prefix_block, req->prefix_block, o.prefix_blocks * sizeof o.prefix_block[0]) == 0 &&
                   o.prompt_tokens_estimate == req->prompt_tokens_estimate);
    }
    FUZZ_CHECK(ps.decoded == o.prompt_bytes);
    FUZZ_CHECK(ps.token_ids == o.prompt_token_ids);
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
    check_with_options(buf, size, rc, &req);
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
