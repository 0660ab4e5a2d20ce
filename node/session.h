/*
 * session.h - MQTT sessions: subscriptions, outgoing queue and inflight
 * window, incoming QoS 2 state, will delay.
 *
 * A session outlives connections. At most one connection is attached at a
 * time; it lives on one worker (s->w), and only that worker writes to it.
 * The session holds both as opaque handles and reaches them only through the
 * broker's sink (sink.h); the registry (registry.h) attaches and detaches
 * connections and decides when a session ends.
 *
 * Every field below `lock` is guarded by it: any thread may enqueue a message
 * (session_deliver), the owning worker pumps the queue into the connection
 * (session_flush). Sessions are reference counted: the session table, the
 * attached connection and each pending worker command hold a reference.
 * Preconditions stated here ("s->lock held", "owning worker") are assert()ed
 * in debug builds.
 */
#ifndef STARLING_SESSION_H
#define STARLING_SESSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lock.h"
#include "msg.h"
#include "sink.h"

struct conn;
struct store_batch;
struct worker;
struct broker;

/* A message on its way to this session: queued, or inflight. */
struct qmsg {
    struct qmsg *next;
    struct msg *m;
    uint64_t seq; /* the session's sequence number; the packet id derives from it */
    bool stored;  /* a record of it is in the store */
    uint8_t qos;
    bool retain;
    uint8_t state; /* enum msg_state */
    uint16_t pid;
    uint16_t n_ids;
    /* cluster: a late message of another copy than the one a session
     * resumed blind waits for (session_deliver_parked): it waits in the
     * queue until that wait is over, and what follows it passes it */
    bool parked;
    union {
        uint32_t one;
        uint32_t *many;
    } ids;
};

/* A FIFO of qmsg. */
struct qlist {
    struct qmsg *head, *tail;
    uint32_t len;
};

/* Why a message for a session was dropped (struct session.dropped, and the
 * node's totals in $SYS/broker/messages/dropped/...). */
enum session_drop {
    SESSION_DROP_OFFLINE = 0,     /* queue_full_policy, offline session */
    SESSION_DROP_SLOW_NEW = 1,    /* connected: the arriving message (drop_new, or
                                   * backpressure after max_publisher_pause) */
    SESSION_DROP_SLOW_OLDEST = 2, /* connected: the oldest queued (drop_oldest) */
    SESSION_DROP_DISCONNECT = 3,  /* connected: disconnect policy */
    SESSION_DROP_N
};

/* ranges of struct session.pids_used */
#define SESSION_PIDS_USED_MAX 4

struct session_sub {
    char *filter;
    uint16_t len;
    uint8_t options;
    uint32_t sub_id;
};

/* cluster: how many origins an old copy keeps of its new owner's
 * RecordOwner.pubs_seen (struct session.direct_local) */
#define SESSION_PUBS_SEEN_MAX 3

/* cluster: an origin node and a publish number of it (RecordOwner.pubs_seen) */
struct session_pub_seen {
    uint64_t origin, pub;
};

/* The forwards a node had begun to deliver when a session joined its index
 * (cluster_fwd_pubs_seen): per origin node, the highest publish number. */
struct session_pubs_seen {
    size_t n;
    struct session_pub_seen e[];
};

/* The most later owners a stand-in's rule names (struct session_fold). */
#define SESSION_FOLD_LATER_MAX 4

struct session {
    /* (laid out without holes: an idle client is mostly this and its conn) */
    struct session *hnext; /* registry table chain (registry lock) */
    atomic_int refs;
    atomic_int flush_posted; /* id + 1 of the worker a flush is pending on */
    /* Flow control (any thread, no lock): flow_high is set while the queue
     * of the connected session is above its high-water mark and publishers
     * pause; flow_waiters has bit (id % 64) of each worker with a publisher
     * paused on it, told through its inbox once the queue drains (or the
     * session goes offline, or the pause expires). */
    atomic_bool flow_high;
    atomic_ullong flow_waiters;
    /* Its own connection is paused (it publishes to a slow session): nobody
     * waits on this session then, since it may be unable to drain (its
     * acknowledgements are not read), which would make a cycle. */
    atomic_bool reading_paused;

    /* everything from here on is guarded by lock */
    struct lock lock;
    uint32_t expiry_interval; /* seconds; 0xFFFFFFFF = never */
    struct conn *conn;        /* attached connection (opaque: see sink.h), or NULL */
    struct worker *w;         /* the worker that owns conn (opaque) */
    uint64_t next_seq;        /* from 0 for a new session; restored: after the last stored one */
    uint64_t disconnected_at; /* monotonic ms, while offline */
    uint64_t connected_at;    /* realtime ms the last connection attached (admin API) */
    /* subscriptions */
    struct session_sub *subs;
    uint32_t n_subs, cap_subs;
    /* outgoing */
    struct qlist queue;    /* not sent yet, in order */
    struct qlist inflight; /* sent, waiting for PUBACK / PUBREC / PUBCOMP */
    uint64_t queue_bytes;
    /* slow subscriber: messages dropped, by reason (kept for the admin API);
     * the last rate-limited log line (monotonic ms) */
    uint64_t dropped[SESSION_DROP_N];
    uint64_t drop_logged_at;
    uint64_t high_since; /* monotonic ms flow_high was set */
    struct conn *kicked; /* the connection the disconnect policy closed */
    bool flow_exempt;    /* max_publisher_pause ran out: the policy drops, no
                          * backpressure, until the queue drains */
    /* incoming QoS 2 packet ids awaiting PUBREL */
    uint16_t *qos2_in;
    uint32_t n_qos2_in, cap_qos2_in;
    /* cluster: resumed from its record while its old owner did not answer
     * (a stalled node, say), so without that owner's QoS 2 ids: until
     * blind_until (monotonic ms; 0: not blind) or until the old copy's state
     * tells them (told, told_ids), a PUBLISH its client resends (DUP) with
     * an id it does not hold waits unanswered (handle_publish.c,
     * handle_publish_park): the old owner may have taken it already and
     * deliver it itself. told_ids: the ids that copy held, each used for
     * the first PUBLISH with it here. blind_node: that owner (only its
     * copy's ids count: an older copy's may be stale). Written under
     * lock; atomic so that a QoS 2 PUBLISH reads it first without the lock
     * (0 nearly always). */
    _Atomic uint64_t blind_until;
    uint64_t blind_node;
    /* the claim epoch of blind_node's copy whose ids it waits for (0: not
     * known): another copy's ids of that node may be stale (owner_told) */
    uint64_t blind_epoch;
    /* blind_node said it kept no copy of id (SessionState.none_kept), and
     * the record this session resumed from is that node's persistent
     * session's, of claim blind_epoch: the ids of this node's own copy
     * moving out to it for that claim answer the wait (own_moved_keep) */
    bool blind_none_kept;
    /* when the session's current client connected while it waited
     * (monotonic ms; 0: none did): that connection's resends are held for
     * cluster_resend_wait from then, within blind_until (session_holds) */
    uint64_t hold_from;
    uint16_t *told_ids;
    uint32_t n_told;
    bool told;
    /* ids whose PUBREL came while blind and not told (its client finished
     * here an exchange that the old owner began): told later, they are
     * left out, as the client may have used them again since */
    uint16_t *blind_released;
    uint32_t n_blind_released;
    /* the wait (the fields above) changed since the session's store record
     * was last written: the next write of its QoS 2 ids writes the record
     * too (persist_qos2), so that a restart never brings back a told id
     * used up, nor forgets one released */
    bool wait_dirty;
    /* cluster: the QoS 2 ids of this node's old copy that was moving out to
     * node own_moved_to when this session's claim folded it (0: none):
     * that node may wait for them, and its late state, saying which of them
     * it saw released, lets them answer a resend here
     * (cn_session_on_late_state) */
    uint16_t *own_moved;
    uint32_t n_own_moved;
    uint64_t own_moved_to;
    uint64_t own_moved_epoch; /* the claim that copy moved out for */
    uint64_t own_moved_claim; /* that copy's own claim */
    /* a will waiting for its delay (offline only) */
    struct msg *pending_will;
    uint64_t will_at; /* monotonic ms */
    /* the user name of the last client that attached (ACL of deliveries),
     * NULL for an anonymous one */
    char *user;
    /* the cluster registry's epoch of the claim this session was last
     * granted with (0: none, or not clustered) */
    uint64_t epoch;
    /* cluster: the epoch its store record held when it was loaded at a
     * start (0: none, or not loaded): a stored copy's claim, which it
     * knows only as `epoch` once the start-up pass names it the owner
     * (cluster_session.c, owner_routed_index); written again with the
     * record while `epoch` is 0 (persist.c). */
    uint64_t stored_epoch;
    /* cluster: the epoch of the claim with which this session began clean
     * (clean start, [MQTT-3.1.2-4]; 0: it did not): what older copies or
     * claims of the id still hold was discarded with them and is not
     * handed on to it (cluster_session.c, msgs_send). */
    uint64_t clean_epoch;
    /* cluster: set once the session moved here (it may get a message both
     * directly and as a late message of an older copy): the identities it
     * got, each taken once (node/msg_seen.h); NULL otherwise. New
     * identities are recorded until seen_until (monotonic ms: the window in
     * which a message can take both paths), checked as long as it lives;
     * it follows the session when it moves on (SessionState). */
    struct msg_seen *seen;
    uint64_t seen_until;
    /* messages queued while held (struct msg.hold) since persist_session_put
     * last found none held in the queue: it walks the queue for them only
     * when this is not 0 (a walk per acknowledgement made delivering a
     * moved session of 31,000 messages quadratic, its lock held each time). */
    uint32_t held_hint;
    /* cluster: an old copy moving out whose new owner's routes are in
     * every route table from this index on (0: unknown, or not moving out):
     * a message routed with such a table reached the owner directly and is
     * not queued here (session_deliver returns 1). Set by cn_moving_add. */
    uint64_t direct_from;
    /* cluster: an old copy moving out, judged by the owners rule: the
     * first owner after its claim (node 0: not known), whose own publishes
     * its session got locally, without a route: those of `node` numbered
     * from `from` on in the same run (the high 32 bits of the number),
     * routed from `routed_from` (its session's, below which it dropped a
     * message as its old owner's) up to `until` (its first record's index,
     * the owners rule's bound), though routed before the bound, reached
     * that owner (session_owner_had; cluster_session.c, owner_local_note).
     * From RecordOwner.local_from (from 0: not known).
     * And the forwards that reached that owner's node before its session
     * joined the index there (RecordOwner.pubs_seen): per origin, the
     * highest publish number; an origin not listed sent none, when
     * pubs_known. A forward routed from `routed_from` on that was sent to
     * that owner too (struct msg.also_to) and is numbered above its
     * origin's entry came after the join: that owner's session took it. */
    struct session_owner_local {
        uint64_t node, from, routed_from, until;
        bool pubs_known;
        uint8_t n_pubs;
        struct session_pub_seen pubs[SESSION_PUBS_SEEN_MAX];
    } direct_local;
    /* cluster: a session that came here from another node (taken over or
     * resumed from its record, no copy of it here): the route table index
     * at which its claim was applied here (0: none). A forward routed with
     * an older table went to the node that owned the session then (its
     * routes stay until this node's are everywhere), which gives it to the
     * client or passes it on as a late message: taken here too, it came
     * twice (chaos seed 1081842757: forwards held in an outbox across a
     * restart, replayed after the session had moved to their destination).
     * Not for shared subscriptions. Set by the claim (cluster_registry.c). */
    uint64_t routed_from;
    /* cluster: that claim's session: the forwards that reached this node
     * before it joined the index (NULL: not known), for its record
     * (RecordOwner.pubs_seen). Set by the claim, freed with the session. */
    struct session_pubs_seen *pubs_seen;
    /* cluster: that claim's session: the first publish number (struct
     * msg.id_seq) this node gave once the session was in its index, from
     * which its own publishes reached it locally (0: none); written in its
     * record (RecordOwner.local_from). Set by the claim. */
    uint64_t local_from;
    /* cluster: a claim's session whose routed_from stays 0 (it drops no
     * forward) though it takes every forward that reaches this node from
     * the claim on: one this node held already when a claim of its own gave
     * it to its client again (no session came with the claim: from this
     * run's first committed route batch, or the claim's index), or one that
     * moved here beside an old copy of it (from the claim's index). For its
     * record alone (RecordOwner.routed_from), with pubs_seen and
     * local_from, which the claim sets too. 0: none. Set by the claim
     * (cluster_registry.c: claim_held_bound, claim_route_incoming). */
    uint64_t record_from;
    /* cluster: a claim's session beside an old copy of it here that its
     * claim folded (record_from set), judged by the owners rule: a forward
     * routed before `until` (record_from) reached this node for that copy,
     * and one that the copy would have left out as had by a later owner
     * (session_owner_had(&local, m, direct): the copy's direct_local and
     * bound) is left out here too. Before, the fold left such messages out
     * of what the copy held, but the forwards that came after it (held in
     * an origin's outbox across a kill) went to the session, which takes
     * every forward: chaos seed 9205 with --more, 36 QoS 2 duplicates.
     * Not for this node's own publishes (`here`: its id). NULL: none (no
     * copy folded, more than one, or a shared subscription); allocated by
     * the fold alone, so that the sessions without one do not carry it.
     * Set by the fold (cluster_session.c, fold_rule_set); in memory only,
     * freed with the session.
     * Also a stored copy standing in for a later claim of this node
     * (cn_session_stand_in): the owners rule it went by before the stop,
     * which its store does not keep, from the record, with `via` the
     * owner it names (not 0: a forward of a third node is left out only
     * when its origin sent it to that owner too, struct msg.also_to) and
     * `until` at most the index at which it began to stand in. A claim
     * that folds the stand-in takes that rule over (fold_rule_set).
     * `later`: the owners the record lists after `via` before `until`,
     * each from the index of its first record on (what was routed in its
     * run reached it, not `via`); one that is this node keeps what was
     * routed in its run. */
    struct session_fold {
        uint64_t until, direct, here, via;
        struct session_owner_local local;
        uint8_t n_later;
        struct session_fold_owner {
            uint64_t node, from;
        } later[SESSION_FOLD_LATER_MAX];
    } * fold;
    /* cluster: 1 + next_seq when the session was resumed here from its
     * replicated record (0: it was not). The packet ids it used since are
     * those of pids_used; an older copy's unfinished QoS 2 exchanges may
     * join with their own (session_adopt_exchange). */
    uint64_t record_seq;
    /* cluster: the sequence numbers a session resumed from its record
     * handed out since (session_next_seq), as ranges [lo, hi) in order;
     * their packet ids are the ones it used
     * (session_pid_used_since_record). Kept
     * apart from next_seq, which a fold moves past an old copy's stored
     * rows (copy_rows_del) without using the ids in between: counted as
     * used, they refused the dead owner's exchanges past PUBREC when it
     * came back. More ranges than fit merge the two nearest (the gap
     * counts as used: a refusal, never a packet id taken twice). */
    struct seq_range {
        uint64_t lo, hi;
    } pids_used[SESSION_PIDS_USED_MAX];
    uint8_t n_pids_used;
    /* 1 + the highest sequence number an adopted exchange took (at or
     * after next_seq then: session_adopt_exchange; 0: none): new messages
     * skip the ones such exchanges still hold, up to it */
    uint64_t adopt_seq_end;
    /* cluster: the order of late messages (docs/cluster.md, "Ordering of
     * late messages"). A session that came here with its old owner's
     * SessionState holds what reaches it directly (it stays queued, not
     * sent) until that owner's first batch of late messages after
     * SessionRouted is in (late_hold_node, late_hold_epoch), or until
     * late_hold_until (monotonic ms; 0: no hold); the late messages are
     * queued before the held ones, after late_last (the last queued message
     * before them; NULL: the held ones begin at the head). late_hold_since:
     * when the hold began (logged). session_late_hold and the functions
     * after it. */
    struct qmsg *late_last;
    uint64_t late_hold_until, late_hold_since, late_hold_node, late_hold_epoch;
    /* cluster: a session resumed from its record while its old owner
     * (blind_node) did not answer: the late messages of other, older
     * copies wait in the queue (qmsg.parked), not recorded in `seen`,
     * while park_open: until the last frame of blind_node's copy that
     * told its ids has brought its messages and identities (the end of
     * fold_on_messages, cluster_session.c), or until the blind wait is
     * over. Then each is taken only if the session
     * had not had it (that old owner may have delivered it: chaos seed
     * 1399756914). parked_hint: some qmsg may be parked (read without the
     * lock by the connection's timer). */
    bool park_open;
    atomic_bool parked_hint;
    uint64_t park_since; /* monotonic ms the first of them was parked (logged) */
    /* the identities that the frames of parked messages brought (what their
     * senders' copies got, their own messages among them), merged into
     * `seen` only once those are judged (NULL: none) */
    struct msg_seen *park_seen;
    /* blind_node answered that it kept nothing of the id
     * (SessionState.none_kept): no copy of it comes later to judge by, and
     * nothing is parked */
    bool blind_said_none;
    uint32_t will_expiry;
    uint16_t id_len;
    bool in_table; /* registry lock */
    uint8_t version;
    bool ended;
    bool stored; /* the session record is in the store */
    /* s->lock: next_seq when the rows of its messages last left the store
     * by other ways than each message's own end (persist_session_del), or
     * its messages were taken out for another copy (cn_session_take_msgs):
     * deletes that may have gone before the pending put of a held message
     * numbered below it (session_row_left_locked); 0: none */
    uint64_t rows_taken_below;
    char client_id[]; /* NUL-terminated */
};

struct session *session_new(const char *id, uint16_t len);
void session_free(struct session *s);

/* Reference counting; any thread. Inline: the publish path takes and drops
 * one per matching subscriber. */
static inline struct session *session_ref(struct session *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}
static inline void session_unref(struct session *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        session_free(s);
}

/* The claim s is known by: its own (`epoch`), or, for a copy restored from
 * the store that no claim of this node named yet (epoch 0), the one it is
 * stored under. Read under s->lock where the caller's other reads are. */
static inline uint64_t session_claim_epoch(const struct session *s)
{
    return s->epoch ? s->epoch : s->stored_epoch;
}

/*
 * Offer m to s with the subscription's granted QoS and flags. Called from
 * any thread, without s->lock. `cur` is the calling worker or NULL. The
 * session takes its own reference on m if it keeps it. ids: subscription
 * identifiers (copied). Returns 0 (queued, or dropped by the queue limits
 * and counted), 1 when s->seen shows s had m already (m's identity: not
 * queued again) or s is an old copy whose new owner got m directly
 * (s->direct_from), or -ENOMEM: s does not have m.
 */
struct pub_flow;
int session_deliver(struct broker *b, struct session *s, struct msg *m, uint8_t qos, bool retain,
                    const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                    struct store_batch **bt, struct pub_flow *flow);
/* session_deliver, and *row: the sequence number of the row it put into
 * *bt for m (SESSION_NO_ROW: none), for session_row_left_locked. */
#define SESSION_NO_ROW UINT64_MAX
int session_deliver_row(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                        bool retain, const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                        struct store_batch **bt, struct pub_flow *flow, uint64_t *row);
/* The batch that put row `row` of s (session_deliver_row) committed:
 * whether s no longer holds that message because it ended or its rows were
 * taken meanwhile (s->rows_taken_below: a SessionState, an old copy folded
 * or sent on, the end of its record). The delete of that take may have committed before the put,
 * and the row stayed: session_row_del deletes it then, unless the session
 * of the id in this node's table holds that number (any thread, no lock
 * held). */
bool session_row_left_locked(struct session *s, uint64_t row);
/* m was rejected (MSG_REJECTED: not stored, its publisher told so): it
 * leaves s's queue now, so that it takes no room there while s's client is
 * away. Before, it stayed until the client drained the queue, and an
 * offline session's queue filled with such messages dropped the accepted
 * ones after them (its bound, max_queued_bytes). s->lock held. */
void session_rejected_locked(struct broker *b, struct session *s, const struct msg *m);
void session_row_del(struct broker *b, struct session *s, uint64_t row);
/* How long a session that moved records the identities it gets (ms). */
#define SESSION_SEEN_RECORD_MS 60000

/* Whether m, held by an old copy moving out, reached a later owner
 * directly: routed at or past `direct` (not 0: the copy's bound), or, routed
 * before it, published on the first owner after the copy's claim and got
 * by that owner's session locally (o: the copy's direct_local). */
static inline bool session_owner_had(const struct session_owner_local *o, const struct msg *m,
                                     uint64_t direct)
{
    if (!direct)
        return false;
    if (m->route_index >= direct)
        return true;
    if (!o->node || m->route_index < o->routed_from || m->route_index >= o->until)
        return false;
    if (o->from && m->id_node == o->node && m->id_seq >= o->from &&
        m->id_seq >> 32 == o->from >> 32)
        return true;
    /* a forward to that owner too, which its node began to deliver after
     * the session had joined its index there */
    if (!o->pubs_known || !o->routed_from || !m->route_index || !m->id_node ||
        m->id_node == o->node || !msg_also_to(m, o->node))
        return false;
    uint64_t seen = 0;
    for (uint8_t i = 0; i < o->n_pubs; i++)
        if (o->pubs[i].origin == m->id_node)
            seen = o->pubs[i].pub;
    return m->id_seq > seen;
}

/* Whether m, offered to a session directly, is one that its fold rule f
 * (NULL: none) leaves out: routed before f->until, not published here, and
 * had by the later owner the rule names (struct session_fold). */
static inline bool session_fold_had(const struct session_fold *f, const struct msg *m)
{
    if (!f || !m->route_index || m->route_index >= f->until || m->id_node == f->here)
        return false;
    /* routed in a later owner's run: had if it reached that owner */
    for (uint8_t i = f->n_later; i > 0; i--) {
        const struct session_fold_owner *o = &f->later[i - 1];
        if (m->route_index >= o->from)
            return o->node != f->here && (m->id_node == o->node || msg_also_to(m, o->node));
    }
    return (!f->via || m->id_node == f->via || msg_also_to(m, f->via)) &&
           session_owner_had(&f->local, m, f->direct);
}

/* s's fold rule was just set (a stored copy standing in for a claim,
 * cluster_session.c): the queued messages it leaves out that s took
 * before, not sent to a client yet, leave s's queue and the store, and
 * their identities its record of them (its client never had them). A
 * message whose batch has not committed yet stays (at least once).
 * s->lock held. Returns how many left. */
size_t session_fold_drop_locked(struct broker *b, struct session *s);

/* The session moved here: record the identities it gets from now on (for
 * SESSION_SEEN_RECORD_MS). s->lock held. Returns 0 or -ENOMEM. */
int session_seen_start(struct session *s, uint64_t now_ms);

/*
 * The order of late messages (cluster, docs/cluster.md "Ordering of late
 * messages"). A session that moved here from node `from` (its SessionState
 * queued, its claim `epoch`) and is about to join the index begins a hold
 * (session_late_hold): what reaches it directly from then on is queued
 * (stored, counted against the queue limits) but not sent; late messages
 * (session_deliver_late, otherwise as session_deliver) go before those,
 * after the earlier late ones. session_late_release ends the hold when the
 * batch that `from` says is complete (SessionMessages.complete or .last,
 * for `epoch`) has been queued, session_late_expire once until_ms
 * (monotonic) has passed; both wake the session's worker and return true
 * when a hold ended. session_late_clear_locked ends it without a word, for
 * a session whose messages are taken (they move on in their queue's
 * order) or that ends. The first three and session_late_expire take
 * s->lock; session_late_clear_locked needs it held.
 */
void session_late_hold(struct session *s, uint64_t from, uint64_t epoch, uint64_t now_ms,
                       uint64_t until_ms);
int session_deliver_late(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                         bool retain, const uint32_t *ids, uint16_t n_ids, struct store_batch **bt);
bool session_late_release(struct broker *b, struct session *s, uint64_t from, uint64_t epoch);
/* A late message of a copy that a blind session does not wait for: as
 * session_deliver_late, but parked (struct session.park_open); recorded in
 * s->seen only once the wait is over (session_flush_locked). Returns 1
 * when s had it already. */
int session_deliver_parked(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                           bool retain, const uint32_t *ids, uint16_t n_ids,
                           struct store_batch **bt);
/* Whether s's parked messages still wait (s->lock held; keep_ms as
 * session_holds). */
bool session_parking(struct session *s, uint64_t now_ms, uint64_t keep_ms);
bool session_late_expire(struct broker *b, struct session *s, uint64_t now_ms);
void session_late_clear_locked(struct session *s);

/* The same for a retained message sent on SUBSCRIBE: sent whatever s->seen
 * says (a retained message comes again with each subscription). */
int session_deliver_retained(struct broker *b, struct session *s, struct msg *m, uint8_t qos,
                             const uint32_t *ids, uint16_t n_ids, struct worker *cur,
                             struct store_batch **bt);

/*
 * Flow control (docs/architecture.md, "Slow subscribers"). With `flow`
 * (the publish of a client), session_deliver adds s to flow->slow when its
 * queue is above the high-water mark under the backpressure policy, and sets
 * flow->refused when the message was dropped for the full queue of a
 * connected session (the publisher's QoS 1/2 acknowledgement must say so).
 *
 * session_flow_release: s no longer exerts backpressure (it went offline, or
 * ended); the workers waiting on it are told. s->lock held.
 * session_flow_expire: a publisher waited max_publisher_pause on s: the
 * policy applies to s (it drops instead of pausing) until its queue is below
 * the low-water mark; counted and logged. Any thread, takes s->lock.
 */
void session_flow_release(struct broker *b, struct session *s);
void session_flow_expire(struct broker *b, struct session *s, uint64_t paused_ms);

/* Pump queued messages into the attached connection, within the inflight
 * window. Only the worker owning s->conn may call it; s->lock held. */
void session_flush_locked(struct broker *b, struct session *s);
/* Flush s on behalf of worker w if w still owns its connection (a flush
 * posted earlier may arrive after the session moved). Takes s->lock. */
void session_flush_owned(struct broker *b, struct session *s, struct worker *w);

/* Resend inflight messages (DUP) and PUBREL on a resumed session, then
 * flush. Owning worker only; s->lock held. */
void session_resume_locked(struct broker *b, struct session *s);

/* Client acknowledgements. Return 0, or -ENOENT when pid is not inflight in
 * the right state. Owning worker only, with s->lock held and s->conn being
 * the connection the acknowledgement came on. Store operations they imply go
 * into *bt. session_pubrec_locked returns 0 when a PUBREL must follow (after
 * *bt commits), 1 when the exchange ended (a PUBREC with an error). */
int session_puback_locked(struct broker *b, struct session *s, uint16_t pid,
                          struct store_batch **bt);
int session_pubrec_locked(struct broker *b, struct session *s, uint16_t pid, uint8_t reason,
                          struct store_batch **bt);
int session_pubcomp_locked(struct broker *b, struct session *s, uint16_t pid,
                           struct store_batch **bt);
/* The record of a PUBREC (MSG_STATE_WAIT_PUBCOMP) could not be stored: the
 * message pid waits for its PUBREC again, as the store has it, so that its
 * client gets the PUBLISH again (DUP 1) and never a PUBREL that the store
 * does not know of (after a restart the PUBLISH would come again, a new
 * message to a client that had completed it). s->lock held. */
void session_pubrec_undo(struct session *s, uint16_t pid);

/* Append a message recovered from the store (start-up only). One past
 * PUBREC goes back inflight (its PUBREL is resent); any other is queued and
 * its next PUBLISH carries DUP 1, since it might have been sent before the
 * restart (the store does not record sends). */
void session_restore_msg(struct session *s, struct qmsg *q, uint8_t state);
struct qmsg *qmsg_new(struct msg *m, uint8_t qos, bool retain, const uint32_t *ids, uint16_t n_ids);

/* An older copy's unfinished QoS 2 exchange of q (a copy on another node
 * that sent it with packet id pid and is in state MSG_STATE_WAIT_PUBREC or
 * MSG_STATE_WAIT_PUBCOMP, or this node's own old copy after a restart)
 * joins the inflight list of s with that packet id: its client may hold
 * that PUBLISH awaiting PUBREL, which only pid completes [MQTT-5.0 4.3.3,
 * 4.4.0-1]. Returns 0 (s owns q now), -EEXIST when s has pid in flight, or
 * used it since it was resumed from its replicated record (record_seq; the
 * client's state of it is s's then), -EINVAL when s has ended or q is no
 * such exchange. s->lock held. */
int session_adopt_exchange(struct session *s, struct qmsg *q, uint16_t pid, uint8_t state);
/* s is resumed from its replicated record: its next new message gets
 * sequence number seq, and the packet ids it uses from there on are
 * recorded (record_seq, pids_used). s->lock held (or s not shared yet). */
void session_record_resume(struct session *s, uint64_t seq);
/* Whether s, resumed from its record, handed out packet id pid since
 * (false for a session that was not). s->lock held. */
bool session_pid_used_since_record(const struct session *s, uint16_t pid);
/* session_adopt_exchange, and q into the store (into *bt) with its state,
 * under a sequence number that gives pid back after a restart, as the
 * session's own inflight messages are: before, an adopted exchange was in
 * memory only, and a SIGKILL of this node lost it (issue 10). */
int session_adopt_exchange_stored(struct broker *b, struct session *s, struct qmsg *q, uint16_t pid,
                                  uint8_t state, struct store_batch **bt);
/* Send the next packet of the inflight exchange pid on the attached
 * connection: the PUBLISH again (DUP) or its PUBREL (an adopted exchange,
 * whose client is connected already). Returns 0 or -ENOENT. Owning worker
 * only; s->lock held. */
int session_resend_locked(struct broker *b, struct session *s, uint16_t pid);

/* Incoming QoS 2 ids (s->lock held). */
bool session_qos2_has(struct session *s, uint16_t pid);
int session_qos2_add(struct session *s, uint16_t pid);
bool session_qos2_remove(struct session *s, uint16_t pid);
/* Whether pid is among the old copy's told QoS 2 ids (struct
 * session.told_ids); removes it when it is. s->lock held. */
bool session_told_take(struct session *s, uint16_t pid);

/* A PUBREL for pid that was not one of the told ids (held here or not):
 * while the session is blind and not told, pid is remembered in
 * blind_released (out of memory: the wait ends). s->lock held. */
void session_blind_released(struct session *s, uint16_t pid, uint64_t now_ms);

/* Whether pid is in s->blind_released. s->lock held. */
bool session_blind_was_released(const struct session *s, uint16_t pid);
/* s learns its old copy's QoS 2 ids: ids[0..n) (taken over, a heap
 * array), less those whose PUBREL came while it waited (its client may
 * have used them again since), become its told ids. How many are left.
 * s->lock held. */
uint32_t session_told_set(struct session *s, uint16_t *ids, uint32_t n);
/* Whether s still waits for, or judges by, its old copy's QoS 2 ids
 * (blind_until not passed; at its end the wait and the ids go). s->lock
 * held. */
bool session_blind(struct session *s, uint64_t now_ms);
/* s's wait for its old copy's QoS 2 ids ends now (its time out, the old
 * node forgotten, or out of memory): the ids told and the PUBRELs
 * remembered go with it, and the store learns it (wait_dirty). s->lock
 * held. */
void session_wait_end(struct session *s);
/* Whether s's wait still holds what waits for those ids (its client's
 * resends, and the late messages of other copies): until keep_ms (the
 * configured cluster_resend_wait) before blind_until, and for keep_ms
 * after its client connected (hold_from), never past blind_until; in the
 * rest, ids that come still answer resends (CONFIG_RESEND_KNOW_MS).
 * s->lock held. */
bool session_holds(struct session *s, uint64_t now_ms, uint64_t keep_ms);
/* s's client connected at now_ms: if s waits for its old copy's ids, the
 * connection's resends are held for a whole hold (hold_from). Takes
 * s->lock. */
void session_hold_connected(struct session *s, uint64_t now_ms);
/* The QoS 2 ids s's client may still resend as s knows them: those s took
 * (qos2_in) and, while its wait runs, the told ids of its old copy that
 * the client has neither resent nor released here yet (told_ids), each
 * once. A malloc'd array of *n (room for one more), NULL when out of
 * memory. s->lock held. */
uint16_t *session_qos2_pending(struct session *s, uint64_t now_ms, uint32_t *n);

/* Subscriptions of the session (s->lock held). Returns the entry or NULL. */
struct session_sub *session_sub_find(struct session *s, const char *f, uint16_t len);
int session_sub_set(struct session *s, const char *f, uint16_t len, uint8_t options,
                    uint32_t sub_id);
bool session_sub_del(struct session *s, const char *f, uint16_t len);

/* End the session: remove its subscriptions from the index, drop queued and
 * inflight messages, delete its record. Called by the registry, which took
 * it out of the table. Takes s->lock. */
void session_end(struct broker *b, struct session *s);

void qmsg_free(struct qmsg *q);

#endif
