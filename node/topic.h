/*
 * topic.h - topic names and topic filters (MQTT 5.0 section 4.7).
 *
 * Pure functions, thread safe. Lengths are explicit; strings need not be
 * NUL-terminated. UTF-8 validity is the codec's job, not these functions'.
 */
#ifndef STARLING_TOPIC_H
#define STARLING_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

/* A topic name for PUBLISH: non-empty, no '+' or '#' [MQTT-3.1.1 3.3.2-2, MQTT-5.0 3.3.2-2]. */
bool topic_name_valid(const char *t, size_t len);

/* A topic filter for SUBSCRIBE/UNSUBSCRIBE: non-empty; '#' only as the last
 * whole level [MQTT-3.1.1 4.7.1-2, MQTT-5.0 4.7.1-1]; '+' only as a whole
 * level [MQTT-3.1.1 4.7.1-3, MQTT-5.0 4.7.1-2].
 * A "$share/..." filter is valid only as topic_share_parse accepts it. */
bool topic_filter_valid(const char *f, size_t len);

/* Does topic name t match filter f? Wildcards at the first level do not
 * match names beginning with '$' [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1]. f must not be a $share
 * filter (pass the inner filter). */
bool topic_match(const char *f, size_t flen, const char *t, size_t tlen);

/* The number of levels of a topic name or filter: one more than its '/'
 * ("a" 1, "a/b" 2, "/" 2, "" 1). Compared with max_topic_levels. */
size_t topic_levels(const char *t, size_t len);

/* Does the filter contain '+' or '#'? */
bool topic_has_wildcard(const char *f, size_t len);

/*
 * Split "$share/{group}/{filter}". Returns 1 and sets group/filter (pointing
 * into f) for a well-formed shared subscription: a non-empty group without
 * '+', '#' or '/', and a non-empty valid filter [MQTT-5.0 4.8.2-1/2].
 * Returns 0 when f does not start with "$share/", -1 when it does but is
 * malformed.
 */
int topic_share_parse(const char *f, size_t len, const char **group, size_t *group_len,
                      const char **filter, size_t *filter_len);

#endif
