/*
 * sys.c - the $SYS/broker topics, published as retained messages every
 * sys_interval seconds. Topic names follow Eclipse Mosquitto's where it has
 * one, so existing dashboards keep working.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "broker.h"

static void sys_put(struct broker *b, const char *topic, const char *value)
{
    struct msg *m = msg_new(topic, (uint16_t)strlen(topic), value, (uint32_t)strlen(value), NULL, 0,
                            0, true, 0, NULL);
    if (!m)
        return;
    broker_publish(b, m, 0, NULL, NULL, NULL, NULL);
    msg_unref(m);
}

static void sys_put_u64(struct broker *b, const char *topic, uint64_t v)
{
    char s[32];
    snprintf(s, sizeof(s), "%" PRIu64, v);
    sys_put(b, topic, s);
}

void sys_publish(struct broker *b)
{
    char s[64];
    snprintf(s, sizeof(s), "starling version %s", STARLING_VERSION);
    sys_put(b, "$SYS/broker/version", s);
    snprintf(s, sizeof(s), "%" PRIu64 " seconds",
             (broker_now_mono_ms() - b->started_at_ms) / 1000u);
    sys_put(b, "$SYS/broker/uptime", s);
    size_t total = registry_count(&b->registry);
    uint64_t connected = atomic_load(&b->stats.clients_connected);
    sys_put_u64(b, "$SYS/broker/clients/total", total);
    sys_put_u64(b, "$SYS/broker/clients/connected", connected);
    sys_put_u64(b, "$SYS/broker/clients/disconnected", total > connected ? total - connected : 0);
    sys_put_u64(b, "$SYS/broker/clients/maximum", atomic_load(&b->stats.clients_maximum));
    sys_put_u64(b, "$SYS/broker/messages/received", broker_msgs_received(b));
    sys_put_u64(b, "$SYS/broker/messages/sent", atomic_load(&b->stats.msgs_sent));
    sys_put_u64(b, "$SYS/broker/messages/dropped", atomic_load(&b->stats.msgs_dropped));
    sys_put_u64(b, "$SYS/broker/messages/dropped/offline", atomic_load(&b->stats.dropped[0]));
    sys_put_u64(b, "$SYS/broker/messages/dropped/slow_new", atomic_load(&b->stats.dropped[1]));
    sys_put_u64(b, "$SYS/broker/messages/dropped/slow_oldest", atomic_load(&b->stats.dropped[2]));
    sys_put_u64(b, "$SYS/broker/messages/dropped/slow_disconnect",
                atomic_load(&b->stats.dropped[3]));
    sys_put_u64(b, "$SYS/broker/clients/slow_disconnected",
                atomic_load(&b->stats.slow_disconnects));
    long paused = atomic_load(&b->stats.publishers_paused);
    sys_put_u64(b, "$SYS/broker/publishers/paused", paused > 0 ? (uint64_t)paused : 0);
    sys_put_u64(b, "$SYS/broker/publishers/pause_expired", atomic_load(&b->stats.pause_expired));
    /* the cluster's forwards (node/cluster_fwd.c; 0 on a single node) */
    sys_put_u64(b, "$SYS/broker/cluster/forwards/refused", atomic_load(&b->stats.fwd_refused));
    sys_put_u64(b, "$SYS/broker/cluster/forwards/qos0_dropped",
                atomic_load(&b->stats.fwd_qos0_dropped));
    sys_put_u64(b, "$SYS/broker/cluster/forwards/resent", atomic_load(&b->stats.fwd_resent));
    sys_put_u64(b, "$SYS/broker/cluster/forwards/duplicates",
                atomic_load(&b->stats.fwd_duplicates));
    sys_put_u64(b, "$SYS/broker/bytes/received", atomic_load(&b->stats.bytes_received));
    sys_put_u64(b, "$SYS/broker/bytes/sent", atomic_load(&b->stats.bytes_sent));
    sys_put_u64(b, "$SYS/broker/subscriptions/count", sub_index_count(b->index));
    sys_put_u64(b, "$SYS/broker/retained messages/count", retain_count(b->retained));
    /* the front door (docs/security.md) */
    sys_put_u64(b, "$SYS/broker/security/auth_failed", atomic_load(&b->stats.auth_failed));
    sys_put_u64(b, "$SYS/broker/security/acl_denied", atomic_load(&b->stats.acl_denied));
    sys_put_u64(b, "$SYS/broker/limits/connections_per_listener",
                atomic_load(&b->stats.refused_listener));
    sys_put_u64(b, "$SYS/broker/limits/connection_rate", atomic_load(&b->stats.refused_rate));
    sys_put_u64(b, "$SYS/broker/limits/subscriptions", atomic_load(&b->stats.refused_subs));
    sys_put_u64(b, "$SYS/broker/limits/topic_length", atomic_load(&b->stats.refused_topic_len));
    sys_put_u64(b, "$SYS/broker/limits/publish_throttled", atomic_load(&b->stats.throttled));
}
