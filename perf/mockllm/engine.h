/* The simulated inference engine: a FIFO of waiting sequences, at most
 * --max-running of them generating, a KV cache of --kv-capacity tokens that the
 * running sequences fill with prompt + output tokens (the newest running sequence
 * is preempted back to the queue's head when it is full, as vLLM does), prefill
 * at --prefill-tps, --ttft-ms before the first token, then --tps tokens/s each.
 *
 * The engine only keeps time and capacity; the server formats what is produced,
 * through the two callbacks at the end of this file. */
#ifndef AIGW_MOCKLLM_ENGINE_H
#define AIGW_MOCKLLM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "mock.h"

enum seq_state { SEQ_FREE, SEQ_WAITING, SEQ_RUNNING };

struct seq {
    /* engine */
    struct seq *prev, *next;    /* in the waiting or the running list */
    int32_t heap_idx;           /* in the timer heap, or -1 */
    uint8_t state;              /* enum seq_state */
    bool started;               /* admitted at least once (ttft is paid once) */
    bool write_blocked;         /* the client is slow: paused until unblocked */
    uint32_t prompt_tokens;
    uint32_t cached_tokens;     /* prompt tokens found in the prefix cache */
    uint32_t max_tokens;        /* completion length */
    uint32_t generated;
    uint32_t k_base;            /* tokens generated when t_base was set */
    uint64_t t_base;            /* when token k_base is due (ns, CLOCK_MONOTONIC) */
    uint64_t deadline;
    uint64_t kv_held;

    /* the request, owned by the server */
    void *owner;
    uint64_t id;
    int64_t created;
    uint16_t model;
    uint8_t api;                /* enum api_kind */
    bool stream;
    bool include_usage;
    bool chunked;               /* HTTP/1.1 chunked framing (else close-delimited) */
};

struct engine_stats {
    uint32_t running, waiting;
    uint64_t kv_used;
    uint64_t success;           /* sequences that produced all their tokens */
    uint64_t aborted;           /* sequences dropped because the client went away */
    uint64_t preemptions;
    uint64_t prompt_tokens;
    uint64_t generation_tokens;
    uint64_t prefix_queries;    /* prompt tokens looked up in the prefix cache */
    uint64_t prefix_hits;       /* of which were found */
};

void engine_init(const struct mock_config *cfg);
void engine_fini(void);

/* A zeroed sequence from the pool. */
struct seq *seq_alloc(void);

/* Queues s (prompt_tokens, cached_tokens, max_tokens and the request fields set)
 * and admits what fits. */
void engine_submit(struct seq *s, uint64_t now);

/* If s is due now, takes it off the timer heap and returns true: the caller then
 * calls engine_step() at once (the fast path of an instant answer). */
bool engine_take_if_due(struct seq *s, uint64_t now);

/* The next due sequence, taken off the timer heap, or NULL. */
struct seq *engine_pop_due(uint64_t now);

/* Produces the tokens s owes by now; may finish and free s. */
void engine_step(struct seq *s, uint64_t now);

/* The client went away: drop s wherever it is and free it. */
void engine_abort(struct seq *s, uint64_t now);

/* The client caught up with a write-blocked s: run it again soon. */
void engine_unblock(struct seq *s);

/* Earliest deadline on the heap; false if none. */
bool engine_next_deadline(uint64_t *deadline);

const struct engine_stats *engine_stats(void);
void engine_note_prefix(uint64_t queried_tokens, uint64_t hit_tokens);

/* ---- implemented by the server ---- */

/* Streams tokens [s->generated, s->generated + n); returns how many it wrote,
 * fewer when the client is not reading (then s waits for engine_unblock). */
uint32_t server_emit(struct seq *s, uint32_t n);

/* s has produced its last token: write the end of the answer. s is freed after. */
void server_done(struct seq *s);

#endif
