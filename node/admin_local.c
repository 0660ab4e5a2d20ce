/*
 * admin_local.c - the admin API's provider for a single node (see
 * admin_local.h).
 *
 * Every answer reads what the broker already keeps for $SYS (sys.c): the
 * atomic counters of struct broker_stats, the session count under the
 * session table's lock, the index's and retained store's counts under their
 * locks. Nothing here writes broker state except a publish, which goes
 * through broker_publish like a will does (any thread may call it).
 *
 * "Serving" is learnt on the broker's main loop: server_run starts its loop
 * only after every worker listens (or failed to), so a prepare handle that
 * runs at the loop's first turn sees the workers' final state on the thread
 * that set it, and publishes it through an atomic flag.
 */
#include "admin_local.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "admin_query.h"
#include "broker.h"
#include "msg.h"
#include "persist.h"
#include "retain.h"
#include "tables.h"
#include "topic.h"
#include "registry.h"
#include "server.h"
#include "session.h"
#include "store.h"
#include "worker.h"

static void admin_local_closed(uv_handle_t *h)
{
    (void)h;
}

static void admin_local_on_probe(uv_prepare_t *h)
{
    struct admin_local *l = h->data;
    struct broker *b = l->b;
    struct server *srv = b->server;
    bool all = srv && srv->workers && srv->n_workers > 0;
    for (int i = 0; all && i < srv->n_workers; i++)
        all = srv->workers[i] && srv->workers[i]->started;
    if (all && !atomic_load(&b->stopping))
        atomic_store(&l->serving, true);
    uv_prepare_stop(h);
    uv_close((uv_handle_t *)h, admin_local_closed);
    l->probe_open = false;
}

static bool admin_local_up(struct admin_local *l)
{
    return atomic_load(&l->serving) && !atomic_load(&l->b->stopping);
}

static void admin_local_health(void *ud, struct admin_health *h)
{
    struct admin_local *l = ud;
    memset(h, 0, sizeof(*h));
    h->serving = admin_local_up(l);
    if (!h->serving)
        h->reason =
            atomic_load(&l->b->stopping) ? "the node is shutting down" : "the node is starting";
}

static int admin_local_nodes(void *ud, struct admin_node *v, size_t cap)
{
    struct admin_local *l = ud;
    if (cap >= 1) {
        memset(&v[0], 0, sizeof(v[0]));
        snprintf(v[0].name, sizeof(v[0].name), "%s", l->name);
        snprintf(v[0].address, sizeof(v[0].address), "%s", l->address);
        v[0].role = "standalone";
        v[0].reachable = admin_local_up(l);
        v[0].leader = false;
        v[0].self = true;
    }
    return 1;
}

static int admin_local_stats(void *ud, bool cluster_wide, struct admin_stats *v, size_t cap)
{
    (void)cluster_wide; /* one node either way */
    struct admin_local *l = ud;
    struct broker *b = l->b;
    if (cap < 1)
        return 1;
    struct admin_stats *s = &v[0];
    memset(s, 0, sizeof(*s));
    snprintf(s->node, sizeof(s->node), "%s", l->name);
    snprintf(s->version, sizeof(s->version), "%s", STARLING_VERSION);
    s->uptime_s = (broker_now_mono_ms() - b->started_at_ms) / 1000u;
    struct server *srv = b->server;
    long conns = srv ? atomic_load(&srv->connections) : 0;
    s->connections = conns > 0 ? (uint64_t)conns : 0;
    s->clients_connected = atomic_load(&b->stats.clients_connected);
    s->clients_maximum = atomic_load(&b->stats.clients_maximum);
    s->sessions = registry_count(&b->registry);
    s->subscriptions = sub_index_count(b->index);
    s->retained = retain_count(b->retained);
    s->msgs_received = broker_msgs_received(b);
    s->msgs_sent = atomic_load(&b->stats.msgs_sent);
    s->msgs_dropped = atomic_load(&b->stats.msgs_dropped);
    s->bytes_received = atomic_load(&b->stats.bytes_received);
    s->bytes_sent = atomic_load(&b->stats.bytes_sent);
    return 1;
}

/* Label values of enum broker_drop (docs/operations.md). */
static const char *const admin_local_drop_names[BROKER_DROP_N] = {
    [BROKER_DROP_OFFLINE] = "queue_full_offline",
    [BROKER_DROP_SLOW_NEW] = "queue_full_new",
    [BROKER_DROP_SLOW_OLDEST] = "queue_full_oldest",
    [BROKER_DROP_SLOW_DISCONNECT] = "queue_full_disconnect",
    [BROKER_DROP_EXPIRED] = "expired",
    [BROKER_DROP_TOO_LARGE] = "too_large",
    [BROKER_DROP_NO_MEMORY] = "no_memory",
    [BROKER_DROP_ACL] = "acl_denied",
    [BROKER_DROP_PEER_QUEUE_FULL] = "peer_queue_full",
    [BROKER_DROP_PEER_UNAVAILABLE] = "peer_unavailable",
    [BROKER_DROP_OUTBOX_FULL] = "outbox_full",
    [BROKER_DROP_SESSION_MOVED] = "session_moved",
    [BROKER_DROP_NODE_FORGOTTEN] = "node_forgotten",
};
_Static_assert(BROKER_DROP_N + 1 <= ADMIN_DROP_REASONS_MAX, "room for every reason");

/* The messages in every session: one pass under the session table's lock,
 * each session's lock held while its two lengths are read. */
static void admin_local_session_totals(struct broker *b, uint64_t *inflight, uint64_t *queued)
{
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n_buckets; i++)
        for (struct session *s = r->buckets[i]; s; s = s->hnext) {
            lock_acquire(&s->lock);
            *inflight += s->inflight.len;
            *queued += s->queue.len;
            lock_release(&s->lock);
        }
    pthread_mutex_unlock(&r->lock);
}

static void admin_local_metrics(void *ud, struct admin_metrics *m)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    struct worker_metrics_sum w = {0};
    struct server *srv = b->server;
    /* the workers exist from `serving` until after the admin API stopped */
    if (atomic_load(&l->serving) && srv)
        for (int i = 0; i < srv->n_workers; i++)
            worker_metrics_add(srv->workers[i], &w);
    for (int q = 0; q < 3; q++) {
        m->msgs_in[q] = w.msgs_in[q] + broker_fwd_msgs_in(b, q);
        m->bytes_in[q] = w.bytes_in[q] + broker_fwd_bytes_in(b, q);
        m->msgs_out[q] = w.msgs_out[q];
        m->bytes_out[q] = w.bytes_out[q];
    }
    m->delivery = w.delivery;
    for (int i = 0; i < BROKER_DROP_N; i++)
        m->dropped[m->n_dropped++] = (struct admin_drop_count){
            admin_local_drop_names[i],
            atomic_load_explicit(&b->stats.dropped[i], memory_order_relaxed)};
    m->dropped[m->n_dropped++] = (struct admin_drop_count){"no_subscribers", w.no_subscribers};
    admin_local_session_totals(b, &m->inflight, &m->queued);
    if (b->store) {
        struct store_stats st;
        store_get_stats(b->store, &st);
        m->has_store = true;
        m->store_commits = st.commits;
        m->store_failed = st.failed;
        m->store_fsyncs = st.fsyncs;
        m->store_commit = st.commit_time;
        m->store_sync = st.sync_time;
    }
}

static int admin_local_publish(void *ud, const struct admin_publish *p, char *err, size_t errlen)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    if (!admin_local_up(l)) {
        snprintf(err, errlen, "the node does not serve clients now");
        return -EAGAIN;
    }
    size_t tlen = strlen(p->topic);
    /* [MQTT-3.3.2-2] no wildcards in a topic name */
    if (tlen > 65535 || !topic_name_valid(p->topic, tlen)) {
        snprintf(err, errlen, "'%.100s' is not a valid topic name (no '+' or '#')", p->topic);
        return -EINVAL;
    }
    if (p->qos > b->cfg.max_qos) {
        snprintf(err, errlen, "qos %u is above this node's max_qos %u", p->qos, b->cfg.max_qos);
        return -EINVAL;
    }
    if (p->retain && !b->cfg.retain_available) {
        snprintf(err, errlen, "retained messages are off on this node (retain_available)");
        return -EINVAL;
    }
    if (p->payload_len > b->cfg.max_packet_size) {
        snprintf(err, errlen, "the payload is larger than max_packet_size");
        return -EINVAL;
    }
    struct msg *m = msg_new(p->topic, (uint16_t)tlen, p->payload, (uint32_t)p->payload_len, NULL, 0,
                            p->qos, p->retain, 0, NULL);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int n = broker_publish(b, m, 0, NULL, NULL, NULL, NULL);
    msg_unref(m);
    if (n == -ENOMEM)
        snprintf(err, errlen, "out of memory: a matching subscriber may not have the message");
    return n;
}

/* ---- queries and tables -------------------------------------------------- */

static json_t *admin_local_query(void *ud, json_t *q, char *err, size_t errlen)
{
    return admin_query_run(ud, q, err, errlen);
}

/* One node: the node's own answer. */
static json_t *admin_local_gather(void *ud, json_t *q, char *err, size_t errlen)
{
    struct admin_local *l = ud;
    char why[256] = "";
    json_t *res = admin_query_run(l, q, why, sizeof(why));
    if (!res) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    return json_pack("[{s:s, s:o}]", "node", l->name, "result", res);
}

static int admin_local_table_get(void *ud, int table, const char *key, char **val)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    if (!b->tables)
        return -ENOENT;
    return b->tables->get(b->tables_ud, table, key, val);
}

static int admin_local_list_one(void *ud, const char *key, const char *val)
{
    json_t *doc = json_loads(val, 0, NULL);
    if (json_is_object(doc))
        json_object_set_new(ud, key, doc);
    else
        json_decref(doc);
    return 0;
}

static json_t *admin_local_table_list(void *ud, int table)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    json_t *o = json_object();
    if (o && b->tables && b->tables->scan(b->tables_ud, table, admin_local_list_one, o) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int admin_local_table_put(void *ud, int table, const char *key, const char *val, char *err,
                                 size_t errlen)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    if (!b->tables) {
        snprintf(err, errlen, "no tables on this node");
        return -ENOSYS;
    }
    return b->tables->put(b->tables_ud, table, key, val, err, errlen);
}

static int admin_local_table_del(void *ud, int table, const char *key, char *err, size_t errlen)
{
    struct admin_local *l = ud;
    struct broker *b = l->b;
    if (!b->tables) {
        snprintf(err, errlen, "no tables on this node");
        return -ENOSYS;
    }
    return b->tables->del(b->tables_ud, table, key, err, errlen);
}

static void admin_local_count(void *ud, struct msg *m)
{
    (void)m;
    (*(int *)ud)++;
}

int admin_local_retained_clear(struct admin_local *l, const char *topic, char *err, size_t errlen)
{
    struct broker *b = l->b;
    size_t tlen = strlen(topic);
    if (tlen == 0 || tlen > 65535 || !topic_name_valid(topic, tlen)) {
        snprintf(err, errlen, "'%.100s' is not a topic name", topic);
        return -EINVAL;
    }
    int found = 0;
    retain_match(b->retained, topic, tlen, msg_now_real_ms(), admin_local_count, &found);
    if (!found) {
        snprintf(err, errlen, "no retained message on '%.100s'", topic);
        return -ENOENT;
    }
    /* an empty retained message removes the topic's [MQTT-3.3.1-6] */
    struct msg *m = msg_new(topic, (uint16_t)tlen, NULL, 0, NULL, 0, 0, true, 0, NULL);
    if (!m || retain_set(b->retained, m) < 0) {
        msg_unref(m);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct store_batch *bt = NULL;
    persist_retained(b, &bt, m);
    if (bt)
        persist_submit(b, &bt, NULL, NULL);
    msg_unref(m);
    return 0;
}

static int admin_local_retained_delete(void *ud, const char *topic, char *err, size_t errlen)
{
    return admin_local_retained_clear(ud, topic, err, errlen);
}

int admin_local_key_verify(struct admin_local *l, const char *key, const char *secret)
{
    char *val = NULL;
    struct broker *b = l->b;
    int rc = -ENOENT;
    if (b->tables && !b->tables->empty(b->tables_ud, TABLES_APIKEYS))
        rc = b->tables->get(b->tables_ud, TABLES_APIKEYS, key, &val);
    if (rc < 0)
        return -ENOENT;
    json_t *doc = json_loads(val, 0, NULL);
    free(val);
    json_t *h = json_object_get(doc, "secret_hash");
    rc = json_is_string(h) && admin_secret_verify(secret, json_string_value(h)) == 0 ? 0 : -EACCES;
    json_decref(doc);
    return rc;
}

void admin_local_init(struct admin_local *l, struct broker *b, struct admin_provider *p)
{
    memset(l, 0, sizeof(*l));
    l->b = b;
    /* node_name when set (a clustered node always has it: the name that
     * /api/v1/cluster lists), else the host name */
    if (b->cfg.node_name[0])
        snprintf(l->name, sizeof(l->name), "%.*s", (int)sizeof(l->name) - 1, b->cfg.node_name);
    else if (gethostname(l->name, sizeof(l->name) - 1) != 0 || !l->name[0])
        snprintf(l->name, sizeof(l->name), "starling");
    const char *addr = b->cfg.bind_address;
    bool v6 = strchr(addr, ':') != NULL;
    snprintf(l->address, sizeof(l->address), "%s%s%s:%u", v6 ? "[" : "", addr, v6 ? "]" : "",
             b->cfg.port);
    uv_prepare_init(uv_default_loop(), &l->probe);
    l->probe.data = l;
    uv_prepare_start(&l->probe, admin_local_on_probe);
    uv_unref((uv_handle_t *)&l->probe);
    l->probe_open = true;

    memset(p, 0, sizeof(*p));
    p->ud = l;
    p->health = admin_local_health;
    p->nodes = admin_local_nodes;
    p->stats = admin_local_stats;
    p->metrics = admin_local_metrics;
    p->publish = admin_local_publish;
    p->query_local = admin_local_query;
    p->gather = admin_local_gather;
    p->table_get = admin_local_table_get;
    p->table_list = admin_local_table_list;
    p->table_put = admin_local_table_put;
    p->table_del = admin_local_table_del;
    p->retained_delete = admin_local_retained_delete;
    /* not clustered: no cluster_leave, no cluster_forget */
}

void admin_local_detach(struct admin_local *l)
{
    atomic_store(&l->serving, false);
    if (l->probe_open) {
        uv_close((uv_handle_t *)&l->probe, admin_local_closed);
        uv_run(uv_default_loop(), UV_RUN_NOWAIT);
        l->probe_open = false;
    }
}
