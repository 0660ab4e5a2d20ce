/*
 * cluster_registry.c - the session registry of a clustered node (a
 * registry_ops, node/registry.h), part of the glue of cluster_node.h.
 *
 * A CONNECT claims its client id through Raft: read the owner and epoch
 * from the replicated registry, propose SessionClaim(id, self, epoch + 1).
 *   - committed OK/NOOP: this node owns the id. When another node owned it
 *     and the client asks to resume (clean start 0), ask that node for the
 *     session (chan.SessionRequest); its answer (chan.SessionState) becomes
 *     the session here (REGISTRY_TRANSFERRED, session present 1) once the
 *     routes of its subscriptions are in effect on every live node (as for
 *     a SUBACK). No answer within cluster_claim_timeout: a new session.
 *   - STALE_EPOCH (a claim of another node committed first): read again and
 *     claim again; the later CONNECT wins.
 *   - no leader (-ENOTCONN/-EAGAIN, leadership lost): again every 100 ms
 *     until cluster_claim_timeout, then REGISTRY_UNAVAILABLE (5.0 CONNACK
 *     0x88, 3.1.1 return code 3).
 * The old owner learns of the claim through the state machine's observer:
 * registry_local_surrender kicks its connection (5.0 DISCONNECT 0x8E) and
 * takes the session out of its table; the session is kept aside until the
 * new owner asks for it (then its state is sent and it ends) or for 30 s.
 *
 * One owner: the worker completes a won claim only if the replicated
 * registry still names this node with the claim's epoch, under `reg_mu`,
 * which the observer also holds while it surrenders. Either the local claim
 * happens first (and the observer kicks it), or the observer's claim is
 * already applied (and this claim is refused).
 *
 * Releases and expiry stay local (registry_local_release/tick): a record of
 * the replicated registry pointing at a node that no longer has the session
 * costs the next claimant one SessionRequest answered "not found".
 */
#include "cluster_node_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"
#include "channel.pb-c.h"
#include "cluster_fwd.h"
#include "cmd.h"
#include "codec.h"
#include "log.h"
#include "msg.h"
#include "msg_seen.h"
#include "persist.h"
#include "raft_cmd.pb-c.h"
#include "session.h"
#include "store.h"
#include "testhook.h"
#include "topic.h"

#define CLAIM_RETRY_MS 100
#define CLAIM_MAX_STALE 8

struct cl_claim {
    struct cl_claim *next; /* cn->claims (reg_mu): retrying or awaiting state */
    struct cluster_node *cn;
    struct registry_claim req;
    registry_done_fn done;
    void *done_ud;
    uint64_t deadline_ms;
    uint64_t retry_at_ms; /* 0: not waiting to retry */
    uint64_t epoch;       /* the epoch proposed */
    uint64_t prev_node;   /* owner before the claim (0: none) */
    uint64_t prev_epoch;  /* the registry's epoch before the claim (its owner's claim) */
    uint64_t maybe_epoch; /* an attempt with this epoch may have committed (0: none) */
    bool awaiting_state;
    uint64_t wait_index; /* decided at this index, not applied here yet */
    bool then_propose;   /* after wait_index: claim again (else: won) */
    int stale;
    int status; /* final: >= 0 won, REGISTRY_UNAVAILABLE */
    struct session *incoming;
    bool routed;          /* the incoming session's subscriptions are in the index */
    bool from_record;     /* incoming came from the replicated record (old owner down) */
    bool prev_none_kept;  /* the old owner answered that it kept nothing (SessionState.none_kept) */
    uint64_t route_index; /* the index by which incoming's routes are everywhere */
    bool staged;          /* incoming is in the table offline, its store batch submitted */
    int store_status;     /* ... and its commit's result (claim_stored) */
    char id[];            /* the client id, then req.user (see cr_claim) */
};

struct surrendered {
    struct surrendered *next;
    struct session *s;
    uint64_t until_ms;
    uint64_t epoch; /* the claim it was given up to */
    bool stored;    /* ... whose claimant stores the session before answering */
};

/* A SessionRequest that came while a claim of the same id made here was
 * still in progress (cn_registry_on_request): answered once it ended. */
struct held_request {
    struct held_request *next;
    uint64_t from, epoch;
    uint64_t until_ms; /* answered then whatever the claim does */
    uint16_t len;
    char id[];
};

static void claim_propose(struct cl_claim *k);
static bool held_here(struct cluster_node *cn, const char *id, uint16_t len);
static void held_poll(struct cluster_node *cn, uint64_t now);

/* ---- the end of a claim: on the claiming worker ---- */

static void claim_on_worker(void *ud);

/* End a claim's incoming session that is not installed. Its record and
 * messages were written when its state came (cn_registry_on_state): they
 * go with it, but for another session of the id in this node's table (a
 * later claim here), whose records have the same keys. */
void cn_session_unstore_beside(struct broker *b, struct session *s)
{
    struct registry *r = &b->registry;
    pthread_mutex_lock(&r->lock);
    struct session *other = registry_find(r, s->client_id, s->id_len);
    pthread_mutex_unlock(&r->lock);
    if (other && other != s) {
        lock_acquire(&s->lock);
        s->stored = false;
        for (struct qmsg *q = s->queue.head; q; q = q->next)
            q->stored = false;
        for (struct qmsg *q = s->inflight.head; q; q = q->next)
            q->stored = false;
        lock_release(&s->lock);
    }
}

static void incoming_end(struct broker *b, struct session *s)
{
    cn_session_unstore_beside(b, s);
    session_end(b, s);
    session_unref(s);
}

/* Any thread: the routes of the moved subscriptions are in effect on every
 * live node (route_ops.sync); the claim completes on its worker. */
static void claim_routed(void *ud)
{
    struct cl_claim *k = ud;
    struct broker *b = k->cn->b;
    if (b->sink->call(k->req.w, claim_on_worker, k) < 0) {
        /* the worker's loop ended (its inbox is closed): refuse the claim
         * here, as registry_deferred_ops does, so that the connection's
         * reference is released */
        incoming_end(b, k->incoming);
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        free(k);
    }
}

/* The moved session's subscriptions join the index here. As for a SUBACK,
 * the CONNACK (session present 1) waits until their routes are in effect on
 * every live node: else a message published on another node right after the
 * CONNACK (even on the old owner, whose own routes go with the session)
 * finds no route to this node and is lost. Returns true when the claim
 * continues later (claim_routed). */
static bool claim_route_incoming(struct cl_claim *k)
{
    struct broker *b = k->cn->b;
    struct session *in = k->incoming;
    k->routed = true;
    /* no copy of it here (an old one would take what was routed to this
     * node before): forwards routed before its claim applied here went to
     * its old owner (session.h, routed_from) */
    bool copy_here =
        held_here(k->cn, k->id, k->req.id_len) || cn_moving_held(k->cn, k->id, k->req.id_len);
    lock_acquire(&in->lock);
    in->epoch = k->epoch;
    uint32_t n = in->n_subs;
    bool shared = cn_subs_shared(in);
    uint64_t visible = fsm_visible(k->cn->fsm);
    uint64_t routed_from = copy_here || shared ? 0 : visible;
    in->routed_from = routed_from;
    /* with a copy here, it takes every forward from its join on, as the
     * copy did before: its record says so (claim_held_bound) */
    in->record_from = copy_here && !shared ? visible : 0;
    uint64_t bound = routed_from ? routed_from : in->record_from;
    lock_release(&in->lock);
    /* what reaches it directly from now on waits for what its old owner
     * collected before (docs/cluster.md, "Ordering of late messages") */
    if (!k->from_record)
        cn_session_late_hold(k->cn, in, k->prev_node, k->epoch);
    for (uint32_t i = 0; i < n; i++) {
        struct session_sub *sub = &in->subs[i];
        sub_index_add(b->index, sub->filter, sub->len, in, sub->options, sub->sub_id);
    }
    /* (before this, what is published for it reaches it only through its
     * old owner's copy: as a late message) A forward that this node begins
     * to deliver from here on meets it in the index: those begun before
     * are counted now, for its record (RecordOwner.pubs_seen), so that an
     * old copy leaves out the ones routed since its claim that it took
     * (session_owner_had). */
    struct session_pubs_seen *ps = bound ? cluster_fwd_pubs_seen(k->cn->fwd) : NULL;
    lock_acquire(&in->lock);
    free(in->pubs_seen);
    in->pubs_seen = ps;
    lock_release(&in->lock);
    log_info("cluster: the session of '%s' (claim %llu) joined this node's subscriptions", k->id,
             (unsigned long long)k->epoch);
    /* from here on, a message published on this node reaches it without a
     * route, before its routes are everywhere, which is the bound of what
     * an old copy leaves out: the first publish number given after the
     * join (a read-modify-write: a publish numbered after it matched with
     * the index as it is now) goes in its record (RecordOwner.local_from),
     * and such a copy leaves those publishes out too (session_owner_had).
     * Before, a copy folded into a session resumed from the record gave
     * them again (chaos seed 1188520366 with --more: 2 QoS 2 duplicates) */
    uint64_t local = atomic_fetch_add(&k->cn->pub_seq, 0) + 1;
    lock_acquire(&in->lock);
    in->local_from = local;
    lock_release(&in->lock);
    /* a copy of it here holds its filters in the index, so that joining
     * it proposed no route; but that copy's routes may have gone with the
     * record that left this node while it was taken for dead
     * (NodeDown.keepers, cluster/fsm.c): proposed again, under the same
     * wait */
    pthread_mutex_lock(&k->cn->reg_mu);
    bool aside = cn_registry_surrendered_has(k->cn, k->id, k->req.id_len);
    pthread_mutex_unlock(&k->cn->reg_mu);
    if ((copy_here || aside) && n) {
        struct cmd_batch *rb = cmd_batch_new();
        int r = rb ? 0 : -ENOMEM;
        if (rb) {
            lock_acquire(&in->lock);
            if (cn_session_routes_add(k->cn, rb, in) != in->n_subs)
                r = -ENOMEM;
            lock_release(&in->lock);
        }
        if (r == 0)
            r = cn_queue_batch(k->cn, rb);
        if (r < 0 && r != -ECANCELED)
            log_warn("cluster: the routes of '%s' are not proposed again: %s", k->id, strerror(-r));
        cmd_batch_free(rb);
    }
    /* its record names this node, covered by the same wait as its routes,
     * and queued after them: NodeDown keeps the old node's routes for the
     * session until the record names this node (cluster/fsm.c), so at no
     * point are neither in effect */
    cn_session_record_queue(k->cn, in);
    if (cn_sync_index(k->cn, claim_routed, k, &k->route_index) == 1)
        return true;
    /* nothing to wait for: this node's routes were there already, so no
     * entry tells which messages found the session here (one routed with
     * the current table may have come before the session joined the
     * index): the old copy sends everything, the session takes each
     * message once (its identity) */
    k->route_index = 0;
    return false;
}

/* A claim of this node that gives its client the session this node held
 * already (the registry named this node: no session came with it, nor
 * went through claim_route_incoming). That session is in the index since
 * it was loaded or began, and takes every forward that reaches it: its
 * record says so (record_from, with what had reached this node by now and
 * the next publish number of this node), as a moved session's does, so
 * that an old copy elsewhere leaves out what it had (session_owner_had).
 * Before, that record said nothing: a node SIGKILLed as its claim of the
 * id committed, started again with an older stored copy that the claim
 * named its own, served it to the client's next CONNECT, and the copy on
 * the node that owned the session before kept the forwards routed to both
 * before this record; folded into a session resumed from the record, it
 * gave them again (chaos seed 7820 with --more --no-lb: 6 QoS 2
 * duplicates). From the first route batch this node committed in this
 * run: a forward routed with a table that has it came to this run of the
 * node, and one that came after the count below met the session. */
static void claim_held_bound(struct cluster_node *cn, struct session *s)
{
    /* (atomic: claim_granted runs under reg_mu, which cn->mu never
     * encloses and is not to) */
    uint64_t from = __atomic_load_n(&cn->first_routes_index, __ATOMIC_ACQUIRE);
    uint64_t visible = fsm_visible(cn->fsm);
    if (!from || from > visible)
        from = visible;
    struct session_pubs_seen *ps = cluster_fwd_pubs_seen(cn->fwd);
    uint64_t local = atomic_fetch_add(&cn->pub_seq, 0) + 1;
    lock_acquire(&s->lock);
    if (from && ps && !s->routed_from && !s->direct_from && !cn_subs_shared(s)) {
        s->record_from = from;
        free(s->pubs_seen);
        s->pubs_seen = ps;
        ps = NULL;
        if (!s->local_from)
            s->local_from = local;
    }
    lock_release(&s->lock);
    free(ps);
}

/* registry_local_claim's answer (on the worker, under reg_mu): the session
 * learns its claim's epoch and its record follows it. */
static void claim_granted(void *ud, int status, struct session *s)
{
    struct cl_claim *k = ud;
    if (s && status >= 0) {
        if (!k->incoming && !k->req.clean_start && k->prev_node == k->cn->self)
            claim_held_bound(k->cn, s);
        lock_acquire(&s->lock);
        s->epoch = k->epoch;
        if (k->req.clean_start)
            s->clean_epoch = k->epoch;
        lock_release(&s->lock);
        /* the store record written at CONNECT (registry_local_claim) has
         * the previous claim's epoch: this one's, for a copy of it that a
         * restart finds claimed away (cluster_session.c,
         * owner_routed_index). A session that came with the claim was
         * stored with it already. */
        if (!k->incoming)
            persist_session_sync(k->cn->b, s, NULL);
        cn_session_record_queue(k->cn, s);
    }
    k->done(k->done_ud, status, s);
}

/* Store writer thread: the batch of a staged claim (and everything
 * submitted before it) committed; the claim completes on its worker. */
static void claim_stored(void *ud, int status)
{
    struct cl_claim *k = ud;
    k->store_status = status;
    if (k->cn->b->sink->call(k->req.w, claim_on_worker, k) < 0) {
        /* the worker's loop ended: the session stays in the table
         * (offline), the connection is refused */
        session_unref(k->incoming);
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        free(k);
    }
}

/* Under cn->reg_mu, the claim won and still current: the session that
 * came from another node (or from its record) joins the table offline and
 * its contents and record go to the store; its client is answered once
 * they are committed (claim_stored, then claim_attach). Before, the
 * CONNACK went out with the batch submitted but not committed, and the
 * old owner was told to let its copy go (SessionRouted): a SIGKILL within
 * that commit lost the messages the session had brought (issue 10).
 * Returns false when the claim cannot be staged (out of memory). */
static bool claim_stage(struct cl_claim *k, struct store_batch **bt)
{
    struct broker *b = k->cn->b;
    if (registry_local_stage(b, &k->req, k->incoming, bt) < 0)
        return false;
    session_ref(k->incoming); /* k's, until the attach */
    k->staged = true;
    return true;
}

/* The staged session's batch committed: its client is attached and
 * answered, and the old owner may let its copy go. */
static void claim_attach(struct cl_claim *k)
{
    struct cluster_node *cn = k->cn;
    struct broker *b = cn->b;
    struct session *s = k->incoming;
    bool moved = !k->from_record;
    pthread_mutex_lock(&cn->reg_mu);
    uint64_t node = 0, epoch = 0;
    bool current = fsm_registry_get(cn->fsm, k->id, k->req.id_len, &node, &epoch) == 0 &&
                   node == cn->self && epoch == k->epoch;
    if (!current) {
        pthread_mutex_unlock(&cn->reg_mu);
        /* a later claim won meanwhile: the session (in the table) went
         * with it */
        log_info("cluster: the claim of '%s' was overtaken by a later one while it was stored",
                 k->id);
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        moved = false;
    } else if (k->store_status < 0) {
        pthread_mutex_unlock(&cn->reg_mu);
        /* not stored: not answered as resumed; the session stays here
         * offline, the client's next CONNECT resumes it */
        log_warn("cluster: the session of '%s' that moved here was not stored (%s): CONNECT "
                 "refused",
                 k->id, store_strerror(k->store_status));
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        moved = false;
    } else {
        registry_local_attach(b, &k->req, s, claim_granted, k);
        pthread_mutex_unlock(&cn->reg_mu);
    }
    /* the old owner sends what still arrives for it, then ends it */
    if (moved)
        cn_session_routed_send(cn, k->prev_node, k->id, k->req.id_len, k->epoch, k->route_index);
    session_unref(s);
    free(k);
}

#ifndef NDEBUG
/* Tests (debug builds only): while the file that STARLING_TEST_FOLD_CUT
 * names exists, a staged claim that folds old copies of its id (`folds`)
 * ends the process as a SIGKILL would, once every store batch submitted
 * so far committed: at `at` "ended" (the file says so) once the copies
 * ended, before the claim's session is stored; at "stored" (the file is
 * empty) once the claim's session is stored, before anything after it
 * (tests/cluster/test_faults.py). */
static void fold_test_cut(struct broker *b, const char *id, bool folds, const char *at)
{
    const char *path = getenv("STARLING_TEST_FOLD_CUT");
    if (!folds || !path)
        return;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char want[16] = "";
    if (!fgets(want, sizeof want, f))
        want[0] = 0;
    fclose(f);
    want[strcspn(want, "\n")] = 0;
    if (strcmp(want[0] ? want : "stored", at) != 0)
        return;
    store_flush(b->store);
    log_info("cluster: the claim of '%s' cut at '%s' of its fold of an old copy: the process ends "
             "here (STARLING_TEST_FOLD_CUT)",
             id, at);
    _exit(9);
}
#else
static void fold_test_cut(struct broker *b, const char *id, bool folds, const char *at)
{
    (void)b;
    (void)id;
    (void)folds;
    (void)at;
}
#endif

/* A claim of this node (`epoch`) completes: a copy of id given up here to
 * an earlier claim of another node, whose request it still awaits
 * (cn->surrendered), is an old copy of the claim's session. It joins the
 * moving list, as one moving out of this node does, and cn_moving_detach
 * folds it into that session now. Before, it stayed in the index beside
 * the session until its wait ended (cluster_claim_timeout + 1 s), taking
 * and storing everything the session's client got, under the keys the
 * two share: a SIGKILL meanwhile brought those rows back as the session's
 * queued messages, and they went to its next owner as late messages and
 * were delivered again (chaos seed 10254 with --resend --more: 44 QoS 2
 * duplicates, DUP 0; test_faults.py::test_copy_given_up_beside_a_later_
 * claim_here_stores_nothing_that_claim_got). cn->reg_mu held. */
static void surrendered_back(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch)
{
    for (struct surrendered **pp = &cn->surrendered; *pp;) {
        struct surrendered *x = *pp;
        if (x->epoch >= epoch || x->s->id_len != len || memcmp(x->s->client_id, id, len) != 0) {
            pp = &x->next;
            continue;
        }
        *pp = x->next;
        lock_acquire(&x->s->lock);
        uint64_t own = session_claim_epoch(x->s);
        lock_release(&x->s->lock);
        log_info("cluster: '%s' is claimed here again while its copy of claim %llu, given up to "
                 "claim %llu, waits for that claimant: that copy ends now, what it holds goes to "
                 "the new session",
                 x->s->client_id, (unsigned long long)own, (unsigned long long)x->epoch);
        cn_moving_back(cn, x->s, own);
        free(x);
    }
}

static void claim_on_worker(void *ud)
{
    struct cl_claim *k = ud;
    struct cluster_node *cn = k->cn;
    struct broker *b = cn->b;
    if (k->staged) {
        claim_attach(k);
        return;
    }
    if (k->status >= 0 && k->incoming && !k->routed) {
        /* tests: frames behind its state come first */
        (void)cn_test_delay("STARLING_TEST_CLAIM_ROUTE_DELAY_MS");
        if (claim_route_incoming(k))
            return;
    }
    if (k->status < 0) {
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
    } else {
        pthread_mutex_lock(&cn->reg_mu);
        uint64_t node = 0, epoch = 0;
        if (fsm_registry_get(cn->fsm, k->id, k->req.id_len, &node, &epoch) < 0 ||
            node != cn->self || epoch != k->epoch) {
            pthread_mutex_unlock(&cn->reg_mu);
            /* a later claim of another node won meanwhile */
            log_info("cluster: the claim of '%s' was overtaken by a later one", k->id);
            /* what it brought follows the claim that won: else lost (a
             * client that connects again after a refusal, its next claim
             * resumed from the record: test_session_moves.py) */
            if (k->incoming && node)
                cn_overtaken_add(cn, k->incoming, node, epoch);
            else if (k->incoming)
                incoming_end(b, k->incoming);
            k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        } else {
            bool moved = k->incoming && !k->from_record;
            /* a session of the id in the table in place of the one the
             * claim brought: folded into it, as an old copy is */
            if (k->incoming) {
                cn_moving_stand_in(cn, k->id, k->req.id_len);
                surrendered_back(cn, k->id, k->req.id_len, k->epoch);
            }
            /* (a session that ends with its connection stores nothing,
             * and offline it would expire at once) */
            bool stage = k->incoming && b->store && k->req.expiry != 0;
            /* an old copy still moving out of here: what it holds comes
             * back to the session. Staged, the copies' rows, the claim's
             * session and the fold's writes go in one batch
             * (cn_moving_detach) */
            struct store_batch *bt = NULL;
            struct cn_moving *back =
                cn_moving_detach(cn, k->id, k->req.id_len, k->incoming, k->epoch,
                                 k->incoming ? k->prev_node : 0, stage ? &bt : NULL);
            bool folds = back != NULL;
            if (stage)
                fold_test_cut(b, k->id, folds, "ended");
            if (stage && claim_stage(k, &bt)) {
                struct cn_fold_into into = {bt, NULL};
                /* submitted under cn->reg_mu (registry_local_stage), or
                 * after the fold, which may not wait for it: a later
                 * claim's request for the session waits until then */
                if (folds)
                    cn_incoming_fold_unsubmitted(cn, k->incoming, true);
                else
                    cn_fold_submit(cn, &into);
                pthread_mutex_unlock(&cn->reg_mu);
                if (folds) {
                    cn_moving_fold_into(cn, back, &into);
                    cn_fold_submit(cn, &into);
                    pthread_mutex_lock(&cn->reg_mu);
                    cn_incoming_fold_unsubmitted(cn, k->incoming, false);
                    pthread_mutex_unlock(&cn->reg_mu);
                }
                fold_test_cut(b, k->id, folds, "stored");
                /* an empty batch after the claim's and the fold's:
                 * committed once they are (commits complete in submission
                 * order) */
                struct store_batch *bar = store_batch_new();
                if (bar)
                    store_submit(b->store, bar, claim_stored, k);
                else
                    claim_stored(k, -ENOMEM);
                return;
            }
            if (bt) {
                /* not staged (out of memory): the copies' rows go as their
                 * end would have taken them, with every record of the id,
                 * before the claim's session is written */
                store_session_del(bt, k->id, k->req.id_len);
                persist_submit(b, &bt, NULL, NULL);
            }
            registry_local_claim(b, &k->req, k->incoming, claim_granted, k);
            pthread_mutex_unlock(&cn->reg_mu);
            cn_moving_fold(cn, back);
            /* the old owner sends what still arrives for it, then ends it */
            if (moved)
                cn_session_routed_send(cn, k->prev_node, k->id, k->req.id_len, k->epoch,
                                       k->route_index);
        }
    }
    free(k);
}

/* Any thread (cn->reg_mu not held). */
static void claim_finish(struct cl_claim *k, int status)
{
    k->status = status;
    if (k->cn->b->sink->call(k->req.w, claim_on_worker, k) < 0) {
        /* the worker's loop ended (its inbox is closed): refuse the claim
         * here, as registry_deferred_ops does, so that the connection's
         * reference is released */
        if (k->incoming)
            incoming_end(k->cn->b, k->incoming);
        k->done(k->done_ud, REGISTRY_UNAVAILABLE, NULL);
        free(k);
    }
}

/* ---- Raft ---- */

/* The claim committed and is applied here. */
/* The old owner does not answer: resume from the replicated record (a new
 * session when there is none). */
static void claim_from_record(struct cl_claim *k)
{
    struct session *s = cn_session_from_record(k->cn, k->id, k->req.id_len, k->prev_node,
                                               k->prev_epoch, k->prev_none_kept);
    if (s) {
        k->incoming = s;
        k->from_record = true;
        cn_incoming_add(k->cn, s, k->epoch);
    } else {
        log_info("cluster: no session record of '%s': a new session", k->id);
        k->req.clean_start = true;
    }
    claim_finish(k, 0);
}

/* Whether this node's registry holds a session of id (loaded from its
 * store, or live). */
static bool held_here(struct cluster_node *cn, const char *id, uint16_t len)
{
    struct registry *r = &cn->b->registry;
    pthread_mutex_lock(&r->lock);
    bool held = registry_find(r, id, len) != NULL;
    pthread_mutex_unlock(&r->lock);
    return held;
}

static void claim_won(struct cl_claim *k)
{
    struct cluster_node *cn = k->cn;
    if (k->prev_node == cn->self && !k->req.clean_start && !held_here(cn, k->id, k->req.id_len)) {
        /* The registry says this node owned the session, but it is not
         * here: it was claimed (or resumed) here and this node was SIGKILLed
         * before its store had it (the CONNACK does not wait for that), or
         * its CONNECT's claim committed as this node died. Before, the
         * claim went on as a new session (session present 0), and the late
         * messages of older copies came again to it, as nothing told it
         * what its client had (chaos seed 937187427: 2 sessions lost after
         * every node was SIGKILLed, 290 QoS 2 duplicates). The replicated
         * record has its subscriptions: resume from it. */
        log_info("cluster: '%s' is this node's by the registry but not in its store: its record",
                 k->id);
        claim_from_record(k);
        return;
    }
    if (k->prev_node && k->prev_node != cn->self && !k->req.clean_start &&
        !cn_peer_live(cn, k->prev_node)) {
        log_info("cluster: '%s' was owned by %016llx, which is down", k->id,
                 (unsigned long long)k->prev_node);
        claim_from_record(k);
        return;
    }
    if (k->prev_node && k->prev_node != cn->self && !k->req.clean_start) {
        /* ask the old owner for the session */
        Starling__Chan__SessionRequest q = STARLING__CHAN__SESSION_REQUEST__INIT;
        q.client_id.data = (uint8_t *)k->id;
        q.client_id.len = k->req.id_len;
        q.epoch = k->epoch;
        Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
        fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_REQUEST;
        fr.session_request = &q;
        size_t n = starling__chan__frame__get_packed_size(&fr);
        uint8_t *buf = malloc(n);
        if (!buf) {
            claim_finish(k, REGISTRY_UNAVAILABLE);
            return;
        }
        starling__chan__frame__pack(&fr, buf);
        pthread_mutex_lock(&cn->reg_mu);
        k->awaiting_state = true;
        k->deadline_ms = cn_mono_ms() + cn->b->cfg.cluster_claim_timeout;
        k->next = cn->claims;
        cn->claims = k;
        pthread_mutex_unlock(&cn->reg_mu);
        cluster_send(cn->c, k->prev_node, buf, n);
        free(buf);
        return;
    }
    claim_finish(k, 0);
}

static void claim_done(void *ud, int status, const struct fsm_batch_result *res, uint64_t leader)
{
    (void)leader;
    struct cl_claim *k = ud;
    struct cluster_node *cn = k->cn;
    uint64_t now = cn_mono_ms();
    if (status == 0 && res && res->n == 1) {
        int r = res->results[0];
        if (r == FSM_OK || r == FSM_NOOP) {
            if (fsm_visible(cn->fsm) < res->index) {
                /* committed through the leader, not applied here yet: the
                 * local check of the owner must see it */
                pthread_mutex_lock(&cn->reg_mu);
                k->wait_index = res->index;
                k->next = cn->claims;
                cn->claims = k;
                pthread_mutex_unlock(&cn->reg_mu);
                return;
            }
            claim_won(k);
            return;
        }
        if (r == FSM_STALE_EPOCH && ++k->stale < CLAIM_MAX_STALE) {
            /* another claim won: read its epoch (once applied here) and claim
             * after it */
            if (fsm_visible(cn->fsm) < res->index) {
                pthread_mutex_lock(&cn->reg_mu);
                k->wait_index = res->index;
                k->then_propose = true;
                k->next = cn->claims;
                cn->claims = k;
                pthread_mutex_unlock(&cn->reg_mu);
                return;
            }
            claim_propose(k);
            return;
        }
        log_warn("cluster: the claim of '%s' failed (result %d)", k->id, r);
        claim_finish(k, REGISTRY_UNAVAILABLE);
        return;
    }
    if ((status == 0 || status == -EINPROGRESS || status == -ENOTCONN || status == -EAGAIN ||
         status == -ECONNABORTED) &&
        now + CLAIM_RETRY_MS < k->deadline_ms) {
        /* the entry may still commit (a leader that stops or steps down
         * after appending it answers so), or it committed with no result
         * (-EINPROGRESS: the leader, out of memory, applies it later or
         * could not send the results): the next attempt looks for it */
        k->maybe_epoch = k->epoch;
        pthread_mutex_lock(&cn->reg_mu);
        k->retry_at_ms = now + CLAIM_RETRY_MS;
        k->next = cn->claims;
        cn->claims = k;
        pthread_mutex_unlock(&cn->reg_mu);
        return;
    }
    log_warn("cluster: cannot claim '%s': %s", k->id,
             status == -ENOTCONN || status == -EAGAIN ? "no leader" : strerror(-status));
    claim_finish(k, REGISTRY_UNAVAILABLE);
}

static void claim_propose(struct cl_claim *k)
{
    struct cluster_node *cn = k->cn;
    uint64_t node = 0, epoch = 0;
    if (fsm_registry_get(cn->fsm, k->id, k->req.id_len, &node, &epoch) < 0)
        node = epoch = 0;
    if (k->maybe_epoch && node == cn->self && epoch == k->maybe_epoch) {
        /* an earlier attempt whose answer was lost (its leader stopped)
         * committed after all: this claim won, from the owner read then.
         * Claimed again, it would find itself the owner and start a new
         * session (session present 0; seen in rolling restarts when the
         * leader was the node stopped) */
        log_info("cluster: the claim of '%s' (%llu) had committed before it was made again", k->id,
                 (unsigned long long)epoch);
        k->epoch = epoch;
        k->maybe_epoch = 0;
        claim_won(k);
        return;
    }
    k->prev_node = node;
    k->prev_epoch = epoch;
    k->epoch = epoch + 1;
    struct cmd_batch *b = cmd_batch_new();
    /* a persistent session that comes here is stored in the claim's batch
     * before its client is answered (claim_on_worker, stage); one of this
     * node's own is stored already */
    bool stored = !k->req.clean_start && k->req.expiry != 0 && cn->b->store;
    int r = b ? cmd_session_claim_clean(b, k->id, k->req.id_len, cn->self, k->epoch,
                                        k->req.clean_start, stored)
              : -ENOMEM;
    size_t len;
    const void *e = r == 0 ? cmd_batch_data(b, &len) : NULL;
    r = e ? cluster_propose(cn->c, e, len, claim_done, k) : -ENOMEM;
    cmd_batch_free(b);
    if (r < 0)
        claim_finish(k, REGISTRY_UNAVAILABLE);
}

static void cr_claim(void *ud, const struct registry_claim *req, registry_done_fn done,
                     void *done_ud)
{
    struct cluster_node *cn = ud;
    /* id, then the user name, each NUL-terminated */
    size_t ulen = req->user ? strlen(req->user) + 1 : 0;
    struct cl_claim *k = calloc(1, sizeof(*k) + (size_t)req->id_len + 1 + ulen);
    if (!k || atomic_load(&cn->stopped)) {
        free(k);
        done(done_ud, REGISTRY_UNAVAILABLE, NULL);
        return;
    }
    k->cn = cn;
    k->req = *req;
    memcpy(k->id, req->id, req->id_len);
    k->req.id = k->id;
    if (req->user) {
        k->req.user = k->id + req->id_len + 1;
        memcpy(k->id + req->id_len + 1, req->user, ulen);
    }
    k->done = done;
    k->done_ud = done_ud;
    k->deadline_ms = cn_mono_ms() + cn->b->cfg.cluster_claim_timeout;
    claim_propose(k);
}

static void cr_release(void *ud, struct session *s, struct conn *c, struct session_will *will,
                       bool resumed, struct worker *cur)
{
    struct cluster_node *cn = ud;
    registry_local_release(cn->b, s, c, will, resumed, cur);
}

static void cr_tick(void *ud, uint64_t now_mono_ms)
{
    struct cluster_node *cn = ud;
    registry_local_tick(cn->b, now_mono_ms);
}

const struct registry_ops cluster_registry_ops = {
    .claim = cr_claim,
    .release = cr_release,
    .tick = cr_tick,
    .changed = cn_session_changed,
    .ended = cn_session_ended,
};

/* ---- the cluster node's thread: retries and deadlines ---- */

void cn_registry_poll(struct cluster_node *cn, uint64_t now)
{
    struct cl_claim *retry = NULL, *expired = NULL, *won = NULL;
    uint64_t applied = fsm_visible(cn->fsm);
    struct surrendered *ended = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cl_claim **pp = &cn->claims; *pp;) {
        struct cl_claim *k = *pp;
        if (k->wait_index) {
            if (k->wait_index <= applied) {
                *pp = k->next;
                k->wait_index = 0;
                k->next = won;
                won = k;
            } else {
                pp = &k->next;
            }
        } else if (!k->awaiting_state && k->retry_at_ms <= now) {
            *pp = k->next;
            k->next = retry;
            retry = k;
        } else if (k->awaiting_state && k->deadline_ms <= now) {
            *pp = k->next;
            k->next = expired;
            expired = k;
        } else {
            pp = &k->next;
        }
    }
    for (struct surrendered **pp = &cn->surrendered; *pp;) {
        struct surrendered *x = *pp;
        if (x->until_ms <= now) {
            *pp = x->next;
            x->next = ended;
            ended = x;
        } else {
            pp = &x->next;
        }
    }
    pthread_mutex_unlock(&cn->reg_mu);
    while (won) {
        struct cl_claim *k = won;
        won = k->next;
        if (k->then_propose) {
            k->then_propose = false;
            claim_propose(k);
        } else {
            claim_won(k);
        }
    }
    while (retry) {
        struct cl_claim *k = retry;
        retry = k->next;
        k->retry_at_ms = 0;
        claim_propose(k);
    }
    while (expired) {
        struct cl_claim *k = expired;
        expired = k->next;
        log_warn("cluster: no session state for '%s' from its old node: its record", k->id);
        claim_from_record(k);
    }
    while (ended) {
        struct surrendered *x = ended;
        ended = x->next;
        /* no request came (its claimant resumed it from the record, or gave
         * up waiting): what it holds goes to the current owner, also when
         * that is this node again (the client came back here and resumed
         * from the record: chaos seed 1454584382 lost 4 when this copy
         * ended with them) */
        uint64_t node = 0, epoch = 0;
        if (fsm_registry_get(cn->fsm, x->s->client_id, x->s->id_len, &node, &epoch) == 0 &&
            node != cn->self) {
            cn_moving_add(cn, x->s, node, epoch, true, true);
            if (x->stored && epoch == x->epoch)
                cn_moving_claim_stored(cn, x->s, node, epoch);
        } else if (node == cn->self) {
            cn_overtaken_add(cn, x->s, node, epoch);
        } else {
            session_end(cn->b, x->s);
            session_unref(x->s);
        }
        free(x);
    }
    held_poll(cn, now);
}

size_t cn_registry_surrendered(struct cluster_node *cn)
{
    size_t n = 0;
    for (struct surrendered *x = cn->surrendered; x; x = x->next)
        n++;
    return n;
}

bool cn_registry_surrendered_has(struct cluster_node *cn, const char *id, uint16_t len)
{
    for (struct surrendered *x = cn->surrendered; x; x = x->next)
        if (x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0)
            return true;
    return false;
}

struct session *cn_registry_surrendered_of(struct cluster_node *cn, const char *id, uint16_t len,
                                           uint64_t epoch)
{
    for (struct surrendered *x = cn->surrendered; x; x = x->next) {
        if (x->s->id_len != len || memcmp(x->s->client_id, id, len) != 0)
            continue;
        lock_acquire(&x->s->lock);
        bool of = session_claim_epoch(x->s) == epoch;
        lock_release(&x->s->lock);
        if (of)
            return session_ref(x->s);
    }
    return NULL;
}

size_t cn_registry_surrendered_routes(struct cluster_node *cn, struct cmd_batch *b)
{
    size_t n = 0;
    for (struct surrendered *x = cn->surrendered; x; x = x->next) {
        lock_acquire(&x->s->lock);
        n += cn_session_routes_add(cn, b, x->s);
        lock_release(&x->s->lock);
    }
    return n;
}

/* At stop (after the cluster stopped: no callback runs any more). */
void cn_registry_drain(struct cluster_node *cn)
{
    pthread_mutex_lock(&cn->reg_mu);
    struct cl_claim *k = cn->claims;
    cn->claims = NULL;
    struct surrendered *x = cn->surrendered;
    cn->surrendered = NULL;
    struct held_request *h = cn->held;
    cn->held = NULL;
    pthread_mutex_unlock(&cn->reg_mu);
    while (h) { /* unanswered: the claimant's wait ends on its own */
        struct held_request *next = h->next;
        free(h);
        h = next;
    }
    while (k) {
        struct cl_claim *next = k->next;
        claim_finish(k, REGISTRY_UNAVAILABLE);
        k = next;
    }
    while (x) {
        struct surrendered *next = x->next;
        session_unref(x->s); /* stays in the store: the new owner has it */
        free(x);
        x = next;
    }
}

/* ---- the old owner ---- */

/* How long a copy claimed away waits for its claimant's request:
 * cluster_claim_timeout and a second. Tests (debug builds only) may set
 * it with STARLING_TEST_SURRENDER_MS, so that it runs out while a claim
 * of this node still waits for another node's state
 * (tests/cluster/test_forward.py). */
static uint64_t surrender_wait_ms(const struct cluster_node *cn)
{
    return test_hook_u64("STARLING_TEST_SURRENDER_MS",
                         (uint64_t)cn->b->cfg.cluster_claim_timeout + 1000u);
}

/* The observer saw SessionClaim(id, node != self) applied (cluster thread). */
void cn_registry_claimed_elsewhere(struct cluster_node *cn, const char *id, uint16_t len,
                                   uint64_t node, uint64_t epoch, bool clean_start, bool stored)
{
    if (clean_start) {
        /* [MQTT-3.1.2-4] the claimant discards the session: it ends here */
        struct session *s = registry_local_surrender(cn->b, id, len, false);
        if (s) {
            log_info("cluster: the session of '%.*s' ends here: node %016llx claimed it with "
                     "clean start (claim %llu)",
                     (int)len, id, (unsigned long long)node, (unsigned long long)epoch);
            session_end(cn->b, s);
            session_unref(s);
        }
        return;
    }
    if (!atomic_load(&cn->loaded))
        return; /* the load goes on: the start-up pass sends the stored copy on, and reads
                 * the claim's stored flag from the registry */
    if (!atomic_load(&cn->restart_done)) {
        /* catching up after a start: a claim made while this node was
         * down, whose claimant went on without this node's answer; what the
         * stored session holds follows it now */
        struct session *s = registry_local_surrender(cn->b, id, len, true);
        if (s) {
            log_info("cluster: the session of '%.*s' was claimed by node %016llx while this node "
                     "was down (claim %llu): its stored copy follows it",
                     (int)len, id, (unsigned long long)node, (unsigned long long)epoch);
            cn_moving_add(cn, s, node, epoch, true, true);
            if (stored)
                cn_moving_claim_stored(cn, s, node, epoch);
        }
        return;
    }
    pthread_mutex_lock(&cn->reg_mu);
    struct session *s = registry_local_surrender(cn->b, id, len, true);
    if (s)
        log_info("cluster: the session of '%.*s' was claimed by node %016llx (claim %llu): it "
                 "leaves this node",
                 (int)len, id, (unsigned long long)node, (unsigned long long)epoch);
    if (s) {
        struct surrendered *x = calloc(1, sizeof(*x));
        if (x) {
            x->s = s;
            /* a claimant waits for the state cluster_claim_timeout at most */
            x->until_ms = cn_mono_ms() + surrender_wait_ms(cn);
            x->epoch = epoch;
            x->stored = stored;
            x->next = cn->surrendered;
            cn->surrendered = x;
            s = NULL;
        }
    }
    pthread_mutex_unlock(&cn->reg_mu);
    if (s) {
        session_end(cn->b, s);
        session_unref(s);
    }
}

void cn_msg_fill(Starling__Chan__SessionMessage *m, const struct qmsg *q)
{
    starling__chan__session_message__init(m);
    m->state = q->state;
    if (q->state != MSG_STATE_QUEUED && q->pid) {
        /* sent already: resent (or released) with its
         * packet id [MQTT-3.1.1 4.4.0-1, MQTT-5.0 4.4.0-1] */
        m->has_packet_id = true;
        m->packet_id = q->pid;
    }
    m->qos = q->qos;
    m->has_retain = true;
    m->retain = q->retain;
    m->n_sub_ids = q->n_ids;
    m->sub_ids = q->n_ids > 1 ? q->ids.many : (uint32_t *)&q->ids.one;
    m->topic.data = (uint8_t *)msg_topic(q->m);
    m->topic.len = q->m->topic_len;
    m->payload.data = (uint8_t *)msg_payload(q->m);
    m->payload.len = q->m->payload_len;
    m->msg_qos = q->m->qos;
    if (q->m->props_len) {
        m->has_properties = true;
        m->properties.data = (uint8_t *)msg_props(q->m);
        m->properties.len = q->m->props_len;
    }
    if (q->m->expiry_at) {
        m->has_expiry_at_ms = true;
        m->expiry_at_ms = q->m->expiry_at;
    }
    if (q->m->id_node && q->m->id_seq) {
        m->has_origin = m->has_pub_id = true;
        m->origin = q->m->id_node;
        m->pub_id = q->m->id_seq;
    }
}

/* Whether q holds no exchange with its session's client that this node
 * could hand on: queued, or restored from the store (or from a
 * SessionState) into the queue, which carries no packet id
 * (session_restore_msg: its state says only that it may have been sent
 * before; cn_msg_fill gives it none). The
 * owners rule leaves such a message out of a state as it does a queued
 * one. Before, a restored one was handed on: a stored copy that took what
 * a later owner got directly (its claim taken away while its node was
 * stopped), restarted and asked for its state, gave all of it to the
 * claimant, which delivered it again (chaos seed 1188520366 with --more:
 * 655 QoS 2 duplicates, DUP 1, 2026-12-03). */
static bool msg_unsent(const struct qmsg *q)
{
    return q->state == MSG_STATE_QUEUED || q->pid == 0;
}

/* The messages of s that went on in its state (`sent`) are the new owner's
 * to deliver: their identities leave s->seen (the state took them along),
 * so that this copy, folded into a later claim of this node that resumed
 * from the record, does not make that claim's session take them for had
 * when the new owner hands them back. Kept, the fold dropped them ("had
 * it already: not again"; a late exchange: "had it (exchange)") while the
 * client held the PUBLISH awaiting a PUBREL that never came (chaos seed
 * 10800 with --resend --more: 1 QoS 2 message lost at 3 subscribers).
 * One past PUBREC keeps its identity: its client has it. s->lock held. */
static void seen_forget_handed(struct session *s, const struct qmsg *sent)
{
    for (const struct qmsg *q = sent; s->seen && q; q = q->next)
        if (q->state != MSG_STATE_WAIT_PUBCOMP && q->m->id_node && q->m->id_seq)
            msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
}

/* A message q that may have been sent and carries no packet id (restored
 * from the store, or from a state, and not sent since: session_restore_msg)
 * goes in the state with the packet id its sequence number gives
 * (persist_pid_of): the one it was sent with before, if it was. The new
 * owner numbers it so (pid_seq) and sends it with that id, DUP 1, as this
 * node would have after its restart; a client that delivers a QoS 2
 * message at its PUBLISH and still holds that id does not deliver it again
 * [MQTT-5.0 4.3.3, MQTT-3.1.1 4.3.3]. Before, the new owner gave it a new
 * id. Its state says queued: the new owner restores every message of a
 * state short of PUBREC as a possible re-delivery anyway, and a state that
 * comes after its claim went on is taken as late messages, where a packet
 * id with a sent state names an exchange the sender began with the client
 * (late_is_exchange), which this one is not known to be; there a queued
 * one with a packet id is taken for restored (late_is_restored,
 * cluster_session.c) and sent with it too. */
static void state_restored_pid(Starling__Chan__SessionMessage *m, const struct qmsg *q)
{
    if (q->qos > 0 && q->state != MSG_STATE_QUEUED && q->pid == 0) {
        m->state = MSG_STATE_QUEUED;
        m->has_packet_id = true;
        m->packet_id = persist_pid_of(q->seq);
    }
}

/* The state of s (NULL: not found) to `to`, claimant of `epoch`. Left out:
 * s's queued (or restored: msg_unsent) messages routed at or past `direct`
 * (not 0), which reached a later owner than s's claim directly (cn_copy_owners_index), or that
 * owner's own publishes its session got locally (s->direct_local), and their
 * identities, which the claimant would otherwise take for had when that
 * owner passes them on. Those sent to s's client keep their exchange. */
static void state_send(struct cluster_node *cn, uint64_t to, const ProtobufCBinaryData *id,
                       uint64_t epoch, struct session *s, uint64_t direct, bool none_kept)
{
    Starling__Chan__SessionState st = STARLING__CHAN__SESSION_STATE__INIT;
    st.client_id = *id;
    st.epoch = epoch;
    st.has_found = true;
    st.found = s != NULL;
    st.has_none_kept = st.none_kept = !s && none_kept;
    Starling__Chan__SessionSubscription *subs = NULL, **subp = NULL;
    Starling__Chan__SessionMessage *msgs = NULL, **msgp = NULL;
    uint32_t *q2 = NULL, *told = NULL, *released = NULL;
    Starling__Chan__SeenRange *seen = NULL, **seenp = NULL;
    size_t left_out = 0;
    if (s) {
        lock_acquire(&s->lock);
        for (struct qmsg *q = direct ? s->queue.head : NULL; q; q = q->next)
            if (msg_unsent(q) && session_owner_had(&s->direct_local, q->m, direct)) {
                left_out++;
                if (s->seen && q->m->id_node && q->m->id_seq)
                    msg_seen_del(s->seen, q->m->id_node, q->m->id_seq);
            }
        size_t n_seen = s->seen ? msg_seen_ranges(s->seen) : 0;
        if (n_seen && (seen = calloc(n_seen, sizeof(*seen))) &&
            (seenp = calloc(n_seen, sizeof(*seenp)))) {
            for (size_t i = 0; i < n_seen; i++) {
                starling__chan__seen_range__init(&seen[i]);
                msg_seen_range(s->seen, i, &seen[i].node, &seen[i].lo, &seen[i].hi);
                seenp[i] = &seen[i];
            }
            st.n_seen = n_seen;
            st.seen = seenp;
        }
        st.has_version = st.has_expiry_interval = true;
        st.version = s->version;
        st.expiry_interval = s->expiry_interval;
        st.username = s->user; /* NULL: absent */
        st.has_next_packet_id = true;
        st.next_packet_id = persist_pid_of(s->next_seq);
        size_t n_msgs = s->inflight.len + s->queue.len;
        subs = calloc(s->n_subs + 1, sizeof(*subs));
        subp = calloc(s->n_subs + 1, sizeof(*subp));
        msgs = calloc(n_msgs + 1, sizeof(*msgs));
        msgp = calloc(n_msgs + 1, sizeof(*msgp));
        q2 = calloc(s->n_qos2_in + 1, sizeof(*q2));
        if (subs && subp && msgs && msgp && q2) {
            for (uint32_t i = 0; i < s->n_subs; i++) {
                starling__chan__session_subscription__init(&subs[i]);
                subs[i].filter.data = (uint8_t *)s->subs[i].filter;
                subs[i].filter.len = s->subs[i].len;
                subs[i].options = s->subs[i].options;
                subs[i].has_sub_id = true;
                subs[i].sub_id = s->subs[i].sub_id;
                subp[i] = &subs[i];
            }
            st.n_subs = s->n_subs;
            st.subs = subp;
            size_t k = 0;
            /* in delivery order: what was sent first, then the queue */
            const struct qlist *lists[2] = {&s->inflight, &s->queue};
            for (int l = 0; l < 2; l++)
                for (struct qmsg *q = lists[l]->head; q && k < n_msgs; q = q->next) {
                    if (msg_unsent(q) && session_owner_had(&s->direct_local, q->m, direct))
                        continue;
                    Starling__Chan__SessionMessage *m = &msgs[k];
                    cn_msg_fill(m, q);
                    state_restored_pid(m, q);
                    msgp[k++] = m;
                }
            st.n_msgs = k;
            st.msgs = msgp;
            for (uint32_t i = 0; i < s->n_qos2_in; i++)
                q2[i] = s->qos2_in[i];
            st.n_qos2_received = s->n_qos2_in;
            st.qos2_received = q2;
            /* whose they are: this copy's claim */
            st.qos2_epoch = session_claim_epoch(s);
            st.has_qos2_epoch = st.qos2_epoch != 0;
        }
        /* resumed from its record without its old owner's QoS 2 ids: the
         * next owner waits for them as this one would (handle_publish_park) */
        uint64_t now = broker_now_mono_ms();
        if (session_blind(s, now)) {
            if (s->told && (told = calloc(s->n_told + 1, sizeof(*told)))) {
                for (uint32_t i = 0; i < s->n_told; i++)
                    told[i] = s->told_ids[i];
                st.n_told_qos2 = s->n_told;
                st.told_qos2 = told;
                st.has_told = st.told = true;
            } else if (!s->told &&
                       (released = calloc(s->n_blind_released + 1, sizeof(*released)))) {
                for (uint32_t i = 0; i < s->n_blind_released; i++)
                    released[i] = s->blind_released[i];
                st.n_released_qos2 = s->n_blind_released;
                st.released_qos2 = released;
            }
            /* the wait goes on there only with what it knows (out of
             * memory, not: without the ids released here, a later telling
             * could take a new message for one the old owner had, lost) */
            if (told || released) {
                st.has_blind_node = st.has_blind_left_ms = true;
                st.blind_node = s->blind_node;
                st.blind_left_ms = (uint32_t)(s->blind_until - now);
                st.has_blind_epoch = s->blind_epoch != 0;
                st.blind_epoch = s->blind_epoch;
            }
        }
    }
    Starling__Chan__Frame fr = STARLING__CHAN__FRAME__INIT;
    fr.frame_case = STARLING__CHAN__FRAME__FRAME_SESSION_STATE;
    fr.session_state = &st;
    int r;
    struct store_batch *bt = NULL;
    struct qmsg *sent = NULL;
    if (s) {
        /* Sequenced like a QoS 1/2 forward (node/cluster_fwd.h): into the
         * outbox for `to` until it acknowledges that it committed the
         * session, in the same store batch that takes these messages out of
         * this node's stored copy, so that they are on this node's disk or
         * on the receiver's at every moment (docs/cluster.md "Moved
         * messages that must arrive"). Before, the frame was sent at most
         * once and the copy dropped them: a channel connection that broke
         * with it queued, or a receiver killed before its commit, lost
         * them. */
        size_t all = st.n_msgs;
        st.n_msgs = cn_msgs_chunk(st.msgs, all);
        Starling__Chan__SessionMessages rest = STARLING__CHAN__SESSION_MESSAGES__INIT;
        if (st.n_msgs < all) {
            /* the rest follows in SessionMessages frames of a bounded size
             * (a frame above the channel queue's bound would never be
             * taken), right behind it in the same sequence; what the copy
             * got (seen) comes with the last, after the messages (merged
             * first, it would drop them at the new owner as had) */
            rest.client_id = *id;
            rest.epoch = epoch;
            rest.msgs = st.msgs + st.n_msgs;
            rest.n_msgs = all - st.n_msgs;
            rest.n_seen = st.n_seen;
            rest.seen = st.seen;
            st.n_seen = 0;
            st.has_more = st.more = true;
        }
        r = cluster_fwd_send_frame(cn->fwd, to, &fr, &bt);
        if (r >= 0 && rest.n_msgs) {
            int r2 = cn_send_msgs_chunked(cn, to, &rest, &bt);
            r = r2 < 0 ? r2 : r;
        }
        /* what it held is in the frames: whatever arrives from now on is a
         * late message (cluster_session.c) */
        if (r >= 0 && st.msgs) {
            sent = cn_session_take_msgs(s);
            for (struct qmsg *q = sent; r == 1 && q; q = q->next)
                persist_msg_del(cn->b, &bt, s, q);
            seen_forget_handed(s, sent);
        }
        lock_release(&s->lock);
        persist_submit(cn->b, &bt, NULL, NULL);
    } else {
        r = cn_send_frame(cn, to, &fr);
    }
    while (sent) {
        struct qmsg *next = sent->next;
        qmsg_free(sent);
        sent = next;
    }
    if (r < 0)
        log_warn("cluster: the session of '%.*s' could not be sent: %s", (int)id->len,
                 (const char *)id->data, strerror(-r));
    else if (left_out)
        log_info("cluster: %zu message(s) of '%.*s' left out of its state: routed from index "
                 "%llu on, they reached a later owner than this copy's claim directly",
                 left_out, (int)id->len, (const char *)id->data, (unsigned long long)direct);
    free(subs);
    free(subp);
    free(msgs);
    free(msgp);
    free(q2);
    free(told);
    free(released);
    free(seen);
    free(seenp);
}

/* Whether a claim of id made here before claim `epoch` is still in
 * progress: in cn->claims (awaiting its state or its entry's apply), or on
 * its worker with the session it brought (its routes' wait, its store's
 * commit before it is in the table). reg_mu held. */
static bool claim_in_progress(struct cluster_node *cn, const char *id, uint16_t len, uint64_t epoch)
{
    for (struct cl_claim *k = cn->claims; k; k = k->next)
        if (k->req.id_len == len && memcmp(k->id, id, len) == 0 && k->epoch < epoch)
            return true;
    return cn_incoming_unsettled(cn, id, len, epoch);
}

/* Answer the request of `from` (claim `epoch`) for the session of id;
 * `may_hold`: it may wait for a claim of id in progress here. Any thread
 * but a worker's. */
static void request_answer(struct cluster_node *cn, uint64_t from, const ProtobufCBinaryData *cid,
                           uint64_t req_epoch, bool may_hold)
{
    const char *id = (const char *)cid->data;
    uint16_t len = (uint16_t)cid->len;
    struct session *s = NULL;
    uint64_t owner = 0, epoch = 0;
    if (!atomic_load(&cn->loaded)) {
        /* The store is still loading (the channel is up before it): a
         * stored session is in the table already, its queued messages not
         * yet. Handed on then, it went with none, and the load deleted its
         * rows as those of no session (chaos seed 1188520366 --more: 201
         * lost). "Not found": the claimant resumes from the record, and the
         * start-up pass sends the stored copy after it (restart_pass). */
        log_info("cluster: the session '%.*s' was asked for before this node loaded its "
                 "store: not found here, its stored copy follows the claim",
                 (int)len, id);
        state_send(cn, from, cid, req_epoch, NULL, 0, false);
        return;
    }
    if (fsm_registry_get(cn->fsm, id, len, &owner, &epoch) == 0 &&
        (epoch > req_epoch || (epoch == req_epoch && owner != from))) {
        /* a later claim won since (or the requester is not the owner):
         * the session is not the requester's to take */
        state_send(cn, from, cid, req_epoch, NULL, 0, false);
        return;
    }
    pthread_mutex_lock(&cn->reg_mu);
    /* A claim of id made here before the requester's holds the session
     * it brought (its old owner's state) until it ends, overtaken by the
     * requester's: out of the table, it is in no list below, and the
     * answer was "none" (docs/cluster.md, item 109 of the afternoon's
     * chaos runs). The requester then resumed from the record and got
     * what that session held only as late messages once this claim had
     * ended (6 s later), after what reached it directly since (out of
     * order), or after this node's restart when it was SIGKILLed
     * meanwhile. The answer waits until that claim ended (its session is
     * surrendered, or moving out to the requester: found below), at most
     * as long as the requester waits for it. */
    if (may_hold && claim_in_progress(cn, id, len, req_epoch)) {
        struct held_request *h = calloc(1, sizeof(*h) + len);
        if (h) {
            h->from = from;
            h->epoch = req_epoch;
            h->until_ms = cn_mono_ms() + (uint64_t)cn->b->cfg.cluster_claim_timeout;
            h->len = len;
            memcpy(h->id, id, len);
            h->next = cn->held;
            cn->held = h;
            pthread_mutex_unlock(&cn->reg_mu);
            log_info("cluster: the request of %016llx for '%.*s' (claim %llu) waits for this "
                     "node's claim of it in progress",
                     (unsigned long long)from, (int)len, id, (unsigned long long)req_epoch);
            return;
        }
    }
    for (struct surrendered **pp = &cn->surrendered; *pp; pp = &(*pp)->next) {
        struct surrendered *x = *pp;
        if (x->s->id_len == len && memcmp(x->s->client_id, id, len) == 0) {
            *pp = x->next;
            s = x->s;
            free(x);
            break;
        }
    }
    if (!s) /* the request came before this node applied the claim */
        s = registry_local_surrender(cn->b, id, len, true);
    bool known = false; /* s's claim known (in memory), or s found claimed away */
    if (s) {
        lock_acquire(&s->lock);
        known = s->epoch != 0;
        /* A stored session asked for before the start-up pass named it
         * (restart_pass): named here as that pass does, by the registry
         * this node applied. It names this node at the copy's claim (a
         * node applies its claim before it serves the session, and what it
         * applied stays applied across a restart), or another node, whose
         * claim took it away. Before, such a copy went unjudged: its state
         * and its late messages carried everything, and what its claimant
         * had got directly came again (test_restarted_copy_asked_for_its_
         * state_leaves_out_what_its_claimant_had, 20 of 20 QoS 2
         * duplicates in 6 of 78 runs under load: the request came 0.7 s
         * before the pass). */
        bool stand_in = false;
        if (!known && owner != 0) {
            if (owner == cn->self) {
                s->epoch = epoch;
                stand_in = true;
            }
            known = true;
        }
        lock_release(&s->lock);
        if (stand_in) /* a copy of an older claim: the wait it hands on */
            cn_session_stand_in(cn, s, epoch, false);
    }
    if (!s) { /* a stored copy that the start-up pass found claimed away */
        s = cn_moving_take(cn, id, len, from, req_epoch);
        known = s != NULL;
        /* The claim before the requester's was this node's (claims of an
         * id follow one another, claim_propose, and the requester asked
         * the registry's owner): a copy of an older claim stands in for
         * that one, lost in a stop. It was claimed away as this node
         * caught up, before its start-up pass named it (the pass does
         * otherwise, restart_pass), and hands on its wait for the owner
         * since, as the stand-in does (test_forward.py::test_a_resend_to_
         * a_stored_copy_standing_in_for_a_lost_claim_waits_for_the_owner_
         * before[before_pass], 1 of 2 runs under load: the request found
         * the copy moving out). */
        if (s) {
            lock_acquire(&s->lock);
            uint64_t own = session_claim_epoch(s);
            lock_release(&s->lock);
            if (own && own + 1 < req_epoch)
                cn_session_stand_in(cn, s, req_epoch - 1, false);
        }
    }
    /* none, the store loaded, no claim of id running here (a held request
     * answered at its time's end, or not held for want of memory): this
     * node's claims of id kept nothing (SessionState.none_kept). Not
     * without a store, or with one that may lose a commit in a host's
     * crash (sync other than always), and not when its load purged
     * expired sessions (one of them may have been id's, its exchanges
     * completed here) */
    struct broker *b = cn->b;
    bool none_kept = !s && b->store && b->cfg.sync == SYNC_ALWAYS && b->load_expired == 0 &&
                     !claim_in_progress(cn, id, len, req_epoch);
    /* in no list until cn_moving_add: a stop's hand-over counts it here.
     * Before, a SIGTERMed node whose hand-over looked in that moment found
     * nothing left, stopped, and the state never went out: the claimant
     * resumed the session from its record after cluster_claim_timeout
     * (test_faults.py::test_sigterm_hands_a_persistent_session_over_whole,
     * once in a whole make test) */
    cn->answering++;
    pthread_mutex_unlock(&cn->reg_mu);
    (void)cn_test_delay("STARLING_TEST_ANSWER_DELAY_MS");
    /* A copy of an older claim than the last owner's before the claimant
     * (a stored one that the start-up pass sent on, and whose claimant's
     * request, held in the channel while this node was down, came after
     * all): what was routed once a later owner had its routes reached that
     * one directly, and is not handed on (as the copy's late messages
     * leave it out: cluster_session.c, owner_routed_index). The session
     * the registry named this node's (its claim the last before this one)
     * is not concerned: no owner came after it. Nor a stored session
     * whose id the registry here does not name at all (its claim not
     * known: a stored epoch lower than its last claim would leave out
     * what came to this node alone): everything goes, at least once. */
    uint64_t direct = known ? cn_copy_owners_index(cn, s, from) : 0;
    state_send(cn, from, cid, req_epoch, s, direct, none_kept);
    if (s) /* what still arrives for it follows it (cluster_session.c) */
        cn_moving_add(cn, s, from, req_epoch, false, known);
    pthread_mutex_lock(&cn->reg_mu);
    cn->answering--;
    pthread_mutex_unlock(&cn->reg_mu);
}

/* A SessionRequest from the node that won the claim (cluster thread). */
void cn_registry_on_request(struct cluster_node *cn, uint64_t from,
                            const Starling__Chan__SessionRequest *r)
{
    if (r->client_id.len == 0 || r->client_id.len > 65535)
        return;
    request_answer(cn, from, &r->client_id, r->epoch, true);
}

/* The held requests whose claim here ended, or whose time is up, are
 * answered (the glue's thread). */
static void held_poll(struct cluster_node *cn, uint64_t now)
{
    struct held_request *ready = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct held_request **pp = &cn->held; *pp;) {
        struct held_request *h = *pp;
        if (h->until_ms <= now || !claim_in_progress(cn, h->id, h->len, h->epoch)) {
            *pp = h->next;
            h->next = ready;
            ready = h;
        } else {
            pp = &h->next;
        }
    }
    pthread_mutex_unlock(&cn->reg_mu);
    while (ready) {
        struct held_request *h = ready;
        ready = h->next;
        ProtobufCBinaryData cid = {h->len, (uint8_t *)h->id};
        request_answer(cn, h->from, &cid, h->epoch, false);
        free(h);
    }
}

/* The first sequence number from next on whose packet id (persist_pid_of)
 * is pid: a message the old owner had sent keeps its packet id here, and
 * what follows is numbered after it. pid 0 (never sent): next. */
static uint64_t pid_seq(uint64_t next, uint32_t pid)
{
    if (pid == 0 || pid > 65535)
        return next;
    return persist_seq_of_pid(next, (uint16_t)pid);
}

bool cn_claim_pending(struct cluster_node *cn, const char *id, uint16_t len, uint64_t from)
{
    bool found = false;
    struct cl_claim *k = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cl_claim **pp = &cn->claims; *pp; pp = &(*pp)->next) {
        struct cl_claim *x = *pp;
        if (x->req.id_len != len || memcmp(x->id, id, len) != 0)
            continue;
        found = true;
        if (x->awaiting_state && x->prev_node == from) {
            *pp = x->next;
            k = x;
        }
        break;
    }
    pthread_mutex_unlock(&cn->reg_mu);
    /* Late messages from the node whose state the claim awaits: that node
     * moved its copy here on its own (cn_moving_add, e.g. its surrendered
     * copy, whose claimant's request had not come), and sends its state (or
     * "not found") after them. Left out of the wait, they found no session,
     * a session rebuilt from the record beside the claim took them, and
     * the claim's own session replaced it in the table (registry_local_stage):
     * lost (chaos seed 1093382011 --more, 54). Waited for, they would hold
     * the state back until the claim's deadline. The claim resumes from the
     * record now; the frame goes into its session at once (the caller,
     * unrouted_session), and the state after it as a late one. */
    if (k) {
        log_info("cluster: late messages of '%s' came from %016llx before its state, which "
                 "they would hold back: the claim resumes from the record",
                 k->id, (unsigned long long)from);
        claim_from_record(k);
    }
    return found;
}

/* The old owner's answer (cluster thread). */
/* What is left of an old owner's wait for its predecessor's QoS 2 ids
 * (SessionState.blind_left_ms), at most this node's CN_RESEND_KNOW_MS */
static uint64_t wait_left(const struct cluster_node *cn, uint32_t left_ms)
{
    return left_ms < CN_RESEND_KNOW_MS(cn) ? left_ms : CN_RESEND_KNOW_MS(cn);
}

void cn_registry_on_state(struct cluster_node *cn, uint64_t from,
                          const Starling__Chan__SessionState *st, const struct cluster_fwd_seq *sq)
{
    struct cl_claim *k = NULL;
    pthread_mutex_lock(&cn->reg_mu);
    for (struct cl_claim **pp = &cn->claims; *pp; pp = &(*pp)->next) {
        struct cl_claim *x = *pp;
        if (x->awaiting_state && x->epoch == st->epoch && x->req.id_len == st->client_id.len &&
            memcmp(x->id, st->client_id.data, st->client_id.len) == 0) {
            *pp = x->next;
            k = x;
            break;
        }
    }
    pthread_mutex_unlock(&cn->reg_mu);
    if (!k) {
        /* late: the claim went on without it (what the old copy held
         * follows as late messages) */
        if (st->found)
            cn_session_on_late_state(cn, from, st, sq);
        else
            cn_seq_applied(cn, sq);
        return;
    }
    if (!st->found) {
        /* the old owner has no copy (it restarted and has not loaded its
         * sessions yet, or lost them): resume from the record, as when it
         * does not answer (without a record, a new session); a copy it
         * loads later follows as late messages (cluster_session.c) */
        log_info("cluster: %016llx has no session '%s' to hand over%s",
                 (unsigned long long)k->prev_node, k->id,
                 st->has_none_kept && st->none_kept ? " (it kept none)" : "");
        k->prev_none_kept = st->has_none_kept && st->none_kept && from == k->prev_node;
        cn_seq_applied(cn, sq);
        claim_from_record(k);
        return;
    }
    /* The old owner waited for this node's QoS 2 ids (it resumed the
     * session from its record while this node was taken for dead): they
     * are here, with this node's old copy still moving out, or told with
     * the state if that copy told them already. Before, a wait on this
     * node was dropped, and the client's resend here of a message that
     * copy had taken was taken for new (chaos seeds 9901 and 9903 with
     * --resend --more: 3 and 6 QoS 2 duplicates with DUP 0;
     * test_forward.py::test_a_qos2_id_taken_by_a_copy_claimed_back_to_its_node_is_a_duplicate) */
    uint32_t n_own = 0;
    struct cn_wait_on w;
    uint16_t *own_ids = cn_waited_here_ids(cn, from, st, k->id, k->req.id_len, &n_own, &w);
    struct session *s = session_new(k->id, k->req.id_len);
    if (!s) {
        free(own_ids);
        free(w.released);
        cluster_fwd_in_defer(cn->fwd, sq); /* sent again: a late state then */
        claim_finish(k, REGISTRY_UNAVAILABLE);
        return;
    }
    uint32_t *ask_released = NULL;
    size_t n_ask_released = 0;
    lock_acquire(&s->lock);
    /* each message once, whatever path it comes by (and what the old copy
     * knew it had got) */
    session_seen_start(s, broker_now_mono_ms());
    for (size_t i = 0; s->seen && i < st->n_seen; i++)
        if (st->seen[i]->lo <= st->seen[i]->hi)
            msg_seen_add_range(s->seen, st->seen[i]->node, st->seen[i]->lo, st->seen[i]->hi);
    s->version = (uint8_t)st->version;
    s->expiry_interval = st->expiry_interval;
    if (st->username) /* the ACL of its deliveries until its client is attached */
        s->user = strdup(st->username);
    for (size_t i = 0; i < st->n_subs; i++) {
        const Starling__Chan__SessionSubscription *sub = st->subs[i];
        if (sub->filter.len == 0 || sub->filter.len > 65535 ||
            !topic_filter_valid((const char *)sub->filter.data, sub->filter.len))
            continue;
        session_sub_set(s, (const char *)sub->filter.data, (uint16_t)sub->filter.len,
                        (uint8_t)sub->options, sub->sub_id);
    }
    for (size_t i = 0; i < st->n_msgs; i++) {
        const Starling__Chan__SessionMessage *sm = st->msgs[i];
        if (sm->topic.len == 0 || sm->topic.len > 65535)
            continue;
        struct msg *m = msg_new(
            sm->topic.data, (uint16_t)sm->topic.len, sm->payload.data, (uint32_t)sm->payload.len,
            sm->has_properties ? sm->properties.data : NULL,
            sm->has_properties ? (uint32_t)sm->properties.len : 0,
            (uint8_t)(sm->msg_qos > 2 ? 2 : sm->msg_qos), sm->retain, sm->expiry_at_ms, NULL);
        if (!m)
            continue;
        if (sm->has_origin && sm->has_pub_id && sm->origin && sm->pub_id) {
            m->id_node = sm->origin;
            m->id_seq = sm->pub_id;
            if (s->seen) /* a copy that comes directly too is not taken again */
                msg_seen_add(s->seen, m->id_node, m->id_seq);
        }
        struct qmsg *q = qmsg_new(m, (uint8_t)(sm->qos > 2 ? 2 : sm->qos), sm->retain, sm->sub_ids,
                                  (uint16_t)(sm->n_sub_ids > 65535 ? 0 : sm->n_sub_ids));
        msg_unref(m);
        if (!q)
            continue;
        q->seq = pid_seq(s->next_seq, sm->has_packet_id ? sm->packet_id : 0);
        uint8_t state =
            sm->state == MSG_STATE_WAIT_PUBCOMP ? MSG_STATE_WAIT_PUBCOMP : MSG_STATE_QUEUED;
        session_restore_msg(s, q, state);
        q->stored = false; /* not in this node's store */
    }
    /* Its packet ids go on from the old copy's next one (the messages it
     * had sent keep theirs, before it). Before, a session whose state
     * carried no packet id (nothing in flight: a copy resumed from its
     * record, which numbers away from the older copies' ids, and had no
     * client yet) started at 1 here, among the older
     * copy's ids; that copy's unfinished QoS 2 exchange, coming later, was
     * completed with a PUBREL for an id the client had used since for
     * another message: the message it held awaiting PUBREL was lost (chaos
     * seed 501923417). */
    if (st->has_next_packet_id && st->next_packet_id >= 1 && st->next_packet_id <= 65535)
        s->next_seq = persist_seq_of_pid(s->next_seq, (uint16_t)st->next_packet_id);
    for (size_t i = 0; i < st->n_qos2_received; i++)
        session_qos2_add(s, (uint16_t)st->qos2_received[i]);
    /* the old owner's own wait for its predecessor's QoS 2 ids, or the ids
     * it learnt and did not use yet (handle_publish_park) */
    if (st->has_blind_node && st->blind_node && st->blind_node != cn->self &&
        st->has_blind_left_ms && st->blind_left_ms) {
        s->blind_node = st->blind_node;
        s->blind_epoch = st->has_blind_epoch ? st->blind_epoch : 0;
        s->blind_until = broker_now_mono_ms() + wait_left(cn, st->blind_left_ms);
        if (st->has_told && st->told &&
            (s->told_ids = malloc((st->n_told_qos2 + 1) * sizeof(*s->told_ids)))) {
            for (size_t i = 0; i < st->n_told_qos2; i++)
                if (st->told_qos2[i] >= 1 && st->told_qos2[i] <= 65535)
                    s->told_ids[s->n_told++] = (uint16_t)st->told_qos2[i];
            s->told = true;
        } else if (!(st->has_told && st->told)) {
            for (size_t i = 0; i < st->n_released_qos2; i++)
                if (st->released_qos2[i] >= 1 && st->released_qos2[i] <= 65535)
                    session_blind_released(s, (uint16_t)st->released_qos2[i], broker_now_mono_ms());
        }
    } else if (own_ids && w.node) {
        /* this node's copy that had them still waited for another node's
         * ids itself: so does s, for those, asking that node with the ids
         * known (cn_wait_ask, below). Before, this node's copy's own ids
         * were taken for all, and the client's resend of a message the
         * other node's copy had taken was taken for new (chaos seed 10204
         * with --resend --more, docs/cluster.md) */
        if (!(ask_released = cn_wait_redirect(cn, s, st, &w, &n_ask_released)))
            session_wait_end(s); /* out of memory: no wait */
    } else if (own_ids) {
        /* as ids told by this node: they answer a resend (DUP 1) within
         * what is left of the wait, each once (handle_publish_park) */
        s->blind_node = cn->self;
        s->blind_epoch = 0;
        s->blind_until = broker_now_mono_ms() + wait_left(cn, st->blind_left_ms);
        s->told_ids = own_ids;
        s->n_told = n_own;
        s->told = true;
        own_ids = NULL;
        log_info("cluster: the session of '%s' came from a node that waited for this node's "
                 "QoS 2 ids: %u of them answer its client's resends here",
                 k->id, (unsigned)n_own);
    }
    /* On this node's disk before the old owner lets go of them: the
     * session with its messages, in the batch that records the frame as
     * applied (acknowledged once committed). The registry gives the
     * session to this node already (the claim committed before it asked),
     * so after a SIGKILL it comes back with this node's sessions; its
     * claim's own write (registry_local_claim) writes the same again. The
     * record names the claim (the session learns its epoch later,
     * claim_route_incoming): a restart before that write tells this copy
     * from an older one of this node standing in for a later claim lost
     * in a stop (cn_session_stand_in). Before, it named none ("stored 0"),
     * and such an older copy was not recognised. */
    struct store_batch *bt = NULL;
    if (sq && persist_wanted(cn->b, s)) {
        persist_session_put_claim(cn->b, &bt, s, k->epoch);
        persist_session_contents(cn->b, &bt, s);
    }
    lock_release(&s->lock);
    if (ask_released)
        cn_wait_ask(cn, &w, k->id, k->req.id_len, k->epoch, NULL, 0, own_ids, n_own, ask_released,
                    n_ask_released, &bt);
    free(ask_released);
    free(w.released);
    free(own_ids);
    cluster_fwd_in_stage(cn->fwd, sq, &bt);
    persist_submit(cn->b, &bt, NULL, NULL);
    log_info("cluster: the session of '%s' moved here: %zu subscription(s), %zu message(s)", k->id,
             st->n_subs, st->n_msgs);
    k->incoming = s;
    cn_incoming_add(cn, s, k->epoch);
    claim_finish(k, 0);
}
