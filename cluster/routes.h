/*
 * routes.h - the in-memory route matcher: which nodes have a route matching
 * a topic.
 *
 * A copy, in memory, of the replicated route table (storage/rtable.h
 * RTABLE_ROUTES) as a trie of topic levels, so that the publish path never
 * reads LMDB. The state machine (cluster/fsm.h) updates it after each commit
 * and rebuilds it after a snapshot restore; worker threads query it on every
 * PUBLISH.
 *
 * Routes are (filter, node) pairs. A filter "$share/{group}/{inner}" is a
 * shared route: it is stored under the inner filter with its group, and a
 * publish goes to one node of each matching group (routes_nodes picks it).
 *
 * Threads: every function is thread safe. Writers (routes_add, _remove,
 * _remove_node, _clear) take a write lock; readers (routes_match,
 * routes_nodes, routes_count) a read lock held only for the walk. Route
 * changes are rare next to publishes (a node adds a route only for its first
 * subscriber of a filter), so a read-write lock is the start; if the walk
 * ever shows lock contention, the trie moves to RCU (liburcu) without
 * changing this interface.
 */
#ifndef STARLING_ROUTES_H
#define STARLING_ROUTES_H

#include <stddef.h>
#include <stdint.h>

struct routes;

/* A new empty matcher, or NULL (out of memory). */
struct routes *routes_new(void);
/* Free r; no other thread may use it any more. r may be NULL. */
void routes_free(struct routes *r);

/* Add the route (filter, node). filter is validated as a topic filter
 * (node/topic.h, $share included). Returns 1 when added, 0 when it existed,
 * -EINVAL (bad filter or node 0), -ENOMEM. */
int routes_add(struct routes *r, const char *filter, size_t len, uint64_t node);
/* Remove the route (filter, node). Returns 1 when removed, 0 when absent,
 * -EINVAL. */
int routes_remove(struct routes *r, const char *filter, size_t len, uint64_t node);
/* Remove every route of node. Returns how many were removed. */
size_t routes_remove_node(struct routes *r, uint64_t node);
/* Remove everything. */
void routes_clear(struct routes *r);

/*
 * Several changes that readers see at once. Between routes_write_begin and
 * routes_write_end the calling thread holds the write lock, and its
 * routes_add, _remove, _remove_node and _clear join that hold: no walk
 * sees a state in between. The state machine applies the route changes of
 * one committed entry so (a returning node's NodePurge and the RouteAdds
 * of its sessions; NodeDown, which reloads the routes a node keeps): made
 * one at a time, a publish on another thread could find the node without
 * the routes it keeps, and its forward was never made. Not nested; the
 * thread calls no reader (routes_match, _nodes, _count) in between.
 */
void routes_write_begin(struct routes *r);
void routes_write_end(struct routes *r);
/* Number of (filter, node) routes. */
size_t routes_count(struct routes *r);

/*
 * Call visit for every route matching topic name t: share is NULL for a plain
 * route, else the whole "$share/group/inner" filter of a shared route. Called
 * with the read lock held: visit must be quick and must not call routes_*
 * writers. Returns the number of visits, or -EINVAL for a bad topic.
 */
typedef void (*routes_visit_fn)(void *ud, uint64_t node, const char *share, size_t share_len);
int routes_match(struct routes *r, const char *t, size_t len, routes_visit_fn visit, void *ud);

/*
 * The distinct nodes a publish on topic t goes to: every node with a plain
 * matching route, plus, for each matching shared group, one node of the
 * group chosen as (pick mod number of nodes in the group, nodes in
 * ascending id order) - callers vary pick per message (e.g. a counter) to
 * spread a group's load. Fills nodes[0..max) in no particular order and
 * returns how many there are (which may exceed max: then only max were
 * written), or -EINVAL for a bad topic.
 */
int routes_nodes(struct routes *r, const char *t, size_t len, uint64_t pick, uint64_t *nodes,
                 int max);

#endif
