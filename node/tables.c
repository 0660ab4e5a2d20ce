/*
 * tables.c - the single node's operator tables, and the broker's questions
 * to whichever tables are installed (see tables.h).
 *
 * Values (JSON objects, written by the admin API, admin/api.c):
 *   banned:  key "clientid:ID" | "username:NAME" | "address:IP"
 *            {"as": "clientid"|"username"|"address", "who": ..., "reason": ...,
 *             "at": SECONDS, "until": SECONDS (0 = for ever)}
 *   users:   key the user name  {"password_hash": "$7$...", "created_at": SECONDS}
 *   apikeys: key the API key    {"secret_hash": "pbkdf2-sha512$...",
 *                                "created_at": SECONDS, "description": ...}
 *
 * On a single node the tables are sorted arrays under one read-write lock,
 * written whole to DATA_DIR/tables.json (temporary file, fsync, rename)
 * after each change when persistence is on: a few hundred records at most
 * are expected, and a change is an operator's action.
 */
#include "tables.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "broker.h"
#include "fileio.h"
#include "log.h"

#define TABLES_FILE_MAX (16u << 20)

struct trec {
    char *key;
    char *val;
};

struct tables_local {
    pthread_rwlock_t lock;
    struct trec *v[TABLES_N + 1];
    size_t n[TABLES_N + 1];
    char path[512]; /* "" = not persisted */
};

static bool tables_id_ok(int t)
{
    return t >= 1 && t <= TABLES_N;
}

/* Index of key in table t, or -(insertion point) - 1. Lock held. */
static long tl_find(const struct tables_local *tl, int t, const char *key)
{
    size_t lo = 0, hi = tl->n[t];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(tl->v[t][mid].key, key);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(long)lo - 1;
}

static int tl_set(struct tables_local *tl, int t, const char *key, const char *val)
{
    long i = tl_find(tl, t, key);
    char *v = strdup(val);
    if (!v)
        return -ENOMEM;
    if (i >= 0) {
        free(tl->v[t][i].val);
        tl->v[t][i].val = v;
        return 0;
    }
    char *k = strdup(key);
    struct trec *nv = k ? realloc(tl->v[t], (tl->n[t] + 1) * sizeof(*nv)) : NULL;
    if (!nv) {
        free(k);
        free(v);
        return -ENOMEM;
    }
    tl->v[t] = nv;
    size_t at = (size_t)(-i - 1);
    memmove(&nv[at + 1], &nv[at], (tl->n[t] - at) * sizeof(*nv));
    nv[at].key = k;
    nv[at].val = v;
    tl->n[t]++;
    return 0;
}

static const char *const table_names[TABLES_N + 1] = {NULL, "banned", "users", "apikeys"};

/* Write every table to tl->path. Lock held (read at least). */
static int tl_save(struct tables_local *tl)
{
    if (!tl->path[0])
        return 0;
    json_t *doc = json_object();
    for (int t = 1; doc && t <= TABLES_N; t++) {
        json_t *o = json_object();
        for (size_t i = 0; o && i < tl->n[t]; i++)
            json_object_set_new(o, tl->v[t][i].key, json_string(tl->v[t][i].val));
        json_object_set_new(doc, table_names[t], o);
    }
    char *text = doc ? json_dumps(doc, JSON_INDENT(1) | JSON_SORT_KEYS) : NULL;
    json_decref(doc);
    if (!text)
        return -ENOMEM;
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", tl->path);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        rc = -errno;
    size_t len = strlen(text), off = 0;
    while (rc == 0 && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno != EINTR)
            rc = -errno;
        else if (w > 0)
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (fd >= 0 && close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, tl->path) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        log_error("tables: cannot write %s: %s", tl->path, strerror(-rc));
    }
    free(text);
    return rc;
}

static int tl_load(struct tables_local *tl, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = file_read_all(tl->path, TABLES_FILE_MAX, &text, &len);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0) {
        free(text);
        snprintf(err, errlen, "%s: %s", tl->path, strerror(-rc));
        return rc;
    }
    json_error_t je;
    json_t *doc = json_loadb(text, len, 0, &je);
    free(text);
    if (!json_is_object(doc)) {
        json_decref(doc);
        snprintf(err, errlen, "%s: not a JSON object (line %d: %s)", tl->path, je.line, je.text);
        return -EINVAL;
    }
    rc = 0;
    for (int t = 1; rc == 0 && t <= TABLES_N; t++) {
        json_t *o = json_object_get(doc, table_names[t]);
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v)
        {
            if (!json_is_string(v))
                continue;
            if ((rc = tl_set(tl, t, k, json_string_value(v))) < 0)
                break;
        }
    }
    json_decref(doc);
    if (rc < 0)
        snprintf(err, errlen, "%s: out of memory", tl->path);
    return rc;
}

static int tl_get(void *ud, int t, const char *key, char **val)
{
    struct tables_local *tl = ud;
    if (!tables_id_ok(t))
        return -EINVAL;
    pthread_rwlock_rdlock(&tl->lock);
    long i = tl_find(tl, t, key);
    int rc = -ENOENT;
    if (i >= 0) {
        *val = strdup(tl->v[t][i].val);
        rc = *val ? 0 : -ENOMEM;
    }
    pthread_rwlock_unlock(&tl->lock);
    return rc;
}

static int tl_scan(void *ud, int t, tables_visit_fn fn, void *fud)
{
    struct tables_local *tl = ud;
    if (!tables_id_ok(t))
        return -EINVAL;
    pthread_rwlock_rdlock(&tl->lock);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < tl->n[t]; i++)
        rc = fn(fud, tl->v[t][i].key, tl->v[t][i].val);
    pthread_rwlock_unlock(&tl->lock);
    return rc;
}

static bool tl_empty(void *ud, int t)
{
    struct tables_local *tl = ud;
    if (!tables_id_ok(t))
        return true;
    pthread_rwlock_rdlock(&tl->lock);
    bool e = tl->n[t] == 0;
    pthread_rwlock_unlock(&tl->lock);
    return e;
}

static int tl_put(void *ud, int t, const char *key, const char *val, char *err, size_t errlen)
{
    struct tables_local *tl = ud;
    if (!tables_id_ok(t) || !*key || strlen(key) > TABLES_KEY_MAX ||
        strlen(val) > TABLES_VALUE_MAX) {
        snprintf(err, errlen, "bad record");
        return -EINVAL;
    }
    pthread_rwlock_wrlock(&tl->lock);
    int rc = tl_set(tl, t, key, val);
    if (rc == 0)
        rc = tl_save(tl);
    pthread_rwlock_unlock(&tl->lock);
    if (rc < 0)
        snprintf(err, errlen, "cannot store the record: %s", strerror(-rc));
    return rc;
}

static int tl_del(void *ud, int t, const char *key, char *err, size_t errlen)
{
    struct tables_local *tl = ud;
    if (!tables_id_ok(t))
        return -EINVAL;
    pthread_rwlock_wrlock(&tl->lock);
    long i = tl_find(tl, t, key);
    int rc = -ENOENT;
    if (i >= 0) {
        free(tl->v[t][i].key);
        free(tl->v[t][i].val);
        memmove(&tl->v[t][i], &tl->v[t][i + 1], (tl->n[t] - (size_t)i - 1) * sizeof(struct trec));
        tl->n[t]--;
        rc = tl_save(tl);
        if (rc < 0)
            snprintf(err, errlen, "cannot store the change: %s", strerror(-rc));
    }
    pthread_rwlock_unlock(&tl->lock);
    return rc;
}

const struct tables_ops tables_local_ops = {
    .get = tl_get,
    .scan = tl_scan,
    .empty = tl_empty,
    .put = tl_put,
    .del = tl_del,
};

int tables_local_open(struct broker *b, char *err, size_t errlen)
{
    struct tables_local *tl = calloc(1, sizeof(*tl));
    if (!tl)
        return -ENOMEM;
    pthread_rwlock_init(&tl->lock, NULL);
    if (b->cfg.persistence && b->cfg.data_dir[0])
        snprintf(tl->path, sizeof(tl->path), "%s/tables.json", b->cfg.data_dir);
    int rc = tl->path[0] ? tl_load(tl, err, errlen) : 0;
    b->tables = &tables_local_ops;
    b->tables_ud = tl;
    if (rc < 0)
        tables_local_close(b);
    return rc;
}

void tables_local_close(struct broker *b)
{
    if (b->tables != &tables_local_ops)
        return;
    struct tables_local *tl = b->tables_ud;
    for (int t = 1; t <= TABLES_N; t++) {
        for (size_t i = 0; i < tl->n[t]; i++) {
            free(tl->v[t][i].key);
            free(tl->v[t][i].val);
        }
        free(tl->v[t]);
    }
    pthread_rwlock_destroy(&tl->lock);
    free(tl);
    b->tables = NULL;
    b->tables_ud = NULL;
}

/* ---- the broker's questions ---------------------------------------------- */

static bool tables_ban_in_force(struct broker *b, const char *kind, const char *who, size_t len,
                                uint64_t now_real_ms)
{
    char key[TABLES_KEY_MAX + 16];
    if (len > TABLES_KEY_MAX)
        return false;
    snprintf(key, sizeof(key), "%s:%.*s", kind, (int)len, who);
    if (strlen(key) != strlen(kind) + 1 + len)
        return false; /* a NUL inside: no such key */
    char *val = NULL;
    if (b->tables->get(b->tables_ud, TABLES_BANNED, key, &val) < 0)
        return false;
    json_t *doc = json_loads(val, 0, NULL);
    free(val);
    json_t *until = json_object_get(doc, "until");
    json_int_t u = json_is_integer(until) ? json_integer_value(until) : 0;
    json_decref(doc);
    return u <= 0 || (uint64_t)u * 1000u > now_real_ms;
}

bool tables_banned(struct broker *b, const char *client_id, size_t id_len, const char *user,
                   const char *address, uint64_t now_real_ms)
{
    if (!b->tables || b->tables->empty(b->tables_ud, TABLES_BANNED))
        return false;
    if (client_id && tables_ban_in_force(b, "clientid", client_id, id_len, now_real_ms))
        return true;
    if (user && tables_ban_in_force(b, "username", user, strlen(user), now_real_ms))
        return true;
    return address && tables_ban_in_force(b, "address", address, strlen(address), now_real_ms);
}

char *tables_user_hash(struct broker *b, const char *user)
{
    if (!b->tables || b->tables->empty(b->tables_ud, TABLES_USERS))
        return NULL;
    char *val = NULL;
    if (b->tables->get(b->tables_ud, TABLES_USERS, user, &val) < 0)
        return NULL;
    json_t *doc = json_loads(val, 0, NULL);
    free(val);
    json_t *h = json_object_get(doc, "password_hash");
    char *hash = json_is_string(h) ? strdup(json_string_value(h)) : NULL;
    json_decref(doc);
    return hash;
}
