/* Scheduler and clock of the simulated engine. Every sequence that is running
 * and not paused sits on a binary min-heap keyed by the time its next token is
 * due; sequences come from a free list, so the steady state does not allocate. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct list {
    struct seq *first, *last;
};

static struct {
    const struct mock_config *cfg;
    uint64_t interval_ns;       /* between tokens; 0: all at once */
    uint64_t ttft_ns;
    uint64_t kv_watermark;      /* headroom kept free when admitting */
    struct list waiting, running;
    struct seq **heap;
    uint32_t nheap, heap_cap;
    struct seq *free;
    struct engine_stats st;
} E;

/* ---- lists ---- */

static void list_unlink(struct list *l, struct seq *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        l->first = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        l->last = s->prev;
    s->prev = s->next = NULL;
}

static void list_push_back(struct list *l, struct seq *s)
{
    s->next = NULL;
    s->prev = l->last;
    if (l->last)
        l->last->next = s;
    else
        l->first = s;
    l->last = s;
}

static void list_push_front(struct list *l, struct seq *s)
{
    s->prev = NULL;
    s->next = l->first;
    if (l->first)
        l->first->prev = s;
    else
        l->last = s;
    l->first = s;
}

/* ---- timer heap ---- */

static void heap_set(uint32_t i, struct seq *s)
{
    E.heap[i] = s;
    s->heap_idx = (int32_t)i;
}

static void heap_up(uint32_t i)
{
    struct seq *s = E.heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (E.heap[parent]->deadline <= s->deadline)
            break;
        heap_set(i, E.heap[parent]);
        i = parent;
    }
    heap_set(i, s);
}

static void heap_down(uint32_t i)
{
    struct seq *s = E.heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= E.nheap)
            break;
        if (c + 1 < E.nheap && E.heap[c + 1]->deadline < E.heap[c]->deadline)
            c++;
        if (s->deadline <= E.heap[c]->deadline)
            break;
        heap_set(i, E.heap[c]);
        i = c;
    }
    heap_set(i, s);
}

static void heap_push(struct seq *s)
{
    if (E.nheap == E.heap_cap) {
        uint32_t cap = E.heap_cap ? E.heap_cap * 2 : 1024;
        struct seq **h = realloc(E.heap, cap * sizeof *h);
        if (!h) {
            fputs("aigw-mockllm: out of memory\n", stderr);
            abort();
        }
        E.heap = h;
        E.heap_cap = cap;
    }
    E.heap[E.nheap] = s;
    s->heap_idx = (int32_t)E.nheap;
    E.nheap++;
    heap_up(E.nheap - 1);
}

static void heap_remove(struct seq *s)
{
    if (s->heap_idx < 0)
        return;
    uint32_t i = (uint32_t)s->heap_idx;
    s->heap_idx = -1;
    E.nheap--;
    if (i == E.nheap)
        return;
    struct seq *moved = E.heap[E.nheap];
    heap_set(i, moved);
    heap_down(i);
    heap_up((uint32_t)moved->heap_idx);
}

/* ---- pool ---- */

struct seq *seq_alloc(void)
{
    struct seq *s = E.free;
    if (s) {
        E.free = s->next;
    } else {
        s = malloc(sizeof *s);
        if (!s) {
            fputs("aigw-mockllm: out of memory\n", stderr);
            abort();
        }
    }
    memset(s, 0, sizeof *s);
    s->heap_idx = -1;
    return s;
}

static void seq_free(struct seq *s)
{
    s->state = SEQ_FREE;
    s->owner = NULL;
    s->next = E.free;
    E.free = s;
}

/* ---- scheduling ---- */

void engine_init(const struct mock_config *cfg)
{
    memset(&E, 0, sizeof E);
    E.cfg = cfg;
    E.interval_ns = cfg->tps > 0 ? (uint64_t)(1e9 / cfg->tps) : 0;
    E.ttft_ns = cfg->ttft_ms * 1000000ull;
    E.kv_watermark = cfg->kv_capacity / 100;
}

void engine_fini(void)
{
    struct seq *s;
    while ((s = E.free)) {
        E.free = s->next;
        free(s);
    }
    free(E.heap);
    E.heap = NULL;
    E.nheap = E.heap_cap = 0;
}

static uint64_t prefill_ns(uint64_t tokens)
{
    if (E.cfg->prefill_tps <= 0 || tokens == 0)
        return 0;
    return (uint64_t)((double)tokens * 1e9 / E.cfg->prefill_tps);
}

static void kv_release(struct seq *s)
{
    E.st.kv_used -= s->kv_held;
    s->kv_held = 0;
}

static void admit(struct seq *s, uint64_t now)
{
    uint64_t kv = (uint64_t)s->prompt_tokens + s->generated;
    uint64_t prefill;
    list_unlink(&E.waiting, s);
    E.st.waiting--;
    list_push_back(&E.running, s);
    E.st.running++;
    s->state = SEQ_RUNNING;
    s->kv_held = kv;
    E.st.kv_used += kv;
    /* A preempted sequence recomputes its prompt and its output so far. */
    prefill = s->started ? kv : s->prompt_tokens - s->cached_tokens;
    s->t_base = now + (s->started ? 0 : E.ttft_ns) + prefill_ns(prefill);
    s->started = true;
    s->k_base = s->generated;
    s->deadline = s->t_base;
    heap_push(s);
}

static bool fits(const struct seq *s)
{
    if (E.cfg->max_running && E.st.running >= E.cfg->max_running)
        return false;
    if (E.cfg->kv_capacity && E.st.running > 0) {
        uint64_t need = (uint64_t)s->prompt_tokens + s->generated + E.kv_watermark;
        if (E.st.kv_used + need > E.cfg->kv_capacity)
            return false;
    }
    return true;
}

/* Strict FIFO: the head of the queue waits for room, nobody overtakes it. */
static void schedule(uint64_t now)
{
    while (E.waiting.first && fits(E.waiting.first))
        admit(E.waiting.first, now);
}

static void preempt(struct seq *s)
{
    list_unlink(&E.running, s);
    E.st.running--;
    kv_release(s);
    heap_remove(s);
    s->write_blocked = false;
    s->state = SEQ_WAITING;
    list_push_front(&E.waiting, s);
    E.st.waiting++;
    E.st.preemptions++;
}

void engine_submit(struct seq *s, uint64_t now)
{
    s->state = SEQ_WAITING;
    list_push_back(&E.waiting, s);
    E.st.waiting++;
    E.st.prompt_tokens += s->prompt_tokens;
    schedule(now);
}

bool engine_take_if_due(struct seq *s, uint64_t now)
{
    if (s->state != SEQ_RUNNING || s->heap_idx < 0 || s->deadline > now)
        return false;
    heap_remove(s);
    return true;
}

struct seq *engine_pop_due(uint64_t now)
{
    if (E.nheap == 0 || E.heap[0]->deadline > now)
        return NULL;
    struct seq *s = E.heap[0];
    heap_remove(s);
    return s;
}

bool engine_next_deadline(uint64_t *deadline)
{
    if (E.nheap == 0)
        return false;
    *deadline = E.heap[0]->deadline;
    return true;
}

static void complete(struct seq *s, uint64_t now)
{
    list_unlink(&E.running, s);
    E.st.running--;
    kv_release(s);
    E.st.success++;
    schedule(now);
    server_done(s);
    seq_free(s);
}

/* Makes room for want more KV tokens by preempting the newest running sequences;
 * returns how many of them s may produce now (0: s itself was preempted). */
static uint32_t kv_room(struct seq *s, uint32_t want)
{
    uint64_t cap = E.cfg->kv_capacity;
    while (E.st.kv_used + want > cap) {
        struct seq *victim = E.running.last;
        if (victim == s) {
            uint64_t room = cap > E.st.kv_used ? cap - E.st.kv_used : 0;
            if (room == 0)
                preempt(s);
            return (uint32_t)room;
        }
        preempt(victim);
    }
    return want;
}

void engine_step(struct seq *s, uint64_t now)
{
    uint32_t due = s->max_tokens;
    if (E.interval_ns && now >= s->t_base) {
        uint64_t k = s->k_base + (now - s->t_base) / E.interval_ns + 1;
        due = k < s->max_tokens ? (uint32_t)k : s->max_tokens;
    } else if (E.interval_ns) {
        due = s->generated;
    }
    uint32_t want = due > s->generated ? due - s->generated : 0;
    if (want && E.cfg->kv_capacity) {
        want = kv_room(s, want);
        if (s->state != SEQ_RUNNING)
            return;
    }
    if (want) {
        uint32_t n = s->stream ? server_emit(s, want) : want;
        s->generated += n;
        s->kv_held += n;
        E.st.kv_used += n;
        E.st.generation_tokens += n;
        if (n < want) {
            s->write_blocked = true;
            return;
        }
    }
    if (s->generated >= s->max_tokens) {
        complete(s, now);
        return;
    }
    /* Without a KV cache to fill token by token, a non-streamed answer only needs
     * waking when its last token is due. */
    uint32_t next = s->generated;
    if (!s->stream && !E.cfg->kv_capacity)
        next = s->max_tokens - 1;
    s->deadline = s->t_base + (uint64_t)(next - s->k_base) * E.interval_ns;
    heap_push(s);
}

void engine_abort(struct seq *s, uint64_t now)
{
    if (s->state == SEQ_WAITING) {
        list_unlink(&E.waiting, s);
        E.st.waiting--;
    } else if (s->state == SEQ_RUNNING) {
        list_unlink(&E.running, s);
        E.st.running--;
        kv_release(s);
        heap_remove(s);
    }
    E.st.aborted++;
    seq_free(s);
    schedule(now);
}

void engine_unblock(struct seq *s)
{
    if (!s->write_blocked || s->state != SEQ_RUNNING)
        return;
    s->write_blocked = false;
    s->deadline = 0;
    heap_push(s);
}

const struct engine_stats *engine_stats(void)
{
    return &E.st;
}

void engine_note_prefix(uint64_t queried_tokens, uint64_t hit_tokens)
{
    E.st.prefix_queries += queried_tokens;
    E.st.prefix_hits += hit_tokens;
}
