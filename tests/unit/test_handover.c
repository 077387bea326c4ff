/* The successor's side of a handover: which inherited descriptors it adopts
 * (listening stream sockets, matched to a configured address by getsockname),
 * and that nothing is adopted without the ready pipe. */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/handover.h"

/* a loopback socket bound to a free port; listening if asked */
static int loopback_socket(bool listening, struct cfg_addr *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    if (listening)
        cr_assert_eq(listen(fd, 8), 0);
    socklen_t sl = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    memset(a, 0, sizeof *a);
    memcpy(&a->sa, &sin, sizeof sin);
    a->salen = sizeof sin;
    snprintf(a->text, sizeof a->text, "127.0.0.1:%d", ntohs(sin.sin_port));
    return fd;
}

Test(handover, adopts_only_listening_sockets_of_a_configured_address)
{
    struct cfg_addr la, lb, na;
    int l1 = loopback_socket(true, &la), l2 = dup(l1), other = loopback_socket(true, &lb);
    int idle = loopback_socket(false, &na);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    char list[2048], ready[32];
    snprintf(list, sizeof list, "%d=%s,%d=%s,%d=x,junk,%d=%s", l1, la.text, l2, la.text, idle, other, lb.text);
    snprintf(ready, sizeof ready, "%d", p[1]);
    setenv("AIGW_INHERIT_FDS", list, 1);
    setenv("AIGW_READY_FD", ready, 1);
    handover_inherit_load();
    cr_expect_null(getenv("AIGW_INHERIT_FDS"), "the list is not passed on to our own successor");
    cr_expect_null(getenv("AIGW_READY_FD"));
    cr_expect(handover_is_successor());

    /* both sockets of the address, each once; the unbound-listen one never */
    int a1 = handover_take(&la), a2 = handover_take(&la);
    cr_expect((a1 == l1 && a2 == l2) || (a1 == l2 && a2 == l1), "took %d and %d, want %d and %d", a1, a2, l1, l2);
    cr_expect_eq(handover_take(&la), -1);
    cr_expect_eq(handover_take(&na), -1, "a socket that is not listening was adopted");
    cr_expect_eq(fcntl(l1, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "an adopted socket must not leak into execs");

    /* a port of 0 in the file (any port) matches the address */
    struct cfg_addr any = lb;
    ((struct sockaddr_in *)&any.sa)->sin_port = 0;
    cr_expect_eq(handover_take(&any), other);

    handover_close_unadopted();
    cr_expect_geq(fcntl(idle, F_GETFD), 0, "a descriptor not in the adopted set is left alone");
    handover_ready();
    char buf[16] = "";
    cr_expect_eq(read(p[0], buf, sizeof buf - 1), 6);
    cr_expect_str_eq(buf, "ready\n");
    cr_expect_not(handover_is_successor());
}

Test(handover, without_the_ready_pipe_nothing_is_adopted)
{
    struct cfg_addr la;
    int l1 = loopback_socket(true, &la);
    char list[1024];
    snprintf(list, sizeof list, "%d=%s", l1, la.text);
    setenv("AIGW_INHERIT_FDS", list, 1);
    unsetenv("AIGW_READY_FD");
    handover_inherit_load();
    cr_expect_not(handover_is_successor());
    cr_expect_eq(handover_take(&la), -1);
    cr_expect_null(getenv("AIGW_INHERIT_FDS"));
}
