/* Text into a JSON string, always valid JSON whatever the bytes were. */
#ifndef AIGW_UTIL_JSON_ESCAPE_H
#define AIGW_UTIL_JSON_ESCAPE_H

#include <stdbool.h>
#include <stddef.h>

#include "util/outbuf.h"

enum json_escape_style {
    /* \n \r \t \b \f as JSON's two-byte escapes, other C0 controls as \u00XX,
     * DEL as it is: the shortest output (error bodies). */
    JSON_ESCAPE_SHORT_FORMS,
    /* every C0 control and DEL as \u00XX: what lands in a log file shows no raw
     * control byte, and one spelling per byte is easy to grep. */
    JSON_ESCAPE_ALL_CONTROLS,
};

/* Appends s[0..n) as the contents of a JSON string (no quotes): quote and
 * backslash escaped, control bytes as the style says, well-formed UTF-8 as it
 * is, every byte of a malformed sequence as \ufffd. At most max_out bytes are
 * appended: the text is cut before the first escape or character that would
 * pass that (a run of ASCII anywhere), and false returned. */
bool json_escape(struct outbuf *o, const char *s, size_t n, size_t max_out,
                 enum json_escape_style style);

#endif
