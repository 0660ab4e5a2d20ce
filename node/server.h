/*
 * server.h - running a broker on the network: the worker threads with their
 * listeners, the main thread's loop (signals, the housekeeping timer that
 * expires sessions and publishes delayed wills, the $SYS timer), and the
 * network layer's sink installed on the broker (sink.h).
 *
 * Main thread only: broker_init, (persist_open), server_run, server_cleanup,
 * broker_cleanup, in that order.
 */
#ifndef STARLING_SERVER_H
#define STARLING_SERVER_H

#include <stdatomic.h>

#include <uv.h>

struct broker;
struct worker;

/* The network side of a broker (b->server). */
struct server {
    int n_workers;
    struct worker **workers;
    uv_loop_t *loop; /* the main thread's loop: signals, housekeeping */
    uv_signal_t sigint, sigterm;
    uv_timer_t housekeeping;
    uv_timer_t sys_timer;
    atomic_long connections; /* open TCP connections, all workers */
};

/* Install the sink, start workers and listeners, run until SIGINT/SIGTERM
 * stopped every worker. Returns 0 or a negative errno when the listeners
 * cannot be set up. */
int server_run(struct broker *b);
/* Commit what the store has pending, then free the workers (after
 * server_run returned, before broker_cleanup). */
void server_cleanup(struct broker *b);

#endif
