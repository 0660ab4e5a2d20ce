/*
 * hoptrace.h - per-hop timestamps of the latency bench's messages
 * (measurement only: compiled in with -DSTARLING_HOPTRACE=ON, a build of
 * its own; empty otherwise).
 *
 * The bench's payload starts with publisher (u32), sequence number (u32)
 * and its CLOCK_MONOTONIC send time (u64, ns): each hop records (hop, seq,
 * now, send time) in a process-wide array, written at exit as text to
 * $HOPTRACE_DIR/hops.<pid> (nothing is recorded without the variable;
 * not STARLING_*, which the configuration takes for its keys).
 * Hops where the payload is not at hand (a socket written) stamp the
 * sequence numbers this thread left pending for them.
 */
#ifndef STARLING_HOPTRACE_H
#define STARLING_HOPTRACE_H

#include <stddef.h>
#include <stdint.h>

enum hop {
    HOP_READ = 1,     /* the client's socket read (the read callback's start) */
    HOP_DECODED,      /* the PUBLISH handled (handle_publish_deliver) */
    HOP_CHAN_QUEUED,  /* its forward queued on the channel */
    HOP_CHAN_WRITTEN, /* the forward written by the worker (chan_flush_here) */
    HOP_CHAN_LOOP,    /* the forward left to the channel's loop to write */
    HOP_CHAN_READ,    /* the receiving node's read of the channel (read callback's start) */
    HOP_FWD,          /* cluster_fwd_on_publish entered (decoded) */
    HOP_DELIVERED,    /* queued on the session and its worker woken (deliver's end) */
    HOP_WORKER_TURN,  /* the subscriber's worker: its wake-up (or check) callback's start */
    HOP_ENCODED,      /* the PUBLISH encoded into the subscriber's connection */
    HOP_SOCK_WRITTEN, /* the subscriber's socket written */
    HOP_BENCH_RECV,   /* the bench's subscriber read it (bench/starling_bench.c) */
    HOP_CHAN_FLUSH,   /* chan_flush_here entered with the forward queued */
    HOP_N
};

#ifdef STARLING_HOPTRACE
void hoptrace_payload(int hop, const void *payload, size_t len, uint64_t t);
void hoptrace_pend(int hop, const void *payload, size_t len);
void hoptrace_stamp(int hop);
void hoptrace_stamp_as(int hop, int as);
void hoptrace_stamp_keep(int hop, int as); /* as stamp_as, the pending ones kept */
void hoptrace_drop(int hop);
void hoptrace_mark(int hop); /* thread-local time of this hop, for hoptrace_payload_at */
uint64_t hoptrace_marked(int hop);
uint64_t hoptrace_now(void);
#define HOPTRACE_PAYLOAD(hop, p, n) hoptrace_payload((hop), (p), (n), 0)
#define HOPTRACE_PAYLOAD_AT(hop, p, n, mk) hoptrace_payload((hop), (p), (n), hoptrace_marked(mk))
#define HOPTRACE_PEND(hop, p, n) hoptrace_pend((hop), (p), (n))
#define HOPTRACE_STAMP(hop) hoptrace_stamp(hop)
#define HOPTRACE_STAMP_AS(hop, as) hoptrace_stamp_as((hop), (as))
#define HOPTRACE_STAMP_KEEP(hop, as) hoptrace_stamp_keep((hop), (as))
#define HOPTRACE_DROP(hop) hoptrace_drop(hop)
#define HOPTRACE_MARK(hop) hoptrace_mark(hop)
#else
#define HOPTRACE_PAYLOAD(hop, p, n) ((void)0)
#define HOPTRACE_PAYLOAD_AT(hop, p, n, mk) ((void)0)
#define HOPTRACE_PEND(hop, p, n) ((void)0)
#define HOPTRACE_STAMP(hop) ((void)0)
#define HOPTRACE_STAMP_AS(hop, as) ((void)0)
#define HOPTRACE_STAMP_KEEP(hop, as) ((void)0)
#define HOPTRACE_DROP(hop) ((void)0)
#define HOPTRACE_MARK(hop) ((void)0)
#endif

#endif
