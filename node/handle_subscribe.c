/*
 * handle_subscribe.c - SUBSCRIBE and UNSUBSCRIBE (see handle.h).
 *
 * A subscription is kept twice: in the session (what the session record
 * stores and what a resumed session has) and in the subscription index (what
 * a publish matches). The index may refuse one (a limit): then the session
 * does not keep it either.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "broker.h"
#include "conn.h"
#include "handle.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "topic.h"
#include "worker.h"

struct retained_batch {
    struct msg **msgs;
    size_t n, cap;
    bool lost; /* out of memory: a matching message was not collected */
};

static void handle_collect_retained(void *ud, struct msg *m)
{
    struct retained_batch *rb = ud;
    if (rb->n == rb->cap) {
        size_t cap = rb->cap ? rb->cap * 2 : 16;
        struct msg **p = realloc(rb->msgs, cap * sizeof(*p));
        if (!p) {
            rb->lost = true;
            return;
        }
        rb->msgs = p;
        rb->cap = cap;
    }
    rb->msgs[rb->n++] = msg_ref(m);
}

/* Queue the retained messages matching a new subscription to the session
 * [MQTT-3.1.1 3.3.1-6, MQTT-5.0 3.3.1-9..11]; they are sent after the SUBACK (the session queue is
 * flushed at the end of the loop turn). Returns 0, or -ENOMEM when one of
 * them could not be found or queued (out of memory): the caller must not
 * acknowledge the subscription as if they had all been sent. */
static int handle_send_retained(struct conn *c, const char *filter, size_t len, uint8_t qos,
                                uint32_t sub_id, struct store_batch **bt)
{
    struct broker *b = c->w->b;
    struct retained_batch rb = {0};
    int r = 0;
    if (retain_match(b->retained, filter, len, msg_now_real_ms(), handle_collect_retained, &rb) <
            0 ||
        rb.lost)
        r = -ENOMEM;
    for (size_t k = 0; k < rb.n; k++) {
        struct msg *m = rb.msgs[k];
        /* the ACL decides for each retained message as for any delivery */
        if (b->auth.has_acl &&
            !broker_acl_allows(b, c->x ? c->x->user : NULL, c->session->client_id,
                               c->session->id_len, msg_topic(m), m->topic_len, ACL_READ)) {
            msg_unref(m);
            continue;
        }
        uint8_t q = m->qos < qos ? m->qos : qos;
        /* [MQTT-3.1.1 3.3.1-8] retained messages sent on subscribe keep RETAIN=1 */
        if (r == 0 && session_deliver_retained(b, c->session, m, q, sub_id ? &sub_id : NULL,
                                               sub_id ? 1 : 0, c->w, bt) < 0)
            r = -ENOMEM;
        msg_unref(m);
    }
    free(rb.msgs);
    return r;
}

/* Does sub (a SUBSCRIBE or UNSUBSCRIBE) hold an empty topic filter? */
static bool handle_sub_has_empty_filter(const struct mqtt_subscribe *sub, enum mqtt_type type)
{
    uint32_t pos = 0;
    struct mqtt_bytes f;
    uint8_t opts;
    while (mqtt_sub_next(sub, type, &pos, &f, &opts))
        if (f.len == 0)
            return true;
    return false;
}

/* What handle_subscribe_one returns when the connection must be closed. */
#define HANDLE_SUB_PROTOCOL_ERROR (-1)
#define HANDLE_SUB_NO_MEMORY (-2)

/* One filter of a SUBSCRIBE: returns its reason code, or one of the
 * HANDLE_SUB_* above when the connection must be closed. */
static int handle_subscribe_one(struct conn *c, const struct mqtt_bytes *f, uint8_t opts,
                                uint32_t sub_id, struct store_batch **bt)
{
    struct broker *b = c->w->b;
    const struct config *cfg = &b->cfg;
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    const char *filter = (const char *)f->data;
    const char *group, *inner;
    size_t glen, ilen;
    int shared = topic_share_parse(filter, f->len, &group, &glen, &inner, &ilen);
    if (shared < 0 || !topic_filter_valid(filter, f->len) ||
        handle_topic_too_deep(cfg, shared == 1 ? inner : filter, shared == 1 ? ilen : f->len))
        /* (a filter deeper than max_topic_levels is refused the same way) */
        return v5 ? MQTT_RC_TOPIC_FILTER_INVALID : 0x80;
    if (shared == 1 && (opts & MQTT_SUBOPT_NO_LOCAL))
        return HANDLE_SUB_PROTOCOL_ERROR; /* [MQTT-5.0 3.8.3-4] No Local on a shared
                                             subscription */
    if (f->len > cfg->max_topic_length) {
        atomic_fetch_add_explicit(&b->stats.refused_topic_len, 1, memory_order_relaxed);
        return v5 ? MQTT_RC_TOPIC_FILTER_INVALID : 0x80; /* max_topic_length */
    }
    /* The ACL, on the filter itself (of a shared subscription: its topic
     * filter part) */
    if (b->auth.has_acl && !broker_acl_allows(b, c->x ? c->x->user : NULL, s->client_id, s->id_len,
                                              shared == 1 ? inner : filter,
                                              shared == 1 ? ilen : f->len, ACL_SUBSCRIBE))
        return v5 ? MQTT_RC_NOT_AUTHORIZED : 0x80;
    uint8_t qos = opts & MQTT_SUBOPT_QOS_MASK;
    if (qos > cfg->max_qos)
        qos = cfg->max_qos; /* [MQTT-3.1.1 3.8.4-5, MQTT-5.0 3.2.2-10/3.8.4-7] grant what the server
                               supports */
    opts = (uint8_t)((opts & ~MQTT_SUBOPT_QOS_MASK) | qos);
    lock_acquire(&s->lock);
    bool had = session_sub_find(s, filter, (uint16_t)f->len) != NULL;
    /* max_subscriptions_per_client: a new filter past the limit is refused
     * (5.0 0x97 quota exceeded, 3.1.1 0x80); replacing one is not */
    bool over =
        !had && cfg->max_subscriptions_per_client && s->n_subs >= cfg->max_subscriptions_per_client;
    int r = over ? 0 : session_sub_set(s, filter, (uint16_t)f->len, opts, sub_id);
    lock_release(&s->lock);
    if (over) {
        atomic_fetch_add_explicit(&b->stats.refused_subs, 1, memory_order_relaxed);
        return v5 ? MQTT_RC_QUOTA_EXCEEDED : 0x80;
    }
    int existed = r < 0 ? r : sub_index_add(b->index, filter, f->len, s, opts, sub_id);
    if (existed < 0) {
        if (r == 0 && !had) { /* the session keeps only what the index has */
            lock_acquire(&s->lock);
            session_sub_del(s, filter, (uint16_t)f->len);
            lock_release(&s->lock);
        }
        return !v5 ? 0x80 : existed == -ENOSPC ? MQTT_RC_QUOTA_EXCEEDED : MQTT_RC_UNSPECIFIED;
    }
    /* Retained messages, per Retain Handling; none for shared subscriptions. */
    uint8_t rh = (opts & MQTT_SUBOPT_RH_MASK) >> MQTT_SUBOPT_RH_SHIFT;
    if (!(shared == 1 || rh == 2 || (rh == 1 && existed == 1) || !cfg->retain_available) &&
        handle_send_retained(c, filter, f->len, qos, sub_id, bt) < 0) {
        /* Out of memory: a retained message the subscription must get was
         * not queued. Never acknowledged as if it had been: the connection
         * is closed without a SUBACK, and a new subscription is taken back
         * (a persistent session does not keep it without its retained
         * messages); the client subscribes again on its next connection. */
        log_warn("%s: out of memory queueing the retained messages of '%.*s': subscription "
                 "refused",
                 CONN_PEER(c), (int)f->len, filter);
        if (!had) {
            sub_index_remove(b->index, filter, f->len, s);
            lock_acquire(&s->lock);
            session_sub_del(s, filter, (uint16_t)f->len);
            lock_release(&s->lock);
        }
        return HANDLE_SUB_NO_MEMORY;
    }
    return qos;
}

/* Send a SUBACK or UNSUBACK with n reason codes. */
static void handle_send_suback(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t *rcs,
                               uint32_t n)
{
    struct mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.u.suback.packet_id = pid;
    p.u.suback.reasons = rcs;
    p.u.suback.n_reasons = n;
    conn_send(c, &p);
}

/* A SUBACK or UNSUBACK waits until the session's record with the changed
 * subscriptions is committed (a persistent session's subscription is
 * acknowledged only once it survives a crash: nothing to commit for a clean
 * session, and then nothing waits), and a SUBACK in a cluster then until the
 * subscription's route is in effect on every live node (route_ops.sync,
 * docs/cluster.md). */
struct suback_later {
    struct conn *c;   /* a reference */
    _Atomic int step; /* SUBACK_* below: who goes on after the commit */
    int status;       /* the commit's */
    uint16_t pid;
    uint8_t type; /* MQTT_SUBACK or MQTT_UNSUBACK */
    bool held;    /* counted in c->acks_held while committing */
    uint32_t n;
    uint8_t rcs[];
};

enum { SUBACK_SUBMITTING, SUBACK_COMMITTED, SUBACK_WAITING };

static void handle_suback_free(struct suback_later *d)
{
    conn_unref(d->c);
    free(d);
}

/* On the connection's worker: the routes are in effect, send it. */
static void handle_suback_send_later(void *ud)
{
    struct suback_later *d = ud;
    if (conn_is_open(d->c) && d->c->state == CONN_ACTIVE)
        handle_send_suback(d->c, (enum mqtt_type)d->type, d->pid, d->rcs, d->n);
    handle_suback_free(d);
}

/* Any thread: the routes are everywhere. */
static void handle_suback_ready(void *arg)
{
    struct suback_later *d = arg;
    struct broker *b = conn_broker(d->c);
    if (b->sink->call(d->c->w, handle_suback_send_later, d) < 0)
        handle_suback_free(d); /* the worker is stopping: no SUBACK */
}

/* On the connection's worker, once committed: send it now, or once the
 * route seam says the routes are in effect everywhere. */
static void handle_suback_committed_here(void *ud)
{
    struct suback_later *d = ud;
    struct conn *c = d->c;
    struct broker *b = conn_broker(c);
    if (d->held && --c->acks_held == 0 && c->session && conn_is_open(c))
        worker_defer_flush(c->w, c->session); /* what waited behind it */
    if (!conn_is_open(c) || c->state != CONN_ACTIVE) {
        handle_suback_free(d);
        return;
    }
    if (d->status < 0) {
        /* not stored: never acknowledged as if it were; the client
         * subscribes again on its next connection */
        log_warn("%s: the session's subscriptions could not be stored (%s): no %s", CONN_PEER(c),
                 strerror(-d->status), d->type == MQTT_SUBACK ? "SUBACK" : "UNSUBACK");
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        handle_suback_free(d);
        return;
    }
    if (d->type == MQTT_SUBACK && b->route_ops->sync &&
        b->route_ops->sync(b->route_ud, handle_suback_ready, d) == 1)
        return;
    handle_suback_send_later(d);
}

/* Store thread (or the caller's, when there was nothing to commit). */
static void handle_suback_on_commit(void *ud, int status)
{
    struct suback_later *d = ud;
    d->status = status;
    if (atomic_exchange(&d->step, SUBACK_COMMITTED) != SUBACK_WAITING)
        return; /* the caller has not returned yet: it goes on itself */
    struct broker *b = conn_broker(d->c);
    if (b->sink->call(d->c->w, handle_suback_committed_here, d) < 0)
        handle_suback_free(d);
}

/* Store the session's record (with *bt) and send the SUBACK/UNSUBACK with
 * n reason codes once it is committed (see struct suback_later). Out of
 * memory: the connection is closed without it. */
static void handle_suback_after_commit(struct conn *c, struct store_batch **bt, enum mqtt_type type,
                                       uint16_t pid, const uint8_t *rcs, uint32_t n)
{
    struct broker *b = c->w->b;
    struct suback_later *d = malloc(sizeof(*d) + n);
    if (!d) {
        persist_session_sync(b, c->session, bt);
        registry_changed(b, c->session);
        conn_close(c, MQTT_RC_UNSPECIFIED, false);
        return;
    }
    d->c = conn_ref(c);
    atomic_init(&d->step, SUBACK_SUBMITTING);
    d->status = 0;
    d->pid = pid;
    d->type = (uint8_t)type;
    d->held = false;
    d->n = n;
    if (n)
        memcpy(d->rcs, rcs, n);
    persist_session_sync_then(b, c->session, bt, handle_suback_on_commit, d);
    registry_changed(b, c->session);
    /* the worker goes on below, or once the store thread posted the commit:
     * d->held is read after that post */
    d->held = atomic_load(&d->step) == SUBACK_SUBMITTING;
    if (d->held)
        c->acks_held++;
    if (atomic_exchange(&d->step, SUBACK_WAITING) == SUBACK_COMMITTED)
        handle_suback_committed_here(d); /* committed already (or nothing to) */
}

void handle_subscribe(struct conn *c, const struct mqtt_subscribe *sub)
{
    struct broker *b = c->w->b;
    uint32_t sub_id = 0;
    if (c->version != MQTT_V5 && handle_sub_has_empty_filter(sub, MQTT_SUBSCRIBE)) {
        /* [MQTT-3.1.1 4.7.3-1] a topic filter is at least one character long;
         * 3.1.1 closes on a protocol violation [MQTT-3.1.1 4.8.0-1] */
        conn_close(c, 0, false);
        return;
    }
    if (c->version == MQTT_V5 && sub->props.n_sub_ids)
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
    struct store_batch *bt = NULL;
    while (mqtt_sub_next(sub, MQTT_SUBSCRIBE, &pos, &f, &opts) && i < sub->count) {
        int rc = handle_subscribe_one(c, &f, opts, sub_id, &bt);
        if (rc < 0) {
            if (rcs != stack_rc)
                free(rcs);
            /* the session's record with what it kept, and the messages
             * queued so far */
            persist_session_sync(b, c->session, &bt);
            conn_close(c, rc == HANDLE_SUB_NO_MEMORY ? MQTT_RC_UNSPECIFIED : MQTT_RC_PROTOCOL_ERROR,
                       false);
            return;
        }
        rcs[i++] = (uint8_t)rc;
    }
    /* [MQTT-3.1.1 3.8.4-1, MQTT-5.0 3.8.4-1] SUBACK, once stored; in a cluster, once the routes
     * are in effect on every live node (messages the subscription matches may go out first: the
     * server "MAY start sending PUBLISH packets matching the Subscription before the Server sends
     * the SUBACK") */
    handle_suback_after_commit(c, &bt, MQTT_SUBACK, sub->packet_id, rcs, i);
    if (rcs != stack_rc)
        free(rcs);
}

void handle_unsubscribe(struct conn *c, const struct mqtt_subscribe *sub)
{
    struct broker *b = c->w->b;
    struct session *s = c->session;
    bool v5 = c->version == MQTT_V5;
    if (!v5 && handle_sub_has_empty_filter(sub, MQTT_UNSUBSCRIBE)) {
        /* [MQTT-3.1.1 4.7.3-1/4.8.0-1] as for SUBSCRIBE */
        conn_close(c, 0, false);
        return;
    }
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
    /* [MQTT-3.1.1 3.10.4-4, MQTT-5.0 3.10.4-4] UNSUBACK, once stored */
    struct store_batch *bt = NULL;
    handle_suback_after_commit(c, &bt, MQTT_UNSUBACK, sub->packet_id, rcs, v5 ? i : 0);
    if (rcs != stack_rc)
        free(rcs);
}
