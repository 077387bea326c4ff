/* Replacing a small file whole or not at all: a temporary file beside it,
 * written, fsynced and renamed over it, then its directory fsynced, so a crash
 * or a full disk leaves either the old file or the new one, never a torn one. */
#ifndef AIGW_UTIL_FILE_REPLACE_H
#define AIGW_UTIL_FILE_REPLACE_H

#include <stddef.h>
#include <sys/types.h>

/* Writes text as path. The file gets `mode`, and uid/gid unless they are -1
 * (a root operator rewriting a file the service user reads keeps it readable).
 * 0, or -1 with "what PATH: why" in err; the temporary file is removed on
 * failure. */
int file_replace(const char *path, const char *text, size_t len, mode_t mode, uid_t uid, gid_t gid,
                 char *err, size_t errlen);

#endif
