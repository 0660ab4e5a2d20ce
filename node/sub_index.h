/*
 * sub_index.h - the node's subscription index.
 *
 * Maps topic filters to subscribers: a trie over topic levels for filters with
 * wildcards and a hash table for exact filters, shared by all workers of the
 * node and guarded by a read-write lock (publishes match under the read lock;
 * subscribe and unsubscribe take the write lock). Shared subscriptions
 * ("$share/{group}/{filter}") are kept per group and matching picks one member
 * of each matching group (round robin, preferring members for which the
 * `eligible` predicate is true).
 *
 * A subscriber is an opaque pointer (the broker's session). The index holds
 * no reference on it: the owner must remove all its subscriptions before the
 * subscriber is freed. All functions are thread safe.
 */
#ifndef STARLING_SUB_INDEX_H
#define STARLING_SUB_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "route.h"

struct sub_index;

/* Create an index; ops/ud receive route changes (ops may be NULL). */
struct sub_index *sub_index_new(const struct route_ops *ops, void *ud);
void sub_index_free(struct sub_index *idx);

/*
 * Add or replace the subscription of `subscriber` to `filter` (which may be a
 * "$share/..." filter; it must already be valid). options is the MQTT 5.0
 * subscription options byte, sub_id the subscription identifier (0 = none).
 * Returns 1 if a subscription of this subscriber to this exact filter already
 * existed (and was replaced), 0 if it is new, -ENOMEM, or -ENOSPC when the
 * filter (or shared group) already has 16,777,215 subscribers.
 */
int sub_index_add(struct sub_index *idx, const char *filter, size_t len, void *subscriber,
                  uint8_t options, uint32_t sub_id);

/* Remove it. Returns 0, or -ENOENT when there was no such subscription. */
int sub_index_remove(struct sub_index *idx, const char *filter, size_t len, void *subscriber);

/*
 * Call cb for every subscription matching topic name t, with the read lock
 * held (cb must not call into the index; it may take a reference on the
 * subscriber). For a shared group, cb is called once, for the member picked.
 * `shared` tells whether the match comes from a shared subscription.
 * eligible may be NULL. Returns the number of callbacks made, or -ENOMEM
 * when the walk could not be completed (out of memory, a topic of many
 * levels): some matching subscriptions were then not reported.
 */
typedef void (*sub_index_match_cb)(void *ud, void *subscriber, uint8_t options, uint32_t sub_id,
                                   bool shared);
int sub_index_match(struct sub_index *idx, const char *t, size_t len,
                    bool (*eligible)(void *subscriber), sub_index_match_cb cb, void *ud);

/* sub_index_match, and when `unique` is not NULL, *unique is set to whether
 * the non-shared matches name each subscriber at most once (they all came
 * from one filter), so that a caller can skip looking for repeats. */
int sub_index_match_ex(struct sub_index *idx, const char *t, size_t len,
                       bool (*eligible)(void *subscriber), sub_index_match_cb cb, void *ud,
                       bool *unique);

/* sub_index_match_ex, with shared groups limited to those for which
 * group_ok(group_ud, group name, length) is true (group_ok NULL: all): a
 * message forwarded by another node of the cluster goes only to the shared
 * groups that node picked this one for. */
typedef bool (*sub_index_group_fn)(void *ud, const char *group, size_t len);
int sub_index_match_groups(struct sub_index *idx, const char *t, size_t len,
                           bool (*eligible)(void *subscriber), sub_index_group_fn group_ok,
                           void *group_ud, sub_index_match_cb cb, void *ud, bool *unique);

/* Number of subscriptions (each subscriber x filter counts once). */
size_t sub_index_count(struct sub_index *idx);

#endif
