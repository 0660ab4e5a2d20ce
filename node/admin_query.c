/*
 * admin_query.c - the admin API's queries that each node answers for its
 * own part (admin.h, query_local / gather): its clients, their
 * subscriptions and routes, a client's details, a kick, the retained
 * messages. The admin API merges the answers of every node (admin/api.c).
 *
 * Queries (JSON objects) and answers:
 *   {"op": "clients", "limit": N, "after": ID?, "node": NAME?,
 *    "username": U?, "prefix": P?, "connected": B?, "proto": V?}
 *      -> {"count": MATCHING, "data": [CLIENT...]}: the first N matching
 *         clients whose id sorts after ID (byte order), sorted; with
 *         "ids_only": true, data holds only their client ids;
 *   {"op": "client", "id": ID}     -> {"client": DETAILS or null}
 *   {"op": "kick", "id": ID}       -> {"result": "kicked" | "not_connected" | "not_found"}
 *   {"op": "subscriptions", "limit": N, "client": ID?, "topic": F?, "node": NAME?}
 *      -> {"count": MATCHING, "data": [SUB...]} sorted by (client, topic);
 *   {"op": "routes"}               -> {"data": [FILTER...]} distinct, sorted;
 *   {"op": "retained", "limit": N, "after": TOPIC?}
 *      -> {"count": ALL, "data": [MSG...]} sorted by topic;
 *   {"op": "retained_get", "topic": T} -> {"message": MSG or null}.
 *
 * Sessions are read under the registry lock and each session's lock (the
 * registry's lock order), a connection's counters on its worker's thread
 * (worker_post_call), waited for at most ADMIN_QUERY_WAIT_MS.
 *
 * Threads: the admin API's thread, or the cluster's admin query thread.
 */
#include "admin_query.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "broker.h"
#include "conn.h"
#include "log.h"
#include "registry.h"
#include "retain.h"
#include "session.h"
#include "sink.h"
#include "topic.h"
#include "worker.h"

#define ADMIN_QUERY_WAIT_MS 2000

/* One session as the list shows it. */
struct qclient {
    char *id;
    size_t id_len;
    char *user;
    bool connected;
    uint8_t version;
    uint32_t expiry;
    uint32_t subs, inflight, queued;
    uint64_t connected_at;
};

static void qclient_clear(struct qclient *c)
{
    free(c->id);
    free(c->user);
}

static int bytes_cmp(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al < bl ? -1 : al > bl);
}

/* MQTT protocol level -> the version an operator knows: 3 (3.1), 4 (3.1.1), 5. */
static json_t *client_json(const struct qclient *c, const char *node)
{
    json_t *o = json_pack("{s:s%, s:s, s:b, s:i, s:I, s:i, s:i, s:i}", "clientid", c->id, c->id_len,
                          "node", node, "connected", c->connected, "proto_ver", (int)c->version,
                          "expiry_interval", (json_int_t)c->expiry, "subscriptions", (int)c->subs,
                          "inflight", (int)c->inflight, "queued", (int)c->queued);
    if (!o)
        return NULL;
    json_object_set_new(o, "username", c->user ? json_string(c->user) : json_null());
    json_object_set_new(o, "connected_at",
                        c->connected_at ? json_integer((json_int_t)c->connected_at) : json_null());
    return o;
}

static const char *q_str(json_t *q, const char *name)
{
    json_t *v = json_object_get(q, name);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static size_t q_limit(json_t *q)
{
    json_t *v = json_object_get(q, "limit");
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 100;
    return n < 0 ? 0 : (size_t)n;
}

/* A session that matches a clients query: referenced (its client id never
 * changes, so it sorts without a copy), its counters read under its lock. */
struct qref {
    struct session *s;
    struct qclient c; /* id, user NULL until shown */
};

static int qref_cmp(const void *x, const void *y)
{
    const struct qref *a = x, *b = y;
    return bytes_cmp(a->s->client_id, a->s->id_len, b->s->client_id, b->s->id_len);
}

struct client_filter {
    const char *user, *prefix;
    size_t plen;
    int connected; /* -1: any */
    int proto;     /* -1: any */
};

/* The sessions that match f (*n of them, referenced), or NULL. One pass
 * under the registry lock; nothing is allocated per session. */
static struct qref *select_clients(struct broker *b, const struct client_filter *f, size_t *n)
{
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    size_t cap = r->n_sessions ? r->n_sessions : 1, k = 0;
    struct qref *v = malloc(cap * sizeof(*v));
    for (size_t i = 0; v && i < r->n_buckets; i++) {
        for (struct session *s = r->buckets[i]; s && k < cap; s = s->hnext) {
            if (f->prefix && (s->id_len < f->plen || memcmp(s->client_id, f->prefix, f->plen)))
                continue;
            lock_acquire(&s->lock);
            bool match = (!f->user || (s->user && strcmp(s->user, f->user) == 0)) &&
                         (f->connected < 0 || f->connected == (s->conn != NULL)) &&
                         (f->proto < 0 || f->proto == s->version);
            if (match) {
                struct qclient *c = &v[k].c;
                memset(c, 0, sizeof(*c));
                c->connected = s->conn != NULL;
                c->version = s->version;
                c->expiry = s->expiry_interval;
                c->subs = s->n_subs;
                c->inflight = s->inflight.len;
                c->queued = s->queue.len;
                c->connected_at = s->connected_at;
                v[k++].s = session_ref(s);
            }
            lock_release(&s->lock);
        }
    }
    pthread_mutex_unlock(&r->lock);
    *n = k;
    return v;
}

static json_t *query_clients(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    const char *node = q_str(q, "node"), *after = q_str(q, "after");
    json_t *connected = json_object_get(q, "connected"), *proto = json_object_get(q, "proto");
    struct client_filter f = {
        .user = q_str(q, "username"),
        .prefix = q_str(q, "prefix"),
        .connected = json_is_boolean(connected) ? json_is_true(connected) : -1,
        .proto = json_is_integer(proto) ? (int)json_integer_value(proto) : -1,
    };
    f.plen = f.prefix ? strlen(f.prefix) : 0;
    size_t limit = q_limit(q);
    json_t *data = json_array();
    if (node && strcmp(node, l->name) != 0)
        return json_pack("{s:i, s:o}", "count", 0, "data", data);
    size_t n;
    struct qref *v = select_clients(l->b, &f, &n);
    if (!v) {
        json_decref(data);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), qref_cmp);
    /* the first one after the cursor: binary search */
    size_t lo = 0, hi = n, alen = after ? strlen(after) : 0;
    while (after && lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (bytes_cmp(v[mid].s->client_id, v[mid].s->id_len, after, alen) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    bool ids_only = json_is_true(json_object_get(q, "ids_only"));
    for (size_t i = after ? lo : 0; i < n && json_array_size(data) < limit; i++) {
        if (ids_only) {
            json_array_append_new(data, json_stringn(v[i].s->client_id, v[i].s->id_len));
            continue;
        }
        struct qclient *c = &v[i].c;
        struct session *s = v[i].s;
        c->id = s->client_id;
        c->id_len = s->id_len;
        lock_acquire(&s->lock);
        c->user = s->user ? strdup(s->user) : NULL;
        lock_release(&s->lock);
        json_array_append_new(data, client_json(c, l->name));
        free(c->user);
    }
    for (size_t i = 0; i < n; i++)
        session_unref(v[i].s);
    free(v);
    return json_pack("{s:I, s:o}", "count", (json_int_t)n, "data", data);
}

/* ---- one client ---------------------------------------------------------- */

/* A connection's details, read on its worker. Two references: the waiter's
 * and the worker call's; the last one frees it. */
struct conn_probe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int refs;
    bool done, found;
    struct conn *c;
    struct session *s;
    char address[64];
    uint16_t keepalive;
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
};

static void conn_probe_unref(struct conn_probe *p)
{
    if (atomic_fetch_sub(&p->refs, 1) == 1) {
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
    }
}

static void conn_probe_run(void *ud)
{
    struct conn_probe *p = ud;
    struct conn *c = p->c;
    bool found = c->session == p->s && conn_is_open(c);
    if (found) {
        conn_peer(c, p->address, sizeof(p->address));
        p->keepalive = c->keepalive;
        p->bytes_in = c->bytes_in;
        p->bytes_out = c->bytes_out;
        p->msgs_in = c->msgs_in;
        p->msgs_out = c->msgs_out;
    }
    conn_unref(c);
    session_unref(p->s);
    pthread_mutex_lock(&p->mu);
    p->found = found;
    p->done = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    conn_probe_unref(p);
}

static json_t *query_client(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    struct broker *b = l->b;
    const char *id = q_str(q, "id");
    if (!id) {
        snprintf(err, errlen, "'id' is required");
        return NULL;
    }
    struct qclient c = {0};
    struct conn_probe *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->refs, 1);
    struct worker *w = NULL;
    bool exists = false;
    uint64_t dropped = 0;
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *s = registry_find(r, id, strlen(id));
    if (s) {
        exists = true;
        lock_acquire(&s->lock);
        c.id_len = s->id_len;
        c.id = strndup(s->client_id, s->id_len);
        c.user = s->user ? strdup(s->user) : NULL;
        c.connected = s->conn != NULL;
        c.version = s->version;
        c.expiry = s->expiry_interval;
        c.subs = s->n_subs;
        c.inflight = s->inflight.len;
        c.queued = s->queue.len;
        c.connected_at = s->connected_at;
        for (int i = 0; i < SESSION_DROP_N; i++)
            dropped += s->dropped[i];
        if (s->conn) {
            p->c = conn_ref(s->conn);
            p->s = session_ref(s);
            w = s->w;
        }
        lock_release(&s->lock);
    }
    pthread_mutex_unlock(&r->lock);
    if (!exists || !c.id) {
        conn_probe_unref(p);
        qclient_clear(&c);
        if (exists) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        return json_pack("{s:n}", "client");
    }
    if (w) {
        atomic_fetch_add(&p->refs, 1);
        if (worker_post_call(w, conn_probe_run, p) < 0) {
            conn_unref(p->c);
            session_unref(p->s);
            conn_probe_unref(p);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += ADMIN_QUERY_WAIT_MS / 1000;
            pthread_mutex_lock(&p->mu);
            while (!p->done)
                if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) != 0)
                    break;
            pthread_mutex_unlock(&p->mu);
        }
    }
    json_t *o = client_json(&c, l->name);
    pthread_mutex_lock(&p->mu);
    bool found = p->done && p->found;
    if (o) {
        json_object_set_new(o, "address", found ? json_string(p->address) : json_null());
        json_object_set_new(o, "keepalive", found ? json_integer(p->keepalive) : json_null());
        json_object_set_new(o, "bytes_in", json_integer((json_int_t)p->bytes_in));
        json_object_set_new(o, "bytes_out", json_integer((json_int_t)p->bytes_out));
        json_object_set_new(o, "messages_in", json_integer((json_int_t)p->msgs_in));
        json_object_set_new(o, "messages_out", json_integer((json_int_t)p->msgs_out));
        json_object_set_new(o, "messages_dropped", json_integer((json_int_t)dropped));
    }
    pthread_mutex_unlock(&p->mu);
    conn_probe_unref(p);
    qclient_clear(&c);
    return json_pack("{s:o}", "client", o ? o : json_null());
}

static json_t *query_kick(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    struct broker *b = l->b;
    const char *id = q_str(q, "id");
    if (!id) {
        snprintf(err, errlen, "'id' is required");
        return NULL;
    }
    const char *result = "not_found";
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *s = registry_find(r, id, strlen(id));
    if (s) {
        lock_acquire(&s->lock);
        if (s->conn) {
            /* [MQTT-5.0 3.14.2.1] 0x98 Administrative action */
            b->sink->kick(s->w, s->conn, MQTT_RC_ADMIN_ACTION, false);
            result = "kicked";
            log_info("admin: client '%s' kicked", s->client_id);
        } else {
            result = "not_connected";
        }
        lock_release(&s->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return json_pack("{s:s}", "result", result);
}

/* ---- subscriptions and routes -------------------------------------------- */

struct qsub {
    char *client;
    size_t client_len;
    char *filter;
    uint8_t options;
    uint32_t sub_id;
};

static int qsub_cmp(const void *x, const void *y)
{
    const struct qsub *a = x, *b = y;
    int c = bytes_cmp(a->client, a->client_len, b->client, b->client_len);
    return c ? c : strcmp(a->filter, b->filter);
}

/* Every subscription of the node (or of one client, or of one filter). */
static struct qsub *snapshot_subs(struct broker *b, const char *client, const char *topic,
                                  size_t *n)
{
    struct registry *r = &b->registry;
    size_t k = 0, cap = 0;
    struct qsub *v = NULL;
    bool oom = false;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; !oom && i < r->n_buckets; i++) {
        for (struct session *s = r->buckets[i]; s && !oom; s = s->hnext) {
            if (client && (strlen(client) != s->id_len || memcmp(client, s->client_id, s->id_len)))
                continue;
            lock_acquire(&s->lock);
            for (uint32_t j = 0; j < s->n_subs; j++) {
                struct session_sub *ss = &s->subs[j];
                if (topic && (strlen(topic) != ss->len || memcmp(topic, ss->filter, ss->len)))
                    continue;
                if (k == cap) {
                    size_t nc = cap ? cap * 2 : 64;
                    struct qsub *nv = realloc(v, nc * sizeof(*nv));
                    if (!nv) {
                        oom = true;
                        break;
                    }
                    v = nv;
                    cap = nc;
                }
                struct qsub *q = &v[k];
                q->client = strndup(s->client_id, s->id_len);
                q->client_len = s->id_len;
                q->filter = strndup(ss->filter, ss->len);
                q->options = ss->options;
                q->sub_id = ss->sub_id;
                if (!q->client || !q->filter) {
                    free(q->client);
                    free(q->filter);
                    oom = true;
                    break;
                }
                k++;
            }
            lock_release(&s->lock);
        }
    }
    pthread_mutex_unlock(&r->lock);
    *n = k;
    if (oom) {
        for (size_t i = 0; i < k; i++) {
            free(v[i].client);
            free(v[i].filter);
        }
        free(v);
        return NULL;
    }
    return v ? v : calloc(1, sizeof(*v));
}

static json_t *query_subscriptions(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    const char *node = q_str(q, "node");
    size_t limit = q_limit(q);
    json_t *data = json_array();
    if (node && strcmp(node, l->name) != 0)
        return json_pack("{s:i, s:o}", "count", 0, "data", data);
    size_t n;
    struct qsub *v = snapshot_subs(l->b, q_str(q, "client"), q_str(q, "topic"), &n);
    if (!v) {
        json_decref(data);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    qsort(v, n, sizeof(*v), qsub_cmp);
    for (size_t i = 0; i < n; i++) {
        if (i < limit) {
            /* the MQTT 5.0 subscription options byte (3.8.3.1) */
            json_t *o = json_pack("{s:s%, s:s, s:s, s:i, s:b, s:b, s:i}", "clientid", v[i].client,
                                  v[i].client_len, "topic", v[i].filter, "node", l->name, "qos",
                                  v[i].options & 3, "nl", (v[i].options >> 2) & 1, "rap",
                                  (v[i].options >> 3) & 1, "rh", (v[i].options >> 4) & 3);
            if (o && v[i].sub_id)
                json_object_set_new(o, "subscription_id", json_integer(v[i].sub_id));
            json_array_append_new(data, o);
        }
        free(v[i].client);
        free(v[i].filter);
    }
    free(v);
    return json_pack("{s:I, s:o}", "count", (json_int_t)n, "data", data);
}

static int str_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static json_t *query_routes(struct admin_local *l, char *err, size_t errlen)
{
    size_t n;
    struct qsub *v = snapshot_subs(l->b, NULL, NULL, &n);
    char **f = v ? calloc(n ? n : 1, sizeof(*f)) : NULL;
    if (!f) {
        for (size_t i = 0; v && i < n; i++) {
            free(v[i].client);
            free(v[i].filter);
        }
        free(v);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        f[i] = v[i].filter;
        free(v[i].client);
    }
    free(v);
    qsort(f, n, sizeof(*f), str_cmp);
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(f[i], f[i - 1]) != 0)
            json_array_append_new(data, json_string(f[i]));
    }
    for (size_t i = 0; i < n; i++)
        free(f[i]);
    free(f);
    return json_pack("{s:o}", "data", data);
}

/* ---- retained messages --------------------------------------------------- */

/* A payload as JSON: the text when it is valid UTF-8, else base64. */
static void payload_json(json_t *o, const void *data, size_t len)
{
    json_t *s = json_stringn(data, len);
    if (s && !memchr(data, 0, len)) {
        json_object_set_new(o, "payload", s);
        json_object_set_new(o, "encoding", json_string("plain"));
        return;
    }
    json_decref(s);
    char *b64 = malloc(len / 3 * 4 + 8);
    if (!b64)
        return;
    EVP_EncodeBlock((unsigned char *)b64, data, (int)len);
    json_object_set_new(o, "payload", json_string(b64));
    json_object_set_new(o, "encoding", json_string("base64"));
    free(b64);
}

static json_t *retained_json(struct msg *m)
{
    json_t *o = json_pack("{s:s%, s:i, s:I}", "topic", msg_topic(m), (size_t)m->topic_len, "qos",
                          (int)m->qos, "size", (json_int_t)m->payload_len);
    if (o)
        payload_json(o, msg_payload(m), m->payload_len);
    return o;
}

struct retained_acc {
    struct msg **v;
    size_t n, cap;
    bool oom;
};

static void retained_collect(void *ud, struct msg *m)
{
    struct retained_acc *a = ud;
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        struct msg **nv = realloc(a->v, nc * sizeof(*nv));
        if (!nv) {
            a->oom = true;
            return;
        }
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = msg_ref(m);
}

static int msg_topic_cmp(const void *x, const void *y)
{
    const struct msg *a = *(struct msg *const *)x, *b = *(struct msg *const *)y;
    return bytes_cmp(msg_topic(a), a->topic_len, msg_topic(b), b->topic_len);
}

static json_t *query_retained(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    struct retained_acc a = {0};
    uint64_t now = msg_now_real_ms();
    retain_match(l->b->retained, "#", 1, now, retained_collect, &a);
    /* "#" leaves out the topics that start with '$' [MQTT-4.7.2-1]: $SYS
     * is per node, not the cluster's */
    const char *one = q_str(q, "topic");
    const char *after = q_str(q, "after");
    size_t limit = q_limit(q);
    json_t *res = NULL;
    if (a.oom) {
        snprintf(err, errlen, "out of memory");
    } else if (one) {
        json_t *m = NULL;
        for (size_t i = 0; i < a.n && !m; i++)
            if (a.v[i]->topic_len == strlen(one) &&
                memcmp(msg_topic(a.v[i]), one, a.v[i]->topic_len) == 0)
                m = retained_json(a.v[i]);
        res = json_pack("{s:o}", "message", m ? m : json_null());
    } else {
        if (a.n > 1)
            qsort(a.v, a.n, sizeof(*a.v), msg_topic_cmp);
        json_t *data = json_array();
        for (size_t i = 0; i < a.n && json_array_size(data) < limit; i++) {
            if (after && bytes_cmp(msg_topic(a.v[i]), a.v[i]->topic_len, after, strlen(after)) <= 0)
                continue;
            json_array_append_new(data, retained_json(a.v[i]));
        }
        res = json_pack("{s:I, s:o}", "count", (json_int_t)a.n, "data", data);
    }
    for (size_t i = 0; i < a.n; i++)
        msg_unref(a.v[i]);
    free(a.v);
    return res;
}

json_t *admin_query_run(struct admin_local *l, json_t *q, char *err, size_t errlen)
{
    const char *op = q_str(q, "op");
    if (!op) {
        snprintf(err, errlen, "a query needs an 'op'");
        return NULL;
    }
    if (strcmp(op, "clients") == 0)
        return query_clients(l, q, err, errlen);
    if (strcmp(op, "client") == 0)
        return query_client(l, q, err, errlen);
    if (strcmp(op, "kick") == 0)
        return query_kick(l, q, err, errlen);
    if (strcmp(op, "subscriptions") == 0)
        return query_subscriptions(l, q, err, errlen);
    if (strcmp(op, "routes") == 0)
        return query_routes(l, err, errlen);
    if (strcmp(op, "retained") == 0)
        return query_retained(l, q, err, errlen);
    snprintf(err, errlen, "unknown query '%.40s'", op);
    return NULL;
}
