/*
 * test_util.h - small helpers shared by the CUnit programs that run real
 * sockets, threads and data directories: removing a directory tree, a free
 * TCP port on a loopback address, a monotonic clock in ms and a bounded
 * wait for a condition.
 *
 * Header only (static functions); include it after the system headers.
 */
#ifndef STARLING_TEST_UTIL_H
#define STARLING_TEST_UTIL_H

#include <arpa/inet.h>
#include <ftw.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static inline int test_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Remove dir and everything below it (errors ignored: best effort). */
static inline void test_rm_tree(const char *dir)
{
    nftw(dir, test_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A TCP port for a node a test starts on ip, or -1. Not bound-then-closed
 * port 0: that is an ephemeral port, which any connect() or bind(0) of
 * another process (the suites run in parallel) may be given before the node
 * binds it. As tests/ports.py does: a port outside the kernel's ephemeral
 * range (bind(0) and connect() never hand those out), reserved machine-wide
 * for this process by an abstract Unix socket named after it (the same name
 * space as ports.py; the kernel drops the name when the process ends), and
 * taken only if nothing is bound to it on ip. The reservation lasts as long
 * as the test program. */
static inline bool test_port_unbound_(const char *ip, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static inline int test_free_port(const char *ip)
{
    static unsigned cursor;
    int lo = 32768, hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2)
            lo = 32768, hi = 60999;
        fclose(f);
    }
    if (!cursor)
        cursor = (unsigned)getpid() * 7919u + (unsigned)time(NULL);
    for (unsigned tries = 0; tries < 65536u; tries++) {
        int port = 10000 + (int)(cursor++ % 55536u);
        if ((port >= lo && port <= hi) || port == 18083)
            continue;
        int u = socket(AF_UNIX, SOCK_STREAM, 0);
        if (u < 0)
            return -1;
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        int n = snprintf(un.sun_path + 1, sizeof un.sun_path - 1, "starling-test-port-%d", port);
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
        if (bind(u, (struct sockaddr *)&un, len) != 0 || !test_port_unbound_(ip, port)) {
            close(u);
            continue;
        }
        return port; /* u stays open: the reservation */
    }
    return -1;
}

static inline uint64_t test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Poll cond (a cheap read, e.g. of atomics) every 10 ms until it holds or
 * timeout_ms pass; evaluates to whether it held. */
#define WAIT_UNTIL(cond, timeout_ms)                                                               \
    ({                                                                                             \
        uint64_t deadline_ = test_now_ms() + (timeout_ms);                                         \
        bool ok_;                                                                                  \
        while (!(ok_ = (cond)) && test_now_ms() < deadline_) {                                     \
            struct timespec ts_ = {0, 10 * 1000 * 1000};                                           \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
        ok_;                                                                                       \
    })

#endif
