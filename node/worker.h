/*
 * worker.h - a worker thread: its own libuv loop, its listener (SO_REUSEPORT),
 * its connections, and an inbox through which other threads hand it work.
 *
 * Only the worker's own thread touches its loop, its connections and their
 * libuv handles. Other threads call worker_post_*, which append a command to
 * the inbox and wake the loop once per batch (uv_async_send coalesces).
 */
#ifndef STARLING_WORKER_H
#define STARLING_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "buf.h"
#include "metric.h"

struct broker;
struct conn;
struct session;

struct wcmd;

/* One client PUBLISH in WORKER_DELIVERY_SAMPLE is timed from its decoding
 * to its deliveries (a clock read costs ~70 ns on a virtual machine: every
 * message would be measurable). */
#define WORKER_DELIVERY_SAMPLE 16

/* What a worker counts for /metrics (metric.h): written by the worker's
 * thread only, summed by the admin thread (server_metrics). */
struct worker_metrics {
    metric_counter msgs_in[3];     /* PUBLISH packets from clients, by QoS */
    metric_counter bytes_in[3];    /* their topic and payload bytes */
    metric_counter msgs_out[3];    /* PUBLISH packets to clients, by QoS (as sent) */
    metric_counter bytes_out[3];   /* their topic and payload bytes */
    metric_counter no_subscribers; /* client publishes that matched nobody */
    /* decode of a sampled client PUBLISH to its encoding for a subscriber */
    struct metric_hist delivery;
    uint32_t sample; /* publishes decoded, for the sampling */
};

struct worker {
    int id;
    struct broker *b;
    uv_loop_t loop;
    /* one listener per transport (enum config_xport), when configured */
    uv_tcp_t listeners[4];
    bool listening[4];
    uv_async_t wake;
    uv_timer_t tick;
    uv_check_t flush_check;
    /* calls at the end of this loop turn (sink_ops.at_turn_end); the idle
     * handle runs while there are any, so that the loop does not sleep
     * before the check phase makes them */
    uv_idle_t turn_idle;
    struct {
        void (*fn)(void *ud);
        void *ud;
    } turn_end[4];
    unsigned n_turn_end;
    bool turn_end_ok; /* the check phase still runs */
    pthread_t thread;
    bool started;
    bool stopping;

    pthread_mutex_t inbox_lock;
    struct wcmd *inbox_head, *inbox_tail;
    bool inbox_closed;
    /* A command could not be allocated (out of memory): at the end of its
     * next loop turn the worker flushes every session it owns, closes the
     * connections that lost an acknowledgement (conn.ack_lost) or whose
     * session was taken over (a lost kick); a lost stop is seen on the
     * wake-up (broker.stopping). Set by any thread, which then wakes the
     * loop (no allocation needed). */
    atomic_bool rescan;
    /* conn_accept could not allocate a connection: libuv stops watching the
     * listener until the pending one is accepted, so the tick retries it */
    unsigned accept_retry; /* bit per listener kind: accept again on the next tick */
    /* Accepts are bounded per loop turn (WORKER_ACCEPTS_PER_TURN): past
     * the bound, a listener's pending connection is left to libuv (which
     * then stops watching that listener) and accepted at the end of the
     * turn, so a connection flood waits in the kernel's backlog while the
     * connections already open are served every turn. */
    unsigned accepts;         /* this turn's */
    unsigned accept_deferred; /* bit per listener kind: accept at the end of the turn */

    /* connections of this worker (doubly linked) */
    struct conn *conns;
    size_t n_conns;
    /* connections with output to write at the end of this loop turn */
    struct conn *dirty;
    /* sessions to flush at the end of this loop turn */
    struct session **flush;
    size_t n_flush, cap_flush;

    /* publishers paused by flow control (conn_flow.c), each referenced */
    struct conn **paused;
    size_t n_paused, cap_paused;
    atomic_bool flow_posted; /* a flow check waits in the inbox */

    /* shared read buffer for all connections of this worker */
    char *rbuf;
    size_t rbuf_size;

    /* calls when the worker stops (worker_on_stop), before its loop ends */
    struct worker_hook {
        void (*fn)(void *ud);
        void *ud;
    } * stop_hooks;
    size_t n_stop_hooks, cap_stop_hooks;

    /* Last and on cache lines of their own: other threads write the inbox
     * and flow fields above, only this worker writes these. */
    _Alignas(64) struct worker_metrics metrics;
};

/* Workers' metrics added up: plain numbers. */
struct worker_metrics_sum {
    uint64_t msgs_in[3], bytes_in[3], msgs_out[3], bytes_out[3], no_subscribers;
    struct metric_hist_snap delivery;
};
/* Add w's metrics into *acc. Any thread, while w exists. */
void worker_metrics_add(struct worker *w, struct worker_metrics_sum *acc);

struct worker *worker_new(struct broker *b, int id);
/* Whether addr:port can be bound by a socket without SO_REUSEPORT: fails
 * (UV_EADDRINUSE) while anything listens there, including another process's
 * SO_REUSEPORT group, which the workers' listeners would otherwise join and
 * silently share connections with. Returns 0 or a negative libuv error. */
int worker_port_free(const char *addr, uint16_t port);
/* Bind the listener of transport xport (enum config_xport; SO_REUSEPORT).
 * Returns 0 or a negative libuv error. */
int worker_listen(struct worker *w, int xport, const char *addr, uint16_t port);
int worker_start(struct worker *w);
void worker_join(struct worker *w);
void worker_free(struct worker *w);

/* Ask w to flush session s (from any thread; takes a session reference). */
void worker_post_flush(struct worker *w, struct session *s);
/* Ask w to close connection c with a reason (session taken over, ...).
 * `resumed`: the session continues on another connection. Takes a conn
 * reference. Any thread. */
void worker_post_kick(struct worker *w, struct conn *c, uint8_t reason, bool resumed);
/* Tell w that the store committed (status 0) or failed the batch behind
 * acknowledgement `token` of connection c. Takes a conn reference. Any
 * thread (the store's writer thread in practice). */
void worker_post_ack(struct worker *w, struct conn *c, uint32_t token, int status);
/* Run fn(ud) on w's thread. Returns 0, or -ENOMEM / -ESHUTDOWN (w is
 * stopping) when fn will not run. Any thread. */
int worker_post_call(struct worker *w, void (*fn)(void *ud), void *ud);
/* Flush s on owner's thread: deferred to the end of the turn when owner is
 * cur (the calling worker), posted otherwise. Any thread (sink_ops.wake). */
void worker_wake_session(struct worker *owner, struct session *s, struct worker *cur);
/* Have w re-check its paused publishers (conn_flow_check) through its
 * inbox; coalesced. Any thread. */
void worker_post_flow(struct worker *w);
/* sink_ops.drained: a flow check on each worker of `waiters` (bit id % 64).
 * Any thread. */
void worker_sink_drained(struct broker *b, uint64_t waiters);
/* Ask w to close all its connections and stop its loop. Any thread. */
void worker_post_stop(struct worker *w);

/* On w's own thread: remember s for flushing at the end of this turn. */
void worker_defer_flush(struct worker *w, struct session *s);
/* On w's own thread: write c's pending output at the end of this turn. */
void worker_mark_dirty(struct worker *w, struct conn *c);
/* sink_ops.at_turn_end: on the calling thread's worker, if any. */
bool worker_at_turn_end(void (*fn)(void *ud), void *ud);

/* On w's own thread: call fn(ud) when w stops (its connections close), on
 * its thread; what fn starts there (closing handles of w's loop) completes
 * before the loop ends. 0 or -ENOMEM. worker_on_stop_forget takes it back
 * (by ud). */
int worker_on_stop(struct worker *w, void (*fn)(void *ud), void *ud);
void worker_on_stop_forget(struct worker *w, void *ud);

/* On w's own thread: a connection was freed; when the worker is stopping and
 * it was the last one, the worker closes its inbox and its loop ends. */
void worker_conn_gone(struct worker *w);

#endif
