/*
 * retain.h - the retained message store.
 *
 * One message per topic name. Setting a message with an empty payload
 * removes the topic's retained message [MQTT-3.1.1 3.3.1-10, MQTT-5.0 3.3.1-6]. The store holds a
 * reference on each message it keeps. All functions are thread safe.
 */
#ifndef STARLING_RETAIN_H
#define STARLING_RETAIN_H

#include <stddef.h>

#include "msg.h"

struct retain_store;

struct retain_store *retain_new(void);
void retain_free(struct retain_store *rs);

/* Store m (taking a new reference) as the retained message of its topic, or
 * remove the topic's message when m's payload is empty. Returns 0 or
 * -ENOMEM. */
int retain_set(struct retain_store *rs, struct msg *m);

/* Call cb for every retained message whose topic matches filter f (not a
 * $share filter), skipping messages whose expiry_at is past now_ms (and
 * removing them). cb is called with the store locked and must not call into
 * the store; it may take references. Returns the number of callbacks, or
 * -ENOMEM when the walk of a wildcard filter could not be completed (out of
 * memory; some matching messages were then not passed to cb, never silently). */
int retain_match(struct retain_store *rs, const char *f, size_t flen, uint64_t now_ms,
                 void (*cb)(void *ud, struct msg *m), void *ud);

/* Number of retained messages. */
size_t retain_count(struct retain_store *rs);

#endif
