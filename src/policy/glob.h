/* Model-name globs ("llama-3.1-8b*", "qwen*"), compiled from a comma-separated
 * list at configuration time and matched per request.
 *
 * A pattern is case-sensitive bytes (model names are ids): '*' matches any run
 * of bytes, the empty one included; '?' matches exactly one byte; every other
 * byte, '[' and '\\' included, is literal. A pattern is 1 to GLOB_PATTERN_MAX
 * bytes with no control characters (below 0x20, or 0x7f) and no spaces.
 *
 * Pure: matching never allocates, and costs at most O(pattern length × name
 * length) byte comparisons, independent of how many '*' a pattern has (no
 * exponential backtracking). Patterns without a wildcard are compared as exact
 * names first. */
#ifndef AIGW_POLICY_GLOB_H
#define AIGW_POLICY_GLOB_H

#include <stdbool.h>
#include <stddef.h>

#define GLOB_PATTERN_MAX 256

struct glob_list;

/* Compiles "pat, pat, ...": spaces and tabs around each item are ignored; an
 * empty item (",a", "a,,b", "a,") is an error. Text that is empty or only spaces
 * compiles to *out = NULL, which by convention means "any model": the matcher
 * treats a NULL list as matching everything, and a caller that wants an empty
 * list to be an error checks the text itself.
 * Returns 0, or -1 with *why set to a static one-line message (out of memory
 * included) and *out untouched. */
int glob_list_compile(const char *text, struct glob_list **out, const char **why);
/* The same over text that need not be NUL-terminated. */
int glob_list_compile_n(const char *text, size_t len, struct glob_list **out, const char **why);
void glob_list_free(struct glob_list *l);

/* Whether the name s (n bytes, need not be NUL-terminated) matches any pattern
 * of the list. A NULL list matches every name. */
bool glob_list_match(const struct glob_list *l, const char *s, size_t n);

/* The patterns, in list order (NUL-terminated), e.g. for listing models. A
 * NULL list has none. */
unsigned glob_list_count(const struct glob_list *l);
const char *glob_list_pattern(const struct glob_list *l, unsigned i);
/* Whether pattern i has no wildcard, i.e. names exactly one model. */
bool glob_list_is_literal(const struct glob_list *l, unsigned i);

/* One pattern against one name, for callers holding a single pattern. The
 * pattern is not validated. */
bool glob_match(const char *pat, size_t plen, const char *s, size_t n);

#endif
