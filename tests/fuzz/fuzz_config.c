/* libFuzzer target: the configuration loader. Any input either loads (and frees)
 * or fails with an error that starts with "FILE:" and is one line. Host names in
 * addresses would send the fuzzer to DNS, so getaddrinfo is replaced here by one
 * that only understands numeric addresses. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    (void)hints;
    struct in_addr a4;
    if (!node || inet_pton(AF_INET, node, &a4) != 1)
        return EAI_NONAME;
    struct addrinfo *ai = calloc(1, sizeof *ai + sizeof(struct sockaddr_in));
    if (!ai)
        return EAI_MEMORY;
    struct sockaddr_in *sin = (struct sockaddr_in *)(ai + 1);
    sin->sin_family = AF_INET;
    sin->sin_addr = a4;
    sin->sin_port = htons((uint16_t)(service ? atoi(service) : 0));
    ai->ai_family = AF_INET;
    ai->ai_socktype = SOCK_STREAM;
    ai->ai_addr = (struct sockaddr *)sin;
    ai->ai_addrlen = sizeof *sin;
    *res = ai;
    return 0;
}

void freeaddrinfo(struct addrinfo *res)
{
    free(res);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    struct config *cfg = NULL;
    char err[1024] = "";
    if (config_load_string("fuzz.conf", text, &cfg, err, sizeof err) == 0) {
        /* aigw -T prints whatever loaded */
        static FILE *devnull;
        if (!devnull)
            devnull = fopen("/dev/null", "w");
        if (devnull)
            config_print(cfg, devnull);
        config_free(cfg);
    } else {
        /* every error names the file (and line) on one line; a keys file's
         * errors name that file instead */
        if ((strncmp(err, "fuzz.conf:", 10) != 0 && !strstr(text, "file")) || strchr(err, '\n') ||
            !err[0])
            abort();
    }
    free(text);
    return 0;
}
