/* The shard's buffer and pipe pools (shard.c): fixed-size buffers for request
 * heads, response heads and the copy relay; pipe pairs for the splice relay.
 * Taken and returned on the shard's thread only, so the steady state allocates
 * nothing. */
#ifndef AIGW_CORE_BUF_H
#define AIGW_CORE_BUF_H

#include <stdbool.h>
#include <stdint.h>

struct shard;

/* A fixed-size buffer from the shard's pool (request heads, response heads, copy relay). */
struct xbuf {
    struct xbuf *next_free;
    uint32_t cap;               /* the shard's xbuf_size, or more for a rare oversized queue */
    uint32_t len;               /* bytes used from data[0] */
    uint32_t off;               /* bytes already consumed from the front */
    char data[];
};

struct pipe_pair {
    struct pipe_pair *next_free;
    int rd, wr;
};

struct xbuf *xbuf_get(struct shard *sh);
struct xbuf *xbuf_get_cap(struct shard *sh, uint32_t cap);
void xbuf_put(struct shard *sh, struct xbuf *b);
struct pipe_pair *pipe_get(struct shard *sh);
void pipe_put(struct shard *sh, struct pipe_pair *p, bool clean);

#endif
