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

#include "broker.h"
#include "msg.h"
#include "topic.h"
#include "registry.h"
#include "server.h"
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
    s->msgs_received = atomic_load(&b->stats.msgs_received);
    s->msgs_sent = atomic_load(&b->stats.msgs_sent);
    s->msgs_dropped = atomic_load(&b->stats.msgs_dropped);
    s->bytes_received = atomic_load(&b->stats.bytes_received);
    s->bytes_sent = atomic_load(&b->stats.bytes_sent);
    return 1;
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
    p->publish = admin_local_publish;
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
