#include "util/file_replace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

int file_replace(const char *path, const char *text, size_t len, mode_t mode, uid_t uid, gid_t gid,
                 char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    char dir[PATH_MAX], tmp[PATH_MAX];
    int dn = slash ? snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path)
                   : snprintf(dir, sizeof dir, ".");
    int tn = snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, slash ? slash + 1 : path, (long)getpid());
    if (dn < 0 || (size_t)dn >= sizeof dir || tn < 0 || (size_t)tn >= sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode & 07777);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    const char *failed = NULL;
    /* open's mode is filtered by the umask; the file must end up with mode itself */
    if (fchmod(fd, mode & 07777) != 0)
        failed = "setting the mode of";
    else if ((uid != (uid_t)-1 || gid != (gid_t)-1) && fchown(fd, uid, gid) != 0)
        failed = "setting the owner of";
    else if (!write_all(fd, text, len))
        failed = "writing";
    else if (fsync(fd) != 0)
        failed = "syncing";
    int saved_errno = errno;
    if (close(fd) != 0 && !failed) {
        failed = "closing";
        saved_errno = errno;
    }
    if (!failed && rename(tmp, path) != 0) {
        failed = "renaming";
        saved_errno = errno;
    }
    if (failed) {
        snprintf(err, errlen, "%s %s: %s", failed, tmp, strerror(saved_errno));
        unlink(tmp);
        return -1;
    }
    /* the rename itself is durable only once the directory is */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "syncing the directory %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
}
