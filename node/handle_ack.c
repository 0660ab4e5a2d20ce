/*
 * handle_ack.c - PUBACK, PUBREC, PUBREL and PUBCOMP from the client (see
 * handle.h).
 *
 * PUBACK, PUBREC and PUBCOMP answer messages the session sent (its inflight
 * list, session.c); PUBREL answers a PUBREC this connection sent for a QoS 2
 * message it published. What an acknowledgement promises is on disk before
 * it is sent (ackq_after).
 */
#include <errno.h>

#include "ackq.h"
#include "broker.h"
#include "conn.h"
#include "handle.h"
#include "persist.h"
#include "session.h"
#include "worker.h"

/* PUBREC from the client: PUBREL follows once "PUBREC received" is stored. */
static void handle_pubrec(struct conn *c, struct broker *b, const struct mqtt_ack *a)
{
    struct session *s = c->session;
    struct store_batch *bt = NULL;
    int found = -ENOENT;
    if (persist_batch_begin(b, &bt) < 0) {
        /* PUBREL only once PUBREC is stored: no batch, no PUBREL */
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    lock_acquire(&s->lock);
    if (s->conn == c)
        found = session_pubrec_locked(b, s, a->packet_id, a->reason, &bt);
    lock_release(&s->lock);
    if (found == 0)
        ackq_after(c, &bt, MQTT_PUBREL, a->packet_id, 0, NULL, NULL, NULL, NULL);
    else
        persist_submit(b, &bt, NULL, NULL); /* frees the batch begun above */
    if (found < 0)
        ackq_push(c, MQTT_PUBREL, a->packet_id,
                  c->version == MQTT_V5 ? MQTT_RC_PACKET_ID_NOT_FOUND : 0, true);
}

/* PUBREL from the client: the QoS 2 exchange of a message it published ends. */
static void handle_pubrel(struct conn *c, struct broker *b, const struct mqtt_ack *a)
{
    struct session *s = c->session;
    struct store_batch *bt = NULL;
    if (persist_batch_begin(b, &bt) < 0) {
        /* the id must be forgotten durably before PUBCOMP: keep it */
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    lock_acquire(&s->lock);
    bool found = session_qos2_remove(s, a->packet_id);
    /* that exchange is over: a told id is used up, and one not told yet is
     * left out when it is; also one this session had recorded itself (a
     * folded copy's): ids told later down a chain of claims leave it out
     * too (owner_told). Before, only an id not recorded here was
     * remembered */
    if (!session_told_take(s, a->packet_id))
        session_blind_released(s, a->packet_id, broker_now_mono_ms());
    if (found && s->stored)
        persist_qos2(b, &bt, s, a->packet_id, false);
    /* the wait as it is now in its record, before the PUBCOMP: a restart
     * must not bring back a told id used up (also by a PUBLISH, DUP 0, that
     * wrote no record), nor forget one released (the client may use it
     * again for a new message) */
    else if (persist_wait_due(s) && s->stored && persist_wanted(b, s))
        persist_session_put(b, &bt, s, true);
    bool stored = s->stored;
    lock_release(&s->lock);
    if (!found && stored) {
        /* A resent PUBREL: the id's deletion, taken out of memory by the
         * PUBREL on an earlier connection, may not be committed yet, and
         * the client reuses the id once it has the PUBCOMP: a crash
         * before that commit would leave the id recorded after the
         * restart, and the new message taken for a duplicate */
        ackq_after_earlier(c, &bt, MQTT_PUBCOMP, a->packet_id,
                           c->version == MQTT_V5 ? MQTT_RC_PACKET_ID_NOT_FOUND : 0);
        return;
    }
    /* [MQTT-3.1.1 4.3.3-2, MQTT-5.0 4.3.3-11] PUBCOMP, 0x92 when the id is unknown (5.0); after the
     * id is forgotten durably, so that it can be reused at once */
    ackq_after(c, &bt, MQTT_PUBCOMP, a->packet_id,
               found || c->version != MQTT_V5 ? 0 : MQTT_RC_PACKET_ID_NOT_FOUND, NULL, NULL, NULL,
               NULL);
}

void handle_ack(struct conn *c, enum mqtt_type type, const struct mqtt_ack *a)
{
    struct broker *b = c->w->b;
    struct session *s = c->session;
    struct store_batch *bt = NULL;
    switch (type) {
    case MQTT_PUBACK:
        lock_acquire(&s->lock);
        if (s->conn == c)
            session_puback_locked(b, s, a->packet_id, &bt);
        lock_release(&s->lock);
        persist_submit(b, &bt, NULL, NULL);
        break;
    case MQTT_PUBREC:
        handle_pubrec(c, b, a);
        break;
    case MQTT_PUBREL:
        handle_pubrel(c, b, a);
        break;
    case MQTT_PUBCOMP:
        lock_acquire(&s->lock);
        if (s->conn == c)
            session_pubcomp_locked(b, s, a->packet_id, &bt);
        lock_release(&s->lock);
        persist_submit(b, &bt, NULL, NULL);
        break;
    default:
        break;
    }
}
