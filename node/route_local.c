/*
 * route_local.c - the single-node route interface (see route.h).
 *
 * Counts the filters that have local subscribers; there are no other nodes,
 * so no publish has a remote destination.
 */
#include "route.h"

static void local_filter_added(void *ud, const char *filter, size_t len)
{
    (void)filter;
    (void)len;
    struct route_local *rl = ud;
    rl->routes++;
}

static void local_filter_removed(void *ud, const char *filter, size_t len)
{
    (void)filter;
    (void)len;
    struct route_local *rl = ud;
    rl->routes--;
}

static int local_remote_nodes(void *ud, const char *topic, size_t len, uint64_t *nodes, int max)
{
    (void)ud;
    (void)topic;
    (void)len;
    (void)nodes;
    (void)max;
    return 0;
}

const struct route_ops route_local_ops = {
    .filter_added = local_filter_added,
    .filter_removed = local_filter_removed,
    .remote_nodes = local_remote_nodes,
};
