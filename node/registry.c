/*
 * registry.c - the session table and the single-node session registry (see
 * registry.h): the one place where sessions are created, taken over, go
 * offline with their will, expire and end.
 *
 * A claim takes the registry lock for the table change only: find the old
 * session, kick its connection (a post to the owning worker's inbox), attach
 * the new connection. Everything slower (ending a discarded session, its
 * will, the session record) happens after the lock is released.
 */
#include "registry.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "codec.h"
#include "log.h"
#include "persist.h"
#include "session.h"
#include "sink.h"

/* Debug builds check that the caller holds r->lock (trylock on a mutex this
 * thread holds fails; one it does not hold is taken and the assertion
 * aborts anyway). */
#define REGISTRY_ASSERT_LOCKED(r) assert(pthread_mutex_trylock(&(r)->lock) == EBUSY)

/* ---- the table ----------------------------------------------------------- */

static uint64_t registry_hash(const char *id, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)id[i];
        h *= 1099511628211ull;
    }
    return h;
}

int registry_init(struct registry *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->n_buckets = 1024;
    r->buckets = calloc(r->n_buckets, sizeof(*r->buckets));
    return r->buckets ? 0 : -ENOMEM;
}

size_t registry_count(struct registry *r)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->n_sessions;
    pthread_mutex_unlock(&r->lock);
    return n;
}

struct session *registry_find(struct registry *r, const char *id, size_t len)
{
    REGISTRY_ASSERT_LOCKED(r);
    struct session *s = r->buckets[registry_hash(id, len) & (r->n_buckets - 1)];
    for (; s; s = s->hnext)
        if (s->id_len == len && memcmp(s->client_id, id, len) == 0)
            return s;
    return NULL;
}

static void registry_grow(struct registry *r)
{
    size_t n = r->n_buckets * 2;
    struct session **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return; /* keep the longer chains */
    for (size_t i = 0; i < r->n_buckets; i++) {
        struct session *s = r->buckets[i];
        while (s) {
            struct session *next = s->hnext;
            size_t k = registry_hash(s->client_id, s->id_len) & (n - 1);
            s->hnext = nb[k];
            nb[k] = s;
            s = next;
        }
    }
    free(r->buckets);
    r->buckets = nb;
    r->n_buckets = n;
}

void registry_insert(struct registry *r, struct session *s)
{
    REGISTRY_ASSERT_LOCKED(r);
    if (r->n_sessions >= r->n_buckets * 2)
        registry_grow(r);
    size_t k = registry_hash(s->client_id, s->id_len) & (r->n_buckets - 1);
    s->hnext = r->buckets[k];
    r->buckets[k] = s;
    s->in_table = true;
    r->n_sessions++;
}

void registry_remove(struct registry *r, struct session *s)
{
    REGISTRY_ASSERT_LOCKED(r);
    if (!s->in_table)
        return;
    struct session **pp = &r->buckets[registry_hash(s->client_id, s->id_len) & (r->n_buckets - 1)];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == s) {
            *pp = s->hnext;
            s->hnext = NULL;
            s->in_table = false;
            r->n_sessions--;
            /* the table's reference goes with the caller, who ends the session */
            return;
        }
    }
}

void registry_cleanup(struct broker *b)
{
    struct registry *r = &b->registry;
    if (r->buckets) {
        for (size_t k = 0; k < r->n_buckets; k++) {
            struct session *s = r->buckets[k];
            while (s) {
                struct session *next = s->hnext;
                s->in_table = false;
                session_end(b, s);
                session_unref(s);
                s = next;
            }
        }
        free(r->buckets);
        r->buckets = NULL;
    }
    pthread_mutex_destroy(&r->lock);
}

/* ---- through the installed ops ------------------------------------------ */

void registry_claim(struct broker *b, const struct registry_claim *req, registry_done_fn done,
                    void *done_ud)
{
    b->registry_ops->claim(b->registry_ud, req, done, done_ud);
}

void registry_release(struct broker *b, struct session *s, struct conn *c,
                      struct session_will *will, bool resumed, struct worker *cur)
{
    b->registry_ops->release(b->registry_ud, s, c, will, resumed, cur);
}

void registry_tick(struct broker *b, uint64_t now_mono_ms)
{
    b->registry_ops->tick(b->registry_ud, now_mono_ms);
}

void registry_changed(struct broker *b, struct session *s)
{
    if (b->registry_ops->changed)
        b->registry_ops->changed(b->registry_ud, s);
}

/* ---- claim --------------------------------------------------------------- */

/* End a session taken out of the table: a will it was still delaying goes
 * out now [MQTT-5.0 3.1.2-8], then its state goes. Drops the table's reference. */
static void registry_end(struct broker *b, struct session *s, struct worker *cur)
{
    lock_acquire(&s->lock);
    struct msg *will = s->pending_will;
    uint32_t wexp = s->will_expiry;
    s->pending_will = NULL;
    lock_release(&s->lock);
    if (will) {
        broker_publish_will(b, will, wexp, cur);
        msg_unref(will);
    }
    session_end(b, s);
    session_unref(s);
}

/* Count a connected client. */
static void registry_count_connected(struct broker *b)
{
    unsigned long n = atomic_fetch_add(&b->stats.clients_connected, 1) + 1;
    if (n > atomic_load(&b->stats.clients_maximum))
        atomic_store(&b->stats.clients_maximum, n);
}

/* Under the registry lock: the old session of req->id loses its connection
 * (kicked, 5.0: DISCONNECT 0x8E) and is either kept for resumption (returned)
 * or taken out of the table (*ending) on clean start or when it was to end
 * with its connection (expiry 0). *dropped_will: a will
 * it was delaying, which its resumption cancels. */
static struct session *registry_take_over(struct broker *b, struct session *old,
                                          const struct registry_claim *req, struct session **ending,
                                          struct msg **dropped_will)
{
    lock_acquire(&old->lock);
    /* [MQTT-3.1.1 3.1.2-6] a session started with clean session 1 (5.0:
     * Session Expiry 0, MQTT 5.0 section 3.1.2.11.2) lasts as long as its
     * connection: taking that over ends it, it is never resumed */
    bool fresh = req->clean_start || old->expiry_interval == 0;
    if (old->conn) {
        /* [MQTT-3.1.1 3.1.4-2, MQTT-5.0 3.1.4-3] the existing connection is closed */
        b->sink->kick(old->w, old->conn, MQTT_RC_SESSION_TAKEN_OVER, !fresh);
        old->conn = NULL;
        session_flow_release(b, old);
        atomic_fetch_sub(&b->stats.clients_connected, 1);
    }
    lock_release(&old->lock);
    if (fresh) {
        /* [MQTT-3.1.1 3.1.2-6, MQTT-5.0 3.1.2-4] clean start discards the existing session */
        registry_remove(&b->registry, old);
        *ending = old;
        return NULL;
    }
    /* [MQTT-3.1.1 3.1.2-4, MQTT-5.0 3.1.2-5] resume the existing session */
    lock_acquire(&old->lock);
    *dropped_will = old->pending_will; /* [MQTT-5.0 3.1.3-9] */
    old->pending_will = NULL;
    lock_release(&old->lock);
    return old;
}

void registry_local_claim(struct broker *b, const struct registry_claim *req,
                          struct session *incoming, registry_done_fn done, void *done_ud)
{
    assert(sink_thread_worker == NULL || sink_thread_worker == req->w);
    struct registry *r = &b->registry;
    struct session *s = NULL, *ending = NULL;
    struct msg *dropped_will = NULL;
    int status = REGISTRY_NEW;
    /* the session's copy of who the client is, made before anything
     * changes: out of memory, the claim is refused, never granted with the
     * wrong user name for the ACL */
    char *user = req->user ? strdup(req->user) : NULL;
    if (req->user && !user) {
        if (incoming) {
            session_end(b, incoming);
            session_unref(incoming);
        }
        done(done_ud, REGISTRY_UNAVAILABLE, NULL);
        return;
    }
    pthread_mutex_lock(&r->lock);
    struct session *old = registry_find(r, req->id, req->id_len);
    if (old && incoming) {
        /* the state came from another node: it replaces what is here */
        struct registry_claim clean = *req;
        clean.clean_start = true;
        registry_take_over(b, old, &clean, &ending, &dropped_will);
    } else if (old) {
        s = registry_take_over(b, old, req, &ending, &dropped_will);
        if (s)
            status = REGISTRY_PRESENT;
    }
    if (incoming) {
        s = incoming;
        status = REGISTRY_TRANSFERRED;
        registry_insert(r, s);
    } else if (!s) {
        s = session_new(req->id, req->id_len);
        if (!s) {
            free(user);
            pthread_mutex_unlock(&r->lock);
            if (ending)
                registry_end(b, ending, req->w);
            done(done_ud, REGISTRY_UNAVAILABLE, NULL);
            return;
        }
        registry_insert(r, s);
    }
    lock_acquire(&s->lock);
    s->conn = req->conn;
    s->w = req->w;
    s->connected_at = msg_now_real_ms();
    s->version = req->version;
    s->expiry_interval = req->expiry;
    /* who the client is, for the ACL of the session's deliveries; stored
     * with the session (persist_session_sync below) so that a restart
     * keeps it */
    free(s->user);
    s->user = user;
    lock_release(&s->lock);
    session_ref(s); /* the connection's */
    registry_count_connected(b);
    pthread_mutex_unlock(&r->lock);
    msg_unref(dropped_will);
    if (ending) /* the old session ends now */
        registry_end(b, ending, req->w);
    /* A session that came from another node (cluster): the messages of its
     * state came in memory (the old node took them out of its copy when it
     * sent them; its stored rows go when that copy ends), and what was
     * delivered to it directly before its claim completed was stored, but
     * the end of an older copy of the id here (cn_moving_detach, just
     * before) deleted every record of the id. All written with its record
     * now, so that a SIGKILL of this node before they are delivered does
     * not lose them: they come back with the node (issue 10;
     * test_killed_nodes_subscribers_resumed_elsewhere_repeatedly kills the
     * node right after such a move). */
    struct store_batch *bt = NULL;
    if (incoming) {
        lock_acquire(&s->lock);
        persist_session_contents(b, &bt, s);
        lock_release(&s->lock);
    }
    persist_session_sync(b, s, &bt);
    done(done_ud, status, s);
}

/* Cluster: a session that came from another node goes into the table
 * offline, and its contents and record into one batch, submitted into *bt
 * (see registry.h). */
int registry_local_stage(struct broker *b, const struct registry_claim *req,
                         struct session *incoming, struct store_batch **bt)
{
    assert(sink_thread_worker == NULL || sink_thread_worker == req->w);
    struct registry *r = &b->registry;
    struct session *ending = NULL;
    struct msg *dropped_will = NULL;
    char *user = req->user ? strdup(req->user) : NULL;
    if (req->user && !user)
        return -ENOMEM;
    if (persist_batch_begin(b, bt) < 0) {
        free(user);
        return -ENOMEM;
    }
    pthread_mutex_lock(&r->lock);
    struct session *old = registry_find(r, req->id, req->id_len);
    if (old) {
        /* the state came from another node: it replaces what is here */
        struct registry_claim clean = *req;
        clean.clean_start = true;
        registry_take_over(b, old, &clean, &ending, &dropped_will);
    }
    registry_insert(r, incoming); /* the caller's reference: the table's */
    lock_acquire(&incoming->lock);
    incoming->conn = NULL;
    incoming->version = req->version;
    incoming->expiry_interval = req->expiry;
    /* offline until its client is attached (registry_local_attach): its
     * expiry counts from now meanwhile */
    incoming->disconnected_at = broker_now_mono_ms();
    free(incoming->user);
    incoming->user = user;
    lock_release(&incoming->lock);
    pthread_mutex_unlock(&r->lock);
    msg_unref(dropped_will);
    /* the end of the replaced session deletes every record of the id: its
     * batch goes first */
    if (ending)
        registry_end(b, ending, req->w);
    lock_acquire(&incoming->lock);
    if (log_get_level() >= LOG_LEVEL_DEBUG) {
        uint64_t lo = UINT64_MAX, hi = 0;
        const struct qlist *lists[2] = {&incoming->inflight, &incoming->queue};
        for (int l = 0; l < 2; l++)
            for (const struct qmsg *q = lists[l]->head; q; q = q->next) {
                lo = q->seq < lo ? q->seq : lo;
                hi = q->seq > hi ? q->seq : hi;
            }
        log_debug("'%s' (claim %llu) stored with %u inflight and %u queued message(s), sequence "
                  "%llu..%llu, next %llu",
                  incoming->client_id, (unsigned long long)incoming->epoch,
                  (unsigned)incoming->inflight.len, (unsigned)incoming->queue.len,
                  (unsigned long long)lo, (unsigned long long)hi,
                  (unsigned long long)incoming->next_seq);
    }
    /* its messages copied under the lock and written without it: every
     * thread that delivers to the session (workers, the cluster thread
     * applying what follows it) would wait for the whole write otherwise
     * (4.8 s for 20,433 messages under load). Nothing takes messages out of
     * it meanwhile: it is offline, and a claim that would take it away
     * waits for cn->reg_mu, which the caller holds until it submitted *bt;
     * what is delivered to it meanwhile goes into batches of its own. */
    struct persist_copy cp;
    bool copied = persist_contents_copy(b, incoming, &cp) == 0;
    if (!copied)
        persist_session_contents(b, bt, incoming);
    if (persist_wanted(b, incoming))
        persist_session_put(b, bt, incoming, true);
    lock_release(&incoming->lock);
    if (copied)
        persist_contents_write(b, bt, &cp);
    return 0;
}

void registry_local_attach(struct broker *b, const struct registry_claim *req, struct session *s,
                           registry_done_fn done, void *done_ud)
{
    assert(sink_thread_worker == NULL || sink_thread_worker == req->w);
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    lock_acquire(&s->lock);
    bool here = s->in_table && !s->ended && !s->conn;
    if (here) {
        s->conn = req->conn;
        s->w = req->w;
        s->connected_at = msg_now_real_ms();
    }
    lock_release(&s->lock);
    if (here) {
        session_ref(s); /* the connection's */
        registry_count_connected(b);
    }
    pthread_mutex_unlock(&r->lock);
    if (here)
        done(done_ud, REGISTRY_TRANSFERRED, s);
    else
        done(done_ud, REGISTRY_UNAVAILABLE, NULL);
}

struct session *registry_local_surrender(struct broker *b, const char *id, uint16_t id_len,
                                         bool resumed)
{
    return registry_local_surrender_rc(b, id, id_len, resumed, MQTT_RC_SESSION_TAKEN_OVER);
}

struct session *registry_local_surrender_rc(struct broker *b, const char *id, uint16_t id_len,
                                            bool resumed, uint8_t rc)
{
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *s = registry_find(r, id, id_len);
    if (s) {
        lock_acquire(&s->lock);
        if (s->conn) {
            b->sink->kick(s->w, s->conn, rc, resumed);
            s->conn = NULL;
            session_flow_release(b, s);
            atomic_fetch_sub(&b->stats.clients_connected, 1);
        }
        lock_release(&s->lock);
        registry_remove(r, s);
    }
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void registry_local_claim_op(void *ud, const struct registry_claim *req,
                                    registry_done_fn done, void *done_ud)
{
    registry_local_claim(ud, req, NULL, done, done_ud);
}

/* ---- release --------------------------------------------------------------- */

/* With s->lock held and c attached: s goes offline. Returns whether the
 * session ends (expiry 0); otherwise stores it and, when the will has a
 * delay, keeps the will on the session (then *will is emptied). */
static bool registry_go_offline(struct broker *b, struct session *s, struct session_will *will,
                                uint64_t now, struct store_batch **bt)
{
    s->conn = NULL;
    session_flow_release(b, s); /* an offline queue backpressures nobody */
    s->disconnected_at = now;
    if (s->expiry_interval == 0)
        return true;
    if (persist_wanted(b, s) && !atomic_load(&b->stopping))
        persist_session_put(b, bt, s, false);
    if (will && will->msg && will->delay > 0) {
        /* [MQTT-5.0 3.1.2-8] the will waits for its delay or the end of the
         * session, whichever comes first */
        msg_unref(s->pending_will);
        s->pending_will = will->msg;
        s->will_expiry = will->expiry;
        uint64_t delay = will->delay;
        if (s->expiry_interval < delay)
            delay = s->expiry_interval;
        s->will_at = now + delay * 1000u;
        will->msg = NULL;
    }
    return false;
}

void registry_local_release(struct broker *b, struct session *s, struct conn *c,
                            struct session_will *will, bool resumed, struct worker *cur)
{
    struct registry *r = &b->registry;
    uint64_t now = broker_now_mono_ms();
    bool attached = false, ends = false;
    struct store_batch *bt = NULL;
    pthread_mutex_lock(&r->lock);
    lock_acquire(&s->lock);
    if (s->conn == c) {
        attached = true;
        ends = registry_go_offline(b, s, will, now, &bt);
    }
    /* Taken over (possibly before the takeover's kick reached us): when the
     * session lives on, it was resumed by the new connection. */
    if (!attached && s->in_table && !s->ended)
        resumed = true;
    lock_release(&s->lock);
    persist_submit(b, &bt, NULL, NULL);
    if (attached && ends) {
        if (s->in_table)
            registry_remove(r, s);
        else
            ends = false; /* already removed (and ended) by someone else */
    }
    pthread_mutex_unlock(&r->lock);
    if (attached)
        atomic_fetch_sub(&b->stats.clients_connected, 1);
    struct msg *send = will ? will->msg : NULL;
    if (send && !attached && resumed && will->delay > 0) {
        /* taken over within the delay [MQTT-5.0 3.1.3-9] */
        msg_unref(send);
        send = NULL;
    }
    if (send) {
        broker_publish_will(b, send, will->expiry, cur);
        msg_unref(send);
    }
    if (will)
        will->msg = NULL;
    if (attached && ends) {
        session_end(b, s);
        session_unref(s); /* the table's */
    }
    session_unref(s); /* the connection's */
}

static void registry_local_release_op(void *ud, struct session *s, struct conn *c,
                                      struct session_will *will, bool resumed, struct worker *cur)
{
    registry_local_release(ud, s, c, will, resumed, cur);
}

/* ---- housekeeping ------------------------------------------------------------ */

struct ending {
    struct session *s; /* NULL: only the will is due */
    struct msg *will;
    uint32_t will_expiry;
};

/* An offline session's delayed will that is due, and whether it expired;
 * s->lock taken here. */
static bool registry_check_offline(struct session *s, uint64_t now, struct ending *e)
{
    bool expired = false;
    e->will = NULL;
    lock_acquire(&s->lock);
    if (!s->conn) {
        /* `now` was read before the tick took the locks: a session that a
         * worker took offline meanwhile (a burst of keep-alive timeouts
         * after a SIGSTOP) has disconnected_at after it. Unsigned, the
         * difference wrapped round and the session expired at once; in a
         * cluster its end released its registry entry and record (issue 10:
         * "sessions lost", session present 0 for all three subscribers of a
         * chaos run at once). */
        expired = s->expiry_interval != UINT32_MAX && now >= s->disconnected_at &&
                  now - s->disconnected_at >= (uint64_t)s->expiry_interval * 1000u;
        if (s->pending_will && (expired || now >= s->will_at)) {
            e->will = s->pending_will;
            s->pending_will = NULL;
        }
    }
    e->will_expiry = s->will_expiry;
    lock_release(&s->lock);
    e->s = expired ? s : NULL;
    return expired || e->will;
}

/* Append e to the list (growing it off the stack); false when out of memory. */
static bool ending_push(struct ending **list, size_t *n, size_t *cap, struct ending *stack,
                        const struct ending *e)
{
    if (*n == *cap) {
        struct ending *p = malloc(*cap * 2 * sizeof(*p));
        if (!p)
            return false;
        memcpy(p, *list, *n * sizeof(*p));
        if (*list != stack)
            free(*list);
        *list = p;
        *cap *= 2;
    }
    (*list)[(*n)++] = *e;
    return true;
}

void registry_local_tick(struct broker *b, uint64_t now)
{
    struct registry *r = &b->registry;
    struct ending stack[64];
    struct ending *list = stack;
    size_t n = 0, cap = 64;
    pthread_mutex_lock(&r->lock);
    for (size_t k = 0; k < r->n_buckets; k++) {
        struct session *s = r->buckets[k], *next;
        for (; s; s = next) {
            next = s->hnext;
            /* Connected sessions neither expire nor hold a delayed will: skip
             * them without touching their lock, which their worker uses for
             * every message. */
            if (__atomic_load_n(&s->conn, __ATOMIC_RELAXED))
                continue;
            struct ending e;
            if (!registry_check_offline(s, now, &e))
                continue;
            if (!ending_push(&list, &n, &cap, stack, &e)) {
                msg_unref(e.will);
                continue;
            }
            if (e.s)
                registry_remove(r, s);
        }
    }
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n; i++) {
        if (list[i].will) {
            broker_publish_will(b, list[i].will, list[i].will_expiry, NULL);
            msg_unref(list[i].will);
        }
        if (list[i].s) {
            /* [MQTT-5.0 3.1.2-23] the session expired */
            session_end(b, list[i].s);
            session_unref(list[i].s);
        }
    }
    if (list != stack)
        free(list);
}

static void registry_local_tick_op(void *ud, uint64_t now_mono_ms)
{
    registry_local_tick(ud, now_mono_ms);
}

const struct registry_ops registry_local_ops = {
    .claim = registry_local_claim_op,
    .release = registry_local_release_op,
    .tick = registry_local_tick_op,
};

/* ---- the deferred registry (tests) ----------------------------------------- */

/* A claim on its way to the worker's inbox. */
struct deferred_claim {
    struct broker *b;
    struct registry_claim req;
    registry_done_fn done;
    void *done_ud;
    char id[]; /* req.id points here, req.user after it */
};

static void registry_deferred_run(void *ud)
{
    struct deferred_claim *d = ud;
    registry_local_claim(d->b, &d->req, NULL, d->done, d->done_ud);
    free(d);
}

/* The local claim, answered from the claiming worker's inbox: after
 * registry_claim returned and after whatever the loop does first (the
 * connection may close meanwhile), as the cluster's would be. */
static void registry_deferred_claim(void *ud, const struct registry_claim *req,
                                    registry_done_fn done, void *done_ud)
{
    struct broker *b = ud;
    size_t ulen = req->user ? strlen(req->user) + 1 : 0;
    struct deferred_claim *d = malloc(sizeof(*d) + (size_t)req->id_len + 1 + ulen);
    if (!d) {
        done(done_ud, REGISTRY_UNAVAILABLE, NULL);
        return;
    }
    d->b = b;
    d->req = *req;
    memcpy(d->id, req->id, req->id_len);
    d->id[req->id_len] = '\0';
    d->req.id = d->id;
    if (req->user) {
        d->req.user = d->id + req->id_len + 1;
        memcpy(d->id + req->id_len + 1, req->user, ulen);
    }
    d->done = done;
    d->done_ud = done_ud;
    log_debug("registry: the claim of '%s' is answered later", d->id);
    if (b->sink->call(req->w, registry_deferred_run, d) < 0) {
        free(d);
        done(done_ud, REGISTRY_UNAVAILABLE, NULL);
    }
}

const struct registry_ops registry_deferred_ops = {
    .claim = registry_deferred_claim,
    .release = registry_local_release_op,
    .tick = registry_local_tick_op,
};
