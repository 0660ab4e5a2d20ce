/*
 * fsm_raft.h - the state machine (cluster/fsm.h) as libraft's struct
 * raft_fsm (canonical raft 0.15, <raft.h>).
 *
 * libraft calls apply for each committed RAFT_COMMAND entry, in log order,
 * on the thread of the raft instance; snapshot when it compacts its log;
 * restore when it starts from a snapshot or installs one sent by the leader.
 * The raft_fsm interface of 0.15 does not pass the entry's index to apply:
 * it is raft_last_applied(r) + 1, because libraft raises last_applied only
 * after apply returned (barrier and configuration entries in between are
 * not passed to apply, and the index skips them). So the adapter must know
 * its struct raft: fsm_raft_bind, before raft_start.
 *
 * The result handed to raft_apply's callback (void *result) points to a
 * struct fsm_batch_result owned by the adapter and valid only during that
 * callback (libraft calls the callback right after apply; on followers there
 * is no callback and nothing is allocated).
 *
 * The adapter also remembers the checksum of the tables after each of the
 * last FSM_RAFT_HISTORY applied entries, for the divergence detector: nodes
 * compare their checksums at the same index (fsm_raft_checksum_at).
 *
 * Threads: everything on the raft thread, except fsm_raft_checksum_at and
 * the counters, which any thread may read (atomics / a mutex).
 */
#ifndef STARLING_FSM_RAFT_H
#define STARLING_FSM_RAFT_H

#include <pthread.h>
#include <stdbool.h>
#include <raft.h>
#include <stdint.h>

#include "fsm.h"

#define FSM_RAFT_HISTORY 1024

struct fsm_raft_pending {
    struct fsm_raft_pending *next;
    uint64_t index;
    size_t len;
    unsigned char data[];
};

struct fsm_raft {
    struct raft_fsm raft_fsm; /* pass &a->raft_fsm to raft_init */
    struct fsm *fsm;
    struct raft *raft;
    struct fsm_batch_result last; /* result of the last apply */
    /* counters (read with __atomic loads from other threads) */
    uint64_t n_applied, n_skipped, n_snapshots, n_restores, n_apply_errors;
    uint64_t n_restores_skipped; /* snapshots the tables already held */
    uint64_t n_deferred;         /* applies put off by the section 5.4.2 guard */
    uint64_t nomem_index;        /* the last entry put off for want of memory (warned once) */
    bool guard_off;              /* tests only: apply whatever libraft commits (0.15 as is) */
    /* entries accepted from libraft but deferred (the guard, or out of
     * memory), in order */
    struct fsm_raft_pending *pend_head, **pend_tail;
    uint64_t n_pending;
    pthread_mutex_t mu; /* guards hist */
    struct {
        uint64_t index, checksum;
    } hist[FSM_RAFT_HISTORY];
};

/* Set up a over f (not owned). Then fsm_raft_bind once the struct raft
 * exists. */
void fsm_raft_init(struct fsm_raft *a, struct fsm *f);
void fsm_raft_bind(struct fsm_raft *a, struct raft *r);
void fsm_raft_close(struct fsm_raft *a);

/*
 * The guard against 0.15's commit of earlier-term entries (upstream #220):
 * fsm_raft_commit_safe is true when the entry at r's commit index is of r's
 * current term, i.e. the commit index was reached by counting replicas of a
 * current-term entry, as section 5.4.2 of the Raft paper requires. While it
 * is false the adapter applies nothing: it accepts the entries libraft hands
 * it (an error from apply would make 0.15 stop the server) and keeps them,
 * in order, in memory (and in snapshots, which libraft labels with an index
 * that includes them). They are applied once a current-term entry commits:
 * at the next apply, or at fsm_raft_flush, which the owner calls after the
 * new leader's barrier and on a timer (raft_node.h). So an entry that 0.15
 * commits too early is applied only once it is really committed - or never,
 * if a later leader overwrites it (Figure 8, tests/unit/test_raft_fixture.c).
 *
 * An entry that cannot be applied for want of memory (fsm_apply -ENOMEM:
 * nothing of it done) waits the same way, with every entry after it, and
 * is tried again at the next apply or fsm_raft_flush: a failed allocation
 * costs the node a delay, not a stop.
 */
bool fsm_raft_commit_safe(const struct raft *r);
/* Apply the deferred entries if it is now safe, and rebuild the route
 * matcher if an allocation failed while it followed an entry (fsm_repair)
 * (raft thread). 0, -ENOMEM (tried again on the next call) or another
 * negative errno (the tables are broken). */
int fsm_raft_flush(struct fsm_raft *a);

/* The checksum of the tables right after the entry at index was applied on
 * this node: 0 with *sum set, or -ENOENT when index is not among the last
 * FSM_RAFT_HISTORY applied entries (or was applied before a restart). */
int fsm_raft_checksum_at(struct fsm_raft *a, uint64_t index, uint64_t *sum);

#endif
