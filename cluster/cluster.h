/*
 * cluster.h - this node's membership in the cluster: the replicated state
 * machine (fsm.h), the Raft node (raft_node.h) and the forwarding channel
 * (channel.h) together, on one cluster thread, with proposals that reach the
 * leader from any node.
 *
 * What it adds to its parts:
 *   - cluster_propose works on every node: a proposal that this node cannot
 *     commit (not the leader) goes to the leader in a chan.Propose frame; the
 *     leader proposes it and answers with chan.ProposeResult;
 *   - membership metadata: every node makes sure the members table holds its
 *     own record (name, address, ports), proposed through the leader, and
 *     dials every member's forwarding channel (the channel address of a
 *     node comes from its record);
 *   - frames other than the cluster's own (Propose, ProposeResult) go to the
 *     broker's on_frame (Publish, PublishAck, SessionRequest/State,
 *     DivergenceCheck, ...).
 *
 * Layout under dir: "fsm" (the replicated tables) and "raft" (the log).
 *
 * Threads: cluster_start and cluster_stop from the owner thread;
 * cluster_propose, cluster_send and the getters from any thread; callbacks
 * (done, observer, on_frame) on the cluster thread, quick, handing work to
 * their own threads.
 */
#ifndef STARLING_CLUSTER_H
#define STARLING_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.h"
#include "fsm.h"
#include "raft_node.h"

struct cluster;

struct cluster_config {
    const char *dir;       /* DATA_DIR/cluster */
    const char *node_name; /* unique, stable */
    const char *address;   /* cluster_address: an IPv4 literal */
    /* cluster_advertise: the host name other nodes reach this node by, or
     * NULL. Set, the node's Raft address (and so its id) is
     * "advertise:raft_port", which stays when its IP changes (a restarted
     * pod); unset, it is "address:raft_port". */
    const char *advertise;
    unsigned raft_port;    /* Raft transport */
    unsigned cluster_port; /* forwarding channel, the same on every node */
    /* Raft addresses "host:raft_port" of the seed nodes (this node's own
     * may be among them; see the bootstrap rule in raft_node.h). A node
     * that is in no Raft configuration yet asks a seed to be added (its
     * forwarding channel at host:cluster_port). */
    const char *const *seeds;
    unsigned n_seeds;
    const char *cluster_name;
    const char *cluster_secret;
    unsigned election_timeout_ms, heartbeat_ms, snapshot_threshold; /* 0 = defaults */
    unsigned snapshot_trailing;                                     /* 0 = libraft's */
    unsigned propose_timeout_ms; /* a forwarded proposal's answer; 0 = 5000 */
    fsm_observer_fn observer;    /* applied commands (cluster thread), may be NULL */
    void *observer_ud;
    fsm_entry_fn on_entry;  /* each entry in effect (fsm.h; cluster thread, observer_ud) */
    chan_frame_fn on_frame; /* the broker's frames (cluster thread), may be NULL */
    void *frame_ud;
    /* chan_options.reader_* (channel.h), with frame_ud: incoming channel
     * connections read by the broker's workers, which handle the frames
     * reader_fast accepts; all NULL for none */
    int (*reader_attach)(void *ud, uint64_t from, struct chan_reader *r);
    bool (*reader_fast)(void *ud, const void *frame);
    void (*reader_frame)(void *ud, uint64_t from, const void *frame);
    void (*reader_done)(void *ud, struct chan_reader *r);
    /* The leader found this node's tables diverged and asked it to rebuild
     * (cluster thread, once), may be NULL: see cluster_rebuild_mark. */
    void (*on_rebuild)(void *ud);
    void *rebuild_ud;
    /* chan_options.defer (channel.h): true when the calling thread calls
     * cluster_flush_here soon, may be NULL */
    bool (*defer)(void *ud);
    void *defer_ud;
    /* A busy peer of the channel drained (chan_options.on_drained: the
     * cluster thread or a worker writing its forwards), may be NULL. */
    void (*on_drained)(void *ud);
    void *drained_ud;
    /* The cluster's thread is about to run (cluster thread, inside
     * cluster_start, before any frame or entry comes to the callbacks
     * above): the cluster is usable from here on, may be NULL. */
    void (*on_ready)(void *ud, struct cluster *c);
    void *ready_ud;
};

/* When the data directory holds a rebuild mark (cluster_rebuild_mark), the
 * tables and the Raft directory are first set aside (fsm.diverged,
 * raft.diverged, replacing older ones) and the node starts empty and never
 * bootstraps: it joins again like a new node and catches up from the
 * leader. */
int cluster_start(struct cluster **out, const struct cluster_config *cfg, char *err, size_t errlen);
/* Write the rebuild mark (durably): the next cluster_start sets this node's
 * replicated state aside. Any thread. 0 or a negative errno. */
int cluster_rebuild_mark(struct cluster *c);
/* This process asked to leave (its member record says so): do not propose
 * the record again as a member. Any thread. */
void cluster_leaving(struct cluster *c);
/* Stop the cluster thread (pending proposals end with -ECANCELED), close
 * the tables, free c. */
void cluster_stop(struct cluster *c);

uint64_t cluster_self(struct cluster *c);
struct fsm *cluster_fsm(struct cluster *c);
struct raft_node *cluster_raft(struct cluster *c);

/*
 * Propose a Raft entry (cmd_batch_data of cluster/cmd.h; copied) from any
 * node. done(ud, status, res, leader) runs once on the cluster thread, as
 * for raft_node_propose, except that a proposal made on a follower is
 * forwarded to the leader: -ENOTCONN / -EAGAIN come back only when no leader
 * is known or reachable; -ETIMEDOUT when the leader did not answer within
 * propose_timeout_ms (the entry may still commit: commands are idempotent);
 * -ECONNABORTED when another leader was elected before the one it was sent
 * to answered, or when that node answered that it is stopping (likewise;
 * -ECANCELED comes back only when this node stops). On success res->index
 * is the entry's index and res->results the per-command results;
 * res->checksum is 0 for forwarded proposals.
 */
int cluster_propose(struct cluster *c, const void *entry, size_t len, raft_node_done_fn done,
                    void *ud);

/* Send an encoded chan.Frame to a member (channel.h chan_send). */
int cluster_send(struct cluster *c, uint64_t node, const void *frame, size_t len);
/* Write what this thread queued (channel.h chan_flush_here); the thread
 * that cfg.defer said would. */
void cluster_flush_here(struct cluster *c);
/* cluster_send, and *busy set when node's queue is busy and draining
 * (chan_send_flow). */
int cluster_send_flow(struct cluster *c, uint64_t node, const void *frame, size_t len, bool *busy);
/* Whether the channel has a busy, draining peer (chan_busy). */
bool cluster_busy(struct cluster *c);
/* The channel's counters of our connection to node (chan_peer_stats). */
int cluster_peer_stats(struct cluster *c, uint64_t node, struct chan_peer_stats *out);
/* How long member `node` has been silent, in milliseconds of this node's
 * own running time: neither its channel connection brought bytes nor (this
 * node leading) did Raft receive a message from it, measured by the cluster
 * thread's timer in steps of at most 500 ms, so that time this node's
 * cluster thread did not run (a slow commit, SIGSTOP) counts for little.
 * 0 for a node not known as a member (yet). Any thread. */
uint64_t cluster_quiet_ms(struct cluster *c, uint64_t node);
/* Tests (debug builds only; false otherwise): while the file that
 * STARLING_TEST_REPORTS_HOLD names exists, this node sends neither its
 * checkpoints nor its chan.Applied reports, so that the channel carries
 * nothing from it while Raft goes on (tests/cluster/test_faults.py). */
bool cluster_test_reports_held(void);
/* When node last sent this node anything on the channel (chan_heard_ms). */
uint64_t cluster_heard_ms(struct cluster *c, uint64_t node);

#endif
