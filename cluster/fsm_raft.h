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
#include <raft.h>
#include <stdint.h>

#include "fsm.h"

#define FSM_RAFT_HISTORY 1024

struct fsm_raft {
    struct raft_fsm raft_fsm; /* pass &a->raft_fsm to raft_init */
    struct fsm *fsm;
    struct raft *raft;
    struct fsm_batch_result last; /* result of the last apply */
    /* counters (read with __atomic loads from other threads) */
    uint64_t n_applied, n_skipped, n_snapshots, n_restores, n_apply_errors;
    uint64_t n_restores_skipped; /* snapshots the tables already held */
    pthread_mutex_t mu;          /* guards hist */
    struct {
        uint64_t index, checksum;
    } hist[FSM_RAFT_HISTORY];
};

/* Set up a over f (not owned). Then fsm_raft_bind once the struct raft
 * exists. */
void fsm_raft_init(struct fsm_raft *a, struct fsm *f);
void fsm_raft_bind(struct fsm_raft *a, struct raft *r);
void fsm_raft_close(struct fsm_raft *a);

/* The checksum of the tables right after the entry at index was applied on
 * this node: 0 with *sum set, or -ENOENT when index is not among the last
 * FSM_RAFT_HISTORY applied entries (or was applied before a restart). */
int fsm_raft_checksum_at(struct fsm_raft *a, uint64_t index, uint64_t *sum);

#endif
