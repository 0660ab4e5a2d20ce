/*
 * cluster_node.h - the glue between a node's broker and the cluster
 * (cluster/cluster.h): what main() starts when cluster_seeds or cluster_dns
 * is set. Nothing of it runs on a single node.
 *
 * It installs on the broker:
 *   - a route_ops (node/route.h): filter_added/filter_removed become
 *     RouteAdd/RouteRemove proposals, batched and retried in order until
 *     committed; remote_nodes reads the replicated route matcher; forward
 *     sends a publish once to each other node with a matching route
 *     (chan.Publish through node/cluster_fwd.h: QoS 1/2 held in an outbox
 *     until the node acknowledged it), and replicates retained
 *     messages (RetainedSet/RetainedClear); sync holds a SUBACK until the
 *     routes it depends on are applied on every live member;
 *   - the receiving side: a forwarded Publish is delivered with
 *     broker_publish(..., BROKER_PUB_LOCAL, ...), retained messages that
 *     other nodes published are stored in the node's retained store;
 *   - an admin_provider (admin/admin.h) answering for the cluster: health
 *     (serving and a leader known), every member with its role, whether it
 *     is reachable and which one leads; leave and forget.
 *
 * Data lives under DATA_DIR/cluster ("fsm" tables, "raft" log).
 *
 * Threads: start, admin, stop and free on the main thread; the route ops
 * on workers (under the subscription index lock: they only queue); one
 * thread of its own proposes route batches, reports this node's applied
 * index to its peers and completes waiting SUBACKs; frames and the state
 * machine's observer on the cluster thread.
 */
#ifndef STARLING_CLUSTER_NODE_H
#define STARLING_CLUSTER_NODE_H

#include <stddef.h>

struct admin_local;
struct admin_provider;
struct broker;
struct cluster_node;

/*
 * After broker_init and before persist_open (so that the routes of the
 * persistent sessions it loads are proposed): resolve the seeds (or
 * cluster_dns), start the cluster and install the route ops. Returns 0, or
 * a negative errno with the reason in err.
 */
int cluster_node_start(struct cluster_node **out, struct broker *b, char *err, size_t errlen);

/* After persist_open (also with persistence off): the first route batch
 * (NodePurge of this node and the loaded sessions' routes, one entry) may
 * be proposed - until then no route is; forwards of QoS 1/2 messages
 * become durable (node/cluster_fwd.h: the outbox is loaded and replayed,
 * the seqs of this run start above the last run's); then the stored
 * sessions that the registry gives to other nodes (taken over while this
 * node was down) send them their messages and end, once this node has
 * caught up. cn may be NULL. 0 or a negative errno with the reason in err. */
int cluster_node_attach_store(struct cluster_node *cn, char *err, size_t errlen);

/* Replace *p (the single-node provider filled by admin_local_init over l)
 * with the cluster's provider, which uses l for what is per node. */
void cluster_node_admin(struct cluster_node *cn, struct admin_local *l, struct admin_provider *p);

/* After server_run returned (SIGTERM: the clients were disconnected), before
 * cluster_node_stop: wait, at most cluster_claim_timeout, until every
 * persistent session whose client the stop disconnected was claimed on
 * another node and handed over (its SessionState sent, and the new owner's
 * SessionRouted came), so that it moves whole: its messages inflight with
 * their packet ids, its QoS 2 state. Returns at once without another live
 * member. cn may be NULL. Main thread. */
void cluster_node_hand_over(struct cluster_node *cn);

/* After server_run returned: stop forwarding, the own thread and the
 * cluster; the route ops become no-ops (the broker may still call them
 * while it ends its sessions). */
void cluster_node_stop(struct cluster_node *cn);

/* Whether the node stopped itself to be rebuilt (a divergence: see
 * cluster_auto_rebuild); main then exits with status 75. cn may be NULL. */
bool cluster_node_rebuilding(const struct cluster_node *cn);

/* Whether the node stopped itself because it cannot write its replicated
 * tables or its Raft log (a full or failing disk); main then exits with
 * status 74. */
bool cluster_node_failed(const struct cluster_node *cn);

/* After broker_cleanup. cn may be NULL. */
void cluster_node_free(struct cluster_node *cn);

#endif
