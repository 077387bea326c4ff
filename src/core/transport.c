/* The plaintext transport: the socket's bytes are the HTTP stream. */
#include "core/transport.h"

#include "core/buf.h"
#include "core/conn.h"
#include "core/ring.h"
#include "core/shard.h"

static void plain_received(struct conn *c, const char *p, size_t n, transport_deliver_fn *deliver)
{
    deliver(c, p, n);
}

static void plain_send(struct conn *c, struct xbuf *owner, const char *p, size_t n)
{
    struct io_uring_sqe *sqe = shard_sqe(c->sh);
    io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, ud_make(c, OP_CLIENT_SEND));
    c->send_inflight = true;
    c->send_buf = owner;
    c->ops++;
}

const struct transport_ops transport_plain = {
    .name = "plain",
    .zero_copy = true,
    .received = plain_received,
    .send = plain_send,
};
