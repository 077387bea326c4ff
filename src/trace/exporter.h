/* The trace path's two ends: each shard's span ring and random ids (the
 * producer side), and the exporter thread that drains the rings and POSTs
 * OTLP/HTTP JSON to the collector (control plane: it may block, with short
 * timeouts; a shard never waits for it). */
#ifndef AIGW_TRACE_EXPORTER_H
#define AIGW_TRACE_EXPORTER_H

#include "core/config.h"
#include "trace/sampling.h"
#include "trace/span_ring.h"
#include "util/outbuf.h"

#define TRACE_RING_SLOTS 1024u      /* per shard */
#define TRACE_BATCH_MAX 512u        /* spans per POST */
#define TRACE_FLUSH_MS 200u         /* a span waits at most about this long */
#define TRACE_IO_TIMEOUT_MS 1000u   /* connect, send and receive, each */

/* One per shard, written by that shard only (ring producer side, rng). */
struct trace_shard {
    struct span_ring *ring;
    struct trace_rng rng;
} __attribute__((aligned(64)));

/* Before the shards start: their rings, and generators seeded from getrandom. */
int trace_init(unsigned nshards);
struct trace_shard *trace_shard_of(unsigned shard);

/* The [tracing] section to follow (at start and on every reload; main thread). */
void trace_configure(const struct cfg_tracing *t);
int trace_exporter_start(void);
/* After the shards stopped: what they left is exported once more, then the
 * thread ends (the rings stay until the process exits). */
void trace_exporter_stop(void);

/* aigw_trace_spans_total{result}, aigw_trace_export_errors_total */
void trace_metrics(struct outbuf *o);

#endif
