/*
 * rtable.h - the replicated tables of the cluster, over LMDB.
 *
 * What it is for: the state that the Raft group replicates (routes, session
 * registry, retained messages, members, persistent session records) lives
 * in its own LMDB environment on every node (DATA_DIR/cluster/fsm, next to
 * the Raft log), written only by
 * the state machine (cluster/fsm.h), on the Raft thread. This module knows
 * nothing of commands: it stores records (table, key, value) and keeps, in
 * the same transactions:
 *   - the Raft index of the last applied entry (so that an entry applied
 *     before a restart is skipped when the log is replayed), and
 *   - a checksum of all records, maintained incrementally: the sum modulo
 *     2^64 of the first 8 bytes (little endian) of
 *     SHA-256(u8 table || u32le klen || key || value) over every record. A
 *     sum does not depend on the order of insertion, so two nodes that
 *     applied the same entries have the same checksum (the divergence
 *     detector compares it, see docs/cluster.md).
 *
 * Keys are any byte strings up to RTABLE_MAX_KEY bytes; values up to
 * RTABLE_MAX_VALUE. LMDB keys are limited to 511 bytes: a key of at most
 * 480 bytes is the LMDB key itself; a longer one is stored as its first 8
 * bytes followed by its SHA-256 and zero padding to 490 bytes (no literal key
 * has that length), so a prefix scan of up to 8 bytes still finds it. Every
 * LMDB value holds the full key, so iteration returns the real key.
 *
 * Threads: one writer thread (the Raft thread) opens write transactions;
 * any thread may open read transactions (each used by one thread at a time);
 * a thread of the tables' own fdatasyncs them after commits (see
 * rtable_options.sync_every_commit).
 * Errors are 0 or a negative errno.
 */
#ifndef STARLING_RTABLE_H
#define STARLING_RTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RTABLE_MAX_KEY 65535u
#define RTABLE_MAX_VALUE (64u << 20)
#define RTABLE_FORMAT_VERSION 1

/* The tables. Numbers are part of the checksum and the snapshot format. */
enum rtable_db {
    RTABLE_ROUTES = 1,   /* u64be node || filter -> "" */
    RTABLE_REGISTRY = 2, /* client id -> u64le node, u64le epoch [, u8 flags] */
    RTABLE_RETAINED = 3, /* topic -> u64le origin, u64le seq, encoded RetainedMessage */
    RTABLE_MEMBERS = 4,  /* u64be node -> encoded Member */
    RTABLE_SESSIONS = 5, /* client id -> encoded SessionRecord (persistent sessions) */
    RTABLE_ADMIN = 6,    /* u8 table || key -> JSON text (node/tables.h) */
};
#define RTABLE_N_DB 6

struct rtable;
struct rtable_txn;

struct rtable_options {
    const char *dir;       /* created (with parents) when missing */
    uint64_t map_size;     /* initial map size, 0 = 32 MiB; doubles when full */
    uint64_t max_map_size; /* 0 = no bound; beyond it commits fail -EFBIG */
    /* true: every commit waits for its fdatasync (LMDB's default).
     * false (default): a commit does not wait for the disk (MDB_NOSYNC); a
     * thread of the tables fdatasyncs after the commits, one sync for all
     * those made since the last. A process that dies loses nothing; a
     * machine that stops while the tables are open may leave them torn, so
     * the next open finds the mark of that boot and starts from empty
     * tables (rtable_was_reset): the owner rebuilds them from its durable
     * log (Raft's snapshot and log, for the state machine). A failed sync
     * makes every later commit fail with -EIO, and the next open start
     * empty too. */
    bool sync_every_commit;
};

/* Open or create. On failure a one-line message goes to err. -EPROTO: the
 * directory holds tables of another format version. */
int rtable_open(struct rtable **out, const struct rtable_options *o, char *err, size_t errlen);
/* Close (after a last fdatasync); no transaction may be open. t may be
 * NULL. */
void rtable_close(struct rtable *t);
/* Whether rtable_open deleted the tables it found: the machine had stopped
 * while they were open, or a sync had failed (sync_every_commit false). */
bool rtable_was_reset(const struct rtable *t);

/* Last applied Raft index and the checksum as of the last commit (any
 * thread; read from a short read transaction). */
uint64_t rtable_applied(struct rtable *t);
uint64_t rtable_checksum(struct rtable *t);

/* Begin a write transaction (writer thread only) or a read transaction (any
 * thread). Returns 0 or -EIO / -ENOMEM. */
int rtable_begin(struct rtable *t, struct rtable_txn **out);
int rtable_begin_read(struct rtable *t, struct rtable_txn **out);
/* Commit (write) or end (read) the transaction and free x. A failed commit
 * leaves nothing changed: -EFBIG means the map is full (call rtable_grow
 * and redo the work), -ENOSPC that the disk is full. */
int rtable_commit(struct rtable_txn *x);
/* Abandon x (nothing written) and free it. x may be NULL. */
void rtable_abort(struct rtable_txn *x);
/* Double the map (up to max_map_size): -EFBIG when it cannot. Writer thread,
 * with no transaction of this thread open. Read transactions of other threads
 * are waited for. */
int rtable_grow(struct rtable *t);

/* The applied index and checksum as seen by x; set_applied in a write
 * transaction records the index of the entry being applied. */
uint64_t rtable_txn_applied(struct rtable_txn *x);
uint64_t rtable_txn_checksum(struct rtable_txn *x);
void rtable_txn_set_applied(struct rtable_txn *x, uint64_t index);

/* Get the value of key. *val points into the map and stays valid until x
 * ends or writes. Returns 0, or -ENOENT. */
int rtable_get(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen,
               const void **val, size_t *vlen);
/* Create or replace. Returns 0, -EINVAL (too long), -EFBIG (map full: abort,
 * grow, redo), -ENOSPC (disk full), -EIO, -EROFS (read transaction). */
int rtable_put(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen,
               const void *val, size_t vlen);
/* Delete. Returns 0, -ENOENT, -EFBIG, -ENOSPC, -EIO, -EROFS. */
int rtable_del(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen);

/* Call fn for every record of db whose key starts with prefix (plen <= 8, or
 * 0 for all), in LMDB key order. fn returns 0 to go on, anything else stops
 * the scan and is returned. Pointers are valid during the call only; fn must
 * not write through x. */
typedef int (*rtable_visit_fn)(void *ud, const void *key, size_t klen, const void *val,
                               size_t vlen);
int rtable_scan(struct rtable_txn *x, enum rtable_db db, const void *prefix, size_t plen,
                rtable_visit_fn fn, void *ud);

/* Number of records of db (0 on error). */
uint64_t rtable_count(struct rtable_txn *x, enum rtable_db db);

/* Recompute the checksum from every record (what the incremental checksum
 * must equal). */
int rtable_checksum_compute(struct rtable_txn *x, uint64_t *out);

/*
 * Snapshot: every table, the applied index and the checksum, read in one
 * read transaction, serialised as
 *   "STRT" u32le version, u64le applied, u64le checksum, u64le n_records,
 *   n x (u8 table, u32le klen, key, u32le vlen, value)
 * *buf is malloc'ed (caller frees). Any thread.
 */
int rtable_snapshot(struct rtable *t, void **buf, size_t *len);
/* The applied index and checksum a snapshot holds: 0, or -EINVAL when buf
 * is not a snapshot of this format. */
int rtable_snapshot_header(const void *buf, size_t len, uint64_t *applied, uint64_t *checksum);
/* Replace every table with the snapshot in one write transaction (writer
 * thread). A malformed snapshot, or one whose records do not sum to its
 * checksum, is refused with -EINVAL and nothing changes. */
int rtable_restore(struct rtable *t, const void *buf, size_t len);

#endif
