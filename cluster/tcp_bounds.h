/*
 * tcp_bounds.h - how long a connection between two nodes (the forwarding
 * channel's, and Raft's) may stay silent across a cut link before the
 * kernel gives it up.
 *
 * A cut link drops packets without refusing them: what a node wrote stays
 * unacknowledged, and TCP sends it again with a backoff that doubles up to
 * two minutes. After a cut of half a minute or more the link stayed silent
 * for up to a minute once it had healed: the data written into the cut,
 * and all after it, waited for the next retransmission (chaos seed 11101
 * with --hold 15,60 on the channel; a cut that drops packets on arrival,
 * nft's input hook, kept a node's Raft silent 26 s after a 27 s cut
 * healed: test_faults.py::test_a_long_cut_heals_within_seconds[input]).
 */
#ifndef STARLING_TCP_BOUNDS_H
#define STARLING_TCP_BOUNDS_H

#include <stdbool.h>

#include <uv.h>

/* TCP_USER_TIMEOUT: the kernel gives up on a connection whose data stays
 * unacknowledged (or unsent behind a zero window) this long; the
 * connection fails (ETIMEDOUT), it is dialled again, and the layers above
 * send again what was not acknowledged. Longer than a SIGSTOP of 10 s (the
 * stalled peer of issue 10, whose kernel acknowledges what fits in its
 * buffer and then holds the window at zero), so that a stalled peer keeps
 * its connection and the order of what it was sent. */
#define TCP_BOUNDS_USER_TIMEOUT_MS 20000
/* A dial into a cut: SYNs at 0, 1 and 3 s, given up at 7 s (ETIMEDOUT) and
 * dialled again by its owner, so that a dial waits at most a few seconds
 * once the link heals. The kernel's default is six retries (127 s). */
#define TCP_BOUNDS_SYN_RETRIES 2

/* Both bounds on tcp's socket (it must exist: bound, connecting or
 * accepted), the second only when `dialing`. 0, or a negative errno (a
 * libuv error), then also logged as a warning naming `who` (the kernel's
 * defaults stay). */
int tcp_bounds_set(uv_tcp_t *tcp, bool dialing, const char *who);

#endif
