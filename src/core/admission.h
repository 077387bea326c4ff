/* Admission: who is calling and what they may do. The caller's API key (from the
 * keys file the config loaded), the models it may use, and its tier's rate limits
 * and daily quota: tokens reserved when a request is admitted and settled against
 * the real usage (usage.h) when it ends.
 *
 * State: each generation holds one rl_global per key (shared by the shards,
 * lock-free) and one rl_local per key per shard; a new generation inherits the
 * bucket levels and the day's quota of the keys it shares with the one before
 * (by NAME). Requests of an older generation still settle against its globals:
 * what they give back after a reload is lost, which errs on the strict side. */
#ifndef AIGW_CORE_ADMISSION_H
#define AIGW_CORE_ADMISSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/ratelimit.h"

struct gen;
struct conn;
struct http_request;
struct key_entry;
struct openai_request;
struct xbuf;

/* Completion tokens reserved for a request that names no max_tokens when its
 * tier sets no max_tokens either. */
#define ADMISSION_DEFAULT_COMPLETION 1024

/* Builds g's key state from g->cfg (keys and tiers); prev (may be NULL) is the
 * generation it replaces. 0, or -1 with err set. Control plane. */
int admission_gen_init(struct gen *g, const struct gen *prev, char *err, size_t errlen);
void admission_gen_free(struct gen *g);
/* Cluster mode: moves a key's host pools (stock and debts) from old to neu, and
 * the store's view. Used at reload, and by the limits sync thread for what
 * reached the old generation's pools after that. left (may be NULL) gets, per
 * enum rl_dim, what neu could not take (stock beyond its smaller pool, or a
 * dimension it no longer limits; a debt as a negative count), for the sync
 * thread to give back to the store; without it that is lost. */
void admission_move_stock(struct rl_global *neu, struct rl_global *old, int64_t today,
                          int64_t left[RL_DIMS]);

/* A generation's keys by NAME (control plane: built once, looked up many times,
 * e.g. by the limits sync thread when it moves to a new generation). */
struct key_name_index;
/* NULL when g has no keys or memory ran out (then every lookup finds nothing). */
struct key_name_index *admission_name_index_new(const struct gen *g);
/* The key's index in g's keyring (and rl_global), or -1. */
int admission_name_index_find(const struct key_name_index *ix, const char *name);
void admission_name_index_free(struct key_name_index *ix);
/* What the access log's limit field says of the request's admission: the limit
 * that fired, prefixed with "redis_down:local:" when decided under
 * on_redis_down = local; "redis_down:local", "redis_down:allow" or
 * "redis_down:deny" for a decision Redis being down made; NULL otherwise. */
const char *admission_limit_label(const struct conn *c);

enum auth_result { AUTH_OK, AUTH_MISSING, AUTH_INVALID, AUTH_CONFLICT };

/* Finds the caller's key in the request head (Authorization: Bearer, or
 * x-api-key) and sets c->req.key. With auth = required, a request without a known
 * key is refused (AUTH_MISSING / AUTH_INVALID: the caller answers 401); with
 * auth off it passes as anonymous. Whenever aigw reads keys, duplicate or
 * conflicting credentials (key_from_request) are AUTH_CONFLICT: the caller
 * answers 400. */
enum auth_result admission_authenticate(struct conn *c, const struct http_request *req);

/* The caller's key, NULL for an anonymous caller. */
const struct key_entry *admission_caller(const struct conn *c);

/* Whether the caller may use model[0, len) (true without a key). */
bool admission_model_allowed(const struct conn *c, const char *model, size_t len);

/* The tier's cap on max_tokens that the request exceeds, or 0 when it does not. */
uint64_t admission_max_tokens_exceeded(const struct conn *c, const struct openai_request *ai);

/* The tokens a request reserves: its prompt estimate plus its max_tokens, or
 * the tier's max_tokens when it asks none, or ADMISSION_DEFAULT_COMPLETION. */
uint64_t admission_reservation(const struct conn *c, const struct openai_request *ai);
/* What the same tokens cost at worst at the request's model's [model] prices
 * (prompt estimate at the input price, the completion allowance at the output
 * price), in micro-USD rounded up; 0 for a model without prices. */
uint64_t admission_spend_reservation(const struct conn *c, const struct openai_request *ai);

/* Reserves the request's tokens (prompt estimate + max_tokens, see
 * ADMISSION_DEFAULT_COMPLETION), their worst-case cost against the tier's
 * daily_spend, and one request against the caller's limits.
 * Returns true when admitted (or when the caller has no limits); false with
 * *out telling which limit fired and when to retry. Counts a refusal in
 * aigw_ratelimited_total. */
bool admission_admit(struct conn *c, const struct openai_request *ai, struct rl_verdict *out);

/* The x-ratelimit-* header lines for the caller's limits (none without limits).
 * buf must hold RL_HEADERS_MAX. Returns the bytes written. */
size_t admission_headers(const struct conn *c, char *buf, size_t cap);

/* Settles the request's reservation (if it holds one) against the tokens it
 * used and what they cost (pico-USD, charged in micro-USD rounded up): what it
 * did not use goes back; more is taken without a check, down to an empty
 * bucket, or over the day's quota and spend cap (see rl_settle_priced). */
void admission_settle(struct conn *c, uint64_t used_tokens, uint64_t cost_pusd);

#endif
