/*
 * tcp_bounds.c - see tcp_bounds.h.
 */
#include "tcp_bounds.h"
#include "log.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int tcp_bounds_set(uv_tcp_t *tcp, bool dialing, const char *who)
{
    uv_os_fd_t fd;
    unsigned timeout = TCP_BOUNDS_USER_TIMEOUT_MS;
    int syn = TCP_BOUNDS_SYN_RETRIES;
    int r = uv_fileno((uv_handle_t *)tcp, &fd);
    if (r == 0 && (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof timeout) != 0 ||
                   (dialing && setsockopt(fd, IPPROTO_TCP, TCP_SYNCNT, &syn, sizeof syn) != 0)))
        r = -errno;
    if (r != 0)
        log_warn("%s: cannot bound a connection's silence (TCP_USER_TIMEOUT, TCP_SYNCNT): %s: "
                 "a cut link may stay silent for minutes after it heals",
                 who, uv_strerror(r));
    return r;
}
