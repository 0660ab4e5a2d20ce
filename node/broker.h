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

#include "auth.h"
#include "config.h"
#include "metric.h"
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
struct tables_ops;

/* Why a message, or its copy for one session, was not delivered (counted
 * in broker_stats.dropped; admin_local.c names them for /metrics). The
 * first four are enum session_drop's. */
enum broker_drop {
    BROKER_DROP_OFFLINE = 0,         /* an offline session's queue was full */
    BROKER_DROP_SLOW_NEW = 1,        /* connected, queue full: the new message */
    BROKER_DROP_SLOW_OLDEST = 2,     /* connected, queue full: the oldest queued */
    BROKER_DROP_SLOW_DISCONNECT = 3, /* connected, queue full: client disconnected */
    BROKER_DROP_EXPIRED,             /* its Message Expiry Interval ran out */
    BROKER_DROP_TOO_LARGE,           /* above the client's Maximum Packet Size */
    BROKER_DROP_NO_MEMORY,           /* an allocation failed */
    BROKER_DROP_ACL,                 /* the ACL refused the PUBLISH or the delivery */
    BROKER_DROP_PEER_QUEUE_FULL,     /* QoS 0 forward: the channel's queue was full */
    BROKER_DROP_PEER_UNAVAILABLE,    /* QoS 0 forward: the channel refused it otherwise */
    BROKER_DROP_OUTBOX_FULL,         /* QoS 1/2 forward refused: the node's outbox was full */
    BROKER_DROP_SESSION_MOVED,       /* cluster: late messages of a moved session lost */
    BROKER_DROP_NODE_FORGOTTEN,      /* cluster: held for a node removed for good */
    BROKER_DROP_N
};

struct broker_stats {
    atomic_ulong clients_connected;
    atomic_ulong clients_maximum;
    atomic_ulong msgs_received; /* from clients; with fwd_msgs_in: broker_msgs_received */
    atomic_ulong msgs_sent;
    atomic_ulong bytes_received;
    atomic_ulong bytes_sent;
    atomic_ulong msgs_dropped;
    /* the front door (docs/security.md) */
    atomic_ulong auth_failed;       /* CONNECT refused: bad credentials, not authorized */
    atomic_ulong acl_denied;        /* PUBLISH, SUBSCRIBE or delivery refused by the ACL */
    atomic_ulong refused_listener;  /* max_connections_per_listener */
    atomic_ulong refused_rate;      /* max_connection_rate */
    atomic_ulong refused_subs;      /* max_subscriptions_per_client */
    atomic_ulong refused_topic_len; /* max_topic_length */
    atomic_ulong throttled;         /* max_publish_rate: reads paused */
    /* by reason (enum broker_drop; the first four are $SYS/broker/messages/
     * dropped/...): starling_messages_dropped_total{reason} */
    atomic_ulong dropped[BROKER_DROP_N];
    atomic_ulong slow_disconnects; /* clients closed by the disconnect policy */
    atomic_ulong pause_expired;    /* max_publisher_pause ran out for a subscriber */
    atomic_long publishers_paused; /* connections not read now (flow control) */
    atomic_ullong slow_log_at;     /* monotonic ms of the last slow subscriber line */
    atomic_ulong slow_log_skipped; /* lines left out since (rate limit) */
    /* the cluster's forwards (node/cluster_fwd.c) */
    atomic_ulong fwd_refused;      /* QoS 1/2 publishes refused: a node's outbox full */
    atomic_ulong fwd_qos0_dropped; /* QoS 0 forwards dropped (channel queue full) */
    atomic_ulong fwd_resent;       /* forwards sent again from the outbox */
    atomic_ulong fwd_duplicates;   /* forwards received twice (dropped) */
    atomic_long fwd_slow_peers;    /* nodes whose outbox is above its pause mark */
    /* publishes forwarded by other nodes, by QoS: the cluster thread's
     * alone (no locked instruction per message; they count in
     * broker_msgs_received, which the workers' msgs_received shares a cache
     * line with) */
    metric_counter fwd_msgs_in[3];
    metric_counter fwd_bytes_in[3]; /* their topic and payload bytes */
    /* forwarded QoS 0 messages the workers took from the channel's
     * readers (several threads: locked adds); in broker_fwd_msgs_in */
    metric_counter fwd_qos0_in_workers, fwd_qos0_bytes_in_workers;
};

struct broker {
    struct config cfg;
    atomic_bool stopping;
    /* every worker of b->server runs (set once, after their start): from
     * then on other threads may post to them (the channel's readers) */
    atomic_bool workers_up;
    /* When the stop began (monotonic ms, 0 while running): a session
     * disconnected since was connected when the node stopped (persist_close). */
    _Atomic uint64_t stopping_since;
    /* Set by any thread (broker_request_stop) to stop the node as SIGTERM
     * does; the main loop's housekeeping acts on it within 100 ms. */
    atomic_bool stop_requested;
    uint64_t started_at_ms;

    struct sub_index *index;
    /* The route interface: route_local_ops on a single node; the cluster
     * installs its own (before server_run). */
    const struct route_ops *route_ops;
    void *route_ud;
    struct route_local route;
    /* Workers with a publisher paused by route_ops.forward_busy (bit
     * id % 64): the cluster's drained notice checks them (conn_flow.c). */
    atomic_ullong fwd_busy_waiters;
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
    size_t load_expired; /* sessions the store's load found expired (and purged) */
    /* Password file, ACL, TLS context: loaded by main (auth_load), swapped
     * on SIGHUP. */
    struct auth auth;
    /* The operator's tables (tables.h: banned clients, users, API keys):
     * tables_local_ops on a single node, the cluster's replicated ones. */
    const struct tables_ops *tables;
    void *tables_ud;

    /* The network side (server.h), while server_run runs; opaque here. */
    struct server *server;
};

/* Set up the engine (no threads, no sockets). Returns 0 or a negative errno. */
int broker_init(struct broker *b, const struct config *cfg);
/* Free the engine (after server_cleanup): ends every session in memory
 * (they stay in the store). */
void broker_cleanup(struct broker *b);

/* Sessions a publish was delivered to (each holds a reference), and the
 * sequence number of the row put for each (SESSION_NO_ROW: none). */
struct pub_targets {
    struct session **v;
    uint64_t *row;
    size_t n, cap;
};

/* What a client's publish tells it about the sessions it went to (flow
 * control, see session.h): the sessions above their high-water mark (each
 * holds a reference; at most PUB_FLOW_MAX, the first ones), whether the
 * message was refused by the full queue of a connected subscriber or the
 * full outbox of a node it is forwarded to, whether such an outbox is
 * above its pause mark (fwd_slow: the publisher waits while
 * broker.fwd_slow_peers is not 0), and whether the channel queue of a node
 * it was forwarded to is above its high-water mark while that node drains
 * (fwd_busy: the publisher waits while route_ops.forward_busy says so).
 * With want_gate (a QoS 1/2 client publish), the route seam may set gate:
 * the acknowledgement also waits for it (ackq.h; the cluster's retained
 * messages), and the caller drops its reference (ack_gate_unref).
 * Set n_slow = 0, refused = false, fwd_slow = false, fwd_busy = false,
 * gate = NULL and want_gate before the call. */
#define PUB_FLOW_MAX 8
struct ack_gate;
struct pub_flow {
    struct session *slow[PUB_FLOW_MAX];
    uint8_t n_slow;
    bool refused;
    bool fwd_slow;
    bool fwd_busy;
    bool want_gate;
    struct ack_gate *gate;
};

/* broker_publish flags. */
enum {
    /* Deliver to this node's subscribers only: a message another node
     * forwarded. The route seam is not asked, and a retained message is not
     * stored again (the node it came from did). */
    BROKER_PUB_LOCAL = 1u << 0,
    /* A client's QoS 1/2 publish, which the caller refuses when this
     * fails (-ENOMEM) or when its commit fails: then (and when *bt has
     * already lost an operation) nothing of it stays in *bt (the rows put
     * for the sessions that took it are deleted again there: pass
     * targets, so that they are known), it is not stored as retained and
     * not forwarded to other nodes. */
    BROKER_PUB_REFUSABLE = 1u << 1,
};

/*
 * Deliver m to every matching subscriber of this node (and, unless
 * BROKER_PUB_LOCAL, learn from the route interface which other nodes have
 * one). `cur` is the calling worker (NULL for other threads): deliveries to
 * its own sessions are flushed at the end of its loop turn, others through
 * the owning worker's inbox. Returns the number of sessions here that
 * receive it plus the number of other nodes it was forwarded to, or -ENOMEM when an allocation
 * failed and a matching session may not have it: the caller must not acknowledge the publish (a
 * held message is released MSG_REJECTED, so no session delivers it). The caller keeps its reference
 * on m. Store operations (the message for persistent sessions, a retained message) go into *bt,
 * which the caller submits; with bt NULL they are submitted here. With targets, the sessions are
 * collected there (see broker_release). `flow` (NULL for messages the broker makes itself): see
 * struct pub_flow.
 */
int broker_publish(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                   struct store_batch **bt, struct pub_targets *targets, struct pub_flow *flow);

/* broker_publish of a message another node of the cluster forwarded
 * (BROKER_PUB_LOCAL, any thread), delivered to a shared group only when
 * group_ok(group_ud, group, len) is true: the groups the forwarding node
 * picked this node for. bt and targets as for broker_publish; cur is the
 * calling worker (a channel reader's), or NULL on another thread. */
int broker_publish_forwarded(struct broker *b, struct msg *m, struct worker *cur,
                             sub_index_group_fn group_ok, void *group_ud, struct store_batch **bt,
                             struct pub_targets *targets);

/* Set m->hold to `state` (MSG_READY or MSG_REJECTED) and have the sessions in
 * targets flush (their queues may wait on m); the row put for a target that
 * ended or had its messages taken meanwhile goes (session_row_left_locked);
 * releases targets. Any thread; cur is the calling worker or NULL. */
void broker_release(struct broker *b, struct msg *m, int state, struct pub_targets *targets,
                    struct worker *cur);

/* Publish a will message (expiry: its Message Expiry Interval in seconds,
 * 0 = none, counted from now). Any thread. */
void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur);

/* Does the ACL let this client (user NULL: anonymous) access topic (a
 * topic name for ACL_READ / ACL_WRITE, a filter for ACL_SUBSCRIBE; enum
 * acl_access)? Always true without an acl_file; a refusal is counted. Any
 * thread. */
bool broker_acl_allows(struct broker *b, const char *user, const char *client_id, size_t clen,
                       const char *topic, size_t tlen, int access);

/* $SYS topics (sys.c): publish the current values now. */
void sys_publish(struct broker *b);

/* Monotonic milliseconds. */
uint64_t broker_now_mono_ms(void);

/* Messages forwarded by other nodes, of QoS q, and their bytes. Any
 * thread. */
static inline uint64_t broker_fwd_msgs_in(struct broker *b, int q)
{
    return metric_read(&b->stats.fwd_msgs_in[q]) +
           (q == 0 ? metric_read(&b->stats.fwd_qos0_in_workers) : 0);
}
static inline uint64_t broker_fwd_bytes_in(struct broker *b, int q)
{
    return metric_read(&b->stats.fwd_bytes_in[q]) +
           (q == 0 ? metric_read(&b->stats.fwd_qos0_bytes_in_workers) : 0);
}

/* PUBLISHes received: from clients, and forwarded by other nodes. Any
 * thread. */
static inline uint64_t broker_msgs_received(struct broker *b)
{
    return atomic_load_explicit(&b->stats.msgs_received, memory_order_relaxed) +
           broker_fwd_msgs_in(b, 0) + broker_fwd_msgs_in(b, 1) + broker_fwd_msgs_in(b, 2);
}

#endif
