/*
 * store.h - node-local durable storage over LMDB.
 *
 * What it is for: a QoS 1/2 message acknowledged to its publisher must survive
 * a crash of the broker (even SIGKILL) when a persistent session has to
 * receive it. The broker therefore sends PUBACK/PUBREC only after the store
 * reports that the message is committed for every persistent session that
 * must receive it.
 *
 * How it is used:
 *   - store_open() at start-up, then store_load() to rebuild sessions, their
 *     queued/inflight messages, QoS 2 receive state and retained messages,
 *     before any worker runs.
 *   - At run time any thread builds a struct store_batch (a list of puts and
 *     deletes), then hands it to store_submit(). One dedicated writer thread
 *     takes every pending batch, applies them all in one LMDB write
 *     transaction and commits once (group commit: one fsync for many
 *     operations from many connections), then calls each batch's completion
 *     callback, in submission order, on the writer thread.
 *   - store_close() at shutdown commits what is pending.
 *
 * Nothing here blocks a caller on disk I/O except store_open, store_load,
 * store_flush and store_close.
 */
#ifndef STARLING_STORE_H
#define STARLING_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metric.h"

#include "msg.h"

/* The version of the on-disk format this build reads and writes. */
#define STORE_FORMAT_VERSION 1

struct store;
struct store_batch;

enum store_sync {
    /* Every commit is fsync'ed before its callbacks run (durable against
     * power loss). */
    STORE_SYNC_ALWAYS,
    /* Commits are written to the OS (they survive a crash of the process,
     * not of the machine) and fsync'ed at most sync_interval_ms later. */
    STORE_SYNC_INTERVAL,
    /* Commits are written to the OS and never fsync'ed by the store. */
    STORE_SYNC_NONE,
};

struct store_options {
    /* Directory of the environment; created (with its parents) if missing.
     * Holds data.mdb, lock.mdb, starling.lock and reserve. */
    const char *dir;
    /* Initial size of the memory map in bytes; 0 = 64 MiB. The map doubles
     * whenever a commit does not fit. */
    uint64_t map_size;
    /* Upper bound for map growth in bytes; 0 = no bound. A commit that does
     * not fit in max_map_size (minus the reserve, see below) fails with
     * -ENOSPC. */
    uint64_t max_map_size;
    /* Space held back for batches made only of deletions, so that space can
     * still be freed when storage is full: a file DIR/reserve of this size
     * (given up when the disk is full, re-created when there is room again)
     * and, when max_map_size is set, the last min(reserve_size,
     * max_map_size / 4) bytes of the map. 0 = 1 MiB. */
    uint64_t reserve_size;
    enum store_sync sync;
    /* For STORE_SYNC_INTERVAL; 0 = 1000 ms. */
    uint32_t sync_interval_ms;
};

/* One subscription of a persistent session. */
struct store_sub {
    const char *filter; /* not NUL-terminated */
    uint16_t len;
    uint8_t options; /* MQTT 5.0 subscription options byte (QoS, NL, RAP, RH) */
    uint32_t sub_id; /* subscription identifier, 0 = none */
};

/* A range of message identities a session got (node/msg_seen.h): the
 * publish numbers lo..hi of origin node `node`. */
struct store_seen {
    uint64_t node, lo, hi;
};

/* A persistent session. */
struct store_session {
    uint8_t version;             /* MQTT protocol level: 3, 4 or 5 */
    uint32_t expiry_interval;    /* session expiry interval in seconds */
    uint64_t disconnected_at_ms; /* realtime clock ms, 0 = connected */
    uint32_t n_subs;
    const struct store_sub *subs; /* n_subs entries */
    /* Who the session's client is, for the ACL of its deliveries (its user
     * name, or its certificate's identity): user_len bytes, not
     * NUL-terminated; NULL = anonymous (also for a record written before
     * the user name was stored, record version 1). */
    const char *user;
    uint16_t user_len;
    /* The identities of the messages it got since it last moved between
     * cluster nodes, so that a copy of one that comes again after a restart
     * is still taken once (node/msg_seen.h); n_seen 0 for a record written
     * before they were stored (record version 1 and 2). */
    uint32_t n_seen;
    const struct store_seen *seen;
    /* The epoch of the cluster claim the session was last granted with (0:
     * none known, also for a record written before it was stored, record
     * version 1 to 3): a copy of it claimed away judges after a restart, as
     * before it, what a later owner had (node/cluster_session.c). */
    uint64_t epoch;
    /* Its cluster wait for an old owner's QoS 2 ids (node/session.h,
     * blind_until), so that a restart during the wait keeps it: until
     * wait_until_ms (realtime clock ms; 0: no wait, also for a record
     * written before it was stored, record version 1 to 4) for the ids of
     * node wait_node's copy of claim wait_epoch (0: not known). wait_told:
     * those ids came, and wait_ids are the ones not used yet; else wait_ids
     * are the ids whose PUBREL came meanwhile. */
    uint64_t wait_until_ms;
    uint64_t wait_node;
    uint64_t wait_epoch;
    bool wait_told;
    uint32_t n_wait_ids;
    const uint16_t *wait_ids;
};

/* A queued or inflight outgoing message of a session. */
struct store_msg {
    uint8_t state;  /* enum msg_state (msg.h) */
    uint16_t pid;   /* packet identifier, 0 while queued */
    uint8_t qos;    /* QoS of the delivery (may be lower than m->qos) */
    bool retain;    /* RETAIN flag of the delivery */
    uint16_t n_ids; /* subscription identifiers to send with it */
    const uint32_t *ids;
    /* topic, payload, properties, expiry_at, the message's cluster
     * identity m->id_node / m->id_seq (0: none, also for a record written
     * before it was stored, record version 1), its route table index
     * m->route_index (0: unknown, also for record versions 1 and 2) and
     * the other nodes its origin forwarded it to, m->also_to /
     * m->n_also_to (none listed for record versions 1 to 3) */
    const struct msg *m;
};

/*
 * Open (creating if needed) the store in o->dir and start its writer thread.
 *
 * Caller: start-up code, once per directory (a second open of the same
 * directory, from this or another process, fails with -EBUSY).
 * On success *out owns the store (free with store_close) and 0 is returned.
 * On failure returns a negative errno and writes a one-line message starting
 * with the directory into err (errlen bytes, may be 0):
 *   -EPROTO  the store has a format version this build does not read, or the
 *            directory holds an LMDB environment that is not a store; nothing
 *            is written to data.mdb;
 *   -EIO     data.mdb is corrupt or not an LMDB file;
 *   -EBUSY   the directory is in use by another store;
 *   -errno   the directory cannot be created, opened or written.
 */
int store_open(struct store **out, const struct store_options *o, char *err, size_t errlen);

/*
 * Commit every batch submitted so far (their callbacks run), stop the writer
 * thread, sync (except with STORE_SYNC_NONE) and close the environment, then
 * free s. Caller: shutdown code, after every thread that submits has stopped
 * submitting; never from a completion callback. s may be NULL.
 */
void store_close(struct store *s);

/*
 * Batches. Any thread may build a batch; a batch belongs to one thread at a
 * time. Operations are applied in the order they were added. The put and del
 * functions copy everything they are given (the caller keeps ownership of its
 * arguments, a struct msg is not referenced) and return 0, or -ENOMEM /
 * -EINVAL; after a failure the batch is poisoned: when submitted, its
 * callback gets that error and none of its operations are applied.
 */

/* A new empty batch, or NULL if out of memory. Owned by the caller until
 * passed to store_submit or store_batch_free. */
struct store_batch *store_batch_new(void);
/* Free a batch that was never submitted. b may be NULL. */
void store_batch_free(struct store_batch *b);
/* Number of operations in b. */
size_t store_batch_ops(const struct store_batch *b);
/* 0, or the error of the first operation that failed on b (-ENOMEM,
 * -EINVAL): such a batch has lost an operation and fails as a whole when
 * submitted, even with no operation left in it. */
int store_batch_error(const struct store_batch *b);
/* Mark b failed with err (< 0) when the caller could not even build an
 * operation for it: store_submit then fails b as a whole. */
void store_batch_fail(struct store_batch *b, int err);

/* Create or replace the session of client_id (id_len bytes, any length). */
int store_session_put(struct store_batch *b, const char *client_id, uint16_t id_len,
                      const struct store_session *rec);
/* Delete the session of client_id with all its messages and QoS 2 entries. */
int store_session_del(struct store_batch *b, const char *client_id, uint16_t id_len);
/* Create or replace message seq of the session of client_id. */
int store_msg_put(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t seq,
                  const struct store_msg *rec);
/* Delete message seq of the session of client_id (no error if absent). */
int store_msg_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t seq);
/* Record that the QoS 2 PUBLISH pid from client_id was received (awaiting
 * PUBREL). */
int store_qos2_put(struct store_batch *b, const char *client_id, uint16_t id_len, uint16_t pid);
/* Forget QoS 2 packet identifier pid of client_id (no error if absent). */
int store_qos2_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint16_t pid);
/* Create or replace the retained message of m's topic (m->topic_len > 0). */
int store_retained_put(struct store_batch *b, const struct msg *m);
/* Delete the retained message of topic (no error if absent). */
int store_retained_del(struct store_batch *b, const char *topic, uint16_t len);

/*
 * Hand b to the writer thread; takes ownership of b (do not touch it again).
 * Any thread may call it, it never waits for disk I/O. The writer commits b,
 * grouped with other pending batches, then calls done(ud, status) ON THE
 * WRITER THREAD, exactly once, in submission order: status 0 when every
 * operation of b is committed, else a negative errno and none of them is:
 *   -ENOSPC  the disk is full or max_map_size is reached (batches that fit,
 *            e.g. deletions, still succeed);
 *   -EIO     I/O error or corruption; -E2BIG the batch alone is too large
 *            for one transaction; -ENOMEM / -EINVAL a put on b had failed.
 * done must be quick and may only build and submit new batches
 * (store_batch_new, the put/del functions, store_submit, store_batch_free);
 * it must not call store_flush, store_close or store_load. done may be NULL.
 */
void store_submit(struct store *s, struct store_batch *b, void (*done)(void *ud, int status),
                  void *ud);

/* Block until every batch submitted (by any thread) before this call has
 * been committed and its callback has returned. Any thread except the
 * writer thread (so never from a completion callback). */
void store_flush(struct store *s);

/*
 * Recovery. store_load calls the callbacks with every stored record, in this
 * order: all sessions (ordered by client id length, then bytes); all messages
 * (grouped by session in the same order, each session's messages by
 * ascending seq); all QoS 2 entries (same grouping, by ascending pid); all
 * retained messages. Messages and QoS 2 entries whose session record is
 * missing are reported too. Expired messages are reported as stored (the
 * caller checks expiry_at). Pointers passed to the callbacks (id, rec and
 * everything it points to, m) are valid only during the callback; for a
 * struct msg the callback takes its own reference (msg_ref) to keep it.
 * A callback returning non-zero stops the load, and store_load returns that
 * value. A NULL callback skips its records.
 */
struct store_loader {
    void *ud;
    int (*session)(void *ud, const char *id, uint16_t len, const struct store_session *rec);
    int (*msg)(void *ud, const char *id, uint16_t len, uint64_t seq, const struct store_msg *rec);
    int (*qos2)(void *ud, const char *id, uint16_t len, uint16_t pid);
    int (*retained)(void *ud, struct msg *m);
};

/* Read everything stored (a consistent snapshot of the last commit).
 * Caller: start-up code before workers start submitting; it may run while
 * batches are committed (it holds off map growth meanwhile) but is meant for
 * recovery. Returns 0, a callback's non-zero value, -EIO on a corrupt record,
 * -EPROTO on a record of an unknown version, or -ENOMEM. */
int store_load(struct store *s, const struct store_loader *l);

/*
 * The cluster's forwarding channel (node/cluster_fwd.c). The outbox holds
 * the QoS 1/2 forwards a destination has not acknowledged yet: key u64be
 * destination node, u64be seq (so one node's rows are in seq order), value
 * the caller's bytes. The inbox holds per origin node the highest seq
 * applied here (key u64be origin, value u64le seq).
 */
/* Create or replace row (node, seq) of the outbox. */
int store_outbox_put(struct store_batch *b, uint64_t node, uint64_t seq, const void *data,
                     size_t len);
/* Delete every outbox row of node with a seq at most `seq` (idempotent). */
int store_outbox_del_upto(struct store_batch *b, uint64_t node, uint64_t seq);
/* Record that seq is the highest applied from origin. */
int store_fwd_in_put(struct store_batch *b, uint64_t origin, uint64_t seq);

/* Run fn on the committed outbox rows of node whose seq is above `after`, in
 * seq order, at most max of them (0: no limit); node 0: every row of every
 * node (node, then seq order; `after` is ignored). One read transaction, any
 * thread except the writer's; fn must not use the store. fn returns 0 to go
 * on, > 0 to stop (the scan returns 0), < 0 to stop with that error.
 * Returns 0, -EIO (corrupt row) or -ENOMEM. */
typedef int (*store_outbox_fn)(void *ud, uint64_t node, uint64_t seq, const void *data, size_t len);
int store_outbox_scan(struct store *s, uint64_t node, uint64_t after, size_t max,
                      store_outbox_fn fn, void *ud);
/* Run fn on every (origin, seq) of the inbox (same rules). */
int store_fwd_in_scan(struct store *s, int (*fn)(void *ud, uint64_t origin, uint64_t seq),
                      void *ud);

/*
 * The QoS 2 packet ids of the cluster's copies of sessions that ended here
 * (moved out, or folded into a later claim's session on this node), kept
 * for twice cluster_resend_wait so that a restart within it does not forget them
 * (node/cluster_session.c, struct cn_handed). Key idkey(client id), u64be
 * the copy's claim (epoch); value: version, the id when hashed, u64le
 * until_ms (wall clock, milliseconds), u8 folded, u16le n, n u16le ids;
 * record version 2 (REC_HANDED_VERSION) adds u64le wait_node, then when
 * not 0: u64le wait_epoch, u64le wait_until_ms, u16le n_wait_released,
 * n_wait_released u16le ids.
 */
struct store_handed {
    const char *client_id;
    uint16_t id_len;
    uint64_t epoch;
    uint64_t until_ms; /* wall clock (ms): kept until then */
    bool folded;
    uint32_t n_ids; /* at most 65535 */
    const uint16_t *ids;
    /* the copy still waited for wait_node's QoS 2 ids of claim wait_epoch
     * (until wait_until_ms, wall clock; the PUBRELs that came meanwhile:
     * wait_released, at most 65535); wait_node 0: no wait (also for a
     * version 1 row) */
    uint64_t wait_node, wait_epoch, wait_until_ms;
    uint32_t n_wait_released;
    const uint16_t *wait_released;
};
/* Create or replace the row of (h->client_id, h->epoch). */
int store_handed_put(struct store_batch *b, const struct store_handed *h);
/* Delete the row of (client_id, epoch) (idempotent). */
int store_handed_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t epoch);
/* Run fn on every committed row (rules of store_outbox_scan; h and what it
 * points to last only for the call). -EIO on a corrupt row, -EPROTO on an
 * unknown record version. */
typedef int (*store_handed_fn)(void *ud, const struct store_handed *h);
int store_handed_scan(struct store *s, store_handed_fn fn, void *ud);

/* The node's boot counter: max(stored + 1, floor), stored and committed
 * before this returns (*out). Start-up code, not the writer thread.
 * 0 or a negative errno (then nothing changed). */
int store_boot_next(struct store *s, uint64_t floor, uint64_t *out);

/* Run fn(ud, arg, status) on the writer thread once b's commit is decided
 * (status as for store_submit's done, before done), or with -ECANCELED when
 * b is freed without being submitted. Quick, and only the functions done
 * may call, or that hand work to another thread without waiting for it (the
 * forwarding outbox's hook queues its frames on the cluster channel). 0, or
 * -ENOMEM (fn was then called with -ENOMEM and b fails). */
int store_batch_hook(struct store_batch *b, void (*fn)(void *ud, uint64_t arg, int status),
                     void *ud, uint64_t arg);
/* Room for one more hook on b, so that the next store_batch_hook on it
 * cannot fail. 0, or -ENOMEM (b then fails). */
int store_batch_hook_room(struct store_batch *b);

/* Counters since store_open (for $SYS and benchmarks). */
struct store_stats {
    uint64_t commits;       /* successful write transactions */
    uint64_t batches;       /* batches committed */
    uint64_t failed;        /* batches whose callback got an error */
    uint64_t ops;           /* operations committed */
    uint64_t bytes_written; /* key + value bytes of the committed puts */
    uint64_t map_size;      /* current size of the memory map */
    uint64_t fsyncs;        /* sync points: one per commit with ALWAYS,
                               one per interval sync with INTERVAL */
    /* How long a successful write transaction took to apply and commit
     * (its fsync included with ALWAYS), and an interval sync (INTERVAL). */
    struct metric_hist_snap commit_time, sync_time;
};

/* Copy the counters into *out. Any thread. */
void store_get_stats(struct store *s, struct store_stats *out);

/* A static description of a status returned by this module (negative errno). */
const char *store_strerror(int err);

#endif
