/*
 * broker.h - the node's engine: its shared state and the publish path.
 *
 * A struct broker owns the configuration, the subscription index, the
 * retained store, the session registry, the store and the counters. Nothing
 * here is global: several brokers can live in one process (the cluster tests
 * run nodes side by side). The network side (server.h: workers, listeners,
 * signals) runs a broker; the engine reaches connections and workers only
 * through the sink it installs (sink.h).
 *
 * Threads: main() calls broker_init, server_run, server_cleanup and
 * broker_cleanup on the main thread. broker_publish may be called from any
 * thread.
 */
#ifndef STARLING_BROKER_H
#define STARLING_BROKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "msg.h"
#include "registry.h"
#include "retain.h"
#include "route.h"
#include "sink.h"
#include "sub_index.h"

struct server;
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
    atomic_bool stopping;
    uint64_t started_at_ms;

    struct sub_index *index;
    /* The route interface: route_local_ops on a single node; the cluster
     * installs its own (before server_run). */
    const struct route_ops *route_ops;
    void *route_ud;
    struct route_local route;
    /* The session registry: the node's sessions (the table) and the
     * interface that claims, releases and expires them: registry_local_ops
     * (ud: this broker) unless the cluster installs its own. */
    struct registry registry;
    const struct registry_ops *registry_ops;
    void *registry_ud;
    /* How the engine reaches connections and workers (server_run installs
     * the network layer's). */
    const struct sink_ops *sink;
    struct retain_store *retained;
    struct broker_stats stats;
    struct store *store; /* NULL when persistence is off */

    /* The network side (server.h), while server_run runs; opaque here. */
    struct server *server;
};

/* Set up the engine (no threads, no sockets). Returns 0 or a negative errno. */
int broker_init(struct broker *b, const struct config *cfg);
/* Free the engine (after server_cleanup): ends every session in memory
 * (they stay in the store). */
void broker_cleanup(struct broker *b);

/* Sessions a publish was delivered to (each holds a reference). */
struct pub_targets {
    struct session **v;
    size_t n, cap;
};

/* broker_publish flags. */
enum {
    /* Deliver to this node's subscribers only: a message another node
     * forwarded. The route seam is not asked, and a retained message is not
     * stored again (the node it came from did). */
    BROKER_PUB_LOCAL = 1u << 0,
};

/*
 * Deliver m to every matching subscriber of this node (and, unless
 * BROKER_PUB_LOCAL, learn from the route interface which other nodes have
 * one). `cur` is the calling worker (NULL for other threads): deliveries to
 * its own sessions are flushed at the end of its loop turn, others through
 * the owning worker's inbox. Returns the number of sessions that receive it.
 * The caller keeps its reference on m. Store operations (the message for
 * persistent sessions, a retained message) go into *bt, which the caller
 * submits; with bt NULL they are submitted here. With targets, the sessions
 * are collected there (see broker_release).
 */
int broker_publish(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                   struct store_batch **bt, struct pub_targets *targets);

/* broker_publish of a message another node of the cluster forwarded
 * (BROKER_PUB_LOCAL, any thread), delivered to a shared group only when
 * group_ok(group_ud, group, len) is true: the groups the forwarding node
 * picked this node for. */
int broker_publish_forwarded(struct broker *b, struct msg *m, sub_index_group_fn group_ok,
                             void *group_ud);

/* Set m->hold to `state` (MSG_READY or MSG_REJECTED) and have the sessions in
 * targets flush (their queues may wait on m); releases targets. Any thread;
 * cur is the calling worker or NULL. */
void broker_release(struct broker *b, struct msg *m, int state, struct pub_targets *targets,
                    struct worker *cur);

/* Publish a will message (expiry: its Message Expiry Interval in seconds,
 * 0 = none, counted from now). Any thread. */
void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur);

/* $SYS topics (sys.c): publish the current values now. */
void sys_publish(struct broker *b);

/* Monotonic milliseconds. */
uint64_t broker_now_ms(void);

#endif
