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

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include "ws.h"

struct broker;
struct worker;

/* max_connection_rate: new connections of one address in one second. */
#define SERVER_RATE_SLOTS 4096
struct server_rate_slot {
    uint64_t key; /* hash of the address */
    uint64_t second;
    uint32_t count;
};

/* The network side of a broker (b->server). */
struct server {
    int n_workers;
    struct worker **workers;
    uv_loop_t *loop; /* the main thread's loop: signals, housekeeping */
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t housekeeping;
    uv_timer_t sys_timer;
    atomic_long connections;       /* open TCP connections, all workers */
    atomic_long listener_conns[4]; /* the same per listener (enum config_xport) */
    /* the WebSocket endpoint (ws, wss): path /mqtt, ws_origins */
    struct ws_config ws;
    char *origin_text; /* ws_origins, split in place */
    const char **origins;
    pthread_mutex_t rate_lock;
    struct server_rate_slot rate[SERVER_RATE_SLOTS];
};

/* Install the sink, start workers and listeners, run until SIGINT/SIGTERM
 * stopped every worker. Returns 0 or a negative errno when the listeners
 * cannot be set up. */
int server_run(struct broker *b);
/* Commit what the store has pending, then free the workers (after
 * server_run returned, before broker_cleanup). */
void server_cleanup(struct broker *b);

#endif
