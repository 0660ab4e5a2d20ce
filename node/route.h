/*
 * route.h - the seam between a node's subscription index and the cluster.
 *
 * The subscription index calls filter_added when the node gains its first
 * local subscriber of a filter and filter_removed when it loses its last one
 * (shared subscriptions count per "$share/group/filter" string). The publish
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

#include <stddef.h>
#include <stdint.h>

struct route_ops {
    void (*filter_added)(void *ud, const char *filter, size_t len);
    void (*filter_removed)(void *ud, const char *filter, size_t len);
    /* Fill nodes[0..max) with ids of other nodes that have a route matching
     * topic; return how many. */
    int (*remote_nodes)(void *ud, const char *topic, size_t len, uint32_t *nodes, int max);
};

/* The single-node implementation; ud must point to a struct route_local. */
extern const struct route_ops route_local_ops;

struct route_local {
    _Atomic long routes; /* filters with at least one local subscriber */
};

#endif
