/* vsock applets: vsockecho (listen on AF_VSOCK, echo each connection) and vsockcat (connect
 * to a CID and port, send TEXT or stdin, print what comes back). For testing hv's
 * virtio-vsock device with Linux's own driver (vmw_vsock_virtio_transport). */
#include "hv.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

struct vsock_addr { /* struct sockaddr_vm (linux/vm_sockets.h) */
    unsigned short family;
    unsigned short reserved1;
    unsigned int port;
    unsigned int cid;
    unsigned char flags;
    unsigned char zero[3];
};

static struct vsock_addr vsock_addr(unsigned int cid, unsigned int port)
{
    struct vsock_addr a;
    memset(&a, 0, sizeof a);
    a.family = AF_VSOCK;
    a.port = port;
    a.cid = cid;
    return a;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void echo_connection(int fd)
{
    static char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(fd, buf, (size_t)n) < 0)
            break;
    }
    close(fd);
}

/* vsockecho PORT: accept connections one after another and echo each until its EOF. */
int ap_vsockecho(int argc, char **argv)
{
    if (argc != 2)
        return usage_error(argv[0]);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) {
        errorf("vsockecho: socket(AF_VSOCK): %s", strerror(errno));
        return 1;
    }
    struct vsock_addr a = vsock_addr(0xFFFFFFFFu /* VMADDR_CID_ANY */, (unsigned)atol(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        errorf("vsockecho: bind/listen port %s: %s", argv[1], strerror(errno));
        return 1;
    }
    printf("vsockecho: listening on port %s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            errorf("vsockecho: accept: %s", strerror(errno));
            return 1;
        }
        echo_connection(c);
    }
}

/* vsockcat CID PORT [TEXT]: connect; send TEXT (or stdin), shut the sending side, print
 * everything the peer sends until its EOF. */
int ap_vsockcat(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return usage_error(argv[0]);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) {
        errorf("vsockcat: socket(AF_VSOCK): %s", strerror(errno));
        return 1;
    }
    struct vsock_addr a = vsock_addr((unsigned)atol(argv[1]), (unsigned)atol(argv[2]));
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        errorf("vsockcat: connect %s:%s: %s", argv[1], argv[2], strerror(errno));
        return 1;
    }
    static char buf[65536];
    int in_open = 1;
    if (argc == 4) {
        if (write_all(s, argv[3], strlen(argv[3])) < 0) {
            errorf("vsockcat: write: %s", strerror(errno));
            return 1;
        }
        shutdown(s, SHUT_WR);
        in_open = 0;
    }
    for (;;) {
        struct pollfd p[2] = {{s, POLLIN, 0}, {0, POLLIN, 0}};
        if (poll(p, in_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (in_open && p[1].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0) {
                shutdown(s, SHUT_WR);
                in_open = 0;
            } else if (write_all(s, buf, (size_t)n) < 0) {
                return 1;
            }
        }
        if (p[0].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                errorf("vsockcat: read: %s", strerror(errno));
                return 1;
            }
            if (n == 0)
                break;
            if (write_all(1, buf, (size_t)n) < 0)
                return 1;
        }
    }
    close(s);
    return 0;
}
