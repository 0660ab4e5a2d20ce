/*
 * cluster_session.c - persistent sessions across node faults, part of the
 * glue of cluster_node.h (docs/cluster.md "Faults").
 *
 * Session records. The owner of a persistent session (expiry > 0) keeps
 * its subscriptions, expiry and user in the replicated `sessions` table
 * (SessionRecord, written with the route changes: on claim, SUBSCRIBE and
 * UNSUBSCRIBE, so the SUBACK's wait covers it). A claimant whose previous
 * owner is down (not reported within cluster_down_after, or no SessionState
 * within cluster_claim_timeout) resumes the session from it
 * (cluster_registry.c). A session that ends for good proposes
 * SessionRelease(id, self, its epoch): the registry record and the session
 * record go.
 *
 * Late messages. The old owner keeps its copy subscribed after it sent the
 * SessionState, and sends what still arrives for it (SessionMessages) to
 * the new owner until that one says its routes are in effect everywhere
 * (SessionRouted), and for LATE_GRACE_MS after (forwards still on their
 * way), then ends it. A node that starts with stored sessions that the
 * registry gives to another node sends their messages to that node and
 * ends them. The new owner appends them to the session's queue.
 *
 * A stop (SIGTERM) waits, bounded, until the sessions of the clients it
 * disconnected were claimed elsewhere and handed over (cluster_node_hand_over).
 *
 * Dead nodes. The leader proposes NodeDown for a member that has not
 * reported for cluster_down_after (again every cluster_down_after while it
 * stays down): its routes go, but for those of the persistent sessions it
 * still owns.
 *
 * Threads: the registry hooks run on workers (changed) or anywhere (ended);
 * frames on the cluster thread; the poll on the glue's thread. The lists
 * are under cn->reg_mu.
 */
#include "cluster_node_int.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "broker.h"
#include "channel.pb-c.h"
#include "cmd.h"
#include "codec.h"
#include "conn.h"
#include "handle.h"
#include "log.h"
#include "msg.h"
#include "msg_seen.h"
#include "persist.h"
#include "raft_cmd.pb-c.h"
#include "session.h"
#include "store.h"
#include "testhook.h"
#include "topic.h"

#define INCOMING_KEEP_MS 60000
/* ... and longer while its claim is still in progress (incoming_held), up
 * to this long from its state */
#define INCOMING_HELD_MAX_MS (10 * 60000)
/* the channel reconnects with a backoff of at most 5 s (cluster/channel.h) */
#define CHAN_RECONNECT_GRACE_MS 6000

struct cn_moving {
    struct cn_moving *next;
    struct session *s; /* out of the table, still subscribed (a reference) */
    uint64_t to, epoch;
    uint64_t until_ms; /* end at the latest then */
    bool routed;       /* the new owner's routes are everywhere: send, end soon */
    bool graced;       /* routed seen: until_ms is the end of the grace (LATE_GRACE_MS) */
    bool now;          /* no state was sent (cn_moving_add) */
    bool known;        /* its claim known (so with `now`): the owners rule judges it (moving_end) */
    bool complete_sent;   /* routed: the first batch after it went (SessionMessages.complete) */
    bool claim_stored;    /* the claimant of `epoch` stores before answering (own_moved_keep) */
    uint64_t route_index; /* ... since this index (0: unknown) */
    /* moving to another node: what was routed with tables older than this
     * reached this node's copy, not the new owner (this node's applied
     * index when the copy began; once routed, the new owner's routes'
     * index, or this node's applied one when the SessionRouted came, if
     * later); a routed or flushing copy ends only once every member is
     * clear for it (members_clear), or at clear_cap_ms */
    uint64_t clear_index, clear_cap_ms;
    uint64_t clear_waits; /* the member it was last logged waiting for */
    /* not routed, its time over while a member may still hold forwards for
     * it (members_clear): it stays, and passes on what it collects each
     * poll as a routed copy in its grace does (graced is set too) */
    bool flushing;
    /* cn_moving_detach: what the ended copy held, for cn_moving_fold, and
     * the index from which what was routed reached its owner directly */
    struct qmsg *late;
    uint64_t fold_direct;
    struct cn_fold_into *into; /* cn_moving_fold_into: the batch its fold writes into */
    uint64_t judged_at; /* its bound not known: the applied index it was last looked for at */
    Starling__Chan__SeenRange *seen, **seenp;
    size_t n_seen;
    /* folded while it still waited itself for another node's ids
     * (own_moved_keep): the claim's session (claim ask_epoch) waits for
     * those now, and its fold asks that node (moving_ask), telling
     * ask_known, this copy's ids (malloc'd) */
    struct cn_wait_on ask;
    uint64_t ask_epoch;
    uint16_t *ask_known;
    uint32_t n_ask_known;
};

/* After a start, the old copies of sessions that moved away while this
 * node was down stay (collecting, then sent on) until every member has
 * been heard from in this run for this long, or until RESTART_SETTLE_CAP_MS
 * after the start (a member that stays down). A member replays its outbox
 * for this node once its channel connects (with a backoff of up to 5 s
 * after this node's start), and a frame that came before this node loaded
 * its store is sent again once a later one shows the gap or within
 * FWD_ACK_TIMEOUT_MS (3 s, node/cluster_fwd.c). Ended on their own timers
 * alone (CHAN_RECONNECT_GRACE_MS after the start-up pass, or
 * 2 cluster_claim_timeout after a late request's state), the copies were
 * gone when such a replay came: its messages matched nothing here and
 * were lost (test_killed_nodes_subscribers_resumed_elsewhere_repeatedly:
 * 190 messages of one node's publishers, held in its outbox and replayed
 * 0.7 s after the copy ended). */
#define RESTART_SETTLE_MS 4000
#define RESTART_SETTLE_CAP_MS 30000

/* A routed copy still sends, for this long, what arrives for it routed
 * before the new owner's routes: forwards that were on their way to this
 * node, held in their origin's outbox while this node was away or while
 * the channel reconnected (with a backoff of up to 5 s), arrive after the
 * SessionRouted. Ended at once, the copy was no longer in the index when
 * they came, and they matched nothing here: acknowledged messages lost
 * (test_rolling_restart_persistent_subscribers_follow: 71 of one
 * subscriber's, published on the claimant itself while this node
 * restarted; the claimant's SessionRouted overtook its own outbox's
 * replay). */
#define LATE_GRACE_MS CHAN_RECONNECT_GRACE_MS

/* A routed copy whose grace is over still stays while a member may hold
 * forwards for it in its outbox (cut off, stopped or down when the new
 * owner's routes went everywhere: every live member), routed with tables
 * older than the new owner's routes, which come here once it is back: the
 * copy passes them on as late messages. Ended at its grace, they matched
 * nothing here and were lost, and the new owner dropped its own copy of
 * them, sent there too, as its old owner's (chaos seed 11800 with --links
 * --overlap: 567 messages of a node cut off while another was stopped;
 * test_faults.py::test_forwards_held_by_a_cut_off_node_reach_a_session_
 * that_moved_meanwhile). Each member says, with its applied index, how far
 * its outbox to this node went (struct peer.clear). At most this long
 * after the grace: a member that never comes back must be forgotten
 * (starling ctl cluster forget) for what it held to be given up anyway. */
#define COPY_CLEAR_CAP_MS (10 * 60 * 1000)

/* A session that moved here holds what reaches it directly until its old
 * owner's first batch of late messages after SessionRouted is in
 * (session_late_hold), for at most as long as the old owner waits for the
 * SessionRouted before it sends everything it collected (cn_moving_add):
 * twice cluster_claim_timeout from its state, which came before the hold
 * began. Past it (the old owner dead or cut off, or the claim not
 * completed) the held ones go, and what the old owner sends later comes
 * after them. */
#define LATE_HOLD_MS(cn) (2 * (uint64_t)(cn)->b->cfg.cluster_claim_timeout)

struct cn_incoming {
    struct cn_incoming *next;
    struct session *s; /* a reference */
    uint64_t epoch;
    uint64_t since_ms, until_ms;
    uint64_t late_hold_ms; /* its hold of direct messages ends then at the latest (0: none) */
    bool fold_unsubmitted; /* its claim's batch, with the fold, not submitted yet */
};

/* ---- session records ----------------------------------------------------- */

/* Whether the encoded record rec says what s would write on node `self`
 * (its epoch aside: the state machine checks the registry's owner). The
 * node counts: NodeDown keeps the routes of a node that a record still
 * names, so a new owner always writes its own. So does the next packet
 * id: a copy resumed from the record numbers its ids away from those the
 * record names (cn_session_from_record), and one resumed on the record's
 * own node (its claim after another node's, which died before it wrote
 * anything) numbered away from them too. Unwritten, the record still
 * named the old ids, and the next resumption elsewhere numbered from the
 * same place as this one: chaos seed 9987 with --resend (2026-12-05) gave
 * a packet id that its client held awaiting PUBREL (from this copy) to a
 * new message, which replaced it there: lost. s->lock held. */
static bool record_same(const void *rec, size_t len, const struct session *s, uint64_t self)
{
    Starling__Cmd__SessionRecord *r = starling__cmd__session_record__unpack(NULL, len, rec);
    if (!r)
        return false;
    bool same = r->node == self && r->has_next_packet_id &&
                r->next_packet_id == persist_pid_of(s->next_seq) &&
                r->expiry_interval == s->expiry_interval && r->has_version &&
                r->version == s->version && !r->username == !s->user &&
                (!s->user || strcmp(r->username, s->user) == 0) && r->n_subs == s->n_subs;
    for (size_t i = 0; same && i < r->n_subs; i++) {
        const Starling__Cmd__SessionSub *x = r->subs[i];
        const struct session_sub *y = &s->subs[i];
        same = x->filter.len == y->len && memcmp(x->filter.data, y->filter, y->len) == 0 &&
               x->options == y->options && (x->has_sub_id ? x->sub_id : 0) == y->sub_id;
    }
    starling__cmd__session_record__free_unpacked(r, NULL);
    return same;
}

void cn_session_record_queue(struct cluster_node *cn, struct session *s)
{
    void *old = NULL;
    size_t olen = 0;
    bool have = fsm_session_record_get(cn->fsm, s->client_id, s->id_len, &old, &olen) == 0;
    struct cmd_batch *b = cmd_batch_new();
    int r = 0;
    lock_acquire(&s->lock);
    uint64_t epoch = s->epoch;
    uint32_t expiry = s->expiry_interval;
    /* a session that ends with its connection needs no record (one that a
     * persistent session of this id left is deleted); an unchanged record
     * is not written again (a persistent session's reconnection) */
    bool skip = !b || epoch == 0 || s->ended || (expiry == 0 && !have) ||
                (expiry != 0 && have && record_same(old, olen, s, cn->self));
    if (!skip) {
        struct cmd_session_sub *subs = calloc(s->n_subs + 1, sizeof(*subs));
        /* what reached this node before the session joined its index
         * (RecordOwner.pubs_seen), for a session that takes forwards from
         * its claim on, or that was here already (record_from) */
        uint64_t routed_from = s->routed_from ? s->routed_from : s->record_from;
        const struct session_pubs_seen *ps = routed_from ? s->pubs_seen : NULL;
        struct cmd_pub_seen *seen = calloc(ps ? ps->n + 1 : 1, sizeof(*seen));
        if (subs && seen) {
            for (uint32_t i = 0; i < s->n_subs; i++)
                subs[i] = (struct cmd_session_sub){s->subs[i].filter, s->subs[i].len,
                                                   s->subs[i].options, s->subs[i].sub_id};
            for (size_t i = 0; ps && i < ps->n; i++)
                seen[i] = (struct cmd_pub_seen){ps->e[i].origin, ps->e[i].pub};
            r = cmd_session_record_seen(b, s->client_id, s->id_len, cn->self, epoch, expiry,
                                        s->version, s->user, subs, expiry ? s->n_subs : 0,
                                        persist_pid_of(s->next_seq), routed_from, s->local_from,
                                        seen, ps ? ps->n : 0, ps != NULL, s->clean_epoch == epoch);
        } else {
            r = -ENOMEM;
        }
        free(subs);
        free(seen);
    }
    lock_release(&s->lock);
    free(old);
    if (!skip && r == 0)
        r = cn_queue_batch(cn, b);
    if (!skip && r < 0 && r != -ECANCELED)
        log_warn("cluster: the session record of '%s' is not replicated: %s", s->client_id,
                 strerror(-r));
    cmd_batch_free(b);
}

void cn_session_changed(void *ud, struct session *s)
{
    cn_session_record_queue(ud, s);
}

void cn_session_ended(void *ud, struct session *s)
{
    struct cluster_node *cn = ud;
    lock_acquire(&s->lock);
    uint64_t epoch = s->epoch;
    bool ended = s->ended;
    uint32_t expiry = s->expiry_interval;
    lock_release(&s->lock);
    uint64_t node = 0, cur = 0;
    /* only the session of the current claim releases it: a copy that a
     * newer claim (here or elsewhere) replaced does not */
    if (epoch == 0 || ended ||
        fsm_registry_get(cn->fsm, s->client_id, s->id_len, &node, &cur) != 0 || node != cn->self ||
        cur != epoch)
        return;
    /* Nor one that another session of the id replaced in this node's
     * table (registry_local_stage, registry_local_claim: the state or
     * record of this node's claim came), though it carries the current
     * claim's epoch: a session that adopt_lost rebuilt for that claim, or a
     * stored copy that the start-up pass named the claim's (its claim
     * applied before the pass, the client having connected here at once).
     * The claim's session is the one in the table. Before, its release
     * took the registry entry and the record away: the claim was
     * "overtaken ... while it was stored", the client's next claim was
     * claim 1 with session present 0, and the late messages of the
     * claim were dropped as "not here" (issue 10, chaos seed 1188520366
     * --more: 222 lost). */
    struct registry *t = &cn->b->registry;
    pthread_mutex_lock(&t->lock);
    struct session *in_table = registry_find(t, s->client_id, s->id_len);
    pthread_mutex_unlock(&t->lock);
    if (in_table && in_table != s) {
        log_info("cluster: the session of '%s' (claim %llu) was replaced here by another one of "
                 "its claim: the registry keeps it",
                 s->client_id, (unsigned long long)epoch);
        return;
    }
    if (expiry)
        log_info("cluster: the session of '%s' (claim %llu) ended here: its registry entry and "
                 "record go",
                 s->client_id, (unsigned long long)epoch);
    struct cmd_batch *b = cmd_batch_new();
    int r = b ? cmd_session_release(b, s->client_id, s->id_len, cn->self, epoch, 0) : -ENOMEM;
    if (r == 0)
        r = cn_queue_batch(cn, b);
    if (r < 0 && r != -ECANCELED)
        log_warn("cluster: the release of '%s' is not replicated: %s", s->client_id, strerror(-r));
    cmd_batch_free(b);
}

/* id's replicated session record, unpacked (free with
 * starling__cmd__session_record__free_unpacked), or NULL: none, or unreadable. */
static Starling__Cmd__SessionRecord *record_read(struct cluster_node *cn, const char *id,
                                                 uint16_t len)
{
    void *buf;
    size_t blen;
    if (fsm_session_record_get(cn->fsm, id, len, &buf, &blen) != 0)
        return NULL;
    Starling__Cmd__SessionRecord *rec = starling__cmd__session_record__unpack(NULL, blen, buf);
    free(buf);
    return rec;
}

/* The node whose QoS 2 ids a session resumed from rec waits for (0: none),
 * *epoch its copy's claim (0: not known): the registry's owner before the
 * claim (prev), the client's last node, when it is another node (a claim
 * that died before it wrote its record, or the record's own node); else
 * the record's node; else, a record of this node's own (this node's
 * claim's session lost in a kill before its store had it: claim_won,
 * adopt_lost), the owner before it in the record, which may have taken
 * the resend and handed its ids to the session that was lost (chaos seed
 * 9812 with --resend) */
static uint64_t record_blind(struct cluster_node *cn, const Starling__Cmd__SessionRecord *rec,
                             uint64_t prev, uint64_t prev_epoch, uint64_t *epoch)
{
    *epoch = 0;
    if (prev && prev != cn->self) {
        *epoch = prev_epoch;
        return prev;
    }
    /* (its epoch not known: the record may lag behind a later claim of
     * that node, and the owners list keeps a node's first claim of a run
     * only) */
    if (rec->node != cn->self)
        return rec->node;
    for (size_t i = rec->n_owners; i > 0; i--)
        if (rec->owners[i - 1]->node != cn->self)
            return rec->owners[i - 1]->node;
    return 0;
}

struct session *cn_session_from_record(struct cluster_node *cn, const char *id, uint16_t len,
                                       uint64_t prev, uint64_t prev_epoch, bool prev_none_kept)
{
    Starling__Cmd__SessionRecord *rec = record_read(cn, id, len);
    if (!rec)
        return NULL;
    struct session *s = session_new(id, len);
    if (s) {
        lock_acquire(&s->lock);
        /* the old node may hold messages for it that come here directly
         * too (its kept routes): each once */
        session_seen_start(s, broker_now_mono_ms());
        /* its packet ids start far from the old copies': the unfinished
         * QoS 2 exchanges of those copies, which come later, keep theirs
         * unless this one used them meanwhile (session_adopt_exchange), and
         * its client may hold such a PUBLISH awaiting PUBREL, which a new
         * PUBLISH with that id replaces there (paho): lost. The middle of
         * the largest gap between the next ids of the owners the record
         * names, as their records last told them (each went on numbering
         * up from there); at a random place when the record tells none.
         * Before, always at random: one in a few kills lost a message
         * (test_node_killed_under_qos12_traffic). Then a fixed step from
         * the last owner's next id (the only one the record had): half the
         * space came back to the first owner's ids after two resumptions
         * in a row (chaos seed 1093382011 with --more), a third after
         * three (test_faults.py::test_third_resumption_from_a_record_keeps_
         * off_the_first_copys_packet_ids). */
        uint64_t r = cmd_record_resume_pid(rec);
        if (r)
            r--;
        else if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
            r = broker_now_mono_ms();
        session_record_resume(s, r % 65535u);
        /* without the old owner's QoS 2 ids: a PUBLISH its client resends
         * waits for them a while (its old node may have taken it, and
         * delivers it itself: a stalled node that completes its commit
         * once it runs again; handle_publish_park) */
        uint64_t blind_epoch = 0;
        uint64_t blind = record_blind(cn, rec, prev, prev_epoch, &blind_epoch);
        if (blind && CN_RESEND_KNOW_MS(cn) != 0) {
            s->blind_until = broker_now_mono_ms() + CN_RESEND_KNOW_MS(cn);
            s->blind_node = blind;
            /* its copy of that claim: another copy's ids may be stale */
            s->blind_epoch = blind_epoch;
            /* that node kept nothing, and the record is that claim's own: a
             * persistent session's, which stored each QoS 2 id before its
             * PUBREC. Not a claim of expiry 0, which stores nothing (its
             * client may have completed an id there and used it again), nor
             * a clean one, whose client dropped its ids and may have used
             * them again (a new message not stored yet) */
            s->blind_said_none = prev_none_kept && blind == prev;
            s->blind_none_kept = prev_none_kept && blind_epoch && rec->node == blind &&
                                 rec->epoch == blind_epoch && rec->expiry_interval != 0 &&
                                 !(rec->has_began_clean && rec->began_clean);
        }
        s->version = (uint8_t)(rec->has_version ? rec->version : 4);
        s->expiry_interval = rec->expiry_interval;
        if (rec->username)
            s->user = strdup(rec->username);
        for (size_t i = 0; i < rec->n_subs; i++) {
            const Starling__Cmd__SessionSub *sub = rec->subs[i];
            if (sub->filter.len == 0 || sub->filter.len > 65535 ||
                !topic_filter_valid((const char *)sub->filter.data, sub->filter.len))
                continue;
            session_sub_set(s, (const char *)sub->filter.data, (uint16_t)sub->filter.len,
                            (uint8_t)sub->options, sub->sub_id);
        }
        lock_release(&s->lock);
        log_info("cluster: the session of '%s' resumed from its record (node %016llx down): %zu "
                 "subscription(s)",
                 s->client_id, (unsigned long long)rec->node, rec->n_subs);
    }
    starling__cmd__session_record__free_unpacked(rec, NULL);
    return s;
}

/* ---- late messages ---------------------------------------------------------- */

/* Takes the messages s holds (inflight then queued, in delivery order; a
 * QoS 2 message past PUBREC too: the owner completes its exchange or drops
 * it, cn_session_on_messages). Returns the list, oldest first, or NULL.
 * s->lock held. */
struct qmsg *cn_session_take_msgs(struct session *s)
{
    struct qmsg *head = NULL, **tail = &head;
    struct qlist *lists[2] = {&s->inflight, &s->queue};
    for (int l = 0; l < 2; l++) {
        struct qmsg *q = lists[l]->head;
        lists[l]->head = lists[l]->tail = NULL;
        lists[l]->len = 0;
        while (q) {
            struct qmsg *next = q->next;
            q->next = NULL;
            *tail = q;
            tail = &q->next;
            q = next;
        }
    }
    s->queue_bytes = 0;
    /* their rows leave the store with whoever takes them, maybe before the
     * pending put of a held one (session_row_left_locked) */
    s->rows_taken_below = s->next_seq;
    /* the held ones follow the late ones in this order (session_late_hold) */
    session_late_clear_locked(s);
    return head;
}

static struct session *owned_session(struct cluster_node *cn, const char *id, size_t len,
                                     uint64_t epoch);

/* Whether this node's session of id for claim `epoch` began clean. */
static bool began_clean(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch)
{
    struct session *s = owned_session(cn, id, len, epoch);
    if (!s)
        return false;
    lock_acquire(&s->lock);
    bool clean = s->clean_epoch == epoch;
    lock_release(&s->lock);
    session_unref(s);
    return clean;
}

/* Sequence numbers of msgs (taken out of an old copy), malloc'd; *n
 * their count. */
static uint64_t *copy_seqs(const struct qmsg *msgs, size_t *n)
{
    size_t k = 0;
    for (const struct qmsg *q = msgs; q; q = q->next)
        k++;
    uint64_t *v = malloc((k ? k : 1) * sizeof(*v));
    *n = 0;
    for (const struct qmsg *q = msgs; v && q; q = q->next)
        v[(*n)++] = q->seq;
    return v;
}

static int seq_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* w's next sequence number past top (a number of an old copy's rows), by
 * whole turns of the id space: w's packet ids go on where they were (a
 * session resumed from its record keeps its distance from the dead owner's
 * ids; which ids it used is pids_used, not next_seq). w->lock held. */
static void next_seq_past(struct session *w, uint64_t top)
{
    if (w->next_seq <= top && top < UINT64_MAX - 65535u)
        w->next_seq += (top - w->next_seq) / 65535u * 65535u + 65535u;
}

/*
 * An old copy `from` of id folded into this node's own session w of the id
 * (cn_moving_fold, cn_overtaken_add, a copy whose wait ended here): the
 * rows of its messages (`seqs`, its sequence numbers) leave the store in
 * the fold's batch *bt, after its puts of them in w (fold_on_messages),
 * so that a SIGKILL leaves both or neither: in a batch of their own,
 * submitted after the fold's, a node killed in between (about 8 ms)
 * loaded the rows again at its start, those the fold left out as having
 * reached w's owner directly too, and handed them on (chaos seed
 * 1188520366 --more: 150 QoS 2 duplicates). The copy and w share the store's keys (client
 * id, sequence number), so the copy ends without deleting its records
 * (cn_session_unstore_beside), and its rows stayed: after a restart they
 * loaded into w, whose client had had those messages, and were given
 * again, a QoS 2 message twice (issue 10: the kill test, the long chaos
 * run of seed 1946164343, docs/cluster.md "QoS 2 messages of a copy folded
 * on its node"). w's next number is first moved past the copy's (under
 * its lock), so that w never takes one of them later (a worker could
 * write such a row before this batch is submitted); then every number w
 * does not hold goes: a row of w's there is one w deleted already.
 */
static void copy_rows_del(struct cluster_node *cn, struct session *from, const char *id,
                          uint16_t len, const uint64_t *seqs, size_t n, struct store_batch **bt)
{
    struct broker *b = cn->b;
    if (!seqs || !n)
        return;
    pthread_mutex_lock(&b->registry.lock);
    struct session *w = registry_find(&b->registry, id, len);
    if (w == from)
        w = NULL;
    if (w)
        session_ref(w);
    pthread_mutex_unlock(&b->registry.lock);
    if (!w)
        return;
    uint64_t top = 0;
    for (size_t i = 0; i < n; i++)
        if (seqs[i] > top)
            top = seqs[i];
    lock_acquire(&w->lock);
    next_seq_past(w, top);
    uint64_t next = w->next_seq;
    size_t held_n = w->inflight.len + w->queue.len, k = 0;
    uint64_t *held = malloc((held_n ? held_n : 1) * sizeof(*held));
    const struct qlist *lists[2] = {&w->inflight, &w->queue};
    for (int l = 0; held && l < 2; l++)
        for (const struct qmsg *q = lists[l]->head; q && k < held_n; q = q->next)
            held[k++] = q->seq;
    lock_release(&w->lock);
    session_unref(w);
    if (!held)
        return;
    qsort(held, k, sizeof(*held), seq_cmp);
    size_t gone = 0;
    for (size_t i = 0; i < n; i++) {
        if (seqs[i] >= next || bsearch(&seqs[i], held, k, sizeof(*held), seq_cmp))
            continue;
        struct store_batch *x = persist_batch(b, bt);
        if (!x)
            break;
        store_msg_del(x, id, len, seqs[i]);
        gone++;
    }
    free(held);
    if (gone)
        log_debug("cluster: %zu row(s) of the old copy of '%.*s' folded here leave the store", gone,
                  (int)len, id);
}

/* The rows of an old copy folded into this node's session (copy_rows_del). */
struct fold_rows {
    struct session *from;
    const uint64_t *seqs;
    size_t n;
    struct cn_fold_into *into; /* or NULL: the fold's own batch */
    /* the node the copy was moving out to when folded (0: not a copy
     * moving out; this node: one that came back here, cn_moving_back) */
    uint64_t was_to;
};

static bool fold_on_messages(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionMessages *sm,
                             const struct cluster_fwd_seq *sq, const struct fold_rows *fr,
                             const uint16_t *own, uint32_t n_own);

/* What a batch of late messages says of its copy (SessionMessages). */
enum late_mark {
    LATE_PLAIN,
    LATE_LAST,     /* last: the copy ended */
    LATE_COMPLETE, /* complete: the first batch after the SessionRouted */
    LATE_STAYS,    /* complete and stays: the first batch of a flushing copy */
};

/* Whether q, held by a copy that stood in for a claim here (its rule:
 * `stood`, via 0: none), is left out of its fold: not sent to a client, and
 * had by the owner after its claim (session_fold_had). */
static bool stand_in_had(const struct session_fold *stood, const struct qmsg *q)
{
    return stood->via && q->state == MSG_STATE_QUEUED && !q->pid && session_fold_had(stood, q->m);
}

/* Send msgs (a list, freed here) for session id to node `to`, but those
 * routed with a route table at or past `direct` (not 0), which reached `to`
 * directly. To another node, sequenced (node/cluster_fwd.h): the frame goes
 * into the outbox for `to` in the store batch that takes msgs out of the
 * stored rows of `from` (the copy they were taken from; NULL: none), so
 * they are on this node's disk or on the owner's at every moment. To this
 * node (a fold), `was_to`: where the copy was moving out to (struct
 * fold_rows). */
static void msgs_send(struct cluster_node *cn, struct session *from, uint64_t to, const char *id,
                      uint16_t len, uint64_t epoch, struct qmsg *msgs, uint64_t direct,
                      enum late_mark mark, Starling__Chan__SeenRange **seen, size_t n_seen,
                      struct cn_fold_into *into, uint64_t was_to)
{
    struct store_batch *bt = NULL;
    struct session_owner_local local = {0};
    if (from && direct) {
        lock_acquire(&from->lock);
        local = from->direct_local;
        lock_release(&from->lock);
    }
    /* a copy that stood in for a claim here, folded into that claim's
     * session: what its owners rule leaves out (stand_in_rule_set) */
    struct session_fold stood = {0};
    if (from && to == cn->self) {
        lock_acquire(&from->lock);
        if (from->fold && from->fold->via)
            stood = *from->fold;
        lock_release(&from->lock);
    }
    if (from && to != cn->self && msgs) {
        lock_acquire(&from->lock);
        for (struct qmsg *q = msgs; q; q = q->next)
            persist_msg_del(cn->b, &bt, from, q);
        lock_release(&from->lock);
    }
    /* folded into this node's session: the copy's rows go in the fold's batch */
    size_t n_seqs = 0;
    uint64_t *seqs = from && to == cn->self ? copy_seqs(msgs, &n_seqs) : NULL;
    size_t n = 0, skipped = 0;
    for (struct qmsg **pp = &msgs; *pp;) {
        struct qmsg *q = *pp;
        if (log_get_level() >= LOG_LEVEL_DEBUG) {
            char tag[MSG_TAG_LEN];
            log_debug("cluster: late message of '%.*s' (%016llx/%llu, '%s', state %u) to "
                      "%016llx: %s",
                      (int)len, id, (unsigned long long)q->m->id_node,
                      (unsigned long long)q->m->id_seq,
                      msg_tag(msg_payload(q->m), q->m->payload_len, tag), (unsigned)q->state,
                      (unsigned long long)to,
                      session_owner_had(&local, q->m, direct) || stand_in_had(&stood, q)
                          ? "reached it directly"
                          : "sent");
        }
        if (session_owner_had(&local, q->m, direct) || stand_in_had(&stood, q)) {
            *pp = q->next;
            qmsg_free(q);
            skipped++;
        } else {
            pp = &q->next;
            n++;
        }
    }
    if (skipped)
        log_debug("cluster: %zu late message(s) of '%.*s' reached %016llx directly", skipped,
                  (int)len, id, (unsigned long long)to);
    /* sent also without messages: the owner then stops recording what the
     * session got (its msg_seen) */
    Starling__Chan__SessionMessage *mv = calloc(n ? n : 1, sizeof(*mv));
    Starling__Chan__SessionMessage **mp = calloc(n ? n : 1, sizeof(*mp));
    size_t k = 0;
    if (mv && mp)
        for (struct qmsg *q = msgs; q; q = q->next, k++) {
            /* an exchange its client may not have finished keeps its
             * packet id and state (cn_session_on_messages); the others are
             * numbered by the new owner */
            cn_msg_fill(&mv[k], q);
            mp[k] = &mv[k];
        }
    Starling__Chan__SessionMessages sm = STARLING__CHAN__SESSION_MESSAGES__INIT;
    sm.client_id.data = (uint8_t *)id;
    sm.client_id.len = len;
    sm.epoch = epoch;
    sm.n_msgs = k;
    sm.msgs = mp;
    sm.has_last = sm.last = mark == LATE_LAST;
    sm.has_complete = sm.complete = mark == LATE_COMPLETE || mark == LATE_STAYS;
    sm.has_stays = sm.stays = mark == LATE_STAYS;
    sm.n_seen = n_seen;
    sm.seen = seen;
    /* the QoS 2 ids the copy took from its client (an owner that resumed
     * the session from its record judges resends by them), and those it
     * was told and its client did not resend to it yet (session_qos2_pending) */
    uint32_t *told = NULL, *wait_released = NULL;
    if (from && to != cn->self) {
        lock_acquire(&from->lock);
        uint32_t n_ids = 0;
        uint16_t *ids = session_qos2_pending(from, broker_now_mono_ms(), &n_ids);
        told = ids ? malloc((n_ids + 1) * sizeof *told) : NULL;
        for (uint32_t i = 0; told && i < n_ids; i++)
            told[i] = ids[i];
        free(ids);
        sm.n_qos2_received = told ? n_ids : 0;
        /* whose they are: that copy's claim */
        sm.qos2_epoch = session_claim_epoch(from);
        sm.has_qos2_epoch = sm.qos2_epoch != 0;
        sm.qos2_received = told;
        sm.has_qos2_told = sm.qos2_told = told != NULL;
        /* a copy that still waits for another copy's ids tells that wait
         * too: its own ids are not all its client's */
        if (session_blind(from, broker_now_mono_ms()) && !from->told && from->blind_node &&
            from->blind_epoch &&
            (wait_released = malloc((from->n_blind_released + 1) * sizeof *wait_released))) {
            for (uint32_t i = 0; i < from->n_blind_released; i++)
                wait_released[i] = from->blind_released[i];
            sm.n_wait_released = from->n_blind_released;
            sm.wait_released = wait_released;
            sm.has_wait_node = sm.has_wait_epoch = true;
            sm.wait_node = from->blind_node;
            sm.wait_epoch = from->blind_epoch;
        }
        lock_release(&from->lock);
    }
    int r = k != n ? -ENOMEM : 0;
    uint64_t node = 0, cur = 0;
    if (r == 0 && to == cn->self) {
        /* the session came back here (cn_moving_fold): to its current
         * claim's copy, never to an older one that an old claim's epoch
         * would still find; nothing to one that a later claim began clean
         * (the client discarded the state: [MQTT-3.1.2-4]) */
        if (fsm_registry_get(cn->fsm, id, len, &node, &cur) == 0 && node == cn->self) {
            if (cur > epoch && began_clean(cn, id, len, cur)) {
                log_info("cluster: %zu message(s) of an older copy of '%.*s' discarded: its "
                         "client started clean (claim %llu)",
                         n, (int)len, id, (unsigned long long)cur);
                sm.n_msgs = 0;
                sm.n_seen = 0;
            }
            sm.epoch = cur;
        }
        struct fold_rows fr = {from, seqs, n_seqs, into, was_to};
        if (!fold_on_messages(cn, to, &sm, NULL, &fr, NULL, 0)) { /* not folded (moved on): alone */
            struct store_batch *dt = NULL;
            copy_rows_del(cn, from, id, len, seqs, n_seqs, &dt);
            persist_submit(cn->b, &dt, NULL, NULL);
        }
    } else if (r == 0 && (n || mark != LATE_PLAIN)) {
        r = cn_send_msgs_chunked(cn, to, &sm, &bt);
        if (r > 0)
            r = 0;
    }
    persist_submit(cn->b, &bt, NULL, NULL);
    if (r < 0) {
        atomic_fetch_add(&cn->b->stats.msgs_dropped, n);
        atomic_fetch_add(&cn->b->stats.dropped[BROKER_DROP_SESSION_MOVED], n);
        log_warn("cluster: %zu late message(s) of '%.*s' not sent to %016llx: %s", n, (int)len, id,
                 (unsigned long long)to, strerror(-r));
    } else if (mark == LATE_LAST && (n || to != cn->self)) {
        /* (also none: a copy that left out everything it collected as
         * having reached its owner directly) */
        log_info("cluster: %zu late message(s) of '%.*s' sent to its owner %016llx", n, (int)len,
                 id, (unsigned long long)to);
    } else if (n) { /* a routed copy's grace (LATE_GRACE_MS): every poll */
        log_debug("cluster: %zu late message(s) of '%.*s' sent to its owner %016llx", n, (int)len,
                  id, (unsigned long long)to);
    }
    free(seqs);
    free(told);
    free(wait_released);
    free(mv);
    free(mp);
    while (msgs) {
        struct qmsg *next = msgs->next;
        qmsg_free(msgs);
        msgs = next;
    }
}

/* Whether s has a shared subscription: a shared group's message came here
 * because its origin picked this node, whatever routes it had. s->lock
 * held. */
bool cn_subs_shared(const struct session *s)
{
    for (uint32_t i = 0; i < s->n_subs; i++)
        if (s->subs[i].len > 7 && memcmp(s->subs[i].filter, "$share/", 7) == 0)
            return true;
    return false;
}

/* An old copy's messages that msgs_send will leave out as having reached
 * the new owner directly (routed at or past `direct`, not 0) were recorded
 * in its identities (s->seen) when they came, but its client never had
 * them: those identities go, so that the set it sends with its last frame
 * (what its client got, merged by the owner) does not claim them. Kept,
 * they made the receiver drop the message when its own direct copy came
 * after that frame (a forward waiting in its origin's outbox, a node whose
 * copy moved on meanwhile): "had it already: not again", and nobody had it
 * (test_blackbox.py::test_session_moves_under_traffic, 3 QoS 1 and 3 QoS 2
 * messages of one publisher under load; test_session_moves.py). A message
 * already sent to a client (inflight) keeps its identity: its client may
 * have it. The owner's own publishes that it got locally go as well
 * (s->direct_local: msgs_send leaves them out too). s->lock held. */
static void seen_forget_direct(struct session *s, const struct qmsg *late, uint64_t direct)
{
    if (!s->seen || !direct)
        return;
    for (const struct qmsg *q = late; q; q = q->next)
        if (session_owner_had(&s->direct_local, q->m, direct) && q->state == MSG_STATE_QUEUED &&
            q->m->id_node && q->m->id_seq)
            msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
}

/* local, the first owner o after a copy's claim on node self: the
 * forwards that had reached o's node when its session joined the index
 * there, for session_owner_had. Those of self and of o itself are not
 * forwards to the copy; with more origins than fit, not known. */
static void owner_pubs_note(struct session_owner_local *local, const Starling__Cmd__RecordOwner *o,
                            uint64_t self)
{
    if (!local->node)
        *local = (struct session_owner_local){
            .node = o->node, .routed_from = o->routed_from, .until = o->index};
    local->n_pubs = 0;
    local->pubs_known = true;
    for (size_t i = 0; i < o->n_pubs_seen; i++) {
        const Starling__Cmd__PubSeen *p = o->pubs_seen[i];
        if (p->origin == self || p->origin == o->node)
            continue;
        if (local->n_pubs == SESSION_PUBS_SEEN_MAX) {
            local->pubs_known = false;
            local->n_pubs = 0;
            return;
        }
        local->pubs[local->n_pubs++] = (struct session_pub_seen){p->origin, p->pub_id};
    }
}

/* For an old copy of id moving out to `to` without a claim in progress: the
 * first route table index at which the new owner's routes are certainly in
 * effect, or 0 when not known. The session record names the owner only
 * once its routes have committed (queued after them, cluster_registry.c;
 * an owner's reconnection keeps its record, of an older epoch, when
 * nothing changed), so when the registry and the record name `to`, every
 * table from the current index on has them (+ 1: the record's entry may
 * be committed and its index not yet published to fsm_routes_index). */
/* What owner_routed_index found of the first owner after the copy's claim:
 * its node and the index of the entry after its own in the record's list
 * (another owner's first record: from there on, what was routed reached
 * that one; 0: none listed yet); and the owners listed after it, each
 * with the index of its first record (`later`, up to
 * SESSION_FOLD_LATER_MAX; `past`: the index of the first one that did not
 * fit, 0: none). */
struct owner_found {
    uint64_t node, next, past;
    uint8_t n_later;
    struct session_fold_owner later[SESSION_FOLD_LATER_MAX];
};

static uint64_t owner_routed_index(struct cluster_node *cn, const char *id, uint16_t len,
                                   uint64_t to, uint64_t own, uint64_t stored, bool owners_only,
                                   struct session_owner_local *local, struct owner_found *found)
{
    if (local)
        *local = (struct session_owner_local){0};
    if (found)
        *found = (struct owner_found){0};
    Starling__Cmd__SessionRecord *rec = record_read(cn, id, len);
    if (!rec)
        return 0;
    /* The first owner after the copy's own claim, as the record's list of
     * owners says (SessionRecord.owners, written by the state machine):
     * from the index of its first record on, every route table had its
     * routes, so what was routed since reached it (or a later owner),
     * though it may have died since, or the copy be sent on to another
     * owner. Before, the index was the one at which the copy looked: a
     * copy on a node stopped while its session moved twice took what the
     * first new owner had delivered and gave it to the second, which
     * delivered it again (chaos seeds 937187427 and 1946164343, QoS 2
     * duplicates).
     *
     * A stored copy found at a restart does not know its claim (`own` 0:
     * the start-up pass names only an owner's). It takes the later of the
     * epoch its store record held (`stored`, written with the record) and
     * that of the last owner the record names that is this node: each is
     * at most its claim. The first guards against a claim granted here
     * whose record never named this node; the second against one whose
     * store write had not committed when the node died (a record written
     * at CONNECT, before the claim's epoch was set). Too low, the copy
     * would leave out what was routed while it owned the session again:
     * that came to this node alone (lost); too high, it keeps what a later
     * owner had (QoS 2 duplicates, as before). Before, such a copy used
     * the rule at the end: a copy on a node SIGKILLed after its session
     * was resumed elsewhere took what that owner had delivered (the
     * forwards NodeDown's kept routes brought it) and gave it on to the
     * session's owner, which delivered it again (chaos seed 288425677:
     * 2,256 QoS 2 duplicates). An epoch at or past the
     * current claim's is not one of this record's (the id was released
     * and claimed again since): not known.
     *
     * The list keeps the last RECORD_OWNERS_MAX (cluster/fsm.c): when the
     * first owner after the copy's claim is no longer in it, the first
     * one listed after it is taken, whose index is later. The copy then
     * keeps more than it needs (duplicates, at least once), never less. */
    uint64_t node = 0, epoch = 0;
    if (fsm_registry_get(cn->fsm, id, len, &node, &epoch) != 0)
        node = epoch = 0;
    uint64_t mine = own;
    if (!mine) {
        mine = stored;
        /* (not the entry of the claim the registry names now when it is
         * this node's: that claim folds the copy, cn_moving_detach, and
         * came after the copy's own. Taken, it made the copy's claim
         * unknown, and the fold took what a later owner had delivered) */
        for (size_t i = 0; i < rec->n_owners; i++)
            if (rec->owners[i]->node == cn->self && rec->owners[i]->epoch > mine &&
                !(node == cn->self && rec->owners[i]->epoch == epoch))
                mine = rec->owners[i]->epoch;
        if (mine >= epoch)
            mine = 0;
    }
    uint64_t from = 0;
#ifndef NDEBUG
    /* tests: STARLING_TEST_OWNERS_UNKNOWN=1, the list shows no owner after
     * the copy's claim (as once RECORD_OWNERS_MAX came after it, with an
     * owner that has no entry yet: a record that never came) */
    const char *unknown = getenv("STARLING_TEST_OWNERS_UNKNOWN");
    if (unknown && strcmp(unknown, "1") == 0)
        mine = 0;
#endif
    for (size_t i = 0; mine && i < rec->n_owners && !from; i++) {
        const Starling__Cmd__RecordOwner *o = rec->owners[i];
        if (o->epoch <= mine || o->node == cn->self)
            continue;
        from = o->index;
        if (found) {
            found->node = o->node;
            if (i + 1 < rec->n_owners)
                found->next = rec->owners[i + 1]->index;
            for (size_t j = i + 1; j < rec->n_owners && !found->past; j++) {
                const Starling__Cmd__RecordOwner *l = rec->owners[j];
                if (found->n_later == SESSION_FOLD_LATER_MAX)
                    found->past = l->index;
                else
                    found->later[found->n_later++] = (struct session_fold_owner){l->node, l->index};
            }
        }
        /* Its own publishes routed before that index reached it too, if
         * its session had them locally (RecordOwner.local_from): its claim
         * joined the index there before its routes and its record were
         * everywhere. Before, such a copy kept them, and a session resumed
         * from the record that it was folded into gave them again (chaos
         * seed 1188520366 with --more: 2 QoS 2 duplicates; test_faults.py::
         * test_copy_folded_after_a_resumption_from_the_record_leaves_out_
         * what_its_owner_published). */
        if (local && o->has_local_from && o->local_from)
            *local =
                (struct session_owner_local){.node = o->node,
                                             .from = o->local_from,
                                             .routed_from = o->has_routed_from ? o->routed_from : 0,
                                             .until = o->index};
        /* And forwards it took though routed before that index: those that
         * reached its node after its session joined the index there
         * (RecordOwner.pubs_seen). Before, a copy kept them, and folded
         * into a session resumed from the record it gave them again (chaos
         * seed 7303 with --more: 3 QoS 2 duplicates; test_faults.py::
         * test_forward_routed_between_the_new_owners_claim_and_its_record_
         * comes_once). */
        if (local && o->has_pubs_seen_known && o->pubs_seen_known && o->has_routed_from &&
            o->routed_from)
            owner_pubs_note(local, o, cn->self);
    }
    bool named = rec->node == to;
    starling__cmd__session_record__free_unpacked(rec, NULL);
    if (from && !own)
        log_debug("cluster: the stored copy of '%.*s' takes its claim for %llu (stored %llu)",
                  (int)len, id, (unsigned long long)mine, (unsigned long long)stored);
    if (from || owners_only)
        return from;
    if (node != to)
        return 0;
    return named ? fsm_routes_index(cn->fsm) + 1 : 0;
}

uint64_t cn_copy_owners_index(struct cluster_node *cn, struct session *s, uint64_t to)
{
    lock_acquire(&s->lock);
    uint64_t own = s->epoch, stored = s->stored_epoch;
    bool shared = cn_subs_shared(s);
    lock_release(&s->lock);
    if (shared)
        return 0;
    struct session_owner_local local;
    uint64_t direct =
        owner_routed_index(cn, s->client_id, s->id_len, to, own, stored, true, &local, NULL);
    lock_acquire(&s->lock);
    if (!s->direct_local.node)
        s->direct_local = local;
    lock_release(&s->lock);
    return direct;
}

/* s, an old copy whose messages are judged by the owners rule (and maybe
 * another bound): what the first owner after its claim got locally
 * (s->direct_local), once, from the record. */
static void owner_local_note(struct cluster_node *cn, struct session *s)
{
    lock_acquire(&s->lock);
    uint64_t own = s->epoch, stored = s->stored_epoch;
    bool have = s->direct_local.node != 0;
    lock_release(&s->lock);
    if (have)
        return;
    struct session_owner_local local;
    owner_routed_index(cn, s->client_id, s->id_len, 0, own, stored, true, &local, NULL);
    lock_acquire(&s->lock);
    if (!s->direct_local.node)
        s->direct_local = local;
    lock_release(&s->lock);
}

/*
 * The stored rows of s, an old copy moving out whose bound `direct` (its
 * direct_from) is known now, of the messages it took before: those the
 * owner had (routed at or past it, or the owner's own publishes its
 * session got locally: session_owner_had) that hold no exchange with a
 * packet id leave the store (in
 * memory the copy keeps them, and leaves them out of its late messages,
 * msgs_send, of its state, state_send, and of its fold into a claim here
 * that brought a session, cn_moving_detach; after a restart the owners
 * rule leaves them out of the stored copy too). Before, they stayed until
 * the copy ended, and when this node claimed the id again meanwhile and
 * was SIGKILLed before it folded the copy (cn_moving_detach), the store,
 * whose keys are per client id, held them beside the claim's session: the
 * next start loaded both as one session, the claim's, which the owners
 * rule does not judge (no owner came after it), and its next owner
 * delivered them again (chaos seed 1188520366 with --more: 366 and 484 QoS
 * 2 duplicates with DUP 1; also when the kill came before the claim's
 * state was stored: the start-up pass names the stored copy the claim's).
 * Not when another session of the id is in this node's table, or came
 * with a claim here: their rows share the store's keys (a row of the same
 * sequence number is the other's). Nor for a copy with a shared
 * subscription (no bound). s->lock not held.
 */
static void moving_rows_past_bound_del(struct cluster_node *cn, struct session *s, uint64_t direct)
{
    struct broker *b = cn->b;
    if (!direct || !b->store)
        return;
    pthread_mutex_lock(&b->registry.lock);
    struct session *other = registry_find(&b->registry, s->client_id, s->id_len);
    pthread_mutex_unlock(&b->registry.lock);
    /* (nor beside a session of the id that came here with a claim and is
     * not in the table yet: its state's rows are stored already) */
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_incoming *x = cn->incoming; x && !other; x = x->next) {
        if (x->s == s || x->s->id_len != s->id_len ||
            memcmp(x->s->client_id, s->client_id, s->id_len) != 0)
            continue;
        lock_acquire(&x->s->lock);
        if (!x->s->ended)
            other = x->s;
        lock_release(&x->s->lock);
    }
    pthread_mutex_unlock(&cn->reg_mu);
    if (other && other != s)
        return;
    struct store_batch *bt = NULL;
    size_t n = 0;
    lock_acquire(&s->lock);
    struct qlist *lists[2] = {&s->inflight, &s->queue};
    for (int l = 0; l < 2 && s->stored && !s->ended; l++)
        for (struct qmsg *q = lists[l]->head; q; q = q->next) {
            if (!q->stored || !session_owner_had(&s->direct_local, q->m, direct) ||
                (q->state != MSG_STATE_QUEUED && q->pid != 0))
                continue;
            struct store_batch *x = persist_batch(b, &bt);
            if (!x)
                break;
            store_msg_del(x, s->client_id, s->id_len, q->seq);
            q->stored = false;
            n++;
        }
    lock_release(&s->lock);
    persist_submit(b, &bt, NULL, NULL);
    if (n)
        log_debug("cluster: %zu stored message(s) of the old copy of '%s' that its owner had "
                  "(routed from index %llu on, or its own publishes) leave the store",
                  n, s->client_id, (unsigned long long)direct);
}

/* s, an old copy moving out to `to`, takes no more what reaches its owner
 * directly, once that is known (owner_routed_index; `owners_only`: by the
 * owners rule alone); `rows`: and what it took of that before leaves the
 * store (moving_rows_past_bound_del). */
static void moving_direct_set(struct cluster_node *cn, struct session *s, uint64_t to,
                              bool owners_only, bool rows)
{
    lock_acquire(&s->lock);
    uint64_t own = s->epoch, stored = s->stored_epoch;
    lock_release(&s->lock);
    struct session_owner_local local;
    uint64_t direct =
        owner_routed_index(cn, s->client_id, s->id_len, to, own, stored, owners_only, &local, NULL);
    lock_acquire(&s->lock);
    if (!s->direct_from && !cn_subs_shared(s))
        s->direct_from = direct;
    if (!s->direct_local.node)
        s->direct_local = local;
    direct = s->direct_from;
    lock_release(&s->lock);
    if (direct)
        log_debug("cluster: the old copy of '%s' takes nothing routed from index %llu on (it "
                  "reaches %016llx directly)",
                  s->client_id, (unsigned long long)direct, (unsigned long long)to);
    if (rows)
        moving_rows_past_bound_del(cn, s, direct);
}

void cn_moving_add(struct cluster_node *cn, struct session *s, uint64_t to, uint64_t epoch,
                   bool now, bool known)
{
    /* A stored copy sent on at start-up collects, until it ends, what
     * arrives for it here: forwards held for this node while it was down
     * (sent on: the new owner may not have them), but also what is
     * published now, which the new owner gets directly. Those came twice
     * when the owner had stopped recording identities, e.g. after it was
     * restarted too (chaos seed 572744100: every node SIGKILLed, the old
     * node's copies sent 368 late messages per session after the restart,
     * 222 of them duplicates). Once the new owner's routes are known to be
     * everywhere (its record), what is routed from then on is not taken
     * here. */
    log_info("cluster: the session of '%s' moved to %016llx (claim %llu)%s", s->client_id,
             (unsigned long long)to, (unsigned long long)epoch,
             now ? ": what it holds follows it" : "");
    struct cn_moving *x = calloc(1, sizeof(*x));
    if (!x) {
        session_end(cn->b, s);
        session_unref(s);
        return;
    }
    lock_acquire(&s->lock);
    s->direct_from = 0;
    s->direct_local = (struct session_owner_local){0};
    lock_release(&s->lock);
    /* this node: one index, nothing comes "directly". A copy whose state
     * went to its claimant (not `now`) by the owners rule alone: what was
     * routed once a later owner than its own claim had its routes reached
     * that owner (cn_registry_on_request). Before, such a copy (a stored
     * one, sent on at start-up, then asked for its state after all) lost
     * the rule with its state and took everything that came for it
     * afterwards, among it what the claimant had got directly (forwards
     * held for this node while it was down), and sent it on as late
     * messages: chaos seed 1188520366 with --more, 312 QoS 2 duplicates
     * once the claimant, restarted, no longer knew their identities. */
    if (to != cn->self) {
        moving_direct_set(cn, s, to, !now, true);
        x->clear_index = fsm_visible(cn->fsm);
    }
    x->s = s;
    x->to = to;
    x->epoch = epoch;
    x->now = now;
    x->known = known;
    /* the new owner's claim completes within about cluster_claim_timeout;
     * without a claim in progress (`now`), forwards that other nodes held
     * for this node while it was down still come, once their channels
     * reconnect (with a backoff of up to 5 s): they go too */
    x->until_ms = cn_mono_ms() +
                  (now ? CHAN_RECONNECT_GRACE_MS : 2 * (uint64_t)cn->b->cfg.cluster_claim_timeout);
    pthread_mutex_lock(&cn->reg_mu);
    x->next = cn->moving;
    cn->moving = x;
    pthread_mutex_unlock(&cn->reg_mu);
}

void cn_moving_claim_stored(struct cluster_node *cn, const struct session *s, uint64_t to,
                            uint64_t epoch)
{
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x; x = x->next)
        if (x->s == s && x->to == to && x->epoch == epoch)
            x->claim_stored = true;
    pthread_mutex_unlock(&cn->reg_mu);
}

struct session *cn_moving_take(struct cluster_node *cn, const char *id, uint16_t len, uint64_t to,
                               uint64_t epoch)
{
    for (struct cn_moving **pp = &cn->moving; *pp; pp = &(*pp)->next) {
        struct cn_moving *x = *pp;
        if (x->now && x->to == to && x->epoch == epoch && x->s->id_len == len &&
            memcmp(x->s->client_id, id, len) == 0) {
            *pp = x->next;
            struct session *s = x->s;
            free(x);
            return s;
        }
    }
    return NULL;
}

static struct session *claim_session_at(struct cluster_node *cn, const char *id, size_t len,
                                        uint64_t epoch, bool test_hook);

/* On the worker of the session's connection: its parked PUBLISH packets
 * are judged now (the old owner's ids came). */
static void told_on_worker(void *ud)
{
    struct session *s = ud;
    lock_acquire(&s->lock);
    struct conn *c = s->conn && sink_thread_worker && s->w == sink_thread_worker ? s->conn : NULL;
    if (c)
        conn_ref(c);
    lock_release(&s->lock);
    if (c) {
        handle_publish_unpark(c);
        conn_unref(c);
    }
    session_unref(s);
}

/* s learnt its old copy's ids: its connection's worker judges what it
 * parked */
static void told_notify(struct cluster_node *cn, struct session *s)
{
    lock_acquire(&s->lock);
    struct worker *w = s->conn ? s->w : NULL;
    lock_release(&s->lock);
    if (w && cn->b->sink->call(w, told_on_worker, session_ref(s)) < 0)
        session_unref(s);
    /* and its parked late messages (struct session.park_open) */
    if (w)
        cn->b->sink->wake(w, s, NULL);
}

void cn_waits_forget(struct cluster_node *cn, uint64_t node)
{
    /* the sessions that wait at all, found without their locks (the
     * registry's lock is taken before a session's, never inside one) */
    struct registry *r = &cn->b->registry;
    struct session **v = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n_buckets; i++)
        for (struct session *s = r->buckets[i]; s; s = s->hnext) {
            if (!atomic_load_explicit(&s->blind_until, memory_order_acquire))
                continue;
            if (n == cap) {
                size_t c = cap ? cap * 2 : 16;
                struct session **g = realloc(v, c * sizeof *g);
                if (!g)
                    break; /* out of memory: the rest wait out their hold */
                v = g;
                cap = c;
            }
            v[n++] = session_ref(s);
        }
    pthread_mutex_unlock(&r->lock);
    size_t ended = 0;
    uint64_t now = broker_now_mono_ms();
    for (size_t i = 0; i < n; i++) {
        struct session *s = v[i];
        lock_acquire(&s->lock);
        bool end = session_blind(s, now) && !s->told && s->blind_node == node;
        if (end)
            session_wait_end(s);
        lock_release(&s->lock);
        if (end) {
            persist_session_update(cn->b, s); /* a restart does not bring it back */
            told_notify(cn, s);               /* what it held is judged now */
            ended++;
        }
        session_unref(s);
    }
    free(v);
    if (ended)
        log_info("cluster: %zu session(s) here waited for the QoS 2 ids of %016llx, which was "
                 "forgotten: their clients' resends are taken now",
                 ended, (unsigned long long)node);
}

/* The QoS 2 ids an old copy of id held (its late state, or its messages'
 * frames): the session of claim `epoch` here, resumed from its record
 * without them, judges its client's resends by them (struct
 * session.told_ids, handle_publish_park). Whether a session was there to
 * tell. */
/* Whether the ids of `from`'s copy of claim copy_epoch (0: not known)
 * answer s's wait (s->lock held). For the claim the frame is for, any of
 * `from`'s (its copy of the claim before it); ids passed on by another
 * node (relayed) or meant for an earlier claim here (strict) only from
 * the copy the wait is for (session.blind_epoch): another copy of that
 * node may hold an id that its client completed elsewhere since and used
 * again for a new message, which they would take for one that copy had
 * (lost). */
static bool wait_answered_by(const struct session *s, uint64_t from, uint64_t copy_epoch,
                             bool relayed, bool strict)
{
    if (s->blind_node != from || s->told)
        return false;
    if (copy_epoch && s->blind_epoch && (relayed || strict))
        return copy_epoch == s->blind_epoch;
    return !relayed;
}

static uint16_t *gone_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                               uint64_t epoch, uint32_t *n, struct cn_wait_on *w);
static uint16_t *stored_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                 uint64_t epoch, uint32_t *n, struct cn_wait_on *w);
static uint16_t *handed_ids(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch,
                            uint32_t *n, struct cn_wait_on *w);

/* ids[0..n) less those in released[0..n_released), in place: how many
 * are left. */
static uint32_t ids_less(uint16_t *ids, uint32_t n, const uint32_t *released, size_t n_released)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        bool out = false;
        for (size_t j = 0; j < n_released && !out; j++)
            out = released[j] == ids[i];
        if (!out)
            ids[k++] = ids[i];
    }
    return k;
}

/* a[0..na) then b[0..nb) into out (room for na + nb): each id in
 * 1..65535 once, in that order, less those released by s's client during
 * its wait (session_blind_was_released; s NULL: none, else s->lock held).
 * How many. */
static uint32_t ids_union(uint32_t *out, const uint32_t *a, size_t na, const uint16_t *b,
                          uint32_t nb, const struct session *s)
{
    uint32_t k = 0;
    for (size_t i = 0; i < na + nb; i++) {
        uint32_t x = i < na ? a[i] : b[i - na];
        bool dup = x < 1 || x > 65535 || (s && session_blind_was_released(s, (uint16_t)x));
        for (uint32_t j = 0; j < k && !dup; j++)
            dup = out[j] == x;
        if (!dup)
            out[k++] = x;
    }
    return k;
}

/* a[0..na) then b[0..nb), malloc'd (NULL: out of memory): the PUBRELs of
 * two waits down a chain, told on together. */
static uint32_t *ids_cat(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    uint32_t *out = malloc((na + nb + 1) * sizeof *out);
    for (size_t i = 0; out && i < na + nb; i++)
        out[i] = i < na ? a[i] : b[i - na];
    return out;
}

/* When the copy whose ids answer s's wait itself waited for this node's
 * copy of claim sm->wait_epoch (each claim of a chain resumed from the
 * record while the one before was away), that copy's QoS 2 ids, less those
 * released down the chain (wait_released): a malloc'd array of *n, or
 * NULL (not such a frame, or no such copy here). This node's copy folded
 * into s (own_moved; a copy moving out to this node itself: cn->handed),
 * given up to another claim, or ended lately. Before, a waiting copy told
 * only its own ids, the waits down the chain took them for all, and the
 * client's resend of a message that this node's copy had taken was taken
 * for new (chaos seeds 10021 and 10015 with --resend --more,
 * docs/cluster.md). w (filled, its released to free): when this node's
 * copy, given up, was itself still waiting for a third node's ids
 * (copy_ids). */
static uint16_t *chain_ids(struct cluster_node *cn, struct session *s,
                           const Starling__Chan__SessionMessages *sm, uint32_t *n,
                           struct cn_wait_on *w)
{
    *n = 0;
    if (!sm || !sm->has_wait_node || sm->wait_node != cn->self || !sm->has_wait_epoch ||
        !sm->wait_epoch)
        return NULL;
    uint16_t *ids = NULL;
    lock_acquire(&s->lock);
    if (s->own_moved_claim == sm->wait_epoch && s->n_own_moved &&
        (ids = malloc(s->n_own_moved * sizeof(*ids)))) {
        memcpy(ids, s->own_moved, s->n_own_moved * sizeof(*ids));
        *n = s->n_own_moved;
    }
    lock_release(&s->lock);
    if (!ids) {
        ids = gone_copy_ids(cn, s->client_id, s->id_len, sm->wait_epoch, n, w);
    } else if (w) {
        /* (the wait of that copy, if it still waited: its folded note) */
        uint32_t k = 0;
        free(handed_ids(cn, s->client_id, s->id_len, sm->wait_epoch, &k, w));
    }
    if (ids)
        *n = ids_less(ids, *n, sm->wait_released, sm->n_wait_released);
    return ids;
}

/* s, the session of claim `epoch` here, just learnt the QoS 2 ids of
 * node whose's copy of claim copy_epoch (owner_told). When s is no longer
 * its claim's owner (a copy moving out: a later claim of another node
 * took it over, from s's state with its wait), those ids go on to that
 * node as whose's (SessionMessages.qos2_of, as a frame passed on that
 * finds no session here): that owner took the wait with s's state, and
 * nothing else would answer it. Before, they stayed in s: chaos seed
 * 10048 with --resend --more, n2's copy learnt n1's ids 5 s after the
 * client had moved on to n3, whose wait for them was never answered, and
 * n3, claimed again later, answered a wait for its own ids with "none"
 * (1 QoS 2 duplicate at 3 subscribers). */
static void told_pass_on(struct cluster_node *cn, struct session *s, uint64_t whose, uint64_t epoch,
                         uint64_t copy_epoch)
{
    uint64_t node = 0, cur = 0;
    if (!copy_epoch || fsm_registry_get(cn->fsm, s->client_id, s->id_len, &node, &cur) != 0 ||
        node == cn->self || node == whose || cur <= epoch)
        return;
    lock_acquire(&s->lock);
    uint32_t n = s->told ? s->n_told : 0;
    uint32_t *ids = malloc((n + 1) * sizeof(*ids));
    for (uint32_t i = 0; ids && i < n; i++)
        ids[i] = s->told_ids[i];
    lock_release(&s->lock);
    if (!ids)
        return;
    Starling__Chan__SessionMessages on = STARLING__CHAN__SESSION_MESSAGES__INIT;
    on.client_id.data = (uint8_t *)s->client_id;
    on.client_id.len = s->id_len;
    on.epoch = cur;
    on.n_qos2_received = n;
    on.qos2_received = ids;
    on.has_qos2_told = on.qos2_told = true;
    on.has_qos2_of = true;
    on.qos2_of = whose;
    on.has_qos2_epoch = true;
    on.qos2_epoch = copy_epoch;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES;
    fr.session_messages = &on;
    struct store_batch *bt = NULL;
    int r = cluster_fwd_send_frame(cn->fwd, node, &fr, &bt);
    persist_submit(cn->b, &bt, NULL, NULL);
    free(ids);
    log_info("cluster: the %u QoS 2 id(s) that the old copy of '%s' (claim %llu) learnt of "
             "%016llx's go on to its owner %016llx (claim %llu)%s",
             (unsigned)n, s->client_id, (unsigned long long)epoch, (unsigned long long)whose,
             (unsigned long long)node, (unsigned long long)cur, r < 0 ? ": not sent" : "");
}

static uint32_t *wait_moved(struct session *s, uint64_t node, uint64_t epoch, uint64_t until,
                            const uint32_t *a, size_t na, const uint32_t *b, size_t nb,
                            size_t *n_rel);

/* A wait that a frame answered only in part (owner_told): the copy whose
 * ids it waited for was itself still waiting for another node's, so its
 * ids are not all its client's. The wait goes on to that node's copy once
 * the frame's messages are in (wait_go_on): they are the answering copy's,
 * taken as before, not parked for the next one. */
struct wait_next {
    struct session *s; /* a reference; NULL: none */
    uint64_t from, copy_epoch;
    bool relayed, strict;
    /* the node and claim waited for next; released: the PUBRELs of the
     * waits down the chain (malloc'd) */
    struct cn_wait_on w;
    uint32_t *known; /* the ids known so far, asked with (malloc'd) */
    uint32_t n_known;
    /* the copy that answered is older than the claim waited for, and the
     * wait goes on to the owner of a claim between them (gap_owner) */
    bool gap;
};

/* The wait owner_told found answered only in part (nx) goes on, if s
 * still waits for the same copy: it waits for nx->w's ids now, within
 * what is left of its time, and asks that node (cn_wait_ask) with the ids
 * known. Before, the part was taken for all: when the copy that answered
 * had itself waited for a third node's copy, which took the message the
 * client resends, the resend was taken for new (the question was asked
 * one level only, docs/cluster.md). */
static void wait_go_on(struct cluster_node *cn, struct wait_next *nx)
{
    struct session *s = nx->s;
    if (!s)
        return;
    size_t n_rel = 0;
    uint32_t *rel = NULL;
    uint64_t epoch = 0;
    lock_acquire(&s->lock);
    bool on = session_blind(s, broker_now_mono_ms()) &&
              wait_answered_by(s, nx->from, nx->copy_epoch, nx->relayed, nx->strict);
    if (on) {
        epoch = s->epoch;
        rel = wait_moved(s, nx->w.node, nx->w.epoch, atomic_load(&s->blind_until), nx->w.released,
                         nx->w.n_released, NULL, 0, &n_rel);
        if (!rel)
            session_wait_end(s); /* out of memory */
    }
    lock_release(&s->lock);
    if (on) {
        persist_session_update(cn->b, s);
        if (nx->gap)
            log_info("cluster: the session of '%s' (claim %llu) got the QoS 2 ids of %016llx's "
                     "copy of claim %llu, older than the one it waited for: it waits for those "
                     "of %016llx's copy of claim %llu, an owner between them, now",
                     s->client_id, (unsigned long long)epoch, (unsigned long long)nx->from,
                     (unsigned long long)nx->copy_epoch, (unsigned long long)nx->w.node,
                     (unsigned long long)nx->w.epoch);
        else
            log_info("cluster: the session of '%s' (claim %llu) got the QoS 2 ids of %016llx's "
                     "copy, which still waited for those of %016llx's copy of claim %llu: it "
                     "waits for those now",
                     s->client_id, (unsigned long long)epoch, (unsigned long long)nx->from,
                     (unsigned long long)nx->w.node, (unsigned long long)nx->w.epoch);
        struct store_batch *bt = NULL;
        if (rel)
            cn_wait_ask(cn, &nx->w, s->client_id, s->id_len, epoch, nx->known, nx->n_known, NULL, 0,
                        rel, n_rel, &bt);
        persist_submit(cn->b, &bt, NULL, NULL);
    }
    free(rel);
    free(nx->known);
    free(nx->w.released);
    session_unref(s);
    *nx = (struct wait_next){0};
}

/* The node whose copy of a claim between claims `after` and `before` of
 * id its client may have used last (0: none known), *epoch that claim (0:
 * not known): the record's, or the latest owner its list names before
 * `before`. Not `from`, whose copy of claim `after` answers a wait for
 * its copy of claim `before`: that node's claims since kept nothing (its
 * store has the older copy), and not this node. Claims of an id follow
 * one another (claim_propose): each claim between the two was another
 * node's, or one of `from`'s, lost. The owners list names a node's first
 * claim of a run: a later one of the same run is not known. */
static uint64_t gap_owner(struct cluster_node *cn, const char *id, uint16_t len, uint64_t after,
                          uint64_t before, uint64_t from, uint64_t *epoch)
{
    *epoch = 0;
    Starling__Cmd__SessionRecord *rec = record_read(cn, id, len);
    if (!rec)
        return 0;
    uint64_t node = 0;
    if (rec->epoch > after && rec->epoch < before) {
        node = rec->node;
        *epoch = rec->epoch;
    } else {
        for (size_t i = rec->n_owners; i > 0; i--) {
            const Starling__Cmd__RecordOwner *o = rec->owners[i - 1];
            if (o->epoch >= before)
                continue;
            if (o->epoch > after) { /* (the next one listed is `before` or later) */
                node = o->node;
                *epoch = o->epoch + 1 == before ? o->epoch : 0;
            }
            break;
        }
    }
    starling__cmd__session_record__free_unpacked(rec, NULL);
    if (node == from || node == cn->self) {
        node = 0;
        *epoch = 0;
    }
    return node;
}

/* ... nx (filled, for wait_go_on, when the frame answers s's wait only in
 * part: sm's copy, or this node's copy of sm->wait_epoch, still waited
 * for a third node's ids). */
static bool owner_told(struct cluster_node *cn, uint64_t from, const ProtobufCBinaryData *id,
                       uint64_t epoch, const uint32_t *received, size_t n_received,
                       const uint16_t *own, uint32_t n_own, uint64_t copy_epoch, bool relayed,
                       const Starling__Chan__SessionMessages *sm, struct wait_next *nx)
{
    struct session *s = claim_session_at(cn, (const char *)id->data, id->len, epoch, false);
    uint64_t node = 0, later = 0;
    bool strict = false;
    /* a frame for an earlier claim (the old node's own, sent before it
     * heard of the later one) tells the later claim's session here, if that
     * one was resumed from the sender's record: blind_node below */
    if (!s && fsm_registry_get(cn->fsm, (const char *)id->data, id->len, &node, &later) == 0 &&
        node == cn->self && later > epoch) {
        s = claim_session_at(cn, (const char *)id->data, id->len, later, false);
        /* this node's own ids count for the claim whose wait the sender
         * answered only: the later claim's session may have taken and
         * released them since, unknown to the sender */
        n_own = 0;
        strict = true;
    }
    if (!s)
        return false;
    uint64_t now = broker_now_mono_ms();
    lock_acquire(&s->lock);
    bool blind = session_blind(s, now) && wait_answered_by(s, from, copy_epoch, relayed, strict);
    lock_release(&s->lock);
    uint32_t n_chain = 0;
    struct cn_wait_on cw = {0};
    uint16_t *chain = blind ? chain_ids(cn, s, sm, &n_chain, &cw) : NULL;
    /* for the later claim's session: less those its client released
     * there while it waited (every PUBREL in the wait is remembered,
     * blind_released, and goes down the chain with the wait). The copy the
     * sender waited for ended, folded, when the wait had begun already.
     * Before, a later claim's session took no chain ids: chaos seed 10102
     * with --resend --more --no-lb (docs/cluster.md) */
    if (chain && strict) {
        lock_acquire(&s->lock);
        uint32_t k = 0;
        for (uint32_t i = 0; i < n_chain; i++)
            if (!session_blind_was_released(s, chain[i]))
                chain[k++] = chain[i];
        n_chain = k;
        lock_release(&s->lock);
    }
    uint16_t *ids = blind ? malloc((n_received + n_own + n_chain + 1) * sizeof *ids) : NULL;
    uint32_t n = 0;
    for (size_t i = 0; ids && i < n_received; i++)
        if (received[i] >= 1 && received[i] <= 65535)
            ids[n++] = (uint16_t)received[i];
    /* and this node's own, which the sender waited for (own), and those of
     * the copy the sender's copy waited for (chain): once each */
    for (uint32_t i = 0; ids && i < n_own + n_chain; i++) {
        uint16_t x = i < n_own ? own[i] : chain[i - n_own];
        bool dup = false;
        for (uint32_t j = 0; j < n && !dup; j++)
            dup = ids[j] == x;
        if (!dup)
            ids[n++] = x;
    }
    free(chain);
    /* the copy that answers still waited for a third node's ids (the
     * frame says so, wait_node), or this node's copy it waited for did
     * (cw): an earlier claim's copy, so that the chain ends */
    uint64_t next = 0, next_epoch = 0;
    if (sm && sm->has_wait_node && sm->wait_node && sm->wait_node != cn->self &&
        sm->has_wait_epoch && sm->wait_epoch) {
        next = sm->wait_node;
        next_epoch = sm->wait_epoch;
    } else if (cw.node && cw.node != cn->self && cw.epoch) {
        next = cw.node;
        next_epoch = cw.epoch;
    }
    /* or the copy that answers is of an older claim than the one waited
     * for, whose node lost it: the ids of an owner between them count */
    bool gap = false;
    if (!next && nx && blind && !relayed && !strict && copy_epoch) {
        lock_acquire(&s->lock);
        uint64_t waited = s->blind_epoch;
        lock_release(&s->lock);
        if (waited && copy_epoch + 1 < waited)
            next = gap_owner(cn, (const char *)id->data, (uint16_t)id->len, copy_epoch, waited,
                             from, &next_epoch);
        gap = next != 0;
    }
    uint32_t *known = NULL, n_known = 0;
    lock_acquire(&s->lock);
    blind = ids && session_blind(s, now) && wait_answered_by(s, from, copy_epoch, relayed, strict);
    if (blind && next && nx && (!s->blind_epoch || next_epoch < s->blind_epoch) &&
        (!copy_epoch || next_epoch < copy_epoch || gap) &&
        (known = malloc((n + 1) * sizeof *known))) {
        n_known = ids_union(known, NULL, 0, ids, n, s);
        blind = false;
    }
    if (blind) {
        n = session_told_set(s, ids, n);
        ids = NULL;
    }
    lock_release(&s->lock);
    free(ids);
    if (known) {
        size_t n_sm = sm ? sm->n_wait_released : 0;
        uint32_t *rel = ids_cat(sm ? sm->wait_released : NULL, n_sm, cw.released, cw.n_released);
        *nx = (struct wait_next){
            session_ref(s), from,    copy_epoch,
            relayed,        strict,  {next, next_epoch, 0, rel, rel ? n_sm + cw.n_released : 0},
            known,          n_known, gap};
    }
    free(cw.released);
    if (blind) {
        /* into its record: a restart of this node during the wait keeps
         * them (docs/cluster.md, *The wait in the session's record*) */
        persist_session_update(cn->b, s);
        log_info("cluster: the session of '%s' learnt the %u QoS 2 id(s) its old copy on %016llx "
                 "had taken%s",
                 s->client_id, (unsigned)n, (unsigned long long)from,
                 n_chain ? ", with those of this node's copy that copy waited for" : "");
    }
    if (blind)
        told_notify(cn, s);
    if (blind && !strict)
        told_pass_on(cn, s, from, epoch, copy_epoch);
    session_unref(s);
    return true;
}

static void on_messages_told(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionMessages *sm,
                             const struct cluster_fwd_seq *sq, const uint16_t *own, uint32_t n_own);

/* Whether state st's sender still waits for this node's QoS 2 ids (it
 * resumed the session from its record while this node was taken for dead,
 * time left). */
static bool waits_here(const struct cluster_node *cn, const Starling__Chan__SessionState *st)
{
    return st->has_blind_node && st->blind_node == cn->self && st->has_blind_left_ms &&
           st->blind_left_ms;
}

/* ids[0..n) less those st's sender saw released while it waited
 * (released_qos2: the client may have used them again since), in place:
 * how many are left. */
static uint32_t less_released(uint16_t *ids, uint32_t n, const Starling__Chan__SessionState *st)
{
    return ids_less(ids, n, st->released_qos2, st->n_released_qos2);
}

/* cn_waited_here_ids when the copy moving out to `from` was folded into
 * the claim's session already: the ids it kept (struct session.own_moved),
 * less those released on `from`. */
static uint16_t *own_moved_waited(struct cluster_node *cn, uint64_t from,
                                  const Starling__Chan__SessionState *st, uint32_t *n)
{
    *n = 0;
    if (!waits_here(cn, st))
        return NULL;
    struct session *s =
        claim_session_at(cn, (const char *)st->client_id.data, st->client_id.len, st->epoch, false);
    if (!s)
        return NULL;
    uint16_t *ids = NULL;
    lock_acquire(&s->lock);
    if (s->own_moved_to == from && s->n_own_moved &&
        (ids = malloc(s->n_own_moved * sizeof(*ids)))) {
        memcpy(ids, s->own_moved, s->n_own_moved * sizeof(*ids));
        *n = less_released(ids, s->n_own_moved, st);
    }
    lock_release(&s->lock);
    session_unref(s);
    return ids;
}

/* s (s->lock held) waits for node's copy's QoS 2 ids of claim `epoch` (0:
 * not known) until `until` (monotonic ms), nothing told yet. */
static void wait_begin(struct session *s, uint64_t node, uint64_t epoch, uint64_t until)
{
    s->blind_node = node;
    s->blind_epoch = epoch;
    s->blind_until = until;
    s->blind_said_none = s->blind_none_kept = false;
    free(s->told_ids);
    s->told_ids = NULL;
    s->n_told = 0;
    s->told = false;
    s->wait_dirty = true;
}

/* s's wait (s->lock held) goes on to node's copy of claim `epoch`,
 * until `until` (monotonic ms): what was told goes (not complete), the
 * PUBRELs a[0..na) and b[0..nb) that came during the waits before count
 * with s's own. Returns them all, malloc'd, *n_rel (NULL: out of memory),
 * for cn_wait_ask. */
static uint32_t *wait_moved(struct session *s, uint64_t node, uint64_t epoch, uint64_t until,
                            const uint32_t *a, size_t na, const uint32_t *b, size_t nb,
                            size_t *n_rel)
{
    uint64_t now = broker_now_mono_ms();
    wait_begin(s, node, epoch, until > now ? until : now + 1);
    for (size_t i = 0; i < na + nb; i++) {
        uint32_t pid = i < na ? a[i] : b[i - na];
        if (pid >= 1 && pid <= 65535 && !session_blind_was_released(s, (uint16_t)pid))
            session_blind_released(s, (uint16_t)pid, now);
    }
    uint32_t *rel = malloc((s->n_blind_released + 1) * sizeof *rel);
    *n_rel = 0;
    for (uint32_t i = 0; rel && i < s->n_blind_released; i++)
        rel[(*n_rel)++] = s->blind_released[i];
    return rel;
}

uint32_t *cn_wait_redirect(struct cluster_node *cn, struct session *s,
                           const Starling__Chan__SessionState *st, const struct cn_wait_on *w,
                           size_t *n_rel)
{
    uint64_t left = w->left_ms;
    if (st->has_blind_left_ms && st->blind_left_ms && st->blind_left_ms < left)
        left = st->blind_left_ms;
    if (left > CN_RESEND_KNOW_MS(cn))
        left = CN_RESEND_KNOW_MS(cn);
    return wait_moved(s, w->node, w->epoch, broker_now_mono_ms() + (left ? left : 1),
                      st->released_qos2, st->n_released_qos2, w->released, w->n_released, n_rel);
}

void cn_wait_ask(struct cluster_node *cn, const struct cn_wait_on *w, const char *id, uint16_t len,
                 uint64_t epoch, const uint32_t *ids, size_t n_ids, const uint16_t *own,
                 uint32_t n_own, const uint32_t *released, size_t n_rel, struct store_batch **bt)
{
    uint32_t *known = malloc((n_ids + n_own + 1) * sizeof *known);
    if (!known) {
        log_warn("cluster: out of memory: the session of '%.*s' does not ask %016llx for its QoS "
                 "2 ids (its wait runs out)",
                 (int)len, id, (unsigned long long)w->node);
        return;
    }
    uint32_t n = ids_union(known, ids, n_ids, own, n_own, NULL);
    Starling__Chan__SessionMessages q = STARLING__CHAN__SESSION_MESSAGES__INIT;
    q.client_id.data = (uint8_t *)id;
    q.client_id.len = len;
    q.epoch = epoch;
    q.qos2_received = known;
    q.n_qos2_received = n;
    q.has_ask = q.ask = true;
    q.has_wait_node = q.has_wait_epoch = true;
    q.wait_node = w->node;
    q.wait_epoch = w->epoch;
    q.wait_released = (uint32_t *)released;
    q.n_wait_released = n_rel;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES;
    fr.session_messages = &q;
    if (cluster_fwd_send_frame(cn->fwd, w->node, &fr, bt) < 0)
        log_warn("cluster: the session of '%.*s' cannot ask %016llx for its QoS 2 ids (its wait "
                 "runs out)",
                 (int)len, id, (unsigned long long)w->node);
    else
        log_info("cluster: the session of '%.*s' (claim %llu) waits for the QoS 2 ids of "
                 "%016llx's copy of claim %llu: asked, with the %u known",
                 (int)len, id, (unsigned long long)epoch, (unsigned long long)w->node,
                 (unsigned long long)w->epoch, (unsigned)n);
    free(known);
}

/* A SessionMessages.ask from `from`: its session of claim sm->epoch waits
 * for this node's copy's ids of claim sm->wait_epoch. The answer tells
 * them with those the sender knew, as that copy's (qos2_epoch), less the
 * PUBRELs that came during the waits; nothing else (no messages). This
 * node's copy: given up, ended lately (struct cn_handed, folded ones too)
 * or stored; none found, the sender's alone (what was known). Before,
 * there was no question: a node whose own copy still waited for them
 * answered a wait for its ids with that copy's alone, and the client's
 * resend of a message the other node's copy had taken was taken for new
 * (chaos seed 10204 with --resend --more, docs/cluster.md). */
static void ask_answer(struct cluster_node *cn, uint64_t from,
                       const Starling__Chan__SessionMessages *sm, const struct cluster_fwd_seq *sq)
{
    const char *id = (const char *)sm->client_id.data;
    uint16_t len = (uint16_t)sm->client_id.len;
    uint32_t n_own = 0;
    uint16_t *own = NULL;
    /* this node's copy still waited itself for another node's ids of an
     * earlier claim (w): the answer says so, and the asker asks on */
    struct cn_wait_on w = {0};
    if (sm->client_id.len && sm->client_id.len <= 65535 && sm->has_wait_epoch && sm->wait_epoch &&
        sm->wait_node == cn->self) {
        own = gone_copy_ids(cn, id, len, sm->wait_epoch, &n_own, &w);
        if (!own)
            own = stored_copy_ids(cn, id, len, sm->wait_epoch, &n_own, &w);
        if (own)
            n_own = ids_less(own, n_own, sm->wait_released, sm->n_wait_released);
    }
    uint32_t *ids = malloc((sm->n_qos2_received + n_own + 1) * sizeof *ids);
    /* with the PUBRELs of every wait down the chain */
    bool waited = w.node && w.epoch < sm->wait_epoch;
    uint32_t *rel =
        waited ? ids_cat(sm->wait_released, sm->n_wait_released, w.released, w.n_released) : NULL;
    if (!ids || (waited && !rel)) {
        free(own);
        free(ids);
        free(rel);
        free(w.released);
        cluster_fwd_in_defer(cn->fwd, sq); /* asked again */
        return;
    }
    uint32_t n = ids_union(ids, sm->qos2_received, sm->n_qos2_received, own, n_own, NULL);
    free(own);
    Starling__Chan__SessionMessages a = STARLING__CHAN__SESSION_MESSAGES__INIT;
    a.client_id = sm->client_id;
    a.epoch = sm->epoch;
    a.qos2_received = ids;
    a.n_qos2_received = n;
    a.has_qos2_told = a.qos2_told = true;
    a.has_qos2_epoch = true;
    a.qos2_epoch = sm->wait_epoch;
    if (waited) {
        a.has_wait_node = a.has_wait_epoch = true;
        a.wait_node = w.node;
        a.wait_epoch = w.epoch;
        a.wait_released = rel;
        a.n_wait_released = sm->n_wait_released + w.n_released;
    }
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES;
    fr.session_messages = &a;
    struct store_batch *bt = NULL;
    int r = cluster_fwd_send_frame(cn->fwd, from, &fr, &bt);
    free(rel);
    free(w.released);
    if (r < 0) {
        if (bt)
            store_batch_free(bt);
        free(ids);
        cluster_fwd_in_defer(cn->fwd, sq);
        return;
    }
    cluster_fwd_in_stage(cn->fwd, sq, &bt);
    persist_submit(cn->b, &bt, NULL, NULL);
    if (a.has_wait_node)
        log_info("cluster: %016llx asked for the QoS 2 ids of this node's copy of '%.*s' of claim "
                 "%llu: %u told (with the %zu it knew); that copy still waited for those of "
                 "%016llx's copy of claim %llu, which the answer names",
                 (unsigned long long)from, (int)len, id, (unsigned long long)sm->wait_epoch,
                 (unsigned)n, sm->n_qos2_received, (unsigned long long)w.node,
                 (unsigned long long)w.epoch);
    else
        log_info("cluster: %016llx asked for the QoS 2 ids of this node's copy of '%.*s' of claim "
                 "%llu: %u told (with the %zu it knew)",
                 (unsigned long long)from, (int)len, id, (unsigned long long)sm->wait_epoch,
                 (unsigned)n, sm->n_qos2_received);
    free(ids);
}

/* cn_session_on_late_state when cn_waited_here_ids answered only in part
 * (w): st's sender's session waited for this node's ids, and so does this
 * node's session of st's claim, which was resumed from its record; it
 * waits for w's now, and asks (cn_wait_ask) with the ids known: st's and
 * own[0..n_own). Whether it did (else the ids are told as they are). */
static bool late_wait_redirect(struct cluster_node *cn, uint64_t from,
                               const Starling__Chan__SessionState *st, const struct cn_wait_on *w,
                               const uint16_t *own, uint32_t n_own)
{
    struct session *s =
        claim_session_at(cn, (const char *)st->client_id.data, st->client_id.len, st->epoch, false);
    if (!s)
        return false;
    uint32_t *ids = malloc((st->n_qos2_received + n_own + 1) * sizeof *ids);
    uint32_t n = 0;
    size_t n_rel = 0;
    uint32_t *rel = NULL;
    uint64_t now = broker_now_mono_ms();
    lock_acquire(&s->lock);
    bool waits = ids && session_blind(s, now) && wait_answered_by(s, from, 0, false, false);
    if (waits)
        n = ids_union(ids, st->qos2_received, st->n_qos2_received, own, n_own, s);
    if (waits && !(rel = cn_wait_redirect(cn, s, st, w, &n_rel)))
        session_wait_end(s); /* out of memory */
    lock_release(&s->lock);
    if (waits) {
        persist_session_update(cn->b, s);
        struct store_batch *bt = NULL;
        if (rel)
            cn_wait_ask(cn, w, s->client_id, s->id_len, st->epoch, ids, n, NULL, 0, rel, n_rel,
                        &bt);
        persist_submit(cn->b, &bt, NULL, NULL);
    }
    free(rel);
    free(ids);
    session_unref(s);
    return waits;
}

void cn_session_on_late_state(struct cluster_node *cn, uint64_t from,
                              const Starling__Chan__SessionState *st,
                              const struct cluster_fwd_seq *sq)
{
    /* its unfinished QoS 2 exchanges too: cn_session_on_messages
     * completes them or drops them; and the QoS 2 ids it took (owner_told) */
    Starling__Chan__SessionMessages sm = STARLING__CHAN__SESSION_MESSAGES__INIT;
    sm.qos2_received = st->qos2_received;
    sm.n_qos2_received = st->n_qos2_received;
    sm.has_qos2_told = sm.qos2_told = true;
    sm.has_qos2_epoch = st->has_qos2_epoch;
    sm.qos2_epoch = st->qos2_epoch;
    sm.client_id = st->client_id;
    sm.epoch = st->epoch;
    sm.n_msgs = st->n_msgs;
    sm.msgs = st->msgs;
    sm.n_seen = st->n_seen;
    sm.seen = st->seen;
    sm.has_more = sm.more = st->has_more && st->more;
    /* the sender's copy still waited for a third node's ids, not told:
     * its own are only part of its client's (owner_told asks on) */
    if (st->has_blind_node && st->blind_node && st->blind_node != cn->self &&
        st->has_blind_left_ms && st->blind_left_ms && !(st->has_told && st->told) &&
        st->has_blind_epoch && st->blind_epoch) {
        sm.has_wait_node = sm.has_wait_epoch = true;
        sm.wait_node = st->blind_node;
        sm.wait_epoch = st->blind_epoch;
        sm.wait_released = st->released_qos2;
        sm.n_wait_released = st->n_released_qos2;
    }
    log_info("cluster: the session state of '%.*s' from %016llx came after its claim went on: "
             "%zu message(s) taken as late ones",
             (int)st->client_id.len, (const char *)st->client_id.data, (unsigned long long)from,
             st->n_msgs);
    /* The sender resumed the session from its record while this node was
     * taken for dead, and still waits for this node's ids; this node then
     * resumed it from its record in turn, waiting for the sender's, while
     * its own old copy, still moving out, held the id the client resends:
     * the sender's ids alone did not have it, and the resend was taken for
     * new (chaos seed 9903 with --resend --more: 3 QoS 2 duplicates;
     * test_forward.py::test_a_qos2_id_taken_by_a_copy_claimed_back_to_its_node_is_a_duplicate
     * [from_record]). The sender's state says which of them its client
     * released meanwhile (cn_waited_here_ids): before it came, they are not
     * used (they may be stale), and a resend waits. */
    uint32_t n_own = 0;
    struct cn_wait_on w;
    uint16_t *own = cn_waited_here_ids(cn, from, st, (const char *)st->client_id.data,
                                       (uint16_t)st->client_id.len, &n_own, &w);
    if (!own && !(st->has_told && st->told))
        own = own_moved_waited(cn, from, st, &n_own);
    /* this node's copy still waited itself: not told yet, asked on */
    if (own && w.node && late_wait_redirect(cn, from, st, &w, own, n_own))
        sm.has_qos2_told = sm.qos2_told = false;
    free(w.released);
    on_messages_told(cn, from, &sm, sq, own, n_own);
    free(own);
}

void cn_session_on_routed(struct cluster_node *cn, uint64_t from,
                          const Starling__Chan__SessionRouted *r)
{
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x; x = x->next)
        if (x->to == from && x->epoch == r->epoch && x->s->id_len == r->client_id.len &&
            memcmp(x->s->client_id, r->client_id.data, r->client_id.len) == 0) {
            /* a flushing copy sent its first batch for its time, not for
             * this SessionRouted: the next one says complete again */
            if (x->flushing && !x->routed)
                x->complete_sent = false;
            x->routed = true;
            x->route_index = r->has_route_index ? r->route_index : 0;
            uint64_t here = fsm_visible(cn->fsm);
            x->clear_index = x->route_index > here ? x->route_index : here;
        }
    pthread_mutex_unlock(&cn->reg_mu);
    /* the first batch after it goes at the poll: now (the new owner holds
     * what reaches it directly until it is in) */
    pthread_mutex_lock(&cn->mu);
    cn_kick(cn);
    pthread_mutex_unlock(&cn->mu);
}

void cn_session_routed_send(struct cluster_node *cn, uint64_t to, const char *id, uint16_t len,
                            uint64_t epoch, uint64_t route_index)
{
    Starling__Chan__SessionRouted r = STARLING__CHAN__SESSION_ROUTED__INIT;
    r.client_id.data = (uint8_t *)id;
    r.client_id.len = len;
    r.epoch = epoch;
    r.has_route_index = route_index != 0;
    r.route_index = route_index;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_ROUTED;
    fr.session_routed = &r;
    cn_send_frame(cn, to, &fr);
}

/* How long a session that came with a claim stays listed as incoming
 * (INCOMING_KEEP_MS; debug builds: STARLING_TEST_INCOMING_KEEP_MS, so that
 * a test's claim in progress outlasts it). */
static uint64_t incoming_keep_ms(void)
{
    return test_hook_u64("STARLING_TEST_INCOMING_KEEP_MS", INCOMING_KEEP_MS);
}

void cn_incoming_add(struct cluster_node *cn, struct session *s, uint64_t epoch)
{
    struct cn_incoming *x = calloc(1, sizeof(*x));
    if (!x)
        return;
    x->s = session_ref(s);
    x->epoch = epoch;
    x->since_ms = cn_mono_ms();
    x->until_ms = x->since_ms + incoming_keep_ms();
    pthread_mutex_lock(&cn->reg_mu);
    x->next = cn->incoming;
    cn->incoming = x;
    pthread_mutex_unlock(&cn->reg_mu);
}

void cn_incoming_fold_unsubmitted(struct cluster_node *cn, const struct session *s, bool on)
{
    for (struct cn_incoming *x = cn->incoming; x; x = x->next)
        if (x->s == s)
            x->fold_unsubmitted = on;
}

/* The session of id that came here with claim `epoch` and is still listed
 * as incoming (cn->incoming), a reference, or NULL. */
static struct session *incoming_find(struct cluster_node *cn, const char *id, size_t len,
                                     uint64_t epoch)
{
    struct session *s = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_incoming *x = cn->incoming; x && !s; x = x->next)
        if (x->epoch == epoch && x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0)
            s = session_ref(x->s);
    pthread_mutex_unlock(&cn->reg_mu);
    return s;
}

/* Whether the claim that x's session came with is still in progress: its
 * session is neither in the table, ended, given up nor moving out, or the
 * batch of its fold is not submitted yet. cn->reg_mu held. */
static bool incoming_held(struct cluster_node *cn, const struct cn_incoming *x)
{
    struct registry *r = &cn->b->registry;
    struct session *s = x->s;
    if (x->fold_unsubmitted)
        return true;
    bool given_up = cn_registry_surrendered_has(cn, s->client_id, s->id_len);
    for (struct cn_moving *m = cn->moving; m && !given_up; m = m->next)
        given_up = m->s == s;
    pthread_mutex_lock(&r->lock);
    lock_acquire(&s->lock);
    bool held = !given_up && !s->ended && !s->in_table;
    lock_release(&s->lock);
    pthread_mutex_unlock(&r->lock);
    return held;
}

bool cn_incoming_unsettled(struct cluster_node *cn, const char *id, uint16_t len, uint64_t below)
{
    for (struct cn_incoming *x = cn->incoming; x; x = x->next)
        if (x->epoch < below && x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0 &&
            incoming_held(cn, x))
            return true;
    return false;
}

/* The session of id here with claim `epoch` (a reference), or NULL. Before
 * the start-up pass, a stored session does not know its claim yet (epoch
 * 0): it takes late messages of any claim, and the pass (or the claims
 * applied while catching up) keeps it here or sends what it holds on to
 * its owner. Before, late messages that came in that moment were dropped
 * when this node's tables still named its old claim: chaos seed 28098917,
 * 813 late messages of a session, sent to this node while it was down
 * (held by the sender), dropped as it started again; 116 of them were
 * nowhere else (acknowledged while the session's previous node was dead,
 * kept by that node's copy). */
static struct session *owned_session(struct cluster_node *cn, const char *id, size_t len,
                                     uint64_t epoch)
{
    struct session *s = incoming_find(cn, id, len, epoch);
    if (!s) {
        struct registry *r = &cn->b->registry;
        pthread_mutex_lock(&r->lock);
        s = registry_find(r, id, len);
        if (s)
            session_ref(s);
        pthread_mutex_unlock(&r->lock);
    }
    if (s) {
        bool early = !atomic_load(&cn->restart_done);
        lock_acquire(&s->lock);
        bool ok = (s->epoch == epoch || (early && s->epoch == 0)) && !s->ended;
        lock_release(&s->lock);
        if (!ok) {
            session_unref(s);
            s = NULL;
        }
    }
    return s;
}

/* ---- the order of late messages ---- */

void cn_session_late_hold(struct cluster_node *cn, struct session *s, uint64_t from, uint64_t epoch)
{
    if (!from || from == cn->self)
        return;
    uint64_t now = cn_mono_ms(), until = now + LATE_HOLD_MS(cn);
    session_late_hold(s, from, epoch, now, until);
    /* the poll ends it then (cn_incoming_add came with its state) */
    bool listed = false;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_incoming *x = cn->incoming; x; x = x->next)
        if (x->s == s) {
            x->late_hold_ms = until;
            listed = true;
        }
    pthread_mutex_unlock(&cn->reg_mu);
    if (!listed) { /* not a session of a state (cn_registry_on_state): no hold */
        lock_acquire(&s->lock);
        session_late_clear_locked(s);
        lock_release(&s->lock);
    }
}

void cn_session_late_in(struct cluster_node *cn, struct session *s, uint64_t from,
                        const Starling__Chan__SessionMessages *sm)
{
    if ((sm->has_complete && sm->complete) || (sm->has_last && sm->last))
        session_late_release(cn->b, s, from, sm->epoch);
}

/* The session that a claim of id (`epoch`) here built from its state and
 * that its worker has not routed yet (it learns the claim's epoch there,
 * claim_route_incoming), a reference, or NULL. The frames that follow the
 * state (its messages beyond the first frame's) may come before that:
 * before, such a frame found no session (owned_session), rebuilt one from
 * the record beside the claim, and the claim then failed as overtaken
 * (CONNACK 0x88; test_session_big_moves.py, 1 of 3 runs). */
static struct session *unrouted_session(struct cluster_node *cn, const char *id, size_t len,
                                        uint64_t epoch)
{
    struct session *s = incoming_find(cn, id, len, epoch);
    if (s) {
        lock_acquire(&s->lock);
        bool ok = s->epoch == 0 && !s->ended;
        lock_release(&s->lock);
        if (!ok) {
            session_unref(s);
            s = NULL;
        }
    }
    return s;
}

/* Whether the claim's session s is still that claim's (its epoch, or none
 * yet while unrouted), not ended. */
static bool claim_session_holds(struct session *s, uint64_t epoch, bool *unrouted)
{
    lock_acquire(&s->lock);
    bool ok = (s->epoch == epoch || s->epoch == 0) && !s->ended;
    *unrouted = s->epoch == 0;
    lock_release(&s->lock);
    return ok;
}

/* The session of id's claim `epoch` on this node, routed (owned_session)
 * or not yet (unrouted_session): a reference, or NULL. Its claim's worker
 * routes it meanwhile (claim_route_incoming sets its epoch), so it is
 * judged by one look at its epoch. Looked for as routed, then as not yet,
 * a frame that came between the two found neither, and its messages went
 * to a session rebuilt from the record beside the claim (adopt_lost),
 * which handed them on to the claim's session after the later frames'
 * (test_session_frames.py::test_frames_behind_the_state_while_its_claim_
 * routes_keep_their_order). */
static struct session *claim_session_at(struct cluster_node *cn, const char *id, size_t len,
                                        uint64_t epoch, bool test_hook)
{
    struct session *s = incoming_find(cn, id, len, epoch);
    if (!s)
        return owned_session(cn, id, len, epoch);
    bool unrouted;
    bool ok = claim_session_holds(s, epoch, &unrouted);
    /* tests: its claim's worker routes it now */
    if (ok && unrouted && test_hook && cn_test_delay("STARLING_TEST_LATE_LOOKUP_DELAY_MS"))
        ok = claim_session_holds(s, epoch, &unrouted);
    if (!ok) {
        session_unref(s);
        s = NULL;
    }
    return s;
}

static struct session *claim_session(struct cluster_node *cn, const char *id, size_t len,
                                     uint64_t epoch)
{
    return claim_session_at(cn, id, len, epoch, true);
}

/* Packet ids of adopted exchanges to send on the session's connection. */
struct late_resend {
    struct broker *b;
    struct session *s; /* a reference */
    size_t n;
    uint16_t pids[];
};

/* On the worker that owns the session's connection. */
static void late_resend_on_worker(void *ud)
{
    struct late_resend *rs = ud;
    struct session *s = rs->s;
    lock_acquire(&s->lock);
    if (s->conn && sink_thread_worker && s->w == sink_thread_worker)
        for (size_t i = 0; i < rs->n; i++)
            session_resend_locked(rs->b, s, rs->pids[i]);
    lock_release(&s->lock);
    session_unref(s);
    free(rs);
}

/* The adopted exchanges go to the client now when it is connected (else
 * with the resumption of its next connection). Takes rs. */
static void late_resend_post(struct broker *b, struct session *s, struct late_resend *rs)
{
    rs->b = b;
    rs->s = session_ref(s);
    lock_acquire(&s->lock);
    struct worker *w = s->conn ? s->w : NULL;
    lock_release(&s->lock);
    if (!w || b->sink->call(w, late_resend_on_worker, rs) < 0) {
        session_unref(s);
        free(rs);
    }
}

/* Record m's identity in s->seen while s records (its client has m). */
static void seen_note(struct session *s, const struct msg *m)
{
    lock_acquire(&s->lock);
    if (m->id_node && s->seen && !s->ended && broker_now_mono_ms() < s->seen_until)
        msg_seen_add(s->seen, m->id_node, m->id_seq);
    lock_release(&s->lock);
}

/* Whether late message q carries a QoS 2 exchange its sender began with the
 * client: its PUBLISH sent with a packet id, waiting for PUBREC or PUBCOMP. */
static bool late_is_exchange(const Starling__Chan__SessionMessage *q)
{
    return q->qos == 2 && q->has_packet_id && q->packet_id != 0 && q->packet_id <= 65535 &&
           (q->state == MSG_STATE_WAIT_PUBREC || q->state == MSG_STATE_WAIT_PUBCOMP);
}

/* Whether late message q is a QoS 2 one its sender restored from its store
 * after a restart, not known to be unsent: queued, with the packet id it
 * was sent with if it was (state_restored_pid, cluster_registry.c). */
static bool late_is_restored(const Starling__Chan__SessionMessage *q)
{
    return q->qos == 2 && q->has_packet_id && q->packet_id != 0 && q->packet_id <= 65535 &&
           q->state == MSG_STATE_QUEUED;
}

/* A late message q (m) of s that an older copy had sent to its client and
 * whose QoS 2 exchange was not finished: s, resumed from its record, takes
 * it over with its packet id (session_adopt_exchange). So does it one that
 * copy restored after a restart and may have sent (late_is_restored),
 * unless `restored` is false: as an exchange waiting for PUBREC, sent
 * again with that id, DUP 1, as its sender would have; a client that
 * delivers QoS 2 at PUBLISH and still holds the id does not deliver it
 * again [MQTT-5.0 4.3.3]. Before, it went as a new message with a new id
 * (test_session_moves.py::test_a_restored_message_sent_as_a_late_message_
 * keeps_its_packet_id). Returns 1 (adopted: its PUBLISH or PUBREL is to
 * be sent), 2 (s had it already: not taken), 0 (not adopted: the caller
 * goes on as with any late message; also when s used that packet id
 * since). */
static int late_exchange_adopt(struct broker *b, struct session *s,
                               const Starling__Chan__SessionMessage *q, struct msg *m,
                               bool restored, struct store_batch **bt)
{
    bool exchange = late_is_exchange(q);
    if (!exchange && !(restored && late_is_restored(q)))
        return 0;
    uint8_t state = exchange ? (uint8_t)q->state : MSG_STATE_WAIT_PUBREC;
    lock_acquire(&s->lock);
    int r = 0;
    if (m->id_node && s->seen && msg_seen_has(s->seen, m->id_node, m->id_seq)) {
        /* its client got it from this copy: completing the old exchange
         * would deliver it twice */
        r = 2;
    } else {
        struct qmsg *x = qmsg_new(m, 2, q->retain, q->sub_ids,
                                  (uint16_t)(q->n_sub_ids > 65535 ? 0 : q->n_sub_ids));
        /* stored with its packet id, as the session's own inflight ones */
        if (x && session_adopt_exchange_stored(b, s, x, (uint16_t)q->packet_id, state, bt) == 0) {
            if (m->id_node && s->seen)
                msg_seen_add(s->seen, m->id_node, m->id_seq);
            r = 1;
        } else {
            qmsg_free(x);
        }
    }
    lock_release(&s->lock);
    return r;
}

/* Late messages addressed to a claim of this node that the session has
 * left since: this node's own old copy of it, moving out (after a restart,
 * restored from the store with the identities its client got here),
 * knows which of them its client had; those are left out of what is
 * passed on (the copy's own queued ones follow with its state). kept gets
 * the others, in order; returns how many were left out. Before, a session
 * resumed elsewhere from its record got them again (chaos seed 44: a
 * restarted node's copy had collected what the owner also got directly;
 * the owner was SIGKILLed, and its late messages went through it). */
static size_t late_seen_here(struct cluster_node *cn, const Starling__Chan__SessionMessages *sm,
                             Starling__Chan__SessionMessage **kept, size_t *n_kept)
{
    struct session *copy = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x && !copy; x = x->next)
        if (x->s->id_len == sm->client_id.len &&
            memcmp(x->s->client_id, sm->client_id.data, sm->client_id.len) == 0)
            copy = session_ref(x->s);
    pthread_mutex_unlock(&cn->reg_mu);
    size_t left = 0;
    *n_kept = 0;
    if (copy)
        lock_acquire(&copy->lock);
    for (size_t i = 0; i < sm->n_msgs; i++) {
        const Starling__Chan__SessionMessage *q = sm->msgs[i];
        if (copy && copy->seen && q->has_origin && q->has_pub_id && q->origin && q->pub_id &&
            msg_seen_has(copy->seen, q->origin, q->pub_id)) {
            /* A QoS 2 exchange its sender began with the client (waiting
             * for PUBREC or PUBCOMP, with its packet id) goes on: the
             * copy's identity says this copy took the message, not that
             * its client completed it here, and a client that holds it
             * under the sender's packet id awaiting PUBREL gets it only by
             * that exchange. The owner judges it by its own identities
             * (late_exchange_adopt). Before, it was left out: chaos seed
             * 1188520366 with --more, 7 QoS 2 messages lost
             * (test_faults.py::test_exchange_passed_through_a_node_whose_
             * copy_took_the_message_reaches_the_owner). */
            if (late_is_exchange(q)) {
                log_info("cluster: a late message of '%.*s' (%016llx/%llu) that its old copy "
                         "here took goes on with its exchange (state %u, packet id %u): its "
                         "owner judges it",
                         (int)sm->client_id.len, (const char *)sm->client_id.data,
                         (unsigned long long)q->origin, (unsigned long long)q->pub_id,
                         (unsigned)q->state, (unsigned)q->packet_id);
            } else {
                left++;
                continue;
            }
        }
        kept[(*n_kept)++] = sm->msgs[i];
    }
    if (copy) {
        lock_release(&copy->lock);
        session_unref(copy);
    }
    return left;
}

/* The late messages queued by one SessionMessages frame, held (struct
 * msg.hold) until the batch that stores them has committed. Queued and
 * released at once, a message went to the client while the cluster thread
 * still queued the rest of the frame, and the delete of its acknowledgement
 * (a batch of the session's worker) was submitted before the batch that
 * stores it: the row stayed, and after a SIGKILL the node's copy of the
 * session held it again, delivered twice (chaos seed 7: 8 QoS 2
 * duplicates). The store commits batches in the order they are submitted. */
struct late_commit {
    struct broker *b;
    struct session *s;        /* a reference */
    struct late_commit *next; /* cn_fold_into.held */
    size_t n;
    struct msg *m[]; /* references */
};

/* persist_submit's done: the messages go (also when the commit failed:
 * delivered from memory, as before, rather than lost). Any thread. */
static void late_commit_done(void *ud, int status)
{
    struct late_commit *lc = ud;
    if (status != 0)
        log_error("cluster: late messages of '%s' not stored: %s", lc->s->client_id,
                  store_strerror(status));
    for (size_t i = 0; i < lc->n; i++) {
        atomic_store(&lc->m[i]->hold, MSG_READY);
        msg_unref(lc->m[i]);
    }
    lock_acquire(&lc->s->lock);
    struct worker *w = lc->s->conn ? lc->s->w : NULL;
    lock_release(&lc->s->lock);
    if (w && lc->n)
        lc->b->sink->wake(w, lc->s, NULL);
    session_unref(lc->s);
    free(lc);
}

/* A staged claim's batch with its fold committed (cn_fold_submit): the
 * fold's messages held until then go. */
static void fold_commit_done(void *ud, int status)
{
    for (struct late_commit *lc = ud, *next; lc; lc = next) {
        next = lc->next;
        late_commit_done(lc, status);
    }
}

void cn_fold_submit(struct cluster_node *cn, struct cn_fold_into *into)
{
    struct late_commit *held = into->held;
    into->held = NULL;
    persist_submit(cn->b, &into->bt, held ? fold_commit_done : NULL, held);
}

/* Hold m until lc's batch commits (before it is queued). Returns true. */
static bool late_hold(struct late_commit *lc, struct msg *m)
{
    atomic_store(&m->hold, MSG_HELD);
    lc->m[lc->n++] = msg_ref(m);
    return true;
}

#ifndef NDEBUG
bool cn_test_delay(const char *env)
{
    const char *v = getenv(env);
    long ms = v ? strtol(v, NULL, 10) : 0;
    if (ms <= 0 || ms > 10000)
        return false;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return true;
}
#endif

/* Tests: STARLING_TEST_LATE_SUBMIT_DELAY_MS delays the submission of the
 * batch that stores a frame's late messages (the window in which their
 * client could acknowledge them before it, widened). */
static void late_test_delay(void)
{
    (void)cn_test_delay("STARLING_TEST_LATE_SUBMIT_DELAY_MS");
}

size_t cn_msgs_chunk(Starling__Chan__SessionMessage *const *msgs, size_t n)
{
    size_t k = 0, bytes = 0;
    while (k < n) {
        bytes += starling__chan__session_message__get_packed_size(msgs[k]) + 8;
        if (k > 0 && (bytes > MOVE_CHUNK_BYTES || k >= MOVE_CHUNK_MSGS))
            break;
        k++;
    }
    return k;
}

int cn_send_msgs_chunked(struct cluster_node *cn, uint64_t to, Starling__Chan__SessionMessages *sm,
                         struct store_batch **bt)
{
    Starling__Chan__SessionMessage **msgs = sm->msgs;
    size_t left = sm->n_msgs, n_seen = sm->n_seen;
    bool last = sm->has_last && sm->last;
    bool complete = sm->has_complete && sm->complete;
    bool stays = sm->has_stays && sm->stays;
    int worst = 1;
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES;
    fr.session_messages = sm;
    do {
        size_t k = cn_msgs_chunk(msgs, left);
        sm->msgs = msgs;
        sm->n_msgs = k;
        bool final = k == left;
        sm->n_seen = final ? n_seen : 0;
        sm->has_last = final && last;
        sm->last = final && last;
        sm->has_complete = final && complete;
        sm->complete = final && complete;
        sm->has_stays = sm->stays = final && stays;
        sm->has_more = sm->more = !final;
        int r = cluster_fwd_send_frame(cn->fwd, to, &fr, bt);
        if (r < worst)
            worst = r;
        msgs += k;
        left -= k;
    } while (left);
    return worst;
}

/* This node's old copy of id moving out to a later claim than `epoch`, the
 * one this node's tables still give it (a reference), or NULL: a claimant's
 * request came before this node applied its claim (cn_registry_on_request),
 * and the copy went to it as a state. Late messages of this node's own
 * claim that come now go into that copy, which judges them by the
 * identities of what its client got here and sends the others on with
 * what it collects. Before, they found no session and `adopt_lost`
 * rebuilt one from the record (no identities) beside the copy; applying
 * the claim, this node sent that one on to the owner of then, which,
 * resumed from a record too, delivered them again: QoS 2 duplicates
 * (test_faults.py::test_late_messages_in_the_handover_window_follow_the_copy:
 * 15 of 15; by the code, the 123 and 210 of two chaos runs). */
static struct session *handed_on_copy(struct cluster_node *cn, const char *id, uint16_t len,
                                      uint64_t epoch, uint64_t *to, uint64_t *to_epoch)
{
    struct session *s = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x && !s; x = x->next)
        if (x->to != cn->self && x->epoch > epoch && x->s->id_len == len &&
            memcmp(x->s->client_id, id, len) == 0) {
            lock_acquire(&x->s->lock);
            bool ended = x->s->ended;
            lock_release(&x->s->lock);
            if (!ended) {
                s = session_ref(x->s);
                *to = x->to;
                *to_epoch = x->epoch;
            }
        }
    pthread_mutex_unlock(&cn->reg_mu);
    return s;
}

/* A sequenced frame for id, which the registry gives to this node at
 * `epoch`, finds no session here, and no claim of id runs here: this node
 * lost it (killed before the batch that stored it committed: the session
 * built from a SessionState is written at once, but a SIGKILL before that
 * commit leaves nothing; the old owner then sends its state again, which
 * comes here as a late state). Rebuilt from its replicated record as a
 * disconnected session of this node (table, index, record, store), so
 * that what the frame brings is kept for its client, who resumes it here.
 * A reference, or NULL (no record: a session of expiry 0). */
static struct session *adopt_lost(struct cluster_node *cn, const char *id, uint16_t len,
                                  uint64_t epoch, uint64_t from)
{
    struct broker *b = cn->b;
    /* the frame's sender is the old copy that handed its state to the
     * claim that was lost here: its resends wait for that copy's ids */
    struct session *s = cn_session_from_record(cn, id, len, from, 0, false);
    if (!s)
        return NULL;
    lock_acquire(&s->lock);
    s->epoch = epoch;
    s->disconnected_at = broker_now_mono_ms();
    bool keep = s->expiry_interval != 0;
    lock_release(&s->lock);
    pthread_mutex_lock(&b->registry.lock);
    if (!keep || registry_find(&b->registry, id, len)) {
        pthread_mutex_unlock(&b->registry.lock);
        session_unref(s);
        return NULL;
    }
    registry_insert(&b->registry, session_ref(s)); /* the table's reference */
    pthread_mutex_unlock(&b->registry.lock);
    lock_acquire(&s->lock);
    uint32_t n = s->n_subs;
    lock_release(&s->lock);
    for (uint32_t i = 0; i < n; i++) /* its routes (filter_added) */
        sub_index_add(b->index, s->subs[i].filter, s->subs[i].len, s, s->subs[i].options,
                      s->subs[i].sub_id);
    cn_session_record_queue(cn, s);
    struct store_batch *bt = NULL;
    lock_acquire(&s->lock);
    persist_session_put(b, &bt, s, false);
    lock_release(&s->lock);
    persist_submit(b, &bt, NULL, NULL);
    log_info("cluster: the session of '%s' (claim %llu) is not here, though the registry gives it "
             "to this node (lost in a stop before it was stored): rebuilt from its record for what "
             "comes for it",
             s->client_id, (unsigned long long)epoch);
    return s;
}

void cn_seq_applied(struct cluster_node *cn, const struct cluster_fwd_seq *sq)
{
    struct store_batch *bt = NULL;
    cluster_fwd_in_stage(cn->fwd, sq, &bt);
    persist_submit(cn->b, &bt, NULL, NULL);
}

/* cn_session_on_messages, with own: this node's ids that the sender waited
 * for (cn_waited_here_ids), told with the sender's */
static void on_messages_told(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionMessages *sm,
                             const struct cluster_fwd_seq *sq, const uint16_t *own, uint32_t n_own)
{
    /* ids passed on by a node that is not theirs count for a wait for
     * their own node's copy (qos2_of, qos2_epoch) */
    bool relayed = sm->has_qos2_of && sm->qos2_of;
    uint64_t whose = relayed ? sm->qos2_of : from;
    uint64_t copy_epoch = sm->has_qos2_epoch ? sm->qos2_epoch : 0;
    struct wait_next nx = {0};
    bool told = !(sm->has_qos2_told && sm->qos2_told) ||
                owner_told(cn, whose, &sm->client_id, sm->epoch, sm->qos2_received,
                           sm->n_qos2_received, own, n_own, copy_epoch, relayed, sm, &nx);
    fold_on_messages(cn, from, sm, sq, NULL, own, n_own);
    /* the frame may have built the session (adopt_lost): told now */
    if (!told)
        owner_told(cn, whose, &sm->client_id, sm->epoch, sm->qos2_received, sm->n_qos2_received,
                   own, n_own, copy_epoch, relayed, sm, &nx);
    wait_go_on(cn, &nx);
}

void cn_session_on_messages(struct cluster_node *cn, uint64_t from,
                            const Starling__Chan__SessionMessages *sm,
                            const struct cluster_fwd_seq *sq)
{
    if (sm->has_ask && sm->ask) {
        ask_answer(cn, from, sm, sq);
        return;
    }
    on_messages_told(cn, from, sm, sq, NULL, 0);
}

/* The QoS 2 ids of this node's copy of id of claim `epoch` (given up or
 * moving out, or stored), when that copy still waits for node whose's
 * ids (of claim whose_epoch, when known): a malloc'd array of *n, less
 * the PUBRELs that came during its wait, or NULL (no such copy). */
static uint16_t *waiting_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                  uint64_t epoch, uint64_t whose, uint64_t whose_epoch, uint32_t *n)
{
    struct cn_wait_on w = {0};
    uint16_t *ids = gone_copy_ids(cn, id, len, epoch, n, &w);
    if (!ids)
        ids = stored_copy_ids(cn, id, len, epoch, n, &w);
    if (ids && (w.node != whose || (whose_epoch && w.epoch != whose_epoch))) {
        free(ids);
        ids = NULL;
    }
    if (ids)
        *n = ids_less(ids, *n, w.released, w.n_released);
    else
        *n = 0;
    free(w.released);
    return ids;
}

/* cn_session_on_messages; fr (or NULL): the rows of the old copy that sm
 * folds into this node's session, deleted in the batch that puts its
 * messages there. Whether they were (false: the messages went elsewhere or
 * were dropped; the caller deletes them alone). own[0..n_own): the ids of
 * this node's copy that sm's sender waited for (a late state's,
 * cn_waited_here_ids), part of what its ids answer. */
static bool fold_on_messages(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionMessages *sm,
                             const struct cluster_fwd_seq *sq, const struct fold_rows *fr,
                             const uint16_t *own, uint32_t n_own)
{
    if (sm->client_id.len == 0 || sm->client_id.len > 65535) {
        cn_seq_applied(cn, sq);
        return false;
    }
    struct broker *b = cn->b;
    const char *id = (const char *)sm->client_id.data;
    struct session *s = claim_session(cn, id, sm->client_id.len, sm->epoch);
    uint64_t node = 0, epoch = 0;
    /* whether s is the session of the claim the frame is for, or this
     * node's copy of it: a later claim's session takes its messages, not
     * the sender's identities (below) */
    bool own_claim = true;
    if (!s && fsm_registry_get(cn->fsm, id, sm->client_id.len, &node, &epoch) == 0 &&
        epoch > sm->epoch) {
        /* the session moved on since (a later claim): its messages follow
         * it, to this node's copy of the later claim or to its node (epochs
         * only grow, so this ends) */
        if (node == cn->self) {
            s = claim_session(cn, id, sm->client_id.len, epoch);
            own_claim = !s;
        } else {
            /* also back to the sender: the session may have moved to it
             * since it took these (the new epoch is its own claim's) */
            Starling__Chan__SessionMessages on = *sm;
            on.epoch = epoch;
            on.has_complete = on.complete = false; /* of the sender's claim, not this one's */
            /* nor its identities: they say what the sender's copy took,
             * and what of that went with its state went to the claim the
             * frame is for, whose session the later one need not come
             * from (resumed from its record: chaos seed 1093382011, a QoS
             * 2 message taken for had when the copy that held it handed
             * it on later; test_faults.py::test_late_frame_passed_on_to_a_
             * later_claim_brings_no_identities) */
            on.seen = NULL;
            on.n_seen = 0;
            /* the QoS 2 ids of the copy that sent it go on as that
             * copy's (qos2_of, qos2_epoch), for a later owner whose wait
             * for that very copy's ids was passed on with this node's
             * state: the copy here that they were for handed its state on
             * already (chaos seed 9925 with --resend --more: they reached
             * nobody, and that owner took its client's resend for new;
             * test_forward.py::test_ids_told_to_a_copy_that_moved_on_
             * reach_the_owner_that_waits). Only with the copy's claim
             * (another copy's ids may be stale, wait_answered_by), and
             * not back to that node itself. */
            uint64_t whose = sm->has_qos2_of && sm->qos2_of ? sm->qos2_of : from;
            bool relay = sm->has_qos2_told && sm->qos2_told && sm->has_qos2_epoch &&
                         sm->qos2_epoch && whose != node && whose != cn->self;
            /* the frame answers the wait of this node's copy of its claim
             * (resumed from the record, waiting for whose's ids of
             * qos2_epoch), a copy claimed away since: the owner's wait
             * for that copy's ids (taken with its state) is answered by
             * them with the copy's own, as this node's. Before, they went
             * on bare when whose was the owner itself, and the owner's
             * wait ran out (chaos seed 10270 with --resend --more,
             * docs/cluster.md) */
            uint32_t n_chain = 0;
            uint16_t *chain = NULL;
            if (!relay && sm->has_qos2_told && sm->qos2_told && whose != cn->self)
                chain = waiting_copy_ids(cn, id, (uint16_t)sm->client_id.len, sm->epoch, whose,
                                         sm->has_qos2_epoch ? sm->qos2_epoch : 0, &n_chain);
            uint32_t *merged =
                chain ? malloc((sm->n_qos2_received + n_chain + 1) * sizeof *merged) : NULL;
            if (merged) {
                uint32_t k =
                    ids_union(merged, sm->qos2_received, sm->n_qos2_received, chain, n_chain, NULL);
                on.qos2_received = merged;
                on.n_qos2_received = k;
                on.has_qos2_of = true;
                on.qos2_of = cn->self;
                on.has_qos2_epoch = true;
                on.qos2_epoch = sm->epoch;
                /* the wait of whose's copy, if it still waited in turn,
                 * goes on with them (owner_told asks on) */
                if (!(sm->has_wait_node && sm->wait_node && sm->has_wait_epoch && sm->wait_epoch &&
                      sm->wait_epoch < sm->epoch)) {
                    on.has_wait_node = on.has_wait_epoch = false;
                    on.n_wait_released = 0;
                    on.wait_released = NULL;
                }
                log_info("cluster: the QoS 2 ids of '%.*s' from %016llx answer the wait of this "
                         "node's copy of claim %llu, claimed away: %u passed on as that copy's",
                         (int)sm->client_id.len, id, (unsigned long long)whose,
                         (unsigned long long)sm->epoch, (unsigned)k);
            }
            free(chain);
            /* relayed with them: the ids of this node's copy that the
             * sender's copy still waited for (own, a late state's). Its
             * own ids are only part of its client's then, and an owner
             * whose wait for that copy's ids they answer took the part
             * for all. Before, they stayed here: chaos seed 18030 with
             * --resend --more --links --overlap, n2's copy of claim 18,
             * cut off while it waited for n3's ids of claim 16, sent its
             * state (no ids) to n3's claim 19 once healed; n3 passed it on
             * to n1's claim 21, which waited for n2's ids and took the
             * client's resend of what n3's copy had taken for new (3
             * messages, each at 3 subscribers). */
            uint32_t *with_own = relay && own && n_own
                                     ? malloc((sm->n_qos2_received + n_own + 1) * sizeof *with_own)
                                     : NULL;
            if (with_own) {
                on.n_qos2_received =
                    ids_union(with_own, sm->qos2_received, sm->n_qos2_received, own, n_own, NULL);
                on.qos2_received = with_own;
                log_info("cluster: the QoS 2 ids of '%.*s' from %016llx go on with the %u of this "
                         "node's copy that its copy waited for",
                         (int)sm->client_id.len, id, (unsigned long long)whose, (unsigned)n_own);
            }
            if (relay) {
                on.has_qos2_of = true;
                on.qos2_of = whose;
            } else if (!merged) {
                on.n_qos2_received = 0;
                on.qos2_received = NULL;
                on.has_qos2_told = on.qos2_told = false;
                on.has_qos2_of = on.has_qos2_epoch = false;
                /* (and the wait that went with them) */
                on.has_wait_node = on.has_wait_epoch = false;
                on.n_wait_released = 0;
                on.wait_released = NULL;
            }
            Starling__Chan__SessionMessage **kept =
                sm->n_msgs ? malloc(sm->n_msgs * sizeof(*kept)) : NULL;
            size_t left = 0;
            if (kept) {
                left = late_seen_here(cn, sm, kept, &on.n_msgs);
                on.msgs = kept;
            }
            Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
            fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_MESSAGES;
            fr.session_messages = &on;
            /* sequenced on (its own seq to that node), in the batch that
             * records this frame as applied: acknowledged once this node
             * holds them in its outbox */
            struct store_batch *bt = NULL;
            int sent =
                kept || !sm->n_msgs ? cluster_fwd_send_frame(cn->fwd, node, &fr, &bt) : -ENOMEM;
            free(kept);
            free(merged);
            free(with_own);
            if (sent >= 0) {
                cluster_fwd_in_stage(cn->fwd, sq, &bt);
                persist_submit(cn->b, &bt, NULL, NULL);
                log_info("cluster: %zu late message(s) for '%.*s' (claim %llu) passed on to its "
                         "owner %016llx (claim %llu), %zu left out (its client had them here)",
                         sm->n_msgs - left, (int)sm->client_id.len, id,
                         (unsigned long long)sm->epoch, (unsigned long long)node,
                         (unsigned long long)epoch, left);
                return false;
            }
            if (bt)
                store_batch_free(bt);
        }
    }
    if (!s && sq && cn_claim_pending(cn, id, (uint16_t)sm->client_id.len, from)) {
        /* a claim that cn_claim_pending resumed from the record has its
         * session now */
        s = unrouted_session(cn, id, sm->client_id.len, epoch ? epoch : sm->epoch);
        own_claim = !(s && epoch > sm->epoch);
        if (!s) {
            /* its client connects here now: the session comes with its
             * claim (from its record or an old owner); sent again meanwhile */
            cluster_fwd_in_defer(cn->fwd, sq);
            log_debug("cluster: %zu late message(s) for '%.*s' (claim %llu) wait for its claim "
                      "here",
                      sm->n_msgs, (int)sm->client_id.len, id, (unsigned long long)sm->epoch);
            return false;
        }
    }
    uint64_t to = 0, to_epoch = 0;
    if (!s && sq && node == cn->self && epoch >= sm->epoch &&
        (s = handed_on_copy(cn, id, (uint16_t)sm->client_id.len, epoch, &to, &to_epoch)))
        log_info("cluster: %zu late message(s) of '%.*s' (claim %llu) came from %016llx after "
                 "this node handed the session on to %016llx (claim %llu), which it has not "
                 "applied: they go through its copy",
                 sm->n_msgs, (int)sm->client_id.len, id, (unsigned long long)sm->epoch,
                 (unsigned long long)from, (unsigned long long)to, (unsigned long long)to_epoch);
    if (!s && sq && node == cn->self && epoch >= sm->epoch) {
        s = adopt_lost(cn, id, (uint16_t)sm->client_id.len, epoch, from);
        own_claim = epoch == sm->epoch;
    }
    if (!s) {
        cn_seq_applied(cn, sq);
        atomic_fetch_add(&b->stats.msgs_dropped, sm->n_msgs);
        atomic_fetch_add(&b->stats.dropped[BROKER_DROP_SESSION_MOVED], sm->n_msgs);
        log_warn("cluster: %zu late message(s) from %016llx for '%.*s' (claim %llu), which is not "
                 "here: dropped",
                 sm->n_msgs, (unsigned long long)from, (int)sm->client_id.len,
                 (const char *)sm->client_id.data, (unsigned long long)sm->epoch);
        return false;
    }
    /* a staged claim's fold: into its batch, after the claim's session */
    struct cn_fold_into *into = fr ? fr->into : NULL;
    struct store_batch *bt = into ? into->bt : NULL;
    if (into)
        into->bt = NULL;
    size_t dups = 0, past = 0, parked = 0;
    /* s resumed from its record without its old owner's copy (blind): the
     * messages of another node's copy wait for that copy's, which may bring
     * them as had (its client got them there). So do those of this node's
     * own copy folded in when it was moving out to another node: it held
     * what was routed to it for the owners after it, who may have had it
     * directly where the owners rule did not bound the copy (docs/
     * cluster.md, *What is not guaranteed yet*; in chaos seed 10702 for a
     * reason the run's logs do not show). Before, they were
     * delivered at once, a second time (chaos seed 10702 with --resend
     * --more: a copy moving out past two owners, folded into a claim
     * resumed from the record while the second was down, 1 QoS 2
     * duplicate at 2 subscribers; test_faults.py::test_own_copy_moving_
     * out_folded_into_a_resumption_waits_for_the_owner_it_waits_for). Not
     * a copy that stood in for the claim's session here (moving out to
     * this node): what reached it while the claim waited for the old owner
     * went nowhere else (test_faults.py::test_stored_copy_standing_in_for_
     * the_claims_session_hands_on_what_it_took) */
    bool other = from != cn->self || (fr && fr->was_to && fr->was_to != cn->self);
    lock_acquire(&s->lock);
    bool park = other && from != s->blind_node && !s->told && !s->blind_said_none &&
                session_holds(s, broker_now_mono_ms(), cn->b->cfg.cluster_resend_wait);
    if (park && !s->park_open) {
        s->park_open = true;
        s->park_since = broker_now_mono_ms();
    }
    lock_release(&s->lock);
    struct late_resend *rs = calloc(1, sizeof(*rs) + (sm->n_msgs + 1) * sizeof(uint16_t));
    struct late_commit *lc = calloc(1, sizeof(*lc) + (sm->n_msgs + 1) * sizeof(struct msg *));
    if (lc) {
        lc->b = b;
        lc->s = session_ref(s);
    }
    for (size_t i = 0; i < sm->n_msgs; i++) {
        const Starling__Chan__SessionMessage *q = sm->msgs[i];
        if (q->topic.len == 0 || q->topic.len > 65535)
            continue;
        struct msg *m =
            msg_new(q->topic.data, (uint16_t)q->topic.len, q->payload.data,
                    (uint32_t)q->payload.len, q->has_properties ? q->properties.data : NULL,
                    q->has_properties ? (uint32_t)q->properties.len : 0,
                    (uint8_t)(q->msg_qos > 2 ? 2 : q->msg_qos), q->retain, q->expiry_at_ms, NULL);
        if (!m)
            continue;
        if (q->has_origin && q->has_pub_id && q->origin && q->pub_id) {
            m->id_node = q->origin;
            m->id_seq = q->pub_id;
        }
        /* (parked, a restored message waits as any other) */
        int r = late_exchange_adopt(b, s, q, m, !park, &bt);
        if (log_get_level() >= LOG_LEVEL_DEBUG) {
            char tag[MSG_TAG_LEN];
            log_debug("cluster: late message of '%s' (%016llx/%llu, '%s', state %u, packet id "
                      "%u) from %016llx: %s",
                      s->client_id, (unsigned long long)m->id_node, (unsigned long long)m->id_seq,
                      msg_tag(q->payload.data, q->payload.len, tag), (unsigned)q->state,
                      (unsigned)(q->has_packet_id ? q->packet_id : 0), (unsigned long long)from,
                      r == 1                               ? "exchange adopted"
                      : r == 2                             ? "had it (exchange)"
                      : q->state == MSG_STATE_WAIT_PUBCOMP ? "past PUBREC, not taken"
                                                           : "to deliver");
        }
        if (r == 1 && rs) {
            rs->pids[rs->n++] = (uint16_t)q->packet_id;
        } else if (r == 2) {
            dups++;
        } else if (r == 0 && q->state == MSG_STATE_WAIT_PUBCOMP) {
            /* past PUBREC and not adopted: its client has it (or this
             * session used its packet id since: it cannot be completed);
             * another copy of it is not taken (a parked one) */
            past++;
            seen_note(s, m);
            log_debug("cluster: a late message of '%s' past PUBREC (packet id %u, origin "
                      "%016llx, publish %llu) not taken",
                      s->client_id, q->packet_id, (unsigned long long)q->origin,
                      (unsigned long long)q->pub_id);
        } else if (r == 0 && (!lc || late_hold(lc, m))) {
            int d = (park ? session_deliver_parked : session_deliver_late)(
                b, s, m, (uint8_t)(q->qos > 2 ? 2 : q->qos), q->retain, q->sub_ids,
                (uint16_t)(q->n_sub_ids > 65535 ? 0 : q->n_sub_ids), &bt);
            if (d == 1)
                dups++; /* the session had it (it came here directly too) */
            else if (d == 0 && park)
                parked++;
        }
        msg_unref(m);
    }
    cn_session_late_in(cn, s, from, sm);
    late_test_delay();
    /* what they brought and that they were applied: one batch (the frame
     * is acknowledged once it committed); its messages are held until then */
    cluster_fwd_in_stage(cn->fwd, sq, &bt);
    /* a folded copy's rows go with them: both or neither after a kill */
    if (fr)
        copy_rows_del(cn, fr->from, id, (uint16_t)sm->client_id.len, fr->seqs, fr->n, &bt);
    if (into) { /* submitted by the claim (cn_fold_submit) */
        into->bt = bt;
        if (lc) {
            lc->next = into->held;
            into->held = lc;
        }
    } else if (lc) {
        persist_submit(b, &bt, late_commit_done, lc);
    } else {
        persist_submit(b, &bt, NULL, NULL);
    }
    if (rs && rs->n) {
        log_info("cluster: %zu unfinished QoS 2 exchange(s) of '%s' from %016llx taken with "
                 "their packet ids",
                 rs->n, s->client_id, (unsigned long long)from);
        late_resend_post(b, s, rs);
    } else {
        free(rs);
    }
    bool full = false;
    size_t ranges = 0;
    /* (a frame passed on for the old owner's copy counts as its) */
    uint64_t whose = sm->has_qos2_of && sm->qos2_of ? sm->qos2_of : from;
    lock_acquire(&s->lock);
    /* What the sender's copy got, after its messages: its identities are of
     * what was queued to it, its own late messages too (those it did not
     * send went to its client, or were dropped there); merged first, they
     * would drop its own messages here. Later copies of them are not taken.
     * A parking frame's go aside until its messages are judged: they cover
     * them, which would be judged as had (session.park_seen; out of memory,
     * they are left out: at least once). So do those of any other node's
     * frame while parked messages wait: a sender's ranges cover what it sent
     * before too (its earlier frames, parked: chaos seed 1399756914's copy
     * sent 308 messages, cut in two frames). The old owner's are what
     * parked messages are judged by. */
    bool aside = park || (whose != s->blind_node && (s->park_seen || atomic_load(&s->parked_hint)));
    if (aside && s->seen && sm->n_seen && !s->park_seen)
        s->park_seen = msg_seen_new();
    struct msg_seen *into_seen = aside ? s->park_seen : s->seen;
    for (size_t i = 0; into_seen && own_claim && i < sm->n_seen; i++)
        if (sm->seen[i]->lo <= sm->seen[i]->hi)
            msg_seen_add_range(into_seen, sm->seen[i]->node, sm->seen[i]->lo, sm->seen[i]->hi);
    if (s->seen) {
        full = msg_seen_full(s->seen);
        ranges = msg_seen_ranges(s->seen);
    }
    /* the last frame of the old owner's copy (told its ids, after the
     * messages and the identities of the frames before it) is in: what
     * waited is judged now */
    bool unpark = s->park_open && s->told && whose == s->blind_node && !(sm->has_more && sm->more);
    if (unpark)
        s->park_open = false;
    struct worker *w = unpark && s->conn ? s->w : NULL;
    lock_release(&s->lock);
    if (w)
        b->sink->wake(w, s, NULL);
    /* a routed copy's grace sends what comes every poll: a line when
     * something was new, for the last frame, and for the first of a copy
     * that stays past its time */
    if ((sm->has_last && sm->last) || (sm->has_stays && sm->stays) || sm->n_msgs > dups)
        log_info("cluster: %zu late message(s) of '%s' came from %016llx, %zu of them had come "
                 "directly (not again), %zu past PUBREC not taken, %zu parked (they wait for its "
                 "old owner's copy)%s",
                 sm->n_msgs, s->client_id, (unsigned long long)from, dups, past, parked,
                 full ? "; its record of identities was full: later ones at least once" : "");
    else if (sm->n_msgs)
        log_debug("cluster: %zu late message(s) of '%s' came from %016llx, all had come directly",
                  sm->n_msgs, s->client_id, (unsigned long long)from);
    log_debug("cluster: '%s' had %zu identity range(s) recorded", s->client_id, ranges);
    session_unref(s);
    return fr != NULL;
}

/* ---- the start-up pass ---------------------------------------------------------- */

/* Whether this node's tables have caught up with the leader's as it was
 * when first seen (so that claims made while this node was down are
 * applied here). */
static bool caught_up(struct cluster_node *cn)
{
    uint64_t leader = raft_node_leader(cn->raft);
    if (!leader)
        return false;
    if (leader == cn->self)
        return raft_node_ready(cn->raft);
    if (!cn->restart_target) {
        pthread_mutex_lock(&cn->mu);
        for (unsigned i = 0; i < cn->n_peers; i++)
            if (cn->peers[i].node == leader && cn->peers[i].seen_ms >= cn->started_ms)
                cn->restart_target = cn->peers[i].applied;
        pthread_mutex_unlock(&cn->mu);
        if (!cn->restart_target)
            return false;
    }
    return fsm_applied(cn->fsm) >= cn->restart_target;
}

/* Whether another session of s's id is in this node's table, or came with
 * a claim here and is not in the table yet: its rows share the store's keys
 * with s's. */
static bool stand_in_beside(struct cluster_node *cn, struct session *s)
{
    struct broker *b = cn->b;
    pthread_mutex_lock(&b->registry.lock);
    struct session *other = registry_find(&b->registry, s->client_id, s->id_len);
    pthread_mutex_unlock(&b->registry.lock);
    if (other && other != s)
        return true;
    bool beside = false;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_incoming *x = cn->incoming; x && !beside; x = x->next)
        beside = x->s != s && x->s->id_len == s->id_len &&
                 memcmp(x->s->client_id, s->client_id, s->id_len) == 0;
    pthread_mutex_unlock(&cn->reg_mu);
    return beside;
}

/*
 * s, a stored copy standing in for a later claim of this node: the owners
 * rule it went by before the stop, as a session's fold rule (session.h,
 * struct session_fold). Moving out to the first owner after its claim, it
 * took nothing routed once that owner's routes were everywhere (its
 * direct_from, in memory only), and its fold into a claim here left such
 * forwards out until that claim's index (fold_rule_set). Restored from the
 * store it came back without it and took them: forwards held in an
 * origin's outbox across the stop, replayed to it, which that owner had
 * delivered, and its client completed (chaos seed 17603 with --resend
 * --more: 2 QoS 2 duplicates, DUP 0, after a whole-cluster SIGKILL;
 * test_faults.py::test_a_stand_in_leaves_out_what_its_copys_owner_had_
 * directly). Now it leaves out, as that copy did, a forward routed at or
 * past the owner's first record (or the owner's own publishes its session
 * had locally, session_owner_had) that reached that owner too: published
 * there, or sent there by its origin (struct msg.also_to). Only what was
 * routed before the index this node has applied now, and before the
 * record names another owner after that one: that owner's routes were in
 * every such table, and its copy, once another claim took the session,
 * hands on what it took that was routed before the next owner's record
 * (what comes later reaches this node alone). Not this node's own
 * publishes (a forward of them went there too, and comes back from that
 * copy as a late message if it took it: each identity once). */
static void stand_in_rule_set(struct cluster_node *cn, struct session *s, bool purge)
{
    lock_acquire(&s->lock);
    uint64_t stored = s->stored_epoch;
    bool skip = s->fold || !stored || cn_subs_shared(s);
    lock_release(&s->lock);
    if (skip)
        return;
    struct session_owner_local local;
    struct owner_found owner;
    uint64_t direct =
        owner_routed_index(cn, s->client_id, s->id_len, 0, 0, stored, true, &local, &owner);
    /* up to the index it stands in from, the owners after the first each
     * for its run (chaos seed 18002 on 7b51ab1: claims on n2, n3, n1 and
     * n2 again, n3's outbox replayed after a whole-cluster SIGKILL what it
     * routed in n1's run to n1 and to n2's stored copy of the first claim,
     * which stood in for the last; its rule named n3 alone and ended at
     * n1's record, so it delivered them, and n1's copy gave them again as
     * late messages: 3 QoS 2 duplicates). Before, the rule ended at the
     * next owner's record. Past the owners that fit, it keeps everything
     * (at least once). */
    uint64_t until = fsm_routes_index(cn->fsm) + 1;
    if (owner.past && owner.past < until)
        until = owner.past;
    /* (until at or below direct: the owner's own publishes that its
     * session had locally, routed before its first record, are still left
     * out, session_owner_had; chaos seed 18003 with --resend --more
     * --weight restart-all=8: 122 of them, which a stand-in held in its
     * store, came again as its state, DUP 1) */
    if (!direct || !owner.node)
        return;
    /* what it took before leaves its queue here only when no other
     * session of the id has rows in the store: they share its keys
     * (moving_rows_past_bound_del); else the fold leaves it out (msgs_send) */
    if (purge)
        purge = !stand_in_beside(cn, s);
    struct session_fold *f = malloc(sizeof(*f));
    if (!f)
        return; /* it takes everything: at least once */
    *f = (struct session_fold){until, direct, cn->self, owner.node, local, 0, {{0, 0}}};
    for (uint8_t i = 0; i < owner.n_later && owner.later[i].from < until; i++)
        f->later[f->n_later++] = owner.later[i];
    size_t gone = 0;
    lock_acquire(&s->lock);
    if (!s->fold && !cn_subs_shared(s) && !s->ended) {
        s->fold = f;
        f = NULL;
        /* and what it took of that before (an outbox replayed to it
         * before the start-up pass named it, say) */
        if (purge)
            gone = session_fold_drop_locked(cn->b, s);
    }
    lock_release(&s->lock);
    if (!f)
        log_debug("cluster: the stored copy of '%s' (claim %llu) leaves out what was routed from "
                  "index %llu to %llu and reached %016llx, the owner after it, or a later owner "
                  "in its run (%u listed) (%zu it held leave it)",
                  s->client_id, (unsigned long long)stored, (unsigned long long)direct,
                  (unsigned long long)until, (unsigned long long)owner.node,
                  (unsigned)owner.n_later, gone);
    free(f);
}

void cn_session_stand_in(struct cluster_node *cn, struct session *s, uint64_t epoch, bool purge)
{
    stand_in_rule_set(cn, s, purge);
    Starling__Cmd__SessionRecord *rec = record_read(cn, s->client_id, s->id_len);
    if (!rec)
        return;
    uint64_t blind_epoch = 0, blind = 0, stored = 0;
    lock_acquire(&s->lock);
    stored = s->stored_epoch;
    /* another node's claim came after the copy's: its record says so */
    if (stored && stored < epoch && rec->epoch > stored && CN_RESEND_KNOW_MS(cn) != 0)
        blind = record_blind(cn, rec, 0, 0, &blind_epoch);
    /* the record's claim, that node's copy of which the claim lost here
     * would have asked for: its ids, relayed by a node its frames reach
     * first, answer the wait as that copy's (wait_answered_by) */
    if (blind && blind == rec->node)
        blind_epoch = rec->epoch;
    if (blind)
        wait_begin(s, blind, blind_epoch, broker_now_mono_ms() + CN_RESEND_KNOW_MS(cn));
    lock_release(&s->lock);
    if (blind)
        log_info("cluster: the stored copy of '%s' (claim %llu) stands in for this node's claim "
                 "%llu, lost in a stop: its client's resends wait for the QoS 2 ids of %016llx, "
                 "an owner since",
                 s->client_id, (unsigned long long)stored, (unsigned long long)epoch,
                 (unsigned long long)blind);
    starling__cmd__session_record__free_unpacked(rec, NULL);
}

/* The user name of id's session record (malloc'ed), or NULL. */
static char *record_user(struct cluster_node *cn, const char *id, uint16_t len)
{
    Starling__Cmd__SessionRecord *rec = record_read(cn, id, len);
    char *user = rec && rec->username ? strdup(rec->username) : NULL;
    if (rec)
        starling__cmd__session_record__free_unpacked(rec, NULL);
    return user;
}

struct idlist {
    struct session **v;
    size_t n, cap;
};

/* Stored sessions: those the registry gives to this node learn their
 * epoch; those it gives to another node send it their messages and end. */
static void restart_pass(struct cluster_node *cn)
{
    struct broker *b = cn->b;
    struct registry *r = &b->registry;
    struct idlist l = {0};
    pthread_mutex_lock(&r->lock);
    for (size_t k = 0; k < r->n_buckets; k++)
        for (struct session *s = r->buckets[k]; s; s = s->hnext) {
            if (l.n == l.cap) {
                size_t cap = l.cap ? 2 * l.cap : 64;
                struct session **v = realloc(l.v, cap * sizeof(*v));
                if (!v)
                    break;
                l.v = v;
                l.cap = cap;
            }
            l.v[l.n++] = session_ref(s);
        }
    pthread_mutex_unlock(&r->lock);
    size_t moved = 0, released = 0;
    for (size_t i = 0; i < l.n; i++) {
        struct session *s = l.v[i];
        uint64_t node = 0, epoch = 0;
        bool claim_stored = false;
        lock_acquire(&s->lock);
        bool known = s->epoch != 0;
        uint64_t stored = s->stored_epoch;
        lock_release(&s->lock);
        int rc = known ? 0
                       : fsm_registry_claim(cn->fsm, s->client_id, s->id_len, &node, &epoch,
                                            &claim_stored);
        if (!known && rc == -ENOENT && stored) {
            /* its claim was released since it was stored: it expired while
             * this node was taken for dead (dead_expiry_poll), its tables
             * having come as a snapshot (cn_session_released did not see
             * the release), or it ended elsewhere after a claim there. It
             * ends here too; before, it stayed, unnamed, and its client
             * found it again here. Under reg_mu, as a claim puts its
             * session into the table, and looked at again there: a claim
             * of the id applied meanwhile may have given it to its
             * client. */
            pthread_mutex_lock(&cn->reg_mu);
            pthread_mutex_lock(&r->lock);
            lock_acquire(&s->lock);
            bool here = registry_find(r, s->client_id, s->id_len) == s && s->epoch == 0;
            lock_release(&s->lock);
            pthread_mutex_unlock(&r->lock);
            here = here &&
                   fsm_registry_get(cn->fsm, s->client_id, s->id_len, &node, &epoch) == -ENOENT;
            struct session *gone =
                here ? registry_local_surrender(b, s->client_id, s->id_len, false) : NULL;
            pthread_mutex_unlock(&cn->reg_mu);
            if (gone) {
                atomic_fetch_add(&cn->dead_sessions_expired, 1);
                log_info("cluster: the stored session of '%s' (claim %llu) was released while "
                         "this node was down: it ends",
                         gone->client_id, (unsigned long long)stored);
                released++;
                session_end(b, gone);
                session_unref(gone);
            }
        } else if (!known && rc == 0) {
            if (node == cn->self) {
                /* the store keeps no user name: the record does (the ACL of
                 * its deliveries until its client is back) */
                char *user = record_user(cn, s->client_id, s->id_len);
                lock_acquire(&s->lock);
                /* a copy of an older claim than the one it is named (this
                 * node claimed the id again since, its client connected
                 * as soon as the node was back): what it takes was routed
                 * to the owners in between too, whose copies hand it on.
                 * Its identities are recorded, as for a session that moved
                 * here: a claim of this node that resumes it (its client
                 * connecting again while the first claim waits) takes each
                 * once. Before, those came twice (test_faults.py::test_
                 * stored_copy_standing_in_for_the_claims_session_hands_on_
                 * what_it_took[2-True]: 5 of 5 QoS 2 duplicates). */
                bool stand_in = s->epoch == 0 && s->stored_epoch && s->stored_epoch < epoch;
                if (stand_in)
                    session_seen_start(s, broker_now_mono_ms());
                if (s->epoch == 0)
                    s->epoch = epoch;
                if (!s->user) {
                    s->user = user;
                    user = NULL;
                }
                lock_release(&s->lock);
                free(user);
                if (stand_in)
                    cn_session_stand_in(cn, s, epoch, true);
            } else {
                /* taken over while this node was down; a claim that said
                 * its claimant stores the session first (the registry
                 * keeps that flag: the claim may have been applied before
                 * the load, or come in a snapshot), as
                 * cn_registry_claimed_elsewhere marks it. Before, such a
                 * copy went unmarked, and its ids did not answer the wait
                 * of a claim resumed here from the record when that
                 * claimant kept nothing (own_moved_keep; test_forward.py::
                 * test_a_resend_to_a_session_whose_old_claimant_kept_
                 * nothing_is_answered_by_its_folded_copy[unrecorded] in
                 * one CI run of 2026-12-06: the resend waited out
                 * cluster_resend_wait; [snapshot]) */
                struct session *gone = registry_local_surrender(b, s->client_id, s->id_len, true);
                if (gone == s) {
                    cn_moving_add(cn, gone, node, epoch, true, true);
                    if (claim_stored)
                        cn_moving_claim_stored(cn, gone, node, epoch);
                    moved++;
                } else if (gone) {
                    session_end(b, gone);
                    session_unref(gone);
                }
            }
        }
        session_unref(s);
    }
    free(l.v);
    /* copies sent on while this node caught up (cn_registry_claimed_elsewhere)
     * met their claim before the owner's record: the tables are current now */
    struct idlist c = {0};
    uint64_t *to = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x; x = x->next)
        c.cap += x->now;
    c.v = c.cap ? calloc(c.cap, sizeof(*c.v)) : NULL;
    to = c.cap ? calloc(c.cap, sizeof(*to)) : NULL;
    for (struct cn_moving *x = cn->moving; x && c.v && to; x = x->next)
        if (x->now) {
            to[c.n] = x->to;
            c.v[c.n++] = session_ref(x->s);
        }
    pthread_mutex_unlock(&cn->reg_mu);
    for (size_t i = 0; i < c.n; i++) {
        moving_direct_set(cn, c.v[i], to[i], false, true);
        session_unref(c.v[i]);
    }
    free(c.v);
    free(to);
    log_debug("cluster: start-up pass over %zu stored session(s), %zu released", l.n, released);
    if (moved)
        log_info("cluster: %zu stored session(s) moved to other nodes while this one was down: "
                 "their messages follow them",
                 moved);
}

/* ---- this node taken for dead ------------------------------------------------------ */

size_t cn_session_routes_add(struct cluster_node *cn, struct cmd_batch *b, const struct session *s)
{
    size_t n = 0;
    for (uint32_t i = 0; !s->ended && i < s->n_subs; i++)
        if (cmd_route_add(b, s->subs[i].filter, s->subs[i].len, cn->self) == 0)
            n++;
    return n;
}

/*
 * A NodeDown(self) applied while this node runs: the leader heard nothing
 * from it for cluster_down_after (it was stopped, cut off, or its cluster
 * thread stalled) and its routes went, but for those of its persistent
 * sessions. What other nodes published for its clean sessions between that
 * commit and the commit of the routes proposed again here did not come:
 * their clients would see a gap without a sign. So those clean sessions
 * that subscribed to something end here, their connections closed (5.0:
 * DISCONNECT 0x89 "Server busy", [MQTT-5.0 3.14.2.1]: this node could not
 * serve them as it should; 3.1.1: the connection closes), and their
 * clients see a new session (session present 0) when they connect again,
 * to this node or another, and subscribe again. Counted in
 * starling_cluster_sessions_ended_taken_for_dead_total. Clean sessions
 * without subscriptions missed nothing and stay, and the persistent
 * sessions kept their routes. The routes of the sessions that stay are
 * proposed again (RouteAdd for each filter, idempotent: those that stayed
 * are no-ops); those of the ended sessions go with them.
 *
 * A NodeDown(self) applied before this node caught up after its start (not
 * `running`) was proposed while it was down or starting: its routes and
 * sessions of now came after it in the log and missed nothing; their
 * routes are proposed again all the same (idempotent), nothing ends.
 */
static void taken_for_dead(struct cluster_node *cn, bool running)
{
    struct broker *b = cn->b;
    struct registry *r = &b->registry;
    if (running)
        atomic_fetch_add(&cn->taken_for_dead, 1);
    struct cmd_batch *bt = cmd_batch_new();
    if (!bt)
        return;
    size_t n = 0, ended = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t k = 0; k < r->n_buckets; k++)
        for (struct session *s = r->buckets[k]; s; s = s->hnext) {
            lock_acquire(&s->lock);
            if (running && s->expiry_interval == 0 && s->n_subs > 0 && s->conn) {
                b->sink->kick(s->w, s->conn, MQTT_RC_SERVER_BUSY, false);
                ended++;
            } else {
                n += cn_session_routes_add(cn, bt, s);
            }
            lock_release(&s->lock);
        }
    pthread_mutex_unlock(&r->lock);
    /* and those of its old copies still subscribed (claimed away, moving
     * out), still in the subscription index: a session that subscribes
     * here to one of their filters before they end proposes no route (the
     * filter had a local subscriber), and when they end none goes, so the
     * route stayed missing while this node had a subscriber (chaos seed
     * 1093382011: a session moved whole to n2 while n2's copy of another,
     * claimed away while n2 was SIGSTOPped, still held the same filter;
     * about 1,300 messages published elsewhere for it in 23 s never came).
     * Also a NodeDown's counted route goes with the record that left this
     * node (NodeDown.keepers), and a session claimed back here meanwhile
     * joins the index beside the copy without a route proposed. They keep
     * their route until they end, as copies moving out do. */
    pthread_mutex_lock(&cn->reg_mu);
    n += cn_registry_surrendered_routes(cn, bt);
    for (struct cn_moving *x = cn->moving; x; x = x->next) {
        lock_acquire(&x->s->lock);
        n += cn_session_routes_add(cn, bt, x->s);
        lock_release(&x->s->lock);
    }
    pthread_mutex_unlock(&cn->reg_mu);
    atomic_fetch_add(&cn->dead_sessions_ended, ended);
    if (n && cn_queue_batch(cn, bt) != 0)
        n = 0;
    if (running)
        log_warn("cluster: this node was taken for dead: %zu route(s) proposed again, %zu clean "
                 "session(s) with subscriptions ended (their clients may have missed messages)",
                 n, ended);
    else if (n)
        log_info("cluster: a NodeDown of this node from before it caught up applied: %zu "
                 "route(s) proposed again",
                 n);
    cmd_batch_free(bt);
}

/* ---- dead nodes (the leader) ------------------------------------------------------ */

/*
 * Who is dead. A member is taken for dead when it has been silent for
 * cluster_down_after on every path the leader hears it by: its channel
 * connection (chan.Applied reports every 200 ms, checkpoints every second,
 * forwards, acknowledgements) and Raft (its answers to heartbeats), as
 * cluster_quiet_ms measures it: in this node's own running time, so that a
 * leader whose cluster thread was stalled (a slow fdatasync, SIGSTOP) does
 * not take the others' unread bytes for their silence. Before, the channel
 * alone judged, against the glue's clock: on the loaded test machine live,
 * serving followers were taken for dead every 30 s or so while Raft
 * heartbeats went on, and messages to their clean sessions were lost
 * (test_blackbox.py, docs/cluster.md "A node taken for dead while it
 * runs").
 */
static void node_down_poll(struct cluster_node *cn, uint64_t now)
{
    if (raft_node_leader(cn->raft) != cn->self || !raft_node_ready(cn->raft)) {
        /* a leader again later counts a death from its own judgement: the
         * member may have come back and died again meanwhile */
        pthread_mutex_lock(&cn->mu);
        for (unsigned i = 0; i < cn->n_peers; i++)
            cn->peers[i].dead_ms = 0;
        pthread_mutex_unlock(&cn->mu);
        return;
    }
    uint64_t down_after = cn->b->cfg.cluster_down_after;
    uint64_t down[MAX_PEERS], silent[MAX_PEERS], quiet[MAX_PEERS];
    unsigned n = 0;
    pthread_mutex_lock(&cn->mu);
    for (unsigned i = 0; i < cn->n_peers; i++)
        quiet[i] = cluster_quiet_ms(cn->c, cn->peers[i].node);
    /* Heard from no member for down_after: this node's own cluster thread
     * is the likelier one not to have read their bytes. Not a judgement to
     * make now; and were they all dead, nothing could commit anyway. */
    bool any_heard = false, any = false;
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (!cn->peers[i].left) {
            any = true;
            any_heard |= quiet[i] <= down_after;
        }
    if (any && !any_heard) {
        pthread_mutex_unlock(&cn->mu);
        return;
    }
    for (unsigned i = 0; i < cn->n_peers; i++) {
        struct peer *p = &cn->peers[i];
        if (quiet[i] <= down_after) {
            p->down_told = false; /* heard again */
            p->dead_ms = 0;
        }
        if (p->left || quiet[i] <= down_after || now - p->down_ms < down_after)
            continue;
        if (!p->dead_ms) {
            /* taken for dead when its silence passed down_after, by this
             * node's own measure of it (cluster_quiet_ms), which it kept as
             * a follower too: a newer leader counts from that moment, not
             * from its election. Before, each new leader began the count
             * again, and a cluster whose leadership changed more often than
             * a session's interval never expired it
             * (test_faults.py::test_dead_nodes_sessions_expire_across_leader_changes) */
            uint64_t over = quiet[i] - down_after;
            p->dead_ms = now > over ? now - over : 1;
            p->expiry_next_ms = now;
        }
        p->down_ms = now;
        silent[n] = p->down_told ? 0 : quiet[i]; /* 0: told already */
        p->down_told = true;
        down[n++] = p->node;
    }
    pthread_mutex_unlock(&cn->mu);
    for (unsigned i = 0; i < n; i++) {
        if (fsm_node_routes(cn->fsm, down[i]) == 0)
            continue; /* nothing to remove: no entry */
        if (silent[i]) {
            /* once per silence (NodeDown repeats every down_after while
             * the routes of its persistent sessions stay) */
            uint64_t heard = cluster_heard_ms(cn->c, down[i]), t = cn_mono_ms();
            log_warn("cluster: member %016llx silent for %llu ms (channel and Raft; last byte on "
                     "the channel %lld ms ago): its routes go (NodeDown)",
                     (unsigned long long)down[i], (unsigned long long)silent[i],
                     heard ? (long long)(t - heard) : -1LL);
            atomic_fetch_add(&cn->nodes_down, 1);
        }
        struct cmd_batch *b = cmd_batch_new();
        size_t len;
        const void *e = b && cmd_node_down(b, down[i]) == 0 ? cmd_batch_data(b, &len) : NULL;
        if (!e || cluster_propose(cn->c, e, len, NULL, NULL) < 0)
            log_warn("cluster: NodeDown(%016llx) not proposed", (unsigned long long)down[i]);
        cmd_batch_free(b);
    }
}

/*
 * The sessions of a dead member expire (the leader). A persistent session
 * whose node is taken for dead and stays down expires once its expiry
 * interval has passed since then (not since its client went away, which
 * was at the latest then: it lives that much longer, never less): the
 * leader releases it for its owner (SessionRelease with `expired`), and
 * with its record go the routes that NodeDown kept for it (cluster/fsm.c,
 * record_left) and its client id. Before, such sessions, their records and
 * their kept routes stayed until the node came back, and forever for a
 * node that never did. The owner applies the release when it runs again
 * (cn_session_released, or its start-up pass when its tables came as a
 * snapshot): its session of that claim ends there. A member cut off but
 * alive is taken for dead too: its clients' sessions whose interval passed
 * in the cut end when it heals, their connections closed (5.0: DISCONNECT
 * 0x89 Server busy), as a session that expired would be; a client that
 * connects again gets session present 0. Records without a session record
 * (a session with expiry 0, or whose record was not written) are left. A
 * scan of the registry per member at most once per EXPIRY_SCAN_MS, or
 * when the least interval among its sessions is due.
 */
#define EXPIRY_SCAN_MS 1000
#define EXPIRY_BATCH_MAX 256

/* an entry of releases stays well below the channel's max_frame (client
 * ids of up to 65,535 bytes) */
#define EXPIRY_BATCH_BYTES (1u << 20)

struct expiry_batch {
    struct cmd_batch *b;
    uint64_t node;
    size_t n, bytes;
    int rc;
};

static int expiry_release_one(void *ud, const void *id, size_t len, uint64_t epoch)
{
    struct expiry_batch *e = ud;
    if (e->rc != 0 || (e->n && e->bytes + len > EXPIRY_BATCH_BYTES))
        return 1;
    e->rc = cmd_session_release(e->b, id, len, e->node, epoch, 1);
    if (e->rc != 0)
        return 1;
    e->n++;
    e->bytes += len + 32;
    return 0;
}

/* The nodes that own sessions and are no members (forgotten, or gone
 * before this node knew them), or members that left: their sessions expire
 * as a dead member's, from now. Once per leadership. cn->mu held; owners:
 * the registry's (fsm_registry_owners, read before: a scan), n of them. */
static void gone_scan(struct cluster_node *cn, uint64_t now, const uint64_t *owners, int n)
{
    for (int i = 0; i < n; i++) {
        bool member = owners[i] == cn->self;
        for (unsigned k = 0; k < cn->n_peers && !member; k++)
            member = cn->peers[k].node == owners[i] && !cn->peers[k].left;
        if (!member)
            cn_gone_note(cn, owners[i], now);
    }
    /* (a failed scan is tried again at the next poll) */
    cn->gone_scanned = n >= 0;
}

void cn_gone_note(struct cluster_node *cn, uint64_t node, uint64_t now)
{
    if (node == cn->self)
        return;
    for (unsigned i = 0; i < cn->n_gone; i++)
        if (cn->gone[i].node == node)
            return;
    if (cn->n_gone < MAX_PEERS)
        cn->gone[cn->n_gone++] = (struct gone_owner){node, now, now};
}

void cn_gone_forget(struct cluster_node *cn, uint64_t node)
{
    for (unsigned i = 0; i < cn->n_gone; i++)
        if (cn->gone[i].node == node)
            cn->gone[i] = cn->gone[--cn->n_gone];
}

/* The releases of node's sessions whose interval has passed since `since`
 * (proposed), and when to look next. */
static uint64_t expire_owned(struct cluster_node *cn, uint64_t node, uint64_t since, uint64_t now)
{
    uint64_t elapsed_s = (now - since) / 1000, next_s = UINT64_MAX, next_ms;
    struct expiry_batch e = {cmd_batch_new(), node, 0, 0, 0};
    int rc = e.b ? fsm_node_expired(cn->fsm, node, elapsed_s, EXPIRY_BATCH_MAX, expiry_release_one,
                                    &e, &next_s)
                 : -ENOMEM;
    size_t len = 0;
    const void *data = rc > 0 && e.rc == 0 && e.n ? cmd_batch_data(e.b, &len) : NULL;
    if (rc < 0 || e.rc < 0 || (data && cluster_propose(cn->c, data, len, NULL, NULL) < 0)) {
        log_warn("cluster: the expired sessions of %016llx are not released now",
                 (unsigned long long)node);
        next_ms = now + EXPIRY_SCAN_MS;
    } else {
        atomic_fetch_add(&cn->dead_sessions_released, e.n);
        if (e.n)
            log_info("cluster: %zu session(s) of %016llx expired while it was taken for dead or "
                     "gone (%llu s ago): released",
                     e.n, (unsigned long long)node, (unsigned long long)elapsed_s);
        /* (the releases commit in a moment: a scan before would find them
         * again, harmless, as NOOPs) */
        next_ms = next_s == UINT64_MAX  ? UINT64_MAX
                  : next_s <= elapsed_s ? now + EXPIRY_SCAN_MS
                                        : since + next_s * 1000;
        if (next_ms < now + EXPIRY_SCAN_MS)
            next_ms = now + EXPIRY_SCAN_MS;
    }
    cmd_batch_free(e.b);
    return next_ms;
}

static void dead_expiry_poll(struct cluster_node *cn, uint64_t now)
{
    bool leading = raft_node_leader(cn->raft) == cn->self && raft_node_ready(cn->raft);
    uint64_t node[2 * MAX_PEERS], since[2 * MAX_PEERS];
    bool gone[2 * MAX_PEERS];
    unsigned n = 0;
    pthread_mutex_lock(&cn->mu);
    bool scanned = cn->gone_scanned;
    if (!leading)
        cn->gone_scanned = false;
    pthread_mutex_unlock(&cn->mu);
    if (!leading)
        return;
    /* (the scan outside cn->mu, which the cluster thread takes for every
     * report and membership entry) */
    uint64_t owners[2 * MAX_PEERS];
    int n_owners = scanned ? 0 : fsm_registry_owners(cn->fsm, owners, 2 * MAX_PEERS);
    pthread_mutex_lock(&cn->mu);
    if (!scanned)
        gone_scan(cn, now, owners, n_owners);
    for (unsigned i = 0; i < cn->n_peers; i++) {
        const struct peer *p = &cn->peers[i];
        if (!p->left && p->dead_ms && now >= p->expiry_next_ms) {
            node[n] = p->node;
            since[n] = p->dead_ms;
            gone[n++] = false;
        }
    }
    for (unsigned i = 0; i < cn->n_gone; i++)
        if (now >= cn->gone[i].next_ms) {
            node[n] = cn->gone[i].node;
            since[n] = cn->gone[i].since_ms;
            gone[n++] = true;
        }
    pthread_mutex_unlock(&cn->mu);
    for (unsigned i = 0; i < n; i++) {
        uint64_t next_ms = expire_owned(cn, node[i], since[i], now);
        pthread_mutex_lock(&cn->mu);
        if (gone[i]) {
            /* nothing of it can expire any more (no new session comes to
             * a node that is no member): forgotten */
            if (next_ms == UINT64_MAX)
                cn_gone_forget(cn, node[i]);
            for (unsigned k = 0; k < cn->n_gone; k++)
                if (cn->gone[k].node == node[i])
                    cn->gone[k].next_ms = next_ms;
        } else {
            for (unsigned k = 0; k < cn->n_peers; k++)
                if (cn->peers[k].node == node[i] && cn->peers[k].dead_ms == since[i])
                    cn->peers[k].expiry_next_ms = next_ms;
        }
        pthread_mutex_unlock(&cn->mu);
    }
}

void cn_session_released(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch)
{
    struct broker *b = cn->b;
    struct registry *r = &b->registry;
    /* (under reg_mu, as a claim puts its session into the table: none of
     * them can come between the look and the surrender) */
    pthread_mutex_lock(&cn->reg_mu);
    pthread_mutex_lock(&r->lock);
    struct session *s = registry_find(r, id, len);
    bool mine = false;
    if (s) {
        lock_acquire(&s->lock);
        /* that claim's session, or a stored copy whose claim is not known
         * yet but is not a later one */
        mine = s->epoch == epoch || (s->epoch == 0 && s->stored_epoch <= epoch);
        lock_release(&s->lock);
    }
    pthread_mutex_unlock(&r->lock);
    s = mine ? registry_local_surrender_rc(b, id, len, false, MQTT_RC_SERVER_BUSY) : NULL;
    pthread_mutex_unlock(&cn->reg_mu);
    if (!s)
        return;
    log_info("cluster: the session of '%.*s' (claim %llu) expired while this node was taken for "
             "dead: it ends here",
             (int)len, id, (unsigned long long)epoch);
    atomic_fetch_add(&cn->dead_sessions_expired, 1);
    session_end(b, s);
    session_unref(s);
}

/* ---- the poll ---------------------------------------------------------------------- */

/* x->seen: the identities x's session holds (s->lock held), which go with
 * what x sends to x->to (freed first if there). */
static void moving_seen_fill(struct cn_moving *x)
{
    struct session *s = x->s;
    free(x->seen);
    free(x->seenp);
    size_t n_seen = s->seen ? msg_seen_ranges(s->seen) : 0;
    x->seen = n_seen ? calloc(n_seen, sizeof(*x->seen)) : NULL;
    x->seenp = n_seen ? calloc(n_seen, sizeof(*x->seenp)) : NULL;
    if (!x->seen || !x->seenp)
        n_seen = 0;
    for (size_t i = 0; i < n_seen; i++) {
        starling__chan__seen_range__init(&x->seen[i]);
        msg_seen_range(s->seen, i, &x->seen[i].node, &x->seen[i].lo, &x->seen[i].hi);
        x->seenp[i] = &x->seen[i];
    }
    x->n_seen = n_seen;
}

/* Takes the old copy x's subscriptions out of the index and what it holds
 * (x->late, x->seen): x->s is unsubscribed, its lists empty. With `direct`
 * (not NULL): *direct is where its messages reached the owner directly
 * from (0: none, every one is sent), and their identities are not in
 * x->seen (seen_forget_direct). */
static void moving_take(struct cluster_node *cn, struct cn_moving *x, bool *shared,
                        uint64_t *direct)
{
    /* out of the index first, so that nothing arrives after the send */
    struct session *s = x->s;
    if (direct)
        owner_local_note(cn, s);
    lock_acquire(&s->lock);
    /* a shared group's message came here because its origin picked this
     * node, whatever routes it had: those all go */
    *shared = cn_subs_shared(s);
    uint32_t n = s->n_subs;
    struct session_sub *subs = s->subs;
    s->subs = NULL;
    s->n_subs = s->cap_subs = 0;
    lock_release(&s->lock);
    for (uint32_t i = 0; i < n; i++) {
        sub_index_remove(cn->b->index, subs[i].filter, subs[i].len, s);
        free(subs[i].filter);
    }
    free(subs);
    lock_acquire(&s->lock);
    x->late = cn_session_take_msgs(s);
    if (direct) {
        *direct = *shared ? 0 : x->routed ? x->route_index : s->direct_from;
        seen_forget_direct(s, x->late, *direct);
    }
    /* a copy that stood in for a claim here: what its rule leaves out of
     * the fold (msgs_send) its client never had either */
    if (x->to == cn->self && s->fold && s->fold->via && s->seen)
        for (const struct qmsg *q = x->late; q; q = q->next)
            if (stand_in_had(s->fold, q) && q->m->id_node && q->m->id_seq)
                msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
    /* what its client had: the owner takes those once */
    moving_seen_fill(x);
    lock_release(&s->lock);
}

/* What x->late holds goes to `to` (its new owner, or this node:
 * cn_moving_fold); x is freed. */
static void moving_send(struct cluster_node *cn, struct cn_moving *x, uint64_t to, uint64_t direct)
{
    msgs_send(cn, x->s, to, x->s->client_id, x->s->id_len, x->epoch, x->late, direct, LATE_LAST,
              x->seenp, x->n_seen, x->into, x->to);
    free(x->seen);
    free(x->seenp);
    session_unref(x->s);
    free(x);
}

/* The route table index from which `to`, owner of id with claim `epoch`,
 * had its routes everywhere: the index of the first record of its run of
 * records in SessionRecord.owners (an entry is added when the record names
 * another node than the one before), or 0 when the list no longer shows it
 * (RECORD_OWNERS_MAX) or the record is gone. *routed_from: the index from
 * which its session took forwards, as that entry says
 * (RecordOwner.routed_from), 0 when it does not say. */
static uint64_t owner_entry_index(struct cluster_node *cn, const char *id, uint16_t len,
                                  uint64_t to, uint64_t epoch, uint64_t *routed_from)
{
    *routed_from = 0;
    Starling__Cmd__SessionRecord *rec = record_read(cn, id, len);
    if (!rec)
        return 0;
    const Starling__Cmd__RecordOwner *at = NULL;
    for (size_t i = 0; i < rec->n_owners; i++)
        if (rec->owners[i]->epoch <= epoch)
            at = rec->owners[i];
    uint64_t index = 0;
    if (at && at->node == to) {
        index = at->index;
        *routed_from = at->has_routed_from ? at->routed_from : 0;
    }
    starling__cmd__session_record__free_unpacked(rec, NULL);
    return index;
}

/* An old copy x ending while the owner it moves out to (x->to, claim
 * x->epoch) is down and the session has a later owner: what x holds that
 * was routed before x->to's session took forwards (a session built by a
 * claim drops those routed before it applied there, session.routed_from,
 * written in the owner's entry of SessionRecord.owners) goes to the owner
 * of now, out of x->late. That owner's claim came after x->to's (from its
 * record, or x->to's state): x->to could not have given those messages to
 * its client, so nothing tells of them but this copy. The rest (routed
 * since, or of an unknown index) still goes to x->to, which knows what its
 * client had and passes it on when it is back. An entry that does not say
 * (a record of an older build, a session that takes forwards of any
 * index) bounds it at x->to's first record, from which its routes were
 * everywhere (the owners rule): what was routed between its claim and that
 * record reached its session too, and its client may have had it (with
 * that bound alone, the owner of now delivered it again:
 * test_faults.py::test_restarted_nodes_copy_sends_the_owner_of_now_only_
 * what_its_owner_did_not_take). Before, all of it waited in the outbox for
 * a dead x->to, and the session's owner never got it while x->to stayed down
 * (chaos seed 1188520366 with --more: a copy sent on at its node's start
 * to an owner SIGKILLed since). Not when x->to is alive: it passes on
 * what it holds by its identities (test_killed_owners_copy_judges_late_
 * messages_passed_through_it). No identities go with them: x's include
 * what it collected and sends to x->to, which the owner of now would then
 * take for had when they come on (seen_forget_direct). `direct`: what x
 * leaves out as having reached an owner directly (moving_take). */
static void moving_send_owner_of_now(struct cluster_node *cn, struct cn_moving *x, bool shared,
                                     uint64_t direct)
{
    struct session *s = x->s;
    uint64_t node = 0, epoch = 0;
    if (shared || x->to == cn->self || !x->late ||
        fsm_registry_get(cn->fsm, s->client_id, s->id_len, &node, &epoch) != 0 || node == 0 ||
        node == x->to || node == cn->self || epoch <= x->epoch || cn_peer_live(cn, x->to))
        return;
    uint64_t routed_from;
    uint64_t since = owner_entry_index(cn, s->client_id, s->id_len, x->to, x->epoch, &routed_from);
    if (!since)
        return;
    if (routed_from && routed_from < since)
        since = routed_from;
    lock_acquire(&s->lock);
    struct session_owner_local local = s->direct_local;
    lock_release(&s->lock);
    struct qmsg *before = NULL, **tail = &before;
    size_t n = 0;
    for (struct qmsg **pp = &x->late; *pp;) {
        struct qmsg *q = *pp;
        /* (what reached an owner between x's claim and x->to's, `direct`,
         * stays: msgs_send leaves it out) */
        if (q->m->route_index && q->m->route_index < since &&
            !session_owner_had(&local, q->m, direct)) {
            *pp = q->next;
            q->next = NULL;
            *tail = q;
            tail = &q->next;
            n++;
        } else {
            pp = &q->next;
        }
    }
    if (!n)
        return;
    log_info("cluster: %zu late message(s) of '%s' routed before index %llu, when %016llx (claim "
             "%llu, down) took forwards, go to the owner of now %016llx (claim %llu)",
             n, s->client_id, (unsigned long long)since, (unsigned long long)x->to,
             (unsigned long long)x->epoch, (unsigned long long)node, (unsigned long long)epoch);
    /* and their identities leave those x->to gets: x->to would tell them
     * on to the owner of now with its own (its state, its late messages),
     * and the owner would take these for had when they came (or, parked,
     * when it judged them): lost. Chaos seed 9995 with --resend --more
     * (2026-12-05): 115 late messages of fs0 went from n1 to n3, n1's
     * identities with the rest to n2 (SIGSTOPped), which told them to n3
     * when it continued: n3 dropped all 115 ("115 of them it had by then"). */
    lock_acquire(&s->lock);
    for (const struct qmsg *q = s->seen ? before : NULL; q; q = q->next)
        if (q->m->id_node && q->m->id_seq)
            msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
    moving_seen_fill(x);
    lock_release(&s->lock);
    msgs_send(cn, s, node, s->client_id, s->id_len, epoch, before, 0, LATE_PLAIN, NULL, 0, NULL, 0);
}

/* The old copy x (out of cn->moving) ends; what it held goes to its new
 * owner. */
static void handed_note(struct cluster_node *cn, struct cn_moving *x);

static void moving_end(struct cluster_node *cn, struct cn_moving *x)
{
    bool shared;
    uint64_t direct = 0;
    /* without the new owner's word (timeout, or a stored session sent on
     * at start-up before the owner's record was in), everything goes: at
     * least once; but for what the owners rule leaves out, judged now if
     * it was not known when the copy began to move out (a copy that
     * answered a request before the record of an owner after its claim
     * was applied here: a node SIGSTOPped, or started again, while its
     * claimant resumed the session from the record; chaos seed
     * 1188520366 with --more, 538 late messages of a copy whose owners
     * index was 0). Not for a stored session whose id the registry here
     * did not name when it answered (its claim not known: see
     * request_answer in cluster_registry.c). */
    lock_acquire(&x->s->lock);
    bool known = x->now || x->known || x->s->epoch != 0;
    lock_release(&x->s->lock);
    if (!x->routed && x->to != cn->self && known) /* (its rows go below) */
        moving_direct_set(cn, x->s, x->to, true, false);
    moving_take(cn, x, &shared, &direct);
    log_debug("cluster: the old copy of '%s' ends (%s)", x->s->client_id,
              x->routed ? "its new owner's routes are everywhere" : "grace period over");
    moving_send_owner_of_now(cn, x, shared, direct);
    handed_note(cn, x);
    struct session *s = session_ref(x->s);
    bool x_to_self = x->to == cn->self;
    /* sent first: the outbox row and the removal of these messages from
     * the copy's stored rows commit before the batch of its end, which
     * deletes every record of the id (the other way round, a SIGKILL
     * between the two commits lost them) */
    moving_send(cn, x, x->to, direct);
    if (x_to_self)
        cn_session_unstore_beside(cn->b, s); /* the session it went to here */
    session_end(cn->b, s);
    session_unref(s);
}

bool cn_moving_held(struct cluster_node *cn, const char *id, uint16_t len)
{
    bool held = false;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x && !held; x = x->next)
        held = x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0;
    pthread_mutex_unlock(&cn->reg_mu);
    return held;
}

/* session_qos2_pending of this node's copy s, whose ids a waiting owner
 * asks for; and, with w, s's own wait when it still waited for another
 * node's ids of a known claim, not told: its ids are only part of its
 * client's then. s->lock held. */
static uint16_t *copy_ids(const struct cluster_node *cn, struct session *s, uint32_t *n,
                          struct cn_wait_on *w)
{
    uint64_t now = broker_now_mono_ms();
    uint16_t *ids = session_qos2_pending(s, now, n);
    if (ids && w && !w->node && session_blind(s, now) && !s->told && s->blind_node &&
        s->blind_node != cn->self && s->blind_epoch &&
        (w->released = malloc((s->n_blind_released + 1) * sizeof *w->released))) {
        for (uint32_t i = 0; i < s->n_blind_released; i++)
            w->released[i] = s->blind_released[i];
        w->n_released = s->n_blind_released;
        w->node = s->blind_node;
        w->epoch = s->blind_epoch;
        w->left_ms = s->blind_until > now ? s->blind_until - now : 1;
    }
    return ids;
}

uint16_t *cn_moving_qos2_ids(struct cluster_node *cn, const char *id, uint16_t len, uint64_t to,
                             uint32_t *n, struct cn_wait_on *w)
{
    uint16_t *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&cn->reg_mu);
    struct cn_moving *last = NULL;
    /* (not a copy moving to this node itself, a stand-in or an overtaken
     * claim's session, whose ids came from elsewhere) */
    for (struct cn_moving *x = cn->moving; x; x = x->next)
        if (x->to == to && to != cn->self && x->s->id_len == len &&
            memcmp(x->s->client_id, id, len) == 0 && (!last || x->epoch > last->epoch))
            last = x;
    if (last) {
        lock_acquire(&last->s->lock);
        ids = copy_ids(cn, last->s, n, w);
        lock_release(&last->s->lock);
    }
    pthread_mutex_unlock(&cn->reg_mu);
    return ids;
}

/* The QoS 2 ids of this node's own copy of id of claim `epoch` (not 0)
 * that is moving to this node itself as an overtaken claim's session
 * (cn_overtaken_add: its claimant never asked for it, and the registry
 * names this node again): its ids are those its client sent here under
 * that claim. A malloc'd array of *n, or NULL (no such copy). Before, a
 * wait for them found no copy moving out to the waiting node, nothing
 * ended and no stored copy, and the client's resend was taken for new:
 * chaos seed 10952 with --resend --more --no-lb, n2's copy of claim 4,
 * overtaken when the client came back to n2 (claim 7), and n1's state,
 * restored after a SIGKILL and waiting for n2's claim-4 ids, came before
 * the claim folded that copy (3 QoS 2 duplicates). */
static uint16_t *overtaken_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                    uint64_t epoch, uint32_t *n, struct cn_wait_on *w)
{
    uint16_t *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x && !ids; x = x->next)
        if (x->to == cn->self && x->epoch == epoch && x->s->id_len == len &&
            memcmp(x->s->client_id, id, len) == 0) {
            lock_acquire(&x->s->lock);
            if (x->s->epoch == epoch)
                ids = copy_ids(cn, x->s, n, w);
            lock_release(&x->s->lock);
        }
    pthread_mutex_unlock(&cn->reg_mu);
    return ids;
}

/* copy_ids of s (a reference, dropped here) unless s has ended or, with
 * stored_epoch (not NULL), s is stored under another claim; else NULL. */
static uint16_t *live_copy_ids(struct cluster_node *cn, struct session *s,
                               const uint64_t *stored_epoch, uint32_t *n, struct cn_wait_on *w)
{
    uint16_t *ids = NULL;
    lock_acquire(&s->lock);
    if (!s->ended && (!stored_epoch || s->stored_epoch == *stored_epoch))
        ids = copy_ids(cn, s, n, w);
    lock_release(&s->lock);
    session_unref(s);
    return ids;
}

/* The most that cn->handed keeps (the oldest go first). */
#define HANDED_MAX 4096

static void handed_free(struct cn_handed *h)
{
    free(h->ids);
    free(h->wait_rel);
    free(h);
}

/* A note of the QoS 2 ids[0..n) (taken over) of id's copy of claim
 * `epoch` (folded: into a claim's session on this node), and of the wait
 * w of that copy for another node's ids (NULL or node 0: none; copied),
 * kept for CN_RESEND_KNOW_MS; NULL (and ids freed) when there are
 * neither ids nor a wait, or out of memory. Before, a note kept the ids
 * alone: a wait down a chain that came to this node for a copy that had
 * ended (or been folded) while it still waited took its ids for all its
 * client had sent, and the client's resend of a message the third node's
 * copy had taken for new (test_forward.py::test_a_folded_copys_note_
 * keeps_its_wait). */
static struct cn_handed *handed_new(struct cluster_node *cn, const char *id, uint16_t len,
                                    uint64_t epoch, uint16_t *ids, uint32_t n, bool folded,
                                    const struct cn_wait_on *w)
{
    bool wait = w && w->node && w->epoch;
    struct cn_handed *h = ids && (n || wait) ? calloc(1, sizeof(*h) + len) : NULL;
    uint16_t *rel = h && wait ? malloc((w->n_released + 1) * sizeof(*rel)) : NULL;
    if (!h || (wait && !rel)) {
        free(h);
        free(ids);
        return NULL;
    }
    h->epoch = epoch;
    h->len = len;
    memcpy(h->id, id, len);
    h->n = n;
    h->ids = ids;
    h->folded = folded;
    h->until_ms = cn_mono_ms() + CN_RESEND_KNOW_MS(cn);
    if (wait) {
        uint32_t k = 0;
        for (size_t i = 0; i < w->n_released; i++)
            if (w->released[i] >= 1 && w->released[i] <= 65535)
                rel[k++] = (uint16_t)w->released[i];
        h->wait_node = w->node;
        h->wait_epoch = w->epoch;
        h->wait_until_ms = cn_mono_ms() + (w->left_ms ? w->left_ms : 1);
        h->n_wait_rel = k;
        h->wait_rel = rel;
    }
    return h;
}

/* handed_new for copy s, its ids as its client may still resend them, and
 * its wait if it still waited (copy_ids). */
static struct cn_handed *handed_make(struct cluster_node *cn, struct session *s, bool folded)
{
    uint32_t n = 0;
    struct cn_wait_on w = {0};
    lock_acquire(&s->lock);
    uint16_t *ids = copy_ids(cn, s, &n, &w);
    uint64_t epoch = session_claim_epoch(s);
    lock_release(&s->lock);
    struct cn_handed *h = handed_new(cn, s->client_id, s->id_len, epoch, ids, n, folded, &w);
    free(w.released);
    return h;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The commit of a note's row (handed_put): a debug line names it, so that
 * a test can SIGKILL the node once the note is surely in the store. */
struct handed_row {
    uint64_t epoch;
    uint16_t len;
    char id[];
};

static void handed_committed(void *ud, int status)
{
    struct handed_row *r = ud;
    if (status == 0)
        log_debug(
            "cluster: the QoS 2 ids of the ended copy of '%.*s' (claim %llu) are in the store",
            (int)r->len, r->id, (unsigned long long)r->epoch);
    else
        log_warn(
            "cluster: the QoS 2 ids of the ended copy of '%.*s' (claim %llu) were not stored: %s",
            (int)r->len, r->id, (unsigned long long)r->epoch, strerror(-status));
    free(r);
}

/* Note h in cn->handed, under cn->reg_mu (the expired ones go, and an
 * earlier note of the same copy), and, with `persist`, in the store too
 * (its row, "handed"; the rows of the notes that went are deleted), so that
 * a restart of this node within CN_RESEND_KNOW_MS keeps it (cn_handed_load).
 * Before, the notes were in memory only: a restart forgot a folded copy's
 * ids, and an ended copy's once its last frame had left the outbox, and a
 * wait that came back here then took the client's resend for new. */
static void handed_put(struct cluster_node *cn, struct cn_handed *h, bool persist)
{
    uint64_t now = cn_mono_ms();
    struct store_batch *bt = persist && cn->b->store ? store_batch_new() : NULL;
    size_t k = 0;
    for (struct cn_handed **pp = &cn->handed; *pp;) {
        struct cn_handed *e = *pp;
        bool same = e->epoch == h->epoch && e->len == h->len && memcmp(e->id, h->id, h->len) == 0;
        if (e->until_ms <= now || k >= HANDED_MAX - 1 || same) {
            if (bt && !same)
                store_handed_del(bt, e->id, e->len, e->epoch);
            *pp = e->next;
            handed_free(e);
        } else {
            pp = &e->next;
            k++;
        }
    }
    h->next = cn->handed;
    cn->handed = h;
    if (!bt)
        return;
    uint64_t left = h->until_ms > now ? h->until_ms - now : 0;
    uint64_t wait_left = h->wait_node && h->wait_until_ms > now ? h->wait_until_ms - now : 0;
    store_handed_put(bt, &(struct store_handed){h->id, h->len, h->epoch, wall_ms() + left,
                                                h->folded, h->n, h->ids,
                                                wait_left ? h->wait_node : 0, h->wait_epoch,
                                                wall_ms() + wait_left, h->n_wait_rel, h->wait_rel});
    struct handed_row *r = malloc(sizeof *r + h->len);
    if (r) {
        r->epoch = h->epoch;
        r->len = h->len;
        memcpy(r->id, h->id, h->len);
    }
    store_submit(cn->b->store, bt, r ? handed_committed : NULL, r);
}

/* x, an old copy moving out to another node, ends: its QoS 2 ids go with
 * its last frame to x->to, and are kept here a while (struct cn_handed).
 * Before, they were gone from this node once that frame left: chaos seed
 * 10003 with --resend, a copy's frame waited for its owner, SIGKILLed,
 * while the client moved on to a third node and back here, whose wait
 * for this node's ids then found none, and took the client's resend for
 * new (1 QoS 2 duplicate, DUP 1). */
static void handed_note(struct cluster_node *cn, struct cn_moving *x)
{
    if (x->to == cn->self)
        return;
    struct cn_handed *h = handed_make(cn, x->s, false);
    if (!h)
        return;
    pthread_mutex_lock(&cn->reg_mu);
    handed_put(cn, h, true);
    pthread_mutex_unlock(&cn->reg_mu);
}

/* The ids of this node's copy of id of claim `epoch` that ended within
 * CN_RESEND_KNOW_MS (handed_note), or was folded into a later claim's
 * session here (cn_moving_detach); `epoch` 0: the latest that ended (not a
 * folded one, whose ids the session here may have released since). A
 * malloc'd array of *n, or NULL. w (NULL: not wanted; else filled when
 * empty, released to free): that copy's wait, if it still waited and the
 * wait's time has not run out. */
static uint16_t *handed_ids(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch,
                            uint32_t *n, struct cn_wait_on *w)
{
    uint16_t *ids = NULL;
    *n = 0;
    uint64_t now = cn_mono_ms();
    pthread_mutex_lock(&cn->reg_mu);
    const struct cn_handed *best = NULL;
    for (const struct cn_handed *e = cn->handed; e; e = e->next)
        if (e->until_ms > now && e->len == len && memcmp(e->id, id, len) == 0 &&
            (epoch ? e->epoch == epoch : !e->folded && (!best || e->epoch > best->epoch)))
            best = e;
    if (best && (ids = malloc((best->n + 1) * sizeof(*ids)))) {
        memcpy(ids, best->ids, best->n * sizeof(*ids));
        *n = best->n;
    }
    if (ids && w && !w->node && best->wait_node && best->wait_until_ms > now &&
        (w->released = malloc((best->n_wait_rel + 1) * sizeof(*w->released)))) {
        for (uint32_t i = 0; i < best->n_wait_rel; i++)
            w->released[i] = best->wait_rel[i];
        w->n_released = best->n_wait_rel;
        w->node = best->wait_node;
        w->epoch = best->wait_epoch;
        w->left_ms = best->wait_until_ms - now;
    }
    pthread_mutex_unlock(&cn->reg_mu);
    return ids;
}

/* The QoS 2 ids of this node's copy of id of claim `epoch` (not 0), given
 * up to a later claim, wherever it is: moving out to another node than the
 * state's sender, or surrendered awaiting a request that may never come (a
 * claimant that resumed the session from its record). A malloc'd array of
 * *n, or NULL (no such copy here). Before, only a copy moving out to the
 * state's sender answered: chaos seed 10010 with --resend --more, n1 took
 * a publisher's message and was SIGSTOPped, the client went to n2 (from the
 * record) and on to n3, n1 continued with its copy surrendered to n2's
 * claim, and the client came back to n1 with n3's wait for n1's ids: n1
 * took the resend for new (2 QoS 2 duplicates, DUP 1). */
static uint16_t *given_up_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                   uint64_t epoch, uint32_t *n, struct cn_wait_on *w)
{
    *n = 0;
    struct session *s = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving *x = cn->moving; x && !s; x = x->next) {
        if (x->to == cn->self || x->s->id_len != len || memcmp(x->s->client_id, id, len) != 0)
            continue;
        lock_acquire(&x->s->lock);
        if (session_claim_epoch(x->s) == epoch)
            s = session_ref(x->s);
        lock_release(&x->s->lock);
    }
    if (!s)
        s = cn_registry_surrendered_of(cn, id, len, epoch);
    pthread_mutex_unlock(&cn->reg_mu);
    if (!s)
        return NULL;
    lock_acquire(&s->lock);
    uint16_t *ids = copy_ids(cn, s, n, w);
    lock_release(&s->lock);
    session_unref(s);
    return ids;
}

/* This node's copy of id of claim `epoch` that no longer moves out to the
 * node asking: given up to another claim (given_up_copy_ids; `epoch` 0,
 * not known: none), else ended lately (handed_ids; 0: the latest). Its
 * QoS 2 ids, a malloc'd array of *n, or NULL. */
static uint16_t *gone_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                               uint64_t epoch, uint32_t *n, struct cn_wait_on *w)
{
    uint16_t *ids = epoch ? given_up_copy_ids(cn, id, len, epoch, n, w) : NULL;
    return ids ? ids : handed_ids(cn, id, len, epoch, n, w);
}

void cn_handed_loaded(void *ud, uint64_t node, const Starling__Chan__SessionMessages *sm)
{
    struct cluster_node *cn = ud;
    (void)node;
    /* (the wait the frame tells, msgs_send: its time left is not in the
     * frame, and is taken as CN_RESEND_KNOW_MS) */
    bool wait = sm->has_wait_node && sm->wait_node && sm->has_wait_epoch && sm->wait_epoch;
    if (!sm->has_qos2_told || !sm->qos2_told || !sm->has_qos2_epoch || !sm->qos2_epoch ||
        (!sm->n_qos2_received && !wait) || !sm->client_id.len || sm->client_id.len > UINT16_MAX)
        return;
    uint16_t *ids = malloc((sm->n_qos2_received + 1) * sizeof(*ids));
    uint32_t n = 0;
    for (size_t i = 0; ids && i < sm->n_qos2_received; i++)
        if (sm->qos2_received[i] >= 1 && sm->qos2_received[i] <= 65535)
            ids[n++] = (uint16_t)sm->qos2_received[i];
    struct cn_wait_on w = {wait ? sm->wait_node : 0, sm->wait_epoch, CN_RESEND_KNOW_MS(cn),
                           sm->wait_released, sm->n_wait_released};
    struct cn_handed *h =
        handed_new(cn, (const char *)sm->client_id.data, (uint16_t)sm->client_id.len,
                   sm->qos2_epoch, ids, n, false, &w);
    if (!h)
        return;
    pthread_mutex_lock(&cn->reg_mu);
    handed_put(cn, h, true);
    pthread_mutex_unlock(&cn->reg_mu);
    log_debug("cluster: the %u QoS 2 id(s) of the copy of '%.*s' (claim %llu) whose last frame "
              "waits in the outbox are kept again",
              (unsigned)n, (int)h->len, h->id, (unsigned long long)h->epoch);
}

struct handed_load {
    struct cluster_node *cn;
    uint64_t wall, mono;
    struct store_batch *gone; /* the rows of expired notes */
    size_t kept;
};

static int handed_stored(void *ud, const struct store_handed *sh)
{
    struct handed_load *l = ud;
    struct cluster_node *cn = l->cn;
    /* the wait's time left, as the note's below; a note of no ids whose
     * wait is over says nothing any more, and goes like an expired one
     * (before, handed_new refused it, and the start failed as if out of
     * memory: chaos seeds 10702, 10720-10726 with this build) */
    uint64_t wait_left = sh->wait_node && sh->wait_epoch && sh->wait_until_ms > l->wall
                             ? sh->wait_until_ms - l->wall
                             : 0;
    if (wait_left > CN_RESEND_KNOW_MS(cn))
        wait_left = CN_RESEND_KNOW_MS(cn);
    if (sh->until_ms <= l->wall || (!sh->n_ids && !wait_left) || !sh->id_len) {
        if (l->gone || (l->gone = store_batch_new()))
            store_handed_del(l->gone, sh->client_id, sh->id_len, sh->epoch);
        return 0;
    }
    uint16_t *ids = malloc((sh->n_ids + 1) * sizeof(*ids));
    uint32_t *rel = malloc((sh->n_wait_released + 1) * sizeof(*rel));
    if (!ids || !rel) {
        free(ids);
        free(rel);
        return -ENOMEM;
    }
    memcpy(ids, sh->ids, sh->n_ids * sizeof(*ids));
    for (uint32_t i = 0; i < sh->n_wait_released; i++)
        rel[i] = sh->wait_released[i];
    struct cn_wait_on w = {wait_left ? sh->wait_node : 0, sh->wait_epoch, wait_left, rel,
                           sh->n_wait_released};
    struct cn_handed *h =
        handed_new(cn, sh->client_id, sh->id_len, sh->epoch, ids, sh->n_ids, sh->folded, &w);
    free(rel);
    if (!h)
        return -ENOMEM;
    /* what was left of its time (a wall clock set back keeps it no longer
     * than CN_RESEND_KNOW_MS) */
    uint64_t left = sh->until_ms - l->wall;
    if (left < CN_RESEND_KNOW_MS(cn))
        h->until_ms = l->mono + left;
    pthread_mutex_lock(&cn->reg_mu);
    handed_put(cn, h, false);
    pthread_mutex_unlock(&cn->reg_mu);
    l->kept++;
    return 0;
}

int cn_handed_load(struct cluster_node *cn)
{
    if (!cn->b->store)
        return 0;
    struct handed_load l = {cn, wall_ms(), cn_mono_ms(), NULL, 0};
    int r = store_handed_scan(cn->b->store, handed_stored, &l);
    if (l.gone)
        store_submit(cn->b->store, l.gone, NULL, NULL);
    if (r == 0 && l.kept)
        log_info("cluster: the QoS 2 ids of %zu ended copy(ies) kept again from the store", l.kept);
    return r;
}

void cn_handed_free(struct cluster_node *cn)
{
    while (cn->handed) {
        struct cn_handed *e = cn->handed;
        cn->handed = e->next;
        handed_free(e);
    }
}

/* The QoS 2 ids of this node's copy of id of claim `epoch` (not 0) in its
 * table: after a restart, a stored copy the start-up pass has not sent on
 * yet, or named the session of a claim of this node meanwhile (it stands
 * in for that claim's session, cn_moving_stand_in). A malloc'd array of
 * *n, or NULL (no such copy).
 * Before, a wait for them found no copy moving out and nothing given up or
 * ended, and the client's resend was taken for new: chaos seed 10050 with
 * --resend --more, n2 restarted (SIGTERM) with its stored copy of claim 11
 * claimed away, and n1's state, waiting for those ids, came with the
 * client's claim on n2 before n2's start-up pass (2 QoS 2 duplicates at 3
 * subscribers). */
static uint16_t *stored_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                 uint64_t epoch, uint32_t *n, struct cn_wait_on *w)
{
    *n = 0;
    struct registry *r = &cn->b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *s = registry_find(r, id, len);
    if (s)
        session_ref(s);
    pthread_mutex_unlock(&r->lock);
    return s ? live_copy_ids(cn, s, &epoch, n, w) : NULL;
}

/* The QoS 2 ids of the session that came here with this node's claim
 * `epoch` (not 0) of id and is still listed as incoming (cn->incoming, kept
 * while that claim is in progress, up to INCOMING_HELD_MAX_MS): its routes
 * may wait to be in effect on every member that answers (a member cut off
 * from the leader's Raft alone answers and applies nothing), and meanwhile
 * the session is out of the table and of the moving copies. A malloc'd
 * array of *n, or NULL (no such session). Before, a wait for them found
 * none of the copies above, the claim whose state waited for this node's
 * ids started without a wait, and the client's resend of a message the
 * waiting copy's ids answered was taken for new where the session went next
 * (chaos seed 14000 with --no-lb --links --overlap: n3's claims of fp0q20
 * waited 30 s for n1, cut from the leader n2; 3 QoS 2 duplicates). */
static uint16_t *incoming_copy_ids(struct cluster_node *cn, const char *id, uint16_t len,
                                   uint64_t epoch, uint32_t *n, struct cn_wait_on *w)
{
    *n = 0;
    struct session *s = incoming_find(cn, id, len, epoch);
    return s ? live_copy_ids(cn, s, NULL, n, w) : NULL;
}

uint16_t *cn_waited_here_ids(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionState *st, const char *id, uint16_t len,
                             uint32_t *n, struct cn_wait_on *w)
{
    *n = 0;
    if (w)
        *w = (struct cn_wait_on){0};
    if (!waits_here(cn, st))
        return NULL;
    if (st->has_told && st->told) {
        uint16_t *ids = malloc((st->n_told_qos2 + 1) * sizeof(*ids));
        for (size_t i = 0; ids && i < st->n_told_qos2; i++)
            if (st->told_qos2[i] >= 1 && st->told_qos2[i] <= 65535)
                ids[(*n)++] = (uint16_t)st->told_qos2[i];
        return ids;
    }
    uint32_t n_own = 0;
    uint64_t epoch = st->has_blind_epoch ? st->blind_epoch : 0;
    uint16_t *ids = cn_moving_qos2_ids(cn, id, len, from, &n_own, w);
    if (!ids && epoch)
        ids = overtaken_copy_ids(cn, id, len, epoch, &n_own, w);
    if (!ids && epoch)
        ids = incoming_copy_ids(cn, id, len, epoch, &n_own, w);
    if (!ids)
        ids = gone_copy_ids(cn, id, len, epoch, &n_own, w);
    if (!ids && epoch)
        ids = stored_copy_ids(cn, id, len, epoch, &n_own, w);
    if (ids)
        *n = less_released(ids, n_own, st);
    return ids;
}

/*
 * cn_moving_detach into a staged claim's batch *bt: the rows of the old
 * copy x (its messages, taken into x->late, and its QoS 2 identifiers)
 * leave the store in *bt, ahead of the claim's session (keep) and of the
 * fold's puts of those messages into it, so that a SIGKILL leaves either
 * the copy, judged as a copy at the next start, or the claim's session
 * with them. Before, the copy's end deleted every record of the id in a
 * batch of its own, the claim's session went in the next, the fold's puts
 * in a later one: a kill in between lost the copy's messages (chaos seed
 * 1093382011 with --more: 227 acknowledged QoS 1/2 messages;
 * test_faults.py::test_fold_cut_by_a_kill_keeps_the_copys_messages). Row
 * by row, not the id's every record: keep's own rows, written since it
 * came (what was delivered to it), stay. The claim's rows share the
 * store's keys with the copy's: its record replaces the copy's, and a row
 * of the same sequence number is put after the deletion; keep's next
 * number is moved past the copy's, so that what it takes from now on is
 * never numbered as one of them. The copy's end then deletes nothing. */
static void copy_rows_leave(struct cluster_node *cn, struct cn_moving *x, struct session *keep,
                            struct store_batch **bt)
{
    struct session *s = x->s;
    uint64_t top = 0;
    bool any = false;
    lock_acquire(&s->lock);
    struct store_batch *t = s->stored ? persist_batch(cn->b, bt) : NULL;
    if (t) {
        for (const struct qmsg *q = x->late; q; q = q->next) {
            store_msg_del(t, s->client_id, s->id_len, q->seq);
            top = q->seq > top ? q->seq : top;
            any = true;
        }
        for (uint32_t i = 0; i < s->n_qos2_in; i++)
            store_qos2_del(t, s->client_id, s->id_len, s->qos2_in[i]);
        s->stored = false;
    }
    lock_release(&s->lock);
    if (any) {
        lock_acquire(&keep->lock);
        next_seq_past(keep, top);
        lock_release(&keep->lock);
    }
}

/* keep, the claim's session that the old copy x is folded into: what
 * reaches it routed before its claim applied here came for x (keep's
 * record_from: its claim found x here), and is judged as x judged what it
 * held: x's bound and what the first owner after x's claim had
 * (session.h, fold). Only for the one copy folded first (`first`; a second
 * clears it: each copy took what was routed to it, and one's rule would
 * leave out another's), and not when x leaves out nothing (no bound). */
static void fold_rule_set(struct cluster_node *cn, struct session *keep, const struct cn_moving *x,
                          bool first)
{
    lock_acquire(&x->s->lock);
    struct session_owner_local local = x->s->direct_local;
    /* a copy that stood in for the claim here: its own rule, kept with
     * its bounds (stand_in_rule_set), for what comes after the fold */
    struct session_fold stood = {0};
    if (x->to == cn->self && x->s->fold && x->s->fold->via)
        stood = *x->s->fold;
    lock_release(&x->s->lock);
    /* (allocated outside the lock; out of memory: no rule, at least once) */
    struct session_fold *f = first && (x->fold_direct || stood.via) ? malloc(sizeof(*f)) : NULL;
    lock_acquire(&keep->lock);
    if (f && stood.via && !cn_subs_shared(keep)) {
        *f = stood;
        free(keep->fold);
        keep->fold = f;
        f = NULL;
        log_debug("cluster: '%s' leaves out what was routed here from index %llu to %llu and "
                  "reached %016llx, as its copy that stood in for the claim did",
                  keep->client_id, (unsigned long long)stood.direct,
                  (unsigned long long)stood.until, (unsigned long long)stood.via);
    } else if (f && !stood.via && keep->record_from && !keep->routed_from &&
               !cn_subs_shared(keep)) {
        *f = (struct session_fold){keep->record_from, x->fold_direct, cn->self, 0, local, 0,
                                   {{0, 0}}};
        free(keep->fold);
        keep->fold = f;
        f = NULL;
        log_debug("cluster: '%s' leaves out what was routed here from index %llu to %llu for its "
                  "folded copy (claim %llu) and reached a later owner",
                  keep->client_id, (unsigned long long)x->fold_direct,
                  (unsigned long long)keep->record_from, (unsigned long long)x->epoch);
    } else {
        free(keep->fold);
        keep->fold = NULL;
    }
    lock_release(&keep->lock);
    free(f);
}

/* The QoS 2 ids of copy x, moving out to another node, folded into the
 * claim's session keep: kept as this node's own ids that x's destination
 * may wait for (struct session.own_moved). Before, they went with the copy,
 * and that node's late state, waiting for them, found no copy here to
 * answer it: the client's resend was taken for new (chaos seed 9923 with
 * --resend --more: 3 QoS 2 duplicates).
 * They also answer keep's own wait, when keep waits for the ids of x's
 * destination's copy of the very claim x moves out for, a persistent
 * session's by its record, and that node said it kept no copy of the id
 * (session.blind_none_kept): that claim's session would have started with
 * x's ids, and its client completed no exchange there since (none without
 * its id stored first). Before, the wait went unanswered, and the
 * client's resend of a message x had taken was taken for new where it went
 * next (chaos seed 9905 with --resend --more: 6 QoS 2 duplicates after
 * every node was SIGKILLed, test_forward.py::test_a_resend_to_a_session_
 * whose_old_claimant_kept_nothing_is_answered_by_its_folded_copy).
 * Also when keep's record is not that claim's (it wrote none), if its
 * claimant stores the session before answering its client
 * (SessionClaim.stored): that node kept nothing, so that claim answered no
 * CONNACK, and x's ids are still its client's. Before, such a wait went unanswered: chaos seed
 * 10041 with
 * --resend --more, every node SIGKILLed, n2's claim 6 committed but never
 * stored, n1 restarted and resumed the session from its own record, and
 * n1's state, still waiting for n2's ids, sent the client's resend to n2
 * as new (1 QoS 2 duplicate at 3 subscribers). Whether they did (keep's
 * worker is to judge what it parked).
 * When x itself still waited, not told, for a third node's ids of an
 * earlier claim (resumed from its record while that node was away), its
 * ids are only part of its client's: keep's wait goes on to that node's
 * copy (x->ask, asked at the fold: moving_ask), as a frame's or a late
 * state's does (*A wait goes on down the chain*, docs/cluster.md).
 * Before, x's ids were taken for all: chaos seed 18002 with --resend
 * --more --weight restart-all=8, n2's stored copy of claim 11, whose wait
 * for n1's ids was open at a whole-cluster SIGKILL, moved out to n3's
 * claim 12 (n3 kept none) and was folded into n2's claim 13, which took
 * its ids (none) for the answer and the client's resend of what n1 had
 * taken for new (1 QoS 2 duplicate at 3 subscribers). keep_epoch: keep's
 * claim. */
static bool own_moved_keep(struct cluster_node *cn, struct session *keep, struct cn_moving *x,
                           uint64_t keep_epoch)
{
    lock_acquire(&x->s->lock);
    uint32_t n = 0;
    struct cn_wait_on w = {0};
    uint16_t *pending = copy_ids(cn, x->s, &n, &w);
    if (!pending)
        n = 0;
    /* x's own claim the one just before x->epoch (committed epochs of an
     * id follow one another, claim_propose): else another claim came
     * between, whose client may have completed x's ids and used them again.
     * x->epoch is the registry's epoch when x began to move out, not
     * always the claim that took x over. A stored epoch behind x's claim
     * only leaves the wait as it was */
    bool next = x->s->stored_epoch && x->s->stored_epoch + 1 == x->epoch;
    uint64_t claim = session_claim_epoch(x->s);
    uint16_t *ids = n ? malloc(n * sizeof(*ids)) : NULL;
    uint16_t *told = next ? malloc((n + 1) * sizeof(*told)) : NULL;
    if (ids)
        memcpy(ids, pending, n * sizeof(*ids));
    if (told && n)
        memcpy(told, pending, n * sizeof(*told));
    free(pending);
    lock_release(&x->s->lock);
    lock_acquire(&keep->lock);
    /* of several copies folded, the latest (as cn_moving_qos2_ids) */
    if (!keep->own_moved_to || x->epoch >= keep->own_moved_epoch) {
        free(keep->own_moved);
        keep->own_moved = ids;
        keep->n_own_moved = ids ? n : 0;
        keep->own_moved_to = x->to;
        keep->own_moved_epoch = x->epoch;
        keep->own_moved_claim = claim;
        ids = NULL;
    }
    bool none = keep->blind_none_kept || (keep->blind_said_none && x->claim_stored);
    bool answers = told && none && !keep->told && keep->blind_node == x->to && keep->blind_epoch &&
                   keep->blind_epoch == x->epoch && session_blind(keep, broker_now_mono_ms());
    bool on = answers && w.node && w.epoch < x->epoch && keep_epoch;
    if (on) {
        uint64_t now = broker_now_mono_ms(), until = atomic_load(&keep->blind_until);
        if (w.left_ms < until - now)
            until = now + w.left_ms;
        size_t n_rel = 0;
        uint32_t *rel =
            wait_moved(keep, w.node, w.epoch, until, w.released, w.n_released, NULL, 0, &n_rel);
        if (rel) {
            x->ask = (struct cn_wait_on){w.node, w.epoch, until - now, rel, n_rel};
            x->ask_epoch = keep_epoch;
            x->ask_known = told;
            x->n_ask_known = n;
            told = NULL;
        } else {
            session_wait_end(keep); /* out of memory */
        }
        log_info("cluster: the session of '%s' got the %u QoS 2 id(s) of its old copy here, "
                 "moving out to %016llx, which kept none of its own; that copy still waited for "
                 "those of %016llx's copy of claim %llu: it waits for those now",
                 keep->client_id, (unsigned)n, (unsigned long long)x->to,
                 (unsigned long long)w.node, (unsigned long long)w.epoch);
        answers = false;
    } else if (answers) {
        uint32_t k = session_told_set(keep, told, n);
        told = NULL;
        /* nothing more comes from that node: the messages of other copies
         * wait no longer (told_notify flushes) */
        keep->park_open = false;
        log_info("cluster: the session of '%s' learnt the %u QoS 2 id(s) of its old copy here, "
                 "moving out to %016llx, which kept none of its own",
                 keep->client_id, (unsigned)k, (unsigned long long)x->to);
    }
    lock_release(&keep->lock);
    free(w.released);
    free(ids);
    free(told);
    return answers;
}

/* The question of x's fold (own_moved_keep) to the node whose ids the
 * claim's session waits for now: into the fold's batch (sent once it
 * commits), else one of its own. */
static void moving_ask(struct cluster_node *cn, struct cn_moving *x)
{
    if (!x->ask.node)
        return;
    struct store_batch *own = NULL;
    struct store_batch **bt = x->into && x->into->bt ? &x->into->bt : &own;
    cn_wait_ask(cn, &x->ask, x->s->client_id, x->s->id_len, x->ask_epoch, NULL, 0, x->ask_known,
                x->n_ask_known, x->ask.released, x->ask.n_released, bt);
    persist_submit(cn->b, &own, NULL, NULL);
    free(x->ask.released);
    free(x->ask_known);
    x->ask = (struct cn_wait_on){0};
    x->ask_known = NULL;
}

struct cn_moving *cn_moving_detach(struct cluster_node *cn, const char *id, uint16_t len,
                                   struct session *keep, uint64_t keep_epoch, uint64_t whole_from,
                                   struct store_batch **bt)
{
    struct cn_moving *found = NULL;
    for (struct cn_moving **pp = &cn->moving; *pp;) {
        struct cn_moving *x = *pp;
        if (x->s != keep && x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0) {
            *pp = x->next;
            x->next = found;
            found = x;
        } else {
            pp = &x->next;
        }
    }
    for (struct cn_moving *x = found; x; x = x->next) {
        log_info("cluster: '%s' is claimed here again while its old copy (claim %llu) is still "
                 "moving out: that copy ends now, what it holds goes to the new session",
                 x->s->client_id, (unsigned long long)x->epoch);
        bool shared;
        /* a copy moving out to the node whose state the new session
         * brought: what reached that node directly stays out of the fold,
         * as out of what the copy sends it (moving_end). The new session
         * has it from that state (an unfinished exchange with its packet
         * id), or its client had it, or that node's copy passes it on when
         * it comes there late. Before, the fold took everything, and the
         * new session each identity once: it knows them only for what that
         * node got in the 60 s after its move. After a resumption from the
         * record (that node dead) too: its exchanges past PUBREC come back
         * with it and are taken over, since the new session knows which
         * packet ids it used (pids_used). Before that, a fold moved its
         * next sequence number past this copy's rows and every id in
         * between counted as used: such exchanges were refused, and with
         * the fold leaving them out they were lost (up to 6 QoS 2 messages
         * in 3 of 7 runs of test_killed_nodes_subscribers_resumed_
         * elsewhere_repeatedly), so the rule was narrow and such a fold
         * gave what that node had delivered again. Also when the new claim
         * took the session from another node than the one this copy moves
         * out to (a claim between them that committed on a third node
         * without the session): what reached the copy's owner directly is
         * that node's still, as in moving_end. Before, only a claim from
         * that owner left it out, and the fold gave all of it again (chaos
         * seed 1093382011 with --more: 180 QoS 2 duplicates with DUP 0,
         * a claim of n3 between n2's and n1's). */
        x->fold_direct = 0;
        /* its bound judged now if it was not known when the copy began to
         * move out, as moving_end does: a copy whose claimant's record was
         * not in yet (a claim committed whose record never came: the
         * whole cluster SIGKILLed; its claimant resumed the session from
         * the record since, and told this node nothing). Before, such a
         * copy's fold took everything, what that later owner had
         * delivered too (chaos seed 1093382011 with --minutes 4 --more:
         * 537 QoS 2 duplicates, a copy sent on at its node's start after
         * the whole cluster's SIGKILL, folded 4 s later into a takeover:
         * test_faults.py::test_copy_folded_into_a_claim_is_judged_by_the_
         * owners_rule_when_its_bound_came_late) */
        if (whole_from && !x->routed && x->to != cn->self) {
            lock_acquire(&x->s->lock);
            bool known = x->now || x->known || x->s->epoch != 0;
            lock_release(&x->s->lock);
            if (known)
                moving_direct_set(cn, x->s, x->to, true, false);
        }
        moving_take(cn, x, &shared, whole_from ? &x->fold_direct : NULL);
        if (keep)
            fold_rule_set(cn, keep, x, x == found);
        if (keep && x->to != cn->self && own_moved_keep(cn, keep, x, keep_epoch))
            told_notify(cn, keep);
        /* every folded copy: its ids, kept by its own claim, answer a wait
         * for that claim's ids here (chain_ids, cn_waited_here_ids), as an
         * ended copy's do. Before, they were gone with the fold: chaos
         * seed 10015 with --resend --more, n3's copy of claim 12, given up
         * and moving out to n3 itself, folded into n3's claim 15, and the
         * wait for it that n2's copy told with its last frame found
         * nothing (2 QoS 2 duplicates, DUP 1, at 3 subscribers). Then only
         * a copy moving out to this node was noted; one moving out to
         * another node kept its ids for keep alone (own_moved_keep), and
         * once keep's session had moved on and come back, a wait naming
         * the copy's claim found nothing: chaos seed 10102 with --resend
         * --more --no-lb, n3's copy of claim 5 moving out to n2 (down)
         * folded into claim 8, the client went to n1 and back to n3, and
         * n2's stored copy, which waited for n3's claim-5 ids, said it had
         * taken none (1 QoS 2 duplicate at 3 subscribers) */
        struct cn_handed *h = keep ? handed_make(cn, x->s, true) : NULL;
        if (h)
            handed_put(cn, h, true);
        /* a staged claim: its rows leave the store in the claim's batch
         * (copy_rows_leave) */
        if (bt && keep)
            copy_rows_leave(cn, x, keep, bt);
        /* else out of the store now (a delete of every record of the id),
         * before the new session's records are written: neither its end
         * later nor its leftovers at the next start touch the new
         * session's */
        session_end(cn->b, x->s);
    }
    return found;
}

void cn_moving_stand_in(struct cluster_node *cn, const char *id, uint16_t len)
{
    struct session *s = registry_local_surrender(cn->b, id, len, true);
    if (!s)
        return;
    lock_acquire(&s->lock);
    uint64_t named = s->epoch;
    /* no longer the claim's session: its end releases nothing
     * (cn_session_ended), and it goes under its own claim as far as its
     * store knew it */
    s->epoch = 0;
    uint64_t own = s->stored_epoch;
    lock_release(&s->lock);
    /* the owners rule it went by before the stop (set already when the
     * start-up pass named it, cn_session_stand_in), for what it took and
     * for what comes to the claim's session after the fold
     * (fold_rule_set); the claim's session is beside it, so what it took
     * of that is left out by the fold (msgs_send) */
    stand_in_rule_set(cn, s, false);
    log_info("cluster: '%s' is claimed here while another session of it stood in for the claim in "
             "this node's table (%s, claim %llu): it ends now, what it holds goes to the claim's "
             "session",
             s->client_id, named ? "with the claim's epoch" : "a stored copy not named yet",
             (unsigned long long)named);
    cn_moving_back(cn, s, own);
}

void cn_moving_back(struct cluster_node *cn, struct session *s, uint64_t own)
{
    struct cn_moving *x = calloc(1, sizeof(*x));
    if (!x) {
        session_end(cn->b, s);
        session_unref(s);
        return;
    }
    x->s = s;
    x->to = cn->self;
    x->epoch = own;
    x->now = true;
    x->until_ms = cn_mono_ms() + CHAN_RECONNECT_GRACE_MS;
    x->next = cn->moving;
    cn->moving = x;
}

void cn_moving_fold(struct cluster_node *cn, struct cn_moving *list)
{
    cn_moving_fold_into(cn, list, NULL);
}

void cn_moving_fold_into(struct cluster_node *cn, struct cn_moving *list, struct cn_fold_into *into)
{
    while (list) {
        struct cn_moving *x = list;
        list = x->next;
        x->into = into;
        /* everything goes: the new session takes each identity once. A
         * routed copy's identities stay behind: in its grace
         * (LATE_GRACE_MS) it passed on to its owner what came for it, and
         * those identities, merged here, would take the messages for had
         * when they come back (via that owner, once it returns), though
         * its client never got them (test_killed_nodes_subscribers_resumed_
         * elsewhere_repeatedly: 2,979 lost when both were merged). What its
         * client got from it before it moved out may then come again:
         * at least once there. */
        if (x->routed)
            x->n_seen = 0;
        moving_ask(cn, x);
        moving_send(cn, x, cn->self, x->fold_direct);
    }
}

void cn_overtaken_add(struct cluster_node *cn, struct session *s, uint64_t node, uint64_t epoch)
{
    /* to this node: under its own (older) claim, so that a winner that
     * began clean takes none of it (msgs_send) */
    lock_acquire(&s->lock);
    uint64_t own = s->epoch;
    lock_release(&s->lock);
    /* ours, while we look at it below: from here on the copy is the moving
     * list's (the poll may end it) */
    session_ref(s);
    cn_moving_add(cn, s, node, node == cn->self ? own : epoch, true, true);
    struct session *w = node == cn->self ? owned_session(cn, s->client_id, s->id_len, epoch) : NULL;
    if (w) {
        /* its end (in cn_moving_detach) must leave w's stored records */
        cn_session_unstore_beside(cn->b, s);
        pthread_mutex_lock(&cn->reg_mu);
        struct cn_moving *back = cn_moving_detach(cn, s->client_id, s->id_len, w, epoch, 0, NULL);
        pthread_mutex_unlock(&cn->reg_mu);
        session_unref(w);
        cn_moving_fold(cn, back);
    }
    session_unref(s);
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_MOVING_HOLD
 * names exists, the old copies of moved sessions keep collecting and are not
 * sent: a returning node whose late messages come after the session moved
 * on (tests/cluster/test_faults.py). */
static bool moving_test_hold(void)
{
    const char *path = getenv("STARLING_TEST_MOVING_HOLD");
    return path && access(path, F_OK) == 0;
}

/* ... and while the file that STARLING_TEST_REANNOUNCE_HOLD names exists, a
 * NodeDown of this node applied while it runs is not answered yet (its
 * routes are not proposed again): the glue's thread late under load
 * (tests/cluster/test_faults.py). */
static bool reannounce_test_hold(void)
{
    const char *path = getenv("STARLING_TEST_REANNOUNCE_HOLD");
    return path && access(path, F_OK) == 0;
}

/* ... and while the file that STARLING_TEST_PASS_HOLD names exists, the
 * start-up pass waits: the stored sessions stay in the table as loaded
 * (tests/cluster/test_forward.py). */
static bool pass_test_hold(void)
{
    const char *path = getenv("STARLING_TEST_PASS_HOLD");
    return path && access(path, F_OK) == 0;
}
#else
static bool moving_test_hold(void)
{
    return false;
}

static bool pass_test_hold(void)
{
    return false;
}

static bool reannounce_test_hold(void)
{
    return false;
}
#endif

/* A routed copy in its grace period (LATE_GRACE_MS), or a flushing one
 * (struct cn_moving.flushing): what it collected since the last poll goes
 * to the new owner now, but for what reached that owner directly (routed
 * with its routes; for a flushing copy, past the bound of the owners rule,
 * its direct_from, as when it ends: moving_end). */
struct late_flush {
    struct session *s; /* a reference */
    uint64_t to, epoch, route_index;
    /* LATE_COMPLETE: the first after the SessionRouted, LATE_STAYS: the
     * first of a flushing copy (both sent also when empty) */
    enum late_mark mark;
    bool own_bound; /* flushing: the bound is s->direct_from, not route_index */
};
#define LATE_FLUSH_MAX 64

static void late_flush_send(struct cluster_node *cn, struct late_flush *f)
{
    struct session *s = f->s;
    if (f->route_index || f->own_bound)
        owner_local_note(cn, s);
    lock_acquire(&s->lock);
    bool shared = cn_subs_shared(s);
    uint64_t direct = shared ? 0 : f->own_bound ? s->direct_from : f->route_index;
    struct qmsg *late = s->inflight.head || s->queue.head ? cn_session_take_msgs(s) : NULL;
    seen_forget_direct(s, late, direct);
    lock_release(&s->lock);
    /* the first one tells the owner that what the copy collected before
     * its routes were everywhere is in (the owner holds what reached it
     * directly meanwhile until then: session_late_hold) */
    if (late || f->mark != LATE_PLAIN)
        msgs_send(cn, s, f->to, s->client_id, s->id_len, f->epoch, late, direct, f->mark, NULL, 0,
                  NULL, 0);
    session_unref(s);
}

/* Whether the forwards that other members held for this node while it was
 * down have come (RESTART_SETTLE_MS); latched. Glue's thread. */
static bool restart_settled(struct cluster_node *cn, uint64_t now)
{
    if (cn->settled)
        return true;
    uint64_t last = 0;
    pthread_mutex_lock(&cn->mu);
    /* no member known yet (the members table not read): not settled */
    bool all = cn->n_peers > 0;
    for (unsigned i = 0; i < cn->n_peers; i++) {
        const struct peer *p = &cn->peers[i];
        if (p->left)
            continue;
        if (!p->run_seen_ms)
            all = false;
        else if (p->run_seen_ms > last)
            last = p->run_seen_ms;
    }
    pthread_mutex_unlock(&cn->mu);
    if ((all && now >= last + RESTART_SETTLE_MS) || now >= cn->started_ms + RESTART_SETTLE_CAP_MS) {
        cn->settled = true;
        log_debug("cluster: %s %llu ms after the start: old copies of moved sessions may end",
                  all ? "every member heard from" : "not every member heard from",
                  (unsigned long long)(now - cn->started_ms));
    }
    return cn->settled;
}

/*
 * An old copy moving out whose bound was not known when it began (its
 * claimant's record, with the owner after the copy's claim, not applied
 * here yet: a claim committed whose record never came, the whole cluster
 * SIGKILLed; its claimant resumed the session from the record) is judged
 * by the owners rule once that record is applied here, as its end
 * (moving_end) and its fold (cn_moving_detach) judge it, and from then on
 * takes nothing routed past the bound, and its rows of what it took past
 * it leave the store (moving_direct_set, moving_rows_past_bound_del).
 * Before, it kept taking, and storing, what that owner delivered until its
 * end or a fold; a fold into a claim of this node, cut by a SIGKILL before
 * the claim's batch committed (which takes the copy's rows out:
 * copy_rows_leave), left those rows in the store under the id, and the
 * next start loaded them as the claim's session (the registry names this
 * node), which the owners rule does not judge: its next claimant got them
 * all, restored as possibly sent, and delivered them again with DUP 1
 * (chaos seed 1093382011 with --more: 348 QoS 2 duplicates;
 * test_faults.py::test_copy_folded_into_a_claim_is_judged_by_the_owners_
 * rule_when_its_bound_came_late[cut]). Looked for again only when the
 * applied index moved, and for at most MOVING_JUDGE_MAX copies a poll.
 */
#define MOVING_JUDGE_MAX 16

/* A member's struct peer.clear, read for members_clear, and whether it is
 * live (cn_peer_live). */
struct member_clear {
    uint64_t node, clear;
    bool live;
};

/* The members (not left) and how far each is clear, this node last (its
 * applied index: what it routes itself); how many (at most MAX_PEERS + 1).
 * This node counts too: a claim does not wait for a member that knows no
 * leader (cluster_node.c, peer_answering), so a copy's new owner may send
 * its SessionRouted before this node, cut off from the leader alone,
 * applied the new owner's routes; its own clients' publishes still match
 * the copy here, and an ended copy would leave them matching nothing. */
static unsigned members_clear_read(struct cluster_node *cn, struct member_clear *m)
{
    unsigned n = 0;
    pthread_mutex_lock(&cn->mu);
    for (unsigned i = 0; i < cn->n_peers; i++)
        if (!cn->peers[i].left)
            m[n++] = (struct member_clear){cn->peers[i].node, cn->peers[i].clear, false};
    pthread_mutex_unlock(&cn->mu);
    for (unsigned i = 0; i < n; i++)
        m[i].live = cn_peer_live(cn, m[i].node);
    m[n++] = (struct member_clear){cn->self, fsm_visible(cn->fsm), true};
    return n;
}

static bool member_live(const struct member_clear *m, unsigned n, uint64_t node)
{
    for (unsigned i = 0; i < n; i++)
        if (m[i].node == node)
            return m[i].live;
    return false;
}

/* The first member of m[0..n) not clear for x's clear_index (0: none). */
static uint64_t member_waited(const struct cn_moving *x, const struct member_clear *m, unsigned n)
{
    for (unsigned i = 0; x->clear_index && i < n; i++)
        if (m[i].clear < x->clear_index)
            return m[i].node;
    return 0;
}

/* Whether copy x, routed or flushing, its time over, may end: every
 * member of m[0..n) is clear for its clear_index, or COPY_CLEAR_CAP_MS has
 * passed since its time ended. Under cn->reg_mu. */
static bool members_clear(struct cn_moving *x, const struct member_clear *m, unsigned n,
                          uint64_t now)
{
    uint64_t waits = x->graced ? member_waited(x, m, n) : 0;
    if (!waits)
        return true;
    if (!x->clear_cap_ms)
        x->clear_cap_ms = now + COPY_CLEAR_CAP_MS;
    /* (members_clear_read puts this node last: it waits for itself to
     * apply the new owner's routes, not for forwards) */
    bool self = waits == m[n - 1].node;
    if (now >= x->clear_cap_ms) {
        if (self)
            log_warn("cluster: the old copy of '%s' ends %u s after its time, though this node "
                     "has not applied its new owner's routes yet (entry %llu): its own clients' "
                     "publishes to it match nothing here until it does",
                     x->s->client_id, (unsigned)(COPY_CLEAR_CAP_MS / 1000),
                     (unsigned long long)x->clear_index);
        else
            log_warn("cluster: the old copy of '%s' ends %u s after its time, though %016llx may "
                     "still send forwards for it routed before its new owner's routes (entry "
                     "%llu): they will find nothing here",
                     x->s->client_id, (unsigned)(COPY_CLEAR_CAP_MS / 1000),
                     (unsigned long long)waits, (unsigned long long)x->clear_index);
        return true;
    }
    if (waits != x->clear_waits) {
        x->clear_waits = waits;
        if (self)
            log_debug("cluster: the old copy of '%s' stays past its time: this node has not "
                      "applied its new owner's routes yet (entry %llu)",
                      x->s->client_id, (unsigned long long)x->clear_index);
        else
            log_debug("cluster: the old copy of '%s' stays past its time: %016llx has not sent "
                      "all it routed before its new owner's routes (entry %llu)",
                      x->s->client_id, (unsigned long long)waits,
                      (unsigned long long)x->clear_index);
    }
    return false;
}

/* Whether id of copy x has a later owner than x->to (another node than
 * this one), as the registry here says (moving_send_owner_of_now sends
 * there). Under cn->reg_mu (a read of the replicated tables). */
static bool owner_after(struct cluster_node *cn, const struct cn_moving *x)
{
    uint64_t node = 0, epoch = 0;
    return fsm_registry_get(cn->fsm, x->s->client_id, x->s->id_len, &node, &epoch) == 0 &&
           node != 0 && node != x->to && node != cn->self && epoch > x->epoch;
}

void cn_session_poll(struct cluster_node *cn, uint64_t now)
{
    if (!cn->started_ms)
        cn->started_ms = now;
    if (!atomic_load(&cn->restart_done) && atomic_load(&cn->loaded) && caught_up(cn) &&
        !pass_test_hold()) {
        atomic_store(&cn->restart_done, true);
        restart_pass(cn);
    }
    node_down_poll(cn, now);
    dead_expiry_poll(cn, now);
    if (!reannounce_test_hold() && atomic_exchange(&cn->reannounce, false))
        taken_for_dead(cn, atomic_exchange(&cn->reannounce_running, false));

    struct cn_moving *ending = NULL;
    struct cn_incoming *dropped = NULL;
    struct late_flush flush[LATE_FLUSH_MAX];
    size_t n_flush = 0;
    struct session *judge[MOVING_JUDGE_MAX];
    uint64_t judge_to[MOVING_JUDGE_MAX];
    size_t n_judge = 0;
    uint64_t applied = fsm_applied(cn->fsm);
    bool hold = moving_test_hold();
    bool settled = restart_settled(cn, now);
    struct member_clear clears[MAX_PEERS + 1];
    unsigned n_clears = members_clear_read(cn, clears);
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cn_moving **pp = &cn->moving; *pp;) {
        struct cn_moving *x = *pp;
        if (x->routed && !x->graced) {
            x->graced = true;
            x->until_ms = now + LATE_GRACE_MS;
        }
        bool over = x->until_ms <= now && !hold && settled;
        /* a copy not routed, moving to another node, that a member may
         * still send forwards for (cut off, stopped or down: routed with
         * tables older than the copy's start), stays and passes on what it
         * collects. Ended, those forwards matched nothing here: a
         * restarted node's stored copy, claimed away, ended at the latest
         * RESTART_SETTLE_CAP_MS after the start, and what a member cut off
         * longer held for it was lost (test_faults.py::test_forwards_held_
         * for_a_restarted_node_reach_its_sessions_new_owner_after_a_long_
         * cut). Its bound (the owners rule, as when it ends) is set first
         * (the judge list, before the flushes). */
        if (over && !x->routed && !x->graced && x->to != cn->self && n_judge < MOVING_JUDGE_MAX &&
            member_waited(x, clears, n_clears)) {
            x->graced = x->flushing = true;
            lock_acquire(&x->s->lock);
            bool known = x->now || x->known || x->s->epoch != 0;
            lock_release(&x->s->lock);
            if (known) {
                judge[n_judge] = session_ref(x->s);
                judge_to[n_judge++] = x->to;
            }
            log_debug("cluster: the old copy of '%s' stays past its time, passing on what it "
                      "collects: a member may still send forwards for it (entry %llu)",
                      x->s->client_id, (unsigned long long)x->clear_index);
        }
        /* a flushing copy whose new owner is not live, once the session
         * has a later owner than that one, ends (moving_end sends what it
         * holds to the owner of now). Not on liveness alone: right after
         * this node was stopped (SIGSTOP) every member looks silent, and a
         * copy ended then lost what a member's outbox held for it (chaos
         * seed 11950 with --hold 15,60: the forwards came 1 ms after the
         * copy ended); and an owner that does not reach this node may
         * still be reached from it (the outbox sends when it can). */
        bool moved_on = x->flushing && !x->routed && !member_live(clears, n_clears, x->to) &&
                        owner_after(cn, x);
        if (over && (moved_on || members_clear(x, clears, n_clears, now))) {
            *pp = x->next;
            x->next = ending;
            ending = x;
            continue;
        }
        if ((x->routed || x->flushing) && !hold && n_flush < LATE_FLUSH_MAX) {
            bool own = x->flushing && !x->routed;
            flush[n_flush++] = (struct late_flush){
                .s = session_ref(x->s),
                .to = x->to,
                .epoch = x->epoch,
                .route_index = x->route_index,
                .mark = x->complete_sent ? LATE_PLAIN
                        : own            ? LATE_STAYS
                                         : LATE_COMPLETE,
                .own_bound = own,
            };
            x->complete_sent = true;
        }
        /* a copy whose bound was not known when it began to move out: the
         * owners rule is tried again as entries are applied here
         * (moving_judge_late) */
        if (!x->routed && x->to != cn->self && x->judged_at != applied &&
            n_judge < MOVING_JUDGE_MAX) {
            lock_acquire(&x->s->lock);
            bool unjudged =
                (x->now || x->known || x->s->epoch != 0) && !x->s->direct_from && !x->s->ended;
            lock_release(&x->s->lock);
            x->judged_at = applied;
            if (unjudged) {
                judge[n_judge] = session_ref(x->s);
                judge_to[n_judge++] = x->to;
            }
        }
        pp = &x->next;
    }
    for (struct cn_incoming **pp = &cn->incoming; *pp;) {
        struct cn_incoming *x = *pp;
        /* a session that moved here holds what came directly for at most
         * LATE_HOLD_MS (session_late_hold) */
        if (x->late_hold_ms && x->late_hold_ms <= now) {
            x->late_hold_ms = 0;
            session_late_expire(cn->b, x->s, now);
        }
        /* its claim still in progress (waiting for its routes to be in
         * effect on a member cut off from the leader alone), it stays
         * listed: a wait for its ids finds it (incoming_copy_ids) */
        if (x->until_ms <= now && now - x->since_ms < INCOMING_HELD_MAX_MS && incoming_held(cn, x))
            x->until_ms = now + 1000;
        if (x->until_ms <= now) {
            *pp = x->next;
            x->next = dropped;
            dropped = x;
        } else {
            pp = &x->next;
        }
    }
    pthread_mutex_unlock(&cn->reg_mu);
    for (size_t i = 0; i < n_judge; i++) {
        moving_direct_set(cn, judge[i], judge_to[i], true, true);
        session_unref(judge[i]);
    }
    for (size_t i = 0; i < n_flush; i++)
        late_flush_send(cn, &flush[i]);
    while (ending) {
        struct cn_moving *x = ending;
        ending = x->next;
        moving_end(cn, x);
    }
    while (dropped) {
        struct cn_incoming *x = dropped;
        dropped = x->next;
        session_unref(x->s);
        free(x);
    }
}

/* ---- handing sessions over at a stop --------------------------------------------- */

/* What cluster_node_hand_over still waits for: persistent sessions that
 * the stop disconnected and that are still here, unclaimed; sessions
 * surrendered to a claim whose request has not come, or is being
 * answered; copies whose state was sent and whose new owner's routes are
 * not everywhere yet. */
static size_t hand_over_pending(struct cluster_node *cn, uint64_t since)
{
    struct broker *b = cn->b;
    struct registry *r = &b->registry;
    size_t n = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t k = 0; k < r->n_buckets; k++)
        for (struct session *s = r->buckets[k]; s; s = s->hnext) {
            lock_acquire(&s->lock);
            if (s->expiry_interval && !s->ended && !s->conn && s->disconnected_at >= since)
                n++;
            lock_release(&s->lock);
        }
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_lock(&cn->reg_mu);
    n += cn_registry_surrendered(cn) + cn->answering;
    for (struct cn_moving *x = cn->moving; x; x = x->next)
        if (!x->now && !x->graced)
            n++;
    pthread_mutex_unlock(&cn->reg_mu);
    return n;
}

void cluster_node_hand_over(struct cluster_node *cn)
{
    if (!cn || !cn->c || atomic_load(&cn->stopped) || atomic_load(&cn->rebuilding) ||
        atomic_load(&cn->failed))
        return;
    struct broker *b = cn->b;
    bool others = false;
    pthread_mutex_lock(&cn->mu);
    uint64_t now = cn_mono_ms();
    for (unsigned i = 0; i < cn->n_peers; i++)
        others = others || (!cn->peers[i].left && cn->peers[i].seen_ms &&
                            now - cn->peers[i].seen_ms <= b->cfg.cluster_down_after);
    pthread_mutex_unlock(&cn->mu);
    uint64_t since = atomic_load(&b->stopping_since);
    if (!others || !since) /* nobody to hand over to; or not a stop's disconnections */
        return;
    size_t first = hand_over_pending(cn, since), left = first;
    if (!first)
        return;
    log_info("cluster: waiting for %zu persistent session(s) to be claimed elsewhere", first);
    uint64_t start = cn_mono_ms(), deadline = start + b->cfg.cluster_claim_timeout;
    while (left && cn_mono_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000}; /* the glue's thread does the work */
        nanosleep(&ts, NULL);
        left = hand_over_pending(cn, since);
    }
    log_info("cluster: %zu of %zu persistent session(s) handed over in %llu ms%s", first - left,
             first, (unsigned long long)(cn_mono_ms() - start),
             left ? "; the others resume from their records" : "");
}

void cn_session_drain(struct cluster_node *cn)
{
    pthread_mutex_lock(&cn->reg_mu);
    struct cn_moving *m = cn->moving;
    cn->moving = NULL;
    struct cn_incoming *in = cn->incoming;
    cn->incoming = NULL;
    pthread_mutex_unlock(&cn->reg_mu);
    while (m) {
        struct cn_moving *next = m->next;
        session_unref(m->s); /* stays in the store: sent again at the next start */
        free(m);
        m = next;
    }
    while (in) {
        struct cn_incoming *next = in->next;
        session_unref(in->s);
        free(in);
        in = next;
    }
}
