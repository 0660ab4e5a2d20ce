/*
 * registry.h - the session registry: which session a client id names, and
 * the whole life of a session: claimed at CONNECT (found, taken over or
 * created), released when its connection goes (the will, now or after its
 * delay), expired while offline, ended.
 *
 * Two parts:
 *
 *  - struct registry, the node's table of sessions (client id -> session),
 *    guarded by its lock. Every implementation keeps the node's sessions
 *    here; the persistence loader fills it at start-up.
 *
 *  - struct registry_ops, the seam where the cluster plugs in (as route.h is
 *    for routes). The broker calls the registry only through
 *    b->registry_ops / b->registry_ud, by way of registry_claim,
 *    registry_release and registry_tick below. registry_local_ops (ud: the
 *    struct broker) is installed by broker_init; the cluster installs its own
 *    before server_run, which makes a claim a Raft round trip (client id ->
 *    owning node, epoch) and does the local part with the registry_local_*
 *    functions.
 *
 * A claim is asynchronous: its answer comes through a callback on the worker
 * that asked, which may run before registry_claim returns (the local
 * registry) or later (the cluster). The connection may close in between; the
 * callback then still owns the granted session and must release it.
 *
 * Lock order: registry lock, then a session's lock, then the subscription
 * index. Nothing asynchronous runs under the registry lock (posting a kick to
 * a worker's inbox is not waiting).
 */
#ifndef STARLING_REGISTRY_H
#define STARLING_REGISTRY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct broker;
struct conn;
struct msg;
struct session;
struct store_batch;
struct worker;

/* The node's sessions. */
struct registry {
    pthread_mutex_t lock;
    struct session **buckets; /* chained through session.hnext */
    size_t n_buckets;         /* a power of two */
    size_t n_sessions;
};

/* The answer to a claim. */
enum registry_status {
    /* granted: a new, empty session (CONNACK session present 0) */
    REGISTRY_NEW = 0,
    /* granted: this node's existing session, resumed (session present 1) */
    REGISTRY_PRESENT = 1,
    /* granted: a session whose state came from another node (takeover
     * across nodes; session present 1) */
    REGISTRY_TRANSFERRED = 2,
    /* refused: the registry cannot answer now (out of memory; the cluster:
     * no quorum within its timeout). 5.0: CONNACK 0x88 Server unavailable;
     * 3.1.1: return code 3 */
    REGISTRY_UNAVAILABLE = -1,
};

/* What a CONNECT asks for. */
struct registry_claim {
    const char *id; /* the client id (valid during the call: copy it) */
    uint16_t id_len;
    bool clean_start;
    uint8_t version;   /* MQTT protocol level of the connection */
    const char *user;  /* who the client is for the ACL: its user name, or
                        * its certificate's identity with
                        * tls_use_identity_as_username; NULL: anonymous.
                        * Valid during the call: copy it (the session keeps
                        * its own copy, s->user, stored with it) */
    uint32_t expiry;   /* Session Expiry Interval the session gets, seconds
                        * (0xFFFFFFFF = never) */
    struct conn *conn; /* the connection to attach (opaque) */
    struct worker *w;  /* its worker: where `done` runs */
};

/*
 * The result of a claim, called exactly once on req->w's thread. Granted
 * (status >= 0): s is the session, already attached to req->conn (s->conn,
 * s->w set) and counted as connected, with one reference that now belongs to
 * the callee (the connection's, or, when the connection closed meanwhile,
 * to hand to registry_release). Refused: s is NULL.
 */
typedef void (*registry_done_fn)(void *ud, int status, struct session *s);

/* A will handed over by a connection that goes away. */
struct session_will {
    struct msg *msg; /* the registry takes this reference */
    uint32_t delay;  /* Will Delay Interval, seconds */
    uint32_t expiry; /* the will's Message Expiry Interval, seconds; 0 = none */
};

struct registry_ops {
    /* Claim req->id for req->conn. See registry_done_fn. */
    void (*claim)(void *ud, const struct registry_claim *req, registry_done_fn done, void *done_ud);
    /* Connection c (on worker cur, the calling thread) no longer serves s:
     * detach it if still attached, keep the session offline or end it
     * (expiry 0), publish or delay `will` (NULL: none, a normal DISCONNECT).
     * `resumed`: s continues on another connection (taken over), so a
     * delayed will is dropped. Drops the connection's reference to s. */
    void (*release)(void *ud, struct session *s, struct conn *c, struct session_will *will,
                    bool resumed, struct worker *cur);
    /* Housekeeping (the main thread, every 100 ms): publish delayed wills
     * that are due, end sessions that expired offline [MQTT-5.0 3.1.2-23]. */
    void (*tick)(void *ud, uint64_t now_mono_ms);
    /* Optional (NULL: nothing to do). changed: s's subscriptions changed
     * (SUBSCRIBE, UNSUBSCRIBE; the owning worker, no lock held), called
     * before the SUBACK waits for its routes (route_ops.sync), so that what
     * the registry records with them is covered by the same wait. ended:
     * s ends for good (session_end, any thread, s->lock not held; not at
     * shutdown). */
    void (*changed)(void *ud, struct session *s);
    void (*ended)(void *ud, struct session *s);
};

/* The single-node registry; ud is the struct broker. */
extern const struct registry_ops registry_local_ops;
/* The same, but every claim is answered later, from the claiming worker's
 * inbox, as a cluster's would be (ud: the struct broker). For tests: debug
 * builds install it when STARLING_TEST_REGISTRY=deferred. */
extern const struct registry_ops registry_deferred_ops;

/* Calls through the broker's installed ops. */
void registry_claim(struct broker *b, const struct registry_claim *req, registry_done_fn done,
                    void *done_ud);
void registry_release(struct broker *b, struct session *s, struct conn *c,
                      struct session_will *will, bool resumed, struct worker *cur);
void registry_tick(struct broker *b, uint64_t now_mono_ms);
void registry_changed(struct broker *b, struct session *s);

/* ---- the table ----------------------------------------------------------- */

/* Returns 0 or -ENOMEM. */
int registry_init(struct registry *r);
/* End and free every session (after the workers stopped). */
void registry_cleanup(struct broker *b);
/* Number of sessions (takes the lock). */
size_t registry_count(struct registry *r);
/* Caller holds r->lock (or runs before the workers start). find returns a
 * borrowed pointer; insert gives the table the caller's reference; remove
 * hands the table's reference back to the caller (who ends the session). */
struct session *registry_find(struct registry *r, const char *id, size_t len);
void registry_insert(struct registry *r, struct session *s);
void registry_remove(struct registry *r, struct session *s);

/* ---- the local implementation, for registries that delegate -------------- */

/*
 * The local part of a claim, completed at once: take over the connection of
 * an existing session of this node [MQTT-3.1.1 3.1.4-2, MQTT-5.0 3.1.4-3], discard it on clean
 * start [MQTT-3.1.1 3.1.2-6, MQTT-5.0 3.1.2-4] or resume it [MQTT-3.1.1 3.1.2-4, MQTT-5.0 3.1.2-5],
 * or create one; attach req->conn; store the session record. With `incoming` (not NULL, a session
 * built from state sent by another node; the claim takes the caller's
 * reference) that session replaces any local one and the answer is
 * REGISTRY_TRANSFERRED. Calls done before returning, on the calling thread
 * (which must be req->w's).
 */
void registry_local_claim(struct broker *b, const struct registry_claim *req,
                          struct session *incoming, registry_done_fn done, void *done_ud);
/*
 * The same for a session that came from another node, in two steps, so
 * that its client is answered only once the store has it (issue 10: a
 * SIGKILL right after the CONNACK lost what the session held). Stage:
 * `incoming` replaces any local session of its id and joins the table
 * offline (the caller's reference becomes the table's; what arrives
 * meanwhile is queued and stored as for any offline session), and every
 * message it holds, its incoming QoS 2 ids and its record go into *bt
 * (created if NULL; the caller submits it). 0, or -ENOMEM (nothing
 * changed). Attach, on req->w once *bt committed: req->conn becomes the
 * session's connection and done gets REGISTRY_TRANSFERRED, or
 * REGISTRY_UNAVAILABLE when the session left the table meanwhile (it
 * expired, or was taken over or surrendered). Both on req->w's thread.
 */
int registry_local_stage(struct broker *b, const struct registry_claim *req,
                         struct session *incoming, struct store_batch **bt);
void registry_local_attach(struct broker *b, const struct registry_claim *req, struct session *s,
                           registry_done_fn done, void *done_ud);
/*
 * Another node claimed `id`: kick this node's connection of it (5.0:
 * DISCONNECT 0x8E; `resumed`: the other node resumes the session, so a
 * delayed will of the kicked connection is dropped), take the session out of
 * the table and return it with the table's reference, so that the cluster
 * can ship its state (subscriptions, queue, inflight, QoS 2 ids, a delayed
 * will) and then end it (session_end, session_unref). NULL when this node
 * has no session of that id. Any thread.
 */
struct session *registry_local_surrender(struct broker *b, const char *id, uint16_t id_len,
                                         bool resumed);
/* The same, kicking with reason code `rc` (5.0). */
struct session *registry_local_surrender_rc(struct broker *b, const char *id, uint16_t id_len,
                                            bool resumed, uint8_t rc);
void registry_local_release(struct broker *b, struct session *s, struct conn *c,
                            struct session_will *will, bool resumed, struct worker *cur);
void registry_local_tick(struct broker *b, uint64_t now_mono_ms);

#endif
