/*
 * api_tables.c - the endpoints over the operator's replicated tables
 * (docs/api.md): banned clients, users, API keys.
 *
 * Each record is stored as a JSON object text under a key (node/tables.h
 * documents the records); the provider's table_* functions replicate them
 * (Raft on a cluster) and answer 0 once the change is committed. Secrets
 * never leave the node: a user's password is stored as a "$7$" PBKDF2 hash
 * (node/passwd.c, the password file's format), an API key's secret as a
 * PBKDF2 hash (keys.c) and shown once, when the key is created.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "admin_int.h"
#include "passwd.h"

#define REASON_MAX 256
#define USER_MAX 256
#define PASSWORD_MAX 1024

/* ---- helpers ------------------------------------------------------------- */

/* The clock the broker enforces bans with (CLOCK_REALTIME, as
 * msg_now_real_ms): time(2) reads a coarser clock that can lag it by a few
 * ms, and a ban whose end had passed for the broker was still listed
 * (test_admin_ops.py::test_banned, once in a whole run). */
static int64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

/* Reply for a failed table_put / table_del. */
static void api_table_error(struct admin_req *r, int rc, const char *why)
{
    if (rc == -EAGAIN || rc == -ENOTCONN || rc == -ETIMEDOUT || rc == -ECONNABORTED)
        admin_reply_error(r, 503, "unavailable", "the change was not committed: %s",
                          why[0] ? why : "no quorum");
    else if (rc == -EINVAL)
        admin_reply_error(r, 400, "bad_request", "%s", why[0] ? why : "bad record");
    else
        admin_reply_error(r, 500, "internal_error", "%s", why[0] ? why : strerror(-rc));
}

/* Store record o (a JSON object) under key. 0, or a reply made. */
static int api_table_store(struct admin_req *r, int table, const char *key, json_t *o)
{
    const struct admin_provider *p = &r->a->provider;
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        admin_reply_error(r, 500, "internal_error", "out of memory");
        return -ENOMEM;
    }
    char why[256] = "";
    int rc = p->table_put ? p->table_put(p->ud, table, key, text, why, sizeof(why)) : -ENOSYS;
    free(text);
    if (rc < 0)
        api_table_error(r, rc, why);
    return rc;
}

static bool api_tables_ok(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (p->table_get && p->table_list && p->table_put && p->table_del)
        return true;
    admin_reply_error(r, 501, "not_implemented", "this node has no tables");
    return false;
}

/* The record of key (a new JSON object), or NULL when there is none. */
static json_t *api_table_get(struct admin_req *r, int table, const char *key)
{
    const struct admin_provider *p = &r->a->provider;
    char *val = NULL;
    if (p->table_get(p->ud, table, key, &val) < 0)
        return NULL;
    json_t *o = json_loads(val, 0, NULL);
    free(val);
    if (!json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The records of a table as a sorted (by key) array made by show(key,
 * record), paged; replies. */
static void api_table_page(struct admin_req *r, int table,
                           json_t *(*show)(const char *key, json_t *rec))
{
    const struct admin_provider *p = &r->a->provider;
    unsigned page, limit;
    char why[128];
    if (admin_paging_parse(admin_req_query(r, "page"), admin_req_query(r, "limit"), &page, &limit,
                           why, sizeof(why)) < 0) {
        admin_reply_error(r, 400, "bad_paging", "%s", why);
        return;
    }
    json_t *all = p->table_list(p->ud, table);
    if (!all) {
        admin_reply_error(r, 500, "internal_error", "cannot read the table");
        return;
    }
    /* jansson's objects keep insertion order: the provider lists in key
     * order (tables.h scan) */
    json_t *data = json_array();
    size_t n = 0, first = (size_t)(page - 1) * limit;
    const char *key;
    json_t *rec;
    json_object_foreach(all, key, rec)
    {
        json_t *shown = show(key, rec);
        if (!shown)
            continue;
        if (n >= first && n < first + limit)
            json_array_append(data, shown);
        json_decref(shown);
        n++;
    }
    json_decref(all);
    admin_reply_json(r, 200,
                     json_pack("{s:o, s:{s:i, s:i, s:I, s:b}}", "data", data, "meta", "page",
                               (int)page, "limit", (int)limit, "count", (json_int_t)n, "hasnext",
                               first + limit < n));
}

/* A string field: absent (NULL, ok), or a string of 1..max bytes without
 * NUL. -EINVAL with a reply otherwise. */
static int api_str_field(struct admin_req *r, json_t *body, const char *name, size_t max,
                         bool required, const char **out)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (!v && !required)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        admin_reply_error(r, 400, "bad_request",
                          "'%s' must be a string of 1 to %zu characters (no NUL)", name, max);
        return -EINVAL;
    }
    *out = json_string_value(v);
    return 0;
}

static int api_check_fields(struct admin_req *r, const char *const *fields)
{
    char why[128];
    if (admin_json_check_fields(r->body, fields, why, sizeof(why)) < 0) {
        admin_reply_error(r, 400, "bad_request", "%s", why);
        return -EINVAL;
    }
    return 0;
}

/* ---- /api/v1/banned ------------------------------------------------------ */

static bool ban_kind_ok(const char *as)
{
    return strcmp(as, "clientid") == 0 || strcmp(as, "username") == 0 || strcmp(as, "address") == 0;
}

/* An expired ban is not shown (nor enforced). */
static json_t *ban_show(const char *key, json_t *rec)
{
    (void)key;
    json_t *until = json_object_get(rec, "until");
    if (json_is_integer(until) && json_integer_value(until) > 0 &&
        json_integer_value(until) <= now_s())
        return NULL;
    return json_incref(rec);
}

void api_banned_list(struct admin_req *r)
{
    if (api_tables_ok(r))
        api_table_page(r, ADMIN_TABLE_BANNED, ban_show);
}

void api_banned_create(struct admin_req *r)
{
    static const char *const fields[] = {"as", "who", "reason", "until", "duration", NULL};
    if (!api_tables_ok(r) || api_check_fields(r, fields) < 0)
        return;
    const char *as, *who, *reason;
    if (api_str_field(r, r->body, "as", 16, true, &as) < 0 ||
        api_str_field(r, r->body, "who", 1000, true, &who) < 0 ||
        api_str_field(r, r->body, "reason", REASON_MAX, false, &reason) < 0)
        return;
    if (!ban_kind_ok(as)) {
        admin_reply_error(r, 400, "bad_request",
                          "'as' must be \"clientid\", \"username\" or \"address\"");
        return;
    }
    /* an address in the form the node compares: inet_ntop's */
    char addr[INET6_ADDRSTRLEN];
    if (strcmp(as, "address") == 0) {
        unsigned char raw[16];
        if (inet_pton(AF_INET, who, raw) == 1)
            inet_ntop(AF_INET, raw, addr, sizeof(addr));
        else if (inet_pton(AF_INET6, who, raw) == 1)
            inet_ntop(AF_INET6, raw, addr, sizeof(addr));
        else {
            admin_reply_error(r, 400, "bad_request", "'who' must be an IPv4 or IPv6 address");
            return;
        }
        who = addr;
    }
    json_t *until = json_object_get(r->body, "until");
    json_t *duration = json_object_get(r->body, "duration");
    int64_t now = now_s(), end = 0;
    if (until && duration) {
        admin_reply_error(r, 400, "bad_request", "give 'until' or 'duration', not both");
        return;
    }
    if (until) {
        if (!json_is_integer(until) || json_integer_value(until) <= now ||
            json_integer_value(until) > 253402300799) {
            admin_reply_error(r, 400, "bad_request",
                              "'until' must be a time in the future, in seconds since the epoch");
            return;
        }
        end = json_integer_value(until);
    } else if (duration) {
        if (!json_is_integer(duration) || json_integer_value(duration) < 1 ||
            json_integer_value(duration) > 100LL * 365 * 86400) {
            admin_reply_error(r, 400, "bad_request",
                              "'duration' must be a number of seconds from 1 to 100 years");
            return;
        }
        end = now + json_integer_value(duration);
    }
    char key[1100];
    snprintf(key, sizeof(key), "%s:%s", as, who);
    json_t *old = api_table_get(r, ADMIN_TABLE_BANNED, key);
    json_t *shown = old ? ban_show(key, old) : NULL;
    json_decref(old);
    if (shown) {
        json_decref(shown);
        admin_reply_error(r, 409, "already_exists", "%s '%.200s' is banned already", as, who);
        return;
    }
    json_t *rec = json_pack("{s:s, s:s, s:s, s:I, s:I}", "as", as, "who", who, "reason",
                            reason ? reason : "", "at", (json_int_t)now, "until", (json_int_t)end);
    if (api_table_store(r, ADMIN_TABLE_BANNED, key, rec) == 0)
        admin_reply_json(r, 201, rec);
    else
        json_decref(rec);
}

void api_banned_delete(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!api_tables_ok(r))
        return;
    const char *as = admin_params_get(&r->params, "as");
    const char *who = admin_params_get(&r->params, "who");
    if (!ban_kind_ok(as)) {
        admin_reply_error(r, 400, "bad_request",
                          "the kind must be \"clientid\", \"username\" or \"address\"");
        return;
    }
    if (strlen(who) > 1000) {
        admin_reply_error(r, 404, "not_found", "%s '%.200s...' is not banned", as, who);
        return;
    }
    char key[1100];
    snprintf(key, sizeof(key), "%s:%s", as, who);
    char why[256] = "";
    int rc = p->table_del(p->ud, ADMIN_TABLE_BANNED, key, why, sizeof(why));
    if (rc == 0)
        admin_reply_json(r, 200,
                         json_pack("{s:s, s:s, s:s}", "as", as, "who", who, "result", "deleted"));
    else if (rc == -ENOENT)
        admin_reply_error(r, 404, "not_found", "%s '%.200s' is not banned", as, who);
    else
        api_table_error(r, rc, why);
}

/* ---- /api/v1/users ------------------------------------------------------- */

static json_t *user_show(const char *key, json_t *rec)
{
    return json_pack("{s:s, s:O}", "username", key, "created_at",
                     json_object_get(rec, "created_at") ? json_object_get(rec, "created_at")
                                                        : json_null());
}

void api_users_list(struct admin_req *r)
{
    if (api_tables_ok(r))
        api_table_page(r, ADMIN_TABLE_USERS, user_show);
}

void api_user_show(struct admin_req *r)
{
    if (!api_tables_ok(r))
        return;
    const char *name = admin_params_get(&r->params, "name");
    json_t *rec = api_table_get(r, ADMIN_TABLE_USERS, name);
    if (!rec) {
        admin_reply_error(r, 404, "not_found", "no user '%.200s'", name);
        return;
    }
    admin_reply_json(r, 200, user_show(name, rec));
    json_decref(rec);
}

/* Hash and store the password of user; created_at kept from old. Replies. */
static void api_user_store(struct admin_req *r, const char *user, const char *password, json_t *old,
                           unsigned status)
{
    char hash[PASSWD_HASH_MAX];
    if (passwd_hash_make(password, strlen(password), PASSWD_ITERATIONS, hash, sizeof(hash)) < 0) {
        admin_reply_error(r, 500, "internal_error", "cannot hash the password");
        return;
    }
    json_t *created = old ? json_object_get(old, "created_at") : NULL;
    json_t *rec = json_pack("{s:s, s:I}", "password_hash", hash, "created_at",
                            created ? json_integer_value(created) : (json_int_t)now_s());
    if (api_table_store(r, ADMIN_TABLE_USERS, user, rec) == 0)
        admin_reply_json(r, status, user_show(user, rec));
    json_decref(rec);
}

void api_user_create(struct admin_req *r)
{
    static const char *const fields[] = {"username", "password", NULL};
    if (!api_tables_ok(r) || api_check_fields(r, fields) < 0)
        return;
    const char *user, *password;
    if (api_str_field(r, r->body, "username", USER_MAX, true, &user) < 0 ||
        api_str_field(r, r->body, "password", PASSWORD_MAX, true, &password) < 0)
        return;
    json_t *old = api_table_get(r, ADMIN_TABLE_USERS, user);
    if (old) {
        json_decref(old);
        admin_reply_error(r, 409, "already_exists", "user '%.200s' exists already", user);
        return;
    }
    api_user_store(r, user, password, NULL, 201);
}

void api_user_update(struct admin_req *r)
{
    static const char *const fields[] = {"password", NULL};
    if (!api_tables_ok(r) || api_check_fields(r, fields) < 0)
        return;
    const char *user = admin_params_get(&r->params, "name"), *password;
    if (api_str_field(r, r->body, "password", PASSWORD_MAX, true, &password) < 0)
        return;
    json_t *old = api_table_get(r, ADMIN_TABLE_USERS, user);
    if (!old) {
        admin_reply_error(r, 404, "not_found", "no user '%.200s'", user);
        return;
    }
    api_user_store(r, user, password, old, 200);
    json_decref(old);
}

void api_user_delete(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!api_tables_ok(r))
        return;
    const char *user = admin_params_get(&r->params, "name");
    char why[256] = "";
    int rc = p->table_del(p->ud, ADMIN_TABLE_USERS, user, why, sizeof(why));
    if (rc == 0)
        admin_reply_json(r, 200, json_pack("{s:s, s:s}", "username", user, "result", "deleted"));
    else if (rc == -ENOENT)
        admin_reply_error(r, 404, "not_found", "no user '%.200s'", user);
    else
        api_table_error(r, rc, why);
}

/* ---- /api/v1/apikeys ----------------------------------------------------- */

static json_t *apikey_show(const char *key, json_t *rec)
{
    json_t *o =
        json_pack("{s:s, s:O?, s:O?}", "key", key, "created_at", json_object_get(rec, "created_at"),
                  "description", json_object_get(rec, "description"));
    return o;
}

void api_apikeys_list(struct admin_req *r)
{
    if (api_tables_ok(r))
        api_table_page(r, ADMIN_TABLE_APIKEYS, apikey_show);
}

static void hex(const unsigned char *b, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[b[i] >> 4];
        out[2 * i + 1] = d[b[i] & 15];
    }
    out[2 * n] = '\0';
}

void api_apikey_create(struct admin_req *r)
{
    static const char *const fields[] = {"key", "description", NULL};
    if (!api_tables_ok(r) || api_check_fields(r, fields) < 0)
        return;
    const char *want, *desc;
    if (api_str_field(r, r->body, "key", 64, false, &want) < 0 ||
        api_str_field(r, r->body, "description", REASON_MAX, false, &desc) < 0)
        return;
    unsigned char rnd[24];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        admin_reply_error(r, 500, "internal_error", "no random bytes");
        return;
    }
    char key[80], secret[40], kv[128], why[128];
    if (want)
        snprintf(key, sizeof(key), "%s", want);
    else {
        hex(rnd, 8, key + 4);
        memcpy(key, "key-", 4);
    }
    hex(rnd + 8, 16, secret);
    snprintf(kv, sizeof(kv), "%s:%s", key, secret);
    if (!admin_api_key_valid(kv, why, sizeof(why))) {
        admin_reply_error(r, 400, "bad_request", "'key': %s", why);
        return;
    }
    json_t *old = api_table_get(r, ADMIN_TABLE_APIKEYS, key);
    if (old) {
        json_decref(old);
        admin_reply_error(r, 409, "already_exists", "API key '%s' exists already", key);
        return;
    }
    char stored[ADMIN_SECRET_HASH_MAX];
    if (admin_secret_hash(secret, stored, sizeof(stored)) < 0) {
        admin_reply_error(r, 500, "internal_error", "cannot hash the secret");
        return;
    }
    int64_t now = now_s();
    json_t *rec = json_pack("{s:s, s:I, s:s}", "secret_hash", stored, "created_at", (json_int_t)now,
                            "description", desc ? desc : "");
    int rc = api_table_store(r, ADMIN_TABLE_APIKEYS, key, rec);
    json_decref(rec);
    if (rc == 0)
        admin_reply_json(r, 201,
                         json_pack("{s:s, s:s, s:I, s:s}", "key", key, "secret", secret,
                                   "created_at", (json_int_t)now, "description", desc ? desc : ""));
}

void api_apikey_delete(struct admin_req *r)
{
    const struct admin_provider *p = &r->a->provider;
    if (!api_tables_ok(r))
        return;
    const char *key = admin_params_get(&r->params, "key");
    char why[256] = "";
    int rc = p->table_del(p->ud, ADMIN_TABLE_APIKEYS, key, why, sizeof(why));
    if (rc == 0)
        admin_reply_json(r, 200, json_pack("{s:s, s:s}", "key", key, "result", "deleted"));
    else if (rc == -ENOENT)
        admin_reply_error(r, 404, "not_found", "no API key '%.200s'", key);
    else
        api_table_error(r, rc, why);
}
