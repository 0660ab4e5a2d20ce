/*
 * handle_publish.c - PUBLISH from the client (see handle.h).
 *
 * The walk of a QoS 1 message: resolve the topic alias, check the packet,
 * make one struct msg, broker_publish (match, queue for each subscriber),
 * then acknowledge once what the acknowledgement promises is stored
 * (ackq_after). With a store, the message waits in the subscribers' queues
 * (held) until the same commit.
 */
#include <stdlib.h>
#include <string.h>

#include "ackq.h"
#include "acl.h"
#include "broker.h"
#include "conn.h"
#include "handle.h"
#include "hoptrace.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "topic.h"
#include "worker.h"

int handle_passthrough_props(const struct mqtt_props *in, struct buf *out)
{
    struct mqtt_props pt;
    memset(&pt, 0, sizeof(pt));
    const uint64_t keep = MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT) | MQTT_PF(MQTT_PROP_CONTENT_TYPE) |
                          MQTT_PF(MQTT_PROP_RESPONSE_TOPIC) | MQTT_PF(MQTT_PROP_CORRELATION_DATA);
    pt.present = in->present & keep;
    pt.payload_format = in->payload_format;
    pt.content_type = in->content_type;
    pt.response_topic = in->response_topic;
    pt.correlation_data = in->correlation_data;
    pt.user_props = in->user_props;
    pt.n_user_props = in->n_user_props;
    size_t size = mqtt_props_size(&pt);
    if (size == 0)
        return 0;
    int r = mqtt_props_encode(out, &pt);
    if (r < 0)
        return r;
    /* drop the length prefix: msg keeps the properties themselves */
    buf_consume(out, varint_size((uint32_t)size));
    return 0;
}

/* A 5.0 Topic Alias: set it (topic given) or use it (empty topic). Returns 0
 * with *topic the topic name, or the reason code to close with. */
static uint8_t handle_topic_alias(struct conn *c, uint16_t a, struct mqtt_bytes *topic)
{
    const struct config *cfg = &c->w->b->cfg;
    if (a == 0 || a > cfg->topic_alias_maximum)
        return MQTT_RC_TOPIC_ALIAS_INVALID; /* [MQTT-5.0 3.3.2-8/9] */
    struct conn_extra *x = conn_x(c);
    if (x && !x->alias_in)
        x->alias_in = calloc(cfg->topic_alias_maximum, sizeof(*x->alias_in));
    if (!x || !x->alias_in)
        return MQTT_RC_UNSPECIFIED;
    if (topic->len > 0) {
        if (!topic_name_valid((const char *)topic->data, topic->len))
            return MQTT_RC_TOPIC_NAME_INVALID;
        struct msg *t =
            msg_new(topic->data, (uint16_t)topic->len, NULL, 0, NULL, 0, 0, false, 0, NULL);
        if (!t)
            return MQTT_RC_UNSPECIFIED;
        msg_unref(x->alias_in[a - 1]);
        x->alias_in[a - 1] = t;
        return 0;
    }
    struct msg *t = x->alias_in[a - 1];
    if (!t)
        return MQTT_RC_PROTOCOL_ERROR; /* an alias that was never set */
    topic->data = (const uint8_t *)msg_topic(t);
    topic->len = t->topic_len;
    return 0;
}

/* What the server refuses in a PUBLISH: returns the reason code to close the
 * connection with, 0 when the packet is acceptable. */
static uint8_t handle_publish_check(struct conn *c, const struct mqtt_publish *p,
                                    const struct mqtt_bytes *topic)
{
    const struct config *cfg = &c->w->b->cfg;
    bool v5 = c->version == MQTT_V5;
    if (topic->len == 0)
        return MQTT_RC_PROTOCOL_ERROR; /* [MQTT-3.1.1 4.7.3-1, MQTT-5.0 4.7.3-1] a topic name is
                                          required */
    if (!topic_name_valid((const char *)topic->data, topic->len))
        return MQTT_RC_TOPIC_NAME_INVALID; /* [MQTT-3.1.1 3.3.2-2, MQTT-5.0 3.3.2-2] no wildcards */
    if (handle_topic_too_deep(cfg, (const char *)topic->data, topic->len))
        return MQTT_RC_TOPIC_NAME_INVALID; /* more levels than max_topic_levels: refused like an
                                              invalid name */
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_RESPONSE_TOPIC)) &&
        !topic_name_valid((const char *)p->props.response_topic.data, p->props.response_topic.len))
        return MQTT_RC_PROTOCOL_ERROR; /* [MQTT-5.0 3.3.2-14] Response Topic: no wildcards */
    if (v5 && p->props.n_sub_ids > 0)
        return MQTT_RC_PROTOCOL_ERROR; /* [MQTT-5.0 3.3.4-6] no subscription identifier */
    if (p->qos > cfg->max_qos)
        return MQTT_RC_QOS_NOT_SUPPORTED; /* [MQTT-5.0 3.2.2-11] */
    if (p->retain && !cfg->retain_available)
        return MQTT_RC_RETAIN_NOT_SUPPORTED; /* [MQTT-5.0 3.2.2-14] */
    if (topic->len > cfg->max_topic_length) {
        atomic_fetch_add_explicit(&c->w->b->stats.refused_topic_len, 1, memory_order_relaxed);
        return MQTT_RC_TOPIC_NAME_INVALID; /* max_topic_length */
    }
    return 0;
}

/* The QoS 2 receive state of a PUBLISH: returns 0 for a new message (its id
 * recorded, into *bt when the session is persistent), 1 for a duplicate
 * (answered here; handle_publish answers a recorded id before, so only an
 * id recorded in between, which this connection's thread alone does, would
 * come here), -1 when the connection was closed. */
static int handle_qos2_receive(struct conn *c, uint16_t pid, struct store_batch **bt)
{
    struct broker *b = c->w->b;
    struct session *s = c->session;
    bool dup = false, over = false;
    lock_acquire(&s->lock);
    if (session_qos2_has(s, pid))
        dup = true;
    else if (s->n_qos2_in >= b->cfg.receive_maximum)
        over = true;
    else if (session_qos2_add(s, pid) < 0)
        over = true;
    else if (persist_wanted(b, s))
        persist_qos2(b, bt, s, pid, true);
    lock_release(&s->lock);
    if (over) {
        /* [MQTT-5.0 3.3.4-7] more unacknowledged QoS 2 than Receive Maximum */
        conn_close(c, MQTT_RC_RECEIVE_MAX_EXCEEDED, false);
        return -1;
    }
    if (dup) {
        /* [MQTT-3.1.1 4.3.3-2, MQTT-5.0 4.3.3-10] already received: acknowledge, do not deliver
         * again; but only once the original's store outcome is known (its
         * commit may still fail, and then it was not received at all) */
        ackq_after_dup(c, bt, pid);
        return 1;
    }
    return 0;
}

/* A resent PUBLISH whose id the old owner held: that owner took the message
 * and delivers it. Its id is recorded here, stored in a batch of its own,
 * and handle_publish then takes the PUBLISH as the duplicate it is (its
 * checks and topic alias as for any PUBLISH; the PUBREC after that batch's
 * commit, ackq_after_dup). */
static void handle_publish_had(struct conn *c, uint16_t pid)
{
    struct broker *b = c->w->b;
    struct session *s = c->session;
    struct store_batch *bt = NULL;
    if (persist_batch_begin(b, &bt) < 0) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false); /* unanswered: resent later */
        return;
    }
    lock_acquire(&s->lock);
    bool ok = session_qos2_has(s, pid) || session_qos2_add(s, pid) == 0;
    /* with the told id used up (wait_dirty: a restart must not bring it
     * back, or the client's next message with it would be taken for this
     * one) */
    if (ok && persist_wanted(b, s))
        persist_qos2(b, &bt, s, pid, true);
    lock_release(&s->lock);
    persist_submit(b, &bt, NULL, NULL);
    if (!ok) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    log_info("%s: client '%s' resent QoS 2 message %u, which its session's old node had taken: "
             "acknowledged, not delivered again",
             CONN_PEER(c), s->client_id, (unsigned)pid);
}

/* What one connection may park, in bytes: past it, the wait ends at once
 * (what is parked is taken, in order). */
#define PARKED_MAX_BYTES (1u << 20)

bool handle_publish_park(struct conn *c, const struct mqtt_publish *p, const uint8_t *data,
                         size_t len)
{
    struct session *s = c->session;
    struct conn_extra *x = c->x;
    /* behind a parked one, any PUBLISH waits too: the session takes its
     * client's messages in their order */
    bool behind = x && x->n_parked;
    if ((p->qos != 2 && !behind) || !s)
        return false;
    /* nearly every session: not resumed blind, no lock needed to tell */
    if (!behind && atomic_load_explicit(&s->blind_until, memory_order_acquire) == 0) {
        if (p->dup)
            log_debug("%s: client '%s' resent QoS 2 message %u (DUP 1): its session waits for "
                      "no old node's ids",
                      CONN_PEER(c), s->client_id, (unsigned)p->packet_id);
        return false;
    }
    bool had = false, park = behind;
    uint64_t now = broker_now_mono_ms();
    lock_acquire(&s->lock);
    if (p->qos == 2 && !behind && session_blind(s, now) && !session_qos2_has(s, p->packet_id)) {
        /* the old owner's id answers the first PUBLISH with it here only:
         * the client may use the id again once that exchange is over */
        if (session_told_take(s, p->packet_id))
            had = p->dup;
        else if (!s->told && p->dup && session_holds(s, now, c->w->b->cfg.cluster_resend_wait))
            park = true;
    }
    if (!park && !had && p->qos == 2 && p->dup)
        log_debug("%s: client '%s' resent QoS 2 message %u (DUP 1), taken: blind %d, told %d, "
                  "recorded %d",
                  CONN_PEER(c), s->client_id, (unsigned)p->packet_id, (int)session_blind(s, now),
                  (int)s->told, (int)session_qos2_has(s, p->packet_id));
    lock_release(&s->lock);
    if (had) {
        handle_publish_had(c, p->packet_id);
        return c->state != CONN_ACTIVE; /* (closed: dropped, resent later) */
    }
    if (!park)
        return false;
    x = conn_x(c);
    if (x && x->n_parked < 65535 && x->parked_bytes + len <= PARKED_MAX_BYTES) {
        struct parked_pub *grown = realloc(x->parked, (x->n_parked + 1u) * sizeof *grown);
        uint8_t *copy = grown ? malloc(len) : NULL;
        if (grown)
            x->parked = grown;
        if (copy) {
            memcpy(copy, data, len);
            x->parked[x->n_parked++] = (struct parked_pub){copy, len};
            x->parked_bytes += len;
            if (!behind)
                log_info("%s: client '%s' resent QoS 2 message %u to a session resumed without "
                         "its old node's ids: it waits for them",
                         CONN_PEER(c), s->client_id, (unsigned)p->packet_id);
            return true;
        }
    }
    /* too much waits, or out of memory: the wait ends now, in order */
    lock_acquire(&s->lock);
    session_wait_end(s);
    lock_release(&s->lock);
    persist_session_update(c->w->b, s); /* a restart does not bring it back */
    log_warn("%s: client '%s': too much waits for its session's old node's QoS 2 ids: taken now",
             CONN_PEER(c), s->client_id);
    if (x && x->n_parked)
        handle_publish_unpark(c);
    return c->state != CONN_ACTIVE; /* (closed meanwhile: dropped, resent later) */
}

void handle_publish_unpark(struct conn *c)
{
    struct conn_extra *x = c->x;
    struct session *s = c->session;
    if (!x || !x->n_parked || !s || c->state != CONN_ACTIVE)
        return;
    uint64_t now_ms = broker_now_mono_ms();
    lock_acquire(&s->lock);
    bool waits = session_holds(s, now_ms, c->w->b->cfg.cluster_resend_wait) && !s->told;
    lock_release(&s->lock);
    if (waits)
        return;
    struct parked_pub *parked = x->parked;
    uint16_t n = x->n_parked;
    x->parked = NULL;
    x->n_parked = 0;
    x->parked_bytes = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct mqtt_packet pkt;
        if (c->state == CONN_ACTIVE &&
            mqtt_decode(c->version, parked[i].data, parked[i].len, &pkt) == 0 &&
            pkt.type == MQTT_PUBLISH &&
            !handle_publish_park(c, &pkt.u.publish, parked[i].data, parked[i].len))
            handle_publish(c, &pkt.u.publish);
        free(parked[i].data);
    }
    free(parked);
}

/* Is pid the id of a QoS 2 message received from this session whose
 * PUBREL has not come yet? */
static bool handle_qos2_recorded(struct conn *c, uint16_t pid)
{
    struct session *s = c->session;
    lock_acquire(&s->lock);
    bool has = session_qos2_has(s, pid);
    lock_release(&s->lock);
    return has;
}

/* A QoS 1/2 message that a connected subscriber's full queue dropped (the
 * slow subscriber policy): it is never acknowledged as accepted. 5.0: the
 * PUBACK / PUBREC says 0x97 (quota exceeded), and a refused QoS 2 exchange
 * ends there; 3.1.1 has no such code: the connection is closed unanswered,
 * and the client publishes again when it reconnects. */
static void handle_publish_refused(struct conn *c, const struct mqtt_publish *p, enum mqtt_type ack,
                                   struct store_batch **bt, struct msg *held,
                                   struct pub_targets *targets, struct ack_wait *wait)
{
    struct broker *b = c->w->b;
    if (p->qos == 2) {
        struct session *s = c->session;
        lock_acquire(&s->lock);
        if (session_qos2_remove(s, p->packet_id) && persist_wanted(b, s))
            persist_qos2(b, bt, s, p->packet_id, false);
        lock_release(&s->lock);
    }
    if (c->version == MQTT_V5) {
        ackq_after(c, bt, ack, p->packet_id, MQTT_RC_QUOTA_EXCEEDED, held, targets, NULL, wait);
        return;
    }
    ackq_wait_free(wait);
    persist_submit(b, bt, NULL, NULL);
    if (held)
        broker_release(b, held, MSG_READY, targets, c->w);
    conn_close(c, 0, false);
}

/* Is topic $SYS or under it? */
static bool handle_topic_is_sys(const struct mqtt_bytes *topic)
{
    return topic->len >= 4 && memcmp(topic->data, "$SYS", 4) == 0 &&
           (topic->len == 4 || topic->data[4] == '/');
}

/* Refuse a QoS 1/2 PUBLISH that was not done: 5.0 says why in its PUBACK /
 * PUBREC (in order with the others); 3.1.1 has no way to, so the connection
 * is closed and the client publishes again on its next one. */
static void handle_publish_refuse(struct conn *c, enum mqtt_type ack, uint16_t pid, uint8_t reason)
{
    log_warn("%s: publish %u refused: %s", CONN_PEER(c), pid, mqtt_rc_str(reason));
    if (c->version == MQTT_V5)
        ackq_push(c, ack, pid, reason, true);
    else
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
}

/* A QoS 2 PUBLISH that was not received after all (refused, or its
 * connection closes): its id is forgotten, also in the store (into *bt), so
 * that the client's resend is taken as a new message, not as a duplicate
 * that would be acknowledged and never delivered. */
static void handle_qos2_forget(struct conn *c, const struct mqtt_publish *p,
                               struct store_batch **bt)
{
    if (p->qos != 2)
        return;
    struct broker *b = c->w->b;
    struct session *s = c->session;
    lock_acquire(&s->lock);
    session_qos2_remove(s, p->packet_id);
    if (s->stored)
        persist_qos2(b, bt, s, p->packet_id, false);
    lock_release(&s->lock);
}

/* Make the message and publish it; acknowledge a QoS 1/2 one once what the
 * acknowledgement promises is stored. */
static void handle_publish_deliver(struct conn *c, const struct mqtt_publish *p,
                                   const struct mqtt_bytes *topic, enum mqtt_type ack,
                                   struct store_batch **bt)
{
    struct broker *b = c->w->b;
    HOPTRACE_PAYLOAD_AT(HOP_READ, p->payload.data, p->payload.len, HOP_READ);
    HOPTRACE_PAYLOAD(HOP_DECODED, p->payload.data, p->payload.len);
    /* With a store, the acknowledgement's wait for the commit (ackq_after)
     * is allocated now: once the message is delivered and forwarded to
     * other nodes (broker_publish), a refusal for memory would come too
     * late (the other nodes deliver it all the same). Out of memory here:
     * refused before anything of it goes out, as for a batch that cannot
     * begin. */
    struct ack_wait *wait = NULL;
    if (p->qos > 0 && *bt && !(wait = ackq_wait_new())) {
        handle_qos2_forget(c, p, bt); /* not received: the id is free again */
        persist_submit(b, bt, NULL, NULL);
        handle_publish_refuse(c, ack, p->packet_id, MQTT_RC_QUOTA_EXCEEDED);
        return;
    }
    bool v5 = c->version == MQTT_V5;
    struct buf props = {0};
    if (v5 && handle_passthrough_props(&p->props, &props) < 0) {
        buf_free(&props);
        ackq_wait_free(wait);
        handle_qos2_forget(c, p, bt);
        persist_submit(b, bt, NULL, NULL);
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    uint64_t expiry_at = 0;
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY)))
        expiry_at = msg_now_real_ms() + (uint64_t)p->props.message_expiry * 1000u;
    struct msg *m =
        msg_new(topic->data, (uint16_t)topic->len, p->payload.data, p->payload.len, props.data,
                (uint32_t)props.len, p->qos, p->retain, expiry_at, c->session);
    buf_free(&props);
    if (!m) {
        ackq_wait_free(wait);
        handle_qos2_forget(c, p, bt);
        persist_submit(b, bt, NULL, NULL);
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    struct worker_metrics *wm = &c->w->metrics;
    if (wm->sample++ % WORKER_DELIVERY_SAMPLE == 0)
        m->born_ns = metric_now_ns();
    /* With a store, a QoS 1/2 message waits in the subscribers' queues
     * until it is durable (see struct msg.hold). */
    bool hold = p->qos > 0 && b->store;
    struct pub_targets targets = {0};
    if (hold)
        atomic_store(&m->hold, MSG_HELD);
    struct pub_flow flow;
    flow.n_slow = 0;
    flow.refused = false;
    flow.fwd_slow = false;
    flow.fwd_busy = false;
    flow.want_gate = p->qos > 0;
    flow.gate = NULL;
    int matched = broker_publish(b, m, p->qos > 0 ? BROKER_PUB_REFUSABLE : 0, c->w, bt,
                                 hold ? &targets : NULL, &flow);
    if (matched < 0 && p->qos > 0) {
        /* a matching session could not get it (out of memory): refused,
         * a held message is delivered by none of them, and *bt holds none
         * of its rows (BROKER_PUB_REFUSABLE: its other operations, the
         * session records and deletes, are committed as they are) */
        if (hold)
            broker_release(b, m, MSG_REJECTED, &targets, c->w);
        handle_qos2_forget(c, p, bt); /* not received: the id is free again */
        persist_submit(b, bt, NULL, NULL);
        ackq_wait_free(wait);
        ack_gate_unref(flow.gate);
        msg_unref(m);
        conn_flow_pause(c, &flow);
        handle_publish_refuse(c, ack, p->packet_id, MQTT_RC_QUOTA_EXCEEDED);
        return;
    }
    if (matched == 0)
        metric_add(&wm->no_subscribers, 1);
    if (p->qos > 0 && flow.refused)
        handle_publish_refused(c, p, ack, bt, hold ? m : NULL, &targets, wait);
    else if (p->qos > 0)
        /* [MQTT-3.1.1 4.3.2-2/4.3.3-2, MQTT-5.0 4.3.2-4/4.3.3-8]: acknowledged once it is stored
         * for every persistent session that must receive it */
        ackq_after(c, bt, ack, p->packet_id,
                   v5 && matched == 0 ? MQTT_RC_NO_MATCHING_SUBSCRIBERS : 0, hold ? m : NULL,
                   &targets, flow.gate, wait);
    else
        persist_submit(b, bt, NULL, NULL);
    ack_gate_unref(flow.gate);
    msg_unref(m);
    conn_flow_pause(c, &flow); /* sessions above their high-water mark */
}

/* max_publish_rate: count this PUBLISH; past the rate, stop reading the
 * client until its next one-second window (conn_check_timers): the client
 * is slowed down, no message is dropped. */
static void handle_publish_rate(struct conn *c, uint32_t max)
{
    struct conn_extra *x = conn_x(c);
    if (!x)
        return;
    uint64_t now = uv_now(&c->w->loop);
    if (now - x->rate_window >= 1000) {
        x->rate_window = now;
        x->rate_count = 0;
    }
    if (++x->rate_count >= max && !c->throttled) {
        c->throttled = true;
        atomic_fetch_add_explicit(&c->w->b->stats.throttled, 1, memory_order_relaxed);
        conn_io_stop(c);
    }
}

void handle_publish(struct conn *c, struct mqtt_publish *p)
{
    struct broker *b = c->w->b;
    bool v5 = c->version == MQTT_V5;
    struct mqtt_bytes topic = p->topic;
    uint8_t rc = 0;
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_TOPIC_ALIAS)))
        rc = handle_topic_alias(c, p->props.topic_alias, &topic);
    if (!rc)
        rc = handle_publish_check(c, p, &topic);
    if (rc) {
        conn_close(c, rc, false);
        return;
    }
    atomic_fetch_add_explicit(&b->stats.msgs_received, 1, memory_order_relaxed);
    c->msgs_in++;
    struct worker_metrics *wm = &c->w->metrics;
    metric_add(&wm->msgs_in[p->qos], 1);
    metric_add(&wm->bytes_in[p->qos], topic.len + p->payload.len);
    if (b->cfg.max_publish_rate)
        handle_publish_rate(c, b->cfg.max_publish_rate);
    enum mqtt_type ack = p->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC;
    /* A QoS 2 PUBLISH whose id is recorded is a resend of a message that
     * was received (and is delivered): until its PUBREL it is acknowledged as
     * a duplicate [MQTT-3.1.1 4.3.3-2, MQTT-5.0 4.3.3-10], before anything
     * below could refuse it. A refusal (5.0: a PUBREC >= 0x80, out of
     * memory or an ACL reloaded since) would tell the client that it was
     * not received while its id stays recorded: the client's next message
     * with that id would be taken for a duplicate, acknowledged and never
     * delivered [MQTT-5.0 4.3.3-9]. Out of memory, ackq_after_dup closes
     * the connection unanswered: the client resends it on its next one. The
     * id can be forgotten meanwhile only by the original's failed commit,
     * which ackq_after_dup waits for. */
    if (p->qos == 2 && handle_qos2_recorded(c, p->packet_id)) {
        struct store_batch *bt = NULL;
        ackq_after_dup(c, &bt, p->packet_id);
        return;
    }
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT)) &&
        p->props.payload_format == 1 && !mqtt_utf8_valid(p->payload.data, p->payload.len)) {
        if (p->qos == 0)
            conn_close(c, MQTT_RC_PAYLOAD_FORMAT_INVALID, false);
        else
            ackq_push(c, ack, p->packet_id, MQTT_RC_PAYLOAD_FORMAT_INVALID, true);
        return;
    }
    /* The ACL: a refused message is dropped; a 5.0 client is told (0x87),
     * a 3.1.1 client is acknowledged as usual (it has no way to hear it). */
    bool allowed =
        !b->auth.has_acl ||
        broker_acl_allows(b, c->x ? c->x->user : NULL, c->session->client_id, c->session->id_len,
                          (const char *)topic.data, topic.len, ACL_WRITE);
    if (v5 && p->qos > 0 && handle_topic_is_sys(&topic)) {
        /* $SYS belongs to the broker: a client may not spoof its
         * statistics (MQTT 5.0 section 4.7.2: the server may prevent
         * clients from using $-topics to exchange messages with other
         * clients) */
        ackq_push(c, ack, p->packet_id, MQTT_RC_NOT_AUTHORIZED, true);
        return;
    }
    if (!allowed)
        atomic_fetch_add_explicit(&b->stats.dropped[BROKER_DROP_ACL], 1, memory_order_relaxed);
    if (!allowed && v5) {
        if (p->qos > 0)
            ackq_push(c, ack, p->packet_id, MQTT_RC_NOT_AUTHORIZED, true);
        return;
    }
    struct store_batch *bt = NULL;
    if (p->qos > 0 && persist_batch_begin(b, &bt) < 0) {
        /* out of memory before anything is stored: refused, not acknowledged */
        handle_publish_refuse(c, ack, p->packet_id, MQTT_RC_QUOTA_EXCEEDED);
        return;
    }
    /* a duplicate or a refused QoS 2 id: persist_submit frees the batch */
    if (p->qos == 2 && handle_qos2_receive(c, p->packet_id, &bt) != 0) {
        persist_submit(b, &bt, NULL, NULL);
        return;
    }
    /* Clients do not publish into $SYS: the broker owns it (5.0 refuses
     * with 0x87 above; 3.x has no way to say so, the message is dropped and
     * acknowledged as Mosquitto does). */
    bool sys = handle_topic_is_sys(&topic);
    if (!sys && allowed)
        handle_publish_deliver(c, p, &topic, ack, &bt);
    else if (p->qos > 0)
        ackq_after(c, &bt, ack, p->packet_id, 0, NULL, NULL, NULL, NULL);
    else
        persist_submit(b, &bt, NULL, NULL);
}
