#include "core/uring_probe.h"

#include <liburing.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

static bool try_setup(unsigned flags)
{
    struct io_uring ring;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    if (io_uring_queue_init_params(8, &ring, &p) != 0)
        return false;
    io_uring_queue_exit(&ring);
    return true;
}

static bool try_buf_ring(void)
{
    struct io_uring ring;
    if (io_uring_queue_init(8, &ring, 0) != 0)
        return false;
    void *mem = NULL;
    bool ok = false;
    if (posix_memalign(&mem, 4096, 4096) == 0) {
        struct io_uring_buf_reg reg = { .ring_addr = (unsigned long)mem, .ring_entries = 8, .bgid = 7 };
        ok = io_uring_register_buf_ring(&ring, &reg, 0) == 0;
        if (ok)
            io_uring_unregister_buf_ring(&ring, 7);
    }
    io_uring_queue_exit(&ring);
    free(mem);
    return ok;
}

static bool ktls_available(void)
{
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_available_ulp", "r");
    if (!f)
        return false;
    char line[256] = "";
    bool ok = fgets(line, sizeof line, f) && strstr(line, "tls");
    fclose(f);
    return ok;
}

void uring_probe_print(FILE *out)
{
    struct utsname u;
    if (uname(&u) == 0)
        fprintf(out, "kernel: %s %s\n", u.sysname, u.release);
    struct io_uring_probe *probe = io_uring_get_probe();
    if (!probe) {
        fprintf(out, "io_uring: not available\n");
        return;
    }
    struct { int op; const char *name; } ops[] = {
        { IORING_OP_ACCEPT, "accept" }, { IORING_OP_RECV, "recv" }, { IORING_OP_SEND, "send" },
        { IORING_OP_SPLICE, "splice" }, { IORING_OP_TEE, "tee" }, { IORING_OP_SOCKET, "socket" },
        { IORING_OP_SEND_ZC, "send_zc" }, { IORING_OP_POLL_ADD, "poll" },
    };
    fprintf(out, "io_uring ops:");
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        fprintf(out, " %s=%s", ops[i].name, io_uring_opcode_supported(probe, ops[i].op) ? "yes" : "no");
    fprintf(out, "\n");
    io_uring_free_probe(probe);
    fprintf(out, "io_uring setup: single_issuer+defer_taskrun=%s coop_taskrun=%s\n",
            try_setup(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) ? "yes" : "no",
            try_setup(IORING_SETUP_COOP_TASKRUN) ? "yes" : "no");
    /* multishot accept/recv have no opcode of their own; provided buffer rings
     * (kernel 5.19+) are their prerequisite here */
    fprintf(out, "io_uring buffers: provided_buffer_ring=%s\n", try_buf_ring() ? "yes" : "no");
    fprintf(out, "ktls: %s\n", ktls_available() ? "available in the kernel, not used (wolfSSL encrypts records in user space)"
                                         : "not available (wolfSSL encrypts records in user space)");
}
