#include <criterion/criterion.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace/otlp.h"
#include "trace/sampling.h"
#include "trace/span_ring.h"
#include "trace/traceparent.h"

/* ---------------- traceparent ---------------- */

#define TP_VALID "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static bool tp_ok(const char *s)
{
    struct trace_parent p;
    return traceparent_parse(s, strlen(s), &p);
}

Test(traceparent, the_spec_example_parses_into_its_ids_and_flags)
{
    struct trace_parent p;
    cr_assert(traceparent_parse(TP_VALID, strlen(TP_VALID), &p));
    static const uint8_t trace[16] = { 0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                       0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36 };
    static const uint8_t span[8] = { 0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7 };
    cr_expect_eq(memcmp(p.trace_id, trace, 16), 0);
    cr_expect_eq(memcmp(p.span_id, span, 8), 0);
    cr_expect_eq(p.flags, 0x01);
}

Test(traceparent, format_writes_back_what_parse_read)
{
    struct trace_parent p;
    cr_assert(traceparent_parse(TP_VALID, strlen(TP_VALID), &p));
    char out[TRACEPARENT_LEN + 1] = { 0 };
    traceparent_format(out, p.trace_id, p.span_id, p.flags);
    cr_expect_str_eq(out, TP_VALID);
}

Test(traceparent, invalid_values_are_refused)
{
    static const char *const bad[] = {
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",          /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",        /* 00 is exactly 55 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",       /* 00 has nothing after */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",         /* all-zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",         /* all-zero span id */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",         /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",         /* not hex */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",         /* separators */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",         /* version ff is invalid */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",        /* later version: '-' after 55 */
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect(!tp_ok(bad[i]), "accepted '%s'", bad[i]);
}

Test(traceparent, a_later_version_is_read_as_00_and_what_follows_ignored)
{
    cr_expect(tp_ok("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    cr_expect(tp_ok("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"));
    struct trace_parent p;
    const char *s = "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-x";
    cr_assert(traceparent_parse(s, strlen(s), &p));
    cr_expect_eq(p.flags, 0x09);
}

Test(traceparent, unknown_flags_bits_parse_and_the_sampled_bit_is_bit_0)
{
    struct trace_parent p;
    const char *s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe";
    cr_assert(traceparent_parse(s, strlen(s), &p));
    cr_expect_eq(p.flags & TRACE_FLAG_SAMPLED, 0);
}

/* ---------------- sampling and ids ---------------- */

Test(trace_sampling, the_parent_decides_when_there_is_one)
{
    for (uint64_t r = 0; r < 1000; r += 7) {
        cr_expect(trace_sample(TRACE_PARENT_SAMPLED, 0, r));
        cr_expect(!trace_sample(TRACE_PARENT_UNSAMPLED, 1000000, r));
    }
}

Test(trace_sampling, without_a_parent_the_ratio_decides)
{
    cr_expect(!trace_sample(TRACE_NO_PARENT, 0, 0));
    cr_expect(!trace_sample(TRACE_NO_PARENT, 0, 999999));
    cr_expect(trace_sample(TRACE_NO_PARENT, 1000000, 999999));
    cr_expect(trace_sample(TRACE_NO_PARENT, 1, 1000000));      /* 1000000 % 1e6 == 0 */
    cr_expect(!trace_sample(TRACE_NO_PARENT, 1, 1));

    /* 1% over a generator's numbers lands near 1% */
    struct trace_rng rng = { { 0x1234567890abcdefull, 42 } };
    unsigned hits = 0;
    for (int i = 0; i < 100000; i++)
        hits += trace_sample(TRACE_NO_PARENT, 10000, trace_rng_next(&rng));
    cr_expect(hits > 800 && hits < 1200, "%u of 100000 sampled at 1%%", hits);
}

Test(trace_sampling, ids_are_never_zero_and_do_not_repeat)
{
    struct trace_rng rng = { { 1, 0 } };
    uint8_t prev[16] = { 0 }, id[16];
    for (int i = 0; i < 1000; i++) {
        trace_new_id(&rng, id, 16);
        static const uint8_t zero[16];
        cr_assert_neq(memcmp(id, zero, 16), 0);
        cr_assert_neq(memcmp(id, prev, 16), 0);
        memcpy(prev, id, 16);
        uint8_t span[8];
        trace_new_id(&rng, span, 8);
        cr_assert_neq(memcmp(span, zero, 8), 0);
    }
}

/* ---------------- ring ---------------- */

Test(span_ring, a_full_ring_drops_and_counts_and_keeps_order)
{
    struct span_ring *r = span_ring_new(4);
    cr_assert(r);
    for (int i = 0; i < 6; i++) {
        struct span_record *s = span_ring_reserve(r);
        if (i < 4) {
            cr_assert(s, "slot %d", i);
            s->status = (uint16_t)(200 + i);
            span_ring_commit(r);
        } else {
            cr_assert_null(s);
        }
    }
    cr_expect_eq(atomic_load(&r->dropped), 2);
    cr_expect_eq(span_ring_fill(r), 4);
    struct span_record out[8];
    cr_assert_eq(span_ring_pop(r, out, 3), 3);
    cr_expect_eq(out[0].status, 200);
    cr_expect_eq(out[2].status, 202);
    /* room again, and the wrap keeps the order */
    struct span_record *s = span_ring_reserve(r);
    cr_assert(s);
    s->status = 299;
    span_ring_commit(r);
    cr_assert_eq(span_ring_pop(r, out, 8), 2);
    cr_expect_eq(out[0].status, 203);
    cr_expect_eq(out[1].status, 299);
    cr_expect_eq(span_ring_pop(r, out, 8), 0);
    cr_expect_eq(atomic_load(&r->dropped), 2);
    span_ring_free(r);
}

Test(span_ring, sizes_that_are_not_powers_of_two_are_refused)
{
    cr_expect_null(span_ring_new(0));
    cr_expect_null(span_ring_new(3));
}

/* ---------------- OTLP JSON ---------------- */

static struct span_record fixed_span(void)
{
    struct span_record s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < 16; i++)
        s.trace_id[i] = (uint8_t)(0x10 + i);
    for (int i = 0; i < 8; i++) {
        s.span_id[i] = (uint8_t)(0xa0 + i);
        s.parent_id[i] = (uint8_t)(0xb0 + i);
    }
    s.has_parent = true;
    s.kind = SPAN_SERVER;
    s.gen_ai_op = GEN_AI_CHAT;
    s.status = 200;
    s.start_unix_ns = 1700000000000000000ull;
    s.end_unix_ns = 1700000000250000000ull;
    s.max_tokens = 16;
    s.input_tokens = 5;
    s.output_tokens = 7;
    s.queue_wait_ms = s.retries = SPAN_NO_VALUE;
    strcpy(s.name, "POST /v1/chat/completions");
    strcpy(s.method, "POST");
    strcpy(s.path, "/v1/chat/completions");
    strcpy(s.model, "m\"x\n");
    strcpy(s.key, "team-a");
    return s;
}

Test(otlp, a_span_encodes_to_the_exact_protobuf_json)
{
    struct span_record s = fixed_span();
    char buf[4096];
    struct outbuf o = outbuf_make(buf, sizeof buf - 1);
    otlp_encode(&o, "gw\"1", &s, 1);
    cr_assert(o.len < o.cap);
    buf[o.len] = 0;
    cr_expect_str_eq(buf,
        "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"gw\\\"1\"}}]},"
        "\"scopeSpans\":[{\"scope\":{\"name\":\"aigw\"},\"spans\":[{"
        "\"traceId\":\"101112131415161718191a1b1c1d1e1f\",\"spanId\":\"a0a1a2a3a4a5a6a7\","
        "\"parentSpanId\":\"b0b1b2b3b4b5b6b7\",\"name\":\"POST /v1/chat/completions\",\"kind\":2,"
        "\"startTimeUnixNano\":\"1700000000000000000\",\"endTimeUnixNano\":\"1700000000250000000\","
        "\"attributes\":["
        "{\"key\":\"http.request.method\",\"value\":{\"stringValue\":\"POST\"}},"
        "{\"key\":\"url.path\",\"value\":{\"stringValue\":\"/v1/chat/completions\"}},"
        "{\"key\":\"http.response.status_code\",\"value\":{\"intValue\":\"200\"}},"
        "{\"key\":\"gen_ai.operation.name\",\"value\":{\"stringValue\":\"chat\"}},"
        "{\"key\":\"gen_ai.request.model\",\"value\":{\"stringValue\":\"m\\\"x\\n\"}},"
        "{\"key\":\"gen_ai.response.model\",\"value\":{\"stringValue\":\"m\\\"x\\n\"}},"
        "{\"key\":\"gen_ai.request.max_tokens\",\"value\":{\"intValue\":\"16\"}},"
        "{\"key\":\"gen_ai.usage.input_tokens\",\"value\":{\"intValue\":\"5\"}},"
        "{\"key\":\"gen_ai.usage.output_tokens\",\"value\":{\"intValue\":\"7\"}},"
        "{\"key\":\"aigw.key\",\"value\":{\"stringValue\":\"team-a\"}}"
        "]}]}]}]}");
}

Test(otlp, a_failed_attempt_has_status_error_with_its_reason_and_no_parent_means_no_parent_id)
{
    struct span_record s = fixed_span();
    s.kind = SPAN_CLIENT;
    s.has_parent = false;
    s.status = 0;
    s.error = true;
    strcpy(s.error_text, "connect: refused");
    strcpy(s.server_address, "127.0.0.1");
    s.server_port = 8000;
    s.retries = 1;
    char buf[4096];
    struct outbuf o = outbuf_make(buf, sizeof buf - 1);
    otlp_encode(&o, "aigw", &s, 1);
    buf[o.len] = 0;
    cr_expect_null(strstr(buf, "parentSpanId"));
    cr_expect_null(strstr(buf, "http.response.status_code"));
    cr_expect_null(strstr(buf, "gen_ai.usage"));      /* usage is the SERVER span's */
    cr_expect(strstr(buf, "\"kind\":3"));
    cr_expect(strstr(buf, "{\"key\":\"server.address\",\"value\":{\"stringValue\":\"127.0.0.1\"}},"
                          "{\"key\":\"server.port\",\"value\":{\"intValue\":\"8000\"}}"));
    cr_expect(strstr(buf, "{\"key\":\"aigw.retries\",\"value\":{\"intValue\":\"1\"}}"));
    cr_expect(strstr(buf, "],\"status\":{\"code\":2,\"message\":\"connect: refused\"}}]}]}]}"), "%s", buf);
}

Test(otlp, spans_are_comma_separated_and_a_small_buffer_reports_overflow)
{
    struct span_record s[2] = { fixed_span(), fixed_span() };
    s[1].kind = SPAN_CLIENT;
    char buf[8192];
    struct outbuf o = outbuf_make(buf, sizeof buf - 1);
    otlp_encode(&o, "aigw", s, 2);
    buf[o.len] = 0;
    const char *second = strstr(buf, "]},{\"traceId\":");
    cr_expect(second, "%s", buf);
    char small[64];
    struct outbuf t = outbuf_make(small, sizeof small);
    otlp_encode(&t, "aigw", s, 2);
    cr_expect_eq(t.len, o.len);
    cr_expect(t.len > t.cap);
}
