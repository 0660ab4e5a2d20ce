/*
 * session.c - session state (see session.h).
 *
 * Every message for a session goes through its queue: session_deliver
 * appends under the session lock from whichever thread matched the publish,
 * and the worker that owns the attached connection moves messages from the
 * queue into the connection's output (session_flush), QoS 1/2 ones into the
 * inflight list while the window allows. The queue is bounded by
 * max_queued_messages and max_queued_bytes. When the queue of an offline
 * session is full, queue_full_policy decides which message is dropped; for a
 * connected session slow_subscriber_policy decides, by default backpressure:
 * the message is queued above the bound (the high-water mark) and the
 * publishers that fed it pause until the queue is below half of it (the
 * low-water mark). Every drop is counted, per session and per reason.
 *
 * A queued message is charged its topic, payload and properties plus
 * QMSG_OVERHEAD (its struct qmsg and struct msg), so that max_queued_bytes
 * bounds memory even for tiny messages.
 */
#include "session.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "codec.h"
#include "hoptrace.h"
#include "log.h"
#include "msg_seen.h"
#include "persist.h"
#include "registry.h"
#include "store.h"
#include "testhook.h"

/* What a queued message costs beyond its bytes (see qmsg_size). */
#define QMSG_OVERHEAD (sizeof(struct qmsg) + sizeof(struct msg))
/* At most one log line per slow session per this many ms, and one per node
 * per SESSION_LOG_MS (10,000 stuck subscribers must not flood the log). */
#define SESSION_DROP_LOG_MS 10000u
#define SESSION_LOG_MS 1000u

struct session *session_new(const char *id, uint16_t len)
{
    struct session *s = calloc(1, sizeof(*s) + (size_t)len + 1);
    if (!s)
        return NULL;
    memcpy(s->client_id, id, len);
    s->client_id[len] = '\0';
    s->id_len = len;
    atomic_init(&s->refs, 1);
    atomic_init(&s->flush_posted, 0);
    /* the first message gets sequence number 0, packet identifier 1
     * (persist_pid_of), as clients and packet captures expect */
    s->next_seq = 0;
    return s;
}

void qmsg_free(struct qmsg *q)
{
    if (!q)
        return;
    msg_unref(q->m);
    if (q->n_ids > 1)
        free(q->ids.many);
    free(q);
}

static void qmsg_list_free(struct qmsg *q)
{
    while (q) {
        struct qmsg *next = q->next;
        qmsg_free(q);
        q = next;
    }
}

void session_free(struct session *s)
{
    msg_seen_free(s->seen);
    msg_seen_free(s->park_seen);
    qmsg_list_free(s->queue.head);
    qmsg_list_free(s->inflight.head);
    for (uint32_t i = 0; i < s->n_subs; i++)
        free(s->subs[i].filter);
    free(s->subs);
    free(s->qos2_in);
    free(s->told_ids);
    free(s->blind_released);
    free(s->own_moved);
    msg_unref(s->pending_will);
    free(s->user);
    free(s->pubs_seen);
    free(s->fold);
    free(s);
}

struct qmsg *qmsg_new(struct msg *m, uint8_t qos, bool retain, const uint32_t *ids, uint16_t n_ids)
{
    struct qmsg *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    if (n_ids > 1) {
        q->ids.many = malloc(sizeof(uint32_t) * n_ids);
        if (!q->ids.many) {
            free(q);
            return NULL;
        }
        memcpy(q->ids.many, ids, sizeof(uint32_t) * n_ids);
    } else if (n_ids == 1) {
        q->ids.one = ids[0];
    }
    q->n_ids = n_ids;
    q->m = msg_ref(m);
    q->qos = qos;
    q->retain = retain;
    return q;
}

static size_t qmsg_size(const struct qmsg *q)
{
    return (size_t)q->m->topic_len + q->m->payload_len + q->m->props_len + QMSG_OVERHEAD;
}

static void qlist_push(struct qlist *l, struct qmsg *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->len++;
}

/* Unlink q, whose predecessor in l is prev (NULL for the head). */
static void qlist_unlink(struct qlist *l, struct qmsg *prev, struct qmsg *q)
{
    if (prev)
        prev->next = q->next;
    else
        l->head = q->next;
    if (l->tail == q)
        l->tail = prev;
    l->len--;
    q->next = NULL;
}

/* Take q, which follows prev (NULL: the head), out of the queue. */
static void queue_take(struct session *s, struct qmsg *prev, struct qmsg *q)
{
    qlist_unlink(&s->queue, prev, q);
    s->queue_bytes -= qmsg_size(q);
    if (q == s->late_last) /* late ones go after prev now */
        s->late_last = prev;
}

static struct qmsg *queue_pop(struct session *s)
{
    struct qmsg *q = s->queue.head;
    if (q)
        queue_take(s, NULL, q);
    return q;
}

/* A late message while s holds what came directly (session_late_hold):
 * after the earlier late ones, before the held ones. */
static void queue_insert_late(struct session *s, struct qmsg *q)
{
    struct qmsg *after = s->late_last;
    q->next = after ? after->next : s->queue.head;
    if (after)
        after->next = q;
    else
        s->queue.head = q;
    if (s->queue.tail == after)
        s->queue.tail = q;
    s->queue.len++;
    s->queue_bytes += qmsg_size(q);
    s->late_last = q;
}

/* The first message s holds back (session_late_hold), or NULL. */
static const struct qmsg *late_first_held(const struct session *s)
{
    if (!s->late_hold_until)
        return NULL;
    return s->late_last ? s->late_last->next : s->queue.head;
}

static void queue_push(struct session *s, struct qmsg *q)
{
    qlist_push(&s->queue, q);
    s->queue_bytes += qmsg_size(q);
    if (atomic_load(&q->m->hold) == MSG_HELD && s->held_hint < UINT32_MAX)
        s->held_hint++;
}

/* Apply the queue limits for one more message; returns the message to drop
 * (q itself, the oldest queued one, or NULL when q fits). */
static struct qmsg *queue_admit(const struct config *cfg, struct session *s, struct qmsg *q)
{
    bool full = false;
    if (cfg->max_queued_messages == 0) {
        /* no queueing: only messages for a connected client pass */
        full = s->conn == NULL;
    } else if (s->queue.len >= cfg->max_queued_messages) {
        full = true;
    }
    if (cfg->max_queued_bytes && s->queue_bytes + qmsg_size(q) > cfg->max_queued_bytes)
        full = true;
    if (!full)
        return NULL;
    if (cfg->queue_full_policy == QUEUE_DROP_OLDEST && s->queue.head)
        return queue_pop(s);
    return q;
}

/* Whether s's queue with one more message of `add` bytes exceeds `mult`
 * times its bound (max_queued_messages 0: no bound by count). */
static bool queue_over(const struct config *cfg, const struct session *s, size_t add, unsigned mult)
{
    if (cfg->max_queued_messages &&
        (uint64_t)s->queue.len + 1 > (uint64_t)cfg->max_queued_messages * mult)
        return true;
    return cfg->max_queued_bytes && s->queue_bytes + add > cfg->max_queued_bytes * mult;
}

/* Whether s's queue is at or below its low-water mark (half the bound). */
static bool queue_low(const struct config *cfg, const struct session *s)
{
    if (cfg->max_queued_messages && s->queue.len > cfg->max_queued_messages / 2)
        return false;
    return !cfg->max_queued_bytes || s->queue_bytes <= cfg->max_queued_bytes / 2;
}

static void pub_flow_add(struct pub_flow *flow, struct session *s)
{
    for (uint8_t i = 0; i < flow->n_slow; i++)
        if (flow->slow[i] == s)
            return;
    if (flow->n_slow < PUB_FLOW_MAX)
        flow->slow[flow->n_slow++] = session_ref(s);
}

static void pids_used_note(struct session *s, uint64_t lo, uint64_t hi);

/* The sequence number of a new message of s: the next one, past those
 * that adopted exchanges hold (session_adopt_exchange). s->lock held. */
static uint64_t session_next_seq(struct session *s)
{
    uint64_t from = s->next_seq;
    while (s->next_seq < s->adopt_seq_end) {
        /* (only adopted exchanges are numbered at or after next_seq) */
        bool held = false, ahead = false;
        for (const struct qmsg *q = s->inflight.head; q && !held; q = q->next) {
            ahead |= q->seq >= s->next_seq;
            held = q->seq == s->next_seq;
        }
        if (!ahead)
            s->adopt_seq_end = 0; /* none left in flight */
        if (!held)
            break;
        s->next_seq++;
    }
    if (s->next_seq >= s->adopt_seq_end)
        s->adopt_seq_end = 0;
    /* the numbers skipped for adopted exchanges too: their ids are in use */
    pids_used_note(s, from, s->next_seq + 1);
    return s->next_seq++;
}

/* The slow subscriber policy: q for a connected session. Returns the message
 * to drop (q, the oldest queued one, or NULL to queue q) and its reason in
 * *why; *kick: the connection to close (disconnect policy); *expired: how
 * long s was above its mark when max_publisher_pause ran out now (ms).
 * s->lock held. */
static struct qmsg *queue_admit_online(struct broker *b, struct session *s, struct qmsg *q,
                                       struct pub_flow *flow, int *why, struct conn **kick,
                                       uint64_t *expired)
{
    const struct config *cfg = &b->cfg;
    size_t add = qmsg_size(q);
    if (!queue_over(cfg, s, add, 1))
        return NULL;
    switch (cfg->slow_subscriber_policy) {
    case SLOW_BACKPRESSURE: {
        if (s->flow_exempt)
            break; /* max_publisher_pause ran out: drop_new until it drains */
        uint64_t now = broker_now_mono_ms();
        if (!atomic_load(&s->flow_high)) {
            atomic_store(&s->flow_high, true);
            s->high_since = now;
        } else if (cfg->max_publisher_pause_ms &&
                   now - s->high_since >= cfg->max_publisher_pause_ms) {
            /* above its mark for max_publisher_pause: nobody is paused for
             * it any more (the publishers waiting on it are let go by their
             * worker, conn_flow.c) */
            *expired = now - s->high_since + 1;
            s->flow_exempt = true;
            session_flow_release(b, s);
            break;
        }
        /* a publisher never waits on its own session, nor on one whose
         * connection is paused itself (it may not drain before that one
         * resumes: waiting on it could close a cycle) */
        if (flow && q->m->origin != s && !atomic_load(&s->reading_paused))
            pub_flow_add(flow, s);
        /* above the high-water mark, below the hard bound (twice it): kept,
         * the publisher pauses after this message */
        if (!queue_over(cfg, s, add, 2))
            return NULL;
        break;
    }
    case SLOW_DROP_OLDEST:
        if (s->queue.head) {
            *why = SESSION_DROP_SLOW_OLDEST;
            return queue_pop(s);
        }
        break;
    case SLOW_DISCONNECT:
        if (s->kicked != s->conn) {
            s->kicked = s->conn;
            *kick = s->conn;
        }
        *why = SESSION_DROP_DISCONNECT;
        if (flow)
            flow->refused = true;
        return q;
    case SLOW_DROP_NEW:
        break;
    }
    *why = SESSION_DROP_SLOW_NEW;
    if (flow)
        flow->refused = true;
    return q;
}

/* Whether the node may log a slow subscriber line now; *skipped: how many it
 * left out since the last one. */
static bool session_log_allowed(struct broker *b, unsigned long *skipped)
{
    uint64_t now = broker_now_mono_ms();
    unsigned long long last = atomic_load(&b->stats.slow_log_at);
    if ((last && now - last < SESSION_LOG_MS) ||
        !atomic_compare_exchange_strong(&b->stats.slow_log_at, &last, now)) {
        atomic_fetch_add(&b->stats.slow_log_skipped, 1);
        return false;
    }
    *skipped = atomic_exchange(&b->stats.slow_log_skipped, 0);
    return true;
}

static void session_flow_expired_log(struct broker *b, struct session *s, uint64_t high_ms)
{
    atomic_fetch_add(&b->stats.pause_expired, 1);
    unsigned long skipped;
    if (!session_log_allowed(b, &skipped))
        return;
    if (skipped)
        log_warn("%lu more slow subscriber events in the last second (see $SYS/broker/"
                 "messages/dropped/# and $SYS/broker/publishers/#)",
                 skipped);
    log_warn("slow subscriber '%s': its publishers were paused %llu ms "
             "(max_publisher_pause): messages for it are dropped until it catches up",
             s->client_id, (unsigned long long)high_ms);
}

static const char *const session_drop_names[SESSION_DROP_N] = {
    "offline queue full", "slow subscriber: new message", "slow subscriber: oldest message",
    "slow subscriber: disconnected"};

/* Whether s (s->seen set) had m, by its identity; recorded now if
 * `record` and s still records (seen_until). s->lock held. */
static bool seen_had(struct session *s, const struct msg *m, bool record)
{
    return record && broker_now_mono_ms() < s->seen_until
               ? msg_seen_add(s->seen, m->id_node, m->id_seq) == 1
               : msg_seen_has(s->seen, m->id_node, m->id_seq);
}

/* How a message reaches a session: directly (a publish routed to it), as a
 * late message of an old copy, or as one parked (session_deliver_parked). */
enum deliver_how { HOW_DIRECT, HOW_LATE, HOW_PARKED };

static int deliver(struct broker *b, struct session *s, struct msg *m, uint8_t qos, bool retain,
                   const uint32_t *ids, uint16_t n_ids, struct worker *cur, struct store_batch **bt,
                   struct pub_flow *flow, bool once, enum deliver_how how, uint64_t *row);

int session_deliver(struct broker *b, struct session *s, struct msg *m, uint8_t qos, bool retain,
                    const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                    struct store_batch **bt, struct pub_flow *flow)
{
    return deliver(b, s, m, qos, retain, ids, n_ids, cur, bt, flow, true, HOW_DIRECT, NULL);
}

int session_deliver_row(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                        bool retain, const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                        struct store_batch **bt, struct pub_flow *flow, uint64_t *row)
{
    return deliver(b, s, m, qos, retain, ids, n_ids, cur, bt, flow, true, HOW_DIRECT, row);
}

/* Whether s holds a stored message with sequence number seq. s->lock held. */
static bool row_held(const struct session *s, uint64_t seq)
{
    const struct qlist *lists[2] = {&s->inflight, &s->queue};
    for (int l = 0; l < 2; l++)
        for (const struct qmsg *q = lists[l]->head; q; q = q->next)
            if (q->seq == seq && q->stored)
                return true;
    return false;
}

bool session_row_left_locked(struct session *s, uint64_t row)
{
    assert(lock_held(&s->lock));
    /* (an ended session holds nothing; below rows_taken_below, what it
     * holds is not stored: its lists were taken, or its rows deleted) */
    return row != SESSION_NO_ROW && (s->ended || row < s->rows_taken_below);
}

void session_row_del(struct broker *b, struct session *s, uint64_t row)
{
    if (!b->store || atomic_load(&b->stopping))
        return; /* (stopping: what is in memory stays in the store, as at session_end) */
    /* Under the table's lock and the lock of the id's session there (a
     * copy shares the store's keys with it): a row of that session's is
     * either held by it now, or its put comes after this delete. */
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *w = registry_find(r, s->client_id, s->id_len);
    if (w)
        lock_acquire(&w->lock);
    if (!w || !row_held(w, row)) {
        struct store_batch *bt = NULL;
        struct store_batch *x = persist_batch(b, &bt);
        if (x) {
            store_msg_del(x, s->client_id, s->id_len, row);
            persist_submit(b, &bt, NULL, NULL);
        }
        log_debug("'%s': row %llu, stored for a message its copy no longer holds, leaves the store",
                  s->client_id, (unsigned long long)row);
    }
    if (w)
        lock_release(&w->lock);
    pthread_mutex_unlock(&r->lock);
}

int session_deliver_late(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                         bool retain, const uint32_t *ids, uint16_t n_ids, struct store_batch **bt)
{
    return deliver(b, s, m, qos, retain, ids, n_ids, NULL, bt, NULL, true, HOW_LATE, NULL);
}

int session_deliver_parked(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                           bool retain, const uint32_t *ids, uint16_t n_ids,
                           struct store_batch **bt)
{
    return deliver(b, s, m, qos, retain, ids, n_ids, NULL, bt, NULL, true, HOW_PARKED, NULL);
}

bool session_parking(struct session *s, uint64_t now_ms, uint64_t keep_ms)
{
    assert(lock_held(&s->lock));
    return s->park_open && session_holds(s, now_ms, keep_ms);
}

/* The window of recording identities after a move. Tests (debug builds
 * only) may shorten it with STARLING_TEST_SEEN_RECORD_MS: 0 stands for a
 * session that no longer records (its window over, or rebuilt from its
 * record), without waiting the 60 s out (tests/cluster/test_faults.py). */
static uint64_t seen_record_ms(void)
{
    return test_hook_u64("STARLING_TEST_SEEN_RECORD_MS", SESSION_SEEN_RECORD_MS);
}

int session_seen_start(struct session *s, uint64_t now_ms)
{
    if (!s->seen && !(s->seen = msg_seen_new()))
        return -ENOMEM;
    s->seen_until = now_ms + seen_record_ms();
    return 0;
}

int session_deliver_retained(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                             const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                             struct store_batch **bt)
{
    return deliver(b, s, m, qos, true, ids, n_ids, cur, bt, NULL, false, HOW_DIRECT, NULL);
}

static int deliver(struct broker *b, struct session *s, struct msg *m, uint8_t qos, bool retain,
                   const uint32_t *ids, uint16_t n_ids, struct worker *cur, struct store_batch **bt,
                   struct pub_flow *flow, bool once, enum deliver_how how, uint64_t *row)
{
    if (row)
        *row = SESSION_NO_ROW;
    struct qmsg *q = qmsg_new(m, qos, retain, ids, n_ids);
    if (!q) {
        atomic_fetch_add(&b->stats.msgs_dropped, 1);
        atomic_fetch_add(&b->stats.dropped[BROKER_DROP_NO_MEMORY], 1);
        if (flow)
            flow->refused = true; /* out of memory: not acknowledged either */
        return -ENOMEM;
    }
    struct worker *target = NULL;
    struct qmsg *drop = NULL;
    int why = -1;
    struct conn *kick = NULL;
    uint64_t log_dropped = 0, expired = 0;
    lock_acquire(&s->lock);
    bool dup = false;
    if (once && m->id_node) {
        /* a moved session: a message it had already (another path). In the
         * same hold of the lock as the queueing: a SessionState taken in
         * between (state_send, under this lock) had the identity in its
         * seen ranges but not the message, and the new owner then took
         * the message for one it had, by every path (issue 10: a message
         * published on the old owner during a move, lost) */
        if (session_owner_had(&s->direct_local, m, s->direct_from))
            dup = true; /* an old copy: m reached its new owner directly */
        else if (s->routed_from && m->route_index && m->route_index < s->routed_from)
            dup = true; /* routed to its old owner, which has it (routed_from) */
        else if (how == HOW_DIRECT && session_fold_had(s->fold, m))
            dup = true; /* came for a copy folded into it, had by a later owner */
        else if (s->seen && !s->ended)
            /* (a parked one is recorded when the wait is over) */
            dup = seen_had(s, m, how != HOW_PARKED);
    }
    if (dup) {
        lock_release(&s->lock);
        qmsg_free(q);
        if (log_get_level() >= LOG_LEVEL_DEBUG) {
            char tag[MSG_TAG_LEN];
            log_debug("'%s' had %016llx/%llu ('%s') already: not again", s->client_id,
                      (unsigned long long)m->id_node, (unsigned long long)m->id_seq,
                      msg_tag(msg_payload(m), m->payload_len, tag));
        }
        return 1;
    }
    if (s->ended || (!s->conn && qos == 0 && !b->cfg.queue_qos0_offline)) {
        /* QoS 0 messages are not kept for offline sessions unless configured */
        drop = q;
        if (qos > 0 && log_get_level() >= LOG_LEVEL_DEBUG) {
            char tag[MSG_TAG_LEN];
            log_debug("'%s' has ended: %016llx/%llu ('%s') dropped", s->client_id,
                      (unsigned long long)m->id_node, (unsigned long long)m->id_seq,
                      msg_tag(msg_payload(m), m->payload_len, tag));
        }
    } else {
        if (s->conn) {
            drop = queue_admit_online(b, s, q, flow, &why, &kick, &expired);
        } else {
            drop = queue_admit(&b->cfg, s, q);
            if (drop)
                why = SESSION_DROP_OFFLINE;
        }
        if (drop != q) {
            q->seq = session_next_seq(s);
            if (how != HOW_DIRECT && s->late_hold_until)
                queue_insert_late(s, q); /* before those held (session_late_hold) */
            else
                queue_push(s, q);
            if (how == HOW_PARKED) {
                q->parked = true;
                atomic_store(&s->parked_hint, true);
            }
            /* durable before the publisher's acknowledgement */
            if (qos > 0 && persist_wanted(b, s)) {
                persist_msg_put(b, bt, s, q, MSG_STATE_QUEUED);
                if (row && bt)
                    *row = q->seq;
            }
        }
        if (drop && drop != q && drop->stored)
            persist_msg_del(b, bt, s, drop);
        if (why >= 0) {
            s->dropped[why]++;
            uint64_t now = broker_now_mono_ms();
            if (why != SESSION_DROP_OFFLINE &&
                (!s->drop_logged_at || now - s->drop_logged_at >= SESSION_DROP_LOG_MS)) {
                s->drop_logged_at = now;
                log_dropped = s->dropped[SESSION_DROP_SLOW_NEW] +
                              s->dropped[SESSION_DROP_SLOW_OLDEST] +
                              s->dropped[SESSION_DROP_DISCONNECT];
            }
        }
        if (kick) /* under the lock: the connection is still attached */
            b->sink->kick(s->w, kick, MQTT_RC_QUOTA_EXCEEDED, false);
        if (s->conn)
            target = s->w;
    }
    lock_release(&s->lock);
    if (expired)
        session_flow_expired_log(b, s, expired);
    if (why >= 0) {
        atomic_fetch_add(&b->stats.msgs_dropped, 1);
        atomic_fetch_add(&b->stats.dropped[why], 1);
        if (kick)
            atomic_fetch_add(&b->stats.slow_disconnects, 1);
        /* rate-limited: at most one line per session per 10 s, one per node
         * per second */
        unsigned long skipped = 0;
        if (log_dropped && session_log_allowed(b, &skipped)) {
            if (skipped)
                log_warn("%lu more slow subscriber events in the last second (see "
                         "$SYS/broker/messages/dropped/# and $SYS/broker/publishers/#)",
                         skipped);
            log_warn("slow subscriber '%s': %s (%llu dropped for it so far)", s->client_id,
                     session_drop_names[why], (unsigned long long)log_dropped);
        }
    }
    qmsg_free(drop);
    if (target)
        b->sink->wake(target, s, cur);
    HOPTRACE_PAYLOAD(HOP_DELIVERED, msg_payload(m), m->payload_len);
    return 0;
}

/* The queue of s drained to its low-water mark: publishers paused on it
 * resume, and an exempt session is under backpressure again. s->lock held. */
static void session_flow_drained(struct broker *b, struct session *s)
{
    if (!queue_low(&b->cfg, s))
        return;
    s->flow_exempt = false;
    session_flow_release(b, s);
}

void session_flow_release(struct broker *b, struct session *s)
{
    assert(lock_held(&s->lock));
    if (!atomic_load(&s->flow_high))
        return;
    /* cleared before the waiters are taken: a publisher that registers
     * after this sees flow_high false and does not pause (see conn_flow.c) */
    atomic_store(&s->flow_high, false);
    uint64_t waiters = atomic_exchange(&s->flow_waiters, 0);
    if (waiters)
        b->sink->drained(b, waiters);
}

void session_flow_expire(struct broker *b, struct session *s, uint64_t paused_ms)
{
    lock_acquire(&s->lock);
    bool expired = atomic_load(&s->flow_high) && s->conn;
    if (expired) {
        s->flow_exempt = true;
        session_flow_release(b, s);
    }
    lock_release(&s->lock);
    if (expired)
        session_flow_expired_log(b, s, paused_ms);
}

void session_restore_msg(struct session *s, struct qmsg *q, uint8_t state)
{
    q->stored = true;
    if (q->seq >= s->next_seq)
        s->next_seq = q->seq + 1;
    if (state == MSG_STATE_WAIT_PUBCOMP) {
        q->pid = persist_pid_of(q->seq);
        q->state = MSG_STATE_WAIT_PUBCOMP;
        qlist_push(&s->inflight, q);
    } else {
        /* The store does not record that a message was sent (no write per
         * delivery): a restored one might have been, before the restart,
         * so its first PUBLISH now is a possible re-delivery and carries
         * DUP 1 [MQTT-3.1.1 3.3.1-1, MQTT-5.0 3.3.1-1]. A queued message
         * whose state is not MSG_STATE_QUEUED says so (session_flush). */
        q->state = q->qos == 1   ? MSG_STATE_WAIT_PUBACK
                   : q->qos == 2 ? MSG_STATE_WAIT_PUBREC
                                 : MSG_STATE_QUEUED;
        queue_push(s, q);
    }
}

static bool pid_in_use(const struct session *s, uint16_t pid)
{
    for (const struct qmsg *q = s->inflight.head; q; q = q->next)
        if (q->pid == pid)
            return true;
    return false;
}

/* Unlink and return the inflight message with this pid and state. */
static struct qmsg *inflight_take(struct session *s, uint16_t pid, uint8_t state)
{
    struct qmsg *prev = NULL;
    for (struct qmsg *q = s->inflight.head; q; prev = q, q = q->next) {
        if (q->pid == pid && q->state == state) {
            qlist_unlink(&s->inflight, prev, q);
            return q;
        }
    }
    return NULL;
}

static struct qmsg *inflight_find(struct session *s, uint16_t pid)
{
    for (struct qmsg *q = s->inflight.head; q; q = q->next)
        if (q->pid == pid)
            return q;
    return NULL;
}

/* The session's attached connection, when its worker is this thread. */
#define SESSION_ASSERT_OWNER(s)                                                                    \
    assert(!(s)->conn || sink_thread_worker == NULL || sink_thread_worker == (s)->w)

_Static_assert((int)SESSION_DROP_OFFLINE == (int)BROKER_DROP_OFFLINE &&
                   (int)SESSION_DROP_SLOW_NEW == (int)BROKER_DROP_SLOW_NEW &&
                   (int)SESSION_DROP_SLOW_OLDEST == (int)BROKER_DROP_SLOW_OLDEST &&
                   (int)SESSION_DROP_DISCONNECT == (int)BROKER_DROP_SLOW_DISCONNECT,
               "enum session_drop is the start of enum broker_drop");

/* Drop q, which left the queue or the inflight list; counted under `why`
 * (enum broker_drop) unless it is -1 (delivered, or refused knowingly). */
static void session_drop(struct broker *b, struct session *s, struct qmsg *q,
                         struct store_batch **bt, int why)
{
    if (why >= 0) {
        atomic_fetch_add_explicit(&b->stats.msgs_dropped, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->stats.dropped[why], 1, memory_order_relaxed);
    }
    if (q->stored)
        persist_msg_del(b, bt, s, q);
    qmsg_free(q);
}

void session_rejected_locked(struct broker *b, struct session *s, const struct msg *m)
{
    assert(lock_held(&s->lock));
    struct store_batch *bt = NULL;
    struct qmsg *prev = NULL, *q = s->queue.head;
    while (q) {
        struct qmsg *next = q->next;
        if (q->m == m && q->state == MSG_STATE_QUEUED) {
            if (q == s->late_last)
                s->late_last = prev;
            qlist_unlink(&s->queue, prev, q);
            s->queue_bytes -= qmsg_size(q);
            session_drop(b, s, q, &bt, -1);
        } else {
            prev = q;
        }
        q = next;
    }
    if (bt)
        persist_submit(b, &bt, NULL, NULL);
}

size_t session_fold_drop_locked(struct broker *b, struct session *s)
{
    assert(lock_held(&s->lock));
    struct store_batch *bt = NULL;
    struct qmsg *prev = NULL, *q = s->queue.head;
    size_t n = 0;
    while (q) {
        struct qmsg *next = q->next;
        if (q->state == MSG_STATE_QUEUED && !q->pid && !q->parked &&
            atomic_load(&q->m->hold) != MSG_HELD && session_fold_had(s->fold, q->m)) {
            if (q == s->late_last)
                s->late_last = prev;
            if (s->seen && q->m->id_node && q->m->id_seq)
                msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
            qlist_unlink(&s->queue, prev, q);
            s->queue_bytes -= qmsg_size(q);
            session_drop(b, s, q, &bt, -1);
            n++;
        } else {
            prev = q;
        }
        q = next;
    }
    if (bt)
        persist_submit(b, &bt, NULL, NULL);
    return n;
}

/* The wait of s's parked messages is over: each is taken (recorded in
 * s->seen) unless the session had it meanwhile (its old owner's copy, the
 * blind wait's, brought it or its identity), then it leaves the queue. */
static void unpark_locked(struct broker *b, struct session *s, struct store_batch **bt)
{
    uint64_t now = broker_now_mono_ms();
    struct qmsg *prev = NULL, *q = s->queue.head;
    size_t had = 0, taken = 0, left = 0;
    while (q) {
        struct qmsg *next = q->next;
        bool dup = false;
        if (q->parked && atomic_load(&q->m->hold) == MSG_HELD) {
            /* its batch not committed yet: judged once it is (a drop now
             * could delete its row before the put) */
            left++;
        } else if (q->parked) {
            q->parked = false;
            const struct msg *m = q->m;
            if (m->id_node && s->seen && !s->ended)
                dup = seen_had(s, m, true);
            if (dup) {
                queue_take(s, prev, q);
                session_drop(b, s, q, bt, -1);
                had++;
            } else {
                taken++;
            }
        }
        if (!dup)
            prev = q;
        q = next;
    }
    atomic_store(&s->parked_hint, left != 0);
    /* what the parked messages' senders had (their identities, kept apart
     * so as not to judge their own messages as had: fold_on_messages),
     * once none waits */
    for (size_t i = 0, n = !left && s->park_seen ? msg_seen_ranges(s->park_seen) : 0;
         s->seen && i < n; i++) {
        uint64_t node, lo, hi;
        msg_seen_range(s->park_seen, i, &node, &lo, &hi);
        msg_seen_add_range(s->seen, node, lo, hi);
    }
    if (!left) {
        msg_seen_free(s->park_seen);
        s->park_seen = NULL;
    }
    if (had || taken)
        log_info("'%s': %zu late message(s) of older copies waited for its old owner's: %zu "
                 "of them it had by then (not again), %zu taken (parked %llu ms)",
                 s->client_id, had + taken, had, taken,
                 (unsigned long long)(now - (s->park_since ? s->park_since : now)));
}

void session_flush_locked(struct broker *b, struct session *s)
{
    assert(lock_held(&s->lock));
    SESSION_ASSERT_OWNER(s);
    struct conn *c = s->conn;
    uint16_t receive_max = 0;
    if (!c || !b->sink->ready(c, &receive_max))
        return;
    uint64_t now = msg_now_real_ms();
    uint16_t window = b->cfg.max_inflight;
    if (receive_max && receive_max < window)
        window = receive_max;
    struct store_batch *bt = NULL;
    /* parked late messages (session.park_open): judged once the wait is over */
    if ((atomic_load(&s->parked_hint) || s->park_seen) &&
        !session_parking(s, broker_now_mono_ms(), b->cfg.cluster_resend_wait))
        unpark_locked(b, s, &bt);
    /* prev: the last parked message passed (NULL: none) */
    struct qmsg *q, *prev = NULL;
    while ((q = prev ? prev->next : s->queue.head)) {
        unsigned char hold = atomic_load(&q->m->hold);
        if (hold == MSG_HELD)
            break; /* not durable yet: it and what follows wait for the commit */
        if (q->parked) {
            /* it waits for the old owner's copy; what follows goes on (a
             * third copy's late messages come after newer ones, as ever) */
            prev = q;
            continue;
        }
        if (q == late_first_held(s))
            break; /* came directly: waits for the late ones (session_late_hold) */
        if (hold == MSG_REJECTED || (q->m->expiry_at && q->m->expiry_at <= now)) {
            /* [MQTT-5.0 3.3.2-5] an expired message is not delivered */
            queue_take(s, prev, q);
            session_drop(b, s, q, &bt, hold == MSG_REJECTED ? -1 : BROKER_DROP_EXPIRED);
            continue;
        }
        if (q->qos > 0) {
            if (s->inflight.len >= window)
                break;
            /* The packet id follows from the sequence number, so that it
             * survives a restart; an id still inflight (65535 messages ago)
             * holds the queue back until it is acknowledged. */
            uint16_t pid = persist_pid_of(q->seq);
            if (pid_in_use(s, pid))
                break;
            q->pid = pid;
        }
        /* a message restored from the store might have been sent before
         * the restart (session_restore_msg): DUP 1 */
        bool again = q->qos > 0 && q->state != MSG_STATE_QUEUED;
        HOPTRACE_PAYLOAD_AT(HOP_WORKER_TURN, msg_payload(q->m), q->m->payload_len, HOP_WORKER_TURN);
        HOPTRACE_PAYLOAD(HOP_ENCODED, msg_payload(q->m), q->m->payload_len);
        HOPTRACE_PEND(HOP_SOCK_WRITTEN, msg_payload(q->m), q->m->payload_len);
        int r = b->sink->publish(c, q, again, now);
        if (r == SINK_BUSY)
            break; /* the socket is full: resumed when the write completes */
        if (r == -ENOMEM && q->qos > 0) {
            /* out of memory: the connection closes (see sink_ops.publish),
             * the message stays first in the queue for the next one */
            q->pid = 0;
            break;
        }
        if (q->qos > 0)
            q->state = q->qos == 1 ? MSG_STATE_WAIT_PUBACK : MSG_STATE_WAIT_PUBREC;
        queue_take(s, prev, q);
        if (r <= 0 || q->qos == 0) {
            session_drop(b, s, q, &bt,
                         r > 0          ? -1
                         : r == -ENOMEM ? BROKER_DROP_NO_MEMORY
                                        : BROKER_DROP_TOO_LARGE);
            continue;
        }
        qlist_push(&s->inflight, q);
    }
    if (bt)
        persist_submit(b, &bt, NULL, NULL);
    if (s->flow_exempt || atomic_load_explicit(&s->flow_high, memory_order_relaxed))
        session_flow_drained(b, s);
}

void session_flush_owned(struct broker *b, struct session *s, struct worker *w)
{
    lock_acquire(&s->lock);
    if (s->conn && s->w == w)
        session_flush_locked(b, s);
    lock_release(&s->lock);
}

void session_resume_locked(struct broker *b, struct session *s)
{
    assert(lock_held(&s->lock));
    SESSION_ASSERT_OWNER(s);
    struct conn *c = s->conn;
    if (!c)
        return;
    uint64_t now = msg_now_real_ms();
    struct qmsg *prev = NULL, *q = s->inflight.head;
    while (q) {
        struct qmsg *next = q->next;
        int r = 0;
        if (q->state == MSG_STATE_WAIT_PUBCOMP) {
            /* [MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1] resend PUBREL for QoS 2 messages past PUBREC
             */
            b->sink->pubrel(c, q->pid);
            prev = q;
        } else if ((r = b->sink->publish(c, q, true, now)) > 0 || r == -ENOMEM) {
            /* [MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1] resend unacknowledged PUBLISH with DUP set;
             * out of memory: kept for the next connection (this one closes) */
            prev = q;
        } else {
            /* cannot be sent to this connection any more: drop it */
            qlist_unlink(&s->inflight, prev, q);
            struct store_batch *bt = NULL;
            session_drop(b, s, q, &bt, BROKER_DROP_TOO_LARGE);
            persist_submit(b, &bt, NULL, NULL);
        }
        q = next;
    }
    session_flush_locked(b, s);
}

void session_record_resume(struct session *s, uint64_t seq)
{
    s->next_seq = seq;
    s->record_seq = seq + 1;
    s->n_pids_used = 0;
}

/* Sequence numbers [lo, hi) were handed out by s (session_next_seq). */
static void pids_used_note(struct session *s, uint64_t lo, uint64_t hi)
{
    if (!s->record_seq || lo >= hi)
        return;
    struct seq_range *r = s->pids_used;
    uint8_t n = s->n_pids_used;
    if (n && r[n - 1].hi >= lo) {
        if (hi > r[n - 1].hi)
            r[n - 1].hi = hi;
        return;
    }
    if (n == SESSION_PIDS_USED_MAX) {
        /* the two nearest ranges become one, the gap between them used */
        uint8_t k = 0;
        for (uint8_t i = 1; i + 1 < n; i++)
            if (r[i + 1].lo - r[i].hi < r[k + 1].lo - r[k].hi)
                k = i;
        r[k].hi = r[k + 1].hi;
        memmove(&r[k + 1], &r[k + 2], (size_t)(n - k - 2) * sizeof(*r));
        n--;
    }
    r[n].lo = lo;
    r[n].hi = hi;
    s->n_pids_used = (uint8_t)(n + 1);
}

bool session_pid_used_since_record(const struct session *s, uint16_t pid)
{
    if (!s->record_seq)
        return false;
    uint64_t total = 0;
    for (uint8_t i = 0; i < s->n_pids_used; i++) {
        const struct seq_range *r = &s->pids_used[i];
        total += r->hi - r->lo;
        if (persist_seq_of_pid(r->lo, pid) < r->hi)
            return true;
    }
    return total >= 65535u;
}

int session_adopt_exchange_stored(struct broker *b, struct session *s, struct qmsg *q, uint16_t pid,
                                  uint8_t state, struct store_batch **bt)
{
    assert(lock_held(&s->lock));
    int r = session_adopt_exchange(s, q, pid, state);
    if (r == 0 && persist_wanted(b, s))
        persist_msg_put(b, bt, s, q,
                        state == MSG_STATE_WAIT_PUBCOMP ? MSG_STATE_WAIT_PUBCOMP
                                                        : MSG_STATE_QUEUED);
    return r;
}

int session_adopt_exchange(struct session *s, struct qmsg *q, uint16_t pid, uint8_t state)
{
    assert(lock_held(&s->lock));
    if (s->ended || pid == 0 || q->qos != 2 ||
        (state != MSG_STATE_WAIT_PUBREC && state != MSG_STATE_WAIT_PUBCOMP))
        return -EINVAL;
    /* A session that came here whole (a takeover) does not know which
     * packet ids it used since its last resumption from a record: only its
     * own exchanges in flight rule a packet id out. Its own old copy on
     * this node, folded into it (cn_moving_fold), holds such exchanges
     * after a restart: left out, their clients kept the PUBLISH awaiting a
     * PUBREL that never came (test_killed_nodes_subscribers_resumed_
     * elsewhere_repeatedly, lost past PUBREC). */
    if (pid_in_use(s, pid) || session_pid_used_since_record(s, pid))
        return -EEXIST;
    q->pid = pid;
    q->state = state;
    q->stored = false; /* not in this node's store (as a moved session's) */
    /* the first sequence number from next_seq on whose packet id is pid:
     * stored under it, the exchange comes back with pid after a restart
     * (session_restore_msg), and no message of s has it (those before
     * next_seq are older; another adopted exchange with it would have pid
     * in flight). New messages skip it (session_next_seq). next_seq itself
     * stays (the adopted id is not one this session handed out:
     * pids_used). */
    q->seq = persist_seq_of_pid(s->next_seq, pid);
    if (q->seq >= s->adopt_seq_end)
        s->adopt_seq_end = q->seq + 1;
    qlist_push(&s->inflight, q);
    return 0;
}

int session_resend_locked(struct broker *b, struct session *s, uint16_t pid)
{
    assert(lock_held(&s->lock));
    SESSION_ASSERT_OWNER(s);
    struct conn *c = s->conn;
    struct qmsg *q = c ? inflight_find(s, pid) : NULL;
    if (!q)
        return -ENOENT;
    if (q->state == MSG_STATE_WAIT_PUBCOMP)
        b->sink->pubrel(c, pid);
    else if (q->state == MSG_STATE_WAIT_PUBREC)
        b->sink->publish(c, q, true, msg_now_real_ms());
    return 0;
}

int session_puback_locked(struct broker *b, struct session *s, uint16_t pid,
                          struct store_batch **bt)
{
    assert(lock_held(&s->lock));
    struct qmsg *q = inflight_take(s, pid, MSG_STATE_WAIT_PUBACK);
    if (!q)
        return -ENOENT;
    session_drop(b, s, q, bt, -1);
    session_flush_locked(b, s);
    return 0;
}

int session_pubrec_locked(struct broker *b, struct session *s, uint16_t pid, uint8_t reason,
                          struct store_batch **bt)
{
    assert(lock_held(&s->lock));
    struct qmsg *q = inflight_find(s, pid);
    if (!q || q->qos != 2)
        return -ENOENT;
    if (reason >= 0x80) {
        /* 5.0: a PUBREC with an error ends the exchange */
        q = inflight_take(s, pid, q->state);
        session_drop(b, s, q, bt, -1);
        session_flush_locked(b, s);
        return 1;
    }
    if (q->state != MSG_STATE_WAIT_PUBCOMP) {
        q->state = MSG_STATE_WAIT_PUBCOMP;
        /* Remember PUBREC before sending PUBREL: after a restart the
         * exchange resumes with PUBREL, never with the PUBLISH again. */
        if (q->stored)
            persist_msg_put(b, bt, s, q, MSG_STATE_WAIT_PUBCOMP);
    }
    return 0;
}

void session_pubrec_undo(struct session *s, uint16_t pid)
{
    assert(lock_held(&s->lock));
    struct qmsg *q = inflight_find(s, pid);
    if (q && q->qos == 2 && q->state == MSG_STATE_WAIT_PUBCOMP)
        q->state = MSG_STATE_WAIT_PUBREC;
}

int session_pubcomp_locked(struct broker *b, struct session *s, uint16_t pid,
                           struct store_batch **bt)
{
    assert(lock_held(&s->lock));
    struct qmsg *q = inflight_take(s, pid, MSG_STATE_WAIT_PUBCOMP);
    if (!q)
        return -ENOENT;
    session_drop(b, s, q, bt, -1);
    session_flush_locked(b, s);
    return 0;
}

bool session_qos2_has(struct session *s, uint16_t pid)
{
    assert(lock_held(&s->lock));
    for (uint32_t i = 0; i < s->n_qos2_in; i++)
        if (s->qos2_in[i] == pid)
            return true;
    return false;
}

int session_qos2_add(struct session *s, uint16_t pid)
{
    assert(lock_held(&s->lock));
    if (s->n_qos2_in == s->cap_qos2_in) {
        uint32_t cap = s->cap_qos2_in ? s->cap_qos2_in * 2 : 4;
        uint16_t *p = realloc(s->qos2_in, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->qos2_in = p;
        s->cap_qos2_in = cap;
    }
    s->qos2_in[s->n_qos2_in++] = pid;
    return 0;
}

bool session_told_take(struct session *s, uint16_t pid)
{
    for (uint32_t i = 0; i < s->n_told; i++)
        if (s->told_ids[i] == pid) {
            s->told_ids[i] = s->told_ids[--s->n_told];
            s->wait_dirty = true;
            return true;
        }
    return false;
}

bool session_blind(struct session *s, uint64_t now_ms)
{
    if (s->blind_until && now_ms >= s->blind_until)
        session_wait_end(s); /* what the old copy tells now is stale */
    return s->blind_until != 0;
}

void session_wait_end(struct session *s)
{
    s->blind_until = 0;
    s->n_told = 0;
    s->n_blind_released = 0;
    s->wait_dirty = true;
}

bool session_holds(struct session *s, uint64_t now_ms, uint64_t keep_ms)
{
    /* (a wait handed on from claim to claim keeps its end, counted from
     * the first resumption: its holds there were counted from that too,
     * and a client that came back after the first hold was over had its
     * resend taken for new at once, chaos seed 15400) */
    return session_blind(s, now_ms) &&
           (s->blind_until > now_ms + keep_ms || now_ms < s->hold_from + keep_ms);
}

void session_hold_connected(struct session *s, uint64_t now_ms)
{
    if (!atomic_load_explicit(&s->blind_until, memory_order_acquire))
        return; /* nearly every session: no wait */
    lock_acquire(&s->lock);
    s->hold_from = now_ms;
    lock_release(&s->lock);
}

void session_blind_released(struct session *s, uint16_t pid, uint64_t now_ms)
{
    assert(lock_held(&s->lock));
    if (!session_blind(s, now_ms) || s->told || session_blind_was_released(s, pid) ||
        s->n_blind_released >= 65535)
        return;
    uint16_t *p = realloc(s->blind_released, (s->n_blind_released + 1) * sizeof(*p));
    if (!p) {
        /* unrecorded, a later telling of pid could take the client's next
         * message with it for one the old owner had (lost): the wait ends
         * now instead (a resend is taken for new: at worst a duplicate) */
        session_wait_end(s);
        return;
    }
    p[s->n_blind_released++] = pid;
    s->blind_released = p;
    s->wait_dirty = true;
}

bool session_blind_was_released(const struct session *s, uint16_t pid)
{
    for (uint32_t i = 0; i < s->n_blind_released; i++)
        if (s->blind_released[i] == pid)
            return true;
    return false;
}

uint16_t *session_qos2_pending(struct session *s, uint64_t now_ms, uint32_t *n)
{
    assert(lock_held(&s->lock));
    *n = 0;
    bool told = session_blind(s, now_ms) && s->told;
    uint32_t n_told = told ? s->n_told : 0;
    uint16_t *ids = malloc((s->n_qos2_in + n_told + 1) * sizeof(*ids));
    if (!ids)
        return NULL;
    for (uint32_t i = 0; i < s->n_qos2_in; i++)
        ids[(*n)++] = s->qos2_in[i];
    for (uint32_t i = 0; i < n_told; i++)
        if (!session_qos2_has(s, s->told_ids[i]))
            ids[(*n)++] = s->told_ids[i];
    return ids;
}

uint32_t session_told_set(struct session *s, uint16_t *ids, uint32_t n)
{
    assert(lock_held(&s->lock));
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (!session_blind_was_released(s, ids[i]))
            ids[k++] = ids[i];
    free(s->told_ids);
    s->told_ids = ids;
    s->n_told = k;
    s->told = true;
    s->n_blind_released = 0;
    return k;
}

bool session_qos2_remove(struct session *s, uint16_t pid)
{
    assert(lock_held(&s->lock));
    for (uint32_t i = 0; i < s->n_qos2_in; i++) {
        if (s->qos2_in[i] == pid) {
            s->qos2_in[i] = s->qos2_in[--s->n_qos2_in];
            return true;
        }
    }
    return false;
}

struct session_sub *session_sub_find(struct session *s, const char *f, uint16_t len)
{
    assert(lock_held(&s->lock));
    for (uint32_t i = 0; i < s->n_subs; i++)
        if (s->subs[i].len == len && memcmp(s->subs[i].filter, f, len) == 0)
            return &s->subs[i];
    return NULL;
}

int session_sub_set(struct session *s, const char *f, uint16_t len, uint8_t options,
                    uint32_t sub_id)
{
    struct session_sub *sub = session_sub_find(s, f, len);
    if (len > 7 && memcmp(f, "$share/", 7) == 0) {
        /* a shared group's message may be for it alone */
        s->routed_from = s->record_from = 0;
        free(s->fold);
        s->fold = NULL;
    }
    if (!sub) {
        if (s->n_subs == s->cap_subs) {
            uint32_t cap = s->cap_subs ? s->cap_subs * 2 : 1; /* most devices: one */
            struct session_sub *p = realloc(s->subs, cap * sizeof(*p));
            if (!p)
                return -ENOMEM;
            s->subs = p;
            s->cap_subs = cap;
        }
        char *copy = malloc((size_t)len + 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, f, len);
        copy[len] = '\0';
        sub = &s->subs[s->n_subs++];
        sub->filter = copy;
        sub->len = len;
    }
    sub->options = options;
    sub->sub_id = sub_id;
    return 0;
}

bool session_sub_del(struct session *s, const char *f, uint16_t len)
{
    assert(lock_held(&s->lock));
    struct session_sub *sub = session_sub_find(s, f, len);
    if (!sub)
        return false;
    free(sub->filter);
    *sub = s->subs[--s->n_subs];
    return true;
}

void session_end(struct broker *b, struct session *s)
{
    if (b->registry_ops && b->registry_ops->ended && !atomic_load(&b->stopping))
        b->registry_ops->ended(b->registry_ud, s);
    lock_acquire(&s->lock);
    s->ended = true;
    if (s->stored && !atomic_load(&b->stopping)) {
        struct store_batch *bt = NULL;
        log_debug("'%s' (claim %llu) ended: every record of its id leaves the store", s->client_id,
                  (unsigned long long)session_claim_epoch(s));
        persist_session_del(b, &bt, s);
        persist_submit(b, &bt, NULL, NULL);
    }
    struct session_sub *subs = s->subs;
    uint32_t n = s->n_subs;
    s->subs = NULL;
    s->n_subs = s->cap_subs = 0;
    struct qmsg *queue = s->queue.head, *inflight = s->inflight.head;
    s->queue.head = s->queue.tail = s->inflight.head = s->inflight.tail = NULL;
    s->queue.len = s->inflight.len = 0;
    s->queue_bytes = 0;
    session_late_clear_locked(s);
    s->n_qos2_in = 0;
    session_flow_release(b, s);
    lock_release(&s->lock);
    for (uint32_t i = 0; i < n; i++) {
        sub_index_remove(b->index, subs[i].filter, subs[i].len, s);
        free(subs[i].filter);
    }
    free(subs);
    qmsg_list_free(queue);
    qmsg_list_free(inflight);
}

/* ---- the order of late messages (cluster) ---------------------------------- */

void session_late_hold(struct session *s, uint64_t from, uint64_t epoch, uint64_t now_ms,
                       uint64_t until_ms)
{
    lock_acquire(&s->lock);
    if (!s->ended) {
        s->late_last = s->queue.tail;
        s->late_hold_until = until_ms ? until_ms : 1;
        s->late_hold_since = now_ms;
        s->late_hold_node = from;
        s->late_hold_epoch = epoch;
    }
    lock_release(&s->lock);
}

void session_late_clear_locked(struct session *s)
{
    assert(lock_held(&s->lock));
    s->late_last = NULL;
    s->late_hold_until = 0;
}

/* End the hold of s (s->lock held): the worker to wake, or NULL. */
static struct worker *late_end_locked(struct session *s, const char *why)
{
    uint32_t held = 0;
    for (const struct qmsg *q = late_first_held(s); q; q = q->next)
        held++;
    uint64_t ms = broker_now_mono_ms() - s->late_hold_since, now = msg_now_real_ms();
    /* what its client waited: since it was answered (connected_at) */
    long long client = s->conn && s->connected_at && now >= s->connected_at
                           ? (long long)(now - s->connected_at)
                           : -1;
    session_late_clear_locked(s);
    log_info("'%s': %u message(s) that came directly were held %llu ms (%lld ms after its client "
             "was answered), %s",
             s->client_id, held, (unsigned long long)ms, client, why);
    return s->conn ? s->w : NULL;
}

bool session_late_release(struct broker *b, struct session *s, uint64_t from, uint64_t epoch)
{
    struct worker *w = NULL;
    bool ended = false;
    lock_acquire(&s->lock);
    if (s->late_hold_until && s->late_hold_node == from && s->late_hold_epoch == epoch) {
        w = late_end_locked(s, "until the late messages of their old owner were queued");
        ended = true;
    }
    lock_release(&s->lock);
    if (w)
        b->sink->wake(w, s, NULL);
    return ended;
}

bool session_late_expire(struct broker *b, struct session *s, uint64_t now_ms)
{
    struct worker *w = NULL;
    bool ended = false;
    lock_acquire(&s->lock);
    if (s->late_hold_until && s->late_hold_until <= now_ms) {
        w = late_end_locked(s, "and their old owner's late messages did not come (timeout): "
                               "what comes from it later comes after them");
        ended = true;
    }
    lock_release(&s->lock);
    if (w)
        b->sink->wake(w, s, NULL);
    return ended;
}
