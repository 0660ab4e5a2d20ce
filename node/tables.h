/*
 * tables.h - the operator's tables: banned clients, users, API keys
 * (docs/api.md "/banned", "/users", "/apikeys").
 *
 * Records are (key, value) pairs of text: the key names the record (the
 * user name, the API key, "clientid:ID" / "username:NAME" / "address:IP" of
 * a ban), the value is a JSON object (tables.c documents each table's). The
 * tables are replicated through Raft on a cluster (node/cluster_tables.c:
 * RTABLE_ADMIN, AdminPut / AdminDelete) and kept in memory and persisted to
 * DATA_DIR/tables.json on a single node (tables.c), behind one interface
 * the broker and the admin API use without knowing which.
 *
 * Threads: every function may be called from any thread (workers at
 * CONNECT, the admin API's thread).
 */
#ifndef STARLING_TABLES_H
#define STARLING_TABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct broker;

enum tables_id {
    TABLES_BANNED = 1,
    TABLES_USERS = 2,
    TABLES_APIKEYS = 3,
};
#define TABLES_N 3
#define TABLES_KEY_MAX 1024
#define TABLES_VALUE_MAX 4096

typedef int (*tables_visit_fn)(void *ud, const char *key, const char *val);

struct tables_ops {
    /* The value of key (malloc'd, NUL-terminated) in *val: 0 or -ENOENT. */
    int (*get)(void *ud, int table, const char *key, char **val);
    /* Every record in key order; fn returns 0 to go on. */
    int (*scan)(void *ud, int table, tables_visit_fn fn, void *fud);
    /* Whether the table has no record (a cheap check for the CONNECT path). */
    bool (*empty)(void *ud, int table);
    /* Set or remove a record, durable (committed) when it returns 0. del of
     * an absent key: -ENOENT. -EAGAIN: no quorum (cluster). */
    int (*put)(void *ud, int table, const char *key, const char *val, char *err, size_t errlen);
    int (*del)(void *ud, int table, const char *key, char *err, size_t errlen);
};

/* ---- the single node's tables (tables.c) --------------------------------- */

struct tables_local;

/* Load DATA_DIR/tables.json (when persistence is on; a missing file is
 * empty tables) and install the tables on b (b->tables). 0, or a negative
 * errno with the reason in err. Main thread, before the workers start. */
int tables_local_open(struct broker *b, char *err, size_t errlen);
void tables_local_close(struct broker *b);
extern const struct tables_ops tables_local_ops;

/* ---- what the broker asks (tables.c, over b->tables) --------------------- */

/* Whether a ban in force (not expired at now_real_ms) names the client id,
 * the user name (NULL: none) or the address (the IP, no port; NULL: none). */
bool tables_banned(struct broker *b, const char *client_id, size_t id_len, const char *user,
                   const char *address, uint64_t now_real_ms);

/* The stored password hash of user in the user table (malloc'd), or NULL
 * when the table has no such user. */
char *tables_user_hash(struct broker *b, const char *user);

#endif
