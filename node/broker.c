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
#include "tables.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acl.h"
#include "codec.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "store.h"

uint64_t broker_now_mono_ms(void)
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
    bool oom; /* a match was lost to a failed allocation */
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
        if (!p) {
            ms->oom = true; /* the publish fails: not acknowledged */
            return;
        }
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

static int broker_target_add(struct pub_targets *t, struct session *s, uint64_t row)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct session **v = realloc(t->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM; /* s would not flush when the message is released */
        t->v = v;
        uint64_t *r = realloc(t->row, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        t->row = r;
        t->cap = cap;
    }
    t->row[t->n] = row;
    t->v[t->n++] = session_ref(s);
    return 0;
}

void broker_release(struct broker *b, struct msg *m, int state, struct pub_targets *targets,
                    struct worker *cur)
{
    atomic_store(&m->hold, (unsigned char)state);
    for (size_t i = 0; i < targets->n; i++) {
        struct session *s = targets->v[i];
        lock_acquire(&s->lock);
        struct worker *w = s->conn ? s->w : NULL;
        if (state == MSG_REJECTED)
            session_rejected_locked(b, s, m);
        /* its batch committed (or failed: then nothing was put) */
        bool left = session_row_left_locked(s, targets->row[i]);
        lock_release(&s->lock);
        if (left)
            session_row_del(b, s, targets->row[i]);
        if (w)
            b->sink->wake(w, s, cur);
        session_unref(s);
    }
    free(targets->v);
    free(targets->row);
    targets->v = NULL;
    targets->row = NULL;
    targets->n = targets->cap = 0;
}

bool broker_acl_allows(struct broker *b, const char *user, const char *client_id, size_t clen,
                       const char *topic, size_t tlen, int access)
{
    if (!b->auth.has_acl)
        return true;
    struct acl *acl = auth_acl(&b->auth);
    bool ok = acl_check(acl, user, user ? strlen(user) : 0, client_id, clen, topic, tlen,
                        (enum acl_access)access);
    acl_unref(acl);
    if (!ok)
        atomic_fetch_add_explicit(&b->stats.acl_denied, 1, memory_order_relaxed);
    return ok;
}

/* ACL_READ of m for session s (its last client's user name). */
static bool broker_acl_read(struct broker *b, const struct acl *acl, struct session *s,
                            const struct msg *m)
{
    lock_acquire(&s->lock);
    bool ok = acl_check(acl, s->user, s->user ? strlen(s->user) : 0, s->client_id, s->id_len,
                        msg_topic(m), m->topic_len, ACL_READ);
    lock_release(&s->lock);
    if (!ok) {
        atomic_fetch_add_explicit(&b->stats.acl_denied, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->stats.dropped[BROKER_DROP_ACL], 1, memory_order_relaxed);
    }
    return ok;
}

static int broker_publish_impl(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                               struct store_batch **bt, struct pub_targets *targets,
                               struct pub_flow *flow, sub_index_group_fn group_ok, void *group_ud);

int broker_publish(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                   struct store_batch **bt, struct pub_targets *targets, struct pub_flow *flow)
{
    return broker_publish_impl(b, m, flags, cur, bt, targets, flow, NULL, NULL);
}

int broker_publish_forwarded(struct broker *b, struct msg *m, struct worker *cur,
                             sub_index_group_fn group_ok, void *group_ud, struct store_batch **bt,
                             struct pub_targets *targets)
{
    return broker_publish_impl(b, m, BROKER_PUB_LOCAL, cur, bt, targets, NULL, group_ok, group_ud);
}

/* One function on purpose (about 100 lines): this is the hot path of every
 * PUBLISH, and it reads top to bottom in the order a message goes through it.
 * Helpers would pass most of its locals back and forth for no gain. */
static int broker_publish_impl(struct broker *b, struct msg *m, unsigned flags, struct worker *cur,
                               struct store_batch **bt, struct pub_targets *targets,
                               struct pub_flow *flow, sub_index_group_fn group_ok, void *group_ud)
{
    struct store_batch *local = NULL;
    if (!bt)
        bt = &local;
    int failed = 0;
    bool store_retained = false;
    if (m->retain && b->cfg.retain_available && !(flags & BROKER_PUB_LOCAL)) {
        /* [MQTT-3.1.1 3.3.1-5/10, MQTT-5.0 3.3.1-5/6]; out of memory, it is
         * not retained (nor stored) and the publish fails */
        if (retain_set(b->retained, m) < 0)
            failed = -ENOMEM;
        else if (m->origin || m->topic_len < 4 || memcmp(msg_topic(m), "$SYS", 4) != 0)
            store_retained = true; /* below, unless the publish is refused */
    }

    /* cluster: the route table this publish is routed with (before the
     * local delivery: a moving session's old copy compares it) */
    if (!(flags & BROKER_PUB_LOCAL) && b->route_ops->routed_at)
        m->route_index = b->route_ops->routed_at(b->route_ud);
    if (!(flags & BROKER_PUB_LOCAL) && m->qos && b->route_ops->identify)
        b->route_ops->identify(b->route_ud, m);

    struct match_set ms;
    ms.v = ms.stack;
    ms.n = 0;
    ms.cap = sizeof(ms.stack) / sizeof(ms.stack[0]);
    ms.oom = false;
    bool unique;
    if (sub_index_match_groups(b->index, msg_topic(m), m->topic_len, broker_session_online,
                               group_ok, group_ud, broker_on_match, &ms, &unique) < 0)
        ms.oom = true; /* a subscriber was not found: the publish fails */
    /* Sorting brings a session's matches together, so that it gets one copy
     * for all its non-shared subscriptions; from one filter there are none
     * to bring together (shared matches are one copy each either way). */
    if (ms.n > 1 && !unique)
        qsort(ms.v, ms.n, sizeof(*ms.v), broker_match_cmp);

    /* Every delivery is checked against the ACL (ACL_READ); without an
     * acl_file nothing is. */
    struct acl *acl = b->auth.has_acl && ms.n ? auth_acl(&b->auth) : NULL;
    int delivered = 0;
    if (ms.oom)
        failed = -ENOMEM;
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
            if (!ids) {
                /* out of memory: this session does not get it */
                failed = -ENOMEM;
                for (size_t k = i; k < j; k++)
                    session_unref(ms.v[k].s);
                i = j;
                continue;
            }
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
        if (qos >= 0 && acl && !broker_acl_read(b, acl, s, m))
            qos = -1;
        if (qos >= 0) {
            uint8_t dq = m->qos < qos ? m->qos : (uint8_t)qos;
            uint64_t row = SESSION_NO_ROW;
            if (session_deliver_row(b, s, m, dq, retain, ids, n_ids, cur, bt, flow, &row) < 0) {
                failed = -ENOMEM;
            } else if (targets && broker_target_add(targets, s, row) < 0) {
                failed = -ENOMEM;
                if (flags & BROKER_PUB_REFUSABLE)
                    persist_row_del(b, bt, s, row); /* not among the targets: undone here */
            }
            delivered++;
        }
        if (ids != ids_stack)
            free(ids);
        for (size_t k = i; k < j; k++)
            session_unref(ms.v[k].s);
        i = j;
    }
    if (ms.v != ms.stack)
        free(ms.v);
    acl_unref(acl);

    /* A publish its caller refuses (BROKER_PUB_REFUSABLE: it failed here,
     * or its batch lost an operation, so that its commit fails) goes no
     * further: the rows put for its sessions are deleted again in the same
     * batch (committed with the batch, they outlived a SIGKILL before the
     * sessions' own deletes, which come only when a session flushes the
     * rejected message: an offline one when it is back), it is not stored
     * as retained, nor forwarded to another node, which would deliver it. */
    bool refused = (flags & BROKER_PUB_REFUSABLE) &&
                   (failed || (*bt && store_batch_error(*bt) < 0)); /* (its commit fails) */
    for (size_t k = 0; refused && targets && k < targets->n; k++)
        persist_row_del(b, bt, targets->v[k], targets->row[k]);
    if (store_retained && !refused)
        persist_retained(b, bt, m);

    /* The cluster seam: other nodes with a matching route get m once each
     * over the forwarding channel (a single node has no forward); a QoS 1/2
     * forward joins *bt, so that the acknowledgement waits for it. A
     * forwarded message is not forwarded again. */
    if (!(flags & BROKER_PUB_LOCAL) && !refused && b->route_ops->forward)
        delivered += (int)b->route_ops->forward(b->route_ud, m, cur, bt, flow);
    if (local)
        persist_submit(b, &local, NULL, NULL);
    return failed ? failed : delivered;
}

void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur)
{
    if (!expiry) {
        broker_publish(b, will, 0, cur, NULL, NULL, NULL);
        return;
    }
    /* the expiry of a will counts from its publication */
    struct msg *m = msg_new(msg_topic(will), will->topic_len, msg_payload(will), will->payload_len,
                            msg_props(will), will->props_len, will->qos, will->retain,
                            msg_now_real_ms() + (uint64_t)expiry * 1000u, NULL);
    if (!m)
        return;
    broker_publish(b, m, 0, cur, NULL, NULL, NULL);
    msg_unref(m);
}

/* ---- life cycle -------------------------------------------------------- */

int broker_init(struct broker *b, const struct config *cfg)
{
    memset(b, 0, sizeof(*b));
    b->cfg = *cfg;
    b->started_at_ms = broker_now_mono_ms();
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
    auth_free(&b->auth);
    tables_local_close(b);
    if (b->index)
        sub_index_free(b->index);
    if (b->retained)
        retain_free(b->retained);
}
