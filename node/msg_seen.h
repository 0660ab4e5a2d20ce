/*
 * msg_seen.h - the identities of the messages a moved session got, so that
 * it gets each at most once whatever path it came by (cluster,
 * docs/cluster.md "Faults").
 *
 * A QoS 1/2 message has one identity on every path: its origin node and the
 * origin's own publish number (struct msg.id_node, id_seq; not the
 * per-destination forward seq). A session that moved to this node (taken
 * over, or resumed from its record while its old node was down) may get a
 * message directly and again as a late message from its old node; while it
 * keeps a msg_seen, session_deliver drops a message whose identity it had.
 *
 * Kept as sorted ranges of publish numbers per origin: a subscriber that
 * gets every message of an origin needs one range for it. Bounded: at most
 * MSG_SEEN_MAX_RANGES ranges (24 bytes each); beyond that nothing more is
 * recorded (msg_seen_full): later copies are at least once.
 *
 * Not thread-safe: the owner (struct session) guards it with its lock.
 */
#ifndef STARLING_MSG_SEEN_H
#define STARLING_MSG_SEEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MSG_SEEN_MAX_RANGES 512

struct msg_seen;

/* An empty set, or NULL on out of memory. */
struct msg_seen *msg_seen_new(void);
void msg_seen_free(struct msg_seen *x);

/* Record (node, seq). Returns 1 when it was there already (a duplicate),
 * 0 when recorded, -ENOSPC when the set is full (not recorded), -ENOMEM. */
int msg_seen_add(struct msg_seen *x, uint64_t node, uint64_t seq);

/* Record every seq of node from lo to hi (lo <= hi): the ranges of another
 * node's set. Returns 0, -ENOSPC when full (not recorded), -EINVAL, -ENOMEM. */
int msg_seen_add_range(struct msg_seen *x, uint64_t node, uint64_t lo, uint64_t hi);

/* Forget (node, seq): a message the set's owner recorded but neither
 * delivered nor passed on (an old copy's message that reached the new owner
 * directly), so that a set sent on does not claim it. Returns 0 (also when
 * it was not there), or -ENOSPC when the set is full and the range it was in
 * had to be cut short instead of split: identities above seq in that range
 * are forgotten too (at least once for those, msg_seen_full). */
int msg_seen_del(struct msg_seen *x, uint64_t node, uint64_t seq);

/* The i-th range (i < msg_seen_ranges), in order. */
void msg_seen_range(const struct msg_seen *x, size_t i, uint64_t *node, uint64_t *lo, uint64_t *hi);

/* Whether (node, seq) is in the set. */
bool msg_seen_has(const struct msg_seen *x, uint64_t node, uint64_t seq);

/* Ranges held, and whether an identity could not be recorded. */
size_t msg_seen_ranges(const struct msg_seen *x);
bool msg_seen_full(const struct msg_seen *x);

#endif
