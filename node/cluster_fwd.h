/*
 * cluster_fwd.h - publishes forwarded between nodes: QoS 1/2 forwards are
 * never lost nor applied twice, and a slow node holds publishers back
 * instead of losing their messages (docs/cluster.md "The forwarding
 * channel").
 *
 * Origin side. A QoS 1/2 forward to node N gets the next seq of (this
 * node, N), taken under N's lock together with its hand-over to the
 * channel, so seqs reach N in increasing order. It is written to N's
 * outbox (storage/store.h) in the publisher's store batch, so the PUBACK /
 * PUBREC waits for it, and stays there until N acknowledges it. Seqs start
 * at boot << 32 after each start (boot: a durable counter, at least the
 * time in seconds), so they grow across restarts. Each frame names the seq
 * sent before it to N (`prev`).
 *
 * A peer is "live" (frames go to the channel at once) or "replaying" (the
 * poll sends the committed outbox rows after a cursor, in order, then goes
 * live under the same lock that workers take: no frame falls in between).
 * It replays after a (re)connection, after a start (everything in the
 * outbox), when the channel queue is full (-ENOBUFS), when N asks for it
 * (PublishAck.resend) and when N acknowledged nothing for 3 s.
 *
 * Receiver side (the cluster thread). Per origin, the highest seq applied:
 * a frame at or below it is a duplicate (dropped); a frame whose prev is
 * above it follows a lost one (dropped, and a resend is asked for). An
 * applied frame is delivered with its deliveries and the new highest seq in
 * one store batch, committed asynchronously; its subscribers get it once
 * that committed; then the cumulative PublishAck is sent (coalesced, by the
 * poll). QoS 0 forwards have seq 0: at most once, counted when dropped.
 *
 * Bounds: a peer's outbox holds at most cluster_outbox_messages rows and
 * cluster_outbox_bytes bytes; beyond, a QoS 1/2 publish for it is refused
 * (pub_flow.refused: 5.0 PUBACK/PUBREC 0x97, 3.1.1 connection closed),
 * counted in stats.fwd_refused. From 3/4 of either bound its publishers are
 * paused (pub_flow.fwd_slow, conn_flow.c) until it is below 1/2 again or
 * max_publisher_pause ran out.
 *
 * Moved sessions' messages (SessionState, SessionMessages) take the same
 * way: cluster_fwd_send_frame puts them in the same sequence and outbox,
 * and the receiver applies them with cluster_fwd_in_accept / _in_stage.
 *
 * Threads: cluster_fwd_send from any worker; _on_publish and _on_ack on the
 * cluster thread; _poll on the glue's own thread; _new, _attach_store and
 * _free on the owner.
 */
#ifndef STARLING_CLUSTER_FWD_H
#define STARLING_CLUSTER_FWD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "channel.pb-c.h"

struct broker;
struct cluster;
struct pub_flow;
struct store_batch;
struct worker;

struct cluster_fwd;

/* NULL when out of memory. Frames may arrive from then on (QoS 0 ones are
 * delivered, sequenced ones wait for the store: the origin resends). */
struct cluster_fwd *cluster_fwd_new(struct broker *b);
/* Once the cluster runs (before any publish). Forwards are at most once
 * until cluster_fwd_attach_store. */
void cluster_fwd_start(struct cluster_fwd *f, struct cluster *c, uint64_t self);

/* Called at the outbox's load with each SessionMessages row that is the
 * last frame of a moved session's old copy (last set), and the node it
 * goes to; sm is freed after the call. */
typedef void (*cluster_fwd_ended_fn)(void *ud, uint64_t node,
                                     const Starling__Chan__SessionMessages *sm);

/* Once the store is open and loaded (b->store; NULL with persistence off:
 * forwards stay at most once): take the next boot counter, load the
 * outboxes (replayed to their peers; `ended`, may be NULL, learns of the
 * copies' last frames among them) and the highest seqs applied.
 * *seq_base is boot << 32 (0 without a store). 0 or a negative errno. */
int cluster_fwd_attach_store(struct cluster_fwd *f, uint64_t *seq_base, cluster_fwd_ended_fn ended,
                             void *ud, char *err, size_t errlen);

/* Forward p (every field set but seq and prev) to node. QoS 1/2 with a
 * store: into node's outbox through *bt (created if NULL), then to the
 * channel; flow (may be NULL) learns about bounds. */
void cluster_fwd_send(struct cluster_fwd *f, uint64_t node, Starling__Chan__Publish *p,
                      struct store_batch **bt, struct pub_flow *flow);

/* A moved session's messages to node: fr is a SessionState that was found
 * or a SessionMessages (docs/cluster.md "Moved messages that must
 * arrive"). With a store, sequenced like a QoS 1/2 forward, in the same
 * sequence: its seq and prev are set in fr's message, it goes into node's
 * outbox through *bt (created if NULL; the caller writes into the same
 * batch the removal of these messages from its own stored copy, then
 * submits it) and to the channel, and stays until node acknowledges that
 * it committed what it built from it. Never refused at the outbox's bounds
 * (its messages were acknowledged to their publishers long ago), but
 * counted in them. Returns 1 (sequenced), 0 (no store: sent at most once)
 * or a negative errno (not sent). Any thread. */
int cluster_fwd_send_frame(struct cluster_fwd *f, uint64_t node, Starling__Chan__Frame *fr,
                           struct store_batch **bt);

/* The receiving side of a sequenced session frame (cluster thread). */
struct fwd_in;
struct cluster_fwd_seq {
    struct fwd_in *in; /* NULL: nothing to stage */
    uint64_t seq;
    uint64_t before; /* the highest applied before it */
};
/* Frame seq (after prev; seq 0: not sequenced) from node `from`: 1 apply it
 * and stage *sq (cluster_fwd_in_stage) into the store batch that holds what
 * it brought; 0 drop it (applied already: acknowledged again; it follows a
 * lost frame: a resend is asked; the store is not loaded yet); -1 not
 * sequenced: apply it, *sq stages nothing. `what` names it in the log. */
int cluster_fwd_in_accept(struct cluster_fwd *f, uint64_t from, uint64_t seq, uint64_t prev,
                          const char *what, struct cluster_fwd_seq *sq);
/* Not applied after all (it cannot be yet): forgotten, so that the
 * origin sends it again (the next frame shows the gap, or its timeout). */
void cluster_fwd_in_defer(struct cluster_fwd *f, const struct cluster_fwd_seq *sq);
/* Write that sq was applied into *bt (created if NULL; the caller submits
 * it): once it committed, the frame is acknowledged. sq may be NULL. */
void cluster_fwd_in_stage(struct cluster_fwd *f, const struct cluster_fwd_seq *sq,
                          struct store_batch **bt);

/* A frame from node `from`. */
void cluster_fwd_on_publish(struct cluster_fwd *f, uint64_t from, const Starling__Chan__Publish *p);
/* Whether a worker that reads the channel may handle p itself
 * (cluster_fwd_on_publish_here): a QoS 0 forward, not sequenced, without
 * an identity: nothing of the cluster thread's state is in its way. */
bool cluster_fwd_here_ok(const Starling__Chan__Publish *p);
/* Such a frame, on the worker cur (delivered to its own sessions in this
 * loop turn, like a local publish). */
void cluster_fwd_on_publish_here(struct cluster_fwd *f, const Starling__Chan__Publish *p,
                                 struct worker *cur);
/* The forwards with an identity that this node began to deliver so far (an
 * origin's number is noted before the forward meets the index): per origin,
 * the highest publish number, into a new list (NULL: no memory, or an
 * origin that could not be noted). A session that joined the index before
 * this call takes every forward numbered above its origin's entry that
 * reaches this node (RecordOwner.pubs_seen). Any thread. */
struct session_pubs_seen;
struct session_pubs_seen *cluster_fwd_pubs_seen(struct cluster_fwd *f);
void cluster_fwd_on_ack(struct cluster_fwd *f, uint64_t from, const Starling__Chan__PublishAck *a);

/* Acknowledgements, range deletes, replays, reconnections (every few ms). */
void cluster_fwd_poll(struct cluster_fwd *f, uint64_t now_ms);

/* The last sequence number of a frame of node's outbox that is still to
 * reach it (not one whose publish was refused: never sent), or, with none
 * left, the highest it acknowledged (0: none), into *next. False (nothing
 * known) until the outbox is loaded from the store. Any thread. */
bool cluster_fwd_out_next(struct cluster_fwd *f, uint64_t node, uint64_t *next);
/* The highest sequence number applied of origin's frames to this node (0:
 * none). Cluster thread. */
uint64_t cluster_fwd_in_applied(struct cluster_fwd *f, uint64_t origin);

/* node's outbox: the QoS 1/2 forwards it has not acknowledged yet and
 * their bytes. 0, or -ENOENT when nothing was ever forwarded to it. Any
 * thread (takes the outbox's lock briefly: /metrics). */
int cluster_fwd_outbox(struct cluster_fwd *f, uint64_t node, uint64_t *msgs, uint64_t *bytes);

/* node was removed from the cluster for good (forgotten): the forwards in
 * its outbox can never be delivered. They leave the index now and the
 * store at the next poll (their range delete); returns how many there
 * were. Cluster thread. */
size_t cluster_fwd_forget(struct cluster_fwd *f, uint64_t node);

/* Before the channel (struct cluster) goes: frames are sent no more (the
 * store's writer may still run commit hooks, which send after a commit). */
void cluster_fwd_stop(struct cluster_fwd *f);
/* After the store closed (no commit callback can run any more). */
void cluster_fwd_free(struct cluster_fwd *f);

#endif
