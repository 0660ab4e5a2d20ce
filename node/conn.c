/*
 * conn.c - a client connection: life cycle, framing and dispatch of packets,
 * encoding of packets into the output, closing (see conn.h).
 *
 * Every packet is bounded by max_packet_size as soon as its fixed header is
 * known, before its body is read. The first packet must be CONNECT; the
 * packet handlers (handle_*.c) do the protocol.
 *
 * Closing: conn_close sends a DISCONNECT to 5.0 clients when there is a
 * reason, hands the session back to the registry with the will
 * (registry_release decides: now, after its delay, or never), writes what is
 * pending and closes the handle; a client that does not read gets 5 seconds
 * before the handle is closed anyway.
 */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ackq.h"
#include "broker.h"
#include "handle.h"
#include "log.h"
#include "session.h"
#include "registry.h"
#include "worker.h"

#define CONN_CLOSE_GRACE_MS 5000

struct broker *conn_broker(const struct conn *c)
{
    return c->w->b;
}

struct conn_extra *conn_x(struct conn *c)
{
    if (!c->x)
        c->x = calloc(1, sizeof(*c->x));
    return c->x;
}

struct conn *conn_ref(struct conn *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

static void conn_free(struct conn *c)
{
    buf_free(&c->in);
    buf_free(&c->out);
    conn_io_xf_free(c);
    msg_unref(c->will);
    struct conn_extra *x = c->x;
    if (x) {
        free(x->user);
        if (x->alias_in) {
            for (uint32_t i = 0; i < c->w->b->cfg.topic_alias_maximum; i++)
                msg_unref(x->alias_in[i]);
            free(x->alias_in);
        }
        for (uint16_t i = 0; i < x->n_alias_out; i++)
            msg_unref(x->alias_out[i]);
        free(x->alias_out);
        ackq_free(c);
        for (uint16_t i = 0; i < x->n_parked; i++)
            free(x->parked[i].data);
        free(x->parked);
        free(x);
    }
    conn_flow_free(c);
    free(c);
}

void conn_unref(struct conn *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        conn_free(c);
}

/* ---- output ---------------------------------------------------------- */

/* The properties of p that a too large packet may lose, NULL for packets
 * without a reason string or user properties. */
static struct mqtt_props *conn_droppable_props(struct mqtt_packet *p)
{
    switch (p->type) {
    case MQTT_CONNACK:
        return &p->u.connack.props;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        return &p->u.ack.props;
    case MQTT_SUBACK:
    case MQTT_UNSUBACK:
        return &p->u.suback.props;
    case MQTT_DISCONNECT:
    case MQTT_AUTH:
        return &p->u.disconnect.props;
    default:
        return NULL;
    }
}

void conn_fail_output(struct conn *c)
{
    c->write_failed = true;
    worker_mark_dirty(c->w, c);
}

int conn_send(struct conn *c, struct mqtt_packet *p)
{
    if (c->state == CONN_CLOSED)
        return 0;
    size_t before = c->out.len;
    long n = mqtt_encode(&c->out, c->version ? c->version : MQTT_V311, p);
    if (n < 0) {
        c->out.len = before;
        if (n == -ENOMEM)
            conn_fail_output(c);
        return 0;
    }
    if ((uint64_t)n > c->client_max_packet && c->version == MQTT_V5) {
        c->out.len = before;
        struct mqtt_props *props = conn_droppable_props(p);
        if (!props)
            return 0;
        props->present &= ~MQTT_PF(MQTT_PROP_REASON_STRING);
        props->user_props.len = 0;
        props->n_user_props = 0;
        n = mqtt_encode(&c->out, c->version, p);
        if (n < 0 || (uint64_t)n > c->client_max_packet) {
            c->out.len = before;
            if (n == -ENOMEM)
                conn_fail_output(c);
            return 0;
        }
    }
    worker_mark_dirty(c->w, c);
    return 1;
}

void conn_send_ack(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.u.ack.packet_id = pid;
    p.u.ack.reason = reason;
    conn_send(c, &p);
}

static void conn_send_disconnect(struct conn *c, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_DISCONNECT;
    p.u.disconnect.reason = reason;
    conn_send(c, &p);
}

/* ---- closing ----------------------------------------------------------- */

/* Hand the session back to the registry, with the will unless the client
 * said goodbye normally. */
static void conn_detach(struct conn *c, bool resumed)
{
    struct session *s = c->session;
    if (!s)
        return;
    struct session_will will = {0};
    if (c->will && !c->normal_disconnect) {
        will.msg = c->will;
        will.delay = c->x->will_delay;
        will.expiry = c->x->will_expiry;
        c->will = NULL;
    }
    c->session = NULL;
    registry_release(c->w->b, s, c, will.msg ? &will : NULL, resumed, c->w);
    msg_unref(c->will);
    c->will = NULL;
}

/* One line per connected client that goes: "disconnect" with why,
 * "takeover" when another connection took its session, "kick" when an
 * operator closed it (reason 0x98, administrative action: the admin API's
 * DELETE /api/v1/clients/{id}). */
static void conn_log_disconnect(struct conn *c, uint8_t reason)
{
    const struct session *s = c->session;
    bool taken = reason == MQTT_RC_SESSION_TAKEN_OVER;
    bool kicked = reason == MQTT_RC_ADMIN_ACTION;
    const char *why =
        taken ? "session taken over"
        : c->peer_disconnect
            ? (c->normal_disconnect ? "client disconnected" : "client disconnected with will")
        : reason >= 0x80                 ? mqtt_rc_str(reason)
        : c->ack_lost || c->write_failed ? "network error"
                                         : "connection closed";
    log_event(LOG_LEVEL_INFO,
              taken    ? "takeover"
              : kicked ? "kick"
                       : "disconnect",
              s->client_id, s->id_len, CONN_PEER(c), why, "MQTT %s",
              c->version == MQTT_V5     ? "5.0"
              : c->version == MQTT_V311 ? "3.1.1"
                                        : "3.1");
}

void conn_close(struct conn *c, uint8_t reason, bool resumed)
{
    assert(sink_thread_worker == c->w);
    if (!conn_is_open(c))
        return;
    bool was_active = c->state == CONN_ACTIVE;
    if (reason >= 0x80 && c->version == MQTT_V5 && was_active)
        conn_send_disconnect(c, reason);
    if (reason >= 0x80)
        log_debug("%s: closing connection: %s", CONN_PEER(c), mqtt_rc_str(reason));
    if (was_active && c->session)
        conn_log_disconnect(c, reason);
    c->state = CONN_CLOSING;
    c->state_since = uv_now(&c->w->loop);
    conn_io_stop(c);
    conn_detach(c, resumed);
    conn_flush(c);
}

void conn_check_timers(struct conn *c, uint64_t now)
{
    const struct config *cfg = &c->w->b->cfg;
    if (c->state == CONN_NEW && now - c->state_since >= (uint64_t)cfg->connect_timeout * 1000u) {
        log_debug("%s: no CONNECT within %" PRIu32 " s", CONN_PEER(c), cfg->connect_timeout);
        conn_close(c, 0, false);
    } else if (c->state == CONN_CLAIMING &&
               now - c->state_since >= (uint64_t)cfg->connect_timeout * 1000u) {
        /* The CONNECT came, its claim has not answered within
         * connect_timeout of it (a cluster's takeover under load, counted
         * from the CONNECT: handle_connect.c). Before, it counted from the
         * accept and the connection was closed without a CONNACK while the
         * claim went on (test_blackbox.py, docs/cluster.md "Messages
         * missing after session moves under heavy load"). The claim's
         * answer then finds the connection closing and lets the session
         * go back. */
        log_info("%s: the claim of its client id did not answer within %" PRIu32
                 " s: CONNACK Server unavailable",
                 CONN_PEER(c), cfg->connect_timeout);
        handle_connect_refuse(c, c->version,
                              c->version == MQTT_V5 ? MQTT_RC_SERVER_UNAVAILABLE
                                                    : MQTT3_CONNACK_SERVER_UNAVAILABLE);
    } else if (c->state == CONN_ACTIVE && c->keepalive && !conn_flow_paused(c) &&
               now - c->last_rx >= (uint64_t)c->keepalive * 1500u) {
        /* [MQTT-3.1.1 3.1.2-24, MQTT-5.0 3.1.2-22] no packet within 1.5 x keep alive */
        log_debug("%s: keep alive timeout", CONN_PEER(c));
        conn_close(c, MQTT_RC_KEEP_ALIVE_TIMEOUT, false);
    } else if (c->state == CONN_CLOSING && now - c->state_since >= CONN_CLOSE_GRACE_MS) {
        conn_io_close(c);
    } else if (c->throttled && c->state == CONN_ACTIVE && now - c->x->rate_window >= 1000) {
        /* max_publish_rate: a new window, reading again (and what waited) */
        c->throttled = false;
        c->x->rate_window = now;
        c->x->rate_count = 0;
        conn_io_start(c);
    }
    if (c->x && c->x->n_parked && c->state == CONN_ACTIVE)
        handle_publish_unpark(c); /* their wait may be over */
    if (c->session && c->state == CONN_ACTIVE && atomic_load(&c->session->parked_hint))
        session_flush_owned(c->w->b, c->session, c->w); /* their wait may be over too */
}

/* ---- dispatch ---------------------------------------------------------- */

/* The first packet of a connection: CONNECT, or the connection is refused. */
static void conn_handle_first(struct conn *c, const uint8_t *data, size_t len)
{
    struct mqtt_packet pkt;
    int r = mqtt_decode(0, data, len, &pkt);
    if ((data[0] >> 4) != MQTT_CONNECT) {
        /* [MQTT-3.1.1 3.1.0-1, MQTT-5.0 3.1.0-1] the first packet must be CONNECT */
        conn_close(c, 0, false);
        return;
    }
    const struct mqtt_bytes *name = &pkt.u.connect.protocol_name;
    if (r == -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION &&
        !(name->len == 4 && memcmp(name->data, "MQTT", 4) == 0) &&
        !(name->len == 6 && memcmp(name->data, "MQIsdp", 6) == 0)) {
        /* [MQTT-3.1.1 3.1.2-1, MQTT-5.0 3.1.2-1] not an MQTT protocol name:
         * the server may disconnect and must not go on with this
         * specification, so no CONNACK (which belongs to it) either */
        conn_close(c, 0, false);
        return;
    }
    if (r == -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION) {
        /* [MQTT-3.1.1 3.1.2-2, MQTT-5.0 3.1.2-2] unsupported protocol level */
        if (pkt.u.connect.protocol_version == MQTT_V5)
            handle_connect_refuse(c, MQTT_V5, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
        else
            handle_connect_refuse(c, MQTT_V311, MQTT3_CONNACK_BAD_PROTOCOL);
        return;
    }
    if (r < 0) {
        if (pkt.u.connect.protocol_version == MQTT_V5)
            handle_connect_refuse(c, MQTT_V5, (uint8_t)-r);
        else
            conn_close(c, 0, false);
        return;
    }
    handle_connect(c, &pkt.u.connect);
}

static void conn_handle_packet(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->state == CONN_NEW) {
        conn_handle_first(c, data, len);
        return;
    }
    struct mqtt_packet pkt;
    int r = mqtt_decode(c->version, data, len, &pkt);
    if (r < 0) {
        conn_close(c, (uint8_t)-r, false);
        return;
    }
    switch (pkt.type) {
    case MQTT_PUBLISH:
        if (!handle_publish_park(c, &pkt.u.publish, data, len))
            handle_publish(c, &pkt.u.publish);
        break;
    case MQTT_PUBACK:
    case MQTT_PUBREC:
    case MQTT_PUBREL:
    case MQTT_PUBCOMP:
        handle_ack(c, pkt.type, &pkt.u.ack);
        break;
    case MQTT_SUBSCRIBE:
        handle_subscribe(c, &pkt.u.subscribe);
        break;
    case MQTT_UNSUBSCRIBE:
        handle_unsubscribe(c, &pkt.u.subscribe);
        break;
    case MQTT_PINGREQ:
        handle_pingreq(c);
        break;
    case MQTT_DISCONNECT:
        handle_disconnect(c, &pkt.u.disconnect);
        break;
    case MQTT_CONNECT:
        /* [MQTT-3.1.1 3.1.0-2, MQTT-5.0 3.1.0-2] a second CONNECT is a protocol error */
    case MQTT_AUTH:
        /* no enhanced authentication was started on this connection */
    default:
        conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
        break;
    }
}

size_t conn_process(struct conn *c, const uint8_t *data, size_t len)
{
    assert(sink_thread_worker == c->w);
    size_t off = 0;
    uint32_t max = c->w->b->cfg.max_packet_size;
    /* a publisher paused by flow control (conn_flow.c) or by max_publish_rate
     * handles no more packets: the rest waits in c->in */
    while (off < len && (c->state == CONN_NEW || c->state == CONN_ACTIVE) && !c->throttled &&
           !conn_flow_paused(c)) {
        uint32_t hdr = 0;
        long n = mqtt_frame(data + off, len - off, max, &hdr);
        if (n == 0)
            break;
        if (n < 0) {
            /* [MQTT-5.0 3.2.2-15] limit on what the server accepts */
            if (c->state == CONN_NEW)
                conn_close(c, 0, false);
            else
                conn_close(c, (uint8_t)-n, false);
            return len;
        }
        conn_handle_packet(c, data + off, (size_t)n);
        off += (size_t)n;
    }
    return off;
}
