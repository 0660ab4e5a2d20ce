/*
 * rtable.c - the replicated tables over LMDB (see rtable.h).
 *
 * One environment with five named databases: "meta" ("format" u32le,
 * "applied" u64le, "checksum" u64le) and one per enum rtable_db. Values are
 * stored as u32le klen || key || value so that a hashed LMDB key can always
 * be turned back into the real key.
 *
 * map_mu is a read-write lock around the map size: every transaction holds
 * it for reading while open; rtable_grow takes it for writing, because
 * mdb_env_set_mapsize may only be called with no transaction active in the
 * process.
 *
 * Syncing (unless sync_every_commit): the environment is opened with
 * MDB_NOSYNC, so a commit writes its pages to the page cache and returns
 * without waiting for the disk; the syncer thread then fdatasyncs the file
 * (mdb_env_sync), one sync for every commit made since the last one. A
 * process that dies keeps every commit (the page cache is the kernel's); a
 * machine that stops may leave the file torn. So, while the tables are
 * open, the file OPEN_MARK holds the boot id of the running kernel
 * (written and fsync'ed before the environment opens, removed after the
 * last sync at close): found at open with another boot id (the machine
 * stopped while they were open) or "sync failed", the tables are deleted
 * and start empty: the state machine's owner rebuilds them from Raft's
 * snapshot and log, which are durable (see rtable_was_reset).
 */
#include "rtable.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAP_SIZE (32ull << 20)
#define LITERAL_MAX 480u
#define HASHED_LEN 490u
#define META_DB 0
#define OPEN_MARK "OPEN"
#define SYNC_FAILED "sync failed\n"

static const char *const db_names[RTABLE_N_DB + 1] = {"meta",    "routes",   "registry", "retained",
                                                      "members", "sessions", "admin"};

struct rtable {
    MDB_env *env;
    MDB_dbi dbi[RTABLE_N_DB + 1];
    pthread_rwlock_t map_mu;
    uint64_t map_size, max_map_size;
    bool reset; /* the tables were deleted at open (OPEN_MARK) */
    /* the syncer (unless sync_every_commit); sync_mu guards the fields */
    bool syncer_on;
    pthread_t syncer;
    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    uint64_t commits, synced; /* commits made / covered by a sync */
    bool stop;
    int sync_err;   /* the first failed sync's negative errno, then sticky */
    char dir[600];  /* the environment's directory */
    char mark[608]; /* dir/OPEN_MARK */
};

struct rtable_txn {
    struct rtable *t;
    MDB_txn *txn;
    bool write;
    bool dirty_meta;
    uint64_t applied;
    uint64_t checksum;
    EVP_MD_CTX *md;
    unsigned char keybuf[HASHED_LEN];
};

static int from_mdb(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return -ENOENT;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
        return -EFBIG; /* the map: rtable_grow */
    case ENOSPC:
    case EDQUOT:
        return -ENOSPC; /* the disk: growing the map would not help */
    case ENOMEM:
        return -ENOMEM;
    case EACCES:
        return -EACCES;
    case MDB_BAD_VALSIZE:
        return -EINVAL;
    default:
        return -EIO;
    }
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The record hash of the checksum (rtable.h). */
static uint64_t record_hash(EVP_MD_CTX *md, unsigned db, const void *key, size_t klen,
                            const void *val, size_t vlen)
{
    unsigned char hdr[5], out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    hdr[0] = (unsigned char)db;
    put_u32(hdr + 1, (uint32_t)klen);
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, hdr, sizeof hdr);
    EVP_DigestUpdate(md, key, klen);
    EVP_DigestUpdate(md, val, vlen);
    EVP_DigestFinal_ex(md, out, &n);
    return get_u64(out);
}

/* The LMDB key of a table key (rtable.h). */
static MDB_val lmdb_key(struct rtable_txn *x, const void *key, size_t klen)
{
    if (klen <= LITERAL_MAX)
        return (MDB_val){klen, (void *)key};
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    memset(x->keybuf, 0, sizeof x->keybuf);
    memcpy(x->keybuf, key, 8);
    EVP_DigestInit_ex(x->md, EVP_sha256(), NULL);
    EVP_DigestUpdate(x->md, key, klen);
    EVP_DigestFinal_ex(x->md, out, &n);
    memcpy(x->keybuf + 8, out, 32);
    return (MDB_val){HASHED_LEN, x->keybuf};
}

/* Split a stored value into key and value. -EIO when malformed. */
static int split_value(const MDB_val *v, const void **key, size_t *klen, const void **val,
                       size_t *vlen)
{
    if (v->mv_size < 4)
        return -EIO;
    const unsigned char *p = v->mv_data;
    uint32_t kl = get_u32(p);
    if (kl > v->mv_size - 4)
        return -EIO;
    *key = p + 4;
    *klen = kl;
    *val = p + 4 + kl;
    *vlen = v->mv_size - 4 - kl;
    return 0;
}

static int meta_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = 0;
        return 0;
    }
    if (rc)
        return from_mdb(rc);
    if (v.mv_size != 8)
        return -EIO;
    *out = get_u64(v.mv_data);
    return 0;
}

static int meta_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t val)
{
    unsigned char b[8];
    put_u64(b, val);
    MDB_val k = {strlen(name), (void *)name}, v = {8, b};
    return from_mdb(mdb_put(txn, dbi, &k, &v, 0));
}

static int mkdirs(const char *dir)
{
    char p[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p)
        return -ENAMETOOLONG;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == '\0') {
            char c = p[i];
            p[i] = '\0';
            if (mkdir(p, 0700) != 0 && errno != EEXIST)
                return -errno;
            p[i] = c;
        }
    }
    return 0;
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_TABLES_SYNC_HOLD
 * names exists, a wait of the tables for their disk (an fdatasync) does not
 * return, like a disk that does not answer. Called where the tables sync.
 * A held sync creates PATH.held, so that a test knows the hold took. */
static void test_sync_hold(void)
{
    const char *path = getenv("STARLING_TEST_TABLES_SYNC_HOLD");
    if (!path || access(path, F_OK) != 0)
        return;
    char held[4096];
    snprintf(held, sizeof held, "%s.held", path);
    FILE *f = fopen(held, "w");
    if (f)
        fclose(f);
    struct timespec ts = {0, 2000000};
    while (access(path, F_OK) == 0)
        nanosleep(&ts, NULL);
}
/* Tests: with STARLING_TEST_TABLES_SYNC_FAIL set, the syncer's fdatasyncs
 * fail (EIO), like a disk that lost writes. */
static int test_sync_fail(void)
{
    return getenv("STARLING_TEST_TABLES_SYNC_FAIL") ? EIO : 0;
}
#else
static void test_sync_hold(void) {}
static int test_sync_fail(void)
{
    return 0;
}
#endif

/* The running kernel's boot id ("" when unknown). */
static void boot_id(char *out, size_t n)
{
    out[0] = 0;
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f)
        return;
    if (!fgets(out, (int)n, f))
        out[0] = 0;
    fclose(f);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Write text to path (replacing it) and make it durable. */
static int mark_write(const char *path, const char *dir, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -errno;
    size_t n = strlen(text);
    int rc = write(fd, text, n) == (ssize_t)n ? 0 : -EIO;
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc ? rc : fsync_dir(dir);
}

/* Before the environment opens: when the mark of an earlier opening is
 * there and does not name this boot (the machine stopped while commits may
 * not have been on disk) or a sync failed, delete the tables; then write
 * this opening's mark. */
static int mark_open(struct rtable *t, const char *dir)
{
    char now[64], was[64] = "";
    boot_id(now, sizeof now);
    snprintf(t->dir, sizeof t->dir, "%s", dir);
    snprintf(t->mark, sizeof t->mark, "%s/%s", dir, OPEN_MARK);
    FILE *f = fopen(t->mark, "r");
    if (f) {
        if (!fgets(was, sizeof was, f))
            was[0] = 0;
        fclose(f);
        if (!now[0] || strcmp(was, now) != 0) {
            static const char *const files[] = {"data.mdb", "lock.mdb"};
            char p[640];
            for (int i = 0; i < 2; i++) {
                snprintf(p, sizeof p, "%s/%s", dir, files[i]);
                if (unlink(p) != 0 && errno != ENOENT)
                    return -errno;
            }
            t->reset = true;
        }
    }
    return mark_write(t->mark, dir, now[0] ? now : "unknown boot\n");
}

static void *syncer_main(void *arg)
{
    struct rtable *t = arg;
    pthread_mutex_lock(&t->sync_mu);
    for (;;) {
        while (t->commits == t->synced && !t->stop)
            pthread_cond_wait(&t->sync_cv, &t->sync_mu);
        if (t->commits == t->synced)
            break; /* stopping, nothing left */
        uint64_t upto = t->commits;
        pthread_mutex_unlock(&t->sync_mu);
        test_sync_hold();
        int rc = mdb_env_sync(t->env, 1);
        if (rc == 0)
            rc = test_sync_fail();
        if (rc) {
            /* What the disk holds is unknown now: the tables are deleted at
             * the next open, and refuse every commit until then. (The mark
             * is written outside sync_mu: commits never wait for a disk.) */
            mark_write(t->mark, t->dir, SYNC_FAILED);
        }
        pthread_mutex_lock(&t->sync_mu);
        if (rc && !t->sync_err)
            t->sync_err = from_mdb(rc);
        t->synced = upto;
    }
    pthread_mutex_unlock(&t->sync_mu);
    return NULL;
}

int rtable_open(struct rtable **out, const struct rtable_options *o, char *err, size_t errlen)
{
    *out = NULL;
    int rc = mkdirs(o->dir);
    if (rc) {
        snprintf(err, errlen, "%s: cannot create directory: %s", o->dir, strerror(-rc));
        return rc;
    }
    struct rtable *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    pthread_rwlock_init(&t->map_mu, NULL);
    pthread_mutex_init(&t->sync_mu, NULL);
    pthread_cond_init(&t->sync_cv, NULL);
    t->map_size = o->map_size ? o->map_size : DEFAULT_MAP_SIZE;
    t->max_map_size = o->max_map_size;
    MDB_txn *txn = NULL;
    const char *what = "mdb_env_create";
    rc = mdb_env_create(&t->env);
    if (rc)
        goto fail;
    mdb_env_set_maxdbs(t->env, RTABLE_N_DB + 1);
    mdb_env_set_mapsize(t->env, (size_t)t->map_size);
    if (!o->sync_every_commit) {
        rc = mark_open(t, o->dir);
        if (rc) {
            snprintf(err, errlen, "%s: cannot write %s: %s", o->dir, OPEN_MARK, strerror(-rc));
            mdb_env_close(t->env);
            goto out_free;
        }
    }
    what = "mdb_env_open";
    rc = mdb_env_open(t->env, o->dir, MDB_NOTLS | (o->sync_every_commit ? 0 : MDB_NOSYNC), 0600);
    if (rc)
        goto fail;
    MDB_envinfo info;
    mdb_env_info(t->env, &info);
    if (info.me_mapsize > t->map_size)
        t->map_size = info.me_mapsize;
    what = "mdb_txn_begin";
    rc = mdb_txn_begin(t->env, NULL, 0, &txn);
    if (rc)
        goto fail;
    what = "mdb_dbi_open";
    for (int i = 0; i <= RTABLE_N_DB; i++) {
        rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &t->dbi[i]);
        if (rc)
            goto fail;
    }
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, t->dbi[META_DB], &k, &v);
    if (rc == MDB_NOTFOUND) {
        unsigned char b[4];
        put_u32(b, RTABLE_FORMAT_VERSION);
        v = (MDB_val){4, b};
        what = "mdb_put";
        rc = mdb_put(txn, t->dbi[META_DB], &k, &v, 0);
        if (rc)
            goto fail;
    } else if (rc) {
        goto fail;
    } else if (v.mv_size != 4 || get_u32(v.mv_data) != RTABLE_FORMAT_VERSION) {
        snprintf(err, errlen, "%s: replicated tables of an unknown format", o->dir);
        mdb_txn_abort(txn);
        mdb_env_close(t->env);
        rc = -EPROTO;
        goto out_free;
    }
    what = "mdb_txn_commit";
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc)
        goto fail;
    if (!o->sync_every_commit) {
        what = "mdb_env_sync";
        rc = mdb_env_sync(t->env, 1);
        if (rc)
            goto fail;
        rc = pthread_create(&t->syncer, NULL, syncer_main, t);
        if (rc) {
            snprintf(err, errlen, "%s: cannot start the syncer thread: %s", o->dir, strerror(rc));
            mdb_env_close(t->env);
            rc = -rc;
            goto out_free;
        }
        t->syncer_on = true;
    }
    *out = t;
    return 0;
fail:
    snprintf(err, errlen, "%s: %s: %s", o->dir, what, mdb_strerror(rc));
    if (txn)
        mdb_txn_abort(txn);
    if (t->env)
        mdb_env_close(t->env);
    rc = from_mdb(rc) == -ENOENT ? -EIO : from_mdb(rc);
out_free:
    pthread_cond_destroy(&t->sync_cv);
    pthread_mutex_destroy(&t->sync_mu);
    pthread_rwlock_destroy(&t->map_mu);
    free(t);
    return rc;
}

void rtable_close(struct rtable *t)
{
    if (!t)
        return;
    bool clean = true;
    if (t->syncer_on) {
        pthread_mutex_lock(&t->sync_mu);
        t->stop = true;
        pthread_cond_signal(&t->sync_cv);
        pthread_mutex_unlock(&t->sync_mu);
        pthread_join(t->syncer, NULL);
        clean = t->sync_err == 0;
    }
    test_sync_hold();
    if (mdb_env_sync(t->env, 1) != 0)
        clean = false;
    mdb_env_close(t->env);
    /* Every commit is on disk: the mark goes (after a failed sync it stays,
     * and the tables are deleted at the next open). */
    if (t->syncer_on && clean && unlink(t->mark) == 0)
        fsync_dir(t->dir);
    pthread_cond_destroy(&t->sync_cv);
    pthread_mutex_destroy(&t->sync_mu);
    pthread_rwlock_destroy(&t->map_mu);
    free(t);
}

bool rtable_was_reset(const struct rtable *t)
{
    return t->reset;
}

static int begin(struct rtable *t, bool write, struct rtable_txn **out)
{
    struct rtable_txn *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->md = EVP_MD_CTX_new();
    if (!x->md) {
        free(x);
        return -ENOMEM;
    }
    x->t = t;
    x->write = write;
    pthread_rwlock_rdlock(&t->map_mu);
    int rc = mdb_txn_begin(t->env, NULL, write ? 0 : MDB_RDONLY, &x->txn);
    if (rc == 0)
        rc = meta_get_u64(x->txn, t->dbi[META_DB], "applied", &x->applied);
    if (rc == 0)
        rc = meta_get_u64(x->txn, t->dbi[META_DB], "checksum", &x->checksum);
    if (rc) {
        if (x->txn)
            mdb_txn_abort(x->txn);
        pthread_rwlock_unlock(&t->map_mu);
        EVP_MD_CTX_free(x->md);
        free(x);
        return rc > 0 ? from_mdb(rc) : rc;
    }
    *out = x;
    return 0;
}

int rtable_begin(struct rtable *t, struct rtable_txn **out)
{
    return begin(t, true, out);
}

int rtable_begin_read(struct rtable *t, struct rtable_txn **out)
{
    return begin(t, false, out);
}

static void txn_free(struct rtable_txn *x)
{
    pthread_rwlock_unlock(&x->t->map_mu);
    EVP_MD_CTX_free(x->md);
    free(x);
}

int rtable_commit(struct rtable_txn *x)
{
    int rc = 0;
    if (!x->write) {
        mdb_txn_abort(x->txn);
        txn_free(x);
        return 0;
    }
    if (x->dirty_meta) {
        rc = meta_put_u64(x->txn, x->t->dbi[META_DB], "applied", x->applied);
        if (rc == 0)
            rc = meta_put_u64(x->txn, x->t->dbi[META_DB], "checksum", x->checksum);
    }
    struct rtable *t = x->t;
    if (rc == 0 && t->syncer_on) {
        pthread_mutex_lock(&t->sync_mu);
        rc = t->sync_err ? -EIO : 0;
        pthread_mutex_unlock(&t->sync_mu);
    }
    if (rc) {
        mdb_txn_abort(x->txn);
    } else if (t->syncer_on) {
        /* no wait for the disk: the syncer fdatasyncs after it */
        rc = from_mdb(mdb_txn_commit(x->txn));
        if (rc == 0) {
            pthread_mutex_lock(&t->sync_mu);
            t->commits++;
            pthread_cond_signal(&t->sync_cv);
            pthread_mutex_unlock(&t->sync_mu);
        }
    } else {
        test_sync_hold(); /* the commit fdatasyncs the pages it wrote */
        rc = from_mdb(mdb_txn_commit(x->txn));
    }
    txn_free(x);
    return rc;
}

void rtable_abort(struct rtable_txn *x)
{
    if (!x)
        return;
    mdb_txn_abort(x->txn);
    txn_free(x);
}

int rtable_grow(struct rtable *t)
{
    uint64_t want = t->map_size * 2;
    if (t->max_map_size && want > t->max_map_size)
        want = t->max_map_size;
    if (want <= t->map_size)
        return -EFBIG;
    pthread_rwlock_wrlock(&t->map_mu);
    int rc = mdb_env_set_mapsize(t->env, (size_t)want);
    if (rc == 0)
        t->map_size = want;
    pthread_rwlock_unlock(&t->map_mu);
    return rc ? -EFBIG : 0;
}

static uint64_t read_meta(struct rtable *t, bool checksum)
{
    struct rtable_txn *x;
    if (begin(t, false, &x))
        return 0;
    uint64_t v = checksum ? x->checksum : x->applied;
    rtable_abort(x);
    return v;
}

uint64_t rtable_applied(struct rtable *t)
{
    return read_meta(t, false);
}

uint64_t rtable_checksum(struct rtable *t)
{
    return read_meta(t, true);
}

uint64_t rtable_txn_applied(struct rtable_txn *x)
{
    return x->applied;
}

uint64_t rtable_txn_checksum(struct rtable_txn *x)
{
    return x->checksum;
}

void rtable_txn_set_applied(struct rtable_txn *x, uint64_t index)
{
    x->applied = index;
    x->dirty_meta = true;
}

static bool db_valid(enum rtable_db db)
{
    return db >= 1 && db <= RTABLE_N_DB;
}

int rtable_get(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen,
               const void **val, size_t *vlen)
{
    if (!db_valid(db) || klen > RTABLE_MAX_KEY || (klen > LITERAL_MAX && klen < 8) || klen == 0)
        return -EINVAL;
    MDB_val k = lmdb_key(x, key, klen), v;
    int rc = mdb_get(x->txn, x->t->dbi[db], &k, &v);
    if (rc)
        return from_mdb(rc);
    const void *sk;
    size_t sklen;
    rc = split_value(&v, &sk, &sklen, val, vlen);
    if (rc)
        return rc;
    if (sklen != klen || memcmp(sk, key, klen) != 0)
        return -ENOENT; /* a SHA-256 collision: treat as absent */
    return 0;
}

/* Remove the record under k (if any) from the checksum. */
static int unsum_old(struct rtable_txn *x, enum rtable_db db, MDB_val *k, bool *existed)
{
    MDB_val v;
    int rc = mdb_get(x->txn, x->t->dbi[db], k, &v);
    *existed = false;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return from_mdb(rc);
    const void *sk, *sv;
    size_t sklen, svlen;
    rc = split_value(&v, &sk, &sklen, &sv, &svlen);
    if (rc)
        return rc;
    x->checksum -= record_hash(x->md, db, sk, sklen, sv, svlen);
    *existed = true;
    return 0;
}

int rtable_put(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen,
               const void *val, size_t vlen)
{
    if (!x->write)
        return -EROFS;
    if (!db_valid(db) || klen == 0 || klen > RTABLE_MAX_KEY || vlen > RTABLE_MAX_VALUE)
        return -EINVAL;
    MDB_val k = lmdb_key(x, key, klen);
    bool existed;
    int rc = unsum_old(x, db, &k, &existed);
    if (rc)
        return rc;
    MDB_val v = {4 + klen + vlen, NULL};
    rc = mdb_put(x->txn, x->t->dbi[db], &k, &v, MDB_RESERVE);
    if (rc)
        return from_mdb(rc);
    unsigned char *p = v.mv_data;
    put_u32(p, (uint32_t)klen);
    memcpy(p + 4, key, klen);
    if (vlen)
        memcpy(p + 4 + klen, val, vlen);
    x->checksum += record_hash(x->md, db, key, klen, val, vlen);
    x->dirty_meta = true;
    return 0;
}

int rtable_del(struct rtable_txn *x, enum rtable_db db, const void *key, size_t klen)
{
    if (!x->write)
        return -EROFS;
    if (!db_valid(db) || klen == 0 || klen > RTABLE_MAX_KEY)
        return -EINVAL;
    MDB_val k = lmdb_key(x, key, klen);
    bool existed;
    int rc = unsum_old(x, db, &k, &existed);
    if (rc)
        return rc;
    if (!existed)
        return -ENOENT;
    rc = mdb_del(x->txn, x->t->dbi[db], &k, NULL);
    if (rc)
        return from_mdb(rc);
    x->dirty_meta = true;
    return 0;
}

int rtable_scan(struct rtable_txn *x, enum rtable_db db, const void *prefix, size_t plen,
                rtable_visit_fn fn, void *ud)
{
    if (!db_valid(db) || plen > 8)
        return -EINVAL;
    MDB_cursor *c;
    int rc = mdb_cursor_open(x->txn, x->t->dbi[db], &c);
    if (rc)
        return from_mdb(rc);
    MDB_val k = {plen, (void *)prefix}, v;
    rc = mdb_cursor_get(c, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
    int ret = 0;
    while (rc == 0) {
        if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0))
            break;
        const void *sk, *sv;
        size_t sklen, svlen;
        ret = split_value(&v, &sk, &sklen, &sv, &svlen);
        if (ret)
            break;
        ret = fn(ud, sk, sklen, sv, svlen);
        if (ret)
            break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (ret)
        return ret;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : from_mdb(rc);
}

uint64_t rtable_count(struct rtable_txn *x, enum rtable_db db)
{
    MDB_stat st;
    if (!db_valid(db) || mdb_stat(x->txn, x->t->dbi[db], &st) != 0)
        return 0;
    return st.ms_entries;
}

struct sum_ctx {
    struct rtable_txn *x;
    unsigned db;
    uint64_t sum;
};

static int sum_one(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct sum_ctx *s = ud;
    s->sum += record_hash(s->x->md, s->db, key, klen, val, vlen);
    return 0;
}

int rtable_checksum_compute(struct rtable_txn *x, uint64_t *out)
{
    struct sum_ctx s = {.x = x};
    for (unsigned db = 1; db <= RTABLE_N_DB; db++) {
        s.db = db;
        int rc = rtable_scan(x, db, NULL, 0, sum_one, &s);
        if (rc)
            return rc;
    }
    *out = s.sum;
    return 0;
}

/* ---- snapshots ---- */

struct growbuf {
    unsigned char *p;
    size_t len, cap;
    uint64_t n;
    unsigned db;
};

static int gb_put(struct growbuf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static int snap_one(void *ud, const void *key, size_t klen, const void *val, size_t vlen)
{
    struct growbuf *b = ud;
    unsigned char h[5];
    h[0] = (unsigned char)b->db;
    put_u32(h + 1, (uint32_t)klen);
    unsigned char l[4];
    put_u32(l, (uint32_t)vlen);
    if (gb_put(b, h, 5) || gb_put(b, key, klen) || gb_put(b, l, 4) || gb_put(b, val, vlen))
        return -ENOMEM;
    b->n++;
    return 0;
}

#define SNAP_HDR 32

int rtable_snapshot(struct rtable *t, void **buf, size_t *len)
{
    struct rtable_txn *x;
    int rc = rtable_begin_read(t, &x);
    if (rc)
        return rc;
    struct growbuf b = {0};
    unsigned char hdr[SNAP_HDR] = {'S', 'T', 'R', 'T'};
    rc = gb_put(&b, hdr, SNAP_HDR);
    for (unsigned db = 1; rc == 0 && db <= RTABLE_N_DB; db++) {
        b.db = db;
        rc = rtable_scan(x, db, NULL, 0, snap_one, &b);
    }
    if (rc == 0) {
        put_u32(b.p + 4, RTABLE_FORMAT_VERSION);
        put_u64(b.p + 8, x->applied);
        put_u64(b.p + 16, x->checksum);
        put_u64(b.p + 24, b.n);
    }
    rtable_abort(x);
    if (rc) {
        free(b.p);
        return rc;
    }
    *buf = b.p;
    *len = b.len;
    return 0;
}

int rtable_snapshot_header(const void *buf, size_t len, uint64_t *applied, uint64_t *checksum)
{
    const unsigned char *p = buf;
    if (len < SNAP_HDR || memcmp(p, "STRT", 4) != 0 || get_u32(p + 4) != RTABLE_FORMAT_VERSION)
        return -EINVAL;
    *applied = get_u64(p + 8);
    *checksum = get_u64(p + 16);
    return 0;
}

int rtable_restore(struct rtable *t, const void *buf, size_t len)
{
    const unsigned char *p = buf, *end = p + len;
    if (len < SNAP_HDR || memcmp(p, "STRT", 4) != 0 || get_u32(p + 4) != RTABLE_FORMAT_VERSION)
        return -EINVAL;
    uint64_t applied = get_u64(p + 8), checksum = get_u64(p + 16), n = get_u64(p + 24);
    p += SNAP_HDR;
    struct rtable_txn *x;
    int rc = rtable_begin(t, &x);
    if (rc)
        return rc;
    for (unsigned db = 1; db <= RTABLE_N_DB; db++) {
        rc = from_mdb(mdb_drop(x->txn, t->dbi[db], 0));
        if (rc)
            goto fail;
    }
    x->checksum = 0;
    for (uint64_t i = 0; i < n; i++) {
        rc = -EINVAL;
        if (end - p < 5)
            goto fail;
        unsigned db = p[0];
        uint32_t klen = get_u32(p + 1);
        p += 5;
        if ((size_t)(end - p) < (size_t)klen + 4)
            goto fail;
        const unsigned char *key = p;
        p += klen;
        uint32_t vlen = get_u32(p);
        p += 4;
        if ((size_t)(end - p) < vlen)
            goto fail;
        rc = rtable_put(x, db, key, klen, p, vlen);
        if (rc)
            goto fail;
        p += vlen;
    }
    if (p != end || x->checksum != checksum) {
        rc = -EINVAL;
        goto fail;
    }
    rtable_txn_set_applied(x, applied);
    return rtable_commit(x);
fail:
    rtable_abort(x);
    return rc;
}
