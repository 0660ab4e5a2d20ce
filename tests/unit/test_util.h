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
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
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

/* A free TCP port on ip (bound then released; the kernel does not hand it
 * out again at once), or -1. */
static inline int test_free_port(const char *ip)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
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
