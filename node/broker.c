/*
 * broker.c - the node's shared state and the publish path (see broker.h).
 *
 * The main thread runs a small libuv loop of its own: signals, the
 * housekeeping timer (session expiry, delayed wills) and the $SYS timer.
 * Client traffic never touches it.
 *
 * Publish path: match the topic in the subscription index under its read
 * lock, taking a reference on each matching session; merge the matches of
 * one session (overlapping subscriptions give one copy with the highest QoS
 * and every subscription identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3]); hand
 * the message to each session, which queues it and gets its worker to flush.
 */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "conn.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "worker.h"

#define HOUSEKEEPING_MS 100

struct broker g_broker;

uint64_t broker_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- session table ----------------------------------------------------- */

static uint64_t broker_hash(const char *id, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)id[i];
        h *= 1099511628211ull;
    }
    return h;
}

struct session *broker_session_find(struct broker *b, const char *id, size_t len)
{
    struct session *s = b->buckets[broker_hash(id, len) & (b->n_buckets - 1)];
    for (; s; s = s->hnext)
        if (s->id_len == len && memcmp(s->client_id, id, len) == 0)
            return s;
    return NULL;
}

static void broker_table_grow(struct broker *b)
{
    size_t n = b->n_buckets * 2;
    struct session **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return; /* keep the longer chains */
    for (size_t i = 0; i < b->n_buckets; i++) {
        struct session *s = b->buckets[i];
        while (s) {
            struct session *next = s->hnext;
            size_t k = broker_hash(s->client_id, s->id_len) & (n - 1);
            s->hnext = nb[k];
            nb[k] = s;
            s = next;
        }
    }
    free(b->buckets);
    b->buckets = nb;
    b->n_buckets = n;
}

void broker_session_insert(struct broker *b, struct session *s)
{
    if (b->n_sessions >= b->n_buckets * 2)
        broker_table_grow(b);
    size_t k = broker_hash(s->client_id, s->id_len) & (b->n_buckets - 1);
    s->hnext = b->buckets[k];
    b->buckets[k] = s;
    s->in_table = true;
    b->n_sessions++;
}

void broker_session_remove(struct broker *b, struct session *s)
{
    if (!s->in_table)
        return;
    struct session **pp = &b->buckets[broker_hash(s->client_id, s->id_len) & (b->n_buckets - 1)];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == s) {
            *pp = s->hnext;
            s->hnext = NULL;
            s->in_table = false;
            b->n_sessions--;
            /* the table's reference goes with the caller, who ends the session */
            return;
        }
    }
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

void broker_release(struct msg *m, int state, struct pub_targets *targets, struct worker *cur)
{
    atomic_store(&m->hold, (unsigned char)state);
    for (size_t i = 0; i < targets->n; i++) {
        struct session *s = targets->v[i];
        lock_acquire(&s->lock);
        struct worker *w = s->conn ? s->w : NULL;
        lock_release(&s->lock);
        if (w && w == cur)
            worker_defer_flush(w, s);
        else if (w)
            worker_post_flush(w, s);
        session_unref(s);
    }
    free(targets->v);
    targets->v = NULL;
    targets->n = targets->cap = 0;
}

int broker_publish(struct broker *b, struct msg *m, struct worker *cur, struct store_batch **bt,
                   struct pub_targets *targets)
{
    struct store_batch *local = NULL;
    if (!bt)
        bt = &local;
    if (m->retain && b->cfg.retain_available) {
        retain_set(b->retained, m); /* [MQTT-3.3.1-5], [MQTT-3.3.1-6] */
        if (m->origin || m->topic_len < 4 || memcmp(msg_topic(m), "$SYS", 4) != 0)
            persist_retained(bt, m);
    }

    struct match_set ms;
    ms.v = ms.stack;
    ms.n = 0;
    ms.cap = sizeof(ms.stack) / sizeof(ms.stack[0]);
    bool unique;
    sub_index_match_ex(b->index, msg_topic(m), m->topic_len, broker_session_online, broker_on_match,
                       &ms, &unique);
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
            /* [MQTT-3.8.3-3] No Local: not to the session that published it */
            if ((o & MQTT_SUBOPT_NO_LOCAL) && m->origin == s)
                continue;
            int q = o & MQTT_SUBOPT_QOS_MASK;
            if (q > qos)
                qos = q;
            /* [MQTT-3.3.1-12], [MQTT-3.3.1-13] Retain As Published */
            if ((o & MQTT_SUBOPT_RAP) && m->retain)
                retain = true;
            if (ms.v[k].sub_id)
                ids[n_ids++] = ms.v[k].sub_id;
        }
        if (qos >= 0) {
            uint8_t dq = m->qos < qos ? m->qos : (uint8_t)qos;
            session_deliver(s, m, dq, retain, ids, n_ids, cur, bt);
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

    /* The cluster seam: other nodes with a matching route. A single node has
     * none; the forwarding channel will send m once to each. */
    uint32_t nodes[8];
    (void)b->route_ops->remote_nodes(b->route_ud, msg_topic(m), m->topic_len, nodes, 8);
    if (local)
        persist_submit(&local, NULL, NULL);
    return delivered;
}

void broker_publish_will(struct broker *b, struct msg *will, uint32_t expiry, struct worker *cur)
{
    if (!expiry) {
        broker_publish(b, will, cur, NULL, NULL);
        return;
    }
    /* the expiry of a will counts from its publication */
    struct msg *m = msg_new(msg_topic(will), will->topic_len, msg_payload(will), will->payload_len,
                            msg_props(will), will->props_len, will->qos, will->retain,
                            msg_clock_ms() + (uint64_t)expiry * 1000u, NULL);
    if (!m)
        return;
    broker_publish(b, m, cur, NULL, NULL);
    msg_unref(m);
}

/* ---- housekeeping ------------------------------------------------------ */

struct ending {
    struct session *s;
    struct msg *will;
    uint32_t will_expiry;
    bool end;
};

/* Delayed wills that are due and sessions that expired while offline. */
static void broker_on_housekeeping(uv_timer_t *t)
{
    struct broker *b = t->data;
    uint64_t now = broker_now_ms();
    struct ending stack[64];
    struct ending *list = stack;
    size_t n = 0, cap = 64;
    pthread_mutex_lock(&b->sessions_lock);
    for (size_t k = 0; k < b->n_buckets; k++) {
        struct session *s = b->buckets[k], *next;
        for (; s; s = next) {
            next = s->hnext;
            /* Connected sessions neither expire nor hold a delayed will: skip
             * them without touching their lock, which their worker uses for
             * every message. */
            if (__atomic_load_n(&s->conn, __ATOMIC_RELAXED))
                continue;
            lock_acquire(&s->lock);
            bool expired = false;
            struct msg *will = NULL;
            if (!s->conn) {
                expired = s->expiry_interval != UINT32_MAX &&
                          now - s->disconnected_at >= (uint64_t)s->expiry_interval * 1000u;
                if (s->pending_will && (expired || now >= s->will_at)) {
                    will = s->pending_will;
                    s->pending_will = NULL;
                }
            }
            uint32_t wexp = s->will_expiry;
            lock_release(&s->lock);
            if (!expired && !will)
                continue;
            if (n == cap) {
                struct ending *p = malloc(cap * 2 * sizeof(*p));
                if (!p) {
                    msg_unref(will);
                    continue;
                }
                memcpy(p, list, n * sizeof(*p));
                if (list != stack)
                    free(list);
                list = p;
                cap *= 2;
            }
            if (expired)
                broker_session_remove(b, s);
            list[n].s = expired ? s : NULL;
            list[n].will = will;
            list[n].will_expiry = wexp;
            list[n].end = expired;
            n++;
        }
    }
    pthread_mutex_unlock(&b->sessions_lock);
    for (size_t i = 0; i < n; i++) {
        if (list[i].will) {
            broker_publish_will(b, list[i].will, list[i].will_expiry, NULL);
            msg_unref(list[i].will);
        }
        if (list[i].end) {
            /* [MQTT-3.1.2-23] the session expired */
            session_end(b, list[i].s);
            session_unref(list[i].s);
        }
    }
    if (list != stack)
        free(list);
}

static void broker_on_sys(uv_timer_t *t)
{
    sys_publish(t->data);
}

static void broker_close_cb(uv_handle_t *h)
{
    (void)h;
}

static void broker_on_signal(uv_signal_t *sig, int signum)
{
    struct broker *b = sig->data;
    log_info("signal %d: shutting down", signum);
    atomic_store(&b->stopping, true);
    for (int i = 0; i < b->n_workers; i++)
        worker_post_stop(b->workers[i]);
    uv_close((uv_handle_t *)&b->sigint, broker_close_cb);
    uv_close((uv_handle_t *)&b->sigterm, broker_close_cb);
    uv_close((uv_handle_t *)&b->housekeeping, broker_close_cb);
    uv_close((uv_handle_t *)&b->sys_timer, broker_close_cb);
}

/* ---- life cycle -------------------------------------------------------- */

int broker_init(struct broker *b, const struct config *cfg)
{
    memset(b, 0, sizeof(*b));
    b->cfg = *cfg;
    b->started_at_ms = broker_now_ms();
    pthread_mutex_init(&b->sessions_lock, NULL);
    b->n_buckets = 1024;
    b->buckets = calloc(b->n_buckets, sizeof(*b->buckets));
    b->route_ops = &route_local_ops;
    b->route_ud = &b->route;
    b->index = sub_index_new(b->route_ops, b->route_ud);
    b->retained = retain_new();
    if (!b->buckets || !b->index || !b->retained)
        return -ENOMEM;
    return 0;
}

int broker_run(struct broker *b)
{
    const struct config *cfg = &b->cfg;
    b->loop = uv_default_loop();
    b->n_workers = config_worker_count(cfg);
    b->workers = calloc((size_t)b->n_workers, sizeof(*b->workers));
    if (!b->workers)
        return -ENOMEM;
    uint16_t port = cfg->port;
    int r = 0;
    /* Signals first: a SIGTERM that arrives during start-up stops cleanly. */
    uv_signal_init(b->loop, &b->sigint);
    uv_signal_init(b->loop, &b->sigterm);
    b->sigint.data = b->sigterm.data = b;
    uv_signal_start(&b->sigint, broker_on_signal, SIGINT);
    uv_signal_start(&b->sigterm, broker_on_signal, SIGTERM);
    /* Another process (a second broker) listening on the port would not stop
     * the SO_REUSEPORT listeners from binding: the kernel would split the
     * connections between the two. Check with a plain bind first. */
    if (port != 0) {
        r = worker_port_free(cfg->bind_address, port);
        if (r != 0)
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, port, uv_strerror(r));
    }
    for (int i = 0; i < b->n_workers && r == 0; i++) {
        b->workers[i] = worker_new(b, i);
        if (!b->workers[i]) {
            r = UV_ENOMEM;
            break;
        }
        r = worker_listen(b->workers[i], cfg->bind_address, port);
        if (r != 0) {
            log_error("cannot listen on %s:%u: %s", cfg->bind_address, port, uv_strerror(r));
            break;
        }
        if (port == 0) {
            /* an ephemeral port: every worker listens on the first one's */
            struct sockaddr_storage ss;
            int sl = sizeof(ss);
            uv_tcp_getsockname(&b->workers[i]->listener, (struct sockaddr *)&ss, &sl);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    if (r == 0) {
        for (int i = 0; i < b->n_workers && r == 0; i++)
            r = worker_start(b->workers[i]);
    }
    if (r != 0) {
        for (int i = 0; i < b->n_workers; i++) {
            if (b->workers[i] && b->workers[i]->started) {
                worker_post_stop(b->workers[i]);
                worker_join(b->workers[i]);
            }
        }
        uv_close((uv_handle_t *)&b->sigint, broker_close_cb);
        uv_close((uv_handle_t *)&b->sigterm, broker_close_cb);
        uv_run(b->loop, UV_RUN_DEFAULT);
        return r;
    }
    log_info("starling %s listening on %s:%u (MQTT, %d worker%s)", STARLING_VERSION,
             cfg->bind_address, port, b->n_workers, b->n_workers == 1 ? "" : "s");

    uv_timer_init(b->loop, &b->housekeeping);
    b->housekeeping.data = b;
    uv_timer_start(&b->housekeeping, broker_on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_timer_init(b->loop, &b->sys_timer);
    b->sys_timer.data = b;
    if (cfg->sys_interval) {
        sys_publish(b);
        uv_timer_start(&b->sys_timer, broker_on_sys, (uint64_t)cfg->sys_interval * 1000u,
                       (uint64_t)cfg->sys_interval * 1000u);
    }
    uv_run(b->loop, UV_RUN_DEFAULT);
    for (int i = 0; i < b->n_workers; i++)
        worker_join(b->workers[i]);
    log_info("stopped");
    return 0;
}

void broker_cleanup(struct broker *b)
{
    /* Commit what is pending; from here on nothing touches the store (the
     * sessions freed below stay in it). */
    atomic_store(&b->stopping, true);
    persist_close(b);
    if (b->workers) {
        for (int i = 0; i < b->n_workers; i++)
            worker_free(b->workers[i]);
        free(b->workers);
    }
    if (b->buckets) {
        for (size_t k = 0; k < b->n_buckets; k++) {
            struct session *s = b->buckets[k];
            while (s) {
                struct session *next = s->hnext;
                s->in_table = false;
                session_end(b, s);
                session_unref(s);
                s = next;
            }
        }
        free(b->buckets);
    }
    if (b->loop)
        uv_loop_close(b->loop);
    if (b->index)
        sub_index_free(b->index);
    if (b->retained)
        retain_free(b->retained);
    pthread_mutex_destroy(&b->sessions_lock);
}
