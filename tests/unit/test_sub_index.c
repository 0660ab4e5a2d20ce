/*
 * test_sub_index.c - the subscription index: add/replace/remove/count,
 * matching (exact, wildcards, '$' names, empty levels), shared groups,
 * route notifications, memory returned on unsubscribe, concurrency.
 */
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "sub_index.h"
#include "topic.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif
#ifdef HAVE_ASAN
/* From <sanitizer/allocator_interface.h>, not always installed. */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define S(x) (x), strlen(x)

/* Subscribers are just distinct addresses. */
static char subs[16];
#define A ((void *)&subs[0])
#define B ((void *)&subs[1])
#define C ((void *)&subs[2])
#define D ((void *)&subs[3])

/* ---- a recording match callback ---- */

struct hit {
    void *subscriber;
    uint8_t options;
    uint32_t sub_id;
    bool shared;
};

struct hits {
    struct hit h[64];
    int n;
};

static void record(void *ud, void *subscriber, uint8_t options, uint32_t sub_id, bool shared)
{
    struct hits *hs = ud;
    if (hs->n < 64)
        hs->h[hs->n] = (struct hit){subscriber, options, sub_id, shared};
    hs->n++;
}

static int match(struct sub_index *idx, const char *t, struct hits *hs)
{
    memset(hs, 0, sizeof(*hs));
    return sub_index_match(idx, t, strlen(t), NULL, record, hs);
}

/* How many hits equal (subscriber, options, sub_id, shared). */
static int count_hit(const struct hits *hs, void *s, uint8_t options, uint32_t sub_id, bool shared)
{
    int n = 0;
    for (int i = 0; i < hs->n && i < 64; i++)
        if (hs->h[i].subscriber == s && hs->h[i].options == options && hs->h[i].sub_id == sub_id &&
            hs->h[i].shared == shared)
            n++;
    return n;
}

/* ---- a counting route_ops ---- */

struct route_log {
    int added, removed;
    char last[128];
    size_t last_len;
};

static void rl_added(void *ud, const char *f, size_t len)
{
    struct route_log *l = ud;
    l->added++;
    l->last_len = len < sizeof(l->last) ? len : sizeof(l->last);
    memcpy(l->last, f, l->last_len);
}

static void rl_removed(void *ud, const char *f, size_t len)
{
    struct route_log *l = ud;
    l->removed++;
    l->last_len = len < sizeof(l->last) ? len : sizeof(l->last);
    memcpy(l->last, f, l->last_len);
}

static const struct route_ops counting_ops = {
    .filter_added = rl_added,
    .filter_removed = rl_removed,
    .remote_nodes = NULL,
};

static bool last_is(const struct route_log *l, const char *f)
{
    return l->last_len == strlen(f) && memcmp(l->last, f, l->last_len) == 0;
}

/* ---- tests ---- */

static void test_new_free(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(idx);
    CU_ASSERT_EQUAL(sub_index_count(idx), 0);
    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "a", &hs), 0);
    sub_index_free(idx);
    sub_index_free(NULL);
}

static void test_add_replace_count(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("a/b"), A, 1, 0), 0);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("a/b"), B, 0, 0), 0);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("a/+"), A, 2, 7), 0);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("#"), A, 0, 0), 0);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("$share/g/a/b"), A, 0, 0), 0);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("$share/h/a/b"), A, 0, 0), 0);
    CU_ASSERT_EQUAL(sub_index_count(idx), 6);
    /* Same subscriber and filter: replaced, not added. */
    CU_ASSERT_EQUAL(sub_index_add(idx, S("a/b"), A, 2, 9), 1);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("a/+"), A, 1, 0), 1);
    CU_ASSERT_EQUAL(sub_index_add(idx, S("$share/g/a/b"), A, 1, 3), 1);
    CU_ASSERT_EQUAL(sub_index_count(idx), 6);

    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "a/b", &hs), 6);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 2, 9, false), 1); /* a/b replaced */
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0, 0, false), 1); /* a/b */
    CU_ASSERT_EQUAL(count_hit(&hs, A, 1, 0, false), 1); /* a/+ replaced */
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 0, false), 1); /* # */
    CU_ASSERT_EQUAL(count_hit(&hs, A, 1, 3, true), 1);  /* $share/g replaced */
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 0, true), 1);  /* $share/h */
    sub_index_free(idx);
}

static void test_remove(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/b"), A), -ENOENT);
    sub_index_add(idx, S("a/b"), A, 0, 0);
    sub_index_add(idx, S("a/+"), A, 0, 0);
    sub_index_add(idx, S("$share/g/a/b"), A, 0, 0);
    CU_ASSERT_EQUAL(sub_index_count(idx), 3);

    /* Wrong subscriber, wrong filter, wrong group, a prefix of a path. */
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/b"), B), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/c"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/#"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("+"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("$share/h/a/b"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("$share/g/a/+"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_count(idx), 3);

    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/b"), A), 0);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/b"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_count(idx), 2);
    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "a/b", &hs), 2);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 0, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 0, true), 1);

    CU_ASSERT_EQUAL(sub_index_remove(idx, S("$share/g/a/b"), A), 0);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("$share/g/a/b"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/+"), A), 0);
    CU_ASSERT_EQUAL(sub_index_remove(idx, S("a/+"), A), -ENOENT);
    CU_ASSERT_EQUAL(sub_index_count(idx), 0);
    CU_ASSERT_EQUAL(match(idx, "a/b", &hs), 0);
    sub_index_free(idx);
}

static void test_match_options_overlap(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("sport/tennis/player1"), A, 0x01, 1);
    sub_index_add(idx, S("sport/tennis/+"), A, 0x02, 2);
    sub_index_add(idx, S("sport/#"), A, 0x24, 3);
    sub_index_add(idx, S("sport/+/player1"), B, 0x11, 4);
    sub_index_add(idx, S("+/+/+"), C, 0x00, 0);
    sub_index_add(idx, S("sport/tennis/player2"), D, 0x01, 5);

    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "sport/tennis/player1", &hs), 5);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x01, 1, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x02, 2, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x24, 3, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0x11, 4, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, C, 0x00, 0, false), 1);

    CU_ASSERT_EQUAL(match(idx, "sport/tennis/player2", &hs), 4);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x02, 2, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x24, 3, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, C, 0x00, 0, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, D, 0x01, 5, false), 1);

    /* '#' matches the parent level. */
    CU_ASSERT_EQUAL(match(idx, "sport", &hs), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0x24, 3, false), 1);
    CU_ASSERT_EQUAL(match(idx, "sport/tennis", &hs), 1);
    CU_ASSERT_EQUAL(match(idx, "sport/tennis/player1/x", &hs), 1);
    CU_ASSERT_EQUAL(match(idx, "sports", &hs), 0);
    CU_ASSERT_EQUAL(match(idx, "x/y/z", &hs), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, C, 0x00, 0, false), 1);
    sub_index_free(idx);
}

static void test_match_empty_levels(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("a/+"), A, 0, 1);
    sub_index_add(idx, S("+/+"), A, 0, 2);
    sub_index_add(idx, S("/+"), A, 0, 3);
    sub_index_add(idx, S("a//b"), A, 0, 4);
    sub_index_add(idx, S("a/+/b"), A, 0, 5);
    sub_index_add(idx, S("+"), A, 0, 6);
    sub_index_add(idx, S("/#"), A, 0, 7);
    sub_index_add(idx, S("a/"), A, 0, 8);

    struct hits hs;
    /* "a/" has levels "a" and "". */
    CU_ASSERT_EQUAL(match(idx, "a/", &hs), 3);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 1, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 2, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 8, false), 1);
    /* "/" has two empty levels. */
    CU_ASSERT_EQUAL(match(idx, "/", &hs), 3);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 2, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 3, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 7, false), 1);
    CU_ASSERT_EQUAL(match(idx, "a//b", &hs), 2);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 4, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 5, false), 1);
    CU_ASSERT_EQUAL(match(idx, "a", &hs), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 6, false), 1);
    CU_ASSERT_EQUAL(match(idx, "a/b", &hs), 2);
    CU_ASSERT_EQUAL(match(idx, "/x/y", &hs), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 7, false), 1);
    sub_index_free(idx);
}

static void test_match_dollar(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("#"), A, 0, 1);
    sub_index_add(idx, S("+/x"), A, 0, 2);
    sub_index_add(idx, S("+/#"), A, 0, 3);
    sub_index_add(idx, S("$SYS/#"), A, 0, 4);
    sub_index_add(idx, S("$SYS/x"), A, 0, 5);
    sub_index_add(idx, S("$SYS/+"), A, 0, 6);
    sub_index_add(idx, S("$share/g/#"), B, 0, 7);
    sub_index_add(idx, S("$share/g/$SYS/#"), B, 0, 8);

    struct hits hs;
    /* [MQTT-3.1.1 4.7.2-1, MQTT-5.0 4.7.2-1]: no first-level wildcard matches "$SYS/x". */
    CU_ASSERT_EQUAL(match(idx, "$SYS/x", &hs), 4);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 4, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 5, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 6, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0, 8, true), 1);
    CU_ASSERT_EQUAL(match(idx, "$SYS", &hs), 2);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 4, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0, 8, true), 1);
    /* A '$' elsewhere than at the start is an ordinary character. */
    CU_ASSERT_EQUAL(match(idx, "a/x", &hs), 4);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 1, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 2, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 3, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0, 7, true), 1);
    CU_ASSERT_EQUAL(match(idx, "a$/x", &hs), 4);
    sub_index_free(idx);
}

static bool only_c(void *s)
{
    return s == C;
}

static bool not_a(void *s)
{
    return s != A;
}

static bool nobody(void *s)
{
    (void)s;
    return false;
}

static void test_shared_round_robin(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("$share/g/t/+"), A, 1, 0);
    sub_index_add(idx, S("$share/g/t/+"), B, 1, 0);
    sub_index_add(idx, S("$share/g/t/+"), C, 1, 0);
    int seen[3] = {0};
    void *prev = NULL;
    struct hits hs;
    for (int i = 0; i < 30; i++) {
        CU_ASSERT_EQUAL(match(idx, "t/x", &hs), 1);
        CU_ASSERT_TRUE(hs.h[0].shared);
        CU_ASSERT_EQUAL(hs.h[0].options, 1);
        CU_ASSERT_PTR_NOT_EQUAL(hs.h[0].subscriber, prev); /* never twice in a row */
        prev = hs.h[0].subscriber;
        seen[(char *)prev - subs]++;
    }
    /* Each member exactly a third of the messages. */
    CU_ASSERT_EQUAL(seen[0], 10);
    CU_ASSERT_EQUAL(seen[1], 10);
    CU_ASSERT_EQUAL(seen[2], 10);

    /* Two groups on one filter: one member of each. */
    sub_index_add(idx, S("$share/h/t/+"), D, 2, 0);
    CU_ASSERT_EQUAL(match(idx, "t/x", &hs), 2);
    CU_ASSERT_EQUAL(count_hit(&hs, D, 2, 0, true), 1);

    /* Removing a member: the others share the load. */
    sub_index_remove(idx, S("$share/g/t/+"), B);
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < 20; i++) {
        memset(&hs, 0, sizeof(hs));
        sub_index_match(idx, S("t/y"), NULL, record, &hs);
        for (int k = 0; k < hs.n; k++)
            if (hs.h[k].subscriber != D)
                seen[(char *)hs.h[k].subscriber - subs]++;
    }
    CU_ASSERT_EQUAL(seen[0], 10);
    CU_ASSERT_EQUAL(seen[1], 0);
    CU_ASSERT_EQUAL(seen[2], 10);
    sub_index_free(idx);
}

static void test_shared_eligible(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("$share/g/e"), A, 0, 0);
    sub_index_add(idx, S("$share/g/e"), B, 0, 0);
    sub_index_add(idx, S("$share/g/e"), C, 0, 0);
    struct hits hs;
    for (int i = 0; i < 10; i++) {
        memset(&hs, 0, sizeof(hs));
        CU_ASSERT_EQUAL(sub_index_match(idx, S("e"), only_c, record, &hs), 1);
        CU_ASSERT_PTR_EQUAL(hs.h[0].subscriber, C);
    }
    /* Eligible B and C alternate; A is never picked. */
    int seen[3] = {0};
    for (int i = 0; i < 20; i++) {
        memset(&hs, 0, sizeof(hs));
        CU_ASSERT_EQUAL(sub_index_match(idx, S("e"), not_a, record, &hs), 1);
        seen[(char *)hs.h[0].subscriber - subs]++;
    }
    CU_ASSERT_EQUAL(seen[0], 0);
    CU_ASSERT_EQUAL(seen[1], 10);
    CU_ASSERT_EQUAL(seen[2], 10);
    /* Nobody eligible: still one member, in round robin. */
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < 30; i++) {
        memset(&hs, 0, sizeof(hs));
        CU_ASSERT_EQUAL(sub_index_match(idx, S("e"), nobody, record, &hs), 1);
        seen[(char *)hs.h[0].subscriber - subs]++;
    }
    CU_ASSERT_EQUAL(seen[0], 10);
    CU_ASSERT_EQUAL(seen[1], 10);
    CU_ASSERT_EQUAL(seen[2], 10);
    sub_index_free(idx);
}

static void test_shared_and_plain(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    sub_index_add(idx, S("a/b"), A, 1, 11);
    sub_index_add(idx, S("$share/g/a/b"), A, 2, 22);
    sub_index_add(idx, S("$share/g/a/#"), B, 0, 33);
    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "a/b", &hs), 3);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 1, 11, false), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 2, 22, true), 1);
    CU_ASSERT_EQUAL(count_hit(&hs, B, 0, 33, true), 1);
    sub_index_free(idx);
}

/* *unique: whether the non-shared matches can repeat a subscriber. */
static void test_match_unique(void)
{
    struct sub_index *idx = sub_index_new(NULL, NULL);
    struct hits hs;
    bool unique = false;
    /* nothing matches */
    CU_ASSERT_EQUAL(sub_index_match_ex(idx, S("a/b"), NULL, record, &hs, &unique), 0);
    CU_ASSERT_TRUE(unique);
    /* several subscribers of one filter, and shared groups: each named once */
    sub_index_add(idx, S("a/b"), A, 0, 0);
    sub_index_add(idx, S("a/b"), B, 0, 0);
    sub_index_add(idx, S("$share/g/a/b"), A, 1, 0);
    sub_index_add(idx, S("$share/h/a/+"), A, 1, 0);
    memset(&hs, 0, sizeof(hs));
    CU_ASSERT_EQUAL(sub_index_match_ex(idx, S("a/b"), NULL, record, &hs, &unique), 4);
    CU_ASSERT_TRUE(unique);
    /* a second filter with plain subscriptions: A may now come twice */
    sub_index_add(idx, S("a/#"), A, 1, 0);
    memset(&hs, 0, sizeof(hs));
    CU_ASSERT_EQUAL(sub_index_match_ex(idx, S("a/b"), NULL, record, &hs, &unique), 5);
    CU_ASSERT_FALSE(unique);
    CU_ASSERT_EQUAL(count_hit(&hs, A, 0, 0, false) + count_hit(&hs, A, 1, 0, false), 2);
    /* another topic, only a/# matches */
    memset(&hs, 0, sizeof(hs));
    CU_ASSERT_EQUAL(sub_index_match_ex(idx, S("a/c/d"), NULL, record, &hs, &unique), 1);
    CU_ASSERT_TRUE(unique);
    sub_index_free(idx);
}

/* Random adds and removes of 16 subscribers on two plain filters and one
 * shared group, checked against a model after every step: the lists grow
 * from their inline slot to an array and shrink back to empty many times. */
static void test_random_add_remove(void)
{
    static const char *const filters[] = {"dev/1", "dev/+", "$share/g/dev/1"};
    struct sub_index *idx = sub_index_new(NULL, NULL);
    bool in[3][16] = {{false}};
    unsigned seed = 7;
    for (int step = 0; step < 4000; step++) {
        int f = rand_r(&seed) % 3, k = rand_r(&seed) % 16;
        size_t flen = strlen(filters[f]);
        if (in[f][k]) {
            CU_ASSERT_EQUAL_FATAL(sub_index_remove(idx, filters[f], flen, &subs[k]), 0);
        } else {
            CU_ASSERT_EQUAL_FATAL(sub_index_add(idx, filters[f], flen, &subs[k], 1, 0), 0);
        }
        in[f][k] = !in[f][k];
        size_t want = 0;
        int plain = 0;
        bool any_shared = false;
        for (int i = 0; i < 16; i++) {
            want += in[0][i] + in[1][i] + in[2][i];
            plain += in[0][i] + in[1][i];
            any_shared = any_shared || in[2][i];
        }
        CU_ASSERT_EQUAL_FATAL(sub_index_count(idx), want);
        struct hits hs;
        CU_ASSERT_EQUAL_FATAL(match(idx, "dev/1", &hs), plain + (any_shared ? 1 : 0));
        for (int i = 0; i < 16; i++) {
            CU_ASSERT_EQUAL_FATAL(count_hit(&hs, &subs[i], 1, 0, false), in[0][i] + in[1][i]);
            if (count_hit(&hs, &subs[i], 1, 0, true))
                CU_ASSERT_TRUE_FATAL(in[2][i]); /* the group picked a member */
        }
    }
    sub_index_free(idx);
}

static void test_routes(void)
{
    struct route_log log = {0};
    struct sub_index *idx = sub_index_new(&counting_ops, &log);
    sub_index_add(idx, S("a/b"), A, 0, 0);
    CU_ASSERT_EQUAL(log.added, 1);
    CU_ASSERT_TRUE(last_is(&log, "a/b"));
    sub_index_add(idx, S("a/b"), B, 0, 0); /* second subscriber */
    sub_index_add(idx, S("a/b"), A, 1, 5); /* replace */
    CU_ASSERT_EQUAL(log.added, 1);

    sub_index_add(idx, S("a/+"), A, 0, 0);
    CU_ASSERT_EQUAL(log.added, 2);
    CU_ASSERT_TRUE(last_is(&log, "a/+"));

    sub_index_add(idx, S("$share/g/a/b"), A, 0, 0);
    CU_ASSERT_EQUAL(log.added, 3);
    CU_ASSERT_TRUE(last_is(&log, "$share/g/a/b"));
    sub_index_add(idx, S("$share/g/a/b"), B, 0, 0);
    CU_ASSERT_EQUAL(log.added, 3);
    sub_index_add(idx, S("$share/h/a/b"), B, 0, 0);
    CU_ASSERT_EQUAL(log.added, 4);
    CU_ASSERT_TRUE(last_is(&log, "$share/h/a/b"));
    CU_ASSERT_EQUAL(log.removed, 0);

    /* Failed removes notify nothing. */
    sub_index_remove(idx, S("a/b"), C);
    sub_index_remove(idx, S("x"), C);
    CU_ASSERT_EQUAL(log.removed, 0);

    sub_index_remove(idx, S("a/b"), A);
    CU_ASSERT_EQUAL(log.removed, 0);
    sub_index_remove(idx, S("a/b"), B);
    CU_ASSERT_EQUAL(log.removed, 1);
    CU_ASSERT_TRUE(last_is(&log, "a/b"));

    sub_index_remove(idx, S("$share/g/a/b"), A);
    CU_ASSERT_EQUAL(log.removed, 1);
    sub_index_remove(idx, S("$share/g/a/b"), B);
    CU_ASSERT_EQUAL(log.removed, 2);
    CU_ASSERT_TRUE(last_is(&log, "$share/g/a/b"));

    /* Re-adding after the last remove notifies again. */
    sub_index_add(idx, S("a/b"), C, 0, 0);
    CU_ASSERT_EQUAL(log.added, 5);
    CU_ASSERT_TRUE(last_is(&log, "a/b"));

    sub_index_remove(idx, S("a/+"), A);
    sub_index_remove(idx, S("$share/h/a/b"), B);
    sub_index_remove(idx, S("a/b"), C);
    CU_ASSERT_EQUAL(log.removed, 5);
    CU_ASSERT_EQUAL(log.added, 5);
    sub_index_free(idx);
}

static void test_route_local(void)
{
    struct route_local rl = {0};
    struct sub_index *idx = sub_index_new(&route_local_ops, &rl);
    sub_index_add(idx, S("a"), A, 0, 0);
    sub_index_add(idx, S("a"), B, 0, 0);
    sub_index_add(idx, S("#"), A, 0, 0);
    sub_index_add(idx, S("$share/g/a"), A, 0, 0);
    CU_ASSERT_EQUAL(rl.routes, 3);
    sub_index_remove(idx, S("a"), A);
    CU_ASSERT_EQUAL(rl.routes, 3);
    sub_index_remove(idx, S("a"), B);
    CU_ASSERT_EQUAL(rl.routes, 2);
    sub_index_free(idx);
}

static size_t heap_in_use(void)
{
#ifdef HAVE_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().uordblks;
#endif
}

static void churn(struct sub_index *idx, int base, int n)
{
    char f[64];
    for (int i = 0; i < n; i++) {
        static const char *fmt[] = {"c/%d/x", "c/+/%d/#", "$share/g%d/c/+", "%d", "+/%d//+"};
        snprintf(f, sizeof(f), fmt[i % 5], base + i);
        CU_ASSERT_EQUAL(sub_index_add(idx, f, strlen(f), A, 0, 0), 0);
        CU_ASSERT_EQUAL(sub_index_add(idx, f, strlen(f), B, 0, 0), 0);
    }
    for (int i = 0; i < n; i++) {
        static const char *fmt[] = {"c/%d/x", "c/+/%d/#", "$share/g%d/c/+", "%d", "+/%d//+"};
        snprintf(f, sizeof(f), fmt[i % 5], base + i);
        CU_ASSERT_EQUAL(sub_index_remove(idx, f, strlen(f), B), 0);
        CU_ASSERT_EQUAL(sub_index_remove(idx, f, strlen(f), A), 0);
    }
}

static void test_nodes_freed(void)
{
    struct route_local rl = {0};
    struct sub_index *idx = sub_index_new(&route_local_ops, &rl);
    churn(idx, 0, 2000); /* grows the hash tables to their peak */
    CU_ASSERT_EQUAL(sub_index_count(idx), 0);
    CU_ASSERT_EQUAL(rl.routes, 0);
    size_t before = heap_in_use();
    churn(idx, 100000, 2000); /* other names: nothing may be left over */
    size_t after = heap_in_use();
    /* Unsubscribing gives back every node, group and entry. */
    CU_ASSERT_EQUAL(after, before);
    CU_ASSERT_EQUAL(sub_index_count(idx), 0);
    struct hits hs;
    CU_ASSERT_EQUAL(match(idx, "c/1/x", &hs), 0);
    CU_ASSERT_EQUAL(match(idx, "c/2/1/x", &hs), 0);
    CU_ASSERT_EQUAL(match(idx, "3", &hs), 0);
    CU_ASSERT_EQUAL(match(idx, "a/4//b", &hs), 0);
    sub_index_free(idx);
}

static void test_deep_levels(void)
{
    /* Many levels: the matcher must not recurse per level. */
    enum { LEVELS = 5000 };
    char *f = malloc(2 * LEVELS);
    char *t = malloc(2 * LEVELS);
    for (int i = 0; i < LEVELS; i++) {
        f[2 * i] = '+';
        t[2 * i] = 'x';
        f[2 * i + 1] = t[2 * i + 1] = '/';
    }
    size_t len = 2 * LEVELS - 1;
    struct sub_index *idx = sub_index_new(NULL, NULL);
    CU_ASSERT_EQUAL(sub_index_add(idx, f, len, A, 0, 1), 0);
    f[len - 1] = '#';
    CU_ASSERT_EQUAL(sub_index_add(idx, f, len, A, 0, 2), 0);
    struct hits hs = {0};
    CU_ASSERT_EQUAL(sub_index_match(idx, t, len, NULL, record, &hs), 2);
    CU_ASSERT_EQUAL(sub_index_match(idx, t, len - 2, NULL, record, &hs), 1);
    sub_index_free(idx);
    free(f);
    free(t);
}

/* Compare the index with topic_match over random filters and names. */
static void rand_topic(char *out, unsigned *seed, bool filter)
{
    static const char *levels[] = {"a", "b", "", "$x", "c"};
    int n = 1 + rand_r(seed) % 4;
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (i)
            strcat(out, "/");
        int r = rand_r(seed) % 8;
        if (filter && r == 5)
            strcat(out, "+");
        else if (filter && r == 6) {
            strcat(out, "#");
            break;
        } else
            strcat(out, levels[r % 5]);
    }
    if (!out[0]) /* a lone empty level is no topic */
        strcpy(out, "/");
}

struct cmp_ctx {
    int counts[64];
};

static void cmp_record(void *ud, void *s, uint8_t o, uint32_t id, bool shared)
{
    (void)s;
    (void)o;
    (void)shared;
    struct cmp_ctx *c = ud;
    c->counts[id]++;
}

static void test_random_vs_topic_match(void)
{
    unsigned seed = 12345;
    char filters[64][64];
    struct sub_index *idx = sub_index_new(NULL, NULL);
    for (int i = 1; i < 64; i++) {
        rand_topic(filters[i], &seed, true);
        CU_ASSERT_TRUE(topic_filter_valid(filters[i], strlen(filters[i])));
        /* Subscriber i, sub id i: every filter counted separately. */
        CU_ASSERT_EQUAL(sub_index_add(idx, S(filters[i]), &subs[i % 16], 0, (uint32_t)i) >= 0, 1);
    }
    for (int k = 0; k < 500; k++) {
        char t[64];
        rand_topic(t, &seed, false);
        struct cmp_ctx c = {{0}};
        int n = sub_index_match(idx, S(t), NULL, cmp_record, &c);
        int expect = 0;
        for (int i = 1; i < 64; i++) {
            bool m = topic_match(S(filters[i]), S(t));
            /* Duplicate filters with the same subscriber replaced each
             * other; only the last one added holds. */
            bool dup_replaced = false;
            for (int j = i + 1; j < 64; j++)
                if (strcmp(filters[i], filters[j]) == 0 && j % 16 == i % 16)
                    dup_replaced = true;
            if (dup_replaced)
                m = false;
            expect += m;
            if (c.counts[i] != (m ? 1 : 0))
                fprintf(stderr, "filter '%s' topic '%s': %d calls, expected %d\n", filters[i], t,
                        c.counts[i], m);
            CU_ASSERT_EQUAL(c.counts[i], m ? 1 : 0);
        }
        CU_ASSERT_EQUAL(n, expect);
    }
    sub_index_free(idx);
}

/* ---- concurrency ---- */

struct mt {
    struct sub_index *idx;
    _Atomic bool stop;
    _Atomic long matches;
};

static void mt_cb(void *ud, void *s, uint8_t o, uint32_t id, bool shared)
{
    (void)s;
    (void)o;
    (void)id;
    (void)shared;
    (*(long *)ud)++;
}

static void *mt_matcher(void *arg)
{
    struct mt *m = arg;
    static const char *topics[] = {"m/1/x", "m/2/y", "m/3", "$SYS/m", "q"};
    long calls = 0;
    for (int i = 0; i < 20000 && !m->stop; i++) {
        const char *t = topics[i % 5];
        sub_index_match(m->idx, t, strlen(t), i % 2 ? only_c : NULL, mt_cb, &calls);
        m->matches++;
    }
    return NULL;
}

static void *mt_writer(void *arg)
{
    struct mt *m = arg;
    static const char *filters[] = {"m/+/x", "m/#", "$share/g/m/+/x", "m/2/y", "+/+", "q"};
    char *who[] = {A, B, C, D};
    for (int i = 0; i < 3000; i++) {
        const char *f = filters[i % 6];
        void *s = who[i % 4];
        sub_index_add(m->idx, f, strlen(f), s, 0, (uint32_t)i);
        if (i % 3 == 0) {
            const char *g = filters[(i / 3) % 6];
            sub_index_remove(m->idx, g, strlen(g), who[(i / 7) % 4]);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    struct route_local rl = {0};
    struct mt m = {.idx = sub_index_new(&route_local_ops, &rl)};
    sub_index_add(m.idx, S("$share/g/m/+/x"), A, 0, 0);
    sub_index_add(m.idx, S("$share/g/m/+/x"), C, 0, 0);
    pthread_t r1, r2, w;
    pthread_create(&r1, NULL, mt_matcher, &m);
    pthread_create(&r2, NULL, mt_matcher, &m);
    pthread_create(&w, NULL, mt_writer, &m);
    pthread_join(w, NULL);
    pthread_join(r1, NULL);
    pthread_join(r2, NULL);
    CU_ASSERT_TRUE(m.matches > 0);
    /* Remove whatever is left: the count and routes go to zero. */
    static const char *filters[] = {"m/+/x", "m/#", "$share/g/m/+/x", "m/2/y", "+/+", "q"};
    void *who[] = {A, B, C, D};
    for (int i = 0; i < 6; i++)
        for (int k = 0; k < 4; k++)
            sub_index_remove(m.idx, filters[i], strlen(filters[i]), who[k]);
    CU_ASSERT_EQUAL(sub_index_count(m.idx), 0);
    CU_ASSERT_EQUAL(rl.routes, 0);
    sub_index_free(m.idx);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("sub_index", NULL, NULL);
    if (!s) {
        CU_cleanup_registry();
        return 2;
    }
    CU_add_test(s, "new and free", test_new_free);
    CU_add_test(s, "add, replace, count", test_add_replace_count);
    CU_add_test(s, "remove and -ENOENT", test_remove);
    CU_add_test(s, "options and sub ids of overlapping filters", test_match_options_overlap);
    CU_add_test(s, "empty levels", test_match_empty_levels);
    CU_add_test(s, "'$' names", test_match_dollar);
    CU_add_test(s, "shared round robin", test_shared_round_robin);
    CU_add_test(s, "shared eligible preference", test_shared_eligible);
    CU_add_test(s, "shared and plain on one filter", test_shared_and_plain);
    CU_add_test(s, "match reports whether subscribers are unique", test_match_unique);
    CU_add_test(s, "random adds and removes agree with a model", test_random_add_remove);
    CU_add_test(s, "route notifications", test_routes);
    CU_add_test(s, "route_local counts", test_route_local);
    CU_add_test(s, "nodes freed on remove", test_nodes_freed);
    CU_add_test(s, "deep levels", test_deep_levels);
    CU_add_test(s, "random filters agree with topic_match", test_random_vs_topic_match);
    CU_add_test(s, "threads", test_threads);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned fails = CU_get_number_of_failures();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
