/*
 * fsm.h - the replicated state machine of the cluster.
 *
 * Applies Raft entries (each an encoded starling.cmd.CommandBatch, see
 * proto/raft_cmd.proto) to the replicated tables (storage/rtable.h): routes,
 * session registry, retained messages, members. One entry is applied in one
 * LMDB transaction together with its Raft index, so an entry is applied
 * exactly once even when Raft replays its log after a restart: an entry whose
 * index is not above the stored applied index is skipped.
 *
 * Every command is deterministic and idempotent (see raft_cmd.proto):
 *   - RouteAdd/RouteRemove: set semantics on (filter, node);
 *   - SessionClaim: the owner changes only to a higher epoch; the same
 *     (node, epoch) again is a no-op; a lower or equal epoch of another
 *     claim is rejected (FSM_STALE_EPOCH);
 *   - SessionRelease: only the current (node, epoch) may release; the
 *     session record goes with it;
 *   - SessionRecord: written only by the current (node, epoch); expiry 0
 *     deletes it;
 *   - NodeDown: a node's routes go, but for those its persistent sessions
 *     (session records whose registry owner it is, or that name it) need,
 *     each counted (NodeDown.keepers): a record that stops naming the node
 *     (another owner's record, a deletion, a release) takes one off the
 *     counts of its filters, and a route at 0 goes in that entry;
 *   - RetainedSet/Clear: a repeated or older (origin, seq) is a no-op
 *     (FSM_STALE_SEQ);
 *   - Member/MemberRemove/NodePurge: replace/remove.
 *
 * Besides LMDB, the state machine keeps the in-memory route matcher
 * (cluster/routes.h) equal to the route table: updated after each commit,
 * rebuilt after open and restore.
 *
 * Threads: fsm_apply, fsm_restore, fsm_open and fsm_close on one thread (the
 * Raft thread); the readers (fsm_routes and its matcher, fsm_registry_get,
 * fsm_retained_get, fsm_members, fsm_applied, fsm_checksum, fsm_snapshot)
 * from any thread.
 */
#ifndef STARLING_FSM_H
#define STARLING_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "routes.h"

struct fsm;

/* Per-command outcome; equal to starling.cmd.Result. */
enum fsm_result {
    FSM_OK = 0,
    FSM_NOOP = 1,
    FSM_STALE_EPOCH = 2,
    FSM_STALE_SEQ = 3,
    FSM_INVALID = 4,
};

#define FSM_MAX_BATCH 4096 /* commands per entry; more is refused as a whole */

/* What applying one entry did. */
struct fsm_batch_result {
    uint64_t index;                 /* Raft index of the entry */
    bool skipped;                   /* index was already applied (replay): nothing done */
    uint64_t checksum;              /* checksum of the tables after the entry (0 if skipped) */
    uint32_t n;                     /* commands in the entry */
    uint8_t results[FSM_MAX_BATCH]; /* enum fsm_result per command */
};

/*
 * Observer: called on the applying thread after an entry's transaction has
 * committed, once per command whose result is FSM_OK (the tables changed).
 * cmd is the decoded starling.cmd.Command (const Starling__Cmd__Command *,
 * from raft_cmd.pb-c.h), valid during the call. The broker uses it to learn
 * of claims won by other nodes (takeover), routes and retained messages.
 * Must be quick; must not call fsm_apply or fsm_restore.
 */
typedef void (*fsm_observer_fn)(void *ud, uint64_t index, const void *cmd);

/*
 * Entry hook: called on the applying thread once an entry is wholly in
 * effect (its transaction committed, the route matcher updated, the
 * observers told), and after a restore; `index` is then fsm_visible(). It
 * lets other threads wait for an index without polling. Must be quick.
 */
typedef void (*fsm_entry_fn)(void *ud, uint64_t index);

struct fsm_options {
    const char *dir;       /* the LMDB environment (created when missing) */
    uint64_t map_size;     /* initial LMDB map, 0 = 32 MiB (grows by doubling) */
    uint64_t max_map_size; /* 0 = no bound */
    bool sync_every_commit;
    fsm_observer_fn observer; /* may be NULL */
    void *observer_ud;
    fsm_entry_fn on_entry; /* may be NULL; gets observer_ud */
};

/* Open the tables in o->dir and load the route matcher from them. */
int fsm_open(struct fsm **out, const struct fsm_options *o, char *err, size_t errlen);
void fsm_close(struct fsm *f);

/*
 * Apply the entry at Raft index `index` (an entry made by cluster/cmd.h:
 * header, encoded CommandBatch, padding).
 * Returns 0 with *res filled (res may be NULL) when the entry was applied or
 * skipped as a replay; an entry that does not decode (bad header or protobuf, or more than
 * FSM_MAX_BATCH commands) is applied as an empty entry (res->n = 0, index
 * still recorded) so that all nodes stay equal.
 * -ENOMEM: an allocation failed (also the batch's decoding); nothing of the
 * entry is applied, the tables are as before it, and the caller applies it
 * again later (cluster/fsm_raft.c).
 * Another negative errno (-EIO, -ENOSPC) means the tables could not be
 * written: nothing of the entry is applied, and the state machine is
 * *broken*: it refuses every later entry with -EIO until fsm_restore
 * succeeds (the node must rebuild from a snapshot, see docs/cluster.md).
 */
int fsm_apply(struct fsm *f, uint64_t index, const void *buf, size_t len,
              struct fsm_batch_result *res);

/* The route matcher rebuilt from the table if an allocation failed while it
 * followed an entry (it then lacks routes the table has). 0 when it is
 * whole, or a negative errno (tried again on the next call). On the
 * applying thread: fsm_apply calls it, and the owner on each tick. */
int fsm_repair(struct fsm *f);

/* Whether fsm_open found the tables torn by a machine stop (or a failed
 * sync) and started them empty (storage/rtable.h): the owner's Raft
 * snapshot and log rebuild them. */
bool fsm_tables_reset(struct fsm *f);

/* True after a failed apply, until a successful restore. Any thread. */
bool fsm_broken(struct fsm *f);

/* The last applied index and the checksum of the tables at that index. */
uint64_t fsm_applied(struct fsm *f);
uint64_t fsm_checksum(struct fsm *f);
/* The last index whose entry is wholly in effect here: in the tables and in
 * the route matcher, its observers told (fsm_applied may be ahead of it
 * while an entry's routes are being mirrored). An atomic read, any thread:
 * what a node reports as applied when a SUBACK waits for its routes. */
uint64_t fsm_visible(struct fsm *f);
/* Both at once, from one read transaction (a consistent pair). */
int fsm_state(struct fsm *f, uint64_t *applied, uint64_t *checksum);
/* Recompute the checksum from every record; 0 or an error. */
int fsm_checksum_verify(struct fsm *f, uint64_t *computed);

/* A consistent serialisation of the tables (one read transaction); *buf is
 * malloc'ed, the caller frees it. */
int fsm_snapshot(struct fsm *f, void **buf, size_t *len);
/*
 * Replace the tables and the route matcher with a snapshot. -EINVAL for a
 * malformed one (nothing changes). Clears the broken state on success.
 * With keep_newer, a snapshot that the tables already contain is not
 * restored (*skipped set, may be NULL): the tables are not broken and have
 * applied a later index, or the same index with the same checksum. That is
 * the case of every restart (libraft restores its last snapshot, which was
 * taken from these tables, then replays the log after it); restoring anyway
 * would be correct but would rewrite every table at each start. The same
 * index with another checksum is a divergence: restored.
 */
int fsm_restore(struct fsm *f, const void *buf, size_t len, bool keep_newer, bool *skipped);

/* The index up to which every entry is reflected in the route matcher
 * (any thread, one atomic load). */
uint64_t fsm_routes_index(struct fsm *f);

/* The route matcher (owned by f, valid until fsm_close). */
struct routes *fsm_routes(struct fsm *f);

#ifndef NDEBUG
/* Tests of the divergence detector only: write a registry record outside
 * any Raft entry, so that this node's checksums differ from then on. */
int fsm_test_corrupt(struct fsm *f);
#endif

/* Whether the route table holds node's route of filter as the node's own:
 * 1 yes; 0 when it holds none, or one a NodeDown kept and counted (it goes
 * with the records that keep it, NodeDown.keepers); or a negative errno. */
int fsm_route_own(struct fsm *f, uint64_t node, const char *filter, size_t len);

/* The owner of client_id: 0 with node and epoch set, or -ENOENT. */
int fsm_registry_get(struct fsm *f, const char *client_id, size_t len, uint64_t *node,
                     uint64_t *epoch);
/* The same, and (stored not NULL) whether that claim said that its claimant
 * stores the session before answering its client (SessionClaim.stored). */
int fsm_registry_claim(struct fsm *f, const char *client_id, size_t len, uint64_t *node,
                       uint64_t *epoch, bool *stored);

/* The retained message of topic: 0 with *msg (an encoded
 * starling.cmd.RetainedMessage, malloc'ed, caller frees) and origin/seq, or
 * -ENOENT. */
int fsm_retained_get(struct fsm *f, const char *topic, size_t len, void **msg, size_t *msg_len,
                     uint64_t *origin, uint64_t *seq);

/* Call fn for each member record (an encoded starling.cmd.Member) in node id
 * order. fn returns 0 to go on. */
int fsm_members(struct fsm *f, int (*fn)(void *ud, uint64_t node, const void *member, size_t len),
                void *ud);
/* The operator's tables (RTABLE_ADMIN, node/tables.h). get: 0 with *val
 * (malloc'd, NUL-terminated) or -ENOENT; scan: each record of table in key
 * order (fn returns 0 to go on); empty: whether table has no record. */
int fsm_admin_get(struct fsm *f, unsigned table, const char *key, size_t klen, char **val);
int fsm_admin_scan(struct fsm *f, unsigned table,
                   int (*fn)(void *ud, const char *key, const char *val), void *ud);
bool fsm_admin_empty(struct fsm *f, unsigned table);

/* The session record of client_id (an encoded starling.cmd.SessionRecord,
 * malloc'ed, caller frees): 0, or -ENOENT. */
int fsm_session_record_get(struct fsm *f, const char *client_id, size_t len, void **rec,
                           size_t *rec_len);

/* The routes of `node` and the registry records that name it (a scan of the
 * registry: for the admin API, not for a hot path). */
int fsm_node_counts(struct fsm *f, uint64_t node, uint64_t *routes, uint64_t *sessions);
/* The sessions of `node` that expired after it was taken for dead
 * `elapsed_s` seconds ago: each registry record naming it whose session
 * record's expiry interval is finite and at most elapsed_s, fn(ud, id, len,
 * epoch) for each, at most `max` (fn returns 0 to take one more, non-zero
 * when it takes no more: that one not counted). Returns how many, or a
 * negative errno; *next_s: the least such interval above elapsed_s
 * (UINT64_MAX: none; elapsed_s: stopped, look again). Records without a
 * session record, or whose record another owner wrote (node, epoch), are
 * not judged. A scan of the registry: not for a hot path. */
typedef int (*fsm_expired_fn)(void *ud, const void *id, size_t len, uint64_t epoch);
int fsm_node_expired(struct fsm *f, uint64_t node, uint64_t elapsed_s, size_t max,
                     fsm_expired_fn fn, void *ud, uint64_t *next_s);
/* The distinct nodes the registry names (owners of sessions), at most max
 * into out: how many, or a negative errno. A scan of the registry. */
int fsm_registry_owners(struct fsm *f, uint64_t *out, size_t max);
/* The number of routes of `node` (a prefix scan; 0 on error). */
uint64_t fsm_node_routes(struct fsm *f, uint64_t node);

/* Number of session registry records / retained messages (for stats). */
int fsm_counts(struct fsm *f, uint64_t *routes, uint64_t *sessions, uint64_t *retained,
               uint64_t *members);

#endif
