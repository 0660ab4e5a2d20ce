/*
 * persist.h - durable sessions and retained messages: the glue between the
 * broker's in-memory state and storage/store.h.
 *
 * A session is persistent when its Session Expiry Interval is not 0 (3.1.1:
 * clean session 0). For such sessions the store holds the session record
 * (subscriptions included), every QoS 1/2 message queued or inflight for it
 * (keyed by the session's message sequence number, from which the packet
 * identifier is derived, so a message keeps its packet id across restarts),
 * and the ids of incoming QoS 2 messages awaiting PUBREL. Retained messages
 * are stored too.
 *
 * Operations are collected in a batch (struct store_batch) by whoever changes
 * the state, and submitted to the store's writer thread, which groups many
 * batches into one transaction. Acknowledgements that promise durability
 * (PUBACK, PUBREC, PUBREL, PUBCOMP) are sent only after the batch that makes
 * them true has committed: see ackq.h.
 *
 * All functions may be called from any thread; those taking a session need
 * its lock held unless said otherwise. With persistence off (no store) they
 * do nothing.
 */
#ifndef STARLING_PERSIST_H
#define STARLING_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct broker;
struct session;
struct qmsg;
struct msg;
struct store_batch;

/* Open the store in cfg.data_dir and load what it holds into b (sessions,
 * their subscriptions and messages, retained messages). Before workers
 * start. Returns 0, or a negative errno with err set. */
int persist_open(struct broker *b, char *err, size_t errlen);
/* Commit what is pending and close the store (after workers stopped). */
void persist_close(struct broker *b);

/* Is s stored (persistent, with a store)? s->lock held. */
bool persist_wanted(const struct broker *b, const struct session *s);

/* The batch *bt, created on first use. NULL when there is no store, or
 * when it cannot be allocated: an operation is then lost without a trace,
 * so whoever acknowledges what a batch stores creates it first with
 * persist_batch_begin. */
struct store_batch *persist_batch(const struct broker *b, struct store_batch **bt);
/* Create *bt now if there is a store and it does not exist yet. Returns 0
 * (also without a store), or -ENOMEM: the caller refuses the work that
 * needed the batch instead of acknowledging it. */
int persist_batch_begin(const struct broker *b, struct store_batch **bt);

/* Write the session record (with its subscriptions). s->lock held. */
void persist_session_put(const struct broker *b, struct store_batch **bt, struct session *s,
                         bool connected);
/* persist_session_put of an offline session whose record names claim
 * `epoch` (cluster: a session that came with its state, its own epoch not
 * set yet). s->lock held. */
void persist_session_put_claim(const struct broker *b, struct store_batch **bt, struct session *s,
                               uint64_t epoch);
/* Delete the session record with its messages and QoS 2 ids. s->lock held. */
void persist_session_del(const struct broker *b, struct store_batch **bt, struct session *s);
/* A message for s (state: enum msg_state). s->lock held. */
void persist_msg_put(const struct broker *b, struct store_batch **bt, struct session *s,
                     struct qmsg *q, uint8_t state);
/* Every QoS 1/2 message s holds, with its state (inflight past PUBREC,
 * else queued), and its incoming QoS 2 ids, written again: a session that
 * came from another node (the messages of its state came in memory; what
 * was delivered to it directly before its claim completed was stored, but
 * the end of an older copy of the id here then deleted every record of the
 * id). s->lock held. */
void persist_session_contents(const struct broker *b, struct store_batch **bt, struct session *s);
/* persist_session_contents in two steps, so that the session's lock is
 * not held while a large session is written (a claim's write of a session
 * that moved here with tens of thousands of messages held every thread
 * that delivers to it for seconds: docs/cluster.md, *A live node taken for
 * dead under load*). persist_contents_copy, s->lock held: the rows it
 * would write, copied (each message referenced), and the messages marked
 * stored; 0, or -ENOMEM (nothing copied: write under the lock instead).
 * persist_contents_write, no lock needed: those rows into *bt (s's id
 * must stay valid: the caller holds a reference), and the copy freed. */
struct persist_row;
struct persist_copy {
    const char *id;
    uint16_t id_len;
    size_t n;
    struct persist_row *rows;
    uint32_t n_qos2;
    uint16_t *qos2;
};
int persist_contents_copy(const struct broker *b, struct session *s, struct persist_copy *out);
/* The copy given up without writing it (its messages stay marked stored:
 * the caller writes them otherwise). */
void persist_contents_free(struct persist_copy *c);
void persist_contents_write(const struct broker *b, struct store_batch **bt,
                            struct persist_copy *c);
void persist_msg_del(const struct broker *b, struct store_batch **bt, struct session *s,
                     struct qmsg *q);
/* Delete row `row` of s (SESSION_NO_ROW: nothing), a message s may still
 * hold marked stored: its later persist_msg_del deletes a missing row,
 * which is no error. No lock needed (s's id does not change). */
void persist_row_del(const struct broker *b, struct store_batch **bt, struct session *s,
                     uint64_t row);
/* Incoming QoS 2 packet ids. s->lock held. */
void persist_qos2(const struct broker *b, struct store_batch **bt, struct session *s, uint16_t pid,
                  bool put);
/* A retained message (an empty payload deletes the topic's). */
void persist_retained(const struct broker *b, struct store_batch **bt, const struct msg *m);

/* Whether the record of session s must go with the next write of its
 * QoS 2 ids (persist_qos2; a PUBREL's): it waits for an old owner's ids,
 * or its wait changed since the record was written (node/session.h). */
bool persist_wait_due(const struct session *s);

/* Store the record of a session that is in the store already (connected or
 * not), in a batch of its own, submitted (under s->lock, which it takes):
 * after its wait for an old owner's QoS 2 ids changed (node/session.h,
 * blind_until). */
void persist_session_update(const struct broker *b, struct session *s);

/* Store the record of a connected session (after its subscriptions changed,
 * or at CONNECT), or delete it for a session no longer persistent, into *bt
 * (NULL: a batch of its own), and submit *bt. Takes s->lock. */
void persist_session_sync(const struct broker *b, struct session *s, struct store_batch **bt);
/* The same, then done(ud, status) as persist_submit's (below) once *bt is
 * committed: an acknowledgement that must not go out before it. */
void persist_session_sync_then(const struct broker *b, struct session *s, struct store_batch **bt,
                               void (*done)(void *ud, int status), void *ud);

/* Submit *bt (if any) and reset it. done(ud, status) runs on the store's
 * writer thread after the commit; it is called at once with status 0 when
 * there is nothing to commit (returns false then, true when submitted). A
 * batch that lost an operation (store_batch_error) is always submitted, so
 * that done gets its error. */
bool persist_submit(const struct broker *b, struct store_batch **bt,
                    void (*done)(void *ud, int status), void *ud);

/* The packet identifier of the message with sequence number seq: 1..65535
 * for seq 0..65534, then again from 1. A new session's sequence starts at
 * 0 (its first packet identifier is 1); a restored one continues after the
 * highest sequence number in the store, whose messages keep their ids. */
static inline uint16_t persist_pid_of(uint64_t seq)
{
    return (uint16_t)(seq % 65535u + 1u);
}

/* The first sequence number from `from` on whose packet identifier
 * (persist_pid_of) is pid, 1..65535. */
static inline uint64_t persist_seq_of_pid(uint64_t from, uint16_t pid)
{
    return from + ((uint64_t)pid - 1u + 65535u - from % 65535u) % 65535u;
}

#endif
