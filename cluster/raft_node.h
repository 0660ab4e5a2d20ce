/*
 * raft_node.h - this node's member of the Raft group: libraft 0.15 on its own
 * thread and libuv loop, raft_uv storage under a directory, the transport of
 * cluster/raft_transport.h, the state machine of cluster/fsm.h.
 *
 * Bootstrap rule (docs/cluster.md): a node's Raft id is derived from its
 * Raft address (raft_node_id_of). A node whose own address is in the seed
 * list bootstraps, when its Raft directory is empty, the configuration made
 * of every seed (sorted by address; the first 5 are voters, the others
 * standbys), with the ids derived the same way; so every seed bootstraps the
 * *identical* configuration and, in any start order, they form one cluster
 * (libraft's rule: bootstrap by one node, or by all with an identical
 * configuration). A node not in the seed list never bootstraps: it waits to
 * be added by the leader (raft_node_add).
 *
 * Defences against 0.15's faults: pre-vote is on; a new leader appends a
 * barrier and reports itself ready (raft_node_ready) only once the barrier
 * is applied; proposals that fail with RAFT_LEADERSHIPLOST are reported as
 * -ECONNABORTED (the entry may still commit: commands are idempotent).
 *
 * Threads: raft_node_start and raft_node_stop from one owner thread; every
 * other function from any thread. Callbacks run on the raft thread.
 */
#ifndef STARLING_RAFT_NODE_H
#define STARLING_RAFT_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "fsm.h"

struct raft_node;

#define RAFT_NODE_MAX_VOTERS 5
/* Longest Raft address: "host:port", host an IPv4 literal or a DNS name
 * (RAFT_TRANSPORT_ADDR_MAX). */
#define RAFT_NODE_ADDR_MAX 264
#define RAFT_NODE_MAX_MEMBERS 64

struct raft_node_config {
    const char *dir;          /* Raft log and snapshots (created when missing) */
    struct fsm *fsm;          /* the state machine (not owned) */
    const char *address;      /* own Raft address "a.b.c.d:port" or "name:port"; its
                               * hash is the node's Raft id */
    const char *bind_ip;      /* IPv4 to listen on and send from; NULL: the host of
                               * address (then an IPv4 literal) */
    const char *const *seeds; /* Raft addresses of the seed nodes, as given */
    unsigned n_seeds;
    const char *cluster_name;     /* peers with another name are refused */
    const char *cluster_secret;   /* shared secret ("" = none) */
    unsigned election_timeout_ms; /* 0 = 1000 */
    unsigned heartbeat_ms;        /* 0 = 100 */
    unsigned snapshot_threshold;  /* entries between snapshots, 0 = 1024 */
    unsigned snapshot_trailing;   /* entries kept behind a snapshot, 0 = libraft's */
    unsigned max_voters;          /* 0 = RAFT_NODE_MAX_VOTERS (5); the same on every seed */
    bool no_bootstrap;            /* never bootstrap (a node rebuilt after a divergence
                                   * joins like a new node) */
    /* Hooks for what shares the raft thread's loop (cluster/cluster.h runs
     * the forwarding channel there): on_start runs on the raft thread once
     * Raft started, before raft_node_start returns; a non-zero return fails
     * the start (a negative errno). on_stop runs on the raft thread when
     * raft_node_stop begins: it must close every handle it opened on the
     * loop (the thread ends when the loop has no handles left). */
    int (*on_start)(void *ud, struct raft_node *n, uv_loop_t *loop);
    void (*on_stop)(void *ud);
    void *hook_ud;
};

/* The Raft id of the node with Raft address addr (never 0). */
uint64_t raft_node_id_of(const char *addr);

/* Start the raft thread; returns once Raft runs (or failed: a negative
 * errno and a message in err). */
int raft_node_start(struct raft_node **out, const struct raft_node_config *c, char *err,
                    size_t errlen);
/* Stop Raft and the thread, fail pending proposals with -ECANCELED, free n. */
void raft_node_stop(struct raft_node *n);

uint64_t raft_node_self(struct raft_node *n);
/* Known leader id (0 = none), whether this node is the leader and has
 * applied its barrier (it may serve), its last applied index. */
uint64_t raft_node_leader(struct raft_node *n);
bool raft_node_ready(struct raft_node *n);
uint64_t raft_node_applied(struct raft_node *n);

/*
 * Propose an encoded CommandBatch (cluster/cmd.h; copied). done(ud, status,
 * res, leader) runs once on the raft thread: status 0 with res (valid during
 * the call) when the entry was committed and applied here; -ENOTCONN when
 * this node is not the leader (leader = the known leader id or 0), -EAGAIN
 * while a new leader has not applied its barrier, -ECONNABORTED when
 * leadership was lost while the entry was pending (it may still commit),
 * -ECANCELED at stop, -ENOMEM, -EINPROGRESS when it committed but is not
 * applied here yet (deferred for want of memory, cluster/fsm_raft.h: its
 * results are not known; the caller looks for its effect, or proposes it
 * again: commands are idempotent). done must be quick (hand the result to
 * the caller's own thread).
 */
typedef void (*raft_node_done_fn)(void *ud, int status, const struct fsm_batch_result *res,
                                  uint64_t leader);
int raft_node_propose(struct raft_node *n, const void *batch, size_t len, raft_node_done_fn done,
                      void *ud);

/*
 * Add the node with Raft address addr (leader only): raft_add (as spare),
 * then raft_assign as voter while there are fewer than max_voters voters,
 * else as standby. One change at a time: -EBUSY while one is in progress.
 * done(ud, status, NULL, leader) as above (status 0 = in the configuration).
 */
int raft_node_add(struct raft_node *n, const char *addr, raft_node_done_fn done, void *ud);

/*
 * Remove server id from the configuration (leader only; an operator's
 * "forget", or a node leaving - the leader may remove itself, and steps
 * down once that is committed). When a voter went and there are fewer than
 * max_voters, the first standby is promoted to voter. One change at a time
 * (-EBUSY); -ENOTCONN not the leader; -ENOENT no such server.
 */
int raft_node_remove(struct raft_node *n, uint64_t id, raft_node_done_fn done, void *ud);

/* The Raft configuration as of the last tick (50 ms). */
enum raft_node_role { RAFT_NODE_VOTER, RAFT_NODE_STANDBY, RAFT_NODE_SPARE };
struct raft_node_member {
    uint64_t id;
    enum raft_node_role role;
    char address[RAFT_NODE_ADDR_MAX];
};
unsigned raft_node_members(struct raft_node *n, struct raft_node_member *out, unsigned max);

/* Handshakes the transport refused (wrong cluster name/secret/source). */
uint64_t raft_node_refused(struct raft_node *n);

/*
 * The divergence detector (docs/cluster.md). raft_node_checkpoint gives the
 * last applied index and the checksum of the tables after it, which the
 * node sends to its peers (channel.proto DivergenceCheck). A peer's pair
 * goes to raft_node_divergence_check: 0 when this node's checksum after the
 * same index is equal, -ENOENT when this node has no checksum for that index
 * (not applied yet, or too long ago), 1 when they differ (counted). With
 * `mark` (the pair is the leader's), a difference also marks this node
 * diverged (raft_node_diverged, logged as an error): its tables are not the
 * cluster's and it must be rebuilt from a snapshot. Which side is wrong is
 * not decided here (cluster.c: the side that differs from the leader and a
 * majority); raft_node_set_diverged marks the node for other reasons.
 */
void raft_node_checkpoint(struct raft_node *n, uint64_t *index, uint64_t *checksum);
int raft_node_divergence_check(struct raft_node *n, uint64_t index, uint64_t checksum, bool mark);
void raft_node_set_diverged(struct raft_node *n);
/* This node's checksum of the tables after entry index (0), or -ENOENT. */
int raft_node_checksum_at(struct raft_node *n, uint64_t index, uint64_t *out);
/* Hand leadership to another voter (raft_transfer picks the most up to date
 * one). On the raft thread only (cluster.c runs there); -ENOTCONN when not
 * the leader, -EBUSY while a transfer runs. */
int raft_node_step_down(struct raft_node *n);
bool raft_node_diverged(struct raft_node *n);
/* Whether this node's Raft server cannot go on (docs/cluster.md, "A full
 * disk on one node"): a write of its log failed (a full or failing disk;
 * 0.15 would leave a follower that never stores again), or libraft stopped
 * it (state unavailable) for another reason than the tables' failure
 * (fsm_broken) or raft_node_stop. Logged once as an error; why (may be
 * NULL) gets the reason. The owner must stop the node: Raft does not come
 * back without a restart. */
bool raft_node_failed(struct raft_node *n, char *why, size_t len);
struct raft_message;
/* An AppendEntries' leader_commit bounded by the last entry it proves equal
 * to the leader's (prev_log_index + n_entries; libraft 0.15 lets a follower
 * commit its own stale entries past them): whether it was lowered. Every
 * message this node sends and receives goes through it. */
bool raft_node_bound_commit(struct raft_message *m);
/* An AppendEntries result sent while an AppendEntries proving the
 * follower's log equal to the leader's up to `bound` is handled: its
 * last_log_index bounded by it (0.15 says its own last stored index,
 * stale entries past the message included): whether it was lowered. */
bool raft_node_bound_answer(struct raft_message *m, uint64_t bound);
/* Whether this node leads and Raft received a message from server id
 * within the last election timeout or two (libraft's own contact check: an
 * answer to a heartbeat or an append). On the raft thread only (cluster.c
 * runs there); false when not the leader or id is not in the
 * configuration. */
bool raft_node_heard_recently(struct raft_node *n, uint64_t id);

struct raft_node_stats {
    uint64_t applied, replays_skipped, snapshots, restores, restores_skipped, apply_errors;
    uint64_t refused, divergences, checks_equal;
    /* as of the last tick (50 ms): the current term, the commit index, the
     * last applied index, and how often the tick saw a leader other than
     * the one before (the first one included) */
    uint64_t term, commit_index, last_applied, leader_changes;
    /* AppendEntries sent as heartbeats: the same entries to the same peer
     * were not written out yet (raft_node.c, watched_send) */
    uint64_t resends_thinned;
};
void raft_node_stats(struct raft_node *n, struct raft_node_stats *out);

#endif
