/*
 * ackq.h - a connection's acknowledgements (PUBACK, PUBREC, PUBREL,
 * PUBCOMP), sent in the order of the packets they answer [MQTT-3.1.1 4.6.0-2..4,
 * MQTT-5.0 4.6.0-2..4], some of them only once the store committed what they promise.
 *
 * An acknowledgement that is ready when nothing waits before it is encoded at
 * once; otherwise it joins the queue (struct conn_extra.acks), and the head
 * of the queue leaves as soon as it is ready. The store's commit reaches the
 * queue through the owning worker (worker_post_ack -> ackq_done).
 *
 * Worker thread of the connection only, except where said.
 */
#ifndef STARLING_ACKQ_H
#define STARLING_ACKQ_H

#include <stdbool.h>
#include <stdint.h>

#include "codec.h"

struct ack_wait;
struct conn;
struct msg;
struct pub_targets;
struct store_batch;

/* Queue an acknowledgement; one that is not `ready` waits for ackq_done and
 * holds back those queued after it. Returns its token. Out of memory closes
 * the connection. */
uint32_t ackq_push(struct conn *c, enum mqtt_type type, uint16_t pid, uint8_t reason, bool ready);

/* The store answered for acknowledgement `token`: status 0 sends it (and
 * what was waiting behind it); an error makes a PUBACK/PUBREC carry 0x97
 * (quota exceeded) for 5.0 clients, and closes a 3.1.1 connection (the
 * client will publish again). */
void ackq_done(struct conn *c, uint32_t token, int status);

/* A condition an acknowledgement waits for besides its store commit: on a
 * cluster, that a retained message's proposal committed (so that of two
 * retained messages of a topic published one after the other's PUBACK,
 * the later one is the one every node keeps; docs/cluster.md). Made with
 * two references: the opener's (ack_gate_open drops it) and the waiter's
 * (ack_gate_unref, after ackq_after took the gate, or instead of it). */
struct ack_gate;

struct ack_gate *ack_gate_new(void);

/* Any thread: the condition holds (or is given up): an acknowledgement
 * that waits for it goes once its commit is done too. Drops the opener's
 * reference. */
void ack_gate_open(struct ack_gate *g);

void ack_gate_unref(struct ack_gate *g);

/* The record through which an acknowledgement waits for its commit
 * (ackq_after), allocated before the work it answers goes out: a client's
 * QoS 1/2 publish is delivered to this node's sessions and forwarded to
 * other nodes before ackq_after, and a refusal there, once the forward is
 * out, would not take the forward back (the other nodes deliver a message
 * whose publisher was refused). NULL when out of memory: the caller
 * refuses the work before anything of it goes out. */
struct ack_wait *ackq_wait_new(void);

/* A wait record that ackq_after was not given. */
void ackq_wait_free(struct ack_wait *a);

/* Queue an acknowledgement that may be sent only once *bt has committed
 * (and, with a gate, once the gate is open), and submit *bt (an empty
 * batch: at once). `held` (with its targets), if not NULL, is a published
 * message released by the same commit (broker_release); targets are taken
 * over. The gate stays the caller's reference. `wait` (ackq_wait_new), if
 * not NULL, is taken over: with it, the wait for a non-empty batch cannot
 * fail for memory; without it, it is allocated here, and when that fails
 * a PUBACK/PUBREC's batch is dropped (its message rejected, a QoS 2 id
 * forgotten) and the connection closed. */
void ackq_after(struct conn *c, struct store_batch **bt, enum mqtt_type type, uint16_t pid,
                uint8_t reason, struct msg *held, struct pub_targets *targets,
                struct ack_gate *gate, struct ack_wait *wait);

/* The PUBREC of a duplicate QoS 2 PUBLISH (its id is recorded): sent once
 * the original's commit is known to have succeeded, by submitting *bt (an
 * empty batch) after it; when the original's commit failed (its id was
 * forgotten meanwhile), the duplicate is refused like a failed store
 * (ackq_done). Without a store it is sent at once. */
void ackq_after_dup(struct conn *c, struct store_batch **bt, uint16_t pid);

/* An acknowledgement sent once every batch submitted before *bt (an empty
 * batch; by any thread) has committed: a PUBCOMP for an id that is not
 * recorded (any more), whose deletion an earlier connection of the session
 * may have submitted and not seen committed. Without a store, at once. */
void ackq_after_earlier(struct conn *c, struct store_batch **bt, enum mqtt_type type, uint16_t pid,
                        uint8_t reason);

/* Free the queue (connection freed). */
void ackq_free(struct conn *c);

#endif
