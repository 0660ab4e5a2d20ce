/*
 * topic.c - topic names and topic filters (see topic.h).
 *
 * MQTT 5.0 section 4.7 (topic names and filters) and 4.8.2 (shared
 * subscriptions). Topic levels are separated by '/'; empty levels are legal
 * ("a//b", "/a", "a/").
 */
#include "topic.h"

#include <string.h>

#define TOPIC_SHARE_PREFIX "$share/"
#define TOPIC_SHARE_PREFIX_LEN (sizeof(TOPIC_SHARE_PREFIX) - 1)
#define TOPIC_MAX_LEN 65535u

size_t topic_levels(const char *t, size_t len)
{
    size_t n = 1;
    for (const char *p = t, *end = t + len; (p = memchr(p, '/', (size_t)(end - p))); p++)
        n++;
    return n;
}

/* End of the level starting at pos: the index of the next '/' or len. */
static size_t topic_level_end(const char *s, size_t len, size_t pos)
{
    const char *slash = pos < len ? memchr(s + pos, '/', len - pos) : NULL;
    return slash ? (size_t)(slash - s) : len;
}

static bool topic_is_level(const char *s, size_t start, size_t end, char c)
{
    return end - start == 1 && s[start] == c;
}

/* Length and characters common to names and filters. */
static bool topic_common_valid(const char *s, size_t len)
{
    /* [MQTT-3.1.1 4.7.3-1, MQTT-5.0 4.7.3-1] at least one character;
     * [MQTT-3.1.1 4.7.3-3, MQTT-5.0 4.7.3-3] at most 65535
     * bytes once encoded. */
    if (!s || len == 0 || len > TOPIC_MAX_LEN)
        return false;
    /* [MQTT-3.1.1 4.7.3-2, MQTT-5.0 4.7.3-2] no null character. */
    return memchr(s, '\0', len) == NULL;
}

bool topic_name_valid(const char *t, size_t len)
{
    if (!topic_common_valid(t, len))
        return false;
    /* [MQTT-3.1.1 3.3.2-2, MQTT-5.0 3.3.2-2] no wildcard characters in a topic name. */
    for (size_t i = 0; i < len; i++)
        if (t[i] == '+' || t[i] == '#')
            return false;
    return true;
}

/* A filter without the "$share/" interpretation. */
static bool topic_plain_filter_valid(const char *f, size_t len)
{
    if (!topic_common_valid(f, len))
        return false;
    size_t pos = 0;
    for (;;) {
        size_t end = topic_level_end(f, len, pos);
        for (size_t i = pos; i < end; i++) {
            if (f[i] == '#') {
                /* [MQTT-3.1.1 4.7.1-2, MQTT-5.0 4.7.1-1] '#' alone in its level and last. */
                if (end - pos != 1 || end != len)
                    return false;
            } else if (f[i] == '+') {
                /* [MQTT-3.1.1 4.7.1-3, MQTT-5.0 4.7.1-2] '+' occupies an entire level. */
                if (end - pos != 1)
                    return false;
            }
        }
        if (end == len)
            return true;
        pos = end + 1;
    }
}

int topic_share_parse(const char *f, size_t len, const char **group, size_t *group_len,
                      const char **filter, size_t *filter_len)
{
    if (!f || len < TOPIC_SHARE_PREFIX_LEN ||
        memcmp(f, TOPIC_SHARE_PREFIX, TOPIC_SHARE_PREFIX_LEN) != 0)
        return 0;
    size_t gpos = TOPIC_SHARE_PREFIX_LEN;
    size_t gend = topic_level_end(f, len, gpos);
    if (gend == len) /* "$share/g": no filter */
        return -1;
    /* [MQTT-5.0 4.8.2-1] the ShareName is at least one character and contains
     * no '/', '+' or '#'. */
    if (gend == gpos)
        return -1;
    for (size_t i = gpos; i < gend; i++)
        if (f[i] == '+' || f[i] == '#')
            return -1;
    /* [MQTT-5.0 4.8.2-2] the ShareName is followed by '/' and a Topic Filter. */
    size_t fpos = gend + 1;
    if (!topic_plain_filter_valid(f + fpos, len - fpos))
        return -1;
    if (group)
        *group = f + gpos;
    if (group_len)
        *group_len = gend - gpos;
    if (filter)
        *filter = f + fpos;
    if (filter_len)
        *filter_len = len - fpos;
    return 1;
}

bool topic_filter_valid(const char *f, size_t len)
{
    int r = topic_share_parse(f, len, NULL, NULL, NULL, NULL);
    if (r != 0)
        return r > 0;
    return topic_plain_filter_valid(f, len);
}

bool topic_match(const char *f, size_t flen, const char *t, size_t tlen)
{
    if (!f || !t || flen == 0 || tlen == 0)
        return false;
    /* [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1] a filter starting with a wildcard does not match a
     * topic name starting with '$'. */
    if (t[0] == '$' && (f[0] == '+' || f[0] == '#'))
        return false;
    size_t fp = 0, tp = 0;
    for (;;) {
        size_t fe = topic_level_end(f, flen, fp);
        size_t te = topic_level_end(t, tlen, tp);
        /* '#' matches the rest, including nothing more ("a/#" matches "a"
         * as handled below, and "a/b/c" here). */
        if (topic_is_level(f, fp, fe, '#'))
            return true;
        if (!topic_is_level(f, fp, fe, '+') &&
            (fe - fp != te - tp || memcmp(f + fp, t + tp, fe - fp) != 0))
            return false;
        bool fmore = fe < flen, tmore = te < tlen;
        if (!fmore && !tmore)
            return true;
        if (!tmore) {
            /* The name ended: only a trailing "/#" still matches, the
             * multi-level wildcard also matching the parent level. */
            return flen - (fe + 1) == 1 && f[fe + 1] == '#';
        }
        if (!fmore)
            return false;
        fp = fe + 1;
        tp = te + 1;
    }
}

bool topic_has_wildcard(const char *f, size_t len)
{
    if (!f)
        return false;
    for (size_t i = 0; i < len; i++)
        if (f[i] == '+' || f[i] == '#')
            return true;
    return false;
}
