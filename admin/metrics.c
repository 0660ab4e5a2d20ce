/*
 * metrics.c - a node's counters in the Prometheus text exposition format,
 * version 0.0.4 (GET /metrics).
 *
 * Names follow the Prometheus conventions: the `starling_` namespace, base
 * units (seconds, bytes), `_total` on counters, one # HELP and one # TYPE
 * line before each family's samples, a histogram as cumulative `_bucket`
 * samples with `le` ending at "+Inf", then `_sum` and `_count`. The list,
 * with what each family means, is in docs/operations.md.
 *
 * Families a node does not have are left out: the store's without
 * persistence, the Raft and forwarding ones on a single node.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_int.h"

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One family with a single unlabelled sample. */
static void metric(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
    head(f, name, type, help);
    fprintf(f, "%s %" PRIu64 "\n", name, v);
}

/* A label value: backslash, double quote and line feed escaped. */
static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

/* A family with one sample per QoS level. */
static void by_qos(FILE *f, const char *name, const char *help, const uint64_t v[3])
{
    head(f, name, "counter", help);
    for (int q = 0; q < 3; q++)
        fprintf(f, "%s{qos=\"%d\"} %" PRIu64 "\n", name, q, v[q]);
}

/* Nanoseconds as seconds, exactly ("%.9f" without trailing zeros). */
static void seconds(FILE *f, uint64_t ns)
{
    char buf[32];
    int n =
        snprintf(buf, sizeof(buf), "%" PRIu64 ".%09" PRIu64, ns / 1000000000u, ns % 1000000000u);
    while (n > 0 && buf[n - 1] == '0')
        n--;
    if (n > 0 && buf[n - 1] == '.')
        n--;
    fwrite(buf, 1, (size_t)n, f);
}

/* A histogram of durations (metric.h buckets) in seconds. */
static void histogram(FILE *f, const char *name, const char *help, const struct metric_hist_snap *h)
{
    head(f, name, "histogram", help);
    uint64_t cum = 0;
    for (unsigned i = 0; i < METRIC_HIST_N; i++) {
        cum += h->n[i];
        fprintf(f, "%s_bucket{le=\"", name);
        seconds(f, metric_hist_bounds_ns[i]);
        fprintf(f, "\"} %" PRIu64 "\n", cum);
    }
    cum += h->n[METRIC_HIST_N];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum ", name, cum, name);
    seconds(f, h->sum_ns);
    fprintf(f, "\n%s_count %" PRIu64 "\n", name, cum);
}

/* A family with one sample per peer; field is the offset of a uint64_t in
 * struct admin_peer_metrics. */
static void by_peer(FILE *f, const char *name, const char *type, const char *help,
                    const struct admin_metrics *m, size_t field)
{
    head(f, name, type, help);
    for (unsigned i = 0; i < m->n_peers; i++) {
        const struct admin_peer_metrics *p = &m->peers[i];
        uint64_t v;
        memcpy(&v, (const char *)p + field, sizeof(v));
        fprintf(f, "%s{peer=\"", name);
        label_value(f, p->name);
        fprintf(f, "\"} %" PRIu64 "\n", v);
    }
}

static void render_cluster(FILE *f, const struct admin_metrics *m)
{
    metric(f, "starling_raft_term", "gauge", "This node's current Raft term.", m->raft_term);
    metric(f, "starling_raft_commit_index", "gauge",
           "The highest Raft log index this node knows to be committed.", m->raft_commit_index);
    metric(f, "starling_raft_applied_index", "gauge",
           "The highest Raft log index applied to this node's replicated tables.",
           m->raft_applied_index);
    metric(f, "starling_raft_leader", "gauge", "1 when this node is the Raft leader, else 0.",
           m->raft_leader);
    metric(f, "starling_raft_leader_changes_total", "counter",
           "Times this node saw a new Raft leader (the first one included).",
           m->raft_leader_changes);
    metric(f, "starling_raft_resends_thinned_total", "counter",
           "AppendEntries this node, leading, sent without their entries: the same entries to "
           "the same follower were not written out yet.",
           m->raft_resends_thinned);
    metric(f, "starling_routes", "gauge",
           "Routes (topic filter, node) in this node's copy of the replicated route table.",
           m->routes);
    metric(f, "starling_cluster_nodes_down_total", "counter",
           "Members this node, as the Raft leader, took for dead (NodeDown): silent on the "
           "channel and to Raft for cluster_down_after; once per silence.",
           m->nodes_down);
    metric(f, "starling_cluster_taken_for_dead_total", "counter",
           "Times this node saw the cluster take it for dead (a NodeDown of itself applied) "
           "while it ran.",
           m->taken_for_dead);
    metric(f, "starling_cluster_sessions_ended_taken_for_dead_total", "counter",
           "Clean sessions with subscriptions that this node ended (5.0: DISCONNECT 0x89) "
           "because it was taken for dead: their clients may have missed messages.",
           m->dead_sessions_ended);
    metric(f, "starling_cluster_dead_sessions_released_total", "counter",
           "Persistent sessions of members taken for dead whose release this node, as the Raft "
           "leader, proposed because their expiry interval passed while their node stayed dead.",
           m->dead_sessions_released);
    metric(f, "starling_cluster_sessions_expired_taken_for_dead_total", "counter",
           "Sessions of this node that ended here because the cluster released them as expired "
           "while it was taken for dead (5.0: a connected client gets DISCONNECT 0x89).",
           m->dead_sessions_expired);
    if (!m->n_peers)
        return;
    head(f, "starling_cluster_peer_connected", "gauge",
         "1 when this node's forwarding channel to the peer is up, else 0.");
    for (unsigned i = 0; i < m->n_peers; i++) {
        fputs("starling_cluster_peer_connected{peer=\"", f);
        label_value(f, m->peers[i].name);
        fprintf(f, "\"} %d\n", m->peers[i].connected ? 1 : 0);
    }
    by_peer(f, "starling_forward_queue_frames", "gauge",
            "Frames queued on the forwarding channel to the peer (waiting or being written).", m,
            offsetof(struct admin_peer_metrics, queue_frames));
    by_peer(f, "starling_forward_queue_bytes", "gauge",
            "Bytes queued on the forwarding channel to the peer.", m,
            offsetof(struct admin_peer_metrics, queue_bytes));
    by_peer(f, "starling_forward_outbox_messages", "gauge",
            "QoS 1/2 messages forwarded to the peer and not acknowledged yet.", m,
            offsetof(struct admin_peer_metrics, outbox_msgs));
    by_peer(f, "starling_forward_outbox_bytes", "gauge",
            "Bytes of the QoS 1/2 forwards the peer has not acknowledged yet.", m,
            offsetof(struct admin_peer_metrics, outbox_bytes));
    by_peer(f, "starling_forward_frames_sent_total", "counter",
            "Frames written to the forwarding channel to the peer.", m,
            offsetof(struct admin_peer_metrics, frames_sent));
    by_peer(f, "starling_forward_bytes_sent_total", "counter",
            "Bytes written to the forwarding channel to the peer.", m,
            offsetof(struct admin_peer_metrics, bytes_sent));
    by_peer(f, "starling_forward_frames_dropped_total", "counter",
            "Frames for the peer refused because its channel queue was full.", m,
            offsetof(struct admin_peer_metrics, frames_dropped));
    by_peer(f, "starling_forward_peer_stalls_total", "counter",
            "Times the channel queue to the peer went above half while the peer took nothing "
            "(stalled or not connected): publishers were not paused for it.",
            m, offsetof(struct admin_peer_metrics, stalls));
}

static void render_metrics(FILE *f, const struct admin_metrics *m)
{
    by_qos(f, "starling_messages_received_total",
           "PUBLISH packets received from clients and forwarded by other nodes, by QoS.",
           m->msgs_in);
    by_qos(f, "starling_messages_sent_total", "PUBLISH packets sent to clients, by QoS.",
           m->msgs_out);
    by_qos(f, "starling_message_bytes_received_total",
           "Topic and payload bytes of the PUBLISH packets received, by QoS.", m->bytes_in);
    by_qos(f, "starling_message_bytes_sent_total",
           "Topic and payload bytes of the PUBLISH packets sent, by QoS.", m->bytes_out);
    head(f, "starling_messages_dropped_total", "counter",
         "Messages (or a session's copy) not delivered, by reason.");
    for (unsigned i = 0; i < m->n_dropped; i++)
        fprintf(f, "starling_messages_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
                m->dropped[i].reason, m->dropped[i].n);
    metric(f, "starling_messages_inflight", "gauge",
           "QoS 1/2 messages sent to clients and not acknowledged yet, all sessions.", m->inflight);
    metric(f, "starling_messages_queued", "gauge",
           "Messages waiting in the sessions' queues to be sent, all sessions.", m->queued);
    histogram(f, "starling_delivery_latency_seconds",
              "From the decoding of a client's PUBLISH to its encoding for a subscriber on this "
              "node (one client PUBLISH in 16 is timed).",
              &m->delivery);
    if (m->has_store) {
        metric(f, "starling_store_commits_total", "counter",
               "Write transactions the persistence store committed.", m->store_commits);
        metric(f, "starling_store_commit_failures_total", "counter",
               "Store batches that could not be committed.", m->store_failed);
        metric(f, "starling_store_fsyncs_total", "counter",
               "Sync points of the persistence store (one per commit with sync always).",
               m->store_fsyncs);
        histogram(f, "starling_store_commit_duration_seconds",
                  "Time to write and commit one store transaction (its fsync included with "
                  "sync always).",
                  &m->store_commit);
        histogram(f, "starling_store_sync_duration_seconds",
                  "Time of the store's interval fsync (sync interval).", &m->store_sync);
    }
    if (m->clustered)
        render_cluster(f, m);
}

char *admin_metrics_render(const struct admin_stats *s, const struct admin_health *h,
                           const struct admin_metrics *m, const uint64_t *requests, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f)
        return NULL;
    fputs("# HELP starling_info Build and node information; the value is always 1.\n"
          "# TYPE starling_info gauge\nstarling_info{version=\"",
          f);
    label_value(f, s->version);
    fputs("\",node=\"", f);
    label_value(f, s->node);
    fputs("\"} 1\n", f);
    metric(f, "starling_up", "gauge",
           "1 when the node serves clients (and, clustered, the cluster has a leader), else 0.",
           h && h->serving && (!h->clustered || h->has_leader));
    metric(f, "starling_uptime_seconds", "gauge", "Seconds since the node started.", s->uptime_s);
    metric(f, "starling_connections", "gauge", "Open MQTT network connections.", s->connections);
    metric(f, "starling_clients_connected", "gauge", "Connected MQTT clients.",
           s->clients_connected);
    metric(f, "starling_clients_maximum", "gauge",
           "The most MQTT clients connected at once since the node started.", s->clients_maximum);
    metric(f, "starling_sessions", "gauge", "Sessions on the node, connected or not.", s->sessions);
    metric(f, "starling_subscriptions", "gauge", "Subscriptions (each client and filter once).",
           s->subscriptions);
    metric(f, "starling_retained_messages", "gauge", "Retained messages.", s->retained);
    if (m) {
        render_metrics(f, m);
    } else {
        metric(f, "starling_messages_received_total", "counter",
               "PUBLISH packets received from clients and forwarded by other nodes.",
               s->msgs_received);
        metric(f, "starling_messages_sent_total", "counter", "PUBLISH packets sent to clients.",
               s->msgs_sent);
        metric(f, "starling_messages_dropped_total", "counter",
               "Messages (or a session's copy) not delivered.", s->msgs_dropped);
    }
    metric(f, "starling_bytes_received_total", "counter", "Bytes received on MQTT connections.",
           s->bytes_received);
    metric(f, "starling_bytes_sent_total", "counter", "Bytes sent on MQTT connections.",
           s->bytes_sent);
    if (requests) {
        fputs("# HELP starling_admin_requests_total Admin API requests answered, by status "
              "class.\n# TYPE starling_admin_requests_total counter\n",
              f);
        for (int c = 2; c <= 5; c++)
            fprintf(f, "starling_admin_requests_total{status=\"%dxx\"} %" PRIu64 "\n", c,
                    requests[c]);
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    *len = n;
    return text;
}
