/*
 * broker.h - the node: its shared state and the publish path.
 *
 * One struct broker per process. It owns the configuration, the worker
 * threads, the session table (client id -> session), the subscription index,
 * the retained store and the counters. Sessions and connections live on
 * workers (see worker.h, session.h, conn.h).
 *
 * Threads: main() calls broker_init, broker_run and broker_cleanup on the main
 * thread; broker_run returns after SIGINT/SIGTERM once every worker has
 * stopped. broker_publish may be called from any thread.
 */
#ifndef STARLING_BROKER_H
#define STARLING_BROKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "msg.h"
#include "retain.h"
#include "route.h"
#include "sub_index.h"

struct worker;
struct session;
struct store;
struct store_batch;

struct broker_stats {
    atomic_ulong clients_connected;
    atomic_ulong clients_maximum;
    atomic_ulong msgs_received;
    atomic_ulong msgs_sent;
    atomic_ulong bytes_received;
    atomic_ulong bytes_sent;
    atomic_ulong msgs_dropped;
};

struct broker {
    struct config cfg;
    int n_workers;
    struct worker **workers;
    uv_loop_t *loop; /* the main thread's loop: signals, housekeeping */
    uv_signal_t sigint, sigterm;
    uv_timer_t housekeeping;
    uv_timer_t sys_timer;
    atomic_bool stopping;
    atomic_long connections; /* open TCP connections */
    uint64_t started_at_ms;

    struct sub_index *index;
    /* The route interface: route_local_ops on a single node; the cluster
     * installs its own (before broker_run). */
    const struct route_ops *route_ops;
    void *route_ud;
    struct route_local route;
    struct retain_store *retained;
    struct broker_stats stats;
    struct store *store; /* NULL when persistence is off */

    /* Session table: client id -> session, guarded by sessions_lock.
     * Lock order: sessions_lock, then a session's lock, then the index. */
    pthread_mutex_t sessions_lock;
    struct session **buckets;
    size_t n_buckets;
    size_t n_sessions;
};

/* The process-wide broker. */
extern struct broker g_broker;

/* Set up everything but the threads. Returns 0 or a negative errno. */
int broker_init(struct broker *b, const struct config *cfg);
/* Start workers and listeners, run until stopped. Returns 0 or a negative
 * errno when the listeners cannot be set up. */
int broker_run(struct broker *b);
/* Free everything (after broker_run returned). */
void broker_cleanup(struct broker *b);

/*
 * Deliver m to every matching subscriber of this node (and, through the route
 * interface, of other nodes). `cur` is the calling worker (NULL for other
 * threads): deliveries to its own sessions are made directly, others go
 * through the owning worker's inbox. Returns the number of sessions that
 * receive it. The caller keeps its reference on m. Store operations (the
 * message for persistent sessions, a retained message) go into *bt, which the
 * caller submits; with bt NULL they are submitted here.
 */
/* Sessions a publish was delivered to (each holds a reference). */
struct pub_targets {
    struct session **v;
    size_t n, cap;
};

int broker_publish(struct broker *b, struct msg *m, struct worker *cur, struct store_batch **bt,
                   struct pub_targets *targets);

/* Set m->hold to `state` (MSG_READY or MSG_REJECTED) and have the sessions in
 * targets flush (their queues may wait on m); releases targets. Any thread;
 * cur is the calling worker or NULL. */
void broker_release(struct msg *m, int state, struct pub_targets *targets, struct worker *cur);

/* Publish a will message (expiry: its Message Expiry Interval in seconds,
 * 0 = none, counted from now). Any thread. */
void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur);

/* Session table (callers hold sessions_lock). */
struct session *broker_session_find(struct broker *b, const char *id, size_t len);
void broker_session_insert(struct broker *b, struct session *s);
void broker_session_remove(struct broker *b, struct session *s);

/* $SYS topics (sys.c): publish the current values now. */
void sys_publish(struct broker *b);

/* Monotonic milliseconds. */
uint64_t broker_now_ms(void);

#endif
