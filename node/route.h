/*
 * route.h - the seam between a node's subscription index and the cluster.
 *
 * The subscription index calls filter_added when the node gains its first
 * local subscriber of a filter and filter_removed when it loses its last one
 * (shared subscriptions count per "$share/group/filter" string), and
 * filter_joined (optional) for every other subscriber it gains. The publish
 * path calls remote_nodes to learn which other nodes have a matching route.
 * On a single node the local implementation (route_local_ops) keeps a count of
 * routes and reports no remote nodes; the cluster replaces it with the
 * replicated route table.
 *
 * Callbacks may be called from any worker thread, with the subscription index
 * write lock held: they must be quick and must not call back into the index.
 */
#ifndef STARLING_ROUTE_H
#define STARLING_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct msg;
struct pub_flow;
struct store_batch;
struct worker;

struct route_ops {
    void (*filter_added)(void *ud, const char *filter, size_t len);
    void (*filter_removed)(void *ud, const char *filter, size_t len);
    /* Optional. A subscriber joined a filter that had a local subscriber
     * already: the cluster proposes the route again when the replicated
     * table does not hold it as this node's own (it may have gone with a
     * NodeDown of this node or a record that left it, while an old copy of
     * a moved session held the filter here): "a SUBACK means the route is
     * everywhere" for every subscriber, not only the first. */
    void (*filter_joined)(void *ud, const char *filter, size_t len);
    /* Fill nodes[0..max) with the ids (64-bit cluster node ids) of other
     * nodes that have a route matching topic; return how many there are
     * (may exceed max: then only max were written). */
    int (*remote_nodes)(void *ud, const char *topic, size_t len, uint64_t *nodes, int max);
    /* Optional (NULL on a single node). Send m, which this node accepted
     * from a client (or a will), to the other nodes with a matching route,
     * once per node. Called by broker_publish after the local delivery, on
     * the publishing worker (cur) or any thread (cur NULL); must not block.
     * The callee takes its own references. A QoS 1/2 forward is written into
     * *bt (created if NULL; the caller submits it): the publisher's
     * acknowledgement waits for it. flow (may be NULL): set flow->fwd_slow
     * when the publisher should be paused, flow->refused when the message
     * could not be forwarded to some node (see struct pub_flow). Returns
     * the number of nodes m went to (its subscribers there are subscribers
     * of the publish: no "no matching subscribers" for it). */
    unsigned (*forward)(void *ud, struct msg *m, struct worker *cur, struct store_batch **bt,
                        struct pub_flow *flow);
    /* Optional (NULL on a single node). "A SUBACK means the route is
     * everywhere": returns 0 when every route change made before this call
     * is already in effect on every live node (done is not called), 1 when
     * done(arg) will be called later, once it is (any thread, exactly once;
     * also at shutdown), or a negative errno (done is not called). */
    int (*sync)(void *ud, void (*done)(void *arg), void *arg);
    /* Optional. The index of the route table a forward made now sees at
     * least (recorded on the message before its local delivery, see
     * struct msg.route_index). Any thread; must be cheap. */
    uint64_t (*routed_at)(void *ud);
    /* Optional. Whether the channel queue of some node is above its
     * high-water mark while that node drains (flow->fwd_busy was set by
     * forward): publishers paused for it stay paused. The cluster calls
     * sink->drained with broker.fwd_busy_waiters when it is not any more.
     * Any thread; cheap. */
    bool (*forward_busy)(void *ud);
    /* Optional. Gives a QoS 1/2 message published here its identity
     * (struct msg.id_node, id_seq) before its local delivery. Any thread;
     * must be cheap. */
    void (*identify)(void *ud, struct msg *m);
};

/* The single-node implementation; ud must point to a struct route_local. */
extern const struct route_ops route_local_ops;

struct route_local {
    _Atomic long routes; /* filters with at least one local subscriber */
};

#endif
