/*
 * cluster_node_int.h - what cluster_node.c and cluster_registry.c share:
 * the glue's state. Not for other modules (they use cluster_node.h).
 */
#ifndef STARLING_CLUSTER_NODE_INT_H
#define STARLING_CLUSTER_NODE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "admin.h"
#include "channel.pb-c.h"
#include "cluster.h"
#include "cluster_fwd.h"
#include "cluster_node.h"
#include "registry.h"

struct cl_claim;
struct surrendered;
struct held_request;
struct cmd_batch;
struct ret_retry;
struct ret_own;
#define CN_RET_OWN_BUCKETS 256
struct cn_moving;
struct cn_incoming;
struct qmsg;
struct cn_admin;
struct tables_ops;
struct cluster_fwd;

#define MAX_SEEDS 64
#define MAX_PEERS 64
#define REPORT_EVERY_MS 200
#define RETRY_MS 100
#define CN_IDLE_WAIT_MS 20        /* the glue's thread, when nothing kicks it */
#define CN_LATE_LOG_MS 1000       /* a turn of the glue's thread this late is logged */
#define CN_SYNC_LIVE_MS 1500      /* a SUBACK waits for members heard from this recently */
#define CN_HEARTBEAT_MS 15        /* Raft heartbeat (cluster_node.c) */
#define RETAINED_RETRY_MAX 100000 /* retained proposals waiting for a leader */
/* A SUBACK does not wait for a member that has known no Raft leader this
 * long (its Applied reports say so): past an election (at most about 2 s,
 * below), it is cut off from the leader and applies nothing until that
 * heals. */
#define CN_SYNC_LEADERLESS_MS 3000
/* Raft election timeout: libraft waits a random time in [T, 2T) without a
 * heartbeat, then pre-vote and vote (two round trips) and the new leader's
 * barrier. Issue 10 wants a new leader within 2 s of the old one dying: with
 * T = 1000 ms test_faults measured 2.3 s; with 600 ms at most about 1.5 s,
 * still 40 heartbeats (15 ms) before a follower gives up on its leader. */
#define CN_ELECTION_TIMEOUT_MS 600
/* A session resumed from its record: how long it waits for the old owner's
 * QoS 2 ids (struct session.blind_until), and how long what stands for
 * them elsewhere (a note of an ended copy's ids, a wait handed on) is kept:
 * CONFIG_RESEND_KNOW_MS, within which a resend is held for one
 * cluster_resend_wait (session_holds) */
#define CN_RESEND_KNOW_MS(cn) CONFIG_RESEND_KNOW_MS(&(cn)->b->cfg)

struct waiter {
    struct waiter *next;
    uint64_t ticket; /* route changes up to this one */
    uint64_t index;  /* Raft index that holds them, 0 until committed */
    void (*done)(void *arg);
    void *arg;
    uint64_t *index_out; /* NULL, or where the index goes before done */
};

struct peer {
    uint64_t node;
    uint64_t applied;
    uint64_t seen_ms;     /* 0 = never heard from */
    uint64_t run_seen_ms; /* first heard from in this run: its channel to this node is up */
    char name[ADMIN_NAME_MAX];
    char address[ADMIN_NAME_MAX];
    bool left;
    uint64_t down_ms; /* the leader's last NodeDown for it (cluster_session.c) */
    bool down_told;   /* ... logged and counted for this silence */
    /* Its Applied reports with the last sequence number of its outbox to
     * this node (Applied.fwd_next): `clear` is the highest index such that
     * every frame it had put in that outbox when it reported it has been
     * applied here, so every forward it routed with tables older than that
     * has come; `pend_index` (at `pend_seq`) is a report still waiting for
     * its frames (0: none). An old copy of a session that moved on ends
     * only once every member is clear for its new owner's routes
     * (cluster_session.c, members_clear). */
    uint64_t clear, pend_index, pend_seq;
    /* the leader: when it took the member for dead in this silence (0: it
     * does not), and when it looks next for the sessions of it whose
     * expiry interval has passed since (cluster_session.c,
     * dead_expiry_poll) */
    uint64_t dead_ms, expiry_next_ms;
    /* since when it has known no Raft leader, by its last Applied report
     * (this node's clock; 0: it knows one) */
    uint64_t leaderless_since;
    bool leaderless_told; /* ... and that it is no longer waited for, logged */
};

struct cluster_node {
    struct broker *b;
    struct cluster *c;
    struct raft_node *raft;
    struct fsm *fsm;
    uint64_t self;
    atomic_bool stopped;
    char node_name[128];

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit;                 /* mu */
    bool kick;                 /* mu: something changed, the thread looks again (cn_kick) */
    struct cmd_batch *pending; /* mu: route commands not proposed yet */
    bool purge_first;          /* mu: the first batch starts with NodePurge(self) */
    uint64_t queued;           /* mu: last ticket taken */
    uint64_t committed;        /* mu: last ticket committed */
    uint64_t committed_index;  /* mu: Raft index of the batch that committed it */
    uint64_t everywhere;       /* mu: last ticket applied on every live member */
    /* mu: the filter of the last RouteAdd queued and its ticket: a
     * subscriber joining it before that commits needs no other
     * (cluster_node.c, cn_filter_joined) */
    char last_add[256];
    size_t last_add_len;
    uint64_t last_add_ticket;
    struct waiter *waiters; /* mu */
    /* the batch in flight (mu) */
    void *inflight;
    size_t inflight_len;
    uint64_t inflight_ticket;
    bool inflight_busy;
    uint64_t retry_at_ms;
    /* retained messages whose proposal failed (no leader, leadership lost,
     * a forward unanswered), proposed again every RETRY_MS (mu) */
    struct ret_retry *ret_retry;
    unsigned n_ret_retry;
    /* retained messages published here and not applied here yet: per
     * topic the newest seq (ret_mu; cluster_node.c, "own retained") */
    pthread_mutex_t ret_mu;
    struct ret_own *ret_own[CN_RET_OWN_BUCKETS];

    struct peer peers[MAX_PEERS]; /* mu: the other members */
    unsigned n_peers;
    /* mu: nodes that own sessions but are members no more (forgotten, or
     * left), as this node learnt of them: their sessions expire as a dead
     * member's, counted from `since_ms` (cluster_session.c,
     * dead_expiry_poll). gone_scanned: this node, leading, has looked for
     * such owners in the registry since it became the leader. */
    struct gone_owner {
        uint64_t node, since_ms, next_ms;
    } gone[MAX_PEERS];
    unsigned n_gone;
    bool gone_scanned;

    atomic_uint_fast64_t pub_seq; /* per-origin sequence of retained messages */
    struct cluster_fwd *fwd;      /* forwards: outbox, resend, acks */
    atomic_uint_fast64_t pick;    /* shared group picks */

    /* the registry (cluster_registry.c) */
    pthread_mutex_t reg_mu;
    struct cl_claim *claims;         /* reg_mu: retrying, or awaiting state */
    struct surrendered *surrendered; /* reg_mu: sessions given up, kept for their claimant */
    struct held_request *held;       /* reg_mu: requests waiting for a claim of this node */
    /* reg_mu: requests being answered: their session is out of
     * `surrendered` and not in `moving` yet (request_answer); a stop's
     * hand-over waits for them */
    unsigned answering;

    /* persistent sessions across faults (cluster_session.c) */
    struct cn_moving *moving;     /* reg_mu: old copies whose late messages follow the session */
    struct cn_handed *handed;     /* reg_mu: QoS 2 ids of ended copies (struct cn_handed) */
    struct cn_incoming *incoming; /* reg_mu: sessions that moved here, for their late messages */
    uint64_t started_ms;
    /* glue's thread: every member heard from in this run long enough ago
     * that what it held for this node while it was down has come
     * (cluster_session.c, restart_settled) */
    bool settled;
    atomic_bool loaded;     /* the store loaded the sessions */
    atomic_bool reannounce; /* NodeDown(self) applied: propose this node's routes again */
    /* ... once caught up after the start: taken for dead while running */
    atomic_bool reannounce_running;
    uint64_t first_routes_index; /* mu: index of this run's first route batch, 0 before */
    /* counters (docs/operations.md): NodeDowns this node proposed as the
     * leader, once per silence of a member; NodeDown(self) seen applied
     * while running; clean sessions ended for it (cluster_session.c) */
    atomic_uint_fast64_t nodes_down, taken_for_dead, dead_sessions_ended;
    /* sessions of dead members this node released as the leader, and its
     * own sessions ended because the cluster had released them
     * (cluster_session.c, dead_expiry_poll) */
    atomic_uint_fast64_t dead_sessions_released, dead_sessions_expired;
    atomic_bool restart_done; /* the start-up pass over stored sessions ran */
    uint64_t restart_target;  /* the leader's applied index to reach first */

    struct admin_local *admin;
    struct admin_provider local; /* the per-node provider (stats, publish) */
    struct cn_admin *adm;        /* cluster_admin.c */

    /* rebuild after a divergence: a thread leaves the cluster, marks the
     * data directory and stops the process */
    pthread_t rebuild_thread;
    atomic_bool rebuilding;
    /* the replicated tables could not be written (fsm_broken): stopping */
    atomic_bool failed;
};

/* Wake the glue's thread: it runs its loop once more before it sleeps
 * (a signal alone is lost while the thread is busy). Caller holds mu. */
static inline void cn_kick(struct cluster_node *cn)
{
    cn->kick = true;
    pthread_cond_signal(&cn->cv);
}

static inline uint64_t cn_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* cluster_node.c */
/* Queue commands with the route changes (proposed in order with them,
 * retried until committed; route_ops.sync waits for them too). Any thread;
 * takes mu. 0, -ENOMEM, -ECANCELED after stop. */
int cn_queue_batch(struct cluster_node *cn, const struct cmd_batch *cmds);
/* Whether `node` reported within cluster_down_after. Takes mu. */
bool cn_peer_live(struct cluster_node *cn, uint64_t node);
/* route_ops.sync, and *index (may be NULL) gets the Raft index that holds
 * the route changes waited for (set before done runs). */
int cn_sync_index(struct cluster_node *cn, void (*done)(void *arg), void *arg, uint64_t *index);

/* cluster_registry.c */
extern const struct registry_ops cluster_registry_ops;
/* Retries and deadlines (the glue's thread, no lock held). */
void cn_registry_poll(struct cluster_node *cn, uint64_t now);
/* After the cluster stopped. */
void cn_registry_drain(struct cluster_node *cn);
/* Sessions surrendered to a claim whose request has not come. reg_mu held. */
size_t cn_registry_surrendered(struct cluster_node *cn);
/* Whether the session of id is among them. reg_mu held. */
bool cn_registry_surrendered_has(struct cluster_node *cn, const char *id, uint16_t len);
/* The session of id surrendered here whose claim was `epoch`, referenced,
 * or NULL. reg_mu held. */
struct session *cn_registry_surrendered_of(struct cluster_node *cn, const char *id, uint16_t len,
                                           uint64_t epoch);
/* A RouteAdd of this node for each filter of each of them into b; returns
 * how many. reg_mu held. */
struct cmd_batch;
size_t cn_registry_surrendered_routes(struct cluster_node *cn, struct cmd_batch *b);
/* A RouteAdd of this node for each filter of s (none once it ended) into
 * b; returns how many. s->lock held. */
size_t cn_session_routes_add(struct cluster_node *cn, struct cmd_batch *b, const struct session *s);
/* Cluster thread: the observer saw a claim of another node applied
 * (SessionClaim.clean_start, .stored). */
void cn_registry_claimed_elsewhere(struct cluster_node *cn, const char *id, uint16_t len,
                                   uint64_t node, uint64_t epoch, bool clean_start, bool stored);
void cn_registry_on_request(struct cluster_node *cn, uint64_t from,
                            const Starling__Chan__SessionRequest *r);
/* The old owner's answer; sq (NULL: not sequenced) is staged into the
 * store batch that writes what it brought (cluster_fwd_in_stage). */
void cn_registry_on_state(struct cluster_node *cn, uint64_t from,
                          const Starling__Chan__SessionState *st, const struct cluster_fwd_seq *sq);

void cn_msg_fill(Starling__Chan__SessionMessage *m, const struct qmsg *q);
/* Whether a claim of id runs on this node (retrying, or awaiting its
 * state): a frame of id's late messages from `from` waits for it. A claim
 * awaiting its state from `from` itself resumes from the record now: that
 * state follows the frame in `from`'s sequence, and the frame waiting
 * would hold it back. Cluster thread; takes reg_mu. */
bool cn_claim_pending(struct cluster_node *cn, const char *id, uint16_t len, uint64_t from);

/* Tests (debug builds): sleeps the milliseconds (1..10000) that environment
 * variable `env` names and returns true; false without it (or in a release
 * build). Widens a moment in which another thread acts. */
#ifndef NDEBUG
bool cn_test_delay(const char *env);
#else
static inline bool cn_test_delay(const char *env)
{
    (void)env;
    return false;
}
#endif

/* cluster_session.c: persistent sessions across faults */
/* registry_ops.changed / .ended */
void cn_session_changed(void *ud, struct session *s);
void cn_session_ended(void *ud, struct session *s);
/* Queue s's SessionRecord (its epoch, subscriptions, expiry, user) with the
 * route changes; an expiry of 0 deletes a record that exists. */
void cn_session_record_queue(struct cluster_node *cn, struct session *s);
/* s, a stored copy that the registry names this node's claim `epoch` (the
 * start-up pass, or a request before it): when s is a copy of an older
 * claim, and the record names another node's claim since, that claim of
 * this node was lost in a stop (killed while it waited for its old owner's
 * state) and s stands in for it: its client's resends (DUP 1) wait for
 * the QoS 2 ids of that owner, as a session resumed from the record does.
 * Before, s waited for nobody's: the next owner, handed s's state, took a
 * resend of what that owner had for new (chaos seed 12000 with --resend
 * --more --no-lb --links --overlap: 1 QoS 2 message twice at 3
 * subscribers). It also takes the owners rule its copy went by
 * (stand_in_rule_set); `purge`: and what it holds that the rule leaves out
 * leaves it now, when no other session of the id is beside it (cn->reg_mu
 * not held then). s->lock not held. */
void cn_session_stand_in(struct cluster_node *cn, struct session *s, uint64_t epoch, bool purge);
/* A session built from the replicated record of id (not in the table, one
 * reference), or NULL when there is none. prev: the registry's owner
 * before the claim it is for (0: not known), whose QoS 2 ids its client's
 * resends wait for (session.blind_node); prev_epoch: that owner's claim
 * (0: not known; session.blind_epoch); prev_none_kept: that owner said it
 * kept nothing of id (SessionState.none_kept; session.blind_none_kept). */
struct session *cn_session_from_record(struct cluster_node *cn, const char *id, uint16_t len,
                                       uint64_t prev, uint64_t prev_epoch, bool prev_none_kept);
/* The old owner: s (taken out of the table, with its reference) sent its
 * state to `to` (claim `epoch`); what still arrives for it goes there until
 * SessionRouted (or a deadline), then s ends. `now` (no state was sent:
 * a session claimed away while this node was down, or whose claimant
 * never asked): what it holds and what still comes for it within the
 * channels' reconnection grace all go to `to`, then s ends. `known`: s's
 * claim is known (its epoch, or s found claimed away), so that the owners
 * rule judges what it leaves out (implied by `now`). */
void cn_moving_add(struct cluster_node *cn, struct session *s, uint64_t to, uint64_t epoch,
                   bool now, bool known);
/* s, just added moving out to `to` for claim `epoch` (cn_moving_add): that
 * claim's claimant stores the session before answering its client
 * (SessionClaim.stored; own_moved_keep). */
void cn_moving_claim_stored(struct cluster_node *cn, const struct session *s, uint64_t to,
                            uint64_t epoch);
/* For s, a copy going to `to`: the route table index from which a later
 * owner than s's own claim had its routes everywhere (the record's owners),
 * so that what was routed since reached that owner directly; 0 when none
 * is known (or s has a shared subscription). */
uint64_t cn_copy_owners_index(struct cluster_node *cn, struct session *s, uint64_t to);
/* Whether s has a shared subscription (cluster_session.c). s->lock held. */
bool cn_subs_shared(const struct session *s);
/* A `now` copy of id (no state sent yet) moving to `to` for claim `epoch`,
 * taken out of the moving list (its reference), or NULL: the claimant asks
 * for its state after all (a stored session the start-up pass found claimed
 * away before the claimant's request came), so it is handed over whole,
 * with the identities it got (its msg_seen), instead of as late messages
 * after a resume from the record. cn->reg_mu held. */
struct session *cn_moving_take(struct cluster_node *cn, const char *id, uint16_t len, uint64_t to,
                               uint64_t epoch);
/* This node claims id again (its new session, not `keep`, is about to be
 * installed and stored) while old copies of id are still in the moving list
 * (their late messages not sent yet): they are taken out of it and end now
 * (out of the index, their records out of the store before the new
 * session's are written, so that their end does not delete those and their
 * leftovers do not load into the new session at the next start); what they
 * held stays with them, in memory, for cn_moving_fold. `whole_from`: the
 * node that owned the session before this claim (whose state the new
 * session brought, or, dead, whose record it resumed from; 0: none): a
 * copy moving out to that node leaves out of the fold what reached it
 * directly. `bt` (or NULL): the batch of a claim about to be staged
 * (claim_stage), which then stores keep and the fold: the copies' rows
 * leave the store in it, ahead of those, rather than in a batch of their
 * own (a SIGKILL before the fold's writes lost what they held), and keep's
 * next sequence number goes past theirs. keep_epoch: keep's claim.
 * Returns the list (or NULL). cn->reg_mu held. */
struct cn_moving *cn_moving_detach(struct cluster_node *cn, const char *id, uint16_t len,
                                   struct session *keep, uint64_t keep_epoch, uint64_t whole_from,
                                   struct store_batch **bt);
/* Before cn_moving_detach, when this node's claim of id brought a session
 * (the old owner's state, or the record) that is about to replace what its
 * table holds of id: a session there stands in for the claim (a stored copy
 * that the start-up pass named the claim's, its claim having applied before
 * the pass; one that adopt_lost rebuilt for it; a stored copy not named
 * yet). What reached it meanwhile (published here, forwarded here, late
 * messages of the claim) ended with it when the claim's session replaced
 * it (registry_local_stage): it leaves the table now and joins the moving
 * list as an old copy moving to this node, which cn_moving_detach then
 * takes and cn_moving_fold folds into the claim's session (each identity
 * once). cn->reg_mu held. */
void cn_moving_stand_in(struct cluster_node *cn, const char *id, uint16_t len);
/* s (its reference: the list's), out of the table, joins the moving list as
 * an old copy moving to this node under its own claim `own`, for
 * cn_moving_detach to take. cn->reg_mu held. */
void cn_moving_back(struct cluster_node *cn, struct session *s, uint64_t own);
/* The QoS 2 ids that this node's latest old copy of id still moving out
 * to node `to` (another node) took from its client (received, their PUBREL
 * not come): a malloc'd array of *n, or NULL (no such copy, or out of
 * memory); with w, that copy's own wait (cn_waited_here_ids). Takes
 * cn->reg_mu. */
struct cn_wait_on;
uint16_t *cn_moving_qos2_ids(struct cluster_node *cn, const char *id, uint16_t len, uint64_t to,
                             uint32_t *n, struct cn_wait_on *w);
/* A session state st for id, from node `from`, an owner that resumed the
 * session from its record while this node was taken for dead and still
 * waits for this node's QoS 2 ids (blind_node: this node, time left): those
 * ids, which answer its client's resends here (handle_publish_park). The
 * state's told ids if that owner learnt them already; else those of this
 * node's latest old copy still moving out to `from`, the copy it waited for
 * (cn_moving_qos2_ids), or, when none, of its copy of the claim waited for
 * (blind_epoch) moving out elsewhere or surrendered, or that ended lately
 * (struct cn_handed), less those whose PUBREL came to that owner while it
 * waited (released_qos2: the client may have used them again since). A
 * malloc'd array of *n, or NULL (not such a state, or out of memory). Takes
 * cn->reg_mu. */
/* The QoS 2 ids a copy of this node held when it ended, handed on to its
 * new owner with its last frame (or folded into a later claim's session
 * here): kept for CN_RESEND_KNOW_MS, as the ids a later owner's wait on
 * this node asks for (cn_waited_here_ids, chain_ids) when that frame did
 * not reach it. cn_handed_free: at the node's end. */
struct cn_handed {
    struct cn_handed *next;
    uint64_t epoch; /* the copy's claim */
    uint64_t until_ms;
    bool folded; /* into a later claim's session here: asked for by its claim only */
    uint32_t n;
    uint16_t *ids;
    /* the copy still waited for wait_node's ids of claim wait_epoch
     * (resumed from its record, not told) until wait_until_ms (monotonic),
     * with the PUBRELs that came meanwhile: its ids are only part of its
     * client's (struct cn_wait_on). wait_node 0: no wait. */
    uint64_t wait_node, wait_epoch, wait_until_ms;
    uint32_t n_wait_rel;
    uint16_t *wait_rel;
    uint16_t len;
    char id[];
};
void cn_handed_free(struct cluster_node *cn);
/* cluster_fwd_ended_fn (ud: the cluster node): the QoS 2 ids of a copy
 * whose last frame still waits in the outbox after a restart, kept again
 * for CN_RESEND_KNOW_MS. */
void cn_handed_loaded(void *ud, uint64_t node, const Starling__Chan__SessionMessages *sm);
/* The notes of struct cn_handed that the store kept (the node's start,
 * after the outbox's load): those whose time has not run out are kept
 * again, the rest deleted. 0, or a negative errno (store_handed_scan). */
int cn_handed_load(struct cluster_node *cn);

/* The wait of this node's copy whose ids cn_waited_here_ids gives, when
 * that copy itself still waited for another node's ids (resumed from its
 * record, not told): its ids are only part of its client's then. */
struct cn_wait_on {
    uint64_t node;  /* 0: none */
    uint64_t epoch; /* that node's copy's claim */
    uint64_t left_ms;
    uint32_t *released; /* the PUBRELs that came during that wait (malloc'd) */
    size_t n_released;
};
/* ... and w (NULL: not wanted; else filled, released to free): when the
 * copy whose ids it gives still waited itself. */
uint16_t *cn_waited_here_ids(struct cluster_node *cn, uint64_t from,
                             const Starling__Chan__SessionState *st, const char *id, uint16_t len,
                             uint32_t *n, struct cn_wait_on *w);
/* s, whose wait for this node's QoS 2 ids (st's, the state of a node
 * that waited for them) cn_waited_here_ids answered only in part (w: the
 * copy that had them waited itself), waits for w->node's ids of claim
 * w->epoch now, within what is left of both waits; the PUBRELs that came
 * during either wait count (st->released_qos2, w->released). Returns them
 * all, malloc'd, *n_rel (NULL: out of memory), for cn_wait_ask. s->lock
 * held. */
uint32_t *cn_wait_redirect(struct cluster_node *cn, struct session *s,
                           const Starling__Chan__SessionState *st, const struct cn_wait_on *w,
                           size_t *n_rel);
/* The question to w->node for its copy's ids of claim w->epoch
 * (SessionMessages.ask) for id's session of claim `epoch` here, telling
 * the ids known so far (ids[0..n_ids) and own[0..n_own), each once) and
 * the PUBRELs released[0..n_rel), into *bt: sent once committed. */
void cn_wait_ask(struct cluster_node *cn, const struct cn_wait_on *w, const char *id, uint16_t len,
                 uint64_t epoch, const uint32_t *ids, size_t n_ids, const uint16_t *own,
                 uint32_t n_own, const uint32_t *released, size_t n_rel, struct store_batch **bt);
/* Whether an old copy of id is in the moving list. Takes cn->reg_mu. */
bool cn_moving_held(struct cluster_node *cn, const char *id, uint16_t len);
/* Then, once the new session is in the registry: what the detached copies
 * held is delivered to it as late messages (cn_session_on_messages: each
 * identity once), instead of going to the node they were moving to and
 * back; the list is freed. cn->reg_mu not held. */
void cn_moving_fold(struct cluster_node *cn, struct cn_moving *list);
/* The batch of a staged claim that folds old copies (cn_moving_detach's
 * `bt`, with the claim's session): the fold's writes go into it, and its
 * messages are held until it commits. */
struct late_commit;
struct cn_fold_into {
    struct store_batch *bt;
    struct late_commit *held;
};
/* cn_moving_fold, its writes into `into` (NULL: batches of its own); then
 * cn_fold_submit submits it. */
void cn_moving_fold_into(struct cluster_node *cn, struct cn_moving *list,
                         struct cn_fold_into *into);
void cn_fold_submit(struct cluster_node *cn, struct cn_fold_into *into);
/* While a staged claim of s's id folds old copies into s and has not
 * submitted its batch (cn_fold_submit), a later claim's request for the
 * session waits (cn_incoming_unsettled): what it would take out of s and
 * delete from the store would come back with the claim's batch.
 * cn->reg_mu held. */
void cn_incoming_fold_unsubmitted(struct cluster_node *cn, const struct session *s, bool on);
/* s, a copy of a session about to end, beside another session of the same
 * id in this node's table: the store's records of the id are that
 * session's, so s's end must not delete them (s and its messages are
 * marked not stored; rows only s had stay until the id's next end). */
void cn_session_unstore_beside(struct broker *b, struct session *s);
/* A claim of s's id made here was overtaken by a later one, claim `epoch`
 * of `node` (this node too: its client's next CONNECT after a refusal):
 * s, the claim's session (one reference, not in the table: what the old
 * owner sent, late messages that came for the claim), moves to it as an
 * old copy does (cn_moving_add); to a session of this node at once when it
 * is in place, else when its claim completes here (cn_moving_detach) or
 * the copy's grace ends; nothing when that session began clean
 * (session.clean_epoch). cn->reg_mu not held. */
void cn_overtaken_add(struct cluster_node *cn, struct session *s, uint64_t node, uint64_t epoch);
/* The new owner: s came from another node with claim `epoch`. */
void cn_incoming_add(struct cluster_node *cn, struct session *s, uint64_t epoch);
/* Whether a session of id that came here with a claim of this node before
 * claim `below` is still that claim's: neither ended, nor in the table, nor
 * given up (surrendered, or an old copy moving out). reg_mu held. */
bool cn_incoming_unsettled(struct cluster_node *cn, const char *id, uint16_t len, uint64_t below);
void cn_session_routed_send(struct cluster_node *cn, uint64_t to, const char *id, uint16_t len,
                            uint64_t epoch, uint64_t route_index);
/* Take the messages s holds (inflight, then queued; a QoS 2 message past
 * PUBREC is freed: its client has it). s->lock held. A list, oldest first. */
struct qmsg *cn_session_take_msgs(struct session *s);
/* The claimant: a SessionState (found) that came after its claim went on
 * without it (resumed from the record): its messages and identities are
 * taken as late messages, not dropped. */
void cn_session_on_late_state(struct cluster_node *cn, uint64_t from,
                              const Starling__Chan__SessionState *st,
                              const struct cluster_fwd_seq *sq);
/* A moved session's messages go in frames of at most MOVE_CHUNK_BYTES of
 * messages (or one message) and at most MOVE_CHUNK_MSGS messages: how many
 * of msgs[0..n) the first frame takes (at least one when n > 0). The
 * receiver applies a frame at once on its cluster thread, which also runs
 * Raft and the channel, and yields between frames (channel.c, conn_parse):
 * the frame is the slice, so its count bounds the stall (docs/cluster.md,
 * *A live node taken for dead under load*). */
#define MOVE_CHUNK_BYTES (512u * 1024u)
#define MOVE_CHUNK_MSGS 256u
size_t cn_msgs_chunk(Starling__Chan__SessionMessage *const *msgs, size_t n);
/* Send sm (its msgs, seen and last) to `to` in frames of cn_msgs_chunk's
 * size, sequenced through *bt (cluster_fwd_send_frame), seen and last on
 * the last one. sm is changed. The lowest answer of cluster_fwd_send_frame
 * (1: all sequenced). */
int cn_send_msgs_chunked(struct cluster_node *cn, uint64_t to, Starling__Chan__SessionMessages *sm,
                         struct store_batch **bt);
/* sq (may be NULL) applied with nothing of its own to store. */
void cn_seq_applied(struct cluster_node *cn, const struct cluster_fwd_seq *sq);
/* Late messages for a session owned here; sq as for cn_registry_on_state. */
void cn_session_on_messages(struct cluster_node *cn, uint64_t from,
                            const Starling__Chan__SessionMessages *m,
                            const struct cluster_fwd_seq *sq);
void cn_session_on_routed(struct cluster_node *cn, uint64_t from,
                          const Starling__Chan__SessionRouted *r);
/* The order of late messages (docs/cluster.md, "Ordering of late
 * messages"). cn_session_late_hold: s, which came here with the
 * SessionState of node `from` for claim `epoch`, holds what reaches it
 * directly from now on (call before it joins the index), for at most
 * twice cluster_claim_timeout. cn_session_late_in: after the late messages
 * of sm (from node `from`) were queued to s, which ends the hold when sm
 * is that node's complete (or last) batch for the claim. Any thread. */
void cn_session_late_hold(struct cluster_node *cn, struct session *s, uint64_t from,
                          uint64_t epoch);
void cn_session_late_in(struct cluster_node *cn, struct session *s, uint64_t from,
                        const Starling__Chan__SessionMessages *sm);
/* The glue's thread: late messages, the start-up pass, NodeDown. */
void cn_session_poll(struct cluster_node *cn, uint64_t now);
/* A release of this node's claim `epoch` of id applied, proposed by the
 * leader as expired while this node was taken for dead: the session of
 * that claim here ends (cluster thread). */
void cn_session_released(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch);
/* A node that owns sessions is no member now (forgotten, or it left):
 * noted, so that its sessions expire as a dead member's (from `now`); and
 * a node that is a member again. cn->mu held. */
void cn_gone_note(struct cluster_node *cn, uint64_t node, uint64_t now);
void cn_gone_forget(struct cluster_node *cn, uint64_t node);
/* node was forgotten (MEMBER_REMOVE): it never answers a wait for its
 * QoS 2 ids again, so the sessions here that wait for them (resumed from
 * their records while it was away, struct session.blind_node) stop
 * waiting, and what they held is taken now instead of at the end of
 * cluster_resend_wait. An operator forgets a node that is gone for good
 * (`starling ctl cluster forget`): what it had taken is lost with it, and
 * a resend of it is the only copy left. */
void cn_waits_forget(struct cluster_node *cn, uint64_t node);
/* After the cluster stopped. */
void cn_session_drain(struct cluster_node *cn);
/* cluster_node.c: propose an entry and wait until it committed (retrying
 * while there is no leader); *index: its Raft index. -EINPROGRESS: it
 * committed, and its index and results are not known (the leader, out of
 * memory, applies it later). */
int cn_propose_wait_index(struct cluster_node *cn, const void *e, size_t len, uint64_t *index);
/* cluster_node.c: pack fr and queue it for node `to` (cluster_send): 0, or
 * -ENOMEM or cluster_send's error. Any thread. */
int cn_send_frame(struct cluster_node *cn, uint64_t to, const Starling__Chan__Frame *fr);

/* cluster_admin.c: the admin API's queries to every node, the operator's
 * replicated tables (installed as b->tables). */
int cn_admin_start(struct cluster_node *cn);
void cn_admin_stop(struct cluster_node *cn);
void cn_admin_free(struct cluster_node *cn);
void cn_admin_on_query(struct cluster_node *cn, uint64_t from, const Starling__Chan__AdminQuery *f);
void cn_admin_on_answer(struct cluster_node *cn, uint64_t from,
                        const Starling__Chan__AdminAnswer *f);
json_t *cn_gather(struct cluster_node *cn, json_t *q, char *err, size_t errlen);
extern const struct tables_ops cluster_tables_ops;

#endif
