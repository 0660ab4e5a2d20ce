/*
 * store.c - node-local durable storage over LMDB (see store.h).
 *
 * Design
 *
 * One LMDB environment per node directory, with five named databases:
 * "meta" (key "format" = u32 LE STORE_FORMAT_VERSION), "sessions", "msgs",
 * "qos2" and "retained". Keys and values are described in store_rec.h.
 *
 * Writes: callers encode their operations into a struct store_batch on their
 * own thread (keys and values are built there, including SHA-256 of long
 * ids), so the writer thread only copies bytes into LMDB. store_submit
 * appends the batch to a FIFO under a mutex and signals the writer thread.
 * The writer takes ALL pending batches, applies them in one write
 * transaction, commits (one fsync with STORE_SYNC_ALWAYS; MDB_NOSYNC
 * otherwise, plus mdb_env_sync every sync_interval_ms with
 * STORE_SYNC_INTERVAL), then runs the callbacks in submission order. It is
 * the only thread that ever opens a write transaction.
 *
 * Failures never lose a batch silently:
 *   - MDB_MAP_FULL: abort, double the map (mdb_env_set_mapsize; legal
 *     because the writer is the only writer and has no transaction open;
 *     store_load holds map_mu so that no read transaction is open during
 *     the resize) and retry the same batches;
 *   - if the map cannot grow, the disk is full, or any other error: the
 *     group is aborted and every batch is retried in its own transaction,
 *     so that only the batches that do not fit fail and each callback gets
 *     its own status;
 *   - deleting needs fresh pages too (LMDB copies on write, and pages freed
 *     by the last commit cannot be reused by the next one), so a full store
 *     could refuse the deletions that would free it. A reserve is kept for
 *     batches made only of deletions: the last part of max_map_size, and
 *     a preallocated file DIR/reserve that is deleted when such a batch hits
 *     a full disk (and re-created once there is room again).
 * LMDB reports a short write (typical of a full disk) as EIO; when the
 * filesystem then has less free space than the transaction needed, the
 * store reports -ENOSPC instead.
 *
 * Durability: a commit is in the OS page cache before callbacks run in every
 * sync mode, so it survives SIGKILL of the broker; STORE_SYNC_ALWAYS also
 * survives power loss.
 */
#include "store.h"
#include "store_rec.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAP_SIZE (64ull << 20)
#define DEFAULT_SYNC_INTERVAL_MS 1000u
#define DEFAULT_RESERVE (1ull << 20)

enum db {
    DB_META,
    DB_SESSIONS,
    DB_MSGS,
    DB_QOS2,
    DB_RETAINED,
    DB_OUTBOX,
    DB_FWD_IN,
    DB_HANDED,
    DB_COUNT
};
static const char *const db_names[DB_COUNT] = {"meta",     "sessions", "msgs",   "qos2",
                                               "retained", "outbox",   "fwd_in", "handed"};

enum op_kind {
    OP_PUT,
    OP_DEL,
    OP_SESSION_DEL, /* key = idkey: session, then msgs and qos2 by prefix */
    OP_DEL_UPTO,    /* key = u64be node, u64be seq: every row of node up to seq */
};

/* A function run once the batch is committed or failed (store_batch_hook). */
struct store_hook {
    void (*fn)(void *ud, uint64_t arg, int status);
    void *ud;
    uint64_t arg;
};

/* One operation; key and value are byte ranges of the batch buffer. */
struct op {
    uint8_t kind;
    uint8_t db;
    size_t koff, klen;
    size_t voff, vlen;
};

struct store_batch {
    struct store_batch *next;
    void (*done)(void *ud, int status);
    void *ud;
    int err; /* first put failure: the batch fails as a whole */
    int status;
    struct op *ops;
    size_t nops, capops;
    struct rbuf buf;
    uint64_t put_bytes; /* key + value bytes of the puts */
    bool has_puts;      /* false: only deletions (may use the reserve) */
    struct store_hook *hooks;
    size_t nhooks, caphooks;
};

struct store {
    char *dir;
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    enum store_sync sync;
    uint32_t sync_interval_ms;
    uint64_t max_map_size;
    uint64_t map_soft_limit; /* max_map_size minus the reserve; 0 = none */
    uint64_t reserve_size;   /* size of DIR/reserve */
    uint64_t map_size;       /* writer thread only (after open) */
    bool reserve_released;   /* writer only: DIR/reserve was given up */
    uint64_t reserve_retry_ms;
    bool broken; /* writer only: the map was lost in a failed resize */
    int lock_fd;

    pthread_t thread;
    pthread_mutex_t mu; /* protects everything below */
    pthread_cond_t work_cv;
    pthread_cond_t done_cv;
    struct store_batch *head, *tail;
    uint64_t submitted, completed;
    bool stopping;
    struct store_stats stats;

    /* Held by store_load for its whole read transaction and by the writer
     * around mdb_env_set_mapsize. */
    pthread_mutex_t map_mu;
};

/* ---- errors ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *store_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case -ENOSPC:
        return "storage full (disk full or map size limit reached)";
    case -EIO:
        return "storage I/O error or corrupt data";
    case -EPROTO:
        return "unknown storage format or record version";
    case -EBUSY:
        return "storage directory in use by another store";
    case -E2BIG:
        return "batch too large for one storage transaction";
    case -ENOMEM:
        return "out of memory";
    case -EINVAL:
        return "invalid argument";
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown storage error";
}

/* Is rc an LMDB-specific code (as opposed to an errno)? */
static bool is_mdb_code(int rc)
{
    return rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE;
}

/* ---- batches (any thread) ---- */

struct store_batch *store_batch_new(void)
{
    return calloc(1, sizeof(struct store_batch));
}

static void run_hooks(struct store_batch *b, int status)
{
    for (size_t i = 0; i < b->nhooks; i++)
        b->hooks[i].fn(b->hooks[i].ud, b->hooks[i].arg, status);
    b->nhooks = 0;
}

void store_batch_free(struct store_batch *b)
{
    if (!b)
        return;
    run_hooks(b, -ECANCELED); /* never submitted */
    free(b->hooks);
    rbuf_free(&b->buf);
    free(b->ops);
    free(b);
}

size_t store_batch_ops(const struct store_batch *b)
{
    return b->nops;
}

int store_batch_error(const struct store_batch *b)
{
    return b->err;
}

void store_batch_fail(struct store_batch *b, int err)
{
    if (b && !b->err && err < 0)
        b->err = err;
}

/* Start an operation: returns it with koff set, or NULL (batch poisoned). */
static struct op *op_begin(struct store_batch *b, enum op_kind kind, enum db db)
{
    if (b->err)
        return NULL;
    if (b->nops == b->capops) {
        size_t cap = b->capops ? b->capops * 2 : 8;
        struct op *ops = realloc(b->ops, cap * sizeof(*ops));
        if (!ops) {
            b->err = -ENOMEM;
            return NULL;
        }
        b->ops = ops;
        b->capops = cap;
    }
    struct op *op = &b->ops[b->nops];
    memset(op, 0, sizeof(*op));
    op->kind = (uint8_t)kind;
    op->db = (uint8_t)db;
    op->koff = b->buf.b.len;
    return op;
}

/* The key is complete: the value starts here. */
static void op_key_done(struct store_batch *b, struct op *op)
{
    op->klen = b->buf.b.len - op->koff;
    op->voff = b->buf.b.len;
}

/* The value is complete: commit the operation to the batch. */
static int op_end(struct store_batch *b, struct op *op)
{
    if (b->buf.oom) {
        b->err = -ENOMEM;
        return b->err;
    }
    op->vlen = b->buf.b.len - op->voff;
    if (op->kind == OP_PUT) {
        b->put_bytes += op->klen + op->vlen;
        b->has_puts = true;
    }
    b->nops++;
    return 0;
}

static int bad_arg(struct store_batch *b)
{
    if (b && !b->err)
        b->err = -EINVAL;
    return -EINVAL;
}

int store_session_put(struct store_batch *b, const char *client_id, uint16_t id_len,
                      const struct store_session *rec)
{
    if (!b || (!client_id && id_len) || !rec || (rec->n_subs && !rec->subs))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_SESSIONS);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    op_key_done(b, op);
    rec_put_header(&b->buf, REC_SESSION_VERSION, client_id, id_len);
    rec_put_session(&b->buf, rec);
    return op_end(b, op);
}

int store_session_del(struct store_batch *b, const char *client_id, uint16_t id_len)
{
    if (!b || (!client_id && id_len))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_SESSION_DEL, DB_SESSIONS);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    op_key_done(b, op);
    return op_end(b, op);
}

int store_msg_put(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t seq,
                  const struct store_msg *rec)
{
    if (!b || (!client_id && id_len) || !rec || !rec->m || (rec->n_ids && !rec->ids))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_MSGS);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    rbuf_be64(&b->buf, seq);
    op_key_done(b, op);
    rec_put_header(&b->buf, REC_MSG_VERSION, client_id, id_len);
    rec_put_msg(&b->buf, rec);
    return op_end(b, op);
}

int store_msg_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t seq)
{
    if (!b || (!client_id && id_len))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_DEL, DB_MSGS);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    rbuf_be64(&b->buf, seq);
    op_key_done(b, op);
    return op_end(b, op);
}

int store_qos2_put(struct store_batch *b, const char *client_id, uint16_t id_len, uint16_t pid)
{
    if (!b || (!client_id && id_len))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_QOS2);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    rbuf_be16(&b->buf, pid);
    op_key_done(b, op);
    rec_put_header(&b->buf, REC_VERSION, client_id, id_len);
    return op_end(b, op);
}

int store_qos2_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint16_t pid)
{
    if (!b || (!client_id && id_len))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_DEL, DB_QOS2);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, client_id, id_len);
    rbuf_be16(&b->buf, pid);
    op_key_done(b, op);
    return op_end(b, op);
}

int store_retained_put(struct store_batch *b, const struct msg *m)
{
    if (!b || !m || m->topic_len == 0)
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_RETAINED);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, msg_topic(m), m->topic_len);
    op_key_done(b, op);
    rbuf_u8(&b->buf, REC_VERSION);
    rec_put_message(&b->buf, m);
    return op_end(b, op);
}

int store_retained_del(struct store_batch *b, const char *topic, uint16_t len)
{
    if (!b || !topic || len == 0)
        return bad_arg(b);
    struct op *op = op_begin(b, OP_DEL, DB_RETAINED);
    if (!op)
        return b->err;
    rec_put_idkey(&b->buf, topic, len);
    op_key_done(b, op);
    return op_end(b, op);
}

int store_batch_hook_room(struct store_batch *b)
{
    if (!b)
        return bad_arg(b);
    if (b->nhooks == b->caphooks) {
        size_t cap = b->caphooks ? b->caphooks * 2 : 4;
        struct store_hook *v = realloc(b->hooks, cap * sizeof(*v));
        if (!v) {
            if (!b->err)
                b->err = -ENOMEM;
            return -ENOMEM;
        }
        b->hooks = v;
        b->caphooks = cap;
    }
    return 0;
}

int store_batch_hook(struct store_batch *b, void (*fn)(void *ud, uint64_t arg, int status),
                     void *ud, uint64_t arg)
{
    if (!b || !fn)
        return bad_arg(b);
    if (store_batch_hook_room(b) < 0) {
        fn(ud, arg, -ENOMEM);
        return -ENOMEM;
    }
    b->hooks[b->nhooks++] = (struct store_hook){fn, ud, arg};
    return 0;
}

/* ---- the forwarding outbox and inbox of the cluster ---- */

static void put_node_seq(struct rbuf *buf, uint64_t node, uint64_t seq)
{
    rbuf_be64(buf, node);
    rbuf_be64(buf, seq);
}

int store_outbox_put(struct store_batch *b, uint64_t node, uint64_t seq, const void *data,
                     size_t len)
{
    if (!b || (!data && len) || len > UINT32_MAX)
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_OUTBOX);
    if (!op)
        return b->err;
    put_node_seq(&b->buf, node, seq);
    op_key_done(b, op);
    rbuf_put(&b->buf, data, len);
    return op_end(b, op);
}

int store_outbox_del_upto(struct store_batch *b, uint64_t node, uint64_t seq)
{
    if (!b)
        return bad_arg(b);
    struct op *op = op_begin(b, OP_DEL_UPTO, DB_OUTBOX);
    if (!op)
        return b->err;
    put_node_seq(&b->buf, node, seq);
    op_key_done(b, op);
    return op_end(b, op);
}

int store_fwd_in_put(struct store_batch *b, uint64_t origin, uint64_t seq)
{
    if (!b)
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_FWD_IN);
    if (!op)
        return b->err;
    rbuf_be64(&b->buf, origin);
    op_key_done(b, op);
    rbuf_le64(&b->buf, seq);
    return op_end(b, op);
}

/* ---- the QoS 2 ids of the cluster's ended copies ---- */

static void put_handed_key(struct rbuf *buf, const char *client_id, uint16_t id_len, uint64_t epoch)
{
    rec_put_idkey(buf, client_id, id_len);
    rbuf_be64(buf, epoch);
}

int store_handed_put(struct store_batch *b, const struct store_handed *h)
{
    if (!b || !h || (!h->client_id && h->id_len) || (!h->ids && h->n_ids) ||
        h->n_ids > UINT16_MAX ||
        (h->wait_node &&
         ((!h->wait_released && h->n_wait_released) || h->n_wait_released > UINT16_MAX)))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_PUT, DB_HANDED);
    if (!op)
        return b->err;
    put_handed_key(&b->buf, h->client_id, h->id_len, h->epoch);
    op_key_done(b, op);
    rec_put_header(&b->buf, REC_HANDED_VERSION, h->client_id, h->id_len);
    rbuf_le64(&b->buf, h->until_ms);
    rbuf_u8(&b->buf, h->folded ? 1 : 0);
    rbuf_le16(&b->buf, (uint16_t)h->n_ids);
    for (uint32_t i = 0; i < h->n_ids; i++)
        rbuf_le16(&b->buf, h->ids[i]);
    /* REC_HANDED_VERSION 2 */
    rbuf_le64(&b->buf, h->wait_node);
    if (h->wait_node) {
        rbuf_le64(&b->buf, h->wait_epoch);
        rbuf_le64(&b->buf, h->wait_until_ms);
        rbuf_le16(&b->buf, (uint16_t)h->n_wait_released);
        for (uint32_t i = 0; i < h->n_wait_released; i++)
            rbuf_le16(&b->buf, h->wait_released[i]);
    }
    return op_end(b, op);
}

int store_handed_del(struct store_batch *b, const char *client_id, uint16_t id_len, uint64_t epoch)
{
    if (!b || (!client_id && id_len))
        return bad_arg(b);
    struct op *op = op_begin(b, OP_DEL, DB_HANDED);
    if (!op)
        return b->err;
    put_handed_key(&b->buf, client_id, id_len, epoch);
    op_key_done(b, op);
    return op_end(b, op);
}

/* ---- submission (any thread) ---- */

void store_submit(struct store *s, struct store_batch *b, void (*done)(void *ud, int status),
                  void *ud)
{
    b->done = done;
    b->ud = ud;
    b->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = b;
    else
        s->head = b;
    s->tail = b;
    s->submitted++;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

void store_flush(struct store *s)
{
    pthread_mutex_lock(&s->mu);
    uint64_t ticket = s->submitted;
    while (s->completed < ticket)
        pthread_cond_wait(&s->done_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

void store_get_stats(struct store *s, struct store_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}

/* ---- the writer thread ---- */

/* Delete every key of db that starts with prefix. */
static int del_prefix(MDB_txn *txn, MDB_dbi dbi, const MDB_val *prefix)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return rc;
    for (;;) {
        MDB_val k = *prefix, v;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        if (k.mv_size < prefix->mv_size || memcmp(k.mv_data, prefix->mv_data, prefix->mv_size))
            break;
        rc = mdb_cursor_del(c, 0);
        if (rc)
            break;
    }
    mdb_cursor_close(c);
    return rc;
}

/* Delete the rows of node (key[0..8)) whose seq (key[8..16)) is at most
 * the one in key. */
static int del_upto(MDB_txn *txn, MDB_dbi dbi, const MDB_val *key)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return rc;
    uint8_t first[16];
    memcpy(first, key->mv_data, 8);
    memset(first + 8, 0, 8);
    for (;;) {
        MDB_val k = {16, first}, v;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        /* same node, and big-endian seq not above the bound */
        if (k.mv_size != 16 || memcmp(k.mv_data, key->mv_data, 8) != 0 ||
            memcmp((const uint8_t *)k.mv_data + 8, (const uint8_t *)key->mv_data + 8, 8) > 0)
            break;
        rc = mdb_cursor_del(c, 0);
        if (rc)
            break;
    }
    mdb_cursor_close(c);
    return rc;
}

/* Apply the operations of b in txn. Returns 0 or an LMDB/errno code. */
static int apply_batch(struct store *s, MDB_txn *txn, const struct store_batch *b)
{
    for (size_t i = 0; i < b->nops; i++) {
        const struct op *op = &b->ops[i];
        MDB_val k = {op->klen, b->buf.b.data + op->koff};
        MDB_val v = {op->vlen, b->buf.b.data + op->voff};
        int rc;
        switch (op->kind) {
        case OP_PUT:
            rc = mdb_put(txn, s->dbi[op->db], &k, &v, 0);
            break;
        case OP_DEL:
            rc = mdb_del(txn, s->dbi[op->db], &k, NULL);
            break;
        case OP_SESSION_DEL:
            rc = mdb_del(txn, s->dbi[DB_SESSIONS], &k, NULL);
            if (rc == 0 || rc == MDB_NOTFOUND)
                rc = del_prefix(txn, s->dbi[DB_MSGS], &k);
            if (rc == 0)
                rc = del_prefix(txn, s->dbi[DB_QOS2], &k);
            break;
        case OP_DEL_UPTO:
            rc = k.mv_size == 16 ? del_upto(txn, s->dbi[op->db], &k) : EINVAL;
            break;
        default:
            rc = EINVAL;
            break;
        }
        if (rc == MDB_NOTFOUND)
            rc = 0;
        if (rc)
            return rc;
    }
    return 0;
}

/* Resize the map to size (LMDB rounds it up to what is in use). Writer
 * thread, no transaction open. Returns 0 or an LMDB/errno code. */
static int set_map_size(struct store *s, uint64_t size)
{
    uint64_t cur = s->map_size;
    if (size > SIZE_MAX)
        return ENOMEM;
    pthread_mutex_lock(&s->map_mu);
    int rc = mdb_env_set_mapsize(s->env, (size_t)size);
    if (rc && mdb_env_set_mapsize(s->env, (size_t)cur) != 0)
        s->broken = true; /* LMDB unmapped the file and cannot map it back */
    MDB_envinfo info;
    if (!s->broken && mdb_env_info(s->env, &info) == 0)
        s->map_size = info.me_mapsize;
    pthread_mutex_unlock(&s->map_mu);
    pthread_mutex_lock(&s->mu);
    s->stats.map_size = s->map_size;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Double the map, bounded by max_map_size minus the reserve, or by
 * max_map_size itself when use_reserve (deletion-only batches). */
static int grow_map(struct store *s, bool use_reserve)
{
    uint64_t cur = s->map_size;
    uint64_t next = cur > UINT64_MAX / 2 ? UINT64_MAX : cur * 2;
    uint64_t limit = use_reserve ? s->max_map_size : s->map_soft_limit;
    if (limit && next > limit)
        next = limit;
    if (next <= cur)
        return -ENOSPC;
    return set_map_size(s, next) ? -ENOSPC : 0;
}

/* After a deletion-only batch used the map reserve, give it back: the map
 * returns to the soft limit, or to what is in use if that is more. */
static void shrink_map(struct store *s)
{
    if (s->map_soft_limit && s->map_size > s->map_soft_limit)
        set_map_size(s, s->map_soft_limit);
}

/* (Re)create DIR/reserve: disk space held back for deletion-only batches
 * when the disk is full. Returns true when it is fully allocated. */
static bool reserve_fill(struct store *s)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/reserve", s->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return false;
    int rc = s->reserve_size > (uint64_t)INT64_MAX ? EINVAL
                                                   : posix_fallocate(fd, 0, (off_t)s->reserve_size);
    close(fd);
    if (rc) {
        unlink(path); /* a partial reserve would only hide the problem */
        return false;
    }
    return true;
}

/* Give the reserve file's space to LMDB. Returns true if there was one. */
static bool reserve_release(struct store *s)
{
    char path[4096];
    if (s->reserve_released)
        return false;
    snprintf(path, sizeof(path), "%s/reserve", s->dir);
    s->reserve_released = true;
    s->reserve_retry_ms = 0;
    return unlink(path) == 0;
}

/* Map a failed commit to the status given to callbacks. */
static int commit_status(struct store *s, int rc, uint64_t bytes)
{
    if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT || rc == EFBIG)
        return -ENOSPC;
    if (rc == MDB_TXN_FULL)
        return -E2BIG;
    if (rc == EIO) {
        /* LMDB turns a short write into EIO: call it a full disk when the
         * filesystem has clearly no room for what we tried to write. */
        struct statvfs sv;
        if (statvfs(s->dir, &sv) == 0) {
            uint64_t avail = (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * sv.f_frsize;
            if (avail < 2 * bytes + (1u << 20))
                return -ENOSPC;
        }
        return -EIO;
    }
    if (is_mdb_code(rc) || rc < 0)
        return -EIO;
    return -rc;
}

/* Apply batches [first, end) in one transaction and commit, growing the map
 * as needed. Returns 0 or a negative errno (nothing committed). Batches of
 * deletions only may use the reserve (map and disk) when storage is full:
 * deleting also needs new pages (LMDB copies on write), and freeing space
 * must stay possible. */
static int commit_range(struct store *s, struct store_batch *first, struct store_batch *end)
{
    uint64_t bytes = 0;
    bool del_only = true, grew_into_reserve = false, released = false;
    for (struct store_batch *b = first; b != end; b = b->next) {
        bytes += b->err ? 0 : b->buf.b.len;
        del_only = del_only && (b->err || !b->has_puts);
    }
    for (;;) {
        if (s->broken)
            return -EIO;
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc == 0) {
            for (struct store_batch *b = first; b != end && rc == 0; b = b->next)
                if (!b->err)
                    rc = apply_batch(s, txn, b);
            if (rc == 0)
                rc = mdb_txn_commit(txn); /* frees txn, also on failure */
            else
                mdb_txn_abort(txn);
        }
        if (rc == MDB_MAP_FULL && !s->broken) {
            if (grow_map(s, false) == 0)
                continue;
            if (del_only && grow_map(s, true) == 0) {
                grew_into_reserve = true;
                continue;
            }
        }
        int status = rc ? commit_status(s, rc, bytes) : 0;
        if (status == -ENOSPC && rc != MDB_MAP_FULL && del_only && !released &&
            reserve_release(s)) {
            released = true;
            continue;
        }
        if (grew_into_reserve && !s->broken)
            shrink_map(s);
        return status;
    }
}

/* commit_range, its time observed on lat when it succeeded. */
static int commit_timed(struct store *s, struct store_batch *first, struct store_batch *end,
                        struct metric_hist_snap *lat)
{
    uint64_t t0 = metric_now_ns();
    int rc = commit_range(s, first, end);
    if (rc == 0)
        metric_snap_observe(lat, metric_now_ns() - t0);
    return rc;
}

/* Commit one round of batches, run their callbacks, free them.
 * Returns the number of batches; *committed tells whether anything was. */
static uint64_t run_round(struct store *s, struct store_batch *list, bool *committed)
{
    uint64_t n = 0, ok = 0, failed = 0, ops = 0, bytes = 0, commits = 0;
    size_t valid = 0;
    for (struct store_batch *b = list; b; b = b->next) {
        n++;
        valid += b->err ? 0 : 1;
    }
    struct metric_hist_snap lat = {0};
    int rc = valid ? commit_timed(s, list, NULL, &lat) : 0;
    if (rc == 0) {
        commits += valid ? 1 : 0;
        for (struct store_batch *b = list; b; b = b->next)
            b->status = b->err;
    } else if (valid == 1) {
        for (struct store_batch *b = list; b; b = b->next)
            b->status = b->err ? b->err : rc;
    } else {
        /* Isolate the batches that cannot be committed. */
        for (struct store_batch *b = list; b; b = b->next) {
            if (b->err) {
                b->status = b->err;
                continue;
            }
            b->status = commit_timed(s, b, b->next, &lat);
            commits += b->status == 0 ? 1 : 0;
        }
    }
    *committed = commits > 0;

    for (struct store_batch *b = list; b; b = b->next) {
        if (b->status == 0) {
            ok++;
            ops += b->nops;
            bytes += b->put_bytes;
        } else {
            failed++;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->stats.commits += commits;
    if (s->sync == STORE_SYNC_ALWAYS)
        s->stats.fsyncs += commits;
    s->stats.batches += ok;
    s->stats.failed += failed;
    s->stats.ops += ops;
    s->stats.bytes_written += bytes;
    metric_snap_add_to(&lat, &s->stats.commit_time);
    pthread_mutex_unlock(&s->mu);

    while (list) {
        struct store_batch *b = list;
        list = b->next;
        run_hooks(b, b->status);
        if (b->done)
            b->done(b->ud, b->status);
        store_batch_free(b);
    }
    return n;
}

static uint64_t now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void writer_sync(struct store *s)
{
    if (s->broken)
        return;
    uint64_t t0 = metric_now_ns();
    mdb_env_sync(s->env, 1);
    uint64_t took = metric_now_ns() - t0;
    pthread_mutex_lock(&s->mu);
    s->stats.fsyncs++;
    metric_snap_observe(&s->stats.sync_time, took);
    pthread_mutex_unlock(&s->mu);
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_STORE_HOLD
 * names exists, the writer commits nothing, like a disk that does not
 * answer (fsfreeze would also block the readers' slots in lock.mdb). */
static void writer_test_hold(void)
{
    const char *path = getenv("STARLING_TEST_STORE_HOLD");
    struct timespec ts = {0, 2000000};
    while (path && access(path, F_OK) == 0)
        nanosleep(&ts, NULL);
}
#else
static void writer_test_hold(void) {}
#endif

static void *writer_main(void *arg)
{
    struct store *s = arg;
    bool dirty = false;       /* committed but not synced (INTERVAL) */
    uint64_t sync_due_ms = 0; /* monotonic */

    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (dirty && now_mono_ms() >= sync_due_ms) {
            pthread_mutex_unlock(&s->mu);
            writer_sync(s);
            dirty = false;
            pthread_mutex_lock(&s->mu);
        }
        if (s->head) {
            struct store_batch *list = s->head;
            s->head = s->tail = NULL;
            pthread_mutex_unlock(&s->mu);
            writer_test_hold();
            bool committed = false;
            uint64_t n = run_round(s, list, &committed);
            if (committed && s->sync == STORE_SYNC_INTERVAL && !dirty) {
                dirty = true;
                sync_due_ms = now_mono_ms() + s->sync_interval_ms;
            }
            /* Take the disk reserve back once there is room again. */
            if (s->reserve_released && now_mono_ms() >= s->reserve_retry_ms) {
                if (reserve_fill(s))
                    s->reserve_released = false;
                else
                    s->reserve_retry_ms = now_mono_ms() + 10000;
            }
            pthread_mutex_lock(&s->mu);
            s->completed += n;
            pthread_cond_broadcast(&s->done_cv);
            continue;
        }
        if (s->stopping)
            break;
        if (dirty) {
            struct timespec ts = {(time_t)(sync_due_ms / 1000),
                                  (long)(sync_due_ms % 1000) * 1000000};
            pthread_cond_timedwait(&s->work_cv, &s->mu, &ts);
        } else {
            pthread_cond_wait(&s->work_cv, &s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (dirty)
        writer_sync(s);
    return NULL;
}

/* ---- open / close ---- */

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char *p = strdup(dir);
    if (!p)
        return -ENOMEM;
    int rc = 0;
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0')
            continue;
        char saved = *c;
        *c = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            break;
        }
        *c = saved;
        if (!saved)
            break;
    }
    free(p);
    if (rc == 0) {
        struct stat st;
        if (stat(dir, &st) != 0)
            rc = -errno;
        else if (!S_ISDIR(st.st_mode))
            rc = -ENOTDIR;
    }
    return rc;
}

/* Check the format of an opened environment; create the databases (and the
 * format key) of a new one. Nothing is written unless the env is new. */
static int check_format(struct store *s, char *err, size_t errlen)
{
    MDB_txn *txn;
    MDB_dbi meta;
    bool fresh = false;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        goto mdb_fail;
    rc = mdb_dbi_open(txn, db_names[DB_META], 0, &meta);
    if (rc == MDB_NOTFOUND) {
        MDB_dbi main_db;
        MDB_stat st;
        rc = mdb_dbi_open(txn, NULL, 0, &main_db);
        if (rc == 0)
            rc = mdb_stat(txn, main_db, &st);
        if (rc == 0 && st.ms_entries > 0) {
            mdb_txn_abort(txn);
            set_err(err, errlen, "%s: data.mdb is an LMDB environment but not a Starling store",
                    s->dir);
            return -EPROTO;
        }
        fresh = true;
    } else if (rc == MDB_INCOMPATIBLE) {
        mdb_txn_abort(txn);
        set_err(err, errlen, "%s: data.mdb is an LMDB environment but not a Starling store",
                s->dir);
        return -EPROTO;
    } else if (rc == 0) {
        MDB_val k = {6, "format"}, v;
        rc = mdb_get(txn, meta, &k, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size != 4)) {
            mdb_txn_abort(txn);
            set_err(err, errlen, "%s: storage format version missing or malformed", s->dir);
            return -EIO;
        }
        if (rc == 0) {
            struct rdec d = {v.mv_data, v.mv_size, false};
            uint32_t version = rdec_le32(&d);
            if (version != STORE_FORMAT_VERSION) {
                mdb_txn_abort(txn);
                set_err(err, errlen, "%s: unknown storage format version %u (this build reads %u)",
                        s->dir, version, (unsigned)STORE_FORMAT_VERSION);
                return -EPROTO;
            }
        }
    }
    mdb_txn_abort(txn);
    if (rc)
        goto mdb_fail;

    /* Open (new env: create) the databases. For an existing store this
     * transaction changes nothing, so its commit writes nothing, except to
     * create a database that an older build did not have ("handed") */
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        goto mdb_fail;
    for (int i = 0; i < DB_COUNT && rc == 0; i++)
        rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]);
    if (rc == 0 && fresh) {
        struct rbuf b = {0};
        rbuf_le32(&b, STORE_FORMAT_VERSION);
        MDB_val k = {6, "format"}, v = {b.b.len, b.b.data};
        rc = b.oom ? ENOMEM : mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
        rbuf_free(&b);
    }
    if (rc) {
        mdb_txn_abort(txn);
        goto mdb_fail;
    }
    rc = mdb_txn_commit(txn);
    if (rc)
        goto mdb_fail;
    return 0;

mdb_fail:
    if (is_mdb_code(rc)) {
        set_err(err, errlen, "%s: data.mdb is corrupt (%s)", s->dir, mdb_strerror(rc));
        return -EIO;
    }
    set_err(err, errlen, "%s: %s", s->dir, strerror(rc));
    return -rc;
}

static void free_store(struct store *s)
{
    if (s->env)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s->dir);
    free(s);
}

int store_open(struct store **out, const struct store_options *o, char *err, size_t errlen)
{
    *out = NULL;
    set_err(err, errlen, "no error");
    if (!o || !o->dir || !*o->dir) {
        set_err(err, errlen, "storage directory not set");
        return -EINVAL;
    }
    struct store *s = calloc(1, sizeof(*s));
    if (!s || !(s->dir = strdup(o->dir))) {
        free(s);
        set_err(err, errlen, "%s: out of memory", o->dir);
        return -ENOMEM;
    }
    s->lock_fd = -1;
    s->sync = o->sync;
    s->sync_interval_ms = o->sync_interval_ms ? o->sync_interval_ms : DEFAULT_SYNC_INTERVAL_MS;
    s->max_map_size = o->max_map_size;
    s->reserve_size = o->reserve_size ? o->reserve_size : DEFAULT_RESERVE;
    uint64_t map_size = o->map_size ? o->map_size : DEFAULT_MAP_SIZE;
    uint64_t page = sysconf(_SC_PAGESIZE) > 0 ? (uint64_t)sysconf(_SC_PAGESIZE) : 4096;
    map_size = (map_size + page - 1) / page * page;
    if (s->max_map_size) {
        uint64_t reserve =
            s->reserve_size < s->max_map_size / 4 ? s->reserve_size : s->max_map_size / 4;
        s->map_soft_limit = (s->max_map_size - reserve) / page * page;
        if (map_size > s->map_soft_limit)
            map_size = s->map_soft_limit;
    }

    int rc = make_dirs(s->dir);
    if (rc) {
        set_err(err, errlen, "%s: cannot create directory: %s", s->dir, strerror(-rc));
        goto fail;
    }

    /* One store per directory: LMDB must not be opened twice by a process,
     * and two brokers must not share a directory. */
    char path[4096];
    snprintf(path, sizeof(path), "%s/starling.lock", s->dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot write in directory: %s", s->dir, strerror(-rc));
        goto fail;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        set_err(err, errlen, "%s: %s", s->dir,
                rc == -EBUSY ? "already in use by another store" : strerror(-rc));
        goto fail;
    }

    unsigned flags = MDB_NOTLS;
    if (s->sync != STORE_SYNC_ALWAYS)
        flags |= MDB_NOSYNC;
    rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, DB_COUNT + 2);
    if (rc == 0 && map_size <= SIZE_MAX)
        rc = mdb_env_set_mapsize(s->env, (size_t)map_size);
    if (rc == 0)
        rc = mdb_env_open(s->env, s->dir, flags, 0600);
    if (rc) {
        if (is_mdb_code(rc)) {
            set_err(err, errlen, "%s: data.mdb is corrupt or not an LMDB file (%s)", s->dir,
                    mdb_strerror(rc));
            rc = -EIO;
        } else {
            set_err(err, errlen, "%s: cannot open storage: %s", s->dir, strerror(rc));
            rc = -rc;
        }
        goto fail;
    }
    if (mdb_env_get_maxkeysize(s->env) < REC_KEY_MAX) {
        set_err(err, errlen, "%s: LMDB maximum key size %d is below %d", s->dir,
                mdb_env_get_maxkeysize(s->env), REC_KEY_MAX);
        rc = -EINVAL;
        goto fail;
    }
    rc = check_format(s, err, errlen);
    if (rc)
        goto fail;
    /* Without room for the reserve, run without one (the writer retries). */
    if (!reserve_fill(s))
        s->reserve_released = true;
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_size = info.me_mapsize;
    s->stats.map_size = s->map_size;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->map_mu, NULL);
    pthread_cond_init(&s->work_cv, &ca);
    pthread_cond_init(&s->done_cv, NULL);
    pthread_condattr_destroy(&ca);
    rc = pthread_create(&s->thread, NULL, writer_main, s);
    if (rc) {
        pthread_cond_destroy(&s->work_cv);
        pthread_cond_destroy(&s->done_cv);
        pthread_mutex_destroy(&s->mu);
        pthread_mutex_destroy(&s->map_mu);
        set_err(err, errlen, "%s: cannot start the writer thread: %s", s->dir, strerror(rc));
        rc = -rc;
        goto fail;
    }
    pthread_setname_np(s->thread, "st-store");
    *out = s;
    return 0;

fail:
    free_store(s);
    return rc;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_signal(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL); /* the writer synced what INTERVAL left */
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->done_cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->map_mu);
    free_store(s);
}

/* ---- recovery ---- */

static int load_error(int rc)
{
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    if (rc == ENOMEM)
        return -ENOMEM;
    return -EIO;
}

static int load_sessions(const struct store_loader *l, MDB_cursor *c)
{
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        struct rdec kd = {k.mv_data, k.mv_size, false}, vd = {v.mv_data, v.mv_size, false};
        const char *id;
        uint16_t len;
        struct store_session rec;
        struct store_sub *subs;
        struct store_seen *seen;
        uint16_t *wait_ids;
        uint8_t version;
        int r = rec_get_id(&kd, &vd, REC_SESSION_VERSION, &version, &id, &len);
        if (r == 0 && kd.n != 0)
            r = -EIO;
        if (r == 0)
            r = rec_get_session(&vd, version, &rec, &subs, &seen, &wait_ids);
        if (r)
            return r;
        r = l->session(l->ud, id, len, &rec);
        free(subs);
        free(seen);
        free(wait_ids);
        if (r)
            return r;
    }
    return load_error(rc);
}

static int load_msgs(const struct store_loader *l, MDB_cursor *c)
{
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        struct rdec kd = {k.mv_data, k.mv_size, false}, vd = {v.mv_data, v.mv_size, false};
        const char *id;
        uint16_t len;
        struct store_msg rec;
        uint32_t *ids;
        uint8_t version;
        int r = rec_get_id(&kd, &vd, REC_MSG_VERSION, &version, &id, &len);
        uint64_t seq = rdec_be64(&kd);
        if (r == 0 && (kd.bad || kd.n != 0))
            r = -EIO;
        if (r == 0)
            r = rec_get_msg(&vd, version, &rec, &ids);
        if (r)
            return r;
        r = l->msg(l->ud, id, len, seq, &rec);
        msg_unref((struct msg *)rec.m);
        free(ids);
        if (r)
            return r;
    }
    return load_error(rc);
}

static int load_qos2(const struct store_loader *l, MDB_cursor *c)
{
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        struct rdec kd = {k.mv_data, k.mv_size, false}, vd = {v.mv_data, v.mv_size, false};
        const char *id;
        uint16_t len;
        uint8_t version;
        int r = rec_get_id(&kd, &vd, REC_VERSION, &version, &id, &len);
        uint16_t pid = rdec_be16(&kd);
        if (r == 0 && (kd.bad || kd.n != 0 || vd.n != 0))
            r = -EIO;
        if (r == 0)
            r = l->qos2(l->ud, id, len, pid);
        if (r)
            return r;
    }
    return load_error(rc);
}

static int load_retained(const struct store_loader *l, MDB_cursor *c)
{
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        struct rdec vd = {v.mv_data, v.mv_size, false};
        struct msg *m;
        uint8_t version = rdec_u8(&vd);
        if (vd.bad)
            return -EIO;
        if (version != REC_VERSION)
            return -EPROTO;
        int r = rec_get_message(&vd, &m);
        if (r)
            return r;
        /* The key must be the one this topic gets. */
        struct rbuf kb = {0};
        rec_put_idkey(&kb, msg_topic(m), m->topic_len);
        if (kb.oom)
            r = -ENOMEM;
        else if (vd.n != 0 || kb.b.len != k.mv_size || memcmp(kb.b.data, k.mv_data, kb.b.len) != 0)
            r = -EIO;
        rbuf_free(&kb);
        if (r == 0)
            r = l->retained(l->ud, m);
        msg_unref(m);
        if (r)
            return r;
    }
    return load_error(rc);
}

int store_load(struct store *s, const struct store_loader *l)
{
    pthread_mutex_lock(&s->map_mu);
    if (s->broken) {
        pthread_mutex_unlock(&s->map_mu);
        return -EIO;
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        pthread_mutex_unlock(&s->map_mu);
        return load_error(rc);
    }
    for (int db = DB_SESSIONS; db <= DB_RETAINED && rc == 0; db++) {
        MDB_cursor *c;
        if ((db == DB_SESSIONS && !l->session) || (db == DB_MSGS && !l->msg) ||
            (db == DB_QOS2 && !l->qos2) || (db == DB_RETAINED && !l->retained))
            continue;
        rc = mdb_cursor_open(txn, s->dbi[db], &c);
        if (rc) {
            rc = load_error(rc);
            break;
        }
        switch (db) {
        case DB_SESSIONS:
            rc = load_sessions(l, c);
            break;
        case DB_MSGS:
            rc = load_msgs(l, c);
            break;
        case DB_QOS2:
            rc = load_qos2(l, c);
            break;
        default:
            rc = load_retained(l, c);
            break;
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    pthread_mutex_unlock(&s->map_mu);
    return rc;
}

/* ---- the forwarding outbox and inbox: reading ---- */

/* Run fn on each row of db from key `from` (klen bytes) on, while fn
 * returns 0; rows whose key does not start with the first plen bytes of
 * from end the scan. */
static int scan_rows(struct store *s, enum db db, const uint8_t *from, size_t klen, size_t plen,
                     int (*fn)(void *ud, const MDB_val *k, const MDB_val *v), void *ud)
{
    pthread_mutex_lock(&s->map_mu);
    if (s->broken) {
        pthread_mutex_unlock(&s->map_mu);
        return -EIO;
    }
    MDB_txn *txn = NULL;
    MDB_cursor *c = NULL;
    int fn_err = 0;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_cursor_open(txn, s->dbi[db], &c);
    if (rc == 0) {
        MDB_val k = {klen, (void *)from}, v;
        MDB_cursor_op op = klen ? MDB_SET_RANGE : MDB_FIRST;
        for (;;) {
            rc = mdb_cursor_get(c, &k, &v, op);
            op = MDB_NEXT;
            if (rc)
                break;
            if (plen && (k.mv_size < plen || memcmp(k.mv_data, from, plen) != 0))
                break;
            int r = fn(ud, &k, &v);
            if (r < 0)
                fn_err = r;
            if (r)
                break;
        }
        mdb_cursor_close(c);
    }
    if (txn)
        mdb_txn_abort(txn);
    pthread_mutex_unlock(&s->map_mu);
    return fn_err ? fn_err : load_error(rc);
}

struct outbox_scan {
    uint64_t node;
    size_t left;
    store_outbox_fn fn;
    void *ud;
};

static int outbox_row(void *ud, const MDB_val *k, const MDB_val *v)
{
    struct outbox_scan *o = ud;
    if (k->mv_size != 16)
        return -EIO;
    struct rdec d = {k->mv_data, 16, false};
    uint64_t node = rdec_be64(&d), seq = rdec_be64(&d);
    if (o->left == 0)
        return 1;
    o->left--;
    int r = o->fn(o->ud, node, seq, v->mv_data, v->mv_size);
    return r;
}

int store_outbox_scan(struct store *s, uint64_t node, uint64_t after, size_t max,
                      store_outbox_fn fn, void *ud)
{
    if (!s || !fn)
        return -EINVAL;
    struct outbox_scan o = {node, max ? max : SIZE_MAX, fn, ud};
    uint8_t from[16];
    size_t klen = 0, plen = 0;
    if (node) {
        if (after == UINT64_MAX)
            return 0;
        struct rbuf b = {0};
        rbuf_be64(&b, node);
        rbuf_be64(&b, after + 1);
        if (b.oom) {
            rbuf_free(&b);
            return -ENOMEM;
        }
        memcpy(from, b.b.data, 16);
        rbuf_free(&b);
        klen = 16;
        plen = 8;
    }
    return scan_rows(s, DB_OUTBOX, from, klen, plen, outbox_row, &o);
}

struct fwd_in_scan {
    int (*fn)(void *ud, uint64_t origin, uint64_t seq);
    void *ud;
};

static int fwd_in_row(void *ud, const MDB_val *k, const MDB_val *v)
{
    struct fwd_in_scan *o = ud;
    if (k->mv_size != 8 || v->mv_size != 8)
        return -EIO;
    struct rdec dk = {k->mv_data, 8, false}, dv = {v->mv_data, 8, false};
    uint64_t origin = rdec_be64(&dk);
    return o->fn(o->ud, origin, rdec_le64(&dv));
}

int store_fwd_in_scan(struct store *s, int (*fn)(void *ud, uint64_t origin, uint64_t seq), void *ud)
{
    if (!s || !fn)
        return -EINVAL;
    struct fwd_in_scan o = {fn, ud};
    return scan_rows(s, DB_FWD_IN, NULL, 0, 0, fwd_in_row, &o);
}

struct handed_scan {
    store_handed_fn fn;
    void *ud;
};

static int handed_row(void *ud, const MDB_val *k, const MDB_val *v)
{
    struct handed_scan *o = ud;
    struct rdec dk = {k->mv_data, k->mv_size, false}, dv = {v->mv_data, v->mv_size, false};
    struct store_handed h = {0};
    uint8_t version;
    int r = rec_get_id(&dk, &dv, REC_HANDED_VERSION, &version, &h.client_id, &h.id_len);
    if (r < 0)
        return r;
    h.epoch = rdec_be64(&dk);
    h.until_ms = rdec_le64(&dv);
    h.folded = rdec_u8(&dv) != 0;
    h.n_ids = rdec_le16(&dv);
    const uint8_t *raw = rdec_bytes(&dv, (size_t)h.n_ids * 2);
    const uint8_t *rel = NULL;
    if (version >= 2 && (h.wait_node = rdec_le64(&dv)) != 0) {
        h.wait_epoch = rdec_le64(&dv);
        h.wait_until_ms = rdec_le64(&dv);
        h.n_wait_released = rdec_le16(&dv);
        rel = rdec_bytes(&dv, (size_t)h.n_wait_released * 2);
    }
    if (dk.bad || dv.bad || dk.n != 0 || dv.n != 0 || !raw || (h.wait_node && !rel))
        return -EIO;
    uint16_t *ids = malloc((h.n_ids + h.n_wait_released + 1) * sizeof(*ids));
    if (!ids)
        return -ENOMEM;
    for (uint32_t i = 0; i < h.n_ids; i++)
        ids[i] = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
    for (uint32_t i = 0; i < h.n_wait_released; i++)
        ids[h.n_ids + i] = (uint16_t)(rel[2 * i] | rel[2 * i + 1] << 8);
    h.ids = ids;
    h.wait_released = ids + h.n_ids;
    r = o->fn(o->ud, &h);
    free(ids);
    return r;
}

int store_handed_scan(struct store *s, store_handed_fn fn, void *ud)
{
    if (!s || !fn)
        return -EINVAL;
    struct handed_scan o = {fn, ud};
    return scan_rows(s, DB_HANDED, NULL, 0, 0, handed_row, &o);
}

static void boot_done(void *ud, int status)
{
    *(int *)ud = status;
}

int store_boot_next(struct store *s, uint64_t floor, uint64_t *out)
{
    uint64_t old = 0;
    pthread_mutex_lock(&s->map_mu);
    MDB_txn *txn;
    int rc = s->broken ? EIO : mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        MDB_val k = {4, "boot"}, v;
        rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
        if (rc == 0 && v.mv_size == 8) {
            struct rdec d = {v.mv_data, 8, false};
            old = rdec_le64(&d);
        }
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&s->map_mu);
    if (rc && rc != MDB_NOTFOUND)
        return load_error(rc);
    uint64_t boot = old + 1 > floor ? old + 1 : floor;
    struct store_batch *b = store_batch_new();
    if (!b)
        return -ENOMEM;
    struct op *op = op_begin(b, OP_PUT, DB_META);
    if (op) {
        rbuf_put(&b->buf, "boot", 4);
        op_key_done(b, op);
        rbuf_le64(&b->buf, boot);
        op_end(b, op);
    }
    int status = 1;
    store_submit(s, b, boot_done, &status);
    store_flush(s);
    if (status == 0)
        *out = boot;
    return status;
}
