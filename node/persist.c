/*
 * persist.c - durable sessions and retained messages (see persist.h).
 *
 * Start-up loads the store into memory: sessions (offline, their expiry
 * counted from the moment they went offline, or from the restart for those
 * that were connected when the node stopped), their subscriptions (back into
 * the subscription index), their queued and inflight messages in order,
 * their incoming QoS 2 ids, and retained messages. Sessions and messages that
 * expired while the node was down are deleted, not loaded.
 */
#include "persist.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "log.h"
#include "msg_seen.h"
#include "session.h"
#include "store.h"

bool persist_wanted(const struct broker *b, const struct session *s)
{
    return b->store && s->expiry_interval != 0;
}

struct store_batch *persist_batch(const struct broker *b, struct store_batch **bt)
{
    if (!b->store)
        return NULL;
    if (!*bt)
        *bt = store_batch_new();
    return *bt;
}

int persist_batch_begin(const struct broker *b, struct store_batch **bt)
{
    if (b->store && !*bt && !(*bt = store_batch_new()))
        return -ENOMEM;
    return 0;
}

/* Take identity (node, seq) out of the n ranges of seen (room for one more
 * range); returns the new count. */
static size_t seen_punch(struct store_seen *seen, size_t n, uint64_t node, uint64_t seq)
{
    for (size_t i = 0; i < n; i++) {
        struct store_seen *r = &seen[i];
        if (r->node != node || seq < r->lo || seq > r->hi)
            continue;
        if (r->lo == r->hi) {
            memmove(r, r + 1, (n - i - 1) * sizeof(*r));
            return n - 1;
        }
        if (seq == r->lo) {
            r->lo++;
        } else if (seq == r->hi) {
            r->hi--;
        } else {
            memmove(r + 2, r + 1, (n - i - 1) * sizeof(*r));
            r[1] = (struct store_seen){node, seq + 1, r->hi};
            r->hi = seq - 1;
            return n + 1;
        }
        return n;
    }
    return n;
}

/* The realtime clock's ms at monotonic ms `mono` (now for 0 or a later
 * one). */
static uint64_t real_ms_of(uint64_t mono)
{
    uint64_t now_mono = broker_now_mono_ms(), now_real = msg_now_real_ms();
    if (!mono || mono >= now_mono || now_mono - mono > now_real)
        return now_real;
    return now_real - (now_mono - mono);
}

static void session_put(const struct broker *br, struct store_batch **bt, struct session *s,
                        bool connected, uint64_t epoch)
{
    assert(lock_held(&s->lock));
    struct store_batch *b = persist_batch(br, bt);
    if (!b)
        return;
    struct store_sub stack[16];
    struct store_sub *subs = stack;
    if (s->n_subs > 16) {
        subs = malloc(s->n_subs * sizeof(*subs));
        if (!subs) {
            log_error("out of memory: session '%s' not stored", s->client_id);
            store_batch_fail(b, -ENOMEM); /* the batch fails as a whole */
            return;
        }
    }
    for (uint32_t i = 0; i < s->n_subs; i++) {
        subs[i].filter = s->subs[i].filter;
        subs[i].len = s->subs[i].len;
        subs[i].options = s->subs[i].options;
        subs[i].sub_id = s->subs[i].sub_id;
    }
    /* what it got since it moved (cluster): taken once after a restart too */
    size_t n_seen = s->seen ? msg_seen_ranges(s->seen) : 0;
    size_t n_held = 0;
    for (const struct qmsg *q = n_seen && s->held_hint ? s->queue.head : NULL; q; q = q->next)
        n_held += q->m->id_node && atomic_load(&q->m->hold) == MSG_HELD;
    if (n_seen && !n_held)
        s->held_hint = 0; /* none held now: none until one is queued held */
    struct store_seen *seen = n_seen ? malloc((n_seen + n_held) * sizeof(*seen)) : NULL;
    if (n_seen && !seen) {
        log_error("out of memory: session '%s' not stored", s->client_id);
        store_batch_fail(b, -ENOMEM);
        if (subs != stack)
            free(subs);
        return;
    }
    for (size_t i = 0; i < n_seen; i++)
        msg_seen_range(s->seen, i, &seen[i].node, &seen[i].lo, &seen[i].hi);
    /* but not the identities of messages whose own batch has not committed
     * yet (held, struct msg.hold): this record may commit first, and a
     * SIGKILL in between left the identity without the message, which its
     * next copy (the origin resends an uncommitted forward) then met as
     * one the session had: lost (issue 10,
     * test_killed_nodes_subscribers_resumed_elsewhere_repeatedly). Such a
     * message's row carries its identity: load_msg takes it back. */
    for (const struct qmsg *q = n_held ? s->queue.head : NULL; q; q = q->next)
        if (q->m->id_node && atomic_load(&q->m->hold) == MSG_HELD)
            n_seen = seen_punch(seen, n_seen, q->m->id_node, q->m->id_seq);
    struct store_session rec = {
        .version = s->version,
        .expiry_interval = s->expiry_interval,
        .disconnected_at_ms = connected ? 0 : real_ms_of(s->disconnected_at),
        .n_subs = s->n_subs,
        .subs = subs,
        /* the ACL of its deliveries after a restart (issue 11) */
        .user = s->user,
        .user_len = s->user ? (uint16_t)strnlen(s->user, UINT16_MAX) : 0,
        .n_seen = (uint32_t)n_seen,
        .seen = seen,
        /* its claim (cluster): a copy of it claimed away while this node
         * was down or stopped still knows, after a restart, which owners
         * came after it (docs/cluster.md, *A stored copy's claim across a
         * restart*) */
        .epoch = epoch,
    };
    /* its wait for an old owner's QoS 2 ids (cluster), so that a restart
     * during it keeps it: what the ids answer, or that they have not come
     * yet (a resend taken for new after a restart here came twice: chaos
     * seeds 9911 and 9933, docs/cluster.md) */
    uint64_t now = broker_now_mono_ms();
    uint32_t n_ids = s->told ? s->n_told : s->n_blind_released;
    /* (more ids than a record takes: none, a duplicate at worst after a
     * restart) */
    if (session_blind(s, now) && n_ids <= 65535) {
        rec.wait_until_ms = msg_now_real_ms() + (s->blind_until - now);
        rec.wait_node = s->blind_node;
        rec.wait_epoch = s->blind_epoch;
        rec.wait_told = s->told;
        rec.n_wait_ids = n_ids;
        rec.wait_ids = s->told ? s->told_ids : s->blind_released;
    }
    s->wait_dirty = false;
    store_session_put(b, s->client_id, s->id_len, &rec);
    s->stored = true;
    if (subs != stack)
        free(subs);
    free(seen);
}

void persist_session_put(const struct broker *br, struct store_batch **bt, struct session *s,
                         bool connected)
{
    session_put(br, bt, s, connected, session_claim_epoch(s));
}

void persist_session_put_claim(const struct broker *br, struct store_batch **bt, struct session *s,
                               uint64_t epoch)
{
    session_put(br, bt, s, false, epoch);
}

void persist_session_del(const struct broker *br, struct store_batch **bt, struct session *s)
{
    assert(lock_held(&s->lock));
    struct store_batch *b = persist_batch(br, bt);
    if (!b || !s->stored)
        return;
    store_session_del(b, s->client_id, s->id_len);
    s->stored = false;
    s->rows_taken_below = s->next_seq; /* (session_row_left_locked) */
    for (struct qmsg *q = s->queue.head; q; q = q->next)
        q->stored = false;
    for (struct qmsg *q = s->inflight.head; q; q = q->next)
        q->stored = false;
}

void persist_msg_put(const struct broker *br, struct store_batch **bt, struct session *s,
                     struct qmsg *q, uint8_t state)
{
    assert(lock_held(&s->lock));
    struct store_batch *b = persist_batch(br, bt);
    if (!b)
        return;
    if (!s->stored)
        persist_session_put(br, bt, s, s->conn != NULL);
    struct store_msg rec = {
        .state = state,
        .pid = state ? q->pid : 0,
        .qos = q->qos,
        .retain = q->retain,
        .n_ids = q->n_ids,
        .ids = q->n_ids == 1 ? &q->ids.one : q->ids.many,
        .m = q->m,
    };
    store_msg_put(b, s->client_id, s->id_len, q->seq, &rec);
    q->stored = true;
}

void persist_session_contents(const struct broker *br, struct store_batch **bt, struct session *s)
{
    assert(lock_held(&s->lock));
    if (!persist_wanted(br, s))
        return;
    const struct qlist *lists[2] = {&s->inflight, &s->queue};
    for (int l = 0; l < 2; l++)
        for (struct qmsg *q = lists[l]->head; q; q = q->next)
            if (q->qos > 0)
                persist_msg_put(br, bt, s, q,
                                q->state == MSG_STATE_WAIT_PUBCOMP ? MSG_STATE_WAIT_PUBCOMP
                                                                   : MSG_STATE_QUEUED);
    /* the ids alone: every caller writes the session's record in the same
     * batch (persist_qos2 would write it again for each id during a wait) */
    struct store_batch *b = s->n_qos2_in ? persist_batch(br, bt) : NULL;
    for (uint32_t i = 0; b && i < s->n_qos2_in; i++)
        store_qos2_put(b, s->client_id, s->id_len, s->qos2_in[i]);
}

struct persist_row {
    struct msg *m; /* a reference */
    uint64_t seq;
    uint8_t state, qos;
    bool retain;
    uint16_t pid, n_ids;
    uint32_t one;
    uint32_t *many; /* n_ids > 1: a copy */
};

int persist_contents_copy(const struct broker *br, struct session *s, struct persist_copy *out)
{
    assert(lock_held(&s->lock));
    memset(out, 0, sizeof *out);
    out->id = s->client_id;
    out->id_len = s->id_len;
    if (!persist_wanted(br, s))
        return 0;
    size_t n = (size_t)s->inflight.len + s->queue.len;
    out->rows = n ? calloc(n, sizeof *out->rows) : NULL;
    out->qos2 = s->n_qos2_in ? malloc(s->n_qos2_in * sizeof *out->qos2) : NULL;
    if ((n && !out->rows) || (s->n_qos2_in && !out->qos2)) {
        free(out->rows);
        free(out->qos2);
        memset(out, 0, sizeof *out);
        return -ENOMEM;
    }
    /* the copies of subscription ids first: nothing is marked stored
     * unless the whole copy is made */
    const struct qlist *lists[2] = {&s->inflight, &s->queue};
    size_t k = 0;
    for (int l = 0; l < 2; l++)
        for (struct qmsg *q = lists[l]->head; q && k < n; q = q->next) {
            if (q->qos == 0)
                continue;
            struct persist_row *w = &out->rows[k];
            w->n_ids = q->n_ids;
            if (q->n_ids == 1) {
                w->one = q->ids.one;
            } else if (q->n_ids > 1) {
                w->many = malloc(q->n_ids * sizeof *w->many);
                if (!w->many) {
                    out->n = k;
                    persist_contents_free(out);
                    return -ENOMEM;
                }
                memcpy(w->many, q->ids.many, q->n_ids * sizeof *w->many);
            }
            w->m = msg_ref(q->m);
            w->seq = q->seq;
            w->state =
                q->state == MSG_STATE_WAIT_PUBCOMP ? MSG_STATE_WAIT_PUBCOMP : MSG_STATE_QUEUED;
            w->pid = w->state ? q->pid : 0;
            w->qos = q->qos;
            w->retain = q->retain;
            k++;
        }
    out->n = k;
    for (int l = 0; l < 2; l++)
        for (struct qmsg *q = lists[l]->head; q; q = q->next)
            if (q->qos > 0)
                q->stored = true; /* its row is in the batch persist_contents_write fills */
    out->n_qos2 = s->n_qos2_in;
    if (s->n_qos2_in)
        memcpy(out->qos2, s->qos2_in, s->n_qos2_in * sizeof *out->qos2);
    return 0;
}

void persist_contents_free(struct persist_copy *c)
{
    for (size_t i = 0; i < c->n; i++) {
        msg_unref(c->rows[i].m);
        free(c->rows[i].many);
    }
    free(c->rows);
    free(c->qos2);
    memset(c, 0, sizeof *c);
}

void persist_contents_write(const struct broker *br, struct store_batch **bt,
                            struct persist_copy *c)
{
    struct store_batch *b = c->n || c->n_qos2 ? persist_batch(br, bt) : NULL;
    for (size_t i = 0; b && i < c->n; i++) {
        const struct persist_row *w = &c->rows[i];
        struct store_msg rec = {
            .state = w->state,
            .pid = w->pid,
            .qos = w->qos,
            .retain = w->retain,
            .n_ids = w->n_ids,
            .ids = w->n_ids == 1 ? &w->one : w->many,
            .m = w->m,
        };
        store_msg_put(b, c->id, c->id_len, w->seq, &rec);
    }
    for (uint32_t i = 0; b && i < c->n_qos2; i++)
        store_qos2_put(b, c->id, c->id_len, c->qos2[i]);
    persist_contents_free(c);
}

void persist_msg_del(const struct broker *br, struct store_batch **bt, struct session *s,
                     struct qmsg *q)
{
    assert(lock_held(&s->lock));
    struct store_batch *b = persist_batch(br, bt);
    if (!b || !q->stored)
        return;
    store_msg_del(b, s->client_id, s->id_len, q->seq);
    q->stored = false;
    /* A moved session records the identities it gets (node/msg_seen.h),
     * and each stays durable with its message until that leaves the store:
     * then the session's record carries it, written in the same batch.
     * Before, only the record's own writes (connect, subscribe, disconnect,
     * shutdown) carried them, so after a SIGKILL this node's copy forgot
     * what its client got since, and the late messages of another copy of
     * the session came twice (chaos seed 44). Only while the session
     * records (SESSION_SEEN_RECORD_MS after a move). */
    if (q->m->id_node && s->seen && broker_now_mono_ms() < s->seen_until)
        persist_session_put(br, bt, s, s->conn != NULL);
}

void persist_row_del(const struct broker *br, struct store_batch **bt, struct session *s,
                     uint64_t row)
{
    struct store_batch *b = row != SESSION_NO_ROW ? persist_batch(br, bt) : NULL;
    if (b)
        store_msg_del(b, s->client_id, s->id_len, row);
}

bool persist_wait_due(const struct session *s)
{
    /* during the wait, every time: a batch that failed, or an older
     * record that commits after a newer one, then leaves no stale id in
     * the store (a wait lasts seconds, and few sessions have one) */
    return s->wait_dirty || atomic_load_explicit(&s->blind_until, memory_order_relaxed) != 0;
}

void persist_qos2(const struct broker *br, struct store_batch **bt, struct session *s, uint16_t pid,
                  bool put)
{
    assert(lock_held(&s->lock));
    struct store_batch *b = persist_batch(br, bt);
    if (!b)
        return;
    /* with the wait as it is now (struct session.wait_dirty) */
    if (put) {
        if (!s->stored || persist_wait_due(s))
            persist_session_put(br, bt, s, s->conn != NULL);
        store_qos2_put(b, s->client_id, s->id_len, pid);
    } else if (s->stored) {
        if (persist_wait_due(s))
            persist_session_put(br, bt, s, s->conn != NULL);
        store_qos2_del(b, s->client_id, s->id_len, pid);
    }
}

void persist_retained(const struct broker *br, struct store_batch **bt, const struct msg *m)
{
    struct store_batch *b = persist_batch(br, bt);
    if (!b)
        return;
    if (m->payload_len == 0)
        store_retained_del(b, msg_topic(m), m->topic_len);
    else
        store_retained_put(b, m);
}

bool persist_submit(const struct broker *br, struct store_batch **bt,
                    void (*done)(void *ud, int status), void *ud)
{
    struct store_batch *b = *bt;
    *bt = NULL;
    if (!b || (store_batch_ops(b) == 0 && store_batch_error(b) == 0) || !br->store) {
        if (b)
            store_batch_free(b);
        if (done)
            done(ud, 0);
        return false;
    }
    store_submit(br->store, b, done, ud);
    return true;
}

/* persist_session_update's batch failed: the next write of the session's
 * QoS 2 ids writes its record again (struct session.wait_dirty). */
static void wait_written(void *ud, int status)
{
    struct session *s = ud;
    if (status < 0) {
        lock_acquire(&s->lock);
        s->wait_dirty = true;
        lock_release(&s->lock);
    }
    session_unref(s);
}

void persist_session_update(const struct broker *b, struct session *s)
{
    struct store_batch *bt = NULL;
    lock_acquire(&s->lock);
    if (s->stored && !s->ended && persist_wanted(b, s))
        persist_session_put(b, &bt, s, s->conn != NULL);
    /* submitted under the lock: a newer record that a worker writes after
     * this one was taken (a told id used up) commits after it, not before
     * (the store commits in submission order); its callback runs on the
     * store's thread, never here */
    if (bt && b->store)
        store_submit(b->store, bt, wait_written, session_ref(s));
    else if (bt)
        store_batch_free(bt);
    lock_release(&s->lock);
}

void persist_session_sync(const struct broker *b, struct session *s, struct store_batch **bt)
{
    persist_session_sync_then(b, s, bt, NULL, NULL);
}

void persist_session_sync_then(const struct broker *b, struct session *s, struct store_batch **bt,
                               void (*done)(void *ud, int status), void *ud)
{
    struct store_batch *own = NULL;
    if (!bt)
        bt = &own;
    lock_acquire(&s->lock);
    if (persist_wanted(b, s))
        persist_session_put(b, bt, s, true);
    else if (s->stored) {
        log_debug("'%s' is no longer persistent: every record of its id leaves the store",
                  s->client_id);
        persist_session_del(b, bt, s);
    }
    if (!done) {
        /* submitted under the lock, in the order of the records (its wait:
         * persist_session_update); done may take the lock (an empty batch
         * calls it at once) */
        persist_submit(b, bt, NULL, NULL);
        lock_release(&s->lock);
        return;
    }
    lock_release(&s->lock);
    persist_submit(b, bt, done, ud);
}

/* ---- loading ------------------------------------------------------------ */

struct loader {
    struct broker *b;
    uint64_t now_real, now_mono;
    struct store_batch *purge; /* deletions of what expired while down */
    size_t sessions, msgs, retained, expired;
    bool held; /* load_test_hold ran */
};

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_LOAD_HOLD
 * names exists, the load waits before the first queued message, every
 * stored session in the table already (the cluster's channel is up:
 * tests/cluster/test_faults.py). */
static void load_test_hold(struct loader *l)
{
    const char *path = getenv("STARLING_TEST_LOAD_HOLD");
    if (l->held || !path || access(path, F_OK) != 0)
        return;
    l->held = true;
    log_info("store: %zu session(s) loaded, their messages wait (STARLING_TEST_LOAD_HOLD)",
             l->sessions);
    struct timespec nap = {0, 10 * 1000000L};
    while (access(path, F_OK) == 0)
        nanosleep(&nap, NULL);
}
#else
static void load_test_hold(struct loader *l)
{
    (void)l;
}
#endif

/* The loaded session of a client id (start-up: the cluster leaves the table
 * alone until the load is done, cn_registry_on_request). */
static struct session *loader_find(struct broker *b, const char *id, size_t len)
{
    pthread_mutex_lock(&b->registry.lock);
    struct session *s = registry_find(&b->registry, id, len);
    pthread_mutex_unlock(&b->registry.lock);
    return s;
}

static int load_session(void *ud, const char *id, uint16_t len, const struct store_session *rec)
{
    struct loader *l = ud;
    struct broker *b = l->b;
    uint64_t off = rec->disconnected_at_ms ? rec->disconnected_at_ms : l->now_real;
    uint64_t offline_ms = l->now_real > off ? l->now_real - off : 0;
    if (rec->expiry_interval != UINT32_MAX &&
        offline_ms >= (uint64_t)rec->expiry_interval * 1000u) {
        /* [MQTT-5.0 3.1.2-23] expired while the node was down */
        store_session_del(persist_batch(b, &l->purge), id, len);
        l->expired++;
        return 0;
    }
    struct session *s = session_new(id, len);
    if (!s)
        return -ENOMEM;
    s->version = rec->version;
    s->expiry_interval = rec->expiry_interval;
    if (rec->user && !(s->user = strndup(rec->user, rec->user_len))) {
        session_unref(s);
        return -ENOMEM;
    }
    s->disconnected_at = l->now_mono - (offline_ms < l->now_mono ? offline_ms : 0);
    s->stored = true;
    s->stored_epoch = rec->epoch;
    uint64_t wait_max = CONFIG_RESEND_KNOW_MS(&b->cfg);
    if (rec->wait_until_ms > l->now_real && rec->wait_node && wait_max) {
        /* its wait goes on for what is left of it (at most
         * CONFIG_RESEND_KNOW_MS: a clock set back does not stretch it) */
        uint64_t left = rec->wait_until_ms - l->now_real;
        uint32_t n = rec->n_wait_ids;
        uint16_t *ids = n ? malloc(n * sizeof(*ids)) : NULL;
        if (n && !ids) {
            session_unref(s);
            return -ENOMEM;
        }
        if (n)
            memcpy(ids, rec->wait_ids, n * sizeof(*ids));
        s->blind_until = l->now_mono + (left < wait_max ? left : wait_max);
        s->blind_node = rec->wait_node;
        s->blind_epoch = rec->wait_epoch;
        s->told = rec->wait_told;
        if (s->told) {
            s->told_ids = ids;
            s->n_told = n;
        } else {
            s->blind_released = ids;
            s->n_blind_released = n;
        }
    }
    if (rec->n_seen) {
        /* checked, not recorded (seen_until 0): a move starts recording */
        if (!(s->seen = msg_seen_new())) {
            session_unref(s);
            return -ENOMEM;
        }
        for (uint32_t i = 0; i < rec->n_seen; i++)
            if (msg_seen_add_range(s->seen, rec->seen[i].node, rec->seen[i].lo, rec->seen[i].hi) ==
                -ENOMEM) {
                session_unref(s);
                return -ENOMEM;
            }
    }
    for (uint32_t i = 0; i < rec->n_subs; i++) {
        const struct store_sub *sub = &rec->subs[i];
        lock_acquire(&s->lock);
        int r = session_sub_set(s, sub->filter, sub->len, sub->options, sub->sub_id);
        lock_release(&s->lock);
        if (r < 0 ||
            sub_index_add(b->index, sub->filter, sub->len, s, sub->options, sub->sub_id) < 0) {
            session_end(b, s);
            session_unref(s);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&b->registry.lock);
    registry_insert(&b->registry, s);
    pthread_mutex_unlock(&b->registry.lock);
    l->sessions++;
    return 0;
}

static int load_msg(void *ud, const char *id, uint16_t len, uint64_t seq,
                    const struct store_msg *rec)
{
    struct loader *l = ud;
    load_test_hold(l);
    struct session *s = loader_find(l->b, id, len);
    if (!s || (rec->m->expiry_at && rec->m->expiry_at <= l->now_real &&
               rec->state != MSG_STATE_WAIT_PUBCOMP)) {
        /* an orphan, or expired while the node was down */
        store_msg_del(persist_batch(l->b, &l->purge), id, len, seq);
        return 0;
    }
    struct qmsg *q = qmsg_new((struct msg *)rec->m, rec->qos, rec->retain, rec->ids, rec->n_ids);
    if (!q)
        return -ENOMEM;
    q->seq = seq;
    /* a moved session had it: its identity may be missing from the
     * session's record (persist_session_put leaves out those of messages
     * not committed yet) */
    if (s->seen && q->m->id_node) {
        lock_acquire(&s->lock);
        msg_seen_add(s->seen, q->m->id_node, q->m->id_seq);
        lock_release(&s->lock);
    }
    session_restore_msg(s, q, rec->state);
    l->msgs++;
    return 0;
}

static int load_qos2(void *ud, const char *id, uint16_t len, uint16_t pid)
{
    struct loader *l = ud;
    struct session *s = loader_find(l->b, id, len);
    if (!s) {
        store_qos2_del(persist_batch(l->b, &l->purge), id, len, pid);
        return 0;
    }
    lock_acquire(&s->lock);
    int r = session_qos2_add(s, pid);
    lock_release(&s->lock);
    return r;
}

static int load_retained(void *ud, struct msg *m)
{
    struct loader *l = ud;
    if (m->expiry_at && m->expiry_at <= l->now_real) {
        store_retained_del(persist_batch(l->b, &l->purge), msg_topic(m), m->topic_len);
        return 0;
    }
    l->retained++;
    return retain_set(l->b->retained, m);
}

int persist_open(struct broker *b, char *err, size_t errlen)
{
    const struct config *cfg = &b->cfg;
    if (!cfg->persistence)
        return 0;
    struct store_options o = {
        .dir = cfg->data_dir,
        .sync = cfg->sync == SYNC_ALWAYS     ? STORE_SYNC_ALWAYS
                : cfg->sync == SYNC_INTERVAL ? STORE_SYNC_INTERVAL
                                             : STORE_SYNC_NONE,
        .sync_interval_ms = cfg->sync_interval_ms,
    };
    int r = store_open(&b->store, &o, err, errlen);
    if (r < 0) {
        b->store = NULL;
        return r;
    }
    struct loader l = {.b = b, .now_real = msg_now_real_ms(), .now_mono = broker_now_mono_ms()};
    struct store_loader sl = {
        .ud = &l,
        .session = load_session,
        .msg = load_msg,
        .qos2 = load_qos2,
        .retained = load_retained,
    };
    r = store_load(b->store, &sl);
    if (r < 0) {
        snprintf(err, errlen, "%s: cannot load the store: %s", cfg->data_dir, store_strerror(r));
        if (l.purge)
            store_batch_free(l.purge);
        return r;
    }
    persist_submit(b, &l.purge, NULL, NULL);
    store_flush(b->store);
    b->load_expired = l.expired;
    log_info("store %s: %zu sessions, %zu queued messages, %zu retained messages loaded "
             "(%zu expired sessions purged)",
             cfg->data_dir, l.sessions, l.msgs, l.retained, l.expired);
    return 0;
}

/* The identities each moved session got (its msg_seen) into its record, so
 * that a copy that comes again after the restart is taken once (cluster,
 * docs/cluster.md "Faults"): written at connect, subscribe and disconnect,
 * but not at a shutdown's disconnect, nor on every delivery. */
static void seen_store_all(struct broker *b)
{
    uint64_t since = atomic_load(&b->stopping_since);
    struct store_batch *bt = NULL;
    size_t n = 0;
    pthread_mutex_lock(&b->registry.lock);
    for (size_t k = 0; k < b->registry.n_buckets; k++)
        for (struct session *s = b->registry.buckets[k]; s; s = s->hnext) {
            lock_acquire(&s->lock);
            if (s->seen && msg_seen_ranges(s->seen) && !s->ended && persist_wanted(b, s)) {
                /* disconnected by the stop: connected, as its record says */
                bool connected = s->conn || (since && s->disconnected_at >= since);
                persist_session_put(b, &bt, s, connected);
                n++;
            }
            lock_release(&s->lock);
        }
    pthread_mutex_unlock(&b->registry.lock);
    persist_submit(b, &bt, NULL, NULL);
    if (n)
        log_debug("store: the message identities of %zu session(s) stored", n);
}

void persist_close(struct broker *b)
{
    if (!b->store)
        return;
    seen_store_all(b);
    store_close(b->store);
    b->store = NULL;
}
