/*
 * sink.h - how the engine reaches clients: the seam between sessions and the
 * network layer, as route.h is the seam between the index and the cluster.
 *
 * The engine (session.c, registry.c, broker.c, persist.c) includes neither
 * conn.h nor worker.h. A session holds its attached connection and the worker
 * that owns it as opaque handles (struct conn *, struct worker *) and touches
 * them only through this table, which the network layer installs on the
 * broker (b->sink = &conn_sink_ops, before any worker runs).
 *
 * Cost: one indirect call to schedule a flush per delivery (wake) and one to
 * encode it (publish); the calls always go to the same target, which the CPU
 * predicts.
 */
#ifndef STARLING_SINK_H
#define STARLING_SINK_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

struct conn;
struct worker;
struct session;
struct qmsg;
struct broker;

/* What sink_ops.publish returns. */
enum {
    SINK_SENT = 1,       /* encoded into the connection's output */
    SINK_SKIPPED = 0,    /* never to be sent to this client (larger than its
                          * Maximum Packet Size, or expired): drop it */
    SINK_BUSY = -EAGAIN, /* the client's output is backed up: keep the
                          * message, the flush resumes when writes complete */
};

struct sink_ops {
    /* -- the connection; only on the worker that owns c -------------------- */

    /* Whether c takes messages now (connected, not closing). *receive_max:
     * the client's Receive Maximum, 0 when it gave none (3.1.1). */
    bool (*ready)(struct conn *c, uint16_t *receive_max);
    /* Encode a PUBLISH of q (q->pid, q->qos, q->retain, subscription ids,
     * topic alias, remaining expiry, DUP = dup) into c's output. Returns
     * SINK_SENT, SINK_SKIPPED, SINK_BUSY (only for dup false: a resend is
     * always written; the session sends at most its inflight window of
     * them), -ENOMEM (c closes at the end of the turn: the
     * session keeps q for its next connection), or another negative errno
     * (dropped). */
    int (*publish)(struct conn *c, const struct qmsg *q, bool dup, uint64_t now_real_ms);
    /* Encode a PUBREL for pid into c's output. */
    void (*pubrel)(struct conn *c, uint16_t pid);

    /* -- the threads; any thread --------------------------------------------- */

    /* Have session s flushed on the thread of owner: at the end of the
     * current loop turn when owner == cur (the calling worker, or NULL),
     * through owner's inbox otherwise. Takes its own reference on s. */
    void (*wake)(struct worker *owner, struct session *s, struct worker *cur);
    /* Have owner close c (5.0: DISCONNECT reason when >= 0x80). `resumed`:
     * the session continues on another connection, a delayed will is
     * dropped. Takes its own reference on c. */
    void (*kick)(struct worker *owner, struct conn *c, uint8_t reason, bool resumed);
    /* Run fn(ud) on w's thread (a registry completing a claim later).
     * Returns 0, or a negative errno when it cannot (out of memory, w
     * stopping): fn is not called then. Once accepted, fn runs exactly
     * once: on w's thread, or, when w stops first, on the thread that
     * discards w's inbox (w's loop runs no more then). */
    int (*call)(struct worker *w, void (*fn)(void *ud), void *ud);
    /* Flow control: a session that publishers of the workers in `waiters`
     * (bit id % 64) wait on drained (or stopped exerting backpressure): each
     * of them re-checks its paused connections, through its inbox. */
    void (*drained)(struct broker *b, uint64_t waiters);
    /* Call fn(ud) once at the end of the calling worker's current loop turn,
     * before it sleeps (the same fn and ud asked twice: once): the cluster
     * writes the forwards of a turn in one system call. false on a thread
     * that is no worker, or when the worker cannot take it (stopping, or
     * its few slots taken): the caller does the work now. */
    bool (*at_turn_end)(void (*fn)(void *ud), void *ud);
};

/* The worker whose thread this is, NULL on other threads. Set by the network
 * layer; the engine reads it only in assertions ("on the owning worker"). */
extern _Thread_local struct worker *sink_thread_worker;

#endif
