/*
 * conn.c - client connections and the MQTT protocol of a connection.
 *
 * Reading: libuv reads into the worker's shared buffer; complete packets are
 * decoded and handled straight from it, and only the tail of an incomplete
 * packet is copied into the connection's own buffer (so an idle connection
 * holds no read buffer). Every packet is bounded by max_packet_size before
 * its body is read [MQTT-3.2.2-15 for the other direction].
 *
 * Writing: handlers append encoded packets to c->out and mark the connection
 * dirty; the worker writes all of it with one uv_write at the end of the loop
 * turn. While a write is in progress new output accumulates in c->out.
 *
 * Closing: conn_close sends a DISCONNECT to 5.0 clients when there is a
 * reason, detaches the session (publishing or scheduling the will), writes
 * what is pending and closes the handle; a client that does not read gets 5
 * seconds before the handle is closed anyway.
 */
#include "conn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "store.h"
#include "topic.h"
#include "worker.h"

#define CONN_CLOSE_GRACE_MS 5000
/* Broker -> client topic aliases kept per connection (at most). */
#define CONN_MAX_ALIAS_OUT 128

static void conn_on_close(uv_handle_t *h);

/* What only some connections need (a will, topic aliases, acknowledgements
 * waiting for the store), allocated on first use: an idle client without
 * them costs a smaller struct conn. */
struct conn_extra {
    /* topic aliases client -> broker: alias_in[alias-1] */
    struct msg **alias_in;
    /* topic aliases broker -> client: alias_out[alias-1] */
    struct msg **alias_out;
    /* acknowledgements waiting for the store, sent in order [MQTT-4.6.0-2] */
    struct pending_ack *acks;
    uint32_t acks_len, acks_cap;
    uint32_t will_delay;  /* Will Delay Interval, seconds */
    uint32_t will_expiry; /* will Message Expiry Interval, seconds (0 = none) */
    uint16_t n_alias_out;
};

static struct conn_extra *conn_x(struct conn *c)
{
    if (!c->x)
        c->x = calloc(1, sizeof(*c->x));
    return c->x;
}

/* An asynchronous write: only while the socket does not take everything. */
struct conn_write {
    uv_write_t req;
    struct buf data;
};

/* "address:port" of the client, for log lines. */
static const char *conn_peer(const struct conn *c, char *out, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    char host[48] = "?";
    snprintf(out, len, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0)
        return out;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        uv_ip4_name(sin, host, sizeof(host));
        snprintf(out, len, "%s:%u", host, ntohs(sin->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(sin6, host, sizeof(host));
        snprintf(out, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
    }
    return out;
}
#define PEER(c) conn_peer((c), (char[64]){0}, 64)

struct pending_ack {
    uint32_t token;
    uint16_t pid;
    uint8_t type;
    uint8_t reason;
    bool ready;
    bool failed;
};

struct conn *conn_ref(struct conn *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

static void conn_free(struct conn *c)
{
    buf_free(&c->in);
    buf_free(&c->out);
    msg_unref(c->will);
    struct conn_extra *x = c->x;
    if (x) {
        if (x->alias_in) {
            for (uint32_t i = 0; i < g_broker.cfg.topic_alias_maximum; i++)
                msg_unref(x->alias_in[i]);
            free(x->alias_in);
        }
        for (uint16_t i = 0; i < x->n_alias_out; i++)
            msg_unref(x->alias_out[i]);
        free(x->alias_out);
        free(x->acks);
        free(x);
    }
    free(c);
}

void conn_unref(struct conn *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        conn_free(c);
}

size_t conn_pending_bytes(const struct conn *c)
{
    return c->out.len + (c->wr ? c->wr->data.len : 0);
}

/* ---- output ---------------------------------------------------------- */

/* Encode p into c->out, honouring the client's Maximum Packet Size: reason
 * strings and user properties are dropped first [MQTT-3.1.2-25]; a packet
 * still too large is not sent. Returns 1 when queued, 0 when not. */
static int conn_send(struct conn *c, struct mqtt_packet *p)
{
    if (c->state == CONN_CLOSED)
        return 0;
    size_t before = c->out.len;
    long n = mqtt_encode(&c->out, c->version ? c->version : MQTT_V311, p);
    if (n < 0) {
        c->out.len = before;
        return 0;
    }
    if ((uint64_t)n > c->client_max_packet && c->version == MQTT_V5) {
        c->out.len = before;
        struct mqtt_props *props = NULL;
        switch (p->type) {
        case MQTT_CONNACK:
            props = &p->u.connack.props;
            break;
        case MQTT_PUBACK:
        case MQTT_PUBREC:
        case MQTT_PUBREL:
        case MQTT_PUBCOMP:
            props = &p->u.ack.props;
            break;
        case MQTT_SUBACK:
        case MQTT_UNSUBACK:
            props = &p->u.suback.props;
            break;
        case MQTT_DISCONNECT:
        case MQTT_AUTH:
            props = &p->u.disconnect.props;
            break;
        default:
            return 0;
        }
        props->present &= ~MQTT_PF(MQTT_PROP_REASON_STRING);
        props->user_props.len = 0;
        props->n_user_props = 0;
        n = mqtt_encode(&c->out, c->version, p);
        if (n < 0 || (uint64_t)n > c->client_max_packet) {
            c->out.len = before;
            return 0;
        }
    }
    worker_mark_dirty(c->w, c);
    return 1;
}

static void conn_send_ack(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.u.ack.packet_id = pid;
    p.u.ack.reason = reason;
    conn_send(c, &p);
}

void conn_send_pubrel(struct conn *c, uint16_t pid)
{
    conn_send_ack(c, MQTT_PUBREL, pid, 0);
}

/* Send the acknowledgements at the head of the queue that are ready. */
static void conn_ack_drain(struct conn *c)
{
    struct conn_extra *x = c->x;
    if (!x)
        return;
    uint32_t n = 0;
    while (n < x->acks_len && x->acks[n].ready) {
        struct pending_ack *a = &x->acks[n++];
        if (a->failed && c->version != MQTT_V5 &&
            (a->type == MQTT_PUBACK || a->type == MQTT_PUBREC)) {
            /* 3.1.1 has no way to say "not stored": close, the client
             * publishes again on its next connection */
            x->acks_len = 0;
            conn_close(c, 0, false);
            return;
        }
        conn_send_ack(c, (enum mqtt_type)a->type, a->pid, a->reason);
    }
    if (n) {
        memmove(x->acks, x->acks + n, (x->acks_len - n) * sizeof(*x->acks));
        x->acks_len -= n;
    }
}

uint32_t conn_ack_push(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason,
                       bool ready)
{
    uint32_t token = ++c->next_token;
    if (ready && (!c->x || c->x->acks_len == 0)) {
        conn_send_ack(c, type, pid, reason);
        return token;
    }
    struct conn_extra *x = conn_x(c);
    if (!x) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return token;
    }
    if (x->acks_len == x->acks_cap) {
        uint32_t cap = x->acks_cap ? x->acks_cap * 2 : 8;
        struct pending_ack *p = realloc(x->acks, cap * sizeof(*p));
        if (!p) {
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return token;
        }
        x->acks = p;
        x->acks_cap = cap;
    }
    x->acks[x->acks_len++] = (struct pending_ack){
        .token = token, .pid = pid, .type = (uint8_t)type, .reason = reason, .ready = ready};
    return token;
}

void conn_ack_done(struct conn *c, uint32_t token, int status)
{
    struct conn_extra *x = c->x;
    if (c->state != CONN_ACTIVE || !x)
        return;
    for (uint32_t i = 0; i < x->acks_len; i++) {
        struct pending_ack *a = &x->acks[i];
        if (a->token != token)
            continue;
        a->ready = true;
        if (status < 0 && (a->type == MQTT_PUBACK || a->type == MQTT_PUBREC)) {
            /* the message could not be stored: not acknowledged as received */
            log_warn("%s: store failed (%s): publish %u refused", PEER(c), store_strerror(status),
                     a->pid);
            a->failed = true;
            a->reason = MQTT_RC_QUOTA_EXCEEDED;
            if (a->type == MQTT_PUBREC && c->session) {
                /* not received after all: the id is free for a new message */
                struct session *s = c->session;
                lock_acquire(&s->lock);
                session_qos2_remove(s, a->pid);
                lock_release(&s->lock);
            }
        }
        break;
    }
    conn_ack_drain(c);
}

struct ack_wait {
    struct conn *c;
    uint32_t token;
    struct msg *held; /* a published message waiting for the same commit */
    struct pub_targets targets;
};

/* Store writer thread: the batch behind an acknowledgement committed. */
static void conn_on_commit(void *ud, int status)
{
    struct ack_wait *a = ud;
    if (a->held) {
        broker_release(a->held, status < 0 ? MSG_REJECTED : MSG_READY, &a->targets, NULL);
        msg_unref(a->held);
    }
    worker_post_ack(a->c->w, a->c, a->token, status);
    conn_unref(a->c);
    free(a);
}

/* Queue an acknowledgement that may be sent only once *bt has committed;
 * `held` (with its targets), if not NULL, is released by the same commit. */
static void conn_ack_after(struct conn *c, struct store_batch **bt, enum mqtt_type type,
                           uint16_t pid, uint8_t reason, struct msg *held,
                           struct pub_targets *targets)
{
    struct ack_wait *a = NULL;
    if (*bt && store_batch_ops(*bt) > 0)
        a = malloc(sizeof(*a));
    if (!a) {
        bool stored = *bt && store_batch_ops(*bt) > 0;
        persist_submit(bt, NULL, NULL);
        if (held)
            broker_release(held, MSG_READY, targets, c->w);
        if (stored) /* out of memory: no acknowledgement without the commit */
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
        else
            conn_ack_push(c, type, pid, reason, true);
        return;
    }
    a->token = conn_ack_push(c, type, pid, reason, false);
    a->c = conn_ref(c);
    a->held = held ? msg_ref(held) : NULL;
    if (targets) {
        a->targets = *targets;
        memset(targets, 0, sizeof(*targets));
    } else {
        memset(&a->targets, 0, sizeof(a->targets));
    }
    persist_submit(bt, conn_on_commit, a);
}

static void conn_send_disconnect(struct conn *c, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_DISCONNECT;
    p.u.disconnect.reason = reason;
    conn_send(c, &p);
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

int conn_send_publish(struct conn *c, const struct qmsg *q, bool dup, uint64_t now_ms)
{
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
    bool new_alias = false;
    if (c->version == MQTT_V5) {
        struct mqtt_props *pr = &pub->props;
        memset(pr, 0, sizeof(*pr));
        if (m->expiry_at) {
            if (m->expiry_at <= now_ms && !dup)
                return 0;
            /* [MQTT-3.3.2-6] the interval sent is what is left of it */
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
        if (c->client_alias_max && conn_x(c)) {
            uint16_t alias = 0;
            if (conn_alias_out_find(c, m, &alias)) {
                pub->topic.len = 0;
                pub->topic.data = NULL;
            } else if (c->x->n_alias_out < c->client_alias_max &&
                       c->x->n_alias_out < CONN_MAX_ALIAS_OUT) {
                alias = c->x->n_alias_out + 1;
                new_alias = true;
            }
            if (alias) {
                pr->topic_alias = alias;
                pr->present |= MQTT_PF(MQTT_PROP_TOPIC_ALIAS);
            }
        }
    }
    size_t before = c->out.len;
    long n = mqtt_encode(&c->out, c->version, &p);
    if (n < 0 || (c->version == MQTT_V5 && (uint64_t)n > c->client_max_packet)) {
        /* [MQTT-3.1.2-25] a packet larger than the client's Maximum Packet
         * Size is not sent; the message is discarded for this client */
        c->out.len = before;
        return n < 0 ? (int)n : 0;
    }
    if (new_alias) {
        if (!c->x->alias_out) {
            uint16_t cap =
                c->client_alias_max < CONN_MAX_ALIAS_OUT ? c->client_alias_max : CONN_MAX_ALIAS_OUT;
            c->x->alias_out = calloc(cap, sizeof(*c->x->alias_out));
        }
        if (c->x->alias_out)
            c->x->alias_out[c->x->n_alias_out++] = msg_ref(m);
        else {
            c->out.len = before;
            return -ENOMEM;
        }
    }
    atomic_fetch_add_explicit(&g_broker.stats.msgs_sent, 1, memory_order_relaxed);
    worker_mark_dirty(c->w, c);
    return 1;
}

static void conn_write_cb(uv_write_t *req, int status);

bool conn_try_write(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->writing || c->write_failed)
        return false;
    while (c->out.len) {
        uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
        int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (r == UV_EAGAIN)
            return false;
        if (r < 0) {
            /* closed by conn_flush at the end of the turn: never from here,
             * where the caller may hold the session lock */
            c->write_failed = true;
            worker_mark_dirty(c->w, c);
            return false;
        }
        atomic_fetch_add_explicit(&g_broker.stats.bytes_sent, (unsigned long)r,
                                  memory_order_relaxed);
        buf_consume(&c->out, (size_t)r);
    }
    buf_free(&c->out); /* an idle connection holds no output buffer */
    return true;
}

void conn_flush(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->writing)
        return;
    if (c->write_failed) {
        c->out.len = 0;
        if (c->state == CONN_ACTIVE || c->state == CONN_NEW) {
            conn_close(c, 0, false);
            return;
        }
    }
    /* Most writes complete at once: no request, no copy. */
    conn_try_write(c);
    if (c->writing || c->write_failed)
        return;
    if (c->out.len == 0) {
        if (c->state == CONN_CLOSING) {
            c->state = CONN_CLOSED;
            uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        }
        return;
    }
    /* The socket is full: hand the rest to libuv and wait for it. */
    struct conn_write *wr = malloc(sizeof(*wr));
    if (!wr) {
        c->out.len = 0;
        if (c->state == CONN_ACTIVE || c->state == CONN_NEW)
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
        else if (c->state == CONN_CLOSING) {
            c->state = CONN_CLOSED;
            uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        }
        return;
    }
    wr->data = c->out;
    memset(&c->out, 0, sizeof(c->out));
    wr->req.data = c;
    uv_buf_t b = uv_buf_init((char *)wr->data.data, (unsigned)wr->data.len);
    atomic_fetch_add_explicit(&g_broker.stats.bytes_sent, wr->data.len, memory_order_relaxed);
    c->writing = true;
    c->wr = wr;
    conn_ref(c);
    int r = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, conn_write_cb);
    if (r < 0) {
        c->writing = false;
        c->wr = NULL;
        buf_free(&wr->data);
        free(wr);
        conn_unref(c);
        if (c->state == CONN_ACTIVE || c->state == CONN_NEW)
            conn_close(c, 0, false);
        else if (c->state == CONN_CLOSING) {
            c->state = CONN_CLOSED;
            uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        }
    }
}

static void conn_write_cb(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct conn_write *wr = c->wr;
    c->writing = false;
    c->wr = NULL;
    buf_free(&wr->data);
    free(wr);
    if (status < 0 && (c->state == CONN_ACTIVE || c->state == CONN_NEW)) {
        conn_close(c, 0, false);
    } else if (c->state == CONN_CLOSING) {
        if (status < 0)
            c->out.len = 0;
        conn_flush(c);
    } else if (c->state == CONN_ACTIVE) {
        if (c->out.len)
            conn_flush(c);
        struct session *s = c->session;
        if (s && s->queue.len) /* a racy hint; the flush itself locks */
            session_flush(s);
    }
    conn_unref(c);
}

/* ---- closing ----------------------------------------------------------- */

/* Publish a will now. */
static void conn_publish_will(struct worker *w, struct msg *will, uint32_t expiry)
{
    broker_publish_will(&g_broker, will, expiry, w);
}

/* Detach the session from c; decide about the will. */
static void conn_detach(struct conn *c, bool resumed)
{
    struct broker *b = &g_broker;
    struct session *s = c->session;
    bool send_will = c->will && !c->normal_disconnect;
    if (!s) {
        return;
    }
    uint64_t now = broker_now_ms();
    bool attached = false, ends = false;
    struct store_batch *bt = NULL;
    pthread_mutex_lock(&b->sessions_lock);
    lock_acquire(&s->lock);
    if (s->conn == c) {
        attached = true;
        s->conn = NULL;
        s->disconnected_at = now;
        ends = s->expiry_interval == 0;
        if (!ends && persist_wanted(s) && !atomic_load(&b->stopping))
            persist_session_put(&bt, s, false);
        if (send_will && !ends && c->x->will_delay > 0) {
            /* [MQTT-3.1.3-9] the will waits for its delay or the end of the
             * session, whichever comes first */
            msg_unref(s->pending_will);
            s->pending_will = c->will;
            s->will_expiry = c->x->will_expiry;
            uint64_t delay = c->x->will_delay;
            if (s->expiry_interval < delay)
                delay = s->expiry_interval;
            s->will_at = now + delay * 1000u;
            c->will = NULL;
            send_will = false;
        }
    }
    /* Taken over (possibly before the takeover's kick reached us): when the
     * session lives on, it was resumed by the new connection. */
    if (!attached && s->in_table && !s->ended)
        resumed = true;
    lock_release(&s->lock);
    persist_submit(&bt, NULL, NULL);
    if (attached && ends) {
        if (s->in_table)
            broker_session_remove(b, s);
        else
            ends = false; /* already removed (and ended) by someone else */
    }
    pthread_mutex_unlock(&b->sessions_lock);
    if (attached)
        atomic_fetch_sub(&b->stats.clients_connected, 1);
    if (send_will && !attached && resumed && c->x->will_delay > 0)
        send_will = false; /* taken over within the delay [MQTT-3.1.3-9] */
    if (send_will)
        conn_publish_will(c->w, c->will, c->x->will_expiry);
    msg_unref(c->will);
    c->will = NULL;
    bool drop_table_ref = false;
    if (attached && ends) {
        session_end(b, s);
        drop_table_ref = true;
    }
    c->session = NULL;
    if (drop_table_ref)
        session_unref(s);
    session_unref(s);
}

void conn_close(struct conn *c, uint8_t reason, bool resumed)
{
    if (c->state != CONN_NEW && c->state != CONN_ACTIVE)
        return;
    bool was_active = c->state == CONN_ACTIVE;
    if (reason >= 0x80 && c->version == MQTT_V5 && was_active)
        conn_send_disconnect(c, reason);
    if (reason >= 0x80)
        log_debug("%s: closing connection: %s", PEER(c), mqtt_rc_str(reason));
    c->state = CONN_CLOSING;
    c->state_since = uv_now(&c->w->loop);
    uv_read_stop((uv_stream_t *)&c->tcp);
    conn_detach(c, resumed);
    conn_flush(c);
}

static void conn_on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->n_conns--;
    atomic_fetch_sub(&g_broker.connections, 1);
    conn_unref(c);
    worker_conn_gone(w);
}

void conn_check_timers(struct conn *c, uint64_t now)
{
    const struct config *cfg = &g_broker.cfg;
    if (c->state == CONN_NEW && now - c->state_since >= (uint64_t)cfg->connect_timeout * 1000u) {
        log_debug("%s: no CONNECT within %" PRIu32 " s", PEER(c), cfg->connect_timeout);
        conn_close(c, 0, false);
    } else if (c->state == CONN_ACTIVE && c->keepalive &&
               now - c->last_rx >= (uint64_t)c->keepalive * 1500u) {
        /* [MQTT-3.1.2-22] no packet within 1.5 x keep alive */
        log_debug("%s: keep alive timeout", PEER(c));
        conn_close(c, MQTT_RC_KEEP_ALIVE_TIMEOUT, false);
    } else if (c->state == CONN_CLOSING && now - c->state_since >= CONN_CLOSE_GRACE_MS) {
        c->state = CONN_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    }
}

/* ---- CONNECT ----------------------------------------------------------- */

static void conn_refuse(struct conn *c, uint8_t version, uint8_t reason)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNACK;
    p.u.connack.reason = reason;
    c->version = version;
    conn_send(c, &p);
    c->state = CONN_CLOSING;
    c->state_since = uv_now(&c->w->loop);
    uv_read_stop((uv_stream_t *)&c->tcp);
    conn_flush(c);
}

/* Store the record of a connected session (after its subscriptions changed,
 * or at CONNECT), deleting it for a session no longer persistent; submit *bt
 * with it. */
static void conn_persist_session(struct session *s, struct store_batch **bt)
{
    lock_acquire(&s->lock);
    if (persist_wanted(s))
        persist_session_put(bt, s, true);
    else if (s->stored)
        persist_session_del(bt, s);
    lock_release(&s->lock);
    persist_submit(bt, NULL, NULL);
}

/* Build the pass-through properties of a message: payload format, content
 * type, response topic, correlation data, user properties. */
static int conn_passthrough_props(const struct mqtt_props *in, struct buf *out)
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

static void conn_assign_id(char *out, size_t len)
{
    static atomic_ulong counter;
    unsigned long n = atomic_fetch_add(&counter, 1);
    snprintf(out, len, "starling-%016" PRIx64 "-%lu", broker_now_ms() ^ (uint64_t)(uintptr_t)out,
             n);
}

static void conn_handle_connect(struct conn *c, const struct mqtt_connect *ck)
{
    struct broker *b = &g_broker;
    const struct config *cfg = &b->cfg;
    uint8_t v = ck->protocol_version;
    bool v5 = v == MQTT_V5;
    c->version = v;

    if (v5 && (ck->props.present & MQTT_PF(MQTT_PROP_AUTH_DATA)) &&
        !(ck->props.present & MQTT_PF(MQTT_PROP_AUTH_METHOD))) {
        /* Authentication Data without an Authentication Method is a protocol
         * error (5.0 section 3.1.2.11.10) */
        conn_refuse(c, v, MQTT_RC_PROTOCOL_ERROR);
        return;
    }
    if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_RESPONSE_TOPIC)) &&
        !topic_name_valid((const char *)ck->will_props.response_topic.data,
                          ck->will_props.response_topic.len)) {
        /* the will's Response Topic is a topic name (no wildcards) */
        conn_refuse(c, v, MQTT_RC_PROTOCOL_ERROR);
        return;
    }
    if (v5 && (ck->props.present & MQTT_PF(MQTT_PROP_AUTH_METHOD))) {
        /* no authentication method is configured on this node */
        conn_refuse(c, v, MQTT_RC_BAD_AUTH_METHOD);
        return;
    }
    if (ck->will_flag) {
        if (!topic_name_valid((const char *)ck->will_topic.data, ck->will_topic.len)) {
            conn_refuse(c, v, v5 ? MQTT_RC_TOPIC_NAME_INVALID : MQTT3_CONNACK_ID_REJECTED);
            return;
        }
        if (v5 && ck->will_qos > cfg->max_qos) {
            /* [MQTT-3.2.2-12] */
            conn_refuse(c, v, MQTT_RC_QOS_NOT_SUPPORTED);
            return;
        }
        if (v5 && ck->will_retain && !cfg->retain_available) {
            /* [MQTT-3.2.2-13] */
            conn_refuse(c, v, MQTT_RC_RETAIN_NOT_SUPPORTED);
            return;
        }
        if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT)) &&
            ck->will_props.payload_format == 1 &&
            !mqtt_utf8_valid(ck->will_payload.data, ck->will_payload.len)) {
            conn_refuse(c, v, MQTT_RC_PAYLOAD_FORMAT_INVALID);
            return;
        }
    }

    char assigned[64];
    const char *id = (const char *)ck->client_id.data;
    uint16_t id_len = (uint16_t)ck->client_id.len;
    bool was_assigned = false;
    if (id_len == 0) {
        if (!v5 && !ck->clean_start) {
            /* [MQTT-3.1.3-8] an empty client id needs clean session */
            conn_refuse(c, v, MQTT3_CONNACK_ID_REJECTED);
            return;
        }
        if (!cfg->allow_zero_length_clientid) {
            conn_refuse(c, v, v5 ? MQTT_RC_CLIENT_ID_NOT_VALID : MQTT3_CONNACK_ID_REJECTED);
            return;
        }
        /* [MQTT-3.1.3-6] assign a unique client id */
        conn_assign_id(assigned, sizeof(assigned));
        id = assigned;
        id_len = (uint16_t)strlen(assigned);
        was_assigned = true;
    }

    /* Session expiry: 3.1.1 clean session 0 keeps the session forever. */
    uint32_t expiry = 0;
    bool expiry_capped = false;
    if (v5) {
        if (ck->props.present & MQTT_PF(MQTT_PROP_SESSION_EXPIRY))
            expiry = ck->props.session_expiry;
        if (cfg->max_session_expiry && expiry > cfg->max_session_expiry) {
            expiry = cfg->max_session_expiry;
            expiry_capped = true;
        }
        c->client_receive_max =
            (ck->props.present & MQTT_PF(MQTT_PROP_RECEIVE_MAX)) ? ck->props.receive_max : 65535;
        c->client_max_packet = (ck->props.present & MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE))
                                   ? ck->props.max_packet_size
                                   : UINT32_MAX;
        c->client_alias_max = (ck->props.present & MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX))
                                  ? ck->props.topic_alias_max
                                  : 0;
        c->problem_info = !(ck->props.present & MQTT_PF(MQTT_PROP_REQUEST_PROBLEM_INFO)) ||
                          ck->props.request_problem_info;
    } else {
        expiry = ck->clean_start ? 0 : UINT32_MAX;
        if (!ck->clean_start && cfg->max_session_expiry)
            expiry = cfg->max_session_expiry;
        c->client_receive_max = 0;
        c->client_max_packet = UINT32_MAX;
    }
    c->connect_expiry = expiry;

    /* Keep alive: a 5.0 client asking for more than max_keepalive (or for
     * none) is told the Server Keep Alive [MQTT-3.2.2-21]. */
    c->keepalive = ck->keep_alive;
    bool server_ka = false;
    if (v5 && cfg->max_keepalive < 65535 &&
        (ck->keep_alive == 0 || ck->keep_alive > cfg->max_keepalive)) {
        c->keepalive = cfg->max_keepalive;
        server_ka = true;
    }

    /* The will message. */
    if (ck->will_flag && !conn_x(c)) {
        conn_close(c, 0, false);
        return;
    }
    if (ck->will_flag) {
        struct buf props = {0};
        if (v5 && conn_passthrough_props(&ck->will_props, &props) < 0) {
            buf_free(&props);
            conn_close(c, 0, false);
            return;
        }
        uint8_t wq = ck->will_qos > cfg->max_qos ? cfg->max_qos : ck->will_qos;
        c->will = msg_new(ck->will_topic.data, (uint16_t)ck->will_topic.len, ck->will_payload.data,
                          ck->will_payload.len, props.data, (uint32_t)props.len, wq,
                          ck->will_retain && cfg->retain_available, 0, NULL);
        buf_free(&props);
        if (!c->will) {
            conn_close(c, 0, false);
            return;
        }
        if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_WILL_DELAY)))
            c->x->will_delay = ck->will_props.will_delay;
        if (v5 && (ck->will_props.present & MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY)))
            c->x->will_expiry = ck->will_props.message_expiry;
    }

    /* Find, take over or create the session. */
    struct session *s = NULL, *ending = NULL;
    struct msg *dropped_will = NULL;
    bool present = false;
    pthread_mutex_lock(&b->sessions_lock);
    struct session *old = broker_session_find(b, id, id_len);
    if (old) {
        lock_acquire(&old->lock);
        if (old->conn) {
            /* [MQTT-3.1.4-3] the existing connection is closed (5.0: with
             * DISCONNECT 0x8E) */
            worker_post_kick(old->w, old->conn, MQTT_RC_SESSION_TAKEN_OVER, !ck->clean_start);
            old->conn = NULL;
            atomic_fetch_sub(&b->stats.clients_connected, 1);
        }
        lock_release(&old->lock);
        if (ck->clean_start) {
            /* [MQTT-3.1.2-4] clean start discards the existing session */
            broker_session_remove(b, old);
            ending = old;
        } else {
            /* [MQTT-3.1.2-5] resume the existing session */
            s = old;
            present = true;
            lock_acquire(&s->lock);
            dropped_will = s->pending_will; /* [MQTT-3.1.3-9] */
            s->pending_will = NULL;
            lock_release(&s->lock);
        }
    }
    if (!s) {
        s = session_new(id, id_len);
        if (!s) {
            pthread_mutex_unlock(&b->sessions_lock);
            conn_refuse(c, v, v5 ? MQTT_RC_SERVER_UNAVAILABLE : MQTT3_CONNACK_SERVER_UNAVAILABLE);
            if (ending) {
                session_end(b, ending);
                session_unref(ending);
            }
            return;
        }
        broker_session_insert(b, s);
    }
    lock_acquire(&s->lock);
    s->conn = c;
    s->w = c->w;
    s->version = v;
    s->expiry_interval = expiry;
    lock_release(&s->lock);
    c->session = session_ref(s);
    pthread_mutex_unlock(&b->sessions_lock);
    msg_unref(dropped_will);
    if (ending) {
        /* the old session ends now: a will it was still delaying goes out */
        lock_acquire(&ending->lock);
        struct msg *will = ending->pending_will;
        uint32_t wexp = ending->will_expiry;
        ending->pending_will = NULL;
        lock_release(&ending->lock);
        if (will) {
            conn_publish_will(c->w, will, wexp);
            msg_unref(will);
        }
        session_end(b, ending);
        session_unref(ending);
    }
    /* The session record: written for a persistent session, deleted for one
     * that is no longer persistent. */
    struct store_batch *bt = NULL;
    conn_persist_session(s, &bt);

    /* CONNACK */
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_CONNACK;
    struct mqtt_connack *ca = &p.u.connack;
    /* [MQTT-3.2.2-2], [MQTT-3.2.2-3] session present */
    ca->session_present = present;
    ca->reason = 0;
    if (v5) {
        struct mqtt_props *pr = &ca->props;
        pr->present |=
            MQTT_PF(MQTT_PROP_RECEIVE_MAX) | MQTT_PF(MQTT_PROP_RETAIN_AVAILABLE) |
            MQTT_PF(MQTT_PROP_MAX_PACKET_SIZE) | MQTT_PF(MQTT_PROP_WILDCARD_SUB_AVAILABLE) |
            MQTT_PF(MQTT_PROP_SUB_ID_AVAILABLE) | MQTT_PF(MQTT_PROP_SHARED_SUB_AVAILABLE);
        pr->receive_max = cfg->receive_maximum;
        pr->retain_available = cfg->retain_available;
        pr->max_packet_size = cfg->max_packet_size;
        pr->wildcard_sub_available = 1;
        pr->sub_id_available = 1;
        pr->shared_sub_available = 1;
        if (cfg->max_qos < 2) {
            pr->present |= MQTT_PF(MQTT_PROP_MAX_QOS);
            pr->max_qos = cfg->max_qos;
        }
        if (cfg->topic_alias_maximum) {
            pr->present |= MQTT_PF(MQTT_PROP_TOPIC_ALIAS_MAX);
            pr->topic_alias_max = cfg->topic_alias_maximum;
        }
        if (was_assigned) {
            pr->present |= MQTT_PF(MQTT_PROP_ASSIGNED_CLIENT_ID);
            pr->assigned_client_id.data = (const uint8_t *)id;
            pr->assigned_client_id.len = id_len;
        }
        if (server_ka) {
            pr->present |= MQTT_PF(MQTT_PROP_SERVER_KEEP_ALIVE);
            pr->server_keep_alive = c->keepalive;
        }
        if (expiry_capped) {
            pr->present |= MQTT_PF(MQTT_PROP_SESSION_EXPIRY);
            pr->session_expiry = expiry;
        }
    }
    c->state = CONN_ACTIVE;
    unsigned long now_conn = atomic_fetch_add(&b->stats.clients_connected, 1) + 1;
    if (now_conn > atomic_load(&b->stats.clients_maximum))
        atomic_store(&b->stats.clients_maximum, now_conn);
    if (!conn_send(c, &p)) {
        /* [MQTT-3.1.2-24] even the smallest CONNACK exceeds the client's
         * Maximum Packet Size: close rather than leave it waiting */
        conn_close(c, 0, false);
        return;
    }
    log_debug("%s: client '%.*s' connected (MQTT %s, session present %d)", PEER(c), (int)id_len, id,
              v == MQTT_V5     ? "5.0"
              : v == MQTT_V311 ? "3.1.1"
                               : "3.1",
              present);

    /* Resume: resend what was inflight, then what is queued. */
    lock_acquire(&s->lock);
    if (s->conn == c)
        session_resume_locked(s);
    lock_release(&s->lock);
}

/* ---- PUBLISH ----------------------------------------------------------- */

static void conn_handle_publish(struct conn *c, struct mqtt_publish *p)
{
    struct broker *b = &g_broker;
    const struct config *cfg = &b->cfg;
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    struct mqtt_bytes topic = p->topic;

    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_TOPIC_ALIAS))) {
        uint16_t a = p->props.topic_alias;
        if (a == 0 || a > cfg->topic_alias_maximum) {
            /* [MQTT-3.3.2-8], [MQTT-3.3.2-9] */
            conn_close(c, MQTT_RC_TOPIC_ALIAS_INVALID, false);
            return;
        }
        struct conn_extra *x = conn_x(c);
        if (x && !x->alias_in)
            x->alias_in = calloc(cfg->topic_alias_maximum, sizeof(*x->alias_in));
        if (!x || !x->alias_in) {
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return;
        }
        if (topic.len > 0) {
            if (!topic_name_valid((const char *)topic.data, topic.len)) {
                conn_close(c, MQTT_RC_TOPIC_NAME_INVALID, false);
                return;
            }
            struct msg *t =
                msg_new(topic.data, (uint16_t)topic.len, NULL, 0, NULL, 0, 0, false, 0, NULL);
            if (!t) {
                conn_close(c, MQTT_RC_UNSPECIFIED, false);
                return;
            }
            msg_unref(x->alias_in[a - 1]);
            x->alias_in[a - 1] = t;
        } else {
            struct msg *t = x->alias_in[a - 1];
            if (!t) {
                /* an alias that was never set */
                conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
                return;
            }
            topic.data = (const uint8_t *)msg_topic(t);
            topic.len = t->topic_len;
        }
    }
    if (topic.len == 0) {
        /* [MQTT-3.3.2-1] a topic name is required (without a topic alias) */
        conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
        return;
    }
    if (!topic_name_valid((const char *)topic.data, topic.len)) {
        /* [MQTT-3.3.2-2] no wildcards in a topic name */
        conn_close(c, MQTT_RC_TOPIC_NAME_INVALID, false);
        return;
    }
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_RESPONSE_TOPIC)) &&
        !topic_name_valid((const char *)p->props.response_topic.data,
                          p->props.response_topic.len)) {
        /* [MQTT-3.3.2-14] the Response Topic is a topic name: no wildcards */
        conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
        return;
    }
    if (v5 && p->props.n_sub_ids > 0) {
        /* [MQTT-3.3.4-6] a client must not send a subscription identifier */
        conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
        return;
    }
    if (p->qos > cfg->max_qos) {
        /* [MQTT-3.2.2-11] */
        conn_close(c, MQTT_RC_QOS_NOT_SUPPORTED, false);
        return;
    }
    if (p->retain && !cfg->retain_available) {
        /* [MQTT-3.2.2-14] */
        conn_close(c, MQTT_RC_RETAIN_NOT_SUPPORTED, false);
        return;
    }
    atomic_fetch_add_explicit(&b->stats.msgs_received, 1, memory_order_relaxed);
    enum mqtt_type ack = p->qos == 1 ? MQTT_PUBACK : MQTT_PUBREC;
    if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_PAYLOAD_FORMAT)) &&
        p->props.payload_format == 1 && !mqtt_utf8_valid(p->payload.data, p->payload.len)) {
        if (p->qos == 0)
            conn_close(c, MQTT_RC_PAYLOAD_FORMAT_INVALID, false);
        else
            conn_ack_push(c, ack, p->packet_id, MQTT_RC_PAYLOAD_FORMAT_INVALID, true);
        return;
    }
    struct store_batch *bt = NULL;
    if (p->qos == 2) {
        bool dup = false, over = false;
        lock_acquire(&s->lock);
        if (session_qos2_has(s, p->packet_id))
            dup = true;
        else if (s->n_qos2_in >= cfg->receive_maximum)
            over = true;
        else if (session_qos2_add(s, p->packet_id) < 0)
            over = true;
        else if (persist_wanted(s))
            persist_qos2(&bt, s, p->packet_id, true);
        lock_release(&s->lock);
        if (over) {
            /* [MQTT-3.3.4-8] more unacknowledged QoS 2 than Receive Maximum */
            conn_close(c, MQTT_RC_RECEIVE_MAX_EXCEEDED, false);
            return;
        }
        if (dup) {
            /* [MQTT-4.3.3-10] already received: acknowledge, do not deliver again */
            conn_ack_push(c, MQTT_PUBREC, p->packet_id, 0, true);
            return;
        }
    }
    int matched = 0;
    /* Clients do not publish into $SYS: the broker owns it. */
    bool sys = topic.len >= 4 && memcmp(topic.data, "$SYS", 4) == 0;
    if (!sys) {
        struct buf props = {0};
        if (v5 && conn_passthrough_props(&p->props, &props) < 0) {
            buf_free(&props);
            persist_submit(&bt, NULL, NULL);
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return;
        }
        uint64_t expiry_at = 0;
        if (v5 && (p->props.present & MQTT_PF(MQTT_PROP_MESSAGE_EXPIRY)))
            expiry_at = msg_clock_ms() + (uint64_t)p->props.message_expiry * 1000u;
        struct msg *m = msg_new(topic.data, (uint16_t)topic.len, p->payload.data, p->payload.len,
                                props.data, (uint32_t)props.len, p->qos, p->retain, expiry_at, s);
        buf_free(&props);
        if (!m) {
            persist_submit(&bt, NULL, NULL);
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
            return;
        }
        /* With a store, a QoS 1/2 message waits in the subscribers' queues
         * until it is durable (see struct msg.hold). */
        bool hold = p->qos > 0 && b->store;
        struct pub_targets targets = {0};
        if (hold)
            atomic_store(&m->hold, MSG_HELD);
        matched = broker_publish(b, m, c->w, &bt, hold ? &targets : NULL);
        if (p->qos > 0)
            /* [MQTT-4.3.2-2], [MQTT-4.3.3-2]: acknowledged once it is stored
             * for every persistent session that must receive it */
            conn_ack_after(c, &bt, ack, p->packet_id,
                           v5 && matched == 0 ? MQTT_RC_NO_MATCHING_SUBSCRIBERS : 0,
                           hold ? m : NULL, &targets);
        else
            persist_submit(&bt, NULL, NULL);
        msg_unref(m);
        return;
    }
    if (p->qos > 0)
        conn_ack_after(c, &bt, ack, p->packet_id, 0, NULL, NULL);
    else
        persist_submit(&bt, NULL, NULL);
}

/* ---- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------- */

struct retained_batch {
    struct msg **msgs;
    size_t n, cap;
};

static void conn_collect_retained(void *ud, struct msg *m)
{
    struct retained_batch *rb = ud;
    if (rb->n == rb->cap) {
        size_t cap = rb->cap ? rb->cap * 2 : 16;
        struct msg **p = realloc(rb->msgs, cap * sizeof(*p));
        if (!p)
            return;
        rb->msgs = p;
        rb->cap = cap;
    }
    rb->msgs[rb->n++] = msg_ref(m);
}

static void conn_handle_subscribe(struct conn *c, const struct mqtt_subscribe *sub)
{
    struct broker *b = &g_broker;
    const struct config *cfg = &b->cfg;
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    uint32_t sub_id = 0;
    if (v5 && sub->props.n_sub_ids)
        sub_id = sub->props.sub_id;
    uint8_t stack_rc[64];
    uint8_t *rcs = sub->count <= sizeof(stack_rc) ? stack_rc : malloc(sub->count);
    if (!rcs) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    uint32_t pos = 0, i = 0;
    struct mqtt_bytes f;
    uint8_t opts;
    uint64_t now = msg_clock_ms();
    struct store_batch *bt = NULL;
    while (mqtt_sub_next(sub, MQTT_SUBSCRIBE, &pos, &f, &opts) && i < sub->count) {
        const char *filter = (const char *)f.data;
        const char *group, *inner;
        size_t glen, ilen;
        int shared = topic_share_parse(filter, f.len, &group, &glen, &inner, &ilen);
        if (shared < 0 || !topic_filter_valid(filter, f.len)) {
            rcs[i++] = v5 ? MQTT_RC_TOPIC_FILTER_INVALID : 0x80;
            continue;
        }
        if (shared == 1 && (opts & MQTT_SUBOPT_NO_LOCAL)) {
            /* [MQTT-3.8.3-4] No Local on a shared subscription */
            if (rcs != stack_rc)
                free(rcs);
            persist_submit(&bt, NULL, NULL);
            conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
            return;
        }
        uint8_t qos = opts & MQTT_SUBOPT_QOS_MASK;
        if (qos > cfg->max_qos)
            qos = cfg->max_qos; /* [MQTT-3.9.3-?] grant what the server supports */
        opts = (uint8_t)((opts & ~MQTT_SUBOPT_QOS_MASK) | qos);
        lock_acquire(&s->lock);
        bool had = session_sub_find(s, filter, (uint16_t)f.len) != NULL;
        int r = session_sub_set(s, filter, (uint16_t)f.len, opts, sub_id);
        lock_release(&s->lock);
        int existed = r < 0 ? r : sub_index_add(b->index, filter, f.len, s, opts, sub_id);
        if (existed < 0) {
            if (r == 0 && !had) { /* the session keeps only what the index has */
                lock_acquire(&s->lock);
                session_sub_del(s, filter, (uint16_t)f.len);
                lock_release(&s->lock);
            }
            rcs[i++] = !v5                  ? 0x80
                       : existed == -ENOSPC ? MQTT_RC_QUOTA_EXCEEDED
                                            : MQTT_RC_UNSPECIFIED;
            continue;
        }
        rcs[i++] = qos;
        /* Retained messages, per Retain Handling [MQTT-3.3.1-9..11]; none
         * for shared subscriptions. */
        uint8_t rh = (opts & MQTT_SUBOPT_RH_MASK) >> MQTT_SUBOPT_RH_SHIFT;
        if (shared == 1 || rh == 2 || (rh == 1 && existed == 1) || !cfg->retain_available)
            continue;
        struct retained_batch rb = {0};
        retain_match(b->retained, filter, f.len, now, conn_collect_retained, &rb);
        for (size_t k = 0; k < rb.n; k++) {
            struct msg *m = rb.msgs[k];
            uint8_t q = m->qos < qos ? m->qos : qos;
            /* [MQTT-3.3.1-8] retained messages sent on subscribe keep RETAIN=1 */
            session_deliver(s, m, q, true, sub_id ? &sub_id : NULL, sub_id ? 1 : 0, c->w, &bt);
            msg_unref(m);
        }
        free(rb.msgs);
    }
    conn_persist_session(s, &bt);
    /* The SUBACK is written before any retained message: those go through
     * the session queue, which is flushed at the end of the loop turn. */
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_SUBACK;
    p.u.suback.packet_id = sub->packet_id;
    p.u.suback.reasons = rcs;
    p.u.suback.n_reasons = i;
    /* [MQTT-3.8.4-1] SUBACK, before anything that the subscription delivers */
    conn_send(c, &p);
    if (rcs != stack_rc)
        free(rcs);
}

static void conn_handle_unsubscribe(struct conn *c, const struct mqtt_subscribe *sub)
{
    struct broker *b = &g_broker;
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    uint8_t stack_rc[64];
    uint8_t *rcs = sub->count <= sizeof(stack_rc) ? stack_rc : malloc(sub->count);
    if (!rcs) {
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    uint32_t pos = 0, i = 0;
    struct mqtt_bytes f;
    uint8_t opts;
    while (mqtt_sub_next(sub, MQTT_UNSUBSCRIBE, &pos, &f, &opts) && i < sub->count) {
        const char *filter = (const char *)f.data;
        if (!topic_filter_valid(filter, f.len)) {
            rcs[i++] = MQTT_RC_TOPIC_FILTER_INVALID;
            continue;
        }
        lock_acquire(&s->lock);
        bool had = session_sub_del(s, filter, (uint16_t)f.len);
        lock_release(&s->lock);
        if (had)
            sub_index_remove(b->index, filter, f.len, s);
        rcs[i++] = had ? MQTT_RC_SUCCESS : MQTT_RC_NO_SUBSCRIPTION_EXISTED;
    }
    struct store_batch *bt = NULL;
    conn_persist_session(s, &bt);
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = MQTT_UNSUBACK;
    p.u.suback.packet_id = sub->packet_id;
    p.u.suback.reasons = v5 ? rcs : NULL;
    p.u.suback.n_reasons = v5 ? i : 0;
    /* [MQTT-3.10.4-4] UNSUBACK */
    conn_send(c, &p);
    if (rcs != stack_rc)
        free(rcs);
}

/* ---- dispatch ---------------------------------------------------------- */

static void conn_handle_disconnect(struct conn *c, const struct mqtt_disconnect *d)
{
    struct session *s = c->session;
    if (c->version == MQTT_V5 && (d->props.present & MQTT_PF(MQTT_PROP_SESSION_EXPIRY))) {
        if (c->connect_expiry == 0 && d->props.session_expiry != 0) {
            /* [MQTT-3.14.2-2] */
            conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
            return;
        }
        uint32_t e = d->props.session_expiry;
        if (g_broker.cfg.max_session_expiry && e > g_broker.cfg.max_session_expiry)
            e = g_broker.cfg.max_session_expiry;
        lock_acquire(&s->lock);
        if (s->conn == c)
            s->expiry_interval = e;
        lock_release(&s->lock);
    }
    /* [MQTT-3.14.4-3] a normal DISCONNECT discards the will; 0x04 keeps it */
    c->normal_disconnect = !(c->version == MQTT_V5 && d->reason == MQTT_RC_DISCONNECT_WITH_WILL);
    conn_close(c, 0, false);
}

static void conn_handle_packet(struct conn *c, const uint8_t *data, size_t len)
{
    struct mqtt_packet pkt;
    if (c->state == CONN_NEW) {
        int r = mqtt_decode(0, data, len, &pkt);
        if ((data[0] >> 4) != MQTT_CONNECT) {
            /* [MQTT-3.1.0-1] the first packet must be CONNECT */
            conn_close(c, 0, false);
            return;
        }
        if (r == -MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION) {
            /* [MQTT-3.1.2-2] unsupported protocol level */
            if (pkt.u.connect.protocol_version == MQTT_V5)
                conn_refuse(c, MQTT_V5, MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION);
            else
                conn_refuse(c, MQTT_V311, MQTT3_CONNACK_BAD_PROTOCOL);
            return;
        }
        if (r < 0) {
            if (pkt.u.connect.protocol_version == MQTT_V5)
                conn_refuse(c, MQTT_V5, (uint8_t)-r);
            else
                conn_close(c, 0, false);
            return;
        }
        conn_handle_connect(c, &pkt.u.connect);
        return;
    }
    int r = mqtt_decode(c->version, data, len, &pkt);
    if (r < 0) {
        conn_close(c, (uint8_t)-r, false);
        return;
    }
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    struct store_batch *bt = NULL;
    switch (pkt.type) {
    case MQTT_PUBLISH:
        conn_handle_publish(c, &pkt.u.publish);
        break;
    case MQTT_PUBACK:
        lock_acquire(&s->lock);
        if (s->conn == c)
            session_puback_locked(s, pkt.u.ack.packet_id, &bt);
        lock_release(&s->lock);
        persist_submit(&bt, NULL, NULL);
        break;
    case MQTT_PUBREC: {
        int found = -ENOENT;
        lock_acquire(&s->lock);
        if (s->conn == c)
            found = session_pubrec_locked(s, pkt.u.ack.packet_id, pkt.u.ack.reason, &bt);
        lock_release(&s->lock);
        if (found == 0)
            conn_ack_after(c, &bt, MQTT_PUBREL, pkt.u.ack.packet_id, 0, NULL, NULL);
        else if (found < 0)
            conn_ack_push(c, MQTT_PUBREL, pkt.u.ack.packet_id, v5 ? MQTT_RC_PACKET_ID_NOT_FOUND : 0,
                          true);
        else
            persist_submit(&bt, NULL, NULL);
        break;
    }
    case MQTT_PUBREL: {
        lock_acquire(&s->lock);
        bool found = session_qos2_remove(s, pkt.u.ack.packet_id);
        if (found && s->stored)
            persist_qos2(&bt, s, pkt.u.ack.packet_id, false);
        lock_release(&s->lock);
        /* [MQTT-4.3.3-11] PUBCOMP, 0x92 when the id is unknown (5.0); after
         * the id is forgotten durably, so that it can be reused at once */
        conn_ack_after(c, &bt, MQTT_PUBCOMP, pkt.u.ack.packet_id,
                       found || !v5 ? 0 : MQTT_RC_PACKET_ID_NOT_FOUND, NULL, NULL);
        break;
    }
    case MQTT_PUBCOMP:
        lock_acquire(&s->lock);
        if (s->conn == c)
            session_pubcomp_locked(s, pkt.u.ack.packet_id, &bt);
        lock_release(&s->lock);
        persist_submit(&bt, NULL, NULL);
        break;
    case MQTT_SUBSCRIBE:
        conn_handle_subscribe(c, &pkt.u.subscribe);
        break;
    case MQTT_UNSUBSCRIBE:
        conn_handle_unsubscribe(c, &pkt.u.subscribe);
        break;
    case MQTT_PINGREQ: {
        struct mqtt_packet p;
        memset(&p, 0, sizeof(p));
        p.type = MQTT_PINGRESP;
        /* [MQTT-3.12.4-1] */
        conn_send(c, &p);
        break;
    }
    case MQTT_DISCONNECT:
        conn_handle_disconnect(c, &pkt.u.disconnect);
        break;
    case MQTT_CONNECT:
        /* [MQTT-3.1.0-2] a second CONNECT is a protocol error */
    case MQTT_AUTH:
        /* no enhanced authentication was started on this connection */
    default:
        conn_close(c, MQTT_RC_PROTOCOL_ERROR, false);
        break;
    }
}

/* Handle the complete packets in data; return how many bytes were used. */
static size_t conn_process(struct conn *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    uint32_t max = g_broker.cfg.max_packet_size;
    while (off < len && (c->state == CONN_NEW || c->state == CONN_ACTIVE)) {
        uint32_t hdr = 0;
        long n = mqtt_frame(data + off, len - off, max, &hdr);
        if (n == 0)
            break;
        if (n < 0) {
            /* [MQTT-3.1.2-24]-style limit on what the server accepts */
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

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    (void)suggested;
    struct conn *c = h->data;
    out->base = c->w->rbuf;
    out->len = c->w->rbuf_size;
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* closed without DISCONNECT: the will is published */
        conn_close(c, 0, false);
        return;
    }
    atomic_fetch_add_explicit(&g_broker.stats.bytes_received, (unsigned long)nread,
                              memory_order_relaxed);
    c->last_rx = uv_now(&c->w->loop);
    conn_ref(c);
    const uint8_t *data = (const uint8_t *)b->base;
    size_t len = (size_t)nread;
    if (c->in.len == 0) {
        size_t used = conn_process(c, data, len);
        if (used < len && (c->state == CONN_NEW || c->state == CONN_ACTIVE) &&
            buf_append(&c->in, data + used, len - used) < 0)
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
    } else {
        if (buf_append(&c->in, data, len) < 0) {
            conn_close(c, MQTT_RC_UNSPECIFIED, false);
        } else {
            size_t used = conn_process(c, c->in.data, c->in.len);
            buf_consume(&c->in, used);
        }
    }
    if (c->in.len == 0 && c->in.cap)
        buf_free(&c->in); /* idle connections hold no read buffer */
    conn_unref(c);
}

void conn_accept(struct worker *w, uv_stream_t *server)
{
    struct broker *b = &g_broker;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    atomic_init(&c->refs, 1);
    c->w = w;
    c->client_max_packet = UINT32_MAX;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->n_conns++;
    atomic_fetch_add(&b->connections, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->state = CONN_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        return;
    }
    if (w->stopping ||
        (b->cfg.max_connections && atomic_load(&b->connections) > (long)b->cfg.max_connections)) {
        c->state = CONN_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state_since = c->last_rx = uv_now(&w->loop);
    c->state = CONN_NEW;
    uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb, conn_read_cb);
}
