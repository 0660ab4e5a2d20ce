/*
 * conn_sink.c - the network layer's sink (sink.h): how sessions write to
 * their connection and reach the worker that owns it.
 *
 * publish encodes one PUBLISH for one subscriber: only what differs per
 * subscriber (packet id, QoS, DUP, RETAIN, subscription ids, topic alias,
 * remaining expiry) is set; topic, payload and pass-through properties come
 * from the shared message. It runs once per delivery.
 */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "session.h"
#include "worker.h"

/* Output written to the socket at once while flushing a long queue. */
#define CONN_OUT_CHUNK (16u * 1024u)
/* Broker -> client topic aliases kept per connection (at most). */
#define CONN_MAX_ALIAS_OUT 128

static bool conn_sink_ready(struct conn *c, uint16_t *receive_max)
{
    *receive_max = c->client_receive_max;
    return c->state == CONN_ACTIVE && !c->acks_held;
}

static struct msg *conn_alias_out_find(struct conn *c, const struct msg *m, uint16_t *alias)
{
    for (uint16_t i = 0; i < c->x->n_alias_out; i++) {
        struct msg *a = c->x->alias_out[i];
        if (a->topic_len == m->topic_len && memcmp(msg_topic(a), msg_topic(m), m->topic_len) == 0) {
            *alias = i + 1;
            return a;
        }
    }
    return NULL;
}

/* The 5.0 properties of a PUBLISH of q: remaining expiry, subscription ids,
 * pass-through properties, topic alias. Returns -1 when the message expired
 * (not sent), else 1 when a new alias is assigned (remember it once the
 * packet is encoded), 0 otherwise. */
static int conn_publish_props(struct conn *c, const struct qmsg *q, bool dup, uint64_t now_ms,
                              struct mqtt_publish *pub)
{
    struct msg *m = q->m;
    struct mqtt_props *pr = &pub->props;
    memset(pr, 0, sizeof(*pr));
    if (m->expiry_at) {
        if (m->expiry_at <= now_ms && !dup)
            return -1;
        /* [MQTT-5.0 3.3.2-6] the interval sent is what is left of it */
        uint64_t left = m->expiry_at > now_ms ? (m->expiry_at - now_ms + 999) / 1000 : 0;
        pr->message_expiry = left > UINT32_MAX ? UINT32_MAX : (uint32_t)left;
        pr->present |= MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY);
    }
    if (q->n_ids) {
        pr->n_sub_ids = q->n_ids;
        pr->sub_ids = q->n_ids == 1 ? &q->ids.one : q->ids.many;
    }
    pr->raw.data = msg_props(m);
    pr->raw.len = m->props_len;
    if (!c->client_alias_max || !conn_x(c))
        return 0;
    uint16_t alias = 0;
    bool new_alias = false;
    if (conn_alias_out_find(c, m, &alias)) {
        pub->topic.len = 0;
        pub->topic.data = NULL;
    } else if (c->x->n_alias_out < c->client_alias_max && c->x->n_alias_out < CONN_MAX_ALIAS_OUT) {
        alias = c->x->n_alias_out + 1;
        new_alias = true;
    }
    if (alias) {
        pr->topic_alias = alias;
        pr->present |= MQTT_PF(MQTT_PROP_TOPIC_ALIAS);
    }
    return new_alias;
}

/* Remember m's topic under the next alias. Returns 0 or -ENOMEM. */
static int conn_alias_out_add(struct conn *c, struct msg *m)
{
    if (!c->x->alias_out) {
        uint16_t cap =
            c->client_alias_max < CONN_MAX_ALIAS_OUT ? c->client_alias_max : CONN_MAX_ALIAS_OUT;
        c->x->alias_out = calloc(cap, sizeof(*c->x->alias_out));
        if (!c->x->alias_out)
            return -ENOMEM;
    }
    c->x->alias_out[c->x->n_alias_out++] = msg_ref(m);
    return 0;
}

static int conn_sink_publish(struct conn *c, const struct qmsg *q, bool dup, uint64_t now_ms)
{
    /* Bytes waiting for the socket stay under max_write_buffer plus one
     * chunk and one packet: a write is tried once a chunk accumulated */
    uint32_t limit = c->w->b->cfg.max_write_buffer;
    if (!dup && c->out.len >= (limit < CONN_OUT_CHUNK ? limit : CONN_OUT_CHUNK) &&
        !conn_try_write(c) && conn_pending_bytes(c) >= limit)
        return SINK_BUSY; /* the socket is full: the rest waits in the queue */
    struct msg *m = q->m;
    /* Only what a PUBLISH reads is set: this runs for every delivery, and
     * clearing the whole packet union (600 bytes) showed in the profile.
     * The properties exist only in 5.0. */
    struct mqtt_packet p;
    p.type = MQTT_PUBLISH;
    struct mqtt_publish *pub = &p.u.publish;
    pub->dup = dup;
    pub->qos = q->qos;
    pub->retain = q->retain;
    pub->packet_id = q->qos ? q->pid : 0;
    pub->topic.data = (const uint8_t *)msg_topic(m);
    pub->topic.len = m->topic_len;
    pub->payload.data = msg_payload(m);
    pub->payload.len = m->payload_len;
    int new_alias = 0;
    if (c->version == MQTT_V5 && (new_alias = conn_publish_props(c, q, dup, now_ms, pub)) < 0)
        return SINK_SKIPPED;
    size_t before = c->out.len;
    long n = mqtt_encode(&c->out, c->version, &p);
    if (n < 0 || (c->version == MQTT_V5 && (uint64_t)n > c->client_max_packet)) {
        /* [MQTT-5.0 3.1.2-25] a packet larger than the client's Maximum Packet
         * Size is not sent; the message is discarded for this client */
        c->out.len = before;
        if (n == -ENOMEM)
            conn_fail_output(c);
        return n < 0 ? (int)n : SINK_SKIPPED;
    }
    if (new_alias && conn_alias_out_add(c, m) < 0) {
        c->out.len = before;
        conn_fail_output(c);
        return -ENOMEM;
    }
    atomic_fetch_add_explicit(&c->w->b->stats.msgs_sent, 1, memory_order_relaxed);
    c->msgs_out++;
    struct worker_metrics *wm = &c->w->metrics;
    metric_add(&wm->msgs_out[q->qos], 1);
    metric_add(&wm->bytes_out[q->qos], (uint64_t)m->topic_len + m->payload_len);
    /* a sampled message's first sending to this client (a resend, or a
     * retained message sent on subscribe, would measure its age; the
     * RETAIN flag also marks 5.0 Retain As Published, left out too) */
    if (m->born_ns && !dup && !q->retain)
        metric_hist_observe(&wm->delivery, metric_now_ns() - m->born_ns);
    worker_mark_dirty(c->w, c);
    return SINK_SENT;
}

static void conn_sink_pubrel(struct conn *c, uint16_t pid)
{
    conn_send_ack(c, MQTT_PUBREL, pid, 0);
}

const struct sink_ops conn_sink_ops = {
    .ready = conn_sink_ready,
    .publish = conn_sink_publish,
    .pubrel = conn_sink_pubrel,
    .wake = worker_wake_session,
    .kick = worker_post_kick,
    .call = worker_post_call,
    .drained = worker_sink_drained,
    .at_turn_end = worker_at_turn_end,
};
