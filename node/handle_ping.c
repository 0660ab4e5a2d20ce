/*
 * handle_ping.c - PINGREQ and DISCONNECT from the client (see handle.h).
 */
#include <string.h>

#include "broker.h"
#include "conn.h"
#include "handle.h"
#include "session.h"
#include "worker.h"

void handle_pingreq(struct conn *c)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_PINGRESP;
    /* [MQTT-3.1.1 3.12.4-1, MQTT-5.0 3.12.4-1] */
    conn_send(c, &p);
}

void handle_disconnect(struct conn *c, const struct mqtt_disconnect *d)
{
    const struct config *cfg = &c->w->b->cfg;
    struct session *s = c->session;
    if (c->version == MQTT_V5 && (d->props.present & MQTT_PF(MQTT_PROP_SESSION_EXPIRY))) {
        if (c->connect_expiry == 0 && d->props.session_expiry != 0) {
            /* MQTT 5.0 section 3.14.2.2.2 */
            conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
            return;
        }
        uint32_t e = d->props.session_expiry;
        if (cfg->max_session_expiry && e > cfg->max_session_expiry)
            e = cfg->max_session_expiry;
        lock_acquire(&s->lock);
        if (s->conn == c)
            s->expiry_interval = e;
        lock_release(&s->lock);
    }
    /* [MQTT-3.1.1 3.14.4-3, MQTT-5.0 3.14.4-3] a normal DISCONNECT discards the will; 0x04 keeps it
     */
    c->normal_disconnect = !(c->version == MQTT_V5 && d->reason == MQTT_RC_DISCONNECT_WITH_WILL);
    c->peer_disconnect = true;
    conn_close(c, 0, false);
}
