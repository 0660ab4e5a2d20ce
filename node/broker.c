/*
 * broker.c - the node's engine state and the publish path (see broker.h).
 *
 * Publish path: match the topic in the subscription index under its read
 * lock, taking a reference on each matching session; merge the matches of
 * one session (overlapping subscriptions give one copy with the highest QoS
 * and every subscription identifier [MQTT-3.1.1 3.3.5-1, MQTT-5.0 3.3.4-2], [MQTT-5.0 3.3.4-3]);
 * hand the message to each session, which queues it and gets its worker to flush.
 */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "log.h"
#include "persist.h"
#include "session.h"

uint64_t broker_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- publish ----------------------------------------------------------- */

struct match {
    struct session *s;
    uint8_t options;
    bool shared;
    uint32_t sub_id;
};

struct match_set {
    struct match *v;
    size_t n, cap;
    struct match stack[32];
};

static void broker_on_match(void *ud, void *subscriber, uint8_t options, uint32_t sub_id,
                            bool shared)
{
    struct match_set *ms = ud;
    if (ms->n == ms->cap) {
        size_t cap = ms->cap * 2;
        struct match *p;
        if (ms->v == ms->stack) {
            p = malloc(cap * sizeof(*p));
            if (p)
                memcpy(p, ms->stack, ms->n * sizeof(*p));
        } else {
            p = realloc(ms->v, cap * sizeof(*p));
        }
        if (!p)
            return;
        ms->v = p;
        ms->cap = cap;
    }
    ms->v[ms->n].s = session_ref(subscriber);
    ms->v[ms->n].options = options;
    ms->v[ms->n].sub_id = sub_id;
    ms->v[ms->n].shared = shared;
    ms->n++;
}

static bool broker_session_online(void *subscriber)
{
    struct session *s = subscriber;
    return __atomic_load_n(&s->conn, __ATOMIC_RELAXED) != NULL;
}

static int broker_match_cmp(const void *a, const void *b)
{
    const struct match *x = a, *y = b;
    if (x->s == y->s)
        return (int)x->shared - (int)y->shared;
    return (uintptr_t)x->s < (uintptr_t)y->s ? -1 : 1;
}

static void broker_target_add(struct pub_targets *t, struct session *s)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct session **v = realloc(t->v, cap * sizeof(*v));
        if (!v)
            return; /* that session flushes on its next trigger */
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n++] = session_ref(s);
}

void broker_release(struct broker *b, struct msg *m, int state, struct pub_targets *targets,
                    struct worker *cur)
{
    atomic_store(&m->hold, (unsigned char)state);
    for (size_t i = 0; i < targets->n; i++) {
        struct session *s = targets->v[i];
        lock_acquire(&s->lock);
        struct worker *w = s->conn ? s->w : NULL;
        lock_release(&s->lock);
        if (w)
            b->sink->wake(w, s, cur);
        session_unref(s);
    }
    free(targets->v);
    targets->v = NULL;
    targets->n = targets->cap = 0;
}

static int broker_publish_impl(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                               struct store_batch **bt, struct pub_targets *targets,
                               sub_index_group_fn group_ok, void *group_ud);

int broker_publish(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                   struct store_batch **bt, struct pub_targets *targets)
{
    return broker_publish_impl(b, m, flags, cur, bt, targets, NULL, NULL);
}

int broker_publish_forwarded(struct broker *b, struct msg *m, sub_index_group_fn group_ok,
                             void *group_ud)
{
    return broker_publish_impl(b, m, BROKER_PUB_LOCAL, NULL, NULL, NULL, group_ok, group_ud);
}

static int broker_publish_impl(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                               struct store_batch **bt, struct pub_targets *targets,
                               sub_index_group_fn group_ok, void *group_ud)
{
    struct store_batch *local = NULL;
    if (!bt)
        bt = &local;
    if (m->retain && b->cfg.retain_available && !(flags & BROKER_PUB_LOCAL)) {
        retain_set(b->retained, m); /* [MQTT-3.1.1 3.3.1-5/10, MQTT-5.0 3.3.1-5/6] */
        if (m->origin || m->topic_len < 4 || memcmp(msg_topic(m), "$SYS", 4) != 0)
            persist_retained(b, bt, m);
    }

    struct match_set ms;
    ms.v = ms.stack;
    ms.n = 0;
    ms.cap = sizeof(ms.stack) / sizeof(ms.stack[0]);
    bool unique;
    sub_index_match_groups(b->index, msg_topic(m), m->topic_len, broker_session_online, group_ok,
                           group_ud, broker_on_match, &ms, &unique);
    /* Sorting brings a session's matches together, so that it gets one copy
     * for all its non-shared subscriptions; from one filter there are none
     * to bring together (shared matches are one copy each either way). */
    if (ms.n > 1 && !unique)
        qsort(ms.v, ms.n, sizeof(*ms.v), broker_match_cmp);

    int delivered = 0;
    uint32_t ids_stack[16];
    size_t i = 0;
    while (i < ms.n) {
        /* One copy per session for its non-shared subscriptions, and one per
         * shared subscription that picked it. */
        struct session *s = ms.v[i].s;
        size_t j = i + 1;
        if (!ms.v[i].shared)
            while (j < ms.n && ms.v[j].s == s && !ms.v[j].shared)
                j++;
        int qos = -1;
        bool retain = false;
        uint32_t *ids = ids_stack;
        uint16_t n_ids = 0;
        if (j - i > sizeof(ids_stack) / sizeof(ids_stack[0])) {
            ids = malloc((j - i) * sizeof(*ids));
            if (!ids)
                ids = ids_stack, j = i + sizeof(ids_stack) / sizeof(ids_stack[0]);
        }
        for (size_t k = i; k < j; k++) {
            uint8_t o = ms.v[k].options;
            /* [MQTT-5.0 3.8.3-3] No Local: not to the session that published it */
            if ((o & MQTT_SUBOPT_NO_LOCAL) && m->origin == s)
                continue;
            int q = o & MQTT_SUBOPT_QOS_MASK;
            if (q > qos)
                qos = q;
            /* [MQTT-5.0 3.3.1-12/13] Retain As Published */
            if ((o & MQTT_SUBOPT_RAP) && m->retain)
                retain = true;
            if (ms.v[k].sub_id)
                ids[n_ids++] = ms.v[k].sub_id;
        }
        if (qos >= 0) {
            uint8_t dq = m->qos < qos ? m->qos : (uint8_t)qos;
            session_deliver(b, s, m, dq, retain, ids, n_ids, cur, bt);
            if (targets)
                broker_target_add(targets, s);
            delivered++;
        }
        if (ids != ids_stack)
            free(ids);
        for (size_t k = i; k < j; k++)
            session_unref(ms.v[k].s);
        i = j;
    }
    /* sessions whose ids did not fit after a failed allocation */
    for (; i < ms.n; i++)
        session_unref(ms.v[i].s);
    if (ms.v != ms.stack)
        free(ms.v);

    /* The cluster seam: other nodes with a matching route get m once each
     * over the forwarding channel (a single node has no forward). A
     * forwarded message is not forwarded again. */
    if (!(flags & BROKER_PUB_LOCAL) && b->route_ops->forward)
        b->route_ops->forward(b->route_ud, m, cur);
    if (local)
        persist_submit(b, &local, NULL, NULL);
    return delivered;
}

void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur)
{
    if (!expiry) {
        broker_publish(b, will, 0, cur, NULL, NULL);
        return;
    }
    /* the expiry of a will counts from its publication */
    struct msg *m = msg_new(msg_topic(will), will->topic_len, msg_payload(will), will->payload_len,
                            msg_props(will), will->props_len, will->qos, will->retain,
                            msg_clock_ms() + (uint64_t)expiry * 1000u, NULL);
    if (!m)
        return;
    broker_publish(b, m, 0, cur, NULL, NULL);
    msg_unref(m);
}

/* ---- life cycle -------------------------------------------------------- */

int broker_init(struct broker *b, const struct config *cfg)
{
    memset(b, 0, sizeof(*b));
    b->cfg = *cfg;
    b->started_at_ms = broker_now_ms();
    int r = registry_init(&b->registry);
    b->registry_ops = &registry_local_ops;
    b->registry_ud = b;
    b->route_ops = &route_local_ops;
    b->route_ud = &b->route;
    b->index = sub_index_new(b->route_ops, b->route_ud);
    b->retained = retain_new();
    if (r < 0 || !b->index || !b->retained)
        return -ENOMEM;
    return 0;
}

void broker_cleanup(struct broker *b)
{
    atomic_store(&b->stopping, true);
    registry_cleanup(b);
    if (b->index)
        sub_index_free(b->index);
    if (b->retained)
        retain_free(b->retained);
}
